//! From the domain model to the exact content the BPF maps should have. Pure: interface
//! lookups are passed in, so this is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use privatelink_common::{
    Appliance, ApplianceSet, ConnectionState, CounterKey, ENI_FLAG_ACL, ENI_FLAG_FLOW_LOG,
    ENI_FLAG_GATEWAY, ENI_FLAG_GWLB, ENI_FLAG_LB_SET, ENI_FLAG_REBALANCE, ENI_FLAG_SG,
    ENI_FLAG_STICKY_2, ENI_FLAG_STICKY_3, ENI_FLAG_WHITELISTED, EndpointEni, EndpointEni6,
    GatewayRoute, GatewayRoute6, GwlbZone, HOST_ADDR, HOST_DNS, IFACE_FLAG_APPLIANCES,
    IFACE_FLAG_GATEWAYS, IFACE_FLAG_HOST_TRAFFIC, IfaceInfo, LbSet, Listener, ListenerSet,
    MAX_APPLIANCES, MAX_LBS_PER_ZONE, MAX_SNAT_ADDRS, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    RULE_ACCEPT, RULE_DROP, Rule, RuleSet, RuleSet6, SnatPool, SnatPool6, VpcAddr, VpcAddr6,
    VpcPort, host_peer,
};

use crate::model::{
    Backend, Direction, Endpoint, EndpointService, Failover, FieldError, GwlbSettings, Protocol,
    RuleAction, ServiceType, State, Stickiness, Vpc, numeric_id,
};

/// An interface as the kernel knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u16,
}

pub use crate::monitor::Unhealthy;

/// Everything the daemon owns in the maps (conntrack and learned neighbors are the data
/// path's own): one field per `synced` or `registered` map of the catalogue
/// (`privatelink_common::for_each_map!`), named there; the data plane's sync does not
/// compile while the two disagree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub ifaces: BTreeMap<u32, IfaceInfo>,
    pub vpc_ports: BTreeMap<u32, VpcPort>,
    pub endpoints: BTreeMap<VpcAddr, EndpointEni>,
    pub snat_pools: BTreeMap<u32, SnatPool>,
    pub snat_addrs: BTreeMap<VpcAddr, u32>,
    pub sg_rules: BTreeMap<VpcAddr, RuleSet>,
    pub acl_in: BTreeMap<VpcAddr, RuleSet>,
    pub acl_out: BTreeMap<VpcAddr, RuleSet>,
    pub gw_routes: BTreeMap<GatewayRoute, EndpointEni>,
    pub gw_addrs: BTreeMap<VpcAddr, u32>,
    /// GWLB: the appliances new flows of a (service, zone) are spread over.
    pub gwlb_targets: BTreeMap<GwlbZone, ApplianceSet>,
    /// GWLB: every appliance, with its service and health.
    pub gwlb_appliances: BTreeMap<VpcAddr, Appliance>,
    /// Next hops the data path may learn MACs for (load balancers, gateway next hops,
    /// appliances).
    pub next_hops: BTreeSet<VpcAddr>,
    /// What each interface or gateway service publishes, by service id.
    pub listeners: BTreeMap<u32, ListenerSet>,
    /// The host's own addresses in each VPC and the peers it talks to there.
    pub host: BTreeMap<VpcAddr, u32>,
    /// (service, zone) with several load balancers: new flows are spread over them.
    pub lb_sets: BTreeMap<GwlbZone, LbSet>,
    /// The slots of `PL_EP_COUNTERS` and what each counts: not a function of the state,
    /// but of the slots given out before (`crate::dataplane::slots::assign`, at apply).
    pub counter_slots: BTreeMap<CounterKey, u32>,
    /// Dual-stack endpoint ENIs by their IPv6 address (the IPv4 entry's state, the zone's
    /// IPv6 load balancer).
    pub endpoints6: BTreeMap<VpcAddr6, EndpointEni6>,
    pub snat6_pools: BTreeMap<u32, SnatPool6>,
    pub snat6_addrs: BTreeMap<VpcAddr6, u32>,
    pub sg_rules6: BTreeMap<VpcAddr6, RuleSet6>,
    pub acl6_in: BTreeMap<VpcAddr6, RuleSet6>,
    pub acl6_out: BTreeMap<VpcAddr6, RuleSet6>,
    /// IPv6 next hops the data path may learn MACs for (load balancers' IPv6 addresses).
    pub next_hops6: BTreeSet<VpcAddr6>,
    /// GWLB endpoints' IPv6 routes.
    pub gw_routes6: BTreeMap<GatewayRoute6, EndpointEni>,
}

/// The data path's view of several load balancers: their addresses and each slot's
/// choice among them by rendezvous hashing (`privatelink_common::lb_slot_score`).
pub fn lb_set(lbs: &[&crate::model::Backend]) -> LbSet {
    let mut set = LbSet::default();
    for (slot, b) in set.addrs.iter_mut().zip(lbs) {
        *slot = b.address.octets();
        set.count += 1;
    }
    let n = set.count as usize;
    for (s, slot) in set.slots.iter_mut().enumerate() {
        *slot = (0..n)
            .max_by_key(|&i| (privatelink_common::lb_slot_score(s, set.addrs[i]), i))
            .unwrap_or(0) as u8;
    }
    set
}

/// The load balancers new flows at an interface endpoint's ENI in `zone` go to, healthy
/// ones first (`unhealthy`: the health view; a load balancer that is not checked counts as
/// healthy):
///
/// - the zone's own healthy ones, as `backends_for_zone` picks them (with zone affinity
///   those of the zone; without it every zone's);
/// - else every healthy one of every zone (failover: the zone's load balancers are all
///   down, or it has none), at most `MAX_LBS_PER_ZONE` in declaration order;
/// - else, nothing healthy anywhere, what `backends_for_zone` picks (fail open: without
///   working checks, as if nothing were checked).
///
/// Only new flows follow: an established flow keeps the load balancer it started with.
pub fn lbs_for_zone<'a>(
    svc: &'a EndpointService,
    zone: &str,
    unhealthy: &Unhealthy,
) -> Vec<&'a Backend> {
    let vpc_id = numeric_id(&svc.vpc);
    let healthy = |b: &&Backend| !unhealthy.contains(&(vpc_id, b.address.octets()));
    let own: Vec<&Backend> = svc
        .backends_for_zone(zone)
        .into_iter()
        .filter(healthy)
        .collect();
    if !own.is_empty() {
        return own;
    }
    let mut any: Vec<&Backend> = svc.backends.iter().filter(healthy).collect();
    if !any.is_empty() {
        any.truncate(MAX_LBS_PER_ZONE);
        return any;
    }
    svc.backends_for_zone(zone)
}

/// A PL_HOST entry for one of the host's own addresses in a VPC (`HOST_ADDR`,
/// `HOST_DNS`). Validation keeps own addresses and peers apart; should they meet anyway,
/// an own address wins over a peer and the first own role stays.
fn host_own(d: &mut Desired, key: VpcAddr, role: u32) {
    match d.host.get(&key) {
        Some(&r) if r == HOST_ADDR || r == HOST_DNS => {}
        _ => {
            d.host.insert(key, role);
        }
    }
}

/// A PL_HOST entry for a peer the host probes; an address already there keeps its role.
fn host_peer_entry(d: &mut Desired, key: VpcAddr, role: u32) {
    d.host.entry(key).or_insert(role);
}

/// A service's listeners as the data path matches them.
pub fn listener_set(svc: &EndpointService) -> ListenerSet {
    let mut set = ListenerSet::default();
    for (slot, l) in set.listeners.iter_mut().zip(&svc.listeners) {
        let (lo, hi) = l.ports();
        *slot = Listener {
            proto: l.protocol.number(),
            _pad: 0,
            port_lo: lo,
            port_hi: hi,
            _pad2: 0,
        };
        set.count += 1;
    }
    set
}

fn rule(
    action: RuleAction,
    proto: Protocol,
    ports: Option<[u16; 2]>,
    cidr: &ipnet::Ipv4Net,
) -> Rule {
    let [port_lo, port_hi] = ports.unwrap_or([0, u16::MAX]);
    Rule {
        addr: cidr.network().octets(),
        prefix: cidr.prefix_len(),
        proto: match proto {
            Protocol::All => PROTO_ANY,
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Icmp => PROTO_ICMP,
        },
        action: match action {
            RuleAction::Accept => RULE_ACCEPT,
            RuleAction::Drop => RULE_DROP,
        },
        _pad: 0,
        port_lo,
        port_hi,
    }
}

fn rule_set(rules: impl IntoIterator<Item = Rule>) -> RuleSet {
    let mut set = RuleSet::default();
    for (slot, r) in set.rules.iter_mut().zip(rules) {
        *slot = r;
        set.count += 1;
    }
    set
}

/// The merged ingress rules of an ENI's security groups in evaluation order: priority 1
/// first, and at equal priority drop before accept.
pub fn merged_ingress(state: &State, groups: &[String]) -> Vec<Rule> {
    let mut rules: Vec<(u32, u8, Rule)> = state
        .security_groups
        .iter()
        .filter(|g| groups.contains(&g.id))
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.direction == Direction::Ingress)
        .map(|r| {
            let drop_first = if r.action == RuleAction::Drop { 0 } else { 1 };
            (
                r.priority,
                drop_first,
                rule(r.action, r.protocol, r.ports, &r.cidr),
            )
        })
        .collect();
    rules.sort_by_key(|(p, d, _)| (*p, *d));
    rules.into_iter().map(|(_, _, r)| r).collect()
}

/// A load balancer (or appliance) address the forwarder must resolve to a MAC, and the
/// address to ask from (a SNAT address, or the GWLB's own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub vpc_id: u32,
    pub addr: [u8; 4],
    pub ask_from: [u8; 4],
}

/// The maps' content for `state`, with interfaces looked up by `link`, and GWLB appliance
/// sets and interface endpoints' load balancers built from the healthy ones (those not in
/// `unhealthy`, see `lbs_for_zone`).
pub fn compute(
    state: &State,
    link: impl Fn(&str) -> Result<Link, String>,
    unhealthy: &Unhealthy,
) -> Result<Desired, FieldError> {
    compute_with_hops(state, link, unhealthy, &next_hops(state))
}

/// `compute`, with the state's `next_hops` computed by the caller.
pub fn compute_with_hops(
    state: &State,
    link: impl Fn(&str) -> Result<Link, String>,
    unhealthy: &Unhealthy,
    hops: &[NextHop],
) -> Result<Desired, FieldError> {
    let mut d = Desired::default();
    for (i, vpc) in state.vpcs.iter().enumerate() {
        let l = link(&vpc.interface).map_err(|m| FieldError {
            field: format!("vpcs[{i}].interface"),
            message: m,
        })?;
        let vpc_id = numeric_id(&vpc.id);
        d.ifaces.insert(
            l.ifindex,
            IfaceInfo {
                vpc_id,
                mac: l.mac,
                flags: iface_flags(state, &vpc.id),
                _pad: 0,
            },
        );
        d.vpc_ports.insert(
            vpc_id,
            VpcPort {
                ifindex: l.ifindex,
                mac: l.mac,
                mtu: l.mtu,
            },
        );
        // The host's own addresses in the VPC: the source of its load balancers' health
        // checks, and the VPC's DNS resolver.
        for (addr, role) in [(vpc.probe_address, HOST_ADDR), (vpc.resolver, HOST_DNS)] {
            if let Some(a) = addr {
                host_own(
                    &mut d,
                    VpcAddr {
                        vpc_id,
                        addr: a.octets(),
                    },
                    role,
                );
            }
        }
    }
    for svc in &state.services {
        let service_id = numeric_id(&svc.id);
        let vpc_id = numeric_id(&svc.vpc);
        if let Some(g) = &svc.gwlb {
            gwlb_service(&mut d, state, svc, g, unhealthy);
            continue;
        }
        d.listeners.insert(service_id, listener_set(svc));
        // Load balancers health-checked from the VPC's probe address: the host's stack
        // must see their answers on the probe port.
        if let (Some(_), Some(h)) = (
            state.vpc(&svc.vpc).and_then(|v| v.probe_address),
            crate::monitor::lb_probe(svc),
        ) {
            for b in &svc.backends {
                host_peer_entry(
                    &mut d,
                    VpcAddr {
                        vpc_id,
                        addr: b.address.octets(),
                    },
                    host_peer(PROTO_TCP, h.port),
                );
            }
        }
        let mut addrs = [[0u8; 4]; MAX_SNAT_ADDRS];
        for (slot, a) in addrs.iter_mut().zip(&svc.snat) {
            *slot = a.octets();
            d.snat_addrs.insert(
                VpcAddr {
                    vpc_id,
                    addr: a.octets(),
                },
                service_id,
            );
        }
        d.snat_pools.insert(
            service_id,
            SnatPool {
                count: svc.snat.len() as u32,
                port_min: svc.snat_ports[0],
                port_max: svc.snat_ports[1],
                addrs,
            },
        );
    }
    for ep in &state.endpoints {
        let svc = state.service(&ep.service).expect("validated");
        let vpc = state.vpc(&ep.vpc).expect("validated");
        if let Some(g) = &svc.gwlb {
            gwlb_endpoint(&mut d, ep, svc, g, vpc);
            continue;
        }
        for z in &ep.zones {
            let vsw = vpc
                .vswitches
                .iter()
                .find(|s| s.id == z.vswitch)
                .expect("validated");
            let lbs = lbs_for_zone(svc, &vsw.zone, unhealthy);
            let backend = lbs[0];
            let mut flags = if svc.admits(&ep.account) {
                ENI_FLAG_WHITELISTED
            } else {
                0
            };
            if lbs.len() > 1 {
                flags |= ENI_FLAG_LB_SET;
                let set = lb_set(&lbs);
                d.lb_sets.insert(
                    GwlbZone {
                        service_id: numeric_id(&svc.id),
                        zone_id: numeric_id(&vsw.zone),
                    },
                    set,
                );
            }
            let key = VpcAddr {
                vpc_id: numeric_id(&vpc.id),
                addr: z.eni.octets(),
            };
            if !ep.security_groups.is_empty() {
                flags |= ENI_FLAG_SG;
                d.sg_rules
                    .insert(key, rule_set(merged_ingress(state, &ep.security_groups)));
            }
            if let Some(acl) = state.acls.iter().find(|a| a.vswitches.contains(&vsw.id)) {
                flags |= ENI_FLAG_ACL;
                let conv = |rs: &[crate::model::AclRule]| {
                    rule_set(
                        rs.iter()
                            .map(|r| rule(r.action, r.protocol, r.ports, &r.cidr)),
                    )
                };
                d.acl_in.insert(key, conv(&acl.ingress));
                d.acl_out.insert(key, conv(&acl.egress));
            }
            d.endpoints.insert(
                key,
                endpoint_entry(ep, svc, flags, &vsw.zone, backend.address.octets(), [0; 4]),
            );
        }
        if let Some(gw) = ep.gateway {
            gateway_endpoint(&mut d, state, ep, svc, vpc, gw);
        }
    }
    d.next_hops = hops
        .iter()
        .map(|h| VpcAddr {
            vpc_id: h.vpc_id,
            addr: h.addr,
        })
        .collect();
    Ok(d)
}

/// A gateway endpoint: one route per service prefix in the consumer VPC, its route
/// target answered in ARP, its policy as an ordered rule set under the target address.
fn gateway_endpoint(
    d: &mut Desired,
    state: &State,
    ep: &crate::model::Endpoint,
    svc: &crate::model::EndpointService,
    vpc: &crate::model::Vpc,
    gw: std::net::Ipv4Addr,
) {
    let vpc_id = numeric_id(&vpc.id);
    let zone = vpc
        .vswitches
        .iter()
        .find(|s| s.cidr.contains(&gw))
        .map(|s| s.zone.as_str())
        .unwrap_or("");
    let key = VpcAddr {
        vpc_id,
        addr: gw.octets(),
    };
    let mut flags = ENI_FLAG_GATEWAY;
    if svc.admits(&ep.account) {
        flags |= ENI_FLAG_WHITELISTED;
    }
    if !ep.policy.is_empty() {
        flags |= ENI_FLAG_SG;
        d.sg_rules.insert(
            key,
            rule_set(
                ep.policy
                    .iter()
                    .map(|r| rule(r.action, r.protocol, r.ports, &r.cidr)),
            ),
        );
    }
    let entry = endpoint_entry(
        ep,
        svc,
        flags,
        zone,
        svc.backend_for_zone(zone).address.octets(),
        gw.octets(),
    );
    d.gw_addrs.insert(key, entry.endpoint_id);
    for p in &svc.prefixes {
        let route = GatewayRoute {
            prefix_len: 32 + p.prefix_len() as u32,
            vpc_id,
            addr: p.network().octets(),
        };
        d.gw_routes.insert(route, entry);
    }
    let _ = state;
}

/// `IFACE_FLAG_GATEWAYS` when the VPC has gateway or GWLB endpoints (routes are looked
/// up), `IFACE_FLAG_APPLIANCES` when it holds a GWLB service's appliances.
/// The data path's view of one endpoint address (ENI, gateway route target or GWLB ENI).
fn endpoint_entry(
    ep: &crate::model::Endpoint,
    svc: &crate::model::EndpointService,
    flags: u32,
    zone: &str,
    lb_addr: [u8; 4],
    gateway: [u8; 4],
) -> EndpointEni {
    EndpointEni {
        counter_slot: 0,
        endpoint_id: numeric_id(&ep.id),
        service_id: numeric_id(&svc.id),
        consumer_account: numeric_id(&ep.account),
        state: ConnectionState::from(ep.connection) as u32,
        flags: match ep.flow_log {
            Some(_) => flags | ENI_FLAG_FLOW_LOG,
            None => flags,
        },
        zone_id: numeric_id(zone),
        provider_vpc_id: numeric_id(&svc.vpc),
        lb_addr,
        gateway,
        // 100 %: the whole pool, no per-endpoint bound. GWLB flows take no SNAT tuple.
        flow_share: if svc.kind == ServiceType::Gwlb || svc.endpoint_flow_share >= 100 {
            0
        } else {
            svc.endpoint_flow_share as u32
        },
    }
}

fn iface_flags(state: &State, vpc: &str) -> u8 {
    let mut flags = 0;
    if state.vpc(vpc).is_some_and(|v| v.host_traffic) {
        flags |= IFACE_FLAG_HOST_TRAFFIC;
    }
    if state
        .endpoints
        .iter()
        .any(|e| e.vpc == vpc && (e.gateway.is_some() || !e.routes.is_empty()))
    {
        flags |= IFACE_FLAG_GATEWAYS;
    }
    if state
        .services
        .iter()
        .any(|s| s.vpc == vpc && s.kind == ServiceType::Gwlb)
    {
        flags |= IFACE_FLAG_APPLIANCES;
    }
    flags
}

/// The zone a GWLB endpoint's ENI is in (its one vSwitch's zone).
fn gwlb_endpoint_zone<'a>(vpc: &'a Vpc, ep: &Endpoint) -> Option<&'a str> {
    let z = ep.zones.first()?;
    vpc.vswitches
        .iter()
        .find(|s| s.id == z.vswitch)
        .map(|s| s.zone.as_str())
}

/// A GWLB endpoint: every route of it in the consumer VPC's route trie, pointing at the
/// service's appliance set for the ENI's zone, and its ENI answered in ARP.
fn gwlb_endpoint(
    d: &mut Desired,
    ep: &Endpoint,
    svc: &EndpointService,
    g: &GwlbSettings,
    vpc: &Vpc,
) {
    let (Some(z), Some(zone)) = (ep.zones.first(), gwlb_endpoint_zone(vpc, ep)) else {
        return; // validated: one ENI in a vSwitch of the VPC
    };
    let vpc_id = numeric_id(&vpc.id);
    let mut flags = ENI_FLAG_GWLB;
    if svc.admits(&ep.account) {
        flags |= ENI_FLAG_WHITELISTED;
    }
    if g.failover == Failover::Rebalance {
        flags |= ENI_FLAG_REBALANCE;
    }
    flags |= match g.stickiness {
        Stickiness::FiveTuple => 0,
        Stickiness::ThreeTuple => ENI_FLAG_STICKY_3,
        Stickiness::TwoTuple => ENI_FLAG_STICKY_2,
    };
    let entry = endpoint_entry(ep, svc, flags, zone, g.address.octets(), z.eni.octets());
    d.gw_addrs.insert(
        VpcAddr {
            vpc_id,
            addr: z.eni.octets(),
        },
        entry.endpoint_id,
    );
    for p in &ep.routes {
        let route = GatewayRoute {
            prefix_len: 32 + p.prefix_len() as u32,
            vpc_id,
            addr: p.network().octets(),
        };
        d.gw_routes.insert(route, entry);
    }
}

/// A GWLB service: its appliances (with their health), and for every zone one of its
/// endpoints is in, the appliances that zone's new flows are spread over:
///
/// - the healthy appliances of the same zone (zone names compared as written);
/// - with `cross_zone`, the healthy appliances of every zone;
/// - without `cross_zone`, when the zone has no healthy appliance left (or none at all),
///   the healthy appliances of the other zones: failing over to another zone beats
///   dropping every flow;
/// - no healthy appliance anywhere: an empty set (the data path drops and counts).
///
/// Addresses are sorted, so the set (and the data path's `hash % count` pick) depends only
/// on which appliances are healthy, not on declaration order.
fn gwlb_service(
    d: &mut Desired,
    state: &State,
    svc: &EndpointService,
    g: &GwlbSettings,
    unhealthy: &Unhealthy,
) {
    let service_id = numeric_id(&svc.id);
    let vpc_id = numeric_id(&svc.vpc);
    let healthy = |a: &std::net::Ipv4Addr| !unhealthy.contains(&(vpc_id, a.octets()));
    // Health checks leave from the GWLB address: the host's stack must see the
    // appliances' answers to it, and nothing else of the VPC.
    host_own(
        d,
        VpcAddr {
            vpc_id,
            addr: g.address.octets(),
        },
        HOST_ADDR,
    );
    for b in &svc.backends {
        host_peer_entry(
            d,
            VpcAddr {
                vpc_id,
                addr: b.address.octets(),
            },
            host_peer(PROTO_TCP, g.health.port),
        );
        d.gwlb_appliances.insert(
            VpcAddr {
                vpc_id,
                addr: b.address.octets(),
            },
            Appliance {
                service_id,
                healthy: healthy(&b.address) as u32,
                counter_slot: 0,
            },
        );
    }
    let zones: BTreeSet<&str> = state
        .endpoints
        .iter()
        .filter(|e| e.service == svc.id)
        .filter_map(|e| gwlb_endpoint_zone(state.vpc(&e.vpc)?, e))
        .collect();
    for zone in zones {
        let pick = |same_zone_only: bool| -> Vec<[u8; 4]> {
            let mut v: Vec<[u8; 4]> = svc
                .backends
                .iter()
                .filter(|b| healthy(&b.address) && (!same_zone_only || b.zone == zone))
                .map(|b| b.address.octets())
                .collect();
            v.sort_by_key(|a| u32::from_be_bytes(*a));
            v.dedup();
            v
        };
        let mut addrs = if g.cross_zone {
            pick(false)
        } else {
            pick(true)
        };
        if addrs.is_empty() {
            addrs = pick(false);
        }
        let mut set = ApplianceSet::default();
        for (slot, a) in set.addrs.iter_mut().zip(addrs.iter().take(MAX_APPLIANCES)) {
            *slot = *a;
            set.count += 1;
        }
        d.gwlb_targets.insert(
            GwlbZone {
                service_id,
                zone_id: numeric_id(zone),
            },
            set,
        );
    }
}

/// The load balancer and appliance addresses that forwarding endpoints send to.
pub fn next_hops(state: &State) -> Vec<NextHop> {
    let mut hops: Vec<NextHop> = state
        .services
        .iter()
        .flat_map(|svc| {
            let vpc_id = numeric_id(&svc.vpc);
            // Validated: GWLB services have their address, the others a SNAT address.
            let ask_from = match &svc.gwlb {
                Some(g) => Some(g.address),
                None => svc.snat.first().copied(),
            };
            ask_from.into_iter().flat_map(move |from| {
                svc.backends.iter().map(move |b| NextHop {
                    vpc_id,
                    addr: b.address.octets(),
                    ask_from: from.octets(),
                })
            })
        })
        .collect();
    hops.sort();
    hops.dedup();
    hops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Connection, GWLB_TEST_STATE, parse_state};

    const LAB: &str = include_str!("../../tests/lab.toml");

    fn links(name: &str) -> Result<Link, String> {
        match name {
            "fc0" => Ok(Link {
                ifindex: 5,
                mac: [2, 0, 0, 0, 0, 5],
                mtu: 1500,
            }),
            "fp0" => Ok(Link {
                ifindex: 7,
                mac: [2, 0, 0, 0, 0, 7],
                mtu: 9000,
            }),
            "fs0" => Ok(Link {
                ifindex: 9,
                mac: [2, 0, 0, 0, 0, 9],
                mtu: 1500,
            }),
            "fc1" => Ok(Link {
                ifindex: 11,
                mac: [2, 0, 0, 0, 0, 11],
                mtu: 1500,
            }),
            _ => Err(format!("no interface {name}")),
        }
    }

    #[test]
    fn lab_maps_to_entries() {
        let s = parse_state(LAB).unwrap();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert_eq!(d.ifaces.len(), 2);
        assert_eq!(d.ifaces[&5].vpc_id, numeric_id("vpc-a"));
        assert_eq!(d.vpc_ports[&numeric_id("vpc-b")].ifindex, 7);
        let eni = d.endpoints[&VpcAddr {
            vpc_id: numeric_id("vpc-a"),
            addr: [10, 10, 1, 100],
        }];
        assert!(eni.is_connected() && eni.is_whitelisted());
        assert_eq!(eni.lb_addr, [10, 10, 0, 10]);
        assert_eq!(eni.provider_vpc_id, numeric_id("vpc-b"));
        let pool = d.snat_pools[&numeric_id("epsrv-b")];
        assert_eq!((pool.count, pool.port_min, pool.port_max), (2, 1024, 65535));
        assert_eq!(d.snat_addrs.len(), 2);
        assert_eq!(next_hops(&s).len(), 1);
    }

    #[test]
    fn whitelist_removal_and_state_reach_the_entry() {
        let mut s = parse_state(LAB).unwrap();
        s.services[0].whitelist.clear();
        s.endpoints[0].connection = Connection::Disconnected;
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let eni = d.endpoints.values().next().unwrap();
        assert!(!eni.is_whitelisted());
        assert_eq!(eni.state, ConnectionState::Disconnected as u32);
    }

    #[test]
    fn own_account_endpoints_are_admitted_and_strangers_are_not() {
        let eni_flags = |s: &State| {
            let d = compute(s, links, &Unhealthy::new()).unwrap();
            d.endpoints[&VpcAddr {
                vpc_id: numeric_id("vpc-a"),
                addr: [10, 10, 1, 100],
            }]
                .is_whitelisted()
        };
        // The provider's own endpoint (its account owns the consumer VPC too), with an
        // empty whitelist: admitted, as the API admits it.
        let mut own = parse_state(LAB).unwrap();
        own.services[0].whitelist.clear();
        own.vpcs[0].account = "acct-b".into();
        own.endpoints[0].account = "acct-b".into();
        own.validate().unwrap();
        assert!(own.services[0].admits("acct-b"));
        assert!(eni_flags(&own), "own account: ENI_FLAG_WHITELISTED");
        // A third account, neither the owner nor whitelisted: not admitted.
        let mut stranger = own.clone();
        stranger.accounts.push(crate::model::Account {
            id: "acct-c".into(),
            name: String::new(),
            token_sha256: None,
        });
        stranger.vpcs[0].account = "acct-c".into();
        stranger.endpoints[0].account = "acct-c".into();
        stranger.validate().unwrap();
        assert!(!eni_flags(&stranger), "stranger: no flag");
        // Whitelisted: admitted.
        stranger.services[0].whitelist = vec!["acct-c".into()];
        assert!(eni_flags(&stranger));
        // The gateway and GWLB entries use the same rule.
        let mut g = gwlb_state();
        let svc = g.services.iter_mut().find(|x| x.id == "gwlb-s").unwrap();
        svc.whitelist.clear();
        svc.account = "acct-a".into();
        g.vpcs.iter_mut().find(|v| v.id == "vpc-s").unwrap().account = "acct-a".into();
        g.validate().unwrap();
        let d = compute(&g, links, &Unhealthy::new()).unwrap();
        assert_eq!(
            d.gw_routes[&route("vpc-c", "10.30.8.0/24")].flags,
            ENI_FLAG_GWLB | ENI_FLAG_WHITELISTED
        );
    }

    #[test]
    fn adding_a_zone_changes_only_that_zones_entries() {
        use crate::reconcile::{Change, diff};
        let s = parse_state(LAB).unwrap();
        let before = compute(&s, links, &Unhealthy::new()).unwrap();
        let mut t = s.clone();
        t.vpcs[0].vswitches.push(crate::model::VSwitch {
            id: "vsw-a9".into(),
            zone: "zone-b".into(),
            cidr: "10.10.9.0/24".parse().unwrap(),
        });
        t.services[0].backends.push(crate::model::Backend {
            zone: "zone-b".into(),
            address: "10.10.0.11".parse().unwrap(),
        });
        t.endpoints[0].zones.push(crate::model::EndpointZone {
            vswitch: "vsw-a9".into(),
            eni: "10.10.9.1".parse().unwrap(),
        });
        t.validate().unwrap();
        let after = compute(&t, links, &Unhealthy::new()).unwrap();
        let new_key = VpcAddr {
            vpc_id: numeric_id("vpc-a"),
            addr: [10, 10, 9, 1],
        };
        let changes = diff(&before.endpoints, &after.endpoints);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let Change::Upsert(k, v) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(*k, new_key);
        assert_eq!(
            (v.lb_addr, v.zone_id),
            ([10, 10, 0, 11], numeric_id("zone-b")),
            "the new zone's own load balancer"
        );
        // Removing it again deletes exactly that entry.
        let mut u = t.clone();
        u.endpoints[0].zones.pop();
        let back = compute(&u, links, &Unhealthy::new()).unwrap();
        assert_eq!(
            diff(&after.endpoints, &back.endpoints),
            vec![Change::Delete(new_key)]
        );
    }

    #[test]
    fn missing_interface_names_the_vpc() {
        let mut s = parse_state(LAB).unwrap();
        s.vpcs[1].interface = "nope0".into();
        let e = compute(&s, links, &Unhealthy::new()).unwrap_err();
        assert_eq!(e.field, "vpcs[1].interface");
    }

    fn gwlb_state() -> State {
        parse_state(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap()
    }

    fn gwlb(s: &mut State) -> &mut crate::model::GwlbSettings {
        s.services
            .iter_mut()
            .find(|x| x.id == "gwlb-s")
            .and_then(|x| x.gwlb.as_mut())
            .unwrap()
    }

    fn ip(s: &str) -> [u8; 4] {
        s.parse::<std::net::Ipv4Addr>().unwrap().octets()
    }

    fn route(vpc: &str, prefix: &str) -> GatewayRoute {
        let p: ipnet::Ipv4Net = prefix.parse().unwrap();
        GatewayRoute {
            prefix_len: 32 + p.prefix_len() as u32,
            vpc_id: numeric_id(vpc),
            addr: p.network().octets(),
        }
    }

    /// The appliance set of the GWLB service for `zone`, as sorted addresses.
    fn targets(d: &Desired, zone: &str) -> Vec<[u8; 4]> {
        let set = d.gwlb_targets[&GwlbZone {
            service_id: numeric_id("gwlb-s"),
            zone_id: numeric_id(zone),
        }];
        set.addrs[..set.count as usize].to_vec()
    }

    fn unhealthy(addrs: &[&str]) -> Unhealthy {
        addrs.iter().map(|a| (numeric_id("vpc-s"), ip(a))).collect()
    }

    #[test]
    fn gwlb_endpoints_become_routes_to_appliance_sets() {
        let s = gwlb_state();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        // Every route of an endpoint points at the service, from the ENI's zone.
        let r1 = d.gw_routes[&route("vpc-c", "10.30.9.0/24")];
        assert_eq!(r1, d.gw_routes[&route("vpc-c", "192.168.0.0/16")]);
        assert_eq!(
            r1,
            EndpointEni {
                endpoint_id: numeric_id("ep-g1"),
                service_id: numeric_id("gwlb-s"),
                consumer_account: numeric_id("acct-a"),
                state: ConnectionState::Connected as u32,
                flags: ENI_FLAG_GWLB | ENI_FLAG_WHITELISTED,
                zone_id: numeric_id("zone-a"),
                provider_vpc_id: numeric_id("vpc-s"),
                lb_addr: ip("10.20.0.5"),
                gateway: ip("10.30.1.5"),
                flow_share: 0,
                // Given at apply (`dataplane::slots`), not by the state.
                counter_slot: 0,
            }
        );
        assert_eq!(route("vpc-c", "10.30.9.0/24").prefix_len, 56);
        let r2 = d.gw_routes[&route("vpc-c", "10.30.8.0/24")];
        assert_eq!(
            (r2.endpoint_id, r2.zone_id, r2.gateway),
            (numeric_id("ep-g2"), numeric_id("zone-b"), ip("10.30.2.5"))
        );
        assert_eq!(d.gw_routes.len(), 3);
        // The ENIs are answered in ARP, and are not interface-endpoint ENIs.
        for (eni, ep) in [("10.30.1.5", "ep-g1"), ("10.30.2.5", "ep-g2")] {
            let key = VpcAddr {
                vpc_id: numeric_id("vpc-c"),
                addr: ip(eni),
            };
            assert_eq!(d.gw_addrs[&key], numeric_id(ep));
            assert!(!d.endpoints.contains_key(&key));
        }
        // Interfaces: the consumer VPC looks routes up, the security VPC takes GENEVE back.
        assert_eq!(d.ifaces[&11].flags, IFACE_FLAG_GATEWAYS);
        assert_eq!(d.ifaces[&9].flags, IFACE_FLAG_APPLIANCES);
        assert_eq!(d.ifaces[&5].flags, 0);
        assert_eq!(d.vpc_ports[&numeric_id("vpc-b")].mtu, 9000);
        assert_eq!(d.vpc_ports[&numeric_id("vpc-s")].mtu, 1500);
        // Same zone first, sorted.
        assert_eq!(targets(&d, "zone-a"), [ip("10.20.1.10"), ip("10.20.1.11")]);
        assert_eq!(targets(&d, "zone-b"), [ip("10.20.2.10")]);
        assert_eq!(d.gwlb_targets.len(), 2);
        // Every appliance, healthy, of its service.
        assert_eq!(d.gwlb_appliances.len(), 3);
        assert!(d.gwlb_appliances.values().all(|a| *a
            == Appliance {
                service_id: numeric_id("gwlb-s"),
                healthy: 1,
                counter_slot: 0,
            }));
        // Appliances are next hops asked from the GWLB address; no SNAT pool.
        let hops = next_hops(&s);
        let appl: Vec<_> = hops
            .iter()
            .filter(|h| h.vpc_id == numeric_id("vpc-s"))
            .collect();
        assert_eq!(appl.len(), 3);
        assert!(appl.iter().all(|h| h.ask_from == ip("10.20.0.5")));
        assert!(d.next_hops.contains(&VpcAddr {
            vpc_id: numeric_id("vpc-s"),
            addr: ip("10.20.2.10"),
        }));
        assert!(!d.snat_pools.contains_key(&numeric_id("gwlb-s")));
        assert_eq!(d.snat_pools.len(), 1);
    }

    #[test]
    fn only_zones_with_endpoints_get_appliance_sets() {
        let mut s = gwlb_state();
        s.endpoints.retain(|e| e.id != "ep-g2");
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert_eq!(d.gwlb_targets.len(), 1);
        assert_eq!(targets(&d, "zone-a").len(), 2);
        // Without endpoints the consumer VPC looks no routes up.
        s.endpoints.retain(|e| e.id != "ep-g1");
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert!(d.gwlb_targets.is_empty());
        assert_eq!(d.ifaces[&11].flags, 0);
        assert_eq!(d.gwlb_appliances.len(), 3, "appliances stay known");
    }

    #[test]
    fn cross_zone_spreads_over_every_zone() {
        let mut s = gwlb_state();
        gwlb(&mut s).cross_zone = true;
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let all = [ip("10.20.1.10"), ip("10.20.1.11"), ip("10.20.2.10")];
        assert_eq!(targets(&d, "zone-a"), all);
        assert_eq!(targets(&d, "zone-b"), all);
        // Unhealthy ones are left out everywhere.
        let d = compute(&s, links, &unhealthy(&["10.20.1.11"])).unwrap();
        assert_eq!(targets(&d, "zone-b"), [ip("10.20.1.10"), ip("10.20.2.10")]);
    }

    #[test]
    fn unhealthy_appliances_leave_the_sets_and_zones_fail_over() {
        let s = gwlb_state();
        // One of zone-a's two down: the other carries zone-a.
        let d = compute(&s, links, &unhealthy(&["10.20.1.10"])).unwrap();
        assert_eq!(targets(&d, "zone-a"), [ip("10.20.1.11")]);
        assert_eq!(targets(&d, "zone-b"), [ip("10.20.2.10")]);
        let key = VpcAddr {
            vpc_id: numeric_id("vpc-s"),
            addr: ip("10.20.1.10"),
        };
        assert_eq!(d.gwlb_appliances[&key].healthy, 0);
        // Both of zone-a's down: zone-a fails over to zone-b rather than dropping.
        let d = compute(&s, links, &unhealthy(&["10.20.1.10", "10.20.1.11"])).unwrap();
        assert_eq!(targets(&d, "zone-a"), [ip("10.20.2.10")]);
        // zone-b's down: it fails over to zone-a's.
        let d = compute(&s, links, &unhealthy(&["10.20.2.10"])).unwrap();
        assert_eq!(targets(&d, "zone-b"), [ip("10.20.1.10"), ip("10.20.1.11")]);
        assert_eq!(targets(&d, "zone-a"), [ip("10.20.1.10"), ip("10.20.1.11")]);
        // Nothing healthy: empty sets (the data path drops and counts).
        let d = compute(
            &s,
            links,
            &unhealthy(&["10.20.1.10", "10.20.1.11", "10.20.2.10"]),
        )
        .unwrap();
        assert!(targets(&d, "zone-a").is_empty() && targets(&d, "zone-b").is_empty());
        // Another VPC's address with the same value is not this appliance.
        let other: Unhealthy = [(numeric_id("vpc-b"), ip("10.20.1.10"))].into();
        let d = compute(&s, links, &other).unwrap();
        assert_eq!(targets(&d, "zone-a").len(), 2);
    }

    /// The lab with two zones: a zone-b vSwitch in the consumer VPC with an ENI of ep-a
    /// (10.10.9.1), a zone-b load balancer (10.10.0.11), a probe address in the provider
    /// VPC and a resolver in the consumer VPC.
    fn two_zone_state() -> State {
        let mut s = parse_state(LAB).unwrap();
        s.vpcs[0].vswitches.push(crate::model::VSwitch {
            id: "vsw-a9".into(),
            zone: "zone-b".into(),
            cidr: "10.10.9.0/24".parse().unwrap(),
        });
        s.vpcs[0].resolver = Some("10.10.1.2".parse().unwrap());
        s.vpcs[1].probe_address = Some("10.10.0.250".parse().unwrap());
        s.services[0].backends.push(crate::model::Backend {
            zone: "zone-b".into(),
            address: "10.10.0.11".parse().unwrap(),
        });
        s.endpoints[0].zones.push(crate::model::EndpointZone {
            vswitch: "vsw-a9".into(),
            eni: "10.10.9.1".parse().unwrap(),
        });
        s.validate().unwrap();
        s
    }

    /// Load balancers of the provider VPC vpc-b judged unhealthy.
    fn lbs_down(addrs: &[&str]) -> Unhealthy {
        addrs.iter().map(|a| (numeric_id("vpc-b"), ip(a))).collect()
    }

    /// The load balancer new flows at ENI `eni` of vpc-a go to, and its LB set if any.
    fn eni_lbs(d: &Desired, eni: &str) -> ([u8; 4], Option<Vec<[u8; 4]>>) {
        let e = d.endpoints[&VpcAddr {
            vpc_id: numeric_id("vpc-a"),
            addr: ip(eni),
        }];
        let set = (e.flags & ENI_FLAG_LB_SET != 0).then(|| {
            let set = d.lb_sets[&GwlbZone {
                service_id: e.service_id,
                zone_id: e.zone_id,
            }];
            set.addrs[..set.count as usize].to_vec()
        });
        (e.lb_addr, set)
    }

    #[test]
    fn zones_fail_over_to_healthy_load_balancers_and_back() {
        let s = two_zone_state();
        let (a, b) = (ip("10.10.0.10"), ip("10.10.0.11"));
        // All healthy: each ENI its own zone's load balancer.
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert_eq!(eni_lbs(&d, "10.10.1.100"), (a, None));
        assert_eq!(eni_lbs(&d, "10.10.9.1"), (b, None));
        // Zone A's down: zone A's ENI sends new flows to zone B's; zone B's ENI is
        // unchanged, and the ENI keeps its own zone (for the LB set and the counters).
        let down = compute(&s, links, &lbs_down(&["10.10.0.10"])).unwrap();
        assert_eq!(eni_lbs(&down, "10.10.1.100"), (b, None));
        assert_eq!(eni_lbs(&down, "10.10.9.1"), (b, None));
        let key = |eni: &str| VpcAddr {
            vpc_id: numeric_id("vpc-a"),
            addr: ip(eni),
        };
        assert_eq!(
            down.endpoints[&key("10.10.1.100")].zone_id,
            numeric_id("zone-a")
        );
        assert_eq!(
            down.endpoints[&key("10.10.9.1")],
            d.endpoints[&key("10.10.9.1")]
        );
        // Back healthy: its own again, exactly as before.
        assert_eq!(compute(&s, links, &Unhealthy::new()).unwrap(), d);
        // Zone B's down: the mirror image.
        let down = compute(&s, links, &lbs_down(&["10.10.0.11"])).unwrap();
        assert_eq!(eni_lbs(&down, "10.10.9.1"), (a, None));
        assert_eq!(eni_lbs(&down, "10.10.1.100"), (a, None));
        // Nothing healthy: fail open, as if nothing were checked.
        let all = compute(&s, links, &lbs_down(&["10.10.0.10", "10.10.0.11"])).unwrap();
        assert_eq!(all.endpoints, d.endpoints);
        // The same address in another VPC is not this load balancer.
        let other: Unhealthy = [(numeric_id("vpc-a"), a)].into();
        assert_eq!(compute(&s, links, &other).unwrap().endpoints, d.endpoints);
    }

    #[test]
    fn a_zone_with_several_load_balancers_fails_over_only_when_all_are_down() {
        let mut s = two_zone_state();
        s.services[0].backends.push(crate::model::Backend {
            zone: "zone-a".into(),
            address: "10.10.0.12".parse().unwrap(),
        });
        s.services[0].backends.push(crate::model::Backend {
            zone: "zone-b".into(),
            address: "10.10.0.13".parse().unwrap(),
        });
        s.validate().unwrap();
        let (a1, a2, b1, b2) = (
            ip("10.10.0.10"),
            ip("10.10.0.12"),
            ip("10.10.0.11"),
            ip("10.10.0.13"),
        );
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert_eq!(eni_lbs(&d, "10.10.1.100"), (a1, Some(vec![a1, a2])));
        // One of zone A's down: the other carries zone A alone.
        let d = compute(&s, links, &lbs_down(&["10.10.0.10"])).unwrap();
        assert_eq!(eni_lbs(&d, "10.10.1.100"), (a2, None));
        assert_eq!(eni_lbs(&d, "10.10.9.1"), (b1, Some(vec![b1, b2])));
        // Both down: every healthy one of every zone (zone B's two).
        let d = compute(&s, links, &lbs_down(&["10.10.0.10", "10.10.0.12"])).unwrap();
        assert_eq!(eni_lbs(&d, "10.10.1.100"), (b1, Some(vec![b1, b2])));
        // Without zone affinity every ENI spreads over the healthy ones of all zones.
        s.services[0].zone_affinity = false;
        let d = compute(&s, links, &lbs_down(&["10.10.0.11"])).unwrap();
        for eni in ["10.10.1.100", "10.10.9.1"] {
            assert_eq!(eni_lbs(&d, eni), (a1, Some(vec![a1, a2, b2])), "{eni}");
        }
    }

    #[test]
    fn probe_and_resolver_addresses_and_probed_load_balancers_reach_the_host_map() {
        let s = two_zone_state();
        let key = |vpc: &str, a: &str| VpcAddr {
            vpc_id: numeric_id(vpc),
            addr: ip(a),
        };
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let port80 = host_peer(PROTO_TCP, 80);
        assert_eq!(
            d.host,
            BTreeMap::from([
                (key("vpc-a", "10.10.1.2"), HOST_DNS),
                (key("vpc-b", "10.10.0.250"), HOST_ADDR),
                (key("vpc-b", "10.10.0.10"), port80),
                (key("vpc-b", "10.10.0.11"), port80),
            ])
        );
        // The service's health port when it has settings.
        let mut t = s.clone();
        t.services[0].health = Some(crate::model::HealthSettings {
            port: 8080,
            ..Default::default()
        });
        let d = compute(&t, links, &Unhealthy::new()).unwrap();
        assert_eq!(
            d.host[&key("vpc-b", "10.10.0.11")],
            host_peer(PROTO_TCP, 8080)
        );
        // Only UDP listeners and no settings: not probed, no peers.
        let mut t = s.clone();
        t.services[0].listeners = vec!["udp:53".parse().unwrap()];
        let d = compute(&t, links, &Unhealthy::new()).unwrap();
        assert!(!d.host.contains_key(&key("vpc-b", "10.10.0.10")));
        assert_eq!(d.host[&key("vpc-b", "10.10.0.250")], HOST_ADDR);
        // No probe address: nothing probed, nothing of the provider VPC reaches the host.
        let mut t = s.clone();
        t.vpcs[1].probe_address = None;
        t.vpcs[0].resolver = None;
        assert!(
            compute(&t, links, &Unhealthy::new())
                .unwrap()
                .host
                .is_empty()
        );
        // An address both a probe address and a probed load balancer (validation refuses
        // it): no crash, the host's own role wins.
        let mut t = s.clone();
        t.vpcs[1].probe_address = Some("10.10.0.10".parse().unwrap());
        let d = compute(&t, links, &Unhealthy::new()).unwrap();
        assert_eq!(d.host[&key("vpc-b", "10.10.0.10")], HOST_ADDR);
    }

    #[test]
    fn load_balancer_health_leaves_gateway_and_gwlb_entries_alone() {
        // A gateway service whose next hop is the interface service's load balancer.
        let mut s = parse_state(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap();
        s.vpcs[1].probe_address = Some("10.10.0.250".parse().unwrap());
        let mut g = s.services[0].clone();
        g.id = "epsrv-oss".into();
        g.kind = ServiceType::Gateway;
        g.snat = vec!["10.10.0.202".parse().unwrap()];
        g.prefixes = vec!["100.64.10.0/24".parse().unwrap()];
        s.services.push(g);
        let mut e = s.endpoints[0].clone();
        e.id = "ep-oss".into();
        e.service = "epsrv-oss".into();
        e.zones.clear();
        e.gateway = Some("10.10.1.1".parse().unwrap());
        s.endpoints.push(e);
        s.validate().unwrap();
        let healthy = compute(&s, links, &Unhealthy::new()).unwrap();
        let down = compute(&s, links, &lbs_down(&["10.10.0.10"])).unwrap();
        assert_eq!(down.gw_routes, healthy.gw_routes, "gateway and GWLB routes");
        assert_eq!(down.gw_addrs, healthy.gw_addrs);
        assert_eq!(down.gwlb_targets, healthy.gwlb_targets);
        assert_eq!(down.gwlb_appliances, healthy.gwlb_appliances);
        // One load balancer only: fail open, the interface ENI keeps it too.
        assert_eq!(down.endpoints, healthy.endpoints);
        // And an appliance's verdict moves nothing of the interface endpoints.
        let appl = compute(&s, links, &unhealthy(&["10.20.2.10"])).unwrap();
        assert_eq!(appl.endpoints, healthy.endpoints);
        assert_ne!(appl.gwlb_targets, healthy.gwlb_targets);
    }

    #[test]
    fn stickiness_failover_and_whitelist_reach_the_flags() {
        let flags = |f: fn(&mut State)| {
            let mut s = gwlb_state();
            f(&mut s);
            compute(&s, links, &Unhealthy::new()).unwrap().gw_routes
                [&route("vpc-c", "10.30.8.0/24")]
                .flags
        };
        assert_eq!(flags(|_| {}), ENI_FLAG_GWLB | ENI_FLAG_WHITELISTED);
        assert_eq!(
            flags(|s| gwlb(s).stickiness = crate::model::Stickiness::ThreeTuple),
            ENI_FLAG_GWLB | ENI_FLAG_WHITELISTED | ENI_FLAG_STICKY_3
        );
        assert_eq!(
            flags(|s| gwlb(s).stickiness = crate::model::Stickiness::TwoTuple),
            ENI_FLAG_GWLB | ENI_FLAG_WHITELISTED | ENI_FLAG_STICKY_2
        );
        assert_eq!(
            flags(|s| gwlb(s).failover = Failover::Rebalance),
            ENI_FLAG_GWLB | ENI_FLAG_WHITELISTED | ENI_FLAG_REBALANCE
        );
        assert_eq!(flags(|s| s.services[1].whitelist.clear()), ENI_FLAG_GWLB);
        let mut s = gwlb_state();
        let g1 = s.endpoints.iter_mut().find(|e| e.id == "ep-g1").unwrap();
        g1.connection = Connection::Pending;
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert_eq!(
            d.gw_routes[&route("vpc-c", "10.30.9.0/24")].state,
            ConnectionState::Pending as u32
        );
    }
}
