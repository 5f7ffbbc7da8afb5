//! Another CPU's writer taking a flow's slot while packets of the flow go through the
//! program (`race`): what the data path's lock-free readers must survive. And the two
//! CPUs such tests run on.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    time::{Duration, Instant},
};

use privatelink_common::{
    FlowEntry, FlowEntry6, FlowGeometry, FlowSlot, FlowSlot6, Reason, checked_tick,
    flowtable::{
        FLOW_WAYS, SLOT_BUSY, SLOT_LIVE, SlotKey, next_state, published, same_slot_key, slot_home,
        slot_state, write_head,
    },
    map_names,
};

use crate::testrun::{Harness, XDP_DROP, XDP_REDIRECT};

/// Where a family's flow table keeps a slot's parts (its state word first).
pub struct Slots {
    map: &'static str,
    size: usize,
    key: usize,
    entry: usize,
}

pub const SLOTS: Slots = Slots {
    map: map_names::CONNTRACK,
    size: std::mem::size_of::<FlowSlot>(),
    key: std::mem::offset_of!(FlowSlot, key),
    entry: std::mem::offset_of!(FlowSlot, entry),
};

pub const SLOTS6: Slots = Slots {
    map: map_names::CONNTRACK6,
    size: std::mem::size_of::<FlowSlot6>(),
    key: std::mem::offset_of!(FlowSlot6, key),
    entry: std::mem::offset_of!(FlowSlot6, entry),
};

static ONE_RACE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An entry as the racing writer puts it back at every turn: its partner (or appliance)
/// confirmed just now (`checked`), so that however long the race runs, an original
/// direction is never sent to the full path for its once-a-second check
/// (`PARTNER_REFRESH_NS`), as the races' own flows would not be in the check's second.
pub trait Confirmed: Copy {
    /// As the writer puts it back: its check just made.
    fn confirmed(self) -> Self {
        self.checked_at(crate::scale::ktime_ns())
    }
    /// With its check (`checked`) made at `ns` of the data path's clock.
    fn checked_at(self, ns: u64) -> Self;
    /// Its endpoint counter slot.
    fn counter_slot(&self) -> u16;
}

impl Confirmed for FlowEntry {
    fn checked_at(mut self, ns: u64) -> Self {
        self.checked = checked_tick(ns);
        self
    }
    fn counter_slot(&self) -> u16 {
        self.counter_slot
    }
}

/// An entry the racing writer puts back with its check due (made two seconds ago, past
/// `PARTNER_REFRESH_NS`), where `Confirmed` makes it just now: on the forward full paths
/// every packet then goes through the partner check, and the slot's re-read before it
/// (`Seen::still` ahead of `keep_partner`), which no confirmed entry reaches, is raced
/// too. The same memory as the entry (`repr(transparent)`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Due<V>(pub V);

impl<V: Confirmed> Confirmed for Due<V> {
    fn confirmed(self) -> Self {
        self.checked_at(crate::scale::ktime_ns().saturating_sub(2_000_000_000))
    }
    fn checked_at(self, ns: u64) -> Self {
        Due(self.0.checked_at(ns))
    }
    fn counter_slot(&self) -> u16 {
        self.0.counter_slot()
    }
}

impl Confirmed for FlowEntry6 {
    fn checked_at(mut self, ns: u64) -> Self {
        self.checked = checked_tick(ns);
        self
    }
    fn counter_slot(&self) -> u16 {
        self.counter_slot
    }
}

/// The counter slot the racing writer's other flow counts into (`OTHER_SLOT` of
/// `PL_EP_COUNTERS`, which no endpoint of the tests' states is given): no packet of the
/// raced flow may be charged to it, though some read it from the slot mid-change.
pub const OTHER_SLOT: u16 = (privatelink_common::MAX_COUNTER_SLOTS - 1) as u16;

/// One racing test at a time in a test binary, held from the test's start (before its
/// flows are made: one made and then kept waiting could idle out): tests that raced side
/// by side would share the two CPUs they pin to, and each would race less. A test that
/// failed poisoned the lock; the next one runs all the same.
pub fn one_race() -> std::sync::MutexGuard<'static, ()> {
    ONE_RACE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `frame` (arriving on `ifindex`) through the program while a writer thread takes
/// the slot of `mine` again and again, as an eviction does: `other`'s key and entry
/// written into it, then `mine`'s again (each `Confirmed` as it is), each under a claim of the slot's state word (the
/// data path's protocol), on `t`'s table through a shared mapping. Every forwarded frame
/// must be `expected`, and counted as one of `sent`; every dropped one counted as one of
/// `drops`; some forwarded, and some dropped by the check (`drop_flow_changed`): else the
/// race was not run. Returns (forwarded, dropped, dropped by the check). A test that
/// races holds `one_race()` from its start.
#[allow(clippy::too_many_arguments)]
pub fn race<K: SlotKey + Send + Sync, V: Confirmed + Send + Sync>(
    h: &mut Harness,
    t: &Slots,
    frame: &[u8],
    ifindex: u32,
    expected: &[u8],
    mine: (K, V),
    other: (K, V),
    drops: &[Reason],
    sent: &[Reason],
) -> (u64, u64, u64) {
    let count = |h: &Harness, reasons: &[Reason]| reasons.iter().map(|&r| h.count(r)).sum::<u64>();
    let (sent_before, drops_before) = (count(h, sent), count(h, drops));
    assert_eq!(
        other.1.counter_slot(),
        OTHER_SLOT,
        "the other flow counts apart"
    );
    assert_ne!(mine.1.counter_slot(), OTHER_SLOT);
    let other_counted = |h: &Harness| {
        let a: aya::maps::PerCpuArray<_, privatelink_common::EndpointCounters> =
            aya::maps::PerCpuArray::try_from(h.dp.map(map_names::EP_COUNTERS).unwrap()).unwrap();
        let mut sum = privatelink_common::EndpointCounters::default();
        for c in a.get(&u32::from(OTHER_SLOT), 0).unwrap().iter() {
            sum.add(c);
        }
        sum
    };
    let other_before = other_counted(h);
    let map = h.dp.map(t.map).unwrap();
    let aya::maps::Map::Array(data) = map else {
        panic!("{} is not an array", t.map)
    };
    let slots = data.info().unwrap().max_entries() as usize * FLOW_WAYS as usize;
    let len = slots * t.size;
    let base = map_shared(data, len);
    // The slots after the heads (`flowtable::heads`; word 0: the geometry).
    // SAFETY: word 0 of the mapping, page-aligned.
    let geometry = FlowGeometry::from_word(unsafe { std::ptr::read_volatile(base.cast::<u64>()) });
    let at = (geometry.heads() as usize * FLOW_WAYS as usize..slots)
        .find(|&i| {
            // SAFETY: a slot's state word and key, inside the mapping.
            unsafe {
                let s = base.add(i * t.size);
                let w = std::ptr::read_volatile(s.cast::<u64>());
                slot_state(w) == SLOT_LIVE && same_slot_key(w, s.add(t.key).cast(), &mine.0)
            }
        })
        .expect("the flow's slot");
    let slot = base.wrapping_add(at * t.size) as usize;
    let changed_before = h.count(Reason::DropFlowChanged);
    // The packets on one CPU, the writer on the other (the other tests of this binary
    // may share them: the bound below is in time, and long).
    let cpus = two_cpus();
    pin_to(cpus[0]);
    let stop = AtomicBool::new(false);
    let (mut forwarded, mut dropped, mut runs) = (0u64, 0u64, 0u64);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            pin_to(cpus[1]);
            let slot = slot as *mut u8;
            // SAFETY: the slot's state word, aligned, inside the mapping.
            let state = unsafe { AtomicU64::from_ptr(slot.cast()) };
            let mut turns = 0u64;
            while !stop.load(SeqCst) {
                for (k, e) in [other, mine] {
                    let w = state.load(SeqCst);
                    // Claimed as the data path claims; a packet's path may have claimed
                    // and rewritten it meanwhile (a flow it found missing, made again:
                    // the forward path does), and then this turn waits for the next.
                    let busy = next_state(w, SLOT_BUSY);
                    if slot_state(w) != SLOT_LIVE
                        || state.compare_exchange(w, busy, SeqCst, SeqCst).is_err()
                    {
                        continue;
                    }
                    // SAFETY: this writer's slot now.
                    unsafe {
                        write_head(slot.add(t.key).cast(), &k);
                        std::ptr::write_volatile(slot.add(t.entry).cast::<V>(), e.confirmed());
                    }
                    let tail = k.word(K::WORDS - 1);
                    state.store(published(busy, tail, slot_home(busy)), SeqCst);
                }
                turns += 1;
            }
            turns
        });
        // A failing check below stops the writer as it unwinds (else the scope would
        // wait for it forever).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, SeqCst);
            }
        }
        let _stop = StopOnDrop(&stop);
        let start = Instant::now();
        while runs < 2_000_000 && start.elapsed() < Duration::from_secs(30) && !stop.load(SeqCst) {
            runs += 1;
            let (act, out) = h.run(ifindex, frame).unwrap();
            match act {
                XDP_REDIRECT => {
                    forwarded += 1;
                    if out != expected {
                        stop.store(true, SeqCst);
                        // Raw: a mixed frame may not even parse (its checksums).
                        let n = out.len().min(70);
                        panic!(
                            "run {runs}: the flow's packet left as {:02x?}, not as {:02x?}",
                            &out[..n],
                            &expected[..expected.len().min(70)],
                        );
                    }
                }
                XDP_DROP => dropped += 1,
                other => {
                    stop.store(true, SeqCst);
                    panic!("run {runs}: action {other}: {:?}", h.active_stats());
                }
            }
            // Enough of both outcomes seen: the race was run, not only the flow.
            if runs >= 20_000
                && h.count(Reason::DropFlowChanged) >= changed_before + 20
                && forwarded >= 1000
            {
                break;
            }
        }
        stop.store(true, SeqCst);
        let turns = match writer.join() {
            Ok(turns) => turns,
            Err(e) => {
                eprintln!(
                    "the writer failed after {runs} runs: {:?}",
                    h.active_stats()
                );
                std::panic::resume_unwind(e)
            }
        };
        eprintln!("{runs} runs, {forwarded} forwarded, {dropped} dropped, {turns} writer turns");
    });
    // The slot holds the flow again, live.
    // SAFETY: the slot's state word and key, inside the mapping.
    unsafe {
        let s = base.add(at * t.size);
        let w = std::ptr::read_volatile(s.cast::<u64>());
        assert_eq!(slot_state(w), SLOT_LIVE);
        assert!(same_slot_key(w, s.add(t.key).cast(), &mine.0));
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(base.cast(), len) };
    let counted = count(h, drops) - drops_before;
    eprintln!("{:?}", h.active_stats());
    assert_eq!(
        other_counted(h),
        other_before,
        "packets of the raced flow charged to the other flow's counter slot"
    );
    assert_eq!(dropped, counted, "{:?}", h.active_stats());
    assert!(forwarded > 0, "the flow was never forwarded");
    assert_eq!(
        count(h, sent) - sent_before,
        forwarded,
        "forwarded frames counted as {sent:?}"
    );
    let changed = h.count(Reason::DropFlowChanged) - changed_before;
    assert!(
        changed > 0,
        "no packet read the slot while the writer took it in {runs} runs: not raced"
    );
    (forwarded, dropped, changed)
}

/// Two CPUs this process may run on (BPF_PROG_TEST_RUN runs a program on its caller's).
/// A writable shared mapping of `len` bytes of an mmapable map's memory (the flow
/// tables: `BPF_F_MMAPABLE`), for a test to read and write as the data path does; the
/// caller unmaps it (`libc::munmap`).
pub fn map_shared(data: &aya::maps::MapData, len: usize) -> *mut u8 {
    // SAFETY: a new shared mapping of the map's memory at an address the kernel picks.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        base,
        libc::MAP_FAILED,
        "{}",
        std::io::Error::last_os_error()
    );
    base.cast()
}

pub fn two_cpus() -> [usize; 2] {
    // SAFETY: a zeroed cpu_set_t filled by the kernel; read with libc's macros.
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .take(2)
            .collect()
    };
    cpus.try_into().expect("this test needs two CPUs")
}

/// Runs the calling thread on `cpu` only.
pub fn pin_to(cpu: usize) {
    // SAFETY: a cpu_set_t built with libc's macros; this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}
