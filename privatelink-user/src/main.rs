//! `privatelink`: the daemon that owns the data plane, and commands to inspect it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use privatelink_common::{DIR_ORIGINAL, PROTO_TCP, PROTO_UDP, map_names};
use privatelink_user::{
    cli, config,
    daemon::{self, DaemonArgs, read_state},
    dataplane::{self, DEFAULT_PIN_DIR},
    process,
};

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

#[derive(Subcommand)]
// Parsed once at start: the daemon's many options make its variant large, harmlessly.
#[allow(clippy::large_enum_variant)]
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
    /// Each counter slot of the data path (an endpoint in one zone, or a GWLB appliance),
    /// by numeric ids as the maps hold them: packets and bytes each way, new flows, drops.
    /// (`privatelink status` shows them named, through the API.)
    Counters {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL (the package installs bash's, zsh's and
    /// fish's).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (privatelink.1, and privatelink-SUBCOMMAND.1 for each
    /// subcommand) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

fn main() -> Result<()> {
    process::init_logging();
    // `daemon --config FILE`: the file's settings go before the command line's.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let expanded = config::expand_argv(&Cli::command(), &argv)?;
    let parsed = match &expanded {
        Some(e) => Cli::parse_from(&e.argv),
        None => Cli::parse_from(&argv),
    };
    match parsed.cmd {
        Cmd::Api(cmd) => cli::run(&parsed.conn, cmd),
        Cmd::Daemon(mut args) => {
            args.command_line = expanded.map(|e| e.command_line).unwrap_or_default();
            // The API socket is made in the caller's namespace, before --netns.
            let listener = match &args.data_dir {
                Some(_) => Some(
                    std::net::TcpListener::bind(&args.listen)
                        .with_context(|| format!("listening on {}", args.listen))?,
                ),
                None => None,
            };
            let metrics_listener = match &args.metrics_listen {
                Some(addr) => Some(
                    std::net::TcpListener::bind(addr)
                        .with_context(|| format!("listening on {addr} (--metrics-listen)"))?,
                ),
                None => None,
            };
            // So is the etcd client's (its thread stays in this namespace).
            let etcd = match args.etcd.is_empty() {
                true => None,
                false => Some(privatelink_user::store::etcd::EtcdRuntime::start()?),
            };
            if let Some(ns) = &args.netns {
                process::enter_netns(ns)?;
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(args, listener, metrics_listener, etcd))
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "privatelink",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))
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
        Cmd::Counters { pin_dir, json } => {
            let slots = dataplane::open_pinned(&pin_dir, map_names::EP_SLOTS)?;
            let counters = dataplane::open_pinned(&pin_dir, map_names::EP_COUNTERS)?;
            let rows = dataplane::read::read_counters(&slots, &counters)?;
            if json {
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(k, c)| {
                        serde_json::json!({"kind": k.kind, "a": k.a, "b": k.b,
                            "counters": privatelink_user::counters::Totals::from(c)})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<4} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
                    "KIND",
                    "A",
                    "B",
                    "PKTS OUT",
                    "BYTES OUT",
                    "PKTS BACK",
                    "BYTES BACK",
                    "FLOWS",
                    "DROPS"
                );
                for (k, c) in rows {
                    let kind = if k.kind == privatelink_common::COUNTER_ENI {
                        "eni"
                    } else {
                        "appl"
                    };
                    println!(
                        "{kind:<4} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
                        k.a,
                        k.b,
                        c.to_service_packets,
                        c.to_service_bytes,
                        c.to_consumer_packets,
                        c.to_consumer_bytes,
                        c.new_flows,
                        c.drops.iter().sum::<u64>()
                    );
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
            let cfg = dataplane::read_config(&pin_dir).unwrap_or_default();
            let now = dataplane::coarse_now_ns();
            println!(
                "{:<5} {:<60} {:<60} STATE",
                "PROTO", "CONSUMER SIDE", "PROVIDER SIDE"
            );
            print_flows(
                &dataplane::read_table::<privatelink_common::FlowEntry>(&pin_dir)?,
                now,
                &cfg,
            );
            // The IPv6 table (absent from pins of a daemon before dual stack).
            type V6 = privatelink_common::FlowEntry6;
            if pin_dir.join(<V6 as dataplane::TableEntry>::MAP).exists() {
                print_flows(&dataplane::read_table::<V6>(&pin_dir)?, now, &cfg);
            }
            Ok(())
        }
    }
}

/// `privatelink flows`' lines for one flow table: each flow's original direction, its
/// rewrite, and its state as the data path judges it.
fn print_flows<E: dataplane::TableEntry>(
    flows: &[(E::Key, E)],
    now: u64,
    cfg: &privatelink_common::Config,
) {
    let by_key: std::collections::HashMap<_, _> = flows.iter().copied().collect();
    for (k, e) in flows.iter().filter(|(_, e)| e.direction() == DIR_ORIGINAL) {
        let proto = match E::proto(k) {
            PROTO_TCP => "tcp".to_string(),
            PROTO_UDP => "udp".to_string(),
            privatelink_common::PROTO_ICMP => "icmp".to_string(),
            58 => "icmp6".to_string(),
            p => p.to_string(),
        };
        let (new_src, new_dst) = e.rewritten();
        let provider_side = if e.flags() & privatelink_common::FLOW_GWLB != 0 {
            // The appliances are IPv4 (an IPv6 flow holds them IPv4-mapped).
            format!(
                "GENEVE {} -> appliance {}",
                new_src.ip().to_canonical(),
                new_dst.ip().to_canonical()
            )
        } else {
            format!("{new_src} -> {new_dst}")
        };
        // Alive while either direction is (as the data path judges it).
        let alive = e.live_in(k, now, cfg, |pk| by_key.get(pk).copied());
        let state = if !alive {
            "expired"
        } else if e.tcp_flags() & privatelink_common::CT_CLOSING != 0 {
            "closing"
        } else if e.tcp_flags() & privatelink_common::CT_ESTABLISHED != 0 {
            "established"
        } else {
            "embryonic"
        };
        let (src, dst) = E::ends(k);
        println!(
            "{:<5} {:<60} {:<60} {}",
            proto,
            format!("{src} -> {dst}"),
            provider_side,
            state,
        );
    }
}
