//! The IPv6 established fast path, tried by the entry program for every IPv6 frame before
//! it tail-calls the IPv6 program (`classify::frame`): a flow whose entry was checked under
//! the current epoch goes on one conntrack lookup, without the destination lookups, the
//! listener and endpoint checks and any tail call: a NAT flow rewritten with the checksum
//! delta stamped on its entry (`flows6::stamp6`), a GWLB flow encapsulated to its
//! appliance. `established`'s rules for IPv6. Anything it cannot take goes on to the full
//! classification. Above `conntrack6`, `flows6` and `gwlb6`; used by `classify` only.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{
    DIR_ORIGINAL, FLOW_GWLB, FLOW_LOGGED, FlowEntry6, FlowKey6, GWLB_OVERHEAD, IfaceInfo,
    PROTO_TCP, PROTO_UDP, Reason, checked_elapsed_ns, csum,
};

use crate::{
    conntrack::{Flow, PARTNER_REFRESH_NS, SeqAck, now, track},
    established::{TCP_CHECK, TCP_DOFF_FLAGS, UDP_CHECK, UDP_LEN, pack, set_mac_at, tcp_state},
    flows6::fill_key6,
    flowtable::{FLOWS6, Seen},
    geneve::{self, GENEVE_PROTO_IPV6, Outer},
    gwlb6,
    maps::{config, key_scratch6},
    packet6::copy_addr,
    parse::{ETH_LEN, frame_len, mut_at},
    stats,
    verdict::{Verdict, redirect_to},
};

/// The established path for an IPv6 frame: `NOT_ESTABLISHED`, or the verdict packed with
/// the flow's counter slot. Inlined into the entry program (see `established`).
#[inline(always)]
pub fn established6(ctx: &XdpContext, iface: &IfaceInfo, epoch: u32) -> u64 {
    let mut slot = 0;
    let r = checked(ctx, iface, epoch, &mut slot);
    pack(r, slot)
}

/// Ethernet and the fixed IPv6 header: what this path reads and writes before the L4
/// header, under one bounds check, at fixed offsets (16-bit words in memory order, as
/// `established::Head`, and the addresses as the bytes they are). No padding: every field
/// is 2-aligned, and the frame starts 2-aligned. (The L4 header is checked on its own, for
/// its protocol's length: a short UDP datagram's frame may end 8 bytes after it.)
#[repr(C)]
struct Head6 {
    macs: [u16; 6],
    ether_type: u16,
    /// Version, traffic class and flow label.
    vtf: [u16; 2],
    payload_len: u16,
    /// Next header and hop limit.
    next_hop: u16,
    src: [u8; 16],
    dst: [u8; 16],
}

/// A TCP header's first 20 bytes as words, checked where they are used: the verifier
/// must see the longer bounds check on the TCP path itself (a pointer checked for 8 bytes
/// or 20 by protocol, then merged, fails it).
#[inline(always)]
#[allow(clippy::mut_from_ref)]
fn tcp_words(ctx: &XdpContext) -> Result<&mut [u16; 10], Reason> {
    mut_at::<[u16; 10]>(ctx, L4_AT, Reason::DropTruncatedL4)
}

/// Where the L4 header starts: this path takes no extension headers.
const L4_AT: usize = ETH_LEN + 40;

#[inline(always)]
fn checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    epoch: u32,
    slot: &mut u32,
) -> Result<Option<Verdict>, Reason> {
    if epoch == 0 {
        return Ok(None);
    }
    // Shorter frames, other versions, extension headers, hop limit 1, a length that does
    // not fit the frame, malformed L4 headers and UDP without a checksum are the full
    // path's to judge.
    let Ok(h) = mut_at::<Head6>(ctx, 0, Reason::DropTruncatedL4) else {
        return Ok(None);
    };
    let [version, _] = h.vtf[0].to_ne_bytes();
    let [proto, hop_limit] = h.next_hop.to_ne_bytes();
    let tcp = proto == PROTO_TCP;
    let payload = u16::from_be(h.payload_len) as usize;
    let end = L4_AT + payload;
    if version >> 4 != 6
        || !(tcp || proto == PROTO_UDP)
        || hop_limit <= 1
        || payload == 0
        || end > frame_len(ctx)
    {
        return Ok(None);
    }
    // The ports (and UDP's length and checksum): 8 bytes for either protocol.
    let Ok(l4) = mut_at::<[u16; 4]>(ctx, L4_AT, Reason::DropTruncatedL4) else {
        return Ok(None);
    };
    let (l4_len, l4_min) = if tcp {
        let Ok(t) = tcp_words(ctx) else {
            return Ok(None);
        };
        ((t[TCP_DOFF_FLAGS].to_ne_bytes()[0] >> 4) as usize * 4, 20)
    } else {
        (u16::from_be(l4[UDP_LEN]) as usize, 8)
    };
    if l4_len < l4_min || L4_AT + l4_len > end || (!tcp && l4[UDP_CHECK] == 0) {
        return Ok(None);
    }
    let Ok(k) = key_scratch6(0) else {
        return Ok(None);
    };
    // SAFETY: this CPU's key slot, valid for this run (the full path fills it again).
    let key = unsafe { &mut *k };
    let ports = (u16::from_be(l4[0]), u16::from_be(l4[1]));
    fill_key6(key, iface.vpc_id, &h.src, &h.dst, ports, proto);
    let key = &*key;
    let Some(seen) = FLOWS6.get_ptr_mut_inline(key) else {
        return Ok(None);
    };
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let e = unsafe { &mut *seen.entry };
    let t = now();
    // A flow-logged NAT flow reports from the full path; a GWLB flow checks its appliance
    // as often as a NAT flow its reply entry, in both directions (`gwlb6::recheck`).
    let gwlb = e.flags & FLOW_GWLB != 0;
    if (!gwlb && e.flags & FLOW_LOGGED != 0)
        || e.epoch != epoch
        || e.is_expired(proto, t, &config())
        || ((e.direction == DIR_ORIGINAL || gwlb)
            && checked_elapsed_ns(t, e.checked) > PARTNER_REFRESH_NS)
    {
        return Ok(None);
    }
    // Too big for the appliance's port once encapsulated: the full path answers with a
    // Packet Too Big.
    let inner_len = end - ETH_LEN;
    let mtu = e.out_mtu as usize;
    if gwlb && mtu >= 2 * GWLB_OVERHEAD && inner_len + GWLB_OVERHEAD > mtu {
        return Ok(None);
    }
    *slot = e.counter_slot as u32;
    let (flags, nums) = if tcp {
        let Ok(t) = tcp_words(ctx) else {
            return Ok(None);
        };
        tcp_state(t)
    } else {
        (0, SeqAck::default())
    };
    let dir = e.direction;
    if gwlb {
        // IPv6 forwarding: the hop limit goes down by one on its way through the endpoint.
        h.next_hop = u16::from_ne_bytes([proto, hop_limit - 1]);
        // GWLB flows track the flags only, as `gwlb6::steer` does.
        return to_appliance6(ctx, iface.vpc_id, &seen, key, inner_len, flags, t).map(Some);
    }
    rewrite(ctx, h, l4, e, tcp, proto, hop_limit).map_err(|r| seen.confirm(r))?;
    let out_ifindex = e.out_ifindex;
    // Everything the frame took from the entry was one flow's (as `established`'s).
    seen.still()?;
    track(e, key, flags, nums, t, dir);
    e.fast_packets = e.fast_packets.wrapping_add(1);
    let reason = if dir == DIR_ORIGINAL {
        Reason::Forward6ToService
    } else {
        Reason::Forward6ToConsumer
    };
    redirect_to(out_ifindex, reason).map(Some)
}

/// A GWLB flow's packet, its hop limit counted down: to the flow's appliance in GENEVE
/// (`gwlb6::steer`'s work, with what its last full-path packet checked, the flow cookie
/// included: hashing the tuple here took the IPv6 program, where this path ran first, past
/// its 512 bytes of stack).
#[inline(always)]
fn to_appliance6(
    ctx: &XdpContext,
    vpc_id: u32,
    seen: &Seen<FlowEntry6>,
    key: &FlowKey6,
    inner_len: usize,
    flags: u8,
    t: u64,
) -> Result<Verdict, Reason> {
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let e = unsafe { &mut *seen.entry };
    let outer = Outer {
        src: gwlb6::unmapped(&e.new_src),
        dst: gwlb6::unmapped(&e.new_dst),
        src_mac: e.src_mac,
        dst_mac: e.dst_mac,
    };
    let (out_ifindex, cookie, endpoint_id, appliance) =
        (e.out_ifindex, e.gwlb_cookie(), e.endpoint_id, e.new_dport);
    // What was read is one flow's entry (as `established`'s).
    seen.still()?;
    let dir = e.direction;
    track(e, key, flags, SeqAck::default(), t, dir);
    e.fast_packets = e.fast_packets.wrapping_add(1);
    // The appliance's counters (its slot kept in the flow's `new_dport`).
    stats::to_appliance(appliance as u32, inner_len as u64);
    geneve::encap_as(
        ctx,
        GENEVE_PROTO_IPV6,
        cookie,
        vpc_id,
        endpoint_id,
        inner_len,
        &outer,
    )?;
    redirect_to(out_ifindex, Reason::Gwlb6ToAppliance)
}

/// `flows6::apply6`'s rewrite with the stamped delta, and `nat6::next_hop6`'s MACs. `l4`
/// is the L4 header's first 8 bytes (the ports, and UDP's checksum).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    h: &mut Head6,
    l4: &mut [u16; 4],
    e: &FlowEntry6,
    tcp: bool,
    proto: u8,
    hop_limit: u8,
) -> Result<(), Reason> {
    h.next_hop = u16::from_ne_bytes([proto, hop_limit - 1]);
    copy_addr(&mut h.src, &e.new_src);
    copy_addr(&mut h.dst, &e.new_dst);
    l4[0] = e.new_sport.to_be();
    l4[1] = e.new_dport.to_be();
    if tcp {
        let t = tcp_words(ctx)?;
        t[TCP_CHECK] = csum::apply_delta(t[TCP_CHECK], e.csum_l4);
    } else {
        let c = csum::apply_delta(l4[UDP_CHECK], e.csum_l4);
        // A computed 0 goes as 0xffff (IPv6 has no "no checksum").
        l4[UDP_CHECK] = if c == 0 { 0xffff } else { c };
    }
    set_mac_at(&mut h.macs, 0, &e.dst_mac);
    set_mac_at(&mut h.macs, 3, &e.src_mac);
    Ok(())
}
