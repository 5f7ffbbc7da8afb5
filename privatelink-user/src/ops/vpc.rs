//! VPCs, their vSwitches, and their resolver and probe addresses (the operator).

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, admin_only, clearable, seen, set, unique, visible};
use crate::model::{State, VSwitch, Vpc};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVpc {
    pub id: String,
    pub account: String,
    #[schema(value_type = String, example = "10.10.0.0/16")]
    pub cidr: Ipv4Net,
    /// The VPC's IPv6 range (dual stack; left out: IPv4 only). At most a /64: each
    /// vSwitch takes a /64 of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "fd00:a::/56")]
    pub ipv6_cidr: Option<Ipv6Net>,
    /// The forwarder's interface attached to this VPC.
    pub interface: String,
    #[serde(default)]
    pub vswitches: Vec<NewVSwitch>,
    /// The interface also carries the host's own traffic (unrelated packets pass to the
    /// host's stack). Off by default: tenants cannot reach the forwarder host.
    #[serde(default)]
    pub host_traffic: bool,
    /// The VPC's DNS resolver address (inside the VPC's CIDR or not): its clients ask it
    /// for endpoint, zone and custom service domain names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.10.1.53")]
    pub resolver: Option<Ipv4Addr>,
    /// The address, inside the VPC's CIDR, that health checks of the load balancers in
    /// this VPC leave from (none: they are not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.10.0.250")]
    pub probe_address: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVSwitch {
    pub id: String,
    pub zone: String,
    #[schema(value_type = String, example = "10.10.1.0/24")]
    pub cidr: Ipv4Net,
    /// The vSwitch's IPv6 /64 inside the VPC's `ipv6_cidr` (left out: its ENIs are IPv4
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "fd00:a:0:1::/64")]
    pub ipv6_cidr: Option<Ipv6Net>,
}

pub fn create_vpc(s: &mut State, c: &Caller, req: NewVpc) -> R<Vpc> {
    admin_only(c)?;
    if s.account(&req.account).is_none() {
        return Err(OpError::not_found(
            "account",
            format!("no account {}", req.account),
        ));
    }
    unique(s.vpc(&req.id).is_some(), "VPC", &req.id)?;
    let vpc = Vpc {
        id: req.id,
        account: req.account,
        cidr: req.cidr,
        ipv6_cidr: req.ipv6_cidr,
        interface: req.interface,
        vswitches: req
            .vswitches
            .into_iter()
            .map(|v| VSwitch {
                id: v.id,
                zone: v.zone,
                cidr: v.cidr,
                ipv6_cidr: v.ipv6_cidr,
            })
            .collect(),
        host_traffic: req.host_traffic,
        resolver: req.resolver,
        probe_address: req.probe_address,
    };
    s.vpcs.push(vpc.clone());
    Ok(vpc)
}

pub fn list_vpcs(s: &State, c: &Caller) -> Vec<Vpc> {
    visible(&s.vpcs, c)
}

pub fn get_vpc(s: &State, c: &Caller, id: &str) -> R<Vpc> {
    seen(&s.vpcs, c, "VPC", "vpc", id).cloned()
}

/// A change of a VPC's addresses: left out, unchanged; `null`, removed; an address, set.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpcPatch {
    #[serde(default, deserialize_with = "clearable")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = true, example = "10.10.1.53")]
    pub resolver: Option<Option<Ipv4Addr>>,
    #[serde(default, deserialize_with = "clearable")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = true, example = "10.10.0.250")]
    pub probe_address: Option<Option<Ipv4Addr>>,
}

/// Sets or removes VPC `id`'s resolver and probe addresses: the operator only. Both
/// become addresses of the forwarder host on the VPC's interface (the platform's, as a
/// cloud's resolver 100.100.2.136 is), and one namespace holds every VPC's interface: a
/// tenant that could pick them could take an address another VPC's traffic to the host
/// needs (another VPC's load balancer, the on-premises listener). The rules (unicast, the
/// probe address inside the CIDR, no address in use in any VPC) are `State::validate`'s.
pub fn update_vpc(s: &mut State, c: &Caller, id: &str, p: VpcPatch) -> R<Vpc> {
    admin_only(c)?;
    seen(&s.vpcs, c, "VPC", "vpc", id)?;
    let vpc = s
        .vpcs
        .iter_mut()
        .find(|v| v.id == id)
        .ok_or_else(|| OpError::not_found("vpc", format!("no VPC {id}")))?;
    set(&mut vpc.resolver, p.resolver);
    set(&mut vpc.probe_address, p.probe_address);
    Ok(vpc.clone())
}
