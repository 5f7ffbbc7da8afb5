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
use privatelink_common::{EndpointEni, GatewayRoute, Neighbor, VpcAddr, map_names};

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
            None => Desired {
                ifaces: read_map(self.map(map_names::IFACES)?)?,
                vpc_ports: read_map(self.map(map_names::VPC_PORTS)?)?,
                endpoints: read_map(self.map(map_names::ENDPOINTS)?)?,
                snat_pools: read_map(self.map(map_names::SNAT_POOLS)?)?,
                snat_addrs: read_map(self.map(map_names::SNAT_ADDRS)?)?,
                sg_rules: read_map(self.map(map_names::SG_RULES)?)?,
                acl_in: read_map(self.map(map_names::ACL_IN)?)?,
                acl_out: read_map(self.map(map_names::ACL_OUT)?)?,
                gw_routes: read_routes(self.map(map_names::GATEWAY_ROUTES)?)?,
                gw_addrs: read_map(self.map(map_names::GATEWAY_ADDRS)?)?,
                gwlb_targets: read_map(self.map(map_names::GWLB_TARGETS)?)?,
                gwlb_appliances: read_map(self.map(map_names::GWLB_APPLIANCES)?)?,
                next_hops: read_map::<VpcAddr, Neighbor>(self.map(map_names::NEIGHBORS)?)?
                    .into_keys()
                    .collect(),
                listeners: read_map(self.map(map_names::LISTENERS)?)?,
                host: read_map(self.map(map_names::HOST)?)?,
                lb_sets: read_map(self.map(map_names::LB_SETS)?)?,
            },
        };
        let mut r = ApplyReport::default();
        // Where traffic can go, and the filters, before the endpoints that use them.
        macro_rules! sync_all {
            ($($name:ident => $field:ident),*) => {
                (|| {
                    $(sync(self.map_mut(map_names::$name)?, &cur.$field, &d.$field, &mut r)?;)*
                    Ok::<(), anyhow::Error>(())
                })()
            };
        }
        let res = sync_all!(
            IFACES => ifaces,
            VPC_PORTS => vpc_ports,
            HOST => host,
            LB_SETS => lb_sets,
            LISTENERS => listeners,
            SNAT_POOLS => snat_pools,
            SNAT_ADDRS => snat_addrs,
            SG_RULES => sg_rules,
            ACL_IN => acl_in,
            ACL_OUT => acl_out,
            GATEWAY_ADDRS => gw_addrs,
            GWLB_APPLIANCES => gwlb_appliances,
            GWLB_TARGETS => gwlb_targets,
            ENDPOINTS => endpoints
        )
        .and_then(|()| {
            sync_next_hops(
                self.map_mut(map_names::NEIGHBORS)?,
                &cur.next_hops,
                &d.next_hops,
                &mut r,
            )
        })
        .and_then(|()| {
            sync_routes(
                self.map_mut(map_names::GATEWAY_ROUTES)?,
                &cur.gw_routes,
                &d.gw_routes,
                &mut r,
            )
        });
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

fn read_routes(map: &Map) -> Result<BTreeMap<GatewayRoute, EndpointEni>> {
    let m: LpmTrie<_, VpcAddr, EndpointEni> = LpmTrie::try_from(map)?;
    m.iter()
        .map(|kv| {
            let (k, v) = kv?;
            let data = k.data();
            Ok((
                GatewayRoute {
                    prefix_len: k.prefix_len(),
                    vpc_id: data.vpc_id,
                    addr: data.addr,
                },
                v,
            ))
        })
        .collect()
}

/// Registers next hops (zero MAC: the data path learns the real one from ARP, and only
/// for registered addresses); a registration that exists keeps its learned MAC.
fn sync_next_hops(
    map: &mut Map,
    current: &std::collections::BTreeSet<VpcAddr>,
    desired: &std::collections::BTreeSet<VpcAddr>,
    r: &mut ApplyReport,
) -> Result<()> {
    let mut m: HashMap<_, VpcAddr, Neighbor> = HashMap::try_from(map)?;
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

fn sync_routes(
    map: &mut Map,
    current: &BTreeMap<GatewayRoute, EndpointEni>,
    desired: &BTreeMap<GatewayRoute, EndpointEni>,
    r: &mut ApplyReport,
) -> Result<()> {
    let mut m: LpmTrie<_, VpcAddr, EndpointEni> = LpmTrie::try_from(map)?;
    let key = |g: &GatewayRoute| {
        LpmKey::new(
            g.prefix_len,
            VpcAddr {
                vpc_id: g.vpc_id,
                addr: g.addr,
            },
        )
    };
    for change in diff(current, desired) {
        match change {
            Change::Upsert(k, v) => {
                m.insert(&key(&k), v, 0)
                    .with_context(|| format!("writing route {k:?}"))?;
                r.upserts += 1;
            }
            Change::Delete(k) => {
                m.remove(&key(&k))
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
