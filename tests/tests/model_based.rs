//! A randomized model-based test of the control plane: a long random sequence of API calls
//! (services with and without auto-accept, whitelist changes, endpoints, every connection
//! action, deletions — valid and invalid ones) against a running daemon, and the same
//! calls against a small reference model written here from the product's rules. After
//! every call the answer's class (accepted or refused) must be the model's; the pinned
//! `PL_ENDPOINTS`, `PL_SNAT_ADDRS` and `PL_SNAT_POOLS` maps must hold exactly the entries
//! the model expects; and a refused call must not have moved `PL_EPOCH` (it wrote no map).
//!
//! `PL_MODEL_SEED` replays a sequence; `PL_MODEL_STEPS` makes it longer.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap};
use privatelink_common::{ConnectionState, EndpointEni, SnatPool, VpcAddr, map_names};
use privatelink_tests::apidaemon::ApiDaemon;
use privatelink_user::{client::Client, dataplane, model::numeric_id};
use serde_json::json;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// SNAT address -> service, and service -> (address count, first address, port range).
type SnatMaps = (
    BTreeMap<[u8; 4], u32>,
    BTreeMap<u32, (u32, [u8; 4], [u16; 2])>,
);

const SERVICES: u64 = 3;
const ENDPOINTS: u64 = 6;

#[derive(Clone, Debug)]
struct Service {
    auto_accept: bool,
    whitelisted: bool,
}

#[derive(Clone, Debug)]
struct Endpoint {
    service: u64,
    state: ConnectionState,
}

/// The reference model: what the product documents say each call does.
#[derive(Default)]
struct Model {
    services: BTreeMap<u64, Service>,
    endpoints: BTreeMap<u64, Endpoint>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    CreateService(u64, bool),
    DeleteService(u64),
    Whitelist(u64, bool),
    CreateEndpoint(u64, u64),
    DeleteEndpoint(u64),
    Connection(u64, u64, &'static str),
}

fn svc_id(k: u64) -> String {
    format!("svc-{k}")
}
fn ep_id(j: u64) -> String {
    format!("ep-{j}")
}
fn eni(j: u64) -> [u8; 4] {
    [10, 10, 1, 100 + j as u8]
}

impl Model {
    /// Applies `op`; returns whether the API must accept it.
    fn apply(&mut self, op: Op) -> bool {
        use ConnectionState::*;
        match op {
            Op::CreateService(k, auto) => {
                if self.services.contains_key(&k) {
                    return false;
                }
                self.services.insert(
                    k,
                    Service {
                        auto_accept: auto,
                        whitelisted: false,
                    },
                );
                true
            }
            Op::DeleteService(k) => {
                let used = self.endpoints.values().any(|e| e.service == k);
                if !self.services.contains_key(&k) || used {
                    return false;
                }
                self.services.remove(&k);
                true
            }
            Op::Whitelist(k, add) => match self.services.get_mut(&k) {
                None => false,
                Some(s) if !add && !s.whitelisted => false,
                Some(s) => {
                    s.whitelisted = add;
                    true
                }
            },
            Op::CreateEndpoint(j, k) => {
                let Some(s) = self.services.get(&k) else {
                    return false;
                };
                if !s.whitelisted || self.endpoints.contains_key(&j) {
                    return false;
                }
                let state = if s.auto_accept { Connected } else { Pending };
                self.endpoints.insert(j, Endpoint { service: k, state });
                true
            }
            Op::DeleteEndpoint(j) => self.endpoints.remove(&j).is_some(),
            Op::Connection(k, j, action) => {
                if !self.services.contains_key(&k) {
                    return false;
                }
                let Some(e) = self.endpoints.get_mut(&j).filter(|e| e.service == k) else {
                    return false;
                };
                let next = match (e.state, action) {
                    (Pending | Rejected, "accept") => Connected,
                    (Pending | Connected, "reject") => Rejected,
                    (Connected, "disable") => Disconnected,
                    (Disconnected, "enable") => Connected,
                    _ => return false,
                };
                e.state = next;
                true
            }
        }
    }

    /// What PL_ENDPOINTS must hold: (ENI) -> (endpoint, state, whitelisted, LB).
    fn expected(&self) -> BTreeMap<[u8; 4], (u32, u32, bool, [u8; 4])> {
        self.endpoints
            .iter()
            .map(|(j, e)| {
                (
                    eni(*j),
                    (
                        numeric_id(&ep_id(*j)),
                        e.state as u32,
                        self.services[&e.service].whitelisted,
                        [10, 10, 0, 10 + e.service as u8],
                    ),
                )
            })
            .collect()
    }

    /// What PL_SNAT_ADDRS and PL_SNAT_POOLS must hold: every service's one SNAT address
    /// (in the provider VPC) with its service, and its pool (that address, default ports).
    fn expected_snat(&self) -> SnatMaps {
        let addr = |k: u64| [10, 10, 0, 200 + k as u8];
        let id = |k: u64| numeric_id(&svc_id(k));
        (
            self.services.keys().map(|&k| (addr(k), id(k))).collect(),
            self.services
                .keys()
                .map(|&k| (id(k), (1, addr(k), [1024, 65535])))
                .collect(),
        )
    }
}

fn random_op(r: &mut Rng, m: &Model) -> Op {
    let (mut k, j) = (r.below(SERVICES), r.below(ENDPOINTS));
    // Connection actions mostly name the endpoint's own service (else they are all 404s).
    if let Some(e) = m.endpoints.get(&j)
        && r.below(4) > 0
    {
        k = e.service;
    }
    match r.below(12) {
        0 | 1 => Op::CreateService(k, r.below(2) == 0),
        2 => Op::DeleteService(k),
        3 | 4 => Op::Whitelist(k, r.below(3) > 0),
        5..=7 => Op::CreateEndpoint(j, k),
        8 => Op::DeleteEndpoint(j),
        _ => Op::Connection(
            k,
            j,
            ["accept", "reject", "disable", "enable"][r.below(4) as usize],
        ),
    }
}

fn call(a: &Client, b: &Client, op: Op) -> anyhow::Result<serde_json::Value> {
    match op {
        Op::CreateService(k, auto) => b.post(
            "/v1/services",
            &json!({"id": svc_id(k), "vpc": "vpc-b", "auto_accept": auto,
                    "backends": [{"zone": "zone-a", "address": format!("10.10.0.{}", 10 + k)}],
                    "snat": [format!("10.10.0.{}", 200 + k)]}),
        ),
        Op::DeleteService(k) => b.delete(&format!("/v1/services/{}", svc_id(k))),
        Op::Whitelist(k, true) => b.call(
            "PUT",
            &format!("/v1/services/{}/whitelist/acct-a", svc_id(k)),
            None,
        ),
        Op::Whitelist(k, false) => {
            b.delete(&format!("/v1/services/{}/whitelist/acct-a", svc_id(k)))
        }
        Op::CreateEndpoint(j, k) => a.post(
            "/v1/endpoints",
            &json!({"id": ep_id(j), "vpc": "vpc-a", "service": svc_id(k),
                    "zones": [{"vswitch": "vsw-a1", "eni": format!("10.10.1.{}", 100 + j)}]}),
        ),
        Op::DeleteEndpoint(j) => a.delete(&format!("/v1/endpoints/{}", ep_id(j))),
        Op::Connection(k, j, action) => b.post(
            &format!(
                "/v1/services/{}/connections/{}/{action}",
                svc_id(k),
                ep_id(j)
            ),
            &json!({}),
        ),
    }
}

fn map_content(d: &ApiDaemon) -> BTreeMap<[u8; 4], (u32, u32, bool, [u8; 4])> {
    let map = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let m: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&map).unwrap();
    m.iter()
        .map(|r| r.unwrap())
        .map(|(k, v)| {
            assert_eq!(k.vpc_id, numeric_id("vpc-a"));
            (
                k.addr,
                (v.endpoint_id, v.state, v.is_whitelisted(), v.lb_addr),
            )
        })
        .collect()
}

/// The pinned SNAT maps, in the shape of `Model::expected_snat`.
fn snat_content(d: &ApiDaemon) -> SnatMaps {
    let map = dataplane::open_pinned(&d.pin, map_names::SNAT_ADDRS).unwrap();
    let addrs: HashMap<_, VpcAddr, u32> = HashMap::try_from(&map).unwrap();
    let addrs = addrs
        .iter()
        .map(|r| r.unwrap())
        .map(|(k, v)| {
            assert_eq!(k.vpc_id, numeric_id("vpc-b"));
            (k.addr, v)
        })
        .collect();
    let map = dataplane::open_pinned(&d.pin, map_names::SNAT_POOLS).unwrap();
    let pools: HashMap<_, u32, SnatPool> = HashMap::try_from(&map).unwrap();
    let pools = pools
        .iter()
        .map(|r| r.unwrap())
        .map(|(k, p)| (k, (p.count, p.addrs[0], [p.port_min, p.port_max])))
        .collect();
    (addrs, pools)
}

fn epoch(d: &ApiDaemon) -> u32 {
    let map = dataplane::open_pinned(&d.pin, map_names::EPOCH).unwrap();
    let a: Array<_, u32> = Array::try_from(&map).unwrap();
    a.get(&0, 0).unwrap()
}

#[test]
fn random_api_sequences_keep_the_maps_equal_to_the_model() {
    let d = ApiDaemon::start("plmb").unwrap();
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (a, b) = privatelink_tests::apidaemon::two_parties(&admin, &d.url).unwrap();

    let seed: u64 = std::env::var("PL_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (std::process::id() as u64 * 2654435761) | 1);
    let steps: usize = std::env::var("PL_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut log = Vec::new();
    let mut accepted = 0;
    let mut seen_states = BTreeSet::new();
    for step in 0..steps {
        let op = random_op(&mut rng, &model);
        log.push(op);
        let want = model.apply(op);
        let epoch_before = epoch(&d);
        let got = call(&a, &b, op);
        let ctx = || format!("seed {seed}, step {step}, {op:?} -> {got:?}\nops: {log:?}");
        match (&got, want) {
            (Ok(_), true) => accepted += 1,
            (Err(e), false) => {
                let status = e
                    .downcast_ref::<privatelink_user::client::ApiError>()
                    .map(|e| e.status)
                    .unwrap_or(0);
                assert!(
                    (400..500).contains(&status),
                    "refused with {status}: {}",
                    ctx()
                );
                assert_eq!(
                    epoch(&d),
                    epoch_before,
                    "a refused call moved the epoch: {}",
                    ctx()
                );
            }
            _ => panic!("the model expected accepted={want}: {}", ctx()),
        }
        assert_eq!(
            map_content(&d),
            model.expected(),
            "PL_ENDPOINTS differs: {}",
            ctx()
        );
        assert_eq!(
            snat_content(&d),
            model.expected_snat(),
            "SNAT maps differ: {}",
            ctx()
        );
        for e in model.endpoints.values() {
            seen_states.insert(e.state as u32);
        }
    }
    assert!(
        accepted > steps / 5,
        "only {accepted} of {steps} calls accepted"
    );
    assert_eq!(seen_states.len(), 4, "every connection state was reached");
    eprintln!(
        "seed {seed}: {steps} calls, {accepted} accepted, maps equal to the model after each"
    );
}
