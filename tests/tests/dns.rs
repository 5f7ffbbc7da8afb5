//! The DNS server end to end: a daemon (declarative mode) in a namespace of the test's own,
//! its VPC interfaces wired to client namespaces, every answer read by `dig` (BIND's
//! client) run inside those namespaces, or by raw bytes for malformed queries.
//!
//! ```text
//!  ca (VPC A 10.10.0.0/16)   c0 ── fc0 [XDP]                    resolver 10.10.0.2
//!  cc (VPC C 10.10.0.0/16)   c0 ── fx0 [XDP]  privatelink       resolver 10.10.0.2
//!  cd (VPC D 10.20.0.0/16)   c0 ── fd0 [XDP]  daemon (fwd)      resolver 10.20.0.2
//!  cp (VPC B, provider)      p0 ── fp0 [XDP]
//!  op (on-premises)          o0 ── fo0 (no XDP) 10.50.0.1:53, the external listener
//! ```
//!
//! VPCs A and C overlap, hold the same resolver address, and have a client at the same
//! address (10.10.2.1); each has its own endpoint to one service with a verified custom
//! domain enabled. VPC D has a resolver and no endpoint.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use privatelink_tests::{
    dig::{Dig, parse_dig},
    lab::{bin, privatelink_bin, wait_for},
    netns::{self, Netns, unique_name},
};

const SUFFIX: &str = "pl.example";
const REGION: &str = "r1";
const APEX: &str = "r1.pl.example";
const EP_A: &str = "ep-a.epsrv-b.r1.pl.example";
const EP_C: &str = "ep-c.epsrv-b.r1.pl.example";
const EP_BIG: &str = "ep-big.epsrv-b.r1.pl.example";
const DOMAIN: &str = "web.provider-b.example";
const RESOLVER: &str = "10.10.0.2";
const RESOLVER_D: &str = "10.20.0.2";
const EXTERNAL: &str = "10.50.0.1";
/// VPC A's clients: zone-a, zone-b, zone-c (no ENI there); VPC C's (zone-a) has the
/// same address as VPC A's zone-a client.
const CLIENT_A: &str = "10.10.2.1";
const CLIENT_B: &str = "10.10.5.1";
const CLIENT_C: &str = "10.10.6.1";
const TTL: &str = "7";
/// The endpoint whose name's answer does not fit 512 bytes: one ENI in each of 35 zones.
const BIG_ZONES: usize = 35;

fn state(vpc_c_resolver: bool) -> String {
    let mut big_vswitches = String::new();
    let mut big_enis = Vec::new();
    for i in 0..BIG_ZONES {
        big_vswitches.push_str(&format!(
            "  {{ id = \"vsw-z{i}\", zone = \"z{i}\", cidr = \"10.10.{}.0/24\" }},\n",
            100 + i
        ));
        big_enis.push(format!(
            "{{ vswitch = \"vsw-z{i}\", eni = \"10.10.{}.10\" }}",
            100 + i
        ));
    }
    let resolver_c = if vpc_c_resolver {
        format!("resolver = \"{RESOLVER}\"")
    } else {
        String::new()
    };
    format!(
        r#"
[[accounts]]
id = "acct-a"
name = "consumer A"
[[accounts]]
id = "acct-b"
name = "provider B"

[[vpcs]]
id = "vpc-a"
account = "acct-a"
cidr = "10.10.0.0/16"
interface = "fc0"
resolver = "{RESOLVER}"
vswitches = [
  {{ id = "vsw-a1", zone = "zone-a", cidr = "10.10.1.0/24" }},
  {{ id = "vsw-a2", zone = "zone-a", cidr = "10.10.2.0/24" }},
  {{ id = "vsw-a4", zone = "zone-b", cidr = "10.10.4.0/24" }},
  {{ id = "vsw-a5", zone = "zone-b", cidr = "10.10.5.0/24" }},
  {{ id = "vsw-a6", zone = "zone-c", cidr = "10.10.6.0/24" }},
{big_vswitches}]

[[vpcs]]
id = "vpc-c"
account = "acct-a"
cidr = "10.10.0.0/16"
interface = "fx0"
{resolver_c}
vswitches = [
  {{ id = "vsw-c1", zone = "zone-a", cidr = "10.10.1.0/24" }},
  {{ id = "vsw-c2", zone = "zone-a", cidr = "10.10.2.0/24" }},
]

[[vpcs]]
id = "vpc-d"
account = "acct-a"
cidr = "10.20.0.0/16"
interface = "fd0"
resolver = "{RESOLVER_D}"
vswitches = [{{ id = "vsw-d1", zone = "zone-a", cidr = "10.20.1.0/24" }}]

[[vpcs]]
id = "vpc-b"
account = "acct-b"
cidr = "10.10.0.0/16"
interface = "fp0"
vswitches = [
  {{ id = "vsw-b0", zone = "zone-a", cidr = "10.10.0.0/24" }},
  {{ id = "vsw-b4", zone = "zone-b", cidr = "10.10.4.0/24" }},
]

[[services]]
id = "epsrv-b"
account = "acct-b"
type = "interface"
vpc = "vpc-b"
whitelist = ["acct-a"]
backends = [{{ zone = "zone-a", address = "10.10.0.10" }}, {{ zone = "zone-b", address = "10.10.4.10" }}]
snat = ["10.10.0.200"]
listeners = [{{ protocol = "tcp", port = 80 }}]
domain = "{DOMAIN}"
domain_verified = true

[[endpoints]]
id = "ep-a"
account = "acct-a"
vpc = "vpc-a"
service = "epsrv-b"
connection = "connected"
service_domain = true
zones = [{{ vswitch = "vsw-a1", eni = "10.10.1.100" }}, {{ vswitch = "vsw-a4", eni = "10.10.4.100" }}]

[[endpoints]]
id = "ep-c"
account = "acct-a"
vpc = "vpc-c"
service = "epsrv-b"
connection = "connected"
service_domain = true
zones = [{{ vswitch = "vsw-c1", eni = "10.10.1.50" }}]

[[endpoints]]
id = "ep-big"
account = "acct-a"
vpc = "vpc-a"
service = "epsrv-b"
connection = "connected"
zone_affinity = false
zones = [{}]
"#,
        big_enis.join(", ")
    )
}

/// The daemon, its namespaces and the pass-through programs on the clients' veth ends,
/// all removed on drop (even when the test fails).
struct DnsLab {
    dir: PathBuf,
    pin_dir: PathBuf,
    state_file: PathBuf,
    children: Vec<Child>,
    fwd: Netns,
    /// VPC A's, C's and D's clients, the provider, on-premises.
    ca: Netns,
    cc: Netns,
    cd: Netns,
    _cp: Netns,
    op: Netns,
}

impl Drop for DnsLab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.fwd, &self.ca, &self.cc, &self.cd, &self._cp, &self.op] {
            netns::remove(&ns.name);
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl DnsLab {
    fn up(prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        let dir = std::env::temp_dir().join(&name);
        let pin_dir = Path::new("/sys/fs/bpf").join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut lab = Self {
            state_file: dir.join("state.toml"),
            dir,
            pin_dir,
            children: Vec::new(),
            fwd: Netns::create(&format!("{name}f"))?,
            ca: Netns::create(&format!("{name}a"))?,
            cc: Netns::create(&format!("{name}c"))?,
            cd: Netns::create(&format!("{name}d"))?,
            _cp: Netns::create(&format!("{name}p"))?,
            op: Netns::create(&format!("{name}o"))?,
        };
        // (client namespace, its end, the forwarder's end, the client's addresses)
        let wires: [(&Netns, &str, &str, &[&str]); 5] = [
            (
                &lab.ca,
                "c0",
                "fc0",
                &["10.10.2.1/16", "10.10.5.1/16", "10.10.6.1/16"],
            ),
            (&lab.cc, "c0", "fx0", &["10.10.2.1/16"]),
            (&lab.cd, "c0", "fd0", &["10.20.1.1/16"]),
            (&lab._cp, "p0", "fp0", &["10.10.0.10/16"]),
            (&lab.op, "o0", "fo0", &["10.50.0.2/24"]),
        ];
        for (ns, end, fwd_end, addrs) in wires {
            lab.fwd.ip(&[
                "link", "add", fwd_end, "type", "veth", "peer", "name", end, "netns", &ns.name,
            ])?;
            lab.fwd.ip(&["link", "set", fwd_end, "up"])?;
            ns.ip(&["link", "set", end, "up"])?;
            for a in addrs {
                ns.ip(&["addr", "add", a, "dev", end])?;
            }
        }
        lab.fwd.ip(&["addr", "add", "10.50.0.1/24", "dev", "fo0"])?;
        // ARP answers leave the data path by XDP_TX into the veth: the far end needs an
        // XDP program for them to arrive (as in the lab).
        let xdp_pass = bin("pl-xdp-pass")?;
        for ns in [&lab.ca, &lab.cc, &lab.cd] {
            let c = spawn_logged(
                &lab.dir,
                &format!("xdp-pass-{}", ns.name),
                Command::new(&xdp_pass).args(["--netns", &ns.name, "c0"]),
            )?;
            lab.children.push(c);
        }
        std::fs::write(&lab.state_file, state(true))?;
        let ready = lab.dir.join("ready");
        let dns_listen = format!("{EXTERNAL}:53");
        let daemon = spawn_logged(
            &lab.dir,
            "privatelink",
            Command::new(privatelink_bin()?).args([
                "daemon",
                "--state",
                path(&lab.state_file),
                "--pin-dir",
                path(&lab.pin_dir),
                "--ready-file",
                path(&ready),
                "--netns",
                &lab.fwd.name,
                "--dns-suffix",
                SUFFIX,
                "--dns-region",
                REGION,
                "--dns-listen",
                &dns_listen,
                "--dns-ttl",
                TTL,
            ]),
        )?;
        lab.children.push(daemon);
        let start = Instant::now();
        while !ready.exists() {
            if let Some(status) = lab
                .children
                .last_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the daemon exited ({status}): {}", lab.log());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the daemon is not ready after 30 s: {}", lab.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(lab)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("privatelink.log")).unwrap_or_default()
    }

    /// Rewrites the state file and has the daemon read it (SIGHUP).
    fn reload(&mut self, state: &str) -> Result<()> {
        std::fs::write(&self.state_file, state)?;
        let pid = self.children.last().context("no daemon")?.id().to_string();
        netns::run(Command::new("kill").args(["-HUP", &pid]))?;
        Ok(())
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn spawn_logged(dir: &Path, name: &str, cmd: &mut Command) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// One `dig` answer, read from its output.
/// `dig` in `ns` at `server` from `src`, with `opts` (`+tcp`, `+noedns`, ...); no retry,
/// 2 s: an answer that does not come fails the test.
fn dig(ns: &Netns, server: &str, src: Option<&str>, name: &str, qtype: &str, opts: &[&str]) -> Dig {
    let mut args = vec![
        format!("@{server}"),
        "+norecurse".into(),
        "+time=2".into(),
        "+tries=1".into(),
    ];
    if let Some(s) = src {
        args.push("-b".into());
        args.push(s.into());
    }
    args.extend(opts.iter().map(|s| s.to_string()));
    args.extend(["-q".into(), name.into(), "-t".into(), qtype.into()]);
    let out = ns
        .command("dig")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("running dig (Debian: bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} in {} failed: {text}{}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dig(&text)
}

fn addrs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// An authoritative NOERROR answer with exactly these A records, TTL `TTL`, the name as
/// asked (lowercase), no recursion offered.
fn assert_a(d: &Dig, name: &str, want: &[&str]) {
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(d.has_flag("aa") && !d.has_flag("ra"), "{}", d.text);
    assert_eq!(d.addresses(), addrs(want), "{}", d.text);
    for r in &d.answer {
        assert_eq!(
            (r.0.as_str(), r.1.as_str()),
            (format!("{name}.").as_str(), TTL),
            "{}",
            d.text
        );
    }
}

#[test]
fn names_affinity_and_private_zones_per_vpc() {
    let lab = DnsLab::up("pldns").unwrap();
    let (ca, cc, cd, op) = (&lab.ca, &lab.cc, &lab.cd, &lab.op);
    // The endpoint name: the asking client's zone's ENI (affinity), every zone's from a
    // zone without an ENI.
    assert_a(
        &dig(ca, RESOLVER, Some(CLIENT_A), EP_A, "A", &[]),
        EP_A,
        &["10.10.1.100"],
    );
    assert_a(
        &dig(ca, RESOLVER, Some(CLIENT_B), EP_A, "A", &[]),
        EP_A,
        &["10.10.4.100"],
    );
    assert_a(
        &dig(ca, RESOLVER, Some(CLIENT_C), EP_A, "A", &[]),
        EP_A,
        &["10.10.1.100", "10.10.4.100"],
    );
    // Zone names: their ENI, whoever asks.
    for z in ["zone-a", "zone-b"] {
        let name = format!("{z}.{EP_A}");
        let want = if z == "zone-a" {
            "10.10.1.100"
        } else {
            "10.10.4.100"
        };
        for src in [CLIENT_A, CLIENT_B, CLIENT_C] {
            assert_a(
                &dig(ca, RESOLVER, Some(src), &name, "A", &[]),
                &name,
                &[want],
            );
        }
    }
    // Names are case-insensitive (the question is echoed as asked).
    let d = dig(ca, RESOLVER, Some(CLIENT_B), &EP_A.to_uppercase(), "A", &[]);
    assert_eq!(d.addresses(), addrs(&["10.10.4.100"]), "{}", d.text);
    // The same client address in two overlapping VPCs: each its own VPC's answer for the
    // custom domain (a private zone per VPC), over UDP and TCP.
    for opts in [&[][..], &["+tcp"][..]] {
        assert_a(
            &dig(ca, RESOLVER, Some(CLIENT_A), DOMAIN, "A", opts),
            DOMAIN,
            &["10.10.1.100"],
        );
        assert_a(
            &dig(cc, RESOLVER, Some(CLIENT_A), DOMAIN, "A", opts),
            DOMAIN,
            &["10.10.1.50"],
        );
    }
    // ... with affinity in its own VPC: zone-b's client gets zone-b's ENI.
    assert_a(
        &dig(ca, RESOLVER, Some(CLIENT_B), DOMAIN, "A", &[]),
        DOMAIN,
        &["10.10.4.100"],
    );
    // Global names resolve in every VPC (VPC C's client is in its VPC's zone-a).
    assert_a(
        &dig(cc, RESOLVER, Some(CLIENT_A), EP_A, "A", &[]),
        EP_A,
        &["10.10.1.100"],
    );
    assert_a(
        &dig(cd, RESOLVER_D, None, EP_C, "A", &[]),
        EP_C,
        &["10.10.1.50"],
    );
    // A VPC without an endpoint that enabled the domain: NXDOMAIN, the domain's SOA.
    let d = dig(cd, RESOLVER_D, None, DOMAIN, "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(d.has_flag("aa"), "{}", d.text);
    assert_eq!(d.authority.len(), 1, "{}", d.text);
    assert_eq!(
        (d.authority[0].0.as_str(), d.authority[0].2.as_str()),
        (format!("{DOMAIN}.").as_str(), "SOA")
    );
    // The external listener: every zone's ENIs (no client zone), no private zone, and
    // ns1 is its address.
    assert_a(
        &dig(op, EXTERNAL, None, EP_A, "A", &[]),
        EP_A,
        &["10.10.1.100", "10.10.4.100"],
    );
    assert_a(
        &dig(
            op,
            EXTERNAL,
            None,
            &format!("zone-b.{EP_A}"),
            "A",
            &["+tcp"],
        ),
        &format!("zone-b.{EP_A}"),
        &["10.10.4.100"],
    );
    assert_a(
        &dig(op, EXTERNAL, None, &format!("ns1.{APEX}"), "A", &[]),
        &format!("ns1.{APEX}"),
        &[EXTERNAL],
    );
    let d = dig(op, EXTERNAL, None, DOMAIN, "A", &[]);
    assert_eq!(d.status, "REFUSED", "{}", d.text);
    // The apex: SOA (mname ns1, rname hostmaster.<suffix>, minimum = TTL) and NS.
    let d = dig(op, EXTERNAL, None, APEX, "SOA", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    let soa: Vec<&str> = d.answer[0].3.split_whitespace().collect();
    assert_eq!(soa[0], format!("ns1.{APEX}."), "{}", d.text);
    assert_eq!(soa[1], format!("hostmaster.{SUFFIX}."), "{}", d.text);
    assert_eq!(soa[6], TTL, "{}", d.text);
    let d = dig(ca, RESOLVER, Some(CLIENT_A), APEX, "NS", &[]);
    assert_eq!(
        d.answer.iter().map(|r| r.3.as_str()).collect::<Vec<_>>(),
        vec![format!("ns1.{APEX}.")],
        "{}",
        d.text
    );
}

#[test]
fn protocol_edges() {
    let lab = DnsLab::up("pldnp").unwrap();
    let ca = &lab.ca;
    let q = |name: &str, qtype: &str, opts: &[&str]| {
        dig(ca, RESOLVER, Some(CLIENT_C), name, qtype, opts)
    };
    // NXDOMAIN in the zone, with its SOA; NODATA for a known name's AAAA; REFUSED, not
    // authoritative and no recursion, outside every zone.
    let d = q(&format!("nope.{APEX}"), "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(d.has_flag("aa") && d.answer.is_empty(), "{}", d.text);
    assert_eq!(d.authority[0].0, format!("{APEX}."), "{}", d.text);
    assert_eq!(d.authority[0].1, TTL, "negative TTL: {}", d.text);
    let d = q(EP_A, "AAAA", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(
        d.answer.is_empty() && d.authority[0].2 == "SOA",
        "{}",
        d.text
    );
    for name in ["example.com", "pl.example", "."] {
        let d = q(name, "A", &["+recurse"]);
        assert_eq!(d.status, "REFUSED", "{name}: {}", d.text);
        assert!(!d.has_flag("aa") && !d.has_flag("ra"), "{name}: {}", d.text);
    }
    // Not IN, not a query, no zone transfers.
    assert_eq!(q("version.bind", "TXT", &["-c", "CH"]).status, "REFUSED");
    assert_eq!(q(EP_A, "A", &["+opcode=status"]).status, "NOTIMP");
    let d = q(APEX, "AXFR", &[]);
    assert!(d.text.contains("Transfer failed"), "{}", d.text);
    // EDNS: an OPT in the answer, the payload capped at 1232; version 1 is BADVERS.
    let d = q(EP_A, "A", &["+edns=0", "+bufsize=4096"]);
    let edns = d
        .edns
        .as_deref()
        .unwrap_or_else(|| panic!("no OPT: {}", d.text));
    assert!(
        edns.contains("version: 0") && edns.contains("udp: 1232"),
        "{}",
        d.text
    );
    let d = q(EP_A, "A", &["+noedns"]);
    assert!(d.edns.is_none(), "{}", d.text);
    let d = q(EP_A, "A", &["+edns=1", "+noednsnegotiation"]);
    assert_eq!(d.status, "BADVERS", "{}", d.text);
    // Truncation: 35 addresses do not fit 512 bytes without EDNS (TC, as many as fit);
    // over TCP, or with EDNS's 1232, all of them.
    let d = q(EP_BIG, "A", &["+noedns", "+ignore"]);
    assert!(d.has_flag("tc"), "{}", d.text);
    assert!(d.answer.len() < BIG_ZONES, "{}", d.text);
    assert!(msg_size(&d) <= 512, "{}", d.text);
    assert!(
        !d.text.contains("extra bytes"),
        "nothing after the message: {}",
        d.text
    );
    // EDNS with a 512-byte payload: truncated too, the OPT kept.
    let d = q(EP_BIG, "A", &["+edns=0", "+bufsize=512", "+ignore"]);
    assert!(d.has_flag("tc") && d.edns.is_some(), "{}", d.text);
    assert!(
        msg_size(&d) <= 512 && !d.text.contains("extra bytes"),
        "{}",
        d.text
    );
    for opts in [&["+tcp", "+noedns"][..], &["+edns=0"][..]] {
        let d = q(EP_BIG, "A", opts);
        assert!(!d.has_flag("tc"), "{opts:?}: {}", d.text);
        assert_eq!(d.answer.len(), BIG_ZONES, "{opts:?}: {}", d.text);
    }
    // Without +ignore dig retries over TCP by itself and gets them all.
    assert_eq!(q(EP_BIG, "A", &["+noedns"]).answer.len(), BIG_ZONES);

    // Malformed queries by UDP from the client's namespace: answered FORMERR (with the
    // query's id) or dropped; the server answers the next query as before.
    let replies = std::thread::scope(|s| {
        s.spawn(|| malformed_exchanges(&ca.name))
            .join()
            .expect("the malformed-query thread")
    })
    .unwrap();
    let [short, bad_question, response, two_questions, garbage] = replies;
    assert_eq!(short, None, "a message shorter than a header is dropped");
    assert_eq!(
        bad_question,
        Some((0x1111, 1)),
        "a question cut short: FORMERR"
    );
    assert_eq!(response, None, "a response (QR set) is dropped");
    assert_eq!(two_questions, Some((0x3333, 1)), "two questions: FORMERR");
    assert!(matches!(garbage, None | Some((0x4444, 1))), "{garbage:?}");
    assert_a(&q(EP_A, "A", &[]), EP_A, &["10.10.1.100", "10.10.4.100"]);
}

/// `;; MSG SIZE  rcvd: N` of a dig answer.
fn msg_size(d: &Dig) -> usize {
    d.text
        .lines()
        .find_map(|l| l.strip_prefix(";; MSG SIZE  rcvd: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// Sends five malformed queries from `ns` (each on its own socket) and returns, for each,
/// the answer's (id, rcode) or none within a second.
fn malformed_exchanges(ns: &str) -> Result<[Option<(u16, u8)>; 5]> {
    netns::enter_thread(ns)?;
    let header = |id: u16, flags: u16, qd: u16| {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&qd.to_be_bytes());
        v.extend_from_slice(&[0; 6]);
        v
    };
    // "a.b." A IN
    let question: &[u8] = b"\x01a\x01b\x00\x00\x01\x00\x01";
    let mut bad_question = header(0x1111, 0x0100, 1);
    bad_question.extend_from_slice(b"\x05ab");
    let mut response = header(0x2222, 0x8100, 1);
    response.extend_from_slice(question);
    let mut two = header(0x3333, 0x0100, 2);
    two.extend_from_slice(question);
    two.extend_from_slice(question);
    let mut garbage = header(0x4444, 0x0100, 1);
    garbage.extend(std::iter::repeat_n(0xff, 40));
    let queries = [
        b"\x12\x34\x01".to_vec(),
        bad_question,
        response,
        two,
        garbage,
    ];
    let mut out = [None; 5];
    for (i, q) in queries.iter().enumerate() {
        let s = UdpSocket::bind(format!("{CLIENT_A}:0"))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send_to(q, format!("{RESOLVER}:53"))?;
        let mut buf = [0u8; 1500];
        out[i] = match s.recv(&mut buf) {
            Ok(n) if n >= 4 => Some((u16::from_be_bytes([buf[0], buf[1]]), buf[3] & 0x0f)),
            Ok(n) => bail!("a {n}-byte answer"),
            Err(_) => None,
        };
    }
    Ok(out)
}

#[test]
fn resolvers_follow_the_state() {
    let mut lab = DnsLab::up("pldnr").unwrap();
    let serial = |lab: &DnsLab| {
        let d = dig(&lab.op, EXTERNAL, None, APEX, "SOA", &[]);
        d.answer[0]
            .3
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let before = serial(&lab);
    let has_resolver = |lab: &DnsLab| {
        lab.fwd
            .ip(&["-4", "addr", "show", "dev", "fx0"])
            .unwrap()
            .contains(&format!("inet {RESOLVER}/32"))
    };
    assert!(has_resolver(&lab));
    // VPC C loses its resolver: the address leaves its interface, its queries go
    // unanswered (dropped), VPC A's resolver at the same address carries on.
    lab.reload(&state(false)).unwrap();
    wait_for(
        Duration::from_secs(10),
        "VPC C's resolver address removed",
        || !has_resolver(&lab),
    )
    .unwrap();
    let out = lab
        .cc
        .command("dig")
        .args([&format!("@{RESOLVER}"), "+time=1", "+tries=1", EP_A])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_a(
        &dig(&lab.ca, RESOLVER, Some(CLIENT_A), DOMAIN, "A", &[]),
        DOMAIN,
        &["10.10.1.100"],
    );
    // The answers did not change (VPC C's endpoint is still there): same serial.
    assert_eq!(serial(&lab), before);
    // It comes back; an endpoint's change moves the serial.
    let changed = state(true).replace("zone_affinity = false", "zone_affinity = true");
    lab.reload(&changed).unwrap();
    wait_for(Duration::from_secs(10), "VPC C's resolver back", || {
        has_resolver(&lab)
    })
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "VPC C's resolver answering",
        || {
            lab.cc
                .command("dig")
                .args([&format!("@{RESOLVER}"), "+time=1", "+tries=1", DOMAIN])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )
    .unwrap();
    assert_a(
        &dig(&lab.cc, RESOLVER, Some(CLIENT_A), DOMAIN, "A", &[]),
        DOMAIN,
        &["10.10.1.50"],
    );
    assert!(serial(&lab) > before, "the serial moves with the answers");
    // The operator's own addresses: never removed, never taken. Each reload is waited for
    // by its log line.
    let reloads = |lab: &DnsLab| lab.log().matches("reloaded").count();
    let reload = |lab: &mut DnsLab, state: &str| {
        let n = reloads(lab);
        lab.reload(state).unwrap();
        wait_for(Duration::from_secs(10), "the reload", || reloads(lab) > n).unwrap();
    };
    let holds = |lab: &DnsLab, dev: &str, addr: &str| {
        lab.fwd
            .ip(&["-4", "addr", "show", "dev", dev])
            .unwrap()
            .contains(&format!("inet {addr}/32"))
    };
    lab.fwd
        .ip(&["addr", "add", "10.20.0.9/32", "dev", "fd0"])
        .unwrap();
    // VPC D's resolver becomes that address: it is served there, and when the state
    // drops it the operator's address stays.
    let on_operators = state(true).replace(
        &format!("resolver = \"{RESOLVER_D}\""),
        "resolver = \"10.20.0.9\"",
    );
    assert_ne!(on_operators, state(true));
    reload(&mut lab, &on_operators);
    reload(&mut lab, &state(true));
    assert!(
        holds(&lab, "fd0", "10.20.0.9"),
        "the operator's address removed"
    );
    // VPC C's resolver asked on the address the operator holds on fd0: not added to fx0
    // (it would take it from fd0's users), and said.
    let taken = state(true).replace(
        &format!("interface = \"fx0\"\nresolver = \"{RESOLVER}\""),
        "interface = \"fx0\"\nresolver = \"10.20.0.9\"",
    );
    assert_ne!(taken, state(true));
    reload(&mut lab, &taken);
    // (The refusal is logged by the apply after the reload, or by the next tick's retry.)
    let refusal = "10.20.0.9 (DNS resolver) is already an address of interface";
    wait_for(Duration::from_secs(10), "the refusal logged", || {
        lab.log().contains(refusal)
    })
    .unwrap();
    assert!(
        !holds(&lab, "fx0", "10.20.0.9"),
        "another interface's address taken"
    );
    assert!(holds(&lab, "fd0", "10.20.0.9"));
    assert!(!lab.log().contains("panicked"), "{}", lab.log());
}

// ---------------------------------------------------------------------------------------
// Dual stack (issue 17): AAAA answers for dualstack endpoints, read by dig.
// ---------------------------------------------------------------------------------------

/// ep-a's ENIs' IPv6 addresses (zone-a, zone-b).
const EP_A_V6: [&str; 2] = ["fd00:a:0:1::100", "fd00:a:0:4::100"];

/// `state(true)` with VPCs A and B, the service and ep-a dual stack (ep-c stays ipv4).
fn dual_state() -> String {
    let mut s = state(true);
    let mut edit = |from: &str, to: &str| {
        assert!(s.contains(from), "{from}");
        s = s.replacen(from, to, 1);
    };
    edit(
        "cidr = \"10.10.0.0/16\"\ninterface = \"fc0\"",
        "cidr = \"10.10.0.0/16\"\nipv6_cidr = \"fd00:a::/56\"\ninterface = \"fc0\"",
    );
    edit(
        "cidr = \"10.10.1.0/24\" }",
        "cidr = \"10.10.1.0/24\", ipv6_cidr = \"fd00:a:0:1::/64\" }",
    );
    edit(
        "cidr = \"10.10.4.0/24\" }",
        "cidr = \"10.10.4.0/24\", ipv6_cidr = \"fd00:a:0:4::/64\" }",
    );
    edit(
        "cidr = \"10.10.0.0/16\"\ninterface = \"fp0\"",
        "cidr = \"10.10.0.0/16\"\nipv6_cidr = \"fd00:b::/56\"\ninterface = \"fp0\"",
    );
    edit(
        "address = \"10.10.0.10\" }, { zone",
        "address = \"10.10.0.10\", address6 = \"fd00:b::10\" }, { zone",
    );
    edit(
        "address = \"10.10.4.10\" }]",
        "address = \"10.10.4.10\", address6 = \"fd00:b::4:10\" }]\n\
         ip_version = \"dualstack\"\nsnat6 = [\"fd00:b::200\"]",
    );
    let ep_a = format!(
        "zones = [{{ vswitch = \"vsw-a1\", eni = \"10.10.1.100\", eni6 = \"{}\" }}, \
         {{ vswitch = \"vsw-a4\", eni = \"10.10.4.100\", eni6 = \"{}\" }}]\nip_version = \"dualstack\"",
        EP_A_V6[0], EP_A_V6[1]
    );
    let old = "zones = [{ vswitch = \"vsw-a1\", eni = \"10.10.1.100\" }, { vswitch = \"vsw-a4\", eni = \"10.10.4.100\" }]";
    assert!(s.contains(old));
    s = s.replacen(old, &ep_a, 1);
    s
}

/// The AAAA records' addresses of an answer, sorted.
fn aaaa_of(d: &Dig) -> Vec<String> {
    let mut v: Vec<String> = d
        .answer
        .iter()
        .filter(|r| r.2 == "AAAA")
        .map(|r| r.3.clone())
        .collect();
    v.sort();
    v
}

/// An authoritative NOERROR answer with exactly these AAAA records (TTL `TTL`) and no
/// other record.
fn assert_aaaa(d: &Dig, name: &str, want: &[&str]) {
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(d.has_flag("aa") && !d.has_flag("ra"), "{}", d.text);
    assert_eq!(aaaa_of(d), addrs(want), "{}", d.text);
    assert_eq!(d.answer.len(), want.len(), "{}", d.text);
    for r in &d.answer {
        assert_eq!(
            (r.0.as_str(), r.1.as_str()),
            (format!("{name}.").as_str(), TTL),
            "{}",
            d.text
        );
    }
}

#[test]
fn dualstack_endpoints_answer_aaaa_and_ipv4_ones_nodata() {
    let mut lab = DnsLab::up("pldn6").unwrap();
    let text = dual_state();
    // The state file is checked as the daemon will read it.
    let parsed = privatelink_user::model::parse_state(&text).unwrap();
    assert!(parsed.endpoint("ep-a").unwrap().ip_version.is_dualstack());
    lab.reload(&text).unwrap();
    let (ca, cc, op) = (&lab.ca, &lab.cc, &lab.op);
    wait_for(
        Duration::from_secs(10),
        "AAAA answers after the reload",
        || !aaaa_of(&dig(op, EXTERNAL, None, EP_A, "AAAA", &[])).is_empty(),
    )
    .unwrap();
    let [z_a, z_b] = EP_A_V6;
    // Zone affinity as for A: the client's zone's ENI, every zone's from a zone without.
    assert_aaaa(
        &dig(ca, RESOLVER, Some(CLIENT_A), EP_A, "AAAA", &[]),
        EP_A,
        &[z_a],
    );
    assert_aaaa(
        &dig(ca, RESOLVER, Some(CLIENT_B), EP_A, "AAAA", &[]),
        EP_A,
        &[z_b],
    );
    assert_aaaa(
        &dig(ca, RESOLVER, Some(CLIENT_C), EP_A, "AAAA", &["+tcp"]),
        EP_A,
        &[z_a, z_b],
    );
    // A stays as it was.
    assert_a(
        &dig(ca, RESOLVER, Some(CLIENT_A), EP_A, "A", &[]),
        EP_A,
        &["10.10.1.100"],
    );
    // Zone names: their ENI's, whoever asks.
    let zone_b = format!("zone-b.{EP_A}");
    assert_aaaa(
        &dig(ca, RESOLVER, Some(CLIENT_A), &zone_b, "AAAA", &[]),
        &zone_b,
        &[z_b],
    );
    // The custom domain in VPC A (with affinity); VPC C's endpoint is ipv4: NODATA there.
    assert_aaaa(
        &dig(ca, RESOLVER, Some(CLIENT_B), DOMAIN, "AAAA", &[]),
        DOMAIN,
        &[z_b],
    );
    for (ns, server, name) in [
        (cc, RESOLVER, DOMAIN),
        (cc, RESOLVER, EP_C),
        (op, EXTERNAL, EP_C),
    ] {
        let d = dig(ns, server, None, name, "AAAA", &[]);
        assert_eq!(d.status, "NOERROR", "{name}: {}", d.text);
        assert!(d.has_flag("aa"), "{}", d.text);
        assert!(d.answer.is_empty(), "{name}: {}", d.text);
        assert_eq!(d.authority.len(), 1, "{}", d.text);
        assert_eq!(d.authority[0].2, "SOA", "{}", d.text);
    }
    // The external listener: every zone's.
    assert_aaaa(
        &dig(op, EXTERNAL, None, EP_A, "AAAA", &[]),
        EP_A,
        &[z_a, z_b],
    );
    assert!(!lab.log().contains("panicked"), "{}", lab.log());
}
