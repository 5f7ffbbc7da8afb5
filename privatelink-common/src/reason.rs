//! Every verdict of the XDP program, counted per CPU in `PL_STATS` (index = discriminant).

macro_rules! reasons {
    ($($variant:ident = $idx:literal => $name:literal, $drop:literal;)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($variant = $idx,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];
            /// The counter's name, as printed by `privatelink stats`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }
            /// Whether this verdict drops the frame. (Inlined: the data path's counters ask
            /// on every dropped packet of an endpoint, and a BPF call cost it a call and a
            /// return each time.)
            #[inline(always)]
            pub const fn is_drop(self) -> bool {
                match self { $(Reason::$variant => $drop,)* }
            }
        }
    };
}

reasons! {
    PassNotAttached = 0 => "pass_not_attached", false;
    PassUnrelated = 1 => "pass_unrelated", false;
    ForwardNewFlow = 2 => "forward_new_flow", false;
    ForwardToService = 3 => "forward_to_service", false;
    ForwardToConsumer = 4 => "forward_to_consumer", false;
    IcmpEchoReply = 5 => "icmp_echo_reply", false;
    IcmpErrorTranslated = 6 => "icmp_error_translated", false;
    ArpReply = 7 => "arp_reply", false;
    ArpPass = 8 => "arp_pass", false;
    DropTruncatedEthernet = 9 => "drop_truncated_ethernet", true;
    DropTruncatedIp = 10 => "drop_truncated_ip", true;
    DropBadIpHeader = 11 => "drop_bad_ip_header", true;
    DropBadIpChecksum = 12 => "drop_bad_ip_checksum", true;
    DropTruncatedL4 = 13 => "drop_truncated_l4", true;
    DropFragment = 14 => "drop_fragment", true;
    DropTtlExceeded = 15 => "drop_ttl_exceeded", true;
    DropNotConnected = 16 => "drop_not_connected", true;
    DropNotWhitelisted = 17 => "drop_not_whitelisted", true;
    DropNoNeighbor = 18 => "drop_no_neighbor", true;
    DropNoRoute = 19 => "drop_no_route", true;
    DropSnatExhausted = 20 => "drop_snat_exhausted", true;
    DropNoFlow = 21 => "drop_no_flow", true;
    DropUnsupportedProtocol = 22 => "drop_unsupported_protocol", true;
    DropIcmpNoFlow = 23 => "drop_icmp_no_flow", true;
    DropIcmpUnsupported = 24 => "drop_icmp_unsupported", true;
    DropConntrackFull = 25 => "drop_conntrack_full", true;
    DropBadArp = 26 => "drop_bad_arp", true;
    DropRedirectFailed = 27 => "drop_redirect_failed", true;
    DropAcl = 28 => "drop_acl", true;
    DropSecurityGroup = 29 => "drop_security_group", true;
    GwlbToAppliance = 30 => "gwlb_to_appliance", false;
    GwlbFromAppliance = 31 => "gwlb_from_appliance", false;
    GwlbFragNeeded = 32 => "gwlb_frag_needed", false;
    GwlbArpProbe = 33 => "gwlb_arp_probe", true;
    DropGeneveMalformed = 34 => "drop_geneve_malformed", true;
    DropUnknownAppliance = 35 => "drop_unknown_appliance", true;
    DropNoHealthyAppliance = 36 => "drop_no_healthy_appliance", true;
    DropGwlbNoFlow = 37 => "drop_gwlb_no_flow", true;
    DropNoPathProgram = 38 => "drop_no_path_program", true;
    DropNoListener = 39 => "drop_no_listener", true;
    DropHostIsolated = 40 => "drop_host_isolated", true;
    PassHost = 41 => "pass_host", false;
    ArpLearned = 42 => "arp_learned", false;
    DropEndpointFlowLimit = 43 => "drop_endpoint_flow_limit", true;
    // A DNS query (UDP or TCP to port 53) to the VPC's resolver address, passed to the
    // host's stack, which serves it.
    PassDns = 44 => "pass_dns", false;
    // IPv6 (the NAT data path, `privatelink_ipv6` and its paths). Forwarded packets have
    // counters of their own: a family's share of the traffic is visible, and their bytes
    // are read from the IPv6 header.
    Forward6NewFlow = 45 => "forward6_new_flow", false;
    Forward6ToService = 46 => "forward6_to_service", false;
    Forward6ToConsumer = 47 => "forward6_to_consumer", false;
    Icmp6EchoReply = 48 => "icmp6_echo_reply", false;
    Icmp6ErrorTranslated = 49 => "icmp6_error_translated", false;
    // A Neighbour Solicitation for an ENI's or SNAT address answered (RFC 4861), and a
    // registered next hop's MAC learned from an advertisement (consumed, as arp_learned).
    NdAdvert = 50 => "nd_advert", false;
    NdLearned = 51 => "nd_learned", false;
    DropTruncatedIpv6 = 52 => "drop_truncated_ipv6", true;
    // Not version 6, or a payload length of 0 (jumbogram) or past the frame.
    DropBadIpv6Header = 53 => "drop_bad_ipv6_header", true;
    // More than 4 extension headers, one longer than 256 bytes, a hop-by-hop header not
    // first, a type 0 routing header, or an extension header the data path does not skip.
    DropIpv6ExtHeader = 54 => "drop_ipv6_ext_header", true;
    DropHopLimitExceeded = 55 => "drop_hop_limit_exceeded", true;
    // IPv6 makes the UDP checksum mandatory (RFC 8200 8.1).
    DropUdp6ZeroChecksum = 56 => "drop_udp6_zero_checksum", true;
    // Neighbour discovery that RFC 4861 7.1 says to discard: hop limit not 255, code not
    // 0, bad checksum or length, a multicast target.
    DropBadNd = 57 => "drop_bad_nd", true;
    // A source a router must not forward from: multicast, unspecified, loopback or
    // link-local (RFC 4291).
    DropBadIpv6Source = 58 => "drop_bad_ipv6_source", true;
    // An ICMPv6 message to an ENI or SNAT address the data path has no use for (router
    // and redirect messages, informational types other than echo).
    DropIcmp6Unsupported = 59 => "drop_icmp6_unsupported", true;
    // IPv6 through GWLB endpoints (`gwlb6`): IPv6 inside GENEVE to an appliance (its bytes
    // the inner IPv6 packet's) and back (delivered: the IPv6 packet's).
    Gwlb6ToAppliance = 60 => "gwlb6_to_appliance", false;
    Gwlb6FromAppliance = 61 => "gwlb6_from_appliance", false;
    // Too big once encapsulated: answered with ICMPv6 Packet Too Big (as gwlb_frag_needed).
    GwlbPacketTooBig = 62 => "gwlb_packet_too_big", false;
    // The returned packet's inner destination MAC is unknown: the frame became a
    // Neighbour Solicitation for it (as gwlb_arp_probe).
    GwlbNsProbe = 63 => "gwlb_ns_probe", true;
    // Too big once encapsulated, and no larger than IPv6's minimum MTU (1280), which a
    // Packet Too Big cannot go below: the appliance port's MTU is under 1280 + 68.
    DropGwlbIpv6Mtu = 64 => "drop_gwlb_ipv6_mtu", true;
    // A flow slot was taken by another CPU's writer (an eviction, or a new entry over the
    // same key) while a path that forwards by it (established, full, GWLB, ICMP error)
    // read the entry: what it read may mix two entries or be another flow's, so the
    // frame, perhaps already rewritten, is dropped (`flowtable::Seen`).
    DropFlowChanged = 65 => "drop_flow_changed", true;
}

impl Reason {
    /// The kind a drop is counted as per endpoint (`EP_DROP_NAMES` index; 0 "other" for
    /// what no endpoint's own state explains).
    #[inline(always)]
    pub const fn endpoint_drop(self) -> usize {
        match self {
            Reason::DropSecurityGroup => 1,
            Reason::DropAcl => 2,
            Reason::DropNotConnected => 3,
            Reason::DropNotWhitelisted => 4,
            Reason::DropNoListener => 5,
            Reason::DropNoRoute | Reason::DropNoNeighbor | Reason::DropNoHealthyAppliance => 6,
            Reason::DropTtlExceeded | Reason::DropHopLimitExceeded => 7,
            Reason::GwlbFragNeeded | Reason::GwlbPacketTooBig | Reason::DropGwlbIpv6Mtu => 8,
            Reason::DropTruncatedEthernet
            | Reason::DropTruncatedIp
            | Reason::DropBadIpHeader
            | Reason::DropBadIpChecksum
            | Reason::DropTruncatedL4
            | Reason::DropFragment
            | Reason::DropGeneveMalformed
            | Reason::DropTruncatedIpv6
            | Reason::DropBadIpv6Header
            | Reason::DropIpv6ExtHeader
            | Reason::DropUdp6ZeroChecksum
            | Reason::DropBadIpv6Source => 9,
            Reason::DropSnatExhausted => 10,
            Reason::DropEndpointFlowLimit => 11,
            Reason::DropConntrackFull => 12,
            Reason::DropNoFlow | Reason::DropIcmpNoFlow | Reason::DropGwlbNoFlow => 13,
            Reason::DropUnsupportedProtocol
            | Reason::DropIcmpUnsupported
            | Reason::DropIcmp6Unsupported => 14,
            Reason::DropRedirectFailed => 15,
            _ => 0,
        }
    }
}

/// Size of the `PL_STATS` array.
pub const REASON_COUNT: u32 = 66;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_named_uniquely() {
        assert_eq!(Reason::ALL.len() as u32, REASON_COUNT);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(
                Reason::ALL
                    .iter()
                    .filter(|o| o.as_str() == r.as_str())
                    .count(),
                1
            );
        }
    }
}
