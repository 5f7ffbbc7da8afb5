//! Security groups and network ACLs: the rules that filter an endpoint's traffic.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Accept,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// A security group: rules for the ENIs it is attached to (several groups on one ENI are
/// merged). Only ingress rules filter an endpoint ENI: what leaves it are replies of
/// allowed flows (stateful) and ICMP errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    pub account: String,
    pub vpc: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub rules: Vec<SgRule>,
    /// The number of the last rule id handed out (ids are never reused, so a retried
    /// delete cannot remove a newer rule).
    #[serde(default)]
    pub last_rule: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    #[serde(default)]
    pub id: String,
    pub direction: Direction,
    /// 1 (highest) to 100; at equal priority drop wins.
    pub priority: u32,
    pub action: RuleAction,
    pub protocol: Protocol,
    /// TCP/UDP port range on the ENI side; all ports if absent.
    #[serde(default)]
    pub ports: Option<[u16; 2]>,
    /// The remote address range, IPv4 or IPv6 (an IPv6 rule filters the IPv6 addresses of
    /// dualstack ENIs).
    pub cidr: IpNet,
}

/// A network ACL: stateless, ordered rules for the vSwitches it is bound to, evaluated
/// before security groups on every packet; the first match decides, no match drops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAcl {
    pub id: String,
    pub account: String,
    pub vpc: String,
    pub vswitches: Vec<String>,
    #[serde(default)]
    pub ingress: Vec<AclRule>,
    #[serde(default)]
    pub egress: Vec<AclRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub action: RuleAction,
    pub protocol: Protocol,
    #[serde(default)]
    pub ports: Option<[u16; 2]>,
    /// IPv4 or IPv6; each family's rules keep their order among themselves.
    pub cidr: IpNet,
}
