//! IPv6 consumer → service: a TCP/UDP packet to an endpoint ENI's IPv6 address, full-NATed
//! to the zone's IPv6 load balancer from the service's IPv6 SNAT pool, or to a destination
//! in an IPv6 prefix routed to a gateway endpoint (`ENI_FLAG_GATEWAY`), NATed from the
//! pool too but keeping its destination (the load balancer is only its next hop), under
//! the endpoint's policy. The same steps as `forward` (filters, listener, the flow found
//! or created, stamped, tracked, NATed) on `PL_CONNTRACK6`. The `privatelink_forward6`
//! path program (`paths`) runs it. An ENI with flow logs reports each packet as it came
//! (`flowlog::capture6`, then its verdict).
//!
//! The BPF stack is 512 bytes for a whole call chain, and IPv6's 44-byte keys and 16-byte
//! addresses fill frames fast: the steps are BPF functions called one after another from
//! the path program's own frame (`find6`, then for a new flow `flows6::create6`'s steps,
//! then `finish6`), not nested in each other, and the keys and entries they share are in
//! per-CPU scratch slots (`PL_KEYS6` slot 0 the packet's key, `PL_SCRATCH6` slot 0 the
//! reply entry).

use aya_ebpf::programs::XdpContext;
use privatelink_common::{
    Config, DIR_ORIGINAL, ENI_FLAG_ACL, ENI_FLAG_FLOW_LOG, ENI_FLAG_GATEWAY, EndpointEni,
    EndpointEni6, FLOW_GATEWAY, FLOW_INGRESS, FlowEntry6, FlowKey6, IfaceInfo, Reason, VpcAddr6,
    checked_elapsed_ns, checked_tick, gateway_policy6,
};

use crate::{
    conntrack::{PARTNER_REFRESH_NS, SeqAck, mark, now},
    conntrack6::alive6,
    filter, filter6, flowlog,
    flows6::{
        apply6, create6, flow_key6, keep_partner6, packet_key6, reply_entry6, stamp6,
        track6_original,
    },
    flowtable::{FLOWS6, Seen},
    maps::{config, scratch6},
    packet::Packet,
    parse::{EthHdr, mut_at},
    verdict::{redirect_to, settle_for},
};

/// IPv6 consumer → service: a packet to an ENI of a forwarding endpoint. Inlined into
/// the path program: its steps are the BPF functions (see the module's text).
#[inline(always)]
pub fn forward6(ctx: &XdpContext, iface: &IfaceInfo, eni6: &EndpointEni6, pkt: &Packet) -> u64 {
    // As `forward` does: kept before the rewrite, reported with the verdict. The ENI's
    // flag is tested inside `capture6`: a branch on it here would have the verifier walk
    // the path twice (489 089 instructions, not 248 095).
    flowlog::capture6(ctx, pkt, &eni6.eni, FLOW_INGRESS as u32);
    let v = forward6_walk(ctx, iface, eni6, pkt);
    if eni6.eni.flags & ENI_FLAG_FLOW_LOG != 0 {
        flowlog::report_captured6(v as u32);
    }
    v
}

/// `forward6`'s walk: the verdict packed (`settle_for`).
#[inline(always)]
fn forward6_walk(ctx: &XdpContext, iface: &IfaceInfo, eni6: &EndpointEni6, pkt: &Packet) -> u64 {
    let slot = eni6.eni.counter_slot;
    let mut found = Found::default();
    if let Err(reason) = find6(ctx, iface, eni6, pkt, &mut found) {
        return settle_for(slot, Err(reason));
    }
    let reason = if found.seen.entry.is_null() {
        match create6(eni6) {
            Ok(seen) => found.seen = seen,
            Err(reason) => return settle_for(slot, Err(reason)),
        }
        Reason::Forward6NewFlow
    } else {
        Reason::Forward6ToService
    };
    finish6(ctx, pkt, &found, eni6, reason)
}

/// What `find6` found: the flow's live original-direction entry, with its slot's state
/// word (its entry null: a new flow is to be made, `PL_SCRATCH6` slot 0 holds its reply
/// entry), and the packet's TCP state.
struct Found {
    seen: Seen<FlowEntry6>,
    flags: u8,
    nums: SeqAck,
}

impl Default for Found {
    fn default() -> Self {
        Self {
            seen: Seen::none(),
            flags: 0,
            nums: SeqAck::default(),
        }
    }
}

/// The packet's key (`PL_KEYS6` slot 0), the ENI's ACL and the service's listeners on
/// every packet; the flow's entry if it is this endpoint's and alive (its reply entry
/// confirmed), else, if the security groups allow, the reply entry of a new one.
#[inline(never)]
fn find6(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni6: &EndpointEni6,
    pkt: &Packet,
    out: &mut Found,
) -> Result<(), Reason> {
    let eni = &eni6.eni;
    let (key, flags, nums) = flow_key6(ctx, iface, pkt)?;
    admit(eni, key)?;
    let t = now();
    let cfg = config();
    let existing = match FLOWS6.get_seen(key) {
        // SAFETY: the pointer from a successful lookup is valid for this program run.
        Some(s) if is_own_live_flow(unsafe { &*s.entry }, key, eni.endpoint_id, t, &cfg) => Some(s),
        _ => None,
    };
    out.flags = flags;
    out.nums = nums;
    let mut found = |entry| {
        out.seen = entry;
        Ok(())
    };
    // Reply entry confirmed within the last second.
    if let Some(s) = existing {
        // SAFETY: as above.
        if checked_elapsed_ns(t, unsafe { (*s.entry).checked }) <= PARTNER_REFRESH_NS {
            return found(s);
        }
    }
    let eth_src = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
    let reply = scratch6(0)?;
    // SAFETY: this CPU's scratch slot, valid for this run.
    let reply = unsafe {
        reply_entry6(
            &mut *reply,
            key,
            pkt.ifindex,
            iface,
            eth_src,
            eni.endpoint_id,
            t,
        );
        (*reply).flags = gateway_flow(eni);
        mark(&mut *reply, eni);
        &*reply
    };
    // As in `forward`: still the entry judged, before its partner is confirmed.
    if let Some(s) = existing {
        s.still()?;
    }
    match existing {
        // SAFETY: as above.
        Some(s) if keep_partner6(unsafe { &*s.entry }, key, reply) => {
            // SAFETY: as above.
            unsafe { (*s.entry).checked = checked_tick(t) };
            found(s)
        }
        _ => {
            // New, expired, or its reply tuple taken by another flow: (re)create with a
            // fresh tuple, if the security groups allow.
            if existing.is_none() {
                first_packet(eni, key)?;
            }
            found(Seen::none())
        }
    }
}

/// The flow's entry (`found`) applied: checked under this epoch (unless an ACL has to see
/// every packet), marked, tracked, the packet NATed; the verdict packed with the ENI's
/// counter slot (`settle_for`: a BPF function returns one register).
#[inline(never)]
fn finish6(
    ctx: &XdpContext,
    pkt: &Packet,
    found: &Found,
    eni6: &EndpointEni6,
    reason: Reason,
) -> u64 {
    let eni = &eni6.eni;
    let r = packet_key6().and_then(|key| {
        // SAFETY: an entry of `PL_CONNTRACK6`, valid for this run.
        let e = unsafe { &mut *found.seen.entry };
        // As `forward`: what was judged is the entry about to be stamped, and the frame
        // takes all it does from one flow's entry (`flowtable::Seen`; the stamp taken
        // back on a change).
        found.seen.still()?;
        if eni.flags & ENI_FLAG_ACL == 0 {
            stamp6(e, key, pkt.epoch);
        }
        mark(e, eni);
        track6_original(e, key, found.flags, found.nums, now());
        let out = apply6(ctx, pkt, e)?;
        found.seen.still_else_unstamp(&mut e.epoch)?;
        redirect_to(out, reason)
    });
    settle_for(eni.counter_slot, r)
}

/// The ENI's inbound ACL, on every packet, and the service's listeners: only what it
/// publishes crosses, established flows included. A BPF function of its own (the rules'
/// 128-bit prefixes take no room in its caller's frame). (A gateway route has no ACL:
/// the daemon never flags one.)
#[inline(never)]
fn admit(eni: &EndpointEni, key: &FlowKey6) -> Result<(), Reason> {
    filter6::acl6_in(eni_key(key), eni, key.src, key.proto, key.dport)?;
    filter::listener(eni.service_id, key.proto, key.dport)
}

/// The ENI's security groups, or a gateway endpoint's policy, on a flow's first packet
/// (`admit`'s reason for a function). The policy is about where the VPC may go: its
/// rules (under the route target, `gateway_policy6`) judge the destination.
#[inline(never)]
fn first_packet(eni: &EndpointEni, key: &FlowKey6) -> Result<(), Reason> {
    // One walk for either: one `bpf_loop` call site for the verifier to check, not two.
    let (rules, remote) = if eni.flags & ENI_FLAG_GATEWAY != 0 {
        (gateway_policy6(key.vpc_id, eni.gateway), &key.dst)
    } else {
        (eni_key(key), &key.src)
    };
    filter6::security_groups6(rules, eni, *remote, key.proto, key.dport)
}

/// `FLOW_GATEWAY` for a gateway route's flow, else 0: without a branch (see `mark`).
#[inline(always)]
fn gateway_flow(eni: &EndpointEni) -> u8 {
    const SHIFT: u32 = ENI_FLAG_GATEWAY.trailing_zeros() - FLOW_GATEWAY.trailing_zeros();
    const _: () = assert!(ENI_FLAG_GATEWAY >> SHIFT == FLOW_GATEWAY as u32);
    ((eni.flags & ENI_FLAG_GATEWAY) >> SHIFT) as u8
}

/// The ENI's key in the filter maps: the packet's VPC and destination.
#[inline(always)]
fn eni_key(key: &FlowKey6) -> VpcAddr6 {
    VpcAddr6 {
        vpc_id: key.vpc_id,
        addr: key.dst,
    }
}

/// An original-direction entry of this endpoint whose flow is alive.
#[inline(always)]
fn is_own_live_flow(
    e: &FlowEntry6,
    key: &FlowKey6,
    endpoint_id: u32,
    t: u64,
    cfg: &Config,
) -> bool {
    e.direction == DIR_ORIGINAL && e.endpoint_id == endpoint_id && alive6(e, key, t, cfg)
}
