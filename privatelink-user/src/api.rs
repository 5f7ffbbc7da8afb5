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
        Endpoint, EndpointService, Naming, NetworkAcl, Notification, SecurityGroup, ServiceType,
        SgRule, State, Vpc,
    },
    ops::{self, Caller},
    store::{StoreError, store_error},
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
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
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

/// How many times a change is made again on a newer state after another daemon of the
/// fleet committed first (a shared store only), before the caller is told to retry.
const MAX_COMMIT_ATTEMPTS: usize = 8;

/// How long a daemon waits after its `attempt`-th commit lost to another daemon's: 2 ms,
/// doubling with each attempt up to 128 ms, times a factor between 0.5 and 1.5 drawn from
/// `jitter` (so that two daemons that lost together do not retry together). Under 0.4 s
/// over all `MAX_COMMIT_ATTEMPTS`: 7 pauses, 254 ms of base in all, times at most 1.5.
fn commit_backoff(attempt: usize, jitter: u16) -> std::time::Duration {
    let base_us = 2_000u64 << attempt.saturating_sub(1).min(6);
    std::time::Duration::from_micros(base_us / 2 + base_us * u64::from(jitter) / 65_536)
}

/// Runs `f` on a copy of the state; only a copy that validates, can be applied and is
/// committed replaces the running state. With a shared store the daemon first catches up
/// with what the fleet committed, and another daemon may still commit in between: the
/// store then refuses the commit, the daemon catches up again and runs `f` again on the
/// new state (so the operation is judged against what is committed, never against a stale
/// copy); `f` is `Clone` for that.
pub async fn mutate<T, F>(app: &Shared, h: &HeaderMap, f: F) -> Result<T, OpError>
where
    F: FnOnce(&mut State, &Caller) -> Result<T, OpError> + Clone,
{
    // A shared store: judged on the state as committed now, not as this daemon last saw
    // it (a change made through another host a moment ago is there; a refusal is never
    // a stale one). The commit marker is read before the daemon's state is held, so an
    // unreachable etcd keeps no reader waiting; nothing for redb.
    let fleet = app.lock().await.fleet.clone();
    let now = match fleet {
        Some(w) => Some(w.revision().await.map_err(|e| unavailable(&e))?),
        None => None,
    };
    let mut g = app.lock().await;
    if now.is_some_and(|r| r != g.store.revision()) {
        match g.store.catch_up().await {
            Ok(Some(s)) => g.adopt(s),
            Ok(None) => {}
            Err(e) => return Err(unavailable(&e)),
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(h))?;
        let mut next = g.state.clone();
        let out = f.clone()(&mut next, &caller)?;
        next.validate()?;
        g.apply.check(&next)?;
        let App { state, store, .. } = &mut *g;
        if let Err(e) = store.save(state, &next).await {
            g.apply.abandon();
            match store_error(&e) {
                Some(StoreError::Conflict) if attempt < MAX_COMMIT_ATTEMPTS => {
                    // Out of the way for a moment, the daemon's lock let go: two daemons
                    // that retried at once would collide again, and one whose client
                    // writes back to back would win every time against one that retried
                    // at once (seen: eight lost in a row).
                    drop(g);
                    let mut r = [0u8; 2];
                    let _ = getrandom::fill(&mut r);
                    tokio::time::sleep(commit_backoff(attempt, u16::from_ne_bytes(r))).await;
                    g = app.lock().await;
                    let App { store, .. } = &mut *g;
                    match store.catch_up().await {
                        Ok(Some(s)) => g.adopt(s),
                        Ok(None) => {}
                        Err(e) => return Err(unavailable(&e)),
                    }
                    continue;
                }
                Some(StoreError::Conflict) => {
                    return Err(OpError::unavailable(format!(
                        "other daemons of the fleet kept committing first ({attempt} attempts): \
                         try again"
                    )));
                }
                // Sent, perhaps committed: the message says the outcome is unknown.
                Some(StoreError::Unavailable(_)) => {
                    return Err(OpError::unavailable(format!("{e:#}")));
                }
                None => return Err(OpError::internal(format!("storing the change: {e:#}"))),
            }
        }
        let before = std::mem::replace(&mut g.state, next);
        // Committed: its connection events are queued (never waited for).
        if let Some(n) = &g.notify {
            n.publish(&before, &g.state);
        }
        let App {
            state,
            apply,
            dirty,
            ..
        } = &mut *g;
        if let Err(e) = crate::metrics::timed_apply(&mut **apply, state) {
            // The change is committed; the data path catches up on the next tick.
            *dirty = true;
            tracing::warn!("stored, but the data path refused it (retrying): {e:#}");
        }
        return Ok(out);
    }
}

/// The 503 of a store that could not be reached before anything was sent to it.
fn unavailable(e: &anyhow::Error) -> OpError {
    OpError::unavailable(format!(
        "nothing was changed: {e:#}; the data path keeps forwarding with the last state \
         it has"
    ))
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
    async fn change<T>(
        &self,
        f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError> + Clone,
    ) -> Res<T> {
        mutate(&self.app, &self.h, f).await.map(Json)
    }

    /// An authenticated creation, answered 201 with its JSON.
    async fn create<T>(
        &self,
        f: impl FnOnce(&mut State, &Caller) -> Result<T, OpError> + Clone,
    ) -> Created<T> {
        let v = mutate(&self.app, &self.h, f).await?;
        Ok((StatusCode::CREATED, Json(v)))
    }

    /// The names the daemon gives (fixed while it runs).
    async fn naming(&self) -> Naming {
        self.app.lock().await.naming.clone()
    }

    /// An authenticated deletion, answered 204.
    async fn delete(
        &self,
        f: impl FnOnce(&mut State, &Caller) -> Result<(), OpError> + Clone,
    ) -> Deleted {
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
    /// A dualstack endpoint's ENI's IPv6 address (the zone domain name answers it in
    /// AAAA).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "fd00:a:0:1::1")]
    pub eni6: Option<std::net::Ipv6Addr>,
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
                    eni6: z.eni6,
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

/// A fresh notification id: `nfn-` and 12 random hex digits.
fn notification_id() -> String {
    format!("nfn-{}", &new_token()[..12])
}

/// Subscribes the service's provider to its connection events (see `crate::notify`).
#[utoipa::path(post, path = "/v1/services/{id}/notifications", request_body = ops::NewNotification,
    responses((status = 201, body = Object), (status = 400, body = OpError), (status = 403, body = OpError),
        (status = 404, body = OpError), (status = 409, body = OpError)))]
async fn add_notification(call: Call, Path(id): Path<String>, b: Bytes) -> Created<Notification> {
    let req = body(&b)?;
    let nid = notification_id();
    call.create(|s, c| ops::add_notification(s, c, &id, nid, req))
        .await
}

#[utoipa::path(get, path = "/v1/services/{id}/notifications",
    responses((status = 200, body = Vec<Object>), (status = 403, body = OpError), (status = 404, body = OpError)))]
async fn list_notifications(call: Call, Path(id): Path<String>) -> Res<Vec<Notification>> {
    call.read(|s, c| ops::list_notifications(s, c, &id)).await
}

#[utoipa::path(delete, path = "/v1/services/{id}/notifications/{nid}",
    responses((status = 204), (status = 403, body = OpError), (status = 404, body = OpError)))]
async fn remove_notification(call: Call, Path((id, nid)): Path<(String, String)>) -> Deleted {
    call.delete(|s, c| ops::remove_notification(s, c, &id, &nid))
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
    op: impl FnOnce(&mut State, &Caller) -> Result<Endpoint, OpError> + Clone,
) -> impl FnOnce(&mut State, &Caller) -> Result<EndpointView, OpError> + Clone {
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

/// Turns on the endpoint's flow logs, or changes their capture window (its owner, or the
/// operator).
#[utoipa::path(put, path = "/v1/endpoints/{id}/flow-log", request_body = crate::model::FlowLog,
    responses((status = 200, body = EndpointView), (status = 400, body = OpError), (status = 403, body = OpError), (status = 404, body = OpError)))]
async fn set_flow_log(call: Call, Path(id): Path<String>, b: Bytes) -> Res<EndpointView> {
    let fl = body(&b)?;
    let n = call.naming().await;
    call.change(named(&n, |s, c| ops::set_flow_log(s, c, &id, fl)))
        .await
}

/// Turns off the endpoint's flow logs (its owner, or the operator).
#[utoipa::path(delete, path = "/v1/endpoints/{id}/flow-log",
    responses((status = 200, body = EndpointView), (status = 403, body = OpError), (status = 404, body = OpError)))]
async fn clear_flow_log(call: Call, Path(id): Path<String>) -> Res<EndpointView> {
    let n = call.naming().await;
    call.change(named(&n, |s, c| ops::clear_flow_log(s, c, &id)))
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

/// `GET /v1/fleet`: the store the daemons share and the hosts registered in it, each
/// under a lease it keeps alive (a host that stops is gone a lease's time later). The
/// operator only. A daemon on redb is a fleet of one: no hosts are listed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FleetView {
    /// The backend (`redb`, or `etcd <endpoints> under <prefix>`).
    pub store: String,
    pub hosts: Vec<crate::store::etcd::Member>,
    /// The SNAT slots held now (`--snat-slots`), by hosts registered or still starting.
    pub slots: Vec<SlotView>,
}

/// A SNAT slot and the host holding it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SlotView {
    pub slot: u32,
    pub host: String,
}

#[utoipa::path(get, path = "/v1/fleet", responses((status = 200, body = FleetView), (status = 403, body = OpError), (status = 503, body = OpError)))]
async fn fleet(call: Call) -> Res<FleetView> {
    let (store, watch) = {
        let g = call.app.lock().await;
        let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(&call.h))?;
        if !matches!(caller, Caller::Admin) {
            return Err(OpError::forbidden(
                "only the operator (admin token) may do this",
            ));
        }
        (g.store.describe(), g.fleet.clone())
    };
    let unavailable =
        |e: anyhow::Error| OpError::unavailable(format!("reading the fleet's hosts: {e:#}"));
    let (hosts, slots) = match watch {
        Some(w) => w.members().await.map_err(unavailable)?,
        None => (Vec::new(), Vec::new()),
    };
    let slots = slots
        .into_iter()
        .map(|(slot, host)| SlotView { slot, host })
        .collect();
    Ok(Json(FleetView {
        store,
        hosts,
        slots,
    }))
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)))]
async fn status(call: Call) -> Res<Status> {
    let g = call.app.lock().await;
    let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(&call.h))?;
    Ok(Json(Status::of(&g.state, &caller, g.apply.health())))
}

/// `GET /v1/overview`: the caller's view of what runs, as `privatelink status` and
/// `privatelink top` show it: its services with their zones' health, the endpoints it
/// sees with their connection state and traffic, the health-checked targets, and the
/// drops of those endpoints by reason. The operator sees everything; an account its own
/// services (with every endpoint connected to them) and its own endpoints.
///
/// Unlike `GET /v1/status` (counts only, cheap enough to poll under load), it reads the
/// data path's per-endpoint counters: one per-CPU slot per endpoint ENI, under the lock.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// Whose view this is: `operator`, or the calling account's id.
    pub caller: String,
    pub services: Vec<ServiceOverview>,
    pub endpoints: Vec<EndpointOverview>,
    /// Every health-checked target of the services in the view, as in `GET /v1/status`.
    pub health: Vec<crate::monitor::HealthRow>,
    /// The drops of the endpoints in the view (the operator: every endpoint's), by reason,
    /// most first.
    pub top_drops: Vec<DropCount>,
}

/// A service in the overview: what it publishes, where, and how its zones fare.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceOverview {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "interface")]
    pub kind: ServiceType,
    /// The provider's account.
    pub account: String,
    #[schema(value_type = Vec<Object>)]
    pub listeners: Vec<crate::model::Listener>,
    pub zones: Vec<ZoneHealth>,
    /// Its endpoints, whatever their connection state.
    pub endpoints: usize,
    /// Of them, the connected ones.
    pub connected: usize,
}

/// One zone of a service: its health-checked targets (load balancers, appliances) and how
/// many of them are healthy.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ZoneHealth {
    pub zone: String,
    /// `healthy` (every target), `degraded` (some), `unhealthy` (none), or `unchecked`
    /// (nothing checks the zone: no probe address, or no TCP listener to probe).
    #[schema(example = "healthy")]
    pub health: String,
    pub targets: usize,
    pub healthy: usize,
}

impl ZoneHealth {
    /// Zone `zone` of service `service`, judged by the health report's `rows`.
    fn of(service: &str, zone: &str, rows: &[crate::monitor::HealthRow]) -> Self {
        let checked: Vec<_> = rows
            .iter()
            .filter(|r| r.service == service && r.zone == zone)
            .collect();
        let healthy = checked.iter().filter(|r| r.healthy).count();
        let health = match (checked.len(), healthy) {
            (0, _) => "unchecked",
            (n, h) if h == n => "healthy",
            (_, 0) => "unhealthy",
            _ => "degraded",
        };
        Self {
            zone: zone.to_string(),
            health: health.to_string(),
            targets: checked.len(),
            healthy,
        }
    }
}

/// An endpoint in the overview: its connection, its ENIs with their traffic, and the
/// totals over them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointOverview {
    pub id: String,
    pub service: String,
    /// The consumer's account.
    pub account: String,
    #[schema(value_type = String, example = "connected")]
    pub connection: crate::model::Connection,
    /// One per ENI (a zone), and one per zone a gateway endpoint's routed traffic was
    /// counted in.
    pub zones: Vec<EniOverview>,
    /// The endpoint's flows in the flow table that have not expired (absent when the data
    /// path cannot say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_flows: Option<u64>,
    /// The sums over its zones.
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// One zone of an endpoint: its ENI (none for a gateway endpoint) and what crossed it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EniOverview {
    pub zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vswitch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.10.1.100")]
    pub eni: Option<std::net::Ipv4Addr>,
    /// A dualstack endpoint's ENI's IPv6 address (its traffic counts with the IPv4
    /// address's).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "fd00:a:0:1::1")]
    pub eni6: Option<std::net::Ipv6Addr>,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// What the data path counted for an endpoint ENI since it was given its counters (the
/// daemon's start, or the ENI's creation): packets and IP bytes each way, flows made,
/// drops by reason (`crate::counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Traffic {
    /// From the consumers, through the ENI, to the service.
    pub to_service_packets: u64,
    pub to_service_bytes: u64,
    /// The service's replies, to the consumers.
    pub to_consumer_packets: u64,
    pub to_consumer_bytes: u64,
    pub new_flows: u64,
    /// Drops by reason (`no_listener`, `not_connected`, ...); reasons never seen left out.
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl Traffic {
    /// Adds `t` (another ENI's counts) to these.
    fn add(&mut self, t: &crate::counters::Totals) {
        self.to_service_packets += t.to_service_packets;
        self.to_service_bytes += t.to_service_bytes;
        self.to_consumer_packets += t.to_consumer_packets;
        self.to_consumer_bytes += t.to_consumer_bytes;
        self.new_flows += t.new_flows;
        for (reason, n) in &t.drops {
            *self.drops.entry(reason.clone()).or_default() += n;
        }
    }
}

/// Packets dropped for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DropCount {
    #[schema(example = "no_listener")]
    pub reason: String,
    pub packets: u64,
}

/// `drops` as a list, most first (ties by name).
fn top_drops(drops: &std::collections::BTreeMap<String, u64>) -> Vec<DropCount> {
    let mut v: Vec<DropCount> = drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| DropCount {
            reason: reason.clone(),
            packets: *n,
        })
        .collect();
    v.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.reason.cmp(&b.reason)));
    v
}

impl Overview {
    /// The caller's view of state `s`, the health report `rows`, the data path's
    /// `counters` and the live flows per endpoint (numeric id; `count_live_flows`), when
    /// known.
    pub fn of(
        s: &State,
        c: &Caller,
        rows: Vec<crate::monitor::HealthRow>,
        counters: &crate::counters::Snapshot,
        live: Option<&std::collections::HashMap<u32, u64>>,
    ) -> Overview {
        let services = ops::list_services(s, c);
        let health: Vec<_> = rows
            .into_iter()
            .filter(|r| services.iter().any(|x| x.id == r.service))
            .collect();
        // Its own endpoints, and those connecting to its services.
        let endpoints: Vec<&Endpoint> = s
            .endpoints
            .iter()
            .filter(|e| c.sees(&e.account) || services.iter().any(|x| x.id == e.service))
            .collect();
        let endpoints: Vec<EndpointOverview> = endpoints
            .into_iter()
            .map(|e| EndpointOverview::of(s, e, counters, live))
            .collect();
        let mut all = Traffic::default();
        for e in &endpoints {
            for (reason, n) in &e.traffic.drops {
                *all.drops.entry(reason.clone()).or_default() += n;
            }
        }
        Overview {
            caller: match c {
                Caller::Admin => "operator".to_string(),
                Caller::Account(a) => a.clone(),
            },
            services: services
                .iter()
                .map(|x| ServiceOverview::of(s, x, &health))
                .collect(),
            endpoints,
            health,
            top_drops: top_drops(&all.drops),
        }
    }
}

impl ServiceOverview {
    fn of(s: &State, x: &EndpointService, rows: &[crate::monitor::HealthRow]) -> Self {
        let mut zones: Vec<&str> = x.backends.iter().map(|b| b.zone.as_str()).collect();
        zones.sort();
        zones.dedup();
        let eps = s.endpoints.iter().filter(|e| e.service == x.id);
        Self {
            id: x.id.clone(),
            kind: x.kind,
            account: x.account.clone(),
            listeners: x.listeners.clone(),
            zones: zones
                .iter()
                .map(|z| ZoneHealth::of(&x.id, z, rows))
                .collect(),
            endpoints: eps.clone().count(),
            connected: eps
                .filter(|e| e.connection == crate::model::Connection::Connected)
                .count(),
        }
    }
}

impl EndpointOverview {
    fn of(
        s: &State,
        e: &Endpoint,
        counters: &crate::counters::Snapshot,
        live: Option<&std::collections::HashMap<u32, u64>>,
    ) -> Self {
        let vpc = s.vpc(&e.vpc);
        let mut zones: Vec<EniOverview> = e
            .zones
            .iter()
            .map(|z| EniOverview {
                zone: vpc
                    .and_then(|v| v.vswitches.iter().find(|w| w.id == z.vswitch))
                    .map(|w| w.zone.clone())
                    .unwrap_or_default(),
                vswitch: Some(z.vswitch.clone()),
                eni: Some(z.eni),
                eni6: z.eni6,
                traffic: Traffic::default(),
            })
            .collect();
        let mut traffic = Traffic::default();
        for k in counters.endpoints.iter().filter(|k| k.endpoint == e.id) {
            traffic.add(&k.counters);
            let at = match zones.iter().position(|z| z.zone == k.zone) {
                Some(i) => i,
                None => {
                    zones.push(EniOverview {
                        zone: k.zone.clone(),
                        vswitch: None,
                        eni: None,
                        eni6: None,
                        traffic: Traffic::default(),
                    });
                    zones.len() - 1
                }
            };
            zones[at].traffic.add(&k.counters);
        }
        Self {
            id: e.id.clone(),
            service: e.service.clone(),
            account: e.account.clone(),
            connection: e.connection,
            zones,
            live_flows: live.map(|l| {
                l.get(&crate::model::numeric_id(&e.id))
                    .copied()
                    .unwrap_or(0)
            }),
            traffic,
        }
    }
}

/// The live flows in a walk of a flow table of either family, by endpoint (numeric id):
/// one per original-direction entry that has not expired, or whose reply entry has not (a
/// flow lives while either direction does, as `privatelink flows` and the data path judge
/// it; `partner` looks the reply entry up). O(entries): the caller walks the table outside
/// the app's lock.
pub fn count_live_flows<E: crate::dataplane::TableEntry>(
    entries: impl IntoIterator<Item = (E::Key, E)>,
    now_ns: u64,
    cfg: &privatelink_common::Config,
    partner: impl Fn(&E::Key) -> Option<E>,
) -> std::collections::HashMap<u32, u64> {
    let mut live = std::collections::HashMap::new();
    for (k, e) in entries {
        if e.direction() != privatelink_common::DIR_ORIGINAL {
            continue;
        }
        if e.live_in(&k, now_ns, cfg, &partner) {
            *live.entry(e.endpoint_id()).or_default() += 1;
        }
    }
    live
}

/// The live flows of the flow tables pinned in `pin_dir` (IPv4's and IPv6's), by endpoint
/// (numeric id): a pass over each table's mapped memory (`count_live_flows`), a tenth of
/// a second for the default tables, so for a blocking task outside the app's lock.
pub fn live_flows_in(
    pin_dir: &std::path::Path,
) -> anyhow::Result<std::collections::HashMap<u32, u64>> {
    use privatelink_common::{FlowEntry, FlowEntry6};

    use crate::dataplane::TableEntry;
    let cfg = crate::dataplane::read_config(pin_dir)?;
    let mut live = live_flows_of::<FlowEntry>(pin_dir, &cfg)?;
    // No IPv6 table pinned (a daemon from before dual stack): no IPv6 flows.
    if pin_dir.join(FlowEntry6::MAP).exists() {
        for (id, n) in live_flows_of::<FlowEntry6>(pin_dir, &cfg)? {
            *live.entry(id).or_default() += n;
        }
    }
    Ok(live)
}

/// `live_flows_in` for one table.
fn live_flows_of<E: crate::dataplane::flowtable::Bucketed>(
    pin_dir: &std::path::Path,
    cfg: &privatelink_common::Config,
) -> anyhow::Result<std::collections::HashMap<u32, u64>> {
    let table: std::collections::HashMap<E::Key, E> = crate::dataplane::read_table::<E>(pin_dir)?
        .into_iter()
        .collect();
    let now = crate::dataplane::coarse_now_ns();
    Ok(count_live_flows(
        table.iter().map(|(k, e)| (*k, *e)),
        now,
        cfg,
        |k| table.get(k).copied(),
    ))
}

#[utoipa::path(get, path = "/v1/overview",
    responses((status = 200, body = Overview), (status = 401, body = OpError)))]
async fn overview(call: Call) -> Res<Overview> {
    let mut g = call.app.lock().await;
    let caller = ops::authenticate(&g.state, &g.admin_token_sha256, bearer(&call.h))?;
    let counters = g.counters();
    // As the daemon's conntrack walker last counted them (every few seconds, outside
    // this lock: `metrics::census`); none before its first walk.
    let live = crate::metrics::live_flows();
    Ok(Json(Overview::of(
        &g.state,
        &caller,
        g.apply.health(),
        &counters,
        live.as_ref(),
    )))
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
        add_notification,
        list_notifications,
        remove_notification,
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
        set_flow_log,
        clear_flow_log,
        list_available_services,
        get_available_service,
        status,
        overview,
        fleet,
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
        .route("/v1/fleet", get(fleet))
        .route("/v1/overview", get(overview))
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
        .route(
            "/v1/services/{id}/notifications",
            post(add_notification).get(list_notifications),
        )
        .route(
            "/v1/services/{id}/notifications/{nid}",
            axum::routing::delete(remove_notification),
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
        .route(
            "/v1/endpoints/{id}/flow-log",
            put(set_flow_log).delete(clear_flow_log),
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
        // Counts every request, by route template (`unmatched` for the fallback).
        .layer(axum::middleware::from_fn(crate::metrics::count_requests))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_commit_backs_off_longer_each_time_jittered_and_bounded() {
        use std::time::Duration;
        let ms = |a, j| commit_backoff(a, j).as_secs_f64() * 1e3;
        // The first wait: 1 to 3 ms, by the jitter.
        assert_eq!(commit_backoff(1, 0), Duration::from_millis(1));
        assert!((ms(1, u16::MAX) - 3.0).abs() < 0.01, "{}", ms(1, u16::MAX));
        assert_eq!(commit_backoff(1, 32_768), Duration::from_millis(2));
        // Doubling, then capped at 128 ms (64 to 192 with the jitter).
        for a in 2..=7 {
            assert_eq!(commit_backoff(a, 32_768), 2 * commit_backoff(a - 1, 32_768));
        }
        assert_eq!(commit_backoff(7, 32_768), Duration::from_millis(128));
        assert_eq!(commit_backoff(100, 32_768), Duration::from_millis(128));
        let total: Duration = (1..MAX_COMMIT_ATTEMPTS)
            .map(|a| commit_backoff(a, u16::MAX))
            .sum();
        assert!(total < Duration::from_millis(400), "{total:?}");
    }

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
    fn the_overview_shows_each_caller_what_it_may_see() {
        use crate::{
            counters::{EniCounters, Snapshot, Totals},
            monitor::{HealthRow, TargetKind},
        };
        let mut s = crate::model::parse_state(include_str!("../../tests/lab.toml")).unwrap();
        // A second consumer, acct-c, with an endpoint of its own to the same service.
        let mut c_ep = s.endpoints[0].clone();
        c_ep.id = "ep-c".into();
        c_ep.account = "acct-c".into();
        c_ep.connection = crate::model::Connection::Pending;
        s.endpoints.push(c_ep);
        let eni =
            |endpoint: &str, account: &str, packets: u64, drops: &[(&str, u64)]| EniCounters {
                endpoint: endpoint.into(),
                service: "epsrv-b".into(),
                zone: "zone-a".into(),
                account: account.into(),
                provider: "acct-b".into(),
                counters: Totals {
                    to_service_packets: packets,
                    to_service_bytes: packets * 60,
                    drops: drops.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
                    ..Totals::default()
                },
            };
        let counters = Snapshot {
            endpoints: vec![
                eni("ep-a", "acct-a", 7, &[("no_listener", 3), ("acl", 1)]),
                eni("ep-c", "acct-c", 0, &[("not_connected", 5)]),
            ],
            appliances: Vec::new(),
        };
        let health = vec![HealthRow {
            service: "epsrv-b".into(),
            zone: "zone-a".into(),
            address: "10.10.0.10".parse().unwrap(),
            kind: TargetKind::LoadBalancer,
            healthy: true,
            since: "2026-12-01T21:34:07Z".into(),
        }];
        let live = std::collections::HashMap::from([(crate::model::numeric_id("ep-a"), 2)]);
        let view = |c: Caller| {
            serde_json::to_value(Overview::of(&s, &c, health.clone(), &counters, Some(&live)))
                .unwrap()
        };
        let ids = |v: &serde_json::Value, list: &str| -> Vec<String> {
            v[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_str().unwrap().to_string())
                .collect()
        };

        // The consumer: its endpoint, not the other consumer's, no service, no health.
        let a = view(Caller::Account("acct-a".into()));
        assert_eq!(a["caller"], "acct-a");
        assert_eq!(ids(&a, "endpoints"), ["ep-a"]);
        assert_eq!(ids(&a, "services"), Vec::<String>::new());
        assert_eq!(a["health"], serde_json::json!([]));
        let ep = &a["endpoints"][0];
        assert_eq!(
            (
                &ep["connection"],
                &ep["live_flows"],
                &ep["to_service_packets"]
            ),
            (
                &serde_json::json!("connected"),
                &serde_json::json!(2),
                &serde_json::json!(7)
            )
        );
        assert_eq!(
            ep["zones"],
            serde_json::json!([{"zone": "zone-a", "vswitch": "vsw-a1", "eni": "10.10.1.100",
                "to_service_packets": 7, "to_service_bytes": 420, "to_consumer_packets": 0,
                "to_consumer_bytes": 0, "new_flows": 0, "drops": {"acl": 1, "no_listener": 3}}])
        );
        assert_eq!(
            a["top_drops"],
            serde_json::json!([{"reason": "no_listener", "packets": 3},
                               {"reason": "acl", "packets": 1}])
        );
        let c = view(Caller::Account("acct-c".into()));
        assert_eq!(ids(&c, "endpoints"), ["ep-c"]);
        assert_eq!(
            c["endpoints"][0]["live_flows"], 0,
            "none counted: none live"
        );

        // The provider: its service with its zone's health, and both endpoints on it.
        let b = view(Caller::Account("acct-b".into()));
        assert_eq!(ids(&b, "services"), ["epsrv-b"]);
        assert_eq!(ids(&b, "endpoints"), ["ep-a", "ep-c"]);
        assert_eq!(
            b["services"][0],
            serde_json::json!({"id": "epsrv-b", "type": "interface", "account": "acct-b",
                "listeners": [{"protocol": "tcp", "port": 80}],
                "zones": [{"zone": "zone-a", "health": "healthy", "targets": 1, "healthy": 1}],
                "endpoints": 2, "connected": 1})
        );
        assert_eq!(b["health"].as_array().unwrap().len(), 1);

        // The operator: everything, and the drops of every endpoint.
        let op = view(Caller::Admin);
        assert_eq!(op["caller"], "operator");
        assert_eq!(ids(&op, "endpoints"), ["ep-a", "ep-c"]);
        assert_eq!(
            op["top_drops"],
            serde_json::json!([{"reason": "not_connected", "packets": 5},
                               {"reason": "no_listener", "packets": 3},
                               {"reason": "acl", "packets": 1}])
        );
        // Unknown live flows are left out, not shown as 0.
        let unknown = serde_json::to_value(Overview::of(
            &s,
            &Caller::Admin,
            Vec::new(),
            &counters,
            None,
        ))
        .unwrap();
        assert!(unknown["endpoints"][0].get("live_flows").is_none());
        assert_eq!(
            unknown["services"][0]["zones"][0]["health"], "unchecked",
            "no health row"
        );

        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["paths"]["/v1/overview"]["get"].is_object());
        for (schema, field) in [
            ("Overview", "top_drops"),
            ("ServiceOverview", "zones"),
            ("ZoneHealth", "health"),
            ("Traffic", "drops"),
            ("DropCount", "reason"),
        ] {
            let p = &doc["components"]["schemas"][schema]["properties"][field];
            assert!(p.is_object(), "{schema}.{field}");
        }
    }

    #[test]
    fn live_flows_are_the_original_entries_with_a_live_direction() {
        use privatelink_common::{
            Config, DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey, PROTO_TCP, PROTO_UDP,
        };
        const S: u64 = 1_000_000_000;
        let cfg = Config::default();
        let now = 100_000 * S;
        let key = |sport: u16, proto: u8| {
            FlowKey::new(1, [10, 10, 2, 1], [10, 10, 1, 100], sport, 80, proto)
        };
        // Each flow with an SNAT port of its own (its reply entry's key).
        let entry = |endpoint_id: u32, direction: u8, idle_s: u64, snat_port: u16| FlowEntry {
            endpoint_id,
            direction,
            out_vpc_id: 2,
            new_src: [10, 10, 0, 200],
            new_dst: [10, 10, 0, 10],
            new_sport: snat_port,
            new_dport: 80,
            tcp_flags: privatelink_common::CT_ESTABLISHED,
            last_seen: privatelink_common::seen_tick(now - idle_s * S),
            ..FlowEntry::zeroed()
        };
        // The reply entry of the original direction `(k, e)`, idle `idle_s`: its key the
        // rewritten tuple reversed, its rewrite back to `k` (so each names the other).
        let reply = |(k, e): (FlowKey, FlowEntry), idle_s: u64| {
            let rk = e.partner(&k);
            let r = FlowEntry {
                out_vpc_id: k.vpc_id,
                new_src: k.dst,
                new_dst: k.src,
                new_sport: k.dport,
                new_dport: k.sport,
                ..entry(7, DIR_REPLY, idle_s, 0)
            };
            assert_eq!(r.partner(&rk), k);
            (rk, r)
        };
        // Endpoint 7: a fresh TCP flow (both entries), and a UDP flow whose original
        // direction idled out while its replies go on; endpoint 9: an expired flow.
        let fresh = (key(1000, PROTO_TCP), entry(7, DIR_ORIGINAL, 1, 40_000));
        let fresh_reply = reply(fresh, 1);
        let one_way = (key(1001, PROTO_UDP), entry(7, DIR_ORIGINAL, 500, 40_001));
        let one_way_reply = reply(one_way, 3);
        let gone = (key(1002, PROTO_TCP), entry(9, DIR_ORIGINAL, 10_000, 40_002));
        let table: std::collections::HashMap<_, _> =
            [fresh, fresh_reply, one_way, one_way_reply, gone]
                .into_iter()
                .collect();
        let live = count_live_flows(table.clone(), now, &cfg, |k| table.get(k).copied());
        assert_eq!(live, std::collections::HashMap::from([(7, 2)]));
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
