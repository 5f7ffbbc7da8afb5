//! The IPv6 side of `filter` and `endpoint`: an ENI's vSwitch ACLs and security groups
//! on its IPv6 rules (`PL_ACL6_IN`, `PL_ACL6_OUT`, `PL_SG_RULES6`, keyed by the ENI's
//! IPv6 address; the same flags, order and first-match decision as IPv4's), a gateway
//! endpoint's policy on its IPv6 rules (`PL_SG_RULES6` under `gateway_policy6`), and
//! whether the endpoint an IPv6 flow belongs to (an ENI's, or a gateway route's) still
//! forwards. An IPv6 rule names ICMPv6 by its own protocol number, 58 (the daemon writes
//! an `icmp` rule on an IPv6 CIDR so). Uses only `maps` and `endpoint`.
//!
//! The rules are walked by `bpf_loop`, one rule per call of `rule6_step`: the verifier
//! checks the step once, where an unrolled walk of 32 rules with 128-bit prefixes is
//! checked once per rule on every path that reaches it (the IPv6 NAT program passed the
//! 1 000 000 verified instructions with the walks inlined, and takes ~100 000 with them
//! looped). A packet pays one indirect call per rule it walks: the ACL on every packet of
//! an ACL-guarded ENI, the security groups on a flow's first packet only.

use aya_ebpf::{btf_maps::lpm_trie::Key, cty::c_void, helpers::bpf_loop};
use privatelink_common::{
    ENI_FLAG_ACL, ENI_FLAG_GATEWAY, ENI_FLAG_SG, EndpointEni, EndpointEni6, FLOW_GATEWAY,
    MAX_ENDPOINTS, MAX_RULES, RULE_ACCEPT, Reason, RuleSet6, VpcAddr6,
};

use crate::{
    endpoint::check_forwarding,
    maps::{PL_ACL6_IN, PL_ACL6_OUT, PL_ENDPOINTS6, PL_GW_ROUTES6, PL_SG_RULES6},
};

/// An IPv6 rule map: the ENI's IPv6 address → its rules.
type Rules6 = aya_ebpf::btf_maps::HashMap<VpcAddr6, RuleSet6, { MAX_ENDPOINTS as usize }>;

/// What `rule6_step` reads and writes: on the caller's stack, passed to `bpf_loop`.
#[repr(C)]
struct Walk6 {
    set: *const RuleSet6,
    remote: [u8; 16],
    port: u16,
    proto: u8,
    /// The first matching rule's action; `NO_MATCH` while none has matched.
    action: u8,
}

const NO_MATCH: u8 = u8::MAX;

/// One rule of the walk: rule `index` of the set; 1 (stop) at the first that matches.
extern "C" fn rule6_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `first_match6` passes its own `Walk6`, alive for the whole `bpf_loop`.
    let walk = unsafe { &mut *(ctx as *mut Walk6) };
    // SAFETY: a map value `first_match6` found, valid for this program run.
    let Some(rule) = (unsafe { (*walk.set).rules.get(index as usize) }) else {
        return 1;
    };
    if rule.matches(walk.remote, walk.proto, walk.port) {
        walk.action = rule.action;
        return 1;
    }
    0
}

/// `filter::first_match` for IPv6: the action of the ENI's first rule in `map` matching
/// the packet must be accept; no rule set, or no match, is `reason`.
#[inline(always)]
fn first_match6(
    map: &Rules6,
    key: VpcAddr6,
    remote: [u8; 16],
    proto: u8,
    port: u16,
    reason: Reason,
) -> Result<(), Reason> {
    // SAFETY: a reference into a map the daemon writes whole entries of; read in this run.
    let Some(set) = (unsafe { map.get(key) }) else {
        return Err(reason); // flagged but no rules: fail closed
    };
    let mut walk = Walk6 {
        set,
        remote,
        port,
        proto,
        action: NO_MATCH,
    };
    let count = set.count.min(MAX_RULES as u32);
    // SAFETY: `rule6_step` has the callback's signature and reads only `walk`.
    unsafe {
        bpf_loop(
            count,
            rule6_step as *const () as *mut c_void,
            &mut walk as *mut Walk6 as *mut c_void,
            0,
        )
    };
    if walk.action == RULE_ACCEPT {
        Ok(())
    } else {
        Err(reason)
    }
}

/// The ENI's vSwitch ACL on an IPv6 packet from `remote` into the ENI.
#[inline(always)]
pub fn acl6_in(
    key: VpcAddr6,
    eni: &EndpointEni,
    remote: [u8; 16],
    proto: u8,
    port: u16,
) -> Result<(), Reason> {
    if eni.flags & ENI_FLAG_ACL == 0 {
        return Ok(());
    }
    first_match6(&PL_ACL6_IN, key, remote, proto, port, Reason::DropAcl)
}

/// The ENI's vSwitch ACL on an IPv6 packet from the ENI (port `port`) to `remote`.
#[inline(always)]
pub fn acl6_out(
    key: VpcAddr6,
    eni: &EndpointEni,
    remote: [u8; 16],
    proto: u8,
    port: u16,
) -> Result<(), Reason> {
    if eni.flags & ENI_FLAG_ACL == 0 {
        return Ok(());
    }
    first_match6(&PL_ACL6_OUT, key, remote, proto, port, Reason::DropAcl)
}

/// The ENI's security groups on the first IPv6 packet of a flow from `remote`.
#[inline(always)]
pub fn security_groups6(
    key: VpcAddr6,
    eni: &EndpointEni,
    remote: [u8; 16],
    proto: u8,
    port: u16,
) -> Result<(), Reason> {
    if eni.flags & ENI_FLAG_SG == 0 {
        return Ok(());
    }
    first_match6(
        &PL_SG_RULES6,
        key,
        remote,
        proto,
        port,
        Reason::DropSecurityGroup,
    )
}

/// `endpoint::check_endpoint_at` for an IPv6 flow: its endpoint, found by the ENI's IPv6
/// address, must still forward.
#[inline(always)]
pub fn check_endpoint6_at(vpc_id: u32, addr: [u8; 16]) -> Result<EndpointEni6, Reason> {
    // SAFETY: the value is copied out of the map.
    match unsafe { PL_ENDPOINTS6.get(VpcAddr6 { vpc_id, addr }) }.copied() {
        Some(eni) => check_forwarding(&eni.eni).map(|()| eni),
        None => Err(Reason::DropNotConnected),
    }
}

/// The LPM key length of an IPv6 route lookup: the VPC id's 32 bits and 128.
pub const ROUTE6_BITS: u32 = 32 + 128;

/// `endpoint::check_gateway_at` for an IPv6 flow: its gateway endpoint, found by the
/// route of its destination in the consumer VPC, must still forward.
#[inline(always)]
pub fn check_gateway6_at(vpc_id: u32, addr: [u8; 16]) -> Result<EndpointEni6, Reason> {
    match PL_GW_ROUTES6
        .get(&Key::new(ROUTE6_BITS, VpcAddr6 { vpc_id, addr }))
        .copied()
    {
        Some(gw) if gw.eni.flags & ENI_FLAG_GATEWAY != 0 => check_forwarding(&gw.eni).map(|()| gw),
        _ => Err(Reason::DropNotConnected),
    }
}

/// The endpoint of an IPv6 flow whose `flags` are its entry's (`FLOW_GATEWAY`: a
/// gateway route's, else an ENI's), found by its ENI address or destination `addr` in
/// VPC `vpc_id`; it must still forward.
#[inline(always)]
pub fn check_flow_endpoint6_at(
    flags: u8,
    vpc_id: u32,
    addr: [u8; 16],
) -> Result<EndpointEni6, Reason> {
    if flags & FLOW_GATEWAY != 0 {
        check_gateway6_at(vpc_id, addr)
    } else {
        check_endpoint6_at(vpc_id, addr)
    }
}
