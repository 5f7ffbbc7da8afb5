//! What of a VPC's traffic the forwarder host's own stack may see. A VPC-facing interface
//! belongs to the tenants' networks, not to the host: unless the operator says the
//! interface also carries the host's own traffic (`IFACE_FLAG_HOST_TRAFFIC`), the kernel
//! gets an IPv4 packet only when it is addressed to the host's own address in that VPC and
//! comes from a peer the host talks to there, from the port it talks to (`PL_HOST`: the
//! answers to its health probes), or is an ICMP error from such a peer; and an ARP packet
//! only about the host's own address. Everything else that is not the data path's is
//! dropped and counted (`drop_host_isolated`): the host never answers a tenant's packet,
//! least of all into another VPC.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use privatelink_common::{
    HOST_ADDR, HOST_PEER, IFACE_FLAG_HOST_TRAFFIC, IfaceInfo, PROTO_ICMP, Reason, VpcAddr,
};

use crate::{
    Verdict,
    ipv4::Packet,
    maps::PL_HOST,
    parse::{Ports, be16, mut_at},
};

/// What `addr` is to the host in the interface's VPC (a `PL_HOST` value, 0 if nothing).
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

const ISOLATED: Verdict = (xdp_action::XDP_DROP, Reason::DropHostIsolated);

/// An IPv4 packet that is not the data path's.
#[inline(always)]
pub fn ipv4(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    src: [u8; 4],
    dst: [u8; 4],
) -> Verdict {
    if let Some(v) = shared(iface) {
        return v;
    }
    if role(iface, dst) != HOST_ADDR {
        return ISOLATED;
    }
    let peer = role(iface, src);
    if peer & 0xff != HOST_PEER {
        return ISOLATED;
    }
    let (proto, port) = ((peer >> 8) as u8, (peer >> 16) as u16);
    let admitted = if pkt.proto == PROTO_ICMP {
        // Errors about the host's own probes (unreachable, time exceeded).
        match mut_at::<[u8; 2]>(ctx, pkt.l4, Reason::DropTruncatedL4) {
            Ok(t) => t[0] == 3 || t[0] == 11,
            Err(_) => false,
        }
    } else if pkt.proto == proto {
        match mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4) {
            Ok(p) => be16(p.sport) == port,
            Err(_) => false,
        }
    } else {
        false
    };
    if admitted {
        (xdp_action::XDP_PASS, Reason::PassHost)
    } else {
        ISOLATED
    }
}

/// An ARP packet about an address that is not the data path's.
#[inline(always)]
pub fn arp(iface: &IfaceInfo, target: [u8; 4]) -> Verdict {
    if shared(iface).is_some() || role(iface, target) == HOST_ADDR {
        return (xdp_action::XDP_PASS, Reason::ArpPass);
    }
    ISOLATED
}

/// A frame that is neither IPv4 nor ARP (IPv6, LLDP, ...).
#[inline(always)]
pub fn other(iface: &IfaceInfo) -> Verdict {
    shared(iface).unwrap_or(ISOLATED)
}
