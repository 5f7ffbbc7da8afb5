//! Health checks of every GWLB service's appliances, and the health view they give the
//! data path (`Unhealthy`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    health::{self, CheckerOptions, HealthSettings, ProbeSource},
    model::{State, numeric_id},
};

/// The health view: GWLB appliances currently judged unhealthy, as (VPC id, address).
/// Empty: every appliance is healthy.
pub type Unhealthy = BTreeSet<(u32, [u8; 4])>;

/// What one GWLB service's checker does; a change restarts the checker.
#[derive(Clone, Debug, PartialEq)]
struct CheckSpec {
    vpc_id: u32,
    settings: HealthSettings,
    source: ProbeSource,
    appliances: BTreeMap<Ipv4Addr, SocketAddr>,
}

struct ServiceChecker {
    spec: CheckSpec,
    checker: health::Checker<Ipv4Addr>,
}

/// Health checks of every GWLB service's appliances: one checker per service, probing its
/// appliances concurrently with the service's settings, from the service's GWLB address on
/// the service VPC's interface. A checker is restarted when its service's settings or
/// appliances change (appliances it keeps keep their verdicts; new ones start healthy) and
/// stopped when the service disappears. Verdict changes wake whoever waits on `notify()`.
pub struct HealthMonitor {
    checkers: BTreeMap<String, ServiceChecker>,
    notify: Arc<Notify>,
    /// The unhealthy set last handed to the data path, to log what changed.
    reported: Unhealthy,
}

impl Default for HealthMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthMonitor {
    pub fn new() -> Self {
        Self {
            checkers: BTreeMap::new(),
            notify: Arc::new(Notify::new()),
            reported: Unhealthy::new(),
        }
    }

    /// Notified whenever an appliance's verdict changes.
    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// What each GWLB service of `s` should be checked with.
    fn specs(s: &State) -> BTreeMap<String, CheckSpec> {
        s.services
            .iter()
            .filter_map(|svc| {
                let g = svc.gwlb.as_ref()?;
                let vpc = s.vpc(&svc.vpc)?;
                let appliances = svc
                    .backends
                    .iter()
                    .map(|b| (b.address, SocketAddr::from((b.address, g.health.port))))
                    .collect();
                Some((
                    svc.id.clone(),
                    CheckSpec {
                        vpc_id: numeric_id(&svc.vpc),
                        settings: g.health.clone(),
                        source: ProbeSource {
                            addr: Some(g.address),
                            device: Some(vpc.interface.clone()),
                        },
                        appliances,
                    },
                ))
            })
            .collect()
    }

    /// Starts, restarts and stops checkers so that exactly the GWLB services of `s` are
    /// checked, each with its current settings. Needs a tokio runtime (the daemon's).
    pub fn sync(&mut self, s: &State) {
        let want = Self::specs(s);
        self.checkers.retain(|id, _| {
            let keep = want.contains_key(id);
            if !keep {
                info!(service = %id, "appliance health checks stopped");
            }
            keep
        });
        for (id, spec) in want {
            let old = self.checkers.get(&id);
            if old.is_some_and(|c| c.spec == spec) {
                continue;
            }
            if tokio::runtime::Handle::try_current().is_err() {
                warn!(service = %id, "no async runtime: appliances are not health-checked");
                continue;
            }
            let start = match old {
                Some(c) if c.spec.vpc_id == spec.vpc_id => c.checker.verdicts(),
                _ => BTreeMap::new(),
            };
            let checker = health::spawn(
                spec.appliances.clone(),
                spec.settings.clone(),
                CheckerOptions {
                    source: spec.source.clone(),
                    start,
                    notify: Some(self.notify.clone()),
                    label: id.clone(),
                },
            );
            info!(
                service = %id,
                appliances = spec.appliances.len(),
                port = spec.settings.port,
                interval_ms = spec.settings.interval_ms,
                from = ?spec.source.addr,
                "appliance health checks {}",
                if old.is_some() { "restarted" } else { "started" }
            );
            self.checkers.insert(id, ServiceChecker { spec, checker });
        }
    }

    /// The appliances currently judged unhealthy.
    pub fn unhealthy(&self) -> Unhealthy {
        self.checkers
            .values()
            .flat_map(|c| {
                let vpc_id = c.spec.vpc_id;
                c.checker
                    .verdicts()
                    .into_iter()
                    .filter(|(_, h)| !h.healthy)
                    .map(move |(a, _)| (vpc_id, a.octets()))
            })
            .collect()
    }

    /// The current unhealthy set, logging every appliance whose verdict changed since the
    /// last call.
    pub fn take(&mut self) -> Unhealthy {
        let now = self.unhealthy();
        for (id, c) in &self.checkers {
            for a in c.spec.appliances.keys() {
                let key = (c.spec.vpc_id, a.octets());
                let (was, is) = (!self.reported.contains(&key), !now.contains(&key));
                if was != is {
                    warn!(service = %id, appliance = %a, healthy = is, "appliance health changed");
                }
            }
        }
        self.reported = now.clone();
        now
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A GWLB service whose appliances are loopback addresses, probed over `lo`.
    fn state(appliances: &[&str], port: u16) -> State {
        let backends: Vec<String> = appliances
            .iter()
            .map(|a| format!("{{ zone = \"zone-a\", address = \"{a}\" }}"))
            .collect();
        toml::from_str(&format!(
            r#"
            [[accounts]]
            id = "acct"
            [[vpcs]]
            id = "vpc-l"
            account = "acct"
            cidr = "127.0.0.0/8"
            interface = "lo"
            vswitches = [{{ id = "vsw", zone = "zone-a", cidr = "127.0.0.0/24" }}]
            [[services]]
            id = "gwlb-l"
            account = "acct"
            type = "gwlb"
            vpc = "vpc-l"
            backends = [{}]
            [services.gwlb]
            address = "127.0.0.1"
            health = {{ port = {port}, interval_ms = 50, timeout_ms = 200, healthy_threshold = 1, unhealthy_threshold = 1 }}
            "#,
            backends.join(", ")
        ))
        .unwrap()
    }

    fn key(a: &str) -> (u32, [u8; 4]) {
        (numeric_id("vpc-l"), a.parse::<Ipv4Addr>().unwrap().octets())
    }

    #[tokio::test]
    async fn the_monitor_follows_services_and_verdicts() {
        // Probes are bound to the VPC's interface (SO_BINDTODEVICE needs CAP_NET_RAW).
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let b = std::net::TcpListener::bind(("127.0.0.3", port)).unwrap();
        let mut m = HealthMonitor::new();
        let notify = m.notify();
        m.sync(&state(&["127.0.0.2", "127.0.0.3"], port));
        assert!(m.take().is_empty(), "appliances start healthy");
        drop(b);
        tokio::time::timeout(Duration::from_secs(3), notify.notified())
            .await
            .expect("a verdict change is notified");
        assert_eq!(m.take(), Unhealthy::from([key("127.0.0.3")]));
        // A new appliance restarts the checker; the others keep their verdicts.
        m.sync(&state(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], port));
        assert_eq!(m.unhealthy(), Unhealthy::from([key("127.0.0.3")]));
        tokio::time::timeout(Duration::from_secs(3), async {
            while !m.unhealthy().contains(&key("127.0.0.4")) {
                notify.notified().await;
            }
        })
        .await
        .expect("the new appliance is checked");
        assert!(!m.unhealthy().contains(&key("127.0.0.2")));
        // The same settings again change nothing; a removed service stops its checks.
        m.sync(&state(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], port));
        assert_eq!(m.checkers.len(), 1);
        m.sync(&State::default());
        assert!(m.checkers.is_empty() && m.unhealthy().is_empty());
        drop(a);
    }
}
