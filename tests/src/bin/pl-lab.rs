//! `pl-lab`: brings the default lab up, prints how to use it, and removes it on Ctrl-C.

use std::sync::mpsc;

use anyhow::Result;
use clap::Parser;
use privatelink_tests::lab::{
    APPLIANCES, CLIENT, CLIENT_B, CLIENT_C, CLIENT6, CUSTOM_DOMAIN, ENI, ENI_B, ENI6, ENI6_B,
    EP_A_NAME, GWLB_BLOCKED_PORT, GWLB_CLIENT, GWLB_ENI, GWLB_SERVER, GWLB_SERVER6, LB, LB_B, LB6,
    Lab, LabOptions, OBJECT_STORAGE, OBJECT_STORAGE6, ONPREM_BIND, ONPREM_FWD, RESOLVER,
    REVERSE_ENI, privatelink_bin, zone_name,
};

#[derive(Parser)]
#[command(about = "privatelink's cross-account lab in network namespaces")]
struct Args {
    #[arg(long, default_value = "pl")]
    prefix: String,
    #[arg(long, default_value = "/sys/fs/bpf/privatelink")]
    pin_dir: String,
    /// `default`: the cross-account and GWLB lab on one forwarder. `fleet`: three
    /// forwarders behind an ECMP fabric sharing an etcd cluster (`--pin-dir` unused: each
    /// forwarder pins under /sys/fs/bpf/privatelink-<its namespace>).
    #[arg(long, default_value = "default", value_parser = ["default", "fleet"])]
    scenario: String,
}

/// The fleet scenario: up, what to try, down on Ctrl-C.
fn fleet(prefix: &str, rx: mpsc::Receiver<()>) -> Result<()> {
    use privatelink_tests::fleetlab::{self, FleetLab};
    let lab = FleetLab::up(prefix)?;
    let (c, r, p) = (&lab.consumer.name, &lab.router.name, &lab.provider.name);
    let pl = privatelink_bin()?.display().to_string();
    let hosts: Vec<String> = lab
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "  {} in {}: API {} pins {}",
                fleetlab::host_name(i),
                h.ns.name,
                h.url,
                h.pin.display()
            )
        })
        .collect();
    println!(
        "\nfleet lab is up: client {client} in {c} reaches haproxy {lb} in {p} through ENI {eni}, \
         over three forwarders behind the ECMP router {r} (a resilient group, L4 hash); each \
         forwarder takes SNAT ports from its own slot of {snat}'s range, and {p} routes the \
         replies back by port. etcd: {etcd}\n{hosts}\n\ntry:\n  \
         ip netns exec {c} curl -si http://{eni}/   # X-Snat: the tuple, its port names the forwarder\n  \
         {pl} --api {api} --token {token} fleet   # the hosts and the slots they hold\n  \
         ip -n {r} nexthop show; ip -n {p} rule show; ip -n {p} route show table 101\n  \
         {pl} stats --pin-dir {pin}\n\nCtrl-C removes the lab.",
        client = fleetlab::CLIENT,
        lb = fleetlab::LB,
        eni = fleetlab::ENI,
        snat = fleetlab::SNAT,
        etcd = lab.etcd.endpoints(),
        hosts = hosts.join("\n"),
        api = lab.hosts[0].url,
        token = lab.admin_token,
        pin = lab.hosts[0].pin.display(),
    );
    let _ = rx.recv();
    println!("removing the lab");
    drop(lab);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    if args.scenario == "fleet" {
        return fleet(&args.prefix, rx);
    }
    let opts = LabOptions {
        prometheus: true,
        ..LabOptions::new(&args.prefix, &args.pin_dir)
    };
    let lab = Lab::up(&opts)?;
    let c = &lab.consumer.name;
    let pin = &args.pin_dir;
    let pl = privatelink_bin()?.display().to_string();
    let p = &lab.provider.name;
    let f = &lab.fwd.name;
    let api = lab.api.clone().unwrap_or_default();
    let t = &lab.tokens;
    println!(
        "\nlab is up: consumer {CLIENT} in {c} reaches the provider's load balancer {LB} in {p} \
         through endpoint ENI {ENI}; the XDP program in {f} does all forwarding. ep-a is dual \
         stack: its ENIs answer neighbour discovery and ping over IPv6 ({CLIENT6} to {ENI6}), \
         and its names AAAA; IPv6 TCP/UDP to it is full-NATed to {LB6} as IPv4 is; the \
         gateway endpoint is dual stack too.\n\n\
         try:\n  ip netns exec {c} curl http://{ENI}/\n  ip netns exec {c} ping -c 3 {ENI}\n  \
         ip netns exec {c} ping -6 -c 3 {ENI6}   # answered by the XDP program\n  \
         ip netns exec {p} curl http://{REVERSE_ENI}/          # reverse endpoint\n  \
         ip netns exec {c} curl http://{oss}/         # gateway endpoint\n  \
         ip netns exec {c} curl -6 http://[{oss6}]/  # gateway endpoint over IPv6\n  \
         {pl} stats --pin-dir {pin}\n  {pl} flows --pin-dir {pin}\n  \
         bpftool map dump pinned {pin}/PL_CONNTRACK\n\n\
         the API (the lab was built through it; see the README):\n  \
         export PRIVATELINK_API={api}\n  \
         {pl} --token {admin} account list\n  \
         {pl} --token {provider} connection list epsrv-b     # provider B\n  \
         {pl} --token {consumer} endpoint list               # consumer A\n\n\
         two zones and names: ep-a has ENIs {ENI} (zone-a) and {ENI_B} (zone-b), the provider \
         a health-checked load balancer in each zone ({LB}, {LB_B}; answers carry X-Zone); \
         the consumer's clients are {CLIENT} (zone-a), {CLIENT_B} (zone-b) and {CLIENT_C} (zone-c, \
         no ENI there); {c} asks vpc-a's resolver {RESOLVER} (/etc/netns/{c}/resolv.conf):\n  \
         ip netns exec {c} dig {EP_A_NAME}   # zone-a: {ENI} only (affinity)\n  \
         ip netns exec {c} dig -b {CLIENT_B} {EP_A_NAME}   # zone-b: {ENI_B} only\n  \
         ip netns exec {c} dig -b {CLIENT_C} {EP_A_NAME}   # zone-c: both\n  \
         ip netns exec {c} dig {zone_b}   # a zone name: that zone's ENI\n  \
         ip netns exec {c} dig AAAA {EP_A_NAME}   # zone-a: {ENI6} (zone-b's ENI: {ENI6_B})\n  \
         ip netns exec {c} dig {CUSTOM_DOMAIN}   # the custom domain: in vpc-a only\n  \
         ip netns exec {web} dig {CUSTOM_DOMAIN}   # vpc-web: NXDOMAIN\n  \
         ip netns exec {c} curl -si http://{EP_A_NAME}/   # X-Zone: zone-a\n  \
         ip netns exec {c} curl -si --interface {CLIENT_B} --resolve {EP_A_NAME}:80:{ENI_B} http://{EP_A_NAME}/   # zone-b\n  \
         ip netns exec {o} dig @{ONPREM_BIND} {EP_A_NAME}   # on premises: BIND forwards to {ONPREM_FWD}:53\n  \
         {pl} --token {consumer} endpoint show ep-a   # its names (with PRIVATELINK_API set)\n  \
         {pl} --token {admin} status   # each zone's load balancer: health, since when\n\n\
         GWLB endpoint: in {web}, {GWLB_CLIENT} reaches {GWLB_SERVER} (in {wsrv}) only through \
         endpoint {GWLB_ENI}; every packet goes in GENEVE to appliance {a} or {b} (in {appl}) \
         and back:\n  \
         ip netns exec {web} curl http://{GWLB_SERVER}/\n  \
         ip netns exec {web} curl -6 http://[{GWLB_SERVER6}]/   # IPv6 too (next hop: the ENI's IPv6 address)\n  \
         ip netns exec {web} curl -m 3 http://{GWLB_SERVER}:{GWLB_BLOCKED_PORT}/   # the appliances drop this\n  \
         {pl} --token {provider} service appliances gwlb-svc   # health\n  \
         cat {dir}/appliance-zone-a.json                      # what an appliance saw\n\n\
         metrics: the daemon's {metrics} (Prometheus format), scraped every second by a \
         Prometheus server at {prometheus} (its files in {dir}/prometheus):\n  \
         curl -s {metrics} | grep privatelink_endpoint_packets_total\n  \
         curl -sG {prometheus}/api/v1/query --data-urlencode \
         'query=rate(privatelink_endpoint_packets_total[1m])'\n\n\
         Ctrl-C tears it down.",
        metrics = lab.metrics_url(),
        prometheus = lab.prometheus.as_deref().unwrap_or("-"),
        web = lab
            .gwlb
            .as_ref()
            .map(|g| g.web.name.as_str())
            .unwrap_or("-"),
        wsrv = lab
            .gwlb
            .as_ref()
            .map(|g| g.server.name.as_str())
            .unwrap_or("-"),
        appl = lab
            .gwlb
            .as_ref()
            .map(|g| g.appl.name.as_str())
            .unwrap_or("-"),
        a = APPLIANCES[0].1,
        b = APPLIANCES[1].1,
        dir = lab.dir.display(),
        o = lab.onprem.name,
        zone_b = zone_name("zone-b"),
        oss = OBJECT_STORAGE[0],
        oss6 = OBJECT_STORAGE6[0],
        admin = t.admin,
        provider = t.provider,
        consumer = t.consumer,
    );
    let _ = rx.recv();
    println!("\nremoving the lab ...");
    drop(lab);
    println!("done");
    Ok(())
}
