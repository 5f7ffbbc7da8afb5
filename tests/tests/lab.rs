//! End to end in network namespaces: the seed's cross-account lab with a real haproxy and
//! two nginx backends, only the XDP program forwarding between the two VPCs.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use privatelink_tests::{
    lab::{
        BIG_FILE_LEN, CLIENT_B, CLIENT_C, CLIENT6, CLIENT6_B, CUSTOM_DOMAIN, ENI, ENI6, ENI6_B,
        EP_A_NAME, GATEWAY_SNAT6, LAB_STATE, LBS6, Lab, LabOptions, OBJECT_STORAGE6, SNAT6,
        ZONE_HEADER, wait_for, zone_name,
    },
    netns::{self, unique_name},
};

fn lab() -> Lab {
    let prefix = unique_name("ple");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    Lab::up(&LabOptions::new(&prefix, pin)).expect("lab up")
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// The counters that moved between two readings, and by how much.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .keys()
        .map(|k| (k.clone(), delta(before, after, k)))
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// One bounded request (`Lab::reachable`, 2 s) to `url`: whether it succeeded, and the
/// counters that moved meanwhile.
fn attempt(lab: &Lab, url: &str) -> (bool, BTreeMap<String, u64>) {
    let before = lab.stats().unwrap();
    let ok = lab.reachable(url);
    (ok, moved(&before, &lab.stats().unwrap()))
}

/// Why a request failed, from the counters that moved during it: it reached the forwarder
/// and was dropped there as `reason`, and nothing crossed towards the provider.
fn assert_dropped_as(moved: &BTreeMap<String, u64>, reason: &str, what: &str) {
    assert!(
        moved.get(reason).copied().unwrap_or(0) > 0,
        "{what}: the failed request was not counted as {reason}; counters that moved: {moved:?}"
    );
    for k in ["forward_new_flow", "forward_to_service"] {
        assert!(
            !moved.contains_key(k),
            "{what}: {k} moved during the failed request: {moved:?}"
        );
    }
}

/// Waits (10 s at most) until a request to `url` fails; the failing one was dropped by the
/// data path as `reason` (`assert_dropped_as`).
fn wait_cut_off(lab: &Lab, url: &str, reason: &str, what: &str) {
    let mut last = BTreeMap::new();
    wait_for(Duration::from_secs(10), what, || {
        let (ok, m) = attempt(lab, url);
        last = m;
        !ok
    })
    .unwrap();
    assert_dropped_as(&last, reason, what);
}

/// A request to `url` fails at once, dropped by the data path as `reason`.
fn assert_cut_off(lab: &Lab, url: &str, reason: &str, what: &str) {
    let (ok, m) = attempt(lab, url);
    assert!(!ok, "{what}: the request succeeded");
    assert_dropped_as(&m, reason, what);
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
    // (Not counted: `drop_host_isolated`, the namespaces' own IPv6 neighbour discovery
    // and multicast reaching the forwarder's interfaces, which the host never sees.)
    let drops: u64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("drop_") && *k != "drop_host_isolated")
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
    let cut = |lab: &Lab, reason: &str, what: &str| wait_cut_off(lab, &url, reason, what);
    let back = |lab: &Lab, what: &str| {
        wait_for(Duration::from_secs(10), what, || lab.reachable(&url)).unwrap();
    };
    assert!(lab.reachable(&url));

    lab.cli("provider", &["connection", "disable", "epsrv-b", "ep-a"])
        .unwrap();
    cut(
        &lab,
        "drop_not_connected",
        "disable to cut the consumer off",
    );
    lab.cli("provider", &["connection", "enable", "epsrv-b", "ep-a"])
        .unwrap();
    back(&lab, "enable to restore it");

    lab.cli("provider", &["connection", "reject", "epsrv-b", "ep-a"])
        .unwrap();
    cut(&lab, "drop_not_connected", "reject");
    lab.cli("provider", &["connection", "accept", "epsrv-b", "ep-a"])
        .unwrap();
    back(&lab, "accept");
    assert!(lab.stats().unwrap()["drop_not_connected"] > 0);

    lab.cli(
        "provider",
        &["service", "whitelist", "remove", "epsrv-b", "acct-a"],
    )
    .unwrap();
    cut(&lab, "drop_not_whitelisted", "whitelist removal");
    assert!(lab.stats().unwrap()["drop_not_whitelisted"] > 0);
    // An acknowledged change survives kill -9 of the daemon.
    lab.restart_daemon(libc::SIGKILL).unwrap();
    assert_cut_off(
        &lab,
        &url,
        "drop_not_whitelisted",
        "still cut off after the restart",
    );
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
    assert_cut_off(
        &lab,
        url2,
        "drop_not_connected",
        "a pending endpoint forwards nothing",
    );
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
    // Its address is nobody's now: the forwarder's own isolation drops what is sent to it.
    wait_cut_off(&lab, url2, "drop_host_isolated", "ep-2 deleted");
    assert!(lab.reachable(&url), "the other endpoint was not touched");
}

/// One keep-alive HTTP exchange on `s`: the body, or why none came.
fn get(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: endpoint\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().map_err(std::io::Error::other)?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A TCP connection from the consumer's client to the endpoint's port 80, made from a
/// thread inside the consumer's namespace (the socket stays there); reads on it time out
/// after 2 s.
fn connect(lab: &Lab) -> std::io::Result<TcpStream> {
    let ns = lab.consumer.name.clone();
    thread::spawn(move || {
        privatelink_tests::netns::enter_thread(&ns).map_err(std::io::Error::other)?;
        let to = format!("{ENI}:80").parse().unwrap();
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(s)
    })
    .join()
    .unwrap()
}

/// An open connection is cut off by the change itself, not only new ones: a keep-alive
/// connection that has just been answered gets no answer to its next request once its
/// endpoint's connection is disabled or rejected or its account leaves the whitelist (the
/// request is dropped at the forwarder, counted, and never reaches the provider); once
/// the change is undone a new connection works again.
#[test]
fn an_open_connection_stops_when_its_endpoint_is_cut_off() {
    let lab = lab();
    let cases: [(&[&str], &[&str], &str); 3] = [
        (
            &["connection", "disable", "epsrv-b", "ep-a"],
            &["connection", "enable", "epsrv-b", "ep-a"],
            "drop_not_connected",
        ),
        (
            &["connection", "reject", "epsrv-b", "ep-a"],
            &["connection", "accept", "epsrv-b", "ep-a"],
            "drop_not_connected",
        ),
        (
            &["service", "whitelist", "remove", "epsrv-b", "acct-a"],
            &["service", "whitelist", "add", "epsrv-b", "acct-a"],
            "drop_not_whitelisted",
        ),
    ];
    for (cut, restore, reason) in cases {
        let what = cut.join(" ");
        let mut s = connect(&lab).unwrap();
        for _ in 0..2 {
            let page = get(&mut s).unwrap_or_else(|e| panic!("before `{what}`: {e}"));
            assert!(page.contains("backend"), "{page}");
        }
        // The change is in the maps when the API answers: from here on nothing of the
        // connection may cross (counted from here, after the client's last ACK).
        lab.cli("provider", cut).unwrap();
        let before = lab.stats().unwrap();
        match get(&mut s) {
            Ok(page) => panic!("after `{what}` the open connection was answered: {page}"),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "after `{what}`: expected no answer within 2 s, got {e}"
            ),
        }
        let m = moved(&before, &lab.stats().unwrap());
        // The request and at least one of its retransmissions.
        assert!(
            m.get(reason).copied().unwrap_or(0) >= 2,
            "after `{what}` the open connection's request was not counted as {reason}: {m:?}"
        );
        for k in [
            "forward_new_flow",
            "forward_to_service",
            "forward_to_consumer",
        ] {
            assert!(
                !m.contains_key(k),
                "after `{what}`: {k} moved, something of the connection crossed: {m:?}"
            );
        }
        drop(s);
        lab.cli("provider", restore).unwrap();
        let mut answer = String::new();
        wait_for(
            Duration::from_secs(10),
            "a new connection after the change is undone",
            || match connect(&lab).and_then(|mut s| get(&mut s)) {
                Ok(page) => {
                    answer = page;
                    true
                }
                Err(_) => false,
            },
        )
        .unwrap();
        assert!(answer.contains("backend"), "{answer}");
    }
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
    wait_cut_off(&lab, &url, "drop_not_whitelisted", "whitelist removal");
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
    wait_cut_off(
        &lab,
        &url,
        "drop_security_group",
        "an equal-priority drop to win",
    );
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
    wait_cut_off(&lab, &url, "drop_acl", "the ACL to drop");
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
    assert_cut_off(
        &lab,
        "http://100.64.10.6/",
        "drop_security_group",
        "outside the endpoint policy",
    );
    let flows = lab.flow_lines().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f.contains("-> 100.64.10.5:80") && f.contains("10.10.0.202")),
        "{flows:?}"
    );
    // Over IPv6 (the endpoint dual stack): the IPv6 prefix, routed to the IPv6 route
    // target, NATed from the service's IPv6 SNAT address with its destination kept.
    let [allowed6, denied6] = OBJECT_STORAGE6;
    let url6 = format!("http://[{allowed6}]/");
    let body = lab.curl6(&url6, &[]).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("object storage {allowed6}\n")
    );
    assert_cut_off(
        &lab,
        &format!("http://[{denied6}]/"),
        "drop_security_group",
        "outside the endpoint policy, over IPv6",
    );
    let flows = lab.flow_lines().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f.contains(&format!("-> [{allowed6}]:80"))
                && f.contains(&format!("[{GATEWAY_SNAT6}]:"))),
        "{flows:?}"
    );
    // The provider disables the connection: the routes stop working.
    lab.cli(
        "provider",
        &["connection", "disable", "epsrv-oss", "ep-oss"],
    )
    .unwrap();
    wait_cut_off(&lab, "http://100.64.10.5/", "drop_not_connected", "disable");
    assert_cut_off(&lab, &url6, "drop_not_connected", "disable, over IPv6");
}

/// The service publishes haproxy's tcp/80 and nothing else: other ports and UDP to the
/// ENI are dropped and counted, never reach the load balancer's host; a listener added
/// through the CLI opens its port (the load balancer's host then answers, with a reset:
/// nothing listens there), and removing it closes it again.
#[test]
fn only_the_published_listeners_reach_the_load_balancer() {
    let lab = lab();
    let svc: serde_json::Value = serde_json::from_str(
        &lab.cli("provider", &["service", "show", "epsrv-b"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        svc["listeners"],
        serde_json::json!([{"protocol": "tcp", "port": 80}])
    );
    assert!(lab.reachable(&format!("http://{ENI}/")));
    // What curl says about a port: "refused" (the load balancer's host answered with a
    // reset) or "timeout" (nothing came back).
    let attempt = |port: u16| -> String {
        let out = lab
            .consumer
            .command("curl")
            .args(["-sS", "-o", "/dev/null", "--connect-timeout", "2"])
            .arg(format!("http://{ENI}:{port}/"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if out.status.success() {
            "ok".into()
        } else if err.contains("refused") || err.contains("couldn't connect") {
            "refused".into()
        } else if err.contains("timed out") || err.contains("timeout") {
            "timeout".into()
        } else {
            err
        }
    };
    let before = lab.stats().unwrap();
    for port in [81, 443, 22, 8080] {
        assert_eq!(attempt(port), "timeout", "port {port}");
    }
    // UDP to the TCP-only service, from bash's /dev/udp.
    lab.consumer
        .exec(
            "bash",
            &[
                "-c",
                &format!("for i in 1 2 3; do echo x > /dev/udp/{ENI}/80; done"),
            ],
        )
        .unwrap();
    let after = lab.stats().unwrap();
    // Every SYN (first and retransmitted) and datagram counted; no flow made.
    assert!(
        delta(&before, &after, "drop_no_listener") >= 4 + 3,
        "{after:?}"
    );
    assert_eq!(delta(&before, &after, "forward_new_flow"), 0, "{after:?}");
    assert!(
        lab.flow_lines()
            .unwrap()
            .iter()
            .all(|l| !l.contains(":8080")),
        "no flow entry for an unpublished port"
    );

    // Published: the SYN crosses and the load balancer's host resets it.
    lab.cli(
        "provider",
        &["service", "listener", "add", "epsrv-b", "tcp:8080"],
    )
    .unwrap();
    assert_eq!(attempt(8080), "refused");
    assert_eq!(attempt(80), "ok");
    // Removed again: dropped at once.
    lab.cli(
        "provider",
        &["service", "listener", "remove", "epsrv-b", "tcp:8080"],
    )
    .unwrap();
    assert_eq!(attempt(8080), "timeout");
    assert_eq!(attempt(80), "ok");
    // The CLI's table shows the listeners as PROTO:PORT.
    let table = netns_cli_table(&lab);
    assert!(table.contains("tcp:80"), "{table}");
}

/// `privatelink service show` as a table (the lab's CLI helper asks for JSON).
fn netns_cli_table(lab: &Lab) -> String {
    let out = std::process::Command::new(privatelink_tests::lab::privatelink_bin().unwrap())
        .args([
            "--api",
            lab.api.as_deref().unwrap(),
            "--token",
            lab.token("provider"),
            "service",
            "show",
            "epsrv-b",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The forwarder host is nobody's neighbour: forged frames from every VPC at every
/// address the host holds (on ports 1-1024 and the ports the lab uses; TCP SYN, TCP ACK,
/// UDP, ICMP echo, ARP, IPv6 echo), with the VPC's own and another VPC's source addresses,
/// produce nothing in any namespace: the forwarder's interfaces emit no IPv4 frame but the
/// health probes and the VPC resolver's DNS answers (from its port 53), its kernel sends no
/// ICMP and counts no UDP datagram, and every frame is counted as dropped but those DNS
/// queries and the ARP requests for host addresses of the frame's own VPC.
#[test]
fn the_forwarder_host_answers_no_tenant() {
    use privatelink_tests::{
        lab::{APPLIANCE_HEALTH_PORT, GWLB_ADDR, LB_HEALTH_PORT, RESOLVER},
        throughput::mac_of,
    };
    let lab = lab();
    let g = lab
        .gwlb
        .as_ref()
        .expect("the API lab has the GWLB scenario");
    let v: serde_json::Value =
        serde_json::from_str(&lab.fwd.ip(&["-4", "-j", "addr", "show"]).unwrap()).unwrap();
    let host_addrs: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect();
    assert!(
        host_addrs.contains(&GWLB_ADDR.to_string()) && host_addrs.contains(&"127.0.0.1".into()),
        "{host_addrs:?}"
    );
    let api_port = lab
        .api
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let extra = format!("2049,6081,7070,8080,8081,{api_port},33434,65535");
    // (namespace, its interface, the forwarder's peer interface, its own address, a
    // forged one from another VPC)
    let tenants = [
        (&lab.consumer, "c0", "fc0", "10.10.2.1", "10.40.1.10"),
        (&lab.provider, "p0", "fp0", "10.10.0.10", "10.30.1.10"),
        (&g.web, "w0", "fw0", "10.30.1.10", "10.10.2.1"),
        (&g.appl, "a0", "fa0", "10.40.1.10", "10.10.0.10"),
    ];
    let captures: Vec<_> = tenants
        .iter()
        .map(|(ns, dev, fwd_dev, _, _)| {
            let mac = mac_of(&lab.fwd, fwd_dev).unwrap();
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            // Anything the forwarder sends into this VPC but ARP, its health probes
            // (appliance VPC: to tcp/8080 from an ephemeral port; provider VPC: to the
            // load balancers' monitor port; an answer to a frame forged from port 8080
            // would come from ports 1-1024), GENEVE and the VPC resolver's answers (from
            // its port 53: the forged SYNs to it are answered); or an IPv6 echo reply.
            let filter = format!(
                "ether src {mac} and ((ip and not (tcp dst port 8080 and tcp src portrange 32768-60999) and not (tcp dst port {LB_HEALTH_PORT} and tcp src portrange 32768-60999) and not (udp port 6081) and not (src host {RESOLVER} and tcp src port 53)) or (icmp6 and ip6[40] == 129))"
            );
            let file = lab.dir.join(format!("isolation-{dev}.pcap"));
            let child = ns
                .command("tcpdump")
                .args(["-i", dev, "-U", "-n", "-w"])
                .arg(&file)
                .arg(&filter)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (child, file)
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    let snmp = |what: &str| -> BTreeMap<String, u64> {
        let text = lab.fwd.exec("cat", &["/proc/net/snmp"]).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(what)).collect();
        let names = lines[0].split_whitespace().skip(1);
        let values = lines[1].split_whitespace().skip(1);
        names
            .zip(values)
            .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
            .collect()
    };
    let (icmp_before, udp_before) = (snmp("Icmp:"), snmp("Udp:"));
    let before = lab.stats().unwrap();
    let mut sent = 0u64;
    for (ns, dev, fwd_dev, own, forged) in &tenants {
        let mac = mac_of(ns, dev)
            .unwrap()
            .map(|b| format!("{b:02x}"))
            .join(":");
        let fwd_mac = mac_of(&lab.fwd, fwd_dev).unwrap();
        let fwd_mac = fwd_mac.map(|b| format!("{b:02x}")).join(":");
        let out = ns
            .exec(
                "/usr/bin/python3",
                &[
                    "-c",
                    include_str!("../scripts/forge.py"),
                    dev,
                    &mac,
                    &fwd_mac,
                    &format!("{own},{forged}"),
                    &host_addrs.join(","),
                    &extra,
                    // SYNs from the appliances' health port: the one source port the
                    // host's stack hears answers from.
                    &APPLIANCE_HEALTH_PORT.to_string(),
                ],
            )
            .unwrap();
        sent += out.trim().parse::<u64>().unwrap();
    }
    thread::sleep(Duration::from_millis(1000));
    let after = lab.stats().unwrap();
    let (icmp_after, udp_after) = (snmp("Icmp:"), snmp("Udp:"));
    for (mut child, file) in captures {
        let _ = nix_interrupt(&mut child);
        let dump = std::process::Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&file)
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&dump.stdout).into_owned();
        assert!(
            lines.trim().is_empty(),
            "the forwarder answered into {}: {lines}",
            file.display()
        );
    }
    // No ICMP message but the host-unreachable errors the kernel reports to itself when
    // the resolver's answers to forged sources nobody holds find no neighbour (none
    // reached a VPC: the captures are empty).
    let other_icmp = |m: &BTreeMap<String, u64>| m["OutMsgs"] - m["OutDestUnreachs"];
    assert_eq!(
        other_icmp(&icmp_after),
        other_icmp(&icmp_before),
        "no ICMP sent: {icmp_after:?}"
    );
    assert_eq!(udp_after["InDatagrams"], udp_before["InDatagrams"]);
    assert_eq!(udp_after["NoPorts"], udp_before["NoPorts"]);
    // Every forged frame dropped and counted but the ARP requests for the host's own
    // addresses from inside their own VPC (two sources each: the GWLB address in the
    // appliance VPC, the probe address in vpc-b, the resolver in vpc-a and vpc-web), which
    // the host answers there, and the queries to the resolver (TCP SYNs to its port 53,
    // from two source ports and two source addresses, in each of the two VPCs, to each
    // time the resolver is listed among the host's addresses: once per VPC), passed to
    // the DNS server with the resets the VPC's own address sends back for the answers:
    // nothing else.
    let dropped = delta(&before, &after, "drop_host_isolated");
    let dns = delta(&before, &after, "pass_dns");
    let listed = host_addrs.iter().filter(|a| *a == RESOLVER).count() as u64;
    let syns = 2 * listed * 2 * 2;
    assert!(
        dns <= syns + syns / 2,
        "only queries passed ({listed} resolver addresses): {after:?}"
    );
    assert!(
        dropped + 4 * 2 + dns >= sent,
        "{dropped} of {sent} counted: {after:?}"
    );
    assert_eq!(delta(&before, &after, "pass_unrelated"), 0);
    eprintln!(
        "{sent} forged frames from 4 VPCs at {host_addrs:?}: {dropped} dropped and counted, nothing answered"
    );
}

fn nix_interrupt(child: &mut std::process::Child) -> std::io::Result<()> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().map(|_| ())
}

/// Kills a process the test started when the test ends, even when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seeds 001 and 004 as an operator lives them, while a download is in progress through
/// the endpoint: a zone is added to the endpoint (its ENI allocated) and answers from its
/// own zone's load balancer, then removed; the zone's load balancer is replaced by a new
/// one (new connections land on it); then both serve the zone side by side. The download
/// started on the first load balancer completes byte for byte through all of it.
#[test]
fn zones_and_load_balancers_change_under_a_download() {
    let lab = lab();
    // The lab's ep-a has a zone-b ENI (vsw-a4), and the lab checks its load balancers on
    // haproxy's monitor port, which this test's second load balancer lacks: the test
    // starts from ep-a in zone-a only, with the default checks (TCP connects to port 80).
    lab.cli(
        "consumer",
        &["endpoint", "zone", "remove", "ep-a", "vsw-a4"],
    )
    .unwrap();
    lab.cli("provider", &["service", "set", "epsrv-b", "--no-health"])
        .unwrap();
    // A second load balancer in the provider's VPC: a plain HTTP server on 10.10.0.11.
    let lb2_dir = lab.dir.join("lb2");
    std::fs::create_dir_all(&lb2_dir).unwrap();
    std::fs::write(lb2_dir.join("index.html"), "LB2 10.10.0.11\n").unwrap();
    lab.provider
        .ip(&["addr", "add", "10.10.0.11/16", "dev", "p0"])
        .unwrap();
    let _lb2 = KillOnDrop(
        lab.provider
            .command("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "80",
                "--bind",
                "10.10.0.11",
                "--directory",
            ])
            .arg(&lb2_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), "the second load balancer", || {
        lab.provider
            .exec("curl", &["-sf", "-m", "1", "http://10.10.0.11/"])
            .is_ok()
    })
    .unwrap();
    // The provider replaces the service's load balancers (ZONE:ADDRESS,ADDRESS6 each: the
    // service is dual stack; this test's traffic is IPv4).
    let set_backends = |backends: &[&str]| {
        let mut args = vec!["service", "set", "epsrv-b"];
        for b in backends {
            args.extend(["--backend", b]);
        }
        lab.cli("provider", &args).unwrap();
    };
    let page = |url: &str| -> String {
        lab.curl(url)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("failed: {e}"))
    };
    assert!(page(&format!("http://{ENI}/")).contains("backend"));

    // A slow download (1 MiB at 40 kB/s, about 26 s) through the zone-a ENI.
    lab.consumer
        .exec("sysctl", &["-qw", "net.ipv4.tcp_rmem=4096 16384 32768"])
        .unwrap();
    let out = lab.dir.join("during-changes.bin");
    let mut dl = KillOnDrop(
        lab.consumer
            .command("curl")
            .args(["-sS", "--fail", "-m", "90", "--limit-rate", "40K", "-o"])
            .arg(&out)
            .arg(format!("http://{ENI}/big.bin"))
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_millis(500));
    let before = lab.stats().unwrap();

    // The provider serves zone-b too; the consumer adds a zone-b ENI (allocated).
    set_backends(&[
        "zone-a:10.10.0.10,fd00:b::10",
        "zone-b:10.10.0.11,fd00:b::11",
    ]);
    let ep: serde_json::Value = serde_json::from_str(
        &lab.cli(
            "consumer",
            &["endpoint", "zone", "add", "ep-a", "--zone", "vsw-a4"],
        )
        .unwrap(),
    )
    .unwrap();
    let zone_b_eni = ep["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["vswitch"] == "vsw-a4")
        .unwrap()["eni"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(zone_b_eni, "10.10.4.1", "the lowest free address");
    // Zone affinity: the zone-b ENI reaches the zone-b load balancer.
    assert_eq!(page(&format!("http://{zone_b_eni}/")), "LB2 10.10.0.11\n");
    assert!(page(&format!("http://{ENI}/")).contains("backend"));
    // Removed again: its address answers no more; zone-a is untouched.
    lab.cli(
        "consumer",
        &["endpoint", "zone", "remove", "ep-a", "vsw-a4"],
    )
    .unwrap();
    // (The download keeps crossing meanwhile: only the new flow is asked not to.)
    let (ok, m) = attempt(&lab, &format!("http://{zone_b_eni}/"));
    assert!(!ok, "the removed zone's ENI answered");
    assert!(
        m.get("drop_host_isolated").copied().unwrap_or(0) > 0
            && !m.contains_key("forward_new_flow"),
        "the request to the removed zone's ENI was not dropped by the forwarder's isolation: {m:?}"
    );
    assert!(page(&format!("http://{ENI}/")).contains("backend"));

    // The zone-a load balancer is replaced: new connections land on the new one.
    set_backends(&["zone-a:10.10.0.11,fd00:b::11"]);
    for _ in 0..3 {
        assert_eq!(page(&format!("http://{ENI}/")), "LB2 10.10.0.11\n");
    }
    // Both in zone-a: new connections are spread over them.
    set_backends(&[
        "zone-a:10.10.0.10,fd00:b::10",
        "zone-a:10.10.0.11,fd00:b::11",
    ]);
    let pages: Vec<String> = (0..16).map(|_| page(&format!("http://{ENI}/"))).collect();
    let on_lb2 = pages.iter().filter(|p| p.starts_with("LB2")).count();
    assert!(
        on_lb2 > 0
            && on_lb2 < 16
            && pages
                .iter()
                .all(|p| p.starts_with("LB2") || p.contains("backend")),
        "{pages:?}"
    );
    // All of that while the download was running on the first load balancer.
    assert!(
        dl.0.try_wait().unwrap().is_none(),
        "the download was still in progress"
    );
    assert!(dl.0.wait().unwrap().success(), "the download completed");
    let want = std::fs::read(lab.dir.join("ecs2/big.bin")).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the download arrived byte for byte"
    );
    let after = lab.stats().unwrap();
    // (Not drop_no_neighbor: a SYN hashed to a load balancer added a moment before its
    // ARP answer came back is dropped and retransmitted.)
    for reason in ["drop_no_flow", "drop_not_connected", "drop_snat_exhausted"] {
        assert_eq!(delta(&before, &after, reason), 0, "{reason}: {after:?}");
    }
}

/// IPv6 (issue 17): ep-a as the API gives it, dual stack, with each zone's ENI's IPv6
/// address.
fn assert_dual_stack_endpoint(lab: &Lab) {
    let ep: serde_json::Value =
        serde_json::from_str(&lab.cli("consumer", &["endpoint", "show", "ep-a"]).unwrap()).unwrap();
    assert_eq!(ep["ip_version"], "dualstack", "{ep}");
    let enis6: BTreeMap<&str, &str> = ep["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            (
                z["vswitch"].as_str().unwrap(),
                z["eni6"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        enis6,
        BTreeMap::from([("vsw-a1", ENI6), ("vsw-a4", ENI6_B)]),
        "{ep}"
    );
}

/// `ping -6 -c <count>` from the consumer to `to`: the sources of the echo replies, one
/// line each (ping's "64 bytes from <addr>: icmp_seq=..." lines), and its summary's
/// received count.
fn ping6(lab: &Lab, to: &str, count: u32) -> (Vec<String>, u32) {
    let out = lab
        .consumer
        .exec(
            "ping",
            &["-6", "-n", "-c", &count.to_string(), "-W", "2", to],
        )
        .unwrap();
    let sources = out
        .lines()
        .filter_map(|l| l.split_once(" bytes from ")?.1.split_once(": icmp_seq="))
        .map(|(from, _)| from.to_string())
        .collect();
    let received = out
        .lines()
        .find_map(|l| {
            l.split_once(" received")?
                .0
                .rsplit(", ")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (sources, received)
}

/// Over IPv6 the consumer reaches both backends through ep-a's zone-a ENI, and zone-b's
/// load balancer through the zone-b ENI; the provider's load balancers see every
/// connection from one of the service's IPv6 SNAT addresses (their own log, written by
/// haproxy), never a consumer address; the forwarder routes no IPv6 itself; `ping -6` to
/// an ENI is answered by it.
#[test]
fn over_ipv6_the_consumer_reaches_both_backends_from_the_snat6_pool() {
    let lab = lab();
    assert_dual_stack_endpoint(&lab);
    let fwd = lab
        .fwd
        .exec("sysctl", &["-n", "net.ipv6.conf.all.forwarding"])
        .unwrap();
    assert_eq!(fwd.trim(), "0");

    // Round robin: both backends within a few requests (each a new connection).
    let before = lab.stats().unwrap();
    let url = format!("http://[{ENI6}]/");
    let mut pages: BTreeMap<String, u32> = BTreeMap::new();
    let mut sent = 0;
    while sent < 10 && pages.len() < 2 {
        let body = String::from_utf8(lab.curl6(&url, &[]).unwrap()).unwrap();
        *pages.entry(body).or_default() += 1;
        sent += 1;
    }
    assert!(
        pages.keys().any(|p| p.starts_with("ECS2 backend"))
            && pages.keys().any(|p| p.starts_with("ECS3 backend")),
        "both backends answer over IPv6 within 10 requests: {pages:?}"
    );

    let after = lab.stats().unwrap();
    assert_eq!(
        delta(&before, &after, "forward6_new_flow"),
        sent as u64,
        "{after:?}"
    );
    assert!(delta(&before, &after, "forward6_to_service") >= 3 * sent as u64);
    assert!(delta(&before, &after, "forward6_to_consumer") >= 3 * sent as u64);
    assert_eq!(
        delta(&before, &after, "forward_new_flow"),
        0,
        "no IPv4 flow"
    );

    // Zone-b: its own client and ENI, its own load balancer.
    let out = lab
        .curl6(
            &format!("http://[{ENI6_B}]/"),
            &["-i", "--interface", CLIENT6_B],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.lines().any(|l| l
            .trim_end()
            .eq_ignore_ascii_case(&format!("{ZONE_HEADER}: zone-b"))),
        "{out}"
    );

    // What the provider saw (haproxy logs a connection when it ends).
    let from_consumers = |i: usize| -> Vec<(String, u16, String, String)> {
        lab.lb_connections6(i)
            .into_iter()
            .filter(|(client, ..)| client != LBS6[i].1) // the lab's own readiness check
            .collect()
    };
    wait_for(Duration::from_secs(5), "haproxy's log lines", || {
        from_consumers(0).len() == sent && from_consumers(1).len() == 1
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", from_consumers(0), from_consumers(1)));
    for (i, (_, lb6)) in LBS6.iter().enumerate() {
        for (client, port, at, _) in from_consumers(i) {
            assert!(
                SNAT6.contains(&client.as_str()),
                "{client} is not a SNAT6 address"
            );
            assert_eq!(at, *lb6);
            assert!(port > 0);
        }
    }
    // `privatelink flows` lists them from the IPv6 table: client to ENI, SNAT6 to the LB.
    let flows = lab.flow_lines().unwrap();
    let ipv6_flows: Vec<&String> = flows
        .iter()
        .filter(|l| l.contains(&format!("[{CLIENT6}]:")))
        .collect();
    assert!(!ipv6_flows.is_empty(), "{flows:?}");
    for l in &ipv6_flows {
        assert!(l.starts_with("tcp"), "{l}");
        assert!(l.contains(&format!("-> [{ENI6}]:80")), "{l}");
        assert!(
            SNAT6.iter().any(|a| l.contains(&format!("[{a}]:"))),
            "provider side from a SNAT6 address: {l}"
        );
        assert!(
            l.contains(&format!("-> [{}]:80", LBS6[0].1))
                || l.contains(&format!("-> [{}]:80", LBS6[1].1)),
            "{l}"
        );
    }
    let servers: BTreeMap<String, usize> =
        from_consumers(0)
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (.., server)| {
                *m.entry(server).or_default() += 1;
                m
            });
    assert_eq!(servers.len(), 2, "{servers:?}");

    // Echo to each ENI, answered by the forwarder from the ENI's address.
    let before = lab.stats().unwrap();
    for eni in [ENI6, ENI6_B] {
        let (sources, received) = ping6(&lab, eni, 3);
        assert_eq!(received, 3, "ping -6 {eni}");
        assert_eq!(sources, vec![eni.to_string(); 3]);
    }
    assert_eq!(delta(&before, &lab.stats().unwrap(), "icmp6_echo_reply"), 6);
}

/// The names over IPv6: ep-a's endpoint name answers AAAA by the client's zone as it
/// answers A (zone-a: zone-a's ENI; zone-b: zone-b's; zone-c, without an ENI: both), a
/// zone name its zone's, the custom domain as the endpoint name; `curl -6` by name (the
/// namespace's resolv.conf, the VPC's resolver) lands on zone-a's ENI and load balancer.
#[test]
fn over_ipv6_the_names_answer_aaaa_and_curl_reaches_by_name() {
    use privatelink_tests::dig::parse_dig;
    let lab = lab();
    let aaaa = |args: &[&str]| -> Vec<String> {
        let out = lab
            .consumer
            .exec("dig", &[&["+time=2", "+tries=2", "AAAA"], args].concat())
            .unwrap();
        let d = parse_dig(&out);
        assert_eq!(d.status, "NOERROR", "{}", d.text);
        let mut v: Vec<String> = d
            .answer
            .iter()
            .filter(|r| r.2 == "AAAA")
            .map(|r| r.3.clone())
            .collect();
        v.sort();
        v
    };
    let both = {
        let mut v = vec![ENI6.to_string(), ENI6_B.to_string()];
        v.sort();
        v
    };
    assert_eq!(aaaa(&[EP_A_NAME]), vec![ENI6], "from zone-a");
    assert_eq!(
        aaaa(&["-b", CLIENT_B, EP_A_NAME]),
        vec![ENI6_B],
        "from zone-b"
    );
    assert_eq!(aaaa(&["-b", CLIENT_C, EP_A_NAME]), both, "from zone-c");
    assert_eq!(aaaa(&[&zone_name("zone-b")]), vec![ENI6_B], "zone-b's name");
    assert_eq!(aaaa(&[CUSTOM_DOMAIN]), vec![ENI6], "the custom domain");

    // curl prints the head, the body, then the address it connected to.
    let out = lab
        .curl6(
            &format!("http://{EP_A_NAME}/"),
            &["-i", "-w", "remote_ip %{remote_ip}\n"],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("backend 10.10.3."), "{out}");
    assert!(
        out.lines().any(|l| l
            .trim_end()
            .eq_ignore_ascii_case(&format!("{ZONE_HEADER}: zone-a"))),
        "{out}"
    );
    assert_eq!(
        out.lines().last(),
        Some(format!("remote_ip {ENI6}").as_str()),
        "{out}"
    );
}

/// 1 MiB over IPv6 arrives byte for byte: compared whole, and its SHA-256 (`sha256sum`
/// over what curl wrote inside the consumer's namespace) is the served file's.
#[test]
fn over_ipv6_a_one_megabyte_download_arrives_byte_for_byte() {
    let lab = lab();
    let served = lab.dir.join("ecs2/big.bin");
    let want = std::fs::read(&served).unwrap();
    assert_eq!(want.len(), BIG_FILE_LEN);
    let url = format!("http://[{ENI6}]/big.bin");
    let got = lab.curl6(&url, &[]).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "payload differs");

    let sha = |out: String| {
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let want_sha = sha(netns::run(std::process::Command::new("sha256sum").arg(&served)).unwrap());
    let got_sha = sha(lab
        .consumer
        .exec(
            "sh",
            &["-c", &format!("curl -6 -sS --fail -m 20 {url} | sha256sum")],
        )
        .unwrap());
    assert_eq!(want_sha.len(), 64);
    assert_eq!(got_sha, want_sha);
    // 1 MiB in ≤1500-byte frames is at least 700 packets per download.
    let s = lab.stats().unwrap();
    assert!(s["forward6_to_consumer"] >= 1400, "{s:?}");
}
