//! Process setup shared by `privatelink` and the lab's helper binaries (`pl-appliance`,
//! `pl-xdp-pass`): log lines on stderr in one format, and `--netns`.

use std::path::Path;

use anyhow::{Context, Result};

/// Logs to stderr (RUST_LOG, default `info`, with the DNS server library's per-query
/// lines left out; colours only on a terminal).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Moves this process into the named network namespace (/run/netns/NAME). Call it before
/// any other thread exists: only the calling thread moves, and the threads it starts.
pub fn enter_netns(name: &str) -> Result<()> {
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
