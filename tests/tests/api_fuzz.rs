//! The API under schemathesis (an OpenAPI fuzzer; installed by `cargo xtask` into
//! target/st-venv): generated requests against every operation of the OpenAPI document,
//! with the operator's token and without one. No request may get a 5xx, the daemon must
//! survive, and a rejected request (4xx) must change nothing (`scripts/st_hooks.py`).
//!
//! What ran is read from schemathesis' own reports, not from its console text: the JSON
//! run report (operations tested, test cases generated) and the HAR file (every request
//! sent and the answer it got).

use std::{path::PathBuf, process::Command};

use privatelink_tests::apidaemon::ApiDaemon;
use privatelink_user::client::Client;
use serde_json::Value;

fn st() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/st-venv/bin/st")
}

/// One schemathesis run: its exit status, console text, JSON run report and HAR log.
struct Run {
    ok: bool,
    text: String,
    report: Value,
    har: Value,
}

fn schemathesis(d: &ApiDaemon, who: &str, token: &str, examples: u32) -> Run {
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    // With the daemon's data (removed with it), one pair of files per run.
    let tag = who.replace(' ', "-");
    let report = d.dir.join(format!("st-{tag}.json"));
    let har = d.dir.join(format!("st-{tag}.har"));
    let out = Command::new(st())
        .args(["run", &format!("{}/v1/openapi.json", d.url)])
        .args([
            "--checks",
            "not_a_server_error,rejected_requests_change_nothing",
        ])
        .args(["--workers", "1", "--max-examples", &examples.to_string()])
        .args(["--seed", "7"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--request-timeout", "10", "--no-color"])
        .args(["--report", "json,har"])
        .arg("--report-json-path")
        .arg(&report)
        .arg("--report-har-path")
        .arg(&har)
        // Its cache directory goes with the daemon's data, not into the source tree.
        .current_dir(&d.dir)
        .env("SCHEMATHESIS_HOOKS", "st_hooks")
        .env("PYTHONPATH", &scripts)
        .env("PL_API", &d.url)
        .env("PL_ADMIN_TOKEN", &d.admin_token)
        .output()
        .expect("schemathesis (cargo xtask installs it into target/st-venv)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &PathBuf| -> Value {
        let s = std::fs::read_to_string(p).unwrap_or_else(|e| {
            panic!(
                "schemathesis as {who} wrote no {}: {e}\n{text}",
                p.display()
            )
        });
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    Run {
        ok: out.status.success(),
        report: read(&report),
        har: read(&har),
        text,
    }
}

/// The operations of the daemon's OpenAPI document: (method, path template).
fn operations(d: &ApiDaemon) -> Vec<(String, String)> {
    let doc = Client::new(&d.url, None)
        .get("/v1/openapi.json")
        .expect("the OpenAPI document");
    let paths = doc["paths"].as_object().expect("paths in the document");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(
        ops.len() >= 20,
        "only {} operations in the document",
        ops.len()
    );
    ops
}

/// Whether the URL's path is an instance of the template (`{x}`: any one segment).
fn matches(template: &str, url: &str) -> bool {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or(url);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
}

#[test]
fn the_api_survives_schemathesis_without_5xx_or_side_effects_of_rejections() {
    let mut d = ApiDaemon::start("plst").unwrap();
    let ops = operations(&d);
    for (who, token, examples, operator) in [
        ("operator", d.admin_token.clone(), 25, true),
        (
            "a stranger",
            "not-a-token-0123456789".to_string(),
            10,
            false,
        ),
    ] {
        let run = schemathesis(&d, who, &token, examples);
        let text = &run.text;
        let tail: String = text.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        assert!(run.ok, "schemathesis as {who} found problems:\n{text}");
        assert!(d.alive(), "the daemon died under schemathesis as {who}");

        // The run report: complete, every operation of the document tested, none
        // skipped or errored, and at least `examples` test cases per operation on average.
        let r = &run.report;
        assert_eq!(
            r["complete"], true,
            "schemathesis as {who}: run incomplete\n{tail}"
        );
        assert_eq!(
            r["stop_reason"], "completed",
            "schemathesis as {who}\n{tail}"
        );
        let o = &r["operations"];
        for field in ["total", "selected", "tested"] {
            assert_eq!(
                o[field].as_u64(),
                Some(ops.len() as u64),
                "schemathesis as {who}: operations {field} (the document has {}): {o}",
                ops.len()
            );
        }
        for field in ["errored", "skipped"] {
            assert_eq!(
                o[field], 0,
                "schemathesis as {who}: operations {field}: {o}"
            );
        }
        let cases = &r["test_cases"];
        let generated = cases["generated"].as_u64().unwrap_or(0);
        let minimum = ops.len() as u64 * examples as u64;
        assert!(
            generated >= minimum,
            "schemathesis as {who} generated {generated} test cases, fewer than {minimum} \
             ({examples} per operation): {cases}"
        );
        assert_eq!(cases["errored"], 0, "schemathesis as {who}: {cases}");

        // The HAR log: every request sent and answered; none got a 5xx; every operation of
        // the document was called.
        let entries = run.har["log"]["entries"]
            .as_array()
            .expect("HAR log entries");
        let status = |e: &Value| e["response"]["status"].as_u64().unwrap_or(0);
        assert!(
            entries.len() as u64 >= generated,
            "schemathesis as {who}: {} requests in the HAR for {generated} test cases",
            entries.len()
        );
        let count = |f: &dyn Fn(u64) -> bool| entries.iter().filter(|e| f(status(e))).count();
        let unanswered = count(&|s| s < 100);
        let server_errors = count(&|s| s >= 500);
        let (ok, unauthorized) = (count(&|s| (200..300).contains(&s)), count(&|s| s == 401));
        assert_eq!(
            unanswered, 0,
            "schemathesis as {who}: requests without an answer"
        );
        assert_eq!(server_errors, 0, "schemathesis as {who}: 5xx answers");
        for (method, template) in &ops {
            let n = entries
                .iter()
                .filter(|e| e["request"]["method"] == method.as_str())
                .filter(|e| matches(template, e["request"]["url"].as_str().unwrap_or("")))
                .count();
            assert!(
                n > 0,
                "schemathesis as {who} never called {method} {template}"
            );
        }
        if operator {
            // The token was sent and accepted: never unauthorized, and some calls succeed.
            assert_eq!(
                unauthorized, 0,
                "the operator's requests were refused as unauthorized"
            );
            assert!(ok > 0, "no request of the operator succeeded");
        } else {
            assert_eq!(ok, 0, "a stranger's request succeeded");
        }
        eprintln!(
            "schemathesis as {who}: {generated} test cases, {} requests ({ok} 2xx, \
             {unauthorized} 401) over {} operations\n{tail}",
            entries.len(),
            ops.len()
        );
    }
}
