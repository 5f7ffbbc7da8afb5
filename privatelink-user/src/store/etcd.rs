//! The shared store: the state in an etcd cluster, for a fleet of daemons that each serve
//! the API and each keep their own data path in step with it.
//!
//! **Layout.** Under the prefix (`--etcd-prefix`, `/privatelink`): one key per object,
//! `<prefix>/objects/<kind>/<id>` → the same JSON records as redb's, and the commit marker
//! `<prefix>/rev`, which every commit writes.
//!
//! **Commits.** A change is one etcd transaction: if the marker's `mod_revision` is still
//! the one this daemon last loaded or wrote (`seen`), put the changed objects, delete the
//! removed ones and put the marker; otherwise write nothing (`StoreError::Conflict`). So
//! every commit is made from the state as the previous commit left it, whichever daemon
//! made it: a change validated against a stale state (a whitelist, an address taken
//! meanwhile, a capacity) can never land; the daemon catches up and runs the operation
//! again on the new state (`api::mutate`). The commits of a fleet are thereby serialized
//! on one key, which is what a control plane of this size needs (a commit is a few
//! milliseconds) and what keeps every invariant the model checks whole-state.
//!
//! **Catching up.** Each daemon watches the prefix (`watch`); every event, and every
//! reconnection of the watch, wakes it to compare the marker with `seen` and, if another
//! daemon committed, to read the whole state at once (one range read: a consistent
//! snapshot) and apply it. The daemon's 5-second tick does the same, in case a watch
//! event was missed.
//!
//! **Losing etcd.** A request that fails on its way (a member down: the client's balanced
//! channel may pick it) is sent again, to another member, within `REQUEST_TIMEOUT`; a
//! commit is sent again with the same commit id (the marker's value), so one that landed
//! on an earlier try is recognised as this daemon's own and not reported as a conflict.
//! When etcd cannot be reached at all (no majority), the daemon says
//! `StoreError::Unavailable`: before a commit was sent nothing changed; once one was
//! sent the outcome is unknown (etcd may still commit it: a later catch-up shows it). The
//! data path keeps the last state it had, and the watch is re-established every half
//! second until etcd answers again, when the daemon catches up by itself. Errors that
//! are not about reaching etcd (a transaction over its limits, an unreadable record) are
//! plain errors, not `Unavailable`.
//!
//! **Namespaces.** The client runs on a thread of its own, started before the daemon
//! enters `--netns` (`EtcdRuntime`): its connections, reconnections included, are made
//! in the host's namespace, as the API's socket is, while the data path lives in the
//! forwarder's namespace.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::{runtime::Handle, sync::Notify};
use tracing::{debug, info, warn};

use super::{Store, StoreError, StoreFuture, changes, from_records};
use crate::model::State;

/// How long one request to etcd may take before the store counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one try of a request may take (`EtcdRuntime::run`).
const TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a lost watch is tried again.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// How long one try to renew a lease waits for etcd's answer (`under_lease`). When etcd
/// regains its majority, its new leader gives every lease its ttl plus an election
/// timeout (3.5 s in the fleet lab), while a restarted member may take requests it cannot
/// answer until it has caught up: a try it held for the client's request timeout (3 s),
/// then the pause before the next, let a lease run out although the others could renew it.
const RENEW_TRY: Duration = Duration::from_millis(500);
/// How soon a failed renewal is tried again, on a new stream (to a member the client's
/// channel picks again).
const RENEW_RETRY: Duration = Duration::from_millis(200);
/// While no try to open a lease's keep-alive stream has answered, another starts beside
/// the others this often, `RENEW_HEDGE` at most waiting at a time (`hedged_keep_alive`).
const RENEW_HEDGE_EVERY: Duration = Duration::from_millis(200);
const RENEW_HEDGE: usize = 3;

/// The etcd client's own thread and runtime (see the module's text).
#[derive(Clone)]
pub struct EtcdRuntime {
    handle: Handle,
}

impl EtcdRuntime {
    /// Starts the thread; call it before entering another network namespace.
    pub fn start() -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>());
            })
            .context("starting the etcd client's thread")?;
        let handle = rx
            .recv()
            .context("the etcd client's thread")?
            .context("the etcd client's runtime")?;
        Ok(Self { handle })
    }

    /// Runs the request `f` makes on the etcd thread and waits for it; a request that
    /// fails on its way to etcd is made again (to another member, as the client's channel
    /// picks) until it is answered or `REQUEST_TIMEOUT` has passed.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let task = self.handle.spawn(async move {
            let start = tokio::time::Instant::now();
            let mut attempts = 0;
            loop {
                attempts += 1;
                // Every try within what is left of the one deadline, and at most a third
                // of it (a member that drops packets leaves time for the others).
                let left = REQUEST_TIMEOUT.saturating_sub(start.elapsed());
                let why = match tokio::time::timeout(left.min(TRY_TIMEOUT), f()).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) if unreachable(&e) => e.to_string(),
                    Ok(Err(e)) => return Err(anyhow!("etcd: {e}")),
                    Err(_) => format!("no answer within {:?}", left.min(TRY_TIMEOUT)),
                };
                if start.elapsed() >= REQUEST_TIMEOUT {
                    return Err(anyhow!(StoreError::Unavailable(format!(
                        "{why} (tried {attempts} times in {REQUEST_TIMEOUT:?})"
                    ))));
                }
                tokio::time::sleep(Duration::from_millis(20 * attempts.min(10))).await;
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow!(StoreError::Unavailable(format!(
                "the etcd client's thread: {e}"
            )))),
        }
    }
}

/// `key`'s value (or with `prefix`, every key under it), read through `rt`.
async fn get(
    rt: &EtcdRuntime,
    client: &Client,
    key: String,
    prefix: bool,
) -> Result<etcd_client::GetResponse> {
    let c = client.clone();
    rt.run(move || {
        let (mut c, key) = (c.clone(), key.clone());
        let opts = prefix.then(|| GetOptions::new().with_prefix());
        async move { c.get(key, opts).await }
    })
    .await
}

/// Whether `e` is about reaching etcd (a transport failure, a member without a leader, a
/// timeout), not about the request: gRPC's Cancelled (1), Unknown (2, what a reset
/// connection shows as), DeadlineExceeded (4) and Unavailable (14).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 14),
        _ => false,
    }
}

pub struct EtcdStore {
    rt: EtcdRuntime,
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    /// The marker's `mod_revision` as this daemon last read or wrote it (0: no commit yet).
    seen: i64,
    /// The key of this daemon's last commit (`write`).
    own_commit: Option<String>,
}

/// A commit's id: the host, the process, the time, a random number.
fn commit_id() -> Vec<u8> {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{host}/{}/{t}/{:016x}",
        std::process::id(),
        u64::from_le_bytes(r)
    )
    .into_bytes()
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (client URLs) and keeps the state under
    /// `prefix`.
    pub async fn connect(rt: EtcdRuntime, endpoints: Vec<String>, prefix: &str) -> Result<Self> {
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            anyhow::bail!("--etcd-prefix {prefix:?}: a key prefix starts with /");
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let eps = endpoints.clone();
        let client = rt
            .run(move || {
                let (eps, opts) = (eps.clone(), opts.clone());
                async move { Client::connect(eps, Some(opts)).await }
            })
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
        Ok(Self {
            rt,
            client,
            endpoints,
            prefix,
            seen: 0,
            own_commit: None,
        })
    }

    fn marker(&self) -> String {
        format!("{}/rev", self.prefix)
    }

    fn object_key(&self, record: &str) -> String {
        format!("{}/objects/{record}", self.prefix)
    }

    /// Reads the whole state and the marker in one range read (one revision's snapshot).
    async fn read(&mut self) -> Result<State> {
        let resp = get(&self.rt, &self.client, format!("{}/", self.prefix), true).await?;
        let objects = format!("{}/objects/", self.prefix);
        let marker = self.marker();
        let mut seen = 0;
        let mut records = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if key == marker {
                seen = kv.mod_revision();
            } else if let Some(record) = key.strip_prefix(&objects) {
                records.push((
                    kv.create_revision(),
                    record.to_string(),
                    kv.value().to_vec(),
                ));
            }
        }
        // In the order the objects were created (then by key, for those one commit made):
        // the order the daemon that made them holds them in (new objects are appended),
        // so that every host lists them, and names them in errors (`services[1]`), alike.
        records.sort();
        let state = from_records(records.iter().map(|(_, k, v)| (k.as_str(), v.as_slice())))?;
        self.seen = seen;
        Ok(state)
    }

    async fn write(&mut self, current: &State, next: &State) -> Result<()> {
        let (puts, deletes) = changes(current, next)?;
        let marker = self.marker();
        let mut ops: Vec<TxnOp> = puts
            .into_iter()
            .map(|(k, v)| TxnOp::put(self.object_key(&k), v, None))
            .collect();
        ops.extend(
            deletes
                .iter()
                .map(|k| TxnOp::delete(self.object_key(k), None)),
        );
        // This commit's id, and a key of its own (`<prefix>/commits/<id>`, the daemon's
        // previous one removed in the same transaction: one per daemon): a try that landed
        // though its answer was lost is known by it on a later try, even once others have
        // committed after it.
        let id = String::from_utf8_lossy(&commit_id()).into_owned();
        let own = format!("{}/commits/{id}", self.prefix);
        ops.push(TxnOp::put(marker.clone(), id.clone(), None));
        ops.push(TxnOp::put(own.clone(), Vec::new(), None));
        if let Some(previous) = &self.own_commit {
            ops.push(TxnOp::delete(previous.clone(), None));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(marker, CompareOp::Equal, self.seen)])
            .and_then(ops);
        let c = self.client.clone();
        let sent = |e: anyhow::Error| match super::store_error(&e) {
            Some(StoreError::Unavailable(why)) => anyhow!(StoreError::Unavailable(format!(
                "{why} (the change was sent: whether etcd commits it is unknown until it \
                 answers again)"
            ))),
            _ => e,
        };
        let resp = self
            .rt
            .run(move || {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await
            .map_err(sent)?;
        let landed = if resp.succeeded() {
            // The marker was written in this transaction: its mod_revision is the
            // transaction's revision.
            resp.header()
                .map(|h| h.revision())
                .context("etcd's answer has no header")?
        } else {
            // Refused: another daemon committed first, or an earlier try of this very
            // commit landed (its answer was lost): then its own key is there, written at
            // that commit's revision.
            let resp = get(&self.rt, &self.client, own.clone(), false)
                .await
                .map_err(sent)?;
            match resp.kvs().first() {
                Some(kv) => kv.mod_revision(),
                None => return Err(anyhow!(StoreError::Conflict)),
            }
        };
        // The store as this daemon knows it is the one its commit made (a later commit by
        // another daemon makes the next one conflict, and the daemon catch up).
        self.seen = landed;
        self.own_commit = Some(own);
        Ok(())
    }

    /// The marker's mod_revision now (0 if no commit yet).
    async fn marker_now(&self) -> Result<i64> {
        let resp = get(&self.rt, &self.client, self.marker(), false).await?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }

    async fn moved(&mut self) -> Result<Option<State>> {
        let now = self.marker_now().await?;
        if now == self.seen {
            return Ok(None);
        }
        self.read().await.map(Some)
    }

    /// What watches this store's prefix (`EtcdWatch::watch`).
    pub fn watcher(&self) -> EtcdWatch {
        EtcdWatch {
            rt: self.rt.clone(),
            client: self.client.clone(),
            prefix: format!("{}/", self.prefix),
        }
    }
}

/// A host of the fleet, as it registered itself (`EtcdWatch::register`) under a lease:
/// listed for as long as it keeps the lease alive, gone a lease's time after it stops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    /// `--host-name` (default: the machine's name).
    #[schema(example = "fwd-1")]
    pub host: String,
    /// Where its API listens.
    #[schema(example = "http://10.0.0.11:7070")]
    pub api: String,
    /// Unix seconds of its registration (its start, or a new lease after its lease
    /// expired).
    pub since: u64,
    /// The SNAT slot it holds (`--snat-slots`; none without, or while it waits for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_slot: Option<u32>,
}

/// `f`'s answer; or, once `limit` has passed without one, a timeout (an error that
/// `unreachable` counts as not reaching etcd).
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| Err(no_answer_within(limit)))
}

/// The timeout `within` and `hedged_keep_alive` give (`unreachable` counts it as not
/// reaching etcd).
fn no_answer_within(limit: Duration) -> etcd_client::Error {
    etcd_client::Error::IoError(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {limit:?}"),
    ))
}

/// Opens `lease`'s keep-alive stream (etcd-client renews the lease once as it opens it),
/// waiting `bound` at most. One try starts at once and, while none has answered, another
/// every `RENEW_HEDGE_EVERY` (`RENEW_HEDGE` at most waiting at a time), each on the member
/// the client's channel picks for it: a member that holds requests without answering (a
/// restarted one before it has caught up, a stalled one) holds one try, not the lease.
/// The first answer counts and the other tries are dropped; an error that is not one of
/// reaching etcd (not `unreachable`: etcd said something about the lease) counts at once.
/// Past `bound` without an answer: the last error seen, else a timeout.
async fn hedged_keep_alive(
    c: &Client,
    lease: i64,
    bound: Duration,
) -> Result<(LeaseKeeper, LeaseKeepAliveStream), etcd_client::Error> {
    use tokio::time::{Instant, sleep_until};
    let deadline = Instant::now() + bound;
    let mut tries = tokio::task::JoinSet::new();
    let (mut next, mut last) = (Instant::now(), None);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(last.unwrap_or_else(|| no_answer_within(bound)));
        }
        if now >= next && tries.len() < RENEW_HEDGE {
            let mut c = c.clone();
            tries.spawn(async move { c.lease_keep_alive(lease).await });
            next = now + RENEW_HEDGE_EVERY;
        }
        // The next try's start, unless as many as may wait are waiting.
        let wake = if tries.len() < RENEW_HEDGE {
            next.min(deadline)
        } else {
            deadline
        };
        // A try that answered counts before a deadline that came with it.
        tokio::select! {
            biased;
            Some(done) = tries.join_next() => match done {
                Ok(Ok(opened)) => return Ok(opened),
                Ok(Err(e)) if unreachable(&e) => last = Some(e),
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    last = Some(etcd_client::Error::IoError(std::io::Error::other(e.to_string())))
                }
            },
            _ = sleep_until(wake) => {}
        }
    }
}

/// One step `under_lease` runs under the lease.
type LeaseStep = std::pin::Pin<Box<dyn Future<Output = Result<(), etcd_client::Error>> + Send>>;

/// A host's SNAT slots setting and the share it keeps for the applier (`hold_slot`).
#[derive(Clone)]
pub struct Slots {
    /// How many slots the fleet's port ranges are cut into (`--snat-slots`).
    pub count: u32,
    pub share: crate::fleet::SharedShare,
    /// Woken when the share changes: the maps are recomputed.
    pub changed: Arc<Notify>,
}

impl Slots {
    /// Sets the share; whether it changed (and `changed` was woken).
    fn set(&self, to: crate::fleet::PortShare) -> bool {
        let Ok(mut s) = self.share.lock() else {
            return false;
        };
        if *s == to {
            return false;
        }
        *s = to;
        self.changed.notify_one();
        true
    }
}

/// The slots under `<prefix>slots/` in `kvs`: (slot, host, lease).
fn held_slots(prefix: &str, kvs: &[etcd_client::KeyValue]) -> Vec<(u32, String, i64)> {
    let head = format!("{prefix}slots/");
    kvs.iter()
        .filter_map(|kv| {
            let slot = kv.key_str().ok()?.strip_prefix(&head)?.parse().ok()?;
            Some((slot, kv.value_str().ok()?.to_string(), kv.lease()))
        })
        .collect()
}

/// What one round of `claim_slot` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// This host holds slot n, under its current lease.
    Held(u32),
    /// No slot is free.
    Full,
    /// Slot n, under this host's name, is under a lease that is not this process's:
    /// another daemon runs under the same `--host-name`. It keeps the slot.
    Foreign(u32),
    /// The fleet cuts its ranges into another number of slots (`<prefix>/slots/count`).
    Count(u32),
}

/// What a host's slot task remembers between rounds (`hold_slot`).
#[derive(Clone, Copy, Debug, Default)]
struct Holding {
    /// The slot held and the lease it was put under.
    held: Option<(u32, i64)>,
    /// The slot held last, kept when its lease expires.
    last_slot: Option<u32>,
    /// The last round's finding (said when it changes).
    last: Option<Claim>,
    /// Whether a round has run (the first may take back the previous process's slot).
    ran: bool,
}

/// One round of holding a SNAT slot under `lease`.
///
/// `<prefix>slots/<n>` → the host's name, attached to its lease; `<prefix>slots/count`
/// → the number of slots, set by the fleet's first host and compared in every claim, so
/// hosts started with different `--snat-slots` never hold overlapping slices. A host
/// keeps the slot it holds (any under its current lease; `past.held`: the slot and the
/// lease it was last put under); takes back its slot from a lease of its own (`held`'s,
/// the lease this process last held it under; or, at the process's first round, the
/// previous process's: the same host restarted within its lease, when no other host
/// could have taken the slot);
/// or creates the first free one of the slot it held last and its `slot_order` (a
/// transaction on the key's absence, so of two hosts racing for it one wins). A slot
/// whose holder died stays taken until etcd expires that lease and deletes the key: only
/// then can another host create it.
async fn claim_slot(
    c: &mut Client,
    prefix: &str,
    host: &str,
    lease: i64,
    count: u32,
    past: Holding,
) -> Result<Claim, etcd_client::Error> {
    let (held, first) = (past.held, !past.ran);
    let head = format!("{prefix}slots/");
    let key = |n: u32| format!("{head}{n}");
    let count_key = format!("{head}count");
    let resp = c
        .get(head.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    match resp
        .kvs()
        .iter()
        .find(|kv| kv.key() == count_key.as_bytes())
    {
        Some(kv) => {
            let theirs = kv
                .value_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if theirs != count {
                return Ok(Claim::Count(theirs));
            }
        }
        None => {
            // The first host sets it; a first host with another count racing for it
            // loses this transaction or the compare below.
            let t = Txn::new()
                .when(vec![Compare::create_revision(
                    count_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(count_key.clone(), count.to_string(), None)]);
            c.txn(t).await?;
        }
    }
    let same_count = || Compare::value(count_key.clone(), CompareOp::Equal, count.to_string());
    let now = held_slots(prefix, resp.kvs());
    // Under this lease: this host's, whatever it believed (a commit whose answer was lost
    // in a timeout still landed). Should two be (a late commit of a claim that timed out,
    // then another), the one it held or held last is kept and the others given back.
    let mine: Vec<u32> = now
        .iter()
        .filter(|(s, h, l)| h == host && *l == lease && *s < count)
        .map(|(s, ..)| *s)
        .collect();
    if let Some(keep) = [past.held.map(|(n, _)| n), past.last_slot]
        .into_iter()
        .flatten()
        .find(|n| mine.contains(n))
        .or(mine.first().copied())
    {
        for extra in mine.iter().filter(|n| **n != keep) {
            let t = Txn::new()
                .when(vec![Compare::lease(key(*extra), CompareOp::Equal, lease)])
                .and_then(vec![TxnOp::delete(key(*extra), None)]);
            c.txn(t).await?;
        }
        return Ok(Claim::Held(keep));
    }
    let put = PutOptions::new().with_lease(lease);
    if let Some((n, _, l)) = now.iter().find(|(s, h, _)| h == host && *s < count) {
        let ours = match held {
            Some((hn, hl)) => hn == *n && hl == *l,
            None => first,
        };
        if !ours {
            return Ok(Claim::Foreign(*n));
        }
        let t = Txn::new()
            .when(vec![
                Compare::value(key(*n), CompareOp::Equal, host),
                Compare::lease(key(*n), CompareOp::Equal, *l),
                same_count(),
            ])
            .and_then(vec![TxnOp::put(key(*n), host, Some(put.clone()))]);
        if c.txn(t).await?.succeeded() {
            return Ok(Claim::Held(*n));
        }
    }
    // The slot last held first (after its lease expired, the replies of the flows it
    // still carries route there), then the host's order.
    let last = past.last_slot.filter(|n| *n < count);
    for n in last
        .into_iter()
        .chain(crate::fleet::slot_order(host, count))
    {
        if now.iter().any(|(s, ..)| *s == n) {
            continue;
        }
        let t = Txn::new()
            .when(vec![
                Compare::create_revision(key(n), CompareOp::Equal, 0),
                same_count(),
            ])
            .and_then(vec![TxnOp::put(key(n), host, Some(put.clone()))]);
        if c.txn(t).await?.succeeded() {
            return Ok(Claim::Held(n));
        }
    }
    Ok(Claim::Full)
}

/// What went wrong with a lease (`under_lease`'s log).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trouble {
    Expired,
    StreamClosed,
    RenewalFailed,
    GrantFailed,
}

/// A watch of the store's prefix, and the fleet's membership under it.
#[derive(Clone)]
pub struct EtcdWatch {
    rt: EtcdRuntime,
    client: Client,
    prefix: String,
}

impl EtcdWatch {
    /// Keeps `<prefix>/hosts/<host>` → `member` registered under a lease of `ttl` seconds
    /// for as long as the process runs (`under_lease`). The daemon registers once it
    /// serves: a host listed is ready, which is what the fabric in front of the fleet
    /// waits for before it sends the host flows.
    pub fn register(&self, mut member: Member, ttl: i64) {
        let key = format!("{}hosts/{}", self.prefix, member.host);
        let host = member.host.clone();
        let taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.under_lease(format!("fleet membership of {host}"), ttl, move |mut c, lease, fresh| {
            if fresh {
                member.since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            }
            let value = serde_json::to_vec(&member).unwrap_or_default();
            let (key, host, taken) = (key.clone(), host.clone(), taken.clone());
            Box::pin(async move {
                let now = c.get(key.clone(), None).await?;
                if now.kvs().first().is_none_or(|kv| kv.lease() != lease) {
                    // Another daemon registering under this name moves the key to its
                    // lease: said once, and the key is put back under ours (the names
                    // must be unique: --host-name).
                    if !fresh && !taken.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        warn!(%host, "another daemon of the fleet registers under this host name (--host-name must be unique)");
                    }
                    c.put(key, value, Some(PutOptions::new().with_lease(lease))).await?;
                }
                Ok(())
            })
        }, || {});
    }

    /// Holds one of `slots.count` SNAT slots for `host` under a lease of `ttl` seconds
    /// (`claim_slot`), from the daemon's start on (before it serves: a host that restarts
    /// within its lease finds its slot still under its name), and keeps `slots.share`
    /// (the applier's view) in step, waking `slots.changed`.
    ///
    /// The share follows what etcd says, never a guess: it changes when etcd answers that
    /// the host holds another slot or none, or that its lease has expired (then no slot
    /// until one is held again). While etcd cannot be reached the host keeps its slot, as
    /// its data path keeps its last state: with the majority down no lease expires and no
    /// slot can change hands; a host partitioned alone from a working etcd loses its slot
    /// when its lease expires, and the fabric, which follows etcd, stops sending it new
    /// flows and routes the slot's replies to the new holder in the same step.
    pub fn hold_slot(&self, host: String, ttl: i64, slots: Slots) {
        let prefix = self.prefix.clone();
        let state = Arc::new(std::sync::Mutex::new(Holding::default()));
        let (on_expiry, expired_host, expired_state) = (slots.clone(), host.clone(), state.clone());
        self.under_lease(
            format!("SNAT slot of {host}"),
            ttl,
            move |mut c, lease, _| {
                let (prefix, host, s, state) = (prefix.clone(), host.clone(), slots.clone(), state.clone());
                Box::pin(async move {
                    let past = state.lock().map_or_else(|e| *e.into_inner(), |h| *h);
                    let claim = claim_slot(&mut c, &prefix, &host, lease, s.count, past).await?;
                    let mut h = state.lock().unwrap_or_else(|e| e.into_inner());
                    h.ran = true;
                    h.held = match claim {
                        Claim::Held(n) => Some((n, lease)),
                        _ => None,
                    };
                    if let Claim::Held(n) = claim {
                        h.last_slot = Some(n);
                    }
                    if h.last != Some(claim) {
                        match claim {
                            Claim::Held(n) => info!(%host, slot = n, slots = s.count, "holds SNAT slot"),
                            Claim::Full => warn!(%host, slots = s.count, "no SNAT slot free: this host takes no new flows until one is"),
                            Claim::Foreign(n) => warn!(%host, slot = n, "another daemon of the fleet holds this host's SNAT slot under the same host name (--host-name must be unique): this one takes no new flows"),
                            Claim::Count(n) => warn!(%host, slots = s.count, fleet = n, "the fleet's SNAT ports are cut into another number of slots (<prefix>/slots/count; delete it once no host holds a slot to change it): this host takes no new flows"),
                        }
                        h.last = Some(claim);
                    }
                    drop(h);
                    s.set(match claim {
                        Claim::Held(n) => crate::fleet::PortShare::Slot { slot: n, slots: s.count },
                        _ => crate::fleet::PortShare::Nothing,
                    });
                    Ok(())
                })
            },
            move || {
                if let Ok(mut h) = expired_state.lock() {
                    h.held = None;
                    h.last = None;
                }
                if on_expiry.set(crate::fleet::PortShare::Nothing) {
                    warn!(host = %expired_host, "SNAT slot's lease expired: no new flows until a slot is held again");
                }
            },
        );
    }

    /// Runs `each(client, lease, fresh)` under a lease of `ttl` seconds, on the etcd
    /// thread for as long as the process runs: after every renewal (every third of
    /// `ttl`), with `fresh` true until a step has succeeded under the lease. When etcd
    /// says the lease expired (on the keep-alive stream, or when asked after the stream
    /// broke), `expired` runs and a new lease is granted once etcd answers.
    ///
    /// A keep-alive stream that breaks (its member stopped, or etcd without a leader
    /// timing the renewal out) does not lose the lease: the same lease is renewed on a
    /// new stream, so what was put under it stays put. Only etcd's word that it expired
    /// takes a new one. (Taking a new lease at every broken stream would leave the keys
    /// under the old one until they moved: when etcd regains its majority, every lease
    /// gets its ttl again, and a grant that waited out a request timeout while there was
    /// no leader can come after the old lease has run out.)
    ///
    /// A renewal etcd has not answered within `RENEW_TRY` counts as a broken stream, and a
    /// failed one is tried again `RENEW_RETRY` later on a new stream, until etcd answers.
    /// The new stream is opened by hedged tries (`hedged_keep_alive`): one that went to a
    /// member unable to answer (restarted and not yet serving, or stalled) costs 200 ms
    /// before the next starts beside it, not the lease. Each failure in a row doubles the
    /// wait for the next answer, up to a third of the lease (an etcd slow to answer
    /// everything is still heard), and an answer brings it back. Renewals keep their pace,
    /// a third of the lease from one answer to the next try, however long the step took.
    fn under_lease<F, E>(&self, what: String, ttl: i64, mut each: F, expired: E)
    where
        F: FnMut(Client, i64, bool) -> LeaseStep + Send + 'static,
        E: Fn() + Send + 'static,
    {
        let mut c = self.client.clone();
        self.rt.handle.spawn(async move {
            // The lease held, once granted, until etcd says it expired; and whether no
            // step has run under it yet (`fresh`, kept across new streams).
            let (mut held, mut fresh): (Option<i64>, bool) = (None, true);
            // The last trouble said since a step last succeeded (none: all is well).
            let mut said: Option<Trouble> = None;
            // The renewals' pace: a third of the lease.
            let pace = Duration::from_millis(ttl as u64 * 1000 / 3);
            // How long the next answer is waited for, and its most: the pace (at least
            // `RENEW_TRY`), which bounds a step too.
            let mut bound = RENEW_TRY;
            let most = pace.max(RENEW_TRY);
            loop {
                // Ok(true): etcd said the lease expired; Ok(false): the keep-alive stream
                // closed (a member going away: the lease renewed on a new stream).
                let kept = async {
                    let lease = match held {
                        Some(lease) => lease,
                        None => {
                            let lease = c.lease_grant(ttl, None).await?.id();
                            (held, fresh) = (Some(lease), true);
                            lease
                        }
                    };
                    let opened = hedged_keep_alive(&c, lease, bound).await;
                    let (mut keeper, mut stream) = match opened {
                        Ok(k) => k,
                        // Not reached, no leader, or no answer in time: etcd said nothing
                        // about the lease, which is tried again.
                        Err(e) if unreachable(&e) => return Err(e),
                        // etcd-client reads the new stream's first answer itself and makes
                        // an expired lease an error like any other: etcd is asked whether
                        // the lease still lives. Only its "no such lease" (TTL -1, no
                        // granted TTL) is an expiry: a lease in its last second answers 0
                        // and may still be renewed, and is tried again.
                        Err(e) => {
                            let asked = within(bound, c.lease_time_to_live(lease, None));
                            return match asked.await {
                                Ok(t) if t.ttl() < 0 && t.granted_ttl() == 0 => Ok(true),
                                _ => Err(e),
                            };
                        }
                    };
                    let mut failing = false;
                    // When etcd last answered a renewal.
                    let mut renewed;
                    loop {
                        keeper.keep_alive().await?;
                        match within(bound, stream.message()).await? {
                            Some(r) if r.ttl() > 0 => {
                                bound = RENEW_TRY;
                                renewed = tokio::time::Instant::now();
                            }
                            Some(_) => return Ok::<_, etcd_client::Error>(true),
                            None => return Ok(false),
                        }
                        // Bounded, so that a slow etcd cannot keep the lease from its
                        // next renewal.
                        let step = tokio::time::timeout(most, each(c.clone(), lease, fresh));
                        match step.await.unwrap_or_else(|_| {
                            Err(etcd_client::Error::IoError(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "etcd did not answer within a third of the lease",
                            )))
                        }) {
                            Ok(()) => {
                                if said.take().is_some() {
                                    info!("{what} renewed");
                                }
                                failing = false;
                                fresh = false;
                            }
                            // The lease is kept (what was put under it stays): the step is
                            // tried again at the next renewal.
                            Err(e) => {
                                if !failing {
                                    warn!("{what}: {e} (tried again at the next renewal)");
                                    failing = true;
                                }
                            }
                        }
                        tokio::time::sleep_until(renewed + pace).await;
                    }
                }
                .await;
                if kept.is_err() {
                    bound = (bound * 2).min(most);
                }
                // Each kind of trouble said once until a step succeeds again, an expiry
                // whenever it happens (after a broken stream it comes second).
                let kind = match (&kept, held) {
                    (Ok(true), _) => Trouble::Expired,
                    (Ok(false), _) => Trouble::StreamClosed,
                    (Err(_), Some(_)) => Trouble::RenewalFailed,
                    (Err(_), None) => Trouble::GrantFailed,
                };
                match &kept {
                    Err(e) => debug!("{what}: {kind:?} (next answer awaited {bound:?}): {e}"),
                    Ok(_) => debug!("{what}: {kind:?}"),
                }
                if kind == Trouble::Expired {
                    held = None;
                    expired();
                }
                if kind == Trouble::Expired || said != Some(kind) {
                    match (kind, kept) {
                        (Trouble::Expired, _) => warn!("{what}: lease expired; taking a new one"),
                        (Trouble::StreamClosed, _) => warn!(
                            "{what}: the lease's keep-alive stream closed; renewing it on a new one"
                        ),
                        (Trouble::RenewalFailed, Err(e)) => {
                            warn!("{what}: the lease's renewal failed (retrying): {e}")
                        }
                        (_, Err(e)) => warn!("{what}: taking a lease failed (retrying): {e}"),
                        (_, Ok(_)) => {}
                    }
                    said = Some(kind);
                }
                tokio::time::sleep(RENEW_RETRY).await;
            }
        });
    }

    /// The hosts registered now, by name, each with the SNAT slot it holds; and every slot
    /// held (slot → host: a host still starting holds one before it registers).
    pub async fn members(&self) -> Result<(Vec<Member>, Vec<(u32, String)>)> {
        let resp = self.under("hosts/").await?;
        let mut hosts: Vec<Member> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let resp = self.under("slots/").await?;
        let slots: Vec<(u32, String)> = held_slots(&self.prefix, resp.kvs())
            .into_iter()
            .map(|(slot, host, _)| (slot, host))
            .collect();
        for (slot, host) in &slots {
            if let Some(m) = hosts.iter_mut().find(|m| m.host == *host) {
                m.snat_slot = Some(*slot);
            }
        }
        Ok((hosts, slots))
    }

    /// Every key under `<prefix>/<sub>`.
    async fn under(&self, sub: &str) -> Result<etcd_client::GetResponse> {
        get(
            &self.rt,
            &self.client,
            format!("{}{sub}", self.prefix),
            true,
        )
        .await
    }

    /// The commit marker's mod_revision now (0: no commit yet), read without the store:
    /// whether the daemon has something to catch up with is asked without holding it.
    pub async fn revision(&self) -> Result<i64> {
        let resp = get(&self.rt, &self.client, format!("{}rev", self.prefix), false).await?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }

    /// Watches the prefix on the etcd thread, waking `changed` at every event and every
    /// (re)connection of the watch, for as long as the process runs.
    pub fn watch(&self, changed: Arc<Notify>) {
        let mut c = self.client.clone();
        let prefix = self.prefix.clone();
        self.rt.handle.spawn(async move {
            let mut lost = false;
            loop {
                match c
                    .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                    .await
                {
                    Ok(mut stream) => {
                        if lost {
                            info!("etcd watch re-established");
                            lost = false;
                        }
                        // Whatever happened while it was down.
                        changed.notify_one();
                        loop {
                            match stream.message().await {
                                Ok(Some(r)) if r.canceled() => break,
                                Ok(Some(r)) => {
                                    if !r.events().is_empty() {
                                        changed.notify_one();
                                    }
                                }
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                    Err(e) => {
                        if !lost {
                            warn!("etcd watch lost (retrying every 500 ms): {e}");
                            lost = true;
                        }
                    }
                }
                tokio::time::sleep(WATCH_RETRY).await;
            }
        });
    }
}

impl Store for EtcdStore {
    fn load(&mut self) -> StoreFuture<'_, State> {
        Box::pin(self.read())
    }

    fn save<'a>(&'a mut self, current: &'a State, next: &'a State) -> StoreFuture<'a, ()> {
        Box::pin(self.write(current, next))
    }

    fn catch_up(&mut self) -> StoreFuture<'_, Option<State>> {
        Box::pin(self.moved())
    }

    fn never_written(&self) -> bool {
        self.seen == 0
    }

    fn revision(&self) -> i64 {
        self.seen
    }

    fn describe(&self) -> String {
        format!("etcd {} under {}", self.endpoints.join(","), self.prefix)
    }
}
