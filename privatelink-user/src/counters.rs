//! The data path's per-endpoint and per-appliance counters (`PL_EP_COUNTERS`), named: the
//! slots' keys (numeric ids) resolved against the state into the endpoint, its service,
//! zone and accounts, or the appliance and its service. What the metrics, `privatelink
//! status` and the API show.

use std::{collections::HashMap, net::Ipv4Addr};

use privatelink_common::{COUNTER_APPLIANCE, COUNTER_ENI, CounterKey, EndpointCounters};
use serde::Serialize;

use crate::model::{State, numeric_id};

/// One endpoint in one zone (an ENI, or a gateway endpoint's routes there).
#[derive(Clone, Debug, Serialize)]
pub struct EniCounters {
    pub endpoint: String,
    pub service: String,
    pub zone: String,
    /// The endpoint's (consumer's) account.
    pub account: String,
    /// The service's (provider's) account.
    pub provider: String,
    #[serde(flatten)]
    pub counters: Totals,
}

/// One GWLB appliance: "to service" went to it, "to consumer" came back from it.
#[derive(Clone, Debug, Serialize)]
pub struct ApplianceCounters {
    pub service: String,
    pub appliance: Ipv4Addr,
    pub zone: String,
    pub provider: String,
    #[serde(flatten)]
    pub counters: Totals,
}

/// `EndpointCounters`, with the drops named (`EP_DROP_NAMES`; zero ones left out).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub to_service_packets: u64,
    pub to_service_bytes: u64,
    pub to_consumer_packets: u64,
    pub to_consumer_bytes: u64,
    pub new_flows: u64,
    pub flow_log_lost: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl From<&EndpointCounters> for Totals {
    fn from(c: &EndpointCounters) -> Self {
        Totals {
            to_service_packets: c.to_service_packets,
            to_service_bytes: c.to_service_bytes,
            to_consumer_packets: c.to_consumer_packets,
            to_consumer_bytes: c.to_consumer_bytes,
            new_flows: c.new_flows,
            flow_log_lost: c.flow_log_lost,
            drops: privatelink_common::EP_DROP_NAMES
                .iter()
                .zip(c.drops.iter())
                .filter(|(_, n)| **n > 0)
                .map(|(name, n)| (name.to_string(), *n))
                .collect(),
        }
    }
}

/// Everything counted, named.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub endpoints: Vec<EniCounters>,
    pub appliances: Vec<ApplianceCounters>,
}

/// Names the raw counters by the state. Slots whose endpoint or appliance the state no
/// longer has (removed since the maps were read) are left out.
pub fn resolve(state: &State, raw: &[(CounterKey, EndpointCounters)]) -> Snapshot {
    let zones: HashMap<u32, &str> = state
        .vpcs
        .iter()
        .flat_map(|v| v.vswitches.iter().map(|s| s.zone.as_str()))
        .chain(
            state
                .services
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| b.zone.as_str())),
        )
        .map(|z| (numeric_id(z), z))
        .collect();
    let endpoints: HashMap<u32, _> = state
        .endpoints
        .iter()
        .map(|e| (numeric_id(&e.id), e))
        .collect();
    let provider = |service: &str| {
        state
            .services
            .iter()
            .find(|s| s.id == service)
            .map(|s| s.account.clone())
            .unwrap_or_default()
    };
    let mut snap = Snapshot::default();
    for (k, c) in raw {
        let zone = zones.get(&k.b).copied().unwrap_or("").to_string();
        match k.kind {
            COUNTER_ENI => {
                let Some(e) = endpoints.get(&k.a) else {
                    continue;
                };
                snap.endpoints.push(EniCounters {
                    endpoint: e.id.clone(),
                    service: e.service.clone(),
                    zone,
                    account: e.account.clone(),
                    provider: provider(&e.service),
                    counters: c.into(),
                });
            }
            COUNTER_APPLIANCE => {
                let addr = Ipv4Addr::from(k.b);
                let found = state.services.iter().find_map(|s| {
                    (numeric_id(&s.vpc) == k.a)
                        .then(|| s.backends.iter().find(|b| b.address == addr))
                        .flatten()
                        .map(|b| (s, b))
                });
                let Some((s, b)) = found else {
                    continue;
                };
                snap.appliances.push(ApplianceCounters {
                    service: s.id.clone(),
                    appliance: addr,
                    zone: b.zone.clone(),
                    provider: s.account.clone(),
                    counters: c.into(),
                });
            }
            _ => {}
        }
    }
    snap
}
