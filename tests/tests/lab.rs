//! End to end in network namespaces: the seed's cross-account lab with a real haproxy and
//! two nginx backends, only the XDP program forwarding between the two VPCs.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use privatelink_tests::{
    lab::{BIG_FILE_LEN, ENI, LAB_STATE, Lab, LabOptions, wait_for},
    netns::unique_name,
};

fn lab() -> Lab {
    let prefix = unique_name("ple");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    Lab::up(&LabOptions::new(&prefix, pin)).expect("lab up")
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

#[test]
fn consumer_reaches_both_backends_through_the_endpoint() {
    let lab = lab();
    // The forwarder does not route and has no NAT rules: only XDP can carry the traffic.
    let fwd = lab
        .fwd
        .exec("sysctl", &["-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(fwd.trim(), "0");
    let nft = lab.fwd.exec("nft", &["list", "ruleset"]).unwrap();
    assert!(nft.trim().is_empty(), "forwarder has nftables rules: {nft}");

    let before = lab.stats().unwrap();
    let mut pages = BTreeMap::new();
    for _ in 0..6 {
        let body = String::from_utf8(lab.curl(&format!("http://{ENI}/")).unwrap()).unwrap();
        *pages.entry(body).or_insert(0) += 1;
    }
    assert_eq!(pages.len(), 2, "both backends answer: {pages:?}");
    assert!(pages.keys().any(|p| p.contains("ECS2")) && pages.keys().any(|p| p.contains("ECS3")));
    assert_eq!(
        pages.values().copied().collect::<Vec<_>>(),
        vec![3, 3],
        "round robin alternates"
    );

    let after = lab.stats().unwrap();
    assert_eq!(delta(&before, &after, "forward_new_flow"), 6, "{after:?}");
    assert!(delta(&before, &after, "forward_to_service") >= 6 * 3);
    assert!(delta(&before, &after, "forward_to_consumer") >= 6 * 3);

    // ICMP echo to the ENI is answered by the data path.
    lab.consumer
        .exec("ping", &["-c", "2", "-W", "2", ENI])
        .unwrap();
    assert_eq!(delta(&after, &lab.stats().unwrap(), "icmp_echo_reply"), 2);
}

#[test]
fn a_one_megabyte_download_arrives_byte_for_byte() {
    let lab = lab();
    let want = std::fs::read(lab.dir.join("ecs2/big.bin")).unwrap();
    assert_eq!(want.len(), BIG_FILE_LEN);
    for _ in 0..2 {
        let got = lab.curl(&format!("http://{ENI}/big.bin")).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "payload differs");
    }
    let s = lab.stats().unwrap();
    // 1 MiB in ≤1500-byte frames is at least 700 packets per download.
    assert!(s["forward_to_consumer"] >= 1400, "{s:?}");
}

#[test]
fn two_hundred_parallel_short_connections_all_succeed() {
    let lab = lab();
    let before = lab.stats().unwrap();
    let url = format!("http://{ENI}/");
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let mut cmd = lab.consumer.command("curl");
            cmd.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "20",
                &url,
            ]);
            thread::spawn(move || {
                cmd.output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            })
        })
        .collect();
    let codes: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let ok = codes.iter().filter(|c| *c == "200").count();
    assert_eq!(
        ok,
        200,
        "failed: {:?}",
        codes.iter().filter(|c| *c != "200").collect::<Vec<_>>()
    );
    let after = lab.stats().unwrap();
    assert_eq!(delta(&before, &after, "forward_new_flow"), 200);
    let drops: u64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(drops, 0, "{after:?}");
}

/// A reload that removes the consumer from the whitelist cuts it off; putting it back
/// restores it. A broken state file is refused and changes nothing.
#[test]
fn whitelist_and_connection_changes_reach_the_data_path() {
    let mut lab = lab();
    let url = format!("http://{ENI}/");
    lab.curl(&url).unwrap();

    lab.reload_state(&LAB_STATE.replace("whitelist = [\"acct-a\"]", "whitelist = []"))
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "whitelist removal to cut the consumer off",
        || !lab.reachable(&url),
    )
    .unwrap();
    assert!(lab.stats().unwrap()["drop_not_whitelisted"] > 0);

    lab.reload_state(LAB_STATE).unwrap();
    wait_for(
        Duration::from_secs(10),
        "whitelist re-add to restore it",
        || lab.reachable(&url),
    )
    .unwrap();

    for state in ["disconnected", "rejected", "pending"] {
        lab.reload_state(&LAB_STATE.replace(
            "connection = \"connected\"",
            &format!("connection = \"{state}\""),
        ))
        .unwrap();
        wait_for(Duration::from_secs(10), state, || !lab.reachable(&url)).unwrap();
        lab.reload_state(LAB_STATE).unwrap();
        wait_for(Duration::from_secs(10), "connected again", || {
            lab.reachable(&url)
        })
        .unwrap();
    }
    assert!(lab.stats().unwrap()["drop_not_connected"] > 0);

    // Broken file: refused with a message naming the field; traffic keeps flowing.
    lab.reload_state(&LAB_STATE.replace("eni = \"10.10.1.100\"", "eni = \"10.10.9.100\""))
        .unwrap();
    let t = Instant::now();
    wait_for(Duration::from_secs(10), "the refusal in the log", || {
        lab.log("privatelink").contains("endpoints[0].zones[0].eni")
    })
    .unwrap();
    assert!(lab.log("privatelink").contains("reload refused"));
    for _ in 0..5 {
        lab.curl(&url).unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(20));
}
