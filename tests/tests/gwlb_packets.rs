//! GWLB endpoints through BPF_PROG_TEST_RUN: frames in, and what comes out dissected by
//! scapy (RFC 8926 GENEVE, IPv4, TCP/UDP/ICMP checksums) — never by our own code. Returned
//! GENEVE and the malformed variants are built by scapy too.

use std::collections::BTreeSet;

use etherparse::{Icmpv4Type, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use privatelink_common::{Config, DIR_ORIGINAL, FLOW_GWLB, FlowEntry, Reason};
use privatelink_tests::{
    frames::arp_request,
    gwlb::{
        APPL_A, APPL_A_MAC, APPL_B, APPL_B_MAC, CLIENT, CLIENT_MAC, ENI, GWLB_ADDR, SERVER,
        SERVER_MAC, state, tcp, tcp_ack,
    },
    scapy::{build, dissect, dissect_one},
    testrun::{Harness, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, side_by_side, slot_counters},
};
use privatelink_user::{
    dataplane,
    desired::{self, Unhealthy},
    model::{numeric_id, parse_state},
};
use serde_json::Value;

/// What encapsulation adds, counted here from the wire formats rather than taken from the
/// product (the inner packet's own Ethernet header becomes the outer one): IPv4 without
/// options (RFC 791), UDP (RFC 768), the GENEVE base header (RFC 8926 §3.4) and the three
/// options the README lists, each a 4-byte option header and its data (§3.5): endpoint id
/// 8 B, attachment id 8 B, flow cookie 4 B. The README's "68 bytes are added".
const OUTER_IPV4: usize = 20;
const OUTER_UDP: usize = 8;
const GENEVE_BASE: usize = 8;
const GENEVE_OPTIONS: usize = (4 + 8) + (4 + 8) + (4 + 4);
const OVERHEAD: usize = OUTER_IPV4 + OUTER_UDP + GENEVE_BASE + GENEVE_OPTIONS;
const _: () = assert!(OVERHEAD == 68);

/// The flow cookie of an inner packet (GENEVE option type 3), by the README's definition,
/// "a symmetric hash of the 5-tuple" (`gwlb::reference_cookie`, written out on its own).
/// ICMP echo uses its identifier as both ports; other protocols without ports use 0. The
/// tuple is read from the frame with etherparse.
fn expected_cookie(frame: &[u8]) -> u32 {
    let p = SlicedPacket::from_ethernet(frame).expect("a test frame parses");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    let (src, dst, proto) = (h.source(), h.destination(), h.protocol().0);
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        Some(TransportSlice::Icmpv4(i)) => match i.icmp_type() {
            Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) => (e.id, e.id),
            _ => (0, 0),
        },
        _ => (0, 0),
    };
    privatelink_tests::gwlb::reference_cookie((src, sport), (dst, dport), proto)
}

/// The outer UDP source port for a cookie: the README's "49152 + 14 bits of the flow
/// cookie", its low 14 bits (RFC 8926 §3.3: an ephemeral port from a hash of the flow).
fn expected_sport(cookie: u32) -> u64 {
    49152 + (cookie & 0x3fff) as u64
}

/// The GWLB fixture, with TCP flows that saw only SYNs (embryonic) kept for 10 minutes
/// instead of 10 s: these tests send a flow's packets several scapy calls apart (each
/// starts Python and imports scapy, seconds on a loaded machine), and such a flow had
/// expired in between (the reply then started a flow of its own: its return went out as
/// an ARP probe instead of to the client's learned MAC). The conntrack capacity is the
/// harness's (65 536 entries).
fn harness_with(cross_zone: bool, stickiness: &str, failover: &str) -> Harness {
    let mut h = privatelink_tests::gwlb::harness_with(cross_zone, stickiness, failover);
    h.dp.set_config(&Config {
        embryonic_timeout_ns: 600 * 1_000_000_000,
        flow_capacity: 65536 / 2,
        ..Default::default()
    })
    .unwrap();
    h
}

fn harness() -> Harness {
    harness_with(false, "five_tuple", "no_rebalance")
}

/// Re-applies the state with some appliances unhealthy.
fn set_unhealthy(h: &mut Harness, cross_zone: bool, failover: &str, down: &[[u8; 4]]) {
    let s = parse_state(&state(cross_zone, "five_tuple", failover)).unwrap();
    let unhealthy: Unhealthy = down
        .iter()
        .map(|a| (numeric_id("vpc-appl"), *a))
        .collect::<BTreeSet<_>>();
    let want = desired::compute(&s, dataplane::resolve_link, &unhealthy).unwrap();
    h.dp.apply(&want).unwrap();
    // apply() re-registers next hops with zero MACs only when new; make sure they resolve.
    let appl = numeric_id("vpc-appl");
    h.dp.set_neighbor(appl, APPL_A, APPL_A_MAC).unwrap();
    h.dp.set_neighbor(appl, APPL_B, APPL_B_MAC).unwrap();
}

fn ip(s: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", s[0], s[1], s[2], s[3])
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn udp(h: &Harness, sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, SERVER, 64)
        .udp(sport, 53)
        .write(&mut v, b"query")
        .unwrap();
    v
}

fn ping(h: &Harness, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, SERVER, 64)
        .icmpv4_echo_request(id, 1)
        .write(&mut v, b"ping-payload")
        .unwrap();
    v
}

/// Sends `frame` in on the consumer side; expects GENEVE towards an appliance and returns
/// the output frame and scapy's view of it.
fn encap(h: &mut Harness, frame: &[u8]) -> (Vec<u8>, Value) {
    let (act, out) = h.run(h.consumer.ifindex, frame).unwrap();
    assert_eq!(act, XDP_REDIRECT, "counters: {:?}", h.active_stats());
    let d = dissect_one(&out);
    (out, d)
}

fn appliance_of(d: &Value) -> String {
    d["ip"]["dst"].as_str().unwrap().to_string()
}

fn cookie_of(d: &Value) -> String {
    d["geneve"]["options"][2]["data"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every field of the outer headers and the options, against RFC 8926 and the GWLB layout.
fn check_geneve(h: &Harness, original: &[u8], out: &[u8], d: &Value, appliance: [u8; 4]) {
    // The inner packet's L4 header, found and its checksum verified by scapy, whatever
    // the protocol: a packet scapy could not dissect further fails here.
    let inner = &d["inner"];
    let l4 = match original[14 + 9] {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        p => panic!("test frames are TCP, UDP or ICMP, not {p}"),
    };
    assert!(
        inner.get(l4).is_some(),
        "scapy found no inner {l4} header: {inner}"
    );
    assert_eq!(inner[l4]["csum_ok"], true, "inner {l4} checksum: {inner}");
    assert_eq!(
        out.len(),
        original.len() + OVERHEAD,
        "the frame grows by {OVERHEAD} bytes (20 IPv4 + 8 UDP + 8 GENEVE + 32 of options)"
    );
    assert_eq!(
        out.len(),
        14 + OUTER_IPV4 + OUTER_UDP + GENEVE_BASE + GENEVE_OPTIONS + (original.len() - 14)
    );
    assert_eq!(d["eth"]["src"], mac(h.provider.mac));
    let appl_mac = if appliance == APPL_A {
        APPL_A_MAC
    } else {
        APPL_B_MAC
    };
    assert_eq!(d["eth"]["dst"], mac(appl_mac));
    assert_eq!(d["eth"]["type"], 0x0800);
    let o = &d["ip"];
    assert_eq!(
        (o["version"].as_u64(), o["ihl"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(o["len"].as_u64().unwrap() as usize, out.len() - 14);
    assert_eq!(o["flags"], 2, "DF");
    assert_eq!(o["frag"], 0);
    assert_eq!(o["ttl"], 64);
    assert_eq!(o["proto"], 17);
    assert_eq!(o["src"], GWLB_ADDR);
    assert_eq!(o["dst"], ip(appliance));
    assert_eq!(o["csum_ok"], true, "outer IPv4 checksum");
    let u = &o["udp"];
    assert_eq!(u["dport"], 6081);
    let cookie = expected_cookie(original);
    assert_eq!(
        u["sport"].as_u64(),
        Some(expected_sport(cookie)),
        "outer source port: 49152 + the cookie's low 14 bits (cookie {cookie:08x}): {u}"
    );
    assert_eq!(
        u["len"].as_u64().unwrap() as usize,
        out.len() - 14 - OUTER_IPV4
    );
    assert_eq!(
        u["chksum"], 0,
        "outer UDP checksum zero (allowed over IPv4)"
    );
    let g = &d["geneve"];
    assert_eq!(g["version"], 0);
    assert_eq!(
        g["optionlen"].as_u64(),
        Some((GENEVE_OPTIONS / 4) as u64),
        "32 bytes of options, in 4-byte words"
    );
    assert_eq!(
        (g["oam"].as_u64(), g["critical"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(g["proto"], 0x0800);
    assert_eq!(g["vni"], 0);
    let opts = g["options"].as_array().unwrap();
    assert_eq!(opts.len(), 3, "{g}");
    let want_ep = format!("{:016x}", numeric_id("gwlbe-1"));
    let want_att = format!("{:016x}", numeric_id("vpc-web"));
    let want_cookie = format!("{cookie:08x}");
    for (o, (kind, len, want)) in opts.iter().zip([
        (1, 2, want_ep.as_str()),
        (2, 2, want_att.as_str()),
        (3, 1, want_cookie.as_str()),
    ]) {
        assert_eq!(o["class"], 0x0108);
        assert_eq!(o["type"], kind);
        assert_eq!(o["length"], len);
        let hex = o["data"].as_str().unwrap();
        assert_eq!(hex.len(), len * 8, "option {kind} data length");
        assert_eq!(hex, want, "option {kind}");
    }
    // The inner packet: bare IPv4, the original bytes with TTL one lower.
    let orig = dissect_one(original);
    assert_eq!(inner["src"], orig["ip"]["src"]);
    assert_eq!(inner["dst"], orig["ip"]["dst"]);
    assert_eq!(inner["proto"], orig["ip"]["proto"]);
    assert_eq!(inner["ttl"], 63);
    assert_eq!(inner["csum_ok"], true, "inner IPv4 checksum");
    let ihl = 20;
    assert_eq!(
        &out[14 + OVERHEAD + ihl..],
        &original[14 + ihl..],
        "payload untouched"
    );
}

#[test]
fn tcp_udp_and_icmp_are_encapsulated_field_by_field_both_ways() {
    let mut h = harness();
    let frames = [
        tcp(&h, CLIENT, SERVER, 40000, 80, b"hello"),
        udp(&h, 5353),
        ping(&h, 77),
    ];
    for f in &frames {
        let (out, d) = encap(&mut h, f);
        check_geneve(&h, f, &out, &d, APPL_A);
    }
    assert_eq!(h.count(Reason::GwlbToAppliance), 3);

    // The reply of each flow: the same appliance, the same flow cookie, the same outer
    // source port.
    let (_, fwd) = encap(&mut h, &frames[0]);
    let reply = tcp(&h, SERVER, CLIENT, 80, 40000, b"");
    let (out, back) = encap(&mut h, &reply);
    check_geneve(&h, &reply, &out, &back, APPL_A);
    assert_eq!(cookie_of(&fwd), cookie_of(&back));
    assert_eq!(fwd["ip"]["udp"]["sport"], back["ip"]["udp"]["sport"]);
    let (_, other) = {
        let f = tcp(&h, CLIENT, SERVER, 40001, 80, b"");
        encap(&mut h, &f)
    };
    assert_ne!(
        cookie_of(&fwd),
        cookie_of(&other),
        "another flow, another cookie"
    );
    let mut echo_reply = Vec::new();
    PacketBuilder::ethernet2(SERVER_MAC, h.consumer.mac)
        .ipv4(SERVER, CLIENT, 64)
        .icmpv4_echo_reply(77, 1)
        .write(&mut echo_reply, b"ping-payload")
        .unwrap();
    let (_, ping_fwd) = encap(&mut h, &frames[2]);
    let (_, ping_back) = encap(&mut h, &echo_reply);
    assert_eq!(cookie_of(&ping_fwd), cookie_of(&ping_back));
}

/// The GWLB entries of the flow from the client's port `sport` (`proto`): original and
/// reply direction.
fn gwlb_pair(h: &Harness, sport: u16, proto: u8) -> (FlowEntry, FlowEntry) {
    let flows = h.dp.flows().unwrap();
    let find = |want: &dyn Fn(&privatelink_common::FlowKey, &FlowEntry) -> bool| {
        flows
            .iter()
            .find(|(k, e)| e.flags & FLOW_GWLB != 0 && k.proto == proto && want(k, e))
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("no GWLB entry for client port {sport}"))
    };
    (
        find(&|k, e| e.direction == DIR_ORIGINAL && k.src == CLIENT && k.sport == sport),
        find(&|k, e| e.direction != DIR_ORIGINAL && k.dst == CLIENT && k.dport == sport),
    )
}

#[test]
fn the_established_path_encapsulates_exactly_as_the_full_path() {
    // Two data paths with the same flows: in `slow` the epoch moves before every packet,
    // so each one takes the full path (`privatelink_gwlb_steer`); `fast` takes the
    // established path (the entry program, one flow lookup) from each direction's second
    // packet on. TCP and UDP, both ways, 20 rounds.
    let (mut fast, mut slow) = (harness(), harness());
    let start = std::time::Instant::now();
    let frames = |h: &Harness, i: u8| {
        let body = [i; 24];
        vec![
            tcp_ack(h, CLIENT, SERVER, 42000, 80, &body),
            tcp_ack(h, SERVER, CLIENT, 80, 42000, &body),
            {
                let mut v = Vec::new();
                PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
                    .ipv4(CLIENT, SERVER, 64)
                    .udp(42001, 53)
                    .write(&mut v, &body)
                    .unwrap();
                v
            },
        ]
    };
    let last = side_by_side(&mut fast, &mut slow, 20, frames);
    // The established path's frames, checked on their own by scapy (outer headers, the
    // options, the inner packet's checksums and its TTL).
    for (f, out) in &last {
        let d = dissect_one(out);
        check_geneve(&fast, f, out, &d, APPL_A);
    }
    assert_eq!(fast.count(Reason::GwlbToAppliance), 60);
    assert_eq!(slow.count(Reason::GwlbToAppliance), 60);
    assert_eq!(
        slot_counters(&mut fast),
        slot_counters(&mut slow),
        "appliance counters"
    );
    // The comparison means something only if the established path ran in `fast` (every
    // packet of a direction after its first, but those due for the once-a-second check of
    // the appliance) and never in `slow`.
    let rechecks = start.elapsed().as_secs() as u32 + 1;
    for (sport, proto, dirs) in [(42000, 6, 2), (42001, 17, 1)] {
        let (fwd, reply) = gwlb_pair(&fast, sport, proto);
        let mut got = vec![fwd.fast_packets];
        if dirs == 2 {
            got.push(reply.fast_packets);
        }
        for n in got {
            assert!(
                (19u32.saturating_sub(rechecks)..=19).contains(&(n as u32)),
                "port {sport}: {n} packets on the established path"
            );
        }
        let (fwd, reply) = gwlb_pair(&slow, sport, proto);
        assert_eq!(
            (fwd.fast_packets, reply.fast_packets),
            (0, 0),
            "the full path only"
        );
    }
}

/// What the appliance sends back: its own outer headers (built by scapy, addresses
/// swapped), the GENEVE header and options as received.
fn returned(from: [u8; 4], from_mac: [u8; 6], to_mac: [u8; 6], d: &Value) -> String {
    let g = &d["geneve"];
    let opts: Vec<String> = g["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "GeneveOptions(classid={}, type={}, data=bytes.fromhex('{}'))",
                o["class"],
                o["type"],
                o["data"].as_str().unwrap()
            )
        })
        .collect();
    format!(
        "Ether(src='{}', dst='{}')/IP(src='{}', dst='{GWLB_ADDR}')/UDP(sport=6081, dport=6081)/GENEVE(proto=0x0800, options=[{}])/IP(bytes.fromhex('{}'))",
        mac(from_mac),
        mac(to_mac),
        ip(from),
        opts.join(", "),
        d["inner"]["raw"].as_str().unwrap()
    )
}

fn arp_reply(h: &Harness, from: [u8; 4], from_mac: [u8; 6]) -> Vec<u8> {
    privatelink_tests::frames::arp_reply(h.consumer.mac, from_mac, from)
}

#[test]
fn returned_geneve_is_checked_decapsulated_and_delivered() {
    let mut h = harness();
    let syn = tcp(&h, CLIENT, SERVER, 41000, 80, b"data");
    let (_, d) = encap(&mut h, &syn);
    let back = build(&[returned(APPL_A, APPL_A_MAC, h.provider.mac, &d)]).remove(0);

    // The server's MAC is not known yet: the frame turns into an ARP request for it.
    let (act, out) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let a = dissect_one(&out);
    assert_eq!(a["eth"]["dst"], "ff:ff:ff:ff:ff:ff");
    assert_eq!(a["eth"]["src"], mac(h.consumer.mac));
    assert_eq!(a["arp"]["op"], 1);
    assert_eq!(a["arp"]["psrc"], "0.0.0.0");
    assert_eq!(a["arp"]["pdst"], ip(SERVER));
    assert_eq!(a["arp"]["hwsrc"], mac(h.consumer.mac));
    assert_eq!(h.count(Reason::GwlbArpProbe), 1);

    // The server answers; the returned packet is now delivered, byte for byte.
    let (act, _) = h
        .run(h.consumer.ifindex, &arp_reply(&h, SERVER, SERVER_MAC))
        .unwrap();
    // Learned by the data path, not for the host's stack.
    assert_eq!(act, XDP_DROP, "{:?}", h.active_stats());
    let (act, out) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(&out[0..6], &SERVER_MAC);
    assert_eq!(&out[6..12], &h.consumer.mac);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let inner_hex = d["inner"]["raw"].as_str().unwrap();
    let delivered: String = out[14..].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        delivered, inner_hex,
        "the inner packet as it went to the appliance"
    );
    let v = dissect_one(&out);
    assert_eq!(v["ip"]["csum_ok"], true);
    assert_eq!(v["ip"]["tcp"]["csum_ok"], true);
    assert_eq!(h.count(Reason::GwlbFromAppliance), 1);

    // The reply goes to the client's MAC, learned when the flow started: no ARP.
    let reply = tcp(&h, SERVER, CLIENT, 80, 41000, b"");
    let (_, d) = encap(&mut h, &reply);
    let back = build(&[returned(APPL_A, APPL_A_MAC, h.provider.mac, &d)]).remove(0);
    let (act, out) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(h.count(Reason::GwlbArpProbe), 1);
    assert_eq!(h.count(Reason::GwlbFromAppliance), 2);
}

/// An appliance taken out of the service is refused from its next GENEVE packet, and
/// taken back at once when it returns: each CPU keeps the appliances it has seen
/// (`PL_APPLCACHE`), under the epoch the daemon moves on with every change.
#[test]
fn an_appliance_removed_is_refused_from_its_next_packet() {
    // One CPU for every run: each CPU keeps its own copy.
    privatelink_tests::throughput::pin_to_last_cpu();
    let mut h = harness();
    let syn = tcp(&h, CLIENT, SERVER, 41100, 80, b"data");
    let (_, d) = encap(&mut h, &syn);
    assert_eq!(appliance_of(&d), ip(APPL_A), "zone-a's appliance");
    let back = build(&[returned(APPL_A, APPL_A_MAC, h.provider.mac, &d)]).remove(0);
    // The server's MAC is learned first (the returned frame asks for it).
    h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(h.count(Reason::GwlbArpProbe), 1);
    h.run(h.consumer.ifindex, &arp_reply(&h, SERVER, SERVER_MAC))
        .unwrap();
    let with = state(false, "five_tuple", "no_rebalance");
    let line = "  { zone = \"zone-a\", address = \"10.40.1.10\" },\n";
    assert!(with.contains(line), "the state names zone-a's appliance");
    let without = with.replace(line, "");
    for (st, want) in [
        (&with, XDP_REDIRECT),
        (&without, XDP_DROP),
        (&with, XDP_REDIRECT),
    ] {
        h.apply_state(st).unwrap();
        for _ in 0..3 {
            let (act, out) = h.run(h.provider.ifindex, &back).unwrap();
            assert_eq!(act, want, "{:?}", h.active_stats());
            if want == XDP_REDIRECT {
                assert_eq!(&out[0..6], &SERVER_MAC);
            }
        }
    }
    assert_eq!(h.count(Reason::GwlbFromAppliance), 6);
    assert_eq!(h.count(Reason::DropUnknownAppliance), 3);
}

#[test]
fn malformed_or_foreign_geneve_is_dropped_and_counted() {
    let mut h = harness();
    let syn = tcp(&h, CLIENT, SERVER, 42000, 80, b"");
    let (_, d) = encap(&mut h, &syn);
    let good = returned(APPL_A, APPL_A_MAC, h.provider.mac, &d);
    let inner = d["inner"]["raw"].as_str().unwrap().to_string();
    assert_eq!(inner.len(), 80, "a 40-byte SYN inside");
    let opt = |t: u8, data: &str| {
        format!("GeneveOptions(classid=0x0108, type={t}, data=bytes.fromhex('{data}'))")
    };
    let o = &d["geneve"]["options"];
    let (ep, att, ck) = (
        o[0]["data"].as_str().unwrap(),
        o[1]["data"].as_str().unwrap(),
        o[2]["data"].as_str().unwrap(),
    );
    let outer = |src: [u8; 4]| {
        format!(
            "Ether(src='{}', dst='{}')/IP(src='{}', dst='{GWLB_ADDR}')/UDP(sport=6081, dport=6081)",
            mac(APPL_A_MAC),
            mac(h.provider.mac),
            ip(src)
        )
    };
    let o3 = format!("{}, {}, {}", opt(1, ep), opt(2, att), opt(3, ck));
    let other_flow = tcp(&h, CLIENT, SERVER, 42999, 80, b"");
    let other_inner: String = other_flow[14..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "from an address that is not an appliance",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{inner}'))",
                outer([10, 40, 9, 9])
            ),
            Reason::DropUnknownAppliance,
        ),
        (
            "version 1",
            format!(
                "{}/GENEVE(version=1, proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            "short: a GENEVE header cut after 6 bytes",
            format!("{}/Raw(bytes.fromhex('080008000000'))", outer(APPL_A)),
            Reason::DropGeneveMalformed,
        ),
        (
            "endpoint id option with 12 bytes",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{}, {}, {}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A),
                opt(1, &format!("{ep}00000000")),
                opt(2, att),
                opt(3, ck)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            "option length pointing past the options",
            format!(
                "{}/GENEVE(optionlen=3, proto=0x0800, options=[{}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A),
                opt(3, ck)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            "flow cookie missing",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{}, {}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A),
                opt(1, ep),
                opt(2, att)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            // Found by the fuzzer: the inner packet must lie inside the UDP datagram, not
            // only inside the outer IP packet (UDP length 68: GENEVE and its options, and
            // only the inner packet's 20-byte IP header of its 40 bytes).
            "a UDP length that cuts the inner packet short",
            format!(
                "Ether(src='{}', dst='{}')/IP(src='{}', dst='{GWLB_ADDR}')/UDP(sport=6081, dport=6081, len=68, chksum=0)/GENEVE(proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{inner}'))",
                mac(APPL_A_MAC),
                mac(h.provider.mac),
                ip(APPL_A)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            "an unknown critical option",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{o3}, GeneveOptions(classid=0x0999, type=0x85, data=b'\\x00'*4)])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            "an OAM frame",
            format!(
                "{}/GENEVE(oam=1, proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A)
            ),
            Reason::DropGeneveMalformed,
        ),
        (
            // IPv6 inside goes to the IPv6 return path (gwlb_packets6.rs): no such flow.
            "IPv6 inside, of no flow",
            format!(
                "{}/GENEVE(proto=0x86dd, options=[{o3}])/IPv6(src='fd00::1', dst='fd00::2')/UDP()",
                outer(APPL_A)
            ),
            Reason::DropGwlbNoFlow,
        ),
        (
            // Found by the fuzzer: the inner packet is what gets delivered.
            "an inner IPv4 header checksum that does not verify",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{}dead{}'))",
                outer(APPL_A),
                &inner[..20],
                &inner[24..]
            ),
            Reason::DropBadIpChecksum,
        ),
        (
            "a flow that does not exist",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{other_inner}'))",
                outer(APPL_A)
            ),
            Reason::DropGwlbNoFlow,
        ),
        (
            "the other appliance, not the flow's",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{o3}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_B)
            ),
            Reason::DropGwlbNoFlow,
        ),
        (
            "another endpoint's id",
            format!(
                "{}/GENEVE(proto=0x0800, options=[{}, {}, {}])/IP(bytes.fromhex('{inner}'))",
                outer(APPL_A),
                opt(1, "00000000deadbeef"),
                opt(2, att),
                opt(3, ck)
            ),
            Reason::DropGwlbNoFlow,
        ),
    ];
    let exprs: Vec<String> = cases.iter().map(|c| c.1.clone()).collect();
    let frames = build(&exprs);
    for ((what, _, reason), f) in cases.iter().zip(&frames) {
        let before = h.count(*reason);
        let (act, _) = h.run(h.provider.ifindex, f).unwrap();
        assert_eq!(act, XDP_DROP, "{what}: {:?}", h.active_stats());
        assert_eq!(
            h.count(*reason),
            before + 1,
            "{what}: counted as {reason:?}"
        );
    }
    // The valid original still gets through afterwards (after the ARP for the server).
    let (act, _) = h
        .run(h.consumer.ifindex, &arp_reply(&h, SERVER, SERVER_MAC))
        .unwrap();
    // Learned by the data path, not for the host's stack.
    assert_eq!(act, XDP_DROP, "{:?}", h.active_stats());
    let (act, _) = h
        .run(h.provider.ifindex, &build(&[good]).remove(0))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
}

/// `frame` with its IPv4 DF bit cleared (still not a fragment), the header checksum
/// recomputed by etherparse.
fn without_df(mut frame: Vec<u8>) -> Vec<u8> {
    let (mut ip, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    assert!(ip.dont_fragment, "etherparse sets DF by default");
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    frame[14..14 + ip.header_len()].copy_from_slice(&ip.to_bytes());
    let (check, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    assert!(!check.dont_fragment && !check.more_fragments && check.fragment_offset.value() == 0);
    frame
}

#[test]
fn too_big_for_the_appliance_link_is_answered_with_frag_needed() {
    let mut h = harness();
    let mtu = 1500; // the veth's default
    // An inner packet of exactly mtu - 68 bytes (IPv4 20 + TCP 20 + payload) fits.
    let fits = tcp(
        &h,
        CLIENT,
        SERVER,
        43000,
        80,
        &vec![7u8; mtu - OVERHEAD - 40],
    );
    let (out, _) = encap(&mut h, &fits);
    assert_eq!(out.len(), 14 + mtu);
    // One byte more does not, whatever the DF bit and the protocol (README: "whatever its
    // DF bit"): with DF, a TCP segment; without DF, a TCP segment and a UDP datagram.
    let big_udp = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
            .ipv4(CLIENT, SERVER, 64)
            .udp(5300, 53)
            .write(&mut v, &vec![9u8; mtu - OVERHEAD - 28 + 1])
            .unwrap();
        v
    };
    let cases = [
        (
            "TCP with DF",
            tcp(
                &h,
                CLIENT,
                SERVER,
                43000,
                80,
                &vec![7u8; mtu - OVERHEAD - 39],
            ),
        ),
        (
            "TCP without DF",
            without_df(tcp(
                &h,
                CLIENT,
                SERVER,
                43001,
                80,
                &vec![7u8; mtu - OVERHEAD - 39],
            )),
        ),
        ("UDP without DF", without_df(big_udp)),
    ];
    let mut outs = Vec::new();
    for (what, big) in &cases {
        assert_eq!(big.len() - 14, mtu - OVERHEAD + 1, "{what}");
        let (act, out) = h.run(h.consumer.ifindex, big).unwrap();
        assert_eq!(act, XDP_TX, "{what}: {:?}", h.active_stats());
        outs.push(out);
    }
    let ds = dissect(&outs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    for (((what, big), out), d) in cases.iter().zip(&outs).zip(&ds) {
        assert_eq!(d["eth"]["dst"], mac(CLIENT_MAC), "{what}");
        assert_eq!(d["eth"]["src"], mac(h.consumer.mac), "{what}");
        let o = &d["ip"];
        assert_eq!(
            o["src"], ENI,
            "{what}: from the endpoint, the router on the path"
        );
        assert_eq!(o["dst"], ip(CLIENT), "{what}");
        assert_eq!(o["proto"], 1, "{what}");
        assert_eq!(o["csum_ok"], true, "{what}");
        assert_eq!(
            o["len"].as_u64().unwrap() as usize,
            out.len() - 14,
            "{what}"
        );
        let i = &o["icmp"];
        assert_eq!(
            (i["type"].as_u64(), i["code"].as_u64()),
            (Some(3), Some(4)),
            "{what}"
        );
        assert_eq!(
            i["nexthopmtu"].as_u64(),
            Some(1432),
            "{what}: the port's MTU less the 68 bytes GENEVE adds"
        );
        assert_eq!(i["csum_ok"], true, "{what}");
        let quote: String = big[14..14 + 28]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            i["quote"], quote,
            "{what}: the sender's IP header and 8 bytes of its payload"
        );
    }
    assert_eq!(h.count(Reason::GwlbFragNeeded), 3);
    assert_eq!(
        h.count(Reason::GwlbToAppliance),
        1,
        "only the one that fits"
    );
}

/// The appliance each of `n` flows (client ports 30000..) lands on, and whether each
/// reply landed on the same one.
fn spread(h: &mut Harness, n: u16, proto_udp_every: u16) -> Vec<String> {
    // Run everything first, then one scapy call for all outputs.
    let mut outs = Vec::new();
    for p in 0..n {
        let f = if proto_udp_every > 0 && p % proto_udp_every == 0 {
            udp(h, 30000 + p)
        } else {
            tcp(h, CLIENT, SERVER, 30000 + p, 80, b"")
        };
        let (act, d) = h.run(h.consumer.ifindex, &f).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
        let r = if proto_udp_every > 0 && p % proto_udp_every == 0 {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(SERVER_MAC, h.consumer.mac)
                .ipv4(SERVER, CLIENT, 64)
                .udp(53, 30000 + p)
                .write(&mut v, b"answer")
                .unwrap();
            v
        } else {
            tcp(h, SERVER, CLIENT, 80, 30000 + p, b"")
        };
        let (act, back) = h.run(h.consumer.ifindex, &r).unwrap();
        assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
        outs.push(d);
        outs.push(back);
    }
    let v = dissect(&outs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    v.chunks(2)
        .enumerate()
        .map(|(p, pair)| {
            assert_eq!(
                appliance_of(&pair[0]),
                appliance_of(&pair[1]),
                "flow {p}: symmetric"
            );
            assert_eq!(
                cookie_of(&pair[0]),
                cookie_of(&pair[1]),
                "flow {p}: one cookie"
            );
            appliance_of(&pair[0])
        })
        .collect()
}

#[test]
fn same_zone_first_cross_zone_spreads_and_stickiness_holds() {
    let a = ip(APPL_A);
    let b = ip(APPL_B);
    // Zone-a endpoint, cross-zone off: zone-a's appliance only.
    let mut h = harness();
    assert!(spread(&mut h, 24, 0).iter().all(|x| *x == a));
    // Cross-zone, 5-tuple: flows spread over both.
    let mut h = harness_with(true, "five_tuple", "no_rebalance");
    let s = spread(&mut h, 48, 0);
    assert!(s.contains(&a) && s.contains(&b), "{s:?}");
    // 3-tuple: ports do not matter (all TCP here); 2-tuple: protocols do not either.
    let mut h = harness_with(true, "three_tuple", "no_rebalance");
    let s: BTreeSet<String> = spread(&mut h, 16, 0).into_iter().collect();
    assert_eq!(s.len(), 1, "{s:?}");
    let mut h = harness_with(true, "two_tuple", "no_rebalance");
    let s: BTreeSet<String> = spread(&mut h, 16, 3).into_iter().collect();
    assert_eq!(s.len(), 1, "{s:?}");
}

#[test]
fn unhealthy_appliances_get_no_new_flows_and_rebalance_moves_old_ones() {
    for failover in ["no_rebalance", "rebalance"] {
        let mut h = harness_with(false, "five_tuple", failover);
        let old = tcp(&h, CLIENT, SERVER, 44000, 80, b"");
        let (_, d) = encap(&mut h, &old);
        assert_eq!(appliance_of(&d), ip(APPL_A));

        // Zone-a's appliance fails: new flows fail over to zone b.
        set_unhealthy(&mut h, false, failover, &[APPL_A]);
        let (_, d) = {
            let f = tcp(&h, CLIENT, SERVER, 44001, 80, b"");
            encap(&mut h, &f)
        };
        assert_eq!(appliance_of(&d), ip(APPL_B), "{failover}: new flow");

        // Old flows look at their appliance at most once a second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (_, d) = encap(&mut h, &old);
        let want = if failover == "rebalance" {
            APPL_B
        } else {
            APPL_A
        };
        assert_eq!(appliance_of(&d), ip(want), "{failover}: old flow");
        // Its reply agrees.
        let (_, r) = {
            let f = tcp(&h, SERVER, CLIENT, 80, 44000, b"");
            encap(&mut h, &f)
        };
        assert_eq!(appliance_of(&r), ip(want), "{failover}: old flow's reply");

        // Back to healthy: new flows return to the zone's own appliance.
        set_unhealthy(&mut h, false, failover, &[]);
        let (_, d) = {
            let f = tcp(&h, CLIENT, SERVER, 44002, 80, b"");
            encap(&mut h, &f)
        };
        assert_eq!(appliance_of(&d), ip(APPL_A), "{failover}: recovered");

        // Nothing healthy at all: counted, not sent anywhere.
        set_unhealthy(&mut h, false, failover, &[APPL_A, APPL_B]);
        let (act, _) = h
            .run(h.consumer.ifindex, &tcp(&h, CLIENT, SERVER, 44003, 80, b""))
            .unwrap();
        assert_eq!(act, XDP_DROP);
        assert_eq!(h.count(Reason::DropNoHealthyAppliance), 1);
    }
}

#[test]
fn dissector_sees_all_three_frames_at_once() {
    // The dissector handles several frames per call (used above one at a time).
    let h = harness();
    let v = dissect(&[
        &udp(&h, 1),
        &ping(&h, 2),
        &tcp(&h, CLIENT, SERVER, 3, 4, b""),
    ]);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0]["ip"]["udp"]["sport"], 1);
    assert_eq!(v[1]["ip"]["icmp"]["id"], 2);
    assert_eq!(v[2]["ip"]["tcp"]["dport"], 4);
}

/// The forwarder host's own address in the appliance VPC (the GWLB address) is reachable
/// only by the appliances it probes, from the port it probes; nobody else in that VPC,
/// and nobody in another VPC (the same address forged on the consumer's interface),
/// reaches the host's stack.
#[test]
fn only_probed_appliances_reach_the_hosts_own_address() {
    let mut h = harness();
    let gwlb: [u8; 4] = GWLB_ADDR.parse::<std::net::Ipv4Addr>().unwrap().octets();
    // The harness's health checks probe port 80 (the default).
    let frame = |dst_mac: [u8; 6], src: [u8; 4], sport: u16| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(APPL_A_MAC, dst_mac)
            .ipv4(src, gwlb, 64)
            .tcp(sport, 40000, 1, 65000)
            .syn()
            .ack(1)
            .write(&mut v, b"")
            .unwrap();
        v
    };
    let provider_mac = h.provider.mac;
    let icmp = |icmp_type: etherparse::Icmpv4Type| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(APPL_A_MAC, provider_mac)
            .ipv4(APPL_A, gwlb, 64)
            .icmpv4(icmp_type)
            .write(&mut v, &[0u8; 28])
            .unwrap();
        v
    };
    // An appliance's answer to a health probe, and an ICMP error from it: the host's
    // stack gets them, untouched.
    let unreachable = icmp(etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::Port,
    ));
    for f in [frame(h.provider.mac, APPL_A, 80), unreachable] {
        let (act, out) = h.run(h.provider.ifindex, &f).unwrap();
        assert_eq!((act, &out), (XDP_PASS, &f), "{:?}", h.active_stats());
    }
    assert_eq!(h.count(Reason::PassHost), 2);
    // A SYN from the health port (opening a connection to the host, e.g. its ssh).
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(APPL_A_MAC, h.provider.mac)
        .ipv4(APPL_A, gwlb, 64)
        .tcp(80, 22, 1, 65000)
        .syn()
        .write(&mut syn, b"")
        .unwrap();
    let dropped = [
        (h.provider.ifindex, syn),
        // The appliance from another port, or pinging the host.
        (h.provider.ifindex, frame(h.provider.mac, APPL_A, 22)),
        (
            h.provider.ifindex,
            icmp(etherparse::Icmpv4Type::EchoRequest(
                etherparse::IcmpEchoHeader { id: 1, seq: 1 },
            )),
        ),
        // Another address of the appliance VPC.
        (
            h.provider.ifindex,
            frame(h.provider.mac, [10, 40, 1, 77], 80),
        ),
        // The GWLB address forged from the consumer's VPC, even with an appliance's source.
        (h.consumer.ifindex, frame(h.consumer.mac, CLIENT, 80)),
        (h.consumer.ifindex, frame(h.consumer.mac, APPL_A, 80)),
    ];
    for (i, (ifindex, f)) in dropped.iter().enumerate() {
        assert_eq!(h.run(*ifindex, f).unwrap().0, XDP_DROP, "case {i}");
    }
    assert_eq!(h.count(Reason::DropHostIsolated), 6);
    assert_eq!(h.count(Reason::PassHost), 2);
    // ARP: for the host's address from an appliance in its own VPC, to the host; from
    // another address of that VPC (the kernel would learn it), or from another VPC, not.
    let who_has = arp_request(APPL_A_MAC, APPL_A, gwlb);
    assert_eq!(h.run(h.provider.ifindex, &who_has).unwrap().0, XDP_PASS);
    assert_eq!(h.run(h.consumer.ifindex, &who_has).unwrap().0, XDP_DROP);
    let stranger = arp_request(APPL_A_MAC, [10, 40, 1, 77], gwlb);
    assert_eq!(h.run(h.provider.ifindex, &stranger).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropHostIsolated), 8);
}

/// The steer path (the full one: the flow's entry never stamped, so every packet goes
/// there) while another CPU's writer takes the flow's slot again and again, as an eviction
/// does (`slotrace::race`): every frame sent to an appliance is this flow's own
/// encapsulation, never one with another flow's appliance, outer addresses or MACs. The
/// appliances unhealthy and no rebalancing: the flow keeps its appliance, and a packet
/// that misses the flow makes none (`drop_no_healthy_appliance`).
#[test]
fn a_slot_taken_while_the_steer_path_reads_it_never_lends_the_packet_another_flow() {
    steer_race(false);
}

/// The same race on the established path's GWLB branch (`established::to_appliance`):
/// the flow's entry stamped and its appliance confirmed for good, so every packet that
/// finds it is encapsulated there. One whose lookup misses it goes to the steer path,
/// which sends it if its own lookup finds the flow back (the same frame, the same
/// counter) and else has no healthy appliance to give it: that the established path took
/// the packets is checked for the first one only (its `fast_packets`, which the writer
/// puts back at every turn), and the frames of both paths are checked alike.
#[test]
fn a_slot_taken_while_the_established_path_encapsulates_never_lends_the_packet_another_flow() {
    steer_race(true);
}

/// `a_slot_taken_while_the_steer_path_reads_it_never_lends_the_packet_another_flow` and,
/// with `stamped`, its established-path variant.
fn steer_race(stamped: bool) {
    use privatelink_common::{FlowKey, PROTO_TCP};
    use privatelink_tests::slotrace::{SLOTS, one_race, race};

    let _one = one_race();
    let mut h = harness();
    let frame = tcp_ack(&h, CLIENT, SERVER, 42000, 80, &[7; 24]);
    let (act, expected) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    check_geneve(&h, &frame, &expected, &dissect_one(&expected), APPL_A);
    set_unhealthy(&mut h, false, "no_rebalance", &[APPL_A, APPL_B]);
    let (key, mut entry) =
        h.dp.flows()
            .unwrap()
            .into_iter()
            .find(|(k, e)| e.flags & FLOW_GWLB != 0 && k.src == CLIENT && k.sport == 42000)
            .unwrap();
    if stamped {
        entry.epoch = h.dp.epoch().unwrap();
        entry = privatelink_tests::slotrace::Confirmed::confirmed(entry);
    } else {
        entry.epoch = 0;
    }
    h.dp.put_flow(&key, entry).unwrap();
    let fast = |h: &Harness| h.dp.flow::<FlowEntry>(&key).unwrap().unwrap().fast_packets;
    let before = fast(&h);
    assert_eq!(
        h.run(h.consumer.ifindex, &frame).unwrap(),
        (XDP_REDIRECT, expected.clone()),
        "its appliance kept"
    );
    assert_eq!(fast(&h) != before, stamped, "the established path took it");
    let other_key = FlowKey::new(key.vpc_id, [10, 30, 1, 99], SERVER, 40001, 80, PROTO_TCP);
    let other = FlowEntry {
        new_src: [10, 99, 0, 1],
        new_dst: [10, 99, 0, 2],
        new_sport: 1234,
        src_mac: [0x02, 0, 0, 0, 0, 0x98],
        dst_mac: [0x02, 0, 0, 0, 0, 0x99],
        csum_ip: entry.csum_ip ^ 0x5a5a,
        csum_l4: entry.csum_l4 ^ 0xa5a5,
        counter_slot: privatelink_tests::slotrace::OTHER_SLOT,
        ..entry
    };
    let ifindex = h.consumer.ifindex;
    race(
        &mut h,
        &SLOTS,
        &frame,
        ifindex,
        &expected,
        (key, entry),
        (other_key, other),
        &[Reason::DropFlowChanged, Reason::DropNoHealthyAppliance],
        &[Reason::GwlbToAppliance],
    );
}

/// The return path (GENEVE back from the appliance, the flow found by its inner tuple)
/// while another CPU's writer takes the flow's slot again and again: the frame delivered
/// takes its destination MAC from the entry (`peer_mac`), so the other flow differs in
/// that alone (its checks, appliance and endpoint pass on it). Every frame delivered is
/// this flow's, to the client's MAC; a lookup that misses is `drop_gwlb_no_flow`.
#[test]
fn a_slot_taken_while_the_return_path_reads_it_never_lends_the_packet_another_flow() {
    use privatelink_common::{FlowKey, PROTO_TCP};
    use privatelink_tests::slotrace::{SLOTS, one_race, race};

    let _one = one_race();
    let mut h = harness();
    let syn = tcp(&h, CLIENT, SERVER, 41000, 80, b"data");
    encap(&mut h, &syn);
    let reply = tcp(&h, SERVER, CLIENT, 80, 41000, b"");
    let (_, d) = encap(&mut h, &reply);
    let back = build(&[returned(APPL_A, APPL_A_MAC, h.provider.mac, &d)]).remove(0);
    let (act, expected) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(&expected[0..6], &CLIENT_MAC);
    let delivered: String = expected[14..].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(delivered, d["inner"]["raw"].as_str().unwrap());
    let (key, entry) =
        h.dp.flows()
            .unwrap()
            .into_iter()
            .find(|(k, e)| e.flags & FLOW_GWLB != 0 && k.src == SERVER && k.dport == 41000)
            .unwrap();
    assert_eq!(entry.peer_mac, CLIENT_MAC);
    let other_key = FlowKey::new(key.vpc_id, [10, 30, 1, 99], CLIENT, 40001, 80, PROTO_TCP);
    let other = FlowEntry {
        peer_mac: [0x02, 0, 0, 0, 0, 0x97],
        counter_slot: privatelink_tests::slotrace::OTHER_SLOT,
        ..entry
    };
    let ifindex = h.provider.ifindex;
    race(
        &mut h,
        &SLOTS,
        &back,
        ifindex,
        &expected,
        (key, entry),
        (other_key, other),
        &[Reason::DropFlowChanged, Reason::DropGwlbNoFlow],
        &[Reason::GwlbFromAppliance],
    );
}
