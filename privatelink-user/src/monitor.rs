//! Health checks of every GWLB service's appliances and of every zone's provider load
//! balancer of the interface services, the health view they give the data path and DNS
//! (`Unhealthy`), and the report `privatelink status` shows (`HealthRow`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::SystemTime,
};

use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    health::{self, CheckerOptions, Health, HealthSettings, ProbeSource},
    model::{EndpointService, State, numeric_id},
};

/// The health view: GWLB appliances and provider load balancers currently judged
/// unhealthy, as (numeric id of the VPC they are in, address). Empty: everything is
/// healthy. A load balancer two services share (same VPC and address) is unhealthy when
/// either service's checks say so.
pub type Unhealthy = BTreeSet<(u32, [u8; 4])>;

/// What a checked target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A zone's provider load balancer of an interface service.
    LoadBalancer,
    /// An inspection appliance of a GWLB service.
    Appliance,
}

impl TargetKind {
    /// How log lines name it.
    fn noun(self) -> &'static str {
        match self {
            Self::LoadBalancer => "load balancer",
            Self::Appliance => "appliance",
        }
    }
}

/// One checked target and its verdict, as `privatelink status` and `GET /v1/status` show
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HealthRow {
    pub service: String,
    pub zone: String,
    #[schema(value_type = String, example = "10.10.0.10")]
    pub address: Ipv4Addr,
    pub kind: TargetKind,
    pub healthy: bool,
    /// Since when it has been in this state (its last change, or the start of its
    /// checks): RFC 3339, UTC.
    #[schema(example = "2026-12-01T21:34:07Z")]
    pub since: String,
}

/// How an interface service's load balancers are checked: its `health` settings, or
/// without them a TCP connect to its first TCP listener's port with the default
/// interval, timeout and thresholds. None: nothing to check (GWLB and gateway services,
/// and interface services with only UDP listeners and no `health`).
pub fn lb_probe(svc: &EndpointService) -> Option<HealthSettings> {
    svc.lb_health()
}

/// What one service's checker does; a change restarts the checker.
#[derive(Clone, Debug, PartialEq)]
struct CheckSpec {
    kind: TargetKind,
    vpc_id: u32,
    settings: HealthSettings,
    source: ProbeSource,
    /// Target address -> where it is probed.
    targets: BTreeMap<Ipv4Addr, SocketAddr>,
    /// Target address -> its zone (for the report and the logs).
    zones: BTreeMap<Ipv4Addr, String>,
}

struct ServiceChecker {
    spec: CheckSpec,
    checker: health::Checker<Ipv4Addr>,
}

/// Health checks of every GWLB service's appliances (from the service's GWLB address) and
/// of every interface service's load balancers whose VPC has a probe address (from it):
/// one checker per service, probing its targets concurrently with the service's
/// settings, bound to the service VPC's interface (VPCs overlap: the routing table alone
/// cannot tell which VPC an address is in). A checker is restarted when its service's
/// settings or targets change (targets it keeps keep their verdicts; new ones start
/// healthy) and stopped when the service, or its VPC's probe address, disappears.
/// Verdict changes wake whoever waits on `notify()`.
pub struct HealthMonitor {
    checkers: BTreeMap<String, ServiceChecker>,
    notify: Arc<Notify>,
    /// Each (service, target)'s verdict as last logged by `take`.
    reported: BTreeMap<(String, Ipv4Addr), bool>,
    /// Each (interface service, zone)'s availability (some load balancer healthy) as last
    /// logged by `take`.
    reported_zones: BTreeMap<(String, String), bool>,
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
            reported: BTreeMap::new(),
            reported_zones: BTreeMap::new(),
        }
    }

    /// Notified whenever a target's verdict changes.
    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// What each checked service of `s` should be checked with.
    fn specs(s: &State) -> BTreeMap<String, CheckSpec> {
        s.services
            .iter()
            .filter_map(|svc| {
                let vpc = s.vpc(&svc.vpc)?;
                let (kind, settings, from) = match &svc.gwlb {
                    Some(g) => (TargetKind::Appliance, g.health.clone(), g.address),
                    None => (TargetKind::LoadBalancer, lb_probe(svc)?, vpc.probe_address?),
                };
                let targets = svc
                    .backends
                    .iter()
                    .map(|b| (b.address, SocketAddr::from((b.address, settings.port))))
                    .collect();
                let zones = svc
                    .backends
                    .iter()
                    .map(|b| (b.address, b.zone.clone()))
                    .collect();
                Some((
                    svc.id.clone(),
                    CheckSpec {
                        kind,
                        vpc_id: numeric_id(&svc.vpc),
                        settings,
                        source: ProbeSource {
                            addr: Some(from),
                            device: Some(vpc.interface.clone()),
                        },
                        targets,
                        zones,
                    },
                ))
            })
            .collect()
    }

    /// Starts, restarts and stops checkers so that exactly the checked services of `s`
    /// are checked, each with its current settings. Needs a tokio runtime (the daemon's).
    pub fn sync(&mut self, s: &State) {
        let want = Self::specs(s);
        self.checkers.retain(|id, c| {
            let keep = want.contains_key(id);
            if !keep {
                info!(service = %id, "{} health checks stopped", c.spec.kind.noun());
            }
            keep
        });
        for (id, spec) in want {
            let old = self.checkers.get(&id);
            if old.is_some_and(|c| c.spec == spec) {
                continue;
            }
            let noun = spec.kind.noun();
            if tokio::runtime::Handle::try_current().is_err() {
                warn!(service = %id, "no async runtime: {noun}s are not health-checked");
                continue;
            }
            // Verdicts carry over while the targets stay the same things in the same VPC.
            let start = match old {
                Some(c) if c.spec.vpc_id == spec.vpc_id && c.spec.kind == spec.kind => {
                    c.checker.verdicts()
                }
                _ => BTreeMap::new(),
            };
            let checker = health::spawn(
                spec.targets.clone(),
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
                targets = spec.targets.len(),
                port = spec.settings.port,
                interval_ms = spec.settings.interval_ms,
                from = ?spec.source.addr,
                "{noun} health checks {}",
                if old.is_some() { "restarted" } else { "started" }
            );
            self.checkers.insert(id, ServiceChecker { spec, checker });
        }
    }

    /// Every target's current verdict, with its service's id and spec.
    fn verdicts(&self) -> Vec<(&String, &CheckSpec, BTreeMap<Ipv4Addr, Health>)> {
        self.checkers
            .iter()
            .map(|(id, c)| (id, &c.spec, c.checker.verdicts()))
            .collect()
    }

    fn unhealthy_of(v: &[(&String, &CheckSpec, BTreeMap<Ipv4Addr, Health>)]) -> Unhealthy {
        v.iter()
            .flat_map(|(_, spec, m)| {
                m.iter()
                    .filter(|(_, h)| !h.healthy)
                    .map(|(a, _)| (spec.vpc_id, a.octets()))
            })
            .collect()
    }

    /// The targets currently judged unhealthy.
    pub fn unhealthy(&self) -> Unhealthy {
        Self::unhealthy_of(&self.verdicts())
    }

    /// The current unhealthy set, logging every target whose verdict changed since the
    /// last call (once per change), and every zone of an interface service that lost its
    /// last healthy load balancer or got one back.
    pub fn take(&mut self) -> Unhealthy {
        let v = self.verdicts();
        let mut reported = BTreeMap::new();
        let mut zones: BTreeMap<(String, String), bool> = BTreeMap::new();
        for (id, spec, m) in &v {
            for (a, h) in m {
                let key = ((*id).clone(), *a);
                let zone = spec.zones.get(a).map(String::as_str).unwrap_or("");
                // A target not reported yet was healthy (where every target starts).
                if self.reported.get(&key).copied().unwrap_or(true) != h.healthy {
                    warn!(
                        service = %id, zone, address = %a, healthy = h.healthy,
                        "{} health changed", spec.kind.noun()
                    );
                }
                reported.insert(key, h.healthy);
                if spec.kind == TargetKind::LoadBalancer {
                    *zones.entry(((*id).clone(), zone.to_string())).or_default() |= h.healthy;
                }
            }
        }
        for (key, up) in &zones {
            if self.reported_zones.get(key).copied().unwrap_or(true) != *up {
                let (id, zone) = key;
                if *up {
                    warn!(
                        service = %id, zone,
                        "zone up: new flows at its ENIs go to its own load balancers again"
                    );
                } else {
                    warn!(
                        service = %id, zone,
                        "zone down, no healthy load balancer: new flows at its ENIs go to the \
                         healthy ones of the other zones (to all of them while none is healthy)"
                    );
                }
            }
        }
        let unhealthy = Self::unhealthy_of(&v);
        self.reported = reported;
        self.reported_zones = zones;
        unhealthy
    }

    /// Every checked target with its verdict and since when, by service, zone and
    /// address.
    pub fn health(&self) -> Vec<HealthRow> {
        let mut rows: Vec<HealthRow> = self
            .verdicts()
            .into_iter()
            .flat_map(|(id, spec, m)| {
                m.into_iter().map(move |(a, h)| HealthRow {
                    service: id.clone(),
                    zone: spec.zones.get(&a).cloned().unwrap_or_default(),
                    address: a,
                    kind: spec.kind,
                    healthy: h.healthy,
                    since: rfc3339(h.since),
                })
            })
            .collect();
        rows.sort_by(|x, y| {
            (&x.service, &x.zone, x.address).cmp(&(&y.service, &y.zone, y.address))
        });
        rows
    }
}

/// `t` as RFC 3339 in UTC to the second (`2026-12-01T21:34:07Z`); times before 1970 as
/// 1970-01-01T00:00:00Z.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{ListenerProtocol, ServiceType};

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

    /// An interface service whose two zones' load balancers are loopback addresses,
    /// probed from the VPC's probe address over `lo`; `health` as a TOML inline table or
    /// empty (the default probe on the first TCP listener).
    fn lb_state(port: u16, probe_address: bool, health: &str) -> State {
        let probe = if probe_address {
            "probe_address = \"127.0.0.1\""
        } else {
            ""
        };
        let health = if health.is_empty() {
            String::new()
        } else {
            format!("health = {health}")
        };
        toml::from_str(&format!(
            r#"
            [[accounts]]
            id = "acct"
            [[vpcs]]
            id = "vpc-l"
            account = "acct"
            cidr = "127.0.0.0/8"
            interface = "lo"
            {probe}
            vswitches = [{{ id = "vsw", zone = "zone-a", cidr = "127.0.0.0/24" }}]
            [[services]]
            id = "svc-l"
            account = "acct"
            type = "interface"
            vpc = "vpc-l"
            backends = [{{ zone = "zone-a", address = "127.0.0.2" }}, {{ zone = "zone-b", address = "127.0.0.3" }}]
            snat = ["127.0.0.200"]
            listeners = [{{ protocol = "udp", port = 53 }}, {{ protocol = "tcp", port = {port} }}]
            {health}
            "#
        ))
        .unwrap()
    }

    #[test]
    fn load_balancers_are_probed_on_the_health_port_or_the_first_tcp_listener() {
        let s = lb_state(8443, true, "");
        let want = HealthSettings {
            port: 8443,
            ..HealthSettings::default()
        };
        assert_eq!(lb_probe(&s.services[0]), Some(want.clone()));
        let spec = &HealthMonitor::specs(&s)["svc-l"];
        assert_eq!(
            (
                spec.kind,
                &spec.settings,
                spec.source.addr,
                spec.source.device.as_deref()
            ),
            (
                TargetKind::LoadBalancer,
                &want,
                Some(Ipv4Addr::new(127, 0, 0, 1)),
                Some("lo")
            )
        );
        assert_eq!(
            spec.targets[&Ipv4Addr::new(127, 0, 0, 3)],
            "127.0.0.3:8443".parse().unwrap()
        );
        assert_eq!(spec.zones[&Ipv4Addr::new(127, 0, 0, 3)], "zone-b");
        // The service's settings, port included.
        let s = lb_state(8443, true, "{ port = 9000, interval_ms = 100 }");
        let spec = &HealthMonitor::specs(&s)["svc-l"];
        assert_eq!((spec.settings.port, spec.settings.interval_ms), (9000, 100));
        assert_eq!(
            spec.targets[&Ipv4Addr::new(127, 0, 0, 2)],
            "127.0.0.2:9000".parse().unwrap()
        );
        // Only UDP listeners and no settings: not probed.
        let mut s = lb_state(8443, true, "");
        s.services[0]
            .listeners
            .retain(|l| l.protocol == ListenerProtocol::Udp);
        assert_eq!(lb_probe(&s.services[0]), None);
        assert!(HealthMonitor::specs(&s).is_empty());
        // No probe address in the VPC: not probed.
        assert!(HealthMonitor::specs(&lb_state(8443, false, "")).is_empty());
        // Gateway services have no load balancers to probe.
        let mut s = lb_state(8443, true, "");
        s.services[0].kind = ServiceType::Gateway;
        assert!(HealthMonitor::specs(&s).is_empty());
    }

    #[test]
    fn the_report_lists_every_target_with_its_zone_and_since() {
        let s = lb_state(80, true, "");
        let mut m = HealthMonitor::new();
        let spec = HealthMonitor::specs(&s).remove("svc-l").unwrap();
        let at = |secs: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let verdicts = BTreeMap::from([
            (
                Ipv4Addr::new(127, 0, 0, 2),
                Health {
                    healthy: true,
                    streak: 1,
                    since: at(1_798_761_600),
                },
            ),
            (
                Ipv4Addr::new(127, 0, 0, 3),
                Health {
                    healthy: false,
                    streak: 0,
                    since: at(1_798_761_661),
                },
            ),
        ]);
        m.checkers.insert(
            "svc-l".into(),
            ServiceChecker {
                spec,
                checker: health::Checker::fixed(verdicts),
            },
        );
        let row = |zone: &str, last: u8, healthy: bool, since: &str| HealthRow {
            service: "svc-l".into(),
            zone: zone.into(),
            address: Ipv4Addr::new(127, 0, 0, last),
            kind: TargetKind::LoadBalancer,
            healthy,
            since: since.into(),
        };
        assert_eq!(
            m.health(),
            [
                row("zone-a", 2, true, "2027-01-01T00:00:00Z"),
                row("zone-b", 3, false, "2027-01-01T00:01:01Z"),
            ]
        );
        assert_eq!(
            serde_json::to_value(&m.health()[1]).unwrap(),
            serde_json::json!({
                "service": "svc-l", "zone": "zone-b", "address": "127.0.0.3",
                "kind": "load_balancer", "healthy": false, "since": "2027-01-01T00:01:01Z"
            })
        );
        let key = (numeric_id("vpc-l"), [127, 0, 0, 3]);
        assert_eq!(m.unhealthy(), Unhealthy::from([key]));
        // `take` hands the same set over (and logs the change once).
        assert_eq!(m.take(), Unhealthy::from([key]));
        assert!(!m.reported[&("svc-l".into(), Ipv4Addr::new(127, 0, 0, 3))]);
        assert!(!m.reported_zones[&("svc-l".into(), "zone-b".into())]);
        assert!(m.reported_zones[&("svc-l".into(), "zone-a".into())]);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        // Checked against `date -u -d @N +%FT%TZ`.
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_399), "2000-02-28T23:59:59Z");
        assert_eq!(at(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(at(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(at(1_796_160_847), "2026-12-01T21:34:07Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[tokio::test]
    async fn zones_load_balancers_are_probed_from_the_probe_address() {
        // Probes are bound to the VPC's interface (SO_BINDTODEVICE needs CAP_NET_RAW).
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let b = std::net::TcpListener::bind(("127.0.0.3", port)).unwrap();
        let fast = "{ interval_ms = 50, timeout_ms = 200, healthy_threshold = 1, unhealthy_threshold = 1, port = PORT }"
            .replace("PORT", &port.to_string());
        let s = lb_state(port, true, &fast);
        let mut m = HealthMonitor::new();
        let notify = m.notify();
        let t0 = SystemTime::now();
        m.sync(&s);
        assert!(m.take().is_empty(), "load balancers start healthy");
        let rows = m.health();
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|r| r.healthy && r.kind == TargetKind::LoadBalancer)
        );
        // Zone B's load balancer goes away: unhealthy, notified.
        drop(b);
        tokio::time::timeout(Duration::from_secs(3), async {
            while m.unhealthy().is_empty() {
                notify.notified().await;
            }
        })
        .await
        .expect("a verdict change is notified");
        let key = (numeric_id("vpc-l"), [127, 0, 0, 3]);
        assert_eq!(m.take(), Unhealthy::from([key]));
        let rows = m.health();
        assert_eq!(
            rows.iter()
                .map(|r| (r.zone.as_str(), r.healthy))
                .collect::<Vec<_>>(),
            [("zone-a", true), ("zone-b", false)]
        );
        assert!(rows[1].since >= rfc3339(t0), "{rows:?}");
        // It comes back: healthy again.
        let b = std::net::TcpListener::bind(("127.0.0.3", port)).unwrap();
        tokio::time::timeout(Duration::from_secs(3), async {
            while !m.unhealthy().is_empty() {
                notify.notified().await;
            }
        })
        .await
        .expect("the recovery is notified");
        assert!(m.take().is_empty());
        // The probe address removed: the checks stop.
        m.sync(&lb_state(port, false, &fast));
        assert!(m.checkers.is_empty() && m.health().is_empty());
        drop((a, b));
    }
}
