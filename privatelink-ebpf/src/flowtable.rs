//! The flow tables (`PL_CONNTRACK`, `PL_CONNTRACK6`) as the data path indexes them:
//! buckets of `FLOW_WAYS` slots in an array, a slot holding a flow direction's key and
//! entry together, a key in either of its two buckets (`privatelink_common::flowtable` has
//! the layout and the hashes). `FLOWS` and `FLOWS6` answer as the kernel hash maps did
//! (`get`, `get_ptr_mut`, `insert` with `BPF_NOEXIST` or `BPF_ANY`, `remove`). Lookups and
//! inserts are global BPF functions (`pl_flow_find`, `pl_flow_insert`, `pl_flow_add` and
//! the IPv6 ones), which the verifier walks once each (the established paths' lookups,
//! IPv4 and IPv6, and the GWLB return paths' are inlined instead: `get_ptr_mut_inline`);
//! inside them, array lookups the
//! kernel inlines, keyed by this CPU's `PL_FLOWKEY` word (their frames count against
//! their callers' 512 bytes of stack, and the IPv4 forward path has none to spare).
//!
//! Across CPUs: readers take no lock. A writer holds the key's first bucket's lock
//! (the top bit of its head, taken by an atomic fetch-or of the bit; a writer that finds
//! it taken three times gives up, as a full map would) while it looks for the key and writes, so
//! a key is never in two slots and a `BPF_NOEXIST` insert (a SNAT claim) succeeds on one
//! CPU only. It claims its slot by compare-and-exchange of the slot's state (the writer of
//! another key may be placing one in the same bucket, its second), writes the key and
//! entry, and publishes the slot `SLOT_LIVE` by compare-and-exchange (a full barrier); a
//! slot being evicted is `SLOT_BUSY` while it is rewritten. A packet that read a slot a
//! moment before another CPU evicted it may see the newer flow's fields (as with the
//! kernel's LRU hash, whose elements are reused as soon as they are freed): the paths that
//! forward from what they read (the established, full, GWLB and ICMP error paths) read
//! the slot's state word again once they have (`Seen::still`), and drop the frame if it
//! moved.
//!
//! What a path writes after that check is not checked again: `conntrack::track`'s clock
//! and flags; `settle_handshake`'s marks and handshake number, and `track`'s FIN, RST and
//! reopening flags, into the partner, found by a lookup of its own with no check at all;
//! the packet trace; the full paths' `mark` (counter slot, flow-log flag), stamp (checksum
//! deltas; the epoch is taken back on a change, `Seen::still_else_unstamp`) and partner
//! check. In the moment between, the slot may have gone to another flow (an eviction, a
//! claim's takeover of a stale flow, the sweep), and the writes land on it, as on a kernel
//! LRU element reused under a program that holds it. Only a direction whose rank allows it
//! is evicted: a half-open one, or one idle past the grace. What the flow that took the
//! slot can get: a clock of now (its own, within the tick); flags that make it established
//! early (held as established flows are) or closing (its entries expire at the closing
//! timeout, and its next packet makes it again with its tuple: the reply entry is
//! recognised as its own); a handshake number the server's next segment settles anyway;
//! another endpoint's counter slot or flow-log flag for its next packets until it is
//! stamped again. The handshake number is not written into a GWLB flow, whose delivery MAC
//! takes those bytes: the flag is read just before, which narrows that moment but does not
//! close it. No frame is translated from another flow's entry: those reads were checked.
//! Closing the moment would take an atomic exchange of the state word on every packet,
//! which the fast path is not given for it.
//!
//! A bucket's spill count (the low half of its head, `head_of`) counts the keys that live
//! in their second bucket with it as their first: a lookup that misses in the first bucket reads the second only while
//! it is up, so at the loads a table mostly runs at a miss (every new flow's searches)
//! reads the first bucket and its head (a word of a line shared by 8 buckets), not two
//! buckets. It is raised before such a key is published and lowered once
//! a removal or an eviction has taken one (the slot records its key's first bucket's
//! element, its word's home, `slot_home`, so neither hashes the key again): never below its keys.
//!
//! A new direction takes a free slot of its first bucket while that keeps two spare, else
//! of the emptier of the two (the first on a tie), else evicts the direction of the lowest `evict_rank` of the two: seen longest ago,
//! established ones held `ESTABLISHED_GRACE_NS` longer (an embryonic flow's clock stops at
//! its creation: half-open flows go first), and only a rank not above the new entry's. So an
//! established direction that talked within the grace is never evicted: buckets full of
//! them refuse the new entry, and the new flow is dropped as `DropConntrackFull`
//! (`refused`); no flood of new flows ends one that talks. Used by `conntrack`, `flows6`
//! and the paths; uses `maps` only.

use core::{borrow::Borrow, intrinsics::AtomicOrdering, marker::PhantomData};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_map_lookup_elem};
use privatelink_common::{
    FlowBucket, FlowBucket6, FlowEntry, FlowEntry6, FlowGeometry, FlowKey, FlowKey6, Reason,
    flowtable::{
        FIRST_WHILE_FREE, FLOW_WAYS, HEAD_LOCKED, HEAD_OWN, HEAD_OWN_SHIFT, HEAD_SPILL,
        HEADS_PER_ELEMENT, SLOT_BUSY, SLOT_FREE, SLOT_LIVE, SlotKey, bucket_index, bucket_pair,
        freed, head_at, key_hash_by, next_state, published, same_slot_key, second_bucket,
        slot_home, slot_state, to_first, write_head,
    },
};

use crate::maps::{
    FlowArray, PL_CONNTRACK, PL_CONNTRACK6, PL_FLOW_GEOMETRY, PL_FLOW_GEOMETRY6, PL_FLOW_HASH,
    PL_FLOW_HASH6, PL_FLOWKEY,
};

/// What `insert` and `remove` return when they fail (the kernel map's error numbers).
const EEXIST: i64 = -17;
const ENOENT: i64 = -2;
const E2BIG: i64 = -7;
const EBUSY: i64 = -16;

/// A flow entry type and its table.
pub trait Tabled: Copy + 'static {
    type Key: SlotKey;
    type Bucket: 'static;
    fn array() -> &'static FlowArray<Self::Bucket>;
    /// The table's geometry word, as the daemon gave it at load (`maps::PL_FLOW_GEOMETRY`).
    fn geometry_word() -> u64;
    /// Parameter `i` (below `KEY_HASH_PARAMS`) of the table's key hash, as the daemon gave
    /// it at load (`maps::PL_FLOW_HASH`).
    fn hash_param(i: usize) -> u64;
    /// Slot `i` of a bucket (`i` below `FLOW_WAYS`): its word, its key's other words
    /// (`FlowSlot::key`) and its entry.
    fn parts(b: *mut Self::Bucket, i: u32) -> (*mut u64, *mut u32, *mut Self);
    /// The key's other words and the entry of the slot whose word is `state`: at fixed
    /// offsets from it, so that code holding the word's address holds them too.
    fn key_entry(state: *mut u64) -> (*mut u32, *mut Self);
    /// The state word of the slot whose entry is `entry` (`key_entry`'s inverse).
    fn state_of(entry: *mut Self) -> *mut u64;
    /// Its rank for eviction as a new entry made at tick `now` sees it (`evict_rank`: the
    /// lowest goes; only ranks not above the new entry's own may go).
    fn rank(&self, now: u32) -> u64;
    /// The tick a new entry is made at: its `last_seen`.
    fn now(&self) -> u32;
    /// `find` and `insert`, as the global BPF functions of this type.
    fn find_global(key: &Self::Key) -> u32;
    fn insert_global(key: &Self::Key, value: &Self, noexist: bool) -> i64;
}

macro_rules! tabled {
    ($entry:ty, $key:ty, $slot:ty, $map:expr, $geometry:expr, $hash:expr, $find:ident, $insert:ident, $add:ident) => {
        /// `find` as a global BPF function: the verifier walks it once, on its own, and
        /// at every call only checks the key's memory. Its pointer may be null to the
        /// verifier, which checks a global function on its own.
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $find(key: *const $key) -> u32 {
            // SAFETY: checked for null; the caller's key.
            match unsafe { key.as_ref() } {
                Some(key) => find::<$entry>(key),
                None => NONE,
            }
        }

        /// `insert` with `BPF_ANY` as a global BPF function (as `find`'s).
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $insert(key: *const $key, value: *const $entry) -> i64 {
            // SAFETY: checked for null; the caller's key and value.
            match unsafe { (key.as_ref(), value.as_ref()) } {
                (Some(key), Some(value)) => insert::<$entry>(key, value, false),
                _ => E2BIG,
            }
        }

        /// `insert` with `BPF_NOEXIST` (a function of its own, not a flag argument: one
        /// value fewer to keep across its helper calls, whose spill would take the stack).
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $add(key: *const $key, value: *const $entry) -> i64 {
            // SAFETY: checked for null; the caller's key and value.
            match unsafe { (key.as_ref(), value.as_ref()) } {
                (Some(key), Some(value)) => insert::<$entry>(key, value, true),
                _ => E2BIG,
            }
        }

        impl Tabled for $entry {
            type Key = $key;
            type Bucket = $slot;
            #[inline(always)]
            fn array() -> &'static FlowArray<$slot> {
                &$map
            }
            #[inline(always)]
            fn geometry_word() -> u64 {
                // SAFETY: a global of this object, written only before its load; read as
                // memory (not folded to its compiled-in 0).
                unsafe { core::ptr::read_volatile(&raw const $geometry) }
            }
            #[inline(always)]
            fn hash_param(i: usize) -> u64 {
                // SAFETY: as `geometry_word`; `i` is below the array's length:
                // `key_hash_by` asks for at most `WORDS + 1` parameters, and every key's
                // `WORDS` is below `KEY_HASH_PARAMS` (asserted in `flowtable`).
                unsafe { core::ptr::read_volatile((&raw const $hash as *const u64).add(i)) }
            }
            #[inline(always)]
            fn parts(b: *mut $slot, i: u32) -> (*mut u64, *mut u32, *mut $entry) {
                // SAFETY: field addresses of a slot of a valid bucket (`i & (FLOW_WAYS - 1)`
                // keeps the verifier's bound), nothing read.
                unsafe {
                    let s = &raw mut (*b).slots[(i & (FLOW_WAYS - 1)) as usize];
                    (
                        &raw mut (*s).state,
                        (&raw mut (*s).key).cast(),
                        &raw mut (*s).entry,
                    )
                }
            }
            #[inline(always)]
            fn key_entry(state: *mut u64) -> (*mut u32, *mut $entry) {
                // A slot's state word is its first field (`FlowSlot`, `FlowSlot6`).
                const _: () = assert!(
                    core::mem::offset_of!(privatelink_common::flowtable::FlowSlot, state) == 0
                        && core::mem::offset_of!(privatelink_common::flowtable::FlowSlot6, state)
                            == 0
                );
                // SAFETY: field addresses of the slot that starts at `state`, nothing read.
                unsafe {
                    let s = state.cast::<<$slot as SlotOf>::Slot>();
                    ((&raw mut (*s).key).cast(), &raw mut (*s).entry)
                }
            }
            #[inline(always)]
            fn state_of(entry: *mut $entry) -> *mut u64 {
                // SAFETY: the slot's start, `entry`'s offset before it (the state word
                // is its first field, asserted in `key_entry`), nothing read.
                type Slot = <$slot as SlotOf>::Slot;
                unsafe {
                    entry
                        .cast::<u8>()
                        .sub(core::mem::offset_of!(Slot, entry))
                        .cast()
                }
            }
            #[inline(always)]
            fn rank(&self, now: u32) -> u64 {
                // Read as it is used: an eviction ranks eight slots, and LLVM interleaving
                // their reads takes more registers than BPF has (the rest goes on the stack).
                // SAFETY: fields of a valid entry.
                let (seen, flags) = unsafe {
                    (
                        core::ptr::read_volatile(&self.last_seen),
                        core::ptr::read_volatile(&self.tcp_flags),
                    )
                };
                privatelink_common::flowtable::evict_rank(now, seen, flags)
            }
            #[inline(always)]
            fn now(&self) -> u32 {
                // SAFETY: a field of a valid entry.
                unsafe { core::ptr::read_volatile(&self.last_seen) }
            }
            #[inline(always)]
            fn find_global(key: &$key) -> u32 {
                $find(key)
            }
            #[inline(always)]
            fn insert_global(key: &$key, value: &$entry, noexist: bool) -> i64 {
                if noexist {
                    $add(key, value)
                } else {
                    $insert(key, value)
                }
            }
        }
    };
}
tabled!(
    FlowEntry,
    FlowKey,
    FlowBucket,
    PL_CONNTRACK,
    PL_FLOW_GEOMETRY,
    PL_FLOW_HASH,
    pl_flow_find,
    pl_flow_insert,
    pl_flow_add
);
tabled!(
    FlowEntry6,
    FlowKey6,
    FlowBucket6,
    PL_CONNTRACK6,
    PL_FLOW_GEOMETRY6,
    PL_FLOW_HASH6,
    pl_flow_find6,
    pl_flow_insert6,
    pl_flow_add6
);

/// A bucket type's slot type.
trait SlotOf {
    type Slot;
}
impl SlotOf for FlowBucket {
    type Slot = privatelink_common::flowtable::FlowSlot;
}
impl SlotOf for FlowBucket6 {
    type Slot = privatelink_common::flowtable::FlowSlot6;
}

/// A flow table, as its users see it.
pub struct Table<E>(PhantomData<E>);

// SAFETY: a handle without data; the table it names is a map.
unsafe impl<E> Sync for Table<E> {}

/// The IPv4 flows (`PL_CONNTRACK`).
pub static FLOWS: Table<FlowEntry> = Table(PhantomData);
/// The IPv6 flows (`PL_CONNTRACK6`).
pub static FLOWS6: Table<FlowEntry6> = Table(PhantomData);

/// An entry found live by a lookup that takes no lock (`Table::get_ptr_mut_inline`), with
/// its slot's state word as the lookup read it, before the key. A writer on another CPU
/// may take the slot meanwhile (an eviction writes another key and entry into it; an
/// insert over the same key writes a new entry), and every such change moves the word on
/// (`next_state`): a reader that has read what it uses of the entry and then finds the word
/// `unchanged` read one flow's entry, whole, and the key it looked for.
#[derive(Clone, Copy)]
pub struct Seen<E> {
    pub entry: *mut E,
    word: u64,
}

impl<E: Tabled> Seen<E> {
    /// No entry (its `entry` null): for a search that found none yet.
    #[inline(always)]
    pub const fn none() -> Seen<E> {
        Seen {
            entry: core::ptr::null_mut(),
            word: 0,
        }
    }

    /// Whether the slot still holds what the lookup found: its state word is the same.
    /// The entry's fields read before this call are ordered before its load by the
    /// compiler (`barrier`) and, on x86 (TSO: loads are not reordered with loads), by the
    /// CPU. A weakly ordered CPU (arm64) would need the lookup's read of the word to
    /// acquire and a read barrier here (a seqlock's reader), which BPF gives only as a
    /// fetching atomic (`maps::order_after_epoch`), too dear for every packet: not taken.
    #[inline(always)]
    fn unchanged(&self) -> bool {
        barrier();
        load(E::state_of(self.entry)) == self.word
    }

    /// `unchanged`, as the paths ask it: else the frame is dropped, counted as
    /// `drop_flow_changed` (it was, or would be, built from an entry that another CPU took
    /// for another flow meanwhile), and the entry, another flow's by now, is not written.
    #[inline(always)]
    pub fn still(&self) -> Result<(), Reason> {
        if self.unchanged() {
            Ok(())
        } else {
            Err(Reason::DropFlowChanged)
        }
    }

    /// A drop for `r`, decided on what was read of the entry (its counter slot among it):
    /// `r` if the entry is still the flow's, else `DropFlowChanged`, which no endpoint is
    /// charged for (`verdict::settle_for`): the slot read may have been another flow's.
    #[inline(always)]
    pub fn confirm(&self, r: Reason) -> Reason {
        if self.unchanged() {
            r
        } else {
            Reason::DropFlowChanged
        }
    }

    /// `still`, for a path that stamped the entry (`epoch`, a field of it) since its last
    /// check: on a change the stamp is taken back (0), since it may have landed on the
    /// other flow, whose next packet then takes the full path and stamps it again.
    #[inline(always)]
    pub fn still_else_unstamp(&self, epoch: &mut u32) -> Result<(), Reason> {
        if self.unchanged() {
            Ok(())
        } else {
            *epoch = 0;
            Err(Reason::DropFlowChanged)
        }
    }
}

/// Bucket `b` of `E`'s table; `None` past its end. Its index is written to `room`: this
/// CPU's `PL_FLOWKEY` word (`room()`), not the stack, as a lookup's key must be in memory
/// and the IPv4 forward path's call chain has no stack to spare (512 bytes in all); or a
/// word of the caller's frame where it has room (`get_ptr_mut_inline`).
#[inline(always)]
fn bucket_at<E: Tabled>(room: *mut u32, b: u32) -> Option<*mut E::Bucket> {
    // SAFETY: this CPU's word or the caller's, valid for this run.
    unsafe { *room = b };
    // SAFETY: a lookup in the table's array with a key in map or stack memory.
    let p = unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(E::array()).cast_mut().cast(),
            room.cast_const().cast(),
        )
    };
    (!p.is_null()).then_some(p.cast())
}

/// `key`'s two buckets (`buckets_of`, as element indices) and this CPU's room to look them
/// up with. In this order — the room, the hash — and then each bucket's lookup in turn,
/// no more values live across a helper call than the callee-saved registers hold, so
/// nothing goes to the stack (`bucket_at`).
#[inline(always)]
fn buckets<E: Tabled>(key: &E::Key) -> Option<(*mut u32, u32, u32)> {
    let room = room()?;
    let (first, second) = elements_of::<E>(key)?;
    Some((room, first, second))
}

/// `key`'s two buckets' element indices; `None` without a geometry (an object loaded
/// without the daemon's: its table's heads would be taken for a bucket). The verifier
/// knows the read-only word and drops the branch.
#[inline(always)]
fn elements_of<E: Tabled>(key: &E::Key) -> Option<(u32, u32)> {
    let g = geometry::<E>();
    if g.buckets == 0 {
        return None;
    }
    let (first, second) = bucket_pair(key_hash_by(key, E::hash_param), g.buckets);
    Some((g.heads() + first, g.heads() + second))
}

/// `key`'s hash and its first bucket's element index: `elements_of`'s first, the second
/// left to `second_element` (the inlined lookup works it out only past the first bucket,
/// where most hits end: the second bucket's mix is off their path).
#[inline(always)]
fn first_element<E: Tabled>(key: &E::Key) -> Option<(u32, u32)> {
    let g = geometry::<E>();
    if g.buckets == 0 {
        return None;
    }
    let h = key_hash_by(key, E::hash_param);
    Some((h, g.heads() + bucket_index(h, g.buckets)))
}

/// The second bucket's element index of a key whose hash is `h` and whose first bucket's
/// element is `first` (`first_element`): `elements_of`'s second.
#[inline(always)]
fn second_element<E: Tabled>(h: u32, first: u32) -> u32 {
    let g = geometry::<E>();
    g.heads() + second_bucket(h, first.wrapping_sub(g.heads()), g.buckets)
}

/// Slot `i` (below `FLOW_WAYS`) of bucket `p` holds `key` live.
#[inline(always)]
fn holds<E: Tabled>(p: *mut E::Bucket, i: u32, key: &E::Key) -> bool {
    live_word::<E>(p, i, key) != 0
}

/// Slot `i` (below `FLOW_WAYS`) of bucket `p`'s state word, read before its key, if the
/// slot holds `key` live; else 0 (never a live word).
#[inline(always)]
fn live_word<E: Tabled>(p: *mut E::Bucket, i: u32, key: &E::Key) -> u64 {
    let (state, k, _) = E::parts(p, i);
    let w = load(state);
    barrier();
    // SAFETY: the key of a slot of a valid bucket.
    if slot_state(w) == SLOT_LIVE && unsafe { same_slot_key(w, k, key) } {
        w
    } else {
        0
    }
}

/// Slot `i` of the table (element `i / FLOW_WAYS`): state, key, entry; `None` past its end
/// (`NONE` is).
#[inline(always)]
fn slot<E: Tabled>(i: u32) -> Option<(*mut u64, *mut u32, *mut E)> {
    if i == NONE {
        return None;
    }
    bucket_at::<E>(room()?, i / FLOW_WAYS).map(|b| E::parts(b, i % FLOW_WAYS))
}

/// This CPU's `PL_FLOWKEY` words: the element index looked up (this returns its address),
/// then the refusal mark.
#[inline(always)]
fn room() -> Option<*mut u32> {
    // SAFETY: a lookup in a per-CPU array, its key read-only data.
    let p = unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(&PL_FLOWKEY).cast_mut().cast(),
            core::ptr::from_ref(&ZERO).cast(),
        )
    };
    (!p.is_null()).then_some(p.cast())
}

/// The key of `PL_FLOWKEY`'s one entry, in `.rodata`: a lookup's key must be in memory,
/// and the stack has none to spare (`bucket_at`).
static ZERO: u32 = 0;

/// `E`'s table's geometry, as the daemon wrote it into its word 0 and gave it to this
/// object at load (`maps::PL_FLOW_GEOMETRY`).
#[inline(always)]
fn geometry<E: Tabled>() -> FlowGeometry {
    FlowGeometry::from_word(E::geometry_word())
}

/// The head of the bucket at element `e` (`slot_home` and `buckets` speak of element
/// indices): its lock, its own index and its spill count (`HEAD_LOCKED`). `None` only
/// where the word would be past the table's end; an `e` below the buckets (a `home` no
/// writer records) would name a word of the heads' region, which callers never pass.
#[inline(always)]
fn head_of<E: Tabled>(room: *mut u32, e: u32) -> Option<*mut u64> {
    let (el, w) = head_at(e.wrapping_sub(geometry::<E>().heads()));
    let p = bucket_at::<E>(room, el)?;
    // SAFETY: a word of a valid element (`w` masked below `HEADS_PER_ELEMENT`, which an
    // element holds: asserted with the layout), nothing read.
    Some(unsafe { p.cast::<u64>().add((w & (HEADS_PER_ELEMENT - 1)) as usize) })
}

/// Whether a head's spill count is 0: no key whose first bucket it is lives in its second.
#[inline(always)]
fn unspilled(head: Option<*mut u64>) -> bool {
    head.is_some_and(|h| load(h) & HEAD_SPILL == 0)
}

/// A compiler barrier: memory accesses are not moved across it (the state word's reads
/// stay before and after the reads of the slot they guard). BPF has no fence instruction,
/// and LLVM's BPF backend no signal fence: an empty `asm!`, which the compiler must take
/// to read and write memory.
#[inline(always)]
fn barrier() {
    // SAFETY: an empty instruction sequence.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
}

#[inline(always)]
fn load(state: *mut u64) -> u64 {
    // SAFETY: an aligned word of map memory.
    unsafe { core::ptr::read_volatile(state) }
}

/// Adds `n` (wrapping: `u64::MAX` takes one away) to `word` atomically (BPF_ATOMIC add).
#[inline(always)]
fn add(word: *mut u64, n: u64) {
    // SAFETY: an aligned word of map memory.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(word, n);
    }
}

/// A key that lived in its second bucket left it: its first bucket (`home`, that bucket's
/// element, as its slot recorded it; 0: it lived in its first, nothing to do) counts one
/// key fewer (its head's spill count: an add of -1 to the low bits, above 0).
#[inline(always)]
fn unspill<E: Tabled>(home: u32) {
    if home == 0 {
        return;
    }
    if let Some(h) = room().and_then(|room| head_of::<E>(room, home)) {
        add(h, u64::MAX);
    }
}

/// Moves `word` from `old` to `new` if it still is `old` (BPF_CMPXCHG: a full barrier).
#[inline(always)]
fn cas(word: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: an aligned word of map memory.
    unsafe {
        core::intrinsics::atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            word, old, new,
        )
        .1
    }
}

/// Which slot holds `key` live (`NONE`: none). Called as a global BPF function
/// (`Tabled::find_global`), returning a number: the verifier walks its four ways once, not
/// at every call and again for each in the rest of the caller, and the caller keeps its
/// registers for itself.
#[inline(always)]
fn find<E: Tabled>(key: &E::Key) -> u32 {
    let Some((room, first, second)) = buckets::<E>(key) else {
        return NONE;
    };
    let mut second = second;
    if let Some(p) = bucket_at::<E>(room, first) {
        for i in 0..FLOW_WAYS {
            if holds::<E>(p, i, key) {
                return first * FLOW_WAYS + i;
            }
        }
        // The second bucket only while the first's spill count is up; else a bucket past
        // the table's end, which the lookup below finds missing (one way out for a miss,
        // not two: a result merged from more exits took the stack).
        if unspilled(head_of::<E>(room, first)) {
            second = NONE;
        }
    }
    if let Some(p) = bucket_at::<E>(room, second) {
        for i in 0..FLOW_WAYS {
            if holds::<E>(p, i, key) {
                return second * FLOW_WAYS + i;
            }
        }
    }
    NONE
}

/// `find`'s answer when the key is not there.
const NONE: u32 = u32::MAX;

impl<E: Tabled> Table<E> {
    /// The entry of `key`, to change in place.
    #[inline(always)]
    pub fn get_ptr_mut(&self, key: impl Borrow<E::Key>) -> Option<*mut E> {
        slot::<E>(E::find_global(key.borrow())).map(|(_, _, e)| e)
    }

    /// `get_ptr_mut` inlined into the caller, without the BPF call and the second lookup
    /// of the slot found: for the established paths, whose frames and verifier budget
    /// have room for it. With the slot's state word as the lookup found it live, for
    /// `Seen::still`.
    #[inline(always)]
    pub fn get_ptr_mut_inline(&self, key: &E::Key) -> Option<Seen<E>> {
        // The element index is looked up from a word of this frame, not from this CPU's
        // `PL_FLOWKEY` (`room`): the inlining callers' frames have room for it, and it
        // spares a hit the per-CPU lookup (0.025x of the trivial program, measured).
        let mut index = 0u32;
        let room: *mut u32 = &mut index;
        let (h, first) = first_element::<E>(key)?;
        let p = bucket_at::<E>(room, first)?;
        for i in 0..FLOW_WAYS {
            let w = live_word::<E>(p, i, key);
            if w != 0 {
                return Some(Seen {
                    entry: E::parts(p, i).2,
                    word: w,
                });
            }
        }
        if unspilled(head_of::<E>(room, first)) {
            return None;
        }
        let p = bucket_at::<E>(room, second_element::<E>(h, first))?;
        for i in 0..FLOW_WAYS {
            let w = live_word::<E>(p, i, key);
            if w != 0 {
                return Some(Seen {
                    entry: E::parts(p, i).2,
                    word: w,
                });
            }
        }
        None
    }

    /// `get_ptr_mut` with the slot's state word (`Seen`): for the full paths, which decide
    /// on what they read of an entry and then rewrite the frame from it, a long while
    /// (filters, endpoint checks) after the lookup.
    #[inline(always)]
    pub fn get_seen(&self, key: impl Borrow<E::Key>) -> Option<Seen<E>> {
        let key = key.borrow();
        let (state, k, e) = slot::<E>(E::find_global(key))?;
        let w = load(state);
        barrier();
        // SAFETY: the key of a slot of a valid bucket.
        (slot_state(w) == SLOT_LIVE && unsafe { same_slot_key(w, k, key) })
            .then_some(Seen { entry: e, word: w })
    }

    /// The entry of `key`.
    ///
    /// # Safety
    /// As a kernel map's: another CPU may change the entry meanwhile.
    #[inline(always)]
    pub unsafe fn get(&self, key: impl Borrow<E::Key>) -> Option<&E> {
        // SAFETY: valid for this program run.
        self.get_ptr_mut(key).map(|e| unsafe { &*e })
    }

    /// Stores `value` under `key`: `BPF_NOEXIST` fails if the key is there, anything else
    /// overwrites it. A full bucket gives up its oldest direction.
    #[inline(always)]
    pub fn insert(
        &self,
        key: impl Borrow<E::Key>,
        value: impl Borrow<E>,
        flags: u64,
    ) -> Result<(), i64> {
        let (key, value) = (key.borrow(), value.borrow());
        match E::insert_global(key, value, flags == BPF_NOEXIST as u64) {
            0 => Ok(()),
            e => Err(e),
        }
    }

    /// Frees the slot of `key`.
    #[inline(always)]
    pub fn remove(&self, key: impl Borrow<E::Key>) -> Result<(), i64> {
        let key = key.borrow();
        let Some((state, k, _)) = slot::<E>(E::find_global(key)) else {
            return Err(ENOENT);
        };
        // Still this key's (the word read first: a slot taken since has another
        // generation, and the exchange fails). Claimed before it is freed; its home is
        // the word's, so this key's. Its first bucket counts it no more only if the slot
        // was freed: a claim taken from this remover (a sweep that took it for a stalled
        // writer's) is its taker's to count.
        let w = load(state);
        // SAFETY: the key of a slot of a valid bucket.
        if slot_state(w) == SLOT_LIVE
            && unsafe { same_slot_key(w, k, key) }
            && cas(state, w, next_state(w, SLOT_BUSY))
        {
            let busy = next_state(w, SLOT_BUSY);
            if cas(state, busy, freed(busy)) {
                unspill::<E>(slot_home(w));
            }
            Ok(())
        } else {
            Err(ENOENT)
        }
    }
}

/// `Table::insert`, under the bucket's lock: 0, or the error. Called as a global BPF
/// function, as `find`.
#[inline(always)]
fn insert<E: Tabled>(key: &E::Key, value: &E, noexist: bool) -> i64 {
    let r = insert_unmarked::<E>(key, value, noexist);
    if r != 0 && r != EEXIST {
        if let Some(room) = self::room() {
            // SAFETY: this CPU's two words, valid for this run.
            unsafe { *room.add(1) = 1 };
        }
    }
    r
}

/// `insert`, without marking its failure for `refused`.
#[inline(always)]
fn insert_unmarked<E: Tabled>(key: &E::Key, value: &E, noexist: bool) -> i64 {
    // A key whose last word is more than its protocol byte fits no slot's word
    // (`SlotKey::storable`; none the paths make).
    if !key.storable() {
        return E2BIG;
    }
    let Some((room, first, second)) = buckets::<E>(key) else {
        return E2BIG;
    };
    // The first bucket's head (its lock, its spill count, its own element index: what a
    // key `insert_locked` places in the second bucket records), then the buckets (the room
    // again, not kept: five values across a helper call would take the stack).
    let Some(head) = head_of::<E>(room, first) else {
        return E2BIG;
    };
    let Some(p1) = self::room().and_then(|r| bucket_at::<E>(r, first)) else {
        return E2BIG;
    };
    let Some(p2) = self::room().and_then(|r| bucket_at::<E>(r, second)) else {
        return E2BIG;
    };
    if !lock(head) && !lock(head) && !lock(head) {
        return EBUSY;
    }
    let r = insert_locked::<E>(p1, p2, head, key, value, noexist);
    unlock(head);
    // A victim that lived in its second bucket: its first counts it no more (after the
    // lock, with nothing else to keep across the lookup).
    if r > 0 {
        unspill::<E>(r as u32);
        0
    } else {
        r
    }
}

/// Takes a bucket's lock (`HEAD_LOCKED`) if it is free: an atomic fetch-or of the bit
/// (BPF_OR | BPF_FETCH: a full barrier), which leaves the rest of the head alone, so a
/// spill count moved meanwhile (another writer's eviction or removal) fails nothing;
/// whether the bit was clear before.
#[inline(always)]
fn lock(head: *mut u64) -> bool {
    // SAFETY: an aligned word of map memory.
    let old = unsafe {
        core::intrinsics::atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(head, HEAD_LOCKED)
    };
    old & HEAD_LOCKED == 0
}

/// Gives a bucket's lock back: an atomic fetch-and-clear of the bit (a fetching atomic: a
/// full barrier on every architecture, where a plain BPF add orders nothing on arm64), so
/// the writes made under the lock are seen before it is free.
#[inline(always)]
fn unlock(head: *mut u64) {
    // SAFETY: an aligned word of map memory.
    let old = unsafe {
        core::intrinsics::atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(head, !HEAD_LOCKED)
    };
    // The old word kept (a result used: the fetching instruction, not BPF's plain and).
    core::hint::black_box(old);
}

/// Starts a new flow's inserts: `refused` is false until one of them finds its buckets
/// full of flows that must stay.
#[inline(always)]
pub fn clear_refused() {
    if let Some(room) = room() {
        // SAFETY: this CPU's two words, valid for this run.
        unsafe { *room.add(1) = 0 };
    }
}

/// Whether an insert since `clear_refused` found no room (its buckets full of flows that
/// must stay): a new flow that could not be made then was refused for the table, not for
/// its SNAT pool (`DropConntrackFull`, not `DropSnatExhausted`).
#[inline(always)]
pub fn refused() -> bool {
    // SAFETY: this CPU's two words, valid for this run.
    room().is_some_and(|room| unsafe { *room.add(1) } != 0)
}

/// Why a new flow whose tuple search failed was refused (see `refused`).
#[inline(always)]
pub fn search_failure() -> privatelink_common::Reason {
    if refused() {
        privatelink_common::Reason::DropConntrackFull
    } else {
        privatelink_common::Reason::DropSnatExhausted
    }
}

/// Slot `j` of the pair of buckets (`j` below `2 * FLOW_WAYS`: the first's, then the
/// second's).
#[inline(always)]
fn pair_slot<E: Tabled>(
    p1: *mut E::Bucket,
    p2: *mut E::Bucket,
    j: u32,
) -> (*mut u64, *mut u32, *mut E) {
    E::parts(if j < FLOW_WAYS { p1 } else { p2 }, j % FLOW_WAYS)
}

/// `insert` with the lock of the key's first bucket `p1` held (its second is `p2`). In
/// passes that each keep little alive (the function's frame counts against its callers'
/// 512 bytes of stack): the key, the free slots, the slot taken, the eviction.
#[inline(always)]
fn insert_locked<E: Tabled>(
    p1: *mut E::Bucket,
    p2: *mut E::Bucket,
    head: *mut u64,
    key: &E::Key,
    value: &E,
    noexist: bool,
) -> i64 {
    for j in 0..2 * FLOW_WAYS {
        // The key is in its second bucket only if the first's spill count says some key
        // is (raised only under the lock held here; read here, not kept across the loop).
        if j == FLOW_WAYS && load(head) & HEAD_SPILL == 0 {
            break;
        }
        let (state, k, e) = pair_slot::<E>(p1, p2, j);
        let w = load(state);
        // SAFETY: the key of a slot of a valid bucket.
        if slot_state(w) == SLOT_LIVE && unsafe { same_slot_key(w, k, key) } {
            if noexist {
                return EEXIST;
            }
            // Rewritten under a claim: the writer of another key, whose second bucket
            // this may be, could be evicting the slot meanwhile.
            if !cas(state, w, next_state(w, SLOT_BUSY)) {
                return E2BIG;
            }
            // SAFETY: this writer's slot now, still this key's (the exchange above
            // fails for a slot taken since); its word keeps the key's tail and home.
            unsafe { *e = *value };
            let busy = next_state(w, SLOT_BUSY);
            return if cas(state, busy, next_state(busy, SLOT_LIVE)) {
                0
            } else {
                E2BIG
            };
        }
    }
    // Free slots: the first bucket's in the low byte, the second's above (counted only
    // when the first has fewer than `FIRST_WHILE_FREE`: it is not read otherwise).
    let mut free = 0u32;
    for j in 0..2 * FLOW_WAYS {
        if j == FLOW_WAYS && free >= FIRST_WHILE_FREE {
            break;
        }
        let (state, _, _) = pair_slot::<E>(p1, p2, j);
        if slot_state(load(state)) == SLOT_FREE {
            free += if j < FLOW_WAYS { 1 } else { 1 << 8 };
        }
    }
    let (n1, n2) = (free & 0xff, free >> 8);
    // The first bucket while it keeps two slots spare, else the emptier (the first on a
    // tie; `to_first`):
    // lookups try the first first, and the buckets still fill evenly; else the lowest
    // rank, if not above the new entry's (an established direction that talked lately is
    // never given up).
    let at = if n1 > 0 || n2 > 0 {
        let from = if to_first(n1, n2) { 0 } else { FLOW_WAYS };
        let mut at = NONE;
        for i in 0..FLOW_WAYS {
            let (state, _, _) = pair_slot::<E>(p1, p2, from + i);
            if at == NONE && slot_state(load(state)) == SLOT_FREE {
                at = from + i;
            }
        }
        at
    } else {
        // The rank with the slot in its low bits: one value to keep, not two.
        let mut best = u64::MAX;
        for j in 0..2 * FLOW_WAYS {
            let (state, _, e) = pair_slot::<E>(p1, p2, j);
            // SAFETY: the entry of a slot of a valid bucket.
            let r = (unsafe { (*e).rank(value.now()) } & !7) | j as u64;
            if slot_state(load(state)) == SLOT_LIVE && r < best {
                best = r;
            }
        }
        if best == u64::MAX || best & !7 > value.rank(value.now()) {
            return E2BIG;
        }
        (best & 7) as u32
    };
    if at == NONE {
        return E2BIG;
    }
    let was = if n1 > 0 || n2 > 0 {
        SLOT_FREE
    } else {
        SLOT_LIVE
    };
    // Whether the key goes to its second bucket (one value kept, not the slot number and
    // the second bucket).
    let spilled = at >= FLOW_WAYS && p1 != p2;
    let (state, _, _) = pair_slot::<E>(p1, p2, at);
    // The key and entry by their offsets from the state word (`key_entry`): the slot's
    // address is then the only one this writer keeps.
    let (k, e) = E::key_entry(state);
    // Claimed against the word read now: another key's writer may be placing its own in
    // this bucket, and `remove` takes no lock.
    let w = load(state);
    if slot_state(w) != was || !cas(state, w, next_state(w, SLOT_BUSY)) {
        return E2BIG;
    }
    // (The busy word is read again where it is needed, not kept: no other writer moves
    // it, and one value fewer lives across the ranking below.)
    // A victim ranked from a read before the claim: still one to give up?
    // SAFETY: this writer's slot now.
    if was == SLOT_LIVE && unsafe { (*e).rank(value.now()) } > value.rank(value.now()) {
        let busy = load(state);
        cas(state, busy, next_state(busy, SLOT_LIVE));
        return E2BIG;
    }
    // Counted before it is published: a reader that finds the key in its second bucket
    // found the count up first. A victim that lived in its second bucket is uncounted by
    // the caller, once the lock is given back (`insert_unmarked`), from the home its
    // slot's word recorded (the claim kept it): returned, as a number above 0. The new
    // key's home and tail go in the word that publishes it.
    let busy = load(state);
    let victim = if was == SLOT_LIVE { slot_home(busy) } else { 0 };
    let home = if spilled {
        (load(head) >> HEAD_OWN_SHIFT) as u32 & HEAD_OWN
    } else {
        0
    };
    if spilled {
        add(head, 1);
    }
    // SAFETY: this writer's slot: its key's other words and its entry.
    unsafe {
        write_head(k, key);
        *e = *value;
    }
    if cas(
        state,
        busy,
        published(busy, key.word(E::Key::WORDS - 1), home),
    ) {
        victim as i64
    } else {
        E2BIG
    }
}
