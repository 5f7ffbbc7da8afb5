//! IPv6 through GWLB endpoints, through BPF_PROG_TEST_RUN: IPv6 frames in, and what comes
//! out (GENEVE with protocol 0x86DD over IPv4, neighbour solicitations, Packet Too Big)
//! dissected by scapy (`scripts/dissect6.py`) — never by our own code. Returned GENEVE is
//! built by scapy too.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use privatelink_common::{Config, Reason};
use privatelink_tests::{
    gwlb::{
        APPL_A, APPL_A_MAC, APPL_B, APPL_B_MAC, CLIENT, CLIENT_MAC, CLIENT6, CLIENT6_STR, ENI,
        ENI6, ENI6_STR, GWLB_ADDR, SERVER_MAC, SERVER6, SERVER6_STR, harness6_with, tcp6,
    },
    scapy::build,
    testrun::{Harness, XDP_DROP, XDP_REDIRECT, XDP_TX, side_by_side, slot_counters},
};
use privatelink_user::model::numeric_id;
use serde_json::Value;

/// What encapsulation adds, from the wire formats (see gwlb_packets.rs): outer IPv4 20,
/// UDP 8, GENEVE 8, options 32.
const OVERHEAD: usize = 20 + 8 + 8 + (4 + 8) + (4 + 8) + (4 + 4);

/// Each frame as scapy dissects it (IPv6 bare or inside GENEVE).
fn dissect(frames: &[&[u8]]) -> Vec<Value> {
    let input: String = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", include_str!("../scripts/dissect6.py")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with scapy (installed by cargo xtask)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scapy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON from dissect6.py"))
        .collect()
}

fn dissect_one(frame: &[u8]) -> Value {
    dissect(&[frame]).remove(0)
}

/// The fixture with embryonic flows kept 10 minutes (see gwlb_packets.rs: scapy calls
/// take seconds).
fn harness_with(cross_zone: bool, stickiness: &str) -> Harness {
    let mut h = harness6_with(cross_zone, stickiness, "no_rebalance");
    h.dp.set_config(&Config {
        embryonic_timeout_ns: 600 * 1_000_000_000,
        flow_capacity: 65536 / 2,
        ..Default::default()
    })
    .unwrap();
    h
}

fn harness() -> Harness {
    harness_with(false, "five_tuple")
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip(s: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", s[0], s[1], s[2], s[3])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn udp6(h: &Harness, sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(CLIENT6, SERVER6, 64)
        .udp(sport, 53)
        .write(&mut v, b"query")
        .unwrap();
    v
}

fn ping6(h: &Harness, id: u16, reply: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let (src, dst, smac) = if reply {
        (SERVER6, CLIENT6, SERVER_MAC)
    } else {
        (CLIENT6, SERVER6, CLIENT_MAC)
    };
    let b = PacketBuilder::ethernet2(smac, h.consumer.mac).ipv6(src, dst, 64);
    let b = if reply {
        b.icmpv6_echo_reply(id, 1)
    } else {
        b.icmpv6_echo_request(id, 1)
    };
    b.write(&mut v, b"ping-payload").unwrap();
    v
}

/// The flow cookie of an IPv6 inner packet, by the README's definition
/// (`gwlb::reference_cookie6`, written out on its own); ICMPv6 echo's identifier as both
/// ports. The tuple is read from the frame with etherparse.
fn expected_cookie(frame: &[u8]) -> u32 {
    let p = SlicedPacket::from_ethernet(frame).expect("a test frame parses");
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not IPv6")
    };
    let h = ip.header();
    let (src, dst) = (h.source(), h.destination());
    let (sport, dport, proto) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port(), 6),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), 17),
        Some(TransportSlice::Icmpv6(i)) => match i.icmp_type() {
            etherparse::Icmpv6Type::EchoRequest(e) | etherparse::Icmpv6Type::EchoReply(e) => {
                (e.id, e.id, 58)
            }
            _ => (0, 0, 58),
        },
        _ => panic!("test frames are TCP, UDP or ICMPv6"),
    };
    privatelink_tests::gwlb::reference_cookie6((src, sport), (dst, dport), proto)
}

/// Sends `frame` in on the consumer side; expects GENEVE towards an appliance.
fn encap(h: &mut Harness, frame: &[u8]) -> Vec<u8> {
    let (act, out) = h.run(h.consumer.ifindex, frame).unwrap();
    assert_eq!(act, XDP_REDIRECT, "counters: {:?}", h.active_stats());
    out
}

fn cookie_of(d: &Value) -> String {
    d["geneve"]["options"][2]["data"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every field of the outer headers, GENEVE and its options, and the inner IPv6 packet.
fn check_geneve(h: &Harness, original: &[u8], out: &[u8], d: &Value, appliance: [u8; 4]) {
    assert_eq!(out.len(), original.len() + OVERHEAD);
    assert_eq!(d["eth"]["src"], mac(h.provider.mac));
    let appl_mac = if appliance == APPL_A {
        APPL_A_MAC
    } else {
        APPL_B_MAC
    };
    assert_eq!(d["eth"]["dst"], mac(appl_mac));
    assert_eq!(d["eth"]["type"], 0x0800, "the outer header stays IPv4");
    let o = &d["ip"];
    assert_eq!(o["ihl"], 5);
    assert_eq!(o["len"].as_u64().unwrap() as usize, out.len() - 14);
    assert_eq!(o["flags"], 2, "DF");
    assert_eq!((o["frag"].as_u64(), o["ttl"].as_u64()), (Some(0), Some(64)));
    assert_eq!(o["proto"], 17);
    assert_eq!(o["src"], GWLB_ADDR);
    assert_eq!(o["dst"], ip(appliance));
    assert_eq!(o["csum_ok"], true, "outer IPv4 checksum");
    let u = &d["udp"];
    let cookie = expected_cookie(original);
    assert_eq!(u["dport"], 6081);
    assert_eq!(
        u["sport"].as_u64(),
        Some(49152 + (cookie & 0x3fff) as u64),
        "{u}"
    );
    assert_eq!(u["len"].as_u64().unwrap() as usize, out.len() - 14 - 20);
    assert_eq!(u["chksum"], 0);
    let g = &d["geneve"];
    assert_eq!(
        (g["version"].as_u64(), g["optionlen"].as_u64()),
        (Some(0), Some(8))
    );
    assert_eq!(
        (g["oam"].as_u64(), g["critical"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(g["proto"], 0x86dd, "IPv6 inside");
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
        assert_eq!(
            (o["class"].as_u64(), o["type"].as_u64()),
            (Some(0x0108), Some(kind))
        );
        assert_eq!(o["length"], len);
        assert_eq!(o["data"], want, "option {kind}");
    }
    // The inner packet: the original IPv6 packet, hop limit one lower, its upper-layer
    // checksum still valid (scapy, pseudo-header included).
    let inner = &d["inner"];
    let orig = dissect_one(original);
    for f in ["src", "dst", "nh", "plen", "sport", "dport"] {
        assert_eq!(inner[f], orig["ipv6"][f], "{f}");
    }
    assert_eq!(inner["hlim"], 63);
    assert_eq!(inner["l4_csum_ok"], true, "{inner}");
    assert_eq!(
        &out[14 + OVERHEAD + 8..],
        &original[14 + 8..],
        "only the hop limit changed"
    );
}

#[test]
fn tcp_udp_and_icmpv6_are_encapsulated_field_by_field_both_ways() {
    let mut h = harness();
    let frames = [
        tcp6(&h, CLIENT6, SERVER6, 40000, 80, b"hello"),
        udp6(&h, 5353),
        ping6(&h, 77, false),
    ];
    let outs: Vec<Vec<u8>> = frames.iter().map(|f| encap(&mut h, f)).collect();
    let ds = dissect(&outs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    for ((f, out), d) in frames.iter().zip(&outs).zip(&ds) {
        check_geneve(&h, f, out, d, APPL_A);
    }
    assert_eq!(h.count(Reason::Gwlb6ToAppliance), 3);
    assert_eq!(h.count(Reason::GwlbToAppliance), 0, "IPv6 counted apart");

    // Each flow's reply: the same appliance and cookie.
    let replies = [
        tcp6(&h, SERVER6, CLIENT6, 80, 40000, b""),
        ping6(&h, 77, true),
    ];
    let routs: Vec<Vec<u8>> = replies.iter().map(|f| encap(&mut h, f)).collect();
    let other_flow = tcp6(&h, CLIENT6, SERVER6, 40001, 80, b"");
    let other = encap(&mut h, &other_flow);
    let mut all: Vec<&[u8]> = routs.iter().map(Vec::as_slice).collect();
    all.push(&other);
    let rs = dissect(&all);
    for ((f, out), d) in replies.iter().zip(&routs).zip(&rs) {
        check_geneve(&h, f, out, d, APPL_A);
    }
    assert_eq!(
        cookie_of(&ds[0]),
        cookie_of(&rs[0]),
        "TCP: one cookie both ways"
    );
    assert_eq!(
        cookie_of(&ds[2]),
        cookie_of(&rs[1]),
        "echo: one cookie both ways"
    );
    assert_eq!(ds[0]["udp"]["sport"], rs[0]["udp"]["sport"]);
    assert_ne!(
        cookie_of(&ds[0]),
        cookie_of(&rs[2]),
        "another flow, another cookie"
    );
}

/// What the appliance sends back: its own outer headers (scapy), the GENEVE header and
/// options as received, the inner IPv6 packet.
fn returned(from: [u8; 4], from_mac: [u8; 6], to_mac: [u8; 6], d: &Value, g: &str) -> String {
    let opts: Vec<String> = d["geneve"]["options"]
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
        "Ether(src='{}', dst='{}')/IP(src='{}', dst='{GWLB_ADDR}')/UDP(sport=6081, dport=6081)/GENEVE({g}options=[{}])/IPv6(bytes.fromhex('{}'))",
        mac(from_mac),
        mac(to_mac),
        ip(from),
        opts.join(", "),
        d["inner"]["raw"].as_str().unwrap()
    )
}

/// A Neighbour Advertisement from `who` (solicited, override, its link-layer address),
/// to the forwarder port's link-local address, built by scapy.
fn advertisement(h: &Harness, who: &str, who_mac: [u8; 6], to: &str) -> Vec<u8> {
    build(&[format!(
        "Ether(src='{}', dst='{}')/IPv6(src='{who}', dst='{to}', hlim=255)/ICMPv6ND_NA(tgt='{who}', R=0, S=1, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{}')",
        mac(who_mac),
        mac(h.consumer.mac),
        mac(who_mac)
    )])
    .remove(0)
}

/// The port's link-local address (modified EUI-64 of its MAC), computed here.
fn link_local(m: [u8; 6]) -> String {
    let a = std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ]);
    a.to_string()
}

#[test]
fn returned_geneve_with_ipv6_is_checked_decapsulated_and_delivered() {
    let mut h = harness();
    let syn = tcp6(&h, CLIENT6, SERVER6, 41000, 80, b"data");
    let out = encap(&mut h, &syn);
    let d = dissect_one(&out);
    let back = build(&[returned(
        APPL_A,
        APPL_A_MAC,
        h.provider.mac,
        &d,
        "proto=0x86dd, ",
    )])
    .remove(0);

    // The server's MAC is not known yet: the frame becomes a Neighbour Solicitation.
    let (act, ns) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(h.count(Reason::GwlbNsProbe), 1);
    let n = dissect_one(&ns);
    let s = SERVER6;
    assert_eq!(
        n["eth"]["dst"],
        mac([0x33, 0x33, 0xff, s[13], s[14], s[15]]),
        "the solicited-node multicast MAC (RFC 2464)"
    );
    assert_eq!(n["eth"]["src"], mac(h.consumer.mac));
    let i = &n["ipv6"];
    assert_eq!(i["hlim"], 255, "RFC 4861 7.1.1");
    assert_eq!(i["src"], link_local(h.consumer.mac));
    assert_eq!(
        i["dst"], "ff02::1:ff00:10",
        "the target's solicited-node address"
    );
    assert_eq!(i["l4_csum_ok"], true, "{i}");
    let icmp = &i["icmp6"];
    assert_eq!(
        (icmp["type"].as_u64(), icmp["code"].as_u64()),
        (Some(135), Some(0))
    );
    let target = hex(&SERVER6);
    let option = format!("0101{}", hex(&h.consumer.mac));
    assert_eq!(
        icmp["rest"],
        format!("{target}{option}"),
        "target and source LL option"
    );

    // The server answers; the returned packet is now delivered, byte for byte.
    let na = advertisement(&h, SERVER6_STR, SERVER_MAC, &link_local(h.consumer.mac));
    let (act, _) = h.run(h.consumer.ifindex, &na).unwrap();
    assert_eq!(
        act,
        XDP_DROP,
        "learned, not for the host: {:?}",
        h.active_stats()
    );
    let (act, out) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(&out[0..6], &SERVER_MAC);
    assert_eq!(&out[6..12], &h.consumer.mac);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(
        hex(&out[14..]),
        d["inner"]["raw"],
        "the inner packet as it went out"
    );
    let v = dissect_one(&out);
    assert_eq!(v["ipv6"]["l4_csum_ok"], true);
    assert_eq!(h.count(Reason::Gwlb6FromAppliance), 1);

    // The reply goes to the client's MAC, learned when the flow started: no solicitation.
    let reply = tcp6(&h, SERVER6, CLIENT6, 80, 41000, b"");
    let d = dissect_one(&encap(&mut h, &reply));
    let back = build(&[returned(
        APPL_A,
        APPL_A_MAC,
        h.provider.mac,
        &d,
        "proto=0x86dd, ",
    )])
    .remove(0);
    let (act, out) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(h.count(Reason::GwlbNsProbe), 1);
    assert_eq!(h.count(Reason::Gwlb6FromAppliance), 2);
}

#[test]
fn foreign_or_malformed_ipv6_geneve_is_dropped_and_counted() {
    let mut h = harness();
    let syn = tcp6(&h, CLIENT6, SERVER6, 42000, 80, b"");
    let d = dissect_one(&encap(&mut h, &syn));
    let other = {
        let f = tcp6(&h, CLIENT6, SERVER6, 42999, 80, b"");
        let mut o = d.clone();
        o["inner"]["raw"] = Value::String(hex(&f[14..]));
        o
    };
    let mut wrong_ep = d.clone();
    wrong_ep["geneve"]["options"][0]["data"] = Value::String("00000000deadbeef".into());
    let mut short = d.clone();
    let raw = d["inner"]["raw"].as_str().unwrap();
    short["inner"]["raw"] = Value::String(raw[..raw.len() - 8].to_string());
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "the other appliance, not the flow's",
            returned(APPL_B, APPL_B_MAC, h.provider.mac, &d, "proto=0x86dd, "),
            Reason::DropGwlbNoFlow,
        ),
        (
            "a flow that does not exist",
            returned(APPL_A, APPL_A_MAC, h.provider.mac, &other, "proto=0x86dd, "),
            Reason::DropGwlbNoFlow,
        ),
        (
            "another endpoint's id",
            returned(
                APPL_A,
                APPL_A_MAC,
                h.provider.mac,
                &wrong_ep,
                "proto=0x86dd, ",
            ),
            Reason::DropGwlbNoFlow,
        ),
        (
            "an IPv6 payload length past the datagram",
            returned(APPL_A, APPL_A_MAC, h.provider.mac, &short, "proto=0x86dd, "),
            Reason::DropGeneveMalformed,
        ),
        (
            "an IPv4 packet labelled IPv6",
            returned(APPL_A, APPL_A_MAC, h.provider.mac, &d, "proto=0x86dd, ").replace(
                "/IPv6(bytes.fromhex(",
                "/IP(bytes.fromhex('4500001400000000400600000a0000010a000002'+",
            ),
            Reason::DropGeneveMalformed,
        ),
    ];
    let frames = build(&cases.iter().map(|c| c.1.clone()).collect::<Vec<_>>());
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
    assert_eq!(h.count(Reason::Gwlb6FromAppliance), 0);
}

#[test]
fn too_big_for_the_appliance_link_is_answered_with_packet_too_big() {
    let mut h = harness();
    let mtu = 1500; // the veth's default
    // An IPv6 packet of exactly mtu - 68 bytes fits (IPv6 40 + TCP 20 + payload).
    let fits = tcp6(
        &h,
        CLIENT6,
        SERVER6,
        43000,
        80,
        &vec![7u8; mtu - OVERHEAD - 60],
    );
    assert_eq!(encap(&mut h, &fits).len(), 14 + mtu);
    let big = tcp6(
        &h,
        CLIENT6,
        SERVER6,
        43001,
        80,
        &vec![7u8; mtu - OVERHEAD - 59],
    );
    let (act, out) = h.run(h.consumer.ifindex, &big).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    let d = dissect_one(&out);
    assert_eq!(d["eth"]["dst"], mac(CLIENT_MAC));
    assert_eq!(d["eth"]["src"], mac(h.consumer.mac));
    let i = &d["ipv6"];
    assert_eq!(
        i["src"],
        link_local(h.consumer.mac),
        "the port's link-local address"
    );
    assert_eq!(i["dst"], CLIENT6_STR);
    assert_eq!(i["nh"], 58);
    assert_eq!(i["l4_csum_ok"], true, "ICMPv6 checksum");
    assert_eq!(
        out.len(),
        14 + 1280,
        "as much as fits IPv6's minimum MTU (RFC 4443 3.2)"
    );
    let icmp = &i["icmp6"];
    assert_eq!(
        (icmp["type"].as_u64(), icmp["code"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        icmp["word"], 1432,
        "the port's MTU less the 68 bytes GENEVE adds"
    );
    assert_eq!(icmp["rest"], hex(&big[14..14 + 1232]), "the quoted packet");
    assert_eq!(h.count(Reason::GwlbPacketTooBig), 1);
    assert_eq!(
        h.count(Reason::Gwlb6ToAppliance),
        1,
        "only the one that fits"
    );
}

#[test]
fn hop_limit_one_and_link_local_sources_are_not_forwarded() {
    let mut h = harness();
    let mut f = tcp6(&h, CLIENT6, SERVER6, 44000, 80, b"");
    f[14 + 7] = 1;
    let (act, _) = h.run(h.consumer.ifindex, &f).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropHopLimitExceeded), 1);
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[15] = 9;
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(ll, SERVER6, 64)
        .udp(1, 2)
        .write(&mut v, b"x")
        .unwrap();
    let (act, _) = h.run(h.consumer.ifindex, &v).unwrap();
    assert_eq!(act, XDP_DROP);
    assert_eq!(h.count(Reason::DropBadIpv6Source), 1);
    assert_eq!(h.count(Reason::Gwlb6ToAppliance), 0);
}

/// The appliance each of `n` flows lands on; each reply must land on the same one with
/// the same cookie.
fn spread(h: &mut Harness, n: u16) -> Vec<String> {
    let mut outs = Vec::new();
    for p in 0..n {
        let (there, back) = (
            tcp6(h, CLIENT6, SERVER6, 30000 + p, 80, b""),
            tcp6(h, SERVER6, CLIENT6, 80, 30000 + p, b""),
        );
        outs.push(encap(h, &there));
        outs.push(encap(h, &back));
    }
    let v = dissect(&outs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    v.chunks(2)
        .enumerate()
        .map(|(p, pair)| {
            assert_eq!(
                pair[0]["ip"]["dst"], pair[1]["ip"]["dst"],
                "flow {p}: symmetric"
            );
            assert_eq!(
                cookie_of(&pair[0]),
                cookie_of(&pair[1]),
                "flow {p}: one cookie"
            );
            pair[0]["ip"]["dst"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn cross_zone_spreads_ipv6_flows_symmetrically_and_stickiness_holds() {
    let (a, b) = (ip(APPL_A), ip(APPL_B));
    let mut h = harness();
    assert!(
        spread(&mut h, 16).iter().all(|x| *x == a),
        "zone a's own appliance"
    );
    let mut h = harness_with(true, "five_tuple");
    let s = spread(&mut h, 48);
    assert!(s.contains(&a) && s.contains(&b), "{s:?}");
    let mut h = harness_with(true, "two_tuple");
    let s: std::collections::BTreeSet<String> = spread(&mut h, 16).into_iter().collect();
    assert_eq!(
        s.len(),
        1,
        "two-tuple: one appliance for one address pair: {s:?}"
    );
}

/// A Neighbour Solicitation from the client for `target` (to its solicited-node address,
/// RFC 4291 2.7.1, with the client's link-layer address), built by scapy; its group is
/// worked out here, not by the data path.
fn solicitation(target: [u8; 16]) -> Vec<u8> {
    let t = std::net::Ipv6Addr::from(target);
    let group = std::net::Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, target[13], target[14], target[15],
    ]);
    build(&[format!(
        "Ether(src='{}', dst='{}')/IPv6(src='{CLIENT6_STR}', dst='{group}', hlim=255)/ICMPv6ND_NS(tgt='{t}')/ICMPv6NDOptSrcLLAddr(lladdr='{}')",
        mac(CLIENT_MAC),
        mac([0x33, 0x33, 0xff, target[13], target[14], target[15]]),
        mac(CLIENT_MAC)
    )])
    .remove(0)
}

#[test]
fn the_endpoints_ipv6_eni_answers_neighbour_solicitations_and_nothing_else() {
    let mut h = harness();
    // The consumer resolves its IPv6 route target: advertised back to it, solicited and
    // override, with the port's MAC.
    let (act, out) = h.run(h.consumer.ifindex, &solicitation(ENI6)).unwrap();
    assert_eq!(act, XDP_TX, "{:?}", h.active_stats());
    let n = dissect_one(&out);
    assert_eq!(n["eth"]["src"], mac(h.consumer.mac));
    assert_eq!(n["eth"]["dst"], mac(CLIENT_MAC));
    let i = &n["ipv6"];
    assert_eq!(
        (i["src"].as_str(), i["dst"].as_str()),
        (Some(ENI6_STR), Some(CLIENT6_STR))
    );
    assert_eq!(i["hlim"], 255, "RFC 4861 7.1.2");
    assert_eq!(i["l4_csum_ok"], true, "{i}");
    let icmp = &i["icmp6"];
    assert_eq!(
        (icmp["type"].as_u64(), icmp["code"].as_u64()),
        (Some(136), Some(0))
    );
    assert_eq!(icmp["word"], 0x6000_0000u32, "solicited, override");
    assert_eq!(
        icmp["rest"],
        format!("{}0201{}", hex(&ENI6), hex(&h.consumer.mac)),
        "target and target link-layer option"
    );
    assert_eq!(h.count(Reason::NdAdvert), 1);

    // Another address of the ENI's vSwitch, or the ENI asked about in another VPC: not
    // ours (the host's to judge: isolated).
    let mut other = ENI6;
    other[15] = 6;
    assert_eq!(
        h.run(h.consumer.ifindex, &solicitation(other)).unwrap().0,
        XDP_DROP
    );
    assert_eq!(
        h.run(h.provider.ifindex, &solicitation(ENI6)).unwrap().0,
        XDP_DROP
    );
    assert_eq!(h.count(Reason::DropHostIsolated), 2);
    assert_eq!(h.count(Reason::NdAdvert), 1);

    // A route target is not a host: echo to the ENI goes unanswered over IPv6, as over
    // IPv4 (both dropped as the host's), and nothing goes to an appliance.
    let mut echo6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(CLIENT6, ENI6, 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut echo6, b"ping")
        .unwrap();
    let mut echo4 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(
            CLIENT,
            ENI.parse::<std::net::Ipv4Addr>().unwrap().octets(),
            64,
        )
        .icmpv4_echo_request(7, 1)
        .write(&mut echo4, b"ping")
        .unwrap();
    for f in [echo6, echo4] {
        assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    }
    assert_eq!(
        h.count(Reason::DropHostIsolated),
        4,
        "{:?}",
        h.active_stats()
    );
    assert_eq!(h.count(Reason::Gwlb6ToAppliance), 0);
    assert_eq!(h.count(Reason::GwlbToAppliance), 0);
}

#[test]
fn the_ipv6_established_path_encapsulates_exactly_as_the_full_path() {
    // Two data paths with the same flows: in `slow` the epoch moves before every packet,
    // so each one takes the full path (`privatelink_gwlb_steer6`); `fast` takes the
    // established path (`established6`, one flow lookup) from each direction's second
    // packet on. TCP both ways and UDP, 20 rounds.
    let (mut fast, mut slow) = (harness(), harness());
    let start = std::time::Instant::now();
    let frames = |h: &Harness, i: u8| {
        let body = [i; 24];
        let mut udp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
            .ipv6(CLIENT6, SERVER6, 64)
            .udp(42001, 53)
            .write(&mut udp, &body)
            .unwrap();
        vec![
            tcp6(h, CLIENT6, SERVER6, 42000, 80, &body),
            tcp6(h, SERVER6, CLIENT6, 80, 42000, &body),
            udp,
        ]
    };
    let last = side_by_side(&mut fast, &mut slow, 20, frames);
    // The established path's last frames, checked on their own by scapy (outer headers,
    // the options, the inner packet's checksums and its hop limit).
    for (f, out) in &last {
        check_geneve(&fast, f, out, &dissect_one(out), APPL_A);
    }
    assert_eq!(fast.count(Reason::Gwlb6ToAppliance), 60);
    assert_eq!(slow.count(Reason::Gwlb6ToAppliance), 60);
    assert_eq!(
        slot_counters(&mut fast),
        slot_counters(&mut slow),
        "appliance counters"
    );
    // The comparison means something only if the established path ran in `fast` (every
    // packet of a direction after its first, but those due for the once-a-second check of
    // the appliance) and never in `slow`.
    let rechecks = start.elapsed().as_secs() as u32 + 1;
    let trace = |h: &Harness, sport: u16, proto: u8| {
        let flows = h.dp.flows6().unwrap();
        let of = |want: &dyn Fn(&privatelink_common::FlowKey6) -> bool| {
            flows
                .iter()
                .find(|(k, _)| k.proto == proto && want(k))
                .map(|(_, e)| e.fast_packets)
                .unwrap_or_else(|| panic!("no GWLB entry for client port {sport}"))
        };
        (
            of(&|k| k.src == CLIENT6 && k.sport == sport),
            of(&|k| k.dst == CLIENT6 && k.dport == sport),
        )
    };
    for (sport, proto, dirs) in [(42000, 6, 2), (42001, 17, 1)] {
        let (fwd, reply) = trace(&fast, sport, proto);
        let got = if dirs == 2 {
            vec![fwd, reply]
        } else {
            vec![fwd]
        };
        for n in got {
            assert!(
                (19u32.saturating_sub(rechecks)..=19).contains(&(n as u32)),
                "port {sport}: {n} packets on the established path"
            );
        }
        assert_eq!(trace(&slow, sport, proto), (0, 0), "the full path only");
    }
}

/// `gwlb_packets.rs`'s slot race on the IPv6 steer path (`gwlb6`): every frame sent to an
/// appliance is this flow's own encapsulation.
#[test]
fn a_slot_taken_while_the_ipv6_steer_path_reads_it_never_lends_the_packet_another_flow() {
    steer_race6(false);
}

/// The same race on the IPv6 established path's GWLB branch (`established6`): the entry
/// stamped and its appliance confirmed for good (as `gwlb_packets.rs`'s: that the
/// established path took the packets is checked for the first one only).
#[test]
fn a_slot_taken_while_the_ipv6_established_path_encapsulates_never_lends_the_packet_another_flow() {
    steer_race6(true);
}

/// The IPv6 steer path's slot race and, with `stamped`, the established path's.
fn steer_race6(stamped: bool) {
    use std::collections::BTreeSet;

    use privatelink_common::{FLOW_GWLB, FlowEntry6, FlowKey6, PROTO_TCP};
    use privatelink_tests::{
        gwlb::state6,
        slotrace::{SLOTS6, one_race, race},
    };
    use privatelink_user::{
        dataplane,
        desired::{self, Unhealthy},
        model::parse_state,
    };

    let _one = one_race();
    let mut h = harness();
    let frame = tcp6(&h, CLIENT6, SERVER6, 42000, 80, &[7; 24]);
    let (act, expected) = h.run(h.consumer.ifindex, &frame).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    check_geneve(&h, &frame, &expected, &dissect_one(&expected), APPL_A);
    // The appliances unhealthy, no rebalancing: the flow keeps its appliance, and a packet
    // that misses the flow makes none (`drop_no_healthy_appliance`).
    let s = parse_state(&state6(false, "five_tuple", "no_rebalance")).unwrap();
    let appl = numeric_id("vpc-appl");
    let down: Unhealthy = [(appl, APPL_A), (appl, APPL_B)]
        .into_iter()
        .collect::<BTreeSet<_>>();
    h.dp.apply(&desired::compute(&s, dataplane::resolve_link, &down).unwrap())
        .unwrap();
    h.dp.set_neighbor(appl, APPL_A, APPL_A_MAC).unwrap();
    h.dp.set_neighbor(appl, APPL_B, APPL_B_MAC).unwrap();
    let (key, mut entry) =
        h.dp.flows6()
            .unwrap()
            .into_iter()
            .find(|(k, e)| e.flags & FLOW_GWLB != 0 && k.src == CLIENT6 && k.sport == 42000)
            .unwrap();
    // Never stamped: every packet takes the steer path. Stamped, its appliance confirmed
    // for good: every packet that finds it, the established path.
    if stamped {
        entry.epoch = h.dp.epoch().unwrap();
        entry = privatelink_tests::slotrace::Confirmed::confirmed(entry);
    } else {
        entry.epoch = 0;
    }
    h.dp.put_flow(&key, entry).unwrap();
    let fast = |h: &Harness| h.dp.flow::<FlowEntry6>(&key).unwrap().unwrap().fast_packets;
    let before = fast(&h);
    assert_eq!(
        h.run(h.consumer.ifindex, &frame).unwrap(),
        (XDP_REDIRECT, expected.clone()),
        "its appliance kept"
    );
    assert_eq!(fast(&h) != before, stamped, "the established path took it");
    let mut src = CLIENT6;
    src[15] ^= 0x5a;
    let other_key = FlowKey6::new(key.vpc_id, src, SERVER6, 40001, 80, PROTO_TCP);
    let other = FlowEntry6 {
        new_src: [0xfd; 16],
        new_dst: [0xfe; 16],
        new_sport: 1234,
        src_mac: [0x02, 0, 0, 0, 0, 0x98],
        dst_mac: [0x02, 0, 0, 0, 0, 0x99],
        csum_l4: entry.csum_l4 ^ 0xa5a5,
        counter_slot: privatelink_tests::slotrace::OTHER_SLOT,
        ..entry
    };
    let ifindex = h.consumer.ifindex;
    race(
        &mut h,
        &SLOTS6,
        &frame,
        ifindex,
        &expected,
        (key, entry),
        (other_key, other),
        &[Reason::DropFlowChanged, Reason::DropNoHealthyAppliance],
        &[Reason::Gwlb6ToAppliance],
    );
}

/// `gwlb_packets.rs`'s slot race on the return path, for IPv6 inside (`gwlb6`): the other
/// flow differs in the learned peer MAC alone; every frame delivered goes to the client's.
#[test]
fn a_slot_taken_while_the_ipv6_return_path_reads_it_never_lends_the_packet_another_flow() {
    use privatelink_common::{FLOW_GWLB, FlowEntry6, FlowKey6, PROTO_TCP};
    use privatelink_tests::slotrace::{SLOTS6, one_race, race};

    let _one = one_race();
    let mut h = harness();
    let syn = tcp6(&h, CLIENT6, SERVER6, 41000, 80, b"data");
    encap(&mut h, &syn);
    let reply = tcp6(&h, SERVER6, CLIENT6, 80, 41000, b"");
    let d = dissect_one(&encap(&mut h, &reply));
    let back = build(&[returned(
        APPL_A,
        APPL_A_MAC,
        h.provider.mac,
        &d,
        "proto=0x86dd, ",
    )])
    .remove(0);
    let (act, expected) = h.run(h.provider.ifindex, &back).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    assert_eq!(&expected[0..6], &CLIENT_MAC);
    assert_eq!(hex(&expected[14..]), d["inner"]["raw"]);
    let (key, entry) =
        h.dp.flows6()
            .unwrap()
            .into_iter()
            .find(|(k, e)| e.flags & FLOW_GWLB != 0 && k.src == SERVER6 && k.dport == 41000)
            .unwrap();
    assert_eq!(entry.peer_mac, CLIENT_MAC);
    let mut src = SERVER6;
    src[15] ^= 0x5a;
    let other_key = FlowKey6::new(key.vpc_id, src, CLIENT6, 40001, 80, PROTO_TCP);
    let other = FlowEntry6 {
        peer_mac: [0x02, 0, 0, 0, 0, 0x97],
        counter_slot: privatelink_tests::slotrace::OTHER_SLOT,
        ..entry
    };
    let ifindex = h.provider.ifindex;
    race(
        &mut h,
        &SLOTS6,
        &back,
        ifindex,
        &expected,
        (key, entry),
        (other_key, other),
        &[Reason::DropFlowChanged, Reason::DropGwlbNoFlow],
        &[Reason::Gwlb6FromAppliance],
    );
}
