//! The domain as a cloud console shows it: accounts, VPCs with vSwitches in zones,
//! endpoint services, endpoints and their connections, security groups and ACLs. One file
//! per kind for the types; every rule a state must keep is in `validate`, with no I/O, and
//! every error names the field it is about.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

mod account;
mod endpoint;
pub mod health;
pub mod names;
mod owner;
mod security;
mod service;
mod validate;
mod vpc;

pub use account::*;
pub use endpoint::*;
pub use health::{HealthSettings, Probe};
pub use names::Naming;
pub use owner::{Lookup, Owned, lookup};
pub use security::*;
pub use service::*;
pub use validate::{
    FieldError, GWLB_FLOW_LOG, check_endpoint_limits, check_flow_log, check_listeners,
    check_notification,
};
pub use vpc::*;

/// The whole declared state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub vpcs: Vec<Vpc>,
    #[serde(default)]
    pub services: Vec<EndpointService>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub acls: Vec<NetworkAcl>,
}

/// `true`, for boolean fields on by default (serde's `default = ...`).
pub(crate) fn yes() -> bool {
    true
}

/// A stable numeric id for a string id (FNV-1a), used as the data path's key. Stable
/// across restarts and independent of declaration order, so pinned flows stay valid.
pub fn numeric_id(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

impl State {
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
    pub fn vpc(&self, id: &str) -> Option<&Vpc> {
        self.vpcs.iter().find(|v| v.id == id)
    }
    pub fn service(&self, id: &str) -> Option<&EndpointService> {
        self.services.iter().find(|s| s.id == id)
    }
}

impl State {
    /// Every address already in use in VPC `vpc`: endpoint ENIs, gateway endpoints' route
    /// targets, and the SNAT, load balancer, GWLB and appliance addresses of the services
    /// that live there (the same addresses `validate` keeps apart).
    pub fn used_addresses(&self, vpc: &str) -> BTreeSet<Ipv4Addr> {
        let mut used = BTreeSet::new();
        for s in self.services.iter().filter(|s| s.vpc == vpc) {
            used.extend(s.backends.iter().map(|b| b.address));
            used.extend(s.snat.iter().copied());
            used.extend(s.gwlb.as_ref().map(|g| g.address));
        }
        for e in self.endpoints.iter().filter(|e| e.vpc == vpc) {
            used.extend(e.zones.iter().map(|z| z.eni));
            used.extend(e.gateway);
        }
        used
    }

    /// Every IPv6 address already in use in VPC `vpc`: dualstack endpoints' ENIs and
    /// gateway endpoints' IPv6 route targets, and the IPv6 load balancer and SNAT addresses
    /// of the services that live there.
    pub fn used_addresses6(&self, vpc: &str) -> BTreeSet<Ipv6Addr> {
        let mut used = BTreeSet::new();
        for s in self.services.iter().filter(|s| s.vpc == vpc) {
            used.extend(s.backends.iter().filter_map(|b| b.address6));
            used.extend(s.snat6.iter().copied());
        }
        for e in self.endpoints.iter().filter(|e| e.vpc == vpc) {
            used.extend(e.zones.iter().filter_map(|z| z.eni6));
            used.extend(e.gateway6);
        }
        used
    }

    /// Stored endpoints that an earlier build accepted but that the rules for new ENIs
    /// (served zones, reserved addresses) would refuse today. They are kept and keep
    /// working as before; the daemon logs these lines when it loads the state.
    pub fn grandfathered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let (Some(vpc), Some(svc)) = (self.vpc(&e.vpc), self.service(&e.service)) else {
                continue;
            };
            for (j, z) in e.zones.iter().enumerate() {
                let Some(vsw) = vpc.vswitches.iter().find(|s| s.id == z.vswitch) else {
                    continue;
                };
                let f = format!("endpoints[{i}].zones[{j}]");
                if vsw.is_reserved(z.eni) {
                    out.push(format!(
                        "{f}.eni: endpoint {}'s ENI {} is a system-reserved address of vSwitch {} ({}); kept, but no new ENI may take it",
                        e.id, z.eni, vsw.id, vsw.cidr
                    ));
                }
                if !svc.serves_zone(&vsw.zone) {
                    let goes_to = match svc.kind {
                        ServiceType::Gwlb => "the other zones' appliances",
                        _ => "all of the service's load balancers (the first 8)",
                    };
                    out.push(format!(
                        "{f}.vswitch: endpoint {}'s ENI {} is in zone {}, which service {} does not serve; kept, its flows go to {goes_to}",
                        e.id, z.eni, vsw.zone, svc.id
                    ));
                }
            }
        }
        out
    }
}

/// Parses a state as the store keeps it: every rule of `State::validate`, but not those
/// only new and hand-written objects must meet (an earlier build's service may have no
/// listeners).
pub fn parse_stored_state(text: &str) -> Result<State, String> {
    let state: State = toml::from_str(text).map_err(|e| e.to_string())?;
    state.validate().map_err(|e| e.to_string())?;
    Ok(state)
}

/// Parses a TOML state file; syntax and type errors name the line and the key.
pub fn parse_state(text: &str) -> Result<State, String> {
    let state = parse_stored_state(text)?;
    // A state file is written by hand: one without listeners was written for a build
    // that forwarded every port, and no rule can tell which ports were meant.
    for (i, svc) in state.services.iter().enumerate() {
        svc.require_listeners(&format!("services[{i}].listeners"))
            .map_err(|e| e.to_string())?;
    }
    Ok(state)
}

/// Appended to the lab's state in tests: a GWLB service in a security VPC with appliances in
/// two zones, and two GWLB endpoints of account A in a third VPC, one per zone.
#[cfg(test)]
pub(crate) const GWLB_TEST_STATE: &str = r#"
[[vpcs]]
id = "vpc-s"
account = "acct-b"
cidr = "10.20.0.0/16"
interface = "fs0"
vswitches = [
  { id = "vsw-s1", zone = "zone-a", cidr = "10.20.1.0/24" },
  { id = "vsw-s2", zone = "zone-b", cidr = "10.20.2.0/24" },
]

[[vpcs]]
id = "vpc-c"
account = "acct-a"
cidr = "10.30.0.0/16"
interface = "fc1"
vswitches = [
  { id = "vsw-c1", zone = "zone-a", cidr = "10.30.1.0/24" },
  { id = "vsw-c2", zone = "zone-b", cidr = "10.30.2.0/24" },
]

[[services]]
id = "gwlb-s"
account = "acct-b"
type = "gwlb"
vpc = "vpc-s"
whitelist = ["acct-a"]
backends = [
  { zone = "zone-a", address = "10.20.1.11" },
  { zone = "zone-a", address = "10.20.1.10" },
  { zone = "zone-b", address = "10.20.2.10" },
]

[services.gwlb]
address = "10.20.0.5"
stickiness = "five_tuple"
cross_zone = false
failover = "no_rebalance"
health = { port = 8080, interval_ms = 1000, timeout_ms = 500 }

[[endpoints]]
id = "ep-g1"
account = "acct-a"
vpc = "vpc-c"
service = "gwlb-s"
connection = "connected"
zones = [{ vswitch = "vsw-c1", eni = "10.30.1.5" }]
routes = ["10.30.9.0/24", "192.168.0.0/16"]

[[endpoints]]
id = "ep-g2"
account = "acct-a"
vpc = "vpc-c"
service = "gwlb-s"
connection = "connected"
zones = [{ vswitch = "vsw-c2", eni = "10.30.2.5" }]
routes = ["10.30.8.0/24"]
"#;

/// The lab's state made dual stack: IPv6 ranges on both VPCs and their first vSwitches
/// (fd00:a::/56 with vsw-a1 fd00:a:0:1::/64; fd00:b::/56 with vsw-b0 fd00:b::/64), the
/// service dualstack (load balancer fd00:b::10, SNAT fd00:b::200 and ::201), and ep-a
/// dualstack with its ENI at fd00:a:0:1::64.
#[cfg(test)]
pub(crate) fn dual_stack_lab() -> State {
    let mut s = parse_state(include_str!("../../../tests/lab.toml")).expect("the lab state");
    let net = |a: &str| a.parse().expect("an IPv6 range");
    let ip = |a: &str| a.parse().expect("an IPv6 address");
    s.vpcs[0].ipv6_cidr = Some(net("fd00:a::/56"));
    s.vpcs[0].vswitches[0].ipv6_cidr = Some(net("fd00:a:0:1::/64"));
    s.vpcs[1].ipv6_cidr = Some(net("fd00:b::/56"));
    s.vpcs[1].vswitches[0].ipv6_cidr = Some(net("fd00:b::/64"));
    let svc = &mut s.services[0];
    svc.ip_version = IpVersion::Dualstack;
    svc.backends[0].address6 = Some(ip("fd00:b::10"));
    svc.snat6 = vec![ip("fd00:b::200"), ip("fd00:b::201")];
    let ep = &mut s.endpoints[0];
    ep.ip_version = IpVersion::Dualstack;
    ep.zones[0].eni6 = Some(ip("fd00:a:0:1::64"));
    s.validate().expect("the dual-stack lab is valid");
    s
}

impl State {
    /// Interface and gateway services that have no listeners: stored by a build that
    /// forwarded every port. They publish nothing until their providers add listeners.
    pub fn legacy_without_listeners(&self) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| s.kind != ServiceType::Gwlb && s.listeners.is_empty())
            .map(|s| s.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests;
