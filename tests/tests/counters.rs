//! Per-endpoint counters (`PL_EP_COUNTERS`): frames built with etherparse go through the
//! loaded XDP program (BPF_PROG_TEST_RUN), and each endpoint ENI's slot moves by exactly
//! the packets and IP bytes sent through it, on the full path and the established one,
//! and no other slot moves.

use privatelink_common::{COUNTER_ENI, CounterKey, EP_DROP_NAMES, EndpointCounters};
use privatelink_tests::{
    frames::{CLIENT, CLIENT_MAC, ENI, LB, parse_checked, tcp_to_eni},
    lab::two_zone_packet_state,
    testrun::{Harness, LB_MAC, XDP_DROP, XDP_REDIRECT},
};
use privatelink_user::model::numeric_id;

/// Endpoint ep-a's ENI in zone B in `two_zone_packet_state(true)`.
const ZONE_B_ENI: [u8; 4] = [10, 10, 9, 5];

fn key(zone: &str) -> CounterKey {
    CounterKey {
        kind: COUNTER_ENI,
        a: numeric_id("ep-a"),
        b: numeric_id(zone),
    }
}

/// Every slot's counters, by what it counts.
fn counters(h: &mut Harness) -> Vec<(CounterKey, EndpointCounters)> {
    h.dp.counters().expect("reading the counters")
}

fn of(h: &mut Harness, zone: &str) -> EndpointCounters {
    let k = key(zone);
    counters(h)
        .into_iter()
        .find(|(c, _)| *c == k)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no counter slot for ep-a in {zone}"))
}

fn drop_index(name: &str) -> usize {
    EP_DROP_NAMES.iter().position(|n| *n == name).unwrap()
}

fn tcp(h: &Harness, dst: [u8; 4], sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5000) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// The reply from the load balancer to the SNAT tuple of `out` (a forwarded frame).
fn reply_to(h: &Harness, out: &[u8], payload: &[u8]) -> Vec<u8> {
    let p = parse_checked(out);
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, p.ip.source, 64)
        .tcp(80, p.sport, 7000, 65000)
        .ack(1001)
        .write(&mut v, payload)
        .unwrap();
    v
}

#[test]
fn packets_through_one_eni_move_its_counters_by_exactly_what_was_sent() {
    let mut h = Harness::new(&two_zone_packet_state(true)).unwrap();
    // Every slot starts at zero: each ENI has its own.
    let before = counters(&mut h);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before
            .iter()
            .all(|(_, c)| *c == EndpointCounters::default())
    );
    assert_ne!(
        before[0].0, before[1].0,
        "zone-a and zone-b count apart: {before:?}"
    );

    // One flow through zone-a's ENI: a SYN (full path), then data (the established path).
    let (mut to_service, mut to_service_bytes) = (0u64, 0u64);
    let syn = tcp_to_eni(&h, 41000, true, b"");
    let (act, out) = h.run(h.consumer.ifindex, &syn).unwrap();
    assert_eq!(act, XDP_REDIRECT);
    to_service += 1;
    to_service_bytes += (syn.len() - 14) as u64;
    for n in 0..9 {
        let f = tcp_to_eni(&h, 41000, false, &vec![b'x'; 100 * n]);
        assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_REDIRECT);
        to_service += 1;
        to_service_bytes += (f.len() - 14) as u64;
    }
    let (mut to_consumer, mut to_consumer_bytes) = (0u64, 0u64);
    for n in 0..5 {
        let f = reply_to(&h, &out, &vec![b'y'; 300 * n]);
        assert_eq!(h.run(h.provider.ifindex, &f).unwrap().0, XDP_REDIRECT);
        to_consumer += 1;
        to_consumer_bytes += (f.len() - 14) as u64;
    }
    // Drops of this ENI, by kind: a port the service does not publish, and TTL 1.
    for sport in 0..3 {
        let f = tcp(&h, ENI, 42000 + sport, 8080, true, b"");
        assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_DROP);
    }
    let mut ttl1 = tcp(&h, ENI, 43000, 80, true, b"");
    ttl1[14 + 8] = 1;
    ttl1[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum = etherparse::Ipv4HeaderSlice::from_slice(&ttl1[14..34])
        .unwrap()
        .to_header()
        .calc_header_checksum();
    ttl1[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(h.run(h.consumer.ifindex, &ttl1).unwrap().0, XDP_DROP);

    let a = of(&mut h, "zone-a");
    let mut drops = [0u64; privatelink_common::EP_DROP_KINDS];
    drops[drop_index("no_listener")] = 3;
    drops[drop_index("ttl_exceeded")] = 1;
    assert_eq!(
        a,
        EndpointCounters {
            to_service_packets: to_service,
            to_service_bytes,
            to_consumer_packets: to_consumer,
            to_consumer_bytes,
            new_flows: 1,
            flow_log_lost: 0,
            drops,
        }
    );
    assert_eq!(
        of(&mut h, "zone-b"),
        EndpointCounters::default(),
        "the other zone's ENI did not move"
    );

    // Zone-b's ENI now: only its slot moves.
    for i in 0..4u16 {
        let f = tcp(&h, ZONE_B_ENI, 44000 + i, 80, true, b"");
        h.run(h.consumer.ifindex, &f).unwrap();
    }
    let b = of(&mut h, "zone-b");
    assert_eq!(
        b.to_service_packets + b.drops.iter().sum::<u64>(),
        4,
        "each of zone-b's packets counted once, forwarded or dropped: {b:?}"
    );
    assert_eq!(of(&mut h, "zone-a"), a, "zone-a unchanged");
}

#[test]
fn a_slot_is_kept_across_applies_and_a_new_eni_starts_from_zero() {
    let mut h = Harness::new(&two_zone_packet_state(true)).unwrap();
    let slots =
        |h: &mut Harness| -> Vec<CounterKey> { counters(h).into_iter().map(|(k, _)| k).collect() };
    let f = tcp(&h, ZONE_B_ENI, 45000, 80, true, b"");
    h.run(h.consumer.ifindex, &f).unwrap();
    let b = of(&mut h, "zone-b");
    assert!(b.to_service_packets + b.drops.iter().sum::<u64>() == 1);
    let f = tcp_to_eni(&h, 45001, true, b"");
    assert_eq!(h.run(h.consumer.ifindex, &f).unwrap().0, XDP_REDIRECT);
    let a = of(&mut h, "zone-a");
    assert_eq!((a.to_service_packets, a.new_flows), (1, 1));
    // Zone-b's ENI goes: its slot is freed; zone-a keeps its own, and its counts.
    h.apply_state(&two_zone_packet_state(false)).unwrap();
    assert_eq!(slots(&mut h), vec![key("zone-a")]);
    assert_eq!(of(&mut h, "zone-a"), a);
    // It comes back (twice: the second time into a slot freed before): counted from zero
    // again, and zone-a still keeps its counts.
    for _ in 0..2 {
        h.apply_state(&two_zone_packet_state(true)).unwrap();
        assert_eq!(of(&mut h, "zone-b"), EndpointCounters::default());
        h.run(
            h.consumer.ifindex,
            &tcp(&h, ZONE_B_ENI, 45002, 80, true, b""),
        )
        .unwrap();
        h.apply_state(&two_zone_packet_state(false)).unwrap();
    }
    assert_eq!(of(&mut h, "zone-a"), a);
}
