//! ICMP: echo to an ENI is answered here; errors quoting a NATed packet (unreachable,
//! fragmentation needed, time exceeded) are translated, inner headers included, so that
//! path MTU discovery works through the endpoint.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use privatelink_common::{
    DIR_ORIGINAL, EndpointEni, FLOW_GATEWAY, FlowKey, IfaceInfo, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    Reason, VpcAddr, csum,
};

use crate::{
    Verdict, conntrack, filter,
    ipv4::{Packet, check_endpoint_at, check_gateway_at},
    maps::{PL_CONNTRACK, config},
    nat,
    parse::{ETH_LEN, EthHdr, Icmpv4Hdr, Ipv4Ext, Ipv4Hdr, Ports, be16, mut_at, ne16, set_macs},
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;

#[inline(always)]
fn icmp_hdr<'a>(ctx: &'a XdpContext, pkt: &Packet) -> Result<&'a mut Icmpv4Hdr, Reason> {
    if pkt.l4 + 8 > pkt.end {
        return Err(Reason::DropTruncatedL4);
    }
    mut_at::<Icmpv4Hdr>(ctx, pkt.l4, Reason::DropTruncatedL4)
}

/// ICMP to an ENI of a forwarding endpoint.
/// Non-inlined (its own BPF stack frame); see `crate::settle`.
#[inline(never)]
pub fn to_endpoint(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr,
    eni: &EndpointEni,
    pkt: &Packet,
) -> u64 {
    crate::settle(to_endpoint_checked(ctx, iface, eni_key, eni, pkt))
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
        ECHO_REQUEST if icmp.code == 0 => {
            // Echo is not tracked: each request is filtered like a new flow.
            let src = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?.src_addr;
            filter::acl_in(eni_key, eni, src, PROTO_ICMP, 0)?;
            filter::security_groups(eni_key, eni, src, PROTO_ICMP, 0)?;
            filter::acl_out(eni_key, eni, src, PROTO_ICMP, 0)?;
            echo_reply(ctx, icmp, iface.mac)
        }
        DEST_UNREACH | TIME_EXCEEDED => translate_error(ctx, iface, pkt),
        _ => Err(Reason::DropIcmpUnsupported),
    }
}

/// ICMP to a SNAT address: only errors about our flows are meaningful.
/// Non-inlined (its own BPF stack frame); see `crate::settle`.
#[inline(never)]
pub fn to_snat(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    crate::settle(to_snat_checked(ctx, iface, pkt))
}

#[inline(always)]
fn to_snat_checked(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> Result<Verdict, Reason> {
    let icmp = icmp_hdr(ctx, pkt)?;
    match icmp.type_ {
        DEST_UNREACH | TIME_EXCEEDED => translate_error(ctx, iface, pkt),
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
    icmp.type_ = ECHO_REPLY;
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
    let key = FlowKey {
        vpc_id: iface.vpc_id,
        src: inner.dst_addr,
        dst: inner.src_addr,
        sport: idport,
        dport: isport,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    // SAFETY: copied out.
    let e = unsafe { PL_CONNTRACK.get(key) }
        .copied()
        .ok_or(Reason::DropIcmpNoFlow)?;
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
