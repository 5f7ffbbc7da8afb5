//! The DNS server: every VPC's resolver and the external listener, answering endpoint,
//! zone and custom service domain names authoritatively (hickory-server).
//!
//! Each VPC with a `resolver` address R gets its own hickory `Server` with UDP and TCP
//! sockets on R:53 bound to the VPC's interface (`SO_BINDTODEVICE`; the daemon adds R to
//! that interface, `dataplane::addresses`). VPCs overlap, and R may be the same in
//! several: a device-bound socket receives only what arrives on its interface, and its
//! answers leave by it (the route lookup is restricted to the bound device, and treats
//! the client as on-link when no route says otherwise), so two clients with one address
//! in two VPCs each reach their own VPC's resolver, which knows its VPC (the private
//! zones, the client's zone for affinity). The XDP program passes the kernel only UDP
//! and TCP to R port 53 and ARP replies to R, and answers ARP requests for R itself.
//!
//! The external listener (`--dns-listen`) serves the apex only (no VPC: no private zones,
//! no client zone), for on-premises resolvers that forward the zone.
//!
//! `Dns::update` runs after every apply: it publishes a new `DnsView` to every listener
//! and starts or stops VPC resolvers as VPCs gain or lose one. A socket that cannot be
//! bound is logged once and retried on the next update or tick, never fatal.

pub mod server;
pub mod view;

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hickory_server::Server;
use privatelink_common::DNS_PORT;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tracing::{info, warn};

use self::server::Handler;
pub use self::view::{Answer, DnsView, ViewSettings};
use crate::{
    model::{State, names::Naming, numeric_id},
    monitor::Unhealthy,
};

/// The default TTL of every answer (seconds): short, so that a zone that fails leaves
/// clients' caches within seconds of leaving the answers.
pub const DEFAULT_TTL: u32 = 5;

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The daemon's DNS options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsOptions {
    /// The TTL of every record, and the SOA minimum (negative caching).
    pub ttl: u32,
    /// The external listener's address (UDP and TCP), if any.
    pub listen: Option<SocketAddr>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            listen: None,
        }
    }
}

/// Where a resolver serves: the VPC's interface and its resolver address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    interface: String,
    addr: Ipv4Addr,
}

/// The running DNS servers and the view they answer from.
pub struct Dns {
    naming: Naming,
    options: DnsOptions,
    view: watch::Sender<Arc<DnsView>>,
    /// The VPC resolvers the state wants, by VPC id.
    wanted: BTreeMap<String, Place>,
    /// The running ones.
    resolvers: BTreeMap<String, (Place, Server<Handler>)>,
    external: Option<Server<Handler>>,
    /// What could not be bound, per listener (logged once until the message changes).
    failed: BTreeMap<String, String>,
    /// The view's problems as last logged.
    problems: Vec<String>,
}

impl Dns {
    /// A DNS server with an empty view; `update` gives it the state.
    pub fn new(naming: Naming, options: DnsOptions) -> Result<Self, String> {
        let mut view = DnsView::build(
            &State::default(),
            &naming,
            &Unhealthy::new(),
            Self::settings(&options),
        )?;
        view.follow(None, unix_now());
        let (tx, _) = watch::channel(Arc::new(view));
        Ok(Self {
            naming,
            options,
            view: tx,
            wanted: BTreeMap::new(),
            resolvers: BTreeMap::new(),
            external: None,
            failed: BTreeMap::new(),
            problems: Vec::new(),
        })
    }

    fn settings(options: &DnsOptions) -> ViewSettings {
        ViewSettings {
            ttl: options.ttl,
            ns_address: options
                .listen
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified()),
        }
    }

    /// Publishes the view of `state` and `unhealthy` (the SOA serial moves if it
    /// changed), then brings the listeners to the state: a resolver per VPC that has one
    /// (its address must be on the interface by now), the external listener.
    pub fn update(&mut self, state: &State, unhealthy: &Unhealthy) {
        match DnsView::build(
            state,
            &self.naming,
            unhealthy,
            Self::settings(&self.options),
        ) {
            Ok(mut view) => {
                let prev = self.view.borrow().clone();
                view.follow(Some(&prev), unix_now());
                for p in view.problems() {
                    if !self.problems.contains(p) {
                        warn!("DNS: {p}; the name is not served");
                    }
                }
                self.problems = view.problems().to_vec();
                if view.serial() != prev.serial() {
                    info!(serial = view.serial(), "DNS answers changed");
                }
                self.view.send_replace(Arc::new(view));
            }
            Err(e) => warn!("DNS: the answers cannot be built, keeping the previous ones: {e}"),
        }
        self.wanted = state
            .vpcs
            .iter()
            .filter_map(|v| {
                Some((
                    v.id.clone(),
                    Place {
                        interface: v.interface.clone(),
                        addr: v.resolver?,
                    },
                ))
            })
            .collect();
        self.bind();
    }

    /// Binds what the last update wanted and could not bind.
    pub fn retry(&mut self) {
        self.bind();
    }

    /// Whether some listener waits for a retry.
    pub fn pending(&self) -> bool {
        !self.failed.is_empty()
    }

    fn bind(&mut self) {
        // Stop the resolvers of VPCs that lost theirs or moved it.
        let stale: Vec<String> = self
            .resolvers
            .iter()
            .filter(|(id, (place, _))| self.wanted.get(*id) != Some(place))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((place, server)) = self.resolvers.remove(&id) {
                server.shutdown_token().cancel();
                info!(vpc = %id, iface = %place.interface, address = %place.addr, "DNS resolver stopped");
            }
        }
        self.failed.retain(|k, _| {
            k == "external" || self.wanted.contains_key(k) && !self.resolvers.contains_key(k)
        });
        let wanted: Vec<(String, Place)> = self
            .wanted
            .iter()
            .filter(|(id, _)| !self.resolvers.contains_key(*id))
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        for (id, place) in wanted {
            let addr = SocketAddr::new(IpAddr::V4(place.addr), DNS_PORT);
            let handler = Handler::new(Some(numeric_id(&id)), self.view.subscribe());
            match serve(handler, addr, Some(&place.interface)) {
                Ok(server) => {
                    info!(vpc = %id, iface = %place.interface, address = %place.addr, "DNS resolver serving");
                    self.failed.remove(&id);
                    self.resolvers.insert(id, (place, server));
                }
                Err(e) => {
                    let msg = format!(
                        "DNS resolver of VPC {id} on {}%{}:{DNS_PORT}: {e}",
                        place.addr, place.interface
                    );
                    self.fail(id, msg);
                }
            }
        }
        if let (Some(addr), None) = (self.options.listen, &self.external) {
            match serve(Handler::new(None, self.view.subscribe()), addr, None) {
                Ok(server) => {
                    info!(%addr, "DNS external listener serving");
                    self.failed.remove("external");
                    self.external = Some(server);
                }
                Err(e) => self.fail(
                    "external".into(),
                    format!("DNS external listener on {addr}: {e}"),
                ),
            }
        }
    }

    fn fail(&mut self, key: String, msg: String) {
        if self.failed.get(&key) != Some(&msg) {
            warn!("{msg} (retried every 5 s)");
        }
        self.failed.insert(key, msg);
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        for (_, server) in self.resolvers.values() {
            server.shutdown_token().cancel();
        }
        if let Some(s) = &self.external {
            s.shutdown_token().cancel();
        }
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// A hickory server for `handler` on UDP and TCP `addr`, bound to `device` if given.
/// Needs a tokio runtime (the server's tasks are spawned on it).
fn serve(handler: Handler, addr: SocketAddr, device: Option<&str>) -> io::Result<Server<Handler>> {
    let udp = socket(addr, device, Type::DGRAM, Protocol::UDP)?;
    let tcp = socket(addr, device, Type::STREAM, Protocol::TCP)?;
    tcp.listen(1024)?;
    let udp = tokio::net::UdpSocket::from_std(udp.into())?;
    let tcp = tokio::net::TcpListener::from_std(tcp.into())?;
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
    Ok(server)
}

/// A non-blocking socket bound to `addr` (and to `device`: it then receives only what
/// arrives on that interface, and sends only through it).
fn socket(addr: SocketAddr, device: Option<&str>, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_cloexec(true)?;
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))?;
    }
    if ty == Type::STREAM {
        // A restarted daemon binds again while the old connections sit in TIME_WAIT.
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}
