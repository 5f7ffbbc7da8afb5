//! Readers of the pinned maps for the CLI (which runs beside the daemon) and tests.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use privatelink_common::{Config, FlowEntry, FlowEntry6, FlowKey, FlowKey6, Reason, map_names};

use super::sync::read_map;

pub fn read_stats(map: &Map) -> Result<Vec<(Reason, u64)>> {
    let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    Reason::ALL
        .iter()
        .map(|r| {
            let v = a.get(&(*r as u32), 0)?;
            Ok((*r, v.iter().sum()))
        })
        .collect()
}

/// The data path's settings from the pinned `PL_CONFIG` (defaults until the daemon wrote
/// them, as the data path reads it).
pub fn read_config(pin_dir: &Path) -> Result<Config> {
    let map = open_pinned(pin_dir, map_names::CONFIG)?;
    let a: Array<_, Config> = Array::try_from(&map)?;
    let c = a.get(&0, 0)?;
    Ok(if c.tcp_timeout_ns == 0 {
        Config::default()
    } else {
        c
    })
}

/// The data path's flow clock (CLOCK_MONOTONIC at tick resolution, as
/// `bpf_ktime_get_coarse_ns`).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `PL_EP_BUDGET`: each endpoint's (numeric id) allowance of new flows.
pub fn read_budgets(map: &Map) -> Result<Vec<(u32, privatelink_common::FlowBudget)>> {
    Ok(read_map(map)?.into_iter().collect())
}

/// Counter slots' readings (summed over the CPUs), by what each counts.
pub type SlotCounters = Vec<(
    privatelink_common::CounterKey,
    privatelink_common::EndpointCounters,
)>;

/// `PL_EP_COUNTERS` of every slot `PL_EP_SLOTS` names (summed over the CPUs), by what
/// it counts.
pub fn read_counters(slots: &Map, counters: &Map) -> Result<SlotCounters> {
    let slots: std::collections::BTreeMap<privatelink_common::CounterKey, u32> =
        read_map(slots)?.into_iter().collect();
    counters_of(&slots, counters)
}

/// `PL_EP_COUNTERS` of the slots given (summed over the CPUs).
pub fn counters_of(
    slots: &std::collections::BTreeMap<privatelink_common::CounterKey, u32>,
    counters: &Map,
) -> Result<SlotCounters> {
    let a: PerCpuArray<_, privatelink_common::EndpointCounters> = PerCpuArray::try_from(counters)?;
    slots
        .iter()
        .map(|(k, s)| {
            let mut sum = privatelink_common::EndpointCounters::default();
            for c in a.get(s, 0)?.iter() {
                sum.add(c);
            }
            Ok((*k, sum))
        })
        .collect()
}

pub fn read_flows(map: &Map) -> Result<Vec<(FlowKey, FlowEntry)>> {
    super::flowtable::entries::<FlowEntry>(map)
}

/// An entry of either flow table (`PL_CONNTRACK`, `PL_CONNTRACK6`) as its readers see it:
/// `privatelink flows`, and the census behind the metrics and the overview.
pub trait TableEntry: Copy + aya::Pod {
    type Key: Copy + aya::Pod + Eq + std::hash::Hash + std::fmt::Debug;
    /// The table's map (and pin) name.
    const MAP: &'static str;
    fn direction(&self) -> u8;
    fn endpoint_id(&self) -> u32;
    fn tcp_flags(&self) -> u8;
    fn flags(&self) -> u8;
    fn proto(key: &Self::Key) -> u8;
    /// The key of the flow's other direction.
    fn partner_of(&self, key: &Self::Key) -> Self::Key;
    /// Whether the flow lives: either direction seen within its idle timeout.
    fn live(
        &self,
        key: &Self::Key,
        now_ns: u64,
        cfg: &Config,
        partner: impl FnOnce() -> Option<Self>,
    ) -> bool;
    /// `live`, its partner found by `lookup` and counted only if it names this direction
    /// as its own (as the data path's `conntrack::alive` asks): an old reply whose
    /// forward key a new flow took since is dead.
    fn live_in(
        &self,
        key: &Self::Key,
        now_ns: u64,
        cfg: &Config,
        lookup: impl FnOnce(&Self::Key) -> Option<Self>,
    ) -> bool {
        let pk = self.partner_of(key);
        self.live(key, now_ns, cfg, || {
            lookup(&pk).filter(|p| p.partner_of(&pk) == *key)
        })
    }
    /// The packet's ends as the key holds them: source, destination.
    fn ends(key: &Self::Key) -> (SocketAddr, SocketAddr);
    /// What the entry rewrites them to: source, destination.
    fn rewritten(&self) -> (SocketAddr, SocketAddr);
    /// The key's VPC (numeric id).
    fn vpc_id(key: &Self::Key) -> u32;
}

/// `TableEntry` for one family's entry: the field names are the same in both.
macro_rules! table_entry {
    ($entry:ty, $key:ty, $map:expr) => {
        impl TableEntry for $entry {
            type Key = $key;
            const MAP: &'static str = $map;
            fn direction(&self) -> u8 {
                self.direction
            }
            fn endpoint_id(&self) -> u32 {
                self.endpoint_id
            }
            fn tcp_flags(&self) -> u8 {
                self.tcp_flags
            }
            fn flags(&self) -> u8 {
                self.flags
            }
            fn proto(key: &$key) -> u8 {
                key.proto
            }
            fn partner_of(&self, key: &$key) -> $key {
                self.partner(key)
            }
            fn live(
                &self,
                key: &$key,
                now_ns: u64,
                cfg: &Config,
                partner: impl FnOnce() -> Option<Self>,
            ) -> bool {
                self.is_live(key.proto, now_ns, cfg, partner)
            }
            fn ends(key: &$key) -> (SocketAddr, SocketAddr) {
                (
                    SocketAddr::from((key.src, key.sport)),
                    SocketAddr::from((key.dst, key.dport)),
                )
            }
            fn rewritten(&self) -> (SocketAddr, SocketAddr) {
                (
                    SocketAddr::from((self.new_src, self.new_sport)),
                    SocketAddr::from((self.new_dst, self.new_dport)),
                )
            }
            fn vpc_id(key: &$key) -> u32 {
                key.vpc_id
            }
        }
    };
}

table_entry!(FlowEntry, FlowKey, map_names::CONNTRACK);
table_entry!(FlowEntry6, FlowKey6, map_names::CONNTRACK6);

/// Every entry of the pinned flow table of `E`'s family.
pub fn read_table<E: super::flowtable::Bucketed>(pin_dir: &Path) -> Result<Vec<(E::Key, E)>> {
    super::flowtable::entries::<E>(&open_pinned(pin_dir, E::MAP)?)
}

/// Opens one pinned map (for the CLI, which runs beside the daemon).
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    if !path.exists() {
        bail!(
            "{} does not exist: is the daemon running with --pin-dir {}?",
            path.display(),
            pin_dir.display()
        );
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}
