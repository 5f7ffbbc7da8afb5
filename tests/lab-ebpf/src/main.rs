//! `privatelink-pass`: map-free reference programs.
//! - `privatelink_pass` returns every frame to the kernel. Attached to the far end of a
//!   veth pair (labs, tests) because the kernel delivers XDP-redirected frames into a veth
//!   only when its peer runs an XDP program.
//! - `privatelink_tx` only swaps the Ethernet addresses and returns XDP_TX: the benchmarks'
//!   trivial baseline.
//! - `privatelink_redirect` redirects every frame, untouched, to the interface in
//!   `PL_BASE_TARGET[0]`: the bare-redirect baseline of the throughput benchmark.
//!   `privatelink_redirect_map` does the same through `bpf_redirect_map` and the DEVMAP
//!   `PL_BASE_DEVS` (slot 0): the benchmark compares the two helpers.
//! - `privatelink_redirect_lookup` does the same after one read of a table the size and
//!   kind of the data path's IPv4 flow table (`PL_BASE_TABLE`, sized at load: buckets of
//!   352 bytes in a BPF_F_MMAPABLE array) at a bucket picked by the frame's flow: the
//!   floor of any forwarder that reads one cold line of per-flow state per packet, the
//!   throughput benchmark's measure of what the machine's memory leaves at many flows.
//!   `privatelink_first_floor` reads two such buckets and then does `privatelink_tx`'s
//!   work: the per-packet benchmark's floor of a new flow's first packet.
//!   `privatelink_nat_floor` reads one whole line of such a bucket and then does the least
//!   work any NAT does with it (key compared, header checked, frame rewritten from the
//!   line, a stamp written back when it changed): the floor of a NAT whose hit costs one
//!   line.
//!   `privatelink_redirect_lookup_pieces` reads the same table made of 32 KiB pieces
//!   (`PL_BASE_PIECES`, memory of the kernel's direct map, not `vmalloc`'d page by page):
//!   what the direct map's huge pages would save a random line.
//! - `privatelink_count` counts every frame but ARP in `PL_SINK_COUNT` and drops it: the
//!   throughput benchmark's sink, the same cheap end for every mode.
//! - `privatelink_gen`, run with BPF_F_TEST_XDP_LIVE_FRAMES, is the benchmark's packet
//!   generator: it gives each frame (an IPv4 UDP template) flow number `mix32(n) % flows`
//!   (`n % flows` for a warm-up that meets every flow) — UDP
//!   source port 1024 + n % 60000, the source address's last byte + n / 60000 — and
//!   transmits it (XDP_TX).
//! - `privatelink_replay` writes a stored frame back into the buffer and tail-calls the
//!   program in `PL_REPLAY_NEXT[0]`: with BPF_PROG_TEST_RUN's repeats every run then sees
//!   the same input even through a path that rewrites, grows or shrinks the frame, so the
//!   benchmark times every path (and the trivial baseline) the same way. A varied source
//!   port is new each run, or one of a cycle's, in the order `PL_REPLAY_ORDER` holds.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, DevMap, PerCpuArray, ProgramArray},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

#[xdp]
pub fn privatelink_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn privatelink_tx(ctx: XdpContext) -> u32 {
    swap_macs(&ctx)
}

/// The trivial program's work: swap the Ethernet addresses, XDP_TX.
#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: 12 bytes at `start` are inside the frame (checked above).
    unsafe {
        let macs = &mut *(start as *mut [[u8; 6]; 2]);
        macs.swap(0, 1);
    }
    xdp_action::XDP_TX
}

#[btf_map]
static PL_BASE_TARGET: Array<u32, 1> = Array::new();

#[xdp]
pub fn privatelink_redirect(_ctx: XdpContext) -> u32 {
    redirect_to_target()
}

/// `bpf_redirect` to `PL_BASE_TARGET[0]`; XDP_PASS while it is unset.
#[inline(always)]
fn redirect_to_target() -> u32 {
    match PL_BASE_TARGET.get(0) {
        // SAFETY: plain helper call; flags 0.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_PASS,
    }
}

#[btf_map]
static PL_BASE_DEVS: DevMap<1> = DevMap::new();

#[xdp]
pub fn privatelink_redirect_map(_ctx: XdpContext) -> u32 {
    PL_BASE_DEVS
        .redirect(0, u64::from(xdp_action::XDP_PASS))
        .unwrap_or(xdp_action::XDP_PASS)
}

/// The floor's table: as `PL_CONNTRACK`, an array of 352-byte buckets (four 88-byte
/// slots; BPF_F_MMAPABLE, so the same kind of memory), its element count set at load (1
/// here: loaded for any other program, it costs nothing).
#[btf_map]
static PL_BASE_TABLE: Array<[u64; 44], 1, { aya_ebpf::bindings::BPF_F_MMAPABLE as usize }> =
    Array::new();

/// `[0]`: `PL_BASE_TABLE`'s buckets (any number: a hash is scaled onto them, as the data
/// path's `bucket_index`).
#[btf_map]
static PL_BASE_BUCKETS: Array<u32, 1> = Array::new();

#[xdp]
pub fn privatelink_redirect_lookup(ctx: XdpContext) -> u32 {
    let Some(h) = flow_hash(&ctx) else {
        return xdp_action::XDP_DROP;
    };
    if read_bucket(h) {
        return xdp_action::XDP_DROP;
    }
    redirect_to_target()
}

/// The floor of a flow-table NAT's hit: one whole line of `PL_BASE_TABLE`'s bucket for the
/// frame's flow (its first: the array starts page-aligned and buckets are 352 bytes, so an
/// odd bucket's first line begins 4 words in), then the least work any NAT does with it,
/// on an IPv4 UDP frame: the key compared (a line whose first word is 0 counts as the
/// frame's: the benchmark's table is zeroed), the TTL and fragment checked, the header
/// checksum verified (RFC 1812), the addresses, ports, MACs and checksum deltas taken from
/// the line and written into the frame (the TTL counted down), a stamp written back into
/// the line when it changed (as a coarse clock's stamp: the flow's hash stands for it),
/// then the bare redirect. No epoch, timeout, filter, counter, tracking or clock read:
/// every NAT that keeps its flows in such a table does more than this.
#[xdp]
pub fn privatelink_nat_floor(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 42 > end {
        return xdp_action::XDP_DROP;
    }
    let Some(h) = flow_hash(&ctx) else {
        return xdp_action::XDP_DROP;
    };
    let b = bucket_of(h);
    let Some(bucket) = PL_BASE_TABLE.get_ptr_mut(b) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: 42 bytes at `start` are inside the frame (checked above), which starts
    // 2-aligned; the line's 8 words from word 0 or 4 lie within the bucket's 44.
    unsafe {
        let f = &mut *(start as *mut [u16; 21]);
        let line = &mut *((bucket as *mut u64).add((b as usize & 1) * 4) as *mut [u64; 8]);
        // Words: [0] state, [1] and [2] the key, [3] addresses, [4] ports and interface,
        // [5] and [6] the MACs, [7] the checksum deltas and the stamp.
        let key = [
            (f[13] as u64) << 48 | (f[14] as u64) << 32 | (f[15] as u64) << 16 | f[16] as u64,
            (f[17] as u64) << 16 | f[18] as u64,
        ];
        // The key's words read whatever the state says: a hit compares them.
        let other = (core::ptr::read_volatile(&line[1]) ^ key[0])
            | (core::ptr::read_volatile(&line[2]) ^ key[1]);
        if other != 0 && line[0] != 0 {
            return xdp_action::XDP_DROP;
        }
        let [ttl, proto] = f[11].to_ne_bytes();
        if ttl <= 1 || f[10] & 0xff3f != 0 {
            return xdp_action::XDP_DROP;
        }
        let mut sum: u32 = 0;
        for i in 7..17 {
            sum += f[i] as u32;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        if sum as u16 != 0xffff {
            return xdp_action::XDP_DROP;
        }
        let (addrs, ports, macs, more, stamp) = (line[3], line[4], line[5], line[6], line[7]);
        f[11] = u16::from_ne_bytes([ttl - 1, proto]);
        for i in 0..4 {
            f[13 + i] = (addrs >> (16 * i)) as u16;
        }
        f[17] = ports as u16;
        f[18] = (ports >> 16) as u16;
        for i in 0..4 {
            f[i] = (macs >> (16 * i)) as u16;
        }
        f[4] = more as u16;
        f[5] = (more >> 16) as u16;
        f[12] = add_delta(f[12], stamp as u16);
        f[20] = add_delta(f[20], (stamp >> 16) as u16);
        if (stamp >> 32) as u32 != h {
            line[7] = stamp as u32 as u64 | (h as u64) << 32;
        }
    }
    redirect_to_target()
}

/// A checksum with `delta` added (one's complement).
#[inline(always)]
fn add_delta(check: u16, delta: u16) -> u16 {
    let s = (!check) as u32 + delta as u32;
    !((s & 0xffff) + (s >> 16)) as u16
}

/// Buckets per piece of `PL_BASE_PIECES`: 88 of 352 bytes, 30 976 bytes, so that a piece
/// with the kernel's array header stays within the 32 KiB the kernel allocates small
/// arrays from its page allocator (`kmalloc`) for: memory of the kernel's direct map,
/// mapped with huge pages, where a `BPF_F_MMAPABLE` array is `vmalloc`'d page by page.
pub const PIECE_BUCKETS: u32 = 88;

/// `PL_BASE_TABLE`'s buckets again, in pieces of `PIECE_BUCKETS` (inner arrays the
/// benchmark makes and sets): the same table in the kernel's direct map.
#[btf_map]
static PL_BASE_PIECES: ArrayOfMaps<Array<[u64; 44], { PIECE_BUCKETS as usize }>, 8192> =
    ArrayOfMaps::new();

/// `privatelink_redirect_lookup` over `PL_BASE_PIECES`: the line read from a table of
/// the same size in the kernel's direct map (one more lookup, of the piece, in a hot
/// array of pointers).
#[xdp]
pub fn privatelink_redirect_lookup_pieces(ctx: XdpContext) -> u32 {
    let Some(h) = flow_hash(&ctx) else {
        return xdp_action::XDP_DROP;
    };
    let b = bucket_of(h);
    match PL_BASE_PIECES.get_value(b / PIECE_BUCKETS, &(b % PIECE_BUCKETS)) {
        // SAFETY: a valid element of the piece.
        Some(bucket) if unsafe { core::ptr::read_volatile(&bucket[0]) } != u64::MAX => {}
        _ => return xdp_action::XDP_DROP,
    }
    redirect_to_target()
}

/// The floor of a new flow's first packet in a NAT that keeps each direction of a flow
/// in its own bucket: one line of each of two buckets of `PL_BASE_TABLE` (the forward
/// key's, which a lookup misses in, and the reply key's, which the SNAT search claims),
/// the two reads independent of each other (the processor may overlap them), then the
/// trivial program's work. A cheaper first packet needs fewer random lines, not less code.
#[xdp]
pub fn privatelink_first_floor(ctx: XdpContext) -> u32 {
    let Some(h) = flow_hash(&ctx) else {
        return xdp_action::XDP_DROP;
    };
    // Both reads are issued before either result is looked at.
    let (a, b) = (read_bucket(h), read_bucket(mix32(h ^ 0x9e37_79b9)));
    if a | b {
        return xdp_action::XDP_DROP;
    }
    swap_macs(&ctx)
}

/// The frame's flow, hashed: its IPv4 source and UDP/TCP ports (Ethernet 14 + IPv4 20,
/// no options).
#[inline(always)]
fn flow_hash(ctx: &XdpContext) -> Option<u32> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 38 > end {
        return None;
    }
    // SAFETY: 38 bytes at `start` are inside the frame (checked above).
    let (src, ports) = unsafe {
        (
            core::ptr::read_unaligned((start + 26) as *const u32),
            core::ptr::read_unaligned((start + 34) as *const u32),
        )
    };
    Some(mix32(src ^ mix32(ports)))
}

/// The bucket of `PL_BASE_TABLE` (or `PL_BASE_PIECES`) for the flow hash `h`: scaled onto
/// `PL_BASE_BUCKETS[0]` buckets by a multiply and a shift, as the data path's
/// `bucket_index`.
#[inline(always)]
fn bucket_of(h: u32) -> u32 {
    let buckets = match PL_BASE_BUCKETS.get(0) {
        Some(&n) => n,
        None => 0,
    };
    ((h as u64 * buckets as u64) >> 32) as u32
}

/// Reads the first line of `PL_BASE_TABLE`'s bucket for `h` (`bucket_of`), kept by a
/// comparison that never holds (the table is zeroed): true if it did, or if the bucket is
/// missing (a count past the table's end: the program then drops, which the benchmarks'
/// action checks catch, rather than go on as though it had read).
#[inline(always)]
fn read_bucket(h: u32) -> bool {
    match PL_BASE_TABLE.get(bucket_of(h)) {
        // SAFETY: a valid element of the array.
        Some(bucket) => (unsafe { core::ptr::read_volatile(&bucket[0]) }) == u64::MAX,
        None => true,
    }
}

#[btf_map]
static PL_SINK_COUNT: PerCpuArray<u64, 1> = PerCpuArray::new();

#[xdp]
pub fn privatelink_count(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 > end {
        return xdp_action::XDP_DROP;
    }
    // ARP goes to the kernel: the forwarder's own stack (nftables mode) must resolve us.
    // SAFETY: 14 bytes at `start` are inside the frame (checked above).
    if unsafe { *((start + 12) as *const [u8; 2]) } == [0x08, 0x06] {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = PL_SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: this CPU's counter.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// `[0]`: how many flows the generator cycles through (0 or 1: one flow). `[1]`: nonzero
/// for flows in order (`n % flows`: a warm-up that meets every flow in `flows` frames).
#[btf_map]
static PL_GEN_FLOWS: Array<u32, 2> = Array::new();

#[btf_map]
static PL_GEN_COUNT: PerCpuArray<u32, 1> = PerCpuArray::new();

/// `[0]`: the frame's first 42 bytes (Ethernet, IPv4 without options, UDP). Written back
/// into every frame: pages come back from a run with what the forwarder made of them.
#[btf_map]
static PL_GEN_TEMPLATE: Array<[u8; 42], 1> = Array::new();

/// murmur3's 32-bit finalizer: a bijection of `u32` that scatters consecutive counts.
#[inline(always)]
fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[xdp]
pub fn privatelink_gen(ctx: XdpContext) -> u32 {
    // Ethernet 14 + IPv4 20 (no options) + UDP 8.
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 42 > end {
        return xdp_action::XDP_DROP;
    }
    let flows = match PL_GEN_FLOWS.get(0) {
        Some(&f) if f > 1 => f,
        _ => 1,
    };
    let Some(count) = PL_GEN_COUNT.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    let Some(template) = PL_GEN_TEMPLATE.get(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: this CPU's counter; 42 bytes at `start` are inside the frame (checked).
    unsafe {
        // Flows in an order unrelated to the one they were made in (a bijective mix of
        // the count), as real traffic: cycling them in order would meet each flow's state
        // where the previous one's lies, whenever a table places entries in the order made.
        let in_order = matches!(PL_GEN_FLOWS.get(1), Some(&o) if o != 0);
        let n = if in_order { *count } else { mix32(*count) } % flows;
        *count = (*count).wrapping_add(1);
        let f = &mut *(start as *mut [u8; 42]);
        *f = *template;
        f[29] = f[29].wrapping_add((n / 60000) as u8);
        f[24] = 0;
        f[25] = 0;
        let mut sum: u32 = 0;
        for i in 0..10 {
            sum += u16::from_be_bytes([f[14 + 2 * i], f[15 + 2 * i]]) as u32;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f[34..36].copy_from_slice(&((1024 + n % 60000) as u16).to_be_bytes());
        f[40] = 0; // UDP checksum 0: none (IPv4)
        f[41] = 0;
    }
    xdp_action::XDP_TX
}

/// The frame `privatelink_replay` restores (its first `PL_REPLAY_PARAMS[0]` bytes).
#[btf_map]
static PL_REPLAY_FRAME: Array<[u8; REPLAY_MAX], 1> = Array::new();

/// `[0]`: the frame's length, a multiple of 4; `[1]`: where a 16-bit field lies that gets
/// a new value on every run, its stored value plus a count (a TCP/UDP source port: every
/// run a new flow), or 0; `[2]`: 0 (no cycle), or the count's cycle N: the count runs 1,
/// 2, ..., N, then from 1 again, and the field gets its stored value plus
/// `PL_REPLAY_ORDER[count - 1]` (every run one of N flows made before, each once a
/// cycle, in the order's turn).
#[btf_map]
static PL_REPLAY_PARAMS: Array<u32, 3> = Array::new();

/// A cycle's order: for a cycle of N, a permutation of 1..=N in its first N elements
/// (the harness writes a scrambled one: flows visited by their port's order would lie a
/// fixed stride of buckets apart under a hash linear in the port, which a stride
/// prefetcher follows).
#[btf_map]
static PL_REPLAY_ORDER: Array<u16, 65536> = Array::new();

#[btf_map]
static PL_REPLAY_NEXT: ProgramArray<1> = ProgramArray::new();

/// The count the varied field adds: one for the whole machine, not per CPU (a test run
/// runs on whichever CPU its thread is on, and per-CPU counts would give a field's values
/// again after a migration: "new" flows that exist). The harness zeroes it before each
/// measured path (`Harness::reset_replay_count`).
#[btf_map]
static PL_REPLAY_COUNT: Array<u32, 1> = Array::new();

const REPLAY_MAX: usize = 160;

#[xdp]
pub fn privatelink_replay(ctx: XdpContext) -> u32 {
    let (Some(&len), Some(&vary), Some(&cycle), Some(frame), Some(count)) = (
        PL_REPLAY_PARAMS.get(0),
        PL_REPLAY_PARAMS.get(1),
        PL_REPLAY_PARAMS.get(2),
        PL_REPLAY_FRAME.get(0),
        PL_REPLAY_COUNT.get_ptr_mut(0),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    let (len, vary) = (len as usize, vary as usize);
    if len > REPLAY_MAX || len % 4 != 0 {
        return xdp_action::XDP_ABORTED;
    }
    // The previous run may have grown (encapsulation) or shrunk (decapsulation) the frame.
    let cur = ctx.data_end() - ctx.data();
    if cur != len {
        // SAFETY: plain helper call on this run's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, cur as i32 - len as i32) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    for i in 0..REPLAY_MAX / 4 {
        let o = i * 4;
        if o >= len {
            break;
        }
        if start + o + 4 > end {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: 4 bytes at `start + o` are inside the frame (checked), `o + 4 <= 160`.
        unsafe {
            *((start + o) as *mut [u8; 4]) = [frame[o], frame[o + 1], frame[o + 2], frame[o + 3]]
        };
    }
    if vary != 0 && vary + 2 <= len && vary < REPLAY_MAX && start + vary + 2 <= end {
        // SAFETY: the counter's slot (one test run at a time); 2 bytes at `start + vary`
        // are inside the frame.
        unsafe {
            *count = if cycle != 0 && *count >= cycle {
                1
            } else {
                (*count).wrapping_add(1)
            };
            let add = if cycle == 0 {
                *count as u16
            } else {
                match PL_REPLAY_ORDER.get(*count - 1) {
                    Some(&v) => v,
                    None => return xdp_action::XDP_ABORTED,
                }
            };
            let base = u16::from_be_bytes([frame[vary], frame[vary + 1]]);
            *((start + vary) as *mut [u8; 2]) = base.wrapping_add(add).to_be_bytes();
        }
    }
    // SAFETY: a tail call; on success it does not return.
    unsafe { PL_REPLAY_NEXT.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
