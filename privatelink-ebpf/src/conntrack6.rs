//! The IPv6 flow table, `PL_CONNTRACK6`, as `PL_CONNTRACK` is IPv4's: what does not
//! depend on the address family (claims, liveness, TCP tracking, marks, new-flow tokens)
//! is `conntrack`'s, generic over `Flow`, which `FlowEntry6` implements here; the IPv6
//! keys are built and compared here without passing 16-byte addresses through registers.
//! Used by the ICMPv6 error path, the GWLB IPv6 paths and the NAT flow steps of `flows6`;
//! uses `packet6`, `maps` and `conntrack`.

use privatelink_common::{
    CT_ESTABLISHED, Config, EMBRYONIC_RECLAIM_NS, FLOW_GWLB, FlowEntry6, FlowKey6,
    flowtable::SlotKey, idle_timeout_ns, ports_word, proto_word, seen_elapsed_ns,
};

use crate::{
    conntrack::{Flow, Table, alive, flow_fields},
    flowtable::FLOWS6,
    packet6::set_addr_words,
};

impl Flow for FlowEntry6 {
    #[inline(always)]
    fn table() -> &'static Table<FlowEntry6> {
        &FLOWS6
    }
    #[inline(always)]
    fn proto(key: &FlowKey6) -> u8 {
        key.proto
    }
    /// Word by word, leaving at the first difference: a derived comparison of two 44-byte
    /// keys goes bytewise (their addresses are byte arrays), every byte held in a
    /// register, which BPF code spills one stack slot each.
    #[inline(always)]
    fn same_key(a: &FlowKey6, b: &FlowKey6) -> bool {
        const WORDS: usize = core::mem::size_of::<FlowKey6>() / 4;
        const _: () = assert!(core::mem::align_of::<FlowKey6>() == 4 && WORDS * 4 == 44);
        // SAFETY: two live keys, 4-aligned, read as the words they are.
        let (a, b) = unsafe {
            (
                &*(a as *const FlowKey6 as *const [u32; WORDS]),
                &*(b as *const FlowKey6 as *const [u32; WORDS]),
            )
        };
        for i in 0..WORDS {
            if a[i] != b[i] {
                return false;
            }
        }
        true
    }
    /// As `FlowEntry::partner`: GWLB flows are keyed in the consumer VPC both ways.
    /// (`self.partner_key` here is `FlowEntry6`'s own method, `FlowKey6::new`'s key: an
    /// inherent method goes before the trait's; it serves `alive`, `track` and
    /// `settle_handshake`. The trait's, `key6`'s, serves `conntrack::keep_partner`; and
    /// `flows6`'s claim builds its keys in place (`partner_key6`). One builder for this
    /// and `key6` was tried: with `key6` here, `privatelink_gwlb_steer6`, which inlines
    /// `alive`, needed 544 bytes of stack, and the verifier refused it. Each is tested
    /// against the keys the host makes: this one by
    /// `a_flow6_lives_while_either_direction_is_active`, `key6` by
    /// `a_flow6_that_loses_an_entry_keeps_its_snat_tuple`, `partner_key6` by the same
    /// test's lost forward entry.)
    #[inline(always)]
    fn partner(&self, key: &FlowKey6) -> FlowKey6 {
        if self.flags & FLOW_GWLB != 0 {
            key.reversed()
        } else {
            self.partner_key(key.proto)
        }
    }
    #[inline(always)]
    fn partner_key(&self, proto: u8) -> FlowKey6 {
        key6(
            self.out_vpc_id,
            &self.new_dst,
            &self.new_src,
            self.new_dport,
            self.new_sport,
            proto,
        )
    }
    /// `FlowEntry::is_expired`'s rule.
    #[inline(always)]
    fn is_expired(&self, proto: u8, now_ns: u64, cfg: &Config) -> bool {
        seen_elapsed_ns(now_ns, self.last_seen) > idle_timeout_ns(self.tcp_flags, proto, cfg)
    }
    /// `FlowEntry::is_stale_for`'s rule.
    #[inline(always)]
    fn is_stale_for(&self, proto: u8, now_ns: u64, cfg: &Config, endpoint_id: u32) -> bool {
        self.is_expired(proto, now_ns, cfg)
            || (self.tcp_flags & CT_ESTABLISHED == 0
                && self.endpoint_id == endpoint_id
                && seen_elapsed_ns(now_ns, self.last_seen) > EMBRYONIC_RECLAIM_NS)
    }
    /// Where `FlowEntry` keeps it: the first four bytes of `peer_mac`.
    #[inline(always)]
    fn handshake_ack(&self) -> u32 {
        let m = &self.peer_mac;
        u32::from_ne_bytes([m[0], m[1], m[2], m[3]])
    }
    #[inline(always)]
    fn set_handshake_ack(&mut self, ack: u32) {
        let b = ack.to_ne_bytes();
        self.peer_mac[..4].copy_from_slice(&b);
    }
    flow_fields!();
}

/// `conntrack::alive` for IPv6, a BPF function of its own: the 44-byte keys it builds
/// and compares take no room in its callers' frames.
#[inline(never)]
pub fn alive6(e: &FlowEntry6, key: &FlowKey6, t: u64, cfg: &Config) -> bool {
    alive(e, key, t, cfg)
}

/// `FlowKey6::new` with the addresses written in place, a whole word at a time
/// (`packet6::set_addr_words`: the lookups read the key as words, see `FlowKey::of_words`),
/// never through registers: a key built inline is split by LLVM into scalars the
/// registers cannot hold (the stack then holds one slot per piece); filled by a BPF
/// function of its own, it stays in memory.
#[inline(always)]
pub fn key6(
    vpc_id: u32,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
) -> FlowKey6 {
    let mut k = FlowKey6::default();
    k.set_word(0, vpc_id);
    k.set_word(9, ports_word(sport, dport));
    k.set_word(10, proto_word(proto));
    fill_addrs(&mut k, src, dst);
    k
}

#[inline(never)]
fn fill_addrs(k: &mut FlowKey6, src: &[u8; 16], dst: &[u8; 16]) {
    set_addr_words(k, src, dst);
}
