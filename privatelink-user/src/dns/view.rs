//! What the DNS server answers, as pure data built from the state, the naming and the
//! health view (`DnsView::build`), with no I/O: the handler (`server`) asks it one
//! question at a time (`DnsView::answer`), and the manager (`super::Dns`) swaps in a new
//! one after every apply.
//!
//! Zones served:
//! - the apex `<region>.<suffix>` (SOA, NS `ns1.<apex>`), everywhere: endpoint names
//!   (every healthy zone's ENI, or with zone affinity only the asking client's zone's),
//!   zone names (that zone's ENI, always), service names (no records), `ns1.<apex>` (the
//!   external listener's address, if it has one);
//! - every verified custom service domain, on the VPC resolvers only (a private zone per
//!   VPC): in a VPC with an endpoint that enabled it, the endpoint name's answer; in any
//!   other VPC, NXDOMAIN.
//!
//! Anything outside these zones is REFUSED: the server never recurses.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr},
};

use hickory_proto::{
    op::ResponseCode,
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, AAAA, NS, SOA},
    },
};
use ipnet::Ipv4Net;

use crate::{
    model::{
        Connection, EndpointService, ServiceType, State,
        names::{self, Naming},
        numeric_id,
    },
    monitor::Unhealthy,
};

/// SOA timers (seconds). Nobody transfers these zones (AXFR and IXFR are refused), so
/// only `minimum` matters: it bounds negative caching, and is the TTL.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86_400;

/// What the view needs besides the state: the TTL of every record (negative answers
/// included), and the address `ns1.<apex>` resolves to (the external listener's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewSettings {
    pub ttl: u32,
    pub ns_address: Option<IpAddr>,
}

/// Every answer the DNS server gives, for one state and health view.
#[derive(Debug)]
pub struct DnsView {
    ttl: u32,
    apex: LowerName,
    /// The apex's SOA and NS records.
    soa: Record,
    ns: Record,
    /// The SOA serial: moves (`follow`) when the content does.
    serial: u32,
    /// A digest of everything the answers depend on, so an unchanged view keeps its serial.
    fingerprint: u64,
    /// Names below the apex.
    names: HashMap<LowerName, Node>,
    /// The verified custom service domains (private zones of the VPC resolvers).
    private: Vec<PrivateZone>,
    /// Per VPC (numeric id): its vSwitches' prefixes and zones, longest prefix first.
    vswitches: HashMap<u32, Vec<(Ipv4Net, String)>>,
    /// Names that could not be made (too long, ...): the manager logs them.
    problems: Vec<String>,
}

/// A name below the apex.
#[derive(Debug)]
enum Node {
    /// It exists (it has names below it, or it is a service's name) but holds no records.
    Empty,
    /// Fixed records: a zone name's ENI, `ns1`'s address.
    Records(Vec<Record>),
    /// An endpoint's name: chosen per question among its ENIs.
    Endpoint(Spread),
}

/// The ENIs an endpoint's name (or a custom domain in the endpoint's VPC) answers with,
/// and whether the asking client's zone narrows them.
#[derive(Debug)]
struct Spread {
    affinity: bool,
    enis: Vec<Eni>,
}

#[derive(Debug)]
struct Eni {
    zone: String,
    healthy: bool,
    /// The address records, owned by the name they answer: A, and AAAA for a dualstack
    /// endpoint's ENI (the question's type picks).
    records: Vec<Record>,
}

/// A custom service domain: one zone, answered per VPC.
#[derive(Debug)]
struct PrivateZone {
    apex: LowerName,
    soa: Record,
    /// Its NS (`ns1.<apex>`, as the apex's).
    ns: Record,
    /// VPC (numeric id) → the enabled endpoint's ENIs there.
    vpcs: HashMap<u32, Spread>,
}

/// One answer: the response code, whether it is authoritative, and its sections (borrowed
/// from the view).
#[derive(Debug)]
pub struct Answer<'a> {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<&'a Record>,
    /// The zone's SOA for NXDOMAIN and NODATA (RFC 2308 negative caching).
    pub authority: Vec<&'a Record>,
}

impl Answer<'_> {
    fn refused() -> Self {
        Self {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }
}

/// A name from presentation text, fully qualified.
fn fqdn(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s).map_err(|e| format!("{s:?} is not a DNS name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

fn address_record(name: Name, ttl: u32, addr: IpAddr) -> Record {
    let rdata = match addr {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    Record::from_rdata(name, ttl, rdata)
}

/// Whether the question's type asks for `r` (ANY asks for every record held at the name,
/// RFC 8482's "subset" being all of them here).
fn wanted(r: &Record, qtype: RecordType) -> bool {
    qtype == RecordType::ANY || r.record_type() == qtype
}

impl Spread {
    /// The ENIs to answer a client in `client_zone` (none: unknown, or the external
    /// listener): the healthy zones' ENIs (all of them if none is healthy: fail open);
    /// with affinity and a healthy ENI in the client's zone, only that zone's.
    fn select(&self, client_zone: Option<&str>) -> Vec<&Record> {
        let any_healthy = self.enis.iter().any(|e| e.healthy);
        let pool = || self.enis.iter().filter(move |e| e.healthy || !any_healthy);
        if self.affinity
            && let Some(z) = client_zone
        {
            let mine: Vec<&Record> = pool()
                .filter(|e| e.zone == z)
                .flat_map(|e| &e.records)
                .collect();
            if !mine.is_empty() {
                return mine;
            }
        }
        pool().flat_map(|e| &e.records).collect()
    }
}

/// Whether a service's zone can take flows: a zone with load balancers is down when
/// every one of them is unhealthy; an ENI in a zone the service has none in spreads its
/// flows over all of them, so it is down only when they all are.
fn zone_healthy(svc: &EndpointService, zone: &str, unhealthy: &Unhealthy) -> bool {
    let vpc = numeric_id(&svc.vpc);
    let up = |a: Ipv4Addr| !unhealthy.contains(&(vpc, a.octets()));
    let mut in_zone = svc.backends.iter().filter(|b| b.zone == zone).peekable();
    if in_zone.peek().is_some() {
        in_zone.any(|b| up(b.address))
    } else {
        svc.backends.iter().any(|b| up(b.address))
    }
}

impl DnsView {
    /// The view of `state`: names under `naming`'s apex for every connected interface
    /// endpoint (zones with ENIs), their zones' health from `unhealthy` (provider load
    /// balancers by (VPC, address)), the verified custom domains per VPC, and each VPC's
    /// vSwitches for zone affinity. The serial is 1 until `follow` sets it.
    pub fn build(
        state: &State,
        naming: &Naming,
        unhealthy: &Unhealthy,
        settings: ViewSettings,
    ) -> Result<Self, String> {
        let ttl = settings.ttl;
        let apex_name = fqdn(&naming.apex())?;
        let apex = LowerName::from(&apex_name);
        let ns_name = fqdn(&format!("ns1.{}", naming.apex()))?;
        let rname = fqdn(&format!("hostmaster.{}", naming.suffix))?;
        let soa = soa_record(apex_name.clone(), &ns_name, &rname, 1, ttl);
        let ns = Record::from_rdata(apex_name.clone(), ttl, RData::NS(NS(ns_name.clone())));
        let mut view = Self {
            ttl,
            apex,
            soa,
            ns,
            serial: 1,
            fingerprint: 0,
            names: HashMap::new(),
            private: Vec::new(),
            vswitches: HashMap::new(),
            problems: Vec::new(),
        };
        view.insert(
            ns_name.clone(),
            Node::Records(
                settings
                    .ns_address
                    .map(|a| address_record(ns_name.clone(), ttl, a))
                    .into_iter()
                    .collect(),
            ),
        );

        for vpc in &state.vpcs {
            let mut v: Vec<(Ipv4Net, String)> = vpc
                .vswitches
                .iter()
                .map(|s| (s.cidr, s.zone.clone()))
                .collect();
            v.sort_by_key(|(p, _)| std::cmp::Reverse(p.prefix_len()));
            view.vswitches.insert(numeric_id(&vpc.id), v);
        }

        // Every interface service's own name exists (it holds no records: its endpoints
        // live in many VPCs); the verified custom domains are zones of every VPC resolver.
        for svc in &state.services {
            if svc.kind != ServiceType::Interface {
                continue;
            }
            match fqdn(&naming.service(&svc.id)) {
                Ok(n) => view.insert(n, Node::Empty),
                Err(e) => view.problems.push(format!("service {}: {e}", svc.id)),
            }
            if let (Some(d), true) = (&svc.domain, svc.domain_verified) {
                // A custom domain in or above our names would hide them (a state file is
                // validated against the default suffix only: the daemon's is known here).
                if names::is_within(d, &naming.suffix) || names::is_within(&naming.suffix, d) {
                    view.problems.push(format!(
                        "service {}'s domain {d} is not served: it lies in or above the names' \
                         suffix {}",
                        svc.id, naming.suffix
                    ));
                    continue;
                }
                match fqdn(d) {
                    Ok(n) => {
                        let lower = LowerName::from(&n);
                        if !view.private.iter().any(|z| z.apex == lower) {
                            view.private.push(PrivateZone {
                                apex: lower,
                                soa: soa_record(n.clone(), &ns_name, &rname, 1, ttl),
                                ns: Record::from_rdata(n, ttl, RData::NS(NS(ns_name.clone()))),
                                vpcs: HashMap::new(),
                            });
                        }
                    }
                    Err(e) => view
                        .problems
                        .push(format!("service {}'s domain: {e}", svc.id)),
                }
            }
        }

        for ep in &state.endpoints {
            let (Some(svc), Some(vpc)) = (state.service(&ep.service), state.vpc(&ep.vpc)) else {
                continue;
            };
            if svc.kind != ServiceType::Interface
                || ep.connection != Connection::Connected
                || !svc.admits(&ep.account)
            {
                continue;
            }
            // (zone, addresses) of each ENI whose vSwitch is known: its IPv4 address, and
            // a dualstack endpoint's IPv6 one.
            let enis: Vec<(&str, Vec<IpAddr>)> = ep
                .zones
                .iter()
                .filter_map(|z| {
                    let vsw = vpc.vswitches.iter().find(|s| s.id == z.vswitch)?;
                    let v6 = z
                        .eni6
                        .filter(|_| ep.ip_version.is_dualstack())
                        .map(IpAddr::V6);
                    let addrs = std::iter::once(IpAddr::V4(z.eni)).chain(v6).collect();
                    Some((vsw.zone.as_str(), addrs))
                })
                .collect();
            if enis.is_empty() {
                continue;
            }
            let spread_for = |owner: &Name| Spread {
                affinity: ep.zone_affinity,
                enis: enis
                    .iter()
                    .map(|(zone, addrs)| Eni {
                        zone: zone.to_string(),
                        healthy: zone_healthy(svc, zone, unhealthy),
                        records: addrs
                            .iter()
                            .map(|a| address_record(owner.clone(), ttl, *a))
                            .collect(),
                    })
                    .collect(),
            };
            let ep_name = match fqdn(&naming.endpoint(&ep.id, &svc.id)) {
                Ok(n) => n,
                Err(e) => {
                    view.problems.push(format!("endpoint {}: {e}", ep.id));
                    continue;
                }
            };
            view.insert(ep_name.clone(), Node::Endpoint(spread_for(&ep_name)));
            for (zone, addrs) in &enis {
                match fqdn(&naming.zone(zone, &ep.id, &svc.id)) {
                    Ok(n) => {
                        for a in addrs {
                            view.add_record(n.clone(), address_record(n.clone(), ttl, *a));
                        }
                    }
                    Err(e) => view
                        .problems
                        .push(format!("endpoint {} zone {zone}: {e}", ep.id)),
                }
            }
            if ep.service_domain
                && svc.domain_verified
                && let Some(d) = &svc.domain
                && let Ok(n) = fqdn(d)
            {
                let lower = LowerName::from(&n);
                if let Some(z) = view.private.iter_mut().find(|z| z.apex == lower) {
                    // One endpoint per VPC enables a domain (validation); the first wins.
                    z.vpcs
                        .entry(numeric_id(&vpc.id))
                        .or_insert_with(|| spread_for(&n));
                }
            }
        }
        view.fingerprint = view.digest(settings);
        Ok(view)
    }

    /// Adds `name` (and every name between it and the apex, as empty non-terminals, so
    /// they answer NODATA rather than NXDOMAIN). An existing node is kept.
    fn insert(&mut self, name: Name, node: Node) {
        let lower = LowerName::from(&name);
        if !self.apex.zone_of(&lower) || lower == self.apex {
            self.problems
                .push(format!("{name} is not below the apex {}", self.apex));
            return;
        }
        let mut up = lower.base_name();
        while up != self.apex && self.apex.zone_of(&up) {
            self.names.entry(up.clone()).or_insert(Node::Empty);
            up = up.base_name();
        }
        match self.names.get_mut(&lower) {
            // Something below it was added first: it gets its own content now.
            Some(n @ Node::Empty) => *n = node,
            Some(_) => {}
            None => {
                self.names.insert(lower, node);
            }
        }
    }

    /// Adds a fixed record at `name` (created if absent).
    fn add_record(&mut self, name: Name, r: Record) {
        let lower = LowerName::from(&name);
        match self.names.get_mut(&lower) {
            Some(Node::Records(rs)) => rs.push(r),
            _ => self.insert(name, Node::Records(vec![r])),
        }
    }

    /// A digest of every answer's content (names, records, health, affinity, the VPCs'
    /// zones), stable for equal content whatever the state's order.
    fn digest(&self, settings: ViewSettings) -> u64 {
        fn spread(s: &Spread) -> Vec<String> {
            let mut v: Vec<String> = s
                .enis
                .iter()
                .flat_map(|e| {
                    e.records
                        .iter()
                        .map(move |r| format!("{} {} {} {r}", s.affinity, e.zone, e.healthy))
                })
                .collect();
            v.sort();
            v
        }
        let mut canon: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, node) in &self.names {
            let v = match node {
                Node::Empty => Vec::new(),
                Node::Records(rs) => {
                    let mut v: Vec<String> = rs.iter().map(|r| r.to_string()).collect();
                    v.sort();
                    v
                }
                Node::Endpoint(s) => spread(s),
            };
            canon.insert(name.to_string(), v);
        }
        for z in &self.private {
            canon.insert(format!("private {}", z.apex), Vec::new());
            for (vpc, s) in &z.vpcs {
                canon.insert(format!("private {} {vpc}", z.apex), spread(s));
            }
        }
        for (vpc, v) in &self.vswitches {
            canon.insert(
                format!("vswitches {vpc}"),
                v.iter().map(|(p, z)| format!("{p} {z}")).collect(),
            );
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.apex.to_string(),
            settings.ttl,
            settings.ns_address,
            canon,
        )
            .hash(&mut h);
        h.finish()
    }

    /// Takes the serial on from the view this one replaces: the same if nothing changed,
    /// else `now` (unix seconds) or one more than before, whichever is greater (RFC 1982
    /// order, as the answers' caches and secondaries would read it).
    pub fn follow(&mut self, prev: Option<&DnsView>, now: u32) {
        let serial = match prev {
            Some(p) if p.fingerprint == self.fingerprint => p.serial,
            Some(p) => {
                let next = p.serial.wrapping_add(1);
                // `now` if it lies ahead of `next` in serial number arithmetic.
                if now.wrapping_sub(next) < (1 << 31) {
                    now
                } else {
                    next
                }
            }
            None => now.max(1),
        };
        self.set_serial(serial);
    }

    fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
        fn reserial(r: &mut Record, serial: u32) {
            if let RData::SOA(soa) = &mut r.data {
                soa.serial = serial;
            }
        }
        reserial(&mut self.soa, serial);
        for z in &mut self.private {
            reserial(&mut z.soa, serial);
        }
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Names the view could not make (each a sentence), for the log.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The zone of a client at `src` in VPC `vpc`: its longest-prefix vSwitch's.
    fn client_zone(&self, vpc: Option<u32>, src: IpAddr) -> Option<&str> {
        let IpAddr::V4(src) = src else { return None };
        self.vswitches
            .get(&vpc?)?
            .iter()
            .find(|(p, _)| p.contains(&src))
            .map(|(_, z)| z.as_str())
    }

    /// The answer to `qname`/`qtype` asked by `src` through the resolver of VPC `vpc`
    /// (`None`: the external listener, which serves no private zone and knows no client
    /// zone). Class, opcode and meta-queries (AXFR, IXFR) are the handler's to refuse.
    pub fn answer(
        &self,
        vpc: Option<u32>,
        src: IpAddr,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Answer<'_> {
        // The most specific zone that holds the name: the apex, or (on a VPC resolver) a
        // custom domain.
        let private = vpc.and_then(|_| {
            self.private
                .iter()
                .filter(|z| z.apex.zone_of(qname))
                .max_by_key(|z| z.apex.num_labels())
        });
        let in_apex = self.apex.zone_of(qname);
        match private {
            Some(z) if !in_apex || z.apex.num_labels() > self.apex.num_labels() => {
                self.private_answer(z, vpc, src, qname, qtype)
            }
            _ if in_apex => self.apex_answer(vpc, src, qname, qtype),
            _ => Answer::refused(),
        }
    }

    fn apex_answer(
        &self,
        vpc: Option<u32>,
        src: IpAddr,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Answer<'_> {
        if *qname == self.apex {
            let held = [&self.soa, &self.ns];
            return self.records(held.into_iter().filter(|r| wanted(r, qtype)), &self.soa);
        }
        match self.names.get(qname) {
            None => self.nxdomain(&self.soa),
            Some(Node::Empty) => self.records(std::iter::empty(), &self.soa),
            Some(Node::Records(rs)) => {
                self.records(rs.iter().filter(|r| wanted(r, qtype)), &self.soa)
            }
            Some(Node::Endpoint(s)) => self.records(
                s.select(self.client_zone(vpc, src))
                    .into_iter()
                    .filter(|r| wanted(r, qtype)),
                &self.soa,
            ),
        }
    }

    fn private_answer<'a>(
        &'a self,
        z: &'a PrivateZone,
        vpc: Option<u32>,
        src: IpAddr,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Answer<'a> {
        let spread = vpc.and_then(|v| z.vpcs.get(&v));
        match spread {
            // Enabled in this VPC: its apex answers as the endpoint's name (and holds
            // its SOA); nothing lies below it.
            Some(s) if *qname == z.apex => {
                let mut held = s.select(self.client_zone(vpc, src));
                held.push(&z.soa);
                held.push(&z.ns);
                self.records(held.into_iter().filter(|r| wanted(r, qtype)), &z.soa)
            }
            // Not enabled here (the name does not exist in this VPC), or below the apex.
            _ => self.nxdomain(&z.soa),
        }
    }

    /// NOERROR with `answers`; none is NODATA (the SOA in the authority section).
    fn records<'a>(
        &'a self,
        answers: impl Iterator<Item = &'a Record>,
        soa: &'a Record,
    ) -> Answer<'a> {
        let answers: Vec<&Record> = answers.collect();
        let authority = if answers.is_empty() {
            vec![soa]
        } else {
            Vec::new()
        };
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority,
        }
    }

    fn nxdomain<'a>(&'a self, soa: &'a Record) -> Answer<'a> {
        Answer {
            rcode: ResponseCode::NXDomain,
            authoritative: true,
            answers: Vec::new(),
            authority: vec![soa],
        }
    }
}

fn soa_record(zone: Name, mname: &Name, rname: &Name, serial: u32, ttl: u32) -> Record {
    let soa = SOA::new(
        mname.clone(),
        rname.clone(),
        serial,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        ttl,
    );
    Record::from_rdata(zone, ttl, RData::SOA(soa))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two overlapping consumer VPCs, each with its own endpoint to one service (two
    /// zones of load balancers, a verified custom domain), a third VPC with a resolver
    /// and no endpoint, and a pending endpoint.
    const STATE: &str = r#"
[[accounts]]
id = "acct-a"
name = "A"
[[accounts]]
id = "acct-b"
name = "B"
[[vpcs]]
id = "vpc-a"
account = "acct-a"
cidr = "10.10.0.0/16"
interface = "fc0"
resolver = "10.10.0.2"
vswitches = [
  { id = "vsw-a1", zone = "zone-a", cidr = "10.10.1.0/24" },
  { id = "vsw-a2", zone = "zone-a", cidr = "10.10.2.0/24" },
  { id = "vsw-a2b", zone = "zone-b", cidr = "10.10.2.128/25" },
  { id = "vsw-a4", zone = "zone-b", cidr = "10.10.4.0/24" },
  { id = "vsw-a5", zone = "zone-c", cidr = "10.10.5.0/24" },
]
[[vpcs]]
id = "vpc-c"
account = "acct-a"
cidr = "10.10.0.0/16"
interface = "fx0"
resolver = "10.10.0.2"
vswitches = [
  { id = "vsw-c1", zone = "zone-a", cidr = "10.10.1.0/24" },
  { id = "vsw-c4", zone = "zone-b", cidr = "10.10.4.0/24" },
]
[[vpcs]]
id = "vpc-d"
account = "acct-a"
cidr = "10.20.0.0/16"
interface = "fd0"
resolver = "10.20.0.2"
vswitches = [{ id = "vsw-d1", zone = "zone-a", cidr = "10.20.1.0/24" }]
[[vpcs]]
id = "vpc-b"
account = "acct-b"
cidr = "10.10.0.0/16"
interface = "fp0"
vswitches = [{ id = "vsw-b0", zone = "zone-a", cidr = "10.10.0.0/24" }]
[[services]]
id = "epsrv-b"
account = "acct-b"
type = "interface"
vpc = "vpc-b"
whitelist = ["acct-a"]
backends = [{ zone = "zone-a", address = "10.10.0.10" }, { zone = "zone-b", address = "10.10.0.11" }]
snat = ["10.10.0.200"]
listeners = [{ protocol = "tcp", port = 80 }]
domain = "web.provider-b.example"
domain_verified = true
[[endpoints]]
id = "ep-a"
account = "acct-a"
vpc = "vpc-a"
service = "epsrv-b"
connection = "connected"
service_domain = true
zones = [{ vswitch = "vsw-a1", eni = "10.10.1.100" }, { vswitch = "vsw-a4", eni = "10.10.4.100" }]
[[endpoints]]
id = "ep-c"
account = "acct-a"
vpc = "vpc-c"
service = "epsrv-b"
connection = "connected"
service_domain = true
zones = [{ vswitch = "vsw-c1", eni = "10.10.1.50" }]
[[endpoints]]
id = "ep-n"
account = "acct-a"
vpc = "vpc-c"
service = "epsrv-b"
connection = "connected"
zone_affinity = false
zones = [{ vswitch = "vsw-c1", eni = "10.10.1.60" }, { vswitch = "vsw-c4", eni = "10.10.4.60" }]
[[endpoints]]
id = "ep-p"
account = "acct-a"
vpc = "vpc-d"
service = "epsrv-b"
connection = "pending"
zones = [{ vswitch = "vsw-d1", eni = "10.20.1.100" }]
"#;

    const APEX: &str = "region-1.privatelink.internal";
    const EP_A: &str = "ep-a.epsrv-b.region-1.privatelink.internal";
    const DOMAIN: &str = "web.provider-b.example";

    fn state() -> State {
        toml::from_str(STATE).expect("the test state parses")
    }

    fn settings() -> ViewSettings {
        ViewSettings {
            ttl: 5,
            ns_address: Some("192.0.2.53".parse().expect("address")),
        }
    }

    fn view_of(s: &State, unhealthy: &Unhealthy) -> DnsView {
        DnsView::build(s, &Naming::default(), unhealthy, settings()).expect("view")
    }

    fn view() -> DnsView {
        view_of(&state(), &Unhealthy::new())
    }

    /// What a question gets: its code, the answers' data sorted, and the owner names of
    /// the authority section.
    #[derive(Debug, PartialEq)]
    struct Got {
        rcode: ResponseCode,
        aa: bool,
        answers: Vec<String>,
        authority: Vec<String>,
    }

    fn ask(v: &DnsView, vpc: Option<&str>, src: &str, name: &str, qtype: RecordType) -> Got {
        let q = LowerName::from(Name::from_ascii(format!("{name}.")).expect("name"));
        let a = v.answer(
            vpc.map(numeric_id),
            src.parse().expect("source address"),
            &q,
            qtype,
        );
        let mut answers: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        answers.sort();
        for r in &a.answers {
            assert_eq!(r.ttl, 5, "{r}");
        }
        Got {
            rcode: a.rcode,
            aa: a.authoritative,
            answers,
            authority: a.authority.iter().map(|r| r.name.to_string()).collect(),
        }
    }

    fn a(v: &DnsView, vpc: Option<&str>, src: &str, name: &str) -> Vec<String> {
        let g = ask(v, vpc, src, name, RecordType::A);
        assert_eq!(g.rcode, ResponseCode::NoError, "{name} from {src}: {g:?}");
        assert!(g.aa, "{name}");
        g.answers
    }

    fn addrs(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn endpoint_names_follow_the_clients_zone() {
        let v = view();
        let both = addrs(&["10.10.1.100", "10.10.4.100"]);
        // External listener: no client zone.
        assert_eq!(a(&v, None, "192.0.2.1", EP_A), both);
        // zone-a (both vSwitches of zone-a), zone-b.
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.1.7", EP_A),
            addrs(&["10.10.1.100"])
        );
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.2.5", EP_A),
            addrs(&["10.10.1.100"])
        );
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.4.9", EP_A),
            addrs(&["10.10.4.100"])
        );
        // The longest prefix decides: 10.10.2.200 is in zone-b's /25 inside zone-a's /24.
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.2.200", EP_A),
            addrs(&["10.10.4.100"])
        );
        // A zone without an ENI, an address in no vSwitch: every zone.
        assert_eq!(a(&v, Some("vpc-a"), "10.10.5.1", EP_A), both);
        assert_eq!(a(&v, Some("vpc-a"), "10.10.9.1", EP_A), both);
        // Another VPC's client: its own VPC's vSwitches give its zone.
        assert_eq!(
            a(&v, Some("vpc-c"), "10.10.4.1", EP_A),
            addrs(&["10.10.4.100"])
        );
        // Affinity off: every zone, whatever the client's.
        assert_eq!(
            a(
                &v,
                Some("vpc-c"),
                "10.10.1.9",
                "ep-n.epsrv-b.region-1.privatelink.internal"
            ),
            addrs(&["10.10.1.60", "10.10.4.60"])
        );
    }

    #[test]
    fn zone_names_answer_their_eni_and_names_are_case_insensitive() {
        let v = view();
        let zb = format!("zone-b.{EP_A}");
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.1.7", &zb),
            addrs(&["10.10.4.100"])
        );
        assert_eq!(
            a(&v, None, "192.0.2.1", &zb.to_uppercase()),
            addrs(&["10.10.4.100"])
        );
        assert_eq!(a(&v, None, "192.0.2.1", &EP_A.to_uppercase()).len(), 2);
        // A zone that is down still answers its zone name.
        let mut down = Unhealthy::new();
        down.insert((numeric_id("vpc-b"), [10, 10, 0, 11]));
        let v = view_of(&state(), &down);
        assert_eq!(a(&v, None, "192.0.2.1", &zb), addrs(&["10.10.4.100"]));
    }

    #[test]
    fn unhealthy_zones_leave_the_endpoint_name_and_all_down_answers_all() {
        let s = state();
        let lb_a = (numeric_id("vpc-b"), [10, 10, 0, 10]);
        let lb_b = (numeric_id("vpc-b"), [10, 10, 0, 11]);
        let v = view_of(&s, &[lb_a].into_iter().collect());
        assert_eq!(a(&v, None, "192.0.2.1", EP_A), addrs(&["10.10.4.100"]));
        // Affinity falls back to the healthy zones.
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.1.7", EP_A),
            addrs(&["10.10.4.100"])
        );
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.4.7", EP_A),
            addrs(&["10.10.4.100"])
        );
        // The same load balancer address in another VPC is not this service's.
        let v = view_of(
            &s,
            &[(numeric_id("vpc-a"), [10, 10, 0, 10])]
                .into_iter()
                .collect(),
        );
        assert_eq!(a(&v, None, "192.0.2.1", EP_A).len(), 2);
        // Every zone down: every zone (fail open), affinity as when all are up.
        let v = view_of(&s, &[lb_a, lb_b].into_iter().collect());
        assert_eq!(
            a(&v, None, "192.0.2.1", EP_A),
            addrs(&["10.10.1.100", "10.10.4.100"])
        );
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.1.7", EP_A),
            addrs(&["10.10.1.100"])
        );
    }

    #[test]
    fn a_zone_without_load_balancers_is_up_while_any_is() {
        let mut s = state();
        s.services[0].backends.retain(|b| b.zone == "zone-a");
        let v = view_of(&s, &Unhealthy::new());
        assert_eq!(a(&v, None, "192.0.2.1", EP_A).len(), 2);
        let v = view_of(
            &s,
            &[(numeric_id("vpc-b"), [10, 10, 0, 10])]
                .into_iter()
                .collect(),
        );
        // Everything down: fail open.
        assert_eq!(a(&v, None, "192.0.2.1", EP_A).len(), 2);
    }

    #[test]
    fn the_custom_domain_is_a_private_zone_per_vpc() {
        let v = view();
        // The endpoint's VPC: its endpoint's answer, affinity included.
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.1.7", DOMAIN),
            addrs(&["10.10.1.100"])
        );
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.5.7", DOMAIN),
            addrs(&["10.10.1.100", "10.10.4.100"])
        );
        // Another VPC with its own endpoint: that one's ENIs, for the same client address.
        assert_eq!(
            a(&v, Some("vpc-c"), "10.10.1.7", DOMAIN),
            addrs(&["10.10.1.50"])
        );
        // A VPC without one: NXDOMAIN, the domain's SOA for negative caching.
        let g = ask(&v, Some("vpc-d"), "10.20.1.7", DOMAIN, RecordType::A);
        assert_eq!(g.rcode, ResponseCode::NXDomain);
        assert!(g.aa);
        assert_eq!(g.authority, vec![format!("{DOMAIN}.")]);
        // Below the domain: NXDOMAIN everywhere.
        let g = ask(
            &v,
            Some("vpc-a"),
            "10.10.1.7",
            &format!("x.{DOMAIN}"),
            RecordType::A,
        );
        assert_eq!(g.rcode, ResponseCode::NXDomain);
        // Its SOA where it is enabled; AAAA is NODATA.
        let g = ask(&v, Some("vpc-a"), "10.10.1.7", DOMAIN, RecordType::SOA);
        assert_eq!((g.rcode, g.answers.len()), (ResponseCode::NoError, 1));
        let g = ask(&v, Some("vpc-a"), "10.10.1.7", DOMAIN, RecordType::NS);
        assert_eq!(
            (g.rcode, g.answers),
            (
                ResponseCode::NoError,
                vec!["ns1.region-1.privatelink.internal.".to_string()]
            )
        );
        let g = ask(&v, Some("vpc-a"), "10.10.1.7", DOMAIN, RecordType::AAAA);
        assert_eq!((g.rcode, g.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(g.authority, vec![format!("{DOMAIN}.")]);
        // Not on the external listener: outside its zones.
        let g = ask(&v, None, "192.0.2.1", DOMAIN, RecordType::A);
        assert_eq!((g.rcode, g.aa), (ResponseCode::Refused, false));
        // Not verified: no zone at all.
        let mut s = state();
        s.services[0].domain_verified = false;
        let v = view_of(&s, &Unhealthy::new());
        let g = ask(&v, Some("vpc-a"), "10.10.1.7", DOMAIN, RecordType::A);
        assert_eq!(g.rcode, ResponseCode::Refused);
        // In the names' suffix (a state file is validated against the default suffix
        // only): not served, said, and the endpoint names it would hide still answer.
        let mut s = state();
        s.services[0].domain = Some("epsrv-b.region-1.privatelink.internal".into());
        let v = view_of(&s, &Unhealthy::new());
        assert!(
            v.problems().iter().any(|p| p.contains("is not served")),
            "{:?}",
            v.problems()
        );
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.5.7", EP_A),
            addrs(&["10.10.1.100", "10.10.4.100"])
        );
    }

    #[test]
    fn negative_answers_carry_the_soa_and_outside_names_are_refused() {
        let v = view();
        let soa = vec![format!("{APEX}.")];
        // Unknown name in the apex; a pending endpoint's name; below an endpoint name.
        for name in [
            format!("nope.{APEX}"),
            "ep-p.epsrv-b.region-1.privatelink.internal".to_string(),
            format!("x.zone-a.{EP_A}"),
        ] {
            let g = ask(&v, Some("vpc-a"), "10.10.1.7", &name, RecordType::A);
            assert_eq!(g.rcode, ResponseCode::NXDomain, "{name}");
            assert!(g.aa && g.answers.is_empty(), "{name}");
            assert_eq!(g.authority, soa, "{name}");
        }
        // A known name, another type; the service's name (no records): NODATA.
        for (name, t) in [
            (EP_A.to_string(), RecordType::AAAA),
            (EP_A.to_string(), RecordType::MX),
            (
                "epsrv-b.region-1.privatelink.internal".to_string(),
                RecordType::A,
            ),
        ] {
            let g = ask(&v, None, "192.0.2.1", &name, t);
            assert_eq!(g.rcode, ResponseCode::NoError, "{name} {t}");
            assert!(g.aa && g.answers.is_empty(), "{name} {t}");
            assert_eq!(g.authority, soa, "{name} {t}");
        }
        // Outside every zone: REFUSED, not authoritative, nothing said.
        for name in ["example.com", "privatelink.internal", "internal"] {
            let g = ask(&v, Some("vpc-a"), "10.10.1.7", name, RecordType::A);
            assert_eq!(
                g,
                Got {
                    rcode: ResponseCode::Refused,
                    aa: false,
                    answers: vec![],
                    authority: vec![]
                },
                "{name}"
            );
        }
    }

    #[test]
    fn the_apex_has_soa_and_ns_and_ns1_the_listeners_address() {
        let v = view();
        let g = ask(&v, None, "192.0.2.1", APEX, RecordType::SOA);
        assert_eq!(g.rcode, ResponseCode::NoError);
        assert_eq!(g.answers.len(), 1);
        let soa = &g.answers[0];
        assert!(
            soa.starts_with(&format!("ns1.{APEX}. hostmaster.privatelink.internal. "))
                && soa.ends_with(" 3600 600 86400 5"),
            "{soa}"
        );
        let g = ask(&v, None, "192.0.2.1", APEX, RecordType::NS);
        assert_eq!(g.answers, vec![format!("ns1.{APEX}.")]);
        // ANY: what the name holds.
        assert_eq!(
            ask(&v, None, "192.0.2.1", APEX, RecordType::ANY)
                .answers
                .len(),
            2
        );
        assert_eq!(
            a(&v, None, "192.0.2.1", &format!("ns1.{APEX}")),
            vec!["192.0.2.53"]
        );
        // No external listener address: ns1 exists, without an address.
        let v = DnsView::build(
            &state(),
            &Naming::default(),
            &Unhealthy::new(),
            ViewSettings {
                ttl: 5,
                ns_address: None,
            },
        )
        .expect("view");
        assert!(a(&v, None, "192.0.2.1", &format!("ns1.{APEX}")).is_empty());
    }

    #[test]
    fn the_serial_moves_when_the_answers_do() {
        let s = state();
        let mut first = view_of(&s, &Unhealthy::new());
        first.follow(None, 1_000);
        assert_eq!(first.serial(), 1_000);
        let soa = |v: &DnsView| ask(v, None, "192.0.2.1", APEX, RecordType::SOA).answers;
        assert!(soa(&first)[0].contains(" 1000 "), "{:?}", soa(&first));
        // Same content (state order aside): same serial, even later.
        let mut same = s.clone();
        same.endpoints.reverse();
        let mut again = view_of(&same, &Unhealthy::new());
        again.follow(Some(&first), 5_000);
        assert_eq!(again.serial(), 1_000);
        // A health change moves it (to the clock, when ahead).
        let mut sick = view_of(
            &s,
            &[(numeric_id("vpc-b"), [10, 10, 0, 10])]
                .into_iter()
                .collect(),
        );
        sick.follow(Some(&again), 5_000);
        assert_eq!(sick.serial(), 5_000);
        assert!(soa(&sick)[0].contains(" 5000 "));
        // A state change in the same second still moves it.
        let mut fewer = s.clone();
        fewer.endpoints.retain(|e| e.id != "ep-n");
        let mut next = view_of(&fewer, &Unhealthy::new());
        next.follow(Some(&sick), 5_000);
        assert_eq!(next.serial(), 5_001);
        // The custom domain's SOA carries it too.
        let g = ask(&next, Some("vpc-d"), "10.20.1.7", DOMAIN, RecordType::A);
        assert_eq!(g.rcode, ResponseCode::NXDomain);
        assert!(next.private[0].soa.data.to_string().contains(" 5001 "));
    }

    /// The test state with ep-a dualstack: an IPv6 address on each of its two ENIs.
    fn dual_state() -> State {
        let mut s = state();
        let ep = &mut s.endpoints[0];
        ep.ip_version = crate::model::IpVersion::Dualstack;
        ep.zones[0].eni6 = Some("fd00:a:0:1::1".parse().expect("address"));
        ep.zones[1].eni6 = Some("fd00:a:0:4::1".parse().expect("address"));
        s
    }

    fn aaaa(v: &DnsView, vpc: Option<&str>, src: &str, name: &str) -> Got {
        ask(v, vpc, src, name, RecordType::AAAA)
    }

    #[test]
    fn dualstack_endpoints_answer_aaaa_with_zone_affinity_and_failover() {
        let v = view_of(&dual_state(), &Unhealthy::new());
        let (z_a, z_b) = ("fd00:a:0:1::1", "fd00:a:0:4::1");
        // A client in zone-a: only zone-a's ENI, in A and in AAAA alike.
        let g = aaaa(&v, Some("vpc-a"), "10.10.1.7", EP_A);
        assert_eq!((g.rcode, g.aa), (ResponseCode::NoError, true));
        assert_eq!(g.answers, addrs(&[z_a]));
        assert_eq!(
            a(&v, Some("vpc-a"), "10.10.1.7", EP_A),
            addrs(&["10.10.1.100"])
        );
        // The external listener (no client zone): both.
        assert_eq!(
            aaaa(&v, None, "192.0.2.1", EP_A).answers,
            addrs(&[z_a, z_b])
        );
        // Zone names: that zone's, always.
        let zone_b = format!("zone-b.{EP_A}");
        assert_eq!(
            aaaa(&v, Some("vpc-a"), "10.10.1.7", &zone_b).answers,
            addrs(&[z_b])
        );
        // ANY at a zone name: its A and its AAAA.
        let g = ask(&v, None, "192.0.2.1", &zone_b, RecordType::ANY);
        assert_eq!(g.answers, addrs(&["10.10.4.100", z_b]));
        // The custom service domain in the endpoint's VPC, with affinity.
        assert_eq!(
            aaaa(&v, Some("vpc-a"), "10.10.4.9", DOMAIN).answers,
            addrs(&[z_b])
        );
        // Zone-a's load balancer down: its ENI leaves the endpoint name's AAAA answers too.
        let down: Unhealthy = [(numeric_id("vpc-b"), [10, 10, 0, 10])].into();
        let v = view_of(&dual_state(), &down);
        assert_eq!(
            aaaa(&v, Some("vpc-a"), "10.10.1.7", EP_A).answers,
            addrs(&[z_b])
        );
        assert_eq!(
            aaaa(&v, Some("vpc-a"), "10.10.1.7", &format!("zone-a.{EP_A}")).answers,
            addrs(&[z_a])
        );
    }

    #[test]
    fn ipv4_endpoints_answer_aaaa_with_nodata() {
        // ep-c is ipv4: its name exists, with no AAAA (NOERROR, no answers, the SOA).
        let v = view_of(&dual_state(), &Unhealthy::new());
        let ep_c = "ep-c.epsrv-b.region-1.privatelink.internal";
        let g = aaaa(&v, Some("vpc-c"), "10.10.1.7", ep_c);
        assert_eq!((g.rcode, g.aa), (ResponseCode::NoError, true));
        assert!(g.answers.is_empty(), "{g:?}");
        assert_eq!(g.authority, vec![format!("{APEX}.")]);
        // An IPv6 address stored on an ipv4 endpoint (validation refuses it) is not served.
        let mut s = dual_state();
        s.endpoints[0].ip_version = crate::model::IpVersion::Ipv4;
        let v = view_of(&s, &Unhealthy::new());
        assert!(aaaa(&v, None, "192.0.2.1", EP_A).answers.is_empty());
        assert_eq!(a(&v, None, "192.0.2.1", EP_A).len(), 2);
    }
}
