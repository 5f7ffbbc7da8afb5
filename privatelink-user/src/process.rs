//! Process setup shared by `privatelink` and the lab's helper binaries (`pl-appliance`,
//! `pl-xdp-pass`): log lines in one format (on stderr, or for the journal under systemd),
//! a log filter that can change while running, systemd's readiness notice, and `--netns`.

use std::{ffi::OsStr, path::Path, sync::OnceLock};

use anyhow::{Context, Result};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Registry,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt,
};

/// The filter without `RUST_LOG` or `--log`: `info`, with the DNS server library's
/// per-query lines left out.
pub const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn";

/// The filter in force, replaced by `set_log_filter` (`--log`, and on SIGHUP).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Logs to stderr (RUST_LOG, default `DEFAULT_LOG_FILTER`; colours only on a terminal).
/// Under systemd, when stderr is the journal's stream (`JOURNAL_STREAM`), lines carry no
/// time (the journal stamps them) and start with their syslog priority (`<4>` for a
/// warning), which the journal reads as the entry's priority.
pub fn init_logging() {
    let (filter, handle) = reload::Layer::new(env_filter(None));
    let journal = stderr_is_journal();
    let plain = (!journal).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let for_journal = journal.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(for_journal)
        .init();
    let _ = FILTER.set(handle);
}

/// `filter`, else RUST_LOG, else `DEFAULT_LOG_FILTER`.
fn env_filter(filter: Option<&str>) -> EnvFilter {
    match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
    }
}

/// Replaces the log filter (`None`: back to RUST_LOG or the default).
pub fn set_log_filter(filter: Option<&str>) -> Result<()> {
    if let Some(f) = filter {
        check_log_filter(f).map_err(|e| anyhow::anyhow!(e))?;
    }
    let handle = FILTER.get().context("logging is not set up")?;
    handle
        .reload(env_filter(filter))
        .map_err(|e| anyhow::anyhow!("replacing the log filter: {e}"))
}

/// `--log`: a filter in RUST_LOG's syntax (`info`, `warn,privatelink_user::health=debug`).
pub fn check_log_filter(s: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?} is not a log filter: {e}"))
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` names
/// its device and inode (a child that inherits the variable but not the stream logs as
/// usual).
fn stderr_is_journal() -> bool {
    std::env::var("JOURNAL_STREAM").is_ok_and(|v| {
        // SAFETY: `stat` is plain integers, for which zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills the struct it is given; fd 2 is ours to inspect.
        let ok = unsafe { libc::fstat(2, &mut st) } == 0;
        ok && v == format!("{}:{}", st.st_dev, st.st_ino)
    })
}

/// A line for the journal: `<priority>` (syslog's, which the journal reads off the start
/// of each line of a service's stderr), then the line as `F` formats it.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a tracing level (err, warning, info, debug).
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Tells systemd the daemon's state (`READY=1` once it serves: a `Type=notify` unit is
/// started then) through `$NOTIFY_SOCKET`; nothing when the variable is not set.
pub fn notify_systemd(state: &str) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) => notify(&socket, state),
        None => Ok(()),
    }
}

/// Sends `state` to the notification socket `socket` (a path, or `@name` in the abstract
/// namespace).
fn notify(socket: &OsStr, state: &str) -> std::io::Result<()> {
    use std::os::{
        linux::net::SocketAddrExt,
        unix::{ffi::OsStrExt, net::UnixDatagram},
    };
    let sock = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// Moves this thread into the named network namespace (/run/netns/NAME), and the threads
/// it starts from then on: threads started before stay where they were (the etcd
/// client's, on purpose). Call it before the runtime whose sockets must be in it.
pub fn enter_netns(name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/netns").join(name);
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a namespace fd; it moves the calling thread only.
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
    fn the_readiness_notice_reaches_a_path_socket_and_an_abstract_one() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let at_path = UnixDatagram::bind(&path).unwrap();
        super::notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = at_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("privatelink-test-{}", std::process::id());
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(&name).unwrap();
        let abstract_ = UnixDatagram::bind_addr(&addr).unwrap();
        super::notify(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        let n = abstract_.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn log_filters_are_checked_and_levels_map_to_syslog_priorities() {
        assert!(super::check_log_filter("warn,privatelink_user::health=debug").is_ok());
        let e = super::check_log_filter("info,x=loud").unwrap_err();
        assert!(e.contains("x=loud"), "{e}");
        use tracing::Level;
        let p: Vec<u8> = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG]
            .into_iter()
            .map(super::syslog_priority)
            .collect();
        assert_eq!(p, [3, 4, 6, 7]);
    }

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
