//! Applying a conntrack entry to a packet: addresses, ports, TTL, checksums, MACs, then
//! the redirect. The last step of the forward, reply and ICMP paths (the established path
//! does the same rewrite its own, cheaper way). Uses only `parse`, `packet`, `verdict`.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{FlowEntry, PROTO_TCP, PROTO_UDP, Reason, csum};

use crate::{
    packet::Packet,
    parse::{
        ETH_LEN, EthHdr, Ipv4Ext, Ipv4Hdr, Ports, TcpHdr, UdpHdr, be16, mut_at, ne16, set_macs,
    },
    verdict::{Verdict, redirect_to},
};

/// Rewrites the outer IPv4 header to `src`/`dst`, decrements TTL, fixes the checksum.
/// Returns the old addresses (the L4 pseudo-header needs them).
#[inline(always)]
pub fn rewrite_ip(
    ctx: &XdpContext,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<([u8; 4], [u8; 4]), Reason> {
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let (old_src, old_dst) = (ip.src_addr, ip.dst_addr);
    let mut c = ne16(ip.check);
    c = csum::replace4(c, old_src, src);
    c = csum::replace4(c, old_dst, dst);
    let old_ttl = ip.ttl_word();
    ip.ttl -= 1;
    c = csum::replace16(c, old_ttl, ip.ttl_word());
    ip.src_addr = src;
    ip.dst_addr = dst;
    ip.check = c.to_ne_bytes();
    Ok((old_src, old_dst))
}

/// The L4 checksum after addresses and ports changed (pseudo-header included).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn l4_check(
    check: u16,
    old_src: [u8; 4],
    new_src: [u8; 4],
    old_dst: [u8; 4],
    new_dst: [u8; 4],
    old_ports: (u16, u16),
    new_ports: (u16, u16),
) -> u16 {
    let mut c = csum::replace4(check, old_src, new_src);
    c = csum::replace4(c, old_dst, new_dst);
    c = csum::replace_port(c, old_ports.0, new_ports.0);
    csum::replace_port(c, old_ports.1, new_ports.1)
}

/// Full NAT of a TCP/UDP packet by `e`, its MACs those of the next hop: the interface
/// it goes out of (`e.out_ifindex`), for the caller's `redirect_to` once it knows that
/// everything the frame took from `e` was one flow's (`flowtable::Seen`).
#[inline(always)]
pub fn apply(ctx: &XdpContext, pkt: &Packet, e: &FlowEntry) -> Result<u32, Reason> {
    let (old_src, old_dst) = rewrite_ip(ctx, e.new_src, e.new_dst)?;
    let ports = mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    let old_ports = (be16(ports.sport), be16(ports.dport));
    let new_ports = (e.new_sport, e.new_dport);
    if pkt.proto == PROTO_TCP {
        let tcp = mut_at::<TcpHdr>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
        let c = l4_check(
            ne16(tcp.check),
            old_src,
            e.new_src,
            old_dst,
            e.new_dst,
            old_ports,
            new_ports,
        );
        tcp.check = c.to_ne_bytes();
    } else if pkt.proto == PROTO_UDP {
        let udp = mut_at::<UdpHdr>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
        let orig = ne16(udp.check);
        let c = l4_check(
            orig, old_src, e.new_src, old_dst, e.new_dst, old_ports, new_ports,
        );
        udp.check = csum::udp_finish(orig, c).to_ne_bytes();
    }
    ports.sport = e.new_sport.to_be_bytes();
    ports.dport = e.new_dport.to_be_bytes();
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, e.dst_mac, e.src_mac);
    Ok(e.out_ifindex)
}

/// Sets the MACs of the next hop and redirects to the egress interface.
#[inline(always)]
pub fn redirect(ctx: &XdpContext, e: &FlowEntry, reason: Reason) -> Result<Verdict, Reason> {
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, e.dst_mac, e.src_mac);
    redirect_to(e.out_ifindex, reason)
}
