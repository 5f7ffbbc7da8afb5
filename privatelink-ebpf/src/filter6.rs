//! The IPv6 side of `filter` and `endpoint`: an ENI's vSwitch ACLs and security groups
//! on its IPv6 rules (`PL_ACL6_IN`, `PL_ACL6_OUT`, `PL_SG_RULES6`, keyed by the ENI's
//! IPv6 address; the same flags, order and first-match decision as IPv4's), and whether
//! the endpoint an IPv6 flow belongs to still forwards. An IPv6 rule names ICMPv6 by its
//! own protocol number, 58 (the daemon writes an `icmp` rule on an IPv6 CIDR so). Uses only `maps`,
//! `endpoint` and `filter`.

use privatelink_common::{
    ENI_FLAG_ACL, ENI_FLAG_SG, EndpointEni, EndpointEni6, Reason, RuleSet6, VpcAddr6,
};

use crate::{
    endpoint::check_forwarding,
    filter::{Decide, first_match},
    maps::{PL_ACL6_IN, PL_ACL6_OUT, PL_ENDPOINTS6, PL_SG_RULES6},
};

impl Decide for RuleSet6 {
    type Remote = [u8; 16];
    #[inline(always)]
    fn decide(&self, remote: [u8; 16], proto: u8, port: u16) -> Option<u8> {
        RuleSet6::decide(self, remote, proto, port)
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
    first_match(&PL_ACL6_IN, key, remote, proto, port, Reason::DropAcl)
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
    first_match(&PL_ACL6_OUT, key, remote, proto, port, Reason::DropAcl)
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
    first_match(
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
