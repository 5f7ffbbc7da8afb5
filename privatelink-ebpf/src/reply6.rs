//! IPv6 service → consumer: a TCP/UDP reply to an IPv6 SNAT address. Only known, live
//! flows pass, while their endpoint still forwards and its filters allow (`reply`'s
//! rules on `PL_CONNTRACK6`); NATed back (`nat6`). The `privatelink_reply6` path program
//! (`paths`) runs it, and `icmp6::translate_error` for ICMPv6 errors.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{
    DIR_REPLY, ENI_FLAG_ACL, ENI_FLAG_FLOW_LOG, EndpointEni, FLOW_EGRESS, IfaceInfo, Reason,
    VpcAddr6,
};

use crate::{
    conntrack::{mark, now},
    conntrack6::alive6,
    filter, filter6, flowlog,
    flows6::{apply6, flow_key6, stamp6, track6_reply},
    flowtable::FLOWS6,
    maps::config,
    packet::Packet,
    verdict::{Verdict, redirect_to, settle_for},
};

/// IPv6 service → consumer: a reply to an IPv6 SNAT address. Only known flows pass.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn reply6(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    let mut eni = EndpointEni::default();
    let r = reply6_checked(ctx, iface, pkt, &mut eni);
    if let Ok((_, reason)) = r
        && eni.flags & ENI_FLAG_FLOW_LOG != 0
    {
        // As `reply` does: rewritten, as the ENI sends it (a reply dropped here is in the
        // counters only).
        let slot = eni.counter_slot;
        flowlog::report_frame6(ctx, pkt, slot, FLOW_EGRESS as u32, reason as u32);
    }
    settle_for(eni.counter_slot, r)
}

/// `eni_out`: the flow's endpoint ENI, once found.
#[inline(always)]
fn reply6_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    eni_out: &mut EndpointEni,
) -> Result<Verdict, Reason> {
    let (key, flags, nums) = flow_key6(ctx, iface, pkt)?;
    let t = now();
    let cfg = config();
    let Some(seen) = FLOWS6.get_seen(key) else {
        return Err(Reason::DropNoFlow);
    };
    // SAFETY: valid for this program run.
    let e = unsafe { &mut *seen.entry };
    if e.direction != DIR_REPLY || !alive6(e, key, t, &cfg) {
        return Err(Reason::DropNoFlow);
    }
    // The flow's endpoint (its ENI's, or a gateway flow's route's) must still be this
    // one, forwarding, and its ACL must allow (a gateway route has none).
    let eni6 = filter6::check_flow_endpoint6_at(e.flags, e.out_vpc_id, e.new_src)?;
    let eni = &eni6.eni;
    if eni.endpoint_id != e.endpoint_id {
        return Err(Reason::DropNoFlow);
    }
    *eni_out = *eni;
    filter::listener(eni.service_id, pkt.proto, e.new_sport)?;
    let eni_key = VpcAddr6 {
        vpc_id: e.out_vpc_id,
        addr: e.new_src,
    };
    filter6::acl6_out(eni_key, eni, e.new_dst, pkt.proto, e.new_sport)?;
    // As `reply`: the endpoint checked is the entry's, still.
    seen.still()?;
    if eni.flags & ENI_FLAG_ACL == 0 {
        stamp6(e, key, pkt.epoch);
    }
    mark(e, eni);
    track6_reply(e, key, flags, nums, t);
    let out = apply6(ctx, pkt, e)?;
    // The frame took all it did from one flow's entry (else the stamp is taken back).
    seen.still_else_unstamp(&mut e.epoch)?;
    redirect_to(out, Reason::Forward6ToConsumer)
}
