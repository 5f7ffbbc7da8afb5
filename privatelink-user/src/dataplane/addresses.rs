//! The daemon's own addresses on VPC interfaces: each VPC's DNS resolver address and its
//! health-probe source address, added as /32 to the VPC's interface in the daemon's
//! network namespace (rtnetlink), and removed when the state no longer has them.
//!
//! The addresses the daemon adds carry its own address protocol (`IFA_PROTO`,
//! `ADDRESS_PROTOCOL`; `ip addr show` prints it as `proto 0x70`), so the kernel remembers
//! which are its own across restarts: only those are ever removed, never an address the
//! operator put there (the GWLB address, say), even when it equals one in the state.
//!
//! Only interfaces the XDP program is attached to get addresses: without it the host's
//! stack would answer the VPC on them unguarded (ARP, ICMP, every port).
//!
//! Queries and probe answers come from VPC addresses the namespace has no route to (the
//! VPCs overlap): each such interface gets `rp_filter` 0, and the daemon warns once if
//! `conf/all/rp_filter` (the kernel takes the larger of the two) would still drop them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressProtocol, AddressScope},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::net::if_::if_nametoindex;
use tracing::{info, warn};

use crate::model::State;

/// The `IFA_PROTO` value of the addresses the daemon adds (any value the kernel does not
/// use itself: it uses 1-3).
pub const ADDRESS_PROTOCOL: u8 = 0x70;

/// One address the state wants on an interface, and why (for the log).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Wanted {
    interface: String,
    addr: Ipv4Addr,
    what: &'static str,
}

/// Keeps the resolver and probe addresses of the state on the VPCs' interfaces.
#[derive(Default)]
pub struct HostAddresses {
    wanted: Vec<Wanted>,
    /// What went wrong last, per interface and address (logged once until it changes).
    failed: BTreeMap<(String, Ipv4Addr), String>,
    /// Interfaces whose `rp_filter` was set.
    rp_done: BTreeSet<String>,
    warned_rp_all: bool,
    /// Addresses whose interface has no XDP program attached yet.
    unattached: Vec<(String, Ipv4Addr)>,
    /// A state has been synced: until then nothing is known of what is wanted, and the
    /// daemon's addresses from its last run are left alone (removing them would stop
    /// every VPC's DNS and probes while the first apply is behind).
    synced: bool,
}

impl HostAddresses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the interfaces to `s`: adds the missing addresses (on the `attached`
    /// interfaces only; the others wait), removes the daemon's own that `s` no longer has.
    /// Failures are logged (once each) and retried by `retry`.
    pub fn sync(&mut self, s: &State, attached: &[String]) {
        let mut wanted = Vec::new();
        self.unattached.clear();
        for vpc in &s.vpcs {
            for (addr, what) in [
                (vpc.resolver, "DNS resolver"),
                (vpc.probe_address, "health-probe source"),
            ] {
                if let Some(addr) = addr {
                    if !attached.contains(&vpc.interface) {
                        self.unattached.push((vpc.interface.clone(), addr));
                        continue;
                    }
                    wanted.push(Wanted {
                        interface: vpc.interface.clone(),
                        addr,
                        what,
                    });
                }
            }
        }
        wanted.sort();
        wanted.dedup_by(|a, b| a.interface == b.interface && a.addr == b.addr);
        self.wanted = wanted;
        self.synced = true;
        self.reconcile();
    }

    /// Whether the last sync left something undone.
    pub fn pending(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Tries again what the last sync could not do (nothing before the first sync).
    pub fn retry(&mut self) {
        if self.synced && self.pending() {
            self.reconcile();
        }
    }

    fn reconcile(&mut self) {
        let mut failed = BTreeMap::new();
        for (iface, addr) in &self.unattached {
            failed.insert(
                (iface.clone(), *addr),
                format!(
                    "{addr} waits for the XDP program on {iface}: without it the host would \
                     answer that VPC unguarded"
                ),
            );
        }
        let nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                for w in &self.wanted {
                    failed.insert(
                        (w.interface.clone(), w.addr),
                        format!("opening a netlink socket: {e}"),
                    );
                }
                self.report(failed);
                return;
            }
        };
        let present = match nl.ipv4_addresses() {
            Ok(p) => p,
            Err(e) => {
                for w in &self.wanted {
                    failed.insert(
                        (w.interface.clone(), w.addr),
                        format!("listing addresses: {e}"),
                    );
                }
                self.report(failed);
                return;
            }
        };
        let mut keep = BTreeSet::new();
        let wanted = self.wanted.clone();
        for w in &wanted {
            let key = (w.interface.clone(), w.addr);
            let ifindex = match if_nametoindex(w.interface.as_str()) {
                Ok(i) => i,
                Err(_) => {
                    failed.insert(
                        key,
                        format!(
                            "interface {} does not exist in this network namespace",
                            w.interface
                        ),
                    );
                    continue;
                }
            };
            keep.insert((ifindex, w.addr));
            if let Err(e) = self.rp_filter_off(&w.interface) {
                failed.insert(key, format!("setting rp_filter 0 on {}: {e}", w.interface));
                continue;
            }
            // Already there, ours or the operator's: nothing to do.
            if present
                .iter()
                .any(|p| p.ifindex == ifindex && p.addr == w.addr)
            {
                continue;
            }
            // An address of another interface that is not ours (the operator's: an
            // on-premises listener, a management address): local to the whole namespace,
            // so adding it here would take it from whoever uses it there.
            if let Some(other) = present
                .iter()
                .find(|p| p.addr == w.addr && p.ifindex != ifindex && !p.ours)
            {
                failed.insert(
                    key,
                    format!(
                        "{} ({}) is already an address of interface index {} that the daemon \
                         did not add: not added to {}",
                        w.addr, w.what, other.ifindex, w.interface
                    ),
                );
                continue;
            }
            match nl.add(ifindex, w.addr) {
                Ok(()) => info!(
                    iface = %w.interface,
                    address = %w.addr,
                    "added the VPC's {} address", w.what
                ),
                Err(e) => {
                    failed.insert(
                        key,
                        format!("adding {}/32 ({}) to {}: {e}", w.addr, w.what, w.interface),
                    );
                }
            }
        }
        for p in present
            .iter()
            .filter(|p| p.ours && !keep.contains(&(p.ifindex, p.addr)))
        {
            match nl.delete(p.ifindex, p.addr, p.prefix_len) {
                Ok(()) => {
                    info!(ifindex = p.ifindex, address = %p.addr, "removed an address the state no longer has")
                }
                Err(e) => {
                    failed.insert(
                        (format!("ifindex {}", p.ifindex), p.addr),
                        format!("removing {}: {e}", p.addr),
                    );
                }
            }
        }
        self.report(failed);
    }

    /// Logs each failure once (until its message changes), and the recoveries.
    fn report(&mut self, failed: BTreeMap<(String, Ipv4Addr), String>) {
        for (k, msg) in &failed {
            if self.failed.get(k) != Some(msg) {
                warn!("{msg} (retried every 5 s)");
            }
        }
        for k in self.failed.keys() {
            let wanted = self
                .wanted
                .iter()
                .any(|w| w.interface == k.0 && w.addr == k.1);
            if wanted && !failed.contains_key(k) {
                info!(iface = %k.0, address = %k.1, "address in place after a retry");
            }
        }
        self.failed = failed;
    }

    /// `rp_filter` 0 on `iface`: its clients' addresses are routed nowhere in this
    /// namespace. Warns once when `all` keeps the check on anyway.
    fn rp_filter_off(&mut self, iface: &str) -> io::Result<()> {
        if self.rp_done.contains(iface) {
            return Ok(());
        }
        if iface.contains('/') || iface.contains("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{iface:?} is not an interface name"),
            ));
        }
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter");
        if std::fs::read_to_string(&path)?.trim() != "0" {
            std::fs::write(&path, "0")?;
            info!(
                iface,
                "rp_filter set to 0 (queries and probe answers come from addresses this namespace has no route to)"
            );
        }
        self.rp_done.insert(iface.to_string());
        if !self.warned_rp_all {
            let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")?;
            if all.trim() != "0" {
                warn!(
                    "net.ipv4.conf.all.rp_filter is {}: the kernel uses the larger of it and the \
                     interface's, so DNS queries and probe answers from VPC addresses this \
                     namespace has no (strict: no matching) route to are dropped; set it to 0",
                    all.trim()
                );
            }
            self.warned_rp_all = true;
        }
        Ok(())
    }
}

/// An IPv4 address present in the namespace.
#[derive(Debug)]
struct Present {
    ifindex: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
    /// Added by the daemon (`ADDRESS_PROTOCOL`).
    ours: bool,
}

/// A route netlink socket of the calling thread's network namespace, used synchronously.
struct Netlink {
    socket: Socket,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket })
    }

    fn send(&self, flags: u16, msg: RouteNetlinkMessage) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Receives until the answer ends (an ACK, an error, or a dump's DONE), passing each
    /// inner message to `each`.
    fn receive(&self, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    // An ACK.
                    NetlinkPayload::Error(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    fn ipv4_addresses(&self) -> io::Result<Vec<Present>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            RouteNetlinkMessage::GetAddress(msg),
        )?;
        let mut out = Vec::new();
        self.receive(|m| {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                return;
            };
            if a.header.family != AddressFamily::Inet {
                return;
            }
            let mut addr = None;
            let mut ours = false;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(v)) => addr = Some(*v),
                    AddressAttribute::Address(IpAddr::V4(v)) if addr.is_none() => addr = Some(*v),
                    AddressAttribute::Protocol(AddressProtocol::Other(p)) => {
                        ours = *p == ADDRESS_PROTOCOL
                    }
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(Present {
                    ifindex: a.header.index,
                    addr,
                    prefix_len: a.header.prefix_len,
                    ours,
                });
            }
        })?;
        Ok(out)
    }

    fn message(ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = ifindex;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        msg
    }

    /// Adds `addr`/32 to the interface, marked as the daemon's.
    fn add(&self, ifindex: u32, addr: Ipv4Addr) -> io::Result<()> {
        let mut msg = Self::message(ifindex, addr, 32);
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ADDRESS_PROTOCOL,
            )));
        self.send(
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            RouteNetlinkMessage::NewAddress(msg),
        )?;
        self.receive(|_| {})
    }

    fn delete(&self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            RouteNetlinkMessage::DelAddress(Self::message(ifindex, addr, prefix_len)),
        )?;
        self.receive(|_| {})
    }
}
