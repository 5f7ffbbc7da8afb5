//! A committed change the data path cannot take is answered and stored all the same, and
//! the daemon retries the apply every 5 s until the maps agree (README, Capacity).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aya::maps::HashMap;
use privatelink_common::{EndpointEni, VpcAddr, map_names};
use privatelink_tests::{
    apidaemon::{ApiDaemon, two_parties},
    lab::connected_endpoint,
};
use privatelink_user::{client::Client, dataplane, model::numeric_id};
use serde_json::json;

/// A VPC id no VPC of the test has: the entries that fill the map.
const FILLER_VPC: u32 = 0xdead_0001;

fn endpoints(d: &ApiDaemon) -> BTreeMap<VpcAddr, EndpointEni> {
    let map = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let m: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&map).unwrap();
    m.iter().map(|r| r.unwrap()).collect()
}

fn eni(last: u8) -> VpcAddr {
    VpcAddr {
        vpc_id: numeric_id("vpc-a"),
        addr: [10, 10, 1, last],
    }
}

/// `PL_ENDPOINTS` is filled to its capacity behind the daemon's back, so writing a new
/// endpoint's entry fails (E2BIG) after the endpoint is committed: the API answers 201,
/// the endpoint is stored, the failed apply is logged and retried (and fails again while
/// the map is full); once room is made, a retry writes the entry and removes the filler
/// (not part of the state), and the map holds exactly the state's endpoints.
#[test]
fn a_committed_change_the_maps_refuse_is_retried_until_they_agree() {
    let d = ApiDaemon::start("plrtry").unwrap();
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (a, b) = two_parties(&admin, &d.url).unwrap();
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "whitelist": ["acct-a"], "auto_accept": true,
                "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    let body = |id: &str, last: u8| {
        json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b",
               "zones": [{"vswitch": "vsw-a1", "eni": format!("10.10.1.{last}")}]})
    };
    a.post("/v1/endpoints", &body("ep-1", 10)).unwrap();
    let before = endpoints(&d);
    assert_eq!(
        before.keys().copied().collect::<Vec<_>>(),
        vec![eni(10)],
        "ep-1 applied"
    );

    // Fill the map to the brim (the daemon's capacity check counts the state, not this).
    let map = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let mut m: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(map).unwrap();
    let mut filled = 0u32;
    let full = loop {
        let k = VpcAddr {
            vpc_id: FILLER_VPC,
            addr: filled.to_be_bytes(),
        };
        match m.insert(k, EndpointEni::default(), 0) {
            Ok(()) => filled += 1,
            Err(e) => break e,
        }
        assert!(filled <= privatelink_common::MAX_ENDPOINTS, "never full");
    };
    assert!(
        matches!(&full, aya::maps::MapError::SyscallError(e)
            if e.io_error.raw_os_error() == Some(libc::E2BIG)),
        "the map refused for another reason than being full: {full:?}"
    );
    assert_eq!(filled + 1, privatelink_common::MAX_ENDPOINTS);

    // The change is committed and answered although its entry cannot be written.
    let t = Instant::now();
    let created = a.post("/v1/endpoints", &body("ep-2", 11)).unwrap();
    assert_eq!(created["id"], "ep-2", "{created}");
    assert_eq!(a.get("/v1/endpoints/ep-2").unwrap()["id"], "ep-2", "stored");
    assert!(
        !endpoints(&d).contains_key(&eni(11)),
        "the entry was written although the map is full"
    );
    // A retry runs (every 5 s) and fails again while the map stays full.
    refused_then_retried(&d);
    assert!(!endpoints(&d).contains_key(&eni(11)));

    // Room for one entry: the next retry writes ep-2's and removes the filler.
    m.remove(&VpcAddr {
        vpc_id: FILLER_VPC,
        addr: 0u32.to_be_bytes(),
    })
    .unwrap();
    drop(m);
    // Retries run every 5 s; each re-reads the 65 536-entry map in a debug build: allow
    // several under load.
    privatelink_tests::lab::wait_for(Duration::from_secs(30), "ep-2 in PL_ENDPOINTS", || {
        endpoints(&d).contains_key(&eni(11))
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", d.log()));
    let waited = t.elapsed();
    caught_up(&d);
    let after = endpoints(&d);
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        vec![eni(10), eni(11)],
        "the map holds exactly the stored endpoints (the filler is gone)"
    );
    assert_eq!(after[&eni(10)], before[&eni(10)], "ep-1's entry unchanged");
    let (one, two) = (after[&eni(10)], after[&eni(11)]);
    assert_eq!(two.endpoint_id, numeric_id("ep-2"));
    assert_eq!(
        (two.service_id, two.consumer_account, two.state, two.flags),
        (one.service_id, one.consumer_account, one.state, one.flags),
        "ep-2 is an endpoint like ep-1"
    );
    assert_eq!(two.lb_addr, [10, 10, 0, 10]);
    eprintln!("ep-2 reached the map {waited:?} after its creation was answered");
}

/// The id of the XDP program attached to `dev` in the daemon's namespace, if any.
fn xdp_prog(d: &ApiDaemon, dev: &str) -> Option<String> {
    let out = d.ns.ip(&["link", "show", dev]).unwrap();
    out.split("prog/xdp id ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_string)
}

/// Kills the process on drop (a test failing half-way leaves nothing running).
struct Holder(std::process::Child);
impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another cause, outside the maps: a VPC is created on an interface where another XDP
/// program is attached (here `pl-xdp-pass`), so attaching ours fails after the
/// commit. The VPC is answered and stored, the failure retried; once the other program is
/// gone, a retry attaches ours (the same program as on the other VPCs' interfaces).
#[test]
fn a_vpc_whose_interface_is_taken_is_attached_once_it_is_free() {
    let mut d = ApiDaemon::start("plrtry").unwrap();
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    two_parties(&admin, &d.url).unwrap();
    let ours = xdp_prog(&d, "fc0").expect("the daemon's program on fc0");
    d.ns.ip(&["link", "add", "fq0", "type", "veth", "peer", "name", "q0"])
        .unwrap();
    for dev in ["fq0", "q0"] {
        d.ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    let mut holder = Holder(
        std::process::Command::new(privatelink_tests::lab::bin("pl-xdp-pass").unwrap())
            .args(["--netns", &d.ns.name, "fq0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    privatelink_tests::lab::wait_for(Duration::from_secs(30), "xdp-pass on fq0", || {
        xdp_prog(&d, "fq0").is_some()
    })
    .unwrap();
    let theirs = xdp_prog(&d, "fq0").unwrap();
    assert_ne!(theirs, ours);

    let t = Instant::now();
    let vpc = admin
        .post(
            "/v1/vpcs",
            &json!({"id": "vpc-0q", "account": "acct-a", "cidr": "10.50.0.0/16", "interface": "fq0",
                    "vswitches": [{"id": "vsw-q1", "zone": "zone-a", "cidr": "10.50.1.0/24"}]}),
        )
        .unwrap();
    assert_eq!(vpc["id"], "vpc-0q", "{vpc}");
    let listed = admin.get("/v1/vpcs").unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == "vpc-0q"),
        "stored: {listed}"
    );
    refused_then_retried(&d);
    assert_eq!(xdp_prog(&d, "fq0").as_deref(), Some(theirs.as_str()));

    // A daemon started while the interface is still taken comes up all the same, serves
    // the API and retries (a failed apply at start is not fatal either).
    // The store lists VPCs by id, so after the restart vpc-0q is the first VPC applied:
    // its failure must not keep the others' interfaces from the new program.
    let program_before = xdp_prog(&d, "fc0");
    let logged = d.log().len();
    d.restart()
        .unwrap_or_else(|e| panic!("the daemon did not start with fq0 taken: {e:#}"));
    let log = d.log()[logged..].to_string();
    assert!(
        log.contains("data path behind the state (retrying every 5 s)"),
        "no warning of the failed apply at start:\n{log}"
    );
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    assert!(
        admin
            .get("/v1/vpcs")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == "vpc-0q"),
        "the restarted daemon answers, vpc-0q stored"
    );
    assert_eq!(xdp_prog(&d, "fq0").as_deref(), Some(theirs.as_str()));
    // The new daemon's program, swapped into fc0's link.
    let ours = xdp_prog(&d, "fc0").expect("fc0 keeps a program");
    assert_ne!(
        Some(&ours),
        program_before.as_ref(),
        "the restarted daemon swapped its program into fc0 although vpc-0q (applied first) failed"
    );
    assert!(
        xdp_prog(&d, "fp0").as_ref() == Some(&ours),
        "fp0 has the new program too"
    );

    // The other program goes: the next retry attaches ours.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(holder.0.id() as i32, libc::SIGTERM) };
    holder.0.wait().unwrap();
    privatelink_tests::lab::wait_for(Duration::from_secs(15), "our program on fq0", || {
        xdp_prog(&d, "fq0").as_deref() == Some(ours.as_str())
    })
    .unwrap_or_else(|e| panic!("{e:#} (fq0: {:?}):\n{}", xdp_prog(&d, "fq0"), d.log()));
    caught_up(&d);
    assert!(d.pin.join("links/fq0").exists(), "the link is pinned");
    eprintln!("fq0 attached {:?} after vpc-0q was answered", t.elapsed());
}

/// A declarative daemon (`--state FILE`), its pins, data and process removed on drop.
struct FileDaemon {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pin: std::path::PathBuf,
}

impl Drop for FileDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// Declarative mode: the daemon starts on a state with a VPC whose interface another XDP
/// program holds (so it retries from the start), then re-reads (SIGHUP) a valid file that
/// adds an endpoint. The file is the running state from then on: the endpoint's entry is
/// written and stays through the retries that follow (which re-apply the file's state, not
/// the previous one), and once the interface is free ours is attached.
#[test]
fn a_reloaded_state_file_stays_applied_while_an_interface_is_held() {
    let ns =
        privatelink_tests::netns::Netns::create(&privatelink_tests::netns::unique_name("plrld"))
            .unwrap();
    for (a, b) in [("fc0", "c0"), ("fp0", "p0"), ("fq0", "q0")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap();
        for dev in [a, b] {
            ns.ip(&["link", "set", dev, "up"]).unwrap();
        }
    }
    let bin = privatelink_tests::lab::privatelink_bin().unwrap();
    let mut holder = Holder(
        std::process::Command::new(privatelink_tests::lab::bin("pl-xdp-pass").unwrap())
            .args(["--netns", &ns.name, "fq0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prog = |dev: &str| -> Option<String> {
        let out = ns.ip(&["link", "show", dev]).unwrap();
        out.split("prog/xdp id ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string)
    };
    privatelink_tests::lab::wait_for(Duration::from_secs(30), "xdp-pass on fq0", || {
        prog("fq0").is_some()
    })
    .unwrap();
    let theirs = prog("fq0").unwrap();

    let held_vpc = r#"
[[vpcs]]
id = "vpc-q"
account = "acct-a"
cidr = "10.50.0.0/16"
interface = "fq0"
vswitches = [{ id = "vsw-q1", zone = "zone-a", cidr = "10.50.1.0/24" }]
"#;
    let second = connected_endpoint("ep-2", "acct-a", "vpc-a", "epsrv-b", "vsw-a1", "10.10.1.11");
    let base = privatelink_tests::lab::LAB_STATE.to_string() + held_vpc;
    let dir = std::env::temp_dir().join(format!("privatelink-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.toml");
    std::fs::write(&file, &base).unwrap();
    let log = dir.join("daemon.log");
    let d = FileDaemon {
        child: std::process::Command::new(&bin)
            .args(["daemon", "--state"])
            .arg(&file)
            .args(["--netns", &ns.name, "--pin-dir"])
            .arg(format!("/sys/fs/bpf/privatelink-{}", ns.name))
            .arg("--ready-file")
            .arg(dir.join("ready"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        dir: dir.clone(),
        pin: std::path::PathBuf::from(format!("/sys/fs/bpf/privatelink-{}", ns.name)),
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    privatelink_tests::lab::wait_for(Duration::from_secs(60), "the daemon ready", || {
        std::fs::read_to_string(dir.join("ready")).is_ok_and(|s| s.ends_with('\n'))
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", read_log()));
    assert!(
        read_log().contains("data path behind the state (retrying every 5 s)"),
        "started behind:\n{}",
        read_log()
    );
    let entries = || -> BTreeMap<VpcAddr, EndpointEni> {
        let map = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
        let m: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&map).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    };
    assert!(entries().contains_key(&eni(100)) && !entries().contains_key(&eni(11)));

    std::fs::write(&file, base.clone() + &second).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    privatelink_tests::lab::wait_for(Duration::from_secs(15), "ep-2 in PL_ENDPOINTS", || {
        entries().contains_key(&eni(11))
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", read_log()));
    // Two retries (every 5 s) later the file's state is still the one applied.
    let retries = read_log().matches("data path behind the state").count();
    privatelink_tests::lab::wait_for(Duration::from_secs(20), "two more retries", || {
        read_log().matches("data path behind the state").count() >= retries + 2
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", read_log()));
    assert!(
        entries().contains_key(&eni(11)),
        "the reloaded state was rolled back by a retry:\n{}",
        read_log()
    );
    assert!(!read_log().contains("reload refused"), "{}", read_log());
    assert_eq!(prog("fq0").as_deref(), Some(theirs.as_str()));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(holder.0.id() as i32, libc::SIGTERM) };
    holder.0.wait().unwrap();
    let ours = prog("fc0").expect("ours on fc0");
    privatelink_tests::lab::wait_for(Duration::from_secs(15), "ours on fq0", || {
        prog("fq0").as_deref() == Some(ours.as_str())
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", read_log()));
    assert!(entries().contains_key(&eni(11)) && entries().contains_key(&eni(100)));
}

/// The daemon warned that the data path refused a stored change, and a retry (every 5 s)
/// has run and failed again (within 12 s).
fn refused_then_retried(d: &ApiDaemon) {
    assert!(
        d.log()
            .contains("stored, but the data path refused it (retrying)"),
        "no warning of the failed apply:\n{}",
        d.log()
    );
    privatelink_tests::lab::wait_for(Duration::from_secs(12), "a failed retry", || {
        d.log().contains("data path still behind the stored state")
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", d.log()));
}

/// The daemon logs that it caught up: the line follows the map writes and attaches the
/// test has seen, so it may lag them by a moment (bounded: 5 s).
fn caught_up(d: &ApiDaemon) {
    privatelink_tests::lab::wait_for(Duration::from_secs(5), "the caught-up log line", || {
        d.log()
            .contains("data path caught up with the stored state")
    })
    .unwrap_or_else(|e| panic!("{e:#}:\n{}", d.log()));
}
