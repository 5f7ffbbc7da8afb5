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
    pub dir: PathBuf,
    pub pin: PathBuf,
    pub url: String,
    pub admin_token: String,
    pub ns: Netns,
}

impl ApiDaemon {
    pub fn start(prefix: &str) -> Result<Self> {
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
        let ready = dir.join("ready");
        let child = std::process::Command::new(privatelink_bin()?)
            .args(["daemon", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0", "--netns", &ns.name])
            .args(["--conntrack-entries", "65536", "--pin-dir"])
            .arg(&pin)
            .arg("--ready-file")
            .arg(&ready)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut d = Self {
            child,
            dir: dir.clone(),
            pin,
            url: String::new(),
            admin_token: String::new(),
            ns,
        };
        let start = Instant::now();
        while !ready.exists() {
            anyhow::ensure!(start.elapsed().as_secs() < 30, "daemon not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        d.url = std::fs::read_to_string(&ready)?.trim().to_string();
        d.admin_token = std::fs::read_to_string(dir.join("data/admin.token"))?
            .trim()
            .to_string();
        Ok(d)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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
