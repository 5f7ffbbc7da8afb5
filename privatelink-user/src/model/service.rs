//! Endpoint services: interface (a load balancer), gateway (a prefix list) and GWLB (a
//! Gateway Load Balancer in front of appliances), with their listeners and settings.

use std::{
    collections::BTreeSet,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Connection, HealthSettings};

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

/// The IP versions a service (or an endpoint) carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpVersion {
    /// IPv4 only: everything stored before dual stack.
    #[default]
    Ipv4,
    /// IPv4 and IPv6.
    Dualstack,
}

impl IpVersion {
    pub fn is_ipv4(&self) -> bool {
        *self == IpVersion::Ipv4
    }

    pub fn is_dualstack(&self) -> bool {
        *self == IpVersion::Dualstack
    }
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
    #[serde(default = "super::yes")]
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
    /// ipv4 (every service stored before dual stack), or dualstack: interface services
    /// then have each load balancer's `address6` and an IPv6 SNAT pool (`snat6`), gateway
    /// services may have IPv6 prefixes, GWLB services' endpoints may route IPv6 prefixes.
    #[serde(default, skip_serializing_if = "IpVersion::is_ipv4")]
    pub ip_version: IpVersion,
    /// Dualstack interface services: the IPv6 source addresses in the provider VPC that
    /// consumers' IPv6 flows are translated to (ports `snat_ports`, as for IPv4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat6: Vec<Ipv6Addr>,
    #[serde(default = "default_snat_ports")]
    pub snat_ports: [u16; 2],
    /// The custom service domain name: consumers whose endpoints enable it
    /// (`Endpoint::service_domain`) resolve it inside their own VPC to their endpoint's
    /// ENIs.
    #[serde(default)]
    pub domain: Option<String>,
    /// The operator has verified that the provider owns `domain` (cleared when `domain`
    /// changes): endpoints may enable it only then.
    #[serde(default, skip_serializing_if = "is_false")]
    pub domain_verified: bool,
    /// Interface services: how each zone's load balancer is health-checked from the VPC's
    /// `probe_address`. None: TCP connects to the first TCP listener's port, with the
    /// default interval, timeout and thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
    /// Gateway services: the prefixes consumers route to their gateway endpoint (IPv6
    /// ones only when the service is dualstack).
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
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
    /// Where the provider is notified of the service's connection events (see
    /// `crate::notify`); none in states stored before notifications existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The default per-endpoint share of a service's SNAT tuples (percent).
pub const DEFAULT_ENDPOINT_FLOW_SHARE: u8 = 20;

fn default_endpoint_flow_share() -> u8 {
    DEFAULT_ENDPOINT_FLOW_SHARE
}

/// The SNAT ports of a service that does not name them.
pub const DEFAULT_SNAT_PORTS: [u16; 2] = [1024, 65535];

fn default_snat_ports() -> [u16; 2] {
    DEFAULT_SNAT_PORTS
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub zone: String,
    pub address: Ipv4Addr,
    /// Dualstack interface services: the load balancer's IPv6 address in the provider
    /// VPC, where the zone's IPv6 flows go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
}

/// The most appliances a GWLB service has, and the most routes a GWLB endpoint has.
pub const MAX_APPLIANCES: usize = privatelink_common::MAX_APPLIANCES;

impl EndpointService {
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

    /// How the service's load balancers are health-checked (interface services): its
    /// `health` settings, or without them a TCP connect to its first TCP listener's port
    /// with the default interval, timeout and thresholds. None: nothing to check (GWLB
    /// and gateway services, and interface services with only UDP listeners and no
    /// `health`).
    pub fn lb_health(&self) -> Option<HealthSettings> {
        if self.kind != ServiceType::Interface {
            return None;
        }
        if let Some(h) = &self.health {
            return Some(h.clone());
        }
        let port = self
            .listeners
            .iter()
            .find(|l| l.protocol == ListenerProtocol::Tcp)?
            .port;
        Some(HealthSettings {
            port,
            ..HealthSettings::default()
        })
    }

    /// Whether an endpoint ENI may be created in `zone` (checked when ENIs are created or
    /// added, not on stored state: see `State::grandfathered`).
    pub fn serves_zone(&self, zone: &str) -> bool {
        self.backends.iter().any(|b| b.zone == zone)
    }
}

/// A connection event of an endpoint service, as its provider is notified of it (the
/// cloud's "connection notifications").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionEvent {
    /// A consumer requested a connection: it created an endpoint to the service.
    Connect,
    /// The connection was accepted: by the provider, by the service's auto-accept, or
    /// enabled again after a disconnect.
    Accept,
    /// The provider rejected the connection.
    Reject,
    /// The provider disconnected (disabled) the connection.
    Disconnect,
    /// The consumer deleted its endpoint.
    Delete,
}

impl ConnectionEvent {
    pub const ALL: [ConnectionEvent; 5] = [
        Self::Connect,
        Self::Accept,
        Self::Reject,
        Self::Disconnect,
        Self::Delete,
    ];

    /// The event that reports an existing endpoint entering `state`.
    pub fn entering(state: Connection) -> Self {
        match state {
            Connection::Pending => Self::Connect,
            Connection::Connected => Self::Accept,
            Connection::Rejected => Self::Reject,
            Connection::Disconnected => Self::Disconnect,
        }
    }
}

/// A subscription of a service's provider to its connection events: an HTTP POST of a
/// JSON body to `url` for each event of `events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Unique among the service's notifications (given by the API).
    pub id: String,
    /// `http://HOST[:PORT][/PATH]` (see `HttpUrl`).
    pub url: String,
    /// The events sent; all of them if left out.
    #[serde(default = "all_events")]
    pub events: Vec<ConnectionEvent>,
}

fn all_events() -> Vec<ConnectionEvent> {
    ConnectionEvent::ALL.to_vec()
}

impl Notification {
    pub fn wants(&self, e: ConnectionEvent) -> bool {
        self.events.contains(&e)
    }
}

/// The most notifications a service has.
pub const MAX_NOTIFICATIONS: usize = 8;

/// The longest notification URL.
pub const MAX_URL_LEN: usize = 2048;

/// A notification URL taken apart: plain HTTP (the daemon has no TLS client), a host (a
/// name or an address) and a port (80 if not given), and the request target (`/` if no
/// path is given). No user name or password: the URL is shown to whoever lists the
/// service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub target: String,
}

impl HttpUrl {
    /// `host:port`, as a connection's destination and the `Host` header.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for HttpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} characters"));
        }
        let uri: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{s:?} is not an http:// URL (notifications are sent over plain HTTP)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{s:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{s:?} has a user name or password: the URL is shown to whoever lists the service"
            ));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = match authority.port() {
            Some(p) if p.as_u16() == 0 => return Err(format!("{s:?}: port 0 is not a port")),
            Some(p) => p.as_u16(),
            None => 80,
        };
        let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Self {
            host: host.to_string(),
            port,
            target: if target.is_empty() {
                "/".into()
            } else {
                target
            },
        })
    }
}
