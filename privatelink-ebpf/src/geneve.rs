//! GENEVE (RFC 8926) as GWLB speaks it: the outer headers a packet to an appliance gets
//! (`encap`, with the three options AWS-style appliances expect), and the reading and
//! stripping of what an appliance sends back (`parse`, `decap`). The inner packet is IPv4
//! (protocol 0x0800) or IPv6 (0x86DD, `encap_as`, `parse_as`); the outer one is always
//! IPv4. The GWLB paths (`gwlb`, `gwlb6`) use it; it uses only `parse` and `packet`.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use privatelink_common::{
    FlowKey, GENEVE_OPTIONS_LEN, GENEVE_PORT, GWLB_OPT_ATTACHMENT_ID, GWLB_OPT_ENDPOINT_ID,
    GWLB_OPT_FLOW_COOKIE, GWLB_OPTION_CLASS, GWLB_OVERHEAD, PROTO_UDP, Reason, hash,
};

use crate::{
    packet::Packet,
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, be16, mut_at},
};

/// GENEVE's Protocol Type of the inner packet: an EtherType.
pub const GENEVE_PROTO_IPV4: u16 = ETH_P_IP;
pub const GENEVE_PROTO_IPV6: u16 = ETH_P_IPV6;
/// Source ports of the outer UDP (RFC 8926 §3.3: from a hash of the inner flow, in the
/// ephemeral range).
const SPORT_BASE: u16 = 49152;
/// The most options we walk in a returned packet (AWS sends three).
const MAX_OPTIONS: usize = 8;

/// Outer IPv4 + UDP + GENEVE + the three GWLB options, as laid out on the wire
/// (RFC 791, RFC 768, RFC 8926 §3.4/§3.5).
#[repr(C)]
pub struct Encap {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frags: [u8; 2],
    ttl: u8,
    proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    udp_len: [u8; 2],
    udp_check: [u8; 2],
    /// Ver (2 bits) and Opt Len (6 bits, in 4-byte words).
    ver_opt_len: u8,
    /// O, C and reserved bits.
    flags: u8,
    protocol: [u8; 2],
    vni: [u8; 3],
    reserved: u8,
    opt_endpoint: [u8; 4],
    endpoint_id: [u8; 8],
    opt_attachment: [u8; 4],
    attachment_id: [u8; 8],
    opt_cookie: [u8; 4],
    cookie: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Encap>() == GWLB_OVERHEAD);

/// The flow cookie option's value: the same for both directions of a flow.
#[inline(always)]
fn cookie_of(key: &FlowKey) -> u32 {
    hash::symmetric_hash(key.src, key.dst, key.sport, key.dport, key.proto, 5, 0)
}

/// Grows the frame by the GENEVE overhead and writes everything but the addresses and
/// the IP checksum (the caller's, from the flow).
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    key: &FlowKey,
    endpoint_id: u32,
    inner_len: usize,
) -> Result<(), Reason> {
    let cookie = cookie_of(key);
    encap_as(
        ctx,
        GENEVE_PROTO_IPV4,
        cookie,
        key.vpc_id,
        endpoint_id,
        inner_len,
    )
}

/// `encap` for an inner packet of `protocol` (an EtherType), with its flow `cookie` and
/// the consumer VPC `vpc_id` (the attachment id) given.
#[inline(always)]
pub fn encap_as(
    ctx: &XdpContext,
    protocol: u16,
    cookie: u32,
    vpc_id: u32,
    endpoint_id: u32,
    inner_len: usize,
) -> Result<(), Reason> {
    // The inner packet goes bare (no Ethernet): its old Ethernet header becomes the
    // outer one, so the frame grows by exactly the outer headers.
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GWLB_OVERHEAD as i32)) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let h = mut_at::<Encap>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    h.vihl = 0x45;
    h.tos = 0;
    h.tot_len = ((GWLB_OVERHEAD + inner_len) as u16).to_be_bytes();
    h.id = [0; 2];
    h.frags = [0x40, 0]; // DF
    h.ttl = 64;
    h.proto = PROTO_UDP;
    h.check = [0; 2];
    h.sport = (SPORT_BASE | (cookie as u16 & 0x3fff)).to_be_bytes();
    h.dport = GENEVE_PORT.to_be_bytes();
    h.udp_len = ((GWLB_OVERHEAD - 20 + inner_len) as u16).to_be_bytes();
    h.udp_check = [0; 2]; // RFC 8926 §3.3: zero is allowed over IPv4
    h.ver_opt_len = (GENEVE_OPTIONS_LEN / 4) as u8;
    h.flags = 0;
    h.protocol = protocol.to_be_bytes();
    h.vni = [0; 3];
    h.reserved = 0;
    let class = GWLB_OPTION_CLASS.to_be_bytes();
    h.opt_endpoint = [class[0], class[1], GWLB_OPT_ENDPOINT_ID, 2];
    h.endpoint_id = (endpoint_id as u64).to_be_bytes();
    h.opt_attachment = [class[0], class[1], GWLB_OPT_ATTACHMENT_ID, 2];
    h.attachment_id = (vpc_id as u64).to_be_bytes();
    h.opt_cookie = [class[0], class[1], GWLB_OPT_FLOW_COOKIE, 1];
    h.cookie = cookie.to_be_bytes();
    Ok(())
}

/// What an appliance's GENEVE carries, once validated.
pub struct Returned {
    pub endpoint_id: u32,
    pub vpc_id: u32,
    pub inner: usize,
    /// Where the UDP datagram ends: the inner packet must lie inside it.
    pub end: usize,
}

/// RFC 8926 §3.4/§3.5: version 0, no OAM, IPv4 inside, option lengths adding up, and
/// the three GWLB options present with their exact lengths (`parse_as`).
#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &Packet) -> Result<Returned, Reason> {
    parse_as(ctx, pkt, GENEVE_PROTO_IPV4)
}

/// Whether the GENEVE header of a packet that failed `parse` says IPv6 inside: that one
/// is for the IPv6 return path. Read only on `parse`'s failure, so IPv4 pays nothing.
#[inline(always)]
pub fn carries_ipv6(ctx: &XdpContext, pkt: &Packet) -> bool {
    match mut_at::<[u8; 4]>(ctx, pkt.l4 + 8, Reason::DropGeneveMalformed) {
        Ok(base) => be16([base[2], base[3]]) == GENEVE_PROTO_IPV6,
        Err(_) => false,
    }
}

/// `parse` for an inner packet of `protocol` (an EtherType): anything else inside is
/// malformed here.
#[inline(always)]
pub fn parse_as(ctx: &XdpContext, pkt: &Packet, protocol: u16) -> Result<Returned, Reason> {
    let udp = mut_at::<[u8; 8]>(ctx, pkt.l4, Reason::DropGeneveMalformed)?;
    let udp_len = be16([udp[4], udp[5]]) as usize;
    if udp_len < 16 || pkt.l4 + udp_len > pkt.end {
        return Err(Reason::DropGeneveMalformed);
    }
    let gnv = pkt.l4 + 8;
    let base = mut_at::<[u8; 8]>(ctx, gnv, Reason::DropGeneveMalformed)?;
    if base[0] >> 6 != 0 || base[1] & 0x80 != 0 || be16([base[2], base[3]]) != protocol {
        return Err(Reason::DropGeneveMalformed);
    }
    let opts_end = gnv + 8 + (base[0] & 0x3f) as usize * 4;
    let end = pkt.l4 + udp_len;
    if opts_end + 20 > end {
        return Err(Reason::DropGeneveMalformed);
    }
    let mut r = Returned {
        endpoint_id: 0,
        vpc_id: 0,
        inner: opts_end,
        end,
    };
    let mut seen = 0u8;
    let mut off = gnv + 8;
    for _ in 0..MAX_OPTIONS {
        if off >= opts_end {
            break;
        }
        let o = mut_at::<[u8; 4]>(ctx, off, Reason::DropGeneveMalformed)?;
        let (class, kind, len) = (be16([o[0], o[1]]), o[2], (o[3] & 0x1f) as usize * 4);
        if off + 4 + len > opts_end {
            return Err(Reason::DropGeneveMalformed);
        }
        if class == GWLB_OPTION_CLASS && (1..=3).contains(&(kind & 0x7f)) {
            let want = if kind & 0x7f == GWLB_OPT_FLOW_COOKIE {
                4
            } else {
                8
            };
            if len != want {
                return Err(Reason::DropGeneveMalformed);
            }
            let v = mut_at::<[u8; 8]>(ctx, off + 4, Reason::DropGeneveMalformed)?;
            let low = u32::from_be_bytes([v[4], v[5], v[6], v[7]]);
            match kind & 0x7f {
                GWLB_OPT_ENDPOINT_ID => r.endpoint_id = low,
                GWLB_OPT_ATTACHMENT_ID => r.vpc_id = low,
                _ => {}
            }
            seen |= 1 << (kind & 0x7f);
        } else if kind & 0x80 != 0 {
            return Err(Reason::DropGeneveMalformed); // a critical option we do not know
        }
        off += 4 + len;
    }
    if off != opts_end || seen != 0b1110 {
        return Err(Reason::DropGeneveMalformed);
    }
    Ok(r)
}

/// Strips the outer IPv4, UDP and GENEVE in front of the inner packet at `inner`, leaving
/// room for a new Ethernet header.
#[inline(always)]
pub fn decap(ctx: &XdpContext, inner: usize) -> Result<(), Reason> {
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (inner - ETH_LEN) as i32) } != 0 {
        return Err(Reason::DropGeneveMalformed);
    }
    Ok(())
}
