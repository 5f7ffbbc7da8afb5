//! `cargo xtask`: sets up a fresh Debian machine (idempotently), builds, and runs the lab,
//! the tests and the benchmarks; builds the Debian package. Each step prints one
//! `[xtask]` line; the long ones (installs, the bpf-linker build) show a spinner with the
//! time spent when stdout is a terminal, and their output as it comes otherwise (CI).

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(about = "privatelink's build, lab and test runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, build, and start the default lab until Ctrl-C.
    Run {
        /// Namespace prefix: <prefix>-consumer, <prefix>-provider, <prefix>-fwd.
        #[arg(long, default_value = "pl")]
        prefix: String,
    },
    /// Install what is missing, build, and start a lab scenario until Ctrl-C: `default`
    /// (what `run` starts) or `fleet` (three forwarders behind an ECMP router, sharing an
    /// etcd cluster).
    Lab {
        #[arg(default_value = "default", value_parser = ["default", "fleet"])]
        scenario: String,
        /// Namespace prefix.
        #[arg(long, default_value = "pl")]
        prefix: String,
    },
    /// Install what is missing, build, then run every test (formatting and lints first).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Only the machine setup.
    Setup,
    /// Build the XDP object, the daemon and the lab.
    Build,
    /// Per-packet cost of each data path branch next to a trivial program (BPF_PROG_TEST_RUN).
    Bench,
    /// Build the Debian package (release binary, unit, configuration file, manual pages,
    /// completions) with cargo-deb; prints its path.
    Deb,
}

/// Debian packages the labs and tests use, with a binary that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("haproxy", "haproxy"),
    ("nginx-light", "nginx"),
    ("curl", "curl"),
    ("bpftool", "bpftool"),
    ("nftables", "nft"),
    ("iputils-ping", "ping"),
    ("tcpdump", "tcpdump"),
    ("wrk", "wrk"),
    ("python3-scapy", "scapy"),
    // DNS: the on-premises resolver of the lab (named), the names tests' client (dig; in
    // Debian 12 `dnsutils` is only a transitional package for it), and the DNS benchmark.
    ("bind9", "named"),
    ("bind9-dnsutils", "dig"),
    ("dnsperf", "dnsperf"),
    // The install test checks the systemd unit with it.
    ("systemd", "systemd-analyze"),
    // The lab's Prometheus server, and promtool (the metrics test's format check).
    ("prometheus", "promtool"),
    // The shared store: the etcd client crate compiles etcd's protocol with protoc (and
    // its well-known types, a file, not a binary); the fleet tests' cluster runs etcd.
    ("protobuf-compiler", "protoc"),
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    ("etcd-server", "etcd"),
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Run { prefix } => {
            setup()?;
            build()?;
            step("lab", "starting (Ctrl-C removes it)");
            let err = exec(Command::new(root.join("target/debug/pl-lab")).args([
                "--prefix",
                &prefix,
                "--pin-dir",
                "/sys/fs/bpf/privatelink",
            ]));
            Err(err)
        }
        Cmd::Lab { scenario, prefix } => {
            setup()?;
            build()?;
            step(
                "lab",
                &format!("starting the {scenario} lab (Ctrl-C removes it)"),
            );
            let err = exec(Command::new(root.join("target/debug/pl-lab")).args([
                "--scenario",
                &scenario,
                "--prefix",
                &prefix,
                "--pin-dir",
                "/sys/fs/bpf/privatelink",
            ]));
            Err(err)
        }
        Cmd::Test { args } => {
            setup()?;
            build()?;
            step("lint", "cargo fmt --check, cargo clippy -D warnings");
            let fmt_tc = format!("+{}", ebpf_toolchain());
            cargo(&[&fmt_tc, "fmt", "--all", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            step(
                "test",
                "unit, packet (BPF_PROG_TEST_RUN) and namespace end-to-end tests",
            );
            let mut a = vec!["test", "--no-fail-fast"];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::Bench => {
            setup()?;
            build()?;
            step("bench", "per-packet cost through BPF_PROG_TEST_RUN");
            // pl-bench runs the release daemon next to it.
            cargo(&["build", "--release", "--bins"])?;
            run(&mut Command::new(root.join("target/release/pl-bench")))
        }
        Cmd::Deb => {
            setup()?;
            deb(&root)
        }
    }
}

/// The Debian package: the release binary, the files it generates from its command-line
/// definitions (manual pages, completions) in target/release/pkg, where the package's
/// assets name them, then cargo-deb.
fn deb(root: &Path) -> Result<()> {
    step("deb", "release build of privatelink");
    cargo(&[
        "build",
        "--release",
        "-p",
        "privatelink-user",
        "--bin",
        "privatelink",
    ])?;
    let release = root.join("target/release");
    step(
        "deb",
        "manual pages and shell completions into target/release/pkg",
    );
    package_assets(&release.join("privatelink"), &release.join("pkg"))?;
    step("deb", "cargo deb");
    let out = output(Command::new("cargo").args(["deb", "-p", "privatelink-user", "--no-build"]))?;
    let path = out.lines().last().context("cargo deb printed no path")?;
    step("deb", path);
    Ok(())
}

/// What the package ships that `bin` generates: `man/*.1.gz` (compressed, as Debian
/// installs manual pages) and `completions/` (bash, zsh, fish) under `dir`.
/// (tests/tests/install.rs does the same for its package.)
fn package_assets(bin: &Path, dir: &Path) -> Result<()> {
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    let _ = std::fs::remove_dir_all(&man);
    std::fs::create_dir_all(&completions)?;
    run(Command::new(bin).arg("man").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        run(Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }
    for (shell, file) in [
        ("bash", "privatelink.bash"),
        ("zsh", "_privatelink"),
        ("fish", "privatelink.fish"),
    ] {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        std::fs::write(completions.join(file), script)?;
    }
    Ok(())
}

/// The nightly that builds the eBPF crate (and formats, for rustfmt's unstable options).
fn ebpf_toolchain() -> &'static str {
    include_str!("../../privatelink-ebpf/toolchain").trim()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn step(name: &str, what: &str) {
    println!("[xtask] {name:<10} {what}");
}

/// Runs a long step's command. On a terminal: a spinner with the time spent stands in for
/// its output, which is shown only if it fails. Otherwise (CI): its output as it comes, no
/// spinner.
fn run_long(cmd: &mut Command) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        return run(cmd);
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout()).with_style(
        ProgressStyle::with_template("           {spinner} {elapsed} {msg}")
            .expect("a valid template"),
    );
    spinner.set_message(format!("{cmd:?}"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output();
    spinner.finish_and_clear();
    let out = out.with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("{cmd:?} failed: {}", out.status);
    }
    println!("           done in {}", HumanDuration(start.elapsed()));
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc_getuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_getuid() -> u32;
}

/// A command run as root (through sudo when we are not root).
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// Whether `binary` is on the PATH (or in /usr/sbin); an absolute path: whether that
/// file exists.
fn have(binary: &str) -> bool {
    if binary.starts_with('/') {
        return Path::new(binary).exists();
    }
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {binary} || test -x /usr/sbin/{binary}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    // Debian packages.
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        step("packages", "all present");
    } else {
        step("packages", &format!("installing {}", missing.join(" ")));
        if !is_root() {
            // sudo asks for its password here, not under a spinner.
            run(Command::new("sudo").arg("-v"))?;
        }
        // Package lists on a fresh machine are stale: update first.
        run_long(privileged("apt-get").args(["update", "-qq"]))?;
        // Installing nginx, haproxy or bind9 must not start them in the host's namespace: the labs
        // start their own. policy-rc.d 101 = "do not start services".
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let own_policy = !policy.exists();
        if own_policy {
            run(privileged("sh").args(["-c", "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"]))?;
        }
        let installed = run_long(
            privileged("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
        if own_policy {
            run(privileged("rm").args(["-f", "/usr/sbin/policy-rc.d"]))?;
        }
        installed?;
        // Nor start at the next boot: etcd's package enables a system member on the
        // host's loopback (the tests start clusters of their own).
        if missing.contains(&"etcd-server") && have("systemctl") {
            let _ = output(privileged("systemctl").args(["disable", "--quiet", "etcd"]));
        }
    }

    // The pinned nightly with rust-src (the eBPF crate builds core with build-std). Never
    // `rustup update` it: bpf-linker is tied to its LLVM.
    let tc = ebpf_toolchain();
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        tc,
        "--installed",
    ]))
    .unwrap_or_default();
    if ["rust-src", "rustfmt"]
        .iter()
        .all(|c| installed.lines().any(|l| l.starts_with(c)))
    {
        step("nightly", &format!("{tc} with rust-src present"));
    } else {
        step(
            "nightly",
            &format!("installing {tc} with rust-src and rustfmt"),
        );
        run_long(Command::new("rustup").args([
            "toolchain",
            "install",
            tc,
            "--profile",
            "minimal",
            "--component",
            "rust-src,rustfmt",
        ]))?;
    }

    // bpf-linker, linked against that nightly's own libLLVM (crates.io's default wants
    // another LLVM). Its RUNPATH is $prefix/lib, so the links are refreshed every time.
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{tc}"))
            .args(["--print", "sysroot"]),
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", lib.display()))?;
    let prefix =
        std::env::var("BPF_LINKER_LLVM_PREFIX").unwrap_or_else(|_| "/opt/rust-llvm".into());
    let plib = Path::new(&prefix).join("lib");
    let linked = std::fs::read_link(plib.join("libLLVM.so")).is_ok_and(|t| t == so);
    if !linked {
        step(
            "llvm",
            &format!("linking {} into {}", so.display(), plib.display()),
        );
        run(privileged("mkdir").arg("-p").arg(&plib))?;
        run(privileged("ln")
            .arg("-sf")
            .arg(&so)
            .arg(plib.join("libLLVM.so")))?;
        run(privileged("ln")
            .arg("-sf")
            .arg(&so)
            .arg(plib.join(so.file_name().expect("file"))))?;
    }
    let works = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        step("bpf-linker", "present");
    } else {
        step(
            "bpf-linker",
            "building against the nightly's LLVM (1-2 minutes)",
        );
        run_long(
            Command::new("cargo")
                .args([
                    "install",
                    "--force",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", &prefix),
        )?;
    }

    // bpffs, where the daemon pins its maps.
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        step("bpffs", "mounted on /sys/fs/bpf");
    } else {
        step("bpffs", "mounting on /sys/fs/bpf");
        run(privileged("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    cargo_deb()?;
    schemathesis()
}

/// cargo-deb, which `cargo xtask deb` and the install test's package use.
fn cargo_deb() -> Result<()> {
    let present = Command::new("cargo")
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        step("cargo-deb", "present");
        return Ok(());
    }
    step(
        "cargo-deb",
        "installing (cargo install cargo-deb --locked, a few minutes)",
    );
    run_long(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))
}

/// The OpenAPI fuzzer the API test runs, in a virtualenv of the workspace's own.
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn schemathesis() -> Result<()> {
    let venv = workspace_root().join("target/st-venv");
    let st = venv.join("bin/st");
    if st.is_file() {
        step(
            "schemathesis",
            &format!("{SCHEMATHESIS} present in target/st-venv"),
        );
        return Ok(());
    }
    step(
        "schemathesis",
        &format!("installing {SCHEMATHESIS} into target/st-venv"),
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run_long(Command::new(venv.join("bin/pip")).args(["install", "-q", SCHEMATHESIS]))
}

fn build() -> Result<()> {
    step("build", "XDP object (nightly, bpf-linker), daemon, lab");
    cargo(&["build", "--bins"])
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // `+nightly` only works through rustup's proxy, not through $CARGO.
    let program = if args.first().is_some_and(|a| a.starts_with('+')) {
        "cargo"
    } else {
        cargo.as_str()
    };
    run(Command::new(program).args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exec(cmd: &mut Command) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    anyhow::Error::from(cmd.exec()).context("exec")
}
