//! Endpoints (consumer) and their zones (ENIs).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, creator, not_vpc_own, own, seen, set, unique, visible};
use crate::model::{
    AclRule, Connection, Endpoint, EndpointService, EndpointZone, FlowLog, IpVersion, ServiceType,
    State, VSwitch, Vpc, check_endpoint_limits, check_flow_log,
};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub id: String,
    pub vpc: String,
    pub service: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// One ENI per zone: `{vswitch, eni?, eni6?}`; without `eni` the daemon allocates the
    /// vSwitch's lowest free address (and for a dualstack endpoint without `eni6` its
    /// lowest free IPv6 address).
    #[serde(default)]
    pub zones: Vec<NewZone>,
    /// ipv4 (left out) or dualstack (the service must be dualstack; each ENI then gets
    /// an IPv6 address in its vSwitch's `ipv6_cidr`).
    #[serde(default)]
    #[schema(value_type = String, example = "dualstack")]
    pub ip_version: IpVersion,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Gateway endpoints: the route target address in the VPC.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Dualstack gateway endpoints: the IPv6 route target in the VPC, to which it routes
    /// the service's IPv6 prefixes; left out, the lowest free IPv6 address of the vSwitch
    /// that holds `gateway`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "fd00:a:0:1::1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// Gateway endpoints: allowed destinations, in order (IPv6 ones for a dualstack
    /// endpoint).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub policy: Vec<AclRule>,
    /// GWLB endpoints: the destination prefixes the VPC routes to the endpoint (IPv6 ones
    /// when the service is dualstack).
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["10.10.3.0/24", "fd00:c:9::/64"]))]
    pub routes: Vec<IpNet>,
    /// Interface endpoints: zone affinity of the endpoint's domain name (left out: on if
    /// the service supports it; on is refused if it does not).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_affinity: Option<bool>,
    /// Interface endpoints: the service's verified custom domain resolves in the VPC to
    /// this endpoint's ENIs (the first endpoint of the VPC to enable it wins).
    #[serde(default)]
    pub service_domain: bool,
}

pub fn create_endpoint(s: &mut State, c: &Caller, req: NewEndpoint) -> R<Endpoint> {
    let owner = creator(s, c, &req.vpc)?;
    unique(s.endpoint(&req.id).is_some(), "endpoint", &req.id)?;
    let svc = s
        .service(&req.service)
        .ok_or_else(|| OpError::not_found("service", format!("no service {}", req.service)))?;
    if !svc.admits(&owner) {
        return Err(OpError::not_whitelisted(format!(
            "account {owner} is not on the whitelist of service {}; ask its owner to add it",
            svc.id
        )));
    }
    check_endpoint_limits("", &req.security_groups, &req.tags)?;
    let zone_affinity = match req.zone_affinity {
        Some(on) => {
            affinity_change(svc, false, on)?;
            on
        }
        None => svc.zone_affinity,
    };
    if req.service_domain {
        may_enable_service_domain(s, &req.id, &req.vpc, svc)?;
    }
    if let (Some(gw), Some(vpc)) = (req.gateway, s.vpc(&req.vpc)) {
        not_vpc_own(s, vpc, "gateway", gw)?;
    }
    may_have_ip_version(svc, req.ip_version)?;
    let zones = place_zones(s, &req.vpc, svc, req.ip_version, &[], req.zones, "zones")?;
    let gateway6 = place_gateway6(
        s,
        &req.vpc,
        svc,
        req.ip_version,
        req.gateway,
        req.gateway6,
        None,
    )?;
    let ep = Endpoint {
        id: req.id,
        account: owner,
        vpc: req.vpc,
        service: req.service,
        name: req.name,
        description: req.description,
        connection: if svc.auto_accept {
            Connection::Connected
        } else {
            Connection::Pending
        },
        zones,
        ip_version: req.ip_version,
        security_groups: req.security_groups,
        tags: req.tags,
        gateway: req.gateway,
        gateway6,
        policy: req.policy,
        routes: req.routes,
        zone_affinity,
        service_domain: req.service_domain,
        flow_log: None,
    };
    s.endpoints.push(ep.clone());
    Ok(ep)
}

fn own_endpoint<'a>(s: &'a mut State, c: &Caller, id: &str) -> R<&'a mut Endpoint> {
    own(&mut s.endpoints, c, "endpoint", "endpoint", id)
}

pub fn list_endpoints(s: &State, c: &Caller) -> Vec<Endpoint> {
    visible(&s.endpoints, c)
}

pub fn get_endpoint(s: &State, c: &Caller, id: &str) -> R<Endpoint> {
    seen(&s.endpoints, c, "endpoint", "endpoint", id).cloned()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The zones, replacing the old ones: a zone kept as it was (same vSwitch, `eni` the
    /// same or left out) is untouched; new ones are checked and allocated as on creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<NewZone>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// GWLB endpoints: the routes (replacing the old ones).
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<IpNet>>,
    /// ipv4 or dualstack: to dualstack, every ENI gets an IPv6 address (given in
    /// `zones[].eni6`, or allocated), a gateway endpoint an IPv6 route target (allocated
    /// as on creation); to ipv4, they are released.
    #[schema(value_type = Option<String>, example = "dualstack")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<IpVersion>,
    /// Interface endpoints: zone affinity on or off (on only if the service supports it,
    /// or if it is on already).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_affinity: Option<bool>,
    /// Interface endpoints: the service's custom domain on or off in the VPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_domain: Option<bool>,
}

pub fn update_endpoint(s: &mut State, c: &Caller, id: &str, p: EndpointPatch) -> R<Endpoint> {
    let zones = match (p.zones, p.ip_version) {
        (Some(v), ip) => Some(patched_zones(s, c, id, v, ip)?),
        // A new IP version re-places the ENIs as they are (IPv6 addresses allocated or
        // released).
        (None, Some(ip)) => {
            let kept = own_endpoint(s, c, id)?
                .zones
                .iter()
                .map(|z| NewZone {
                    vswitch: z.vswitch.clone(),
                    eni: Some(z.eni),
                    // A kept ENI keeps its IPv6 address (if dualstack).
                    eni6: None,
                })
                .collect();
            Some(patched_zones(s, c, id, kept, Some(ip))?)
        }
        (None, None) => None,
    };
    let current = own_endpoint(s, c, id)?.clone();
    let svc = service_of(s, &current)?;
    // A gateway endpoint's IPv6 route target follows its IP version (kept while it stays
    // dualstack).
    let gateway6 = p
        .ip_version
        .map(|ip| {
            place_gateway6(
                s,
                &current.vpc,
                svc,
                ip,
                current.gateway,
                None,
                current.gateway6,
            )
        })
        .transpose()?;
    if let Some(on) = p.zone_affinity {
        affinity_change(svc, current.zone_affinity, on)?;
    }
    if p.service_domain == Some(true) && !current.service_domain {
        may_enable_service_domain(s, id, &current.vpc, svc)?;
    }
    let ep = own_endpoint(s, c, id)?;
    check_endpoint_limits(
        "",
        p.security_groups.as_ref().unwrap_or(&ep.security_groups),
        p.tags.as_ref().unwrap_or(&ep.tags),
    )?;
    set(&mut ep.name, p.name);
    set(&mut ep.description, p.description);
    set(&mut ep.zones, zones);
    set(&mut ep.security_groups, p.security_groups);
    set(&mut ep.tags, p.tags);
    set(&mut ep.routes, p.routes);
    set(&mut ep.ip_version, p.ip_version);
    set(&mut ep.gateway6, gateway6);
    set(&mut ep.zone_affinity, p.zone_affinity);
    set(&mut ep.service_domain, p.service_domain);
    Ok(ep.clone())
}

/// Whether an endpoint of `svc` whose zone affinity is `was` (off for a new one) may have
/// it `on`, by seed 001's rules: a service that supports zone affinity lets its endpoints
/// turn it on and off; one that does not (or no longer does) lets none turn it on, but an
/// endpoint that has it keeps it and may turn it off. Only interface endpoints have it.
fn affinity_change(svc: &EndpointService, was: bool, on: bool) -> R<()> {
    if svc.kind != ServiceType::Interface {
        return Err(OpError::invalid(
            "zone_affinity",
            "only interface endpoints have zone affinity (their domain names answer by zone)",
        ));
    }
    if on && !was && !svc.zone_affinity {
        return Err(OpError::conflict(
            "zone_affinity",
            format!(
                "service {} does not support zone affinity: it cannot be turned on",
                svc.id
            ),
        ));
    }
    Ok(())
}

/// Whether endpoint `id` in VPC `vpc` may turn on the custom domain of its service `svc`:
/// an interface endpoint, the domain verified by the operator, and no other endpoint in
/// the VPC resolving the same domain (seed 001: the first enabled wins). The errors name
/// the request's field, and the endpoint that was first.
fn may_enable_service_domain(s: &State, id: &str, vpc: &str, svc: &EndpointService) -> R<()> {
    const F: &str = "service_domain";
    if svc.kind != ServiceType::Interface {
        return Err(OpError::invalid(
            F,
            "only interface endpoints resolve a custom service domain",
        ));
    }
    let Some(domain) = svc.domain.as_deref() else {
        return Err(OpError::conflict(
            F,
            format!("service {} has no custom domain", svc.id),
        ));
    };
    if !svc.domain_verified {
        return Err(OpError::conflict(
            F,
            format!(
                "the domain {domain} of service {} is not verified yet: the operator verifies it first",
                svc.id
            ),
        ));
    }
    let first = s.endpoints.iter().find(|e| {
        e.id != id
            && e.vpc == vpc
            && e.service_domain
            && s.service(&e.service)
                .is_some_and(|x| x.domain.as_deref() == Some(domain))
    });
    if let Some(first) = first {
        return Err(OpError::conflict(
            F,
            format!(
                "endpoint {} already resolves {domain} in VPC {vpc}: the first enabled wins (turn it off there first)",
                first.id
            ),
        ));
    }
    Ok(())
}

pub fn delete_endpoint(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own_endpoint(s, c, id)?;
    s.endpoints.retain(|e| e.id != id);
    Ok(())
}

/// Endpoint `id` as its owner, or the operator, may change it.
fn owned_or_operator<'a>(s: &'a mut State, c: &Caller, id: &str) -> R<&'a mut Endpoint> {
    match c {
        Caller::Admin => s
            .endpoints
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| OpError::not_found("endpoint", format!("no endpoint {id}"))),
        Caller::Account(_) => own_endpoint(s, c, id),
    }
}

/// Turns on the flow logs of endpoint `id` with the capture window `fl` (or changes the
/// window); its owner or the operator.
pub fn set_flow_log(s: &mut State, c: &Caller, id: &str, fl: FlowLog) -> R<Endpoint> {
    check_flow_log("", &fl)?;
    let ep = owned_or_operator(s, c, id)?;
    let gwlb = |s: &State, e: &str| {
        s.services
            .iter()
            .any(|v| v.id == e && v.kind == ServiceType::Gwlb)
    };
    let service = ep.service.clone();
    if gwlb(s, &service) {
        return Err(OpError::invalid("flow_log", crate::model::GWLB_FLOW_LOG));
    }
    let ep = owned_or_operator(s, c, id)?;
    ep.flow_log = Some(fl);
    Ok(ep.clone())
}

/// Turns off the flow logs of endpoint `id` (nothing to do if they are off); its owner or
/// the operator.
pub fn clear_flow_log(s: &mut State, c: &Caller, id: &str) -> R<Endpoint> {
    let ep = owned_or_operator(s, c, id)?;
    ep.flow_log = None;
    Ok(ep.clone())
}

/// A zone of an endpoint as a request gives it: the vSwitch, and the ENI's address or none
/// (the daemon allocates one).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    pub vswitch: String,
    /// Left out: the lowest free address of the vSwitch.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "10.10.1.100")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eni: Option<Ipv4Addr>,
    /// Dualstack endpoints: the ENI's IPv6 address; left out, the vSwitch's lowest free
    /// one (its first address and last three are reserved).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "fd00:a:0:1::64")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eni6: Option<Ipv6Addr>,
}

/// Whether an endpoint of `svc` may have IP version `ip`: dualstack only when the
/// service is.
fn may_have_ip_version(svc: &EndpointService, ip: IpVersion) -> R<()> {
    if ip.is_ipv4() {
        return Ok(());
    }
    if !svc.ip_version.is_dualstack() {
        return Err(OpError::invalid(
            "ip_version",
            format!(
                "service {} is IPv4 only: a dualstack endpoint needs a dualstack service",
                svc.id
            ),
        ));
    }
    Ok(())
}

/// The IPv6 route target of an `ip` endpoint of `svc` in VPC `vpc` whose IPv4 route
/// target is `gateway`: for a dualstack gateway endpoint `wanted` if given (whether it is
/// a usable, free address is left to `State::validate`), else the one it has (`kept`),
/// else the lowest free IPv6 address of the vSwitch holding `gateway`; none otherwise
/// (asking for one is refused).
fn place_gateway6(
    s: &State,
    vpc: &str,
    svc: &EndpointService,
    ip: IpVersion,
    gateway: Option<Ipv4Addr>,
    wanted: Option<Ipv6Addr>,
    kept: Option<Ipv6Addr>,
) -> R<Option<Ipv6Addr>> {
    const F: &str = "gateway6";
    if svc.kind != ServiceType::Gateway || ip.is_ipv4() {
        return match wanted {
            Some(_) if svc.kind != ServiceType::Gateway => Err(OpError::invalid(
                F,
                "only endpoints of gateway services have an IPv6 route target",
            )),
            Some(_) => Err(OpError::invalid(
                F,
                "only dualstack gateway endpoints (ip_version dualstack) have an IPv6 route target",
            )),
            None => Ok(None),
        };
    }
    if let Some(a) = wanted.or(kept) {
        return Ok(Some(a));
    }
    // Without a usable IPv4 route target, `State::validate` names that.
    let Some((v, gw)) = s.vpc(vpc).zip(gateway) else {
        return Ok(None);
    };
    let Some(vsw) = v.vswitches.iter().find(|x| x.cidr.contains(&gw)) else {
        return Ok(None);
    };
    let Some(net6) = vsw.ipv6_cidr else {
        return Err(OpError::invalid(
            F,
            format!(
                "vSwitch {} (which holds the route target {gw}) has no ipv6_cidr: give gateway6, an address of a vSwitch that has one",
                vsw.id
            ),
        ));
    };
    let used = s.used_addresses6(&v.id);
    vsw.lowest_free6(&used).map(Some).ok_or_else(|| {
        OpError::conflict(
            F,
            format!(
                "vSwitch {} ({net6}) has no free IPv6 address left; give gateway6",
                vsw.id
            ),
        )
    })
}

/// The ENIs of `req` for an endpoint in `vpc` of service `svc` that has the ENIs
/// `existing`. A zone in `existing` given again (same vSwitch, same or no address) is kept
/// as it is; every other one is new and must be in a zone the service serves, must not ask
/// for a system-reserved address, and gets the vSwitch's lowest free address if it asks
/// for none. Whether an address is inside its vSwitch, taken, or the zone's second ENI is
/// left to `State::validate`, like every rule stored state must keep.
///
/// A dualstack endpoint's ENIs (`ip`) each get an IPv6 address too: the one asked for,
/// the one a kept ENI has, or the vSwitch's lowest free one; an ipv4 endpoint's have none.
fn place_zones(
    s: &State,
    vpc: &str,
    svc: &EndpointService,
    ip: IpVersion,
    existing: &[EndpointZone],
    req: Vec<NewZone>,
    field: &str,
) -> R<Vec<EndpointZone>> {
    if svc.kind == ServiceType::Gateway && !req.is_empty() {
        return Err(OpError::invalid(
            field,
            "a gateway endpoint has no ENIs; give gateway instead",
        ));
    }
    let v = s
        .vpc(vpc)
        .ok_or_else(|| OpError::not_found("vpc", format!("no VPC {vpc}")))?;
    let mut used = taken_in(s, v);
    let mut used6 = s.used_addresses6(&v.id);
    let mut out = Vec::with_capacity(req.len());
    for (i, z) in req.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        let eni6 = z.eni6;
        let kept = existing
            .iter()
            .find(|e| e.vswitch == z.vswitch && z.eni.is_none_or(|a| a == e.eni));
        let mut zone = match kept {
            Some(kept) => kept.clone(),
            None => place_zone(s, v, svc, &mut used, z, &f)?,
        };
        // The address asked for, or a kept ENI's own (free for it again).
        let wanted6 = eni6.or(zone.eni6.filter(|_| ip.is_dualstack()));
        if let Some(old) = zone.eni6.take() {
            used6.remove(&old);
        }
        zone.eni6 = place_eni6(v, ip, &mut used6, &zone.vswitch, wanted6, &f)?;
        out.push(zone);
    }
    Ok(out)
}

/// The IPv6 address of a new or kept ENI of a `ip` endpoint in vSwitch `vswitch` of
/// `vpc` (at `f`): `wanted` if given, else the vSwitch's lowest free one not in `used`
/// (which gains it); none for an ipv4 endpoint, which may not ask for one. Whether a
/// given address is taken is left to `State::validate`.
fn place_eni6(
    vpc: &Vpc,
    ip: IpVersion,
    used: &mut BTreeSet<Ipv6Addr>,
    vswitch: &str,
    wanted: Option<Ipv6Addr>,
    f: &str,
) -> R<Option<Ipv6Addr>> {
    if ip.is_ipv4() {
        return match wanted {
            Some(_) => Err(OpError::invalid(
                format!("{f}.eni6"),
                "only dualstack endpoints (ip_version dualstack) have IPv6 ENI addresses",
            )),
            None => Ok(None),
        };
    }
    let Some(vsw) = vpc.vswitches.iter().find(|x| x.id == vswitch) else {
        return Err(OpError::invalid(
            format!("{f}.vswitch"),
            format!("VPC {} has no vSwitch {vswitch:?}", vpc.id),
        ));
    };
    let Some(net6) = vsw.ipv6_cidr else {
        return Err(OpError::invalid(
            format!("{f}.vswitch"),
            format!(
                "vSwitch {} has no ipv6_cidr: a dualstack endpoint's ENIs need IPv6 addresses there",
                vsw.id
            ),
        ));
    };
    let a = match wanted {
        Some(a) if !vsw.usable6(a) => return Err(not_usable6(vsw, net6, a, f)),
        Some(a) => a,
        None => vsw.lowest_free6(used).ok_or_else(|| {
            OpError::conflict(
                format!("{f}.vswitch"),
                format!("vSwitch {} ({net6}) has no free IPv6 address left", vsw.id),
            )
        })?,
    };
    used.insert(a);
    Ok(Some(a))
}

/// `a` (at `f`) is outside vSwitch `vsw`'s IPv6 range `net6` or one of its reserved
/// addresses.
fn not_usable6(vsw: &VSwitch, net6: ipnet::Ipv6Net, a: Ipv6Addr, f: &str) -> OpError {
    let why = if net6.contains(&a) {
        "a system-reserved address of"
    } else {
        "not an address of"
    };
    OpError::invalid(
        format!("{f}.eni6"),
        format!(
            "{a} is {why} vSwitch {} ({net6}: its first address and its last three are reserved)",
            vsw.id
        ),
    )
}

/// One new ENI (see `place_zones`); `used` gains its address.
fn place_zone(
    s: &State,
    vpc: &Vpc,
    svc: &EndpointService,
    used: &mut std::collections::BTreeSet<Ipv4Addr>,
    z: NewZone,
    f: &str,
) -> R<EndpointZone> {
    let Some(vsw) = vpc.vswitches.iter().find(|x| x.id == z.vswitch) else {
        return Err(OpError::invalid(
            format!("{f}.vswitch"),
            format!("VPC {} has no vSwitch {:?}", vpc.id, z.vswitch),
        ));
    };
    if !svc.serves_zone(&vsw.zone) {
        return Err(OpError::invalid(
            format!("{f}.vswitch"),
            format!(
                "vSwitch {} is in zone {}, which service {} does not serve (it serves {})",
                vsw.id,
                vsw.zone,
                svc.id,
                svc.zones().join(", ")
            ),
        ));
    }
    if let Some(a) = z.eni {
        not_vpc_own(s, vpc, &format!("{f}.eni"), a)?;
    }
    let eni = match z.eni {
        Some(a) if vsw.cidr.contains(&a) && vsw.is_reserved(a) => {
            return Err(OpError::invalid(
                format!("{f}.eni"),
                format!(
                    "{a} is a system-reserved address of vSwitch {} ({}: its first address and its last three are reserved)",
                    vsw.id, vsw.cidr
                ),
            ));
        }
        Some(a) => a,
        None => vsw.lowest_free(used).ok_or_else(|| {
            OpError::conflict(
                format!("{f}.vswitch"),
                format!(
                    "vSwitch {} ({}) has no free address left; give another vSwitch of zone {}",
                    vsw.id, vsw.cidr, vsw.zone
                ),
            )
        })?,
    };
    used.insert(eni);
    Ok(EndpointZone {
        vswitch: vsw.id.clone(),
        eni,
        eni6: None,
    })
}

/// The addresses a new ENI of VPC `vpc` may not take: those in use (see
/// `State::used_addresses`) and the VPC's resolver and probe addresses.
fn taken_in(s: &State, vpc: &Vpc) -> std::collections::BTreeSet<Ipv4Addr> {
    let mut used = s.used_addresses(&vpc.id);
    // Every VPC's resolver and probe address: the host holds each on one namespace.
    used.extend(s.host_addresses());
    used
}

/// The zones a PATCH of endpoint `id` asks for, placed as `place_zones` does, for the IP
/// version `ip` asks for (none: the endpoint's).
fn patched_zones(
    s: &mut State,
    c: &Caller,
    id: &str,
    req: Vec<NewZone>,
    ip: Option<IpVersion>,
) -> R<Vec<EndpointZone>> {
    let ep = own_endpoint(s, c, id)?.clone();
    let svc = service_of(s, &ep)?;
    let ip = ip.unwrap_or(ep.ip_version);
    may_have_ip_version(svc, ip)?;
    place_zones(s, &ep.vpc, svc, ip, &ep.zones, req, "zones")
}

fn service_of<'a>(s: &'a State, ep: &Endpoint) -> R<&'a EndpointService> {
    s.service(&ep.service).ok_or_else(|| {
        OpError::internal(format!(
            "endpoint {}'s service {} is gone",
            ep.id, ep.service
        ))
    })
}

/// Adds one zone (one ENI) to endpoint `id`: in a zone its service serves, at the given
/// address or the vSwitch's lowest free one. The other zones' ENIs are left as they are.
pub fn add_zone(s: &mut State, c: &Caller, id: &str, z: NewZone) -> R<Endpoint> {
    let ep = own_endpoint(s, c, id)?.clone();
    let svc = service_of(s, &ep)?;
    if svc.kind == ServiceType::Gateway {
        return Err(OpError::invalid(
            "vswitch",
            format!("endpoint {id} is a gateway endpoint: it has no ENIs"),
        ));
    }
    let vpc = s
        .vpc(&ep.vpc)
        .ok_or_else(|| OpError::internal(format!("endpoint {id}'s VPC {} is gone", ep.vpc)))?;
    let mut used = taken_in(s, vpc);
    let mut used6 = s.used_addresses6(&vpc.id);
    // The body is one zone: its fields are named without a list index.
    let unprefixed = |mut e: OpError| {
        e.field = e.field.map(|f| f.trim_start_matches('.').to_string());
        e
    };
    let eni6 = z.eni6;
    let mut zone = place_zone(s, vpc, svc, &mut used, z, "").map_err(unprefixed)?;
    zone.eni6 =
        place_eni6(vpc, ep.ip_version, &mut used6, &zone.vswitch, eni6, "").map_err(unprefixed)?;
    let ep = own_endpoint(s, c, id)?;
    ep.zones.push(zone);
    Ok(ep.clone())
}

/// Removes the zone of endpoint `id` in vSwitch `vswitch` (its ENI); the endpoint's last
/// zone stays (delete the endpoint instead).
pub fn remove_zone(s: &mut State, c: &Caller, id: &str, vswitch: &str) -> R<Endpoint> {
    let ep = own_endpoint(s, c, id)?;
    let Some(i) = ep.zones.iter().position(|z| z.vswitch == vswitch) else {
        return Err(OpError::not_found(
            "vswitch",
            format!("endpoint {id} has no ENI in vSwitch {vswitch}"),
        ));
    };
    if ep.zones.len() == 1 {
        return Err(OpError::conflict(
            "vswitch",
            format!(
                "vSwitch {vswitch} holds endpoint {id}'s only ENI: an endpoint keeps at least one zone (delete the endpoint instead)"
            ),
        ));
    }
    ep.zones.remove(i);
    Ok(ep.clone())
}
