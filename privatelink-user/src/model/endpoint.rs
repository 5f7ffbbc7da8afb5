//! Endpoints (a consumer's connection to a service: ENIs in zones, a gateway, or GWLB
//! routes) and their connection state.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{AclRule, IpVersion};

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
    /// ipv4 (every endpoint stored before dual stack), or dualstack: each ENI has an IPv6
    /// address too (`EndpointZone::eni6`), reached over IPv6 (interface endpoints; the
    /// service must be dualstack).
    #[serde(default, skip_serializing_if = "IpVersion::is_ipv4")]
    pub ip_version: IpVersion,
    /// Gateway endpoints: the route target address in the VPC (the VPC routes the
    /// service's prefixes to it).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Dualstack gateway endpoints: the IPv6 route target in the VPC (a vSwitch's IPv6
    /// range; the VPC routes the service's IPv6 prefixes to it). Ipv4 ones have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// Gateway endpoints: which destinations the VPC may reach, ordered, first match
    /// decides (an IPv6 rule judges IPv6 packets only, an IPv4 rule IPv4 ones; no match
    /// drops); empty allows all.
    #[serde(default)]
    pub policy: Vec<AclRule>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// GWLB endpoints: the destination prefixes the VPC routes to this endpoint (its ENI),
    /// IPv4 or (the service dualstack) IPv6.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
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
    /// The ENI's IPv6 address (dualstack endpoints), in the vSwitch's `ipv6_cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni6: Option<Ipv6Addr>,
}

pub const MAX_SECURITY_GROUPS: usize = 5;
pub const MAX_TAGS: usize = 20;
/// The most routes a GWLB endpoint has.
pub const MAX_GWLB_ROUTES: usize = 64;
