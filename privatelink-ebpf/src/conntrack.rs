//! The flow table: both directions of every NATed flow live in `PL_CONNTRACK`.
//!
//! SNAT port allocation claims the reply-direction key with `BPF_NOEXIST`, so a
//! provider-side tuple can never belong to two live flows; an entry whose flow has been
//! idle past its timeout (both directions) may be taken over.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use privatelink_common::{
    CT_CLOSING, CT_FIN_SEEN, Config, DIR_ORIGINAL, DIR_REPLY, ENI_FLAG_GATEWAY, EndpointEni,
    FLOW_GATEWAY, FlowEntry, FlowKey, IfaceInfo, MAX_SNAT_ADDRS, PROTO_TCP, Reason, VpcAddr, hash,
};

use crate::{
    Verdict, filter,
    ipv4::{Packet, check_endpoint_at, check_gateway_at},
    maps::{PL_CONNTRACK, PL_NEIGHBORS, PL_SNAT_POOLS, PL_VPC_PORTS, config, scratch},
    nat,
    parse::{
        ETH_LEN, EthHdr, Ipv4Hdr, Ports, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, be16, l4_consistent,
        mut_at, tcp_flags,
    },
};

const SNAT_ATTEMPTS: u32 = 8;
/// How often (at most) a busy flow re-checks that its reply entry still exists.
const PARTNER_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Reads the 5-tuple of a TCP/UDP packet whose L4 header must be complete.
#[inline(always)]
fn flow_key(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> Result<(FlowKey, u8), Reason> {
    l4_consistent(ctx, pkt.l4, pkt.end, pkt.proto)?;
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let ports = mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    let flags = if pkt.proto == PROTO_TCP {
        tcp_flags(mut_at::<TcpHdr>(ctx, pkt.l4, Reason::DropTruncatedL4)?)
    } else {
        0
    };
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let key = FlowKey {
        vpc_id: iface.vpc_id,
        src: ip.src_addr,
        dst: ip.dst_addr,
        sport: be16(ports.sport),
        dport: be16(ports.dport),
        proto: pkt.proto,
        _pad: [0; 3],
    };
    Ok((key, flags))
}

/// Consumer → service: a packet to an ENI of a forwarding endpoint.
/// Non-inlined (its own BPF stack frame); see `crate::settle`.
#[inline(never)]
pub fn forward(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr,
    eni: &EndpointEni,
    pkt: &Packet,
) -> u64 {
    crate::settle(forward_checked(ctx, iface, eni_key, eni, pkt))
}

#[inline(always)]
fn forward_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr,
    eni: &EndpointEni,
    pkt: &Packet,
) -> Result<Verdict, Reason> {
    let (key, flags) = flow_key(ctx, iface, pkt)?;
    let gateway = eni.flags & ENI_FLAG_GATEWAY != 0;
    if !gateway {
        filter::acl_in(eni_key, eni, key.src, key.proto, key.dport)?;
    }
    let t = now();
    let cfg = config();
    let existing = match PL_CONNTRACK.get_ptr_mut(key) {
        // SAFETY: the pointer from a successful lookup is valid for this program run.
        Some(p) if is_own_live_flow(unsafe { &*p }, &key, eni.endpoint_id, t, &cfg) => Some(p),
        _ => None,
    };
    let mut reason = Reason::ForwardToService;
    let entry = match existing {
        // Reply entry confirmed within the last second: the fast path.
        // SAFETY: as above.
        Some(p) if t.saturating_sub(unsafe { (*p).checked_ns }) <= PARTNER_REFRESH_NS => p,
        _ => {
            let eth_src = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
            let reply = scratch(0)?;
            // SAFETY: this CPU's scratch slot, valid for this run.
            let reply = unsafe {
                *reply = reply_entry(&key, pkt.ifindex, iface, eth_src, eni.endpoint_id, t);
                if gateway {
                    (*reply).flags = FLOW_GATEWAY;
                }
                &*reply
            };
            match existing {
                // SAFETY: as above.
                Some(p) if keep_partner(unsafe { &*p }, &key, reply) => {
                    // SAFETY: as above.
                    unsafe { (*p).checked_ns = t };
                    p
                }
                _ => {
                    // New, expired, or its reply tuple was evicted and taken by another
                    // flow: (re)create with a fresh tuple, if the security groups allow.
                    if existing.is_none() {
                        if gateway {
                            // The endpoint policy is about where the VPC may go.
                            let policy = VpcAddr {
                                vpc_id: eni_key.vpc_id,
                                addr: eni.gateway,
                            };
                            filter::security_groups(policy, eni, key.dst, key.proto, key.dport)?;
                        } else {
                            filter::security_groups(eni_key, eni, key.src, key.proto, key.dport)?;
                        }
                    }
                    reason = Reason::ForwardNewFlow;
                    create(&key, eni, reply, t)?
                }
            }
        }
    };
    // SAFETY: as above.
    let e = unsafe { &mut *entry };
    track(e, &key, flags, t);
    nat::apply(ctx, pkt, e, reason)
}

/// An original-direction entry of this endpoint whose flow is alive.
#[inline(always)]
fn is_own_live_flow(e: &FlowEntry, key: &FlowKey, endpoint_id: u32, t: u64, cfg: &Config) -> bool {
    // An entry of another endpoint (the ENI was reassigned) starts a new flow.
    e.direction == DIR_ORIGINAL && e.endpoint_id == endpoint_id && alive(e, key, t, cfg)
}

/// A flow lives while either direction was seen within its idle timeout (a one-way UDP
/// stream keeps its replies deliverable, and the other way round).
#[inline(always)]
pub fn alive(e: &FlowEntry, key: &FlowKey, t: u64, cfg: &Config) -> bool {
    if !e.is_expired(key.proto, t, cfg) {
        return true;
    }
    // SAFETY: copied out.
    let pk = e.partner(key);
    match unsafe { PL_CONNTRACK.get(pk) } {
        Some(p) => p.partner(&pk) == *key && !p.is_expired(key.proto, t, cfg),
        None => false,
    }
}

/// Service → consumer: a reply to a SNAT address. Only known flows pass.
/// Non-inlined (its own BPF stack frame); see `crate::settle`.
#[inline(never)]
pub fn reply(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    crate::settle(reply_checked(ctx, iface, pkt))
}

#[inline(always)]
fn reply_checked(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> Result<Verdict, Reason> {
    let (key, flags) = flow_key(ctx, iface, pkt)?;
    let t = now();
    let cfg = config();
    let Some(p) = PL_CONNTRACK.get_ptr_mut(key) else {
        return Err(Reason::DropNoFlow);
    };
    // SAFETY: valid for this program run.
    let e = unsafe { &mut *p };
    if e.direction != DIR_REPLY || !alive(e, &key, t, &cfg) {
        return Err(Reason::DropNoFlow);
    }
    // The flow's endpoint must still be this one, forwarding, and its ACL must allow.
    if e.flags & FLOW_GATEWAY != 0 {
        let gw = check_gateway_at(e.out_vpc_id, e.new_src)?;
        if gw.endpoint_id != e.endpoint_id {
            return Err(Reason::DropNoFlow);
        }
    } else {
        let eni = check_endpoint_at(e.out_vpc_id, e.new_src)?;
        if eni.endpoint_id != e.endpoint_id {
            return Err(Reason::DropNoFlow);
        }
        let eni_key = VpcAddr {
            vpc_id: e.out_vpc_id,
            addr: e.new_src,
        };
        filter::acl_out(eni_key, &eni, e.new_dst, pkt.proto, e.new_sport)?;
    }
    track(e, &key, flags, t);
    nat::apply(ctx, pkt, e, Reason::ForwardToConsumer)
}

/// The entry that turns a reply (provider side) back into the consumer's view. Its egress
/// MAC is the sender of the original packet: the client, or the router in front of it.
#[inline(always)]
fn reply_entry(
    key: &FlowKey,
    ifindex: u32,
    iface: &IfaceInfo,
    eth_src: [u8; 6],
    endpoint_id: u32,
    t: u64,
) -> FlowEntry {
    FlowEntry {
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        out_ifindex: ifindex,
        src_mac: iface.mac,
        dst_mac: eth_src,
        out_vpc_id: key.vpc_id,
        endpoint_id,
        direction: DIR_REPLY,
        tcp_flags: 0,
        flags: 0,
        _pad: 0,
        last_seen_ns: t,
        checked_ns: t,
        peer_mac: [0; 6],
        out_mtu: 0,
    }
}

/// Creates both entries of a new flow; returns the original-direction entry.
#[inline(always)]
fn create(
    key: &FlowKey,
    eni: &EndpointEni,
    reply: &FlowEntry,
    t: u64,
) -> Result<*mut FlowEntry, Reason> {
    let cfg = &config();
    // A gateway flow keeps its destination; lb_addr is then only the next hop.
    let new_dst = if eni.flags & ENI_FLAG_GATEWAY != 0 {
        key.dst
    } else {
        eni.lb_addr
    };
    // SAFETY: references into maps only the daemon writes, used within this run.
    let port = unsafe { PL_VPC_PORTS.get(eni.provider_vpc_id) }.ok_or(Reason::DropNoRoute)?;
    let neigh = unsafe {
        PL_NEIGHBORS.get(VpcAddr {
            vpc_id: eni.provider_vpc_id,
            addr: eni.lb_addr,
        })
    }
    .ok_or(Reason::DropNoNeighbor)?;
    if neigh.mac == [0; 6] {
        return Err(Reason::DropNoNeighbor); // registered, not resolved yet
    }
    let pool = unsafe { PL_SNAT_POOLS.get(eni.service_id) }.ok_or(Reason::DropSnatExhausted)?;
    if pool.count == 0 || pool.port_max < pool.port_min {
        return Err(Reason::DropSnatExhausted);
    }
    let count = if pool.count as usize > MAX_SNAT_ADDRS {
        MAX_SNAT_ADDRS as u32
    } else {
        pool.count
    };
    let range = (pool.port_max - pool.port_min) as u32 + 1;
    let h = hash::tuple_hash(
        key.src, key.dst, key.sport, key.dport, key.proto, key.vpc_id,
    );

    // Double hashing from a hashed start (a flow-dependent odd stride, not consecutive
    // ports: linear probing clusters, and a pool three quarters full then failed most
    // first packets — found by the lab flood test). Each attempt also moves to the next
    // address, so the attempts spread over the whole pool.
    let stride = hash::mix32(h) | 1;
    for attempt in 0..SNAT_ATTEMPTS {
        let idx = (((h >> 16).wrapping_add(attempt) % count) as usize) & (MAX_SNAT_ADDRS - 1);
        let snat_addr = pool.addrs[idx];
        let snat_port =
            pool.port_min + (h.wrapping_add(attempt.wrapping_mul(stride)) % range) as u16;
        let reply_key = FlowKey {
            vpc_id: eni.provider_vpc_id,
            src: new_dst,
            dst: snat_addr,
            sport: key.dport,
            dport: snat_port,
            proto: key.proto,
            _pad: [0; 3],
        };
        if !claim(&reply_key, reply, key, t, cfg) {
            continue;
        }
        let fwd = scratch(1)?;
        // SAFETY: this CPU's scratch slot, valid for this run.
        unsafe {
            *fwd = FlowEntry {
                new_src: snat_addr,
                new_dst,
                new_sport: snat_port,
                new_dport: key.dport,
                out_ifindex: port.ifindex,
                src_mac: port.mac,
                dst_mac: neigh.mac,
                out_vpc_id: eni.provider_vpc_id,
                endpoint_id: eni.endpoint_id,
                direction: DIR_ORIGINAL,
                tcp_flags: 0,
                flags: reply.flags,
                _pad: 0,
                last_seen_ns: t,
                checked_ns: t,
                peer_mac: [0; 6],
                out_mtu: 0,
            }
        };
        // SAFETY: as above.
        if PL_CONNTRACK
            .insert(key, unsafe { &*fwd }, BPF_ANY as u64)
            .is_err()
        {
            let _ = PL_CONNTRACK.remove(reply_key);
            return Err(Reason::DropConntrackFull);
        }
        return PL_CONNTRACK
            .get_ptr_mut(key)
            .ok_or(Reason::DropConntrackFull);
    }
    Err(Reason::DropSnatExhausted)
}

/// Claims a provider-side tuple for the flow `fwd_key`: free, still this flow's own (its
/// forward entry expired or was evicted), or held by a flow idle in both directions.
#[inline(always)]
fn claim(reply_key: &FlowKey, reply: &FlowEntry, fwd_key: &FlowKey, t: u64, cfg: &Config) -> bool {
    if PL_CONNTRACK
        .insert(reply_key, reply, BPF_NOEXIST as u64)
        .is_ok()
    {
        return true;
    }
    // SAFETY: copied out.
    // (References into the map, not copies: the verifier's stack is small.)
    let Some(old) = (unsafe { PL_CONNTRACK.get(reply_key) }) else {
        return false;
    };
    let old_seen = old.last_seen_ns;
    let proto = reply_key.proto;
    let old_fwd_key = old.partner_key(proto);
    if old_fwd_key == *fwd_key {
        return PL_CONNTRACK
            .insert(reply_key, reply, BPF_ANY as u64)
            .is_ok();
    }
    if !old.is_expired(proto, t, cfg) {
        return false;
    }
    // SAFETY: copied out.
    if let Some(fwd) = unsafe { PL_CONNTRACK.get(old_fwd_key) } {
        if fwd.partner_key(proto) == *reply_key && !fwd.is_expired(proto, t, cfg) {
            return false;
        }
        if fwd.partner_key(proto) == *reply_key {
            let _ = PL_CONNTRACK.remove(old_fwd_key);
        }
    }
    // Take the stale entry over so that of two CPUs racing for it only one wins: remove
    // it (only if it is still the one judged stale), then insert with BPF_NOEXIST.
    // SAFETY: copied out.
    match unsafe { PL_CONNTRACK.get(reply_key) } {
        Some(cur) if cur.last_seen_ns != old_seen => return false,
        Some(_) => {
            let _ = PL_CONNTRACK.remove(reply_key);
        }
        None => {}
    }
    PL_CONNTRACK
        .insert(reply_key, reply, BPF_NOEXIST as u64)
        .is_ok()
}

/// Makes sure the reply entry of a live flow still exists and is this flow's (LRU may
/// have evicted it, and another flow may have claimed the tuple since); re-creates it if
/// it is missing, false if the tuple now belongs to someone else.
#[inline(always)]
fn keep_partner(e: &FlowEntry, key: &FlowKey, reply: &FlowEntry) -> bool {
    let pk = e.partner_key(key.proto);
    // SAFETY: copied out.
    match unsafe { PL_CONNTRACK.get(pk) } {
        Some(p) => p.partner_key(key.proto) == *key,
        None => PL_CONNTRACK.insert(pk, reply, BPF_NOEXIST as u64).is_ok(),
    }
}

/// TCP connection tracking: RST closes at once, FIN in both directions closes, a SYN
/// reopens a closing flow (the client reused its port). Refreshes the idle timer.
#[inline(always)]
pub fn track(e: &mut FlowEntry, key: &FlowKey, flags: u8, t: u64) {
    let proto = key.proto;
    e.last_seen_ns = t;
    if proto != PROTO_TCP || flags & (TCP_FIN | TCP_RST | TCP_SYN) == 0 {
        return;
    }
    let partner = PL_CONNTRACK.get_ptr_mut(e.partner(key));
    if flags & TCP_RST != 0 {
        e.tcp_flags |= CT_CLOSING;
        if let Some(p) = partner {
            // SAFETY: valid for this run.
            unsafe { (*p).tcp_flags |= CT_CLOSING };
        }
    } else if flags & TCP_SYN != 0 {
        if e.tcp_flags & CT_CLOSING != 0 {
            e.tcp_flags = 0;
            if let Some(p) = partner {
                // SAFETY: valid for this run.
                unsafe { (*p).tcp_flags = 0 };
            }
        }
    } else {
        e.tcp_flags |= CT_FIN_SEEN;
        if let Some(p) = partner {
            // SAFETY: valid for this run.
            let p = unsafe { &mut *p };
            if p.tcp_flags & CT_FIN_SEEN != 0 {
                p.tcp_flags |= CT_CLOSING;
                e.tcp_flags |= CT_CLOSING;
            }
        }
    }
}
