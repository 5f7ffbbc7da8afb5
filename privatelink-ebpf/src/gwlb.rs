//! Gateway Load Balancer endpoints. A packet the VPC routes to a GWLB endpoint is sent to
//! an appliance in GENEVE (RFC 8926) with the three options AWS-style appliances expect;
//! what the appliance sends back is checked against the flow it belongs to, decapsulated
//! and delivered to the inner destination.
//!
//! Both directions of a flow are keyed in the consumer VPC and record the appliance chosen
//! by a symmetric hash, so a flow and its reply reach the same appliance with the same
//! flow cookie.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST, BPF_NOEXIST, xdp_action},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use privatelink_common::{
    DIR_ORIGINAL, DIR_REPLY, ENI_FLAG_REBALANCE, ENI_FLAG_STICKY_2, ENI_FLAG_STICKY_3, EndpointEni,
    FLOW_GWLB, FlowEntry, FlowKey, GENEVE_OPTIONS_LEN, GENEVE_PORT, GWLB_OPT_ATTACHMENT_ID,
    GWLB_OPT_ENDPOINT_ID, GWLB_OPT_FLOW_COOKIE, GWLB_OPTION_CLASS, GWLB_OVERHEAD, GwlbZone,
    IfaceInfo, Neighbor, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Reason, VpcAddr, csum, hash,
};

use crate::{
    Verdict, conntrack,
    ipv4::{Packet, sum_words, verify_checksum_at},
    maps::{
        PL_CONNTRACK, PL_GWLB_APPLS, PL_GWLB_NEIGH, PL_GWLB_TARGETS, PL_NEIGHBORS, PL_VPC_PORTS,
        config,
    },
    nat::redirect_to,
    parse::{
        ETH_LEN, EthHdr, Ipv4Ext, Ipv4Hdr, Ports, TcpHdr, be16, frame_len, l4_consistent, mut_at,
        set_macs,
    },
};

/// How often (at most) a flow checks that its appliance is still one to send to.
const APPLIANCE_RECHECK_NS: u64 = 1_000_000_000;
const GENEVE_PROTO_IPV4: u16 = 0x0800;
/// Source ports of the outer UDP (RFC 8926 §3.3: from a hash of the inner flow, in the
/// ephemeral range).
const SPORT_BASE: u16 = 49152;
/// The most options we walk in a returned packet (AWS sends three).
const MAX_OPTIONS: usize = 8;

/// Outer IPv4 + UDP + GENEVE + the three GWLB options, as laid out on the wire
/// (RFC 791, RFC 768, RFC 8926 §3.4/§3.5).
#[repr(C)]
struct Encap {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frags: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    udp_len: [u8; 2],
    udp_check: [u8; 2],
    /// Ver (2 bits) and Opt Len (6 bits, in 4-byte words).
    ver_opt_len: u8,
    /// O, C and reserved bits.
    flags: u8,
    protocol: [u8; 2],
    vni: [u8; 3],
    reserved: u8,
    opt_endpoint: [u8; 4],
    endpoint_id: [u8; 8],
    opt_attachment: [u8; 4],
    attachment_id: [u8; 8],
    opt_cookie: [u8; 4],
    cookie: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Encap>() == GWLB_OVERHEAD);

/// The inner flow's ports as the flow table keys them: TCP/UDP ports, the echo identifier
/// on both sides for ICMP echo, zero for anything else. Also returns the TCP flags.
#[inline(always)]
fn inner_ports(
    ctx: &XdpContext,
    l4: usize,
    end: usize,
    proto: u8,
) -> Result<(u16, u16, u8), Reason> {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            l4_consistent(ctx, l4, end, proto)?;
            let ports = mut_at::<Ports>(ctx, l4, Reason::DropTruncatedL4)?;
            let flags = if proto == PROTO_TCP {
                crate::parse::tcp_flags(mut_at::<TcpHdr>(ctx, l4, Reason::DropTruncatedL4)?)
            } else {
                0
            };
            Ok((be16(ports.sport), be16(ports.dport), flags))
        }
        PROTO_ICMP => {
            if l4 + 8 > end {
                return Err(Reason::DropTruncatedL4);
            }
            let h = mut_at::<[u8; 8]>(ctx, l4, Reason::DropTruncatedL4)?;
            if h[0] == 0 || h[0] == 8 {
                let id = be16([h[4], h[5]]);
                Ok((id, id, 0))
            } else {
                Ok((0, 0, 0))
            }
        }
        _ => Ok((0, 0, 0)),
    }
}

#[inline(always)]
fn cookie_of(key: &FlowKey) -> u32 {
    hash::symmetric_hash(key.src, key.dst, key.sport, key.dport, key.proto, 5, 0)
}

/// A packet routed to a GWLB endpoint: to its flow's appliance, in GENEVE.
/// Non-inlined (its own BPF stack frame); see `crate::settle`.
#[inline(never)]
pub fn steer(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet, route: &EndpointEni) -> u64 {
    crate::settle(steer_checked(ctx, iface, pkt, route))
}

#[inline(always)]
fn steer_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    route: &EndpointEni,
) -> Result<Verdict, Reason> {
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    let (sport, dport, tcp_flags) = inner_ports(ctx, pkt.l4, pkt.end, pkt.proto)?;
    let key = FlowKey {
        vpc_id: iface.vpc_id,
        src,
        dst,
        sport,
        dport,
        proto: pkt.proto,
        _pad: 0,
        _pad2: 0,
    };
    let t = conntrack::now();
    let cfg = config();
    let existing = match PL_CONNTRACK.get_ptr_mut(key) {
        // SAFETY: the pointer from a successful lookup is valid for this program run.
        Some(p) => {
            let e = unsafe { &*p };
            if e.flags & FLOW_GWLB != 0
                && e.endpoint_id == route.endpoint_id
                && conntrack::alive(e, &key, t, &cfg)
            {
                Some(p)
            } else {
                None
            }
        }
        None => None,
    };
    let entry = match existing {
        Some(p) => p,
        None => create(ctx, &key, route, t)?,
    };
    // SAFETY: valid for this run.
    let e = unsafe { &mut *entry };
    if t.saturating_sub(e.checked_ns) > APPLIANCE_RECHECK_NS {
        recheck(e, &key, route, t)?;
    }
    let dir = e.direction;
    conntrack::track(e, &key, tcp_flags, conntrack::SeqAck::default(), t, dir);

    let inner_len = pkt.end - ETH_LEN;
    let mtu = e.out_mtu as usize;
    if mtu >= 2 * GWLB_OVERHEAD && inner_len + GWLB_OVERHEAD > mtu {
        return frag_needed(ctx, iface, route, mtu - GWLB_OVERHEAD);
    }
    // IPv4 forwarding: the TTL goes down by one on its way through the endpoint.
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let old = ip.ttl_word();
    ip.ttl -= 1;
    ip.check = csum::replace16(u16::from_ne_bytes(ip.check), old, ip.ttl_word()).to_ne_bytes();
    let (out_ifindex, src_mac, dst_mac) = (e.out_ifindex, e.src_mac, e.dst_mac);
    let (outer_src, appliance) = (e.new_src, e.new_dst);
    encap(ctx, &key, route.endpoint_id, inner_len)?;
    let h = mut_at::<Encap>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    h.src = outer_src;
    h.dst = appliance;
    let c = !csum::fold(sum_words::<5>(ctx, ETH_LEN, 20)?);
    mut_at::<Encap>(ctx, ETH_LEN, Reason::DropTruncatedIp)?.check = c.to_ne_bytes();
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, dst_mac, src_mac);
    eth.ether_type = 0x0800u16.to_be();
    redirect_to(out_ifindex, Reason::GwlbToAppliance)
}

/// Every so often a flow looks at its appliance: one that left the service, or (with
/// `rebalance`) turned unhealthy, is replaced by the appliance the hash picks now. Both
/// directions come to the same choice on their own: the hash is symmetric.
#[inline(always)]
fn recheck(e: &mut FlowEntry, key: &FlowKey, route: &EndpointEni, t: u64) -> Result<(), Reason> {
    e.checked_ns = t;
    let here = VpcAddr {
        vpc_id: e.out_vpc_id,
        addr: e.new_dst,
    };
    // SAFETY: copied out.
    let keep = match unsafe { PL_GWLB_APPLS.get(here) } {
        Some(a) => a.healthy != 0 || route.flags & ENI_FLAG_REBALANCE == 0,
        None => false,
    };
    if !keep {
        let (addr, mac) = choose(key, route)?;
        e.new_dst = addr;
        e.dst_mac = mac;
    }
    Ok(())
}

/// The appliance for a new flow: a healthy one of the endpoint's zone set, by the
/// service's stickiness.
#[inline(always)]
fn choose(key: &FlowKey, route: &EndpointEni) -> Result<([u8; 4], [u8; 6]), Reason> {
    let fields = if route.flags & ENI_FLAG_STICKY_2 != 0 {
        2
    } else if route.flags & ENI_FLAG_STICKY_3 != 0 {
        3
    } else {
        5
    };
    let h = hash::symmetric_hash(
        key.src,
        key.dst,
        key.sport,
        key.dport,
        key.proto,
        fields,
        route.service_id,
    );
    let zone = GwlbZone {
        service_id: route.service_id,
        zone_id: route.zone_id,
    };
    // SAFETY: a reference into a map only the daemon writes, used within this run.
    let set = unsafe { PL_GWLB_TARGETS.get(zone) }.ok_or(Reason::DropNoHealthyAppliance)?;
    let n = set.count.min(privatelink_common::MAX_APPLIANCES as u32);
    if n == 0 {
        return Err(Reason::DropNoHealthyAppliance);
    }
    // The mask is what the verifier needs to bound the index; LLVM would drop it as
    // redundant (h % n < 16) unless the value goes through memory first.
    let idx = h % n;
    // SAFETY: reading a local.
    let idx = unsafe { core::ptr::read_volatile(&idx) } as usize
        & (privatelink_common::MAX_APPLIANCES - 1);
    let addr = set.addrs[idx];
    // SAFETY: copied out.
    let neigh = unsafe {
        PL_NEIGHBORS.get(VpcAddr {
            vpc_id: route.provider_vpc_id,
            addr,
        })
    }
    .copied()
    .ok_or(Reason::DropNoNeighbor)?;
    if neigh.mac == [0; 6] {
        return Err(Reason::DropNoNeighbor);
    }
    Ok((addr, neigh.mac))
}

/// Both entries of a new flow; returns this direction's. The other direction is
/// delivered, after its trip through the appliance, to this packet's sender.
#[inline(always)]
fn create(
    ctx: &XdpContext,
    key: &FlowKey,
    route: &EndpointEni,
    t: u64,
) -> Result<*mut FlowEntry, Reason> {
    let (appliance, mac) = choose(key, route)?;
    // SAFETY: copied out.
    let port = unsafe { PL_VPC_PORTS.get(route.provider_vpc_id) }
        .copied()
        .ok_or(Reason::DropNoRoute)?;
    let sender = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    let mut e = FlowEntry {
        new_src: route.lb_addr,
        new_dst: appliance,
        new_sport: 0,
        new_dport: GENEVE_PORT,
        out_ifindex: port.ifindex,
        src_mac: port.mac,
        dst_mac: mac,
        out_vpc_id: route.provider_vpc_id,
        endpoint_id: route.endpoint_id,
        direction: DIR_REPLY,
        tcp_flags: 0,
        flags: FLOW_GWLB,
        _pad: 0,
        last_seen_ns: t,
        checked_ns: t,
        peer_mac: sender,
        out_mtu: port.mtu,
        epoch: 0,
        csum_ip: 0,
        csum_l4: 0,
        fast_packets: 0,
        _pad2: 0,
    };
    if PL_CONNTRACK
        .insert(&key.reversed(), &e, BPF_ANY as u64)
        .is_err()
    {
        return Err(Reason::DropConntrackFull);
    }
    e.direction = DIR_ORIGINAL;
    e.peer_mac = [0; 6];
    if PL_CONNTRACK.insert(key, &e, BPF_ANY as u64).is_err() {
        return Err(Reason::DropConntrackFull);
    }
    PL_CONNTRACK
        .get_ptr_mut(key)
        .ok_or(Reason::DropConntrackFull)
}

/// Grows the frame by the GENEVE overhead and writes everything but the addresses and
/// the IP checksum (the caller's, from the flow).
#[inline(always)]
fn encap(
    ctx: &XdpContext,
    key: &FlowKey,
    endpoint_id: u32,
    inner_len: usize,
) -> Result<(), Reason> {
    // The inner packet goes bare (no Ethernet): its old Ethernet header becomes the
    // outer one, so the frame grows by exactly the outer headers.
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GWLB_OVERHEAD as i32)) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let cookie = cookie_of(key);
    let h = mut_at::<Encap>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    h.vihl = 0x45;
    h.tos = 0;
    h.tot_len = ((GWLB_OVERHEAD + inner_len) as u16).to_be_bytes();
    h.id = [0; 2];
    h.frags = [0x40, 0]; // DF
    h.ttl = 64;
    h.proto = PROTO_UDP;
    h.check = [0; 2];
    h.sport = (SPORT_BASE | (cookie as u16 & 0x3fff)).to_be_bytes();
    h.dport = GENEVE_PORT.to_be_bytes();
    h.udp_len = ((GWLB_OVERHEAD - 20 + inner_len) as u16).to_be_bytes();
    h.udp_check = [0; 2]; // RFC 8926 §3.3: zero is allowed over IPv4
    h.ver_opt_len = (GENEVE_OPTIONS_LEN / 4) as u8;
    h.flags = 0;
    h.protocol = GENEVE_PROTO_IPV4.to_be_bytes();
    h.vni = [0; 3];
    h.reserved = 0;
    let class = GWLB_OPTION_CLASS.to_be_bytes();
    h.opt_endpoint = [class[0], class[1], GWLB_OPT_ENDPOINT_ID, 2];
    h.endpoint_id = (endpoint_id as u64).to_be_bytes();
    h.opt_attachment = [class[0], class[1], GWLB_OPT_ATTACHMENT_ID, 2];
    h.attachment_id = (key.vpc_id as u64).to_be_bytes();
    h.opt_cookie = [class[0], class[1], GWLB_OPT_FLOW_COOKIE, 1];
    h.cookie = cookie.to_be_bytes();
    Ok(())
}

/// The encapsulated packet would not fit the appliance's link: tell the sender the path
/// MTU (RFC 1191), from the endpoint's address, instead of dropping it silently. The
/// frame becomes the ICMP error: our IP + ICMP headers, then the sender's IP header and
/// the first 8 bytes of its payload.
#[inline(always)]
fn frag_needed(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    route: &EndpointEni,
    mtu: usize,
) -> Result<Verdict, Reason> {
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let quote = ip.hdr_len() + 8;
    let sender_ip = ip.src_addr;
    let sender_mac = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    let keep = (ETH_LEN + quote) as i32;
    // SAFETY: plain helper calls on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - frame_len(ctx) as i32) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -28) } != 0
    {
        return Err(Reason::DropRedirectFailed);
    }
    let h = mut_at::<[u8; 42]>(ctx, 0, Reason::DropTruncatedIp)?;
    h[0..6].copy_from_slice(&sender_mac);
    h[6..12].copy_from_slice(&iface.mac);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let tot = ((28 + quote) as u16).to_be_bytes();
    let ip_hdr: [u8; 20] = [
        0x45,
        0xc0,
        tot[0],
        tot[1],
        0,
        0,
        0,
        0,
        64,
        PROTO_ICMP,
        0,
        0,
        route.gateway[0],
        route.gateway[1],
        route.gateway[2],
        route.gateway[3],
        sender_ip[0],
        sender_ip[1],
        sender_ip[2],
        sender_ip[3],
    ];
    h[14..34].copy_from_slice(&ip_hdr);
    let c = !csum::fold(sum_words::<5>(ctx, ETH_LEN, 20)?);
    mut_at::<[u8; 2]>(ctx, 24, Reason::DropTruncatedIp)?.copy_from_slice(&c.to_ne_bytes());
    // Type 3 code 4, checksum, unused, next-hop MTU.
    let m = (mtu as u16).to_be_bytes();
    h[34..42].copy_from_slice(&[3, 4, 0, 0, 0, 0, m[0], m[1]]);
    let sum = sum_words::<19>(ctx, 34, 8 + quote)?;
    let c = mut_at::<[u8; 2]>(ctx, 36, Reason::DropTruncatedIp)?;
    *c = (!csum::fold(sum)).to_ne_bytes();
    Ok((xdp_action::XDP_TX, Reason::GwlbFragNeeded))
}

/// What an appliance's GENEVE carries, once validated.
struct Returned {
    endpoint_id: u32,
    vpc_id: u32,
    inner: usize,
    /// Where the UDP datagram ends: the inner packet must lie inside it.
    end: usize,
}

/// GENEVE from an appliance: validate, find the flow, strip the outer headers, deliver.
/// Non-inlined (its own BPF stack frame); see `crate::settle`.
#[inline(never)]
pub fn from_appliance(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    crate::settle(from_appliance_checked(ctx, iface, pkt))
}

#[inline(always)]
fn from_appliance_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
) -> Result<Verdict, Reason> {
    let outer_src = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?.src_addr;
    let from = VpcAddr {
        vpc_id: iface.vpc_id,
        addr: outer_src,
    };
    // SAFETY: presence check only.
    if unsafe { PL_GWLB_APPLS.get(from) }.is_none() {
        return Err(Reason::DropUnknownAppliance);
    }
    let g = parse_geneve(ctx, pkt)?;
    let ip = mut_at::<Ipv4Hdr>(ctx, g.inner, Reason::DropGeneveMalformed)?;
    let ihl = ip.hdr_len();
    let tot = be16(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || ihl < 20 || tot < ihl || g.inner + tot > g.end || ip.is_fragment() {
        return Err(Reason::DropGeneveMalformed);
    }
    // What we deliver must be a packet a router may forward (RFC 1812).
    verify_checksum_at(ctx, g.inner, ihl)?;
    let (src, dst, proto) = (ip.src_addr, ip.dst_addr, ip.proto);
    let (sport, dport, _) = inner_ports(ctx, g.inner + ihl, g.inner + tot, proto)?;
    let key = FlowKey {
        vpc_id: g.vpc_id,
        src,
        dst,
        sport,
        dport,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let p = PL_CONNTRACK
        .get_ptr_mut(key)
        .ok_or(Reason::DropGwlbNoFlow)?;
    // SAFETY: valid for this run.
    let e = unsafe { &mut *p };
    if e.flags & FLOW_GWLB == 0 || e.endpoint_id != g.endpoint_id || e.new_dst != outer_src {
        return Err(Reason::DropGwlbNoFlow);
    }
    // SAFETY: copied out.
    let port = unsafe { PL_VPC_PORTS.get(g.vpc_id) }
        .copied()
        .ok_or(Reason::DropNoRoute)?;
    let dst_key = VpcAddr {
        vpc_id: g.vpc_id,
        addr: dst,
    };
    if e.peer_mac == [0; 6] {
        // SAFETY: copied out.
        match unsafe { PL_GWLB_NEIGH.get(dst_key) }.copied() {
            Some(n) if n.mac != [0; 6] => e.peer_mac = n.mac,
            _ => return arp_probe(ctx, dst_key, port.ifindex, port.mac),
        }
    }
    let peer_mac = e.peer_mac;
    // Strip the outer IPv4, UDP and GENEVE; a new Ethernet header goes in front.
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (g.inner - ETH_LEN) as i32) } != 0 {
        return Err(Reason::DropGeneveMalformed);
    }
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, peer_mac, port.mac);
    eth.ether_type = 0x0800u16.to_be();
    redirect_to(port.ifindex, Reason::GwlbFromAppliance)
}

/// RFC 8926 §3.4/§3.5: version 0, no OAM, IPv4 inside, option lengths adding up, and
/// the three GWLB options present with their exact lengths.
#[inline(always)]
fn parse_geneve(ctx: &XdpContext, pkt: &Packet) -> Result<Returned, Reason> {
    let udp = mut_at::<[u8; 8]>(ctx, pkt.l4, Reason::DropGeneveMalformed)?;
    let udp_len = be16([udp[4], udp[5]]) as usize;
    if udp_len < 16 || pkt.l4 + udp_len > pkt.end {
        return Err(Reason::DropGeneveMalformed);
    }
    let gnv = pkt.l4 + 8;
    let base = mut_at::<[u8; 8]>(ctx, gnv, Reason::DropGeneveMalformed)?;
    if base[0] >> 6 != 0 || base[1] & 0x80 != 0 || be16([base[2], base[3]]) != GENEVE_PROTO_IPV4 {
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

/// The inner destination's MAC is not known yet: the frame becomes an ARP request for it
/// (RFC 826; sender address 0.0.0.0 as in RFC 5227 probes, which hosts answer), sent
/// out of the VPC's port. The packet itself is lost; its sender retransmits, and by then
/// the data path has learned the answer.
#[inline(always)]
fn arp_probe(
    ctx: &XdpContext,
    target: VpcAddr,
    ifindex: u32,
    mac: [u8; 6],
) -> Result<Verdict, Reason> {
    let placeholder = Neighbor {
        mac: [0; 6],
        _pad: [0; 2],
    };
    let _ = PL_GWLB_NEIGH.insert(&target, &placeholder, BPF_NOEXIST as u64);
    // SAFETY: plain helper call on this run's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, 42 - frame_len(ctx) as i32) } != 0 {
        return Err(Reason::DropRedirectFailed);
    }
    let f = mut_at::<[u8; 42]>(ctx, 0, Reason::DropTruncatedEthernet)?;
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..38].copy_from_slice(&[0; 10]);
    f[38..42].copy_from_slice(&target.addr);
    redirect_to(ifindex, Reason::GwlbArpProbe)
}

/// ARP taught us the MAC of an inner destination we asked for.
#[inline(always)]
pub fn learn(key: VpcAddr, mac: [u8; 6]) {
    // SAFETY: value copied out before the update.
    if let Some(n) = unsafe { PL_GWLB_NEIGH.get(key) }
        && n.mac != mac
    {
        let _ = PL_GWLB_NEIGH.insert(key, Neighbor { mac, _pad: [0; 2] }, BPF_EXIST as u64);
    }
}
