//! A `privatelink daemon` in API mode inside a namespace of its own (with interfaces fc0
//! and fp0), its data directory and pins removed, and the process killed, on drop.

use std::{
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    lab::privatelink_bin,
    netns::{Netns, unique_name},
};

pub struct ApiDaemon {
    child: Child,
    conntrack_entries: u32,
    /// More options, given again at every restart (`with_args`).
    extra: Vec<String>,
    pub dir: PathBuf,
    pub pin: PathBuf,
    pub url: String,
    pub admin_token: String,
    pub ns: Netns,
}

impl ApiDaemon {
    pub fn start(prefix: &str) -> Result<Self> {
        Self::with_conntrack(prefix, 65536)
    }

    pub fn with_conntrack(prefix: &str, conntrack_entries: u32) -> Result<Self> {
        Self::with_args(prefix, conntrack_entries, &[])
    }

    /// `with_conntrack` with more options (`--etcd ...` for a daemon of a fleet).
    pub fn with_args(prefix: &str, conntrack_entries: u32, extra: &[String]) -> Result<Self> {
        let ns = Netns::create(&unique_name(prefix))?;
        ns.ip(&["link", "add", "fc0", "type", "veth", "peer", "name", "c0"])?;
        ns.ip(&["link", "add", "fp0", "type", "veth", "peer", "name", "p0"])?;
        for d in ["fc0", "c0", "fp0", "p0"] {
            ns.ip(&["link", "set", d, "up"])?;
        }
        let dir = std::env::temp_dir().join(format!("privatelink-{}", ns.name));
        let pin = PathBuf::from(format!("/sys/fs/bpf/privatelink-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let child = spawn(&ns, &dir, &pin, conntrack_entries, extra)?;
        // Owned before it is ready: a daemon that fails to start leaves no data directory
        // or pins behind (the drop removes them).
        let mut d = Self {
            child,
            conntrack_entries,
            extra: extra.to_vec(),
            dir: dir.clone(),
            pin,
            url: String::new(),
            admin_token: String::new(),
            ns,
        };
        d.url = wait_ready(&d.dir, &mut d.child)?;
        let token_file = match extra.iter().position(|a| a == "--admin-token-file") {
            Some(i) => PathBuf::from(&extra[i + 1]),
            None => dir.join("data/admin.token"),
        };
        d.admin_token = std::fs::read_to_string(token_file)?.trim().to_string();
        Ok(d)
    }

    /// `kill -9` (the namespace, data and pins stay for `start_again`).
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts a killed daemon again on the same data and pins; the time until it is ready.
    pub fn start_again(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.child = spawn(
            &self.ns,
            &self.dir,
            &self.pin,
            self.conntrack_entries,
            &self.extra,
        )?;
        self.url = wait_ready(&self.dir, &mut self.child)?;
        Ok(t.elapsed())
    }

    /// `kill -9`, start again on the same data and pins; the time until it is ready.
    pub fn restart(&mut self) -> Result<Duration> {
        self.kill()?;
        self.start_again()
    }

    /// Stops the process where it is (`SIGSTOP`): alive, its sockets open, silent.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused process run on (`SIGCONT`).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: a signal to this daemon's own child process.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, sig) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the daemon (every run of it since `start`) wrote to stderr: its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

fn spawn(
    ns: &Netns,
    dir: &std::path::Path,
    pin: &std::path::Path,
    entries: u32,
    extra: &[String],
) -> Result<Child> {
    let _ = std::fs::remove_file(dir.join("ready"));
    Ok(std::process::Command::new(privatelink_bin()?)
        .args(["daemon", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--netns", &ns.name])
        .args(["--conntrack-entries", &entries.to_string(), "--pin-dir"])
        .arg(pin)
        .arg("--ready-file")
        .arg(dir.join("ready"))
        .args(extra)
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("daemon.log"))?,
        )
        .spawn()?)
}

/// Waits for the ready file's whole line; returns the API URL in it. The daemon creates the
/// file and then writes the line: a file that exists can still be empty (or hold half the
/// line). Fails at once, with the daemon's log, if it exits first.
fn wait_ready(dir: &std::path::Path, child: &mut Child) -> Result<String> {
    let ready = dir.join("ready");
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&ready)
            && s.ends_with('\n')
        {
            return Ok(s.trim().to_string());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            anyhow::bail!("daemon exited ({status}) before it was ready:\n{log}");
        }
        anyhow::ensure!(start.elapsed().as_secs() < 60, "daemon not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for ApiDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// The lab's two parties through the API: accounts acct-a (consumer) and acct-b
/// (provider), VPC vpc-a on fc0 (vSwitches vsw-a1 10.10.1.0/24 in zone-a, vsw-a2
/// 10.10.2.0/24 in zone-b, and the small vsw-a3 10.10.3.0/29 in zone-a: four addresses to
/// allocate) and vpc-b on fp0 (vsw-b0 10.10.0.0/24), both 10.10.0.0/16. Returns their
/// clients (A, B).
pub fn two_parties(
    admin: &privatelink_user::client::Client,
    url: &str,
) -> Result<(
    privatelink_user::client::Client,
    privatelink_user::client::Client,
)> {
    use privatelink_user::client::Client;
    let (ta, tb) = two_party_tokens(admin)?;
    Ok((Client::new(url, Some(ta)), Client::new(url, Some(tb))))
}

/// `two_parties`, returning the two accounts' tokens (A, B) instead of clients.
pub fn two_party_tokens(admin: &privatelink_user::client::Client) -> Result<(String, String)> {
    party_tokens(admin, false)
}

/// `two_party_tokens` with dual-stack VPCs: vpc-a fd00:a::/56 (vsw-a1 fd00:a:0:1::/64,
/// vsw-a2 fd00:a:0:2::/64), vpc-b fd00:b::/56 (vsw-b0 fd00:b::/64), the ranges of the
/// packet tests' dual-stack lab (`dual`).
pub fn two_party_tokens_dual(admin: &privatelink_user::client::Client) -> Result<(String, String)> {
    party_tokens(admin, true)
}

fn party_tokens(admin: &privatelink_user::client::Client, dual: bool) -> Result<(String, String)> {
    use serde_json::json;
    let token = |id: &str| -> Result<String> {
        admin.post("/v1/accounts", &json!({"id": id}))?["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no token for {id}"))
    };
    let (ta, tb) = (token("acct-a")?, token("acct-b")?);
    let vsw = |id, zone, cidr, cidr6: Option<&str>| {
        let mut v = json!({"id": id, "zone": zone, "cidr": cidr});
        if let Some(c) = cidr6.filter(|_| dual) {
            v["ipv6_cidr"] = json!(c);
        }
        v
    };
    for (vpc, account, iface, vpc6, vswitches) in [
        (
            "vpc-a",
            "acct-a",
            "fc0",
            "fd00:a::/56",
            vec![
                vsw("vsw-a1", "zone-a", "10.10.1.0/24", Some("fd00:a:0:1::/64")),
                vsw("vsw-a2", "zone-b", "10.10.2.0/24", Some("fd00:a:0:2::/64")),
                vsw("vsw-a3", "zone-a", "10.10.3.0/29", None),
            ],
        ),
        (
            "vpc-b",
            "acct-b",
            "fp0",
            "fd00:b::/56",
            vec![vsw("vsw-b0", "zone-a", "10.10.0.0/24", Some("fd00:b::/64"))],
        ),
    ] {
        let mut v = json!({"id": vpc, "account": account, "cidr": "10.10.0.0/16",
                           "interface": iface, "vswitches": vswitches});
        if dual {
            v["ipv6_cidr"] = json!(vpc6);
        }
        admin.post("/v1/vpcs", &v)?;
    }
    Ok((ta, tb))
}
