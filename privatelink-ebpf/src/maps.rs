//! The maps, declared as BTF maps so `bpftool map dump` prints field names. The maps
//! pinned by name are declared from the catalogue (`privatelink_common::for_each_map!`);
//! the ones below it are this object's own. Sizes here are defaults; the loader overrides
//! `PL_CONNTRACK`'s from configuration.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use privatelink_common::{
    Appliance, EndpointEni, FlowEntry, IfaceInfo, PATH_PROGRAMS, VpcAddr, VpcPort,
    flowtable::{KEY_HASH_PARAMS, KeyHashParams},
};

/// One static per catalogue line, named as the map (aya-ebpf names a map after its static).
macro_rules! declare {
    ($({ $(#[$doc:meta])* $name:ident $map:ident $kind:ident [$key:ty] [$pinned:ty] [$value:ty] [$cap:expr] $($owner:tt)* })*) => {
        $(declare!(@one $(#[$doc])* $map $kind $key, $value, $cap);)*
    };
    (@one $(#[$doc:meta])* $map:ident Array $key:ty, $value:ty, $cap:expr) => {
        $(#[$doc])*
        #[btf_map]
        pub static $map: Array<$value, { ($cap) as usize }> = Array::new();
    };
    (@one $(#[$doc:meta])* $map:ident FlowArray $key:ty, $value:ty, $cap:expr) => {
        $(#[$doc])*
        #[btf_map]
        pub static $map: FlowArray<$value> = Array::new();
    };
    (@one $(#[$doc:meta])* $map:ident PerCpuArray $key:ty, $value:ty, $cap:expr) => {
        $(#[$doc])*
        #[btf_map]
        pub static $map: PerCpuArray<$value, { ($cap) as usize }> = PerCpuArray::new();
    };
    (@one $(#[$doc:meta])* $map:ident $kind:ident $key:ty, $value:ty, $cap:expr) => {
        $(#[$doc])*
        #[btf_map]
        pub static $map: $kind<$key, $value, { ($cap) as usize }> = $kind::new();
    };
}

/// A flow table (`crate::flowtable`): an array of its heads, then its buckets, which the
/// daemon may map into its memory to read. The loader sets its capacity from configuration.
pub type FlowArray<S> = Array<
    S,
    {
        privatelink_common::flowtable::table_elements(privatelink_common::DEFAULT_CONNTRACK_ENTRIES)
            as usize
    },
    { aya_ebpf::bindings::BPF_F_MMAPABLE as usize },
>;

privatelink_common::for_each_map!(declare);

/// The defaults, in `.rodata`.
static DEFAULT_CONFIG: privatelink_common::Config = privatelink_common::Config::DEFAULT;

/// The daemon's settings (defaults until it has written them), where they are: a copy
/// would take 40 bytes of a path's stack.
#[inline(always)]
pub fn config() -> &'static privatelink_common::Config {
    match PL_CONFIG.get(0) {
        Some(c) if c.tcp_timeout_ns != 0 => c,
        _ => &DEFAULT_CONFIG,
    }
}

/// The current epoch (0 until the daemon's first apply: then nothing is stamped).
#[inline(always)]
pub fn epoch() -> u32 {
    match PL_EPOCH.get_ptr(0) {
        // SAFETY: a 4-byte array slot; the daemon writes it whole.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Per-CPU: the word `order_after_epoch`'s atomic works on (never changed: it adds 0).
#[btf_map]
pub static PL_FENCE: PerCpuArray<u64, 1> = PerCpuArray::new();

/// A full memory barrier: what the packet read before (its `PL_EPOCH`) is ordered before
/// what it reads after (the daemon's maps). The daemon writes its maps, then moves the
/// epoch on (`bump_epoch`, behind a fence of its own), so a path that stamps a flow with
/// the epoch it read must read the maps it checks the flow against after the epoch: else a
/// weakly ordered CPU (arm64) may take their older contents and stamp them as checked
/// under the newer epoch. BPF has no fence instruction: a fetching atomic is one (the JITs
/// emit it fully ordered, as the kernel's `atomic_fetch_*`: a `lock cmpxchg` loop on x86,
/// `ldsetal` or an exclusive loop ending in `dmb ish` on arm64; LLVM emits this add of 0
/// as `atomic_fetch_or` of 0), here on this CPU's own word (no other CPU's line is
/// touched).
/// Taken by the paths that check and stamp (the IPv4 full path before its first lookup,
/// `classify::classify`; the IPv6 program, `ipv6::frame`) and by the lookup caches' fills
/// (`cached`), so not by a packet on the established paths, unless its interface's cache
/// slot has to be filled. x86 needs no barrier and pays one `lock cmpxchg` per such
/// packet (nothing the first-packet benchmark tells apart from noise).
#[inline(always)]
pub fn order_after_epoch() {
    if let Some(p) = PL_FENCE.get_ptr_mut(0) {
        // SAFETY: this CPU's aligned word, valid for this run. The old value is stored
        // back (a no-op): an atomic whose result is unused may be emitted in the plain form
        // (`stadd` on arm64), which orders nothing; today's LLVM emits the fetching OR
        // either way, and `the_checking_paths_hold_a_barrier_after_the_epoch` checks it.
        unsafe {
            let old = core::intrinsics::atomic_xadd::<
                u64,
                u64,
                { core::intrinsics::AtomicOrdering::SeqCst },
            >(p, 0);
            core::ptr::write_volatile(p, old);
        }
    }
}

/// The flow clock's last reading on this CPU, with the jiffies it was read at.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ClockCache {
    pub jiffies: u64,
    pub ns: u64,
}

#[btf_map]
pub static PL_CLOCK: PerCpuArray<ClockCache, 1> = PerCpuArray::new();

/// The flow clock: CLOCK_MONOTONIC at tick resolution (`bpf_ktime_get_coarse_ns`, which
/// the daemon reads as CLOCK_MONOTONIC_COARSE). The coarse clock moves once a tick, and so
/// do the jiffies: within a tick this CPU's last reading is the clock's value, and a packet
/// pays the jiffies load (which the verifier inlines) and a per-CPU slot (inlined too)
/// instead of a helper call (whose return costs tens of nanoseconds behind this machine's
/// return-stack mitigations). The reading may lag one tick if the jiffies moved on just
/// before the coarse clock; the timeouts it serves are seconds.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helpers without arguments.
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = PL_CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot, valid for this run.
    unsafe {
        if (*c).jiffies == j && (*c).ns != 0 {
            return (*c).ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        *c = ClockCache { jiffies: j, ns };
        ns
    }
}

/// A slot of a per-CPU lookup cache (`PL_IFCACHE`, `PL_PORTCACHE`, `PL_APPLCACHE`): a
/// daemon-written hash map's value for `key`, as read under `epoch`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Cached<K, V> {
    pub key: K,
    pub epoch: u32,
    pub value: V,
}

/// Slots of each lookup cache (a power of two): keys by a hash of theirs modulo this.
pub const CACHE_SLOTS: u32 = 64;

#[btf_map]
pub static PL_IFCACHE: PerCpuArray<Cached<u32, IfaceInfo>, { CACHE_SLOTS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static PL_PORTCACHE: PerCpuArray<Cached<u32, VpcPort>, { CACHE_SLOTS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static PL_APPLCACHE: PerCpuArray<Cached<VpcAddr, Appliance>, { CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// A daemon-written map's value for `key` (None: no entry), read under `epoch` (the
/// packet's `PL_EPOCH`, read before), through this CPU's cache `slot`: the daemon moves
/// the epoch on after every change of its maps, so a slot of the current epoch holds what
/// the map holds (or held just before a change that is not yet announced, as every lookup
/// might). The per-CPU array's lookup is inlined by the verifier; a hash map's is a call
/// and a return, about 25 ns each behind this VM's return-stack mitigations. Before the
/// daemon's first apply (epoch 0) nothing is kept; a missing entry is not kept either.
#[inline(always)]
fn cached<K: Copy + PartialEq, V: Copy>(
    slot: Option<*mut Cached<K, V>>,
    key: K,
    epoch: u32,
    lookup: impl FnOnce(&K) -> Option<V>,
) -> Option<V> {
    if let Some(s) = slot {
        // SAFETY: this CPU's slot, valid for this run.
        let s = unsafe { &*s };
        if epoch != 0 && s.epoch == epoch && s.key == key {
            return Some(s.value);
        }
    }
    // A fill is kept under `epoch`: what it stores must be read after the epoch was.
    order_after_epoch();
    let value = lookup(&key)?;
    if let Some(s) = slot {
        // SAFETY: as above.
        unsafe { *s = Cached { key, epoch, value } };
    }
    Some(value)
}

/// An attached interface's `PL_IFACES` entry (None: not attached), under `epoch`
/// (`cached`; every packet asks).
#[inline(always)]
pub fn iface(ifindex: u32, epoch: u32) -> Option<IfaceInfo> {
    let slot = PL_IFCACHE.get_ptr_mut(ifindex & (CACHE_SLOTS - 1));
    // SAFETY: a lookup in a map that only the daemon writes; the value is copied out.
    cached(slot, ifindex, epoch, |k| {
        unsafe { PL_IFACES.get(k) }.copied()
    })
}

/// The port a VPC is reached through (`PL_VPC_PORTS`), under `epoch` (`cached`: every
/// GENEVE packet from an appliance asks; new flows read the map itself).
#[inline(always)]
pub fn vpc_port(vpc_id: u32, epoch: u32) -> Option<VpcPort> {
    let slot = PL_PORTCACHE.get_ptr_mut(vpc_id & (CACHE_SLOTS - 1));
    // SAFETY: as in `iface`.
    cached(slot, vpc_id, epoch, |k| {
        unsafe { PL_VPC_PORTS.get(k) }.copied()
    })
}

/// A GWLB appliance's `PL_GWLB_APPLS` entry, under `epoch` (`cached`: every GENEVE packet
/// from an appliance asks).
#[inline(always)]
pub fn appliance(key: VpcAddr, epoch: u32) -> Option<Appliance> {
    let i = (key.vpc_id ^ u32::from_be_bytes(key.addr)) & (CACHE_SLOTS - 1);
    let slot = PL_APPLCACHE.get_ptr_mut(i);
    // SAFETY: as in `iface`.
    cached(slot, key, epoch, |k| {
        unsafe { PL_GWLB_APPLS.get(k) }.copied()
    })
}

/// Per-CPU room for the flow entries a new flow is built from: the BPF stack is 512 bytes
/// for the whole call chain, and two entries on it would not fit.
#[btf_map]
pub static PL_SCRATCH: PerCpuArray<FlowEntry, 2> = PerCpuArray::new();

/// The flow tables' geometry (`FlowGeometry::word`), `PL_CONNTRACK`'s and
/// `PL_CONNTRACK6`'s: the words the daemon writes into the tables' word 0
/// (`privatelink_user::dataplane::flowtable::init_geometry`), also written into this
/// object's read-only data before it loads the programs (a table kept from before keeps
/// its own; see `Dataplane::load`). A lookup reads its table's here, one load, not by an
/// array lookup of the table's element 0 (0.05x of the trivial program on a NAT hit,
/// measured). Zero only in an object loaded by other means: its lookups find nothing and
/// its inserts fail (`flowtable::elements_of`).
#[unsafe(no_mangle)]
pub static PL_FLOW_GEOMETRY: u64 = 0;
#[unsafe(no_mangle)]
pub static PL_FLOW_GEOMETRY6: u64 = 0;

/// The flow tables' key hash parameters (`privatelink_common::flowtable::key_hash_params`
/// of their geometry's seed), `PL_CONNTRACK`'s and `PL_CONNTRACK6`'s: written into this
/// object's read-only data with the geometry, before the programs load
/// (`Dataplane::load`). A lookup reads one more word than its key has (`key_hash_by`).
#[unsafe(no_mangle)]
pub static PL_FLOW_HASH: KeyHashParams = [0; KEY_HASH_PARAMS];
#[unsafe(no_mangle)]
pub static PL_FLOW_HASH6: KeyHashParams = [0; KEY_HASH_PARAMS];

/// Per-CPU room for the index of the flow table bucket being looked up (`flowtable`): a
/// key in map memory, not on the stack (but for the inlined lookups of the established
/// and GWLB return paths, `get_ptr_mut_inline`, which keep it in their frame); and
/// whether an insert of this packet's found its buckets full of flows that must stay
/// (`flowtable::refused`).
#[btf_map]
pub static PL_FLOWKEY: PerCpuArray<[u32; 2], 1> = PerCpuArray::new();

#[inline(always)]
pub fn scratch(i: u32) -> Result<*mut FlowEntry, privatelink_common::Reason> {
    PL_SCRATCH
        .get_ptr_mut(i)
        .ok_or(privatelink_common::Reason::DropConntrackFull)
}

/// The path programs, by `PATH_*` index (filled by the loader).
#[btf_map]
pub static PL_PATHS: ProgramArray<{ PATH_PROGRAMS.len() }> = ProgramArray::new();

/// What classification found, for the path program it tail-calls, which reads it in
/// place for its whole run (one slot per CPU: an XDP run, tail calls included, is not
/// preempted on its CPU by another). For `PATH_GWLB_RETURN6` only `iface` and `epoch`
/// are written (`hand_off_no_entry`): `entry` is stale there.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    pub iface: IfaceInfo,
    pub entry: EndpointEni,
    pub epoch: u32,
}

#[btf_map]
pub static PL_HANDOFF: PerCpuArray<Handoff, 1> = PerCpuArray::new();

/// `hand_off` for the path that reads no endpoint entry (`privatelink_gwlb_return6`):
/// the interface and the epoch only. (A whole zeroed `EndpointEni` is a 44-byte `memset`,
/// a byte loop in BPF, on the GENEVE IPv6 return path's every packet.)
#[inline(always)]
pub fn hand_off_no_entry(iface: &IfaceInfo, epoch: u32) -> bool {
    let Some(slot) = PL_HANDOFF.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, valid for this run; the path program reads it right after.
    unsafe {
        (*slot).iface = *iface;
        (*slot).epoch = epoch;
    }
    true
}

/// Leaves `PL_HANDOFF` (this CPU's slot) for the path program about to be tail-called;
/// false if the slot is missing.
#[inline(always)]
pub fn hand_off(iface: &IfaceInfo, entry: &EndpointEni, epoch: u32) -> bool {
    let Some(slot) = PL_HANDOFF.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, valid for this run; the path program reads it right after.
    unsafe {
        *slot = Handoff {
            iface: *iface,
            entry: *entry,
            epoch,
        }
    };
    true
}

/// IPv6: per-CPU room for the flow entries a new IPv6 flow is built from (`PL_SCRATCH`'s
/// reason, for `FlowEntry6`).
#[btf_map]
pub static PL_SCRATCH6: PerCpuArray<privatelink_common::FlowEntry6, 2> = PerCpuArray::new();

#[inline(always)]
pub fn scratch6(i: u32) -> Result<*mut privatelink_common::FlowEntry6, privatelink_common::Reason> {
    PL_SCRATCH6
        .get_ptr_mut(i)
        .ok_or(privatelink_common::Reason::DropConntrackFull)
}

/// IPv6: per-CPU room for the flow keys of the IPv6 NAT (`flows6`; 0: the packet's, 1:
/// the reply-direction key a new flow claims, 2 and 3: the keys a claim derives). A
/// 44-byte `FlowKey6` built on the stack takes a slot of its own in every frame that
/// copies it, and the forward path's call chain would pass the 512 bytes of stack: the
/// steps fill these in place and pass references.
#[btf_map]
pub static PL_KEYS6: PerCpuArray<privatelink_common::FlowKey6, 4> = PerCpuArray::new();

/// This CPU's IPv6 flow key slot `i` (`PL_KEYS6`).
#[inline(always)]
pub fn key_scratch6(
    i: u32,
) -> Result<*mut privatelink_common::FlowKey6, privatelink_common::Reason> {
    PL_KEYS6
        .get_ptr_mut(i)
        .ok_or(privatelink_common::Reason::DropConntrackFull)
}

/// What the IPv6 classification found, for the IPv6 path program it tail-calls (as
/// `Handoff`; the endpoint with its IPv6 load balancer). GWLB routes go through
/// `PL_HANDOFF`: their entry is an `EndpointEni`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff6 {
    pub iface: IfaceInfo,
    pub entry: privatelink_common::EndpointEni6,
    pub epoch: u32,
}

#[btf_map]
pub static PL_HANDOFF6: PerCpuArray<Handoff6, 1> = PerCpuArray::new();
