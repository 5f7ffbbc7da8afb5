//! A fuzzer for the loaded XDP program: random frames and mutations of every kind of valid
//! frame the packet tests use go through BPF_PROG_TEST_RUN, and every outcome is checked:
//! the verdict is DROP, PASS, TX or REDIRECT (never ABORTED); a frame sent on has a valid
//! IPv4 header checksum, leaves by one of our interfaces with addresses the maps allow,
//! and keeps L4 checksums as valid as they came in; the counters account for every frame.
//!
//! Bounded in the suite (a few seconds per scenario); `PL_FUZZ_SECS=600 cargo test -p
//! privatelink-tests --test fuzz -- --nocapture` runs longer, `PL_FUZZ_SEED` replays.

use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use privatelink_tests::{
    frames::{
        self, CLIENT, CLIENT_MAC, ENI, LB, SNAT, arp_request, tcp_from_lb, tcp_to_eni, udp_to_eni,
    },
    gwlb,
    lab::packet_state,
    testrun::{Harness, LB_MAC},
};

const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("PL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(secs)
}

fn seed() -> u64 {
    std::env::var("PL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Offsets worth aiming at: IPv4 version/IHL, length, id, flags, TTL, protocol, checksum,
/// addresses; L4 ports, lengths, flags; GENEVE header and options; ARP opcode and addresses.
const FIELDS: &[usize] = &[
    12, 13, 14, 16, 17, 20, 21, 22, 23, 24, 26, 30, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45,
    46, 47, 50, 51, 54, 55, 58, 62, 66, 70, 74, 82,
];

/// Recomputes the IPv4 header checksum when the frame still looks like IPv4, so that
/// mutations reach past the header check.
fn fix_ip_checksum(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = (f[14] & 0x0f) as usize * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let sum: u32 = f[14..14 + ihl]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    f[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

fn mutate(rng: &mut Rng, seed_frame: &[u8]) -> Vec<u8> {
    let mut f = seed_frame.to_vec();
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(rng.below(f.len() + 1)),
        2 => {
            for _ in 0..1 + rng.below(64) {
                f.push(rng.next() as u8);
            }
        }
        3 | 4 => {
            for _ in 0..1 + rng.below(3) {
                let i = FIELDS[rng.below(FIELDS.len())];
                if i < f.len() {
                    f[i] = rng.next() as u8;
                }
            }
        }
        _ => {
            let n = rng.below(200);
            f = (0..n).map(|_| rng.next() as u8).collect();
            if n >= 14 && rng.below(2) == 0 {
                f[12] = 0x08;
                f[13] = 0x00;
                if n > 14 {
                    f[14] = 0x45;
                }
            }
        }
    }
    if rng.below(3) > 0 {
        fix_ip_checksum(&mut f);
    }
    f
}

/// Whether the frame's TCP/UDP/ICMP checksum verifies (None: not such a packet).
fn l4_valid(frame: &[u8]) -> Option<(u8, bool)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return None;
    };
    let h = ip.header().to_header();
    match p.transport? {
        TransportSlice::Tcp(t) => Some((
            6,
            t.to_header().calc_checksum_ipv4(&h, t.payload()).ok()? == t.checksum(),
        )),
        TransportSlice::Udp(u) => Some((
            17,
            u.checksum() == 0
                || u.to_header().calc_checksum_ipv4(&h, u.payload()).ok()? == u.checksum(),
        )),
        TransportSlice::Icmpv4(i) => {
            Some((1, i.icmp_type().calc_checksum(i.payload()) == i.checksum()))
        }
        _ => None,
    }
}

/// What a scenario allows a frame that leaves to look like.
struct Allowed {
    macs: [[u8; 6]; 2],
    /// Consumer side (eth source = the consumer port's MAC): the IPv4 source must be one of
    /// these, or one end inside one of `consumer_nets` (a flow through a GWLB endpoint was
    /// opened by a packet to a routed prefix; its other direction goes back to the sender).
    consumer_srcs: Vec<[u8; 4]>,
    consumer_nets: Vec<([u8; 4], u8)>,
    /// Provider side: source and destination addresses.
    provider_srcs: Vec<[u8; 4]>,
    provider_dsts: Vec<[u8; 4]>,
}

fn in_net(a: [u8; 4], (net, len): ([u8; 4], u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from_be_bytes(a) & mask == u32::from_be_bytes(net) & mask
}

/// Checks one outcome; the error says what is wrong.
fn check(input: &[u8], act: u32, out: &[u8], a: &Allowed) -> Result<(), String> {
    if !(1..=4).contains(&act) {
        return Err(format!("verdict {act}"));
    }
    if act != XDP_TX && act != XDP_REDIRECT {
        return Ok(());
    }
    if out.len() < 14 {
        return Err("a frame shorter than Ethernet sent".into());
    }
    let src_mac: [u8; 6] = out[6..12].try_into().unwrap();
    let consumer_side = src_mac == a.macs[0];
    if !a.macs.contains(&src_mac) {
        return Err(format!("sent from MAC {src_mac:02x?}"));
    }
    match [out[12], out[13]] {
        [0x08, 0x06] => {
            // ARP we answer or ask: well-formed, from our own MAC.
            if out.len() < 42 || out[14..22] != [0, 1, 8, 0, 6, 4, 0, out[21]] {
                return Err("malformed ARP sent".into());
            }
            if out[22..28] != src_mac {
                return Err("ARP sender MAC is not ours".into());
            }
            return Ok(());
        }
        [0x08, 0x00] => {}
        t => return Err(format!("ether type {t:02x?} sent")),
    }
    let p = SlicedPacket::from_ethernet(out).map_err(|e| format!("output does not parse: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Err("IPv4 expected".into());
    };
    // Over the raw bytes (etherparse's header type drops the reserved flag bit).
    let ihl = (out[14] & 0x0f) as usize * 4;
    if ones_sum(&out[14..14 + ihl]) != 0xffff {
        return Err("IPv4 header checksum".into());
    }
    let (src, dst) = (ip.header().source(), ip.header().destination());
    if consumer_side {
        let ok = a.consumer_srcs.contains(&src)
            || a.consumer_nets
                .iter()
                .any(|n| in_net(dst, *n) || in_net(src, *n));
        if !ok {
            return Err(format!("consumer side {src:?} -> {dst:?}"));
        }
    } else if !a.provider_srcs.contains(&src) || !a.provider_dsts.contains(&dst) {
        return Err(format!("provider side {src:?} -> {dst:?}"));
    }
    // GENEVE: the inner packet's header checksum too.
    if let Some(TransportSlice::Udp(u)) = &p.transport
        && u.destination_port() == 6081
    {
        let g = u.payload();
        if g.len() < 8 + 32 + 20 || g[0] != 0x08 || g[2..4] != [0x08, 0x00] {
            return Err("GENEVE header".into());
        }
        let inner = &g[40..];
        let ihl = (inner[0] & 0x0f) as usize * 4;
        if ones_sum(&inner[..ihl.min(inner.len())]) != 0xffff {
            return Err("inner IPv4 header checksum".into());
        }
        return Ok(());
    }
    // L4 checksums: a rewrite keeps them as valid as they were; what we generate (a
    // packet of another length: frag-needed) is valid.
    let input = &decapsulated(input);
    let generated = input.len() < 18 || input[16..18] != out[16..18];
    match (l4_valid(input), l4_valid(out)) {
        (_, Some((po, false))) if generated => Err(format!("generated protocol {po} checksum")),
        (Some((pi, vi)), Some((po, vo))) if !generated && pi == po && vi != vo => Err(format!(
            "protocol {po} checksum validity changed ({vi} -> {vo})"
        )),
        _ => Ok(()),
    }
}

/// A GENEVE input's inner packet behind a blank Ethernet header (what a decapsulated
/// output is compared with); any other input as it is.
fn decapsulated(input: &[u8]) -> Vec<u8> {
    let geneve = input.len() > 14 + 20 + 8 + 40
        && input[12..14] == [0x08, 0x00]
        && input[23] == 17
        && input[36..38] == 6081u16.to_be_bytes();
    if !geneve {
        return input.to_vec();
    }
    let ihl = (input[14] & 0x0f) as usize * 4;
    let opts = (input[14 + ihl + 8] & 0x3f) as usize * 4;
    let inner = 14 + ihl + 16 + opts;
    let mut v = vec![0u8; 12];
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(input.get(inner..).unwrap_or_default());
    v
}

/// The folded ones' complement sum of big-endian 16-bit words (0xffff: a valid checksum).
fn ones_sum(b: &[u8]) -> u32 {
    let mut s: u32 = b
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

fn total(h: &Harness) -> u64 {
    h.dp.stats().unwrap().iter().map(|(_, n)| n).sum()
}

fn fuzz(name: &str, h: &mut Harness, corpus: &[(u32, Vec<u8>)], a: &Allowed) {
    let seed = seed();
    let mut rng = Rng(seed);
    let ifaces = [h.consumer.ifindex, h.provider.ifindex];
    let start = Instant::now();
    let before = total(h);
    let mut runs = 0u64;
    let mut sent = 0u64;
    while start.elapsed() < budget() {
        let (ifindex, base) = &corpus[rng.below(corpus.len())];
        let frame = mutate(&mut rng, base);
        // Mostly where the frame belongs, sometimes the other side.
        let ifindex = if rng.below(8) == 0 {
            ifaces[rng.below(2)]
        } else {
            *ifindex
        };
        if frame.len() < 14 {
            continue; // the kernel refuses to run a frame shorter than Ethernet
        }
        let (act, out) = h
            .run(ifindex, &frame)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: test run of {frame:02x?}: {e:#}"));
        runs += 1;
        if act == XDP_TX || act == XDP_REDIRECT {
            sent += 1;
        }
        if let Err(e) = check(&frame, act, &out, a) {
            panic!(
                "{name}: seed {seed}, run {runs}: {e}\n in: {frame:02x?}\nout: {out:02x?}\ncounters: {:?}",
                h.active_stats()
            );
        }
    }
    assert_eq!(
        total(h) - before,
        runs,
        "{name}: every frame is counted once ({:?})",
        h.active_stats()
    );
    assert!(runs > 1000, "{name}: only {runs} frames in the budget");
    eprintln!("{name}: seed {seed}: {runs} frames, {sent} sent on, all consistent");
}

#[test]
fn endpoint_nat_survives_random_and_mutated_frames() {
    let mut h = Harness::new(&packet_state()).unwrap();
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    // Live flows, so that mutations of replies meet conntrack entries.
    let (_, syn_out) = h.run(cif, &tcp_to_eni(&h, 40000, true, b"")).unwrap();
    let snat = [syn_out[26], syn_out[27], syn_out[28], syn_out[29]];
    let port = u16::from_be_bytes([syn_out[34], syn_out[35]]);
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, b"0123456789abcdef")
        .unwrap();
    // An ICMP port unreachable from the load balancer quoting the NATed SYN.
    let mut unreach = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut unreach, &syn_out[14..14 + 28])
        .unwrap();
    let corpus = vec![
        (cif, tcp_to_eni(&h, 40000, true, b"")),
        (cif, tcp_to_eni(&h, 40000, false, b"payload bytes")),
        (cif, udp_to_eni(&h, 5353, b"query", false)),
        (cif, udp_to_eni(&h, 5354, b"query", true)),
        (cif, echo),
        (cif, arp_request(CLIENT_MAC, CLIENT, ENI)),
        (pif, tcp_from_lb(&h, snat, port, b"answer")),
        (pif, unreach),
        (pif, arp_request(LB_MAC, LB, SNAT[0])),
    ];
    let allowed = Allowed {
        macs: [h.consumer.mac, h.provider.mac],
        consumer_srcs: vec![ENI, [10, 10, 0, 100]],
        consumer_nets: vec![],
        provider_srcs: SNAT
            .iter()
            .copied()
            .chain([[10, 10, 0, 202], [10, 10, 2, 200], [10, 10, 0, 100]])
            .collect(),
        provider_dsts: vec![LB, [10, 10, 2, 10]],
    };
    fuzz("endpoint", &mut h, &corpus, &allowed);
}

#[test]
fn gwlb_survives_random_and_mutated_frames() {
    let mut h = gwlb::harness_with(true, "five_tuple", "rebalance");
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    let fwd = gwlb::tcp(&h, gwlb::CLIENT, gwlb::SERVER, 40000, 80, b"data");
    let back_syn = gwlb::tcp(&h, gwlb::SERVER, gwlb::CLIENT, 80, 40000, b"");
    let (_, enc) = h.run(cif, &fwd).unwrap();
    let ret = gwlb::returned(&enc);
    let arp_reply = frames::arp_reply(h.consumer.mac, gwlb::SERVER_MAC, gwlb::SERVER);
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(gwlb::CLIENT_MAC, h.consumer.mac)
        .ipv4(gwlb::CLIENT, gwlb::SERVER, 64)
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"ping")
        .unwrap();
    let big = gwlb::tcp(&h, gwlb::CLIENT, gwlb::SERVER, 40001, 80, &[1u8; 1440]);
    let corpus = vec![
        (cif, fwd),
        (cif, back_syn),
        (cif, ping),
        (cif, big),
        (cif, arp_reply),
        (
            cif,
            arp_request(gwlb::CLIENT_MAC, gwlb::CLIENT, [10, 30, 0, 5]),
        ),
        (pif, ret),
    ];
    let allowed = Allowed {
        macs: [h.consumer.mac, h.provider.mac],
        consumer_srcs: vec![[10, 30, 0, 5]],
        consumer_nets: vec![([10, 30, 1, 0], 24), ([10, 30, 2, 0], 24)],
        provider_srcs: vec![[10, 40, 0, 5]],
        provider_dsts: vec![gwlb::APPL_A, gwlb::APPL_B],
    };
    fuzz("gwlb", &mut h, &corpus, &allowed);
}
