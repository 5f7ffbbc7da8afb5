//! The flow tables (`PL_CONNTRACK`, `PL_CONNTRACK6`) from userspace: buckets of slots in
//! an array the data path indexes itself (`privatelink_common::flowtable`). The daemon,
//! the CLI and the tests read them through a read-only mapping of the array (one pass over
//! memory, not a syscall per bucket). The daemon writes through a writable one: the heads
//! when it makes a table (`init_geometry`), and, while packets run, the slots of dead
//! flows it frees (`sweep`), by the data path's own protocol for a slot (its state
//! claimed by compare-and-exchange; no bucket lock but when it gives a slot back). The
//! tests also write and remove entries, a bucket at a time, on tables no packet is
//! changing meanwhile.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, Map, MapData};
use privatelink_common::{
    FlowBucket, FlowBucket6, FlowEntry, FlowEntry6, FlowGeometry, FlowKey, FlowKey6,
    flowtable::{
        FLOW_WAYS, GIVE_BACK_MARK, HEAD_LOCKED, HEAD_OWN_SHIFT, HEAD_SPILL, HEADS_PER_ELEMENT,
        KeyHashParams, SLOT_BUSY, SLOT_FREE, SLOT_LIVE, SlotKey, Slotted, bucket_pair, buckets_of,
        freed, head_at, key_hash_by, key_hash_params, next_state, published, same_key, slot_home,
        slot_state, table_buckets, to_first,
    },
};

use super::read::TableEntry;

/// A family's flow entry, with its bucket type.
pub trait Bucketed: TableEntry<Key: SlotKey> {
    type Bucket: aya::Pod + Default;
    /// Slot `i`'s state, key and entry.
    fn slot(b: &Self::Bucket, i: usize) -> (u64, Self::Key, Self);
    /// Slot `i`'s whole state word (its state and generation).
    fn word(b: &Self::Bucket, i: usize) -> u64;
    /// Its rank for eviction as a new entry made at tick `now` sees it (`evict_rank`), as
    /// the data path judges it.
    fn rank(&self, now: u32) -> u64;
    /// Its `last_seen` tick: a new entry's is the tick it is made at.
    fn seen(&self) -> u32;
    /// Makes slot `i` hold `key` and `entry` (`SLOT_LIVE`) with `home` (`slot_home`), or
    /// frees it (`None`).
    fn set_slot(b: &mut Self::Bucket, i: usize, kv: Option<(Self::Key, Self, u32)>);
    /// Slot `i`'s home (`slot_home`): its key's first bucket's element index when it
    /// lives in its second, else 0.
    fn home(b: &Self::Bucket, i: usize) -> u32;
    /// Where a slot's entry's `last_seen` is, in bytes from the slot's start.
    const SEEN_OFFSET: usize;
}

macro_rules! bucketed {
    ($entry:ty, $key:ty, $bucket:ty, $slot:ty) => {
        impl Bucketed for $entry {
            type Bucket = $bucket;
            const SEEN_OFFSET: usize =
                std::mem::offset_of!($slot, entry) + std::mem::offset_of!($entry, last_seen);
            fn home(b: &$bucket, i: usize) -> u32 {
                slot_home(b.slots[i].state)
            }
            fn slot(b: &$bucket, i: usize) -> (u64, $key, $entry) {
                let s = &b.slots[i];
                (
                    slot_state(s.state),
                    <$slot>::key_of(s.state, &s.key),
                    s.entry,
                )
            }
            fn word(b: &$bucket, i: usize) -> u64 {
                b.slots[i].state
            }
            fn rank(&self, now: u32) -> u64 {
                privatelink_common::flowtable::evict_rank(now, self.last_seen, self.tcp_flags)
            }
            fn seen(&self) -> u32 {
                self.last_seen
            }
            fn set_slot(b: &mut $bucket, i: usize, kv: Option<($key, $entry, u32)>) {
                let s = &mut b.slots[i];
                match kv {
                    Some((k, e, home)) => {
                        let n = <$key as SlotKey>::WORDS;
                        for (j, w) in s.key.iter_mut().enumerate().take(n - 1) {
                            *w = k.word(j);
                        }
                        s.state = published(s.state, k.word(n - 1), home);
                        s.entry = e;
                    }
                    None => s.state = freed(s.state),
                }
            }
        }
    };
}
bucketed!(
    FlowEntry,
    FlowKey,
    FlowBucket,
    privatelink_common::flowtable::FlowSlot
);
bucketed!(
    FlowEntry6,
    FlowKey6,
    FlowBucket6,
    privatelink_common::flowtable::FlowSlot6
);

/// Word `w` of the heads' region's element `b` (`privatelink_common::flowtable::heads`).
fn word<B: aya::Pod>(b: &mut B, w: u32) -> &mut u64 {
    assert!(w < HEADS_PER_ELEMENT && std::mem::size_of::<B>() >= 8 * HEADS_PER_ELEMENT as usize);
    // SAFETY: inside the element (checked above), which is 8-aligned (its slots begin
    // with a `u64`) and plain data.
    unsafe { &mut *(b as *mut B).cast::<u64>().add(w as usize) }
}

/// The geometry of `E`'s table (`table`), from its word 0.
pub fn geometry<E: Bucketed>(table: &Map) -> Result<FlowGeometry> {
    let a: Array<_, E::Bucket> = Array::try_from(table)?;
    let mut e0 = a.get(&0, 0)?;
    Ok(FlowGeometry::from_word(*word(&mut e0, 0)))
}

/// Bucket `b`'s head (`HEAD_LOCKED`): its lock, own element index and spill count.
fn head<E: Bucketed>(a: &Array<&MapData, E::Bucket>, b: u32) -> Result<u64> {
    let (el, w) = head_at(b);
    Ok(*word(&mut a.get(&el, 0)?, w))
}

/// The geometry `E`'s table of `buckets` buckets is to have: the one the table kept from
/// before (`kept`, a pinned table) has for that size, so its flows stay where they are;
/// else its buckets and a seed drawn now. Chosen before the object is loaded: the
/// programs get it as read-only data (`PL_FLOW_GEOMETRY`), the table in its word 0
/// (`init_geometry`).
pub fn geometry_for<E: Bucketed>(kept: Option<&Map>, buckets: u32) -> Result<FlowGeometry> {
    if let Some(table) = kept {
        let old = Mapped::new::<E>(table, false)?.geometry();
        if old.buckets == buckets && old.seed != 0 {
            return Ok(old);
        }
    }
    let mut seed = [0u8; 4];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("drawing a hash seed: {e}"))?;
    Ok(FlowGeometry {
        buckets,
        seed: u32::from_ne_bytes(seed) | 1,
    })
}

/// Gives `E`'s table (`table`) geometry `g` (`geometry_for`) and its buckets' heads,
/// unless it has that geometry (a table kept from before: its flows stay where they are),
/// written before any program uses the table. Anything the table held is cleared first
/// (under another geometry, or none, no slot of it is where a lookup would look, and no
/// count counts it). Each head gets its bucket's own element index (what a key spilled
/// from it records); the geometry goes last, so a table whose heads were not all written
/// has none, and gets them again. Written through a shared mapping: one pass over memory,
/// not a syscall per element.
pub fn init_geometry<E: Bucketed>(table: &mut Map, g: FlowGeometry) -> Result<()> {
    let m = Mapped::new::<E>(table, true)?;
    if m.geometry() == g {
        return Ok(());
    }
    let buckets = g.buckets;
    let heads = g.heads();
    anyhow::ensure!(
        m.elements >= (heads + buckets) as usize,
        "{}: {} elements, {buckets} buckets need {}",
        E::MAP,
        m.elements,
        heads + buckets
    );
    // No geometry while the rest is written. No program may use the table yet (its heads
    // and slots are being rewritten): the daemon loads and attaches its programs after
    // this. A fresh map is zero already; one of another geometry is not.
    m.atomic(0, 0).store(0, Ordering::SeqCst);
    // SAFETY: the mapping's bytes past word 0, plain data; no program uses the table yet.
    unsafe { std::ptr::write_bytes(m.base.as_ptr().add(8), 0, m.len - 8) };
    for b in 0..buckets {
        let (el, w) = head_at(b);
        m.atomic(el as usize, w as usize * 8)
            .store(u64::from(heads + b) << HEAD_OWN_SHIFT, Ordering::SeqCst);
    }
    m.atomic(0, 0).store(g.word(), Ordering::SeqCst);
    Ok(())
}

/// The buckets a table configured for `entries` entries has.
pub fn buckets_for(entries: u32) -> u32 {
    table_buckets(entries)
}

/// A table's geometry with its key hash's parameters worked out once (`key_hash_params` of
/// its seed), for a walk that places many keys: `buckets_of` each, without the twelve
/// splitmix64 steps a call of `buckets_of` takes.
struct Placing {
    g: FlowGeometry,
    hash: KeyHashParams,
}

impl Placing {
    fn new(g: FlowGeometry) -> Self {
        Placing {
            g,
            hash: key_hash_params(g.seed),
        }
    }

    /// `buckets_of(key, &self.g)`.
    fn buckets_of<K: SlotKey>(&self, key: &K) -> (u32, u32) {
        bucket_pair(key_hash_by(key, |i| self.hash[i]), self.g.buckets)
    }
}

fn map_data(map: &Map) -> Result<&MapData> {
    match map {
        Map::Array(d) => Ok(d),
        _ => bail!("a flow table is an array"),
    }
}

/// A shared mapping of a flow table's memory (`BPF_F_MMAPABLE`), unmapped when dropped:
/// one pass over memory, not a syscall per bucket.
struct Mapped {
    base: NonNull<u8>,
    len: usize,
    elements: usize,
    size: usize,
    write: bool,
}

impl Mapped {
    /// Maps `E`'s table (`table`), read-only or for writing (`sweep`).
    fn new<E: Bucketed>(table: &Map, write: bool) -> Result<Self> {
        let data = map_data(table)?;
        let info = data.info()?;
        let elements = info.max_entries() as usize;
        let size = std::mem::size_of::<E::Bucket>();
        // A table of another layout (another build's pin) is not read as this one.
        anyhow::ensure!(
            info.value_size() as usize == size,
            "{}: elements of {} bytes, not {size}",
            E::MAP,
            info.value_size()
        );
        let len = elements * size;
        let fd = data.fd().as_fd().as_raw_fd();
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a shared mapping of the map's memory, unmapped on drop; nothing else is
        // mapped at the address the kernel picks.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context(format!("mapping {}", E::MAP));
        }
        let base = NonNull::new(p.cast::<u8>()).context("mmap returned null")?;
        Ok(Self {
            base,
            len,
            elements,
            size,
            write,
        })
    }

    /// The geometry (word 0).
    fn geometry(&self) -> FlowGeometry {
        // SAFETY: word 0 of the mapping, 8-aligned (page-aligned mapping).
        FlowGeometry::from_word(unsafe { std::ptr::read_volatile(self.base.as_ptr().cast()) })
    }

    /// The buckets' element indices (none for a table without its geometry yet).
    fn buckets(&self, g: &FlowGeometry) -> std::ops::Range<usize> {
        let first = (g.heads() as usize).min(self.elements);
        first..(first + g.buckets as usize).min(self.elements)
    }

    /// A copy of element `el` (below `elements`). The data path may be writing it: a torn
    /// slot reads as whatever it held, as a map lookup could.
    fn bucket<E: Bucketed>(&self, el: usize) -> E::Bucket {
        assert!(el < self.elements);
        // SAFETY: inside the mapping (checked above); a copy.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(el * self.size).cast()) }
    }

    /// The word at byte `byte` of element `el`, as an atomic: a slot's state word (at the
    /// slot's start: `repr(C)`, its first field) or a head. For a writable mapping.
    fn atomic(&self, el: usize, byte: usize) -> &AtomicU64 {
        assert!(
            self.write && el < self.elements && byte.is_multiple_of(8) && byte + 8 <= self.size
        );
        // SAFETY: an 8-aligned word inside the mapping (checked above), which lives as
        // long as `self`; the data path changes it only by atomic operations.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(el * self.size + byte).cast()) }
    }

    /// Gives slot `at` (of the table's slots), claimed as `busy` by `free`, back live,
    /// if no other slot holds its key `key` live, under the lock of the key's first
    /// bucket (a writer of the key holds it while it looks for the key and writes: a
    /// packet that missed the key while the slot was claimed may have placed it anew).
    /// The lock is tried for up to `GIVE_BACK_SPIN` (a data path writer holds it for
    /// microseconds); once held, it is marked as this sweeper's (`GIVE_BACK_MARK`: so
    /// that, should this sweeper die holding it, a later sweep knows the lock for one
    /// nobody will give back), and a guard clears the mark and gives the lock back, in
    /// that order, on any way out. Another mark already there (another sweeper's, maybe
    /// dead) and the give-back is not made: while a dead sweeper's mark stands (until a
    /// sweep `BUSY_STALE_NS` later gives its lock back), every slot whose stamp moved is
    /// freed, not given back, and its flow is made anew by its next packet. A sweeper
    /// killed in the moment between taking the lock and marking it, or between clearing
    /// the mark and giving the lock back, leaves a lock no sweep takes (the other order
    /// would leave a mark without its lock, which a later sweep would take from whoever
    /// holds it). Whether the slot is live again (else `free` frees it: the lock held all
    /// along, a mark there, or the key elsewhere).
    fn give_back<E: Bucketed>(
        &self,
        p: &Placing,
        key: &E::Key,
        at: usize,
        state: &AtomicU64,
        busy: u64,
    ) -> bool {
        let (first, second) = p.buckets_of(key);
        let els = [first, second].map(|b| (p.g.heads() + b) as usize);
        if els.iter().any(|&el| el >= self.elements) {
            return false;
        }
        let (hel, hw) = head_at(first);
        let head = self.atomic(hel as usize, hw as usize * 8);
        let start = std::time::Instant::now();
        while head.fetch_or(HEAD_LOCKED, Ordering::SeqCst) & HEAD_LOCKED != 0 {
            if start.elapsed() > GIVE_BACK_SPIN {
                return false;
            }
            std::hint::spin_loop();
        }
        /// Clears the mark and gives the lock back, however `give_back` ends; but only
        /// while the mark is still this give-back's: a mark another sweep took (this one
        /// stalled for `BUSY_STALE_NS`) took the lock with it, and the lock may be
        /// another writer's by now.
        struct Unlock<'a>(&'a AtomicU64, Option<(&'a AtomicU64, u64)>);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                let ours = self.1.is_none_or(|(word, mark)| {
                    word.compare_exchange(mark, 0, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                });
                if ours {
                    self.0.fetch_and(!HEAD_LOCKED, Ordering::SeqCst);
                }
            }
        }
        let mut unlock = Unlock(head, None);
        let word = self.atomic(0, GIVE_BACK_MARK as usize * 8);
        let mark = u64::from(first + 1) | u64::from(give_back_nonce()) << 32;
        if word
            .compare_exchange(0, mark, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        unlock.1 = Some((word, mark));
        let elsewhere = els.into_iter().any(|el| {
            let bucket = self.bucket::<E>(el);
            (0..FLOW_WAYS as usize).any(|i| {
                let (s, k, _) = E::slot(&bucket, i);
                slot_index(el, i) != at && s == SLOT_LIVE && same_key(&k, key)
            })
        });
        !elsewhere
            && state
                .compare_exchange(
                    busy,
                    next_state(busy, SLOT_LIVE),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
    }

    /// The live entry of `key`, searched in both its buckets, if it is `owner`'s partner
    /// (`partner_of` it gives back `owner`, as the data path's `conntrack::alive` asks),
    /// with where it is (its element, its slot) and its state word; `Err` while a slot
    /// of either bucket is `SLOT_BUSY` (a writer's: it may be the partner, being
    /// rewritten or given back), unless `stale` knows it as a slot busy with no writer
    /// (its index in the table's slots and its state word).
    fn partner<E: Bucketed>(
        &self,
        p: &Placing,
        key: &E::Key,
        owner: &E::Key,
        stale: impl Fn(usize, u64) -> bool,
    ) -> Result<Option<Placed<E>>, ()> {
        let (first, second) = p.buckets_of(key);
        let mut found = None;
        for b in [first, second] {
            let el = (p.g.heads() + b) as usize;
            if el >= self.elements {
                continue;
            }
            let bucket = self.bucket::<E>(el);
            for i in 0..FLOW_WAYS as usize {
                let (state, k, e) = E::slot(&bucket, i);
                if state == SLOT_BUSY && !stale(slot_index(el, i), E::word(&bucket, i)) {
                    return Err(());
                }
                if state == SLOT_LIVE && same_key(&k, key) && same_key(&e.partner_of(&k), owner) {
                    found = Some(Placed {
                        el,
                        i,
                        word: E::word(&bucket, i),
                        entry: e,
                    });
                }
            }
        }
        Ok(found)
    }
}

/// A nonce for a give-back's mark (`GIVE_BACK_MARK`): this process's id and a count, so
/// that two marks a sweep sees are one only if one give-back made them.
fn give_back_nonce() -> u32 {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    std::process::id().rotate_left(16) ^ COUNT.fetch_add(1, Ordering::Relaxed)
}

/// Slot `i` of element `el` as an index in the table's slots (what `BusySlots` and a
/// `SweepProbe` name a slot by).
fn slot_index(el: usize, i: usize) -> usize {
    el * FLOW_WAYS as usize + i
}

/// A live slot `Mapped::partner` found: its element, its slot, its state word, its entry.
struct Placed<E> {
    el: usize,
    i: usize,
    word: u64,
    entry: E,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// How often the daemon sweeps the flow tables (`sweep`; at least four times as long as
/// a sweep takes).
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Sweeps both pinned flow tables of `pin_dir` (`sweep`), every `SWEEP_EVERY` and never
/// more than a fifth of the time, in a blocking task of the daemon's runtime: while the
/// pins are the tables `ids` names (this daemon's: another daemon of another build may
/// have replaced them, and sweeps its own).
pub fn start_sweeper(pin_dir: std::path::PathBuf, ids: [u32; 2]) {
    tokio::spawn(async move {
        let mut took = std::time::Duration::ZERO;
        let mut busy = [BusySlots::default(), BusySlots::default()];
        loop {
            tokio::time::sleep(SWEEP_EVERY.max(took * 4)).await;
            let start = std::time::Instant::now();
            let dir = pin_dir.clone();
            let mut b = std::mem::take(&mut busy);
            let swept = tokio::task::spawn_blocking(move || {
                let r = sweep_pinned(&dir, ids, &mut b);
                (r, b)
            })
            .await;
            match swept {
                Ok((Ok((v4, v6)), b)) => {
                    busy = b;
                    if v4.unlocked + v6.unlocked > 0 {
                        tracing::warn!(
                            ipv4 = v4.unlocked,
                            ipv6 = v6.unlocked,
                            "gave back bucket locks a sweeper died holding (their buckets \
                             refused new flows until now)"
                        );
                    }
                    tracing::debug!(?v4, ?v6, "swept the flow tables");
                }
                Ok((Err(e), b)) => {
                    busy = b;
                    tracing::warn!("sweeping the flow tables: {e:#}");
                }
                Err(e) => tracing::warn!("the flow tables' sweep failed: {e}"),
            }
            took = start.elapsed();
        }
    });
}

/// One sweep of both pinned tables (`start_sweeper`).
fn sweep_pinned(
    dir: &std::path::Path,
    ids: [u32; 2],
    busy: &mut [BusySlots; 2],
) -> Result<(Swept, Swept)> {
    let cfg = super::read_config(dir)?;
    let now = super::coarse_now_ns();
    let open = |name: &str, id: u32| -> Result<Map> {
        let map = super::open_pinned(dir, name)?;
        let pinned = map_data(&map)?.info()?.id();
        anyhow::ensure!(
            pinned == id,
            "{name} is pinned as map {pinned}, not this daemon's {id}: left to its owner"
        );
        Ok(map)
    };
    let [b4, b6] = busy;
    let v4 = sweep::<FlowEntry>(&open(FlowEntry::MAP, ids[0])?, now, &cfg, b4)?;
    let v6 = sweep::<FlowEntry6>(&open(FlowEntry6::MAP, ids[1])?, now, &cfg, b6)?;
    Ok((v4, v6))
}

/// The kernel's id of `E`'s table (`table`), for `start_sweeper`.
pub fn table_id(table: &Map) -> Result<u32> {
    Ok(map_data(table)?.info()?.id())
}

/// Every live entry of `E`'s table, read through a read-only mapping of it.
pub fn entries<E: Bucketed>(table: &Map) -> Result<Vec<(E::Key, E)>> {
    let m = Mapped::new::<E>(table, false)?;
    let mut out = Vec::new();
    for el in m.buckets(&m.geometry()) {
        let bucket = m.bucket::<E>(el);
        for i in 0..FLOW_WAYS as usize {
            let (state, k, e) = E::slot(&bucket, i);
            if state == SLOT_LIVE {
                out.push((k, e));
            }
        }
    }
    Ok(out)
}

/// What a `sweep` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Live slots it found.
    pub live: u64,
    /// The directions of dead flows it freed (a slot passed over first, then freed with
    /// its partner, counts here and in `passed`), and the slots left busy by a writer
    /// that is gone (not among `live`).
    pub freed: u64,
    /// Of the others, directions whose stamp it moved up to `SEEN_FLOOR` ago.
    pub restamped: u64,
    /// Slots it passed over while a partner's bucket was being written (the next sweep
    /// takes them).
    pub passed: u64,
    /// Bucket locks it gave back, marked as a give-back's with the same mark for
    /// `BUSY_STALE_NS` (a sweeper killed while it held one).
    pub unlocked: u64,
    /// Slots it claimed to free whose stamp had moved meanwhile, given back live
    /// (`Mapped::give_back`).
    pub given_back: u64,
}

/// What `free` did with a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Freed {
    /// Freed it.
    Yes,
    /// Gave it back live (its stamp had moved).
    GivenBack,
    /// Left it (another writer took it first).
    No,
}

/// The oldest a stamp is let get (`sweep`): a quarter of the 32-bit tick's wrap, 0.57
/// years, far past any idle timeout and far from half the wrap, past which a stamp
/// would read as recent (`seen_elapsed_ns`).
pub const SEEN_FLOOR: u32 = 1 << 30;

/// How much longer than its idle timeout a flow must have been dead for `sweep` to free
/// it: far more than the data path's CPUs' coarse clocks differ by, so no packet can find
/// a flow live that the sweep judged dead (a packet refreshes only a live flow's stamp,
/// in place; anything else that changes a slot claims it, and moves its state word).
pub const SWEEP_MARGIN_NS: u64 = 2_000_000_000;

/// How long a slot must have stayed `SLOT_BUSY` with the same state word, across sweeps,
/// for `sweep` to take it as a writer's that is gone: a data path writer holds a slot
/// for microseconds.
pub const BUSY_STALE_NS: u64 = 10_000_000_000;

/// How long a give-back (`Mapped::give_back`) tries for its key's bucket lock before it
/// frees the slot instead.
pub const GIVE_BACK_SPIN: std::time::Duration = std::time::Duration::from_millis(1);

/// What one sweep found held, for the next (`sweep`): the busy slots (a slot's index in
/// the table's slots → its state word and when a sweep first found it busy with that
/// word) and a give-back's mark (`GIVE_BACK_MARK`: the mark and when a sweep first found
/// it).
#[derive(Clone, Debug, Default)]
pub struct BusySlots {
    slots: std::collections::HashMap<usize, (u64, u64)>,
    mark: Option<(u64, u64)>,
}

/// Since when a word has stood, as a sweep at `now_ns` sees it: since the time noted
/// with it (`noted`: a word and when a sweep first saw it) if the word is the same, else
/// since now.
fn held_since(noted: Option<&(u64, u64)>, word: u64, now_ns: u64) -> u64 {
    noted.filter(|n| n.0 == word).map_or(now_ns, |n| n.1)
}

impl BusySlots {
    /// The busy slots noted.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no busy slot is noted.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether a give-back's mark is noted (a lock its sweeper may have died holding).
    pub fn marked(&self) -> bool {
        self.mark.is_some()
    }
}

/// Frees the directions of `E`'s table whose flow has been dead for `SWEEP_MARGIN_NS` at
/// `now_ns` (neither direction seen within its idle timeout under `cfg`, a partner
/// counted only if it names this direction as its own, as the data path's
/// `conntrack::alive` asks: what a packet of it would find gone, and what the census
/// counts free) while packets run, by the data path's protocol and without its bucket
/// locks (a sweeper preempted holding one would refuse new flows there; but for the
/// give-back below): the slot claimed
/// from the state word it was judged by (`SLOT_BUSY`, by compare-and-exchange), so a slot
/// rewritten meanwhile is left alone, then read again, freed, and taken off its first
/// bucket's spill count if it lived in its second. One whose stamp moved after all (only
/// a timeout raised meanwhile allows it) is given back live, under its key's first
/// bucket's lock (the one lock a sweep takes, for a moment, and only then), unless a
/// packet placed its key anew meanwhile (`Mapped::give_back`). A slot whose partner's
/// buckets hold a busy slot (a writer's: the partner may be being rewritten) waits for
/// the next sweep.
///
/// A direction of a live flow (the other direction keeps it) whose own stamp is older
/// than `SEEN_FLOOR` gets a stamp `SEEN_FLOOR` ago (by compare-and-exchange of the
/// stamp): still expired, and it never reaches half the tick's wrap. Without the two, a
/// dead flow's slots would stay until a new key evicts or takes them, and a stamp over
/// 1.14 years old would read as recent: a flow dead that long would come back to life,
/// unevictable.
///
/// `busy`: the slots this sweep's caller found `SLOT_BUSY` before, with their state
/// words and since when; one still busy with the same word `BUSY_STALE_NS` later has no
/// writer (a data path writer holds a slot for a moment; a sweeper killed between its
/// claim and its free leaves it busy for good) and is freed (claimed again, by a new
/// generation of the word, so one sweeper takes it). Likewise a give-back's mark
/// (`GIVE_BACK_MARK`): one still there, the same, `BUSY_STALE_NS` later names a lock its
/// sweeper died holding (which would stay held for good, and its bucket's new keys be
/// refused), and the lock is given back. Replaced by this sweep's. The daemon sweeps both
/// tables every `SWEEP_EVERY`.
pub fn sweep<E: Bucketed>(
    table: &Map,
    now_ns: u64,
    cfg: &privatelink_common::Config,
    busy: &mut BusySlots,
) -> Result<Swept> {
    sweep_probed::<E>(table, now_ns, cfg, busy, &mut ())
}

/// Where a test steps into a `sweep` (`sweep_probed`), to play a packet that comes in
/// the moments a sweep cannot see otherwise. `at`: the slot's index in the table's
/// slots (its element's index times `FLOW_WAYS`, plus its own).
#[doc(hidden)]
pub trait SweepProbe {
    /// Slot `at` was judged dead and is about to be claimed.
    fn judged(&mut self, _at: usize) {}
    /// Slot `at` was claimed, and its stamp or key had moved: it is about to be given
    /// back.
    fn moved(&mut self, _at: usize) {}
}

impl SweepProbe for () {}

/// `sweep`, with `probe` called at its moments.
#[doc(hidden)]
pub fn sweep_probed<E: Bucketed>(
    table: &Map,
    now_ns: u64,
    cfg: &privatelink_common::Config,
    busy: &mut BusySlots,
    probe: &mut dyn SweepProbe,
) -> Result<Swept> {
    let m = Mapped::new::<E>(table, true)?;
    let g = m.geometry();
    let place = Placing::new(g);
    let slot_size = m.size / FLOW_WAYS as usize;
    let judged = now_ns.saturating_sub(SWEEP_MARGIN_NS);
    let floor = privatelink_common::seen_tick(now_ns).wrapping_sub(SEEN_FLOOR);
    let mut swept = Swept::default();
    let mut still_busy = BusySlots::default();
    // Whether slot `at`, busy with word `w`, has been so for `BUSY_STALE_NS`.
    let stale = |at: usize, w: u64| {
        now_ns.saturating_sub(held_since(busy.slots.get(&at), w, now_ns)) >= BUSY_STALE_NS
    };
    // A give-back's mark: the lock it names given back once the same mark has stood for
    // `BUSY_STALE_NS` (a give-back holds it for a moment; this sweeper makes none while
    // it reads the mark, so a mark that stands is a dead sweeper's, or a stalled one's).
    // Only a marked lock: a data path writer's, unmarked, is never taken from it.
    let word = m.atomic(0, GIVE_BACK_MARK as usize * 8);
    let mark = word.load(Ordering::SeqCst);
    if mark != 0 {
        let since = held_since(busy.mark.as_ref(), mark, now_ns);
        let b = (mark as u32).wrapping_sub(1);
        if now_ns.saturating_sub(since) < BUSY_STALE_NS {
            still_busy.mark = Some((mark, since));
        } else if word
            .compare_exchange(mark, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // (A mark naming no bucket of the table is only cleared.)
            let (hel, hw) = head_at(b);
            if b < g.buckets && (hel as usize) < m.elements {
                let was = m
                    .atomic(hel as usize, hw as usize * 8)
                    .fetch_and(!HEAD_LOCKED, Ordering::SeqCst);
                swept.unlocked += u64::from(was & HEAD_LOCKED != 0);
            }
        }
    }
    for el in m.buckets(&g) {
        let bucket = m.bucket::<E>(el);
        for i in 0..FLOW_WAYS as usize {
            let (state, k, e) = E::slot(&bucket, i);
            if state == SLOT_BUSY {
                let w = E::word(&bucket, i);
                let at = slot_index(el, i);
                if stale(at, w) {
                    swept.freed +=
                        u64::from(free::<E>(&m, &place, el, i, w, None, probe) == Freed::Yes);
                } else {
                    still_busy
                        .slots
                        .insert(at, (w, held_since(busy.slots.get(&at), w, now_ns)));
                }
                continue;
            }
            if state != SLOT_LIVE {
                continue;
            }
            swept.live += 1;
            // Its own stamp first: a direction seen within its timeout keeps its flow.
            if e.live(&k, judged, cfg, || None) {
                continue;
            }
            let pk = e.partner_of(&k);
            let Ok(partner) = m.partner::<E>(&place, &pk, &k, stale) else {
                swept.passed += 1;
                continue;
            };
            if !e.live(&k, judged, cfg, || partner.as_ref().map(|p| p.entry)) {
                let w = E::word(&bucket, i);
                match free::<E>(&m, &place, el, i, w, Some((&k, e.seen())), probe) {
                    Freed::Yes => swept.freed += 1,
                    Freed::GivenBack => {
                        swept.given_back += 1;
                        continue;
                    }
                    Freed::No => continue,
                }
                // Its partner, dead too (judged from its own side, this direction its
                // partner), goes with it: one lookup for the flow, not one a direction.
                let Some(p) = partner.filter(|p| !p.entry.live(&pk, judged, cfg, || Some(e)))
                else {
                    continue;
                };
                let freed = free::<E>(
                    &m,
                    &place,
                    p.el,
                    p.i,
                    p.word,
                    Some((&pk, p.entry.seen())),
                    probe,
                );
                // A slot of a bucket the walk has yet to read counts among those found
                // live (one of this bucket is in its copy already).
                swept.live += u64::from(freed == Freed::Yes && p.el > el);
                match freed {
                    Freed::Yes => swept.freed += 1,
                    Freed::GivenBack => swept.given_back += 1,
                    Freed::No => {}
                }
                continue;
            }
            let seen = e.seen();
            if privatelink_common::seen_elapsed_ns(now_ns, seen)
                > u64::from(SEEN_FLOOR) << privatelink_common::SEEN_SHIFT
            {
                let at = el * m.size + i * slot_size + E::SEEN_OFFSET;
                assert!(at.is_multiple_of(4) && at + 4 <= m.len && m.write);
                // SAFETY: the slot's `last_seen`, a 4-aligned u32 inside the writable
                // mapping (checked above); the data path writes it whole.
                let stamp = unsafe {
                    std::sync::atomic::AtomicU32::from_ptr(m.base.as_ptr().add(at).cast())
                };
                if stamp
                    .compare_exchange(seen, floor, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    swept.restamped += 1;
                }
            }
        }
    }
    *busy = still_busy;
    Ok(swept)
}

/// Frees slot `i` of element `el` from its state word `w`: claimed by compare-and-exchange
/// to a new generation of `SLOT_BUSY` (a busy `w` is a writer's gone for `BUSY_STALE_NS`:
/// the new generation makes one sweeper its taker; a data path writer stalled that long,
/// which a kernel without real-time preemption does not allow, would publish over it),
/// read again, freed by compare-and-exchange, and only then taken off its first bucket's
/// spill count if it lived in its second. With `judged` (its key and stamp as they were
/// judged dead), a slot whose key or stamp moved before the claim is given back live
/// (`give_back`).
fn free<E: Bucketed>(
    m: &Mapped,
    p: &Placing,
    el: usize,
    i: usize,
    w: u64,
    judged: Option<(&E::Key, u32)>,
    probe: &mut dyn SweepProbe,
) -> Freed {
    let state = m.atomic(el, i * (m.size / FLOW_WAYS as usize));
    let at = slot_index(el, i);
    if judged.is_some() {
        probe.judged(at);
    }
    let busy = next_state(w, SLOT_BUSY);
    if state
        .compare_exchange(w, busy, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Freed::No;
    }
    // This sweeper's slot now: read again (after the exchange's full barrier). Its home
    // is its word's (the word claimed kept it).
    let now = m.bucket::<E>(el);
    let (_, k, e) = E::slot(&now, i);
    let home = slot_home(busy);
    if judged.is_some_and(|(key, seen)| !same_key(&k, key) || e.seen() != seen) {
        probe.moved(at);
        if m.give_back::<E>(p, &k, at, state, busy) {
            return Freed::GivenBack;
        }
    }
    if state
        .compare_exchange(busy, freed(busy), Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Freed::No;
    }
    // Its first bucket counts it no more (`home`: that bucket's element).
    let b = home.wrapping_sub(p.g.heads());
    if home != 0 && b < p.g.buckets {
        let (hel, hw) = head_at(b);
        m.atomic(hel as usize, hw as usize * 8)
            .fetch_sub(1, Ordering::SeqCst);
    }
    Freed::Yes
}

/// `key`'s two buckets, each with its index (`buckets_of`).
fn pair_for<E: Bucketed>(
    table: &Map,
    g: &FlowGeometry,
    key: &E::Key,
) -> Result<[(u32, E::Bucket); 2]> {
    let a: Array<_, E::Bucket> = Array::try_from(table)?;
    let (first, second) = buckets_of(key, g);
    let h = g.heads();
    Ok([
        (first, a.get(&(h + first), 0)?),
        (second, a.get(&(h + second), 0)?),
    ])
}

/// Where `key` is live in its pair: (which bucket, which slot).
fn position<E: Bucketed>(pair: &[(u32, E::Bucket); 2], key: &E::Key) -> Option<(usize, usize)> {
    (0..2).find_map(|b| {
        (0..FLOW_WAYS as usize).find_map(|i| {
            let (state, k, _) = E::slot(&pair[b].1, i);
            (state == SLOT_LIVE && same_key(&k, key)).then_some((b, i))
        })
    })
}

/// The entry of `key`.
pub fn get<E: Bucketed>(table: &Map, g: &FlowGeometry, key: &E::Key) -> Result<Option<E>> {
    let pair = pair_for::<E>(table, g, key)?;
    Ok(position::<E>(&pair, key).map(|(b, i)| E::slot(&pair[b].1, i).2))
}

/// Whether every slot of both of `key`'s buckets is taken: a new direction there evicts
/// one.
pub fn bucket_full<E: Bucketed>(table: &Map, g: &FlowGeometry, key: &E::Key) -> Result<bool> {
    let pair = pair_for::<E>(table, g, key)?;
    Ok(pair
        .iter()
        .all(|(_, b)| (0..FLOW_WAYS as usize).all(|i| E::slot(b, i).0 != SLOT_FREE)))
}

/// Stores `entry` under `key` as the data path does: over its old entry, else in a free
/// slot of its first bucket while that keeps two spare, else of the emptier (the first on
/// a tie), else over the direction the data
/// path would evict (the lowest `rank`, not above `entry`'s). For tables no packet changes
/// meanwhile: the bucket is written whole.
pub fn put<E: Bucketed>(table: &mut Map, g: &FlowGeometry, key: &E::Key, entry: E) -> Result<()> {
    let pair = pair_for::<E>(table, g, key)?;
    let existing = position::<E>(&pair, key);
    let ways = 0..FLOW_WAYS as usize;
    let free = |b: &E::Bucket| {
        ways.clone()
            .filter(|&i| E::slot(b, i).0 == SLOT_FREE)
            .count()
    };
    let (n1, n2) = (free(&pair[0].1), free(&pair[1].1));
    let now = entry.seen();
    let at = existing
        .or_else(|| {
            let b = if to_first(n1 as u32, n2 as u32) {
                0
            } else if n2 > 0 {
                1
            } else {
                return None;
            };
            let i = ways
                .clone()
                .find(|&i| E::slot(&pair[b].1, i).0 == SLOT_FREE)?;
            Some((b, i))
        })
        .or_else(|| {
            (0..2)
                .flat_map(|b| ways.clone().map(move |i| (b, i)))
                .filter(|&(b, i)| E::slot(&pair[b].1, i).2.rank(now) <= entry.rank(now))
                .min_by_key(|&(b, i)| E::slot(&pair[b].1, i).2.rank(now))
        });
    let Some((b, i)) = at else {
        bail!(
            "{}: buckets {} and {} are full of flows the data path would keep",
            E::MAP,
            pair[0].0,
            pair[1].0
        );
    };
    let mut a: Array<_, E::Bucket> = Array::try_from(table)?;
    // As the data path: a new key in its second bucket is counted in its first before it
    // is written, and records that bucket as its home; a victim that lived in its second
    // bucket is uncounted after it is gone. (Each bucket read afresh before it is written:
    // two of them may be one.)
    let spilled = existing.is_none() && b == 1 && pair[0].0 != pair[1].0;
    let victim = if existing.is_none() && E::slot(&pair[b].1, i).0 == SLOT_LIVE {
        E::home(&pair[b].1, i)
    } else {
        0
    };
    if spilled {
        add_spill::<E>(&mut a, pair[0].0, 1)?;
    }
    let h = g.heads();
    let mut bucket = a.get(&(h + pair[b].0), 0)?;
    let home = if existing.is_some() {
        E::home(&bucket, i)
    } else if spilled {
        h + pair[0].0
    } else {
        0
    };
    E::set_slot(&mut bucket, i, Some((*key, entry, home)));
    a.set(h + pair[b].0, bucket, 0)?;
    if victim != 0 {
        add_spill::<E>(&mut a, victim.wrapping_sub(h), -1)?;
    }
    Ok(())
}

/// Adds `n` to bucket `b`'s spill count (its head's low bits).
fn add_spill<E: Bucketed>(a: &mut Array<&mut MapData, E::Bucket>, b: u32, n: i64) -> Result<()> {
    let (el, w) = head_at(b);
    let mut e = a.get(&el, 0)?;
    let c = word(&mut e, w);
    // Wrapping, as the data path's atomic add: a double decrement shows, not hidden at 0.
    *c = c.wrapping_add_signed(n);
    a.set(el, e, 0)?;
    Ok(())
}

/// Every live slot with its bucket: (bucket, key, entry). Reads every bucket by syscall:
/// for small tables.
pub fn placed<E: Bucketed>(table: &Map) -> Result<Vec<(u32, E::Key, E)>> {
    let g = geometry::<E>(table)?;
    let a: Array<_, E::Bucket> = Array::try_from(table)?;
    let mut out = Vec::new();
    for b in 0..g.buckets {
        let bucket = a.get(&(g.heads() + b), 0)?;
        for i in 0..FLOW_WAYS as usize {
            let (state, k, e) = E::slot(&bucket, i);
            if state == SLOT_LIVE {
                out.push((b, k, e));
            }
        }
    }
    Ok(out)
}

/// What writers left behind: (slots still `SLOT_BUSY`, bucket locks still held). Both 0
/// on a table no packet is changing. For small tables, as `placed`.
pub fn stuck<E: Bucketed>(table: &Map) -> Result<(usize, usize)> {
    let g = geometry::<E>(table)?;
    let a: Array<_, E::Bucket> = Array::try_from(table)?;
    let (mut busy, mut locked) = (0, 0);
    for b in 0..g.buckets {
        let bucket = a.get(&(g.heads() + b), 0)?;
        busy += (0..FLOW_WAYS as usize)
            .filter(|&i| E::slot(&bucket, i).0 == SLOT_BUSY)
            .count();
        locked += usize::from(head::<E>(&a, b)? & HEAD_LOCKED != 0);
    }
    Ok((busy, locked))
}

/// Every bucket's spill count beside the keys that live in their second bucket with it
/// as their first: (bucket, count, keys), for the buckets where either is not zero. On a
/// table no packet is changing the two are equal (and never may the count be below the
/// keys: a lookup that trusts it would miss one). Also checks every live slot's `home`
/// (its key's first bucket's element when it lives in its second, else 0: what a removal
/// or an eviction lowers): an error names the first slot whose home is wrong. One read of
/// each bucket; for small tables, as `placed`.
pub fn spill_audit<E: Bucketed>(table: &Map, g: &FlowGeometry) -> Result<Vec<(u32, u64, u64)>> {
    let a: Array<_, E::Bucket> = Array::try_from(table)?;
    let n = g.buckets as usize;
    let place = Placing::new(*g);
    let (mut counts, mut keys) = (vec![0u64; n], vec![0u64; n]);
    for b in 0..g.buckets {
        let bucket = a.get(&(g.heads() + b), 0)?;
        // The count, and the bits above it: the lock (free) and the own index (written
        // with the table) are checked with it.
        let h = head::<E>(&a, b)?;
        anyhow::ensure!(
            h >> HEAD_OWN_SHIFT == u64::from(g.heads() + b),
            "bucket {b}: head {h:#x}, not its own element {} unlocked",
            g.heads() + b
        );
        counts[b as usize] = h & HEAD_SPILL;
        for i in 0..FLOW_WAYS as usize {
            let (state, k, _) = E::slot(&bucket, i);
            if state != SLOT_LIVE {
                continue;
            }
            let (first, second) = place.buckets_of(&k);
            anyhow::ensure!(
                b == first || b == second,
                "bucket {b} slot {i}: its key's buckets are {first} and {second}"
            );
            let want = if first == b {
                0
            } else {
                keys[first as usize] += 1;
                g.heads() + first
            };
            let home = E::home(&bucket, i);
            anyhow::ensure!(
                home == want,
                "bucket {b} slot {i}: home {home}, its key's first bucket is {first} (want {want})"
            );
        }
    }
    Ok(counts
        .into_iter()
        .zip(keys)
        .enumerate()
        .filter(|(_, (c, n))| *c != 0 || *n != 0)
        .map(|(b, (c, n))| (b as u32, c, n))
        .collect())
}

/// Removes `key`'s entry; whether there was one. As `put`, for quiet tables.
pub fn remove<E: Bucketed>(table: &mut Map, g: &FlowGeometry, key: &E::Key) -> Result<bool> {
    let mut pair = pair_for::<E>(table, g, key)?;
    let Some((b, i)) = position::<E>(&pair, key) else {
        return Ok(false);
    };
    let home = E::home(&pair[b].1, i);
    E::set_slot(&mut pair[b].1, i, None);
    let mut a: Array<_, E::Bucket> = Array::try_from(table)?;
    // The slot freed first, then its home's count lowered (as the data path does: a count
    // is never below its keys, even if the second write fails).
    a.set(g.heads() + pair[b].0, pair[b].1, 0)?;
    if home != 0 {
        add_spill::<E>(&mut a, home.wrapping_sub(g.heads()), -1)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A walk's placing puts every key where `buckets_of` does, under every seed: the
    /// sweep's give-backs and partner lookups read the buckets the data path wrote.
    #[test]
    fn placing_agrees_with_buckets_of() {
        for seed in [1, 0x1234_5679, u32::MAX] {
            let g = FlowGeometry {
                buckets: 1 << 14,
                seed,
            };
            let place = Placing::new(g);
            for i in 0..2_000u32 {
                let r = key_hash_params(i);
                // (The last word a protocol's: `of_words` takes a byte there.)
                let k = FlowKey::of_words(core::array::from_fn(|w| {
                    if w == 4 {
                        r[w] as u32 & 0xff
                    } else {
                        r[w] as u32
                    }
                }));
                let b = |w: usize| r[w].to_le_bytes();
                let addr = |w: usize| core::array::from_fn(|j| b(w + j / 8)[j % 8]);
                let k6 = FlowKey6::new(r[5] as u32, addr(0), addr(2), i as u16, r[6] as u16, 17);
                assert_eq!(
                    place.buckets_of(&k),
                    buckets_of(&k, &g),
                    "seed {seed} key {i}"
                );
                assert_eq!(
                    place.buckets_of(&k6),
                    buckets_of(&k6, &g),
                    "seed {seed} key6 {i}"
                );
            }
        }
    }
}
