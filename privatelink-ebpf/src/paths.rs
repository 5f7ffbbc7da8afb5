//! The path programs the entry point tail-calls once it has classified a packet, one per
//! row of the path table (`privatelink_common::Path`, `PATH_PROGRAMS`). Each re-reads the
//! IPv4 header (validated by the entry point already, but the verifier checks every
//! program on its own), takes the rest from `PL_HANDOFF`, runs its path (a BPF function of
//! its own, but for `privatelink_gwlb_return6`, whose path is inlined) and counts the
//! verdict; the IPv6 ones re-read the IPv6 header and take the rest from `PL_HANDOFF6`. The
//! top of the path layer: `classify` (for IPv6, `privatelink_ipv6`'s `ipv6`; for GENEVE
//! carrying IPv6, `gwlb`) picks the slot, these are what run in it.

use aya_ebpf::{macros::xdp, programs::XdpContext};
use privatelink_common::{
    PATH_FORWARD, PATH_FORWARD6, PATH_GWLB_RETURN, PATH_GWLB_RETURN6, PATH_GWLB_STEER,
    PATH_GWLB_STEER6, PATH_ICMP_ENDPOINT, PATH_ICMP_SNAT, PATH_IPV6, PATH_PROGRAMS, PATH_REPLY,
    PATH_REPLY6, Reason, VpcAddr, VpcAddr6, is_path_program,
};

use crate::{
    forward, forward6, gwlb, gwlb6, icmp, icmp6, ipv6,
    maps::{Handoff, Handoff6, PL_HANDOFF, PL_HANDOFF6},
    packet::{Packet, packet},
    packet6::{PROTO_ICMPV6, packet6},
    reply, reply6, stats,
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

const _: () = assert!(
    is_path_program(PATH_GWLB_RETURN6, "privatelink_gwlb_return6"),
    "`privatelink_gwlb_return6` is not the path table's program at PATH_GWLB_RETURN6",
);

/// GENEVE carrying IPv6 (outer IPv4 still), tail-called by the IPv4 return path or the
/// classifier with only an interface and an epoch in the handoff (`hand_off_no_entry`):
/// `run`'s work but for the endpoint entry, which is not this path's (stale), so a bad
/// packet is counted without its counter slot.
#[xdp]
pub fn privatelink_gwlb_return6(ctx: XdpContext) -> u32 {
    let v = match PL_HANDOFF.get(0) {
        Some(h) => match packet(&ctx, ctx.ingress_ifindex() as u32, h.epoch) {
            Ok((pkt, _)) => gwlb6::from_appliance(&ctx, &h.iface, &pkt),
            Err(reason) => settle(Err(reason)),
        },
        None => settle(Err(Reason::DropNoPathProgram)),
    };
    stats::count(&ctx, v)
}

const _: () = assert!(
    is_path_program(PATH_GWLB_STEER6, "privatelink_gwlb_steer6"),
    "`privatelink_gwlb_steer6` is not the path table's program at PATH_GWLB_STEER6",
);

/// IPv6 the entry program's IPv6 classification found routed to a GWLB endpoint (the
/// route in the handoff): to an appliance, in GENEVE. The frame is IPv6, so `run` (which
/// validates IPv4) does not apply; `gwlb6::steer` validates the IPv6 header itself.
#[xdp]
pub fn privatelink_gwlb_steer6(ctx: XdpContext) -> u32 {
    // (The handoff read in place: this program's frame and `gwlb6::steer`'s halves share
    // the 512 bytes of stack.)
    let v = match PL_HANDOFF.get(0) {
        Some(h) => gwlb6::steer(&ctx, &h.iface, &h.entry),
        None => settle(Err(Reason::DropNoPathProgram)),
    };
    stats::count(&ctx, v)
}

/// Defines the IPv6 path programs as `path_programs!` does the IPv4 ones (the same
/// compile-time check of each name against the table), on what the IPv6 classification
/// handed over (`run6`).
macro_rules! ipv6_path_programs {
    ($($index:ident => $program:ident = |$ctx:ident, $h:pat_param, $pkt:ident, $dst:pat_param| $path:expr;)*) => {
        $(
            const _: () = assert!(
                is_path_program($index, stringify!($program)),
                concat!("`", stringify!($program), "` is not the path table's program at ", stringify!($index)),
            );

            #[xdp]
            pub fn $program(ctx: XdpContext) -> u32 {
                run6(&ctx, |$ctx, $h, $pkt, $dst| $path)
            }
        )*
    };
}

const _: () = assert!(
    is_path_program(PATH_IPV6, "privatelink_ipv6"),
    "`privatelink_ipv6` is not the path table's program at PATH_IPV6",
);

/// Every IPv6 frame the established path did not take, tail-called by the entry program
/// (`ipv6`). (LLVM inlines this body, and `privatelink_gwlb_return6`'s, into the function
/// the macro wraps; should either grow past its inlining, an `#[inline(always)]` as on the
/// entry function keeps a BPF call off every packet. Forced here, it moved the stack
/// slots of this one: 456 → 472 bytes.)
#[xdp]
pub fn privatelink_ipv6(ctx: XdpContext) -> u32 {
    stats::count(&ctx, ipv6::frame(&ctx))
}

ipv6_path_programs! {
    PATH_FORWARD6 => privatelink_forward6 = |ctx, h, pkt, _| {
        forward6::forward6(ctx, &h.iface, &h.entry, pkt)
    };
    // TCP/UDP replies, and ICMPv6 errors about NATed flows.
    PATH_REPLY6 => privatelink_reply6 = |ctx, h, pkt, _| {
        if pkt.proto == PROTO_ICMPV6 {
            icmp6::translate_error(ctx, &h.iface, pkt)
        } else {
            reply6::reply6(ctx, &h.iface, pkt)
        }
    };
}

/// `run` for the IPv6 paths: the packet validated again (`packet6`), the rest from
/// `PL_HANDOFF6`.
#[inline(always)]
fn run6(
    ctx: &XdpContext,
    path: impl FnOnce(&XdpContext, &Handoff6, &Packet, VpcAddr6) -> u64,
) -> u32 {
    let v = match PL_HANDOFF6.get(0) {
        // A reference, not a copy: the IPv6 paths need the stack.
        Some(h) => match packet6(ctx, ctx.ingress_ifindex() as u32, h.epoch) {
            Ok((pkt, ip)) => {
                let dst = VpcAddr6 {
                    vpc_id: h.iface.vpc_id,
                    addr: ip.dst_addr,
                };
                path(ctx, h, &pkt, dst)
            }
            Err(reason) => settle_for(h.entry.eni.counter_slot, Err(reason)),
        },
        None => settle(Err(Reason::DropNoPathProgram)),
    };
    stats::count(ctx, v)
}

/// Runs `path` on what the entry point handed over and counts its verdict. The handoff
/// is read in place, not copied: no path program writes it (the IPv4 return path hands
/// the IPv6 one the interface and epoch the handoff already holds, `gwlb::from_appliance`).
#[inline(always)]
fn run(ctx: &XdpContext, path: impl FnOnce(&XdpContext, &Handoff, &Packet, VpcAddr) -> u64) -> u32 {
    let v = match PL_HANDOFF.get(0) {
        Some(h) => match packet(ctx, ctx.ingress_ifindex() as u32, h.epoch) {
            Ok((pkt, ip)) => {
                let dst = VpcAddr {
                    vpc_id: h.iface.vpc_id,
                    addr: ip.dst_addr,
                };
                path(ctx, h, &pkt, dst)
            }
            Err(reason) => settle_for(h.entry.counter_slot, Err(reason)),
        },
        None => settle(Err(Reason::DropNoPathProgram)),
    };
    stats::count(ctx, v)
}
