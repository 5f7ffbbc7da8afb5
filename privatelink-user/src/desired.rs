//! From the domain model to the exact content the BPF maps should have. Pure: interface
//! lookups are passed in, so this is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use privatelink_common::{
    Appliance, ApplianceSet, ConnectionState, CounterKey, ENI_FLAG_ACL, ENI_FLAG_FLOW_LOG,
    ENI_FLAG_GATEWAY, ENI_FLAG_GWLB, ENI_FLAG_LB_SET, ENI_FLAG_REBALANCE, ENI_FLAG_SG,
    ENI_FLAG_STICKY_2, ENI_FLAG_STICKY_3, ENI_FLAG_WHITELISTED, EndpointEni, EndpointEni6,
    GatewayRoute, GatewayRoute6, GwlbZone, HOST_ADDR, HOST_DNS, IFACE_FLAG_ADDRESSES,
    IFACE_FLAG_APPLIANCES, IFACE_FLAG_GATEWAYS, IFACE_FLAG_HOST_TRAFFIC, IfaceInfo, LbSet,
    Listener, ListenerSet, MAX_APPLIANCES, MAX_LBS_PER_ZONE, MAX_SNAT_ADDRS, PROTO_ANY, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, RULE_ACCEPT, RULE_DROP, Rule, Rule6, RuleSet, RuleSet6, SnatPool,
    SnatPool6, VpcAddr, VpcAddr6, VpcPort, gateway_policy6, host_peer,
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
    /// GWLB endpoints' IPv6 ENI addresses (answered in neighbour discovery): their endpoint.
    pub gw_addrs6: BTreeMap<VpcAddr6, u32>,
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
    /// GWLB endpoints' IPv6 routes and dualstack gateway services' IPv6 prefixes (the
    /// same entries as their IPv4 routes, with a gateway endpoint's IPv6 next hop).
    pub gw_routes6: BTreeMap<GatewayRoute6, EndpointEni6>,
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

/// ICMPv6's protocol number (IPv6 next header 58): what an `icmp` rule on an IPv6 range
/// matches.
pub const PROTO_ICMPV6: u8 = 58;

/// A filter rule as its address family's maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyRule {
    V4(Rule),
    V6(Rule6),
}

/// The data path's form of a rule (security group, ACL or gateway policy) on `cidr`.
fn rule(
    action: RuleAction,
    proto: Protocol,
    ports: Option<[u16; 2]>,
    cidr: &ipnet::IpNet,
) -> FamilyRule {
    let [port_lo, port_hi] = ports.unwrap_or([0, u16::MAX]);
    let proto = match proto {
        Protocol::All => PROTO_ANY,
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => PROTO_ICMP,
    };
    let action = match action {
        RuleAction::Accept => RULE_ACCEPT,
        RuleAction::Drop => RULE_DROP,
    };
    match cidr {
        ipnet::IpNet::V4(c) => FamilyRule::V4(Rule {
            addr: c.network().octets(),
            prefix: c.prefix_len(),
            proto,
            action,
            _pad: 0,
            port_lo,
            port_hi,
        }),
        ipnet::IpNet::V6(c) => FamilyRule::V6(Rule6 {
            addr: c.network().octets(),
            prefix: c.prefix_len(),
            // `icmp` on an IPv6 range means ICMPv6.
            proto: if proto == PROTO_ICMP {
                PROTO_ICMPV6
            } else {
                proto
            },
            action,
            _pad: 0,
            port_lo,
            port_hi,
        }),
    }
}

/// Rules in evaluation order, as the IPv4 and the IPv6 rule set (each family's rules keep
/// their order among themselves: a packet meets only its own family's).
fn rule_sets(rules: impl IntoIterator<Item = FamilyRule>) -> (RuleSet, RuleSet6) {
    let (mut v4, mut v6) = (RuleSet::default(), RuleSet6::default());
    for r in rules {
        match r {
            FamilyRule::V4(r) if (v4.count as usize) < v4.rules.len() => {
                v4.rules[v4.count as usize] = r;
                v4.count += 1;
            }
            FamilyRule::V6(r) if (v6.count as usize) < v6.rules.len() => {
                v6.rules[v6.count as usize] = r;
                v6.count += 1;
            }
            _ => {}
        }
    }
    (v4, v6)
}

/// The merged ingress rules of an ENI's security groups in evaluation order: priority 1
/// first, and at equal priority drop before accept.
pub fn merged_ingress(state: &State, groups: &[String]) -> Vec<FamilyRule> {
    let mut rules: Vec<(u32, u8, FamilyRule)> = state
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

/// The rule sets of ACL rules, in order.
fn acl_sets(rs: &[crate::model::AclRule]) -> (RuleSet, RuleSet6) {
    rule_sets(
        rs.iter()
            .map(|r| rule(r.action, r.protocol, r.ports, &r.cidr)),
    )
}

/// A load balancer (or appliance) address the forwarder must resolve to a MAC, and the
/// address to ask from (a SNAT address, or the GWLB's own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub vpc_id: u32,
    pub addr: [u8; 4],
    pub ask_from: [u8; 4],
}

/// An IPv6 load balancer address the forwarder must resolve to a MAC (Neighbour
/// Solicitation), and the address to ask from (the service's first IPv6 SNAT address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop6 {
    pub vpc_id: u32,
    pub addr: [u8; 16],
    pub ask_from: [u8; 16],
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
        snat6_pool(&mut d, svc);
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
            let key6 = z.eni6.map(|a| VpcAddr6 {
                vpc_id: key.vpc_id,
                addr: a.octets(),
            });
            if !ep.security_groups.is_empty() {
                flags |= ENI_FLAG_SG;
                let (v4, v6) = rule_sets(merged_ingress(state, &ep.security_groups));
                d.sg_rules.insert(key, v4);
                if let Some(k6) = key6 {
                    d.sg_rules6.insert(k6, v6);
                }
            }
            if let Some(acl) = state.acls.iter().find(|a| a.vswitches.contains(&vsw.id)) {
                flags |= ENI_FLAG_ACL;
                let (in4, in6) = acl_sets(&acl.ingress);
                let (out4, out6) = acl_sets(&acl.egress);
                d.acl_in.insert(key, in4);
                d.acl_out.insert(key, out4);
                if let Some(k6) = key6 {
                    d.acl6_in.insert(k6, in6);
                    d.acl6_out.insert(k6, out6);
                }
            }
            let entry = endpoint_entry(ep, svc, flags, &vsw.zone, backend.address.octets(), [0; 4]);
            d.endpoints.insert(key, entry);
            if let (Some(k6), Some(lb6)) = (key6, backend.address6) {
                d.endpoints6.insert(
                    k6,
                    EndpointEni6 {
                        // No IPv6 load balancer set (yet): IPv6 flows of a zone with several
                        // load balancers go to the first healthy one.
                        eni: EndpointEni {
                            flags: entry.flags & !ENI_FLAG_LB_SET,
                            ..entry
                        },
                        lb_addr: lb6.octets(),
                    },
                );
            }
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
    d.next_hops6 = next_hops6(state)
        .iter()
        .map(|h| VpcAddr6 {
            vpc_id: h.vpc_id,
            addr: h.addr,
        })
        .collect();
    // From the maps' content itself, so the flag agrees with it. (The sync writes
    // `PL_IFACES` first: a VPC's first address finds its flag already set; when its last
    // goes, the flag clears a few writes before the address does, whose packets then get
    // the verdict they get once it is gone.)
    let held: BTreeSet<u32> = d
        .endpoints
        .keys()
        .chain(d.snat_addrs.keys())
        .map(|k| k.vpc_id)
        .collect();
    for i in d.ifaces.values_mut() {
        if held.contains(&i.vpc_id) {
            i.flags |= IFACE_FLAG_ADDRESSES;
        }
    }
    Ok(d)
}

/// A dualstack service's IPv6 SNAT pool and addresses (`snat_ports` shared with IPv4).
fn snat6_pool(d: &mut Desired, svc: &EndpointService) {
    if !svc.ip_version.is_dualstack() || svc.snat6.is_empty() {
        return;
    }
    let (service_id, vpc_id) = (numeric_id(&svc.id), numeric_id(&svc.vpc));
    let mut pool = SnatPool6 {
        count: 0,
        port_min: svc.snat_ports[0],
        port_max: svc.snat_ports[1],
        addrs: [[0; 16]; MAX_SNAT_ADDRS],
    };
    for (slot, a) in pool.addrs.iter_mut().zip(&svc.snat6) {
        *slot = a.octets();
        pool.count += 1;
        d.snat6_addrs.insert(
            VpcAddr6 {
                vpc_id,
                addr: a.octets(),
            },
            service_id,
        );
    }
    d.snat6_pools.insert(service_id, pool);
}

/// A route of `prefix` in VPC `vpc_id` to `entry`, in its family's route trie; an IPv6
/// one goes to `lb6` (a gateway endpoint's IPv6 next hop; none for GWLB routes).
fn insert_route(
    d: &mut Desired,
    vpc_id: u32,
    prefix: &ipnet::IpNet,
    entry: EndpointEni,
    lb6: Option<std::net::Ipv6Addr>,
) {
    match prefix {
        ipnet::IpNet::V4(p) => {
            let route = GatewayRoute {
                prefix_len: 32 + p.prefix_len() as u32,
                vpc_id,
                addr: p.network().octets(),
            };
            d.gw_routes.insert(route, entry);
        }
        ipnet::IpNet::V6(p) => {
            let route = GatewayRoute6 {
                prefix_len: 32 + p.prefix_len() as u32,
                vpc_id,
                addr: p.network().octets(),
            };
            let lb_addr = lb6.map_or([0; 16], |a| a.octets());
            d.gw_routes6.insert(
                route,
                EndpointEni6 {
                    eni: entry,
                    lb_addr,
                },
            );
        }
    }
}

/// A gateway endpoint: one route per service prefix in the consumer VPC, its route
/// target answered in ARP, its policy as an ordered rule set under the target address.
/// A dualstack one also routes the service's IPv6 prefixes (to the zone's IPv6 load
/// balancer), its IPv6 route target is answered in neighbour discovery, and its policy's
/// IPv6 rules are kept under `gateway_policy6` (its IPv4 target, IPv4-mapped: the key the
/// data path derives from the route's entry).
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
    let gateway6 = ep.gateway6.filter(|_| ep.ip_version.is_dualstack());
    if !ep.policy.is_empty() {
        flags |= ENI_FLAG_SG;
        let (v4, v6) = acl_sets(&ep.policy);
        d.sg_rules.insert(key, v4);
        if gateway6.is_some() {
            d.sg_rules6.insert(gateway_policy6(vpc_id, gw.octets()), v6);
        }
    }
    let backend = svc.backend_for_zone(zone);
    let entry = endpoint_entry(ep, svc, flags, zone, backend.address.octets(), gw.octets());
    d.gw_addrs.insert(key, entry.endpoint_id);
    if let Some(a) = gateway6 {
        d.gw_addrs6.insert(
            VpcAddr6 {
                vpc_id,
                addr: a.octets(),
            },
            entry.endpoint_id,
        );
    }
    for p in &svc.prefixes {
        match (p, gateway6, backend.address6) {
            (ipnet::IpNet::V4(_), ..) => insert_route(d, vpc_id, p, entry, None),
            // Only a dualstack endpoint (an IPv6 route target) of a dualstack service (an
            // IPv6 load balancer) routes an IPv6 prefix.
            (ipnet::IpNet::V6(_), Some(_), Some(lb6)) => {
                insert_route(d, vpc_id, p, entry, Some(lb6))
            }
            (ipnet::IpNet::V6(_), ..) => {}
        }
    }
    let _ = state;
}

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

/// `IFACE_FLAG_HOST_TRAFFIC` as the VPC says, `IFACE_FLAG_GATEWAYS` when the VPC has
/// gateway or GWLB endpoints (routes are looked up), `IFACE_FLAG_APPLIANCES` when it holds
/// a GWLB service's appliances. (`IFACE_FLAG_ADDRESSES` comes from the finished maps, at
/// the end of `compute_with_hops`.)
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
/// service's appliance set for the ENI's zone, and its ENI answered in ARP (its IPv6
/// address, a dualstack endpoint's IPv6 route target, in neighbour discovery).
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
    if let Some(a) = z.eni6 {
        d.gw_addrs6.insert(
            VpcAddr6 {
                vpc_id,
                addr: a.octets(),
            },
            entry.endpoint_id,
        );
    }
    for p in &ep.routes {
        insert_route(d, vpc_id, p, entry, None);
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

/// The IPv6 load balancer addresses dualstack services send to, each asked from the
/// service's first IPv6 SNAT address.
pub fn next_hops6(state: &State) -> Vec<NextHop6> {
    let mut hops: Vec<NextHop6> = state
        .services
        .iter()
        .filter(|svc| svc.ip_version.is_dualstack() && svc.gwlb.is_none())
        .flat_map(|svc| {
            let vpc_id = numeric_id(&svc.vpc);
            svc.snat6.first().into_iter().flat_map(move |from| {
                svc.backends.iter().filter_map(move |b| {
                    Some(NextHop6 {
                        vpc_id,
                        addr: b.address6?.octets(),
                        ask_from: from.octets(),
                    })
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
            ipv6_cidr: None,
        });
        t.services[0].backends.push(crate::model::Backend {
            zone: "zone-b".into(),
            address: "10.10.0.11".parse().unwrap(),
            address6: None,
        });
        t.endpoints[0].zones.push(crate::model::EndpointZone {
            vswitch: "vsw-a9".into(),
            eni: "10.10.9.1".parse().unwrap(),
            eni6: None,
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
        // Interfaces: the consumer VPC looks routes up, the security VPC takes GENEVE back;
        // neither holds an endpoint ENI or a SNAT address, so neither looks those up. The
        // lab's consumer VPC holds an ENI, its provider VPC SNAT addresses.
        assert_eq!(d.ifaces[&11].flags, IFACE_FLAG_GATEWAYS);
        assert_eq!(d.ifaces[&9].flags, IFACE_FLAG_APPLIANCES);
        assert_eq!(d.ifaces[&5].flags, IFACE_FLAG_ADDRESSES);
        assert_eq!(d.ifaces[&7].flags, IFACE_FLAG_ADDRESSES);
        let mut without = s.clone();
        without.endpoints.retain(|e| e.vpc != "vpc-a");
        let d2 = compute(&without, links, &Unhealthy::new()).unwrap();
        assert_eq!(d2.ifaces[&5].flags, 0, "vpc-a's last ENI gone");
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
            ipv6_cidr: None,
        });
        s.vpcs[0].resolver = Some("10.10.1.2".parse().unwrap());
        s.vpcs[1].probe_address = Some("10.10.0.250".parse().unwrap());
        s.services[0].backends.push(crate::model::Backend {
            zone: "zone-b".into(),
            address: "10.10.0.11".parse().unwrap(),
            address6: None,
        });
        s.endpoints[0].zones.push(crate::model::EndpointZone {
            vswitch: "vsw-a9".into(),
            eni: "10.10.9.1".parse().unwrap(),
            eni6: None,
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
            address6: None,
        });
        s.services[0].backends.push(crate::model::Backend {
            zone: "zone-b".into(),
            address: "10.10.0.13".parse().unwrap(),
            address6: None,
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

    // Dual stack (issue 17).

    fn v6(a: &str) -> [u8; 16] {
        a.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    fn key6(vpc: &str, a: &str) -> VpcAddr6 {
        VpcAddr6 {
            vpc_id: numeric_id(vpc),
            addr: v6(a),
        }
    }

    fn sg_rule(priority: u32, action: RuleAction, cidr: &str) -> crate::model::SgRule {
        crate::model::SgRule {
            id: String::new(),
            direction: Direction::Ingress,
            priority,
            action,
            protocol: Protocol::Tcp,
            ports: Some([80, 80]),
            cidr: cidr.parse().unwrap(),
        }
    }

    /// The dual-stack lab with a security group of IPv4 and IPv6 rules on ep-a and an ACL
    /// on its vSwitch.
    fn dual_with_filters() -> State {
        let mut s = crate::model::dual_stack_lab();
        s.security_groups.push(crate::model::SecurityGroup {
            id: "sg-a".into(),
            account: "acct-a".into(),
            vpc: "vpc-a".into(),
            name: String::new(),
            rules: vec![
                sg_rule(5, RuleAction::Accept, "fd00:a::/56"),
                sg_rule(5, RuleAction::Accept, "10.10.0.0/16"),
                sg_rule(5, RuleAction::Drop, "fd00:a:0:1::66/128"),
                sg_rule(1, RuleAction::Drop, "10.10.1.66/32"),
            ],
            last_rule: 0,
        });
        s.endpoints[0].security_groups = vec!["sg-a".into()];
        let acl_rule = |action, cidr: &str| crate::model::AclRule {
            action,
            protocol: Protocol::All,
            ports: None,
            cidr: cidr.parse().unwrap(),
        };
        s.acls.push(crate::model::NetworkAcl {
            id: "acl-a".into(),
            account: "acct-a".into(),
            vpc: "vpc-a".into(),
            vswitches: vec!["vsw-a1".into()],
            ingress: vec![
                acl_rule(RuleAction::Drop, "fd00:a:0:9::/64"),
                acl_rule(RuleAction::Accept, "::/0"),
                acl_rule(RuleAction::Accept, "0.0.0.0/0"),
            ],
            egress: vec![acl_rule(RuleAction::Accept, "::/0")],
        });
        s.validate().unwrap();
        s
    }

    #[test]
    fn a_dualstack_endpoint_gets_the_ipv6_entries_of_its_ipv4_ones() {
        let s = dual_with_filters();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let k4 = VpcAddr {
            vpc_id: numeric_id("vpc-a"),
            addr: ip("10.10.1.100"),
        };
        let k6 = key6("vpc-a", "fd00:a:0:1::64");
        let eni = d.endpoints[&k4];
        assert_eq!(
            eni.flags & (ENI_FLAG_SG | ENI_FLAG_ACL),
            ENI_FLAG_SG | ENI_FLAG_ACL
        );
        assert_eq!(
            d.endpoints6,
            BTreeMap::from([(
                k6,
                EndpointEni6 {
                    eni,
                    lb_addr: v6("fd00:b::10"),
                }
            )])
        );
        // The service's IPv6 SNAT pool, ports shared with IPv4.
        let svc = numeric_id("epsrv-b");
        let pool = d.snat6_pools[&svc];
        assert_eq!((pool.count, pool.port_min, pool.port_max), (2, 1024, 65535));
        assert_eq!(pool.addrs[..2], [v6("fd00:b::200"), v6("fd00:b::201")]);
        assert_eq!(
            d.snat6_addrs,
            BTreeMap::from([
                (key6("vpc-b", "fd00:b::200"), svc),
                (key6("vpc-b", "fd00:b::201"), svc)
            ])
        );
        assert_eq!(d.next_hops6, BTreeSet::from([key6("vpc-b", "fd00:b::10")]));
        assert_eq!(
            next_hops6(&s),
            [NextHop6 {
                vpc_id: numeric_id("vpc-b"),
                addr: v6("fd00:b::10"),
                ask_from: v6("fd00:b::200"),
            }]
        );
        // Each family's rules in the merged order (priority, then drop first), apart.
        let sg4 = d.sg_rules[&k4];
        let sg6 = d.sg_rules6[&k6];
        let order4: Vec<(u8, [u8; 4])> = sg4.rules[..sg4.count as usize]
            .iter()
            .map(|r| (r.action, r.addr))
            .collect();
        assert_eq!(
            order4,
            [
                (RULE_DROP, ip("10.10.1.66")),
                (RULE_ACCEPT, ip("10.10.0.0"))
            ]
        );
        let order6: Vec<(u8, [u8; 16], u8)> = sg6.rules[..sg6.count as usize]
            .iter()
            .map(|r| (r.action, r.addr, r.prefix))
            .collect();
        assert_eq!(
            order6,
            [
                (RULE_DROP, v6("fd00:a:0:1::66"), 128),
                (RULE_ACCEPT, v6("fd00:a::"), 56)
            ]
        );
        assert_eq!(sg6.rules[0].port_lo, 80);
        assert_eq!(sg6.rules[0].proto, PROTO_TCP);
        // `icmp` means ICMPv6 on an IPv6 range, ICMP on an IPv4 one.
        let icmp = |cidr: &str| {
            rule(
                RuleAction::Accept,
                Protocol::Icmp,
                None,
                &cidr.parse().unwrap(),
            )
        };
        assert!(matches!(icmp("fd00::/8"), FamilyRule::V6(r) if r.proto == PROTO_ICMPV6));
        assert!(matches!(icmp("10.0.0.0/8"), FamilyRule::V4(r) if r.proto == PROTO_ICMP));
        let acl6 = d.acl6_in[&k6];
        assert_eq!(acl6.count, 2);
        assert_eq!(
            (acl6.rules[0].action, acl6.rules[0].prefix),
            (RULE_DROP, 64)
        );
        assert_eq!(d.acl_in[&k4].count, 1);
        assert_eq!(d.acl6_out[&k6].count, 1);
        assert_eq!(d.acl_out[&k4].count, 0);
    }

    #[test]
    fn dual_stack_leaves_the_ipv4_entries_as_they_were() {
        let mut plain = dual_with_filters();
        plain.endpoints[0].ip_version = crate::model::IpVersion::Ipv4;
        plain.endpoints[0].zones[0].eni6 = None;
        let d4 = compute(&plain, links, &Unhealthy::new()).unwrap();
        let d = compute(&dual_with_filters(), links, &Unhealthy::new()).unwrap();
        assert_eq!(d.endpoints, d4.endpoints);
        assert_eq!(d.sg_rules, d4.sg_rules);
        assert_eq!(d.acl_in, d4.acl_in);
        assert_eq!(d.snat_pools, d4.snat_pools);
        assert_eq!(d.next_hops, d4.next_hops);
        // An ipv4 endpoint of a dualstack service: no IPv6 ENI entries, the service's
        // pool and next hops all the same (ready for dualstack endpoints).
        assert!(d4.endpoints6.is_empty() && d4.sg_rules6.is_empty() && d4.acl6_in.is_empty());
        assert_eq!(d4.snat6_pools, d.snat6_pools);
        // The lab as it was: nothing of IPv6 at all.
        let lab = compute(&parse_state(LAB).unwrap(), links, &Unhealthy::new()).unwrap();
        assert!(lab.endpoints6.is_empty() && lab.snat6_pools.is_empty());
        assert!(lab.snat6_addrs.is_empty() && lab.next_hops6.is_empty());
        assert!(lab.gw_routes6.is_empty());
    }

    #[test]
    fn the_ipv6_address_counts_into_the_slot_of_the_ipv4_one() {
        let mut d = compute(&dual_with_filters(), links, &Unhealthy::new()).unwrap();
        let fresh = crate::dataplane::slots::assign(&BTreeMap::new(), &mut d);
        assert_eq!(fresh.len(), 1, "one ENI, one slot");
        let slot = d.endpoints.values().next().unwrap().counter_slot;
        assert_ne!(slot, 0);
        assert_eq!(d.endpoints6.values().next().unwrap().eni.counter_slot, slot);
    }

    #[test]
    fn ipv6_flows_fail_over_with_the_ipv4_ones() {
        let mut s = crate::model::dual_stack_lab();
        s.vpcs[1].vswitches[1].ipv6_cidr = Some("fd00:b:0:3::/64".parse().unwrap());
        let lb = |zone: &str, a: &str, a6: &str| crate::model::Backend {
            zone: zone.into(),
            address: a.parse().unwrap(),
            address6: Some(a6.parse().unwrap()),
        };
        s.services[0]
            .backends
            .push(lb("zone-a", "10.10.0.12", "fd00:b::12"));
        s.validate().unwrap();
        let k6 = key6("vpc-a", "fd00:a:0:1::64");
        // Two load balancers in the zone: the IPv4 entry spreads over them, the IPv6 one
        // goes to the first (no IPv6 load balancer set).
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let e6 = d.endpoints6[&k6];
        assert_eq!(e6.lb_addr, v6("fd00:b::10"));
        assert_ne!(
            d.endpoints.values().next().unwrap().flags & ENI_FLAG_LB_SET,
            0
        );
        assert_eq!(e6.eni.flags & ENI_FLAG_LB_SET, 0);
        // The first one down (judged by its IPv4 health check): the other's IPv6 address.
        let d = compute(&s, links, &lbs_down(&["10.10.0.10"])).unwrap();
        assert_eq!(d.endpoints6[&k6].lb_addr, v6("fd00:b::12"));
        assert_eq!(d.next_hops6.len(), 2);
    }

    #[test]
    fn a_dualstack_gwlb_endpoints_ipv6_eni_is_answered_in_neighbour_discovery() {
        let mut s = gwlb_state();
        s.services
            .iter_mut()
            .find(|x| x.id == "gwlb-s")
            .unwrap()
            .ip_version = crate::model::IpVersion::Dualstack;
        let vpc = s.vpcs.iter_mut().find(|v| v.id == "vpc-c").unwrap();
        vpc.ipv6_cidr = Some("fd00:c::/56".parse().unwrap());
        vpc.vswitches[0].ipv6_cidr = Some("fd00:c:0:1::/64".parse().unwrap());
        let g1 = s.endpoints.iter_mut().find(|e| e.id == "ep-g1").unwrap();
        g1.ip_version = crate::model::IpVersion::Dualstack;
        g1.zones[0].eni6 = Some("fd00:c:0:1::5".parse().unwrap());
        s.validate().unwrap();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        // The IPv6 ENI beside the IPv4 one (ep-g2 stays ipv4: nothing), and no interface
        // endpoint's IPv6 entry: packets to it are not forwarded.
        let k6 = key6("vpc-c", "fd00:c:0:1::5");
        assert_eq!(d.gw_addrs6, BTreeMap::from([(k6, numeric_id("ep-g1"))]));
        assert!(d.endpoints6.is_empty());
        assert_eq!(d.gw_addrs.len(), 2);
        // Back to ipv4: gone.
        let g1 = s.endpoints.iter_mut().find(|e| e.id == "ep-g1").unwrap();
        g1.ip_version = crate::model::IpVersion::Ipv4;
        g1.zones[0].eni6 = None;
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert!(d.gw_addrs6.is_empty());
    }

    #[test]
    fn ipv6_routes_of_gwlb_and_gateway_endpoints_go_to_the_ipv6_trie() {
        let mut s = gwlb_state();
        s.services
            .iter_mut()
            .find(|x| x.id == "gwlb-s")
            .unwrap()
            .ip_version = crate::model::IpVersion::Dualstack;
        let g1 = s.endpoints.iter_mut().find(|e| e.id == "ep-g1").unwrap();
        g1.routes.push("fd00:c:9::/64".parse().unwrap());
        s.validate().unwrap();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let r6 = GatewayRoute6 {
            prefix_len: 32 + 64,
            vpc_id: numeric_id("vpc-c"),
            addr: v6("fd00:c:9::"),
        };
        assert_eq!(
            d.gw_routes6,
            BTreeMap::from([(
                r6,
                EndpointEni6 {
                    eni: d.gw_routes[&route("vpc-c", "10.30.9.0/24")],
                    // A GWLB route's IPv6 flows go to an appliance, over IPv4.
                    lb_addr: [0; 16],
                }
            )])
        );
        assert_eq!(d.gw_routes.len(), 3, "the IPv4 routes as they were");
        // Its slot is the IPv4 routes' one.
        let mut d = d;
        crate::dataplane::slots::assign(&BTreeMap::new(), &mut d);
        assert_eq!(
            d.gw_routes6[&r6].eni.counter_slot,
            d.gw_routes[&route("vpc-c", "10.30.9.0/24")].counter_slot
        );
    }

    /// The dual-stack lab with a dualstack gateway service `epsrv-gw` (prefixes
    /// 100.64.10.0/24 and fd00:64::/48, its load balancer the lab's, fd00:b::10) and a
    /// dualstack gateway endpoint `ep-gw` (route targets 10.10.1.1 and fd00:a:0:1::1) whose
    /// policy allows tcp/443 to fd00:64:0:1::/64 only.
    fn dual_gateway_state() -> State {
        let mut s = crate::model::dual_stack_lab();
        let mut g = s.services[0].clone();
        g.id = "epsrv-gw".into();
        g.kind = ServiceType::Gateway;
        g.snat = vec!["10.10.0.202".parse().unwrap()];
        g.snat6 = vec!["fd00:b::202".parse().unwrap()];
        g.prefixes = vec![
            "100.64.10.0/24".parse().unwrap(),
            "fd00:64::/48".parse().unwrap(),
        ];
        s.services.push(g);
        let mut e = s.endpoints[0].clone();
        e.id = "ep-gw".into();
        e.service = "epsrv-gw".into();
        e.zones.clear();
        e.ip_version = crate::model::IpVersion::Dualstack;
        e.gateway = Some("10.10.1.1".parse().unwrap());
        e.gateway6 = Some("fd00:a:0:1::1".parse().unwrap());
        e.policy = vec![crate::model::AclRule {
            action: RuleAction::Accept,
            protocol: Protocol::Tcp,
            ports: Some([443, 443]),
            cidr: "fd00:64:0:1::/64".parse().unwrap(),
        }];
        s.endpoints.push(e);
        s.validate().unwrap();
        s
    }

    #[test]
    fn a_dualstack_gateway_endpoint_routes_the_ipv6_prefixes_to_the_ipv6_load_balancer() {
        let s = dual_gateway_state();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        let (vpc_a, vpc_b) = (numeric_id("vpc-a"), numeric_id("vpc-b"));
        let v4 = d.gw_routes[&route("vpc-a", "100.64.10.0/24")];
        assert_eq!(v4.gateway, [10, 10, 1, 1]);
        assert_eq!(v4.flags & ENI_FLAG_GATEWAY, ENI_FLAG_GATEWAY);
        let r6 = GatewayRoute6 {
            prefix_len: 32 + 48,
            vpc_id: vpc_a,
            addr: v6("fd00:64::"),
        };
        // The IPv4 route's entry, with the zone's IPv6 load balancer as the next hop.
        assert_eq!(
            d.gw_routes6,
            BTreeMap::from([(
                r6,
                EndpointEni6 {
                    eni: v4,
                    lb_addr: v6("fd00:b::10"),
                }
            )])
        );
        assert!(d.next_hops6.contains(&VpcAddr6 {
            vpc_id: vpc_b,
            addr: v6("fd00:b::10"),
        }));
        // Its IPv6 route target answers neighbour discovery, its IPv4 one ARP.
        let ep = numeric_id("ep-gw");
        assert_eq!(
            d.gw_addrs6.get(&VpcAddr6 {
                vpc_id: vpc_a,
                addr: v6("fd00:a:0:1::1"),
            }),
            Some(&ep)
        );
        assert_eq!(
            d.gw_addrs.get(&VpcAddr {
                vpc_id: vpc_a,
                addr: [10, 10, 1, 1],
            }),
            Some(&ep)
        );
        // The policy: its IPv6 rule under the IPv4-mapped target, none for IPv4 (a
        // policy with rules drops what none of them matches).
        let k6 = gateway_policy6(vpc_a, [10, 10, 1, 1]);
        assert_eq!(k6.addr, v6("::ffff:10.10.1.1"));
        let p6 = d.sg_rules6[&k6];
        assert_eq!(p6.count, 1);
        assert_eq!(
            (
                p6.rules[0].addr,
                p6.rules[0].prefix,
                p6.rules[0].proto,
                p6.rules[0].port_lo,
                p6.rules[0].port_hi,
                p6.rules[0].action
            ),
            (v6("fd00:64:0:1::"), 64, PROTO_TCP, 443, 443, RULE_ACCEPT)
        );
        let p4 = d.sg_rules[&VpcAddr {
            vpc_id: vpc_a,
            addr: [10, 10, 1, 1],
        }];
        assert_eq!(p4.count, 0);
        assert_eq!(v4.flags & ENI_FLAG_SG, ENI_FLAG_SG);
        // The IPv6 route counts into the IPv4 routes' slot.
        let mut d = d;
        crate::dataplane::slots::assign(&BTreeMap::new(), &mut d);
        let slot = d.gw_routes[&route("vpc-a", "100.64.10.0/24")].counter_slot;
        assert_ne!(slot, 0);
        assert_eq!(d.gw_routes6[&r6].eni.counter_slot, slot);
    }

    #[test]
    fn an_ipv4_gateway_endpoint_of_a_dualstack_service_routes_no_ipv6() {
        let mut s = dual_gateway_state();
        let e = s.endpoints.iter_mut().find(|e| e.id == "ep-gw").unwrap();
        e.ip_version = crate::model::IpVersion::Ipv4;
        e.gateway6 = None;
        // Its IPv6 rule would judge nothing: refused on the rule.
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "endpoints[1].policy[0].cidr", "{err}");
        assert!(err.message.contains("ipv4"), "{err}");
        s.endpoints[1].policy.clear();
        s.validate().unwrap();
        let d = compute(&s, links, &Unhealthy::new()).unwrap();
        assert!(d.gw_routes6.is_empty());
        assert!(d.gw_addrs6.is_empty());
        assert!(d.sg_rules6.is_empty());
        assert_eq!(d.gw_routes.len(), 1, "its IPv4 prefix is routed");
    }
}
