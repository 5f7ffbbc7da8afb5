//! VPCs and their vSwitches (subnets in zones).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpc {
    pub id: String,
    pub account: String,
    pub cidr: Ipv4Net,
    /// The VPC's IPv6 range (dual stack; none: IPv4 only, as every VPC stored before
    /// dual stack). Its vSwitches take /64s of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr: Option<Ipv6Net>,
    /// The forwarder's interface attached to this VPC.
    pub interface: String,
    #[serde(default)]
    pub vswitches: Vec<VSwitch>,
    /// The interface also carries the host's own traffic: what is not the data path's
    /// passes to the host's stack. Off (the default), the host sees only the replies to
    /// its own probes in this VPC and nothing else of it (see README, "The forwarder host").
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_traffic: bool,
    /// The VPC's DNS resolver address: clients of the VPC ask it for endpoint, zone and
    /// custom service domain names and get their own VPC's answers. The daemon adds it to
    /// the VPC's interface and serves DNS on it (UDP and TCP port 53); none: no resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<Ipv4Addr>,
    /// The address the health checks of the load balancers in this VPC leave from. The
    /// daemon adds it to the VPC's interface; none: the load balancers here are not
    /// checked (every zone counts as healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<Ipv4Addr>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitch {
    pub id: String,
    pub zone: String,
    pub cidr: Ipv4Net,
    /// The vSwitch's IPv6 /64, inside its VPC's `ipv6_cidr` (none: its ENIs are IPv4
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr: Option<Ipv6Net>,
}

impl VSwitch {
    /// The addresses the cloud keeps for itself in every vSwitch CIDR: the first one and
    /// the last three (for 192.168.1.0/24: .0, .253, .254 and .255). They are never
    /// allocated to an ENI and refused when one is asked for.
    pub fn is_reserved(&self, a: Ipv4Addr) -> bool {
        let (a, first, last) = (
            u32::from(a),
            u32::from(self.cidr.network()),
            u32::from(self.cidr.broadcast()),
        );
        a == first || a >= last.saturating_sub(2)
    }

    /// The lowest address of the vSwitch that is neither reserved nor in `used`.
    pub fn lowest_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (first, last) = (
            u32::from(self.cidr.network()),
            u32::from(self.cidr.broadcast()),
        );
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !self.is_reserved(*a) && !used.contains(a))
    }
}

impl VSwitch {
    /// The IPv6 addresses the cloud keeps for itself in the vSwitch's IPv6 range, as for
    /// IPv4: its first address (`::0` of the /64) and its last three. False when the
    /// vSwitch has no IPv6 range.
    pub fn is_reserved6(&self, a: Ipv6Addr) -> bool {
        let Some(net) = self.ipv6_cidr else {
            return false;
        };
        let (a, first, last) = (
            u128::from(a),
            u128::from(net.network()),
            u128::from(net.broadcast()),
        );
        a == first || a >= last.saturating_sub(2)
    }

    /// Whether `a` is an IPv6 address of the vSwitch an ENI may take: inside its IPv6
    /// range and not reserved.
    pub fn usable6(&self, a: Ipv6Addr) -> bool {
        self.ipv6_cidr.is_some_and(|n| n.contains(&a)) && !self.is_reserved6(a)
    }

    /// The lowest IPv6 address of the vSwitch that is neither reserved nor in `used`
    /// (none without an IPv6 range). A /64 is never full: the search stops after a
    /// million taken addresses.
    pub fn lowest_free6(&self, used: &BTreeSet<Ipv6Addr>) -> Option<Ipv6Addr> {
        let net = self.ipv6_cidr?;
        let first = u128::from(net.network());
        let last = u128::from(net.broadcast());
        (first..=last)
            .take(1 << 20)
            .map(Ipv6Addr::from)
            .find(|a| !self.is_reserved6(*a) && !used.contains(a))
    }
}
