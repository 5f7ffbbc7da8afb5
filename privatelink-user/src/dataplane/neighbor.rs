//! Next-hop resolution. The data path learns MACs from every ARP it sees on a VPC-facing
//! interface; the daemon makes sure there is something to see for each load balancer by
//! sending an ARP request from one of the service's SNAT addresses (which the XDP program
//! answers for), so the load balancer's reply teaches the data path its MAC.

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

/// Sends one raw frame out of `link` through an AF_PACKET socket.
pub fn send_frame(link: &Link, frame: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
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
    addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    addr.sll_ifindex = link.ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
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
}
