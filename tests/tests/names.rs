//! Names in the two-zone lab, end to end in network namespaces (issue 15): the consumer's
//! clients ask their VPC's resolver (through `/etc/netns/<ns>/resolv.conf`, as any program
//! in the namespace does) for the endpoint's domain name, its zone names and the service's
//! custom domain, and get the answers zone affinity and the private zone call for; curl
//! reaches the service by name; an on-premises BIND resolves the same names through the
//! daemon's external listener. Every answer is read from `dig`'s output, never from the
//! server's own code.

use std::{process::Stdio, time::Duration};

use privatelink_tests::{
    dig::{Dig, parse_dig},
    lab::{
        CLIENT_B, CLIENT_C, CUSTOM_DOMAIN, DNS_APEX, ENI, ENI_B, EP_A_NAME, Lab, LabOptions,
        ONPREM_BIND, ONPREM_FWD, RESOLVER, ZONE_HEADER, privatelink_bin, wait_for, zone_name,
    },
    netns::{Netns, unique_name},
};

fn lab() -> Lab {
    let prefix = unique_name("pln");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    Lab::up(&LabOptions::new(&prefix, pin)).expect("lab up")
}

/// `dig <args>` inside `ns` (its resolv.conf's server unless `args` name one with `@`),
/// two tries of 2 s: the parsed answer (status empty if no answer came).
fn dig(ns: &Netns, args: &[&str]) -> Dig {
    let out = ns
        .command("dig")
        .args(["+time=2", "+tries=2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running dig");
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

/// Asserts a NOERROR answer with exactly the A records `want` (in any order).
fn assert_a(ans: &Dig, want: &[&str], what: &str) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(ans.status, "NOERROR", "{what}: {}", ans.text);
    assert_eq!(ans.addresses(), want, "{what}: {}", ans.text);
}

/// Waits (10 s at most) until the VPC resolver seen from `ns` answers `name` with exactly
/// `want`: the daemon serves a change once it has applied it.
fn wait_a(ns: &Netns, args: &[&str], want: &[&str], what: &str) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let mut last = Dig::default();
    let ok = wait_for(Duration::from_secs(10), what, || {
        last = dig(ns, args);
        last.status == "NOERROR" && last.addresses() == want
    });
    assert!(
        ok.is_ok(),
        "{what}: wanted {want:?}; last answer: {}",
        last.text
    );
}

/// The value of response header `name` in curl's `-i` output (case-insensitive).
fn header(response: &str, name: &str) -> Option<String> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `curl -si <extra> <url>` from the consumer's namespace: the response (head and body).
fn curl_i(lab: &Lab, extra: &[&str], url: &str) -> String {
    let out = lab
        .consumer
        .command("curl")
        .args(["-sS", "-i", "--fail", "-m", "10"])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl {extra:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// In the consumer's VPC, from each of its zones: the endpoint name answers the client's
/// own zone's ENI (zone affinity), both from the zone without an ENI; each zone name its
/// own ENI from anywhere; the custom domain like the endpoint name; an unknown name under
/// the names' zone NXDOMAIN (with the SOA); a name outside every served zone REFUSED, and
/// over TCP the same. curl reaches the service by name (through the namespace's
/// resolv.conf) and lands in the client's zone; `endpoint show` gives the names. With
/// affinity turned off, the zone-a client gets both addresses.
#[test]
fn the_vpc_resolver_answers_by_the_clients_zone() {
    let lab = lab();
    let c = &lab.consumer;
    // From zone-a (the namespace's default source 10.10.2.1, vsw-a2), zone-b (vsw-a5) and
    // zone-c (vsw-a6, no ENI of ep-a).
    wait_a(c, &[EP_A_NAME], &[ENI], "the endpoint name from zone-a");
    let ans = dig(c, &[EP_A_NAME]);
    assert!(
        ans.has_flag("aa") && !ans.has_flag("ra"),
        "authoritative, no recursion: {}",
        ans.text
    );
    assert!(
        ans.text.contains(&format!("SERVER: {RESOLVER}#53")),
        "{}",
        ans.text
    );
    assert_a(
        &dig(c, &["-b", CLIENT_B, EP_A_NAME]),
        &[ENI_B],
        "from zone-b",
    );
    assert_a(
        &dig(c, &["-b", CLIENT_C, EP_A_NAME]),
        &[ENI, ENI_B],
        "from zone-c",
    );
    // Zone names: that zone's ENI, whatever the client's zone.
    for src in [None, Some(CLIENT_B), Some(CLIENT_C)] {
        for (zone, eni) in [("zone-a", ENI), ("zone-b", ENI_B)] {
            let name = zone_name(zone);
            let mut args = vec![name.as_str()];
            if let Some(s) = src {
                args.extend(["-b", s]);
            }
            assert_a(&dig(c, &args), &[eni], &format!("{name} from {src:?}"));
        }
    }
    // The custom domain, in the endpoint's VPC: as the endpoint name.
    assert_a(
        &dig(c, &[CUSTOM_DOMAIN]),
        &[ENI],
        "custom domain from zone-a",
    );
    assert_a(
        &dig(c, &["-b", CLIENT_B, CUSTOM_DOMAIN]),
        &[ENI_B],
        "custom domain from zone-b",
    );
    assert_a(
        &dig(c, &["-b", CLIENT_C, CUSTOM_DOMAIN]),
        &[ENI, ENI_B],
        "custom domain from zone-c",
    );
    // Over TCP, the same answer.
    assert_a(&dig(c, &["+tcp", EP_A_NAME]), &[ENI], "over TCP");
    // Unknown names in the zone: NXDOMAIN with the SOA; other names: REFUSED.
    let nx = dig(c, &[&format!("nope.epsrv-b.{DNS_APEX}")]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.text);
    assert!(
        nx.has_flag("aa") && nx.soa_in_authority() && nx.addresses().is_empty(),
        "{}",
        nx.text
    );
    let refused = dig(c, &["example.com"]);
    assert_eq!(refused.status, "REFUSED", "{}", refused.text);
    assert!(
        refused.addresses().is_empty() && !refused.has_flag("ra"),
        "{}",
        refused.text
    );

    // curl by name: the namespace's resolver, the zone's ENI, the zone's load balancer.
    let url = format!("http://{EP_A_NAME}/");
    let r = curl_i(&lab, &[], &url);
    assert!(r.contains("backend 10.10.3."), "{r}");
    assert_eq!(header(&r, ZONE_HEADER).as_deref(), Some("zone-a"), "{r}");
    // A zone-b client: curl's own lookups leave from the namespace's default address
    // (zone-a), so the name is resolved from zone-b by dig and handed to curl.
    let b = dig(c, &["-b", CLIENT_B, EP_A_NAME]);
    assert_eq!(b.addresses(), [ENI_B], "{}", b.text);
    let r = curl_i(
        &lab,
        &[
            "--interface",
            CLIENT_B,
            "--resolve",
            &format!("{EP_A_NAME}:80:{}", b.addresses()[0]),
        ],
        &url,
    );
    assert_eq!(header(&r, ZONE_HEADER).as_deref(), Some("zone-b"), "{r}");
    let r = curl_i(&lab, &[], &format!("http://{CUSTOM_DOMAIN}/"));
    assert_eq!(header(&r, ZONE_HEADER).as_deref(), Some("zone-a"), "{r}");

    // The CLI shows the names (JSON and table).
    let json = lab.cli("consumer", &["endpoint", "show", "ep-a"]).unwrap();
    let table = cli_table(&lab, "consumer", &["endpoint", "show", "ep-a"]);
    for name in [
        EP_A_NAME.to_string(),
        zone_name("zone-a"),
        zone_name("zone-b"),
    ] {
        assert!(json.contains(&name), "{name} not in {json}");
        assert!(table.contains(&name), "{name} not in {table}");
    }

    // Affinity off: every zone's ENI for every client.
    lab.cli(
        "consumer",
        &["endpoint", "set", "ep-a", "--zone-affinity", "off"],
    )
    .unwrap();
    wait_a(c, &[EP_A_NAME], &[ENI, ENI_B], "zone-a without affinity");
    assert_a(
        &dig(c, &["-b", CLIENT_B, EP_A_NAME]),
        &[ENI, ENI_B],
        "zone-b without affinity",
    );
    // Zone names stay their zone's.
    assert_a(&dig(c, &[&zone_name("zone-b")]), &[ENI_B], "zone-b's name");
}

/// The custom domain is private to the VPCs whose endpoint enables it: vpc-web (the same
/// resolver address, its client on another VPC's interface) gets NXDOMAIN while it has no
/// such endpoint, though the endpoint name answers there too; once vpc-web has its own
/// endpoint to the service with the domain enabled, the name resolves there to that
/// endpoint's ENI, and in vpc-a still to ep-a's.
#[test]
fn the_custom_domain_resolves_only_where_an_endpoint_enables_it() {
    let lab = lab();
    let web = &lab.gwlb.as_ref().expect("API-mode lab").web;
    let c = &lab.consumer;
    wait_a(c, &[CUSTOM_DOMAIN], &[ENI], "the custom domain in vpc-a");
    let ans = dig(web, &[CUSTOM_DOMAIN]);
    assert_eq!(
        ans.status, "NXDOMAIN",
        "vpc-web has no endpoint: {}",
        ans.text
    );
    assert!(ans.addresses().is_empty(), "{}", ans.text);
    assert!(
        ans.text.contains(&format!("SERVER: {RESOLVER}#53")),
        "{}",
        ans.text
    );
    // The endpoint's name is not private: vpc-web's resolver answers it (with ep-a's
    // addresses: the client is in none of ep-a's VPC's zones).
    let ans = dig(web, &[EP_A_NAME]);
    assert_eq!(ans.status, "NOERROR", "{}", ans.text);
    assert!(
        !ans.addresses().is_empty() && ans.addresses().iter().all(|a| a == ENI || a == ENI_B),
        "{}",
        ans.text
    );

    // vpc-web gets its own endpoint, with the custom domain.
    const WEB_ENI: &str = "10.30.0.100";
    lab.cli(
        "consumer",
        &[
            "endpoint",
            "create",
            "ep-web",
            "--vpc",
            "vpc-web",
            "--service",
            "epsrv-b",
            "--zone",
            &format!("vsw-w0:{WEB_ENI}"),
            "--service-domain",
            "on",
        ],
    )
    .unwrap();
    lab.cli("provider", &["connection", "accept", "epsrv-b", "ep-web"])
        .unwrap();
    wait_a(
        web,
        &[CUSTOM_DOMAIN],
        &[WEB_ENI],
        "the custom domain in vpc-web",
    );
    assert_a(&dig(c, &[CUSTOM_DOMAIN]), &[ENI], "still ep-a's in vpc-a");
    // Its client reaches the service by that name.
    web.ip(&["route", "add", WEB_ENI, "dev", "br0"]).unwrap();
    let body = lab
        .web_curl(&format!("http://{CUSTOM_DOMAIN}/"), &[])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("backend 10.10.3."),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// On premises, a real BIND forwarding the names' zone (`type forward; forward only`) to
/// the daemon's external listener resolves the endpoint and zone names, as a recursive
/// answer (RA, not AA), with every zone's ENI (no client zone outside the VPCs); the
/// listener itself answers authoritatively; unknown names are NXDOMAIN through BIND too.
#[test]
fn an_on_premises_bind_resolves_the_names_through_the_daemon() {
    let lab = lab();
    let o = &lab.onprem;
    let bind = format!("@{ONPREM_BIND}");
    wait_a(
        o,
        &[&bind, EP_A_NAME],
        &[ENI, ENI_B],
        "the endpoint name through BIND",
    );
    let ans = dig(o, &[&bind, EP_A_NAME]);
    assert!(
        ans.has_flag("ra") && !ans.has_flag("aa"),
        "a resolver's answer: {}",
        ans.text
    );
    // The namespace's resolv.conf names BIND too.
    assert_a(&dig(o, &[EP_A_NAME]), &[ENI, ENI_B], "through resolv.conf");
    assert_a(
        &dig(o, &[&bind, &zone_name("zone-b")]),
        &[ENI_B],
        "zone-b's name",
    );
    let nx = dig(o, &[&bind, &format!("nope.{EP_A_NAME}")]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.text);
    // The daemon's listener directly: authoritative.
    let direct = dig(o, &[&format!("@{ONPREM_FWD}"), EP_A_NAME]);
    assert_a(&direct, &[ENI, ENI_B], "the external listener");
    assert!(
        direct.has_flag("aa") && !direct.has_flag("ra"),
        "{}",
        direct.text
    );
    assert!(lab.log("named").contains("running"), "{}", lab.log("named"));
}

/// `privatelink <args>` as a table (the lab's `cli` asks for JSON).
fn cli_table(lab: &Lab, who: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(privatelink_bin().unwrap())
        .args([
            "--api",
            lab.api.as_deref().unwrap(),
            "--token",
            lab.token(who),
        ])
        .args(args)
        .env_remove("PRIVATELINK_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "privatelink {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
