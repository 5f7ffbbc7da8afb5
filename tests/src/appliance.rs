//! A test inspection appliance for Gateway Load Balancer endpoints, written from RFC 8926
//! (GENEVE) and the option layout AWS-style appliances expect — not from privatelink's own
//! encoder. It receives GENEVE on UDP 6081, checks the header and the three GWLB options,
//! optionally drops what a rule matches, and sends everything else back with the outer
//! addresses swapped and the options kept. It counts what it saw.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// The option class AWS Gateway Load Balancer uses.
pub const GWLB_OPTION_CLASS: u16 = 0x0108;
pub const OPT_ENDPOINT_ID: u8 = 1;
pub const OPT_ATTACHMENT_ID: u8 = 2;
pub const OPT_FLOW_COOKIE: u8 = 3;

/// A GENEVE packet as RFC 8926 §3.4 lays it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geneve<'a> {
    pub oam: bool,
    pub critical: bool,
    pub protocol: u16,
    pub vni: u32,
    pub endpoint_id: [u8; 8],
    pub attachment_id: [u8; 8],
    pub flow_cookie: [u8; 4],
    /// The encapsulated packet (bare IPv4/IPv6: no inner Ethernet).
    pub inner: &'a [u8],
}

/// Why a datagram is not a GENEVE packet this appliance accepts (the counter name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Short,
    Version,
    OptionLength,
    Protocol,
    MissingOption,
    UnknownCriticalOption,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Version => "version",
            Self::OptionLength => "option_length",
            Self::Protocol => "protocol",
            Self::MissingOption => "missing_option",
            Self::UnknownCriticalOption => "unknown_critical_option",
        }
    }
}

/// Parses a GENEVE datagram (the UDP payload).
pub fn parse(b: &[u8]) -> Result<Geneve<'_>, Malformed> {
    // 0: Ver(2) Opt Len(6); 1: O C Rsvd(6); 2-3: Protocol Type; 4-6: VNI; 7: Reserved.
    if b.len() < 8 {
        return Err(Malformed::Short);
    }
    if b[0] >> 6 != 0 {
        return Err(Malformed::Version);
    }
    let opt_len = (b[0] & 0x3f) as usize * 4;
    if b.len() < 8 + opt_len {
        return Err(Malformed::OptionLength);
    }
    let protocol = u16::from_be_bytes([b[2], b[3]]);
    if protocol != 0x0800 && protocol != 0x86dd {
        return Err(Malformed::Protocol);
    }
    let mut g = Geneve {
        oam: b[1] & 0x80 != 0,
        critical: b[1] & 0x40 != 0,
        protocol,
        vni: u32::from_be_bytes([0, b[4], b[5], b[6]]),
        endpoint_id: [0; 8],
        attachment_id: [0; 8],
        flow_cookie: [0; 4],
        inner: &b[8 + opt_len..],
    };
    // Options (§3.5): Class(16) Type(8, high bit = critical) R(3) Length(5, in 4-byte words).
    let mut seen = 0u8;
    let mut opts = &b[8..8 + opt_len];
    while !opts.is_empty() {
        if opts.len() < 4 {
            return Err(Malformed::OptionLength);
        }
        let class = u16::from_be_bytes([opts[0], opts[1]]);
        let kind = opts[2];
        let len = (opts[3] & 0x1f) as usize * 4;
        if opts.len() < 4 + len {
            return Err(Malformed::OptionLength);
        }
        let data = &opts[4..4 + len];
        match (class, kind & 0x7f, len) {
            (GWLB_OPTION_CLASS, OPT_ENDPOINT_ID, 8) => {
                g.endpoint_id.copy_from_slice(data);
                seen |= 1;
            }
            (GWLB_OPTION_CLASS, OPT_ATTACHMENT_ID, 8) => {
                g.attachment_id.copy_from_slice(data);
                seen |= 2;
            }
            (GWLB_OPTION_CLASS, OPT_FLOW_COOKIE, 4) => {
                g.flow_cookie.copy_from_slice(data);
                seen |= 4;
            }
            (GWLB_OPTION_CLASS, 1..=3, _) => return Err(Malformed::OptionLength),
            _ if kind & 0x80 != 0 => return Err(Malformed::UnknownCriticalOption),
            _ => {} // a non-critical option we do not know: skip it (§3.5.1)
        }
        opts = &opts[4 + len..];
    }
    if seen != 7 {
        return Err(Malformed::MissingOption);
    }
    Ok(g)
}

/// A drop rule: `PROTO[:PORT]` (tcp, udp, icmp; the port is the inner destination port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropRule {
    pub proto: u8,
    pub dport: Option<u16>,
}

impl std::str::FromStr for DropRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, port) = match s.split_once(':') {
            Some((p, port)) => (
                p,
                Some(
                    port.parse::<u16>()
                        .map_err(|e| format!("port in {s:?}: {e}"))?,
                ),
            ),
            None => (s, None),
        };
        let proto = match p {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            _ => return Err(format!("{p:?} is not tcp, udp or icmp")),
        };
        Ok(Self { proto, dport: port })
    }
}

impl DropRule {
    /// Whether the inner packet (IPv4, or IPv6 without extension headers) matches; `icmp`
    /// is ICMPv6 in IPv6.
    pub fn matches(&self, inner: &[u8]) -> bool {
        let (proto, l4) = match inner.first().map(|b| b >> 4) {
            Some(4) if inner.len() >= 20 => (inner[9], (inner[0] & 0x0f) as usize * 4),
            Some(6) if inner.len() >= 40 => match inner[6] {
                58 => (1, 40),
                p => (p, 40),
            },
            _ => return false,
        };
        if proto != self.proto {
            return false;
        }
        let Some(want) = self.dport else { return true };
        inner.len() >= l4 + 4 && u16::from_be_bytes([inner[l4 + 2], inner[l4 + 3]]) == want
    }
}

/// The inner packet's direction as the counters name it, "src>dst" (IPv4 or IPv6).
fn direction(inner: &[u8]) -> String {
    match inner.first().map(|b| b >> 4) {
        Some(4) if inner.len() >= 20 => {
            let a = |o: usize| {
                std::net::Ipv4Addr::new(inner[o], inner[o + 1], inner[o + 2], inner[o + 3])
            };
            format!("{}>{}", a(12), a(16))
        }
        Some(6) if inner.len() >= 40 => {
            let a = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&inner[o..o + 16]);
                std::net::Ipv6Addr::from(b)
            };
            format!("{}>{}", a(8), a(24))
        }
        _ => "other".to_string(),
    }
}

/// What the appliance saw.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub returned: u64,
    pub dropped_by_rule: u64,
    pub malformed: BTreeMap<&'static str, u64>,
    /// Per flow cookie (hex), packets per inner direction ("src>dst"): a flow and its
    /// reply share one cookie, so a symmetric path shows both directions under it.
    pub cookies: BTreeMap<String, BTreeMap<String, u64>>,
}

pub struct Options {
    pub listen: SocketAddr,
    /// The UDP port returned packets go to on the sender (6081 for GWLB).
    pub reply_port: u16,
    pub drop: Vec<DropRule>,
    pub stats_file: Option<PathBuf>,
    /// Where to answer health checks (any TCP connection gets `HTTP/1.0 200 OK`).
    pub health: Option<SocketAddr>,
}

/// Handles one datagram: the bytes to send back, if any.
pub fn handle<'a>(c: &mut Counters, rules: &[DropRule], d: &'a [u8]) -> Option<&'a [u8]> {
    c.received += 1;
    let g = match parse(d) {
        Ok(g) => g,
        Err(m) => {
            *c.malformed.entry(m.as_str()).or_default() += 1;
            return None;
        }
    };
    let cookie: String = g.flow_cookie.iter().map(|b| format!("{b:02x}")).collect();
    let dir = direction(g.inner);
    *c.cookies.entry(cookie).or_default().entry(dir).or_default() += 1;
    if rules.iter().any(|r| r.matches(g.inner)) {
        c.dropped_by_rule += 1;
        return None;
    }
    c.returned += 1;
    // Options kept, payload untouched: the same GENEVE bytes go back.
    Some(d)
}

/// Runs until the process is stopped.
pub fn run(o: &Options) -> Result<()> {
    let sock = UdpSocket::bind(o.listen).with_context(|| format!("binding {}", o.listen))?;
    if let Some(addr) = o.health {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        std::thread::spawn(move || serve_health(l));
    }
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut c = Counters::default();
    let mut buf = vec![0u8; 65536];
    let mut dirty = true;
    let mut written = Instant::now();
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(out) = handle(&mut c, &o.drop, &buf[..n]) {
                    let to = SocketAddr::new(from.ip(), o.reply_port);
                    sock.send_to(out, to)
                        .with_context(|| format!("returning to {to}"))?;
                }
                dirty = true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => bail!("receiving: {e}"),
        }
        if dirty && written.elapsed() > Duration::from_millis(100) {
            if let Some(f) = &o.stats_file {
                let tmp = f.with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec(&c)?)?;
                std::fs::rename(&tmp, f)?;
            }
            dirty = false;
            written = Instant::now();
        }
    }
}

/// Answers every connection with a 200: the appliance is up as long as it runs.
fn serve_health(l: std::net::TcpListener) {
    use std::io::{Read, Write};
    for mut c in l.incoming().flatten() {
        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 512];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GWLB GENEVE header around `inner`, laid out by hand from RFC 8926.
    fn packet(inner: &[u8]) -> Vec<u8> {
        let mut v = vec![0x08, 0x00, 0x08, 0x00, 0, 0, 0, 0];
        v.extend_from_slice(&[0x01, 0x08, 1, 2]);
        v.extend_from_slice(&[1; 8]);
        v.extend_from_slice(&[0x01, 0x08, 2, 2]);
        v.extend_from_slice(&[2; 8]);
        v.extend_from_slice(&[0x01, 0x08, 3, 1]);
        v.extend_from_slice(&[3; 4]);
        v.extend_from_slice(inner);
        v
    }

    #[test]
    fn parses_the_three_options() {
        let p = packet(&[0x45, 0, 0, 20]);
        let g = parse(&p).unwrap();
        assert_eq!(
            (g.endpoint_id, g.attachment_id, g.flow_cookie),
            ([1; 8], [2; 8], [3; 4])
        );
        assert_eq!(g.inner, &[0x45, 0, 0, 20]);
        assert_eq!(g.protocol, 0x0800);
    }

    #[test]
    fn refuses_what_is_wrong() {
        let good = packet(&[0x45]);
        assert_eq!(parse(&good[..7]), Err(Malformed::Short));
        let mut v = good.clone();
        v[0] |= 0x40;
        assert_eq!(parse(&v), Err(Malformed::Version));
        let mut v = good.clone();
        v[0] = 0x09; // options claim 36 bytes, more than the datagram has
        assert_eq!(parse(&v), Err(Malformed::OptionLength));
        let mut v = good.clone();
        v[0] = 0x06; // only the first two options (24 bytes)
        v.truncate(8 + 24);
        assert_eq!(parse(&v), Err(Malformed::MissingOption));
        let mut v = good.clone();
        v[2] = 0x65; // protocol 0x6558 (Ethernet) is not what GWLB sends
        v[3] = 0x58;
        assert_eq!(parse(&v), Err(Malformed::Protocol));
        let mut v = good;
        v[8 + 3] = 3; // endpoint id option claims 12 bytes
        assert!(parse(&v).is_err());
    }

    #[test]
    fn drop_rules_match_inner_protocol_and_port() {
        let mut tcp = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        tcp.extend_from_slice(&[0x30, 0x39, 0, 22, 0, 0, 0, 0]);
        let r: DropRule = "tcp:22".parse().unwrap();
        assert!(r.matches(&tcp));
        assert!(!"tcp:80".parse::<DropRule>().unwrap().matches(&tcp));
        assert!(!"udp".parse::<DropRule>().unwrap().matches(&tcp));
        let mut c = Counters::default();
        assert!(handle(&mut c, &[r], &packet(&tcp)).is_none());
        assert_eq!((c.received, c.dropped_by_rule, c.returned), (1, 1, 0));
        assert!("sctp:1".parse::<DropRule>().is_err());
    }

    #[test]
    fn ipv6_inner_packets_are_counted_by_direction_and_matched_by_rules() {
        let mut tcp6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        tcp6.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        tcp6.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        tcp6.extend_from_slice(&[0x30, 0x39, 0x1f, 0x91, 0, 0, 0, 0]);
        tcp6.extend_from_slice(&[0; 12]);
        let mut c = Counters::default();
        let p = packet(&tcp6);
        assert!(handle(&mut c, &[], &p).is_some());
        assert_eq!(c.cookies["03030303"]["fd00::1>fd00::2"], 1);
        let r: DropRule = "tcp:8081".parse().unwrap();
        assert!(r.matches(&tcp6));
        assert!(!"udp".parse::<DropRule>().unwrap().matches(&tcp6));
        assert!(handle(&mut c, &[r], &p).is_none());
        assert_eq!(c.dropped_by_rule, 1);
    }
}
