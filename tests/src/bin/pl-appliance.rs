//! `pl-appliance`: a test inspection appliance for GWLB endpoints (see
//! `privatelink_tests::appliance`), started by the lab and the GWLB tests.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::Parser;
use privatelink_tests::appliance::{self, DropRule};
use privatelink_user::process;
use tracing::info;

/// A test inspection appliance for GWLB endpoints: receives GENEVE (RFC 8926) on UDP,
/// checks the GWLB options, drops what a rule matches, returns the rest with the outer
/// addresses swapped, and writes its counters to --stats-file.
#[derive(Parser)]
#[command(name = "pl-appliance")]
struct Args {
    #[arg(long, default_value = "0.0.0.0:6081")]
    listen: SocketAddr,
    /// The UDP port returned packets go to on the sender.
    #[arg(long, default_value_t = 6081)]
    reply_port: u16,
    /// Drop inner packets matching PROTO[:DPORT] (tcp, udp, icmp; repeatable).
    #[arg(long = "drop")]
    drop: Vec<DropRule>,
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Answer health checks here (any TCP connection gets HTTP 200).
    #[arg(long)]
    health: Option<SocketAddr>,
    #[arg(long)]
    netns: Option<String>,
}

fn main() -> Result<()> {
    process::init_logging();
    let Args {
        listen,
        reply_port,
        drop,
        stats_file,
        health,
        netns,
    } = Args::parse();
    if let Some(ns) = netns {
        process::enter_netns(&ns)?;
    }
    info!(%listen, rules = drop.len(), "appliance listening for GENEVE");
    appliance::run(&appliance::Options {
        listen,
        reply_port,
        drop,
        stats_file,
        health,
    })
}
