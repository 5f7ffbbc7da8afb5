//! What of a VPC's traffic the forwarder host's own stack may see. A VPC-facing interface
//! belongs to the tenants' networks, not to the host: unless the operator says the
//! interface also carries the host's own traffic (`IFACE_FLAG_HOST_TRAFFIC`), the kernel
//! gets an IPv4 packet only when it comes from a peer the host talks to in that VPC and is
//! addressed to the host's own address there (`PL_HOST`: the replies to its health
//! probes), and an ARP packet only about the host's own address. Everything else that is
//! not the data path's is dropped and counted (`drop_host_isolated`): the host never
//! answers one VPC's packet, least of all into another VPC.

use aya_ebpf::bindings::xdp_action;
use privatelink_common::{
    HOST_ADDR, HOST_PEER, IFACE_FLAG_HOST_TRAFFIC, IfaceInfo, Reason, VpcAddr,
};

use crate::{Verdict, maps::PL_HOST};

/// `addr`'s role for the host in the interface's VPC (`HOST_ADDR`, `HOST_PEER` or 0).
#[inline(always)]
fn role(iface: &IfaceInfo, addr: [u8; 4]) -> u32 {
    let key = VpcAddr {
        vpc_id: iface.vpc_id,
        addr,
    };
    // SAFETY: the value is copied out of a map only the daemon writes.
    unsafe { PL_HOST.get(key) }.copied().unwrap_or(0)
}

#[inline(always)]
fn shared(iface: &IfaceInfo) -> Option<Verdict> {
    (iface.flags & IFACE_FLAG_HOST_TRAFFIC != 0)
        .then_some((xdp_action::XDP_PASS, Reason::PassUnrelated))
}

/// An IPv4 packet that is not the data path's.
#[inline(always)]
pub fn ipv4(iface: &IfaceInfo, src: [u8; 4], dst: [u8; 4]) -> Verdict {
    if let Some(v) = shared(iface) {
        return v;
    }
    if role(iface, dst) == HOST_ADDR && role(iface, src) == HOST_PEER {
        return (xdp_action::XDP_PASS, Reason::PassHost);
    }
    (xdp_action::XDP_DROP, Reason::DropHostIsolated)
}

/// An ARP packet about an address that is not the data path's.
#[inline(always)]
pub fn arp(iface: &IfaceInfo, target: [u8; 4]) -> Verdict {
    if let Some(v) = shared(iface) {
        return (v.0, Reason::ArpPass);
    }
    if role(iface, target) == HOST_ADDR {
        return (xdp_action::XDP_PASS, Reason::ArpPass);
    }
    (xdp_action::XDP_DROP, Reason::DropHostIsolated)
}

/// A frame that is neither IPv4 nor ARP (IPv6, LLDP, ...).
#[inline(always)]
pub fn other(iface: &IfaceInfo) -> Verdict {
    shared(iface).unwrap_or((xdp_action::XDP_DROP, Reason::DropHostIsolated))
}
