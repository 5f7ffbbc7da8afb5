use super::*;
use crate::{
    desired::Unhealthy,
    model::{GWLB_TEST_STATE, numeric_id},
};

const LAB: &str = include_str!("../../../tests/lab.toml");

fn gwlb_state() -> State {
    crate::model::parse_state(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap()
}

#[test]
fn appliances_show_the_health_view_to_the_owner() {
    let s = gwlb_state();
    let down: Unhealthy = [(numeric_id("vpc-s"), [10, 20, 1, 10])].into();
    let owner = Caller::Account("acct-b".into());
    let v = list_appliances(&s, &owner, "gwlb-s", &down).unwrap();
    assert_eq!(v.len(), 3);
    let healthy: Vec<(String, bool)> = v
        .iter()
        .map(|a| (a.address.to_string(), a.healthy))
        .collect();
    assert_eq!(
        healthy,
        [
            ("10.20.1.11".to_string(), true),
            ("10.20.1.10".to_string(), false),
            ("10.20.2.10".to_string(), true)
        ]
    );
    assert_eq!(v[2].zone, "zone-b");
    assert!(list_appliances(&s, &Caller::Admin, "gwlb-s", &down).is_ok());
    let e = list_appliances(&s, &Caller::Account("acct-a".into()), "gwlb-s", &down);
    assert_eq!(e.unwrap_err().kind, ErrorKind::Forbidden);
    let e = list_appliances(&s, &owner, "nope", &down).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = list_appliances(&s, &owner, "epsrv-b", &down).unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::Invalid, Some("service"))
    );
}

#[test]
fn gwlb_services_and_endpoints_are_created_from_requests() {
    let mut s: State = toml::from_str(LAB).unwrap();
    let mut with_vpcs: State = toml::from_str(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap();
    with_vpcs.services.retain(|x| x.id != "gwlb-s");
    with_vpcs.endpoints.retain(|e| e.routes.is_empty());
    s.vpcs = with_vpcs.vpcs;
    let req: NewService = serde_json::from_value(serde_json::json!({
        "id": "gwlb-s", "vpc": "vpc-s", "type": "gwlb", "whitelist": ["acct-a"],
        "backends": [{"zone": "zone-a", "address": "10.20.1.10"}],
        "gwlb": {"address": "10.20.0.5", "stickiness": "two_tuple", "failover": "rebalance",
                 "health": {"port": 8080, "probe": {"kind": "http", "path": "/healthz"}}},
    }))
    .unwrap();
    let svc = create_service(
        &mut s,
        &Caller::Account("acct-b".into()),
        req,
        &crate::model::Naming::default(),
    )
    .unwrap();
    assert!(svc.snat.is_empty());
    assert_eq!(svc.gwlb.as_ref().unwrap().health.port, 8080);
    let req: NewEndpoint = serde_json::from_value(serde_json::json!({
        "id": "ep-g", "vpc": "vpc-c", "service": "gwlb-s",
        "zones": [{"vswitch": "vsw-c1", "eni": "10.30.1.5"}], "routes": ["10.30.9.0/24"],
    }))
    .unwrap();
    let ep = create_endpoint(&mut s, &Caller::Account("acct-a".into()), req).unwrap();
    assert_eq!(
        ep.routes,
        vec!["10.30.9.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    s.validate().unwrap();
    let p: EndpointPatch =
        serde_json::from_value(serde_json::json!({"routes": ["10.30.8.0/24"]})).unwrap();
    let ep = update_endpoint(&mut s, &Caller::Account("acct-a".into()), "ep-g", p).unwrap();
    assert_eq!(
        ep.routes,
        vec!["10.30.8.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    s.validate().unwrap();
}

// Dual stack (issue 17).

fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn acct(a: &str) -> Caller {
    Caller::Account(a.into())
}

/// The field and kind of an operation's error.
fn refused<T: std::fmt::Debug>(r: R<T>) -> (ErrorKind, String) {
    let e = r.unwrap_err();
    (e.kind, e.field.unwrap_or_default())
}

#[test]
fn dualstack_endpoints_get_ipv6_enis_given_or_allocated() {
    let mut s = crate::model::dual_stack_lab();
    let a = acct("acct-a");
    // Allocated: the vSwitch's lowest free IPv6 address (::0 is reserved).
    let ep = create_endpoint(
        &mut s,
        &a,
        json(
            serde_json::json!({"id": "ep-x", "vpc": "vpc-a", "service": "epsrv-b",
            "ip_version": "dualstack", "zones": [{"vswitch": "vsw-a1"}]}),
        ),
    )
    .unwrap();
    assert!(ep.ip_version.is_dualstack());
    assert_eq!(ep.zones[0].eni6, Some("fd00:a:0:1::1".parse().unwrap()));
    s.validate().unwrap();
    // Given.
    let ep = create_endpoint(
        &mut s,
        &a,
        json(serde_json::json!({"id": "ep-y", "vpc": "vpc-a", "service": "epsrv-b",
            "ip_version": "dualstack", "zones": [{"vswitch": "vsw-a1", "eni6": "fd00:a:0:1::abc"}]})),
    )
    .unwrap();
    assert_eq!(ep.zones[0].eni6, Some("fd00:a:0:1::abc".parse().unwrap()));
    s.validate().unwrap();
    // Refused: reserved, outside, without an IPv6 vSwitch, on an ipv4 endpoint.
    for (body, want) in [
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-b", "ip_version": "dualstack",
                "zones": [{"vswitch": "vsw-a1", "eni6": "fd00:a:0:1:ffff:ffff:ffff:ffff"}]}),
            (ErrorKind::Invalid, "zones[0].eni6"),
        ),
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-b", "ip_version": "dualstack",
                "zones": [{"vswitch": "vsw-a1", "eni6": "fd00:a:0:7::5"}]}),
            (ErrorKind::Invalid, "zones[0].eni6"),
        ),
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-b", "ip_version": "dualstack",
                "zones": [{"vswitch": "vsw-a2"}]}),
            (ErrorKind::Invalid, "zones[0].vswitch"),
        ),
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a1", "eni6": "fd00:a:0:1::5"}]}),
            (ErrorKind::Invalid, "zones[0].eni6"),
        ),
    ] {
        let got = refused(create_endpoint(&mut s, &a, json(body.clone())));
        assert_eq!((got.0, got.1.as_str()), want, "{body}");
    }
    // A zone added to a dualstack endpoint gets its IPv6 address too.
    s.vpcs[0].vswitches[1].ipv6_cidr = Some("fd00:a:0:2::/64".parse().unwrap());
    s.endpoints.retain(|e| e.id == "ep-a");
    let ep = add_zone(
        &mut s,
        &a,
        "ep-a",
        json(serde_json::json!({"vswitch": "vsw-a2"})),
    );
    // vsw-a2 is zone-a too: the model refuses a second ENI in a zone; the IPv6 part was
    // placed before that rule is checked at commit.
    let ep = ep.unwrap();
    assert_eq!(ep.zones[1].eni6, Some("fd00:a:0:2::1".parse().unwrap()));
}

#[test]
fn an_endpoint_switches_ip_version_and_a_service_refuses_to_drop_ipv6_under_it() {
    let mut s = crate::model::dual_stack_lab();
    let a = acct("acct-a");
    let b = acct("acct-b");
    // A dualstack endpoint needs a dualstack service.
    let mut v4 = s.clone();
    v4.endpoints.clear();
    let p: ServicePatch = json(serde_json::json!({"ip_version": "ipv4"}));
    let svc = update_service(&mut v4, &b, "epsrv-b", p, &crate::model::Naming::default()).unwrap();
    assert!(svc.snat6.is_empty() && svc.backends.iter().all(|x| x.address6.is_none()));
    v4.validate().unwrap();
    let got = refused(create_endpoint(
        &mut v4,
        &a,
        json(
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-b",
            "ip_version": "dualstack", "zones": [{"vswitch": "vsw-a1"}]}),
        ),
    ));
    assert_eq!(got, (ErrorKind::Invalid, "ip_version".into()));
    // While ep-a is dualstack its service stays dualstack.
    let p: ServicePatch = json(serde_json::json!({"ip_version": "ipv4"}));
    let got = refused(update_service(
        &mut s,
        &b,
        "epsrv-b",
        p,
        &crate::model::Naming::default(),
    ));
    assert_eq!(got, (ErrorKind::Conflict, "ip_version".into()));
    // ep-a to ipv4: its IPv6 address goes; back to dualstack: allocated again.
    let p: EndpointPatch = json(serde_json::json!({"ip_version": "ipv4"}));
    let ep = update_endpoint(&mut s, &a, "ep-a", p).unwrap();
    assert!(ep.ip_version.is_ipv4());
    assert_eq!(ep.zones[0].eni6, None);
    assert_eq!(
        ep.zones[0].eni,
        "10.10.1.100".parse::<std::net::Ipv4Addr>().unwrap()
    );
    s.validate().unwrap();
    let p: EndpointPatch = json(serde_json::json!({"ip_version": "dualstack"}));
    let ep = update_endpoint(&mut s, &a, "ep-a", p).unwrap();
    assert_eq!(ep.zones[0].eni6, Some("fd00:a:0:1::1".parse().unwrap()));
    s.validate().unwrap();
    // Zones given again as they are keep their IPv6 address.
    let p: EndpointPatch = json(serde_json::json!({"zones": [{"vswitch": "vsw-a1"}]}));
    let ep = update_endpoint(&mut s, &a, "ep-a", p).unwrap();
    assert_eq!(ep.zones[0].eni6, Some("fd00:a:0:1::1".parse().unwrap()));
    // Now nothing uses its IPv6: the service may become ipv4 once ep-a is.
    let p: EndpointPatch = json(serde_json::json!({"ip_version": "ipv4"}));
    update_endpoint(&mut s, &a, "ep-a", p).unwrap();
    let p: ServicePatch = json(serde_json::json!({"ip_version": "ipv4"}));
    update_service(&mut s, &b, "epsrv-b", p, &crate::model::Naming::default()).unwrap();
    s.validate().unwrap();
}

#[test]
fn dualstack_gateway_endpoints_get_an_ipv6_route_target_given_or_allocated() {
    let mut s = crate::model::dual_stack_lab();
    let (a, b) = (acct("acct-a"), acct("acct-b"));
    let naming = crate::model::Naming::default();
    let svc = create_service(
        &mut s,
        &b,
        json(
            serde_json::json!({"id": "epsrv-gw", "vpc": "vpc-b", "type": "gateway",
            "ip_version": "dualstack", "whitelist": ["acct-a"], "auto_accept": true,
            "backends": [{"zone": "zone-a", "address": "10.10.0.10", "address6": "fd00:b::10"}],
            "snat": ["10.10.0.202"], "snat6": ["fd00:b::202"],
            "prefixes": ["100.64.10.0/24", "fd00:64::/48"],
            "listeners": [{"protocol": "tcp", "port": 443}]}),
        ),
        &naming,
    )
    .unwrap();
    assert_eq!(svc.prefixes.len(), 2);
    s.validate().unwrap();
    // Allocated: the lowest free IPv6 address of the vSwitch holding the IPv4 target.
    let ep = create_endpoint(
        &mut s,
        &a,
        json(
            serde_json::json!({"id": "ep-gw", "vpc": "vpc-a", "service": "epsrv-gw",
            "ip_version": "dualstack", "gateway": "10.10.1.1",
            "policy": [{"action": "accept", "protocol": "tcp", "cidr": "fd00:64:0:1::/64"}]}),
        ),
    )
    .unwrap();
    assert_eq!(ep.gateway6, Some("fd00:a:0:1::1".parse().unwrap()));
    s.validate().unwrap();
    // Given.
    let mut given = s.clone();
    given.endpoints.retain(|e| e.id != "ep-gw");
    let ep = create_endpoint(
        &mut given,
        &a,
        json(
            serde_json::json!({"id": "ep-gw", "vpc": "vpc-a", "service": "epsrv-gw",
            "ip_version": "dualstack", "gateway": "10.10.1.1", "gateway6": "fd00:a:0:1::abc"}),
        ),
    )
    .unwrap();
    assert_eq!(ep.gateway6, Some("fd00:a:0:1::abc".parse().unwrap()));
    given.validate().unwrap();
    // Refused, on `gateway6`: on an ipv4 endpoint, on an interface endpoint, and without
    // an IPv6 range where the IPv4 target is.
    for (body, want) in [
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-gw",
                "gateway": "10.10.1.2", "gateway6": "fd00:a:0:1::2"}),
            ErrorKind::Invalid,
        ),
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a1"}], "gateway6": "fd00:a:0:1::2"}),
            ErrorKind::Invalid,
        ),
        (
            serde_json::json!({"id": "ep-z", "vpc": "vpc-a", "service": "epsrv-gw",
                "ip_version": "dualstack", "gateway": "10.10.2.1"}),
            ErrorKind::Invalid,
        ),
    ] {
        let got = refused(create_endpoint(&mut s.clone(), &a, json(body.clone())));
        assert_eq!((got.0, got.1.as_str()), (want, "gateway6"), "{body}");
    }
    // While ep-gw is dualstack its service stays dualstack.
    let p: ServicePatch = json(serde_json::json!({"ip_version": "ipv4"}));
    let got = refused(update_service(&mut s, &b, "epsrv-gw", p, &naming));
    assert_eq!(got, (ErrorKind::Conflict, "ip_version".into()));
    // To ipv4 (its IPv6 rule gone first: it would judge nothing), the route target goes;
    // back to dualstack, one is allocated again.
    s.endpoints
        .iter_mut()
        .find(|e| e.id == "ep-gw")
        .unwrap()
        .policy
        .clear();
    let p: EndpointPatch = json(serde_json::json!({"ip_version": "ipv4"}));
    let ep = update_endpoint(&mut s, &a, "ep-gw", p).unwrap();
    assert_eq!(
        (ep.ip_version, ep.gateway6),
        (crate::model::IpVersion::Ipv4, None)
    );
    s.validate().unwrap();
    let p: EndpointPatch = json(serde_json::json!({"ip_version": "dualstack"}));
    let ep = update_endpoint(&mut s, &a, "ep-gw", p).unwrap();
    assert_eq!(ep.gateway6, Some("fd00:a:0:1::1".parse().unwrap()));
    s.validate().unwrap();
    // Once ipv4 again, the service may become ipv4: its IPv6 prefix goes with it.
    let p: EndpointPatch = json(serde_json::json!({"ip_version": "ipv4"}));
    update_endpoint(&mut s, &a, "ep-gw", p).unwrap();
    let p: ServicePatch = json(serde_json::json!({"ip_version": "ipv4"}));
    let svc = update_service(&mut s, &b, "epsrv-gw", p, &naming).unwrap();
    assert_eq!(
        svc.prefixes,
        vec!["100.64.10.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    s.validate().unwrap();
}
