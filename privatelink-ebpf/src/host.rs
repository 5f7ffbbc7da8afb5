//! What of a VPC's traffic the forwarder host's own stack may see. A VPC-facing interface
//! belongs to the tenants' networks, not to the host: unless the operator says the
//! interface also carries the host's own traffic (`IFACE_FLAG_HOST_TRAFFIC`), the kernel
//! gets an IPv4 packet only when it is addressed to the host's own address in that VPC and
//! comes from a peer the host talks to there, from the port it talks to, as an answer (TCP
//! with ACK or RST: never a SYN alone, which would open a connection to the host), or is
//! an ICMP error from such a peer (`PL_HOST`: the answers to its health probes), never a
//! fragment; and an ARP packet only about the host's own address, from such a peer.
//! At a VPC's DNS resolver address (`HOST_DNS`) the host is the server: it gets UDP and TCP
//! to port 53 from any sender of the VPC (any TCP flags), never a fragment, and the ARP
//! replies to its own requests for its clients' MACs (`arp` answers requests for the
//! address itself). Everything else that is not the data path's is dropped and counted
//! (`drop_host_isolated`): the host never answers a tenant's packet, least of all into
//! another VPC.
//!
//! The end of a packet's walk for what the classifier (and ARP) find is not the data
//! path's. Uses only `parse`, `packet`, `maps`, `verdict`.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use privatelink_common::{
    DNS_PORT, HOST_ADDR, HOST_DNS, HOST_PEER, IFACE_FLAG_HOST_TRAFFIC, IfaceInfo, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, Reason, VpcAddr,
};

use crate::{
    maps::PL_HOST,
    packet::Packet,
    parse::{ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, Ipv4Ext, Ipv4Hdr, Ports, TcpHdr, be16, mut_at},
    verdict::Verdict,
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
fn shared(iface: &IfaceInfo) -> bool {
    iface.flags & IFACE_FLAG_HOST_TRAFFIC != 0
}

const ISOLATED: Verdict = (xdp_action::XDP_DROP, Reason::DropHostIsolated);

/// An IPv4 packet that is not the data path's.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet, ip: &Ipv4Hdr) -> Verdict {
    if shared(iface) {
        return (xdp_action::XDP_PASS, Reason::PassUnrelated);
    }
    // The probes are sent with DF: a fragment is nobody's answer; DNS queries fit a
    // datagram (and a TCP segment) whole.
    if ip.is_fragment() {
        return ISOLATED;
    }
    let dst = role(iface, ip.dst_addr);
    if dst == HOST_DNS {
        return dns(ctx, pkt);
    }
    if dst != HOST_ADDR {
        return ISOLATED;
    }
    let peer = role(iface, ip.src_addr);
    if peer & 0xff != HOST_PEER {
        return ISOLATED;
    }
    let (proto, port) = ((peer >> 8) as u8, (peer >> 16) as u16);
    let admitted = if pkt.proto == PROTO_ICMP {
        // Errors about the host's own probes (unreachable, time exceeded).
        match mut_at::<[u8; 2]>(ctx, pkt.l4, Reason::DropTruncatedL4) {
            Ok(t) => t[0] == ICMP_DEST_UNREACH || t[0] == ICMP_TIME_EXCEEDED,
            Err(_) => false,
        }
    } else if pkt.proto == proto && proto == PROTO_TCP {
        // An answer on a connection the host opened: ACK or RST set.
        match mut_at::<TcpHdr>(ctx, pkt.l4, Reason::DropTruncatedL4) {
            Ok(t) => be16(t.source) == port && (t.ack() != 0 || t.rst() != 0),
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

/// A packet to the VPC's resolver address: a query (UDP or TCP to port 53), from anyone
/// in the VPC, passes; anything else there is dropped, and so is a query from source port
/// 0 (no answer can reach it: the server would drop it and log each one).
#[inline(always)]
fn dns(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    if pkt.proto != PROTO_UDP && pkt.proto != PROTO_TCP {
        return ISOLATED;
    }
    match mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4) {
        Ok(p) if be16(p.dport) == DNS_PORT && p.sport != [0, 0] => {
            (xdp_action::XDP_PASS, Reason::PassDns)
        }
        _ => ISOLATED,
    }
}

/// Whether `addr` is the VPC's resolver address (`arp` answers requests for it, and
/// passes the replies to it: the kernel's own requests for its clients' MACs).
#[inline(always)]
pub fn is_resolver(iface: &IfaceInfo, addr: [u8; 4]) -> bool {
    role(iface, addr) == HOST_DNS
}

/// An ARP packet from `sender` about `target`, an address that is not the data path's.
/// The kernel learns every sender it hears from: only the peers it talks to may.
#[inline(always)]
pub fn arp(iface: &IfaceInfo, sender: [u8; 4], target: [u8; 4]) -> Verdict {
    if shared(iface)
        || (role(iface, target) == HOST_ADDR && role(iface, sender) & 0xff == HOST_PEER)
    {
        return (xdp_action::XDP_PASS, Reason::ArpPass);
    }
    ISOLATED
}

/// A frame that is neither IPv4 nor ARP (IPv6, LLDP, ...).
#[inline(always)]
pub fn other(iface: &IfaceInfo) -> Verdict {
    if shared(iface) {
        (xdp_action::XDP_PASS, Reason::PassUnrelated)
    } else {
        ISOLATED
    }
}
