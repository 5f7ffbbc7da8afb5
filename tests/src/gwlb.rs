//! The GWLB fixture shared by the packet tests and the benchmark: a consumer VPC whose two
//! subnets reach each other through a GWLB endpoint, and a provider VPC with one appliance
//! in each of two zones.

use etherparse::PacketBuilder;
use privatelink_user::model::numeric_id;

use crate::{lab::connected_endpoint, testrun::Harness};

pub const CLIENT: [u8; 4] = [10, 30, 1, 10];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x0a];
pub const SERVER: [u8; 4] = [10, 30, 2, 10];
pub const SERVER_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x0a];
pub const ENI: &str = "10.30.0.5";
pub const GWLB_ADDR: &str = "10.40.0.5";
pub const APPL_A: [u8; 4] = [10, 40, 1, 10];
pub const APPL_B: [u8; 4] = [10, 40, 2, 10];
pub const APPL_A_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0a];
pub const APPL_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0a];

/// A consumer VPC whose two subnets reach each other through a GWLB endpoint, and a
/// provider VPC with one appliance in each of two zones.
pub fn state(cross_zone: bool, stickiness: &str, failover: &str) -> String {
    format!(
        r#"
[[accounts]]
id = "acct-c"
[[accounts]]
id = "acct-p"

[[vpcs]]
id = "vpc-web"
account = "acct-c"
cidr = "10.30.0.0/16"
interface = "fc0"
vswitches = [
  {{ id = "vsw-w0", zone = "zone-a", cidr = "10.30.0.0/24" }},
  {{ id = "vsw-w1", zone = "zone-a", cidr = "10.30.1.0/24" }},
  {{ id = "vsw-w2", zone = "zone-b", cidr = "10.30.2.0/24" }},
]

[[vpcs]]
id = "vpc-appl"
account = "acct-p"
cidr = "10.40.0.0/16"
interface = "fp0"
vswitches = [
  {{ id = "vsw-g0", zone = "zone-a", cidr = "10.40.0.0/24" }},
  {{ id = "vsw-g1", zone = "zone-a", cidr = "10.40.1.0/24" }},
  {{ id = "vsw-g2", zone = "zone-b", cidr = "10.40.2.0/24" }},
]

[[services]]
id = "gwlb-svc"
account = "acct-p"
type = "gwlb"
vpc = "vpc-appl"
auto_accept = true
whitelist = ["acct-c"]
backends = [
  {{ zone = "zone-a", address = "10.40.1.10" }},
  {{ zone = "zone-b", address = "10.40.2.10" }},
]
snat = []
gwlb = {{ address = "{GWLB_ADDR}", cross_zone = {cross_zone}, stickiness = "{stickiness}", failover = "{failover}" }}
"#
    ) + &connected_endpoint("gwlbe-1", "acct-c", "vpc-web", "gwlb-svc", "vsw-w0", ENI)
        + "routes = [\"10.30.1.0/24\", \"10.30.2.0/24\"]\n"
}

pub fn harness_with(cross_zone: bool, stickiness: &str, failover: &str) -> Harness {
    let mut h = Harness::new(&state(cross_zone, stickiness, failover)).expect("harness");
    let appl = numeric_id("vpc-appl");
    h.dp.set_neighbor(appl, APPL_A, APPL_A_MAC).unwrap();
    h.dp.set_neighbor(appl, APPL_B, APPL_B_MAC).unwrap();
    h
}

pub fn harness() -> Harness {
    harness_with(false, "five_tuple", "no_rebalance")
}

pub fn tcp(
    h: &Harness,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let smac = if src == CLIENT {
        CLIENT_MAC
    } else {
        SERVER_MAC
    };
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, h.consumer.mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut v, payload)
        .unwrap();
    v
}

/// `tcp` with ACK and PSH set instead of SYN: a segment of an established flow.
pub fn tcp_ack(
    h: &Harness,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let smac = if src == CLIENT {
        CLIENT_MAC
    } else {
        SERVER_MAC
    };
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, h.consumer.mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 2000, 64240)
        .ack(1)
        .psh()
        .write(&mut v, payload)
        .unwrap();
    v
}

/// What an appliance sends back for an encapsulated frame `enc` (outer IPv4 without
/// options): MACs and outer addresses swapped, from UDP port 6081, GENEVE untouched.
/// Swapping leaves both checksums valid (the UDP one is zero).
pub fn returned(enc: &[u8]) -> Vec<u8> {
    let mut back = enc.to_vec();
    back[0..6].copy_from_slice(&enc[6..12]);
    back[6..12].copy_from_slice(&enc[0..6]);
    back[26..30].copy_from_slice(&enc[30..34]);
    back[30..34].copy_from_slice(&enc[26..30]);
    back[34..36].copy_from_slice(&6081u16.to_be_bytes());
    back
}

/// The IPv6 side of the fixture: the consumer VPC's IPv6 range, its client and server
/// subnets' /64s routed through the endpoint, the service dualstack.
pub const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0x30, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x10];
pub const SERVER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0x30, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x10];
pub const CLIENT6_STR: &str = "fd00:0:0:3001::10";
pub const SERVER6_STR: &str = "fd00:0:0:3002::10";
/// The endpoint's ENI's IPv6 address (the endpoint is dualstack): the IPv6 route target.
pub const ENI6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0x30, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x05];
pub const ENI6_STR: &str = "fd00:0:0:3000::5";

/// `state` with IPv6: the consumer VPC and its vSwitches get IPv6 ranges, the service is
/// dualstack, and the endpoint is too (its ENI also `ENI6`) and also routes the client's
/// and the server's /64.
pub fn state6(cross_zone: bool, stickiness: &str, failover: &str) -> String {
    let mut s = state(cross_zone, stickiness, failover)
        .replace(
            "cidr = \"10.30.0.0/16\"\n",
            "cidr = \"10.30.0.0/16\"\nipv6_cidr = \"fd00:0:0:3000::/56\"\n",
        )
        .replace("type = \"gwlb\"\n", "type = \"gwlb\"\nip_version = \"dualstack\"\n")
        .replace(
            &format!("eni = \"{ENI}\" }}]\n"),
            &format!("eni = \"{ENI}\", eni6 = \"{ENI6_STR}\" }}]\nip_version = \"dualstack\"\n"),
        )
        .replace(
            "routes = [\"10.30.1.0/24\", \"10.30.2.0/24\"]",
            "routes = [\"10.30.1.0/24\", \"10.30.2.0/24\", \"fd00:0:0:3001::/64\", \"fd00:0:0:3002::/64\"]",
        );
    for i in 0..3 {
        s = s.replace(
            &format!("cidr = \"10.30.{i}.0/24\" }}"),
            &format!("cidr = \"10.30.{i}.0/24\", ipv6_cidr = \"fd00:0:0:300{i}::/64\" }}"),
        );
    }
    s
}

pub fn harness6_with(cross_zone: bool, stickiness: &str, failover: &str) -> Harness {
    let mut h = Harness::new(&state6(cross_zone, stickiness, failover)).expect("harness");
    let appl = numeric_id("vpc-appl");
    h.dp.set_neighbor(appl, APPL_A, APPL_A_MAC).unwrap();
    h.dp.set_neighbor(appl, APPL_B, APPL_B_MAC).unwrap();
    h
}

/// A TCP SYN between the IPv6 client and server (`src` either), as etherparse builds it.
pub fn tcp6(
    h: &Harness,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let smac = if src == CLIENT6 {
        CLIENT_MAC
    } else {
        SERVER_MAC
    };
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, h.consumer.mac)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut v, payload)
        .unwrap();
    v
}

/// The GENEVE flow cookie (option type 3) of an IPv4 tuple, written out here from the
/// README's definition and not from the data path's code, for the tests to check it by:
/// the two ends (address as a big-endian number, then port) put in order, then murmur3's
/// finalizer chained from seed 0 over the lower address, the higher one, the ports (the
/// lower end's in the high half) and the protocol.
pub fn reference_cookie(a: ([u8; 4], u16), b: ([u8; 4], u16), proto: u8) -> u32 {
    let a = (u32::from_be_bytes(a.0), a.1);
    let b = (u32::from_be_bytes(b.0), b.1);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let c = fmix32(fmix32(lo.0) ^ hi.0);
    fmix32(fmix32(c ^ ((lo.1 as u32) << 16 | hi.1 as u32)) ^ proto as u32)
}

/// `reference_cookie` of an IPv6 tuple: the addresses as 128-bit big-endian numbers, each
/// folded in as its four big-endian words.
pub fn reference_cookie6(a: ([u8; 16], u16), b: ([u8; 16], u16), proto: u8) -> u32 {
    let (lo, hi) = if (u128::from_be_bytes(a.0), a.1) <= (u128::from_be_bytes(b.0), b.1) {
        (a, b)
    } else {
        (b, a)
    };
    let mut c = 0u32;
    for w in lo.0.chunks(4).chain(hi.0.chunks(4)) {
        c = fmix32(c ^ u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    fmix32(fmix32(c ^ ((lo.1 as u32) << 16 | hi.1 as u32)) ^ proto as u32)
}

/// murmur3's 32-bit finalizer, on its own (the data path's is
/// `privatelink_common::hash::mix32`).
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
