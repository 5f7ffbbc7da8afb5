//! `pl-lab`: brings the default lab up, prints how to use it, and removes it on Ctrl-C.

use std::sync::mpsc;

use anyhow::Result;
use clap::Parser;
use privatelink_tests::lab::{
    APPLIANCES, CLIENT, ENI, GWLB_BLOCKED_PORT, GWLB_CLIENT, GWLB_ENI, GWLB_SERVER, LB, Lab,
    LabOptions, OBJECT_STORAGE, REVERSE_ENI, privatelink_bin,
};

#[derive(Parser)]
#[command(about = "privatelink's cross-account lab in network namespaces")]
struct Args {
    #[arg(long, default_value = "pl")]
    prefix: String,
    #[arg(long, default_value = "/sys/fs/bpf/privatelink")]
    pin_dir: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    let opts = LabOptions::new(&args.prefix, &args.pin_dir);
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
         through endpoint ENI {ENI}; the XDP program in {f} does all forwarding.\n\n\
         try:\n  ip netns exec {c} curl http://{ENI}/\n  ip netns exec {c} ping -c 3 {ENI}\n  \
         ip netns exec {p} curl http://{REVERSE_ENI}/          # reverse endpoint\n  \
         ip netns exec {c} curl http://{oss}/         # gateway endpoint\n  \
         {pl} stats --pin-dir {pin}\n  {pl} flows --pin-dir {pin}\n  \
         bpftool map dump pinned {pin}/PL_CONNTRACK\n\n\
         the API (the lab was built through it; see the README):\n  \
         export PRIVATELINK_API={api}\n  \
         {pl} --token {admin} account list\n  \
         {pl} --token {provider} connection list epsrv-b     # provider B\n  \
         {pl} --token {consumer} endpoint list               # consumer A\n\n\
                  GWLB endpoint: in {web}, {GWLB_CLIENT} reaches {GWLB_SERVER} (in {wsrv}) only through \
         endpoint {GWLB_ENI}; every packet goes in GENEVE to appliance {a} or {b} (in {appl}) \
         and back:\n  \
         ip netns exec {web} curl http://{GWLB_SERVER}/\n  \
         ip netns exec {web} curl -m 3 http://{GWLB_SERVER}:{GWLB_BLOCKED_PORT}/   # the appliances drop this\n  \
         {pl} --token {provider} service appliances gwlb-svc   # health\n  \
         cat {dir}/appliance-zone-a.json                      # what an appliance saw\n\n\
         Ctrl-C tears it down.",
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
        oss = OBJECT_STORAGE[0],
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
