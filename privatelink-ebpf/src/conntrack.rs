//! The flow table: both directions of every NATed (and GWLB) flow live in `PL_CONNTRACK`.
//! Keys, the entries a new flow gets, SNAT tuple claims, liveness, TCP tracking, and the
//! endpoints' new-flow tokens. The forward, reply, ICMP and GWLB paths and the established
//! fast path use it; it uses only `parse`, `packet` and `maps`.
//!
//! SNAT port allocation claims the reply-direction key with `BPF_NOEXIST`, so a
//! provider-side tuple can never belong to two live flows; an entry whose flow has been
//! idle past its timeout (both directions) may be taken over.
//!
//! What does not depend on the address family (claims, liveness, TCP tracking, tokens)
//! is generic over `Flow`, which IPv6's table (`conntrack6`) implements too: each family
//! gets its own monomorphized, inlined copy, so IPv4 runs the code it ran before.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
    programs::XdpContext,
};
use privatelink_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_FIN_SEEN, CT_REPLIED, Config, DIR_ORIGINAL, DIR_REPLY,
    ENI_FLAG_FLOW_LOG, ENI_FLAG_GATEWAY, ENI_FLAG_LB_SET, EndpointEni, FLOW_GWLB, FLOW_LOGGED,
    FlowBudget, FlowEntry, FlowKey, GwlbZone, IfaceInfo, LB_SLOTS, MAX_LBS_PER_ZONE,
    MAX_SNAT_ADDRS, PROTO_TCP, Reason, VpcAddr, checked_tick, csum, hash, seen_tick,
};

use crate::{
    flowtable::{FLOWS, Seen},
    maps::{PL_EP_BUDGET, PL_LB_SETS, PL_NEIGHBORS, PL_SNAT_POOLS, PL_VPC_PORTS, config, scratch},
    packet::Packet,
    parse::{
        ETH_LEN, Ipv4Hdr, Ports, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, be16, l4_consistent,
        mut_at, tcp_flags,
    },
};

/// Tuples a new flow tries.
pub const SNAT_ATTEMPTS: u32 = 8;
/// How often (at most) a busy flow re-checks that its reply entry still exists.
pub const PARTNER_REFRESH_NS: u64 = 1_000_000_000;

/// The flow clock (`maps::now`): CLOCK_MONOTONIC at tick resolution. Idle timeouts are
/// seconds; the coarse clock costs no TSC read, and its cached reading no helper call.
#[inline(always)]
pub fn now() -> u64 {
    crate::maps::now()
}

/// Reads the 5-tuple of a TCP/UDP packet whose L4 header must be complete.
#[inline(always)]
pub fn flow_key(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
) -> Result<(FlowKey, u8, SeqAck), Reason> {
    // The L4 header is checked here and again in `l4_state`, the IPv4 header read between:
    // the verifier's pruning is that sensitive to the order. Measured on the forward
    // program: this order 626 191 instructions; `l4_state` alone first 715 681; the check
    // here only (not in `l4_state`) 693 292. The repeated check costs a few instructions
    // on a new flow's packet, never on the established path.
    l4_consistent(ctx, pkt.l4, pkt.end, pkt.proto)?;
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let (ports, flags, nums) = l4_state(ctx, pkt)?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let key = FlowKey::new(
        iface.vpc_id,
        ip.src_addr,
        ip.dst_addr,
        ports.0,
        ports.1,
        pkt.proto,
    );
    Ok((key, flags, nums))
}

/// What a flow key and the TCP tracking read of a TCP/UDP header (of either family),
/// which must be complete: the ports (host order), the TCP flags and numbers.
#[inline(always)]
pub fn l4_state(ctx: &XdpContext, pkt: &Packet) -> Result<((u16, u16), u8, SeqAck), Reason> {
    l4_consistent(ctx, pkt.l4, pkt.end, pkt.proto)?;
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
    Ok(((be16(ports.sport), be16(ports.dport)), flags, nums))
}

/// A TCP segment's sequence and acknowledgment numbers (zero for other protocols): what
/// the handshake tracking compares.
#[derive(Clone, Copy, Default)]
pub struct SeqAck {
    pub seq: u32,
    pub ack: u32,
}

/// Marks `e` (the entry of `key`) as checked under `epoch`, with the checksum deltas of
/// its rewrite, so its next packets take the established path.
#[inline(always)]
pub fn stamp(e: &mut FlowEntry, key: &FlowKey, epoch: u32) {
    let addrs = csum::delta4(key.src, e.new_src) + csum::delta4(key.dst, e.new_dst);
    e.csum_ip = csum::fold(addrs + csum::delta_ttl_decrement());
    e.csum_l4 = csum::fold(
        addrs + csum::delta_port(key.sport, e.new_sport) + csum::delta_port(key.dport, e.new_dport),
    );
    e.epoch = epoch;
}

/// Gives `e` its endpoint ENI's counter slot and flow-log mark (they follow the ENI: a
/// flow made before flow logs were turned on is logged from its next full-path packet).
#[inline(always)]
pub fn mark<E: Flow>(e: &mut E, eni: &EndpointEni) {
    // Without a branch: a branch on the ENI's flags here would have the verifier walk the
    // rest of the forward path twice (once knowing the bit set, once clear).
    const SHIFT: u32 = ENI_FLAG_FLOW_LOG.trailing_zeros() - FLOW_LOGGED.trailing_zeros();
    const _: () = assert!(ENI_FLAG_FLOW_LOG >> SHIFT == FLOW_LOGGED as u32);
    *e.counter_slot_mut() = eni.counter_slot as u16;
    let flags = e.flags_mut();
    *flags = (*flags & !FLOW_LOGGED) | ((eni.flags & ENI_FLAG_FLOW_LOG) >> SHIFT) as u8;
}

/// A flow lives while either direction was seen within its idle timeout (a one-way UDP
/// stream keeps its replies deliverable, and the other way round).
#[inline(always)]
pub fn alive<E: Flow>(e: &E, key: &E::Key, t: u64, cfg: &Config) -> bool {
    let proto = E::proto(key);
    if !e.is_expired(proto, t, cfg) {
        return true;
    }
    // SAFETY: copied out.
    let pk = e.partner(key);
    match unsafe { E::table().get(pk) } {
        Some(p) => E::same_key(&p.partner(&pk), key) && !p.is_expired(proto, t, cfg),
        None => false,
    }
}

/// The entry that turns a reply (provider side) back into the consumer's view. Its egress
/// MAC is the sender of the original packet: the client, or the router in front of it.
#[inline(always)]
pub fn reply_entry(
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
        last_seen: seen_tick(t),
        checked: checked_tick(t),
        ..FlowEntry::zeroed()
    }
}

/// Creates both entries of a new flow; returns the original-direction entry.
#[inline(always)]
pub fn create(
    key: &FlowKey,
    eni: &EndpointEni,
    reply: &FlowEntry,
    t: u64,
) -> Result<Seen<FlowEntry>, Reason> {
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

    // Double hashing (an odd stride, not consecutive ports: linear probing clusters, and
    // a pool three quarters full then failed most first packets — found by the lab flood
    // test). Each attempt also moves to the next address, so the attempts spread over the
    // whole pool. The first attempt is the flow's hash: a flow that lost its entries (the
    // LRU may evict either) is made again on its own tuple, so the provider's connection
    // goes on. The stride is drawn afresh for every packet: should the first attempt
    // meet a taken tuple, a retransmitted SYN tries other tuples, where with a hashed
    // stride every retransmission met the same taken ones and the connection failed
    // (seen in CI: another endpoint's connection, during a flood that held 38 % of the
    // pool). (A random stride, not a random start for the later attempts: any
    // per-attempt choice, or the first attempt apart, costs the verifier a sixth to a
    // third more of its budget. Over a range of 2^n ports, k × an odd stride never moves
    // by a multiple of 8 for k < 8: a retransmission reaches 7 in 8 of the tuples, which
    // matters only when one or two are left.)
    // SAFETY: a helper without arguments.
    let stride = hash::mix32(h ^ unsafe { bpf_get_prandom_u32() }) | 1;
    crate::flowtable::clear_refused();
    for attempt in 0..SNAT_ATTEMPTS {
        let idx = (((h >> 16).wrapping_add(attempt) % count) as usize) & (MAX_SNAT_ADDRS - 1);
        let snat_addr = pool.addrs[idx];
        let snat_port =
            pool.port_min + (h.wrapping_add(attempt.wrapping_mul(stride)) % range) as u16;
        let reply_key = FlowKey::new(
            eni.provider_vpc_id,
            new_dst,
            snat_addr,
            key.dport,
            snat_port,
            key.proto,
        );
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
                flags: reply.flags,
                counter_slot: reply.counter_slot,
                last_seen: seen_tick(t),
                checked: checked_tick(t),
                ..FlowEntry::zeroed()
            }
        };
        // SAFETY: as above.
        if FLOWS.insert(key, unsafe { &*fwd }, BPF_ANY as u64).is_err() {
            let _ = FLOWS.remove(reply_key);
            refund(eni);
            return Err(Reason::DropConntrackFull);
        }
        return FLOWS.get_seen(key).ok_or(Reason::DropConntrackFull);
    }
    refund(eni);
    Err(crate::flowtable::search_failure())
}

/// A new flow that took a token and could not be made gives it back.
#[inline(always)]
pub fn refund(eni: &EndpointEni) {
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
pub fn claim<E: Flow>(
    reply_key: &E::Key,
    reply: &E,
    fwd_key: &E::Key,
    t: u64,
    cfg: &Config,
) -> bool {
    let table = E::table();
    if table.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // SAFETY: copied out.
    // (References into the map, not copies: the verifier's stack is small.)
    let Some(old) = (unsafe { table.get(reply_key) }) else {
        return false;
    };
    let old_seen = old.last_seen();
    let proto = E::proto(reply_key);
    let old_fwd_key = old.partner_key(proto);
    if E::same_key(&old_fwd_key, fwd_key) {
        return table.insert(reply_key, reply, BPF_ANY as u64).is_ok();
    }
    // Expired, or embryonic and idle (a half-open flow of this endpoint's own).
    let stale = |x: &E| x.is_stale_for(proto, t, cfg, reply.endpoint_id());
    if !stale(old) {
        return false;
    }
    // SAFETY: copied out.
    if let Some(fwd) = unsafe { table.get(old_fwd_key) } {
        if E::same_key(&fwd.partner_key(proto), reply_key) && !stale(fwd) {
            return false;
        }
        if E::same_key(&fwd.partner_key(proto), reply_key) {
            let _ = table.remove(old_fwd_key);
        }
    }
    // Take the stale entry over so that of two CPUs racing for it only one wins: remove
    // it (only if it is still the one judged stale), then insert with BPF_NOEXIST.
    // SAFETY: copied out.
    match unsafe { table.get(reply_key) } {
        Some(cur) if cur.last_seen() != old_seen => return false,
        Some(_) => {
            let _ = table.remove(reply_key);
        }
        None => {}
    }
    table.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok()
}

/// Makes sure the reply entry of a live flow still exists and is this flow's (LRU may
/// have evicted it, and another flow may have claimed the tuple since); re-creates it if
/// it is missing, false if the tuple now belongs to someone else.
#[inline(always)]
pub fn keep_partner<E: Flow>(e: &E, key: &E::Key, reply: &E) -> bool {
    let proto = E::proto(key);
    let pk = e.partner_key(proto);
    // SAFETY: copied out.
    match unsafe { E::table().get(pk) } {
        Some(p) => E::same_key(&p.partner_key(proto), key),
        None => E::table().insert(pk, reply, BPF_NOEXIST as u64).is_ok(),
    }
}

/// Takes one of the endpoint's new-flow tokens (`FlowBudget`): its share of the
/// service's `pool` SNAT tuples, or of the flow table if that is smaller, refilled over
/// the embryonic timeout.
#[inline(always)]
pub fn take_token(eni: &EndpointEni, pool: u64, t: u64, cfg: &Config) -> Result<(), Reason> {
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
fn settle_handshake<E: Flow>(e: &mut E, key: &E::Key, flags: u8, nums: SeqAck, dir: u8) {
    let tcp = E::proto(key) == PROTO_TCP;
    let gwlb = *e.flags_mut() & FLOW_GWLB != 0;
    let mut mark = 0u8;
    let mut want_ack = 0u32;
    // (A reply seen once marks both entries: later ones, and retransmitted SYN-ACKs with
    // the same sequence number, need no partner lookup.)
    let replied = *e.tcp_flags_mut() & CT_REPLIED != 0;
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
    } else if *e.tcp_flags_mut() & CT_REPLIED != 0
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
    *e.tcp_flags_mut() |= mark;
    if let Some(p) = E::table().get_ptr_mut(e.partner(key)) {
        // SAFETY: valid for this run.
        let p = unsafe { &mut *p };
        *p.tcp_flags_mut() |= mark;
        // Not into a GWLB flow's delivery MAC, whose bytes hold the number in a NAT
        // flow: the partner's slot may have been given to one since it was found
        // (`flowtable`: what a path writes after its check).
        if want_ack != 0 && *p.flags_mut() & FLOW_GWLB == 0 {
            p.set_handshake_ack(want_ack);
        }
    }
    if mark & CT_ESTABLISHED != 0 && !gwlb {
        give_token_back(e.endpoint_id());
    }
}

/// TCP connection tracking: RST closes at once, FIN in both directions closes, a SYN
/// reopens a closing flow (the client reused its port); a flow is embryonic until its
/// handshake completes (`settle_handshake`). Refreshes the idle timer.
/// `dir` is the entry's direction: a constant where the caller knows it (the forward and
/// reply paths), so the verifier walks only that half of the handshake tracking.
#[inline(always)]
pub fn track<E: Flow>(e: &mut E, key: &E::Key, flags: u8, nums: SeqAck, t: u64, dir: u8) {
    let proto = E::proto(key);
    if *e.tcp_flags_mut() & CT_ESTABLISHED == 0 {
        settle_handshake(e, key, flags, nums, dir);
    }
    // An embryonic flow's clock runs from its creation: resent SYNs (or the server's
    // SYN-ACK retransmissions) do not keep a half-open flow, or its SNAT tuple, alive
    // past the embryonic timeout, so an endpoint holds at most its share of them, whatever
    // it sends. Only the server keeps a UDP (or other non-TCP) flow alive before the
    // client talks again (a stream it pushes after one request).
    if *e.tcp_flags_mut() & CT_ESTABLISHED != 0 || (dir == DIR_REPLY && proto != PROTO_TCP) {
        *e.last_seen_mut() = seen_tick(t);
    }
    if proto != PROTO_TCP || flags & (TCP_FIN | TCP_RST | TCP_SYN) == 0 {
        return;
    }
    // A SYN changes nothing unless the flow is closing: a retransmitted SYN or SYN-ACK of
    // an open flow spares the partner's lookup.
    if flags & (TCP_RST | TCP_SYN) == TCP_SYN && *e.tcp_flags_mut() & CT_CLOSING == 0 {
        return;
    }
    let partner = E::table().get_ptr_mut(e.partner(key));
    let state = e.tcp_flags_mut();
    if flags & TCP_RST != 0 {
        *state |= CT_CLOSING;
        if let Some(p) = partner {
            // SAFETY: valid for this run.
            unsafe { *(*p).tcp_flags_mut() |= CT_CLOSING };
        }
    } else if flags & TCP_SYN != 0 {
        if *state & CT_CLOSING != 0 {
            *state = 0;
            if let Some(p) = partner {
                // SAFETY: valid for this run.
                unsafe { *(*p).tcp_flags_mut() = 0 };
            }
        }
    } else {
        *state |= CT_FIN_SEEN;
        if let Some(p) = partner {
            // SAFETY: valid for this run.
            let p = unsafe { (*p).tcp_flags_mut() };
            if *p & CT_FIN_SEEN != 0 {
                *p |= CT_CLOSING;
                *state |= CT_CLOSING;
            }
        }
    }
}

/// A flow table (`flowtable`): both have the same (configured) capacity.
pub type Table<E> = crate::flowtable::Table<E>;

/// An address family's flow entries, for what both flow tables share: claims, liveness,
/// TCP tracking, marks. Implemented by `FlowEntry` (`PL_CONNTRACK`) here and by
/// `FlowEntry6` (`PL_CONNTRACK6`) in `conntrack6`; the entries have the same fields by
/// the same names, and the accessors are those fields.
pub trait Flow: crate::flowtable::Tabled {
    fn table() -> &'static Table<Self>;
    fn proto(key: &Self::Key) -> u8;
    /// Whether two keys are the same flow direction's.
    fn same_key(a: &Self::Key, b: &Self::Key) -> bool;
    /// The key of the other direction of the flow stored under `key`.
    fn partner(&self, key: &Self::Key) -> Self::Key;
    /// NATed flows: the partner's key, from the rewritten tuple.
    fn partner_key(&self, proto: u8) -> Self::Key;
    fn is_expired(&self, proto: u8, now_ns: u64, cfg: &Config) -> bool;
    fn is_stale_for(&self, proto: u8, now_ns: u64, cfg: &Config, endpoint_id: u32) -> bool;
    fn handshake_ack(&self) -> u32;
    fn set_handshake_ack(&mut self, ack: u32);
    fn last_seen(&self) -> u32;
    fn endpoint_id(&self) -> u32;
    fn tcp_flags_mut(&mut self) -> &mut u8;
    fn flags_mut(&mut self) -> &mut u8;
    fn last_seen_mut(&mut self) -> &mut u32;
    fn counter_slot_mut(&mut self) -> &mut u16;
}

/// The accessors every family's entry has, as its fields (`Flow`).
macro_rules! flow_fields {
    () => {
        #[inline(always)]
        fn last_seen(&self) -> u32 {
            self.last_seen
        }
        #[inline(always)]
        fn endpoint_id(&self) -> u32 {
            self.endpoint_id
        }
        #[inline(always)]
        fn tcp_flags_mut(&mut self) -> &mut u8 {
            &mut self.tcp_flags
        }
        #[inline(always)]
        fn flags_mut(&mut self) -> &mut u8 {
            &mut self.flags
        }
        #[inline(always)]
        fn last_seen_mut(&mut self) -> &mut u32 {
            &mut self.last_seen
        }
        #[inline(always)]
        fn counter_slot_mut(&mut self) -> &mut u16 {
            &mut self.counter_slot
        }
    };
}
pub(crate) use flow_fields;

impl Flow for FlowEntry {
    #[inline(always)]
    fn table() -> &'static Table<FlowEntry> {
        &FLOWS
    }
    #[inline(always)]
    fn proto(key: &FlowKey) -> u8 {
        key.proto
    }
    #[inline(always)]
    fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
        a == b
    }
    #[inline(always)]
    fn partner(&self, key: &FlowKey) -> FlowKey {
        FlowEntry::partner(self, key)
    }
    #[inline(always)]
    fn partner_key(&self, proto: u8) -> FlowKey {
        FlowEntry::partner_key(self, proto)
    }
    #[inline(always)]
    fn is_expired(&self, proto: u8, now_ns: u64, cfg: &Config) -> bool {
        FlowEntry::is_expired(self, proto, now_ns, cfg)
    }
    #[inline(always)]
    fn is_stale_for(&self, proto: u8, now_ns: u64, cfg: &Config, endpoint_id: u32) -> bool {
        FlowEntry::is_stale_for(self, proto, now_ns, cfg, endpoint_id)
    }
    #[inline(always)]
    fn handshake_ack(&self) -> u32 {
        FlowEntry::handshake_ack(self)
    }
    #[inline(always)]
    fn set_handshake_ack(&mut self, ack: u32) {
        FlowEntry::set_handshake_ack(self, ack)
    }
    flow_fields!();
}
