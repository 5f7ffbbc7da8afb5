//! The API under schemathesis (an OpenAPI fuzzer; installed by `cargo xtask` into
//! target/st-venv): generated requests against every operation of the OpenAPI document,
//! with the operator's token and without one. No request may get a 5xx, the daemon must
//! survive, and a rejected request (4xx) must change nothing (`scripts/st_hooks.py`).
//!
//! The daemon is seeded first (accounts, two VPCs with vSwitches, a service with a listener
//! and a whitelist, endpoints, security groups with rules, an ACL), and a generation hook
//! puts the ids of existing objects into the path parameters three times in four, so the
//! rejected requests are mostly aimed at real objects and the comparison is between
//! non-empty states. A third run uses the consumer account's token, whose writes to its
//! own objects can be accepted. Afterwards every seeded object that no accepted write
//! named in its path must be as it was after seeding.
//!
//! What ran is read from schemathesis' own reports, not from its console text: the JSON
//! run report (operations tested, test cases generated) and the HAR file (every request
//! sent and the answer it got).

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use privatelink_tests::apidaemon::{ApiDaemon, two_party_tokens};
use privatelink_user::client::Client;
use serde_json::{Value, json};

/// The lists the operator can read: together, every object of the API (as `st_hooks.py`).
const LISTS: [&str; 6] = [
    "/v1/accounts",
    "/v1/vpcs",
    "/v1/services",
    "/v1/endpoints",
    "/v1/security-groups",
    "/v1/acls",
];

/// Every list, as the operator sees it.
fn state(d: &ApiDaemon) -> Vec<Vec<Value>> {
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    LISTS
        .iter()
        .map(|l| {
            admin
                .get(l)
                .unwrap()
                .as_array()
                .unwrap_or_else(|| panic!("{l} is not a list"))
                .clone()
        })
        .collect()
}

/// Real objects for the requests to hit, created through the API as the lab's parties
/// would: accounts acct-a (consumer) and acct-b (provider) with VPCs vpc-a (vsw-a1, vsw-a2,
/// vsw-a3) and vpc-b (vsw-b0), as `two_party_tokens` makes them, and acct-c; B's service epsrv-b (a TCP listener, whitelisting acct-a and acct-c), its security group
/// sg-b (one rule) and ACL acl-b; A's security groups sg-web and sg-spare (a rule each),
/// its endpoints ep-a (accepted, in sg-web) and ep-a2 (pending), and its ACL acl-a.
/// Returns the consumer's token and every id created (vSwitch and rule ids included).
fn seed(d: &ApiDaemon) -> (String, BTreeSet<String>) {
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (ta, tb) = two_party_tokens(&admin).unwrap();
    admin
        .post("/v1/accounts", &json!({"id": "acct-c"}))
        .unwrap();
    let (a, b) = (
        Client::new(&d.url, Some(ta.clone())),
        Client::new(&d.url, Some(tb)),
    );
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "whitelist": ["acct-a"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    b.call("PUT", "/v1/services/epsrv-b/whitelist/acct-c", None)
        .unwrap();
    for (c, sg, vpc, cidr) in [
        (&a, "sg-web", "vpc-a", "10.10.2.0/24"),
        (&a, "sg-spare", "vpc-a", "10.10.1.0/24"),
        (&b, "sg-b", "vpc-b", "10.10.1.0/24"),
    ] {
        c.post("/v1/security-groups", &json!({"id": sg, "vpc": vpc}))
            .unwrap();
        c.post(
            &format!("/v1/security-groups/{sg}/rules"),
            &json!({"direction": "ingress", "priority": 1, "action": "accept",
                    "protocol": "tcp", "ports": [80, 80], "cidr": cidr}),
        )
        .unwrap();
    }
    for (ep, vsw, eni) in [
        ("ep-a", "vsw-a1", "10.10.1.100"),
        ("ep-a2", "vsw-a1", "10.10.1.101"),
    ] {
        a.post(
            "/v1/endpoints",
            &json!({"id": ep, "vpc": "vpc-a", "service": "epsrv-b",
                    "zones": [{"vswitch": vsw, "eni": eni}]}),
        )
        .unwrap();
    }
    a.call(
        "PATCH",
        "/v1/endpoints/ep-a",
        Some(&json!({"security_groups": ["sg-web"]})),
    )
    .unwrap();
    b.call("POST", "/v1/services/epsrv-b/connections/ep-a/accept", None)
        .unwrap();
    for (c, acl, vpc, vsw) in [
        (&a, "acl-a", "vpc-a", "vsw-a1"),
        (&b, "acl-b", "vpc-b", "vsw-b0"),
    ] {
        c.post(
            "/v1/acls",
            &json!({"id": acl, "vpc": vpc, "vswitches": [vsw]}),
        )
        .unwrap();
    }
    let mut ids = BTreeSet::new();
    for list in state(d) {
        for o in list {
            ids.insert(o["id"].as_str().unwrap().to_string());
            for nested in ["vswitches", "rules"] {
                // (An ACL's rules have no ids.)
                let nested = o[nested].as_array().into_iter().flatten();
                ids.extend(nested.filter_map(|n| n["id"].as_str()).map(str::to_string));
            }
        }
    }
    (ta, ids)
}

fn st() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/st-venv/bin/st")
}

/// One schemathesis run: its exit status, console text, JSON run report, HAR log and the
/// counts kept by the hook's check.
struct Run {
    ok: bool,
    text: String,
    report: Value,
    har: Value,
    hook: Value,
}

fn schemathesis(d: &ApiDaemon, who: &str, token: &str, examples: u32) -> Run {
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    // With the daemon's data (removed with it), one pair of files per run.
    let tag = who.replace(' ', "-");
    let report = d.dir.join(format!("st-{tag}.json"));
    let har = d.dir.join(format!("st-{tag}.har"));
    let hook = d.dir.join(format!("st-{tag}-hook.json"));
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
        .env("PL_HOOK_STATS", &hook)
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
        hook: read(&hook),
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
    let (consumer, seeded) = seed(&d);
    let seeded_state = state(&d);
    // The objects an accepted write (of any run) named in its path, as (list, id): what
    // may have changed.
    let mut touched = BTreeSet::new();
    let mut accepted_writes = 0;
    for (who, token, examples, role) in [
        ("operator", d.admin_token.clone(), 25, Role::Operator),
        (
            "a stranger",
            "not-a-token-0123456789".to_string(),
            10,
            Role::Stranger,
        ),
        // Last, as its accepted writes change (its own) seeded objects.
        ("the consumer", consumer, 5, Role::Consumer),
    ] {
        let t = std::time::Instant::now();
        let run = schemathesis(&d, who, &token, examples);
        let took = t.elapsed();
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
        if role == Role::Stranger {
            assert_eq!(ok, 0, "a stranger's request succeeded");
        } else {
            // The token was sent and accepted: never unauthorized, and some calls succeed.
            assert_eq!(
                unauthorized, 0,
                "{who}'s requests were refused as unauthorized"
            );
            assert!(ok > 0, "no request of {who} succeeded");
        }

        // The rejections were aimed at real objects: many rejected requests name a seeded
        // object in their path (the generation hook puts existing ids there).
        let named = |e: &Value| -> Vec<String> {
            let url = e["request"]["url"].as_str().unwrap_or("");
            let path = url.split_once("://").map_or(url, |(_, r)| r);
            let path = path.split(['?', '#']).next().unwrap_or_default();
            path.split('/').skip(3).map(str::to_string).collect()
        };
        let rejected = count(&|s| (400..500).contains(&s));
        let on_seeded = entries
            .iter()
            .filter(|e| (400..500).contains(&status(e)))
            .filter(|e| named(e).iter().any(|id| seeded.contains(id)))
            .count();
        assert!(
            on_seeded >= 50,
            "schemathesis as {who}: only {on_seeded} rejected requests named a seeded object"
        );
        let writes: Vec<&Value> = entries
            .iter()
            .filter(|e| e["request"]["method"] != "GET" && (200..300).contains(&status(e)))
            .collect();
        for e in &writes {
            // /v1/{list}/{id}/...: the object {id} of {list}; a connection action
            // (/v1/services/{id}/connections/{endpoint}/{action}) changes the endpoint.
            let n = named(e);
            let url = e["request"]["url"].as_str().unwrap_or("");
            if let Some(l) = LISTS.iter().find(|l| url.contains(&format!("{l}/"))) {
                touched.insert((l.to_string(), n[0].clone()));
            }
            if n.get(1).is_some_and(|s| s == "connections") && n.len() > 2 {
                touched.insert(("/v1/endpoints".to_string(), n[2].clone()));
            }
            eprintln!(
                "schemathesis as {who}: accepted {} {}",
                e["request"]["method"].as_str().unwrap_or(""),
                e["request"]["url"].as_str().unwrap_or("")
            );
        }
        accepted_writes += writes.len();
        if role == Role::Consumer {
            assert!(
                !writes.is_empty(),
                "no write of the consumer to its objects was accepted"
            );
        }

        // The hook compared the state around every rejected request, and that state had
        // objects in it.
        let hook = &run.hook;
        assert_eq!(
            hook["compared"].as_u64(),
            Some(rejected as u64),
            "schemathesis as {who}: the hook compared the state around other than the \
             {rejected} rejected requests: {hook}"
        );
        assert_eq!(
            hook["compared_non_empty"].as_u64(),
            Some(rejected as u64),
            "schemathesis as {who}: the hook compared empty states: {hook}"
        );
        eprintln!(
            "schemathesis as {who}: {generated} test cases, {} requests ({ok} 2xx, \
             {unauthorized} 401, {rejected} 4xx of which {on_seeded} named a seeded object; \
             {} accepted writes) over {} operations in {took:.1?}; hook: {hook}\n{tail}",
            entries.len(),
            writes.len(),
            ops.len()
        );
    }
    assert!(accepted_writes > 0, "no write was accepted");

    // Whatever no accepted write named is as it was after seeding (the hook saw each
    // rejected request change nothing; this also covers accepted ones and anything
    // between requests).
    let now = state(&d);
    let mut intact = 0;
    for ((list, before), after) in LISTS.iter().zip(&seeded_state).zip(&now) {
        for o in before {
            let id = o["id"].as_str().unwrap();
            if touched.contains(&(list.to_string(), id.to_string())) {
                continue;
            }
            let found = after.iter().find(|x| x["id"] == id);
            assert_eq!(
                found,
                Some(o),
                "{list}: seeded object {id} changed, though no accepted write named it \
                 (left: now, right: after seeding)"
            );
            intact += 1;
        }
    }
    // No write names an account (a VPC's owner may change its resolver and probe
    // address), and only B may write to B's objects: the accounts and B's three objects
    // at least must have been compared.
    for (list, id) in [
        ("/v1/services", "epsrv-b"),
        ("/v1/security-groups", "sg-b"),
        ("/v1/acls", "acl-b"),
    ] {
        assert!(
            !touched.contains(&(list.to_string(), id.to_string())),
            "an accepted write named {id}, which none of the three may change: {touched:?}"
        );
    }
    assert!(intact >= 6, "only {intact} seeded objects compared");
    eprintln!(
        "{accepted_writes} accepted writes (naming {touched:?}); {intact} of the {} seeded \
         objects were not named and are unchanged",
        seeded_state.iter().map(Vec::len).sum::<usize>()
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Operator,
    Stranger,
    Consumer,
}
