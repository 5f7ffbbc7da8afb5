use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::{FieldError, Ids, check_prefix, err, refuse, usable, usable6};
use crate::model::{
    ConnectionEvent, EndpointService, GwlbSettings, HttpUrl, IpVersion, Listener, MAX_APPLIANCES,
    MAX_LISTENERS, MAX_NOTIFICATIONS, Notification, ServiceType, State, Vpc, names,
};

/// The addresses services take in each VPC: per (VPC, address), the services using it and
/// as what.
type Taken<'a> = BTreeMap<(String, Ipv4Addr), Vec<(&'a str, &'static str)>>;

impl State {
    /// The services; returns the addresses they take in each VPC (SNAT, load balancer, GWLB
    /// and appliance addresses), which no ENI or gateway address may take.
    pub(super) fn validate_services(
        &self,
        ids: &mut Ids,
    ) -> Result<BTreeSet<(String, Ipv4Addr)>, FieldError> {
        let taken = self.taken_addresses();
        let mut snat_used = BTreeSet::new();
        let mut snat6_used = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let f = format!("services[{i}]");
            let vpc = self.owned_object(&f, ids, s, &s.vpc)?;
            for (j, w) in s.whitelist.iter().enumerate() {
                if !self.account_exists(w) {
                    return err(
                        format!("{f}.whitelist[{j}]"),
                        format!("unknown account {w:?}"),
                    );
                }
            }
            match (s.kind, &s.gwlb) {
                (ServiceType::Gwlb, Some(g)) => validate_gwlb_service(&f, s, g, vpc, &taken)?,
                (ServiceType::Gwlb, None) => {
                    return err(
                        format!("{f}.gwlb"),
                        "a GWLB service needs its gwlb settings (at least the load balancer's address)",
                    );
                }
                (_, Some(_)) => {
                    return err(format!("{f}.gwlb"), "only GWLB services have gwlb settings");
                }
                (_, None) => validate_lb_service(&f, s, vpc, &taken, &mut snat_used)?,
            }
            self.validate_ip_version(&f, s, vpc, &mut snat6_used)?;
            validate_names_and_health(&f, s)?;
            self.validate_shared_probe_port(&f, i, s)?;
            check_notifications(&format!("{f}.notifications"), &s.notifications)?;
        }
        let mut enis: BTreeSet<(String, Ipv4Addr)> = snat_used.clone();
        enis.extend(taken.into_keys());
        Ok(enis)
    }

    /// A load balancer that services before `i` share with `s` is health-checked the same
    /// way by all, when its VPC has a probe address (without one nothing is checked, as
    /// in states stored before checks existed): the host admits one port per peer
    /// (`PL_HOST`), and a verdict is the load balancer's, whichever service asked, so
    /// another port, path or threshold would fail or flip every service behind it.
    fn validate_shared_probe_port(
        &self,
        f: &str,
        i: usize,
        s: &EndpointService,
    ) -> Result<(), FieldError> {
        if self.vpc(&s.vpc).is_none_or(|v| v.probe_address.is_none()) {
            return Ok(());
        }
        let Some(mine) = s.lb_health() else {
            return Ok(());
        };
        for o in self.services[..i].iter().filter(|o| o.vpc == s.vpc) {
            let Some(theirs) = o.lb_health() else {
                continue;
            };
            if theirs == mine {
                continue;
            }
            if let Some(b) = s
                .backends
                .iter()
                .find(|b| o.backends.iter().any(|ob| ob.address == b.address))
            {
                let (field, what) = if theirs.port != mine.port {
                    (
                        "health.port",
                        format!("on port {} ({} here)", theirs.port, mine.port),
                    )
                } else {
                    ("health", "with other settings".to_string())
                };
                return err(
                    format!("{f}.{field}"),
                    format!(
                        "load balancer {} is also service {}'s, health-checked {what}: a load \
                         balancer services share is checked one way (give the same health \
                         settings)",
                        b.address, o.id
                    ),
                );
            }
        }
        Ok(())
    }

    /// The IPv6 side of service `s` (at `f`) in its VPC `vpc`. An ipv4 service has no IPv6
    /// address anywhere. A dualstack interface or gateway service needs the VPC's
    /// `ipv6_cidr`, an `address6` for every load balancer and 1 to `MAX_SNAT_ADDRS` IPv6
    /// SNAT addresses there (`snat6_used` gains them: unique in the VPC, no service's load
    /// balancer); only its prefixes may be IPv6 (gateway services). A dualstack GWLB
    /// service has neither (its appliances stay IPv4: outer IPv4, inner IPv6).
    fn validate_ip_version(
        &self,
        f: &str,
        s: &EndpointService,
        vpc: &Vpc,
        snat6_used: &mut BTreeSet<(String, Ipv6Addr)>,
    ) -> Result<(), FieldError> {
        let only_dualstack =
            "only dualstack services (ip_version = \"dualstack\") have IPv6 addresses";
        if s.ip_version == IpVersion::Ipv4 {
            if let Some(j) = s.backends.iter().position(|b| b.address6.is_some()) {
                return err(format!("{f}.backends[{j}].address6"), only_dualstack);
            }
            if let Some(j) = s.prefixes.iter().position(|p| matches!(p, IpNet::V6(_))) {
                return err(
                    format!("{f}.prefixes[{j}]"),
                    format!("{}: IPv6 prefixes need a dualstack service", s.prefixes[j]),
                );
            }
            return refuse(f, &[("snat6", !s.snat6.is_empty(), only_dualstack)]);
        }
        if s.kind == ServiceType::Gwlb {
            return refuse(
                f,
                &[
                    (
                        "backends",
                        s.backends.iter().any(|b| b.address6.is_some()),
                        "a GWLB service's appliances stay IPv4 (IPv6 travels inside GENEVE over IPv4): no address6",
                    ),
                    (
                        "snat6",
                        !s.snat6.is_empty(),
                        "a GWLB service has no SNAT addresses",
                    ),
                ],
            );
        }
        let Some(net6) = &vpc.ipv6_cidr else {
            return err(
                format!("{f}.ip_version"),
                format!(
                    "a dualstack service needs IPv6 in its VPC: VPC {} has no ipv6_cidr",
                    vpc.id
                ),
            );
        };
        let lbs6 = self.lb_addresses6();
        for (j, b) in s.backends.iter().enumerate() {
            let field = format!("{f}.backends[{j}].address6");
            let Some(a) = b.address6 else {
                return err(
                    field,
                    format!(
                        "a dualstack service needs each load balancer's IPv6 address ({} has none)",
                        b.address
                    ),
                );
            };
            if !usable6(net6, a) {
                return err(
                    field,
                    format!("{a} is not a usable address of the service VPC's {net6}"),
                );
            }
            if s.backends[..j].iter().any(|o| o.address6 == Some(a)) {
                return err(field, format!("load balancer {a} is listed twice"));
            }
        }
        if s.snat6.is_empty() || s.snat6.len() > privatelink_common::MAX_SNAT_ADDRS {
            return err(
                format!("{f}.snat6"),
                format!(
                    "a dualstack service needs between 1 and {} IPv6 SNAT addresses",
                    privatelink_common::MAX_SNAT_ADDRS
                ),
            );
        }
        for (j, a) in s.snat6.iter().enumerate() {
            let field = format!("{f}.snat6[{j}]");
            if !usable6(net6, *a) {
                return err(
                    field,
                    format!("{a} is not a usable address of the service VPC's {net6}"),
                );
            }
            if lbs6.contains(&(vpc.id.clone(), *a)) {
                return err(
                    field,
                    format!("{a} is a load balancer address in VPC {}", vpc.id),
                );
            }
            if !snat6_used.insert((vpc.id.clone(), *a)) {
                return err(
                    field,
                    format!("{a} is already an IPv6 SNAT address in VPC {}", vpc.id),
                );
            }
        }
        Ok(())
    }

    /// The load balancers' IPv6 addresses, per VPC.
    fn lb_addresses6(&self) -> BTreeSet<(String, Ipv6Addr)> {
        self.services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .filter_map(|b| Some((s.vpc.clone(), b.address6?)))
            })
            .collect()
    }

    /// The IPv6 addresses services take in each VPC (load balancers, SNAT), which no ENI
    /// may take.
    pub(super) fn service_addresses6(&self) -> BTreeSet<(String, Ipv6Addr)> {
        let mut set = self.lb_addresses6();
        for s in &self.services {
            set.extend(s.snat6.iter().map(|a| (s.vpc.clone(), *a)));
        }
        set
    }

    /// Load balancer, GWLB and appliance addresses (with their services), which no SNAT
    /// address may take; GWLB and appliance addresses belong to one service only.
    fn taken_addresses(&self) -> Taken<'_> {
        let mut taken = Taken::new();
        for s in &self.services {
            let what = match s.kind {
                ServiceType::Gwlb => "a GWLB appliance",
                _ => "a load balancer address",
            };
            for b in &s.backends {
                taken
                    .entry((s.vpc.clone(), b.address))
                    .or_default()
                    .push((&s.id, what));
            }
            if let Some(g) = &s.gwlb {
                taken
                    .entry((s.vpc.clone(), g.address))
                    .or_default()
                    .push((&s.id, "a GWLB address"));
            }
        }
        taken
    }
}

/// An interface or gateway service: its listeners, its load balancers in the service VPC,
/// its SNAT pool (`snat_used` gains it), and its prefixes (gateway services only).
fn validate_lb_service(
    f: &str,
    s: &EndpointService,
    vpc: &Vpc,
    taken: &Taken,
    snat_used: &mut BTreeSet<(String, Ipv4Addr)>,
) -> Result<(), FieldError> {
    check_listeners(&format!("{f}.listeners"), &s.listeners)?;
    if !(1..=100).contains(&s.endpoint_flow_share) {
        return err(
            format!("{f}.endpoint_flow_share"),
            format!(
                "{} is not a share in percent (1-100)",
                s.endpoint_flow_share
            ),
        );
    }
    if s.backends.is_empty() {
        return err(
            format!("{f}.backends"),
            "at least one load balancer address is needed",
        );
    }
    for (j, b) in s.backends.iter().enumerate() {
        if !vpc.cidr.contains(&b.address) {
            return err(
                format!("{f}.backends[{j}].address"),
                format!("{} is not inside the service VPC's {}", b.address, vpc.cidr),
            );
        }
        if s.backends[..j].iter().any(|o| o.address == b.address) {
            return err(
                format!("{f}.backends[{j}].address"),
                format!("load balancer {} is listed twice", b.address),
            );
        }
        let in_zone = s.backends[..=j].iter().filter(|o| o.zone == b.zone).count();
        // Without zone affinity every ENI spreads its flows over all of them.
        if !s.zone_affinity
            && s.kind == ServiceType::Interface
            && j >= privatelink_common::MAX_LBS_PER_ZONE
        {
            return err(
                format!("{f}.backends[{j}]"),
                format!(
                    "more than {} load balancers without zone affinity (every ENI's flows are spread over all of them)",
                    privatelink_common::MAX_LBS_PER_ZONE
                ),
            );
        }
        if s.kind == ServiceType::Gateway && in_zone > 1 {
            return err(
                format!("{f}.backends[{j}].zone"),
                format!(
                    "zone {} is listed twice (a gateway service has one next hop per zone)",
                    b.zone
                ),
            );
        }
        if in_zone > privatelink_common::MAX_LBS_PER_ZONE {
            return err(
                format!("{f}.backends[{j}].zone"),
                format!(
                    "more than {} load balancers in zone {}",
                    privatelink_common::MAX_LBS_PER_ZONE,
                    b.zone
                ),
            );
        }
        if let Some((other, what)) = taken[&(vpc.id.clone(), b.address)]
            .iter()
            .find(|(o, what)| *o != s.id && *what != "a load balancer address")
        {
            return err(
                format!("{f}.backends[{j}].address"),
                format!(
                    "{} is {what} of service {other} in VPC {}",
                    b.address, vpc.id
                ),
            );
        }
    }
    if s.snat.is_empty() || s.snat.len() > privatelink_common::MAX_SNAT_ADDRS {
        return err(
            format!("{f}.snat"),
            format!(
                "between 1 and {} SNAT addresses are needed",
                privatelink_common::MAX_SNAT_ADDRS
            ),
        );
    }
    for (j, a) in s.snat.iter().enumerate() {
        if !usable(&vpc.cidr, *a) {
            return err(
                format!("{f}.snat[{j}]"),
                format!(
                    "{a} is not a usable address of the service VPC's {}",
                    vpc.cidr
                ),
            );
        }
        if s.backends.iter().any(|b| b.address == *a) {
            return err(
                format!("{f}.snat[{j}]"),
                format!("{a} is also a load balancer address"),
            );
        }
        if let Some((_, what)) = taken
            .get(&(vpc.id.clone(), *a))
            .and_then(|owners| owners.first())
        {
            return err(
                format!("{f}.snat[{j}]"),
                format!("{a} is {what} in VPC {}", vpc.id),
            );
        }
        if !snat_used.insert((vpc.id.clone(), *a)) {
            return err(
                format!("{f}.snat[{j}]"),
                format!("{a} is already a SNAT address in VPC {}", vpc.id),
            );
        }
    }
    let [lo, hi] = s.snat_ports;
    if lo == 0 || lo > hi {
        return err(
            format!("{f}.snat_ports"),
            format!("[{lo}, {hi}] is not a port range (1 <= low <= high)"),
        );
    }
    refuse(
        f,
        &[
            (
                "prefixes",
                s.kind == ServiceType::Interface && !s.prefixes.is_empty(),
                "only gateway services have prefixes",
            ),
            (
                "prefixes",
                s.kind == ServiceType::Gateway && s.prefixes.is_empty(),
                "a gateway service needs at least one prefix",
            ),
        ],
    )?;
    for (j, p) in s.prefixes.iter().enumerate() {
        // (IPv6 ones need a dualstack service: `validate_ip_version`.)
        check_prefix(format!("{f}.prefixes[{j}]"), *p)?;
    }
    Ok(())
}

/// Listeners: ports 1-65535, ranges the right way up, no two overlapping.
pub fn check_listeners(field: &str, listeners: &[Listener]) -> Result<(), FieldError> {
    if listeners.len() > MAX_LISTENERS {
        return err(
            field,
            format!("{} listeners; at most {MAX_LISTENERS}", listeners.len()),
        );
    }
    for (j, l) in listeners.iter().enumerate() {
        let (lo, hi) = l.ports();
        if lo == 0 {
            return err(
                format!("{field}[{j}].port"),
                "port 0 is not a listener port (1-65535)",
            );
        }
        if hi < lo {
            return err(
                format!("{field}[{j}].to_port"),
                format!("{lo}-{hi} is upside down (to_port must be at least port)"),
            );
        }
        if let Some((k, o)) = listeners[..j].iter().enumerate().find(|(_, o)| {
            let (a, b) = o.ports();
            o.protocol == l.protocol && a <= hi && lo <= b
        }) {
            return err(
                format!("{field}[{j}]"),
                format!("{l} overlaps listener {k} ({o})"),
            );
        }
    }
    Ok(())
}

/// A GWLB service: its own address and its appliances (`backends`) in the service VPC,
/// appliances in zones of that VPC, no SNAT pool, no prefixes, sane health checks.
fn validate_gwlb_service(
    f: &str,
    s: &EndpointService,
    g: &GwlbSettings,
    vpc: &Vpc,
    taken: &Taken,
) -> Result<(), FieldError> {
    // `a` at `field` (`what` it is) is an address of the service VPC a host may use.
    let usable_here = |field: String, what: &str, a: Ipv4Addr| {
        if usable(&vpc.cidr, a) {
            return Ok(());
        }
        err(
            field,
            format!(
                "{what}{a} is not a usable address of the service VPC's {}",
                vpc.cidr
            ),
        )
    };
    // No other service uses `a` (at `field`) in this VPC.
    let unshared = |field: String, a: Ipv4Addr| {
        let owners = taken.get(&(vpc.id.clone(), a));
        match owners.and_then(|owners| owners.iter().find(|(o, _)| *o != s.id)) {
            Some((o, what)) => err(
                field,
                format!("{a} is {what} of service {o} in VPC {}", vpc.id),
            ),
            None => Ok(()),
        }
    };
    usable_here(format!("{f}.gwlb.address"), "", g.address)?;
    unshared(format!("{f}.gwlb.address"), g.address)?;
    if s.backends.is_empty() || s.backends.len() > MAX_APPLIANCES {
        return err(
            format!("{f}.backends"),
            format!(
                "a GWLB service needs between 1 and {MAX_APPLIANCES} appliances; it has {}",
                s.backends.len()
            ),
        );
    }
    for (j, b) in s.backends.iter().enumerate() {
        let h = format!("{f}.backends[{j}]");
        usable_here(format!("{h}.address"), "appliance ", b.address)?;
        if b.address == g.address {
            return err(
                format!("{h}.address"),
                format!("{} is the GWLB's own address, not an appliance", b.address),
            );
        }
        if s.backends[..j].iter().any(|o| o.address == b.address) {
            return err(
                format!("{h}.address"),
                format!("appliance {} is listed twice", b.address),
            );
        }
        unshared(format!("{h}.address"), b.address)?;
        if !vpc.vswitches.iter().any(|v| v.zone == b.zone) {
            return err(
                format!("{h}.zone"),
                format!("VPC {} has no vSwitch in zone {:?}", vpc.id, b.zone),
            );
        }
    }
    refuse(
        f,
        &[
            (
                "snat",
                !s.snat.is_empty(),
                "a GWLB service has no SNAT addresses: packets keep their addresses inside GENEVE",
            ),
            (
                "prefixes",
                !s.prefixes.is_empty(),
                "a GWLB service has no prefixes: each endpoint lists the routes sent to it",
            ),
            (
                "listeners",
                !s.listeners.is_empty(),
                "a GWLB service has no listeners: its appliances see every packet",
            ),
        ],
    )?;
    g.health
        .check()
        .or_else(|(field, message)| err(format!("{f}.gwlb.health.{field}"), message))
}

/// A service's custom domain (see `EndpointService::check_domain`; the model knows no
/// running suffix, so the default one is kept clear), its verification, and its load
/// balancers' health checks (interface services only; none given: the defaults, and a
/// service with only UDP listeners is not probed).
fn validate_names_and_health(f: &str, s: &EndpointService) -> Result<(), FieldError> {
    if let Some(d) = &s.domain {
        EndpointService::check_domain(&format!("{f}.domain"), d, names::DEFAULT_SUFFIX)?;
    }
    refuse(
        f,
        &[
            (
                "domain_verified",
                s.domain_verified && s.domain.is_none(),
                "a service without a domain has nothing verified",
            ),
            (
                "health",
                s.health.is_some() && s.kind != ServiceType::Interface,
                "only interface services have load balancer health checks (GWLB services: gwlb.health)",
            ),
        ],
    )?;
    match &s.health {
        Some(h) => h
            .check()
            .or_else(|(field, message)| err(format!("{f}.health.{field}"), message)),
        None => Ok(()),
    }
}

impl EndpointService {
    /// Checks `domain` (at `field`) as a custom service domain name: a lowercase domain
    /// name (see `names::check_domain`) that neither lies under the naming `suffix` the
    /// daemon answers for nor contains it (the custom domain's private zone would hide
    /// the endpoint names in the VPCs that enable it).
    pub fn check_domain(field: &str, domain: &str, suffix: &str) -> Result<(), FieldError> {
        if domain.bytes().any(|c| c.is_ascii_uppercase()) {
            return err(
                field,
                format!(
                    "{domain:?} has capitals: write it in lowercase ({:?}; DNS names are case-insensitive)",
                    domain.to_ascii_lowercase()
                ),
            );
        }
        names::check_domain(domain).or_else(|e| err(field, e))?;
        if names::is_within(domain, suffix) || names::is_within(suffix, domain) {
            return err(
                field,
                format!(
                    "{domain} overlaps {suffix}, under which the endpoint names are given; choose a domain of the provider's own"
                ),
            );
        }
        Ok(())
    }

    /// Interface and gateway services publish at least one listener. Required of every
    /// service created or changed, and of declarative state files; a service stored by an
    /// earlier build (which forwarded every port) loads with none and publishes nothing
    /// until its provider adds them (logged at start, see `legacy_without_listeners`).
    pub fn require_listeners(&self, field: &str) -> Result<(), FieldError> {
        if self.kind != ServiceType::Gwlb && self.listeners.is_empty() {
            return err(
                field,
                format!(
                    "service {} must publish its load balancer's listeners (e.g. tcp:80); \
                     an endpoint carries only traffic that matches one",
                    self.id
                ),
            );
        }
        Ok(())
    }
}

/// A service's notifications (at `field`): at most `MAX_NOTIFICATIONS`, each with an id
/// (1-64 of [A-Za-z0-9_-], unique in the service) and an acceptable URL and events (see
/// `check_notification`).
pub fn check_notifications(field: &str, list: &[Notification]) -> Result<(), FieldError> {
    if list.len() > MAX_NOTIFICATIONS {
        return err(
            field,
            format!(
                "{} notifications; at most {MAX_NOTIFICATIONS} per service",
                list.len()
            ),
        );
    }
    for (j, n) in list.iter().enumerate() {
        let f = format!("{field}[{j}]");
        let id_chars = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if n.id.is_empty() || n.id.len() > 64 || !n.id.chars().all(id_chars) {
            return err(
                format!("{f}.id"),
                format!("{:?} is not a valid id (1-64 of [A-Za-z0-9_-])", n.id),
            );
        }
        if list[..j].iter().any(|o| o.id == n.id) {
            return err(format!("{f}.id"), format!("duplicate id {:?}", n.id));
        }
        check_notification(&f, &n.url, &n.events)?;
    }
    Ok(())
}

/// A notification's `url` (`http://HOST[:PORT][/PATH]`, see `HttpUrl`) and `events` (at
/// least one, none twice); errors name `{f}.url` or `{f}.events[i]` (`f` empty: `url`).
pub fn check_notification(
    f: &str,
    url: &str,
    events: &[ConnectionEvent],
) -> Result<(), FieldError> {
    let at = |name: &str| match f {
        "" => name.to_string(),
        f => format!("{f}.{name}"),
    };
    url.parse::<HttpUrl>().or_else(|e| err(at("url"), e))?;
    if events.is_empty() {
        return err(
            at("events"),
            "no events: give at least one (connect, accept, reject, disconnect, delete), or leave it out for all",
        );
    }
    for (k, e) in events.iter().enumerate() {
        if events[..k].contains(e) {
            return err(
                format!("{}[{k}]", at("events")),
                format!("{e:?} is listed twice").to_lowercase(),
            );
        }
    }
    Ok(())
}
