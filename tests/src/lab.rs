//! The seed's cross-account scenario as network namespaces, in two zones:
//!
//! ```text
//!  <p>-consumer                 <p>-fwd                        <p>-provider
//!  ECS1 10.10.2.1  c0 ──veth── fc0 [XDP]   [XDP] fp0 ──veth── p0  zone-a haproxy 10.10.0.10:80
//!  zone-b 10.10.5.1            privatelink daemon                 zone-b haproxy 10.10.4.10:80
//!  zone-c 10.10.6.1            ip_forward=0, no NAT rules         nginx ECS2 10.10.3.2:80,81
//!  ENIs 10.10.1.100 (zone-a)   resolver 100.100.2.136 (fc0)       nginx ECS3 10.10.3.3:80,81
//!       10.10.4.100 (zone-b)   probes from 10.10.0.250 (fp0)      VPC B 10.10.0.0/16
//!  VPC A 10.10.0.0/16          DNS listener 10.50.0.1:53 (fo0)
//!                                     │
//!                              <p>-onprem o0 10.50.0.2: BIND, forwarding the names' zone
//! ```
//!
//! ep-a and epsrv-b are dual stack: the same picture in IPv6 (`ENI6`, `CLIENT6`, `LB6`,
//! `SNAT6` ...), vpc-a fd00:a::/56, vpc-b fd00:b::/56.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{self, Netns};

pub const LAB_STATE: &str = include_str!("../lab.toml");
/// The lab's listener line, and the listeners the packet tests and benchmarks exercise
/// instead of haproxy's tcp/80: TCP to 80 and 443, and to the ports 1-78 that
/// `scale::flow` spreads synthetic flows over; UDP to 53 and 80.
pub const LAB_LISTENERS: &str = r#"listeners = [{ protocol = "tcp", port = 80 }]"#;
pub const PACKET_LISTENERS: &str = r#"listeners = [{ protocol = "tcp", port = 1, to_port = 1024 }, { protocol = "udp", port = 53 }, { protocol = "udp", port = 80 }]"#;

/// The lab's state for packet tests (BPF_PROG_TEST_RUN): `LAB_STATE` with
/// `PACKET_LISTENERS`.
pub fn packet_state() -> String {
    assert!(LAB_STATE.contains(LAB_LISTENERS));
    LAB_STATE.replace(LAB_LISTENERS, PACKET_LISTENERS)
}
/// `state` (the lab's, or one made from it) with its services' per-endpoint flow share
/// at `share` % (100: no per-endpoint bound, the table's and the pool's own limits are
/// what is met), written before each `snat` line.
pub fn with_flow_share(state: &str, share: u8) -> String {
    assert!(
        state.contains("snat = ["),
        "a state without an IPv4 SNAT pool"
    );
    state.replace(
        "snat = [",
        &format!("endpoint_flow_share = {share}\nsnat = ["),
    )
}

/// The lab with a zone-b vSwitch in the consumer VPC and a zone-b load balancer
/// (10.10.0.11); with `second_eni`, endpoint ep-a has an ENI in zone-b too (10.10.9.5).
pub fn two_zone_packet_state(second_eni: bool) -> String {
    let zones = if second_eni {
        r#"zones = [{ vswitch = "vsw-a1", eni = "10.10.1.100" }, { vswitch = "vsw-a9", eni = "10.10.9.5" }]"#
    } else {
        r#"zones = [{ vswitch = "vsw-a1", eni = "10.10.1.100" }]"#
    };
    packet_state()
        .replace(
            r#"{ id = "vsw-a2", zone = "zone-a", cidr = "10.10.2.0/24" },"#,
            r#"{ id = "vsw-a2", zone = "zone-a", cidr = "10.10.2.0/24" },
  { id = "vsw-a9", zone = "zone-b", cidr = "10.10.9.0/24" },"#,
        )
        .replace(
            r#"backends = [{ zone = "zone-a", address = "10.10.0.10" }]"#,
            r#"backends = [{ zone = "zone-a", address = "10.10.0.10" }, { zone = "zone-b", address = "10.10.0.11" }]"#,
        )
        .replace(
            r#"zones = [{ vswitch = "vsw-a1", eni = "10.10.1.100" }]"#,
            zones,
        )
}

/// A state file's (TOML) connected endpoint with one ENI, for tests that add one to a
/// state; more of its fields may follow.
pub fn connected_endpoint(
    id: &str,
    account: &str,
    vpc: &str,
    service: &str,
    vswitch: &str,
    eni: &str,
) -> String {
    format!(
        r#"
[[endpoints]]
id = "{id}"
account = "{account}"
vpc = "{vpc}"
service = "{service}"
connection = "connected"
zones = [{{ vswitch = "{vswitch}", eni = "{eni}" }}]
"#
    )
}

pub const ENI: &str = "10.10.1.100";
pub const CLIENT: &str = "10.10.2.1";
pub const LB: &str = "10.10.0.10";
/// The second zone: endpoint ep-a's ENI in zone-b (vSwitch vsw-a4), the consumer's
/// client addresses in zone-b (vsw-a5) and in zone-c, where ep-a has no ENI (vsw-a6),
/// both extra addresses on the consumer's `c0` (`curl --interface`, `dig -b`); the
/// provider's zone-b load balancer (vsw-b4), a second haproxy in front of the same two
/// nginx backends.
pub const ENI_B: &str = "10.10.4.100";
pub const CLIENT_B: &str = "10.10.5.1";
pub const CLIENT_C: &str = "10.10.6.1";
pub const LB_B: &str = "10.10.4.10";
/// Each zone's load balancer: (zone, address). The backends serve zone-a's on port 80 and
/// zone-b's on port 81, and each answer carries `X-Zone: <zone>` (`ZONE_HEADER`): where
/// a request landed.
pub const LBS: [(&str, &str); 2] = [("zone-a", LB), ("zone-b", LB_B)];
pub const ZONE_HEADER: &str = "X-Zone";
/// The consumer VPCs' resolver (vpc-a's and vpc-web's; Alibaba Cloud's 100.100.2.136:
/// outside the VPCs' ranges, reached on-link). Each client namespace has a /32 route to it
/// on its VPC interface and an `/etc/netns/<ns>/resolv.conf` naming it.
pub const RESOLVER: &str = "100.100.2.136";
/// The provider VPC's probe address: the daemon health-checks each zone's load balancer
/// from it, every `PROBE_INTERVAL_MS`, with an HTTP GET of `LB_HEALTH_PATH` on
/// `LB_HEALTH_PORT`: haproxy's own monitor, so the checks never reach the backends (a
/// check on port 80 would take a turn of haproxy's round robin).
pub const PROBE_ADDRESS: &str = "10.10.0.250";
pub const PROBE_INTERVAL_MS: u64 = 200;
pub const LB_HEALTH_PORT: u16 = 8404;
pub const LB_HEALTH_PATH: &str = "/health";
/// The daemon's naming options (`--dns-suffix`, `--dns-region`) and the names they give
/// ep-a (`<endpoint>.<service>.<region>.<suffix>`; a zone's: `<zone>.` before it),
/// written out here, not computed by the daemon's code, so tests check the contract.
pub const DNS_SUFFIX: &str = "privatelink.example";
pub const DNS_REGION: &str = "lab-1";
pub const DNS_APEX: &str = "lab-1.privatelink.example";
pub const EP_A_NAME: &str = "ep-a.epsrv-b.lab-1.privatelink.example";
/// epsrv-b's custom service domain (verified by the operator, enabled on ep-a): it
/// resolves in vpc-a to ep-a's ENIs.
pub const CUSTOM_DOMAIN: &str = "web.provider-b.example";
/// The on-premises network: BIND in `<p>-onprem` on `ONPREM_BIND` (veth `o0`), the
/// forwarder's end (`fo0`, no XDP: not a VPC) holds `ONPREM_FWD`, where the daemon's
/// external DNS listener is (`--dns-listen`).
pub const ONPREM_BIND: &str = "10.50.0.2";
pub const ONPREM_FWD: &str = "10.50.0.1";
pub const ONPREM_NET: &str = "10.50.0.0/24";

/// The zone domain name of ep-a's ENI in `zone`.
pub fn zone_name(zone: &str) -> String {
    format!("{zone}.{EP_A_NAME}")
}
pub const BACKENDS: [&str; 2] = ["10.10.3.2", "10.10.3.3"];
/// The reverse endpoint: the consumer's own service, and its ENI in the provider's VPC.
pub const CONSUMER_SERVICE: &str = "10.10.2.10";
pub const REVERSE_ENI: &str = "10.10.0.100";
/// The gateway endpoint: object storage addresses (the policy allows only the first) and
/// the route target in the consumer's VPC.
pub const OBJECT_STORAGE: [&str; 2] = ["100.64.10.5", "100.64.10.6"];
pub const GATEWAY: &str = "10.10.1.1";
/// The same over IPv6: the service's IPv6 prefix, its object storage addresses (the
/// policy allows only the first), the endpoint's IPv6 route target, the service's IPv6
/// SNAT address.
pub const OBJECT_STORAGE_PREFIX6: &str = "fd00:64:10::/64";
pub const OBJECT_STORAGE6: [&str; 2] = ["fd00:64:10::5", "fd00:64:10::6"];
pub const GATEWAY6: &str = "fd00:a:0:1::1";
pub const GATEWAY_SNAT6: &str = "fd00:b::202";
/// Size of the file both backends serve as /big.bin.
pub const BIG_FILE_LEN: usize = 1 << 20;

/// IPv6: epsrv-b and ep-a are dual stack. Each of the two VPCs has a /56 (they do not
/// overlap, unlike their IPv4 ranges: a reader tells the provider's addresses from the
/// consumer's at a glance); each vSwitch the /64 whose fourth group is its IPv4 /24's third
/// octet (vsw-a1 10.10.1.0/24: fd00:a:0:1::/64), and each address the IPv4 one's last
/// octet in its vSwitch's /64 (10.10.1.100: fd00:a:0:1::100).
pub const VPC_A6: &str = "fd00:a::/56";
pub const VPC_B6: &str = "fd00:b::/56";
/// ep-a's ENIs' IPv6 addresses (zone-a, zone-b).
pub const ENI6: &str = "fd00:a:0:1::100";
pub const ENI6_B: &str = "fd00:a:0:4::100";
/// The consumer's clients' IPv6 addresses on `c0` (zone-a, zone-b, zone-c; `CLIENT6` is
/// the source of the route to vpc-a's /56, so connections leave from it by default).
pub const CLIENT6: &str = "fd00:a:0:2::1";
pub const CLIENT6_B: &str = "fd00:a:0:5::1";
pub const CLIENT6_C: &str = "fd00:a:0:6::1";
/// Each zone's load balancer's IPv6 address (haproxy listens on it beside the IPv4 one).
pub const LB6: &str = "fd00:b::10";
pub const LB6_B: &str = "fd00:b:0:4::10";
pub const LBS6: [(&str, &str); 2] = [("zone-a", LB6), ("zone-b", LB6_B)];
/// epsrv-b's IPv6 SNAT addresses: the source the provider sees for IPv6 flows.
pub const SNAT6: [&str; 2] = ["fd00:b::200", "fd00:b::201"];
/// haproxy's log line for each IPv6 connection (its log format: client address and port,
/// the frontend address it reached, the backend that served it), in `haproxy.log` (zone-a)
/// and `haproxy-zone-b.log`: `conn6 from fd00:b::200 port 1025 to fd00:b::10 by ecs2`.
pub const HAPROXY_LOG6: &str = "conn6 from %ci port %cp to %fi by %s";

/// The GWLB scenario: a consumer VPC (10.30.0.0/16) whose client subnet and server subnet
/// reach each other through a GWLB endpoint, and an appliance VPC (10.40.0.0/16) with
/// one inspection appliance in each of two zones.
pub const GWLB_CLIENT: &str = "10.30.1.10";
pub const GWLB_SERVER: &str = "10.30.2.10";
pub const GWLB_ENI: &str = "10.30.0.5";
/// The GWLB scenario is dual stack: vpc-web's /56, each vSwitch the /64 named after its
/// IPv4 /24 (vsw-w1 10.30.1.0/24: fd00:30:0:1::/64), each IPv6 address the IPv4 one's last
/// octet in it. The endpoint's ENI answers neighbour discovery on `GWLB_ENI6`, the subnets'
/// IPv6 route target.
pub const GWLB_VPC6: &str = "fd00:30::/56";
pub const GWLB_CLIENT6: &str = "fd00:30:0:1::10";
pub const GWLB_SERVER6: &str = "fd00:30:0:2::10";
pub const GWLB_ENI6: &str = "fd00:30::5";
/// The load balancer's own address in the appliance VPC (GENEVE source, health checks).
pub const GWLB_ADDR: &str = "10.40.0.5";
pub const APPLIANCES: [(&str, &str); 2] = [("zone-a", "10.40.1.10"), ("zone-b", "10.40.2.10")];
pub const APPLIANCE_HEALTH_PORT: u16 = 8080;
/// The appliances drop TCP to this port of the server (their inspection rule).
pub const GWLB_BLOCKED_PORT: u16 = 8081;

pub struct LabOptions {
    /// Namespaces are `<prefix>-consumer`, `<prefix>-provider`, `<prefix>-fwd`.
    pub prefix: String,
    pub pin_dir: PathBuf,
    /// `Some(state)`: the daemon runs in declarative mode from this file. `None` (the
    /// default): API mode, and the lab is built through the CLI like the seed's console
    /// walkthrough.
    pub state_file: Option<String>,
    /// Also run a Prometheus server (Debian's `prometheus`) scraping the daemon's
    /// `/metrics` every second (`Lab::prometheus`).
    pub prometheus: bool,
}

impl LabOptions {
    pub fn new(prefix: &str, pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            prefix: prefix.to_string(),
            pin_dir: pin_dir.into(),
            state_file: None,
            prometheus: false,
        }
    }

    pub fn from_file(prefix: &str, pin_dir: impl Into<PathBuf>, state: &str) -> Self {
        Self {
            state_file: Some(state.to_string()),
            ..Self::new(prefix, pin_dir)
        }
    }
}

/// Tokens of the lab's parties (API mode).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub admin: String,
    pub consumer: String,
    pub provider: String,
}

/// The CLI session that builds the lab: (token holder, arguments). The README shows it.
pub const BUILD_STEPS: &[(&str, &str)] = &[
    ("admin", "account create acct-a --name consumer-A"),
    ("admin", "account create acct-b --name provider-B"),
    // Two zones in A's VPC (zone-c has clients but no ENI) and its resolver; B's VPC, two
    // zones, and the address the load balancers' health checks leave from. Both dual
    // stack: an IPv6 /56 each, a /64 per vSwitch.
    (
        "admin",
        "vpc create vpc-a --account acct-a --cidr 10.10.0.0/16 --ipv6-cidr fd00:a::/56 --interface fc0 --vswitch vsw-a1:zone-a:10.10.1.0/24,fd00:a:0:1::/64 --vswitch vsw-a2:zone-a:10.10.2.0/24,fd00:a:0:2::/64 --vswitch vsw-a4:zone-b:10.10.4.0/24,fd00:a:0:4::/64 --vswitch vsw-a5:zone-b:10.10.5.0/24,fd00:a:0:5::/64 --vswitch vsw-a6:zone-c:10.10.6.0/24,fd00:a:0:6::/64 --resolver 100.100.2.136",
    ),
    (
        "admin",
        "vpc create vpc-b --account acct-b --cidr 10.10.0.0/16 --ipv6-cidr fd00:b::/56 --interface fp0 --vswitch vsw-b0:zone-a:10.10.0.0/24,fd00:b::/64 --vswitch vsw-b3:zone-a:10.10.3.0/24,fd00:b:0:3::/64 --vswitch vsw-b4:zone-b:10.10.4.0/24,fd00:b:0:4::/64 --probe-address 10.10.0.250",
    ),
    // One load balancer per zone (an IPv4 and an IPv6 address each: the service is dual
    // stack, with IPv6 SNAT addresses), checked every 200 ms on haproxy's monitor; a
    // custom domain the operator verifies.
    (
        "provider",
        "service create epsrv-b --vpc vpc-b --ip-version dualstack --backend zone-a:10.10.0.10,fd00:b::10 --backend zone-b:10.10.4.10,fd00:b:0:4::10 --snat 10.10.0.200 --snat 10.10.0.201 --snat6 fd00:b::200 --snat6 fd00:b::201 --listener tcp:80 --domain web.provider-b.example --health-port 8404 --health-path /health --health-interval-ms 200 --health-timeout-ms 300",
    ),
    ("admin", "service domain-verify epsrv-b"),
    ("provider", "service whitelist add epsrv-b acct-a"),
    // A dual-stack ENI in each zone; the custom domain resolves in vpc-a.
    (
        "consumer",
        "endpoint create ep-a --vpc vpc-a --service epsrv-b --ip-version dualstack --zone vsw-a1:10.10.1.100,fd00:a:0:1::100 --zone vsw-a4:10.10.4.100,fd00:a:0:4::100 --name web --service-domain on",
    ),
    ("provider", "connection accept epsrv-b ep-a"),
    // The reverse direction: A publishes a service in its own VPC, B reaches it.
    (
        "consumer",
        "service create epsrv-a --vpc vpc-a --backend zone-a:10.10.2.10 --snat 10.10.2.200 --listener tcp:80 --auto-accept",
    ),
    ("consumer", "service whitelist add epsrv-a acct-b"),
    (
        "provider",
        "endpoint create ep-b --vpc vpc-b --service epsrv-a --zone vsw-b0:10.10.0.100 --name reverse",
    ),
    // A gateway endpoint, dual stack: B's object storage prefixes, routed by A's VPC to
    // 10.10.1.1 and fd00:a:0:1::1 (the zone's load balancer the next hop); the endpoint
    // policy lets A reach only 100.64.10.5:80 and [fd00:64:10::5]:80.
    (
        "provider",
        "service create epsrv-oss --type gateway --vpc vpc-b --ip-version dualstack --prefix 100.64.10.0/24 --prefix fd00:64:10::/64 --backend zone-a:10.10.0.10,fd00:b::10 --snat 10.10.0.202 --snat6 fd00:b::202 --listener tcp:80 --auto-accept",
    ),
    ("provider", "service whitelist add epsrv-oss acct-a"),
    (
        "consumer",
        "endpoint create ep-oss --vpc vpc-a --service epsrv-oss --ip-version dualstack --gateway 10.10.1.1 --gateway6 fd00:a:0:1::1 --policy accept,tcp,100.64.10.5/32,80-80 --policy accept,tcp,fd00:64:10::5/128,80-80",
    ),
    // GWLB: A's second VPC sends traffic between its two subnets through B's inspection
    // appliances (one per zone; cross-zone; flows move when an appliance fails), over IPv4
    // and IPv6 (the VPC, the service and the endpoint dual stack).
    (
        "admin",
        "vpc create vpc-web --account acct-a --cidr 10.30.0.0/16 --ipv6-cidr fd00:30::/56 --interface fw0 --vswitch vsw-w0:zone-a:10.30.0.0/24,fd00:30::/64 --vswitch vsw-w1:zone-a:10.30.1.0/24,fd00:30:0:1::/64 --vswitch vsw-w2:zone-b:10.30.2.0/24,fd00:30:0:2::/64 --resolver 100.100.2.136",
    ),
    (
        "admin",
        "vpc create vpc-appl --account acct-b --cidr 10.40.0.0/16 --interface fa0 --vswitch vsw-g0:zone-a:10.40.0.0/24 --vswitch vsw-g1:zone-a:10.40.1.0/24 --vswitch vsw-g2:zone-b:10.40.2.0/24",
    ),
    (
        "provider",
        "service create gwlb-svc --type gwlb --ip-version dualstack --vpc vpc-appl --appliance zone-a=10.40.1.10 --appliance zone-b=10.40.2.10 --gwlb-address 10.40.0.5 --cross-zone --failover rebalance --health-port 8080 --health-path /health --health-interval-ms 200 --health-timeout-ms 300 --auto-accept",
    ),
    ("provider", "service whitelist add gwlb-svc acct-a"),
    (
        "consumer",
        "endpoint create gwlbe-web --vpc vpc-web --service gwlb-svc --ip-version dualstack --zone vsw-w0:10.30.0.5,fd00:30::5 --route 10.30.1.0/24 --route 10.30.2.0/24 --route fd00:30:0:1::/64 --route fd00:30:0:2::/64 --name inspection",
    ),
];

pub struct Lab {
    // Drop order matters: processes first, then namespaces, then files.
    children: Vec<(String, Child)>,
    pub consumer: Netns,
    pub provider: Netns,
    pub fwd: Netns,
    /// The on-premises network: BIND on `ONPREM_BIND`, forwarding the names' zone to the
    /// daemon's external listener.
    pub onprem: Netns,
    /// GWLB scenario (API mode): the client namespace (a bridge: the VPC's L2 segment),
    /// the server namespace, the appliances' namespace.
    pub gwlb: Option<GwlbNs>,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    /// The API's base URL (API mode).
    pub api: Option<String>,
    pub tokens: Tokens,
    file_mode: bool,
    /// The daemon's metrics address (`--metrics-listen`, on the host's loopback: bound
    /// before the daemon enters the forwarder's namespace), kept across restarts.
    pub metrics_addr: String,
    /// The Prometheus server's base URL (with `LabOptions::prometheus`).
    pub prometheus: Option<String>,
}

/// Where the `privatelink` binary is: next to this executable (or one level up, for
/// test binaries in target/*/deps), or $PRIVATELINK_BIN.
pub fn privatelink_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PRIVATELINK_BIN") {
        return Ok(p.into());
    }
    bin("privatelink")
}

/// Where the lab's binary `name` (`pl-appliance`, `pl-xdp-pass`, ...) is: next to this
/// executable, or one level up (test binaries in target/*/deps).
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} binary not found near {} (build it with `cargo build --bins`)",
        exe.display()
    )
}

pub struct GwlbNs {
    pub web: Netns,
    pub server: Netns,
    pub appl: Netns,
}

impl Lab {
    pub fn up(opts: &LabOptions) -> Result<Self> {
        let daemon = privatelink_bin()?;
        let dir = std::env::temp_dir().join(format!("privatelink-lab-{}", opts.prefix));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let _ = fs::remove_dir_all(&opts.pin_dir);

        let consumer = Netns::create(&format!("{}-consumer", opts.prefix))?;
        let provider = Netns::create(&format!("{}-provider", opts.prefix))?;
        let fwd = Netns::create(&format!("{}-fwd", opts.prefix))?;
        let onprem = Netns::create(&format!("{}-onprem", opts.prefix))?;
        let gwlb = match opts.state_file {
            Some(_) => None,
            None => Some(GwlbNs {
                web: Netns::create(&format!("{}-web", opts.prefix))?,
                server: Netns::create(&format!("{}-wsrv", opts.prefix))?,
                appl: Netns::create(&format!("{}-appl", opts.prefix))?,
            }),
        };
        let mut lab = Lab {
            children: Vec::new(),
            consumer,
            provider,
            fwd,
            onprem,
            gwlb,
            dir,
            pin_dir: opts.pin_dir.clone(),
            api: None,
            tokens: Tokens::default(),
            file_mode: opts.state_file.is_some(),
            metrics_addr: format!("127.0.0.1:{}", free_port()?),
            prometheus: None,
        };
        lab.wire()?;
        // Frames that XDP redirects into a veth reach the far end only if an XDP program
        // runs there (GRO alone did not deliver them on this kernel).
        let mut peers = vec![
            (lab.consumer.name.clone(), "c0"),
            (lab.provider.name.clone(), "p0"),
        ];
        if let Some(g) = &lab.gwlb {
            lab.wire_gwlb(g)?;
            peers.push((g.web.name.clone(), "w0"));
            peers.push((g.appl.name.clone(), "a0"));
        }
        let xdp_pass = bin("pl-xdp-pass")?;
        for (ns, dev) in peers {
            let mut cmd = std::process::Command::new(&xdp_pass);
            cmd.args(["--netns", &ns, dev]);
            let child = spawn_logged(&lab.dir, &format!("xdp-pass-{dev}"), &mut cmd)?;
            lab.children.push((format!("xdp-pass-{dev}"), child));
        }
        lab.start_provider()?;
        lab.start_consumer_service()?;
        lab.start_object_storage()?;
        if lab.gwlb.is_some() {
            lab.start_gwlb_servers()?;
        }
        match &opts.state_file {
            Some(state) => lab.start_daemon(&daemon, state)?,
            None => {
                lab.spawn_daemon(&daemon)?;
                lab.build_through_api()?;
            }
        }
        lab.start_onprem_bind()?;
        if opts.prometheus {
            lab.start_prometheus()?;
        }
        Ok(lab)
    }

    /// The daemon's metrics URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// A Prometheus server on the host's loopback, scraping the daemon every second (its
    /// configuration and storage in `<dir>/prometheus`); returns once it is ready and has
    /// the daemon as a target (20 s at most).
    fn start_prometheus(&mut self) -> Result<()> {
        let d = self.dir.join("prometheus");
        fs::create_dir_all(&d)?;
        let conf = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: privatelink\n    static_configs:\n      \
             - targets: ['{}']\n",
            self.metrics_addr
        );
        let conf_path = d.join("prometheus.yml");
        fs::write(&conf_path, conf)?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = std::process::Command::new("prometheus");
        cmd.arg(format!("--config.file={}", conf_path.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address={listen}"));
        let child = spawn_logged(&self.dir, "prometheus", &mut cmd)?;
        self.children.push(("prometheus".into(), child));
        let url = format!("http://{listen}");
        let ready = format!("{url}/-/ready");
        let start = Instant::now();
        while netns::run(std::process::Command::new("curl").args(["-sf", "-m", "1", &ready]))
            .is_err()
        {
            let exited = self
                .children
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "prometheus {} (log: {}): {}",
                    match exited {
                        Some(status) => format!("exited ({status})"),
                        None => "not ready after 20 s".into(),
                    },
                    self.dir.join("prometheus.log").display(),
                    self.log("prometheus")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.prometheus = Some(url);
        Ok(())
    }

    /// Prometheus's answer to the instant query `query` (its HTTP API): the result's
    /// series, each with its labels (`metric`) and `value` [time, "value"].
    pub fn prometheus_query(&self, query: &str) -> Result<Vec<serde_json::Value>> {
        let url = self
            .prometheus
            .as_deref()
            .context("no Prometheus in this lab")?;
        let out = netns::run(std::process::Command::new("curl").args([
            "-sS",
            "--fail",
            "-m",
            "5",
            "-G",
            &format!("{url}/api/v1/query"),
            "--data-urlencode",
            &format!("query={query}"),
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if v["status"] != "success" {
            bail!("prometheus query {query}: {v}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    fn wire(&self) -> Result<()> {
        let (c, p, f) = (&self.consumer.name, &self.provider.name, &self.fwd.name);
        netns::ip(&[
            "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "fc0", "netns", f,
        ])?;
        netns::ip(&[
            "link", "add", "p0", "netns", p, "type", "veth", "peer", "name", "fp0", "netns", f,
        ])?;
        // CLIENT first: the address the consumer's connections leave from by default.
        for a in [CLIENT, CLIENT_B, CLIENT_C] {
            self.consumer
                .ip(&["addr", "add", &format!("{a}/16"), "dev", "c0"])?;
        }
        for a in [LB, BACKENDS[0], BACKENDS[1], LB_B] {
            self.provider
                .ip(&["addr", "add", &format!("{a}/16"), "dev", "p0"])?;
        }
        for dev in ["fc0", "fp0"] {
            self.fwd.ip(&["link", "set", dev, "up"])?;
        }
        for (ns, dev) in [(&self.consumer, "c0"), (&self.provider, "p0")] {
            ns.ip(&["link", "set", dev, "up"])?;
            // Checksums must be complete on the wire: a redirected frame loses the
            // kernel's checksum-offload state.
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        // The VPC's resolver is on-link, outside its range: the forwarder answers ARP for
        // it and the daemon serves DNS on it.
        self.consumer
            .ip(&["route", "add", &format!("{RESOLVER}/32"), "dev", "c0"])?;
        self.consumer.set_resolver(RESOLVER)?;
        // On premises: a plain veth to the forwarder's kernel (no XDP: not a VPC).
        let o = &self.onprem.name;
        netns::ip(&[
            "link", "add", "o0", "netns", o, "type", "veth", "peer", "name", "fo0", "netns", f,
        ])?;
        self.onprem
            .ip(&["addr", "add", &format!("{ONPREM_BIND}/24"), "dev", "o0"])?;
        self.fwd
            .ip(&["addr", "add", &format!("{ONPREM_FWD}/24"), "dev", "fo0"])?;
        self.onprem.ip(&["link", "set", "o0", "up"])?;
        self.fwd.ip(&["link", "set", "fo0", "up"])?;
        self.onprem.set_resolver(ONPREM_BIND)?;
        // Only the XDP program forwards in the forwarder.
        self.fwd.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
        self.fwd
            .exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=0"])?;
        self.wire6()
    }

    /// The VPCs' IPv6 addresses: the consumer's clients and the provider's load balancers
    /// (haproxy reaches the backends over IPv4, inside the provider's VPC), each VPC's /56
    /// on-link on its veth (as the IPv4 /16: the forwarder answers neighbour solicitations
    /// for the ENIs' and SNAT addresses). `nodad`: an address is usable at once (haproxy
    /// binds it; no test waits out duplicate address detection).
    fn wire6(&self) -> Result<()> {
        for a in [CLIENT6, CLIENT6_B, CLIENT6_C] {
            self.consumer
                .ip(&["addr", "add", &format!("{a}/64"), "dev", "c0", "nodad"])?;
        }
        self.consumer
            .ip(&["-6", "route", "add", VPC_A6, "dev", "c0", "src", CLIENT6])?;
        for a in [LB6, LB6_B] {
            self.provider
                .ip(&["addr", "add", &format!("{a}/64"), "dev", "p0", "nodad"])?;
        }
        self.provider
            .ip(&["-6", "route", "add", VPC_B6, "dev", "p0", "src", LB6])?;
        Ok(())
    }

    fn start_provider(&mut self) -> Result<()> {
        let d = self.dir.clone();
        let big: Vec<u8> = (0..BIG_FILE_LEN)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (name, addr) in [("ecs2", BACKENDS[0]), ("ecs3", BACKENDS[1])] {
            let root = d.join(name);
            fs::create_dir_all(&root)?;
            fs::write(
                root.join("index.html"),
                format!("{} backend {addr}\n", name.to_uppercase()),
            )?;
            fs::write(root.join("big.bin"), &big)?;
        }
        // Each backend serves zone i's load balancer on port 80 + i, saying which zone.
        let mut sites = Vec::new();
        for (i, (zone, _)) in LBS.iter().enumerate() {
            for (site, addr) in [("ecs2", BACKENDS[0]), ("ecs3", BACKENDS[1])] {
                sites.push((
                    site,
                    format!("{addr}:{}", 80 + i),
                    format!("add_header {ZONE_HEADER} {zone} always;"),
                ));
            }
        }
        let sites: Vec<(&str, &str, &str)> = sites
            .iter()
            .map(|(s, l, h)| (*s, l.as_str(), h.as_str()))
            .collect();
        self.start_nginx("nginx", &self.provider.name.clone(), &sites)?;
        // The IPv6 frontend logs each connection (`HAPROXY_LOG6`): who the provider saw.
        for (i, ((_, lb), (_, lb6))) in LBS.iter().zip(LBS6).enumerate() {
            let haproxy_cfg = format!(
                "global\n  maxconn 8192\n  log stdout format raw local0\n\ndefaults\n  mode tcp\n  \
                 timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\n\
                 frontend internal_lb\n  bind {lb}:80\n  default_backend ecs\n\n\
                 frontend internal_lb6\n  bind [{lb6}]:80\n  log global\n  log-format \"{HAPROXY_LOG6}\"\n  \
                 default_backend ecs\n\n\
                 backend ecs\n  balance roundrobin\n  server ecs2 {}:{port}\n  server ecs3 {}:{port}\n\n\
                 frontend health\n  mode http\n  bind {lb}:{LB_HEALTH_PORT}\n  monitor-uri {LB_HEALTH_PATH}\n",
                BACKENDS[0],
                BACKENDS[1],
                port = 80 + i,
            );
            fs::write(self.haproxy_cfg(i), haproxy_cfg)?;
            self.start_load_balancer(i)?;
        }
        Ok(())
    }

    /// Zone `i`'s load balancer (`LBS`): its process's name in the lab and its
    /// configuration file. Zone-a's keeps the lab's original names.
    fn haproxy_name(i: usize) -> String {
        match i {
            0 => "haproxy".into(),
            _ => format!("haproxy-{}", LBS[i].0),
        }
    }

    fn haproxy_cfg(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.cfg", Self::haproxy_name(i)))
    }

    /// Starts zone `i`'s load balancer (`LBS`: 0 zone-a, 1 zone-b) — again, after
    /// `stop_load_balancer`; returns once it answers on its address (10 s at most).
    pub fn start_load_balancer(&mut self, i: usize) -> Result<()> {
        let ((zone, lb), (_, lb6)) = (LBS[i], LBS6[i]);
        let cfg = self.haproxy_cfg(i);
        self.spawn(
            &Self::haproxy_name(i),
            &self.provider.name.clone(),
            "haproxy",
            &["-db", "-f", path(&cfg)],
        )?;
        // The load balancer is up when the backends answer through it on both its
        // addresses and its monitor answers the health checks.
        wait_for(
            Duration::from_secs(10),
            &format!("{zone}'s haproxy and nginx to answer"),
            || {
                [
                    format!("http://{lb}/"),
                    format!("http://[{lb6}]/"),
                    format!("http://{lb}:{LB_HEALTH_PORT}{LB_HEALTH_PATH}"),
                ]
                .iter()
                .all(|url| self.provider.exec("curl", &["-sf", "-m", "2", url]).is_ok())
            },
        )
    }

    /// Stops zone `i`'s load balancer (its process; the address stays, nothing listens:
    /// connections to it are refused).
    pub fn stop_load_balancer(&mut self, i: usize) -> Result<()> {
        let name = Self::haproxy_name(i);
        let at = self
            .children
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("{name} is not running"))?;
        let (_, mut child) = self.children.remove(at);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// An nginx in namespace `ns` serving `<dir>/<site>/` on `<addr>:80` (or the
    /// `<addr>:<port>` given) for each (site, address, extra server directives).
    fn start_nginx(&mut self, name: &str, ns: &str, sites: &[(&str, &str, &str)]) -> Result<()> {
        let d = self.dir.join(name);
        let tmp = d.join("tmp");
        fs::create_dir_all(&tmp)?;
        let mut servers = String::new();
        for (site, addr, extra) in sites {
            let listen = if addr.contains(':') {
                addr.to_string()
            } else {
                format!("{addr}:80")
            };
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" {extra}")
            };
            writeln!(
                servers,
                "  server {{ listen {listen}; root {};{extra} }}",
                self.dir.join(site).display()
            )?;
        }
        let conf = format!(
            "worker_processes 1;\npid {pid};\nerror_log {err};\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  \
             fastcgi_temp_path {t}/fcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  \
             keepalive_requests 1000;\n{servers}}}\n",
            pid = d.join("nginx.pid").display(),
            err = d.join("error.log").display(),
            t = tmp.display(),
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let err_log = d.join("error.log");
        self.spawn(
            name,
            ns,
            "nginx",
            &[
                "-e",
                path(&err_log),
                "-c",
                path(&conf_path),
                "-g",
                "daemon off;",
            ],
        )
    }

    /// The gateway endpoint's service: "object storage" on 100.64.10.5 and .6, and on
    /// fd00:64:10::5 and ::6, in the provider's namespace, which the consumer's VPC routes
    /// via 10.10.1.1 and fd00:a:0:1::1 (resolved by neighbour discovery, which the
    /// forwarder answers).
    fn start_object_storage(&mut self) -> Result<()> {
        let mut sites = Vec::new();
        for (i, a) in OBJECT_STORAGE.iter().chain(&OBJECT_STORAGE6).enumerate() {
            let site = format!("oss-{i}");
            let root = self.dir.join(&site);
            fs::create_dir_all(&root)?;
            fs::write(root.join("index.html"), format!("object storage {a}\n"))?;
            let listen = if a.contains(':') {
                // `nodad`, as in `wire6`.
                self.provider
                    .ip(&["addr", "add", &format!("{a}/128"), "dev", "p0", "nodad"])?;
                format!("[{a}]:80")
            } else {
                self.provider
                    .ip(&["addr", "add", &format!("{a}/32"), "dev", "p0"])?;
                a.to_string()
            };
            sites.push((site, listen));
        }
        self.consumer.ip(&[
            "route",
            "add",
            "100.64.10.0/24",
            "via",
            GATEWAY,
            "dev",
            "c0",
        ])?;
        self.consumer.ip(&[
            "-6",
            "route",
            "add",
            OBJECT_STORAGE_PREFIX6,
            "via",
            GATEWAY6,
            "dev",
            "c0",
            "src",
            CLIENT6,
        ])?;
        let sites: Vec<(&str, &str, &str)> = sites
            .iter()
            .map(|(s, a)| (s.as_str(), a.as_str(), ""))
            .collect();
        self.start_nginx("nginx-storage", &self.provider.name.clone(), &sites)
    }

    /// The reverse direction: a service in the consumer's VPC (nginx on 10.10.2.10) that
    /// the provider's VPC reaches through its own endpoint.
    fn start_consumer_service(&mut self) -> Result<()> {
        let root = self.dir.join("consumer-svc");
        fs::create_dir_all(&root)?;
        fs::write(root.join("index.html"), "consumer service 10.10.2.10\n")?;
        self.consumer.ip(&[
            "addr",
            "add",
            &format!("{CONSUMER_SERVICE}/16"),
            "dev",
            "c0",
        ])?;
        self.start_nginx(
            "nginx-consumer",
            &self.consumer.name.clone(),
            &[("consumer-svc", CONSUMER_SERVICE, "")],
        )
    }

    /// The GWLB scenario's wiring: the client namespace holds the consumer VPC's L2
    /// segment (bridge br0 joining the forwarder's fw0 and the server's veth); each subnet
    /// routes the other through the GWLB endpoint's ENI, over IPv4 and IPv6 (`nodad`, as in
    /// `wire6`; the next hop `GWLB_ENI6` is resolved by neighbour discovery, which the
    /// forwarder answers). The appliances share one namespace on the appliance VPC's
    /// segment; the forwarder holds the load balancer's address there (fa0), so health
    /// checks have a source.
    fn wire_gwlb(&self, g: &GwlbNs) -> Result<()> {
        let (w, s, a, f) = (&g.web.name, &g.server.name, &g.appl.name, &self.fwd.name);
        netns::ip(&[
            "link", "add", "w0", "netns", w, "type", "veth", "peer", "name", "fw0", "netns", f,
        ])?;
        netns::ip(&[
            "link", "add", "ws0", "netns", w, "type", "veth", "peer", "name", "ws1", "netns", s,
        ])?;
        netns::ip(&[
            "link", "add", "a0", "netns", a, "type", "veth", "peer", "name", "fa0", "netns", f,
        ])?;
        g.web.ip(&["link", "add", "br0", "type", "bridge"])?;
        for dev in ["w0", "ws0"] {
            g.web.ip(&["link", "set", dev, "master", "br0"])?;
        }
        g.web
            .ip(&["addr", "add", &format!("{GWLB_CLIENT}/24"), "dev", "br0"])?;
        g.server
            .ip(&["addr", "add", &format!("{GWLB_SERVER}/24"), "dev", "ws1"])?;
        for (_, addr) in APPLIANCES {
            g.appl
                .ip(&["addr", "add", &format!("{addr}/16"), "dev", "a0"])?;
        }
        self.fwd
            .ip(&["addr", "add", &format!("{GWLB_ADDR}/16"), "dev", "fa0"])?;
        for dev in ["fw0", "fa0"] {
            self.fwd.ip(&["link", "set", dev, "up"])?;
        }
        for (ns, devs) in [
            (&g.web, &["w0", "ws0", "br0"][..]),
            (&g.server, &["ws1"][..]),
            (&g.appl, &["a0"][..]),
        ] {
            for dev in devs {
                ns.ip(&["link", "set", dev, "up"])?;
                ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
            }
        }
        for (ns, dev, other) in [
            (&g.web, "br0", "10.30.2.0/24"),
            (&g.server, "ws1", "10.30.1.0/24"),
        ] {
            ns.ip(&["route", "add", GWLB_ENI, "dev", dev])?;
            ns.ip(&["route", "add", other, "via", GWLB_ENI, "dev", dev])?;
        }
        for (ns, dev, own6, other6) in [
            (&g.web, "br0", GWLB_CLIENT6, "fd00:30:0:2::/64"),
            (&g.server, "ws1", GWLB_SERVER6, "fd00:30:0:1::/64"),
        ] {
            ns.ip(&["addr", "add", &format!("{own6}/64"), "dev", dev, "nodad"])?;
            ns.ip(&["-6", "route", "add", GWLB_ENI6, "dev", dev])?;
            ns.ip(&["-6", "route", "add", other6, "via", GWLB_ENI6, "dev", dev])?;
        }
        // vpc-web has the same resolver address as vpc-a (VPCs overlap; each gets its own
        // VPC's answers).
        g.web
            .ip(&["route", "add", &format!("{RESOLVER}/32"), "dev", "br0"])?;
        g.web.set_resolver(RESOLVER)?;
        Ok(())
    }

    /// The server behind the GWLB endpoint (nginx on :80 and the port the appliances
    /// block, on both its addresses) and the two appliances.
    fn start_gwlb_servers(&mut self) -> Result<()> {
        let root = self.dir.join("web-srv");
        fs::create_dir_all(&root)?;
        fs::write(
            root.join("index.html"),
            format!("web server {GWLB_SERVER}\n"),
        )?;
        let big: Vec<u8> = (0..8 * BIG_FILE_LEN)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        fs::write(root.join("big.bin"), &big)?;
        let blocked = format!("{GWLB_SERVER}:{GWLB_BLOCKED_PORT}");
        let (web6, blocked6) = (
            format!("[{GWLB_SERVER6}]:80"),
            format!("[{GWLB_SERVER6}]:{GWLB_BLOCKED_PORT}"),
        );
        let server = self
            .gwlb
            .as_ref()
            .context("no GWLB scenario")?
            .server
            .name
            .clone();
        self.start_nginx(
            "nginx-web",
            &server,
            &[
                ("web-srv", GWLB_SERVER, ""),
                ("web-srv", &blocked, ""),
                ("web-srv", &web6, ""),
                ("web-srv", &blocked6, ""),
            ],
        )?;
        for i in 0..APPLIANCES.len() {
            self.start_appliance(i)?;
        }
        Ok(())
    }

    /// Starts appliance `i` (0: zone-a, 1: zone-b) — again, after `kill_appliance`.
    pub fn start_appliance(&mut self, i: usize) -> Result<()> {
        let (zone, addr) = APPLIANCES[i];
        let name = format!("appliance-{zone}");
        let ns = self
            .gwlb
            .as_ref()
            .context("no GWLB scenario")?
            .appl
            .name
            .clone();
        let stats = self.appliance_stats_file(i);
        let _ = fs::remove_file(&stats); // a restarted appliance counts from zero
        let mut cmd = std::process::Command::new(bin("pl-appliance")?);
        cmd.args([
            "--netns",
            &ns,
            "--listen",
            &format!("{addr}:6081"),
            "--health",
            &format!("{addr}:{APPLIANCE_HEALTH_PORT}"),
            "--drop",
            &format!("tcp:{GWLB_BLOCKED_PORT}"),
            "--stats-file",
            path(&stats),
        ]);
        let child = spawn_logged(&self.dir, &name, &mut cmd)?;
        self.children.push((name, child));
        Ok(())
    }

    /// Kills appliance `i` (its process; the address stays, nothing listens).
    pub fn kill_appliance(&mut self, i: usize) -> Result<()> {
        let name = format!("appliance-{}", APPLIANCES[i].0);
        let at = self
            .children
            .iter()
            .position(|(n, _)| *n == name)
            .context("appliance not running")?;
        let (_, mut child) = self.children.remove(at);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    pub fn appliance_stats_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("appliance-{}.json", APPLIANCES[i].0))
    }

    /// What appliance `i` has counted (empty before its first packet).
    pub fn appliance_stats(&self, i: usize) -> serde_json::Value {
        fs::read_to_string(self.appliance_stats_file(i))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `curl` from the GWLB scenario's client; returns the body.
    pub fn web_curl(&self, url: &str, extra: &[&str]) -> Result<Vec<u8>> {
        let g = self.gwlb.as_ref().context("no GWLB scenario")?;
        curl_in(&g.web, url, &[&["-m", "20"], extra].concat())
    }

    /// The on-premises resolver: Debian's BIND (`named`, in the foreground, as root, every
    /// file in the lab's directory) in `<p>-onprem`, recursive for the on-premises
    /// network, forwarding only the names' zone, to the daemon's external listener, as
    /// seed 001's on-premises BIND does. No DNSSEC validation: the lab has no root to
    /// validate from. Returns once BIND answers (10 s at most).
    fn start_onprem_bind(&mut self) -> Result<()> {
        let d = self.dir.join("onprem");
        fs::create_dir_all(&d)?;
        let conf = format!(
            r#"options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  listen-on {{ {ONPREM_BIND}; }};
  listen-on-v6 {{ none; }};
  recursion yes;
  allow-query {{ any; }};
  allow-recursion {{ {ONPREM_NET}; localhost; }};
  dnssec-validation no;
}};
controls {{ }};
zone "{DNS_APEX}" {{
  type forward;
  forward only;
  forwarders {{ {ONPREM_FWD} port 53; }};
}};
"#,
            d = d.display()
        );
        let conf_path = d.join("named.conf");
        fs::write(&conf_path, conf)?;
        self.spawn(
            "named",
            &self.onprem.name.clone(),
            "named",
            &["-g", "-c", path(&conf_path)],
        )?;
        // BIND answers its own version query: it is up, whatever the daemon says.
        let start = Instant::now();
        loop {
            let up = self
                .onprem
                .exec(
                    "dig",
                    &[
                        "+short",
                        "+time=1",
                        "+tries=1",
                        &format!("@{ONPREM_BIND}"),
                        "version.bind",
                        "chaos",
                        "txt",
                    ],
                )
                .is_ok_and(|out| !out.trim().is_empty());
            if up {
                return Ok(());
            }
            let exited = self
                .children
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(10) {
                // BIND's banner is long: its last lines say why.
                let log = self.log("named");
                let mut tail: Vec<&str> = log.lines().rev().take(6).collect();
                tail.reverse();
                bail!(
                    "on-premises BIND {} (log: {}): {}",
                    match exited {
                        Some(status) => format!("exited ({status})"),
                        None => "not answering after 10 s".into(),
                    },
                    self.dir.join("named.log").display(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_daemon(&mut self, daemon: &Path, state: &str) -> Result<()> {
        fs::write(self.state_file(), state)?;
        self.spawn_daemon(daemon)
    }

    /// Runs the seed's console steps through the CLI.
    fn build_through_api(&mut self) -> Result<()> {
        self.tokens.admin = fs::read_to_string(self.dir.join("data/admin.token"))?
            .trim()
            .to_string();
        for (who, args) in BUILD_STEPS {
            let out = self.cli(who, &args.split_whitespace().collect::<Vec<_>>())?;
            if let Some(id) = args
                .strip_prefix("account create ")
                .and_then(|a| a.split_whitespace().next())
            {
                let v: serde_json::Value = serde_json::from_str(&out)?;
                let token = v["token"]
                    .as_str()
                    .context("no token in the answer")?
                    .to_string();
                match id {
                    "acct-a" => self.tokens.consumer = token,
                    _ => self.tokens.provider = token,
                }
            }
        }
        Ok(())
    }

    pub fn token<'a>(&'a self, who: &'a str) -> &'a str {
        match who {
            "admin" => &self.tokens.admin,
            "consumer" => &self.tokens.consumer,
            "provider" => &self.tokens.provider,
            other => other,
        }
    }

    /// `privatelink --json <args>` against the lab's API with the token of `who`
    /// ("admin", "consumer", "provider"); the JSON answer.
    pub fn cli(&self, who: &str, args: &[&str]) -> Result<String> {
        let api = self.api.as_deref().context("the lab runs in file mode")?;
        netns::run(
            std::process::Command::new(privatelink_bin()?)
                .args(["--json", "--api", api, "--token", self.token(who)])
                .args(args)
                .env_remove("PRIVATELINK_TOKEN"),
        )
    }

    fn spawn_daemon(&mut self, daemon: &Path) -> Result<()> {
        let state_file = self.state_file();
        let ready = self.dir.join("daemon.ready");
        let _ = fs::remove_file(&ready);
        let pin_dir = self.pin_dir.clone();
        let data_dir = self.dir.join("data");
        let dns_listen = format!("{ONPREM_FWD}:53");
        let mut args = vec![
            "daemon",
            "--pin-dir",
            path(&pin_dir),
            "--ready-file",
            path(&ready),
            "--netns",
            &self.fwd.name,
            // The names: under lab-1.privatelink.example, served to on-premises
            // resolvers on the forwarder's end of the on-premises veth.
            "--dns-listen",
            &dns_listen,
            "--dns-suffix",
            DNS_SUFFIX,
            "--dns-region",
            DNS_REGION,
        ];
        if self.file_mode {
            args.extend(["--state", path(&state_file)]);
        } else {
            args.extend(["--data-dir", path(&data_dir), "--listen", "127.0.0.1:0"]);
        }
        let metrics_addr = self.metrics_addr.clone();
        args.extend(["--metrics-listen", &metrics_addr]);
        let child = spawn_logged(
            &self.dir,
            "privatelink",
            std::process::Command::new(daemon).args(args),
        )?;
        self.children.push(("privatelink".into(), child));
        let start = Instant::now();
        while !ready.exists() {
            if let Some(status) = self
                .children
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten())
            {
                bail!(
                    "privatelink daemon exited ({status}): {}",
                    self.log("privatelink")
                );
            }
            // (Loading verifies every path program, IPv4 and IPv6: about 20 s on a
            // 2-CPU machine, longer while other labs load theirs.)
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "privatelink daemon not ready after 60 s: {}",
                    self.log("privatelink")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.file_mode {
            self.api = Some(fs::read_to_string(&ready)?.trim().to_string());
        }
        Ok(())
    }

    /// Stops the daemon with `signal` (SIGTERM, or SIGKILL for a crash) and starts it
    /// again; returns once the new one is ready.
    pub fn restart_daemon(&mut self, signal: i32) -> Result<Duration> {
        self.stop_daemon(signal)?;
        self.resume_daemon()
    }

    /// Ends the daemon with `signal` and waits for it; the pinned data path stays.
    pub fn stop_daemon(&mut self, signal: i32) -> Result<()> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == "privatelink")
            .context("daemon not running")?;
        let (_, mut child) = self.children.remove(i);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait()?;
        Ok(())
    }

    /// Starts the daemon again after `stop_daemon`; returns the time to ready.
    pub fn resume_daemon(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.spawn_daemon(&privatelink_bin()?)?;
        Ok(t.elapsed())
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.toml")
    }

    /// Rewrites the state file and makes the daemon reload it (SIGHUP).
    pub fn reload_state(&mut self, state: &str) -> Result<()> {
        fs::write(self.state_file(), state)?;
        let pid = self
            .child_pid("privatelink")
            .context("daemon not running")?;
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        Ok(())
    }

    /// The pid of a process the lab started (`privatelink` is the daemon).
    pub fn child_pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    fn spawn(&mut self, name: &str, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        let child = spawn_logged(&self.dir, name, &mut cmd)?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// The log of a process the lab started.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `curl` from the consumer's client; returns the body.
    pub fn curl(&self, url: &str) -> Result<Vec<u8>> {
        curl_in(&self.consumer, url, &["-m", "10"])
    }

    /// `curl -6 <extra> <url>` from the consumer's client (IPv6 only, a name resolved
    /// with AAAA); returns the body.
    pub fn curl6(&self, url: &str, extra: &[&str]) -> Result<Vec<u8>> {
        curl_in(&self.consumer, url, &[&["-6", "-m", "10"], extra].concat())
    }

    /// The IPv6 connections zone `i`'s load balancer (`LBS6`) logged, in order: (client
    /// address, client port, the address it reached, the backend that served it), from its
    /// `HAPROXY_LOG6` lines.
    pub fn lb_connections6(&self, i: usize) -> Vec<(String, u16, String, String)> {
        self.log(&Self::haproxy_name(i))
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w[..] {
                    [
                        "conn6",
                        "from",
                        client,
                        "port",
                        port,
                        "to",
                        at,
                        "by",
                        server,
                    ] => Some((
                        client.to_string(),
                        port.parse().ok()?,
                        at.to_string(),
                        server.to_string(),
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    /// Whether a short request through `url` succeeds (2 s limit).
    pub fn reachable(&self, url: &str) -> bool {
        self.consumer
            .command("curl")
            .args(["-s", "-o", "/dev/null", "--fail", "-m", "2", url])
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `privatelink flows` output lines (one per original-direction flow).
    pub fn flow_lines(&self) -> Result<Vec<String>> {
        let out = netns::run(std::process::Command::new(privatelink_bin()?).args([
            "flows",
            "--pin-dir",
            path(&self.pin_dir),
        ]))?;
        Ok(out.lines().skip(1).map(str::to_string).collect())
    }

    /// The XDP verdict counters, read from the pinned map by the CLI.
    pub fn stats(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let out = netns::run(std::process::Command::new(privatelink_bin()?).args([
            "stats",
            "--json",
            "--pin-dir",
            path(&self.pin_dir),
        ]))?;
        Ok(serde_json::from_str(&out)?)
    }

    pub fn down(&mut self) {
        for (_, c) in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        netns::remove(&self.consumer.name);
        netns::remove(&self.provider.name);
        netns::remove(&self.fwd.name);
        netns::remove(&self.onprem.name);
        if let Some(g) = &self.gwlb {
            for ns in [&g.web, &g.server, &g.appl] {
                netns::remove(&ns.name);
            }
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// The per-endpoint new-flow allowances (`privatelink budgets --json`), by endpoint
    /// numeric id (`model::numeric_id`): budget, tokens, refused.
    pub fn budgets(&self) -> Result<std::collections::BTreeMap<u32, serde_json::Value>> {
        let out = netns::run(std::process::Command::new(privatelink_bin()?).args([
            "budgets",
            "--json",
            "--pin-dir",
            path(&self.pin_dir),
        ]))?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        rows.into_iter()
            .map(|r| {
                let id = r["endpoint"].as_u64().context("no endpoint id")? as u32;
                Ok((id, r))
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

/// Starts `cmd` with stdout and stderr appended to `<dir>/<name>.log` (a restarted process
/// keeps the earlier lines; the lab's directory is new at each `up`).
pub fn spawn_logged(dir: &Path, name: &str, cmd: &mut std::process::Command) -> Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env_remove("RUST_BACKTRACE")
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// `curl -sS --fail <extra> url` inside `ns`; the body, or curl's complaint as the error.
fn curl_in(ns: &Netns, url: &str, extra: &[&str]) -> Result<Vec<u8>> {
    let out = ns
        .command("curl")
        .args(["-sS", "--fail"])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// A TCP port free on the host's loopback now (the kernel's pick, released for the
/// process that will listen on it).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Polls `ready` every 50 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI session's literal addresses, names and settings are the constants the
    /// tests check against, and the names are the naming options' (written out twice:
    /// once as the contract, once as the daemon's options).
    #[test]
    fn build_steps_and_names_agree_with_the_constants() {
        let steps: Vec<&str> = BUILD_STEPS.iter().map(|(_, args)| *args).collect();
        let steps = steps.join("\n");
        for want in [
            format!("--zone vsw-a1:{ENI}"),
            format!("vsw-a4:{ENI_B}"),
            format!("--backend zone-a:{LB}"),
            format!("--backend zone-b:{LB_B}"),
            format!("--resolver {RESOLVER}"),
            format!("--probe-address {PROBE_ADDRESS}"),
            format!("--domain {CUSTOM_DOMAIN}"),
            format!("--health-port {LB_HEALTH_PORT}"),
            format!("--health-path {LB_HEALTH_PATH}"),
            format!("--health-interval-ms {PROBE_INTERVAL_MS}"),
            format!("--ipv6-cidr {VPC_A6}"),
            format!("--ipv6-cidr {VPC_B6}"),
            format!("--zone vsw-a1:{ENI},{ENI6}"),
            format!("vsw-a4:{ENI_B},{ENI6_B}"),
            format!("--backend zone-a:{LB},{LB6}"),
            format!("--backend zone-b:{LB_B},{LB6_B}"),
            format!("--snat6 {} --snat6 {}", SNAT6[0], SNAT6[1]),
            format!("--ipv6-cidr {GWLB_VPC6}"),
            format!("--zone vsw-w0:{GWLB_ENI},{GWLB_ENI6}"),
        ] {
            assert!(steps.contains(&want), "{want} not in BUILD_STEPS");
        }
        assert_eq!(DNS_APEX, format!("{DNS_REGION}.{DNS_SUFFIX}"));
        assert_eq!(EP_A_NAME, format!("ep-a.epsrv-b.{DNS_APEX}"));
        assert!(!CUSTOM_DOMAIN.ends_with(DNS_SUFFIX));
    }
}
