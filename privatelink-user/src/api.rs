//! The HTTP JSON API: authentication, then an operation of `ops`, then validation, the
//! durable commit, and the data path — in that order, under one lock, so a response means
//! the change is stored and in the maps, and a refused request changes nothing.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Path},
    http::{HeaderMap, StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use utoipa::OpenApi;

pub use crate::apply::{App, Apply};
use crate::{
    error::{ErrorKind, OpError},
    model::{
        Endpoint, EndpointService, Naming, NetworkAcl, SecurityGroup, ServiceType, SgRule, State,
        Vpc,
    },
    ops::{self, Caller},
};

pub type Shared = Arc<Mutex<App>>;

/// The HTTP status of each kind of refused operation.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid | ErrorKind::MalformedJson => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden | ErrorKind::NotWhitelisted => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        (
            status_of(self.kind),
            Json(serde_json::json!({ "error": self })),
        )
            .into_response()
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Parses a JSON body; errors name the field (`zones[0].eni: invalid IP address syntax`).
fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, OpError> {
    let de = &mut serde_json::Deserializer::from_slice(b);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        if inner.is_syntax() || inner.is_eof() {
            OpError::malformed_json(field, inner.to_string())
        } else {
            OpError::invalid(field, inner.to_string())
        }
    })
}

async fn read<T>(
    app: &Shared,
    h: &HeaderMap,
    f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let mut g = app.lock().await;
    let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(h))?;
    f(&mut g.state, &caller)
}

/// Runs `f` on a copy of the state; only a copy that validates, can be applied and is
/// committed replaces the running state.
pub async fn mutate<T>(
    app: &Shared,
    h: &HeaderMap,
    f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let mut g = app.lock().await;
    let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(h))?;
    let mut next = g.state.clone();
    let out = f(&mut next, &caller)?;
    next.validate()?;
    g.apply.check(&next)?;
    let App { state, store, .. } = &mut *g;
    if let Err(e) = store.save(state, &next) {
        g.apply.abandon();
        return Err(OpError::internal(format!("storing the change: {e:#}")));
    }
    g.state = next;
    let App {
        state,
        apply,
        dirty,
        ..
    } = &mut *g;
    if let Err(e) = apply.apply(state) {
        // The change is committed; the data path catches up on the next tick.
        *dirty = true;
        tracing::warn!("stored, but the data path refused it (retrying): {e:#}");
    }
    Ok(out)
}

type Res<T> = Result<Json<T>, OpError>;
type Created<T> = Result<(StatusCode, Json<T>), OpError>;
type Deleted = Result<StatusCode, OpError>;

/// What every handler is called with: the app and the request's headers, whose bearer
/// token `read` and `mutate` authenticate under the lock (after the handler has parsed
/// its path and body: a malformed request is refused as such before its token is looked
/// at).
struct Call {
    app: Shared,
    h: HeaderMap,
}

impl FromRequestParts<Shared> for Call {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Self, Infallible> {
        Ok(Call {
            app: app.clone(),
            h: parts.headers.clone(),
        })
    }
}

impl Call {
    /// An authenticated read, answered 200 with its JSON.
    async fn read<T>(&self, f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError>) -> Res<T> {
        read(&self.app, &self.h, f).await.map(Json)
    }

    /// An authenticated change, answered 200 with its JSON.
    async fn change<T>(&self, f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError>) -> Res<T> {
        mutate(&self.app, &self.h, f).await.map(Json)
    }

    /// An authenticated creation, answered 201 with its JSON.
    async fn create<T>(
        &self,
        f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError>,
    ) -> Created<T> {
        let v = mutate(&self.app, &self.h, f).await?;
        Ok((StatusCode::CREATED, Json(v)))
    }

    /// The names the daemon gives (fixed while it runs).
    async fn naming(&self) -> Naming {
        self.app.lock().await.naming.clone()
    }

    /// An authenticated deletion, answered 204.
    async fn delete(&self, f: impl FnOnce(&mut State, &Caller) -> Result<(), OpError>) -> Deleted {
        mutate(&self.app, &self.h, f).await?;
        Ok(StatusCode::NO_CONTENT)
    }
}

/// A service as the API shows it: the stored service and, for interface services, its
/// default domain name (computed from the running naming, not stored). It has no address
/// records: the service's endpoints live in many VPCs. A VPC without an endpoint reaches
/// the custom domain by a CNAME to an endpoint's domain name (see the README).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub service: EndpointService,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "epsrv-b.region-1.privatelink.internal")]
    pub default_domain: Option<String>,
}

impl ServiceView {
    pub fn new(naming: &Naming, service: EndpointService) -> Self {
        Self {
            default_domain: (service.kind == ServiceType::Interface)
                .then(|| naming.service(&service.id)),
            service,
        }
    }
}

/// A service as a consumer that may use it sees it, with its default domain name (see
/// `ServiceView`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct AvailableServiceView {
    #[serde(flatten)]
    pub service: ops::AvailableService,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "epsrv-b.region-1.privatelink.internal")]
    pub default_domain: Option<String>,
}

impl AvailableServiceView {
    fn new(naming: &Naming, service: ops::AvailableService) -> Self {
        Self {
            default_domain: (service.r#type == ServiceType::Interface)
                .then(|| naming.service(&service.id)),
            service,
        }
    }
}

/// An endpoint as the API shows it: the stored endpoint, its zones with their zone and
/// zone domain name, its endpoint domain name, and the custom service domain it resolves
/// in its VPC. The names are computed from the running naming, never stored; only
/// interface endpoints have them (GWLB endpoints are routed to, gateway endpoints have no
/// ENI).
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// The stored endpoint's other fields, as `GET /v1/endpoints` always gave them.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub endpoint: Map<String, Value>,
    pub zones: Vec<ZoneView>,
    /// The endpoint domain name: every healthy zone's ENI address (with zone affinity, a
    /// client in a zone with a healthy ENI gets only that zone's).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "ep-a.epsrv-b.region-1.privatelink.internal")]
    pub domain: Option<String>,
    /// The service's custom domain name, when the endpoint enables it and it is verified:
    /// it resolves in the endpoint's VPC to the endpoint's ENIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "epsrv-b.privatelink.example")]
    pub service_domain_name: Option<String>,
}

/// One ENI of an endpoint, with its zone and its zone domain name (that ENI's address
/// only).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ZoneView {
    pub vswitch: String,
    #[schema(value_type = String, example = "10.10.1.100")]
    pub eni: std::net::Ipv4Addr,
    /// The vSwitch's zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "zone-a.ep-a.epsrv-b.region-1.privatelink.internal")]
    pub domain: Option<String>,
}

impl EndpointView {
    /// Endpoint `e` of state `s` with the names `naming` gives it.
    pub fn new(s: &State, naming: &Naming, e: Endpoint) -> Self {
        let svc = s.service(&e.service);
        let named = svc.is_some_and(|x| x.kind == ServiceType::Interface);
        let vpc = s.vpc(&e.vpc);
        let zones = e
            .zones
            .iter()
            .map(|z| {
                let zone = vpc
                    .and_then(|v| v.vswitches.iter().find(|w| w.id == z.vswitch))
                    .map(|w| w.zone.clone());
                ZoneView {
                    vswitch: z.vswitch.clone(),
                    eni: z.eni,
                    domain: zone
                        .as_deref()
                        .filter(|_| named)
                        .map(|zone| naming.zone(zone, &e.id, &e.service)),
                    zone,
                }
            })
            .collect();
        let service_domain_name = svc
            .filter(|x| e.service_domain && x.domain_verified)
            .and_then(|x| x.domain.clone());
        let domain = named.then(|| naming.endpoint(&e.id, &e.service));
        let mut endpoint = match serde_json::to_value(e) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        endpoint.remove("zones");
        Self {
            endpoint,
            zones,
            domain,
            service_domain_name,
        }
    }
}

fn new_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[utoipa::path(post, path = "/v1/accounts", request_body = ops::NewAccount,
    responses((status = 201, body = ops::CreatedAccount), (status = 403, body = OpError)))]
async fn create_account(call: Call, b: Bytes) -> Created<ops::CreatedAccount> {
    let req = body(&b)?;
    let token = new_token();
    call.create(|s, c| ops::create_account(s, c, req, token))
        .await
}

#[utoipa::path(get, path = "/v1/accounts", responses((status = 200, body = Vec<ops::AccountView>)))]
async fn list_accounts(call: Call) -> Res<Vec<ops::AccountView>> {
    call.read(|s, c| Ok(ops::list_accounts(s, c))).await
}

#[utoipa::path(post, path = "/v1/vpcs", request_body = ops::NewVpc,
    responses((status = 201, body = Object), (status = 400, body = OpError)))]
async fn create_vpc(call: Call, b: Bytes) -> Created<Vpc> {
    let req = body(&b)?;
    call.create(|s, c| ops::create_vpc(s, c, req)).await
}

#[utoipa::path(get, path = "/v1/vpcs", responses((status = 200, body = Vec<Object>)))]
async fn list_vpcs(call: Call) -> Res<Vec<Vpc>> {
    call.read(|s, c| Ok(ops::list_vpcs(s, c))).await
}

#[utoipa::path(get, path = "/v1/vpcs/{id}", responses((status = 200, body = Object), (status = 404, body = OpError)))]
async fn get_vpc(call: Call, Path(id): Path<String>) -> Res<Vpc> {
    call.read(|s, c| ops::get_vpc(s, c, &id)).await
}

#[utoipa::path(patch, path = "/v1/vpcs/{id}", request_body = ops::VpcPatch,
    responses((status = 200, body = Object), (status = 400, body = OpError), (status = 403, body = OpError)))]
async fn update_vpc(call: Call, Path(id): Path<String>, b: Bytes) -> Res<Vpc> {
    let p = body(&b)?;
    call.change(|s, c| ops::update_vpc(s, c, &id, p)).await
}

#[utoipa::path(post, path = "/v1/services", request_body = ops::NewService,
    responses((status = 201, body = ServiceView), (status = 400, body = OpError)))]
async fn create_service(call: Call, b: Bytes) -> Created<ServiceView> {
    let req = body(&b)?;
    let n = call.naming().await;
    call.create(|s, c| ops::create_service(s, c, req, &n).map(|x| ServiceView::new(&n, x)))
        .await
}

#[utoipa::path(get, path = "/v1/services", responses((status = 200, body = Vec<ServiceView>)))]
async fn list_services(call: Call) -> Res<Vec<ServiceView>> {
    let n = call.naming().await;
    call.read(|s, c| {
        Ok(ops::list_services(s, c)
            .into_iter()
            .map(|x| ServiceView::new(&n, x))
            .collect())
    })
    .await
}

#[utoipa::path(get, path = "/v1/services/{id}", responses((status = 200, body = ServiceView), (status = 404, body = OpError)))]
async fn get_service(call: Call, Path(id): Path<String>) -> Res<ServiceView> {
    let n = call.naming().await;
    call.read(|s, c| ops::get_service(s, c, &id).map(|x| ServiceView::new(&n, x)))
        .await
}

#[utoipa::path(patch, path = "/v1/services/{id}", request_body = ops::ServicePatch,
    responses((status = 200, body = ServiceView), (status = 400, body = OpError), (status = 409, body = OpError)))]
async fn update_service(call: Call, Path(id): Path<String>, b: Bytes) -> Res<ServiceView> {
    let p = body(&b)?;
    let n = call.naming().await;
    call.change(|s, c| ops::update_service(s, c, &id, p, &n).map(|x| ServiceView::new(&n, x)))
        .await
}

/// The operator has verified that the service's provider owns its custom domain.
#[utoipa::path(post, path = "/v1/services/{id}/domain/verify",
    responses((status = 200, body = ServiceView), (status = 403, body = OpError), (status = 404, body = OpError), (status = 409, body = OpError)))]
async fn verify_domain(call: Call, Path(id): Path<String>) -> Res<ServiceView> {
    let n = call.naming().await;
    call.change(|s, c| ops::verify_domain(s, c, &id).map(|x| ServiceView::new(&n, x)))
        .await
}

#[utoipa::path(delete, path = "/v1/services/{id}", responses((status = 204), (status = 409, body = OpError)))]
async fn delete_service(call: Call, Path(id): Path<String>) -> Deleted {
    call.delete(|s, c| ops::delete_service(s, c, &id)).await
}

#[utoipa::path(get, path = "/v1/services/{id}/whitelist", responses((status = 200, body = Vec<String>)))]
async fn get_whitelist(call: Call, Path(id): Path<String>) -> Res<Vec<String>> {
    call.read(|s, c| ops::get_service(s, c, &id).map(|x| x.whitelist))
        .await
}

#[utoipa::path(put, path = "/v1/services/{id}/whitelist/{account}", responses((status = 200, body = Vec<String>)))]
async fn whitelist_add(
    call: Call,
    Path((id, account)): Path<(String, String)>,
) -> Res<Vec<String>> {
    call.change(|s, c| ops::whitelist_add(s, c, &id, &account))
        .await
}

#[utoipa::path(delete, path = "/v1/services/{id}/whitelist/{account}", responses((status = 200, body = Vec<String>)))]
async fn whitelist_remove(
    call: Call,
    Path((id, account)): Path<(String, String)>,
) -> Res<Vec<String>> {
    call.change(|s, c| ops::whitelist_remove(s, c, &id, &account))
        .await
}

#[utoipa::path(get, path = "/v1/services/{id}/connections", responses((status = 200, body = Vec<ops::ConnectionView>)))]
async fn list_connections(call: Call, Path(id): Path<String>) -> Res<Vec<ops::ConnectionView>> {
    call.read(|s, c| ops::list_connections(s, c, &id)).await
}

#[utoipa::path(post, path = "/v1/services/{id}/connections/{endpoint}/{action}",
    responses((status = 200, body = ops::ConnectionView), (status = 409, body = OpError)))]
async fn connection_action(
    call: Call,
    Path((id, endpoint, action)): Path<(String, String, String)>,
) -> Res<ops::ConnectionView> {
    let a: ops::ConnectionAction =
        serde_json::from_value(serde_json::Value::String(action.clone())).map_err(|_| {
            OpError::invalid(
                "action",
                format!("{action:?} is not one of accept, reject, disable, enable"),
            )
        })?;
    call.change(|s, c| ops::connection_action(s, c, &id, &endpoint, a))
        .await
}

#[utoipa::path(get, path = "/v1/services/{id}/appliances",
    responses((status = 200, body = Vec<ops::ApplianceView>), (status = 400, body = OpError), (status = 404, body = OpError)))]
async fn list_appliances(call: Call, Path(id): Path<String>) -> Res<Vec<ops::ApplianceView>> {
    let g = call.app.lock().await;
    let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(&call.h))?;
    ops::list_appliances(&g.state, &caller, &id, &g.apply.unhealthy()).map(Json)
}

/// `op`'s endpoint with the names `n` gives it (see `EndpointView`).
fn named(
    n: &Naming,
    op: impl FnOnce(&mut State, &Caller) -> Result<Endpoint, OpError>,
) -> impl FnOnce(&mut State, &Caller) -> Result<EndpointView, OpError> {
    move |s, c| op(s, c).map(|e| EndpointView::new(s, n, e))
}

#[utoipa::path(post, path = "/v1/endpoints", request_body = ops::NewEndpoint,
    responses((status = 201, body = EndpointView), (status = 403, body = OpError), (status = 409, body = OpError)))]
async fn create_endpoint(call: Call, b: Bytes) -> Created<EndpointView> {
    let req = body(&b)?;
    let n = call.naming().await;
    call.create(named(&n, |s, c| ops::create_endpoint(s, c, req)))
        .await
}

#[utoipa::path(get, path = "/v1/endpoints", responses((status = 200, body = Vec<EndpointView>)))]
async fn list_endpoints(call: Call) -> Res<Vec<EndpointView>> {
    let n = call.naming().await;
    call.read(|s, c| {
        Ok(ops::list_endpoints(s, c)
            .into_iter()
            .map(|e| EndpointView::new(s, &n, e))
            .collect())
    })
    .await
}

#[utoipa::path(get, path = "/v1/endpoints/{id}", responses((status = 200, body = EndpointView), (status = 404, body = OpError)))]
async fn get_endpoint(call: Call, Path(id): Path<String>) -> Res<EndpointView> {
    let n = call.naming().await;
    call.read(named(&n, |s, c| ops::get_endpoint(s, c, &id)))
        .await
}

#[utoipa::path(patch, path = "/v1/endpoints/{id}", request_body = ops::EndpointPatch,
    responses((status = 200, body = EndpointView), (status = 400, body = OpError), (status = 409, body = OpError)))]
async fn update_endpoint(call: Call, Path(id): Path<String>, b: Bytes) -> Res<EndpointView> {
    let p = body(&b)?;
    let n = call.naming().await;
    call.change(named(&n, |s, c| ops::update_endpoint(s, c, &id, p)))
        .await
}

#[utoipa::path(delete, path = "/v1/endpoints/{id}", responses((status = 204), (status = 404, body = OpError)))]
async fn delete_endpoint(call: Call, Path(id): Path<String>) -> Deleted {
    call.delete(|s, c| ops::delete_endpoint(s, c, &id)).await
}

#[utoipa::path(post, path = "/v1/endpoints/{id}/zones", request_body = ops::NewZone,
    responses((status = 201, body = EndpointView), (status = 400, body = OpError), (status = 409, body = OpError)))]
async fn add_zone(call: Call, Path(id): Path<String>, b: Bytes) -> Created<EndpointView> {
    let z = body(&b)?;
    let n = call.naming().await;
    call.create(named(&n, |s, c| ops::add_zone(s, c, &id, z)))
        .await
}

#[utoipa::path(delete, path = "/v1/endpoints/{id}/zones/{vswitch}",
    responses((status = 200, body = EndpointView), (status = 404, body = OpError), (status = 409, body = OpError)))]
async fn remove_zone(call: Call, Path((id, vswitch)): Path<(String, String)>) -> Res<EndpointView> {
    let n = call.naming().await;
    call.change(named(&n, |s, c| ops::remove_zone(s, c, &id, &vswitch)))
        .await
}

#[utoipa::path(get, path = "/v1/available-services",
    responses((status = 200, body = Vec<AvailableServiceView>), (status = 401, body = OpError)))]
async fn list_available_services(call: Call) -> Res<Vec<AvailableServiceView>> {
    let n = call.naming().await;
    call.read(|s, c| {
        Ok(ops::list_available_services(s, c)
            .into_iter()
            .map(|x| AvailableServiceView::new(&n, x))
            .collect())
    })
    .await
}

#[utoipa::path(get, path = "/v1/available-services/{id}",
    responses((status = 200, body = AvailableServiceView), (status = 404, body = OpError)))]
async fn get_available_service(call: Call, Path(id): Path<String>) -> Res<AvailableServiceView> {
    let n = call.naming().await;
    call.read(|s, c| {
        ops::get_available_service(s, c, &id).map(|x| AvailableServiceView::new(&n, x))
    })
    .await
}

#[utoipa::path(post, path = "/v1/security-groups", request_body = ops::NewSecurityGroup,
    responses((status = 201, body = Object), (status = 400, body = OpError)))]
async fn create_sg(call: Call, b: Bytes) -> Created<SecurityGroup> {
    let req = body(&b)?;
    call.create(|s, c| ops::create_security_group(s, c, req))
        .await
}

#[utoipa::path(get, path = "/v1/security-groups", responses((status = 200, body = Vec<Object>)))]
async fn list_sgs(call: Call) -> Res<Vec<SecurityGroup>> {
    call.read(|s, c| Ok(ops::list_security_groups(s, c))).await
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}", responses((status = 204), (status = 409, body = OpError)))]
async fn delete_sg(call: Call, Path(id): Path<String>) -> Deleted {
    call.delete(|s, c| ops::delete_security_group(s, c, &id))
        .await
}

#[utoipa::path(post, path = "/v1/security-groups/{id}/rules", request_body = Object,
    responses((status = 201, body = Object), (status = 400, body = OpError)))]
async fn add_sg_rule(call: Call, Path(id): Path<String>, b: Bytes) -> Created<SgRule> {
    let rule = body(&b)?;
    call.create(|s, c| ops::add_sg_rule(s, c, &id, rule)).await
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}/rules/{rule}", responses((status = 204), (status = 404, body = OpError)))]
async fn remove_sg_rule(call: Call, Path((id, rule)): Path<(String, String)>) -> Deleted {
    call.delete(|s, c| ops::remove_sg_rule(s, c, &id, &rule))
        .await
}

#[utoipa::path(post, path = "/v1/acls", request_body = ops::NewAcl,
    responses((status = 201, body = Object), (status = 400, body = OpError)))]
async fn create_acl(call: Call, b: Bytes) -> Created<NetworkAcl> {
    let req = body(&b)?;
    call.create(|s, c| ops::create_acl(s, c, req)).await
}

#[utoipa::path(get, path = "/v1/acls", responses((status = 200, body = Vec<Object>)))]
async fn list_acls(call: Call) -> Res<Vec<NetworkAcl>> {
    call.read(|s, c| Ok(ops::list_acls(s, c))).await
}

#[utoipa::path(delete, path = "/v1/acls/{id}", responses((status = 204), (status = 404, body = OpError)))]
async fn delete_acl(call: Call, Path(id): Path<String>) -> Deleted {
    call.delete(|s, c| ops::delete_acl(s, c, &id)).await
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Status {
    pub accounts: usize,
    pub vpcs: usize,
    pub services: usize,
    pub endpoints: usize,
    pub connected: usize,
    /// The health of every checked zone load balancer and GWLB appliance the caller may
    /// see (the operator: all; an account: its own services'), with since when.
    pub health: Vec<crate::monitor::HealthRow>,
}

impl Status {
    /// The caller's view: counts of what it may see, and of the daemon's health report
    /// (`rows`) the rows of the services it may see (every row for the operator).
    pub fn of(s: &State, c: &Caller, rows: Vec<crate::monitor::HealthRow>) -> Status {
        let eps = ops::list_endpoints(s, c);
        let services = ops::list_services(s, c);
        let health = match c {
            Caller::Admin => rows,
            Caller::Account(_) => rows
                .into_iter()
                .filter(|r| services.iter().any(|x| x.id == r.service))
                .collect(),
        };
        Status {
            accounts: ops::list_accounts(s, c).len(),
            vpcs: ops::list_vpcs(s, c).len(),
            services: services.len(),
            connected: eps
                .iter()
                .filter(|e| e.connection == crate::model::Connection::Connected)
                .count(),
            endpoints: eps.len(),
            health,
        }
    }
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)))]
async fn status(call: Call) -> Res<Status> {
    let g = call.app.lock().await;
    let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(&call.h))?;
    Ok(Json(Status::of(&g.state, &caller, g.apply.health())))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "privatelink",
        description = "Endpoint services, endpoints and their connections"
    ),
    paths(
        create_account,
        list_accounts,
        create_vpc,
        list_vpcs,
        get_vpc,
        update_vpc,
        create_service,
        list_services,
        get_service,
        update_service,
        verify_domain,
        delete_service,
        get_whitelist,
        whitelist_add,
        whitelist_remove,
        list_connections,
        connection_action,
        list_appliances,
        create_endpoint,
        list_endpoints,
        get_endpoint,
        update_endpoint,
        delete_endpoint,
        add_zone,
        remove_zone,
        list_available_services,
        get_available_service,
        status,
        create_sg,
        list_sgs,
        delete_sg,
        add_sg_rule,
        remove_sg_rule,
        create_acl,
        list_acls,
        delete_acl
    ),
    components(schemas(OpError))
)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

async fn fallback() -> OpError {
    OpError::not_found("path", "no such API path")
}

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/accounts", post(create_account).get(list_accounts))
        .route("/v1/vpcs", post(create_vpc).get(list_vpcs))
        .route("/v1/vpcs/{id}", get(get_vpc).patch(update_vpc))
        .route("/v1/services", post(create_service).get(list_services))
        .route(
            "/v1/services/{id}",
            get(get_service)
                .patch(update_service)
                .delete(delete_service),
        )
        .route("/v1/services/{id}/domain/verify", post(verify_domain))
        .route("/v1/services/{id}/whitelist", get(get_whitelist))
        .route(
            "/v1/services/{id}/whitelist/{account}",
            put(whitelist_add).delete(whitelist_remove),
        )
        .route("/v1/services/{id}/connections", get(list_connections))
        .route("/v1/services/{id}/appliances", get(list_appliances))
        .route(
            "/v1/services/{id}/connections/{endpoint}/{action}",
            post(connection_action),
        )
        .route("/v1/endpoints", post(create_endpoint).get(list_endpoints))
        .route(
            "/v1/endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/v1/endpoints/{id}/zones", post(add_zone))
        .route(
            "/v1/endpoints/{id}/zones/{vswitch}",
            axum::routing::delete(remove_zone),
        )
        .route("/v1/available-services", get(list_available_services))
        .route("/v1/available-services/{id}", get(get_available_service))
        .route("/v1/security-groups", post(create_sg).get(list_sgs))
        .route("/v1/security-groups/{id}", axum::routing::delete(delete_sg))
        .route("/v1/security-groups/{id}/rules", post(add_sg_rule))
        .route(
            "/v1/security-groups/{id}/rules/{rule}",
            axum::routing::delete(remove_sg_rule),
        )
        .route("/v1/acls", post(create_acl).get(list_acls))
        .route("/v1/acls/{id}", axum::routing::delete(delete_acl))
        .fallback(fallback)
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_the_appliances() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let path = &doc["paths"]["/v1/services/{id}/appliances"]["get"];
        assert!(path.is_object(), "{doc:#}");
        assert!(doc["components"]["schemas"]["ApplianceView"].is_object());
        let new_service = &doc["components"]["schemas"]["NewService"]["properties"];
        assert!(new_service["gwlb"].is_object());
        assert!(doc["components"]["schemas"]["NewEndpoint"]["properties"]["routes"].is_object());
    }

    #[test]
    fn status_shows_each_caller_its_own_services_health() {
        use crate::monitor::{HealthRow, TargetKind};
        let s = crate::model::parse_state(include_str!("../../tests/lab.toml")).unwrap();
        let row = |service: &str, zone: &str, healthy: bool| HealthRow {
            service: service.into(),
            zone: zone.into(),
            address: "10.10.0.10".parse().unwrap(),
            kind: TargetKind::LoadBalancer,
            healthy,
            since: "2026-12-01T21:34:07Z".into(),
        };
        let rows = vec![
            row("epsrv-b", "zone-a", false),
            row("epsrv-b", "zone-b", true),
            row("svc-other", "zone-a", true),
        ];
        let health = |c: &Caller| Status::of(&s, c, rows.clone()).health;
        assert_eq!(health(&Caller::Admin), rows);
        assert_eq!(health(&Caller::Account("acct-b".into())), rows[..2]);
        assert!(health(&Caller::Account("acct-a".into())).is_empty());
        let v = serde_json::to_value(Status::of(
            &s,
            &Caller::Account("acct-b".into()),
            rows.clone(),
        ))
        .unwrap();
        assert_eq!(v["services"], 1);
        assert_eq!(
            v["health"][0],
            serde_json::json!({"service": "epsrv-b", "zone": "zone-a", "address": "10.10.0.10",
                "kind": "load_balancer", "healthy": false, "since": "2026-12-01T21:34:07Z"})
        );
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let row = &doc["components"]["schemas"]["HealthRow"]["properties"];
        for field in ["service", "zone", "address", "kind", "healthy", "since"] {
            assert!(row[field].is_object(), "HealthRow.{field}: {doc:#}");
        }
    }

    #[test]
    fn the_openapi_document_describes_names_domains_and_vpc_addresses() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, method) in [
            ("/v1/vpcs/{id}", "get"),
            ("/v1/vpcs/{id}", "patch"),
            ("/v1/services/{id}/domain/verify", "post"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{path} {method}");
        }
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("EndpointView", "domain"),
            ("EndpointView", "service_domain_name"),
            ("EndpointView", "zones"),
            ("ZoneView", "domain"),
            ("ServiceView", "default_domain"),
            ("AvailableServiceView", "default_domain"),
            ("NewVpc", "resolver"),
            ("NewVpc", "probe_address"),
            ("VpcPatch", "resolver"),
            ("NewService", "health"),
            ("ServicePatch", "domain"),
            ("ServicePatch", "health"),
            ("NewEndpoint", "zone_affinity"),
            ("NewEndpoint", "service_domain"),
            ("EndpointPatch", "service_domain"),
        ] {
            // A flattened wrapper is an `allOf` of the inner object and its own fields.
            let s = &schemas[schema];
            let parts = s["allOf"].as_array().cloned().unwrap_or_default();
            assert!(
                s["properties"][field].is_object()
                    || parts.iter().any(|p| p["properties"][field].is_object()),
                "{schema}.{field}: {s:#}"
            );
        }
        // `null` clears: the patch's clearable fields say so.
        let resolver = schemas["VpcPatch"]["properties"]["resolver"].to_string();
        assert!(resolver.contains("null"), "{resolver}");
    }

    #[test]
    fn the_openapi_document_describes_discovery_and_zones() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, method) in [
            ("/v1/available-services", "get"),
            ("/v1/available-services/{id}", "get"),
            ("/v1/endpoints/{id}/zones", "post"),
            ("/v1/endpoints/{id}/zones/{vswitch}", "delete"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{path} {method}");
        }
        let schemas = &doc["components"]["schemas"];
        let available = &schemas["AvailableService"]["properties"];
        for field in [
            "id",
            "type",
            "zones",
            "domain",
            "auto_accept",
            "zone_affinity",
        ] {
            assert!(available[field].is_object(), "AvailableService.{field}");
        }
        assert!(available["whitelist"].is_null() && available["account"].is_null());
        assert!(schemas["NewZone"]["properties"]["eni"].is_object());
        assert!(
            !schemas["NewZone"]["required"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("eni")),
            "the ENI's address is optional"
        );
    }
}
