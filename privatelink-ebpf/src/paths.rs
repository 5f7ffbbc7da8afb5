//! The path programs the entry point tail-calls once it has classified a packet, one per
//! row of the path table (`privatelink_common::Path`, `PATH_PROGRAMS`). Each re-reads the
//! IPv4 header (validated by the entry point already, but the verifier checks every
//! program on its own), takes the rest from `PL_HANDOFF`, runs its path (a BPF function of
//! its own) and counts the verdict. The top of the path layer: `classify` picks the slot,
//! these are what run in it.

use aya_ebpf::{macros::xdp, programs::XdpContext};
use privatelink_common::{
    PATH_FORWARD, PATH_FORWARD6, PATH_GWLB_RETURN, PATH_GWLB_RETURN6, PATH_GWLB_STEER,
    PATH_GWLB_STEER6, PATH_ICMP_ENDPOINT, PATH_ICMP_SNAT, PATH_IPV6, PATH_PROGRAMS, PATH_REPLY,
    PATH_REPLY6, Reason, VpcAddr, is_path_program,
};

use crate::{
    forward, gwlb, icmp,
    maps::{Handoff, PL_HANDOFF},
    packet::{Packet, packet},
    reply, stats,
    verdict::{settle, settle_for},
};

/// Defines the path programs: `INDEX => fn_name = |ctx, handoff, packet, dst| path`, one
/// per row of the path table. Each function's name is checked at compile time against the
/// table's name for its index (aya names the program after the function), and their
/// number against the table's length: a table without its program, or a program in the
/// wrong slot, does not build.
macro_rules! path_programs {
    ($($index:ident => $program:ident = |$ctx:ident, $h:pat_param, $pkt:ident, $dst:pat_param| $path:expr;)*) => {
        $(
            const _: () = assert!(
                is_path_program($index, stringify!($program)),
                concat!("`", stringify!($program), "` is not the path table's program at ", stringify!($index)),
            );

            #[xdp]
            pub fn $program(ctx: XdpContext) -> u32 {
                run(&ctx, |$ctx, $h, $pkt, $dst| $path)
            }
        )*

        const _: () = assert!(
            [$(stringify!($program)),*].len() + 5 == PATH_PROGRAMS.len(),
            "every row of the path table needs its program here",
        );
    };
}

path_programs! {
    PATH_FORWARD => privatelink_forward = |ctx, h, pkt, dst| {
        forward::forward(ctx, &h.iface, dst, &h.entry, pkt)
    };
    PATH_REPLY => privatelink_reply = |ctx, h, pkt, _| reply::reply(ctx, &h.iface, pkt);
    PATH_ICMP_ENDPOINT => privatelink_icmp_endpoint = |ctx, h, pkt, dst| {
        icmp::to_endpoint(ctx, &h.iface, dst, &h.entry, pkt)
    };
    PATH_ICMP_SNAT => privatelink_icmp_snat = |ctx, h, pkt, _| icmp::to_snat(ctx, &h.iface, pkt);
    PATH_GWLB_STEER => privatelink_gwlb_steer = |ctx, h, pkt, _| {
        gwlb::steer(ctx, &h.iface, pkt, &h.entry)
    };
    PATH_GWLB_RETURN => privatelink_gwlb_return = |ctx, h, pkt, _| {
        gwlb::from_appliance(ctx, &h.iface, pkt)
    };
}

/// The IPv6 path programs. Not yet built: every IPv6 frame that reaches them is dropped
/// and counted as unsupported.
macro_rules! ipv6_programs {
    ($($index:ident => $program:ident;)*) => {
        $(
            const _: () = assert!(
                is_path_program($index, stringify!($program)),
                concat!("`", stringify!($program), "` is not the path table's program at ", stringify!($index)),
            );

            #[xdp]
            pub fn $program(ctx: XdpContext) -> u32 {
                stats::count(&ctx, settle(Err(Reason::DropUnsupportedProtocol)))
            }
        )*
    };
}

ipv6_programs! {
    PATH_IPV6 => privatelink_ipv6;
    PATH_FORWARD6 => privatelink_forward6;
    PATH_REPLY6 => privatelink_reply6;
    PATH_GWLB_STEER6 => privatelink_gwlb_steer6;
    PATH_GWLB_RETURN6 => privatelink_gwlb_return6;
}

/// Runs `path` on what the entry point handed over and counts its verdict.
#[inline(always)]
fn run(ctx: &XdpContext, path: impl FnOnce(&XdpContext, &Handoff, &Packet, VpcAddr) -> u64) -> u32 {
    let v = match PL_HANDOFF.get(0) {
        Some(h) => {
            let h = *h;
            match packet(ctx, ctx.ingress_ifindex() as u32, h.epoch) {
                Ok((pkt, ip)) => {
                    let dst = VpcAddr {
                        vpc_id: h.iface.vpc_id,
                        addr: ip.dst_addr,
                    };
                    path(ctx, &h, &pkt, dst)
                }
                Err(reason) => settle_for(h.entry.counter_slot, Err(reason)),
            }
        }
        None => settle(Err(Reason::DropNoPathProgram)),
    };
    stats::count(ctx, v)
}
