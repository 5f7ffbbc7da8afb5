//! The IPv6 side of the map types: dual-stack endpoints (an ENI with an IPv6 address
//! beside its IPv4 one), full NAT from IPv6 to IPv6, and IPv6 flows steered through GWLB.
//!
//! IPv6 has maps of its own rather than wider IPv4 keys: an IPv4 packet never hashes a
//! 16-byte address, so the IPv4 fast path costs what it cost before dual stack. The values
//! reuse the IPv4 types wherever the address family does not matter (`EndpointEni` for an
//! endpoint's state and flags, `Neighbor`, `RuleSet`'s order and actions).

use crate::{
    Config, EndpointEni, FLOW_GWLB, MAX_RULES, MAX_SNAT_ADDRS, PROTO_ANY, PROTO_TCP, PROTO_UDP,
    idle_timeout_ns,
};

/// An IPv6 address inside one VPC (VPC ranges may overlap, IPv6 ones too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VpcAddr6 {
    pub vpc_id: u32,
    pub addr: [u8; 16],
}

/// Key of `PL_GW_ROUTES6` (an LPM trie): `prefix_len` counts the 32 bits of `vpc_id` plus
/// the prefix's length, as `GatewayRoute` does for IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayRoute6 {
    pub prefix_len: u32,
    pub vpc_id: u32,
    pub addr: [u8; 16],
}

/// Value of `PL_ENDPOINTS6` (key: consumer VPC + the ENI's IPv6 address): the ENI's state as
/// its IPv4 address has it in `PL_ENDPOINTS` (`eni`: endpoint, service, connection,
/// flags, zone, counter slot; its `lb_addr` is the zone's IPv4 load balancer and unused
/// here), and where IPv6 flows go: the zone's load balancer's IPv6 address.
///
/// Also the value of `PL_GW_ROUTES6` (key: consumer VPC + an IPv6 prefix): the route's
/// IPv4 entry (`ENI_FLAG_GATEWAY` or `ENI_FLAG_GWLB`; a gateway endpoint's `eni.gateway`
/// is its IPv4 route target, which names its policy, see `gateway_policy6`) and, for a
/// gateway endpoint, the IPv6 load balancer its flows are sent to, keeping their
/// destination (zero for GWLB routes: their appliances are IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointEni6 {
    pub eni: EndpointEni,
    pub lb_addr: [u8; 16],
}

/// The key of a gateway endpoint's IPv6 policy rules in `PL_SG_RULES6`: its consumer VPC
/// and its IPv4 route target as an IPv4-mapped address (`::ffff:a.b.c.d`). The IPv4
/// rules are under the IPv4 target in `PL_SG_RULES`; the IPv6 ones need no field of their
/// own in the route entry this way, and no ENI's IPv6 address can be one (a VPC's IPv6
/// range is a unicast prefix of at most /64 other than `::`, which no IPv4-mapped
/// address is in).
#[inline(always)]
pub fn gateway_policy6(vpc_id: u32, gateway: [u8; 4]) -> VpcAddr6 {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = gateway[0];
    addr[13] = gateway[1];
    addr[14] = gateway[2];
    addr[15] = gateway[3];
    VpcAddr6 { vpc_id, addr }
}

/// Value of `PL_SNAT6_POOLS` (key: service id): the service's IPv6 SNAT addresses in the
/// provider VPC and the port range handed out on each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPool6 {
    pub count: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub addrs: [[u8; 16]; MAX_SNAT_ADDRS],
}

/// Key of `PL_CONNTRACK6`: an IPv6 packet's 5-tuple as it arrives on a VPC-facing
/// interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub vpc_id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey6 {
    /// The key of a `proto` packet from `src:sport` to `dst:dport` in VPC `vpc_id`.
    #[inline(always)]
    pub const fn new(
        vpc_id: u32,
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> FlowKey6 {
        // The addresses as arrays: built from words, the entry program's IPv6 partner keys
        // took more stack than BPF has. The ports and the protocol as the whole words the
        // flow table reads them as (see `FlowKey::of_words`). The data path's hot keys are
        // filled a word at a time (`fill_key6` in map memory, `conntrack6::key6`).
        let mut k = FlowKey6 {
            vpc_id,
            src,
            dst,
            sport: 0,
            dport: 0,
            proto: 0,
            _pad: 0,
            _pad2: 0,
        };
        let words = (&raw mut k).cast::<u32>();
        // SAFETY: words 9 (the ports) and 10 (the protocol and the padding) of a `repr(C)`
        // key of eleven words, 4-aligned (asserted with `SlotKey`'s impls).
        unsafe {
            words.add(9).write(crate::ports_word(sport, dport));
            words.add(10).write(crate::proto_word(proto));
        }
        k
    }

    /// The same flow seen from the other end.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey6 {
        FlowKey6::new(
            self.vpc_id,
            self.dst,
            self.src,
            self.dport,
            self.sport,
            self.proto,
        )
    }
}

/// Value of `PL_CONNTRACK6`: an IPv6 flow direction, field for field as `FlowEntry` (the
/// same `direction`, `tcp_flags` (`CT_*`), `flags` (`FLOW_*`) and timestamps), with IPv6
/// addresses, and no header checksum delta (IPv6 has no header checksum).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry6 {
    pub new_src: [u8; 16],
    pub new_dst: [u8; 16],
    pub new_sport: u16,
    pub new_dport: u16,
    pub out_ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub out_vpc_id: u32,
    pub endpoint_id: u32,
    pub direction: u8,
    pub tcp_flags: u8,
    pub flags: u8,
    /// As `FlowEntry::fast_packets`.
    pub fast_packets: u8,
    /// As `FlowEntry::last_seen`.
    pub last_seen: u32,
    /// As `FlowEntry::checked`.
    pub checked: u16,
    /// As `FlowEntry::counter_slot`.
    pub counter_slot: u16,
    pub peer_mac: [u8; 6],
    pub out_mtu: u16,
    pub epoch: u32,
    /// What this direction's rewrite adds to the TCP/UDP checksum (folded). GWLB flows
    /// rewrite no checksum: they keep their GENEVE flow cookie's high half here, its low
    /// half in `gwlb_cookie_lo` (`gwlb_cookie`), stamped with `epoch`.
    pub csum_l4: u16,
    /// GWLB flows: the GENEVE flow cookie's low half (0 for NAT flows).
    pub gwlb_cookie_lo: u16,
}

const _: () = assert!(core::mem::size_of::<FlowEntry6>() == 88);

impl FlowEntry6 {
    /// A GWLB flow's GENEVE flow cookie, stamped with its epoch (see `csum_l4`).
    #[inline(always)]
    pub fn gwlb_cookie(&self) -> u32 {
        (self.csum_l4 as u32) << 16 | self.gwlb_cookie_lo as u32
    }

    #[inline(always)]
    pub fn set_gwlb_cookie(&mut self, cookie: u32) {
        (self.csum_l4, self.gwlb_cookie_lo) = ((cookie >> 16) as u16, cookie as u16);
    }

    /// An entry with every field zero (see `FlowEntry::zeroed`).
    #[inline(always)]
    pub const fn zeroed() -> FlowEntry6 {
        FlowEntry6 {
            new_src: [0; 16],
            new_dst: [0; 16],
            new_sport: 0,
            new_dport: 0,
            out_ifindex: 0,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            out_vpc_id: 0,
            endpoint_id: 0,
            direction: 0,
            tcp_flags: 0,
            flags: 0,
            fast_packets: 0,
            last_seen: 0,
            checked: 0,
            counter_slot: 0,
            peer_mac: [0; 6],
            out_mtu: 0,
            epoch: 0,
            csum_l4: 0,
            gwlb_cookie_lo: 0,
        }
    }

    /// The key of the partner entry (the other direction, as its packets arrive):
    /// `out_vpc_id` + the rewritten tuple, reversed.
    #[inline(always)]
    pub fn partner_key(&self, proto: u8) -> FlowKey6 {
        FlowKey6::new(
            self.out_vpc_id,
            self.new_dst,
            self.new_src,
            self.new_dport,
            self.new_sport,
            proto,
        )
    }

    /// For readers of the table: the key of the other direction of the flow stored under
    /// `key` (`FlowEntry::partner`).
    pub fn partner(&self, key: &FlowKey6) -> FlowKey6 {
        if self.flags & FLOW_GWLB != 0 {
            key.reversed()
        } else {
            self.partner_key(key.proto)
        }
    }

    /// For readers of the table: `FlowEntry::is_live`'s rule (either direction seen
    /// within its idle timeout).
    pub fn is_live(
        &self,
        proto: u8,
        now_ns: u64,
        cfg: &Config,
        partner: impl FnOnce() -> Option<FlowEntry6>,
    ) -> bool {
        let expired = |e: &FlowEntry6| {
            crate::seen_elapsed_ns(now_ns, e.last_seen) > idle_timeout_ns(e.tcp_flags, proto, cfg)
        };
        !expired(self) || partner().is_some_and(|p| !expired(&p))
    }
}

/// One IPv6 filter rule (`Rule` with a 128-bit remote prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule6 {
    pub addr: [u8; 16],
    pub prefix: u8,
    pub proto: u8,
    pub action: u8,
    pub _pad: u8,
    pub port_lo: u16,
    pub port_hi: u16,
}

impl Rule6 {
    /// Whether a packet from/to remote address `remote`, protocol `proto` and ENI-side
    /// port `port` matches (`Rule::matches` for IPv6).
    #[inline(always)]
    pub fn matches(&self, remote: [u8; 16], proto: u8, port: u16) -> bool {
        let prefix = self.prefix.min(128) as u32;
        let (hi_r, lo_r) = halves(remote);
        let (hi_a, lo_a) = halves(self.addr);
        let hi_mask = if prefix == 0 {
            0
        } else if prefix >= 64 {
            u64::MAX
        } else {
            u64::MAX << (64 - prefix)
        };
        let lo_mask = if prefix <= 64 {
            0
        } else if prefix >= 128 {
            u64::MAX
        } else {
            u64::MAX << (128 - prefix)
        };
        if (hi_r ^ hi_a) & hi_mask != 0 || (lo_r ^ lo_a) & lo_mask != 0 {
            return false;
        }
        if self.proto != PROTO_ANY && self.proto != proto {
            return false;
        }
        if (proto == PROTO_TCP || proto == PROTO_UDP) && self.proto != PROTO_ANY {
            return port >= self.port_lo && port <= self.port_hi;
        }
        true
    }
}

#[inline(always)]
fn halves(a: [u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Value of `PL_SG_RULES6` / `PL_ACL6_IN` / `PL_ACL6_OUT` (key: VPC + the ENI's IPv6
/// address): the IPv6 rules of the same merged security groups / ACL, in the same order,
/// first match decides (`RuleSet` for IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet6 {
    pub count: u32,
    pub _pad: u32,
    pub rules: [Rule6; MAX_RULES],
}

impl Default for RuleSet6 {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            rules: [Rule6::default(); MAX_RULES],
        }
    }
}

impl RuleSet6 {
    /// The action of the first matching rule, if any.
    #[inline(always)]
    pub fn decide(&self, remote: [u8; 16], proto: u8, port: u16) -> Option<u8> {
        let n = self.count as usize;
        for i in 0..MAX_RULES {
            if i >= n {
                break;
            }
            let r = &self.rules[i];
            if r.matches(remote, proto, port) {
                return Some(r.action);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;
    use crate::{RULE_ACCEPT, RULE_DROP};

    #[test]
    fn an_ipv6_key_has_the_fields_it_was_given() {
        let src: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let dst: [u8; 16] = core::array::from_fn(|i| 0xf0 - i as u8);
        let k = FlowKey6::new(9, src, dst, 40000, 443, crate::PROTO_UDP);
        assert_eq!(
            (k.vpc_id, k.src, k.dst, k.sport, k.dport, k.proto),
            (9, src, dst, 40000, 443, crate::PROTO_UDP)
        );
        assert_eq!((k._pad, k._pad2), (0, 0), "the padding zero");
        assert_eq!((k.reversed().src, k.reversed().sport), (dst, 443));
        assert_eq!(k.reversed().reversed(), k);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VpcAddr6>(), 20);
        assert_eq!(size_of::<GatewayRoute6>(), 24);
        assert_eq!(size_of::<EndpointEni6>(), 44 + 16);
        assert_eq!(size_of::<SnatPool6>(), 8 + 16 * MAX_SNAT_ADDRS);
        assert_eq!(size_of::<FlowKey6>(), 44);
        assert_eq!(size_of::<FlowEntry6>(), 88);
        assert_eq!(size_of::<Rule6>(), 24);
        assert_eq!(size_of::<RuleSet6>(), 8 + 24 * MAX_RULES);
    }

    #[test]
    fn a_gateway_policy_key_is_its_ipv4_target_ipv4_mapped() {
        extern crate std;
        let k = gateway_policy6(7, [10, 10, 1, 1]);
        assert_eq!(k.vpc_id, 7);
        assert_eq!(
            k.addr,
            std::net::Ipv4Addr::new(10, 10, 1, 1)
                .to_ipv6_mapped()
                .octets()
        );
    }

    #[test]
    fn rules6_match_prefix_protocol_and_ports() {
        let mut net = [0u8; 16];
        net[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let mut inside = net;
        inside[15] = 7;
        let mut outside = net;
        outside[3] = 0xb9;
        let r = Rule6 {
            addr: net,
            prefix: 32,
            proto: PROTO_TCP,
            action: RULE_ACCEPT,
            port_lo: 80,
            port_hi: 80,
            ..Rule6::default()
        };
        assert!(r.matches(inside, PROTO_TCP, 80));
        assert!(!r.matches(outside, PROTO_TCP, 80));
        assert!(!r.matches(inside, PROTO_TCP, 81));
        assert!(!r.matches(inside, PROTO_UDP, 80));
        // /0 matches all, /128 one address, /72 crosses the halves.
        let any = Rule6 {
            prefix: 0,
            action: RULE_DROP,
            ..Rule6::default()
        };
        assert!(any.matches(outside, PROTO_UDP, 1));
        let host = Rule6 {
            addr: inside,
            prefix: 128,
            ..Rule6::default()
        };
        assert!(host.matches(inside, PROTO_UDP, 1));
        assert!(!host.matches(net, PROTO_UDP, 1));
        let mut near = inside;
        near[8] = 0x80;
        let p72 = Rule6 {
            addr: inside,
            prefix: 72,
            ..Rule6::default()
        };
        assert!(p72.matches(inside, PROTO_TCP, 1));
        assert!(!p72.matches(near, PROTO_TCP, 1));
        let mut set = RuleSet6 {
            count: 2,
            ..RuleSet6::default()
        };
        set.rules[0] = r;
        set.rules[1] = any;
        assert_eq!(set.decide(inside, PROTO_TCP, 80), Some(RULE_ACCEPT));
        assert_eq!(set.decide(inside, PROTO_TCP, 22), Some(RULE_DROP));
        set.count = 0;
        assert_eq!(set.decide(inside, PROTO_TCP, 80), None);
    }
}
