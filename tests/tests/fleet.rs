//! A fleet of daemons on one etcd cluster (a real one: three etcd members on loopback,
//! `privatelink_tests::etcd`): each daemon in its own namespace with its own XDP program
//! and pinned maps, all sharing the admin token and the state.
//!
//! - A change made through one host's API reaches every host's maps (read from their pins)
//!   and every host's API; the time it takes is measured over a series of changes and
//!   printed (p50, p99, the largest), and must stay below a bound.
//! - Two clients writing at once through two hosts: no update is lost (whitelist entries
//!   added concurrently to one service all land), and no invariant breaks (each ENI
//!   address is given to one endpoint only, however the creations race): every answer is
//!   a success or the single host's refusal of a taken address, and the hosts end with
//!   one state.
//! - One etcd member down: every write still succeeds. The majority lost: writes are
//!   refused with 503 ("nothing was changed"), the data path keeps its maps and reads are
//!   served; once the members are back, the hosts write again and catch up with each
//!   other without a restart, and the refused writes never happened.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::HashMap;
use privatelink_common::{EndpointEni, SnatPool, VpcAddr, map_names};
use privatelink_tests::{
    apidaemon::{ApiDaemon, two_party_tokens},
    etcd::EtcdCluster,
    lab::wait_for,
    netns::unique_name,
};
use privatelink_user::{
    client::{ApiError, Client},
    dataplane::open_pinned,
    model::numeric_id,
};
use serde_json::{Value, json};

/// The most a change may take to reach another host's maps (a watch event, one catch-up
/// read, one apply: milliseconds; the bound is for a loaded CI machine). Below the 5 s of
/// the daemons' periodic catch-up, so that a watch that does not work fails the test.
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);

/// The hosts' lease.
const LEASE: Duration = Duration::from_secs(3);

/// The hosts `GET /v1/fleet` lists, through host `via`.
fn members(f: &Fleet, via: usize) -> Vec<String> {
    let v = f.admin(via).get("/v1/fleet").unwrap();
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `f` every millisecond (the measured times are not the poll's) until it holds or
/// `limit` passes.
fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        anyhow::ensure!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Three etcd members and `hosts` daemons on them, with a shared admin token.
struct Fleet {
    etcd: EtcdCluster,
    /// The fleet's key prefix in etcd (`--etcd-prefix`).
    prefix: String,
    hosts: Vec<ApiDaemon>,
    token_file: PathBuf,
}

impl Fleet {
    fn start(hosts: usize) -> Self {
        Self::start_with(hosts, &[])
    }

    /// `start`, each daemon with `more` options too.
    fn start_with(hosts: usize, more: &[&str]) -> Self {
        let etcd = EtcdCluster::start(3).unwrap();
        let token_file = std::env::temp_dir().join(format!("{}.token", unique_name("fleet")));
        std::fs::write(&token_file, "fleet-admin-token-0123456789\n").unwrap();
        let prefix = format!("/{}", unique_name("fleet"));
        let extra = [
            "--etcd".to_string(),
            etcd.endpoints(),
            "--etcd-prefix".to_string(),
            prefix.clone(),
            "--admin-token-file".to_string(),
            token_file.display().to_string(),
        ];
        let hosts = (0..hosts)
            .map(|i| {
                let mut extra = extra.to_vec();
                extra.extend([
                    "--host-name".to_string(),
                    format!("host{i}"),
                    "--host-lease-seconds".to_string(),
                    LEASE.as_secs().to_string(),
                ]);
                extra.extend(more.iter().map(|m| m.to_string()));
                ApiDaemon::with_args(&format!("fl{i}"), 65536, &extra).unwrap()
            })
            .collect();
        Self {
            etcd,
            prefix,
            hosts,
            token_file,
        }
    }

    fn admin(&self, host: usize) -> Client {
        let h = &self.hosts[host];
        Client::new(&h.url, Some(h.admin_token.clone()))
    }

    fn logs(&self) -> String {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("--- host {i}\n{}", h.log()))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// A host whose lease expires while it cannot renew it (the process stopped, every etcd
/// member restarted meanwhile, so its connections are gone) takes a new lease once it
/// runs again: registered and holding a slot again, with a pool narrowed to it.
#[test]
fn a_host_whose_lease_expired_while_it_was_away_takes_a_new_one() {
    let mut f = Fleet::start_with(2, &["--snat-slots", "2"]);
    let (_, tb) = two_party_tokens(&f.admin(0)).unwrap();
    service(&Client::new(&f.hosts[0].url, Some(tb)));
    // Hosts registered, and those of them holding a slot, as host 0's API lists them
    // (None while it cannot read etcd).
    let view = |f: &Fleet| -> Option<(usize, usize)> {
        let v = f.admin(0).get("/v1/fleet").ok()?;
        let hosts = v["hosts"].as_array()?;
        let with_slot = hosts.iter().filter(|h| h["snat_slot"].is_u64()).count();
        Some((hosts.len(), with_slot))
    };
    let settled = |f: &Fleet| {
        view(f) == Some((2, 2)) && f.hosts.iter().all(|h| pool(h).is_some_and(|p| p.0 == 1))
    };
    until(
        Duration::from_secs(10),
        "two hosts with a slot each",
        || settled(&f),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    // Host 1's registration and its slot (the slot's number as host 0's API lists it),
    // each with its lease, read through etcd's own gateway.
    let host1_keys = |f: &Fleet| -> Vec<(String, i64)> {
        let slot = slots(f, 0).get("host1").copied();
        let keys = f.etcd.leases_under(&format!("{}/", f.prefix)).unwrap();
        keys.into_iter()
            .filter(|(k, _)| {
                k.ends_with("/hosts/host1")
                    || slot.is_some_and(|n| k.ends_with(&format!("/slots/{n}")))
            })
            .collect()
    };
    let before = host1_keys(&f);
    assert_eq!(before.len(), 2, "host 1 registered with a slot: {before:?}");
    f.hosts[1].pause().unwrap();
    let paused = Instant::now();
    // Every member restarted, one at a time (the majority kept, so leases run on): the
    // paused host's connections all end.
    for i in 0..3 {
        f.etcd.stop_member(i);
        f.etcd.start_member(i).unwrap();
        f.etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    }
    let gone = until(LEASE * 4, "the paused host's lease expired", || {
        view(&f) == Some((1, 1))
    });
    f.hosts[1].resume().unwrap();
    gone.unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let away = paused.elapsed();
    let resumed = Instant::now();
    until(
        Duration::from_secs(15),
        "the host registered and holding a slot again",
        || settled(&f),
    )
    .unwrap_or_else(|e| panic!("{e}: (hosts, with a slot) {:?}\n{}", view(&f), f.logs()));
    let back = resumed.elapsed();
    // Under a new lease: what is listed is not the state from before the pause.
    let after = host1_keys(&f);
    let old: BTreeSet<i64> = before.iter().map(|(_, l)| *l).collect();
    assert!(
        after.len() == 2 && after.iter().all(|(_, l)| *l != 0 && !old.contains(l)),
        "host 1 is not back under a new lease: before {before:?}, after {after:?}"
    );
    println!(
        "a host away {away:?} (lease {LEASE:?}) was back, registered with a slot under a new \
         lease, {back:?} after it ran again"
    );
}

/// The ENI addresses of vpc-a in a host's pinned `PL_ENDPOINTS`.
fn enis(host: &ApiDaemon) -> BTreeSet<[u8; 4]> {
    let Ok(m) = open_pinned(&host.pin, map_names::ENDPOINTS) else {
        return BTreeSet::new();
    };
    let m: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&m).unwrap();
    let vpc = numeric_id("vpc-a");
    m.keys()
        .filter_map(Result::ok)
        .filter(|k| k.vpc_id == vpc)
        .map(|k| k.addr)
        .collect()
}

fn ip(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn status(r: &anyhow::Result<Value>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.downcast_ref::<ApiError>().map_or(0, |e| e.status),
    }
}

/// How many 503s `retrying` met (reported by the test that uses it).
static RETRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `call` again while it answers 503, which the API gives for a write that lost its
/// commit to other hosts' several times over (nothing of it stored: "try again"), as a
/// client does; at most five tries, 50 ms apart.
fn retrying(call: impl Fn() -> anyhow::Result<Value>) -> anyhow::Result<Value> {
    let mut r = call();
    for _ in 1..5 {
        if status(&r) != 503 {
            break;
        }
        RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(50));
        r = call();
    }
    r
}

/// The provider's service (auto-accepting, whitelisting acct-a) through host 0.
fn service(b: &Client) {
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "auto_accept": true, "whitelist": ["acct-a"],
                "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_change_through_one_host_reaches_every_hosts_maps() {
    let mut f = Fleet::start(3);
    let (ta, tb) = two_party_tokens(&f.admin(0)).unwrap();
    let url = |i: usize| f.hosts[i].url.clone();
    let b = Client::new(&url(0), Some(tb));
    service(&b);
    // Through host 0, seen in host 2's maps and API; then through host 2, seen in host 1's.
    let mut times = Vec::new();
    for k in 0..20u8 {
        let (via, seen) = if k % 2 == 0 { (0, 2) } else { (2, 1) };
        let a = Client::new(&url(via), Some(ta.clone()));
        let addr = [10, 10, 1, 10 + k];
        let t = Instant::now();
        a.post(
            "/v1/endpoints",
            &json!({"id": format!("ep-{k}"), "vpc": "vpc-a", "service": "epsrv-b",
                    "zones": [{"vswitch": "vsw-a1", "eni": ip(addr)}]}),
        )
        .unwrap();
        let answered = t.elapsed();
        until(
            PROPAGATION_BOUND,
            "the ENI in the other host's maps",
            || enis(&f.hosts[seen]).contains(&addr),
        )
        .unwrap_or_else(|e| panic!("ep-{k}: {e}\n{}", f.logs()));
        times.push(t.elapsed().saturating_sub(answered));
        // The other host's API shows it too (its state is the one it applied).
        let other = Client::new(&url(seen), Some(ta.clone()));
        assert_eq!(
            other.get(&format!("/v1/endpoints/ep-{k}")).unwrap()["zones"][0]["eni"],
            ip(addr)
        );
    }
    // Every host ends with every ENI (the last change reached the third host too).
    until(PROPAGATION_BOUND, "every ENI on every host", || {
        f.hosts.iter().all(|h| enis(h).len() == 20)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    // A deletion travels as well.
    Client::new(&url(1), Some(ta.clone()))
        .delete("/v1/endpoints/ep-0")
        .unwrap();
    wait_for(PROPAGATION_BOUND, "ep-0 gone from host 0's maps", || {
        !enis(&f.hosts[0]).contains(&[10, 10, 1, 10])
    })
    .unwrap();
    // The membership: every host registered under its lease; a killed host is gone once
    // its lease has run out (not before), and back when it starts again.
    let all = ["host0", "host1", "host2"].map(String::from).to_vec();
    until(PROPAGATION_BOUND, "three members", || members(&f, 0) == all).unwrap();
    let v = f.admin(1).get("/v1/fleet").unwrap();
    assert!(v["store"].as_str().unwrap().starts_with("etcd "), "{v}");
    // The CLI's `privatelink fleet` shows the same hosts.
    let out = privatelink_tests::netns::run(
        std::process::Command::new(privatelink_tests::lab::privatelink_bin().unwrap())
            .args([
                "--json",
                "--api",
                &url(1),
                "--token",
                &f.hosts[1].admin_token,
                "fleet",
            ])
            .env_remove("PRIVATELINK_TOKEN"),
    )
    .unwrap();
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli, v["hosts"], "{out}");
    assert_eq!(v["hosts"][2]["api"], f.hosts[2].url, "{v}");
    let e = Client::new(&url(0), Some(ta.clone()))
        .get("/v1/fleet")
        .unwrap_err();
    assert_eq!(e.downcast_ref::<ApiError>().unwrap().status, 403);
    f.hosts[2].kill().unwrap();
    let t = Instant::now();
    until(LEASE * 3, "host2 gone", || members(&f, 0).len() == 2).unwrap();
    let gone = t.elapsed();
    assert!(
        gone >= LEASE / 2,
        "host2 gone after {gone:?}, before its lease could run out"
    );
    assert_eq!(members(&f, 1), all[..2].to_vec());
    f.hosts[2].start_again().unwrap();
    until(PROPAGATION_BOUND, "host2 back", || members(&f, 0) == all).unwrap();
    println!("a killed host left the fleet's membership {gone:?} after (lease {LEASE:?})");

    times.sort();
    println!(
        "propagation (answer through one host → entry in another host's pinned map), {} \
         changes: p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap()
    );
}

#[test]
fn concurrent_writes_through_two_hosts_lose_nothing_and_keep_addresses_unique() {
    let f = Fleet::start(2);
    let (ta, tb) = two_party_tokens(&f.admin(0)).unwrap();
    service(&Client::new(&f.hosts[0].url, Some(tb.clone())));
    // Accounts to whitelist, made first (a whitelist names existing accounts).
    let admin = f.admin(1);
    for side in ["x", "y"] {
        for k in 0..10 {
            admin
                .post("/v1/accounts", &json!({"id": format!("acct-{side}{k}")}))
                .unwrap();
        }
    }
    // Two clients at once, each through its own host: one adds acct-x* to the whitelist
    // and creates endpoints ep-x*, the other acct-y* and ep-y*, the endpoints' ENI
    // addresses drawn from one pool of 8 (every one asked for by both sides).
    let run = |host: usize, side: &'static str| {
        let url = f.hosts[host].url.clone();
        let (ta, tb) = (ta.clone(), tb.clone());
        std::thread::spawn(move || {
            let a = Client::new(&url, Some(ta));
            let b = Client::new(&url, Some(tb));
            let mut created = Vec::new();
            for k in 0..10 {
                let r = retrying(|| {
                    b.put(
                        &format!("/v1/services/epsrv-b/whitelist/acct-{side}{k}"),
                        &json!({}),
                    )
                });
                assert_eq!(status(&r), 200, "whitelist acct-{side}{k}: {r:?}");
                let addr = [10, 10, 1, 100 + (k % 8) as u8];
                let id = format!("ep-{side}{k}");
                let r = retrying(|| {
                    a.post(
                        "/v1/endpoints",
                        &json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b",
                                "zones": [{"vswitch": "vsw-a1", "eni": ip(addr)}]}),
                    )
                });
                match status(&r) {
                    200 => created.push((id, addr)),
                    // The state's own rule, as one host answers it: the address is taken.
                    400 => {
                        let e = r.unwrap_err();
                        let e = e.downcast_ref::<ApiError>().unwrap();
                        let msg = e.body["error"]["message"].as_str().unwrap_or_default();
                        assert!(
                            msg == format!("{} is already in use in VPC vpc-a", ip(addr)),
                            "{e:?}"
                        );
                    }
                    s => panic!("{id} on {}: {s} {r:?}", ip(addr)),
                }
            }
            created
        })
    };
    let (x, y) = (run(0, "x"), run(1, "y"));
    let created: Vec<(String, [u8; 4])> = x
        .join()
        .unwrap()
        .into_iter()
        .chain(y.join().unwrap())
        .collect();
    eprintln!(
        "40 writes, {} answered 503 (a commit lost to the other host over and over) and tried again",
        RETRIED.load(std::sync::atomic::Ordering::Relaxed)
    );
    // Every address was given once: as many creations succeeded as there are addresses
    // asked for, each address to one endpoint.
    let addrs: BTreeSet<[u8; 4]> = created.iter().map(|(_, a)| *a).collect();
    assert_eq!(
        addrs.len(),
        created.len(),
        "an address given twice: {created:?}"
    );
    assert_eq!(
        addrs.len(),
        8,
        "every address of the pool was taken: {created:?}"
    );
    // Both hosts converge on one state: every whitelist addition, the endpoints created.
    for host in 0..2 {
        let b = Client::new(&f.hosts[host].url, Some(tb.clone()));
        let a = Client::new(&f.hosts[host].url, Some(ta.clone()));
        let mut last = (Value::Null, Value::Null);
        let converged = wait_for(PROPAGATION_BOUND, "the hosts to converge", || {
            last = (
                b.get("/v1/services/epsrv-b/whitelist").unwrap(),
                a.get("/v1/endpoints").unwrap(),
            );
            let wl: BTreeSet<String> = last.0.as_array().map_or(BTreeSet::new(), |l| {
                l.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            });
            let eps: BTreeSet<String> = last.1.as_array().map_or(BTreeSet::new(), |l| {
                l.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            });
            (0..10)
                .all(|k| wl.contains(&format!("acct-x{k}")) && wl.contains(&format!("acct-y{k}")))
                && eps == created.iter().map(|(id, _)| id.clone()).collect()
        });
        assert!(converged.is_ok(), "host {host}: {:#?}\n{}", last, f.logs());
        assert_eq!(enis(&f.hosts[host]), addrs, "host {host}'s maps");
    }
}

#[test]
fn losing_the_etcd_majority_refuses_writes_keeps_the_data_path_and_recovers() {
    let mut f = Fleet::start(2);
    let (ta, tb) = two_party_tokens(&f.admin(0)).unwrap();
    service(&Client::new(&f.hosts[0].url, Some(tb)));
    let a0 = Client::new(&f.hosts[0].url, Some(ta.clone()));
    let a1 = Client::new(&f.hosts[1].url, Some(ta.clone()));
    let ep = |id: &str, last: u8| {
        json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b",
               "zones": [{"vswitch": "vsw-a1", "eni": ip([10, 10, 1, last])}]})
    };
    a0.post("/v1/endpoints", &ep("ep-1", 21)).unwrap();
    wait_for(PROPAGATION_BOUND, "ep-1 on host 1", || {
        enis(&f.hosts[1]).contains(&[10, 10, 1, 21])
    })
    .unwrap();

    // One member down, a majority up: every write succeeds (a request the client sends
    // to the dead member is sent again to another).
    f.etcd.stop_member(2);
    for k in 0..10u8 {
        let a = if k % 2 == 0 { &a0 } else { &a1 };
        let r = a.post("/v1/endpoints", &ep(&format!("ep-m{k}"), 40 + k));
        assert_eq!(
            status(&r),
            200,
            "ep-m{k} with one member down: {r:?}\n{}",
            f.logs()
        );
    }

    // Both hosts have every one of them before the majority goes.
    until(PROPAGATION_BOUND, "the eleven ENIs on both hosts", || {
        f.hosts.iter().all(|h| enis(h).len() == 11)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));

    // Two of three members down: no majority.
    f.etcd.stop_member(1);
    let t = Instant::now();
    let r = a0.post("/v1/endpoints", &ep("ep-2", 22));
    assert_eq!(status(&r), 503, "{r:?}");
    let e = r.unwrap_err();
    let e = e.downcast_ref::<ApiError>().unwrap();
    assert_eq!(e.body["error"]["code"], "unavailable", "{e:?}");
    println!(
        "a write without an etcd majority was refused after {:?}",
        t.elapsed()
    );
    // Nothing changed (the daemon could not even ask etcd before judging the change):
    // the data path keeps its state, reads are served.
    let before: BTreeSet<[u8; 4]> = enis(&f.hosts[0]);
    assert_eq!(before.len(), 11, "ep-1 and the ten");
    for h in &f.hosts {
        assert_eq!(enis(h), before);
    }
    assert_eq!(status(&a1.get("/v1/endpoints/ep-2")), 404);
    assert_eq!(
        status(&a1.get("/v1/endpoints/ep-1")),
        200,
        "reads are served"
    );
    // Through the other host too, and the answer says nothing changed.
    let r = a1.post("/v1/endpoints", &ep("ep-4", 24));
    assert_eq!(status(&r), 503, "{r:?}");
    let e = r.unwrap_err();
    let msg = e.downcast_ref::<ApiError>().unwrap().body["error"]["message"].to_string();
    assert!(msg.contains("nothing was changed"), "{msg}");

    // Longer than the daemons' 5 s catch-up tick: each tries the store at least once
    // during the outage (and says so), whatever the watch does.
    std::thread::sleep(Duration::from_secs(6));
    // The members come back: writes succeed again, without restarting a daemon, and
    // the other host catches up.
    f.etcd.start_member(1).unwrap();
    f.etcd.start_member(2).unwrap();
    f.etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    let t = Instant::now();
    // A new id each try: a try answered 503 may still have been committed.
    let mut tries = 0;
    wait_for(
        Duration::from_secs(30),
        "a write through host 1 again",
        || {
            tries += 1;
            let id = format!("ep-3-{tries}");
            status(&a1.post("/v1/endpoints", &ep(&id, 100 + (tries % 100) as u8))) == 200
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let last = [10, 10, 1, 100 + (tries % 100) as u8];
    println!(
        "writes accepted again {:?} after the majority was back",
        t.elapsed()
    );
    until(PROPAGATION_BOUND, "ep-3 on host 0", || {
        enis(&f.hosts[0]).contains(&last)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    // The writes refused during the outage never happened, on either host.
    for h in &f.hosts {
        let e = enis(h);
        assert!(!e.contains(&[10, 10, 1, 22]) && !e.contains(&[10, 10, 1, 24]));
    }
    assert_eq!(status(&a0.get("/v1/endpoints/ep-2")), 404);
    for h in &mut f.hosts {
        assert!(h.alive(), "no daemon exited");
    }
    let logs = f.logs();
    assert!(
        logs.contains("the shared store answers again")
            || logs.contains("etcd watch re-established"),
        "{logs}"
    );
}

/// The SNAT pool of epsrv-b in a host's pinned `PL_SNAT_POOLS`: (addresses, first and
/// last port); none before the host applied the service.
fn pool(host: &ApiDaemon) -> Option<(u32, u16, u16)> {
    let m = open_pinned(&host.pin, map_names::SNAT_POOLS).ok()?;
    let m: HashMap<_, u32, SnatPool> = HashMap::try_from(&m).ok()?;
    let p = m.get(&numeric_id("epsrv-b"), 0).ok()?;
    Some((p.count, p.port_min, p.port_max))
}

/// The slot each host holds, by host name, through host `via`'s `GET /v1/fleet`.
fn slots(f: &Fleet, via: usize) -> std::collections::BTreeMap<String, u64> {
    let Ok(v) = f.admin(via).get("/v1/fleet") else {
        return Default::default();
    };
    v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h["host"].as_str()?.to_string(), h["snat_slot"].as_u64()?)))
        .collect()
}

/// `--snat-slots 2` on three hosts: two hold a slot each and take new flows' ports from
/// its half of the range only; the third holds none (its pool takes no new flow). The
/// same host started again takes its slot back at once; a slot passes to another host
/// only once its holder's lease has expired; through an etcd majority outage longer than
/// the lease every host keeps its slot and its pool.
#[test]
fn snat_slots_are_held_under_leases_and_narrow_each_hosts_pool() {
    let mut f = Fleet::start_with(3, &["--snat-slots", "2"]);
    let (_, tb) = two_party_tokens(&f.admin(0)).unwrap();
    service(&Client::new(&f.hosts[0].url, Some(tb)));
    let halves = [(1024u16, 33279u16), (33280, 65535)];
    let settled = |f: &Fleet| {
        let held = slots(f, 0);
        let pools: Vec<_> = f.hosts.iter().map(pool).collect();
        // Two hosts hold a slot each, and each host's pool says what it holds.
        let ok = held.len() == 2
            && held.values().collect::<BTreeSet<_>>().len() == 2
            && (0..3).all(|i| match (held.get(&format!("host{i}")), pools[i]) {
                (Some(s), Some((1, lo, hi))) => (lo, hi) == halves[*s as usize],
                (None, Some((0, ..))) => true,
                _ => false,
            });
        ok.then_some(held)
    };
    let mut held = None;
    until(
        Duration::from_secs(10),
        "two slots held, three pools narrowed",
        || {
            held = settled(&f);
            held.is_some()
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} {:?}\n{}",
            slots(&f, 0),
            f.hosts.iter().map(pool).collect::<Vec<_>>(),
            f.logs()
        )
    });
    let held = held.unwrap();
    let spare = (0..3)
        .find(|i| !held.contains_key(&format!("host{i}")))
        .unwrap();
    let holder = (0..3).find(|i| *i != spare).unwrap();
    let slot = held[&format!("host{holder}")];

    // The holder restarted: its slot back at once, under its new lease. Watched every
    // 20 ms through the spare's API: the slot's key never leaves the holder's name (were
    // it not taken back, it would go when the old lease expires, 2 to 3 s after the kill,
    // and the restart takes longer than that).
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (c, watching) = (f.admin(spare), watching.clone());
        let name = format!("host{holder}");
        std::thread::spawn(move || {
            let mut gaps = Vec::new();
            let start = Instant::now();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(v) = c.get("/v1/fleet") {
                    let held =
                        v["slots"].as_array().into_iter().flatten().any(|s| {
                            s["slot"].as_u64() == Some(slot) && s["host"] == name.as_str()
                        });
                    if !held {
                        gaps.push((start.elapsed(), v["slots"].clone()));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            gaps
        })
    };
    f.hosts[holder].kill().unwrap();
    let t = Instant::now();
    f.hosts[holder].start_again().unwrap();
    until(
        Duration::from_secs(10),
        "the restarted host's slot back",
        || {
            slots(&f, spare).get(&format!("host{holder}")) == Some(&slot)
                && pool(&f.hosts[holder]).is_some_and(|p| (p.1, p.2) == halves[slot as usize])
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let restarted = t.elapsed();
    // Watched past the old lease's end whatever the restart took.
    std::thread::sleep((LEASE + Duration::from_secs(1)).saturating_sub(t.elapsed()));
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let gaps = watcher.join().unwrap();
    assert!(
        gaps.is_empty(),
        "the slot left the restarting host ({restarted:?}): {gaps:?}\n{}",
        f.logs()
    );
    assert!(
        pool(&f.hosts[spare]).is_some_and(|p| p.0 == 0),
        "the spare took a slot while its holder restarted"
    );

    // The holder dies: the spare takes its slot, but not before the lease expired
    // (renewed every third of it, so at least two thirds of it after the death).
    f.hosts[holder].kill().unwrap();
    let died = Instant::now();
    until(
        Duration::from_secs(10),
        "the spare holding the dead host's slot",
        || {
            slots(&f, spare).get(&format!("host{spare}")) == Some(&slot)
                && pool(&f.hosts[spare])
                    .is_some_and(|p| p == (1, halves[slot as usize].0, halves[slot as usize].1))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let taken = died.elapsed();
    assert!(
        taken >= LEASE * 2 / 3,
        "the slot passed {taken:?} after its holder died, before its lease of {LEASE:?} could expire"
    );

    // The majority lost for twice the lease: no lease can expire and no slot change
    // hands, so the hosts keep their slots and their pools (the data path keeps its last
    // state); once etcd is back they still hold the same slots.
    let before: Vec<_> = (0..3)
        .filter(|i| *i != holder)
        .map(|i| pool(&f.hosts[i]))
        .collect();
    let held_before = slots(&f, spare);
    f.etcd.stop_member(1);
    f.etcd.stop_member(2);
    let cut = Instant::now();
    while cut.elapsed() < LEASE * 2 {
        let now: Vec<_> = (0..3)
            .filter(|i| *i != holder)
            .map(|i| pool(&f.hosts[i]))
            .collect();
        assert_eq!(
            now,
            before,
            "a pool changed {:?} into the etcd outage\n{}",
            cut.elapsed(),
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f.etcd.start_member(1).unwrap();
    f.etcd.start_member(2).unwrap();
    f.etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    until(
        Duration::from_secs(10),
        "the same slots held after etcd came back",
        || slots(&f, spare) == held_before,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} vs {held_before:?}\n{}",
            slots(&f, spare),
            f.logs()
        )
    });
    let after: Vec<_> = (0..3)
        .filter(|i| *i != holder)
        .map(|i| pool(&f.hosts[i]))
        .collect();
    assert_eq!(after, before);
    println!(
        "snat slots: a restarted host had its slot back after {restarted:?}; a dead host's slot \
         passed on {taken:?} after its death (lease {LEASE:?}); slots and pools kept through an \
         etcd majority outage of {:?}",
        LEASE * 2
    );
}
