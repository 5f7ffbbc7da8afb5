//! The validated IPv6 packet every IPv6 path works on: the fixed header checked against
//! the frame (`header6`), then the extension headers walked by the data path's policy
//! (`packet6`), giving the same `Packet` the IPv4 paths use (where the L4 header starts,
//! where the packet ends, its protocol). Built on `parse` and `packet`; below every IPv6
//! path.
//!
//! The extension header policy: hop-by-hop options (first only, as RFC 8200 4.1 has it),
//! routing headers other than type 0 (RFC 5095 deprecated it) and destination options
//! are skipped, at most `MAX_EXT_HEADERS` of them, each at most `MAX_EXT_LEN` bytes: a
//! loop of constant bound the verifier walks once per iteration. A Fragment header is
//! dropped as `DropFragment`, as IPv4 fragments are (the data path keys flows by ports,
//! which only a first fragment carries); any other extension header (AH, ESP, Mobility,
//! HIP, Shim6, the experimental ones), more headers or longer ones are dropped and
//! counted as `DropIpv6ExtHeader`.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{FlowKey6, Reason, flowtable::SlotKey};

use crate::{
    packet::Packet,
    parse::{ETH_LEN, Ipv6Hdr, be16, frame_len, mut_at},
};

/// The fixed IPv6 header's length.
pub const IPV6_LEN: usize = 40;
/// ICMPv6's protocol number (RFC 4443).
pub const PROTO_ICMPV6: u8 = 58;

/// Extension headers (RFC 8200 4; the IANA registry of RFC 7045).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_ESP: u8 = 50;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;
const NEXTHDR_EXP1: u8 = 253;
const NEXTHDR_EXP2: u8 = 254;

/// The most extension headers skipped, and the longest one.
pub const MAX_EXT_HEADERS: usize = 4;
pub const MAX_EXT_LEN: usize = 256;

/// The fixed IPv6 header at the frame's start: version 6, a payload length that is not
/// a jumbogram's 0 and fits the frame (trailing bytes, Ethernet padding, are allowed).
/// Returns where the packet ends.
#[inline(always)]
#[allow(clippy::mut_from_ref)]
pub fn header6(ctx: &XdpContext) -> Result<(&mut Ipv6Hdr, usize), Reason> {
    let ip = mut_at::<Ipv6Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIpv6)?;
    let payload = be16(ip.payload_len) as usize;
    if ip.vcf[0] >> 4 != 6 || payload == 0 {
        return Err(Reason::DropBadIpv6Header);
    }
    let end = ETH_LEN + IPV6_LEN + payload;
    if end > frame_len(ctx) {
        return Err(Reason::DropTruncatedIpv6);
    }
    Ok((ip, end))
}

/// The IPv6 packet at the frame's start, its extension headers skipped by the policy
/// above: `proto` is the upper-layer protocol, `l4` where its header starts.
#[inline(always)]
#[allow(clippy::mut_from_ref)]
pub fn packet6(
    ctx: &XdpContext,
    ifindex: u32,
    epoch: u32,
) -> Result<(Packet, &mut Ipv6Hdr), Reason> {
    let (ip, end) = header6(ctx)?;
    let mut next = ip.next_hdr;
    let mut off = ETH_LEN + IPV6_LEN;
    for i in 0..MAX_EXT_HEADERS {
        if next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST {
            break;
        }
        if next == NEXTHDR_HOP && i != 0 {
            return Err(Reason::DropIpv6ExtHeader);
        }
        // Next header, length in 8-byte units past the first 8, and (routing) the type and
        // the segments left: a routing header with segments left names a later
        // destination than the one we matched (RFC 8200 4.4), never ours to translate.
        let h = mut_at::<[u8; 4]>(ctx, off, Reason::DropTruncatedIpv6)?;
        if next == NEXTHDR_ROUTING && (h[2] == 0 || h[3] != 0) {
            return Err(Reason::DropIpv6ExtHeader);
        }
        let len = (h[1] as usize + 1) * 8;
        if len > MAX_EXT_LEN {
            return Err(Reason::DropIpv6ExtHeader);
        }
        next = h[0];
        off += len;
        if off > end {
            return Err(Reason::DropTruncatedIpv6);
        }
    }
    match next {
        NEXTHDR_FRAGMENT => return Err(Reason::DropFragment),
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_ESP | NEXTHDR_AUTH
        | NEXTHDR_MOBILITY | NEXTHDR_HIP | NEXTHDR_SHIM6 | NEXTHDR_EXP1 | NEXTHDR_EXP2 => {
            return Err(Reason::DropIpv6ExtHeader);
        }
        _ => {}
    }
    let pkt = Packet {
        ifindex,
        l4: off,
        end,
        proto: next,
        epoch,
    };
    Ok((pkt, ip))
}

/// Whether a packet from `src` may be forwarded (RFC 4291: not from a multicast,
/// unspecified or loopback address, and a link-local one stays on its link).
#[inline(always)]
pub fn forwardable_source(src: &[u8; 16]) -> bool {
    let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
    answerable_source(src) && !link_local
}

/// Whether a packet from `src` may be answered on its link: not from a multicast (an
/// answer would go to the whole group), unspecified or loopback address (RFC 4291 2.5.2,
/// 2.5.3, 2.7). A link-local source is fine: the answer does not leave the link.
#[inline(always)]
pub fn answerable_source(src: &[u8; 16]) -> bool {
    let multicast = src[0] == 0xff;
    let mut high = 0u8;
    for b in &src[..15] {
        high |= *b;
    }
    let unspecified_or_loopback = high == 0 && src[15] <= 1;
    !(multicast || unspecified_or_loopback)
}

/// An IPv6 address as the eight 16-bit words it is (memory order), for checksums and
/// copies: LLVM's BPF backend splits an access it cannot prove aligned into bytes, and
/// sixteen bytes held in registers spill to the 512-byte stack one slot each.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> &[u16; 8] {
    // SAFETY: every address the data path reads lies at an even offset: in the frame
    // (2-aligned; the IPv6 header and the quoted one at even offsets, extension headers
    // are 8-byte units) and in map values and keys (their address fields are 4-aligned).
    unsafe { &*(a as *const [u8; 16] as *const [u16; 8]) }
}

/// Copies an IPv6 address (between packet and map memory, or within either) word by
/// word with volatile accesses: each word is loaded right before its store, never held,
/// and no call to memmove is made (see `parse::put`). Both are 2-aligned (see `words`).
#[inline(always)]
pub fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    let d = dst as *mut [u8; 16] as *mut u16;
    let s = src as *const [u8; 16] as *const u16;
    for i in 0..8 {
        // SAFETY: word `i` of a live `&mut` and a live `&`, 2-aligned (see `words`).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}

/// Word `i` (below 4) of an address as it lies in memory (network order, read as a
/// native word), from its two 2-aligned halves (see `words`), read volatile as
/// `copy_addr` reads them.
#[inline(always)]
fn addr_word(a: &[u8; 16], i: usize) -> u32 {
    let s = a as *const [u8; 16] as *const u16;
    // SAFETY: words `2 * i` and `2 * i + 1` (below 8: `i & 3`) of a live `&`, 2-aligned.
    let (lo, hi) = unsafe {
        (
            core::ptr::read_volatile(s.add(2 * (i & 3))),
            core::ptr::read_volatile(s.add(2 * (i & 3) + 1)),
        )
    };
    privatelink_common::halves_word(lo, hi)
}

/// Writes `src` and `dst` into `k`'s address words (1–4 and 5–8), a whole word at a time
/// (`addr_word`): what every IPv6 key filler writes in place.
#[inline(always)]
pub fn set_addr_words(k: &mut FlowKey6, src: &[u8; 16], dst: &[u8; 16]) {
    for i in 0..4 {
        k.set_word(1 + i, addr_word(src, i));
        k.set_word(5 + i, addr_word(dst, i));
    }
}
