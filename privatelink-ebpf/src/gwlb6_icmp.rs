//! The ICMPv6 messages the IPv6 GWLB path writes itself, each made from the frame at hand:
//! Packet Too Big (RFC 4443 §3.2) when an IPv6 packet would not fit the appliance link
//! once encapsulated, and Neighbour Solicitations (RFC 4861 §4.3) for an inner destination
//! whose MAC the return path does not know yet. Both come from the forwarder port's
//! link-local address (`link_local`): the sender reached us as its on-link router, and the
//! route entry that brought the packet here names no IPv6 address of the endpoint (its
//! ENI's IPv6 address, if it has one, is not in it). Uses only `parse` and `verdict`.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use privatelink_common::{IfaceInfo, Reason, csum};

use crate::{
    packet6::PROTO_ICMPV6,
    parse::{ETH_LEN, ETH_P_IPV6, EthHdr, Ipv6Hdr, frame_len, mut_at, ne16, ptr_at},
    verdict::{Verdict, settle_for},
};

/// IPv6's minimum link MTU (RFC 8200 §5): no Packet Too Big says less.
pub const IPV6_MIN_MTU: usize = 1280;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// NDP option: source link-layer address (RFC 4861 §4.6.1).
const ND_OPT_SOURCE_LL: u8 = 1;
/// The IPv6 header and the ICMPv6 header an error puts in front of what it quotes.
const ERROR_HEADERS: usize = 40 + 8;
/// What a Packet Too Big quotes: as much of the packet as fits in IPv6's minimum MTU
/// (RFC 4443 §3.2). It answers only packets longer than that, so always this much.
const QUOTE: usize = IPV6_MIN_MTU - ERROR_HEADERS;
/// A Neighbour Solicitation frame: Ethernet, IPv6, the message (type to target, 24
/// bytes) and the source link-layer address option (8).
const NS_LEN: usize = 24 + 8;
const NS_FRAME: usize = ETH_LEN + 40 + NS_LEN;

/// The port's link-local address: fe80::/64 with the modified EUI-64 interface identifier
/// of its MAC (RFC 4291 §2.5.1, Appendix A).
#[inline(always)]
pub fn link_local(mac: &[u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// The ones' complement sum (unfolded) of the `N` bytes at `off` (an even offset of the
/// 2-aligned frame), read as 16-bit words in memory order, one at a time (volatile:
/// unrolled and combined, the sum of a whole quote would not fit the BPF stack).
#[inline(always)]
fn sum_at<const N: usize>(ctx: &XdpContext, off: usize) -> Result<u32, Reason> {
    let p = ptr_at::<[u8; N]>(ctx, off, Reason::DropTruncatedIpv6)? as *const u16;
    let mut sum = 0u32;
    for i in 0..N / 2 {
        // SAFETY: `ptr_at` checked that the N bytes at `p` lie inside the frame; `off` is
        // even, so every word is aligned.
        sum += unsafe { core::ptr::read_volatile(p.add(i)) } as u32;
    }
    Ok(sum)
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of a `len`-byte message whose IPv6 header's
/// addresses sum to `addrs` and whose own bytes sum to `body`: the pseudo-header (RFC 8200
/// §8.1) adds the addresses, the upper-layer length and the next header.
#[inline(always)]
fn icmp6_checksum(addrs: u32, body: u32, len: usize) -> [u8; 2] {
    let pseudo = addrs + ne16((len as u16).to_be_bytes()) as u32 + ne16([0, PROTO_ICMPV6]) as u32;
    (!csum::fold(csum::fold(pseudo) as u32 + csum::fold(body) as u32)).to_ne_bytes()
}

/// The IPv6 packet at the frame's start would not fit the appliance link: the frame
/// becomes an ICMPv6 Packet Too Big to its sender, with the MTU `mtu` (never below 1280),
/// from the port's link-local address and MAC, quoting the packet's first 1232 bytes, sent
/// back out (`XDP_TX`). A packet no longer than 1280 cannot be asked to shrink below
/// that: such a link (MTU under 1280 + 68) drops it (`DropGwlbIpv6Mtu`). Counted for the
/// endpoint at counter `slot`.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn packet_too_big(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    mtu: usize,
    packet_len: usize,
    slot: u32,
) -> u64 {
    settle_for(slot, packet_too_big_checked(ctx, iface, mtu, packet_len))
}

#[inline(always)]
fn packet_too_big_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    mtu: usize,
    packet_len: usize,
) -> Result<Verdict, Reason> {
    let mtu = if mtu < IPV6_MIN_MTU {
        IPV6_MIN_MTU
    } else {
        mtu
    };
    if packet_len <= mtu {
        return Err(Reason::DropGwlbIpv6Mtu);
    }
    let sender_ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?.src_addr;
    let sender_mac = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    // SAFETY: plain helper calls on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (ETH_LEN + QUOTE) as i32 - frame_len(ctx) as i32) }
        != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ERROR_HEADERS as i32)) } != 0
    {
        return Err(Reason::DropRedirectFailed);
    }
    let f = mut_at::<[u8; ETH_LEN + ERROR_HEADERS]>(ctx, 0, Reason::DropTruncatedIpv6)?;
    f[0..6].copy_from_slice(&sender_mac);
    f[6..12].copy_from_slice(&iface.mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let plen = ((8 + QUOTE) as u16).to_be_bytes();
    // Version 6, no traffic class or flow label; hop limit 64.
    f[14..22].copy_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], PROTO_ICMPV6, 64]);
    f[22..38].copy_from_slice(&link_local(&iface.mac));
    f[38..54].copy_from_slice(&sender_ip);
    let m = (mtu as u32).to_be_bytes();
    f[54..62].copy_from_slice(&[ICMP6_PACKET_TOO_BIG, 0, 0, 0, m[0], m[1], m[2], m[3]]);
    let addrs = sum_at::<32>(ctx, ETH_LEN + 8)?;
    let body = sum_at::<{ 8 + QUOTE }>(ctx, ETH_LEN + 40)?;
    let c = icmp6_checksum(addrs, body, 8 + QUOTE);
    mut_at::<[u8; 2]>(ctx, ETH_LEN + 42, Reason::DropTruncatedIpv6)?.copy_from_slice(&c);
    Ok((xdp_action::XDP_TX, Reason::GwlbPacketTooBig))
}

/// The frame becomes a Neighbour Solicitation for `target` from the port whose MAC is
/// `mac` (RFC 4861 §7.2.2: to the target's solicited-node multicast address, hop limit
/// 255, our link-layer address in the option). The target answers with a unicast
/// advertisement to our link-local address.
#[inline(always)]
pub fn neighbor_solicitation(
    ctx: &XdpContext,
    target: &[u8; 16],
    mac: &[u8; 6],
) -> Result<(), Reason> {
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, NS_FRAME as i32 - frame_len(ctx) as i32) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let f = mut_at::<[u8; NS_FRAME]>(ctx, 0, Reason::DropTruncatedEthernet)?;
    let (t13, t14, t15) = (target[13], target[14], target[15]);
    // The solicited-node multicast address ff02::1:ffXX:XXXX and its MAC 33:33:ffXX:XXXX
    // (RFC 4291 §2.7.1, RFC 2464 §7).
    f[0..6].copy_from_slice(&[0x33, 0x33, 0xff, t13, t14, t15]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let plen = (NS_LEN as u16).to_be_bytes();
    f[14..22].copy_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], PROTO_ICMPV6, 255]);
    f[22..38].copy_from_slice(&link_local(mac));
    f[38..54].copy_from_slice(&[
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t13, t14, t15,
    ]);
    // Type, code, checksum (below), reserved; the target; the source link-layer option.
    f[54..62].copy_from_slice(&[ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
    f[62..78].copy_from_slice(target);
    f[78..80].copy_from_slice(&[ND_OPT_SOURCE_LL, 1]);
    f[80..86].copy_from_slice(mac);
    let addrs = sum_at::<32>(ctx, ETH_LEN + 8)?;
    let body = sum_at::<NS_LEN>(ctx, ETH_LEN + 40)?;
    let c = icmp6_checksum(addrs, body, NS_LEN);
    mut_at::<[u8; 2]>(ctx, ETH_LEN + 42, Reason::DropTruncatedEthernet)?.copy_from_slice(&c);
    Ok(())
}
