//! The daemon's side of the data path: turning a committed state into maps, attachments
//! and next-hop probes, and health-checking GWLB appliances.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use privatelink_common::Reason;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    api::Apply,
    dataplane::{self, Dataplane, neighbor},
    desired::{self, Link, NextHop, Unhealthy},
    health::{self, CheckerOptions, HealthSettings, ProbeSource},
    model::{State, numeric_id},
    ops::OpError,
};

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
    fn take(&mut self) -> Unhealthy {
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

pub struct DataplaneApply {
    pub dp: Dataplane,
    /// Counters of the drops an operator must hear about, as last seen.
    trouble: Vec<(Reason, u64)>,
    attached: Vec<String>,
    skb: bool,
    hops: Vec<NextHop>,
    health: HealthMonitor,
}

impl DataplaneApply {
    pub fn new(dp: Dataplane, skb: bool) -> Self {
        Self {
            dp,
            trouble: Vec::new(),
            attached: Vec::new(),
            skb,
            hops: Vec::new(),
            health: HealthMonitor::new(),
        }
    }

    /// Notified when an appliance's verdict changes: the owner of the state should call
    /// `apply` again (it recomputes the maps with the new verdicts).
    pub fn health_notify(&self) -> Arc<Notify> {
        self.health.notify()
    }

    /// Logs drops that mean something is wrong outside the packet (pool exhausted, table
    /// full, next hop unknown) when their counters moved since the last look.
    fn report_trouble(&mut self) {
        const WATCH: [Reason; 6] = [
            Reason::DropSnatExhausted,
            Reason::DropConntrackFull,
            Reason::DropNoNeighbor,
            Reason::DropNoRoute,
            Reason::DropRedirectFailed,
            Reason::DropNoHealthyAppliance,
        ];
        let Ok(stats) = self.dp.stats() else { return };
        let now: Vec<(Reason, u64)> = stats
            .into_iter()
            .filter(|(r, _)| WATCH.contains(r))
            .collect();
        for (r, n) in &now {
            let before = self.trouble.iter().find(|(x, _)| x == r).map(|(_, b)| *b);
            if let Some(b) = before
                && *n > b
            {
                warn!(
                    counter = r.as_str(),
                    packets = n - b,
                    "data path dropped packets since the last check"
                );
            }
        }
        self.trouble = now;
    }

    /// Probes next hops whose MAC is not known yet.
    pub fn probe_missing(&self) {
        for hop in &self.hops {
            if self.dp.neighbor(hop.vpc_id, hop.addr).is_none() {
                self.probe(hop);
            }
        }
    }

    fn probe(&self, hop: &NextHop) {
        let Some(link) = self.link_of(hop) else {
            return;
        };
        let frame = neighbor::arp_request(link.mac, hop.ask_from, hop.addr);
        if let Err(e) = neighbor::send_frame(&link, &frame) {
            warn!(
                "ARP request for {} failed: {e}",
                std::net::Ipv4Addr::from(hop.addr)
            );
        }
    }

    /// The link a next hop's VPC is attached through, from the data path's own map.
    fn link_of(&self, hop: &NextHop) -> Option<Link> {
        self.dp.vpc_link(hop.vpc_id)
    }

    /// Probes every next hop and waits (bounded) until the data path has learned them.
    pub async fn resolve(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for hop in &self.hops {
            self.probe(hop);
        }
        loop {
            let missing: Vec<_> = self
                .hops
                .iter()
                .filter(|h| self.dp.neighbor(h.vpc_id, h.addr).is_none())
                .collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                for h in missing {
                    warn!(
                        "load balancer {} has not answered ARP yet; retrying every 5 s",
                        std::net::Ipv4Addr::from(h.addr)
                    );
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Apply for DataplaneApply {
    fn check(&mut self, s: &State) -> Result<(), OpError> {
        desired::compute(s, dataplane::resolve_link, &Unhealthy::new())
            .map(|_| ())
            .map_err(Into::into)
    }

    fn apply(&mut self, s: &State) -> Result<()> {
        self.health.sync(s);
        let unhealthy = self.health.take();
        let want = desired::compute(s, dataplane::resolve_link, &unhealthy)?;
        let r = self.dp.apply(&want)?;
        // Every interface that can be attached is, and the next hops are registered and
        // probed, even when one interface cannot be attached yet (another XDP program
        // holds it): that VPC waits for the retry, the others do not.
        let mut failed = Vec::new();
        for vpc in &s.vpcs {
            if !self.attached.contains(&vpc.interface) {
                match self.dp.attach(&vpc.interface, self.skb) {
                    Ok(()) => {
                        self.attached.push(vpc.interface.clone());
                        info!(iface = %vpc.interface, vpc = %vpc.id, "XDP attached");
                    }
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
        }
        if r.upserts + r.deletes > 0 {
            info!(upserts = r.upserts, deletes = r.deletes, "maps updated");
        }
        let hops = desired::next_hops(s);
        let new: Vec<NextHop> = hops
            .iter()
            .filter(|h| !self.hops.contains(h))
            .copied()
            .collect();
        self.hops = hops;
        for h in &new {
            self.probe(h);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{}", failed.join("; ")))
        }
    }

    fn tick(&mut self) {
        self.probe_missing();
        self.report_trouble();
    }

    fn unhealthy(&self) -> Unhealthy {
        self.health.unhealthy()
    }
}

#[cfg(test)]
mod tests {
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
