use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::{FieldError, Ids, check_cidr, check_id, check_ipv6_range, err, overlap, usable};
use crate::model::{ServiceType, State, Vpc};

const MAX_IFNAME: usize = 15;

impl State {
    pub(super) fn validate_vpcs(&self, ids: &mut Ids) -> Result<(), FieldError> {
        let mut ifaces = BTreeSet::new();
        for (i, v) in self.vpcs.iter().enumerate() {
            let f = format!("vpcs[{i}]");
            check_id(format!("{f}.id"), &v.id, ids)?;
            if !self.account_exists(&v.account) {
                return err(
                    format!("{f}.account"),
                    format!("unknown account {:?}", v.account),
                );
            }
            check_cidr(&f, v.cidr)?;
            if let Some(c6) = &v.ipv6_cidr {
                check_ipv6_range(format!("{f}.ipv6_cidr"), c6)?;
                if c6.prefix_len() > 64 {
                    return err(
                        format!("{f}.ipv6_cidr"),
                        format!("{c6} is longer than /64: a VPC's vSwitches each take a /64 of it"),
                    );
                }
            }
            if v.interface.is_empty() || v.interface.len() > MAX_IFNAME {
                return err(
                    format!("{f}.interface"),
                    format!("{:?} is not an interface name", v.interface),
                );
            }
            if !ifaces.insert(v.interface.clone()) {
                return err(
                    format!("{f}.interface"),
                    format!("{} is already attached to another VPC", v.interface),
                );
            }
            for (j, s) in v.vswitches.iter().enumerate() {
                let g = format!("{f}.vswitches[{j}]");
                check_id(format!("{g}.id"), &s.id, ids)?;
                if !v.cidr.contains(&s.cidr) {
                    return err(
                        format!("{g}.cidr"),
                        format!("{} is not inside the VPC's {}", s.cidr, v.cidr),
                    );
                }
                if s.zone.is_empty() {
                    return err(format!("{g}.zone"), "a vSwitch needs a zone");
                }
                for (k, o) in v.vswitches.iter().enumerate().take(j) {
                    if overlap(&o.cidr, &s.cidr) {
                        return err(
                            format!("{g}.cidr"),
                            format!("{} overlaps vswitches[{k}] {}", s.cidr, o.cidr),
                        );
                    }
                }
            }
            validate_vswitches6(&f, v)?;
            check_host_addresses(&f, v)?;
        }
        Ok(())
    }

    /// The resolver and probe addresses of every VPC are no other address in use in it or
    /// in any other VPC (checked once the services and endpoints are: the message names
    /// the user). They become the forwarder host's own addresses, and one host holds
    /// every VPC's interface: an address local on one interface is local for all, so it
    /// would turn another VPC's load balancer, appliance or ENI traffic to the host into
    /// martians. Only a resolver address may be shared, by the resolvers of several VPCs
    /// (each served on its own interface).
    pub(super) fn validate_vpc_addresses(&self) -> Result<(), FieldError> {
        let host = self.host_addresses();
        if host.is_empty() {
            return Ok(());
        }
        // One pass over the endpoints and services, for the host addresses only: this runs
        // on every change, under the API's lock.
        let uses = self.address_uses(&host);
        let use_in = |vpc: &str, a: Ipv4Addr| uses.get(&(vpc.to_string(), a));
        for (i, v) in self.vpcs.iter().enumerate() {
            for (name, a) in [("resolver", v.resolver), ("probe_address", v.probe_address)] {
                let Some(a) = a else { continue };
                let field = format!("vpcs[{i}].{name}");
                if let Some(user) = use_in(&v.id, a) {
                    return err(field, format!("{a} is {user} in VPC {}", v.id));
                }
                for o in self.vpcs.iter().filter(|o| o.id != v.id) {
                    let user = use_in(&o.id, a).cloned().or_else(|| {
                        if o.probe_address == Some(a) {
                            Some("the probe address".into())
                        } else if name == "probe_address" && o.resolver == Some(a) {
                            Some("the resolver address".into())
                        } else {
                            None
                        }
                    });
                    if let Some(user) = user {
                        return err(
                            field,
                            format!(
                                "{a} is {user} in VPC {}: one forwarder host holds every \
                                 VPC's interface, so its own addresses must be unique to all",
                                o.id
                            ),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Every VPC's resolver and probe addresses: the forwarder host's own, each local to
    /// every VPC's interface.
    pub fn host_addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.vpcs
            .iter()
            .flat_map(|v| [v.resolver, v.probe_address])
            .flatten()
            .collect()
    }

    /// What each address of `of` already is in each VPC, as a phrase ("endpoint ep-a's
    /// ENI"): an endpoint's ENI or route target, or a service's load balancer, SNAT, GWLB
    /// or appliance address; the first use in the state's order. The VPCs' own resolver
    /// and probe addresses are not counted.
    fn address_uses(&self, of: &BTreeSet<Ipv4Addr>) -> BTreeMap<(String, Ipv4Addr), String> {
        let mut uses = BTreeMap::new();
        let mut note = |vpc: &str, a: Ipv4Addr, what: String| {
            if of.contains(&a) {
                uses.entry((vpc.to_string(), a)).or_insert(what);
            }
        };
        for e in &self.endpoints {
            for z in &e.zones {
                note(&e.vpc, z.eni, format!("endpoint {}'s ENI", e.id));
            }
            if let Some(g) = e.gateway {
                note(&e.vpc, g, format!("endpoint {}'s route target", e.id));
            }
        }
        for s in &self.services {
            let backend = match s.kind {
                ServiceType::Gwlb => "an appliance",
                _ => "a load balancer address",
            };
            for b in &s.backends {
                note(&s.vpc, b.address, format!("{backend} of service {}", s.id));
            }
            for a in &s.snat {
                note(&s.vpc, *a, format!("a SNAT address of service {}", s.id));
            }
            if let Some(g) = &s.gwlb {
                note(
                    &s.vpc,
                    g.address,
                    format!("the GWLB address of service {}", s.id),
                );
            }
        }
        uses
    }
}

/// A VPC's resolver and probe addresses: unicast host addresses, not the same one; the
/// probe address inside the VPC's CIDR (the load balancers answer it there), the resolver
/// anywhere (a cloud's resolver often lies outside, as Alibaba Cloud's 100.100.2.136),
/// but if inside, not the CIDR's network or broadcast address.
fn check_host_addresses(f: &str, v: &Vpc) -> Result<(), FieldError> {
    for (name, a) in [("resolver", v.resolver), ("probe_address", v.probe_address)] {
        let Some(a) = a else { continue };
        let field = format!("{f}.{name}");
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
            return err(
                field,
                format!(
                    "{a} is not a unicast host address (not 0.0.0.0, loopback, multicast or broadcast)"
                ),
            );
        }
        if v.cidr.contains(&a) && !usable(&v.cidr, a) {
            return err(
                field,
                format!(
                    "{a} is the network or broadcast address of the VPC's {}",
                    v.cidr
                ),
            );
        }
    }
    if let Some(p) = v.probe_address
        && !v.cidr.contains(&p)
    {
        return err(
            format!("{f}.probe_address"),
            format!(
                "{p} is not inside the VPC's {}: the load balancers answer the probes there",
                v.cidr
            ),
        );
    }
    if let (Some(r), Some(p)) = (v.resolver, v.probe_address)
        && r == p
    {
        return err(
            format!("{f}.probe_address"),
            format!("{p} is the VPC's resolver address too; give each its own"),
        );
    }
    Ok(())
}

/// The vSwitches' IPv6 ranges: each a /64 inside the VPC's `ipv6_cidr` (which it then
/// needs), none overlapping another.
fn validate_vswitches6(f: &str, v: &Vpc) -> Result<(), FieldError> {
    for (j, s) in v.vswitches.iter().enumerate() {
        let Some(c6) = &s.ipv6_cidr else { continue };
        let field = format!("{f}.vswitches[{j}].ipv6_cidr");
        let Some(vpc6) = &v.ipv6_cidr else {
            return err(
                field,
                format!(
                    "VPC {} has no ipv6_cidr: give the VPC an IPv6 range first",
                    v.id
                ),
            );
        };
        check_ipv6_range(field.clone(), c6)?;
        if c6.prefix_len() != 64 {
            return err(
                field,
                format!("{c6}: a vSwitch's IPv6 range is a /64 (as the clouds hand out)"),
            );
        }
        if !vpc6.contains(c6) {
            return err(field, format!("{c6} is not inside the VPC's {vpc6}"));
        }
        for (k, o) in v.vswitches.iter().enumerate().take(j) {
            if o.ipv6_cidr == Some(*c6) {
                return err(field, format!("{c6} is vswitches[{k}]'s IPv6 range too"));
            }
        }
    }
    Ok(())
}
