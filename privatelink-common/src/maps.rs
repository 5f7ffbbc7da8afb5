//! The catalogue of the maps pinned by name: one line per map, everything else derived
//! from it (the `map_names` constants and `ALL`, the XDP program's declarations, the
//! daemon's pin layout check and its sync of `Desired`), as `reason!` lines are for the
//! verdicts.
//!
//! `for_each_map!(callback)` invokes `callback! { ... }` with the table. A line reads
//!
//! ```text
//! CONST = PL_NAME: Kind<Key, Value>[capacity, check], owner;
//! ```
//!
//! and reaches the callback in one uniform shape (`__catalogue_rows!`), so a callback
//! matches `{ #[doc]… CONST PL_NAME Kind [Key] [PinnedKey] [Value] [capacity] check owner
//! (field?) }` per map and takes only the columns it needs.
//!
//! - `CONST`: the constant in `map_names`; `PL_NAME`: the map's name in the object (the
//!   XDP program's static), in `bpftool map show` and as its pin file.
//! - `Kind`: the map type as aya-ebpf's `btf_maps` names it (`HashMap`, `LruHashMap`,
//!   `LpmTrie`, `Array`, `PerCpuArray`), or `FlowArray`: a flow table, an `Array` userspace
//!   may map (`BPF_F_MMAPABLE`). Arrays' `Key` is `u32` (their index). An
//!   `LpmTrie`'s key reads `Data as Pinned`: the data the program looks up, and the
//!   type whose layout its pinned key (prefix length + data) has.
//! - `capacity`: entries, then `fixed` when a pinned map of another capacity must be
//!   replaced, `configured` when the daemon sets it at load (then it is the default),
//!   `unchecked` when a pin of any capacity is kept.
//! - `owner`: `synced(field)` for maps the daemon fills from `Desired::field`;
//!   `registered(field)` for maps whose keys the daemon writes from `Desired::field` and
//!   whose values the data path fills; `settings` for maps the daemon writes otherwise;
//!   `datapath` for maps only the data path writes. The daemon syncs `synced` and
//!   `registered` maps in the table's order: where traffic can go and the filters come
//!   before the endpoints that use them.
//!
//! Maps of one loaded object only (the path programs' array, per-CPU scratch room) are
//! not pinned by name and not in the catalogue.

#[macro_export]
macro_rules! for_each_map {
    ($callback:ident) => {
        $crate::__catalogue_rows! { $callback []
            /// Per interface (ifindex): its VPC, MAC and flags.
            IFACES = PL_IFACES: HashMap<u32, $crate::IfaceInfo>[$crate::MAX_IFACES, unchecked], synced(ifaces);
            /// Per VPC: the interface it is attached through.
            VPC_PORTS = PL_VPC_PORTS: HashMap<u32, $crate::VpcPort>[$crate::MAX_VPCS, unchecked], synced(vpc_ports);
            /// The host's own addresses in each VPC and the peers it talks to there (`HOST_ADDR`,
            /// `HOST_PEER`): on an isolated interface the kernel sees nothing else.
            HOST = PL_HOST: HashMap<$crate::VpcAddr, u32>[$crate::MAX_SERVICES, unchecked], synced(host);
            /// The load balancers of a (service, zone) with several, new flows spread over them.
            LB_SETS = PL_LB_SETS: HashMap<$crate::GwlbZone, $crate::LbSet>[$crate::MAX_SERVICES, unchecked], synced(lb_sets);
            /// What each service publishes (its load balancer's listeners), by service id.
            LISTENERS = PL_LISTENERS: HashMap<u32, $crate::ListenerSet>[$crate::MAX_SERVICES, unchecked], synced(listeners);
            /// Per service: its SNAT addresses and port range.
            SNAT_POOLS = PL_SNAT_POOLS: HashMap<u32, $crate::SnatPool>[$crate::MAX_SERVICES, unchecked], synced(snat_pools);
            /// SNAT addresses (answered in ARP), by VPC and address: their service.
            SNAT_ADDRS = PL_SNAT_ADDRS: HashMap<$crate::VpcAddr, u32>[$crate::MAX_SERVICES as usize * $crate::MAX_SNAT_ADDRS, unchecked], synced(snat_addrs);
            /// Security group rules of endpoint ENIs.
            SG_RULES = PL_SG_RULES: HashMap<$crate::VpcAddr, $crate::RuleSet>[$crate::MAX_ENDPOINTS, unchecked], synced(sg_rules);
            /// Network ACL ingress rules of endpoint ENIs' vswitches.
            ACL_IN = PL_ACL_IN: HashMap<$crate::VpcAddr, $crate::RuleSet>[$crate::MAX_ENDPOINTS, unchecked], synced(acl_in);
            /// Network ACL egress rules of endpoint ENIs' vswitches.
            ACL_OUT = PL_ACL_OUT: HashMap<$crate::VpcAddr, $crate::RuleSet>[$crate::MAX_ENDPOINTS, unchecked], synced(acl_out);
            /// Per service: its IPv6 SNAT addresses and port range (dual-stack services).
            SNAT6_POOLS = PL_SNAT6_POOLS: HashMap<u32, $crate::SnatPool6>[$crate::MAX_SERVICES, unchecked], synced(snat6_pools);
            /// IPv6 SNAT addresses (answered in neighbour discovery), by VPC and address: their
            /// service.
            SNAT6_ADDRS = PL_SNAT6_ADDRS: HashMap<$crate::VpcAddr6, u32>[$crate::MAX_SERVICES as usize * $crate::MAX_SNAT_ADDRS, unchecked], synced(snat6_addrs);
            /// Security group rules of endpoint ENIs' IPv6 addresses (their IPv6 rules).
            SG_RULES6 = PL_SG_RULES6: HashMap<$crate::VpcAddr6, $crate::RuleSet6>[$crate::MAX_ENDPOINTS, unchecked], synced(sg_rules6);
            /// Network ACL ingress rules (the IPv6 ones) of endpoint ENIs' IPv6 addresses.
            ACL6_IN = PL_ACL6_IN: HashMap<$crate::VpcAddr6, $crate::RuleSet6>[$crate::MAX_ENDPOINTS, unchecked], synced(acl6_in);
            /// Network ACL egress rules (the IPv6 ones) of endpoint ENIs' IPv6 addresses.
            ACL6_OUT = PL_ACL6_OUT: HashMap<$crate::VpcAddr6, $crate::RuleSet6>[$crate::MAX_ENDPOINTS, unchecked], synced(acl6_out);
            /// Gateway endpoints' route target addresses (answered in ARP).
            GATEWAY_ADDRS = PL_GW_ADDRS: HashMap<$crate::VpcAddr, u32>[$crate::MAX_ENDPOINTS, unchecked], synced(gw_addrs);
            /// GWLB endpoints' IPv6 ENI addresses and dualstack gateway endpoints' IPv6 route
            /// targets (answered in neighbour discovery, as their IPv4 ones are in ARP), by
            /// consumer VPC and address: their endpoint.
            GATEWAY_ADDRS6 = PL_GW_ADDRS6: HashMap<$crate::VpcAddr6, u32>[$crate::MAX_ENDPOINTS, unchecked], synced(gw_addrs6);
            /// What each slot of `PL_EP_COUNTERS` counts (`CounterKey` → slot), the daemon's
            /// record kept beside the counters, so that a restart reads them under the same names;
            /// written before the entries that name its slots.
            EP_SLOTS = PL_EP_SLOTS: HashMap<$crate::CounterKey, u32>[$crate::MAX_COUNTER_SLOTS, unchecked], synced(counter_slots);
            /// GWLB: every appliance (GENEVE is accepted only from these) and its health.
            GWLB_APPLIANCES = PL_GWLB_APPLS: HashMap<$crate::VpcAddr, $crate::Appliance>[$crate::MAX_SERVICES, unchecked], synced(gwlb_appliances);
            /// GWLB: the appliances new flows are spread over, per service and zone.
            GWLB_TARGETS = PL_GWLB_TARGETS: HashMap<$crate::GwlbZone, $crate::ApplianceSet>[$crate::MAX_SERVICES, unchecked], synced(gwlb_targets);
            /// Endpoint ENIs, by consumer VPC and address: everything needed to forward.
            ENDPOINTS = PL_ENDPOINTS: HashMap<$crate::VpcAddr, $crate::EndpointEni>[$crate::MAX_ENDPOINTS, unchecked], synced(endpoints);
            /// Dual-stack endpoint ENIs, by consumer VPC and IPv6 address.
            ENDPOINTS6 = PL_ENDPOINTS6: HashMap<$crate::VpcAddr6, $crate::EndpointEni6>[$crate::MAX_ENDPOINTS, unchecked], synced(endpoints6);
            /// IPv6 next hops (load balancers) and their MACs, learned from neighbour
            /// advertisements for the registered addresses only.
            NEIGHBORS6 = PL_NEIGHBORS6: HashMap<$crate::VpcAddr6, $crate::Neighbor>[$crate::MAX_NEIGHBORS, unchecked], registered(next_hops6);
            /// IPv6 prefix routes of gateway and GWLB endpoints, per consumer VPC (longest prefix
            /// wins): the route's IPv4 entry, and for a gateway endpoint the zone's IPv6 load
            /// balancer (its next hop).
            GATEWAY_ROUTES6 = PL_GW_ROUTES6: LpmTrie<$crate::VpcAddr6 as $crate::GatewayRoute6, $crate::EndpointEni6>[$crate::MAX_ENDPOINTS, unchecked], synced(gw_routes6);
            /// Next hops (load balancers, appliances) and their MACs, learned from ARP for
            /// the registered addresses only.
            NEIGHBORS = PL_NEIGHBORS: HashMap<$crate::VpcAddr, $crate::Neighbor>[$crate::MAX_NEIGHBORS, unchecked], registered(next_hops);
            /// Gateway endpoints' prefix routes, per consumer VPC (longest prefix wins).
            GATEWAY_ROUTES = PL_GW_ROUTES: LpmTrie<$crate::VpcAddr as $crate::GatewayRoute, $crate::EndpointEni>[$crate::MAX_ENDPOINTS, unchecked], synced(gw_routes);
            /// The flows, one slot per direction, in buckets the data path indexes itself
            /// (`flowtable`). Its capacity is a daemon option (entries, made buckets).
            CONNTRACK = PL_CONNTRACK: FlowArray<u32, $crate::FlowBucket>[$crate::flowtable::table_elements($crate::DEFAULT_CONNTRACK_ENTRIES), configured], datapath;
            /// The IPv6 flows, one slot per direction; as many buckets as `PL_CONNTRACK`.
            CONNTRACK6 = PL_CONNTRACK6: FlowArray<u32, $crate::FlowBucket6>[$crate::flowtable::table_elements($crate::DEFAULT_CONNTRACK_ENTRIES), configured], datapath;
            /// Verdict counters per CPU, by `Reason` index.
            STATS = PL_STATS: PerCpuArray<u32, u64>[$crate::reason::REASON_COUNT, fixed], datapath;
            /// The data path's settings (`PL_CONFIG[0]`), written by the daemon at start.
            CONFIG = PL_CONFIG: Array<u32, $crate::Config>[1, unchecked], settings;
            /// GWLB: MACs of inner destinations, resolved by the data path's own ARP requests.
            GWLB_NEIGHBORS = PL_GWLB_NEIGH: LruHashMap<$crate::VpcAddr, $crate::Neighbor>[$crate::MAX_GWLB_NEIGHBORS, unchecked], datapath;
            /// The daemon's state epoch, moved on after every change of the maps it owns; flow
            /// entries stamped with the current one skip the per-packet endpoint checks.
            EPOCH = PL_EPOCH: Array<u32, u32>[1, unchecked], settings;
            /// Per endpoint ENI and GWLB appliance (by slot, see `PL_EP_SLOTS`), per CPU: packets
            /// and bytes each way, new flows, drops by kind, lost flow events.
            EP_COUNTERS = PL_EP_COUNTERS: PerCpuArray<u32, $crate::EndpointCounters>[$crate::MAX_COUNTER_SLOTS, fixed], datapath;
            /// GWLB: MACs of IPv6 inner destinations, resolved by the data path's own neighbour
            /// solicitations.
            GWLB_NEIGHBORS6 = PL_GWLB_NEIGH6: LruHashMap<$crate::VpcAddr6, $crate::Neighbor>[$crate::MAX_GWLB_NEIGHBORS, unchecked], datapath;
            /// Each endpoint's allowance of new flows (the data path's own; LRU, so endpoints that
            /// are gone leave by themselves).
            EP_BUDGET = PL_EP_BUDGET: LruHashMap<u32, $crate::FlowBudget>[$crate::MAX_ENDPOINTS, unchecked], datapath;
        }
    };
}

/// Puts each `for_each_map!` line in the one shape its callbacks match (see the module
/// doc): a line without `as` has its key as its pinned key.
#[doc(hidden)]
#[macro_export]
macro_rules! __catalogue_rows {
    ($cb:ident [$($rows:tt)*]) => {
        $cb! { $($rows)* }
    };
    ($cb:ident [$($rows:tt)*] $(#[$doc:meta])* $name:ident = $map:ident: $kind:ident<$key:ty as $pinned:ty, $value:ty>[$cap:expr, $check:ident], $owner:ident $(($field:ident))?; $($rest:tt)*) => {
        $crate::__catalogue_rows! { $cb [$($rows)* { $(#[$doc])* $name $map $kind [$key] [$pinned] [$value] [$cap] $check $owner ($($field)?) }] $($rest)* }
    };
    ($cb:ident [$($rows:tt)*] $(#[$doc:meta])* $name:ident = $map:ident: $kind:ident<$key:ty, $value:ty>[$cap:expr, $check:ident], $owner:ident $(($field:ident))?; $($rest:tt)*) => {
        $crate::__catalogue_rows! { $cb [$($rows)* { $(#[$doc])* $name $map $kind [$key] [$key] [$value] [$cap] $check $owner ($($field)?) }] $($rest)* }
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use crate::map_names::ALL;

    /// The README's map table (its one list kept by hand) names every map of the catalogue,
    /// and no pinned map that is not in it.
    #[test]
    fn the_readme_lists_the_catalogue() {
        let readme = include_str!("../../README.md");
        let start = readme.find("\n## Maps\n").expect("a Maps section");
        let section = &readme[start..];
        let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `PL_"))
            .collect();
        for name in ALL {
            let cell = std::format!("`{name}`");
            assert!(
                rows.iter()
                    .any(|r| r.split('|').nth(1).is_some_and(|c| c.contains(&cell))),
                "README's map table lacks {name}"
            );
        }
        // The object's own maps (not pinned by name, not in the catalogue).
        let own = [
            "PL_SCRATCH",
            "PL_PATHS",
            "PL_HANDOFF",
            "PL_FLOW_EVENTS",
            "PL_FLOW_SCRATCH",
            "PL_FLOW_SCR6",
            "PL_HANDOFF6",
            "PL_SCRATCH6",
            "PL_KEYS6",
            "PL_CLOCK",
            "PL_IFCACHE",
            "PL_PORTCACHE",
            "PL_APPLCACHE",
            "PL_FLOWKEY",
            "PL_FENCE",
        ];
        for r in rows {
            let first = r.split('|').nth(1).unwrap_or("");
            for n in first.split('`').filter(|n| n.starts_with("PL_")) {
                assert!(
                    ALL.contains(&n) || own.contains(&n),
                    "README's map table lists {n}, which the catalogue does not have"
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        for (i, n) in ALL.iter().enumerate() {
            assert!(n.starts_with("PL_"), "{n}");
            // BPF_OBJ_NAME_LEN is 16 with the terminating NUL: longer names are cut.
            assert!(n.len() <= 15, "{n}");
            assert!(!ALL[..i].contains(n), "{n} twice");
        }
    }
}
