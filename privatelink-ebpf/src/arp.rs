//! ARP on a VPC-facing interface: answer for ENI and SNAT addresses (the forwarder owns
//! them), and learn every sender's MAC as a next hop of that VPC.

use aya_ebpf::{
    bindings::{BPF_EXIST, xdp_action},
    programs::XdpContext,
};
use privatelink_common::{IfaceInfo, Neighbor, Reason, VpcAddr};

use crate::{
    Verdict,
    maps::{PL_ENDPOINTS, PL_GW_ADDRS, PL_NEIGHBORS, PL_SNAT_ADDRS},
    parse::{ArpHdr, ETH_LEN, EthHdr, be16, mut_at, set_macs},
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// Inlined into the entry program: a program that tail-calls may also make BPF-to-BPF
/// calls only where the JIT supports the mix (x86-64 since 5.10, arm64 since 6.0), so the
/// entry point makes none.
#[inline(always)]
pub fn handle(ctx: &XdpContext, iface: &IfaceInfo) -> u64 {
    crate::settle(handle_checked(ctx, iface))
}

#[inline(always)]
fn handle_checked(ctx: &XdpContext, iface: &IfaceInfo) -> Result<Verdict, Reason> {
    let arp = mut_at::<ArpHdr>(ctx, ETH_LEN, Reason::DropBadArp)?;
    if be16(arp.htype) != 1 || be16(arp.ptype) != 0x0800 || arp.hlen != 6 || arp.plen != 4 {
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
    let shared = iface.flags & privatelink_common::IFACE_FLAG_HOST_TRAFFIC != 0;
    if op != ARP_REQUEST && (ours || (arp.tpa == [0; 4] && !shared)) {
        // A reply to the data path's own request (from a SNAT address, or a GWLB probe
        // from 0.0.0.0): its sender was learned above; the host's stack has no use for it
        // (but for its own duplicate address detection on a shared interface).
        return Ok((xdp_action::XDP_DROP, Reason::ArpLearned));
    }
    if !ours {
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
    crate::gwlb::learn(key, mac);
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
