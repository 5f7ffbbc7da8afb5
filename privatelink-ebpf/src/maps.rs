//! The maps, declared as BTF maps so `bpftool map dump` prints field names.
//! Sizes here are defaults; the loader overrides `PL_CONNTRACK`'s from configuration.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use privatelink_common::{
    Appliance, ApplianceSet, Config, DEFAULT_CONNTRACK_ENTRIES, EndpointEni, FlowBudget, FlowEntry,
    FlowKey, GwlbZone, IfaceInfo, LbSet, ListenerSet, MAX_ENDPOINTS, MAX_GWLB_NEIGHBORS,
    MAX_IFACES, MAX_NEIGHBORS, MAX_SERVICES, MAX_SNAT_ADDRS, MAX_VPCS, Neighbor, PATH_PROGRAMS,
    RuleSet, SnatPool, VpcAddr, VpcPort, reason::REASON_COUNT,
};

#[btf_map]
pub static PL_IFACES: HashMap<u32, IfaceInfo, { MAX_IFACES as usize }> = HashMap::new();

#[btf_map]
pub static PL_VPC_PORTS: HashMap<u32, VpcPort, { MAX_VPCS as usize }> = HashMap::new();

#[btf_map]
pub static PL_ENDPOINTS: HashMap<VpcAddr, EndpointEni, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static PL_SNAT_POOLS: HashMap<u32, SnatPool, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map]
pub static PL_SNAT_ADDRS: HashMap<VpcAddr, u32, { MAX_SERVICES as usize * MAX_SNAT_ADDRS }> =
    HashMap::new();

#[btf_map]
pub static PL_NEIGHBORS: HashMap<VpcAddr, Neighbor, { MAX_NEIGHBORS as usize }> = HashMap::new();

#[btf_map]
pub static PL_CONNTRACK: LruHashMap<FlowKey, FlowEntry, { DEFAULT_CONNTRACK_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map]
pub static PL_STATS: PerCpuArray<u64, { REASON_COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static PL_CONFIG: Array<Config, 1> = Array::new();

/// The daemon's settings (defaults until it has written them).
#[inline(always)]
pub fn config() -> Config {
    match PL_CONFIG.get(0) {
        Some(c) if c.tcp_timeout_ns != 0 => *c,
        _ => Config::default(),
    }
}

/// The daemon's state epoch, moved on after every change of the maps it owns; flow
/// entries stamped with the current one skip the per-packet endpoint checks.
#[btf_map]
pub static PL_EPOCH: Array<u32, 1> = Array::new();

/// The current epoch (0 until the daemon's first apply: then nothing is stamped).
#[inline(always)]
pub fn epoch() -> u32 {
    match PL_EPOCH.get_ptr(0) {
        // SAFETY: a 4-byte array slot; the daemon writes it whole.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

#[btf_map]
pub static PL_SG_RULES: HashMap<VpcAddr, RuleSet, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static PL_ACL_IN: HashMap<VpcAddr, RuleSet, { MAX_ENDPOINTS as usize }> = HashMap::new();

#[btf_map]
pub static PL_ACL_OUT: HashMap<VpcAddr, RuleSet, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Gateway endpoints' prefix routes, per consumer VPC (longest prefix wins).
#[btf_map]
pub static PL_GW_ROUTES: LpmTrie<VpcAddr, EndpointEni, { MAX_ENDPOINTS as usize }> = LpmTrie::new();

/// Gateway endpoints' route target addresses (answered in ARP).
#[btf_map]
pub static PL_GW_ADDRS: HashMap<VpcAddr, u32, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// GWLB: the appliances new flows are spread over, per service and zone.
#[btf_map]
pub static PL_GWLB_TARGETS: HashMap<GwlbZone, ApplianceSet, { MAX_SERVICES as usize }> =
    HashMap::new();

/// GWLB: every appliance (GENEVE is accepted only from these) and its health.
#[btf_map]
pub static PL_GWLB_APPLS: HashMap<VpcAddr, Appliance, { MAX_SERVICES as usize }> = HashMap::new();

/// GWLB: MACs of inner destinations, resolved by the data path's own ARP requests.
#[btf_map]
pub static PL_GWLB_NEIGH: LruHashMap<VpcAddr, Neighbor, { MAX_GWLB_NEIGHBORS as usize }> =
    LruHashMap::new();

/// What each service publishes (its load balancer's listeners), by service id.
#[btf_map]
pub static PL_LISTENERS: HashMap<u32, ListenerSet, { MAX_SERVICES as usize }> = HashMap::new();

/// The host's own addresses in each VPC and the peers it talks to there (`HOST_ADDR`,
/// `HOST_PEER`): on an isolated interface the kernel sees nothing else.
#[btf_map]
pub static PL_HOST: HashMap<VpcAddr, u32, { MAX_SERVICES as usize }> = HashMap::new();

/// The load balancers of a (service, zone) with several, new flows spread over them.
#[btf_map]
pub static PL_LB_SETS: HashMap<GwlbZone, LbSet, { MAX_SERVICES as usize }> = HashMap::new();

/// Each endpoint's allowance of new flows (the data path's own; LRU, so endpoints that
/// are gone leave by themselves).
#[btf_map]
pub static PL_EP_BUDGET: LruHashMap<u32, FlowBudget, { MAX_ENDPOINTS as usize }> =
    LruHashMap::new();

/// Per-CPU room for the flow entries a new flow is built from: the BPF stack is 512 bytes
/// for the whole call chain, and two entries on it would not fit.
#[btf_map]
pub static PL_SCRATCH: PerCpuArray<FlowEntry, 2> = PerCpuArray::new();

#[inline(always)]
pub fn scratch(i: u32) -> Result<*mut FlowEntry, privatelink_common::Reason> {
    PL_SCRATCH
        .get_ptr_mut(i)
        .ok_or(privatelink_common::Reason::DropConntrackFull)
}

/// The path programs, by `PATH_*` index (filled by the loader).
#[btf_map]
pub static PL_PATHS: ProgramArray<{ PATH_PROGRAMS.len() }> = ProgramArray::new();

/// What classification found, for the path program it tail-calls (one slot per CPU: an
/// XDP run, tail calls included, is not preempted on its CPU).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    pub iface: IfaceInfo,
    pub entry: EndpointEni,
    pub epoch: u32,
}

#[btf_map]
pub static PL_HANDOFF: PerCpuArray<Handoff, 1> = PerCpuArray::new();
