//! Frames for the packet tests and benchmarks, built with etherparse (independent of the
//! data path's own code).

use etherparse::{Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::testrun::{Harness, LB_MAC};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
pub const CLIENT: [u8; 4] = [10, 10, 2, 1];
pub const ENI: [u8; 4] = [10, 10, 1, 100];
pub const LB: [u8; 4] = [10, 10, 0, 10];
pub const SNAT: [[u8; 4]; 2] = [[10, 10, 0, 200], [10, 10, 0, 201]];

pub fn tcp_to_eni(h: &Harness, sport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .tcp(sport, 80, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5000) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn tcp_from_lb(h: &Harness, snat: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .tcp(80, dport, 7000, 65000)
        .syn()
        .ack(1001)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A segment of an established flow from the client: ACK only, acknowledging `ack`.
pub fn tcp_ack_to_eni(h: &Harness, sport: u16, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .tcp(sport, 80, 1001, 64240)
        .ack(ack)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A segment of an established flow from the load balancer: ACK only (the SYN-ACK of
/// `tcp_from_lb` sent sequence number 7000).
pub fn tcp_ack_from_lb(h: &Harness, snat: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .tcp(80, dport, 7001, 65000)
        .ack(1001)
        .write(&mut v, payload)
        .unwrap();
    v
}

pub fn udp_to_eni(h: &Harness, sport: u16, payload: &[u8], zero_checksum: bool) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .udp(sport, 53)
        .write(&mut v, payload)
        .unwrap();
    if zero_checksum {
        v[14 + 20 + 6] = 0;
        v[14 + 20 + 7] = 0;
    }
    v
}

/// An ARP who-has (RFC 826), byte by byte.
pub fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&sender_mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&sender_mac);
    v.extend_from_slice(&sender_ip);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target_ip);
    v
}

/// An ARP reply (RFC 826) from `sender` to `to_mac`, as a host answers a who-has whose
/// sender address was 0.0.0.0.
pub fn arp_reply(to_mac: [u8; 6], sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
    let mut v = to_mac.to_vec();
    v.extend_from_slice(&sender_mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    v.extend_from_slice(&sender_mac);
    v.extend_from_slice(&sender_ip);
    v.extend_from_slice(&to_mac);
    v.extend_from_slice(&[0; 4]);
    v
}

/// Parses a frame and checks the IPv4 header checksum and the L4 checksum by recomputing
/// them with etherparse.
pub struct Parsed {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ip: Ipv4Header,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

pub fn parse_checked(frame: &[u8]) -> Parsed {
    let p = SlicedPacket::from_ethernet(frame).expect("output parses");
    let eth = match p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => e,
        other => panic!("not Ethernet II: {other:?}"),
    };
    let ip = match &p.net {
        Some(NetSlice::Ipv4(ip)) => ip.header().to_header(),
        other => panic!("not IPv4: {other:?}"),
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let (sport, dport, payload) = match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&ip, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port(), t.payload().to_vec())
        }
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4(&ip, u.payload()).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
            }
            (u.source_port(), u.destination_port(), u.payload().to_vec())
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let want = i.icmp_type().calc_checksum(i.payload());
            assert_eq!(i.checksum(), want, "ICMP checksum");
            (0, 0, i.slice().to_vec())
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Parsed {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        ip,
        sport,
        dport,
        payload,
    }
}
