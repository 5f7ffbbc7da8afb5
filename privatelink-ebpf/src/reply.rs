//! Service → consumer: a TCP/UDP reply to a SNAT address. Only known, live flows pass,
//! and only while their endpoint still forwards (`endpoint`) and its filters allow; the
//! flow is stamped for the established path and NATed back (`nat`). The
//! `privatelink_reply` path program (`paths`) runs it.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{
    DIR_REPLY, ENI_FLAG_ACL, ENI_FLAG_FLOW_LOG, EndpointEni, FLOW_EGRESS, FLOW_GATEWAY, IfaceInfo,
    Reason, VpcAddr,
};

use crate::{
    conntrack::{alive, flow_key, mark, now, stamp, track},
    endpoint::{check_endpoint_at, check_gateway_at},
    filter, flowlog,
    flowtable::FLOWS,
    maps::config,
    nat,
    packet::Packet,
    verdict::{Verdict, redirect_to, settle_for},
};

/// Service → consumer: a reply to a SNAT address. Only known flows pass.
/// Non-inlined (its own BPF stack frame); see `crate::verdict::settle`.
#[inline(never)]
pub fn reply(ctx: &XdpContext, iface: &IfaceInfo, pkt: &Packet) -> u64 {
    let mut eni = EndpointEni::default();
    let r = reply_checked(ctx, iface, pkt, &mut eni);
    if r.is_ok() && eni.flags & ENI_FLAG_FLOW_LOG != 0 {
        // As the ENI sees it: rewritten, ENI → consumer. (A reply dropped here, by the
        // ENI's outbound ACL or a listener removed, is in the counters, not in the flow
        // log: its frame still holds the provider side's tuple.)
        let ev = flowlog::of_frame(ctx, pkt, eni.counter_slot, FLOW_EGRESS);
        flowlog::report_verdict(ev, &r);
    }
    settle_for(eni.counter_slot, r)
}

/// `eni`: the flow's endpoint ENI (or gateway route), once found.
#[inline(always)]
fn reply_checked(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    pkt: &Packet,
    eni_out: &mut EndpointEni,
) -> Result<Verdict, Reason> {
    let (key, flags, nums) = flow_key(ctx, iface, pkt)?;
    let t = now();
    let cfg = config();
    let Some(seen) = FLOWS.get_seen(key) else {
        return Err(Reason::DropNoFlow);
    };
    // SAFETY: valid for this program run.
    let e = unsafe { &mut *seen.entry };
    if e.direction != DIR_REPLY || !alive(e, &key, t, &cfg) {
        return Err(Reason::DropNoFlow);
    }
    // The flow's endpoint must still be this one, forwarding, and its ACL must allow.
    let per_packet_acl = if e.flags & FLOW_GATEWAY != 0 {
        let gw = check_gateway_at(e.out_vpc_id, e.new_src)?;
        if gw.endpoint_id != e.endpoint_id {
            return Err(Reason::DropNoFlow);
        }
        *eni_out = gw;
        filter::listener(gw.service_id, pkt.proto, e.new_sport)?;
        false
    } else {
        let eni = check_endpoint_at(e.out_vpc_id, e.new_src)?;
        if eni.endpoint_id != e.endpoint_id {
            return Err(Reason::DropNoFlow);
        }
        *eni_out = eni;
        filter::listener(eni.service_id, pkt.proto, e.new_sport)?;
        let eni_key = VpcAddr {
            vpc_id: e.out_vpc_id,
            addr: e.new_src,
        };
        filter::acl_out(eni_key, &eni, e.new_dst, pkt.proto, e.new_sport)?;
        eni.flags & ENI_FLAG_ACL != 0
    };
    // The endpoint checked above is the entry's, still (as in `forward`).
    seen.still()?;
    // As in `forward`: checked under this epoch.
    if !per_packet_acl {
        stamp(e, &key, pkt.epoch);
    }
    mark(e, eni_out);
    track(e, &key, flags, nums, t, DIR_REPLY);
    let out = nat::apply(ctx, pkt, e)?;
    // As in `forward`: the frame took all it did from one flow's entry (else the stamp is
    // taken back).
    seen.still_else_unstamp(&mut e.epoch)?;
    redirect_to(out, Reason::ForwardToConsumer)
}
