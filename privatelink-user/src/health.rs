//! Health checking of targets (GWLB appliances, load balancers): a TCP connect or an HTTP
//! GET every `interval`, a target turning unhealthy after `unhealthy_threshold` failures in
//! a row and healthy again after `healthy_threshold` successes in a row (3/3 by default).
//! The checker only observes; whoever owns the data path reads its verdicts.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::timeout,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Probe {
    /// Healthy when a TCP connection opens.
    Tcp,
    /// Healthy when `GET path` answers 2xx or 3xx.
    Http { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    pub probe: Probe,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "three")]
    pub healthy_threshold: u32,
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

fn default_interval_ms() -> u64 {
    5000
}
fn default_timeout_ms() -> u64 {
    2000
}
fn three() -> u32 {
    3
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            probe: Probe::Tcp,
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

/// A target's state: healthy or not, and the current run of equal probe results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub streak: u32,
}

/// The threshold logic alone: the next state after one probe result. A target starts
/// healthy (traffic is not held back before the first checks).
pub fn step(h: Health, ok: bool, s: &HealthSettings) -> Health {
    match (h.healthy, ok) {
        (true, true) | (false, false) => Health {
            healthy: h.healthy,
            streak: 0,
        },
        (true, false) => {
            let n = h.streak + 1;
            if n >= s.unhealthy_threshold {
                Health {
                    healthy: false,
                    streak: 0,
                }
            } else {
                Health {
                    healthy: true,
                    streak: n,
                }
            }
        }
        (false, true) => {
            let n = h.streak + 1;
            if n >= s.healthy_threshold {
                Health {
                    healthy: true,
                    streak: 0,
                }
            } else {
                Health {
                    healthy: false,
                    streak: n,
                }
            }
        }
    }
}

/// One probe.
pub async fn probe(addr: SocketAddr, s: &HealthSettings) -> bool {
    let limit = Duration::from_millis(s.timeout_ms);
    let attempt = async {
        let mut c = TcpStream::connect(addr).await.ok()?;
        match &s.probe {
            Probe::Tcp => Some(true),
            Probe::Http { path } => {
                let req =
                    format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                c.write_all(req.as_bytes()).await.ok()?;
                let mut head = [0u8; 12];
                c.read_exact(&mut head).await.ok()?;
                // "HTTP/1.x NNN"
                let code = std::str::from_utf8(&head[9..12])
                    .ok()?
                    .parse::<u16>()
                    .ok()?;
                Some((200..400).contains(&code))
            }
        }
    };
    matches!(timeout(limit, attempt).await, Ok(Some(true)))
}

/// Checks `targets` forever; every change of verdicts is published on the returned channel.
pub fn spawn(
    targets: BTreeMap<String, SocketAddr>,
    s: HealthSettings,
) -> watch::Receiver<BTreeMap<String, Health>> {
    let start: BTreeMap<String, Health> = targets
        .keys()
        .map(|k| {
            (
                k.clone(),
                Health {
                    healthy: true,
                    streak: 0,
                },
            )
        })
        .collect();
    let (tx, rx) = watch::channel(start);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(s.interval_ms));
        loop {
            tick.tick().await;
            let mut next = tx.borrow().clone();
            for (id, addr) in &targets {
                let ok = probe(*addr, &s).await;
                let h = next.get(id).copied().unwrap_or(Health {
                    healthy: true,
                    streak: 0,
                });
                let n = step(h, ok, &s);
                if n.healthy != h.healthy {
                    tracing::warn!(target_id = %id, %addr, healthy = n.healthy, "health changed");
                }
                next.insert(id.clone(), n);
            }
            if tx.send(next).is_err() {
                return; // nobody listens any more
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_runs_in_a_row() {
        let s = HealthSettings::default();
        let mut h = Health {
            healthy: true,
            streak: 0,
        };
        for ok in [false, false, true, false, false] {
            h = step(h, ok, &s);
            assert!(
                h.healthy,
                "two failures, a success, two failures: still healthy"
            );
        }
        h = step(h, false, &s);
        assert!(!h.healthy, "the third failure in a row");
        for _ in 0..2 {
            h = step(h, true, &s);
            assert!(!h.healthy);
        }
        h = step(h, true, &s);
        assert!(h.healthy, "three successes in a row bring it back");
    }

    #[tokio::test]
    async fn probes_see_a_listener_come_and_go() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = HealthSettings {
            timeout_ms: 500,
            ..HealthSettings::default()
        };
        assert!(probe(addr, &s).await);
        drop(l);
        assert!(!probe(addr, &s).await, "nothing listens any more");
    }

    #[tokio::test]
    async fn http_probe_reads_the_status() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for code in ["200 OK", "503 Unavailable"] {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
                c.write_all(format!("HTTP/1.0 {code}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let s = HealthSettings {
            probe: Probe::Http {
                path: "/health".into(),
            },
            timeout_ms: 1000,
            ..HealthSettings::default()
        };
        assert!(probe(addr, &s).await);
        assert!(!probe(addr, &s).await, "503 is unhealthy");
    }

    #[tokio::test]
    async fn the_checker_publishes_transitions() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = HealthSettings {
            interval_ms: 20,
            timeout_ms: 200,
            ..HealthSettings::default()
        };
        let mut rx = spawn(BTreeMap::from([("a1".to_string(), addr)]), s);
        drop(l);
        let down = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.unwrap();
                if !rx.borrow()["a1"].healthy {
                    return;
                }
            }
        })
        .await;
        assert!(down.is_ok(), "the closed target turned unhealthy");
    }
}
