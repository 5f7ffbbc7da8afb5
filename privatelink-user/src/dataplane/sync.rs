//! Bringing the daemon-owned maps to a `Desired` as a diff: only changed entries are
//! written or removed.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use aya::{
    Pod,
    maps::{
        HashMap, Map,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
};
use privatelink_common::{GatewayRoute, GatewayRoute6, Neighbor, VpcAddr, VpcAddr6, map_names};

use super::{ApplyReport, Dataplane};
use crate::{
    desired::Desired,
    reconcile::{Change, diff},
};

impl Dataplane {
    /// Brings the daemon-owned maps to `d`, writing only what differs.
    pub fn apply(&mut self, d: &Desired) -> Result<ApplyReport> {
        let first = self.applied.is_none();
        let cur = match self.applied.take() {
            Some(c) => c,
            None => self.read_owned()?,
        };
        let mut r = ApplyReport::default();
        // Counter slots: kept for what still exists; a new one's counters are zeroed
        // before any entry names its slot.
        let mut d = d.clone();
        let fresh = super::slots::assign(&cur.counter_slots, &mut d);
        let d = &d;
        let res = self
            .zero_counters(&fresh)
            // In the catalogue's order: where traffic can go, and the filters, before the
            // endpoints that use them.
            .and_then(|()| self.sync_owned(&cur, d, &mut r));
        // Established flows skip the endpoint checks while the epoch stays; any change
        // (or a first apply, or a failed one that may have written half) moves it on.
        if first || res.is_err() || r.upserts + r.deletes > 0 {
            let bumped = self.bump_epoch();
            if let (Err(e), Ok(())) = (&bumped, &res) {
                return Err(anyhow!(
                    "moving the state epoch on after the maps were written: {e:#}"
                ));
            }
            if let Err(e) = bumped {
                // The apply's own error is the one to report; this one goes to the log.
                tracing::warn!(error = %format!("{e:#}"), "moving the state epoch on failed too");
            }
        }
        // On success the maps hold `d`; after a failure, re-read them next time.
        if res.is_ok() {
            self.applied = Some(d.clone());
        }
        res.map(|()| r)
    }
}

/// Reads (`read_entry!`) or syncs (`sync_entry!`) one catalogue map by its owner and
/// kind: `synced` hash maps and LPM tries as entries, `registered` hash maps as keys.
macro_rules! read_entry {
    (synced, HashMap, $key:ty, $value:ty, $map:expr) => {
        read_map::<$key, $value>($map)
    };
    (synced, LpmTrie, $key:ty, $value:ty, $map:expr) => {
        read_routes::<$key, $value>($map)
    };
    (registered, HashMap, $key:ty, $value:ty, $map:expr) => {
        read_map::<$key, $value>($map).map(|m| m.into_keys().collect())
    };
}

macro_rules! sync_entry {
    (synced, HashMap, $key:ty, $value:ty, $($args:expr),*) => {
        sync::<$key, $value>($($args),*)
    };
    (synced, LpmTrie, $key:ty, $value:ty, $($args:expr),*) => {
        sync_routes::<$key, $value>($($args),*)
    };
    (registered, HashMap, $key:ty, $value:ty, $($args:expr),*) => {
        sync_next_hops::<$key>($($args),*)
    };
}

/// From the catalogue: `Dataplane::read_owned` builds a `Desired` from every `synced`
/// and `registered` map (naming each field of `Desired`, so a field without a map, or a
/// map without a field, does not compile), and `Dataplane::sync_owned` syncs them in the
/// catalogue's order.
macro_rules! owned_maps {
    ($({ $(#[$doc:meta])* $name:ident $map:ident $kind:ident [$key:ty] [$pinned:ty] [$value:ty] [$cap:expr] $check:ident $owner:ident ($($field:ident)?) })*) => {
        impl Dataplane {
            /// What the daemon-owned maps hold now.
            fn read_owned(&self) -> Result<Desired> {
                Ok(Desired {
                    $($(
                        $field: read_entry!($owner, $kind, $pinned, $value, self.map(map_names::$name)?)?,
                    )?)*
                })
            }

            /// Writes what differs between `cur` (what the maps hold) and `d`, stopping at
            /// the first error.
            fn sync_owned(&mut self, cur: &Desired, d: &Desired, r: &mut ApplyReport) -> Result<()> {
                $($(
                    sync_entry!(
                        $owner, $kind, $pinned, $value,
                        self.map_mut(map_names::$name)?, &cur.$field, &d.$field, r
                    )?;
                )?)*
                Ok(())
            }
        }
    };
}

privatelink_common::for_each_map!(owned_maps);

/// An LPM trie's key as `Desired` holds it (prefix length, VPC, address) and as the trie
/// does (prefix length + data).
trait RouteKey: Ord + Copy + std::fmt::Debug {
    type Data: Pod;
    fn to_lpm(&self) -> LpmKey<Self::Data>;
    fn from_lpm(prefix_len: u32, data: Self::Data) -> Self;
}

impl RouteKey for GatewayRoute {
    type Data = VpcAddr;
    fn to_lpm(&self) -> LpmKey<VpcAddr> {
        LpmKey::new(
            self.prefix_len,
            VpcAddr {
                vpc_id: self.vpc_id,
                addr: self.addr,
            },
        )
    }
    fn from_lpm(prefix_len: u32, d: VpcAddr) -> Self {
        GatewayRoute {
            prefix_len,
            vpc_id: d.vpc_id,
            addr: d.addr,
        }
    }
}

impl RouteKey for GatewayRoute6 {
    type Data = VpcAddr6;
    fn to_lpm(&self) -> LpmKey<VpcAddr6> {
        LpmKey::new(
            self.prefix_len,
            VpcAddr6 {
                vpc_id: self.vpc_id,
                addr: self.addr,
            },
        )
    }
    fn from_lpm(prefix_len: u32, d: VpcAddr6) -> Self {
        GatewayRoute6 {
            prefix_len,
            vpc_id: d.vpc_id,
            addr: d.addr,
        }
    }
}

fn read_routes<K: RouteKey, V: Pod>(map: &Map) -> Result<BTreeMap<K, V>> {
    let m: LpmTrie<_, K::Data, V> = LpmTrie::try_from(map)?;
    m.iter()
        .map(|kv| {
            let (k, v) = kv?;
            Ok((K::from_lpm(k.prefix_len(), k.data()), v))
        })
        .collect()
}

/// Registers next hops (zero MAC: the data path learns the real one from ARP or neighbour
/// advertisements, and only for registered addresses); a registration that exists keeps
/// its learned MAC.
fn sync_next_hops<K: Pod + Ord + std::fmt::Debug>(
    map: &mut Map,
    current: &std::collections::BTreeSet<K>,
    desired: &std::collections::BTreeSet<K>,
    r: &mut ApplyReport,
) -> Result<()> {
    let mut m: HashMap<_, K, Neighbor> = HashMap::try_from(map)?;
    for k in current.difference(desired) {
        m.remove(k)
            .with_context(|| format!("unregistering next hop {k:?}"))?;
        r.deletes += 1;
    }
    for k in desired.difference(current) {
        // BPF_NOEXIST (1): never overwrite a learned MAC; "exists" is fine, anything else
        // (a full map) is an error, so the next apply tries again.
        match m.insert(
            k,
            Neighbor {
                mac: [0; 6],
                _pad: [0; 2],
            },
            1,
        ) {
            Ok(()) => r.upserts += 1,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("registering next hop {k:?}")),
        }
    }
    Ok(())
}

fn sync_routes<K: RouteKey, V: Pod + PartialEq>(
    map: &mut Map,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    r: &mut ApplyReport,
) -> Result<()> {
    let mut m: LpmTrie<_, K::Data, V> = LpmTrie::try_from(map)?;
    for change in diff(current, desired) {
        match change {
            Change::Upsert(k, v) => {
                m.insert(&k.to_lpm(), v, 0)
                    .with_context(|| format!("writing route {k:?}"))?;
                r.upserts += 1;
            }
            Change::Delete(k) => {
                m.remove(&k.to_lpm())
                    .with_context(|| format!("removing route {k:?}"))?;
                r.deletes += 1;
            }
        }
    }
    Ok(())
}

pub(super) fn read_map<K: Pod + Ord, V: Pod>(map: &Map) -> Result<BTreeMap<K, V>> {
    let m: HashMap<_, K, V> = HashMap::try_from(map)?;
    Ok(m.iter().collect::<Result<_, _>>()?)
}

fn sync<K, V>(
    map: &mut Map,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    r: &mut ApplyReport,
) -> Result<()>
where
    K: Pod + Ord + std::fmt::Debug,
    V: Pod + PartialEq,
{
    let mut m: HashMap<_, K, V> = HashMap::try_from(map)?;
    for change in diff(current, desired) {
        match change {
            Change::Upsert(k, v) => {
                m.insert(k, v, 0)
                    .with_context(|| format!("writing {k:?}"))?;
                r.upserts += 1;
            }
            Change::Delete(k) => {
                m.remove(&k).with_context(|| format!("removing {k:?}"))?;
                r.deletes += 1;
            }
        }
    }
    Ok(())
}
