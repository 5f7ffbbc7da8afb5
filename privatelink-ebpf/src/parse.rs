//! Bounds-checked access to the frame, the header types and the wire constants. Every
//! read or write of packet memory goes through `ptr_at`, which the verifier can follow:
//! `data + off + size <= data_end`. The bottom layer: every step of a packet's walk reads
//! the frame through it.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use privatelink_common::{PROTO_TCP, Reason};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// ICMP types (RFC 792) and the one code the data path sends.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// `ICMP_DEST_UNREACH` code: fragmentation needed and DF set (RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;

pub use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// What the data path needs of an IPv4 header beyond network-types' accessors.
pub trait Ipv4Ext {
    /// Header length in bytes (20..=60 once validated).
    fn hdr_len(&self) -> usize;
    /// MF set or a non-zero offset; DF alone is not a fragment.
    fn is_fragment(&self) -> bool;
    /// The 16-bit word holding TTL and protocol, as checksummed.
    fn ttl_word(&self) -> u16;
}

impl Ipv4Ext for Ipv4Hdr {
    #[inline(always)]
    fn hdr_len(&self) -> usize {
        ((self.vihl & 0x0f) as usize) * 4
    }
    #[inline(always)]
    fn is_fragment(&self) -> bool {
        (self.frags[0] & 0x3f) != 0 || self.frags[1] != 0
    }
    #[inline(always)]
    fn ttl_word(&self) -> u16 {
        u16::from_ne_bytes([self.ttl, self.proto])
    }
}

/// The first 4 bytes of TCP and UDP: the ports.
#[repr(C)]
pub struct Ports {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// TCP flags the conntrack follows, as one byte (FIN, SYN, RST as on the wire).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn tcp_flags(tcp: &TcpHdr) -> u8 {
    (tcp.fin() as u8)
        | ((tcp.syn() as u8) << 1)
        | ((tcp.rst() as u8) << 2)
        | ((tcp.ack() as u8) << 4)
}

/// `data` and `data_end`, read with volatile loads: otherwise LLVM proves a later check
/// redundant from an earlier one at a variable offset, drops it, and the verifier (which
/// cannot follow that proof) rejects the access.
#[inline(always)]
fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: `ctx.ctx` is the kernel's xdp_md for this run.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// A pointer to a `T` at `off` bytes into the frame, or `err` if the frame is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize, err: Reason) -> Result<*mut T, Reason> {
    let (start, end) = bounds(ctx);
    if start + off + size_of::<T>() > end {
        return Err(err);
    }
    Ok((start + off) as *mut T)
}

/// A mutable reference to a `T` at `off`; the same bounds check as `ptr_at`.
#[inline(always)]
#[allow(clippy::mut_from_ref)]
pub fn mut_at<T>(ctx: &XdpContext, off: usize, err: Reason) -> Result<&mut T, Reason> {
    let p = ptr_at::<T>(ctx, off, err)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `p` lie inside the frame;
    // header types have alignment 1 (EthHdr 2, used only at the 2-aligned frame start).
    Ok(unsafe { &mut *p })
}

/// Sets the Ethernet addresses byte by byte (see `put`).
#[inline(always)]
pub fn set_macs(eth: &mut EthHdr, dst: [u8; 6], src: [u8; 6]) {
    put(&mut eth.dst_addr, 0, dst);
    put(&mut eth.src_addr, 0, src);
}

/// Writes `v` at `at` in `buf`, byte by byte: a plain array assignment between packet and
/// map memory becomes a call to memmove in BPF code (it may not assume they differ).
#[inline(always)]
pub fn put<const N: usize, const M: usize>(buf: &mut [u8; M], at: usize, v: [u8; N]) {
    for i in 0..N {
        if at + i < M {
            // SAFETY: a byte of a live `&mut` (index checked); volatile keeps the stores
            // from being merged back into a memmove.
            unsafe { core::ptr::write_volatile(&mut buf[at + i], v[i]) };
        }
    }
}

#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    let (start, end) = bounds(ctx);
    end - start
}

#[inline(always)]
pub fn ne16(b: [u8; 2]) -> u16 {
    u16::from_ne_bytes(b)
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// A TCP or UDP header that fits the packet (which ends at `end`) and agrees with it: TCP's
/// data offset at least 5 words and inside the packet, UDP's length at least 8 and not past
/// the end (shorter is allowed: trailing bytes). Anything else is not rewritten or keyed.
#[inline(always)]
pub fn l4_consistent(ctx: &XdpContext, l4: usize, end: usize, proto: u8) -> Result<(), Reason> {
    let need = if proto == PROTO_TCP { 20 } else { 8 };
    if l4 + need > end {
        return Err(Reason::DropTruncatedL4);
    }
    let ok = if proto == PROTO_TCP {
        let tcp = mut_at::<[u8; 20]>(ctx, l4, Reason::DropTruncatedL4)?;
        let doff = (tcp[12] >> 4) as usize * 4;
        doff >= 20 && l4 + doff <= end
    } else {
        let u = mut_at::<[u8; 8]>(ctx, l4, Reason::DropTruncatedL4)?;
        let len = be16([u[4], u[5]]) as usize;
        len >= 8 && l4 + len <= end
    };
    if !ok {
        return Err(Reason::DropTruncatedL4);
    }
    Ok(())
}
