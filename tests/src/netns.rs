//! Network namespaces owned by a test or a lab: created with unique names, removed (with
//! every process inside them) on drop, even when the test fails.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

/// A name no other test of this or any concurrent run uses: prefix + pid + counter.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, failing with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace (removing a stale one of the same name first) with `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        remove(name);
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Moves the calling thread into the namespace (for BPF_PROG_TEST_RUN, which needs the
    /// ingress interface to exist in the caller's namespace).
    pub fn enter_thread(&self) -> Result<()> {
        enter_thread(&self.name)
    }

    /// Makes programs run through `ip netns exec` in this namespace ask `server` for names:
    /// writes `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over
    /// `/etc/resolv.conf`. One-second timeouts and two attempts, so that a test whose
    /// resolver does not answer fails quickly. Removed with the namespace.
    pub fn set_resolver(&self, server: &str) -> Result<()> {
        let dir = etc_dir(&self.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("resolv.conf");
        fs::write(
            &file,
            format!("nameserver {server}\noptions timeout:1 attempts:2\n"),
        )
        .with_context(|| format!("writing {}", file.display()))
    }
}

/// `/etc/netns/<name>`: the files `ip netns exec` mounts over `/etc` in the namespace.
fn etc_dir(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

/// Moves the calling thread into the named namespace (without owning it).
pub fn enter_thread(name: &str) -> Result<()> {
    let f = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Kills every process in the namespace, then deletes it, and its `/etc/netns/<name>`
/// files (`set_resolver`). Quiet if it does not exist.
pub fn remove(name: &str) {
    // Never a path outside /etc/netns (names are ours, but a slash would escape it).
    if !name.is_empty() && !name.contains('/') && name != "." && name != ".." {
        let _ = fs::remove_dir_all(etc_dir(name));
    }
    if !std::path::Path::new("/run/netns").join(name).exists() {
        return;
    }
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        let me = std::process::id() as i32;
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| *p != me)
        {
            // SAFETY: sending a signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..50 {
        if ip(&["netns", "del", name]).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
