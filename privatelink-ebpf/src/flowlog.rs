//! Flow events: each packet of an endpoint ENI with flow logs on (`ENI_FLAG_FLOW_LOG`,
//! `FLOW_LOGGED` on its flows), accepted or dropped, as one `FlowEvent` on the
//! `PL_FLOW_EVENTS` ring buffer; the daemon aggregates them per capture window into flow
//! log records. An event that does not fit is counted in its slot's `flow_log_lost`
//! (the records of that window then say `SKIPDATA`). Events are submitted without a
//! wakeup (`BPF_RB_NO_WAKEUP`): the daemon drains the buffer on a timer, so a busy flow
//! costs no wakeup per packet. Uses `parse` and `stats`.

use aya_ebpf::{
    btf_maps::{PerCpuArray, RingBuf},
    helpers::bpf_ktime_get_coarse_ns,
    macros::btf_map,
    programs::XdpContext,
};
use privatelink_common::{FLOW_EVENTS_BYTES, FlowEvent, PROTO_TCP, PROTO_UDP, Reason};

use crate::{
    packet::Packet,
    parse::{ETH_LEN, Ipv4Hdr, Ports, be16, mut_at},
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
        None => {
            if let Some(c) = counters(ev.slot) {
                c.flow_log_lost += 1;
            }
        }
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
