//! Fingerprints of the maps' key and value layouts: every field's name, offset and size.
//!
//! Sizes alone cannot tell a pinned map of another build from one of this build's (two
//! fields swapped, a field retyped to one of the same size). The daemon records each
//! pinned map's fingerprint beside the pins and replaces a pinned map whose recorded
//! fingerprint is not this build's. A field that keeps its name, offset and size but
//! changes its meaning is still invisible to this: rename it.

use core::mem::{offset_of, size_of};

use crate::*;

/// 64-bit FNV-1a over what a layout is made of.
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= *x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn number(&mut self, n: usize) {
        self.bytes(&(n as u64).to_le_bytes());
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// A map key or value type whose layout can be fingerprinted.
pub trait Layout {
    fn layout(fp: &mut Fingerprint);
}

/// The fingerprint of a map with keys `K` and values `V`.
pub fn of<K: Layout, V: Layout>() -> u64 {
    let mut fp = Fingerprint::default();
    K::layout(&mut fp);
    fp.bytes(b"=>");
    V::layout(&mut fp);
    fp.value()
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! primitive {
    ($($t:ty),*) => {$(
        impl Layout for $t {
            fn layout(fp: &mut Fingerprint) {
                fp.bytes(stringify!($t).as_bytes());
                fp.number(size_of::<$t>());
            }
        }
    )*};
}

primitive!(u32, u64);

/// `Layout` for a struct from the list of all its fields (a field added to the struct and
/// not listed here fails to build), then the layouts of the types nested in its arrays.
macro_rules! layout {
    ($($t:ident { $($f:ident),* $(,)? } $([$($n:ty),*])?;)*) => {$(
        impl Layout for $t {
            fn layout(fp: &mut Fingerprint) {
                let _every_field_listed = |x: $t| {
                    let $t { $($f: _),* } = x;
                };
                fp.bytes(stringify!($t).as_bytes());
                fp.number(size_of::<$t>());
                $(
                    fp.bytes(stringify!($f).as_bytes());
                    fp.number(offset_of!($t, $f));
                    fp.number(field_size(|x: &$t| &x.$f));
                )*
                $($(<$n as Layout>::layout(fp);)*)?
            }
        }
    )*};
}

impl Layout for crate::flowtable::KeyHash {
    fn layout(fp: &mut Fingerprint) {
        fp.bytes(crate::flowtable::KEY_HASH.as_bytes());
        fp.bytes(crate::flowtable::HEADS_LAYOUT.as_bytes());
        fp.bytes(crate::flowtable::SLOT_WORD_LAYOUT.as_bytes());
        fp.number(crate::flowtable::HEADS_PER_ELEMENT as usize);
        for (first, second) in crate::flowtable::KeyHash::samples() {
            fp.number(first as usize);
            fp.number(second as usize);
        }
    }
}

layout! {
    Config { tcp_timeout_ns, other_timeout_ns, closing_timeout_ns, embryonic_timeout_ns, flow_capacity };
    FlowBudget { tokens, budget, last_ns, refused };
    VpcAddr { vpc_id, addr };
    IfaceInfo { vpc_id, mac, flags, _pad };
    Listener { proto, _pad, port_lo, port_hi, _pad2 };
    ListenerSet { count, _pad, listeners } [Listener];
    VpcPort { ifindex, mac, mtu };
    LbSet { count, _pad, addrs, slots };
    GwlbZone { service_id, zone_id };
    ApplianceSet { count, _pad, addrs };
    Appliance { service_id, healthy, counter_slot };
    CounterKey { kind, a, b };
    EndpointCounters {
        to_service_packets, to_service_bytes, to_consumer_packets, to_consumer_bytes, new_flows,
        flow_log_lost, drops,
    };
    GatewayRoute { prefix_len, vpc_id, addr };
    EndpointEni {
        endpoint_id, service_id, consumer_account, state, flags, zone_id, provider_vpc_id,
        lb_addr, gateway, flow_share, counter_slot,
    };
    SnatPool { count, port_min, port_max, addrs };
    Neighbor { mac, _pad };
    FlowKey { vpc_id, src, dst, sport, dport, proto, _pad, _pad2 };
    FlowEntry {
        new_src, new_dst, new_sport, new_dport, out_ifindex, src_mac, dst_mac, out_vpc_id,
        endpoint_id, direction, tcp_flags, flags, fast_packets, last_seen, checked, counter_slot,
        peer_mac, out_mtu, epoch, csum_ip, csum_l4,
    };
    Rule { addr, prefix, proto, action, _pad, port_lo, port_hi };
    RuleSet { count, _pad, rules } [Rule];
    VpcAddr6 { vpc_id, addr };
    GatewayRoute6 { prefix_len, vpc_id, addr };
    EndpointEni6 { eni, lb_addr } [EndpointEni];
    SnatPool6 { count, port_min, port_max, addrs };
    FlowKey6 { vpc_id, src, dst, sport, dport, proto, _pad, _pad2 };
    FlowEntry6 {
        new_src, new_dst, new_sport, new_dport, out_ifindex, src_mac, dst_mac, out_vpc_id,
        endpoint_id, direction, tcp_flags, flags, fast_packets, last_seen, checked, counter_slot,
        peer_mac, out_mtu, epoch, csum_l4, gwlb_cookie_lo,
    };
    Rule6 { addr, prefix, proto, action, _pad, port_lo, port_hi };
    RuleSet6 { count, _pad, rules } [Rule6];
    FlowSlot { state, key, entry } [FlowKey, FlowEntry];
    FlowSlot6 { state, key, entry } [FlowKey6, FlowEntry6];
    FlowBucket { slots } [FlowSlot, crate::flowtable::KeyHash];
    FlowBucket6 { slots } [FlowSlot6, crate::flowtable::KeyHash];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_sizes_other_fields_differ() {
        // Two 8-byte types of two 4-byte fields each: only their fields tell them apart.
        assert_eq!(size_of::<GwlbZone>(), size_of::<VpcAddr>());
        assert_ne!(of::<u32, GwlbZone>(), of::<u32, VpcAddr>());
        assert_ne!(
            of::<u32, u64>(),
            of::<u64, u32>(),
            "key and value kept apart"
        );
        assert_eq!(of::<FlowKey, FlowEntry>(), of::<FlowKey, FlowEntry>());
    }

    #[test]
    fn nested_types_count() {
        let mut with = Fingerprint::default();
        RuleSet::layout(&mut with);
        let mut without = Fingerprint::default();
        without.bytes(b"RuleSet");
        without.number(size_of::<RuleSet>());
        for (name, at, size) in [
            ("count", offset_of!(RuleSet, count), 4),
            ("_pad", offset_of!(RuleSet, _pad), 4),
            (
                "rules",
                offset_of!(RuleSet, rules),
                size_of::<[Rule; MAX_RULES]>(),
            ),
        ] {
            without.bytes(name.as_bytes());
            without.number(at);
            without.number(size);
        }
        assert_ne!(with.value(), without.value(), "Rule's own layout is in it");
        Rule::layout(&mut without);
        assert_eq!(with.value(), without.value());
    }
}
