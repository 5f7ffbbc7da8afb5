//! Consumer → service: a TCP/UDP packet to an endpoint ENI or a gateway route, on the
//! full path (a new flow, or one not checked under the current epoch). Filters, finds or
//! creates the flow (`conntrack`), stamps it for the established path, and NATs it
//! (`nat`). The `privatelink_forward` path program (`paths`) runs it.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{
    Config, DIR_ORIGINAL, ENI_FLAG_ACL, ENI_FLAG_FLOW_LOG, ENI_FLAG_GATEWAY, EndpointEni,
    FLOW_GATEWAY, FLOW_INGRESS, FlowEntry, FlowKey, IfaceInfo, Reason, VpcAddr, checked_elapsed_ns,
    checked_tick,
};

use crate::{
    conntrack::{
        PARTNER_REFRESH_NS, alive, create, flow_key, keep_partner, mark, now, reply_entry, stamp,
        track,
    },
    filter, flowlog,
    flowtable::FLOWS,
    maps::{config, scratch},
    nat,
    packet::Packet,
    parse::{EthHdr, mut_at},
    verdict::{Verdict, redirect_to, settle_for},
};

/// Consumer → service: a packet to an ENI of a forwarding endpoint.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn forward(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    eni_key: VpcAddr,
    eni: &EndpointEni,
    pkt: &Packet,
) -> u64 {
    // Flow logs see the packet as it came, before the rewrite.
    // Flow logs see the packet as it came, before the rewrite: kept for every packet of
    // this (slow) path, so that no branch on the ENI's flags comes before the walk (the
    // verifier would walk it twice, once knowing the bit set, once clear).
    flowlog::capture(ctx, pkt, eni.counter_slot, FLOW_INGRESS);
    let r = forward_checked(ctx, iface, eni_key, eni, pkt);
    if eni.flags & ENI_FLAG_FLOW_LOG != 0 {
        flowlog::report_captured(&r);
    }
    settle_for(eni.counter_slot, r)
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
    let existing = match FLOWS.get_seen(key) {
        // SAFETY: the pointer from a successful lookup is valid for this program run.
        Some(s) if is_own_live_flow(unsafe { &*s.entry }, &key, eni.endpoint_id, t, &cfg) => {
            Some(s)
        }
        _ => None,
    };
    let mut reason = Reason::ForwardToService;
    let entry = match existing {
        // Reply entry confirmed within the last second: the fast path.
        // SAFETY: as above.
        Some(s) if checked_elapsed_ns(t, unsafe { (*s.entry).checked }) <= PARTNER_REFRESH_NS => s,
        _ => {
            let eth_src = mut_at::<EthHdr>(ctx, 0, Reason::DropTruncatedEthernet)?.src_addr;
            let reply = scratch(0)?;
            // SAFETY: this CPU's scratch slot, valid for this run.
            let reply = unsafe {
                *reply = reply_entry(&key, pkt.ifindex, iface, eth_src, eni.endpoint_id, t);
                if gateway {
                    (*reply).flags = FLOW_GATEWAY;
                }
                mark(&mut *reply, eni);
                &*reply
            };
            // What was judged live is still the entry whose partner is confirmed (and
            // re-made if it is gone: under a key taken from the entry).
            if let Some(s) = existing {
                s.still()?;
            }
            match existing {
                // SAFETY: as above.
                Some(s) if keep_partner(unsafe { &*s.entry }, &key, reply) => {
                    // SAFETY: as above.
                    unsafe { (*s.entry).checked = checked_tick(t) };
                    s
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
    let e = unsafe { &mut *entry.entry };
    // What this path judged is the entry it is about to stamp and forward by: no other
    // CPU's writer took the slot since the lookup (`flowtable::Seen`; asked again below,
    // once `nat::apply` has rewritten the frame).
    entry.still()?;
    // Checked under this epoch: the next packets may take the established path, unless
    // an ACL has to see every packet.
    if gateway || eni.flags & ENI_FLAG_ACL == 0 {
        stamp(e, &key, pkt.epoch);
    }
    mark(e, eni);
    track(e, &key, flags, nums, t, DIR_ORIGINAL);
    let out = nat::apply(ctx, pkt, e)?;
    // The frame took all it did from one flow's entry: else it is dropped, and the stamp
    // just written, which may have landed on another flow's entry, taken back (that
    // flow's next packet takes the full path and stamps it again).
    entry.still_else_unstamp(&mut e.epoch)?;
    redirect_to(out, reason)
}

/// An original-direction entry of this endpoint whose flow is alive.
#[inline(always)]
fn is_own_live_flow(e: &FlowEntry, key: &FlowKey, endpoint_id: u32, t: u64, cfg: &Config) -> bool {
    // An entry of another endpoint (the ENI was reassigned) starts a new flow.
    e.direction == DIR_ORIGINAL && e.endpoint_id == endpoint_id && alive(e, key, t, cfg)
}
