//! A real etcd cluster for the fleet tests: Debian's etcd-server, `members` processes on
//! loopback (client and peer ports found free at start), each with its data directory
//! under one temporary directory; members can be stopped and started again (a majority
//! lost and restored); every process is killed and the directory removed on drop.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::unique_name;

pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
    /// Stopped by SIGSTOP (`pause_member`): its sockets stay open, nothing answers.
    paused: bool,
}

impl Member {
    /// Whether it runs and is not stalled: whether it can answer.
    fn answers(&self) -> bool {
        self.child.is_some() && !self.paused
    }
}

impl EtcdCluster {
    /// Starts a new cluster of `members` and waits until it has a leader and answers. The
    /// ports are picked free a moment before etcd binds them, and another process (another
    /// test's cluster) may take one meanwhile: a member that exits while the cluster
    /// starts (`bind: address already in use`) has the cluster started again on other
    /// ports, three times at most.
    pub fn start(members: usize) -> Result<Self> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start_once(members) {
                Err(e) if tries < 3 && e.to_string().contains("exited") => {
                    eprintln!("etcd cluster, try {tries}: {e:#}");
                }
                r => return r,
            }
        }
    }

    fn start_once(members: usize) -> Result<Self> {
        let token = unique_name("etcd");
        let dir = std::env::temp_dir().join(format!("privatelink-{token}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Held until all are picked: no two of this cluster's ports the same.
        let held = (0..2 * members)
            .map(|_| Ok(TcpListener::bind("127.0.0.1:0")?))
            .collect::<Result<Vec<_>>>()?;
        let ports = held
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<Result<Vec<u16>>>()?;
        drop(held);
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
                paused: false,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Self {
            dir,
            members,
            initial_cluster,
            token,
        };
        for i in 0..c.members.len() {
            c.start_member(i)?;
        }
        let start = Instant::now();
        while !c.members.iter().all(|m| healthy(m.client)) {
            for m in &mut c.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!(
                        "etcd member {} exited ({status}) while the cluster started:\n{}",
                        m.name,
                        std::fs::read_to_string(c.dir.join(format!("{}.log", m.name)))
                            .unwrap_or_default()
                            .lines()
                            .rev()
                            .take(5)
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                // As `wait_healthy` words it.
                c.wait_healthy(Duration::ZERO)?;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// The client URLs, comma-separated (what `--etcd` takes).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again: on its data directory, as a restarted member).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            // Fast elections: a test waits seconds, not tens of seconds, for a leader.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; `cargo xtask setup` installs it)")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL, as a crash).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.members[i].paused = false;
    }

    /// Stalls member `i` (SIGSTOP, as a process frozen by its host): its connections stay
    /// open and its port still accepts new ones, but it answers nothing, not even HTTP/2
    /// pings, until `resume_member`.
    pub fn pause_member(&mut self, i: usize) -> Result<()> {
        if let Some(status) = self.members[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!("etcd member {i} has exited ({status}): nothing to stall");
        }
        self.signal(i, libc::SIGSTOP)?;
        self.members[i].paused = true;
        Ok(())
    }

    /// Lets member `i` run again (SIGCONT).
    pub fn resume_member(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.members[i].paused = false;
        Ok(())
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let pid = self.members[i]
            .child
            .as_ref()
            .context("the member does not run")?
            .id();
        // SAFETY: kill(2) on the member's own child process; no memory is shared.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            bail!(
                "signal {sig} to etcd member {i}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// How many lease keep-alive streams member `i` holds open now, as its own metrics
    /// say (gRPC's streams started less those ended, of `etcdserverpb.Lease`'s
    /// `LeaseKeepAlive`): which member the daemons' renewals go to, seen from etcd.
    pub fn lease_streams(&self, i: usize) -> Result<u64> {
        let out = Command::new("curl")
            .args(["-sf", "-m", "2"])
            .arg(format!(
                "http://127.0.0.1:{}/metrics",
                self.members[i].client
            ))
            .output()?;
        if !out.status.success() {
            bail!("etcd member {i}'s /metrics did not answer");
        }
        let (mut started, mut ended) = (0.0, 0.0);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.contains("grpc_method=\"LeaseKeepAlive\"") {
                continue;
            }
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("a metric's value: {line}"))?;
            if line.starts_with("grpc_server_started_total{") {
                started += value;
            } else if line.starts_with("grpc_server_handled_total{") {
                ended += value;
            }
        }
        Ok((started - ended).max(0.0) as u64)
    }

    /// Which member leads, as the running members' status (`/v3/maintenance/status`
    /// through etcd's JSON gateway) says: the one whose own id is the leader's; asked
    /// again every 200 ms for `limit` (a member slow to answer, an election under way).
    pub fn leader(&self, limit: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            match self.leader_now() {
                Err(e) if start.elapsed() > limit => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                found => return found,
            }
        }
    }

    fn leader_now(&self) -> Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.answers() {
                continue;
            }
            let status = gateway(
                m.client,
                "/v3/maintenance/status",
                &serde_json::json!({}),
                2,
            );
            let Ok(v) = status else {
                continue;
            };
            if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                return Ok(i);
            }
        }
        bail!("no running member says it leads")
    }

    /// Waits until every running member answers `/health` as healthy (a leader elected).
    pub fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let all = self
                .members
                .iter()
                .filter(|m| m.answers())
                .all(|m| healthy(m.client));
            if all {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "etcd not healthy after {limit:?}:\n{}",
                    self.log()
                        .lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every key under `prefix` with the lease it is held under (0: none), in key order,
    /// as a running member answers through etcd's JSON gateway (`/v3/kv/range`): read
    /// independently of the daemons' own etcd client.
    pub fn leases_under(&self, prefix: &str) -> Result<Vec<(String, i64)>> {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let member = self
            .members
            .iter()
            .find(|m| m.answers())
            .context("no etcd member runs")?;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().context("an empty prefix")? += 1;
        let body = serde_json::json!({
            "key": STANDARD.encode(prefix),
            "range_end": STANDARD.encode(&end),
            "keys_only": true,
        });
        let v = gateway(member.client, "/v3/kv/range", &body, 5)?;
        let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| {
                let key = STANDARD.decode(kv["key"].as_str().context("a key")?)?;
                // int64 fields come as strings through the gateway; absent when 0.
                let lease = match &kv["lease"] {
                    serde_json::Value::Null => 0,
                    serde_json::Value::String(s) => s.parse()?,
                    other => other.as_i64().context("a lease")?,
                };
                Ok((String::from_utf8(key)?, lease))
            })
            .collect()
    }

    /// Every member's log.
    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the member whose client port is `port` answers to `body` POSTed to `path` of its
/// JSON gateway, within `limit` seconds.
fn gateway(
    port: u16,
    path: &str,
    body: &serde_json::Value,
    limit: u32,
) -> Result<serde_json::Value> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-m",
            &limit.to_string(),
            "-X",
            "POST",
            "-d",
            &body.to_string(),
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()?;
    if !out.status.success() {
        bail!(
            "etcd's {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Whether the member whose client port is `port` says it is healthy.
fn healthy(port: u16) -> bool {
    Command::new("curl")
        .args(["-sf", "-m", "1", &format!("http://127.0.0.1:{port}/health")])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"true\"")
        })
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
