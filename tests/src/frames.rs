//! Frames for the packet tests and benchmarks, built with etherparse (independent of the
//! data path's own code).

use etherparse::PacketBuilder;

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
