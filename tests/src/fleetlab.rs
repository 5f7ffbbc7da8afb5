//! The fleet lab: three forwarders behind an ECMP fabric, sharing their state through a
//! real etcd cluster (`cargo xtask lab fleet`, and `tests/tests/fleet_lab.rs`).
//!
//! ```text
//!  <p>-c (consumer)        <p>-r (fabric router)             <p>-f1..3 (forwarders)          <p>-p (provider)
//!  client 10.10.2.1 c0 ── r0 10.10.2.254     r1 ──veth── fc0 [XDP] fwd-1 [XDP] fp0 ──veth── b1 ┐
//!  route default via       10.10.1.100/32:   r2 ──veth── fc0 [XDP] fwd-2 [XDP] fp0 ──veth── b2 ├ br0 10.10.0.10
//!   10.10.2.254            resilient ECMP    r3 ──veth── fc0 [XDP] fwd-3 [XDP] fp0 ──veth── b3 ┘  haproxy :80
//!                          group (L4 hash)    each: a daemon (API on 127.0.0.1), its pins,        → nginx 127.0.0.1:8080
//!                          over r1..r3        --snat-slots 3, lease 3 s                           replies to 10.10.0.200 routed
//!                                                                                                 by destination port: slot n's
//!  etcd: three members on loopback; the fabric agent (a thread of the lab) follows              ports → its holder (ip rules)
//!  GET /v1/fleet and programs both ends: the ECMP group holds the hosts that hold a slot,
//!  and each slot's table routes 10.10.0.200 to its holder (unreachable while none does).
//! ```
//!
//! One endpoint (`ep-a`, ENI 10.10.1.100 in zone-a) to one service (`epsrv-b`: haproxy
//! 10.10.0.10:80, SNAT 10.10.0.200, ports 1024-65534 cut in three slots). The router
//! hashes each flow's 5-tuple onto one of its buckets, each bucket names a forwarder; a
//! forwarder takes the flow's SNAT port from its own slot, so the provider's replies come
//! back to it. A forwarder "dies" (`crash`): its daemon is killed and its pins removed
//! (the XDP programs detach), its links stay up: it blackholes what reaches it, as a hung
//! host does, until its lease expires and the fabric takes it out.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use privatelink_user::client::Client;
use serde_json::json;

use crate::{
    apidaemon::{ApiDaemon, two_party_tokens},
    etcd::EtcdCluster,
    lab::{spawn_logged, wait_for},
    netns::{Netns, unique_name},
};

pub const HOSTS: usize = 3;
pub const ENI: &str = "10.10.1.100";
pub const CLIENT: &str = "10.10.2.1";
pub const LB: &str = "10.10.0.10";
pub const SNAT: &str = "10.10.0.200";
/// The service's SNAT ports: iproute2 6.1 refuses 65535 in a rule's `dport` (the
/// provider routes replies by port), so the range stops one short.
pub const SNAT_PORTS: [u16; 2] = [1024, 65534];
/// `--snat-slots`: one per forwarder.
pub const SLOTS: u32 = 3;
/// The forwarders' lease.
pub const LEASE: Duration = Duration::from_secs(3);
/// The fabric's resilient group: its buckets, and how long a bucket must be idle before
/// it may move to a host that joined (never forced: `unbalanced_timer 0`).
pub const BUCKETS: u32 = 128;
pub const IDLE_TIMER_S: u32 = 2;
/// How often the fabric agent asks the fleet.
pub const FABRIC_POLL: Duration = Duration::from_millis(100);
/// The ECMP group's id on the router (the hosts' next hops are 1..=3).
const GROUP: u32 = 100;
/// Slot n's routing table on the provider side.
const SLOT_TABLE: u32 = 100;

/// Forwarder `i`'s name in the fleet (`--host-name`).
pub fn host_name(i: usize) -> String {
    format!("fwd-{}", i + 1)
}

/// The provider-side address that stands for forwarder `i` (a static neighbour: its
/// fp0's MAC), the next hop of the replies routed to it.
fn gateway(i: usize) -> String {
    format!("10.10.0.{}", 241 + i)
}

/// A change the fabric agent made, when (wall-clock seconds), and what.
#[derive(Clone, Debug)]
pub struct FabricEvent {
    pub at: f64,
    pub what: String,
}

/// What the fabric follows: slot → holder (host index).
type Holders = BTreeMap<u32, usize>;

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct FleetLab {
    pub hosts: Vec<ApiDaemon>,
    pub consumer: Netns,
    pub router: Netns,
    pub provider: Netns,
    pub etcd: EtcdCluster,
    /// The fleet's key prefix in etcd (`--etcd-prefix`).
    pub etcd_prefix: String,
    pub dir: PathBuf,
    pub events: Arc<Mutex<Vec<FabricEvent>>>,
    pub admin_token: String,
    stop: Arc<AtomicBool>,
    fabric: Option<JoinHandle<()>>,
    /// The hosts' API addresses, as the fabric agent asks them (a restart moves one).
    urls: Arc<Mutex<Vec<String>>>,
    children: Vec<Child>,
    token_file: PathBuf,
}

impl FleetLab {
    /// Builds the lab (namespace names from `prefix`), configures the endpoint through
    /// fwd-1's API, and returns once every forwarder holds a slot, the fabric routes to
    /// all three and the client reaches the service.
    pub fn up(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("privatelink-{}", unique_name(prefix)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let etcd = EtcdCluster::start(3)?;
        let consumer = Netns::create(&unique_name(&format!("{prefix}-c")))?;
        let router = Netns::create(&unique_name(&format!("{prefix}-r")))?;
        let provider = Netns::create(&unique_name(&format!("{prefix}-p")))?;
        let token_file = dir.join("admin.token");
        let admin_token = "fleet-lab-admin-token-0123456789".to_string();
        std::fs::write(&token_file, format!("{admin_token}\n"))?;
        let mut lab = Self {
            hosts: Vec::new(),
            consumer,
            router,
            provider,
            etcd,
            etcd_prefix: format!("/{}", unique_name("fleetlab")),
            dir,
            events: Arc::default(),
            admin_token,
            stop: Arc::default(),
            fabric: None,
            urls: Arc::default(),
            children: Vec::new(),
            token_file,
        };
        lab.wire()?;
        lab.start_provider()?;
        let etcd_prefix = lab.etcd_prefix.clone();
        for i in 0..HOSTS {
            let extra: Vec<String> = [
                "--etcd",
                &lab.etcd.endpoints(),
                "--etcd-prefix",
                &etcd_prefix,
                "--admin-token-file",
                &lab.token_file.display().to_string(),
                "--host-name",
                &host_name(i),
                "--host-lease-seconds",
                &LEASE.as_secs().to_string(),
                "--snat-slots",
                &SLOTS.to_string(),
                // Every failed lease renewal (a round of tries), for a failure's log.
                "--log",
                "info,hickory_server=warn,privatelink_user::store::etcd=debug",
            ]
            .map(String::from)
            .to_vec();
            let h = ApiDaemon::with_args(&format!("{prefix}-f{}", i + 1), 65536, &extra)?;
            lab.attach_host(&h, i)?;
            lab.hosts.push(h);
        }
        // The veth ends the forwarders redirect to run a pass-through XDP program (the
        // kernel drops redirected frames at a veth whose peer runs none).
        let xdp_pass = crate::lab::bin("pl-xdp-pass")?;
        for (ns, devs) in [
            (&lab.router, ["r1", "r2", "r3"]),
            (&lab.provider, ["b1", "b2", "b3"]),
        ] {
            let mut cmd = std::process::Command::new(&xdp_pass);
            cmd.args(["--netns", &ns.name]).args(devs);
            let child = spawn_logged(&lab.dir, &format!("xdp-pass-{}", ns.name), &mut cmd)?;
            lab.children.push(child);
        }
        lab.configure()?;
        lab.start_fabric();
        wait_for(
            Duration::from_secs(20),
            "three forwarders in the fabric",
            || {
                lab.events
                    .lock()
                    .map(|e| e.iter().any(|e| e.what == "front: fwd-1 fwd-2 fwd-3"))
                    .unwrap_or(false)
            },
        )?;
        wait_for(
            Duration::from_secs(20),
            "the service through the ENI",
            || lab.get_ok(),
        )
        .with_context(|| lab.diagnose())?;
        Ok(lab)
    }

    /// The fabric router and the provider's segment, and the consumer.
    fn wire(&self) -> Result<()> {
        let (c, r, p) = (&self.consumer, &self.router, &self.provider);
        c.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "r0"])?;
        c.ip(&["link", "set", "r0", "netns", &r.name])?;
        c.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "c0"])?;
        c.ip(&["link", "set", "c0", "up"])?;
        c.ip(&["route", "add", "default", "via", "10.10.2.254"])?;
        r.ip(&["addr", "add", "10.10.2.254/24", "dev", "r0"])?;
        r.ip(&["link", "set", "r0", "up"])?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            // ECMP on the 5-tuple, as a cloud fabric hashes. Not policy 1 (L4): it takes
            // the skb's hash where one is set, and over veth that is the sending socket's,
            // which TCP changes at every retransmission (a SYN resent would land on
            // another host). The custom policy hashes the headers' fields only: source
            // and destination address, protocol, source and destination port.
            ("net.ipv4.fib_multipath_hash_policy", "3"),
            ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            r.exec("sysctl", &["-qw", &format!("{k}={v}")])?;
        }
        // A MAC of its own: a bridge otherwise takes its ports' lowest, and a change of
        // it flushes the neighbours (the forwarders' static entries among them).
        p.ip(&[
            "link",
            "add",
            "br0",
            "address",
            "02:00:0a:0a:00:0a",
            "type",
            "bridge",
        ])?;
        p.ip(&["addr", "add", &format!("{LB}/24"), "dev", "br0"])?;
        p.ip(&["link", "set", "br0", "up"])?;
        // Slot n's replies: destination ports of its slice → table 100+n.
        for n in 0..SLOTS {
            let (lo, hi) = slot_ports(n);
            let table = (SLOT_TABLE + n).to_string();
            p.ip(&[
                "rule",
                "add",
                "dport",
                &format!("{lo}-{hi}"),
                "lookup",
                &table,
                "pref",
                &(1000 + n).to_string(),
            ])?;
            p.ip(&[
                "route",
                "add",
                "unreachable",
                &format!("{SNAT}/32"),
                "table",
                &table,
            ])?;
        }
        // Checksums complete on the wire: a redirected frame loses the kernel's
        // checksum-offload state (the README's notes for lab builders).
        for (ns, dev) in [(c, "c0"), (r, "r0"), (p, "br0")] {
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        Ok(())
    }

    /// Moves forwarder `i`'s peers to the router (r<i+1>) and the provider's bridge
    /// (b<i+1>), and gives the fabric its next hops.
    fn attach_host(&self, h: &ApiDaemon, i: usize) -> Result<()> {
        let (r, p) = (&self.router, &self.provider);
        let (ri, bi) = (format!("r{}", i + 1), format!("b{}", i + 1));
        h.ns.ip(&["link", "set", "c0", "netns", &r.name])?;
        h.ns.ip(&["link", "set", "p0", "netns", &p.name])?;
        r.ip(&["link", "set", "c0", "name", &ri])?;
        r.ip(&["link", "set", &ri, "up"])?;
        r.exec(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{ri}.rp_filter=0")],
        )?;
        r.ip(&[
            "nexthop",
            "add",
            "id",
            &(i + 1).to_string(),
            "via",
            ENI,
            "dev",
            &ri,
            "onlink",
        ])?;
        p.ip(&["link", "set", "p0", "name", &bi])?;
        p.ip(&["link", "set", &bi, "master", "br0", "up"])?;
        r.exec("ethtool", &["-K", &ri, "tx", "off"])?;
        p.exec("ethtool", &["-K", &bi, "tx", "off"])?;
        let mac = mac_of(&h.ns, "fp0")?;
        p.ip(&[
            "neigh",
            "replace",
            &gateway(i),
            "lladdr",
            &mac,
            "dev",
            "br0",
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    /// haproxy on 10.10.0.10:80 (HTTP, adds `X-Snat: <client address>:<port>` to each
    /// answer: the SNAT tuple it saw) in front of nginx on loopback.
    fn start_provider(&mut self) -> Result<()> {
        let d = &self.dir;
        std::fs::create_dir_all(d.join("www"))?;
        std::fs::create_dir_all(d.join("nginx-tmp"))?;
        std::fs::write(d.join("www/index.html"), "fleet backend\n")?;
        let nginx = format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {d}/nginx-tmp/body;\n  proxy_temp_path {d}/nginx-tmp/proxy;\n  \
             fastcgi_temp_path {d}/nginx-tmp/fcgi;\n  uwsgi_temp_path {d}/nginx-tmp/uwsgi;\n  \
             scgi_temp_path {d}/nginx-tmp/scgi;\n  keepalive_requests 100000;\n  \
             server {{ listen 127.0.0.1:8080; root {d}/www; }}\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), nginx)?;
        let haproxy = format!(
            "global\n  maxconn 8192\n\ndefaults\n  mode http\n  timeout connect 2s\n  \
             timeout client 30s\n  timeout server 30s\n  timeout http-keep-alive 30s\n\n\
             frontend internal_lb\n  bind {LB}:80\n  \
             http-response set-header X-Snat %[src]:%[src_port]\n  default_backend web\n\n\
             backend web\n  server nginx 127.0.0.1:8080\n"
        );
        std::fs::write(d.join("haproxy.cfg"), haproxy)?;
        let conf = d.join("nginx.conf").display().to_string();
        let err = d.join("nginx-error.log").display().to_string();
        let cfg = d.join("haproxy.cfg").display().to_string();
        for (name, program, args) in [
            (
                "nginx",
                "nginx",
                vec!["-e", &err, "-c", &conf, "-g", "daemon off;"],
            ),
            ("haproxy", "haproxy", vec!["-db", "-f", &cfg]),
        ] {
            let mut cmd = self.provider.command(program);
            cmd.args(args);
            self.children.push(spawn_logged(d, name, &mut cmd)?);
        }
        wait_for(Duration::from_secs(10), "haproxy and nginx", || {
            self.provider
                .exec("curl", &["-sf", "-m", "2", &format!("http://{LB}/")])
                .is_ok()
        })
    }

    /// The accounts, VPCs, service and endpoint, through fwd-1's API.
    fn configure(&self) -> Result<()> {
        let admin = self.admin(0);
        let (ta, tb) = two_party_tokens(&admin)?;
        let url = &self.hosts[0].url;
        Client::new(url, Some(tb)).post(
            "/v1/services",
            &json!({"id": "epsrv-b", "vpc": "vpc-b", "auto_accept": true, "whitelist": ["acct-a"],
                    "backends": [{"zone": "zone-a", "address": LB}],
                    "snat": [SNAT], "snat_ports": SNAT_PORTS,
                    "listeners": [{"protocol": "tcp", "port": 80}]}),
        )?;
        Client::new(url, Some(ta)).post(
            "/v1/endpoints",
            &json!({"id": "ep-a", "vpc": "vpc-a", "service": "epsrv-b",
                    "zones": [{"vswitch": "vsw-a1", "eni": ENI}]}),
        )?;
        Ok(())
    }

    pub fn admin(&self, i: usize) -> Client {
        Client::new(&self.hosts[i].url, Some(self.admin_token.clone()))
    }

    /// The fabric agent: every `FABRIC_POLL` it asks the fleet (the first host that
    /// answers) which host holds which slot, and when that changed, programs the router's
    /// ECMP group (the hosts holding a slot) and the provider's slot tables.
    fn start_fabric(&mut self) {
        self.set_urls();
        let urls = self.urls.clone();
        let token = self.admin_token.clone();
        let (router, provider) = (self.router.name.clone(), self.provider.name.clone());
        let (stop, events) = (self.stop.clone(), self.events.clone());
        self.fabric = Some(std::thread::spawn(move || {
            let mut applied: Option<Holders> = None;
            while !stop.load(Ordering::Relaxed) {
                let urls = urls.lock().map(|u| u.clone()).unwrap_or_default();
                if let Some(now_held) = holders(&urls, &token)
                    && applied.as_ref() != Some(&now_held)
                {
                    let (said, ok) = program(&router, &provider, applied.as_ref(), &now_held);
                    if let Ok(mut e) = events.lock() {
                        e.extend(said.into_iter().map(|what| FabricEvent { at: now(), what }));
                    }
                    // A failed step is tried again at the next poll (from scratch).
                    applied = if ok { Some(now_held) } else { None };
                }
                std::thread::sleep(FABRIC_POLL);
            }
        }));
    }

    /// Forwarder `i` dies: its daemon is killed (no lease revocation) and its pins removed,
    /// which detaches its XDP programs; its links stay up. Returns the time it died: once
    /// the pins are gone (the pinned links keep the programs forwarding until then, so a
    /// flow answered in full while they went is not one the death cut).
    pub fn crash(&mut self, i: usize) -> Result<f64> {
        let h = &mut self.hosts[i];
        h.kill()?;
        std::fs::remove_dir_all(&h.pin).with_context(|| format!("removing {}", h.pin.display()))?;
        Ok(now())
    }

    /// Forwarder `i` starts again (a rebooted host: empty maps, its data directory kept);
    /// returns when its API is ready.
    pub fn restart(&mut self, i: usize) -> Result<f64> {
        self.hosts[i].start_again()?;
        self.set_urls();
        Ok(now())
    }

    fn set_urls(&self) {
        if let Ok(mut u) = self.urls.lock() {
            *u = self.hosts.iter().map(|h| h.url.clone()).collect();
        }
    }

    /// One request from the client through the ENI.
    pub fn get_ok(&self) -> bool {
        self.consumer
            .exec("curl", &["-sf", "-m", "2", &format!("http://{ENI}/")])
            .is_ok()
    }

    /// The load generator's script, written to the lab's directory.
    pub fn load_script(&self) -> Result<PathBuf> {
        let p = self.dir.join("fleet_load.py");
        std::fs::write(&p, include_str!("fleet_load.py"))?;
        Ok(p)
    }

    /// The fabric's routes and each forwarder's drop counters, with the logs: what a
    /// failure's message shows.
    pub fn diagnose(&self) -> String {
        let mut s = String::new();
        for (ns, args) in [
            (&self.router, &["nexthop", "show"][..]),
            (&self.router, &["route", "show"]),
            (&self.router, &["neigh", "show"]),
            (&self.provider, &["rule", "show"]),
            (&self.provider, &["neigh", "show"]),
        ] {
            s.push_str(&format!(
                "--- {} ip {}\n{}\n",
                ns.name,
                args.join(" "),
                ns.ip(args).unwrap_or_else(|e| format!("{e:#}"))
            ));
        }
        for n in 0..SLOTS {
            let t = (SLOT_TABLE + n).to_string();
            s.push_str(&format!(
                "--- table {t}: {}\n",
                self.provider
                    .ip(&["route", "show", "table", &t])
                    .unwrap_or_default()
            ));
        }
        if let Ok(bin) = crate::lab::privatelink_bin() {
            for h in &self.hosts {
                let out = crate::netns::run(
                    std::process::Command::new(&bin)
                        .arg("stats")
                        .arg("--pin-dir")
                        .arg(&h.pin),
                );
                s.push_str(&format!(
                    "--- {} stats\n{}\n",
                    h.ns.name,
                    out.unwrap_or_else(|e| format!("{e:#}"))
                ));
            }
        }
        s + &self.logs()
    }

    /// Each host's log, for a failure's message.
    pub fn logs(&self) -> String {
        let mut s: String = self
            .hosts
            .iter()
            .map(|h| format!("--- {}\n{}", h.ns.name, h.log()))
            .collect();
        if let Ok(e) = self.events.lock() {
            s.push_str("--- fabric\n");
            for ev in e.iter() {
                s.push_str(&format!("{:.3} {}\n", ev.at, ev.what));
            }
        }
        s
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.fabric.take() {
            let _ = f.join();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The hosts (daemons, namespaces, pins) go with their fields; the lab's own files:
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Slot `n`'s ports of the service's range.
pub fn slot_ports(n: u32) -> (u16, u16) {
    privatelink_user::fleet::PortShare::Slot {
        slot: n,
        slots: SLOTS,
    }
    .slice(SNAT_PORTS[0], SNAT_PORTS[1])
    .expect("a slot of the lab's range")
}

/// The forwarder (index) that took SNAT port `port`: its slot's holder in `held`.
pub fn slot_of_port(port: u16) -> Option<u32> {
    (0..SLOTS).find(|n| {
        let (lo, hi) = slot_ports(*n);
        (lo..=hi).contains(&port)
    })
}

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(&["-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no MAC for {dev} in {out}"))
}

/// Slot → holder, from the first host whose `GET /v1/fleet` answers.
fn holders(urls: &[String], token: &str) -> Option<Holders> {
    urls.iter().find_map(|u| {
        let v = Client::new(u, Some(token.to_string()))
            .get("/v1/fleet")
            .ok()?;
        let mut h = Holders::new();
        for m in v["hosts"].as_array()? {
            let (Some(slot), Some(name)) = (m["snat_slot"].as_u64(), m["host"].as_str()) else {
                continue;
            };
            if let Some(i) = (0..HOSTS).find(|i| host_name(*i) == name) {
                h.insert(slot as u32, i);
            }
        }
        Some(h)
    })
}

/// Programs the fabric for `now` (after `before`); what it did, one line per change, and
/// whether every step succeeded.
fn program(
    router: &str,
    provider: &str,
    before: Option<&Holders>,
    now: &Holders,
) -> (Vec<String>, bool) {
    let (mut said, mut ok) = (Vec::new(), true);
    let ip = |ns: &str, args: &[&str]| -> Result<String> {
        let mut a = vec!["-n", ns];
        a.extend_from_slice(args);
        crate::netns::ip(&a)
    };
    // The hosts holding a slot, once each, in order.
    let hosts = |h: &Holders| -> Vec<usize> {
        let f: std::collections::BTreeSet<usize> = h.values().copied().collect();
        f.into_iter().collect()
    };
    let front = hosts(now);
    if before.map(hosts).as_ref() != Some(&front) {
        let r = if front.is_empty() {
            ip(
                router,
                &["route", "replace", "unreachable", &format!("{ENI}/32")],
            )
        } else {
            let group = front
                .iter()
                .map(|i| (i + 1).to_string())
                .collect::<Vec<_>>()
                .join("/");
            let verb = if ip(router, &["nexthop", "show", "id", &GROUP.to_string()]).is_ok() {
                "replace"
            } else {
                "add"
            };
            ip(
                router,
                &[
                    "nexthop",
                    verb,
                    "id",
                    &GROUP.to_string(),
                    "group",
                    &group,
                    "type",
                    "resilient",
                    "buckets",
                    &BUCKETS.to_string(),
                    "idle_timer",
                    &IDLE_TIMER_S.to_string(),
                    "unbalanced_timer",
                    "0",
                ],
            )
            .and_then(|_| {
                ip(
                    router,
                    &[
                        "route",
                        "replace",
                        &format!("{ENI}/32"),
                        "nhid",
                        &GROUP.to_string(),
                    ],
                )
            })
        };
        let names: Vec<String> = front.iter().map(|i| host_name(*i)).collect();
        ok &= r.is_ok();
        said.push(match r {
            Ok(_) => format!("front: {}", names.join(" ")),
            Err(e) => format!("front: {} failed: {e:#}", names.join(" ")),
        });
    }
    for n in 0..SLOTS {
        let (was, is) = (before.and_then(|b| b.get(&n)), now.get(&n));
        if before.is_some() && was == is {
            continue;
        }
        let table = (SLOT_TABLE + n).to_string();
        let dst = format!("{SNAT}/32");
        let r = match is {
            Some(i) => ip(
                provider,
                &[
                    "route",
                    "replace",
                    &dst,
                    "via",
                    &gateway(*i),
                    "dev",
                    "br0",
                    "onlink",
                    "table",
                    &table,
                ],
            ),
            None => ip(
                provider,
                &["route", "replace", "unreachable", &dst, "table", &table],
            ),
        };
        let who = is.map_or("nobody".to_string(), |i| host_name(*i));
        ok &= r.is_ok();
        said.push(match r {
            Ok(_) => format!("slot {n}: {who}"),
            Err(e) => format!("slot {n}: {who} failed: {e:#}"),
        });
    }
    (said, ok)
}
