//! Connection notifications: the connection events of a service's endpoints (a consumer's
//! request, the provider's accept, reject and disconnect, the endpoint's deletion), each
//! POSTed as JSON to the URLs its provider subscribed (`EndpointService::notifications`).
//!
//! Events are derived from the committed states before and after each API change
//! (`changes`), so no operation can forget one. Delivery never holds up the API:
//! `Notifier::publish` only queues, and a full queue drops the notification (counted and
//! logged). A task delivers one notification at a time per destination (a destination
//! sees its events in order) and to several destinations at once (one that is slow or dead
//! delays only its own), retrying connection errors, timeouts and 5xx answers with
//! exponential backoff. Only the API mode notifies: a state file re-read on SIGHUP sends
//! nothing.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use http_body_util::Full;
use hyper::{
    Request, StatusCode,
    body::Bytes,
    header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::{Id, JoinSet},
    time::timeout,
};
use tracing::{debug, warn};

use crate::model::{Connection, ConnectionEvent, Endpoint, HttpUrl, Notification, State};

/// One connection event of an endpoint, derived from two committed states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub event: ConnectionEvent,
    pub service: String,
    pub endpoint: String,
    pub consumer_account: String,
    /// The connection's state after the event; none when the endpoint was deleted.
    pub state: Option<Connection>,
    /// Its state before the event; none when the endpoint is new.
    pub previous: Option<Connection>,
}

impl Change {
    fn of(e: &Endpoint, event: ConnectionEvent, state: Option<Connection>) -> Self {
        Self {
            event,
            service: e.service.clone(),
            endpoint: e.id.clone(),
            consumer_account: e.account.clone(),
            state,
            previous: None,
        }
    }

    fn from(mut self, previous: Connection) -> Self {
        self.previous = Some(previous);
        self
    }
}

/// The connection events between `before` and `after`, in the order of `after`'s
/// endpoints, then the deletions in `before`'s order. A new endpoint is its consumer's
/// request (`connect`, pending), followed, if it is not pending (an auto-accepting
/// service), by the event of the state it is in (`accept`). An endpoint whose connection
/// changed reports the state it entered: connected `accept` (enabled again included),
/// rejected `reject`, disconnected `disconnect`. One that is gone reports `delete`. (An
/// endpoint that moved to another service is deleted from the old one and new to the
/// new one; the API never moves one.)
pub fn changes(before: &State, after: &State) -> Vec<Change> {
    let old: HashMap<&str, &Endpoint> = before
        .endpoints
        .iter()
        .map(|e| (e.id.as_str(), e))
        .collect();
    let mut out = Vec::new();
    for e in &after.endpoints {
        match old.get(e.id.as_str()) {
            Some(o) if o.service == e.service => {
                if o.connection != e.connection {
                    let event = ConnectionEvent::entering(e.connection);
                    out.push(Change::of(e, event, Some(e.connection)).from(o.connection));
                }
            }
            moved => {
                out.extend(moved.map(|o| deleted(o)));
                let pending = Connection::Pending;
                out.push(Change::of(e, ConnectionEvent::Connect, Some(pending)));
                if e.connection != pending {
                    let event = ConnectionEvent::entering(e.connection);
                    out.push(Change::of(e, event, Some(e.connection)).from(pending));
                }
            }
        }
    }
    let kept: HashSet<&str> = after.endpoints.iter().map(|e| e.id.as_str()).collect();
    out.extend(
        before
            .endpoints
            .iter()
            .filter(|o| !kept.contains(o.id.as_str()))
            .map(deleted),
    );
    out
}

fn deleted(o: &Endpoint) -> Change {
    Change::of(o, ConnectionEvent::Delete, None).from(o.connection)
}

/// The delivery counters (since the daemon started), for the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Notifications a receiver took: it answered 2xx.
    delivered: AtomicU64,
    /// Attempts made again after a connection error, a timeout or a 5xx answer (one per
    /// attempt after the first).
    retried: AtomicU64,
    /// Notifications given up on: the receiver answered neither 2xx nor 5xx (a 4xx; a
    /// redirect is not followed), or every attempt failed.
    failed: AtomicU64,
    /// Notifications never queued, because the queue was full.
    dropped: AtomicU64,
}

/// The counters' values at one moment (see `Counters` for what each counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    pub dropped: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            delivered: self.delivered.load(Relaxed),
            retried: self.retried.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }
}

/// How notifications are queued and delivered.
#[derive(Clone, Debug)]
pub struct NotifyOptions {
    /// The most notifications waiting or being delivered, all destinations together.
    pub queue: usize,
    /// The most destinations (`host:port`) delivered to at once.
    pub workers: usize,
    /// Attempts per notification, the first included.
    pub attempts: u32,
    /// The limit of one attempt: connecting, sending, and the answer's status line.
    pub timeout: Duration,
    /// The wait before the first retry; it doubles before each next one.
    pub backoff: Duration,
}

impl Default for NotifyOptions {
    /// 1024 queued, 16 destinations at once, 5 attempts of at most 2 s, retried after
    /// 0.5, 1, 2 and 4 s: a dead receiver holds its destination about 18 s per event.
    fn default() -> Self {
        Self {
            queue: 1024,
            workers: 16,
            attempts: 5,
            timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(500),
        }
    }
}

/// One notification to deliver: an event for one subscription.
struct Delivery {
    url: HttpUrl,
    body: Bytes,
    /// What it is, for the logs: `notification N of service S: E of endpoint P (event
    /// ID) to URL`.
    what: String,
}

/// A queued delivery, holding its place in the queue until it is done.
struct Queued {
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
}

/// The notifier's handle: queues the events of each committed change. Dropping every
/// handle stops the delivery task.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Queued>,
    /// The queue's bound: one permit per notification waiting or being delivered (the
    /// channel itself is unbounded; nothing enters it without a permit).
    slots: Arc<Semaphore>,
    counters: Arc<Counters>,
}

impl Notifier {
    /// Starts the delivery task on the current tokio runtime.
    pub fn start(o: NotifyOptions) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let n = Self {
            tx,
            slots: Arc::new(Semaphore::new(o.queue)),
            counters: counters.clone(),
        };
        tokio::spawn(dispatch(rx, o, counters));
        n
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Queues a notification of each event between the committed states `before` and
    /// `after` for each subscription of its service that wants it (the service's
    /// subscriptions in `after`, or in `before` if it is gone). Never waits: a full queue
    /// drops the notification, counted and logged.
    pub fn publish(&self, before: &State, after: &State) {
        let subscribed = |s: &State| s.services.iter().any(|x| !x.notifications.is_empty());
        if !subscribed(before) && !subscribed(after) {
            return;
        }
        let time = crate::monitor::rfc3339(SystemTime::now());
        for c in changes(before, after) {
            let Some(svc) = after
                .service(&c.service)
                .or_else(|| before.service(&c.service))
            else {
                continue;
            };
            let event_id = event_id();
            for n in svc.notifications.iter().filter(|n| n.wants(c.event)) {
                self.queue(delivery(&c, n, &event_id, &time));
            }
        }
    }

    fn queue(&self, d: Result<Delivery, String>) {
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                // Validation keeps unusable URLs out of the state; counted, never silent.
                self.counters.failed.fetch_add(1, Relaxed);
                return warn!("notification not sent: {e}");
            }
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.counters.dropped.fetch_add(1, Relaxed);
            return warn!("{}: dropped, the notification queue is full", d.what);
        };
        let q = Queued {
            delivery: d,
            _slot: slot,
        };
        if let Err(mpsc::error::SendError(q)) = self.tx.send(q) {
            self.counters.dropped.fetch_add(1, Relaxed);
            warn!("{}: dropped, the notifier has stopped", q.delivery.what);
        }
    }
}

/// A fresh event id: `evt-` and 16 hex digits (a receiver tells retries apart by it).
fn event_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the kernel's random source");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("evt-{hex}")
}

/// The notification of change `c` for subscription `n`: its URL and JSON body.
fn delivery(c: &Change, n: &Notification, event_id: &str, time: &str) -> Result<Delivery, String> {
    let what = format!(
        "notification {} of service {}: {} of endpoint {} (event {event_id}) to {}",
        n.id,
        c.service,
        json!(c.event).as_str().unwrap_or_default(),
        c.endpoint,
        n.url
    );
    let url = n.url.parse().map_err(|e| format!("{what}: {e}"))?;
    let body = json!({
        "id": event_id,
        "event": c.event,
        "service": c.service,
        "endpoint": c.endpoint,
        "consumer_account": c.consumer_account,
        "state": c.state.map_or(json!("deleted"), |s| json!(s)),
        "previous_state": c.previous,
        "notification": n.id,
        "time": time,
    });
    Ok(Delivery {
        url,
        body: Bytes::from(body.to_string()),
        what,
    })
}

/// The delivery task: per destination (`host:port`) a backlog delivered in order, one at a
/// time; up to `o.workers` destinations at once, taken in the order they became ready.
/// Ends when every `Notifier` handle is gone.
async fn dispatch(mut rx: mpsc::UnboundedReceiver<Queued>, o: NotifyOptions, c: Arc<Counters>) {
    let mut backlog: HashMap<String, VecDeque<Queued>> = HashMap::new();
    // Destinations with a backlog and no delivery in flight.
    let mut ready: VecDeque<String> = VecDeque::new();
    // The destination of each delivery in flight.
    let mut busy: HashMap<Id, String> = HashMap::new();
    let mut inflight = JoinSet::new();
    loop {
        tokio::select! {
            q = rx.recv() => {
                let Some(q) = q else { break };
                let dest = q.delivery.url.authority();
                let waiting = backlog.entry(dest.clone()).or_default();
                waiting.push_back(q);
                if waiting.len() == 1 && !busy.values().any(|d| *d == dest) {
                    ready.push_back(dest);
                }
            }
            Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(dest) = busy.remove(&id)
                    && backlog.contains_key(&dest)
                {
                    ready.push_back(dest);
                }
            }
        }
        while inflight.len() < o.workers
            && let Some(dest) = ready.pop_front()
        {
            let Some(waiting) = backlog.get_mut(&dest) else {
                continue;
            };
            let Some(q) = waiting.pop_front() else {
                continue;
            };
            if waiting.is_empty() {
                backlog.remove(&dest);
            }
            let (o, c) = (o.clone(), c.clone());
            let task = inflight.spawn(async move { deliver(q, &o, &c).await });
            busy.insert(task.id(), dest);
        }
    }
}

/// Delivers one notification: up to `o.attempts` attempts, retrying connection errors,
/// timeouts and 5xx answers after a backoff that doubles; one warning if it is given up.
async fn deliver(q: Queued, o: &NotifyOptions, c: &Counters) {
    let d = &q.delivery;
    let mut wait = o.backoff;
    for attempt in 1..=o.attempts {
        let why = match post(d, o.timeout).await {
            Ok(s) if s.is_success() => {
                c.delivered.fetch_add(1, Relaxed);
                return debug!("{}: delivered ({s})", d.what);
            }
            Ok(s) if s.is_server_error() => format!("answered {s}"),
            Ok(s) => {
                c.failed.fetch_add(1, Relaxed);
                return warn!("{}: not delivered: answered {s} (not retried)", d.what);
            }
            Err(e) => e,
        };
        if attempt == o.attempts {
            c.failed.fetch_add(1, Relaxed);
            return warn!(
                "{}: not delivered: gave up after {attempt} attempts; the last {why}",
                d.what
            );
        }
        debug!("{}: attempt {attempt} {why}; retrying in {wait:?}", d.what);
        c.retried.fetch_add(1, Relaxed);
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2);
    }
}

/// One attempt: `POST` the body to the URL (HTTP/1.1, `Connection: close`) and wait, at
/// most `limit` in all, for the answer's status.
async fn post(d: &Delivery, limit: Duration) -> Result<StatusCode, String> {
    let authority = d.url.authority();
    let attempt = async {
        let stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("could not connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("failed: {e}"))?;
        let req = Request::post(d.url.target.as_str())
            .header(HOST, &authority)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "privatelink")
            .header(CONNECTION, "close")
            .body(Full::new(d.body.clone()))
            .map_err(|e| format!("failed: {e}"))?;
        // The connection is driven here, beside the request, until the answer's head.
        let response = sender.send_request(req);
        tokio::pin!(response);
        let response = tokio::select! {
            r = &mut response => r,
            _ = conn => response.await,
        };
        response
            .map(|r| r.status())
            .map_err(|e| format!("failed: {e}"))
    };
    timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("got no answer within {limit:?}")))
}

#[cfg(test)]
mod tests {
    use ConnectionEvent::*;

    use super::*;
    use crate::model::Connection::*;

    const LAB: &str = include_str!("../../tests/lab.toml");

    fn lab() -> State {
        crate::model::parse_state(LAB).unwrap()
    }

    /// (event, endpoint, state, previous) of each change.
    fn summary(
        before: &State,
        after: &State,
    ) -> Vec<(
        ConnectionEvent,
        String,
        Option<Connection>,
        Option<Connection>,
    )> {
        changes(before, after)
            .into_iter()
            .map(|c| (c.event, c.endpoint, c.state, c.previous))
            .collect()
    }

    fn with(s: &State, f: impl FnOnce(&mut State)) -> State {
        let mut s = s.clone();
        f(&mut s);
        s
    }

    #[test]
    fn a_state_compared_with_itself_has_no_events() {
        let s = lab();
        assert!(!s.endpoints.is_empty());
        assert_eq!(changes(&s, &s), []);
        // Changes other than connections are no events.
        let renamed = with(&s, |s| s.endpoints[0].name = "renamed".into());
        assert_eq!(changes(&s, &renamed), []);
    }

    #[test]
    fn a_new_endpoint_is_a_request_and_an_auto_accepted_one_its_acceptance_too() {
        let s = lab();
        let ep = s.endpoints[0].clone();
        let without = with(&s, |s| s.endpoints.clear());
        let pending = with(&s, |s| s.endpoints[0].connection = Pending);
        assert_eq!(
            summary(&without, &pending),
            [(Connect, ep.id.clone(), Some(Pending), None)]
        );
        let connected = with(&s, |s| s.endpoints[0].connection = Connected);
        assert_eq!(
            summary(&without, &connected),
            [
                (Connect, ep.id.clone(), Some(Pending), None),
                (Accept, ep.id.clone(), Some(Connected), Some(Pending))
            ]
        );
        let c = &changes(&without, &connected)[0];
        assert_eq!(
            (c.service.as_str(), c.consumer_account.as_str()),
            (ep.service.as_str(), ep.account.as_str())
        );
    }

    #[test]
    fn each_connection_state_entered_is_its_event() {
        let s = lab();
        let id = s.endpoints[0].id.clone();
        let at = |c: Connection| with(&s, |s| s.endpoints[0].connection = c);
        for (from, to, event) in [
            (Pending, Connected, Accept),
            (Rejected, Connected, Accept),
            (Disconnected, Connected, Accept),
            (Pending, Rejected, Reject),
            (Connected, Rejected, Reject),
            (Connected, Disconnected, Disconnect),
            (Rejected, Pending, Connect),
        ] {
            assert_eq!(
                summary(&at(from), &at(to)),
                [(event, id.clone(), Some(to), Some(from))],
                "{from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn a_deleted_endpoint_reports_its_last_state() {
        let s = with(&lab(), |s| s.endpoints[0].connection = Disconnected);
        let id = s.endpoints[0].id.clone();
        let gone = with(&s, |s| s.endpoints.clear());
        assert_eq!(summary(&s, &gone), [(Delete, id, None, Some(Disconnected))]);
    }

    #[test]
    fn an_endpoint_moved_to_another_service_leaves_one_and_joins_the_other() {
        let s = lab();
        let e = &s.endpoints[0];
        let moved = with(&s, |s| s.endpoints[0].service = "elsewhere".into());
        let c = changes(&s, &moved);
        let got: Vec<(ConnectionEvent, &str)> =
            c.iter().map(|c| (c.event, c.service.as_str())).collect();
        let mut want = vec![(Delete, e.service.as_str()), (Connect, "elsewhere")];
        if e.connection != Pending {
            want.push((ConnectionEvent::entering(e.connection), "elsewhere"));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn several_changes_come_in_the_order_of_the_endpoints_then_the_deletions() {
        let mut s = lab();
        let mut second = s.endpoints[0].clone();
        second.id = "ep-second".into();
        second.connection = Pending;
        s.endpoints.push(second);
        let first = s.endpoints[0].id.clone();
        let after = with(&s, |s| {
            s.endpoints.remove(0);
            s.endpoints[0].connection = Rejected;
            let mut third = s.endpoints[0].clone();
            third.id = "ep-third".into();
            third.connection = Pending;
            s.endpoints.push(third);
        });
        let events: Vec<(ConnectionEvent, String)> = changes(&s, &after)
            .into_iter()
            .map(|c| (c.event, c.endpoint))
            .collect();
        assert_eq!(
            events,
            [
                (Reject, "ep-second".to_string()),
                (Connect, "ep-third".to_string()),
                (Delete, first)
            ]
        );
    }

    #[test]
    fn the_body_names_the_event_its_endpoint_and_states() {
        let c = Change {
            event: Accept,
            service: "epsrv-b".into(),
            endpoint: "ep-a".into(),
            consumer_account: "acct-a".into(),
            state: Some(Connected),
            previous: Some(Pending),
        };
        let n = Notification {
            id: "nfn-1".into(),
            url: "http://10.0.0.5:8080/hook?x=1".into(),
            events: ConnectionEvent::ALL.to_vec(),
        };
        let d = delivery(&c, &n, "evt-1", "2026-12-01T21:34:07Z").unwrap();
        assert_eq!(
            (d.url.authority(), d.url.target.as_str()),
            ("10.0.0.5:8080".to_string(), "/hook?x=1")
        );
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(
            body,
            json!({"id": "evt-1", "event": "accept", "service": "epsrv-b", "endpoint": "ep-a",
                   "consumer_account": "acct-a", "state": "connected",
                   "previous_state": "pending", "notification": "nfn-1",
                   "time": "2026-12-01T21:34:07Z"})
        );
        let gone = Change {
            event: Delete,
            state: None,
            ..c
        };
        let d = delivery(&gone, &n, "evt-2", "t").unwrap();
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(
            (&body["event"], &body["state"]),
            (&json!("delete"), &json!("deleted"))
        );
    }

    #[test]
    fn event_ids_differ() {
        assert_ne!(event_id(), event_id());
        assert_eq!(event_id().len(), "evt-".len() + 16);
    }
}
