//! The path programs the entry point tail-calls once it has classified a packet (see
//! `PATH_PROGRAMS`). Each re-reads the IPv4 header (validated by the entry point already,
//! but the verifier checks every program on its own) and takes the rest from `PL_HANDOFF`.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use privatelink_common::{Reason, VpcAddr};

use crate::{
    conntrack, gwlb, icmp, ipv4,
    maps::{Handoff, PL_HANDOFF},
    stats, unpack,
};

#[xdp]
pub fn privatelink_forward(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, h, pkt, dst| {
        conntrack::forward(ctx, &h.iface, dst, &h.entry, pkt)
    })
}

#[xdp]
pub fn privatelink_reply(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, h, pkt, _| conntrack::reply(ctx, &h.iface, pkt))
}

#[xdp]
pub fn privatelink_icmp_endpoint(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, h, pkt, dst| {
        icmp::to_endpoint(ctx, &h.iface, dst, &h.entry, pkt)
    })
}

#[xdp]
pub fn privatelink_icmp_snat(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, h, pkt, _| icmp::to_snat(ctx, &h.iface, pkt))
}

#[xdp]
pub fn privatelink_gwlb_steer(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, h, pkt, _| {
        gwlb::steer(ctx, &h.iface, pkt, &h.entry)
    })
}

#[xdp]
pub fn privatelink_gwlb_return(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, h, pkt, _| {
        gwlb::from_appliance(ctx, &h.iface, pkt)
    })
}

/// Runs `path` on what the entry point handed over and counts its verdict.
#[inline(always)]
fn run(
    ctx: &XdpContext,
    path: impl FnOnce(&XdpContext, &Handoff, &ipv4::Packet, VpcAddr) -> u64,
) -> u32 {
    let (action, reason) = match PL_HANDOFF.get(0) {
        Some(h) => {
            let h = *h;
            match ipv4::packet(ctx, ctx.ingress_ifindex() as u32, h.epoch) {
                Ok((pkt, ip)) => {
                    let dst = VpcAddr {
                        vpc_id: h.iface.vpc_id,
                        addr: ip.dst_addr,
                    };
                    unpack(path(ctx, &h, &pkt, dst))
                }
                Err(reason) => (xdp_action::XDP_DROP, reason),
            }
        }
        None => (xdp_action::XDP_DROP, Reason::DropNoPathProgram),
    };
    stats::count(reason);
    action
}
