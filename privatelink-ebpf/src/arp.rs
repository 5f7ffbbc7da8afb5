//! ARP on a VPC-facing interface: answer for ENI, SNAT and resolver addresses (the
//! forwarder owns them; of a resolver address the kernel gets only the replies to its own
//! requests for its clients' MACs, never a tenant's request to learn from), and learn
//! every sender's MAC as a next hop of that VPC (and of the GWLB inner destinations the
//! data path asked for). The classifier hands it every ARP frame; the GWLB return path
//! has it write its probes (`probe`). Uses only `parse`, `maps`, `host`, `verdict`.

use aya_ebpf::{
    bindings::{BPF_EXIST, xdp_action},
    helpers::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use privatelink_common::{IfaceInfo, Neighbor, Reason, VpcAddr};

use crate::{
    maps::{PL_ENDPOINTS, PL_GW_ADDRS, PL_GWLB_NEIGH, PL_NEIGHBORS, PL_SNAT_ADDRS},
    parse::{ArpHdr, ETH_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, be16, frame_len, mut_at, set_macs},
    verdict::{Verdict, settle},
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// `htype` of Ethernet.
const HTYPE_ETHERNET: u16 = 1;
/// The length of an Ethernet frame carrying an ARP packet for IPv4 (without padding).
const FRAME_LEN: usize = ETH_LEN + 28;
/// An ARP request's bytes from the EtherType to the sender's MAC: ARP, Ethernet, IPv4,
/// address lengths 6 and 4, request.
const REQUEST_HEAD: [u8; 10] = {
    let (e, h, p, o) = (
        ETH_P_ARP.to_be_bytes(),
        HTYPE_ETHERNET.to_be_bytes(),
        ETH_P_IP.to_be_bytes(),
        ARP_REQUEST.to_be_bytes(),
    );
    [e[0], e[1], h[0], h[1], p[0], p[1], 6, 4, o[0], o[1]]
};

/// Inlined into the entry program, as all its per-packet work is: a BPF-to-BPF call costs a
/// call and a return on every packet that takes it, and a program that tail-calls may make
/// such calls only where the JIT supports the mix (x86-64 since 5.10, arm64 since 6.0; the
/// entry program's one is the established paths' partner lookup, `conntrack::track`).
#[inline(always)]
pub fn handle(ctx: &XdpContext, iface: &IfaceInfo) -> u64 {
    settle(handle_checked(ctx, iface))
}

#[inline(always)]
fn handle_checked(ctx: &XdpContext, iface: &IfaceInfo) -> Result<Verdict, Reason> {
    let arp = mut_at::<ArpHdr>(ctx, ETH_LEN, Reason::DropBadArp)?;
    if be16(arp.htype) != HTYPE_ETHERNET
        || be16(arp.ptype) != ETH_P_IP
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Err(Reason::DropBadArp);
    }
    let op = be16(arp.oper);
    if op != ARP_REQUEST && op != ARP_REPLY {
        return Err(Reason::DropBadArp);
    }
    learn(iface.vpc_id, arp.spa, arp.sha);

    let target = VpcAddr {
        vpc_id: iface.vpc_id,
        addr: arp.tpa,
    };
    // SAFETY: read-only lookups, values not kept.
    let ours = unsafe {
        PL_ENDPOINTS.get(target).is_some()
            || PL_SNAT_ADDRS.get(target).is_some()
            || PL_GW_ADDRS.get(target).is_some()
    };
    // The VPC's resolver address: requests for it are answered here, as an ENI's; a
    // reply to it answers the kernel's own request for a client's MAC (to send an
    // answer), and passes.
    let resolver = crate::host::is_resolver(iface, arp.tpa);
    if resolver && op != ARP_REQUEST {
        return Ok((xdp_action::XDP_PASS, Reason::ArpPass));
    }
    let shared = iface.flags & privatelink_common::IFACE_FLAG_HOST_TRAFFIC != 0;
    if op != ARP_REQUEST && (ours || (arp.tpa == [0; 4] && !shared)) {
        // A reply to the data path's own request (from a SNAT address, or a GWLB probe
        // from 0.0.0.0): its sender was learned above; the host's stack has no use for it
        // (but for its own duplicate address detection on a shared interface).
        return Ok((xdp_action::XDP_DROP, Reason::ArpLearned));
    }
    if !ours && !resolver {
        return Ok(crate::host::arp(iface, arp.spa, arp.tpa));
    }
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    arp.oper = ARP_REPLY.to_be_bytes();
    arp.tha = arp.sha;
    arp.tpa = arp.spa;
    arp.sha = iface.mac;
    arp.spa = target.addr;
    set_macs(eth, arp.tha, iface.mac);
    Ok((xdp_action::XDP_TX, Reason::ArpReply))
}

#[inline(always)]
fn learn(vpc_id: u32, addr: [u8; 4], mac: [u8; 6]) {
    if addr == [0; 4] || mac[0] & 1 != 0 {
        return; // probes and multicast/broadcast senders teach nothing
    }
    let key = VpcAddr { vpc_id, addr };
    learn_inner(key, mac);
    // Only next hops the daemon registered are learned (BPF_EXIST): an ARP flood with
    // random senders cannot fill the table or push a load balancer out of it.
    // SAFETY: value copied out before the update.
    match unsafe { PL_NEIGHBORS.get(key) } {
        Some(n) if n.mac != mac => {
            let _ = PL_NEIGHBORS.insert(key, Neighbor { mac, _pad: [0; 2] }, BPF_EXIST as u64);
        }
        _ => {}
    }
}

/// GWLB: ARP taught us the MAC of an inner destination we asked for (`probe`).
#[inline(always)]
fn learn_inner(key: VpcAddr, mac: [u8; 6]) {
    // SAFETY: value copied out before the update.
    if let Some(n) = unsafe { PL_GWLB_NEIGH.get(key) }
        && n.mac != mac
    {
        let _ = PL_GWLB_NEIGH.insert(key, Neighbor { mac, _pad: [0; 2] }, BPF_EXIST as u64);
    }
}

/// The frame becomes an ARP request for `target` from `mac` (RFC 826; sender address
/// 0.0.0.0 as in RFC 5227 probes, which hosts answer), to broadcast.
#[inline(always)]
pub fn probe(ctx: &XdpContext, target: &[u8; 4], mac: &[u8; 6]) -> Result<(), Reason> {
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, FRAME_LEN as i32 - frame_len(ctx) as i32) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let f = mut_at::<[u8; FRAME_LEN]>(ctx, 0, Reason::DropTruncatedEthernet)?;
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..22].copy_from_slice(&REQUEST_HEAD);
    f[22..28].copy_from_slice(mac);
    f[28..38].copy_from_slice(&[0; 10]);
    f[38..42].copy_from_slice(target);
    Ok(())
}
