//! GWLB end to end in network namespaces: the client subnet reaches the server subnet of
//! the same VPC only through the GWLB endpoint, every packet making a round trip in
//! GENEVE through one of two appliances (two zones, cross-zone, `rebalance`), over IPv4
//! and IPv6. Real curl and nginx; the appliances are `pl-appliance` processes.

use std::{
    collections::{BTreeMap, BTreeSet},
    thread,
    time::{Duration, Instant},
};

use privatelink_tests::{
    lab::{
        APPLIANCES, BIG_FILE_LEN, GWLB_BLOCKED_PORT, GWLB_CLIENT, GWLB_CLIENT6, GWLB_ENI6,
        GWLB_SERVER, GWLB_SERVER6, Lab, LabOptions, wait_for,
    },
    netns::unique_name,
};
use serde_json::Value;

fn lab() -> Lab {
    let prefix = unique_name("plg");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    Lab::up(&LabOptions::new(&prefix, pin)).expect("lab up")
}

/// Health of the service's appliances as the daemon sees them: address -> healthy.
fn health(lab: &Lab) -> BTreeMap<String, bool> {
    let out = lab
        .cli("provider", &["service", "appliances", "gwlb-svc"])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap().to_string(),
                a["healthy"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn wait_health(lab: &Lab, addr: &str, healthy: bool) {
    wait_for(
        Duration::from_secs(10),
        &format!("{addr} healthy={healthy}"),
        || health(lab).get(addr) == Some(&healthy),
    )
    .unwrap();
}

/// Cookies (flows) each appliance has seen, with the inner directions under each.
fn cookies(lab: &Lab, i: usize) -> BTreeMap<String, BTreeMap<String, u64>> {
    serde_json::from_value(lab.appliance_stats(i)["cookies"].clone()).unwrap_or_default()
}

fn counter(lab: &Lab, i: usize, name: &str) -> u64 {
    lab.appliance_stats(i)[name].as_u64().unwrap_or(0)
}

/// Waits up to 5 s for what the appliances count (they write their counters every 100 ms).
fn counted(what: &str, cond: impl FnMut() -> bool) {
    wait_for(Duration::from_secs(5), what, cond).unwrap();
}

/// Waits up to 5 s for the appliances' counters to show every flow of theirs both ways
/// (`flows`: each flow's packets there and back, as one appliance counted them) and at
/// least `n` flows in all; the caller's assertions then say what is missing, if anything.
/// A file read a moment after a download ended may be the one written while its flow had
/// only its SYN counted (seen: the 8 MiB download's flow at 1 / 0 beside 25 complete ones).
fn counted_both_ways(n: usize, flows: impl Fn() -> Vec<(u64, u64)>) {
    let _ = wait_for(
        Duration::from_secs(5),
        "every flow counted both ways",
        || {
            let f = flows();
            f.len() >= n && f.iter().all(|&(there, back)| there > 0 && back > 0)
        },
    );
}

fn index_url() -> String {
    format!("http://{GWLB_SERVER}/")
}

#[test]
fn traffic_goes_through_both_appliances_symmetrically_and_rules_hold() {
    let lab = lab();
    for (_, a) in APPLIANCES {
        wait_health(&lab, a, true);
    }
    // The first request also teaches the forwarder the server's MAC (its first SYN
    // becomes an ARP request); then a series of separate connections.
    let body = lab.web_curl(&index_url(), &[]).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("web server {GWLB_SERVER}\n")
    );
    for _ in 0..24 {
        lab.web_curl(&index_url(), &[]).unwrap();
    }
    // A bulk transfer: 8 MiB, byte for byte (MTU: the encapsulation adds 68 bytes, the
    // forwarder answers full-size segments with frag-needed and TCP adapts).
    let big = lab
        .web_curl(&format!("http://{GWLB_SERVER}/big.bin"), &[])
        .unwrap();
    assert_eq!(big.len(), 8 * BIG_FILE_LEN);
    let want: Vec<u8> = (0..8 * BIG_FILE_LEN)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    assert!(big == want, "the download differs from the file");
    let stats = lab.stats().unwrap();
    assert!(stats["gwlb_frag_needed"] > 0, "{stats:?}");
    assert!(stats["gwlb_to_appliance"] > 0 && stats["gwlb_from_appliance"] > 0);

    // Both appliances carried flows (cross-zone spreading); every flow's two directions
    // went through the same appliance; no flow was seen by both.
    let there = format!("{GWLB_CLIENT}>{GWLB_SERVER}");
    let back = format!("{GWLB_SERVER}>{GWLB_CLIENT}");
    counted_both_ways(26, || {
        let n = |dirs: &BTreeMap<String, u64>, d: &str| dirs.get(d).copied().unwrap_or(0);
        (0..2)
            .flat_map(|i| cookies(&lab, i).into_values())
            .map(|dirs| (n(&dirs, &there), n(&dirs, &back)))
            .collect()
    });
    let (a, b) = (cookies(&lab, 0), cookies(&lab, 1));
    assert!(!a.is_empty() && !b.is_empty(), "a: {a:?}\nb: {b:?}");
    for (cookie, dirs) in a.iter().chain(b.iter()) {
        assert!(
            dirs.get(&there).is_some_and(|n| *n > 0) && dirs.get(&back).is_some_and(|n| *n > 0),
            "flow {cookie}: both directions on one appliance: {dirs:?}"
        );
    }
    let (ka, kb): (BTreeSet<_>, BTreeSet<_>) = (a.keys().collect(), b.keys().collect());
    assert!(ka.is_disjoint(&kb), "a flow split over two appliances");
    assert!(a.len() + b.len() >= 26, "{} + {} flows", a.len(), b.len());

    // The appliances' rule blocks the other port; the server itself would answer it.
    let blocked = format!("http://{GWLB_SERVER}:{GWLB_BLOCKED_PORT}/");
    let dropped_before = counter(&lab, 0, "dropped_by_rule") + counter(&lab, 1, "dropped_by_rule");
    assert!(lab.web_curl(&blocked, &["-m", "2"]).is_err());
    let g = lab.gwlb.as_ref().unwrap();
    g.server
        .exec("curl", &["-sf", "-m", "2", &blocked])
        .expect("the server answers locally");
    counted("the appliance dropping the SYNs", || {
        counter(&lab, 0, "dropped_by_rule") + counter(&lab, 1, "dropped_by_rule") > dropped_before
    });
    assert!(lab.web_curl(&index_url(), &[]).is_ok());
}

#[test]
fn a_failed_appliance_loses_its_flows_to_the_other_and_gets_them_back() {
    let mut lab = lab();
    for (_, a) in APPLIANCES {
        wait_health(&lab, a, true);
    }
    lab.web_curl(&index_url(), &[]).unwrap(); // resolves the server's MAC

    // A slow download (8 MiB at 2 MB/s, about 4 s) in the background. A small receive
    // buffer keeps the server from pushing the whole file into it at once.
    let g = lab.gwlb.as_ref().unwrap();
    g.web
        .exec("sysctl", &["-qw", "net.ipv4.tcp_rmem=4096 65536 131072"])
        .unwrap();
    let out = lab.dir.join("slow.bin");
    let mut dl = g
        .web
        .command("curl")
        .args(["-sS", "--fail", "-m", "60", "--limit-rate", "2M", "-o"])
        .arg(&out)
        .arg(format!("http://{GWLB_SERVER}/big.bin"))
        .spawn()
        .unwrap();
    // Find the appliance carrying it: the one whose packet count runs.
    thread::sleep(Duration::from_millis(1200));
    let r0 = [counter(&lab, 0, "received"), counter(&lab, 1, "received")];
    thread::sleep(Duration::from_millis(600));
    let r1 = [counter(&lab, 0, "received"), counter(&lab, 1, "received")];
    let busy = if r1[0] - r0[0] > r1[1] - r0[1] { 0 } else { 1 };
    let other = 1 - busy;
    assert!(r1[busy] - r0[busy] > 100, "{r0:?} -> {r1:?}");

    // Kill it: health checks notice (3 x 200 ms), the flow moves (rebalance), the
    // download completes.
    let killed_at = Instant::now();
    lab.kill_appliance(busy).unwrap();
    wait_health(&lab, APPLIANCES[busy].1, false);
    let detected = killed_at.elapsed();
    let status = dl.wait().unwrap();
    assert!(status.success(), "the download survived the appliance");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 8 * BIG_FILE_LEN);
    let want: Vec<u8> = (0..8 * BIG_FILE_LEN)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    assert!(got == want, "the download differs from the file");
    eprintln!("appliance failure detected after {detected:?}");

    // New flows all go to the survivor.
    let before = cookies(&lab, other).len();
    for _ in 0..10 {
        lab.web_curl(&index_url(), &[]).unwrap();
    }
    counted("the survivor counting the 10 new flows", || {
        cookies(&lab, other).len() >= before + 10
    });

    // Bring it back: healthy again after 3 good checks, and new flows reach it again.
    lab.start_appliance(busy).unwrap();
    wait_health(&lab, APPLIANCES[busy].1, true);
    // The data path gets the new target set right after the verdict; new flows spread
    // over both again (new flows keep coming until the restored one has counted some).
    let back_before = cookies(&lab, busy).len();
    counted("the restored appliance counting new flows", || {
        for _ in 0..4 {
            lab.web_curl(&index_url(), &[]).unwrap();
        }
        cookies(&lab, busy).len() > back_before
    });
}

/// The IPv6 packets appliance `i` saw, by flow cookie: (client to server, server to
/// client), the directions named by its own parser of the inner packet.
fn ipv6_flows(lab: &Lab, i: usize) -> BTreeMap<String, (u64, u64)> {
    let there = format!("{GWLB_CLIENT6}>{GWLB_SERVER6}");
    let back = format!("{GWLB_SERVER6}>{GWLB_CLIENT6}");
    cookies(lab, i)
        .into_iter()
        .filter(|(_, dirs)| dirs.contains_key(&there) || dirs.contains_key(&back))
        .map(|(cookie, dirs)| {
            let n = |d: &str| dirs.get(d).copied().unwrap_or(0);
            (cookie, (n(&there), n(&back)))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

#[test]
fn ipv6_goes_through_both_appliances_symmetrically_and_rules_hold() {
    let lab = lab();
    for (_, a) in APPLIANCES {
        wait_health(&lab, a, true);
    }
    let before = lab.stats().unwrap();
    let index6 = format!("http://[{GWLB_SERVER6}]/");
    let curl6 = |url: &str, extra: &[&str]| lab.web_curl(url, &[&["-6"], extra].concat());
    // The client's kernel resolves its next hop, the ENI's IPv6 address, by neighbour
    // discovery (the forwarder answers); the first request also teaches the forwarder the
    // server's MAC (its first SYN back from an appliance becomes a solicitation).
    let body = curl6(&index6, &[]).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("web server {GWLB_SERVER}\n")
    );
    for _ in 0..24 {
        curl6(&index6, &[]).unwrap();
    }
    // 8 MiB byte for byte: full-size segments are answered with Packet Too Big and TCP
    // adapts.
    let big = curl6(&format!("http://[{GWLB_SERVER6}]/big.bin"), &[]).unwrap();
    assert_eq!(big.len(), 8 * BIG_FILE_LEN);
    let want: Vec<u8> = (0..8 * BIG_FILE_LEN)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    assert!(big == want, "the download differs from the file");

    // Both nodes hold the forwarder's MAC for the ENI's IPv6 address: learned from its
    // advertisements, not configured.
    let g = lab.gwlb.as_ref().unwrap();
    let link: Value =
        serde_json::from_str(&lab.fwd.ip(&["-j", "link", "show", "fw0"]).unwrap()).unwrap();
    let fw0 = link[0]["address"].as_str().unwrap().to_string();
    for (ns, dev) in [(&g.web, "br0"), (&g.server, "ws1")] {
        let neigh = ns
            .ip(&["-6", "neigh", "show", GWLB_ENI6, "dev", dev])
            .unwrap();
        assert!(
            neigh.contains(&format!("lladdr {fw0}")) && !neigh.contains("PERMANENT"),
            "{}: {neigh:?}",
            ns.name
        );
    }

    // 26 flows, spread over both appliances, each flow's two directions through one, and
    // no flow seen by both.
    counted_both_ways(26, || {
        (0..2)
            .flat_map(|i| ipv6_flows(&lab, i).into_values())
            .collect()
    });
    let (a, b) = (ipv6_flows(&lab, 0), ipv6_flows(&lab, 1));
    assert!(!a.is_empty() && !b.is_empty(), "a: {a:?}\nb: {b:?}");
    for (cookie, (there, back)) in a.iter().chain(b.iter()) {
        assert!(
            *there > 0 && *back > 0,
            "flow {cookie}: both directions on one appliance: {there} / {back}"
        );
    }
    let (ka, kb): (BTreeSet<_>, BTreeSet<_>) = (a.keys().collect(), b.keys().collect());
    assert!(ka.is_disjoint(&kb), "a flow split over two appliances");
    assert_eq!(a.len() + b.len(), 26, "{} + {} flows", a.len(), b.len());
    // What the data path counted covers what the appliances saw: every packet an
    // appliance got went out as gwlb6_to_appliance; every one it sent back (none dropped
    // by its rule yet) came back as gwlb6_from_appliance, or as the solicitation for the
    // server's MAC that stood in for the first.
    let seen: u64 = a.values().chain(b.values()).map(|(t, b)| t + b).sum();
    let after = lab.stats().unwrap();
    let (to, from) = (
        delta(&before, &after, "gwlb6_to_appliance"),
        delta(&before, &after, "gwlb6_from_appliance"),
    );
    let probes = delta(&before, &after, "gwlb_ns_probe");
    assert!(to >= seen, "{to} sent to appliances, {seen} seen there");
    assert!(
        from + probes >= seen,
        "{from} back from appliances (+{probes} probes), {seen} seen there"
    );
    assert!(probes >= 1, "the server's MAC was solicited: {after:?}");
    eprintln!(
        "IPv6: {} + {} flows, {seen} packets at the appliances; the data path sent {to}, got {from} back",
        a.len(),
        b.len()
    );
    assert!(delta(&before, &after, "nd_advert") >= 2, "{after:?}");
    assert!(
        delta(&before, &after, "gwlb_packet_too_big") > 0,
        "{after:?}"
    );
    assert_eq!(
        delta(&before, &after, "gwlb_to_appliance"),
        0,
        "no IPv4 here"
    );

    // The appliances' rule blocks the other port over IPv6 too; the server itself would
    // answer it.
    let blocked = format!("http://[{GWLB_SERVER6}]:{GWLB_BLOCKED_PORT}/");
    let dropped_before = counter(&lab, 0, "dropped_by_rule") + counter(&lab, 1, "dropped_by_rule");
    assert!(curl6(&blocked, &["-m", "2"]).is_err());
    g.server
        .exec("curl", &["-sf", "-6", "-m", "2", &blocked])
        .expect("the server answers locally");
    counted("the appliance dropping the IPv6 SYNs", || {
        counter(&lab, 0, "dropped_by_rule") + counter(&lab, 1, "dropped_by_rule") > dropped_before
    });
    assert!(curl6(&index6, &[]).is_ok());
}
