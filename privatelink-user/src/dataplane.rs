//! The loaded XDP program and its maps: load (re-using pinned maps so flows survive a
//! restart), attach, apply a `Desired` as a diff, and read counters and flows.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap, Map, MapData, PerCpuArray, ProgramArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use privatelink_common::{
    Appliance, ApplianceSet, Config, DEFAULT_CONNTRACK_ENTRIES, EndpointEni, FlowEntry, FlowKey,
    GatewayRoute, GwlbZone, Neighbor, PATH_PROGRAMS, PATHS_MAP, PROGRAM_NAME, Reason, VpcAddr,
    layout::{self, Layout},
    map_names,
};

use crate::{
    desired::Desired,
    reconcile::{Change, diff},
};

/// The XDP object, built by build.rs from privatelink-ebpf.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/privatelink-xdp"));

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/privatelink";

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where maps are pinned (and re-opened from); `None` keeps them private (tests).
    pub pin_dir: Option<PathBuf>,
    pub conntrack_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            conntrack_entries: DEFAULT_CONNTRACK_ENTRIES,
        }
    }
}

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
        loader.map_max_entries(map_names::CONNTRACK, opts.conntrack_entries);
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
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the XDP object")?;
        if let Some(dir) = &opts.pin_dir {
            // The maps are pinned now, with this build's layouts.
            record_layouts(dir, opts.conntrack_entries)?;
        }
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

    /// Brings the daemon-owned maps to `d`, writing only what differs.
    pub fn apply(&mut self, d: &Desired) -> Result<ApplyReport> {
        let first = self.applied.is_none();
        let cur = match self.applied.take() {
            Some(c) => c,
            None => Desired {
                ifaces: read_map(self.map(map_names::IFACES)?)?,
                vpc_ports: read_map(self.map(map_names::VPC_PORTS)?)?,
                endpoints: read_map(self.map(map_names::ENDPOINTS)?)?,
                snat_pools: read_map(self.map(map_names::SNAT_POOLS)?)?,
                snat_addrs: read_map(self.map(map_names::SNAT_ADDRS)?)?,
                sg_rules: read_map(self.map(map_names::SG_RULES)?)?,
                acl_in: read_map(self.map(map_names::ACL_IN)?)?,
                acl_out: read_map(self.map(map_names::ACL_OUT)?)?,
                gw_routes: read_routes(self.map(map_names::GATEWAY_ROUTES)?)?,
                gw_addrs: read_map(self.map(map_names::GATEWAY_ADDRS)?)?,
                gwlb_targets: read_map(self.map(map_names::GWLB_TARGETS)?)?,
                gwlb_appliances: read_map(self.map(map_names::GWLB_APPLIANCES)?)?,
                next_hops: read_map::<VpcAddr, Neighbor>(self.map(map_names::NEIGHBORS)?)?
                    .into_keys()
                    .collect(),
                listeners: read_map(self.map(map_names::LISTENERS)?)?,
                host: read_map(self.map(map_names::HOST)?)?,
                lb_sets: read_map(self.map(map_names::LB_SETS)?)?,
            },
        };
        let mut r = ApplyReport::default();
        // Where traffic can go, and the filters, before the endpoints that use them.
        macro_rules! sync_all {
            ($($name:ident => $field:ident),*) => {
                (|| {
                    $(sync(self.map_mut(map_names::$name)?, &cur.$field, &d.$field, &mut r)?;)*
                    Ok::<(), anyhow::Error>(())
                })()
            };
        }
        let res = sync_all!(
            IFACES => ifaces,
            VPC_PORTS => vpc_ports,
            HOST => host,
            LB_SETS => lb_sets,
            LISTENERS => listeners,
            SNAT_POOLS => snat_pools,
            SNAT_ADDRS => snat_addrs,
            SG_RULES => sg_rules,
            ACL_IN => acl_in,
            ACL_OUT => acl_out,
            GATEWAY_ADDRS => gw_addrs,
            GWLB_APPLIANCES => gwlb_appliances,
            GWLB_TARGETS => gwlb_targets,
            ENDPOINTS => endpoints
        )
        .and_then(|()| {
            sync_next_hops(
                self.map_mut(map_names::NEIGHBORS)?,
                &cur.next_hops,
                &d.next_hops,
                &mut r,
            )
        })
        .and_then(|()| {
            sync_routes(
                self.map_mut(map_names::GATEWAY_ROUTES)?,
                &cur.gw_routes,
                &d.gw_routes,
                &mut r,
            )
        });
        // Established flows skip the endpoint checks while the epoch stays; any change
        // (or a first apply, or a failed one that may have written half) moves it on.
        if first || res.is_err() || r.upserts + r.deletes > 0 {
            let bumped = self.bump_epoch();
            if let (Err(e), Ok(())) = (&bumped, &res) {
                return Err(anyhow!(
                    "moving the state epoch on after the maps were written: {e:#}"
                ));
            }
            if let Err(e) = bumped {
                // The apply's own error is the one to report; this one goes to the log.
                tracing::warn!(error = %format!("{e:#}"), "moving the state epoch on failed too");
            }
        }
        // On success the maps hold `d`; after a failure, re-read them next time.
        if res.is_ok() {
            self.applied = Some(d.clone());
        }
        res.map(|()| r)
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

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        read_flows(self.map(map_names::CONNTRACK)?)
    }
}

/// What a pinned map must be for this build to re-use it.
struct PinSpec {
    name: &'static str,
    key: usize,
    value: usize,
    /// Checked for the maps whose capacity is a daemon option or fixed by the reasons.
    entries: Option<u32>,
    /// `privatelink_common::layout::of` the key and value types.
    fingerprint: u64,
}

fn spec<K: Layout, V: Layout>(name: &'static str, entries: Option<u32>) -> PinSpec {
    PinSpec {
        name,
        key: std::mem::size_of::<K>(),
        value: std::mem::size_of::<V>(),
        entries,
        fingerprint: layout::of::<K, V>(),
    }
}

/// The key and value types (and, for conntrack and the counters, the capacity) of this
/// build's maps.
fn expected_layout(conntrack_entries: u32) -> Vec<PinSpec> {
    use privatelink_common::{
        FlowBudget, IfaceInfo, LbSet, ListenerSet, RuleSet, SnatPool, VpcPort, reason::REASON_COUNT,
    };
    vec![
        spec::<u32, IfaceInfo>(map_names::IFACES, None),
        spec::<u32, VpcPort>(map_names::VPC_PORTS, None),
        spec::<VpcAddr, EndpointEni>(map_names::ENDPOINTS, None),
        spec::<u32, SnatPool>(map_names::SNAT_POOLS, None),
        spec::<VpcAddr, u32>(map_names::SNAT_ADDRS, None),
        spec::<u32, u32>(map_names::EPOCH, None),
        spec::<u32, ListenerSet>(map_names::LISTENERS, None),
        spec::<VpcAddr, u32>(map_names::HOST, None),
        spec::<GwlbZone, LbSet>(map_names::LB_SETS, None),
        spec::<u32, FlowBudget>(map_names::EP_BUDGET, None),
        spec::<VpcAddr, Neighbor>(map_names::NEIGHBORS, None),
        spec::<FlowKey, FlowEntry>(map_names::CONNTRACK, Some(conntrack_entries)),
        spec::<u32, u64>(map_names::STATS, Some(REASON_COUNT)),
        spec::<u32, Config>(map_names::CONFIG, None),
        spec::<VpcAddr, RuleSet>(map_names::SG_RULES, None),
        spec::<VpcAddr, RuleSet>(map_names::ACL_IN, None),
        spec::<VpcAddr, RuleSet>(map_names::ACL_OUT, None),
        spec::<GatewayRoute, EndpointEni>(map_names::GATEWAY_ROUTES, None),
        spec::<VpcAddr, u32>(map_names::GATEWAY_ADDRS, None),
        spec::<GwlbZone, ApplianceSet>(map_names::GWLB_TARGETS, None),
        spec::<VpcAddr, Appliance>(map_names::GWLB_APPLIANCES, None),
        spec::<VpcAddr, Neighbor>(map_names::GWLB_NEIGHBORS, None),
    ]
}

/// The directory beside the pins that records the layout fingerprint of each pinned map:
/// one empty directory `NAME-HEX-ID` per map, `ID` the pinned map's kernel id (bpffs
/// holds BPF objects and directories only, and refuses names with a dot).
pub const LAYOUTS_DIR: &str = "layouts";

/// What `<dir>/layouts` says of the pinned maps.
struct Records {
    /// The directory exists: pins made since records are kept, so a pin without a valid
    /// record of its own (a crash between pinning and recording, a build from before
    /// records run in between) is of unknown layout.
    kept: bool,
    /// Map name → its records (fingerprint, map id): one, or two after a crash between
    /// writing the new record and removing the old one.
    by_map: std::collections::HashMap<String, Vec<(u64, u32)>>,
}

/// Reads `<dir>/layouts`; an entry that cannot be read is reported and ignored.
fn recorded_layouts(dir: &Path) -> Result<Records> {
    let path = dir.join(LAYOUTS_DIR);
    let entries = match std::fs::read_dir(&path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Records {
                kept: false,
                by_map: Default::default(),
            });
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut by_map = std::collections::HashMap::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let parsed = name.rsplitn(3, '-').collect::<Vec<_>>();
        let record = match parsed[..] {
            [id, hex, map] => u64::from_str_radix(hex, 16)
                .ok()
                .zip(id.parse::<u32>().ok())
                .map(|r| (map, r)),
            _ => None,
        };
        match record {
            Some((map, r)) => by_map
                .entry(map.to_string())
                .or_insert_with(Vec::new)
                .push(r),
            None => tracing::warn!(
                dir = %path.display(),
                entry = %name,
                "unreadable layout record: ignored"
            ),
        }
    }
    Ok(Records { kept: true, by_map })
}

/// Records this build's layout fingerprints of the pinned maps (just pinned or re-used),
/// with their ids, replacing older records.
fn record_layouts(dir: &Path, conntrack_entries: u32) -> Result<()> {
    let path = dir.join(LAYOUTS_DIR);
    let mut want = std::collections::HashSet::new();
    for spec in expected_layout(conntrack_entries) {
        let pin = dir.join(spec.name);
        let id = aya::maps::MapInfo::from_pin(&pin)
            .with_context(|| format!("reading {}", pin.display()))?
            .id();
        want.insert(format!("{}-{:016x}-{id}", spec.name, spec.fingerprint));
    }
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    // The new records first, then the stale ones go: a crash in between leaves a map with
    // two records, and the one naming its id counts.
    for record in &want {
        let p = path.join(record);
        if !p.exists() {
            std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        }
    }
    for entry in std::fs::read_dir(&path)? {
        let entry = entry?;
        if !want.contains(&*entry.file_name().to_string_lossy()) {
            std::fs::remove_dir(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A pinned map left by a build with another layout (or a different conntrack size) would
/// be re-used as is by the loader: unpin it so a fresh one is made, and say so. Conntrack
/// entries are lost then; daemon-owned maps are refilled by the next apply. A pin is of
/// this build's layout when its record says so for this very map (its id); pins from
/// before records (no `layouts` directory at all) are judged by their sizes alone.
fn drop_incompatible_pins(dir: &Path, conntrack_entries: u32) -> Result<()> {
    let recorded = recorded_layouts(dir)?;
    for want in expected_layout(conntrack_entries) {
        let path = dir.join(want.name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let fits = info.key_size() as usize == want.key
            && info.value_size() as usize == want.value
            && want.entries.is_none_or(|n| info.max_entries() == n);
        // The record of this very map (its id); others are of maps since replaced.
        let records = recorded
            .by_map
            .get(want.name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mine: Vec<u64> = records
            .iter()
            .filter(|(_, id)| *id == info.id())
            .map(|(f, _)| *f)
            .collect();
        let same_layout = match mine[..] {
            [f] => f == want.fingerprint,
            [] => !recorded.kept,
            _ => false,
        };
        if !fits || !same_layout {
            let found = match (&mine[..], records) {
                ([f], _) => format!("{f:016x} (map {})", info.id()),
                ([], [(f, id), ..]) => format!("{f:016x} (map {id})"),
                ([], []) if recorded.kept => "no record".to_string(),
                ([], []) => String::new(),
                _ => "several records".to_string(),
            };
            tracing::warn!(
                map = %want.name,
                id = info.id(),
                key_size = info.key_size(),
                value_size = info.value_size(),
                max_entries = info.max_entries(),
                layout = %found,
                this_build = %format!("{:016x}", want.fingerprint),
                "pinned map does not fit this build (layout or size changed): replacing it, its entries are lost"
            );
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    Ok(())
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

/// Loads the path programs and puts them in `PL_PATHS`, where the entry point tail-calls
/// them. Each load has its own array (a daemon that swaps its program into a pinned link
/// brings its own paths along). With a pin directory the array is pinned under
/// `paths/<entry program id>`, so the paths keep working after the daemon exits (the
/// kernel empties a program array when its last user reference goes); pins of programs
/// that no longer exist are removed.
fn load_paths(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<ProgramArray<MapData>> {
    let mut fds = Vec::new();
    for name in PATH_PROGRAMS {
        let p = xdp_program(ebpf, name)?;
        load_retrying(p).with_context(|| format!("the verifier rejected {name}"))?;
        fds.push(p.fd()?.try_clone()?);
    }
    let map = ebpf
        .take_map(PATHS_MAP)
        .ok_or_else(|| anyhow!("the object has no map {PATHS_MAP}"))?;
    if let Some(dir) = pin_dir {
        let dir = dir.join("paths");
        std::fs::create_dir_all(&dir)?;
        retire_path_pins(&dir);
        let pin = dir.join(program(ebpf)?.info()?.id().to_string());
        map.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    let mut paths: ProgramArray<MapData> = ProgramArray::try_from(map)?;
    for (i, fd) in fds.iter().enumerate() {
        paths.set(i as u32, fd, 0)?;
    }
    Ok(paths)
}

/// Removes the pinned path arrays of entry programs that are gone (replaced on every
/// link). Best effort: a pin is removed only when the kernel says its program does not
/// exist; anything unclear (another entry, an error) keeps it and is logged.
fn retire_path_pins(dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list path pins");
            return;
        }
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            tracing::warn!(path = %path.display(), "not a path pin of ours; left alone");
            continue;
        };
        if program_gone(id)
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot unpin retired paths");
        }
    }
}

/// Whether the BPF program with this id no longer exists: only ENOENT from
/// BPF_PROG_GET_FD_BY_ID says so (a missing privilege, say, does not).
fn program_gone(id: u32) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = Attr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the kernel reads `size_of::<Attr>()` bytes of `attr`; a returned fd is ours
    // and closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: closing the fd just returned to us.
        unsafe { libc::close(fd as i32) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT)
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

fn read_routes(map: &Map) -> Result<BTreeMap<GatewayRoute, EndpointEni>> {
    let m: LpmTrie<_, VpcAddr, EndpointEni> = LpmTrie::try_from(map)?;
    m.iter()
        .map(|kv| {
            let (k, v) = kv?;
            let data = k.data();
            Ok((
                GatewayRoute {
                    prefix_len: k.prefix_len(),
                    vpc_id: data.vpc_id,
                    addr: data.addr,
                },
                v,
            ))
        })
        .collect()
}

/// Registers next hops (zero MAC: the data path learns the real one from ARP, and only
/// for registered addresses); a registration that exists keeps its learned MAC.
fn sync_next_hops(
    map: &mut Map,
    current: &std::collections::BTreeSet<VpcAddr>,
    desired: &std::collections::BTreeSet<VpcAddr>,
    r: &mut ApplyReport,
) -> Result<()> {
    let mut m: HashMap<_, VpcAddr, Neighbor> = HashMap::try_from(map)?;
    for k in current.difference(desired) {
        m.remove(k)
            .with_context(|| format!("unregistering next hop {k:?}"))?;
        r.deletes += 1;
    }
    for k in desired.difference(current) {
        // BPF_NOEXIST (1): never overwrite a learned MAC; "exists" is fine, anything else
        // (a full map) is an error, so the next apply tries again.
        match m.insert(
            k,
            Neighbor {
                mac: [0; 6],
                _pad: [0; 2],
            },
            1,
        ) {
            Ok(()) => r.upserts += 1,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("registering next hop {k:?}")),
        }
    }
    Ok(())
}

fn sync_routes(
    map: &mut Map,
    current: &BTreeMap<GatewayRoute, EndpointEni>,
    desired: &BTreeMap<GatewayRoute, EndpointEni>,
    r: &mut ApplyReport,
) -> Result<()> {
    let mut m: LpmTrie<_, VpcAddr, EndpointEni> = LpmTrie::try_from(map)?;
    let key = |g: &GatewayRoute| {
        LpmKey::new(
            g.prefix_len,
            VpcAddr {
                vpc_id: g.vpc_id,
                addr: g.addr,
            },
        )
    };
    for change in diff(current, desired) {
        match change {
            Change::Upsert(k, v) => {
                m.insert(&key(&k), v, 0)
                    .with_context(|| format!("writing route {k:?}"))?;
                r.upserts += 1;
            }
            Change::Delete(k) => {
                m.remove(&key(&k))
                    .with_context(|| format!("removing route {k:?}"))?;
                r.deletes += 1;
            }
        }
    }
    Ok(())
}

fn read_map<K: Pod + Ord, V: Pod>(map: &Map) -> Result<BTreeMap<K, V>> {
    let m: HashMap<_, K, V> = HashMap::try_from(map)?;
    Ok(m.iter().collect::<Result<_, _>>()?)
}

fn sync<K, V>(
    map: &mut Map,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    r: &mut ApplyReport,
) -> Result<()>
where
    K: Pod + Ord + std::fmt::Debug,
    V: Pod + PartialEq,
{
    let mut m: HashMap<_, K, V> = HashMap::try_from(map)?;
    for change in diff(current, desired) {
        match change {
            Change::Upsert(k, v) => {
                m.insert(k, v, 0)
                    .with_context(|| format!("writing {k:?}"))?;
                r.upserts += 1;
            }
            Change::Delete(k) => {
                m.remove(&k).with_context(|| format!("removing {k:?}"))?;
                r.deletes += 1;
            }
        }
    }
    Ok(())
}

pub fn read_stats(map: &Map) -> Result<Vec<(Reason, u64)>> {
    let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    Reason::ALL
        .iter()
        .map(|r| {
            let v = a.get(&(*r as u32), 0)?;
            Ok((*r, v.iter().sum()))
        })
        .collect()
}

/// The data path's settings from the pinned `PL_CONFIG` (defaults until the daemon wrote
/// them, as the data path reads it).
pub fn read_config(pin_dir: &Path) -> Result<Config> {
    let map = open_pinned(pin_dir, map_names::CONFIG)?;
    let a: Array<_, Config> = Array::try_from(&map)?;
    let c = a.get(&0, 0)?;
    Ok(if c.tcp_timeout_ns == 0 {
        Config::default()
    } else {
        c
    })
}

/// The data path's flow clock (CLOCK_MONOTONIC at tick resolution, as
/// `bpf_ktime_get_coarse_ns`).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `PL_EP_BUDGET`: each endpoint's (numeric id) allowance of new flows.
pub fn read_budgets(map: &Map) -> Result<Vec<(u32, privatelink_common::FlowBudget)>> {
    Ok(read_map(map)?.into_iter().collect())
}

pub fn read_flows(map: &Map) -> Result<Vec<(FlowKey, FlowEntry)>> {
    let m: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(map)?;
    Ok(m.iter().collect::<Result<_, _>>()?)
}

/// Opens one pinned map (for the CLI, which runs beside the daemon).
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    if !path.exists() {
        bail!(
            "{} does not exist: is the daemon running with --pin-dir {}?",
            path.display(),
            pin_dir.display()
        );
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// Interface lookup for `desired::compute`: ifindex and MAC from the kernel.
pub fn resolve_link(name: &str) -> Result<crate::desired::Link, String> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not an interface name"))?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(format!(
            "interface {name} does not exist in this network namespace"
        ));
    }
    let mac = hardware_address(&cname).map_err(|e| format!("reading the MAC of {name}: {e}"))?;
    let mtu = interface_mtu(&cname).map_err(|e| format!("reading the MTU of {name}: {e}"))?;
    Ok(crate::desired::Link { ifindex, mac, mtu })
}

/// The interface's MTU: SIOCGIFMTU on a socket of the calling thread's network namespace
/// (not `/sys/class/net/<name>/mtu`: sysfs shows the namespace it was mounted in, and
/// `--netns` keeps the host's mounts so that /sys/fs/bpf stays visible).
fn interface_mtu(name: &std::ffi::CStr) -> std::io::Result<u16> {
    let req = ifreq(name, libc::SIOCGIFMTU)?;
    // SAFETY: the union member SIOCGIFMTU fills.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.clamp(0, u16::MAX as libc::c_int) as u16)
}

/// One interface ioctl (`request` reads `ifr_name` and fills the union) on a socket of the
/// calling thread's network namespace.
fn ifreq(name: &std::ffi::CStr, request: libc::Ioctl) -> std::io::Result<libc::ifreq> {
    let fd = dgram_socket()?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.to_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the interface requests used here read ifr_name and fill the union.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), request, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(req)
}

fn dgram_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here only.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// SIOCGIFHWADDR on a socket of the calling thread's network namespace (sysfs would show
/// the namespace it was mounted in, not the thread's).
fn hardware_address(name: &std::ffi::CStr) -> std::io::Result<[u8; 6]> {
    let req = ifreq(name, libc::SIOCGIFHWADDR)?;
    // SAFETY: the union member SIOCGIFHWADDR fills.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}
