//! The HTTP API on loopback, with a real redb store and a recording data path: token
//! boundaries, every class of bad input (clear error naming the field, the right status,
//! nothing changed), the connection lifecycle, and durability across a reopen.

use std::sync::{Arc, Mutex};

use privatelink_user::{
    api::{self, App, Apply},
    client::{ApiError, Client},
    error::OpError,
    model::{Naming, State},
    ops,
    store::RedbStore,
};
use serde_json::{Value, json};

/// Records every state the data path was given.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<State>>>);

impl Apply for Recorder {
    fn check(&mut self, _: &State) -> Result<(), OpError> {
        Ok(())
    }
    fn apply(&mut self, s: &State) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(s.clone());
        Ok(())
    }
}

const ADMIN: &str = "admin-token-for-tests-0123456789";

struct Server {
    url: String,
    applied: Recorder,
    _rt: tokio::runtime::Runtime,
    dir: std::path::PathBuf,
    keep_files: bool,
}

fn serve(dir: &std::path::Path) -> Server {
    serve_named(dir, Naming::default())
}

/// `serve`, the names given under `naming`.
fn serve_named(dir: &std::path::Path, naming: Naming) -> Server {
    let store = RedbStore::open(dir).unwrap();
    let state = store.read().unwrap();
    let applied = Recorder::default();
    let app = Arc::new(tokio::sync::Mutex::new(App {
        state,
        store: Box::new(store),
        apply: Box::new(applied.clone()),
        admin_token_sha256: ops::token_hash(ADMIN),
        dirty: false,
        naming,
        notify: None,
        store_lost: false,
        fleet: None,
    }));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, api::router(app)).await.unwrap() });
    Server {
        url,
        applied,
        _rt: rt,
        dir: dir.to_path_buf(),
        keep_files: false,
    }
}

fn status_of(r: anyhow::Result<Value>) -> (u16, Value) {
    match r {
        Ok(v) => (200, v),
        Err(e) => {
            let e = e.downcast::<ApiError>().expect("an API error");
            (e.status, e.body["error"].clone())
        }
    }
}

struct World {
    srv: Server,
    admin: Client,
    a: Client,
    b: Client,
}

/// The lab's accounts, VPCs, service (whitelisting A) and a pending endpoint of A.
fn world() -> World {
    world_named(Naming::default())
}

/// `world`, the names given under `naming`.
fn world_named(naming: Naming) -> World {
    let dir = std::env::temp_dir().join(format!(
        "privatelink-api-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let srv = serve_named(&dir, naming);
    let admin = Client::new(&srv.url, Some(ADMIN.into()));
    let (a, b) = privatelink_tests::apidaemon::two_parties(&admin, &srv.url).unwrap();
    admin
        .post("/v1/accounts", &json!({"id": "acct-c"}))
        .unwrap();
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "whitelist": ["acct-a"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    a.post("/v1/endpoints", &endpoint_body("ep-a", "10.10.1.100"))
        .unwrap();
    World { srv, admin, a, b }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// An endpoint's ENIs as `{vswitch, eni}` (without the zone and name the API adds).
fn enis(ep: &Value) -> Value {
    ep["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| json!({"vswitch": z["vswitch"], "eni": z["eni"]}))
        .collect()
}

fn endpoint_body(id: &str, eni: &str) -> Value {
    json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b", "zones": [{"vswitch": "vsw-a1", "eni": eni}]})
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.keep_files {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Everything the API exposes, as the admin sees it (to prove refusals change nothing).
fn snapshot(w: &World) -> Value {
    json!([
        w.admin.get("/v1/accounts").unwrap(),
        w.admin.get("/v1/vpcs").unwrap(),
        w.admin.get("/v1/services").unwrap(),
        w.admin.get("/v1/endpoints").unwrap()
    ])
}

#[test]
fn tokens_bound_what_each_party_sees_and_does() {
    let w = world();
    let none = Client::new(&w.srv.url, None);
    let wrong = Client::new(&w.srv.url, Some("not-a-token".into()));
    let before = snapshot(&w);
    let applies = w.srv.applied.0.lock().unwrap().len();

    assert_eq!(status_of(none.get("/v1/endpoints")).0, 401);
    assert_eq!(
        status_of(wrong.post("/v1/endpoints", &endpoint_body("ep-x", "10.10.1.9"))).0,
        401
    );
    // Consumer: not the provider's service, not its connections, not the operator's work.
    assert_eq!(status_of(w.a.get("/v1/services/epsrv-b")).0, 403);
    assert_eq!(
        status_of(w.a.call("POST", "/v1/services/epsrv-b/connections/ep-a/accept", None)).0,
        403
    );
    assert_eq!(status_of(w.a.delete("/v1/services/epsrv-b")).0, 403);
    assert_eq!(
        status_of(w.a.post("/v1/accounts", &json!({"id": "evil"}))).0,
        403
    );
    assert_eq!(
        status_of(w.a.get("/v1/services")).1,
        json!([]),
        "a consumer lists no services of others"
    );
    // Provider: not the consumer's endpoint.
    assert_eq!(status_of(w.b.delete("/v1/endpoints/ep-a")).0, 403);
    assert_eq!(status_of(w.b.get("/v1/endpoints/ep-a")).0, 403);
    assert_eq!(status_of(w.b.get("/v1/endpoints")).1, json!([]));
    // The operator does not act as an account.
    assert_eq!(
        status_of(
            w.admin
                .post("/v1/endpoints", &endpoint_body("ep-x", "10.10.1.9"))
        )
        .0,
        403
    );
    // Another account that is not whitelisted.
    let c = w.admin.get("/v1/accounts").unwrap();
    assert_eq!(c.as_array().unwrap().len(), 3);

    assert_eq!(snapshot(&w), before, "refused requests changed nothing");
    assert_eq!(
        w.srv.applied.0.lock().unwrap().len(),
        applies,
        "and reached no map"
    );
}

#[test]
fn bad_input_names_the_field_with_the_right_status() {
    let w = world();
    let before = snapshot(&w);
    let applies = w.srv.applied.0.lock().unwrap().len();
    let cases: Vec<(&str, anyhow::Result<Value>, u16, &str, &str)> = vec![
        ("malformed JSON", w.a.call("POST", "/v1/endpoints", Some(&Value::String("{".into()))), 400, "body", "invalid type"),
        ("unknown field", w.a.post("/v1/endpoints", &json!({"id": "x", "vpc": "vpc-a", "service": "epsrv-b", "zones": [], "colour": 1})), 400, "colour", "unknown field"),
        ("unknown service", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-a", "service": "nope", "zones": []})), 404, "service", "no service"),
        ("unknown vpc", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-zz", "service": "epsrv-b", "zones": []})), 404, "vpc", "no VPC"),
        ("unknown endpoint", w.a.get("/v1/endpoints/ep-nope"), 404, "endpoint", "no endpoint"),
        ("bad CIDR", w.admin.post("/v1/vpcs", &json!({"id": "vpc-x", "account": "acct-a", "cidr": "10.0.0.0/33", "interface": "x0"})), 400, "cidr", "invalid"),
        ("ENI outside its vSwitch", w.a.post("/v1/endpoints", &endpoint_body("ep-x", "10.10.9.9")), 400, "endpoints[1].zones[0].eni", "not a usable address"),
        ("ENI in use", w.a.post("/v1/endpoints", &endpoint_body("ep-x", "10.10.1.100")), 400, "endpoints[1].zones[0].eni", "already in use"),
        ("bad ENI syntax", w.a.post("/v1/endpoints", &endpoint_body("ep-x", "10.10.1")), 400, "zones[0].eni", "invalid"),
        ("six security groups", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-a", "service": "epsrv-b",
            "zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.7"}], "security_groups": ["a","b","c","d","e","f"]})), 400, "security_groups", "at most 5"),
        ("21 tags", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-a", "service": "epsrv-b",
            "zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.7"}], "tags": (0..21).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_,_>>()})), 400, "tags", "at most 20"),
        ("port range upside down", w.b.post("/v1/services", &json!({"id": "s2", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.11"}],
            "snat": ["10.10.0.210"], "snat_ports": [3000, 2000], "listeners": [{"protocol": "tcp", "port": 80}]})), 400, "services[1].snat_ports", "not a port range"),
        ("duplicate id", w.a.post("/v1/endpoints", &endpoint_body("ep-a", "10.10.1.8")), 409, "id", "already exists"),
        ("bad action", w.b.call("POST", "/v1/services/epsrv-b/connections/ep-a/explode", None), 400, "action", "not one of"),
        ("delete a service in use", w.b.delete("/v1/services/epsrv-b"), 409, "service", "still has endpoints"),
        ("unknown path", w.a.get("/v1/nope"), 404, "path", "no such"),
    ];
    for (what, r, status, field, msg) in cases {
        let (got, err) = status_of(r);
        assert_eq!(got, status, "{what}: {err}");
        assert!(
            err["field"].as_str().unwrap_or("").contains(field),
            "{what}: field in {err}"
        );
        assert!(
            err["message"].as_str().unwrap_or("").contains(msg),
            "{what}: message in {err}"
        );
    }
    // Not whitelisted: acct-c has a VPC of its own but is not on the list.
    let d = stranger_with_vpc(&w);
    let (st, err) = status_of(d.post(
        "/v1/endpoints",
        &json!({"id": "ep-d", "vpc": "vpc-d", "service": "epsrv-b",
        "zones": [{"vswitch": "vsw-d1", "eni": "172.16.1.5"}]}),
    ));
    assert_eq!(
        (st, err["code"].as_str()),
        (403, Some("not_whitelisted")),
        "{err}"
    );

    let after = snapshot(&w);
    assert_eq!(after[2], before[2], "services unchanged");
    assert_eq!(after[3], before[3], "endpoints unchanged");
    assert_eq!(
        w.srv.applied.0.lock().unwrap().len(),
        applies + 2,
        "only the two admin setup calls applied"
    );
}

fn state_of(w: &World, ep: &str) -> String {
    w.a.get(&format!("/v1/endpoints/{ep}")).unwrap()["connection"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn connection_lifecycle() {
    let w = world();
    assert_eq!(state_of(&w, "ep-a"), "pending", "no auto-accept: pending");
    let act = |a: &str| {
        status_of(w.b.call(
            "POST",
            &format!("/v1/services/epsrv-b/connections/ep-a/{a}"),
            None,
        ))
    };
    assert_eq!(act("disable").0, 409, "cannot disable a pending connection");
    assert_eq!(act("accept").0, 200);
    assert_eq!(state_of(&w, "ep-a"), "connected");
    assert_eq!(act("disable").0, 200);
    assert_eq!(state_of(&w, "ep-a"), "disconnected");
    assert_eq!(act("accept").0, 409);
    assert_eq!(act("enable").0, 200);
    assert_eq!(state_of(&w, "ep-a"), "connected");
    assert_eq!(act("reject").0, 200);
    assert_eq!(state_of(&w, "ep-a"), "rejected");
    assert_eq!(act("accept").0, 200);
    // The data path was given each state.
    let last = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        last.endpoint("ep-a").unwrap().connection,
        privatelink_user::model::Connection::Connected
    );

    // Auto-accept: a new endpoint connects at once.
    w.b.call(
        "PATCH",
        "/v1/services/epsrv-b",
        Some(&json!({"auto_accept": true})),
    )
    .unwrap();
    w.a.post("/v1/endpoints", &endpoint_body("ep-2", "10.10.1.101"))
        .unwrap();
    assert_eq!(state_of(&w, "ep-2"), "connected");
    let conns = w.b.get("/v1/services/epsrv-b/connections").unwrap();
    assert_eq!(conns.as_array().unwrap().len(), 2);

    // Whitelist removal keeps the endpoints but the data path stops them (whitelist flag).
    w.b.delete("/v1/services/epsrv-b/whitelist/acct-a").unwrap();
    assert!(
        !w.srv
            .applied
            .0
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .service("epsrv-b")
            .unwrap()
            .is_whitelisted("acct-a")
    );
    // And new endpoints are refused.
    assert_eq!(
        status_of(w.a.post("/v1/endpoints", &endpoint_body("ep-3", "10.10.1.102"))).0,
        403
    );
    // Deleting endpoints, then the service.
    w.a.delete("/v1/endpoints/ep-a").unwrap();
    w.a.delete("/v1/endpoints/ep-2").unwrap();
    assert_eq!(status_of(w.b.delete("/v1/services/epsrv-b")).0, 200);
}

#[test]
fn acknowledged_changes_survive_a_reopen() {
    let dir;
    {
        let mut w = world();
        w.b.call("POST", "/v1/services/epsrv-b/connections/ep-a/accept", None)
            .unwrap();
        dir = w.srv.dir.clone();
        w.srv.keep_files = true; // the server stops here; its store stays
    }
    let srv = serve(&dir);
    let admin = Client::new(&srv.url, Some(ADMIN.into()));
    let eps = admin.get("/v1/endpoints").unwrap();
    assert_eq!(eps[0]["connection"], "connected");
    assert_eq!(
        admin.get("/v1/accounts").unwrap().as_array().unwrap().len(),
        3
    );
}

#[test]
fn openapi_lists_every_path() {
    let w = world();
    let doc = Client::new(&w.srv.url, None)
        .get("/v1/openapi.json")
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/accounts",
        "/v1/vpcs",
        "/v1/services",
        "/v1/services/{id}",
        "/v1/services/{id}/whitelist/{account}",
        "/v1/services/{id}/connections/{endpoint}/{action}",
        "/v1/endpoints",
        "/v1/endpoints/{id}",
        "/v1/endpoints/{id}/zones",
        "/v1/endpoints/{id}/zones/{vswitch}",
        "/v1/available-services",
        "/v1/available-services/{id}",
        "/v1/status",
        "/v1/vpcs/{id}",
        "/v1/services/{id}/domain/verify",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
}

#[test]
fn security_groups_and_acls_through_the_api() {
    let w = world();
    let sg =
        w.a.post(
            "/v1/security-groups",
            &json!({"id": "sg-web", "vpc": "vpc-a"}),
        )
        .unwrap();
    assert_eq!(sg["account"], "acct-a");
    let r =
        w.a.post(
            "/v1/security-groups/sg-web/rules",
            &json!({"direction": "ingress", "priority": 1, "action": "accept",
            "protocol": "tcp", "ports": [80, 80], "cidr": "10.10.2.0/24"}),
        )
        .unwrap();
    assert_eq!(r["id"], "r1");
    let cases: Vec<(&str, anyhow::Result<Value>, u16, &str)> = vec![
        (
            "priority 0",
            w.a.post(
                "/v1/security-groups/sg-web/rules",
                &json!({"direction": "ingress", "priority": 0,
            "action": "accept", "protocol": "tcp", "cidr": "0.0.0.0/0"}),
            ),
            400,
            "security_groups[0].rules[1].priority",
        ),
        (
            "priority 101",
            w.a.post(
                "/v1/security-groups/sg-web/rules",
                &json!({"direction": "ingress", "priority": 101,
            "action": "accept", "protocol": "tcp", "cidr": "0.0.0.0/0"}),
            ),
            400,
            "priority",
        ),
        (
            "ports upside down",
            w.a.post(
                "/v1/security-groups/sg-web/rules",
                &json!({"direction": "ingress", "priority": 5,
            "action": "accept", "protocol": "tcp", "ports": [90, 80], "cidr": "0.0.0.0/0"}),
            ),
            400,
            "ports",
        ),
        (
            "bad action",
            w.a.post(
                "/v1/security-groups/sg-web/rules",
                &json!({"direction": "ingress", "priority": 5,
            "action": "maybe", "protocol": "tcp", "cidr": "0.0.0.0/0"}),
            ),
            400,
            "action",
        ),
        (
            "host bits in CIDR",
            w.a.post(
                "/v1/security-groups/sg-web/rules",
                &json!({"direction": "ingress", "priority": 5,
            "action": "drop", "protocol": "all", "cidr": "10.10.2.1/24"}),
            ),
            400,
            "cidr",
        ),
        (
            "provider edits the consumer's group",
            w.b.post(
                "/v1/security-groups/sg-web/rules",
                &json!({"direction": "ingress",
            "priority": 5, "action": "drop", "protocol": "all", "cidr": "0.0.0.0/0"}),
            ),
            403,
            "",
        ),
        (
            "unknown group on an endpoint",
            w.a.call(
                "PATCH",
                "/v1/endpoints/ep-a",
                Some(&json!({"security_groups": ["sg-nope"]})),
            ),
            400,
            "endpoints[0].security_groups[0]",
        ),
        (
            "ACL on a foreign vSwitch",
            w.a.post(
                "/v1/acls",
                &json!({"id": "acl-x", "vpc": "vpc-a", "vswitches": ["vsw-b0"]}),
            ),
            400,
            "acls[0].vswitches[0]",
        ),
    ];
    for (what, r, status, field) in cases {
        let (got, err) = status_of(r);
        assert_eq!(got, status, "{what}: {err}");
        assert!(
            err["field"].as_str().unwrap_or("").contains(field),
            "{what}: {err}"
        );
    }
    w.a.call(
        "PATCH",
        "/v1/endpoints/ep-a",
        Some(&json!({"security_groups": ["sg-web"]})),
    )
    .unwrap();
    assert_eq!(
        status_of(w.a.delete("/v1/security-groups/sg-web")).0,
        409,
        "attached groups stay"
    );
    w.a.post(
        "/v1/acls",
        &json!({"id": "acl-a", "vpc": "vpc-a", "vswitches": ["vsw-a1"],
        "ingress": [{"action": "accept", "protocol": "all", "cidr": "0.0.0.0/0"}]}),
    )
    .unwrap();
    let applied = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(applied.security_groups[0].rules.len(), 1);
    assert_eq!(applied.acls.len(), 1);
    w.a.delete("/v1/security-groups/sg-web/rules/r1").unwrap();
    w.a.delete("/v1/acls/acl-a").unwrap();
    w.a.call(
        "PATCH",
        "/v1/endpoints/ep-a",
        Some(&json!({"security_groups": []})),
    )
    .unwrap();
    w.a.delete("/v1/security-groups/sg-web").unwrap();
}

#[test]
fn rule_ids_are_never_reused() {
    let w = world();
    w.a.post(
        "/v1/security-groups",
        &json!({"id": "sg-x", "vpc": "vpc-a"}),
    )
    .unwrap();
    let rule = json!({"direction": "ingress", "priority": 1, "action": "accept", "protocol": "all", "cidr": "0.0.0.0/0"});
    let r1 = w.a.post("/v1/security-groups/sg-x/rules", &rule).unwrap();
    w.a.delete(&format!(
        "/v1/security-groups/sg-x/rules/{}",
        r1["id"].as_str().unwrap()
    ))
    .unwrap();
    let r2 = w.a.post("/v1/security-groups/sg-x/rules", &rule).unwrap();
    assert_ne!(
        r1["id"], r2["id"],
        "a retried delete of r1 must not remove the new rule"
    );
}

/// A service publishes its load balancer's listeners: required, validated (each error
/// names its field), replaceable; a refused change leaves the service as it was.
#[test]
fn listeners_are_required_validated_and_replaceable() {
    let w = world();
    let svc = |listeners: Value| {
        json!({"id": "s-l", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.11"}],
               "snat": ["10.10.0.211"], "listeners": listeners})
    };
    let many: Vec<Value> = (1..=17)
        .map(|p| json!({"protocol": "tcp", "port": p}))
        .collect();
    let before = snapshot(&w);
    let cases = [
        ("no listeners", json!([]), "listeners", "must publish"),
        (
            "bad protocol",
            json!([{"protocol": "sctp", "port": 80}]),
            "listeners[0].protocol",
            "unknown variant",
        ),
        (
            "port 0",
            json!([{"protocol": "tcp", "port": 0}]),
            "listeners[0].port",
            "port 0",
        ),
        (
            "range upside down",
            json!([{"protocol": "udp", "port": 2000, "to_port": 1000}]),
            "listeners[0].to_port",
            "upside down",
        ),
        (
            "overlap",
            json!([{"protocol": "tcp", "port": 80, "to_port": 90}, {"protocol": "tcp", "port": 85}]),
            "listeners[1]",
            "overlaps listener 0 (tcp:80-90)",
        ),
        ("seventeen", Value::Array(many), "listeners", "at most 16"),
        (
            "port out of range",
            json!([{"protocol": "tcp", "port": 70000}]),
            "listeners[0].port",
            "invalid value",
        ),
    ];
    for (what, listeners, field, msg) in cases {
        let (st, err) = status_of(w.b.post("/v1/services", &svc(listeners)));
        assert_eq!(st, 400, "{what}: {err}");
        assert_eq!(err["field"], field, "{what}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(msg),
            "{what}: {err}"
        );
    }
    // Leaving the field out is the same as none.
    let mut no_field = svc(json!([]));
    no_field.as_object_mut().unwrap().remove("listeners");
    assert_eq!(status_of(w.b.post("/v1/services", &no_field)).0, 400);
    assert_eq!(snapshot(&w), before, "nothing refused was stored");

    // The same port in two protocols, and a range: accepted, and shown as given.
    let ok = json!([{"protocol": "tcp", "port": 53}, {"protocol": "udp", "port": 53},
                    {"protocol": "tcp", "port": 8000, "to_port": 8100}]);
    let created = w.b.post("/v1/services", &svc(ok.clone())).unwrap();
    assert_eq!(created["listeners"], ok);
    assert_eq!(w.b.get("/v1/services/s-l").unwrap()["listeners"], ok);

    // Replaced with PATCH; an empty or invalid set is refused and changes nothing.
    let new = json!([{"protocol": "tcp", "port": 443}]);
    let patched =
        w.b.call(
            "PATCH",
            "/v1/services/s-l",
            Some(&json!({"listeners": new})),
        )
        .unwrap();
    assert_eq!(patched["listeners"], new);
    for bad in [json!([]), json!([{"protocol": "tcp", "port": 0}])] {
        let (st, err) = status_of(w.b.call(
            "PATCH",
            "/v1/services/s-l",
            Some(&json!({"listeners": bad})),
        ));
        assert_eq!(st, 400, "{err}");
    }
    assert_eq!(w.b.get("/v1/services/s-l").unwrap()["listeners"], new);
    // Only the owner changes them.
    let (st, _) = status_of(w.a.call(
        "PATCH",
        "/v1/services/s-l",
        Some(&json!({"listeners": [{"protocol": "tcp", "port": 22}]})),
    ));
    assert_eq!(st, 403);
    // The data path was given the listeners the API answered with.
    let last = w.srv.applied.0.lock().unwrap().last().cloned().unwrap();
    let s = last.service("s-l").unwrap();
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.listeners[0].to_string(), "tcp:443");
    assert_eq!(s.endpoint_flow_share, 20, "the default share");
    // The per-endpoint share is a percentage: 1-100.
    for bad in [0, 101] {
        let (st, err) = status_of(w.b.call(
            "PATCH",
            "/v1/services/s-l",
            Some(&json!({"endpoint_flow_share": bad})),
        ));
        assert_eq!(st, 400, "{err}");
        assert!(
            err["field"]
                .as_str()
                .unwrap()
                .ends_with("endpoint_flow_share"),
            "{err}"
        );
    }
    let (st, _) = status_of(w.b.call(
        "PATCH",
        "/v1/services/s-l",
        Some(&json!({"endpoint_flow_share": 1000})),
    ));
    assert_eq!(st, 400, "not a u8");
    let patched =
        w.b.call(
            "PATCH",
            "/v1/services/s-l",
            Some(&json!({"endpoint_flow_share": 5})),
        )
        .unwrap();
    assert_eq!(patched["endpoint_flow_share"], 5);
}

/// A new account with a token and nothing else: a stranger to every service.
fn stranger(w: &World, id: &str) -> Client {
    let token = w.admin.post("/v1/accounts", &json!({"id": id})).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    Client::new(&w.srv.url, Some(token))
}

/// Account acct-d with a VPC of its own (vpc-d, vSwitch vsw-d1 172.16.1.0/24), on no
/// whitelist.
fn stranger_with_vpc(w: &World) -> Client {
    let d = stranger(w, "acct-d");
    w.admin
        .post(
            "/v1/vpcs",
            &json!({"id": "vpc-d", "account": "acct-d", "cidr": "172.16.0.0/16", "interface": "fd0",
                    "vswitches": [{"id": "vsw-d1", "zone": "zone-a", "cidr": "172.16.1.0/24"}]}),
        )
        .unwrap();
    d
}

#[test]
fn consumers_discover_the_services_they_may_use() {
    let w = world();
    // A second service of B that nobody is whitelisted for.
    w.b.post(
        "/v1/services",
        &json!({"id": "epsrv-x", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.11"}],
                "snat": ["10.10.0.210"], "auto_accept": true, "listeners": [{"protocol": "tcp", "port": 443}]}),
    )
    .unwrap();
    let d = stranger(&w, "acct-d");
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Whitelisted: A sees epsrv-b, and only what a consumer needs of it.
    let list = w.a.get("/v1/available-services").unwrap();
    assert_eq!(ids(list.clone()), ["epsrv-b"]);
    let want = json!({"id": "epsrv-b", "type": "interface", "zones": ["zone-a"], "domain": null,
                      "default_domain": "epsrv-b.region-1.privatelink.internal",
                      "listeners": [{"protocol": "tcp", "port": 80}],
                      "auto_accept": false, "zone_affinity": true});
    assert_eq!(list[0], want);
    assert_eq!(w.a.get("/v1/available-services/epsrv-b").unwrap(), want);
    let text = list.to_string();
    for secret in [
        "whitelist",
        "acct-a",
        "acct-b",
        "ep-a",
        "10.10.0.10",
        "10.10.0.200",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // Own account: B sees both of its services without being on a whitelist.
    assert_eq!(
        ids(w.b.get("/v1/available-services").unwrap()),
        ["epsrv-b", "epsrv-x"]
    );
    assert_eq!(
        w.b.get("/v1/available-services/epsrv-x").unwrap()["auto_accept"],
        true
    );
    // Neither: absent from the list, and 404 exactly as for a service that does not exist.
    let (st, err) = status_of(w.a.get("/v1/available-services/epsrv-x"));
    let (st_none, err_none) = status_of(w.a.get("/v1/available-services/epsrv-nope"));
    assert_eq!((st, st_none), (404, 404), "{err} {err_none}");
    assert_eq!(
        err["message"].as_str().unwrap().replace("epsrv-x", "ID"),
        err_none["message"]
            .as_str()
            .unwrap()
            .replace("epsrv-nope", "ID"),
        "the same answer as for no service at all"
    );
    assert_eq!(status_of(d.get("/v1/available-services")).1, json!([]));
    assert_eq!(status_of(d.get("/v1/available-services/epsrv-b")).0, 404);
    // No token, or a token nobody holds: 401.
    let none = Client::new(&w.srv.url, None);
    let wrong = Client::new(&w.srv.url, Some("not-a-token".into()));
    for c in [&none, &wrong] {
        assert_eq!(status_of(c.get("/v1/available-services")).0, 401);
        assert_eq!(status_of(c.get("/v1/available-services/epsrv-b")).0, 401);
    }
    // Only the owner learns whether an account exists: A is refused on B's service with
    // 403 whether or not the account it names exists; B gets 404 for one that does not.
    for account in ["acct-a", "acct-nobody"] {
        let (status, body) = status_of(w.a.call(
            "PUT",
            &format!("/v1/services/epsrv-x/whitelist/{account}"),
            None,
        ));
        assert_eq!(
            (status, &body["code"]),
            (403, &json!("permission_denied")),
            "{body}"
        );
    }
    let (status, body) =
        status_of(w.b.call("PUT", "/v1/services/epsrv-x/whitelist/acct-nobody", None));
    assert_eq!((status, &body["field"]), (404, &json!("account")), "{body}");
    // Whitelisting makes it appear; removing A makes it disappear again.
    w.b.call("PUT", "/v1/services/epsrv-x/whitelist/acct-a", None)
        .unwrap();
    assert_eq!(
        ids(w.a.get("/v1/available-services").unwrap()),
        ["epsrv-b", "epsrv-x"]
    );
    w.b.delete("/v1/services/epsrv-x/whitelist/acct-a").unwrap();
    assert_eq!(ids(w.a.get("/v1/available-services").unwrap()), ["epsrv-b"]);
    // The operator sees every service.
    assert_eq!(
        ids(w.admin.get("/v1/available-services").unwrap()),
        ["epsrv-b", "epsrv-x"]
    );
}

#[test]
fn a_provider_connects_to_its_own_service_without_whitelisting_itself() {
    let w = world();
    let ep =
        w.b.post(
            "/v1/endpoints",
            &json!({"id": "ep-own", "vpc": "vpc-b", "service": "epsrv-b",
                    "zones": [{"vswitch": "vsw-b0"}]}),
        )
        .unwrap();
    // The lowest free address of vsw-b0 (10.10.0.10 is the load balancer, .200 SNAT).
    assert_eq!(
        ep["zones"],
        json!([{"vswitch": "vsw-b0", "eni": "10.10.0.1", "zone": "zone-a",
                "domain": "zone-a.ep-own.epsrv-b.region-1.privatelink.internal"}])
    );
    let svc = w.b.get("/v1/services/epsrv-b").unwrap();
    assert_eq!(
        svc["whitelist"],
        json!(["acct-a"]),
        "B did not whitelist itself"
    );
    let last = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    let own = last.endpoint("ep-own").unwrap();
    assert!(last.service("epsrv-b").unwrap().admits(&own.account));
    // A third account is still refused.
    let d = stranger_with_vpc(&w);
    let (st, err) = status_of(d.post(
        "/v1/endpoints",
        &json!({"id": "ep-d", "vpc": "vpc-d", "service": "epsrv-b", "zones": [{"vswitch": "vsw-d1"}]}),
    ));
    assert_eq!((st, err["code"].as_str()), (403, Some("not_whitelisted")));
}

fn zone_body(id: &str, zone: Value) -> Value {
    json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b", "zones": [zone]})
}

#[test]
fn endpoint_zones_are_served_zones_and_addresses_are_free_and_unreserved() {
    let w = world();
    let before = snapshot(&w);
    let applies = w.srv.applied.0.lock().unwrap().len();
    let refused = |z: Value, status: u16, field: &str, msg: &str| {
        let (st, err) = status_of(w.a.post("/v1/endpoints", &zone_body("ep-x", z.clone())));
        assert_eq!(st, status, "{z}: {err}");
        assert_eq!(err["field"].as_str(), Some(field), "{z}: {err}");
        let m = err["message"].as_str().unwrap();
        assert!(m.contains(msg), "{z}: {err}");
        m.to_string()
    };
    // vsw-a2 is in zone-b; epsrv-b serves zone-a only.
    let m = refused(
        json!({"vswitch": "vsw-a2", "eni": "10.10.2.5"}),
        400,
        "zones[0].vswitch",
        "zone zone-b, which service epsrv-b does not serve (it serves zone-a)",
    );
    assert!(m.starts_with("vSwitch vsw-a2 is in zone zone-b"), "{m}");
    refused(
        json!({"vswitch": "vsw-a2"}),
        400,
        "zones[0].vswitch",
        "does not serve",
    );
    // The four reserved addresses of each vSwitch: the first and the last three.
    for (vsw, addrs) in [
        (
            "vsw-a1",
            ["10.10.1.0", "10.10.1.253", "10.10.1.254", "10.10.1.255"],
        ),
        (
            "vsw-a3",
            ["10.10.3.0", "10.10.3.5", "10.10.3.6", "10.10.3.7"],
        ),
    ] {
        for a in addrs {
            refused(
                json!({"vswitch": vsw, "eni": a}),
                400,
                "zones[0].eni",
                &format!("{a} is a system-reserved address of vSwitch {vsw}"),
            );
        }
    }
    // Taken (ep-a's ENI).
    refused(
        json!({"vswitch": "vsw-a1", "eni": "10.10.1.100"}),
        400,
        "endpoints[1].zones[0].eni",
        "10.10.1.100 is already in use in VPC vpc-a",
    );
    assert_eq!(snapshot(&w), before, "refused requests changed nothing");
    assert_eq!(w.srv.applied.0.lock().unwrap().len(), applies);

    // Allocation: the lowest free address that is not reserved, skipping taken ones.
    let eni = |ep: &Value| ep["zones"][0]["eni"].as_str().unwrap().to_string();
    let e1 =
        w.a.post(
            "/v1/endpoints",
            &zone_body("ep-1", json!({"vswitch": "vsw-a1"})),
        )
        .unwrap();
    assert_eq!(eni(&e1), "10.10.1.1");
    w.a.post(
        "/v1/endpoints",
        &zone_body("ep-2", json!({"vswitch": "vsw-a1", "eni": "10.10.1.2"})),
    )
    .unwrap();
    let e3 =
        w.a.post(
            "/v1/endpoints",
            &zone_body("ep-3", json!({"vswitch": "vsw-a1"})),
        )
        .unwrap();
    assert_eq!(eni(&e3), "10.10.1.3", "10.10.1.2 was taken");
    assert_eq!(
        eni(&w.a.get("/v1/endpoints/ep-3").unwrap()),
        "10.10.1.3",
        "stored as returned"
    );
    // Freed addresses are allocated again.
    w.a.delete("/v1/endpoints/ep-1").unwrap();
    let e4 =
        w.a.post(
            "/v1/endpoints",
            &zone_body("ep-4", json!({"vswitch": "vsw-a1"})),
        )
        .unwrap();
    assert_eq!(eni(&e4), "10.10.1.1");

    // A /29: four addresses to allocate, then a clear error.
    let got: Vec<String> = (0..4)
        .map(|i| {
            eni(&w
                .a
                .post(
                    "/v1/endpoints",
                    &zone_body(&format!("ep-s{i}"), json!({"vswitch": "vsw-a3"})),
                )
                .unwrap())
        })
        .collect();
    assert_eq!(got, ["10.10.3.1", "10.10.3.2", "10.10.3.3", "10.10.3.4"]);
    let before = snapshot(&w);
    let (st, err) = status_of(w.a.post(
        "/v1/endpoints",
        &zone_body("ep-s4", json!({"vswitch": "vsw-a3"})),
    ));
    assert_eq!(
        (st, err["field"].as_str()),
        (409, Some("zones[0].vswitch")),
        "{err}"
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("vSwitch vsw-a3 (10.10.3.0/29) has no free address left"),
        "{err}"
    );
    assert_eq!(snapshot(&w), before);
}

#[test]
fn zones_are_added_and_removed_one_at_a_time() {
    let w = world();
    let zones = enis;
    // epsrv-b serves zone-a only: a zone-b ENI is refused.
    let (st, err) = status_of(w.a.post("/v1/endpoints/ep-a/zones", &json!({"vswitch": "vsw-a2"})));
    assert_eq!((st, err["field"].as_str()), (400, Some("vswitch")), "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("zone zone-b"),
        "{err}"
    );
    // B adds a load balancer in zone-b; now A can add the zone, its address allocated.
    w.b.call(
        "PATCH",
        "/v1/services/epsrv-b",
        Some(
            &json!({"backends": [{"zone": "zone-a", "address": "10.10.0.10"},
                                  {"zone": "zone-b", "address": "10.10.0.11"}]}),
        ),
    )
    .unwrap();
    assert_eq!(
        w.a.get("/v1/available-services/epsrv-b").unwrap()["zones"],
        json!(["zone-a", "zone-b"])
    );
    let (st, err) = status_of(w.a.post(
        "/v1/endpoints/ep-a/zones",
        &json!({"vswitch": "vsw-a2", "eni": "10.10.2.255"}),
    ));
    assert_eq!((st, err["field"].as_str()), (400, Some("eni")), "{err}");
    let ep =
        w.a.post("/v1/endpoints/ep-a/zones", &json!({"vswitch": "vsw-a2"}))
            .unwrap();
    assert_eq!(
        zones(&ep),
        json!([{"vswitch": "vsw-a1", "eni": "10.10.1.100"}, {"vswitch": "vsw-a2", "eni": "10.10.2.1"}])
    );
    let last = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.endpoint("ep-a").unwrap().zones.len(), 2, "applied");
    // One ENI per zone: vsw-a3 is zone-a again.
    let (st, err) = status_of(w.a.post("/v1/endpoints/ep-a/zones", &json!({"vswitch": "vsw-a3"})));
    assert_eq!(st, 400, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("already has an ENI in zone zone-a"),
        "{err}"
    );
    // Only the owner changes its zones.
    assert_eq!(
        status_of(w.b.post("/v1/endpoints/ep-a/zones", &json!({"vswitch": "vsw-a3"}))).0,
        403
    );
    assert_eq!(
        status_of(w.b.delete("/v1/endpoints/ep-a/zones/vsw-a1")).0,
        403
    );
    // A PATCH that lists a zone without its address keeps the address.
    let ep =
        w.a.call(
            "PATCH",
            "/v1/endpoints/ep-a",
            Some(&json!({"zones": [{"vswitch": "vsw-a1"}, {"vswitch": "vsw-a2"}]})),
        )
        .unwrap();
    assert_eq!(
        zones(&ep),
        json!([{"vswitch": "vsw-a1", "eni": "10.10.1.100"}, {"vswitch": "vsw-a2", "eni": "10.10.2.1"}])
    );
    // Removing: a zone it does not have is 404; then zone-a goes, zone-b stays.
    assert_eq!(
        status_of(w.a.delete("/v1/endpoints/ep-a/zones/vsw-a3")).0,
        404
    );
    let ep = w.a.delete("/v1/endpoints/ep-a/zones/vsw-a1").unwrap();
    assert_eq!(
        zones(&ep),
        json!([{"vswitch": "vsw-a2", "eni": "10.10.2.1"}])
    );
    let last = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.endpoint("ep-a").unwrap().zones.len(), 1, "applied");
    // The last zone stays.
    let before = snapshot(&w);
    let (st, err) = status_of(w.a.delete("/v1/endpoints/ep-a/zones/vsw-a2"));
    assert_eq!((st, err["field"].as_str()), (409, Some("vswitch")), "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("holds endpoint ep-a's only ENI"),
        "{err}"
    );
    assert_eq!(snapshot(&w), before);
    // The freed address is allocated again.
    let ep =
        w.a.post("/v1/endpoints/ep-a/zones", &json!({"vswitch": "vsw-a3"}))
            .unwrap();
    assert_eq!(
        zones(&ep)[1],
        json!({"vswitch": "vsw-a3", "eni": "10.10.3.1"})
    );
}

/// State stored by an earlier build with an ENI the new rules would refuse (a reserved
/// address, a zone the service does not serve) still loads, the endpoint keeps working
/// through the API, and only new ENIs are held to the rules.
#[test]
fn stored_endpoints_from_before_the_zone_rules_still_load() {
    let dir = std::env::temp_dir().join(format!(
        "privatelink-api-old-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let mut old = privatelink_user::model::parse_state(
        &privatelink_tests::lab::LAB_STATE
            .replace("eni = \"10.10.1.100\"", "eni = \"10.10.1.254\"")
            .replace(
                "{ id = \"vsw-a2\", zone = \"zone-a\"",
                "{ id = \"vsw-a2\", zone = \"zone-b\"",
            ),
    )
    .unwrap();
    old.endpoints[0]
        .zones
        .push(privatelink_user::model::EndpointZone {
            vswitch: "vsw-a2".into(),
            eni: "10.10.2.5".parse().unwrap(),
            eni6: None,
        });
    old.accounts[0].token_sha256 = Some(ops::token_hash("token-of-a-0123456789"));
    old.validate().unwrap();
    assert_eq!(old.grandfathered().len(), 2, "{:?}", old.grandfathered());
    {
        let mut store = RedbStore::open(&dir).unwrap();
        store.write(&State::default(), &old).unwrap();
    }
    let srv = serve(&dir);
    let a = Client::new(&srv.url, Some("token-of-a-0123456789".into()));
    let ep = a.get("/v1/endpoints/ep-a").unwrap();
    assert_eq!(
        enis(&ep),
        json!([{"vswitch": "vsw-a1", "eni": "10.10.1.254"}, {"vswitch": "vsw-a2", "eni": "10.10.2.5"}])
    );
    // Other changes to it go through; a PATCH that keeps its zones keeps them.
    a.call(
        "PATCH",
        "/v1/endpoints/ep-a",
        Some(&json!({"name": "renamed", "zones": [{"vswitch": "vsw-a1"}, {"vswitch": "vsw-a2", "eni": "10.10.2.5"}]})),
    )
    .unwrap();
    let ep = a.get("/v1/endpoints/ep-a").unwrap();
    assert_eq!(ep["name"], "renamed");
    assert_eq!(ep["zones"][0]["eni"], "10.10.1.254");
    // A new ENI is held to the rules.
    let (st, err) = status_of(a.call(
        "PATCH",
        "/v1/endpoints/ep-a",
        Some(&json!({"zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.253"}]})),
    ));
    assert_eq!(
        (st, err["field"].as_str()),
        (400, Some("zones[0].eni")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `r`'s status, error field and message, for a refusal (panics on success).
fn refusal(r: anyhow::Result<Value>) -> (u16, String, String) {
    let (st, err) = status_of(r);
    assert_ne!(st, 200, "accepted");
    (
        st,
        err["field"].as_str().unwrap_or("").to_string(),
        err["message"].as_str().unwrap_or("").to_string(),
    )
}

fn patch(c: &Client, path: &str, body: Value) -> anyhow::Result<Value> {
    c.call("PATCH", path, Some(&body))
}

/// Endpoint, zone and service names in the API's JSON: exact strings for the lab's ids
/// under a naming of the test's own, the `pl--` form for an id with capitals, and none for
/// endpoints that are not interface endpoints.
#[test]
fn endpoints_and_services_show_their_names_under_the_running_naming() {
    let w = world_named(Naming {
        suffix: "pl.example.net".into(),
        region: "tokyo-1".into(),
    });
    // B's load balancers in two zones; A's endpoint gets an ENI in each.
    patch(
        &w.b,
        "/v1/services/epsrv-b",
        json!({"backends": [{"zone": "zone-a", "address": "10.10.0.10"},
                            {"zone": "zone-b", "address": "10.10.0.11"}]}),
    )
    .unwrap();
    let added =
        w.a.post(
            "/v1/endpoints/ep-a/zones",
            &json!({"vswitch": "vsw-a2", "eni": "10.10.2.100"}),
        )
        .unwrap();
    let want_zones = json!([
        {"vswitch": "vsw-a1", "eni": "10.10.1.100", "zone": "zone-a",
         "domain": "zone-a.ep-a.epsrv-b.tokyo-1.pl.example.net"},
        {"vswitch": "vsw-a2", "eni": "10.10.2.100", "zone": "zone-b",
         "domain": "zone-b.ep-a.epsrv-b.tokyo-1.pl.example.net"},
    ]);
    assert_eq!(added["zones"], want_zones);
    for ep in [
        w.a.get("/v1/endpoints/ep-a").unwrap(),
        w.a.get("/v1/endpoints").unwrap()[0].clone(),
        w.admin.get("/v1/endpoints").unwrap()[0].clone(),
    ] {
        assert_eq!(ep["domain"], "ep-a.epsrv-b.tokyo-1.pl.example.net", "{ep}");
        assert_eq!(ep["zones"], want_zones, "{ep}");
        assert_eq!(ep["zone_affinity"], true, "{ep}");
        assert!(ep.get("service_domain_name").is_none(), "{ep}");
        // The stored fields are all there still.
        assert_eq!(
            (&ep["id"], &ep["vpc"], &ep["connection"]),
            (&json!("ep-a"), &json!("vpc-a"), &json!("pending"))
        );
    }
    // An id with capitals: its numeric id in hex (FNV-1a of "Ep-Caps", worked out apart).
    let caps =
        w.a.post(
            "/v1/endpoints",
            &json!({"id": "Ep-Caps", "vpc": "vpc-a", "service": "epsrv-b",
                    "zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.7"}]}),
        )
        .unwrap();
    assert_eq!(
        caps["domain"],
        "pl--f330df22.epsrv-b.tokyo-1.pl.example.net"
    );
    assert_eq!(
        caps["zones"][0]["domain"],
        "zone-a.pl--f330df22.epsrv-b.tokyo-1.pl.example.net"
    );
    // The service's default domain: to its owner, the operator and its consumers.
    for svc in [
        w.b.get("/v1/services/epsrv-b").unwrap(),
        w.admin.get("/v1/services").unwrap()[0].clone(),
        w.a.get("/v1/available-services/epsrv-b").unwrap(),
        w.a.get("/v1/available-services").unwrap()[0].clone(),
    ] {
        assert_eq!(
            svc["default_domain"], "epsrv-b.tokyo-1.pl.example.net",
            "{svc}"
        );
    }
    // A custom domain under the running suffix is refused (400), beside it accepted.
    let (st, field, msg) = refusal(patch(
        &w.b,
        "/v1/services/epsrv-b",
        json!({"domain": "web.tokyo-1.pl.example.net"}),
    ));
    assert_eq!((st, field.as_str()), (400, "domain"), "{msg}");
    assert!(msg.contains("overlaps pl.example.net"), "{msg}");
    patch(
        &w.b,
        "/v1/services/epsrv-b",
        json!({"domain": "web.example.net"}),
    )
    .unwrap();

    // A gateway endpoint has no ENI and no name, nor zone affinity to set.
    w.b.post(
        "/v1/services",
        &json!({"id": "epsrv-oss", "vpc": "vpc-b", "type": "gateway",
                "backends": [{"zone": "zone-a", "address": "10.10.0.1"}], "snat": ["10.10.0.202"],
                "prefixes": ["100.64.10.0/24"], "whitelist": ["acct-a"],
                "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    let gw =
        json!({"id": "ep-oss", "vpc": "vpc-a", "service": "epsrv-oss", "gateway": "10.10.1.1"});
    let mut with_affinity = gw.clone();
    with_affinity["zone_affinity"] = json!(true);
    let (st, field, _) = refusal(w.a.post("/v1/endpoints", &with_affinity));
    assert_eq!((st, field.as_str()), (400, "zone_affinity"));
    let ep = w.a.post("/v1/endpoints", &gw).unwrap();
    assert!(ep.get("domain").is_none(), "{ep}");
    assert_eq!(ep["zones"], json!([]));
    let svc = w.b.get("/v1/services/epsrv-oss").unwrap();
    assert!(svc.get("default_domain").is_none(), "{svc}");
}

/// Seed 001's zone affinity rules: a service that supports it lets new endpoints choose
/// (on by default) and existing ones toggle; once it no longer does, a new endpoint cannot
/// turn it on, one that has it off cannot either, and one that has it keeps it and may turn
/// it off (for good, until the service supports it again).
#[test]
fn zone_affinity_follows_the_services_support_as_seed_001_says() {
    let w = world();
    let affinity =
        |id: &str| w.a.get(&format!("/v1/endpoints/{id}")).unwrap()["zone_affinity"].clone();
    let new = |id: &str, eni: &str, on: Option<bool>| {
        let mut b = endpoint_body(id, eni);
        if let Some(on) = on {
            b["zone_affinity"] = json!(on);
        }
        w.a.post("/v1/endpoints", &b)
    };
    let set = |id: &str, on: bool| {
        patch(
            &w.a,
            &format!("/v1/endpoints/{id}"),
            json!({"zone_affinity": on}),
        )
    };
    let service_supports = |on: bool| {
        patch(&w.b, "/v1/services/epsrv-b", json!({"zone_affinity": on})).unwrap();
    };

    // Supported: new endpoints choose, on by default; existing ones toggle.
    assert_eq!(affinity("ep-a"), true, "on by default");
    assert_eq!(
        new("ep-off", "10.10.1.101", Some(false)).unwrap()["zone_affinity"],
        false
    );
    assert_eq!(set("ep-off", true).unwrap()["zone_affinity"], true);
    assert_eq!(set("ep-off", false).unwrap()["zone_affinity"], false);

    // No longer supported.
    service_supports(false);
    assert_eq!(affinity("ep-a"), true, "an endpoint that has it keeps it");
    assert_eq!(affinity("ep-off"), false);
    let before = snapshot(&w);
    let (st, field, msg) = refusal(new("ep-new", "10.10.1.102", Some(true)));
    assert_eq!((st, field.as_str()), (409, "zone_affinity"), "{msg}");
    assert!(
        msg.contains("service epsrv-b does not support zone affinity"),
        "{msg}"
    );
    let (st, field, _) = refusal(set("ep-off", true));
    assert_eq!((st, field.as_str()), (409, "zone_affinity"));
    assert_eq!(snapshot(&w), before, "refusals changed nothing");
    assert_eq!(
        new("ep-new", "10.10.1.102", None).unwrap()["zone_affinity"],
        false,
        "off by default"
    );
    assert_eq!(set("ep-a", true).unwrap()["zone_affinity"], true, "kept");
    assert_eq!(
        set("ep-a", false).unwrap()["zone_affinity"],
        false,
        "turned off"
    );
    assert_eq!(refusal(set("ep-a", true)).0, 409, "and not on again");

    // Supported again: existing endpoints toggle, new ones choose, on by default.
    service_supports(true);
    assert_eq!(set("ep-a", true).unwrap()["zone_affinity"], true);
    assert_eq!(set("ep-off", true).unwrap()["zone_affinity"], true);
    assert_eq!(set("ep-off", false).unwrap()["zone_affinity"], false);
    assert_eq!(
        new("ep-on", "10.10.1.103", None).unwrap()["zone_affinity"],
        true
    );
    assert_eq!(
        new("ep-no", "10.10.1.104", Some(false)).unwrap()["zone_affinity"],
        false
    );
    // The data path's state says the same.
    let last = w.srv.applied.0.lock().unwrap().last().cloned().unwrap();
    let on: Vec<(&str, bool)> = last
        .endpoints
        .iter()
        .map(|e| (e.id.as_str(), e.zone_affinity))
        .collect();
    assert_eq!(
        on,
        [
            ("ep-a", true),
            ("ep-off", false),
            ("ep-new", false),
            ("ep-on", true),
            ("ep-no", false)
        ]
    );
}

/// A custom service domain: lowercase and outside the names' suffix, verified by the
/// operator only, enabled per endpoint only once verified, by the first endpoint of a VPC
/// only (the refusal names it), and never changed under an endpoint that has it on.
#[test]
fn custom_service_domains_are_verified_by_the_operator_and_enabled_by_the_first_endpoint() {
    let w = world();
    let svc_path = "/v1/services/epsrv-b";
    let verify = |c: &Client| c.call("POST", "/v1/services/epsrv-b/domain/verify", None);
    let enable = |id: &str, on: bool| {
        patch(
            &w.a,
            &format!("/v1/endpoints/{id}"),
            json!({"service_domain": on}),
        )
    };

    // No domain yet: nothing to enable or verify.
    let (st, field, msg) = refusal(enable("ep-a", true));
    assert_eq!((st, field.as_str()), (409, "service_domain"), "{msg}");
    assert!(
        msg.contains("service epsrv-b has no custom domain"),
        "{msg}"
    );
    let (st, field, _) = refusal(verify(&w.admin));
    assert_eq!((st, field.as_str()), (409, "domain"));

    // The provider sets one: lowercase, outside the daemon's suffix.
    for (bad, msg) in [
        ("Web.Provider-B.example", "write it in lowercase"),
        (
            "x.region-1.privatelink.internal",
            "overlaps privatelink.internal",
        ),
        ("web", "not a domain name"),
    ] {
        let (st, field, m) = refusal(patch(&w.b, svc_path, json!({"domain": bad})));
        assert_eq!((st, field.as_str()), (400, "domain"), "{bad}: {m}");
        assert!(m.contains(msg), "{bad}: {m}");
    }
    let svc = patch(&w.b, svc_path, json!({"domain": "web.provider-b.example"})).unwrap();
    assert_eq!(svc["domain"], "web.provider-b.example");
    assert!(svc.get("domain_verified").is_none(), "{svc}");

    // Not verified: A cannot enable it, at creation or later.
    let (st, _, msg) = refusal(enable("ep-a", true));
    assert_eq!(st, 409);
    assert!(msg.contains("not verified yet"), "{msg}");
    let mut body = endpoint_body("ep-a2", "10.10.1.102");
    body["service_domain"] = json!(true);
    assert_eq!(refusal(w.a.post("/v1/endpoints", &body)).0, 409);

    // Only the operator verifies.
    assert_eq!(refusal(verify(&w.b)).0, 403);
    assert_eq!(refusal(verify(&w.a)).0, 403);
    assert_eq!(
        refusal(
            w.admin
                .call("POST", "/v1/services/nope/domain/verify", None)
        )
        .0,
        404
    );
    assert_eq!(verify(&w.admin).unwrap()["domain_verified"], true);
    // The same domain set again keeps its verification.
    let svc = patch(&w.b, svc_path, json!({"domain": "web.provider-b.example"})).unwrap();
    assert_eq!(svc["domain_verified"], true);

    // Enabled: the name shows on the endpoint.
    let ep = enable("ep-a", true).unwrap();
    assert_eq!(
        (&ep["service_domain"], &ep["service_domain_name"]),
        (&json!(true), &json!("web.provider-b.example"))
    );
    // A second endpoint in the VPC: the first enabled wins, and is named.
    let (st, field, msg) = refusal(w.a.post("/v1/endpoints", &body));
    assert_eq!((st, field.as_str()), (409, "service_domain"), "{msg}");
    assert!(
        msg.contains("endpoint ep-a already resolves web.provider-b.example in VPC vpc-a"),
        "{msg}"
    );
    body["service_domain"] = json!(false);
    w.a.post("/v1/endpoints", &body).unwrap();
    let (st, _, msg) = refusal(enable("ep-a2", true));
    assert_eq!(st, 409);
    assert!(msg.contains("endpoint ep-a already resolves"), "{msg}");
    // Another VPC of A has its own.
    w.admin
        .post(
            "/v1/vpcs",
            &json!({"id": "vpc-a9", "account": "acct-a", "cidr": "10.10.0.0/16", "interface": "fc9",
                    "vswitches": [{"id": "vsw-a91", "zone": "zone-a", "cidr": "10.10.1.0/24"}]}),
        )
        .unwrap();
    let other =
        w.a.post(
            "/v1/endpoints",
            &json!({"id": "ep-a9", "vpc": "vpc-a9", "service": "epsrv-b", "service_domain": true,
                    "zones": [{"vswitch": "vsw-a91", "eni": "10.10.1.100"}]}),
        )
        .unwrap();
    assert_eq!(other["service_domain_name"], "web.provider-b.example");

    // The provider cannot change or remove the domain under them: 409 naming them.
    let before = snapshot(&w);
    for change in [
        json!({"domain": "new.provider-b.example"}),
        json!({"domain": null}),
    ] {
        let (st, field, msg) = refusal(patch(&w.b, svc_path, change));
        assert_eq!((st, field.as_str()), (409, "domain"), "{msg}");
        assert!(msg.contains("endpoints ep-a, ep-a9"), "{msg}");
    }
    assert_eq!(snapshot(&w), before, "refusals changed nothing");

    // Turned off, the next endpoint may enable it; all off, the domain changes and its
    // verification goes.
    assert_eq!(
        enable("ep-a", false).unwrap()["service_domain"],
        Value::Null
    );
    let ep = enable("ep-a2", true).unwrap();
    assert_eq!(ep["service_domain_name"], "web.provider-b.example");
    enable("ep-a2", false).unwrap();
    patch(
        &w.a,
        "/v1/endpoints/ep-a9",
        json!({"service_domain": false}),
    )
    .unwrap();
    let svc = patch(&w.b, svc_path, json!({"domain": "new.provider-b.example"})).unwrap();
    assert_eq!(svc["domain"], "new.provider-b.example");
    assert!(svc.get("domain_verified").is_none(), "{svc}");
    assert_eq!(
        refusal(enable("ep-a", true)).0,
        409,
        "not verified again yet"
    );
    // Removed with null.
    let svc = patch(&w.b, svc_path, json!({"domain": null})).unwrap();
    assert!(svc["domain"].is_null(), "{svc}");
    assert_eq!(refusal(verify(&w.admin)).0, 409);
    let last = w.srv.applied.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.service("epsrv-b").unwrap().domain, None);
    assert!(last.endpoints.iter().all(|e| !e.service_domain));
}

/// A VPC's resolver and probe addresses: set at creation by the operator, set and removed
/// later by the operator or the VPC's owner; refused, naming the field, when not unicast,
/// (the probe address) outside the VPC, or in use; new ENIs and service addresses keep
/// clear of them.
#[test]
fn vpc_resolver_and_probe_addresses_are_checked_and_kept_clear() {
    let w = world();
    let vpc = w
        .admin
        .post(
            "/v1/vpcs",
            &json!({"id": "vpc-r", "account": "acct-a", "cidr": "10.20.0.0/16", "interface": "fr0",
                    "resolver": "100.100.2.136", "probe_address": "10.20.0.250"}),
        )
        .unwrap();
    assert_eq!(
        (&vpc["resolver"], &vpc["probe_address"]),
        (&json!("100.100.2.136"), &json!("10.20.0.250"))
    );
    let before = snapshot(&w);
    let cases: Vec<(&str, anyhow::Result<Value>, u16, &str, &str)> = vec![
        (
            "loopback resolver",
            w.admin.post(
                "/v1/vpcs",
                &json!({"id": "vpc-x", "account": "acct-a", "cidr": "10.20.0.0/16",
            "interface": "fx0", "resolver": "127.0.0.1"}),
            ),
            400,
            "resolver",
            "not a unicast host address",
        ),
        (
            "probe outside",
            patch(
                &w.admin,
                "/v1/vpcs/vpc-a",
                json!({"probe_address": "100.100.2.136"}),
            ),
            400,
            "probe_address",
            "not inside the VPC's 10.10.0.0/16",
        ),
        (
            "resolver is an ENI",
            patch(
                &w.admin,
                "/v1/vpcs/vpc-a",
                json!({"resolver": "10.10.1.100"}),
            ),
            400,
            "vpcs[0].resolver",
            "10.10.1.100 is endpoint ep-a's ENI in VPC vpc-a",
        ),
        (
            "same address twice",
            patch(
                &w.admin,
                "/v1/vpcs/vpc-a",
                json!({"resolver": "10.10.1.53", "probe_address": "10.10.1.53"}),
            ),
            400,
            "probe_address",
            "resolver address too",
        ),
        (
            "probe is a SNAT address",
            patch(
                &w.admin,
                "/v1/vpcs/vpc-b",
                json!({"probe_address": "10.10.0.200"}),
            ),
            400,
            "vpcs[1].probe_address",
            "a SNAT address of service epsrv-b",
        ),
        (
            "bad syntax",
            patch(&w.admin, "/v1/vpcs/vpc-a", json!({"resolver": "10.10.1"})),
            400,
            "resolver",
            "invalid",
        ),
        (
            "unknown field",
            patch(&w.admin, "/v1/vpcs/vpc-a", json!({"cidr": "10.0.0.0/8"})),
            400,
            "cidr",
            "unknown field",
        ),
        (
            "the VPC's owner",
            patch(&w.a, "/v1/vpcs/vpc-a", json!({"resolver": "10.10.1.53"})),
            403,
            "",
            "only the operator",
        ),
        (
            "another account",
            patch(&w.b, "/v1/vpcs/vpc-a", json!({"resolver": "10.10.1.53"})),
            403,
            "",
            "only the operator",
        ),
        (
            "no such VPC",
            patch(
                &w.admin,
                "/v1/vpcs/vpc-zz",
                json!({"resolver": "10.10.1.53"}),
            ),
            404,
            "vpc",
            "no VPC",
        ),
    ];
    for (what, r, status, field, msg) in cases {
        let (st, f, m) = refusal(r);
        assert_eq!(st, status, "{what}: {m}");
        assert!(f.contains(field), "{what}: field {f}");
        assert!(m.contains(msg), "{what}: {m}");
    }
    assert_eq!(snapshot(&w), before, "refusals changed nothing");

    // The operator sets them; null removes one; the owner sees them.
    let v = patch(
        &w.admin,
        "/v1/vpcs/vpc-a",
        json!({"resolver": "10.10.3.1", "probe_address": "10.10.1.54"}),
    )
    .unwrap();
    assert_eq!(
        (&v["resolver"], &v["probe_address"]),
        (&json!("10.10.3.1"), &json!("10.10.1.54"))
    );
    assert_eq!(w.a.get("/v1/vpcs/vpc-a").unwrap(), v);
    assert_eq!(refusal(w.b.get("/v1/vpcs/vpc-a")).0, 403);
    // vpc-b's probe address lies in vpc-a's range too (the VPCs overlap): the host holds
    // it on one namespace, so vpc-a's new ENIs keep clear of it as well.
    let v = patch(
        &w.admin,
        "/v1/vpcs/vpc-b",
        json!({"probe_address": "10.10.3.2"}),
    )
    .unwrap();
    assert_eq!(v["probe_address"], "10.10.3.2");

    // New ENIs keep clear: refused when asked for, skipped when allocated (vsw-a3 is
    // 10.10.3.0/29: .1 is vpc-a's resolver now and .2 vpc-b's probe address, so .3 is the
    // lowest free address).
    let (st, field, msg) = refusal(w.a.post("/v1/endpoints", &endpoint_body("ep-x", "10.10.1.54")));
    assert_eq!((st, field.as_str()), (400, "zones[0].eni"), "{msg}");
    assert!(
        msg.contains("10.10.1.54 is VPC vpc-a's probe address"),
        "{msg}"
    );
    let ep =
        w.a.post(
            "/v1/endpoints",
            &json!({"id": "ep-x", "vpc": "vpc-a", "service": "epsrv-b", "zones": [{"vswitch": "vsw-a3"}]}),
        )
        .unwrap();
    assert_eq!(ep["zones"][0]["eni"], "10.10.3.3");
    // Another VPC's host address asked for: refused on the request's field, without
    // naming the other tenant's VPC.
    let (st, field, msg) = refusal(w.a.post(
        "/v1/endpoints",
        &json!({"id": "ep-y", "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a3", "eni": "10.10.3.2"}]}),
    ));
    assert_eq!((st, field.as_str()), (400, "zones[0].eni"), "{msg}");
    assert!(
        msg.contains("10.10.3.2 is an address of the forwarder host") && !msg.contains("vpc-b"),
        "{msg}"
    );
    // So do the provider's addresses.
    let (st, field, msg) = refusal(w.b.post(
        "/v1/services",
        &json!({"id": "s-p", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.11"}],
                "snat": ["10.10.3.2"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    ));
    assert_eq!((st, field.as_str()), (400, "snat[0]"), "{msg}");
    assert!(
        msg.contains("10.10.3.2 is VPC vpc-b's probe address"),
        "{msg}"
    );

    let v = patch(&w.admin, "/v1/vpcs/vpc-a", json!({"resolver": null})).unwrap();
    assert!(v.get("resolver").is_none(), "{v}");
    assert_eq!(v["probe_address"], "10.10.1.54", "the other stays");
    let last = w.srv.applied.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.vpc("vpc-a").unwrap().resolver, None);
    assert_eq!(
        last.vpc("vpc-b").unwrap().probe_address,
        Some("10.10.3.2".parse().unwrap())
    );
}

/// Interface services' load balancer health checks: set, checked (field named), replaced
/// and removed; not for gateway services.
#[test]
fn interface_services_take_load_balancer_health_checks() {
    let w = world();
    let h = json!({"probe": {"kind": "http", "path": "/healthz"}, "port": 80, "interval_ms": 1000,
                   "timeout_ms": 500, "healthy_threshold": 2, "unhealthy_threshold": 3});
    let svc = patch(&w.b, "/v1/services/epsrv-b", json!({"health": h})).unwrap();
    assert_eq!(svc["health"], h);
    let (st, field, msg) = refusal(patch(
        &w.b,
        "/v1/services/epsrv-b",
        json!({"health": {"port": 80, "interval_ms": 1}}),
    ));
    assert_eq!(
        (st, field.as_str()),
        (400, "services[0].health.interval_ms"),
        "{msg}"
    );
    let (st, field, _) = refusal(w.b.post(
        "/v1/services",
        &json!({"id": "s-gw", "vpc": "vpc-b", "type": "gateway", "backends": [{"zone": "zone-a", "address": "10.10.0.1"}],
                "snat": ["10.10.0.203"], "prefixes": ["100.64.10.0/24"], "health": {"port": 80},
                "listeners": [{"protocol": "tcp", "port": 80}]}),
    ));
    assert_eq!((st, field.as_str()), (400, "services[1].health"));
    let svc = patch(&w.b, "/v1/services/epsrv-b", json!({"health": null})).unwrap();
    assert!(svc.get("health").is_none(), "{svc}");
}

// ---------------------------------------------------------------------------------------
// Dual stack (issue 17): IPv6 ranges, dualstack services and endpoints, IPv6 rules.
// ---------------------------------------------------------------------------------------

/// The usual world plus two dual-stack VPCs (vpc-a6 of A: fd00:a::/56 with vsw-a61 in
/// zone-a; vpc-b6 of B: fd00:b::/56) and a dualstack service epsrv-b6 of B in vpc-b6.
fn dual_world() -> World {
    let w = world();
    for (id, account, iface, cidr, v6, vswitches) in [
        (
            "vpc-a6",
            "acct-a",
            "fc6",
            "10.60.0.0/16",
            "fd00:a::/56",
            json!([{"id": "vsw-a61", "zone": "zone-a", "cidr": "10.60.1.0/24", "ipv6_cidr": "fd00:a:0:1::/64"},
                   {"id": "vsw-a62", "zone": "zone-a", "cidr": "10.60.2.0/24"}]),
        ),
        (
            "vpc-b6",
            "acct-b",
            "fp6",
            "10.61.0.0/16",
            "fd00:b::/56",
            json!([{"id": "vsw-b60", "zone": "zone-a", "cidr": "10.61.0.0/24", "ipv6_cidr": "fd00:b::/64"}]),
        ),
    ] {
        w.admin
            .post(
                "/v1/vpcs",
                &json!({"id": id, "account": account, "cidr": cidr, "ipv6_cidr": v6,
                        "interface": iface, "vswitches": vswitches}),
            )
            .unwrap();
    }
    w.b.post("/v1/services", &dual_service("epsrv-b6")).unwrap();
    w
}

fn dual_service(id: &str) -> Value {
    json!({"id": id, "vpc": "vpc-b6", "ip_version": "dualstack", "whitelist": ["acct-a"],
           "auto_accept": true,
           "backends": [{"zone": "zone-a", "address": "10.61.0.10", "address6": "fd00:b::10"}],
           "snat": ["10.61.0.200"], "snat6": ["fd00:b::200"],
           "listeners": [{"protocol": "tcp", "port": 80}]})
}

#[test]
fn dual_stack_vpcs_services_and_endpoints_through_the_api() {
    let w = dual_world();
    let vpc = w.admin.get("/v1/vpcs/vpc-a6").unwrap();
    assert_eq!(vpc["ipv6_cidr"], "fd00:a::/56");
    assert_eq!(vpc["vswitches"][0]["ipv6_cidr"], "fd00:a:0:1::/64");
    assert!(vpc["vswitches"][1].get("ipv6_cidr").is_none(), "{vpc}");
    let svc = w.b.get("/v1/services/epsrv-b6").unwrap();
    assert_eq!(svc["ip_version"], "dualstack");
    assert_eq!(svc["snat6"], json!(["fd00:b::200"]));
    assert_eq!(svc["backends"][0]["address6"], "fd00:b::10");
    let avail = w.a.get("/v1/available-services/epsrv-b6").unwrap();
    assert_eq!(avail["ip_version"], "dualstack");
    // An ipv4 service reads as before: no dual-stack keys at all.
    let old = w.b.get("/v1/services/epsrv-b").unwrap();
    for key in ["ip_version", "snat6"] {
        assert!(old.get(key).is_none(), "{key}: {old}");
    }
    assert!(old["backends"][0].get("address6").is_none(), "{old}");

    // A dualstack endpoint: its ENI's IPv6 address allocated (the /64's ::0 reserved).
    let ep =
        w.a.post(
            "/v1/endpoints",
            &json!({"id": "ep-6", "vpc": "vpc-a6", "service": "epsrv-b6", "ip_version": "dualstack",
                    "zones": [{"vswitch": "vsw-a61"}]}),
        )
        .unwrap();
    assert_eq!(ep["ip_version"], "dualstack");
    assert_eq!(ep["zones"][0]["eni"], "10.60.1.1");
    assert_eq!(ep["zones"][0]["eni6"], "fd00:a:0:1::1");
    // Given, the next one.
    let ep2 = w
        .a
        .post(
            "/v1/endpoints",
            &json!({"id": "ep-62", "vpc": "vpc-a6", "service": "epsrv-b6", "ip_version": "dualstack",
                    "zones": [{"vswitch": "vsw-a61", "eni6": "fd00:a:0:1::64"}]}),
        )
        .unwrap();
    assert_eq!(ep2["zones"][0]["eni6"], "fd00:a:0:1::64");
    // The data path was given both, as stored.
    let applied = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    let stored = applied.endpoint("ep-62").unwrap();
    assert!(stored.ip_version.is_dualstack());
    assert_eq!(
        stored.zones[0].eni6,
        Some("fd00:a:0:1::64".parse().unwrap())
    );
    // The overview shows the IPv6 address with the ENI.
    let o = w.a.get("/v1/overview").unwrap();
    let e = o["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "ep-6")
        .unwrap();
    assert_eq!(e["zones"][0]["eni6"], "fd00:a:0:1::1", "{e}");

    // Switched to ipv4 the IPv6 address goes, and comes back allocated.
    let ep = patch(&w.a, "/v1/endpoints/ep-62", json!({"ip_version": "ipv4"})).unwrap();
    assert!(ep.get("ip_version").is_none(), "{ep}");
    assert!(ep["zones"][0].get("eni6").is_none(), "{ep}");
    let ep = patch(
        &w.a,
        "/v1/endpoints/ep-62",
        json!({"ip_version": "dualstack"}),
    )
    .unwrap();
    assert_eq!(ep["zones"][0]["eni6"], "fd00:a:0:1::2");

    // The service cannot drop IPv6 under its dualstack endpoints.
    let (st, field, msg) = refusal(patch(
        &w.b,
        "/v1/services/epsrv-b6",
        json!({"ip_version": "ipv4"}),
    ));
    assert_eq!((st, field.as_str()), (409, "ip_version"), "{msg}");
    assert!(msg.contains("ep-6") && msg.contains("ep-62"), "{msg}");

    // Survives a reopen as it was.
    let before = w.a.get("/v1/endpoints/ep-6").unwrap();
    let dir = w.srv.dir.clone();
    let mut w = w;
    w.srv.keep_files = true;
    drop(w);
    let state = RedbStore::open(&dir).unwrap().read().unwrap();
    state.validate().unwrap();
    let e = state.endpoint("ep-6").unwrap();
    assert_eq!(e.zones[0].eni6, Some("fd00:a:0:1::1".parse().unwrap()));
    let srv = serve(&dir);
    let admin = Client::new(&srv.url, Some(ADMIN.into()));
    let after = admin.get("/v1/endpoints/ep-6").unwrap();
    assert_eq!(after["zones"], before["zones"]);
}

#[test]
fn dual_stack_refusals_name_the_field() {
    let w = dual_world();
    let before = snapshot(&w);
    let ep6 = |zones: Value| json!({"id": "ep-x", "vpc": "vpc-a6", "service": "epsrv-b6", "ip_version": "dualstack", "zones": zones});
    let mut bad_svc = dual_service("s6");
    bad_svc["snat6"] = json!([]);
    bad_svc["snat"] = json!(["10.61.0.202"]);
    let mut svc_no_lb6 = dual_service("s7");
    svc_no_lb6["backends"][0]
        .as_object_mut()
        .unwrap()
        .remove("address6");
    svc_no_lb6["snat"] = json!(["10.61.0.201"]);
    let cases: Vec<(&str, anyhow::Result<Value>, u16, &str, &str)> = vec![
        ("vSwitch /64 outside the VPC's range", w.admin.post("/v1/vpcs", &json!({"id": "vpc-x", "account": "acct-a",
            "cidr": "10.62.0.0/16", "ipv6_cidr": "fd00:c::/56", "interface": "fx6",
            "vswitches": [{"id": "vsw-x", "zone": "zone-a", "cidr": "10.62.1.0/24", "ipv6_cidr": "fd00:d::/64"}]})),
            400, "vpcs[4].vswitches[0].ipv6_cidr", "not inside the VPC's fd00:c::/56"),
        ("vSwitch IPv6 without the VPC's", w.admin.post("/v1/vpcs", &json!({"id": "vpc-x", "account": "acct-a",
            "cidr": "10.62.0.0/16", "interface": "fx6",
            "vswitches": [{"id": "vsw-x", "zone": "zone-a", "cidr": "10.62.1.0/24", "ipv6_cidr": "fd00:d::/64"}]})),
            400, "vpcs[4].vswitches[0].ipv6_cidr", "has no ipv6_cidr"),
        ("bad IPv6 range", w.admin.post("/v1/vpcs", &json!({"id": "vpc-x", "account": "acct-a",
            "cidr": "10.62.0.0/16", "ipv6_cidr": "fd00:c::/129", "interface": "fx6"})), 400, "ipv6_cidr", "invalid"),
        ("dualstack service without IPv6 SNAT", w.b.post("/v1/services", &bad_svc), 400, "services[2].snat6", "between 1 and 8"),
        ("dualstack service without an IPv6 load balancer", w.b.post("/v1/services", &svc_no_lb6), 400,
            "services[2].backends[0].address6", "needs each load balancer's IPv6 address"),
        ("dualstack service in an IPv4 VPC", w.b.post("/v1/services", &json!({"id": "s8", "vpc": "vpc-b",
            "ip_version": "dualstack", "backends": [{"zone": "zone-a", "address": "10.10.0.11", "address6": "fd00:b::11"}],
            "snat": ["10.10.0.211"], "snat6": ["fd00:b::211"], "listeners": [{"protocol": "tcp", "port": 80}]})),
            400, "services[2].ip_version", "has no ipv6_cidr"),
        ("IPv6 SNAT on an ipv4 service", w.b.post("/v1/services", &json!({"id": "s9", "vpc": "vpc-b6",
            "backends": [{"zone": "zone-a", "address": "10.61.0.12"}], "snat": ["10.61.0.212"], "snat6": ["fd00:b::212"],
            "listeners": [{"protocol": "tcp", "port": 80}]})), 400, "services[2].snat6", "only dualstack services"),
        ("dualstack endpoint of an ipv4 service", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-a",
            "service": "epsrv-b", "ip_version": "dualstack", "zones": [{"vswitch": "vsw-a1"}]})), 400, "ip_version", "IPv4 only"),
        ("bad ip_version", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-a6",
            "service": "epsrv-b6", "ip_version": "ipv6", "zones": [{"vswitch": "vsw-a61"}]})), 400, "ip_version", "unknown variant"),
        ("reserved IPv6 ENI", w.a.post("/v1/endpoints", &ep6(json!([{"vswitch": "vsw-a61", "eni6": "fd00:a:0:1:ffff:ffff:ffff:fffe"}]))),
            400, "zones[0].eni6", "system-reserved"),
        ("IPv6 ENI outside its vSwitch", w.a.post("/v1/endpoints", &ep6(json!([{"vswitch": "vsw-a61", "eni6": "fd00:a:0:9::5"}]))),
            400, "zones[0].eni6", "not an address of vSwitch vsw-a61"),
        ("vSwitch without IPv6", w.a.post("/v1/endpoints", &ep6(json!([{"vswitch": "vsw-a62"}]))),
            400, "zones[0].vswitch", "has no ipv6_cidr"),
        ("IPv6 ENI on an ipv4 endpoint", w.a.post("/v1/endpoints", &json!({"id": "ep-x", "vpc": "vpc-a6",
            "service": "epsrv-b6", "zones": [{"vswitch": "vsw-a61", "eni6": "fd00:a:0:1::9"}]})), 400, "zones[0].eni6", "only dualstack"),
        ("IPv6 rule with host bits", w.a.post("/v1/security-groups", &json!({"id": "sg-x", "vpc": "vpc-a6",
            "rules": [{"direction": "ingress", "priority": 1, "action": "accept", "protocol": "tcp", "cidr": "fd00:a::1/56"}]})),
            400, "security_groups[0].rules[0].cidr", "host bits"),
    ];
    for (what, r, status, field, msg) in cases {
        let (got, err) = status_of(r);
        assert_eq!(got, status, "{what}: {err}");
        assert!(
            err["field"].as_str().unwrap_or("").contains(field),
            "{what}: field in {err}"
        );
        assert!(
            err["message"].as_str().unwrap_or("").contains(msg),
            "{what}: message in {err}"
        );
    }
    assert_eq!(snapshot(&w), before, "nothing changed");
    // An IPv6 ENI taken by another endpoint: refused at commit.
    w.a.post(
        "/v1/endpoints",
        &ep6(json!([{"vswitch": "vsw-a61", "eni6": "fd00:a:0:1::9"}])),
    )
    .unwrap();
    let mut again = ep6(json!([{"vswitch": "vsw-a61", "eni6": "fd00:a:0:1::9"}]));
    again["id"] = json!("ep-y");
    let (st, field, msg) = refusal(w.a.post("/v1/endpoints", &again));
    assert_eq!(st, 400, "{msg}");
    assert!(field.ends_with("zones[0].eni6"), "{field}");
    assert!(msg.contains("already in use in VPC vpc-a6"), "{msg}");
}

/// A dualstack gateway service with an IPv6 prefix, and its dualstack endpoint with an
/// IPv6 route target (allocated) and an IPv6 policy rule; the refusals name their field.
#[test]
fn dual_stack_gateway_endpoints_through_the_api() {
    let w = dual_world();
    let gw_service = |id: &str, ip: &str, snat: &str| {
        json!({"id": id, "vpc": "vpc-b6", "type": "gateway", "ip_version": ip,
               "whitelist": ["acct-a"], "auto_accept": true,
               "backends": [{"zone": "zone-a", "address": "10.61.0.10", "address6": "fd00:b::10"}],
               "snat": [snat], "snat6": ["fd00:b::202"],
               "prefixes": ["100.64.20.0/24", "fd00:64:20::/64"],
               "listeners": [{"protocol": "tcp", "port": 443}]})
    };
    let before = snapshot(&w);
    let mut v4 = gw_service("s-gw4", "ipv4", "10.61.0.203");
    v4["backends"][0]
        .as_object_mut()
        .unwrap()
        .remove("address6");
    v4.as_object_mut().unwrap().remove("snat6");
    let (st, field, msg) = refusal(w.b.post("/v1/services", &v4));
    assert_eq!(st, 400, "{msg}");
    assert!(field.ends_with(".prefixes[1]"), "{field}");
    assert!(msg.contains("need a dualstack service"), "{msg}");
    assert_eq!(snapshot(&w), before, "nothing changed");

    let svc =
        w.b.post(
            "/v1/services",
            &gw_service("s-gw", "dualstack", "10.61.0.202"),
        )
        .unwrap();
    assert_eq!(
        svc["prefixes"],
        json!(["100.64.20.0/24", "fd00:64:20::/64"])
    );
    let ep = w
        .a
        .post(
            "/v1/endpoints",
            &json!({"id": "ep-gw", "vpc": "vpc-a6", "service": "s-gw", "ip_version": "dualstack",
                    "gateway": "10.60.1.1",
                    "policy": [{"action": "accept", "protocol": "tcp", "cidr": "fd00:64:20::5/128"}]}),
        )
        .unwrap();
    assert_eq!(ep["gateway"], "10.60.1.1");
    assert_eq!(
        ep["gateway6"], "fd00:a:0:1::1",
        "the vSwitch's lowest free one"
    );
    assert_eq!(ep["policy"][0]["cidr"], "fd00:64:20::5/128");
    let applied = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        applied.endpoint("ep-gw").unwrap().gateway6,
        Some("fd00:a:0:1::1".parse().unwrap())
    );

    let before = snapshot(&w);
    let ipv4_ep = |extra: Value| {
        let mut e =
            json!({"id": "ep-x", "vpc": "vpc-a6", "service": "s-gw", "gateway": "10.60.1.2"});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        e
    };
    let cases: Vec<(&str, anyhow::Result<Value>, &str, &str)> = vec![
        (
            "gateway6 on an ipv4 gateway endpoint",
            w.a.post(
                "/v1/endpoints",
                &ipv4_ep(json!({"gateway6": "fd00:a:0:1::7"})),
            ),
            "gateway6",
            "only dualstack gateway endpoints",
        ),
        (
            "an IPv6 policy rule on an ipv4 gateway endpoint",
            w.a.post(
                "/v1/endpoints",
                &ipv4_ep(
                    json!({"policy": [{"action": "accept", "protocol": "all", "cidr": "::/0"}]}),
                ),
            ),
            "policy[0].cidr",
            "is ipv4",
        ),
        (
            "an IPv6 route target taken",
            w.a.post(
                "/v1/endpoints",
                &ipv4_ep(json!({"ip_version": "dualstack", "gateway6": "fd00:a:0:1::1"})),
            ),
            "gateway6",
            "already in use in VPC vpc-a6",
        ),
        (
            "no IPv6 range where the IPv4 route target is",
            w.a.post(
                "/v1/endpoints",
                &json!({"id": "ep-x", "vpc": "vpc-a6", "service": "s-gw",
                        "ip_version": "dualstack", "gateway": "10.60.2.1"}),
            ),
            "gateway6",
            "has no ipv6_cidr",
        ),
        (
            "gateway6 on an interface endpoint",
            w.a.post(
                "/v1/endpoints",
                &json!({"id": "ep-x", "vpc": "vpc-a6", "service": "epsrv-b6",
                        "zones": [{"vswitch": "vsw-a61"}], "gateway6": "fd00:a:0:1::8"}),
            ),
            "gateway6",
            "only endpoints of gateway services",
        ),
    ];
    for (what, r, field, msg) in cases {
        let (st, f, m) = refusal(r);
        assert_eq!(st, 400, "{what}: {m}");
        assert!(f.ends_with(field), "{what}: field {f}");
        assert!(m.contains(msg), "{what}: {m}");
    }
    assert_eq!(snapshot(&w), before, "nothing changed");
    // To ipv4 (the IPv6 rule would judge nothing: refused), then without it.
    let (st, field, _) = refusal(patch(
        &w.a,
        "/v1/endpoints/ep-gw",
        json!({"ip_version": "ipv4"}),
    ));
    assert_eq!(st, 400);
    assert!(field.ends_with("policy[0].cidr"), "{field}");
}

#[test]
fn security_group_and_acl_rules_take_ipv6_cidrs() {
    let w = dual_world();
    let sg = w
        .a
        .post(
            "/v1/security-groups",
            &json!({"id": "sg-6", "vpc": "vpc-a6", "rules": [
                {"direction": "ingress", "priority": 1, "action": "accept", "protocol": "tcp", "ports": [80, 80], "cidr": "fd00:a::/56"},
                {"direction": "ingress", "priority": 2, "action": "accept", "protocol": "all", "cidr": "10.60.0.0/16"}]}),
        )
        .unwrap();
    assert_eq!(sg["rules"][0]["cidr"], "fd00:a::/56");
    let r = w
        .a
        .post(
            "/v1/security-groups/sg-6/rules",
            &json!({"direction": "ingress", "priority": 3, "action": "drop", "protocol": "udp", "cidr": "::/0"}),
        )
        .unwrap();
    assert_eq!(r["cidr"], "::/0");
    let acl =
        w.a.post(
            "/v1/acls",
            &json!({"id": "acl-6", "vpc": "vpc-a6", "vswitches": ["vsw-a61"],
                    "ingress": [{"action": "accept", "protocol": "all", "cidr": "fd00::/8"}],
                    "egress": [{"action": "accept", "protocol": "all", "cidr": "::/0"}]}),
        )
        .unwrap();
    assert_eq!(acl["ingress"][0]["cidr"], "fd00::/8");
    // A dualstack endpoint with the group: stored with its rules as given.
    w.a.post(
        "/v1/endpoints",
        &json!({"id": "ep-6", "vpc": "vpc-a6", "service": "epsrv-b6", "ip_version": "dualstack",
                "zones": [{"vswitch": "vsw-a61"}], "security_groups": ["sg-6"]}),
    )
    .unwrap();
    let applied = w.srv.applied.0.lock().unwrap().last().unwrap().clone();
    let g = applied
        .security_groups
        .iter()
        .find(|g| g.id == "sg-6")
        .unwrap();
    assert_eq!(g.rules.len(), 3);
    assert_eq!(g.rules[2].cidr.to_string(), "::/0");
}

#[test]
fn the_openapi_document_describes_the_dual_stack_fields() {
    let w = world();
    let doc = w.a.get("/v1/openapi.json").unwrap();
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("NewVpc", "ipv6_cidr"),
        ("NewVSwitch", "ipv6_cidr"),
        ("NewService", "ip_version"),
        ("NewService", "snat6"),
        ("ServicePatch", "ip_version"),
        ("ServicePatch", "snat6"),
        ("NewEndpoint", "ip_version"),
        ("NewEndpoint", "gateway6"),
        ("EndpointPatch", "ip_version"),
        ("NewZone", "eni6"),
        ("ZoneView", "eni6"),
        ("EniOverview", "eni6"),
        ("AvailableService", "ip_version"),
    ] {
        // Flattened views list their own properties under `allOf`.
        let s = &schemas[schema];
        let own = std::iter::once(s).chain(s["allOf"].as_array().into_iter().flatten());
        assert!(
            own.into_iter().any(|x| x["properties"][field].is_object()),
            "{schema}.{field}: {s:#}"
        );
    }
}
