//! What a packet's walk ends in: a `Verdict` (an XDP action and the counter that explains
//! it), packed into a u64 across the BPF function calls of the paths with the counter slot
//! of the endpoint ENI it is counted for (`settle`/`settle_for`/`unpack`), and the redirect
//! verdict every forwarding path ends with (`redirect_to`). The bottom layer: it uses no
//! other module of the crate.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect};
use privatelink_common::Reason;

/// What the walk decided: an XDP action and the counter that explains it.
pub type Verdict = (u32, Reason);

/// The outcome of a path that runs as its own BPF function. Such functions return a plain
/// `Verdict`: BTF cannot describe Rust's `Result` layout (the kernel refuses the union
/// member at a non-zero offset it would need), and a BPF-to-BPF call keeps each path's
/// stack frame separate, which the 512-byte limit needs.
/// The verdict travels packed in one u64 (action << 56 | slot << 32 | reason), returned in
/// a register; `settle` is for a packet of no endpoint (slot 0).
#[inline(always)]
pub fn settle(r: Result<Verdict, Reason>) -> u64 {
    settle_for(0, r)
}

/// `settle` for a packet of the endpoint ENI (or appliance) whose counters are at `slot`
/// of `PL_EP_COUNTERS` (below `MAX_COUNTER_SLOTS`, so 24 bits hold it). A
/// `DropFlowChanged` is nobody's (slot 0): the paths that drop for it read `slot` from a
/// flow entry that another CPU was rewriting for another flow, so the slot may be that
/// flow's; the drop is counted by its reason only, and on every path: the full paths'
/// slot is the endpoint's own, but one reason keeps one rule.
#[inline(always)]
pub fn settle_for(slot: u32, r: Result<Verdict, Reason>) -> u64 {
    let (action, reason, slot) = match r {
        Ok((action, reason)) => (action, reason, slot),
        Err(Reason::DropFlowChanged) => (xdp_action::XDP_DROP, Reason::DropFlowChanged, 0),
        Err(reason) => (xdp_action::XDP_DROP, reason, slot),
    };
    (action as u64) << 56 | ((slot & 0xff_ffff) as u64) << 32 | reason as u32 as u64
}

/// The other end of `settle`: the action, the reason and the counter slot.
#[inline(always)]
pub fn unpack(v: u64) -> (u32, Reason, u32) {
    // SAFETY: the low half was made from a `Reason` (a `#[repr(u32)]` enum) by `settle`.
    let reason = unsafe { core::mem::transmute::<u32, Reason>(v as u32) };
    ((v >> 56) as u32, reason, (v >> 32) as u32 & 0xff_ffff)
}

/// Redirects the frame as it is to `ifindex`.
#[inline(always)]
pub fn redirect_to(ifindex: u32, reason: Reason) -> Result<Verdict, Reason> {
    // SAFETY: plain helper call; flags 0.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if action != xdp_action::XDP_REDIRECT {
        return Err(Reason::DropRedirectFailed);
    }
    Ok((action, reason))
}
