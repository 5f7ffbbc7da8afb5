//! The daemon's Prometheus metrics (`--metrics-listen`): `GET /metrics` in the OpenMetrics
//! text format (or the Prometheus text format 0.0.4 to a client that does not ask for
//! OpenMetrics), encoded by `prometheus-client`.
//!
//! Three sources:
//! - read at each scrape (`Scrape`, a `Collector`): the data path's cumulative per-endpoint,
//!   per-appliance and per-verdict counters, the health verdicts, the notification and
//!   flow logger counters and the SNAT pools, named by the running state (`gather`);
//! - a background walk of the conntrack table every few seconds (`ConntrackWalker`): its
//!   size and each service's SNAT tuples in use, as last counted (a walk is too long to
//!   run at each scrape, and never runs under the app's lock);
//! - counted as things happen, process-wide (`PROCESS`): each apply of a state
//!   (`timed_apply`), each API request (`count_requests`).
//!
//! Every label set is bounded by the state (endpoints, zones, services, appliances) or
//! by a fixed list (directions, reasons, routes): nothing is labelled per flow.
//!
//! The endpoint is unauthenticated: it must listen on an address only operators reach.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use axum::{
    Router,
    extract::{MatchedPath, Request, State as AxumState},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use privatelink_common::{
    DIR_ORIGINAL, EP_DROP_NAMES, FlowEntry, FlowEntry6, VpcAddr, VpcAddr6, map_names,
};
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
        text::encode as encode_openmetrics,
    },
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{
    api::Shared,
    apply::Apply,
    counters, dataplane,
    flowlog::{FlowLogStats, FlowLogTotals},
    model::{State, numeric_id},
    monitor::{HealthRow, TargetKind},
    notify::{CountersSnapshot, Notifier},
};

/// The content type of an OpenMetrics answer (what Prometheus asks for first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How often the conntrack table is walked at most (longer when a walk takes long: see
/// `ConntrackWalker`).
const CONNTRACK_WALK_EVERY: Duration = Duration::from_secs(5);

/// What the process counts as it happens: one instance, as every apply path (the API's
/// changes, the ticks' retries, health refreshes, file mode) and the API's middleware
/// reach it without a handle threaded through them.
#[derive(Debug)]
struct Process {
    /// Seconds each apply of a state to the data path took (`Apply::apply`).
    reconcile: Histogram,
    api_requests: Family<ApiRequest, Counter>,
}

/// The labels of `privatelink_api_requests_total`: the route template (`/v1/services/{id}`;
/// `unmatched` for paths no route takes), the method, the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequest {
    route: String,
    method: String,
    status: u16,
}

static PROCESS: LazyLock<Process> = LazyLock::new(|| Process {
    // 0.5 ms to ~16 s.
    reconcile: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
    api_requests: Family::default(),
});

/// `apply.apply(s)`, its duration observed in `privatelink_reconcile_duration_seconds`.
pub fn timed_apply(apply: &mut dyn Apply, s: &State) -> anyhow::Result<()> {
    let start = Instant::now();
    let r = apply.apply(s);
    PROCESS.reconcile.observe(start.elapsed().as_secs_f64());
    r
}

/// The API's middleware: counts each request by route template, method and status.
pub async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let method = bounded_method(req.method()).to_string();
    let response = next.run(req).await;
    PROCESS
        .api_requests
        .get_or_create(&ApiRequest {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// A method's label: the standard ones by name, any other `other` (clients may send any
/// token as a method).
fn bounded_method(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    KNOWN
        .iter()
        .find(|(k, _)| k == m)
        .map_or("other", |(_, name)| name)
}

/// What a scrape reads from the running state and its applier (under the app's lock in
/// API mode, in the daemon's loop in file mode): quick reads only.
#[derive(Debug, Default)]
pub struct Gathered {
    counters: counters::Snapshot,
    health: Vec<HealthRow>,
    notifications: Option<CountersSnapshot>,
    snat: Vec<SnatPool>,
}

/// A service's SNAT pool: its numeric id (`PL_SNAT_ADDRS`' values) and its tuples.
#[derive(Debug)]
struct SnatPool {
    service: String,
    id: u32,
    /// Addresses × ports: the (address, port) pairs, each usable once per load balancer
    /// address, port and protocol.
    capacity: u64,
    /// The same for its IPv6 SNAT addresses (0: none, not dual stack, or a fleet host
    /// without a slot).
    capacity6: u64,
    /// Dual stack with IPv6 SNAT addresses: its IPv6 gauges are written.
    dual: bool,
}

pub fn gather(state: &State, apply: &mut dyn Apply, notify: Option<&Notifier>) -> Gathered {
    let share = apply.share();
    let snat = state
        .services
        .iter()
        .filter(|s| !s.snat.is_empty() || !s.snat6.is_empty())
        .map(|s| {
            // This host's part of the range (a fleet's slot).
            let ports = share
                .slice(s.snat_ports[0], s.snat_ports[1])
                .map_or(0, |(lo, hi)| u64::from(hi) - u64::from(lo) + 1);
            let dual = s.ip_version.is_dualstack() && !s.snat6.is_empty();
            let snat6 = if dual { s.snat6.len() as u64 } else { 0 };
            SnatPool {
                service: s.id.clone(),
                id: numeric_id(&s.id),
                capacity: s.snat.len() as u64 * ports,
                capacity6: snat6 * ports,
                dual,
            }
        })
        .collect();
    Gathered {
        counters: counters::resolve(state, &apply.counters()),
        health: apply.health(),
        notifications: notify.map(|n| n.counters().snapshot()),
        snat,
    }
}

/// Where a scrape gets `Gathered` from.
#[derive(Clone)]
pub enum Source {
    /// API mode: the app, locked for the moment of `gather`.
    App(Shared),
    /// File mode: the daemon's loop, which owns the state and the data path, answers.
    Loop(mpsc::Sender<oneshot::Sender<Gathered>>),
}

impl Source {
    async fn gather(&self) -> Gathered {
        match self {
            Source::App(app) => {
                let mut g = app.lock().await;
                let crate::apply::App {
                    state,
                    apply,
                    notify,
                    ..
                } = &mut *g;
                gather(state, &mut **apply, notify.as_ref())
            }
            Source::Loop(ask) => {
                let (tx, rx) = oneshot::channel();
                if ask.send(tx).await.is_err() {
                    return Gathered::default();
                }
                rx.await.unwrap_or_default()
            }
        }
    }
}

/// The conntrack table as the last walk counted it.
#[derive(Clone, Debug, Default)]
struct ConntrackCount {
    entries: u64,
    /// Live flows' reply-direction entries addressed to a service's SNAT address (one per
    /// flow that holds a tuple), by the service's numeric id.
    snat_in_use: HashMap<u32, u64>,
    /// The same in the IPv6 table (`PL_CONNTRACK6`, its SNAT6 addresses).
    entries6: u64,
    snat6_in_use: HashMap<u32, u64>,
    /// Live flows (original-direction entries of a live flow), by endpoint numeric id,
    /// both tables.
    live_flows: HashMap<u32, u64>,
}

/// The daemon's one conntrack walker (`census`), shared by the metrics and the API's
/// overview.
static CENSUS: std::sync::OnceLock<ConntrackWalker> = std::sync::OnceLock::new();

/// Starts the conntrack walker of `pin_dir` (once per process; later calls get the first).
/// Needs a tokio runtime.
pub fn census(pin_dir: &Path, capacity: u32) {
    CENSUS.get_or_init(|| ConntrackWalker::start(pin_dir.to_path_buf(), capacity));
}

/// The live flows per endpoint (numeric id) as the last walk counted them; `None` before
/// the first walk, or if no walker runs.
pub fn live_flows() -> Option<HashMap<u32, u64>> {
    CENSUS.get()?.last().map(|c| c.live_flows)
}

/// Walks the pinned conntrack table in a blocking task, at most every
/// `CONNTRACK_WALK_EVERY` and never more than a fifth of the time (a full table of
/// millions of entries takes seconds), and keeps the last count.
#[derive(Clone, Debug, Default)]
struct ConntrackWalker {
    last: Arc<Mutex<Option<ConntrackCount>>>,
}

impl ConntrackWalker {
    fn start(pin_dir: PathBuf, capacity: u32) -> Self {
        let walker = Self::default();
        let last = walker.last.clone();
        tokio::spawn(async move {
            loop {
                let dir = pin_dir.clone();
                let start = Instant::now();
                let walked =
                    tokio::task::spawn_blocking(move || walk_conntrack(&dir, capacity)).await;
                match walked {
                    Ok(Ok(count)) => *last.lock().expect("not poisoned") = Some(count),
                    Ok(Err(e)) => warn!("metrics: walking the conntrack table: {e:#}"),
                    Err(e) => warn!("metrics: the conntrack walk failed: {e}"),
                }
                tokio::time::sleep(CONNTRACK_WALK_EVERY.max(start.elapsed() * 4)).await;
            }
        });
        walker
    }

    fn last(&self) -> Option<ConntrackCount> {
        self.last.lock().expect("not poisoned").clone()
    }
}

/// Counts the entries of the pinned flow tables (`PL_CONNTRACK`, `PL_CONNTRACK6`), the
/// live flows per endpoint, and the reply-direction entries of live flows (either
/// direction not expired, as the data path judges it) addressed to an SNAT address of
/// `PL_SNAT_ADDRS` / `PL_SNAT6_ADDRS`: an expired flow's tuple is free to take over.
/// Each table is read in one pass over its mapped memory (`dataplane::flowtable`), at
/// most `capacity` entries of it counted.
fn walk_conntrack(pin_dir: &Path, capacity: u32) -> Result<ConntrackCount> {
    let cfg = dataplane::read_config(pin_dir)?;
    let mut count = ConntrackCount::default();
    let snat = read_snat::<VpcAddr>(pin_dir, map_names::SNAT_ADDRS)?;
    let (entries, snat_in_use) = walk_table::<FlowEntry>(
        pin_dir,
        capacity,
        &cfg,
        |k| {
            snat.get(&VpcAddr {
                vpc_id: k.vpc_id,
                addr: k.dst,
            })
            .copied()
        },
        &mut count.live_flows,
    )?;
    (count.entries, count.snat_in_use) = (entries, snat_in_use);
    // The IPv6 table's walk failing leaves the IPv4 count standing (its figures then 0).
    let walked6 = read_snat::<VpcAddr6>(pin_dir, map_names::SNAT6_ADDRS).and_then(|snat6| {
        walk_table::<FlowEntry6>(
            pin_dir,
            capacity,
            &cfg,
            |k| {
                snat6
                    .get(&VpcAddr6 {
                        vpc_id: k.vpc_id,
                        addr: k.dst,
                    })
                    .copied()
            },
            &mut count.live_flows,
        )
    });
    match walked6 {
        Ok((entries, snat_in_use)) => (count.entries6, count.snat6_in_use) = (entries, snat_in_use),
        Err(e) => warn!("metrics: walking the IPv6 conntrack table: {e:#}"),
    }
    Ok(count)
}

/// A pinned SNAT address map: address → service numeric id.
fn read_snat<K: aya::Pod + Eq + std::hash::Hash>(
    pin_dir: &Path,
    name: &str,
) -> Result<HashMap<K, u32>> {
    let map = dataplane::open_pinned(pin_dir, name)?;
    Ok(aya::maps::HashMap::<_, K, u32>::try_from(&map)?
        .iter()
        .filter_map(Result::ok)
        .collect())
}

/// One table's walk for `walk_conntrack`: its entries, and its live tuples by service
/// (`snat_of` a reply-direction key: the service whose SNAT address it is sent to); the
/// live flows added to `live_flows`.
fn walk_table<E: dataplane::flowtable::Bucketed>(
    pin_dir: &Path,
    capacity: u32,
    cfg: &privatelink_common::Config,
    snat_of: impl Fn(&E::Key) -> Option<u32>,
    live_flows: &mut HashMap<u32, u64>,
) -> Result<(u64, HashMap<u32, u64>)> {
    let ct: HashMap<E::Key, E> = dataplane::read_table::<E>(pin_dir)
        .with_context(|| format!("reading {}", E::MAP))?
        .into_iter()
        .take(capacity as usize)
        .collect();
    let now = dataplane::coarse_now_ns();
    let (mut entries, mut snat_in_use) = (0, HashMap::new());
    for (k, e) in &ct {
        let (k, e) = (*k, *e);
        entries += 1;
        let alive = || e.live_in(&k, now, cfg, |pk| ct.get(pk).copied());
        if e.direction() == DIR_ORIGINAL {
            if alive() {
                *live_flows.entry(e.endpoint_id()).or_default() += 1;
            }
            continue;
        }
        let Some(id) = snat_of(&k) else { continue };
        if alive() {
            *snat_in_use.entry(id).or_default() += 1;
        }
    }
    Ok((entries, snat_in_use))
}

/// One scrape's readings, encoded as the metric families (a `Collector` of a registry
/// made for the scrape).
#[derive(Debug)]
struct Scrape {
    gathered: Gathered,
    verdicts: Vec<(privatelink_common::Reason, u64)>,
    conntrack: Option<ConntrackCount>,
    conntrack_capacity: u32,
    flow_log: FlowLogTotals,
}

type Labels = Vec<(&'static str, String)>;

/// A counter family with one sample per label set.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family with one sample per label set.
fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The two directions' samples (`to_service`, `to_consumer`) of one quantity of each row:
/// `sample` gives a row's labels and the quantity each way.
fn directions<'a, T>(
    rows: &'a [T],
    sample: impl Fn(&T) -> (Labels, u64, u64) + 'a,
) -> impl Iterator<Item = (Labels, u64)> + 'a {
    rows.iter().flat_map(move |r| {
        let (labels, to_service, to_consumer) = sample(r);
        [("to_service", to_service), ("to_consumer", to_consumer)].map(|(d, v)| {
            let mut l = labels.clone();
            l.push(("direction", d.to_string()));
            (l, v)
        })
    })
}

/// An endpoint ENI's labels.
fn eni_labels(e: &counters::EniCounters) -> Labels {
    vec![
        ("endpoint", e.endpoint.clone()),
        ("service", e.service.clone()),
        ("zone", e.zone.clone()),
        ("account", e.account.clone()),
    ]
}

/// A GWLB appliance's labels.
fn appliance_labels(a: &counters::ApplianceCounters) -> Labels {
    vec![
        ("service", a.service.clone()),
        ("appliance", a.appliance.to_string()),
        ("zone", a.zone.clone()),
    ]
}

impl Scrape {
    fn endpoints(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let eps = &self.gathered.counters.endpoints;
        let labels = eni_labels;
        counters(
            enc,
            "privatelink_endpoint_packets",
            "Packets an endpoint ENI carried, by direction (to_service: from consumers towards the service).",
            directions(eps, |e| {
                let t = &e.counters;
                (labels(e), t.to_service_packets, t.to_consumer_packets)
            }),
        )?;
        counters(
            enc,
            "privatelink_endpoint_bytes",
            "Bytes (IP packets) an endpoint ENI carried, by direction.",
            directions(eps, |e| {
                let t = &e.counters;
                (labels(e), t.to_service_bytes, t.to_consumer_bytes)
            }),
        )?;
        counters(
            enc,
            "privatelink_endpoint_new_flows",
            "Flows an endpoint ENI opened.",
            eps.iter().map(|e| (labels(e), e.counters.new_flows)),
        )?;
        counters(
            enc,
            "privatelink_endpoint_drops",
            "Packets of an endpoint ENI the data path dropped, by reason.",
            eps.iter().flat_map(|e| {
                EP_DROP_NAMES.iter().map(move |reason| {
                    let mut l = labels(e);
                    l.push(("reason", reason.to_string()));
                    (l, e.counters.drops.get(*reason).copied().unwrap_or(0))
                })
            }),
        )?;
        counters(
            enc,
            "privatelink_flow_log_lost",
            "Flow log records of an endpoint ENI the data path could not queue (the ring buffer was full).",
            eps.iter().map(|e| (labels(e), e.counters.flow_log_lost)),
        )
    }

    fn appliances(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let rows = &self.gathered.counters.appliances;
        let labels = appliance_labels;
        counters(
            enc,
            "privatelink_appliance_packets",
            "Packets a GWLB appliance was sent (to_service) and sent back (to_consumer).",
            directions(rows, |a| {
                let t = &a.counters;
                (labels(a), t.to_service_packets, t.to_consumer_packets)
            }),
        )?;
        counters(
            enc,
            "privatelink_appliance_bytes",
            "Bytes (inner IP packets) a GWLB appliance was sent and sent back.",
            directions(rows, |a| {
                let t = &a.counters;
                (labels(a), t.to_service_bytes, t.to_consumer_bytes)
            }),
        )
    }

    fn data_path(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        counters(
            enc,
            "privatelink_verdicts",
            "Packets the XDP program gave each verdict (PL_STATS, all interfaces).",
            self.verdicts
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str().to_string())], *n)),
        )?;
        gauges(
            enc,
            "privatelink_conntrack_entries",
            "Entries in the conntrack table (two per flow), as the last walk counted them.",
            self.conntrack
                .iter()
                .map(|c| (Vec::new(), c.entries as i64)),
        )?;
        gauges(
            enc,
            "privatelink_conntrack_capacity",
            "Entries the conntrack table holds (--conntrack-entries).",
            [(Vec::new(), i64::from(self.conntrack_capacity))],
        )?;
        let snat = &self.gathered.snat;
        gauges(
            enc,
            "privatelink_snat_tuples_in_use",
            "A service's SNAT (address, port) tuples held by flows, as the last conntrack walk counted them.",
            self.conntrack.iter().flat_map(|c| {
                snat.iter().map(|p| {
                    let n = c.snat_in_use.get(&p.id).copied().unwrap_or(0);
                    (vec![("service", p.service.clone())], n as i64)
                })
            }),
        )?;
        gauges(
            enc,
            "privatelink_snat_tuples_capacity",
            "A service's SNAT addresses times the ports of its range this host takes new flows from (the whole range, or a fleet host's slot; each tuple usable once per load balancer address, port and protocol).",
            snat.iter()
                .map(|p| (vec![("service", p.service.clone())], p.capacity as i64)),
        )?;
        // The IPv6 table and pools, for dual-stack services.
        gauges(
            enc,
            "privatelink_conntrack6_entries",
            "Entries in the IPv6 conntrack table (two per flow; capacity as the IPv4 table's), as the last walk counted them.",
            self.conntrack
                .iter()
                .map(|c| (Vec::new(), c.entries6 as i64)),
        )?;
        let snat6 = || snat.iter().filter(|p| p.dual);
        gauges(
            enc,
            "privatelink_snat6_tuples_in_use",
            "A dual-stack service's IPv6 SNAT tuples held by flows, as the last conntrack walk counted them.",
            self.conntrack.iter().flat_map(|c| {
                snat6().map(|p| {
                    let n = c.snat6_in_use.get(&p.id).copied().unwrap_or(0);
                    (vec![("service", p.service.clone())], n as i64)
                })
            }),
        )?;
        gauges(
            enc,
            "privatelink_snat6_tuples_capacity",
            "A dual-stack service's IPv6 SNAT addresses times the ports of its range this host takes new flows from.",
            snat6().map(|p| (vec![("service", p.service.clone())], p.capacity6 as i64)),
        )
    }

    fn health(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        gauges(
            enc,
            "privatelink_health_up",
            "1 when the daemon's health checks judge a load balancer or appliance healthy, else 0.",
            self.gathered.health.iter().map(|h| {
                let kind = match h.kind {
                    TargetKind::LoadBalancer => "load_balancer",
                    TargetKind::Appliance => "appliance",
                };
                let labels = vec![
                    ("kind", kind.to_string()),
                    ("service", h.service.clone()),
                    ("zone", h.zone.clone()),
                    ("address", h.address.to_string()),
                ];
                (labels, i64::from(h.healthy))
            }),
        )
    }

    fn flow_log(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let f = &self.flow_log;
        counters(
            enc,
            "privatelink_flow_log_events",
            "Flow events the flow logger read from the data path's ring, by result: logged (for an ENI with flow logs on) or ignored.",
            [
                ("logged", f.events_read.saturating_sub(f.events_ignored)),
                ("ignored", f.events_ignored),
            ]
            .map(|(r, v)| (vec![("result", r.to_string())], v)),
        )?;
        counters(
            enc,
            "privatelink_flow_log_events_lost",
            "Flow events of ENIs with flow logs on the data path could not put on the ring (full).",
            [(Vec::new(), f.events_lost)],
        )?;
        counters(
            enc,
            "privatelink_flow_log_records_written",
            "Flow log records written to the endpoints' files.",
            [(Vec::new(), f.records_written)],
        )
    }

    fn notifications(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(n) = self.gathered.notifications else {
            return Ok(());
        };
        counters(
            enc,
            "privatelink_notifications",
            "Connection notifications, by result: delivered (2xx), failed (given up), dropped (queue full).",
            [
                ("delivered", n.delivered),
                ("failed", n.failed),
                ("dropped", n.dropped),
            ]
            .map(|(r, v)| (vec![("result", r.to_string())], v)),
        )?;
        counters(
            enc,
            "privatelink_notification_retries",
            "Notification attempts made again after a connection error, a timeout or a 5xx.",
            [(Vec::new(), n.retried)],
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.endpoints(&mut enc)?;
        self.appliances(&mut enc)?;
        self.data_path(&mut enc)?;
        self.health(&mut enc)?;
        self.flow_log(&mut enc)?;
        self.notifications(&mut enc)
    }
}

/// The registry of one scrape: its readings and the process's own metrics (`register`
/// ends each help text with a period).
fn registry(scrape: Scrape) -> Registry {
    let p = &*PROCESS;
    let mut r = Registry::default();
    r.register_collector(Box::new(scrape));
    r.register(
        "privatelink_reconcile_duration_seconds",
        "Seconds each apply of a state to the data path took",
        p.reconcile.clone(),
    );
    r.register(
        "privatelink_api_requests",
        "API requests, by route template, method and status",
        p.api_requests.clone(),
    );
    r
}

/// The scrape's text and content type: OpenMetrics when the client accepts it, else the
/// Prometheus text format 0.0.4.
fn encode(scrape: Scrape, accept: &str) -> Result<(String, &'static str), fmt::Error> {
    let r = registry(scrape);
    let mut out = String::new();
    if accept.contains("application/openmetrics-text") {
        encode_openmetrics(&mut out, &r)?;
        Ok((out, OPENMETRICS))
    } else {
        prometheus_text::encode(&mut out, &r)?;
        Ok((out, prometheus_text::CONTENT_TYPE))
    }
}

/// What the `/metrics` handler reads from.
#[derive(Clone)]
struct Server {
    source: Source,
    pin_dir: PathBuf,
    conntrack: ConntrackWalker,
    conntrack_capacity: u32,
    flow_log: Arc<FlowLogStats>,
}

async fn scrape(AxumState(s): AxumState<Server>, headers: HeaderMap) -> Response {
    let gathered = s.source.gather().await;
    let verdicts = dataplane::open_pinned(&s.pin_dir, map_names::STATS)
        .and_then(|m| dataplane::read_stats(&m))
        .unwrap_or_else(|e| {
            warn!("metrics: reading {}: {e:#}", map_names::STATS);
            Vec::new()
        });
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let scrape = Scrape {
        gathered,
        verdicts,
        conntrack: s.conntrack.last(),
        conntrack_capacity: s.conntrack_capacity,
        flow_log: s.flow_log.snapshot(),
    };
    match encode(scrape, accept) {
        Ok((body, content_type)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}")).into_response(),
    }
}

/// Serves `GET /metrics` on `listener` (bound by the caller, before `--netns`) until the
/// daemon stops; walks the conntrack table in the background meanwhile.
pub fn start(
    listener: std::net::TcpListener,
    source: Source,
    pin_dir: &Path,
    conntrack_capacity: u32,
    flow_log: Arc<FlowLogStats>,
) -> Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let server = Server {
        source,
        pin_dir: pin_dir.to_path_buf(),
        conntrack: {
            census(pin_dir, conntrack_capacity);
            CENSUS.get().cloned().unwrap_or_default()
        },
        conntrack_capacity,
        flow_log,
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(server);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!("metrics server stopped: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{ApplianceCounters, EniCounters, Snapshot, Totals};

    fn sample() -> Scrape {
        let mut drops = std::collections::BTreeMap::new();
        drops.insert("security_group".to_string(), 4);
        Scrape {
            gathered: Gathered {
                counters: Snapshot {
                    endpoints: vec![EniCounters {
                        endpoint: "ep-a".into(),
                        service: "epsrv-b".into(),
                        zone: "zone-a".into(),
                        account: "acct-a".into(),
                        provider: "acct-b".into(),
                        counters: Totals {
                            to_service_packets: 7,
                            to_service_bytes: 700,
                            to_consumer_packets: 5,
                            to_consumer_bytes: 5000,
                            new_flows: 2,
                            flow_log_lost: 1,
                            drops,
                        },
                    }],
                    appliances: vec![ApplianceCounters {
                        service: "gwlb-svc".into(),
                        appliance: "10.40.1.10".parse().unwrap(),
                        zone: "zone-a".into(),
                        provider: "acct-b".into(),
                        counters: Totals {
                            to_service_packets: 3,
                            ..Default::default()
                        },
                    }],
                },
                health: vec![HealthRow {
                    service: "epsrv-b".into(),
                    zone: "zone-b".into(),
                    address: "10.10.4.10".parse().unwrap(),
                    kind: TargetKind::LoadBalancer,
                    healthy: false,
                    since: String::new(),
                }],
                notifications: Some(CountersSnapshot {
                    delivered: 9,
                    ..Default::default()
                }),
                snat: vec![SnatPool {
                    service: "epsrv-b".into(),
                    id: 42,
                    capacity: 128,
                    capacity6: 64,
                    dual: true,
                }],
            },
            verdicts: vec![(privatelink_common::Reason::ALL[0], 11)],
            conntrack: Some(ConntrackCount {
                entries: 6,
                snat_in_use: [(42, 3)].into(),
                entries6: 4,
                snat6_in_use: [(42, 2)].into(),
                live_flows: [(7, 2)].into(),
            }),
            conntrack_capacity: 1024,
            flow_log: FlowLogTotals {
                events_read: 10,
                events_ignored: 3,
                events_lost: 2,
                records_written: 4,
            },
        }
    }

    /// The lines of `text` that are samples (not comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn a_scrape_names_each_counter_by_what_it_counts() {
        let (text, ct) = encode(sample(), "").unwrap();
        assert_eq!(ct, prometheus_text::CONTENT_TYPE);
        let lines = samples(&text);
        for want in [
            r#"privatelink_endpoint_packets_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a",direction="to_service"} 7"#,
            r#"privatelink_endpoint_packets_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a",direction="to_consumer"} 5"#,
            r#"privatelink_endpoint_bytes_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a",direction="to_consumer"} 5000"#,
            r#"privatelink_endpoint_new_flows_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a"} 2"#,
            r#"privatelink_endpoint_drops_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a",reason="security_group"} 4"#,
            r#"privatelink_endpoint_drops_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a",reason="acl"} 0"#,
            r#"privatelink_flow_log_lost_total{endpoint="ep-a",service="epsrv-b",zone="zone-a",account="acct-a"} 1"#,
            r#"privatelink_appliance_packets_total{service="gwlb-svc",appliance="10.40.1.10",zone="zone-a",direction="to_service"} 3"#,
            r#"privatelink_health_up{kind="load_balancer",service="epsrv-b",zone="zone-b",address="10.10.4.10"} 0"#,
            r#"privatelink_conntrack_entries 6"#,
            r#"privatelink_conntrack_capacity 1024"#,
            r#"privatelink_snat_tuples_in_use{service="epsrv-b"} 3"#,
            r#"privatelink_snat_tuples_capacity{service="epsrv-b"} 128"#,
            r#"privatelink_conntrack6_entries 4"#,
            r#"privatelink_snat6_tuples_in_use{service="epsrv-b"} 2"#,
            r#"privatelink_snat6_tuples_capacity{service="epsrv-b"} 64"#,
            r#"privatelink_notifications_total{result="delivered"} 9"#,
            r#"privatelink_notification_retries_total 0"#,
            r#"privatelink_flow_log_events_total{result="logged"} 7"#,
            r#"privatelink_flow_log_events_total{result="ignored"} 3"#,
            r#"privatelink_flow_log_events_lost_total 2"#,
            r#"privatelink_flow_log_records_written_total 4"#,
        ] {
            assert!(lines.contains(&want), "{want} not in\n{text}");
        }
        let verdict = format!(
            r#"privatelink_verdicts_total{{reason="{}"}} 11"#,
            privatelink_common::Reason::ALL[0].as_str()
        );
        assert!(
            lines.contains(&verdict.as_str()),
            "{verdict} not in\n{text}"
        );
        assert!(text.contains("# TYPE privatelink_reconcile_duration_seconds histogram"));
    }

    #[test]
    fn openmetrics_is_served_to_clients_that_ask_for_it() {
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let (text, ct) = encode(sample(), accept).unwrap();
        assert_eq!(ct, OPENMETRICS);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE privatelink_endpoint_packets counter"));
    }

    #[test]
    fn before_the_first_conntrack_walk_its_counts_are_left_out() {
        let mut s = sample();
        s.conntrack = None;
        let (text, _) = encode(s, "").unwrap();
        let lines = samples(&text);
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("privatelink_conntrack_entries"))
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("privatelink_snat_tuples_in_use"))
        );
        assert!(lines.contains(&"privatelink_conntrack_capacity 1024"));
    }

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        let odd = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(bounded_method(&odd), "other");
        assert_eq!(bounded_method(&axum::http::Method::PATCH), "PATCH");
    }
}
