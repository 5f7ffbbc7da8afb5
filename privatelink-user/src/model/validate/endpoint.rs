use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::{FieldError, Ids, check_acl_rules, check_prefix, err, overlap, refuse, usable};
use crate::model::{
    Direction, Endpoint, EndpointService, EndpointZone, FLOW_LOG_WINDOWS, FlowLog, IpVersion,
    Lookup, MAX_GWLB_ROUTES, MAX_SECURITY_GROUPS, MAX_TAGS, ServiceType, State, VSwitch, Vpc,
    lookup,
};

impl State {
    pub(super) fn validate_endpoints(
        &self,
        ids: &mut Ids,
        enis: &mut BTreeSet<(String, Ipv4Addr)>,
        enis6: &mut BTreeSet<(String, Ipv6Addr)>,
    ) -> Result<(), FieldError> {
        for (i, e) in self.endpoints.iter().enumerate() {
            let f = format!("endpoints[{i}]");
            let vpc = self.owned_object(&f, ids, e, &e.vpc)?;
            if self.service(&e.service).is_none() {
                return err(
                    format!("{f}.service"),
                    format!("unknown endpoint service {:?}", e.service),
                );
            }
            let svc = self.service(&e.service).expect("checked above");
            self.validate_endpoint_kind(&f, e, vpc, svc, enis, enis6)?;
            validate_endpoint_ip_version(&f, e, svc)?;
            check_endpoint_limits(&f, &e.security_groups, &e.tags)?;
            let mut zones = BTreeSet::new();
            for (j, z) in e.zones.iter().enumerate() {
                let g = format!("{f}.zones[{j}]");
                let Some(vsw) = vpc.vswitches.iter().find(|s| s.id == z.vswitch) else {
                    return err(
                        format!("{g}.vswitch"),
                        format!("VPC {} has no vSwitch {:?}", vpc.id, z.vswitch),
                    );
                };
                if !zones.insert(vsw.zone.clone()) {
                    return err(
                        format!("{g}.vswitch"),
                        format!("the endpoint already has an ENI in zone {}", vsw.zone),
                    );
                }
                if !usable(&vsw.cidr, z.eni) {
                    return err(
                        format!("{g}.eni"),
                        format!(
                            "{} is not a usable address of vSwitch {} ({})",
                            z.eni, vsw.id, vsw.cidr
                        ),
                    );
                }
                if !enis.insert((vpc.id.clone(), z.eni)) {
                    return err(
                        format!("{g}.eni"),
                        format!("{} is already in use in VPC {}", z.eni, vpc.id),
                    );
                }
                validate_eni6(&g, e, z, vsw, vpc, enis6)?;
            }
            self.validate_endpoint_groups(&f, e)?;
            if let Some(fl) = &e.flow_log {
                check_flow_log(&format!("{f}.flow_log"), fl)?;
                if self
                    .service(&e.service)
                    .is_some_and(|s| s.kind == ServiceType::Gwlb)
                {
                    return err(format!("{f}.flow_log"), GWLB_FLOW_LOG);
                }
            }
        }
        Ok(())
    }

    /// One endpoint per (VPC, prefix), whether the prefix comes from a gateway service or
    /// a GWLB endpoint's routes: two would make the route ambiguous.
    pub(super) fn validate_gateway_routes(&self) -> Result<(), FieldError> {
        let mut routes: BTreeMap<(String, IpNet), (&str, &str)> = BTreeMap::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let Some(svc) = self.service(&e.service) else {
                continue;
            };
            let (kind, prefixes): (&str, Vec<(String, IpNet)>) = match svc.kind {
                // An IPv6 prefix is routed to a gateway endpoint only if it has an IPv6
                // route target (a dualstack one).
                ServiceType::Gateway if e.gateway.is_some() => (
                    "gateway",
                    svc.prefixes
                        .iter()
                        .filter(|p| matches!(p, IpNet::V4(_)) || e.gateway6.is_some())
                        .map(|p| (format!("endpoints[{i}].service"), *p))
                        .collect(),
                ),
                ServiceType::Gwlb => (
                    "GWLB",
                    e.routes
                        .iter()
                        .enumerate()
                        .map(|(j, p)| (format!("endpoints[{i}].routes[{j}]"), *p))
                        .collect(),
                ),
                _ => continue,
            };
            for (field, p) in prefixes {
                if let Some((other, other_kind)) = routes.insert((e.vpc.clone(), p), (&e.id, kind))
                {
                    return err(
                        field,
                        format!(
                            "{p} is already routed to {other_kind} endpoint {other} in VPC {}",
                            e.vpc
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// An endpoint that enables its service's custom domain is an interface endpoint of a
    /// service whose domain is verified, and the first in its VPC to enable that domain:
    /// seed 001, "the first enabled wins" (the name has one answer in a VPC).
    pub(super) fn validate_service_domains(&self) -> Result<(), FieldError> {
        let mut enabled: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            if !e.service_domain {
                continue;
            }
            let field = format!("endpoints[{i}].service_domain");
            let Some(svc) = self.service(&e.service) else {
                continue;
            };
            if svc.kind != ServiceType::Interface {
                return err(
                    field,
                    "only interface endpoints resolve a custom service domain",
                );
            }
            let Some(domain) = svc.domain.as_deref() else {
                return err(field, format!("service {} has no custom domain", svc.id));
            };
            if !svc.domain_verified {
                return err(
                    field,
                    format!(
                        "the domain {domain} of service {} is not verified yet (the operator verifies it)",
                        svc.id
                    ),
                );
            }
            if let Some(first) = enabled.insert((&e.vpc, domain), &e.id) {
                return err(
                    field,
                    format!(
                        "endpoint {first} already resolves {domain} in VPC {} (the first enabled wins; turn it off there first)",
                        e.vpc
                    ),
                );
            }
        }
        Ok(())
    }

    /// Interface endpoints have ENIs in zones; gateway endpoints a route target (and a
    /// dualstack one an IPv6 route target) and a policy, and the service's prefixes must
    /// be routable (outside the VPC).
    fn validate_endpoint_kind(
        &self,
        f: &str,
        e: &Endpoint,
        vpc: &Vpc,
        svc: &EndpointService,
        enis: &mut BTreeSet<(String, Ipv4Addr)>,
        enis6: &mut BTreeSet<(String, Ipv6Addr)>,
    ) -> Result<(), FieldError> {
        refuse(
            f,
            &[(
                "routes",
                svc.kind != ServiceType::Gwlb && !e.routes.is_empty(),
                "only endpoints of GWLB services have routes",
            )],
        )?;
        match svc.kind {
            ServiceType::Gwlb => validate_gwlb_endpoint(f, e, svc)?,
            ServiceType::Interface => refuse(
                f,
                &[
                    (
                        "zones",
                        e.zones.is_empty(),
                        "an endpoint needs an ENI in at least one zone",
                    ),
                    (
                        "gateway",
                        e.gateway.is_some() || !e.policy.is_empty(),
                        "only endpoints of gateway services have a gateway and a policy",
                    ),
                    (
                        "gateway6",
                        e.gateway6.is_some(),
                        "only endpoints of gateway services have an IPv6 route target",
                    ),
                ],
            )?,
            ServiceType::Gateway => {
                refuse(
                    f,
                    &[
                        (
                            "zones",
                            !e.zones.is_empty(),
                            "a gateway endpoint has no ENIs; give --gateway instead",
                        ),
                        (
                            "security_groups",
                            !e.security_groups.is_empty(),
                            "a gateway endpoint is guarded by its policy, not by security groups",
                        ),
                    ],
                )?;
                let Some(gw) = e.gateway else {
                    return err(
                        format!("{f}.gateway"),
                        "a gateway endpoint needs a route target address",
                    );
                };
                if !vpc.vswitches.iter().any(|s| usable(&s.cidr, gw)) {
                    return err(
                        format!("{f}.gateway"),
                        format!(
                            "{gw} is not a usable address of a vSwitch of VPC {}",
                            vpc.id
                        ),
                    );
                }
                if !enis.insert((vpc.id.clone(), gw)) {
                    return err(
                        format!("{f}.gateway"),
                        format!("{gw} is already in use in VPC {}", vpc.id),
                    );
                }
                for p in &svc.prefixes {
                    let own = match p {
                        IpNet::V4(p) => overlap(&vpc.cidr, p).then(|| vpc.cidr.to_string()),
                        IpNet::V6(p) => vpc
                            .ipv6_cidr
                            .filter(|c| c.contains(p) || p.contains(c))
                            .map(|c| c.to_string()),
                    };
                    if let Some(own) = own {
                        return err(
                            format!("{f}.service"),
                            format!("the service's prefix {p} overlaps the VPC's {own}"),
                        );
                    }
                }
                validate_gateway6(f, e, vpc, enis6)?;
                check_acl_rules(&format!("{f}.policy"), &e.policy)?;
                // An ipv4 gateway endpoint carries no IPv6 (none of the service's IPv6
                // prefixes is routed to it): an IPv6 rule of its policy would judge nothing.
                if let Some(j) = e.policy.iter().position(|r| r.cidr.addr().is_ipv6())
                    && e.ip_version.is_ipv4()
                {
                    return err(
                        format!("{f}.policy[{j}].cidr"),
                        format!(
                            "{} is an IPv6 rule: endpoint {} is ipv4 (no IPv6 route target, no IPv6 traffic to judge); make it dualstack first",
                            e.policy[j].cidr, e.id
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_endpoint_groups(&self, f: &str, e: &Endpoint) -> Result<(), FieldError> {
        let mut ingress = 0;
        for (j, sg) in e.security_groups.iter().enumerate() {
            // Another account's group is not named either: do not tell its VPC or owner.
            let Lookup::Mine(group) = lookup(&self.security_groups, &e.account, sg) else {
                return err(
                    format!("{f}.security_groups[{j}]"),
                    format!("no security group {sg:?}"),
                );
            };
            if group.vpc != e.vpc {
                return err(
                    format!("{f}.security_groups[{j}]"),
                    format!(
                        "security group {sg} is in VPC {}, not in the endpoint's {}",
                        group.vpc, e.vpc
                    ),
                );
            }
            ingress += group
                .rules
                .iter()
                .filter(|r| r.direction == Direction::Ingress)
                .count();
        }
        if ingress > privatelink_common::MAX_RULES {
            return err(
                format!("{f}.security_groups"),
                format!(
                    "{ingress} ingress rules in all; at most {}",
                    privatelink_common::MAX_RULES
                ),
            );
        }
        Ok(())
    }
}

/// A GWLB endpoint: one ENI (checked with the other ENIs), the routes sent to it, and
/// none of the gateway endpoints' or interface endpoints' filters.
fn validate_gwlb_endpoint(f: &str, e: &Endpoint, svc: &EndpointService) -> Result<(), FieldError> {
    let [z] = e.zones.as_slice() else {
        return err(
            format!("{f}.zones"),
            format!(
                "a GWLB endpoint has exactly one ENI (in one zone); {} given",
                e.zones.len()
            ),
        );
    };
    refuse(
        f,
        &[
            (
                "gateway",
                e.gateway.is_some(),
                "a GWLB endpoint has no gateway address: the VPC routes to its ENI",
            ),
            (
                "gateway6",
                e.gateway6.is_some(),
                "a GWLB endpoint has no gateway address: the VPC routes to its ENI's IPv6 address",
            ),
            (
                "policy",
                !e.policy.is_empty(),
                "a GWLB endpoint has no policy: its appliances decide what passes",
            ),
            (
                "security_groups",
                !e.security_groups.is_empty(),
                "a GWLB endpoint is not guarded by security groups: its appliances decide what passes",
            ),
        ],
    )?;
    if e.routes.is_empty() || e.routes.len() > MAX_GWLB_ROUTES {
        return err(
            format!("{f}.routes"),
            format!(
                "a GWLB endpoint needs between 1 and {MAX_GWLB_ROUTES} routes; {} given",
                e.routes.len()
            ),
        );
    }
    for (j, p) in e.routes.iter().enumerate() {
        let g = format!("{f}.routes[{j}]");
        check_prefix(g.clone(), *p)?;
        if p.contains(&std::net::IpAddr::V4(z.eni)) {
            return err(
                g,
                format!(
                    "{p} contains the endpoint's own ENI {}; traffic to it would loop",
                    z.eni
                ),
            );
        }
        if let Some(a) = z.eni6.filter(|a| p.contains(&std::net::IpAddr::V6(*a))) {
            return err(
                g,
                format!("{p} contains the endpoint's own ENI {a}; traffic to it would loop"),
            );
        }
        if matches!(p, IpNet::V6(_)) && !svc.ip_version.is_dualstack() {
            return err(
                g,
                format!(
                    "{p} is an IPv6 prefix: service {} is not dualstack (its ip_version is ipv4)",
                    svc.id
                ),
            );
        }
    }
    Ok(())
}

/// An endpoint's `ip_version`: dualstack only when its service is (a dualstack gateway
/// endpoint has an IPv6 route target, to which its VPC routes the service's IPv6
/// prefixes).
fn validate_endpoint_ip_version(
    f: &str,
    e: &Endpoint,
    svc: &EndpointService,
) -> Result<(), FieldError> {
    if e.ip_version == IpVersion::Ipv4 {
        return Ok(());
    }
    if !svc.ip_version.is_dualstack() {
        return err(
            format!("{f}.ip_version"),
            format!(
                "service {} is IPv4 only: a dualstack endpoint needs a dualstack service",
                svc.id
            ),
        );
    }
    Ok(())
}

/// A gateway endpoint's IPv6 route target (at `f`.gateway6): a dualstack one has one, a
/// usable address of a vSwitch of its VPC (`VSwitch::usable6`), unique in the VPC
/// (`enis6` gains it); an ipv4 one has none.
fn validate_gateway6(
    f: &str,
    e: &Endpoint,
    vpc: &Vpc,
    enis6: &mut BTreeSet<(String, Ipv6Addr)>,
) -> Result<(), FieldError> {
    let field = format!("{f}.gateway6");
    let Some(a) = e.gateway6 else {
        if e.ip_version.is_dualstack() {
            return err(
                field,
                "a dualstack gateway endpoint needs an IPv6 route target (its VPC routes the service's IPv6 prefixes to it)",
            );
        }
        return Ok(());
    };
    if e.ip_version.is_ipv4() {
        return err(
            field,
            "only dualstack gateway endpoints (ip_version = \"dualstack\") have an IPv6 route target",
        );
    }
    if !vpc.vswitches.iter().any(|s| s.usable6(a)) {
        return err(
            field,
            format!(
                "{a} is not a usable IPv6 address of a vSwitch of VPC {} (inside a vSwitch's ipv6_cidr; its first address and its last three are reserved)",
                vpc.id
            ),
        );
    }
    if !enis6.insert((vpc.id.clone(), a)) {
        return err(field, format!("{a} is already in use in VPC {}", vpc.id));
    }
    Ok(())
}

/// The IPv6 address of ENI `z` (at `g`) of endpoint `e` in vSwitch `vsw` of `vpc`: a
/// dualstack endpoint has one for each ENI, in the vSwitch's IPv6 range, not reserved,
/// unique in the VPC (`enis6` gains it); an ipv4 endpoint has none.
fn validate_eni6(
    g: &str,
    e: &Endpoint,
    z: &EndpointZone,
    vsw: &VSwitch,
    vpc: &Vpc,
    enis6: &mut BTreeSet<(String, Ipv6Addr)>,
) -> Result<(), FieldError> {
    let field = format!("{g}.eni6");
    let Some(a) = z.eni6 else {
        if e.ip_version.is_dualstack() {
            return err(
                field,
                format!(
                    "a dualstack endpoint's ENI {} needs its IPv6 address",
                    z.eni
                ),
            );
        }
        return Ok(());
    };
    if e.ip_version.is_ipv4() {
        return err(
            field,
            "only dualstack endpoints (ip_version = \"dualstack\") have IPv6 ENI addresses",
        );
    }
    let Some(net6) = vsw.ipv6_cidr else {
        return err(
            format!("{g}.vswitch"),
            format!(
                "vSwitch {} has no ipv6_cidr: a dualstack endpoint's ENIs need one",
                vsw.id
            ),
        );
    };
    if !vsw.usable6(a) {
        return err(
            field,
            format!(
                "{a} is not a usable address of vSwitch {} ({net6}: its first address and its last three are reserved)",
                vsw.id
            ),
        );
    }
    if !enis6.insert((vpc.id.clone(), a)) {
        return err(field, format!("{a} is already in use in VPC {}", vpc.id));
    }
    Ok(())
}

/// Why a GWLB endpoint has no flow logs.
pub const GWLB_FLOW_LOG: &str = "flow logs are for interface and gateway endpoints: a GWLB \
     endpoint's traffic goes through its appliances, whose own logs see it";

/// A flow log's capture window is one the daemon aggregates over (`FLOW_LOG_WINDOWS`).
/// `f` is the flow log's field path (empty for a request body).
pub fn check_flow_log(f: &str, fl: &FlowLog) -> Result<(), FieldError> {
    if !FLOW_LOG_WINDOWS.contains(&fl.window_seconds) {
        let field = match f {
            "" => "window_seconds".to_string(),
            f => format!("{f}.window_seconds"),
        };
        return err(
            field,
            format!(
                "a capture window of {} s; between {} and {} s (the clouds offer 60 and 600)",
                fl.window_seconds,
                FLOW_LOG_WINDOWS.start(),
                FLOW_LOG_WINDOWS.end()
            ),
        );
    }
    Ok(())
}

/// An endpoint's security groups and tags are within their limits. `f` is the endpoint's
/// field path (empty for a request body, whose fields are named without a prefix).
pub fn check_endpoint_limits(
    f: &str,
    security_groups: &[String],
    tags: &BTreeMap<String, String>,
) -> Result<(), FieldError> {
    let field = |name: &str| match f {
        "" => name.to_string(),
        f => format!("{f}.{name}"),
    };
    if security_groups.len() > MAX_SECURITY_GROUPS {
        return err(
            field("security_groups"),
            format!(
                "{} security groups; at most {MAX_SECURITY_GROUPS}",
                security_groups.len()
            ),
        );
    }
    if tags.len() > MAX_TAGS {
        return err(
            field("tags"),
            format!("{} tags; at most {MAX_TAGS}", tags.len()),
        );
    }
    Ok(())
}
