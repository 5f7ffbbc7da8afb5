//! The domain as a cloud console shows it: accounts, VPCs with vSwitches in zones,
//! endpoint services, endpoints and their connections. Validation lives here, with no I/O;
//! every error names the field it is about.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::health::HealthSettings;

/// The whole declared state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub vpcs: Vec<Vpc>,
    #[serde(default)]
    pub services: Vec<EndpointService>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub acls: Vec<NetworkAcl>,
}

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
    /// The remote address range.
    pub cidr: Ipv4Net,
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
    pub cidr: Ipv4Net,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// SHA-256 (hex) of the account's API token; never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpc {
    pub id: String,
    pub account: String,
    pub cidr: Ipv4Net,
    /// The forwarder's interface attached to this VPC.
    pub interface: String,
    #[serde(default)]
    pub vswitches: Vec<VSwitch>,
    /// The interface also carries the host's own traffic: what is not the data path's
    /// passes to the host's stack. Off (the default), the host sees only the replies to
    /// its own probes in this VPC and nothing else of it (see README, "The forwarder host").
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_traffic: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The transport protocol of a load balancer listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Tcp,
    Udp,
}

impl ListenerProtocol {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => privatelink_common::PROTO_TCP,
            Self::Udp => privatelink_common::PROTO_UDP,
        }
    }
}

/// A listener of the service's load balancer: a protocol and a port, or a port range
/// `port`..=`to_port`. An endpoint carries only traffic that matches one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub protocol: ListenerProtocol,
    pub port: u16,
    /// The last port of a range; a single port if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
}

impl Listener {
    /// The first and last port.
    pub fn ports(&self) -> (u16, u16) {
        (self.port, self.to_port.unwrap_or(self.port))
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
        };
        match self.ports() {
            (a, b) if a == b => write!(f, "{p}:{a}"),
            (a, b) => write!(f, "{p}:{a}-{b}"),
        }
    }
}

impl std::str::FromStr for Listener {
    type Err = String;

    /// `tcp:80`, `udp:53`, `tcp:8000-8100`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a listener (tcp:80, udp:53, tcp:8000-8100)");
        let (proto, ports) = s.split_once(':').ok_or_else(bad)?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => ListenerProtocol::Tcp,
            "udp" => ListenerProtocol::Udp,
            _ => return Err(format!("{proto:?} is not a listener protocol (tcp or udp)")),
        };
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| bad());
        let (port, to_port) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, Some(port(b)?)),
            None => (port(ports)?, None),
        };
        Ok(Self {
            protocol,
            port,
            to_port,
        })
    }
}

/// The most listeners a service publishes.
pub const MAX_LISTENERS: usize = privatelink_common::MAX_LISTENERS;

/// Listeners: ports 1-65535, ranges the right way up, no two overlapping.
pub fn check_listeners(field: &str, listeners: &[Listener]) -> Result<(), FieldError> {
    if listeners.len() > MAX_LISTENERS {
        return err(
            field,
            format!("{} listeners; at most {MAX_LISTENERS}", listeners.len()),
        );
    }
    for (j, l) in listeners.iter().enumerate() {
        let (lo, hi) = l.ports();
        if lo == 0 {
            return err(
                format!("{field}[{j}].port"),
                "port 0 is not a listener port (1-65535)",
            );
        }
        if hi < lo {
            return err(
                format!("{field}[{j}].to_port"),
                format!("{lo}-{hi} is upside down (to_port must be at least port)"),
            );
        }
        if let Some((k, o)) = listeners[..j].iter().enumerate().find(|(_, o)| {
            let (a, b) = o.ports();
            o.protocol == l.protocol && a <= hi && lo <= b
        }) {
            return err(
                format!("{field}[{j}]"),
                format!("{l} overlaps listener {k} ({o})"),
            );
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitch {
    pub id: String,
    pub zone: String,
    pub cidr: Ipv4Net,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// Fronted by a provider load balancer.
    Interface,
    /// A prefix list (object storage and the like) reached through a route, no ENI.
    Gateway,
    /// A Gateway Load Balancer: traffic the consumer VPC routes to the endpoint is sent in
    /// GENEVE to an inspection appliance (`backends`) and delivered when it comes back.
    Gwlb,
}

/// How a GWLB service spreads flows over its appliances: a flow is hashed over these fields
/// of its packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stickiness {
    /// Addresses, protocol and ports.
    #[default]
    FiveTuple,
    /// Addresses and protocol.
    ThreeTuple,
    /// Addresses.
    TwoTuple,
}

/// What happens to a GWLB flow whose appliance turns unhealthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failover {
    /// Existing flows stay with their appliance (only new flows avoid it).
    #[default]
    NoRebalance,
    /// Existing flows move to a healthy appliance.
    Rebalance,
}

/// The settings of a GWLB service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GwlbSettings {
    /// The load balancer's own address in the service VPC: the outer source of GENEVE,
    /// configured by the operator on the host's interface of that VPC; health checks leave
    /// from it.
    pub address: Ipv4Addr,
    #[serde(default)]
    pub stickiness: Stickiness,
    /// Spread every zone's flows over the healthy appliances of all zones.
    #[serde(default)]
    pub cross_zone: bool,
    #[serde(default)]
    pub failover: Failover,
    /// How appliances are health-checked.
    #[serde(default)]
    pub health: HealthSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointService {
    pub id: String,
    pub account: String,
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// The provider VPC the load balancer lives in.
    pub vpc: String,
    #[serde(default)]
    pub auto_accept: bool,
    #[serde(default = "yes")]
    pub zone_affinity: bool,
    /// Consumer account ids allowed to create endpoints.
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// Load balancer address per zone; for GWLB services, the appliances (several per
    /// zone allowed).
    pub backends: Vec<Backend>,
    /// Source addresses in the provider VPC that consumer flows are translated to (none
    /// for GWLB services).
    #[serde(default)]
    pub snat: Vec<Ipv4Addr>,
    #[serde(default = "default_snat_ports")]
    pub snat_ports: [u16; 2],
    #[serde(default)]
    pub domain: Option<String>,
    /// Gateway services: the prefixes consumers route to their gateway endpoint.
    #[serde(default)]
    pub prefixes: Vec<Ipv4Net>,
    /// GWLB services: the load balancer's address, stickiness, failover and health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gwlb: Option<GwlbSettings>,
    /// The load balancer's listeners (interface services) or the ports served at the
    /// prefixes (gateway services): the only traffic the service's endpoints carry. None
    /// for GWLB services, whose appliances see every packet. A service stored by a build
    /// without listeners has none: it publishes nothing until its provider adds them.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// The most one endpoint may hold of the service's SNAT tuples (or of the flow table,
    /// if smaller) in flows that have not completed their handshake, in percent: one
    /// consumer's flood then starves only that consumer.
    #[serde(default = "default_endpoint_flow_share")]
    pub endpoint_flow_share: u8,
}

/// The default per-endpoint share of a service's SNAT tuples (percent).
pub const DEFAULT_ENDPOINT_FLOW_SHARE: u8 = 20;

fn default_endpoint_flow_share() -> u8 {
    DEFAULT_ENDPOINT_FLOW_SHARE
}

fn yes() -> bool {
    true
}

fn default_snat_ports() -> [u16; 2] {
    [1024, 65535]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub zone: String,
    pub address: Ipv4Addr,
}

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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointZone {
    pub vswitch: String,
    pub eni: Ipv4Addr,
}

/// A validation failure: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

pub const MAX_SECURITY_GROUPS: usize = 5;
pub const MAX_TAGS: usize = 20;
const MAX_IFNAME: usize = 15;

/// A stable numeric id for a string id (FNV-1a), used as the data path's key. Stable
/// across restarts and independent of declaration order, so pinned flows stay valid.
pub fn numeric_id(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn check_id(field: String, id: &str, seen: &mut BTreeMap<u32, String>) -> Result<(), FieldError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return err(
            field,
            format!("{id:?} is not a valid id (1-64 of [A-Za-z0-9_-])"),
        );
    }
    if let Some(other) = seen.insert(numeric_id(id), id.to_string()) {
        if other == id {
            return err(field, format!("duplicate id {id:?}"));
        }
        return err(
            field,
            format!("id {id:?} collides with {other:?}; choose another id"),
        );
    }
    Ok(())
}

impl State {
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
    pub fn vpc(&self, id: &str) -> Option<&Vpc> {
        self.vpcs.iter().find(|v| v.id == id)
    }
    pub fn service(&self, id: &str) -> Option<&EndpointService> {
        self.services.iter().find(|s| s.id == id)
    }

    /// Checks every rule of the domain. The first violation is returned.
    pub fn validate(&self) -> Result<(), FieldError> {
        let mut ids = BTreeMap::new();
        for (i, a) in self.accounts.iter().enumerate() {
            check_id(format!("accounts[{i}].id"), &a.id, &mut ids)?;
        }
        let account_exists = |a: &str| self.accounts.iter().any(|x| x.id == a);
        let mut ifaces = BTreeSet::new();
        for (i, v) in self.vpcs.iter().enumerate() {
            let f = format!("vpcs[{i}]");
            check_id(format!("{f}.id"), &v.id, &mut ids)?;
            if !account_exists(&v.account) {
                return err(
                    format!("{f}.account"),
                    format!("unknown account {:?}", v.account),
                );
            }
            if v.cidr != v.cidr.trunc() {
                return err(
                    format!("{f}.cidr"),
                    format!(
                        "{} has host bits set (did you mean {}?)",
                        v.cidr,
                        v.cidr.trunc()
                    ),
                );
            }
            if v.interface.is_empty() || v.interface.len() > MAX_IFNAME {
                return err(
                    format!("{f}.interface"),
                    format!("{:?} is not an interface name", v.interface),
                );
            }
            if !ifaces.insert(v.interface.clone()) {
                return err(
                    format!("{f}.interface"),
                    format!("{} is already attached to another VPC", v.interface),
                );
            }
            for (j, s) in v.vswitches.iter().enumerate() {
                let g = format!("{f}.vswitches[{j}]");
                check_id(format!("{g}.id"), &s.id, &mut ids)?;
                if !v.cidr.contains(&s.cidr) {
                    return err(
                        format!("{g}.cidr"),
                        format!("{} is not inside the VPC's {}", s.cidr, v.cidr),
                    );
                }
                if s.zone.is_empty() {
                    return err(format!("{g}.zone"), "a vSwitch needs a zone");
                }
                for (k, o) in v.vswitches.iter().enumerate().take(j) {
                    if o.cidr.contains(&s.cidr.network()) || s.cidr.contains(&o.cidr.network()) {
                        return err(
                            format!("{g}.cidr"),
                            format!("{} overlaps vswitches[{k}] {}", s.cidr, o.cidr),
                        );
                    }
                }
            }
        }
        self.check_capacity()?;
        // Load balancer, GWLB and appliance addresses (with their services), which no SNAT
        // address may take; GWLB and appliance addresses belong to one service only.
        let mut taken: BTreeMap<(String, Ipv4Addr), Vec<(&str, &'static str)>> = BTreeMap::new();
        for s in &self.services {
            let what = match s.kind {
                ServiceType::Gwlb => "a GWLB appliance",
                _ => "a load balancer address",
            };
            for b in &s.backends {
                taken
                    .entry((s.vpc.clone(), b.address))
                    .or_default()
                    .push((&s.id, what));
            }
            if let Some(g) = &s.gwlb {
                taken
                    .entry((s.vpc.clone(), g.address))
                    .or_default()
                    .push((&s.id, "a GWLB address"));
            }
        }
        let mut snat_used = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let f = format!("services[{i}]");
            check_id(format!("{f}.id"), &s.id, &mut ids)?;
            let vpc = self.owned_vpc(&f, &s.account, &s.vpc)?;
            for (j, w) in s.whitelist.iter().enumerate() {
                if !account_exists(w) {
                    return err(
                        format!("{f}.whitelist[{j}]"),
                        format!("unknown account {w:?}"),
                    );
                }
            }
            match (s.kind, &s.gwlb) {
                (ServiceType::Gwlb, Some(g)) => {
                    validate_gwlb_service(&f, s, g, vpc, &taken)?;
                    continue;
                }
                (ServiceType::Gwlb, None) => {
                    return err(
                        format!("{f}.gwlb"),
                        "a GWLB service needs its gwlb settings (at least the load balancer's address)",
                    );
                }
                (_, Some(_)) => {
                    return err(format!("{f}.gwlb"), "only GWLB services have gwlb settings");
                }
                (_, None) => {}
            }
            check_listeners(&format!("{f}.listeners"), &s.listeners)?;
            if !(1..=100).contains(&s.endpoint_flow_share) {
                return err(
                    format!("{f}.endpoint_flow_share"),
                    format!(
                        "{} is not a share in percent (1-100)",
                        s.endpoint_flow_share
                    ),
                );
            }
            if s.backends.is_empty() {
                return err(
                    format!("{f}.backends"),
                    "at least one load balancer address is needed",
                );
            }
            for (j, b) in s.backends.iter().enumerate() {
                if !vpc.cidr.contains(&b.address) {
                    return err(
                        format!("{f}.backends[{j}].address"),
                        format!("{} is not inside the service VPC's {}", b.address, vpc.cidr),
                    );
                }
                if s.backends[..j].iter().any(|o| o.address == b.address) {
                    return err(
                        format!("{f}.backends[{j}].address"),
                        format!("load balancer {} is listed twice", b.address),
                    );
                }
                let in_zone = s.backends[..=j].iter().filter(|o| o.zone == b.zone).count();
                // Without zone affinity every ENI spreads its flows over all of them.
                if !s.zone_affinity
                    && s.kind == ServiceType::Interface
                    && j >= privatelink_common::MAX_LBS_PER_ZONE
                {
                    return err(
                        format!("{f}.backends[{j}]"),
                        format!(
                            "more than {} load balancers without zone affinity (every ENI's flows are spread over all of them)",
                            privatelink_common::MAX_LBS_PER_ZONE
                        ),
                    );
                }
                if s.kind == ServiceType::Gateway && in_zone > 1 {
                    return err(
                        format!("{f}.backends[{j}].zone"),
                        format!(
                            "zone {} is listed twice (a gateway service has one next hop per zone)",
                            b.zone
                        ),
                    );
                }
                if in_zone > privatelink_common::MAX_LBS_PER_ZONE {
                    return err(
                        format!("{f}.backends[{j}].zone"),
                        format!(
                            "more than {} load balancers in zone {}",
                            privatelink_common::MAX_LBS_PER_ZONE,
                            b.zone
                        ),
                    );
                }
                if let Some((other, what)) = taken[&(vpc.id.clone(), b.address)]
                    .iter()
                    .find(|(o, what)| *o != s.id && *what != "a load balancer address")
                {
                    return err(
                        format!("{f}.backends[{j}].address"),
                        format!(
                            "{} is {what} of service {other} in VPC {}",
                            b.address, vpc.id
                        ),
                    );
                }
            }
            if s.snat.is_empty() || s.snat.len() > privatelink_common::MAX_SNAT_ADDRS {
                return err(
                    format!("{f}.snat"),
                    format!(
                        "between 1 and {} SNAT addresses are needed",
                        privatelink_common::MAX_SNAT_ADDRS
                    ),
                );
            }
            for (j, a) in s.snat.iter().enumerate() {
                if !vpc.cidr.contains(a) || *a == vpc.cidr.network() || *a == vpc.cidr.broadcast() {
                    return err(
                        format!("{f}.snat[{j}]"),
                        format!(
                            "{a} is not a usable address of the service VPC's {}",
                            vpc.cidr
                        ),
                    );
                }
                if s.backends.iter().any(|b| b.address == *a) {
                    return err(
                        format!("{f}.snat[{j}]"),
                        format!("{a} is also a load balancer address"),
                    );
                }
                if let Some((_, what)) = taken
                    .get(&(vpc.id.clone(), *a))
                    .and_then(|owners| owners.first())
                {
                    return err(
                        format!("{f}.snat[{j}]"),
                        format!("{a} is {what} in VPC {}", vpc.id),
                    );
                }
                if !snat_used.insert((vpc.id.clone(), *a)) {
                    return err(
                        format!("{f}.snat[{j}]"),
                        format!("{a} is already a SNAT address in VPC {}", vpc.id),
                    );
                }
            }
            let [lo, hi] = s.snat_ports;
            if lo == 0 || lo > hi {
                return err(
                    format!("{f}.snat_ports"),
                    format!("[{lo}, {hi}] is not a port range (1 <= low <= high)"),
                );
            }
            match s.kind {
                ServiceType::Interface if !s.prefixes.is_empty() => {
                    return err(
                        format!("{f}.prefixes"),
                        "only gateway services have prefixes",
                    );
                }
                ServiceType::Gateway if s.prefixes.is_empty() => {
                    return err(
                        format!("{f}.prefixes"),
                        "a gateway service needs at least one prefix",
                    );
                }
                _ => {}
            }
            for (j, p) in s.prefixes.iter().enumerate() {
                check_cidr(&format!("{f}.prefixes[{j}]"), p).map_err(|e| FieldError {
                    field: format!("{f}.prefixes[{j}]"),
                    ..e
                })?;
            }
        }
        // ENI and gateway addresses must not be SNAT, load balancer, GWLB or appliance
        // addresses either.
        let mut enis: BTreeSet<(String, Ipv4Addr)> = snat_used.clone();
        enis.extend(taken.into_keys());
        for (i, e) in self.endpoints.iter().enumerate() {
            let f = format!("endpoints[{i}]");
            check_id(format!("{f}.id"), &e.id, &mut ids)?;
            let vpc = self.owned_vpc(&f, &e.account, &e.vpc)?;
            if self.service(&e.service).is_none() {
                return err(
                    format!("{f}.service"),
                    format!("unknown endpoint service {:?}", e.service),
                );
            }
            let svc = self.service(&e.service).expect("checked above");
            self.validate_endpoint_kind(&f, e, vpc, svc, &mut enis)?;
            if e.security_groups.len() > MAX_SECURITY_GROUPS {
                return err(
                    format!("{f}.security_groups"),
                    format!(
                        "{} security groups; at most {MAX_SECURITY_GROUPS}",
                        e.security_groups.len()
                    ),
                );
            }
            if e.tags.len() > MAX_TAGS {
                return err(
                    format!("{f}.tags"),
                    format!("{} tags; at most {MAX_TAGS}", e.tags.len()),
                );
            }
            let mut zones = BTreeSet::new();
            for (j, z) in e.zones.iter().enumerate() {
                let g = format!("{f}.zones[{j}]");
                let Some(vsw) = vpc.vswitches.iter().find(|s| s.id == z.vswitch) else {
                    return err(
                        format!("{g}.vswitch"),
                        format!("VPC {} has no vSwitch {:?}", vpc.id, z.vswitch),
                    );
                };
                if !zones.insert(vsw.zone.clone()) {
                    return err(
                        format!("{g}.vswitch"),
                        format!("the endpoint already has an ENI in zone {}", vsw.zone),
                    );
                }
                if !vsw.cidr.contains(&z.eni)
                    || z.eni == vsw.cidr.network()
                    || z.eni == vsw.cidr.broadcast()
                {
                    return err(
                        format!("{g}.eni"),
                        format!(
                            "{} is not a usable address of vSwitch {} ({})",
                            z.eni, vsw.id, vsw.cidr
                        ),
                    );
                }
                if !enis.insert((vpc.id.clone(), z.eni)) {
                    return err(
                        format!("{g}.eni"),
                        format!("{} is already in use in VPC {}", z.eni, vpc.id),
                    );
                }
            }
            self.validate_endpoint_groups(&f, e)?;
        }
        self.validate_gateway_routes()?;
        self.validate_filters(&mut ids)
    }

    /// One endpoint per (VPC, prefix), whether the prefix comes from a gateway service or
    /// a GWLB endpoint's routes: two would make the route ambiguous.
    fn validate_gateway_routes(&self) -> Result<(), FieldError> {
        let mut routes: BTreeMap<(String, Ipv4Net), (&str, &str)> = BTreeMap::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let Some(svc) = self.service(&e.service) else {
                continue;
            };
            let (kind, prefixes): (&str, Vec<(String, Ipv4Net)>) = match svc.kind {
                ServiceType::Gateway if e.gateway.is_some() => (
                    "gateway",
                    svc.prefixes
                        .iter()
                        .map(|p| (format!("endpoints[{i}].service"), *p))
                        .collect(),
                ),
                ServiceType::Gwlb => (
                    "GWLB",
                    e.routes
                        .iter()
                        .enumerate()
                        .map(|(j, p)| (format!("endpoints[{i}].routes[{j}]"), *p))
                        .collect(),
                ),
                _ => continue,
            };
            for (field, p) in prefixes {
                if let Some((other, other_kind)) = routes.insert((e.vpc.clone(), p), (&e.id, kind))
                {
                    return err(
                        field,
                        format!(
                            "{p} is already routed to {other_kind} endpoint {other} in VPC {}",
                            e.vpc
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Interface endpoints have ENIs in zones; gateway endpoints a route target and a
    /// policy, and the service's prefixes must be routable (outside the VPC).
    fn validate_endpoint_kind(
        &self,
        f: &str,
        e: &Endpoint,
        vpc: &Vpc,
        svc: &EndpointService,
        enis: &mut BTreeSet<(String, Ipv4Addr)>,
    ) -> Result<(), FieldError> {
        if svc.kind != ServiceType::Gwlb && !e.routes.is_empty() {
            return err(
                format!("{f}.routes"),
                "only endpoints of GWLB services have routes",
            );
        }
        match svc.kind {
            ServiceType::Gwlb => validate_gwlb_endpoint(f, e)?,
            ServiceType::Interface => {
                if e.zones.is_empty() {
                    return err(
                        format!("{f}.zones"),
                        "an endpoint needs an ENI in at least one zone",
                    );
                }
                if e.gateway.is_some() || !e.policy.is_empty() {
                    return err(
                        format!("{f}.gateway"),
                        "only endpoints of gateway services have a gateway and a policy",
                    );
                }
            }
            ServiceType::Gateway => {
                if !e.zones.is_empty() {
                    return err(
                        format!("{f}.zones"),
                        "a gateway endpoint has no ENIs; give --gateway instead",
                    );
                }
                if !e.security_groups.is_empty() {
                    return err(
                        format!("{f}.security_groups"),
                        "a gateway endpoint is guarded by its policy, not by security groups",
                    );
                }
                let Some(gw) = e.gateway else {
                    return err(
                        format!("{f}.gateway"),
                        "a gateway endpoint needs a route target address",
                    );
                };
                let usable = vpc.vswitches.iter().any(|s| {
                    s.cidr.contains(&gw) && gw != s.cidr.network() && gw != s.cidr.broadcast()
                });
                if !usable {
                    return err(
                        format!("{f}.gateway"),
                        format!(
                            "{gw} is not a usable address of a vSwitch of VPC {}",
                            vpc.id
                        ),
                    );
                }
                if !enis.insert((vpc.id.clone(), gw)) {
                    return err(
                        format!("{f}.gateway"),
                        format!("{gw} is already in use in VPC {}", vpc.id),
                    );
                }
                for p in &svc.prefixes {
                    if vpc.cidr.contains(&p.network()) || p.contains(&vpc.cidr.network()) {
                        return err(
                            format!("{f}.service"),
                            format!("the service's prefix {p} overlaps the VPC's {}", vpc.cidr),
                        );
                    }
                }
                if e.policy.len() > privatelink_common::MAX_RULES {
                    return err(
                        format!("{f}.policy"),
                        format!(
                            "{} rules; at most {}",
                            e.policy.len(),
                            privatelink_common::MAX_RULES
                        ),
                    );
                }
                for (j, r) in e.policy.iter().enumerate() {
                    check_ports(&format!("{f}.policy[{j}]"), r.protocol, r.ports)?;
                    check_cidr(&format!("{f}.policy[{j}]"), &r.cidr)?;
                }
            }
        }
        Ok(())
    }

    /// The VPC `vpc` of the object at `f`, which must exist and belong to `account` (which
    /// must exist too).
    fn owned_vpc(&self, f: &str, account: &str, vpc: &str) -> Result<&Vpc, FieldError> {
        if self.account(account).is_none() {
            return err(
                format!("{f}.account"),
                format!("unknown account {account:?}"),
            );
        }
        let Some(v) = self.vpc(vpc) else {
            return err(format!("{f}.vpc"), format!("unknown VPC {vpc:?}"));
        };
        if v.account != account {
            return err(
                format!("{f}.vpc"),
                format!(
                    "VPC {} belongs to account {}, not to {account}",
                    v.id, v.account
                ),
            );
        }
        Ok(v)
    }

    /// The data path's maps have fixed sizes: refuse a state that would not fit, before
    /// anything is committed.
    fn check_capacity(&self) -> Result<(), FieldError> {
        use privatelink_common::{
            MAX_ENDPOINTS, MAX_IFACES, MAX_NEIGHBORS, MAX_SERVICES, MAX_VPCS,
        };
        let addrs: usize = self
            .endpoints
            .iter()
            .map(|e| e.zones.len() + e.gateway.is_some() as usize)
            .sum();
        let routes: usize = self
            .endpoints
            .iter()
            .map(|e| match e.gateway {
                Some(_) => self.service(&e.service).map_or(0, |s| s.prefixes.len()),
                None => e.routes.len(),
            })
            .sum();
        let hops: usize = self.services.iter().map(|s| s.backends.len()).sum();
        let appliances: usize = self
            .services
            .iter()
            .filter(|s| s.kind == ServiceType::Gwlb)
            .map(|s| s.backends.len())
            .sum();
        // (service, zone) pairs: one appliance set per zone a GWLB endpoint is in.
        let gwlb_zones: BTreeSet<(&str, &str)> = self
            .endpoints
            .iter()
            .filter(|e| !e.routes.is_empty())
            .flat_map(|e| {
                let vpc = self.vpc(&e.vpc);
                e.zones.iter().filter_map(move |z| {
                    let vsw = vpc?.vswitches.iter().find(|v| v.id == z.vswitch)?;
                    Some((e.service.as_str(), vsw.zone.as_str()))
                })
            })
            .collect();
        // PL_HOST: every GWLB service's address and appliances.
        let host: usize = self
            .services
            .iter()
            .filter(|s| s.kind == ServiceType::Gwlb)
            .map(|s| s.backends.len() + 1)
            .sum();
        // PL_LB_SETS: a (service, zone) pair per zone an ENI is in that spreads its flows
        // over several load balancers.
        let lb_sets: BTreeSet<(&str, &str)> = self
            .endpoints
            .iter()
            .filter_map(|e| Some((e, self.service(&e.service)?, self.vpc(&e.vpc)?)))
            .filter(|(_, svc, _)| svc.kind == ServiceType::Interface && !svc.backends.is_empty())
            .flat_map(|(e, svc, vpc)| {
                e.zones.iter().filter_map(move |z| {
                    let vsw = vpc.vswitches.iter().find(|v| v.id == z.vswitch)?;
                    (svc.backends_for_zone(&vsw.zone).len() > 1)
                        .then_some((svc.id.as_str(), vsw.zone.as_str()))
                })
            })
            .collect();
        for (field, n, max) in [
            ("vpcs", self.vpcs.len(), MAX_VPCS.min(MAX_IFACES) as usize),
            ("services", self.services.len(), MAX_SERVICES as usize),
            ("endpoints", addrs, MAX_ENDPOINTS as usize),
            ("endpoints", routes, MAX_ENDPOINTS as usize),
            ("services", hops, MAX_NEIGHBORS as usize),
            ("services", appliances, MAX_SERVICES as usize),
            ("endpoints", gwlb_zones.len(), MAX_SERVICES as usize),
            ("services", host, MAX_SERVICES as usize),
            ("services", lb_sets.len(), MAX_SERVICES as usize),
        ] {
            if n > max {
                return err(
                    field,
                    format!("{n} would exceed the data path's capacity of {max}"),
                );
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.backends.len() > 64 {
                return err(
                    format!("services[{i}].backends"),
                    "at most 64 load balancers or appliances",
                );
            }
        }
        Ok(())
    }

    fn validate_endpoint_groups(&self, f: &str, e: &Endpoint) -> Result<(), FieldError> {
        let mut ingress = 0;
        for (j, sg) in e.security_groups.iter().enumerate() {
            let Some(group) = self.security_groups.iter().find(|g| g.id == *sg) else {
                return err(
                    format!("{f}.security_groups[{j}]"),
                    format!("no security group {sg:?}"),
                );
            };
            if group.account != e.account {
                // Another account's group: do not tell its VPC or owner.
                return err(
                    format!("{f}.security_groups[{j}]"),
                    format!("no security group {sg:?}"),
                );
            }
            if group.vpc != e.vpc {
                return err(
                    format!("{f}.security_groups[{j}]"),
                    format!(
                        "security group {sg} is in VPC {}, not in the endpoint's {}",
                        group.vpc, e.vpc
                    ),
                );
            }
            ingress += group
                .rules
                .iter()
                .filter(|r| r.direction == Direction::Ingress)
                .count();
        }
        if ingress > privatelink_common::MAX_RULES {
            return err(
                format!("{f}.security_groups"),
                format!(
                    "{ingress} ingress rules in all; at most {}",
                    privatelink_common::MAX_RULES
                ),
            );
        }
        Ok(())
    }

    fn validate_filters(&self, ids: &mut BTreeMap<u32, String>) -> Result<(), FieldError> {
        for (i, g) in self.security_groups.iter().enumerate() {
            let f = format!("security_groups[{i}]");
            check_id(format!("{f}.id"), &g.id, ids)?;
            self.owned_vpc(&f, &g.account, &g.vpc)?;
            let mut rule_ids = BTreeSet::new();
            for (j, r) in g.rules.iter().enumerate() {
                let h = format!("{f}.rules[{j}]");
                if !(1..=100).contains(&r.priority) {
                    return err(
                        format!("{h}.priority"),
                        format!("{} is outside 1-100", r.priority),
                    );
                }
                check_ports(&h, r.protocol, r.ports)?;
                check_cidr(&h, &r.cidr)?;
                if !r.id.is_empty() && !rule_ids.insert(r.id.clone()) {
                    return err(format!("{h}.id"), format!("duplicate rule id {}", r.id));
                }
            }
        }
        let mut bound = BTreeSet::new();
        for (i, a) in self.acls.iter().enumerate() {
            let f = format!("acls[{i}]");
            check_id(format!("{f}.id"), &a.id, ids)?;
            let vpc = self.owned_vpc(&f, &a.account, &a.vpc)?;
            for (j, v) in a.vswitches.iter().enumerate() {
                if !vpc.vswitches.iter().any(|s| s.id == *v) {
                    return err(
                        format!("{f}.vswitches[{j}]"),
                        format!("VPC {} has no vSwitch {v:?}", vpc.id),
                    );
                }
                if !bound.insert(v.clone()) {
                    return err(
                        format!("{f}.vswitches[{j}]"),
                        format!("vSwitch {v} already has an ACL"),
                    );
                }
            }
            for (dir, rules) in [("ingress", &a.ingress), ("egress", &a.egress)] {
                if rules.len() > privatelink_common::MAX_RULES {
                    return err(
                        format!("{f}.{dir}"),
                        format!(
                            "{} rules; at most {}",
                            rules.len(),
                            privatelink_common::MAX_RULES
                        ),
                    );
                }
                for (j, r) in rules.iter().enumerate() {
                    let h = format!("{f}.{dir}[{j}]");
                    check_ports(&h, r.protocol, r.ports)?;
                    check_cidr(&h, &r.cidr)?;
                }
            }
        }
        Ok(())
    }
}

/// A GWLB endpoint: one ENI (checked with the other ENIs), the routes sent to it, and
/// none of the gateway endpoints' or interface endpoints' filters.
fn validate_gwlb_endpoint(f: &str, e: &Endpoint) -> Result<(), FieldError> {
    let [z] = e.zones.as_slice() else {
        return err(
            format!("{f}.zones"),
            format!(
                "a GWLB endpoint has exactly one ENI (in one zone); {} given",
                e.zones.len()
            ),
        );
    };
    if e.gateway.is_some() {
        return err(
            format!("{f}.gateway"),
            "a GWLB endpoint has no gateway address: the VPC routes to its ENI",
        );
    }
    if !e.policy.is_empty() {
        return err(
            format!("{f}.policy"),
            "a GWLB endpoint has no policy: its appliances decide what passes",
        );
    }
    if !e.security_groups.is_empty() {
        return err(
            format!("{f}.security_groups"),
            "a GWLB endpoint is not guarded by security groups: its appliances decide what passes",
        );
    }
    if e.routes.is_empty() || e.routes.len() > MAX_GWLB_ROUTES {
        return err(
            format!("{f}.routes"),
            format!(
                "a GWLB endpoint needs between 1 and {MAX_GWLB_ROUTES} routes; {} given",
                e.routes.len()
            ),
        );
    }
    for (j, p) in e.routes.iter().enumerate() {
        let g = format!("{f}.routes[{j}]");
        if *p != p.trunc() {
            return err(
                g,
                format!("{p} has host bits set (did you mean {}?)", p.trunc()),
            );
        }
        if p.contains(&z.eni) {
            return err(
                g,
                format!(
                    "{p} contains the endpoint's own ENI {}; traffic to it would loop",
                    z.eni
                ),
            );
        }
    }
    Ok(())
}

/// The most appliances a GWLB service has, and the most routes a GWLB endpoint has.
pub const MAX_APPLIANCES: usize = privatelink_common::MAX_APPLIANCES;
pub const MAX_GWLB_ROUTES: usize = 64;

/// A GWLB service: its own address and its appliances (`backends`) in the service VPC,
/// appliances in zones of that VPC, no SNAT pool, no prefixes, sane health checks.
fn validate_gwlb_service(
    f: &str,
    s: &EndpointService,
    g: &GwlbSettings,
    vpc: &Vpc,
    taken: &BTreeMap<(String, Ipv4Addr), Vec<(&str, &'static str)>>,
) -> Result<(), FieldError> {
    let usable = |a: &Ipv4Addr| {
        vpc.cidr.contains(a) && *a != vpc.cidr.network() && *a != vpc.cidr.broadcast()
    };
    // Another service using `a` in this VPC.
    let other = |a: Ipv4Addr| {
        taken
            .get(&(vpc.id.clone(), a))
            .and_then(|owners| owners.iter().find(|(o, _)| *o != s.id))
    };
    if !usable(&g.address) {
        return err(
            format!("{f}.gwlb.address"),
            format!(
                "{} is not a usable address of the service VPC's {}",
                g.address, vpc.cidr
            ),
        );
    }
    if let Some((o, what)) = other(g.address) {
        return err(
            format!("{f}.gwlb.address"),
            format!("{} is {what} of service {o} in VPC {}", g.address, vpc.id),
        );
    }
    if s.backends.is_empty() || s.backends.len() > MAX_APPLIANCES {
        return err(
            format!("{f}.backends"),
            format!(
                "a GWLB service needs between 1 and {MAX_APPLIANCES} appliances; it has {}",
                s.backends.len()
            ),
        );
    }
    for (j, b) in s.backends.iter().enumerate() {
        let h = format!("{f}.backends[{j}]");
        if !usable(&b.address) {
            return err(
                format!("{h}.address"),
                format!(
                    "appliance {} is not a usable address of the service VPC's {}",
                    b.address, vpc.cidr
                ),
            );
        }
        if b.address == g.address {
            return err(
                format!("{h}.address"),
                format!("{} is the GWLB's own address, not an appliance", b.address),
            );
        }
        if s.backends[..j].iter().any(|o| o.address == b.address) {
            return err(
                format!("{h}.address"),
                format!("appliance {} is listed twice", b.address),
            );
        }
        if let Some((o, what)) = other(b.address) {
            return err(
                format!("{h}.address"),
                format!("{} is {what} of service {o} in VPC {}", b.address, vpc.id),
            );
        }
        if !vpc.vswitches.iter().any(|v| v.zone == b.zone) {
            return err(
                format!("{h}.zone"),
                format!("VPC {} has no vSwitch in zone {:?}", vpc.id, b.zone),
            );
        }
    }
    if !s.snat.is_empty() {
        return err(
            format!("{f}.snat"),
            "a GWLB service has no SNAT addresses: packets keep their addresses inside GENEVE",
        );
    }
    if !s.prefixes.is_empty() {
        return err(
            format!("{f}.prefixes"),
            "a GWLB service has no prefixes: each endpoint lists the routes sent to it",
        );
    }
    if !s.listeners.is_empty() {
        return err(
            format!("{f}.listeners"),
            "a GWLB service has no listeners: its appliances see every packet",
        );
    }
    g.health
        .check()
        .or_else(|(field, message)| err(format!("{f}.gwlb.health.{field}"), message))
}

fn check_ports(field: &str, proto: Protocol, ports: Option<[u16; 2]>) -> Result<(), FieldError> {
    if let Some([lo, hi]) = ports {
        if lo > hi {
            return err(
                format!("{field}.ports"),
                format!("[{lo}, {hi}] is upside down"),
            );
        }
        if !matches!(proto, Protocol::Tcp | Protocol::Udp) {
            return err(format!("{field}.ports"), "ports apply to tcp and udp only");
        }
    }
    Ok(())
}

fn check_cidr(field: &str, c: &Ipv4Net) -> Result<(), FieldError> {
    if *c != c.trunc() {
        return err(
            format!("{field}.cidr"),
            format!("{c} has host bits set (did you mean {}?)", c.trunc()),
        );
    }
    Ok(())
}

impl EndpointService {
    /// Interface and gateway services publish at least one listener. Required of every
    /// service created or changed, and of declarative state files; a service stored by an
    /// earlier build (which forwarded every port) loads with none and publishes nothing
    /// until its provider adds them (logged at start, see `legacy_without_listeners`).
    pub fn require_listeners(&self, field: &str) -> Result<(), FieldError> {
        if self.kind != ServiceType::Gwlb && self.listeners.is_empty() {
            return err(
                field,
                format!(
                    "service {} must publish its load balancer's listeners (e.g. tcp:80); \
                     an endpoint carries only traffic that matches one",
                    self.id
                ),
            );
        }
        Ok(())
    }

    pub fn is_whitelisted(&self, account: &str) -> bool {
        self.whitelist.iter().any(|w| w == account)
    }

    /// Zone affinity: the first load balancer in the ENI's zone, else the first one.
    pub fn backend_for_zone(&self, zone: &str) -> &Backend {
        self.backends_for_zone(zone)[0]
    }

    /// The load balancers new flows from an ENI in `zone` are spread over: with zone
    /// affinity, those of its zone if it has any; else all of them, in every zone.
    pub fn backends_for_zone(&self, zone: &str) -> Vec<&Backend> {
        let own: Vec<&Backend> = self.backends.iter().filter(|b| b.zone == zone).collect();
        if self.zone_affinity && !own.is_empty() {
            own
        } else {
            self.backends.iter().collect()
        }
    }

    /// Whether `account` may have a working endpoint to this service: the service's own
    /// account (seed 002: a service of the same account is offered without whitelisting),
    /// or a whitelisted one. The API's endpoint creation and every entry of the data path
    /// (`ENI_FLAG_WHITELISTED`) use this one rule.
    pub fn admits(&self, account: &str) -> bool {
        self.account == account || self.is_whitelisted(account)
    }

    /// The zones the service serves, sorted, without repeats: its load balancers' zones
    /// (interface services) or its appliances' zones (GWLB services). Gateway services have
    /// no zones (their endpoints have no ENIs).
    pub fn zones(&self) -> Vec<&str> {
        if self.kind == ServiceType::Gateway {
            return Vec::new();
        }
        let set: BTreeSet<&str> = self.backends.iter().map(|b| b.zone.as_str()).collect();
        set.into_iter().collect()
    }

    /// Whether an endpoint ENI may be created in `zone` (checked when ENIs are created or
    /// added, not on stored state: see `State::grandfathered`).
    pub fn serves_zone(&self, zone: &str) -> bool {
        self.backends.iter().any(|b| b.zone == zone)
    }
}

impl VSwitch {
    /// The addresses the cloud keeps for itself in every vSwitch CIDR: the first one and
    /// the last three (for 192.168.1.0/24: .0, .253, .254 and .255). They are never
    /// allocated to an ENI and refused when one is asked for.
    pub fn is_reserved(&self, a: Ipv4Addr) -> bool {
        let (a, first, last) = (
            u32::from(a),
            u32::from(self.cidr.network()),
            u32::from(self.cidr.broadcast()),
        );
        a == first || a >= last.saturating_sub(2)
    }

    /// The lowest address of the vSwitch that is neither reserved nor in `used`.
    pub fn lowest_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (first, last) = (
            u32::from(self.cidr.network()),
            u32::from(self.cidr.broadcast()),
        );
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !self.is_reserved(*a) && !used.contains(a))
    }
}

impl State {
    /// Every address already in use in VPC `vpc`: endpoint ENIs, gateway endpoints' route
    /// targets, and the SNAT, load balancer, GWLB and appliance addresses of the services
    /// that live there (the same addresses `validate` keeps apart).
    pub fn used_addresses(&self, vpc: &str) -> BTreeSet<Ipv4Addr> {
        let mut used = BTreeSet::new();
        for s in self.services.iter().filter(|s| s.vpc == vpc) {
            used.extend(s.backends.iter().map(|b| b.address));
            used.extend(s.snat.iter().copied());
            used.extend(s.gwlb.as_ref().map(|g| g.address));
        }
        for e in self.endpoints.iter().filter(|e| e.vpc == vpc) {
            used.extend(e.zones.iter().map(|z| z.eni));
            used.extend(e.gateway);
        }
        used
    }

    /// Stored endpoints that an earlier build accepted but that the rules for new ENIs
    /// (served zones, reserved addresses) would refuse today. They are kept and keep
    /// working as before; the daemon logs these lines when it loads the state.
    pub fn grandfathered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let (Some(vpc), Some(svc)) = (self.vpc(&e.vpc), self.service(&e.service)) else {
                continue;
            };
            for (j, z) in e.zones.iter().enumerate() {
                let Some(vsw) = vpc.vswitches.iter().find(|s| s.id == z.vswitch) else {
                    continue;
                };
                let f = format!("endpoints[{i}].zones[{j}]");
                if vsw.is_reserved(z.eni) {
                    out.push(format!(
                        "{f}.eni: endpoint {}'s ENI {} is a system-reserved address of vSwitch {} ({}); kept, but no new ENI may take it",
                        e.id, z.eni, vsw.id, vsw.cidr
                    ));
                }
                if !svc.serves_zone(&vsw.zone) {
                    let goes_to = match svc.kind {
                        ServiceType::Gwlb => "the other zones' appliances",
                        _ => "all of the service's load balancers (the first 8)",
                    };
                    out.push(format!(
                        "{f}.vswitch: endpoint {}'s ENI {} is in zone {}, which service {} does not serve; kept, its flows go to {goes_to}",
                        e.id, z.eni, vsw.zone, svc.id
                    ));
                }
            }
        }
        out
    }
}

/// Parses a state as the store keeps it: every rule of `State::validate`, but not those
/// only new and hand-written objects must meet (an earlier build's service may have no
/// listeners).
pub fn parse_stored_state(text: &str) -> Result<State, String> {
    let state: State = toml::from_str(text).map_err(|e| e.to_string())?;
    state.validate().map_err(|e| e.to_string())?;
    Ok(state)
}

/// Parses a TOML state file; syntax and type errors name the line and the key.
pub fn parse_state(text: &str) -> Result<State, String> {
    let state = parse_stored_state(text)?;
    // A state file is written by hand: one without listeners was written for a build
    // that forwarded every port, and no rule can tell which ports were meant.
    for (i, svc) in state.services.iter().enumerate() {
        svc.require_listeners(&format!("services[{i}].listeners"))
            .map_err(|e| e.to_string())?;
    }
    Ok(state)
}

/// Appended to the lab's state in tests: a GWLB service in a security VPC with appliances in
/// two zones, and two GWLB endpoints of account A in a third VPC, one per zone.
#[cfg(test)]
pub(crate) const GWLB_TEST_STATE: &str = r#"
[[vpcs]]
id = "vpc-s"
account = "acct-b"
cidr = "10.20.0.0/16"
interface = "fs0"
vswitches = [
  { id = "vsw-s1", zone = "zone-a", cidr = "10.20.1.0/24" },
  { id = "vsw-s2", zone = "zone-b", cidr = "10.20.2.0/24" },
]

[[vpcs]]
id = "vpc-c"
account = "acct-a"
cidr = "10.30.0.0/16"
interface = "fc1"
vswitches = [
  { id = "vsw-c1", zone = "zone-a", cidr = "10.30.1.0/24" },
  { id = "vsw-c2", zone = "zone-b", cidr = "10.30.2.0/24" },
]

[[services]]
id = "gwlb-s"
account = "acct-b"
type = "gwlb"
vpc = "vpc-s"
whitelist = ["acct-a"]
backends = [
  { zone = "zone-a", address = "10.20.1.11" },
  { zone = "zone-a", address = "10.20.1.10" },
  { zone = "zone-b", address = "10.20.2.10" },
]

[services.gwlb]
address = "10.20.0.5"
stickiness = "five_tuple"
cross_zone = false
failover = "no_rebalance"
health = { port = 8080, interval_ms = 1000, timeout_ms = 500 }

[[endpoints]]
id = "ep-g1"
account = "acct-a"
vpc = "vpc-c"
service = "gwlb-s"
connection = "connected"
zones = [{ vswitch = "vsw-c1", eni = "10.30.1.5" }]
routes = ["10.30.9.0/24", "192.168.0.0/16"]

[[endpoints]]
id = "ep-g2"
account = "acct-a"
vpc = "vpc-c"
service = "gwlb-s"
connection = "connected"
zones = [{ vswitch = "vsw-c2", eni = "10.30.2.5" }]
routes = ["10.30.8.0/24"]
"#;

impl State {
    /// Interface and gateway services that have no listeners: stored by a build that
    /// forwarded every port. They publish nothing until their providers add listeners.
    pub fn legacy_without_listeners(&self) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| s.kind != ServiceType::Gwlb && s.listeners.is_empty())
            .map(|s| s.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const LAB: &str = include_str!("../../tests/lab.toml");

    #[test]
    fn lab_state_is_valid() {
        let s = parse_state(LAB).unwrap();
        assert_eq!(s.endpoints.len(), 1);
    }

    fn broken(f: impl FnOnce(&mut State)) -> String {
        let mut s: State = toml::from_str(LAB).unwrap();
        f(&mut s);
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = broken(|s| s.endpoints[0].zones[0].eni = "10.10.9.9".parse().unwrap());
        assert!(
            e.starts_with("endpoints[0].zones[0].eni: 10.10.9.9 is not a usable address"),
            "{e}"
        );
        let e = broken(|s| s.endpoints[0].service = "nope".into());
        assert!(
            e.starts_with("endpoints[0].service: unknown endpoint service"),
            "{e}"
        );
        let e = broken(|s| s.services[0].snat_ports = [2000, 1000]);
        assert!(e.starts_with("services[0].snat_ports:"), "{e}");
        let e = broken(|s| s.services[0].snat = vec!["192.168.0.1".parse().unwrap()]);
        assert!(e.starts_with("services[0].snat[0]:"), "{e}");
        let e =
            broken(|s| s.endpoints[0].security_groups = (0..6).map(|i| format!("sg{i}")).collect());
        assert!(e.starts_with("endpoints[0].security_groups:"), "{e}");
        let e = broken(|s| {
            s.endpoints[0].tags = (0..21).map(|i| (format!("k{i}"), "v".into())).collect()
        });
        assert!(e.starts_with("endpoints[0].tags:"), "{e}");
        let e = broken(|s| s.vpcs[1].interface = s.vpcs[0].interface.clone());
        assert!(e.starts_with("vpcs[1].interface:"), "{e}");
        let e = broken(|s| {
            let dup = s.endpoints[0].clone();
            s.endpoints.push(dup)
        });
        assert!(e.starts_with("endpoints[1].id: duplicate id"), "{e}");
    }

    #[test]
    fn addresses_and_capacity_are_checked() {
        // A load balancer address may not be another service's SNAT address.
        let e = broken(|s| {
            let mut other = s.services[0].clone();
            other.id = "epsrv-c".into();
            other.snat = vec!["10.10.0.202".parse().unwrap()];
            other.backends[0].address = "10.10.0.200".parse().unwrap();
            s.services.push(other);
        });
        assert!(e.contains("is a load balancer address"), "{e}");
        // More services than the data path can hold.
        let e = broken(|s| {
            let svc = s.services[0].clone();
            s.services = (0..=privatelink_common::MAX_SERVICES)
                .map(|i| EndpointService {
                    id: format!("s{i}"),
                    ..svc.clone()
                })
                .collect();
        });
        assert!(e.starts_with("services: 4097 would exceed"), "{e}");
    }

    #[test]
    fn gateway_endpoints_are_checked() {
        let gw_service = |s: &mut State| {
            let mut g = s.services[0].clone();
            g.id = "epsrv-oss".into();
            g.kind = ServiceType::Gateway;
            g.snat = vec!["10.10.0.202".parse().unwrap()];
            g.prefixes = vec!["100.64.10.0/24".parse().unwrap()];
            s.services.push(g);
            let mut e = s.endpoints[0].clone();
            e.id = "ep-oss".into();
            e.service = "epsrv-oss".into();
            e.zones.clear();
            e.gateway = Some("10.10.1.1".parse().unwrap());
            s.endpoints.push(e);
        };
        let mut ok: State = toml::from_str(LAB).unwrap();
        gw_service(&mut ok);
        ok.validate().unwrap();
        let e = broken(|s| {
            gw_service(s);
            let mut twice = s.endpoints[1].clone();
            twice.id = "ep-oss2".into();
            twice.gateway = Some("10.10.1.2".parse().unwrap());
            s.endpoints.push(twice);
        });
        assert!(
            e.contains("is already routed to gateway endpoint ep-oss"),
            "{e}"
        );
        let e = broken(|s| {
            gw_service(s);
            s.endpoints[1].security_groups = vec!["sg".into()];
        });
        assert!(
            e.starts_with("endpoints[1].security_groups: a gateway endpoint"),
            "{e}"
        );
        let e = broken(|s| {
            gw_service(s);
            s.endpoints[1].gateway = Some("10.10.0.200".parse().unwrap());
        });
        assert!(e.starts_with("endpoints[1].gateway"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_key() {
        let e = parse_state(&LAB.replace("cidr = \"10.10.0.0/16\"", "cidr = \"10.10.0.0/33\""))
            .unwrap_err();
        assert!(e.contains("cidr"), "{e}");
        let e = parse_state(&format!("{LAB}\n[[endpoints]]\nid = 3\n")).unwrap_err();
        assert!(e.contains("id"), "{e}");
    }

    #[test]
    fn reserved_addresses_are_the_first_and_the_last_three() {
        let vsw = |cidr: &str| VSwitch {
            id: "v".into(),
            zone: "z".into(),
            cidr: cidr.parse().unwrap(),
        };
        let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        let v = vsw("192.168.1.0/24");
        let reserved: Vec<Ipv4Addr> = (0..=255u8)
            .map(|i| Ipv4Addr::new(192, 168, 1, i))
            .filter(|a| v.is_reserved(*a))
            .collect();
        assert_eq!(
            reserved,
            [
                "192.168.1.0",
                "192.168.1.253",
                "192.168.1.254",
                "192.168.1.255"
            ]
            .map(ip)
        );
        assert_eq!(v.lowest_free(&BTreeSet::new()), Some(ip("192.168.1.1")));
        let used = [ip("192.168.1.1"), ip("192.168.1.3")].into();
        assert_eq!(v.lowest_free(&used), Some(ip("192.168.1.2")));
        // A /29: 8 addresses, 4 reserved, 4 to allocate.
        let small = vsw("10.10.3.0/29");
        let mut used = BTreeSet::new();
        while let Some(a) = small.lowest_free(&used) {
            used.insert(a);
        }
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["10.10.3.1", "10.10.3.2", "10.10.3.3", "10.10.3.4"].map(ip)
        );
        // Too small to hold anything.
        assert_eq!(vsw("10.10.4.0/30").lowest_free(&BTreeSet::new()), None);
    }

    #[test]
    fn grandfathered_endpoints_are_named() {
        let mut s: State = toml::from_str(LAB).unwrap();
        assert!(s.grandfathered().is_empty());
        s.endpoints[0].zones[0].eni = "10.10.1.254".parse().unwrap();
        s.vpcs[0].vswitches[0].zone = "zone-b".into();
        s.validate().unwrap();
        let g = s.grandfathered();
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(
            g[0].starts_with("endpoints[0].zones[0].eni: endpoint ep-a's ENI 10.10.1.254 is a system-reserved address"),
            "{g:?}"
        );
        assert!(
            g[1].starts_with("endpoints[0].zones[0].vswitch: endpoint ep-a's ENI 10.10.1.254 is in zone zone-b, which service epsrv-b does not serve"),
            "{g:?}"
        );
    }

    #[test]
    fn zone_affinity_prefers_same_zone() {
        let mut s: State = toml::from_str(LAB).unwrap();
        let svc = &mut s.services[0];
        svc.backends.push(Backend {
            zone: "zone-b".into(),
            address: "10.10.0.11".parse().unwrap(),
        });
        assert_eq!(
            svc.backend_for_zone("zone-b").address.to_string(),
            "10.10.0.11"
        );
        assert_eq!(
            svc.backend_for_zone("zone-x").address.to_string(),
            "10.10.0.10"
        );
        svc.zone_affinity = false;
        assert_eq!(
            svc.backend_for_zone("zone-b").address.to_string(),
            "10.10.0.10"
        );
        let addrs = |v: Vec<&Backend>| v.iter().map(|b| b.address.to_string()).collect::<Vec<_>>();
        // Without affinity every zone's load balancers share the flows.
        assert_eq!(
            addrs(svc.backends_for_zone("zone-b")),
            ["10.10.0.10", "10.10.0.11"]
        );
        // Several in one zone: all of them, the zone's own only.
        svc.zone_affinity = true;
        svc.backends.push(Backend {
            zone: "zone-a".into(),
            address: "10.10.0.12".parse().unwrap(),
        });
        assert_eq!(
            addrs(svc.backends_for_zone("zone-a")),
            ["10.10.0.10", "10.10.0.12"]
        );
        assert_eq!(addrs(svc.backends_for_zone("zone-b")), ["10.10.0.11"]);
        s.validate().unwrap();
        // The same address twice, or nine in a zone: refused.
        let mut twice = s.clone();
        twice.services[0].backends[2].address = "10.10.0.10".parse().unwrap();
        assert!(
            twice
                .validate()
                .unwrap_err()
                .message
                .contains("listed twice")
        );
        let mut nine = s.clone();
        for i in 0..7 {
            nine.services[0].backends.push(Backend {
                zone: "zone-a".into(),
                address: format!("10.10.0.{}", 20 + i).parse().unwrap(),
            });
        }
        assert!(nine.validate().unwrap_err().message.contains("more than 8"));
    }

    fn gwlb_state() -> State {
        toml::from_str(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap()
    }

    fn gwlb_broken(f: impl FnOnce(&mut State)) -> String {
        let mut s = gwlb_state();
        f(&mut s);
        s.validate().unwrap_err().to_string()
    }

    fn svc(s: &mut State) -> &mut EndpointService {
        s.services.iter_mut().find(|x| x.id == "gwlb-s").unwrap()
    }

    fn gwlb(s: &mut State) -> &mut GwlbSettings {
        svc(s).gwlb.as_mut().unwrap()
    }

    fn ep(s: &mut State, id: &str) -> usize {
        s.endpoints.iter().position(|e| e.id == id).unwrap()
    }

    #[test]
    fn gwlb_state_is_valid_and_round_trips() {
        let s = gwlb_state();
        s.validate().unwrap();
        let g = s.service("gwlb-s").unwrap().gwlb.clone().unwrap();
        assert_eq!(g.health.port, 8080);
        assert_eq!(g.health.healthy_threshold, 3, "defaults fill the rest");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        // Minimal settings: only the address.
        let mut m = s.clone();
        gwlb(&mut m).stickiness = Stickiness::default();
        let text = toml::to_string(&m).unwrap();
        assert_eq!(toml::from_str::<State>(&text).unwrap(), m);
        let min: GwlbSettings = toml::from_str("address = \"10.20.0.5\"").unwrap();
        assert_eq!(
            (
                min.stickiness,
                min.cross_zone,
                min.failover,
                min.health.port
            ),
            (Stickiness::FiveTuple, false, Failover::NoRebalance, 80)
        );
    }

    #[test]
    fn gwlb_services_are_checked() {
        let i = 1; // services[1] is gwlb-s
        let e = gwlb_broken(|s| svc(s).gwlb = None);
        assert!(
            e.starts_with(&format!("services[{i}].gwlb: a GWLB service needs")),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            s.services[0].gwlb = Some(GwlbSettings {
                address: "10.10.0.5".parse().unwrap(),
                stickiness: Stickiness::FiveTuple,
                cross_zone: false,
                failover: Failover::NoRebalance,
                health: HealthSettings::default(),
            })
        });
        assert!(e.starts_with("services[0].gwlb: only GWLB services"), "{e}");
        let e = gwlb_broken(|s| svc(s).backends.clear());
        assert!(
            e.starts_with(&format!(
                "services[{i}].backends: a GWLB service needs between 1 and 16"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            svc(s).backends = (0..17)
                .map(|n| Backend {
                    zone: "zone-a".into(),
                    address: Ipv4Addr::new(10, 20, 1, 100 + n),
                })
                .collect()
        });
        assert!(e.starts_with(&format!("services[{i}].backends:")), "{e}");
        let e = gwlb_broken(|s| svc(s).backends[1].address = "10.20.1.11".parse().unwrap());
        assert!(
            e.starts_with(&format!(
                "services[{i}].backends[1].address: appliance 10.20.1.11 is listed twice"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| svc(s).backends[0].address = "10.21.0.1".parse().unwrap());
        assert!(
            e.starts_with(&format!(
                "services[{i}].backends[0].address: appliance 10.21.0.1 is not a usable address"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| svc(s).backends[0].zone = "zone-x".into());
        assert!(
            e.starts_with(&format!(
                "services[{i}].backends[0].zone: VPC vpc-s has no vSwitch in zone \"zone-x\""
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| svc(s).backends[2].address = "10.20.0.5".parse().unwrap());
        assert!(
            e.starts_with(&format!(
                "services[{i}].backends[2].address: 10.20.0.5 is the GWLB's own address"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| gwlb(s).address = "10.21.0.5".parse().unwrap());
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.address:")),
            "{e}"
        );
        let e = gwlb_broken(|s| svc(s).snat = vec!["10.20.0.200".parse().unwrap()]);
        assert!(
            e.starts_with(&format!("services[{i}].snat: a GWLB service has no SNAT")),
            "{e}"
        );
        let e = gwlb_broken(|s| svc(s).prefixes = vec!["100.64.0.0/24".parse().unwrap()]);
        assert!(
            e.starts_with(&format!(
                "services[{i}].prefixes: a GWLB service has no prefixes"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| gwlb(s).health.interval_ms = 10);
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.health.interval_ms:")),
            "{e}"
        );
        let e = gwlb_broken(|s| gwlb(s).health.timeout_ms = 5);
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.health.timeout_ms:")),
            "{e}"
        );
        let e = gwlb_broken(|s| gwlb(s).health.healthy_threshold = 0);
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.health.healthy_threshold:")),
            "{e}"
        );
        let e = gwlb_broken(|s| gwlb(s).health.unhealthy_threshold = 11);
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.health.unhealthy_threshold:")),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            gwlb(s).health.probe = crate::health::Probe::Http {
                path: "no-slash".into(),
            }
        });
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.health.probe.path:")),
            "{e}"
        );
        let e = gwlb_broken(|s| gwlb(s).health.port = 0);
        assert!(
            e.starts_with(&format!("services[{i}].gwlb.health.port:")),
            "{e}"
        );
    }

    #[test]
    fn gwlb_addresses_do_not_collide() {
        // A second GWLB service in the same VPC may not reuse an appliance or the address.
        let second = |s: &mut State| {
            let mut o = svc(s).clone();
            o.id = "gwlb-t".into();
            o.backends = vec![Backend {
                zone: "zone-b".into(),
                address: "10.20.2.20".parse().unwrap(),
            }];
            o.gwlb.as_mut().unwrap().address = "10.20.0.6".parse().unwrap();
            s.services.push(o);
        };
        let mut ok = gwlb_state();
        second(&mut ok);
        ok.validate().unwrap();
        let e = gwlb_broken(|s| {
            second(s);
            s.services[2].backends[0].address = "10.20.1.10".parse().unwrap();
        });
        assert!(
            e.contains("10.20.1.10 is a GWLB appliance of service gwlb-t"),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            second(s);
            s.services[2].gwlb.as_mut().unwrap().address = "10.20.0.5".parse().unwrap();
        });
        assert!(
            e.contains("10.20.0.5 is a GWLB address of service gwlb-t"),
            "{e}"
        );
        // An interface service's SNAT address in that VPC may not be one either.
        // An interface service in the appliance VPC with this load balancer and SNAT.
        let interface_in_vpc_s = |s: &mut State, lb: &str, snat: &str| {
            let mut o = s.services[0].clone();
            o.id = "epsrv-s".into();
            o.vpc = "vpc-s".into();
            o.backends = vec![Backend {
                zone: "zone-a".into(),
                address: lb.parse().unwrap(),
            }];
            o.snat = vec![snat.parse().unwrap()];
            s.services.push(o);
        };
        let e = gwlb_broken(|s| interface_in_vpc_s(s, "10.20.1.50", "10.20.0.5"));
        assert!(
            e.contains("snat[0]: 10.20.0.5 is a GWLB address in VPC vpc-s"),
            "{e}"
        );
        // Nor its load balancer an appliance (reported at the GWLB service, which comes
        // first).
        let e = gwlb_broken(|s| interface_in_vpc_s(s, "10.20.1.10", "10.20.0.200"));
        assert!(
            e.contains(
                "backends[1].address: 10.20.1.10 is a load balancer address of service epsrv-s"
            ),
            "{e}"
        );
        // An ENI in the service VPC may not take an appliance's address.
        let e = gwlb_broken(|s| {
            let mut o = s.endpoints[0].clone();
            o.id = "ep-s".into();
            o.account = "acct-b".into();
            o.vpc = "vpc-s".into();
            o.zones = vec![EndpointZone {
                vswitch: "vsw-s1".into(),
                eni: "10.20.1.10".parse().unwrap(),
            }];
            s.endpoints.push(o);
        });
        assert!(
            e.contains("10.20.1.10 is already in use in VPC vpc-s"),
            "{e}"
        );
    }

    #[test]
    fn gwlb_endpoints_are_checked() {
        let mut s = gwlb_state();
        let g1 = ep(&mut s, "ep-g1");
        let f = format!("endpoints[{g1}]");
        let e = gwlb_broken(|s| s.endpoints[g1].zones.clear());
        assert!(
            e.starts_with(&format!("{f}.zones: a GWLB endpoint has exactly one ENI")),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            s.endpoints[g1].zones.push(EndpointZone {
                vswitch: "vsw-c2".into(),
                eni: "10.30.2.6".parse().unwrap(),
            })
        });
        assert!(e.starts_with(&format!("{f}.zones:")), "{e}");
        let e = gwlb_broken(|s| s.endpoints[g1].routes.clear());
        assert!(
            e.starts_with(&format!(
                "{f}.routes: a GWLB endpoint needs between 1 and 64 routes"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            s.endpoints[g1].routes = (0..65)
                .map(|n| format!("172.16.{n}.0/24").parse().unwrap())
                .collect()
        });
        assert!(e.starts_with(&format!("{f}.routes:")), "{e}");
        let e = gwlb_broken(|s| s.endpoints[g1].routes[1] = "10.30.0.0/16".parse().unwrap());
        assert!(
            e.starts_with(&format!(
                "{f}.routes[1]: 10.30.0.0/16 contains the endpoint's own ENI 10.30.1.5"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| s.endpoints[g1].routes[0] = "10.30.9.1/24".parse().unwrap());
        assert!(
            e.starts_with(&format!("{f}.routes[0]: 10.30.9.1/24 has host bits set")),
            "{e}"
        );
        let e = gwlb_broken(|s| s.endpoints[g1].security_groups = vec!["sg".into()]);
        assert_eq!(
            e,
            format!(
                "{f}.security_groups: a GWLB endpoint is not guarded by security groups: its appliances decide what passes"
            )
        );
        let e = gwlb_broken(|s| s.endpoints[g1].gateway = Some("10.30.1.1".parse().unwrap()));
        assert!(
            e.starts_with(&format!("{f}.gateway: a GWLB endpoint has no gateway")),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            s.endpoints[g1].policy = vec![AclRule {
                action: RuleAction::Accept,
                protocol: Protocol::All,
                ports: None,
                cidr: "0.0.0.0/0".parse().unwrap(),
            }]
        });
        assert!(
            e.starts_with(&format!("{f}.policy: a GWLB endpoint has no policy")),
            "{e}"
        );
        // The ENI is checked like any other: in a vSwitch, not taken.
        let e = gwlb_broken(|s| s.endpoints[g1].zones[0].eni = "10.30.2.5".parse().unwrap());
        assert!(
            e.starts_with(&format!(
                "{f}.zones[0].eni: 10.30.2.5 is not a usable address"
            )),
            "{e}"
        );
        let e = gwlb_broken(|s| {
            let g2 = s.endpoints.iter().position(|e| e.id == "ep-g2").unwrap();
            s.endpoints[g2].zones[0] = s.endpoints[g1].zones[0].clone();
        });
        assert!(
            e.contains("10.30.1.5 is already in use in VPC vpc-c"),
            "{e}"
        );
        // Routes only for GWLB endpoints.
        let e = gwlb_broken(|s| s.endpoints[0].routes = vec!["172.16.0.0/24".parse().unwrap()]);
        assert!(
            e.starts_with("endpoints[0].routes: only endpoints of GWLB services have routes"),
            "{e}"
        );
    }

    #[test]
    fn routes_are_unique_per_vpc_across_gateway_and_gwlb_endpoints() {
        let mut s = gwlb_state();
        let g2 = ep(&mut s, "ep-g2");
        let e = gwlb_broken(|s| s.endpoints[g2].routes.push("10.30.9.0/24".parse().unwrap()));
        assert_eq!(
            e,
            format!(
                "endpoints[{g2}].routes[1]: 10.30.9.0/24 is already routed to GWLB endpoint ep-g1 in VPC vpc-c"
            )
        );
        // The same prefix in another VPC is another route.
        let mut ok = gwlb_state();
        let mut other = ok.endpoints[g2].clone();
        other.id = "ep-g3".into();
        other.vpc = "vpc-a".into();
        other.zones = vec![EndpointZone {
            vswitch: "vsw-a2".into(),
            eni: "10.10.2.5".parse().unwrap(),
        }];
        other.routes = vec!["10.30.9.0/24".parse().unwrap()];
        ok.endpoints.push(other);
        ok.validate().unwrap();
        // A gateway endpoint's prefix taken by a GWLB route.
        let e = gwlb_broken(|s| {
            let mut g = s.services[0].clone();
            g.id = "epsrv-oss".into();
            g.kind = ServiceType::Gateway;
            g.snat = vec!["10.10.0.202".parse().unwrap()];
            g.prefixes = vec!["192.168.0.0/16".parse().unwrap()];
            s.services.push(g);
            let mut e = s.endpoints[0].clone();
            e.id = "ep-oss".into();
            e.vpc = "vpc-c".into();
            e.service = "epsrv-oss".into();
            e.zones.clear();
            e.gateway = Some("10.30.1.1".parse().unwrap());
            s.endpoints.push(e);
        });
        assert!(
            e.contains("192.168.0.0/16 is already routed to GWLB endpoint ep-g1 in VPC vpc-c"),
            "{e}"
        );
    }

    #[test]
    fn gwlb_routes_count_against_the_route_map() {
        let e = gwlb_broken(|s| {
            let mut g = s
                .endpoints
                .iter()
                .find(|e| e.id == "ep-g1")
                .unwrap()
                .clone();
            g.routes = vec!["172.16.0.0/24".parse().unwrap(); 64];
            let n = privatelink_common::MAX_ENDPOINTS as usize / 64 + 1;
            s.endpoints.extend((0..n).map(|i| Endpoint {
                id: format!("g{i}"),
                ..g.clone()
            }));
        });
        assert!(e.starts_with("endpoints: 65"), "{e}");
        assert!(
            e.contains("would exceed the data path's capacity of 65536"),
            "{e}"
        );
    }
}
