//! What a packet's walk ends in: a `Verdict` (an XDP action and the counter that explains
//! it), packed into a u64 across the BPF function calls of the paths (`settle`/`unpack`),
//! and the redirect verdict every forwarding path ends with (`redirect_to`). The bottom
//! layer: it uses no other module of the crate.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect};
use privatelink_common::Reason;

/// What the walk decided: an XDP action and the counter that explains it.
pub type Verdict = (u32, Reason);

/// The outcome of a path that runs as its own BPF function. Such functions return a plain
/// `Verdict`: BTF cannot describe Rust's `Result` layout (the kernel refuses the union
/// member at a non-zero offset it would need), and a BPF-to-BPF call keeps each path's
/// stack frame separate, which the 512-byte limit needs.
/// The verdict travels packed in one u64 (action << 32 | reason), returned in a register.
#[inline(always)]
pub fn settle(r: Result<Verdict, Reason>) -> u64 {
    let (action, reason) = match r {
        Ok(v) => v,
        Err(reason) => (xdp_action::XDP_DROP, reason),
    };
    (action as u64) << 32 | reason as u32 as u64
}

/// The other end of `settle`.
#[inline(always)]
pub fn unpack(v: u64) -> Verdict {
    // SAFETY: the low half was made from a `Reason` (a `#[repr(u32)]` enum) by `settle`.
    let reason = unsafe { core::mem::transmute::<u32, Reason>(v as u32) };
    ((v >> 32) as u32, reason)
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
