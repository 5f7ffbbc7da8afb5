//! The loaded XDP program and its maps: load (re-using pinned maps so flows survive a
//! restart), attach, and access to the maps. Beside it: the pin directory (`pins`), the
//! diff sync of a `Desired` (`sync`), the CLI's readers (`read`), interface lookups
//! (`link`), next-hop ARP probes (`neighbor`).

pub mod flowtable;
mod pins;
pub mod slots;
mod sync;

pub mod addresses;
pub mod link;
pub mod neighbor;
pub mod read;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, ProgramArray, RingBuf},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
pub use link::{parse_mac, resolve_link};
pub use pins::LAYOUTS_DIR;
use pins::{drop_incompatible_pins, load_paths, record_layouts, retire_path_pins};
use privatelink_common::{
    Config, DEFAULT_CONNTRACK_ENTRIES, FLOW_EVENTS_BYTES, FlowEntry, FlowGeometry, FlowKey,
    Neighbor, PROGRAM_NAME, Reason, VpcAddr, VpcPort, flowtable::key_hash_params, map_names,
};
pub use read::{
    TableEntry, coarse_now_ns, open_pinned, read_budgets, read_config, read_flows, read_stats,
    read_table,
};

use crate::desired::{Desired, Link};

/// The XDP object, built by build.rs from privatelink-ebpf.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/privatelink-xdp"));

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/privatelink";

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where maps are pinned (and re-opened from); `None` keeps them private (tests).
    pub pin_dir: Option<PathBuf>,
    pub conntrack_entries: u32,
    /// Size of the flow events' ring buffer (`FLOW_EVENTS_MAP`), bytes: a power of two and
    /// a multiple of the page size.
    pub flow_events_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            conntrack_entries: DEFAULT_CONNTRACK_ENTRIES,
            flow_events_bytes: FLOW_EVENTS_BYTES,
        }
    }
}

/// The flow events' ring buffer: the loaded object's own, not pinned (a restarted daemon
/// reads the ring of the object it loaded; see `crate::flowlog`).
pub const FLOW_EVENTS_MAP: &str = "PL_FLOW_EVENTS";

/// How many entries one apply wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub upserts: usize,
    pub deletes: usize,
}

pub struct Dataplane {
    ebpf: Ebpf,
    /// What the daemon-owned maps hold (read from them once, then kept in step), so an
    /// apply is a diff in memory plus the changed entries' syscalls.
    applied: Option<Desired>,
    pin_dir: Option<PathBuf>,
    links: Vec<(String, XdpLinkId)>,
    /// Held open: the kernel empties a program array when its last user reference goes.
    _paths: ProgramArray<MapData>,
}

impl Dataplane {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let buckets = flowtable::buckets_for(opts.conntrack_entries);
        let elements = privatelink_common::flowtable::table_elements(opts.conntrack_entries);
        loader.map_max_entries(map_names::CONNTRACK, elements);
        loader.map_max_entries(map_names::CONNTRACK6, elements);
        loader.map_max_entries(FLOW_EVENTS_MAP, opts.flow_events_bytes);
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating pin directory {} (is bpffs mounted on /sys/fs/bpf?)",
                    dir.display()
                )
            })?;
            drop_incompatible_pins(dir, opts.conntrack_entries)?;
            // From now on pins are recorded: a pin this load makes and a crash keeps from
            // being recorded is of unknown layout to the next load, not trusted by size.
            let records = dir.join(LAYOUTS_DIR);
            std::fs::create_dir_all(&records)
                .with_context(|| format!("creating {}", records.display()))?;
            for name in map_names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        // The flow tables' geometry, given to the programs as read-only data: that of a
        // pinned table kept (read before the load, which reuses it), else drawn now.
        let kept = |name: &str| -> Result<Option<Map>> {
            match &opts.pin_dir {
                Some(dir) if dir.join(name).exists() => Ok(Some(open_pinned(dir, name)?)),
                _ => Ok(None),
            }
        };
        let g4 =
            flowtable::geometry_for::<FlowEntry>(kept(map_names::CONNTRACK)?.as_ref(), buckets)?;
        let g6 = flowtable::geometry_for::<privatelink_common::FlowEntry6>(
            kept(map_names::CONNTRACK6)?.as_ref(),
            buckets,
        )?;
        let (w4, w6) = (g4.word(), g6.word());
        loader.override_global("PL_FLOW_GEOMETRY", &w4, true);
        loader.override_global("PL_FLOW_GEOMETRY6", &w6, true);
        // And their key hash's parameters, drawn from the same seeds.
        let (h4, h6) = (key_hash_params(g4.seed), key_hash_params(g6.seed));
        loader.override_global("PL_FLOW_HASH", &h4, true);
        loader.override_global("PL_FLOW_HASH6", &h6, true);
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the XDP object")?;
        if let Some(dir) = &opts.pin_dir {
            // The maps are pinned now, with this build's layouts.
            record_layouts(dir, opts.conntrack_entries)?;
        }
        // The flow tables' geometry before any program uses them.
        let ct = ebpf
            .map_mut(map_names::CONNTRACK)
            .context("no PL_CONNTRACK")?;
        flowtable::init_geometry::<FlowEntry>(ct, g4)?;
        let ct6 = ebpf
            .map_mut(map_names::CONNTRACK6)
            .context("no PL_CONNTRACK6")?;
        flowtable::init_geometry::<privatelink_common::FlowEntry6>(ct6, g6)?;
        let prog: &mut Xdp = program(&mut ebpf)?;
        load_retrying(prog).context("the verifier rejected the XDP program")?;
        let paths = load_paths(&mut ebpf, opts.pin_dir.as_deref())?;
        Ok(Self {
            ebpf,
            applied: None,
            pin_dir: opts.pin_dir.clone(),
            links: Vec::new(),
            _paths: paths,
        })
    }

    /// Attaches the program to `iface` (native mode unless `skb`). With a pin directory
    /// the attachment is a bpf_link pinned at `<pin_dir>/links/<iface>`: it outlives the
    /// daemon (a restart, or a kill -9, does not detach it), and a daemon that finds it
    /// swaps its own program in atomically (an upgrade keeps the pinned maps, conntrack
    /// included, and never leaves the interface without a program).
    pub fn attach(&mut self, iface: &str, skb: bool) -> Result<()> {
        let mode = if skb { XdpMode::Skb } else { XdpMode::Driver };
        let pin = self.pin_dir.as_ref().map(|d| d.join("links").join(iface));
        let prog: &mut Xdp = program(&mut self.ebpf)?;
        let existing = match &pin {
            Some(p) if p.exists() => {
                Some(PinnedLink::from_pin(p).with_context(|| format!("opening {}", p.display()))?)
            }
            _ => None,
        };
        let id = match existing {
            Some(pinned) => {
                let link = XdpLink::try_from(pinned.unpin()?)?;
                prog.attach_to_link(link)
                    .with_context(|| format!("replacing the program on {iface}"))?
            }
            None => prog
                .attach(iface, mode)
                .with_context(|| format!("attaching XDP ({mode:?}) to {iface}"))?,
        };
        match pin {
            Some(p) => {
                std::fs::create_dir_all(p.parent().expect("links dir"))?;
                let link = FdLink::try_from(prog.take_link(id)?)
                    .context("the kernel attached XDP without a bpf_link; cannot pin it")?;
                link.pin(&p)
                    .with_context(|| format!("pinning the link at {}", p.display()))?;
            }
            None => self.links.push((iface.to_string(), id)),
        }
        // The program this link ran before may be gone now, and its paths with it.
        if let Some(dir) = &self.pin_dir {
            retire_path_pins(&dir.join("paths"));
        }
        Ok(())
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// One of this object's loaded programs: the entry point or a path program.
    pub fn loaded_program(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, name)
    }

    /// Takes the flow events' ring buffer out of the object, for its one reader
    /// (`crate::flowlog`); a second call fails.
    pub fn take_flow_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(FLOW_EVENTS_MAP)
            .ok_or_else(|| anyhow!("the object has no map {FLOW_EVENTS_MAP} (taken already?)"))?;
        RingBuf::try_from(map).with_context(|| format!("opening {FLOW_EVENTS_MAP}"))
    }

    pub fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the object has no map {name}"))
    }

    pub fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the object has no map {name}"))
    }

    /// Zeroes the counters of `slots` (given to something new).
    fn zero_counters(&mut self, slots: &[u32]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut a: aya::maps::PerCpuArray<_, privatelink_common::EndpointCounters> =
            aya::maps::PerCpuArray::try_from(self.map_mut(map_names::EP_COUNTERS)?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for &s in slots {
            let zero = aya::maps::PerCpuValues::try_from(vec![
                privatelink_common::EndpointCounters::default();
                cpus
            ])?;
            a.set(s, zero, 0)
                .with_context(|| format!("zeroing counter slot {s}"))?;
        }
        Ok(())
    }

    /// The counters of every slot given out, by what each counts (empty before the first
    /// apply).
    pub fn counters(&mut self) -> Result<read::SlotCounters> {
        let Some(d) = &self.applied else {
            return Ok(Vec::new());
        };
        read::counters_of(&d.counter_slots, self.map(map_names::EP_COUNTERS)?)
    }

    /// Moves `PL_EPOCH` on, after the maps were written: every established flow's next
    /// packet takes the full path once (whitelist, connection, ENI owner, ACLs) and is
    /// stamped with the new epoch. A fresh epoch map starts at a random value, so flows
    /// a pinned conntrack kept from before cannot carry a matching stamp by chance.
    pub fn bump_epoch(&mut self) -> Result<()> {
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(map_names::EPOCH)?)?;
        let cur = a.get(&0, 0)?;
        let next = if cur == 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(1)
                | 1
        } else {
            cur.wrapping_add(1).max(1)
        };
        // The maps' writes (earlier syscalls, made by this CPU or ordered by the
        // migration that moved the thread) before the epoch's: the data path reads them in
        // the other order behind a barrier (`order_after_epoch`), so a flow stamped with
        // the new epoch was checked against them. (`mfence` on x86, `dmb ish` on arm64.)
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        a.set(0, next, 0)?;
        Ok(())
    }

    /// The current `PL_EPOCH` value.
    pub fn epoch(&self) -> Result<u32> {
        let a: Array<_, u32> = Array::try_from(self.map(map_names::EPOCH)?)?;
        Ok(a.get(&0, 0)?)
    }

    /// Writes the data path's settings (idle timeouts).
    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        let mut a: Array<_, Config> = Array::try_from(self.map_mut(map_names::CONFIG)?)?;
        a.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn stats(&self) -> Result<Vec<(Reason, u64)>> {
        read_stats(self.map(map_names::STATS)?)
    }

    pub fn set_neighbor(&mut self, vpc_id: u32, addr: [u8; 4], mac: [u8; 6]) -> Result<()> {
        let mut m: HashMap<_, VpcAddr, Neighbor> =
            HashMap::try_from(self.map_mut(map_names::NEIGHBORS)?)?;
        m.insert(VpcAddr { vpc_id, addr }, Neighbor { mac, _pad: [0; 2] }, 0)?;
        Ok(())
    }

    pub fn neighbor(&self, vpc_id: u32, addr: [u8; 4]) -> Option<[u8; 6]> {
        let m: HashMap<_, VpcAddr, Neighbor> =
            HashMap::try_from(self.map(map_names::NEIGHBORS).ok()?).ok()?;
        m.get(&VpcAddr { vpc_id, addr }, 0)
            .ok()
            .map(|n| n.mac)
            .filter(|mac| *mac != [0; 6])
    }

    /// The MAC the data path has learned for IPv6 next hop `addr` of VPC `vpc_id`
    /// (`PL_NEIGHBORS6`, from its Neighbour Advertisements).
    pub fn neighbor6(&self, vpc_id: u32, addr: [u8; 16]) -> Option<[u8; 6]> {
        let m: HashMap<_, privatelink_common::VpcAddr6, Neighbor> =
            HashMap::try_from(self.map(map_names::NEIGHBORS6).ok()?).ok()?;
        m.get(&privatelink_common::VpcAddr6 { vpc_id, addr }, 0)
            .ok()
            .map(|n| n.mac)
            .filter(|mac| *mac != [0; 6])
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        read_flows(self.map(map_names::CONNTRACK)?)
    }

    /// The IPv6 flow table (`PL_CONNTRACK6`), both directions of every flow.
    pub fn flows6(
        &self,
    ) -> Result<Vec<(privatelink_common::FlowKey6, privatelink_common::FlowEntry6)>> {
        flowtable::entries(self.map(map_names::CONNTRACK6)?)
    }

    /// The geometry of `E`'s flow table (from its element 0's first word).
    pub fn flow_geometry<E: flowtable::Bucketed>(&self) -> Result<FlowGeometry> {
        flowtable::geometry::<E>(self.map(E::MAP)?)
    }

    /// The entry of `key` in `E`'s flow table.
    pub fn flow<E: flowtable::Bucketed>(&self, key: &E::Key) -> Result<Option<E>> {
        let g = self.flow_geometry::<E>()?;
        flowtable::get::<E>(self.map(E::MAP)?, &g, key)
    }

    /// Whether the bucket `key` belongs to in `E`'s flow table is full (a new direction
    /// there evicts one).
    pub fn flow_bucket_full<E: flowtable::Bucketed>(&self, key: &E::Key) -> Result<bool> {
        let g = self.flow_geometry::<E>()?;
        flowtable::bucket_full::<E>(self.map(E::MAP)?, &g, key)
    }

    /// Writes `entry` under `key` into `E`'s flow table (tests: no packet may be changing
    /// the table meanwhile).
    pub fn put_flow<E: flowtable::Bucketed>(&mut self, key: &E::Key, entry: E) -> Result<()> {
        let g = self.flow_geometry::<E>()?;
        flowtable::put::<E>(self.map_mut(E::MAP)?, &g, key, entry)
    }

    /// Every live slot of `E`'s flow table with its bucket (`flowtable::placed`; small
    /// tables).
    pub fn flow_placement<E: flowtable::Bucketed>(&self) -> Result<Vec<(u32, E::Key, E)>> {
        flowtable::placed::<E>(self.map(E::MAP)?)
    }

    /// Slots left half-written and bucket locks left held in `E`'s flow table
    /// (`flowtable::stuck`; small tables).
    pub fn flow_stuck<E: flowtable::Bucketed>(&self) -> Result<(usize, usize)> {
        flowtable::stuck::<E>(self.map(E::MAP)?)
    }

    /// `E`'s flow table's spill counts against the keys they count
    /// (`flowtable::spill_audit`; small tables).
    pub fn flow_spill_audit<E: flowtable::Bucketed>(&self) -> Result<Vec<(u32, u64, u64)>> {
        let g = self.flow_geometry::<E>()?;
        flowtable::spill_audit::<E>(self.map(E::MAP)?, &g)
    }

    /// Frees the directions of dead flows from `E`'s flow table (`flowtable::sweep`, as
    /// the daemon's sweeper does; `busy` carries the busy slots from one sweep to the
    /// next).
    pub fn sweep_flows<E: flowtable::Bucketed>(
        &self,
        now_ns: u64,
        cfg: &privatelink_common::Config,
        busy: &mut flowtable::BusySlots,
    ) -> Result<flowtable::Swept> {
        flowtable::sweep::<E>(self.map(E::MAP)?, now_ns, cfg, busy)
    }

    /// The kernel's ids of the two flow tables (IPv4, IPv6): what the daemon's sweeper
    /// checks the pins against (`flowtable::start_sweeper`).
    pub fn flow_table_ids(&self) -> Result<[u32; 2]> {
        Ok([
            flowtable::table_id(self.map(map_names::CONNTRACK)?)?,
            flowtable::table_id(self.map(map_names::CONNTRACK6)?)?,
        ])
    }

    /// Removes `key` from `E`'s flow table (as `put_flow`); whether it was there.
    pub fn remove_flow<E: flowtable::Bucketed>(&mut self, key: &E::Key) -> Result<bool> {
        let g = self.flow_geometry::<E>()?;
        flowtable::remove::<E>(self.map_mut(E::MAP)?, &g, key)
    }

    /// The link a VPC is attached through, as the data path holds it (`PL_VPC_PORTS`).
    pub fn vpc_link(&self, vpc_id: u32) -> Option<Link> {
        let m: HashMap<_, u32, VpcPort> =
            HashMap::try_from(self.map(map_names::VPC_PORTS).ok()?).ok()?;
        let p = m.get(&vpc_id, 0).ok()?;
        Some(Link {
            ifindex: p.ifindex,
            mac: p.mac,
            mtu: p.mtu,
        })
    }
}
/// Loads a program, trying again (up to 5 times, as libbpf does) when the kernel answers
/// EAGAIN: the verifier gives up when a signal is pending for the process, which a child
/// process exiting can cause during a verification that takes a second.
fn load_retrying(p: &mut Xdp) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match p.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    xdp_program(ebpf, PROGRAM_NAME)
}

/// The XDP program `name` of `ebpf`.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?
        .try_into()?)
}
