//! The fuzzer's IPv6 side: decoding IPv6 as the data path's policy has it (etherparse
//! for the headers, this file's own walk of the extension header policy and its own
//! pseudo-header sums, never the product's code), the mutations that aim at IPv6 fields,
//! and the checks of what the data path does with IPv6 (NAT both ways, ICMPv6 errors,
//! echo, neighbour discovery, GWLB with IPv6 inside GENEVE).

use std::net::IpAddr;

use etherparse::Ipv6HeaderSlice;
use privatelink_common::{FlowEntry6, FlowKey6, Neighbor, VpcAddr6};
use privatelink_tests::dual::{
    self, LB6_MAC, NA, NEXTHDR_AUTH, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_ROUTING,
    NS, PADN6, client6, eni6, lb6, na_frame, ns_frame, v6, with_ext,
};

use super::*;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
/// The ICMPv6 errors the data path translates: Destination Unreachable, Packet Too Big,
/// Time Exceeded (RFC 4443 3).
const TRANSLATED_ERRORS: [u8; 3] = [1, 2, 3];
/// The extension headers the policy skips (hop-by-hop, routing, destination options),
/// and every extension header (RFC 8200 4, RFC 7045's list): one left after the walk
/// is refused (44, a fragment, as a fragment).
const SKIPPED: [u8; 3] = [0, 43, 60];
const EXTENSION_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];
const MAX_EXT_HEADERS: usize = 4;
const MAX_EXT_LEN: usize = 256;
/// IPv6's minimum link MTU (RFC 8200 5), the least a Packet Too Big may say.
const IPV6_MIN_MTU: usize = 1280;
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

// ---------------------------------------------------------------------------------------
// Decoding.

/// An IPv6 packet at `off` of a frame, complete by its limit: the fixed header decoded by
/// etherparse; the extension headers walked by the data path's policy (README: hop-by-hop
/// options first only, routing headers other than type 0 with no segment left,
/// destination options; at most 4 of them, none longer than 256 bytes; a fragment header
/// or any other extension header refused). What the data path sends on or answers passes.
#[derive(Clone, Copy)]
pub(super) struct Ip6 {
    off: usize,
    /// Where the packet ends (its payload length says).
    end: usize,
    hop: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// Where the upper-layer header starts, and its protocol.
    l4: usize,
    proto: u8,
}

impl Ip6 {
    fn at(frame: &[u8], off: usize) -> Result<Ip6, String> {
        Self::within(frame, off, frame.len())
    }

    fn within(frame: &[u8], off: usize, limit: usize) -> Result<Ip6, String> {
        let h = Ipv6HeaderSlice::from_slice(frame.get(off..limit).unwrap_or_default())
            .map_err(|e| format!("IPv6 header at {off}: {e}"))?;
        let payload = h.payload_length() as usize;
        let end = off + 40 + payload;
        if payload == 0 || end > limit {
            return Err(format!(
                "IPv6 packet at {off}: payload length {payload} for {} bytes",
                limit - off - 40
            ));
        }
        let (mut next, mut l4) = (h.next_header().0, off + 40);
        for n in 0.. {
            if !SKIPPED.contains(&next) {
                break;
            }
            if n == MAX_EXT_HEADERS || (next == 0 && n > 0) || l4 + 8 > end {
                return Err(format!(
                    "extension header {n} ({next}): too many, hop-by-hop not first, or past \
                     the packet"
                ));
            }
            let len = (frame[l4 + 1] as usize + 1) * 8;
            let (kind, segments_left) = (frame[l4 + 2], frame[l4 + 3]);
            if next == 43 && (kind == 0 || segments_left != 0) {
                return Err(format!(
                    "routing header type {kind}, {segments_left} segments left"
                ));
            }
            if len > MAX_EXT_LEN || l4 + len > end {
                return Err(format!("extension header {n} of {len} bytes"));
            }
            next = frame[l4];
            l4 += len;
        }
        if EXTENSION_HEADERS.contains(&next) {
            return Err(format!("extension header {next} refused (44: a fragment)"));
        }
        Ok(Ip6 {
            off,
            end,
            hop: h.hop_limit(),
            src: h.source(),
            dst: h.destination(),
            l4,
            proto: next,
        })
    }
}

/// RFC 4291: multicast (ff00::/8), unspecified (::) and loopback (::1) sources are never
/// answered (2.5.2, 2.5.3, 2.7); link-local ones (fe80::/10) never leave their link.
fn answerable(a: &[u8; 16]) -> bool {
    let low = a[..15].iter().all(|b| *b == 0) && a[15] <= 1;
    a[0] != 0xff && !low
}

fn link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

fn forwardable(a: &[u8; 16]) -> bool {
    answerable(a) && !link_local(a)
}

fn a16(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().unwrap()
}

fn addr6(a: [u8; 16]) -> std::net::Ipv6Addr {
    a.into()
}

/// The ones' complement sum of an upper-layer message and its pseudo-header (RFC 8200
/// 8.1): 0xffff when the message's checksum is right. Written here, not the product's.
fn pseudo_sum(src: &[u8; 16], dst: &[u8; 16], proto: u8, msg: &[u8]) -> u32 {
    let mut b = Vec::with_capacity(40 + msg.len());
    b.extend_from_slice(src);
    b.extend_from_slice(dst);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, proto]);
    b.extend_from_slice(msg);
    ones_sum(&b)
}

/// Whether the upper-layer checksum of the IPv6 packet verifies: Some for TCP, UDP and
/// ICMPv6 (a UDP checksum of 0, which IPv6 does not allow, is not valid), None for other
/// protocols. Decided twice, by etherparse and by `pseudo_sum`, which must agree. An
/// error when etherparse cannot decode the TCP, UDP or ICMPv6 header the packet claims
/// (cut short, a data offset or length past the packet): such a packet is never sent on.
fn l4_checksum6(frame: &[u8], ip: &Ip6) -> Result<Option<bool>, String> {
    if !matches!(ip.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMPV6) {
        return Ok(None);
    }
    let p = SlicedPacket::from_ip(&frame[ip.off..ip.end])
        .map_err(|e| format!("etherparse cannot decode the packet: {e}"))?;
    let Some(NetSlice::Ipv6(v)) = &p.net else {
        return Err("etherparse finds no IPv6 packet".into());
    };
    let h = v.header().to_header();
    // 0 and 0xffff are one number in ones' complement: either verifies.
    let same = |a: u16, b: u16| a == b || (a | b == 0xffff && (a == 0 || b == 0));
    let (by_etherparse, covered) = match (&p.transport, ip.proto) {
        (Some(TransportSlice::Tcp(t)), PROTO_TCP) => {
            // Over the segment's bytes (its header type drops the reserved bits).
            let want = t
                .calc_checksum_ipv6(h.source, h.destination)
                .map_err(|e| format!("etherparse cannot compute the TCP checksum: {e}"))?;
            (same(want, t.checksum()), ip.end - ip.l4)
        }
        (Some(TransportSlice::Udp(u)), PROTO_UDP) => {
            if u.checksum() == 0 {
                return Ok(Some(false));
            }
            let want = u
                .to_header()
                .calc_checksum_ipv6(&h, u.payload())
                .map_err(|e| format!("etherparse cannot compute the UDP checksum: {e}"))?;
            (same(want, u.checksum()), u.length() as usize)
        }
        (Some(TransportSlice::Icmpv6(m)), PROTO_ICMPV6) => {
            (m.is_checksum_valid(h.source, h.destination), ip.end - ip.l4)
        }
        _ => {
            return Err(format!(
                "etherparse decodes no protocol {} header in it",
                ip.proto
            ));
        }
    };
    let by_sum = pseudo_sum(&ip.src, &ip.dst, ip.proto, &frame[ip.l4..ip.l4 + covered]) == 0xffff;
    if by_sum != by_etherparse {
        return Err(format!(
            "etherparse ({by_etherparse}) and the pseudo-header sum ({by_sum}) disagree on \
             the protocol {} checksum",
            ip.proto
        ));
    }
    Ok(Some(by_sum))
}

/// The ports the flow table keys the packet by: TCP/UDP ports, an ICMPv6 echo's
/// identifier on both sides, else zeros.
fn ports6(frame: &[u8], ip: &Ip6) -> (u16, u16) {
    match ip.proto {
        PROTO_TCP | PROTO_UDP if ip.l4 + 4 <= ip.end => {
            (be16(frame, ip.l4), be16(frame, ip.l4 + 2))
        }
        PROTO_ICMPV6
            if ip.l4 + 8 <= ip.end && matches!(frame[ip.l4], ECHO_REQUEST | ECHO_REPLY) =>
        {
            let id = be16(frame, ip.l4 + 4);
            (id, id)
        }
        _ => (0, 0),
    }
}

/// Counts a packet sent on with a valid upper-layer checksum (the valid → valid paths).
fn count_valid(sc: &Scenario, valid: Option<bool>) {
    if valid == Some(true) {
        sc.valid6.set(sc.valid6.get() + 1);
    }
}

// ---------------------------------------------------------------------------------------
// The maps.

fn key6(vpc_id: u32, src: [u8; 16], dst: [u8; 16], ports: (u16, u16), proto: u8) -> FlowKey6 {
    FlowKey6::new(vpc_id, src, dst, ports.0, ports.1, proto)
}

fn flow6(h: &Harness, key: &FlowKey6) -> Option<FlowEntry6> {
    h.dp.flow::<FlowEntry6>(key).expect("reading PL_CONNTRACK6")
}

/// What `PL_GWLB_NEIGH6` holds for an inner destination: None, a placeholder (zeros: asked
/// for) or its MAC.
fn gwlb_neighbor6(h: &Harness, vpc_id: u32, addr: [u8; 16]) -> Option<[u8; 6]> {
    let m: BpfHashMap<_, VpcAddr6, Neighbor> = BpfHashMap::try_from(
        h.dp.map(map_names::GWLB_NEIGHBORS6)
            .expect("PL_GWLB_NEIGH6"),
    )
    .expect("PL_GWLB_NEIGH6 is a hash map");
    match m.get(&VpcAddr6 { vpc_id, addr }, 0) {
        Ok(n) => Some(n.mac),
        Err(MapError::KeyNotFound) => None,
        Err(e) => panic!("reading PL_GWLB_NEIGH6: {e}"),
    }
}

/// An IPv4 address as the IPv6 flow entries of GWLB flows hold it (IPv4-mapped).
fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10..12].copy_from_slice(&[0xff, 0xff]);
    m[12..].copy_from_slice(&a);
    m
}

/// The port's link-local address: fe80::/64 with the modified EUI-64 of its MAC (RFC 4291
/// 2.5.1, appendix A).
fn port_link_local(m: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfe, 0x80]);
    a[8..].copy_from_slice(&[m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    a
}

/// The flow cookie of an IPv6 tuple, by the README's definition
/// (`gwlb::reference_cookie6`, written out on its own).
fn cookie6(key: &FlowKey6) -> u32 {
    privatelink_tests::gwlb::reference_cookie6(
        (key.src, key.sport),
        (key.dst, key.dport),
        key.proto,
    )
}

// ---------------------------------------------------------------------------------------
// What the state gives IPv6.

impl Scenario {
    /// The interface endpoint whose ENI has IPv6 address `a` in VPC `vpc_id`, and the IPv6
    /// address of its zone's load balancer (the first of the zone's, else of the
    /// service's, as `desired` picks).
    fn eni6(&self, vpc_id: u32, a: [u8; 16]) -> Option<(&Endpoint, &EndpointService, [u8; 16])> {
        self.state.endpoints.iter().find_map(|ep| {
            let svc = self.service(ep);
            let z = ep
                .zones
                .iter()
                .find(|z| z.eni6.map(|e| e.octets()) == Some(a))?;
            if svc.kind != ServiceType::Interface || numeric_id(&ep.vpc) != vpc_id {
                return None;
            }
            let zone = &self
                .state
                .vpc(&ep.vpc)?
                .vswitches
                .iter()
                .find(|v| v.id == z.vswitch)?
                .zone;
            let own = svc.backends.iter().find(|b| &b.zone == zone);
            let lb = own.or(svc.backends.first())?.address6?;
            Some((ep, svc, lb.octets()))
        })
    }

    /// An IPv6 SNAT address of a (NAT) service in VPC `vpc_id`.
    fn snat6(&self, vpc_id: u32, a: [u8; 16]) -> bool {
        self.state.services.iter().any(|s| {
            s.gwlb.is_none()
                && numeric_id(&s.vpc) == vpc_id
                && s.snat6.iter().any(|x| x.octets() == a)
        })
    }

    /// The IPv6 addresses the data path answers solicitations for: ENIs and SNAT addresses.
    fn ours6(&self, vpc_id: u32, a: [u8; 16]) -> bool {
        let eni = self.state.endpoints.iter().any(|ep| {
            numeric_id(&ep.vpc) == vpc_id
                && self.service(ep).gwlb.is_none()
                && ep
                    .zones
                    .iter()
                    .any(|z| z.eni6.map(|e| e.octets()) == Some(a))
        });
        eni || self.snat6(vpc_id, a)
    }

    /// An IPv6 next hop the daemon registers (a dual-stack service's load balancer), whose
    /// MAC the data path learns.
    fn next_hop6(&self, vpc_id: u32, a: [u8; 16]) -> bool {
        self.state.services.iter().any(|s| {
            s.gwlb.is_none()
                && s.ip_version.is_dualstack()
                && !s.snat6.is_empty()
                && numeric_id(&s.vpc) == vpc_id
                && s.backends
                    .iter()
                    .any(|b| b.address6.map(|x| x.octets()) == Some(a))
        })
    }

    /// Notes the MACs the IPv6 next hops have now (after every frame).
    pub(super) fn note_next_hops6(&self, h: &Harness) {
        let mut hops = self.next_hops6.borrow_mut();
        for s in &self.state.services {
            let vpc_id = numeric_id(&s.vpc);
            for a in s.backends.iter().filter_map(|b| b.address6) {
                if let Some(m) = h.dp.neighbor6(vpc_id, a.octets()) {
                    hops.entry((vpc_id, a.octets())).or_default().insert(m);
                }
            }
        }
    }

    fn was_next_hop6(&self, vpc_id: u32, a: [u8; 16], m: [u8; 6]) -> bool {
        self.next_hops6
            .borrow()
            .get(&(vpc_id, a))
            .is_some_and(|s| s.contains(&m))
    }
}

// ---------------------------------------------------------------------------------------
// Mutations.

/// Where a seed's IPv6 header lies: right after Ethernet, or inside GENEVE (an
/// appliance's return, outer IPv4 without options, 0x86DD inside).
pub(super) fn ipv6_at(f: &[u8]) -> Option<usize> {
    if f.len() >= ETH + 40 && f[12..14] == [0x86, 0xdd] {
        return Some(ETH);
    }
    let inner = ETH + GENEVE_OVERHEAD;
    let geneve = f.len() >= inner + 40
        && f[12..14] == [0x08, 0x00]
        && f[14] == 0x45
        && f[23] == PROTO_UDP
        && be16(f, 36) == GENEVE_PORT
        && be16(f, 44) == 0x86dd;
    geneve.then_some(inner)
}

/// Offsets from the IPv6 header worth aiming at: version, traffic class and flow label,
/// payload length, next header, hop limit, address bytes (the first, those that tell our
/// addresses apart), and what follows the fixed header: ports, TCP offset and flags, UDP
/// length and checksum, ICMPv6 type, code, checksum and echo identifier, an extension
/// header's next header, length, routing type and segments left, an ND target and its
/// options' types and lengths.
const FIELDS6: &[usize] = &[
    0, 1, 3, 4, 5, 6, 7, 8, 9, 23, 24, 25, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 52, 53, 55, 63,
    64, 65, 66, 71, 72, 73,
];

/// Next-header values: upper layers (handled or not) and every extension header.
const NEXT_HEADERS: &[u8] = &[
    0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135, 139, 140, 253, 254, 1, 4, 41,
];

/// A mutation of `seed`, whose IPv6 header is at `ip`: bit flips, truncation, appended
/// bytes, fields, the payload length, a next header, extension headers inserted or
/// removed, the hop limit, or a random packet behind the seed's Ethernet header. Most
/// then get their upper-layer checksum recomputed, so that mutations reach past the
/// checks of it (neighbour discovery's) and the NAT paths keep valid sums valid; a
/// GENEVE seed most often gets its outer lengths and header checksum fixed.
pub(super) fn mutate6(rng: &mut Rng, seed: &[u8], ip: usize) -> Vec<u8> {
    let mut f = seed.to_vec();
    match rng.below(10) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(rng.below(f.len() + 1)),
        2 => f.extend((0..1 + rng.below(64)).map(|_| rng.next() as u8)),
        3 => {
            for _ in 0..1 + rng.below(3) {
                let i = ip + FIELDS6[rng.below(FIELDS6.len())];
                if i < f.len() {
                    f[i] = rng.next() as u8;
                }
            }
        }
        4 => set_payload_length(rng, &mut f, ip),
        5 => set_next_header(rng, &mut f, ip),
        6 => {
            for _ in 0..1 + rng.below(3) {
                insert_ext(rng, &mut f, ip);
            }
        }
        7 => remove_ext(&mut f, ip),
        8 => {
            const HOPS: [u8; 6] = [0, 1, 2, 64, 254, 255];
            f[ip + 7] = HOPS[rng.below(HOPS.len())];
        }
        _ => f = random6(rng, seed, ip),
    }
    if rng.below(3) > 0 {
        fix_l4_checksum6(&mut f, ip);
    }
    if ip != ETH && rng.below(3) > 0 {
        fix_geneve_lengths(&mut f);
    }
    f
}

fn set_payload_length(rng: &mut Rng, f: &mut [u8], ip: usize) {
    let actual = f.len().saturating_sub(ip + 40) as u16;
    let now = be16(f, ip + 4);
    let small = 1 + rng.below(8) as u16;
    let v = match rng.below(6) {
        0 => actual,
        1 => now.wrapping_add(small),
        2 => now.wrapping_sub(small),
        3 => 0,
        4 => 0xffff,
        _ => rng.next() as u16,
    };
    f[ip + 4..ip + 6].copy_from_slice(&v.to_be_bytes());
}

/// Where each next-header field of the chain lies (the fixed header's first), as far as
/// the frame holds them: extension headers of every kind walked by their own lengths.
fn next_header_fields(f: &[u8], ip: usize) -> Vec<usize> {
    let mut fields = vec![ip + 6];
    let mut at = ip + 40;
    for _ in 0..8 {
        let next = f[*fields.last().unwrap()];
        if !EXTENSION_HEADERS.contains(&next) || at + 8 > f.len() {
            break;
        }
        fields.push(at);
        at += match next {
            44 => 8,
            51 => (f[at + 1] as usize + 2) * 4,
            _ => (f[at + 1] as usize + 1) * 8,
        };
    }
    fields
}

fn set_next_header(rng: &mut Rng, f: &mut [u8], ip: usize) {
    let fields = next_header_fields(f, ip);
    let at = fields[rng.below(fields.len())];
    f[at] = if rng.below(4) == 0 {
        rng.next() as u8
    } else {
        NEXT_HEADERS[rng.below(NEXT_HEADERS.len())]
    };
}

/// Inserts an extension header right after the fixed header: one the policy skips (PadN
/// options or random bytes; a routing header of type 0, 2, 3 or 4 with 0 or 1 segment
/// left), a fragment (first or later, more or not), AH, or one it refuses; of 1 to 3
/// units, sometimes more than 256 bytes. The payload length grows by it.
fn insert_ext(rng: &mut Rng, f: &mut Vec<u8>, ip: usize) {
    const KINDS: [u8; 14] = [0, 0, 43, 43, 60, 60, 44, 51, 50, 135, 139, 140, 253, 254];
    let kind = KINDS[rng.below(KINDS.len())];
    let units = if rng.below(8) == 0 {
        32 + rng.below(3)
    } else {
        rng.below(3)
    };
    let mut h: Vec<u8> = (0..(units + 1) * 8).map(|_| rng.next() as u8).collect();
    h[0] = f[ip + 6];
    h[1] = units as u8;
    match kind {
        43 => {
            h[2] = [0, 2, 3, 4][rng.below(4)];
            h[3] = (rng.below(4) == 0) as u8;
        }
        44 => {
            h.truncate(8);
            h[1] = 0;
        }
        51 => h[1] = (h.len() / 4 - 2) as u8,
        0 | 60 if rng.below(2) == 0 => {
            let pad = h.len() - 4;
            h[2..].fill(0);
            h[2] = 1;
            h[3] = pad as u8;
        }
        _ => {}
    }
    let len = h.len() as u16;
    f.splice(ip + 40..ip + 40, h);
    f[ip + 6] = kind;
    let plen = be16(f, ip + 4).wrapping_add(len);
    f[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
}

/// Takes the first extension header out (the payload length shrinks by it).
fn remove_ext(f: &mut Vec<u8>, ip: usize) {
    let fields = next_header_fields(f, ip);
    let Some(&second) = fields.get(1) else {
        return;
    };
    let end = fields.get(2).copied().unwrap_or_else(|| {
        second
            + match f[ip + 6] {
                44 => 8,
                51 => (f[second + 1] as usize + 2) * 4,
                _ => (f[second + 1] as usize + 1) * 8,
            }
    });
    let end = end.min(f.len());
    f[ip + 6] = f[second];
    let len = (end - second) as u16;
    f.drain(second..end);
    let plen = be16(f, ip + 4).wrapping_sub(len);
    f[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
}

/// Random bytes: now and then a whole random frame, else a random packet behind the
/// seed's headers up to the IPv6 one, half the time made plausible (version 6, a payload
/// length that fits, a next header from the list, the seed's addresses, hop limit 255).
fn random6(rng: &mut Rng, seed: &[u8], ip: usize) -> Vec<u8> {
    let n = rng.below(200);
    let bytes = |rng: &mut Rng| (0..n).map(|_| rng.next() as u8).collect::<Vec<u8>>();
    if rng.below(4) == 0 {
        return bytes(rng);
    }
    let mut f = seed[..ip].to_vec();
    f.extend(bytes(rng));
    if f.len() >= ip + 40 && rng.below(2) == 0 {
        f[ip] = 0x60 | (f[ip] & 0x0f);
        let plen = (f.len() - ip - 40) as u16;
        f[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
        f[ip + 6] = NEXT_HEADERS[rng.below(NEXT_HEADERS.len())];
        f[ip + 7] = 255;
        f[ip + 8..ip + 40].copy_from_slice(&seed[ip + 8..ip + 40]);
    }
    f
}

/// Recomputes the TCP, UDP or ICMPv6 checksum of the IPv6 packet at `ip` where its
/// headers can be walked (every extension header by its own length); UDP's 0 goes as
/// 0xffff.
fn fix_l4_checksum6(f: &mut [u8], ip: usize) {
    if f.len() < ip + 40 || f[ip] >> 4 != 6 {
        return;
    }
    let end = (ip + 40 + be16(f, ip + 4) as usize).min(f.len());
    let fields = next_header_fields(&f[..end], ip);
    let last = *fields.last().unwrap();
    let proto = f[last];
    let l4 = if fields.len() == 1 {
        ip + 40
    } else {
        last + match f[fields[fields.len() - 2]] {
            44 => 8,
            51 => (f[last + 1] as usize + 2) * 4,
            _ => (f[last + 1] as usize + 1) * 8,
        }
    };
    let (at, covered) = match proto {
        PROTO_TCP if l4 + 20 <= end => (16, end - l4),
        PROTO_UDP if l4 + 8 <= end => (6, (be16(f, l4 + 4) as usize).min(end - l4)),
        PROTO_ICMPV6 if l4 + 8 <= end => (2, end - l4),
        _ => return,
    };
    f[l4 + at..l4 + at + 2].fill(0);
    let (src, dst) = (a16(f, ip + 8), a16(f, ip + 24));
    let mut c = !(pseudo_sum(&src, &dst, proto, &f[l4..l4 + covered]) as u16);
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    f[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// GENEVE's outer IPv4 total length and UDP length made the frame's again (after its
/// inner packet changed size), and the header checksum.
fn fix_geneve_lengths(f: &mut [u8]) {
    if f.len() < ETH + 28 {
        return;
    }
    let tot = (f.len() - ETH) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[38..40].copy_from_slice(&(tot - 20).to_be_bytes());
    fix_ip_checksum(f);
}

// ---------------------------------------------------------------------------------------
// The checks.

/// A neighbour discovery message as RFC 4861 7.1 has the data path accept it.
struct Nd {
    ip: Ip6,
    target: [u8; 16],
    /// The first link-layer address option of the type asked for.
    lladdr: Option<[u8; 6]>,
}

/// The input as a solicitation or advertisement (`ty`) the data path may act on: ICMPv6
/// right after the fixed header, hop limit 255, code 0, 24 to 64 bytes in 8-byte units,
/// a valid checksum, a target that is not multicast, no option of length 0; with the
/// first link-layer address option of type `option`.
fn nd(frame: &[u8], ty: u8, option: u8) -> Result<Nd, String> {
    let ip = Ip6::at(frame, ETH)?;
    if frame[12..14] != [0x86, 0xdd] || frame[ETH + 6] != PROTO_ICMPV6 || ip.hop != 255 {
        return Err(format!(
            "not ICMPv6 right after the fixed header with hop limit 255 (hop limit {})",
            ip.hop
        ));
    }
    let len = ip.end - ip.l4;
    if !(24..=64).contains(&len) || len % 8 != 0 || frame[ip.l4] != ty || frame[ip.l4 + 1] != 0 {
        return Err(format!(
            "ND message type {} code {} of {len} bytes",
            frame[ip.l4],
            frame[ip.l4 + 1]
        ));
    }
    if l4_checksum6(frame, &ip)? != Some(true) {
        return Err("an ND message with a bad checksum".into());
    }
    let target = a16(frame, ip.l4 + 8);
    if target[0] == 0xff {
        return Err(format!("a multicast target {}", addr6(target)));
    }
    let (mut at, mut lladdr) = (ip.l4 + 24, None);
    while at + 8 <= ip.end {
        let (kind, units) = (frame[at], frame[at + 1] as usize);
        if units == 0 {
            return Err("an option of length 0".into());
        }
        if kind == option && units == 1 && lladdr.is_none() {
            lladdr = Some(mac(frame, at + 2));
        }
        at += units * 8;
    }
    Ok(Nd { ip, target, lladdr })
}

/// An advertisement the data path learned from (and consumed): a valid one, for a next
/// hop the daemon registered or an inner destination a GWLB return asked for, whose
/// link-layer address (its option's, else the frame's source) is unicast and now the
/// one every table holding the target has.
pub(super) fn learned_nd(sc: &Scenario, h: &Harness, o: &Outcome) -> Result<(), String> {
    let n = nd(o.input, NA, 2)?;
    let m = n.lladdr.unwrap_or(mac(o.input, 6));
    let (vpc, t) = (o.port.vpc_id, n.target);
    if m[0] & 1 != 0 {
        return Err(format!("learned the multicast MAC {m:02x?}"));
    }
    let registered = sc.next_hop6(vpc, t);
    let asked = gwlb_neighbor6(h, vpc, t);
    if !registered && asked.is_none() {
        return Err(format!("an advertisement for {}, no next hop", addr6(t)));
    }
    if registered && h.dp.neighbor6(vpc, t) != Some(m) {
        return Err(format!("next hop {} not at {m:02x?}", addr6(t)));
    }
    if asked.is_some_and(|a| a != m) {
        return Err(format!("GWLB destination {} at {asked:02x?}", addr6(t)));
    }
    Ok(())
}

/// A solicitation for an ENI's or SNAT address of the interface's VPC, answered with our
/// advertisement: 86 bytes, from the target address and the port's MAC, hop limit 255,
/// solicited and override, the port's MAC as target link-layer address; to the sender
/// (its MAC, its address), or for a duplicate address detection probe (from ::, which
/// carries no link-layer option) to all-nodes, override only. A registered next hop's
/// source link-layer address is learned.
pub(super) fn nd_advert(sc: &Scenario, h: &Harness, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let n = nd(i, NS, 1)?;
    let dad = n.ip.src == [0; 16];
    if dad && n.lladdr.is_some() {
        return Err("a probe from :: with a source link-layer option".into());
    }
    if !sc.ours6(p.vpc_id, n.target) {
        return Err(format!(
            "answered for {}, not ours in {}",
            addr6(n.target),
            p.vpc
        ));
    }
    let (to_mac, to, flags) = if dad {
        (ALL_NODES_MAC, v6("ff02::1"), 0x20)
    } else {
        (mac(i, 6), n.ip.src, 0x60)
    };
    let mut want = to_mac.to_vec();
    want.extend_from_slice(&p.link.mac);
    want.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, PROTO_ICMPV6, 255]);
    want.extend_from_slice(&n.target);
    want.extend_from_slice(&to);
    want.extend_from_slice(&[NA, 0, 0, 0, flags, 0, 0, 0]);
    want.extend_from_slice(&n.target);
    want.extend_from_slice(&[2, 1]);
    want.extend_from_slice(&p.link.mac);
    same_except("neighbour advertisement", out, &want, &[ETH + 42])?;
    let oip = Ip6::at(out, ETH)?;
    if l4_checksum6(out, &oip)? != Some(true) {
        return Err("ICMPv6 checksum".into());
    }
    if let Some(m) = n.lladdr
        && m[0] & 1 == 0
        && sc.next_hop6(p.vpc_id, n.ip.src)
        && h.dp.neighbor6(p.vpc_id, n.ip.src) != Some(m)
    {
        return Err(format!(
            "next hop {} solicited from {m:02x?}, not learned",
            addr6(n.ip.src)
        ));
    }
    Ok(())
}

/// An echo request (past the extension header policy) to the IPv6 address of a
/// forwarding endpoint's ENI, from a source that may be answered: answered from the ENI
/// to that source, back to the sender's MAC from the port's, hop limit 64, type 129, the
/// request's extension headers left out (RFC 4443 4.2: the payload length is the
/// message's), the message and what trails it as they came, its checksum as valid.
pub(super) fn echo_reply6(sc: &Scenario, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let ip = Ip6::at(i, ETH)?;
    let l4 = ip.l4;
    if ip.proto != PROTO_ICMPV6 || l4 + 8 > ip.end || i[l4] != ECHO_REQUEST || i[l4 + 1] != 0 {
        return Err("the input is not an ICMPv6 echo request".into());
    }
    if !answerable(&ip.src) {
        return Err(format!("answered {}", addr6(ip.src)));
    }
    let (ep, svc, _) = sc
        .eni6(p.vpc_id, ip.dst)
        .ok_or_else(|| format!("{} is no ENI in {}", addr6(ip.dst), p.vpc))?;
    if !Scenario::forwarding(ep, svc) {
        return Err(format!("endpoint {} does not forward", ep.id));
    }
    let mut want = i[..ETH + 40].to_vec();
    want[0..6].copy_from_slice(&i[6..12]);
    want[6..12].copy_from_slice(&p.link.mac);
    want[ETH + 4..ETH + 6].copy_from_slice(&((ip.end - l4) as u16).to_be_bytes());
    want[ETH + 6] = PROTO_ICMPV6;
    want[ETH + 7] = 64;
    want[ETH + 8..ETH + 24].copy_from_slice(&ip.dst);
    want[ETH + 24..ETH + 40].copy_from_slice(&ip.src);
    want.extend_from_slice(&i[l4..]);
    want[ETH + 40] = ECHO_REPLY;
    same_except("echo reply", out, &want, &[ETH + 42])?;
    let (was, is) = (
        l4_checksum6(i, &ip)?,
        l4_checksum6(out, &Ip6::at(out, ETH)?)?,
    );
    if was != is {
        return Err(format!(
            "the ICMPv6 checksum's validity changed ({was:?} -> {is:?})"
        ));
    }
    count_valid(sc, is);
    Ok(())
}

/// A NATed IPv6 flow's entry (stored under `key`) and its partner checked against each
/// other and the state: the original direction goes from the IPv6 address of a
/// forwarding endpoint's ENI to its zone's IPv6 load balancer from an IPv6 SNAT address
/// and port of the service, to a listener; the reply direction maps every field back.
fn nat_entry6(sc: &Scenario, h: &Harness, key: &FlowKey6, e: &FlowEntry6) -> Result<(), String> {
    if e.flags != 0 {
        return Err(format!("flow flags {:#x} (not a NAT flow)", e.flags));
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
    let pk = e.partner_key(key.proto);
    let (ok, rk) = match e.direction {
        DIR_ORIGINAL => (key, &pk),
        DIR_REPLY => (&pk, key),
        d => return Err(format!("direction {d}")),
    };
    match flow6(h, &pk) {
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
        None => sc.partner_evicted::<FlowEntry6>(h, &pk)?,
    }
    let (ep, svc, lb) = sc
        .eni6(ok.vpc_id, ok.dst)
        .ok_or_else(|| format!("a flow to {}, no ENI", addr6(ok.dst)))?;
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
    let snat = svc.snat6.iter().any(|a| a.octets() == rk.dst) && (lo..=hi).contains(&rk.dport);
    let lb_ok = rk.src == lb;
    if !listens || !lb_ok || !snat || rk.sport != ok.dport || rk.vpc_id != numeric_id(&svc.vpc) {
        return Err(format!(
            "[{}]:{} -> [{}]:{} proto {} becomes [{}]:{} -> [{}]:{}: outside service {} \
             (listener {listens}, the zone's load balancer {lb_ok}, SNAT {snat})",
            addr6(ok.src),
            ok.sport,
            addr6(ok.dst),
            ok.dport,
            ok.proto,
            addr6(rk.dst),
            rk.dport,
            addr6(rk.src),
            rk.sport,
            svc.id
        ));
    }
    if e.direction == DIR_ORIGINAL && !sc.was_next_hop6(rk.vpc_id, rk.src, e.dst_mac) {
        return Err(format!(
            "sent to MAC {:02x?}, never the load balancer's",
            e.dst_mac
        ));
    }
    Ok(())
}

/// A TCP/UDP packet NATed by its `PL_CONNTRACK6` entry: everything but the entry's MACs,
/// addresses and ports and the hop limit (one less) as it came, extension headers and
/// what trails the packet included; its checksum as valid as it came (never 0 for UDP).
pub(super) fn nat6(sc: &Scenario, h: &Harness, o: &Outcome, r: Reason) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let ip = Ip6::at(i, ETH).map_err(|e| format!("sent on: {e}"))?;
    if !matches!(ip.proto, PROTO_TCP | PROTO_UDP) {
        return Err(format!("NATed protocol {}", ip.proto));
    }
    let in_valid = l4_checksum6(i, &ip)
        .map_err(|e| format!("sent on a packet that should have been dropped: {e}"))?;
    let check = ip.l4 + if ip.proto == PROTO_TCP { 16 } else { 6 };
    if ip.hop <= 1 || !forwardable(&ip.src) || (ip.proto == PROTO_UDP && be16(i, check) == 0) {
        return Err(format!(
            "sent on hop limit {}, from {}, or UDP without checksum",
            ip.hop,
            addr6(ip.src)
        ));
    }
    let key = key6(p.vpc_id, ip.src, ip.dst, ports6(i, &ip), ip.proto);
    let e = flow6(h, &key).ok_or_else(|| format!("no PL_CONNTRACK6 entry for {key:?}"))?;
    let want_dir = match r {
        Reason::Forward6ToConsumer => DIR_REPLY,
        _ => DIR_ORIGINAL,
    };
    if e.direction != want_dir {
        return Err(format!("entry of direction {} for {key:?}", e.direction));
    }
    nat_entry6(sc, h, &key, &e)?;
    let mut want = i.to_vec();
    want[0..6].copy_from_slice(&e.dst_mac);
    want[6..12].copy_from_slice(&e.src_mac);
    want[ETH + 7] = ip.hop - 1;
    want[ETH + 8..ETH + 24].copy_from_slice(&e.new_src);
    want[ETH + 24..ETH + 40].copy_from_slice(&e.new_dst);
    want[ip.l4..ip.l4 + 2].copy_from_slice(&e.new_sport.to_be_bytes());
    want[ip.l4 + 2..ip.l4 + 4].copy_from_slice(&e.new_dport.to_be_bytes());
    same_except("NATed packet", out, &want, &[check])?;
    let out_valid = l4_checksum6(out, &Ip6::at(out, ETH)?)?;
    if out_valid != in_valid {
        return Err(format!(
            "protocol {} checksum validity changed ({in_valid:?} -> {out_valid:?})",
            ip.proto
        ));
    }
    if ip.proto == PROTO_UDP && be16(out, check) == 0 {
        return Err("a UDP checksum of 0".into());
    }
    count_valid(sc, out_valid);
    Ok(())
}

/// An ICMPv6 error (past the extension header policy, to an ENI's or SNAT address of
/// the interface's VPC) quoting a packet of a NATed flow: translated by the entry of the
/// quoted packet's reverse, the outer header like a packet of that direction (hop limit
/// one less), the quote back into what the other side sent; the ICMPv6 checksum as valid
/// as it came; the quoted TCP/UDP checksum, where quoted, updated for the rewrite (RFC
/// 1624), and as valid as it came where the quote holds the whole segment.
pub(super) fn icmp6_translated(sc: &Scenario, h: &Harness, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let ip = Ip6::at(i, ETH)?;
    let l4 = ip.l4;
    if ip.proto != PROTO_ICMPV6 || l4 + 8 > ip.end || !TRANSLATED_ERRORS.contains(&i[l4]) {
        return Err("the input is not an ICMPv6 error".into());
    }
    if ip.hop <= 1 {
        return Err("sent on hop limit 1".into());
    }
    if sc.eni6(p.vpc_id, ip.dst).is_none() && !sc.snat6(p.vpc_id, ip.dst) {
        return Err(format!("an error to {}, not ours", addr6(ip.dst)));
    }
    // The quote: an IPv6 header followed by TCP or UDP, with the 8 bytes that hold the
    // ports (its payload length may reach past what was quoted).
    let q = l4 + 8;
    let ql4 = q + 40;
    let qproto = i.get(q + 6).copied().unwrap_or(0);
    if ql4 + 8 > ip.end || i[q] >> 4 != 6 || !matches!(qproto, PROTO_TCP | PROTO_UDP) {
        return Err(format!("quote of protocol {qproto} without its ports"));
    }
    let (qsrc, qdst) = (a16(i, q + 8), a16(i, q + 24));
    let qports = (be16(i, ql4), be16(i, ql4 + 2));
    let key = key6(p.vpc_id, qdst, qsrc, (qports.1, qports.0), qproto);
    let e = flow6(h, &key).ok_or_else(|| format!("no PL_CONNTRACK6 entry for {key:?}"))?;
    nat_entry6(sc, h, &key, &e)?;
    let mut want = i.to_vec();
    want[0..6].copy_from_slice(&e.dst_mac);
    want[6..12].copy_from_slice(&e.src_mac);
    want[ETH + 7] = ip.hop - 1;
    want[ETH + 8..ETH + 24].copy_from_slice(&e.new_src);
    want[ETH + 24..ETH + 40].copy_from_slice(&e.new_dst);
    want[q + 8..q + 24].copy_from_slice(&e.new_dst);
    want[q + 24..q + 40].copy_from_slice(&e.new_src);
    want[ql4..ql4 + 2].copy_from_slice(&e.new_dport.to_be_bytes());
    want[ql4 + 2..ql4 + 4].copy_from_slice(&e.new_sport.to_be_bytes());
    let qcheck = match qproto {
        PROTO_TCP if ql4 + 18 <= ip.end => Some(ql4 + 16),
        PROTO_UDP => Some(ql4 + 6),
        _ => None,
    };
    let mut skip = vec![l4 + 2];
    skip.extend(qcheck);
    same_except("translated ICMPv6 error", out, &want, &skip)?;
    let (was, is) = (
        l4_checksum6(i, &ip)?,
        l4_checksum6(out, &Ip6::at(out, ETH)?)?,
    );
    if was != is {
        return Err(format!(
            "the ICMPv6 checksum's validity changed ({was:?} -> {is:?})"
        ));
    }
    count_valid(sc, is);
    if let Some(c) = qcheck {
        quoted_checksum(sc, i, out, q, ip.end, c)?;
    }
    Ok(())
}

/// The checksum at `c` of the TCP/UDP segment quoted at `q` (up to `end`), before (`i`)
/// and after (`out`) the translation: an update (RFC 1624) for the addresses and ports
/// that changed, 0 left 0 for UDP; as valid as it came where the quote holds the whole
/// segment (`pseudo_sum` over the quoted addresses).
fn quoted_checksum(
    sc: &Scenario,
    i: &[u8],
    out: &[u8],
    q: usize,
    end: usize,
    c: usize,
) -> Result<(), String> {
    sc.quoted_checksums.set(sc.quoted_checksums.get() + 1);
    let (ql4, qproto) = (q + 40, i[q + 6]);
    let (before, after) = (be16(i, c), be16(out, c));
    if qproto == PROTO_UDP && before == 0 {
        return if after == 0 {
            Ok(())
        } else {
            Err("a quoted UDP header without checksum got one".into())
        };
    }
    let words = |f: &[u8]| [&f[q + 8..q + 40], &f[ql4..ql4 + 4]].concat();
    if !incrementally_updated(before, after, &words(i), &words(out)) {
        return Err(format!(
            "the quoted L4 checksum {before:04x} -> {after:04x} is not the update for the \
             rewritten addresses and ports"
        ));
    }
    let len = match qproto {
        PROTO_TCP => be16(i, q + 4) as usize,
        _ => be16(i, ql4 + 4) as usize,
    };
    if ql4 + len <= end && len >= 8 {
        let valid = |f: &[u8]| {
            pseudo_sum(&a16(f, q + 8), &a16(f, q + 24), qproto, &f[ql4..ql4 + len]) == 0xffff
        };
        if valid(i) != valid(out) {
            return Err("the whole quoted segment's checksum validity changed".into());
        }
        sc.whole_quotes
            .set(sc.whole_quotes.get() + valid(out) as u64);
    }
    Ok(())
}

/// The input of a frame the data path took for a GWLB endpoint (`done`: what it did with
/// it): IPv6 past the extension header policy, hop limit above 1, a forwardable source,
/// to a destination that is neither multicast nor link-local and that the VPC routes to
/// an endpoint that forwards.
fn gwlb_input6<'s>(
    sc: &'s Scenario,
    o: &Outcome,
    done: &str,
) -> Result<(Ip6, &'s Endpoint, &'s EndpointService), String> {
    let ip = Ip6::at(o.input, ETH)?;
    if ip.hop <= 1 || !forwardable(&ip.src) || ip.dst[0] == 0xff || link_local(&ip.dst) {
        return Err(format!(
            "{done} hop limit {} from {} to {}",
            ip.hop,
            addr6(ip.src),
            addr6(ip.dst)
        ));
    }
    let (ep, svc) = sc
        .gwlb_route(o.port.vpc_id, IpAddr::V6(addr6(ip.dst)))
        .ok_or_else(|| format!("{} is not routed to a GWLB endpoint", addr6(ip.dst)))?;
    if !Scenario::forwarding(ep, svc) {
        return Err(format!("endpoint {} does not forward", ep.id));
    }
    Ok((ip, ep, svc))
}

/// An IPv6 packet to a prefix a VPC routes to a GWLB endpoint, in GENEVE (0x86DD) to one
/// of its service's appliances (`geneve_out`), its cookie the IPv6 tuple's: the inner
/// packet the input's but for its hop limit (one less), its checksum as valid; the flow's
/// entries (both directions) name that appliance.
pub(super) fn to_appliance6(sc: &Scenario, h: &Harness, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let (ip, ep, svc) = gwlb_input6(sc, o, "sent on")?;
    let in_valid = l4_checksum6(i, &ip)
        .map_err(|e| format!("sent on a packet that should have been dropped: {e}"))?;
    if out.len() != i.len() + GENEVE_OVERHEAD {
        return Err(format!("{} bytes for {} in", out.len(), i.len()));
    }
    let g = geneve_out(sc, o, ep, svc, ip.end - ETH, 0x86dd)?;
    let key = key6(p.vpc_id, ip.src, ip.dst, ports6(i, &ip), ip.proto);
    if g.cookie != cookie6(&key) {
        return Err(format!(
            "cookie {:#x}, {:#x} expected",
            g.cookie,
            cookie6(&key)
        ));
    }
    let inner = ETH + GENEVE_OVERHEAD;
    let mut want = i[ETH..].to_vec();
    want[7] = ip.hop - 1;
    same_except("inner packet", &out[inner..], &want, &[])?;
    let inner_valid = l4_checksum6(out, &Ip6::at(out, inner)?)?;
    if inner_valid != in_valid {
        return Err(format!(
            "inner protocol {} checksum validity changed ({in_valid:?} -> {inner_valid:?})",
            ip.proto
        ));
    }
    count_valid(sc, inner_valid);
    let e = flow6(h, &key).ok_or_else(|| format!("no PL_CONNTRACK6 entry for {key:?}"))?;
    let sent = (e.new_src, e.new_dst, e.dst_mac, e.src_mac, e.out_ifindex);
    let appl_port = sc
        .port_of_vpc(numeric_id(&svc.vpc))
        .ok_or("no appliance port")?;
    let want = (
        mapped(g.src),
        mapped(g.dst),
        g.eth_dst,
        appl_port.link.mac,
        appl_port.link.ifindex,
    );
    if e.flags & FLOW_GWLB == 0 || e.endpoint_id != numeric_id(&ep.id) || sent != want {
        return Err(format!("the flow's entry: {key:?} -> {e:?}"));
    }
    let rev = key.reversed();
    if rev == key {
        return Ok(()); // one entry is both directions' (see `to_appliance`)
    }
    match flow6(h, &rev) {
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
        None => sc.partner_evicted::<FlowEntry6>(h, &rev),
    }
}

/// GENEVE carrying IPv6 from an appliance (`returned_geneve`): the inner packet within the
/// datagram, past the extension header policy, its TCP/UDP header sound, of a flow of the
/// endpoint the options name through that appliance (one of its ends routed to it).
/// Delivered (`probe` false): the inner packet and what trails it byte for byte to the
/// flow's peer from the VPC's port. Asked for (`probe`: the inner destination's MAC not
/// known): a Neighbour Solicitation for the inner destination from the port's
/// link-local address to its solicited-node address (RFC 4861 7.2.2), a placeholder for
/// its answer left in `PL_GWLB_NEIGH6`.
pub(super) fn from_appliance6(
    sc: &Scenario,
    h: &Harness,
    o: &Outcome,
    probe: bool,
) -> Result<(), String> {
    let (i, out) = (o.input, o.out);
    let g = returned_geneve(sc, o, 0x86dd)?;
    let q = Ip6::within(i, g.inner, g.udp_end)
        .map_err(|e| format!("delivered what the UDP datagram does not hold: {e}"))?;
    l4_checksum6(i, &q).map_err(|e| format!("delivered what should have been dropped: {e}"))?;
    let routed = |a: [u8; 16]| {
        g.ep.routes
            .iter()
            .any(|r| r.contains(&IpAddr::V6(addr6(a))))
    };
    if !routed(q.src) && !routed(q.dst) {
        return Err(format!(
            "{} -> {}: neither end is routed to {}",
            addr6(q.src),
            addr6(q.dst),
            g.ep.id
        ));
    }
    let cp = sc
        .port_of_vpc(g.attachment)
        .ok_or("no port in the endpoint's VPC")?;
    let key = key6(g.attachment, q.src, q.dst, ports6(i, &q), q.proto);
    let e = flow6(h, &key).ok_or_else(|| format!("no PL_CONNTRACK6 entry for {key:?}"))?;
    if e.flags & FLOW_GWLB == 0 || e.endpoint_id != g.endpoint || e.new_dst != mapped(g.outer.src) {
        return Err(format!("the flow's entry {key:?} -> {e:?}"));
    }
    if probe {
        let t = q.dst;
        if e.peer_mac != [0; 6] || gwlb_neighbor6(h, g.attachment, t) != Some([0; 6]) {
            return Err(format!(
                "asked for {} with the flow's MAC {:02x?} and {:02x?} known",
                addr6(t),
                e.peer_mac,
                gwlb_neighbor6(h, g.attachment, t)
            ));
        }
        let mut want = vec![0x33, 0x33, 0xff, t[13], t[14], t[15]];
        want.extend_from_slice(&cp.link.mac);
        want.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, PROTO_ICMPV6, 255]);
        want.extend_from_slice(&port_link_local(cp.link.mac));
        want.extend_from_slice(&v6("ff02::1:ff00:0")[..13]);
        want.extend_from_slice(&t[13..]);
        want.extend_from_slice(&[NS, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&t);
        want.extend_from_slice(&[1, 1]);
        want.extend_from_slice(&cp.link.mac);
        same_except("neighbour solicitation", out, &want, &[ETH + 42])?;
        if l4_checksum6(out, &Ip6::at(out, ETH)?)? != Some(true) {
            return Err("ICMPv6 checksum".into());
        }
        return Ok(());
    }
    if e.peer_mac == [0; 6] {
        return Err(format!("delivered to MAC {:02x?}", e.peer_mac));
    }
    let mut want = e.peer_mac.to_vec();
    want.extend_from_slice(&cp.link.mac);
    want.extend_from_slice(&[0x86, 0xdd]);
    want.extend_from_slice(&i[g.inner..]);
    same_except("delivered packet", out, &want, &[])
}

/// An IPv6 packet for a GWLB endpoint that would not fit the appliance link once in
/// GENEVE (and is longer than 1280 bytes, the least a Packet Too Big may ask for):
/// answered with a Packet Too Big (RFC 4443 3.2) from the port's link-local address and
/// MAC to the sender, hop limit 64, the MTU that fits (at least 1280), quoting the
/// packet's first 1232 bytes (1280 in all); its checksum valid.
pub(super) fn packet_too_big(sc: &Scenario, o: &Outcome) -> Result<(), String> {
    let (i, out, p) = (o.input, o.out, o.port);
    let (ip, _, svc) = gwlb_input6(sc, o, "answered")?;
    let appl_port = sc
        .port_of_vpc(numeric_id(&svc.vpc))
        .ok_or("no port in the appliances' VPC")?;
    let (len, link) = (ip.end - ETH, appl_port.link.mtu as usize);
    let mtu = (link - GENEVE_OVERHEAD).max(IPV6_MIN_MTU);
    if len + GENEVE_OVERHEAD <= link || len <= mtu {
        return Err(format!(
            "{len} bytes fit an MTU of {link} in GENEVE, or ask for less than {mtu}"
        ));
    }
    let quote = IPV6_MIN_MTU - 48;
    let mut want = i[6..12].to_vec();
    want.extend_from_slice(&p.link.mac);
    want.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    want.extend_from_slice(&((quote + 8) as u16).to_be_bytes());
    want.extend_from_slice(&[PROTO_ICMPV6, 64]);
    want.extend_from_slice(&port_link_local(p.link.mac));
    want.extend_from_slice(&ip.src);
    want.extend_from_slice(&[2, 0, 0, 0]);
    want.extend_from_slice(&(mtu as u32).to_be_bytes());
    want.extend_from_slice(&i[ETH..ETH + quote]);
    same_except("Packet Too Big", out, &want, &[ETH + 42])?;
    if l4_checksum6(out, &Ip6::at(out, ETH)?)? != Some(true) {
        return Err("ICMPv6 checksum".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The seeds.

/// TCP from the client to the ENI's port 80: a SYN, or an ACK carrying `payload`.
fn tcp6_to_eni(h: &Harness, sport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .tcp(sport, 80, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5001) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp6_to_eni(h: &Harness, sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv6(client6(), eni6(), 64)
        .udp(sport, 53)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// An ICMPv6 message of `ty`/`code` (4-byte field `rest`) carrying `body`.
fn icmp6(
    macs: ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    (ty, code, rest): (u8, u8, [u8; 4]),
    body: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, 64)
        .icmpv6_raw(ty, code, rest)
        .write(&mut v, body)
        .unwrap();
    v
}

/// The (SNAT address, port) a NATed packet went out from.
fn snat_of(out: &[u8]) -> ([u8; 16], u16) {
    (a16(out, ETH + 8), be16(out, ETH + 40))
}

/// The dual-stack packet lab's seeds: the client's TCP (SYN, data, a SYN behind a
/// destination options header) and UDP (with and without checksum) to the ENI; echo to
/// it, plain, behind four skipped extension headers, behind a routing header of type 0,
/// a fragment header or AH; solicitations for it (multicast with the client's address,
/// unicast without, a duplicate address probe); the client's port unreachable about an
/// answer; the load balancer's TCP and UDP replies to the flows' SNAT tuples, Packet Too
/// Big about the TCP flow (the whole segment quoted, and only 8 bytes of it), Time
/// Exceeded about the UDP one, its solicitation for a SNAT address and its advertisement,
/// an echo to a SNAT address. The setup (checked too) teaches the load balancer's MAC and
/// opens the TCP and UDP flows.
pub(super) fn endpoint6_corpus(h: &mut Harness, sc: &Scenario) -> Vec<(u32, Vec<u8>)> {
    let (cif, pif, cmac, pmac) = (
        h.consumer.ifindex,
        h.provider.ifindex,
        h.consumer.mac,
        h.provider.mac,
    );
    let (eni, client, lb, snat) = (eni6(), client6(), lb6(), dual::snat6_pool()[0]);
    let na = na_frame((LB6_MAC, lb), (pmac, snat), lb, LB6_MAC);
    setup_run(h, sc, pif, &na, Reason::NdLearned);
    let syn = tcp6_to_eni(h, 40000, true, b"");
    let (tsnat, tport) = snat_of(&setup_run(h, sc, cif, &syn, Reason::Forward6NewFlow));
    let query = udp6_to_eni(h, 5353, b"query");
    let (usnat, uport) = snat_of(&setup_run(h, sc, cif, &query, Reason::Forward6NewFlow));
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(LB6_MAC, pmac)
        .ipv6(lb, tsnat, 64)
        .tcp(80, tport, 7000, 65000)
        .syn()
        .ack(1001)
        .write(&mut reply, b"answer")
        .unwrap();
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(LB6_MAC, pmac)
        .ipv6(lb, usnat, 64)
        .udp(53, uport)
        .write(&mut answer, b"answer")
        .unwrap();
    // What went to the load balancer, and what the client got, as errors quote them.
    let mut sent_tcp = Vec::new();
    PacketBuilder::ipv6(tsnat, lb, 63)
        .tcp(tport, 80, 1000, 64240)
        .ack(5001)
        .write(&mut sent_tcp, b"0123456789")
        .unwrap();
    let mut sent_udp = Vec::new();
    PacketBuilder::ipv6(usnat, lb, 63)
        .udp(uport, 53)
        .write(&mut sent_udp, b"query")
        .unwrap();
    let mut got_udp = Vec::new();
    PacketBuilder::ipv6(eni, client, 63)
        .udp(53, 5353)
        .write(&mut got_udp, b"answer")
        .unwrap();
    let router = v6("fd00:b::1");
    let ptb = (2, 0, 1280u32.to_be_bytes());
    let from_lb = |src: [u8; 16], dst, m, body: &[u8]| icmp6((LB6_MAC, pmac), (src, dst), m, body);
    let mut zero = udp6_to_eni(h, 5354, b"no checksum");
    zero[ETH + 46..ETH + 48].fill(0);
    let echo = dual::echo6(h, client, eni, 7, 1, b"0123456789abcdef");
    let mut four = with_ext(
        &echo,
        NEXTHDR_DEST,
        &[PADN6.as_slice(), &[1, 6, 0, 0, 0, 0, 0, 0]].concat(),
    );
    four = with_ext(&four, NEXTHDR_DEST, &PADN6);
    four = with_ext(&four, NEXTHDR_ROUTING, &[4, 0, 0, 0, 0, 0]);
    four = with_ext(&four, NEXTHDR_HOP, &PADN6);
    let prober = [0x02, 0xc1, 0, 0, 0, 0x99];
    vec![
        (cif, syn),
        (cif, tcp6_to_eni(h, 40000, false, b"payload bytes")),
        (
            cif,
            with_ext(&tcp6_to_eni(h, 40300, true, b""), NEXTHDR_DEST, &PADN6),
        ),
        (cif, query),
        (cif, zero),
        (cif, echo.clone()),
        (cif, four),
        (cif, with_ext(&echo, NEXTHDR_ROUTING, &[0; 6])),
        (
            cif,
            with_ext(&echo, NEXTHDR_FRAGMENT, &[0, 1, 0, 0, 0x12, 0x34]),
        ),
        (cif, with_ext(&echo, NEXTHDR_AUTH, &[0; 14])),
        (
            cif,
            ns_frame(
                (CLIENT_MAC, client),
                cmac,
                eni,
                255,
                Some(CLIENT_MAC),
                false,
            ),
        ),
        (
            cif,
            ns_frame((CLIENT_MAC, client), cmac, eni, 255, None, true),
        ),
        (
            cif,
            ns_frame((prober, [0; 16]), cmac, eni, 255, None, false),
        ),
        (
            cif,
            icmp6((CLIENT_MAC, cmac), (client, eni), (1, 4, [0; 4]), &got_udp),
        ),
        (pif, reply),
        (pif, answer),
        (pif, from_lb(router, tsnat, ptb, &sent_tcp)),
        (pif, from_lb(router, tsnat, ptb, &sent_tcp[..48])),
        (pif, from_lb(router, usnat, (3, 0, [0; 4]), &sent_udp[..48])),
        (
            pif,
            from_lb(lb, snat, (ECHO_REQUEST, 0, [0, 1, 0, 1]), b"ping"),
        ),
        (
            pif,
            ns_frame((LB6_MAC, lb), pmac, snat, 255, Some(LB6_MAC), false),
        ),
        (pif, na),
    ]
}

/// The GWLB fixture's IPv6 seeds: the client's TCP (plain, behind a destination options
/// header, too big for the appliance link once encapsulated), UDP and echo to the server,
/// the server's TCP back, the server's advertisement of its MAC, a solicitation for it,
/// and what the appliance returns for both TCP directions. The setup (checked too) sends
/// the first TCP packet, returns it before the server's MAC is known (a solicitation),
/// teaches it, and returns it again.
pub(super) fn gwlb6_corpus(h: &mut Harness, sc: &Scenario) -> Vec<(u32, Vec<u8>)> {
    use gwlb::{CLIENT_MAC, CLIENT6, SERVER_MAC, SERVER6};
    let (cif, pif, cmac) = (h.consumer.ifindex, h.provider.ifindex, h.consumer.mac);
    let fwd = gwlb::tcp6(h, CLIENT6, SERVER6, 40000, 80, b"data");
    let ret = gwlb::returned(&setup_run(h, sc, cif, &fwd, Reason::Gwlb6ToAppliance));
    setup_run(h, sc, pif, &ret, Reason::GwlbNsProbe);
    let na = na_frame(
        (SERVER_MAC, SERVER6),
        (cmac, port_link_local(cmac)),
        SERVER6,
        SERVER_MAC,
    );
    setup_run(h, sc, cif, &na, Reason::NdLearned);
    setup_run(h, sc, pif, &ret, Reason::Gwlb6FromAppliance);
    let back = gwlb::tcp6(h, SERVER6, CLIENT6, 80, 40000, b"");
    let ret_back = gwlb::returned(&setup_run(h, sc, cif, &back, Reason::Gwlb6ToAppliance));
    let from_client = |m, body: &[u8]| icmp6((CLIENT_MAC, cmac), (CLIENT6, SERVER6), m, body);
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, cmac)
        .ipv6(CLIENT6, SERVER6, 64)
        .udp(5353, 53)
        .write(&mut udp, b"query")
        .unwrap();
    vec![
        (cif, fwd.clone()),
        (cif, with_ext(&fwd, NEXTHDR_DEST, &PADN6)),
        (
            cif,
            gwlb::tcp6(h, CLIENT6, SERVER6, 40001, 80, &[1u8; 1440]),
        ),
        (cif, back),
        (cif, udp),
        (cif, from_client((ECHO_REQUEST, 0, [0, 9, 0, 1]), b"ping")),
        (cif, na),
        (
            cif,
            ns_frame(
                (CLIENT_MAC, CLIENT6),
                cmac,
                SERVER6,
                255,
                Some(CLIENT_MAC),
                false,
            ),
        ),
        (pif, ret),
        (pif, ret_back),
    ]
}
