//! What a cloud console lets each party do, as operations on the model: who may call
//! them, what they check, what they change. No I/O; the API is a thin adapter over these.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    desired::Unhealthy,
    model::{
        Account, AclRule, Backend, Connection, Endpoint, EndpointService, EndpointZone,
        GwlbSettings, Listener, Lookup, NetworkAcl, SecurityGroup, ServiceType, SgRule, State,
        VSwitch, Vpc, check_endpoint_limits, check_listeners, lookup, numeric_id,
    },
};

/// Who is calling: the operator (admin token) or one account (its token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Account(String),
}

pub use crate::error::{ErrorKind, OpError};

type R<T> = Result<T, OpError>;

fn admin_only(c: &Caller) -> R<()> {
    match c {
        Caller::Admin => Ok(()),
        Caller::Account(_) => Err(OpError::forbidden(
            "only the operator (admin token) may do this",
        )),
    }
}

fn account_of(c: &Caller) -> R<&str> {
    match c {
        Caller::Account(a) => Ok(a),
        Caller::Admin => Err(OpError::forbidden(
            "this is done with an account's token, not the admin token",
        )),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// An account as the API shows it (no token hash).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub name: String,
}

/// The response to account creation: the only time the token is shown.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CreatedAccount {
    pub id: String,
    pub name: String,
    pub token: String,
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who holds `token`: the admin or an account.
pub fn authenticate(s: &State, admin_token_sha256: &str, token: Option<&str>) -> R<Caller> {
    let Some(token) = token else {
        return Err(OpError::unauthorized("missing bearer token"));
    };
    let h = token_hash(token);
    if h == admin_token_sha256 {
        return Ok(Caller::Admin);
    }
    s.accounts
        .iter()
        .find(|a| a.token_sha256.as_deref() == Some(h.as_str()))
        .map(|a| Caller::Account(a.id.clone()))
        .ok_or_else(|| OpError::unauthorized("unknown token"))
}

pub fn create_account(
    s: &mut State,
    c: &Caller,
    req: NewAccount,
    token: String,
) -> R<CreatedAccount> {
    admin_only(c)?;
    if s.account(&req.id).is_some() {
        return Err(OpError::conflict(
            "id",
            format!("account {} already exists", req.id),
        ));
    }
    s.accounts.push(Account {
        id: req.id.clone(),
        name: req.name.clone(),
        token_sha256: Some(token_hash(&token)),
    });
    Ok(CreatedAccount {
        id: req.id,
        name: req.name,
        token,
    })
}

pub fn list_accounts(s: &State, c: &Caller) -> Vec<AccountView> {
    s.accounts
        .iter()
        .filter(|a| matches!(c, Caller::Admin) || matches!(c, Caller::Account(id) if *id == a.id))
        .map(|a| AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
        })
        .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVpc {
    pub id: String,
    pub account: String,
    #[schema(value_type = String, example = "10.10.0.0/16")]
    pub cidr: Ipv4Net,
    /// The forwarder's interface attached to this VPC.
    pub interface: String,
    #[serde(default)]
    pub vswitches: Vec<NewVSwitch>,
    /// The interface also carries the host's own traffic (unrelated packets pass to the
    /// host's stack). Off by default: tenants cannot reach the forwarder host.
    #[serde(default)]
    pub host_traffic: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVSwitch {
    pub id: String,
    pub zone: String,
    #[schema(value_type = String, example = "10.10.1.0/24")]
    pub cidr: Ipv4Net,
}

pub fn create_vpc(s: &mut State, c: &Caller, req: NewVpc) -> R<Vpc> {
    admin_only(c)?;
    if s.account(&req.account).is_none() {
        return Err(OpError::not_found(
            "account",
            format!("no account {}", req.account),
        ));
    }
    if s.vpc(&req.id).is_some() {
        return Err(OpError::conflict(
            "id",
            format!("VPC {} already exists", req.id),
        ));
    }
    let vpc = Vpc {
        id: req.id,
        account: req.account,
        cidr: req.cidr,
        interface: req.interface,
        vswitches: req
            .vswitches
            .into_iter()
            .map(|v| VSwitch {
                id: v.id,
                zone: v.zone,
                cidr: v.cidr,
            })
            .collect(),
        host_traffic: req.host_traffic,
    };
    s.vpcs.push(vpc.clone());
    Ok(vpc)
}

pub fn list_vpcs(s: &State, c: &Caller) -> Vec<Vpc> {
    s.vpcs
        .iter()
        .filter(|v| {
            matches!(c, Caller::Admin) || matches!(c, Caller::Account(id) if *id == v.account)
        })
        .cloned()
        .collect()
}

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
    /// Load balancers (one per zone), or for gwlb services the appliances.
    #[schema(value_type = Vec<Object>)]
    pub backends: Vec<Backend>,
    /// SNAT addresses (none for gwlb services).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub snat: Vec<Ipv4Addr>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<[u16; 2]>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Gateway services: the prefix list.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub prefixes: Vec<Ipv4Net>,
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

/// The caller's own object `what` `id` (the request's `field`): another account's is
/// forbidden, a missing one not found.
fn mine<T>(l: Lookup<T>, what: &str, field: &str, id: &str) -> R<T> {
    match l {
        Lookup::Mine(x) => Ok(x),
        Lookup::Foreign(_) => Err(OpError::forbidden(format!(
            "{what} {id} belongs to another account"
        ))),
        Lookup::Missing => Err(OpError::not_found(field, format!("no {what} {id}"))),
    }
}

fn own_vpc<'a>(s: &'a State, account: &str, field: &str, id: &str) -> R<&'a Vpc> {
    mine(lookup(&s.vpcs, account, id), "VPC", field, id)
}

pub fn create_service(s: &mut State, c: &Caller, req: NewService) -> R<EndpointService> {
    let owner = account_of(c)?.to_string();
    own_vpc(s, &owner, "vpc", &req.vpc)?;
    if s.service(&req.id).is_some() {
        return Err(OpError::conflict(
            "id",
            format!("service {} already exists", req.id),
        ));
    }
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
        snat_ports: req.snat_ports.unwrap_or(crate::model::DEFAULT_SNAT_PORTS),
        domain: req.domain,
        prefixes: req.prefixes,
        gwlb: req.gwlb,
        listeners: req.listeners,
        endpoint_flow_share: req
            .endpoint_flow_share
            .unwrap_or(crate::model::DEFAULT_ENDPOINT_FLOW_SHARE),
    };
    check_listeners("listeners", &svc.listeners)?;
    svc.require_listeners("listeners")?;
    s.services.push(svc.clone());
    Ok(svc)
}

fn own_service<'a>(s: &'a mut State, c: &Caller, id: &str) -> R<&'a mut EndpointService> {
    let owner = account_of(c)?;
    mine(lookup(&mut s.services, owner, id), "service", "service", id)
}

pub fn list_services(s: &State, c: &Caller) -> Vec<EndpointService> {
    s.services
        .iter()
        .filter(|x| {
            matches!(c, Caller::Admin) || matches!(c, Caller::Account(id) if *id == x.account)
        })
        .cloned()
        .collect()
}

pub fn get_service(s: &State, c: &Caller, id: &str) -> R<EndpointService> {
    match c {
        Caller::Admin => s
            .service(id)
            .cloned()
            .ok_or_else(|| OpError::not_found("service", format!("no service {id}"))),
        Caller::Account(a) => {
            mine(lookup(&s.services, a, id), "service", "service", id).map(Clone::clone)
        }
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
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
}

pub fn update_service(s: &mut State, c: &Caller, id: &str, p: ServicePatch) -> R<EndpointService> {
    let svc = own_service(s, c, id)?;
    if let Some(v) = p.auto_accept {
        svc.auto_accept = v;
    }
    if let Some(v) = p.zone_affinity {
        svc.zone_affinity = v;
    }
    if let Some(v) = p.backends {
        svc.backends = v;
    }
    if let Some(v) = p.domain {
        svc.domain = Some(v);
    }
    if let Some(v) = p.gwlb {
        svc.gwlb = Some(v);
    }
    if let Some(v) = p.endpoint_flow_share {
        svc.endpoint_flow_share = v;
    }
    if let Some(v) = p.listeners {
        check_listeners("listeners", &v)?;
        svc.listeners = v;
        svc.require_listeners("listeners")?;
    }
    Ok(svc.clone())
}

pub fn delete_service(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own_service(s, c, id)?;
    let users: Vec<&str> = s
        .endpoints
        .iter()
        .filter(|e| e.service == id)
        .map(|e| e.id.as_str())
        .collect();
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
    /// One ENI per zone: `{vswitch, eni?}`; without `eni` the daemon allocates the
    /// vSwitch's lowest free address.
    #[serde(default)]
    pub zones: Vec<NewZone>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Gateway endpoints: the route target address in the VPC.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Gateway endpoints: allowed destinations, in order.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub policy: Vec<AclRule>,
    /// GWLB endpoints: the destination prefixes the VPC routes to the endpoint.
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["10.10.3.0/24"]))]
    pub routes: Vec<Ipv4Net>,
}

pub fn create_endpoint(s: &mut State, c: &Caller, req: NewEndpoint) -> R<Endpoint> {
    let owner = account_of(c)?.to_string();
    own_vpc(s, &owner, "vpc", &req.vpc)?;
    if s.endpoint(&req.id).is_some() {
        return Err(OpError::conflict(
            "id",
            format!("endpoint {} already exists", req.id),
        ));
    }
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
    let zones = place_zones(s, &req.vpc, svc, &[], req.zones, "zones")?;
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
        security_groups: req.security_groups,
        tags: req.tags,
        gateway: req.gateway,
        policy: req.policy,
        routes: req.routes,
    };
    s.endpoints.push(ep.clone());
    Ok(ep)
}

fn own_endpoint<'a>(s: &'a mut State, c: &Caller, id: &str) -> R<&'a mut Endpoint> {
    let owner = account_of(c)?;
    mine(
        lookup(&mut s.endpoints, owner, id),
        "endpoint",
        "endpoint",
        id,
    )
}

pub fn list_endpoints(s: &State, c: &Caller) -> Vec<Endpoint> {
    s.endpoints
        .iter()
        .filter(|x| {
            matches!(c, Caller::Admin) || matches!(c, Caller::Account(id) if *id == x.account)
        })
        .cloned()
        .collect()
}

pub fn get_endpoint(s: &mut State, c: &Caller, id: &str) -> R<Endpoint> {
    if matches!(c, Caller::Admin) {
        return s
            .endpoint(id)
            .cloned()
            .ok_or_else(|| OpError::not_found("endpoint", format!("no endpoint {id}")));
    }
    own_endpoint(s, c, id).map(|e| e.clone())
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
    pub routes: Option<Vec<Ipv4Net>>,
}

pub fn update_endpoint(s: &mut State, c: &Caller, id: &str, p: EndpointPatch) -> R<Endpoint> {
    let zones = match p.zones {
        Some(v) => Some(patched_zones(s, c, id, v)?),
        None => None,
    };
    let ep = own_endpoint(s, c, id)?;
    check_endpoint_limits(
        "",
        p.security_groups.as_ref().unwrap_or(&ep.security_groups),
        p.tags.as_ref().unwrap_or(&ep.tags),
    )?;
    if let Some(v) = p.name {
        ep.name = v;
    }
    if let Some(v) = p.description {
        ep.description = v;
    }
    if let Some(v) = zones {
        ep.zones = v;
    }
    if let Some(v) = p.security_groups {
        ep.security_groups = v;
    }
    if let Some(v) = p.tags {
        ep.tags = v;
    }
    if let Some(v) = p.routes {
        ep.routes = v;
    }
    Ok(ep.clone())
}

pub fn delete_endpoint(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own_endpoint(s, c, id)?;
    s.endpoints.retain(|e| e.id != id);
    Ok(())
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
}

/// The ENIs of `req` for an endpoint in `vpc` of service `svc` that has the ENIs
/// `existing`. A zone in `existing` given again (same vSwitch, same or no address) is kept
/// as it is; every other one is new and must be in a zone the service serves, must not ask
/// for a system-reserved address, and gets the vSwitch's lowest free address if it asks
/// for none. Whether an address is inside its vSwitch, taken, or the zone's second ENI is
/// left to `State::validate`, like every rule stored state must keep.
fn place_zones(
    s: &State,
    vpc: &str,
    svc: &EndpointService,
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
    let mut used = s.used_addresses(vpc);
    let mut out = Vec::with_capacity(req.len());
    for (i, z) in req.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(kept) = existing
            .iter()
            .find(|e| e.vswitch == z.vswitch && z.eni.is_none_or(|a| a == e.eni))
        {
            out.push(kept.clone());
            continue;
        }
        out.push(place_zone(v, svc, &mut used, z, &f)?);
    }
    Ok(out)
}

/// One new ENI (see `place_zones`); `used` gains its address.
fn place_zone(
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
    })
}

/// The zones a PATCH of endpoint `id` asks for, placed as `place_zones` does.
fn patched_zones(s: &mut State, c: &Caller, id: &str, req: Vec<NewZone>) -> R<Vec<EndpointZone>> {
    let ep = own_endpoint(s, c, id)?.clone();
    let svc = service_of(s, &ep)?;
    place_zones(s, &ep.vpc, svc, &ep.zones, req, "zones")
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
    let mut used = s.used_addresses(&ep.vpc);
    // The body is one zone: its fields are named without a list index.
    let zone = place_zone(vpc, svc, &mut used, z, "").map_err(|mut e| {
        e.field = e.field.map(|f| f.trim_start_matches('.').to_string());
        e
    })?;
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
    pub prefixes: Vec<Ipv4Net>,
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

/// What a provider does to a connection (an endpoint of its service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionAction {
    Accept,
    Reject,
    Disable,
    Enable,
}

/// A connection as the provider sees it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub endpoint: String,
    pub account: String,
    pub service: String,
    #[schema(value_type = String)]
    pub state: Connection,
    #[schema(value_type = Vec<String>)]
    pub enis: Vec<Ipv4Addr>,
}

pub fn list_connections(s: &mut State, c: &Caller, service: &str) -> R<Vec<ConnectionView>> {
    own_service(s, c, service)?;
    Ok(s.endpoints
        .iter()
        .filter(|e| e.service == service)
        .map(|e| ConnectionView {
            endpoint: e.id.clone(),
            account: e.account.clone(),
            service: e.service.clone(),
            state: e.connection,
            enis: e.zones.iter().map(|z| z.eni).collect(),
        })
        .collect())
}

/// Pending → Connected (accept) / Rejected (reject); Connected → Disconnected (disable);
/// Disconnected → Connected (enable). Anything else is a conflict.
pub fn connection_action(
    s: &mut State,
    c: &Caller,
    service: &str,
    endpoint: &str,
    a: ConnectionAction,
) -> R<ConnectionView> {
    own_service(s, c, service)?;
    let ep = s
        .endpoints
        .iter_mut()
        .find(|e| e.id == endpoint && e.service == service)
        .ok_or_else(|| {
            OpError::not_found(
                "endpoint",
                format!("no connection from endpoint {endpoint} to {service}"),
            )
        })?;
    use Connection::*;
    let next = match (ep.connection, a) {
        (Pending, ConnectionAction::Accept) | (Rejected, ConnectionAction::Accept) => Connected,
        (Pending, ConnectionAction::Reject) | (Connected, ConnectionAction::Reject) => Rejected,
        (Connected, ConnectionAction::Disable) => Disconnected,
        (Disconnected, ConnectionAction::Enable) => Connected,
        (state, a) => {
            return Err(OpError::conflict(
                "state",
                format!("cannot {a:?} a connection that is {state:?}").to_lowercase(),
            ));
        }
    };
    ep.connection = next;
    Ok(ConnectionView {
        endpoint: ep.id.clone(),
        account: ep.account.clone(),
        service: ep.service.clone(),
        state: ep.connection,
        enis: ep.zones.iter().map(|z| z.eni).collect(),
    })
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecurityGroup {
    pub id: String,
    pub vpc: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<SgRule>,
}

fn own_group<'a>(s: &'a mut State, c: &Caller, id: &str) -> R<&'a mut SecurityGroup> {
    let owner = account_of(c)?;
    mine(
        lookup(&mut s.security_groups, owner, id),
        "security group",
        "security_group",
        id,
    )
}

fn next_rule_id(g: &mut SecurityGroup) -> String {
    let used = g
        .rules
        .iter()
        .filter_map(|r| r.id.strip_prefix('r')?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    g.last_rule = g.last_rule.max(used) + 1;
    format!("r{}", g.last_rule)
}

pub fn create_security_group(s: &mut State, c: &Caller, req: NewSecurityGroup) -> R<SecurityGroup> {
    let owner = account_of(c)?.to_string();
    own_vpc(s, &owner, "vpc", &req.vpc)?;
    if s.security_groups.iter().any(|g| g.id == req.id) {
        return Err(OpError::conflict(
            "id",
            format!("security group {} already exists", req.id),
        ));
    }
    let mut g = SecurityGroup {
        id: req.id,
        account: owner,
        vpc: req.vpc,
        name: req.name,
        rules: Vec::new(),
        last_rule: 0,
    };
    for mut r in req.rules {
        r.id = next_rule_id(&mut g);
        g.rules.push(r);
    }
    s.security_groups.push(g.clone());
    Ok(g)
}

pub fn list_security_groups(s: &State, c: &Caller) -> Vec<SecurityGroup> {
    s.security_groups
        .iter()
        .filter(|x| {
            matches!(c, Caller::Admin) || matches!(c, Caller::Account(id) if *id == x.account)
        })
        .cloned()
        .collect()
}

pub fn delete_security_group(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own_group(s, c, id)?;
    let users: Vec<&str> = s
        .endpoints
        .iter()
        .filter(|e| e.security_groups.iter().any(|g| g == id))
        .map(|e| e.id.as_str())
        .collect();
    if !users.is_empty() {
        return Err(OpError::conflict(
            "security_group",
            format!("{id} is attached to {}", users.join(", ")),
        ));
    }
    s.security_groups.retain(|g| g.id != id);
    Ok(())
}

pub fn add_sg_rule(s: &mut State, c: &Caller, id: &str, mut rule: SgRule) -> R<SgRule> {
    let g = own_group(s, c, id)?;
    rule.id = next_rule_id(g);
    g.rules.push(rule.clone());
    Ok(rule)
}

pub fn remove_sg_rule(s: &mut State, c: &Caller, id: &str, rule: &str) -> R<()> {
    let g = own_group(s, c, id)?;
    let before = g.rules.len();
    g.rules.retain(|r| r.id != rule);
    if g.rules.len() == before {
        return Err(OpError::not_found(
            "rule",
            format!("security group {id} has no rule {rule}"),
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAcl {
    pub id: String,
    pub vpc: String,
    pub vswitches: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub ingress: Vec<AclRule>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub egress: Vec<AclRule>,
}

pub fn create_acl(s: &mut State, c: &Caller, req: NewAcl) -> R<NetworkAcl> {
    let owner = account_of(c)?.to_string();
    own_vpc(s, &owner, "vpc", &req.vpc)?;
    if s.acls.iter().any(|a| a.id == req.id) {
        return Err(OpError::conflict(
            "id",
            format!("ACL {} already exists", req.id),
        ));
    }
    let acl = NetworkAcl {
        id: req.id,
        account: owner,
        vpc: req.vpc,
        vswitches: req.vswitches,
        ingress: req.ingress,
        egress: req.egress,
    };
    s.acls.push(acl.clone());
    Ok(acl)
}

pub fn list_acls(s: &State, c: &Caller) -> Vec<NetworkAcl> {
    s.acls
        .iter()
        .filter(|x| {
            matches!(c, Caller::Admin) || matches!(c, Caller::Account(id) if *id == x.account)
        })
        .cloned()
        .collect()
}

pub fn delete_acl(s: &mut State, c: &Caller, id: &str) -> R<()> {
    let owner = account_of(c)?;
    mine(lookup(&s.acls, owner, id), "ACL", "acl", id)?;
    s.acls.retain(|a| a.id != id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GWLB_TEST_STATE;

    const LAB: &str = include_str!("../../tests/lab.toml");

    fn gwlb_state() -> State {
        crate::model::parse_state(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap()
    }

    #[test]
    fn appliances_show_the_health_view_to_the_owner() {
        let s = gwlb_state();
        let down: Unhealthy = [(numeric_id("vpc-s"), [10, 20, 1, 10])].into();
        let owner = Caller::Account("acct-b".into());
        let v = list_appliances(&s, &owner, "gwlb-s", &down).unwrap();
        assert_eq!(v.len(), 3);
        let healthy: Vec<(String, bool)> = v
            .iter()
            .map(|a| (a.address.to_string(), a.healthy))
            .collect();
        assert_eq!(
            healthy,
            [
                ("10.20.1.11".to_string(), true),
                ("10.20.1.10".to_string(), false),
                ("10.20.2.10".to_string(), true)
            ]
        );
        assert_eq!(v[2].zone, "zone-b");
        assert!(list_appliances(&s, &Caller::Admin, "gwlb-s", &down).is_ok());
        let e = list_appliances(&s, &Caller::Account("acct-a".into()), "gwlb-s", &down);
        assert_eq!(e.unwrap_err().kind, ErrorKind::Forbidden);
        let e = list_appliances(&s, &owner, "nope", &down).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = list_appliances(&s, &owner, "epsrv-b", &down).unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::Invalid, Some("service"))
        );
    }

    #[test]
    fn gwlb_services_and_endpoints_are_created_from_requests() {
        let mut s: State = toml::from_str(LAB).unwrap();
        let mut with_vpcs: State = toml::from_str(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap();
        with_vpcs.services.retain(|x| x.id != "gwlb-s");
        with_vpcs.endpoints.retain(|e| e.routes.is_empty());
        s.vpcs = with_vpcs.vpcs;
        let req: NewService = serde_json::from_value(serde_json::json!({
            "id": "gwlb-s", "vpc": "vpc-s", "type": "gwlb", "whitelist": ["acct-a"],
            "backends": [{"zone": "zone-a", "address": "10.20.1.10"}],
            "gwlb": {"address": "10.20.0.5", "stickiness": "two_tuple", "failover": "rebalance",
                     "health": {"port": 8080, "probe": {"kind": "http", "path": "/healthz"}}},
        }))
        .unwrap();
        let svc = create_service(&mut s, &Caller::Account("acct-b".into()), req).unwrap();
        assert!(svc.snat.is_empty());
        assert_eq!(svc.gwlb.as_ref().unwrap().health.port, 8080);
        let req: NewEndpoint = serde_json::from_value(serde_json::json!({
            "id": "ep-g", "vpc": "vpc-c", "service": "gwlb-s",
            "zones": [{"vswitch": "vsw-c1", "eni": "10.30.1.5"}], "routes": ["10.30.9.0/24"],
        }))
        .unwrap();
        let ep = create_endpoint(&mut s, &Caller::Account("acct-a".into()), req).unwrap();
        assert_eq!(ep.routes, vec!["10.30.9.0/24".parse::<Ipv4Net>().unwrap()]);
        s.validate().unwrap();
        let p: EndpointPatch =
            serde_json::from_value(serde_json::json!({"routes": ["10.30.8.0/24"]})).unwrap();
        let ep = update_endpoint(&mut s, &Caller::Account("acct-a".into()), "ep-g", p).unwrap();
        assert_eq!(ep.routes, vec!["10.30.8.0/24".parse::<Ipv4Net>().unwrap()]);
        s.validate().unwrap();
    }
}
