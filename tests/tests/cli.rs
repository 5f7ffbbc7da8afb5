//! The `privatelink` binary's handling of bad input: a broken state file is refused with a
//! message naming the field, before anything is loaded or pinned.

use std::process::Command;

use privatelink_tests::lab::{LAB_STATE, privatelink_bin};

/// A state file in a directory of its own, removed with it when dropped (also when the
/// test fails).
struct StateFile(std::path::PathBuf);

impl StateFile {
    fn to_str(&self) -> Option<&str> {
        self.0.to_str()
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_state(name: &str, text: &str) -> StateFile {
    let dir = std::env::temp_dir().join(format!(
        "privatelink-cli-{}-{}",
        std::process::id(),
        name.trim_end_matches(".toml")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    StateFile(p)
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(privatelink_bin().unwrap())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn check_accepts_the_lab_state() {
    let p = write_state("ok.toml", LAB_STATE);
    let (ok, out) = run(&["check", "--state", p.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("1 endpoints"), "{out}");
}

#[test]
fn bad_state_files_name_the_field() {
    let cases = [
        (
            LAB_STATE.replace("eni = \"10.10.1.100\"", "eni = \"10.10.9.100\""),
            "endpoints[0].zones[0].eni",
        ),
        (
            LAB_STATE.replace("service = \"epsrv-b\"", "service = \"epsrv-x\""),
            "endpoints[0].service",
        ),
        (
            LAB_STATE.replace("cidr = \"10.10.1.0/24\"", "cidr = \"10.10.1.0/40\""),
            "cidr",
        ),
        (
            LAB_STATE.replace("interface = \"fp0\"", "interface = \"fc0\""),
            "vpcs[1].interface",
        ),
        (
            LAB_STATE.replace("snat = [", "snat_ports = [9, 1]\nsnat = ["),
            "services[0].snat_ports",
        ),
        (format!("{LAB_STATE}\nbogus = 1\n"), "bogus"),
        // Written for a build that forwarded every port: no rule can say which were meant.
        (
            LAB_STATE.replace(privatelink_tests::lab::LAB_LISTENERS, ""),
            "services[0].listeners: service epsrv-b must publish",
        ),
        (
            LAB_STATE.replace("port = 80 }", "port = 80, to_port = 79 }"),
            "services[0].listeners[0].to_port",
        ),
        (
            LAB_STATE.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
            "unknown variant `sctp`",
        ),
        (
            LAB_STATE.replace(
                "domain = \"epsrv-b.privatelink.example\"",
                "domain = \"Epsrv-B.privatelink.example\"",
            ),
            "services[0].domain: \"Epsrv-B.privatelink.example\" has capitals: write it in lowercase",
        ),
        ("[[endpoints]\n".to_string(), "TOML"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let p = write_state(&format!("bad{i}.toml"), text);
        let (ok, out) = run(&["check", "--state", p.to_str().unwrap()]);
        assert!(!ok, "case {i} accepted");
        assert!(
            out.contains(field) || (*field == "TOML" && out.contains("expected")),
            "case {i}: {out}"
        );
    }
}

#[test]
fn daemon_refuses_a_bad_state_before_touching_the_kernel() {
    let p = write_state(
        "bad-daemon.toml",
        &LAB_STATE.replace("eni = \"10.10.1.100\"", "eni = \"10.10.1.255\""),
    );
    let pin = format!("/sys/fs/bpf/privatelink-test-cli-{}", std::process::id());
    let (ok, out) = run(&["daemon", "--state", p.to_str().unwrap(), "--pin-dir", &pin]);
    assert!(!ok);
    assert!(
        out.contains("endpoints[0].zones[0].eni: 10.10.1.255 is not a usable address"),
        "{out}"
    );
    assert!(!std::path::Path::new(&pin).exists(), "nothing pinned");
}

/// `privatelink ARGS` against the API at `url` with `token`: success, and stdout + stderr.
fn api(url: &str, token: &str, args: &str) -> (bool, String) {
    let out = Command::new(privatelink_bin().unwrap())
        .args(args.split_whitespace())
        .env("PRIVATELINK_API", url)
        .env("PRIVATELINK_TOKEN", token)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn ok(url: &str, token: &str, args: &str) -> String {
    let (ok, out) = api(url, token, args);
    assert!(ok, "{args}: {out}");
    out
}

fn json(url: &str, token: &str, args: &str) -> serde_json::Value {
    let out = ok(url, token, &format!("--json {args}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args}: {e}: {out}"))
}

/// Service discovery and endpoint zones through the CLI, against a daemon in API mode.
#[test]
fn service_available_and_endpoint_zones_through_the_cli() {
    let d = privatelink_tests::apidaemon::ApiDaemon::start("plcli").unwrap();
    let (url, admin) = (d.url.as_str(), d.admin_token.as_str());
    let token = |id: &str| {
        json(url, admin, &format!("account create {id}"))["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b, c) = (token("acct-a"), token("acct-b"), token("acct-c"));
    ok(
        url,
        admin,
        "vpc create vpc-a --account acct-a --cidr 10.10.0.0/16 --interface fc0 \
         --vswitch vsw-a1:zone-a:10.10.1.0/24 --vswitch vsw-a2:zone-b:10.10.2.0/24",
    );
    ok(
        url,
        admin,
        "vpc create vpc-b --account acct-b --cidr 10.10.0.0/16 --interface fp0 \
         --vswitch vsw-b0:zone-a:10.10.0.0/24",
    );
    ok(
        url,
        &b,
        "service create epsrv-b --vpc vpc-b --backend zone-a:10.10.0.10 --backend zone-b:10.10.0.11 \
         --snat 10.10.0.200 --listener tcp:80 --listener udp:53 --domain epsrv-b.privatelink.example --auto-accept",
    );
    ok(url, &b, "service whitelist add epsrv-b acct-a");

    // A finds the service: a table, and the JSON, without the whitelist.
    let table = ok(url, &a, "service available");
    let lines: Vec<&str> = table.lines().map(str::trim).collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("ZONES") && lines[0].contains("DOMAIN"),
        "{table}"
    );
    assert!(lines[1].starts_with("epsrv-b"), "{table}");
    assert!(lines[1].contains("zone-a, zone-b"), "{table}");
    assert!(lines[1].contains("tcp:80, udp:53"), "{table}");
    let one = json(url, &a, "service available epsrv-b");
    assert_eq!(
        one,
        serde_json::json!({"id": "epsrv-b", "type": "interface", "zones": ["zone-a", "zone-b"],
                           "listeners": [{"protocol": "tcp", "port": 80}, {"protocol": "udp", "port": 53}],
                           "domain": "epsrv-b.privatelink.example", "auto_accept": true,
                           "zone_affinity": true,
                           "default_domain": "epsrv-b.region-1.privatelink.internal"})
    );
    // C may not use it: nothing listed, and "not found" for the one.
    assert_eq!(json(url, &c, "service available"), serde_json::json!([]));
    let (fine, out) = api(url, &c, "service available epsrv-b");
    assert!(!fine && out.contains("404"), "{out}");

    // An endpoint with an allocated ENI, a zone added with an allocated ENI, one removed.
    let ep = json(
        url,
        &a,
        "endpoint create ep-a --vpc vpc-a --service epsrv-b --zone vsw-a1",
    );
    assert_eq!(
        ep["zones"],
        serde_json::json!([{"vswitch": "vsw-a1", "eni": "10.10.1.1", "zone": "zone-a",
                            "domain": "zone-a.ep-a.epsrv-b.region-1.privatelink.internal"}])
    );
    let ep = json(url, &a, "endpoint zone add ep-a --zone vsw-a2:10.10.2.7");
    assert_eq!(
        ep["zones"][1],
        serde_json::json!({"vswitch": "vsw-a2", "eni": "10.10.2.7", "zone": "zone-b",
                           "domain": "zone-b.ep-a.epsrv-b.region-1.privatelink.internal"})
    );
    let (fine, out) = api(url, &a, "endpoint zone add ep-a --zone vsw-a2:10.10.2.255");
    assert!(!fine && out.contains("system-reserved"), "{out}");
    let table = ok(url, &a, "endpoint zone remove ep-a vsw-a1");
    assert!(
        table.contains("vsw-a2:10.10.2.7") && !table.contains("vsw-a1"),
        "{table}"
    );
    let (fine, out) = api(url, &a, "endpoint zone remove ep-a vsw-a2");
    assert!(!fine && out.contains("only ENI"), "{out}");
    let ep = json(url, &a, "endpoint show ep-a");
    assert_eq!(
        ep["zones"],
        serde_json::json!([{"vswitch": "vsw-a2", "eni": "10.10.2.7", "zone": "zone-b",
                            "domain": "zone-b.ep-a.epsrv-b.region-1.privatelink.internal"}])
    );
}

/// Names, custom domains, zone affinity and a VPC's resolver and probe addresses through
/// the CLI, against a daemon in API mode: what each command sends, and what `endpoint show`
/// prints.
#[test]
fn names_domains_affinity_and_vpc_addresses_through_the_cli() {
    let d = privatelink_tests::apidaemon::ApiDaemon::start("plcln").unwrap();
    let (url, admin) = (d.url.as_str(), d.admin_token.as_str());
    let token = |id: &str| {
        json(url, admin, &format!("account create {id}"))["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (token("acct-a"), token("acct-b"));
    let vpc = json(
        url,
        admin,
        "vpc create vpc-a --account acct-a --cidr 10.10.0.0/16 --interface fc0 \
         --vswitch vsw-a1:zone-a:10.10.1.0/24 --vswitch vsw-a2:zone-b:10.10.2.0/24 \
         --resolver 10.10.1.53 --probe-address 10.10.1.54",
    );
    assert_eq!(
        (&vpc["resolver"], &vpc["probe_address"]),
        (
            &serde_json::json!("10.10.1.53"),
            &serde_json::json!("10.10.1.54")
        )
    );
    // The operator changes them (the owner may not); --no-* removes one; a bad one is
    // refused naming the field.
    let (fine, out) = api(url, &a, "vpc set vpc-a --resolver 100.100.2.136");
    assert!(!fine && out.contains("only the operator"), "{out}");
    let vpc = json(
        url,
        admin,
        "vpc set vpc-a --resolver 100.100.2.136 --no-probe-address",
    );
    assert_eq!(vpc["resolver"], "100.100.2.136");
    assert!(vpc.get("probe_address").is_none(), "{vpc}");
    let (fine, out) = api(url, admin, "vpc set vpc-a --probe-address 100.100.2.137");
    assert!(
        !fine && out.contains("probe_address") && out.contains("not inside"),
        "{out}"
    );
    let table = ok(url, &a, "vpc show vpc-a");
    assert!(
        table.contains("RESOLVER") && table.contains("100.100.2.136"),
        "{table}"
    );
    ok(
        url,
        admin,
        "vpc create vpc-b --account acct-b --cidr 10.10.0.0/16 --interface fp0 \
         --vswitch vsw-b0:zone-a:10.10.0.0/24 --probe-address 10.10.0.250",
    );

    // An interface service with health checks of its own, and a custom domain.
    let svc = json(
        url,
        &b,
        "service create epsrv-b --vpc vpc-b --backend zone-a:10.10.0.10 --backend zone-b:10.10.0.11 \
         --snat 10.10.0.200 --listener udp:53 --listener tcp:8080 --domain web.provider-b.example \
         --health-path /healthz --health-interval-ms 1000 --auto-accept",
    );
    assert_eq!(
        svc["health"],
        serde_json::json!({"probe": {"kind": "http", "path": "/healthz"}, "port": 8080,
                           "interval_ms": 1000, "timeout_ms": 2000, "healthy_threshold": 3,
                           "unhealthy_threshold": 3}),
        "the first TCP listener's port by default"
    );
    assert_eq!(
        svc["default_domain"],
        "epsrv-b.region-1.privatelink.internal"
    );
    // `set` changes the settings given and keeps the others.
    let svc = json(url, &b, "service set epsrv-b --health-timeout-ms 300");
    assert_eq!(
        (
            &svc["health"]["timeout_ms"],
            &svc["health"]["interval_ms"],
            &svc["health"]["probe"]["path"]
        ),
        (
            &serde_json::json!(300),
            &serde_json::json!(1000),
            &serde_json::json!("/healthz")
        )
    );
    let svc = json(url, &b, "service set epsrv-b --no-health");
    assert!(svc.get("health").is_none(), "{svc}");
    ok(url, &b, "service whitelist add epsrv-b acct-a");

    // The endpoint: zone affinity off, the custom domain refused until the operator
    // verifies it.
    let ep = json(
        url,
        &a,
        "endpoint create ep-a --vpc vpc-a --service epsrv-b --zone vsw-a1:10.10.1.100 \
         --zone vsw-a2:10.10.2.100 --zone-affinity off",
    );
    assert_eq!(ep["zone_affinity"], false);
    let (fine, out) = api(url, &a, "endpoint set ep-a --service-domain on");
    assert!(
        !fine && out.contains("409") && out.contains("not verified"),
        "{out}"
    );
    let (fine, out) = api(url, &b, "service domain-verify epsrv-b");
    assert!(!fine && out.contains("403"), "{out}");
    let svc = json(url, admin, "service domain-verify epsrv-b");
    assert_eq!(svc["domain_verified"], true);
    let ep = json(
        url,
        &a,
        "endpoint set ep-a --service-domain on --zone-affinity on",
    );
    assert_eq!(
        (&ep["service_domain_name"], &ep["zone_affinity"]),
        (
            &serde_json::json!("web.provider-b.example"),
            &serde_json::json!(true)
        )
    );
    let (fine, out) = api(url, &a, "endpoint set ep-a --zone-affinity maybe");
    assert!(!fine && out.contains("expected on or off"), "{out}");

    // `endpoint show`: the endpoint's name, then each zone's.
    let table = ok(url, &a, "endpoint show ep-a");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows[0].contains(&"DOMAIN") && rows[0].contains(&"SERVICE_DOMAIN_NAME"),
        "{table}"
    );
    assert!(
        rows[1].contains(&"ep-a.epsrv-b.region-1.privatelink.internal"),
        "{table}"
    );
    assert!(rows[1].contains(&"web.provider-b.example"), "{table}");
    let zones: Vec<&Vec<&str>> = rows
        .iter()
        .skip_while(|r| r.first() != Some(&"VSWITCH"))
        .collect();
    assert_eq!(
        zones,
        [
            &vec!["VSWITCH", "ZONE", "ENI", "DOMAIN"],
            &vec![
                "vsw-a1",
                "zone-a",
                "10.10.1.100",
                "zone-a.ep-a.epsrv-b.region-1.privatelink.internal"
            ],
            &vec![
                "vsw-a2",
                "zone-b",
                "10.10.2.100",
                "zone-b.ep-a.epsrv-b.region-1.privatelink.internal"
            ],
        ],
        "{table}"
    );

    // The domain changes only once the endpoint turns it off.
    let (fine, out) = api(
        url,
        &b,
        "service set epsrv-b --domain api.provider-b.example",
    );
    assert!(
        !fine && out.contains("409") && out.contains("ep-a"),
        "{out}"
    );
    ok(url, &a, "endpoint set ep-a --service-domain off");
    let svc = json(url, &b, "service set epsrv-b --no-domain");
    assert!(svc["domain"].is_null(), "{svc}");
}

#[test]
fn check_accepts_a_state_from_before_the_zone_rules_and_names_what_it_keeps() {
    let p = write_state(
        "grandfathered.toml",
        &LAB_STATE.replace("eni = \"10.10.1.100\"", "eni = \"10.10.1.254\""),
    );
    let (ok, out) = run(&["check", "--state", p.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("endpoints[0].zones[0].eni: endpoint ep-a's ENI 10.10.1.254 is a system-reserved address of vSwitch vsw-a1"),
        "{out}"
    );
}

/// A dualstack gateway endpoint through the CLI: the service's IPv6 prefix, the endpoint's
/// IPv6 route target allocated (or given with `--gateway6`), an IPv6 policy rule, what
/// `endpoint show` prints, and `--gateway6` on an ipv4 endpoint refused on its field.
#[test]
fn a_dualstack_gateway_endpoint_through_the_cli() {
    let d = privatelink_tests::apidaemon::ApiDaemon::start("plclg").unwrap();
    let (url, admin) = (d.url.as_str(), d.admin_token.as_str());
    let token = |id: &str| {
        json(url, admin, &format!("account create {id}"))["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (token("acct-a"), token("acct-b"));
    ok(
        url,
        admin,
        "vpc create vpc-a --account acct-a --cidr 10.10.0.0/16 --ipv6-cidr fd00:a::/56 \
         --interface fc0 --vswitch vsw-a1:zone-a:10.10.1.0/24,fd00:a:0:1::/64",
    );
    ok(
        url,
        admin,
        "vpc create vpc-b --account acct-b --cidr 10.10.0.0/16 --ipv6-cidr fd00:b::/56 \
         --interface fp0 --vswitch vsw-b0:zone-a:10.10.0.0/24,fd00:b::/64",
    );
    let svc = json(
        url,
        &b,
        "service create epsrv-oss --type gateway --vpc vpc-b --ip-version dualstack \
         --prefix 100.64.10.0/24 --prefix fd00:64:10::/64 --backend zone-a:10.10.0.10,fd00:b::10 \
         --snat 10.10.0.202 --snat6 fd00:b::202 --listener tcp:80 --auto-accept",
    );
    assert_eq!(
        svc["prefixes"],
        serde_json::json!(["100.64.10.0/24", "fd00:64:10::/64"])
    );
    ok(url, &b, "service whitelist add epsrv-oss acct-a");
    let ep = json(
        url,
        &a,
        "endpoint create ep-oss --vpc vpc-a --service epsrv-oss --ip-version dualstack \
         --gateway 10.10.1.1 --policy accept,tcp,fd00:64:10::5/128,80-80",
    );
    assert_eq!(ep["gateway6"], "fd00:a:0:1::1", "{ep}");
    assert_eq!(ep["policy"][0]["cidr"], "fd00:64:10::5/128");
    let table = ok(url, &a, "endpoint show ep-oss");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let targets: Vec<&Vec<&str>> = rows
        .iter()
        .skip_while(|r| r.first() != Some(&"GATEWAY"))
        .collect();
    assert_eq!(
        targets,
        [
            &vec!["GATEWAY", "GATEWAY6"],
            &vec!["10.10.1.1", "fd00:a:0:1::1"]
        ],
        "{table}"
    );
    // Given; and refused on an ipv4 endpoint, naming the field.
    ok(url, &a, "endpoint delete ep-oss");
    let ep = json(
        url,
        &a,
        "endpoint create ep-oss --vpc vpc-a --service epsrv-oss --ip-version dualstack \
         --gateway 10.10.1.1 --gateway6 fd00:a:0:1::abc",
    );
    assert_eq!(ep["gateway6"], "fd00:a:0:1::abc");
    let (fine, out) = api(
        url,
        &a,
        "endpoint create ep-x --vpc vpc-a --service epsrv-oss --gateway 10.10.1.2 \
         --gateway6 fd00:a:0:1::7",
    );
    assert!(
        !fine && out.contains("gateway6") && out.contains("only dualstack gateway endpoints"),
        "{out}"
    );
}
