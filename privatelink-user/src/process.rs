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

/// Raises this process's open-file limit to its hard limit: every VPC's resolver takes TCP
/// connections from its tenants (hickory sets no cap of its own; an idle one is closed
/// after 10 s), and running out of descriptors would stop health probes, netlink and the
/// API too. Returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(r.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        // (Not lowered first: the other tests of this process run meanwhile.)
        let n = super::raise_fd_limit().unwrap();
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills a struct of ours.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        assert_eq!((n, r.rlim_cur), (r.rlim_max, r.rlim_max));
    }
}
