//! privatelink's XDP data path. This root is the entry point only: it maps the outcome of
//! `classify::frame` to an XDP action and counts it. The walk of a packet, module by
//! module (each uses only the modules listed before it):
//!
//! - `parse`, `verdict`: frame access and header types; what a walk ends in.
//! - `checksum`, `packet`: IPv4 header sums; the validated IPv4 packet.
//! - `maps`, `stats`, `flowlog`: the maps shared with the daemon; the verdict counters
//!   (global and per endpoint); flow events for flow logs.
//! - `endpoint`, `filter`, `host`: whether an endpoint forwards; ACLs, security groups
//!   and listeners; what the host's own stack may see.
//! - `nat`, `conntrack`: the rewrite of a packet by its flow entry; the flow table (keys,
//!   creation, SNAT claims, liveness, TCP tracking, new-flow tokens).
//! - `geneve`: GENEVE encapsulation (the outer headers from a compile-time template) and
//!   decapsulation.
//! - `established`: the fast path for flows checked under the current epoch (NAT flows
//!   rewritten, GWLB flows encapsulated).
//! - `arp`, `icmp`: ARP answers, learning and probes; ICMP echo and error translation
//!   (and the frag-needed error GWLB sends).
//! - `forward`, `reply`, `gwlb`: the paths of NATed flows (consumer → service and back)
//!   and of GWLB flows (to the appliance and back).
//! - `gwlb6_icmp`, `gwlb6`: IPv6 GWLB flows (IPv6 inside GENEVE) and the ICMPv6 messages
//!   their path writes (Packet Too Big, neighbour solicitations).
//! - `packet6`, `filter6`, `conntrack6`, `nat6`: IPv6's validated packet (the extension
//!   header policy), filters and endpoint checks, flow table (on `conntrack`'s generic
//!   logic) and rewrite.
//! - `nd`, `icmp6`: neighbour discovery; ICMPv6 echo and error translation.
//! - `flows6`, `forward6`, `reply6`: the IPv6 NAT's flows and paths.
//! - `established6`: `established` for IPv6 (run by the entry program, `classify`).
//! - `ipv6`: the IPv6 program's work: ND, echo, and which IPv6 path program.
//! - `paths`: the path programs, tail-called through `PL_PATHS` by the path table.
//! - `classify`: the entry program's work: ARP, the fast path, and which path program.
#![no_std]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]
#![no_main]

mod arp;
mod checksum;
mod classify;
mod conntrack;
mod conntrack6;
mod endpoint;
mod established;
mod established6;
mod filter;
mod filter6;
mod flowlog;
mod flows6;
mod flowtable;
mod forward;
mod forward6;
mod geneve;
mod gwlb;
mod gwlb6;
mod gwlb6_icmp;
mod host;
mod icmp;
mod icmp6;
mod ipv6;
mod maps;
mod nat;
mod nat6;
mod nd;
mod packet;
mod packet6;
mod parse;
mod paths;
mod reply;
mod reply6;
mod stats;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};

// `inline(always)` reaches the function the macro wraps: without it LLVM made the entry
// program's grown body a BPF function of its own, called (and returned from, behind this
// machine's return thunk) on every packet.
#[xdp]
#[inline(always)]
pub fn privatelink(ctx: XdpContext) -> u32 {
    stats::count(&ctx, classify::frame(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
