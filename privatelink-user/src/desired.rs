//! From the domain model to the exact content the BPF maps should have. Pure: interface
//! lookups are passed in, so this is tested without a kernel.

use std::collections::BTreeMap;

use privatelink_common::{
    ConnectionState, ENI_FLAG_ACL, ENI_FLAG_GATEWAY, ENI_FLAG_SG, ENI_FLAG_WHITELISTED,
    EndpointEni, GatewayRoute, IFACE_FLAG_GATEWAYS, IfaceInfo, MAX_SNAT_ADDRS, PROTO_ANY,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, RULE_ACCEPT, RULE_DROP, Rule, RuleSet, SnatPool, VpcAddr,
    VpcPort,
};

use crate::model::{Direction, FieldError, Protocol, RuleAction, State, numeric_id};

/// An interface as the kernel knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Everything the daemon owns in the maps (conntrack and learned neighbors are the data
/// path's own).
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
    /// Next hops the data path may learn MACs for (load balancers, gateway next hops).
    pub next_hops: std::collections::BTreeSet<VpcAddr>,
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

/// A load balancer address the forwarder must resolve to a MAC, and the SNAT address to
/// ask from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub vpc_id: u32,
    pub addr: [u8; 4],
    pub ask_from: [u8; 4],
}

pub fn compute(
    state: &State,
    link: impl Fn(&str) -> Result<Link, String>,
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
                flags: if has_gateways(state, &vpc.id) {
                    IFACE_FLAG_GATEWAYS
                } else {
                    0
                },
                _pad: 0,
            },
        );
        d.vpc_ports.insert(
            vpc_id,
            VpcPort {
                ifindex: l.ifindex,
                mac: l.mac,
                _pad: [0; 2],
            },
        );
    }
    for svc in &state.services {
        let service_id = numeric_id(&svc.id);
        let vpc_id = numeric_id(&svc.vpc);
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
        for z in &ep.zones {
            let vsw = vpc
                .vswitches
                .iter()
                .find(|s| s.id == z.vswitch)
                .expect("validated");
            let backend = svc.backend_for_zone(&vsw.zone);
            let mut flags = if svc.is_whitelisted(&ep.account) {
                ENI_FLAG_WHITELISTED
            } else {
                0
            };
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
                EndpointEni {
                    endpoint_id: numeric_id(&ep.id),
                    service_id: numeric_id(&svc.id),
                    consumer_account: numeric_id(&ep.account),
                    state: ConnectionState::from(ep.connection) as u32,
                    flags,
                    zone_id: numeric_id(&vsw.zone),
                    provider_vpc_id: numeric_id(&svc.vpc),
                    lb_addr: backend.address.octets(),
                    gateway: [0; 4],
                },
            );
        }
        if let Some(gw) = ep.gateway {
            gateway_endpoint(&mut d, state, ep, svc, vpc, gw);
        }
    }
    d.next_hops = next_hops(state)
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
    if svc.is_whitelisted(&ep.account) {
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
    let entry = EndpointEni {
        endpoint_id: numeric_id(&ep.id),
        service_id: numeric_id(&svc.id),
        consumer_account: numeric_id(&ep.account),
        state: ConnectionState::from(ep.connection) as u32,
        flags,
        zone_id: numeric_id(zone),
        provider_vpc_id: numeric_id(&svc.vpc),
        lb_addr: svc.backend_for_zone(zone).address.octets(),
        gateway: gw.octets(),
    };
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

fn has_gateways(state: &State, vpc: &str) -> bool {
    state
        .endpoints
        .iter()
        .any(|e| e.vpc == vpc && e.gateway.is_some())
}

/// The load balancer addresses that forwarding endpoints send to.
pub fn next_hops(state: &State) -> Vec<NextHop> {
    let mut hops: Vec<NextHop> = state
        .services
        .iter()
        .flat_map(|svc| {
            let vpc_id = numeric_id(&svc.vpc);
            let ask_from = svc.snat[0].octets();
            svc.backends.iter().map(move |b| NextHop {
                vpc_id,
                addr: b.address.octets(),
                ask_from,
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
    use crate::model::{Connection, parse_state};

    const LAB: &str = include_str!("../../tests/lab.toml");

    fn links(name: &str) -> Result<Link, String> {
        match name {
            "fc0" => Ok(Link {
                ifindex: 5,
                mac: [2, 0, 0, 0, 0, 5],
            }),
            "fp0" => Ok(Link {
                ifindex: 7,
                mac: [2, 0, 0, 0, 0, 7],
            }),
            _ => Err(format!("no interface {name}")),
        }
    }

    #[test]
    fn lab_maps_to_entries() {
        let s = parse_state(LAB).unwrap();
        let d = compute(&s, links).unwrap();
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
        let d = compute(&s, links).unwrap();
        let eni = d.endpoints.values().next().unwrap();
        assert!(!eni.is_whitelisted());
        assert_eq!(eni.state, ConnectionState::Disconnected as u32);
    }

    #[test]
    fn missing_interface_names_the_vpc() {
        let mut s = parse_state(LAB).unwrap();
        s.vpcs[1].interface = "nope0".into();
        let e = compute(&s, links).unwrap_err();
        assert_eq!(e.field, "vpcs[1].interface");
    }
}
