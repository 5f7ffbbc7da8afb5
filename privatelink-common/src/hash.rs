//! Small, verifier-friendly hashing used to pick SNAT ports (and, later, appliances).

/// A 32-bit finalizer (murmur3's fmix32): good avalanche, a handful of instructions.
#[inline(always)]
pub fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// A 64-bit finalizer (splitmix64's output step): the flow tables' key hash parameters
/// are drawn with it (`flowtable::key_hash_params`), and the benchmark's replay order.
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a client tuple, used as the starting point of the SNAT port search.
#[inline(always)]
pub fn tuple_hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    let mut h = mix32(u32::from_ne_bytes(src) ^ seed);
    h = mix32(h ^ u32::from_ne_bytes(dst));
    h = mix32(h ^ ((sport as u32) << 16 | dport as u32));
    mix32(h ^ proto as u32)
}

/// A hash that is the same for a flow and its reply: the two endpoints (address and port)
/// are put in order before mixing. `fields` is the stickiness: 5 hashes the whole tuple,
/// 3 addresses and protocol, 2 addresses only.
#[inline(always)]
pub fn symmetric_hash(
    a: [u8; 4],
    b: [u8; 4],
    pa: u16,
    pb: u16,
    proto: u8,
    fields: u8,
    seed: u32,
) -> u32 {
    let (x, y) = (u32::from_be_bytes(a), u32::from_be_bytes(b));
    let (px, py) = if fields == 5 { (pa, pb) } else { (0, 0) };
    let proto = if fields == 2 { 0 } else { proto };
    let (lo, hi, plo, phi) = if (x, px) <= (y, py) {
        (x, y, px, py)
    } else {
        (y, x, py, px)
    };
    let mut h = mix32(lo ^ seed);
    h = mix32(h ^ hi);
    h = mix32(h ^ ((plo as u32) << 16 | phi as u32));
    mix32(h ^ proto as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_hash_is_symmetric_and_honours_stickiness() {
        let (a, b) = ([10, 30, 1, 10], [10, 30, 2, 10]);
        for f in [5, 3, 2] {
            assert_eq!(
                symmetric_hash(a, b, 40000, 80, 6, f, 7),
                symmetric_hash(b, a, 80, 40000, 6, f, 7)
            );
        }
        let five = |sp| symmetric_hash(a, b, sp, 80, 6, 5, 7);
        assert_ne!(five(40000), five(40001), "5-tuple: ports count");
        let three = |sp, pr| symmetric_hash(a, b, sp, 80, pr, 3, 7);
        assert_eq!(three(40000, 6), three(40001, 6), "3-tuple: ports do not");
        assert_ne!(three(40000, 6), three(40000, 17), "3-tuple: protocol does");
        let two = |sp, pr| symmetric_hash(a, b, sp, 80, pr, 2, 7);
        assert_eq!(two(40000, 6), two(1, 17), "2-tuple: addresses only");
        assert_ne!(
            symmetric_hash(a, [10, 30, 2, 11], 1, 2, 6, 2, 7),
            two(1, 6),
            "addresses count"
        );
    }

    #[test]
    fn tuple_hash_spreads_ports() {
        let mut seen = [0u32; 64];
        for p in 0..6400u16 {
            let h = tuple_hash([10, 10, 2, 1], [10, 10, 1, 100], 30000 + p, 80, 6, 0);
            seen[(h % 64) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50 && n < 150), "{seen:?}");
    }
}
