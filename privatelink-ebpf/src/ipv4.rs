//! IPv4: validate the header, decide whether the packet is ours (to an ENI, or a reply to a
//! SNAT address), and hand it to the right path. Everything else passes to the kernel.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::XdpContext};
use privatelink_common::{
    ENI_FLAG_GWLB, EndpointEni, GENEVE_PORT, IFACE_FLAG_APPLIANCES, IFACE_FLAG_GATEWAYS, IfaceInfo,
    PATH_FORWARD, PATH_GWLB_RETURN, PATH_GWLB_STEER, PATH_ICMP_ENDPOINT, PATH_ICMP_SNAT,
    PATH_REPLY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Reason, VpcAddr, csum,
};

use crate::{
    Verdict, conntrack,
    maps::{self, Handoff, PL_ENDPOINTS, PL_GW_ROUTES, PL_HANDOFF, PL_PATHS, PL_SNAT_ADDRS},
    parse::{ETH_LEN, Ipv4Ext, Ipv4Hdr, Ports, be16, frame_len, mut_at, ne16, ptr_at},
    unpack,
};

/// A validated IPv4 packet: where its L4 header starts and where the IP packet ends.
#[derive(Clone, Copy)]
pub struct Packet {
    pub ifindex: u32,
    pub l4: usize,
    pub end: usize,
    pub proto: u8,
    /// `PL_EPOCH` as it was before any lookup of this packet (what flows are stamped with).
    pub epoch: u32,
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, ifindex: u32, iface: &IfaceInfo) -> Result<Verdict, Reason> {
    // Read first: a flow checked against maps the daemon changes meanwhile keeps the older
    // epoch, and its next packet checks again.
    let epoch = maps::epoch();
    let (pkt, ip) = packet(ctx, ifindex, epoch)?;
    let hlen = pkt.l4 - ETH_LEN;
    let fast = conntrack::established(ctx, iface, &pkt);
    if fast != conntrack::NOT_ESTABLISHED {
        return Ok(unpack(fast));
    }
    let dst = VpcAddr {
        vpc_id: iface.vpc_id,
        addr: ip.dst_addr,
    };
    // What the destination is to us. Each path past this point is a program of its own
    // (`crate::paths`), tail-called with what was found here.
    let mut entry = EndpointEni::default();
    // SAFETY: values are copied out of the maps.
    let target = if let Some(eni) = unsafe { PL_ENDPOINTS.get(dst) }.copied() {
        entry = eni;
        Target::Endpoint
    } else if unsafe { PL_SNAT_ADDRS.get(dst) }.is_some() {
        Target::Snat
    } else if iface.flags & IFACE_FLAG_APPLIANCES != 0
        && pkt.proto == PROTO_UDP
        && pkt.l4 + 8 <= pkt.end
        && be16(mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4)?.dport) == GENEVE_PORT
    {
        // GENEVE coming back from a GWLB appliance.
        Target::Geneve
    } else if iface.flags & IFACE_FLAG_GATEWAYS == 0 {
        return Ok(crate::host::ipv4(ctx, iface, &pkt, ip));
    } else if let Some(gw) = PL_GW_ROUTES.get(&Key::new(64, dst)).copied() {
        // Gateway and GWLB endpoints: the VPC routes prefixes to us.
        entry = gw;
        Target::Route
    } else {
        return Ok(crate::host::ipv4(ctx, iface, &pkt, ip));
    };
    verify_checksum(ctx, hlen)?;
    if ip.is_fragment() {
        return Err(Reason::DropFragment);
    }
    let endpoint = matches!(target, Target::Endpoint | Target::Route);
    if endpoint {
        check_forwarding(&entry)?;
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
    let Some(slot) = PL_HANDOFF.get_ptr_mut(0) else {
        return Err(Reason::DropNoPathProgram);
    };
    // SAFETY: this CPU's slot, valid for this run; the path program reads it right after.
    unsafe {
        *slot = Handoff {
            iface: *iface,
            entry,
            epoch,
        };
        PL_PATHS.tail_call(ctx, path);
    }
    // Only if the loader left the slot empty.
    Err(Reason::DropNoPathProgram)
}

/// The IPv4 header at the frame's start, validated, and where its parts lie.
#[inline(always)]
#[allow(clippy::mut_from_ref)]
pub fn packet(
    ctx: &XdpContext,
    ifindex: u32,
    epoch: u32,
) -> Result<(Packet, &mut Ipv4Hdr), Reason> {
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let hlen = ip.hdr_len();
    if ip.vihl >> 4 != 4 || hlen < 20 {
        return Err(Reason::DropBadIpHeader);
    }
    let tot = be16(ip.tot_len) as usize;
    if tot < hlen {
        return Err(Reason::DropBadIpHeader);
    }
    // Trailing bytes (Ethernet padding) are allowed; a short frame is not.
    if ETH_LEN + tot > frame_len(ctx) {
        return Err(Reason::DropTruncatedIp);
    }
    let pkt = Packet {
        ifindex,
        l4: ETH_LEN + hlen,
        end: ETH_LEN + tot,
        proto: ip.proto,
        epoch,
    };
    Ok((pkt, ip))
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

/// Only a whitelisted consumer's `Connected` endpoint forwards.
#[inline(always)]
pub fn check_forwarding(eni: &EndpointEni) -> Result<(), Reason> {
    if !eni.is_whitelisted() {
        return Err(Reason::DropNotWhitelisted);
    }
    if !eni.is_connected() {
        return Err(Reason::DropNotConnected);
    }
    Ok(())
}

/// The same check for a gateway flow, found by its destination in the consumer VPC.
#[inline(always)]
pub fn check_gateway_at(vpc_id: u32, addr: [u8; 4]) -> Result<EndpointEni, Reason> {
    match PL_GW_ROUTES
        .get(&Key::new(64, VpcAddr { vpc_id, addr }))
        .copied()
    {
        Some(gw) => check_forwarding(&gw).map(|()| gw),
        None => Err(Reason::DropNotConnected),
    }
}

/// The same check for a flow's endpoint, found by its ENI address; returns the endpoint.
#[inline(always)]
pub fn check_endpoint_at(vpc_id: u32, addr: [u8; 4]) -> Result<EndpointEni, Reason> {
    // SAFETY: the value is copied out of the map.
    match unsafe { PL_ENDPOINTS.get(VpcAddr { vpc_id, addr }) }.copied() {
        Some(eni) => check_forwarding(&eni).map(|()| eni),
        None => Err(Reason::DropNotConnected),
    }
}

/// RFC 1812: a router verifies the header checksum before forwarding.
#[inline(always)]
fn verify_checksum(ctx: &XdpContext, hlen: usize) -> Result<(), Reason> {
    verify_checksum_at(ctx, ETH_LEN, hlen)
}

/// The same for an IPv4 header of `hlen` bytes at `off` (an inner one, say).
#[inline(always)]
pub fn verify_checksum_at(ctx: &XdpContext, off: usize, hlen: usize) -> Result<(), Reason> {
    let sum = if hlen == 20 {
        // The usual header, under one bounds check.
        // SAFETY: 20 bytes at `off` are inside the frame (checked by `ptr_at`); IPv4
        // headers lie at even offsets of the 2-aligned frame.
        sum_header(unsafe { &*ptr_at::<[u16; 10]>(ctx, off, Reason::DropTruncatedIp)? })
    } else {
        sum_words::<15>(ctx, off, hlen)?
    };
    if csum::fold(sum) != 0xffff {
        return Err(Reason::DropBadIpChecksum);
    }
    Ok(())
}

/// The ones' complement sum (unfolded) of an IPv4 header without options, read as the
/// ten 16-bit words it is (in memory order: the folded sum is then in memory order too).
#[inline(always)]
pub fn sum_header(h: &[u16; 10]) -> u32 {
    let mut sum: u32 = 0;
    for w in h {
        sum += *w as u32;
    }
    sum
}

/// The ones' complement sum (unfolded) of `len` bytes at `off`, read as 4-byte words;
/// `len` is a multiple of 4 and at most `4 * WORDS`.
#[inline(always)]
pub fn sum_words<const WORDS: usize>(
    ctx: &XdpContext,
    off: usize,
    len: usize,
) -> Result<u32, Reason> {
    let mut sum: u32 = 0;
    for i in 0..WORDS {
        if i * 4 >= len {
            break;
        }
        let w = ptr_at::<[u8; 4]>(ctx, off + i * 4, Reason::DropTruncatedIp)?;
        // SAFETY: bounds checked by `ptr_at`.
        let w = unsafe { *w };
        sum += ne16([w[0], w[1]]) as u32 + ne16([w[2], w[3]]) as u32;
    }
    Ok(sum)
}
