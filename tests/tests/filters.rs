//! Security groups and network ACLs in the data path, one semantic per test, through
//! BPF_PROG_TEST_RUN. Every frame that comes out (forwarded, or answered with XDP_TX) is
//! checked with etherparse: MACs, addresses, ports, TTL, the IPv4 and L4 checksums.

use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};
use privatelink_common::Reason;
use privatelink_tests::{
    frames::{
        CLIENT, CLIENT_MAC, ENI, LB, SNAT, arp_request, parse_checked, tcp_from_lb, tcp_to_eni,
    },
    lab::packet_state,
    testrun::{Harness, LB_MAC, XDP_DROP, XDP_REDIRECT, XDP_TX},
};

/// The lab's state with `groups` attached to ep-a, plus `extra` TOML (groups, ACLs).
fn state(groups: &[&str], extra: &str) -> String {
    let list = groups
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}\n{extra}",
        packet_state().replace(
            "name = \"web\"",
            &format!("name = \"web\"\nsecurity_groups = [{list}]")
        )
    )
}

fn sg(id: &str, rules: &[&str]) -> String {
    format!(
        "[[security_groups]]\nid = \"{id}\"\naccount = \"acct-a\"\nvpc = \"vpc-a\"\nrules = [\n{}\n]\n",
        rules.join(",\n")
    )
}

fn ingress(
    priority: u32,
    action: &str,
    protocol: &str,
    ports: Option<[u16; 2]>,
    cidr: &str,
) -> String {
    let ports = ports
        .map(|[a, b]| format!(", ports = [{a}, {b}]"))
        .unwrap_or_default();
    format!(
        "{{ direction = \"ingress\", priority = {priority}, action = \"{action}\", protocol = \"{protocol}\"{ports}, cidr = \"{cidr}\" }}"
    )
}

/// A SYN from the consumer side.
fn syn_to(h: &Harness, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 64240)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

/// A frame the program forwarded from the consumer `src`:`sport` to the ENI's port
/// `dport`, checked with etherparse: out of the provider-side interface to the load
/// balancer's MAC, from a SNAT address to the load balancer on the same port, TTL one
/// lower, both checksums valid, the payload untouched. Returns the SNAT address and port.
fn check_to_service(
    h: &Harness,
    out: &[u8],
    src: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> ([u8; 4], u16) {
    let p = parse_checked(out); // IPv4 and TCP checksums
    let from = format!("from {src:?} to port {dport}");
    assert_eq!(
        (p.eth_src, p.eth_dst),
        (h.provider.mac, LB_MAC),
        "{from}: provider side, to the load balancer"
    );
    assert!(
        SNAT.contains(&p.ip.source),
        "{from}: source {:?} not in the SNAT pool",
        p.ip.source
    );
    assert_eq!(p.ip.destination, LB, "{from}");
    assert_eq!(p.dport, dport, "{from}");
    assert_eq!(p.ip.time_to_live, 63, "{from}");
    assert_eq!(p.payload, payload, "{from}");
    (p.ip.source, p.sport)
}

/// A reply the program forwarded back to the client (`CLIENT`:`cport`), checked with
/// etherparse: out of the consumer-side interface to the client's MAC, from the ENI's
/// port 80, TTL one lower, both checksums valid, the payload untouched.
fn check_to_client(h: &Harness, out: &[u8], cport: u16, payload: &[u8]) {
    let p = parse_checked(out);
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (ENI, CLIENT));
    assert_eq!((p.sport, p.dport), (80, cport));
    assert_eq!(p.ip.time_to_live, 63);
    assert_eq!(p.payload, payload);
}

/// The verdict on a SYN from `src` to the ENI's port `dport`; a forwarded one is checked
/// with `check_to_service`.
fn verdict(h: &mut Harness, src: [u8; 4], dport: u16) -> u32 {
    let f = syn_to(h, src, ENI, 30000 + dport, dport);
    let (act, out) = h.run(h.consumer.ifindex, &f).unwrap();
    if act == XDP_REDIRECT {
        check_to_service(h, &out, src, dport, b"");
    }
    act
}

#[test]
fn no_matching_rule_drops() {
    let mut h = Harness::new(&state(
        &["sg-a"],
        &sg(
            "sg-a",
            &[&ingress(1, "accept", "tcp", Some([443, 443]), "0.0.0.0/0")],
        ),
    ))
    .unwrap();
    assert_eq!(verdict(&mut h, [10, 10, 2, 1], 80), XDP_DROP);
    assert_eq!(h.count(Reason::DropSecurityGroup), 1);
    assert_eq!(verdict(&mut h, [10, 10, 2, 1], 443), XDP_REDIRECT);
}

#[test]
fn priority_one_is_evaluated_first() {
    let rules = [
        &ingress(2, "drop", "all", None, "0.0.0.0/0"),
        &ingress(1, "accept", "tcp", Some([80, 80]), "10.10.2.0/24"),
    ];
    let mut h = Harness::new(&state(&["sg-a"], &sg("sg-a", &rules.map(String::as_str)))).unwrap();
    assert_eq!(
        verdict(&mut h, [10, 10, 2, 1], 80),
        XDP_REDIRECT,
        "priority 1 accept beats priority 2 drop"
    );
    assert_eq!(
        verdict(&mut h, [10, 10, 5, 5], 80),
        XDP_DROP,
        "outside the accepted range the drop applies"
    );
}

#[test]
fn at_equal_priority_drop_wins() {
    let rules = [
        &ingress(5, "accept", "tcp", Some([80, 80]), "10.10.0.0/16"),
        &ingress(5, "drop", "tcp", Some([80, 80]), "10.10.2.1/32"),
    ];
    let mut h = Harness::new(&state(&["sg-a"], &sg("sg-a", &rules.map(String::as_str)))).unwrap();
    assert_eq!(verdict(&mut h, [10, 10, 2, 1], 80), XDP_DROP);
    assert_eq!(verdict(&mut h, [10, 10, 2, 2], 80), XDP_REDIRECT);
}

#[test]
fn several_groups_are_merged() {
    let extra = sg(
        "sg-allow",
        &[&ingress(10, "accept", "tcp", None, "0.0.0.0/0")],
    ) + &sg(
        "sg-deny",
        &[&ingress(1, "drop", "all", None, "10.10.9.0/24")],
    );
    let mut h = Harness::new(&state(&["sg-allow", "sg-deny"], &extra)).unwrap();
    assert_eq!(verdict(&mut h, [10, 10, 2, 1], 80), XDP_REDIRECT);
    assert_eq!(
        verdict(&mut h, [10, 10, 9, 1], 80),
        XDP_DROP,
        "the other group's drop applies"
    );
}

fn egress(action: &str, protocol: &str, cidr: &str) -> String {
    format!(
        "{{ direction = \"egress\", priority = 1, action = \"{action}\", protocol = \"{protocol}\", cidr = \"{cidr}\" }}"
    )
}

#[test]
fn groups_are_stateful_replies_pass() {
    // Only ingress to port 80 is allowed, and an egress rule drops everything: replies of
    // an admitted flow still pass (stateful; egress rules do not filter)...
    let mut h = Harness::new(&state(
        &["sg-a"],
        &sg(
            "sg-a",
            &[
                &ingress(1, "accept", "tcp", Some([80, 80]), "10.10.2.0/24"),
                &egress("drop", "all", "0.0.0.0/0"),
            ],
        ),
    ))
    .unwrap();
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 41000, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let (snat, port) = check_to_service(&h, &out, CLIENT, 80, b"");
    let (act, out) = h
        .run(h.provider.ifindex, &tcp_from_lb(&h, snat, port, b"ok"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    check_to_client(&h, &out, 41000, b"ok");
    // ... and the flow's later packets too, both ways.
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 41000, false, b"GET /"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(
        check_to_service(&h, &out, CLIENT, 80, b"GET /"),
        (snat, port)
    );

    // ... but only because the flow was admitted: nothing from the provider side gets
    // through that is not a reply of a flow, even from the load balancer to the SNAT
    // address while the flow lives: not to another SNAT port, nor from another port.
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let mut from_81 = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4(LB, snat, 64)
        .tcp(81, port, 7000, 65000)
        .syn()
        .ack(1001)
        .write(&mut from_81, &[])
        .unwrap();
    for (what, f) in [
        ("another SNAT port", tcp_from_lb(&h, snat, other_port, b"")),
        ("from port 81", from_81),
    ] {
        let before = h.count(Reason::DropNoFlow);
        assert_eq!(
            h.run(h.provider.ifindex, &f).unwrap().0,
            XDP_DROP,
            "unsolicited, {what}"
        );
        assert_eq!(
            h.count(Reason::DropNoFlow),
            before + 1,
            "unsolicited, {what}"
        );
    }
    assert_eq!(h.count(Reason::DropSecurityGroup), 0);
}

#[test]
fn icmp_echo_is_filtered_too() {
    let mut h = Harness::new(&state(
        &["sg-a"],
        &sg("sg-a", &[&ingress(1, "accept", "tcp", None, "0.0.0.0/0")]),
    ))
    .unwrap();
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4([10, 10, 2, 1], ENI, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"x")
        .unwrap();
    assert_eq!(h.run(h.consumer.ifindex, &echo).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropSecurityGroup), 1);
    let mut h = Harness::new(&state(
        &["sg-a"],
        &sg("sg-a", &[&ingress(1, "accept", "icmp", None, "0.0.0.0/0")]),
    ))
    .unwrap();
    let (act, out) = h.run(h.consumer.ifindex, &echo).unwrap();
    assert_eq!(act, XDP_TX);
    // The echo reply, checked with etherparse: back to the client from the ENI.
    let p = parse_checked(&out); // IPv4 and ICMP checksums
    assert_eq!((p.eth_src, p.eth_dst), (h.consumer.mac, CLIENT_MAC));
    assert_eq!((p.ip.source, p.ip.destination), (ENI, [10, 10, 2, 1]));
    let s = SlicedPacket::from_ethernet(&out).unwrap();
    match s.transport {
        Some(TransportSlice::Icmpv4(i)) => {
            assert_eq!(
                i.icmp_type(),
                Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 1, seq: 1 })
            );
            assert_eq!(i.payload(), b"x");
        }
        other => panic!("not ICMP: {other:?}"),
    }
}

fn acl(ingress: &[&str], egress: &[&str]) -> String {
    let rule = |r: &&str| {
        let p: Vec<&str> = r.split_whitespace().collect();
        let ports = if p.len() > 3 {
            format!(", ports = [{}]", p[3].replace('-', ", "))
        } else {
            String::new()
        };
        format!(
            "{{ action = \"{}\", protocol = \"{}\", cidr = \"{}\"{ports} }}",
            p[0], p[1], p[2]
        )
    };
    format!(
        "[[acls]]\nid = \"acl-a\"\naccount = \"acct-a\"\nvpc = \"vpc-a\"\nvswitches = [\"vsw-a1\"]\ningress = [{}]\negress = [{}]\n",
        ingress.iter().map(rule).collect::<Vec<_>>().join(", "),
        egress.iter().map(rule).collect::<Vec<_>>().join(", ")
    )
}

#[test]
fn acl_is_ordered_first_match_and_comes_before_groups() {
    let extra = sg("sg-a", &[&ingress(1, "accept", "all", None, "0.0.0.0/0")])
        + &acl(
            &[
                "accept tcp 10.10.2.1/32 80-80",
                "drop all 0.0.0.0/0",
                "accept all 0.0.0.0/0",
            ],
            &["accept all 0.0.0.0/0"],
        );
    let mut h = Harness::new(&state(&["sg-a"], &extra)).unwrap();
    assert_eq!(
        verdict(&mut h, [10, 10, 2, 1], 80),
        XDP_REDIRECT,
        "first rule accepts"
    );
    assert_eq!(
        verdict(&mut h, [10, 10, 2, 2], 80),
        XDP_DROP,
        "second rule drops, the later accept is never reached"
    );
    assert_eq!(
        h.count(Reason::DropAcl),
        1,
        "dropped by the ACL, though the group accepts all"
    );
    assert_eq!(h.count(Reason::DropSecurityGroup), 0);
}

#[test]
fn acl_is_stateless_replies_need_an_egress_rule() {
    let extra = acl(&["accept all 0.0.0.0/0"], &["drop all 0.0.0.0/0"]);
    let mut h = Harness::new(&state(&[], &extra)).unwrap();
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 41100, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let (snat, port) = check_to_service(&h, &out, CLIENT, 80, b"");
    assert_eq!(
        h.run(h.provider.ifindex, &tcp_from_lb(&h, snat, port, b""))
            .unwrap()
            .0,
        XDP_DROP
    );
    assert_eq!(h.count(Reason::DropAcl), 1);
}

/// Rule changes apply to new flows (README: groups are checked on a flow's first packet,
/// so rule changes apply to new flows): after a change applied to the maps as the daemon
/// applies one, a new flow is judged by the new rules, while a flow admitted before goes
/// on, both ways, on its tuple. An ACL is checked on every packet: one added stops that
/// same flow's next packet.
#[test]
fn rule_changes_apply_to_new_flows() {
    let only = |port: u16| {
        sg(
            "sg-a",
            &[&ingress(
                1,
                "accept",
                "tcp",
                Some([port, port]),
                "10.10.2.0/24",
            )],
        )
    };
    let mut h = Harness::new(&state(&["sg-a"], &only(80))).unwrap();
    // Before: a flow to port 80 admitted and answered; port 443 refused.
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 42000, true, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    let (snat, port) = check_to_service(&h, &out, CLIENT, 80, b"");
    let (act, out) = h
        .run(h.provider.ifindex, &tcp_from_lb(&h, snat, port, b""))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    check_to_client(&h, &out, 42000, b"");
    assert_eq!(
        verdict(&mut h, CLIENT, 443),
        XDP_DROP,
        "443 before the change"
    );
    assert_eq!(h.count(Reason::DropSecurityGroup), 1);

    // The group now admits port 443 and no longer port 80.
    h.apply_state(&state(&["sg-a"], &only(443))).unwrap();
    assert_eq!(
        verdict(&mut h, CLIENT, 443),
        XDP_REDIRECT,
        "the SYN refused before is admitted by the new rule"
    );
    let new_flow = syn_to(&h, CLIENT, ENI, 42001, 80);
    assert_eq!(
        h.run(h.consumer.ifindex, &new_flow).unwrap().0,
        XDP_DROP,
        "a new flow to port 80 is judged by the new rule"
    );
    assert_eq!(h.count(Reason::DropSecurityGroup), 2);
    // The flow admitted under the old rule goes on, both ways, on its tuple.
    let (act, out) = h
        .run(h.consumer.ifindex, &tcp_to_eni(&h, 42000, false, b"GET /"))
        .unwrap();
    assert_eq!(
        act,
        XDP_REDIRECT,
        "the existing flow after the change: {:?}",
        h.active_stats()
    );
    assert_eq!(
        check_to_service(&h, &out, CLIENT, 80, b"GET /"),
        (snat, port)
    );
    let (act, out) = h
        .run(h.provider.ifindex, &tcp_from_lb(&h, snat, port, b"ok"))
        .unwrap();
    assert_eq!(act, XDP_REDIRECT);
    check_to_client(&h, &out, 42000, b"ok");
    assert_eq!(h.count(Reason::DropSecurityGroup), 2);

    // An ACL added on the ENI's vSwitch, dropping port 80 from the client: stateless, it
    // stops the same flow's next packet; the flow to 443 still passes.
    let acl = acl(
        &["drop tcp 10.10.2.1/32 80-80", "accept all 0.0.0.0/0"],
        &["accept all 0.0.0.0/0"],
    );
    h.apply_state(&state(&["sg-a"], &(only(443) + &acl)))
        .unwrap();
    assert_eq!(
        h.run(h.consumer.ifindex, &tcp_to_eni(&h, 42000, false, b"more"))
            .unwrap()
            .0,
        XDP_DROP,
        "the ACL applies to an existing flow"
    );
    assert_eq!(h.count(Reason::DropAcl), 1);
    assert_eq!(verdict(&mut h, CLIENT, 443), XDP_REDIRECT);
    assert_eq!(h.count(Reason::DropSecurityGroup), 2);
}

#[test]
fn rule_validation_names_the_field() {
    use privatelink_user::model::parse_state;
    let e = parse_state(&state(
        &["sg-a"],
        &sg("sg-a", &[&ingress(101, "accept", "tcp", None, "0.0.0.0/0")]),
    ))
    .unwrap_err();
    assert!(
        e.contains("security_groups[0].rules[0].priority: 101 is outside 1-100"),
        "{e}"
    );
    let e = parse_state(&state(
        &["sg-a"],
        &sg("sg-a", &[&ingress(0, "accept", "tcp", None, "0.0.0.0/0")]),
    ))
    .unwrap_err();
    assert!(e.contains("priority: 0 is outside 1-100"), "{e}");
    let e = parse_state(&state(
        &["sg-a"],
        &sg(
            "sg-a",
            &[&ingress(1, "accept", "tcp", Some([90, 80]), "0.0.0.0/0")],
        ),
    ))
    .unwrap_err();
    assert!(
        e.contains("security_groups[0].rules[0].ports: [90, 80] is upside down"),
        "{e}"
    );
    let e = parse_state(&state(&["sg-nope"], "")).unwrap_err();
    assert!(
        e.contains("endpoints[0].security_groups[0]: no security group"),
        "{e}"
    );
}

const GATEWAY_STATE: &str = r#"
[[services]]
id = "epsrv-oss"
account = "acct-b"
type = "gateway"
vpc = "vpc-b"
auto_accept = true
whitelist = ["acct-a"]
backends = [{ zone = "zone-a", address = "10.10.0.10" }]
snat = ["10.10.0.202"]
prefixes = ["100.64.10.0/24"]
listeners = [{ protocol = "tcp", port = 80 }]

[[endpoints]]
id = "ep-oss"
account = "acct-a"
vpc = "vpc-a"
service = "epsrv-oss"
connection = "connected"
gateway = "10.10.1.1"
policy = [{ action = "accept", protocol = "tcp", cidr = "100.64.10.5/32", ports = [80, 80] }]
"#;

/// A gateway endpoint keeps the destination, translates the source into the service's
/// SNAT pool, sends to the service VPC's next hop, and applies its policy.
#[test]
fn gateway_endpoint_keeps_the_destination_and_applies_its_policy() {
    let mut h = Harness::new(&format!("{}\n{GATEWAY_STATE}", packet_state())).unwrap();
    let syn = syn_to(&h, [10, 10, 2, 1], [100, 64, 10, 5], 43000, 80);
    let (act, out) = h.run(h.consumer.ifindex, &syn).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_checked(&out); // IPv4 and TCP checksums
    assert_eq!(
        (p.ip.source, p.ip.destination),
        ([10, 10, 0, 202], [100, 64, 10, 5])
    );
    assert_eq!(p.eth_dst, LB_MAC, "to the service VPC's next hop");

    let mut reply = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, h.provider.mac)
        .ipv4([100, 64, 10, 5], [10, 10, 0, 202], 64)
        .tcp(80, p.sport, 9, 65000)
        .syn()
        .ack(2)
        .write(&mut reply, &[])
        .unwrap();
    let (act, out) = h.run(h.provider.ifindex, &reply).unwrap();
    assert_eq!(act, XDP_REDIRECT, "{:?}", h.active_stats());
    let p = parse_checked(&out);
    assert_eq!(
        (p.ip.source, p.ip.destination),
        ([100, 64, 10, 5], [10, 10, 2, 1])
    );

    // Outside the policy.
    let other = syn_to(&h, [10, 10, 2, 1], [100, 64, 10, 6], 43001, 80);
    assert_eq!(h.run(h.consumer.ifindex, &other).unwrap().0, XDP_DROP);
    assert_eq!(h.count(Reason::DropSecurityGroup), 1);

    // The route target answers ARP.
    let arp = arp_request(CLIENT_MAC, [10, 10, 2, 1], [10, 10, 1, 1]);
    let (act, out) = h.run(h.consumer.ifindex, &arp).unwrap();
    assert_eq!(act, XDP_TX);
    // The ARP reply, field by field (RFC 826; etherparse does not decode ARP).
    let mut want = CLIENT_MAC.to_vec();
    want.extend_from_slice(&h.consumer.mac);
    want.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    want.extend_from_slice(&h.consumer.mac);
    want.extend_from_slice(&[10, 10, 1, 1]);
    want.extend_from_slice(&CLIENT_MAC);
    want.extend_from_slice(&[10, 10, 2, 1]);
    assert_eq!(
        &out[..42],
        &want[..],
        "is-at for the gateway address, to the asker"
    );
}
