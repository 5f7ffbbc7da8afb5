//! privatelink's XDP data path. The entry point only maps the outcome of `process` to an
//! XDP action and counts it; the work lives in one module per concern.
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod filter;
mod gwlb;
mod host;
mod icmp;
mod ipv4;
mod maps;
mod nat;
mod parse;
mod paths;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use privatelink_common::Reason;

/// What `process` decided: an XDP action and the counter that explains it.
pub type Verdict = (u32, Reason);

#[xdp]
pub fn privatelink(ctx: XdpContext) -> u32 {
    let (action, reason) = match process(&ctx) {
        Ok(v) => v,
        Err(reason) => (xdp_action::XDP_DROP, reason),
    };
    stats::count(reason);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let eth = parse::mut_at::<parse::EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a lookup in a map that only the daemon writes; the value is copied out.
    let Some(iface) = (unsafe { maps::PL_IFACES.get(ifindex) }).copied() else {
        return Ok((xdp_action::XDP_PASS, Reason::PassNotAttached));
    };
    match u16::from_be(eth.ether_type) {
        parse::ETH_P_IP => ipv4::handle(ctx, ifindex, &iface),
        parse::ETH_P_ARP => Ok(unpack(arp::handle(ctx, &iface))),
        _ => Ok(host::other(&iface)),
    }
}

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
