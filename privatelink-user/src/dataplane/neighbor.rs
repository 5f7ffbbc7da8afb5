//! Next-hop resolution. The data path learns MACs from every ARP it sees on a VPC-facing
//! interface; the daemon makes sure there is something to see for each load balancer by
//! sending an ARP request from one of the service's SNAT addresses (which the XDP program
//! answers for), so the load balancer's reply teaches the data path its MAC. IPv6 next
//! hops (dualstack services' load balancers) the same way: a Neighbour Solicitation from
//! the service's first IPv6 SNAT address, whose Neighbour Advertisement teaches the data
//! path.

use std::{io, os::fd::AsRawFd};

use crate::desired::Link;

/// An ARP who-has frame (RFC 826) from `sender_mac`/`sender_ip` for `target_ip`.
pub fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender_ip);
    // target MAC unknown: zeros
    f[38..42].copy_from_slice(&target_ip);
    f
}

/// An IPv6 address's solicited-node multicast group (RFC 4291 2.7.1): ff02::1:ff and its
/// last 24 bits.
pub fn solicited_node(target: [u8; 16]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 0x01;
    a[12] = 0xff;
    a[13..16].copy_from_slice(&target[13..16]);
    a
}

/// A Neighbour Solicitation frame (RFC 4861 4.3) from `sender_mac`/`sender_ip` for
/// `target_ip`: to the target's solicited-node group and its multicast MAC
/// (33:33 and the group's last 32 bits, RFC 2464 7), hop limit 255 (receivers refuse
/// anything else), with the source link-layer address option, so the target can answer
/// without asking back.
pub fn neighbor_solicitation(
    sender_mac: [u8; 6],
    sender_ip: [u8; 16],
    target_ip: [u8; 16],
) -> [u8; 86] {
    let group = solicited_node(target_ip);
    let mut f = [0u8; 86];
    f[0..2].copy_from_slice(&[0x33, 0x33]);
    f[2..6].copy_from_slice(&group[12..16]);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    // IPv6: version 6, 32 bytes of ICMPv6, next header 58, hop limit 255.
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58;
    f[21] = 255;
    f[22..38].copy_from_slice(&sender_ip);
    f[38..54].copy_from_slice(&group);
    // ICMPv6 type 135, code 0, checksum (below), 4 reserved bytes, the target, and the
    // source link-layer address option (type 1, 8 bytes long).
    f[54] = 135;
    f[62..78].copy_from_slice(&target_ip);
    f[78] = 1;
    f[79] = 1;
    f[80..86].copy_from_slice(&sender_mac);
    let sum = icmpv6_checksum(&sender_ip, &group, &f[54..]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) from `src` to `dst`: the ones'
/// complement of the ones'-complement sum over the IPv6 pseudo-header (addresses, upper
/// layer length, next header 58) and the message (RFC 4443 2.3).
fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + msg.len());
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(msg);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one raw Ethernet frame out of `link` through an AF_PACKET socket, with the
/// protocol and destination MAC its own header gives.
pub fn send_frame(link: &Link, frame: &[u8]) -> io::Result<()> {
    if frame.len() < 14 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shorter than an Ethernet header",
        ));
    }
    let proto = u16::from_be_bytes([frame[12], frame[13]]);
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto.to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned here only.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto.to_be();
    addr.sll_ifindex = link.ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and addr are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use etherparse::{EtherType, Ethernet2Header};

    use super::*;

    #[test]
    fn arp_request_layout() {
        let f = arp_request([2, 0, 0, 0, 0, 1], [10, 10, 0, 200], [10, 10, 0, 10]);
        let (eth, rest) = Ethernet2Header::from_slice(&f).unwrap();
        assert_eq!(eth.ether_type, EtherType::ARP);
        assert_eq!(eth.destination, [0xff; 6]);
        assert_eq!(&rest[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&rest[14..18], &[10, 10, 0, 200]);
        assert_eq!(&rest[24..28], &[10, 10, 0, 10]);
    }

    #[test]
    fn neighbor_solicitation_is_what_an_independent_decoder_reads() {
        use std::net::Ipv6Addr;

        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let mac = [2, 0, 0, 0, 0, 7];
        let from: Ipv6Addr = "fd00:b::200".parse().unwrap();
        let target: Ipv6Addr = "fd00:b::12:3456".parse().unwrap();
        let f = neighbor_solicitation(mac, from.octets(), target.octets());
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("{:?}", p.link)
        };
        assert_eq!(eth.destination(), [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
        assert_eq!(eth.source(), mac);
        assert_eq!(eth.ether_type(), EtherType::IPV6);
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("{:?}", p.net)
        };
        let h = ip.header();
        assert_eq!(h.source_addr(), from);
        let group: Ipv6Addr = "ff02::1:ff12:3456".parse().unwrap();
        assert_eq!(h.destination_addr(), group);
        assert_eq!(h.hop_limit(), 255);
        assert_eq!(h.payload_length(), 32);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("{:?}", p.transport)
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (135, 0));
        assert!(icmp.is_checksum_valid(from.octets(), group.octets()));
        // After the reserved bytes (the header's last 4), the target address, then the
        // source link-layer address option.
        assert_eq!(&icmp.slice()[4..8], &[0; 4], "reserved");
        let body = icmp.payload();
        assert_eq!(&body[0..16], &target.octets());
        assert_eq!(&body[16..18], &[1, 1]);
        assert_eq!(&body[18..24], &mac);
        // A changed byte breaks the checksum.
        let mut g = f;
        g[70] ^= 1;
        let p = SlicedPacket::from_ethernet(&g).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!()
        };
        assert!(!icmp.is_checksum_valid(from.octets(), group.octets()));
    }
}
