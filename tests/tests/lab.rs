//! End to end in network namespaces: the seed's cross-account lab with a real haproxy and
//! two nginx backends, only the XDP program forwarding between the two VPCs.

use std::{collections::BTreeMap, thread, time::Duration};

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

/// Every connection transition and whitelist change, made through the CLI, reaches the
/// data path: only `connected` and whitelisted forwards.
#[test]
fn lifecycle_through_the_api_reaches_the_data_path() {
    let mut lab = lab();
    let url = format!("http://{ENI}/");
    let cut = |lab: &Lab, what: &str| {
        wait_for(Duration::from_secs(10), what, || !lab.reachable(&url)).unwrap();
    };
    let back = |lab: &Lab, what: &str| {
        wait_for(Duration::from_secs(10), what, || lab.reachable(&url)).unwrap();
    };
    assert!(lab.reachable(&url));

    lab.cli("provider", &["connection", "disable", "epsrv-b", "ep-a"])
        .unwrap();
    cut(&lab, "disable to cut the consumer off");
    lab.cli("provider", &["connection", "enable", "epsrv-b", "ep-a"])
        .unwrap();
    back(&lab, "enable to restore it");

    lab.cli("provider", &["connection", "reject", "epsrv-b", "ep-a"])
        .unwrap();
    cut(&lab, "reject");
    lab.cli("provider", &["connection", "accept", "epsrv-b", "ep-a"])
        .unwrap();
    back(&lab, "accept");
    assert!(lab.stats().unwrap()["drop_not_connected"] > 0);

    lab.cli(
        "provider",
        &["service", "whitelist", "remove", "epsrv-b", "acct-a"],
    )
    .unwrap();
    cut(&lab, "whitelist removal");
    assert!(lab.stats().unwrap()["drop_not_whitelisted"] > 0);
    // An acknowledged change survives kill -9 of the daemon.
    lab.restart_daemon(libc::SIGKILL).unwrap();
    assert!(!lab.reachable(&url), "still cut off after the restart");
    lab.cli(
        "provider",
        &["service", "whitelist", "add", "epsrv-b", "acct-a"],
    )
    .unwrap();
    back(&lab, "whitelist re-add");

    // A second endpoint starts pending (no auto-accept) and works once accepted.
    let url2 = "http://10.10.1.101/";
    lab.cli(
        "consumer",
        &[
            "endpoint",
            "create",
            "ep-2",
            "--vpc",
            "vpc-a",
            "--service",
            "epsrv-b",
            "--zone",
            "vsw-a1:10.10.1.101",
        ],
    )
    .unwrap();
    assert!(!lab.reachable(url2), "pending endpoint forwards nothing");
    lab.cli("provider", &["connection", "accept", "epsrv-b", "ep-2"])
        .unwrap();
    wait_for(Duration::from_secs(10), "ep-2 accepted", || {
        lab.reachable(url2)
    })
    .unwrap();
    // A service with endpoints cannot be deleted.
    let e = lab
        .cli("provider", &["service", "delete", "epsrv-b"])
        .unwrap_err();
    assert!(format!("{e:#}").contains("still has endpoints"), "{e:#}");
    lab.cli("consumer", &["endpoint", "delete", "ep-2"])
        .unwrap();
    wait_for(Duration::from_secs(10), "ep-2 deleted", || {
        !lab.reachable(url2)
    })
    .unwrap();
    assert!(lab.reachable(&url), "the other endpoint was not touched");
}

/// Declarative mode: SIGHUP re-reads the state file; a whitelist removal there cuts the
/// consumer off, and a broken file is refused while traffic keeps flowing.
#[test]
fn declarative_mode_reloads_and_refuses_a_broken_file() {
    let prefix = unique_name("plf");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    let mut lab = Lab::up(&LabOptions::from_file(&prefix, pin, LAB_STATE)).unwrap();
    let url = format!("http://{ENI}/");
    assert!(lab.reachable(&url));
    lab.reload_state(&LAB_STATE.replace("whitelist = [\"acct-a\"]", "whitelist = []"))
        .unwrap();
    wait_for(Duration::from_secs(10), "whitelist removal", || {
        !lab.reachable(&url)
    })
    .unwrap();
    lab.reload_state(LAB_STATE).unwrap();
    wait_for(Duration::from_secs(10), "restored", || lab.reachable(&url)).unwrap();

    lab.reload_state(&LAB_STATE.replace("eni = \"10.10.1.100\"", "eni = \"10.10.9.100\""))
        .unwrap();
    wait_for(Duration::from_secs(10), "the refusal in the log", || {
        lab.log("privatelink").contains("endpoints[0].zones[0].eni")
    })
    .unwrap();
    assert!(lab.log("privatelink").contains("reload refused"));
    for _ in 0..5 {
        lab.curl(&url).unwrap();
    }
}

/// A security group and an ACL made through the CLI filter the lab's traffic.
#[test]
fn security_groups_and_acls_filter_the_lab() {
    let lab = lab();
    let url = format!("http://{ENI}/");
    lab.cli("consumer", &["sg", "create", "sg-web", "--vpc", "vpc-a"])
        .unwrap();
    lab.cli(
        "consumer",
        &[
            "sg",
            "rule",
            "add",
            "sg-web",
            "--priority",
            "10",
            "--action",
            "accept",
            "--protocol",
            "tcp",
            "--ports",
            "80",
            "--cidr",
            "10.10.2.0/24",
        ],
    )
    .unwrap();
    lab.cli(
        "consumer",
        &["endpoint", "update", "ep-a", "--sg", "sg-web"],
    )
    .unwrap();
    assert!(lab.reachable(&url), "the group accepts the client");
    let out = lab
        .cli(
            "consumer",
            &[
                "sg",
                "rule",
                "add",
                "sg-web",
                "--priority",
                "10",
                "--action",
                "drop",
                "--protocol",
                "all",
                "--cidr",
                "10.10.2.1/32",
            ],
        )
        .unwrap();
    let rule: serde_json::Value = serde_json::from_str(&out).unwrap();
    wait_for(
        Duration::from_secs(10),
        "an equal-priority drop to win",
        || !lab.reachable(&url),
    )
    .unwrap();
    assert!(lab.stats().unwrap()["drop_security_group"] > 0);
    lab.cli(
        "consumer",
        &[
            "sg",
            "rule",
            "remove",
            "sg-web",
            rule["id"].as_str().unwrap(),
        ],
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the drop removed", || {
        lab.reachable(&url)
    })
    .unwrap();

    lab.cli(
        "consumer",
        &[
            "acl",
            "create",
            "acl-a",
            "--vpc",
            "vpc-a",
            "--vswitch",
            "vsw-a1",
            "--ingress",
            "drop tcp 10.10.2.0/24 80-80",
            "--ingress",
            "accept all 0.0.0.0/0",
            "--egress",
            "accept all 0.0.0.0/0",
        ],
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the ACL to drop", || {
        !lab.reachable(&url)
    })
    .unwrap();
    assert!(lab.stats().unwrap()["drop_acl"] > 0);
    lab.cli("consumer", &["acl", "delete", "acl-a"]).unwrap();
    wait_for(Duration::from_secs(10), "the ACL removed", || {
        lab.reachable(&url)
    })
    .unwrap();
}

/// The reverse direction: the provider's VPC reaches the consumer's own service through
/// an endpoint ENI in the provider's VPC (same machinery, roles swapped).
#[test]
fn reverse_endpoint_reaches_the_consumers_service() {
    let lab = lab();
    let out = lab
        .provider
        .exec(
            "curl",
            &[
                "-sS",
                "--fail",
                "-m",
                "5",
                &format!("http://{}/", privatelink_tests::lab::REVERSE_ENI),
            ],
        )
        .unwrap();
    assert_eq!(out, "consumer service 10.10.2.10\n");
    // The forward direction still works beside it.
    assert!(lab.reachable(&format!("http://{ENI}/")));
    let flows = lab.flow_lines().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f.contains("10.10.0.100:80") && f.contains("10.10.2.200")),
        "{flows:?}"
    );
}

/// A gateway endpoint: the consumer's VPC routes the provider's object-storage prefix to
/// it; traffic is forwarded with the destination kept, the source translated, and the
/// endpoint policy applied (only 100.64.10.5:80 is allowed).
#[test]
fn gateway_endpoint_reaches_the_prefix_under_its_policy() {
    let lab = lab();
    let body = lab.curl("http://100.64.10.5/").unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "object storage 100.64.10.5\n"
    );
    let before = lab.stats().unwrap()["drop_security_group"];
    assert!(
        !lab.reachable("http://100.64.10.6/"),
        "outside the endpoint policy"
    );
    assert!(lab.stats().unwrap()["drop_security_group"] > before);
    let flows = lab.flow_lines().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f.contains("-> 100.64.10.5:80") && f.contains("10.10.0.202")),
        "{flows:?}"
    );
    // The provider disables the connection: the route stops working.
    lab.cli(
        "provider",
        &["connection", "disable", "epsrv-oss", "ep-oss"],
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "disable", || {
        !lab.reachable("http://100.64.10.5/")
    })
    .unwrap();
}
