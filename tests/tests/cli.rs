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
