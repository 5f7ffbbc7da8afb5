//! Applying an IPv6 conntrack entry to a packet: addresses, hop limit, the checksum
//! deltas of a rewrite (IPv6 has no header checksum; the pseudo-header holds the 128-bit
//! addresses), the next hop's MACs. The last steps of the ICMPv6 error path and of the NAT
//! paths' `flows6::apply6` (their callers redirect). Uses only `parse`, `packet6`.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{FlowEntry6, Reason, csum};

use crate::{
    packet6::{copy_addr, words},
    parse::{ETH_LEN, EthHdr, Ipv6Hdr, mut_at, set_macs},
};

/// Rewrites the IPv6 header to `src`/`dst` and decrements the hop limit (checksums are
/// the caller's: compute their deltas first, from the addresses still in the packet).
#[inline(always)]
pub fn rewrite_ip6(ctx: &XdpContext, src: &[u8; 16], dst: &[u8; 16]) -> Result<(), Reason> {
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    ip.hop_limit -= 1;
    copy_addr(&mut ip.src_addr, src);
    copy_addr(&mut ip.dst_addr, dst);
    Ok(())
}

/// What a change of addresses and ports adds to a TCP/UDP checksum (unfolded).
#[inline(always)]
pub fn l4_delta6(
    old_addrs: (&[u8; 16], &[u8; 16]),
    new_addrs: (&[u8; 16], &[u8; 16]),
    old_ports: (u16, u16),
    new_ports: (u16, u16),
) -> u32 {
    csum::delta6(words(old_addrs.0), words(new_addrs.0))
        + csum::delta6(words(old_addrs.1), words(new_addrs.1))
        + csum::delta_port(old_ports.0, new_ports.0)
        + csum::delta_port(old_ports.1, new_ports.1)
}

/// Sets the MACs of the entry's next hop; returns its egress interface, for the caller's
/// `redirect_to` once it knows that all the frame took from the entry was one flow's
/// (`flowtable::Seen`).
#[inline(always)]
pub fn next_hop6(ctx: &XdpContext, e: &FlowEntry6) -> Result<u32, Reason> {
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, e.dst_mac, e.src_mac);
    Ok(e.out_ifindex)
}
