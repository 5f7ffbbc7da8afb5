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

/// Hash of a client tuple, used as the starting point of the SNAT port search.
#[inline(always)]
pub fn tuple_hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    let mut h = mix32(u32::from_ne_bytes(src) ^ seed);
    h = mix32(h ^ u32::from_ne_bytes(dst));
    h = mix32(h ^ ((sport as u32) << 16 | dport as u32));
    mix32(h ^ proto as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

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
