//! `pl-bench`: per-packet cost of each data path branch through BPF_PROG_TEST_RUN, each
//! measured interleaved with the pass-through baseline program in the same run, reported
//! as ns/packet and as a ratio to the baseline. Writes results/bench.md.

use std::fmt::Write as _;

use anyhow::Result;
use etherparse::PacketBuilder;
use privatelink_tests::{
    frames::{CLIENT, CLIENT_MAC, ENI, tcp_from_lb, tcp_to_eni},
    lab::LAB_STATE,
    testrun::Harness,
};

const RUNS: usize = 20_000;

/// The frame for run `i` of a case.
type FrameFn = Box<dyn Fn(usize) -> Vec<u8>>;

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

fn main() -> Result<()> {
    let mut h = Harness::new(LAB_STATE)?;
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);

    // A live flow for the hit paths.
    let (_, out) = h.run(cif, &tcp_to_eni(&h, 40000, true, b""))?;
    let snat = [out[26], out[27], out[28], out[29]];
    let port = u16::from_be_bytes([out[34], out[35]]);
    let fwd = tcp_to_eni(&h, 40000, false, &[0u8; 18]);
    let reply = tcp_from_lb(&h, snat, port, &[0u8; 18]);
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, &[0u8; 18])?;
    let mut unrelated = fwd.clone();
    unrelated[33] = 77; // another host of the consumer VPC (header checksum not fixed: unrelated traffic is not verified)
    let mut malformed = fwd.clone();
    malformed[24] ^= 0xff; // bad IPv4 header checksum

    let cases: Vec<(&str, u32, FrameFn)> = vec![
        (
            "NAT forward (conntrack hit)",
            cif,
            Box::new(move |_| fwd.clone()),
        ),
        (
            "NAT first packet (conntrack miss)",
            cif,
            Box::new({
                let frames: Vec<Vec<u8>> = (0..RUNS)
                    .map(|i| tcp_to_eni(&h, 1 + i as u16, true, &[0u8; 18]))
                    .collect();
                move |i| frames[i].clone()
            }),
        ),
        (
            "NAT reply (conntrack hit)",
            pif,
            Box::new(move |_| reply.clone()),
        ),
        ("ICMP echo answered", cif, Box::new(move |_| echo.clone())),
        (
            "pass-through (unrelated)",
            cif,
            Box::new(move |_| unrelated.clone()),
        ),
        (
            "drop malformed (bad checksum)",
            cif,
            Box::new(move |_| malformed.clone()),
        ),
    ];

    let mut table = String::new();
    writeln!(
        table,
        "| path | privatelink ns/pkt (median) | baseline ns/pkt (median) | ratio |"
    )?;
    writeln!(table, "|---|---:|---:|---:|")?;
    for (name, ifindex, frame) in &cases {
        let (mut ours, mut base) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
        for i in 0..RUNS {
            let f = frame(i);
            ours.push(h.time_once(*ifindex, &f, false)?.1);
            base.push(h.time_once(*ifindex, &f, true)?.1);
        }
        let (o, b) = (median(&mut ours), median(&mut base));
        writeln!(
            table,
            "| {name} | {o:.0} | {b:.0} | {:.2}x |",
            o / b.max(1.0)
        )?;
    }
    println!(
        "\nBPF_PROG_TEST_RUN, {RUNS} single runs per path, interleaved with the pass-through baseline\n\n{table}"
    );
    std::fs::create_dir_all("results")?;
    std::fs::write("results/bench.md", &table)?;
    Ok(())
}
