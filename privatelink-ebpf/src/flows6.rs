//! The IPv6 NAT flow steps of `forward6` and `reply6`: reading an IPv6 flow key, new
//! flows (SNAT tuple search, both entries), stamps, tracking, the rewrite; on
//! `conntrack`'s generic steps (the `Flow` trait) where they fit, IPv6 steps of their own
//! where they do not (`claim6`).
//!
//! Two budgets shape it. The stack: the 44-byte keys live in per-CPU slots (`PL_KEYS6`,
//! below) and are passed by reference, and new-flow creation is split into BPF functions
//! called one after another from the path program's frame (`forward6`'s `find6`,
//! `create6`'s `allow_new6`/`search6`/`insert6`, `finish6`), so the deepest chain stays
//! under the 512 bytes. The verifier: the SNAT search's attempts are `bpf_loop` calls
//! (one attempt verified once), the ENI's rule walks too (`filter6`), and key comparison
//! folds the words' differences into one test (`same_key6`). Traps met on the way: a
//! non-inlined function returning `Result<Verdict, Reason>` gets BTF the kernel refuses
//! ("Invalid member bits_offset": every map then fails to be created with EINVAL), so the
//! steps return packed verdicts (`settle_for`); LLVM drops an index mask when it knows
//! the bound (see `snat6_attempt`), and turns a folded comparison back into one branch
//! per word (see `same_key6`).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    programs::XdpContext,
};
use privatelink_common::{
    DIR_ORIGINAL, DIR_REPLY, ENI_FLAG_GATEWAY, EndpointEni6, FlowEntry6, FlowKey6, IfaceInfo,
    MAX_SNAT_ADDRS, PROTO_TCP, PROTO_UDP, Reason, SnatPool6, VpcAddr6, VpcPort, checked_tick, csum,
    flowtable::SlotKey, hash, ports_word, proto_word, seen_tick,
};

use crate::{
    conntrack::{Flow, SNAT_ATTEMPTS, SeqAck, keep_partner, l4_state, refund, take_token, track},
    flowtable::{FLOWS6, Seen},
    maps::{PL_NEIGHBORS6, PL_SNAT6_POOLS, PL_VPC_PORTS, config, key_scratch6, scratch6},
    nat6::{self, l4_delta6, rewrite_ip6},
    packet::Packet,
    packet6::{copy_addr, forwardable_source, set_addr_words, words},
    parse::{ETH_LEN, Ipv6Hdr, Ports, be16, mut_at, ne16},
};

/// Reads the 5-tuple of an IPv6 TCP/UDP packet whose L4 header must be complete into
/// this CPU's key slot 0 (`PL_KEYS6`, filled in place: see there why); refuses what must
/// not be forwarded (hop limit 1, a source RFC 4291 keeps off the path, a UDP checksum of
/// 0, which IPv6 does not allow). The key is valid for this program run.
#[inline(always)]
pub fn flow_key6(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
) -> Result<(&'static FlowKey6, u8, SeqAck), Reason> {
    let (ports, flags, nums) = l4_state(ctx, pkt)?;
    if pkt.proto == PROTO_UDP
        && *mut_at::<[u8; 2]>(ctx, pkt.l4 + 6, Reason::DropTruncatedL4)? == [0, 0]
    {
        return Err(Reason::DropUdp6ZeroChecksum);
    }
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    if ip.hop_limit <= 1 {
        return Err(Reason::DropHopLimitExceeded);
    }
    if !forwardable_source(&ip.src_addr) {
        return Err(Reason::DropBadIpv6Source);
    }
    // SAFETY: this CPU's key slot, valid for this run; nothing else holds it.
    let key = unsafe { &mut *key_scratch6(0)? };
    fill_key6(
        key,
        iface.vpc_id,
        &ip.src_addr,
        &ip.dst_addr,
        ports,
        pkt.proto,
    );
    Ok((key, flags, nums))
}

/// Fills `k` in place (`FlowKey6::new` without building a key on the stack), a whole
/// word at a time: the lookup reads it as words, and a word written in halves or bytes
/// cannot be forwarded from the stores to its read (see `FlowKey::of_words`).
#[inline(always)]
pub fn fill_key6(
    k: &mut FlowKey6,
    vpc_id: u32,
    src: &[u8; 16],
    dst: &[u8; 16],
    ports: (u16, u16),
    proto: u8,
) {
    k.set_word(0, vpc_id);
    set_addr_words(k, src, dst);
    k.set_word(9, ports_word(ports.0, ports.1));
    k.set_word(10, proto_word(proto));
}

/// `conntrack::keep_partner` for IPv6.
#[inline(never)]
pub fn keep_partner6(e: &FlowEntry6, key: &FlowKey6, reply: &FlowEntry6) -> bool {
    keep_partner(e, key, reply)
}

/// `conntrack::track` for IPv6, of an original-direction entry.
#[inline(never)]
pub fn track6_original(e: &mut FlowEntry6, key: &FlowKey6, flags: u8, nums: SeqAck, t: u64) {
    track(e, key, flags, nums, t, DIR_ORIGINAL)
}

/// `conntrack::track` for IPv6, of a reply-direction entry.
#[inline(never)]
pub fn track6_reply(e: &mut FlowEntry6, key: &FlowKey6, flags: u8, nums: SeqAck, t: u64) {
    track(e, key, flags, nums, t, DIR_REPLY)
}

/// Marks `e` (the entry of `key`) as checked under `epoch`, with the checksum delta of
/// its rewrite (IPv6 has no header checksum: only the TCP/UDP one, pseudo-header included).
/// A BPF function of its own: the address words it sums take no room in its callers'.
#[inline(never)]
pub fn stamp6(e: &mut FlowEntry6, key: &FlowKey6, epoch: u32) {
    e.csum_l4 = csum::fold(
        csum::delta6(words(&key.src), words(&e.new_src))
            + csum::delta6(words(&key.dst), words(&e.new_dst))
            + csum::delta_port(key.sport, e.new_sport)
            + csum::delta_port(key.dport, e.new_dport),
    );
    e.epoch = epoch;
}

/// Writes into `r` the entry that turns a reply back into the consumer's view
/// (`conntrack::reply_entry`), in place.
#[inline(always)]
pub fn reply_entry6(
    r: &mut FlowEntry6,
    key: &FlowKey6,
    ifindex: u32,
    iface: &IfaceInfo,
    eth_src: [u8; 6],
    endpoint_id: u32,
    t: u64,
) {
    *r = FlowEntry6 {
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
        ..FlowEntry6::zeroed()
    };
    copy_addr(&mut r.new_src, &key.dst);
    copy_addr(&mut r.new_dst, &key.src);
}

/// The 32 bits a key's address (`src` or `dst` of a `FlowKey6`, 4-aligned) gives the
/// flow hash: its words folded, read once each.
#[inline(always)]
fn fold_addr(a: &[u8; 16]) -> [u8; 4] {
    let w = a as *const [u8; 16] as *const u32;
    let mut f = 0;
    for i in 0..4 {
        // SAFETY: word `i` of the address, 4-aligned inside its key (asserted below).
        f ^= unsafe { core::ptr::read_volatile(w.add(i)) };
    }
    f.to_ne_bytes()
}

const _: () = assert!(
    core::mem::offset_of!(FlowKey6, src) % 4 == 0
        && core::mem::offset_of!(FlowKey6, dst) % 4 == 0
        && core::mem::align_of::<FlowKey6>() == 4
);

/// The packet's key, as `flow_key6` left it in this CPU's key slot 0 (valid for this run).
#[inline(always)]
pub fn packet_key6() -> Result<&'static FlowKey6, Reason> {
    // SAFETY: this CPU's key slot, valid for this run.
    Ok(unsafe { &*key_scratch6(0)? })
}

/// Creates both entries of a new IPv6 flow (its key in `PL_KEYS6` slot 0, its reply
/// entry in `PL_SCRATCH6` slot 0, its `last_seen` the time now) to the ENI's zone's
/// IPv6 load balancer (a gateway route's flow: to its own destination, through that load
/// balancer), from a tuple of the service's IPv6 SNAT pool; returns the
/// original-direction entry. An IPv6 flow has one load balancer per zone
/// (`EndpointEni6::lb_addr`): `PL_LB_SETS` is IPv4's. Inlined into the path program: its
/// steps (`allow_new6`, `search6`, `insert6`) are BPF functions called one after another.
#[inline(always)]
pub fn create6(eni6: &EndpointEni6) -> Result<Seen<FlowEntry6>, Reason> {
    let pool = allow_new6(eni6)?;
    crate::flowtable::clear_refused();
    if !search6(eni6, pool) {
        refund(&eni6.eni);
        return Err(crate::flowtable::search_failure());
    }
    insert6(eni6)
}

/// Whether the ENI's new flow can go anywhere (the provider VPC's port, the load
/// balancer's resolved MAC, the service's IPv6 SNAT pool) and the endpoint has a
/// new-flow token for it (`conntrack::take_token`); the pool.
#[inline(never)]
fn allow_new6(eni6: &EndpointEni6) -> Result<&'static SnatPool6, Reason> {
    let eni = &eni6.eni;
    next_hop6(eni6)?;
    // SAFETY: a reference into a map only the daemon writes, used within this run.
    let pool = unsafe { PL_SNAT6_POOLS.get(eni.service_id) }.ok_or(Reason::DropSnatExhausted)?;
    if pool.count == 0 || pool.port_max < pool.port_min {
        return Err(Reason::DropSnatExhausted);
    }
    let range = (pool.port_max - pool.port_min) as u64 + 1;
    take_token(
        eni,
        snat_count(pool) as u64 * range,
        crate::conntrack::now(),
        &config(),
    )?;
    Ok(pool)
}

/// The provider VPC's port and the load balancer's MAC (registered and resolved).
#[inline(always)]
fn next_hop6(eni6: &EndpointEni6) -> Result<(&'static VpcPort, [u8; 6]), Reason> {
    let eni = &eni6.eni;
    // SAFETY: references into maps only the daemon writes, used within this run.
    let port = unsafe { PL_VPC_PORTS.get(eni.provider_vpc_id) }.ok_or(Reason::DropNoRoute)?;
    let neigh = unsafe {
        PL_NEIGHBORS6.get(VpcAddr6 {
            vpc_id: eni.provider_vpc_id,
            addr: eni6.lb_addr,
        })
    }
    .ok_or(Reason::DropNoNeighbor)?;
    if neigh.mac == [0; 6] {
        return Err(Reason::DropNoNeighbor); // registered, not resolved yet
    }
    Ok((port, neigh.mac))
}

/// The original-direction entry of the new flow whose reply-direction key `search6`
/// claimed (`PL_KEYS6` slot 1), inserted under the packet's key; on failure the claim is
/// undone and the token given back.
#[inline(never)]
fn insert6(eni6: &EndpointEni6) -> Result<Seen<FlowEntry6>, Reason> {
    let eni = &eni6.eni;
    let key = packet_key6()?;
    // SAFETY: this CPU's slots, valid for this run.
    let (reply_key, reply) = unsafe { (&*key_scratch6(1)?, &*scratch6(0)?) };
    let (port, mac) = match next_hop6(eni6) {
        Ok(hop) => hop,
        Err(reason) => {
            let _ = FLOWS6.remove(reply_key);
            refund(eni);
            return Err(reason);
        }
    };
    let t = crate::conntrack::now();
    let fwd = scratch6(1)?;
    // SAFETY: this CPU's scratch slot, valid for this run.
    unsafe {
        *fwd = FlowEntry6 {
            new_sport: reply_key.dport,
            new_dport: key.dport,
            out_ifindex: port.ifindex,
            src_mac: port.mac,
            dst_mac: mac,
            out_vpc_id: eni.provider_vpc_id,
            endpoint_id: eni.endpoint_id,
            direction: DIR_ORIGINAL,
            flags: reply.flags,
            counter_slot: reply.counter_slot,
            last_seen: seen_tick(t),
            checked: checked_tick(t),
            ..FlowEntry6::zeroed()
        };
        copy_addr(&mut (*fwd).new_src, &reply_key.dst);
        copy_addr(&mut (*fwd).new_dst, &reply_key.src);
    };
    // SAFETY: as above.
    if FLOWS6
        .insert(key, unsafe { &*fwd }, BPF_ANY as u64)
        .is_err()
    {
        let _ = FLOWS6.remove(reply_key);
        refund(eni);
        return Err(Reason::DropConntrackFull);
    }
    FLOWS6.get_seen(key).ok_or(Reason::DropConntrackFull)
}

/// The pool's addresses, at most `MAX_SNAT_ADDRS`.
#[inline(always)]
fn snat_count(pool: &SnatPool6) -> u32 {
    if pool.count as usize > MAX_SNAT_ADDRS {
        MAX_SNAT_ADDRS as u32
    } else {
        pool.count
    }
}

/// The SNAT tuple search of `conntrack::create` (double hashing over the pool's addresses
/// and ports with a stride drawn per packet, from a hash of the client tuple; each
/// candidate claimed with `BPF_NOEXIST`, see there why) for the packet's flow: true with the
/// claimed reply-direction key in this CPU's key slot 1, false if none of
/// `SNAT_ATTEMPTS` was free. The attempts are `bpf_loop` calls of `snat6_attempt`: the
/// verifier checks one attempt (and its `claim6`) once, not once per attempt on every
/// path that reaches it.
#[inline(never)]
fn search6(eni6: &EndpointEni6, pool: &SnatPool6) -> bool {
    let Ok(key) = packet_key6() else {
        return false;
    };
    let count = snat_count(pool);
    if count == 0 || pool.port_max < pool.port_min {
        return false; // (`allow_new6` refused it already; said here for the division)
    }
    let h = hash::tuple_hash(
        fold_addr(&key.src),
        fold_addr(&key.dst),
        key.sport,
        key.dport,
        key.proto,
        key.vpc_id,
    );
    let mut search = Search6 {
        pool,
        h,
        // SAFETY: a helper without arguments.
        stride: hash::mix32(h ^ unsafe { bpf_get_prandom_u32() }) | 1,
        count,
        range: (pool.port_max - pool.port_min) as u32 + 1,
        provider_vpc_id: eni6.eni.provider_vpc_id,
        dst: [0; 16],
        claimed: false,
    };
    // A gateway flow keeps its destination; the load balancer is then only the next hop.
    let dst = if eni6.eni.flags & ENI_FLAG_GATEWAY != 0 {
        &key.dst
    } else {
        &eni6.lb_addr
    };
    copy_addr(&mut search.dst, dst);
    // SAFETY: `snat6_attempt` has the callback's signature and reads only `search`.
    unsafe {
        bpf_loop(
            SNAT_ATTEMPTS,
            snat6_attempt as *const () as *mut c_void,
            &mut search as *mut Search6 as *mut c_void,
            0,
        )
    };
    search.claimed
}

/// What `snat6_attempt` reads and writes: on `search6`'s stack, passed to `bpf_loop`.
#[repr(C)]
struct Search6 {
    pool: *const SnatPool6,
    h: u32,
    stride: u32,
    /// The pool's addresses (1..=`MAX_SNAT_ADDRS`) and ports (at least 1).
    count: u32,
    range: u32,
    provider_vpc_id: u32,
    /// The new flow's destination in the provider VPC: the load balancer's address, or a
    /// gateway flow's own destination.
    dst: [u8; 16],
    claimed: bool,
}

/// Attempt `attempt` of `search6`: its candidate tuple claimed, or 0 (go on).
extern "C" fn snat6_attempt(attempt: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `search6` passes its own `Search6`, alive for the whole `bpf_loop`.
    let s = unsafe { &mut *(ctx as *mut Search6) };
    let (Ok(key), Ok(reply_key), Ok(reply)) = (packet_key6(), key_scratch6(1), scratch6(0)) else {
        return 1;
    };
    // SAFETY: this CPU's slots and a map value `search6` found, valid for this run.
    let (reply_key, reply, pool) = unsafe { (&mut *reply_key, &*reply, &*s.pool) };
    // Read back from memory: the verifier bounds neither `%` nor a count it cannot see, so
    // the index is masked; both are kept from LLVM's knowledge (it would drop the mask).
    // SAFETY: locals.
    let (count, range) = unsafe {
        (
            core::ptr::read_volatile(&s.count),
            core::ptr::read_volatile(&s.range),
        )
    };
    if count == 0 || range == 0 {
        return 1;
    }
    let attempt = attempt as u32;
    let idx = (((s.h >> 16).wrapping_add(attempt) % count) as usize) & (MAX_SNAT_ADDRS - 1);
    let snat_port =
        pool.port_min + (s.h.wrapping_add(attempt.wrapping_mul(s.stride)) % range) as u16;
    fill_key6(
        reply_key,
        s.provider_vpc_id,
        &s.dst,
        &pool.addrs[idx],
        (key.dport, snat_port),
        key.proto,
    );
    if claim6(reply_key, reply, key) {
        s.claimed = true;
        return 1;
    }
    0
}

/// `conntrack::claim` for IPv6, step for step, with the keys it derives in this CPU's key
/// slots 2 and 3 (`PL_KEYS6`) and compared by `same_key6`: the generic steps build them on
/// the stack, which the forward path's call chain has no room for. Claims `reply_key` for
/// the flow `fwd_key`: free, still this flow's own, or held by a flow idle both ways.
#[inline(never)]
fn claim6(reply_key: &FlowKey6, reply: &FlowEntry6, fwd_key: &FlowKey6) -> bool {
    if FLOWS6.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    let (Ok(old_fwd_key), Ok(back)) = (key_scratch6(2), key_scratch6(3)) else {
        return false;
    };
    // SAFETY: this CPU's key slots 2 and 3, valid for this run; nothing else holds them.
    let (old_fwd_key, back) = unsafe { (&mut *old_fwd_key, &mut *back) };
    // SAFETY: a reference into the map, read within this run.
    let Some(old) = (unsafe { FLOWS6.get(reply_key) }) else {
        return false;
    };
    let t = crate::conntrack::now();
    let proto = reply_key.proto;
    let old_seen = old.last_seen;
    partner_key6(old, proto, old_fwd_key);
    if same_key6(old_fwd_key, fwd_key) {
        return FLOWS6.insert(reply_key, reply, BPF_ANY as u64).is_ok();
    }
    // Expired, or embryonic and idle (a half-open flow of this endpoint's own).
    if !stale6(old, proto, t, reply.endpoint_id) {
        return false;
    }
    // SAFETY: as above.
    if let Some(fwd) = unsafe { FLOWS6.get(&*old_fwd_key) } {
        partner_key6(fwd, proto, back);
        if same_key6(back, reply_key) {
            if !stale6(fwd, proto, t, reply.endpoint_id) {
                return false;
            }
            let _ = FLOWS6.remove(&*old_fwd_key);
        }
    }
    // Take the stale entry over so that of two CPUs racing for it only one wins: remove
    // it (only if it is still the one judged stale), then insert with BPF_NOEXIST.
    // SAFETY: as above.
    match unsafe { FLOWS6.get(reply_key) } {
        Some(cur) if cur.last_seen != old_seen => return false,
        Some(_) => {
            let _ = FLOWS6.remove(reply_key);
        }
        None => {}
    }
    FLOWS6.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok()
}

/// `FlowEntry6::is_stale_for` under this run's configuration, in a BPF function of its
/// own: its branches end in one bit at its return, not in `claim6`'s states.
#[inline(never)]
fn stale6(e: &FlowEntry6, proto: u8, t: u64, endpoint_id: u32) -> bool {
    e.is_stale_for(proto, t, &config(), endpoint_id)
}

/// `FlowEntry6::partner_key` written into `k` in place.
#[inline(always)]
fn partner_key6(e: &FlowEntry6, proto: u8, k: &mut FlowKey6) {
    fill_key6(
        k,
        e.out_vpc_id,
        &e.new_dst,
        &e.new_src,
        (e.new_dport, e.new_sport),
        proto,
    );
}

/// Whether two IPv6 flow keys are equal: word by word, the differences folded and tested
/// once, in a BPF function of its own (no words held in its callers' registers, and one
/// branch for the verifier to walk, not one per word).
#[inline(never)]
fn same_key6(a: &FlowKey6, b: &FlowKey6) -> bool {
    const WORDS: usize = core::mem::size_of::<FlowKey6>() / 4;
    // SAFETY: two live keys, 4-aligned (asserted with `fold_addr`), read as their words.
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey6 as *const [u32; WORDS]),
            &*(b as *const FlowKey6 as *const [u32; WORDS]),
        )
    };
    let mut diff = 0u32;
    for i in 0..WORDS {
        diff |= a[i] ^ b[i];
    }
    // Read back from memory: LLVM would otherwise turn the folded differences into one
    // equality test per word, 2^11 paths for the verifier.
    // SAFETY: a local.
    unsafe { core::ptr::read_volatile(&diff) == 0 }
}

/// Full NAT of an IPv6 TCP/UDP packet by `e`, its MACs those of the next hop: the
/// interface it goes out of (`e.out_ifindex`), for the caller's `redirect_to` once it
/// knows that all the frame took from `e` was one flow's (`flowtable::Seen`). (A UDP
/// checksum of 0 never gets here: `flow_key6` refuses it.)
#[inline(always)]
pub fn apply6(ctx: &XdpContext, pkt: &Packet, e: &FlowEntry6) -> Result<u32, Reason> {
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    let ports = mut_at::<Ports>(ctx, pkt.l4, Reason::DropTruncatedL4)?;
    let at = if pkt.proto == PROTO_TCP { 16 } else { 6 };
    let check = mut_at::<[u8; 2]>(ctx, pkt.l4 + at, Reason::DropTruncatedL4)?;
    let d = l4_delta6(
        (&ip.src_addr, &ip.dst_addr),
        (&e.new_src, &e.new_dst),
        (be16(ports.sport), be16(ports.dport)),
        (e.new_sport, e.new_dport),
    );
    let c = csum::apply_delta(ne16(*check), csum::fold(d));
    // UDP sends a computed 0 as 0xffff (0 would mean "none", which IPv6 does not allow).
    let c = if pkt.proto != PROTO_TCP && c == 0 {
        0xffff
    } else {
        c
    };
    *check = c.to_ne_bytes();
    ports.sport = e.new_sport.to_be_bytes();
    ports.dport = e.new_dport.to_be_bytes();
    rewrite_ip6(ctx, &e.new_src, &e.new_dst)?;
    nat6::next_hop6(ctx, e)
}
