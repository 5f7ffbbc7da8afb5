use ipnet::Ipv4Net;

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
    assert_eq!(ep.routes, vec!["10.30.9.0/24".parse::<Ipv4Net>().unwrap()]);
    s.validate().unwrap();
    let p: EndpointPatch =
        serde_json::from_value(serde_json::json!({"routes": ["10.30.8.0/24"]})).unwrap();
    let ep = update_endpoint(&mut s, &Caller::Account("acct-a".into()), "ep-g", p).unwrap();
    assert_eq!(ep.routes, vec!["10.30.8.0/24".parse::<Ipv4Net>().unwrap()]);
    s.validate().unwrap();
}
