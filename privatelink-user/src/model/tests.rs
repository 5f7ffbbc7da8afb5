use super::*;

pub const LAB: &str = include_str!("../../../tests/lab.toml");

#[test]
fn lab_state_is_valid() {
    let s = parse_state(LAB).unwrap();
    assert_eq!(s.endpoints.len(), 1);
}

fn broken(f: impl FnOnce(&mut State)) -> String {
    let mut s: State = toml::from_str(LAB).unwrap();
    f(&mut s);
    s.validate().unwrap_err().to_string()
}

#[test]
fn errors_name_the_field() {
    let e = broken(|s| s.endpoints[0].zones[0].eni = "10.10.9.9".parse().unwrap());
    assert!(
        e.starts_with("endpoints[0].zones[0].eni: 10.10.9.9 is not a usable address"),
        "{e}"
    );
    let e = broken(|s| s.endpoints[0].service = "nope".into());
    assert!(
        e.starts_with("endpoints[0].service: unknown endpoint service"),
        "{e}"
    );
    let e = broken(|s| s.services[0].snat_ports = [2000, 1000]);
    assert!(e.starts_with("services[0].snat_ports:"), "{e}");
    let e = broken(|s| s.services[0].snat = vec!["192.168.0.1".parse().unwrap()]);
    assert!(e.starts_with("services[0].snat[0]:"), "{e}");
    let e = broken(|s| s.endpoints[0].security_groups = (0..6).map(|i| format!("sg{i}")).collect());
    assert!(e.starts_with("endpoints[0].security_groups:"), "{e}");
    let e =
        broken(|s| s.endpoints[0].tags = (0..21).map(|i| (format!("k{i}"), "v".into())).collect());
    assert!(e.starts_with("endpoints[0].tags:"), "{e}");
    let e = broken(|s| s.vpcs[1].interface = s.vpcs[0].interface.clone());
    assert!(e.starts_with("vpcs[1].interface:"), "{e}");
    let e = broken(|s| {
        let dup = s.endpoints[0].clone();
        s.endpoints.push(dup)
    });
    assert!(e.starts_with("endpoints[1].id: duplicate id"), "{e}");
}

#[test]
fn addresses_and_capacity_are_checked() {
    // A load balancer address may not be another service's SNAT address.
    let e = broken(|s| {
        let mut other = s.services[0].clone();
        other.id = "epsrv-c".into();
        other.snat = vec!["10.10.0.202".parse().unwrap()];
        other.backends[0].address = "10.10.0.200".parse().unwrap();
        s.services.push(other);
    });
    assert!(e.contains("is a load balancer address"), "{e}");
    // More services than the data path can hold.
    let e = broken(|s| {
        let svc = s.services[0].clone();
        s.services = (0..=privatelink_common::MAX_SERVICES)
            .map(|i| EndpointService {
                id: format!("s{i}"),
                ..svc.clone()
            })
            .collect();
    });
    assert!(e.starts_with("services: 4097 would exceed"), "{e}");
}

#[test]
fn gateway_endpoints_are_checked() {
    let gw_service = |s: &mut State| {
        let mut g = s.services[0].clone();
        g.id = "epsrv-oss".into();
        g.kind = ServiceType::Gateway;
        g.snat = vec!["10.10.0.202".parse().unwrap()];
        g.prefixes = vec!["100.64.10.0/24".parse().unwrap()];
        s.services.push(g);
        let mut e = s.endpoints[0].clone();
        e.id = "ep-oss".into();
        e.service = "epsrv-oss".into();
        e.zones.clear();
        e.gateway = Some("10.10.1.1".parse().unwrap());
        s.endpoints.push(e);
    };
    let mut ok: State = toml::from_str(LAB).unwrap();
    gw_service(&mut ok);
    ok.validate().unwrap();
    let e = broken(|s| {
        gw_service(s);
        let mut twice = s.endpoints[1].clone();
        twice.id = "ep-oss2".into();
        twice.gateway = Some("10.10.1.2".parse().unwrap());
        s.endpoints.push(twice);
    });
    assert!(
        e.contains("is already routed to gateway endpoint ep-oss"),
        "{e}"
    );
    let e = broken(|s| {
        gw_service(s);
        s.endpoints[1].security_groups = vec!["sg".into()];
    });
    assert!(
        e.starts_with("endpoints[1].security_groups: a gateway endpoint"),
        "{e}"
    );
    let e = broken(|s| {
        gw_service(s);
        s.endpoints[1].gateway = Some("10.10.0.200".parse().unwrap());
    });
    assert!(e.starts_with("endpoints[1].gateway"), "{e}");
}

#[test]
fn syntax_errors_name_the_key() {
    let e = parse_state(&LAB.replace("cidr = \"10.10.0.0/16\"", "cidr = \"10.10.0.0/33\""))
        .unwrap_err();
    assert!(e.contains("cidr"), "{e}");
    let e = parse_state(&format!("{LAB}\n[[endpoints]]\nid = 3\n")).unwrap_err();
    assert!(e.contains("id"), "{e}");
}

#[test]
fn reserved_addresses_are_the_first_and_the_last_three() {
    let vsw = |cidr: &str| VSwitch {
        id: "v".into(),
        zone: "z".into(),
        cidr: cidr.parse().unwrap(),
        ipv6_cidr: None,
    };
    let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
    let v = vsw("192.168.1.0/24");
    let reserved: Vec<Ipv4Addr> = (0..=255u8)
        .map(|i| Ipv4Addr::new(192, 168, 1, i))
        .filter(|a| v.is_reserved(*a))
        .collect();
    assert_eq!(
        reserved,
        [
            "192.168.1.0",
            "192.168.1.253",
            "192.168.1.254",
            "192.168.1.255"
        ]
        .map(ip)
    );
    assert_eq!(v.lowest_free(&BTreeSet::new()), Some(ip("192.168.1.1")));
    let used = [ip("192.168.1.1"), ip("192.168.1.3")].into();
    assert_eq!(v.lowest_free(&used), Some(ip("192.168.1.2")));
    // A /29: 8 addresses, 4 reserved, 4 to allocate.
    let small = vsw("10.10.3.0/29");
    let mut used = BTreeSet::new();
    while let Some(a) = small.lowest_free(&used) {
        used.insert(a);
    }
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["10.10.3.1", "10.10.3.2", "10.10.3.3", "10.10.3.4"].map(ip)
    );
    // Too small to hold anything.
    assert_eq!(vsw("10.10.4.0/30").lowest_free(&BTreeSet::new()), None);
}

#[test]
fn grandfathered_endpoints_are_named() {
    let mut s: State = toml::from_str(LAB).unwrap();
    assert!(s.grandfathered().is_empty());
    s.endpoints[0].zones[0].eni = "10.10.1.254".parse().unwrap();
    s.vpcs[0].vswitches[0].zone = "zone-b".into();
    s.validate().unwrap();
    let g = s.grandfathered();
    assert_eq!(g.len(), 2, "{g:?}");
    assert!(
            g[0].starts_with("endpoints[0].zones[0].eni: endpoint ep-a's ENI 10.10.1.254 is a system-reserved address"),
            "{g:?}"
        );
    assert!(
            g[1].starts_with("endpoints[0].zones[0].vswitch: endpoint ep-a's ENI 10.10.1.254 is in zone zone-b, which service epsrv-b does not serve"),
            "{g:?}"
        );
}

#[test]
fn zone_affinity_prefers_same_zone() {
    let mut s: State = toml::from_str(LAB).unwrap();
    let svc = &mut s.services[0];
    svc.backends.push(Backend {
        zone: "zone-b".into(),
        address: "10.10.0.11".parse().unwrap(),
        address6: None,
    });
    assert_eq!(
        svc.backend_for_zone("zone-b").address.to_string(),
        "10.10.0.11"
    );
    assert_eq!(
        svc.backend_for_zone("zone-x").address.to_string(),
        "10.10.0.10"
    );
    svc.zone_affinity = false;
    assert_eq!(
        svc.backend_for_zone("zone-b").address.to_string(),
        "10.10.0.10"
    );
    let addrs = |v: Vec<&Backend>| v.iter().map(|b| b.address.to_string()).collect::<Vec<_>>();
    // Without affinity every zone's load balancers share the flows.
    assert_eq!(
        addrs(svc.backends_for_zone("zone-b")),
        ["10.10.0.10", "10.10.0.11"]
    );
    // Several in one zone: all of them, the zone's own only.
    svc.zone_affinity = true;
    svc.backends.push(Backend {
        zone: "zone-a".into(),
        address: "10.10.0.12".parse().unwrap(),
        address6: None,
    });
    assert_eq!(
        addrs(svc.backends_for_zone("zone-a")),
        ["10.10.0.10", "10.10.0.12"]
    );
    assert_eq!(addrs(svc.backends_for_zone("zone-b")), ["10.10.0.11"]);
    s.validate().unwrap();
    // The same address twice, or nine in a zone: refused.
    let mut twice = s.clone();
    twice.services[0].backends[2].address = "10.10.0.10".parse().unwrap();
    assert!(
        twice
            .validate()
            .unwrap_err()
            .message
            .contains("listed twice")
    );
    let mut nine = s.clone();
    for i in 0..7 {
        nine.services[0].backends.push(Backend {
            zone: "zone-a".into(),
            address: format!("10.10.0.{}", 20 + i).parse().unwrap(),
            address6: None,
        });
    }
    assert!(nine.validate().unwrap_err().message.contains("more than 8"));
}

fn gwlb_state() -> State {
    toml::from_str(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap()
}

fn gwlb_broken(f: impl FnOnce(&mut State)) -> String {
    let mut s = gwlb_state();
    f(&mut s);
    s.validate().unwrap_err().to_string()
}

/// A way to break the GWLB state, and how the error starts.
type Broken = (fn(&mut State), String);

/// A way to break an endpoint of the GWLB state (given its index), and how the error
/// starts.
type BrokenEndpoint = (fn(&mut State, usize), String);

fn svc(s: &mut State) -> &mut EndpointService {
    s.services.iter_mut().find(|x| x.id == "gwlb-s").unwrap()
}

fn gwlb(s: &mut State) -> &mut GwlbSettings {
    svc(s).gwlb.as_mut().unwrap()
}

fn ep(s: &mut State, id: &str) -> usize {
    s.endpoints.iter().position(|e| e.id == id).unwrap()
}

#[test]
fn gwlb_state_is_valid_and_round_trips() {
    let s = gwlb_state();
    s.validate().unwrap();
    let g = s.service("gwlb-s").unwrap().gwlb.clone().unwrap();
    assert_eq!(g.health.port, 8080);
    assert_eq!(g.health.healthy_threshold, 3, "defaults fill the rest");
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
    // Minimal settings: only the address.
    let mut m = s.clone();
    gwlb(&mut m).stickiness = Stickiness::default();
    let text = toml::to_string(&m).unwrap();
    assert_eq!(toml::from_str::<State>(&text).unwrap(), m);
    let min: GwlbSettings = toml::from_str("address = \"10.20.0.5\"").unwrap();
    assert_eq!(
        (
            min.stickiness,
            min.cross_zone,
            min.failover,
            min.health.port
        ),
        (Stickiness::FiveTuple, false, Failover::NoRebalance, 80)
    );
}

#[test]
fn gwlb_services_are_checked() {
    let i = 1; // services[1] is gwlb-s
    // Each broken state, and how its error starts.
    let cases: Vec<Broken> = vec![
        (
            |s| svc(s).gwlb = None,
            format!("services[{i}].gwlb: a GWLB service needs"),
        ),
        (
            |s| {
                s.services[0].gwlb = Some(GwlbSettings {
                    address: "10.10.0.5".parse().unwrap(),
                    stickiness: Stickiness::FiveTuple,
                    cross_zone: false,
                    failover: Failover::NoRebalance,
                    health: HealthSettings::default(),
                })
            },
            "services[0].gwlb: only GWLB services".to_string(),
        ),
        (
            |s| svc(s).backends.clear(),
            format!("services[{i}].backends: a GWLB service needs between 1 and 16"),
        ),
        (
            |s| {
                svc(s).backends = (0..17)
                    .map(|n| Backend {
                        zone: "zone-a".into(),
                        address: Ipv4Addr::new(10, 20, 1, 100 + n),
                        address6: None,
                    })
                    .collect()
            },
            format!("services[{i}].backends:"),
        ),
        (
            |s| svc(s).backends[1].address = "10.20.1.11".parse().unwrap(),
            format!("services[{i}].backends[1].address: appliance 10.20.1.11 is listed twice"),
        ),
        (
            |s| svc(s).backends[0].address = "10.21.0.1".parse().unwrap(),
            format!(
                "services[{i}].backends[0].address: appliance 10.21.0.1 is not a usable address"
            ),
        ),
        (
            |s| svc(s).backends[0].zone = "zone-x".into(),
            format!("services[{i}].backends[0].zone: VPC vpc-s has no vSwitch in zone \"zone-x\""),
        ),
        (
            |s| svc(s).backends[2].address = "10.20.0.5".parse().unwrap(),
            format!("services[{i}].backends[2].address: 10.20.0.5 is the GWLB's own address"),
        ),
        (
            |s| gwlb(s).address = "10.21.0.5".parse().unwrap(),
            format!("services[{i}].gwlb.address:"),
        ),
        (
            |s| svc(s).snat = vec!["10.20.0.200".parse().unwrap()],
            format!("services[{i}].snat: a GWLB service has no SNAT"),
        ),
        (
            |s| svc(s).prefixes = vec!["100.64.0.0/24".parse().unwrap()],
            format!("services[{i}].prefixes: a GWLB service has no prefixes"),
        ),
        (
            |s| gwlb(s).health.interval_ms = 10,
            format!("services[{i}].gwlb.health.interval_ms:"),
        ),
        (
            |s| gwlb(s).health.timeout_ms = 5,
            format!("services[{i}].gwlb.health.timeout_ms:"),
        ),
        (
            |s| gwlb(s).health.healthy_threshold = 0,
            format!("services[{i}].gwlb.health.healthy_threshold:"),
        ),
        (
            |s| gwlb(s).health.unhealthy_threshold = 11,
            format!("services[{i}].gwlb.health.unhealthy_threshold:"),
        ),
        (
            |s| {
                gwlb(s).health.probe = crate::health::Probe::Http {
                    path: "no-slash".into(),
                }
            },
            format!("services[{i}].gwlb.health.probe.path:"),
        ),
        (
            |s| gwlb(s).health.port = 0,
            format!("services[{i}].gwlb.health.port:"),
        ),
    ];
    for (broken, start) in cases {
        let e = gwlb_broken(broken);
        assert!(e.starts_with(&start), "{e}");
    }
}

#[test]
fn gwlb_addresses_do_not_collide() {
    // A second GWLB service in the same VPC may not reuse an appliance or the address.
    let second = |s: &mut State| {
        let mut o = svc(s).clone();
        o.id = "gwlb-t".into();
        o.backends = vec![Backend {
            zone: "zone-b".into(),
            address: "10.20.2.20".parse().unwrap(),
            address6: None,
        }];
        o.gwlb.as_mut().unwrap().address = "10.20.0.6".parse().unwrap();
        s.services.push(o);
    };
    let mut ok = gwlb_state();
    second(&mut ok);
    ok.validate().unwrap();
    let e = gwlb_broken(|s| {
        second(s);
        s.services[2].backends[0].address = "10.20.1.10".parse().unwrap();
    });
    assert!(
        e.contains("10.20.1.10 is a GWLB appliance of service gwlb-t"),
        "{e}"
    );
    let e = gwlb_broken(|s| {
        second(s);
        s.services[2].gwlb.as_mut().unwrap().address = "10.20.0.5".parse().unwrap();
    });
    assert!(
        e.contains("10.20.0.5 is a GWLB address of service gwlb-t"),
        "{e}"
    );
    // An interface service's SNAT address in that VPC may not be one either.
    // An interface service in the appliance VPC with this load balancer and SNAT.
    let interface_in_vpc_s = |s: &mut State, lb: &str, snat: &str| {
        let mut o = s.services[0].clone();
        o.id = "epsrv-s".into();
        o.vpc = "vpc-s".into();
        o.backends = vec![Backend {
            zone: "zone-a".into(),
            address: lb.parse().unwrap(),
            address6: None,
        }];
        o.snat = vec![snat.parse().unwrap()];
        s.services.push(o);
    };
    let e = gwlb_broken(|s| interface_in_vpc_s(s, "10.20.1.50", "10.20.0.5"));
    assert!(
        e.contains("snat[0]: 10.20.0.5 is a GWLB address in VPC vpc-s"),
        "{e}"
    );
    // Nor its load balancer an appliance (reported at the GWLB service, which comes
    // first).
    let e = gwlb_broken(|s| interface_in_vpc_s(s, "10.20.1.10", "10.20.0.200"));
    assert!(
        e.contains("backends[1].address: 10.20.1.10 is a load balancer address of service epsrv-s"),
        "{e}"
    );
    // An ENI in the service VPC may not take an appliance's address.
    let e = gwlb_broken(|s| {
        let mut o = s.endpoints[0].clone();
        o.id = "ep-s".into();
        o.account = "acct-b".into();
        o.vpc = "vpc-s".into();
        o.zones = vec![EndpointZone {
            vswitch: "vsw-s1".into(),
            eni: "10.20.1.10".parse().unwrap(),
            eni6: None,
        }];
        s.endpoints.push(o);
    });
    assert!(
        e.contains("10.20.1.10 is already in use in VPC vpc-s"),
        "{e}"
    );
}

#[test]
fn gwlb_endpoints_are_checked() {
    let mut s = gwlb_state();
    let g1 = ep(&mut s, "ep-g1");
    let f = format!("endpoints[{g1}]");
    // Each way to break endpoint `g1` (given its index), and how the error starts.
    let cases: Vec<BrokenEndpoint> = vec![
        (
            |s, g1| s.endpoints[g1].zones.clear(),
            format!("{f}.zones: a GWLB endpoint has exactly one ENI"),
        ),
        (
            |s, g1| {
                s.endpoints[g1].zones.push(EndpointZone {
                    vswitch: "vsw-c2".into(),
                    eni: "10.30.2.6".parse().unwrap(),
                    eni6: None,
                })
            },
            format!("{f}.zones:"),
        ),
        (
            |s, g1| s.endpoints[g1].routes.clear(),
            format!("{f}.routes: a GWLB endpoint needs between 1 and 64 routes"),
        ),
        (
            |s, g1| {
                s.endpoints[g1].routes = (0..65)
                    .map(|n| format!("172.16.{n}.0/24").parse().unwrap())
                    .collect()
            },
            format!("{f}.routes:"),
        ),
        (
            |s, g1| s.endpoints[g1].routes[1] = "10.30.0.0/16".parse().unwrap(),
            format!("{f}.routes[1]: 10.30.0.0/16 contains the endpoint's own ENI 10.30.1.5"),
        ),
        (
            |s, g1| s.endpoints[g1].routes[0] = "10.30.9.1/24".parse().unwrap(),
            format!("{f}.routes[0]: 10.30.9.1/24 has host bits set"),
        ),
        (
            |s, g1| s.endpoints[g1].gateway = Some("10.30.1.1".parse().unwrap()),
            format!("{f}.gateway: a GWLB endpoint has no gateway"),
        ),
        (
            |s, g1| {
                s.endpoints[g1].policy = vec![AclRule {
                    action: RuleAction::Accept,
                    protocol: Protocol::All,
                    ports: None,
                    cidr: "0.0.0.0/0".parse().unwrap(),
                }]
            },
            format!("{f}.policy: a GWLB endpoint has no policy"),
        ),
        // The ENI is checked like any other: in a vSwitch, not taken.
        (
            |s, g1| s.endpoints[g1].zones[0].eni = "10.30.2.5".parse().unwrap(),
            format!("{f}.zones[0].eni: 10.30.2.5 is not a usable address"),
        ),
        // Routes only for GWLB endpoints.
        (
            |s, _| s.endpoints[0].routes = vec!["172.16.0.0/24".parse().unwrap()],
            "endpoints[0].routes: only endpoints of GWLB services have routes".to_string(),
        ),
    ];
    for (broken, start) in cases {
        let e = gwlb_broken(|s| broken(s, g1));
        assert!(e.starts_with(&start), "{e}");
    }
    let e = gwlb_broken(|s| s.endpoints[g1].security_groups = vec!["sg".into()]);
    assert_eq!(
        e,
        format!(
            "{f}.security_groups: a GWLB endpoint is not guarded by security groups: its appliances decide what passes"
        )
    );
    let e = gwlb_broken(|s| {
        let g2 = s.endpoints.iter().position(|e| e.id == "ep-g2").unwrap();
        s.endpoints[g2].zones[0] = s.endpoints[g1].zones[0].clone();
    });
    assert!(
        e.contains("10.30.1.5 is already in use in VPC vpc-c"),
        "{e}"
    );
}

#[test]
fn routes_are_unique_per_vpc_across_gateway_and_gwlb_endpoints() {
    let mut s = gwlb_state();
    let g2 = ep(&mut s, "ep-g2");
    let e = gwlb_broken(|s| s.endpoints[g2].routes.push("10.30.9.0/24".parse().unwrap()));
    assert_eq!(
        e,
        format!(
            "endpoints[{g2}].routes[1]: 10.30.9.0/24 is already routed to GWLB endpoint ep-g1 in VPC vpc-c"
        )
    );
    // The same prefix in another VPC is another route.
    let mut ok = gwlb_state();
    let mut other = ok.endpoints[g2].clone();
    other.id = "ep-g3".into();
    other.vpc = "vpc-a".into();
    other.zones = vec![EndpointZone {
        vswitch: "vsw-a2".into(),
        eni: "10.10.2.5".parse().unwrap(),
        eni6: None,
    }];
    other.routes = vec!["10.30.9.0/24".parse().unwrap()];
    ok.endpoints.push(other);
    ok.validate().unwrap();
    // A gateway endpoint's prefix taken by a GWLB route.
    let e = gwlb_broken(|s| {
        let mut g = s.services[0].clone();
        g.id = "epsrv-oss".into();
        g.kind = ServiceType::Gateway;
        g.snat = vec!["10.10.0.202".parse().unwrap()];
        g.prefixes = vec!["192.168.0.0/16".parse().unwrap()];
        s.services.push(g);
        let mut e = s.endpoints[0].clone();
        e.id = "ep-oss".into();
        e.vpc = "vpc-c".into();
        e.service = "epsrv-oss".into();
        e.zones.clear();
        e.gateway = Some("10.30.1.1".parse().unwrap());
        s.endpoints.push(e);
    });
    assert!(
        e.contains("192.168.0.0/16 is already routed to GWLB endpoint ep-g1 in VPC vpc-c"),
        "{e}"
    );
}

#[test]
fn gwlb_routes_count_against_the_route_map() {
    let e = gwlb_broken(|s| {
        let mut g = s
            .endpoints
            .iter()
            .find(|e| e.id == "ep-g1")
            .unwrap()
            .clone();
        g.routes = vec!["172.16.0.0/24".parse().unwrap(); 64];
        let n = privatelink_common::MAX_ENDPOINTS as usize / 64 + 1;
        s.endpoints.extend((0..n).map(|i| Endpoint {
            id: format!("g{i}"),
            ..g.clone()
        }));
    });
    assert!(e.starts_with("endpoints: 65"), "{e}");
    assert!(
        e.contains("would exceed the data path's capacity of 65536"),
        "{e}"
    );
}

/// The lab's state with none of the names-and-zones settings (whatever the lab file
/// sets): no resolver or probe address, the service's domain unverified, no health checks,
/// no endpoint resolving the custom domain.
fn plain_lab() -> State {
    let mut s: State = toml::from_str(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap();
    for v in &mut s.vpcs {
        (v.resolver, v.probe_address) = (None, None);
    }
    for x in &mut s.services {
        (x.domain_verified, x.health) = (false, None);
    }
    for e in &mut s.endpoints {
        e.service_domain = false;
    }
    s.validate().unwrap();
    s
}

/// `plain_lab` changed by `f`: the first error, or "valid".
fn check(f: impl FnOnce(&mut State)) -> String {
    let mut s = plain_lab();
    f(&mut s);
    match s.validate() {
        Ok(()) => "valid".into(),
        Err(e) => e.to_string(),
    }
}

fn addr(a: &str) -> Option<std::net::Ipv4Addr> {
    Some(a.parse().unwrap())
}

fn vpc_index(s: &State, id: &str) -> usize {
    s.vpcs.iter().position(|v| v.id == id).unwrap()
}

#[test]
fn stored_states_without_the_new_fields_load_and_keep_them_absent() {
    let s = plain_lab();
    let text = toml::to_string(&s).unwrap();
    for key in [
        "resolver",
        "probe_address",
        "domain_verified",
        "service_domain",
        "health = ",
    ] {
        assert!(!text.contains(key), "{key} written for a state without it");
    }
    assert!(s.endpoints.iter().all(|e| e.zone_affinity), "on by default");
    // Set, they round-trip.
    let mut t = s.clone();
    t.vpcs[0].resolver = addr("10.10.1.53");
    t.vpcs[0].probe_address = addr("10.10.1.54");
    t.services[0].domain_verified = true;
    t.services[0].health = Some(HealthSettings::default());
    t.endpoints[0].service_domain = true;
    t.endpoints[0].zone_affinity = false;
    t.validate().unwrap();
    assert_eq!(
        toml::from_str::<State>(&toml::to_string(&t).unwrap()).unwrap(),
        t
    );
}

#[test]
fn resolver_and_probe_addresses_are_unicast_and_the_probe_is_inside_the_vpc() {
    for bad in ["0.0.0.0", "127.0.0.53", "224.0.0.251", "255.255.255.255"] {
        let e = check(|s| s.vpcs[0].resolver = addr(bad));
        assert!(
            e.starts_with(&format!(
                "vpcs[0].resolver: {bad} is not a unicast host address"
            )),
            "{e}"
        );
        let e = check(|s| s.vpcs[0].probe_address = addr(bad));
        assert!(e.starts_with("vpcs[0].probe_address: "), "{e}");
    }
    for edge in ["10.10.0.0", "10.10.255.255"] {
        let e = check(|s| s.vpcs[0].resolver = addr(edge));
        assert!(
            e.starts_with(&format!(
                "vpcs[0].resolver: {edge} is the network or broadcast address of the VPC's 10.10.0.0/16"
            )),
            "{e}"
        );
    }
    // A resolver outside the VPC, as Alibaba Cloud's; a probe address there is refused.
    assert_eq!(
        check(|s| s.vpcs[0].resolver = addr("100.100.2.136")),
        "valid"
    );
    let e = check(|s| s.vpcs[0].probe_address = addr("100.100.2.136"));
    assert!(
        e.starts_with("vpcs[0].probe_address: 100.100.2.136 is not inside the VPC's 10.10.0.0/16"),
        "{e}"
    );
    let e = check(|s| {
        s.vpcs[0].resolver = addr("10.10.1.53");
        s.vpcs[0].probe_address = addr("10.10.1.53");
    });
    assert!(
        e.starts_with("vpcs[0].probe_address: 10.10.1.53 is the VPC's resolver address too"),
        "{e}"
    );
    // Overlapping VPCs may share a resolver address (each served on its own interface),
    // not a probe address (one host holds both interfaces: see the next test).
    assert_eq!(
        check(|s| {
            for v in &mut s.vpcs[..2] {
                v.resolver = addr("10.10.1.53");
            }
        }),
        "valid"
    );
    let e = check(|s| {
        for v in &mut s.vpcs[..2] {
            v.probe_address = addr("10.10.2.54");
        }
    });
    assert!(e.contains("10.10.2.54 is the probe address in VPC"), "{e}");
}

#[test]
fn resolver_and_probe_addresses_are_no_other_address_in_use_in_their_vpc() {
    let cases: [(&str, &str, &str, &str); 6] = [
        ("vpc-a", "resolver", "10.10.1.100", "endpoint ep-a's ENI"),
        (
            "vpc-b",
            "probe_address",
            "10.10.0.10",
            "a load balancer address of service epsrv-b",
        ),
        (
            "vpc-b",
            "resolver",
            "10.10.0.201",
            "a SNAT address of service epsrv-b",
        ),
        (
            "vpc-s",
            "probe_address",
            "10.20.0.5",
            "the GWLB address of service gwlb-s",
        ),
        (
            "vpc-s",
            "resolver",
            "10.20.2.10",
            "an appliance of service gwlb-s",
        ),
        (
            "vpc-c",
            "probe_address",
            "10.30.2.5",
            "endpoint ep-g2's ENI",
        ),
    ];
    for (vpc, field, a, what) in cases {
        let mut s = plain_lab();
        let i = vpc_index(&s, vpc);
        match field {
            "resolver" => s.vpcs[i].resolver = addr(a),
            _ => s.vpcs[i].probe_address = addr(a),
        }
        let e = s.validate().unwrap_err().to_string();
        assert_eq!(e, format!("vpcs[{i}].{field}: {a} is {what} in VPC {vpc}"));
    }
    // A gateway endpoint's route target too.
    let e = check(|s| {
        let mut g = s.services[0].clone();
        g.id = "epsrv-oss".into();
        g.kind = ServiceType::Gateway;
        g.snat = vec!["10.10.0.202".parse().unwrap()];
        g.domain = None;
        g.prefixes = vec!["100.64.10.0/24".parse().unwrap()];
        s.services.push(g);
        let mut e = s.endpoints[0].clone();
        e.id = "ep-gw".into();
        e.service = "epsrv-oss".into();
        e.zones.clear();
        e.gateway = addr("10.10.1.1");
        s.endpoints.push(e);
        s.vpcs[0].resolver = addr("10.10.1.1");
    });
    assert!(
        e.ends_with("10.10.1.1 is endpoint ep-gw's route target in VPC vpc-a"),
        "{e}"
    );
    // An ipv4 gateway endpoint carries no IPv6: an IPv6 rule in its policy is refused
    // (alone, it would leave the IPv4 rules empty, which denies everything).
    let e = check(|s| {
        let mut g = s.services[0].clone();
        g.id = "epsrv-oss".into();
        g.kind = ServiceType::Gateway;
        g.snat = vec!["10.10.0.202".parse().unwrap()];
        g.domain = None;
        g.prefixes = vec!["100.64.10.0/24".parse().unwrap()];
        s.services.push(g);
        let mut e = s.endpoints[0].clone();
        e.id = "ep-gw".into();
        e.service = "epsrv-oss".into();
        e.zones.clear();
        e.gateway = addr("10.10.1.1");
        e.policy = vec![AclRule {
            action: RuleAction::Accept,
            protocol: Protocol::Tcp,
            ports: None,
            cidr: "fd00:a::/56".parse().unwrap(),
        }];
        s.endpoints.push(e);
    });
    assert!(
        e.ends_with(
            ".policy[0].cidr: fd00:a::/56 is an IPv6 rule: endpoint ep-gw is ipv4 (no IPv6 route target, no IPv6 traffic to judge); make it dualstack first"
        ),
        "{e}"
    );
    // One host holds every VPC's interface: an address in use in another VPC is taken
    // too (the kernel would make that VPC's traffic to the host martian), and so is
    // another VPC's probe address; only resolvers may share one.
    assert_eq!(
        check(|s| s.vpcs[1].resolver = addr("10.10.1.100")),
        "vpcs[1].resolver: 10.10.1.100 is endpoint ep-a's ENI in VPC vpc-a: one forwarder \
         host holds every VPC's interface, so its own addresses must be unique to all"
    );
    let e = check(|s| {
        s.vpcs[0].resolver = addr("100.100.2.136");
        s.vpcs[1].probe_address = addr("10.10.0.250");
        s.vpcs[0].probe_address = addr("10.10.0.250");
    });
    assert!(e.contains("10.10.0.250 is the probe address in VPC"), "{e}");
    let e = check(|s| {
        s.vpcs[0].resolver = addr("10.10.0.250");
        s.vpcs[1].probe_address = addr("10.10.0.250");
    });
    assert!(e.contains("is the probe address in VPC vpc-b"), "{e}");
    assert_eq!(
        check(|s| {
            s.vpcs[0].resolver = addr("100.100.2.136");
            s.vpcs[1].resolver = addr("100.100.2.136");
        }),
        "valid"
    );
}

#[test]
fn custom_service_domains_are_lowercase_names_outside_the_suffix() {
    let e = check(|s| s.services[0].domain = Some("Epsrv-B.Example.com".into()));
    assert!(
        e.starts_with("services[0].domain: \"Epsrv-B.Example.com\" has capitals: write it in lowercase (\"epsrv-b.example.com\""),
        "{e}"
    );
    let e = check(|s| s.services[0].domain = Some("web".into()));
    assert!(
        e.starts_with("services[0].domain: \"web\" is not a domain name"),
        "{e}"
    );
    let e = check(|s| s.services[0].domain = Some("a_b.example".into()));
    assert!(e.starts_with("services[0].domain: "), "{e}");
    for inside in ["privatelink.internal", "x.region-1.privatelink.internal"] {
        let e = check(|s| s.services[0].domain = Some(inside.into()));
        assert!(
            e.starts_with(&format!(
                "services[0].domain: {inside} overlaps privatelink.internal"
            )),
            "{e}"
        );
    }
    assert_eq!(
        check(|s| s.services[0].domain = Some("privatelink.internal.example".into())),
        "valid"
    );
    let e = check(|s| {
        s.services[0].domain = None;
        s.services[0].domain_verified = true;
    });
    assert!(e.starts_with("services[0].domain_verified: "), "{e}");
}

#[test]
fn health_checks_are_for_interface_services_and_in_range() {
    let e = check(|s| {
        s.services[0].health = Some(HealthSettings {
            interval_ms: 1,
            ..HealthSettings::default()
        })
    });
    assert!(
        e.starts_with("services[0].health.interval_ms: 1 ms is shorter"),
        "{e}"
    );
    let e = check(|s| {
        s.services[0].health = Some(HealthSettings {
            probe: Probe::Http {
                path: "no slash".into(),
            },
            ..HealthSettings::default()
        })
    });
    assert!(e.starts_with("services[0].health.probe.path: "), "{e}");
    let e = check(|s| svc(s).health = Some(HealthSettings::default()));
    assert!(
        e.starts_with(
            "services[1].health: only interface services have load balancer health checks"
        ),
        "{e}"
    );
    // UDP listeners only and no settings: not probed, and nothing to refuse.
    assert_eq!(
        check(|s| {
            s.services[0].listeners = vec!["udp:53".parse().unwrap()];
        }),
        "valid"
    );
    assert_eq!(
        check(|s| s.services[0].health = Some(HealthSettings::default())),
        "valid"
    );
}

#[test]
fn a_custom_domain_resolves_for_the_first_enabling_endpoint_of_a_vpc_once_verified() {
    let e = check(|s| s.endpoints[0].service_domain = true);
    assert!(
        e.starts_with("endpoints[0].service_domain: the domain epsrv-b.privatelink.example of service epsrv-b is not verified yet"),
        "{e}"
    );
    let e = check(|s| {
        s.services[0].domain = None;
        s.endpoints[0].service_domain = true;
    });
    assert!(
        e.starts_with("endpoints[0].service_domain: service epsrv-b has no custom domain"),
        "{e}"
    );
    let verified = |s: &mut State| {
        s.services[0].domain_verified = true;
        s.endpoints[0].service_domain = true;
    };
    assert_eq!(check(verified), "valid");
    // A second endpoint of the VPC: may exist, may not enable it too.
    let second = |s: &mut State, on: bool| {
        let mut e = s.endpoints[0].clone();
        e.id = "ep-a2".into();
        e.zones[0].eni = "10.10.1.101".parse().unwrap();
        e.service_domain = on;
        s.endpoints.push(e);
    };
    assert_eq!(
        check(|s| {
            verified(s);
            second(s, false);
        }),
        "valid"
    );
    let e = check(|s| {
        verified(s);
        second(s, true);
    });
    assert!(
        e.ends_with(".service_domain: endpoint ep-a already resolves epsrv-b.privatelink.example in VPC vpc-a (the first enabled wins; turn it off there first)"),
        "{e}"
    );
    // Another VPC has its own answer.
    assert_eq!(
        check(|s| {
            verified(s);
            let mut v = s.vpcs[0].clone();
            (v.id, v.interface) = ("vpc-a9".into(), "fc9".into());
            for (k, w) in v.vswitches.iter_mut().enumerate() {
                w.id = format!("vsw-a9{k}");
            }
            let first = v.vswitches[0].id.clone();
            s.vpcs.push(v);
            second(s, true);
            let e = s.endpoints.last_mut().unwrap();
            (e.vpc, e.zones[0].vswitch) = ("vpc-a9".into(), first);
        }),
        "valid"
    );
    // GWLB endpoints have no names.
    let e = check(|s| {
        svc(s).domain = Some("inspect.example".into());
        svc(s).domain_verified = true;
        let i = ep(s, "ep-g1");
        s.endpoints[i].service_domain = true;
    });
    assert!(
        e.ends_with(".service_domain: only interface endpoints resolve a custom service domain"),
        "{e}"
    );
}

/// Services sharing a load balancer check it on one port: the host admits one port per
/// peer, and the verdict is the load balancer's.
#[test]
fn a_load_balancer_services_share_is_health_checked_on_one_port() {
    let second = |s: &mut State, port: u16| {
        let mut o = s.services[0].clone();
        o.id = "epsrv-b2".into();
        o.domain = None;
        o.snat = vec!["10.10.0.202".parse().unwrap()];
        o.listeners = vec!["tcp:443".parse().unwrap()];
        o.health = (port != 0).then(|| HealthSettings {
            port,
            ..HealthSettings::default()
        });
        s.services.push(o);
    };
    let probed = |s: &mut State| {
        let b = vpc_index(s, "vpc-b");
        s.vpcs[b].probe_address = "10.10.0.250".parse().ok();
    };
    // epsrv-b is checked on its first TCP listener's port, 80; epsrv-b2 on 443.
    let e = check(|s| {
        probed(s);
        second(s, 0)
    });
    assert!(
        e.contains("].health.port: load balancer 10.10.0.10 is also service epsrv-b's, health-checked on port 80 (443 here)"),
        "{e}"
    );
    assert_eq!(
        check(|s| {
            probed(s);
            second(s, 80)
        }),
        "valid"
    );
    // The same port, other thresholds: the verdict would mix them.
    let e = check(|s| {
        probed(s);
        second(s, 80);
        let last = s.services.len() - 1;
        s.services[last]
            .health
            .as_mut()
            .unwrap()
            .unhealthy_threshold = 5;
    });
    assert!(e.contains("].health: load balancer 10.10.0.10"), "{e}");
    // Nothing is checked without a probe address (states stored before checks existed
    // keep loading).
    assert_eq!(check(|s| second(s, 0)), "valid");
}

/// Flow logs are for interface and gateway endpoints: a GWLB endpoint's traffic has no
/// flow events (its appliances see it), so a flow log there would only ever say NODATA.
#[test]
fn a_gwlb_endpoint_has_no_flow_logs() {
    let e = gwlb_broken(|s| {
        let i = ep(s, "ep-g1");
        s.endpoints[i].flow_log = Some(FlowLog { window_seconds: 60 });
    });
    assert!(e.contains(".flow_log") && e.contains("GWLB"), "{e}");
    let mut s = gwlb_state();
    let i = ep(&mut s, "ep-g1");
    let r = crate::ops::set_flow_log(
        &mut s,
        &crate::ops::Caller::Admin,
        "ep-g1",
        FlowLog { window_seconds: 60 },
    );
    assert_eq!(r.unwrap_err().field.as_deref(), Some("flow_log"));
    assert!(s.endpoints[i].flow_log.is_none(), "nothing changed");
}

// Dual stack (issue 17).

/// The first error of the dual-stack lab changed by `f`.
fn broken6(f: impl FnOnce(&mut State)) -> String {
    let mut s = dual_stack_lab();
    f(&mut s);
    s.validate().unwrap_err().to_string()
}

fn v6(a: &str) -> std::net::Ipv6Addr {
    a.parse().unwrap()
}

#[test]
fn states_stored_before_dual_stack_load_as_ipv4_and_store_unchanged() {
    let s = parse_state(LAB).unwrap();
    assert!(s.services[0].ip_version.is_ipv4() && s.endpoints[0].ip_version.is_ipv4());
    assert_eq!(s.vpcs[0].ipv6_cidr, None);
    assert_eq!(s.endpoints[0].zones[0].eni6, None);
    // Written back, nothing of dual stack appears: an earlier build reads it again.
    for (v, json) in [
        (
            serde_json::to_value(&s.services[0]).unwrap(),
            ["ip_version", "snat6"],
        ),
        (
            serde_json::to_value(&s.endpoints[0]).unwrap(),
            ["ip_version", "eni6"],
        ),
    ] {
        let text = v.to_string();
        for key in json {
            assert!(!text.contains(key), "{key} in {text}");
        }
    }
    let vpc = serde_json::to_string(&s.vpcs[0]).unwrap();
    assert!(!vpc.contains("ipv6_cidr"), "{vpc}");
    // And the dual-stack fields round-trip.
    let d = dual_stack_lab();
    let text = serde_json::to_string(&d.endpoints[0]).unwrap();
    assert!(text.contains(r#""ip_version":"dualstack""#), "{text}");
    let back: Endpoint = serde_json::from_str(&text).unwrap();
    assert_eq!(back, d.endpoints[0]);
}

#[test]
fn vpc_and_vswitch_ipv6_ranges_are_checked() {
    for (f, want) in [
        (
            (|s: &mut State| s.vpcs[0].ipv6_cidr = Some("fd00:a::1/56".parse().unwrap()))
                as fn(&mut State),
            "vpcs[0].ipv6_cidr: fd00:a::1/56 has host bits set",
        ),
        (
            |s| s.vpcs[0].ipv6_cidr = Some("ff00::/56".parse().unwrap()),
            "vpcs[0].ipv6_cidr: ff00::/56 is not a unicast range",
        ),
        (
            |s| s.vpcs[0].ipv6_cidr = Some("fd00:a::/96".parse().unwrap()),
            "vpcs[0].ipv6_cidr: fd00:a::/96 is longer than /64",
        ),
        (
            |s| s.vpcs[0].vswitches[0].ipv6_cidr = Some("fd00:a:0:1::/80".parse().unwrap()),
            "vpcs[0].vswitches[0].ipv6_cidr: fd00:a:0:1::/80: a vSwitch's IPv6 range is a /64",
        ),
        (
            |s| s.vpcs[0].vswitches[0].ipv6_cidr = Some("fd00:c::/64".parse().unwrap()),
            "vpcs[0].vswitches[0].ipv6_cidr: fd00:c::/64 is not inside the VPC's fd00:a::/56",
        ),
        (
            |s| s.vpcs[0].vswitches[1].ipv6_cidr = Some("fd00:a:0:1::/64".parse().unwrap()),
            "vpcs[0].vswitches[1].ipv6_cidr: fd00:a:0:1::/64 is vswitches[0]'s IPv6 range too",
        ),
        (
            |s| {
                s.endpoints[0].ip_version = IpVersion::Ipv4;
                s.endpoints[0].zones[0].eni6 = None;
                s.vpcs[0].ipv6_cidr = None;
            },
            "vpcs[0].vswitches[0].ipv6_cidr: VPC vpc-a has no ipv6_cidr",
        ),
    ] {
        let e = broken6(f);
        assert!(e.starts_with(want), "{e}\nwanted: {want}");
    }
}

#[test]
fn dualstack_services_need_ipv6_load_balancers_and_snat() {
    for (f, want) in [
        (
            (|s: &mut State| s.services[0].backends[0].address6 = None) as fn(&mut State),
            "services[0].backends[0].address6: a dualstack service needs each load balancer's IPv6 address",
        ),
        (
            |s| s.services[0].backends[0].address6 = Some(v6("fd00:c::10")),
            "services[0].backends[0].address6: fd00:c::10 is not a usable address of the service VPC's fd00:b::/56",
        ),
        (
            |s| s.services[0].snat6.clear(),
            "services[0].snat6: a dualstack service needs between 1 and 8",
        ),
        (
            |s| s.services[0].snat6[1] = v6("fd00:b::10"),
            "services[0].snat6[1]: fd00:b::10 is a load balancer address",
        ),
        (
            |s| s.services[0].snat6[1] = v6("fd00:b::200"),
            "services[0].snat6[1]: fd00:b::200 is already an IPv6 SNAT address",
        ),
        (
            |s| s.services[0].snat6[1] = v6("fd00:b::"),
            "services[0].snat6[1]: fd00:b:: is not a usable address",
        ),
        (
            |s| {
                s.endpoints[0].ip_version = IpVersion::Ipv4;
                s.endpoints[0].zones[0].eni6 = None;
                s.vpcs[1].vswitches[0].ipv6_cidr = None;
                s.vpcs[1].ipv6_cidr = None;
            },
            "services[0].ip_version: a dualstack service needs IPv6 in its VPC",
        ),
        // An ipv4 service has no IPv6 addresses.
        (
            |s| {
                s.endpoints[0].ip_version = IpVersion::Ipv4;
                s.endpoints[0].zones[0].eni6 = None;
                s.services[0].ip_version = IpVersion::Ipv4;
            },
            "services[0].backends[0].address6: only dualstack services",
        ),
        (
            |s| {
                s.endpoints[0].ip_version = IpVersion::Ipv4;
                s.endpoints[0].zones[0].eni6 = None;
                s.services[0].ip_version = IpVersion::Ipv4;
                s.services[0].backends[0].address6 = None;
            },
            "services[0].snat6: only dualstack services",
        ),
    ] {
        let e = broken6(f);
        assert!(e.starts_with(want), "{e}\nwanted: {want}");
    }
}

#[test]
fn dualstack_endpoints_need_a_dualstack_service_and_an_ipv6_eni() {
    for (f, want) in [
        (
            (|s: &mut State| s.endpoints[0].zones[0].eni6 = None) as fn(&mut State),
            "endpoints[0].zones[0].eni6: a dualstack endpoint's ENI 10.10.1.100 needs its IPv6 address",
        ),
        (
            |s| s.endpoints[0].zones[0].eni6 = Some(v6("fd00:a:0:2::5")),
            "endpoints[0].zones[0].eni6: fd00:a:0:2::5 is not a usable address of vSwitch vsw-a1",
        ),
        // The cloud's reserved addresses: ::0 and the last three of the /64.
        (
            |s| s.endpoints[0].zones[0].eni6 = Some(v6("fd00:a:0:1::")),
            "endpoints[0].zones[0].eni6: fd00:a:0:1:: is not a usable address",
        ),
        (
            |s| s.endpoints[0].zones[0].eni6 = Some(v6("fd00:a:0:1:ffff:ffff:ffff:fffd")),
            "endpoints[0].zones[0].eni6: fd00:a:0:1:ffff:ffff:ffff:fffd is not a usable address",
        ),
        (
            |s| s.endpoints[0].ip_version = IpVersion::Ipv4,
            "endpoints[0].zones[0].eni6: only dualstack endpoints",
        ),
        (
            |s| {
                s.services[0].ip_version = IpVersion::Ipv4;
                s.services[0].backends[0].address6 = None;
                s.services[0].snat6.clear();
            },
            "endpoints[0].ip_version: service epsrv-b is IPv4 only",
        ),
        (
            |s| {
                s.endpoints[0].zones[0].vswitch = "vsw-a2".into();
                s.endpoints[0].zones[0].eni = "10.10.2.100".parse().unwrap();
            },
            "endpoints[0].zones[0].vswitch: vSwitch vsw-a2 has no ipv6_cidr",
        ),
        // Unique in the VPC.
        (
            |s| {
                let mut other = s.endpoints[0].clone();
                other.id = "ep-a2".into();
                other.zones[0].eni = "10.10.1.101".parse().unwrap();
                s.endpoints.push(other);
            },
            "endpoints[1].zones[0].eni6: fd00:a:0:1::64 is already in use in VPC vpc-a",
        ),
    ] {
        let e = broken6(f);
        assert!(e.starts_with(want), "{e}\nwanted: {want}");
    }
    // The last usable address is fine.
    let mut s = dual_stack_lab();
    s.endpoints[0].zones[0].eni6 = Some(v6("fd00:a:0:1:ffff:ffff:ffff:fffc"));
    s.validate().unwrap();
}

#[test]
fn reserved_ipv6_addresses_are_the_first_and_the_last_three_and_allocation_skips_them() {
    let v = VSwitch {
        id: "v".into(),
        zone: "z".into(),
        cidr: "10.0.0.0/24".parse().unwrap(),
        ipv6_cidr: Some("fd00:a:0:1::/64".parse().unwrap()),
    };
    assert!(v.is_reserved6(v6("fd00:a:0:1::")));
    assert!(!v.is_reserved6(v6("fd00:a:0:1::1")));
    for last in ["fffd", "fffe", "ffff"] {
        assert!(v.is_reserved6(v6(&format!("fd00:a:0:1:ffff:ffff:ffff:{last}"))));
    }
    assert!(!v.usable6(v6("fd00:a:0:2::1")));
    let used = [v6("fd00:a:0:1::1"), v6("fd00:a:0:1::2")].into();
    assert_eq!(v.lowest_free6(&used), Some(v6("fd00:a:0:1::3")));
    let v4only = VSwitch {
        ipv6_cidr: None,
        ..v
    };
    assert_eq!(v4only.lowest_free6(&Default::default()), None);
}

#[test]
fn filter_rules_and_routes_take_ipv6() {
    let mut s = dual_stack_lab();
    s.security_groups.push(SecurityGroup {
        id: "sg6".into(),
        account: "acct-a".into(),
        vpc: "vpc-a".into(),
        name: String::new(),
        rules: vec![SgRule {
            id: "r1".into(),
            direction: Direction::Ingress,
            priority: 1,
            action: RuleAction::Accept,
            protocol: Protocol::Tcp,
            ports: Some([80, 80]),
            cidr: "fd00:a::/56".parse().unwrap(),
        }],
        last_rule: 1,
    });
    s.validate().unwrap();
    s.security_groups[0].rules[0].cidr = "fd00:a::1/56".parse().unwrap();
    let e = s.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("security_groups[0].rules[0].cidr: fd00:a::1/56 has host bits set"),
        "{e}"
    );
    // GWLB endpoints route IPv6 prefixes only for a dualstack service.
    let mut g = parse_state(&format!("{LAB}{GWLB_TEST_STATE}")).unwrap();
    let i = g.endpoints.iter().position(|e| e.id == "ep-g1").unwrap();
    g.endpoints[i].routes.push("fd00:99::/64".parse().unwrap());
    let e = g.validate().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "endpoints[{i}].routes[2]: fd00:99::/64 is an IPv6 prefix: service gwlb-s is not dualstack"
        )),
        "{e}"
    );
    let svc = g.services.iter_mut().find(|x| x.id == "gwlb-s").unwrap();
    svc.ip_version = IpVersion::Dualstack;
    g.validate().unwrap();
    // Its appliances stay IPv4.
    let svc = g.services.iter_mut().find(|x| x.id == "gwlb-s").unwrap();
    svc.backends[0].address6 = Some(v6("fd00:99::1"));
    let e = g.validate().unwrap_err().to_string();
    assert!(
        e.contains(".backends: a GWLB service's appliances stay IPv4"),
        "{e}"
    );
}

/// The dual-stack lab with a dualstack gateway service epsrv-gw (prefixes 100.64.10.0/24
/// and fd00:64::/48) and its dualstack endpoint ep-gw (endpoints[1]: route targets
/// 10.10.1.1 and fd00:a:0:1::1, an IPv6 policy rule).
fn dual_gateway_lab() -> State {
    let mut s = dual_stack_lab();
    let mut g = s.services[0].clone();
    g.id = "epsrv-gw".into();
    g.kind = ServiceType::Gateway;
    g.domain = None;
    g.snat = vec!["10.10.0.202".parse().unwrap()];
    g.snat6 = vec![v6("fd00:b::202")];
    g.prefixes = vec![
        "100.64.10.0/24".parse().unwrap(),
        "fd00:64::/48".parse().unwrap(),
    ];
    s.services.push(g);
    let mut e = s.endpoints[0].clone();
    e.id = "ep-gw".into();
    e.service = "epsrv-gw".into();
    e.zones.clear();
    e.name.clear();
    e.gateway = addr("10.10.1.1");
    e.gateway6 = Some(v6("fd00:a:0:1::1"));
    e.policy = vec![AclRule {
        action: RuleAction::Accept,
        protocol: Protocol::Tcp,
        ports: Some([443, 443]),
        cidr: "fd00:64:0:1::/64".parse().unwrap(),
    }];
    s.endpoints.push(e);
    s
}

#[test]
fn dualstack_gateway_endpoints_have_an_ipv6_route_target_and_ipv6_policy_rules() {
    dual_gateway_lab().validate().unwrap();
    let broken = |f: fn(&mut State)| {
        let mut s = dual_gateway_lab();
        f(&mut s);
        s.validate().unwrap_err().to_string()
    };
    for (f, want) in [
        (
            (|s: &mut State| s.endpoints[1].gateway6 = None) as fn(&mut State),
            "endpoints[1].gateway6: a dualstack gateway endpoint needs an IPv6 route target",
        ),
        (
            |s| s.endpoints[1].gateway6 = Some(v6("fd00:a:0:9::1")),
            "endpoints[1].gateway6: fd00:a:0:9::1 is not a usable IPv6 address of a vSwitch of VPC vpc-a",
        ),
        // The cloud's reserved addresses, as for an ENI.
        (
            |s| s.endpoints[1].gateway6 = Some(v6("fd00:a:0:1::")),
            "endpoints[1].gateway6: fd00:a:0:1:: is not a usable IPv6 address",
        ),
        (
            |s| s.endpoints[1].gateway6 = Some(v6("fd00:a:0:1::64")),
            "endpoints[1].gateway6: fd00:a:0:1::64 is already in use in VPC vpc-a",
        ),
        (
            |s| {
                s.endpoints[1].ip_version = IpVersion::Ipv4;
                s.endpoints[1].policy.clear();
            },
            "endpoints[1].gateway6: only dualstack gateway endpoints",
        ),
        (
            |s| s.endpoints[0].gateway6 = Some(v6("fd00:a:0:1::1")),
            "endpoints[0].gateway6: only endpoints of gateway services have an IPv6 route target",
        ),
        // IPv6 prefixes need a dualstack service, and must lie outside the VPC's range.
        (
            |s| {
                s.services[1].ip_version = IpVersion::Ipv4;
                s.services[1].backends[0].address6 = None;
                s.services[1].snat6.clear();
            },
            "services[1].prefixes[1]: fd00:64::/48: IPv6 prefixes need a dualstack service",
        ),
        (
            |s| s.services[1].prefixes[1] = "fd00:a:0:80::/64".parse().unwrap(),
            "endpoints[1].service: the service's prefix fd00:a:0:80::/64 overlaps the VPC's fd00:a::/56",
        ),
        (
            |s| s.services[1].prefixes[1] = "fd00:64::1/48".parse().unwrap(),
            "services[1].prefixes[1]: fd00:64::1/48 has host bits set",
        ),
    ] {
        let e = broken(f);
        assert!(e.starts_with(want), "{e}\nwanted: {want}");
    }
    // An ipv4 endpoint of the dualstack service: its IPv4 prefix only, no IPv6 rules.
    let mut s = dual_gateway_lab();
    s.endpoints[1].ip_version = IpVersion::Ipv4;
    s.endpoints[1].gateway6 = None;
    s.endpoints[1].policy.clear();
    s.validate().unwrap();
    // Stored as before dual stack: an ipv4 endpoint has no `gateway6`.
    let stored = serde_json::to_string(&s.endpoints[1]).unwrap();
    assert!(!stored.contains("gateway6"), "{stored}");
    let e = dual_gateway_lab();
    let text = serde_json::to_string(&e.endpoints[1]).unwrap();
    assert!(text.contains(r#""gateway6":"fd00:a:0:1::1""#), "{text}");
}
