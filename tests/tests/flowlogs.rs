//! Flow logs end to end, in one small topology (three namespaces: a consumer client, the
//! forwarder running the real daemon in API mode, the provider's load balancer, Python
//! HTTP servers on its IPv4 and IPv6 addresses), dual stack, with flow logs on for ep-a
//! at a 2-second window, turned on and off through the CLI. One daemon run holds every
//! check, in order: an idle window is one NODATA record; an accepted download's ACCEPT
//! records, both directions, carry the packets, bytes and TCP flags a tcpdump capture on
//! the client's veth counts (parsed here with etherparse), over IPv4 and over IPv6; a
//! security group's drop gives REJECT records with the captured SYNs, for either family;
//! IPv6 fragments to the ENI, refused before any path, are REJECT records of protocol 44;
//! a disabled connection's SYNs, refused before any path too, are REJECT records with
//! their ports, for either family;
//! a burst through a deliberately small ring buffer (`--flow-log-ring-bytes 8192`, polled
//! every 250 ms) is counted in the ENI's `flow_log_lost` (read from the pinned map) and its
//! window's records say SKIPDATA. The records are parsed by the header's field names.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, PerCpuArray};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use privatelink_common::{COUNTER_ENI, CounterKey, EndpointCounters, map_names};
use privatelink_tests::{
    apidaemon::two_party_tokens_dual,
    lab::{bin, privatelink_bin, wait_for},
    netns::{self, Netns, unique_name},
};
use privatelink_user::{
    client::{ApiError, Client},
    dataplane::open_pinned,
    model::numeric_id,
};
use serde_json::{Value, json};

const CLIENT: &str = "10.10.2.1";
const ENI: &str = "10.10.1.100";
const LB: &str = "10.10.0.10";
/// The same over IPv6 (written as the records and etherparse print them).
const CLIENT6: &str = "fd00:a:0:2::1";
const ENI6: &str = "fd00:a:0:1::100";
const LB6: &str = "fd00:b::10";
const WINDOW: u64 = 2;
/// The records' fields, as the README states them (the contract, written out here).
const FIELDS: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol \
                      packets bytes start end action log-status vpc-id vswitch-id eni-id \
                      direction tcp-flags";
const ENI_ID: &str = "eni-ep-a-vsw-a1";
/// Size of the file the download fetches, and the fewest full-size segments it takes.
const BIG: usize = 1 << 20;
const BIG_SEGMENTS: u64 = (BIG / 1448) as u64;

/// The namespaces, the processes (killed on drop, the daemon first), the daemon's files.
struct World {
    children: Vec<Child>,
    consumer: Netns,
    provider: Netns,
    fwd: Netns,
    dir: PathBuf,
    pin: PathBuf,
    url: String,
    admin: Client,
    a_token: String,
    a: Client,
    b: Client,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.consumer, &self.provider, &self.fwd] {
            netns::remove(&ns.name);
        }
        if std::env::var_os("KEEP_FLOWLOG_TEST").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// Starts `cmd` with its output appended to `<dir>/<name>.log`.
fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

impl World {
    /// The topology, the daemon, and through the API: the lab's two parties, epsrv-b in
    /// front of the load balancer (auto-accepting), ep-a with its ENI in vsw-a1.
    fn up() -> Result<Self> {
        let consumer = Netns::create(&unique_name("flc"))?;
        let provider = Netns::create(&unique_name("flp"))?;
        let fwd = Netns::create(&unique_name("flf"))?;
        let dir = std::env::temp_dir().join(format!("privatelink-{}", fwd.name));
        let pin = PathBuf::from(format!("/sys/fs/bpf/privatelink-{}", fwd.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www"))?;
        let mut w = World {
            children: Vec::new(),
            consumer,
            provider,
            fwd,
            dir,
            pin,
            url: String::new(),
            admin: Client::new("http://127.0.0.1:1", None),
            a_token: String::new(),
            a: Client::new("http://127.0.0.1:1", None),
            b: Client::new("http://127.0.0.1:1", None),
        };
        w.wire()?;
        w.serve()?;
        w.start_daemon()?;
        w.build()?;
        Ok(w)
    }

    fn wire(&mut self) -> Result<()> {
        let (c, p, f) = (&self.consumer.name, &self.provider.name, &self.fwd.name);
        netns::ip(&[
            "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "fc0", "netns", f,
        ])?;
        netns::ip(&[
            "link", "add", "p0", "netns", p, "type", "veth", "peer", "name", "fp0", "netns", f,
        ])?;
        self.consumer
            .ip(&["addr", "add", &format!("{CLIENT}/16"), "dev", "c0"])?;
        self.provider
            .ip(&["addr", "add", &format!("{LB}/16"), "dev", "p0"])?;
        for dev in ["fc0", "fp0"] {
            self.fwd.ip(&["link", "set", dev, "up"])?;
        }
        for (ns, dev) in [(&self.consumer, "c0"), (&self.provider, "p0")] {
            ns.ip(&["link", "set", dev, "up"])?;
            // Complete checksums (a redirected frame loses the offload state), hence no
            // TSO; no GRO on the client's side, so the capture sees the frames XDP saw.
            ns.exec("ethtool", &["-K", dev, "tx", "off", "gro", "off"])?;
        }
        // Each VPC's /56 on-link, as the /16 (the forwarder answers neighbour
        // solicitations for the ENI's and SNAT addresses); `nodad`: usable at once.
        for (ns, dev, a, vpc) in [
            (&self.consumer, "c0", CLIENT6, "fd00:a::/56"),
            (&self.provider, "p0", LB6, "fd00:b::/56"),
        ] {
            ns.ip(&["addr", "add", &format!("{a}/64"), "dev", dev, "nodad"])?;
            ns.ip(&["-6", "route", "add", vpc, "dev", dev, "src", a])?;
        }
        self.fwd.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
        // Frames XDP redirects into a veth reach its far end only if XDP runs there.
        for (ns, dev) in [
            (self.consumer.name.clone(), "c0"),
            (self.provider.name.clone(), "p0"),
        ] {
            let child = spawn(
                &self.dir,
                &format!("xdp-pass-{dev}"),
                Command::new(bin("pl-xdp-pass")?).args(["--netns", &ns, dev]),
            )?;
            self.children.push(child);
        }
        Ok(())
    }

    /// The load balancer: Python HTTP servers on LB:80 and [LB6]:80 serving a small page
    /// and a 1 MiB file.
    fn serve(&mut self) -> Result<()> {
        let www = self.dir.join("www");
        std::fs::write(www.join("small.txt"), "flow logs\n".repeat(20))?;
        let big: Vec<u8> = (0..BIG).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(www.join("big.bin"), big)?;
        for (name, bind, url) in [
            ("http", LB, LB.to_string()),
            ("http6", LB6, format!("[{LB6}]")),
        ] {
            let mut cmd = self.provider.command("python3");
            cmd.args(["-m", "http.server", "--bind", bind, "80", "--directory"])
                .arg(&www);
            let child = spawn(&self.dir, name, &mut cmd)?;
            self.children.push(child);
            wait_for(Duration::from_secs(10), "the HTTP server", || {
                self.provider
                    .exec(
                        "curl",
                        &["-sf", "-m", "1", &format!("http://{url}/small.txt")],
                    )
                    .is_ok()
            })?;
        }
        Ok(())
    }

    fn start_daemon(&mut self) -> Result<()> {
        let ready = self.dir.join("ready");
        let mut cmd = Command::new(privatelink_bin()?);
        cmd.arg("daemon")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen", "127.0.0.1:0", "--netns", &self.fwd.name])
            .arg("--pin-dir")
            .arg(&self.pin)
            .arg("--ready-file")
            .arg(&ready)
            .args(["--flow-log-ring-bytes", "8192", "--flow-log-poll-ms", "250"]);
        let mut child = spawn(&self.dir, "daemon", &mut cmd)?;
        let start = Instant::now();
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&ready)
                && s.ends_with('\n')
            {
                break s.trim().to_string();
            }
            if let Some(status) = child.try_wait()? {
                bail!("daemon exited ({status}):\n{}", self.daemon_log());
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!("daemon not ready after 60 s:\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.children.push(child);
        let admin = std::fs::read_to_string(self.dir.join("data/admin.token"))?;
        self.url = url;
        self.admin = Client::new(&self.url, Some(admin.trim().to_string()));
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let (ta, tb) = two_party_tokens_dual(&self.admin)?;
        self.a = Client::new(&self.url, Some(ta.clone()));
        self.b = Client::new(&self.url, Some(tb));
        self.a_token = ta;
        self.b.post(
            "/v1/services",
            &json!({"id": "epsrv-b", "vpc": "vpc-b", "ip_version": "dualstack",
                    "backends": [{"zone": "zone-a", "address": LB, "address6": LB6}],
                    "snat": ["10.10.0.200"], "snat6": ["fd00:b::200"], "whitelist": ["acct-a"],
                    "auto_accept": true, "listeners": [{"protocol": "tcp", "port": 80}]}),
        )?;
        self.a.post(
            "/v1/endpoints",
            &json!({"id": "ep-a", "vpc": "vpc-a", "service": "epsrv-b", "ip_version": "dualstack",
                    "zones": [{"vswitch": "vsw-a1", "eni": ENI, "eni6": ENI6}]}),
        )?;
        // Through the endpoint (the load balancer's MAC learned, the path warm), both ways.
        wait_for(Duration::from_secs(10), "a request through ep-a", || {
            self.curl(ENI, "small.txt", 40999, 2).is_ok()
        })?;
        wait_for(
            Duration::from_secs(10),
            "an IPv6 request through ep-a",
            || self.curl(ENI6, "small.txt", 40998, 2).is_ok(),
        )
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `curl` from the client to the ENI's address `eni` (`ENI` or `ENI6`), from local
    /// port `port`, `limit` seconds at most.
    fn curl(&self, eni: &str, file: &str, port: u16, limit: u32) -> Result<()> {
        let url = match eni.contains(':') {
            true => format!("http://[{eni}]/{file}"),
            false => format!("http://{eni}/{file}"),
        };
        self.consumer.exec(
            "curl",
            &[
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "--local-port",
                &port.to_string(),
                "--connect-timeout",
                &limit.to_string(),
                "-m",
                &limit.to_string(),
                &url,
            ],
        )?;
        Ok(())
    }

    /// `privatelink --json <args>` as acct-a.
    fn cli(&self, args: &[&str]) -> Result<Value> {
        let out = netns::run(
            Command::new(privatelink_bin()?)
                .args(["--json", "--api", &self.url, "--token", &self.a_token])
                .args(args)
                .env_remove("PRIVATELINK_TOKEN"),
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("data/flow-logs/ep-a.log")
    }

    /// The log's records, each by the header's field names (the header checked).
    fn records(&self) -> Vec<BTreeMap<String, String>> {
        let Ok(text) = std::fs::read_to_string(self.log_file()) else {
            return Vec::new();
        };
        let mut lines = text.lines();
        let header: Vec<&str> = match lines.next() {
            Some(h) => h.split(' ').collect(),
            None => return Vec::new(),
        };
        assert_eq!(header, FIELDS.split_whitespace().collect::<Vec<_>>());
        lines
            .map(|l| {
                let values: Vec<&str> = l.split(' ').collect();
                assert_eq!(values.len(), header.len(), "{l}");
                header
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// Waits until the windows up to Unix second `until` are written: a record that starts
    /// later is there (windows are written in order). Returns the records.
    fn records_after(&self, until: u64) -> Result<Vec<BTreeMap<String, String>>> {
        let mut out = Vec::new();
        wait_for(
            Duration::from_secs(4 * WINDOW + 5),
            &format!("a flow log window after {until}"),
            || {
                out = self.records();
                out.iter().any(|r| num(r, "start") > until)
            },
        )
        .with_context(|| format!("records: {:#?}\n{}", self.records(), self.daemon_log()))?;
        Ok(out)
    }

    /// Waits until the daemon has logged `what` for ep-a `times` times (one line each time
    /// its flow log starts or stops, none per record).
    fn logged(&self, what: &str, times: usize) -> Result<()> {
        let count = || {
            self.daemon_log()
                .lines()
                .filter(|l| l.contains(what) && l.contains("ep-a"))
                .count()
        };
        wait_for(Duration::from_secs(5), what, || count() >= times)
            .with_context(|| self.daemon_log())?;
        anyhow::ensure!(
            count() == times,
            "{what} {} times:\n{}",
            count(),
            self.daemon_log()
        );
        Ok(())
    }

    /// ep-a's `flow_log_lost`, read from the pinned counters.
    fn flow_log_lost(&self) -> Result<u64> {
        let slots_map = open_pinned(&self.pin, map_names::EP_SLOTS)?;
        let slots: HashMap<_, CounterKey, u32> = HashMap::try_from(&slots_map)?;
        let key = CounterKey {
            kind: COUNTER_ENI,
            a: numeric_id("ep-a"),
            b: numeric_id("zone-a"),
        };
        let slot = slots
            .get(&key, 0)
            .context("ep-a's ENI has no counter slot")?;
        let counters_map = open_pinned(&self.pin, map_names::EP_COUNTERS)?;
        let counters: PerCpuArray<_, EndpointCounters> = PerCpuArray::try_from(&counters_map)?;
        Ok(counters
            .get(&slot, 0)?
            .iter()
            .map(|c| c.flow_log_lost)
            .sum())
    }
}

fn num(r: &BTreeMap<String, String>, field: &str) -> u64 {
    r[field].parse().unwrap_or(0)
}

/// A tcpdump on the client's veth, written to a pcap file.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(w: &World, name: &str, filter: &str) -> Result<Self> {
        let file = w.dir.join(format!("{name}.pcap"));
        let err = w.dir.join(format!("{name}.tcpdump"));
        let mut cmd = w.consumer.command("tcpdump");
        cmd.args(["-i", "c0", "-n", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?);
        let child = cmd.spawn()?;
        let c = Capture { child, file };
        wait_for(Duration::from_secs(10), "tcpdump to listen", || {
            std::fs::read_to_string(&err).is_ok_and(|s| s.contains("listening on"))
        })?;
        Ok(c)
    }

    /// Stops the capture (SIGINT: the file is flushed) and reads its IP packets.
    fn finish(mut self) -> Result<Vec<Packet>> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        read_pcap(&std::fs::read(&self.file)?)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One captured IP packet (ports and flags 0 and false but for TCP).
#[derive(Clone, Debug)]
struct Packet {
    /// Unix time, seconds.
    time: u64,
    src: String,
    dst: String,
    /// The IPv4 protocol, or the IPv6 fixed header's next header.
    proto: u8,
    sport: u16,
    dport: u16,
    /// The IPv4 total length; the IPv6 payload length and its fixed header's 40.
    ip_len: u64,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}

/// The frames of a classic pcap file (microsecond, little-endian, Ethernet).
fn read_pcap(b: &[u8]) -> Result<Vec<Packet>> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    if b.len() < 24 || u32_at(0) != 0xa1b2_c3d4 || u32_at(20) != 1 {
        bail!("not a little-endian Ethernet pcap file");
    }
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let (secs, caplen) = (u32_at(i) as u64, u32_at(i + 8) as usize);
        let frame = &b[i + 16..(i + 16 + caplen).min(b.len())];
        i += 16 + caplen;
        let p = SlicedPacket::from_ethernet(frame)
            .map_err(|e| anyhow::anyhow!("a captured frame: {e}"))?;
        let (src, dst, proto, ip_len) = match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                let (s, d) = (h.source_addr(), h.destination_addr());
                (
                    s.to_string(),
                    d.to_string(),
                    h.protocol().0,
                    h.total_len() as u64,
                )
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                let (s, d) = (h.source_addr(), h.destination_addr());
                (
                    s.to_string(),
                    d.to_string(),
                    h.next_header().0,
                    40 + h.payload_length() as u64,
                )
            }
            _ => continue,
        };
        let mut packet = Packet {
            time: secs,
            src,
            dst,
            proto,
            sport: 0,
            dport: 0,
            ip_len,
            syn: false,
            ack: false,
            fin: false,
            rst: false,
        };
        if let Some(TransportSlice::Tcp(tcp)) = p.transport {
            packet.sport = tcp.source_port();
            packet.dport = tcp.destination_port();
            (packet.syn, packet.ack, packet.fin, packet.rst) =
                (tcp.syn(), tcp.ack(), tcp.fin(), tcp.rst());
        }
        out.push(packet);
    }
    Ok(out)
}

/// The captured packets from `src` to `dst` of the client's port `port` (to or from the
/// ENI's port 80): their count, IP bytes, TCP flags as the README says the records give
/// them (FIN 1, SYN 2, RST 4, ACK 16 only with SYN, OR-ed), and first and last second.
fn tally(packets: &[Packet], src: &str, dst: &str, port: u16) -> (u64, u64, u64, u64, u64) {
    let ports = if src == CLIENT || src == CLIENT6 {
        (port, 80)
    } else {
        (80, port)
    };
    let p: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.src == src && p.dst == dst && (p.sport, p.dport) == ports)
        .collect();
    let flags = p.iter().fold(0, |f, p| {
        f | (p.fin as u64)
            | (p.syn as u64) << 1
            | (p.rst as u64) << 2
            | ((p.syn && p.ack) as u64) << 4
    });
    (
        p.len() as u64,
        p.iter().map(|p| p.ip_len).sum(),
        flags,
        p.iter().map(|p| p.time).min().unwrap_or(0),
        p.iter().map(|p| p.time).max().unwrap_or(0),
    )
}

/// The records of the flow between the client's `port` and the ENI's port 80 in one
/// direction ("ingress": client → ENI), over either family (each step of the test uses
/// its own client ports).
fn of_flow<'a>(
    records: &'a [BTreeMap<String, String>],
    port: u16,
    direction: &str,
) -> Vec<&'a BTreeMap<String, String>> {
    let port = port.to_string();
    let (ends, sport, dport) = match direction {
        "ingress" => ([(CLIENT, ENI), (CLIENT6, ENI6)], port.as_str(), "80"),
        _ => ([(ENI, CLIENT), (ENI6, CLIENT6)], "80", port.as_str()),
    };
    records
        .iter()
        .filter(|r| {
            ends.contains(&(r["srcaddr"].as_str(), r["dstaddr"].as_str()))
                && r["srcport"] == sport
                && r["dstport"] == dport
                && r["direction"] == direction
        })
        .collect()
}

/// Sums `field` over records.
fn sum(records: &[&BTreeMap<String, String>], field: &str) -> u64 {
    records.iter().map(|r| num(r, field)).sum()
}

/// The fields every record of ep-a's ENI has, whatever its flow.
fn check_eni_fields(r: &BTreeMap<String, String>) {
    for (k, v) in [
        ("version", "5"),
        ("account-id", "acct-a"),
        ("interface-id", ENI_ID),
        ("eni-id", ENI_ID),
        ("vpc-id", "vpc-a"),
        ("vswitch-id", "vsw-a1"),
    ] {
        assert_eq!(r[k], v, "{k} of {r:?}");
    }
}

#[test]
fn flow_logs_record_accepted_rejected_lost_and_idle_windows() {
    let w = World::up().unwrap();

    // The API: only the owner (and the operator) turns flow logs on; the window is checked.
    let refusal = |r: Result<Value>| {
        let e = r.unwrap_err();
        let e = e.downcast_ref::<ApiError>().expect("an API error");
        (e.status, e.body["error"]["field"].clone())
    };
    let path = "/v1/endpoints/ep-a/flow-log";
    assert_eq!(
        refusal(w.b.put(path, &json!({"window_seconds": 60}))).0,
        403
    );
    for bad in [0, 601] {
        assert_eq!(
            refusal(w.a.put(path, &json!({"window_seconds": bad}))),
            (400, json!("window_seconds")),
            "{bad}"
        );
    }
    let v = w.admin.put(path, &json!({"window_seconds": 600})).unwrap();
    assert_eq!(v["flow_log"], json!({"window_seconds": 600}));
    w.logged("flow log started", 1).unwrap();
    w.admin.delete(path).unwrap();
    assert!(w.a.get("/v1/endpoints/ep-a").unwrap()["flow_log"].is_null());
    w.logged("flow log stopped", 1).unwrap();

    // On, through the CLI, at a 2-second window.
    let v = w
        .cli(&["endpoint", "flow-log", "enable", "ep-a", "--window", "2"])
        .unwrap();
    assert_eq!(v["flow_log"]["window_seconds"], 2, "{v}");
    assert_eq!(
        w.a.get("/v1/endpoints/ep-a").unwrap()["flow_log"],
        json!({"window_seconds": 2})
    );

    // (d) Nothing crosses the ENI: a window of its own is one NODATA record.
    let mut nodata = Vec::new();
    wait_for(Duration::from_secs(10), "a NODATA record", || {
        nodata = w
            .records()
            .into_iter()
            .filter(|r| r["log-status"] == "NODATA")
            .collect();
        !nodata.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", w.records(), w.daemon_log()));
    let r = &nodata[0];
    check_eni_fields(r);
    assert_eq!(num(r, "end") - num(r, "start"), WINDOW, "{r:?}");
    assert_eq!(num(r, "start") % WINDOW, 0, "{r:?}");
    for k in [
        "srcaddr",
        "dstaddr",
        "srcport",
        "dstport",
        "protocol",
        "packets",
        "bytes",
        "action",
        "direction",
        "tcp-flags",
    ] {
        assert_eq!(r[k], "-", "{k} of {r:?}");
    }

    // (a) An accepted request: ACCEPT records both ways, as the capture counts them, over
    // either family.
    accepted(&w, CLIENT, ENI, 41000);
    accepted(&w, CLIENT6, ENI6, 45000);

    // (b) A security group drops the client's port 80 (either family's address): REJECT
    // records of its SYNs.
    w.a.post(
        "/v1/security-groups",
        &json!({"id": "sg-deny", "vpc": "vpc-a", "rules": [
            {"direction": "ingress", "priority": 1, "action": "drop", "protocol": "tcp",
             "ports": [80, 80], "cidr": format!("{CLIENT}/32")},
            {"direction": "ingress", "priority": 1, "action": "drop", "protocol": "tcp",
             "ports": [80, 80], "cidr": format!("{CLIENT6}/128")},
            {"direction": "ingress", "priority": 2, "action": "accept", "protocol": "all",
             "cidr": "0.0.0.0/0"},
            {"direction": "ingress", "priority": 2, "action": "accept", "protocol": "all",
             "cidr": "::/0"}]}),
    )
    .unwrap();
    w.a.patch(
        "/v1/endpoints/ep-a",
        &json!({"security_groups": ["sg-deny"]}),
    )
    .unwrap();
    rejected(&w, CLIENT, ENI, 42000);
    rejected(&w, CLIENT6, ENI6, 46000);
    w.a.patch("/v1/endpoints/ep-a", &json!({"security_groups": []}))
        .unwrap();

    // (e) IPv6 fragments to the ENI (a 2 000-byte echo over a 1 500-byte link), refused
    // before any path (`DropFragment`): REJECT records of the fixed header's next header,
    // Fragment (44), without ports, as many packets and bytes as were captured.
    let cap = Capture::start(&w, "fragments", &format!("ip6 and host {ENI6}")).unwrap();
    let ping = w.consumer.exec(
        "ping",
        &["-6", "-c", "2", "-i", "0.2", "-W", "1", "-s", "2000", ENI6],
    );
    assert!(ping.is_err(), "a fragmented echo is not answered");
    let packets = cap.finish().unwrap();
    let frags: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.src == CLIENT6 && p.dst == ENI6 && p.proto == 44)
        .collect();
    assert!(frags.len() >= 4, "2 echoes of 2 fragments: {packets:#?}");
    let last = frags.iter().map(|p| p.time).max().unwrap();
    let records = w.records_after(last).unwrap();
    let rs: Vec<_> = records
        .iter()
        .filter(|r| r["srcaddr"] == CLIENT6 && r["dstaddr"] == ENI6 && r["protocol"] == "44")
        .collect();
    assert_eq!(
        (sum(&rs, "packets"), sum(&rs, "bytes")),
        (frags.len() as u64, frags.iter().map(|p| p.ip_len).sum()),
        "{rs:#?}"
    );
    for r in &rs {
        check_eni_fields(r);
        assert_eq!(
            [
                &r["srcport"],
                &r["dstport"],
                &r["action"],
                &r["direction"],
                &r["tcp-flags"]
            ],
            ["0", "0", "REJECT", "ingress", "-"],
            "{r:?}"
        );
    }

    // (f) The provider disables the connection: each family's SYNs are refused before any
    // path (the classifiers' `check_forwarding`), REJECT records with their ports.
    let conn = "/v1/services/epsrv-b/connections/ep-a";
    w.b.post(&format!("{conn}/disable"), &json!({})).unwrap();
    rejected(&w, CLIENT, ENI, 47000);
    rejected(&w, CLIENT6, ENI6, 47001);
    w.b.post(&format!("{conn}/enable"), &json!({})).unwrap();
    wait_for(Duration::from_secs(10), "ep-a forwarding again", || {
        w.curl(ENI6, "small.txt", 47002, 2).is_ok()
    })
    .unwrap();

    // (c) A 1 MiB download through an 8 KiB ring drained every 250 ms: events are lost,
    // counted per ENI, and their window's records say SKIPDATA.
    let lost_before = w.flow_log_lost().unwrap();
    w.curl(ENI, "big.bin", 43000, 10).unwrap();
    let lost = w.flow_log_lost().unwrap() - lost_before;
    assert!(lost > 0, "flow_log_lost did not move");
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let records = w.records_after(end).unwrap();
    let flow: Vec<_> = of_flow(&records, 43000, "ingress")
        .into_iter()
        .chain(of_flow(&records, 43000, "egress"))
        .collect();
    assert!(
        flow.iter().any(|r| r["log-status"] == "SKIPDATA"),
        "no SKIPDATA record: {flow:#?}"
    );
    // A window with a loss says so on each of its records.
    for r in &flow {
        if r["log-status"] == "SKIPDATA" {
            let window = num(r, "start") / WINDOW;
            for o in records.iter().filter(|o| {
                o["log-status"] != "NODATA"
                    && o["start"] != "-"
                    && num(o, "start") / WINDOW == window
            }) {
                assert_eq!(o["log-status"], "SKIPDATA", "{o:?} in the window of {r:?}");
            }
        }
    }
    // Every segment the download needed was either recorded or counted lost.
    let egress = sum(&of_flow(&records, 43000, "egress"), "packets");
    assert!(
        egress < BIG_SEGMENTS,
        "{egress} of {BIG_SEGMENTS} recorded, none lost?"
    );
    assert!(
        sum(&flow, "packets") + lost >= BIG_SEGMENTS,
        "{} recorded + {lost} lost < {BIG_SEGMENTS}",
        sum(&flow, "packets")
    );

    // Off, through the CLI: the file stops growing; the log said when it started and stopped.
    let v = w.cli(&["endpoint", "flow-log", "disable", "ep-a"]).unwrap();
    assert!(v["flow_log"].is_null(), "{v}");
    std::thread::sleep(Duration::from_millis(500));
    let n = w.records().len();
    w.curl(ENI, "small.txt", 44000, 5).unwrap();
    std::thread::sleep(Duration::from_secs(WINDOW + 1));
    let after = w.records();
    assert_eq!(after.len(), n, "records after the flow log stopped");
    assert!(of_flow(&after, 44000, "ingress").is_empty());
    for what in ["flow log started", "flow log stopped"] {
        w.logged(what, 2).unwrap();
    }
}

/// A request from `client` to `eni` from port `port`: ACCEPT records both ways, whose
/// packets, bytes, TCP flags and times are those a capture on the client's veth counts.
fn accepted(w: &World, client: &str, eni: &str, port: u16) {
    let cap = Capture::start(w, &format!("accept-{port}"), &format!("tcp and host {eni}")).unwrap();
    w.curl(eni, "small.txt", port, 5).unwrap();
    let packets = cap.finish().unwrap();
    let last = packets.iter().map(|p| p.time).max().unwrap();
    let records = w.records_after(last).unwrap();
    for (direction, src, dst) in [("ingress", client, eni), ("egress", eni, client)] {
        let (n, bytes, flags, first, last) = tally(&packets, src, dst, port);
        let rs = of_flow(&records, port, direction);
        assert!(
            n >= 3 && !rs.is_empty(),
            "{direction}: {n} captured, {rs:#?}"
        );
        assert_eq!(
            (sum(&rs, "packets"), sum(&rs, "bytes")),
            (n, bytes),
            "{direction}: packets and bytes, {rs:#?}"
        );
        let or = rs.iter().fold(0, |f, r| f | num(r, "tcp-flags"));
        assert_eq!(or, flags, "{direction}: tcp-flags, {rs:#?}");
        assert_eq!(flags & 3, 3, "{direction}: SYN and FIN were captured");
        for r in &rs {
            check_eni_fields(r);
            assert_eq!((r["srcaddr"].as_str(), r["dstaddr"].as_str()), (src, dst));
            assert_eq!(
                (
                    r["protocol"].as_str(),
                    r["action"].as_str(),
                    r["log-status"].as_str()
                ),
                ("6", "ACCEPT", "OK"),
                "{r:?}"
            );
            // Within a second of the capture's clock (a packet at a second's edge).
            assert!(
                num(r, "start") + 1 >= first && num(r, "end") <= last + 1,
                "{r:?}"
            );
            assert!(num(r, "start") <= num(r, "end"), "{r:?}");
        }
    }
}

/// A request from `client` to `eni` from port `port` that a security group drops: REJECT
/// records of exactly its captured SYNs, nothing the other way.
fn rejected(w: &World, client: &str, eni: &str, port: u16) {
    let cap = Capture::start(w, &format!("reject-{port}"), &format!("tcp and host {eni}")).unwrap();
    assert!(
        w.curl(eni, "small.txt", port, 3).is_err(),
        "the group drops it"
    );
    let packets = cap.finish().unwrap();
    let (syns, bytes, flags, _, last) = tally(&packets, client, eni, port);
    assert!(
        packets.iter().all(|p| p.src == client && p.syn && !p.ack),
        "only the client's SYNs: {packets:#?}"
    );
    assert!(syns >= 2 && flags == 2, "{syns} SYNs retried in 3 s");
    let records = w.records_after(last).unwrap();
    let rs = of_flow(&records, port, "ingress");
    assert!(!rs.is_empty(), "{records:#?}");
    assert_eq!(
        (sum(&rs, "packets"), sum(&rs, "bytes")),
        (syns, bytes),
        "{rs:#?}"
    );
    for r in &rs {
        check_eni_fields(r);
        assert_eq!(
            (r["srcaddr"].as_str(), r["dstaddr"].as_str()),
            (client, eni)
        );
        assert_eq!(
            (
                r["action"].as_str(),
                r["tcp-flags"].as_str(),
                r["log-status"].as_str()
            ),
            ("REJECT", "2", "OK"),
            "{r:?}"
        );
    }
    assert!(
        of_flow(&records, port, "egress").is_empty(),
        "nothing answered"
    );
}
