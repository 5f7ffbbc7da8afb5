//! Conntrack at scale: synthetic flows written straight into `PL_CONNTRACK` (both entries
//! of each, exactly as the data path makes them for the lab's endpoint), so that the table
//! can be filled to millions of flows in seconds; frames that hit them.

use anyhow::Result;
use etherparse::PacketBuilder;
use privatelink_common::{
    CT_ESTABLISHED, CT_REPLIED, DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey, PROTO_TCP, map_names,
};
use privatelink_user::{dataplane::flowtable, model::numeric_id};

use crate::{
    frames::{CLIENT_MAC, ENI, LB, SNAT, parse_checked},
    testrun::{Harness, LB_MAC},
};

pub const CLIENT_SPORT: u16 = 40000;

/// The data path's flow clock now (what synthetic entries' `last_seen` is set from).
pub fn ktime_ns() -> u64 {
    privatelink_user::dataplane::coarse_now_ns()
}

/// Flow `i`'s client address, destination port and provider-side tuple: unique for up to
/// 2 SNAT addresses x 64 512 ports x 65 535 destination ports.
pub fn flow(i: u32) -> ([u8; 4], u16, [u8; 4], u16) {
    let client = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let snat = SNAT[(i % 2) as usize];
    let snat_port = 1024 + ((i / 2) % 64512) as u16;
    let dport = 1 + (i / 129_024) as u16;
    (client, dport, snat, snat_port)
}

/// The client's frame of flow `i` (an ACK with a small payload: a conntrack hit).
pub fn frame(h: &Harness, i: u32) -> Vec<u8> {
    let (client, dport, _, _) = flow(i);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(client, ENI, 64)
        .tcp(CLIENT_SPORT, dport, 1000, 64240)
        .ack(1)
        .write(&mut v, &[0u8; 18])
        .expect("frame");
    v
}

/// Writes flows `range` into conntrack, last seen `age_ns` ago.
pub fn fill(h: &mut Harness, range: std::ops::Range<u32>, age_ns: u64) -> Result<()> {
    let t = ktime_ns().saturating_sub(age_ns);
    let (vpc_a, vpc_b, ep) = (numeric_id("vpc-a"), numeric_id("vpc-b"), numeric_id("ep-a"));
    let (consumer, provider) = (h.consumer, h.provider);
    let g = h.dp.flow_geometry::<FlowEntry>()?;
    let ct = h.dp.map_mut(map_names::CONNTRACK)?;
    for i in range {
        let (client, dport, snat, snat_port) = flow(i);
        let key = FlowKey::new(vpc_a, client, ENI, CLIENT_SPORT, dport, PROTO_TCP);
        let fwd = FlowEntry {
            new_src: snat,
            new_dst: LB,
            new_sport: snat_port,
            new_dport: dport,
            out_ifindex: provider.ifindex,
            src_mac: provider.mac,
            dst_mac: LB_MAC,
            out_vpc_id: vpc_b,
            endpoint_id: ep,
            direction: DIR_ORIGINAL,
            // Established connections (their handshake done), as a busy table holds.
            tcp_flags: CT_REPLIED | CT_ESTABLISHED,
            last_seen: privatelink_common::seen_tick(t),
            checked: privatelink_common::checked_tick(t),
            ..Default::default()
        };
        let reply_key = FlowKey::new(vpc_b, LB, snat, dport, snat_port, PROTO_TCP);
        let reply = FlowEntry {
            new_src: ENI,
            new_dst: client,
            new_sport: dport,
            new_dport: CLIENT_SPORT,
            out_ifindex: consumer.ifindex,
            src_mac: consumer.mac,
            dst_mac: CLIENT_MAC,
            out_vpc_id: vpc_a,
            endpoint_id: ep,
            direction: DIR_REPLY,
            tcp_flags: CT_REPLIED | CT_ESTABLISHED,
            last_seen: privatelink_common::seen_tick(t),
            checked: privatelink_common::checked_tick(t),
            ..Default::default()
        };
        flowtable::put(ct, &g, &reply_key, reply)?;
        flowtable::put(ct, &g, &key, fwd)?;
    }
    Ok(())
}

/// Whether flow `i`'s original entry is in the table.
pub fn present(h: &Harness, i: u32) -> Result<bool> {
    let (client, dport, _, _) = flow(i);
    let key = FlowKey::new(
        numeric_id("vpc-a"),
        client,
        ENI,
        CLIENT_SPORT,
        dport,
        PROTO_TCP,
    );
    Ok(h.dp.flow::<FlowEntry>(&key)?.is_some())
}

/// The kernel's memory charge for the conntrack map (`memlock` in its fdinfo).
pub fn conntrack_memory(h: &Harness) -> Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let map = h.dp.map(map_names::CONNTRACK)?;
    let fd = match map {
        aya::maps::Map::Array(m) => m.fd().as_fd().as_raw_fd(),
        _ => anyhow::bail!("conntrack is not an array"),
    };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no memlock in fdinfo"))
}

/// A flow the data path made itself (its first packet went through the program): the
/// client's frames and the provider-side tuple its SNAT gave it.
pub struct LiveFlow {
    pub syn: Vec<u8>,
    pub ack: Vec<u8>,
    /// The load balancer's answer to the SNAT tuple.
    pub reply: Vec<u8>,
    pub key: FlowKey,
    /// SNAT address and port as the first packet left.
    pub snat: ([u8; 4], u16),
}

/// The SNAT address and port of a frame the program sent to the provider (its checksums
/// checked on the way).
pub fn snat_of(out: &[u8]) -> ([u8; 4], u16) {
    let p = parse_checked(out);
    (p.ip.source, p.sport)
}

/// Opens `n` live flows through the program, client 198.18.x.y:40000 to the ENI's port
/// 443 (apart from `flow`'s synthetic ones and from the tests' flood sources); each
/// records the tuple its SNAT chose and gets the load balancer's reply frame.
pub fn open_live(h: &mut Harness, n: u32) -> Result<Vec<LiveFlow>> {
    (0..n)
        .map(|i| {
            let client = [198, 18, (i >> 8) as u8, i as u8];
            let from_client = |syn: bool| -> Result<Vec<u8>> {
                let mut v = Vec::new();
                let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
                    .ipv4(client, ENI, 64)
                    .tcp(CLIENT_SPORT, 443, 1000, 64240);
                let b = if syn { b.syn() } else { b.ack(1) };
                b.write(&mut v, if syn { &[] } else { &[0u8; 18] })?;
                Ok(v)
            };
            let (syn, ack) = (from_client(true)?, from_client(false)?);
            // Forwarded (XDP_REDIRECT), else its output is no SNAT tuple of the data path's.
            let (action, out) = h.run(h.consumer.ifindex, &syn)?;
            anyhow::ensure!(
                action == crate::testrun::XDP_REDIRECT,
                "established flow {i}: its SYN ended in XDP action {action}, not a redirect \
                 (counters: {:?})",
                h.active_stats()
            );
            let snat = snat_of(&out);
            let mut reply = Vec::new();
            PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
                .ipv4(LB, snat.0, 64)
                .tcp(443, snat.1, 7000, 65000)
                .ack(1001)
                .write(&mut reply, &[0u8; 18])?;
            let key = FlowKey::new(
                numeric_id("vpc-a"),
                client,
                ENI,
                CLIENT_SPORT,
                443,
                PROTO_TCP,
            );
            Ok(LiveFlow {
                syn,
                ack,
                reply,
                key,
                snat,
            })
        })
        .collect()
}

/// What became of a live flow: both of its entries still in the table, and whether its
/// next packet leaves with the same SNAT tuple (what keeps a TCP connection alive).
pub fn live_outcome(h: &mut Harness, f: &LiveFlow) -> Result<(bool, bool)> {
    let reply_key = FlowKey::new(numeric_id("vpc-b"), LB, f.snat.0, 443, f.snat.1, PROTO_TCP);
    let both =
        h.dp.flow::<FlowEntry>(&f.key)?.is_some() && h.dp.flow::<FlowEntry>(&reply_key)?.is_some();
    let (_, out) = h.run(h.consumer.ifindex, &f.ack)?;
    Ok((both, snat_of(&out) == f.snat))
}
