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
            /// Whether this verdict drops the frame.
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
            Reason::DropTtlExceeded => 7,
            Reason::GwlbFragNeeded => 8,
            Reason::DropTruncatedEthernet
            | Reason::DropTruncatedIp
            | Reason::DropBadIpHeader
            | Reason::DropBadIpChecksum
            | Reason::DropTruncatedL4
            | Reason::DropFragment
            | Reason::DropGeneveMalformed => 9,
            Reason::DropSnatExhausted => 10,
            Reason::DropEndpointFlowLimit => 11,
            Reason::DropConntrackFull => 12,
            Reason::DropNoFlow | Reason::DropIcmpNoFlow | Reason::DropGwlbNoFlow => 13,
            Reason::DropUnsupportedProtocol | Reason::DropIcmpUnsupported => 14,
            Reason::DropRedirectFailed => 15,
            _ => 0,
        }
    }
}

/// Size of the `PL_STATS` array.
pub const REASON_COUNT: u32 = 45;

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
