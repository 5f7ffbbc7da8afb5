//! A fuzzer for the loaded XDP program: random frames and mutations of every kind of valid
//! frame the packet tests use go through BPF_PROG_TEST_RUN, and every outcome is checked
//! against the state the harness loaded (parsed again here from the same text) and against
//! the flow table the program keeps:
//!
//! - exactly one counter moves, by one, and it is one that goes with the verdict (a DROP
//!   moves one drop counter, a PASS one pass counter, a TX or REDIRECT the counter of what
//!   was sent); the verdict is never ABORTED;
//! - a frame passed or dropped leaves the program byte for byte as it came in;
//! - a frame sent on is exactly the input with the rewrite its counter stands for: a NATed
//!   packet carries the addresses, ports and MACs of its conntrack entry, whose partner
//!   entry maps them back, and both lie inside the state (an ENI of a connected,
//!   whitelisted endpoint; its service's SNAT addresses and ports, load balancers and
//!   listeners); an ICMP error is translated by the same entry, quote included; an echo or
//!   ARP reply answers for an address the state gives the data path; GENEVE goes from the
//!   service's load balancer address to one of its appliances, with the endpoint's and
//!   VPC's ids, the inner packet untouched but for its TTL; what an appliance returns is
//!   delivered byte for byte to the flow's peer, or asked for by ARP; frag-needed quotes
//!   the sender;
//! - IPv4 header checksums of what is sent are valid; L4 checksums (etherparse, the inner
//!   packet's too) are as valid as they came in, and valid in what the data path
//!   generates; a TCP/UDP packet etherparse cannot decode is never sent on.
//!
//! Two scenarios are IPv6's (`ipv6`, beside this file): the packet lab made dual stack
//! (`dual`) and the GWLB fixture with IPv6 routed through its endpoint. Their seeds are
//! the IPv6 golden tests' frames (NAT both ways, errors about NATed flows, echo,
//! solicitations and advertisements, extension header variants, fragments; GENEVE with
//! IPv6 inside, a packet too big for the appliance link), mutated also at IPv6's own
//! fields: payload length, next headers, extension headers inserted and removed, hop
//! limits, most then with their TCP/UDP/ICMPv6 checksum recomputed so that the checks
//! that verify it are passed. The same counter rules hold (neighbour discovery's learned
//! advertisement and GENEVE's solicitation are the exceptions as ARP's are), and:
//!
//! - whatever is sent on or answered passes the extension header policy (hop-by-hop
//!   first only, routing type other than 0 with no segment left, destination options,
//!   at most 4, none over 256 bytes; no fragment) as this test walks it;
//! - a NATed packet carries the addresses, ports and MACs of its `PL_CONNTRACK6` entry,
//!   whose partner maps them back: an ENI6 of a forwarding endpoint, the zone's IPv6
//!   load balancer, an IPv6 SNAT address and port of the service, a listener; hop limit
//!   one less (never forwarded at 1, nor from a multicast, unspecified, loopback or
//!   link-local source, nor UDP without checksum); everything else, extension headers and
//!   what trails the packet included, as it came;
//! - an ICMPv6 error is translated by the entry of its quote's reverse, the quoted
//!   TCP/UDP checksum updated for the rewrite (RFC 1624) and as valid as it came where
//!   the whole segment is quoted; an echo reply goes from the ENI6 to the request's
//!   (answerable) source without the request's extension headers; an advertisement
//!   answers a valid solicitation (RFC 4861 7.1) for an ENI6 or SNAT6 of the VPC, to the
//!   sender or, for a probe from ::, to all-nodes; a learned advertisement's MAC is what
//!   the next hop (or the GWLB destination asked for) now has;
//! - GENEVE carries IPv6 (0x86DD) with the tuple's flow cookie, the inner packet the
//!   input's but for its hop limit; what comes back is delivered byte for byte or asked
//!   for with a solicitation from the port's link-local address; a packet too big gets a
//!   Packet Too Big of 1280 bytes with the MTU that fits;
//! - TCP, UDP and ICMPv6 checksums, decided by etherparse and by a pseudo-header sum
//!   written in the test (which must agree), are as valid as they came in, and valid in
//!   what the data path writes itself.
//!
//! Bounded in the suite (a few seconds per scenario); `PL_FUZZ_SECS=600 cargo test -p
//! privatelink-tests --test fuzz -- --nocapture` runs longer, `PL_FUZZ_SEED` replays.

// Beside this file, not a test target of its own (Cargo takes `tests/*.rs` only).
#[path = "fuzz/ipv6.rs"]
mod ipv6;

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapError};
use etherparse::{Ipv4HeaderSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use privatelink_common::{
    DIR_ORIGINAL, DIR_REPLY, FLOW_GWLB, FlowEntry, FlowKey, Reason, map_names,
};
use privatelink_tests::{
    dual,
    frames::{
        self, CLIENT, CLIENT_MAC, ENI, LB, SNAT, arp_request, tcp_from_lb, tcp_to_eni, udp_to_eni,
    },
    gwlb,
    lab::packet_state,
    testrun::{Harness, LB_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use privatelink_user::{
    desired::Link,
    model::{
        Connection, Endpoint, EndpointService, ServiceType, State, numeric_id, parse_stored_state,
    },
};

const ETH: usize = 14;
const GENEVE_PORT: u16 = 6081;
/// What GENEVE adds in front of the inner IPv4 packet: outer IPv4 (20), UDP (8), GENEVE
/// (8) and AWS's three GWLB options (4 + 8 endpoint id, 4 + 8 attachment id, 4 + 4 flow
/// cookie).
const GENEVE_OVERHEAD: usize = 20 + 8 + 8 + (4 + 8) + (4 + 8) + (4 + 4);
const GWLB_OPTION_CLASS: u16 = 0x0108;

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("PL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(secs)
}

fn seed() -> u64 {
    std::env::var("PL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Offsets worth aiming at: IPv4 version/IHL, length, id, flags, TTL, protocol, checksum,
/// addresses; L4 ports, lengths, flags; GENEVE header and options; ARP opcode and addresses.
const FIELDS: &[usize] = &[
    12, 13, 14, 16, 17, 20, 21, 22, 23, 24, 26, 30, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45,
    46, 47, 50, 51, 54, 55, 58, 62, 66, 70, 74, 82,
];

/// Recomputes the IPv4 header checksum when the frame still looks like IPv4, so that
/// mutations reach past the header check.
fn fix_ip_checksum(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = (f[14] & 0x0f) as usize * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let sum: u32 = f[14..14 + ihl]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    f[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

fn mutate(rng: &mut Rng, seed_frame: &[u8]) -> Vec<u8> {
    let mut f = seed_frame.to_vec();
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(rng.below(f.len() + 1)),
        2 => {
            for _ in 0..1 + rng.below(64) {
                f.push(rng.next() as u8);
            }
        }
        3 | 4 => {
            for _ in 0..1 + rng.below(3) {
                let i = FIELDS[rng.below(FIELDS.len())];
                if i < f.len() {
                    f[i] = rng.next() as u8;
                }
            }
        }
        _ => {
            let n = rng.below(200);
            f = (0..n).map(|_| rng.next() as u8).collect();
            if n >= 14 && rng.below(2) == 0 {
                f[12] = 0x08;
                f[13] = 0x00;
                if n > 14 {
                    f[14] = 0x45;
                }
            }
        }
    }
    if rng.below(3) > 0 {
        fix_ip_checksum(&mut f);
    }
    f
}

// ---------------------------------------------------------------------------------------
// What the scenario's state allows.

/// One of the harness's interfaces and the VPC the state attaches it to.
struct Port {
    link: Link,
    vpc_id: u32,
    vpc: String,
    host_traffic: bool,
}

/// The state the harness loaded, parsed again from the same text, and the harness's
/// interfaces by the VPCs they belong to.
struct Scenario {
    state: State,
    ports: Vec<Port>,
    /// Every MAC each next hop (a service's load balancer or appliance, by VPC id and
    /// address) has had in `PL_NEIGHBORS` so far: ARP from it teaches a new one, and a flow
    /// keeps the one it was created with.
    next_hops: RefCell<BTreeMap<(u32, [u8; 4]), Macs>>,
    /// The same for IPv6 next hops (`PL_NEIGHBORS6`, taught by advertisements and
    /// solicitations).
    next_hops6: RefCell<BTreeMap<(u32, [u8; 16]), Macs>>,
    /// Translated ICMP errors whose quote held the L4 checksum (checked as an update).
    quoted_checksums: Cell<u64>,
    /// Of those (IPv6), quotes of a whole segment whose checksum was valid and stayed so.
    whole_quotes: Cell<u64>,
    /// IPv6 packets sent on (or answered) with a valid TCP, UDP or ICMPv6 checksum: the
    /// paths that must keep a valid sum valid were taken.
    valid6: Cell<u64>,
    /// Frames sent on whose flow's other entry the full flow table had evicted.
    evicted: Cell<u64>,
}

type Macs = BTreeSet<[u8; 6]>;

fn v4(a: &Ipv4Addr) -> [u8; 4] {
    a.octets()
}

fn addr(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

impl Scenario {
    fn new(h: &Harness, text: &str) -> Self {
        let state = parse_stored_state(text).expect("the scenario's state parses");
        let ports = state
            .vpcs
            .iter()
            .map(|v| {
                let link = match v.interface.as_str() {
                    "fc0" => h.consumer,
                    "fp0" => h.provider,
                    other => panic!("the harness has no interface {other} (VPC {})", v.id),
                };
                Port {
                    link,
                    vpc_id: numeric_id(&v.id),
                    vpc: v.id.clone(),
                    host_traffic: v.host_traffic,
                }
            })
            .collect();
        Self {
            state,
            ports,
            next_hops: Default::default(),
            next_hops6: Default::default(),
            quoted_checksums: Cell::new(0),
            whole_quotes: Cell::new(0),
            valid6: Cell::new(0),
            evicted: Cell::new(0),
        }
    }

    /// Notes the MACs the next hops have now (after every frame).
    fn note_next_hops(&self, h: &Harness) {
        let mut hops = self.next_hops.borrow_mut();
        for s in &self.state.services {
            let vpc_id = numeric_id(&s.vpc);
            for b in &s.backends {
                if let Some(m) = h.dp.neighbor(vpc_id, v4(&b.address)) {
                    hops.entry((vpc_id, v4(&b.address))).or_default().insert(m);
                }
            }
        }
        drop(hops);
        self.note_next_hops6(h);
    }

    /// Whether `m` is a MAC the next hop `a` in VPC `vpc_id` has had.
    fn was_next_hop(&self, vpc_id: u32, a: [u8; 4], m: [u8; 6]) -> bool {
        self.next_hops
            .borrow()
            .get(&(vpc_id, a))
            .is_some_and(|s| s.contains(&m))
    }

    /// A flow's other entry (`pk`) is missing from flow table `E`'s (`PL_CONNTRACK` or
    /// `PL_CONNTRACK6`): only eviction from a full bucket may take one entry of a live
    /// flow, so `pk`'s bucket must be full.
    fn partner_evicted<E: privatelink_user::dataplane::flowtable::Bucketed>(
        &self,
        h: &Harness,
        pk: &E::Key,
    ) -> Result<(), String> {
        let full =
            h.dp.flow_bucket_full::<E>(pk)
                .expect("reading the flow table");
        if !full {
            let entries = if E::MAP == map_names::CONNTRACK6 {
                h.dp.flows6().expect("reading PL_CONNTRACK6").len()
            } else {
                h.dp.flows().expect("reading PL_CONNTRACK").len()
            };
            return Err(format!(
                "no entry for the other direction {pk:?}, its bucket not full ({entries} entries)"
            ));
        }
        self.evicted.set(self.evicted.get() + 1);
        Ok(())
    }

    fn port(&self, ifindex: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.link.ifindex == ifindex)
    }

    fn port_of_vpc(&self, vpc_id: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.vpc_id == vpc_id)
    }

    fn service(&self, ep: &Endpoint) -> &EndpointService {
        self.state.service(&ep.service).expect("validated state")
    }

    /// An endpoint forwards when it is connected and its account is admitted.
    fn forwarding(ep: &Endpoint, svc: &EndpointService) -> bool {
        ep.connection == Connection::Connected
            && (svc.account == ep.account || svc.whitelist.contains(&ep.account))
    }

    /// The interface (load balancer) endpoint whose ENI `a` is in VPC `vpc_id`.
    fn eni(&self, vpc_id: u32, a: [u8; 4]) -> Option<(&Endpoint, &EndpointService)> {
        self.state
            .endpoints
            .iter()
            .map(|ep| (ep, self.service(ep)))
            .find(|(ep, svc)| {
                svc.kind == ServiceType::Interface
                    && numeric_id(&ep.vpc) == vpc_id
                    && ep.zones.iter().any(|z| v4(&z.eni) == a)
            })
    }

    /// The GWLB endpoint a VPC routes `a` to (the longest of its routes that holds it).
    fn gwlb_route(&self, vpc_id: u32, a: IpAddr) -> Option<(&Endpoint, &EndpointService)> {
        self.state
            .endpoints
            .iter()
            .map(|ep| (ep, self.service(ep)))
            .filter(|(ep, svc)| svc.kind == ServiceType::Gwlb && numeric_id(&ep.vpc) == vpc_id)
            .filter_map(|(ep, svc)| {
                let len = ep
                    .routes
                    .iter()
                    .filter(|r| r.contains(&a))
                    .map(|r| r.prefix_len())
                    .max()?;
                Some((len, ep, svc))
            })
            .max_by_key(|(len, ..)| *len)
            .map(|(_, ep, svc)| (ep, svc))
    }

    /// The addresses the data path answers ARP for in a VPC: ENIs, SNAT addresses, gateway
    /// route targets and GWLB endpoint ENIs.
    fn ours(&self, vpc_id: u32, a: [u8; 4]) -> bool {
        let eni = self.state.endpoints.iter().any(|ep| {
            numeric_id(&ep.vpc) == vpc_id
                && (ep.zones.iter().any(|z| v4(&z.eni) == a)
                    || ep.gateway.is_some_and(|g| v4(&g) == a))
        });
        let snat = self.state.services.iter().any(|s| {
            s.kind != ServiceType::Gwlb
                && numeric_id(&s.vpc) == vpc_id
                && s.snat.iter().any(|x| v4(x) == a)
        });
        eni || snat
    }

    /// The host's own address in a VPC (a GWLB service's load balancer address, where its
    /// health checks leave from).
    fn host_addr(&self, vpc_id: u32, a: [u8; 4]) -> bool {
        self.state.services.iter().any(|s| {
            numeric_id(&s.vpc) == vpc_id && s.gwlb.as_ref().is_some_and(|g| v4(&g.address) == a)
        })
    }

    /// A peer the host talks to in a VPC (an appliance it health-checks), with the TCP port.
    fn host_peer(&self, vpc_id: u32, a: [u8; 4]) -> Option<u16> {
        self.state.services.iter().find_map(|s| {
            let g = s.gwlb.as_ref()?;
            (numeric_id(&s.vpc) == vpc_id && s.backends.iter().any(|b| v4(&b.address) == a))
                .then_some(g.health.port)
        })
    }
}

// ---------------------------------------------------------------------------------------
// Reading the program's maps.

fn counters(h: &Harness) -> Vec<(Reason, u64)> {
    h.dp.stats().expect("reading PL_STATS")
}

/// `PL_STATS` in one `BPF_MAP_LOOKUP_BATCH`: read after every frame, the 44 per-key
/// lookups `Dataplane::stats` makes took most of the fuzzer's time. Checked against that
/// reader at the start and at the end.
struct Counters {
    fd: aya::maps::MapFd,
    cpus: usize,
}

impl Counters {
    fn new(h: &Harness) -> Self {
        let aya::maps::Map::PerCpuArray(data) = h.dp.map(map_names::STATS).expect("PL_STATS")
        else {
            panic!("PL_STATS is not a per-CPU array");
        };
        let fd = data.info().and_then(|i| i.fd()).expect("PL_STATS's fd");
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        Self { fd, cpus }
    }

    fn read(&self) -> Vec<(Reason, u64)> {
        use std::os::fd::{AsFd, AsRawFd};
        /// `union bpf_attr`'s part for the batch commands.
        #[repr(C)]
        struct Batch {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        let n = Reason::ALL.len();
        let mut keys = vec![0u32; n];
        let mut values = vec![0u64; n * self.cpus];
        let mut next = 0u32;
        let mut attr = Batch {
            in_batch: 0,
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: n as u32,
            map_fd: self.fd.as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attribute points at buffers of `count` keys and `count * cpus`
        // 8-byte values, alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut Batch,
                std::mem::size_of::<Batch>(),
            )
        };
        let err = std::io::Error::last_os_error();
        // ENOENT: the last batch (the whole map here).
        assert!(
            r == 0 || err.raw_os_error() == Some(libc::ENOENT),
            "BPF_MAP_LOOKUP_BATCH on PL_STATS: {err}"
        );
        assert_eq!(attr.count as usize, n, "PL_STATS entries read");
        Reason::ALL
            .iter()
            .zip(keys.iter().zip(values.chunks(self.cpus)))
            .map(|(r, (k, v))| {
                assert_eq!(*k, *r as u32, "PL_STATS key");
                (*r, v.iter().sum())
            })
            .collect()
    }
}

fn flow(h: &Harness, key: &FlowKey) -> Option<FlowEntry> {
    h.dp.flow::<FlowEntry>(key).expect("reading PL_CONNTRACK")
}

fn flow_key(vpc_id: u32, src: [u8; 4], dst: [u8; 4], ports: (u16, u16), proto: u8) -> FlowKey {
    FlowKey::new(vpc_id, src, dst, ports.0, ports.1, proto)
}

/// The verdict a counter goes with. Drop counters go with DROP; two exceptions by name
/// each family: an ARP reply or neighbour advertisement the data path learned from is
/// dropped without being an error, and a returned GENEVE packet whose destination's MAC
/// is unknown is lost (a drop) while an ARP request or neighbour solicitation for it is
/// sent.
fn verdict_of(r: Reason) -> Result<u32, String> {
    use Reason::*;
    Ok(match r {
        ArpLearned | NdLearned => XDP_DROP,
        GwlbArpProbe | GwlbNsProbe => XDP_REDIRECT,
        _ if r.is_drop() => XDP_DROP,
        ArpReply | IcmpEchoReply | GwlbFragNeeded => XDP_TX,
        Icmp6EchoReply | NdAdvert | GwlbPacketTooBig => XDP_TX,
        IcmpErrorTranslated | GwlbToAppliance | GwlbFromAppliance => XDP_REDIRECT,
        Icmp6ErrorTranslated | Gwlb6ToAppliance | Gwlb6FromAppliance => XDP_REDIRECT,
        ArpPass | PassHost => XDP_PASS,
        _ if r.as_str().starts_with("pass_") => XDP_PASS,
        _ if r.as_str().starts_with("forward_") || r.as_str().starts_with("forward6_") => {
            XDP_REDIRECT
        }
        _ => {
            return Err(format!(
                "counter {} goes with no verdict known to the fuzzer",
                r.as_str()
            ));
        }
    })
}

// ---------------------------------------------------------------------------------------
// Independent decoding (etherparse, and plain byte arithmetic for what it cannot compute).

/// The folded ones' complement sum of big-endian 16-bit words (0xffff: a valid checksum).
fn ones_sum(b: &[u8]) -> u32 {
    let mut s: u32 = b
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn a4(b: &[u8], at: usize) -> [u8; 4] {
    b[at..at + 4].try_into().unwrap()
}

fn mac(b: &[u8], at: usize) -> [u8; 6] {
    b[at..at + 6].try_into().unwrap()
}

/// An IPv4 header at `off` of a frame, decoded by etherparse, with the packet complete in
/// the frame.
#[derive(Clone, Copy)]
struct Ip {
    off: usize,
    ihl: usize,
    tot: usize,
    ttl: u8,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    fragment: bool,
}

impl Ip {
    fn at(frame: &[u8], off: usize) -> Result<Ip, String> {
        let h = Ipv4HeaderSlice::from_slice(frame.get(off..).unwrap_or_default())
            .map_err(|e| format!("IPv4 header at {off}: {e}"))?;
        let ip = Ip {
            off,
            ihl: h.ihl() as usize * 4,
            tot: h.total_len() as usize,
            ttl: h.ttl(),
            proto: h.protocol().0,
            src: h.source(),
            dst: h.destination(),
            fragment: h.more_fragments() || h.fragments_offset().value() != 0,
        };
        if ip.tot < ip.ihl || off + ip.tot > frame.len() {
            return Err(format!(
                "IPv4 packet at {off}: total length {} for {} bytes",
                ip.tot,
                frame.len() - off
            ));
        }
        Ok(ip)
    }
    fn l4(&self) -> usize {
        self.off + self.ihl
    }
    fn end(&self) -> usize {
        self.off + self.tot
    }
    /// Over the raw bytes (etherparse's header type drops the reserved flag bit).
    fn checksum_ok(&self, frame: &[u8]) -> bool {
        ones_sum(&frame[self.off..self.l4()]) == 0xffff
    }
}

/// Whether the L4 checksum of the IPv4 packet verifies: Some for TCP, UDP and ICMP, None
/// for protocols without one we check. By etherparse; an error when it cannot decode the
/// TCP or UDP header the packet claims (truncated, a data offset or length past the
/// packet, a fragment): such a packet must not be sent on. ICMP's checksum covers the
/// message whatever its type: where etherparse does not decode the type's body (a
/// timestamp cut short, say), the message's ones' complement sum decides; a message
/// shorter than the ICMP header is an error.
fn l4_checksum(frame: &[u8], ip: &Ip) -> Result<Option<bool>, String> {
    if !matches!(ip.proto, 1 | 6 | 17) {
        // Not ours to decode (a GWLB endpoint carries every protocol; etherparse would
        // read IPsec AH, say, as an extension header).
        return Ok(None);
    }
    if ip.fragment {
        return Err("a fragment".into());
    }
    let p = SlicedPacket::from_ip(&frame[ip.off..ip.end()]);
    if ip.proto == 1 {
        let msg = &frame[ip.l4()..ip.end()];
        if msg.len() < 8 {
            return Err(format!("an ICMP message of {} bytes", msg.len()));
        }
        return Ok(Some(match p.map(|p| p.transport) {
            Ok(Some(TransportSlice::Icmpv4(i))) => {
                i.icmp_type().calc_checksum(i.payload()) == i.checksum()
            }
            _ => ones_sum(msg) == 0xffff,
        }));
    }
    let p = p.map_err(|e| format!("etherparse cannot decode the packet: {e}"))?;
    let Some(NetSlice::Ipv4(v)) = &p.net else {
        return Err("etherparse finds no IPv4 packet".into());
    };
    let h = v.header().to_header();
    let valid = match &p.transport {
        Some(TransportSlice::Tcp(t)) if ip.proto == 6 => {
            let want = t
                .to_header()
                .calc_checksum_ipv4(&h, t.payload())
                .map_err(|e| format!("etherparse cannot compute the TCP checksum: {e}"))?;
            want == t.checksum()
        }
        Some(TransportSlice::Udp(u)) if ip.proto == 17 => {
            let want = u
                .to_header()
                .calc_checksum_ipv4(&h, u.payload())
                .map_err(|e| format!("etherparse cannot compute the UDP checksum: {e}"))?;
            u.checksum() == 0 || want == u.checksum()
        }
        _ => {
            return Err(format!(
                "etherparse decodes no protocol {} header in it",
                ip.proto
            ));
        }
    };
    Ok(Some(valid))
}

/// The TCP/UDP ports of the IPv4 packet (etherparse), or an ICMP echo's identifier on
/// both sides (how the flow table keys ICMP echo through a GWLB endpoint), else zeros.
fn ports(frame: &[u8], ip: &Ip) -> Result<(u16, u16), String> {
    if ip.proto == 1 {
        let echo = ip.end() >= ip.l4() + 8 && matches!(frame[ip.l4()], 0 | 8);
        let id = if echo { be16(frame, ip.l4() + 4) } else { 0 };
        return Ok((id, id));
    }
    if !matches!(ip.proto, 6 | 17) {
        return Ok((0, 0));
    }
    let p = SlicedPacket::from_ip(&frame[ip.off..ip.end()]).map_err(|e| e.to_string())?;
    Ok(match p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    })
}

/// `out` equals `want` but for the 2-byte checksum fields at `skip` (checked apart).
fn same_except(what: &str, out: &[u8], want: &[u8], skip: &[usize]) -> Result<(), String> {
    if out.len() != want.len() {
        return Err(format!(
            "{what}: {} bytes sent, {} expected",
            out.len(),
            want.len()
        ));
    }
    for i in 0..out.len() {
        if skip.iter().any(|&s| i == s || i == s + 1) {
            continue;
        }
        if out[i] != want[i] {
            return Err(format!(
                "{what}: byte {i} is {:02x}, {:02x} expected",
                out[i], want[i]
            ));
        }
    }
    Ok(())
}

/// RFC 1624: a checksum over data in which the words `old` became `new` is updated by
/// ~C' = ~C - old + new. Checks that relation for a checksum this test cannot recompute
/// (over a quote that does not hold the whole segment): both sides in ones' complement,
/// where 0x0000 and 0xffff are the same number.
fn incrementally_updated(before: u16, after: u16, old: &[u8], new: &[u8]) -> bool {
    let fold = |s: u32| ones_sum(&[(s >> 24) as u8, (s >> 16) as u8, (s >> 8) as u8, s as u8]);
    let lhs = fold((!after) as u32 + ones_sum(old));
    let rhs = fold((!before) as u32 + ones_sum(new));
    let norm = |x: u32| if x == 0xffff { 0 } else { x };
    norm(lhs) == norm(rhs)
}

// ---------------------------------------------------------------------------------------
// The checks.

/// One frame's run: where it came in, what went in and what came out.
struct Outcome<'a> {
    port: &'a Port,
    input: &'a [u8],
    out: &'a [u8],
}

/// Checks one outcome; returns the counter that explains it, or what is wrong.
fn check(
    sc: &Scenario,
    h: &Harness,
    ifindex: u32,
    input: &[u8],
    act: u32,
    out: &[u8],
    moved: &[(Reason, u64)],
) -> Result<Reason, String> {
    let port = sc
        .port(ifindex)
        .ok_or_else(|| format!("ran on ifindex {ifindex}, no VPC's interface"))?;
    // Exactly one counter, by exactly one.
    let r = match moved {
        [(r, 1)] => *r,
        _ => {
            let m: Vec<_> = moved.iter().map(|(r, n)| (r.as_str(), n)).collect();
            return Err(format!("counters moved {m:?}: one counter by one expected"));
        }
    };
    if act != verdict_of(r)? {
        return Err(format!(
            "verdict {act} with counter {} (verdict {} expected)",
            r.as_str(),
            verdict_of(r)?
        ));
    }
    let o = Outcome { port, input, out };
    let what = match act {
        XDP_DROP | XDP_PASS => {
            let what = if act == XDP_DROP { "dropped" } else { "passed" };
            same_except(&format!("a {what} frame changed"), out, input, &[])?;
            match r {
                Reason::ArpLearned => learned_arp(sc, &o),
                Reason::NdLearned => ipv6::learned_nd(sc, h, &o),
                _ if act == XDP_PASS => passed(sc, &o, r),
                _ => Ok(()),
            }
        }
        _ => match r {
            Reason::ArpReply => arp_reply(sc, &o),
            Reason::IcmpEchoReply => echo_reply(sc, &o),
            Reason::IcmpErrorTranslated => icmp_translated(sc, h, &o),
            Reason::GwlbToAppliance => to_appliance(sc, h, &o),
            Reason::GwlbFromAppliance => from_appliance(sc, h, &o, false),
            Reason::GwlbArpProbe => from_appliance(sc, h, &o, true),
            Reason::GwlbFragNeeded => frag_needed(sc, &o),
            Reason::Icmp6EchoReply => ipv6::echo_reply6(sc, &o),
            Reason::NdAdvert => ipv6::nd_advert(sc, h, &o),
            Reason::Icmp6ErrorTranslated => ipv6::icmp6_translated(sc, h, &o),
            Reason::Gwlb6ToAppliance => ipv6::to_appliance6(sc, h, &o),
            Reason::Gwlb6FromAppliance => ipv6::from_appliance6(sc, h, &o, false),
            Reason::GwlbNsProbe => ipv6::from_appliance6(sc, h, &o, true),
            Reason::GwlbPacketTooBig => ipv6::packet_too_big(sc, &o),
            Reason::Forward6NewFlow | Reason::Forward6ToService | Reason::Forward6ToConsumer => {
                ipv6::nat6(sc, h, &o, r)
            }
            _ if r.as_str().starts_with("forward_") => nat(sc, h, &o, r),
            _ => Err("no check for what it sent".into()),
        },
    };
    what.map_err(|e| format!("{}: {e}", r.as_str()))?;
    Ok(r)
}

/// An ARP reply the data path learned from: an ARP packet whose operation is not a
/// request, to an address of ours or to 0.0.0.0 (the answer to a GWLB probe).
fn learned_arp(sc: &Scenario, o: &Outcome) -> Result<(), String> {
    let i = o.input;
    if i.len() < 42 || i[12..14] != [0x08, 0x06] || be16(i, 20) == 1 {
        return Err("not an ARP reply".into());
    }
    let tpa = a4(i, 38);
    if tpa != [0; 4] && !sc.ours(o.port.vpc_id, tpa) {
        return Err(format!("an ARP reply to {}, not ours", addr(tpa)));
    }
    Ok(())
}

/// What the host's stack may see of a VPC: everything if the VPC says so; else answers
/// from the peers it talks to, to its own address (TCP from their port with ACK or RST,
/// ICMP errors, never a fragment), and ARP between them.
fn passed(sc: &Scenario, o: &Outcome, r: Reason) -> Result<(), String> {
    let (p, i) = (o.port, o.input);
    if p.host_traffic {
        return Ok(());
    }
    match r {
        Reason::PassHost => {
            let ip = Ip::at(i, ETH)?;
            let peer_port = sc
                .host_peer(p.vpc_id, ip.src)
                .ok_or_else(|| format!("from {}, not a peer of the host", addr(ip.src)))?;
            if !sc.host_addr(p.vpc_id, ip.dst) || ip.fragment {
                return Err(format!("to {} (fragment: {})", addr(ip.dst), ip.fragment));
            }
            let answer = match ip.proto {
                1 => i.len() > ip.l4() && matches!(i[ip.l4()], 3 | 11),
                6 => {
                    i.len() >= ip.l4() + 20
                        && be16(i, ip.l4()) == peer_port
                        && i[ip.l4() + 13] & 0x14 != 0
                }
                _ => false,
            };
            if !answer {
                return Err("not an answer to the host's probes".into());
            }
            Ok(())
        }
        Reason::ArpPass => {
            if i.len() < 42 || i[12..14] != [0x08, 0x06] {
                return Err("not an ARP packet".into());
            }
            let (spa, tpa) = (a4(i, 28), a4(i, 38));
            if sc.host_peer(p.vpc_id, spa).is_none() || !sc.host_addr(p.vpc_id, tpa) {
                return Err(format!("ARP from {} about {}", addr(spa), addr(tpa)));
            }
            Ok(())
        }
        _ => Err(format!(
            "VPC {} does not share its interface with the host",
            p.vpc
        )),
    }
}

/// An ARP request for an address of ours in the interface's VPC, answered from the
/// interface's MAC.
fn arp_reply(sc: &Scenario, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    if i.len() < 42 || i[12..14] != [0x08, 0x06] || i[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return Err("the input is not an ARP request".into());
    }
    let (sha, spa, tpa) = (mac(i, 22), a4(i, 28), a4(i, 38));
    if !sc.ours(p.vpc_id, tpa) {
        return Err(format!("answered for {}, not ours in {}", addr(tpa), p.vpc));
    }
    let mut want = i.to_vec();
    want[0..6].copy_from_slice(&sha);
    want[6..12].copy_from_slice(&p.link.mac);
    want[21] = 2;
    want[22..28].copy_from_slice(&p.link.mac);
    want[28..32].copy_from_slice(&tpa);
    want[32..38].copy_from_slice(&sha);
    want[38..42].copy_from_slice(&spa);
    same_except("ARP reply", out, &want, &[])
}

/// An echo request to an ENI of a forwarding endpoint, answered: addresses swapped, TTL
/// 64, type 0, back to the sender's MAC from ours.
fn echo_reply(sc: &Scenario, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let ip = Ip::at(i, ETH)?;
    if ip.proto != 1 || i.len() < ip.l4() + 8 || i[ip.l4()] != 8 || i[ip.l4() + 1] != 0 {
        return Err("the input is not an ICMP echo request".into());
    }
    if !ip.checksum_ok(i) || ip.fragment {
        return Err("answered a bad header or a fragment".into());
    }
    let (ep, svc) = sc
        .eni(p.vpc_id, ip.dst)
        .ok_or_else(|| format!("{} is no ENI in {}", addr(ip.dst), p.vpc))?;
    if !Scenario::forwarding(ep, svc) {
        return Err(format!("endpoint {} does not forward", ep.id));
    }
    let mut want = i.to_vec();
    want[0..6].copy_from_slice(&i[6..12]);
    want[6..12].copy_from_slice(&p.link.mac);
    want[ETH + 8] = 64;
    want[ETH + 12..ETH + 16].copy_from_slice(&ip.dst);
    want[ETH + 16..ETH + 20].copy_from_slice(&ip.src);
    want[ip.l4()] = 0;
    same_except("echo reply", out, &want, &[ETH + 10, ip.l4() + 2])?;
    let oip = Ip::at(out, ETH)?;
    if !oip.checksum_ok(out) {
        return Err("IPv4 header checksum".into());
    }
    if l4_checksum(out, &oip)? != l4_checksum(i, &ip)? {
        return Err("the ICMP checksum's validity changed".into());
    }
    Ok(())
}

/// Checks a NATed flow's entry (stored under `key`) and its partner against each other
/// and against the state: the original direction goes from an ENI of a forwarding
/// endpoint to one of its service's load balancers from a SNAT address and port, to a
/// listener; the reply direction maps every field back.
fn nat_entry(sc: &Scenario, h: &Harness, key: &FlowKey, e: &FlowEntry) -> Result<(), String> {
    if e.flags != 0 {
        return Err(format!(
            "flow flags {:#x} (not an endpoint's NAT flow)",
            e.flags
        ));
    }
    let out = sc
        .port(e.out_ifindex)
        .ok_or_else(|| format!("the entry sends to ifindex {}", e.out_ifindex))?;
    if e.src_mac != out.link.mac || e.out_vpc_id != out.vpc_id {
        return Err(format!(
            "the entry sends from MAC {:02x?} in VPC {:#x}, not {}'s port",
            e.src_mac, e.out_vpc_id, out.vpc
        ));
    }
    // The other direction's key, from this entry's rewrite; both tuples of the flow.
    let pk = flow_key(
        e.out_vpc_id,
        e.new_dst,
        e.new_src,
        (e.new_dport, e.new_sport),
        key.proto,
    );
    let (ok, rk) = match e.direction {
        DIR_ORIGINAL => (key, &pk),
        DIR_REPLY => (&pk, key),
        d => return Err(format!("direction {d}")),
    };
    match flow(h, &pk) {
        Some(p) => {
            let back = (p.new_src, p.new_dst, p.new_sport, p.new_dport, p.out_vpc_id);
            if back != (key.dst, key.src, key.dport, key.sport, key.vpc_id)
                || p.direction == e.direction
                || p.endpoint_id != e.endpoint_id
                || p.flags != e.flags
            {
                return Err(format!(
                    "the partner entry does not map back: {key:?} -> {e:?}; {pk:?} -> {p:?}"
                ));
            }
        }
        None => sc.partner_evicted::<FlowEntry>(h, &pk)?,
    }
    let (ep, svc) = sc
        .eni(ok.vpc_id, ok.dst)
        .ok_or_else(|| format!("a flow to {}, no ENI", addr(ok.dst)))?;
    if !Scenario::forwarding(ep, svc) || numeric_id(&ep.id) != e.endpoint_id {
        return Err(format!(
            "a flow of endpoint {:#x} at {}'s ENI (connection {:?})",
            e.endpoint_id, ep.id, ep.connection
        ));
    }
    let listens = svc.listeners.iter().any(|l| {
        let (a, b) = l.ports();
        l.protocol.number() == ok.proto && (a..=b).contains(&ok.dport)
    });
    let [lo, hi] = svc.snat_ports;
    let lb = svc.backends.iter().any(|b| v4(&b.address) == rk.src);
    let snat = svc.snat.iter().any(|a| v4(a) == rk.dst) && (lo..=hi).contains(&rk.dport);
    if !listens || !lb || !snat || rk.sport != ok.dport || rk.vpc_id != numeric_id(&svc.vpc) {
        return Err(format!(
            "{}:{} -> {}:{} proto {} becomes {}:{} -> {}:{}: outside service {} \
             (listener {listens}, load balancer {lb}, SNAT {snat})",
            addr(ok.src),
            ok.sport,
            addr(ok.dst),
            ok.dport,
            ok.proto,
            addr(rk.dst),
            rk.dport,
            addr(rk.src),
            rk.sport,
            svc.id
        ));
    }
    // To the load balancer's MAC (the other way, to the original sender's).
    if e.direction == DIR_ORIGINAL && !sc.was_next_hop(rk.vpc_id, rk.src, e.dst_mac) {
        return Err(format!(
            "sent to MAC {:02x?}, never the load balancer's",
            e.dst_mac
        ));
    }
    Ok(())
}

/// A TCP/UDP packet NATed by its conntrack entry: everything but the entry's MACs,
/// addresses and ports and the TTL as it came; checksums as valid as they came.
fn nat(sc: &Scenario, h: &Harness, o: &Outcome, r: Reason) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let ip = Ip::at(i, ETH).map_err(|e| format!("sent on: {e}"))?;
    let in_valid = l4_checksum(i, &ip)
        .map_err(|e| format!("sent on a packet that should have been dropped: {e}"))?;
    if !matches!(ip.proto, 6 | 17) || in_valid.is_none() {
        return Err(format!("NATed protocol {}", ip.proto));
    }
    if !ip.checksum_ok(i) || ip.fragment || ip.ttl <= 1 {
        return Err(format!(
            "sent on a bad header, a fragment or TTL {} (header checksum {})",
            ip.ttl,
            ip.checksum_ok(i)
        ));
    }
    let key = flow_key(p.vpc_id, ip.src, ip.dst, ports(i, &ip)?, ip.proto);
    let e = flow(h, &key).ok_or_else(|| format!("no conntrack entry for {key:?}"))?;
    let want_dir = match r {
        Reason::ForwardToConsumer => Some(DIR_REPLY),
        Reason::ForwardToService | Reason::ForwardNewFlow => Some(DIR_ORIGINAL),
        _ => None,
    };
    if want_dir.is_some_and(|d| d != e.direction) {
        return Err(format!("entry of direction {} for {key:?}", e.direction));
    }
    nat_entry(sc, h, &key, &e)?;
    let l4 = ip.l4();
    let mut want = i.to_vec();
    want[0..6].copy_from_slice(&e.dst_mac);
    want[6..12].copy_from_slice(&e.src_mac);
    want[ETH + 8] = ip.ttl - 1;
    want[ETH + 12..ETH + 16].copy_from_slice(&e.new_src);
    want[ETH + 16..ETH + 20].copy_from_slice(&e.new_dst);
    want[l4..l4 + 2].copy_from_slice(&e.new_sport.to_be_bytes());
    want[l4 + 2..l4 + 4].copy_from_slice(&e.new_dport.to_be_bytes());
    let l4_check = l4 + if ip.proto == 6 { 16 } else { 6 };
    same_except("NATed packet", out, &want, &[ETH + 10, l4_check])?;
    let oip = Ip::at(out, ETH)?;
    if !oip.checksum_ok(out) {
        return Err("IPv4 header checksum".into());
    }
    let out_valid = l4_checksum(out, &oip)?;
    if out_valid != in_valid {
        return Err(format!(
            "protocol {} checksum validity changed ({in_valid:?} -> {out_valid:?})",
            ip.proto
        ));
    }
    if ip.proto == 17 && be16(i, l4_check) == 0 && be16(out, l4_check) != 0 {
        return Err("a UDP packet without checksum got one".into());
    }
    Ok(())
}

/// The IPv4 header an ICMP error quotes at `off`, up to `end` (the ICMP packet's end).
fn quote_at(frame: &[u8], off: usize, end: usize) -> Result<Ip, String> {
    let h = Ipv4HeaderSlice::from_slice(&frame[off.min(end)..end])
        .map_err(|e| format!("quoted IPv4 header: {e}"))?;
    Ok(Ip {
        off,
        ihl: h.ihl() as usize * 4,
        tot: end - off,
        ttl: h.ttl(),
        proto: h.protocol().0,
        src: h.source(),
        dst: h.destination(),
        // A quoted first fragment still holds the ports.
        fragment: h.fragments_offset().value() != 0,
    })
}

/// An ICMP error quoting a packet of a NATed flow: translated by the entry of the quoted
/// packet's reverse, the outer header like a packet of that direction, the quote back
/// into what the other side sent.
fn icmp_translated(sc: &Scenario, h: &Harness, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let ip = Ip::at(i, ETH)?;
    let l4 = ip.l4();
    if ip.proto != 1 || i.len() < l4 + 8 || !matches!(i[l4], 3 | 11) {
        return Err("the input is not an ICMP error".into());
    }
    if !ip.checksum_ok(i) || ip.fragment || ip.ttl <= 1 {
        return Err("sent on a bad header, a fragment or TTL 1".into());
    }
    // The quote: an IPv4 header and at least the 8 bytes that hold the ports (its own
    // total length reaches past what was quoted).
    let q = quote_at(i, l4 + 8, ip.end())?;
    let ql4 = q.l4();
    if !matches!(q.proto, 6 | 17) || ql4 + 8 > ip.end() || q.fragment {
        return Err(format!("quote of protocol {} without its ports", q.proto));
    }
    let qports = (be16(i, ql4), be16(i, ql4 + 2));
    let key = flow_key(p.vpc_id, q.dst, q.src, (qports.1, qports.0), q.proto);
    let e = flow(h, &key).ok_or_else(|| format!("no conntrack entry for {key:?}"))?;
    nat_entry(sc, h, &key, &e)?;
    let mut want = i.to_vec();
    want[0..6].copy_from_slice(&e.dst_mac);
    want[6..12].copy_from_slice(&e.src_mac);
    want[ETH + 8] = ip.ttl - 1;
    want[ETH + 12..ETH + 16].copy_from_slice(&e.new_src);
    want[ETH + 16..ETH + 20].copy_from_slice(&e.new_dst);
    want[q.off + 12..q.off + 16].copy_from_slice(&e.new_dst);
    want[q.off + 16..q.off + 20].copy_from_slice(&e.new_src);
    want[ql4..ql4 + 2].copy_from_slice(&e.new_dport.to_be_bytes());
    want[ql4 + 2..ql4 + 4].copy_from_slice(&e.new_sport.to_be_bytes());
    // The quoted L4 checksum, where the quote holds it.
    let qcheck = match q.proto {
        6 if ql4 + 18 <= ip.end() => Some(ql4 + 16),
        17 => Some(ql4 + 6),
        _ => None,
    };
    let mut skip = vec![ETH + 10, l4 + 2, q.off + 10];
    skip.extend(qcheck);
    same_except("translated ICMP error", out, &want, &skip)?;
    let oip = Ip::at(out, ETH)?;
    if !oip.checksum_ok(out) {
        return Err("IPv4 header checksum".into());
    }
    if l4_checksum(out, &oip)? != l4_checksum(i, &ip)? {
        return Err("the ICMP checksum's validity changed".into());
    }
    if (ones_sum(&out[q.off..ql4]) == 0xffff) != (ones_sum(&i[q.off..ql4]) == 0xffff) {
        return Err("the quoted header checksum's validity changed".into());
    }
    // The quoted segment is cut short: etherparse cannot recompute its checksum, so it is
    // checked as an update (RFC 1624) for the addresses and ports that changed.
    if let Some(c) = qcheck {
        sc.quoted_checksums.set(sc.quoted_checksums.get() + 1);
        let (before, after) = (be16(i, c), be16(out, c));
        let words = |f: &[u8]| [&f[q.off + 12..q.off + 20], &f[ql4..ql4 + 4]].concat();
        let zero_udp = q.proto == 17 && before == 0;
        if zero_udp && after != 0 {
            return Err("a quoted UDP header without checksum got one".into());
        }
        if !zero_udp && !incrementally_updated(before, after, &words(i), &words(out)) {
            return Err(format!(
                "the quoted L4 checksum {before:04x} -> {after:04x} is not the update for \
                 the rewritten addresses and ports"
            ));
        }
    }
    Ok(())
}

/// The input of a frame the data path took for a GWLB endpoint (`done`: what it did with
/// it): a sound IPv4 header, routed in its VPC to an endpoint that forwards.
fn gwlb_input<'s>(
    sc: &'s Scenario,
    o: &Outcome,
    done: &str,
) -> Result<(Ip, &'s Endpoint, &'s EndpointService), String> {
    let i = o.input;
    let ip = Ip::at(i, ETH)?;
    if !ip.checksum_ok(i) || ip.fragment || ip.ttl <= 1 {
        return Err(format!("{done} a bad header, a fragment or TTL 1"));
    }
    let (ep, svc) = sc
        .gwlb_route(o.port.vpc_id, IpAddr::V4(addr(ip.dst)))
        .ok_or_else(|| format!("{} is not routed to a GWLB endpoint", addr(ip.dst)))?;
    if !Scenario::forwarding(ep, svc) {
        return Err(format!("endpoint {} does not forward", ep.id));
    }
    Ok((ip, ep, svc))
}

/// What `geneve_out` read from the outer headers of GENEVE sent to an appliance.
struct Geneve {
    /// Outer IPv4 source and destination: the load balancer's address, an appliance's.
    src: [u8; 4],
    dst: [u8; 4],
    eth_dst: [u8; 6],
    cookie: u32,
}

/// The outer headers of GENEVE sent for endpoint `ep` of GWLB service `svc` around an
/// inner packet of `inner_len` bytes and protocol `protocol`: IPv4 without options, DF,
/// TTL 64, UDP, from the load balancer's address to one of the service's appliances, to a
/// MAC it has had, from the appliance port's; UDP (RFC 8926 3.3: source port from the
/// flow cookie, checksum zero) and GENEVE (3.4: version 0, 8 words of options, no flags,
/// `protocol` inside, VNI 0) with AWS's options: the endpoint's id, the VPC's (the
/// attachment), the flow cookie.
fn geneve_out(
    sc: &Scenario,
    o: &Outcome,
    ep: &Endpoint,
    svc: &EndpointService,
    inner_len: usize,
    protocol: u16,
) -> Result<Geneve, String> {
    let (out, p) = (o.out, o.port);
    let g = svc.gwlb.as_ref().ok_or("a GWLB service without settings")?;
    let appl_vpc = numeric_id(&svc.vpc);
    let appl_port = sc
        .port_of_vpc(appl_vpc)
        .ok_or("no port in the appliances' VPC")?;
    let outer = Ip::at(out, ETH)?;
    let (src, dst) = (outer.src, outer.dst);
    let tot = (GENEVE_OVERHEAD + inner_len) as u16;
    if out[ETH..ETH + 10] != [0x45, 0, (tot >> 8) as u8, tot as u8, 0, 0, 0x40, 0, 64, 17]
        || !outer.checksum_ok(out)
    {
        return Err(format!("outer IPv4 header {:02x?}", &out[ETH..ETH + 20]));
    }
    if src != v4(&g.address) || !svc.backends.iter().any(|b| v4(&b.address) == dst) {
        return Err(format!("GENEVE {} -> {}", addr(src), addr(dst)));
    }
    let eth_dst = mac(out, 0);
    if !sc.was_next_hop(appl_vpc, dst, eth_dst)
        || mac(out, 6) != appl_port.link.mac
        || out[12..14] != [0x08, 0x00]
    {
        return Err(format!("Ethernet header {:02x?}", &out[..14]));
    }
    let (u, gn) = (outer.l4(), outer.l4() + 8);
    let sport = be16(out, u);
    let udp_len = (GENEVE_OVERHEAD - 20 + inner_len) as u16;
    if sport < 49152 || be16(out, u + 2) != GENEVE_PORT || be16(out, u + 4) != udp_len {
        return Err(format!("UDP header {:02x?}", &out[u..u + 8]));
    }
    if be16(out, u + 6) != 0 {
        return Err("a UDP checksum over GENEVE (zero expected)".into());
    }
    let [p0, p1] = protocol.to_be_bytes();
    if out[gn..gn + 8] != [8, 0, p0, p1, 0, 0, 0, 0] {
        return Err(format!("GENEVE header {:02x?}", &out[gn..gn + 8]));
    }
    let [c0, c1] = GWLB_OPTION_CLASS.to_be_bytes();
    let opt = |at: usize, kind: u8, words: u8| out[at..at + 4] == [c0, c1, kind, words];
    let (o1, o2, o3) = (gn + 8, gn + 20, gn + 32);
    if !opt(o1, 1, 2) || !opt(o2, 2, 2) || !opt(o3, 3, 1) {
        return Err(format!("GENEVE options {:02x?}", &out[o1..o3 + 8]));
    }
    let endpoint = u64::from_be_bytes(out[o1 + 4..o1 + 12].try_into().unwrap());
    let attachment = u64::from_be_bytes(out[o2 + 4..o2 + 12].try_into().unwrap());
    let cookie = u32::from_be_bytes(out[o3 + 4..o3 + 8].try_into().unwrap());
    if endpoint != numeric_id(&ep.id) as u64 || attachment != p.vpc_id as u64 {
        return Err(format!(
            "endpoint id {endpoint:#x} (want {:#x}), attachment {attachment:#x} (want {:#x})",
            numeric_id(&ep.id),
            p.vpc_id
        ));
    }
    if sport & 0x3fff != cookie as u16 & 0x3fff {
        return Err(format!(
            "source port {sport} is not from cookie {cookie:#x}"
        ));
    }
    Ok(Geneve {
        src,
        dst,
        eth_dst,
        cookie,
    })
}

/// A packet to a prefix a VPC routes to a GWLB endpoint, in GENEVE to one of its
/// service's appliances (`geneve_out`): the inner packet as it came but for its TTL; the
/// flow's entries (both directions) name that appliance.
fn to_appliance(sc: &Scenario, h: &Harness, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let (ip, ep, svc) = gwlb_input(sc, o, "sent on")?;
    let appl_port = sc
        .port_of_vpc(numeric_id(&svc.vpc))
        .ok_or("no port in the appliances' VPC")?;
    let in_valid = l4_checksum(i, &ip)
        .map_err(|e| format!("sent on a packet that should have been dropped: {e}"))?;
    if out.len() != i.len() + GENEVE_OVERHEAD {
        return Err(format!("{} bytes for {} in", out.len(), i.len()));
    }
    let g = geneve_out(sc, o, ep, svc, ip.tot, 0x0800)?;
    // The inner packet: the input's, TTL one less.
    let inner = ETH + GENEVE_OVERHEAD;
    let mut want = i[ETH..].to_vec();
    want[8] = ip.ttl - 1;
    same_except("inner packet", &out[inner..], &want, &[10])?;
    let iip = Ip::at(out, inner)?;
    if !iip.checksum_ok(out) {
        return Err("inner IPv4 header checksum".into());
    }
    let inner_valid = l4_checksum(out, &iip)?;
    if inner_valid != in_valid {
        return Err(format!(
            "inner protocol {} checksum validity changed ({in_valid:?} -> {inner_valid:?})",
            ip.proto
        ));
    }
    // The flow: this direction's entry says where GENEVE goes; the other direction's
    // names the same appliance.
    let key = flow_key(p.vpc_id, ip.src, ip.dst, ports(i, &ip)?, ip.proto);
    let e = flow(h, &key).ok_or_else(|| format!("no conntrack entry for {key:?}"))?;
    let sent = (e.new_src, e.new_dst, e.dst_mac, e.src_mac, e.out_ifindex);
    let want = (
        g.src,
        g.dst,
        g.eth_dst,
        appl_port.link.mac,
        appl_port.link.ifindex,
    );
    if e.flags & FLOW_GWLB == 0 || e.endpoint_id != numeric_id(&ep.id) || sent != want {
        return Err(format!("the flow's entry: {key:?} -> {e:?}"));
    }
    let rev = key_reversed(&key);
    if rev == key {
        // A packet from an address to itself (ICMP echo with one identifier, or equal
        // ports): its one entry is both directions' (found in seed 1796189276201949799).
        return Ok(());
    }
    match flow(h, &rev) {
        Some(back)
            if back.flags & FLOW_GWLB == 0
                || back.endpoint_id != e.endpoint_id
                || back.new_dst != e.new_dst
                || back.direction == e.direction =>
        {
            Err(format!(
                "the flow's entries: {key:?} -> {e:?}; reverse -> {back:?}"
            ))
        }
        Some(_) => Ok(()),
        None => sc.partner_evicted::<FlowEntry>(h, &rev),
    }
}

fn key_reversed(k: &FlowKey) -> FlowKey {
    flow_key(k.vpc_id, k.dst, k.src, (k.dport, k.sport), k.proto)
}

/// GENEVE an appliance returned, as `returned_geneve` reads it.
struct Returned<'s> {
    outer: Ip,
    ep: &'s Endpoint,
    /// The endpoint id and the VPC id (attachment) its options name.
    endpoint: u32,
    attachment: u32,
    /// Where the inner packet starts, and where the UDP datagram ends.
    inner: usize,
    udp_end: usize,
}

/// GENEVE from an appliance of a GWLB service in the port's VPC: a sound IPv4 header (not
/// a fragment), UDP to port 6081 whose length fits; version 0, no OAM, `protocol` inside,
/// options inside the datagram, no unknown critical one, AWS's three of their exact
/// lengths, naming an endpoint of that service and its VPC.
fn returned_geneve<'s>(
    sc: &'s Scenario,
    o: &Outcome,
    protocol: u16,
) -> Result<Returned<'s>, String> {
    let (i, p) = (o.input, o.port);
    let ip = Ip::at(i, ETH)?;
    let l4 = ip.l4();
    if !ip.checksum_ok(i) || ip.fragment || ip.proto != 17 || l4 + 8 > ip.end() {
        return Err("the input is no sound UDP packet".into());
    }
    if be16(i, l4 + 2) != GENEVE_PORT {
        return Err("the input is not GENEVE".into());
    }
    let svc = sc
        .state
        .services
        .iter()
        .find(|s| {
            s.kind == ServiceType::Gwlb
                && numeric_id(&s.vpc) == p.vpc_id
                && s.backends.iter().any(|b| v4(&b.address) == ip.src)
        })
        .ok_or_else(|| format!("from {}, not an appliance", addr(ip.src)))?;
    let udp_end = l4 + be16(i, l4 + 4) as usize;
    if be16(i, l4 + 4) < 16 || udp_end > ip.end() {
        return Err("UDP length".into());
    }
    let gn = l4 + 8;
    let opts_end = gn + 8 + (i[gn] & 0x3f) as usize * 4;
    if i[gn] >> 6 != 0 || i[gn + 1] & 0x80 != 0 || be16(i, gn + 2) != protocol {
        return Err(format!("GENEVE header {:02x?}", &i[gn..gn + 8]));
    }
    if opts_end > udp_end {
        return Err("GENEVE options past the packet".into());
    }
    let (mut endpoint, mut attachment, mut seen) = (0u32, 0u32, 0u8);
    let mut at = gn + 8;
    while at < opts_end {
        let (class, kind, len) = (be16(i, at), i[at + 2], (i[at + 3] & 0x1f) as usize * 4);
        if at + 4 + len > opts_end {
            return Err("a GENEVE option past the options".into());
        }
        match (class, kind & 0x7f) {
            (GWLB_OPTION_CLASS, k @ 1..=3) => {
                if len != if k == 3 { 4 } else { 8 } {
                    return Err(format!("GWLB option {k} of {len} bytes"));
                }
                let low = u32::from_be_bytes(i[at + len..at + 4 + len].try_into().unwrap());
                match k {
                    1 => endpoint = low,
                    2 => attachment = low,
                    _ => {}
                }
                seen |= 1 << k;
            }
            _ if kind & 0x80 != 0 => return Err("an unknown critical option".into()),
            _ => {}
        }
        at += 4 + len;
    }
    if seen != 0b1110 {
        return Err(format!("GWLB options seen: {seen:#b}"));
    }
    let ep = sc
        .state
        .endpoints
        .iter()
        .find(|ep| numeric_id(&ep.id) == endpoint && ep.service == svc.id)
        .ok_or_else(|| format!("endpoint id {endpoint:#x} is no endpoint of {}", svc.id))?;
    if numeric_id(&ep.vpc) != attachment {
        return Err(format!("attachment {attachment:#x} is not {}'s VPC", ep.id));
    }
    Ok(Returned {
        outer: ip,
        ep,
        endpoint,
        attachment,
        inner: opts_end,
        udp_end,
    })
}

/// GENEVE with IPv4 inside from an appliance (`returned_geneve`; `probe`: whose inner
/// destination's MAC is not known yet): the inner packet within the datagram, a sound
/// header, not a fragment, of a flow of the endpoint the options name through that
/// appliance. Delivered: the inner packet byte for byte to the flow's peer from the VPC's
/// port. Asked for: an ARP request (RFC 5227 probe) for the inner destination.
fn from_appliance(sc: &Scenario, h: &Harness, o: &Outcome, probe: bool) -> Result<(), String> {
    let (i, out) = (o.input, o.out);
    let g = returned_geneve(sc, o, 0x0800)?;
    if g.inner + 20 > g.udp_end {
        return Err("GENEVE options past the packet".into());
    }
    let q = Ip::at(&i[..g.udp_end], g.inner)
        .map_err(|e| format!("delivered what the UDP datagram does not hold: {e}"))?;
    if !q.checksum_ok(i) || q.fragment {
        return Err("delivered a bad inner header or a fragment".into());
    }
    l4_checksum(i, &q).map_err(|e| format!("delivered what should have been dropped: {e}"))?;
    let (ep, attachment, endpoint) = (g.ep, g.attachment, g.endpoint);
    let routed = |a: [u8; 4]| ep.routes.iter().any(|r| r.contains(&IpAddr::V4(addr(a))));
    if !routed(q.src) && !routed(q.dst) {
        return Err(format!(
            "{} -> {}: neither end is routed to {}",
            addr(q.src),
            addr(q.dst),
            ep.id
        ));
    }
    let cp = sc
        .port_of_vpc(attachment)
        .ok_or("no port in the endpoint's VPC")?;
    let key = flow_key(attachment, q.src, q.dst, ports(i, &q)?, q.proto);
    let e = flow(h, &key).ok_or_else(|| format!("no conntrack entry for {key:?}"))?;
    if e.flags & FLOW_GWLB == 0 || e.endpoint_id != endpoint || e.new_dst != g.outer.src {
        return Err(format!("the flow's entry {key:?} -> {e:?}"));
    }
    if probe {
        let mut want = vec![0xff; 6];
        want.extend_from_slice(&cp.link.mac);
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        want.extend_from_slice(&cp.link.mac);
        want.extend_from_slice(&[0; 10]);
        want.extend_from_slice(&q.dst);
        if e.peer_mac != [0; 6] {
            return Err(format!("asked for a known MAC {:02x?}", e.peer_mac));
        }
        return same_except("ARP probe", out, &want, &[]);
    }
    if e.peer_mac == [0; 6] {
        return Err(format!("delivered to MAC {:02x?}", e.peer_mac));
    }
    let mut want = e.peer_mac.to_vec();
    want.extend_from_slice(&cp.link.mac);
    want.extend_from_slice(&[0x08, 0x00]);
    want.extend_from_slice(&i[g.inner..]);
    same_except("delivered packet", out, &want, &[])
}

/// A packet for a GWLB endpoint that would not fit the appliance's link once in GENEVE:
/// an ICMP frag-needed from the endpoint's ENI to the sender, quoting its header and 8
/// bytes, with the MTU that fits.
fn frag_needed(sc: &Scenario, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let (ip, ep, svc) = gwlb_input(sc, o, "answered")?;
    let appl_port = sc
        .port_of_vpc(numeric_id(&svc.vpc))
        .ok_or("no port in the appliances' VPC")?;
    let mtu = appl_port.link.mtu as usize;
    if ip.tot + GENEVE_OVERHEAD <= mtu {
        return Err(format!("{} bytes fit an MTU of {mtu} in GENEVE", ip.tot));
    }
    let eni = ep.zones.first().map(|z| v4(&z.eni)).ok_or("no ENI")?;
    let quote = ip.ihl + 8;
    let tot = (28 + quote) as u16;
    let mut want = i[6..12].to_vec();
    want.extend_from_slice(&p.link.mac);
    want.extend_from_slice(&[0x08, 0x00, 0x45, 0xc0]);
    want.extend_from_slice(&tot.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    want.extend_from_slice(&eni);
    want.extend_from_slice(&ip.src);
    want.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    want.extend_from_slice(&((mtu - GENEVE_OVERHEAD) as u16).to_be_bytes());
    want.extend_from_slice(&i[ETH..ETH + quote]);
    same_except("frag-needed", out, &want, &[ETH + 10, ETH + 22])?;
    let oip = Ip::at(out, ETH)?;
    if !oip.checksum_ok(out) {
        return Err("IPv4 header checksum".into());
    }
    if l4_checksum(out, &oip)? != Some(true) {
        return Err("ICMP checksum".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The fuzzer.

/// The counters that moved between two reads, by how much.
fn moved(before: &[(Reason, u64)], after: &[(Reason, u64)]) -> Vec<(Reason, u64)> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| a.1 != b.1)
        .map(|(b, a)| (a.0, a.1.wrapping_sub(b.1)))
        .collect()
}

/// Runs one frame of a scenario's setup (the flows and neighbours its seeds need), checked
/// as the fuzzer checks its frames and counted as `want`; what came out.
fn setup_run(h: &mut Harness, sc: &Scenario, ifindex: u32, frame: &[u8], want: Reason) -> Vec<u8> {
    let before = counters(h);
    let (act, out) = h.run(ifindex, frame).expect("a setup frame's test run");
    sc.note_next_hops(h);
    let r = check(
        sc,
        h,
        ifindex,
        frame,
        act,
        &out,
        &moved(&before, &counters(h)),
    )
    .unwrap_or_else(|e| panic!("setup: verdict {act}: {e}\n in: {frame:02x?}\nout: {out:02x?}"));
    assert_eq!(r, want, "setup frame {frame:02x?}");
    out
}

fn fuzz(
    name: &str,
    h: &mut Harness,
    sc: &Scenario,
    corpus: &[(u32, Vec<u8>)],
    required: &[Reason],
) {
    let seed = seed();
    let mut rng = Rng(seed);
    let ifaces = [h.consumer.ifindex, h.provider.ifindex];
    let start = Instant::now();
    let stats = Counters::new(h);
    let first = counters(h);
    assert_eq!(
        stats.read(),
        first,
        "PL_STATS read in one batch and key by key"
    );
    let mut before = first.clone();
    sc.note_next_hops(h);
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut runs = 0u64;
    while start.elapsed() < budget() {
        let (ifindex, base) = &corpus[rng.below(corpus.len())];
        // A seed carrying IPv6 (bare or in GENEVE) mostly gets IPv6's mutations.
        let frame = match ipv6::ipv6_at(base) {
            Some(at) if rng.below(4) > 0 => ipv6::mutate6(&mut rng, base, at),
            _ => mutate(&mut rng, base),
        };
        // Mostly where the frame belongs, sometimes the other side.
        let ifindex = if rng.below(8) == 0 {
            ifaces[rng.below(2)]
        } else {
            *ifindex
        };
        if frame.len() < 14 {
            continue; // the kernel refuses to run a frame shorter than Ethernet
        }
        let (act, out) = h
            .run(ifindex, &frame)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: test run of {frame:02x?}: {e:#}"));
        runs += 1;
        let after = stats.read();
        sc.note_next_hops(h);
        match check(sc, h, ifindex, &frame, act, &out, &moved(&before, &after)) {
            Ok(r) => *seen.entry(r.as_str()).or_default() += 1,
            Err(e) => panic!(
                "{name}: seed {seed}, run {runs}: verdict {act}: {e}\n in: {frame:02x?}\nout: \
                 {out:02x?}"
            ),
        }
        before = after;
    }
    // Every counter's movement is what the frames were checked for, one by one.
    let last = counters(h);
    assert_eq!(last, before, "PL_STATS read in one batch and key by key");
    for ((r, a), (_, b)) in last.iter().zip(&first) {
        assert_eq!(
            a - b,
            seen.get(r.as_str()).copied().unwrap_or(0),
            "{name}: counter {} against the frames",
            r.as_str()
        );
    }
    assert!(runs > 1000, "{name}: only {runs} frames in the budget");
    // The checks above ran on every kind of frame the corpus's valid frames make.
    for r in required {
        assert!(
            seen.contains_key(r.as_str()),
            "{name}: seed {seed}: no frame counted as {} in {runs}: {seen:?}",
            r.as_str()
        );
    }
    let ipv6 = if sc.valid6.get() > 0 {
        format!(
            " ({} whole IPv6 segments), {} IPv6 packets sent with a valid checksum",
            sc.whole_quotes.get(),
            sc.valid6.get()
        )
    } else {
        String::new()
    };
    eprintln!(
        "{name}: seed {seed}: {runs} frames ({:.0}/s), all consistent ({} ICMP quotes' L4 \
         checksums{ipv6}, {} flows with an evicted entry): {seen:?}",
        runs as f64 / start.elapsed().as_secs_f64(),
        sc.quoted_checksums.get(),
        sc.evicted.get()
    );
}

#[test]
fn endpoint_nat_survives_random_and_mutated_frames() {
    let state = packet_state();
    let mut h = Harness::new(&state).unwrap();
    let sc = Scenario::new(&h, &state);
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    // Live flows, so that mutations of replies meet conntrack entries.
    let (_, syn_out) = h.run(cif, &tcp_to_eni(&h, 40000, true, b"")).unwrap();
    let snat = [syn_out[26], syn_out[27], syn_out[28], syn_out[29]];
    let port = u16::from_be_bytes([syn_out[34], syn_out[35]]);
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, b"0123456789abcdef")
        .unwrap();
    // ICMP port unreachables from the load balancer quoting a NATed packet: the SYN's
    // header and 8 bytes (no TCP checksum in the quote), the whole SYN, a UDP query's
    // header and 8 bytes (its checksum quoted).
    let (_, udp_out) = h.run(cif, &udp_to_eni(&h, 5353, b"query", false)).unwrap();
    let unreach = |sent: &[u8], len: usize| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
            .ipv4(LB, a4(sent, 26), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut v, &sent[14..14 + len])
            .unwrap();
        v
    };
    let unreach_short = unreach(&syn_out, 28);
    let unreach_whole = unreach(&syn_out, syn_out.len() - 14);
    let unreach_udp = unreach(&udp_out, 28);
    let corpus = vec![
        (cif, tcp_to_eni(&h, 40000, true, b"")),
        (cif, tcp_to_eni(&h, 40000, false, b"payload bytes")),
        (cif, udp_to_eni(&h, 5353, b"query", false)),
        (cif, udp_to_eni(&h, 5354, b"query", true)),
        (cif, echo),
        (cif, arp_request(CLIENT_MAC, CLIENT, ENI)),
        (pif, tcp_from_lb(&h, snat, port, b"answer")),
        (pif, unreach_short),
        (pif, unreach_whole),
        (pif, unreach_udp),
        (pif, arp_request(LB_MAC, LB, SNAT[0])),
    ];
    use Reason::*;
    let required = [
        ForwardNewFlow,
        ForwardToService,
        ForwardToConsumer,
        IcmpEchoReply,
        IcmpErrorTranslated,
        ArpReply,
    ];
    fuzz("endpoint", &mut h, &sc, &corpus, &required);
    assert!(
        sc.quoted_checksums.get() > 0,
        "endpoint: no translated ICMP error quoted an L4 checksum"
    );
}

#[test]
fn gwlb_survives_random_and_mutated_frames() {
    let (cross_zone, stickiness, failover) = (true, "five_tuple", "rebalance");
    let mut h = gwlb::harness_with(cross_zone, stickiness, failover);
    let sc = Scenario::new(&h, &gwlb::state(cross_zone, stickiness, failover));
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    let fwd = gwlb::tcp(&h, gwlb::CLIENT, gwlb::SERVER, 40000, 80, b"data");
    let back_syn = gwlb::tcp(&h, gwlb::SERVER, gwlb::CLIENT, 80, 40000, b"");
    let (_, enc) = h.run(cif, &fwd).unwrap();
    let ret = gwlb::returned(&enc);
    let arp_reply = frames::arp_reply(h.consumer.mac, gwlb::SERVER_MAC, gwlb::SERVER);
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(gwlb::CLIENT_MAC, h.consumer.mac)
        .ipv4(gwlb::CLIENT, gwlb::SERVER, 64)
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"ping")
        .unwrap();
    let big = gwlb::tcp(&h, gwlb::CLIENT, gwlb::SERVER, 40001, 80, &[1u8; 1440]);
    // The host's own traffic in the appliances' VPC: an appliance answering a health
    // check (to the load balancer's address, from the probed port, ACK set), and its ARP
    // for that address.
    let lb_addr: [u8; 4] = gwlb::GWLB_ADDR.parse::<Ipv4Addr>().unwrap().octets();
    let health_port = sc
        .host_peer(sc.port(pif).unwrap().vpc_id, gwlb::APPL_A)
        .expect("the appliance is a peer of the host");
    let mut health = Vec::new();
    PacketBuilder::ethernet2(gwlb::APPL_A_MAC, h.provider.mac)
        .ipv4(gwlb::APPL_A, lb_addr, 64)
        .tcp(health_port, 50000, 9000, 65000)
        .ack(77)
        .write(&mut health, b"HTTP/1.1 200 OK\r\n\r\n")
        .unwrap();
    let appl_arp = arp_request(gwlb::APPL_A_MAC, gwlb::APPL_A, lb_addr);
    let corpus = vec![
        (cif, fwd),
        (cif, back_syn),
        (cif, ping),
        (cif, big),
        (cif, arp_reply),
        (
            cif,
            arp_request(gwlb::CLIENT_MAC, gwlb::CLIENT, [10, 30, 0, 5]),
        ),
        (pif, ret),
        (pif, health),
        (pif, appl_arp),
    ];
    use Reason::*;
    let required = [
        GwlbToAppliance,
        GwlbFromAppliance,
        GwlbFragNeeded,
        ArpReply,
        PassHost,
        ArpPass,
    ];
    fuzz("gwlb", &mut h, &sc, &corpus, &required);
}

#[test]
fn ipv6_endpoint_nat_survives_random_and_mutated_frames() {
    let state = dual::dual_state();
    let mut h = Harness::new(&state).unwrap();
    let sc = Scenario::new(&h, &state);
    let corpus = ipv6::endpoint6_corpus(&mut h, &sc);
    use Reason::*;
    let required = [
        Forward6NewFlow,
        Forward6ToService,
        Forward6ToConsumer,
        Icmp6EchoReply,
        Icmp6ErrorTranslated,
        NdAdvert,
        NdLearned,
        DropIpv6ExtHeader,
        DropFragment,
        DropHopLimitExceeded,
        DropUdp6ZeroChecksum,
        DropBadNd,
    ];
    fuzz("endpoint6", &mut h, &sc, &corpus, &required);
    assert!(
        sc.whole_quotes.get() > 0 && sc.valid6.get() > 0,
        "endpoint6: no valid checksum kept valid ({} whole quotes, {} packets)",
        sc.whole_quotes.get(),
        sc.valid6.get()
    );
}

#[test]
fn ipv6_through_gwlb_survives_random_and_mutated_frames() {
    let (cross_zone, stickiness, failover) = (true, "five_tuple", "rebalance");
    let mut h = gwlb::harness6_with(cross_zone, stickiness, failover);
    let sc = Scenario::new(&h, &gwlb::state6(cross_zone, stickiness, failover));
    let corpus = ipv6::gwlb6_corpus(&mut h, &sc);
    use Reason::*;
    let required = [
        Gwlb6ToAppliance,
        Gwlb6FromAppliance,
        GwlbPacketTooBig,
        NdLearned,
    ];
    fuzz("gwlb6", &mut h, &sc, &corpus, &required);
    assert!(sc.valid6.get() > 0, "gwlb6: no valid checksum kept valid");
}
