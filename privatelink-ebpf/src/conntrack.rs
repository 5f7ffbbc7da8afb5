//! The flow table: both directions of every NATed flow live in `PL_CONNTRACK`.
//!
//! SNAT port allocation claims the reply-direction key with `BPF_NOEXIST`, so a
//! provider-side tuple can never belong to two live flows; an entry whose flow has been
//! idle past its timeout (both directions) may be taken over.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use privatelink_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_FIN_SEEN, CT_REPLIED, Config, DIR_ORIGINAL, DIR_REPLY,
    ENI_FLAG_ACL, ENI_FLAG_GATEWAY, ENI_FLAG_LB_SET, EndpointEni, FLOW_GATEWAY, FLOW_GWLB,
    FlowBudget, FlowEntry, FlowKey, GwlbZone, IfaceInfo, LB_SLOTS, MAX_LBS_PER_ZONE,
    MAX_SNAT_ADDRS, PROTO_TCP, PROTO_UDP, Reason, VpcAddr, csum, hash,
};

use crate::{
    Verdict, filter,
    ipv4::{self, Packet, check_endpoint_at, check_gateway_at},
    maps::{
        PL_CONNTRACK, PL_EP_BUDGET, PL_LB_SETS, PL_NEIGHBORS, PL_SNAT_POOLS, PL_VPC_PORTS, config,
        scratch,
    },
    nat,
    parse::{
        ETH_LEN, EthHdr, Ipv4Hdr, Ports, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, be16,
        l4_consistent, mut_at, tcp_flags,
    },
};

const SNAT_ATTEMPTS: u32 = 8;
/// How often (at most) a busy flow re-checks that its reply entry still exists.
const PARTNER_REFRESH_NS: u64 = 1_000_000_000;

/// The flow clock: CLOCK_MONOTONIC at tick resolution. Idle timeouts are seconds, and
/// the coarse clock costs no TSC read (a sixth of an established reply's cost here).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Reads the 5-tuple of a TCP/UDP packet whose L4 header must be complete.
#[inline(always)]
fn flow_key(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
) -> Result<(FlowKey, u8, SeqAck), Reason> {
    l4_consistent(ctx, pkt.l4, pkt.end, pkt.proto)?;
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let ports = mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    let (flags, nums) = if pkt.proto == PROTO_TCP {
        let tcp = mut_at::<TcpHdr>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
        (
            tcp_flags(tcp),
            SeqAck {
                seq: u32::from_be_bytes(tcp.seq),
                ack: u32::from_be_bytes(tcp.ack_seq),
            },
        )
    } else {
        (0, SeqAck::default())
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
        _pad: 0,
        _pad2: 0,
    };
    Ok((key, flags, nums))
}

/// A TCP segment's sequence and acknowledgment numbers (zero for other protocols): what
/// the handshake tracking compares.
#[derive(Clone, Copy, Default)]
pub struct SeqAck {
    pub seq: u32,
    pub ack: u32,
}

/// What `established` returns when the packet is not one it can take: the full path then
/// decides (no valid `settle` value has all of its high half set).
pub const NOT_ESTABLISHED: u64 = u64::MAX;

/// The established fast path, tried first for every TCP/UDP packet: a flow whose entry
/// was checked under the current epoch (`PL_EPOCH`: the daemon's maps have not changed
/// since) is forwarded on one conntrack lookup, without looking up the endpoint, SNAT
/// address or routes again. Anything else — no entry, another epoch, a per-packet ACL, an
/// idle direction, a partner check due, TTL 1 — returns `NOT_ESTABLISHED`, never an error
/// of its own: the full path decides and stamps. Inlined into the entry program (a call
/// and the packed verdict cost more than its stack frame saves).
#[inline(always)]
pub fn established(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    match established_checked(ctx, iface, pkt) {
        Ok(None) => NOT_ESTABLISHED,
        Ok(Some(v)) => crate::settle(Ok(v)),
        Err(r) => crate::settle(Err(r)),
    }
}

/// Ethernet, an IPv4 header without options and the first 20 bytes after it: what the
/// established path reads and writes, under one bounds check, at fixed offsets. As 16-bit
/// words in memory order (network order on the wire; the frame starts 2-aligned, as
/// everywhere in this program): LLVM's BPF backend splits any access it cannot prove
/// aligned into single bytes, and byte-wise this path ran several times the instructions.
#[repr(C)]
struct Head {
    macs: [u16; 6],
    ether_type: u16,
    ip: [u16; 10],
    l4: [u16; 10],
}

// Word indexes in `Head::ip` and `Head::l4`.
const IP_FRAGS: usize = 3;
const IP_TTL_PROTO: usize = 4;
const IP_CHECK: usize = 5;
const IP_SRC: usize = 6;
const IP_DST: usize = 8;
const TCP_DOFF_FLAGS: usize = 6;
const TCP_CHECK: usize = 8;
const UDP_LEN: usize = 2;
const UDP_CHECK: usize = 3;

/// The address in words `i` and `i + 1`.
#[inline(always)]
fn addr_at(w: &[u16; 10], i: usize) -> [u8; 4] {
    let [a, b] = w[i].to_ne_bytes();
    let [c, d] = w[i + 1].to_ne_bytes();
    [a, b, c, d]
}

/// Writes `a` into words `i` and `i + 1`.
#[inline(always)]
fn set_addr_at(w: &mut [u16; 10], i: usize, a: [u8; 4]) {
    w[i] = u16::from_ne_bytes([a[0], a[1]]);
    w[i + 1] = u16::from_ne_bytes([a[2], a[3]]);
}

// The MAC addresses of a flow entry lie at even offsets of an 8-aligned value.
const _: () = assert!(
    core::mem::offset_of!(FlowEntry, src_mac) % 2 == 0
        && core::mem::offset_of!(FlowEntry, dst_mac) % 2 == 0
        && core::mem::align_of::<FlowEntry>() >= 2
);

/// Writes a flow entry's MAC address (`mac`, one of its fields) into three words from `at`.
#[inline(always)]
fn set_mac_at(w: &mut [u16; 6], at: usize, mac: &[u8; 6]) {
    // SAFETY: `mac` is a MAC field of a `FlowEntry`, 2-aligned (asserted above); read as
    // the three words it holds.
    let words = unsafe { core::ptr::read(mac.as_ptr() as *const [u16; 3]) };
    for i in 0..3 {
        w[at + i] = words[i];
    }
}

#[inline(always)]
fn established_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
) -> Result<Option<Verdict>, Reason> {
    let tcp = pkt.proto == PROTO_TCP;
    if pkt.epoch == 0 || pkt.l4 != ETH_LEN + 20 || !(tcp || pkt.proto == PROTO_UDP) {
        return Ok(None);
    }
    // Shorter frames, fragments, TTL 1 and L4 headers that do not fit the packet are the
    // full path's to judge.
    let Ok(h) = mut_at::<Head>(ctx, 0, Reason::DropTruncatedL4) else {
        return Ok(None);
    };
    let (ip, l4) = (&mut h.ip, &mut h.l4);
    let [ttl, proto] = ip[IP_TTL_PROTO].to_ne_bytes();
    let [frag_hi, frag_lo] = ip[IP_FRAGS].to_ne_bytes();
    if ttl <= 1 || frag_hi & 0x3f != 0 || frag_lo != 0 {
        return Ok(None);
    }
    let (l4_len, l4_min) = if tcp {
        ((l4[TCP_DOFF_FLAGS].to_ne_bytes()[0] >> 4) as usize * 4, 20)
    } else {
        (u16::from_be(l4[UDP_LEN]) as usize, 8)
    };
    if l4_len < l4_min || pkt.l4 + l4_len > pkt.end {
        return Ok(None);
    }
    let key = FlowKey {
        vpc_id: iface.vpc_id,
        src: addr_at(ip, IP_SRC),
        dst: addr_at(ip, IP_DST),
        sport: u16::from_be(l4[0]),
        dport: u16::from_be(l4[1]),
        proto: pkt.proto,
        _pad: 0,
        _pad2: 0,
    };
    let Some(p) = PL_CONNTRACK.get_ptr_mut(key) else {
        return Ok(None);
    };
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let e = unsafe { &mut *p };
    let t = now();
    if e.epoch != pkt.epoch
        || e.is_expired(key.proto, t, &config())
        || (e.direction == DIR_ORIGINAL && t.saturating_sub(e.checked_ns) > PARTNER_REFRESH_NS)
    {
        return Ok(None);
    }
    // RFC 1812: a router verifies the header checksum before forwarding.
    if csum::fold(ipv4::sum_header(ip)) != 0xffff {
        return Err(Reason::DropBadIpChecksum);
    }
    let (flags, nums) = if tcp {
        let word = |i: usize| {
            let [a, b] = l4[i].to_ne_bytes();
            let [c, d] = l4[i + 1].to_ne_bytes();
            u32::from_be_bytes([a, b, c, d])
        };
        (
            l4[TCP_DOFF_FLAGS].to_ne_bytes()[1] & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK),
            SeqAck {
                seq: word(2),
                ack: word(4),
            },
        )
    } else {
        (0, SeqAck::default())
    };
    let dir = e.direction;
    track(e, &key, flags, nums, t, dir);
    e.fast_packets = e.fast_packets.wrapping_add(1);
    // The rewrite, with the checksum deltas computed when the flow was stamped.
    ip[IP_TTL_PROTO] = u16::from_ne_bytes([ttl - 1, proto]);
    set_addr_at(ip, IP_SRC, e.new_src);
    set_addr_at(ip, IP_DST, e.new_dst);
    ip[IP_CHECK] = csum::apply_delta(ip[IP_CHECK], e.csum_ip);
    l4[0] = e.new_sport.to_be();
    l4[1] = e.new_dport.to_be();
    let at = if tcp { TCP_CHECK } else { UDP_CHECK };
    let old = l4[at];
    let c = csum::apply_delta(old, e.csum_l4);
    l4[at] = if tcp { c } else { csum::udp_finish(old, c) };
    set_mac_at(&mut h.macs, 0, &e.dst_mac);
    set_mac_at(&mut h.macs, 3, &e.src_mac);
    let reason = if e.direction == DIR_ORIGINAL {
        Reason::ForwardToService
    } else {
        Reason::ForwardToConsumer
    };
    nat::redirect_to(e.out_ifindex, reason).map(Some)
}

/// Marks `e` (the entry of `key`) as checked under `epoch`, with the checksum deltas of
/// its rewrite, so its next packets take the established path.
#[inline(always)]
fn stamp(e: &mut FlowEntry, key: &FlowKey, epoch: u32) {
    let addrs = csum::delta4(key.src, e.new_src) + csum::delta4(key.dst, e.new_dst);
    e.csum_ip = csum::fold(addrs + csum::delta_ttl_decrement());
    e.csum_l4 = csum::fold(
        addrs + csum::delta_port(key.sport, e.new_sport) + csum::delta_port(key.dport, e.new_dport),
    );
    e.epoch = epoch;
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
    let (key, flags, nums) = flow_key(ctx, iface, pkt)?;
    let gateway = eni.flags & ENI_FLAG_GATEWAY != 0;
    if !gateway {
        filter::acl_in(eni_key, eni, key.src, key.proto, key.dport)?;
    }
    // Only what the service publishes crosses, established flows included (this path
    // runs for them again after every change of the daemon's maps).
    filter::listener(eni.service_id, key.proto, key.dport)?;
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
    // Checked under this epoch: the next packets may take the established path, unless
    // an ACL has to see every packet.
    if gateway || eni.flags & ENI_FLAG_ACL == 0 {
        stamp(e, &key, pkt.epoch);
    }
    track(e, &key, flags, nums, t, DIR_ORIGINAL);
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
    let (key, flags, nums) = flow_key(ctx, iface, pkt)?;
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
    let per_packet_acl = if e.flags & FLOW_GATEWAY != 0 {
        let gw = check_gateway_at(e.out_vpc_id, e.new_src)?;
        if gw.endpoint_id != e.endpoint_id {
            return Err(Reason::DropNoFlow);
        }
        filter::listener(gw.service_id, pkt.proto, e.new_sport)?;
        false
    } else {
        let eni = check_endpoint_at(e.out_vpc_id, e.new_src)?;
        if eni.endpoint_id != e.endpoint_id {
            return Err(Reason::DropNoFlow);
        }
        filter::listener(eni.service_id, pkt.proto, e.new_sport)?;
        let eni_key = VpcAddr {
            vpc_id: e.out_vpc_id,
            addr: e.new_src,
        };
        filter::acl_out(eni_key, &eni, e.new_dst, pkt.proto, e.new_sport)?;
        eni.flags & ENI_FLAG_ACL != 0
    };
    // As in `forward`: checked under this epoch.
    if !per_packet_acl {
        stamp(e, &key, pkt.epoch);
    }
    track(e, &key, flags, nums, t, DIR_REPLY);
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
        epoch: 0,
        csum_ip: 0,
        csum_l4: 0,
        fast_packets: 0,
        _pad2: 0,
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
    let h = hash::tuple_hash(
        key.src, key.dst, key.sport, key.dport, key.proto, key.vpc_id,
    );
    let lb = load_balancer(eni, h);
    // A gateway flow keeps its destination; the load balancer is then only the next hop.
    let new_dst = if eni.flags & ENI_FLAG_GATEWAY != 0 {
        key.dst
    } else {
        lb
    };
    // SAFETY: references into maps only the daemon writes, used within this run.
    let port = unsafe { PL_VPC_PORTS.get(eni.provider_vpc_id) }.ok_or(Reason::DropNoRoute)?;
    let neigh = unsafe {
        PL_NEIGHBORS.get(VpcAddr {
            vpc_id: eni.provider_vpc_id,
            addr: lb,
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
    take_token(eni, count as u64 * range as u64, t, cfg)?;

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
            _pad: 0,
            _pad2: 0,
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
                epoch: 0,
                csum_ip: 0,
                csum_l4: 0,
                fast_packets: 0,
                _pad2: 0,
            }
        };
        // SAFETY: as above.
        if PL_CONNTRACK
            .insert(key, unsafe { &*fwd }, BPF_ANY as u64)
            .is_err()
        {
            let _ = PL_CONNTRACK.remove(reply_key);
            refund(eni);
            return Err(Reason::DropConntrackFull);
        }
        return PL_CONNTRACK
            .get_ptr_mut(key)
            .ok_or(Reason::DropConntrackFull);
    }
    refund(eni);
    Err(Reason::DropSnatExhausted)
}

/// A new flow that took a token and could not be made gives it back.
#[inline(always)]
fn refund(eni: &EndpointEni) {
    if eni.flow_share != 0 {
        give_token_back(eni.endpoint_id);
    }
}

/// The load balancer a new flow goes to: the ENI's zone's one, or with several, one of
/// them by the flow's hash (`PL_LB_SETS`).
#[inline(always)]
fn load_balancer(eni: &EndpointEni, h: u32) -> [u8; 4] {
    if eni.flags & ENI_FLAG_LB_SET == 0 {
        return eni.lb_addr;
    }
    let key = GwlbZone {
        service_id: eni.service_id,
        zone_id: eni.zone_id,
    };
    // SAFETY: a reference into a map the daemon writes whole entries of; read in this run.
    match unsafe { PL_LB_SETS.get(key) } {
        // The daemon's rendezvous-hashed slots (see `LbSet`): no loop here.
        // The daemon's rendezvous-hashed slots (see `LbSet`): no loop here.
        Some(set) if set.count > 0 => {
            let slot = (hash::mix32(h) as usize) & (LB_SLOTS - 1);
            set.addrs[(set.slots[slot] as usize) & (MAX_LBS_PER_ZONE - 1)]
        }
        _ => eni.lb_addr,
    }
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
    // Expired, or embryonic and idle (a half-open flow of this endpoint's own).
    let stale = |x: &FlowEntry| x.is_stale_for(proto, t, cfg, reply.endpoint_id);
    if !stale(old) {
        return false;
    }
    // SAFETY: copied out.
    if let Some(fwd) = unsafe { PL_CONNTRACK.get(old_fwd_key) } {
        if fwd.partner_key(proto) == *reply_key && !stale(fwd) {
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

/// Takes one of the endpoint's new-flow tokens (`FlowBudget`): its share of the
/// service's `pool` SNAT tuples, or of the flow table if that is smaller, refilled over
/// the embryonic timeout.
#[inline(always)]
fn take_token(eni: &EndpointEni, pool: u64, t: u64, cfg: &Config) -> Result<(), Reason> {
    if eni.flow_share == 0 {
        return Ok(());
    }
    let cap = if pool < cfg.flow_capacity {
        pool
    } else {
        cfg.flow_capacity
    };
    // Half the share: embryonic flows live the embryonic timeout from their creation, so
    // a full bucket plus what refills over that time is the most an endpoint holds.
    let budget = (cap * eni.flow_share as u64 / 200).max(1) as u32;
    let Some(b) = PL_EP_BUDGET.get_ptr_mut(eni.endpoint_id) else {
        let fresh = FlowBudget {
            tokens: budget - 1,
            budget,
            last_ns: t,
            refused: 0,
        };
        let _ = PL_EP_BUDGET.insert(eni.endpoint_id, &fresh, 0);
        return Ok(());
    };
    // SAFETY: valid for this run. CPUs racing here may lose an update of each other's:
    // the allowance is approximate by a few tokens, never unbounded.
    let b = unsafe { &mut *b };
    b.budget = budget;
    let window = cfg.embryonic_timeout_ns.max(1);
    let elapsed = t.saturating_sub(b.last_ns);
    let elapsed = if elapsed > window { window } else { elapsed };
    let add = elapsed * budget as u64 / window;
    if add > 0 {
        let tokens = b.tokens as u64 + add;
        b.tokens = if tokens > budget as u64 {
            budget
        } else {
            tokens as u32
        };
        b.last_ns = t;
    }
    if b.tokens == 0 {
        b.refused += 1;
        return Err(Reason::DropEndpointFlowLimit);
    }
    b.tokens -= 1;
    Ok(())
}

/// A flow leaves the embryonic state: its token goes back to its endpoint.
#[inline(always)]
fn give_token_back(endpoint_id: u32) {
    if let Some(b) = PL_EP_BUDGET.get_ptr_mut(endpoint_id) {
        // SAFETY: valid for this run (see `take_token` on races).
        let b = unsafe { &mut *b };
        if b.tokens < b.budget {
            b.tokens += 1;
        }
    }
}

/// Until a flow is established (`CT_ESTABLISHED` on both entries; then it gets its full
/// idle timeout and its endpoint its new-flow token back):
/// - TCP: the server's SYN-ACK marks it replied and tells the forward entry what the
///   client's ACK must acknowledge; the client's ACK that does (the handshake's third
///   segment, so a blind ACK from a spoofed source cannot) establishes it; so does any
///   segment from the server that is neither SYN nor RST (the server holds the connection
///   as established: also what re-establishes flows a build without this state left).
/// - Other protocols: a reply marks it replied; the client's next packet after a reply
///   establishes it (a stream, as Linux's conntrack calls it; a single query and answer
///   stays embryonic).
#[inline(always)]
fn settle_handshake(e: &mut FlowEntry, key: &FlowKey, flags: u8, nums: SeqAck, dir: u8) {
    let tcp = key.proto == PROTO_TCP;
    let gwlb = e.flags & FLOW_GWLB != 0;
    let mut mark = 0u8;
    let mut want_ack = 0u32;
    // (A reply seen once marks both entries: later ones, and retransmitted SYN-ACKs with
    // the same sequence number, need no partner lookup.)
    let replied = e.tcp_flags & CT_REPLIED != 0;
    if dir == DIR_REPLY {
        if !tcp {
            if !replied {
                mark = CT_REPLIED;
            }
        } else if flags & TCP_RST == 0 {
            if flags & TCP_SYN != 0 {
                if !replied {
                    mark = CT_REPLIED;
                    if !gwlb {
                        want_ack = nums.seq.wrapping_add(1);
                    }
                }
            } else if flags & TCP_ACK != 0 {
                mark = CT_REPLIED | CT_ESTABLISHED;
            }
        }
    } else if e.tcp_flags & CT_REPLIED != 0
        && (!tcp
            || (!gwlb
                && flags & (TCP_ACK | TCP_SYN | TCP_RST) == TCP_ACK
                && nums.ack == e.handshake_ack()))
    {
        mark = CT_ESTABLISHED;
    }
    if mark == 0 {
        return;
    }
    e.tcp_flags |= mark;
    if let Some(p) = PL_CONNTRACK.get_ptr_mut(e.partner(key)) {
        // SAFETY: valid for this run.
        let p = unsafe { &mut *p };
        p.tcp_flags |= mark;
        if want_ack != 0 {
            p.set_handshake_ack(want_ack);
        }
    }
    if mark & CT_ESTABLISHED != 0 && !gwlb {
        give_token_back(e.endpoint_id);
    }
}

/// TCP connection tracking: RST closes at once, FIN in both directions closes, a SYN
/// reopens a closing flow (the client reused its port); a flow is embryonic until its
/// handshake completes (`settle_handshake`). Refreshes the idle timer.
/// `dir` is the entry's direction: a constant where the caller knows it (the forward and
/// reply paths), so the verifier walks only that half of the handshake tracking.
#[inline(always)]
pub fn track(e: &mut FlowEntry, key: &FlowKey, flags: u8, nums: SeqAck, t: u64, dir: u8) {
    let proto = key.proto;
    if e.tcp_flags & CT_ESTABLISHED == 0 {
        settle_handshake(e, key, flags, nums, dir);
    }
    // An embryonic flow's clock runs from its creation: resent SYNs (or the server's
    // SYN-ACK retransmissions) do not keep a half-open flow, or its SNAT tuple, alive
    // past the embryonic timeout, so an endpoint holds at most its share of them, whatever
    // it sends. Only the server keeps a UDP (or other non-TCP) flow alive before the
    // client talks again (a stream it pushes after one request).
    if e.tcp_flags & CT_ESTABLISHED != 0 || (dir == DIR_REPLY && proto != PROTO_TCP) {
        e.last_seen_ns = t;
    }
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
