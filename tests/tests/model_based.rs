//! A randomized model-based test of the control plane: a long random sequence of API calls
//! (services with and without auto-accept serving one zone or two, with listeners from a
//! palette (none, or overlapping ones: refused) and changed afterwards, whitelist changes,
//! endpoints with and without security groups in a served zone or not, with an ENI address
//! given or allocated, zones added and removed, every connection action, security groups
//! and their rules, a vSwitch ACL, deletions — valid and invalid ones) against a running
//! daemon, and the same calls
//! against a small reference model written here from the product's rules. After every
//! call the answer's class (accepted or refused) must be the model's; the pinned
//! `PL_ENDPOINTS`, `PL_SNAT_ADDRS`, `PL_SNAT_POOLS`, `PL_LISTENERS`, `PL_SG_RULES`,
//! `PL_ACL_IN` and `PL_ACL_OUT` maps must hold exactly the entries the model expects; and a refused call
//! must not have moved `PL_EPOCH` (it wrote no map).
//!
//! `PL_MODEL_SEED` replays a sequence; `PL_MODEL_STEPS` makes it longer. A failing
//! sequence is shrunk (chunks of calls removed while it still fails, each try against a
//! fresh daemon, 80 tries at most) and reported with the first failure.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap};
use privatelink_common::{
    ConnectionState, ENI_FLAG_ACL, ENI_FLAG_SG, EndpointEni, Listener, ListenerSet, MAX_RULES,
    PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RULE_ACCEPT, RULE_DROP, RuleSet, SnatPool,
    VpcAddr, map_names,
};
use privatelink_tests::apidaemon::ApiDaemon;
use privatelink_user::{client::Client, dataplane, model::numeric_id};
use serde_json::json;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// ENI -> (endpoint, state, whitelisted, LB, filter flags): PL_ENDPOINTS as compared.
type EniMap = BTreeMap<[u8; 4], (u32, u32, bool, [u8; 4], u32)>;

/// ENI -> rules, for PL_SG_RULES, PL_ACL_IN and PL_ACL_OUT.
type Filters = (
    BTreeMap<[u8; 4], Vec<MapRule>>,
    BTreeMap<[u8; 4], Vec<MapRule>>,
    BTreeMap<[u8; 4], Vec<MapRule>>,
);

/// SNAT address -> service, and service -> (address count, first address, port range).
type SnatMaps = (
    BTreeMap<[u8; 4], u32>,
    BTreeMap<u32, (u32, [u8; 4], [u16; 2])>,
);

const SERVICES: u64 = 3;
const ENDPOINTS: u64 = 6;
const GROUPS: u64 = 2;
const ACLS: u64 = 2;

/// A rule as the data path holds it: remote address, prefix, protocol, action, ports.
type MapRule = ([u8; 4], u8, u8, u8, u16, u16);

/// A rule the calls use: ingress?, priority, the rule as the data path must hold it, and
/// its JSON. The palette is small on purpose: priorities and actions collide.
struct RuleSpec {
    ingress: bool,
    priority: u32,
    rule: MapRule,
    json: &'static str,
}

const RULES: [RuleSpec; 6] = [
    RuleSpec {
        ingress: true,
        priority: 5,
        rule: ([10, 10, 1, 0], 24, PROTO_TCP, RULE_ACCEPT, 80, 80),
        json: r#"{"direction":"ingress","priority":5,"action":"accept","protocol":"tcp","ports":[80,80],"cidr":"10.10.1.0/24"}"#,
    },
    RuleSpec {
        ingress: true,
        priority: 5,
        rule: ([0, 0, 0, 0], 0, PROTO_ANY, RULE_DROP, 0, u16::MAX),
        json: r#"{"direction":"ingress","priority":5,"action":"drop","protocol":"all","cidr":"0.0.0.0/0"}"#,
    },
    RuleSpec {
        ingress: true,
        priority: 1,
        rule: ([192, 168, 0, 0], 16, PROTO_UDP, RULE_ACCEPT, 53, 53),
        json: r#"{"direction":"ingress","priority":1,"action":"accept","protocol":"udp","ports":[53,53],"cidr":"192.168.0.0/16"}"#,
    },
    RuleSpec {
        ingress: true,
        priority: 100,
        rule: ([10, 0, 0, 0], 8, PROTO_ICMP, RULE_ACCEPT, 0, u16::MAX),
        json: r#"{"direction":"ingress","priority":100,"action":"accept","protocol":"icmp","cidr":"10.0.0.0/8"}"#,
    },
    RuleSpec {
        ingress: false,
        priority: 1,
        rule: ([0, 0, 0, 0], 0, PROTO_ANY, RULE_ACCEPT, 0, u16::MAX),
        json: r#"{"direction":"egress","priority":1,"action":"accept","protocol":"all","cidr":"0.0.0.0/0"}"#,
    },
    // Refused: priority outside 1-100.
    RuleSpec {
        ingress: true,
        priority: 0,
        rule: ([0, 0, 0, 0], 0, PROTO_ANY, RULE_ACCEPT, 0, u16::MAX),
        json: r#"{"direction":"ingress","priority":0,"action":"accept","protocol":"all","cidr":"0.0.0.0/0"}"#,
    },
];

/// ACL rules (no direction or priority: the list order is the evaluation order).
const ACL_RULES: [(MapRule, &str); 3] = [
    (
        ([10, 10, 1, 0], 24, PROTO_TCP, RULE_ACCEPT, 80, 80),
        r#"{"action":"accept","protocol":"tcp","ports":[80,80],"cidr":"10.10.1.0/24"}"#,
    ),
    (
        ([0, 0, 0, 0], 0, PROTO_ANY, RULE_DROP, 0, u16::MAX),
        r#"{"action":"drop","protocol":"all","cidr":"0.0.0.0/0"}"#,
    ),
    (
        ([172, 16, 0, 0], 12, PROTO_UDP, RULE_ACCEPT, 1000, 2000),
        r#"{"action":"accept","protocol":"udp","ports":[1000,2000],"cidr":"172.16.0.0/12"}"#,
    ),
];

#[derive(Clone, Debug, Default)]
struct Group {
    /// (rule id number, palette index), in the order added.
    rules: Vec<(u32, usize)>,
    last_rule: u32,
}

#[derive(Clone, Debug)]
struct Acl {
    id: u64,
    ingress: Vec<usize>,
    egress: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Service {
    auto_accept: bool,
    whitelisted: bool,
    /// The zones it has a load balancer in: bit 0 zone-a, bit 1 zone-b.
    zones: u8,
    /// Its listeners: a bit per `LISTENERS` entry.
    listeners: u8,
}

/// The listeners services are made of: (protocol, first port, last port). The last one
/// overlaps the one before it, so a set holding both is refused.
const LISTENERS: [(u8, u16, u16); 5] = [
    (PROTO_TCP, 80, 80),
    (PROTO_TCP, 443, 443),
    (PROTO_UDP, 53, 53),
    (PROTO_TCP, 8000, 8100),
    (PROTO_TCP, 8050, 8050),
];

/// Whether a listener mask is a valid set: not empty, no overlap.
fn listeners_valid(mask: u8) -> bool {
    mask != 0 && mask & 0b11000 != 0b11000
}

fn listeners_json(mask: u8) -> serde_json::Value {
    bits(mask, LISTENERS.len())
        .into_iter()
        .map(|i| {
            let (p, lo, hi) = LISTENERS[i];
            let proto = if p == PROTO_TCP { "tcp" } else { "udp" };
            if lo == hi {
                json!({"protocol": proto, "port": lo})
            } else {
                json!({"protocol": proto, "port": lo, "to_port": hi})
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Endpoint {
    service: u64,
    state: ConnectionState,
    groups: Vec<u64>,
    /// Zone (0: zone-a in vsw-a1, 1: zone-b in vsw-a2) -> the ENI's address.
    enis: BTreeMap<u8, [u8; 4]>,
}

/// The reference model: what the product documents say each call does.
#[derive(Default)]
struct Model {
    services: BTreeMap<u64, Service>,
    endpoints: BTreeMap<u64, Endpoint>,
    /// Security groups in creation order (the order their rules merge in at equal rank).
    groups: Vec<(u64, Group)>,
    /// The one ACL on vsw-a1, if any.
    acl: Option<Acl>,
    /// Calls refused because the service does not serve the zone asked for.
    unserved_refused: usize,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Service, auto-accept, zones served (a bit per zone, never none), listeners (a bit
    /// per `LISTENERS` entry).
    CreateService(u64, bool, u8, u8),
    /// Service, the listeners that replace its own.
    SetListeners(u64, u8),
    DeleteService(u64),
    Whitelist(u64, bool),
    /// Endpoint, service, security groups (a bit per group), zone, whether the ENI's
    /// address is left to the daemon.
    CreateEndpoint(u64, u64, u8, u8, bool),
    /// Endpoint, zone, address left to the daemon.
    AddZone(u64, u8, bool),
    /// Endpoint, zone.
    RemoveZone(u64, u8),
    DeleteEndpoint(u64),
    Connection(u64, u64, &'static str),
    CreateGroup(u64),
    DeleteGroup(u64),
    /// Group, palette index.
    AddRule(u64, usize),
    /// Group, rule id number.
    RemoveRule(u64, u32),
    /// ACL, ingress and egress palette indexes (a bit each).
    CreateAcl(u64, u8, u8),
    DeleteAcl(u64),
}

fn group_ids(mask: u8) -> Vec<u64> {
    (0..GROUPS).filter(|g| mask & (1 << g) != 0).collect()
}

fn bits(mask: u8, n: usize) -> Vec<usize> {
    (0..n).filter(|i| mask & (1 << i) != 0).collect()
}

fn svc_id(k: u64) -> String {
    format!("svc-{k}")
}
fn sg_id(g: u64) -> String {
    format!("sg-{g}")
}
fn ep_id(j: u64) -> String {
    format!("ep-{j}")
}
const ZONES: [&str; 2] = ["zone-a", "zone-b"];

/// The vSwitch of vpc-a in `zone` (`ZONES[zone]`).
fn vsw(zone: u8) -> &'static str {
    ["vsw-a1", "vsw-a2"][zone as usize]
}
/// The address endpoint `j` asks for in `zone` when it gives one.
fn eni(j: u64, zone: u8) -> [u8; 4] {
    [10, 10, 1 + zone, 100 + j as u8]
}
/// Service `k`'s load balancer in `zone`.
fn lb(k: u64, zone: u8) -> [u8; 4] {
    [10, 10, 0, 10 + 10 * zone + k as u8]
}

impl Model {
    /// Applies `op`; returns whether the API must accept it.
    fn apply(&mut self, op: Op) -> bool {
        use ConnectionState::*;
        match op {
            Op::CreateService(k, auto, zones, listeners) => {
                if self.services.contains_key(&k) || !listeners_valid(listeners) {
                    return false;
                }
                self.services.insert(
                    k,
                    Service {
                        auto_accept: auto,
                        whitelisted: false,
                        zones,
                        listeners,
                    },
                );
                true
            }
            Op::SetListeners(k, listeners) => match self.services.get_mut(&k) {
                Some(s) if listeners_valid(listeners) => {
                    s.listeners = listeners;
                    true
                }
                _ => false,
            },
            Op::DeleteService(k) => {
                let used = self.endpoints.values().any(|e| e.service == k);
                if !self.services.contains_key(&k) || used {
                    return false;
                }
                self.services.remove(&k);
                true
            }
            Op::Whitelist(k, add) => match self.services.get_mut(&k) {
                None => false,
                Some(s) if !add && !s.whitelisted => false,
                Some(s) => {
                    s.whitelisted = add;
                    true
                }
            },
            Op::CreateEndpoint(j, k, mask, zone, alloc) => {
                let Some(s) = self.services.get(&k) else {
                    return false;
                };
                if !s.whitelisted || self.endpoints.contains_key(&j) {
                    return false;
                }
                let groups = group_ids(mask);
                if groups.iter().any(|g| self.group(*g).is_none())
                    || self.ingress_count(&groups) > MAX_RULES
                {
                    return false;
                }
                if s.zones & (1 << zone) == 0 {
                    self.unserved_refused += 1;
                    return false;
                }
                let state = if s.auto_accept { Connected } else { Pending };
                let addr = self.address(j, zone, alloc);
                self.endpoints.insert(
                    j,
                    Endpoint {
                        service: k,
                        state,
                        groups,
                        enis: [(zone, addr)].into(),
                    },
                );
                true
            }
            Op::AddZone(j, zone, alloc) => {
                let Some(e) = self.endpoints.get(&j) else {
                    return false;
                };
                if self.services[&e.service].zones & (1 << zone) == 0 {
                    self.unserved_refused += 1;
                    return false;
                }
                // One ENI per zone.
                if e.enis.contains_key(&zone) {
                    return false;
                }
                let addr = self.address(j, zone, alloc);
                let e = self.endpoints.get_mut(&j).expect("checked");
                e.enis.insert(zone, addr);
                true
            }
            Op::RemoveZone(j, zone) => match self.endpoints.get_mut(&j) {
                // Not its zone (404), or its last one (409).
                Some(e) if e.enis.contains_key(&zone) && e.enis.len() > 1 => {
                    e.enis.remove(&zone);
                    true
                }
                _ => false,
            },
            Op::CreateGroup(g) => {
                if self.group(g).is_some() {
                    return false;
                }
                self.groups.push((g, Group::default()));
                true
            }
            Op::DeleteGroup(g) => {
                let used = self.endpoints.values().any(|e| e.groups.contains(&g));
                if self.group(g).is_none() || used {
                    return false;
                }
                self.groups.retain(|(id, _)| *id != g);
                true
            }
            Op::AddRule(g, r) => {
                if self.group(g).is_none() || !(1..=100).contains(&RULES[r].priority) {
                    return false;
                }
                // No endpoint of the group may end up with more merged ingress rules
                // than fit (a refused call leaves the group, rule ids included, as it was).
                if RULES[r].ingress
                    && self.endpoints.values().any(|e| {
                        e.groups.contains(&g) && self.ingress_count(&e.groups) >= MAX_RULES
                    })
                {
                    return false;
                }
                let grp = self.group_mut(g).expect("checked");
                grp.last_rule += 1;
                let id = grp.last_rule;
                grp.rules.push((id, r));
                true
            }
            Op::RemoveRule(g, id) => match self.group_mut(g) {
                Some(grp) if grp.rules.iter().any(|(i, _)| *i == id) => {
                    grp.rules.retain(|(i, _)| *i != id);
                    true
                }
                _ => false,
            },
            Op::CreateAcl(a, ingress, egress) => {
                // One ACL per vSwitch; ids are unique.
                if self.acl.is_some() {
                    return false;
                }
                self.acl = Some(Acl {
                    id: a,
                    ingress: bits(ingress, ACL_RULES.len()),
                    egress: bits(egress, ACL_RULES.len()),
                });
                true
            }
            Op::DeleteAcl(a) => {
                if self.acl.as_ref().is_none_or(|x| x.id != a) {
                    return false;
                }
                self.acl = None;
                true
            }
            Op::DeleteEndpoint(j) => self.endpoints.remove(&j).is_some(),
            Op::Connection(k, j, action) => {
                if !self.services.contains_key(&k) {
                    return false;
                }
                let Some(e) = self.endpoints.get_mut(&j).filter(|e| e.service == k) else {
                    return false;
                };
                let next = match (e.state, action) {
                    (Pending | Rejected, "accept") => Connected,
                    (Pending | Connected, "reject") => Rejected,
                    (Connected, "disable") => Disconnected,
                    (Disconnected, "enable") => Connected,
                    _ => return false,
                };
                e.state = next;
                true
            }
        }
    }

    /// The ENI address endpoint `j` gets in `zone`: the one it asks for, or the lowest
    /// address of the vSwitch (10.10.1.0/24 or 10.10.2.0/24, .0 reserved) that no ENI
    /// uses (nothing else of vpc-a has an address).
    fn address(&self, j: u64, zone: u8, alloc: bool) -> [u8; 4] {
        if !alloc {
            return eni(j, zone);
        }
        let used: BTreeSet<[u8; 4]> = self
            .endpoints
            .values()
            .flat_map(|e| e.enis.values().copied())
            .collect();
        (1..=252)
            .map(|i| [10, 10, 1 + zone, i])
            .find(|a| !used.contains(a))
            .expect("a free address")
    }

    fn group(&self, g: u64) -> Option<&Group> {
        self.groups.iter().find(|(id, _)| *id == g).map(|(_, x)| x)
    }

    fn group_mut(&mut self, g: u64) -> Option<&mut Group> {
        self.groups
            .iter_mut()
            .find(|(id, _)| *id == g)
            .map(|(_, x)| x)
    }

    fn ingress_count(&self, groups: &[u64]) -> usize {
        groups
            .iter()
            .filter_map(|g| self.group(*g))
            .flat_map(|g| &g.rules)
            .filter(|(_, r)| RULES[*r].ingress)
            .count()
    }

    /// What PL_ENDPOINTS must hold: (ENI) -> (endpoint, state, whitelisted, LB, filter
    /// flags).
    /// The ACL is on vsw-a1 (zone-a) only; every ENI goes to its own zone's load balancer
    /// (zone affinity; the zone is always one the service serves).
    fn expected(&self) -> EniMap {
        self.endpoints
            .iter()
            .flat_map(|(j, e)| {
                e.enis.iter().map(move |(zone, addr)| {
                    let sg = if e.groups.is_empty() { 0 } else { ENI_FLAG_SG };
                    let acl = if self.acl.is_some() && *zone == 0 {
                        ENI_FLAG_ACL
                    } else {
                        0
                    };
                    (
                        *addr,
                        (
                            numeric_id(&ep_id(*j)),
                            e.state as u32,
                            self.services[&e.service].whitelisted,
                            lb(e.service, *zone),
                            sg | acl,
                        ),
                    )
                })
            })
            .collect()
    }

    /// What PL_SG_RULES, PL_ACL_IN and PL_ACL_OUT must hold for the ENIs. Security groups:
    /// the ingress rules of the endpoint's groups, priority 1 first, drop before accept at
    /// equal priority, otherwise in the order the groups were made and the rules added.
    fn expected_filters(&self) -> Filters {
        let mut sg = BTreeMap::new();
        let (mut acl_in, mut acl_out) = (BTreeMap::new(), BTreeMap::new());
        for e in self.endpoints.values() {
            for (zone, addr) in &e.enis {
                if !e.groups.is_empty() {
                    let mut rules: Vec<&RuleSpec> = self
                        .groups
                        .iter()
                        .filter(|(id, _)| e.groups.contains(id))
                        .flat_map(|(_, g)| g.rules.iter().map(|(_, r)| &RULES[*r]))
                        .filter(|r| r.ingress)
                        .collect();
                    rules.sort_by_key(|r| (r.priority, r.rule.3 != RULE_DROP));
                    sg.insert(*addr, rules.iter().map(|r| r.rule).collect());
                }
                if let Some(a) = self.acl.as_ref().filter(|_| *zone == 0) {
                    let list = |v: &[usize]| v.iter().map(|i| ACL_RULES[*i].0).collect();
                    acl_in.insert(*addr, list(&a.ingress));
                    acl_out.insert(*addr, list(&a.egress));
                }
            }
        }
        (sg, acl_in, acl_out)
    }

    /// What PL_SNAT_ADDRS and PL_SNAT_POOLS must hold: every service's one SNAT address
    /// (in the provider VPC) with its service, and its pool (that address, default ports).
    fn expected_listeners(&self) -> BTreeMap<u32, Vec<(u8, u16, u16)>> {
        self.services
            .iter()
            .map(|(k, s)| {
                let ls = bits(s.listeners, LISTENERS.len())
                    .into_iter()
                    .map(|i| LISTENERS[i])
                    .collect();
                (numeric_id(&svc_id(*k)), ls)
            })
            .collect()
    }

    fn expected_snat(&self) -> SnatMaps {
        let addr = |k: u64| [10, 10, 0, 200 + k as u8];
        let id = |k: u64| numeric_id(&svc_id(k));
        (
            self.services.keys().map(|&k| (addr(k), id(k))).collect(),
            self.services
                .keys()
                .map(|&k| (id(k), (1, addr(k), [1024, 65535])))
                .collect(),
        )
    }
}

fn random_op(r: &mut Rng, m: &Model) -> Op {
    let (mut k, j) = (r.below(SERVICES), r.below(ENDPOINTS));
    // Connection actions mostly name the endpoint's own service (else they are all 404s).
    if let Some(e) = m.endpoints.get(&j)
        && r.below(4) > 0
    {
        k = e.service;
    }
    let g = r.below(GROUPS);
    let zone = r.below(2) as u8;
    match r.below(26) {
        // Mostly a valid listener set (the first three listeners never clash), sometimes
        // any set (none, or overlapping ones: refused).
        // Mostly both zones (zones can then be added and removed), sometimes one.
        0 | 1 => Op::CreateService(
            k,
            r.below(2) == 0,
            if r.below(2) == 0 {
                3
            } else {
                1 + r.below(2) as u8
            },
            if r.below(4) > 0 {
                1 + r.below(7) as u8
            } else {
                r.below(1 << LISTENERS.len()) as u8
            },
        ),
        23 => Op::SetListeners(k, r.below(1 << LISTENERS.len()) as u8),
        24 => Op::AddZone(j, zone, r.below(2) == 0),
        25 => Op::RemoveZone(j, zone),
        2 => Op::DeleteService(k),
        3 | 4 => Op::Whitelist(k, r.below(3) > 0),
        5..=7 => Op::CreateEndpoint(j, k, r.below(4) as u8, zone, r.below(2) == 0),
        20 | 21 => Op::AddZone(j, zone, r.below(2) == 0),
        22 => Op::RemoveZone(j, zone),
        8 => Op::DeleteEndpoint(j),
        9..=12 => Op::Connection(
            k,
            j,
            ["accept", "reject", "disable", "enable"][r.below(4) as usize],
        ),
        13 => Op::CreateGroup(g),
        14 => Op::DeleteGroup(g),
        15 | 16 => Op::AddRule(g, r.below(RULES.len() as u64) as usize),
        // Mostly a rule that exists (the group's latest ids), sometimes one that does not.
        17 => Op::RemoveRule(
            g,
            m.group(g)
                .map_or(1, |x| x.last_rule)
                .saturating_sub(r.below(3) as u32)
                + 1
                - r.below(2) as u32,
        ),
        18 => Op::CreateAcl(r.below(ACLS), r.below(8) as u8, r.below(8) as u8),
        _ => Op::DeleteAcl(r.below(ACLS)),
    }
}

fn call(a: &Client, b: &Client, op: Op) -> anyhow::Result<serde_json::Value> {
    match op {
        Op::SetListeners(k, listeners) => b.call(
            "PATCH",
            &format!("/v1/services/{}", svc_id(k)),
            Some(&json!({"listeners": listeners_json(listeners)})),
        ),
        Op::CreateService(k, auto, zones, listeners) => {
            let backends: Vec<serde_json::Value> = (0..2u8)
                .filter(|z| zones & (1 << z) != 0)
                .map(|z| {
                    json!({"zone": ZONES[z as usize],
                           "address": std::net::Ipv4Addr::from(lb(k, z)).to_string()})
                })
                .collect();
            b.post(
                "/v1/services",
                &json!({"id": svc_id(k), "vpc": "vpc-b", "auto_accept": auto,
                        "backends": backends, "snat": [format!("10.10.0.{}", 200 + k)],
                        "listeners": listeners_json(listeners)}),
            )
        }
        Op::DeleteService(k) => b.delete(&format!("/v1/services/{}", svc_id(k))),
        Op::Whitelist(k, true) => b.call(
            "PUT",
            &format!("/v1/services/{}/whitelist/acct-a", svc_id(k)),
            None,
        ),
        Op::Whitelist(k, false) => {
            b.delete(&format!("/v1/services/{}/whitelist/acct-a", svc_id(k)))
        }
        Op::CreateEndpoint(j, k, mask, zone, alloc) => a.post(
            "/v1/endpoints",
            &json!({"id": ep_id(j), "vpc": "vpc-a", "service": svc_id(k),
                    "zones": [zone_json(j, zone, alloc)],
                    "security_groups": group_ids(mask).iter().map(|g| sg_id(*g)).collect::<Vec<_>>()}),
        ),
        Op::AddZone(j, zone, alloc) => a.post(
            &format!("/v1/endpoints/{}/zones", ep_id(j)),
            &zone_json(j, zone, alloc),
        ),
        Op::RemoveZone(j, zone) => {
            a.delete(&format!("/v1/endpoints/{}/zones/{}", ep_id(j), vsw(zone)))
        }
        Op::CreateGroup(g) => a.post(
            "/v1/security-groups",
            &json!({"id": sg_id(g), "vpc": "vpc-a"}),
        ),
        Op::DeleteGroup(g) => a.delete(&format!("/v1/security-groups/{}", sg_id(g))),
        Op::AddRule(g, r) => a.post(
            &format!("/v1/security-groups/{}/rules", sg_id(g)),
            &serde_json::from_str::<serde_json::Value>(RULES[r].json)?,
        ),
        Op::RemoveRule(g, id) => {
            a.delete(&format!("/v1/security-groups/{}/rules/r{id}", sg_id(g)))
        }
        Op::CreateAcl(x, ingress, egress) => {
            let rules = |mask: u8| -> anyhow::Result<Vec<serde_json::Value>> {
                bits(mask, ACL_RULES.len())
                    .into_iter()
                    .map(|i| Ok(serde_json::from_str(ACL_RULES[i].1)?))
                    .collect()
            };
            a.post(
                "/v1/acls",
                &json!({"id": format!("acl-{x}"), "vpc": "vpc-a", "vswitches": ["vsw-a1"],
                        "ingress": rules(ingress)?, "egress": rules(egress)?}),
            )
        }
        Op::DeleteAcl(x) => a.delete(&format!("/v1/acls/acl-{x}")),
        Op::DeleteEndpoint(j) => a.delete(&format!("/v1/endpoints/{}", ep_id(j))),
        Op::Connection(k, j, action) => b.post(
            &format!(
                "/v1/services/{}/connections/{}/{action}",
                svc_id(k),
                ep_id(j)
            ),
            &json!({}),
        ),
    }
}

/// A zone as the API takes it: the vSwitch, and the address unless it is to be allocated.
fn zone_json(j: u64, zone: u8, alloc: bool) -> serde_json::Value {
    if alloc {
        json!({"vswitch": vsw(zone)})
    } else {
        json!({"vswitch": vsw(zone), "eni": std::net::Ipv4Addr::from(eni(j, zone)).to_string()})
    }
}

fn map_content(d: &ApiDaemon) -> EniMap {
    let map = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let m: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&map).unwrap();
    m.iter()
        .map(|r| r.unwrap())
        .map(|(k, v)| {
            assert_eq!(k.vpc_id, numeric_id("vpc-a"));
            (
                k.addr,
                (
                    v.endpoint_id,
                    v.state,
                    v.is_whitelisted(),
                    v.lb_addr,
                    v.flags & (ENI_FLAG_SG | ENI_FLAG_ACL),
                ),
            )
        })
        .collect()
}

/// The pinned SNAT maps, in the shape of `Model::expected_snat`.
/// The pinned `PL_LISTENERS`: service id -> its listeners in order.
fn listeners_content(d: &ApiDaemon) -> BTreeMap<u32, Vec<(u8, u16, u16)>> {
    let map = dataplane::open_pinned(&d.pin, map_names::LISTENERS).unwrap();
    let m: HashMap<_, u32, ListenerSet> = HashMap::try_from(&map).unwrap();
    m.iter()
        .map(|r| {
            let (k, set) = r.unwrap();
            let ls = set.listeners[..set.count as usize]
                .iter()
                .map(|l: &Listener| (l.proto, l.port_lo, l.port_hi))
                .collect();
            (k, ls)
        })
        .collect()
}

fn snat_content(d: &ApiDaemon) -> SnatMaps {
    let map = dataplane::open_pinned(&d.pin, map_names::SNAT_ADDRS).unwrap();
    let addrs: HashMap<_, VpcAddr, u32> = HashMap::try_from(&map).unwrap();
    let addrs = addrs
        .iter()
        .map(|r| r.unwrap())
        .map(|(k, v)| {
            assert_eq!(k.vpc_id, numeric_id("vpc-b"));
            (k.addr, v)
        })
        .collect();
    let map = dataplane::open_pinned(&d.pin, map_names::SNAT_POOLS).unwrap();
    let pools: HashMap<_, u32, SnatPool> = HashMap::try_from(&map).unwrap();
    let pools = pools
        .iter()
        .map(|r| r.unwrap())
        .map(|(k, p)| (k, (p.count, p.addrs[0], [p.port_min, p.port_max])))
        .collect();
    (addrs, pools)
}

/// The pinned filter maps, in the shape of `Model::expected_filters`.
fn filter_content(d: &ApiDaemon) -> Filters {
    let read = |name: &str| -> BTreeMap<[u8; 4], Vec<MapRule>> {
        let map = dataplane::open_pinned(&d.pin, name).unwrap();
        let m: HashMap<_, VpcAddr, RuleSet> = HashMap::try_from(&map).unwrap();
        m.iter()
            .map(|r| r.unwrap())
            .map(|(k, set)| {
                assert_eq!(k.vpc_id, numeric_id("vpc-a"));
                let rules = set.rules[..set.count as usize]
                    .iter()
                    .map(|r| (r.addr, r.prefix, r.proto, r.action, r.port_lo, r.port_hi))
                    .collect();
                (k.addr, rules)
            })
            .collect()
    };
    (
        read(map_names::SG_RULES),
        read(map_names::ACL_IN),
        read(map_names::ACL_OUT),
    )
}

fn epoch(d: &ApiDaemon) -> u32 {
    let map = dataplane::open_pinned(&d.pin, map_names::EPOCH).unwrap();
    let a: Array<_, u32> = Array::try_from(&map).unwrap();
    a.get(&0, 0).unwrap()
}

/// What a replay covered.
struct Coverage {
    accepted: usize,
    states: usize,
    merged_rules: usize,
    acl_seen: bool,
    /// Accepted calls that had an ENI address allocated.
    allocated: usize,
    /// Accepted zone additions and removals.
    zone_changes: usize,
    /// Calls refused for a zone the service does not serve.
    unserved_refused: usize,
    /// The most ENIs (zones) one endpoint had.
    most_zones: usize,
    /// Accepted listener changes, and calls refused for their listeners (none, overlap).
    listener_changes: usize,
    listeners_refused: usize,
}

/// The calls of one run, drawn against the model alone.
fn generate(seed: u64, steps: usize) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    (0..steps)
        .map(|_| {
            let op = random_op(&mut rng, &model);
            model.apply(op);
            op
        })
        .collect()
}

/// Runs `ops` against a fresh daemon and a fresh model. Err: the first call after which
/// they disagree, and how.
fn replay(ops: &[Op]) -> Result<Coverage, (usize, String)> {
    let d = ApiDaemon::start("plmb").expect("daemon");
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (a, b) = privatelink_tests::apidaemon::two_parties(&admin, &d.url).expect("parties");
    let mut model = Model::default();
    let mut cov = Coverage {
        accepted: 0,
        states: 0,
        merged_rules: 0,
        acl_seen: false,
        allocated: 0,
        zone_changes: 0,
        unserved_refused: 0,
        most_zones: 0,
        listener_changes: 0,
        listeners_refused: 0,
    };
    let mut states = BTreeSet::new();
    for (step, &op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let epoch_before = epoch(&d);
        let got = call(&a, &b, op);
        let fail = |why: String| Err((step, format!("{op:?} -> {got:?}: {why}")));
        match (&got, want) {
            (Ok(_), true) => {
                cov.accepted += 1;
                match op {
                    Op::CreateEndpoint(.., true) | Op::AddZone(_, _, true) => cov.allocated += 1,
                    _ => {}
                }
                if matches!(op, Op::AddZone(..) | Op::RemoveZone(..)) {
                    cov.zone_changes += 1;
                }
                cov.listener_changes += matches!(op, Op::SetListeners(..)) as usize;
            }
            (Err(e), false) => {
                if let Op::CreateService(_, _, _, l) | Op::SetListeners(_, l) = op
                    && !listeners_valid(l)
                {
                    cov.listeners_refused += 1;
                }
                let status = e
                    .downcast_ref::<privatelink_user::client::ApiError>()
                    .map(|e| e.status)
                    .unwrap_or(0);
                if !(400..500).contains(&status) {
                    return fail(format!("refused with {status}"));
                }
                if epoch(&d) != epoch_before {
                    return fail("a refused call moved the epoch".into());
                }
            }
            _ => return fail(format!("the model expected accepted={want}")),
        }
        let (got_eps, want_eps) = (map_content(&d), model.expected());
        if got_eps != want_eps {
            return fail(format!(
                "PL_ENDPOINTS differs:\n  maps  {got_eps:?}\n  model {want_eps:?}"
            ));
        }
        let (got_l, want_l) = (listeners_content(&d), model.expected_listeners());
        if got_l != want_l {
            return fail(format!(
                "PL_LISTENERS differs:\n  maps  {got_l:?}\n  model {want_l:?}"
            ));
        }
        let (got_snat, want_snat) = (snat_content(&d), model.expected_snat());
        if got_snat != want_snat {
            return fail(format!(
                "SNAT maps differ:\n  maps  {got_snat:?}\n  model {want_snat:?}"
            ));
        }
        let (got_f, want_f) = (filter_content(&d), model.expected_filters());
        if got_f != want_f {
            return fail(format!(
                "filter maps differ:\n  maps  {got_f:?}\n  model {want_f:?}"
            ));
        }
        for e in model.endpoints.values() {
            states.insert(e.state as u32);
            cov.most_zones = cov.most_zones.max(e.enis.len());
        }
        let longest = want_f.0.values().map(Vec::len).max().unwrap_or(0);
        cov.merged_rules = cov.merged_rules.max(longest);
        cov.acl_seen |= !want_f.1.is_empty();
    }
    cov.states = states.len();
    cov.unserved_refused = model.unserved_refused;
    Ok(cov)
}

/// Removes chunks of `ops` (halves, then quarters, down to single calls) for as long as
/// `fails` still holds without them, within `budget` tries: a short failing sequence.
fn shrink<T: Clone>(
    mut ops: Vec<T>,
    mut fails: impl FnMut(&[T]) -> bool,
    mut budget: usize,
) -> Vec<T> {
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < ops.len() && budget > 0 {
            let mut candidate = ops.clone();
            candidate.drain(i..(i + chunk).min(ops.len()));
            budget -= 1;
            if !candidate.is_empty() && fails(&candidate) {
                ops = candidate;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 || budget == 0 {
            return ops;
        }
        chunk = chunk.div_ceil(2);
    }
}

#[test]
fn the_shrinker_finds_the_calls_that_matter() {
    // Fails when 3 comes before 77 (order matters, as it does for API calls).
    let fails = |c: &[u32]| {
        let at = |x| c.iter().position(|v| *v == x);
        matches!((at(3), at(77)), (Some(i), Some(j)) if i < j)
    };
    let mut tries = 0;
    let small = shrink(
        (0..200).collect(),
        |c| {
            tries += 1;
            fails(c)
        },
        500,
    );
    assert_eq!(small, vec![3, 77]);
    assert!(tries <= 500);
    // Within a tiny budget it still returns a failing sequence, if a longer one.
    let partial = shrink((0..200).collect(), fails, 3);
    assert!(fails(&partial) && partial.len() < 200);
}

#[test]
fn random_api_sequences_keep_the_maps_equal_to_the_model() {
    let seed: u64 = std::env::var("PL_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (std::process::id() as u64 * 2654435761) | 1);
    let steps: usize = std::env::var("PL_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let ops = generate(seed, steps);
    let cov = match replay(&ops) {
        Ok(cov) => cov,
        Err((step, why)) => {
            // Shrink the sequence up to the failing call (each try is a fresh daemon).
            let small = shrink(ops[..=step].to_vec(), |c| replay(c).is_err(), 80);
            let again = replay(&small).err();
            panic!(
                "seed {seed}, call {step}: {why}\nshrunk to {} calls: {small:?}\nwhich fail with: {again:?}",
                small.len()
            );
        }
    };
    assert!(
        cov.accepted > steps / 5,
        "only {} of {steps} calls accepted",
        cov.accepted
    );
    assert_eq!(cov.states, 4, "every connection state was reached");
    assert!(
        cov.merged_rules >= 3,
        "an ENI had {} security-group rules at most",
        cov.merged_rules
    );
    assert!(cov.acl_seen, "no ENI was ever under an ACL");
    assert!(cov.allocated > 0, "no ENI address was ever allocated");
    assert!(cov.zone_changes > 0, "no zone was ever added or removed");
    assert!(
        cov.unserved_refused > 0,
        "no unserved zone was ever asked for"
    );
    assert_eq!(cov.most_zones, 2, "no endpoint ever had two zones");
    assert!(
        cov.listener_changes > 0,
        "no service's listeners were ever changed"
    );
    assert!(
        cov.listeners_refused > 0,
        "no bad listener set was ever refused"
    );
    eprintln!(
        "seed {seed}: {steps} calls, {} accepted, maps equal to the model after each (up to {} merged rules on an ENI; {} allocations, {} zone changes, {} unserved zones refused, {} listener changes, {} listener sets refused)",
        cov.accepted,
        cov.merged_rules,
        cov.allocated,
        cov.zone_changes,
        cov.unserved_refused,
        cov.listener_changes,
        cov.listeners_refused
    );
}
