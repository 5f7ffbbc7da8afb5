//! The daemon's Prometheus metrics through the lab: `/metrics` as Prometheus's own tools
//! read it (`promtool check metrics`, and a real Prometheus server scraping it every
//! second), and its counters following what the lab does: requests through an endpoint
//! ENI (counted independently by nftables in the consumer's namespace), API calls, health
//! verdicts, conntrack. One test: the lab takes tens of seconds to build.

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use privatelink_tests::{
    lab::{ENI, ENI6, Lab, LabOptions, wait_for},
    netns::{self, unique_name},
};
use serde_json::Value;

fn lab() -> Lab {
    let prefix = unique_name("plm");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    let opts = LabOptions {
        prometheus: true,
        ..LabOptions::new(&prefix, pin)
    };
    Lab::up(&opts).expect("lab up")
}

/// `GET url` with extra curl arguments, from the host: (content type, body).
fn get(url: &str, extra: &[&str]) -> (String, String) {
    let out = netns::run(
        Command::new("curl")
            .args(["-sS", "--fail", "-m", "5", "-w", "\n%{content_type}"])
            .args(extra)
            .arg(url),
    )
    .unwrap();
    let (body, content_type) = out.rsplit_once('\n').unwrap();
    (content_type.to_string(), body.to_string())
}

/// `promtool check metrics` (Prometheus's parser and linter) on `text`: its complaints.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// One series of a Prometheus instant query: its labels and value.
#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn query(lab: &Lab, q: &str) -> Vec<Series> {
    lab.prometheus_query(q)
        .unwrap()
        .into_iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            Series {
                labels,
                value: r["value"][1].as_str().unwrap().parse().unwrap(),
            }
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits (15 s at most) until Prometheus has scraped the daemon successfully after
/// `after` (unix seconds): from then on its latest samples show the daemon as it was
/// after `after`.
fn scrape_after(lab: &Lab, after: f64) {
    // `timestamp` of a plain selector is the sample's time (of anything else, the query's).
    wait_for(Duration::from_secs(15), "a scrape", || {
        let last = query(lab, r#"timestamp(up{job="privatelink"})"#);
        last.first().is_some_and(|s| s.value > after)
    })
    .unwrap();
    let up = query(lab, r#"up{job="privatelink"}"#);
    assert_eq!(up[0].value, 1.0, "the scrape failed: {up:?}");
}

/// The series of `q` in Prometheus's latest samples (at least one).
fn latest(lab: &Lab, q: &str) -> Vec<Series> {
    let series = query(lab, q);
    assert!(!series.is_empty(), "no series {q}");
    series
}

/// The one series of `q` whose labels include `want`; its value.
fn value_of(series: &[Series], want: &[(&str, &str)]) -> f64 {
    let found: Vec<&Series> = series
        .iter()
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{want:?} in {series:?}");
    found[0].value
}

/// The per-ENI packet and byte counters, keyed by endpoint, zone and direction.
fn eni_counters(series: &[Series]) -> BTreeMap<(String, String, String), f64> {
    series
        .iter()
        .map(|s| {
            let l = |k: &str| s.labels[k].clone();
            ((l("endpoint"), l("zone"), l("direction")), s.value)
        })
        .collect()
}

/// An nftables counter in the consumer's namespace of what it sends to `ENI`: (packets,
/// bytes), read independently of the data path.
struct SentCounter<'a> {
    lab: &'a Lab,
}

impl<'a> SentCounter<'a> {
    fn start(lab: &'a Lab) -> Self {
        lab.consumer
            .exec(
                "nft",
                &["add table inet plm; \
                     add chain inet plm out { type filter hook output priority 0; }; "],
            )
            .unwrap();
        lab.consumer
            .exec(
                "nft",
                &[
                    "add", "rule", "inet", "plm", "out", "ip", "daddr", ENI, "counter",
                ],
            )
            .unwrap();
        Self { lab }
    }

    fn read(&self) -> (f64, f64) {
        let out = self
            .lab
            .consumer
            .exec("nft", &["-j", "list", "table", "inet", "plm"])
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let counter = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| {
                o["rule"]["expr"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e.get("counter").cloned())
            })
            .unwrap();
        (
            counter["packets"].as_f64().unwrap(),
            counter["bytes"].as_f64().unwrap(),
        )
    }
}

impl Drop for SentCounter<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .consumer
            .exec("nft", &["delete", "table", "inet", "plm"]);
    }
}

#[test]
fn prometheus_scrapes_the_daemon_and_sees_an_endpoints_traffic_and_the_apis_calls() {
    let lab = lab();
    let metrics = lab.metrics_url();

    // The Prometheus text format (curl asks for no particular one), as Prometheus's own
    // linter reads it: every family parses and is named as its type says.
    let (ct, text) = get(&metrics, &[]);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    for family in [
        "privatelink_endpoint_packets_total counter",
        "privatelink_endpoint_bytes_total counter",
        "privatelink_endpoint_new_flows_total counter",
        "privatelink_endpoint_drops_total counter",
        "privatelink_flow_log_lost_total counter",
        "privatelink_appliance_packets_total counter",
        "privatelink_appliance_bytes_total counter",
        "privatelink_verdicts_total counter",
        "privatelink_conntrack_entries gauge",
        "privatelink_conntrack_capacity gauge",
        "privatelink_snat_tuples_in_use gauge",
        "privatelink_snat_tuples_capacity gauge",
        "privatelink_conntrack6_entries gauge",
        "privatelink_snat6_tuples_in_use gauge",
        "privatelink_snat6_tuples_capacity gauge",
        "privatelink_health_up gauge",
        "privatelink_reconcile_duration_seconds histogram",
        "privatelink_api_requests_total counter",
        "privatelink_notifications_total counter",
        "privatelink_notification_retries_total counter",
        "privatelink_flow_log_events_total counter",
        "privatelink_flow_log_events_lost_total counter",
        "privatelink_flow_log_records_written_total counter",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "no {family} in\n{text}"
        );
    }
    // OpenMetrics to a client that asks for it (Prometheus does).
    let (ct, om) = get(
        &metrics,
        &["-H", "Accept: application/openmetrics-text; version=1.0.0"],
    );
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");

    // Prometheus scrapes it: its target is up (a scrape that did not parse would be 0).
    scrape_after(&lab, now());

    // The families' labels, as Prometheus stored them.
    let drops = latest(
        &lab,
        r#"privatelink_endpoint_drops_total{endpoint="ep-a",zone="zone-a"}"#,
    );
    let sg = value_of(&drops, &[("reason", "security_group")]);
    assert_eq!(sg, 0.0);
    assert!(
        drops
            .iter()
            .all(|s| s.labels["service"] == "epsrv-b" && s.labels["account"] == "acct-a")
    );
    let appliance = latest(&lab, "privatelink_appliance_packets_total");
    value_of(
        &appliance,
        &[
            ("service", "gwlb-svc"),
            ("appliance", "10.40.1.10"),
            ("zone", "zone-a"),
            ("direction", "to_consumer"),
        ],
    );
    let capacity = latest(&lab, "privatelink_conntrack_capacity");
    assert_eq!(
        capacity[0].value,
        f64::from(privatelink_common::DEFAULT_CONNTRACK_ENTRIES)
    );
    // epsrv-b's SNAT pool: its addresses times its port range, as the API shows them.
    let svc: Value = serde_json::from_str(
        &lab.cli("provider", &["service", "show", "epsrv-b"])
            .unwrap(),
    )
    .unwrap();
    let ports = svc["snat_ports"].as_array().unwrap();
    let range = ports[1].as_f64().unwrap() - ports[0].as_f64().unwrap() + 1.0;
    let snat_capacity = latest(
        &lab,
        r#"privatelink_snat_tuples_capacity{service="epsrv-b"}"#,
    );
    assert_eq!(
        snat_capacity[0].value,
        svc["snat"].as_array().unwrap().len() as f64 * range
    );
    let reconciles = latest(&lab, "privatelink_reconcile_duration_seconds_count");
    assert!(reconciles[0].value > 0.0, "{reconciles:?}");
    // The health checks' verdicts: every load balancer and appliance of the lab answers.
    wait_for(Duration::from_secs(15), "every target healthy", || {
        let up = query(&lab, "privatelink_health_up");
        up.len() == 4 && up.iter().all(|s| s.value == 1.0)
    })
    .unwrap();
    let health = query(&lab, "privatelink_health_up");
    value_of(
        &health,
        &[
            ("kind", "load_balancer"),
            ("service", "epsrv-b"),
            ("zone", "zone-a"),
            ("address", "10.10.0.10"),
        ],
    );
    value_of(
        &health,
        &[
            ("kind", "appliance"),
            ("service", "gwlb-svc"),
            ("zone", "zone-b"),
            ("address", "10.40.2.10"),
        ],
    );

    // Requests through ep-a's zone-a ENI: its counters move by at least what the
    // consumer sent (nftables' count), and no other ENI's do.
    let packets = "privatelink_endpoint_packets_total";
    let bytes =
        r#"privatelink_endpoint_bytes_total{endpoint="ep-a",zone="zone-a",direction="to_service"}"#;
    scrape_after(&lab, now());
    let before = eni_counters(&latest(&lab, packets));
    let bytes_before = latest(&lab, bytes)[0].value;
    let sent = SentCounter::start(&lab);
    for _ in 0..5 {
        lab.curl(&format!("http://{ENI}/")).unwrap();
    }
    let (sent_packets, sent_bytes) = sent.read();
    assert!(sent_packets >= 5.0 * 4.0, "nftables counted {sent_packets}");
    scrape_after(&lab, now());
    let after = eni_counters(&latest(&lab, packets));
    let bytes_after = latest(&lab, bytes)[0].value;
    let key = |e: &str, z: &str, d: &str| (e.to_string(), z.to_string(), d.to_string());
    let moved = |k: &(String, String, String)| after[k] - before[k];
    assert!(
        moved(&key("ep-a", "zone-a", "to_service")) >= sent_packets,
        "ep-a zone-a to_service moved by {}, the consumer sent {sent_packets}",
        moved(&key("ep-a", "zone-a", "to_service"))
    );
    assert!(moved(&key("ep-a", "zone-a", "to_consumer")) >= 5.0);
    assert!(
        bytes_after - bytes_before >= sent_bytes,
        "bytes moved by {}, the consumer sent {sent_bytes}",
        bytes_after - bytes_before
    );
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for k in before
        .keys()
        .filter(|k| !(k.0 == "ep-a" && k.1 == "zone-a"))
    {
        assert_eq!(before[k], after[k], "{k:?} moved");
    }
    assert!(
        before.contains_key(&key("ep-b", "zone-a", "to_service")),
        "the reverse endpoint has no counters: {before:?}"
    );
    drop(sent);
    // The verdicts: a flow's first packet forwarded is `forward_new_flow`, the rest
    // `forward_to_service`.
    let forwarded = latest(
        &lab,
        r#"sum(privatelink_verdicts_total{reason=~"forward_new_flow|forward_to_service"})"#,
    );
    assert!(forwarded[0].value >= sent_packets, "{forwarded:?}");

    // A flow held open holds an SNAT tuple of epsrv-b, as the conntrack walk counts it.
    let mut slow = lab
        .consumer
        .command("curl")
        .args(["-s", "-o", "/dev/null", "--limit-rate", "8k"])
        .arg(format!("http://{ENI}/big.bin"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let held = wait_for(Duration::from_secs(20), "an SNAT tuple in use", || {
        query(&lab, r#"privatelink_snat_tuples_in_use{service="epsrv-b"}"#)
            .first()
            .is_some_and(|s| s.value >= 1.0)
    });
    let _ = slow.kill();
    let _ = slow.wait();
    held.unwrap();
    let entries = query(&lab, "privatelink_conntrack_entries");
    assert!(entries[0].value >= 2.0, "{entries:?}");

    // The same over IPv6: its own table and the service's IPv6 SNAT pool.
    let mut slow6 = lab
        .consumer
        .command("curl")
        .args(["-6", "-s", "-o", "/dev/null", "--limit-rate", "8k"])
        .arg(format!("http://[{ENI6}]/big.bin"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let held6 = wait_for(Duration::from_secs(20), "an IPv6 SNAT tuple in use", || {
        query(
            &lab,
            r#"privatelink_snat6_tuples_in_use{service="epsrv-b"}"#,
        )
        .first()
        .is_some_and(|s| s.value >= 1.0)
    });
    let _ = slow6.kill();
    let _ = slow6.wait();
    held6.unwrap();
    let entries6 = query(&lab, "privatelink_conntrack6_entries");
    assert!(entries6[0].value >= 2.0, "{entries6:?}");
    let capacity6 = query(
        &lab,
        r#"privatelink_snat6_tuples_capacity{service="epsrv-b"}"#,
    );
    assert!(capacity6[0].value >= 2.0, "{capacity6:?}");

    // API calls, by route template and status: a service read (200), one that does not
    // exist (404 on the same route), and a path no route takes.
    let api = lab.api.clone().unwrap();
    let requests = |route: &str, status: &str| {
        let q = format!(
            r#"privatelink_api_requests_total{{route="{route}",method="GET",status="{status}"}}"#
        );
        query(&lab, &q).first().map_or(0.0, |s| s.value)
    };
    let calls = [
        ("/v1/services/{id}", "200", "/v1/services/epsrv-b"),
        ("/v1/services/{id}", "404", "/v1/services/nothing-here"),
        ("unmatched", "404", "/v1/no-such-route"),
    ];
    scrape_after(&lab, now());
    let before: Vec<f64> = calls.iter().map(|(r, s, _)| requests(r, s)).collect();
    for (_, _, path) in calls {
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "5", "-H"])
            .arg(format!("Authorization: Bearer {}", lab.tokens.provider))
            .arg(format!("{api}{path}"))
            .status()
            .unwrap();
    }
    scrape_after(&lab, now());
    for ((route, status, path), b) in calls.iter().zip(before) {
        assert_eq!(
            requests(route, status) - b,
            1.0,
            "GET {path}: route {route} status {status}"
        );
    }
}
