//! privatelink's XDP data path. The entry point only maps the outcome of `process` to an
//! XDP action and counts it; the work lives in one module per concern.
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod filter;
mod icmp;
mod ipv4;
mod maps;
mod nat;
mod parse;
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
        parse::ETH_P_ARP => arp::handle(ctx, &iface),
        _ => Ok((xdp_action::XDP_PASS, Reason::PassUnrelated)),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
