//! `privatelink`: the daemon that owns the data plane, and commands to inspect it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use privatelink_common::{
    Config, DEFAULT_CONNTRACK_ENTRIES, DIR_ORIGINAL, PROTO_TCP, PROTO_UDP, map_names,
};
use privatelink_user::{
    dataplane::{self, DEFAULT_PIN_DIR, Dataplane, LoadOptions},
    desired::{self, NextHop},
    model::{self, State},
    neigh,
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
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct DaemonArgs {
    #[arg(long)]
    state: PathBuf,
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
    /// Lab helper: attach a pass-through XDP program to veth ends that receive frames the
    /// data path redirects (the kernel drops such frames at a veth whose peer runs no XDP
    /// program), and hold it until SIGTERM.
    XdpPass {
        #[arg(long)]
        netns: Option<String>,
        #[arg(required = true)]
        ifaces: Vec<String>,
    },
    /// Print the conntrack table (original directions).
    Flows {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Daemon(args) => {
            if let Some(ns) = &args.netns {
                enter_netns(ns)?;
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon(args))
        }
        Cmd::XdpPass { netns, ifaces } => {
            if let Some(ns) = netns {
                enter_netns(&ns)?;
            }
            let _held = dataplane::attach_pass(&ifaces)?;
            info!(?ifaces, "pass-through XDP attached; SIGTERM detaches");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let mut term = signal(SignalKind::terminate())?;
                    let mut int = signal(SignalKind::interrupt())?;
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                    Ok::<_, anyhow::Error>(())
                })
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
        Cmd::Flows { pin_dir } => {
            let map = dataplane::open_pinned(&pin_dir, map_names::CONNTRACK)?;
            let flows = dataplane::read_flows(&map)?;
            println!(
                "{:<5} {:<44} {:<44}",
                "PROTO", "CONSUMER SIDE", "PROVIDER SIDE"
            );
            for (k, e) in flows.iter().filter(|(_, e)| e.direction == DIR_ORIGINAL) {
                let proto = match k.proto {
                    PROTO_TCP => "tcp",
                    PROTO_UDP => "udp",
                    _ => "?",
                };
                println!(
                    "{:<5} {:<44} {:<44}",
                    proto,
                    format!("{}:{} -> {}:{}", ip(k.src), k.sport, ip(k.dst), k.dport),
                    format!(
                        "{}:{} -> {}:{}",
                        ip(e.new_src),
                        e.new_sport,
                        ip(e.new_dst),
                        e.new_dport
                    ),
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
    model::parse_state(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn daemon(args: DaemonArgs) -> Result<()> {
    let DaemonArgs {
        state: state_path,
        pin_dir,
        conntrack_entries,
        tcp_timeout,
        udp_timeout,
        closing_timeout,
        xdp_skb,
        ready_file,
        netns: _,
    } = args;
    let state = read_state(&state_path)?;
    // Everything that can be refused is checked before the kernel is touched.
    let want = desired::compute(&state, dataplane::resolve_link)?;
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        conntrack_entries,
    })?;
    const S: u64 = 1_000_000_000;
    dp.set_config(&Config {
        tcp_timeout_ns: tcp_timeout * S,
        other_timeout_ns: udp_timeout * S,
        closing_timeout_ns: closing_timeout * S,
    })?;
    let report = dp.apply(&want)?;
    info!(
        upserts = report.upserts,
        deletes = report.deletes,
        "maps in sync with {}",
        state_path.display()
    );
    let mut attached = Vec::new();
    for vpc in &state.vpcs {
        dp.attach(&vpc.interface, xdp_skb)?;
        attached.push(vpc.interface.clone());
        info!(iface = %vpc.interface, vpc = %vpc.id, "XDP attached");
    }
    let mut hops = desired::next_hops(&state);
    resolve(&mut dp, &hops, Duration::from_secs(3)).await;
    if let Some(f) = &ready_file {
        std::fs::write(f, format!("{}\n", std::process::id()))?;
    }
    info!(pin_dir = %pin_dir.display(), "ready");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for hop in &hops {
                    if dp.neighbor(hop.vpc_id, hop.addr).is_none() {
                        probe(&state_links(&dp, hop), hop);
                    }
                }
            }
            _ = hup.recv() => {
                match reload(&state_path, &mut dp, &mut attached, xdp_skb) {
                    Ok(new_hops) => {
                        hops = new_hops;
                        resolve(&mut dp, &hops, Duration::from_secs(1)).await;
                    }
                    Err(e) => warn!("reload refused, keeping the running state: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!(
        "stopping; the program stays attached and the maps pinned in {} (remove the directory to detach)",
        pin_dir.display()
    );
    Ok(())
}

fn reload(
    path: &Path,
    dp: &mut Dataplane,
    attached: &mut Vec<String>,
    skb: bool,
) -> Result<Vec<NextHop>> {
    let state = read_state(path)?;
    let want = desired::compute(&state, dataplane::resolve_link)?;
    for vpc in &state.vpcs {
        if !attached.contains(&vpc.interface) {
            dp.attach(&vpc.interface, skb)?;
            attached.push(vpc.interface.clone());
        }
    }
    let r = dp.apply(&want)?;
    info!(
        upserts = r.upserts,
        deletes = r.deletes,
        "reloaded {}",
        path.display()
    );
    Ok(desired::next_hops(&state))
}

/// The link a next hop's VPC is attached through, from the data path's own map.
fn state_links(dp: &Dataplane, hop: &NextHop) -> Option<desired::Link> {
    let m: aya::maps::HashMap<_, u32, privatelink_common::VpcPort> =
        aya::maps::HashMap::try_from(dp.map(map_names::VPC_PORTS).ok()?).ok()?;
    let p = m.get(&hop.vpc_id, 0).ok()?;
    Some(desired::Link {
        ifindex: p.ifindex,
        mac: p.mac,
    })
}

fn probe(link: &Option<desired::Link>, hop: &NextHop) {
    let Some(link) = link else { return };
    let frame = neigh::arp_request(link.mac, hop.ask_from, hop.addr);
    if let Err(e) = neigh::send_frame(link, &frame) {
        warn!("ARP request for {} failed: {e}", ip(hop.addr));
    }
}

/// Asks for every next hop and waits (bounded) until the data path has learned them.
async fn resolve(dp: &mut Dataplane, hops: &[NextHop], within: Duration) {
    let deadline = Instant::now() + within;
    for hop in hops {
        probe(&state_links(dp, hop), hop);
    }
    loop {
        let missing: Vec<_> = hops
            .iter()
            .filter(|h| dp.neighbor(h.vpc_id, h.addr).is_none())
            .collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for h in missing {
                warn!(
                    "load balancer {} has not answered ARP yet; retrying every 5 s",
                    ip(h.addr)
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
