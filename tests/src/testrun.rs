//! Feeding frames through the loaded XDP program with BPF_PROG_TEST_RUN, inside a
//! namespace of the test's own that has the lab's interface names (the kernel needs the
//! ingress interface to exist).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::{
    maps::{Array, ProgramArray},
    programs::{TestRun, TestRunOptions},
};
use privatelink_common::Reason;
use privatelink_user::{
    dataplane::{self, Dataplane, LoadOptions},
    desired::{self, Link},
    model::{numeric_id, parse_stored_state},
};

use crate::{
    netns::{Netns, unique_name},
    reference::Reference,
};

/// The XDP actions (`enum xdp_action`) a test run returns.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The longest frame `privatelink_replay` stores.
pub const REPLAY_MAX: usize = 160;

/// The MAC the fixture's load balancer answers ARP with.
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x10];

pub struct Harness {
    pub dp: Dataplane,
    /// The lab's reference programs (baselines, replay), loaded on first use.
    pub reference: Reference,
    pub consumer: Link,
    pub provider: Link,
    pub ns: Netns,
}

impl Harness {
    /// The lab's state in a fresh namespace: interfaces fc0 (VPC A) and fp0 (VPC B), the
    /// program loaded (not attached) with private maps, the load balancer's MAC known.
    pub fn new(state: &str) -> Result<Self> {
        Self::with_conntrack(state, 65536)
    }

    /// The same with a conntrack table of `entries` entries (two per flow).
    pub fn with_conntrack(state: &str, entries: u32) -> Result<Self> {
        let ns = Netns::create(&unique_name("plpkt"))?;
        ns.ip(&["link", "add", "fc0", "type", "veth", "peer", "name", "c0"])?;
        ns.ip(&["link", "add", "fp0", "type", "veth", "peer", "name", "p0"])?;
        for d in ["fc0", "c0", "fp0", "p0"] {
            ns.ip(&["link", "set", d, "up"])?;
        }
        ns.enter_thread()?;
        let state = parse_stored_state(state).map_err(anyhow::Error::msg)?;
        let want = desired::compute(&state, dataplane::resolve_link, &desired::Unhealthy::new())?;
        let mut dp = Dataplane::load(&LoadOptions {
            pin_dir: None,
            conntrack_entries: entries,
            ..LoadOptions::default()
        })?;
        dp.apply(&want)?;
        // As the daemon does: the flow table's capacity bounds endpoints' shares too.
        dp.set_config(&privatelink_common::Config {
            flow_capacity: entries as u64 / 2,
            ..Default::default()
        })?;
        dp.set_neighbor(numeric_id("vpc-b"), [10, 10, 0, 10], LB_MAC)?;
        let consumer = dataplane::resolve_link("fc0").map_err(anyhow::Error::msg)?;
        let provider = dataplane::resolve_link("fp0").map_err(anyhow::Error::msg)?;
        Ok(Self {
            dp,
            reference: Reference::default(),
            consumer,
            provider,
            ns,
        })
    }

    /// Applies another state to the loaded maps, as the daemon does after an API call.
    pub fn apply_state(&mut self, state: &str) -> Result<()> {
        let state = parse_stored_state(state).map_err(anyhow::Error::msg)?;
        let want = desired::compute(&state, dataplane::resolve_link, &desired::Unhealthy::new())?;
        self.dp.apply(&want)?;
        Ok(())
    }

    /// Moves `PL_EPOCH` on without changing anything else: every flow's next packet takes
    /// the full path again (what any change of the daemon's maps does).
    pub fn bump_epoch(&mut self) -> Result<()> {
        self.dp.bump_epoch()
    }

    /// Idle timeouts a test outlives, in ms: TCP and other flows', closing flows'.
    pub fn set_timeouts_ms(&mut self, tcp: u64, other: u64, closing: u64) -> Result<()> {
        const MS: u64 = 1_000_000;
        self.dp.set_config(&privatelink_common::Config {
            tcp_timeout_ns: tcp * MS,
            other_timeout_ns: other * MS,
            closing_timeout_ns: closing * MS,
            ..Default::default()
        })
    }

    /// Removes the one entry of direction `dir` from `E`'s flow table (the test's one
    /// flow), as an eviction would take it.
    pub fn forget_direction<E: dataplane::flowtable::Bucketed>(&mut self, dir: u8) {
        let keys: Vec<E::Key> = self
            .dp
            .flow_placement::<E>()
            .unwrap()
            .into_iter()
            .filter(|(_, _, e)| e.direction() == dir)
            .map(|(_, k, _)| k)
            .collect();
        assert_eq!(keys.len(), 1, "one entry in direction {dir}");
        assert!(self.dp.remove_flow::<E>(&keys[0]).unwrap());
    }

    /// Sends `frame` on `ifindex` four times, 120 ms apart (480 ms in all: past a 300 ms
    /// timeout of `set_timeouts_ms`), each redirected: one direction of a flow talking
    /// while the other goes quiet.
    pub fn keep_talking(&mut self, ifindex: u32, frame: &[u8]) {
        for _ in 0..4 {
            std::thread::sleep(std::time::Duration::from_millis(120));
            let (act, _) = self.run(ifindex, frame).unwrap();
            assert_eq!(act, XDP_REDIRECT, "{:?}", self.active_stats());
        }
    }

    /// Runs one frame arriving on `ifindex`; returns the XDP action and the frame after.
    pub fn run(&mut self, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.run_through(None, ifindex, frame)
    }

    /// `run` through privatelink's program, or through the reference program `baseline`.
    pub fn run_through(
        &mut self,
        baseline: Option<&str>,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 512];
        let ctx = xdp_md(frame.len() as u32, ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        let r = match baseline {
            Some(name) => self.reference.program(name)?.test_run(opts),
            None => self.dp.program()?.test_run(opts),
        };
        let r = r.context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// `repeat` runs of `frame` through privatelink's program, or through the reference
    /// program `baseline` (see `reference`); returns the verdict and the kernel's
    /// average duration per run in ns. The kernel reuses one buffer across repeats, so a
    /// path that rewrites the frame sees its own output from the second run on: time those
    /// with `repeat` 1.
    pub fn time(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        baseline: Option<&str>,
        repeat: u32,
    ) -> Result<(u32, u64)> {
        let mut out = vec![0u8; frame.len() + 512];
        let ctx = xdp_md(frame.len() as u32, ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        };
        let r = match baseline {
            Some(name) => self.reference.program(name)?.test_run(opts)?,
            None => self.dp.program()?.test_run(opts)?,
        };
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// `repeat` runs of `frame` through privatelink's program (or the reference program
    /// `baseline`) behind `privatelink_replay`, which writes `frame` back before every run:
    /// rewriting, growing and shrinking paths can then be timed with repeats too. With
    /// `vary_at`, the 16-bit field at that offset counts up from run to run (a new flow
    /// each run), or with a `cycle` (not 0) goes through that many values above the stored
    /// one, each once a cycle, in a scrambled order (`Reference::set_replay_order`): each
    /// run one of that many flows. Returns the last verdict and the kernel's average ns per
    /// run (replay and tail call included, the same for both programs).
    pub fn time_replayed(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        vary_at: Option<usize>,
        cycle: u32,
        baseline: Option<&str>,
        repeat: u32,
    ) -> Result<(u32, u64)> {
        anyhow::ensure!(
            frame.len().is_multiple_of(4) && frame.len() <= REPLAY_MAX,
            "a replayed frame is a multiple of 4 bytes, at most {REPLAY_MAX}"
        );
        let next = match baseline {
            Some(name) => self.reference.program(name)?.fd()?.try_clone()?,
            None => self.dp.program()?.fd()?.try_clone()?,
        };
        if cycle != 0 {
            self.reference.set_replay_order(cycle)?;
        }
        let obj = self.reference.object()?;
        let mut stored = [0u8; REPLAY_MAX];
        stored[..frame.len()].copy_from_slice(frame);
        Array::<_, [u8; REPLAY_MAX]>::try_from(obj.map_mut("PL_REPLAY_FRAME").context("map")?)?
            .set(0, stored, 0)?;
        let mut params =
            Array::<_, u32>::try_from(obj.map_mut("PL_REPLAY_PARAMS").context("map")?)?;
        params.set(0, frame.len() as u32, 0)?;
        params.set(1, vary_at.unwrap_or(0) as u32, 0)?;
        params.set(2, cycle, 0)?;
        ProgramArray::try_from(obj.map_mut("PL_REPLAY_NEXT").context("map")?)?.set(0, &next, 0)?;
        let mut out = vec![0u8; frame.len() + 512];
        let ctx = xdp_md(frame.len() as u32, ifindex);
        let r = self
            .reference
            .program("privatelink_replay")?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// Zeroes the count `time_replayed` adds to a varied field, so that a path's replayed
    /// runs give it the values from its stored one up, once each (up to 65 536 runs), or
    /// with a cycle its values in its order from the first.
    pub fn reset_replay_count(&mut self) -> Result<()> {
        let obj = self.reference.object()?;
        Array::<_, u32>::try_from(obj.map_mut("PL_REPLAY_COUNT").context("map")?)?.set(0, 0, 0)?;
        Ok(())
    }

    pub fn stats(&self) -> Result<BTreeMap<&'static str, u64>> {
        Ok(self
            .dp
            .stats()?
            .into_iter()
            .map(|(r, n)| (r.as_str(), n))
            .collect())
    }

    /// The counters that are not zero (for assertion messages).
    pub fn active_stats(&self) -> Vec<(&'static str, u64)> {
        self.stats()
            .map(|s| s.into_iter().filter(|(_, n)| *n > 0).collect())
            .unwrap_or_default()
    }

    /// The counter of `r`. Panics when the counters cannot be read: a read error is not a
    /// zero (an assertion that a counter did not move must not pass on a failed read).
    pub fn count(&self, r: Reason) -> u64 {
        let stats = self.dp.stats().expect("reading PL_STATS");
        stats
            .into_iter()
            .find(|(x, _)| *x == r)
            .map(|(_, n)| n)
            .unwrap_or_else(|| panic!("no counter for {r:?} in PL_STATS"))
    }
}

/// `struct xdp_md` for ctx_in: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
/// egress_ifindex.
pub fn xdp_md(len: u32, ifindex: u32) -> Vec<u8> {
    [0, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v: &u32| v.to_ne_bytes())
        .collect()
}

/// Sends every round's frames (`frames(h, round)`, each on the consumer interface) through
/// two data paths side by side: `slow`'s epoch moves before every round, so it takes the
/// full path only, while `fast` may take the established one. Every output must be a
/// redirect, and both equal but for the source MAC (each fixture's own interface).
/// Returns the last round's frames with `fast`'s outputs.
pub fn side_by_side(
    fast: &mut Harness,
    slow: &mut Harness,
    rounds: u8,
    frames: impl Fn(&Harness, u8) -> Vec<Vec<u8>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut last = Vec::new();
    for i in 0..rounds {
        slow.bump_epoch().expect("moving the epoch");
        last.clear();
        for (n, (f, s)) in frames(fast, i).into_iter().zip(frames(slow, i)).enumerate() {
            let (fa, fo) = fast.run(fast.consumer.ifindex, &f).expect("test run");
            let (sa, so) = slow.run(slow.consumer.ifindex, &s).expect("test run");
            assert_eq!(
                (fa, sa),
                (XDP_REDIRECT, XDP_REDIRECT),
                "round {i} frame {n}: {:?}",
                fast.active_stats()
            );
            assert_eq!(
                (&fo[..6], &fo[12..]),
                (&so[..6], &so[12..]),
                "round {i} frame {n}: established and full path differ"
            );
            last.push((f, fo));
        }
    }
    last
}

/// Every counter slot's packets and bytes both ways, as text: what two data paths given
/// the same packets must have counted alike.
pub fn slot_counters(h: &mut Harness) -> Vec<String> {
    h.dp.counters()
        .expect("reading the counters")
        .into_iter()
        .map(|(k, c)| {
            let service = (c.to_service_packets, c.to_service_bytes);
            let consumer = (c.to_consumer_packets, c.to_consumer_bytes);
            format!("{k:?} {service:?} {consumer:?}")
        })
        .collect()
}
