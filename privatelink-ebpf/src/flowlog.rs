//! Flow events: each packet of an endpoint ENI with flow logs on (`ENI_FLAG_FLOW_LOG`,
//! `FLOW_LOGGED` on its flows), accepted or dropped, as one `FlowEvent` on the
//! `PL_FLOW_EVENTS` ring buffer; the daemon aggregates them per capture window into flow
//! log records. An event that does not fit is counted in its slot's `flow_log_lost`
//! (the records of that window then say `SKIPDATA`). Events are submitted without a
//! wakeup (`BPF_RB_NO_WAKEUP`): the daemon drains the buffer on a timer, so a busy flow
//! costs no wakeup per packet. An IPv6 packet's event is a `FlowEvent6` on the same ring
//! (`report_frame6`, `capture6`/`report_captured6`), its length telling it apart. Uses
//! `parse`, `packet6` and `stats`.

use aya_ebpf::{
    btf_maps::{PerCpuArray, RingBuf},
    helpers::bpf_ktime_get_coarse_ns,
    macros::btf_map,
    programs::XdpContext,
};
use privatelink_common::{
    ENI_FLAG_FLOW_LOG, EndpointEni, FLOW_EVENTS_BYTES, FlowEvent, FlowEvent6, PROTO_TCP, PROTO_UDP,
    Reason,
};

use crate::{
    packet::Packet,
    packet6::{IPV6_LEN, MAX_EXT_HEADERS, MAX_EXT_LEN, copy_addr},
    parse::{ETH_LEN, Ipv4Hdr, Ipv6Hdr, Ports, be16, mut_at},
    stats::counters,
};

/// The flow events (this object's own: a restarted daemon reads the ring of the object it
/// loaded; events still in the old one are lost with it).
#[btf_map]
pub static PL_FLOW_EVENTS: RingBuf<FlowEvent, { FLOW_EVENTS_BYTES as usize }> = RingBuf::new();

/// `BPF_RB_NO_WAKEUP`.
const NO_WAKEUP: u64 = 1;

/// Reports `ev` (its time is set here), or counts it lost for its slot.
#[inline(always)]
pub fn report(mut ev: FlowEvent) {
    // SAFETY: plain helper call.
    ev.time_ns = unsafe { bpf_ktime_get_coarse_ns() };
    match PL_FLOW_EVENTS.reserve(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(NO_WAKEUP);
        }
        None => lost(ev.slot),
    }
}

/// Counts an event of `slot` that did not fit.
#[inline(always)]
fn lost(slot: u32) {
    if let Some(c) = counters(slot) {
        c.flow_log_lost += 1;
    }
}

/// The event of the packet in the frame as it is now (its addresses, ports and TCP flags;
/// ports 0 when they are not there to read), for `slot`, in `direction`; its reason is the
/// caller's to set. `None` if not even the IPv4 header can be read.
#[inline(always)]
pub fn of_frame(ctx: &XdpContext, pkt: &Packet, slot: u32, direction: u8) -> Option<FlowEvent> {
    let mut ev = FlowEvent::default();
    fill(ctx, pkt, slot, direction, &mut ev).then_some(ev)
}

/// `of_frame` into `ev`; false if not even the IPv4 header can be read.
#[inline(always)]
fn fill(ctx: &XdpContext, pkt: &Packet, slot: u32, direction: u8, ev: &mut FlowEvent) -> bool {
    let Ok(ip) = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp) else {
        return false;
    };
    *ev = FlowEvent {
        slot,
        bytes: be16(ip.tot_len) as u32,
        src: ip.src_addr,
        dst: ip.dst_addr,
        proto: pkt.proto,
        direction,
        ..FlowEvent::default()
    };
    // Written out here, not shared with `fill6`: every way of sharing it tried made the
    // IPv4 forward path's verifier walk a tenth longer.
    if (pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP) && pkt.l4 + 4 <= pkt.end {
        if let Ok(p) = mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4) {
            ev.sport = be16(p.sport);
            ev.dport = be16(p.dport);
        }
        if pkt.proto == PROTO_TCP && pkt.l4 + 14 <= pkt.end {
            if let Ok(f) = mut_at::<[u8; 14]>(ctx, pkt.l4, Reason::DropTruncatedL4) {
                ev.tcp_flags = f[13];
            }
        }
    }
    true
}

/// The ports and TCP flags of a packet of protocol `proto` whose L4 header is at `l4`
/// and which ends at `end`, written into `to`'s fields (left as they are where they are
/// not there to read).
#[inline(always)]
fn ports6(ctx: &XdpContext, l4: usize, end: usize, proto: u8, to: (&mut u16, &mut u16, &mut u8)) {
    if (proto == PROTO_TCP || proto == PROTO_UDP) && l4 + 4 <= end {
        if let Ok(p) = mut_at::<Ports>(ctx, l4, Reason::DropTruncatedL4) {
            *to.0 = be16(p.sport);
            *to.1 = be16(p.dport);
        }
        if proto == PROTO_TCP && l4 + 14 <= end {
            if let Ok(f) = mut_at::<[u8; 14]>(ctx, l4, Reason::DropTruncatedL4) {
                *to.2 = f[13];
            }
        }
    }
}

/// Reports `ev` with the verdict `r` of its walk.
#[inline(always)]
pub fn report_verdict(ev: Option<FlowEvent>, r: &Result<(u32, Reason), Reason>) {
    if let Some(mut ev) = ev {
        ev.reason = verdict_reason(r);
        report(ev);
    }
}

#[inline(always)]
fn verdict_reason(r: &Result<(u32, Reason), Reason>) -> u8 {
    match r {
        Ok((_, reason)) | Err(reason) => *reason as u8,
    }
}

/// Per-CPU room for the event of a packet whose walk has yet to decide (`capture`, then
/// `report_captured`): kept out of the path's registers and stack, so the verifier does
/// not walk the path twice, with an event and without.
#[btf_map]
static PL_FLOW_SCRATCH: PerCpuArray<FlowEvent, 1> = PerCpuArray::new();

/// Keeps the frame's event (as `of_frame`) for `report_captured`.
#[inline(always)]
pub fn capture(ctx: &XdpContext, pkt: &Packet, slot: u32, direction: u8) {
    if let Some(p) = PL_FLOW_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for this run.
        let ev = unsafe { &mut *p };
        if !fill(ctx, pkt, slot, direction, ev) {
            ev.slot = 0;
        }
    }
}

/// Reports the event `capture` kept, with the verdict `r`.
#[inline(always)]
pub fn report_captured(r: &Result<(u32, Reason), Reason>) {
    if let Some(p) = PL_FLOW_SCRATCH.get_ptr(0) {
        // SAFETY: this CPU's slot, valid for this run.
        let mut ev = unsafe { *p };
        if ev.slot != 0 {
            ev.reason = verdict_reason(r);
            report(ev);
        }
    }
}

/// The IPv6 packet in the frame as it is now, for `slot`, in `direction`, with the verdict
/// `reason`, written straight into the ring (or counted lost). A packet whose extension
/// headers were not walked (`pkt.l4` 0: refused before or by `packet6`) is given as its
/// fixed header has it: its next header for a protocol, no ports. A BPF function of its
/// own: a path calls it after its walk, and nothing of it weighs on the path's frame.
#[inline(never)]
pub fn report_frame6(ctx: &XdpContext, pkt: &Packet, slot: u32, direction: u32, reason: u32) {
    let Some(mut entry) = PL_FLOW_EVENTS.reserve_untyped::<FlowEvent6>(0) else {
        lost(slot);
        return;
    };
    // SAFETY: the reservation is this event's, sized for it; every field is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    if fill6(ctx, pkt, slot, direction as u8, ev) {
        ev.reason = reason as u8;
        // SAFETY: plain helper call.
        ev.time_ns = unsafe { bpf_ktime_get_coarse_ns() };
        entry.submit(NO_WAKEUP);
    } else {
        entry.discard(0);
    }
}

/// `of_frame` for IPv6, into `ev` (its time and reason are the caller's); false if the
/// fixed header cannot be read.
#[inline(always)]
fn fill6(ctx: &XdpContext, pkt: &Packet, slot: u32, direction: u8, ev: &mut FlowEvent6) -> bool {
    let Ok(ip) = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6) else {
        return false;
    };
    ev.time_ns = 0;
    ev.slot = slot;
    ev.bytes = (IPV6_LEN + be16(ip.payload_len) as usize) as u32;
    copy_addr(&mut ev.src, &ip.src_addr);
    copy_addr(&mut ev.dst, &ip.dst_addr);
    ev.direction = direction;
    ev.reason = 0;
    // Read from the caller's frame, `l4` is bounded here for the verifier: no walked
    // packet's L4 header starts past its extension headers' limits.
    let l4 = pkt.l4;
    (ev.sport, ev.dport, ev.tcp_flags) = (0, 0, 0);
    if l4 == 0 || l4 > MAX_L4 {
        ev.proto = ip.next_hdr;
    } else {
        ev.proto = pkt.proto;
        let to = (&mut ev.sport, &mut ev.dport, &mut ev.tcp_flags);
        ports6(ctx, l4, pkt.end, pkt.proto, to);
    }
    true
}

/// The furthest an IPv6 packet's L4 header starts (`packet6`'s limits).
const MAX_L4: usize = ETH_LEN + IPV6_LEN + MAX_EXT_HEADERS * MAX_EXT_LEN;

/// `PL_FLOW_SCRATCH` for IPv6 (`capture6`, `report_captured6`).
#[btf_map]
static PL_FLOW_SCR6: PerCpuArray<FlowEvent6, 1> = PerCpuArray::new();

/// Keeps the IPv6 frame's event for `report_captured6`, as `capture` does, if `eni` has
/// flow logs on (its caller reports only then). A BPF function of its own, so that the
/// test of the flag is not a branch in its caller's walk.
#[inline(never)]
pub fn capture6(ctx: &XdpContext, pkt: &Packet, eni: &EndpointEni, direction: u32) {
    if eni.flags & ENI_FLAG_FLOW_LOG == 0 {
        return;
    }
    if let Some(p) = PL_FLOW_SCR6.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for this run.
        let ev = unsafe { &mut *p };
        if !fill6(ctx, pkt, eni.counter_slot, direction as u8, ev) {
            ev.slot = 0;
        }
    }
}

/// Reports the event `capture6` kept, with the verdict `reason`. A BPF function of its own.
#[inline(never)]
pub fn report_captured6(reason: u32) {
    let Some(p) = PL_FLOW_SCR6.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's slot, valid for this run.
    let kept = unsafe { &*p };
    if kept.slot == 0 {
        return;
    }
    let Some(mut entry) = PL_FLOW_EVENTS.reserve_untyped::<FlowEvent6>(0) else {
        lost(kept.slot);
        return;
    };
    let mut ev = *kept;
    ev.reason = reason as u8;
    // SAFETY: plain helper call.
    ev.time_ns = unsafe { bpf_ktime_get_coarse_ns() };
    entry.write(ev);
    entry.submit(NO_WAKEUP);
}
