//! Where committed states go: the `Apply` trait, `App` (the running state, its store and
//! its applier, as the API serves them), the retry of a state the data path is behind on
//! (both daemon modes), and `DataplaneApply`, the data path's implementation: maps,
//! attachments, next-hop probes and appliance health.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use privatelink_common::Reason;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    dataplane::{self, Dataplane, neighbor},
    desired::{self, Desired, Link, NextHop, NextHop6},
    error::OpError,
    fleet::PortShare,
    model::{FieldError, State},
    monitor::{HealthMonitor, HealthRow, Unhealthy},
    store::Store,
};

/// Where committed states go: the data path (or, in tests, a recorder).
pub trait Apply: Send {
    /// Checks that `s` can be applied (interfaces exist, ...), before it is committed.
    fn check(&mut self, s: &State) -> Result<(), OpError>;
    /// The state last checked was not committed: forget what `check` prepared for it.
    fn abandon(&mut self) {}
    /// Brings the data path to `s`.
    fn apply(&mut self, s: &State) -> anyhow::Result<()>;
    /// Periodic upkeep (next-hop probes).
    fn tick(&mut self) {}
    /// This host's part of the SNAT port ranges (the whole of them but in a fleet with
    /// `--snat-slots`).
    fn share(&self) -> PortShare {
        PortShare::All
    }

    /// The health view: GWLB appliances currently judged unhealthy (none by default: an
    /// appliance nobody checks counts as healthy).
    fn unhealthy(&self) -> Unhealthy {
        Unhealthy::new()
    }
    /// Every health-checked target (zones' load balancers, GWLB appliances) with its
    /// verdict and since when (none by default: nothing is checked).
    fn health(&self) -> Vec<HealthRow> {
        Vec::new()
    }
    /// The per-endpoint and per-appliance counters of the data path, by what each slot
    /// counts (none by default: nothing is counted).
    fn counters(&mut self) -> crate::dataplane::read::SlotCounters {
        Vec::new()
    }
}

/// How the logs name the running state: the API's is stored, a state file's is not (and
/// the first apply at start is logged as a file's in both modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    Stored,
    File,
}

/// Periodic upkeep: retry a failed apply (`dirty`), then the data path's own upkeep.
pub fn tick(apply: &mut dyn Apply, state: &State, dirty: &mut bool, running: Running) {
    if *dirty {
        match (crate::metrics::timed_apply(apply, state), running) {
            (Ok(()), Running::Stored) => {
                *dirty = false;
                info!("data path caught up with the stored state");
            }
            (Ok(()), Running::File) => *dirty = false,
            (Err(e), Running::Stored) => warn!("data path still behind the stored state: {e:#}"),
            (Err(e), Running::File) => {
                warn!("data path behind the state (retrying every 5 s): {e:#}")
            }
        }
    }
    apply.tick();
}

/// Re-applies the running state: something the data path derives from besides the state
/// changed (a health verdict), or the state is new. A failure leaves it `dirty`, retried
/// by `tick`.
pub fn refresh(apply: &mut dyn Apply, state: &State, dirty: &mut bool, running: Running) {
    match crate::metrics::timed_apply(apply, state) {
        Ok(()) => {
            if *dirty && running == Running::Stored {
                info!("data path caught up with the stored state");
            }
            *dirty = false;
        }
        Err(e) => {
            *dirty = true;
            match running {
                Running::Stored => {
                    warn!("data path behind the stored state (retrying): {e:#}")
                }
                Running::File => warn!("data path behind the state (retrying every 5 s): {e:#}"),
            }
        }
    }
}

pub struct App {
    pub state: State,
    pub store: Box<dyn Store>,
    pub apply: Box<dyn Apply>,
    pub admin_token_sha256: String,
    /// The committed state has not reached the data path yet (an apply failed): retried
    /// by `tick` until it does.
    pub dirty: bool,
    /// The suffix and region the endpoint, zone and service names are given under (the
    /// API shows them; a custom service domain must lie outside the suffix).
    pub naming: crate::model::Naming,
    /// Where the connection events of each committed change are sent (none: nowhere).
    pub notify: Option<crate::notify::Notifier>,
    /// A shared store's last catch-up failed (it is unreachable).
    pub store_lost: bool,
    /// A fleet's store: its membership (`GET /v1/fleet`); none on redb.
    pub fleet: Option<crate::store::etcd::EtcdWatch>,
}

impl App {
    /// The data path's counters, named by the state (`crate::counters`).
    pub fn counters(&mut self) -> crate::counters::Snapshot {
        let raw = self.apply.counters();
        crate::counters::resolve(&self.state, &raw)
    }

    /// Periodic upkeep: retry a failed apply, then the data path's own upkeep.
    pub fn tick(&mut self) {
        tick(
            &mut *self.apply,
            &self.state,
            &mut self.dirty,
            Running::Stored,
        );
    }

    /// Takes `s`, committed to the shared store by another daemon of the fleet, as the
    /// running state and applies it (retried by `tick` if the data path refuses it).
    /// Taken even if it does not validate here (a daemon of another version committed
    /// it): the store is the truth, and the next commit is made from it.
    pub fn adopt(&mut self, s: State) {
        if let Err(e) = s.validate() {
            warn!("the shared store's state does not validate here (applied as it is): {e}");
        }
        info!(
            endpoints = s.endpoints.len(),
            services = s.services.len(),
            "caught up with the shared store"
        );
        self.state = s;
        self.refresh();
    }

    /// Re-applies the committed state: something the data path derives from besides the
    /// state changed (a health verdict).
    pub fn refresh(&mut self) {
        refresh(
            &mut *self.apply,
            &self.state,
            &mut self.dirty,
            Running::Stored,
        );
    }
}

pub struct DataplaneApply {
    pub dp: Dataplane,
    /// Counters of the drops an operator must hear about, as last seen.
    trouble: Vec<(Reason, u64)>,
    attached: Vec<String>,
    skb: bool,
    hops: Vec<NextHop>,
    /// Dualstack services' IPv6 load balancers (Neighbour Solicitations).
    hops6: Vec<NextHop6>,
    health: HealthMonitor,
    /// What the last `check` computed, for the `apply` of the same state that follows.
    plan: Option<Plan>,
    /// The VPCs' resolver and probe addresses on their interfaces.
    addresses: dataplane::addresses::HostAddresses,
    /// The DNS server, once the daemon has given one (`set_dns`).
    dns: Option<crate::dns::Dns>,
    /// This host's part of the SNAT port ranges (a fleet's slot; `set_share`).
    share: crate::fleet::SharedShare,
    /// The services last warned about for a range smaller than the slots.
    too_small: Vec<u32>,
}

/// The maps' content and next hops computed for a state (with the health view they were
/// computed with): `check` computes them, the `apply` of the same state reuses them.
struct Plan {
    state: State,
    unhealthy: Unhealthy,
    share: PortShare,
    /// Services whose SNAT range has fewer ports than the fleet's slots.
    too_small: Vec<u32>,
    desired: Desired,
    hops: Vec<NextHop>,
    hops6: Vec<NextHop6>,
}

impl Plan {
    fn compute(s: &State, unhealthy: Unhealthy, share: PortShare) -> Result<Self, FieldError> {
        let hops = desired::next_hops(s);
        let mut desired =
            desired::compute_with_hops(s, dataplane::resolve_link, &unhealthy, &hops)?;
        let too_small = crate::fleet::narrow_pools(&mut desired, share);
        Ok(Self {
            state: s.clone(),
            unhealthy,
            share,
            too_small,
            desired,
            hops,
            hops6: desired::next_hops6(s),
        })
    }
}

impl DataplaneApply {
    pub fn new(dp: Dataplane, skb: bool) -> Self {
        Self {
            dp,
            trouble: Vec::new(),
            attached: Vec::new(),
            skb,
            hops: Vec::new(),
            hops6: Vec::new(),
            health: HealthMonitor::new(),
            plan: None,
            addresses: Default::default(),
            dns: None,
            share: Arc::new(std::sync::Mutex::new(PortShare::All)),
            too_small: Vec::new(),
        }
    }

    /// Takes SNAT ports from `share` from now on (a fleet's slot), read at every apply.
    pub fn set_share(&mut self, share: crate::fleet::SharedShare) {
        self.share = share;
    }

    /// Serves DNS from now on: every apply updates its answers and listeners.
    pub fn set_dns(&mut self, dns: crate::dns::Dns) {
        self.dns = Some(dns);
    }

    /// Notified when an appliance's or a load balancer's verdict changes: the owner of the
    /// state should call `apply` again (it recomputes the maps with the new verdicts).
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
        for hop in &self.hops6 {
            if self.dp.neighbor6(hop.vpc_id, hop.addr).is_none() {
                self.probe6(hop);
            }
        }
    }

    /// A Neighbour Solicitation for an IPv6 next hop.
    fn probe6(&self, hop: &NextHop6) {
        let Some(link) = self.dp.vpc_link(hop.vpc_id) else {
            return;
        };
        let frame = neighbor::neighbor_solicitation(link.mac, hop.ask_from, hop.addr);
        if let Err(e) = neighbor::send_frame(&link, &frame) {
            warn!(
                "neighbour solicitation for {} failed: {e}",
                std::net::Ipv6Addr::from(hop.addr)
            );
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
        for hop in &self.hops6 {
            self.probe6(hop);
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
        // The verdicts as they are now: `apply` re-uses this plan when they still are.
        self.plan = None;
        self.plan = Some(Plan::compute(s, self.health.unhealthy(), self.share())?);
        Ok(())
    }

    fn abandon(&mut self) {
        self.plan = None;
    }

    fn apply(&mut self, s: &State) -> Result<()> {
        let unhealthy = self.health.take();
        let share = self.share();
        let plan = match self.plan.take() {
            Some(p) if p.state == *s && p.unhealthy == unhealthy && p.share == share => Ok(p),
            _ => Plan::compute(s, unhealthy, share).map_err(anyhow::Error::from),
        };
        let applied = plan.and_then(|p| self.dp.apply(&p.desired).map(|r| (p, r)));
        let (plan, r) = match applied {
            Ok(x) => x,
            Err(e) => {
                // The maps are behind (retried by the tick); the checks still follow the
                // state, as their verdicts are what the next apply needs.
                self.health.sync(s);
                return Err(e);
            }
        };
        if plan.too_small != self.too_small {
            for svc in s
                .services
                .iter()
                .filter(|v| plan.too_small.contains(&crate::model::numeric_id(&v.id)))
            {
                warn!(service = %svc.id, ports = ?svc.snat_ports, share = ?plan.share, "the service's SNAT port range has fewer ports than the fleet's slots: no host takes new flows for it");
            }
            self.too_small = plan.too_small.clone();
        }
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
        // The resolver and probe addresses, then the DNS listeners bound to them.
        self.addresses.sync(s, &self.attached);
        // Health checks start (or change) once their source addresses exist and the maps
        // admit the answers: a first probe sent before would fail for nothing.
        self.health.sync(s);
        if let Some(dns) = &mut self.dns {
            dns.update(s, &plan.unhealthy);
        }
        let hops = plan.hops;
        let new: Vec<NextHop> = hops
            .iter()
            .filter(|h| !self.hops.contains(h))
            .copied()
            .collect();
        self.hops = hops;
        for h in &new {
            self.probe(h);
        }
        let new6: Vec<NextHop6> = plan
            .hops6
            .iter()
            .filter(|h| !self.hops6.contains(h))
            .copied()
            .collect();
        self.hops6 = plan.hops6;
        for h in &new6 {
            self.probe6(h);
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
        self.addresses.retry();
        if let Some(dns) = self.dns.as_mut().filter(|d| d.pending()) {
            dns.retry();
        }
    }

    fn share(&self) -> PortShare {
        self.share.lock().map_or(PortShare::Nothing, |s| *s)
    }

    fn unhealthy(&self) -> Unhealthy {
        self.health.unhealthy()
    }

    fn counters(&mut self) -> crate::dataplane::read::SlotCounters {
        self.dp.counters().unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "reading the endpoint counters");
            Vec::new()
        })
    }

    fn health(&self) -> Vec<HealthRow> {
        self.health.health()
    }
}
