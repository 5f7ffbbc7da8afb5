//! Gateway Load Balancer endpoints for IPv6: an IPv6 packet the VPC routes to a GWLB
//! endpoint (`PL_GW_ROUTES6`) goes to an appliance in GENEVE with protocol 0x86DD (the
//! outer headers stay IPv4: appliances are IPv4), and what the appliance sends back is
//! checked against its flow and delivered to the inner destination. The
//! `privatelink_gwlb_steer6` and `privatelink_gwlb_return6` path programs (`paths`) run
//! it. Above `gwlb` (the appliance choice), `geneve`, and `gwlb6_icmp` (Packet Too Big and the
//! neighbour solicitations for inner destinations).
//!
//! As for IPv4, both directions of a flow are keyed in the consumer VPC (`PL_CONNTRACK6`,
//! `FLOW_GWLB`) and record the appliance a symmetric hash of the IPv6 tuple chose, so a
//! flow and its reply reach the same appliance with the same flow cookie. The outer IPv4
//! addresses (load balancer, appliance) sit in the entry's IPv6 fields as IPv4-mapped
//! addresses (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST, BPF_NOEXIST},
    programs::XdpContext,
};
use privatelink_common::{
    DIR_ORIGINAL, DIR_REPLY, ENI_FLAG_REBALANCE, EndpointEni, FLOW_GWLB, FlowEntry6, FlowKey6,
    GWLB_OVERHEAD, IfaceInfo, Neighbor, Reason, VpcAddr, VpcAddr6, checked_elapsed_ns,
    checked_tick, hash, seen_tick,
};

use crate::{
    conntrack::{self, SeqAck},
    flowtable::FLOWS6,
    geneve::{self, GENEVE_PROTO_IPV6, Outer},
    gwlb::{self, Echo, inner_ports},
    gwlb6_icmp,
    icmp6::{ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST},
    maps::{self, PL_GWLB_APPLS, PL_GWLB_NEIGH6, PL_HANDOFF, PL_VPC_PORTS, config, scratch6},
    packet::Packet,
    packet6::{IPV6_LEN, MAX_EXT_HEADERS, MAX_EXT_LEN, PROTO_ICMPV6, forwardable_source, packet6},
    parse::{ETH_LEN, ETH_P_IPV6, EthHdr, Ipv6Hdr, be16, mut_at, set_macs},
    stats,
    verdict::{Verdict, redirect_to, settle_for},
};

/// How often (at most) a flow checks that its appliance is still one to send to.
const APPLIANCE_RECHECK_NS: u64 = 1_000_000_000;

/// The extension headers `packet6`'s policy skips (hop-by-hop, routing, destination
/// options); the inner walk follows the same policy.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;

#[inline(always)]
fn is_skipped(next: u8) -> bool {
    next == NEXTHDR_HOP || next == NEXTHDR_ROUTING || next == NEXTHDR_DEST
}

/// Whether `next` is an extension header (RFC 8200 §4, the IANA list of RFC 7045: the
/// skipped ones, fragment, ESP, AH, Mobility, HIP, Shim6, the two experimental values):
/// after the walk, one is left only where the policy refuses it.
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// ICMPv6 echo (RFC 4443 §4): keyed by its identifier, as ICMP echo is.
const ICMP6_ECHO: Echo = Echo {
    proto: PROTO_ICMPV6,
    request: ICMP6_ECHO_REQUEST,
    reply: ICMP6_ECHO_REPLY,
};

/// Where an inner IPv6 packet's parts lie, once its extension headers are walked.
struct Inner6 {
    /// The upper-layer protocol (the last next-header value).
    proto: u8,
    /// Where the upper-layer header starts.
    l4: usize,
    /// Where the packet ends (its payload length says).
    end: usize,
}

/// The inner IPv6 packet of returned GENEVE, at `off`, which must end by `limit` (the
/// UDP datagram's end): version 6, a payload length that fits, and its extension headers
/// walked as `packet6` walks a frame's (the same policy: an appliance returns what we
/// sent, which passed it). Anything else is `DropGeneveMalformed`, as for IPv4.
#[inline(always)]
fn inner_ipv6(ctx: &XdpContext, off: usize, limit: usize) -> Result<Inner6, Reason> {
    let bad = Reason::DropGeneveMalformed;
    let ip = mut_at::<Ipv6Hdr>(ctx, off, bad)?;
    let plen = be16(ip.payload_len) as usize;
    if ip.vcf[0] >> 4 != 6 || plen == 0 || off + IPV6_LEN + plen > limit {
        return Err(bad);
    }
    let end = off + IPV6_LEN + plen;
    let mut next = ip.next_hdr;
    let mut l4 = off + IPV6_LEN;
    for i in 0..MAX_EXT_HEADERS {
        if !is_skipped(next) {
            break;
        }
        let h = mut_at::<[u8; 4]>(ctx, l4, bad)?;
        let len = (h[1] as usize + 1) * 8;
        if (next == NEXTHDR_HOP && i != 0)
            || (next == NEXTHDR_ROUTING && (h[2] == 0 || h[3] != 0))
            || len > MAX_EXT_LEN
        {
            return Err(bad);
        }
        next = h[0];
        l4 += len;
        if l4 > end {
            return Err(bad);
        }
    }
    if is_extension_header(next) {
        return Err(bad);
    }
    Ok(Inner6 {
        proto: next,
        l4,
        end,
    })
}

/// Word `i` (0..4) of an IPv6 address, big-endian.
#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    (a[4 * i] as u32) << 24
        | (a[4 * i + 1] as u32) << 16
        | (a[4 * i + 2] as u32) << 8
        | a[4 * i + 3] as u32
}

/// Whether the end (`a`, `pa`) is not above (`b`, `pb`): addresses as 128-bit big-endian
/// numbers, then ports.
#[inline(always)]
fn lower_end(a: &[u8; 16], pa: u16, b: &[u8; 16], pb: u16) -> bool {
    for i in 0..4 {
        let (x, y) = (word(a, i), word(b, i));
        if x != y {
            return x < y;
        }
    }
    pa <= pb
}

/// `hash::symmetric_hash` for IPv6: the same for a flow and its reply. The two ends
/// (address as a 128-bit big-endian number, then port) are put in order; then murmur3's
/// fmix32 is chained, from `seed`, over the lower end's address as four big-endian 32-bit
/// words, the higher end's four, the two ports (the lower end's in the high half) and the
/// protocol. `fields` is the stickiness: 5 hashes the whole tuple, 3 addresses and
/// protocol, 2 addresses only (ports, and for 2 the protocol, count as zero).
#[inline(always)]
fn symmetric_hash6(key: &FlowKey6, fields: u8, seed: u32) -> u32 {
    let (pa, pb) = if fields == 5 {
        (key.sport, key.dport)
    } else {
        (0, 0)
    };
    let proto = if fields == 2 { 0 } else { key.proto };
    let (lo, hi, plo, phi) = if lower_end(&key.src, pa, &key.dst, pb) {
        (&key.src, &key.dst, pa, pb)
    } else {
        (&key.dst, &key.src, pb, pa)
    };
    let mut h = seed;
    for i in 0..4 {
        h = hash::mix32(h ^ word(lo, i));
    }
    for i in 0..4 {
        h = hash::mix32(h ^ word(hi, i));
    }
    h = hash::mix32(h ^ ((plo as u32) << 16 | phi as u32));
    hash::mix32(h ^ proto as u32)
}

/// The flow cookie option's value: the symmetric hash of the 5-tuple, seed 0.
#[inline(always)]
fn cookie_of(key: &FlowKey6) -> u32 {
    symmetric_hash6(key, 5, 0)
}

/// `a` as an IPv4-mapped IPv6 address.
#[inline(always)]
fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped one.
#[inline(always)]
pub fn unmapped(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// An IPv6 packet routed to a GWLB endpoint: to its flow's appliance, in GENEVE. BPF
/// functions called one after the other, so that their stack frames do not add up (each
/// fills most of one): `flow` finds the packet's flow and tracks it, `create` makes a new
/// one (then `flow` finds it), `send` answers a packet too big or encapsulates and sends
/// it, with what `flow` left in `Send`.
#[inline(always)]
pub fn steer(ctx: &XdpContext, iface: &IfaceInfo, route: &EndpointEni) -> u64 {
    let mut out = Send::default();
    let mut v = flow(ctx, iface, route, &mut out);
    if v == NEW {
        v = create(ctx, iface, route);
        if v == SEND {
            v = flow(ctx, iface, route, &mut out);
        }
    }
    if v != SEND {
        // (`NEW` again: the flow made a moment ago is gone already.)
        return if v == NEW {
            settle_for(route.counter_slot, Err(Reason::DropConntrackFull))
        } else {
            v
        };
    }
    send(ctx, iface, route, &out)
}

/// Verdicts of `flow` and `create` that are steps, not settled verdicts (those have an
/// action below 2^8 in the top byte): go on to `send`; make the flow first.
const SEND: u64 = u64::MAX;
const NEW: u64 = u64::MAX - 1;

/// What `send` needs of the flow and the packet.
#[derive(Default)]
pub struct Send {
    cookie: u32,
    /// The inner packet's length (the IPv6 header included).
    len: u16,
    /// The appliance port's MTU.
    mtu: u16,
    out_ifindex: u32,
    outer_src: [u8; 4],
    appliance: [u8; 4],
    appliance_slot: u16,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// Finds the packet's flow, tracks it and fills `out`: `SEND`, `NEW` if it has none (or
/// one no longer alive), or the verdict.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
fn flow(ctx: &XdpContext, iface: &IfaceInfo, route: &EndpointEni, out: &mut Send) -> u64 {
    match flow_checked(ctx, iface, route, out) {
        Ok(true) => SEND,
        Ok(false) => NEW,
        Err(r) => settle_for(route.counter_slot, Err(r)),
    }
}

/// The 5-tuple key of the IPv6 packet at the frame's start (routed: a forwardable source
/// and a hop limit above 1), its packet, and its TCP flags.
#[inline(always)]
fn packet_key(ctx: &XdpContext, iface: &IfaceInfo) -> Result<(FlowKey6, Packet, u8), Reason> {
    let (pkt, h) = packet6(ctx, ctx.ingress_ifindex() as u32, 0)?;
    if h.hop_limit <= 1 {
        return Err(Reason::DropHopLimitExceeded);
    }
    if !forwardable_source(&h.src_addr) {
        return Err(Reason::DropBadIpv6Source);
    }
    let (sport, dport, tcp_flags) = inner_ports(ctx, pkt.l4, pkt.end, pkt.proto, &ICMP6_ECHO)?;
    let key = FlowKey6::new(
        iface.vpc_id,
        h.src_addr,
        h.dst_addr,
        sport,
        dport,
        pkt.proto,
    );
    Ok((key, pkt, tcp_flags))
}

#[inline(always)]
fn flow_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    route: &EndpointEni,
    out: &mut Send,
) -> Result<bool, Reason> {
    let (key, pkt, tcp_flags) = packet_key(ctx, iface)?;
    let t = conntrack::now();
    let cfg = config();
    let Some(seen) = FLOWS6.get_seen(key) else {
        return Ok(false);
    };
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let live = {
        let e = unsafe { &*seen.entry };
        e.flags & FLOW_GWLB != 0
            && e.endpoint_id == route.endpoint_id
            && conntrack::alive(e, &key, t, &cfg)
    };
    if !live {
        return Ok(false);
    }
    // SAFETY: valid for this run.
    let e = unsafe { &mut *seen.entry };
    // What was judged is the entry about to be written (`flowtable::Seen`).
    seen.still()?;
    if checked_elapsed_ns(t, e.checked) > APPLIANCE_RECHECK_NS {
        recheck(e, &key, route, t)?;
    }
    let dir = e.direction;
    conntrack::track(e, &key, tcp_flags, SeqAck::default(), t, dir);
    // Checked under the epoch the classification ran under (the handoff's): the route to
    // this endpoint, the endpoint forwarding, the flow alive and its appliance confirmed.
    // Its next packets may take the established path (`established6`), with the flow
    // cookie computed here. (The epoch read here, not passed down: one more argument took
    // the program past its 512 bytes of stack.)
    let cookie = cookie_of(&key);
    if let Some(h) = PL_HANDOFF.get(0) {
        e.set_gwlb_cookie(cookie);
        e.epoch = h.epoch;
    }
    *out = Send {
        cookie,
        len: (pkt.end - ETH_LEN) as u16,
        mtu: e.out_mtu,
        out_ifindex: e.out_ifindex,
        outer_src: unmapped(&e.new_src),
        appliance: unmapped(&e.new_dst),
        appliance_slot: e.new_dport,
        src_mac: e.src_mac,
        dst_mac: e.dst_mac,
    };
    // What `send` takes is one flow's entry: else the frame is dropped, and the stamp
    // just written, which may have landed on another flow's entry, taken back (that
    // flow's next packet takes the full path and stamps it again).
    seen.still_else_unstamp(&mut e.epoch)?;
    Ok(true)
}

/// The packet of a tracked flow (`s`): answered with a Packet Too Big if it would not fit
/// the appliance link once encapsulated, else encapsulated and sent to the appliance.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
fn send(ctx: &XdpContext, iface: &IfaceInfo, route: &EndpointEni, s: &Send) -> u64 {
    let (len, mtu) = (s.len as usize, s.mtu as usize);
    if mtu >= 2 * GWLB_OVERHEAD && len + GWLB_OVERHEAD > mtu {
        return gwlb6_icmp::packet_too_big(
            ctx,
            iface,
            mtu - GWLB_OVERHEAD,
            len,
            route.counter_slot,
        );
    }
    settle_for(route.counter_slot, send_checked(ctx, iface, route, s))
}

#[inline(always)]
fn send_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    route: &EndpointEni,
    s: &Send,
) -> Result<Verdict, Reason> {
    // IPv6 forwarding: the hop limit goes down by one on its way through the endpoint
    // (no header checksum; the upper-layer ones do not cover it).
    mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?.hop_limit -= 1;
    // The appliance's counters (its slot kept in the flow's `new_dport`, as for IPv4).
    let slot = s.appliance_slot as u32;
    stats::to_appliance(slot, s.len as u64);
    let outer = Outer {
        src: s.outer_src,
        dst: s.appliance,
        src_mac: s.src_mac,
        dst_mac: s.dst_mac,
    };
    geneve::encap_as(
        ctx,
        GENEVE_PROTO_IPV6,
        s.cookie,
        iface.vpc_id,
        route.endpoint_id,
        s.len as usize,
        &outer,
    )?;
    redirect_to(s.out_ifindex, Reason::Gwlb6ToAppliance)
}

/// Every so often a flow looks at its appliance: one that left the service, or (with
/// `rebalance`) turned unhealthy, is replaced by the appliance the hash picks now. Both
/// directions come to the same choice on their own: the hash is symmetric.
#[inline(always)]
fn recheck(e: &mut FlowEntry6, key: &FlowKey6, route: &EndpointEni, t: u64) -> Result<(), Reason> {
    e.checked = checked_tick(t);
    let here = VpcAddr {
        vpc_id: e.out_vpc_id,
        addr: unmapped(&e.new_dst),
    };
    // SAFETY: copied out.
    let keep = match unsafe { PL_GWLB_APPLS.get(here) } {
        Some(a) => a.healthy != 0 || route.flags & ENI_FLAG_REBALANCE == 0,
        None => false,
    };
    if !keep {
        let (addr, mac) = choose(key, route)?;
        e.new_dst = mapped(addr);
        e.dst_mac = mac;
        e.new_dport = gwlb::appliance_slot(e.out_vpc_id, addr);
    }
    e.counter_slot = route.counter_slot as u16;
    Ok(())
}

/// The appliance for a new flow: a healthy one of the endpoint's zone set, by the
/// service's stickiness over the IPv6 tuple.
#[inline(always)]
fn choose(key: &FlowKey6, route: &EndpointEni) -> Result<([u8; 4], [u8; 6]), Reason> {
    gwlb::pick(
        symmetric_hash6(key, gwlb::stickiness(route), route.service_id),
        route,
    )
}

/// Both entries of the packet's new flow: `SEND` (`flow` finds them now), or the
/// verdict. The other direction is delivered, after its trip through the appliance, to
/// this packet's sender.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
fn create(ctx: &XdpContext, iface: &IfaceInfo, route: &EndpointEni) -> u64 {
    match create_checked(ctx, iface, route) {
        Ok(()) => SEND,
        Err(r) => settle_for(route.counter_slot, Err(r)),
    }
}

#[inline(always)]
fn create_checked(ctx: &XdpContext, iface: &IfaceInfo, route: &EndpointEni) -> Result<(), Reason> {
    let (key, _, _) = packet_key(ctx, iface)?;
    let key = &key;
    let t = conntrack::now();
    let (appliance, mac) = choose(key, route)?;
    // SAFETY: copied out.
    let port = unsafe { PL_VPC_PORTS.get(route.provider_vpc_id) }
        .copied()
        .ok_or(Reason::DropNoRoute)?;
    let sender = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    let e = scratch6(0)?;
    // SAFETY: this CPU's scratch slot, valid for this run (two entries of 88 bytes and
    // their keys would not fit the BPF stack).
    let e = unsafe { &mut *e };
    // Field by field into the scratch slot: a whole `FlowEntry6` built first takes stack
    // (it took this frame 448 → 440 bytes, when the steer program's chain through it, with
    // `pl_flow_insert6`'s, was the verifier's 512 exactly; with the reply key in a key slot
    // too, the frame is 400).
    *e = FlowEntry6::zeroed();
    e.new_src = mapped(route.lb_addr);
    e.new_dst = mapped(appliance);
    e.new_dport = gwlb::appliance_slot(route.provider_vpc_id, appliance);
    e.counter_slot = route.counter_slot as u16;
    e.out_ifindex = port.ifindex;
    e.src_mac = port.mac;
    e.dst_mac = mac;
    e.out_vpc_id = route.provider_vpc_id;
    e.endpoint_id = route.endpoint_id;
    e.direction = DIR_REPLY;
    e.flags = FLOW_GWLB;
    e.last_seen = seen_tick(t);
    e.checked = checked_tick(t);
    e.peer_mac = sender;
    e.out_mtu = port.mtu;
    // The reply's key in a key slot of this CPU's, not a temporary on the stack (44 bytes
    // the steer program's chain through `pl_flow_insert6` has no room for).
    let back = crate::maps::key_scratch6(0)?;
    // SAFETY: this CPU's key slot, valid for this run; nothing else holds it here.
    unsafe { *back = key.reversed() };
    if FLOWS6
        .insert(unsafe { &*back }, &*e, BPF_ANY as u64)
        .is_err()
    {
        return Err(Reason::DropConntrackFull);
    }
    e.direction = DIR_ORIGINAL;
    e.peer_mac = [0; 6];
    if FLOWS6.insert(key, &*e, BPF_ANY as u64).is_err() {
        return Err(Reason::DropConntrackFull);
    }
    if let Some(c) = stats::counters(route.counter_slot).filter(|_| route.counter_slot != 0) {
        c.new_flows += 1;
    }
    Ok(())
}

/// GENEVE carrying IPv6 from an appliance (the IPv4 return path, or the classifier's
/// inlined one, tail-calls this one's program): validate, find the flow, strip the outer
/// headers, deliver. Inlined into
/// `privatelink_gwlb_return6`, its only caller, which reads its handoff in place and has
/// the stack for it (a BPF call and its return cost this path a few percent).
#[inline(always)]
pub fn from_appliance(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    let mut slot = 0;
    let r = from_appliance_checked(ctx, iface, pkt, &mut slot);
    settle_for(slot, r)
}

#[inline(always)]
fn from_appliance_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    slot: &mut u32,
) -> Result<Verdict, Reason> {
    let outer_src = mut_at::<[u8; 20]>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let outer_src = [outer_src[12], outer_src[13], outer_src[14], outer_src[15]];
    let from = VpcAddr {
        vpc_id: iface.vpc_id,
        addr: outer_src,
    };
    let Some(appl) = maps::appliance(from, pkt.epoch) else {
        return Err(Reason::DropUnknownAppliance);
    };
    let g = geneve::parse_as(ctx, pkt, GENEVE_PROTO_IPV6)?;
    let ip = inner_ipv6(ctx, g.inner, g.end)?;
    let (sport, dport, _) = inner_ports(ctx, ip.l4, ip.end, ip.proto, &ICMP6_ECHO)?;
    let h = mut_at::<Ipv6Hdr>(ctx, g.inner, Reason::DropGeneveMalformed)?;
    let key = FlowKey6::new(g.vpc_id, h.src_addr, h.dst_addr, sport, dport, ip.proto);
    let seen = FLOWS6
        .get_ptr_mut_inline(&key)
        .ok_or(Reason::DropGwlbNoFlow)?;
    // SAFETY: valid for this run.
    let e = unsafe { &mut *seen.entry };
    if e.flags & FLOW_GWLB == 0
        || e.endpoint_id != g.endpoint_id
        || unmapped(&e.new_dst) != outer_src
    {
        return Err(Reason::DropGwlbNoFlow);
    }
    *slot = e.counter_slot as u32;
    let port =
        maps::vpc_port(g.vpc_id, pkt.epoch).ok_or_else(|| seen.confirm(Reason::DropNoRoute))?;
    let known = e.peer_mac;
    let peer_mac = if known == [0; 6] {
        let dst_key = VpcAddr6 {
            vpc_id: g.vpc_id,
            addr: key.dst,
        };
        // SAFETY: copied out.
        match unsafe { PL_GWLB_NEIGH6.get(&dst_key) }.copied() {
            Some(n) if n.mac != [0; 6] => n.mac,
            _ => return ns_probe(ctx, &dst_key, port.ifindex, port.mac),
        }
    } else {
        known
    };
    // The flow checked above and the MAC are one entry's (`flowtable::Seen`); the MAC
    // learned is written to it only then.
    seen.still()?;
    if known == [0; 6] {
        e.peer_mac = peer_mac;
    }
    let len = (ip.end - g.inner) as u64;
    if let Some(c) = stats::counters(appl.counter_slot).filter(|_| appl.counter_slot != 0) {
        c.to_consumer_packets += 1;
        c.to_consumer_bytes += len;
    }
    // Strip the outer IPv4, UDP and GENEVE; a new Ethernet header goes in front.
    geneve::decap(ctx, g.inner)?;
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, peer_mac, port.mac);
    eth.ether_type = ETH_P_IPV6.to_be();
    redirect_to(port.ifindex, Reason::Gwlb6FromAppliance)
}

/// The inner destination's MAC is not known yet: the frame becomes a Neighbour
/// Solicitation for it (`gwlb6_icmp::neighbor_solicitation`), sent out of the VPC's port. The
/// packet itself is lost; its sender retransmits, and by then the advertisement has taught
/// the placeholder entry made here (`learn`).
#[inline(always)]
fn ns_probe(
    ctx: &XdpContext,
    target: &VpcAddr6,
    ifindex: u32,
    mac: [u8; 6],
) -> Result<Verdict, Reason> {
    let placeholder = Neighbor {
        mac: [0; 6],
        _pad: [0; 2],
    };
    let _ = PL_GWLB_NEIGH6.insert(target, &placeholder, BPF_NOEXIST as u64);
    gwlb6_icmp::neighbor_solicitation(ctx, &target.addr, &mac)?;
    redirect_to(ifindex, Reason::GwlbNsProbe)
}

/// A Neighbour Advertisement taught `mac` for `target` in VPC `vpc_id`: an inner
/// destination the return path asked for (only those: a placeholder must exist, so
/// advertisements cannot fill the table).
#[inline(always)]
pub fn learn(vpc_id: u32, target: [u8; 16], mac: [u8; 6]) {
    let key = VpcAddr6 {
        vpc_id,
        addr: target,
    };
    // SAFETY: value copied out before the update.
    if let Some(n) = unsafe { PL_GWLB_NEIGH6.get(&key) }
        && n.mac != mac
    {
        let _ = PL_GWLB_NEIGH6.insert(&key, &Neighbor { mac, _pad: [0; 2] }, BPF_EXIST as u64);
    }
}
