//! Whether an endpoint forwards: only a whitelisted consumer's `Connected` endpoint does.
//! The classifier checks the endpoint a packet is addressed to; the reply and ICMP paths
//! check a flow's endpoint again, found by its ENI address or gateway route. Uses only
//! `maps`.

use aya_ebpf::btf_maps::lpm_trie::Key;
use privatelink_common::{EndpointEni, Reason, VpcAddr};

use crate::maps::{PL_ENDPOINTS, PL_GW_ROUTES};

/// Only a whitelisted consumer's `Connected` endpoint forwards.
#[inline(always)]
pub fn check_forwarding(eni: &EndpointEni) -> Result<(), Reason> {
    if !eni.is_whitelisted() {
        return Err(Reason::DropNotWhitelisted);
    }
    if !eni.is_connected() {
        return Err(Reason::DropNotConnected);
    }
    Ok(())
}

/// The same check for a gateway flow, found by its destination in the consumer VPC.
#[inline(always)]
pub fn check_gateway_at(vpc_id: u32, addr: [u8; 4]) -> Result<EndpointEni, Reason> {
    match PL_GW_ROUTES
        .get(&Key::new(64, VpcAddr { vpc_id, addr }))
        .copied()
    {
        Some(gw) => check_forwarding(&gw).map(|()| gw),
        None => Err(Reason::DropNotConnected),
    }
}

/// The same check for a flow's endpoint, found by its ENI address; returns the endpoint.
#[inline(always)]
pub fn check_endpoint_at(vpc_id: u32, addr: [u8; 4]) -> Result<EndpointEni, Reason> {
    // SAFETY: the value is copied out of the map.
    match unsafe { PL_ENDPOINTS.get(VpcAddr { vpc_id, addr }) }.copied() {
        Some(eni) => check_forwarding(&eni).map(|()| eni),
        None => Err(Reason::DropNotConnected),
    }
}
