//! Flow logs. The data path reports every packet of an endpoint ENI with flow logs on
//! (`ENI_FLAG_FLOW_LOG`), accepted or rejected, as a `FlowEvent` (IPv4) or `FlowEvent6`
//! (IPv6) on its ring buffer (`PL_FLOW_EVENTS`, submitted without wakeups; a record's
//! length tells which). The daemon drains the ring on a timer,
//! aggregates the events per ENI and capture window by (5-tuple, direction, action), and
//! at each window's end appends one record per key to `<flow-log-dir>/<endpoint>.log`, in
//! the VPC flow log format (`HEADER`). A window without traffic is one NODATA record; a
//! window in which events were lost (the ENI slot's `flow_log_lost` moved) has its records
//! marked SKIPDATA. The pure parts (which ENIs are logged, aggregation, records, files) are
//! tested here; `FlowLogger` ties them to the ring and the pinned counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use privatelink_common::{
    COUNTER_ENI, CounterKey, EndpointCounters, FLOW_EGRESS, FlowEvent, FlowEvent6, PROTO_TCP,
    Reason, map_names,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    dataplane,
    model::{State, numeric_id},
};

/// The first line of every log file: the records' fields, in order.
pub const HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport \
                          protocol packets bytes start end action log-status vpc-id vswitch-id \
                          eni-id direction tcp-flags";

/// The records' format version (AWS's version 5 has these fields, among others).
const VERSION: u32 = 5;
/// How many rotated files are kept beside each endpoint's log (`.1` the newest).
pub const KEEP_ROTATED: usize = 5;
/// How often the slots of ENIs whose flow logs are on but not in `PL_EP_SLOTS` yet (an
/// apply the data path is behind on) are looked up again.
const RESOLVE_RETRY: Duration = Duration::from_secs(1);
const NS: u64 = 1_000_000_000;

/// Where and how the daemon writes flow logs.
#[derive(Clone, Debug)]
pub struct Options {
    /// One file per endpoint, `<endpoint>.log`; made when the first record is written.
    pub dir: PathBuf,
    /// How often the ring is drained.
    pub poll: Duration,
    /// A file is rotated when it has grown past this size.
    pub rotate_bytes: u64,
}

/// What the flow logger has done since the daemon started (for the metrics).
#[derive(Debug, Default)]
pub struct FlowLogStats {
    /// Events read from the ring.
    pub events_read: AtomicU64,
    /// Events read for an ENI whose flow logs are off (or not known yet): dropped.
    pub events_ignored: AtomicU64,
    /// Events the data path could not put on the ring (full), summed over the ENIs with
    /// flow logs on (their `flow_log_lost` counters' increases).
    pub events_lost: AtomicU64,
    /// Records written to the files (NODATA and SKIPDATA ones included).
    pub records_written: AtomicU64,
}

/// `FlowLogStats` read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowLogTotals {
    pub events_read: u64,
    pub events_ignored: u64,
    pub events_lost: u64,
    pub records_written: u64,
}

impl FlowLogStats {
    pub fn snapshot(&self) -> FlowLogTotals {
        FlowLogTotals {
            events_read: self.events_read.load(Ordering::Relaxed),
            events_ignored: self.events_ignored.load(Ordering::Relaxed),
            events_lost: self.events_lost.load(Ordering::Relaxed),
            records_written: self.records_written.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One ENI with flow logs on (an endpoint in one zone), as its records name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub endpoint: String,
    pub account: String,
    pub vpc: String,
    pub vswitch: String,
    pub window_seconds: u32,
}

impl Target {
    /// The ENI's id in the records (`interface-id` and `eni-id`): the model has no ENI
    /// ids, so one is derived from the endpoint and its vSwitch (one ENI per zone).
    pub fn eni_id(&self) -> String {
        format!("eni-{}-{}", self.endpoint, self.vswitch)
    }
}

/// The ENIs with flow logs on in `state`, by the key their counter slot has
/// (`dataplane::slots::eni_key`: the endpoint and the zone): an endpoint's ENI in each of
/// its zones; a gateway endpoint's route target, in the vSwitch that holds it.
pub fn targets(state: &State) -> BTreeMap<CounterKey, Target> {
    let mut out = BTreeMap::new();
    for e in &state.endpoints {
        let (Some(fl), Some(vpc)) = (e.flow_log, state.vpc(&e.vpc)) else {
            continue;
        };
        let zones = e
            .zones
            .iter()
            .filter_map(|z| vpc.vswitches.iter().find(|s| s.id == z.vswitch));
        let gateway = e
            .gateway
            .and_then(|gw| vpc.vswitches.iter().find(|s| s.cidr.contains(&gw)));
        for vsw in zones.chain(gateway) {
            let key = CounterKey {
                kind: COUNTER_ENI,
                a: numeric_id(&e.id),
                b: numeric_id(&vsw.zone),
            };
            out.insert(
                key,
                Target {
                    endpoint: e.id.clone(),
                    account: e.account.clone(),
                    vpc: e.vpc.clone(),
                    vswitch: vsw.id.clone(),
                    window_seconds: fl.window_seconds,
                },
            );
        }
    }
    out
}

/// A flow event of either family, as the aggregator takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The data path's clock (`bpf_ktime_get_coarse_ns`).
    pub time_ns: u64,
    pub slot: u32,
    pub bytes: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub direction: u8,
    pub reason: u8,
}

/// `Event::from` for both record types: the fields are the same but the addresses.
macro_rules! event_from {
    ($ty:ty, $addr:ty) => {
        impl From<&$ty> for Event {
            fn from(e: &$ty) -> Self {
                Event {
                    time_ns: e.time_ns,
                    slot: e.slot,
                    bytes: e.bytes,
                    src: <$addr>::from(e.src).into(),
                    dst: <$addr>::from(e.dst).into(),
                    sport: e.sport,
                    dport: e.dport,
                    proto: e.proto,
                    tcp_flags: e.tcp_flags,
                    direction: e.direction,
                    reason: e.reason,
                }
            }
        }
    };
}
event_from!(FlowEvent, Ipv4Addr);
event_from!(FlowEvent6, Ipv6Addr);

impl Event {
    /// A ring record: a `FlowEvent` or a `FlowEvent6` by its length; `None` for any other
    /// length.
    pub fn of_record(b: &[u8]) -> Option<Event> {
        // SAFETY (both reads): the ring's records are written by the data path as these
        // plain `#[repr(C)]` types (the length is checked); the reads are unaligned-safe.
        if b.len() == size_of::<FlowEvent>() {
            let e: FlowEvent = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
            Some(Event::from(&e))
        } else if b.len() == size_of::<FlowEvent6>() {
            let e: FlowEvent6 = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
            Some(Event::from(&e))
        } else {
            None
        }
    }
}

/// What one record aggregates: a flow, as the ENI saw it, in one direction, with one
/// action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FlowId {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    egress: bool,
    accept: bool,
}

impl FlowId {
    fn of(ev: &Event) -> Self {
        Self {
            src: ev.src,
            dst: ev.dst,
            sport: ev.sport,
            dport: ev.dport,
            proto: ev.proto,
            egress: ev.direction == FLOW_EGRESS,
            // A forward verdict; a drop (or an index this build does not know) is REJECT.
            accept: Reason::ALL
                .get(ev.reason as usize)
                .is_some_and(|r| !r.is_drop()),
        }
    }
}

/// A flow's packets in one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    packets: u64,
    bytes: u64,
    /// Unix time of the first and last packet, nanoseconds.
    first_ns: u64,
    last_ns: u64,
    /// `aws_tcp_flags` of the packets, OR-ed.
    tcp_flags: u8,
}

/// A packet's TCP flags as AWS reports them: FIN 1, SYN 2, RST 4, and ACK 16 only
/// together with SYN (SYN-ACK is 18); PSH, URG and a lone ACK are not reported.
pub fn aws_tcp_flags(raw: u8) -> u8 {
    const FIN: u8 = 1;
    const SYN: u8 = 2;
    const RST: u8 = 4;
    const ACK: u8 = 16;
    let mut f = raw & (FIN | SYN | RST);
    if raw & (SYN | ACK) == SYN | ACK {
        f |= ACK;
    }
    f
}

/// `log-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStatus {
    Ok,
    /// The window had no traffic.
    NoData,
    /// Events of the window were lost (the ring was full).
    SkipData,
}

impl LogStatus {
    fn as_str(self) -> &'static str {
        match self {
            LogStatus::Ok => "OK",
            LogStatus::NoData => "NODATA",
            LogStatus::SkipData => "SKIPDATA",
        }
    }
}

/// One line of an endpoint's flow log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    target: Target,
    /// The flow and its packets; none for a NODATA record, or a SKIPDATA one of a window
    /// whose every event was lost.
    flow: Option<(FlowId, Tally)>,
    /// The window's bounds, Unix seconds (a record without a flow shows them).
    window: (u64, u64),
    status: LogStatus,
}

impl Record {
    /// The endpoint whose file the record goes to.
    pub fn endpoint(&self) -> &str {
        &self.target.endpoint
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.target;
        let eni = t.eni_id();
        write!(f, "{VERSION} {} {eni} ", t.account)?;
        match &self.flow {
            Some((id, n)) => write!(
                f,
                "{} {} {} {} {} {} {} {} {} {}",
                id.src,
                id.dst,
                id.sport,
                id.dport,
                id.proto,
                n.packets,
                n.bytes,
                n.first_ns / NS,
                n.last_ns / NS,
                if id.accept { "ACCEPT" } else { "REJECT" },
            )?,
            None => write!(f, "- - - - - - - {} {} -", self.window.0, self.window.1)?,
        }
        write!(
            f,
            " {} {} {} {eni} ",
            self.status.as_str(),
            t.vpc,
            t.vswitch
        )?;
        match &self.flow {
            Some((id, n)) => {
                let dir = if id.egress { "egress" } else { "ingress" };
                match id.proto {
                    PROTO_TCP => write!(f, "{dir} {}", n.tcp_flags),
                    _ => write!(f, "{dir} -"),
                }
            }
            None => write!(f, "- -"),
        }
    }
}

/// The most NODATA records one run of idle windows gives (see `Eni::complete`).
const MAX_NODATA_RUN: u64 = 100;

/// The most distinct flows one ENI's window records (about 100 bytes each in memory);
/// past it, the window's records say SKIPDATA.
pub const MAX_FLOWS_PER_WINDOW: usize = 100_000;

/// One window's flows.
#[derive(Debug, Default)]
struct Window {
    flows: BTreeMap<FlowId, Tally>,
    /// Events were lost while it was open.
    skipped: bool,
}

/// One ENI's open windows (by index: Unix seconds / the window's length).
#[derive(Debug)]
struct Eni {
    target: Target,
    windows: BTreeMap<u64, Window>,
    /// The first window not written yet: a late event (of a written window) joins it.
    next: u64,
    /// `flow_log_lost` as last read (none before the first read).
    lost: Option<u64>,
}

impl Eni {
    fn new(target: Target, now_ns: u64) -> Self {
        let next = now_ns / (target.window_seconds as u64 * NS);
        Self {
            target,
            windows: BTreeMap::new(),
            next,
            lost: None,
        }
    }

    fn window_ns(&self) -> u64 {
        self.target.window_seconds as u64 * NS
    }

    /// The window an event of time `t_ns` counts in.
    fn index(&self, t_ns: u64) -> u64 {
        (t_ns / self.window_ns()).max(self.next)
    }

    /// The records of window `i` (written whether or not it had traffic).
    fn records(&self, i: u64, w: Option<Window>) -> Vec<Record> {
        let len = self.target.window_seconds as u64;
        let window = (i * len, (i + 1) * len);
        let w = w.unwrap_or_default();
        let status = if w.skipped {
            LogStatus::SkipData
        } else {
            LogStatus::Ok
        };
        if w.flows.is_empty() {
            let status = match status {
                LogStatus::Ok => LogStatus::NoData,
                s => s,
            };
            return vec![Record {
                target: self.target.clone(),
                flow: None,
                window,
                status,
            }];
        }
        w.flows
            .into_iter()
            .map(|(id, n)| Record {
                target: self.target.clone(),
                flow: Some((id, n)),
                window,
                status,
            })
            .collect()
    }

    /// The records of every window that ended `grace_ns` before `now_ns`. A run of more
    /// than `MAX_NODATA_RUN` idle windows (the wall clock stepped forward, say) is one
    /// NODATA record, not one per window.
    fn complete(&mut self, now_ns: u64, grace_ns: u64) -> Vec<Record> {
        let mut out = Vec::new();
        let end = now_ns.saturating_sub(grace_ns) / self.window_ns();
        let busy = self.windows.range(self.next..).next().map(|(i, _)| *i);
        let idle_until = busy.unwrap_or(end).min(end);
        if idle_until > self.next + MAX_NODATA_RUN {
            out.extend(self.records(self.next, None));
            self.next = idle_until;
        }
        while (self.next + 1) * self.window_ns() + grace_ns <= now_ns {
            let w = self.windows.remove(&self.next);
            out.extend(self.records(self.next, w));
            self.next += 1;
        }
        out
    }

    /// The records of the windows that had traffic (or losses), complete or not: the flow
    /// log stops (the current window is not padded with NODATA).
    fn finish(mut self) -> Vec<Record> {
        std::mem::take(&mut self.windows)
            .into_iter()
            .flat_map(|(i, w)| self.records(i, Some(w)))
            .collect()
    }
}

/// The open windows of every ENI with flow logs on, by counter slot.
#[derive(Debug, Default)]
pub struct Aggregator {
    enis: BTreeMap<u32, Eni>,
}

impl Aggregator {
    /// Starts aggregating for the slots of `want` that are new (from the window `now_ns`
    /// is in).
    pub fn start(&mut self, want: &BTreeMap<u32, Target>, now_ns: u64) {
        for (slot, t) in want {
            self.enis
                .entry(*slot)
                .or_insert_with(|| Eni::new(t.clone(), now_ns));
        }
    }

    /// Stops aggregating for the slots no longer in `want`, or whose target changed (its
    /// window, or another ENI on a reused slot); returns what they had.
    pub fn stop(&mut self, want: &BTreeMap<u32, Target>) -> Vec<Record> {
        let gone: Vec<u32> = self
            .enis
            .iter()
            .filter(|(slot, e)| want.get(slot) != Some(&e.target))
            .map(|(slot, _)| *slot)
            .collect();
        gone.into_iter()
            .filter_map(|slot| self.enis.remove(&slot))
            .flat_map(Eni::finish)
            .collect()
    }

    /// Counts `ev`, whose Unix time is `t_ns`; false if its slot has no flow log.
    pub fn add(&mut self, ev: impl Into<Event>, t_ns: u64) -> bool {
        let ev: Event = ev.into();
        let Some(eni) = self.enis.get_mut(&ev.slot) else {
            return false;
        };
        let i = eni.index(t_ns);
        let flags = match ev.proto {
            PROTO_TCP => aws_tcp_flags(ev.tcp_flags),
            _ => 0,
        };
        let w = eni.windows.entry(i).or_default();
        let id = FlowId::of(&ev);
        if w.flows.len() >= MAX_FLOWS_PER_WINDOW && !w.flows.contains_key(&id) {
            // A spray of distinct tuples does not grow the daemon without bound: the
            // window's other flows go unrecorded, and its records say so (SKIPDATA).
            w.skipped = true;
            return true;
        }
        w.flows
            .entry(id)
            .and_modify(|n| {
                n.packets += 1;
                n.bytes += ev.bytes as u64;
                n.first_ns = n.first_ns.min(t_ns);
                n.last_ns = n.last_ns.max(t_ns);
                n.tcp_flags |= flags;
            })
            .or_insert(Tally {
                packets: 1,
                bytes: ev.bytes as u64,
                first_ns: t_ns,
                last_ns: t_ns,
                tcp_flags: flags,
            });
        true
    }

    /// Slot `slot`'s `flow_log_lost` read as `total` at `now_ns`, the previous read at
    /// `since_ns`: if it moved, the windows of that span are marked SKIPDATA. Returns how
    /// many events were lost meanwhile (0 at the first read, or when the slot was zeroed
    /// for another ENI).
    pub fn lost(&mut self, slot: u32, total: u64, since_ns: u64, now_ns: u64) -> u64 {
        let Some(eni) = self.enis.get_mut(&slot) else {
            return 0;
        };
        let before = eni.lost.replace(total);
        let moved = match before {
            Some(b) if total > b => total - b,
            _ => return 0,
        };
        for i in eni.index(since_ns)..=eni.index(now_ns) {
            eni.windows.entry(i).or_default().skipped = true;
        }
        moved
    }

    /// The records of every window that ended `grace_ns` before `now_ns` (a window is
    /// written once, when the events of its last moments have been read).
    pub fn complete(&mut self, now_ns: u64, grace_ns: u64) -> Vec<Record> {
        self.enis
            .values_mut()
            .flat_map(|e| e.complete(now_ns, grace_ns))
            .collect()
    }
}

/// The endpoints' log files: `<dir>/<endpoint>.log`, each starting with `HEADER`,
/// rotated to `.1` … `.KEEP_ROTATED` when past `rotate_bytes`.
#[derive(Clone, Debug)]
pub struct LogFiles {
    pub dir: PathBuf,
    pub rotate_bytes: u64,
}

impl LogFiles {
    pub fn path(&self, endpoint: &str) -> PathBuf {
        self.dir.join(format!("{endpoint}.log"))
    }

    /// Appends `lines` to the endpoint's file (rotated first if it is past the size; a new
    /// file gets the header).
    pub fn append(&self, endpoint: &str, lines: &[String]) -> Result<()> {
        let path = self.path(endpoint);
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > self.rotate_bytes {
            rotate(&path, KEEP_ROTATED)?;
        }
        let fresh = size == 0 || size > self.rotate_bytes;
        let mut text = String::new();
        if fresh {
            text.push_str(HEADER);
            text.push('\n');
        }
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// `path` becomes `path.1`, `path.1` `path.2`, … up to `path.keep` (the oldest goes).
fn rotate(path: &Path, keep: usize) -> Result<()> {
    let numbered = |i: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    for i in (1..keep).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))
                .with_context(|| format!("rotating {}", from.display()))?;
        }
    }
    std::fs::rename(path, numbered(1)).with_context(|| format!("rotating {}", path.display()))
}

/// The Unix time, nanoseconds.
fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reads the flow events and writes the flow logs (see the module's doc). The daemon
/// calls `poll` every `Options::poll` with the ENIs whose flow logs are on (`targets`).
pub struct FlowLogger {
    ring: RingBuf<MapData>,
    /// The pinned `PL_EP_SLOTS` (which slot each ENI counts in) and `PL_EP_COUNTERS`
    /// (their `flow_log_lost`).
    slots: Map,
    counters: Map,
    agg: Aggregator,
    files: LogFiles,
    poll: Duration,
    stats: Arc<FlowLogStats>,
    /// The ENIs with flow logs on, as last given, and those of them whose slot is known.
    wanted: BTreeMap<CounterKey, Target>,
    resolved: BTreeMap<u32, Target>,
    resolved_at: Option<Instant>,
    /// The Unix time of the previous poll, nanoseconds.
    last_poll_ns: u64,
}

impl FlowLogger {
    /// A logger reading `ring` (`Dataplane::take_flow_events`), with the counter maps
    /// pinned in `pin_dir`.
    pub fn new(ring: RingBuf<MapData>, pin_dir: &Path, opts: Options) -> Result<Self> {
        Ok(Self {
            ring,
            slots: dataplane::open_pinned(pin_dir, map_names::EP_SLOTS)?,
            counters: dataplane::open_pinned(pin_dir, map_names::EP_COUNTERS)?,
            agg: Aggregator::default(),
            files: LogFiles {
                dir: opts.dir,
                rotate_bytes: opts.rotate_bytes,
            },
            poll: opts.poll,
            stats: Arc::default(),
            wanted: BTreeMap::new(),
            resolved: BTreeMap::new(),
            resolved_at: None,
            last_poll_ns: unix_now_ns(),
        })
    }

    /// How often `poll` should run.
    pub fn interval(&self) -> Duration {
        self.poll
    }

    /// The counters of what it has done (shared: the metrics read them).
    pub fn stats(&self) -> Arc<FlowLogStats> {
        self.stats.clone()
    }

    /// One round: the ENIs with flow logs on are `wanted`; the ring is drained, the lost
    /// events counted, and the windows that have ended written.
    pub fn poll(&mut self, wanted: BTreeMap<CounterKey, Target>) {
        let now = unix_now_ns();
        // The offset of the data path's clock (CLOCK_MONOTONIC_COARSE) from Unix time.
        let offset = now.saturating_sub(dataplane::coarse_now_ns());
        self.resolve(wanted);
        // New ENIs first, so that their first events count; gone ones after the drain,
        // so that their last ones do.
        self.agg.start(&self.resolved, now);
        self.drain(offset);
        let stopped = self.agg.stop(&self.resolved);
        self.agg.start(&self.resolved, now);
        self.count_lost(now);
        // An event is read at most one poll after it was reported (and the coarse clock
        // is a tick behind): a window is complete that long after its end.
        let grace = (self.poll + Duration::from_millis(250)).as_nanos() as u64;
        let done = self.agg.complete(now, grace);
        self.write(stopped.into_iter().chain(done));
        self.last_poll_ns = now;
    }

    /// Takes `wanted` as the ENIs with flow logs on: logs each endpoint whose flow log
    /// starts, stops or changes its window, and looks their slots up in `PL_EP_SLOTS`
    /// (again later while some are missing: the maps are behind the state).
    fn resolve(&mut self, wanted: BTreeMap<CounterKey, Target>) {
        let changed = wanted != self.wanted;
        let missing = self.resolved.len() < wanted.len()
            && self
                .resolved_at
                .is_none_or(|t| t.elapsed() >= RESOLVE_RETRY);
        if !changed && !missing {
            return;
        }
        if changed {
            self.log_changes(&wanted);
        }
        let slots: BTreeMap<CounterKey, u32> =
            match BpfHashMap::<_, CounterKey, u32>::try_from(&self.slots) {
                Ok(m) => m.iter().filter_map(|r| r.ok()).collect(),
                Err(e) => {
                    warn!(error = %e, "flow logs: reading {}", map_names::EP_SLOTS);
                    BTreeMap::new()
                }
            };
        self.resolved = wanted
            .iter()
            .filter_map(|(k, t)| slots.get(k).map(|s| (*s, t.clone())))
            .collect();
        self.resolved_at = Some(Instant::now());
        self.wanted = wanted;
    }

    /// One log line per endpoint whose flow log starts, stops, or changes its window.
    fn log_changes(&self, wanted: &BTreeMap<CounterKey, Target>) {
        let by_endpoint = |m: &BTreeMap<CounterKey, Target>| -> BTreeMap<String, u32> {
            m.values()
                .map(|t| (t.endpoint.clone(), t.window_seconds))
                .collect()
        };
        let (before, after) = (by_endpoint(&self.wanted), by_endpoint(wanted));
        let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for ep in names {
            match (before.get(ep), after.get(ep)) {
                (None, Some(w)) => info!(
                    endpoint = %ep,
                    window_seconds = w,
                    file = %self.files.path(ep).display(),
                    "flow log started"
                ),
                (Some(_), None) => info!(endpoint = %ep, "flow log stopped"),
                (Some(a), Some(b)) if a != b => {
                    info!(endpoint = %ep, window_seconds = b, "flow log window changed")
                }
                _ => {}
            }
        }
    }

    /// Reads every event on the ring (their times moved to Unix time by `offset`).
    fn drain(&mut self, offset: u64) {
        let (mut read, mut ignored) = (0, 0);
        while let Some(item) = self.ring.next() {
            let Some(ev) = Event::of_record(&item) else {
                continue;
            };
            read += 1;
            if !self.agg.add(ev, ev.time_ns.saturating_add(offset)) {
                ignored += 1;
            }
        }
        FlowLogStats::add(&self.stats.events_read, read);
        FlowLogStats::add(&self.stats.events_ignored, ignored);
    }

    /// Reads the `flow_log_lost` counter of every logged ENI; a window in which it moved
    /// is marked SKIPDATA.
    fn count_lost(&mut self, now: u64) {
        let a: PerCpuArray<_, EndpointCounters> = match PerCpuArray::try_from(&self.counters) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "flow logs: reading {}", map_names::EP_COUNTERS);
                return;
            }
        };
        for slot in self.resolved.keys() {
            let Ok(per_cpu) = a.get(slot, 0) else {
                continue;
            };
            let total = per_cpu.iter().map(|c| c.flow_log_lost).sum();
            let lost = self.agg.lost(*slot, total, self.last_poll_ns, now);
            FlowLogStats::add(&self.stats.events_lost, lost);
        }
    }

    /// Appends `records` to their endpoints' files, in order.
    fn write(&self, records: impl Iterator<Item = Record>) {
        let mut by_endpoint: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in records {
            by_endpoint
                .entry(r.endpoint().to_string())
                .or_default()
                .push(r.to_string());
        }
        for (ep, lines) in by_endpoint {
            match self.files.append(&ep, &lines) {
                Ok(()) => FlowLogStats::add(&self.stats.records_written, lines.len() as u64),
                Err(e) => warn!(endpoint = %ep, error = %format!("{e:#}"), "writing the flow log"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use privatelink_common::{ENI_FLAG_FLOW_LOG, FLOW_INGRESS};

    use super::*;
    use crate::{
        dataplane::slots::eni_key,
        desired::{Link, compute},
        model::{FlowLog, parse_state},
        monitor::Unhealthy,
    };

    const LAB: &str = include_str!("../../tests/lab.toml");
    const CLIENT: [u8; 4] = [10, 10, 2, 1];
    const ENI: [u8; 4] = [10, 10, 1, 100];
    /// A window of 2 s starting at Unix second 1000 (index 500).
    const T0: u64 = 1000 * NS;

    fn target(window_seconds: u32) -> Target {
        Target {
            endpoint: "ep-a".into(),
            account: "acct-a".into(),
            vpc: "vpc-a".into(),
            vswitch: "vsw-a1".into(),
            window_seconds,
        }
    }

    fn agg(window_seconds: u32) -> Aggregator {
        let mut a = Aggregator::default();
        a.start(&BTreeMap::from([(7, target(window_seconds))]), T0);
        a
    }

    /// A packet of the client's flow to the ENI's port 80 (ingress) or its reply.
    fn ev(direction: u8, tcp_flags: u8, bytes: u32, reason: Reason) -> FlowEvent {
        let (src, dst, sport, dport) = match direction {
            FLOW_INGRESS => (CLIENT, ENI, 40000, 80),
            _ => (ENI, CLIENT, 80, 40000),
        };
        FlowEvent {
            slot: 7,
            bytes,
            src,
            dst,
            sport,
            dport,
            proto: PROTO_TCP,
            tcp_flags,
            direction,
            reason: reason as u8,
            ..FlowEvent::default()
        }
    }

    fn lines(records: Vec<Record>) -> Vec<String> {
        records.iter().map(Record::to_string).collect()
    }

    #[test]
    fn the_logged_enis_are_those_the_data_path_flags() {
        let mut s = parse_state(LAB).unwrap();
        for e in &mut s.endpoints {
            e.flow_log =
                (e.id == "ep-a" || e.gateway.is_some()).then_some(FlowLog { window_seconds: 60 });
        }
        let link = |_: &str| {
            Ok(Link {
                ifindex: 1,
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
            })
        };
        let d = compute(&s, link, &Unhealthy::new()).unwrap();
        let flagged: BTreeSet<CounterKey> = d
            .endpoints
            .values()
            .chain(d.gw_routes.values())
            .filter(|e| e.flags & ENI_FLAG_FLOW_LOG != 0)
            .map(eni_key)
            .collect();
        let t = targets(&s);
        assert!(!flagged.is_empty());
        assert_eq!(t.keys().copied().collect::<BTreeSet<_>>(), flagged);
        let ep_a = t.values().find(|t| t.endpoint == "ep-a").unwrap();
        assert_eq!(ep_a.eni_id(), "eni-ep-a-vsw-a1");
        assert_eq!(
            (ep_a.account.as_str(), ep_a.vpc.as_str()),
            ("acct-a", "vpc-a")
        );
        // Off: no flag, no target.
        s.endpoints.iter_mut().for_each(|e| e.flow_log = None);
        let d = compute(&s, link, &Unhealthy::new()).unwrap();
        assert!(
            d.endpoints
                .values()
                .all(|e| e.flags & ENI_FLAG_FLOW_LOG == 0)
        );
        assert!(targets(&s).is_empty());
    }

    #[test]
    fn a_window_gives_one_record_per_flow_direction_and_action() {
        let mut a = agg(2);
        let ms = |n: u64| T0 + n * 1_000_000;
        assert!(a.add(&ev(FLOW_INGRESS, 0x02, 60, Reason::ForwardNewFlow), ms(100)));
        assert!(a.add(
            &ev(FLOW_EGRESS, 0x12, 60, Reason::ForwardToConsumer),
            ms(101)
        ));
        assert!(a.add(
            &ev(FLOW_INGRESS, 0x10, 52, Reason::ForwardToService),
            ms(102)
        ));
        assert!(a.add(
            &ev(FLOW_INGRESS, 0x19, 52, Reason::ForwardToService),
            ms(1500)
        ));
        assert!(a.add(
            &ev(FLOW_INGRESS, 0x02, 60, Reason::DropSecurityGroup),
            ms(1600)
        ));
        // Another slot: not logged.
        assert!(!a.add(
            &FlowEvent {
                slot: 8,
                ..ev(FLOW_INGRESS, 0x02, 60, Reason::ForwardNewFlow)
            },
            ms(100)
        ));
        // Not complete until the grace after its end has passed.
        assert!(a.complete(ms(2100), 200 * 1_000_000).is_empty());
        let got = lines(a.complete(ms(2200), 200 * 1_000_000));
        assert_eq!(
            got,
            [
                "5 acct-a eni-ep-a-vsw-a1 10.10.1.100 10.10.2.1 80 40000 6 1 60 1000 1000 ACCEPT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 egress 18",
                "5 acct-a eni-ep-a-vsw-a1 10.10.2.1 10.10.1.100 40000 80 6 1 60 1001 1001 REJECT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 ingress 2",
                "5 acct-a eni-ep-a-vsw-a1 10.10.2.1 10.10.1.100 40000 80 6 3 164 1000 1001 ACCEPT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 ingress 3",
            ]
        );
        // Every field has a name in the header.
        for l in &got {
            assert_eq!(l.split(' ').count(), HEADER.split(' ').count());
        }
    }

    #[test]
    fn ipv6_events_are_records_of_their_own_flows() {
        let c6: Ipv6Addr = "fd00:a:0:2::1".parse().unwrap();
        let e6: Ipv6Addr = "fd00:a:0:1::100".parse().unwrap();
        let ev6 = |direction, tcp_flags, bytes, reason: Reason| {
            let (src, dst, sport, dport) = match direction {
                FLOW_INGRESS => (c6, e6, 40000, 80),
                _ => (e6, c6, 80, 40000),
            };
            FlowEvent6 {
                slot: 7,
                bytes,
                src: src.octets(),
                dst: dst.octets(),
                sport,
                dport,
                proto: PROTO_TCP,
                tcp_flags,
                direction,
                reason: reason as u8,
                ..FlowEvent6::default()
            }
        };
        // Records as the ring holds them: the length says which family.
        let raw = |b: &[u8]| Event::of_record(b);
        let e = ev6(FLOW_INGRESS, 0x02, 80, Reason::Forward6NewFlow);
        // SAFETY: viewing plain #[repr(C)] values as their bytes.
        let bytes6 = unsafe {
            std::slice::from_raw_parts(
                (&e as *const FlowEvent6).cast::<u8>(),
                size_of::<FlowEvent6>(),
            )
        };
        let got = raw(bytes6).unwrap();
        assert_eq!((got.src, got.dst, got.bytes), (c6.into(), e6.into(), 80));
        let e4 = ev(FLOW_INGRESS, 0x02, 60, Reason::ForwardNewFlow);
        // SAFETY: as above.
        let bytes4 = unsafe {
            std::slice::from_raw_parts(
                (&e4 as *const FlowEvent).cast::<u8>(),
                size_of::<FlowEvent>(),
            )
        };
        assert_eq!(raw(bytes4).unwrap().src, IpAddr::from(CLIENT));
        assert_eq!(raw(&bytes6[..40]), None, "a length of neither");

        let mut a = agg(2);
        let ms = |n: u64| T0 + n * 1_000_000;
        assert!(a.add(&e, ms(100)));
        assert!(a.add(
            &ev6(FLOW_EGRESS, 0x12, 80, Reason::Forward6ToConsumer),
            ms(101)
        ));
        assert!(a.add(
            &ev6(FLOW_INGRESS, 0x10, 72, Reason::Forward6ToService),
            ms(102)
        ));
        // The IPv4 flow with the same ports is another record.
        assert!(a.add(&e4, ms(103)));
        assert!(a.add(
            &ev6(FLOW_INGRESS, 0x02, 80, Reason::DropSecurityGroup),
            ms(104)
        ));
        let got = lines(a.complete(ms(2200), 200 * 1_000_000));
        assert_eq!(
            got,
            [
                "5 acct-a eni-ep-a-vsw-a1 10.10.2.1 10.10.1.100 40000 80 6 1 60 1000 1000 ACCEPT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 ingress 2",
                "5 acct-a eni-ep-a-vsw-a1 fd00:a:0:1::100 fd00:a:0:2::1 80 40000 6 1 80 1000 1000 ACCEPT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 egress 18",
                "5 acct-a eni-ep-a-vsw-a1 fd00:a:0:2::1 fd00:a:0:1::100 40000 80 6 1 80 1000 1000 REJECT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 ingress 2",
                "5 acct-a eni-ep-a-vsw-a1 fd00:a:0:2::1 fd00:a:0:1::100 40000 80 6 2 152 1000 1000 ACCEPT OK vpc-a vsw-a1 eni-ep-a-vsw-a1 ingress 2",
            ]
        );
    }

    #[test]
    fn an_idle_window_is_one_nodata_record() {
        let mut a = agg(2);
        let got = lines(a.complete(T0 + 4 * NS + 300_000_000, 250_000_000));
        let nodata = |s: u64| {
            format!(
                "5 acct-a eni-ep-a-vsw-a1 - - - - - - - {s} {} - NODATA vpc-a vsw-a1 eni-ep-a-vsw-a1 - -",
                s + 2
            )
        };
        assert_eq!(got, [nodata(1000), nodata(1002)]);
        assert_eq!(got[0].split(' ').count(), HEADER.split(' ').count());
    }

    /// A clock stepped decades forward gives one NODATA record for the idle run, not one
    /// per window; the windows after it are written as before.
    #[test]
    fn a_clock_step_is_one_nodata_record() {
        let mut a = agg(2);
        let far = T0 + 3_000_000_000 * NS;
        let got = lines(a.complete(far, 0));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(" NODATA "), "{got:?}");
        let next = lines(a.complete(far + 4 * NS, 0));
        assert_eq!(next.len(), 2, "{next:?}");
    }

    #[test]
    fn lost_events_mark_their_windows_skipdata() {
        let mut a = agg(2);
        // The first read is the baseline: what was lost before the flow log started.
        assert_eq!(a.lost(7, 40, T0, T0 + 100_000_000), 0);
        a.add(
            &ev(FLOW_INGRESS, 0x02, 60, Reason::ForwardNewFlow),
            T0 + 200_000_000,
        );
        assert_eq!(a.lost(7, 40, T0 + 100_000_000, T0 + 300_000_000), 0);
        // Lost between a poll in the first window and one in the second: both marked.
        assert_eq!(a.lost(7, 45, T0 + 1_900_000_000, T0 + 2_100_000_000), 5);
        let got = lines(a.complete(T0 + 6 * NS, 0));
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].contains(" ACCEPT SKIPDATA "), "{}", got[0]);
        assert_eq!(
            got[1],
            "5 acct-a eni-ep-a-vsw-a1 - - - - - - - 1002 1004 - SKIPDATA vpc-a vsw-a1 eni-ep-a-vsw-a1 - -"
        );
        assert!(got[2].contains(" NODATA "), "{}", got[2]);
        // A zeroed counter (the slot given to something new) is a new baseline.
        assert_eq!(a.lost(7, 0, T0 + 6 * NS, T0 + 7 * NS), 0);
    }

    #[test]
    fn a_late_event_joins_the_first_open_window_and_stopping_writes_what_is_open() {
        let mut a = agg(2);
        a.complete(T0 + 3 * NS, 0);
        a.add(
            &ev(FLOW_EGRESS, 0x11, 52, Reason::ForwardToConsumer),
            T0 + 1_999_000_000,
        );
        let gone = lines(a.stop(&BTreeMap::new()));
        assert_eq!(gone.len(), 1);
        assert!(
            gone[0].contains(" 1001 1001 ACCEPT OK ") && gone[0].ends_with(" egress 1"),
            "{}",
            gone[0]
        );
        assert!(!a.add(&ev(FLOW_INGRESS, 2, 60, Reason::ForwardNewFlow), T0));
        // A new window length is a new aggregation (the old one's records come out).
        let mut a = agg(2);
        a.add(&ev(FLOW_INGRESS, 2, 60, Reason::ForwardNewFlow), T0);
        let longer = BTreeMap::from([(7, target(60))]);
        assert_eq!(a.stop(&longer).len(), 1);
        a.start(&longer, T0 + NS);
        // Its first window is [960, 1020).
        assert!(a.complete(T0 + 10 * NS, 0).is_empty());
        assert_eq!(a.complete(T0 + 20 * NS, 0).len(), 1);
    }

    #[test]
    fn aws_flags_keep_fin_syn_rst_and_syn_ack() {
        assert_eq!(aws_tcp_flags(0x02), 2);
        assert_eq!(aws_tcp_flags(0x12), 18);
        assert_eq!(aws_tcp_flags(0x10), 0);
        assert_eq!(aws_tcp_flags(0x18), 0);
        assert_eq!(aws_tcp_flags(0x11), 1);
        assert_eq!(aws_tcp_flags(0x14), 4);
    }

    #[test]
    fn files_start_with_the_header_and_rotate_past_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles {
            dir: dir.path().join("flow-logs"),
            rotate_bytes: 300,
        };
        let line = "x".repeat(99);
        for _ in 0..(KEEP_ROTATED + 3) * 2 {
            files.append("ep-a", &[line.clone(), line.clone()]).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join("flow-logs").join(name));
        for name in std::iter::once("ep-a.log".to_string())
            .chain((1..=KEEP_ROTATED).map(|i| format!("ep-a.log.{i}")))
        {
            let text = read(&name).unwrap();
            let mut l = text.lines();
            assert_eq!(l.next(), Some(HEADER), "{name}");
            assert!(l.all(|x| x == line), "{name}");
            // Rotated once past the size: at most one append beyond it.
            assert!(
                text.len() as u64 <= 300 + 200 + 2 + HEADER.len() as u64,
                "{name}"
            );
        }
        assert!(read(&format!("ep-a.log.{}", KEEP_ROTATED + 1)).is_err());
    }
}
