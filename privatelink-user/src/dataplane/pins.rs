//! The pin directory: layout records of the pinned maps (a pin of another layout is
//! replaced, not re-used), and the pinned path arrays of loaded entry programs.

use std::{collections::HashSet, path::Path};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, ProgramArray},
    programs::ProgramError,
};
use privatelink_common::{
    PATH_PROGRAMS, PATHS_MAP,
    layout::{self, Layout},
    map_names,
};

use super::{load_retrying, program, xdp_program};

/// What a pinned map must be for this build to re-use it.
struct PinSpec {
    name: &'static str,
    key: usize,
    value: usize,
    /// Checked for the maps whose capacity is a daemon option (`configured`) or `fixed`.
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

/// The key and value types (and, for the maps of a `fixed` or `configured` capacity, the
/// capacity) of this build's maps, from the catalogue.
fn expected_layout(conntrack_entries: u32) -> Vec<PinSpec> {
    macro_rules! capacity {
        ($cap:expr, unchecked) => {
            None
        };
        ($cap:expr, fixed) => {
            Some(($cap) as u32)
        };
        ($cap:expr, configured) => {
            Some(privatelink_common::flowtable::table_elements(
                conntrack_entries,
            ))
        };
    }
    macro_rules! specs {
        ($({ $(#[$doc:meta])* $name:ident $map:ident $kind:ident [$key:ty] [$pinned:ty] [$value:ty] [$cap:expr] $check:ident $($owner:tt)* })*) => {
            vec![$(spec::<$pinned, $value>(map_names::$name, capacity!($cap, $check)),)*]
        };
    }
    privatelink_common::for_each_map!(specs)
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
pub(super) fn record_layouts(dir: &Path, conntrack_entries: u32) -> Result<()> {
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
pub(super) fn drop_incompatible_pins(dir: &Path, conntrack_entries: u32) -> Result<()> {
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

/// Loads the path programs and puts them in `PL_PATHS`, where the entry point tail-calls
/// them. Each load has its own array (a daemon that swaps its program into a pinned link
/// brings its own paths along). With a pin directory the array is pinned under
/// `paths/<entry program id>`, so the paths keep working after the daemon exits (the
/// kernel empties a program array when its last user reference goes); pins of programs
/// that no longer exist are removed.
pub(super) fn load_paths(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<ProgramArray<MapData>> {
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
/// exist — or, for a daemon without the privilege to list every program (CAP_SYS_ADMIN;
/// the systemd unit does not give it), when none of our pinned links attaches it any
/// more; anything unclear (another entry, an error) keeps it and is logged.
pub(super) fn retire_path_pins(dir: &Path) {
    // The pins are listed before the programs: a pin is made only after its program is
    // loaded, so a pin listed here whose program lives is in the program list taken next
    // (listing the programs first could miss the program of a pin another loader makes
    // meanwhile, and remove a live pin).
    let entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e.flatten().collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list path pins");
            return;
        }
    };
    let Some(live) = live_programs().or_else(|| attached_programs(dir)) else {
        return;
    };
    for e in entries {
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            tracing::warn!(path = %path.display(), "not a path pin of ours; left alone");
            continue;
        };
        if !live.contains(&id)
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot unpin retired paths");
        }
    }
}

/// The programs our pinned links (`<pin dir>/links/*`, beside `paths_dir`) attach, or
/// `None` if one of them cannot be read. Needs no privilege beyond the pins' own
/// permissions: a link's program id comes from the link itself.
fn attached_programs(paths_dir: &Path) -> Option<HashSet<u32>> {
    let links = paths_dir.parent()?.join("links");
    let mut ids = HashSet::new();
    let entries = match std::fs::read_dir(&links) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(ids),
        Err(e) => {
            tracing::debug!(dir = %links.display(), error = %e, "cannot list the links: path pins kept");
            return None;
        }
    };
    for e in entries {
        let path = e.ok()?.path();
        let info = aya::programs::links::PinnedLink::from_pin(&path)
            .map(aya::programs::links::FdLink::from)
            .and_then(|l| l.info());
        match info {
            Ok(i) => {
                ids.insert(i.program_id());
            }
            Err(e) => {
                tracing::debug!(link = %path.display(), error = %e, "cannot read a link: path pins kept");
                return None;
            }
        }
    }
    Some(ids)
}

/// The ids of the BPF programs that exist now, or `None` when the kernel would not list
/// them all (a missing privilege, say): then no program counts as gone. A program that
/// disappears while being listed (ENOENT on opening it) is gone, not an error.
fn live_programs() -> Option<HashSet<u32>> {
    let mut ids = HashSet::new();
    for p in aya::programs::loaded_programs() {
        match p {
            Ok(info) => {
                ids.insert(info.id());
            }
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the loaded programs: path pins kept");
                return None;
            }
        }
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use privatelink_common::DEFAULT_CONNTRACK_ENTRIES;

    use super::*;

    /// The XDP object declares every catalogue map with the catalogue's key and value sizes
    /// (and capacity where it is checked), and no other map but its own unpinned ones.
    #[test]
    fn the_object_declares_the_catalogue() {
        let obj = aya_obj::Object::parse(super::super::EBPF_OBJECT).expect("the XDP object");
        let mut declared: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| n.starts_with("PL_"))
            .collect();
        declared.sort();
        let mut want: Vec<&str> = map_names::ALL.to_vec();
        want.extend([
            PATHS_MAP,
            "PL_SCRATCH",
            "PL_HANDOFF",
            "PL_FLOW_EVENTS",
            "PL_FLOW_SCRATCH",
            "PL_FLOW_SCR6",
            "PL_HANDOFF6",
            "PL_SCRATCH6",
            "PL_KEYS6",
            "PL_CLOCK",
            "PL_IFCACHE",
            "PL_PORTCACHE",
            "PL_APPLCACHE",
            "PL_FLOWKEY",
            "PL_FENCE",
        ]);
        want.sort();
        assert_eq!(declared, want);
        for spec in expected_layout(DEFAULT_CONNTRACK_ENTRIES) {
            let m = &obj.maps[spec.name];
            assert_eq!(m.key_size() as usize, spec.key, "{}", spec.name);
            assert_eq!(m.value_size() as usize, spec.value, "{}", spec.name);
            if let Some(n) = spec.entries {
                assert_eq!(m.max_entries(), n, "{}", spec.name);
            }
        }
    }

    /// The paths that check a packet against the daemon's maps and stamp its flow with the
    /// epoch it read hold a full barrier between the two (`order_after_epoch`: a fetching
    /// atomic OR of 0, BPF having no fence instruction): in the entry program, before the
    /// full path's endpoint lookup and before the gateway routes' (the GENEVE return
    /// between them takes none); in the IPv6 program, before its endpoint lookup. Each is
    /// found as a fetching atomic shortly before a load of that map, with no interface
    /// lookup between (the interface cache's fill has a barrier of its own). What it orders
    /// is only visible on a weakly ordered CPU, not on this x86 machine; this keeps the
    /// barriers from being dropped, moved away from the lookups, or turned by LLVM into a
    /// plain (unordered) atomic. (The ARP path's endpoint lookup has none: it stamps
    /// nothing.)
    #[test]
    fn the_checking_paths_hold_a_barrier_after_the_epoch() {
        use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
        // BPF_STX | BPF_ATOMIC | BPF_DW, and BPF_OR | BPF_FETCH.
        const ATOMIC_DW: u8 = 0xdb;
        const FETCH_OR: i32 = 0x41;
        // How far before the lookup the barrier may be, in bytes (128 instructions: the
        // IPv6 program walks the header chain between the two).
        const NEAR: u64 = 128 * 8;
        let elf = object::File::parse(super::super::EBPF_OBJECT).expect("the XDP object");
        let section = elf.section_by_name("xdp").expect("the programs' section");
        let code = section.data().expect("its code");
        // Each instruction that names a map: its offset in the section, the map.
        let loads: Vec<(u64, String)> = section
            .relocations()
            .filter_map(|(at, r)| match r.target() {
                RelocationTarget::Symbol(i) => {
                    let sym = elf.symbol_by_index(i).ok()?;
                    Some((at, sym.name().ok()?.to_string()))
                }
                _ => None,
            })
            .collect();
        let barrier = |at: u64| {
            let i = &code[at as usize..at as usize + 8];
            i[0] == ATOMIC_DW && i32::from_le_bytes([i[4], i[5], i[6], i[7]]) == FETCH_OR
        };
        for (program, map) in [
            (privatelink_common::PROGRAM_NAME, "PL_ENDPOINTS"),
            (privatelink_common::PROGRAM_NAME, "PL_GW_ROUTES"),
            ("privatelink_ipv6", "PL_ENDPOINTS6"),
        ] {
            let sym = elf
                .symbols()
                .find(|s| s.name() == Ok(program))
                .expect("the program's symbol");
            let (from, to) = (sym.address(), sym.address() + sym.size());
            let mine = |name: &str| -> Vec<u64> {
                loads
                    .iter()
                    .filter(|(at, n)| (from..to).contains(at) && n == name)
                    .map(|(at, _)| *at)
                    .collect()
            };
            let (lookups, ifaces) = (mine(map), mine("PL_IFACES"));
            assert!(!lookups.is_empty(), "{program}: no load of {map}");
            let fenced = lookups.iter().any(|&at| {
                let Some(b) = (from / 8..at / 8)
                    .rev()
                    .map(|i| i * 8)
                    .find(|&b| barrier(b))
                else {
                    return false;
                };
                at - b <= NEAR && !ifaces.iter().any(|&i| b < i && i < at)
            });
            assert!(
                fenced,
                "{program}: no load of {map} has a fetching atomic (a barrier) shortly before it"
            );
        }
    }
}
