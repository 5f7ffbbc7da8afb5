//! The established fast path, tried first by the classifier for every IPv4 frame: a
//! flow whose entry was checked under the current epoch is rewritten and redirected on one
//! conntrack lookup, with the checksum deltas stamped on its entry. Anything it cannot
//! take goes on to the full classification. Above `conntrack`; used by `classify` only.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{
    DIR_ORIGINAL, FLOW_EGRESS, FLOW_GWLB, FLOW_INGRESS, FLOW_LOGGED, FlowEntry, FlowEntry6,
    FlowEvent, FlowKey, GENEVE_PORT, GWLB_OVERHEAD, IFACE_FLAG_APPLIANCES, IfaceInfo, PROTO_TCP,
    PROTO_UDP, Reason, checked_elapsed_ns, csum, halves_word, ports_word, proto_word,
};

use crate::{
    checksum::sum_header,
    conntrack::{PARTNER_REFRESH_NS, SeqAck, now, track},
    flowlog,
    flowtable::{FLOWS, Seen},
    geneve::{self, Outer},
    maps::config,
    packet::Packet,
    parse::{ETH_LEN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, frame_len, mut_at},
    stats,
    verdict::{Verdict, redirect_to, settle_for},
};

/// What `established` returns when the packet is not one it can take: the full path then
/// decides (no valid `settle` value has all of its high half set).
pub const NOT_ESTABLISHED: u64 = u64::MAX;

/// The established fast path, tried first for every IPv4 frame, before the full path
/// validates its header (`packet`: this path checks what it reads itself, and takes only
/// what `packet` would pass): a flow whose entry was checked under the current epoch
/// (`PL_EPOCH`: the daemon's maps have not changed since) is forwarded on one conntrack
/// lookup, without looking up the endpoint, SNAT address or routes again. Anything else —
/// a header it does not take, no entry, another epoch, a per-packet ACL, an idle
/// direction, a partner check due, TTL 1 — returns `NOT_ESTABLISHED`, never an error of
/// its own: the full path decides and stamps. `epoch`: read before the interface was.
/// Inlined into the entry program (a call and the packed verdict cost more than its stack
/// frame saves).
#[inline(always)]
pub fn established(ctx: &XdpContext, iface: &IfaceInfo, ifindex: u32, epoch: u32) -> u64 {
    let mut slot = 0;
    let r = established_checked(ctx, iface, ifindex, epoch, &mut slot);
    pack(r, slot)
}

/// A short path's outcome packed: `NOT_ESTABLISHED` if it did not take the packet, else
/// the verdict with the flow's counter slot (`settle_for`). `established6`'s too.
#[inline(always)]
pub fn pack(r: Result<Option<Verdict>, Reason>, slot: u32) -> u64 {
    match r {
        Ok(None) => NOT_ESTABLISHED,
        Ok(Some(v)) => settle_for(slot, Ok(v)),
        Err(r) => settle_for(slot, Err(r)),
    }
}

/// What the tracking reads of a TCP header (its first 20 bytes, as words in memory
/// order): the flags, and the sequence and acknowledgment numbers. `established6`'s too.
#[inline(always)]
pub fn tcp_state(t: &[u16; 10]) -> (u8, SeqAck) {
    let word = |i: usize| {
        let [a, b] = t[i].to_ne_bytes();
        let [c, d] = t[i + 1].to_ne_bytes();
        u32::from_be_bytes([a, b, c, d])
    };
    (
        t[TCP_DOFF_FLAGS].to_ne_bytes()[1] & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK),
        SeqAck {
            seq: word(2),
            ack: word(4),
        },
    )
}

/// Ethernet, an IPv4 header without options and the first 20 bytes after it: what the
/// established path reads and writes, under one bounds check, at fixed offsets. As 16-bit
/// words in memory order (network order on the wire; the frame starts 2-aligned, as
/// everywhere in this program): LLVM's BPF backend splits any access it cannot prove
/// aligned into single bytes, and byte-wise this path ran several times the instructions.
#[repr(C)]
struct Head {
    macs: [u16; 6],
    ether_type: u16,
    ip: [u16; 10],
    l4: [u16; 10],
}

// Word indexes in `Head::ip` and `Head::l4` (TCP's also `established6`'s).
const IP_VIHL_TOS: usize = 0;
const IP_TOT_LEN: usize = 1;
const IP_FRAGS: usize = 3;
const IP_TTL_PROTO: usize = 4;
const IP_CHECK: usize = 5;
const IP_SRC: usize = 6;
const IP_DST: usize = 8;
pub const TCP_DOFF_FLAGS: usize = 6;
pub const TCP_CHECK: usize = 8;
pub const UDP_LEN: usize = 2;
pub const UDP_CHECK: usize = 3;

/// The address in words `i` and `i + 1`, as it lies in memory, read as a native word.
#[inline(always)]
fn word_at(w: &[u16; 10], i: usize) -> u32 {
    halves_word(w[i], w[i + 1])
}

/// Writes `a` into words `i` and `i + 1`.
#[inline(always)]
fn set_addr_at(w: &mut [u16; 10], i: usize, a: [u8; 4]) {
    w[i] = u16::from_ne_bytes([a[0], a[1]]);
    w[i + 1] = u16::from_ne_bytes([a[2], a[3]]);
}

// The MAC addresses of a flow entry, of either family, lie at even offsets of an
// 8-aligned value.
const _: () = assert!(
    core::mem::offset_of!(FlowEntry, src_mac) % 2 == 0
        && core::mem::offset_of!(FlowEntry, dst_mac) % 2 == 0
        && core::mem::align_of::<FlowEntry>() >= 2
        && core::mem::offset_of!(FlowEntry6, src_mac) % 2 == 0
        && core::mem::offset_of!(FlowEntry6, dst_mac) % 2 == 0
        && core::mem::align_of::<FlowEntry6>() >= 2
);

/// Writes a flow entry's MAC address (`mac`, one of its fields, of a `FlowEntry` or a
/// `FlowEntry6`) into three words from `at`.
#[inline(always)]
pub fn set_mac_at(w: &mut [u16; 6], at: usize, mac: &[u8; 6]) {
    // SAFETY: `mac` is a MAC field of a flow entry, 2-aligned (asserted above); read as
    // the three words it holds.
    let words = unsafe { core::ptr::read(mac.as_ptr() as *const [u16; 3]) };
    for i in 0..3 {
        w[at + i] = words[i];
    }
}

#[inline(always)]
fn established_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    ifindex: u32,
    epoch: u32,
    slot: &mut u32,
) -> Result<Option<Verdict>, Reason> {
    if epoch == 0 {
        return Ok(None);
    }
    // Tried before the full path's validation (`packet`): what this path takes passes it.
    // Shorter frames, other versions, IP options, a length that does not fit the frame,
    // fragments, TTL 1 and L4 headers that do not fit the packet are the full path's to
    // judge.
    let Ok(h) = mut_at::<Head>(ctx, 0, Reason::DropTruncatedL4) else {
        return Ok(None);
    };
    let (ip, l4) = (&mut h.ip, &mut h.l4);
    let [vihl, _] = ip[IP_VIHL_TOS].to_ne_bytes();
    let [ttl, proto] = ip[IP_TTL_PROTO].to_ne_bytes();
    let [frag_hi, frag_lo] = ip[IP_FRAGS].to_ne_bytes();
    let tcp = proto == PROTO_TCP;
    let end = ETH_LEN + u16::from_be(ip[IP_TOT_LEN]) as usize;
    // Version 4, a header of 20 bytes.
    if vihl != 0x45
        || !(tcp || proto == PROTO_UDP)
        || end > frame_len(ctx)
        || ttl <= 1
        || frag_hi & 0x3f != 0
        || frag_lo != 0
    {
        return Ok(None);
    }
    // What `packet` would have made of it (`tot_len` is at least the header's 20 bytes
    // and the L4 header's: checked below).
    let pkt = &Packet {
        ifindex,
        l4: ETH_LEN + 20,
        end,
        proto,
        epoch,
    };
    // GENEVE from an appliance is never a flow of ours by its outer tuple: spare it the
    // flow lookup (it would miss) on its way to the return path.
    if !tcp && iface.flags & IFACE_FLAG_APPLIANCES != 0 && l4[1] == GENEVE_PORT.to_be() {
        return Ok(None);
    }
    let (l4_len, l4_min) = if tcp {
        ((l4[TCP_DOFF_FLAGS].to_ne_bytes()[0] >> 4) as usize * 4, 20)
    } else {
        (u16::from_be(l4[UDP_LEN]) as usize, 8)
    };
    if l4_len < l4_min || pkt.l4 + l4_len > pkt.end {
        return Ok(None);
    }
    let key = FlowKey::of_words([
        iface.vpc_id,
        word_at(ip, IP_SRC),
        word_at(ip, IP_DST),
        ports_word(u16::from_be(l4[0]), u16::from_be(l4[1])),
        proto_word(pkt.proto),
    ]);
    let Some(seen) = FLOWS.get_ptr_mut_inline(&key) else {
        return Ok(None);
    };
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let e = unsafe { &mut *seen.entry };
    let t = now();
    // A GWLB flow checks its appliance as often as a NAT flow its reply entry, in both
    // directions (`gwlb::recheck`).
    let gwlb = e.flags & FLOW_GWLB != 0;
    if e.epoch != pkt.epoch
        || e.is_expired(key.proto, t, &config())
        || ((e.direction == DIR_ORIGINAL || gwlb)
            && checked_elapsed_ns(t, e.checked) > PARTNER_REFRESH_NS)
    {
        return Ok(None);
    }
    // Too big for the appliance's port once encapsulated: the full path answers with
    // the frag-needed error.
    let inner_len = pkt.end - ETH_LEN;
    let mtu = e.out_mtu as usize;
    if gwlb && mtu >= 2 * GWLB_OVERHEAD && inner_len + GWLB_OVERHEAD > mtu {
        return Ok(None);
    }
    *slot = e.counter_slot as u32;
    // RFC 1812: a router verifies the header checksum before forwarding.
    if csum::fold(sum_header(ip)) != 0xffff {
        return Err(seen.confirm(Reason::DropBadIpChecksum));
    }
    let (flags, nums) = if tcp {
        tcp_state(l4)
    } else {
        (0, SeqAck::default())
    };
    let dir = e.direction;
    if gwlb {
        // IPv4 forwarding: the TTL goes down by one on its way through the endpoint.
        ip[IP_TTL_PROTO] = u16::from_ne_bytes([ttl - 1, proto]);
        ip[IP_CHECK] = csum::apply_delta(ip[IP_CHECK], csum::fold(csum::delta_ttl_decrement()));
        // GWLB flows track the flags only, as `gwlb::steer` does.
        return to_appliance(ctx, &seen, &key, inner_len, flags, t).map(Some);
    }
    // The rewrite, with the checksum deltas computed when the flow was stamped.
    ip[IP_TTL_PROTO] = u16::from_ne_bytes([ttl - 1, proto]);
    set_addr_at(ip, IP_SRC, e.new_src);
    set_addr_at(ip, IP_DST, e.new_dst);
    ip[IP_CHECK] = csum::apply_delta(ip[IP_CHECK], e.csum_ip);
    l4[0] = e.new_sport.to_be();
    l4[1] = e.new_dport.to_be();
    let at = if tcp { TCP_CHECK } else { UDP_CHECK };
    let old = l4[at];
    let c = csum::apply_delta(old, e.csum_l4);
    l4[at] = if tcp { c } else { csum::udp_finish(old, c) };
    set_mac_at(&mut h.macs, 0, &e.dst_mac);
    set_mac_at(&mut h.macs, 3, &e.src_mac);
    let out_ifindex = e.out_ifindex;
    // Everything the frame took from the entry was one flow's: else it is dropped, and
    // the entry, another flow's by now, is not written.
    seen.still()?;
    track(e, &key, flags, nums, t, dir);
    e.fast_packets = e.fast_packets.wrapping_add(1);
    if e.flags & FLOW_LOGGED != 0 {
        report(ctx, e, &key, pkt);
    }
    let reason = if dir == DIR_ORIGINAL {
        Reason::ForwardToService
    } else {
        Reason::ForwardToConsumer
    };
    redirect_to(out_ifindex, reason).map(Some)
}

/// A GWLB flow's packet, its TTL counted down: to the flow's appliance in GENEVE
/// (`gwlb::steer`'s work, with what its last full-path packet checked). GWLB flows are not
/// flow-logged.
#[inline(always)]
fn to_appliance(
    ctx: &XdpContext,
    seen: &Seen<FlowEntry>,
    key: &FlowKey,
    inner_len: usize,
    flags: u8,
    t: u64,
) -> Result<Verdict, Reason> {
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let e = unsafe { &mut *seen.entry };
    let outer = Outer {
        src: e.new_src,
        dst: e.new_dst,
        src_mac: e.src_mac,
        dst_mac: e.dst_mac,
    };
    let (out_ifindex, cookie, endpoint_id, appliance) =
        (e.out_ifindex, e.gwlb_cookie(), e.endpoint_id, e.new_dport);
    // As the NAT's rewrite (`established_checked`): what was read is one flow's entry.
    seen.still()?;
    let dir = e.direction;
    track(e, key, flags, SeqAck::default(), t, dir);
    e.fast_packets = e.fast_packets.wrapping_add(1);
    stats::to_appliance(appliance as u32, inner_len as u64);
    geneve::encap(ctx, key, cookie, endpoint_id, inner_len, &outer)?;
    redirect_to(out_ifindex, Reason::GwlbToAppliance)
}

/// The flow event of a packet of a flow-logged flow (before its rewrite): as its ENI sees
/// it, the key's tuple coming in, the rewritten one (the ENI's reply) going out.
#[inline(always)]
fn report(ctx: &XdpContext, e: &FlowEntry, key: &FlowKey, pkt: &Packet) {
    let tcp_flags = if pkt.proto == PROTO_TCP {
        match crate::parse::mut_at::<[u8; 14]>(ctx, pkt.l4, Reason::DropTruncatedL4) {
            Ok(h) => h[13],
            Err(_) => 0,
        }
    } else {
        0
    };
    let mut ev = FlowEvent {
        slot: e.counter_slot as u32,
        bytes: (pkt.end - ETH_LEN) as u32,
        proto: key.proto,
        tcp_flags,
        ..FlowEvent::default()
    };
    if e.direction == DIR_ORIGINAL {
        (ev.src, ev.dst, ev.sport, ev.dport) = (key.src, key.dst, key.sport, key.dport);
        ev.direction = FLOW_INGRESS;
        ev.reason = Reason::ForwardToService as u8;
    } else {
        (ev.src, ev.dst, ev.sport, ev.dport) = (e.new_src, e.new_dst, e.new_sport, e.new_dport);
        ev.direction = FLOW_EGRESS;
        ev.reason = Reason::ForwardToConsumer as u8;
    }
    flowlog::report(ev);
}
