//! Internet checksum arithmetic (RFC 1071, incremental update per RFC 1624 eq. 3).
//!
//! Words are 16-bit values read from the packet in native byte order
//! (`u16::from_ne_bytes`); ones' complement sums are byte-order independent as long as
//! every word, the checksum field included, is read the same way.

/// Folds a 32-bit ones' complement accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check as u32) + (!old as u32) + new as u32)
}

/// The checksum after a 4-byte field (an IPv4 address) changed.
#[inline(always)]
pub fn replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = replace16(
        check,
        u16::from_ne_bytes([old[0], old[1]]),
        u16::from_ne_bytes([new[0], new[1]]),
    );
    replace16(
        c,
        u16::from_ne_bytes([old[2], old[3]]),
        u16::from_ne_bytes([new[2], new[3]]),
    )
}

/// The checksum after a host-order port changed (ports sit in the packet big-endian).
#[inline(always)]
pub fn replace_port(check: u16, old: u16, new: u16) -> u16 {
    replace16(
        check,
        u16::from_ne_bytes(old.to_be_bytes()),
        u16::from_ne_bytes(new.to_be_bytes()),
    )
}

/// RFC 1624 eq. 3 split in two, for changes that are the same on every packet of a flow
/// (its addresses, ports, and a TTL decrement): `delta*` sum `!old + new` over the changed
/// words once, `apply_delta` adds the folded sum to a packet's checksum.
#[inline(always)]
pub fn delta16(old: u16, new: u16) -> u32 {
    (!old as u32) + new as u32
}

/// `delta16` over a 4-byte field (an IPv4 address).
#[inline(always)]
pub fn delta4(old: [u8; 4], new: [u8; 4]) -> u32 {
    delta16(
        u16::from_ne_bytes([old[0], old[1]]),
        u16::from_ne_bytes([new[0], new[1]]),
    ) + delta16(
        u16::from_ne_bytes([old[2], old[3]]),
        u16::from_ne_bytes([new[2], new[3]]),
    )
}

/// `delta16` over a 16-byte field (an IPv6 address), read as the eight 16-bit words it
/// is (in memory order). Words, by reference: an address taken as sixteen bytes by value
/// becomes sixteen registers in BPF code, spilled to its 512-byte stack one slot each.
#[inline(always)]
pub fn delta6(old: &[u16; 8], new: &[u16; 8]) -> u32 {
    let mut d = 0;
    for i in 0..8 {
        d += delta16(old[i], new[i]);
    }
    d
}

/// The checksum after a 16-byte field (an IPv6 address, as `delta6` reads it) changed.
#[inline(always)]
pub fn replace6(check: u16, old: &[u16; 8], new: &[u16; 8]) -> u16 {
    apply_delta(check, fold(delta6(old, new)))
}

/// `delta16` over a host-order port (ports sit in the packet big-endian).
#[inline(always)]
pub fn delta_port(old: u16, new: u16) -> u32 {
    delta16(
        u16::from_ne_bytes(old.to_be_bytes()),
        u16::from_ne_bytes(new.to_be_bytes()),
    )
}

/// `delta16` of a TTL decrement: the TTL/protocol word loses 1 in its first byte,
/// whatever the TTL (above 0) and protocol.
#[inline(always)]
pub fn delta_ttl_decrement() -> u32 {
    delta16(u16::from_ne_bytes([1, 0]), 0)
}

/// The checksum after the changes summed (and folded) in `delta`.
#[inline(always)]
pub fn apply_delta(check: u16, delta: u16) -> u16 {
    !fold((!check as u32) + delta as u32)
}

/// UDP's rule: a zero checksum means "none" and stays zero; a computed zero is sent as 0xffff.
#[inline(always)]
pub fn udp_finish(original: u16, updated: u16) -> u16 {
    if original == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// Sums a byte slice as 16-bit words (odd tail padded with zero). Host-side helper for
/// tests and for building headers in userspace.
pub fn sum_bytes(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += u16::from_ne_bytes([*b, 0]) as u32;
    }
    sum
}

/// The full checksum of `data` (its checksum field must already be zero).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = sum_bytes(data);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// 40 random bytes, adjusted by `fix`, with a valid checksum at 10..12.
    fn random_header(rng: &mut Rng, fix: impl Fn(&mut [u8; 40])) -> [u8; 40] {
        let mut buf = [0u8; 40];
        for b in buf.iter_mut() {
            *b = rng.next() as u8;
        }
        fix(&mut buf);
        buf[10] = 0;
        buf[11] = 0;
        let c = checksum(&buf);
        buf[10..12].copy_from_slice(&c.to_ne_bytes());
        buf
    }

    fn check_of(buf: &[u8]) -> u16 {
        u16::from_ne_bytes([buf[10], buf[11]])
    }

    #[test]
    fn incremental_updates_equal_full_recomputation() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut buf = random_header(&mut rng, |_| {});
            // Change an address at 12..16, a port at 20..22 and a byte pair at 8..10.
            let old_addr = [buf[12], buf[13], buf[14], buf[15]];
            let new_addr = (rng.next() as u32).to_ne_bytes();
            let old_port = u16::from_be_bytes([buf[20], buf[21]]);
            let new_port = rng.next() as u16;
            let old_w = u16::from_ne_bytes([buf[8], buf[9]]);
            let new_w = rng.next() as u16;
            buf[12..16].copy_from_slice(&new_addr);
            buf[20..22].copy_from_slice(&new_port.to_be_bytes());
            buf[8..10].copy_from_slice(&new_w.to_ne_bytes());
            let mut inc = replace4(check_of(&buf), old_addr, new_addr);
            inc = replace_port(inc, old_port, new_port);
            inc = replace16(inc, old_w, new_w);
            buf[10] = 0;
            buf[11] = 0;
            let full = checksum(&buf);
            // 0x0000 and 0xffff are the same value in ones' complement; both verify.
            assert!(
                inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff),
                "incremental {inc:#06x} != full {full:#06x}"
            );
            buf[10..12].copy_from_slice(&inc.to_ne_bytes());
            assert_eq!(fold(sum_bytes(&buf)), 0xffff, "updated header must verify");
        }
    }

    #[test]
    fn a_per_flow_delta_leaves_a_header_that_verifies() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            // A TTL that can be decremented.
            let mut buf = random_header(&mut rng, |b| b[8] = b[8].max(1));
            // Both addresses (12..20), a port (20..22), and the TTL (8) decremented.
            let (old_src, old_dst) = (
                [buf[12], buf[13], buf[14], buf[15]],
                [buf[16], buf[17], buf[18], buf[19]],
            );
            let (new_src, new_dst) = (
                (rng.next() as u32).to_ne_bytes(),
                (rng.next() as u32).to_ne_bytes(),
            );
            let old_port = u16::from_be_bytes([buf[20], buf[21]]);
            let new_port = rng.next() as u16;
            let d = fold(
                delta4(old_src, new_src)
                    + delta4(old_dst, new_dst)
                    + delta_port(old_port, new_port)
                    + delta_ttl_decrement(),
            );
            buf[12..16].copy_from_slice(&new_src);
            buf[16..20].copy_from_slice(&new_dst);
            buf[20..22].copy_from_slice(&new_port.to_be_bytes());
            buf[8] -= 1;
            let inc = apply_delta(check_of(&buf), d);
            buf[10..12].copy_from_slice(&inc.to_ne_bytes());
            assert_eq!(fold(sum_bytes(&buf)), 0xffff, "updated header must verify");
        }
    }

    #[test]
    fn an_ipv6_address_change_leaves_a_sum_that_verifies() {
        let words = |b: &[u8]| -> [u16; 8] {
            core::array::from_fn(|i| u16::from_ne_bytes([b[2 * i], b[2 * i + 1]]))
        };
        let mut rng = Rng(0x6a09_e667_f3bc_c908);
        for _ in 0..20_000 {
            // An address at 12..28 of the 40 bytes, changed and changed back.
            let mut buf = random_header(&mut rng, |_| {});
            let old = words(&buf[12..28]);
            let mut new_bytes = [0u8; 16];
            for b in new_bytes.iter_mut() {
                *b = rng.next() as u8;
            }
            let new = words(&new_bytes);
            buf[12..28].copy_from_slice(&new_bytes);
            let inc = replace6(check_of(&buf), &old, &new);
            buf[10..12].copy_from_slice(&inc.to_ne_bytes());
            assert_eq!(fold(sum_bytes(&buf)), 0xffff, "updated sum must verify");
            let d = fold(delta6(&new, &old));
            for (i, w) in old.iter().enumerate() {
                buf[12 + 2 * i..14 + 2 * i].copy_from_slice(&w.to_ne_bytes());
            }
            let back = apply_delta(check_of(&buf), d);
            buf[10..12].copy_from_slice(&back.to_ne_bytes());
            assert_eq!(fold(sum_bytes(&buf)), 0xffff, "a delta applied must verify");
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_finish(0, 0x1234), 0);
        assert_eq!(udp_finish(0x1111, 0), 0xffff);
        assert_eq!(udp_finish(0x1111, 0x2222), 0x2222);
    }
}
