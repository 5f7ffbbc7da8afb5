//! ICMP: echo to an ENI is answered here; errors quoting a NATed packet (unreachable,
//! fragmentation needed, time exceeded) are translated, inner headers included, so that
//! path MTU discovery works through the endpoint. The `privatelink_icmp_endpoint` and
//! `privatelink_icmp_snat` path programs (`paths`) run it. Also builds the frag-needed
//! error the GWLB path sends when GENEVE would not fit (`frag_needed`). Above
//! `conntrack`, `endpoint`, `filter` and `nat`.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use privatelink_common::{
    DIR_ORIGINAL, EndpointEni, FLOW_GATEWAY, FlowKey, IfaceInfo, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    Reason, VpcAddr, csum,
};

use crate::{
    checksum::sum_words,
    conntrack,
    endpoint::{check_endpoint_at, check_gateway_at},
    filter,
    flowtable::FLOWS,
    maps::config,
    nat,
    packet::Packet,
    parse::{
        ETH_LEN, ETH_P_IP, EthHdr, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED, Icmpv4Hdr, Ipv4Ext, Ipv4Hdr, Ports, be16, frame_len,
        mut_at, ne16, set_macs,
    },
    verdict::{Verdict, settle, settle_for},
};

/// The headers an ICMP error puts in front of what it quotes: IPv4 (no options) and ICMP.
const ERROR_HEADERS: usize = 20 + 8;

#[inline(always)]
fn icmp_hdr<'a>(ctx: &'a XdpContext, pkt: &Packet) -> Result<&'a mut Icmpv4Hdr, Reason> {
    if pkt.l4 + 8 > pkt.end {
        return Err(Reason::DropTruncatedL4);
    }
    mut_at::<Icmpv4Hdr>(ctx, pkt.l4, Reason::DropTruncatedL4)
}

/// ICMP to an ENI of a forwarding endpoint.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn to_endpoint(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr,
    eni: &EndpointEni,
    pkt: &Packet,
) -> u64 {
    settle_for(
        eni.counter_slot,
        to_endpoint_checked(ctx, iface, eni_key, eni, pkt),
    )
}

#[inline(always)]
fn to_endpoint_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr,
    eni: &EndpointEni,
    pkt: &Packet,
) -> Result<Verdict, Reason> {
    let icmp = icmp_hdr(ctx, pkt)?;
    match icmp.type_ {
        ICMP_ECHO_REQUEST if icmp.code == 0 => {
            // Echo is not tracked: each request is filtered like a new flow.
            let src = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?.src_addr;
            filter::acl_in(eni_key, eni, src, PROTO_ICMP, 0)?;
            filter::security_groups(eni_key, eni, src, PROTO_ICMP, 0)?;
            filter::acl_out(eni_key, eni, src, PROTO_ICMP, 0)?;
            echo_reply(ctx, icmp, iface.mac)
        }
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED => translate_error(ctx, iface, pkt),
        _ => Err(Reason::DropIcmpUnsupported),
    }
}

/// ICMP to a SNAT address: only errors about our flows are meaningful.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn to_snat(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    settle(to_snat_checked(ctx, iface, pkt))
}

#[inline(always)]
fn to_snat_checked(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> Result<Verdict, Reason> {
    let icmp = icmp_hdr(ctx, pkt)?;
    match icmp.type_ {
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED => translate_error(ctx, iface, pkt),
        _ => Err(Reason::DropIcmpUnsupported),
    }
}

#[inline(always)]
fn echo_reply(
    ctx: &XdpContext,
    icmp: &mut Icmpv4Hdr,
    iface_mac: [u8; 6],
) -> Result<Verdict, Reason> {
    let old = ne16([icmp.type_, icmp.code]);
    icmp.type_ = ICMP_ECHO_REPLY;
    icmp.check =
        csum::replace16(ne16(icmp.check), old, ne16([icmp.type_, icmp.code])).to_ne_bytes();

    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    // Swapping the addresses leaves the sum unchanged; the new TTL does not.
    core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
    let old_ttl = ip.ttl_word();
    ip.ttl = 64;
    ip.check = csum::replace16(ne16(ip.check), old_ttl, ip.ttl_word()).to_ne_bytes();

    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    // Back to the sender, from our own MAC (the request may have been sent to broadcast).
    let sender = eth.src_addr;
    set_macs(eth, sender, iface_mac);
    Ok((xdp_action::XDP_TX, Reason::IcmpEchoReply))
}

/// An ICMP error quoting packet P that we sent out on this side: the flow entry for
/// "P reversed" arriving here tells how to translate it (outer addresses like a packet
/// of that direction, the quoted packet back into what the other side sent).
#[inline(always)]
fn translate_error(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> Result<Verdict, Reason> {
    let inner_off = pkt.l4 + 8;
    if inner_off + 20 > pkt.end {
        return Err(Reason::DropTruncatedL4);
    }
    let inner = mut_at::<Ipv4Hdr>(ctx, inner_off, Reason::DropTruncatedL4)?;
    let ihl = inner.hdr_len();
    // A quoted non-first fragment has no ports where we would read them.
    if inner.vihl >> 4 != 4 || ihl < 20 || (inner.frags[0] & 0x1f) != 0 || inner.frags[1] != 0 {
        return Err(Reason::DropIcmpNoFlow);
    }
    let proto = inner.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Reason::DropIcmpNoFlow);
    }
    let inner_l4 = inner_off + ihl;
    if inner_l4 + 8 > pkt.end {
        return Err(Reason::DropTruncatedL4);
    }
    let ports = mut_at::<Ports>(ctx, inner_l4, Reason::DropTruncatedL4)?;
    let (isport, idport) = (be16(ports.sport), be16(ports.dport));
    let key = FlowKey::new(
        iface.vpc_id,
        inner.dst_addr,
        inner.src_addr,
        idport,
        isport,
        proto,
    );
    let seen = FLOWS.get_seen(key).ok_or(Reason::DropIcmpNoFlow)?;
    // SAFETY: copied out.
    let e = unsafe { *seen.entry };
    // The copy is one flow's entry (`flowtable::Seen`), whatever becomes of the slot.
    seen.still()?;
    let cfg = config();
    if !conntrack::alive(&e, &key, conntrack::now(), &cfg) {
        return Err(Reason::DropIcmpNoFlow);
    }
    // The endpoint (ENI or gateway) the flow belongs to must still forward.
    let (vpc_id, addr) = if e.direction == DIR_ORIGINAL {
        (key.vpc_id, key.dst)
    } else {
        (e.out_vpc_id, e.new_src)
    };
    let owner = if e.flags & FLOW_GATEWAY != 0 {
        check_gateway_at(vpc_id, addr)?
    } else {
        check_endpoint_at(vpc_id, addr)?
    };
    if owner.endpoint_id != e.endpoint_id {
        return Err(Reason::DropIcmpNoFlow);
    }
    if mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }

    // The quoted packet becomes what the other side sent: reverse of the entry's rewrite.
    let (new_isrc, new_idst) = (e.new_dst, e.new_src);
    let (new_isport, new_idport) = (e.new_dport, e.new_sport);
    let (old_isrc, old_idst) = (inner.src_addr, inner.dst_addr);
    let icmp = mut_at::<Icmpv4Hdr>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    let mut ic = ne16(icmp.check);

    // The quoted L4 checksum, when the quote reaches it (UDP's always does: 8 bytes were
    // checked above).
    let check_off = if proto == PROTO_TCP {
        (inner_l4 + 18 <= pkt.end).then_some(16)
    } else {
        Some(6)
    };
    if let Some(off) = check_off {
        let f = mut_at::<[u8; 2]>(ctx, inner_l4 + off, Reason::DropTruncatedL4)?;
        let old = ne16(*f);
        let mut new = nat::l4_check(
            old,
            old_isrc,
            new_isrc,
            old_idst,
            new_idst,
            (isport, idport),
            (new_isport, new_idport),
        );
        if proto == PROTO_UDP {
            new = csum::udp_finish(old, new);
        }
        ic = csum::replace16(ic, old, new);
        *f = new.to_ne_bytes();
    }
    ic = csum::replace_port(ic, isport, new_isport);
    ic = csum::replace_port(ic, idport, new_idport);
    ports.sport = new_isport.to_be_bytes();
    ports.dport = new_idport.to_be_bytes();

    let old_ich = ne16(inner.check);
    let new_ich = csum::replace4(
        csum::replace4(old_ich, old_isrc, new_isrc),
        old_idst,
        new_idst,
    );
    ic = csum::replace16(ic, old_ich, new_ich);
    ic = csum::replace4(ic, old_isrc, new_isrc);
    ic = csum::replace4(ic, old_idst, new_idst);
    inner.src_addr = new_isrc;
    inner.dst_addr = new_idst;
    inner.check = new_ich.to_ne_bytes();
    icmp.check = ic.to_ne_bytes();

    nat::rewrite_ip(ctx, e.new_src, e.new_dst)?;
    nat::redirect(ctx, &e, Reason::IcmpErrorTranslated)
}

/// The packet at the frame's start would not fit the next link: the frame becomes an ICMP
/// "fragmentation needed" error to its sender (RFC 1191) with the path MTU `mtu`, from
/// `from`, sent back out (`XDP_TX`, counted as `reason`) from `iface_mac`: our IP + ICMP
/// headers, then the sender's IP header and the first 8 bytes of its payload.
#[inline(always)]
pub fn frag_needed(
    ctx: &XdpContext,
    iface_mac: &[u8; 6],
    from: &[u8; 4],
    mtu: usize,
    reason: Reason,
) -> Result<Verdict, Reason> {
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let quote = ip.hdr_len() + 8;
    let sender_ip = ip.src_addr;
    let sender_mac = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    let keep = (ETH_LEN + quote) as i32;
    // SAFETY: plain helper calls on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - frame_len(ctx) as i32) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ERROR_HEADERS as i32)) } != 0
    {
        return Err(Reason::DropRedirectFailed);
    }
    let h = mut_at::<[u8; ETH_LEN + ERROR_HEADERS]>(ctx, 0, Reason::DropTruncatedIp)?;
    h[0..6].copy_from_slice(&sender_mac);
    h[6..12].copy_from_slice(iface_mac);
    h[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let tot = ((ERROR_HEADERS + quote) as u16).to_be_bytes();
    // Version 4 and 5 words, TOS internetwork control, no ID or fragment, TTL 64.
    let ip_hdr: [u8; 20] = [
        0x45,
        0xc0,
        tot[0],
        tot[1],
        0,
        0,
        0,
        0,
        64,
        PROTO_ICMP,
        0,
        0,
        from[0],
        from[1],
        from[2],
        from[3],
        sender_ip[0],
        sender_ip[1],
        sender_ip[2],
        sender_ip[3],
    ];
    h[14..34].copy_from_slice(&ip_hdr);
    let c = !csum::fold(sum_words::<5>(ctx, ETH_LEN, 20)?);
    mut_at::<[u8; 2]>(ctx, 24, Reason::DropTruncatedIp)?.copy_from_slice(&c.to_ne_bytes());
    // Type, code, checksum, unused, next-hop MTU.
    let m = (mtu as u16).to_be_bytes();
    h[34..42].copy_from_slice(&[ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m[0], m[1]]);
    let sum = sum_words::<19>(ctx, 34, 8 + quote)?;
    let c = mut_at::<[u8; 2]>(ctx, 36, Reason::DropTruncatedIp)?;
    *c = (!csum::fold(sum)).to_ne_bytes();
    Ok((xdp_action::XDP_TX, reason))
}
