//! Every IPv6 frame the established fast path did not take: the `privatelink_ipv6`
//! program's work (the entry program tries `established6` on EtherType 0x86DD and
//! tail-calls it for the rest, so IPv4 pays one more match arm and nothing else). The fixed
//! header is validated; neighbour discovery is answered or learned (`nd`); then the
//! destination decides: an endpoint ENI's IPv6 address (`PL_ENDPOINTS6`), a SNAT address
//! (`PL_SNAT6_ADDRS`) or a prefix routed to a GWLB endpoint (`PL_GW_ROUTES6`) is the data
//! path's, and only then are the extension headers walked (`packet6`: a frame for the
//! host's stack is the host's to judge, whatever its headers). Echo to an ENI is answered
//! here (`icmp6`); TCP and UDP, and ICMPv6 errors, go to their path programs
//! (`PATH_FORWARD6`, `PATH_REPLY6`, `PATH_GWLB_STEER6`). Everything else is
//! `host::other`'s: dropped as host-isolated unless the interface carries the host's
//! traffic. A packet an endpoint with flow logs refuses here is reported as a REJECT
//! (`flowlog::report_frame6`). Everything here is inlined but that report and the echo's
//! rule walks, whose step is a `bpf_loop` callback (`filter6`): this program is the one
//! that both tail-calls and holds BPF-to-BPF functions, which the JIT allows on x86-64
//! since 5.10 and arm64 since 6.0 (`bpf_loop` itself needs 5.17). Below `paths` only.
//!
//! A prefix routed to a gateway endpoint takes the ENI's paths: its TCP/UDP goes to
//! `PATH_FORWARD6` with the route's entry (`ENI_FLAG_GATEWAY`: NATed keeping its
//! destination, `forward6`), ICMPv6 errors to `PATH_REPLY6`, as for IPv4.

use aya_ebpf::{bindings::xdp_action, btf_maps::lpm_trie::Key, programs::XdpContext};
use privatelink_common::{
    ENI_FLAG_FLOW_LOG, ENI_FLAG_GWLB, EndpointEni, EndpointEni6, FLOW_INGRESS, IfaceInfo,
    PATH_FORWARD6, PATH_GWLB_STEER6, PATH_REPLY6, PROTO_TCP, PROTO_UDP, Reason, VpcAddr6,
};

use crate::{
    endpoint::check_forwarding,
    filter6::ROUTE6_BITS,
    flowlog, host, icmp6,
    maps::{
        self, Handoff, Handoff6, PL_ENDPOINTS6, PL_GW_ROUTES6, PL_HANDOFF, PL_HANDOFF6, PL_PATHS,
        PL_SNAT6_ADDRS,
    },
    nd,
    packet::Packet,
    packet6::{PROTO_ICMPV6, copy_addr, header6, packet6},
    verdict::{Verdict, settle, settle_for},
};

/// Whether a destination may be routed to an endpoint: not multicast (ff00::/8), not
/// link-local (fe80::/10), which a route like ::/0 also covers and which never leave
/// their link.
#[inline(always)]
fn routable(a: &[u8; 16]) -> bool {
    a[0] != 0xff && !(a[0] == 0xfe && a[1] & 0xc0 == 0x80)
}

/// What an IPv6 destination address is to the data path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// An endpoint ENI's IPv6 address.
    Endpoint,
    /// An IPv6 SNAT address: replies of NATed flows, errors about them.
    Snat,
    /// A prefix routed to a gateway or GWLB endpoint.
    Route,
}

/// An IPv6 frame on an attached interface; the verdict packed with the counter slot of
/// the endpoint it is counted for.
#[inline(always)]
pub fn frame(ctx: &XdpContext) -> u64 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // Read first, as the IPv4 classifier does (see `classify::frame`).
    let epoch = maps::epoch();
    let Some(iface) = maps::iface(ifindex, epoch) else {
        return settle(Ok((xdp_action::XDP_PASS, Reason::PassNotAttached)));
    };
    // (A flow checked under this epoch was forwarded by the entry program: `established6`.)
    // What follows checks the packet and may stamp its flow: as in `classify::classify`.
    maps::order_after_epoch();
    let mut entry = EndpointEni6::default();
    // The packet as far as it was read: `l4` 0 until `packet6` has walked it.
    let mut seen = Packet {
        ifindex,
        l4: 0,
        end: 0,
        proto: 0,
        epoch,
    };
    let r = classify(ctx, ifindex, &iface, epoch, &mut entry, &mut seen);
    if let Err(reason) = r
        && entry.eni.flags & ENI_FLAG_FLOW_LOG != 0
    {
        // What an endpoint with flow logs refused before its path: a REJECT record.
        let slot = entry.eni.counter_slot;
        flowlog::report_frame6(ctx, &seen, slot, FLOW_INGRESS as u32, reason as u32);
    }
    settle_for(entry.eni.counter_slot, r)
}

/// Which IPv6 path takes the packet (tail-called, so this returns only on a verdict of
/// its own). `entry` is the endpoint it is addressed to, once found.
#[inline(always)]
fn classify(
    ctx: &XdpContext,
    ifindex: u32,
    iface: &IfaceInfo,
    epoch: u32,
    entry: &mut EndpointEni6,
    seen: &mut Packet,
) -> Result<Verdict, Reason> {
    let (ip, end) = header6(ctx)?;
    if nd::is_nd(ctx, ip) {
        return nd::handle(ctx, iface, end);
    }
    let mut dst = VpcAddr6 {
        vpc_id: iface.vpc_id,
        addr: [0; 16],
    };
    copy_addr(&mut dst.addr, &ip.dst_addr);
    // SAFETY: values are copied out of the maps.
    let target = if let Some(eni) = unsafe { PL_ENDPOINTS6.get(dst) }.copied() {
        *entry = eni;
        Target::Endpoint
    } else if unsafe { PL_SNAT6_ADDRS.get(dst) }.is_some() {
        Target::Snat
    } else if iface.flags & privatelink_common::IFACE_FLAG_GATEWAYS == 0 || !routable(&dst.addr) {
        return Ok(host::other(iface));
    } else if let Some(gw) = PL_GW_ROUTES6.get(&Key::new(ROUTE6_BITS, dst)).copied() {
        *entry = gw;
        Target::Route
    } else {
        return Ok(host::other(iface));
    };
    let (pkt, _) = packet6(ctx, ifindex, epoch)?;
    *seen = pkt;
    if target != Target::Snat {
        check_forwarding(&entry.eni)?;
    }
    let path = match (target, pkt.proto) {
        (Target::Route, _) if entry.eni.flags & ENI_FLAG_GWLB != 0 => {
            return tail_call_gwlb(ctx, iface, &entry.eni, epoch);
        }
        (Target::Snat, PROTO_TCP | PROTO_UDP) => PATH_REPLY6,
        // A gateway route: NATed as for an ENI, keeping its destination.
        (Target::Endpoint | Target::Route, PROTO_TCP | PROTO_UDP) => PATH_FORWARD6,
        (_, PROTO_ICMPV6) => {
            let (ty, code) = icmp6::type_code(ctx, &pkt)?;
            if target == Target::Endpoint && ty == icmp6::ICMP6_ECHO_REQUEST && code == 0 {
                return icmp6::echo_reply6(ctx, iface, dst, &entry.eni, &pkt);
            }
            if !icmp6::is_translated_error(ty) {
                return Err(Reason::DropIcmp6Unsupported);
            }
            // Errors about our flows, either way (a gateway flow's replies too: path MTU
            // discovery needs them): the reply path's program.
            PATH_REPLY6
        }
        (Target::Snat, _) => return Err(Reason::DropNoFlow),
        _ => return Err(Reason::DropUnsupportedProtocol),
    };
    tail_call(ctx, iface, entry, epoch, path)
}

/// Hands what was found to the IPv6 path program at `path` and tail-calls it.
#[inline(always)]
fn tail_call(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    entry: &EndpointEni6,
    epoch: u32,
    path: u32,
) -> Result<Verdict, Reason> {
    let Some(slot) = PL_HANDOFF6.get_ptr_mut(0) else {
        return Err(Reason::DropNoPathProgram);
    };
    // SAFETY: this CPU's slot, valid for this run; the path program reads it right after.
    unsafe {
        *slot = Handoff6 {
            iface: *iface,
            entry: *entry,
            epoch,
        };
        PL_PATHS.tail_call(ctx, path);
    }
    // Only if the loader left the slot empty.
    Err(Reason::DropNoPathProgram)
}

/// A prefix routed to a GWLB endpoint: its program takes the route's entry from
/// `PL_HANDOFF`, as the IPv4 steering path does.
#[inline(always)]
fn tail_call_gwlb(
    ctx: &XdpContext,
    iface: &IfaceInfo,
    route: &EndpointEni,
    epoch: u32,
) -> Result<Verdict, Reason> {
    let Some(slot) = PL_HANDOFF.get_ptr_mut(0) else {
        return Err(Reason::DropNoPathProgram);
    };
    // SAFETY: as in `tail_call`.
    unsafe {
        *slot = Handoff {
            iface: *iface,
            entry: *route,
            epoch,
        };
        PL_PATHS.tail_call(ctx, PATH_GWLB_STEER6);
    }
    Err(Reason::DropNoPathProgram)
}
