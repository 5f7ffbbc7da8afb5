//! Resource limits: a flood of new flows (SYNs from many sources) through a full conntrack
//! table. New flows keep being accepted (the LRU evicts), established flows that keep
//! talking are never the ones evicted, idle flows go first.

use etherparse::PacketBuilder;
use privatelink_common::Reason;
use privatelink_tests::{
    frames::{CLIENT_MAC, ENI},
    lab::LAB_STATE,
    scale::{fill, frame, present},
    testrun::Harness,
};

const XDP_REDIRECT: u32 = 4;
/// Table entries (two per flow): 2 048 flows.
const CAPACITY: u32 = 4096;
const ESTABLISHED: u32 = 256;
const IDLE: u32 = 768;
const FLOOD: u32 = 6000;

fn syn_from(h: &Harness, n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(
            [172, 16 + (n >> 16) as u8, (n >> 8) as u8, n as u8],
            ENI,
            64,
        )
        .tcp(50000 + (n % 1000) as u16, 443, 1, 64240)
        .syn()
        .write(&mut v, b"")
        .unwrap();
    v
}

#[test]
fn a_syn_flood_evicts_idle_flows_not_established_ones() {
    let mut h = Harness::with_conntrack(LAB_STATE, CAPACITY).unwrap();
    // Established flows (just seen) and idle ones (a minute quiet, not yet expired).
    fill(&mut h, 0..ESTABLISHED, 0).unwrap();
    fill(&mut h, ESTABLISHED..ESTABLISHED + IDLE, 60_000_000_000).unwrap();
    let established: Vec<Vec<u8>> = (0..ESTABLISHED).map(|i| frame(&h, i)).collect();

    for n in 0..FLOOD {
        let (act, _) = h.run(h.consumer.ifindex, &syn_from(&h, n)).unwrap();
        assert_eq!(act, XDP_REDIRECT, "flood SYN {n}: {:?}", h.active_stats());
        // The established flows keep talking (every 100 new flows = 200 entries).
        if n % 100 == 0 {
            for f in &established {
                assert_eq!(h.run(h.consumer.ifindex, f).unwrap().0, XDP_REDIRECT);
            }
        }
    }
    assert_eq!(
        h.count(Reason::ForwardNewFlow),
        FLOOD as u64,
        "every SYN accepted"
    );
    assert_eq!(h.count(Reason::DropConntrackFull), 0);
    assert_eq!(h.count(Reason::DropSnatExhausted), 0);

    // Every established flow is still there, and still a hit (not re-created).
    let new_before = h.count(Reason::ForwardNewFlow);
    for i in 0..ESTABLISHED {
        assert!(present(&h, i).unwrap(), "established flow {i} evicted");
    }
    for f in &established {
        assert_eq!(h.run(h.consumer.ifindex, f).unwrap().0, XDP_REDIRECT);
    }
    assert_eq!(h.count(Reason::ForwardNewFlow), new_before);
    // The idle ones made room.
    let idle_left = (ESTABLISHED..ESTABLISHED + IDLE)
        .filter(|i| present(&h, *i).unwrap())
        .count();
    assert!(
        idle_left < IDLE as usize / 10,
        "{idle_left} of {IDLE} idle flows survived a flood three times the table"
    );
    eprintln!(
        "{FLOOD} new flows through a {CAPACITY}-entry table: all accepted, {ESTABLISHED} established flows kept, {} of {IDLE} idle flows evicted",
        IDLE as usize - idle_left
    );
}
