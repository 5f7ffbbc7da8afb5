//! The packet tests' lab made dual stack, and the IPv6 frames its tests build: shared by
//! the IPv6 golden-packet tests and the fuzzer. Frames are built with etherparse, or byte
//! by byte where it has no builder (extension headers, neighbour discovery options).

use std::net::Ipv6Addr;

use etherparse::PacketBuilder;
use privatelink_user::model::numeric_id;

use crate::{frames::CLIENT_MAC, lab::packet_state, testrun::Harness};

/// Extension header numbers (RFC 8200 4, the IANA registry of RFC 7045).
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_DEST: u8 = 60;
/// Neighbour discovery's message types (RFC 4861 4.3, 4.4).
pub const NS: u8 = 135;
pub const NA: u8 = 136;
/// The load balancer's MAC, as its advertisements carry it.
pub const LB6_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x16];
/// Options padding (PadN) for a 6-byte option area: a hop-by-hop or destination options
/// header of 8 bytes.
pub const PADN6: [u8; 6] = [1, 4, 0, 0, 0, 0];

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

/// Endpoint ep-a's ENI.
pub fn eni6() -> [u8; 16] {
    v6("fd00:a:0:1::100")
}
/// The consumer's client.
pub fn client6() -> [u8; 16] {
    v6("fd00:a:0:2::1")
}
/// Service epsrv-b's load balancer.
pub fn lb6() -> [u8; 16] {
    v6("fd00:b::10")
}
/// The service's IPv6 SNAT pool.
pub fn snat6_pool() -> [[u8; 16]; 2] {
    [v6("fd00:b::200"), v6("fd00:b::201")]
}

/// The packet tests' lab, dual stack: vpc-a fd00:a::/56 (vsw-a1 fd00:a:0:1::/64, vsw-a2
/// fd00:a:0:2::/64), vpc-b fd00:b::/56 (vsw-b0 fd00:b::/64); epsrv-b dualstack with its
/// load balancer at fd00:b::10 and SNAT addresses fd00:b::200 and ::201; ep-a dualstack,
/// its ENI at fd00:a:0:1::100.
pub fn dual_state() -> String {
    let s = packet_state();
    let edits = [
        (
            "interface = \"fc0\"",
            "ipv6_cidr = \"fd00:a::/56\"\ninterface = \"fc0\"",
        ),
        (
            "interface = \"fp0\"",
            "ipv6_cidr = \"fd00:b::/56\"\ninterface = \"fp0\"",
        ),
        (
            r#"cidr = "10.10.1.0/24" }"#,
            r#"cidr = "10.10.1.0/24", ipv6_cidr = "fd00:a:0:1::/64" }"#,
        ),
        (
            r#"cidr = "10.10.2.0/24" }"#,
            r#"cidr = "10.10.2.0/24", ipv6_cidr = "fd00:a:0:2::/64" }"#,
        ),
        (
            r#"cidr = "10.10.0.0/24" }"#,
            r#"cidr = "10.10.0.0/24", ipv6_cidr = "fd00:b::/64" }"#,
        ),
        (
            r#"address = "10.10.0.10" }"#,
            r#"address = "10.10.0.10", address6 = "fd00:b::10" }"#,
        ),
        (
            r#"snat = ["10.10.0.200", "10.10.0.201"]"#,
            "snat = [\"10.10.0.200\", \"10.10.0.201\"]\nip_version = \"dualstack\"\nsnat6 = [\"fd00:b::200\", \"fd00:b::201\"]",
        ),
        (
            "connection = \"connected\"",
            "ip_version = \"dualstack\"\nconnection = \"connected\"",
        ),
        (
            r#"eni = "10.10.1.100" }"#,
            r#"eni = "10.10.1.100", eni6 = "fd00:a:0:1::100" }"#,
        ),
    ];
    edits.iter().fold(s, |s, (from, to)| {
        assert_eq!(s.matches(from).count(), 1, "{from} once in the lab state");
        s.replace(from, to)
    })
}

/// The gateway endpoint ep-oss's IPv6 route target (`gateway_dual_state`).
pub fn gateway6() -> [u8; 16] {
    v6("fd00:a:0:1::1")
}
/// The gateway service's IPv6 prefix, fd00:64:10::/64: the address its endpoint's policy
/// allows (tcp/80), and one it does not.
pub fn oss6() -> [u8; 16] {
    v6("fd00:64:10::5")
}
pub fn oss6_denied() -> [u8; 16] {
    v6("fd00:64:10::6")
}
/// The gateway service's IPv6 SNAT address.
pub fn gateway_snat6() -> [u8; 16] {
    v6("fd00:b::202")
}

/// A dualstack gateway service epsrv-oss (prefixes 100.64.10.0/24 and fd00:64:10::/64,
/// next hop the zone's load balancer 10.10.0.10 / fd00:b::10, SNAT 10.10.0.202 and
/// fd00:b::202, listener tcp:80) and its dualstack endpoint ep-oss in vpc-a (route targets
/// 10.10.1.1 and fd00:a:0:1::1), `connection` as given; its policy allows tcp/80 to
/// 100.64.10.5 and to fd00:64:10::5 only.
pub fn gateway6_state(connection: &str) -> String {
    format!(
        r#"
[[services]]
id = "epsrv-oss"
account = "acct-b"
type = "gateway"
vpc = "vpc-b"
auto_accept = true
whitelist = ["acct-a"]
ip_version = "dualstack"
backends = [{{ zone = "zone-a", address = "10.10.0.10", address6 = "fd00:b::10" }}]
snat = ["10.10.0.202"]
snat6 = ["fd00:b::202"]
prefixes = ["100.64.10.0/24", "fd00:64:10::/64"]
listeners = [{{ protocol = "tcp", port = 80 }}]

[[endpoints]]
id = "ep-oss"
account = "acct-a"
vpc = "vpc-a"
service = "epsrv-oss"
connection = "{connection}"
ip_version = "dualstack"
gateway = "10.10.1.1"
gateway6 = "fd00:a:0:1::1"
policy = [
  {{ action = "accept", protocol = "tcp", cidr = "100.64.10.5/32", ports = [80, 80] }},
  {{ action = "accept", protocol = "tcp", cidr = "fd00:64:10::5/128", ports = [80, 80] }},
]
"#
    )
}

/// The dual-stack packet lab with the dualstack gateway endpoint of `gateway6_state`.
pub fn gateway_dual_state(connection: &str) -> String {
    format!("{}\n{}", dual_state(), gateway6_state(connection))
}

/// The load balancer's MAC learned from its advertisement, as the daemon's solicitation
/// gets it in the lab: until then a new flow has nowhere to go.
pub fn teach_lb(h: &mut Harness) {
    let f = na_frame(
        (LB6_MAC, lb6()),
        (h.provider.mac, snat6_pool()[0]),
        lb6(),
        LB6_MAC,
    );
    h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(h.dp.neighbor6(numeric_id("vpc-b"), lb6()), Some(LB6_MAC));
}

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1) and its MAC (RFC 2464).
pub fn solicited_node(a: [u8; 16]) -> ([u8; 16], [u8; 6]) {
    let mut m = v6("ff02::1:ff00:0");
    m[13..].copy_from_slice(&a[13..]);
    (m, [0x33, 0x33, m[12], m[13], m[14], m[15]])
}

/// A Neighbour Solicitation for `target` from `src` (multicast to its solicited-node
/// address unless `unicast`), with a source link-layer address option when `slla`.
pub fn ns_frame(
    (src_mac, src): ([u8; 6], [u8; 16]),
    to_mac: [u8; 6],
    target: [u8; 16],
    hop_limit: u8,
    slla: Option<[u8; 6]>,
    unicast: bool,
) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    let (dst, dst_mac) = if unicast {
        (target, to_mac)
    } else {
        (group, group_mac)
    };
    let mut body = target.to_vec();
    if let Some(mac) = slla {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&mac);
    }
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src, dst, hop_limit)
        .icmpv6_raw(NS, 0, [0; 4])
        .write(&mut v, &body)
        .unwrap();
    v
}

/// A Neighbour Advertisement for `target` (solicited, override) with a target link-layer
/// address option.
pub fn na_frame(
    (src_mac, src): ([u8; 6], [u8; 16]),
    (dst_mac, dst): ([u8; 6], [u8; 16]),
    target: [u8; 16],
    tlla: [u8; 6],
) -> Vec<u8> {
    let mut body = target.to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&tlla);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src, dst, 255)
        .icmpv6_raw(NA, 0, [0x60, 0, 0, 0])
        .write(&mut v, &body)
        .unwrap();
    v
}

/// An ICMPv6 echo request from the client's MAC to the consumer port.
pub fn echo6(h: &Harness, src: [u8; 16], dst: [u8; 16], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(src, dst, 64)
        .icmpv6_echo_request(id, seq)
        .write(&mut v, data)
        .unwrap();
    v
}

/// `frame` (IPv6 at offset 14) with an extension header of type `kind` and body `body`
/// (its length a multiple of 8 less 2) inserted right after the fixed IPv6 header. The
/// ICMPv6 and TCP/UDP checksums do not cover extension headers: they stay valid.
pub fn with_ext(frame: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    assert_eq!((body.len() + 2) % 8, 0);
    let mut v = frame[..54].to_vec();
    v.extend_from_slice(&[frame[20], ((body.len() + 2) / 8 - 1) as u8]);
    v.extend_from_slice(body);
    v.extend_from_slice(&frame[54..]);
    v[20] = kind;
    let payload = u16::from_be_bytes([frame[18], frame[19]]) as usize + body.len() + 2;
    v[18..20].copy_from_slice(&(payload as u16).to_be_bytes());
    v
}
