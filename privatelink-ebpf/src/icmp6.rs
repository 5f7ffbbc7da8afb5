//! ICMPv6 (RFC 4443): echo to an ENI's IPv6 address is answered here; errors quoting a
//! NATed packet (Destination Unreachable, Packet Too Big, Time Exceeded) are translated
//! both ways, the quoted packet and every checksum included, so that path MTU discovery
//! (which IPv6 depends on: routers do not fragment) works through the endpoint. Echo runs
//! in `privatelink_ipv6`, the errors in `privatelink_reply6`. Above `conntrack6`,
//! `filter6` and `nat6`.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use privatelink_common::{
    DIR_ORIGINAL, EndpointEni, FLOW_GWLB, FlowKey6, IfaceInfo, PROTO_TCP, PROTO_UDP, Reason,
    VpcAddr6, csum,
};

use crate::{
    conntrack::now,
    conntrack6::alive6,
    filter6,
    flowtable::FLOWS6,
    maps::config,
    nat6,
    packet::Packet,
    packet6::{
        IPV6_LEN, MAX_EXT_HEADERS, MAX_EXT_LEN, PROTO_ICMPV6, answerable_source, copy_addr, words,
    },
    parse::{ETH_LEN, EthHdr, Ipv6Hdr, Ports, be16, mut_at, ne16, ptr_at, set_macs},
    verdict::{Verdict, redirect_to, settle},
};

pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;

/// Whether an ICMPv6 type is an error the data path translates.
#[inline(always)]
pub fn is_translated_error(ty: u8) -> bool {
    ty == ICMP6_DEST_UNREACH || ty == ICMP6_PACKET_TOO_BIG || ty == ICMP6_TIME_EXCEEDED
}

/// The ICMPv6 header's type and code, if the packet holds the 8 bytes of it.
#[inline(always)]
pub fn type_code(ctx: &XdpContext, pkt: &Packet) -> Result<(u8, u8), Reason> {
    if pkt.l4 + 8 > pkt.end {
        return Err(Reason::DropTruncatedL4);
    }
    let h = mut_at::<[u8; 2]>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    Ok((h[0], h[1]))
}

/// An echo request to the ENI at `eni_key`: filtered like a new flow (echo is not tracked;
/// an IPv6 rule names ICMPv6 by its own number, 58), answered from the ENI, back out,
/// without the request's extension headers (`strip_ext_headers`). A request from a
/// multicast, unspecified or loopback source is not answered (`DropBadIpv6Source`).
#[inline(always)]
pub fn echo_reply6(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr6,
    eni: &EndpointEni,
    pkt: &Packet,
) -> Result<Verdict, Reason> {
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    if !answerable_source(&ip.src_addr) {
        return Err(Reason::DropBadIpv6Source);
    }
    let src = ip.src_addr;
    filter6::acl6_in(eni_key, eni, src, PROTO_ICMPV6, 0)?;
    filter6::security_groups6(eni_key, eni, src, PROTO_ICMPV6, 0)?;
    filter6::acl6_out(eni_key, eni, src, PROTO_ICMPV6, 0)?;
    let icmp = mut_at::<[u8; 4]>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    // The type changes; the pseudo-header's addresses swap places, which leaves its sum
    // as it was.
    let old = ne16([icmp[0], icmp[1]]);
    icmp[0] = ICMP6_ECHO_REPLY;
    let c = csum::replace16(ne16([icmp[2], icmp[3]]), old, ne16([icmp[0], icmp[1]]));
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    for i in 0..16 {
        // SAFETY: bytes of the header's addresses, indexes in range; volatile so that the
        // bytes are not gathered in registers first (see `packet6::copy_addr`).
        unsafe {
            let s = core::ptr::read_volatile(&ip.src_addr[i]);
            core::ptr::write_volatile(&mut ip.src_addr[i], ip.dst_addr[i]);
            core::ptr::write_volatile(&mut ip.dst_addr[i], s);
        }
    }
    ip.hop_limit = 64;
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    // Back to the sender, from our own MAC.
    let sender = eth.src_addr;
    set_macs(eth, sender, iface.mac);
    strip_ext_headers(ctx, pkt)?;
    Ok((xdp_action::XDP_TX, Reason::Icmp6EchoReply))
}

/// Drops the extension headers between the fixed IPv6 header and the L4 header at
/// `pkt.l4` (an echo reply is the request's ICMPv6 message, not its options or routing
/// header, which were the request's path's: RFC 4443 4.2): the Ethernet and IPv6
/// headers move up against the L4 header, the frame's head moves with them. The move
/// goes from the last word to the first, so the overlapping ranges copy right. The
/// ICMPv6 checksum covers neither the headers nor their length.
#[inline(always)]
fn strip_ext_headers(ctx: &XdpContext, pkt: &Packet) -> Result<(), Reason> {
    const HEADERS: usize = ETH_LEN + IPV6_LEN;
    // Every length the walk can give (8-byte units, at most `MAX_EXT_HEADERS` of
    // `MAX_EXT_LEN`) passes the mask unchanged; masked, the verifier sees the bound, and
    // LLVM cannot fold the subtraction into a negative packet offset, which the verifier
    // refuses.
    const EXT_MASK: usize = (2 * MAX_EXT_HEADERS * MAX_EXT_LEN - 1) & !7;
    let ext = (pkt.l4 - HEADERS) & EXT_MASK;
    if ext == 0 {
        return Ok(());
    }
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    ip.next_hdr = PROTO_ICMPV6;
    ip.payload_len = ((pkt.end - pkt.l4) as u16).to_be_bytes();
    // One bounds check each, then constant offsets from the two checked pointers.
    let from = ptr_at::<[u16; HEADERS / 2]>(ctx, 0, Reason::DropTruncatedIpv6)? as *const u16;
    let to = ptr_at::<[u16; HEADERS / 2]>(ctx, ext, Reason::DropTruncatedIpv6)? as *mut u16;
    for i in (0..HEADERS / 2).rev() {
        // SAFETY: word `i` of two ranges bounds checked by `ptr_at`; even offsets of the
        // 2-aligned frame (`ext` is a sum of 8-byte units).
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, ext as i32) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    Ok(())
}

/// An ICMPv6 error to an ENI's or a SNAT address, about a packet of a NATed flow.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn translate_error(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    settle(translate_checked(ctx, iface, pkt))
}

/// The error quotes packet P that we sent out on this side: the flow entry for "P
/// reversed" arriving here tells how to translate it (the outer addresses like a packet
/// of that direction, the quoted packet back into what the other side sent). Only a
/// quote whose IPv6 header is followed by TCP or UDP directly is translated.
#[inline(always)]
fn translate_checked(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> Result<Verdict, Reason> {
    let (ty, _) = type_code(ctx, pkt)?;
    if !is_translated_error(ty) {
        return Err(Reason::DropIcmp6Unsupported);
    }
    let inner_off = pkt.l4 + 8;
    let inner_l4 = inner_off + IPV6_LEN;
    if inner_l4 + 8 > pkt.end {
        return Err(Reason::DropTruncatedL4);
    }
    let inner = mut_at::<Ipv6Hdr>(ctx, inner_off, Reason::DropTruncatedL4)?;
    let proto = inner.next_hdr;
    if inner.vcf[0] >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(Reason::DropIcmpNoFlow);
    }
    let ports = mut_at::<Ports>(ctx, inner_l4, Reason::DropTruncatedL4)?;
    let (isport, idport) = (be16(ports.sport), be16(ports.dport));
    let key = FlowKey6::new(
        iface.vpc_id,
        inner.dst_addr,
        inner.src_addr,
        idport,
        isport,
        proto,
    );
    let seen = FLOWS6.get_seen(key).ok_or(Reason::DropIcmpNoFlow)?;
    // SAFETY: a reference into the map, read within this run.
    let e = unsafe { &*seen.entry };
    // A GWLB flow's entry names an appliance, not a NAT rewrite: never translated here.
    if e.flags & FLOW_GWLB != 0 || !alive6(e, &key, now(), &config()) {
        return Err(Reason::DropIcmpNoFlow);
    }
    // The endpoint the flow belongs to (its ENI's, or a gateway flow's route's) must
    // still forward.
    let owner = if e.direction == DIR_ORIGINAL {
        filter6::check_flow_endpoint6_at(e.flags, key.vpc_id, key.dst)?
    } else {
        filter6::check_flow_endpoint6_at(e.flags, e.out_vpc_id, e.new_src)?
    };
    if owner.eni.endpoint_id != e.endpoint_id {
        return Err(Reason::DropIcmpNoFlow);
    }
    let outer = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    if outer.hop_limit <= 1 {
        return Err(Reason::DropHopLimitExceeded);
    }

    // The quoted packet becomes what the other side sent: the reverse of the entry's
    // rewrite. Every delta is taken before anything is written.
    let quoted = nat6::l4_delta6(
        (&inner.src_addr, &inner.dst_addr),
        (&e.new_dst, &e.new_src),
        (isport, idport),
        (e.new_dport, e.new_sport),
    );
    // What the ICMPv6 checksum sees change: the quote's addresses and ports (`quoted`),
    // its L4 checksum (below), and the outer addresses in the pseudo-header.
    let mut body = csum::delta6(words(&outer.src_addr), words(&e.new_src))
        + csum::delta6(words(&outer.dst_addr), words(&e.new_dst))
        + quoted;
    // The quoted L4 checksum, when the quote reaches it (UDP's always does: 8 bytes were
    // checked above). A quoted UDP checksum of 0 is left alone.
    let check_off = if proto == PROTO_TCP {
        (inner_l4 + 18 <= pkt.end).then_some(16)
    } else {
        Some(6)
    };
    if let Some(off) = check_off {
        let f = mut_at::<[u8; 2]>(ctx, inner_l4 + off, Reason::DropTruncatedL4)?;
        let old = ne16(*f);
        if proto == PROTO_TCP || old != 0 {
            let mut new = csum::apply_delta(old, csum::fold(quoted));
            if proto == PROTO_UDP && new == 0 {
                new = 0xffff;
            }
            body += csum::delta16(old, new);
            *f = new.to_ne_bytes();
        }
    }
    ports.sport = e.new_dport.to_be_bytes();
    ports.dport = e.new_sport.to_be_bytes();
    copy_addr(&mut inner.src_addr, &e.new_dst);
    copy_addr(&mut inner.dst_addr, &e.new_src);
    let icmp = mut_at::<[u8; 4]>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    let ic = csum::apply_delta(ne16([icmp[2], icmp[3]]), csum::fold(body));
    icmp[2..4].copy_from_slice(&ic.to_ne_bytes());

    nat6::rewrite_ip6(ctx, &e.new_src, &e.new_dst)?;
    let out = nat6::next_hop6(ctx, e)?;
    // All the frame took from the entry was one flow's (`flowtable::Seen`): else dropped.
    seen.still()?;
    redirect_to(out, Reason::Icmp6ErrorTranslated)
}
