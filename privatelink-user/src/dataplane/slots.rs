//! The slots of `PL_EP_COUNTERS`: one per endpoint ENI (an endpoint in one zone; a gateway
//! endpoint's routes share their zone's) and per GWLB appliance. A slot stays with what it
//! counts for as long as that exists, across applies and daemon restarts (the assignment
//! is kept in `PL_EP_SLOTS`, beside the counters); a freed slot is given to a new one no
//! earlier than the apply after the one that freed it (until that apply moves the epoch
//! on, the freed ENI's established flows still count into it), its counters zeroed first. When all are taken, what is left gets slot 0: counted
//! in the global counters only (and said once in the log).

use std::collections::{BTreeMap, BTreeSet};

use privatelink_common::{
    COUNTER_APPLIANCE, COUNTER_ENI, CounterKey, EndpointEni, MAX_COUNTER_SLOTS, VpcAddr,
};

use crate::desired::Desired;

/// What an ENI (or gateway route) entry counts under.
pub fn eni_key(e: &EndpointEni) -> CounterKey {
    CounterKey {
        kind: COUNTER_ENI,
        a: e.endpoint_id,
        b: e.zone_id,
    }
}

/// What an appliance counts under.
pub fn appliance_key(a: &VpcAddr) -> CounterKey {
    CounterKey {
        kind: COUNTER_APPLIANCE,
        a: a.vpc_id,
        b: u32::from_be_bytes(a.addr),
    }
}

/// Gives `d` its slots, keeping those in `cur` (what the maps hold) for what still exists,
/// and writes them into its ENI, route and appliance entries. Returns the slots given to
/// something new, whose counters must be zeroed before the entries are written.
pub fn assign(cur: &BTreeMap<CounterKey, u32>, d: &mut Desired) -> Vec<u32> {
    let wanted: BTreeSet<CounterKey> = d
        .endpoints
        .values()
        .chain(d.gw_routes.values())
        // Dual stack: an ENI's IPv6 address counts into its IPv4 address's slot (same
        // key), and so does an IPv6 route into its endpoint's IPv4 routes' one.
        .chain(d.gw_routes6.values().map(|e| &e.eni))
        .map(eni_key)
        .chain(d.gwlb_appliances.keys().map(appliance_key))
        .collect();
    let mut slots = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (k, &s) in cur {
        if wanted.contains(k) && (1..MAX_COUNTER_SLOTS).contains(&s) && used.insert(s) {
            slots.insert(*k, s);
        }
    }
    // Held back: slots freed by this very apply.
    let freed: BTreeSet<u32> = cur.values().copied().collect();
    let mut free = (1..MAX_COUNTER_SLOTS).filter(|s| !used.contains(s) && !freed.contains(s));
    let mut fresh = Vec::new();
    let mut full = 0usize;
    for k in &wanted {
        if slots.contains_key(k) {
            continue;
        }
        match free.next() {
            Some(s) => {
                slots.insert(*k, s);
                fresh.push(s);
            }
            None => full += 1,
        }
    }
    if full > 0 {
        tracing::warn!(
            left_out = full,
            slots = MAX_COUNTER_SLOTS - 1,
            "every counter slot is taken: these endpoints and appliances are counted globally only"
        );
    }
    let slot_of = |k: &CounterKey| slots.get(k).copied().unwrap_or(0);
    for e in d
        .endpoints
        .values_mut()
        .chain(d.gw_routes.values_mut())
        .chain(d.endpoints6.values_mut().map(|e| &mut e.eni))
        .chain(d.gw_routes6.values_mut().map(|e| &mut e.eni))
    {
        e.counter_slot = slot_of(&eni_key(e));
    }
    for (a, v) in d.gwlb_appliances.iter_mut() {
        v.counter_slot = slot_of(&appliance_key(a));
    }
    d.counter_slots = slots;
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(endpoint_id: u32, zone_id: u32) -> EndpointEni {
        EndpointEni {
            endpoint_id,
            zone_id,
            ..Default::default()
        }
    }

    fn with(enis: &[(u8, u32, u32)]) -> Desired {
        let mut d = Desired::default();
        for &(addr, ep, zone) in enis {
            d.endpoints.insert(
                VpcAddr {
                    vpc_id: 1,
                    addr: [10, 0, 0, addr],
                },
                eni(ep, zone),
            );
        }
        d
    }

    #[test]
    fn slots_stay_with_what_they_count_and_freed_ones_are_reused() {
        let mut d = with(&[(1, 100, 1), (2, 100, 2), (3, 200, 1)]);
        let fresh = assign(&BTreeMap::new(), &mut d);
        assert_eq!(fresh.len(), 3);
        let first = d.counter_slots.clone();
        assert!(first.values().all(|&s| s >= 1));
        // Endpoint 100 in zone 1 goes; 300 comes: not into the slot freed by the same apply
        // (the gone ENI's flows may still count there until the epoch moves on).
        let mut d2 = with(&[(2, 100, 2), (3, 200, 1), (4, 300, 1)]);
        let fresh2 = assign(&first, &mut d2);
        let freed = first[&eni_key(&eni(100, 1))];
        assert_eq!(fresh2.len(), 1);
        assert_ne!(fresh2, vec![freed]);
        assert_eq!(d2.counter_slots[&eni_key(&eni(300, 1))], fresh2[0]);
        // The apply after: the freed slot is given out again (zeroed first).
        let mut d3 = with(&[(2, 100, 2), (3, 200, 1), (4, 300, 1), (5, 400, 1)]);
        let fresh3 = assign(&d2.counter_slots, &mut d3);
        assert_eq!(fresh3, vec![freed]);
        for k in [eni_key(&eni(100, 2)), eni_key(&eni(200, 1))] {
            assert_eq!(d2.counter_slots[&k], first[&k], "kept");
        }
        // The entries carry their slots.
        for e in d2.endpoints.values() {
            assert_eq!(e.counter_slot, d2.counter_slots[&eni_key(e)]);
        }
    }

    #[test]
    fn a_bad_record_is_not_trusted() {
        let mut d = with(&[(1, 100, 1), (2, 200, 1)]);
        // Two keys claiming one slot, and one out of range.
        let cur = BTreeMap::from([
            (eni_key(&eni(100, 1)), 5),
            (eni_key(&eni(200, 1)), 5),
            (eni_key(&eni(999, 1)), MAX_COUNTER_SLOTS + 3),
        ]);
        let fresh = assign(&cur, &mut d);
        let s: BTreeSet<u32> = d.counter_slots.values().copied().collect();
        assert_eq!(s.len(), 2, "distinct slots: {:?}", d.counter_slots);
        assert_eq!(fresh.len(), 1);
        assert!(!d.counter_slots.contains_key(&eni_key(&eni(999, 1))));
    }
}
