//! The validated IPv4 packet every path works on (`Packet`): the classifier makes it from
//! the frame for the full path, and each path program makes it again (the verifier checks
//! every program on its own); the established path, tried before, checks the few fields
//! it reads itself and makes the same `Packet` of what it takes. Built on `parse`; below
//! every path.

use aya_ebpf::programs::XdpContext;
use privatelink_common::Reason;

use crate::parse::{ETH_LEN, Ipv4Ext, Ipv4Hdr, be16, frame_len, mut_at};

/// A validated IPv4 packet (or IPv6: `packet6`): where its L4 header starts and where the
/// IP packet ends.
#[derive(Clone, Copy)]
pub struct Packet {
    pub ifindex: u32,
    pub l4: usize,
    pub end: usize,
    pub proto: u8,
    /// `PL_EPOCH` as it was before any lookup of this packet (what flows are stamped with).
    pub epoch: u32,
}

/// The IPv4 header at the frame's start, validated, and where its parts lie.
#[inline(always)]
#[allow(clippy::mut_from_ref)]
pub fn packet(
    ctx: &XdpContext,
    ifindex: u32,
    epoch: u32,
) -> Result<(Packet, &mut Ipv4Hdr), Reason> {
    let ip = mut_at::<Ipv4Hdr>(ctx, ETH_LEN, Reason::DropTruncatedIp)?;
    let hlen = ip.hdr_len();
    if ip.vihl >> 4 != 4 || hlen < 20 {
        return Err(Reason::DropBadIpHeader);
    }
    let tot = be16(ip.tot_len) as usize;
    if tot < hlen {
        return Err(Reason::DropBadIpHeader);
    }
    // Trailing bytes (Ethernet padding) are allowed; a short frame is not.
    if ETH_LEN + tot > frame_len(ctx) {
        return Err(Reason::DropTruncatedIp);
    }
    let pkt = Packet {
        ifindex,
        l4: ETH_LEN + hlen,
        end: ETH_LEN + tot,
        proto: ip.proto,
        epoch,
    };
    Ok((pkt, ip))
}
