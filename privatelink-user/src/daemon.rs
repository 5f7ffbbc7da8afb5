//! The daemon: its options, the running state (a state file, or the store behind the
//! API), and its loop (ticks retrying a state the data path is behind on, health
//! verdicts, SIGHUP re-reading the file) until SIGTERM or SIGINT.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use privatelink_common::{Config, DEFAULT_CONNTRACK_ENTRIES};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    api::{self, Shared},
    apply::{App, Apply, DataplaneApply, Running, refresh, tick as tick_retry},
    dataplane::{DEFAULT_PIN_DIR, Dataplane, LoadOptions},
    metrics::Source,
    model::{self, State},
    ops,
    store::{
        RedbStore, Store, StoreError,
        etcd::{EtcdRuntime, EtcdStore, EtcdWatch},
        store_error,
    },
};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["state", "data_dir"])))]
// A later occurrence of an option overrides an earlier one: `--config`'s settings are
// placed before the command line's (`config::expand_argv`).
#[command(args_override_self = true)]
pub struct DaemonArgs {
    /// Read options from this TOML file first (keys: the long option names, e.g.
    /// `data_dir = "/var/lib/privatelink"`); the command line overrides it. SIGHUP reads
    /// it again: the log filter and the flow timeouts change at once, other changes need a
    /// restart.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The log filter, in RUST_LOG's syntax (default: RUST_LOG, else
    /// `info,hickory_server=warn`).
    #[arg(long, value_parser = crate::process::check_log_filter)]
    pub log: Option<String>,
    /// The command line's own arguments after `daemon` (without the file's), read again
    /// with the file on SIGHUP.
    #[arg(skip)]
    pub command_line: Vec<std::ffi::OsString>,
    /// Declarative mode: the state comes from this file (SIGHUP re-reads it).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// API mode: the state lives in an embedded store in this directory and changes
    /// through the HTTP API.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API mode: where the HTTP API listens (bound before --netns is entered).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Where Prometheus scrapes `GET /metrics` (bound before --netns is entered; none:
    /// no metrics). Unauthenticated: give an address only operators reach.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// API mode: the operator's token (default <data-dir>/admin.token, created if missing).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// API mode: import this state file when the store is empty.
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// API mode, a fleet: keep the state in the etcd cluster at these client URLs
    /// (comma-separated, or the option repeated) instead of <data-dir>/state.redb. Every
    /// daemon given the same cluster and prefix serves and applies the same state. The
    /// data directory still holds the flow logs and the admin token (give every daemon
    /// of a fleet the same one, --admin-token-file).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix of the state in etcd.
    #[arg(long, default_value = "/privatelink")]
    pub etcd_prefix: String,
    /// A fleet: the name this host registers under (`GET /v1/fleet`; default: the
    /// machine's name). Unique in the fleet.
    #[arg(long)]
    pub host_name: Option<String>,
    /// A fleet: the lease (seconds) this host's registration lives by: a host that stops
    /// is gone from the fleet this long after its last renewal.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(2..=300))]
    pub host_lease_seconds: i64,
    /// A fleet: cut every SNAT pool's port range into this many slots; this host holds one
    /// under its lease and takes new flows' SNAT ports only from it, so the provider side
    /// can route replies back to it by port. A slot passes to another host only after its
    /// holder's lease expired; a host without a slot takes no new flows. At least the
    /// fleet's size (spare slots let a replacement start before the lease of the host it
    /// replaces has run out). Without it every host takes ports from the whole range.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub snat_slots: Option<u32>,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Conntrack capacity in entries (two per flow).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_ENTRIES)]
    pub conntrack_entries: u32,
    /// Idle timeout of TCP flows, seconds.
    #[arg(long, default_value_t = 350, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_timeout: u64,
    /// Idle timeout of UDP flows, seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub udp_timeout: u64,
    /// Life of a TCP flow after RST or FIN in both directions, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub closing_timeout: u64,
    /// Idle timeout of embryonic flows (TCP before its handshake completes, UDP before a
    /// reply), seconds; an endpoint's new-flow allowance refills over it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub embryonic_timeout: u64,
    /// Attach in generic (skb) mode instead of native driver mode.
    #[arg(long)]
    pub xdp_skb: bool,
    /// Written once the program is attached and the maps are filled.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Run in this named network namespace (/run/netns/NAME). Only the network
    /// namespace changes, so pins stay on the host's /sys/fs/bpf (`ip netns exec`
    /// would hide it behind a fresh /sys).
    #[arg(long)]
    pub netns: Option<String>,
    /// The DNS suffix the endpoint, zone and service domain names are given under
    /// (`<endpoint>.<service>.<region>.<suffix>`).
    #[arg(long, default_value = model::names::DEFAULT_SUFFIX, value_parser = dns_suffix)]
    pub dns_suffix: String,
    /// The region label of the names (one lowercase DNS label).
    #[arg(long, default_value = model::names::DEFAULT_REGION, value_parser = dns_region)]
    pub dns_region: String,
    /// The external DNS listener (UDP and TCP), for on-premises resolvers that forward the
    /// names' zone: it answers the endpoint and zone names, not the VPCs' private zones.
    /// (Each VPC's resolver needs no option: the VPC's `resolver` address is served.)
    /// A specific address, not a wildcard one, which would also take VPCs' queries.
    #[arg(long, value_parser = dns_listen)]
    pub dns_listen: Option<std::net::SocketAddr>,
    /// The TTL of every DNS answer, seconds (negative answers too): how long a failed
    /// zone's address may live on in clients' caches.
    #[arg(long, default_value_t = crate::dns::DEFAULT_TTL, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub dns_ttl: u32,
    /// Flow logs: the directory of the endpoints' files (`<endpoint>.log`; default
    /// `<data-dir>/flow-logs`, or /var/log/privatelink/flow-logs with --state).
    #[arg(long)]
    pub flow_log_dir: Option<PathBuf>,
    /// Flow logs: how often the data path's flow events are read, milliseconds (the data
    /// path does not wake the daemon).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10000))]
    pub flow_log_poll_ms: u64,
    /// Flow logs: the size of the flow events' ring buffer, bytes (a power of two, at
    /// least 4096): what one poll interval may hold before events are lost.
    #[arg(long, default_value_t = privatelink_common::FLOW_EVENTS_BYTES, value_parser = ring_bytes)]
    pub flow_log_ring_bytes: u32,
    /// Flow logs: a file is rotated (to .1, .2, ... .5) once it is past this size, bytes.
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub flow_log_rotate_bytes: u64,
}

impl DaemonArgs {
    /// The data path's settings (`PL_CONFIG`) the options give.
    pub fn flow_config(&self) -> Config {
        const S: u64 = 1_000_000_000;
        Config {
            tcp_timeout_ns: self.tcp_timeout * S,
            other_timeout_ns: self.udp_timeout * S,
            closing_timeout_ns: self.closing_timeout * S,
            embryonic_timeout_ns: self.embryonic_timeout * S,
            flow_capacity: self.conntrack_entries as u64 / 2,
        }
    }

    /// Where and how flow logs are written (`--flow-log-*`).
    pub fn flow_log_options(&self) -> crate::flowlog::Options {
        let dir = match (&self.flow_log_dir, &self.data_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d.join("flow-logs"),
            (None, None) => PathBuf::from("/var/log/privatelink/flow-logs"),
        };
        crate::flowlog::Options {
            dir,
            poll: Duration::from_millis(self.flow_log_poll_ms),
            rotate_bytes: self.flow_log_rotate_bytes,
        }
    }

    /// The naming the options give, checked (`--dns-suffix`, `--dns-region`).
    pub fn naming(&self) -> Result<model::Naming> {
        let n = model::Naming {
            suffix: self.dns_suffix.clone(),
            region: self.dns_region.clone(),
        };
        n.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(n)
    }
}

/// `--dns-suffix`: a lowercase domain name (refused when the options are parsed).
fn dns_suffix(s: &str) -> Result<String, String> {
    model::names::check_domain(s)?;
    Ok(s.to_string())
}

/// `--dns-listen`: an address and port, not the wildcard address: a socket on it would
/// also receive the queries to a VPC's resolver address whose own socket is not bound
/// (yet), and answer them as the external listener through the host's routes.
fn dns_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address and port (10.50.0.1:53)"))?;
    if a.ip().is_unspecified() {
        return Err(format!(
            "{s}: give the address of the interface on-premises resolvers reach, not a \
             wildcard (it would also receive the VPCs' queries)"
        ));
    }
    Ok(a)
}

/// `--flow-log-ring-bytes`: a ring buffer's size (a power of two and a multiple of the
/// page size).
fn ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !n.is_power_of_two() || n < 4096 {
        return Err(format!("{n}: give a power of two, at least 4096"));
    }
    Ok(n)
}

/// `--dns-region`: one lowercase DNS label.
fn dns_region(s: &str) -> Result<String, String> {
    if !model::names::is_clean_label(s) {
        return Err(format!(
            "{s:?} is not one lowercase DNS label (a-z, 0-9, inner -)"
        ));
    }
    Ok(s.to_string())
}

pub fn read_state(path: &Path) -> Result<State> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let state =
        model::parse_state(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for w in state.grandfathered() {
        warn!("{}: {w}", path.display());
    }
    Ok(state)
}

/// Runs the daemon: reads and validates its state (file or store), loads the data path,
/// applies the state (retried every 5 s while the data path is behind), serves the API in
/// API mode, re-reads the file on SIGHUP in file mode, until SIGTERM or SIGINT.
pub async fn run(
    args: DaemonArgs,
    listener: Option<std::net::TcpListener>,
    metrics_listener: Option<std::net::TcpListener>,
    etcd: Option<EtcdRuntime>,
) -> Result<()> {
    if args.log.is_some() {
        crate::process::set_log_filter(args.log.as_deref())?;
    }
    // With --config: the settings in force, and SIGHUP's reading of the file.
    let mut settings = crate::config::Reloader::new(&args)?;
    match crate::process::raise_fd_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => warn!("raising the open-file limit: {e}"),
    }
    // A state file, or the store, is read and validated before the kernel is touched.
    let mut watch: Option<EtcdWatch> = None;
    if args.state.is_some() && !args.etcd.is_empty() {
        anyhow::bail!("--etcd is for API mode (--data-dir): a state file is one host's own");
    }
    if args.snat_slots.is_some() && args.etcd.is_empty() {
        anyhow::bail!("--snat-slots is for a fleet on etcd (--etcd): the slots are held there");
    }
    let (state, store) = match (&args.state, &args.data_dir) {
        (Some(path), _) => (read_state(path)?, None),
        (None, Some(dir)) => {
            let mut store: Box<dyn Store> = match etcd {
                Some(rt) => {
                    let s = EtcdStore::connect(rt, args.etcd.clone(), &args.etcd_prefix).await?;
                    watch = Some(s.watcher());
                    Box::new(s)
                }
                None => Box::new(RedbStore::open(dir)?),
            };
            let mut state = store
                .load()
                .await
                .with_context(|| format!("reading the store ({})", store.describe()))?;
            // Only a store nothing was ever committed to (etcd: no commit marker; redb:
            // an empty state): a fleet that emptied its state on purpose does not get the
            // seed back when a daemon restarts.
            if state == State::default()
                && store.never_written()
                && let Some(seed) = &args.seed
            {
                let seeded = read_state(seed)?;
                match store.save(&state, &seeded).await {
                    Ok(()) => {
                        info!("store was empty: imported {}", seed.display());
                        state = seeded;
                    }
                    // Another daemon of the fleet stored first (its seed, or a change):
                    // that is the state.
                    Err(e) if matches!(store_error(&e), Some(StoreError::Conflict)) => {
                        state = store.load().await?;
                        info!(
                            "another daemon filled the store first: {} not imported",
                            seed.display()
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            info!(store = %store.describe(), "state loaded");
            state
                .validate()
                .map_err(|e| anyhow::anyhow!("the stored state does not validate: {e}"))?;
            // Migration: an earlier build stored services without listeners and forwarded
            // every port of their load balancers. No rule can tell which ports were meant,
            // so they publish nothing (fail closed) until their providers add listeners.
            for id in state.legacy_without_listeners() {
                tracing::warn!(
                    service = id,
                    "service stored without listeners (by an earlier build): it publishes \
                     nothing and its endpoints carry no traffic until its provider adds them \
                     (`privatelink service listener add {id} tcp:PORT`)"
                );
            }
            for w in state.grandfathered() {
                warn!("stored state: {w}");
            }
            (state, Some(store))
        }
        (None, None) => anyhow::bail!("give --state FILE or --data-dir DIR"),
    };
    // A fleet with SNAT slots takes no new flows until it holds one; it holds one from
    // now on (a host restarted within its lease finds its slot under its name).
    let host_name = match &args.host_name {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let share: crate::fleet::SharedShare = Arc::new(std::sync::Mutex::new(match args.snat_slots {
        Some(_) => crate::fleet::PortShare::Nothing,
        None => crate::fleet::PortShare::All,
    }));
    let share_changed = Arc::new(tokio::sync::Notify::new());
    if let (Some(w), Some(count)) = (&watch, args.snat_slots) {
        w.hold_slot(
            host_name.clone(),
            args.host_lease_seconds,
            crate::store::etcd::Slots {
                count,
                share: share.clone(),
                changed: share_changed.clone(),
            },
        );
    }
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(args.pin_dir.clone()),
        conntrack_entries: args.conntrack_entries,
        flow_events_bytes: args.flow_log_ring_bytes,
    })?;
    // Dead flows' slots freed while packets run (`dataplane::flowtable::sweep`).
    crate::dataplane::flowtable::start_sweeper(args.pin_dir.clone(), dp.flow_table_ids()?);
    let mut applier = DataplaneApply::new(dp, args.xdp_skb);
    applier.set_share(share.clone());
    applier.dp.set_config(&args.flow_config())?;
    // Flow logs: the ring is drained on a timer in both modes (see `crate::flowlog`).
    let mut flow = crate::flowlog::FlowLogger::new(
        applier.dp.take_flow_events()?,
        &args.pin_dir,
        args.flow_log_options(),
    )?;
    let mut flow_tick = tokio::time::interval(flow.interval());
    flow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The DNS server: every apply, the first one included, adds the resolver addresses
    // to the VPCs' interfaces and then gives it its answers and listeners.
    applier.set_dns(
        crate::dns::Dns::new(
            args.naming()?,
            crate::dns::DnsOptions {
                ttl: args.dns_ttl,
                listen: args.dns_listen,
            },
        )
        .map_err(|e| anyhow::anyhow!("DNS: {e}"))?,
    );
    applier.check(&state).map_err(|e| anyhow::anyhow!("{e}"))?;
    // A state that fits but cannot be applied yet (an interface another XDP program holds,
    // a map filled behind our back) is retried every 5 s, as after any API call: the data
    // path keeps running on what it has, and the API answers meanwhile.
    // Both modes say so as file mode does ("data path behind the state").
    let mut behind_at_start = false;
    refresh(&mut applier, &state, &mut behind_at_start, Running::File);
    applier.resolve(Duration::from_secs(3)).await;

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    // Woken when a GWLB appliance's health verdict changes: the maps are recomputed.
    let health = applier.health_notify();

    match (store, listener) {
        (Some(store), Some(listener)) => {
            let addr = listener.local_addr()?;
            let admin = admin_token(&args)?;
            let app: Shared = Arc::new(tokio::sync::Mutex::new(App {
                state,
                store,
                apply: Box::new(applier),
                admin_token_sha256: ops::token_hash(&admin),
                dirty: behind_at_start,
                naming: args.naming()?,
                // Connection notifications leave from the daemon's namespace (--netns).
                notify: Some(crate::notify::Notifier::start(Default::default())),
                store_lost: false,
                fleet: watch.clone(),
            }));
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // The live flows of the overview (and of the metrics, when served).
            crate::metrics::census(
                &args.pin_dir,
                privatelink_common::flowtable::table_slots(args.conntrack_entries),
            );
            let server =
                tokio::spawn(axum::serve(listener, api::router(app.clone())).into_future());
            let metrics = start_metrics(
                &args,
                metrics_listener,
                Source::App(app.clone()),
                flow.stats(),
            )?;
            ready(&args, &format!("http://{addr}"))?;
            info!(api = %format!("http://{addr}"), "ready");
            // A shared store: a task of its own catches up, woken by the watch when
            // another daemon commits and every 5 s in case an event was missed; it asks
            // etcd without holding the app, so an unreachable etcd stalls neither the API's
            // reads nor this loop.
            if let Some(w) = watch {
                w.register(
                    crate::store::etcd::Member {
                        host: host_name.clone(),
                        api: format!("http://{addr}"),
                        since: 0,
                        snat_slot: None,
                    },
                    args.host_lease_seconds,
                );
                let changed = Arc::new(tokio::sync::Notify::new());
                w.watch(changed.clone());
                let app = app.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = changed.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                        catch_up(&app, &w).await;
                    }
                });
            }
            loop {
                tokio::select! {
                    _ = tick.tick() => app.lock().await.tick(),
                    _ = flow_tick.tick() => {
                        let logged = crate::flowlog::targets(&app.lock().await.state);
                        flow.poll(logged);
                    }
                    _ = health.notified() => app.lock().await.refresh(),
                    _ = share_changed.notified() => app.lock().await.refresh(),
                    _ = hup.recv() => match &mut settings {
                        Some(s) => reload_settings(s),
                        None => info!("SIGHUP: nothing to read (the state lives in the store; no --config)"),
                    },
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
            server.abort();
            metrics.inspect(|m| m.abort());
        }
        _ => {
            let path = args.state.clone().expect("file mode");
            // The running state, re-applied when health verdicts change.
            let mut current = state;
            let mut dirty = behind_at_start;
            // Scrapes ask the loop, which owns the state and the data path.
            let (scrape_tx, mut scrapes) = tokio::sync::mpsc::channel(4);
            let _metrics = start_metrics(
                &args,
                metrics_listener,
                Source::Loop(scrape_tx),
                flow.stats(),
            )?;
            ready(&args, &std::process::id().to_string())?;
            info!(pin_dir = %args.pin_dir.display(), "ready");
            loop {
                tokio::select! {
                    _ = tick.tick() => tick_retry(&mut applier, &current, &mut dirty, Running::File),
                    _ = flow_tick.tick() => flow.poll(crate::flowlog::targets(&current)),
                    _ = health.notified() => refresh(&mut applier, &current, &mut dirty, Running::File),
                    Some(reply) = scrapes.recv() => {
                        let _ = reply.send(crate::metrics::gather(&current, &mut applier, None));
                    }
                    _ = hup.recv() => {
                        if let Some(s) = &mut settings {
                            reload_settings(s);
                        }
                        match reload(&path, &mut applier) {
                            Ok(next) => {
                                // Valid: it is the running state now, applied or retried
                                // (the maps never go back to the old one).
                                current = next;
                                refresh(&mut applier, &current, &mut dirty, Running::File);
                                applier.resolve(Duration::from_secs(1)).await;
                                info!(endpoints = current.endpoints.len(), "reloaded {}", path.display());
                            }
                            Err(e) => warn!("reload refused, keeping the running state: {e:#}"),
                        }
                    }
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
        }
    }
    info!(
        "stopping; the program stays attached and the maps pinned in {} (remove the directory to detach)",
        args.pin_dir.display()
    );
    Ok(())
}

/// Catches up with the shared store if another daemon of the fleet committed (asked
/// without holding the app: only a commit to take holds it); says once when the store
/// is lost and once when it answers again.
async fn catch_up(app: &Shared, watch: &EtcdWatch) {
    let now = watch.revision().await;
    let mut g = app.lock().await;
    let outcome = match now {
        Ok(r) if r == g.store.revision() => Ok(()),
        Ok(_) => match g.store.catch_up().await {
            Ok(Some(s)) => {
                g.adopt(s);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) if g.store_lost => {
            g.store_lost = false;
            info!(store = %g.store.describe(), "the shared store answers again");
        }
        Ok(()) => {}
        Err(e) if !g.store_lost => {
            g.store_lost = true;
            warn!(
                "the shared store is unreachable: the data path keeps the last state, \
                 changes are refused until it answers: {e:#}"
            );
        }
        Err(_) => {}
    }
}

/// Serves the metrics on `listener` (`--metrics-listen`), if given.
fn start_metrics(
    args: &DaemonArgs,
    listener: Option<std::net::TcpListener>,
    source: Source,
    flow_log: Arc<crate::flowlog::FlowLogStats>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let addr = listener.local_addr()?;
    let server = crate::metrics::start(
        listener,
        source,
        &args.pin_dir,
        privatelink_common::flowtable::table_slots(args.conntrack_entries),
        flow_log,
    )?;
    info!(metrics = %format!("http://{addr}/metrics"), "serving metrics");
    Ok(Some(server))
}

/// Writes the ready file whole: a temporary file beside it, renamed into place, so a
/// reader that sees the file sees its content (a plain write shows it empty first).
fn ready(args: &DaemonArgs, content: &str) -> Result<()> {
    if let Some(f) = &args.ready_file {
        let mut tmp = f.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{content}\n"))
            .with_context(|| format!("writing {}", f.display()))?;
        std::fs::rename(&tmp, f).with_context(|| format!("writing {}", f.display()))?;
    }
    // A `Type=notify` systemd unit counts as started from here.
    if let Err(e) = crate::process::notify_systemd("READY=1") {
        warn!("telling systemd the daemon is ready: {e}");
    }
    Ok(())
}

/// The operator's token: read from the file, or created there (mode 0600) on first start.
fn admin_token(args: &DaemonArgs) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = match (&args.admin_token_file, &args.data_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join("admin.token"),
        (None, None) => anyhow::bail!("no data directory"),
    };
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() < 16 {
            anyhow::bail!(
                "{}: the admin token must be at least 16 characters",
                path.display()
            );
        }
        return Ok(t);
    }
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut f, format!("{t}\n").as_bytes())?;
    info!("created the admin token in {}", path.display());
    Ok(t)
}

/// `--config` read again (SIGHUP); a file that does not read changes nothing.
fn reload_settings(settings: &mut crate::config::Reloader) {
    if let Err(e) = settings.reload() {
        warn!("configuration reload refused, keeping the running settings: {e:#}");
    }
}

/// The state file read again and checked (refused: nothing is applied).
fn reload(path: &Path, applier: &mut DataplaneApply) -> Result<State> {
    let state = read_state(path)?;
    applier.check(&state).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(state)
}
