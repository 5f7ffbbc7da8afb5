//! Network ACLs (stateless, ordered, per vSwitch, before security groups) and security
//! groups (merged per ENI, priority order with drop first at equal priority, no match =
//! drop, stateful through conntrack: only a flow's first packet is checked, replies pass),
//! and the services' listeners. The forward, reply and ICMP paths ask it before a packet
//! crosses an endpoint. Uses only `maps`.

use aya_ebpf::btf_maps::HashMap;
use privatelink_common::{
    ENI_FLAG_ACL, ENI_FLAG_SG, EndpointEni, MAX_ENDPOINTS, RULE_ACCEPT, Reason, RuleSet, VpcAddr,
};

use crate::maps::{PL_ACL_IN, PL_ACL_OUT, PL_LISTENERS, PL_SG_RULES};

/// A rule map of either address family: the ENI's address → its rules.
pub type Rules<K, R> = HashMap<K, R, { MAX_ENDPOINTS as usize }>;

/// A rule set of either address family (`RuleSet`, `RuleSet6`): the action of its first
/// rule that matches.
pub trait Decide {
    type Remote;
    fn decide(&self, remote: Self::Remote, proto: u8, port: u16) -> Option<u8>;
}

impl Decide for RuleSet {
    type Remote = [u8; 4];
    #[inline(always)]
    fn decide(&self, remote: [u8; 4], proto: u8, port: u16) -> Option<u8> {
        RuleSet::decide(self, remote, proto, port)
    }
}

#[inline(always)]
pub fn first_match<K, R: Decide>(
    map: &Rules<K, R>,
    eni: K,
    remote: R::Remote,
    proto: u8,
    port: u16,
    reason: Reason,
) -> Result<(), Reason> {
    // SAFETY: a reference into a map the daemon writes whole entries of; read in this run.
    let Some(set) = (unsafe { map.get(eni) }) else {
        return Err(reason); // flagged but no rules: fail closed
    };
    match set.decide(remote, proto, port) {
        Some(RULE_ACCEPT) => Ok(()),
        _ => Err(reason),
    }
}

/// The ENI's vSwitch ACL on a packet from `remote` into the ENI.
#[inline(always)]
pub fn acl_in(
    key: VpcAddr,
    eni: &EndpointEni,
    remote: [u8; 4],
    proto: u8,
    port: u16,
) -> Result<(), Reason> {
    if eni.flags & ENI_FLAG_ACL == 0 {
        return Ok(());
    }
    first_match(&PL_ACL_IN, key, remote, proto, port, Reason::DropAcl)
}

/// The ENI's vSwitch ACL on a packet from the ENI (port `port`) to `remote`.
#[inline(always)]
pub fn acl_out(
    key: VpcAddr,
    eni: &EndpointEni,
    remote: [u8; 4],
    proto: u8,
    port: u16,
) -> Result<(), Reason> {
    if eni.flags & ENI_FLAG_ACL == 0 {
        return Ok(());
    }
    first_match(&PL_ACL_OUT, key, remote, proto, port, Reason::DropAcl)
}

/// The ENI's security groups on the first packet of a flow from `remote`.
#[inline(always)]
pub fn security_groups(
    key: VpcAddr,
    eni: &EndpointEni,
    remote: [u8; 4],
    proto: u8,
    port: u16,
) -> Result<(), Reason> {
    if eni.flags & ENI_FLAG_SG == 0 {
        return Ok(());
    }
    first_match(
        &PL_SG_RULES,
        key,
        remote,
        proto,
        port,
        Reason::DropSecurityGroup,
    )
}

/// The service's listeners: only traffic to a published protocol and port crosses an
/// endpoint (checked before a SNAT tuple or a flow entry is taken, and again on every
/// packet a flow sends on the full path, so a removed listener stops its flows too).
#[inline(always)]
pub fn listener(service_id: u32, proto: u8, port: u16) -> Result<(), Reason> {
    // SAFETY: a reference into a map the daemon writes whole entries of; read in this run.
    match unsafe { PL_LISTENERS.get(service_id) } {
        Some(set) if set.admits(proto, port) => Ok(()),
        _ => Err(Reason::DropNoListener),
    }
}
