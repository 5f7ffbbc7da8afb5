//! Health checking of targets (GWLB appliances, load balancers): a TCP connect or an HTTP
//! GET every `interval`, a target turning unhealthy after `unhealthy_threshold` failures in
//! a row and healthy again after `healthy_threshold` successes in a row (3/3 by default).
//! Every target is probed by a task of its own, so a target that does not answer (and makes
//! its probe wait for the timeout) never delays the others. The checker only observes;
//! whoever owns the data path reads its verdicts.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use http_body_util::Empty;
use hyper::{
    Request, Version,
    body::Bytes,
    header::{CONNECTION, HOST},
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{Notify, watch},
    task::AbortHandle,
    time::{MissedTickBehavior, timeout},
};

pub use crate::model::health::{
    HealthSettings, MAX_THRESHOLD, MIN_INTERVAL_MS, MIN_TIMEOUT_MS, Probe,
};

/// A target's state: healthy or not, the current run of probe results that disagree with
/// it, and since when it has been in it (the last flip, or the start of its checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub streak: u32,
    pub since: SystemTime,
}

impl Health {
    /// Where every target starts: healthy (traffic is not held back before the first
    /// checks). `since` is a placeholder: a checker stamps it with its start.
    pub const START: Health = Health {
        healthy: true,
        streak: 0,
        since: SystemTime::UNIX_EPOCH,
    };
}

/// The threshold logic alone: the next state after one probe result. A target starts
/// healthy (traffic is not held back before the first checks). `since` is carried over:
/// whoever runs the probes stamps a flip with its time.
pub fn step(h: Health, ok: bool, s: &HealthSettings) -> Health {
    let (healthy, streak) = match (h.healthy, ok) {
        (true, true) | (false, false) => (h.healthy, 0),
        (true, false) => {
            let n = h.streak + 1;
            if n >= s.unhealthy_threshold {
                (false, 0)
            } else {
                (true, n)
            }
        }
        (false, true) => {
            let n = h.streak + 1;
            if n >= s.healthy_threshold {
                (true, 0)
            } else {
                (false, n)
            }
        }
    };
    Health {
        healthy,
        streak,
        since: h.since,
    }
}

/// Where probes leave from: a source address (the GWLB's own address in the appliances'
/// VPC) and the interface they must use (VPC ranges may overlap, so the routing table
/// alone cannot tell which VPC an address is in). Empty: the kernel chooses.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProbeSource {
    pub addr: Option<Ipv4Addr>,
    pub device: Option<String>,
}

/// One probe from the kernel's choice of source.
pub async fn probe(addr: SocketAddr, s: &HealthSettings) -> bool {
    probe_from(addr, s, &ProbeSource::default())
        .await
        .unwrap_or(false)
}

/// One probe from `from`. `Err` means the probe could not even be sent (the source address
/// is not configured on this host, the interface does not exist): the target counts as
/// failing, and the caller should tell the operator.
pub async fn probe_from(
    addr: SocketAddr,
    s: &HealthSettings,
    from: &ProbeSource,
) -> std::io::Result<bool> {
    let limit = Duration::from_millis(s.timeout_ms);
    let connect = async {
        if from == &ProbeSource::default() {
            return Ok::<_, std::io::Error>(TcpStream::connect(addr).await.ok());
        }
        let sock = TcpSocket::new_v4()?;
        if let Some(dev) = &from.device {
            sock.bind_device(Some(dev.as_bytes()))
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding to {dev}: {e}")))?;
        }
        if let Some(a) = from.addr {
            sock.bind(SocketAddr::new(IpAddr::V4(a), 0))
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding to {a}: {e}")))?;
        }
        Ok(sock.connect(addr).await.ok())
    };
    let attempt = async {
        let Some(c) = connect.await? else {
            return Ok(false);
        };
        match &s.probe {
            Probe::Tcp => Ok(true),
            Probe::Http { path } => Ok(http_ok(c, addr, path).await.unwrap_or(false)),
        }
    };
    timeout(limit, attempt).await.unwrap_or(Ok(false))
}

/// `GET path` over the connected `c` (HTTP/1.0, `Host: addr`, `Connection: close`):
/// whether the status is 2xx or 3xx; `None` when no response head arrives.
async fn http_ok(c: TcpStream, addr: SocketAddr, path: &str) -> Option<bool> {
    let req = Request::get(request_target(path))
        .version(Version::HTTP_10)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(c))
        .await
        .ok()?;
    // The connection is driven here, beside the request: only until the response head.
    let response = sender.send_request(req);
    tokio::pin!(response);
    let response = tokio::select! {
        r = &mut response => r,
        // The connection ended: the response, if it came, is ready now.
        _ = conn => response.await,
    };
    Some((200..400).contains(&response.ok()?.status().as_u16()))
}

/// `path` as a request target: the few characters a valid `probe.path` may hold that a
/// URI may not (`#<>` and the backquote; `"` in the query) percent-encoded, the rest as
/// it is.
fn request_target(path: &str) -> String {
    let mut t = String::with_capacity(path.len());
    let mut query = false;
    for c in path.chars() {
        match c {
            '#' | '<' | '>' | '`' => t.push_str(&format!("%{:02X}", c as u32)),
            '"' if query => t.push_str("%22"),
            c => {
                query |= c == '?';
                t.push(c);
            }
        }
    }
    t
}

/// A running checker: one task per target, stopped when this is dropped.
pub struct Checker<K> {
    rx: watch::Receiver<BTreeMap<K, Health>>,
    tasks: Vec<AbortHandle>,
}

impl<K> Drop for Checker<K> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl<K: Clone + Ord> Checker<K> {
    /// The current state of every target.
    pub fn verdicts(&self) -> BTreeMap<K, Health> {
        self.rx.borrow().clone()
    }

    /// A channel that changes whenever a target's verdict (healthy or not) changes.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<K, Health>> {
        self.rx.clone()
    }

    /// A checker that probes nothing and holds `verdicts` (tests of its readers).
    #[cfg(test)]
    pub(crate) fn fixed(verdicts: BTreeMap<K, Health>) -> Self {
        let (_tx, rx) = watch::channel(verdicts);
        Checker {
            rx,
            tasks: Vec::new(),
        }
    }
}

/// How a checker runs besides its targets and settings.
#[derive(Clone, Debug, Default)]
pub struct CheckerOptions<K> {
    pub source: ProbeSource,
    /// Targets' states to start from (a restarted checker keeps what it knew); others
    /// start healthy.
    pub start: BTreeMap<K, Health>,
    /// Notified whenever a verdict changes (besides the watch channel).
    pub notify: Option<Arc<Notify>>,
    /// Named in log lines (the service the targets belong to).
    pub label: String,
}

/// Checks `targets` until the returned checker is dropped. Each target is probed every
/// interval by its own task; a change of verdict is published on the checker's channel
/// (and `notify`) with the time of the change in `since`. A target not in `opts.start`
/// starts healthy since now. Must be called inside a tokio runtime.
pub fn spawn<K>(
    targets: BTreeMap<K, SocketAddr>,
    s: HealthSettings,
    opts: CheckerOptions<K>,
) -> Checker<K>
where
    K: Clone + Ord + Send + Sync + std::fmt::Display + 'static,
{
    let now = SystemTime::now();
    let start: BTreeMap<K, Health> = targets
        .keys()
        .map(|k| {
            let fresh = Health {
                since: now,
                ..Health::START
            };
            (k.clone(), opts.start.get(k).copied().unwrap_or(fresh))
        })
        .collect();
    let (tx, rx) = watch::channel(start.clone());
    let tx = Arc::new(tx);
    let s = Arc::new(s);
    let tasks = targets
        .into_iter()
        .map(|(id, addr)| {
            let tx = tx.clone();
            let s = s.clone();
            let from = opts.source.clone();
            let notify = opts.notify.clone();
            let label = opts.label.clone();
            let mut h = start[&id];
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(s.interval_ms.max(1)));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut told = false;
                loop {
                    tick.tick().await;
                    let ok = match probe_from(addr, &s, &from).await {
                        Ok(ok) => {
                            told = false;
                            ok
                        }
                        Err(e) => {
                            if !told {
                                tracing::warn!(
                                    service = %label, target = %id, %addr,
                                    "cannot send health probes ({e}); the target counts as failing"
                                );
                                told = true;
                            }
                            false
                        }
                    };
                    let mut n = step(h, ok, &s);
                    let changed = n.healthy != h.healthy;
                    if changed {
                        n.since = SystemTime::now();
                    }
                    h = n;
                    tx.send_if_modified(|m| {
                        m.insert(id.clone(), n);
                        changed
                    });
                    if changed && let Some(n) = &notify {
                        n.notify_one();
                    }
                }
            })
            .abort_handle()
        })
        .collect();
    Checker { rx, tasks }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn thresholds_need_runs_in_a_row() {
        let s = HealthSettings::default();
        let mut h = Health::START;
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
    async fn http_probe_sends_the_same_request() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for code in ["302 Found", "404 Not Found", "199 Odd"] {
                let (mut c, _) = l.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 256];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = c.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the request ended early: {req:?}");
                    req.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8(req).unwrap());
                c.write_all(format!("HTTP/1.0 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            seen
        });
        let s = |path: &str| HealthSettings {
            probe: Probe::Http { path: path.into() },
            timeout_ms: 1000,
            ..HealthSettings::default()
        };
        assert!(probe(addr, &s("/health")).await, "3xx is healthy");
        assert!(
            !probe(addr, &s("/a<b>?q=\"x\"#f")).await,
            "404 is unhealthy"
        );
        assert!(
            !probe(addr, &s("/")).await,
            "a 1xx and no final status is unhealthy"
        );
        let seen = server.await.unwrap();
        let want = |target: &str| {
            format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        };
        assert_eq!(seen[0], want("/health"));
        assert_eq!(seen[1], want("/a%3Cb%3E?q=%22x%22%23f"));
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
        let notify = Arc::new(Notify::new());
        let t0 = SystemTime::now();
        let checker = spawn(
            BTreeMap::from([("a1".to_string(), addr)]),
            s,
            CheckerOptions {
                notify: Some(notify.clone()),
                ..CheckerOptions::default()
            },
        );
        let mut rx = checker.subscribe();
        let start = checker.verdicts()["a1"];
        assert!(start.healthy, "a target starts healthy");
        assert!(start.since >= t0, "healthy since its checks started");
        drop(l);
        let t1 = SystemTime::now();
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
        let since = checker.verdicts()["a1"].since;
        assert!(
            t1 <= since && since <= SystemTime::now(),
            "unhealthy since the flip"
        );
        tokio::time::timeout(Duration::from_secs(1), notify.notified())
            .await
            .expect("the verdict change was notified");
    }

    /// A target that never answers (its probes wait for the whole timeout) does not slow
    /// down the verdicts on the others.
    #[tokio::test]
    async fn a_silent_target_does_not_delay_the_others() {
        // An HTTP target that completes the handshake (the kernel does, from the backlog)
        // but never answers: each of its probes waits for the whole timeout.
        let silent_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent = silent_l.local_addr().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = l.local_addr().unwrap();
        let s = HealthSettings {
            interval_ms: 20,
            timeout_ms: 2000,
            unhealthy_threshold: 1,
            probe: Probe::Http { path: "/".into() },
            ..HealthSettings::default()
        };
        let checker = spawn(
            BTreeMap::from([
                ("a-silent".to_string(), silent),
                ("b-live".to_string(), live),
            ]),
            s,
            CheckerOptions::default(),
        );
        let mut rx = checker.subscribe();
        drop(l);
        let t0 = std::time::Instant::now();
        tokio::time::timeout(Duration::from_millis(1000), async {
            loop {
                if !rx.borrow_and_update()["b-live"].healthy {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the closed live target turned unhealthy before the silent one timed out");
        assert!(t0.elapsed() < Duration::from_millis(1000));
        assert!(
            checker.verdicts()["a-silent"].healthy,
            "one timeout is not a verdict yet"
        );
        drop(silent_l);
    }

    #[test]
    fn settings_are_checked() {
        assert!(HealthSettings::default().check().is_ok());
        let bad = |f: fn(&mut HealthSettings)| {
            let mut s = HealthSettings::default();
            f(&mut s);
            s.check().unwrap_err().0
        };
        assert_eq!(bad(|s| s.interval_ms = 49), "interval_ms");
        assert_eq!(bad(|s| s.timeout_ms = 9), "timeout_ms");
        assert_eq!(bad(|s| s.healthy_threshold = 0), "healthy_threshold");
        assert_eq!(bad(|s| s.unhealthy_threshold = 11), "unhealthy_threshold");
        assert_eq!(bad(|s| s.port = 0), "port");
        assert_eq!(
            bad(|s| s.probe = Probe::Http { path: "x y".into() }),
            "probe.path"
        );
        let s: HealthSettings = toml::from_str("port = 8080").unwrap();
        assert_eq!((s.probe, s.port, s.interval_ms), (Probe::Tcp, 8080, 5000));
    }

    #[tokio::test]
    async fn an_unusable_source_is_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = HealthSettings::default();
        // 192.0.2.1 (TEST-NET-1) is not configured here.
        let from = ProbeSource {
            addr: Some("192.0.2.1".parse().unwrap()),
            device: None,
        };
        assert!(
            probe_from(l.local_addr().unwrap(), &s, &from)
                .await
                .is_err()
        );
        let from = ProbeSource {
            addr: Some("127.0.0.1".parse().unwrap()),
            device: None,
        };
        assert!(
            probe_from(l.local_addr().unwrap(), &s, &from)
                .await
                .unwrap()
        );
    }
}
