//! Neighbour discovery (RFC 4861) on a VPC-facing interface, IPv6's ARP: a Neighbour
//! Solicitation for an ENI's or SNAT address, or a GWLB endpoint's ENI (`PL_GW_ADDRS6`:
//! the consumer's IPv6 route target), is answered here with an advertisement
//! (solicited, override, our MAC as target link-layer address; a duplicate address
//! detection probe gets its answer at all-nodes, as the RFC says, so that nobody else
//! takes the address); a registered next hop's MAC (`PL_NEIGHBORS6`: the load balancers'
//! IPv6 addresses; `PL_GWLB_NEIGH6`: the GWLB return path's probes) is learned from its
//! advertisements and solicitations. Only messages RFC 4861 7.1 accepts count: hop limit
//! 255, code 0, a valid checksum, no extension headers (then the message lies at a fixed
//! offset), at most `MAX_ND_LEN` bytes. What is not ours goes to `host::other`.
//! Inlined into `privatelink_ipv6` (which tail-calls: no BPF-to-BPF calls). Uses
//! `parse`, `checksum`, `maps`, `host`, `gwlb6` and `verdict`.

use aya_ebpf::{
    bindings::{BPF_EXIST, xdp_action},
    helpers::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use privatelink_common::{IFACE_FLAG_HOST_TRAFFIC, IfaceInfo, Neighbor, Reason, VpcAddr6, csum};

use crate::{
    gwlb6, host,
    maps::{PL_ENDPOINTS6, PL_GW_ADDRS6, PL_GWLB_NEIGH6, PL_NEIGHBORS6, PL_SNAT6_ADDRS},
    packet6::{IPV6_LEN, PROTO_ICMPV6, copy_addr},
    parse::{ETH_LEN, EthHdr, Ipv6Hdr, frame_len, mut_at, ne16, ptr_at, put},
    verdict::Verdict,
};

const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Options: source and target link-layer address (one 8-byte unit with a MAC).
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;
/// Where the message starts: no extension headers.
const ND_OFF: usize = ETH_LEN + IPV6_LEN;
/// The message's fixed part (type, code, checksum, flags or reserved, target).
const ND_FIXED: usize = 24;
/// The longest message taken: the fixed part and five 8-byte options.
const MAX_ND_LEN: usize = ND_FIXED + 40;
/// The advertisement sent: the fixed part and the target link-layer address option.
const NA_LEN: usize = ND_FIXED + 8;
/// Advertisement flags (first byte): solicited, override.
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
/// All-nodes (ff02::1) and its MAC (RFC 2464).
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Whether the frame is a solicitation or an advertisement for this module: ICMPv6
/// right after the fixed header, of either type.
#[inline(always)]
pub fn is_nd(ctx: &XdpContext, ip: &Ipv6Hdr) -> bool {
    ip.next_hdr == PROTO_ICMPV6
        && matches!(
            mut_at::<u8>(ctx, ND_OFF, Reason::DropBadNd),
            Ok(&mut (NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT))
        )
}

/// A solicitation or advertisement (`is_nd`) in a packet that ends at `end`.
#[inline(always)]
pub fn handle(ctx: &XdpContext, iface: &IfaceInfo, end: usize) -> Result<Verdict, Reason> {
    let len = end - ND_OFF;
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    if ip.hop_limit != 255 || len < ND_FIXED || len > MAX_ND_LEN || len % 8 != 0 {
        return Err(Reason::DropBadNd);
    }
    let sum = sum_at::<16>(ctx, ETH_LEN + 8, 32)?
        + ne16((len as u16).to_be_bytes()) as u32
        + ne16([0, PROTO_ICMPV6]) as u32
        + sum_at::<{ MAX_ND_LEN / 2 }>(ctx, ND_OFF, len)?;
    let msg = mut_at::<[u8; ND_FIXED]>(ctx, ND_OFF, Reason::DropBadNd)?;
    if csum::fold(sum) != 0xffff || msg[1] != 0 || msg[8] == 0xff {
        return Err(Reason::DropBadNd);
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&msg[8..24]);
    let solicitation = msg[0] == NEIGHBOR_SOLICITATION;
    let want = if solicitation {
        OPT_SOURCE_LLADDR
    } else {
        OPT_TARGET_LLADDR
    };
    let lladdr = link_layer_option(ctx, end, want)?;
    let src = ip.src_addr;
    let eth_src = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    if !solicitation {
        return Ok(advertised(iface, target, lladdr.unwrap_or(eth_src)));
    }
    let dad = src == [0; 16];
    match lladdr {
        // RFC 4861 7.1.1: a probe from the unspecified address has no such option.
        Some(_) if dad => return Err(Reason::DropBadNd),
        Some(mac) => learn(iface.vpc_id, src, mac),
        None => {}
    }
    let key = VpcAddr6 {
        vpc_id: iface.vpc_id,
        addr: target,
    };
    // SAFETY: read-only lookups, values not kept.
    let ours = unsafe {
        PL_ENDPOINTS6.get(key).is_some()
            || PL_SNAT6_ADDRS.get(key).is_some()
            || PL_GW_ADDRS6.get(key).is_some()
    };
    if !ours {
        return Ok(host::other(iface));
    }
    advertise(ctx, iface, dad, eth_src)
}

/// The MAC of the first link-layer address option of type `want`, if any. An option of
/// length 0 makes the message invalid (RFC 4861 7.1).
#[inline(always)]
fn link_layer_option(ctx: &XdpContext, end: usize, want: u8) -> Result<Option<[u8; 6]>, Reason> {
    let mut off = ND_OFF + ND_FIXED;
    let mut found = None;
    for _ in 0..(MAX_ND_LEN - ND_FIXED) / 8 {
        if off + 8 > end {
            break;
        }
        let o = mut_at::<[u8; 8]>(ctx, off, Reason::DropBadNd)?;
        if o[1] == 0 {
            return Err(Reason::DropBadNd);
        }
        if o[0] == want && o[1] == 1 && found.is_none() {
            found = Some([o[2], o[3], o[4], o[5], o[6], o[7]]);
        }
        off += o[1] as usize * 8;
    }
    Ok(found)
}

/// An advertisement for `target` with link-layer address `mac`: learned if the address
/// is a registered next hop or a GWLB probe's (then consumed: the host's stack did not
/// ask), else the host's to judge.
#[inline(always)]
fn advertised(iface: &IfaceInfo, target: [u8; 16], mac: [u8; 6]) -> Verdict {
    let key = VpcAddr6 {
        vpc_id: iface.vpc_id,
        addr: target,
    };
    // SAFETY: read-only lookups, values not kept.
    let known = unsafe { PL_NEIGHBORS6.get(key).is_some() || PL_GWLB_NEIGH6.get(key).is_some() };
    if !known || mac[0] & 1 != 0 {
        return host::other(iface);
    }
    learn(iface.vpc_id, target, mac);
    gwlb6::learn(iface.vpc_id, target, mac);
    if iface.flags & IFACE_FLAG_HOST_TRAFFIC != 0 {
        // The host shares the interface: its own resolution of the neighbour needs the
        // message too (as `arp` passes replies there).
        return (xdp_action::XDP_PASS, Reason::PassUnrelated);
    }
    (xdp_action::XDP_DROP, Reason::NdLearned)
}

/// Only next hops the daemon registered are learned (`BPF_EXIST`): a flood of
/// solicitations from random sources cannot fill the table (as `arp::learn`).
#[inline(always)]
fn learn(vpc_id: u32, addr: [u8; 16], mac: [u8; 6]) {
    if mac[0] & 1 != 0 {
        return; // a multicast link-layer address teaches nothing
    }
    let key = VpcAddr6 { vpc_id, addr };
    // SAFETY: value copied out before the update.
    match unsafe { PL_NEIGHBORS6.get(key) } {
        Some(n) if n.mac != mac => {
            let _ = PL_NEIGHBORS6.insert(key, Neighbor { mac, _pad: [0; 2] }, BPF_EXIST as u64);
        }
        _ => {}
    }
}

/// The frame (a solicitation for an address of ours) becomes our advertisement for its
/// target: back to the sender (at `sender_mac`), solicited and override; to all-nodes,
/// override only, for a duplicate address detection probe (`dad`). Sent back out
/// (`XDP_TX`). The addresses move inside the frame (`copy_addr`): never through the stack.
#[inline(always)]
fn advertise(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    dad: bool,
    sender_mac: [u8; 6],
) -> Result<Verdict, Reason> {
    const FRAME: usize = ND_OFF + NA_LEN;
    const SRC: usize = ETH_LEN + 8;
    const DST: usize = ETH_LEN + 24;
    const TARGET: usize = ND_OFF + 8;
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, FRAME as i32 - frame_len(ctx) as i32) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let f = mut_at::<[u8; FRAME]>(ctx, 0, Reason::DropTruncatedEthernet)?;
    let to = mut_at::<[u8; 16]>(ctx, DST, Reason::DropTruncatedEthernet)?;
    let from = mut_at::<[u8; 16]>(ctx, SRC, Reason::DropTruncatedEthernet)?;
    let target = mut_at::<[u8; 16]>(ctx, TARGET, Reason::DropTruncatedEthernet)?;
    let flags = if dad {
        put(f, 0, ALL_NODES_MAC);
        put(to, 0, ALL_NODES);
        NA_OVERRIDE
    } else {
        put(f, 0, sender_mac);
        copy_addr(to, from);
        NA_SOLICITED | NA_OVERRIDE
    };
    copy_addr(from, target);
    put(f, 6, iface.mac);
    // Version 6, no traffic class or flow label; payload length, ICMPv6, hop limit 255.
    put(f, 14, [0x60, 0, 0, 0, 0, NA_LEN as u8, PROTO_ICMPV6, 255]);
    // Type, code, checksum (below), flags, reserved; the target stays where it was.
    put(f, ND_OFF, [NEIGHBOR_ADVERTISEMENT, 0, 0, 0, flags, 0, 0, 0]);
    put(f, ND_OFF + ND_FIXED, [OPT_TARGET_LLADDR, 1]);
    put(f, ND_OFF + ND_FIXED + 2, iface.mac);
    let sum = sum_at::<16>(ctx, ETH_LEN + 8, 32)?
        + ne16([0, NA_LEN as u8]) as u32
        + ne16([0, PROTO_ICMPV6]) as u32
        + sum_at::<{ NA_LEN / 2 }>(ctx, ND_OFF, NA_LEN)?;
    let c = mut_at::<[u8; 2]>(ctx, ND_OFF + 2, Reason::DropTruncatedEthernet)?;
    *c = (!csum::fold(sum)).to_ne_bytes();
    Ok((xdp_action::XDP_TX, Reason::NdAdvert))
}

/// The ones' complement sum (unfolded) of `len` bytes at `off` (even, as every offset
/// here), read as 16-bit words one at a time; `len` is even and at most `2 * WORDS`.
#[inline(always)]
fn sum_at<const WORDS: usize>(ctx: &XdpContext, off: usize, len: usize) -> Result<u32, Reason> {
    let mut sum: u32 = 0;
    for i in 0..WORDS {
        if i * 2 >= len {
            break;
        }
        let w = ptr_at::<u16>(ctx, off + i * 2, Reason::DropBadNd)?;
        // SAFETY: bounds checked by `ptr_at`; an even offset of the 2-aligned frame.
        sum += unsafe { core::ptr::read_volatile(w) } as u32;
    }
    Ok(sum)
}
