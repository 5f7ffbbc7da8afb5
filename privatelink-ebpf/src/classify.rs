//! The entry program's work: what a frame is and which path takes it. ARP is answered
//! (`arp`); an IPv4 packet is tried on the established fast path (`established`, which
//! checks what it reads itself), and otherwise validated (`packet`), classified by its
//! destination (an endpoint ENI, a SNAT address, GENEVE from an appliance, a routed
//! prefix) and tail-called into its path
//! program (`paths`, slots from the path table in privatelink-common); IPv6 is tried on
//! its established fast path (`established6`) and otherwise goes to its own program
//! (`PATH_IPV6`). Everything else is the host's to judge (`host`).
//! Everything here is inlined into the entry program (see `arp::handle`), whose only
//! BPF-to-BPF call is the established paths' partner lookup on a FIN, an RST or a
//! handshake's last step (`conntrack::track`). The layer under `main` only.

use aya_ebpf::{bindings::xdp_action, btf_maps::lpm_trie::Key, programs::XdpContext};
use privatelink_common::{
    ENI_FLAG_FLOW_LOG, ENI_FLAG_GWLB, EndpointEni, FLOW_INGRESS, GENEVE_PORT, IFACE_FLAG_ADDRESSES,
    IFACE_FLAG_APPLIANCES, IFACE_FLAG_GATEWAYS, IfaceInfo, PATH_FORWARD, PATH_GWLB_RETURN,
    PATH_GWLB_STEER, PATH_ICMP_ENDPOINT, PATH_ICMP_SNAT, PATH_IPV6, PATH_REPLY, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, Reason, VpcAddr,
};

use crate::{
    arp,
    checksum::verify_checksum,
    endpoint::check_forwarding,
    established, established6, flowlog, gwlb, host,
    maps::{self, PL_ENDPOINTS, PL_GW_ROUTES, PL_PATHS, PL_SNAT_ADDRS},
    packet::{Packet, packet},
    parse::{self, ETH_LEN, Ipv4Ext, Ipv4Hdr, Ports, be16, mut_at},
    verdict::{Verdict, settle, settle_for},
};

/// A frame on an attached interface, by its EtherType; the verdict packed with the
/// counter slot of the endpoint it is counted for (`crate::verdict`).
#[inline(always)]
pub fn frame(ctx: &XdpContext) -> u64 {
    let Ok(eth) = mut_at::<parse::EthHdr>(ctx, 0, Reason::DropTruncatedEthernet) else {
        return settle(Err(Reason::DropTruncatedEthernet));
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    // Read first: a flow checked against maps the daemon changes meanwhile keeps the older
    // epoch, and its next packet checks again.
    let epoch = maps::epoch();
    let Some(iface) = maps::iface(ifindex, epoch) else {
        return settle(Ok((xdp_action::XDP_PASS, Reason::PassNotAttached)));
    };
    match u16::from_be(eth.ether_type) {
        parse::ETH_P_IP => ipv4(ctx, ifindex, &iface, epoch),
        parse::ETH_P_ARP => arp::handle(ctx, &iface),
        parse::ETH_P_IPV6 => {
            // An IPv6 flow checked under this epoch is forwarded here, without the IPv6
            // program's tail call; anything else goes on to it.
            let fast = established6::established6(ctx, &iface, epoch);
            if fast != established::NOT_ESTABLISHED {
                return fast;
            }
            ipv6(ctx)
        }
        _ => settle(Ok(host::other(&iface))),
    }
}

/// An IPv4 packet: the established fast path, or the path its destination calls for.
/// `epoch`: read before the interface was.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, ifindex: u32, iface: &IfaceInfo, epoch: u32) -> u64 {
    let fast = established::established(ctx, iface, ifindex, epoch);
    if fast != established::NOT_ESTABLISHED {
        return fast;
    }
    let (pkt, ip) = match packet(ctx, ifindex, epoch) {
        Ok(p) => p,
        Err(r) => return settle(Err(r)),
    };
    let mut entry = EndpointEni::default();
    let r = classify(ctx, iface, &pkt, ip, &mut entry);
    if r.is_err() && entry.flags & ENI_FLAG_FLOW_LOG != 0 {
        // What an endpoint with flow logs refused before its path: a REJECT record.
        let ev = flowlog::of_frame(ctx, &pkt, entry.counter_slot, FLOW_INGRESS);
        flowlog::report_verdict(ev, &r);
    }
    settle_for(entry.counter_slot, r)
}

/// An IPv6 frame: the IPv6 program takes it (`crate::ipv6`), tail-called so that none of
/// its work weighs on this program (or on the verifier's walk of it).
#[inline(always)]
fn ipv6(ctx: &XdpContext) -> u64 {
    // SAFETY: a tail call on this run's context; it returns only if the slot is empty.
    unsafe { PL_PATHS.tail_call(ctx, PATH_IPV6) };
    settle(Err(Reason::DropNoPathProgram))
}

/// The full path's classification: which path program takes the packet (tail-called, so
/// this returns only on a verdict of its own). `entry` is the endpoint it is addressed to,
/// once found.
#[inline(always)]
fn classify(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    ip: &mut Ipv4Hdr,
    entry: &mut EndpointEni,
) -> Result<Verdict, Reason> {
    let (pkt, epoch) = (*pkt, pkt.epoch);
    let hlen = pkt.l4 - ETH_LEN;
    let dst = VpcAddr {
        vpc_id: iface.vpc_id,
        addr: ip.dst_addr,
    };
    // What the destination is to us. Each path past this point is a program of its own
    // (`crate::paths`), tail-called with what was found here.
    // Only a VPC that holds endpoint ENIs or SNAT addresses has its destinations looked up.
    let ours = iface.flags & IFACE_FLAG_ADDRESSES != 0;
    // The paths past this point check the packet against the daemon's maps and may stamp
    // its flow with `epoch`: those maps are read after the epoch was
    // (`maps::order_after_epoch`). Not before GENEVE from an appliance on a VPC of no
    // addresses of ours: its return path stamps nothing, and every such packet comes here.
    if ours {
        maps::order_after_epoch();
    }
    // SAFETY: values are copied out of the maps.
    let target = if let Some(eni) = ours
        .then(|| unsafe { PL_ENDPOINTS.get(dst) }.copied())
        .flatten()
    {
        *entry = eni;
        Target::Endpoint
    } else if ours && unsafe { PL_SNAT_ADDRS.get(dst) }.is_some() {
        Target::Snat
    } else if iface.flags & IFACE_FLAG_APPLIANCES != 0
        && pkt.proto == PROTO_UDP
        && pkt.l4 + 8 <= pkt.end
        && be16(mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4)?.dport) == GENEVE_PORT
    {
        // GENEVE coming back from a GWLB appliance.
        Target::Geneve
    } else if iface.flags & IFACE_FLAG_GATEWAYS == 0 {
        return Ok(host::ipv4(ctx, iface, &pkt, ip));
    } else if let Some(gw) = {
        if !ours {
            maps::order_after_epoch();
        }
        PL_GW_ROUTES.get(&Key::new(64, dst)).copied()
    } {
        // Gateway and GWLB endpoints: the VPC routes prefixes to us.
        *entry = gw;
        Target::Route
    } else {
        return Ok(host::ipv4(ctx, iface, &pkt, ip));
    };
    verify_checksum(ctx, hlen)?;
    if ip.is_fragment() {
        return Err(Reason::DropFragment);
    }
    let endpoint = matches!(target, Target::Endpoint | Target::Route);
    if endpoint {
        check_forwarding(entry)?;
    }
    let path = match (target, pkt.proto) {
        (Target::Route, _) if entry.flags & ENI_FLAG_GWLB != 0 => PATH_GWLB_STEER,
        (Target::Geneve, _) => PATH_GWLB_RETURN,
        (Target::Snat, PROTO_TCP | PROTO_UDP) => PATH_REPLY,
        (Target::Endpoint | Target::Route, PROTO_TCP | PROTO_UDP) => PATH_FORWARD,
        (Target::Endpoint, PROTO_ICMP) => PATH_ICMP_ENDPOINT,
        // Errors about our flows (a gateway flow's replies, too: PMTU discovery needs them).
        (Target::Snat | Target::Route, PROTO_ICMP) => PATH_ICMP_SNAT,
        (Target::Snat, _) => return Err(Reason::DropNoFlow),
        _ => return Err(Reason::DropUnsupportedProtocol),
    };
    if target == Target::Geneve && !ours {
        // A VPC with no endpoint ENI and no SNAT address (an appliance VPC, as usually):
        // the return path runs here, inlined, without the handoff and the tail call. Its
        // verdict is counted for the appliance flow's counter slot.
        return gwlb::from_appliance_checked(ctx, iface, &pkt, &mut entry.counter_slot, true);
    }
    if !maps::hand_off(iface, entry, epoch) {
        return Err(Reason::DropNoPathProgram);
    }
    // SAFETY: a tail call on this run's context, with the handoff just written.
    unsafe { PL_PATHS.tail_call(ctx, path) };
    // Only if the loader left the slot empty.
    Err(Reason::DropNoPathProgram)
}

/// What a destination address is to the data path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// An endpoint ENI.
    Endpoint,
    /// A SNAT address: replies of NATed flows.
    Snat,
    /// The load balancer's address on an appliance VPC's port, UDP 6081.
    Geneve,
    /// A prefix routed to a gateway or GWLB endpoint.
    Route,
}
