//! IPv6 golden-packet tests: frames built with etherparse (or byte by byte where etherparse
//! has no builder: extension headers, neighbour discovery options) go through the loaded
//! XDP program (BPF_PROG_TEST_RUN), and what comes out is parsed by etherparse again;
//! every ICMPv6 checksum is checked twice, by etherparse and by a pseudo-header sum of this
//! file's own (never the data path's `csum`). The state is the packet tests' lab made dual
//! stack through the model (`dual_state`).
//!
//! What is built today: neighbour discovery, ICMPv6 echo to an ENI, the extension header
//! policy, host isolation. IPv6 NAT (`privatelink_forward6`) is not: TCP and UDP to an ENI
//! are dropped and counted, and the tests that say so change when it lands.

use std::net::Ipv6Addr;

use etherparse::{
    IcmpEchoHeader, Icmpv6Type, Ipv6Header, LinkSlice, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use privatelink_common::Reason;
use privatelink_tests::{frames::CLIENT_MAC, lab::packet_state, testrun::Harness};
use privatelink_user::model::numeric_id;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NS: u8 = 135;
const NA: u8 = 136;
/// The load balancer's MAC, as its advertisements carry it.
const LB6_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x16];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

fn eni6() -> [u8; 16] {
    v6("fd00:a:0:1::100")
}
fn client6() -> [u8; 16] {
    v6("fd00:a:0:2::1")
}
fn lb6() -> [u8; 16] {
    v6("fd00:b::10")
}
fn snat6() -> [u8; 16] {
    v6("fd00:b::200")
}

/// The packet tests' lab, dual stack: vpc-a fd00:a::/56 (vsw-a1 fd00:a:0:1::/64, vsw-a2
/// fd00:a:0:2::/64), vpc-b fd00:b::/56 (vsw-b0 fd00:b::/64); epsrv-b dualstack with its
/// load balancer at fd00:b::10 and SNAT addresses fd00:b::200 and ::201; ep-a dualstack,
/// its ENI at fd00:a:0:1::100.
fn dual_state() -> String {
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

fn harness() -> Harness {
    Harness::new(&dual_state()).expect("harness")
}

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1) and its MAC (RFC 2464).
fn solicited_node(a: [u8; 16]) -> ([u8; 16], [u8; 6]) {
    let mut m = v6("ff02::1:ff00:0");
    m[13..].copy_from_slice(&a[13..]);
    (m, [0x33, 0x33, m[12], m[13], m[14], m[15]])
}

/// A Neighbour Solicitation for `target` from `src` (multicast to its solicited-node
/// address unless `unicast`), with a source link-layer address option when `slla`.
fn ns_frame(
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

/// A Neighbour Advertisement for `target` with a target link-layer address option.
fn na_frame(
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

fn echo6(h: &Harness, src: [u8; 16], dst: [u8; 16], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(src, dst, 64)
        .icmpv6_echo_request(id, seq)
        .write(&mut v, data)
        .unwrap();
    v
}

fn tcp6_to_eni(h: &Harness, sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .tcp(sport, 80, 1000, 64240)
        .syn()
        .write(&mut v, payload)
        .unwrap();
    v
}

/// `frame` with an extension header of type `kind` and body `body` (its length a
/// multiple of 8 less 2) inserted right after the fixed IPv6 header. The ICMPv6 and
/// TCP/UDP checksums do not cover extension headers: they stay valid.
fn with_ext(frame: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
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

/// Options padding (PadN) for a 6-byte option area: a hop-by-hop or destination options
/// header of 8 bytes.
const PADN6: [u8; 6] = [1, 4, 0, 0, 0, 0];

/// The ones' complement sum over the pseudo-header (RFC 8200 8.1) and the ICMPv6 message:
/// 0xffff when the message's checksum is right. Written here, not taken from the product.
fn pseudo_sum_ok(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> bool {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&dst);
    bytes.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 58]);
    bytes.extend_from_slice(msg);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// An ICMPv6 frame the data path sent, decoded: MACs, the IPv6 header, the ICMPv6
/// message; both checksum checks done.
struct Out6 {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip: Ipv6Header,
    icmp_type: Icmpv6Type,
    /// The message from its type byte on.
    msg: Vec<u8>,
    payload: Vec<u8>,
}

fn parse_icmp6(frame: &[u8]) -> Out6 {
    let p = SlicedPacket::from_ethernet(frame).expect("output parses");
    let Some(LinkSlice::Ethernet2(eth)) = p.link else {
        panic!("not Ethernet II: {:?}", p.link)
    };
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not IPv6: {:?}", p.net)
    };
    let ip = ip.header().to_header();
    let Some(TransportSlice::Icmpv6(i)) = p.transport else {
        panic!("not ICMPv6: {:?}", p.transport)
    };
    assert!(
        i.is_checksum_valid(ip.source, ip.destination),
        "ICMPv6 checksum (etherparse)"
    );
    assert!(
        pseudo_sum_ok(ip.source, ip.destination, i.slice()),
        "ICMPv6 checksum (pseudo-header sum)"
    );
    assert_eq!(
        ip.payload_length as usize,
        i.slice().len(),
        "payload length is the message's"
    );
    Out6 {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        ip,
        icmp_type: i.icmp_type(),
        msg: i.slice().to_vec(),
        payload: i.payload().to_vec(),
    }
}

/// Checks `out` is our advertisement for `target` (from the interface `mac`): to `to`
/// (`to_mac`), with `flags`, the target link-layer address option holding `mac`.
fn assert_na(out: &[u8], mac: [u8; 6], target: [u8; 16], to: ([u8; 6], [u8; 16]), flags: u8) {
    assert_eq!(out.len(), 14 + 40 + 32, "an NA with one option, no padding");
    let o = parse_icmp6(out);
    assert_eq!((o.eth_src, o.eth_dst), (mac, to.0), "MACs");
    assert_eq!((o.ip.source, o.ip.destination), (target, to.1), "addresses");
    assert_eq!(o.ip.hop_limit, 255, "RFC 4861 7.1.2: hop limit 255");
    assert_eq!(o.ip.next_header.0, 58);
    assert_eq!((o.msg[0], o.msg[1]), (NA, 0), "type, code");
    assert_eq!(o.msg[4], flags, "flags (router, solicited, override)");
    assert_eq!(&o.msg[5..8], &[0, 0, 0], "reserved");
    assert_eq!(&o.msg[8..24], &target, "target");
    assert_eq!(&o.msg[24..26], &[2, 1], "target link-layer address option");
    assert_eq!(&o.msg[26..32], &mac);
}

/// The counters' drops summed (for "every frame a counted drop").
fn drops(h: &Harness) -> u64 {
    h.stats()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn the_dual_stack_state_fills_the_ipv6_maps() {
    // What every other test here stands on: the ENI's IPv6 address is the data path's.
    let mut h = harness();
    let (act, _) = h
        .run(h.consumer.ifindex, &echo6(&h, client6(), eni6(), 1, 1, b""))
        .unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
}

#[test]
fn ns_for_the_eni6_is_answered_with_an_na() {
    let mut h = harness();
    let mac = h.consumer.mac;
    let f = ns_frame(
        (CLIENT_MAC, client6()),
        mac,
        eni6(),
        255,
        Some(CLIENT_MAC),
        false,
    );
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_na(&out, mac, eni6(), (CLIENT_MAC, client6()), 0x60);
    assert_eq!(h.count(Reason::NdAdvert), 1);
}

#[test]
fn unicast_ns_without_an_option_grows_into_an_na() {
    // Neighbour unreachability detection: unicast, no source link-layer option (RFC 4861
    // 7.2.2 allows it); the answer is longer than the question.
    let mut h = harness();
    let mac = h.consumer.mac;
    let f = ns_frame((CLIENT_MAC, client6()), mac, eni6(), 255, None, true);
    assert_eq!(f.len(), 14 + 40 + 24);
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_na(&out, mac, eni6(), (CLIENT_MAC, client6()), 0x60);
}

#[test]
fn ns_for_a_snat6_address_is_answered_in_the_provider_vpc() {
    let mut h = harness();
    let mac = h.provider.mac;
    let sender = v6("fd00:b::77");
    let sender_mac = [0x02, 0xbb, 0, 0, 0, 0x77];
    let f = ns_frame(
        (sender_mac, sender),
        mac,
        snat6(),
        255,
        Some(sender_mac),
        false,
    );
    let (act, out) = h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_na(&out, mac, snat6(), (sender_mac, sender), 0x60);
    // The second SNAT address too.
    let second = v6("fd00:b::201");
    let f = ns_frame(
        (sender_mac, sender),
        mac,
        second,
        255,
        Some(sender_mac),
        false,
    );
    let (act, out) = h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX);
    assert_na(&out, mac, second, (sender_mac, sender), 0x60);
    // A SNAT address is the provider VPC's: asked in the consumer VPC, it is not ours.
    let f = ns_frame(
        (CLIENT_MAC, client6()),
        h.consumer.mac,
        snat6(),
        255,
        Some(CLIENT_MAC),
        false,
    );
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropHostIsolated), 1);
    assert_eq!(h.count(Reason::NdAdvert), 2);
}

#[test]
fn ns_with_a_hop_limit_below_255_is_dropped() {
    // RFC 4861 7.1.1: a solicitation that crossed a router is not valid.
    let mut h = harness();
    for hop in [64, 254, 1] {
        let f = ns_frame(
            (CLIENT_MAC, client6()),
            h.consumer.mac,
            eni6(),
            hop,
            Some(CLIENT_MAC),
            false,
        );
        assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP, "{hop}");
    }
    assert_eq!(h.count(Reason::DropBadNd), 3);
    assert_eq!(h.count(Reason::NdAdvert), 0);
}

#[test]
fn invalid_ns_is_dropped() {
    let mut h = harness();
    let good = ns_frame(
        (CLIENT_MAC, client6()),
        h.consumer.mac,
        eni6(),
        255,
        Some(CLIENT_MAC),
        false,
    );
    let mut bad_sum = good.clone();
    bad_sum[54 + 2] ^= 0x01;
    let mut bad_code = good.clone();
    bad_code[54 + 1] = 1;
    bad_code[54 + 2] = bad_code[54 + 2].wrapping_sub(1); // the sum still right
    let mut zero_option = good.clone();
    zero_option[54 + 24 + 1] = 0; // option length 0 (RFC 4861 7.1.1)
    zero_option[54 + 2] = zero_option[54 + 2].wrapping_add(1);
    let multicast_target = ns_frame(
        (CLIENT_MAC, client6()),
        h.consumer.mac,
        v6("ff02::1"),
        255,
        Some(CLIENT_MAC),
        false,
    );
    for (what, f) in [
        ("checksum", bad_sum),
        ("code", bad_code),
        ("option length 0", zero_option),
        ("multicast target", multicast_target),
    ] {
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "{what}");
    }
    assert_eq!(h.count(Reason::DropBadNd), 4, "{:?}", h.active_stats());
    assert_eq!(h.count(Reason::NdAdvert), 0);
}

#[test]
fn ns_for_an_unknown_address_is_not_answered() {
    let mut h = harness();
    let f = ns_frame(
        (CLIENT_MAC, client6()),
        h.consumer.mac,
        v6("fd00:a:0:1::101"),
        255,
        Some(CLIENT_MAC),
        false,
    );
    let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_DROP, "the host is isolated from the VPC");
    assert_eq!(h.count(Reason::DropHostIsolated), 1);
    assert_eq!(h.count(Reason::NdAdvert), 0);
}

#[test]
fn dad_ns_is_answered_at_all_nodes() {
    // RFC 4862 5.4.3 / RFC 4861 7.2.4: a probe from :: is answered to ff02::1, not
    // solicited, override set, so that the prober gives the address up.
    let mut h = harness();
    let mac = h.consumer.mac;
    let prober = [0x02, 0xc1, 0, 0, 0, 0x99];
    let f = ns_frame((prober, [0; 16]), mac, eni6(), 255, None, false);
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_na(
        &out,
        mac,
        eni6(),
        ([0x33, 0x33, 0, 0, 0, 1], v6("ff02::1")),
        0x20,
    );
    // A probe with a source link-layer option is invalid (RFC 4861 7.1.1).
    let f = ns_frame((prober, [0; 16]), mac, eni6(), 255, Some(prober), false);
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropBadNd), 1);
}

#[test]
fn na_from_a_registered_next_hop_teaches_its_mac() {
    let mut h = harness();
    let vpc_b = numeric_id("vpc-b");
    assert_eq!(
        h.dp.neighbor6(vpc_b, lb6()),
        None,
        "registered, not learned"
    );
    // The load balancer answers the daemon's solicitation (sent from a SNAT address).
    let f = na_frame((LB6_MAC, lb6()), (h.provider.mac, snat6()), lb6(), LB6_MAC);
    let (act, _) = h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(act, XDP_DROP, "consumed: the host's stack did not ask");
    assert_eq!(h.count(Reason::NdLearned), 1);
    assert_eq!(h.dp.neighbor6(vpc_b, lb6()), Some(LB6_MAC));
    // A new MAC replaces it (override).
    let moved = [0x02, 0x1b, 0, 0, 0, 0x17];
    let f = na_frame((moved, lb6()), (h.provider.mac, snat6()), lb6(), moved);
    h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(h.dp.neighbor6(vpc_b, lb6()), Some(moved));
    // A multicast link-layer address teaches nothing.
    let f = na_frame(
        (moved, lb6()),
        (h.provider.mac, snat6()),
        lb6(),
        [0x33, 0x33, 0, 0, 0, 1],
    );
    h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(h.dp.neighbor6(vpc_b, lb6()), Some(moved));
}

#[test]
fn na_from_an_unregistered_sender_teaches_nothing() {
    let mut h = harness();
    let vpc_b = numeric_id("vpc-b");
    let stranger = v6("fd00:b::99");
    let f = na_frame(
        (LB6_MAC, stranger),
        (h.provider.mac, snat6()),
        stranger,
        LB6_MAC,
    );
    let (act, _) = h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropHostIsolated), 1);
    assert_eq!(h.count(Reason::NdLearned), 0);
    assert_eq!(h.dp.neighbor6(vpc_b, stranger), None);
    // Nor does the load balancer's address advertised in the consumer VPC.
    let f = na_frame(
        (LB6_MAC, lb6()),
        (h.consumer.mac, client6()),
        lb6(),
        LB6_MAC,
    );
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    assert_eq!(h.dp.neighbor6(vpc_b, lb6()), None);
    assert_eq!(h.dp.neighbor6(numeric_id("vpc-a"), lb6()), None);
}

#[test]
fn ns_from_a_registered_next_hop_teaches_its_mac_and_is_answered() {
    let mut h = harness();
    let mac = h.provider.mac;
    let f = ns_frame((LB6_MAC, lb6()), mac, snat6(), 255, Some(LB6_MAC), false);
    let (act, out) = h.run(h.provider.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_na(&out, mac, snat6(), (LB6_MAC, lb6()), 0x60);
    assert_eq!(h.dp.neighbor6(numeric_id("vpc-b"), lb6()), Some(LB6_MAC));
}

#[test]
fn echo_to_the_eni6_is_answered() {
    let mut h = harness();
    let f = echo6(&h, client6(), eni6(), 0x1234, 7, b"ping6 payload");
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_eq!(out.len(), f.len());
    let o = parse_icmp6(&out);
    assert_eq!((o.eth_src, o.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((o.ip.source, o.ip.destination), (eni6(), client6()));
    assert_eq!(
        o.icmp_type,
        Icmpv6Type::EchoReply(IcmpEchoHeader { id: 0x1234, seq: 7 })
    );
    assert_eq!(o.payload, b"ping6 payload");
    assert_eq!(o.ip.hop_limit, 64);
    assert_eq!(h.count(Reason::Icmp6EchoReply), 1);
    // An odd-length payload: the checksum's last word is padded.
    let f = echo6(&h, client6(), eni6(), 9, 65535, b"odd");
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX);
    let o = parse_icmp6(&out);
    assert_eq!(
        o.icmp_type,
        Icmpv6Type::EchoReply(IcmpEchoHeader { id: 9, seq: 65535 })
    );
    assert_eq!(o.payload, b"odd");
}

#[test]
fn echo_to_an_eni6_of_an_endpoint_not_connected_is_dropped() {
    // As IPv4 (`packets::endpoint_not_connected_is_dropped_and_counted`): the endpoint
    // does not forward, so its ENI does not answer either.
    for state in ["pending", "rejected", "disconnected"] {
        let mut h = Harness::new(&dual_state().replace(
            "connection = \"connected\"",
            &format!("connection = \"{state}\""),
        ))
        .unwrap();
        let f = echo6(&h, client6(), eni6(), 1, 1, b"x");
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "{state}");
        assert_eq!(
            h.count(Reason::DropNotConnected),
            1,
            "{state}: {:?}",
            h.active_stats()
        );
        assert_eq!(h.count(Reason::Icmp6EchoReply), 0, "{state}");
    }
}

#[test]
fn echo_from_a_bad_source_is_not_answered() {
    // A reply to a multicast, unspecified or loopback source would go to everyone or
    // nowhere. A link-local source is answered: the reply stays on the link.
    let mut h = harness();
    for src in ["ff02::1", "::", "::1"] {
        let f = echo6(&h, v6(src), eni6(), 1, 1, b"x");
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "{src}");
    }
    assert_eq!(h.count(Reason::Icmp6EchoReply), 0);
    let f = echo6(&h, v6("fe80::c1"), eni6(), 1, 1, b"x");
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_TX);
    assert_eq!(
        h.count(Reason::DropBadIpv6Source),
        3,
        "{:?}",
        h.active_stats()
    );
}

#[test]
fn tcp_syn_to_the_eni6_is_dropped_and_counted() {
    // IPv6 NAT (`privatelink_forward6`) is not built: its stub drops what reaches it as
    // unsupported. When forward6 lands this becomes a SYN full-NATed to fd00:b::10.
    let mut h = harness();
    let (act, _) = h
        .run(h.consumer.ifindex, &tcp6_to_eni(&h, 40000, b""))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(
        h.count(Reason::DropUnsupportedProtocol),
        1,
        "{:?}",
        h.active_stats()
    );
    // Counted for the endpoint too: its EP_DROP counters are the operator's view.
}

#[test]
fn hop_by_hop_and_destination_options_are_skipped() {
    let mut h = harness();
    let base = echo6(&h, client6(), eni6(), 0x42, 1, b"ext");
    let hbh = with_ext(&base, NEXTHDR_HOP, &PADN6);
    let (act, out) = h.run(h.consumer.ifindex, &hbh).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    // The reply is the request's message, without the request's extension headers
    // (RFC 4443 4.2): the frame is the plain echo's length, ICMPv6 right after IPv6.
    assert_eq!(out.len(), base.len(), "extension headers not reflected");
    let o = parse_icmp6(&out);
    assert_eq!(o.ip.next_header.0, 58);
    assert_eq!(
        o.icmp_type,
        Icmpv6Type::EchoReply(IcmpEchoHeader { id: 0x42, seq: 1 })
    );
    assert_eq!((o.ip.source, o.ip.destination), (eni6(), client6()));
    assert_eq!((o.eth_src, o.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!(o.payload, b"ext");
    // Hop-by-hop, a routing header of type 4 (segment routing: not refused) and a
    // destination options header of 16 bytes: four headers, the most skipped.
    let mut four = with_ext(
        &base,
        NEXTHDR_DEST,
        &[PADN6.as_slice(), &[1, 6, 0, 0, 0, 0, 0, 0]].concat(),
    );
    four = with_ext(&four, NEXTHDR_DEST, &PADN6);
    four = with_ext(&four, NEXTHDR_ROUTING, &[4, 0, 0, 0, 0, 0]);
    four = with_ext(&four, NEXTHDR_HOP, &PADN6);
    let (act, out) = h.run(h.consumer.ifindex, &four).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_eq!(out.len(), base.len(), "extension headers not reflected");
    let o = parse_icmp6(&out);
    assert_eq!(o.ip.next_header.0, 58);
    assert_eq!((o.ip.source, o.ip.destination), (eni6(), client6()));
    assert_eq!(o.payload, b"ext");
    assert_eq!(h.count(Reason::Icmp6EchoReply), 2);
}

#[test]
fn refused_extension_headers_are_dropped_and_counted() {
    let mut h = harness();
    let base = echo6(&h, client6(), eni6(), 0x42, 1, b"ext");
    let dest = with_ext(&base, NEXTHDR_DEST, &PADN6);
    let five = (0..4).fold(dest.clone(), |f, _| with_ext(&f, NEXTHDR_DEST, &PADN6));
    let cases = [
        (
            "routing type 0",
            with_ext(&base, NEXTHDR_ROUTING, &[0, 0, 0, 0, 0, 0]),
        ),
        (
            "hop-by-hop not first",
            with_ext(&with_ext(&base, NEXTHDR_HOP, &PADN6), NEXTHDR_DEST, &PADN6),
        ),
        ("five headers", five),
        ("AH", with_ext(&base, NEXTHDR_AUTH, &[0; 14])),
        ("experimental 253", with_ext(&base, 253, &PADN6)),
        ("mobility", with_ext(&base, 135, &PADN6)),
    ];
    let n = cases.len() as u64;
    for (what, f) in cases {
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "{what}");
    }
    assert_eq!(
        h.count(Reason::DropIpv6ExtHeader),
        n,
        "{:?}",
        h.active_stats()
    );
    assert_eq!(h.count(Reason::Icmp6EchoReply), 0);
    // An upper-layer protocol nobody handles (not an extension header): unsupported.
    let mut other = base.clone();
    other[20] = 99;
    assert_eq!(h.run(h.consumer.ifindex, &other).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropUnsupportedProtocol), 1);
}

#[test]
fn a_fragment_header_is_dropped_as_a_fragment() {
    let mut h = harness();
    let base = echo6(&h, client6(), eni6(), 0x42, 1, b"frag");
    // First fragment (offset 0, more fragments), a later one, and an atomic fragment.
    for frag in [[0, 1], [0, 0x19], [0, 0]] {
        let body = [frag[0], frag[1], 0, 0, 0x12, 0x34];
        let f = with_ext(&base, NEXTHDR_FRAGMENT, &body);
        assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    }
    // Behind a hop-by-hop header too.
    let f = with_ext(
        &with_ext(&base, NEXTHDR_FRAGMENT, &[0, 1, 0, 0, 0, 1]),
        NEXTHDR_HOP,
        &PADN6,
    );
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropFragment), 4, "{:?}", h.active_stats());
}

/// Every prefix of `full` sent on `ifindex`: refused by the kernel below 14 bytes, else
/// dropped and counted, never passed.
fn every_truncation_is_a_counted_drop(h: &mut Harness, ifindex: u32, full: &[u8]) {
    for len in 0..14 {
        assert!(
            h.run(ifindex, &full[..len]).is_err(),
            "kernel refuses {len} bytes"
        );
    }
    let before = drops(h);
    for len in 14..full.len() {
        let (act, _) = h.run(ifindex, &full[..len]).unwrap();
        assert_eq!(act, XDP_DROP, "truncated to {len} bytes");
    }
    assert_eq!(
        drops(h) - before,
        (full.len() - 14) as u64,
        "{:?}",
        h.active_stats()
    );
}

#[test]
fn every_truncation_of_an_ipv6_tcp_frame_is_dropped_and_counted() {
    let mut h = harness();
    let full = tcp6_to_eni(&h, 40800, b"0123456789");
    let ifindex = h.consumer.ifindex;
    every_truncation_is_a_counted_drop(&mut h, ifindex, &full);
    assert!(h.count(Reason::DropTruncatedIpv6) > 0);
    assert_eq!(h.count(Reason::DropTruncatedIpv6), (full.len() - 14) as u64);
    // Ethernet padding after the packet is fine (and reaches the NAT stub).
    let mut padded = tcp6_to_eni(&h, 40801, b"");
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(h.run(h.consumer.ifindex, &padded).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropUnsupportedProtocol), 1);
}

#[test]
fn every_truncation_of_an_ns_frame_is_dropped_and_counted() {
    let mut h = harness();
    let full = ns_frame(
        (CLIENT_MAC, client6()),
        h.consumer.mac,
        eni6(),
        255,
        Some(CLIENT_MAC),
        false,
    );
    let ifindex = h.consumer.ifindex;
    every_truncation_is_a_counted_drop(&mut h, ifindex, &full);
    assert_eq!(h.count(Reason::NdAdvert), 0);
    // A payload length shorter than the frame, cutting the option: not a valid NS.
    let mut short = full.clone();
    short[18..20].copy_from_slice(&28u16.to_be_bytes());
    assert_eq!(h.run(h.consumer.ifindex, &short).unwrap().0, XDP_DROP);
    // A payload length of 0 (a jumbogram's, which needs a hop-by-hop option we do not take).
    let mut jumbo = full.clone();
    jumbo[18..20].copy_from_slice(&[0, 0]);
    assert_eq!(h.run(h.consumer.ifindex, &jumbo).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropBadIpv6Header), 1);
    assert_eq!(h.count(Reason::NdAdvert), 0);
}

/// A deterministic generator (xorshift64), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn ipv6_garbage_is_dropped_never_passed_or_forwarded() {
    let mut h = harness();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let n = 3000u64;
    for i in 0..n {
        let len = 14 + (rng.next() % 200) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        v[12..14].copy_from_slice(&ETH_P_IPV6);
        // Ever more plausible: version 6, a payload length that fits, a next header the
        // data path knows, aimed at the ENI, an ICMPv6 type it handles.
        if len >= 54 && i % 2 == 0 {
            v[14] = 0x60 | (v[14] & 0x0f);
            let payload = (len - 54) as u16;
            let claimed = if i % 8 == 0 {
                rng.next() as u16
            } else {
                payload
            };
            v[18..20].copy_from_slice(&claimed.to_be_bytes());
            let kinds = [58, 6, 17, 0, 43, 44, 60, 51, 50];
            v[20] = kinds[(rng.next() % kinds.len() as u64) as usize];
            if i % 4 == 0 {
                v[21] = 255;
                v[38..54].copy_from_slice(&eni6());
            }
            if len > 54 && v[20] == 58 && i % 6 == 0 {
                v[54] = [NS, NA, 128, 1, 2, 3][(rng.next() % 6) as usize];
            }
        }
        let ifindex = if i % 3 == 0 {
            h.provider.ifindex
        } else {
            h.consumer.ifindex
        };
        let (act, out) = h.run(ifindex, &v).unwrap();
        assert!(
            act == XDP_DROP || act == XDP_TX,
            "frame {i} ({v:02x?}) got action {act}"
        );
        if act == XDP_TX {
            // Only an echo request to the ENI is answered: an NA would need a valid
            // solicitation (its checksum included), which random bytes do not make.
            assert_eq!(v[54], 128, "frame {i} ({v:02x?}) answered");
            assert_eq!(out[54], 129);
        }
    }
    let total: u64 = h.stats().unwrap().values().sum();
    assert_eq!(total, n, "every frame is counted exactly once");
    assert_eq!(h.count(Reason::PassUnrelated), 0);
}

#[test]
fn ipv6_not_for_the_data_path_passes_with_host_traffic() {
    let mut h = Harness::new(&dual_state().replace(
        "interface = \"fc0\"",
        "interface = \"fc0\"\nhost_traffic = true",
    ))
    .unwrap();
    let host6 = v6("fd00:a:0:2::5");
    let unrelated = [
        ns_frame(
            (CLIENT_MAC, client6()),
            h.consumer.mac,
            host6,
            255,
            Some(CLIENT_MAC),
            false,
        ),
        {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
                .ipv6(client6(), host6, 64)
                .tcp(40000, 22, 1, 1)
                .syn()
                .write(&mut v, b"")
                .unwrap();
            v
        },
        echo6(&h, client6(), host6, 1, 1, b"to the host"),
        {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, 0, 0, 0, 0xfb])
                .ipv6(v6("fe80::1"), v6("ff02::fb"), 255)
                .udp(5353, 5353)
                .write(&mut v, b"mdns")
                .unwrap();
            v
        },
    ];
    for f in &unrelated {
        let (act, out) = h.run(h.consumer.ifindex, f).unwrap();
        assert_eq!((act, &out), (XDP_PASS, f), "{:?}", h.active_stats());
    }
    assert_eq!(h.count(Reason::PassUnrelated), unrelated.len() as u64);
    assert_eq!(h.count(Reason::DropHostIsolated), 0);
    // The data path's own addresses are still answered.
    let f = echo6(&h, client6(), eni6(), 1, 1, b"x");
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_TX);
    let f = ns_frame(
        (CLIENT_MAC, client6()),
        h.consumer.mac,
        eni6(),
        255,
        Some(CLIENT_MAC),
        false,
    );
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_TX);
    // The provider's interface has no such switch: isolated.
    let mut f = unrelated[1].clone();
    f[0..6].copy_from_slice(&h.provider.mac);
    assert_eq!(h.run(h.provider.ifindex, &f).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropHostIsolated), 1);
}
