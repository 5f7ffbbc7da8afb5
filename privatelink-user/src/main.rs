//! `privatelink`: the daemon that owns the data plane, and commands to inspect it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use privatelink_common::{
    Config, DEFAULT_CONNTRACK_ENTRIES, DIR_ORIGINAL, PROTO_TCP, PROTO_UDP, map_names,
};
use privatelink_user::{
    api::{self, App, Apply, Shared},
    cli,
    daemon::DataplaneApply,
    dataplane::{self, DEFAULT_PIN_DIR, Dataplane, LoadOptions},
    model::{self, State},
    ops,
    store::{RedbStore, Store},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "privatelink",
    version,
    about = "XDP data plane for private endpoints"
)]
struct Cli {
    #[command(flatten)]
    conn: cli::Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["state", "data_dir"])))]
struct DaemonArgs {
    /// Declarative mode: the state comes from this file (SIGHUP re-reads it).
    #[arg(long)]
    state: Option<PathBuf>,
    /// API mode: the state lives in an embedded store in this directory and changes
    /// through the HTTP API.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API mode: where the HTTP API listens (bound before --netns is entered).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// API mode: the operator's token (default <data-dir>/admin.token, created if missing).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// API mode: import this state file when the store is empty.
    #[arg(long)]
    seed: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Conntrack capacity in entries (two per flow).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_ENTRIES)]
    conntrack_entries: u32,
    /// Idle timeout of TCP flows, seconds.
    #[arg(long, default_value_t = 350, value_parser = clap::value_parser!(u64).range(1..))]
    tcp_timeout: u64,
    /// Idle timeout of UDP flows, seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    udp_timeout: u64,
    /// Life of a TCP flow after RST or FIN in both directions, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    closing_timeout: u64,
    /// Idle timeout of embryonic flows (TCP before its handshake completes, UDP before a
    /// reply), seconds; an endpoint's new-flow allowance refills over it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    embryonic_timeout: u64,
    /// Attach in generic (skb) mode instead of native driver mode.
    #[arg(long)]
    xdp_skb: bool,
    /// Written once the program is attached and the maps are filled.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Run in this named network namespace (/run/netns/NAME). Only the network
    /// namespace changes, so pins stay on the host's /sys/fs/bpf (`ip netns exec`
    /// would hide it behind a fresh /sys).
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the XDP program, attach it to every VPC interface of the state file and keep
    /// the maps in sync with it (SIGHUP re-reads the file).
    Daemon(DaemonArgs),
    #[command(flatten)]
    Api(cli::ApiCmd),
    /// Validate a state file and print what it declares.
    Check {
        #[arg(long)]
        state: PathBuf,
    },
    /// Print the data path's verdict counters.
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Also print counters that are zero.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the conntrack table (original directions).
    Flows {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Each endpoint's allowance of new flows (tokens left of its budget) and the new
    /// flows it was refused for exceeding its share (`drop_endpoint_flow_limit`).
    Budgets {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let parsed = Cli::parse();
    match parsed.cmd {
        Cmd::Api(cmd) => cli::run(&parsed.conn, cmd),
        Cmd::Daemon(args) => {
            // The API socket is made in the caller's namespace, before --netns.
            let listener = match &args.data_dir {
                Some(_) => Some(
                    std::net::TcpListener::bind(&args.listen)
                        .with_context(|| format!("listening on {}", args.listen))?,
                ),
                None => None,
            };
            if let Some(ns) = &args.netns {
                enter_netns(ns)?;
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon(args, listener))
        }
        Cmd::Check { state } => {
            let s = read_state(&state)?;
            println!(
                "{}: {} accounts, {} VPCs, {} services, {} endpoints — valid",
                state.display(),
                s.accounts.len(),
                s.vpcs.len(),
                s.services.len(),
                s.endpoints.len()
            );
            Ok(())
        }
        Cmd::Stats { pin_dir, all, json } => {
            let map = dataplane::open_pinned(&pin_dir, map_names::STATS)?;
            let stats = dataplane::read_stats(&map)?;
            if json {
                let obj: serde_json::Map<String, serde_json::Value> = stats
                    .iter()
                    .map(|(r, n)| (r.as_str().to_string(), (*n).into()))
                    .collect();
                println!("{}", serde_json::Value::Object(obj));
            } else {
                println!("{:<28} {:>12}", "COUNTER", "PACKETS");
                for (r, n) in stats.iter().filter(|(_, n)| all || *n > 0) {
                    println!("{:<28} {:>12}", r.as_str(), n);
                }
            }
            Ok(())
        }
        Cmd::Budgets { pin_dir, json } => {
            let map = dataplane::open_pinned(&pin_dir, map_names::EP_BUDGET)?;
            let budgets = dataplane::read_budgets(&map)?;
            if json {
                let rows: Vec<serde_json::Value> = budgets
                    .iter()
                    .map(|(id, b)| {
                        serde_json::json!({"endpoint": id, "budget": b.budget,
                            "tokens": b.tokens, "refused": b.refused})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<12} {:>10} {:>10} {:>12}",
                    "ENDPOINT", "BUDGET", "TOKENS", "REFUSED"
                );
                for (id, b) in budgets {
                    println!(
                        "{id:<12} {:>10} {:>10} {:>12}",
                        b.budget, b.tokens, b.refused
                    );
                }
            }
            Ok(())
        }
        Cmd::Flows { pin_dir } => {
            let map = dataplane::open_pinned(&pin_dir, map_names::CONNTRACK)?;
            let flows = dataplane::read_flows(&map)?;
            let cfg = dataplane::read_config(&pin_dir).unwrap_or_default();
            let now = dataplane::coarse_now_ns();
            let by_key: std::collections::HashMap<_, _> = flows.iter().copied().collect();
            println!(
                "{:<5} {:<44} {:<44} STATE",
                "PROTO", "CONSUMER SIDE", "PROVIDER SIDE"
            );
            for (k, e) in flows.iter().filter(|(_, e)| e.direction == DIR_ORIGINAL) {
                let proto = match k.proto {
                    PROTO_TCP => "tcp".to_string(),
                    PROTO_UDP => "udp".to_string(),
                    privatelink_common::PROTO_ICMP => "icmp".to_string(),
                    p => p.to_string(),
                };
                let provider_side = if e.flags & privatelink_common::FLOW_GWLB != 0 {
                    format!("GENEVE {} -> appliance {}", ip(e.new_src), ip(e.new_dst))
                } else {
                    format!(
                        "{}:{} -> {}:{}",
                        ip(e.new_src),
                        e.new_sport,
                        ip(e.new_dst),
                        e.new_dport
                    )
                };
                // Alive while either direction is (as the data path judges it).
                let partner = by_key.get(&e.partner(k));
                let alive = !e.is_expired(k.proto, now, &cfg)
                    || partner.is_some_and(|p| !p.is_expired(k.proto, now, &cfg));
                let state = if !alive {
                    "expired"
                } else if e.tcp_flags & privatelink_common::CT_CLOSING != 0 {
                    "closing"
                } else if e.tcp_flags & privatelink_common::CT_ESTABLISHED != 0 {
                    "established"
                } else {
                    "embryonic"
                };
                println!(
                    "{:<5} {:<44} {:<44} {}",
                    proto,
                    format!("{}:{} -> {}:{}", ip(k.src), k.sport, ip(k.dst), k.dport),
                    provider_side,
                    state,
                );
            }
            Ok(())
        }
    }
}

/// Moves this (still single-threaded) process into a named network namespace.
fn enter_netns(name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/netns").join(name);
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a namespace fd, before any other thread exists.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {name}"));
    }
    Ok(())
}

fn ip(a: [u8; 4]) -> std::net::Ipv4Addr {
    a.into()
}

fn read_state(path: &Path) -> Result<State> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let state =
        model::parse_state(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for w in state.grandfathered() {
        warn!("{}: {w}", path.display());
    }
    Ok(state)
}

async fn daemon(args: DaemonArgs, listener: Option<std::net::TcpListener>) -> Result<()> {
    // A state file, or the store, is read and validated before the kernel is touched.
    let (state, store) = match (&args.state, &args.data_dir) {
        (Some(path), _) => (read_state(path)?, None),
        (None, Some(dir)) => {
            let store = RedbStore::open(dir)?;
            let mut state = store
                .load()
                .with_context(|| format!("reading the store in {}", dir.display()))?;
            let mut store: Box<dyn Store> = Box::new(store);
            if state == State::default()
                && let Some(seed) = &args.seed
            {
                let seeded = read_state(seed)?;
                store.save(&state, &seeded)?;
                info!("store was empty: imported {}", seed.display());
                state = seeded;
            }
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
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(args.pin_dir.clone()),
        conntrack_entries: args.conntrack_entries,
    })?;
    const S: u64 = 1_000_000_000;
    let mut applier = DataplaneApply::new(dp, args.xdp_skb);
    applier.dp.set_config(&Config {
        tcp_timeout_ns: args.tcp_timeout * S,
        other_timeout_ns: args.udp_timeout * S,
        closing_timeout_ns: args.closing_timeout * S,
        embryonic_timeout_ns: args.embryonic_timeout * S,
        flow_capacity: args.conntrack_entries as u64 / 2,
    })?;
    applier.check(&state).map_err(|e| anyhow::anyhow!("{e}"))?;
    // A state that fits but cannot be applied yet (an interface another XDP program holds,
    // a map filled behind our back) is retried every 5 s, as after any API call: the data
    // path keeps running on what it has, and the API answers meanwhile.
    let behind_at_start = reapply(&mut applier, &state);
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
            }));
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let server =
                tokio::spawn(axum::serve(listener, api::router(app.clone())).into_future());
            ready(&args, &format!("http://{addr}"))?;
            info!(api = %format!("http://{addr}"), "ready");
            loop {
                tokio::select! {
                    _ = tick.tick() => app.lock().await.tick(),
                    _ = health.notified() => app.lock().await.refresh(),
                    _ = hup.recv() => info!("SIGHUP ignored: the state lives in the store; use the API"),
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
            server.abort();
        }
        _ => {
            let path = args.state.clone().expect("file mode");
            // The running state, re-applied when health verdicts change.
            let mut current = state;
            let mut dirty = behind_at_start;
            ready(&args, &std::process::id().to_string())?;
            info!(pin_dir = %args.pin_dir.display(), "ready");
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if dirty {
                            dirty = reapply(&mut applier, &current);
                        }
                        applier.tick()
                    }
                    _ = health.notified() => dirty = reapply(&mut applier, &current),
                    _ = hup.recv() => {
                        match reload(&path, &mut applier) {
                            Ok(next) => {
                                // Valid: it is the running state now, applied or retried
                                // (the maps never go back to the old one).
                                current = next;
                                dirty = reapply(&mut applier, &current);
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

fn ready(args: &DaemonArgs, content: &str) -> Result<()> {
    if let Some(f) = &args.ready_file {
        std::fs::write(f, format!("{content}\n"))?;
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

/// Applies `state` again (health verdicts changed); true when the maps are still behind.
fn reapply(applier: &mut DataplaneApply, state: &State) -> bool {
    match applier.apply(state) {
        Ok(()) => false,
        Err(e) => {
            warn!("data path behind the state (retrying every 5 s): {e:#}");
            true
        }
    }
}

/// The state file read again and checked (refused: nothing is applied).
fn reload(path: &Path, applier: &mut DataplaneApply) -> Result<State> {
    let state = read_state(path)?;
    applier.check(&state).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(state)
}
