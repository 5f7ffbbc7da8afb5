//! Gateway Load Balancer endpoints: the steering of a packet the VPC routes to a GWLB
//! endpoint to an appliance, in GENEVE (`geneve`), and the delivery of what the appliance
//! sends back, checked against the flow it belongs to, to the inner destination. The
//! `privatelink_gwlb_steer` and `privatelink_gwlb_return` path programs (`paths`) run it.
//! Above `conntrack`, `geneve`, `icmp` (the frag-needed error) and `arp` (probes for inner
//! destinations).
//!
//! Both directions of a flow are keyed in the consumer VPC and record the appliance chosen
//! by a symmetric hash, so a flow and its reply reach the same appliance with the same
//! flow cookie.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::XdpContext,
};
use privatelink_common::{
    DIR_ORIGINAL, DIR_REPLY, ENI_FLAG_REBALANCE, ENI_FLAG_STICKY_2, ENI_FLAG_STICKY_3, EndpointEni,
    FLOW_GWLB, FlowEntry, FlowKey, GWLB_OVERHEAD, GwlbZone, IfaceInfo, Neighbor, PATH_GWLB_RETURN6,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, Reason, VpcAddr, checked_elapsed_ns, checked_tick, csum,
    hash, seen_tick,
};

use crate::{
    arp,
    checksum::verify_checksum_at,
    conntrack,
    flowtable::{FLOWS, Seen},
    geneve::{self, Outer},
    icmp,
    maps::{
        self, PL_GWLB_APPLS, PL_GWLB_NEIGH, PL_GWLB_TARGETS, PL_NEIGHBORS, PL_PATHS, PL_VPC_PORTS,
        config, hand_off_no_entry,
    },
    packet::Packet,
    parse::{
        ETH_LEN, ETH_P_IP, EthHdr, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, Ipv4Ext, Ipv4Hdr, Ports,
        TcpHdr, be16, l4_consistent, mut_at, set_macs, tcp_flags,
    },
    stats,
    verdict::{Verdict, redirect_to, settle_for},
};

/// How often (at most) a flow checks that its appliance is still one to send to. The
/// established path (`established`) leaves a GWLB flow to this path when it is due.
const APPLIANCE_RECHECK_NS: u64 = 1_000_000_000;
const _: () = assert!(APPLIANCE_RECHECK_NS == conntrack::PARTNER_REFRESH_NS);

/// The ICMP echo of the inner packet's family, as `inner_ports` keys it: its protocol
/// number and its request and reply types.
pub struct Echo {
    pub proto: u8,
    pub request: u8,
    pub reply: u8,
}

/// ICMP echo (RFC 792).
const ICMP_ECHO: Echo = Echo {
    proto: PROTO_ICMP,
    request: ICMP_ECHO_REQUEST,
    reply: ICMP_ECHO_REPLY,
};

/// The inner flow's ports as the flow table keys them: TCP/UDP ports, the echo identifier
/// on both sides for the family's ICMP echo (`echo`: ICMP's, or ICMPv6's for `gwlb6`),
/// zero for anything else. Also returns the TCP flags.
#[inline(always)]
pub fn inner_ports(
    ctx: &XdpContext,
    l4: usize,
    end: usize,
    proto: u8,
    echo: &Echo,
) -> Result<(u16, u16, u8), Reason> {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            l4_consistent(ctx, l4, end, proto)?;
            let ports = mut_at::<Ports>(ctx, l4, Reason::DropTruncatedL4)?;
            let flags = if proto == PROTO_TCP {
                tcp_flags(mut_at::<TcpHdr>(ctx, l4, Reason::DropTruncatedL4)?)
            } else {
                0
            };
            Ok((be16(ports.sport), be16(ports.dport), flags))
        }
        p if p == echo.proto => {
            if l4 + 8 > end {
                return Err(Reason::DropTruncatedL4);
            }
            let h = mut_at::<[u8; 8]>(ctx, l4, Reason::DropTruncatedL4)?;
            if h[0] == echo.reply || h[0] == echo.request {
                let id = be16([h[4], h[5]]);
                Ok((id, id, 0))
            } else {
                Ok((0, 0, 0))
            }
        }
        _ => Ok((0, 0, 0)),
    }
}

/// A packet routed to a GWLB endpoint: to its flow's appliance, in GENEVE.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn steer(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet, route: &EndpointEni) -> u64 {
    settle_for(route.counter_slot, steer_checked(ctx, iface, pkt, route))
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
    let (sport, dport, tcp_flags) = inner_ports(ctx, pkt.l4, pkt.end, pkt.proto, &ICMP_ECHO)?;
    let key = FlowKey::new(iface.vpc_id, src, dst, sport, dport, pkt.proto);
    let t = conntrack::now();
    let cfg = config();
    let existing = match FLOWS.get_seen(key) {
        Some(s) => {
            // SAFETY: the pointer from a successful lookup is valid for this program run.
            let e = unsafe { &*s.entry };
            if e.flags & FLOW_GWLB != 0
                && e.endpoint_id == route.endpoint_id
                && conntrack::alive(e, &key, t, &cfg)
            {
                Some(s)
            } else {
                None
            }
        }
        None => None,
    };
    let seen = match existing {
        Some(s) => s,
        None => create(ctx, &key, route, t)?,
    };
    // SAFETY: valid for this run.
    let e = unsafe { &mut *seen.entry };
    // What was judged is the entry about to be written (`flowtable::Seen`).
    seen.still()?;
    if checked_elapsed_ns(t, e.checked) > APPLIANCE_RECHECK_NS {
        recheck(e, &key, route, t)?;
    }
    let dir = e.direction;
    conntrack::track(e, &key, tcp_flags, conntrack::SeqAck::default(), t, dir);

    let inner_len = pkt.end - ETH_LEN;
    let mtu = e.out_mtu as usize;
    if mtu >= 2 * GWLB_OVERHEAD && inner_len + GWLB_OVERHEAD > mtu {
        // The sender learns the path MTU (RFC 1191) from the endpoint's address, instead
        // of a silent drop.
        return icmp::frag_needed(
            ctx,
            &iface.mac,
            &route.gateway,
            mtu - GWLB_OVERHEAD,
            Reason::GwlbFragNeeded,
        );
    }
    // IPv4 forwarding: the TTL goes down by one on its way through the endpoint.
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let old = ip.ttl_word();
    ip.ttl -= 1;
    ip.check = csum::replace16(u16::from_ne_bytes(ip.check), old, ip.ttl_word()).to_ne_bytes();
    let outer = Outer {
        src: e.new_src,
        dst: e.new_dst,
        src_mac: e.src_mac,
        dst_mac: e.dst_mac,
    };
    let (out_ifindex, appliance) = (e.out_ifindex, e.new_dport);
    // The outer headers are one flow's entry's: else the frame is dropped.
    seen.still()?;
    // The appliance's counters (its slot kept in `new_dport`, see `create`).
    stats::to_appliance(appliance as u32, inner_len as u64);
    // Checked under this epoch: its next packets may take the established path, with
    // the flow cookie computed here.
    let cookie = geneve::cookie_of(&key);
    e.set_gwlb_cookie(cookie);
    e.epoch = pkt.epoch;
    geneve::encap(ctx, &key, cookie, route.endpoint_id, inner_len, &outer)?;
    redirect_to(out_ifindex, Reason::GwlbToAppliance)
}

/// Every so often a flow looks at its appliance: one that left the service, or (with
/// `rebalance`) turned unhealthy, is replaced by the appliance the hash picks now. Both
/// directions come to the same choice on their own: the hash is symmetric.
#[inline(always)]
fn recheck(e: &mut FlowEntry, key: &FlowKey, route: &EndpointEni, t: u64) -> Result<(), Reason> {
    e.checked = checked_tick(t);
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
        e.new_dport = appliance_slot(e.out_vpc_id, addr);
    }
    e.counter_slot = route.counter_slot as u16;
    Ok(())
}

/// An appliance's counter slot (kept in its flows' `new_dport`: GENEVE's destination port
/// is always `GENEVE_PORT`), 0 if it has none.
#[inline(always)]
pub fn appliance_slot(vpc_id: u32, addr: [u8; 4]) -> u16 {
    // SAFETY: copied out.
    match unsafe { PL_GWLB_APPLS.get(VpcAddr { vpc_id, addr }) } {
        Some(a) if a.counter_slot <= u16::MAX as u32 => a.counter_slot as u16,
        _ => 0,
    }
}

/// The appliance for a new flow: a healthy one of the endpoint's zone set, by the
/// service's stickiness.
#[inline(always)]
fn choose(key: &FlowKey, route: &EndpointEni) -> Result<([u8; 4], [u8; 6]), Reason> {
    let h = hash::symmetric_hash(
        key.src,
        key.dst,
        key.sport,
        key.dport,
        key.proto,
        stickiness(route),
        route.service_id,
    );
    pick(h, route)
}

/// The tuple fields the service's stickiness hashes: 5, 3 (addresses and protocol) or 2
/// (addresses).
#[inline(always)]
pub fn stickiness(route: &EndpointEni) -> u8 {
    if route.flags & ENI_FLAG_STICKY_2 != 0 {
        2
    } else if route.flags & ENI_FLAG_STICKY_3 != 0 {
        3
    } else {
        5
    }
}

/// The healthy appliance of the endpoint zone's set that the flow hash `h` picks, and its
/// MAC.
#[inline(always)]
pub fn pick(h: u32, route: &EndpointEni) -> Result<([u8; 4], [u8; 6]), Reason> {
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
) -> Result<Seen<FlowEntry>, Reason> {
    let (appliance, mac) = choose(key, route)?;
    // SAFETY: copied out.
    let port = unsafe { PL_VPC_PORTS.get(route.provider_vpc_id) }
        .copied()
        .ok_or(Reason::DropNoRoute)?;
    let sender = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    let mut e = FlowEntry {
        new_src: route.lb_addr,
        new_dst: appliance,
        new_dport: appliance_slot(route.provider_vpc_id, appliance),
        counter_slot: route.counter_slot as u16,
        out_ifindex: port.ifindex,
        src_mac: port.mac,
        dst_mac: mac,
        out_vpc_id: route.provider_vpc_id,
        endpoint_id: route.endpoint_id,
        direction: DIR_REPLY,
        flags: FLOW_GWLB,
        last_seen: seen_tick(t),
        checked: checked_tick(t),
        peer_mac: sender,
        out_mtu: port.mtu,
        ..FlowEntry::zeroed()
    };
    if FLOWS.insert(&key.reversed(), &e, BPF_ANY as u64).is_err() {
        return Err(Reason::DropConntrackFull);
    }
    e.direction = DIR_ORIGINAL;
    e.peer_mac = [0; 6];
    if FLOWS.insert(key, &e, BPF_ANY as u64).is_err() {
        return Err(Reason::DropConntrackFull);
    }
    if let Some(c) = stats::counters(route.counter_slot).filter(|_| route.counter_slot != 0) {
        c.new_flows += 1;
    }
    FLOWS.get_seen(key).ok_or(Reason::DropConntrackFull)
}

/// GENEVE from an appliance: validate, find the flow, strip the outer headers, deliver.
/// Inlined: GENEVE carrying IPv6 is tail-called from here into its own program
/// (`PATH_GWLB_RETURN6`, `gwlb6`), and a program that tail-calls makes no BPF-to-BPF
/// calls (see `arp::handle`).
#[inline(always)]
pub fn from_appliance(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    let mut slot = 0;
    // `iface` and the epoch are the handoff's own: already there for the IPv6 return.
    let r = from_appliance_checked(ctx, iface, pkt, &mut slot, false);
    settle_for(slot, r)
}

/// `from_appliance`'s work, also run by the classifier itself where GENEVE can be nothing
/// else (`classify`): the verdict, and in `slot` the counter slot it is counted for. With
/// `hand`, GENEVE carrying IPv6 is handed its interface and epoch first (the classifier's
/// call); without, the handoff already holds them (the path program's, which reads them
/// in place and so must not write them).
#[inline(always)]
pub fn from_appliance_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    slot: &mut u32,
    hand: bool,
) -> Result<Verdict, Reason> {
    // IPv6 inside: the IPv6 return path, before any of this path's own work (it checks
    // the appliance and the GENEVE header itself). The handoff's entry is left as it is,
    // which that path does not read.
    if geneve::carries_ipv6(ctx, pkt) && (!hand || hand_off_no_entry(iface, pkt.epoch)) {
        // SAFETY: a tail call on this run's context, with this interface and epoch in the
        // handoff.
        unsafe { PL_PATHS.tail_call(ctx, PATH_GWLB_RETURN6) };
    }
    let outer_src = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?.src_addr;
    let from = VpcAddr {
        vpc_id: iface.vpc_id,
        addr: outer_src,
    };
    let Some(appl) = maps::appliance(from, pkt.epoch) else {
        return Err(Reason::DropUnknownAppliance);
    };
    let g = geneve::parse(ctx, pkt)?;
    let ip = mut_at::<Ipv4Hdr>(ctx, g.inner, Reason::DropGeneveMalformed)?;
    let ihl = ip.hdr_len();
    let tot = be16(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || ihl < 20 || tot < ihl || g.inner + tot > g.end || ip.is_fragment() {
        return Err(Reason::DropGeneveMalformed);
    }
    // What we deliver must be a packet a router may forward (RFC 1812).
    verify_checksum_at(ctx, g.inner, ihl)?;
    let (src, dst, proto) = (ip.src_addr, ip.dst_addr, ip.proto);
    let (sport, dport, _) = inner_ports(ctx, g.inner + ihl, g.inner + tot, proto, &ICMP_ECHO)?;
    let key = FlowKey::new(g.vpc_id, src, dst, sport, dport, proto);
    let seen = FLOWS
        .get_ptr_mut_inline(&key)
        .ok_or(Reason::DropGwlbNoFlow)?;
    // SAFETY: valid for this run.
    let e = unsafe { &mut *seen.entry };
    if e.flags & FLOW_GWLB == 0 || e.endpoint_id != g.endpoint_id || e.new_dst != outer_src {
        return Err(Reason::DropGwlbNoFlow);
    }
    *slot = e.counter_slot as u32;
    let port =
        maps::vpc_port(g.vpc_id, pkt.epoch).ok_or_else(|| seen.confirm(Reason::DropNoRoute))?;
    let dst_key = VpcAddr {
        vpc_id: g.vpc_id,
        addr: dst,
    };
    let known = e.peer_mac;
    let peer_mac = if known == [0; 6] {
        // SAFETY: copied out.
        match unsafe { PL_GWLB_NEIGH.get(dst_key) }.copied() {
            Some(n) if n.mac != [0; 6] => n.mac,
            _ => return arp_probe(ctx, dst_key, port.ifindex, port.mac),
        }
    } else {
        known
    };
    // The flow checked above and the MAC are one entry's (`flowtable::Seen`); the MAC
    // learned is written to it only then.
    seen.still()?;
    if known == [0; 6] {
        e.peer_mac = peer_mac;
    }
    if let Some(c) = stats::counters(appl.counter_slot).filter(|_| appl.counter_slot != 0) {
        c.to_consumer_packets += 1;
        c.to_consumer_bytes += tot as u64;
    }
    // Strip the outer IPv4, UDP and GENEVE; a new Ethernet header goes in front.
    geneve::decap(ctx, g.inner)?;
    let eth = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?;
    set_macs(eth, peer_mac, port.mac);
    eth.ether_type = ETH_P_IP.to_be();
    redirect_to(port.ifindex, Reason::GwlbFromAppliance)
}

/// The inner destination's MAC is not known yet: the frame becomes an ARP request for it
/// (`arp::probe`), sent out of the VPC's port. The packet itself is lost; its sender
/// retransmits, and by then the data path has learned the answer (`arp` fills in the
/// placeholder entry made here).
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
    arp::probe(ctx, &target.addr, &mac)?;
    redirect_to(ifindex, Reason::GwlbArpProbe)
}
