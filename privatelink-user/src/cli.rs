//! The console's steps as commands: each builds one API request and prints the answer as a
//! table (or JSON with --json).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    client::Client,
    model::{
        AclRule, Backend, ConnectionEvent, Direction, Failover, GwlbSettings, HealthSettings,
        IpVersion, Listener, Probe, Protocol, RuleAction, ServiceType, SgRule, Stickiness,
    },
    ops::{
        ConnectionAction, EndpointPatch, NewAccount, NewAcl, NewEndpoint, NewNotification,
        NewSecurityGroup, NewService, NewVSwitch, NewVpc, NewZone, ServicePatch, VpcPatch,
    },
};

/// One of the API's enums by the name the API gives it (`ingress`, `five_tuple`, ...).
fn api_enum<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|e| e.to_string())
}

#[derive(Args, Clone)]
pub struct Conn {
    /// The daemon's API.
    #[arg(
        long,
        global = true,
        env = "PRIVATELINK_API",
        default_value = "http://127.0.0.1:7070"
    )]
    pub api: String,
    /// An account's token, or the admin token.
    #[arg(long, global = true, env = "PRIVATELINK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ApiCmd {
    /// Accounts (operator).
    #[command(subcommand)]
    Account(AccountCmd),
    /// VPCs and their vSwitches (operator).
    #[command(subcommand)]
    Vpc(VpcCmd),
    /// Endpoint services (provider).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Endpoints (consumer).
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Connections of a service's endpoints (provider).
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Security groups of an account's VPC (attach them with `endpoint create --sg`).
    #[command(subcommand)]
    Sg(SgCmd),
    /// Network ACLs of an account's vSwitches.
    #[command(subcommand)]
    Acl(AclCmd),
    /// What the caller sees: its services and their zones' health, its endpoints with
    /// their connection state, live flows and traffic, and the top drop reasons.
    Status {
        /// Redraw it every --interval seconds, as `privatelink top`.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        every: Refresh,
    },
    /// `status`, redrawn every --interval seconds with each ENI's packets and bytes per
    /// second, until Ctrl-C.
    Top {
        #[command(flatten)]
        every: Refresh,
    },
    /// The hosts of a fleet sharing one etcd store, as their leases keep them registered
    /// (operator; none for a daemon on its own store).
    Fleet,
}

// How `top` and `status --watch` refresh (a plain comment: a doc comment here would
// become the help text of `status`).
#[derive(Args, Clone, Copy)]
pub struct Refresh {
    /// Seconds between refreshes (with `status`: implies --watch).
    #[arg(long, value_parser = interval)]
    interval: Option<std::time::Duration>,
    /// Stop after this many refreshes (with `status`: implies --watch).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

impl Refresh {
    /// The default interval between refreshes.
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

    fn given(&self) -> bool {
        self.interval.is_some() || self.count.is_some()
    }

    fn interval(&self) -> std::time::Duration {
        self.interval.unwrap_or(Self::INTERVAL)
    }
}

/// `--interval`: seconds, at least 0.1 (a fraction is allowed).
fn interval(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?}: expected seconds (2, 0.5)"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err(format!("{s}: between 0.1 and 86400 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Subcommand)]
pub enum SgCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    List,
    Delete {
        id: String,
    },
    #[command(subcommand)]
    Rule(SgRuleCmd),
}

#[derive(Subcommand)]
pub enum SgRuleCmd {
    /// Add a rule; prints it with its id.
    Add {
        sg: String,
        #[arg(long, default_value = "ingress", value_parser = api_enum::<Direction>)]
        direction: Direction,
        /// 1 (highest) to 100.
        #[arg(long)]
        priority: u32,
        /// accept or drop.
        #[arg(long, value_parser = api_enum::<RuleAction>)]
        action: RuleAction,
        /// all, tcp, udp or icmp.
        #[arg(long, default_value = "all", value_parser = api_enum::<Protocol>)]
        protocol: Protocol,
        /// Port range LOW-HIGH (tcp, udp).
        #[arg(long)]
        ports: Option<String>,
        /// Remote address range, IPv4 or IPv6.
        #[arg(long)]
        cidr: IpNet,
    },
    Remove {
        sg: String,
        rule: String,
    },
}

#[derive(Subcommand)]
pub enum AclCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        /// A vSwitch the ACL guards (repeatable).
        #[arg(long = "vswitch", required = true)]
        vswitches: Vec<String>,
        /// An inbound rule "ACTION PROTOCOL CIDR [LOW-HIGH]", in order (repeatable).
        #[arg(long = "ingress")]
        ingress: Vec<String>,
        /// An outbound rule, same form (repeatable).
        #[arg(long = "egress")]
        egress: Vec<String>,
    },
    List,
    Delete {
        id: String,
    },
}

/// "80-90" → [80, 90]; the server checks the order.
fn port_range(s: &str) -> Result<[u16; 2]> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    Ok([
        lo.parse::<u16>().context("port")?,
        hi.parse::<u16>().context("port")?,
    ])
}

fn acl_rule(r: &str) -> Result<AclRule> {
    let p: Vec<&str> = r.split([' ', ',']).filter(|x| !x.is_empty()).collect();
    let (action, protocol, cidr, ports) = match p.as_slice() {
        [action, proto, cidr] => (action, proto, cidr, None),
        [action, proto, cidr, ports] => (action, proto, cidr, Some(port_range(ports)?)),
        _ => {
            return Err(anyhow!(
                "ACL rule {r:?}: expected \"ACTION PROTOCOL CIDR [LOW-HIGH]\""
            ));
        }
    };
    let field = |e: String| anyhow!("ACL rule {r:?}: {e}");
    Ok(AclRule {
        action: api_enum(action).map_err(field)?,
        protocol: api_enum(protocol).map_err(field)?,
        ports,
        cidr: cidr
            .parse()
            .map_err(|e: ipnet::AddrParseError| field(e.to_string()))?,
    })
}

/// ACL rules (or a gateway endpoint's policy) as `acl_rule` reads each, in order.
fn acl_rules(list: &[String]) -> Result<Vec<AclRule>> {
    list.iter().map(|r| acl_rule(r)).collect()
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Create an account; prints its token once.
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum VpcCmd {
    Create {
        id: String,
        #[arg(long)]
        account: String,
        #[arg(long)]
        cidr: Ipv4Net,
        /// The VPC's IPv6 range (dual stack), at most a /64 (e.g. fd00:a::/56).
        #[arg(long)]
        ipv6_cidr: Option<Ipv6Net>,
        /// The forwarder's interface attached to the VPC.
        #[arg(long)]
        interface: String,
        /// A vSwitch as ID:ZONE:CIDR[,IPV6-CIDR] (repeatable; the IPv6 range a /64 of the
        /// VPC's --ipv6-cidr).
        #[arg(long = "vswitch")]
        vswitches: Vec<String>,
        /// The interface also carries the host's own traffic: what is not the data
        /// path's passes to the host (off: tenants cannot reach the forwarder host).
        #[arg(long)]
        host_traffic: bool,
        /// The VPC's DNS resolver address: its clients ask it for endpoint, zone and
        /// custom service domain names (inside the VPC's CIDR or not).
        #[arg(long)]
        resolver: Option<Ipv4Addr>,
        /// The address inside the VPC's CIDR the health checks of its load balancers
        /// leave from (none: they are not checked).
        #[arg(long)]
        probe_address: Option<Ipv4Addr>,
    },
    List,
    Show {
        id: String,
    },
    /// Set or remove a VPC's resolver and probe addresses (the operator: they become
    /// the forwarder host's own addresses, unique to all VPCs but for shared resolvers).
    Set {
        id: String,
        #[arg(long, conflicts_with = "no_resolver")]
        resolver: Option<Ipv4Addr>,
        /// Remove the resolver address.
        #[arg(long)]
        no_resolver: bool,
        #[arg(long, conflicts_with = "no_probe_address")]
        probe_address: Option<Ipv4Addr>,
        /// Remove the probe address.
        #[arg(long)]
        no_probe_address: bool,
    },
}

/// A clearable setting from a `--x VALUE` / `--no-x` pair: unchanged, removed or set.
fn clearable<T>(value: Option<T>, clear: bool) -> Option<Option<T>> {
    match (value, clear) {
        (Some(v), _) => Some(Some(v)),
        (None, true) => Some(None),
        (None, false) => None,
    }
}

/// `on` or `off`.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

#[derive(Subcommand)]
pub enum ServiceCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        /// The load balancer of a zone as ZONE:ADDRESS (repeatable; not for --type gwlb).
        #[arg(long = "backend", required_unless_present_any = ["appliances", "gwlb_address"])]
        backends: Vec<String>,
        /// A SNAT address in the service's VPC (repeatable; not for --type gwlb).
        #[arg(long = "snat", required_unless_present_any = ["appliances", "gwlb_address"])]
        snat: Vec<Ipv4Addr>,
        /// ipv4 (default) or dualstack: then each --backend gives ZONE:ADDRESS,ADDRESS6
        /// and --snat6 the IPv6 SNAT addresses.
        #[arg(long, value_parser = api_enum::<IpVersion>)]
        ip_version: Option<IpVersion>,
        /// An IPv6 SNAT address in the service VPC's IPv6 range (repeatable; dualstack).
        #[arg(long = "snat6")]
        snat6: Vec<Ipv6Addr>,
        /// SNAT port range LOW-HIGH.
        #[arg(long)]
        snat_ports: Option<String>,
        /// A listener of the load balancer as PROTO:PORT or PROTO:LOW-HIGH (tcp or udp;
        /// repeatable; required but for --type gwlb): the only traffic endpoints carry.
        #[arg(long = "listener", value_parser = parse_listener)]
        listeners: Vec<Listener>,
        /// The most one endpoint may hold of the SNAT tuples in flows that have not
        /// completed their handshake, in percent (default 20).
        #[arg(long)]
        endpoint_flow_share: Option<u8>,
        #[arg(long)]
        auto_accept: bool,
        #[arg(long)]
        no_zone_affinity: bool,
        #[arg(long)]
        domain: Option<String>,
        /// interface (a load balancer), gateway (a prefix list reached by route) or gwlb
        /// (a Gateway Load Balancer in front of inspection appliances).
        #[arg(long = "type", default_value = "interface", value_parser = api_enum::<ServiceType>)]
        kind: ServiceType,
        /// Gateway services: a prefix of the list, IPv4 or (dualstack) IPv6 (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<IpNet>,
        #[command(flatten)]
        gwlb: Box<GwlbArgs>,
    },
    List,
    Show {
        id: String,
    },
    /// The appliances of a GWLB service and their health.
    Appliances {
        id: String,
    },
    /// The services your account may create endpoints to (whitelisted, or your own): all,
    /// or the one named.
    Available {
        id: Option<String>,
    },
    /// Change settings of a service.
    Set {
        id: String,
        #[arg(long)]
        auto_accept: Option<bool>,
        #[arg(long)]
        zone_affinity: Option<bool>,
        /// The custom service domain name (a change clears its verification; refused
        /// while endpoints have it enabled).
        #[arg(long, conflicts_with = "no_domain")]
        domain: Option<String>,
        /// Remove the custom service domain name.
        #[arg(long)]
        no_domain: bool,
        /// Health check settings to change (the others stay as they are).
        #[command(flatten)]
        health: HealthArgs,
        /// Interface services: back to the default health checks.
        #[arg(long, conflicts_with_all = ["health_port", "health_path", "health_interval_ms",
            "health_timeout_ms", "healthy_threshold", "unhealthy_threshold"])]
        no_health: bool,
        /// Replace the listeners with these (PROTO:PORT or PROTO:LOW-HIGH, repeatable).
        #[arg(long = "listener", value_parser = parse_listener)]
        listeners: Vec<Listener>,
        /// The per-endpoint share of the SNAT tuples in embryonic flows (percent).
        #[arg(long)]
        endpoint_flow_share: Option<u8>,
        /// Replace the load balancers with these, ZONE:ADDRESS[,ADDRESS6] (repeatable;
        /// several per zone share its new flows). Flows in progress stay on the one they
        /// started with.
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// ipv4 or dualstack (to ipv4: refused while dualstack endpoints use it; the IPv6
        /// addresses go).
        #[arg(long, value_parser = api_enum::<IpVersion>)]
        ip_version: Option<IpVersion>,
        /// Replace the IPv6 SNAT addresses with these (repeatable).
        #[arg(long = "snat6")]
        snat6: Vec<Ipv6Addr>,
    },
    /// Add or remove one listener.
    #[command(subcommand)]
    Listener(ListenerCmd),
    Delete {
        id: String,
    },
    /// The accounts allowed to connect.
    #[command(subcommand)]
    Whitelist(WhitelistCmd),
    /// Where the service's connection events are sent (an HTTP POST of JSON each).
    #[command(subcommand)]
    Notification(NotificationCmd),
    /// Mark the service's custom domain as verified (operator): its consumers may then
    /// enable it on their endpoints.
    DomainVerify {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ListenerCmd {
    /// Publish one more listener (PROTO:PORT or PROTO:LOW-HIGH).
    Add {
        service: String,
        #[arg(value_parser = parse_listener)]
        listener: Listener,
    },
    /// Stop publishing a listener: new flows on it are dropped at once, and so are the
    /// packets of flows established on it.
    Remove {
        service: String,
        #[arg(value_parser = parse_listener)]
        listener: Listener,
    },
}

fn parse_listener(s: &str) -> Result<Listener, String> {
    s.parse()
}

// `service create --type gwlb` settings (a plain comment: a doc comment here would become
// the help text of `service create`).
#[derive(Args)]
pub struct GwlbArgs {
    /// GWLB: an appliance as ZONE=ADDRESS (repeatable, instead of --backend).
    #[arg(long = "appliance", required_if_eq("kind", "gwlb"))]
    appliances: Vec<String>,
    /// GWLB: the load balancer's own address in the service VPC (GENEVE's source, the
    /// health checks' source; configure it on the forwarder's interface of that VPC).
    #[arg(long, required_if_eq("kind", "gwlb"))]
    gwlb_address: Option<Ipv4Addr>,
    /// GWLB: five_tuple (default), three_tuple or two_tuple.
    #[arg(long, value_parser = api_enum::<Stickiness>)]
    stickiness: Option<Stickiness>,
    /// GWLB: spread every zone's flows over the appliances of all zones.
    #[arg(long)]
    cross_zone: bool,
    /// GWLB: no_rebalance (default) or rebalance (flows of an unhealthy appliance move).
    #[arg(long, value_parser = api_enum::<Failover>)]
    failover: Option<Failover>,
    #[command(flatten)]
    health: HealthArgs,
}

// Health checks of a GWLB service's appliances, or of an interface service's load
// balancers (a plain comment, as for `GwlbArgs`).
#[derive(Args, Clone, Default)]
pub struct HealthArgs {
    /// Health checks: the port probed (default: GWLB 80; interface services the first
    /// TCP listener's port).
    #[arg(long)]
    health_port: Option<u16>,
    /// Health checks: probe with an HTTP GET of this path (default: a TCP connect).
    #[arg(long)]
    health_path: Option<String>,
    /// Health checks: milliseconds between probes (default 5000).
    #[arg(long)]
    health_interval_ms: Option<u64>,
    /// Health checks: milliseconds a probe may take (default 2000).
    #[arg(long)]
    health_timeout_ms: Option<u64>,
    /// Health checks: successes in a row that make a target healthy (default 3).
    #[arg(long)]
    healthy_threshold: Option<u32>,
    /// Health checks: failures in a row that make a target unhealthy (default 3).
    #[arg(long)]
    unhealthy_threshold: Option<u32>,
}

impl HealthArgs {
    /// Whether any health setting was given.
    fn given(&self) -> bool {
        self.health_port.is_some()
            || self.health_path.is_some()
            || self.health_interval_ms.is_some()
            || self.health_timeout_ms.is_some()
            || self.healthy_threshold.is_some()
            || self.unhealthy_threshold.is_some()
    }

    /// `base` with the settings given replaced.
    fn over(&self, base: HealthSettings) -> HealthSettings {
        HealthSettings {
            probe: match &self.health_path {
                Some(p) => Probe::Http { path: p.clone() },
                None => base.probe,
            },
            port: self.health_port.unwrap_or(base.port),
            interval_ms: self.health_interval_ms.unwrap_or(base.interval_ms),
            timeout_ms: self.health_timeout_ms.unwrap_or(base.timeout_ms),
            healthy_threshold: self.healthy_threshold.unwrap_or(base.healthy_threshold),
            unhealthy_threshold: self.unhealthy_threshold.unwrap_or(base.unhealthy_threshold),
        }
    }
}

/// The health checks an interface service has without settings of its own: the defaults,
/// on the first TCP listener's port (what the daemon probes then).
fn interface_health(listeners: &[Listener]) -> HealthSettings {
    let d = HealthSettings::default();
    HealthSettings {
        port: listeners
            .iter()
            .find(|l| l.protocol == crate::model::ListenerProtocol::Tcp)
            .map_or(d.port, |l| l.port),
        ..d
    }
}

impl GwlbArgs {
    /// Whether any setting only GWLB services have was given.
    fn given(&self) -> bool {
        !self.appliances.is_empty()
            || self.gwlb_address.is_some()
            || self.stickiness.is_some()
            || self.cross_zone
            || self.failover.is_some()
    }

    /// The appliances as backends, and the `gwlb` settings (unset values are the server's
    /// defaults).
    fn settings(&self) -> Result<(Vec<Backend>, GwlbSettings)> {
        let appliances = self
            .appliances
            .iter()
            .map(|a| {
                let (zone, address) = a
                    .split_once('=')
                    .ok_or_else(|| anyhow!("appliance {a:?}: expected ZONE=ADDRESS"))?;
                backend(a, zone, address)
            })
            .collect::<Result<Vec<_>>>()?;
        let address = self
            .gwlb_address
            .context("--type gwlb needs --gwlb-address (the load balancer's own address)")?;
        let health = self.health.over(HealthSettings::default());
        let gwlb = GwlbSettings {
            address,
            stickiness: self.stickiness.unwrap_or_default(),
            cross_zone: self.cross_zone,
            failover: self.failover.unwrap_or_default(),
            health,
        };
        Ok((appliances, gwlb))
    }
}

#[derive(Subcommand)]
pub enum NotificationCmd {
    /// Send the service's connection events to URL (http://HOST[:PORT][/PATH]).
    Add {
        service: String,
        url: String,
        /// Only these events (repeatable, or comma-separated): connect, accept, reject,
        /// disconnect, delete. All of them if not given.
        #[arg(long = "event", value_delimiter = ',', value_parser = api_enum::<ConnectionEvent>)]
        events: Vec<ConnectionEvent>,
    },
    List {
        service: String,
    },
    /// Stop sending the events to a notification's URL.
    Remove {
        service: String,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum WhitelistCmd {
    Add { service: String, account: String },
    Remove { service: String, account: String },
    List { service: String },
}

#[derive(Subcommand)]
pub enum EndpointCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        service: String,
        /// An ENI as VSWITCH[:ADDRESS][,ADDRESS6] (repeatable, one per zone in a zone the
        /// service serves); without an address the vSwitch's lowest free one is allocated
        /// (a dualstack endpoint's IPv6 address too).
        #[arg(long = "zone")]
        zones: Vec<String>,
        /// ipv4 (default) or dualstack (the service must be dualstack): each ENI then has
        /// an IPv6 address too.
        #[arg(long, value_parser = api_enum::<IpVersion>)]
        ip_version: Option<IpVersion>,
        /// Gateway endpoints: the route target address in the VPC.
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// Dualstack gateway endpoints: the IPv6 route target in the VPC (default: the
        /// lowest free IPv6 address of the vSwitch holding --gateway).
        #[arg(long)]
        gateway6: Option<Ipv6Addr>,
        /// Gateway endpoints: an allowed destination "ACTION,PROTOCOL,CIDR[,LOW-HIGH]", in
        /// order (repeatable; an IPv6 CIDR for a dualstack endpoint's IPv6 traffic).
        #[arg(long = "policy")]
        policy: Vec<String>,
        /// GWLB endpoints: a destination prefix the VPC routes to the endpoint, IPv4 or
        /// (the service dualstack) IPv6 (repeatable).
        #[arg(long = "route")]
        routes: Vec<IpNet>,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A security group id (repeatable, at most 5).
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        /// A tag as KEY=VALUE (repeatable, at most 20).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Zone affinity of the endpoint's domain name, on or off (default: on if the
        /// service supports it).
        #[arg(long, value_parser = on_off)]
        zone_affinity: Option<bool>,
        /// The service's verified custom domain resolves in the VPC to this endpoint's
        /// ENIs, on or off (default off).
        #[arg(long, value_parser = on_off)]
        service_domain: Option<bool>,
    },
    List,
    Show {
        id: String,
    },
    /// Change an endpoint (`set` is the same command).
    #[command(alias = "set")]
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "zone")]
        zones: Vec<String>,
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// GWLB endpoints: the routes, replacing the old ones (repeatable).
        #[arg(long = "route")]
        routes: Vec<IpNet>,
        /// ipv4 or dualstack: to dualstack every ENI gets an IPv6 address, to ipv4 they
        /// are released.
        #[arg(long, value_parser = api_enum::<IpVersion>)]
        ip_version: Option<IpVersion>,
        /// Zone affinity on or off (on only if the service supports it, or it is on).
        #[arg(long, value_parser = on_off)]
        zone_affinity: Option<bool>,
        /// The service's custom domain in the VPC, on or off.
        #[arg(long, value_parser = on_off)]
        service_domain: Option<bool>,
    },
    Delete {
        id: String,
    },
    /// Add or remove one zone (one ENI) of an endpoint.
    #[command(subcommand)]
    Zone(ZoneCmd),
    /// Turn an endpoint's flow logs on or off (see the README, "Flow logs").
    #[command(subcommand)]
    FlowLog(FlowLogCmd),
}

#[derive(Subcommand)]
pub enum FlowLogCmd {
    /// Turn flow logs on (or change the capture window); prints the endpoint.
    Enable {
        endpoint: String,
        /// The capture window, seconds (1-600; the clouds offer 60 and 600).
        #[arg(long, default_value_t = 600)]
        window: u32,
    },
    /// Turn flow logs off; prints the endpoint.
    Disable { endpoint: String },
}

#[derive(Subcommand)]
pub enum ZoneCmd {
    /// Add an ENI in a zone the service serves; prints the endpoint with its new ENI.
    Add {
        endpoint: String,
        /// VSWITCH[:ADDRESS][,ADDRESS6]; without an address the vSwitch's lowest free
        /// one.
        #[arg(long)]
        zone: String,
    },
    /// Remove the endpoint's ENI in a vSwitch (not its last one).
    Remove { endpoint: String, vswitch: String },
}

#[derive(Subcommand)]
pub enum ConnectionCmd {
    List { service: String },
    Accept { service: String, endpoint: String },
    Reject { service: String, endpoint: String },
    Disable { service: String, endpoint: String },
    Enable { service: String, endpoint: String },
}

fn split2<'a>(what: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    s.split_once(':')
        .ok_or_else(|| anyhow!("{what} {s:?}: expected A:B"))
}

fn tags(list: &[String]) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("tag {t:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn zones(list: &[String]) -> Result<Vec<NewZone>> {
    list.iter().map(|z| zone(z)).collect()
}

/// "vsw-a1:10.10.1.100" → that ENI; "vsw-a1" → an ENI the daemon allocates; either
/// followed by ",fd00:a:0:1::64" → with that IPv6 address (a dualstack endpoint's).
fn zone(z: &str) -> Result<NewZone> {
    let bad = || anyhow!("zone {z:?}: expected VSWITCH, VSWITCH:ADDRESS, then ,ADDRESS6 or not");
    let (v4, eni6) = match z.split_once(',') {
        Some((v4, a6)) => (
            v4,
            Some(a6.parse().map_err(|e| anyhow!("zone {z:?}: {a6:?}: {e}"))?),
        ),
        None => (z, None),
    };
    let (vswitch, eni) = match v4.split_once(':') {
        Some((v, e)) if !v.is_empty() && !e.is_empty() => {
            (v, Some(e.parse().map_err(|e| anyhow!("zone {z:?}: {e}"))?))
        }
        Some(_) => return Err(bad()),
        None if !v4.is_empty() => (v4, None),
        None => return Err(bad()),
    };
    Ok(NewZone {
        vswitch: vswitch.to_string(),
        eni,
        eni6,
    })
}

/// A load balancer or appliance `what` as ZONE and ADDRESS[,ADDRESS6].
fn backend(what: &str, zone: &str, address: &str) -> Result<Backend> {
    let bad = |e: std::net::AddrParseError| anyhow!("backend {what:?}: {e}");
    let (v4, v6) = match address.split_once(',') {
        Some((v4, v6)) => (v4, Some(v6.parse().map_err(bad)?)),
        None => (address, None),
    };
    Ok(Backend {
        zone: zone.to_string(),
        address: v4.parse().map_err(bad)?,
        address6: v6,
    })
}

/// Load balancers as ZONE:ADDRESS[,ADDRESS6].
fn backends(list: &[String]) -> Result<Vec<Backend>> {
    list.iter()
        .map(|b| split2("backend", b).and_then(|(z, a)| backend(b, z, a)))
        .collect()
}

const CONNECTION_COLS: &[&str] = &["endpoint", "account", "state", "enis"];

const VPC_COLS: &[&str] = &[
    "id",
    "account",
    "cidr",
    "ipv6_cidr",
    "interface",
    "resolver",
    "probe_address",
];

pub fn run(conn: &Conn, cmd: ApiCmd) -> Result<()> {
    let c = Client::new(&conn.api, conn.token.clone());
    let (value, columns): (Value, &[&str]) = match cmd {
        ApiCmd::Status { watch, every } if watch || every.given() => {
            return top(&c, conn.json, every.interval(), every.count);
        }
        ApiCmd::Status { .. } => return status(&c, conn.json),
        ApiCmd::Top { every } => return top(&c, conn.json, every.interval(), every.count),
        ApiCmd::Account(AccountCmd::Create { id, name }) => (
            c.post("/v1/accounts", &NewAccount { id, name })?,
            &["id", "name", "token"],
        ),
        ApiCmd::Account(AccountCmd::List) => (c.get("/v1/accounts")?, &["id", "name"]),
        ApiCmd::Fleet => (
            c.get("/v1/fleet")?["hosts"].take(),
            &["host", "api", "since", "snat_slot"],
        ),
        ApiCmd::Vpc(VpcCmd::Create {
            id,
            account,
            cidr,
            ipv6_cidr,
            interface,
            vswitches,
            host_traffic,
            resolver,
            probe_address,
        }) => {
            let vswitches = vswitches
                .iter()
                .map(|v| {
                    let mut p = v.splitn(3, ':');
                    let bad = |e: ipnet::AddrParseError| anyhow!("vswitch {v:?}: {e}");
                    match (p.next(), p.next(), p.next()) {
                        (Some(i), Some(z), Some(c)) => {
                            let (c4, c6) = match c.split_once(',') {
                                Some((c4, c6)) => (c4, Some(c6.parse().map_err(bad)?)),
                                None => (c, None),
                            };
                            Ok(NewVSwitch {
                                id: i.to_string(),
                                zone: z.to_string(),
                                cidr: c4.parse().map_err(bad)?,
                                ipv6_cidr: c6,
                            })
                        }
                        _ => Err(anyhow!("vswitch {v:?}: expected ID:ZONE:CIDR[,IPV6-CIDR]")),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let body = NewVpc {
                id,
                account,
                cidr,
                ipv6_cidr,
                interface,
                vswitches,
                host_traffic,
                resolver,
                probe_address,
            };
            (c.post("/v1/vpcs", &body)?, VPC_COLS)
        }
        ApiCmd::Vpc(VpcCmd::List) => (c.get("/v1/vpcs")?, VPC_COLS),
        ApiCmd::Vpc(VpcCmd::Show { id }) => (c.get(&format!("/v1/vpcs/{id}"))?, VPC_COLS),
        ApiCmd::Vpc(VpcCmd::Set {
            id,
            resolver,
            no_resolver,
            probe_address,
            no_probe_address,
        }) => {
            let body = VpcPatch {
                resolver: clearable(resolver, no_resolver),
                probe_address: clearable(probe_address, no_probe_address),
            };
            (c.patch(&format!("/v1/vpcs/{id}"), &body)?, VPC_COLS)
        }
        ApiCmd::Service(cmd) => service(&c, cmd)?,
        ApiCmd::Sg(cmd) => {
            const COLS: &[&str] = &["id", "account", "vpc", "name", "rules"];
            match cmd {
                SgCmd::Create { id, vpc, name } => (
                    c.post(
                        "/v1/security-groups",
                        &NewSecurityGroup {
                            id,
                            vpc,
                            name,
                            rules: Vec::new(),
                        },
                    )?,
                    COLS,
                ),
                SgCmd::List => (c.get("/v1/security-groups")?, COLS),
                SgCmd::Delete { id } => (c.delete(&format!("/v1/security-groups/{id}"))?, &[]),
                SgCmd::Rule(SgRuleCmd::Add {
                    sg,
                    direction,
                    priority,
                    action,
                    protocol,
                    ports,
                    cidr,
                }) => {
                    let body = SgRule {
                        id: String::new(),
                        direction,
                        priority,
                        action,
                        protocol,
                        ports: ports.as_deref().map(port_range).transpose()?,
                        cidr,
                    };
                    (
                        c.post(&format!("/v1/security-groups/{sg}/rules"), &body)?,
                        &[
                            "id",
                            "direction",
                            "priority",
                            "action",
                            "protocol",
                            "ports",
                            "cidr",
                        ],
                    )
                }
                SgCmd::Rule(SgRuleCmd::Remove { sg, rule }) => (
                    c.delete(&format!("/v1/security-groups/{sg}/rules/{rule}"))?,
                    &[],
                ),
            }
        }
        ApiCmd::Acl(cmd) => {
            const COLS: &[&str] = &["id", "account", "vpc", "vswitches"];
            match cmd {
                AclCmd::Create {
                    id,
                    vpc,
                    vswitches,
                    ingress,
                    egress,
                } => {
                    let body = NewAcl {
                        id,
                        vpc,
                        vswitches,
                        ingress: acl_rules(&ingress)?,
                        egress: acl_rules(&egress)?,
                    };
                    (c.post("/v1/acls", &body)?, COLS)
                }
                AclCmd::List => (c.get("/v1/acls")?, COLS),
                AclCmd::Delete { id } => (c.delete(&format!("/v1/acls/{id}"))?, &[]),
            }
        }
        ApiCmd::Endpoint(cmd) => endpoint(&c, cmd, conn.json)?,
        ApiCmd::Connection(cmd) => {
            let (service, endpoint, action) = match cmd {
                ConnectionCmd::List { service } => {
                    let list = c.get(&format!("/v1/services/{service}/connections"))?;
                    print(&list, CONNECTION_COLS, conn.json);
                    return Ok(());
                }
                ConnectionCmd::Accept { service, endpoint } => {
                    (service, endpoint, ConnectionAction::Accept)
                }
                ConnectionCmd::Reject { service, endpoint } => {
                    (service, endpoint, ConnectionAction::Reject)
                }
                ConnectionCmd::Disable { service, endpoint } => {
                    (service, endpoint, ConnectionAction::Disable)
                }
                ConnectionCmd::Enable { service, endpoint } => {
                    (service, endpoint, ConnectionAction::Enable)
                }
            };
            let action = serde_json::to_value(action)?;
            let action = action.as_str().context("an action's name")?;
            (
                c.call(
                    "POST",
                    &format!("/v1/services/{service}/connections/{endpoint}/{action}"),
                    None,
                )?,
                CONNECTION_COLS,
            )
        }
    };
    print(&value, columns, conn.json);
    Ok(())
}

fn service(c: &Client, cmd: ServiceCmd) -> Result<(Value, &'static [&'static str])> {
    const COLS: &[&str] = &[
        "id",
        "account",
        "vpc",
        "auto_accept",
        "whitelist",
        "backends",
        "snat",
        "listeners",
        "ip_version",
    ];
    // One service: its names too.
    const SHOW: &[&str] = &[
        "id",
        "account",
        "vpc",
        "auto_accept",
        "whitelist",
        "backends",
        "snat",
        "ip_version",
        "snat6",
        "listeners",
        "default_domain",
        "domain",
        "domain_verified",
    ];
    Ok(match cmd {
        ServiceCmd::Create {
            id,
            vpc,
            backends,
            snat,
            ip_version,
            snat6,
            snat_ports,
            listeners,
            endpoint_flow_share,
            auto_accept,
            no_zone_affinity,
            domain,
            kind,
            prefixes,
            gwlb,
        } => {
            let mut backends = self::backends(&backends)?;
            let mut gwlb_settings = None;
            let mut health = None;
            if kind == ServiceType::Gwlb {
                if !backends.is_empty() || !snat.is_empty() {
                    bail!(
                        "--type gwlb takes --appliance ZONE=ADDRESS and --gwlb-address, not --backend or --snat"
                    );
                }
                let (appliances, settings) = gwlb.settings()?;
                backends = appliances;
                gwlb_settings = Some(settings);
            } else if gwlb.given() {
                bail!(
                    "--appliance, --gwlb-address, --stickiness, --cross-zone and --failover are for --type gwlb"
                );
            } else if gwlb.health.given() {
                if kind != ServiceType::Interface {
                    bail!(
                        "the health options are for interface services (their load balancers) and GWLB services"
                    );
                }
                health = Some(gwlb.health.over(interface_health(&listeners)));
            }
            let ports = match snat_ports {
                Some(p) => {
                    let (lo, hi) = p
                        .split_once('-')
                        .context("--snat-ports: expected LOW-HIGH")?;
                    Some([
                        lo.parse::<u16>().context("--snat-ports low")?,
                        hi.parse::<u16>().context("--snat-ports high")?,
                    ])
                }
                None => None,
            };
            let body = NewService {
                id,
                vpc,
                r#type: kind,
                auto_accept,
                zone_affinity: !no_zone_affinity,
                whitelist: Vec::new(),
                backends,
                snat,
                ip_version: ip_version.unwrap_or_default(),
                snat6,
                snat_ports: ports,
                domain,
                health,
                prefixes,
                gwlb: gwlb_settings,
                listeners,
                endpoint_flow_share,
            };
            (c.post("/v1/services", &body)?, COLS)
        }
        ServiceCmd::List => (c.get("/v1/services")?, COLS),
        ServiceCmd::Show { id } => (c.get(&format!("/v1/services/{id}"))?, SHOW),
        ServiceCmd::DomainVerify { id } => (
            c.call("POST", &format!("/v1/services/{id}/domain/verify"), None)?,
            SHOW,
        ),
        ServiceCmd::Appliances { id } => (
            c.get(&format!("/v1/services/{id}/appliances"))?,
            &["address", "zone", "healthy"],
        ),
        ServiceCmd::Available { id } => {
            const AVAILABLE: &[&str] = &[
                "id",
                "type",
                "zones",
                "listeners",
                "domain",
                "auto_accept",
                "zone_affinity",
            ];
            let path = match id {
                Some(id) => format!("/v1/available-services/{id}"),
                None => "/v1/available-services".to_string(),
            };
            (c.get(&path)?, AVAILABLE)
        }
        ServiceCmd::Set {
            id,
            auto_accept,
            zone_affinity,
            domain,
            no_domain,
            health,
            no_health,
            listeners,
            endpoint_flow_share,
            backends,
            ip_version,
            snat6,
        } => {
            let path = format!("/v1/services/{id}");
            let mut body = ServicePatch {
                auto_accept,
                zone_affinity,
                domain: clearable(domain, no_domain),
                health: no_health.then_some(None),
                listeners: (!listeners.is_empty()).then_some(listeners),
                endpoint_flow_share,
                backends: (!backends.is_empty())
                    .then(|| self::backends(&backends))
                    .transpose()?,
                ip_version,
                snat6: (!snat6.is_empty()).then_some(snat6),
                ..ServicePatch::default()
            };
            if health.given() {
                // The settings not given stay as they are: read them first.
                let svc: crate::model::EndpointService =
                    serde_json::from_value(strip_names(c.get(&path)?))
                        .context("the service's settings")?;
                match (svc.kind, svc.gwlb) {
                    (ServiceType::Gwlb, Some(mut g)) => {
                        g.health = health.over(g.health);
                        body.gwlb = Some(g);
                    }
                    (ServiceType::Interface, _) => {
                        let listeners = body.listeners.as_ref().unwrap_or(&svc.listeners);
                        let base = svc.health.unwrap_or_else(|| interface_health(listeners));
                        body.health = Some(Some(health.over(base)));
                    }
                    _ => bail!("service {id} has no health checks (a gateway service)"),
                }
            }
            (c.patch(&path, &body)?, SHOW)
        }
        ServiceCmd::Listener(cmd) => {
            let (id, listener, add) = match cmd {
                ListenerCmd::Add { service, listener } => (service, listener, true),
                ListenerCmd::Remove { service, listener } => (service, listener, false),
            };
            let path = format!("/v1/services/{id}");
            let svc = c.get(&path)?;
            let mut listeners: Vec<Listener> = serde_json::from_value(svc["listeners"].clone())
                .context("the service's listeners")?;
            if add {
                listeners.push(listener);
            } else {
                let before = listeners.len();
                listeners
                    .retain(|l| (l.protocol, l.ports()) != (listener.protocol, listener.ports()));
                if listeners.len() == before {
                    bail!("service {id} has no listener {listener}");
                }
            }
            let body = ServicePatch {
                listeners: Some(listeners),
                ..ServicePatch::default()
            };
            (c.patch(&path, &body)?, COLS)
        }
        ServiceCmd::Delete { id } => (c.delete(&format!("/v1/services/{id}"))?, &[]),
        ServiceCmd::Whitelist(WhitelistCmd::Add { service, account }) => (
            c.call(
                "PUT",
                &format!("/v1/services/{service}/whitelist/{account}"),
                None,
            )?,
            &[],
        ),
        ServiceCmd::Whitelist(WhitelistCmd::Remove { service, account }) => (
            c.delete(&format!("/v1/services/{service}/whitelist/{account}"))?,
            &[],
        ),
        ServiceCmd::Whitelist(WhitelistCmd::List { service }) => {
            (c.get(&format!("/v1/services/{service}/whitelist"))?, &[])
        }
        ServiceCmd::Notification(cmd) => notification(c, cmd)?,
    })
}

/// `service notification add|list|remove`.
fn notification(c: &Client, cmd: NotificationCmd) -> Result<(Value, &'static [&'static str])> {
    const COLS: &[&str] = &["id", "url", "events"];
    Ok(match cmd {
        NotificationCmd::Add {
            service,
            url,
            events,
        } => {
            let body = NewNotification {
                url,
                events: (!events.is_empty()).then_some(events),
            };
            let path = format!("/v1/services/{service}/notifications");
            (c.post(&path, &body)?, COLS)
        }
        NotificationCmd::List { service } => (
            c.get(&format!("/v1/services/{service}/notifications"))?,
            COLS,
        ),
        NotificationCmd::Remove { service, id } => (
            c.delete(&format!("/v1/services/{service}/notifications/{id}"))?,
            &[],
        ),
    })
}

/// A service as the API gives it, without the names it adds (`default_domain`): the
/// stored fields, which `EndpointService` reads.
fn strip_names(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("default_domain");
    }
    v
}

/// What `endpoint flow-log` prints: the endpoint and its flow log's window (empty: off).
const FLOW_LOG_COLS: &[&str] = &["id", "account", "flow_log"];

fn endpoint(c: &Client, cmd: EndpointCmd, json: bool) -> Result<(Value, &'static [&'static str])> {
    const COLS: &[&str] = &[
        "id",
        "account",
        "vpc",
        "service",
        "connection",
        "zones",
        "ip_version",
        "name",
    ];
    Ok(match cmd {
        EndpointCmd::Create {
            id,
            vpc,
            service,
            zones: z,
            ip_version,
            name,
            description,
            security_groups,
            tags: t,
            gateway,
            gateway6,
            policy,
            routes,
            zone_affinity,
            service_domain,
        } => {
            // The policy is read before the zones and tags, so its error comes first.
            let policy = acl_rules(&policy)?;
            let body = NewEndpoint {
                id,
                vpc,
                service,
                name,
                description,
                zones: zones(&z)?,
                ip_version: ip_version.unwrap_or_default(),
                security_groups,
                tags: tags(&t)?,
                gateway,
                gateway6,
                policy,
                routes,
                zone_affinity,
                service_domain: service_domain.unwrap_or(false),
            };
            (c.post("/v1/endpoints", &body)?, COLS)
        }
        EndpointCmd::List => (c.get("/v1/endpoints")?, COLS),
        EndpointCmd::Show { id } => {
            let v = c.get(&format!("/v1/endpoints/{id}"))?;
            match json {
                true => print(&v, &[], true),
                false => print!("{}", endpoint_text(&v)),
            }
            (Value::Null, &[])
        }
        EndpointCmd::Update {
            id,
            name,
            description,
            zones: z,
            security_groups,
            tags: t,
            routes,
            ip_version,
            zone_affinity,
            service_domain,
        } => {
            let body = EndpointPatch {
                name,
                description,
                zones: (!z.is_empty()).then(|| zones(&z)).transpose()?,
                security_groups: (!security_groups.is_empty()).then_some(security_groups),
                tags: (!t.is_empty()).then(|| tags(&t)).transpose()?,
                routes: (!routes.is_empty()).then_some(routes),
                ip_version,
                zone_affinity,
                service_domain,
            };
            (c.patch(&format!("/v1/endpoints/{id}"), &body)?, COLS)
        }
        EndpointCmd::Delete { id } => (c.delete(&format!("/v1/endpoints/{id}"))?, &[]),
        EndpointCmd::Zone(ZoneCmd::Add { endpoint, zone: z }) => (
            c.post(&format!("/v1/endpoints/{endpoint}/zones"), &zone(&z)?)?,
            COLS,
        ),
        EndpointCmd::Zone(ZoneCmd::Remove { endpoint, vswitch }) => (
            c.delete(&format!("/v1/endpoints/{endpoint}/zones/{vswitch}"))?,
            COLS,
        ),
        EndpointCmd::FlowLog(FlowLogCmd::Enable { endpoint, window }) => (
            c.put(
                &format!("/v1/endpoints/{endpoint}/flow-log"),
                &crate::model::FlowLog {
                    window_seconds: window,
                },
            )?,
            FLOW_LOG_COLS,
        ),
        EndpointCmd::FlowLog(FlowLogCmd::Disable { endpoint }) => (
            c.delete(&format!("/v1/endpoints/{endpoint}/flow-log"))?,
            FLOW_LOG_COLS,
        ),
    })
}

fn cell(v: &Value) -> String {
    if let Ok(l) = serde_json::from_value::<Listener>(v.clone()) {
        return l.to_string();
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        // A zone as `--zone` takes it (the object's keys would sort the address first),
        // and a load balancer as `--backend` does.
        Value::Object(o) if o.contains_key("vswitch") && o.contains_key("eni") => {
            format!(
                "{}:{}{}",
                cell(&o["vswitch"]),
                cell(&o["eni"]),
                v6_suffix(o.get("eni6"))
            )
        }
        Value::Object(o) if o.contains_key("zone") && o.contains_key("address") => {
            format!(
                "{}:{}{}",
                cell(&o["zone"]),
                cell(&o["address"]),
                v6_suffix(o.get("address6"))
            )
        }
        Value::Object(o) => o.values().map(cell).collect::<Vec<_>>().join(":"),
        other => other.to_string(),
    }
}

/// Column `c` of object `v`: its cell; an IP version left out (as everything stored
/// before dual stack) is ipv4.
fn column(v: &Value, c: &str) -> String {
    match (c, &v[c]) {
        ("ip_version", Value::Null) if v.is_object() => "ipv4".to_string(),
        (_, x) => cell(x),
    }
}

/// ",ADDRESS6" after an IPv4 address when a dualstack ENI or load balancer has one.
fn v6_suffix(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(a)) => format!(",{a}"),
        _ => String::new(),
    }
}

/// A table without borders, its header upper-cased, the columns `right` aligned to the
/// right (numbers).
fn table(header: &[&str], right: &[usize], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(|c| c.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    for &i in right {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    // Without the padding of the last column.
    t.to_string()
        .lines()
        .flat_map(|l| [l.trim_end(), "\n"])
        .collect()
}

/// A count: exact below a million, then with a unit (`12.3M`).
fn count(n: u64) -> String {
    if n < 1_000_000 {
        n.to_string()
    } else {
        scaled(n as f64, "")
    }
}

/// `x` with k, M, G or T and one decimal from a thousand on, `unit` after it
/// (`12.3kB`); below, whole, or with one decimal if a fraction (rates).
fn scaled(x: f64, unit: &str) -> String {
    let mut x = x;
    let mut prefix = "";
    for p in ["k", "M", "G", "T"] {
        if x < 1000.0 {
            break;
        }
        x /= 1000.0;
        prefix = p;
    }
    if prefix.is_empty() && x.fract() == 0.0 {
        format!("{x:.0}{unit}")
    } else {
        format!("{x:.1}{prefix}{unit}")
    }
}

/// Packets and bytes per second of each endpoint ENI (endpoint, zone) — to the service
/// and to the consumer — from two overviews taken `secs` apart. A counter that went back
/// (the daemon restarted, an ENI was given new counters) counts as 0.
#[derive(Debug, Default, PartialEq)]
struct Rates(BTreeMap<(String, String), [f64; 4]>);

/// The counters of an ENI a rate is computed from, in `Rates`' order.
const RATE_FIELDS: [&str; 4] = [
    "to_service_packets",
    "to_service_bytes",
    "to_consumer_packets",
    "to_consumer_bytes",
];

impl Rates {
    fn between(before: &Value, after: &Value, secs: f64) -> Rates {
        let before = eni_counters(before);
        let rates = eni_counters(after)
            .into_iter()
            .filter_map(|(key, now)| {
                let was = before.get(&key)?;
                let r: [f64; 4] =
                    std::array::from_fn(|i| now[i].saturating_sub(was[i]) as f64 / secs);
                Some((key, r))
            })
            .collect();
        Rates(rates)
    }
}

/// Each endpoint ENI's `RATE_FIELDS` in an overview, by (endpoint, zone).
fn eni_counters(v: &Value) -> BTreeMap<(String, String), [u64; 4]> {
    let mut out = BTreeMap::new();
    for e in v["endpoints"].as_array().into_iter().flatten() {
        for z in e["zones"].as_array().into_iter().flatten() {
            let key = (cell(&e["id"]), cell(&z["zone"]));
            out.insert(key, RATE_FIELDS.map(|f| z[f].as_u64().unwrap_or_default()));
        }
    }
    out
}

/// How the ENDPOINTS section shows traffic: the totals (`status`), or per second
/// (`top`; none yet on its first screen).
#[derive(Clone, Copy)]
enum Shown<'a> {
    Totals,
    PerSecond(Option<&'a Rates>),
}

/// The overview (`GET /v1/overview`) as `privatelink status` prints it: SERVICES,
/// ENDPOINTS, ENIS (each endpoint ENI's traffic), ZONES/HEALTH (a line per health-checked
/// target) and TOP DROPS, each a table of aligned columns, the widest columns last (a
/// terminal narrower than a line cuts them).
fn overview_text(v: &Value, shown: Shown) -> String {
    let mut out = String::new();
    out.push_str("SERVICES\n");
    out.push_str(&services_text(v));
    out.push_str("\nENDPOINTS\n");
    out.push_str(&endpoints_text(v));
    out.push_str("\nENIS\n");
    out.push_str(&enis_text(v, shown));
    out.push_str("\nZONES/HEALTH\n");
    out.push_str(&health_text(v));
    out.push_str("\nTOP DROPS\n");
    out.push_str(&drops_text(v));
    out
}

fn services_text(v: &Value) -> String {
    let services = v["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if services.is_empty() {
        return "No services.\n".to_string();
    }
    let rows = services
        .iter()
        .map(|s| {
            let zones = s["zones"].as_array().into_iter().flatten();
            let zones: Vec<String> = zones
                .map(|z| format!("{} {}", cell(&z["zone"]), cell(&z["health"])))
                .collect();
            vec![
                cell(&s["id"]),
                cell(&s["type"]),
                cell(&s["account"]),
                cell(&s["listeners"]),
                format!("{}/{}", cell(&s["connected"]), cell(&s["endpoints"])),
                zones.join(", "),
            ]
        })
        .collect();
    let header = [
        "service",
        "type",
        "provider",
        "listeners",
        "connected",
        "zones",
    ];
    table(&header, &[4], rows)
}

/// A line per endpoint: its service, consumer, connection state, live flows and zones.
fn endpoints_text(v: &Value) -> String {
    let endpoints = v["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if endpoints.is_empty() {
        return "No endpoints.\n".to_string();
    }
    let rows = endpoints
        .iter()
        .map(|e| {
            let zones = e["zones"].as_array().into_iter().flatten();
            let zones: Vec<String> = zones.map(|z| cell(&z["zone"])).collect();
            let flows = match e["live_flows"].as_u64() {
                Some(n) => count(n),
                None => "-".to_string(),
            };
            vec![
                cell(&e["id"]),
                cell(&e["service"]),
                cell(&e["account"]),
                cell(&e["connection"]),
                flows,
                zones.join(", "),
            ]
        })
        .collect();
    let header = ["endpoint", "service", "account", "state", "flows", "zones"];
    table(&header, &[4], rows)
}

/// A line per endpoint ENI (a zone of a gateway endpoint: no ENI): what crossed it each
/// way and its top drop reason. Apart from `endpoints_text` so that the numbers fit 80
/// columns.
fn enis_text(v: &Value, shown: Shown) -> String {
    let mut rows = Vec::new();
    for e in v["endpoints"].as_array().into_iter().flatten() {
        for z in e["zones"].as_array().into_iter().flatten() {
            let mut row = vec![
                cell(&e["id"]),
                or_dash(cell(&z["zone"])),
                or_dash(cell(&z["eni"]) + &v6_suffix(z.get("eni6"))),
            ];
            row.extend(traffic_cells(&e["id"], z, shown));
            row.push(top_drop(&z["drops"]));
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return "No ENIs.\n".to_string();
    }
    let traffic = match shown {
        Shown::Totals => ["pkts>svc", "bytes>svc", "pkts>con", "bytes>con"],
        Shown::PerSecond(_) => ["pkt/s>svc", "B/s>svc", "pkt/s>con", "B/s>con"],
    };
    let header = [
        "endpoint", "zone", "eni", traffic[0], traffic[1], traffic[2], traffic[3], "drops",
    ];
    table(&header, &[3, 4, 5, 6], rows)
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_string() } else { s }
}

/// One ENI's packets and bytes each way, as `shown` says.
fn traffic_cells(endpoint: &Value, zone: &Value, shown: Shown) -> [String; 4] {
    match shown {
        Shown::Totals => {
            let n = |f: &str| zone[f].as_u64().unwrap_or_default();
            [
                count(n(RATE_FIELDS[0])),
                scaled(n(RATE_FIELDS[1]) as f64, "B"),
                count(n(RATE_FIELDS[2])),
                scaled(n(RATE_FIELDS[3]) as f64, "B"),
            ]
        }
        Shown::PerSecond(rates) => {
            let key = (cell(endpoint), cell(&zone["zone"]));
            match rates.and_then(|r| r.0.get(&key)) {
                Some(r) => [
                    scaled(r[0], ""),
                    scaled(r[1], "B"),
                    scaled(r[2], ""),
                    scaled(r[3], "B"),
                ],
                None => std::array::from_fn(|_| "-".to_string()),
            }
        }
    }
}

/// The reason most packets were dropped for (`no_listener 3`), and how many other
/// reasons there were (`+2`).
fn top_drop(drops: &Value) -> String {
    let Some(drops) = drops.as_object() else {
        return String::new();
    };
    let mut v: Vec<(&String, u64)> = drops
        .iter()
        .map(|(r, n)| (r, n.as_u64().unwrap_or_default()))
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    match v.as_slice() {
        [] => String::new(),
        [(r, n)] => format!("{r} {n}"),
        [(r, n), rest @ ..] => format!("{r} {n} +{}", rest.len()),
    }
}

/// A line per health-checked target (each zone's load balancers, GWLB appliances) with
/// its verdict and since when.
fn health_text(v: &Value) -> String {
    let rows = v["health"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rows.is_empty() {
        return "No health-checked load balancers or appliances.\n".to_string();
    }
    let rows = rows
        .iter()
        .map(|r| {
            let health = match r["healthy"].as_bool() {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "?",
            };
            vec![
                cell(&r["service"]),
                cell(&r["zone"]),
                cell(&r["kind"]).replace('_', " "),
                cell(&r["address"]),
                health.to_string(),
                cell(&r["since"]),
            ]
        })
        .collect();
    let header = ["service", "zone", "kind", "address", "health", "since"];
    table(&header, &[], rows)
}

/// The most frequent drop reasons of the endpoints in the view.
fn drops_text(v: &Value) -> String {
    const SHOWN: usize = 5;
    let drops = v["top_drops"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if drops.is_empty() {
        return "No drops.\n".to_string();
    }
    let rows = drops
        .iter()
        .take(SHOWN)
        .map(|d| vec![cell(&d["reason"]), cell(&d["packets"])])
        .collect();
    table(&["reason", "packets"], &[1], rows)
}

/// The width of the terminal on standard output, if it is one.
fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct it is given.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut w) } == 0;
    (ok && w.ws_col > 0).then_some(usize::from(w.ws_col))
}

/// `text` with every line cut at `width` characters (a terminal would wrap them into the
/// next line's columns).
fn fit(text: &str, width: Option<usize>) -> String {
    let Some(width) = width else {
        return text.to_string();
    };
    text.lines()
        .map(|l| {
            let l = l.trim_end();
            match l.char_indices().nth(width) {
                Some((at, _)) => &l[..at],
                None => l,
            }
        })
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// `privatelink status`: the overview once.
fn status(c: &Client, json: bool) -> Result<()> {
    let v = c.get("/v1/overview")?;
    if json {
        print(&v, &[], true);
    } else {
        print!(
            "{}",
            fit(&overview_text(&v, Shown::Totals), terminal_width())
        );
    }
    Ok(())
}

/// Set by SIGINT while `top` runs: it stops at its next step, and exits 0.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether Ctrl-C was pressed.
fn stopping() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// `privatelink top` (`status --watch`): the overview every `every`, with per-second
/// rates from the last two, `count` times or until Ctrl-C. On a terminal each one
/// replaces the last (ANSI clear screen, lines cut at its width); elsewhere they follow
/// each other, separated by a line of dashes. With `json`, one JSON object per line.
fn top(c: &Client, json: bool, every: std::time::Duration, count: Option<u64>) -> Result<()> {
    use std::io::Write;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe { libc::signal(libc::SIGINT, interrupted as *const () as libc::sighandler_t) };
    let width = terminal_width();
    let mut last: Option<(std::time::Instant, Value)> = None;
    let mut shown = 0u64;
    while !stopping() {
        let v = match c.get("/v1/overview") {
            Ok(v) => v,
            Err(_) if stopping() => break,
            Err(e) => return Err(e),
        };
        let now = std::time::Instant::now();
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{v}")?;
        } else {
            let rates = last
                .as_ref()
                .map(|(t, before)| Rates::between(before, &v, (now - *t).as_secs_f64()));
            let head = format!(
                "privatelink top: {} view, every {}s, {}\n\n",
                cell(&v["caller"]),
                every.as_secs_f64(),
                crate::monitor::rfc3339(std::time::SystemTime::now())
            );
            let text = head + &overview_text(&v, Shown::PerSecond(rates.as_ref()));
            match width {
                // Home, clear the screen, draw.
                Some(w) => write!(out, "\x1b[H\x1b[2J{}", fit(&text, Some(w)))?,
                None if shown > 0 => write!(out, "{}\n{text}", "-".repeat(40))?,
                None => write!(out, "{text}")?,
            }
        }
        out.flush()?;
        drop(out);
        last = Some((now, v));
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            break;
        }
        // Asleep in short steps, to stop soon after Ctrl-C.
        let wake = now + every;
        while !stopping() {
            let left = wake.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
        }
    }
    Ok(())
}

/// `endpoint show` as text: the endpoint with its domain name, then one line per zone
/// with its ENI and zone domain name.
fn endpoint_text(v: &Value) -> String {
    const COLS: [&str; 10] = [
        "id",
        "account",
        "vpc",
        "service",
        "connection",
        "ip_version",
        "name",
        "domain",
        "zone_affinity",
        "service_domain_name",
    ];
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(COLS.iter().map(|c| c.to_uppercase()));
    t.add_row(COLS.iter().map(|c| column(v, c)));
    let mut out = format!("{t}\n");
    let zones = v["zones"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !zones.is_empty() {
        // The IPv6 column only for a dualstack endpoint's ENIs.
        let dual = zones.iter().any(|z| z.get("eni6").is_some());
        let cols: Vec<&str> = ["vswitch", "zone", "eni", "eni6", "domain"]
            .into_iter()
            .filter(|c| dual || *c != "eni6")
            .collect();
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::NOTHING);
        t.set_header(cols.iter().map(|c| c.to_uppercase()));
        for z in zones {
            t.add_row(cols.iter().map(|c| cell(&z[*c])));
        }
        out.push_str(&format!("\n{t}\n"));
    }
    // A gateway endpoint's route targets (the IPv6 one for a dualstack endpoint).
    if v.get("gateway").is_some_and(|g| !g.is_null()) {
        let cols: Vec<&str> = ["gateway", "gateway6"]
            .into_iter()
            .filter(|c| v.get(*c).is_some_and(|g| !g.is_null()))
            .collect();
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::NOTHING);
        t.set_header(cols.iter().map(|c| c.to_uppercase()));
        t.add_row(cols.iter().map(|c| cell(&v[*c])));
        out.push_str(&format!("\n{t}\n"));
    }
    out
}

/// A table of `columns` for an object or a list of objects; anything else as JSON.
fn print(v: &Value, columns: &[&str], json: bool) {
    if json || columns.is_empty() {
        if !v.is_null() {
            println!("{}", serde_json::to_string_pretty(v).expect("json"));
        }
        return;
    }
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![v],
        _ => {
            println!("{v}");
            return;
        }
    };
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(columns.iter().map(|c| c.to_uppercase()));
    for r in rows {
        t.add_row(columns.iter().map(|c| column(r, c)));
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::model::{GwlbSettings, Probe};

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: ServiceCmd,
    }

    fn create(args: &str) -> Result<T, clap::Error> {
        T::try_parse_from(["t", "create"].into_iter().chain(args.split_whitespace()))
    }

    #[test]
    fn gwlb_flags_build_the_settings_the_api_takes() {
        let t = create(
            "g --vpc v --type gwlb --appliance zone-a=10.20.1.10 --appliance zone-b=10.20.2.10 \
             --gwlb-address 10.20.0.5 --stickiness two_tuple --cross-zone --failover rebalance \
             --health-port 8080 --health-path /healthz --health-interval-ms 500 \
             --health-timeout-ms 100 --healthy-threshold 2 --unhealthy-threshold 4",
        )
        .unwrap();
        let ServiceCmd::Create { gwlb, kind, .. } = t.cmd else {
            panic!("not create")
        };
        assert_eq!(kind, ServiceType::Gwlb);
        let (appliances, settings) = gwlb.settings().unwrap();
        assert_eq!(
            serde_json::to_value(&appliances[1]).unwrap(),
            json!({"zone": "zone-b", "address": "10.20.2.10"})
        );
        let g: GwlbSettings =
            serde_json::from_value(serde_json::to_value(settings).unwrap()).unwrap();
        assert_eq!(g.address.to_string(), "10.20.0.5");
        assert!(g.cross_zone);
        assert_eq!(
            g.health.probe,
            Probe::Http {
                path: "/healthz".into()
            }
        );
        assert_eq!(
            (
                g.health.port,
                g.health.interval_ms,
                g.health.timeout_ms,
                g.health.healthy_threshold,
                g.health.unhealthy_threshold
            ),
            (8080, 500, 100, 2, 4)
        );
        // Defaults are the server's.
        let t =
            create("g --vpc v --type gwlb --appliance z=10.0.0.1 --gwlb-address 10.0.0.5").unwrap();
        let ServiceCmd::Create { gwlb, .. } = t.cmd else {
            panic!("not create")
        };
        let g: GwlbSettings =
            serde_json::from_value(serde_json::to_value(gwlb.settings().unwrap().1).unwrap())
                .unwrap();
        assert_eq!(g.health, HealthSettings::default());
    }

    /// An overview as `GET /v1/overview` gives it: one service in two zones, one endpoint
    /// with an ENI in each, traffic and drops in zone-a.
    fn overview() -> Value {
        json!({
            "caller": "operator",
            "services": [{"id": "epsrv-b", "type": "interface", "account": "acct-b",
                "listeners": [{"protocol": "tcp", "port": 80}],
                "zones": [{"zone": "zone-a", "health": "unhealthy", "targets": 1, "healthy": 0},
                          {"zone": "zone-b", "health": "healthy", "targets": 1, "healthy": 1}],
                "endpoints": 1, "connected": 1}],
            "endpoints": [{"id": "ep-a", "service": "epsrv-b", "account": "acct-a",
                "connection": "connected", "live_flows": 2,
                "zones": [
                    {"zone": "zone-a", "vswitch": "vsw-a1", "eni": "10.10.1.100",
                     "to_service_packets": 12, "to_service_bytes": 1500,
                     "to_consumer_packets": 10, "to_consumer_bytes": 2_500_000,
                     "new_flows": 2, "drops": {"acl": 1, "no_listener": 3}},
                    {"zone": "zone-b", "vswitch": "vsw-a4", "eni": "10.10.4.100",
                     "to_service_packets": 0, "to_service_bytes": 0,
                     "to_consumer_packets": 0, "to_consumer_bytes": 0,
                     "new_flows": 0, "drops": {}}],
                "to_service_packets": 12, "to_service_bytes": 1500,
                "to_consumer_packets": 10, "to_consumer_bytes": 2_500_000,
                "new_flows": 2, "drops": {"acl": 1, "no_listener": 3}}],
            "health": [
                {"service": "epsrv-b", "zone": "zone-a", "address": "10.10.0.10",
                 "kind": "load_balancer", "healthy": false, "since": "2026-12-01T21:34:07Z"},
                {"service": "epsrv-b", "zone": "zone-b", "address": "10.10.0.11",
                 "kind": "load_balancer", "healthy": true, "since": "2026-12-01T21:30:00Z"}],
            "top_drops": [{"reason": "no_listener", "packets": 3}, {"reason": "acl", "packets": 1}]
        })
    }

    /// The lines of `text` from the one after `title` to the next empty one, in words.
    fn section<'a>(text: &'a str, title: &str) -> Vec<Vec<&'a str>> {
        text.lines()
            .skip_while(|l| *l != title)
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect()
    }

    #[test]
    fn status_prints_services_endpoints_zone_health_and_top_drops() {
        let text = overview_text(&overview(), Shown::Totals);
        assert_eq!(
            section(&text, "SERVICES"),
            [
                vec![
                    "SERVICE",
                    "TYPE",
                    "PROVIDER",
                    "LISTENERS",
                    "CONNECTED",
                    "ZONES"
                ],
                vec![
                    "epsrv-b",
                    "interface",
                    "acct-b",
                    "tcp:80",
                    "1/1",
                    "zone-a",
                    "unhealthy,",
                    "zone-b",
                    "healthy"
                ],
            ],
            "{text}"
        );
        assert_eq!(
            section(&text, "ENDPOINTS"),
            [
                vec!["ENDPOINT", "SERVICE", "ACCOUNT", "STATE", "FLOWS", "ZONES"],
                vec![
                    "ep-a",
                    "epsrv-b",
                    "acct-a",
                    "connected",
                    "2",
                    "zone-a,",
                    "zone-b"
                ],
            ],
            "{text}"
        );
        assert_eq!(
            section(&text, "ENIS"),
            [
                vec![
                    "ENDPOINT",
                    "ZONE",
                    "ENI",
                    "PKTS>SVC",
                    "BYTES>SVC",
                    "PKTS>CON",
                    "BYTES>CON",
                    "DROPS"
                ],
                vec![
                    "ep-a",
                    "zone-a",
                    "10.10.1.100",
                    "12",
                    "1.5kB",
                    "10",
                    "2.5MB",
                    "no_listener",
                    "3",
                    "+1"
                ],
                vec!["ep-a", "zone-b", "10.10.4.100", "0", "0B", "0", "0B"],
            ],
            "{text}"
        );
        assert_eq!(
            section(&text, "ZONES/HEALTH"),
            [
                vec!["SERVICE", "ZONE", "KIND", "ADDRESS", "HEALTH", "SINCE"],
                vec![
                    "epsrv-b",
                    "zone-a",
                    "load",
                    "balancer",
                    "10.10.0.10",
                    "unhealthy",
                    "2026-12-01T21:34:07Z"
                ],
                vec![
                    "epsrv-b",
                    "zone-b",
                    "load",
                    "balancer",
                    "10.10.0.11",
                    "healthy",
                    "2026-12-01T21:30:00Z"
                ],
            ],
            "{text}"
        );
        assert_eq!(
            section(&text, "TOP DROPS"),
            [
                vec!["REASON", "PACKETS"],
                vec!["no_listener", "3"],
                vec!["acl", "1"]
            ],
            "{text}"
        );
        // The columns line up: the ENIs start where their header does, the numbers end
        // where theirs ends; the lines up to the traffic fit 80 columns.
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "ENIS")
            .skip(1)
            .take(3)
            .collect();
        let eni = lines[0].find("ENI").unwrap();
        assert_eq!(lines[1].find("10.10.1.100"), Some(eni), "{text}");
        assert_eq!(lines[2].find("10.10.4.100"), Some(eni), "{text}");
        let end = lines[0].find("PKTS>SVC").unwrap() + "PKTS>SVC".len();
        assert_eq!(&lines[1][end - 2..end], "12", "{text}");
        assert!(lines[0].find("DROPS").unwrap() < 80, "{text}");

        let none = overview_text(&json!({"caller": "acct-c"}), Shown::Totals);
        for empty in [
            "No services.",
            "No endpoints.",
            "No ENIs.",
            "No health-checked load balancers or appliances.",
            "No drops.",
        ] {
            assert!(none.contains(empty), "{none}");
        }
    }

    #[test]
    fn top_shows_rates_from_two_overviews() {
        let before = overview();
        let mut after = overview();
        let z = &mut after["endpoints"][0]["zones"][0];
        z["to_service_packets"] = json!(12 + 500);
        z["to_service_bytes"] = json!(1500 + 64_000);
        z["to_consumer_packets"] = json!(4); // went back: a restart
        let rates = Rates::between(&before, &after, 2.0);
        let key = |zone: &str| ("ep-a".to_string(), zone.to_string());
        assert_eq!(
            rates.0[&key("zone-a")],
            [250.0, 32_000.0, 0.0, 1_250_000.0 - 1_250_000.0]
        );
        assert_eq!(rates.0[&key("zone-b")], [0.0; 4]);
        let text = overview_text(&after, Shown::PerSecond(Some(&rates)));
        let rows = section(&text, "ENIS");
        assert_eq!(
            rows[0][3..7],
            ["PKT/S>SVC", "B/S>SVC", "PKT/S>CON", "B/S>CON"],
            "{text}"
        );
        assert_eq!(rows[1][3..7], ["250", "32.0kB", "0", "0B"], "{text}");
        // The first screen has nothing to compare with.
        let first = overview_text(&after, Shown::PerSecond(None));
        assert_eq!(section(&first, "ENIS")[1][3..7], ["-"; 4], "{first}");
    }

    #[test]
    fn numbers_are_short_and_lines_fit_the_terminal() {
        assert_eq!(count(999_999), "999999");
        assert_eq!(count(12_345_678), "12.3M");
        assert_eq!(scaled(0.0, "B"), "0B");
        assert_eq!(scaled(2.5, ""), "2.5");
        assert_eq!(scaled(1_500.0, "B"), "1.5kB");
        assert_eq!(scaled(3.2e12, "B"), "3.2TB");
        assert_eq!(fit("abcdef  \nxy\n", Some(4)), "abcd\nxy\n");
        assert_eq!(fit("abcdef\n", None), "abcdef\n");
        assert_eq!(interval("0.5"), Ok(std::time::Duration::from_millis(500)));
        assert!(interval("0").is_err() && interval("x").is_err());
    }

    #[derive(Parser)]
    struct S {
        #[command(subcommand)]
        cmd: ApiCmd,
    }

    #[test]
    fn top_is_status_watch() {
        let parse = |args: &str| S::try_parse_from(words(args)).map(|s| s.cmd);
        let Ok(ApiCmd::Top { every }) = parse("top --count 2 --interval 1") else {
            panic!("not top")
        };
        assert_eq!(
            (every.interval(), every.count),
            (std::time::Duration::from_secs(1), Some(2))
        );
        let Ok(ApiCmd::Status { watch, every }) = parse("status") else {
            panic!("not status")
        };
        assert!(!watch && !every.given());
        assert_eq!(every.interval(), Refresh::INTERVAL);
        let Ok(ApiCmd::Status { watch, .. }) = parse("status --watch") else {
            panic!("not status")
        };
        assert!(watch);
        assert!(parse("top --count 0").is_err());
    }

    #[derive(Parser)]
    struct V {
        #[command(subcommand)]
        cmd: VpcCmd,
    }

    #[derive(Parser)]
    struct E {
        #[command(subcommand)]
        cmd: EndpointCmd,
    }

    fn words(args: &str) -> impl Iterator<Item = &str> {
        ["t"].into_iter().chain(args.split_whitespace())
    }

    #[test]
    fn vpc_addresses_are_set_or_removed_but_not_both() {
        let set = |args: &str| match V::try_parse_from(words(args)).map(|v| v.cmd) {
            Ok(VpcCmd::Set {
                resolver,
                no_resolver,
                probe_address,
                no_probe_address,
                ..
            }) => Ok(serde_json::to_value(VpcPatch {
                resolver: clearable(resolver, no_resolver),
                probe_address: clearable(probe_address, no_probe_address),
            })
            .unwrap()),
            Ok(_) => panic!("not set"),
            Err(e) => Err(e),
        };
        assert_eq!(
            set("set v --resolver 10.0.0.53 --no-probe-address").unwrap(),
            json!({"resolver": "10.0.0.53", "probe_address": null})
        );
        assert_eq!(
            set("set v").unwrap(),
            json!({}),
            "nothing given, nothing sent"
        );
        assert!(set("set v --resolver 10.0.0.53 --no-resolver").is_err());
        assert!(set("set v --probe-address 10.0.0.300").is_err());
        let Ok(VpcCmd::Create {
            resolver,
            probe_address,
            ..
        }) = V::try_parse_from(words(
            "create v --account a --cidr 10.0.0.0/16 --interface x0 --resolver 100.100.2.136",
        ))
        .map(|v| v.cmd)
        else {
            panic!("not create")
        };
        assert_eq!(
            (resolver, probe_address),
            (Some("100.100.2.136".parse().unwrap()), None)
        );
    }

    #[test]
    fn endpoint_switches_are_on_or_off() {
        let create = |extra: &str| {
            E::try_parse_from(words(&format!(
                "create e --vpc v --service s --zone vsw-a1 {extra}"
            )))
            .map(|e| match e.cmd {
                EndpointCmd::Create {
                    zone_affinity,
                    service_domain,
                    ..
                } => (zone_affinity, service_domain),
                _ => panic!("not create"),
            })
        };
        assert_eq!(create("").unwrap(), (None, None));
        assert_eq!(
            create("--zone-affinity off --service-domain on").unwrap(),
            (Some(false), Some(true))
        );
        let e = create("--zone-affinity yes").err().unwrap().to_string();
        assert!(e.contains("expected on or off"), "{e}");
        // `set` is `update`.
        let Ok(EndpointCmd::Update { service_domain, .. }) =
            E::try_parse_from(words("set e --service-domain off")).map(|e| e.cmd)
        else {
            panic!("not update")
        };
        assert_eq!(service_domain, Some(false));
    }

    #[test]
    fn interface_health_checks_default_to_the_first_tcp_listener() {
        let listeners: Vec<Listener> = vec!["udp:53".parse().unwrap(), "tcp:8080".parse().unwrap()];
        let base = interface_health(&listeners);
        assert_eq!(base.port, 8080);
        assert_eq!(
            interface_health(&listeners[..1]).port,
            80,
            "no TCP listener"
        );
        let t = create(
            "s --vpc v --backend z:10.0.0.1 --snat 10.0.0.2 --health-path /up --health-timeout-ms 300",
        )
        .unwrap();
        let ServiceCmd::Create { gwlb, .. } = t.cmd else {
            panic!("not create")
        };
        assert!(!gwlb.given(), "health options are not GWLB-only");
        let h = gwlb.health.over(base);
        assert_eq!(
            (h.probe, h.port, h.timeout_ms, h.interval_ms),
            (Probe::Http { path: "/up".into() }, 8080, 300, 5000)
        );
        // `service set --no-health` cannot come with health settings.
        assert!(T::try_parse_from(words("set s --no-health --health-port 81")).is_err());
        assert!(T::try_parse_from(words("set s --domain a.example --no-domain")).is_err());
    }

    #[test]
    fn a_zone_without_an_address_asks_for_one() {
        let zone = |z: &str| zone(z).map(|z| serde_json::to_value(z).unwrap());
        assert_eq!(
            zone("vsw-a1:10.10.1.100").unwrap(),
            json!({"vswitch": "vsw-a1", "eni": "10.10.1.100"})
        );
        assert_eq!(zone("vsw-a1").unwrap(), json!({"vswitch": "vsw-a1"}));
        for bad in ["", ":10.10.1.1", "vsw-a1:"] {
            assert!(zone(bad).is_err(), "{bad:?}");
        }
        // Shown in a table as it is given.
        assert_eq!(
            cell(
                &json!([{"vswitch": "vsw-a1", "eni": "10.10.1.100"}, {"vswitch": "vsw-a2", "eni": "10.10.2.1"}])
            ),
            "vsw-a1:10.10.1.100, vsw-a2:10.10.2.1"
        );
    }

    #[test]
    fn backend_and_snat_stay_required_except_for_gwlb() {
        assert!(create("s --vpc v").is_err());
        assert!(create("s --vpc v --backend z:10.0.0.1").is_err());
        assert!(create("s --vpc v --backend z:10.0.0.1 --snat 10.0.0.2").is_ok());
        assert!(create("g --vpc v --type gwlb --gwlb-address 10.0.0.5").is_err());
        assert!(create("g --vpc v --type gwlb --appliance z=10.0.0.1").is_err());
    }

    #[test]
    fn dual_stack_addresses_follow_the_ipv4_ones_after_a_comma() {
        let zone = |z: &str| zone(z).map(|z| serde_json::to_value(z).unwrap());
        assert_eq!(
            zone("vsw-a1:10.10.1.100,fd00:a:0:1::64").unwrap(),
            json!({"vswitch": "vsw-a1", "eni": "10.10.1.100", "eni6": "fd00:a:0:1::64"})
        );
        assert_eq!(
            zone("vsw-a1,fd00:a:0:1::64").unwrap(),
            json!({"vswitch": "vsw-a1", "eni6": "fd00:a:0:1::64"})
        );
        for bad in ["vsw-a1,10.10.1.1", "vsw-a1:10.10.1.1,fd00::g", ",fd00::1"] {
            assert!(zone(bad).is_err(), "{bad:?}");
        }
        let b = backends(&["zone-a:10.10.0.10,fd00:b::10".into()]).unwrap();
        assert_eq!(b[0].address6, Some("fd00:b::10".parse().unwrap()));
        assert!(backends(&["zone-a:10.10.0.10,10.10.0.11".into()]).is_err());
        // Shown as given; an ipv4 object's IP version reads ipv4.
        assert_eq!(
            cell(&json!([{"vswitch": "vsw-a1", "eni": "10.10.1.100", "eni6": "fd00:a:0:1::64"}])),
            "vsw-a1:10.10.1.100,fd00:a:0:1::64"
        );
        assert_eq!(
            cell(&json!([{"zone": "zone-a", "address": "10.10.0.10", "address6": "fd00:b::10"}])),
            "zone-a:10.10.0.10,fd00:b::10"
        );
        assert_eq!(column(&json!({"id": "ep-a"}), "ip_version"), "ipv4");
        assert_eq!(
            column(&json!({"ip_version": "dualstack"}), "ip_version"),
            "dualstack"
        );
        // `endpoint show`: an ENI6 column for a dualstack endpoint only.
        let ep = |zone: Value| json!({"id": "ep-a", "zones": [zone]});
        let v4 = endpoint_text(&ep(json!({"vswitch": "vsw-a1", "eni": "10.10.1.100"})));
        assert!(!v4.contains("ENI6"), "{v4}");
        let v6 = endpoint_text(&ep(
            json!({"vswitch": "vsw-a1", "eni": "10.10.1.100", "eni6": "fd00:a:0:1::64"}),
        ));
        let lines: Vec<&str> = v6
            .lines()
            .filter(|l| l.contains("VSWITCH") || l.contains("vsw-a1"))
            .collect();
        assert_eq!(
            lines[1].find("fd00:a:0:1::64"),
            lines[0].find("ENI6"),
            "{v6}"
        );
        // The flags.
        let s = create(
            "s --vpc v --ip-version dualstack --backend z:10.0.0.1,fd00::1 --snat 10.0.0.2 --snat6 fd00::2",
        )
        .unwrap();
        let ServiceCmd::Create {
            ip_version, snat6, ..
        } = s.cmd
        else {
            panic!("not a service create")
        };
        assert_eq!(ip_version, Some(IpVersion::Dualstack));
        assert_eq!(snat6, vec!["fd00::2".parse::<Ipv6Addr>().unwrap()]);
        assert!(create("s --vpc v --backend z:10.0.0.1 --snat 10.0.0.2 --ip-version v6").is_err());
    }
}
