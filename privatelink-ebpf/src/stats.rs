//! The counters, the last step of every walk (the entry program and each path program
//! count their verdict): per CPU, `PL_STATS[reason] += 1`, and for a packet of an endpoint
//! ENI or appliance (a verdict settled with its slot) that slot of `PL_EP_COUNTERS`.
//! Uses only `maps`, `parse` and `verdict`.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{EndpointCounters, GWLB_OVERHEAD, Reason};

use crate::{
    maps::{PL_EP_COUNTERS, PL_STATS},
    parse::{ETH_LEN, be16, mut_at},
    verdict::unpack,
};

/// Counts the packed verdict `v` (see `crate::verdict`) and returns its XDP action.
#[inline(always)]
pub fn count(ctx: &XdpContext, v: u64) -> u32 {
    let (action, reason, slot) = unpack(v);
    if let Some(c) = PL_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
    if slot != 0 {
        count_endpoint(ctx, slot, reason);
    }
    action
}

/// A counter slot of `PL_EP_COUNTERS` (this CPU's), if `slot` is in range.
#[inline(always)]
pub fn counters(slot: u32) -> Option<&'static mut EndpointCounters> {
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    PL_EP_COUNTERS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// A packet of `bytes` sent to the appliance whose counter slot is `slot` (0: none).
#[inline(always)]
pub fn to_appliance(slot: u32, bytes: u64) {
    if let Some(c) = counters(slot).filter(|_| slot != 0) {
        c.to_service_packets += 1;
        c.to_service_bytes += bytes;
    }
}

/// The IP bytes of the frame as it leaves (its IPv4 total length; less the GENEVE headers
/// of a frame sent to an appliance, IPv4 or IPv6 inside: the packet's own bytes). 0 if
/// unreadable.
#[inline(always)]
fn ip_bytes(ctx: &XdpContext, reason: Reason) -> u64 {
    let Ok(len) = mut_at::<[u8; 2]>(ctx, ETH_LEN + 2, Reason::DropTruncatedIp) else {
        return 0;
    };
    let len = be16(*len) as u64;
    if reason == Reason::GwlbToAppliance || reason == Reason::Gwlb6ToAppliance {
        len.saturating_sub(GWLB_OVERHEAD as u64)
    } else {
        len
    }
}

/// The IP bytes of an IPv6 frame as it leaves: the fixed header and its payload length.
/// 0 if unreadable.
#[inline(always)]
fn ip6_bytes(ctx: &XdpContext) -> u64 {
    match mut_at::<[u8; 2]>(ctx, ETH_LEN + 4, Reason::DropTruncatedIpv6) {
        Ok(len) => 40 + be16(*len) as u64,
        Err(_) => 0,
    }
}

/// The per-endpoint part of `count`. "To service" is what the consumer side sent (and, on
/// a GWLB endpoint, what went to an appliance), "to consumer" what came back.
#[inline(always)]
fn count_endpoint(ctx: &XdpContext, slot: u32, reason: Reason) {
    let Some(c) = counters(slot) else {
        return;
    };
    match reason {
        Reason::ForwardNewFlow
        | Reason::ForwardToService
        | Reason::GwlbToAppliance
        | Reason::Gwlb6ToAppliance => {
            if reason == Reason::ForwardNewFlow {
                c.new_flows += 1;
            }
            c.to_service_packets += 1;
            c.to_service_bytes += ip_bytes(ctx, reason);
        }
        Reason::ForwardToConsumer | Reason::GwlbFromAppliance => {
            c.to_consumer_packets += 1;
            c.to_consumer_bytes += ip_bytes(ctx, reason);
        }
        Reason::Forward6NewFlow | Reason::Forward6ToService => {
            if reason == Reason::Forward6NewFlow {
                c.new_flows += 1;
            }
            c.to_service_packets += 1;
            c.to_service_bytes += ip6_bytes(ctx);
        }
        Reason::Forward6ToConsumer | Reason::Gwlb6FromAppliance => {
            c.to_consumer_packets += 1;
            c.to_consumer_bytes += ip6_bytes(ctx);
        }
        r if r.is_drop() || r == Reason::GwlbFragNeeded || r == Reason::GwlbPacketTooBig => {
            let k = r.endpoint_drop();
            if k < c.drops.len() {
                c.drops[k] += 1;
            }
        }
        _ => {}
    }
}
