//! IPv4 header checksums read from the frame: verification (RFC 1812: a router verifies
//! the header checksum before forwarding) and the ones' complement sums the paths fold
//! into new checksums. Near the bottom: it uses only `parse`.

use aya_ebpf::programs::XdpContext;
use privatelink_common::{Reason, csum};

use crate::parse::{ETH_LEN, ne16, ptr_at};

/// RFC 1812: a router verifies the header checksum before forwarding.
#[inline(always)]
pub fn verify_checksum(ctx: &XdpContext, hlen: usize) -> Result<(), Reason> {
    verify_checksum_at(ctx, ETH_LEN, hlen)
}

/// The same for an IPv4 header of `hlen` bytes at `off` (an inner one, say).
#[inline(always)]
pub fn verify_checksum_at(ctx: &XdpContext, off: usize, hlen: usize) -> Result<(), Reason> {
    let sum = if hlen == 20 {
        // The usual header, under one bounds check.
        // SAFETY: 20 bytes at `off` are inside the frame (checked by `ptr_at`); IPv4
        // headers lie at even offsets of the 2-aligned frame.
        sum_header(unsafe { &*ptr_at::<[u16; 10]>(ctx, off, Reason::DropTruncatedIp)? })
    } else {
        sum_words::<15>(ctx, off, hlen)?
    };
    if csum::fold(sum) != 0xffff {
        return Err(Reason::DropBadIpChecksum);
    }
    Ok(())
}

/// The ones' complement sum (unfolded) of an IPv4 header without options, read as the
/// ten 16-bit words it is (in memory order: the folded sum is then in memory order too).
#[inline(always)]
pub fn sum_header(h: &[u16; 10]) -> u32 {
    let mut sum: u32 = 0;
    for w in h {
        sum += *w as u32;
    }
    sum
}

/// The ones' complement sum (unfolded) of `len` bytes at `off`, read as 4-byte words;
/// `len` is a multiple of 4 and at most `4 * WORDS`.
#[inline(always)]
pub fn sum_words<const WORDS: usize>(
    ctx: &XdpContext,
    off: usize,
    len: usize,
) -> Result<u32, Reason> {
    let mut sum: u32 = 0;
    for i in 0..WORDS {
        if i * 4 >= len {
            break;
        }
        let w = ptr_at::<[u8; 4]>(ctx, off + i * 4, Reason::DropTruncatedIp)?;
        // SAFETY: bounds checked by `ptr_at`.
        let w = unsafe { *w };
        sum += ne16([w[0], w[1]]) as u32 + ne16([w[2], w[3]]) as u32;
    }
    Ok(sum)
}
