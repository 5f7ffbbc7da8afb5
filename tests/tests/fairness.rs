//! Fairness in the lab (issue 12). A TCP SYN flood of never-answered flows from the
//! consumer's VPC at ep-a, larger than the service's SNAT pool, spends ep-a's own
//! allowance of new flows, not the pool: a second consumer's endpoint to the same service
//! (acct-a's vpc-web) keeps opening connections without a failure, and ep-a's own client
//! is served again within the embryonic timeout after the flood. With the share lifted
//! (100 %) the same flood fills the pool and the second consumer's connections fail: the
//! share is what protects it. And the provider's own endpoint to its own service, without
//! whitelisting itself, is forwarded (in and out of the provider's interface).

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use privatelink_tests::{
    lab::{BACKENDS, ENI, LB, Lab, LabOptions},
    netns::{Netns, unique_name},
    throughput::{mac_of, send},
};
use privatelink_user::model::numeric_id;

/// The labs of this file one after the other: a flood takes a whole CPU of two.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lab() -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let prefix = unique_name("plfa");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    (
        guard,
        Lab::up(&LabOptions::new(&prefix, pin)).expect("lab up"),
    )
}

/// The provider's own client in vpc-b (vsw-b0), for its own endpoint.
const OWN_CLIENT: &str = "10.10.0.30";
/// The second consumer's endpoint: acct-a's other VPC (vpc-web, the client 10.30.1.10 on
/// the bridge br0) to the same service epsrv-b.
const WEB_ENI: &str = "10.30.0.100";
/// epsrv-b's SNAT pool to haproxy's tcp/80: 2 addresses x 64 512 ports. (A pool is per
/// load-balancer address, port and protocol: a UDP flood would spend UDP tuples only and
/// could never starve the TCP clients, so the flood is TCP to port 80, as theirs.)
const POOL: u64 = 2 * 64_512;
/// The daemon's default embryonic timeout (`--embryonic-timeout`).
const EMBRYONIC: Duration = Duration::from_secs(10);
/// Never-answered TCP SYNs from addresses of the consumer's subnet nobody holds
/// (10.10.2.77 to .79), sent by the kernel's live-frames generator, or the same frames
/// through a packet socket where the kernel refuses live frames (`privatelink_gen`: a
/// new source port per flow, the next source address every 60 000 flows; it also zeroes
/// the low half of the sequence number and leaves the TCP checksum stale, which the data
/// path does not check): more flows than the pool has tuples.
const FLOOD_FLOWS: u32 = 150_000;
const FLOOD_SOURCE: [u8; 4] = [10, 10, 2, 77];
/// The flood's TCP window: how the provider's host tells its SYNs apart to drop them.
const FLOOD_WINDOW: u16 = 4321;
/// Each flow 20 times (each flow is sent again within about half a second, so none is
/// idle long enough to give its tuple up): a few seconds on this VM.
const FLOOD_FRAMES: u32 = 20 * FLOOD_FLOWS;

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// Whether one HTTP request from `ns` to `url` succeeds within `limit` seconds.
fn curl_ok(ns: &Netns, url: &str, limit: &str) -> bool {
    ns.command("curl")
        .args(["-s", "-o", "/dev/null", "--fail", "-m", limit, url])
        .stdin(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn web(lab: &Lab) -> &Netns {
    &lab.gwlb.as_ref().expect("API-mode lab").web
}

/// Makes the provider's host drop the flood, and creates the second consumer's endpoint
/// ep-web in vpc-web; returns once its client reaches the service through it.
fn second_consumer(lab: &Lab) {
    lab.cli(
        "consumer",
        &[
            "endpoint",
            "create",
            "ep-web",
            "--vpc",
            "vpc-web",
            "--service",
            "epsrv-b",
            "--zone",
            &format!("vsw-w0:{WEB_ENI}"),
            "--name",
            "second-consumer",
        ],
    )
    .unwrap();
    lab.cli("provider", &["connection", "accept", "epsrv-b", "ep-web"])
        .unwrap();
    // Nothing answers the flood: the provider's host drops its SYNs (told apart by their
    // window) as they come in, before haproxy could answer them.
    let rules = format!(
        "table netdev flood {{\n chain in {{ type filter hook ingress device p0 priority 0; \
         tcp dport 80 tcp window {FLOOD_WINDOW} counter drop; }}\n}}\n"
    );
    let f = lab.dir.join("flood.nft");
    std::fs::write(&f, rules).unwrap();
    lab.provider
        .exec("nft", &["-f", f.to_str().unwrap()])
        .unwrap();
    // The ENI is in vsw-w0, the client in vsw-w1: the VPC's segment is one bridge.
    web(lab)
        .ip(&["route", "add", WEB_ENI, "dev", "br0"])
        .unwrap();
    let url = format!("http://{WEB_ENI}/");
    privatelink_tests::lab::wait_for(Duration::from_secs(10), "ep-web to serve", || {
        curl_ok(web(lab), &url, "2")
    })
    .unwrap();
    let body = lab.web_curl(&url, &[]).unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("backend 10.10.3."),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// The flood's template frame: a TCP SYN from `FLOOD_SOURCE`:1024 to ep-a's ENI, port
/// 80, window `FLOOD_WINDOW`.
fn flood_frame(lab: &Lab) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(
        mac_of(&lab.consumer, "c0").unwrap(),
        mac_of(&lab.fwd, "fc0").unwrap(),
    )
    .ipv4(FLOOD_SOURCE, [10, 10, 1, 100], 64)
    .tcp(1024, 80, 1, FLOOD_WINDOW)
    .syn()
    .write(&mut frame, &[])
    .unwrap();
    frame
}

/// Flood flows in the flow table (their original-direction entries).
fn flood_flows(lab: &Lab) -> usize {
    let sources: Vec<String> = (0..3)
        .map(|i| format!("10.10.2.{}:", FLOOD_SOURCE[3] + i))
        .collect();
    lab.flow_lines()
        .unwrap()
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| sources.iter().any(|s| c.starts_with(s.as_str())))
                // Live ones: an expired entry stays in the table until it is reused.
                && !l.ends_with("expired")
        })
        .count()
}

#[derive(Debug, Default)]
struct Phase {
    /// From the first flood packet the data path counted to the generator's return.
    flood_took: Duration,
    /// The second consumer's requests during the flood: succeeded, made.
    web_ok: u32,
    web_total: u32,
    /// ep-a's own client during the flood: succeeded, made.
    own_ok: u32,
    own_total: u32,
    /// From the flood's end until the first request of the client named to `flood`
    /// succeeded (None: not within the embryonic timeout plus 5 s).
    recovered: Option<Duration>,
}

/// Floods ep-a from the consumer namespace while the second consumer's client opens one
/// connection after another through ep-web, and ep-a's own client tries three times;
/// then measures how long after the flood `recover_ns` reaches `recover_url` again.
fn flood(lab: &Lab, frames: u32, recover_ns: &Netns, recover_url: &str) -> Phase {
    let frame = flood_frame(lab);
    let ns = lab.consumer.name.clone();
    let web_url = format!("http://{WEB_ENI}/");
    let own_url = format!("http://{ENI}/");
    let new_flows = |s: &BTreeMap<String, u64>| {
        s.get("forward_new_flow").copied().unwrap_or(0)
            + s.get("drop_endpoint_flow_limit").copied().unwrap_or(0)
            + s.get("drop_snat_exhausted").copied().unwrap_or(0)
    };
    let before = new_flows(&lab.stats().unwrap());
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let flooder = s.spawn(|| {
            let took = send(&ns, "c0", frame, FLOOD_FLOWS, frames);
            done.store(true, Ordering::SeqCst);
            took
        });
        // The generator loads its program first: the flood starts when the data path
        // sees it.
        let mut p = Phase::default();
        while !done.load(Ordering::SeqCst) && new_flows(&lab.stats().unwrap()) < before + 10_000 {
            thread::sleep(Duration::from_millis(20));
        }
        let start = Instant::now();
        // The flood at its height: with a share, the allowance spent (a fraction of a
        // second in); without, the pool as full as this flood fills it (one round).
        thread::sleep(Duration::from_secs(1));
        let own = s.spawn(|| {
            let (mut ok, mut tries) = (0, 0);
            while tries < 3 && !done.load(Ordering::SeqCst) {
                ok += curl_ok(&lab.consumer, &own_url, "2") as u32;
                tries += 1;
            }
            (ok, tries)
        });
        // Bounded: at most 400 requests. Each may take 2 s: its SYN and one
        // retransmission (whose first SNAT attempt is the SYN's, the flow's hash, and the
        // other seven follow a stride drawn afresh for every packet).
        while !done.load(Ordering::SeqCst) && p.web_total < 400 {
            p.web_ok += curl_ok(web(lab), &web_url, "2") as u32;
            p.web_total += 1;
        }
        let took = flooder.join().unwrap().expect("the flood ran");
        let ended = Instant::now();
        p.flood_took = start.elapsed().min(took);
        p.recovered = recovery(
            recover_ns,
            recover_url,
            ended,
            EMBRYONIC + Duration::from_secs(5),
        );
        (p.own_ok, p.own_total) = own.join().unwrap();
        p
    })
}

/// Time from `since` until one request from `ns` to `url` succeeds (each try given a
/// second at most), or None after `limit`.
fn recovery(ns: &Netns, url: &str, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        let ok = ns
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--fail",
                "--connect-timeout",
                "0.4",
                "-m",
                "1",
                url,
            ])
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(since.elapsed());
        }
    }
    None
}

fn budget_of(lab: &Lab, ep: &str) -> serde_json::Value {
    lab.budgets()
        .unwrap()
        .remove(&numeric_id(ep))
        .unwrap_or(serde_json::Value::Null)
}

/// The flood from the consumer's VPC at ep-a, twice: under the service's default share
/// (20 %) and with the share lifted (100 %), while vpc-web's client keeps opening
/// connections through ep-web.
#[test]
fn a_flood_from_one_consumer_starves_neither_the_other_consumer_nor_itself_for_long() {
    let (_one, lab) = lab();
    second_consumer(&lab);
    let web_url = format!("http://{WEB_ENI}/");
    let own_url = format!("http://{ENI}/");

    // ---- The default share (20 %): the flood spends ep-a's allowance only. ----
    let before = lab.stats().unwrap();
    let a = flood(&lab, FLOOD_FRAMES, &lab.consumer, &own_url);
    let after = lab.stats().unwrap();
    let held = flood_flows(&lab);
    let (ep_a, ep_web) = (budget_of(&lab, "ep-a"), budget_of(&lab, "ep-web"));
    let refused = delta(&before, &after, "drop_endpoint_flow_limit");
    let no_tuple = delta(&before, &after, "drop_snat_exhausted");
    eprintln!(
        "share 20 %: {FLOOD_FLOWS} flows, {FLOOD_FRAMES} SYNs in {:.1?}: {held} flows \
         accepted, {refused} SYNs refused by ep-a's allowance, {no_tuple} found no SNAT \
         tuple; ep-web {} of {} requests ok; ep-a's own client during the flood {} of {} \
         ok, served again {:?} after it; budgets: ep-a {ep_a}, ep-web {ep_web}",
        a.flood_took, a.web_ok, a.web_total, a.own_ok, a.own_total, a.recovered,
    );
    assert!(
        a.web_total >= 10,
        "only {} requests during the flood",
        a.web_total
    );
    assert_eq!(a.web_ok, a.web_total, "the second consumer saw failures");
    assert!(refused > 0, "nothing refused: {after:?}");
    let budget = ep_a["budget"].as_u64().unwrap();
    assert_eq!(budget, POOL * 20 / 200, "half the share: {ep_a}");
    assert!(ep_a["refused"].as_u64().unwrap() >= refused, "{ep_a}");
    assert_eq!(ep_web["refused"].as_u64(), Some(0), "{ep_web}");
    // ep-a holds its allowance plus what refilled while the flood lasted (a budget per
    // embryonic timeout: its share at most, as its half-open flows expire from their
    // creation however often they are resent; see the long flood below).
    let refill = budget as f64 * a.flood_took.as_secs_f64() / EMBRYONIC.as_secs_f64();
    assert!(
        held as f64 <= (budget as f64 + refill) * 1.02 + 100.0,
        "{held} flows held, allowance {budget} + {refill:.0} refilled"
    );
    assert!((held as u64) < POOL / 2, "{held} flows held");
    // The pool was never short: a new flow probes 8 tuples, so at the fill ep-a reaches
    // (a third or so) one in several thousand misses all 8 and is counted here.
    assert!(
        no_tuple * 1000 <= held as u64,
        "{no_tuple} found no SNAT tuple"
    );
    let recovered = a
        .recovered
        .expect("ep-a's client not served again within the embryonic timeout");
    assert!(
        recovered <= EMBRYONIC + Duration::from_secs(2),
        "{recovered:?}"
    );

    // ---- No per-endpoint bound (100 %): the same flood fills the pool. ----
    lab.cli(
        "provider",
        &["service", "set", "epsrv-b", "--endpoint-flow-share", "100"],
    )
    .unwrap();
    thread::sleep(Duration::from_millis(500));
    let before = lab.stats().unwrap();
    let b = flood(&lab, FLOOD_FRAMES, web(&lab), &web_url);
    let after = lab.stats().unwrap();
    let held = flood_flows(&lab);
    let refused = delta(&before, &after, "drop_endpoint_flow_limit");
    let no_tuple = delta(&before, &after, "drop_snat_exhausted");
    eprintln!(
        "share 100 %: the same flood in {:.1?}: {held} flows hold tuples of the \
         {POOL}-tuple pool, {no_tuple} SYNs found no SNAT tuple, {refused} refused by an \
         allowance; ep-web {} of {} requests ok (served again {:?} after the flood); ep-a's \
         own client {} of {} ok",
        b.flood_took, b.web_ok, b.web_total, b.recovered, b.own_ok, b.own_total,
    );
    assert_eq!(refused, 0);
    // Without a share the flood fills the pool (as full as 8 probes per flow fill it;
    // its own new flows take over its older half-open ones, but another endpoint's never
    // do): thousands of its SYNs find no tuple, and the second consumer's connections
    // fail. (How many depends on the flood's pace and on the resent SYNs' fresh probes,
    // which fill the pool further: 9 424 to over 12 902 in runs of this suite; the bound
    // is the order of magnitude. `held` is counted after the recovery wait, when the
    // flood's flows, 10 s from their creation, are mostly gone: printed, not asserted.)
    assert!(no_tuple > POOL / 100, "{no_tuple} found no SNAT tuple");
    assert!(
        b.web_ok < b.web_total,
        "ep-web saw no failure with the pool full ({} requests)",
        b.web_total
    );
}

/// A flood that keeps resending its flows for longer than the embryonic timeout holds no
/// more than its endpoint's share: its half-open flows expire 10 s after their creation
/// however often they are resent. (This failed when the embryonic timeout was an idle
/// timeout: at a 50 % share, 13 s of this flood left ep-a holding 111 527 of the 129 024
/// tuples, 37 387 SYNs found no SNAT tuple, and ep-web lost 6 of 49 requests.)
#[test]
fn a_long_flood_stays_within_its_endpoints_share() {
    let (_one, lab) = lab();
    second_consumer(&lab);
    let web_url = format!("http://{WEB_ENI}/");
    lab.cli(
        "provider",
        &["service", "set", "epsrv-b", "--endpoint-flow-share", "50"],
    )
    .unwrap();
    let before = lab.stats().unwrap();
    let p = flood(&lab, 50 * FLOOD_FLOWS, web(&lab), &web_url);
    let after = lab.stats().unwrap();
    let held = flood_flows(&lab);
    eprintln!(
        "share 50 %: flood {:.1?}: {held} flows held, budget {}, {} refused, {} found no \
         SNAT tuple; ep-web {} of {} ok",
        p.flood_took,
        budget_of(&lab, "ep-a"),
        delta(&before, &after, "drop_endpoint_flow_limit"),
        delta(&before, &after, "drop_snat_exhausted"),
        p.web_ok,
        p.web_total
    );
    assert_eq!(p.web_ok, p.web_total, "the second consumer saw failures");
    assert!(held as u64 <= POOL / 2 * 11 / 10, "{held} flows held");
}

/// The provider creates an endpoint to its own service in its own VPC (the service's
/// whitelist does not name the provider); a client of the provider's VPC reaches the
/// backends through it (XDP takes the frame in on fp0 and sends it back out of fp0).
#[test]
fn the_provider_reaches_its_own_service_through_its_own_endpoint() {
    let (_one, lab) = lab();
    let svc: serde_json::Value = serde_json::from_str(
        &lab.cli("provider", &["service", "show", "epsrv-b"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(svc["account"], "acct-b");
    assert_eq!(
        svc["whitelist"],
        serde_json::json!(["acct-a"]),
        "the provider is not on its own whitelist"
    );
    let out = lab
        .cli(
            "provider",
            &[
                "endpoint",
                "create",
                "ep-own",
                "--vpc",
                "vpc-b",
                "--service",
                "epsrv-b",
                "--zone",
                "vsw-b0",
                "--name",
                "own",
            ],
        )
        .unwrap();
    let ep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ep["connection"], "pending", "{ep}");
    // The daemon chose the ENI's address in vsw-b0.
    let eni = ep["zones"][0]["eni"].as_str().unwrap().to_string();
    assert!(eni.starts_with("10.10.0."), "{ep}");
    lab.cli("provider", &["connection", "accept", "epsrv-b", "ep-own"])
        .unwrap();
    // A client instance of the provider's VPC (vsw-b0), beside the load balancer.
    lab.provider
        .ip(&["addr", "add", &format!("{OWN_CLIENT}/16"), "dev", "p0"])
        .unwrap();
    let url = format!("http://{eni}/");
    let get = || {
        lab.provider.exec(
            "curl",
            &["-sS", "--fail", "-m", "5", "--interface", OWN_CLIENT, &url],
        )
    };
    privatelink_tests::lab::wait_for(Duration::from_secs(10), "ep-own to serve", || get().is_ok())
        .unwrap_or_else(|e| panic!("{e}; counters {:?}", lab.stats().unwrap()));
    let before = lab.stats().unwrap();
    let mut pages = BTreeMap::new();
    for _ in 0..4 {
        *pages.entry(get().unwrap()).or_insert(0) += 1;
    }
    let after = lab.stats().unwrap();
    eprintln!(
        "own-account endpoint ep-own, ENI {eni} (allocated): 4 requests from {OWN_CLIENT}, \
         pages {pages:?}; forward_new_flow +{}, forward_to_service +{}, \
         forward_to_consumer +{}, drop_not_whitelisted +{}",
        delta(&before, &after, "forward_new_flow"),
        delta(&before, &after, "forward_to_service"),
        delta(&before, &after, "forward_to_consumer"),
        delta(&before, &after, "drop_not_whitelisted"),
    );
    assert_eq!(
        pages.keys().cloned().collect::<Vec<_>>(),
        vec![
            format!("ECS2 backend {}\n", BACKENDS[0]),
            format!("ECS3 backend {}\n", BACKENDS[1])
        ],
        "both backends answer"
    );
    assert_eq!(delta(&before, &after, "forward_new_flow"), 4, "{after:?}");
    assert!(delta(&before, &after, "forward_to_service") >= 4 * 3);
    assert!(delta(&before, &after, "forward_to_consumer") >= 4 * 3);
    assert_eq!(delta(&before, &after, "drop_not_whitelisted"), 0);
    // The flows went in and out of the provider's own interface, NATed to the SNAT pool.
    let flows = lab.flow_lines().unwrap();
    let own: Vec<_> = flows
        .iter()
        .filter(|f| f.contains(&format!("{OWN_CLIENT}:")) && f.contains(&format!("-> {eni}:80")))
        .collect();
    // (The readiness probe's flow, or flows, too.)
    assert!(own.len() > 4, "{flows:?}");
    assert!(
        own.iter()
            .all(|f| f.contains(&format!("-> {LB}:80")) && f.contains("10.10.0.20")),
        "{own:?}"
    );
}
