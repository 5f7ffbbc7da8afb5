//! Bounds-checked access to the frame. Every read or write of packet memory goes through
//! `ptr_at`, which the verifier can follow: `data + off + size <= data_end`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use privatelink_common::Reason;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// Header length in bytes (20..=60 once validated).
    #[inline(always)]
    pub fn hdr_len(&self) -> usize {
        ((self.vihl & 0x0f) as usize) * 4
    }
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        // MF set or a non-zero offset; DF (0x40) alone is not a fragment.
        (self.frag[0] & 0x3f) != 0 || self.frag[1] != 0
    }
    /// The 16-bit word holding TTL and protocol, as checksummed.
    #[inline(always)]
    pub fn ttl_word(&self) -> u16 {
        u16::from_ne_bytes([self.ttl, self.proto])
    }
}

/// The first 4 bytes of TCP and UDP: the ports.
#[repr(C)]
pub struct Ports {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

#[repr(C)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
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
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `p` lie inside the frame, and
    // every header type here has alignment 1.
    Ok(unsafe { &mut *p })
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
