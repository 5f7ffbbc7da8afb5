//! The API under schemathesis (an OpenAPI fuzzer; installed by `cargo xtask` into
//! target/st-venv): generated requests against every operation of the OpenAPI document,
//! with the operator's token and without one. No request may get a 5xx, the daemon must
//! survive, and a rejected request (4xx) must change nothing (`scripts/st_hooks.py`).

use std::{path::PathBuf, process::Command};

use privatelink_tests::apidaemon::ApiDaemon;

fn st() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/st-venv/bin/st")
}

fn schemathesis(d: &ApiDaemon, token: &str, examples: &str) -> (bool, String) {
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let out = Command::new(st())
        .args(["run", &format!("{}/v1/openapi.json", d.url)])
        .args([
            "--checks",
            "not_a_server_error,rejected_requests_change_nothing",
        ])
        .args(["--workers", "1", "--max-examples", examples, "--seed", "7"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--request-timeout", "10", "--no-color"])
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
    (out.status.success(), text)
}

#[test]
fn the_api_survives_schemathesis_without_5xx_or_side_effects_of_rejections() {
    let mut d = ApiDaemon::start("plst").unwrap();
    for (who, token, examples) in [
        ("operator", d.admin_token.clone(), "25"),
        ("a stranger", "not-a-token-0123456789".to_string(), "10"),
    ] {
        let (ok, text) = schemathesis(&d, &token, examples);
        let tail: String = text.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        assert!(ok, "schemathesis as {who} found problems:\n{text}");
        assert!(
            text.contains("passed") || text.contains("PASSED"),
            "schemathesis ran nothing as {who}:\n{tail}"
        );
        assert!(d.alive(), "the daemon died under schemathesis as {who}");
        eprintln!("schemathesis as {who}:\n{tail}");
    }
}
