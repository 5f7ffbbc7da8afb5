//! Every rule a state must keep, one validator per kind; `State::validate` runs them in
//! order and returns the first violation, naming the field it is about.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{AclRule, Lookup, Owned, Protocol, ServiceType, State, Vpc, lookup, numeric_id};

mod account;
mod endpoint;
mod security;
mod service;
mod vpc;

pub use endpoint::{GWLB_FLOW_LOG, check_endpoint_limits, check_flow_log};
pub use service::{check_listeners, check_notification};

/// A validation failure: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// The ids seen so far, by their numeric form (which must not collide either).
type Ids = BTreeMap<u32, String>;

/// The first of `checks` that is broken, as an error on its field under `f`: each check is
/// the field's name, whether the object breaks the rule, and the rule.
fn refuse(f: &str, checks: &[(&str, bool, &str)]) -> Result<(), FieldError> {
    match checks.iter().find(|(_, broken, _)| *broken) {
        Some((field, _, rule)) => err(format!("{f}.{field}"), *rule),
        None => Ok(()),
    }
}

/// Whether `a` is an address of `net` a host may use (neither its network nor its
/// broadcast address).
fn usable(net: &Ipv4Net, a: Ipv4Addr) -> bool {
    net.contains(&a) && a != net.network() && a != net.broadcast()
}

/// Whether two ranges share an address.
fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_id(field: String, id: &str, seen: &mut Ids) -> Result<(), FieldError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return err(
            field,
            format!("{id:?} is not a valid id (1-64 of [A-Za-z0-9_-])"),
        );
    }
    if let Some(other) = seen.insert(numeric_id(id), id.to_string()) {
        if other == id {
            return err(field, format!("duplicate id {id:?}"));
        }
        return err(
            field,
            format!("id {id:?} collides with {other:?}; choose another id"),
        );
    }
    Ok(())
}

impl State {
    /// Checks every rule of the domain. The first violation is returned.
    pub fn validate(&self) -> Result<(), FieldError> {
        let mut ids = BTreeMap::new();
        self.validate_accounts(&mut ids)?;
        self.validate_vpcs(&mut ids)?;
        self.check_capacity()?;
        // ENI and gateway addresses must not be SNAT, load balancer, GWLB or appliance
        // addresses either.
        let mut enis = self.validate_services(&mut ids)?;
        let mut enis6 = self.service_addresses6();
        self.validate_endpoints(&mut ids, &mut enis, &mut enis6)?;
        self.validate_vpc_addresses()?;
        self.validate_gateway_routes()?;
        self.validate_service_domains()?;
        self.validate_filters(&mut ids)
    }

    /// An object `x` at `f` kept in VPC `vpc`: its id (see `check_id`) and its VPC (see
    /// `owned_vpc`).
    fn owned_object(
        &self,
        f: &str,
        ids: &mut Ids,
        x: &impl Owned,
        vpc: &str,
    ) -> Result<&Vpc, FieldError> {
        check_id(format!("{f}.id"), x.id(), ids)?;
        self.owned_vpc(f, x.owner(), vpc)
    }

    fn account_exists(&self, a: &str) -> bool {
        self.accounts.iter().any(|x| x.id == a)
    }

    /// The VPC `vpc` of the object at `f`, which must exist and belong to `account` (which
    /// must exist too).
    fn owned_vpc(&self, f: &str, account: &str, vpc: &str) -> Result<&Vpc, FieldError> {
        if self.account(account).is_none() {
            return err(
                format!("{f}.account"),
                format!("unknown account {account:?}"),
            );
        }
        match lookup(&self.vpcs, account, vpc) {
            Lookup::Mine(v) => Ok(v),
            Lookup::Foreign(v) => err(
                format!("{f}.vpc"),
                format!(
                    "VPC {} belongs to account {}, not to {account}",
                    v.id, v.account
                ),
            ),
            Lookup::Missing => err(format!("{f}.vpc"), format!("unknown VPC {vpc:?}")),
        }
    }

    /// The data path's maps have fixed sizes: refuse a state that would not fit, before
    /// anything is committed.
    fn check_capacity(&self) -> Result<(), FieldError> {
        use privatelink_common::{
            MAX_ENDPOINTS, MAX_IFACES, MAX_NEIGHBORS, MAX_SERVICES, MAX_VPCS,
        };
        let addrs: usize = self
            .endpoints
            .iter()
            .map(|e| e.zones.len() + e.gateway.is_some() as usize)
            .sum();
        let routes: usize = self
            .endpoints
            .iter()
            .map(|e| match e.gateway {
                Some(_) => self.service(&e.service).map_or(0, |s| s.prefixes.len()),
                None => e.routes.len(),
            })
            .sum();
        let hops: usize = self.services.iter().map(|s| s.backends.len()).sum();
        let appliances: usize = self
            .services
            .iter()
            .filter(|s| s.kind == ServiceType::Gwlb)
            .map(|s| s.backends.len())
            .sum();
        // (service, zone) pairs: one appliance set per zone a GWLB endpoint is in.
        let gwlb_zones: BTreeSet<(&str, &str)> = self
            .endpoints
            .iter()
            .filter(|e| !e.routes.is_empty())
            .flat_map(|e| {
                let vpc = self.vpc(&e.vpc);
                e.zones.iter().filter_map(move |z| {
                    let vsw = vpc?.vswitches.iter().find(|v| v.id == z.vswitch)?;
                    Some((e.service.as_str(), vsw.zone.as_str()))
                })
            })
            .collect();
        // PL_HOST: every GWLB service's address and appliances.
        let host: usize = self
            .services
            .iter()
            .filter(|s| s.kind == ServiceType::Gwlb)
            .map(|s| s.backends.len() + 1)
            .sum();
        // PL_LB_SETS: a (service, zone) pair per zone an ENI is in that spreads its flows
        // over several load balancers.
        let lb_sets: BTreeSet<(&str, &str)> = self
            .endpoints
            .iter()
            .filter_map(|e| Some((e, self.service(&e.service)?, self.vpc(&e.vpc)?)))
            .filter(|(_, svc, _)| svc.kind == ServiceType::Interface && !svc.backends.is_empty())
            .flat_map(|(e, svc, vpc)| {
                e.zones.iter().filter_map(move |z| {
                    let vsw = vpc.vswitches.iter().find(|v| v.id == z.vswitch)?;
                    (svc.backends_for_zone(&vsw.zone).len() > 1)
                        .then_some((svc.id.as_str(), vsw.zone.as_str()))
                })
            })
            .collect();
        for (field, n, max) in [
            ("vpcs", self.vpcs.len(), MAX_VPCS.min(MAX_IFACES) as usize),
            ("services", self.services.len(), MAX_SERVICES as usize),
            ("endpoints", addrs, MAX_ENDPOINTS as usize),
            ("endpoints", routes, MAX_ENDPOINTS as usize),
            ("services", hops, MAX_NEIGHBORS as usize),
            ("services", appliances, MAX_SERVICES as usize),
            ("endpoints", gwlb_zones.len(), MAX_SERVICES as usize),
            ("services", host, MAX_SERVICES as usize),
            ("services", lb_sets.len(), MAX_SERVICES as usize),
        ] {
            if n > max {
                return err(
                    field,
                    format!("{n} would exceed the data path's capacity of {max}"),
                );
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.backends.len() > 64 {
                return err(
                    format!("services[{i}].backends"),
                    "at most 64 load balancers or appliances",
                );
            }
        }
        Ok(())
    }
}

fn check_ports(field: &str, proto: Protocol, ports: Option<[u16; 2]>) -> Result<(), FieldError> {
    if let Some([lo, hi]) = ports {
        if lo > hi {
            return err(
                format!("{field}.ports"),
                format!("[{lo}, {hi}] is upside down"),
            );
        }
        if !matches!(proto, Protocol::Tcp | Protocol::Udp) {
            return err(format!("{field}.ports"), "ports apply to tcp and udp only");
        }
    }
    Ok(())
}

/// A prefix (IPv4 or IPv6) at `field` has no host bits set.
fn check_prefix(field: String, p: impl Into<IpNet>) -> Result<(), FieldError> {
    let p: IpNet = p.into();
    if p != p.trunc() {
        return err(
            field,
            format!("{p} has host bits set (did you mean {}?)", p.trunc()),
        );
    }
    Ok(())
}

fn check_cidr(field: &str, c: impl Into<IpNet>) -> Result<(), FieldError> {
    check_prefix(format!("{field}.cidr"), c)
}

/// Whether `a` is an IPv6 address of `net` a host may use: inside it, and not its first
/// address (the subnet-router anycast address, RFC 4291).
fn usable6(net: &Ipv6Net, a: Ipv6Addr) -> bool {
    net.contains(&a) && a != net.network()
}

/// An IPv6 range at `field` the cloud can hand out: global or unique-local unicast (not
/// multicast, link-local, loopback or unspecified), no host bits.
fn check_ipv6_range(field: String, p: &Ipv6Net) -> Result<(), FieldError> {
    check_prefix(field.clone(), *p)?;
    let first = p.network().segments()[0];
    if p.network().is_unspecified()
        || p.network().is_loopback()
        || first & 0xff00 == 0xff00
        || first & 0xffc0 == 0xfe80
    {
        return err(
            field,
            format!("{p} is not a unicast range (not multicast, link-local, loopback or ::)"),
        );
    }
    Ok(())
}

/// ACL rules (an ACL's ingress or egress, a gateway endpoint's policy) at `field`: at most
/// `MAX_RULES`, each with sane ports and range.
fn check_acl_rules(field: &str, rules: &[AclRule]) -> Result<(), FieldError> {
    if rules.len() > privatelink_common::MAX_RULES {
        return err(
            field,
            format!(
                "{} rules; at most {}",
                rules.len(),
                privatelink_common::MAX_RULES
            ),
        );
    }
    for (j, r) in rules.iter().enumerate() {
        let h = format!("{field}[{j}]");
        check_ports(&h, r.protocol, r.ports)?;
        check_cidr(&h, r.cidr)?;
    }
    Ok(())
}
