//! IPv6 golden-packet tests: frames built with etherparse (or byte by byte where etherparse
//! has no builder: extension headers, neighbour discovery options) go through the loaded
//! XDP program (BPF_PROG_TEST_RUN), and what comes out is parsed by etherparse again;
//! every ICMPv6 checksum is checked twice, by etherparse and by a pseudo-header sum of this
//! file's own (never the data path's `csum`). The state is the packet tests' lab made dual
//! stack through the model (`dual_state`).
//!
//! Covered: IPv6 NAT both ways (TCP and UDP, every L4 checksum checked by etherparse and
//! by this file's own pseudo-header sum), ICMPv6 errors about NATed flows translated both
//! ways, neighbour discovery, ICMPv6 echo to an ENI, the extension header policy, hop
//! limits, truncations, garbage, host isolation, IPv6 gateway endpoints (NAT keeping the
//! destination, the policy, the IPv6 route target, the endpoint's state), and the
//! established short path against the full one.

use std::net::Ipv6Addr;

use etherparse::{
    IcmpEchoHeader, Icmpv6Type, Ipv6Header, LinkSlice, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use privatelink_common::{
    DIR_ORIGINAL, DIR_REPLY, FLOW_GATEWAY, FlowEntry6, FlowKey6, PROTO_TCP, Reason,
};
use privatelink_tests::{
    dual::{
        LB6_MAC, NA, NEXTHDR_AUTH, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_ROUTING,
        NS, PADN6, client6, dual_state, echo6, eni6, gateway_dual_state, gateway_snat6, gateway6,
        lb6, na_frame, ns_frame, oss6, oss6_denied, snat6_pool, teach_lb, v6, with_ext,
    },
    frames::CLIENT_MAC,
    lab::with_flow_share,
    testrun::{Harness, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, slot_counters},
};
use privatelink_user::model::numeric_id;

const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

fn snat6() -> [u8; 16] {
    snat6_pool()[0]
}

fn harness() -> Harness {
    Harness::new(&dual_state()).expect("harness")
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

/// The ones' complement sum over the pseudo-header (RFC 8200 8.1) and the ICMPv6 message:
/// 0xffff when the message's checksum is right. Written here, not taken from the product.
fn pseudo_sum_ok(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> bool {
    pseudo_sum_ok_for(src, dst, 58, msg)
}

/// `pseudo_sum_ok` for upper-layer protocol `next_header` (6 TCP, 17 UDP, 58 ICMPv6).
fn pseudo_sum_ok_for(src: [u8; 16], dst: [u8; 16], next_header: u8, msg: &[u8]) -> bool {
    pseudo_sum(src, dst, next_header, msg) == 0xffff
}

/// The folded ones' complement sum over the pseudo-header and `msg`.
fn pseudo_sum(src: [u8; 16], dst: [u8; 16], next_header: u8, msg: &[u8]) -> u16 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&dst);
    bytes.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, next_header]);
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
    sum as u16
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

/// A TCP or UDP frame the data path sent, decoded by etherparse; its checksum checked by
/// etherparse and by `pseudo_sum_ok_for`.
struct L4Out {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip: Ipv6Header,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
}

fn parse_l4(frame: &[u8]) -> L4Out {
    let p = SlicedPacket::from_ethernet(frame).expect("output parses");
    let Some(LinkSlice::Ethernet2(eth)) = p.link else {
        panic!("not Ethernet II: {:?}", p.link)
    };
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not IPv6: {:?}", p.net)
    };
    let ip = ip.header().to_header();
    let (segment, next_header, sport, dport, payload) = match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv6(&ip, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum (etherparse)");
            let p = t.payload().to_vec();
            (
                t.slice().to_vec(),
                6,
                t.source_port(),
                t.destination_port(),
                p,
            )
        }
        Some(TransportSlice::Udp(u)) => {
            assert_ne!(u.checksum(), 0, "IPv6 UDP always has a checksum");
            let want = u.to_header().calc_checksum_ipv6(&ip, u.payload()).unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum (etherparse)");
            let p = u.payload().to_vec();
            (
                u.slice().to_vec(),
                17,
                u.source_port(),
                u.destination_port(),
                p,
            )
        }
        other => panic!("not TCP or UDP: {other:?}"),
    };
    assert!(
        pseudo_sum_ok_for(ip.source, ip.destination, next_header, &segment),
        "L4 checksum (pseudo-header sum)"
    );
    L4Out {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        ip,
        sport,
        dport,
        payload,
    }
}

fn nat_harness() -> Harness {
    let mut h = harness();
    teach_lb(&mut h);
    h
}

/// A client TCP segment to the ENI's port 80 (a SYN if `syn`, else an ACK).
fn tcp6_segment(h: &Harness, sport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .tcp(sport, 80, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5001) };
    b.write(&mut v, payload).unwrap();
    v
}

/// The load balancer's TCP segment from port 80 to SNAT tuple `to`.
fn tcp6_from_lb(h: &Harness, to: ([u8; 16], u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB6_MAC, h.provider.mac)
        .ipv6(lb6(), to.0, 64)
        .tcp(80, to.1, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// The load balancer's UDP datagram from port 53 to SNAT tuple `to`.
fn udp6_from_lb(h: &Harness, to: ([u8; 16], u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB6_MAC, h.provider.mac)
        .ipv6(lb6(), to.0, 64)
        .udp(53, to.1)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn udp6_to_eni(h: &Harness, sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .udp(sport, 53)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A one-way IPv6 flow stays alive through its other direction, as IPv4's
/// (`packets.rs`): a client packet after the client went quiet past its timeout finds its
/// expired entry's partner, the provider's, by the key `FlowEntry6::partner_key` makes
/// (`FlowKey6::new`), and the flow keeps its tuple: no new flow made.
#[test]
fn a_flow6_lives_while_either_direction_is_active() {
    let mut h = nat_harness();
    h.set_timeouts_ms(300, 300, 100).unwrap();
    let (act, out) = h
        .run(h.consumer.ifindex, &udp6_to_eni(&h, 7100, b"sub"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    let (snat, port) = (p.ip.source, p.sport);
    let push = udp6_from_lb(&h, (snat, port), b"push");
    h.keep_talking(h.provider.ifindex, &push);
    // The consumer's entry is past its timeout, the provider's is not: same flow, same tuple.
    let (act, out) = h
        .run(h.consumer.ifindex, &udp6_to_eni(&h, 7100, b"again"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    assert_eq!((p.ip.source, p.sport), (snat, port));
    assert_eq!(
        h.count(Reason::Forward6NewFlow),
        1,
        "{:?}",
        h.active_stats()
    );
}

/// An IPv6 flow that loses an entry keeps its SNAT tuple, as IPv4's (`packets.rs`): a lost
/// forward entry is made again by the next client packet (its reply entry recognised as
/// the flow's own, by the key `flows6`'s claim derives), and so is a flow that lost both;
/// a lost reply entry is made again by a client packet once the partner check is due
/// (one second), by the key `conntrack6::key6` builds for `keep_partner`: the reply
/// after it is translated back only if that key is the one the reply is looked up by.
#[test]
fn a_flow6_that_loses_an_entry_keeps_its_snat_tuple() {
    let mut h = nat_harness();
    let tuple = open_flow6(&mut h, 40100);
    let data = tcp6_segment(&h, 40100, false, b"data");
    let reply = tcp6_from_lb(&h, tuple, b"answer");
    // The harness holds this one flow: one entry per direction.
    let forget = |h: &mut Harness, dir: u8| h.forget_direction::<FlowEntry6>(dir);
    let send = |h: &mut Harness| {
        let (act, out) = h.run(h.consumer.ifindex, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
        let p = parse_l4(&out);
        (p.ip.source, p.sport)
    };

    forget(&mut h, DIR_ORIGINAL);
    assert_eq!(send(&mut h), tuple, "after losing the forward entry");
    forget(&mut h, DIR_ORIGINAL);
    forget(&mut h, DIR_REPLY);
    assert_eq!(send(&mut h), tuple, "after losing both entries");
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_REDIRECT);

    forget(&mut h, DIR_REPLY);
    let before = h.count(Reason::DropNoFlow);
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), before + 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(send(&mut h), tuple, "after losing the reply entry");
    let (act, out) = h.run(h.provider.ifindex, &reply).unwrap();
    assert_eq!(
        act,
        XDP_REDIRECT,
        "the reply entry was made again: {:?}",
        h.active_stats()
    );
    let p = parse_l4(&out);
    assert_eq!((p.ip.destination, p.dport), (client6(), 40100));
    assert_eq!(h.dp.flows6().unwrap().len(), 2, "one flow, both ways");
}

/// Sends a SYN from client port `sport`; the SNAT tuple it was given.
fn open_flow6(h: &mut Harness, sport: u16) -> ([u8; 16], u16) {
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp6_segment(h, sport, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    (p.ip.source, p.sport)
}

#[test]
fn syn_to_the_eni6_is_full_natted_to_the_load_balancer() {
    let mut h = nat_harness();
    let frame = tcp6_segment(&h, 40000, true, b"");
    let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    assert_eq!(
        (p.eth_src, p.eth_dst),
        (h.provider.mac, LB6_MAC),
        "out of the provider side, to the load balancer's MAC"
    );
    assert!(
        snat6_pool().contains(&p.ip.source),
        "source from the IPv6 SNAT pool: {:?}",
        Ipv6Addr::from(p.ip.source)
    );
    assert_eq!(p.ip.destination, lb6());
    assert_eq!(p.ip.hop_limit, 63, "hop limit decremented");
    assert!(p.sport >= 1024, "SNAT port {}", p.sport);
    assert_eq!(p.dport, 80);
    assert_eq!(out.len(), frame.len());
    assert_eq!(h.count(Reason::Forward6NewFlow), 1);
    // Both directions in the IPv6 flow table, none in IPv4's.
    assert!(h.dp.flows().unwrap().is_empty());
    let flows = h.dp.flows6().unwrap();
    assert_eq!(flows.len(), 2);
    let keys: Vec<_> = flows
        .iter()
        .map(|(k, e)| (e.direction, k.src, k.dst, k.sport, k.dport))
        .collect();
    assert!(keys.contains(&(DIR_ORIGINAL, client6(), eni6(), 40000, 80)));
    assert!(keys.contains(&(DIR_REPLY, lb6(), p.ip.source, 80, p.sport)));
    // Found by the keys this side makes (`FlowKey6::new`): the data path wrote every word
    // of them as the host does, VPC and padding included (a listing rebuilds a key's
    // last word from its slot, so only a lookup, which hashes all the words, shows it).
    let (vpc_a, vpc_b) = (numeric_id("vpc-a"), numeric_id("vpc-b"));
    let fwd = FlowKey6::new(vpc_a, client6(), eni6(), 40000, 80, PROTO_TCP);
    let back = FlowKey6::new(vpc_b, lb6(), p.ip.source, 80, p.sport, PROTO_TCP);
    for (key, dir) in [(fwd, DIR_ORIGINAL), (back, DIR_REPLY)] {
        let e = h.dp.flow::<FlowEntry6>(&key).unwrap();
        assert_eq!(e.map(|e| e.direction), Some(dir), "{key:?}");
    }
}

#[test]
fn a_reply6_is_translated_back_and_the_flow_keeps_its_tuple() {
    let mut h = nat_harness();
    let (snat, port) = open_flow6(&mut h, 40001);
    let (act, out) = h
        .run(
            h.provider.ifindex,
            &tcp6_from_lb(&h, (snat, port), b"hello"),
        )
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (eni6(), client6()));
    assert_eq!((p.sport, p.dport), (80, 40001));
    assert_eq!(p.ip.hop_limit, 63);
    assert_eq!(p.payload, b"hello");
    // The client's next segments keep the tuple.
    for data in [b"GET /".as_slice(), b"more"] {
        let (act, out) = h
            .run(h.consumer.ifindex, &tcp6_segment(&h, 40001, false, data))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let p = parse_l4(&out);
        assert_eq!((p.ip.source, p.sport), (snat, port));
        assert_eq!(p.payload, data);
    }
    assert_eq!(h.count(Reason::Forward6ToConsumer), 1);
    assert_eq!(h.count(Reason::Forward6ToService), 2);
    assert_eq!(h.count(Reason::Forward6NewFlow), 1);
}

#[test]
fn every_ipv6_flow_gets_its_own_snat_tuple() {
    let mut h = nat_harness();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 30000..30100 {
        assert!(
            seen.insert(open_flow6(&mut h, sport)),
            "tuple reused for client port {sport}"
        );
    }
    assert_eq!(h.count(Reason::Forward6NewFlow), 100);
    assert_eq!(h.dp.flows6().unwrap().len(), 200);
}

/// The IPv6 flow table keeps every spill count equal to its keys, and every slot's home
/// right, through the evictions of a flood of new flows into a small table (as flood.rs
/// checks the IPv4 one): 400 SYNs into 64 slots, each new flow once the buckets are full
/// taking the place of an older half-open one.
#[test]
fn a_small_ipv6_table_keeps_its_spill_counts_through_evictions() {
    let state = with_flow_share(&dual_state(), 100);
    let mut h = Harness::with_conntrack(&state, 64).unwrap();
    teach_lb(&mut h);
    let mut forwarded = 0;
    for sport in 20000..20400 {
        let (act, _) = h
            .run(h.consumer.ifindex, &tcp6_segment(&h, sport, true, b""))
            .unwrap();
        forwarded += u32::from(act == XDP_REDIRECT);
    }
    assert_eq!(
        h.count(Reason::Forward6NewFlow),
        forwarded as u64,
        "{:?}",
        h.active_stats()
    );
    assert!(
        forwarded > 300,
        "{forwarded} of 400: {:?}",
        h.active_stats()
    );
    let live = h.dp.flows6().unwrap().len();
    assert!(live > 40, "{live} of 64 slots live");
    let audit =
        h.dp.flow_spill_audit::<privatelink_common::FlowEntry6>()
            .unwrap();
    assert!(
        audit.iter().any(|&(_, _, keys)| keys > 0),
        "no direction lives in its second bucket: the audit checked nothing ({live} live)"
    );
    for &(b, count, keys) in &audit {
        assert_eq!(count, keys, "bucket {b}: {audit:?}");
    }
    eprintln!(
        "{forwarded} of 400 SYNs forwarded, {live} of 64 slots live, {} directions in their \
         second bucket",
        audit.iter().map(|&(_, _, k)| k).sum::<u64>()
    );
}

#[test]
fn a_reply6_without_a_flow_is_dropped() {
    let mut h = nat_harness();
    let (act, _) = h
        .run(h.provider.ifindex, &tcp6_from_lb(&h, (snat6(), 5555), b""))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), 1, "{:?}", h.active_stats());
}

#[test]
fn udp6_is_natted_both_ways_with_valid_checksums() {
    let mut h = nat_harness();
    let (act, out) = h
        .run(h.consumer.ifindex, &udp6_to_eni(&h, 5353, b"query"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    assert!(snat6_pool().contains(&p.ip.source));
    assert_eq!((p.ip.destination, p.dport), (lb6(), 53));
    assert_eq!(p.payload, b"query");
    let answer = udp6_from_lb(&h, (p.ip.source, p.sport), b"answer");
    let (act, out) = h.run(h.provider.ifindex, &answer).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let r = parse_l4(&out);
    assert_eq!((r.ip.source, r.sport), (eni6(), 53));
    assert_eq!((r.ip.destination, r.dport), (client6(), 5353));
    assert_eq!(r.payload, b"answer");
    // A zero UDP checksum is not allowed over IPv6 (RFC 8200 8.1): dropped, counted.
    let mut zero = udp6_to_eni(&h, 5354, b"nocsum");
    zero[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
    assert_eq!(h.run(h.consumer.ifindex, &zero).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropUdp6ZeroChecksum), 1);
}

/// A UDP payload, `text` and two more bytes, chosen so that the datagram from `from` to
/// `to` (address and port each) sums to 0xffff with its checksum field zero: its
/// checksum computes to 0, which UDP over IPv6 must send as 0xffff (RFC 768, RFC 8200
/// 8.1: a zero there would mean "no checksum", which IPv6 does not allow).
fn zero_sum_payload(from: ([u8; 16], u16), to: ([u8; 16], u16), text: &[u8]) -> Vec<u8> {
    assert!(
        text.len().is_multiple_of(2),
        "the last word must be aligned"
    );
    let mut payload = text.to_vec();
    payload.extend_from_slice(&[0, 0]);
    let len = (8 + payload.len()) as u16;
    let mut msg = Vec::new();
    for w in [from.1, to.1, len, 0] {
        msg.extend_from_slice(&w.to_be_bytes());
    }
    msg.extend_from_slice(&payload);
    let w = 0xffff - pseudo_sum(from.0, to.0, 17, &msg);
    let n = payload.len();
    payload[n - 2..].copy_from_slice(&w.to_be_bytes());
    msg[8 + n - 2..].copy_from_slice(&w.to_be_bytes());
    assert_eq!(pseudo_sum(from.0, to.0, 17, &msg), 0xffff);
    payload
}

#[test]
fn a_udp6_checksum_that_computes_to_zero_is_sent_as_ffff_on_both_paths() {
    let mut h = nat_harness();
    let sport = 5360;
    let (act, out) = h
        .run(h.consumer.ifindex, &udp6_to_eni(&h, sport, b"open"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    let tuple = (p.ip.source, p.sport);
    let (act, _) = h
        .run(h.provider.ifindex, &udp6_from_lb(&h, tuple, b"ok"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    // What leaves each way sums to 0xffff with its checksum zero.
    let out_fwd = zero_sum_payload(tuple, (lb6(), 53), b"forward!");
    let out_back = zero_sum_payload((eni6(), 53), (client6(), sport), b"backward");
    // Checks one exchange: both datagrams leave with checksum 0xffff, which etherparse
    // and this file's own sum accept (`parse_l4`), payloads intact.
    let exchange = |h: &mut Harness, what: &str| {
        let (act, out) = h
            .run(h.consumer.ifindex, &udp6_to_eni(h, sport, &out_fwd))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "{what}: {:?}", h.active_stats());
        assert_eq!(
            out[14 + 40 + 6..14 + 40 + 8],
            [0xff, 0xff],
            "{what}: forward"
        );
        let p = parse_l4(&out);
        assert_eq!((p.ip.source, p.sport), tuple, "{what}: the flow's tuple");
        assert_eq!(p.payload, out_fwd, "{what}");
        let (act, out) = h
            .run(h.provider.ifindex, &udp6_from_lb(h, tuple, &out_back))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT, "{what}: {:?}", h.active_stats());
        assert_eq!(out[14 + 40 + 6..14 + 40 + 8], [0xff, 0xff], "{what}: reply");
        let r = parse_l4(&out);
        assert_eq!((r.ip.destination, r.dport), (client6(), sport), "{what}");
        assert_eq!(r.payload, out_back, "{what}");
    };
    // The full path (`flows6::apply6`): a new epoch sends both directions through it.
    h.bump_epoch().unwrap();
    exchange(&mut h, "full path");
    let (fwd, reply) = flow_pair6(&h, sport);
    assert_eq!(
        (fwd.fast_packets, reply.fast_packets),
        (0, 0),
        "full path only"
    );
    // The established path (`established6::rewrite`), now that both are stamped; the
    // client's direction may take the once-a-second partner check instead, so it is
    // tried until it ran there (a few rounds at most).
    for round in 1..=3 {
        exchange(&mut h, &format!("established path, round {round}"));
        let (fwd, reply) = flow_pair6(&h, sport);
        assert_eq!(reply.fast_packets, round, "replies on the established path");
        if fwd.fast_packets > 0 {
            return;
        }
    }
    panic!("the client's packets never took the established path");
}

#[test]
fn hop_limit_one_is_dropped_and_counted() {
    let mut h = nat_harness();
    let mut f = tcp6_segment(&h, 40200, true, b"");
    f[14 + 7] = 1;
    let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropHopLimitExceeded), 1);
    assert!(
        h.dp.flows6().unwrap().is_empty(),
        "no flow for a dropped packet"
    );
    // A reply with hop limit 1 is dropped too.
    let (snat, port) = open_flow6(&mut h, 40201);
    let mut r = tcp6_from_lb(&h, (snat, port), b"");
    r[14 + 7] = 1;
    assert_eq!(h.run(h.provider.ifindex, &r).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropHopLimitExceeded), 2);
}

#[test]
fn a_syn_behind_a_destination_options_header_is_natted_with_the_header_kept() {
    let mut h = nat_harness();
    let plain = tcp6_segment(&h, 40300, true, b"");
    let f = with_ext(&plain, NEXTHDR_DEST, &PADN6);
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(out.len(), f.len(), "the extension header travels on");
    assert_eq!(out[20], NEXTHDR_DEST);
    let p = parse_l4(&out);
    assert_eq!((p.ip.destination, p.dport), (lb6(), 80));
    assert!(snat6_pool().contains(&p.ip.source));
}

/// An ICMPv6 error of `ty`/`code` (4-byte field `rest`) about `quoted` (a packet as we
/// sent it), from `src` to `dst`.
fn icmp6_error(
    macs: ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, 64)
        .icmpv6_raw(ty, code, rest)
        .write(&mut v, quoted)
        .unwrap();
    v
}

/// The packet an ICMPv6 error quotes, split: its IPv6 header and its L4 bytes.
fn quoted6(o: &Out6) -> (Ipv6Header, Vec<u8>) {
    let (ip, rest) = Ipv6Header::from_slice(&o.payload).expect("quoted IPv6 header");
    (ip, rest.to_vec())
}

#[test]
fn packet_too_big_from_the_provider_side_is_translated_for_the_client() {
    let mut h = nat_harness();
    let (snat, port) = open_flow6(&mut h, 40100);
    // What we sent to the load balancer, quoted whole (its TCP checksum included).
    let mut quoted = Vec::new();
    PacketBuilder::ipv6(snat, lb6(), 63)
        .tcp(port, 80, 1000, 64240)
        .ack(5001)
        .write(&mut quoted, b"0123456789")
        .unwrap();
    let router = v6("fd00:b::1");
    let ptb = icmp6_error(
        (LB6_MAC, h.provider.mac),
        (router, snat),
        2,
        0,
        1280u32.to_be_bytes(),
        &quoted,
    );
    let (act, out) = h.run(h.provider.ifindex, &ptb).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let o = parse_icmp6(&out); // both ICMPv6 checksum checks
    assert_eq!((o.eth_src, o.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!(o.ip.destination, client6(), "to the client");
    assert_eq!(o.ip.source, eni6(), "from the ENI the client knows");
    assert_eq!((o.msg[0], o.msg[1]), (2, 0), "Packet Too Big");
    assert_eq!(&o.msg[4..8], &1280u32.to_be_bytes(), "the MTU");
    // The quote is now the client's own packet, its checksum valid for its addresses.
    let (ih, l4) = quoted6(&o);
    assert_eq!((ih.source, ih.destination), (client6(), eni6()));
    let tcp = etherparse::TcpSlice::from_slice(&l4).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (40100, 80));
    assert_eq!(
        tcp.checksum(),
        tcp.to_header()
            .calc_checksum_ipv6(&ih, tcp.payload())
            .unwrap(),
        "quoted TCP checksum"
    );
    assert!(pseudo_sum_ok_for(ih.source, ih.destination, 6, &l4));
    assert_eq!(h.count(Reason::Icmp6ErrorTranslated), 1);
}

#[test]
fn destination_unreachable_from_the_client_is_translated_for_the_load_balancer() {
    let mut h = nat_harness();
    // A UDP flow and its answer; the client says its port is unreachable.
    let (act, out) = h
        .run(h.consumer.ifindex, &udp6_to_eni(&h, 5400, b"q"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let fwd = parse_l4(&out);
    let (snat, port) = (fwd.ip.source, fwd.sport);
    // What the client got: the answer as translated (ENI:53 → client:5400).
    let mut quoted = Vec::new();
    PacketBuilder::ipv6(eni6(), client6(), 63)
        .udp(53, 5400)
        .write(&mut quoted, b"answer")
        .unwrap();
    for (ty, code, what) in [(1u8, 4u8, "port unreachable"), (3, 0, "time exceeded")] {
        let err = icmp6_error(
            (CLIENT_MAC, h.consumer.mac),
            (client6(), eni6()),
            ty,
            code,
            [0; 4],
            &quoted,
        );
        let (act, out) = h.run(h.consumer.ifindex, &err).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{what}: {:?}", h.active_stats());
        let o = parse_icmp6(&out);
        assert_eq!((o.eth_src, o.eth_dst), (h.provider.mac, LB6_MAC), "{what}");
        assert_eq!((o.ip.source, o.ip.destination), (snat, lb6()), "{what}");
        assert_eq!((o.msg[0], o.msg[1]), (ty, code), "{what}");
        let (ih, l4) = quoted6(&o);
        assert_eq!(
            (ih.source, ih.destination),
            (lb6(), snat),
            "{what}: quoted addresses"
        );
        let udp = etherparse::UdpSlice::from_slice(&l4).unwrap();
        assert_eq!((udp.source_port(), udp.destination_port()), (53, port));
        assert!(
            pseudo_sum_ok_for(ih.source, ih.destination, 17, &l4),
            "{what}: quoted UDP checksum"
        );
    }
    assert_eq!(h.count(Reason::Icmp6ErrorTranslated), 2);
}

#[test]
fn an_icmp6_error_about_no_flow_is_dropped() {
    let mut h = nat_harness();
    let mut quoted = Vec::new();
    PacketBuilder::ipv6(snat6(), lb6(), 63)
        .tcp(6000, 80, 1, 1)
        .write(&mut quoted, b"")
        .unwrap();
    let ptb = icmp6_error(
        (LB6_MAC, h.provider.mac),
        (v6("fd00:b::1"), snat6()),
        2,
        0,
        1280u32.to_be_bytes(),
        &quoted,
    );
    assert_eq!(h.run(h.provider.ifindex, &ptb).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::Icmp6ErrorTranslated), 0);
    assert_eq!(drops(&h), 1, "{:?}", h.active_stats());
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
    // Ethernet padding after the packet is fine: NATed, the padding left as it was.
    teach_lb(&mut h);
    let mut padded = tcp6_to_eni(&h, 40801, b"");
    padded.extend_from_slice(&[0; 6]);
    let (act, out) = h.run(h.consumer.ifindex, &padded).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(out.len(), padded.len());
    assert_eq!(parse_l4(&out[..out.len() - 6]).dport, 80);
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

/// The dual-stack state with security groups `groups` on ep-a and `extra` TOML appended.
fn filtered_state(groups: &[&str], extra: &str) -> String {
    let list = groups
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let s = dual_state();
    assert_eq!(s.matches("name = \"web\"").count(), 1);
    format!(
        "{}\n{extra}",
        s.replace(
            "name = \"web\"",
            &format!("name = \"web\"\nsecurity_groups = [{list}]")
        )
    )
}

/// A SYN from `src` to the ENI's port `dport`: the verdict; a forwarded one checked.
fn syn6_verdict(h: &mut Harness, src: [u8; 16], dport: u16) -> u32 {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(src, eni6(), 64)
        .tcp(30000 + dport, dport, 1, 64240)
        .syn()
        .write(&mut v, b"")
        .unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &v).unwrap();
    if act == XDP_REDIRECT {
        let p = parse_l4(&out);
        assert_eq!((p.ip.destination, p.dport), (lb6(), dport));
        assert!(snat6_pool().contains(&p.ip.source));
    }
    act
}

#[test]
fn security_groups_judge_ipv6_flows_by_their_ipv6_rules_deny_first_to_the_last_rule() {
    let rule = |prio: u32, action: &str, ports: [u16; 2], cidr: &str| {
        format!(
            "{{ direction = \"ingress\", priority = {prio}, action = \"{action}\", protocol = \"tcp\", ports = [{}, {}], cidr = \"{cidr}\" }}",
            ports[0], ports[1]
        )
    };
    let mut rules = vec![
        rule(1, "accept", [80, 80], "fd00:a:0:2::/64"),
        rule(1, "drop", [80, 80], "fd00:a:0:2::5/128"),
        // IPv4 rules never admit IPv6.
        rule(1, "accept", [1, 65535], "0.0.0.0/0"),
        // The last of 31 IPv6 rules once ordered (32 in all, the most an ENI takes):
        // the walk reaches the end of the set.
        rule(50, "accept", [443, 443], "fd00:a::/56"),
    ];
    for i in 0..28 {
        rules.push(rule(2, "accept", [900 + i, 900 + i], "fd00:ff::/64"));
    }
    let sg = format!(
        "[[security_groups]]\nid = \"sg-a\"\naccount = \"acct-a\"\nvpc = \"vpc-a\"\nrules = [\n{}\n]\n",
        rules.join(",\n")
    );
    let mut h = Harness::new(&filtered_state(&["sg-a"], &sg)).expect("harness");
    teach_lb(&mut h);
    let cases = [
        (client6(), 80, XDP_REDIRECT, "accepted by its /64"),
        (
            v6("fd00:a:0:2::5"),
            80,
            XDP_DROP,
            "drop wins at equal priority",
        ),
        (v6("fd00:a:0:3::1"), 80, XDP_DROP, "no rule matches"),
        (v6("fd00:a:0:3::1"), 443, XDP_REDIRECT, "the last rule"),
        (v6("fd00:ff::1"), 927, XDP_REDIRECT, "a filler rule"),
        (v6("fd00:ff::1"), 928, XDP_DROP, "past the fillers"),
    ];
    for (src, port, want, what) in cases {
        assert_eq!(
            syn6_verdict(&mut h, src, port),
            want,
            "{what}: {:?}",
            h.active_stats()
        );
    }
    assert_eq!(h.count(Reason::DropSecurityGroup), 3);
}

#[test]
fn an_acl_judges_every_ipv6_packet_by_its_ipv6_rules_both_ways() {
    let acl = "[[acls]]\nid = \"acl-a\"\naccount = \"acct-a\"\nvpc = \"vpc-a\"\nvswitches = [\"vsw-a1\"]\n\
        ingress = [{ action = \"accept\", protocol = \"tcp\", cidr = \"fd00:a:0:2::1/128\", ports = [80, 80] }, \
        { action = \"drop\", protocol = \"all\", cidr = \"::/0\" }, { action = \"accept\", protocol = \"all\", cidr = \"::/0\" }, \
        { action = \"accept\", protocol = \"all\", cidr = \"0.0.0.0/0\" }]\n\
        egress = [{ action = \"drop\", protocol = \"all\", cidr = \"::/0\" }, { action = \"accept\", protocol = \"all\", cidr = \"0.0.0.0/0\" }]\n";
    let mut h = Harness::new(&filtered_state(&[], acl)).expect("harness");
    teach_lb(&mut h);
    assert_eq!(syn6_verdict(&mut h, client6(), 80), XDP_REDIRECT);
    assert_eq!(
        syn6_verdict(&mut h, v6("fd00:a:0:2::2"), 80),
        XDP_DROP,
        "the drop comes first"
    );
    assert_eq!(h.count(Reason::DropAcl), 1, "{:?}", h.active_stats());
    // Stateless: the reply to the admitted flow meets the egress drop.
    let snat =
        h.dp.flows6()
            .unwrap()
            .into_iter()
            .find(|(_, e)| e.direction == DIR_REPLY)
            .map(|(k, _)| (k.dst, k.dport))
            .expect("the admitted flow");
    assert_eq!(
        h.run(h.provider.ifindex, &tcp6_from_lb(&h, snat, b""))
            .unwrap()
            .0,
        XDP_DROP
    );
    assert_eq!(h.count(Reason::DropAcl), 2);
}

#[test]
fn an_ipv6_flow_is_established_by_its_handshake_and_stops_with_its_endpoint() {
    use privatelink_common::CT_ESTABLISHED;
    let mut h = nat_harness();
    let established = |h: &Harness| {
        h.dp.flows6()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.tcp_flags & CT_ESTABLISHED != 0)
            .count()
    };
    let (snat, port) = open_flow6(&mut h, 41000);
    assert_eq!(established(&h), 0, "a SYN does not establish");
    // The SYN-ACK (seq 5000) and the client's ACK of it (5001): both entries established.
    let syn_ack = tcp6_from_lb(&h, (snat, port), b"");
    assert_eq!(h.run(h.provider.ifindex, &syn_ack).unwrap().0, XDP_REDIRECT);
    assert_eq!(established(&h), 0, "nor does the SYN-ACK");
    let ack = tcp6_segment(&h, 41000, false, b"");
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_REDIRECT);
    assert_eq!(established(&h), 2, "both entries after the handshake");
    // The endpoint disconnected: the established flow stops both ways.
    let state = dual_state();
    assert_eq!(state.matches("connection = \"connected\"").count(), 1);
    h.apply_state(&state.replace(
        "connection = \"connected\"",
        "connection = \"disconnected\"",
    ))
    .unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_DROP);
    assert_eq!(h.run(h.provider.ifindex, &syn_ack).unwrap().0, XDP_DROP);
    assert_eq!(
        h.count(Reason::DropNotConnected),
        2,
        "{:?}",
        h.active_stats()
    );
}

#[test]
fn ipv6_to_a_port_the_service_does_not_publish_is_dropped() {
    let mut h = nat_harness();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .tcp(41100, 2000, 1, 64240)
        .syn()
        .write(&mut v, b"")
        .unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &v).unwrap().0, XDP_DROP);
    let mut u = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .udp(41101, 54)
        .write(&mut u, b"x")
        .unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &u).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoListener), 2, "{:?}", h.active_stats());
    assert!(h.dp.flows6().unwrap().is_empty());
}

// IPv6 gateway endpoints: epsrv-oss's prefix fd00:64:10::/64 routed in vpc-a to ep-oss's
// IPv6 route target fd00:a:0:1::1 (`gateway6_state`).

/// The dual-stack lab with the dualstack gateway endpoint, the load balancer's MAC known.
fn gateway_harness(connection: &str) -> Harness {
    let mut h = Harness::new(&gateway_dual_state(connection)).expect("harness");
    teach_lb(&mut h);
    h
}

/// The client's TCP segment to `dst` port `dport` (a SYN if `syn`, else an ACK), through
/// the VPC's route to the gateway endpoint (to the forwarder's MAC).
fn tcp6_to(h: &Harness, dst: [u8; 16], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5001) };
    b.write(&mut v, b"").unwrap();
    v
}

/// `src`'s answer (SYN-ACK, port 80) to the SNAT tuple `to`, through the load balancer.
fn tcp6_via_lb(h: &Harness, src: [u8; 16], to: ([u8; 16], u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB6_MAC, h.provider.mac)
        .ipv6(src, to.0, 64)
        .tcp(80, to.1, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut v, payload)
        .unwrap();
    v
}

#[test]
fn a_syn_into_a_gateway_prefix_is_natted_from_the_snat6_pool_keeping_its_destination() {
    let mut h = gateway_harness("connected");
    let frame = tcp6_to(&h, oss6(), 42000, 80, true);
    let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out); // TCP checksum: etherparse and the pseudo-header sum
    assert_eq!(
        (p.eth_src, p.eth_dst),
        (h.provider.mac, LB6_MAC),
        "out of the provider side, to the load balancer's MAC: only the next hop"
    );
    assert_eq!(
        Ipv6Addr::from(p.ip.source),
        Ipv6Addr::from(gateway_snat6()),
        "source from the gateway service's IPv6 SNAT pool"
    );
    assert_eq!(
        Ipv6Addr::from(p.ip.destination),
        Ipv6Addr::from(oss6()),
        "the destination kept"
    );
    assert_eq!(p.ip.hop_limit, 63, "hop limit decremented");
    assert!(p.sport >= 1024, "SNAT port {}", p.sport);
    assert_eq!(p.dport, 80);
    assert_eq!(out.len(), frame.len());
    assert_eq!(h.count(Reason::Forward6NewFlow), 1);
    // Both directions in the IPv6 flow table, marked as a gateway flow.
    let flows = h.dp.flows6().unwrap();
    assert_eq!(flows.len(), 2);
    let keys: Vec<_> = flows
        .iter()
        .map(|(k, e)| {
            (
                e.direction,
                k.src,
                k.dst,
                k.sport,
                k.dport,
                e.flags & FLOW_GATEWAY,
            )
        })
        .collect();
    assert!(keys.contains(&(DIR_ORIGINAL, client6(), oss6(), 42000, 80, FLOW_GATEWAY)));
    assert!(keys.contains(&(DIR_REPLY, oss6(), p.ip.source, 80, p.sport, FLOW_GATEWAY)));
    // IPv4 to the same service still goes its way (the IPv4 rule of the policy).
    let mut v4 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4([10, 10, 2, 1], [100, 64, 10, 5], 64)
        .tcp(42001, 80, 1, 64240)
        .syn()
        .write(&mut v4, b"")
        .unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &v4).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(&out[14 + 12..14 + 20], &[10, 10, 0, 202, 100, 64, 10, 5]);
}

#[test]
fn a_reply_from_a_gateway_prefix_is_translated_back_to_the_client() {
    let mut h = gateway_harness("connected");
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp6_to(&h, oss6(), 42100, 80, true))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let fwd = parse_l4(&out);
    let reply = tcp6_via_lb(&h, oss6(), (fwd.ip.source, fwd.sport), b"object");
    let (act, out) = h.run(h.provider.ifindex, &reply).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    assert_eq!(
        (p.eth_src, p.eth_dst),
        (h.consumer.mac, CLIENT_MAC),
        "back to the MAC the client's packet came from"
    );
    assert_eq!((p.ip.source, p.ip.destination), (oss6(), client6()));
    assert_eq!((p.sport, p.dport), (80, 42100));
    assert_eq!(p.ip.hop_limit, 63);
    assert_eq!(p.payload, b"object");
    // The client's next segment keeps the tuple.
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp6_to(&h, oss6(), 42100, 80, false))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_l4(&out);
    assert_eq!((p.ip.source, p.sport), (fwd.ip.source, fwd.sport));
    assert_eq!(p.ip.destination, oss6());
    assert_eq!(h.count(Reason::Forward6ToConsumer), 1);
    assert_eq!(h.count(Reason::Forward6ToService), 1);
    // Something else from the prefix, to the same SNAT tuple, is no flow of ours.
    let stray = tcp6_via_lb(&h, oss6_denied(), (fwd.ip.source, fwd.sport), b"");
    assert_eq!(h.run(h.provider.ifindex, &stray).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), 1, "{:?}", h.active_stats());
}

#[test]
fn the_gateway_policy_drops_ipv6_it_does_not_allow_and_counts_it() {
    let mut h = gateway_harness("connected");
    // Inside the prefix, not allowed by the policy's IPv6 rule: dropped before any flow.
    let (act, _) = h
        .run(
            h.consumer.ifindex,
            &tcp6_to(&h, oss6_denied(), 42200, 80, true),
        )
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(
        h.count(Reason::DropSecurityGroup),
        1,
        "{:?}",
        h.active_stats()
    );
    // A port the service does not publish: dropped before the policy.
    let (act, _) = h
        .run(h.consumer.ifindex, &tcp6_to(&h, oss6(), 42201, 81, true))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoListener), 1, "{:?}", h.active_stats());
    assert!(h.dp.flows6().unwrap().is_empty(), "no flow made");
    // Outside every prefix: not the data path's (the host's isolation drops it).
    let (act, _) = h
        .run(
            h.consumer.ifindex,
            &tcp6_to(&h, v6("fd00:65::5"), 42202, 80, true),
        )
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(
        h.count(Reason::DropHostIsolated),
        1,
        "{:?}",
        h.active_stats()
    );
    // Echo to a routed address is not answered: only an ENI answers ping.
    let (act, _) = h
        .run(h.consumer.ifindex, &echo6(&h, client6(), oss6(), 1, 1, b""))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropIcmp6Unsupported), 1);
}

#[test]
fn ns_for_the_gateway_ipv6_route_target_is_answered_with_an_na() {
    let mut h = gateway_harness("connected");
    let mac = h.consumer.mac;
    let f = ns_frame(
        (CLIENT_MAC, client6()),
        mac,
        gateway6(),
        255,
        Some(CLIENT_MAC),
        false,
    );
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    assert_na(&out, mac, gateway6(), (CLIENT_MAC, client6()), 0x60);
    assert_eq!(h.count(Reason::NdAdvert), 1);
    // Like its IPv4 target, it answers no ping.
    let (act, _) = h
        .run(
            h.consumer.ifindex,
            &echo6(&h, client6(), gateway6(), 1, 1, b""),
        )
        .unwrap();
    assert_eq!(act, XDP_DROP);
}

#[test]
fn icmp6_errors_about_a_gateway_flow_are_translated_both_ways() {
    let mut h = gateway_harness("connected");
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp6_to(&h, oss6(), 42300, 80, true))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let fwd = parse_l4(&out);
    let (snat, port) = (fwd.ip.source, fwd.sport);
    // What we sent, quoted by a router of the provider VPC.
    let mut quoted = Vec::new();
    PacketBuilder::ipv6(snat, oss6(), 63)
        .tcp(port, 80, 1000, 64240)
        .ack(5001)
        .write(&mut quoted, b"0123456789")
        .unwrap();
    let ptb = icmp6_error(
        (LB6_MAC, h.provider.mac),
        (v6("fd00:b::1"), snat),
        2,
        0,
        1280u32.to_be_bytes(),
        &quoted,
    );
    let (act, out) = h.run(h.provider.ifindex, &ptb).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let o = parse_icmp6(&out); // both ICMPv6 checksum checks
    assert_eq!((o.eth_src, o.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!(
        (o.ip.source, o.ip.destination),
        (oss6(), client6()),
        "from the destination the client sent to"
    );
    assert_eq!(&o.msg[4..8], &1280u32.to_be_bytes(), "the MTU");
    let (ih, l4) = quoted6(&o);
    assert_eq!((ih.source, ih.destination), (client6(), oss6()));
    let tcp = etherparse::TcpSlice::from_slice(&l4).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (42300, 80));
    assert!(pseudo_sum_ok_for(ih.source, ih.destination, 6, &l4));
    // The other way: the client says the destination's answer could not be delivered
    // (to the routed address, through the gateway route).
    let mut quoted = Vec::new();
    PacketBuilder::ipv6(oss6(), client6(), 63)
        .tcp(80, 42300, 5000, 64240)
        .ack(1001)
        .write(&mut quoted, b"")
        .unwrap();
    let unreach = icmp6_error(
        (CLIENT_MAC, h.consumer.mac),
        (client6(), oss6()),
        1,
        4,
        [0; 4],
        &quoted,
    );
    let (act, out) = h.run(h.consumer.ifindex, &unreach).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let o = parse_icmp6(&out);
    assert_eq!((o.eth_src, o.eth_dst), (h.provider.mac, LB6_MAC));
    assert_eq!((o.ip.source, o.ip.destination), (snat, oss6()));
    let (ih, l4) = quoted6(&o);
    assert_eq!(
        (ih.source, ih.destination),
        (oss6(), snat),
        "quoted addresses"
    );
    let tcp = etherparse::TcpSlice::from_slice(&l4).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (80, port));
    assert!(pseudo_sum_ok_for(ih.source, ih.destination, 6, &l4));
    assert_eq!(h.count(Reason::Icmp6ErrorTranslated), 2);
}

#[test]
fn a_gateway_flow_stops_both_ways_when_its_endpoint_is_disconnected() {
    let mut h = gateway_harness("connected");
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp6_to(&h, oss6(), 42400, 80, true))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let fwd = parse_l4(&out);
    let reply = tcp6_via_lb(&h, oss6(), (fwd.ip.source, fwd.sport), b"");
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_REDIRECT);
    let ack = tcp6_to(&h, oss6(), 42400, 80, false);
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_REDIRECT);
    h.apply_state(&gateway_dual_state("disconnected")).unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_DROP);
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_DROP);
    assert_eq!(
        h.count(Reason::DropNotConnected),
        2,
        "{:?}",
        h.active_stats()
    );
    // Connected again, the flow goes on.
    h.apply_state(&gateway_dual_state("connected")).unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_REDIRECT);
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_REDIRECT);
}

/// A client packet of flow `sport` to the ENI (TCP: an ACK with data; UDP: to port 53)
/// and the load balancer's answer to its SNAT tuple `to`, both carrying `i`.
fn exchange6(
    h: &mut Harness,
    tcp: bool,
    sport: u16,
    to: ([u8; 16], u16),
    i: usize,
) -> [(u32, Vec<u8>); 2] {
    let body = format!("packet {i}");
    let fwd = exchange_frame6(h, tcp, sport, i);
    let back = if tcp {
        let mut back = Vec::new();
        PacketBuilder::ethernet2(LB6_MAC, h.provider.mac)
            .ipv6(lb6(), to.0, 64)
            .tcp(80, to.1, 5001, 64240)
            .ack(1001 + i as u32)
            .write(&mut back, body.as_bytes())
            .unwrap();
        back
    } else {
        udp6_from_lb(h, to, body.as_bytes())
    };
    [
        h.run(h.consumer.ifindex, &fwd).unwrap(),
        h.run(h.provider.ifindex, &back).unwrap(),
    ]
}

/// The original and reply entries of the IPv6 flow from the client's port `sport`.
fn flow_pair6(
    h: &Harness,
    sport: u16,
) -> (
    privatelink_common::FlowEntry6,
    privatelink_common::FlowEntry6,
) {
    let flows = h.dp.flows6().unwrap();
    let (_, fwd) = flows
        .iter()
        .find(|(k, e)| e.direction == DIR_ORIGINAL && k.src == client6() && k.sport == sport)
        .unwrap_or_else(|| panic!("no flow from client port {sport}"));
    let (_, reply) = flows
        .iter()
        .find(|(k, e)| {
            e.direction == DIR_REPLY
                && k.src == lb6()
                && (k.dst, k.dport) == (fwd.new_src, fwd.new_sport)
        })
        .unwrap_or_else(|| panic!("no reply entry for client port {sport}"));
    (*fwd, *reply)
}

#[test]
fn the_ipv6_established_path_rewrites_exactly_as_the_full_path() {
    for (tcp, sport) in [(true, 40700), (false, 40701)] {
        // Two data paths with the same flow: in `slow` the epoch moves before every
        // packet, so each one takes the full path; `fast` takes the established path once
        // the entry of its direction is stamped.
        let (mut fast, mut slow) = (nat_harness(), nat_harness());
        let start = std::time::Instant::now();
        let open = |h: &mut Harness| {
            let f = if tcp {
                tcp6_segment(h, sport, true, b"")
            } else {
                udp6_to_eni(h, sport, b"open")
            };
            let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
            assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
            let p = parse_l4(&out);
            (p.ip.source, p.sport)
        };
        let (a, b) = (open(&mut fast), open(&mut slow));
        assert_eq!(a, b, "same SNAT tuple in both");
        for i in 0..20 {
            slow.bump_epoch().unwrap();
            let s = exchange6(&mut slow, tcp, sport, b, i);
            let f = exchange6(&mut fast, tcp, sport, a, i);
            for (dir, ((fa, fo), (sa, so))) in f.iter().zip(&s).enumerate() {
                let what = format!("tcp {tcp}, packet {i}, direction {dir}");
                assert_eq!((*fa, *sa), (XDP_REDIRECT, XDP_REDIRECT), "{what}");
                // Checksums by etherparse and by this file's own sum.
                let p = parse_l4(fo);
                assert_eq!(p.payload, format!("packet {i}").as_bytes(), "{what}");
                assert_eq!(p.ip.hop_limit, 63, "{what}: hop limit counted down");
                let own = [fast.provider.mac, fast.consumer.mac][dir];
                assert_eq!(fo[6..12], own, "{what}: source MAC");
                assert_eq!(
                    (&fo[..6], &fo[12..]),
                    (&so[..6], &so[12..]),
                    "{what}: established and full path differ"
                );
            }
        }
        assert_eq!(fast.count(Reason::Forward6ToService), 20);
        assert_eq!(fast.count(Reason::Forward6ToConsumer), 20);
        // The comparison means something only if both paths ran: in `fast` the entries'
        // trace counts the established path's packets (every reply after the first, which
        // stamps the reply entry; every client packet but those due for the once-a-second
        // partner check), in `slow` it never ran.
        let (fwd, reply) = flow_pair6(&fast, sport);
        let rechecks = start.elapsed().as_secs() as u32 + 1;
        assert_eq!(
            reply.fast_packets, 19,
            "tcp {tcp}: replies on the established path"
        );
        assert!(
            (20u32.saturating_sub(rechecks)..=20).contains(&(fwd.fast_packets as u32)),
            "tcp {tcp}: client packets on the established path: {}",
            fwd.fast_packets
        );
        let epoch = fast.dp.epoch().unwrap();
        assert_eq!((fwd.epoch, reply.epoch), (epoch, epoch), "stamped");
        let (sfwd, sreply) = flow_pair6(&slow, sport);
        assert_eq!(
            (sfwd.fast_packets, sreply.fast_packets),
            (0, 0),
            "tcp {tcp}: the full path only"
        );
        // Both paths tracked the flow alike, and counted it for the endpoint alike.
        assert_eq!(
            (fwd.tcp_flags, reply.tcp_flags),
            (sfwd.tcp_flags, sreply.tcp_flags),
            "tcp {tcp}: tracked state"
        );
        assert_eq!(
            slot_counters(&mut fast),
            slot_counters(&mut slow),
            "tcp {tcp}: endpoint counters"
        );
        // A packet of the stamped flow that the packet's own checks refuse is the full
        // path's to refuse: hop limit 1, and (UDP) a zero checksum, which IPv6 forbids.
        let mut last_hop = exchange_frame6(&fast, tcp, sport, 20);
        last_hop[14 + 7] = 1;
        assert_eq!(
            fast.run(fast.consumer.ifindex, &last_hop).unwrap().0,
            XDP_DROP,
            "tcp {tcp}: hop limit 1"
        );
        assert_eq!(fast.count(Reason::DropHopLimitExceeded), 1);
        if !tcp {
            let mut zero = exchange_frame6(&fast, tcp, sport, 21);
            zero[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
            assert_eq!(
                fast.run(fast.consumer.ifindex, &zero).unwrap().0,
                XDP_DROP,
                "zero UDP checksum"
            );
            assert_eq!(fast.count(Reason::DropUdp6ZeroChecksum), 1);
        }
        let (after, _) = flow_pair6(&fast, sport);
        assert_eq!(
            after.fast_packets, fwd.fast_packets,
            "tcp {tcp}: none of those"
        );
    }
}

/// The client's packet of flow `sport` that `exchange6` sends in round `i`.
fn exchange_frame6(h: &Harness, tcp: bool, sport: u16, i: usize) -> Vec<u8> {
    let body = format!("packet {i}");
    if tcp {
        tcp6_segment(h, sport, false, body.as_bytes())
    } else {
        udp6_to_eni(h, sport, body.as_bytes())
    }
}
