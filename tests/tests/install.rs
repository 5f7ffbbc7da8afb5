//! Installing privatelink on a host: the systemd unit (systemd-analyze accepts it; the
//! daemon forwards with exactly the unit's capabilities as a user other than root, and
//! fails without any one of them), the configuration file (the command line wins, SIGHUP
//! applies what can change live, a bad file is refused), the journal's line format, the
//! completions and manual pages, and the Debian package.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use privatelink_tests::{
    dig::parse_dig,
    lab::{
        CLIENT, ENI, LAB_LISTENERS, LAB_STATE, LB, PROBE_ADDRESS as PROBE, RESOLVER, bin,
        privatelink_bin, wait_for,
    },
    netns::{self, Netns, unique_name},
};

/// The unit the package installs.
const UNIT: &str = include_str!("../../packaging/privatelink.service");
/// Stands in for the package's `privatelink` system user (a uid no account has here).
const DAEMON_UID: u32 = 61999;
/// ep-a's name under the options the tests give (`--dns-suffix`, `--dns-region`).
const EP_A_NAME: &str = "ep-a.epsrv-b.install-1.privatelink.test";

/// The values of the unit's `key=` lines, split at spaces.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The unit's capabilities (`CAP_BPF`, ...): its bounding set, which must be its ambient
/// set too (a capability in one only is a mistake either way).
fn unit_capabilities() -> Vec<String> {
    let bounding = unit_values(UNIT, "CapabilityBoundingSet");
    let ambient = unit_values(UNIT, "AmbientCapabilities");
    assert!(!bounding.is_empty(), "the unit names its capabilities");
    assert_eq!(
        bounding.iter().collect::<BTreeSet<_>>(),
        ambient.iter().collect::<BTreeSet<_>>(),
        "CapabilityBoundingSet= and AmbientCapabilities= differ"
    );
    bounding
}

/// `setpriv`'s form of a capability set: `-all,+bpf,+net_admin`.
fn setpriv_caps(caps: &[String]) -> String {
    let mut s = String::from("-all");
    for c in caps {
        let name = c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase();
        s.push_str(&format!(",+{name}"));
    }
    s
}

/// systemd-analyze accepts the unit (pointed at the built binary: it checks that ExecStart
/// is executable) and says nothing about it; the same check refuses a broken copy, so it
/// can fail.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let verify = |unit: &str| {
        let path = dir.path().join("privatelink.service");
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (the systemd package) is installed");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success() && stderr.trim().is_empty(), stderr)
    };
    let bin = privatelink_bin().unwrap();
    let ours = UNIT.replace(
        "ExecStart=/usr/bin/privatelink",
        &format!("ExecStart={}", bin.display()),
    );
    assert_ne!(ours, UNIT, "the unit starts /usr/bin/privatelink");
    let (ok, complaint) = verify(&ours);
    assert!(ok, "systemd-analyze verify: {complaint}");
    assert_eq!(unit_values(UNIT, "Type"), ["notify"]);
    assert!(
        unit_values(UNIT, "ExecStart")
            .join(" ")
            .ends_with("--config /etc/privatelink/privatelink.toml")
    );
    let user = unit_values(UNIT, "User");
    assert!(
        user.len() == 1 && user[0] != "root",
        "a non-root User=: {user:?}"
    );
    for broken in [
        ours.replace("Type=notify", "Type=notifyy"),
        ours.replace("RestartSec=2s", "RestartSec=2 fortnights"),
        ours.replace(&bin.display().to_string(), "/nonexistent/privatelink"),
    ] {
        let (ok, _) = verify(&broken);
        assert!(!ok, "systemd-analyze accepted a broken unit:\n{broken}");
    }
}

/// The endpoint's world, each run a fresh one: consumer (10.10.2.1) ── fwd (fc0, fp0: the
/// daemon) ── provider (the load balancer's address 10.10.0.10, a Python HTTP server on
/// port 80). The daemon's files are owned by `DAEMON_UID`, like the unit's StateDirectory
/// and the pin directory its ExecStartPre makes.
struct World {
    children: Vec<Child>,
    consumer: Netns,
    fwd: Netns,
    provider: Netns,
    dir: tempfile::TempDir,
    pin: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

impl World {
    /// `probes`: vpc-b has a probe address, and the load balancer is health-checked from
    /// it (its probes make the kernel resolve the load balancer's MAC, which the data path
    /// learns; without them the daemon's own ARP request must).
    fn up(probes: bool) -> Self {
        let name = unique_name("plins");
        let dir = tempfile::tempdir().unwrap();
        let mut w = World {
            children: Vec::new(),
            consumer: Netns::create(&format!("{name}c")).unwrap(),
            fwd: Netns::create(&format!("{name}f")).unwrap(),
            provider: Netns::create(&format!("{name}p")).unwrap(),
            pin: PathBuf::from(format!("/sys/fs/bpf/privatelink-{name}")),
            dir,
        };
        for (ns, end, fwd_end, addr) in [
            (&w.consumer, "c0", "fc0", CLIENT),
            (&w.provider, "p0", "fp0", LB),
        ] {
            w.fwd
                .ip(&[
                    "link", "add", fwd_end, "type", "veth", "peer", "name", end, "netns", &ns.name,
                ])
                .unwrap();
            w.fwd.ip(&["link", "set", fwd_end, "up"]).unwrap();
            ns.ip(&["addr", "add", &format!("{addr}/16"), "dev", end])
                .unwrap();
            ns.ip(&["link", "set", end, "up"]).unwrap();
            // Redirected frames carry no checksum-offload state: complete checksums.
            ns.exec("ethtool", &["-K", end, "tx", "off"]).unwrap();
        }
        w.consumer
            .ip(&["route", "add", &format!("{RESOLVER}/32"), "dev", "c0"])
            .unwrap();
        // Frames XDP redirects into a veth arrive only if an XDP program runs at its far end.
        for (ns, dev) in [(&w.consumer, "c0"), (&w.provider, "p0")] {
            let c = Command::new(bin("pl-xdp-pass").unwrap())
                .args(["--netns", &ns.name, dev])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            w.children.push(c);
        }
        let site = w.dir.path().join("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(site.join("index.html"), "served by the provider\n").unwrap();
        let server = w
            .provider
            .command("python3")
            .args(["-m", "http.server", "80", "--bind", LB, "--directory"])
            .arg(&site)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        w.children.push(server);
        // The daemon's own files: its state (the lab's, with vpc-a's resolver, and the load
        // balancer health-checked from vpc-b's probe address every 200 ms if `probes`), its
        // configuration, its ready file.
        let mut state = LAB_STATE.replace(
            "interface = \"fc0\"",
            &format!("interface = \"fc0\"\nresolver = \"{RESOLVER}\""),
        );
        if probes {
            state = state
                .replace(
                    "interface = \"fp0\"",
                    &format!("interface = \"fp0\"\nprobe_address = \"{PROBE}\""),
                )
                .replace(
                    LAB_LISTENERS,
                    &format!("{LAB_LISTENERS}\nhealth = {{ interval_ms = 200, timeout_ms = 300 }}"),
                );
            assert!(state.contains(PROBE) && state.contains("interval_ms = 200"));
        }
        assert!(state.contains(RESOLVER));
        std::fs::write(w.path("state.toml"), state).unwrap();
        std::fs::write(
            w.path("privatelink.toml"),
            format!(
                "state = {:?}\npin_dir = {:?}\nready_file = {:?}\ndns_suffix = \"privatelink.test\"\n\
                 dns_region = \"install-1\"\n",
                w.path("state.toml"),
                w.pin,
                w.path("ready")
            ),
        )
        .unwrap();
        own(w.dir.path());
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon as `DAEMON_UID` with exactly `caps` (bounding, inheritable and
    /// ambient, no new privileges, as the unit has systemd do) in the forwarder's network
    /// namespace: `nsenter` moves only the network namespace (the daemon sees the host's
    /// /sys/fs/bpf, as under systemd), then `setpriv` drops to the user and the set.
    fn start_daemon(&mut self, caps: &[String]) {
        let _ = std::fs::remove_dir_all(&self.pin);
        std::fs::create_dir(&self.pin).unwrap();
        own(&self.pin);
        self.restart_daemon(caps);
    }

    /// `start_daemon` on the pins as they are (a restart).
    fn restart_daemon(&mut self, caps: &[String]) {
        let _ = std::fs::remove_file(self.path("ready"));
        let set = setpriv_caps(caps);
        let id = DAEMON_UID.to_string();
        let log = std::fs::File::create(self.path("daemon.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.fwd.name))
            .args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"])
            .args([
                "--bounding-set",
                &set,
                "--inh-caps",
                &set,
                "--ambient-caps",
                &set,
            ])
            .arg("--no-new-privs")
            .arg(privatelink_bin().unwrap())
            .args(["daemon", "--config"])
            .arg(self.path("privatelink.toml"))
            .current_dir(self.dir.path())
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// The daemon's pid once its ready file is written, or `None` if it exited first.
    fn wait_ready(&mut self) -> Option<u32> {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(self.path("ready"))
                && s.ends_with('\n')
            {
                return Some(self.children.last().unwrap().id());
            }
            if self
                .children
                .last_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_some()
            {
                return None;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the daemon is neither ready nor gone after 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The consumer's HTTP GET of the endpoint (curl, up to `within`): the body.
    fn http_through_the_endpoint(&self, within: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            let out = self
                .consumer
                .command("curl")
                .args(["-sS", "--fail", "--max-time", "2"])
                .arg(format!("http://{ENI}/"))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                return Some(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The consumer VPC's resolver's answer for ep-a (dig, one try).
    fn dns_answer(&self) -> Vec<String> {
        let out = self
            .consumer
            .command("dig")
            .args([
                &format!("@{RESOLVER}"),
                "+time=1",
                "+tries=2",
                EP_A_NAME,
                "A",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        parse_dig(&String::from_utf8_lossy(&out.stdout)).addresses()
    }
}

/// Gives `path` to the daemon's user (readable and writable by it only, as the unit's
/// StateDirectory), and lets it through the temporary directory above.
fn own(path: &Path) {
    std::os::unix::fs::chown(path, Some(DAEMON_UID), Some(DAEMON_UID)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            own(&e.unwrap().path());
        }
    }
}

/// What a daemon with a capability set did: started, forwarded HTTP through the endpoint,
/// answered DNS on the VPC's resolver.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Exited before it was ready: its error.
    Exited(String),
    NoForwarding,
    NoDns,
    /// The load balancer's health checks fail (it serves all along).
    ProbesFail,
    Works,
}

fn run_with(caps: &[String], probes: bool) -> (Outcome, String) {
    let mut w = World::up(probes);
    w.start_daemon(caps);
    let outcome = match w.wait_ready() {
        None => Outcome::Exited(
            w.log()
                .lines()
                .find(|l| l.starts_with("Error") || l.contains("ERROR"))
                .unwrap_or("no error line")
                .to_string(),
        ),
        Some(_) => match w.http_through_the_endpoint(Duration::from_secs(8)) {
            Some(body) => {
                assert_eq!(body, "served by the provider\n");
                // Enough for three failed probes (the unhealthy threshold).
                std::thread::sleep(Duration::from_millis(1500));
                let log = w.log();
                if w.dns_answer() != [ENI] {
                    Outcome::NoDns
                } else if probes
                    && (!log.contains("load balancer health checks started")
                        || log.contains("health changed"))
                {
                    Outcome::ProbesFail
                } else {
                    Outcome::Works
                }
            }
            None => Outcome::NoForwarding,
        },
    };
    (outcome, w.log())
}

/// The daemon, run as a user other than root with exactly the unit's capabilities, loads,
/// attaches, forwards a real HTTP request through the endpoint's ENI, answers DNS on the
/// VPC's resolver and health-checks the load balancer (and forwards without health checks,
/// resolving the load balancer's MAC itself); with any one of them taken away it does not
/// (it exits, or a part of its work fails, without health checks): the unit's set is what
/// the daemon needs, and no more.
#[test]
fn the_daemon_works_with_exactly_the_units_capabilities_as_a_user_and_not_with_fewer() {
    let caps = unit_capabilities();
    for probes in [true, false] {
        let (outcome, log) = run_with(&caps, probes);
        assert_eq!(
            outcome,
            Outcome::Works,
            "with {caps:?}, probes {probes}:\n{log}"
        );
    }
    for c in &caps {
        let fewer: Vec<String> = caps.iter().filter(|x| *x != c).cloned().collect();
        let (outcome, log) = run_with(&fewer, false);
        let why: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("not permitted") || l.contains("denied") || l.contains("Error"))
            .take(2)
            .collect();
        eprintln!("without {c}: {outcome:?} {why:#?}");
        assert_ne!(
            outcome,
            Outcome::Works,
            "the daemon does all its work without {c}:\n{log}"
        );
    }
}

/// Restarts under the unit's capabilities (no CAP_SYS_ADMIN: the daemon cannot list every
/// loaded program) retire the previous program's pinned path array all the same: after
/// three starts on the same pins one path pin is left, and the endpoint still forwards.
#[test]
fn restarts_under_the_units_capabilities_leave_one_path_pin() {
    let caps = unit_capabilities();
    let mut w = World::up(false);
    w.start_daemon(&caps);
    for round in 0..3 {
        assert!(w.wait_ready().is_some(), "round {round}:\n{}", w.log());
        assert_eq!(
            w.http_through_the_endpoint(Duration::from_secs(8))
                .as_deref(),
            Some("served by the provider\n"),
            "round {round}:\n{}",
            w.log()
        );
        let pins: Vec<_> = std::fs::read_dir(w.pin.join("paths"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            pins.len(),
            1,
            "round {round}: path pins {pins:?}\n{}",
            w.log()
        );
        if round < 2 {
            let mut c = w.children.pop().unwrap();
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
            w.restart_daemon(&caps);
        }
    }
}

/// The daemon's settings: the file's, with the command line's winning; SIGHUP applies a
/// changed flow timeout and log filter at once (the data path's `PL_CONFIG` holds the new
/// value), reports a changed listen address as needing a restart without applying it, and
/// refuses a file with an unknown key, keeping the running settings. Under systemd
/// (`JOURNAL_STREAM` naming its stderr) the lines carry their priority and no time.
#[test]
fn settings_come_from_the_file_the_command_line_wins_and_sighup_applies_the_live_ones() {
    use privatelink_user::dataplane::read_config;
    const S: u64 = 1_000_000_000;

    let ns = Netns::create(&unique_name("plcfg")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pin = PathBuf::from(format!("/sys/fs/bpf/privatelink-{}", ns.name));
    struct Pins(PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _pins = Pins(pin.clone());
    let config = dir.path().join("privatelink.toml");
    let settings = |extra: &str| {
        format!(
            "data-dir = {:?}\npin_dir = {:?}\nlisten = \"127.0.0.1:0\"\ntcp_timeout = 100\n{extra}",
            dir.path().join("data"),
            pin
        )
    };
    std::fs::write(&config, settings("udp_timeout = 50\n")).unwrap();
    let log_path = dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let meta = log_file.metadata().unwrap();
    let ready = dir.path().join("ready");
    let mut daemon = Command::new(privatelink_bin().unwrap())
        .args(["daemon", "--config"])
        .arg(&config)
        .args(["--tcp-timeout", "200", "--netns", &ns.name, "--ready-file"])
        .arg(&ready)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Kill(&mut daemon);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for(Duration::from_secs(60), "the daemon ready", || {
        std::fs::read_to_string(&ready).is_ok_and(|s| s.ends_with('\n'))
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", log()));
    let cfg = read_config(&pin).unwrap();
    assert_eq!(
        (cfg.tcp_timeout_ns, cfg.other_timeout_ns),
        (200 * S, 50 * S),
        "tcp_timeout from the command line, udp_timeout from the file"
    );
    // The journal's format: `<priority>`, then the line, without a time.
    let text = log();
    let ready_line = text
        .lines()
        .find(|l| l.contains("ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{text}"));
    assert!(ready_line.starts_with("<6>"), "{ready_line}");
    assert!(
        !ready_line[3..]
            .trim_start()
            .starts_with(|c: char| c.is_ascii_digit()),
        "no time: {ready_line}"
    );
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");

    let hup = |expect: &str| {
        let before = log().len();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
        wait_for(Duration::from_secs(10), expect, || {
            log()[before..].contains(expect)
        })
        .unwrap_or_else(|e| panic!("{e}:\n{}", log()));
        log()[before..].to_string()
    };
    std::fs::write(
        &config,
        settings("udp_timeout = 60\nlog = \"debug\"\n")
            .replace("tcp_timeout = 100", "tcp_timeout = 300")
            .replace("127.0.0.1:0", "127.0.0.1:7999"),
    )
    .unwrap();
    let reloaded = hup("udp_timeout applied");
    let cfg = read_config(&pin).unwrap();
    assert_eq!(
        (cfg.tcp_timeout_ns, cfg.other_timeout_ns),
        (200 * S, 60 * S),
        "udp_timeout changed; tcp_timeout still the command line's:\n{reloaded}"
    );
    let lines: Vec<&str> = reloaded.lines().collect();
    let one = |what: &str| {
        let n = lines.iter().filter(|l| l.contains(what)).count();
        assert_eq!(n, 1, "one line saying {what:?}:\n{reloaded}");
    };
    one("udp_timeout applied");
    one("log applied");
    one("listen changed: needs a restart");
    assert!(!reloaded.contains("tcp_timeout"), "{reloaded}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("listen changed")),
        "the restart notice is a warning:\n{reloaded}"
    );

    std::fs::write(&config, settings("udp_timeout = 70\nbogus_key = 1\n")).unwrap();
    let refused = hup("configuration reload refused");
    assert!(
        refused.contains("unknown key `bogus_key`") && refused.contains(&*config.to_string_lossy()),
        "{refused}"
    );
    assert_eq!(
        read_config(&pin).unwrap().other_timeout_ns,
        60 * S,
        "the running value stays"
    );
    assert!(
        matches!(daemon.0.try_wait(), Ok(None)),
        "the daemon runs on"
    );
}

/// A file with an unknown key or a wrong value stops the daemon before it touches anything,
/// with an error naming the file and the key.
#[test]
fn the_daemon_refuses_to_start_on_a_bad_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    for (text, words) in [
        (
            "data_dir = \"/nonexistent\"\ndata_dri = \"/x\"\n",
            "unknown key `data_dri`",
        ),
        (
            "data_dir = \"/nonexistent\"\ntcp_timeout = \"soon\"\n",
            "key `tcp_timeout`",
        ),
    ] {
        let f = dir.path().join("privatelink.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(privatelink_bin().unwrap())
            .args(["daemon", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(
            err.contains(words) && err.contains(&*f.to_string_lossy()),
            "{text}: {err}"
        );
    }
}

/// The completion scripts and the manual pages come from the command-line definitions:
/// they know the daemon subcommand and its options.
#[test]
fn completions_and_manual_pages_name_the_daemon_and_its_options() {
    let bin = privatelink_bin().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = netns::run(Command::new(&bin).args(["completions", shell])).unwrap();
        assert!(
            script.contains("daemon") && script.contains("data-dir") && script.contains("config"),
            "{shell}'s completions miss the daemon's options"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    netns::run(Command::new(&bin).arg("man").arg(dir.path())).unwrap();
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .replace('\\', "")
    };
    let top = page("privatelink.1");
    assert!(
        top.contains(".TH privatelink 1") && top.contains("privatelink-daemon(1)"),
        "{top}"
    );
    let daemon = page("privatelink-daemon.1");
    for option in ["--data-dir", "--config", "--tcp-timeout", "--log"] {
        assert!(
            daemon.contains(option),
            "privatelink-daemon(1) misses {option}"
        );
    }
    assert!(
        !dir.path().join("privatelink-man.1").exists(),
        "hidden subcommands have no page"
    );
}

/// The Debian package, built by cargo-deb from the debug binary already built (in a target
/// directory of its own, so nothing is compiled): the binary, the unit, the configuration
/// file as a conffile, the manual pages, the three shells' completions, and maintainer
/// scripts that create the user and enable the unit.
#[test]
fn the_debian_package_holds_the_daemon_unit_configuration_manual_and_completions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = tempfile::tempdir().unwrap();
    let release = target.path().join("release");
    let pkg = release.join("pkg");
    std::fs::create_dir_all(pkg.join("completions")).unwrap();
    let bin = privatelink_bin().unwrap();
    std::fs::copy(&bin, release.join("privatelink")).unwrap();
    // As `cargo xtask deb` generates them (package_assets).
    netns::run(Command::new(&bin).arg("man").arg(pkg.join("man"))).unwrap();
    for page in std::fs::read_dir(pkg.join("man")).unwrap() {
        netns::run(Command::new("gzip").arg("-9n").arg(page.unwrap().path())).unwrap();
    }
    for (shell, file) in [
        ("bash", "privatelink.bash"),
        ("zsh", "_privatelink"),
        ("fish", "privatelink.fish"),
    ] {
        let script = netns::run(Command::new(&bin).args(["completions", shell])).unwrap();
        std::fs::write(pkg.join("completions").join(file), script).unwrap();
    }
    let out = Command::new("cargo")
        .args([
            "deb",
            "-p",
            "privatelink-user",
            "--no-build",
            "--fast",
            "--output",
        ])
        .arg(target.path())
        .env("CARGO_TARGET_DIR", target.path())
        .current_dir(root)
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "cargo deb (installed by `cargo xtask setup`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let contents = netns::run(Command::new("dpkg-deb").args(["--contents", &deb])).unwrap();
    let files: BTreeSet<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.'))
        .collect();
    for f in [
        "/usr/bin/privatelink",
        "/etc/privatelink/privatelink.toml",
        "/usr/share/bash-completion/completions/privatelink",
        "/usr/share/zsh/vendor-completions/_privatelink",
        "/usr/share/fish/vendor_completions.d/privatelink.fish",
    ] {
        assert!(files.contains(f), "{f} not in the package:\n{contents}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("systemd/system/privatelink.service")),
        "no unit:\n{contents}"
    );
    for page in ["privatelink.1.gz", "privatelink-daemon.1.gz"] {
        assert!(
            files.contains(format!("/usr/share/man/man1/{page}").as_str()),
            "no {page}:\n{contents}"
        );
    }
    let info =
        |part: &str| netns::run(Command::new("dpkg-deb").args(["--info", &deb, part])).unwrap();
    assert_eq!(
        info("conffiles").trim(),
        "/etc/privatelink/privatelink.toml"
    );
    let control = info("control");
    assert!(control.contains("Package: privatelink\n"), "{control}");
    let postinst = info("postinst");
    assert!(
        postinst.contains("useradd --system") && postinst.contains("privatelink.service"),
        "{postinst}"
    );
    assert!(info("postrm").contains("rm -rf /sys/fs/bpf/privatelink"));
}
