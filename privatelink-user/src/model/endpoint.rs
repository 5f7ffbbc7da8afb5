//! Endpoints (a consumer's connection to a service: ENIs in zones, a gateway, or GWLB
//! routes) and their connection state.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::AclRule;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    #[default]
    Pending,
    Connected,
    Rejected,
    Disconnected,
}

impl From<Connection> for privatelink_common::ConnectionState {
    fn from(c: Connection) -> Self {
        match c {
            Connection::Pending => Self::Pending,
            Connection::Connected => Self::Connected,
            Connection::Rejected => Self::Rejected,
            Connection::Disconnected => Self::Disconnected,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub id: String,
    pub account: String,
    pub vpc: String,
    pub service: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub connection: Connection,
    #[serde(default)]
    pub zones: Vec<EndpointZone>,
    /// Gateway endpoints: the route target address in the VPC (the VPC routes the
    /// service's prefixes to it).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Gateway endpoints: which destinations the VPC may reach, ordered, first match
    /// decides; empty allows all.
    #[serde(default)]
    pub policy: Vec<AclRule>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// GWLB endpoints: the destination prefixes the VPC routes to this endpoint (its ENI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Ipv4Net>,
    /// Zone affinity of the endpoint's domain name: a client in a zone where the endpoint
    /// has an ENI is answered that zone's address (while it is healthy). Enabled only
    /// where the service supports it (see the README for the change rules).
    #[serde(default = "super::yes")]
    pub zone_affinity: bool,
    /// The service's custom domain name resolves in this endpoint's VPC to its ENIs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub service_domain: bool,
    /// Flow logs of the endpoint's ENIs (none: off; states stored before flow logs load
    /// as off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_log: Option<FlowLog>,
}

/// An endpoint's flow logs: the daemon aggregates its ENIs' packets per capture window
/// and writes one record per flow, direction and action at each window's end (see the
/// README, "Flow logs").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowLog {
    /// The capture window, seconds (`FLOW_LOG_WINDOWS`: the clouds offer 60 and 600).
    #[schema(example = 60)]
    pub window_seconds: u32,
}

/// The capture windows a flow log may have, seconds.
pub const FLOW_LOG_WINDOWS: std::ops::RangeInclusive<u32> = 1..=600;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointZone {
    pub vswitch: String,
    pub eni: Ipv4Addr,
}

pub const MAX_SECURITY_GROUPS: usize = 5;
pub const MAX_TAGS: usize = 20;
/// The most routes a GWLB endpoint has.
pub const MAX_GWLB_ROUTES: usize = 64;
