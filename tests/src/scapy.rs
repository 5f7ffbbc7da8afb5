//! scapy as the independent decoder (and encoder) of test packets: frames go to a Python
//! process as hex and come back as JSON (see `scripts/dissect.py`) or bytes.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use serde_json::Value;

const DISSECT: &str = include_str!("../scripts/dissect.py");
const PYTHON: &str = "/usr/bin/python3";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from scapy"))
        .collect()
}

fn python(script: &str, input: &str) -> String {
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with scapy (installed by cargo xtask)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scapy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Each frame as scapy dissects it.
pub fn dissect(frames: &[&[u8]]) -> Vec<Value> {
    let input: String = frames.iter().map(|f| hex(f) + "\n").collect();
    python(DISSECT, &input)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON from dissect.py"))
        .collect()
}

pub fn dissect_one(frame: &[u8]) -> Value {
    dissect(&[frame]).remove(0)
}

/// Frames built by scapy: each expression (Python, with scapy's names and GENEVE in
/// scope) evaluates to a packet.
pub fn build(exprs: &[String]) -> Vec<Vec<u8>> {
    let script = r#"
import sys
from scapy.all import *
from scapy.contrib.geneve import GENEVE, GeneveOptions
for line in sys.stdin:
    line = line.strip()
    if line:
        print(raw(eval(line)).hex())
"#;
    let input: String = exprs.iter().map(|e| e.clone() + "\n").collect();
    python(script, &input).lines().map(unhex).collect()
}
