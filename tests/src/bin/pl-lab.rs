//! `pl-lab`: brings the default lab up, prints how to use it, and removes it on Ctrl-C.

use std::sync::mpsc;

use anyhow::Result;
use clap::Parser;
use privatelink_tests::lab::{
    CLIENT, ENI, LB, Lab, LabOptions, OBJECT_STORAGE, REVERSE_ENI, privatelink_bin,
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
         Ctrl-C tears it down.",
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
