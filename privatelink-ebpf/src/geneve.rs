//! GENEVE (RFC 8926) as GWLB speaks it: the outer headers a packet to an appliance gets
//! (`encap`, with the three options AWS-style appliances expect), and the reading and
//! stripping of what an appliance sends back (`parse`, `decap`). The inner packet is IPv4
//! (protocol 0x0800) or IPv6 (0x86DD, `encap_as`, `parse_as`); the outer one is always
//! IPv4. The GWLB paths (`gwlb`, `gwlb6`) use it; it uses only `parse` and `packet`.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use privatelink_common::{
    FlowKey, GENEVE_OPTIONS_LEN, GENEVE_PORT, GWLB_OPT_ATTACHMENT_ID, GWLB_OPT_ENDPOINT_ID,
    GWLB_OPT_FLOW_COOKIE, GWLB_OPTION_CLASS, GWLB_OVERHEAD, PROTO_UDP, Reason, csum, hash,
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

/// Where a packet to an appliance goes: the outer addresses and the Ethernet header's.
#[derive(Clone, Copy)]
pub struct Outer {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// The frame's new head, as 16-bit words in memory order (network order on the wire; the
/// frame starts 2-aligned): Ethernet, then outer IPv4 + UDP + GENEVE + the three GWLB
/// options (RFC 791, RFC 768, RFC 8926 §3.4/§3.5). Written word by word: LLVM's BPF
/// backend splits byte-array stores into single bytes.
#[repr(C)]
struct Head {
    macs: [u16; 6],
    ether_type: u16,
    outer: [u16; GWLB_OVERHEAD / 2],
}

// Word indexes in `Head::outer`.
const W_TOT_LEN: usize = 1;
const W_CHECK: usize = 5;
const W_SRC: usize = 6;
const W_DST: usize = 8;
const W_SPORT: usize = 10;
const W_UDP_LEN: usize = 12;
const W_PROTOCOL: usize = 15;
const W_ENDPOINT_ID: usize = 22;
const W_ATTACHMENT_ID: usize = 28;
const W_COOKIE: usize = 32;

/// The words of the outer headers that are the same in every packet (in value order,
/// before `to_be`); zero where a packet's own value goes. The IPv4 header: version 4, IHL
/// 5; DF; TTL 64, UDP. The UDP checksum stays zero (RFC 8926 §3.3: allowed over IPv4).
/// GENEVE: version 0, the options' length in 4-byte words, VNI 0; each option's class,
/// type and length (the high halves of the 8-byte ids are zero).
const TEMPLATE: [u16; GWLB_OVERHEAD / 2] = {
    let mut w = [0u16; GWLB_OVERHEAD / 2];
    w[0] = 0x4500;
    w[3] = 0x4000;
    w[4] = 64 << 8 | PROTO_UDP as u16;
    w[11] = GENEVE_PORT;
    w[14] = ((GENEVE_OPTIONS_LEN / 4) as u16) << 8;
    w[18] = GWLB_OPTION_CLASS;
    w[19] = (GWLB_OPT_ENDPOINT_ID as u16) << 8 | 2;
    w[24] = GWLB_OPTION_CLASS;
    w[25] = (GWLB_OPT_ATTACHMENT_ID as u16) << 8 | 2;
    w[30] = GWLB_OPTION_CLASS;
    w[31] = (GWLB_OPT_FLOW_COOKIE as u16) << 8 | 1;
    w
};

/// The ones' complement sum of the template's IPv4 header words: a packet's header
/// checksum adds only its length and addresses to it.
const TEMPLATE_IP_SUM: u32 = {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += TEMPLATE[i] as u32;
        i += 1;
    }
    sum
};

const _: () =
    assert!(GWLB_OVERHEAD == 20 + 8 + 8 + 12 + 12 + 8 && W_COOKIE + 2 == GWLB_OVERHEAD / 2);

/// The flow cookie option's value: the same for both directions of a flow.
#[inline(always)]
pub fn cookie_of(key: &FlowKey) -> u32 {
    hash::symmetric_hash(key.src, key.dst, key.sport, key.dport, key.proto, 5, 0)
}

/// `a` as the two words it is on the wire, in value order.
#[inline(always)]
fn be_words(a: [u8; 4]) -> (u16, u16) {
    (
        u16::from_be_bytes([a[0], a[1]]),
        u16::from_be_bytes([a[2], a[3]]),
    )
}

/// Grows the frame by the GENEVE overhead in front of the inner packet of `protocol`
/// (an EtherType; IPv4 for `encap`) and `inner_len` bytes, and writes the whole new head:
/// Ethernet and the outer headers to `outer`, with its flow `cookie` and the consumer VPC
/// `vpc_id` (the attachment id). The inner packet goes bare (no Ethernet): its old
/// Ethernet header becomes the outer one, so the frame grows by exactly the outer headers.
/// The header checksum is the template's sum plus the length and addresses: nothing of
/// the frame is read back.
#[inline(always)]
pub fn encap_as(
    ctx: &XdpContext,
    protocol: u16,
    cookie: u32,
    vpc_id: u32,
    endpoint_id: u32,
    inner_len: usize,
    outer: &Outer,
) -> Result<(), Reason> {
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GWLB_OVERHEAD as i32)) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let h = mut_at::<Head>(ctx, 0, Reason::DropTruncatedIp)?;
    let tot_len = (GWLB_OVERHEAD + inner_len) as u16;
    let (s0, s1) = be_words(outer.src);
    let (d0, d1) = be_words(outer.dst);
    let sum = TEMPLATE_IP_SUM + tot_len as u32 + s0 as u32 + s1 as u32 + d0 as u32 + d1 as u32;
    let w = &mut h.outer;
    for i in 0..GWLB_OVERHEAD / 2 {
        w[i] = TEMPLATE[i].to_be();
    }
    w[W_TOT_LEN] = tot_len.to_be();
    w[W_CHECK] = (!csum::fold(sum)).to_be();
    (w[W_SRC], w[W_SRC + 1]) = (s0.to_be(), s1.to_be());
    (w[W_DST], w[W_DST + 1]) = (d0.to_be(), d1.to_be());
    w[W_SPORT] = (SPORT_BASE | (cookie as u16 & 0x3fff)).to_be();
    w[W_UDP_LEN] = (tot_len - 20).to_be();
    w[W_PROTOCOL] = protocol.to_be();
    w[W_ENDPOINT_ID] = ((endpoint_id >> 16) as u16).to_be();
    w[W_ENDPOINT_ID + 1] = (endpoint_id as u16).to_be();
    w[W_ATTACHMENT_ID] = ((vpc_id >> 16) as u16).to_be();
    w[W_ATTACHMENT_ID + 1] = (vpc_id as u16).to_be();
    w[W_COOKIE] = ((cookie >> 16) as u16).to_be();
    w[W_COOKIE + 1] = (cookie as u16).to_be();
    for i in 0..3 {
        h.macs[i] = u16::from_ne_bytes([outer.dst_mac[2 * i], outer.dst_mac[2 * i + 1]]);
        h.macs[3 + i] = u16::from_ne_bytes([outer.src_mac[2 * i], outer.src_mac[2 * i + 1]]);
    }
    h.ether_type = ETH_P_IP.to_be();
    Ok(())
}

/// `encap_as` for an IPv4 inner packet of the flow `key`, whose cookie is `cookie`
/// (`cookie_of`).
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    key: &FlowKey,
    cookie: u32,
    endpoint_id: u32,
    inner_len: usize,
    outer: &Outer,
) -> Result<(), Reason> {
    encap_as(
        ctx,
        GENEVE_PROTO_IPV4,
        cookie,
        key.vpc_id,
        endpoint_id,
        inner_len,
        outer,
    )
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

/// Whether the GENEVE header says IPv6 inside: that one is for the IPv6 return path (which
/// checks the rest itself). Four bytes of the line the outer headers are in.
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
