//! Endpoint services (provider): creation, settings, whitelist, appliances, and the
//! services a consumer may use.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Caller, OpError, R, admin_only, clearable, creator, endpoint_ids, not_vpc_own, own, seen, set,
    unique, visible,
};
use crate::{
    desired::Unhealthy,
    model::{
        Backend, EndpointService, GwlbSettings, HealthSettings, IpVersion, Listener, Naming,
        ServiceType, State, check_listeners, numeric_id,
    },
};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewService {
    pub id: String,
    pub vpc: String,
    /// interface, gateway or gwlb.
    #[serde(default = "interface_type")]
    #[schema(value_type = String, example = "interface")]
    pub r#type: ServiceType,
    #[serde(default)]
    pub auto_accept: bool,
    #[serde(default = "crate::model::yes")]
    pub zone_affinity: bool,
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// Load balancers `{zone, address, address6?}` (one per zone; `address6`, the IPv6
    /// address, for dualstack services), or for gwlb services the appliances.
    #[schema(value_type = Vec<Object>)]
    pub backends: Vec<Backend>,
    /// SNAT addresses (none for gwlb services).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub snat: Vec<Ipv4Addr>,
    /// ipv4 (left out) or dualstack: interface and gateway services then give each load
    /// balancer's `address6` and `snat6`; GWLB endpoints may route IPv6 prefixes.
    #[serde(default)]
    #[schema(value_type = String, example = "dualstack")]
    pub ip_version: IpVersion,
    /// Dualstack services: the IPv6 SNAT addresses in the service VPC's `ipv6_cidr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>, example = json!(["fd00:b::200"]))]
    pub snat6: Vec<Ipv6Addr>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<[u16; 2]>,
    /// The custom service domain name (lowercase; verified by the operator before
    /// consumers may enable it on their endpoints).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Interface services: how each zone's load balancer is health-checked, `{probe,
    /// port, interval_ms, timeout_ms, healthy_threshold, unhealthy_threshold}` (left out:
    /// TCP connects to the first TCP listener's port).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
    /// Gateway services: the prefix list (IPv6 prefixes for dualstack services).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub prefixes: Vec<IpNet>,
    /// GWLB services: `{address, stickiness, cross_zone, failover, health}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gwlb: Option<GwlbSettings>,
    /// The load balancer's listeners, `{"protocol": "tcp"|"udp", "port": 80}` or a range
    /// with `"to_port"`: the only traffic endpoints carry. Interface and gateway services
    /// need at least one; GWLB services have none.
    #[serde(default)]
    #[schema(value_type = Vec<Object>, example = json!([{"protocol": "tcp", "port": 80}]))]
    pub listeners: Vec<Listener>,
    /// The most one endpoint may hold of the service's SNAT tuples in flows that have not
    /// completed their handshake, in percent (1-100, default 20).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_flow_share: Option<u8>,
}

fn interface_type() -> ServiceType {
    ServiceType::Interface
}

/// Creates a service; its custom domain must lie outside the running `naming`'s suffix.
pub fn create_service(
    s: &mut State,
    c: &Caller,
    req: NewService,
    naming: &Naming,
) -> R<EndpointService> {
    let owner = creator(s, c, &req.vpc)?;
    unique(s.service(&req.id).is_some(), "service", &req.id)?;
    for (i, w) in req.whitelist.iter().enumerate() {
        if s.account(w).is_none() {
            return Err(OpError::invalid(
                format!("whitelist[{i}]"),
                format!("no account {w}"),
            ));
        }
    }
    let svc = EndpointService {
        id: req.id,
        account: owner,
        kind: req.r#type,
        vpc: req.vpc,
        auto_accept: req.auto_accept,
        zone_affinity: req.zone_affinity,
        whitelist: req.whitelist,
        backends: req.backends,
        snat: req.snat,
        ip_version: req.ip_version,
        snat6: req.snat6,
        snat_ports: req.snat_ports.unwrap_or(crate::model::DEFAULT_SNAT_PORTS),
        domain: req.domain,
        domain_verified: false,
        health: req.health,
        prefixes: req.prefixes,
        gwlb: req.gwlb,
        listeners: req.listeners,
        endpoint_flow_share: req
            .endpoint_flow_share
            .unwrap_or(crate::model::DEFAULT_ENDPOINT_FLOW_SHARE),
        notifications: Vec::new(),
    };
    check_listeners("listeners", &svc.listeners)?;
    svc.require_listeners("listeners")?;
    if let Some(d) = &svc.domain {
        EndpointService::check_domain("domain", d, &naming.suffix)?;
    }
    addresses_clear_of_vpc_own(s, &svc)?;
    s.services.push(svc.clone());
    Ok(svc)
}

/// The service's addresses in its VPC (load balancers or appliances, SNAT, GWLB) are not
/// the VPC's resolver or probe address; errors name the request's field.
fn addresses_clear_of_vpc_own(s: &State, svc: &EndpointService) -> R<()> {
    let Some(vpc) = s.vpc(&svc.vpc) else {
        return Ok(());
    };
    for (i, b) in svc.backends.iter().enumerate() {
        not_vpc_own(s, vpc, &format!("backends[{i}].address"), b.address)?;
    }
    for (i, a) in svc.snat.iter().enumerate() {
        not_vpc_own(s, vpc, &format!("snat[{i}]"), *a)?;
    }
    if let Some(g) = &svc.gwlb {
        not_vpc_own(s, vpc, "gwlb.address", g.address)?;
    }
    Ok(())
}

pub(super) fn own_service<'a>(
    s: &'a mut State,
    c: &Caller,
    id: &str,
) -> R<&'a mut EndpointService> {
    own(&mut s.services, c, "service", "service", id)
}

pub fn list_services(s: &State, c: &Caller) -> Vec<EndpointService> {
    visible(&s.services, c)
}

pub fn get_service(s: &State, c: &Caller, id: &str) -> R<EndpointService> {
    seen(&s.services, c, "service", "service", id).cloned()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_accept: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_affinity: Option<bool>,
    #[schema(value_type = Option<Vec<Object>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
    /// The custom service domain name; `null` removes it. A change (or removal) clears its
    /// verification, and is refused while endpoints have it enabled.
    #[serde(default, deserialize_with = "clearable")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = true)]
    pub domain: Option<Option<String>>,
    /// Interface services: the load balancers' health checks (replacing the old ones as a
    /// whole); `null` goes back to the defaults.
    #[serde(default, deserialize_with = "clearable")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = true)]
    pub health: Option<Option<HealthSettings>>,
    /// GWLB services: new settings (replacing the old ones as a whole).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gwlb: Option<GwlbSettings>,
    /// The listeners (replacing the old ones): new flows on a removed listener are
    /// dropped at once, and so are the packets of flows established on it.
    #[schema(value_type = Option<Vec<Object>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<Listener>>,
    /// The per-endpoint share of the SNAT tuples in embryonic flows (percent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_flow_share: Option<u8>,
    /// ipv4 or dualstack. To ipv4: refused while dualstack endpoints (or GWLB endpoints
    /// with IPv6 routes) use the service; the load balancers' `address6`, `snat6` and a
    /// gateway service's IPv6 prefixes go.
    #[schema(value_type = Option<String>, example = "dualstack")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<IpVersion>,
    /// The IPv6 SNAT addresses (replacing the old ones).
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat6: Option<Vec<Ipv6Addr>>,
}

/// Refuses to make service `id` IPv4 only while endpoints use its IPv6 side: dualstack
/// endpoints (their IPv6 addresses would stop working under their consumers) and GWLB
/// endpoints with IPv6 routes. Their owners switch them to ipv4 (or remove the routes)
/// first, as for a custom domain.
fn may_drop_ipv6(s: &State, id: &str) -> R<()> {
    let users = endpoint_ids(s, |e| {
        e.service == id
            && (e.ip_version.is_dualstack() || e.routes.iter().any(|r| matches!(r, IpNet::V6(_))))
    });
    if users.is_empty() {
        return Ok(());
    }
    Err(OpError::conflict(
        "ip_version",
        format!(
            "service {id} carries IPv6 for endpoints {}: it becomes ipv4 once their owners switch them to ipv4 (ip_version) or remove their IPv6 routes",
            users.join(", ")
        ),
    ))
}

/// Changes a service's settings (its owner). A new custom domain must lie outside the
/// running `naming`'s suffix.
pub fn update_service(
    s: &mut State,
    c: &Caller,
    id: &str,
    p: ServicePatch,
    naming: &Naming,
) -> R<EndpointService> {
    let old_domain = own_service(s, c, id)?.domain.clone();
    if let Some(domain) = &p.domain
        && *domain != old_domain
    {
        if let Some(d) = domain {
            EndpointService::check_domain("domain", d, &naming.suffix)?;
        }
        // A consumer's name never changes under it: it turns the name off first.
        let users = endpoint_ids(s, |e| e.service == id && e.service_domain);
        if !users.is_empty() {
            return Err(OpError::conflict(
                "domain",
                format!(
                    "the domain {} is enabled on endpoints {}: it changes once their owners turn it off (service_domain), so no consumer's name changes under it",
                    old_domain.as_deref().unwrap_or_default(),
                    users.join(", "),
                ),
            ));
        }
    }
    if p.ip_version == Some(IpVersion::Ipv4) {
        may_drop_ipv6(s, id)?;
    }
    let svc = own_service(s, c, id)?;
    set(&mut svc.auto_accept, p.auto_accept);
    set(&mut svc.zone_affinity, p.zone_affinity);
    set(&mut svc.backends, p.backends);
    set(&mut svc.snat6, p.snat6);
    if let Some(ip) = p.ip_version {
        svc.ip_version = ip;
        if ip.is_ipv4() {
            svc.snat6.clear();
            for b in &mut svc.backends {
                b.address6 = None;
            }
            // A gateway service's IPv6 prefixes: no endpoint routes them any more.
            svc.prefixes.retain(|p| matches!(p, IpNet::V4(_)));
        }
    }
    if let Some(d) = p.domain
        && d != svc.domain
    {
        svc.domain = d;
        svc.domain_verified = false;
    }
    set(&mut svc.health, p.health);
    set(&mut svc.gwlb, p.gwlb.map(Some));
    set(&mut svc.endpoint_flow_share, p.endpoint_flow_share);
    if let Some(v) = p.listeners {
        check_listeners("listeners", &v)?;
        svc.listeners = v;
        svc.require_listeners("listeners")?;
    }
    let svc = svc.clone();
    addresses_clear_of_vpc_own(s, &svc)?;
    Ok(svc)
}

/// The operator verifies that service `id`'s provider owns its custom domain (the lab has
/// no public DNS for a TXT challenge: the operator checks out of band). Consumers may then
/// enable the domain on their endpoints.
pub fn verify_domain(s: &mut State, c: &Caller, id: &str) -> R<EndpointService> {
    admin_only(c)?;
    let svc = s
        .services
        .iter_mut()
        .find(|x| x.id == id)
        .ok_or_else(|| OpError::not_found("service", format!("no service {id}")))?;
    if svc.domain.is_none() {
        return Err(OpError::conflict(
            "domain",
            format!("service {id} has no custom domain to verify"),
        ));
    }
    svc.domain_verified = true;
    Ok(svc.clone())
}

pub fn delete_service(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own_service(s, c, id)?;
    let users = endpoint_ids(s, |e| e.service == id);
    if !users.is_empty() {
        return Err(OpError::conflict(
            "service",
            format!(
                "service {id} still has endpoints ({}); delete them first",
                users.join(", ")
            ),
        ));
    }
    s.services.retain(|x| x.id != id);
    Ok(())
}

pub fn whitelist_add(s: &mut State, c: &Caller, id: &str, account: &str) -> R<Vec<String>> {
    // The service's owner first: a stranger learns nothing of which accounts exist.
    own_service(s, c, id)?;
    if s.account(account).is_none() {
        return Err(OpError::not_found(
            "account",
            format!("no account {account}"),
        ));
    }
    let svc = own_service(s, c, id)?;
    if !svc.whitelist.iter().any(|w| w == account) {
        svc.whitelist.push(account.to_string());
    }
    Ok(svc.whitelist.clone())
}

pub fn whitelist_remove(s: &mut State, c: &Caller, id: &str, account: &str) -> R<Vec<String>> {
    let svc = own_service(s, c, id)?;
    if !svc.whitelist.iter().any(|w| w == account) {
        return Err(OpError::not_found(
            "account",
            format!("{account} is not on the whitelist of {id}"),
        ));
    }
    svc.whitelist.retain(|w| w != account);
    Ok(svc.whitelist.clone())
}

/// A service as a consumer that may use it sees it (the console's service selection, the
/// cloud's "describe endpoint services"): what is needed to create an endpoint, nothing
/// about the provider's whitelist, its other consumers or its addresses.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AvailableService {
    pub id: String,
    /// interface, gateway or gwlb.
    #[schema(value_type = String, example = "interface")]
    pub r#type: ServiceType,
    /// The zones an endpoint's ENIs may be in (none for gateway services).
    pub zones: Vec<String>,
    /// What endpoints of the service carry: its load balancer's listeners.
    #[schema(value_type = Vec<Object>, example = json!([{"protocol": "tcp", "port": 80}]))]
    pub listeners: Vec<Listener>,
    pub domain: Option<String>,
    /// Whether a new endpoint is connected at once (else it waits for the provider).
    pub auto_accept: bool,
    /// Whether the service supports zone affinity (an ENI's flows stay in its zone).
    pub zone_affinity: bool,
    /// Gateway services: the prefixes a gateway endpoint routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub prefixes: Vec<IpNet>,
    /// dualstack: endpoints may be dualstack (left out: ipv4).
    #[serde(skip_serializing_if = "IpVersion::is_ipv4")]
    #[schema(value_type = Option<String>, example = "dualstack")]
    pub ip_version: IpVersion,
}

impl From<&EndpointService> for AvailableService {
    fn from(s: &EndpointService) -> Self {
        Self {
            id: s.id.clone(),
            r#type: s.kind,
            zones: s.zones().into_iter().map(str::to_string).collect(),
            listeners: s.listeners.clone(),
            domain: s.domain.clone(),
            auto_accept: s.auto_accept,
            zone_affinity: s.zone_affinity,
            prefixes: s.prefixes.clone(),
            ip_version: s.ip_version,
        }
    }
}

/// Whether `c` may see service `svc` among the available ones: an account it admits (its
/// own account or a whitelisted one), or the operator.
fn available_to(c: &Caller, svc: &EndpointService) -> bool {
    match c {
        Caller::Admin => true,
        Caller::Account(a) => svc.admits(a),
    }
}

/// The services the caller's account may create endpoints to.
pub fn list_available_services(s: &State, c: &Caller) -> Vec<AvailableService> {
    s.services
        .iter()
        .filter(|x| available_to(c, x))
        .map(AvailableService::from)
        .collect()
}

/// One service the caller's account may use; 404, as for a service that does not exist,
/// when it may not (its existence is not revealed).
pub fn get_available_service(s: &State, c: &Caller, id: &str) -> R<AvailableService> {
    s.service(id)
        .filter(|x| available_to(c, x))
        .map(AvailableService::from)
        .ok_or_else(|| OpError::not_found("service", format!("no service {id} available")))
}

/// One appliance of a GWLB service and the health checker's current verdict on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApplianceView {
    #[schema(value_type = String, example = "10.20.1.10")]
    pub address: Ipv4Addr,
    pub zone: String,
    pub healthy: bool,
}

/// The appliances of a GWLB service with their health (owner or operator). `unhealthy` is
/// the daemon's health view: appliances not in it are healthy.
pub fn list_appliances(
    s: &State,
    c: &Caller,
    service: &str,
    unhealthy: &Unhealthy,
) -> R<Vec<ApplianceView>> {
    let svc = get_service(s, c, service)?;
    if svc.kind != ServiceType::Gwlb {
        return Err(OpError::invalid(
            "service",
            format!("service {service} is not a GWLB service; it has no appliances"),
        ));
    }
    let vpc_id = numeric_id(&svc.vpc);
    Ok(svc
        .backends
        .iter()
        .map(|b| ApplianceView {
            address: b.address,
            zone: b.zone.clone(),
            healthy: !unhealthy.contains(&(vpc_id, b.address.octets())),
        })
        .collect())
}
