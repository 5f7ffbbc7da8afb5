//! `pl-xdp-pass`: attaches the pass-through XDP program to veth ends that receive frames
//! the data path redirects (the kernel drops such frames at a veth whose peer runs no XDP
//! program), and holds it until SIGTERM or SIGINT.

use anyhow::Result;
use clap::Parser;
use privatelink_tests::reference;
use privatelink_user::process;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Lab helper: attach a pass-through XDP program to veth ends that receive frames the
/// data path redirects (the kernel drops such frames at a veth whose peer runs no XDP
/// program), and hold it until SIGTERM.
#[derive(Parser)]
#[command(name = "pl-xdp-pass")]
struct Args {
    #[arg(long)]
    netns: Option<String>,
    #[arg(required = true)]
    ifaces: Vec<String>,
}

fn main() -> Result<()> {
    process::init_logging();
    let Args { netns, ifaces } = Args::parse();
    if let Some(ns) = netns {
        process::enter_netns(&ns)?;
    }
    let _held = reference::attach_pass(&ifaces)?;
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
