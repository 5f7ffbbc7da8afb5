//! The daemon's side of the data path: turning a committed state into maps, attachments
//! and next-hop probes.

use std::time::{Duration, Instant};

use anyhow::Result;
use privatelink_common::{Reason, VpcPort, map_names};
use tracing::{info, warn};

use crate::{
    api::Apply,
    dataplane::{self, Dataplane},
    desired::{self, Link, NextHop},
    model::State,
    neigh,
    ops::OpError,
};

pub struct DataplaneApply {
    pub dp: Dataplane,
    /// Counters of the drops an operator must hear about, as last seen.
    trouble: Vec<(Reason, u64)>,
    attached: Vec<String>,
    skb: bool,
    hops: Vec<NextHop>,
}

impl DataplaneApply {
    pub fn new(dp: Dataplane, skb: bool) -> Self {
        Self {
            dp,
            trouble: Vec::new(),
            attached: Vec::new(),
            skb,
            hops: Vec::new(),
        }
    }

    /// Logs drops that mean something is wrong outside the packet (pool exhausted, table
    /// full, next hop unknown) when their counters moved since the last look.
    fn report_trouble(&mut self) {
        const WATCH: [Reason; 5] = [
            Reason::DropSnatExhausted,
            Reason::DropConntrackFull,
            Reason::DropNoNeighbor,
            Reason::DropNoRoute,
            Reason::DropRedirectFailed,
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
        let frame = neigh::arp_request(link.mac, hop.ask_from, hop.addr);
        if let Err(e) = neigh::send_frame(&link, &frame) {
            warn!(
                "ARP request for {} failed: {e}",
                std::net::Ipv4Addr::from(hop.addr)
            );
        }
    }

    /// The link a next hop's VPC is attached through, from the data path's own map.
    fn link_of(&self, hop: &NextHop) -> Option<Link> {
        let m: aya::maps::HashMap<_, u32, VpcPort> =
            aya::maps::HashMap::try_from(self.dp.map(map_names::VPC_PORTS).ok()?).ok()?;
        let p = m.get(&hop.vpc_id, 0).ok()?;
        Some(Link {
            ifindex: p.ifindex,
            mac: p.mac,
        })
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
        desired::compute(s, dataplane::resolve_link)
            .map(|_| ())
            .map_err(Into::into)
    }

    fn apply(&mut self, s: &State) -> Result<()> {
        let want = desired::compute(s, dataplane::resolve_link)?;
        let r = self.dp.apply(&want)?;
        for vpc in &s.vpcs {
            if !self.attached.contains(&vpc.interface) {
                self.dp.attach(&vpc.interface, self.skb)?;
                self.attached.push(vpc.interface.clone());
                info!(iface = %vpc.interface, vpc = %vpc.id, "XDP attached");
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
        Ok(())
    }

    fn tick(&mut self) {
        self.probe_missing();
        self.report_trouble();
    }
}
