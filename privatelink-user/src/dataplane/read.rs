//! Readers of the pinned maps for the CLI (which runs beside the daemon) and tests.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use privatelink_common::{Config, FlowEntry, FlowKey, Reason, map_names};

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
    let m: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(map)?;
    Ok(m.iter().collect::<Result<_, _>>()?)
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
