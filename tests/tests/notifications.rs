//! Connection notifications end to end: a service's provider subscribes an HTTP receiver
//! of the test's own (axum on 127.0.0.1), endpoints go through their connection
//! lifecycle through the API, and the receiver must get exactly the expected events, in
//! order, with the right fields (read with serde_json). Receivers that fail, answer 5xx,
//! never answer or are not there must neither slow the API down nor lose any API change,
//! and a full queue drops and counts. Most tests serve the API in this process (a real
//! redb store, a data path that accepts everything) to reach the notifier's counters and
//! options; the last one runs the real daemon.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State as AxState, http::StatusCode, routing::post};
use privatelink_tests::apidaemon::{ApiDaemon, two_parties, two_party_tokens};
use privatelink_user::{
    api::{self, App, Apply},
    client::{ApiError, Client},
    error::OpError,
    model::{Naming, State},
    notify::{CountersSnapshot, Notifier, NotifyOptions},
    ops,
    store::RedbStore,
};
use serde_json::{Value, json};

/// A data path that takes every state.
struct Accept;

impl Apply for Accept {
    fn check(&mut self, _: &State) -> Result<(), OpError> {
        Ok(())
    }
    fn apply(&mut self, _: &State) -> anyhow::Result<()> {
        Ok(())
    }
}

const ADMIN: &str = "admin-token-for-tests-0123456789";

/// The API served in this process with a notifier, and the lab's parties on it: accounts
/// acct-a (consumer) and acct-b (provider) with their VPCs, and acct-c.
struct World {
    rt: tokio::runtime::Runtime,
    notifier: Notifier,
    admin: Client,
    a: Client,
    b: Client,
    url: String,
    b_token: String,
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn world(o: NotifyOptions) -> World {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "privatelink-notify-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = RedbStore::open(&dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let notifier = {
        let _in = rt.enter();
        Notifier::start(o)
    };
    let app = Arc::new(tokio::sync::Mutex::new(App {
        state: store.read().unwrap(),
        store: Box::new(store),
        apply: Box::new(Accept),
        admin_token_sha256: ops::token_hash(ADMIN),
        dirty: false,
        naming: Naming::default(),
        notify: Some(notifier.clone()),
        store_lost: false,
        fleet: None,
    }));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, api::router(app)).await.unwrap() });
    let admin = Client::new(&url, Some(ADMIN.into()));
    let (ta, tb) = two_party_tokens(&admin).unwrap();
    admin
        .post("/v1/accounts", &json!({"id": "acct-c"}))
        .unwrap();
    World {
        rt,
        notifier,
        admin,
        a: Client::new(&url, Some(ta)),
        b: Client::new(&url, Some(tb.clone())),
        url,
        b_token: tb,
        dir,
    }
}

/// Options for tests: quick retries, short attempts.
fn quick() -> NotifyOptions {
    NotifyOptions {
        backoff: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..NotifyOptions::default()
    }
}

impl World {
    /// B's service `id` (whitelisting A), auto-accepting or not.
    fn service(&self, id: &str, auto_accept: bool) {
        self.b
            .post(
                "/v1/services",
                &json!({"id": id, "vpc": "vpc-b", "auto_accept": auto_accept,
                        "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                        "snat": [format!("10.10.0.{}", 200 + id.len())], "whitelist": ["acct-a"],
                        "listeners": [{"protocol": "tcp", "port": 80}]}),
            )
            .unwrap();
    }

    /// B subscribes service `service` to `events` (all if none) at `url`; the
    /// subscription's id.
    fn subscribe(&self, service: &str, url: &str, events: Option<&[&str]>) -> String {
        let mut body = json!({ "url": url });
        if let Some(e) = events {
            body["events"] = json!(e);
        }
        let n = self
            .b
            .post(&format!("/v1/services/{service}/notifications"), &body)
            .unwrap();
        assert_eq!(n["url"], url);
        n["id"].as_str().unwrap().to_string()
    }

    /// A's endpoint `id` to `service`.
    fn endpoint(&self, id: &str, service: &str) -> Value {
        self.a
            .post(
                "/v1/endpoints",
                &json!({"id": id, "vpc": "vpc-a", "service": service,
                        "zones": [{"vswitch": "vsw-a1"}]}),
            )
            .unwrap()
    }

    /// B's connection action on A's endpoint.
    fn act(&self, service: &str, endpoint: &str, action: &str) -> Value {
        self.b
            .call(
                "POST",
                &format!("/v1/services/{service}/connections/{endpoint}/{action}"),
                None,
            )
            .unwrap()
    }

    fn counters(&self) -> CountersSnapshot {
        self.notifier.counters().snapshot()
    }

    /// Waits (at most 10 s) until `done` holds for the counters; returns them.
    fn wait_counters(&self, done: impl Fn(&CountersSnapshot) -> bool) -> CountersSnapshot {
        let t = Instant::now();
        loop {
            let c = self.counters();
            if done(&c) || t.elapsed() > Duration::from_secs(10) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How a receiver answers.
#[derive(Clone)]
enum Behaviour {
    /// These statuses, in turn, then 200.
    Answer(Vec<u16>),
    /// Reads the request and never answers.
    Hang,
}

/// An HTTP receiver on 127.0.0.1: every POST it got (status answered, JSON body).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(u16, Value)>>>,
}

#[derive(Clone)]
struct ReceiverState {
    answers: Arc<Mutex<VecDeque<u16>>>,
    hang: bool,
    got: Arc<Mutex<Vec<(u16, Value)>>>,
}

async fn receive(AxState(r): AxState<ReceiverState>, body: Bytes) -> StatusCode {
    let v: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| json!({"unparsable": e.to_string()}));
    if r.hang {
        r.got.lock().unwrap().push((0, v));
        return std::future::pending().await;
    }
    let status = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    r.got.lock().unwrap().push((status, v));
    StatusCode::from_u16(status).unwrap()
}

/// A receiver served on `listener` by `rt`.
fn serve_receiver(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    b: Behaviour,
) -> Receiver {
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (answers, hang) = match b {
        Behaviour::Answer(a) => (a.into(), false),
        Behaviour::Hang => (VecDeque::new(), true),
    };
    let state = ReceiverState {
        answers: Arc::new(Mutex::new(answers)),
        hang,
        got: got.clone(),
    };
    let app = Router::new()
        .route("/events", post(receive))
        .with_state(state);
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(l, app).await.unwrap()
    });
    Receiver {
        url: format!("http://{addr}/events"),
        got,
    }
}

fn receiver(w: &World, b: Behaviour) -> Receiver {
    serve_receiver(
        &w.rt,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        b,
    )
}

impl Receiver {
    /// The bodies received with a 2xx answer.
    fn taken(&self) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(s, _)| (200..300).contains(s))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn attempts(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits (at most 10 s) for `n` taken events, then a little longer to see that no
    /// more come; returns them all.
    fn wait_for(&self, n: usize) -> Vec<Value> {
        let t = Instant::now();
        while self.taken().len() < n && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.taken()
    }
}

/// (event, endpoint, state, previous_state) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or("?").to_string(),
                e["endpoint"].as_str().unwrap_or("?").to_string(),
                e["state"].as_str().unwrap_or("?").to_string(),
                e["previous_state"].clone(),
            )
        })
        .collect()
}

fn row(event: &str, ep: &str, state: &str, previous: Value) -> (String, String, String, Value) {
    (event.into(), ep.into(), state.into(), previous)
}

/// `2026-12-01T21:34:07Z`.
fn is_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
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

#[test]
fn the_provider_hears_each_step_of_a_connection_in_order() {
    let w = world(quick());
    w.service("epsrv-b", false);
    let r = receiver(&w, Behaviour::Answer(vec![]));
    let nid = w.subscribe("epsrv-b", &r.url, None);
    w.endpoint("ep-a", "epsrv-b");
    for action in ["accept", "disable", "enable", "reject"] {
        w.act("epsrv-b", "ep-a", action);
    }
    w.a.delete("/v1/endpoints/ep-a").unwrap();
    let got = r.wait_for(6);
    assert_eq!(
        summary(&got),
        [
            row("connect", "ep-a", "pending", Value::Null),
            row("accept", "ep-a", "connected", json!("pending")),
            row("disconnect", "ep-a", "disconnected", json!("connected")),
            row("accept", "ep-a", "connected", json!("disconnected")),
            row("reject", "ep-a", "rejected", json!("connected")),
            row("delete", "ep-a", "deleted", json!("rejected")),
        ],
        "{got:#?}"
    );
    let mut ids = std::collections::BTreeSet::new();
    for e in &got {
        assert_eq!(e["service"], "epsrv-b", "{e}");
        assert_eq!(e["consumer_account"], "acct-a", "{e}");
        assert_eq!(e["notification"], nid.as_str(), "{e}");
        assert!(is_rfc3339_utc(e["time"].as_str().unwrap()), "{e}");
        let id = e["id"].as_str().unwrap();
        assert!(id.starts_with("evt-"), "{e}");
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 6, "every event has its own id: {got:#?}");
    let c = w.counters();
    assert_eq!(
        (c.delivered, c.retried, c.failed, c.dropped),
        (6, 0, 0, 0),
        "{c:?}"
    );
    // A refused change is no event.
    let (status, _) =
        status_of(w.b.call("POST", "/v1/services/epsrv-b/connections/ep-a/accept", None));
    assert_eq!(status, 404);
    assert_eq!(r.wait_for(6).len(), 6);
}

#[test]
fn an_auto_accepted_endpoint_is_a_request_and_its_acceptance() {
    let w = world(quick());
    w.service("epsrv-auto", true);
    let r = receiver(&w, Behaviour::Answer(vec![]));
    w.subscribe("epsrv-auto", &r.url, None);
    let ep = w.endpoint("ep-auto", "epsrv-auto");
    assert_eq!(ep["connection"], "connected");
    let got = r.wait_for(2);
    assert_eq!(
        summary(&got),
        [
            row("connect", "ep-auto", "pending", Value::Null),
            row("accept", "ep-auto", "connected", json!("pending")),
        ]
    );
    assert_ne!(got[0]["id"], got[1]["id"]);
}

#[test]
fn a_subscription_gets_only_the_events_it_asked_for() {
    let w = world(quick());
    w.service("epsrv-b", false);
    w.service("epsrv-other", false);
    let some = receiver(&w, Behaviour::Answer(vec![]));
    let all = receiver(&w, Behaviour::Answer(vec![]));
    let other = receiver(&w, Behaviour::Answer(vec![]));
    w.subscribe("epsrv-b", &some.url, Some(&["reject", "delete"]));
    w.subscribe("epsrv-b", &all.url, None);
    w.subscribe("epsrv-other", &other.url, None);
    w.endpoint("ep-a", "epsrv-b");
    w.act("epsrv-b", "ep-a", "accept");
    w.act("epsrv-b", "ep-a", "reject");
    w.a.delete("/v1/endpoints/ep-a").unwrap();
    assert_eq!(
        summary(&all.wait_for(4))
            .into_iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        ["connect", "accept", "reject", "delete"]
    );
    let got = some.wait_for(2);
    assert_eq!(
        summary(&got),
        [
            row("reject", "ep-a", "rejected", json!("connected")),
            row("delete", "ep-a", "deleted", json!("rejected")),
        ]
    );
    // Another service's subscription hears nothing of epsrv-b's endpoints.
    assert_eq!(other.attempts(), 0);
    // The same event reaches both subscriptions under one id.
    let all_got = all.taken();
    assert_eq!(all_got[2]["id"], got[0]["id"]);
    assert_ne!(all_got[2]["notification"], got[0]["notification"]);
}

#[test]
fn a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt() {
    let w = world(quick());
    w.service("epsrv-b", false);
    let r = receiver(&w, Behaviour::Answer(vec![500, 503]));
    w.subscribe("epsrv-b", &r.url, Some(&["connect"]));
    w.endpoint("ep-a", "epsrv-b");
    let got = r.wait_for(1);
    assert_eq!(
        summary(&got),
        [row("connect", "ep-a", "pending", Value::Null)]
    );
    let attempts = r.got.lock().unwrap().clone();
    assert_eq!(
        attempts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    // Every attempt carried the same event.
    assert!(attempts.iter().all(|(_, v)| v == &got[0]), "{attempts:#?}");
    let c = w.wait_counters(|c| c.delivered == 1);
    assert_eq!(
        (c.delivered, c.retried, c.failed, c.dropped),
        (1, 2, 0, 0),
        "{c:?}"
    );
}

#[test]
fn a_4xx_answer_is_not_retried_and_5xx_are_given_up_after_the_last_attempt() {
    let w = world(NotifyOptions {
        attempts: 3,
        ..quick()
    });
    w.service("epsrv-b", false);
    let refusing = receiver(&w, Behaviour::Answer(vec![404]));
    let failing = receiver(&w, Behaviour::Answer(vec![500, 500, 500]));
    w.subscribe("epsrv-b", &refusing.url, Some(&["connect"]));
    w.subscribe("epsrv-b", &failing.url, Some(&["connect"]));
    w.endpoint("ep-a", "epsrv-b");
    let c = w.wait_counters(|c| c.failed == 2);
    assert_eq!(
        (c.delivered, c.retried, c.failed, c.dropped),
        (0, 2, 2, 0),
        "{c:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((refusing.attempts(), failing.attempts()), (1, 3));
}

#[test]
fn dead_receivers_neither_block_nor_lose_api_calls() {
    let w = world(NotifyOptions {
        attempts: 3,
        timeout: Duration::from_millis(800),
        ..quick()
    });
    w.service("epsrv-b", false);
    // A closed port, a receiver that never answers, and a working one.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/events", l.local_addr().unwrap())
    };
    let hanging = receiver(&w, Behaviour::Hang);
    let good = receiver(&w, Behaviour::Answer(vec![]));
    w.subscribe("epsrv-b", &closed, None);
    w.subscribe("epsrv-b", &hanging.url, None);
    w.subscribe("epsrv-b", &good.url, None);
    let t = Instant::now();
    let mut expected = Vec::new();
    for i in 0..8 {
        let id = format!("ep-{i}");
        let call = Instant::now();
        w.endpoint(&id, "epsrv-b");
        w.act("epsrv-b", &id, "accept");
        expected.push(row("connect", &id, "pending", Value::Null));
        expected.push(row("accept", &id, "connected", json!("pending")));
        assert!(
            call.elapsed() < Duration::from_secs(5),
            "two API calls took {:?}",
            call.elapsed()
        );
    }
    for i in (0..8).step_by(2) {
        let id = format!("ep-{i}");
        w.a.delete(&format!("/v1/endpoints/{id}")).unwrap();
        expected.push(row("delete", &id, "deleted", json!("connected")));
    }
    // 20 changes, while every event waits on the dead receivers for seconds.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let eps = w.admin.get("/v1/endpoints").unwrap();
    let state: Vec<(&str, &str)> = eps
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["connection"].as_str().unwrap()))
        .collect();
    assert_eq!(
        state,
        [
            ("ep-1", "connected"),
            ("ep-3", "connected"),
            ("ep-5", "connected"),
            ("ep-7", "connected"),
        ]
    );
    // The working receiver got everything, in order, long before the dead ones would
    // have let a single queue through (3 attempts of 0.8 s each per event).
    let got = good.wait_for(expected.len());
    assert_eq!(summary(&got), expected);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The hanging receiver holds one event at a time.
    assert!(hanging.attempts() >= 1);
    let c = w.counters();
    assert_eq!(c.dropped, 0, "{c:?}");
    assert!(
        c.retried >= 2,
        "the dead receivers' first events were retried: {c:?}"
    );
}

#[test]
fn a_full_queue_drops_and_counts_without_holding_up_the_api() {
    // Two places in the queue, a receiver that takes the first event and never answers.
    let w = world(NotifyOptions {
        queue: 2,
        timeout: Duration::from_secs(60),
        ..quick()
    });
    w.service("epsrv-b", false);
    let hanging = receiver(&w, Behaviour::Hang);
    w.subscribe("epsrv-b", &hanging.url, Some(&["connect"]));
    let t = Instant::now();
    for i in 0..5 {
        w.endpoint(&format!("ep-{i}"), "epsrv-b");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        w.admin
            .get("/v1/endpoints")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // One event in delivery and one waiting hold the two places; three were dropped.
    let c = w.counters();
    assert_eq!((c.delivered, c.failed, c.dropped), (0, 0, 3), "{c:?}");
    std::thread::sleep(Duration::from_millis(300));
    let got = hanging.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].1["endpoint"], "ep-0");
}

#[test]
fn only_the_services_owner_manages_its_notifications() {
    let w = world(quick());
    w.service("epsrv-b", false);
    let path = "/v1/services/epsrv-b/notifications";
    let body = json!({"url": "http://127.0.0.1:9/events"});
    // The consumer (another account): forbidden, and nothing is added.
    for (status, e) in [
        status_of(w.a.post(path, &body)),
        status_of(w.a.get(path)),
        status_of(w.a.delete(&format!("{path}/nfn-000000000000"))),
    ] {
        assert_eq!(
            (status, e["code"].as_str()),
            (403, Some("permission_denied")),
            "{e}"
        );
    }
    // A service that does not exist.
    let (status, e) = status_of(w.b.post("/v1/services/nope/notifications", &body));
    assert_eq!((status, e["field"].as_str()), (404, Some("service")), "{e}");
    // The operator reads them, but does not subscribe a provider.
    let (status, _) = status_of(w.admin.post(path, &body));
    assert_eq!(status, 403);
    let n = w.b.post(path, &body).unwrap();
    let id = n["id"].as_str().unwrap();
    assert!(id.starts_with("nfn-"), "{n}");
    assert_eq!(
        n["events"],
        json!(["connect", "accept", "reject", "disconnect", "delete"])
    );
    assert_eq!(w.admin.get(path).unwrap(), json!([n.clone()]));
    assert_eq!(w.b.get(path).unwrap(), json!([n.clone()]));
    let (status, _) = status_of(w.a.delete(&format!("{path}/{id}")));
    assert_eq!(status, 403);
    let (status, _) = status_of(w.admin.delete(&format!("{path}/{id}")));
    assert_eq!(status, 403);
    // The service shows them to its owner.
    let svc = w.b.get("/v1/services/epsrv-b").unwrap();
    assert_eq!(svc["notifications"], json!([n.clone()]));
    // Bad requests name their field.
    for (bad, field) in [
        (json!({"url": "https://x/"}), "url"),
        (
            json!({"url": "http://x/", "events": ["accept", "bogus"]}),
            "events[1]",
        ),
        (json!({"url": "http://x/", "events": []}), "events"),
        (json!({"url": "http://x/", "extra": 1}), "extra"),
    ] {
        let (status, e) = status_of(w.b.post(path, &bad));
        assert_eq!(status, 400, "{bad}: {e}");
        assert!(
            e["field"].as_str().unwrap_or("").starts_with(field),
            "{bad}: {e}"
        );
    }
    w.b.delete(&format!("{path}/{id}")).unwrap();
    assert_eq!(w.b.get(path).unwrap(), json!([]));
    let (status, e) = status_of(w.b.delete(&format!("{path}/{id}")));
    assert_eq!((status, e["field"].as_str()), (404, Some("notification")));
}

#[test]
fn the_openapi_document_lists_the_notification_routes() {
    let w = world(quick());
    let doc = w.admin.get("/v1/openapi.json").unwrap();
    for (path, method) in [
        ("/v1/services/{id}/notifications", "post"),
        ("/v1/services/{id}/notifications", "get"),
        ("/v1/services/{id}/notifications/{nid}", "delete"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{path} {method}");
    }
    let props = &doc["components"]["schemas"]["NewNotification"]["properties"];
    assert!(
        props["url"].is_object() && props["events"].is_object(),
        "{props}"
    );
}

#[test]
fn the_cli_adds_lists_and_removes_notifications() {
    let w = world(quick());
    w.service("epsrv-b", false);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(privatelink_tests::lab::privatelink_bin().unwrap())
            .args(["--api", &w.url, "--token", &w.b_token])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = run(&[
        "--json",
        "service",
        "notification",
        "add",
        "epsrv-b",
        "http://127.0.0.1:9/hook",
        "--event",
        "accept,reject",
        "--event",
        "delete",
    ]);
    assert!(ok, "{out}");
    let n: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(n["events"], json!(["accept", "reject", "delete"]));
    let id = n["id"].as_str().unwrap().to_string();
    let (ok, out) = run(&["service", "notification", "list", "epsrv-b"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&id) && out.contains("http://127.0.0.1:9/hook"),
        "{out}"
    );
    assert!(out.contains("accept, reject, delete"), "{out}");
    let (ok, out) = run(&["service", "notification", "add", "epsrv-b", "ftp://x/"]);
    assert!(!ok && out.contains("url"), "{out}");
    let (ok, out) = run(&["service", "notification", "remove", "epsrv-b", &id]);
    assert!(ok, "{out}");
    assert_eq!(
        w.b.get("/v1/services/epsrv-b/notifications").unwrap(),
        json!([])
    );
}

/// The daemon in API mode notifies from its own network namespace: the receiver listens on
/// that namespace's loopback.
#[test]
fn the_daemon_notifies_its_services_providers() {
    let d = ApiDaemon::start("plntf").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ns = d.ns.name.clone();
    let listener = std::thread::spawn(move || {
        privatelink_tests::netns::enter_thread(&ns).unwrap();
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    })
    .join()
    .unwrap();
    let r = serve_receiver(&rt, listener, Behaviour::Answer(vec![503]));
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (a, b) = two_parties(&admin, &d.url).unwrap();
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "whitelist": ["acct-a"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    b.post(
        "/v1/services/epsrv-b/notifications",
        &json!({"url": r.url, "events": ["connect", "accept"]}),
    )
    .unwrap();
    a.post(
        "/v1/endpoints",
        &json!({"id": "ep-a", "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.100"}]}),
    )
    .unwrap();
    b.call("POST", "/v1/services/epsrv-b/connections/ep-a/accept", None)
        .unwrap();
    // The first attempt was answered 503: retried after the default half second.
    let got = r.wait_for(2);
    assert_eq!(
        summary(&got),
        [
            row("connect", "ep-a", "pending", Value::Null),
            row("accept", "ep-a", "connected", json!("pending")),
        ],
        "{}",
        d.log()
    );
    assert_eq!(r.attempts(), 3);
    // A dead receiver: one warning when the daemon gives up (after 5 attempts).
    let closed = {
        let ns = d.ns.name.clone();
        std::thread::spawn(move || {
            privatelink_tests::netns::enter_thread(&ns).unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/events", l.local_addr().unwrap())
        })
        .join()
        .unwrap()
    };
    b.post(
        "/v1/services/epsrv-b/notifications",
        &json!({"url": closed, "events": ["reject"]}),
    )
    .unwrap();
    let t = Instant::now();
    b.call("POST", "/v1/services/epsrv-b/connections/ep-a/reject", None)
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let t = Instant::now();
    let given_up = |log: &str| {
        log.lines().any(|l| {
            l.contains("WARN") && l.contains(&closed) && l.contains("gave up after 5 attempts")
        })
    };
    while !given_up(&d.log()) && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = d.log();
    assert!(given_up(&log), "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains(&closed)).count(),
        1,
        "one line per failed delivery: {log}"
    );
}
