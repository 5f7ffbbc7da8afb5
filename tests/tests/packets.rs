//! Golden-packet tests: frames built with etherparse go through the loaded XDP program
//! (BPF_PROG_TEST_RUN); the output is parsed by etherparse again and every rewritten
//! field and checksum is checked against an independent computation.

use etherparse::{
    Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, PacketBuilder, SlicedPacket,
    TransportSlice, icmpv4::DestUnreachableHeader,
};
use privatelink_common::{DIR_ORIGINAL, DIR_REPLY, FlowEntry, Reason, hash::mix32};
use privatelink_tests::{
    frames::{
        CLIENT, CLIENT_MAC, ENI, LB, SNAT, arp_request, parse_checked, tcp_ack_from_lb,
        tcp_from_lb, tcp_to_eni, udp_to_eni,
    },
    lab::{connected_endpoint, packet_state, two_zone_packet_state},
    reference::Reference,
    scale::ktime_ns,
    testrun::{Harness, LB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use privatelink_user::model::numeric_id;

fn harness() -> Harness {
    Harness::new(&packet_state()).expect("harness")
}

/// Sends a SYN from the client and returns the SNAT tuple it was given.
fn open_flow(h: &mut Harness, sport: u16) -> ([u8; 4], u16) {
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(h, sport, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    (p.ip.source, p.sport)
}

#[test]
fn syn_to_eni_is_full_natted_to_the_load_balancer() {
    let mut h = harness();
    let frame = tcp_to_eni(&h, 40000, true, b"");
    let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!(
        p.eth_src, h.provider.mac,
        "leaves by the provider-side interface"
    );
    assert_eq!(p.eth_dst, LB_MAC, "to the load balancer's MAC");
    assert!(
        SNAT.contains(&p.ip.source),
        "source from the SNAT pool: {:?}",
        p.ip.source
    );
    assert_eq!(p.ip.destination, LB);
    assert_eq!(p.ip.time_to_live, 63);
    assert!(p.sport >= 1024, "SNAT port {}", p.sport);
    assert_eq!(p.dport, 80);
    assert_eq!(out.len(), frame.len());
    assert_eq!(h.count(Reason::ForwardNewFlow), 1);

    // Both directions are in conntrack.
    let flows = h.dp.flows().unwrap();
    assert_eq!(flows.len(), 2);
    let fwd = flows
        .iter()
        .find(|(_, e)| e.direction == DIR_ORIGINAL)
        .unwrap();
    assert_eq!(
        (fwd.0.src, fwd.0.dst, fwd.0.sport, fwd.0.dport),
        (CLIENT, ENI, 40000, 80)
    );
    let rev = flows
        .iter()
        .find(|(_, e)| e.direction == DIR_REPLY)
        .unwrap();
    assert_eq!(
        (rev.0.src, rev.0.dst, rev.0.sport, rev.0.dport),
        (LB, p.ip.source, 80, p.sport)
    );
}

#[test]
fn reply_is_translated_back_and_flow_is_stable() {
    let mut h = harness();
    let (snat, port) = open_flow(&mut h, 40001);
    let reply = tcp_from_lb(&h, snat, port, b"hello");
    let (act, out) = h.run(h.provider.ifindex, &reply).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (ENI, CLIENT));
    assert_eq!((p.sport, p.dport), (80, 40001));
    assert_eq!(p.ip.time_to_live, 63);
    assert_eq!(p.payload, b"hello");

    // The next client packet of the flow keeps its tuple.
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 40001, false, b"GET /"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!((p.ip.source, p.sport), (snat, port));
    assert_eq!(p.payload, b"GET /");
    assert_eq!(h.count(Reason::ForwardToConsumer), 1);
    assert_eq!(h.count(Reason::ForwardToService), 1);
}

#[test]
fn every_flow_gets_its_own_snat_tuple() {
    let mut h = harness();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 30000..30200 {
        assert!(
            seen.insert(open_flow(&mut h, sport)),
            "tuple reused for client port {sport}"
        );
    }
    assert_eq!(h.count(Reason::ForwardNewFlow), 200);
}

#[test]
fn reply_without_a_flow_is_dropped() {
    let mut h = harness();
    let (act, _) = h
        .run(h.provider.ifindex, &tcp_from_lb(&h, SNAT[0], 5555, b""))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), 1);
}

#[test]
fn udp_is_natted_with_a_valid_checksum() {
    let mut h = harness();
    let (act, out) = h
        .run(h.consumer.ifindex, &udp_to_eni(&h, 5353, b"query", false))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_ne!(u16::from_be_bytes([out[40], out[41]]), 0);
    assert!(SNAT.contains(&p.ip.source));
    assert_eq!((p.ip.destination, p.dport), (LB, 53));
    assert_eq!(p.payload, b"query");
}

#[test]
fn udp_checksum_zero_stays_zero() {
    let mut h = harness();
    let (act, out) = h
        .run(h.consumer.ifindex, &udp_to_eni(&h, 5354, b"nocsum", true))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!(
        &out[40..42],
        &[0, 0],
        "a zero UDP checksum means none and stays zero"
    );
    assert!(SNAT.contains(&p.ip.source));
}

#[test]
fn icmp_echo_to_the_eni_is_answered_in_xdp() {
    let mut h = harness();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(0x1234, 7)
        .write(&mut frame, b"ping payload")
        .unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_TX);
    let p = parse_checked(&out);
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (ENI, CLIENT));
    let s = SlicedPacket::from_ethernet(&out).unwrap();
    match s.transport {
        Some(TransportSlice::Icmpv4(i)) => {
            assert_eq!(
                i.icmp_type(),
                Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 0x1234, seq: 7 })
            );
            assert_eq!(i.payload(), b"ping payload");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.count(Reason::IcmpEchoReply), 1);
}

/// The provider side reports "fragmentation needed" for a NATed packet: the consumer must
/// get it about its own packet, with the MTU kept, so PMTU discovery works.
#[test]
fn icmp_frag_needed_from_the_provider_side_is_translated() {
    let mut h = harness();
    let (snat, port) = open_flow(&mut h, 40100);
    // The quoted packet: what we sent to the LB (full TCP header so its checksum is quoted).
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(snat, LB, 63)
        .tcp(port, 80, 1000, 64240)
        .ack(5000)
        .write(&mut quoted, &[])
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4([10, 10, 0, 1], snat, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut frame, &quoted)
        .unwrap();
    let (act, out) = h.run(h.provider.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out); // outer IP + ICMP checksums
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (ENI, CLIENT));
    let (kind, ih, l4) = quoted_by(&out);
    assert_eq!(
        kind,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400
        })
    );
    // The quoted packet is now the client's own packet, with valid checksums.
    assert_eq!((ih.source, ih.destination), (CLIENT, ENI));
    let tcp = etherparse::TcpSlice::from_slice(&l4).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (40100, 80));
    assert_eq!(
        tcp.checksum(),
        tcp.to_header().calc_checksum_ipv4(&ih, &[]).unwrap(),
        "inner TCP checksum"
    );
    assert_eq!(h.count(Reason::IcmpErrorTranslated), 1);
}

/// The client reports "port unreachable" for a UDP reply: the provider's load balancer
/// must get it about the packet it sent.
#[test]
fn icmp_port_unreachable_from_the_consumer_is_translated() {
    let mut h = harness();
    client_icmp_about_a_udp_reply(
        &mut h,
        6000,
        63,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
    );
}

/// The client sends ICMP `kind` about a UDP reply (LB:53 → client:`sport`, as the client
/// saw it: ENI → client, TTL `quoted_ttl`) of the flow it opened from `sport`: the
/// provider's load balancer must get it about the packet it sent (SNAT address and port),
/// quoted UDP checksum included.
fn client_icmp_about_a_udp_reply(h: &mut Harness, sport: u16, quoted_ttl: u8, kind: Icmpv4Type) {
    let (act, out) = h
        .run(h.consumer.ifindex, &udp_to_eni(h, sport, b"q", false))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let fwd = parse_checked(&out);
    let (snat, port) = (fwd.ip.source, fwd.sport);
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(ENI, CLIENT, quoted_ttl)
        .udp(53, sport)
        .write(&mut quoted, b"answer")
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4(kind.clone())
        .write(&mut frame, &quoted)
        .unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!((p.eth_src, p.eth_dst), (h.provider.mac, LB_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (snat, LB));
    let (got, ih, l4) = quoted_by(&out);
    assert_eq!(got, kind);
    assert_eq!((ih.source, ih.destination), (LB, snat));
    let udp = etherparse::UdpSlice::from_slice(&l4).unwrap();
    assert_eq!((udp.source_port(), udp.destination_port()), (53, port));
    assert_eq!(
        udp.checksum(),
        udp.to_header()
            .calc_checksum_ipv4(&ih, udp.payload())
            .unwrap()
    );
}

#[test]
fn icmp_error_for_an_unknown_flow_is_dropped() {
    let mut h = harness();
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(SNAT[0], LB, 63)
        .tcp(4444, 80, 1, 1)
        .write(&mut quoted, &[])
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4([10, 10, 0, 1], SNAT[0], 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Host,
        ))
        .write(&mut frame, &quoted)
        .unwrap();
    let (act, _) = h.run(h.provider.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropIcmpNoFlow), 1);
}

#[test]
fn ttl_one_is_dropped_and_counted() {
    let mut h = harness();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 1)
        .tcp(40200, 80, 1, 1)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    let (act, _) = h.run(h.consumer.ifindex, &v).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropTtlExceeded), 1);
    assert!(
        h.dp.flows().unwrap().is_empty(),
        "no flow for a dropped packet"
    );
}

#[test]
fn not_whitelisted_is_dropped_and_counted() {
    let mut h = Harness::new(&packet_state().replace("whitelist = [\"acct-a\"]", "whitelist = []"))
        .unwrap();
    let (act, _) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 40300, true, b""))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropNotWhitelisted), 1);
}

/// Seed 002: a service is offered to its own account without a whitelist entry. The
/// provider's endpoint (its account owns the consumer VPC too, the whitelist is empty)
/// forwards; a third account's, neither the owner nor whitelisted, is dropped.
#[test]
fn own_account_endpoint_forwards_and_a_strangers_is_dropped() {
    let own = packet_state()
        .replace("whitelist = [\"acct-a\"]", "whitelist = []")
        .replace("account = \"acct-a\"", "account = \"acct-b\"");
    let mut h = Harness::new(&own).unwrap();
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 40350, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "the owner's own endpoint forwards");
    let p = parse_checked(&out);
    assert_eq!((p.ip.destination, p.dport), (LB, 80));
    assert!(SNAT.contains(&p.ip.source));
    assert_eq!(h.count(Reason::ForwardNewFlow), 1);
    assert_eq!(h.count(Reason::DropNotWhitelisted), 0);

    let stranger = format!(
        "[[accounts]]\nid = \"acct-c\"\n{}",
        packet_state()
            .replace("whitelist = [\"acct-a\"]", "whitelist = []")
            .replace("account = \"acct-a\"", "account = \"acct-c\"")
    );
    let mut h = Harness::new(&stranger).unwrap();
    let (act, _) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 40351, true, b""))
        .unwrap();
    assert_eq!(act, XDP_DROP, "neither the owner nor whitelisted");
    assert_eq!(h.count(Reason::DropNotWhitelisted), 1);
    assert!(
        h.dp.flows().unwrap().is_empty(),
        "no flow for a dropped SYN"
    );
}

#[test]
fn endpoint_not_connected_is_dropped_and_counted() {
    for state in ["pending", "rejected", "disconnected"] {
        let mut h = Harness::new(&packet_state().replace(
            "connection = \"connected\"",
            &format!("connection = \"{state}\""),
        ))
        .unwrap();
        let (act, _) = h
            .run(h.consumer.ifindex, &tcp_to_eni(&h, 40400, true, b""))
            .unwrap();
        assert_eq!(act, XDP_DROP, "{state}");
        assert_eq!(h.count(Reason::DropNotConnected), 1, "{state}");
    }
}

/// A client packet and a provider reply of the flow opened from `sport`, with payloads.
fn exchange(h: &mut Harness, sport: u16, snat: ([u8; 4], u16), i: usize) -> [(u32, Vec<u8>); 2] {
    let body = format!("packet {i}");
    let fwd = h
        .run(
            h.consumer.ifindex,
            &tcp_to_eni(h, sport, false, body.as_bytes()),
        )
        .unwrap();
    let back = h
        .run(
            h.provider.ifindex,
            &tcp_from_lb(h, snat.0, snat.1, body.as_bytes()),
        )
        .unwrap();
    [fwd, back]
}

/// The two entries (original, reply) of the flow from the client's port `sport`: which
/// of them the established path forwarded (`fast_packets`), under which epoch.
fn flow_pair(h: &Harness, sport: u16) -> (FlowEntry, FlowEntry) {
    let flows = h.dp.flows().unwrap();
    let (key, fwd) = flows
        .iter()
        .find(|(k, e)| e.direction == DIR_ORIGINAL && k.src == CLIENT && k.sport == sport)
        .unwrap_or_else(|| panic!("no flow from client port {sport}"));
    let (_, reply) = flows
        .iter()
        .find(|(k, _)| *k == fwd.partner(key))
        .unwrap_or_else(|| panic!("no reply entry for client port {sport}"));
    (*fwd, *reply)
}

/// Opens the flow from the client's port `sport` and exchanges two packets each way: the
/// flow is established both ways (the second exchange runs on the established path).
/// Returns its SNAT tuple.
fn established_flow(h: &mut Harness, sport: u16) -> ([u8; 4], u16) {
    let snat = open_flow(h, sport);
    for i in 0..2 {
        for (act, _) in exchange(h, sport, snat, i) {
            assert_eq!(act, XDP_REDIRECT);
        }
    }
    snat
}

/// The drops counted so far, every reason together.
fn drops(h: &Harness) -> u64 {
    let s = h.stats().unwrap();
    s.iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn the_established_path_rewrites_exactly_as_the_full_path() {
    // Two data paths with the same flow: in `slow` the epoch moves before every packet, so
    // each one takes the full path; `fast` takes the established path from the second on.
    let (mut fast, mut slow) = (harness(), harness());
    let start = std::time::Instant::now();
    let a = open_flow(&mut fast, 40500);
    let b = open_flow(&mut slow, 40500);
    assert_eq!(a, b, "same SNAT tuple in both");
    for i in 0..20 {
        slow.bump_epoch().unwrap();
        let s = exchange(&mut slow, 40500, b, i);
        let f = exchange(&mut fast, 40500, a, i);
        for (dir, ((fa, fo), (sa, so))) in f.iter().zip(&s).enumerate() {
            assert_eq!(
                (*fa, *sa),
                (XDP_REDIRECT, XDP_REDIRECT),
                "packet {i} dir {dir}"
            );
            parse_checked(fo);
            // The source MAC is each namespace's own interface; everything else is equal.
            let own = [fast.provider.mac, fast.consumer.mac][dir];
            assert_eq!(fo[6..12], own, "packet {i} dir {dir}: source MAC");
            assert_eq!(
                (&fo[..6], &fo[12..]),
                (&so[..6], &so[12..]),
                "packet {i} dir {dir}: established and full path differ"
            );
        }
    }
    assert_eq!(fast.count(Reason::ForwardToService), 20);
    assert_eq!(fast.count(Reason::ForwardToConsumer), 20);
    // The comparison above means something only if the two paths did run: in `fast` the
    // entries' trace counts the established path's packets (every reply after the first,
    // which stamps the reply entry; every client packet but those due for the
    // once-a-second partner check), in `slow` it never ran.
    let (fwd, reply) = flow_pair(&fast, 40500);
    let rechecks = start.elapsed().as_secs() as u32 + 1;
    assert_eq!(reply.fast_packets, 19, "replies on the established path");
    assert!(
        (20u32.saturating_sub(rechecks)..=20).contains(&(fwd.fast_packets as u32)),
        "client packets on the established path: {}",
        fwd.fast_packets
    );
    let epoch = fast.dp.epoch().unwrap();
    assert_eq!(
        (fwd.epoch, reply.epoch),
        (epoch, epoch),
        "stamped with the epoch"
    );
    let (fwd, reply) = flow_pair(&slow, 40500);
    assert_eq!(
        (fwd.fast_packets, reply.fast_packets),
        (0, 0),
        "the full path only"
    );
}

#[test]
fn a_state_change_reaches_established_flows() {
    let mut h = harness();
    let snat = established_flow(&mut h, 40600);
    // A change that does not concern the flow (one more SNAT address): the epoch moves,
    // the flow is checked again and keeps going.
    let epoch = h.dp.epoch().unwrap();
    h.apply_state(&packet_state().replace(
        r#"snat = ["10.10.0.200", "10.10.0.201"]"#,
        r#"snat = ["10.10.0.200", "10.10.0.201", "10.10.0.202"]"#,
    ))
    .unwrap();
    assert_ne!(h.dp.epoch().unwrap(), epoch, "a map change moves the epoch");
    let before = flow_pair(&h, 40600);
    assert!(
        before.1.fast_packets > 0,
        "the second exchange's reply took the established path: {before:?}"
    );
    for (act, out) in exchange(&mut h, 40600, snat, 2) {
        assert_eq!(act, XDP_REDIRECT);
        parse_checked(&out);
    }
    // That exchange took the full path (the established one stopped at the stale epoch)
    // and stamped both entries with the new epoch; the next one is established again.
    let (fwd, reply) = flow_pair(&h, 40600);
    let epoch = h.dp.epoch().unwrap();
    assert_eq!((fwd.epoch, reply.epoch), (epoch, epoch));
    assert_eq!(
        (fwd.fast_packets, reply.fast_packets),
        (before.0.fast_packets, before.1.fast_packets),
        "no packet on the established path under a stale epoch"
    );
    // The client packet takes it too unless it is due for its once-a-second partner
    // check (a stalled test thread); the reply has no such check.
    let due = privatelink_common::checked_elapsed_ns(ktime_ns(), fwd.checked) > 900_000_000;
    exchange(&mut h, 40600, snat, 2);
    let (fwd, reply) = flow_pair(&h, 40600);
    assert_eq!(reply.fast_packets, before.1.fast_packets + 1);
    if !due {
        assert_eq!(fwd.fast_packets, before.0.fast_packets + 1);
    }
    // The provider rejects the connection: both directions stop at once.
    h.apply_state(
        &packet_state().replace("connection = \"connected\"", "connection = \"rejected\""),
    )
    .unwrap();
    let [(fwd, _), (back, _)] = exchange(&mut h, 40600, snat, 3);
    assert_eq!((fwd, back), (XDP_DROP, XDP_DROP));
    assert_eq!(h.count(Reason::DropNotConnected), 2);
    // Accepted again: the flow's entries are still there and carry it on.
    h.apply_state(&packet_state()).unwrap();
    for (act, _) in exchange(&mut h, 40600, snat, 4) {
        assert_eq!(act, XDP_REDIRECT);
    }
    // The consumer account leaves the whitelist: the same.
    h.apply_state(&packet_state().replace("whitelist = [\"acct-a\"]", "whitelist = []"))
        .unwrap();
    let [(fwd, _), (back, _)] = exchange(&mut h, 40600, snat, 5);
    assert_eq!((fwd, back), (XDP_DROP, XDP_DROP));
    assert_eq!(h.count(Reason::DropNotWhitelisted), 2);
}

/// Frames on a VPC interface that are none of the data path's: IPv4 to an address the
/// forwarder does not serve, IPv6, and ARP for another address.
fn unrelated_frames(h: &Harness) -> [Vec<u8>; 3] {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, [10, 10, 2, 50], 64)
        .tcp(1, 80, 1, 1)
        .write(&mut v, b"x")
        .unwrap();
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6([0xfe; 16], [0xfd; 16], 64)
        .udp(1, 2)
        .write(&mut v6, b"y")
        .unwrap();
    [v, v6, arp_request(CLIENT_MAC, CLIENT, [10, 10, 2, 99])]
}

/// Applies `state` the way the daemon does and returns the map writes it took.
fn apply_counted(h: &mut Harness, state: &str) -> (usize, usize) {
    use privatelink_user::{dataplane, desired, model::parse_state};
    let s = parse_state(state).unwrap();
    let want = desired::compute(&s, dataplane::resolve_link, &desired::Unhealthy::new()).unwrap();
    let r = h.dp.apply(&want).unwrap();
    (r.upserts, r.deletes)
}

/// Adding a zone to an endpoint and removing it again writes only that zone's ENI entry:
/// an established flow through the other zone's ENI keeps its SNAT tuple and carries on
/// through both changes, without a dropped packet; the new ENI forwards to its own
/// zone's load balancer while it exists.
#[test]
fn zone_add_and_remove_leave_the_other_zones_flows_alone() {
    let mut h = Harness::new(&two_zone_packet_state(false)).unwrap();
    h.dp.set_neighbor(
        privatelink_user::model::numeric_id("vpc-b"),
        [10, 10, 0, 11],
        LB_MAC,
    )
    .unwrap();
    let snat = open_flow(&mut h, 40650);
    for i in 0..2 {
        for (act, _) in exchange(&mut h, 40650, snat, i) {
            assert_eq!(act, XDP_REDIRECT);
        }
    }
    let flows = h.dp.flows().unwrap().len();
    let second_eni = [10, 10, 9, 5];
    let syn_to_second = |h: &Harness, sport: u16| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
            .ipv4(CLIENT, second_eni, 64)
            .tcp(sport, 80, 1000, 64240)
            .syn()
            .write(&mut v, b"")
            .unwrap();
        v
    };
    // Add: two entries written (the new ENI, and the record of its counter slot), nothing
    // deleted.
    assert_eq!(apply_counted(&mut h, &two_zone_packet_state(true)), (2, 0));
    for i in 2..4 {
        for (act, out) in exchange(&mut h, 40650, snat, i) {
            assert_eq!(act, XDP_REDIRECT, "the zone-a flow carries on");
            parse_checked(&out);
        }
    }
    let fwd = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 40650, false, b"x"))
        .unwrap();
    assert_eq!(
        (parse_checked(&fwd.1).ip.source, parse_checked(&fwd.1).sport),
        snat,
        "same SNAT tuple"
    );
    let (act, out) = h
        .run(h.consumer.ifindex, &syn_to_second(&h, 40651))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "the new ENI forwards");
    assert_eq!(
        parse_checked(&out).ip.destination,
        [10, 10, 0, 11],
        "to zone-b's LB"
    );
    assert_eq!(h.dp.flows().unwrap().len(), flows + 2);
    // Remove: two entries deleted (the ENI and its slot record), nothing rewritten; the
    // zone-a flow still carries on.
    assert_eq!(apply_counted(&mut h, &two_zone_packet_state(false)), (0, 2));
    for i in 4..6 {
        for (act, _) in exchange(&mut h, 40650, snat, i) {
            assert_eq!(act, XDP_REDIRECT, "the zone-a flow carries on");
        }
    }
    let (act, _) = h
        .run(h.consumer.ifindex, &syn_to_second(&h, 40652))
        .unwrap();
    assert_ne!(act, XDP_REDIRECT, "the removed ENI forwards nothing");
    assert_eq!(h.count(Reason::DropNotWhitelisted), 0);
    assert_eq!(h.count(Reason::DropNotConnected), 0);
}

#[test]
fn unrelated_traffic_never_reaches_the_host_on_an_isolated_interface() {
    let mut h = harness();
    for f in unrelated_frames(&h) {
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "{:?}", h.active_stats());
    }
    assert_eq!(h.count(Reason::DropHostIsolated), 3);
    assert_eq!(h.count(Reason::PassUnrelated), 0);
    assert_eq!(h.count(Reason::ArpPass), 0);
    // An interface the daemon did not attach: pass.
    let (act, _) = h.run(1, &tcp_to_eni(&h, 1, true, b"")).unwrap();
    assert_eq!(act, XDP_PASS);
    assert_eq!(h.count(Reason::PassNotAttached), 1);
}

#[test]
fn the_host_traffic_switch_passes_unrelated_traffic_untouched() {
    let mut h = Harness::new(&packet_state().replace(
        "interface = \"fc0\"",
        "interface = \"fc0\"\nhost_traffic = true",
    ))
    .unwrap();
    for f in unrelated_frames(&h) {
        let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!((act, &out), (XDP_PASS, &f));
    }
    assert_eq!(h.count(Reason::PassUnrelated), 2);
    assert_eq!(h.count(Reason::ArpPass), 1);
    assert_eq!(h.count(Reason::DropHostIsolated), 0);
    // The provider's interface has no such switch: still isolated.
    let mut f = unrelated_frames(&h)[0].clone();
    f[0..6].copy_from_slice(&h.provider.mac);
    assert_eq!(h.run(h.provider.ifindex, &f).unwrap().0, XDP_DROP);
    // The endpoint still works as before.
    let (act, _) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 40600, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
}

/// The data path keeps each interface's settings per CPU, stamped with the epoch: a
/// change the daemon applies holds from the next packet on, both ways.
#[test]
fn an_interface_setting_holds_from_the_next_packet() {
    // One CPU for every run: each CPU keeps its own copy.
    privatelink_tests::throughput::pin_to_last_cpu();
    let mut h = harness();
    let open = packet_state().replace(
        "interface = \"fc0\"",
        "interface = \"fc0\"\nhost_traffic = true",
    );
    let f = unrelated_frames(&h)[0].clone();
    for (state, want) in [
        (packet_state(), XDP_DROP),
        (open.clone(), XDP_PASS),
        (packet_state(), XDP_DROP),
        (open, XDP_PASS),
    ] {
        h.apply_state(&state).unwrap();
        for _ in 0..3 {
            assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, want);
        }
    }
    assert_eq!(h.count(Reason::DropHostIsolated), 6);
    assert_eq!(h.count(Reason::PassUnrelated), 6);
}

#[test]
fn ipv4_options_are_kept_and_natted() {
    let mut h = harness();
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT, ENI).unwrap();
    ip.options = Ipv4Options::from([1u8, 1, 1, 0]); // NOP NOP NOP EOL
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40500, 80, 1, 1)
        .syn()
        .write(&mut v, b"")
        .unwrap();
    assert_eq!(v[14] & 0x0f, 6, "IHL 6");
    let (act, out) = h.run(h.consumer.ifindex, &v).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!(p.ip.options.as_slice(), &[1, 1, 1, 0]);
    assert_eq!((p.ip.destination, p.dport), (LB, 80));
}

/// Policy: fragments addressed to an ENI are dropped and counted (NAT needs the ports,
/// which only the first fragment has; TCP's PMTU discovery avoids fragments). Fragments
/// of unrelated traffic pass to the kernel.
#[test]
fn fragments_to_an_eni_are_dropped() {
    let mut h = harness();
    for (flags_hi, flags_lo) in [(0x20u8, 0u8), (0x00, 0x10), (0x20, 0x10)] {
        let mut v = tcp_to_eni(&h, 40600, true, b"");
        v[14 + 6] = flags_hi;
        v[14 + 7] = flags_lo;
        fix_ip_checksum(&mut v);
        let (act, _) = h.run(h.consumer.ifindex, &v).unwrap();
        assert_eq!(act, XDP_DROP);
    }
    assert_eq!(h.count(Reason::DropFragment), 3);
    // DF alone is not a fragment.
    let mut v = tcp_to_eni(&h, 40601, true, b"");
    v[14 + 6] = 0x40;
    fix_ip_checksum(&mut v);
    assert_eq!(h.run(h.consumer.ifindex, &v).unwrap().0, XDP_REDIRECT);
}

/// Recomputes the IPv4 header checksum of an edited frame, with etherparse (not the data
/// path's own checksum code).
fn fix_ip_checksum(v: &mut [u8]) {
    let ihl = (v[14] & 0x0f) as usize * 4;
    let (mut ip, _) = Ipv4Header::from_slice(&v[14..14 + ihl]).expect("an IPv4 header");
    ip.header_checksum = ip.calc_header_checksum();
    v[14..14 + ihl].copy_from_slice(&ip.to_bytes());
}

#[test]
fn bad_ip_checksum_is_dropped() {
    let mut h = harness();
    let mut v = tcp_to_eni(&h, 40700, true, b"");
    v[24] ^= 0x55;
    let (act, _) = h.run(h.consumer.ifindex, &v).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropBadIpChecksum), 1);
}

#[test]
fn every_truncation_of_a_tcp_frame_is_dropped_and_counted() {
    let mut h = harness();
    let full = tcp_to_eni(&h, 40800, true, b"0123456789");
    // The kernel never hands XDP a frame shorter than an Ethernet header (test_run refuses
    // one with EINVAL); from 14 bytes on, every cut must be dropped.
    for len in 0..14 {
        assert!(
            h.run(h.consumer.ifindex, &full[..len]).is_err(),
            "kernel refuses {len} bytes"
        );
    }
    for len in 14..full.len() {
        let (act, _) = h.run(h.consumer.ifindex, &full[..len]).unwrap();
        assert_eq!(act, XDP_DROP, "truncated to {len} bytes");
    }
    assert_eq!(drops(&h), full.len() as u64 - 14, "{:?}", h.stats());
    assert!(h.count(Reason::DropTruncatedIp) > 0);
    assert!(h.dp.flows().unwrap().is_empty());
    // A header claiming less than the L4 header needs: the IP packet itself is complete.
    let mut short = tcp_to_eni(&h, 40801, true, b"");
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ip_checksum(&mut short);
    assert_eq!(h.run(h.consumer.ifindex, &short).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropTruncatedL4), 1);
    // Ethernet padding after the IP packet is fine.
    let mut padded = tcp_to_eni(&h, 40802, true, b"");
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(h.run(h.consumer.ifindex, &padded).unwrap().0, XDP_REDIRECT);
}

/// The established path is tried before the full path validates the IPv4 header: what it
/// must not take from an established flow (a cut frame, another version, a header of
/// other than 20 bytes, a length past the frame or short of its own header) goes on to
/// the full path, which drops and counts it as it would any packet's, or forwards it
/// (options, Ethernet padding) as it would any flow's. Replies: their direction has no
/// once-a-second partner check, so every good one takes the established path.
#[test]
fn malformed_frames_of_an_established_flow_are_judged_as_any_frame() {
    let mut h = harness();
    let snat = established_flow(&mut h, 40850);
    let fast = |h: &Harness| flow_pair(h, 40850).1.fast_packets;
    let before = fast(&h);
    let full = tcp_ack_from_lb(&h, snat.0, snat.1, b"0123456789");
    let from_lb = h.provider.ifindex;
    assert_eq!(h.run(from_lb, &full).unwrap().0, XDP_REDIRECT);
    assert_eq!(fast(&h), before + 1, "the flow is on the established path");
    for len in 14..full.len() {
        let (act, _) = h.run(from_lb, &full[..len]).unwrap();
        assert_eq!(act, XDP_DROP, "truncated to {len} bytes");
    }
    let cut = full.len() as u64 - 14;
    assert_eq!(drops(&h), cut);
    assert_eq!(h.count(Reason::DropTruncatedIp), cut);
    let edited = |byte: usize, value: &[u8], checksum: bool| {
        let mut v = full.clone();
        v[byte..byte + value.len()].copy_from_slice(value);
        if checksum {
            fix_ip_checksum(&mut v);
        }
        v
    };
    let bad_header = [
        ("version 6", edited(14, &[0x65], false)),
        ("a 16-byte header", edited(14, &[0x44], false)),
        (
            "a length short of the header",
            edited(16, &19u16.to_be_bytes(), true),
        ),
    ];
    for (what, v) in &bad_header {
        assert_eq!(h.run(from_lb, v).unwrap().0, XDP_DROP, "{what}");
    }
    assert_eq!(h.count(Reason::DropBadIpHeader), 3);
    let long = edited(16, &(full.len() as u16 - 13).to_be_bytes(), true);
    assert_eq!(h.run(from_lb, &long).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropTruncatedIp), cut + 1);
    // A length that holds the IP header but not the TCP header: the full path's L4 check.
    let short = edited(16, &30u16.to_be_bytes(), true);
    assert_eq!(h.run(from_lb, &short).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropTruncatedL4), 1);
    assert_eq!(
        fast(&h),
        before + 1,
        "nothing malformed on the established path"
    );
    // IP options: the full path forwards them (the established path takes 20-byte headers).
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, LB, snat.0).unwrap();
    ip.options = Ipv4Options::from([1u8, 1, 1, 0]);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(80, snat.1, 7001, 65000)
        .ack(1001)
        .write(&mut v, b"0123456789")
        .unwrap();
    let (act, out) = h.run(from_lb, &v).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!(
        (p.ip.options.as_slice(), p.ip.destination, p.dport),
        (&[1u8, 1, 1, 0][..], CLIENT, 40850)
    );
    assert_eq!(fast(&h), before + 1, "options take the full path");
    // Ethernet padding: the established path's.
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 6]);
    let (act, out) = h.run(from_lb, &padded).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out[..out.len() - 6]);
    assert_eq!((p.ip.destination, p.dport), (CLIENT, 40850));
    assert_eq!(fast(&h), before + 2, "padding on the established path");
}

/// L4 headers that disagree with the packet are not rewritten (found by the fuzzer: a
/// UDP length past the IP packet went through NAT).
#[test]
fn l4_headers_that_disagree_with_the_packet_are_dropped() {
    let mut h = harness();
    let udp_len_off = 14 + 20 + 4;
    for (what, len) in [("past the packet", 4109u16), ("shorter than its header", 7)] {
        let mut f = udp_to_eni(&h, 5400, b"query", false);
        f[udp_len_off..udp_len_off + 2].copy_from_slice(&len.to_be_bytes());
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "UDP length {what}");
    }
    // A shorter UDP length than the IP payload (trailing bytes) is allowed.
    let mut f = udp_to_eni(&h, 5401, b"query", true);
    f[udp_len_off..udp_len_off + 2].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_REDIRECT);
    let doff = 14 + 20 + 12;
    for (what, words) in [("below 5 words", 4u8), ("past the packet", 15)] {
        let mut f = tcp_to_eni(&h, 40900, true, b"");
        f[doff] = words << 4;
        let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_DROP, "TCP data offset {what}");
    }
    assert_eq!(h.count(Reason::DropTruncatedL4), 4);
    assert!(h.dp.flows().unwrap().len() == 2, "only the valid UDP flow");
}

#[test]
fn garbage_is_dropped_or_passed_never_forwarded() {
    let mut h = harness();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 3000;
    for i in 0..n {
        let len = 14 + (next() % 200) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            v[12] = 0x08; // IPv4 ...
            v[13] = if i % 4 == 0 { 0x00 } else { 0x06 }; // ... or ARP
            if len > 34 && i % 8 == 0 {
                v[30..34].copy_from_slice(&ENI); // aimed at the ENI
            }
        }
        let ifindex = if i % 3 == 0 {
            h.provider.ifindex
        } else {
            h.consumer.ifindex
        };
        let (act, _) = h.run(ifindex, &v).unwrap();
        assert!(
            act == XDP_DROP || act == XDP_PASS || act == XDP_TX,
            "frame {i} ({v:02x?}) got action {act}"
        );
        if act == XDP_TX {
            // Only a well-formed ARP request for one of our addresses is answered.
            assert_eq!(&v[12..14], &[0x08, 0x06]);
        }
    }
    let total: u64 = h.stats().unwrap().values().sum();
    assert_eq!(total, n, "every frame is counted exactly once");
}

#[test]
fn arp_for_eni_and_snat_addresses_is_answered() {
    let mut h = harness();
    for (ifindex, mac, target, asker) in [
        (h.consumer.ifindex, h.consumer.mac, ENI, CLIENT),
        (h.provider.ifindex, h.provider.mac, SNAT[1], LB),
    ] {
        let req = arp_request(CLIENT_MAC, asker, target);
        let (act, out) = h.run(ifindex, &req).unwrap();
        assert_eq!(act, XDP_TX);
        assert_eq!(&out[0..6], &CLIENT_MAC);
        assert_eq!(&out[6..12], &mac);
        assert_eq!(&out[20..22], &[0, 2], "ARP reply");
        assert_eq!(&out[22..28], &mac, "sender MAC is the interface's");
        assert_eq!(&out[28..32], &target);
        assert_eq!(&out[32..38], &CLIENT_MAC);
        assert_eq!(&out[38..42], &asker);
    }
    // Not ours, nor the host's: dropped (the host has no address in this VPC).
    let req = arp_request(CLIENT_MAC, CLIENT, [10, 10, 2, 99]);
    assert_eq!(h.run(h.consumer.ifindex, &req).unwrap().0, XDP_DROP);
    // Only registered next hops are learned: not the client ...
    let vpc_a = privatelink_user::model::numeric_id("vpc-a");
    assert_eq!(h.dp.neighbor(vpc_a, CLIENT), None);
    // ... but the load balancer, whose new MAC its ARP teaches.
    let new_lb_mac = [0x02, 0x1b, 0, 0, 0, 0x99];
    let lb_arp = arp_request(new_lb_mac, LB, SNAT[0]);
    assert_eq!(h.run(h.provider.ifindex, &lb_arp).unwrap().0, XDP_TX);
    let vpc_b = privatelink_user::model::numeric_id("vpc-b");
    assert_eq!(h.dp.neighbor(vpc_b, LB), Some(new_lb_mac));
    // And an ARP flood from random senders registers nothing.
    for i in 0..50u8 {
        let mut a = lb_arp.clone();
        a[28..32].copy_from_slice(&[10, 10, 7, i]);
        h.run(h.provider.ifindex, &a).unwrap();
        assert_eq!(h.dp.neighbor(vpc_b, [10, 10, 7, i]), None);
    }
}

fn flow_entries(h: &Harness) -> Vec<(privatelink_common::FlowKey, privatelink_common::FlowEntry)> {
    h.dp.flows().unwrap()
}

fn tcp_with_flags(h: &Harness, sport: u16, fin: bool, rst: bool, syn: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .tcp(sport, 80, 2000, 64240)
        .ack(1);
    if fin {
        b = b.fin();
    }
    if rst {
        b = b.rst();
    }
    if syn {
        b = b.syn();
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn lb_fin(h: &Harness, snat: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .tcp(80, port, 7000, 65000)
        .ack(1)
        .fin()
        .write(&mut v, &[])
        .unwrap();
    v
}

fn all_closing(h: &Harness) -> bool {
    let f = flow_entries(h);
    !f.is_empty()
        && f.iter()
            .all(|(_, e)| e.tcp_flags & privatelink_common::CT_CLOSING != 0)
}

#[test]
fn rst_closes_both_directions_and_syn_reopens() {
    let mut h = harness();
    open_flow(&mut h, 41000);
    assert!(!all_closing(&h));
    assert_eq!(
        h.run(
            h.consumer.ifindex,
            &tcp_with_flags(&h, 41000, false, true, false)
        )
        .unwrap()
        .0,
        XDP_REDIRECT
    );
    assert!(all_closing(&h), "RST marks both entries closing");
    assert_eq!(
        h.run(
            h.consumer.ifindex,
            &tcp_with_flags(&h, 41000, false, false, true)
        )
        .unwrap()
        .0,
        XDP_REDIRECT
    );
    assert!(
        flow_entries(&h).iter().all(|(_, e)| e.tcp_flags == 0),
        "a SYN reopens the flow"
    );
}

#[test]
fn fin_in_both_directions_closes_the_flow() {
    let mut h = harness();
    let (snat, port) = open_flow(&mut h, 41100);
    let (act, out) = h
        .run(
            h.consumer.ifindex,
            &tcp_with_flags(&h, 41100, true, false, false),
        )
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "the client's FIN is forwarded");
    let p = parse_checked(&out);
    assert_eq!((p.ip.source, p.sport), (snat, port), "on the flow's tuple");
    assert!(!all_closing(&h), "half-closed is still open");
    let (act, _) = h.run(h.provider.ifindex, &lb_fin(&h, snat, port)).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert!(all_closing(&h), "FIN both ways closes");
}

/// A bare ACK from the load balancer on the flow's SNAT tuple.
fn lb_ack(h: &Harness, snat: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .tcp(80, port, 7001, 65000)
        .ack(1001)
        .write(&mut v, b"late")
        .unwrap();
    v
}

/// RST, or FIN both ways, shortens an established flow's life to the closing timeout; a
/// half-closed flow and an open one keep the TCP idle timeout. With a closing timeout of
/// 150 ms and everything else 30 s, 400 ms of quiet later the load balancer's packets of
/// the closed flows find none (counted), those of the others still cross.
#[test]
fn closed_flows_expire_after_the_closing_timeout() {
    const MS: u64 = 1_000_000;
    let mut h = harness();
    h.dp.set_config(&privatelink_common::Config {
        tcp_timeout_ns: 30_000 * MS,
        other_timeout_ns: 30_000 * MS,
        closing_timeout_ns: 150 * MS,
        embryonic_timeout_ns: 30_000 * MS,
        flow_capacity: 32768,
    })
    .unwrap();
    let (rst, fins, half, open) = (41200, 41201, 41202, 41203);
    let mut tuples = Vec::new();
    for sport in [rst, fins, half, open] {
        handshake(&mut h, CLIENT, ENI, sport).unwrap();
        let (fwd, _) = flow_pair(&h, sport);
        assert_ne!(fwd.tcp_flags & privatelink_common::CT_ESTABLISHED, 0);
        tuples.push((fwd.new_src, fwd.new_sport));
    }
    let send = |h: &mut Harness, ifindex, frame: &[u8]| h.run(ifindex, frame).unwrap().0;
    let (c, pr) = (h.consumer.ifindex, h.provider.ifindex);
    let f = tcp_with_flags(&h, rst, false, true, false);
    assert_eq!(send(&mut h, c, &f), XDP_REDIRECT);
    let f = tcp_with_flags(&h, fins, true, false, false);
    assert_eq!(send(&mut h, c, &f), XDP_REDIRECT);
    let f = lb_fin(&h, tuples[1].0, tuples[1].1);
    assert_eq!(send(&mut h, pr, &f), XDP_REDIRECT);
    let f = tcp_with_flags(&h, half, true, false, false);
    assert_eq!(send(&mut h, c, &f), XDP_REDIRECT);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let no_flow = h.count(Reason::DropNoFlow);
    let verdicts: Vec<u32> = tuples
        .iter()
        .map(|(snat, port)| {
            let f = lb_ack(&h, *snat, *port);
            send(&mut h, pr, &f)
        })
        .collect();
    assert_eq!(
        verdicts,
        [XDP_DROP, XDP_DROP, XDP_REDIRECT, XDP_REDIRECT],
        "closed by RST, closed by FINs, half-closed, open"
    );
    assert_eq!(h.count(Reason::DropNoFlow) - no_flow, 2);
}

/// An ICMP error the data path sent: its type, and the quoted IPv4 header (its checksum
/// verified by etherparse) with what follows it.
fn quoted_by(out: &[u8]) -> (Icmpv4Type, Ipv4Header, Vec<u8>) {
    let s = SlicedPacket::from_ethernet(out).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = s.transport else {
        panic!("no ICMP in {out:?}")
    };
    let inner = etherparse::Ipv4Slice::from_slice(icmp.payload()).unwrap();
    let ih = inner.header().to_header();
    assert_eq!(
        ih.header_checksum,
        ih.calc_header_checksum(),
        "quoted IPv4 checksum"
    );
    (icmp.icmp_type(), ih, inner.payload().payload.to_vec())
}

/// ICMP time exceeded about a NATed packet is translated both ways, as destination
/// unreachable is: from a router on the provider side about a client's packet, and from
/// a router on the consumer side about a reply.
#[test]
fn icmp_time_exceeded_is_translated_both_ways() {
    use etherparse::icmpv4::TimeExceededCode;
    let ttl_exceeded = Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit);
    let mut h = harness();
    let (snat, port) = open_flow(&mut h, 41300);
    // Provider side: the packet we sent to the load balancer, quoted with its full TCP
    // header so that the quoted checksum can be checked after the rewrite.
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(snat, LB, 1)
        .tcp(port, 80, 1000, 64240)
        .ack(5000)
        .write(&mut quoted, &[])
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4([10, 10, 0, 1], snat, 64)
        .icmpv4(ttl_exceeded.clone())
        .write(&mut frame, &quoted)
        .unwrap();
    let (act, out) = h.run(h.provider.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (ENI, CLIENT));
    let (kind, ih, l4) = quoted_by(&out);
    assert_eq!(kind, ttl_exceeded);
    assert_eq!((ih.source, ih.destination), (CLIENT, ENI));
    let tcp = etherparse::TcpSlice::from_slice(&l4).unwrap();
    assert_eq!((tcp.source_port(), tcp.destination_port()), (41300, 80));
    assert_eq!(
        tcp.checksum(),
        tcp.to_header().calc_checksum_ipv4(&ih, &[]).unwrap()
    );

    // Consumer side, about a UDP reply (ENI -> client) that ran out of TTL.
    client_icmp_about_a_udp_reply(&mut h, 6100, 1, ttl_exceeded);
    assert_eq!(h.count(Reason::IcmpErrorTranslated), 2);
}

/// An ENI that moves to another endpoint (ep-a gives 10.10.1.100 up for 10.10.1.102, a
/// new ep-a2 takes it): the client's next packet on its old connection is not carried
/// on ep-a's flow but starts a new flow of ep-a2; the old flow's replies no longer reach
/// the client through it.
#[test]
fn an_eni_reassigned_to_another_endpoint_starts_new_flows_there() {
    let mut h = harness();
    handshake(&mut h, CLIENT, ENI, 41400).unwrap();
    let (old, _) = flow_pair(&h, 41400);
    assert_eq!(old.endpoint_id, numeric_id("ep-a"));
    let moved = packet_state().replace(
        r#"zones = [{ vswitch = "vsw-a1", eni = "10.10.1.100" }]"#,
        r#"zones = [{ vswitch = "vsw-a1", eni = "10.10.1.102" }]"#,
    ) + &ep_a2("10.10.1.100");
    assert!(moved.contains("10.10.1.102"), "the state edit applied");
    h.apply_state(&moved).unwrap();
    let new_flows = h.count(Reason::ForwardNewFlow);
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 41400, false, b"more"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(
        h.count(Reason::ForwardNewFlow),
        new_flows + 1,
        "a new flow, not the old one's"
    );
    let (now, _) = flow_pair(&h, 41400);
    assert_eq!(
        now.endpoint_id,
        numeric_id("ep-a2"),
        "bound to its new owner"
    );
    let p = parse_checked(&out);
    assert_eq!((p.ip.destination, p.dport), (LB, 80));
    assert_eq!(
        (p.ip.source, p.sport),
        (now.new_src, now.new_sport),
        "sent on the new flow's tuple"
    );
    // The SNAT tuple is drawn from the client tuple: the re-made flow takes the old one
    // over (its reply entry pointed at this very forward key, as for a flow whose forward
    // entry expired). Both entries are ep-a2's, and replies on the tuple reach the client
    // through it.
    assert_eq!(
        (now.new_src, now.new_sport),
        (old.new_src, old.new_sport),
        "the old flow's tuple taken over"
    );
    let (fwd_key, fwd) =
        h.dp.flows()
            .unwrap()
            .into_iter()
            .find(|(k, e)| e.direction == DIR_ORIGINAL && k.sport == 41400)
            .unwrap();
    let reply =
        h.dp.flows()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == fwd.partner(&fwd_key))
            .map(|(_, e)| e)
            .expect("the new flow's reply entry");
    assert_eq!(reply.endpoint_id, numeric_id("ep-a2"));
    let (act, out) = h
        .run(h.provider.ifindex, &lb_ack(&h, now.new_src, now.new_sport))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "a reply on the new flow's tuple");
    let p = parse_checked(&out);
    assert_eq!(
        (p.ip.source, p.ip.destination, p.dport),
        (ENI, CLIENT, 41400)
    );
}

fn short_timeouts(h: &mut Harness) {
    h.set_timeouts_ms(300, 200, 100).unwrap();
}

#[test]
fn idle_flows_expire() {
    let mut h = harness();
    short_timeouts(&mut h);
    let (act, out) = h
        .run(h.consumer.ifindex, &udp_to_eni(&h, 7000, b"a", false))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let first = parse_checked(&out);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A reply to the expired flow no longer passes ...
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, first.ip.source, 64)
        .udp(53, first.sport)
        .write(&mut reply, b"late")
        .unwrap();
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), 1);
    // ... and the client's next packet starts a new flow.
    assert_eq!(
        h.run(h.consumer.ifindex, &udp_to_eni(&h, 7000, b"b", false))
            .unwrap()
            .0,
        XDP_REDIRECT
    );
    assert_eq!(h.count(Reason::ForwardNewFlow), 2);
}

/// A pool of one address and four ports: four flows get four distinct tuples, the fifth
/// is refused and counted, and once the first flows have expired a new flow takes over
/// a stale tuple (and the stale flow's other entry goes with it).
#[test]
fn snat_pool_exhaustion_and_reuse_after_expiry() {
    let state = packet_state().replace(
        "snat = [\"10.10.0.200\", \"10.10.0.201\"]",
        // The whole pool to one endpoint: this is about the pool, not about fairness.
        "snat = [\"10.10.0.200\"]\nsnat_ports = [2000, 2003]\nendpoint_flow_share = 100",
    );
    let mut h = Harness::new(&state).unwrap();
    short_timeouts(&mut h);
    let mut tuples = std::collections::BTreeSet::new();
    for sport in 42000..42004 {
        let t = open_flow(&mut h, sport);
        assert_eq!(t.0, SNAT[0]);
        assert!((2000..=2003).contains(&t.1));
        assert!(tuples.insert(t), "tuple {t:?} handed out twice");
    }
    let (act, _) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 42004, true, b""))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropSnatExhausted), 1);

    std::thread::sleep(std::time::Duration::from_millis(400));
    let t = open_flow(&mut h, 42004);
    assert!(tuples.contains(&t), "a stale tuple is reused: {t:?}");
    let flows = flow_entries(&h);
    let holders = flows
        .iter()
        .filter(|(_, e)| e.direction == DIR_ORIGINAL && e.new_sport == t.1)
        .count();
    assert_eq!(
        holders, 1,
        "the stale flow's entry was removed with its tuple"
    );
}

/// The echo reply leaves from the interface's own MAC, whatever the request was sent to.
#[test]
fn echo_reply_comes_from_the_interface_mac() {
    let mut h = harness();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6])
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut frame, b"x")
        .unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_TX);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(&out[6..12], &h.consumer.mac);
}

/// A one-way flow stays alive through its other direction: a reply after the consumer
/// went quiet past the timeout still arrives, because the provider kept sending.
#[test]
fn a_flow_lives_while_either_direction_is_active() {
    let mut h = harness();
    h.set_timeouts_ms(300, 300, 100).unwrap();
    let (_, out) = h
        .run(h.consumer.ifindex, &udp_to_eni(&h, 7100, b"sub", false))
        .unwrap();
    let (snat, port) = (
        [out[26], out[27], out[28], out[29]],
        u16::from_be_bytes([out[34], out[35]]),
    );
    let mut push = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .udp(53, port)
        .write(&mut push, b"push")
        .unwrap();
    h.keep_talking(h.provider.ifindex, &push);
    // The consumer's entry is past its timeout, the provider's is not: same flow, same tuple.
    let (act, out) = h
        .run(h.consumer.ifindex, &udp_to_eni(&h, 7100, b"again", false))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(
        (
            [out[26], out[27], out[28], out[29]],
            u16::from_be_bytes([out[34], out[35]])
        ),
        (snat, port)
    );
    assert_eq!(h.count(Reason::ForwardNewFlow), 1);
}

/// The kernel's LRU is approximate: it may evict either entry of a live flow. The flow
/// keeps its provider-side tuple all the same. A lost forward entry is made again by the
/// next client packet with the same SNAT tuple (the reply entry is recognised as the
/// flow's own); so is a flow that lost both (its tuple is a function of the client's); a
/// lost reply entry is made again by a client packet once the partner check is due (one
/// second), replies in between are dropped.
#[test]
fn a_flow_that_loses_an_entry_keeps_its_snat_tuple() {
    use privatelink_common::FlowEntry;

    let mut h = harness();
    let tuple = open_flow(&mut h, 40100);
    let data = tcp_to_eni(&h, 40100, false, b"data");
    let reply = tcp_from_lb(&h, tuple.0, tuple.1, b"answer");
    // The harness holds this one flow: one entry per direction.
    let forget = |h: &mut Harness, dir: u8| h.forget_direction::<FlowEntry>(dir);
    let send = |h: &mut Harness| {
        let (act, out) = h.run(h.consumer.ifindex, &data).unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let p = parse_checked(&out);
        (p.ip.source, p.sport)
    };

    forget(&mut h, DIR_ORIGINAL);
    assert_eq!(send(&mut h), tuple, "after losing the forward entry");
    forget(&mut h, DIR_ORIGINAL);
    forget(&mut h, DIR_REPLY);
    assert_eq!(send(&mut h), tuple, "after losing both entries");
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_REDIRECT);

    forget(&mut h, DIR_REPLY);
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(send(&mut h), tuple, "after losing the reply entry");
    let (act, out) = h.run(h.provider.ifindex, &reply).unwrap();
    assert_eq!(act, XDP_REDIRECT, "the reply entry was made again");
    let p = parse_checked(&out);
    assert_eq!((p.ip.destination, p.dport), (CLIENT, 40100));
}

/// A frame from the client to the ENI: TCP (a SYN, or a data segment) or UDP to `dport`.
fn to_eni(h: &Harness, proto: u8, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac).ipv4(CLIENT, ENI, 64);
    let mut v = Vec::new();
    if proto == 6 {
        let b = b.tcp(sport, dport, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(5000) };
        b.write(&mut v, b"").unwrap();
    } else {
        b.udp(sport, dport).write(&mut v, b"q").unwrap();
    }
    v
}

/// The listeners of the packet tests' service replaced by tcp/80, tcp/8000-8100, udp/53.
fn listener_state(listeners: &str) -> String {
    packet_state().replace(
        privatelink_tests::lab::PACKET_LISTENERS,
        &format!("listeners = [{listeners}]"),
    )
}

const SOME_LISTENERS: &str = r#"{ protocol = "tcp", port = 80 }, { protocol = "tcp", port = 8000, to_port = 8100 }, { protocol = "udp", port = 53 }"#;

#[test]
fn only_the_services_listeners_cross_the_endpoint() {
    let mut h = Harness::new(&listener_state(SOME_LISTENERS)).unwrap();
    let cases: &[(&str, u8, u16, bool)] = &[
        ("tcp/80", 6, 80, true),
        ("tcp/8000, first of the range", 6, 8000, true),
        ("tcp/8100, last of the range", 6, 8100, true),
        ("udp/53", 17, 53, true),
        ("tcp/81", 6, 81, false),
        ("tcp/443", 6, 443, false),
        ("tcp/22", 6, 22, false),
        ("tcp/7999, below the range", 6, 7999, false),
        ("tcp/8101, past the range", 6, 8101, false),
        ("tcp/53, the wrong protocol", 6, 53, false),
        ("udp/80, the wrong protocol", 17, 80, false),
        ("udp/8050, the wrong protocol", 17, 8050, false),
    ];
    for (i, (what, proto, dport, crosses)) in cases.iter().enumerate() {
        let flows_before = h.dp.flows().unwrap().len();
        let dropped_before = h.count(Reason::DropNoListener);
        let frame = to_eni(&h, *proto, 41000 + i as u16, *dport, true);
        let (act, out) = h.run(h.consumer.ifindex, &frame).unwrap();
        let flows_after = h.dp.flows().unwrap().len();
        if *crosses {
            assert_eq!(act, XDP_REDIRECT, "{what}: {:?}", h.active_stats());
            let p = parse_checked(&out);
            assert_eq!((p.ip.destination, p.dport), (LB, *dport), "{what}");
            assert_eq!(flows_after, flows_before + 2, "{what}: both entries made");
        } else {
            assert_eq!(act, XDP_DROP, "{what}: {:?}", h.active_stats());
            assert_eq!(
                h.count(Reason::DropNoListener),
                dropped_before + 1,
                "{what}: counted under its own reason"
            );
            assert_eq!(
                flows_after, flows_before,
                "{what}: no flow entry and no SNAT tuple taken"
            );
        }
    }
    assert_eq!(h.count(Reason::DropNoListener), 8);
    assert_eq!(h.count(Reason::ForwardNewFlow), 4);
    assert_eq!(h.count(Reason::PassUnrelated), 0);
    // ICMP echo to the ENI is still answered.
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"ping")
        .unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &ping).unwrap().0, XDP_TX);
}

/// A service with no listeners (stored by an earlier build) publishes nothing.
#[test]
fn a_service_without_listeners_publishes_nothing() {
    let mut h = Harness::new(&packet_state().replace(
        &format!("{}\n", privatelink_tests::lab::PACKET_LISTENERS),
        "",
    ))
    .unwrap();
    for (proto, dport) in [(6, 80), (17, 53), (6, 443)] {
        let (act, _) = h
            .run(h.consumer.ifindex, &to_eni(&h, proto, 42000, dport, true))
            .unwrap();
        assert_eq!(act, XDP_DROP);
    }
    assert_eq!(h.count(Reason::DropNoListener), 3);
    assert!(h.dp.flows().unwrap().is_empty());
}

/// Removing a listener stops new flows on it at once, and the flows established on it
/// from their next packet, in both directions; the other listeners' flows keep going.
#[test]
fn a_removed_listener_stops_its_flows_at_once_and_spares_the_others() {
    let mut h = Harness::new(&listener_state(SOME_LISTENERS)).unwrap();
    // Two established flows: tcp/8000 (to be removed) and tcp/80 (kept), each a SYN, the
    // load balancer's SYN-ACK and a data segment, so both are on the established path.
    let open = |h: &mut Harness, sport: u16, dport: u16| {
        let (act, out) = h
            .run(h.consumer.ifindex, &to_eni(h, 6, sport, dport, true))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
        let p = parse_checked(&out);
        let mut back = Vec::new();
        PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
            .ipv4(LB, p.ip.source, 64)
            .tcp(dport, p.sport, 7000, 65000)
            .syn()
            .ack(1001)
            .write(&mut back, b"")
            .unwrap();
        assert_eq!(h.run(h.provider.ifindex, &back).unwrap().0, XDP_REDIRECT);
        let data = to_eni(h, 6, sport, dport, false);
        assert_eq!(h.run(h.consumer.ifindex, &data).unwrap().0, XDP_REDIRECT);
        (data, back)
    };
    let (data_8000, back_8000) = open(&mut h, 43000, 8000);
    let (data_80, back_80) = open(&mut h, 43001, 80);
    let flows = h.dp.flows().unwrap().len();
    h.apply_state(&listener_state(
        r#"{ protocol = "tcp", port = 80 }, { protocol = "udp", port = 53 }"#,
    ))
    .unwrap();
    // New flows on the removed listener: dropped, nothing taken.
    let (act, _) = h
        .run(h.consumer.ifindex, &to_eni(&h, 6, 43002, 8050, true))
        .unwrap();
    assert_eq!(act, XDP_DROP);
    // The established flow on it: both directions stop on their next packet.
    let before = h.count(Reason::DropNoListener);
    assert_eq!(h.run(h.consumer.ifindex, &data_8000).unwrap().0, XDP_DROP);
    assert_eq!(h.run(h.provider.ifindex, &back_8000).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoListener), before + 2);
    // The flow on the kept listener goes on both ways.
    assert_eq!(h.run(h.consumer.ifindex, &data_80).unwrap().0, XDP_REDIRECT);
    assert_eq!(h.run(h.provider.ifindex, &back_80).unwrap().0, XDP_REDIRECT);
    assert_eq!(h.dp.flows().unwrap().len(), flows, "no new entries");
    // Published again: the old flow resumes (its entries were kept until they expire).
    h.apply_state(&listener_state(SOME_LISTENERS)).unwrap();
    assert_eq!(
        h.run(h.consumer.ifindex, &data_8000).unwrap().0,
        XDP_REDIRECT
    );
}

// ---- One tenant cannot starve the others: embryonic flows and per-endpoint shares ----

/// A TCP segment from `src`:`sport` to `eni`:80 (SYN, or the handshake's ACK).
fn tcp_from(h: &Harness, src: [u8; 4], eni: [u8; 4], sport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(src, eni, 64)
        .tcp(sport, 80, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(7001) };
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

/// The load balancer's SYN-ACK to the tuple `out` (a forwarded SYN) came from.
fn syn_ack_to(h: &Harness, out: &[u8]) -> Vec<u8> {
    let p = parse_checked(out);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, p.ip.source, 64)
        .tcp(80, p.sport, 7000, 65000)
        .syn()
        .ack(1001)
        .write(&mut v, b"")
        .unwrap();
    v
}

/// A full handshake through the ENI `eni`; the SNAT tuple, or the SYN's drop reason.
fn handshake(h: &mut Harness, src: [u8; 4], eni: [u8; 4], sport: u16) -> Result<(), Reason> {
    let before: Vec<(Reason, u64)> = Reason::ALL.iter().map(|r| (*r, h.count(*r))).collect();
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_from(h, src, eni, sport, true))
        .unwrap();
    if act != XDP_REDIRECT {
        let why = before
            .iter()
            .find(|(r, n)| h.count(*r) > *n)
            .map(|(r, _)| *r)
            .unwrap();
        return Err(why);
    }
    let sa = syn_ack_to(h, &out);
    assert_eq!(h.run(h.provider.ifindex, &sa).unwrap().0, XDP_REDIRECT);
    let ack = tcp_from(h, src, eni, sport, false);
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_REDIRECT);
    Ok(())
}

fn conntrack_state(h: &Harness, src: [u8; 4], sport: u16) -> u8 {
    flow_entries(h)
        .iter()
        .find(|(k, e)| k.src == src && k.sport == sport && e.direction == DIR_ORIGINAL)
        .map(|(_, e)| e.tcp_flags)
        .expect("the flow's entry")
}

#[test]
fn a_flow_is_established_only_by_its_handshake_and_embryonic_flows_expire_early() {
    use privatelink_common::{CT_ESTABLISHED, CT_REPLIED};
    let mut h = harness();
    const MS: u64 = 1_000_000;
    h.dp.set_config(&privatelink_common::Config {
        embryonic_timeout_ns: 300 * MS,
        ..Default::default()
    })
    .unwrap();
    // SYN: embryonic. SYN-ACK: replied, still embryonic. The client's ACK: established.
    let (_, out) = h
        .run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, 44000, true))
        .unwrap();
    assert_eq!(conntrack_state(&h, CLIENT, 44000) & CT_ESTABLISHED, 0);
    // A retransmitted SYN does not establish it either.
    h.run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, 44000, true))
        .unwrap();
    assert_eq!(conntrack_state(&h, CLIENT, 44000), 0);
    let sa = syn_ack_to(&h, &out);
    assert_eq!(h.run(h.provider.ifindex, &sa).unwrap().0, XDP_REDIRECT);
    assert_eq!(conntrack_state(&h, CLIENT, 44000), CT_REPLIED);
    let ack = tcp_from(&h, CLIENT, ENI, 44000, false);
    assert_eq!(h.run(h.consumer.ifindex, &ack).unwrap().0, XDP_REDIRECT);
    assert_eq!(
        conntrack_state(&h, CLIENT, 44000),
        CT_REPLIED | CT_ESTABLISHED
    );
    // Both entries say so.
    assert!(
        flow_entries(&h)
            .iter()
            .filter(|(_, e)| e.tcp_flags & CT_ESTABLISHED != 0)
            .count()
            == 2
    );
    // A half-open flow (SYN and SYN-ACK, no ACK) and the established one, both quiet
    // for 0.4 s: the half-open one is gone (its SYN-ACK retransmission finds no flow),
    // the established one lives.
    let (_, half) = h
        .run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, 44001, true))
        .unwrap();
    let half_sa = syn_ack_to(&h, &half);
    assert_eq!(h.run(h.provider.ifindex, &half_sa).unwrap().0, XDP_REDIRECT);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(h.run(h.provider.ifindex, &half_sa).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropNoFlow), 1);
    assert_eq!(h.run(h.provider.ifindex, &sa).unwrap().0, XDP_REDIRECT);
    // UDP: a query and its answer stay embryonic; the client's next datagram makes it
    // a stream, established.
    let query = udp_to_eni(&h, 44002, b"q", false);
    let (_, out) = h.run(h.consumer.ifindex, &query).unwrap();
    assert_eq!(conntrack_state(&h, CLIENT, 44002), 0);
    let p = parse_checked(&out);
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, p.ip.source, 64)
        .udp(53, p.sport)
        .write(&mut reply, b"a")
        .unwrap();
    assert_eq!(h.run(h.provider.ifindex, &reply).unwrap().0, XDP_REDIRECT);
    assert_eq!(conntrack_state(&h, CLIENT, 44002), CT_REPLIED);
    assert_eq!(h.run(h.consumer.ifindex, &query).unwrap().0, XDP_REDIRECT);
    assert_eq!(
        conntrack_state(&h, CLIENT, 44002),
        CT_REPLIED | CT_ESTABLISHED
    );
}

/// A blind client cannot establish a flow: an ACK before the reply, an ACK that does not
/// acknowledge the SYN-ACK, and a RST leave it embryonic. The server's own data segment
/// does establish it (the server holds the connection).
#[test]
fn only_the_real_handshake_or_the_server_establishes_a_flow() {
    use privatelink_common::{CT_ESTABLISHED, CT_REPLIED};
    let mut h = harness();
    let ack_with = |h: &Harness, sport: u16, ack: u32| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
            .ipv4(CLIENT, ENI, 64)
            .tcp(sport, 80, 1001, 64240)
            .ack(ack)
            .write(&mut v, b"")
            .unwrap();
        v
    };
    let (_, out) = h
        .run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, 44100, true))
        .unwrap();
    // An ACK before any reply.
    h.run(h.consumer.ifindex, &ack_with(&h, 44100, 7001))
        .unwrap();
    assert_eq!(conntrack_state(&h, CLIENT, 44100), 0);
    // The SYN-ACK (sequence 7000), then ACKs of the wrong number: replied, not established.
    let sa = syn_ack_to(&h, &out);
    assert_eq!(h.run(h.provider.ifindex, &sa).unwrap().0, XDP_REDIRECT);
    for wrong in [0, 7000, 7002, 1] {
        h.run(h.consumer.ifindex, &ack_with(&h, 44100, wrong))
            .unwrap();
        assert_eq!(
            conntrack_state(&h, CLIENT, 44100),
            CT_REPLIED,
            "ack {wrong}"
        );
    }
    // The right one establishes it.
    h.run(h.consumer.ifindex, &ack_with(&h, 44100, 7001))
        .unwrap();
    assert_eq!(
        conntrack_state(&h, CLIENT, 44100),
        CT_REPLIED | CT_ESTABLISHED
    );
    // Another flow: the server's data segment (no SYN, no RST) establishes it although
    // the client's ACK was never seen.
    let (_, out) = h
        .run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, 44101, true))
        .unwrap();
    let p = parse_checked(&out);
    let sa = syn_ack_to(&h, &out);
    h.run(h.provider.ifindex, &sa).unwrap();
    let mut data = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, p.ip.source, 64)
        .tcp(80, p.sport, 7001, 65000)
        .ack(1001)
        .write(&mut data, b"hello")
        .unwrap();
    assert_eq!(h.run(h.provider.ifindex, &data).unwrap().0, XDP_REDIRECT);
    assert_eq!(
        conntrack_state(&h, CLIENT, 44101),
        CT_REPLIED | CT_ESTABLISHED
    );
    // A third: the server's RST does not.
    let (_, out) = h
        .run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, 44102, true))
        .unwrap();
    let p = parse_checked(&out);
    let mut rst = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, p.ip.source, 64)
        .tcp(80, p.sport, 0, 0)
        .rst()
        .ack(1001)
        .write(&mut rst, b"")
        .unwrap();
    h.run(h.provider.ifindex, &rst).unwrap();
    assert_eq!(conntrack_state(&h, CLIENT, 44102) & CT_ESTABLISHED, 0);
}

/// ep-a2: a second connected endpoint of acct-a to epsrv-b, its ENI at `eni` in vsw-a1.
fn ep_a2(eni: &str) -> String {
    connected_endpoint("ep-a2", "acct-a", "vpc-a", "epsrv-b", "vsw-a1", eni)
}

/// The packet tests' state with a second endpoint of the same account to the same
/// service (ENI 10.10.1.101), a 1 000-tuple SNAT pool, and a per-endpoint share of 5 %.
fn two_endpoints_state() -> String {
    packet_state().replace(
        "snat = [\"10.10.0.200\", \"10.10.0.201\"]",
        "snat = [\"10.10.0.200\"]\nsnat_ports = [2000, 2999]\nendpoint_flow_share = 5",
    ) + &ep_a2("10.10.1.101")
}

const ENI2: [u8; 4] = [10, 10, 1, 101];

#[test]
fn a_half_open_flood_spends_only_its_own_endpoints_share() {
    let mut h = Harness::new(&two_endpoints_state()).unwrap();
    const MS: u64 = 1_000_000;
    h.dp.set_config(&privatelink_common::Config {
        // The allowance refills over this: one token every 400 ms.
        embryonic_timeout_ns: 10_000 * MS,
        ..Default::default()
    })
    .unwrap();
    // 1 500 SYNs from spoofed sources of the consumer's subnet at the first endpoint
    // (more than the pool): only its share (50 of the pool's 1 000 tuples) becomes flows,
    // the rest is refused and counted, and nothing is counted as an exhausted pool.
    let flood = |h: &mut Harness, round: u32| {
        let mut accepted = 0u64;
        for n in 0..1500u32 {
            let src = [10, 10, 2 + round as u8, 100 + (n % 100) as u8];
            let syn = tcp_from(h, src, ENI, 50000 + n as u16, true);
            accepted += (h.run(h.consumer.ifindex, &syn).unwrap().0 == XDP_REDIRECT) as u64;
        }
        accepted
    };
    let accepted = flood(&mut h, 0);
    assert!(
        (25..=30).contains(&accepted),
        "{accepted} SYNs became flows"
    );
    assert_eq!(h.count(Reason::DropEndpointFlowLimit), 1500 - accepted);
    assert_eq!(h.count(Reason::DropSnatExhausted), 0);
    // The flooding endpoint's own clients: refused while its allowance is spent, served
    // again within the embryonic timeout after the flood.
    let flood_end = std::time::Instant::now();
    assert_eq!(
        handshake(&mut h, CLIENT, ENI, 46000),
        Err(Reason::DropEndpointFlowLimit)
    );
    let mut sport = 46001;
    while handshake(&mut h, CLIENT, ENI, sport).is_err() {
        sport += 1;
        assert!(
            flood_end.elapsed() < std::time::Duration::from_secs(10),
            "not served again within the embryonic timeout"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "the flooding endpoint served again {:?} after its flood",
        flood_end.elapsed()
    );
    // Flooding again, the other endpoint opens 150 connections (three times its own
    // share: each gives its token back when its handshake completes) and loses none.
    let again = flood(&mut h, 1);
    assert!(again <= 30, "{again}");
    for n in 0..150u16 {
        handshake(&mut h, CLIENT, ENI2, 45000 + n).expect("the other endpoint's flow");
    }
    assert_eq!(h.count(Reason::DropSnatExhausted), 0);
    // The budgets say who hit the limit.
    let budgets = privatelink_user::dataplane::read_budgets(
        h.dp.map(privatelink_common::map_names::EP_BUDGET).unwrap(),
    )
    .unwrap();
    let of = |ep: &str| {
        budgets
            .iter()
            .find(|(id, _)| *id == privatelink_user::model::numeric_id(ep))
            .map(|(_, b)| *b)
            .unwrap()
    };
    assert!(of("ep-a").refused >= 3000 - accepted - again);
    assert_eq!((of("ep-a2").refused, of("ep-a2").budget), (0, 25));
}

/// Under pressure a half-open flow gives its tuple up first: once idle for a second, a
/// new flow may take it (an established flow's tuple is never taken before it expires).
#[test]
fn half_open_flows_give_their_tuples_up_first() {
    let state = packet_state().replace(
        "snat = [\"10.10.0.200\", \"10.10.0.201\"]",
        "snat = [\"10.10.0.200\"]\nsnat_ports = [2000, 2003]\nendpoint_flow_share = 100",
    );
    // Four half-open flows fill the pool.
    let mut h = Harness::new(&state).unwrap();
    for sport in 47000..47004 {
        let (act, _) = h
            .run(h.consumer.ifindex, &tcp_from(&h, CLIENT, ENI, sport, true))
            .unwrap();
        assert_eq!(act, XDP_REDIRECT);
    }
    let fifth = tcp_from(&h, CLIENT, ENI, 47004, true);
    assert_eq!(h.run(h.consumer.ifindex, &fifth).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropSnatExhausted), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(h.run(h.consumer.ifindex, &fifth).unwrap().0, XDP_REDIRECT);
    // Four established flows fill it: nothing is taken from them.
    let mut h = Harness::new(&state).unwrap();
    for sport in 47100..47104 {
        handshake(&mut h, CLIENT, ENI, sport).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        handshake(&mut h, CLIENT, ENI, 47104),
        Err(Reason::DropSnatExhausted)
    );
}

/// A SYN that found every tuple it tried taken is retransmitted into other tuples: its
/// first attempt is the flow's hash, the others follow a stride drawn afresh for every
/// packet, so a connection is not lost because its first packet met a crowded part of
/// the pool. (With a hashed stride every retransmission met the same taken tuples: CI saw
/// another endpoint's connection fail during a flood that held 38 % of the pool.)
#[test]
fn a_retransmitted_syn_tries_other_tuples() {
    let state = packet_state().replace(
        "snat = [\"10.10.0.200\", \"10.10.0.201\"]",
        "snat = [\"10.10.0.200\"]\nsnat_ports = [3000, 3060]\nendpoint_flow_share = 100",
    );
    let mut h = Harness::new(&state).unwrap();
    // 60 of the 61 tuples held by established flows (bounded: near the end a new flow
    // finds the few free tuples with its 8 attempts only now and then).
    let (mut held, mut sport) = (0, 20000u16);
    while held < 60 {
        assert!(sport < 40000, "only {held} flows established");
        held += handshake(&mut h, CLIENT, ENI, sport).is_ok() as u32;
        sport += 1;
    }
    // A first packet whose attempts all missed the free tuple is served when resent
    // (61 ports, a prime, so every stride reaches every tuple: each try's 7 attempts
    // after the hashed one find it with odds 7 in 60; 400 tries fail together once in
    // 10^21. Over 2^n ports one tuple in 8 is out of a retransmission's reach.) One that found it at once holds it half-open; after a second idle a new
    // flow of the same endpoint may take it over, so the next port tries again.
    let (missed, tries) = (sport..sport + 20)
        .find_map(|s| {
            let syn = tcp_from(&h, CLIENT, ENI, s, true);
            let before = h.count(Reason::DropSnatExhausted);
            if h.run(h.consumer.ifindex, &syn).unwrap().0 == XDP_REDIRECT {
                std::thread::sleep(std::time::Duration::from_millis(1100));
                return None;
            }
            assert_eq!(h.count(Reason::DropSnatExhausted), before + 1);
            let tries = (1..=400)
                .find(|_| h.run(h.consumer.ifindex, &syn).unwrap().0 == XDP_REDIRECT)
                .expect("the retransmitted SYN met the same taken tuples 400 times");
            Some((s, tries))
        })
        .expect("20 first packets in a row found the one free tuple at once");
    eprintln!("SYN from port {missed} served on its retransmission {tries}");
    let t = flow_entries(&h)
        .into_iter()
        .find(|(k, e)| k.sport == missed && e.direction == DIR_ORIGINAL)
        .map(|(_, e)| e.new_sport)
        .expect("the flow's entry");
    assert!((3000..=3060).contains(&t), "{t}");
}

// ---- Zone failover and failback: health picks the load balancer of new flows only ----

/// Zone B's load balancer in `two_zone_packet_state` and the MAC the tests give it.
const ZONE_B_LB: [u8; 4] = [10, 10, 0, 11];
const ZONE_B_LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x21];
/// Endpoint ep-a's ENI in zone B in `two_zone_packet_state(true)`.
const ZONE_B_ENI: [u8; 4] = [10, 10, 9, 5];

/// Applies `state` with the provider load balancers `down` judged unhealthy, as the
/// daemon does when a health verdict changes.
fn apply_with_health(h: &mut Harness, state: &str, down: &[[u8; 4]]) {
    use privatelink_user::{dataplane, desired, model::parse_state};
    let s = parse_state(state).unwrap();
    let unhealthy: desired::Unhealthy = down.iter().map(|a| (numeric_id("vpc-b"), *a)).collect();
    let want = desired::compute(&s, dataplane::resolve_link, &unhealthy).unwrap();
    h.dp.apply(&want).unwrap();
}

/// A client segment to `eni`:80 from `sport` (a SYN, or data): the load balancer and MAC
/// it was forwarded to, and its SNAT tuple.
fn via_eni(
    h: &mut Harness,
    eni: [u8; 4],
    sport: u16,
    syn: bool,
) -> ([u8; 4], [u8; 6], ([u8; 4], u16)) {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, eni, 64)
        .tcp(sport, 80, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(7001) };
    let mut v = Vec::new();
    b.write(&mut v, if syn { b"" } else { b"data" }).unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &v).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_checked(&out);
    assert_eq!(p.dport, 80);
    (p.ip.destination, p.eth_dst, (p.ip.source, p.sport))
}

/// `lb` answers the SNAT tuple `snat`: the answer reaches the client from `eni`, to
/// `sport`.
fn answer_from(h: &mut Harness, lb: [u8; 4], snat: ([u8; 4], u16), eni: [u8; 4], sport: u16) {
    let mac = if lb == LB { LB_MAC } else { ZONE_B_LB_MAC };
    let mut v = Vec::new();
    PacketBuilder::ethernet2(mac, h.provider.mac)
        .ipv4(lb, snat.0, 64)
        .tcp(80, snat.1, 7000, 65000)
        .syn()
        .ack(1001)
        .write(&mut v, b"answer")
        .unwrap();
    let (act, out) = h.run(h.provider.ifindex, &v).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_checked(&out);
    assert_eq!(
        (p.ip.source, p.ip.destination, p.sport, p.dport),
        (eni, CLIENT, 80, sport)
    );
}

/// Zone A's load balancer fails: new flows at zone A's ENI go to zone B's load balancer
/// (and are answered through zone A's ENI), while a flow in progress in zone B carries on
/// with its tuple and a flow in progress in zone A is not moved (the maps' change does
/// not re-pick an established flow's load balancer). Zone A recovers: its ENI's new
/// flows go to its own load balancer again, and a flow started on zone B's during the
/// outage stays there. Nothing healthy: each zone's own (fail open).
#[test]
fn a_failed_zone_sends_only_new_flows_elsewhere_and_gets_them_back() {
    let state = two_zone_packet_state(true);
    let mut h = Harness::new(&state).unwrap();
    h.dp.set_neighbor(numeric_id("vpc-b"), ZONE_B_LB, ZONE_B_LB_MAC)
        .unwrap();
    // One flow through each zone's ENI, each to its own zone's load balancer.
    let (lb, mac, in_a) = via_eni(&mut h, ENI, 49100, true);
    assert_eq!((lb, mac), (LB, LB_MAC));
    answer_from(&mut h, LB, in_a, ENI, 49100);
    let (lb, mac, in_b) = via_eni(&mut h, ZONE_B_ENI, 49101, true);
    assert_eq!((lb, mac), (ZONE_B_LB, ZONE_B_LB_MAC));
    answer_from(&mut h, ZONE_B_LB, in_b, ZONE_B_ENI, 49101);
    // Zone A's load balancer is judged unhealthy.
    let epoch = h.dp.epoch().unwrap();
    apply_with_health(&mut h, &state, &[LB]);
    assert_ne!(h.dp.epoch().unwrap(), epoch, "the maps changed");
    let mut moved = Vec::new();
    for sport in 49110..49118 {
        let (lb, mac, snat) = via_eni(&mut h, ENI, sport, true);
        assert_eq!((lb, mac), (ZONE_B_LB, ZONE_B_LB_MAC), "new flow {sport}");
        answer_from(&mut h, ZONE_B_LB, snat, ENI, sport);
        moved.push((sport, snat));
    }
    for i in 0..2 {
        assert_eq!(
            via_eni(&mut h, ZONE_B_ENI, 49101, false),
            (ZONE_B_LB, ZONE_B_LB_MAC, in_b),
            "zone B's flow carries on ({i})"
        );
        answer_from(&mut h, ZONE_B_LB, in_b, ZONE_B_ENI, 49101);
    }
    assert_eq!(
        via_eni(&mut h, ENI, 49100, false),
        (LB, LB_MAC, in_a),
        "zone A's flow keeps its load balancer and tuple"
    );
    // Zone A recovers.
    apply_with_health(&mut h, &state, &[]);
    let (lb, mac, snat) = via_eni(&mut h, ENI, 49120, true);
    assert_eq!((lb, mac), (LB, LB_MAC), "failback: zone A's own again");
    answer_from(&mut h, LB, snat, ENI, 49120);
    for (sport, snat) in &moved {
        assert_eq!(
            via_eni(&mut h, ENI, *sport, false),
            (ZONE_B_LB, ZONE_B_LB_MAC, *snat),
            "a flow started during the outage stays on zone B's"
        );
        answer_from(&mut h, ZONE_B_LB, *snat, ENI, *sport);
    }
    assert_eq!(
        via_eni(&mut h, ZONE_B_ENI, 49101, false),
        (ZONE_B_LB, ZONE_B_LB_MAC, in_b)
    );
    // Zone B's fails: the mirror image.
    apply_with_health(&mut h, &state, &[ZONE_B_LB]);
    assert_eq!(via_eni(&mut h, ZONE_B_ENI, 49130, true).0, LB);
    assert_eq!(via_eni(&mut h, ENI, 49131, true).0, LB);
    // Nothing healthy: as if nothing were checked.
    apply_with_health(&mut h, &state, &[LB, ZONE_B_LB]);
    assert_eq!(via_eni(&mut h, ENI, 49140, true).0, LB);
    assert_eq!(via_eni(&mut h, ZONE_B_ENI, 49141, true).0, ZONE_B_LB);
    for r in [
        Reason::DropNoNeighbor,
        Reason::DropNoFlow,
        Reason::DropNotConnected,
    ] {
        assert_eq!(h.count(r), 0, "{r:?}: {:?}", h.active_stats());
    }
}

// ---- Several load balancers per zone, and replacing one ----

const LB2: [u8; 4] = [10, 10, 0, 11];
const LB2_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x11];

fn lbs_state(backends: &str) -> String {
    packet_state().replace(
        r#"backends = [{ zone = "zone-a", address = "10.10.0.10" }]"#,
        &format!("backends = [{backends}]"),
    )
}

/// Where a SYN from `sport` goes: the load balancer's address and MAC.
fn lb_of(h: &mut Harness, sport: u16, syn: bool) -> ([u8; 4], [u8; 6]) {
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(h, sport, syn, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_checked(&out);
    (p.ip.destination, p.eth_dst)
}

#[test]
fn several_load_balancers_share_a_zone_and_a_replaced_one_keeps_its_flows() {
    let both = r#"{ zone = "zone-a", address = "10.10.0.10" }, { zone = "zone-a", address = "10.10.0.11" }"#;
    let mut h = Harness::new(&lbs_state(both)).unwrap();
    h.dp.set_neighbor(privatelink_user::model::numeric_id("vpc-b"), LB2, LB2_MAC)
        .unwrap();
    // New flows are spread over both, each with its load balancer's MAC.
    let mut on = std::collections::BTreeMap::new();
    for sport in 48000..48064 {
        let (lb, mac) = lb_of(&mut h, sport, true);
        assert_eq!(mac, if lb == LB { LB_MAC } else { LB2_MAC });
        on.insert(sport, lb);
    }
    let on_first = on.values().filter(|lb| **lb == LB).count();
    assert!(
        (12..=52).contains(&on_first),
        "{on_first} of 64 flows on the first load balancer"
    );
    // Every flow stays on its own, packet after packet.
    for (sport, lb) in &on {
        assert_eq!(lb_of(&mut h, *sport, false).0, *lb);
    }
    // The first one is replaced: new flows go to the second only; the flows in
    // progress on the first keep going to it, both ways.
    h.apply_state(&lbs_state(r#"{ zone = "zone-a", address = "10.10.0.11" }"#))
        .unwrap();
    for sport in 48100..48132 {
        assert_eq!(lb_of(&mut h, sport, true).0, LB2);
    }
    for (sport, lb) in &on {
        assert_eq!(
            lb_of(&mut h, *sport, false),
            (*lb, if *lb == LB { LB_MAC } else { LB2_MAC })
        );
    }
    let (sport, _) = on.iter().find(|(_, lb)| **lb == LB).unwrap();
    let (_, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, *sport, false, b""))
        .unwrap();
    let p = parse_checked(&out);
    let reply = tcp_from_lb(&h, p.ip.source, p.sport, b"still here");
    let (act, back) = h.run(h.provider.ifindex, &reply).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(parse_checked(&back).ip.source, ENI);
}

// ---- A VPC's DNS resolver address: queries and ARP reach the host, nothing else ----

/// VPC A's resolver address in `resolver_state`.
const RESOLVER: [u8; 4] = [10, 10, 0, 2];

/// The packet tests' state with a resolver in VPC A (none in VPC B, whose CIDR is the
/// same).
fn resolver_state() -> String {
    let s = packet_state();
    let fc0 = "interface = \"fc0\"\n";
    assert!(s.contains(fc0));
    s.replacen(fc0, &format!("{fc0}resolver = \"10.10.0.2\"\n"), 1)
}

/// A UDP datagram from the client (`CLIENT`:`sport`) to `dst`:`dport` on `mac`.
fn udp_frame(mac: [u8; 6], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv4(CLIENT, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A TCP segment from the client to `dst`:`dport`: a SYN, or an ACK with data.
fn tcp_frame(mac: [u8; 6], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv4(CLIENT, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, if syn { b"" } else { b"\x00\x1dquery" })
        .unwrap();
    v
}

/// A DNS query's bytes (the data path looks at the ports only).
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ep1\x00\x00\x01\x00\x01";

#[test]
fn queries_to_the_resolver_address_pass_to_the_host_and_nothing_else_does() {
    let mut h = Harness::new(&resolver_state()).unwrap();
    let mac = h.consumer.mac;
    // UDP and TCP to port 53, any flags, pass untouched.
    let pass = [
        udp_frame(mac, RESOLVER, 5353, 53, QUERY),
        tcp_frame(mac, RESOLVER, 40000, 53, true),
        tcp_frame(mac, RESOLVER, 40000, 53, false),
    ];
    for f in &pass {
        let (act, out) = h.run(h.consumer.ifindex, f).unwrap();
        assert_eq!((act, &out), (XDP_PASS, f), "{:?}", h.active_stats());
    }
    assert_eq!(h.count(Reason::PassDns), 3);
    // Another port, source port 0, ICMP, and fragments of a query (first, middle, last)
    // are dropped.
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, mac)
        .ipv4(CLIENT, RESOLVER, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut ping, b"ping")
        .unwrap();
    let mut drop = vec![
        udp_frame(mac, RESOLVER, 5353, 54, QUERY),
        tcp_frame(mac, RESOLVER, 40001, 54, true),
        udp_frame(mac, RESOLVER, 53, 5353, QUERY),
        // From source port 0: no answer can reach it.
        udp_frame(mac, RESOLVER, 0, 53, QUERY),
        tcp_frame(mac, RESOLVER, 0, 53, true),
        ping,
    ];
    for (hi, lo) in [(0x20u8, 0u8), (0x20, 0x10), (0x00, 0x10)] {
        let mut f = udp_frame(mac, RESOLVER, 5353, 53, QUERY);
        f[14 + 6] = hi;
        f[14 + 7] = lo;
        fix_ip_checksum(&mut f);
        drop.push(f);
    }
    for f in &drop {
        assert_eq!(h.run(h.consumer.ifindex, f).unwrap().0, XDP_DROP);
    }
    assert_eq!(h.count(Reason::DropHostIsolated), drop.len() as u64);
    assert_eq!(h.count(Reason::PassDns), 3, "nothing more passed");
    // The same address in VPC B, which has no resolver: dropped.
    let f = udp_frame(h.provider.mac, RESOLVER, 5353, 53, QUERY);
    assert_eq!(h.run(h.provider.ifindex, &f).unwrap().0, XDP_DROP);
    // The resolver removed from the state: its queries are dropped too.
    h.apply_state(&packet_state()).unwrap();
    let f = udp_frame(mac, RESOLVER, 5353, 53, QUERY);
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::PassDns), 3);
}

#[test]
fn arp_for_the_resolver_address_is_answered_and_replies_to_it_pass() {
    let mut h = Harness::new(&resolver_state()).unwrap();
    let mac = h.consumer.mac;
    // A client asks for the resolver's MAC: answered in XDP with the interface's.
    let req = arp_request(CLIENT_MAC, CLIENT, RESOLVER);
    let (act, out) = h.run(h.consumer.ifindex, &req).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    let (eth, arp) = out.split_at(14);
    assert_eq!(
        (&eth[0..6], &eth[6..12], &eth[12..14]),
        (&CLIENT_MAC[..], &mac[..], &[8, 6][..])
    );
    assert_eq!(&arp[6..8], &[0, 2], "an ARP reply");
    assert_eq!(
        (&arp[8..14], &arp[14..18]),
        (&mac[..], &RESOLVER[..]),
        "the resolver is at the interface's MAC"
    );
    assert_eq!((&arp[18..24], &arp[24..28]), (&CLIENT_MAC[..], &CLIENT[..]));
    assert_eq!(h.count(Reason::ArpReply), 1);
    // The kernel asked for the client's MAC (to send it an answer): the client's reply
    // passes untouched.
    let mut reply = arp_request(CLIENT_MAC, CLIENT, RESOLVER);
    reply[0..6].copy_from_slice(&mac);
    reply[21] = 2;
    reply[32..38].copy_from_slice(&mac);
    let (act, out) = h.run(h.consumer.ifindex, &reply).unwrap();
    assert_eq!((act, &out), (XDP_PASS, &reply));
    assert_eq!(h.count(Reason::ArpPass), 1);
    // The client's own address is not learned by the data path.
    assert_eq!(h.dp.neighbor(numeric_id("vpc-a"), CLIENT), None);
    // VPC B has no resolver: the same address is nobody there.
    let req = arp_request(CLIENT_MAC, CLIENT, RESOLVER);
    assert_eq!(h.run(h.provider.ifindex, &req).unwrap().0, XDP_DROP);
    let mut reply_b = reply.clone();
    reply_b[0..6].copy_from_slice(&h.provider.mac);
    assert_eq!(h.run(h.provider.ifindex, &reply_b).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropHostIsolated), 2);
}

/// The benchmark's replay (`Harness::time_replayed`, `privatelink_replay` in
/// tests/lab-ebpf) as its rows rely on it: a varied source port with no cycle makes a new
/// flow every run; with a cycle of `n` the runs go through the `n` ports after the stored
/// one, each once a cycle, so each run is a fast-path hit on a flow made before (the
/// cold-hit row); and not in counting order, but scrambled.
#[test]
fn the_benchmark_replay_cycles_through_flows_made_before() {
    let mut h = harness();
    let cif = h.consumer.ifindex;
    let frame = udp_to_eni(&h, 30_000, &[0u8; 18], true);
    let (new, hit) = (Reason::ForwardNewFlow, Reason::ForwardToService);
    let counts = |h: &Harness| (h.count(new), h.count(hit));
    let before = counts(&h);
    h.reset_replay_count().unwrap();
    let (act, _) = h.time_replayed(cif, &frame, Some(34), 3, None, 3).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let made = counts(&h);
    assert_eq!(made, (before.0 + 3, before.1), "three flows made");
    let (act, _) = h.time_replayed(cif, &frame, Some(34), 3, None, 9).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(
        counts(&h),
        (made.0, made.1 + 9),
        "nine hits on the three flows"
    );
    // Each flow's forward entry met three of the nine, each on the fast path (the only
    // path that counts `fast_packets`): in turn, not one flow again and again.
    let mut hits: Vec<(u16, u8)> =
        h.dp.flows()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.dport == 53)
            .map(|(k, e)| (k.sport, e.fast_packets))
            .collect();
    hits.sort_unstable();
    assert_eq!(
        hits,
        [(30_001, 3), (30_002, 3), (30_003, 3)],
        "the flows' client ports and fast-path packets"
    );
    // Without a cycle, every run a port of its own: new flows after the three.
    let (act, _) = h.time_replayed(cif, &frame, Some(34), 0, None, 2).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(counts(&h), (made.0 + 2, made.1 + 9), "two more new flows");
    // A cycle of 64 from port 40 000, made in a whole cycle; then eight runs one at a time,
    // each hitting one flow: the visits follow the harness's order (`scrambled`), which
    // is neither counting order nor a fixed step (modulo the cycle) from port to port.
    let frame = udp_to_eni(&h, 40_000, &[0u8; 18], true);
    h.reset_replay_count().unwrap();
    h.time_replayed(cif, &frame, Some(34), 64, None, 64)
        .unwrap();
    assert_eq!(counts(&h).0, made.0 + 2 + 64, "64 flows made");
    let fast = |h: &Harness| -> std::collections::BTreeMap<u16, u8> {
        h.dp.flows()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.dport == 53 && (40_001..=40_064).contains(&k.sport))
            .map(|(k, e)| (k.sport - 40_000, e.fast_packets))
            .collect()
    };
    h.reset_replay_count().unwrap();
    let (mut before, mut visited) = (fast(&h), Vec::new());
    for run in 0..8 {
        h.time_replayed(cif, &frame, Some(34), 64, None, 1).unwrap();
        let after = fast(&h);
        let hit: Vec<(u16, u8)> = after
            .iter()
            .filter(|(p, n)| before.get(p) != Some(n))
            .map(|(p, n)| (*p, *n))
            .collect();
        assert_eq!(hit.len(), 1, "run {run}: one flow hit: {hit:?}");
        let (port, n) = hit[0];
        assert_eq!(
            before.get(&port).copied().unwrap_or(0) + 1,
            n,
            "run {run}: one hit"
        );
        visited.push(port);
        before = after;
    }
    let want = &privatelink_tests::reference::scrambled(64)[..8];
    assert_eq!(visited, want, "the visits in the harness's order");
    assert_ne!(visited, (1..=8).collect::<Vec<u16>>(), "counting order");
    let steps: std::collections::BTreeSet<u16> = visited
        .windows(2)
        .map(|w| (w[1] + 64 - w[0]) % 64)
        .collect();
    assert!(steps.len() > 1, "visits a fixed step apart: {visited:?}");
}

/// One's complement sum of 16-bit words, folded.
fn ones_sum(words: impl IntoIterator<Item = u16>) -> u16 {
    let mut s: u32 = words.into_iter().map(u32::from).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The 16-bit words of `b` as they lie in memory (the order the checksum deltas are
/// taken in: one's complement sums do not depend on it).
fn ne_words(b: &[u8]) -> Vec<u16> {
    b.chunks(2)
        .map(|c| u16::from_ne_bytes([c[0], c[1]]))
        .collect()
}

/// The benchmark's floor of a NAT hit (`privatelink_nat_floor` in tests/lab-ebpf) does
/// the work it claims, so that what it costs bounds a NAT from below: it drops a frame
/// whose key its line does not hold (either word), a bad header checksum, TTL 1 and a
/// fragment (more fragments, or an offset), and rewrites a good one from the line
/// (addresses, ports, MACs, TTL, both checksums by the line's deltas: a valid frame by
/// etherparse's reckoning), writing a stamp back. The line is the first whole one of the
/// flow's bucket: word 0 of an even bucket, word 4 of an odd one (buckets are 352 bytes
/// from a page-aligned start). Two buckets; each frame's is worked out here from the
/// lab's bucket hash, the other words of it and the other bucket hold another flow.
#[test]
fn the_nat_floor_rewrites_from_its_line() {
    fn table(h: &mut Harness) -> aya::maps::Array<&mut aya::maps::MapData, [u64; 44]> {
        aya::maps::Array::try_from(
            h.reference
                .object()
                .unwrap()
                .map_mut("PL_BASE_TABLE")
                .unwrap(),
        )
        .unwrap()
    }
    let mut h = harness();
    let cif = h.consumer.ifindex;
    h.reference = Reference::with_table(2).unwrap();
    h.reference.set_redirect_target(h.provider.ifindex).unwrap();
    let (new_src, new_dst, new_ports) = ([10, 2, 0, 200], [10, 2, 0, 10], [0x9c, 0x42, 0, 80]);
    let (dst_mac, src_mac) = (LB_MAC, [0x02, 0, 0, 0, 0, 0x77]);
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap());
    let half = |b: &[u8]| u64::from(u16::from_ne_bytes([b[0], b[1]]));
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&dst_mac);
    macs[6..].copy_from_slice(&src_mac);
    // The line for `frame`: its key, the rewrite and the deltas from the words that change
    // (the TTL's, the addresses, the ports).
    let line_for = |frame: &[u8]| {
        let mut rewritten = frame.to_vec();
        rewritten[22] -= 1;
        rewritten[26..30].copy_from_slice(&new_src);
        rewritten[30..34].copy_from_slice(&new_dst);
        rewritten[34..38].copy_from_slice(&new_ports);
        let delta = |ranges: &[std::ops::Range<usize>]| {
            ones_sum(ranges.iter().flat_map(|r| {
                let old = ne_words(&frame[r.clone()]).into_iter().map(|w| !w);
                old.chain(ne_words(&rewritten[r.clone()]))
            }))
        };
        let (ip_delta, l4_delta) = (delta(&[22..24, 26..34]), delta(&[26..30, 30..38]));
        [
            1,
            half(&frame[26..]) << 48
                | half(&frame[28..]) << 32
                | half(&frame[30..]) << 16
                | half(&frame[32..]),
            half(&frame[34..]) << 16 | half(&frame[36..]),
            word(&[new_src, new_dst].concat()),
            u64::from(u32::from_ne_bytes(new_ports)),
            word(&macs[..8]),
            u64::from(u32::from_ne_bytes(macs[8..].try_into().unwrap())),
            u64::from(l4_delta) << 16 | u64::from(ip_delta),
        ]
    };
    let floor = Some("privatelink_nat_floor");
    let mut met = [0; 2];
    for sport in 40_001..40_065 {
        let frame = udp_to_eni(&h, sport, b"floor", false);
        let (src, ports) = (
            u32::from_ne_bytes(frame[26..30].try_into().unwrap()),
            u32::from_ne_bytes(frame[34..38].try_into().unwrap()),
        );
        // The lab programs' flow hash (tests/lab-ebpf `flow_hash`: murmur3's finalizer,
        // as `mix32` here), scaled onto the two buckets.
        let b = ((u64::from(mix32(src ^ mix32(ports))) * 2) >> 32) as usize;
        met[b] += 1;
        let line = line_for(&frame);
        // Another flow (its addresses' word changed) everywhere but the frame's line.
        let mut other = line;
        other[1] ^= 1 << 40;
        let mut buckets = [[0u64; 44]; 2];
        for bucket in &mut buckets {
            for w in 0..5 {
                bucket[w * 8..w * 8 + 8].copy_from_slice(&other);
            }
        }
        buckets[b][b * 4..b * 4 + 8].copy_from_slice(&line);
        let set = |h: &mut Harness, buckets: &[[u64; 44]; 2]| {
            table(h).set(0, buckets[0], 0).unwrap();
            table(h).set(1, buckets[1], 0).unwrap();
        };
        set(&mut h, &buckets);
        let (act, out) = h.run_through(floor, cif, &frame).unwrap();
        assert_eq!(act, XDP_REDIRECT, "port {sport}, bucket {b}");
        let p = parse_checked(&out);
        assert_eq!((p.eth_dst, p.eth_src), (dst_mac, src_mac));
        assert_eq!(
            (p.ip.source, p.ip.destination, p.ip.time_to_live),
            (new_src, new_dst, 63)
        );
        assert_eq!((p.sport, p.dport), (40_002, 80));
        assert_eq!(p.payload, b"floor");
        assert_ne!(
            u16::from_be_bytes([out[40], out[41]]),
            0,
            "a UDP checksum to check"
        );
        let after = table(&mut h).get(&(b as u32), 0).unwrap();
        let at = b * 4;
        assert_eq!(
            after[at + 7] as u32,
            line[7] as u32,
            "the line's deltas kept"
        );
        assert_ne!(after[at + 7] >> 32, 0, "the line's stamp");
        assert_eq!(after[at..at + 7], line[..7], "the rest of the line kept");
        // What a NAT drops, the floor drops: another flow's key (either word), a bad header
        // checksum, TTL 1, a fragment (more fragments; an offset).
        for (w, bit) in [(1, 1u64 << 40), (2, 1)] {
            let mut changed = buckets;
            changed[b][b * 4 + w] ^= bit;
            set(&mut h, &changed);
            let act = h.run_through(floor, cif, &frame).unwrap().0;
            assert_eq!(act, XDP_DROP, "another flow's key word {w}");
        }
        set(&mut h, &buckets);
        let mut bad = frame.clone();
        bad[24] ^= 1;
        assert_eq!(
            h.run_through(floor, cif, &bad).unwrap().0,
            XDP_DROP,
            "bad checksum"
        );
        for (at, value) in [(22, 1u8), (20, 0x20), (21, 1)] {
            let mut f = frame.clone();
            f[at] = value;
            f[24..26].copy_from_slice(&[0, 0]);
            let ip = Ipv4Header::from_slice(&f[14..34]).unwrap().0;
            f[24..26].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
            assert_eq!(
                h.run_through(floor, cif, &f).unwrap().0,
                XDP_DROP,
                "byte {at}"
            );
        }
    }
    // 64 flows: both kinds of bucket met.
    assert!(met[0] > 0 && met[1] > 0, "flows per bucket {met:?}");
}
