//! VPCs and their vSwitches (operator).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, admin_only, unique, visible};
use crate::model::{State, VSwitch, Vpc};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVpc {
    pub id: String,
    pub account: String,
    #[schema(value_type = String, example = "10.10.0.0/16")]
    pub cidr: Ipv4Net,
    /// The forwarder's interface attached to this VPC.
    pub interface: String,
    #[serde(default)]
    pub vswitches: Vec<NewVSwitch>,
    /// The interface also carries the host's own traffic (unrelated packets pass to the
    /// host's stack). Off by default: tenants cannot reach the forwarder host.
    #[serde(default)]
    pub host_traffic: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVSwitch {
    pub id: String,
    pub zone: String,
    #[schema(value_type = String, example = "10.10.1.0/24")]
    pub cidr: Ipv4Net,
}

pub fn create_vpc(s: &mut State, c: &Caller, req: NewVpc) -> R<Vpc> {
    admin_only(c)?;
    if s.account(&req.account).is_none() {
        return Err(OpError::not_found(
            "account",
            format!("no account {}", req.account),
        ));
    }
    unique(s.vpc(&req.id).is_some(), "VPC", &req.id)?;
    let vpc = Vpc {
        id: req.id,
        account: req.account,
        cidr: req.cidr,
        interface: req.interface,
        vswitches: req
            .vswitches
            .into_iter()
            .map(|v| VSwitch {
                id: v.id,
                zone: v.zone,
                cidr: v.cidr,
            })
            .collect(),
        host_traffic: req.host_traffic,
        resolver: None,
        probe_address: None,
    };
    s.vpcs.push(vpc.clone());
    Ok(vpc)
}

pub fn list_vpcs(s: &State, c: &Caller) -> Vec<Vpc> {
    visible(&s.vpcs, c)
}
