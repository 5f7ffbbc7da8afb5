//! Interface lookups in the calling thread's network namespace (not sysfs: sysfs shows
//! the namespace it was mounted in, and `--netns` keeps the host's mounts so that
//! /sys/fs/bpf stays visible).

use std::os::fd::AsRawFd;

use nix::{
    errno::Errno,
    net::if_::if_nametoindex,
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

use crate::desired::Link;

nix::ioctl_read_bad!(siocgifmtu, libc::SIOCGIFMTU, libc::ifreq);
nix::ioctl_read_bad!(siocgifhwaddr, libc::SIOCGIFHWADDR, libc::ifreq);

/// Interface lookup for `desired::compute`: ifindex, MAC and MTU from the kernel.
pub fn resolve_link(name: &str) -> Result<Link, String> {
    if name.as_bytes().contains(&0) {
        return Err(format!("{name:?} is not an interface name"));
    }
    let ifindex = if_nametoindex(name)
        .map_err(|_| format!("interface {name} does not exist in this network namespace"))?;
    let mac = hardware_address(name)
        .map_err(|e| format!("reading the MAC of {name}: {}", std::io::Error::from(e)))?;
    let mtu = interface_mtu(name)
        .map_err(|e| format!("reading the MTU of {name}: {}", std::io::Error::from(e)))?;
    Ok(Link { ifindex, mac, mtu })
}

/// The interface's hardware address (SIOCGIFHWADDR).
fn hardware_address(name: &str) -> nix::Result<[u8; 6]> {
    let req = ifreq(name, |fd, req| {
        // SAFETY: SIOCGIFHWADDR reads ifr_name and fills the union's hwaddr member.
        unsafe { siocgifhwaddr(fd, req) }
    })?;
    // SAFETY: the union member SIOCGIFHWADDR fills.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// The interface's MTU (SIOCGIFMTU).
fn interface_mtu(name: &str) -> nix::Result<u16> {
    let req = ifreq(name, |fd, req| {
        // SAFETY: SIOCGIFMTU reads ifr_name and fills the union's MTU member.
        unsafe { siocgifmtu(fd, req) }
    })?;
    // SAFETY: the union member SIOCGIFMTU fills.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.clamp(0, u16::MAX as libc::c_int) as u16)
}

/// One interface request (`ioctl` reads `ifr_name` and fills the union) on a socket of
/// the calling thread's network namespace.
fn ifreq(
    name: &str,
    ioctl: impl FnOnce(libc::c_int, *mut libc::ifreq) -> nix::Result<libc::c_int>,
) -> nix::Result<libc::ifreq> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(Errno::ENODEV);
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ioctl(sock.as_raw_fd(), &mut req)?;
    Ok(req)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
