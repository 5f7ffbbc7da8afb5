//! The DNS benchmark: the daemon's DNS server against BIND (Debian's `named`) serving the
//! same records, on the same machine, measured side by side with dnsperf (Debian's
//! package): answers per second at saturation, and the latency of an answer at a fixed,
//! modest load. Both servers and dnsperf run in one network namespace; the rounds
//! alternate between the servers.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// What one dnsperf run reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerfRun {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    /// Seconds.
    pub avg_latency: f64,
    /// The response-code line, e.g. `NOERROR 2000 (66.67%), NXDOMAIN 1000 (33.33%)`.
    pub rcodes: String,
}

/// Reads dnsperf's summary ("Queries sent: ...", "Queries per second: ...", "Average
/// Latency (s): ...").
pub fn parse_dnsperf(out: &str) -> Result<PerfRun> {
    let field = |name: &str| -> Option<&str> {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let first_number = |s: &str| -> Option<f64> { s.split_whitespace().next()?.parse().ok() };
    let num = |name: &str| -> Result<f64> {
        field(name)
            .and_then(first_number)
            .with_context(|| format!("dnsperf printed no {name:?}:\n{out}"))
    };
    Ok(PerfRun {
        sent: num("Queries sent:")? as u64,
        completed: num("Queries completed:")? as u64,
        lost: num("Queries lost:")? as u64,
        qps: num("Queries per second:")?,
        avg_latency: num("Average Latency (s):")?,
        rcodes: field("Response codes:").unwrap_or_default().to_string(),
    })
}

/// One query per line, `<name> <type>`, as dnsperf reads them.
pub fn query_file(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n} A\n")).collect()
}

/// BIND as an authoritative server of `apex` on `listen`, with `records` (name → its A
/// records; names relative to nothing: full names without the final dot) and the same SOA
/// timers and TTL as ours. Started in `ns`, its files in `dir`; the caller kills it.
pub fn start_bind(
    ns: &Netns,
    dir: &Path,
    apex: &str,
    ttl: u32,
    records: &[(String, Vec<Ipv4Addr>)],
    listen: SocketAddr,
) -> Result<Child> {
    fs::create_dir_all(dir)?;
    let mut zone = format!(
        "$TTL {ttl}\n@ IN SOA ns1.{apex}. hostmaster.{apex}. 1 3600 600 86400 {ttl}\n@ IN NS ns1.{apex}.\nns1.{apex}. IN A {}\n",
        listen.ip()
    );
    for (name, addrs) in records {
        for a in addrs {
            let _ = writeln!(zone, "{name}. IN A {a}");
        }
    }
    fs::write(dir.join("db.zone"), zone)?;
    let conf = format!(
        r#"options {{
    directory "{d}";
    pid-file none;
    listen-on port {port} {{ {ip}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    minimal-responses yes;
    dnssec-validation no;
}};
controls {{ }};
zone "{apex}" {{ type primary; file "{d}/db.zone"; }};
"#,
        d = dir.display(),
        port = listen.port(),
        ip = listen.ip(),
    );
    let conf_path = dir.join("named.conf");
    fs::write(&conf_path, conf)?;
    let log = fs::File::create(dir.join("named.log"))?;
    // One worker thread, pinned like our server's: the comparison is per CPU.
    let child = ns
        .command("taskset")
        .args(["-c", "1", "named", "-g", "-n", "1", "-c"])
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting named")?;
    Ok(child)
}

/// One dnsperf run from `ns` (pinned to CPU 0) at `server` over `file` for `seconds`;
/// `max_qps` caps the load (None: as fast as the server answers, 100 queries in flight).
pub fn dnsperf(
    ns: &Netns,
    server: SocketAddr,
    file: &Path,
    seconds: u32,
    max_qps: Option<u32>,
    tcp: bool,
) -> Result<PerfRun> {
    let mut cmd = ns.command("taskset");
    cmd.args(["-c", "0", "dnsperf", "-s"])
        .arg(server.ip().to_string())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(file)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "4",
            "-q",
            "100",
            "-t",
            "2",
        ]);
    if let Some(q) = max_qps {
        cmd.args(["-Q", &q.to_string()]);
    }
    if tcp {
        cmd.args(["-m", "tcp"]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_dnsperf(&text)
}

/// Waits until `server` answers `name` with an address (dig from `ns`), at most `limit`.
pub fn wait_answering(ns: &Netns, server: SocketAddr, name: &str, limit: Duration) -> Result<()> {
    crate::lab::wait_for(limit, &format!("DNS at {server}"), || {
        dig_a(ns, server, name).is_ok_and(|a| !a.is_empty())
    })
}

/// The A records `server` gives for `name` (dig +short, from `ns`).
pub fn dig_a(ns: &Netns, server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let out = ns.exec(
        "dig",
        &[
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+short",
            "+time=1",
            "+tries=2",
            name,
            "A",
        ],
    )?;
    let mut v: Vec<Ipv4Addr> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_summary_is_read() {
        let out = "\
Statistics:

  Queries sent:         30000
  Queries completed:    29990 (99.97%)
  Queries lost:         10 (0.03%)

  Response codes:       NOERROR 19990 (66.66%), NXDOMAIN 10000 (33.34%)
  Average packet size:  request 52, reply 84
  Run time (s):         1.000171
  Queries per second:   29984.872566

  Average Latency (s):  0.003280 (min 0.000031, max 0.011000)
  Latency StdDev (s):   0.001012
";
        let r = parse_dnsperf(out).unwrap();
        assert_eq!((r.sent, r.completed, r.lost), (30000, 29990, 10));
        assert!((r.qps - 29984.872566).abs() < 1e-6);
        assert!((r.avg_latency - 0.003280).abs() < 1e-9);
        assert!(r.rcodes.starts_with("NOERROR 19990"));
        assert!(parse_dnsperf("nothing").is_err());
    }
}
