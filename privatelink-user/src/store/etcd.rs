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
//! **Losing etcd.** Requests time out after `REQUEST_TIMEOUT`; a commit that cannot reach
//! a majority is refused as `StoreError::Unavailable` (the API answers 503, nothing
//! changed), the data path keeps the last state it had, and the watch is re-established
//! every half second until etcd answers again, when the daemon catches up by itself.
//!
//! **Namespaces.** The client runs on a thread of its own, started before the daemon
//! enters `--netns` (`EtcdRuntime`): its connections, reconnections included, are made
//! in the host's namespace, as the API's socket is, while the data path lives in the
//! forwarder's namespace.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};
use tokio::{runtime::Handle, sync::Notify};
use tracing::{info, warn};

use super::{Store, StoreError, StoreFuture, changes, from_records};
use crate::model::State;

/// How long one request to etcd may take before the store counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a lost watch is tried again.
const WATCH_RETRY: Duration = Duration::from_millis(500);

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

    /// Runs `f` on the etcd thread and waits for it.
    async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T> {
        match self.handle.spawn(f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(anyhow!(StoreError::Unavailable(e.to_string()))),
            Err(e) => Err(anyhow!(StoreError::Unavailable(format!(
                "the etcd client's thread: {e}"
            )))),
        }
    }
}

pub struct EtcdStore {
    rt: EtcdRuntime,
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    /// The marker's `mod_revision` as this daemon last read or wrote it (0: no commit yet).
    seen: i64,
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
            .run(async move { Client::connect(eps, Some(opts)).await })
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
        Ok(Self {
            rt,
            client,
            endpoints,
            prefix,
            seen: 0,
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
        let mut c = self.client.clone();
        let prefix = format!("{}/", self.prefix);
        let resp = self
            .rt
            .run(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let objects = format!("{}/objects/", self.prefix);
        let marker = self.marker();
        let mut seen = 0;
        let mut records = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if key == marker {
                seen = kv.mod_revision();
            } else if let Some(record) = key.strip_prefix(&objects) {
                records.push((record.to_string(), kv.value().to_vec()));
            }
        }
        let state = from_records(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
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
        ops.push(TxnOp::put(marker.clone(), b"privatelink".to_vec(), None));
        let txn = Txn::new()
            .when([Compare::mod_revision(marker, CompareOp::Equal, self.seen)])
            .and_then(ops);
        let mut c = self.client.clone();
        let resp = self.rt.run(async move { c.txn(txn).await }).await?;
        if !resp.succeeded() {
            return Err(anyhow!(StoreError::Conflict));
        }
        // The marker was written in this transaction: its mod_revision is the
        // transaction's revision.
        self.seen = resp
            .header()
            .map(|h| h.revision())
            .context("etcd's answer has no header")?;
        Ok(())
    }

    async fn moved(&mut self) -> Result<Option<State>> {
        let mut c = self.client.clone();
        let marker = self.marker();
        let resp = self
            .rt
            .run(async move { c.get(marker, None).await })
            .await?;
        let now = resp.kvs().first().map_or(0, |kv| kv.mod_revision());
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

/// A watch of the store's prefix.
pub struct EtcdWatch {
    rt: EtcdRuntime,
    client: Client,
    prefix: String,
}

impl EtcdWatch {
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

    fn describe(&self) -> String {
        format!("etcd {} under {}", self.endpoints.join(","), self.prefix)
    }
}
