//! `pl-bench`: per-packet cost of each data path branch through BPF_PROG_TEST_RUN, each
//! measured interleaved with a trivial program (swap the MACs, XDP_TX) in the same run,
//! reported as ns/packet and as a ratio to it; the control plane's latency. Writes
//! results/bench.md and results/bench.svg.

use std::fmt::Write as _;

use anyhow::Result;
use etherparse::PacketBuilder;
use privatelink_common::Reason;
use privatelink_tests::{
    frames::{
        CLIENT, CLIENT_MAC, ENI, tcp_ack_from_lb, tcp_ack_to_eni, tcp_from_lb, tcp_to_eni,
        udp_to_eni,
    },
    lab::{packet_state, with_flow_share},
    reference::Reference,
    testrun::{Harness, XDP_DROP, XDP_REDIRECT, XDP_TX},
};

const RUNS: usize = 20_000;

/// The frame for run `i` of a case.
type FrameFn = Box<dyn Fn(usize) -> Vec<u8>>;

/// A bar over the benchmark's sections with the time spent, on stderr when it is a
/// terminal (hidden otherwise: no progress lines in a log).
fn progress(sections: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(sections).with_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:24} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    bar
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// Every section of the benchmark by default; one section with its flag.
#[derive(clap::Parser)]
#[command(
    about = "privatelink's benchmarks: every section, or the one named by a flag; \
                   writes results/bench.md when all of them ran (a section that needs \
                   live-frame test runs says so where the kernel refuses them)"
)]
struct Args {
    /// Only the per-packet table (BPF_PROG_TEST_RUN against the trivial program).
    #[arg(long, group = "section")]
    per_packet_only: bool,
    /// With --per-packet-only: only the paths whose names contain this.
    #[arg(long, requires = "per_packet_only")]
    path: Option<String>,
    /// With --per-packet-only: ep-a with flow logs on (the cost of a logged endpoint).
    #[arg(long, requires = "per_packet_only")]
    flow_log: bool,
    /// Only the veth throughput against nftables and the bare redirect.
    #[arg(long, group = "section")]
    throughput_only: bool,
    /// Only the CPU at a fixed offered load.
    #[arg(long, group = "section")]
    load_only: bool,
    /// Only the daemon's restart with 1 000 000 flows.
    #[arg(long, group = "section")]
    restart_only: bool,
    /// Only the control plane's latency.
    #[arg(long, group = "section")]
    control_only: bool,
    /// Only the DNS answers against BIND.
    #[arg(long, group = "section")]
    dns_only: bool,
    /// Only the conntrack table at scale.
    #[arg(long, group = "section")]
    conntrack_only: bool,
    /// The conntrack scale points, in flows (each at least 10).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u32, 100_000, 1_000_000, 10_000_000])]
    flows: Vec<u32>,
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    // Every section prints its table when done and returns it for results/bench.md.
    if args.per_packet_only {
        per_packet(args.path.as_deref(), args.flow_log)?;
        return Ok(());
    }
    if args.load_only {
        cpu_at_load()?;
        return Ok(());
    }
    if args.throughput_only {
        throughput()?;
        return Ok(());
    }
    let flows = args.flows;
    if args.restart_only {
        restart_with_flows(1_000_000)?;
        return Ok(());
    }
    if args.control_only {
        control_plane(1000)?;
        return Ok(());
    }
    if args.dns_only {
        dns()?;
        return Ok(());
    }
    if args.conntrack_only {
        conntrack_scale(&flows)?;
        return Ok(());
    }
    type Section<'a> = (&'static str, Box<dyn Fn() -> Result<String> + 'a>);
    let sections: [Section; 7] = [
        ("per-packet cost", Box::new(|| per_packet(None, false))),
        (
            "throughput",
            Box::new(|| unless_refused("Throughput", throughput())),
        ),
        (
            "CPU at a fixed load",
            Box::new(|| unless_refused("CPU at a fixed load", cpu_at_load())),
        ),
        // Before the multi-gigabyte conntrack tables: freeing them leaves the machine busy
        // reclaiming memory, which showed as fsync latency in the API figures.
        ("control plane", Box::new(|| control_plane(1000))),
        ("DNS", Box::new(dns)),
        (
            "restart with flows",
            Box::new(|| restart_with_flows(1_000_000)),
        ),
        ("conntrack scale", Box::new(|| conntrack_scale(&flows))),
    ];
    let bar = progress(sections.len() as u64);
    let mut md = String::new();
    for (name, section) in &sections {
        bar.set_message(*name);
        md.push_str(&section()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    std::fs::create_dir_all("results")?;
    std::fs::write("results/bench.md", &md)?;
    println!("\nwritten to results/bench.md");
    Ok(())
}

/// A section whose traffic comes from the live-frame generator, on a kernel that refuses
/// live-frame test runs: a line that says it was not measured and why, in place of its
/// table, and the run goes on (the other sections need no live frames). Any other error
/// stops the run. No packet socket instead (the tests' floods fall back to one:
/// `throughput::send`): its own cost per frame would be part of every mode's rate.
fn unless_refused(section: &str, r: Result<String>) -> Result<String> {
    match r {
        Err(e) if privatelink_tests::throughput::live_frames_refused(&e) => {
            let line = format!(
                "\n**{section}: not measured.** This kernel refuses live-frame test runs \
                 (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: {e:#}), which the \
                 section's generator needs.\n"
            );
            eprint!("{line}");
            Ok(line)
        }
        r => r,
    }
}

/// Conntrack filled to `flows` flows (a table of exactly 2 x flows entries): fill time,
/// kernel memory, the cost of an idle flow's next packet (the full path) and, from 400 000
/// flows, of the established path's hit on cold flows at that occupancy, and the table
/// when full (a flood of new flows while established ones keep talking). The service gives
/// its endpoints the whole table (`endpoint_flow_share = 100`): what is measured is the
/// table, not the endpoint's share of it (at the default 20 %, a 1 000-flow table let the
/// endpoint make 200 flows, and the flood at 100 000 flows met the share, not the table).
fn conntrack_scale(points: &[u32]) -> Result<String> {
    use std::time::Instant;

    use privatelink_tests::scale::{
        conntrack_memory, fill, frame, live_outcome, open_live, present,
    };

    let mut t = String::from(
        "| flows | table entries | flows held | fill (s) | kernel memory | bytes/flow | an idle flow's next packet (full path: partner check due) ns | trivial ns | ratio | fast-path hit on one of 20 000 cold flows: ns over trivial (ratio) | flood: new flows accepted | established: both entries kept | established: same SNAT tuple after | idle evicted | sweep now: ms (directions freed) | sweep a day later, freeing all: ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let state = with_flow_share(&packet_state(), 100);
    // As the per-packet table: its cold row runs here too.
    privatelink_tests::throughput::pin_to_last_cpu();
    for &flows in points {
        // The hits and the eviction count are taken over the synthetic flows after them.
        anyhow::ensure!(
            flows >= 10,
            "--flows {flows}: each point needs established flows (a tenth, at most 1 000) \
             and synthetic ones"
        );
        let mut h = Harness::with_conntrack(&state, 2 * flows)?;
        let start = Instant::now();
        // The established flows (1 000, or a tenth of a smaller point's) come first, made by
        // the data path itself (so their SNAT tuples are the ones it chooses): the oldest in
        // the table, which a table that ignored use would give up first. Synthetic flows
        // `n_live`.. fill the rest, older ones first.
        let n_live = 1000.min(flows / 10);
        let live = open_live(&mut h, n_live)?;
        // Their packets, both ways as TCP talks: the load balancer's answer, then the
        // client's ACK (the answer establishes both directions, the ACK then keeps the
        // client's fresh too).
        let established: Vec<(u32, &Vec<u8>)> = live
            .iter()
            .flat_map(|f| [(h.provider.ifindex, &f.reply), (h.consumer.ifindex, &f.ack)])
            .collect();
        // Their handshakes completed before the fill. Half-open, a direction is the first
        // a full bucket gives up: the hits below re-make the reply entries the fill gave
        // up, and those inserts took a few half-open flows' replies (made again later, some
        // on other tuples: the "995 of 1000" of earlier runs).
        for (ifindex, frame) in &established {
            let (action, _) = h.run(*ifindex, frame)?;
            anyhow::ensure!(
                action == XDP_REDIRECT,
                "an established flow's handshake ended in XDP action {action} (counters: {:?})",
                h.active_stats()
            );
        }
        let chunk = 1_000_000;
        let mut i = n_live;
        while i < flows {
            let end = (i + chunk).min(flows);
            fill(&mut h, i..end, 100_000_000_000 - (i as u64) * 1000)?;
            i = end;
        }
        let fill_s = start.elapsed().as_secs_f64();
        let mem = conntrack_memory(&h)?;
        // Flows the table holds once full (two choices of two 4-slot buckets: a fill to the
        // last slot evicts some, as new flows in a full table would).
        let held = h.dp.flows()?.len() / 2;
        // Hits on flows spread over the whole table: on at most a tenth of its synthetic
        // flows (a hit takes the full path, partner check overdue, and keeps its flow
        // fresh: at 1 000 flows, `RUNS` draws met nearly every one, and the flood then met
        // fresh flows, not idle ones).
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..RUNS.min((flows - n_live) as usize / 10).max(10) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = n_live + (rng % (flows - n_live) as u64) as u32;
            if !present(&h, i)? {
                continue;
            }
            let f = frame(&h, i);
            ours.push(h.time(h.consumer.ifindex, &f, None, 1)?.1);
            base.push(h.time(h.consumer.ifindex, &f, Some(TRIVIAL), 1)?.1);
        }
        anyhow::ensure!(
            !ours.is_empty(),
            "{flows} flows: none of the synthetic flows drawn for timing is in the table"
        );
        let (o, b) = (median(&mut ours), median(&mut base));
        // The established path's hit at this occupancy, its flows' lines cold: the
        // per-packet table's cold row (`cold_row`) on this table, where the row's flows
        // are a twentieth of it at most (made through the data path, one-way, they take
        // the places of idle flows; at a fifth, at 100 000 flows, one of them was given
        // up for another, as a full table does, and its next run was a new flow).
        let cold_flows = if flows >= 20 * COLD_FLOWS {
            COLD_FLOWS
        } else {
            0
        };
        let cold = if cold_flows > 0 {
            let mut rows = Vec::new();
            let cif = h.consumer.ifindex;
            cold_row(&mut rows, &mut h, cif)?;
            let r = &rows[0];
            format!("{:.0} ({:.2}x)", r.replayed.0 - r.replayed.1, r.ratio)
        } else {
            "-".to_string()
        };
        // The table is full. New flows arrive while the established flows keep talking.
        let flood = 20_000u32;
        // They talked just now (before the first new flow), and keep talking. (Filling a
        // large table takes longer than their 10 s of grace, and the hits' re-made flows
        // may have given a few up since: this first round makes those again, before the
        // count starts.)
        for (ifindex, f) in &established {
            h.run(*ifindex, f)?;
        }
        let new_before = h.count(Reason::ForwardNewFlow);
        let (mut accepted, mut full) = (0, 0);
        for n in 0..flood {
            let mut v = Vec::new();
            etherparse::PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
                .ipv4(
                    [172, 16 + (n >> 16) as u8, (n >> 8) as u8, n as u8],
                    ENI,
                    64,
                )
                .tcp(50000, 443, 1, 64240)
                .syn()
                .write(&mut v, b"")?;
            // XDP_REDIRECT: the new flow was accepted and sent on; else refused, and why (the
            // new flow's own refusal, not an established flow's).
            let before = h.count(Reason::DropConntrackFull);
            accepted += (h.run(h.consumer.ifindex, &v)?.0 == XDP_REDIRECT) as u32;
            full += h.count(Reason::DropConntrackFull) - before;
            if n % 1000 == 0 {
                for (ifindex, f) in &established {
                    h.run(*ifindex, f)?;
                }
            }
        }
        // New flows beyond the flood's own: established flows whose entries the table had
        // given up, made again by their next packet.
        let remade = h.count(Reason::ForwardNewFlow) - new_before - accepted as u64;
        // Every new flow refused was refused for the table (no share, SNAT tuples to spare).
        anyhow::ensure!(
            u64::from(accepted) + full == u64::from(flood),
            "{flows} flows: of {flood} new flows {accepted} accepted and {full} refused as the \
             table full; the rest for another reason (counters: {:?})",
            h.active_stats()
        );
        // Entries first (an established flow's next packet re-creates what was evicted),
        // then that packet: does it leave with the tuple the connection had?
        let (mut kept, mut same) = (0, 0);
        for f in &live {
            let (both, tuple) = live_outcome(&mut h, f)?;
            kept += both as u32;
            same += tuple as u32;
        }
        // Idle flows (`n_live` .. `n_live` + 100 000, sampled) gone.
        let sample = 100_000.min(flows - n_live);
        let evicted = (n_live..n_live + sample)
            .filter(|i| !present(&h, *i).unwrap_or(true))
            .count();
        // The daemon's sweep (`flowtable::sweep`) of the full table: now (a walk; the
        // flood's half-open flows, and the cold row's one-way ones, may have died
        // meanwhile, and go), then a day later, when
        // every flow is dead (each direction's partner looked up, claimed, freed).
        let cfg = privatelink_common::Config::default();
        let mut busy = Default::default();
        let now = privatelink_tests::scale::ktime_ns();
        let start = Instant::now();
        let walked =
            h.dp.sweep_flows::<privatelink_common::FlowEntry>(now, &cfg, &mut busy)?;
        let walk_ms = start.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            walked.freed <= u64::from(2 * (flood + cold_flows)),
            "a sweep now freed more than the flood's and the cold row's flows: {walked:?}"
        );
        let start = Instant::now();
        let all = h.dp.sweep_flows::<privatelink_common::FlowEntry>(
            now + 86_400_000_000_000,
            &cfg,
            &mut busy,
        )?;
        let free_ms = start.elapsed().as_secs_f64() * 1e3;
        let left = h.dp.flows()?;
        anyhow::ensure!(
            all.freed + all.passed == all.live && left.len() as u64 == all.passed,
            "a sweep of dead flows left some: {all:?}; left {:?}",
            &left[..left.len().min(4)]
        );
        let _ = writeln!(
            t,
            "| {flows} | {} | {held} | {fill_s:.1} | {:.0} MiB | {:.0} | {o:.0} | {b:.0} | {:.2}x | {cold} | {accepted} of {flood} ({full} refused: table full) | {kept} of {n_live} ({remade} re-made during the flood) | {same} of {n_live} | {evicted} of the oldest {sample} | {walk_ms:.0} ({}) | {free_ms:.0} |",
            2 * flows,
            mem as f64 / (1 << 20) as f64,
            mem as f64 / flows as f64,
            o / b.max(1.0),
            walked.freed
        );
        drop(h);
    }
    let out = format!(
        "\nConntrack at scale (synthetic flows written into PL_CONNTRACK; an idle flow's next packet: random flows, single runs, medians; the cold hit: the per-packet table's cold row, replayed)\n\n{t}"
    );
    print!("{out}");
    Ok(out)
}

/// Mpps through the forwarder: privatelink's XDP NAT against the kernel's nftables NAT and
/// a bare XDP redirect (by `bpf_redirect`, and by `bpf_redirect_map` through a DEVMAP), on
/// the same veth topology, with 1, 1 000 and 100 000 flows; and the floor of a flow-table
/// NAT on this machine: the bare redirect after one read of a table as big as the NAT's.
fn throughput() -> Result<String> {
    use privatelink_tests::throughput::{Mode, run};
    const PACKETS: u32 = 1_000_000;
    const ROUNDS: usize = 3;
    const FLOWS: [u32; 3] = [1, 1000, 100_000];
    const MODES: [Mode; 6] = [
        Mode::XdpNat,
        Mode::Nftables,
        Mode::BareRedirect,
        Mode::BareRedirectMap,
        Mode::BareLookup,
        Mode::NatFloor,
    ];
    let samples = run(&MODES, &FLOWS, PACKETS, ROUNDS)?;
    let of = |m: Mode, flows: u32, f: &dyn Fn(&privatelink_tests::throughput::Sample) -> f64| {
        samples
            .iter()
            .filter(|s| s.mode == m && s.flows == flows)
            .map(f)
            .collect::<Vec<f64>>()
    };
    let rounds = |m: Mode, flows: u32| of(m, flows, &|s| s.mpps());
    let live = |m: Mode, flows: u32| of(m, flows, &|s| s.ns_per_packet.unwrap_or(0.0));
    let mut t = String::from(
        "| flows | (a) privatelink Mpps | (b) nftables Mpps | (c) bare redirect Mpps | (d) by DEVMAP Mpps | (e) one read, redirect Mpps | (f) one read, least NAT work Mpps | a/b | f/b | a/c | d/c | e/c | f/c | a/f | live: (a) ns/pkt | (c) ns/pkt | (d) ns/pkt | (e) ns/pkt | (f) ns/pkt | a/c |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for flows in FLOWS {
        let (a, b, c, d, e, f) = (
            rounds(Mode::XdpNat, flows),
            rounds(Mode::Nftables, flows),
            rounds(Mode::BareRedirect, flows),
            rounds(Mode::BareRedirectMap, flows),
            rounds(Mode::BareLookup, flows),
            rounds(Mode::NatFloor, flows),
        );
        // Ratios within each round, then their median.
        let pct = |x: &[f64], y: &[f64]| 100.0 * med_ratio(x, y);
        let (ab, fb, ac, dc, ec, fc, af) = (
            med_ratio(&a, &b),
            med_ratio(&f, &b),
            pct(&a, &c),
            pct(&d, &c),
            pct(&e, &c),
            pct(&f, &c),
            pct(&a, &f),
        );
        let (la, lc, ld, le, lf) = (
            live(Mode::XdpNat, flows),
            live(Mode::BareRedirect, flows),
            live(Mode::BareRedirectMap, flows),
            live(Mode::BareLookup, flows),
            live(Mode::NatFloor, flows),
        );
        let lac = med_ratio(&la, &lc);
        let _ = writeln!(
            t,
            "| {flows} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {ab:.2}x | {fb:.2}x | {ac:.0} % | {dc:.0} % | {ec:.0} % | {fc:.0} % | {af:.0} % | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {lac:.2}x |",
            med(a),
            med(b),
            med(c),
            med(d),
            med(e),
            med(f),
            med(la),
            med(lc),
            med(ld),
            med(le),
            med(lf),
        );
    }
    let lost: u64 = samples
        .iter()
        .map(|s| s.sent.saturating_sub(s.arrived))
        .sum();

    let out = format!(
        "\nThroughput on veth (generator: BPF_F_TEST_XDP_LIVE_FRAMES, {PACKETS} 64-byte UDP frames per run, counted at the \
         sink's interface; medians of {ROUNDS} rounds, the modes taking turns; ratios within each round; {lost} frames \
         lost in all). Live: the forwarder's program's run_time_ns / run_cnt (BPF_ENABLE_STATS) over {} more frames \
         of the same flows, in a run of their own. (e) reads one line of a table as big as (a)'s IPv4 flow table at a \
         bucket picked by the flow, then redirects as (c): a forwarder that keeps per-flow state in such a table cannot \
         beat it. (f) reads one whole line of the same bucket and does the least work any NAT does with it (the \
         key compared, the header checked, the frame rewritten from the line, a stamp written back when it \
         changed): what a flow-table NAT whose hit costs one line could reach at best; a/f says how close (a) \
         comes.\n\n{t}",
        privatelink_tests::throughput::STATS_PACKETS
    );
    print!("{out}");
    Ok(out)
}

/// The CPU the forwarding pipeline takes at a fixed offered load, below every mode's
/// limit: each mode's busy share of the CPU, and the forwarder's own part (over the
/// generator-only baseline of the same round) as a ratio to nftables'.
fn cpu_at_load() -> Result<String> {
    use privatelink_tests::throughput::{LOAD_MODES, Mode, fixed_load};
    const FLOWS: u32 = 1000;
    const PPS: u32 = 300_000;
    const SECONDS: f64 = 5.0;
    const ROUNDS: usize = 3;
    let loads = fixed_load(FLOWS, PPS, SECONDS, ROUNDS)?;
    let busy = |m: Mode| -> Vec<f64> {
        loads
            .iter()
            .filter(|l| l.mode == m)
            .map(|l| l.busy)
            .collect()
    };
    // The CPU's busy time per frame sent, in ns: a round that ran late offered a little
    // less, and its share of a busy CPU is compared per frame, not per second.
    let per_frame = |m: Mode| -> Vec<f64> {
        loads
            .iter()
            .filter(|l| l.mode == m)
            .map(|l| 1e9 * l.busy * l.seconds / l.sent.max(1) as f64)
            .collect()
    };
    let base = per_frame(Mode::IngressDrop);
    let over =
        |m: Mode| -> Vec<f64> { per_frame(m).iter().zip(&base).map(|(b, z)| b - z).collect() };
    let nft = over(Mode::Nftables);
    let mut t = String::from(
        "| mode | offered kpps | arrived | CPU busy | busy ns per frame | over the baseline | to nftables |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in LOAD_MODES {
        let (sent, arrived) = loads
            .iter()
            .filter(|l| l.mode == m)
            .fold((0, 0), |(s, a), l| (s + l.sent, a + l.arrived));
        let offered = med(loads
            .iter()
            .filter(|l| l.mode == m)
            .map(|l| l.sent as f64 / l.seconds / 1000.0)
            .collect());
        let x = over(m);
        let ratio = if m == Mode::IngressDrop {
            "-".to_string()
        } else {
            let r = med_ratio(&x, &nft);
            format!("{r:.2}x")
        };
        let _ = writeln!(
            t,
            "| {} | {offered:.0} | {:.1} % | {:.1} % | {:.0} | {:.0} | {ratio} |",
            m.label(),
            100.0 * arrived as f64 / sent.max(1) as f64,
            100.0 * med(busy(m)),
            med(per_frame(m)),
            med(x),
        );
    }
    let out = format!(
        "\nCPU at a fixed offered load ({} kpps of 64-byte UDP frames over {FLOWS} flows, {SECONDS} s per round, \
         {ROUNDS} rounds with the modes taking turns; offered: the load in fact, a round that ran late a little lower; the whole pipeline on one CPU, its busy share from /proc/stat, \
         and that busy time per frame sent (so that a round that ran late compares fairly); \
         the forwarder's part is a mode's busy ns per frame minus the same round's baseline, where the forwarder drops every \
         frame at its ingress (the fp0 -> p0 hop and the sink's receive are in every forwarding mode's part); medians, ratios within each round)\n\n{t}",
        PPS / 1000
    );
    print!("{out}");
    Ok(out)
}

/// The median of `v` (0 if empty).
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The median of the ratios `a[i] / b[i]`, round by round (the samples of one round in
/// the same place of both).
fn med_ratio(a: &[f64], b: &[f64]) -> f64 {
    med(a.iter().zip(b).map(|(a, b)| a / b.max(1e-9)).collect())
}

/// Daemon restart (kill -9, start, ready) with `flows` live flows in the pinned conntrack
/// table, against the same restart with the table empty.
fn restart_with_flows(flows: u32) -> Result<String> {
    use privatelink_common::{FlowEntry, FlowKey, PROTO_TCP, map_names};
    use privatelink_tests::{apidaemon::ApiDaemon, scale::ktime_ns};
    use privatelink_user::dataplane;

    let mut empty = ApiDaemon::with_conntrack("plrst", 2 * flows)?;
    empty.restart()?; // the first start of a size creates the map; time a re-start
    let empty_took = empty.restart()?;
    drop(empty);

    let mut d = ApiDaemon::with_conntrack("plrst", 2 * flows)?;
    let key = |i: u32, dir: u32| {
        FlowKey::new(
            dir,
            [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
            [10, 10, 1, 100],
            40000,
            80,
            PROTO_TCP,
        )
    };
    {
        let mut map = dataplane::open_pinned(&d.pin, map_names::CONNTRACK)?;
        let g = dataplane::flowtable::geometry::<FlowEntry>(&map)?;
        let t = ktime_ns();
        let e = FlowEntry {
            last_seen: privatelink_common::seen_tick(t),
            checked: privatelink_common::checked_tick(t),
            ..Default::default()
        };
        for i in 0..flows {
            dataplane::flowtable::put(&mut map, &g, &key(i, 1), e)?;
            dataplane::flowtable::put(&mut map, &g, &key(i, 2), e)?;
        }
    }
    let took = d.restart()?;
    let map = dataplane::open_pinned(&d.pin, map_names::CONNTRACK)?;
    let g = dataplane::flowtable::geometry::<FlowEntry>(&map)?;
    let kept = (0..flows)
        .step_by((flows / 1000).max(1) as usize)
        .filter(|i| {
            dataplane::flowtable::get::<FlowEntry>(&map, &g, &key(*i, 1)).is_ok_and(|e| e.is_some())
        })
        .count();
    let out = format!(
        "\nDaemon restart (kill -9, start, ready; the program is verified again): with {flows} live flows in the pinned conntrack table {:.2} s, with it empty {:.2} s; a sample of {kept} flows checked still there afterwards\n",
        took.as_secs_f64(),
        empty_took.as_secs_f64()
    );
    print!("{out}");
    Ok(out)
}

/// API-call-to-map-visible latency and endpoints per second, on redb (one daemon) and on
/// etcd (two daemons of a fleet on a three-member cluster on loopback) side by side: `n`
/// endpoints created one after the other through the first daemon's API, each checked in
/// its pinned PL_ENDPOINTS map as soon as the response arrives, and with etcd also in the
/// second daemon's (the change's propagation).
fn control_plane(n: usize) -> Result<String> {
    let redb = control_run(n, false)?;
    let etcd = control_run(n, true)?;
    let ms =
        |v: &[u64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
    let row = |what: &str, f: &dyn Fn(&ControlRun) -> String| {
        format!("| {what} | {} | {} |\n", f(&redb), f(&etcd))
    };
    let mut out = format!(
        "\nControl plane: {n} endpoints created one by one through the API (each response means committed: an fsync'ed redb transaction, or an etcd transaction a majority of three members has; and in the maps)\n\n\
         | measure | redb (one host) | etcd (3 members; a fleet of 2) |\n|---|---:|---:|\n"
    );
    for (what, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        out += &row(&format!("API call to map visible, {what}"), &|r| {
            format!("{:.2} ms", ms(&r.lat, q))
        });
    }
    out += &row("endpoints applied per second", &|r| {
        format!("{:.0}", r.rate)
    });
    for (what, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        out += &row(&format!("answer to the other host's map, {what}"), &|r| {
            if r.prop.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2} ms", ms(&r.prop, q))
            }
        });
    }
    print!("{out}");
    Ok(out)
}

/// One backend's figures: microseconds, sorted.
struct ControlRun {
    lat: Vec<u64>,
    prop: Vec<u64>,
    rate: f64,
}

fn control_run(n: usize, etcd: bool) -> Result<ControlRun> {
    use std::time::Instant;

    use privatelink_common::{EndpointEni, VpcAddr, map_names};
    use privatelink_tests::{apidaemon::ApiDaemon, etcd::EtcdCluster, netns::unique_name};
    use privatelink_user::{client::Client, dataplane, model::numeric_id};
    use serde_json::json;

    let cluster = if etcd {
        Some(EtcdCluster::start(3)?)
    } else {
        None
    };
    let token = std::env::temp_dir().join(format!("{}.token", unique_name("plbench")));
    let daemons: Vec<ApiDaemon> = match &cluster {
        None => vec![ApiDaemon::start("plbench")?],
        Some(c) => {
            std::fs::write(&token, "bench-fleet-admin-token-0123\n")?;
            let extra = [
                "--etcd".to_string(),
                c.endpoints(),
                "--admin-token-file".to_string(),
                token.display().to_string(),
            ];
            (0..2)
                .map(|i| {
                    let mut extra = extra.to_vec();
                    extra.extend(["--host-name".to_string(), format!("host{i}")]);
                    ApiDaemon::with_args(&format!("plbench{i}"), 65536, &extra)
                })
                .collect::<Result<_>>()?
        }
    };
    let _ = std::fs::remove_file(&token);
    let url = daemons[0].url.clone();
    let admin = Client::new(&url, Some(daemons[0].admin_token.clone()));
    let token = |id: &str| -> Result<String> {
        Ok(admin.post("/v1/accounts", &json!({"id": id}))?["token"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let (ta, tb) = (token("acct-a")?, token("acct-b")?);
    admin.post(
        "/v1/vpcs",
        &json!({"id": "vpc-a", "account": "acct-a", "cidr": "10.10.0.0/16", "interface": "fc0",
        "vswitches": [{"id": "vsw-a1", "zone": "zone-a", "cidr": "10.10.64.0/18"}]}),
    )?;
    admin.post(
        "/v1/vpcs",
        &json!({"id": "vpc-b", "account": "acct-b", "cidr": "10.10.0.0/16", "interface": "fp0",
        "vswitches": [{"id": "vsw-b0", "zone": "zone-a", "cidr": "10.10.0.0/24"}]}),
    )?;
    let (a, b) = (Client::new(&url, Some(ta)), Client::new(&url, Some(tb)));
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "auto_accept": true, "whitelist": ["acct-a"],
        "backends": [{"zone": "zone-a", "address": "10.10.0.10"}], "snat": ["10.10.0.200"],
        "listeners": [{"protocol": "tcp", "port": 80}]}),
    )?;

    let maps: Vec<_> = daemons
        .iter()
        .map(|d| dataplane::open_pinned(&d.pin, map_names::ENDPOINTS))
        .collect::<Result<_>>()?;
    let eps: Vec<aya::maps::HashMap<_, VpcAddr, EndpointEni>> = maps
        .iter()
        .map(aya::maps::HashMap::try_from)
        .collect::<Result<_, _>>()?;
    let vpc_id = numeric_id("vpc-a");
    let (mut lat, mut prop) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t0 = Instant::now();
    for i in 0..n {
        let eni = std::net::Ipv4Addr::new(10, 10, 64 + (i / 250) as u8, 1 + (i % 250) as u8);
        let t = Instant::now();
        a.post(
            "/v1/endpoints",
            &json!({"id": format!("ep-{i}"), "vpc": "vpc-a", "service": "epsrv-b",
            "zones": [{"vswitch": "vsw-a1", "eni": eni.to_string()}]}),
        )?;
        let answered = t.elapsed();
        let key = VpcAddr {
            vpc_id,
            addr: eni.octets(),
        };
        for (h, m) in eps.iter().enumerate() {
            while m.get(&key, 0).is_err() {
                anyhow::ensure!(
                    t.elapsed().as_secs() < 10,
                    "{eni} never reached host {h}'s map"
                );
            }
            let seen = t.elapsed();
            match h {
                0 => lat.push(seen.as_micros() as u64),
                _ => prop.push(seen.saturating_sub(answered).as_micros() as u64),
            }
        }
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    prop.sort_unstable();
    Ok(ControlRun { lat, prop, rate })
}

/// The trivial program every path is compared with.
const TRIVIAL: &str = "privatelink_tx";
/// Repeats per BPF_PROG_TEST_RUN call behind `privatelink_replay`.
const REPEAT: u32 = 100_000;
/// The per-packet fixture's flow table: entries (two per flow; the daemon's default is twice
/// as many).
const CONNTRACK_ENTRIES: u32 = 1 << 20;
/// Replayed calls per path and program, interleaved (the median is reported).
const ROUNDS: usize = 21;
/// First packets: each replayed run a new flow, from a source port of its own, so that
/// every call of both programs (each run counts the port up) fits the ports from the
/// stored frame's up, above the single runs' (1 to `RUNS`). Few enough that the SNAT
/// tuples to the load balancer's port stay mostly free (25 000 flows of the two
/// addresses' 129 000): with 8 attempts per search, a fuller pool fails a search now and
/// then (one in 40 000 did, at 31 %), and its probes are part of what a row would time.
const MISS_ROUNDS: usize = 5;
const MISS_REPEAT: u32 = 1_000;
const MISS_PORT: u16 = RUNS as u16 + 1;
/// The client port of the NAT rows' live flow: above every first packet's.
const HIT_PORT: u16 = 65_000;
const _: () =
    assert!((MISS_PORT as usize + 2 * MISS_ROUNDS * MISS_REPEAT as usize) < HIT_PORT as usize);

/// One path's figures: single-run medians (ours, trivial), and the median of the replayed
/// calls' averages (ours, trivial; replay and tail call included in both; `Replay`).
struct Row {
    name: String,
    single: (f64, f64),
    replayed: (f64, f64),
    /// Median of the replayed calls' pairwise ratios.
    ratio: f64,
}

/// How a path is replayed: the frame, and the offset of a 16-bit field that changes on
/// every run (a new flow each run), with the repeats per call; and how every run of the
/// path must end: its XDP action, and the counter it is counted under (a test run returns
/// only its last repeat's action; the counter sees every one; `None` only for a reference
/// program, which counts nothing). A row whose runs end in another action is an error,
/// not a figure (a path that drops early would look cheap).
struct Replay {
    frame: Vec<u8>,
    vary_at: Option<usize>,
    /// With `vary_at`: 0, every run a new flow; else the field runs through this many
    /// values, each once a cycle in a scrambled order, flows made before
    /// (`Harness::time_replayed`).
    cycle: u32,
    repeat: u32,
    want: (u32, Option<Reason>),
}

impl Replay {
    fn same(frame: Vec<u8>, want: (u32, Reason)) -> Self {
        Self {
            frame,
            vary_at: None,
            cycle: 0,
            repeat: REPEAT,
            want: (want.0, Some(want.1)),
        }
    }

    /// The cold rows' replay: each run the UDP source port (at 14 + 20) of the next of the
    /// `COLD_FLOWS` flows in the replay's scrambled order, every run redirected and counted
    /// as `counted`.
    fn cold(frame: Vec<u8>, counted: Option<Reason>) -> Self {
        Self {
            frame,
            vary_at: Some(34),
            cycle: COLD_FLOWS,
            repeat: COLD_FLOWS,
            want: (XDP_REDIRECT, counted),
        }
    }

    /// Single runs before the replayed calls: `RUNS`, but `COLD_RUNS` for a cycle of
    /// flows (whose timing must fit in their first second).
    fn single_runs(&self) -> usize {
        if self.cycle == 0 { RUNS } else { COLD_RUNS }
    }

    /// Replayed calls of each program: `ROUNDS`; first packets `MISS_ROUNDS`; a cycle of
    /// flows `COLD_ROUNDS` (a call takes 15–30 ms here whatever its repeats).
    fn rounds(&self) -> usize {
        match (self.vary_at, self.cycle) {
            (None, _) => ROUNDS,
            (Some(_), 0) => MISS_ROUNDS,
            (Some(_), _) => COLD_ROUNDS,
        }
    }
}

/// Times `frame` arriving on `ifindex`, interleaved with the trivial program: single runs,
/// then replayed calls of each (`Replay::single_runs`, `Replay::rounds`).
fn row(
    rows: &mut Vec<Row>,
    h: &mut Harness,
    name: &str,
    ifindex: u32,
    frame: &dyn Fn(usize) -> Vec<u8>,
    replay: &Replay,
) -> Result<()> {
    let (action, Some(counted)) = replay.want else {
        anyhow::bail!("{name}: a path of privatelink's needs the counter its runs count under");
    };
    let before = h.count(counted);
    let (row, runs) = timed(h, None, name, ifindex, frame, replay)?;
    // Every run, single and replayed, must have been counted as the path counts it.
    let counted_runs = h.count(counted) - before;
    anyhow::ensure!(
        counted_runs == runs,
        "{name}: {runs} runs ending in XDP action {action} as {} expected; {counted_runs} \
         runs were counted so (all counters: {:?})",
        counted.as_str(),
        h.active_stats()
    );
    rows.push(row);
    Ok(())
}

/// Times `program` (privatelink's: `None`) on `frame`, interleaved with the trivial
/// program, as `row` describes; every single run and every replayed call must end in
/// `replay.want`'s action. Returns the row and how many runs it made of `program`.
fn timed(
    h: &mut Harness,
    program: Option<&str>,
    name: &str,
    ifindex: u32,
    frame: &dyn Fn(usize) -> Vec<u8>,
    replay: &Replay,
) -> Result<(Row, u64)> {
    let action = replay.want.0;
    let runs = replay.single_runs();
    let (mut ours, mut base) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        let f = frame(i);
        let (v, ns) = h.time(ifindex, &f, program, 1)?;
        anyhow::ensure!(
            v == action,
            "{name}: single run {i} ended in XDP action {v}, not {action} (counters: {:?})",
            h.active_stats()
        );
        ours.push(ns);
        base.push(h.time(ifindex, &f, Some(TRIVIAL), 1)?.1);
    }
    // Each replayed run of a varied frame a value of its own (ours and the trivial
    // program's runs alike: 2 x MISS_ROUNDS x MISS_REPEAT of them), or with a cycle the
    // cycle's values in its order from its first.
    h.reset_replay_count()?;
    let rounds = replay.rounds();
    let (mut r_ours, mut r_base) = (Vec::new(), Vec::new());
    let mut verdicts = Vec::new();
    for _ in 0..rounds {
        let (v, ns) = h.time_replayed(
            ifindex,
            &replay.frame,
            replay.vary_at,
            replay.cycle,
            program,
            replay.repeat,
        )?;
        verdicts.push(v);
        r_ours.push(ns);
        let (_, ns) = h.time_replayed(
            ifindex,
            &replay.frame,
            replay.vary_at,
            replay.cycle,
            Some(TRIVIAL),
            replay.repeat,
        )?;
        r_base.push(ns.max(1));
    }
    anyhow::ensure!(
        verdicts.iter().all(|v| *v == action),
        "{name}: the replayed calls' last actions were {verdicts:?}, not {action} (counters: \
         {:?})",
        h.active_stats()
    );
    // The ratio of each interleaved pair, so that a slow spell of the machine (a shared
    // VM) affects both sides of it.
    let mut ratios: Vec<u64> = r_ours
        .iter()
        .zip(&r_base)
        .map(|(o, b)| o * 1000 / b)
        .collect();
    let row = Row {
        name: name.to_string(),
        single: (median(&mut ours), median(&mut base)),
        replayed: (median(&mut r_ours), median(&mut r_base)),
        ratio: median(&mut ratios) / 1000.0,
    };
    Ok((row, (runs + rounds * replay.repeat as usize) as u64))
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| path | replayed: privatelink ns/pkt | trivial ns/pkt | ratio | privatelink − trivial | single runs: privatelink ns | trivial ns | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (o, b) = r.single;
        let (o2, b2) = r.replayed;
        let _ = writeln!(
            t,
            "| {} | {o2:.0} | {b2:.0} | {:.2}x | {:.0} | {o:.0} | {b:.0} | {:.2}x |",
            r.name,
            r.ratio,
            o2 - b2,
            o / b.max(1.0)
        );
    }
    t
}

/// A horizontal bar chart of the replayed averages, ours next to the trivial program's.
fn svg(rows: &[Row]) -> String {
    let max = rows
        .iter()
        .map(|r| r.replayed.0.max(r.replayed.1))
        .fold(1.0, f64::max);
    let (w, label, bar_h) = (900.0, 330.0, 14.0);
    let scale = (w - label - 80.0) / max;
    let h = 40.0 + rows.len() as f64 * (2.0 * bar_h + 12.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">ns per packet (BPF_PROG_TEST_RUN, replayed repeats): privatelink (blue) vs swap-MACs-and-XDP_TX (grey)</text>\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 36.0 + i as f64 * (2.0 * bar_h + 12.0);
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{}</text>\n\
             <rect x=\"{label}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"#3572b0\"/>\
             <text x=\"{:.1}\" y=\"{}\">{:.0}</text>\n\
             <rect x=\"{label}\" y=\"{}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"#aaaaaa\"/>\
             <text x=\"{:.1}\" y=\"{}\">{:.0}</text>",
            y + bar_h + 4.0,
            r.name,
            r.replayed.0 * scale,
            label + r.replayed.0 * scale + 4.0,
            y + bar_h - 3.0,
            r.replayed.0,
            y + bar_h,
            r.replayed.1 * scale,
            label + r.replayed.1 * scale + 4.0,
            y + 2.0 * bar_h - 3.0,
            r.replayed.1,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// GENEVE encapsulation of a live GWLB flow, and decapsulation of what its appliance
/// returns (the encapsulated frame with outer addresses and MACs swapped, as an
/// appliance sends it back; swapping leaves both checksums valid).
fn gwlb_rows(rows: &mut Vec<Row>) -> Result<()> {
    use privatelink_tests::gwlb::{CLIENT as C, SERVER as S, SERVER_MAC, harness, tcp, tcp_ack};
    let mut h = harness();
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    // The flow opened by its SYN; timed: a data segment of it (a SYN would also look up
    // the other direction's entry, as the handshake tracking does).
    let _ = h.run(cif, &tcp(&h, C, S, 40000, 80, &[]))?;
    let fwd = tcp_ack(&h, C, S, 40000, 80, &[0u8; 18]);
    let (_, enc) = h.run(cif, &fwd)?;
    anyhow::ensure!(
        enc.len() == fwd.len() + privatelink_common::GWLB_OVERHEAD,
        "not encapsulated"
    );
    let back = privatelink_tests::gwlb::returned(&enc);
    // The first return asks for the server's MAC; its ARP answer teaches it.
    let _ = h.run(pif, &back)?;
    let arp = privatelink_tests::frames::arp_reply(h.consumer.mac, SERVER_MAC, S);
    let _ = h.run(cif, &arp)?;
    let (act, _) = h.run(pif, &back)?;
    anyhow::ensure!(act == 4, "decapsulation did not redirect");
    row(
        rows,
        &mut h,
        "GENEVE encapsulation (GWLB flow hit)",
        cif,
        &|_| fwd.clone(),
        &Replay::same(fwd.clone(), (XDP_REDIRECT, Reason::GwlbToAppliance)),
    )?;
    row(
        rows,
        &mut h,
        "GENEVE decapsulation (from the appliance)",
        pif,
        &|_| back.clone(),
        &Replay::same(back.clone(), (XDP_REDIRECT, Reason::GwlbFromAppliance)),
    )?;
    Ok(())
}

/// The same for IPv6 inside GENEVE (protocol 0x86DD): a live flow's encapsulation, and
/// the decapsulation of its reply's return (delivered to the client's MAC the flow
/// learned at its start: no neighbour solicitation first).
fn gwlb6_rows(rows: &mut Vec<Row>) -> Result<()> {
    use privatelink_tests::gwlb::{CLIENT6 as C, SERVER6 as S, harness6_with, returned, tcp6};
    let mut h = harness6_with(false, "five_tuple", "no_rebalance");
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    let fwd = tcp6(&h, C, S, 40000, 80, &[0u8; 18]);
    let (_, enc) = h.run(cif, &fwd)?;
    anyhow::ensure!(
        enc.len() == fwd.len() + privatelink_common::GWLB_OVERHEAD,
        "not encapsulated"
    );
    let (_, enc_reply) = h.run(cif, &tcp6(&h, S, C, 80, 40000, &[0u8; 18]))?;
    let back = returned(&enc_reply);
    let (act, _) = h.run(pif, &back)?;
    anyhow::ensure!(act == 4, "IPv6 decapsulation did not redirect");
    row(
        rows,
        &mut h,
        "GENEVE IPv6 encapsulation (GWLB flow hit)",
        cif,
        &|_| fwd.clone(),
        &Replay::same(fwd.clone(), (XDP_REDIRECT, Reason::Gwlb6ToAppliance)),
    )?;
    row(
        rows,
        &mut h,
        "GENEVE IPv6 decapsulation (from the appliance)",
        pif,
        &|_| back.clone(),
        &Replay::same(back.clone(), (XDP_REDIRECT, Reason::Gwlb6FromAppliance)),
    )?;
    Ok(())
}

/// The IPv6 NAT's rows, on the packet tests' dual-stack state: a live flow's forward and
/// reply (conntrack hits), and first packets (a new flow each: the SNAT search, both
/// inserts), as the IPv4 rows measure them.
fn nat6_rows(rows: &mut Vec<Row>, only: Option<&str>) -> Result<()> {
    use privatelink_tests::dual::{client6, dual_state, eni6, lb6, teach_lb};
    let state = with_flow_share(&dual_state(), 99);
    let mut h = Harness::with_conntrack(&state, 1 << 20)?;
    teach_lb(&mut h);
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);
    let (client_mac, eni_mac) = (CLIENT_MAC, h.consumer.mac);
    let tcp6 = move |sport: u16, syn: bool| -> Vec<u8> {
        let b = PacketBuilder::ethernet2(client_mac, eni_mac)
            .ipv6(client6(), eni6(), 64)
            .tcp(sport, 80, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(5001) };
        let mut v = Vec::new();
        b.write(&mut v, &[0u8; 18]).expect("frame");
        v
    };
    let (act, out) = h.run(cif, &tcp6(HIT_PORT, true))?;
    anyhow::ensure!(act == 4, "the IPv6 SYN was not forwarded");
    let snat: [u8; 16] = out[22..38].try_into()?;
    let port = u16::from_be_bytes([out[54], out[55]]);
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(privatelink_tests::dual::LB6_MAC, h.provider.mac)
        .ipv6(lb6(), snat, 64)
        .tcp(80, port, 5000, 64240)
        .ack(1001)
        .write(&mut reply, &[0u8; 18])?;
    let fwd = tcp6(HIT_PORT, false);
    let firsts: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp6(1 + i as u16, true)).collect();
    let cases: Vec<Case> = vec![
        same(
            "IPv6 NAT forward (conntrack hit)",
            cif,
            fwd,
            (XDP_REDIRECT, Reason::Forward6ToService),
        ),
        (
            "IPv6 NAT first packet (conntrack miss)",
            cif,
            Box::new(move |i| firsts[i].clone()),
            // The TCP source port at 14 + 40.
            Replay {
                frame: tcp6(MISS_PORT, true),
                vary_at: Some(54),
                cycle: 0,
                repeat: MISS_REPEAT,
                want: (XDP_REDIRECT, Some(Reason::Forward6NewFlow)),
            },
        ),
        same(
            "IPv6 NAT reply (conntrack hit)",
            pif,
            reply,
            (XDP_REDIRECT, Reason::Forward6ToConsumer),
        ),
    ];
    run_cases(rows, &mut h, &cases, only)
}

/// A measured path: its name, the interface its frames arrive on, the frame of each
/// single run, and how it is replayed.
type Case = (&'static str, u32, FrameFn, Replay);

const COLD_ROW: &str = "NAT forward, one of 20 000 flows in a scrambled turn (cold buckets)";
/// The cold row's flows: UDP from source ports `COLD_PORT + 1` up (UDP: no TCP flow's
/// key, so none of the other rows' ports collide with them).
const COLD_FLOWS: u32 = 20_000;
const COLD_PORT: u16 = 20_000;
const COLD_RUNS: usize = 2_000;
const COLD_ROUNDS: usize = 9;
const _: () = assert!(COLD_PORT as u32 + COLD_FLOWS <= u16::MAX as u32);

const COLD_FLOOR: &str = "floor of a cold hit (one random line of a table as the NAT's)";

/// What the cold row's runs cost at least: `privatelink_redirect_lookup` (tests/lab-ebpf)
/// reads one line of a bucket of a table as large as the fixture's IPv4 flow table (the
/// harness's reference object, loaded with it), picked by the frame's flow, and redirects
/// as the bare redirect does; replayed over the cold row's flows in the same turn.
fn cold_floor(rows: &mut Vec<Row>, h: &mut Harness, cif: u32, pif: u32) -> Result<()> {
    h.reference.set_redirect_target(pif)?;
    cold_reference(rows, h, cif, "privatelink_redirect_lookup", COLD_FLOOR)
}

/// A floor of the cold row over its flows in the same turn: `program` of the reference
/// object (its table as large as the fixture's IPv4 flow table), named `name`. The
/// reference programs count nothing: their action alone is checked.
fn cold_reference(
    rows: &mut Vec<Row>,
    h: &mut Harness,
    cif: u32,
    program: &'static str,
    name: &'static str,
) -> Result<()> {
    let template = udp_to_eni(h, COLD_PORT, &[0u8; 18], true);
    let frames = cold_frames(&template);
    let replay = Replay::cold(template, None);
    let (row, _) = timed(h, Some(program), name, cif, &|i| frames[i].clone(), &replay)?;
    rows.push(row);
    Ok(())
}

/// The cold row's single runs' frames: `template` from each flow's source port in turn.
fn cold_frames(template: &[u8]) -> Vec<Vec<u8>> {
    (0..COLD_RUNS)
        .map(|i| {
            let mut f = template.to_vec();
            let port = COLD_PORT + 1 + (i as u32 % COLD_FLOWS) as u16;
            f[34..36].copy_from_slice(&port.to_be_bytes());
            f
        })
        .collect()
}

/// The NAT hit on a flow whose buckets are cold: `COLD_FLOWS` UDP flows made through the
/// data path, then each run a data packet of the next of them in a scrambled turn (between
/// two runs of a flow, the runs of all the others, in random buckets of the harness's
/// table): a hit whose lines seldom are in the core's caches and whose page
/// seldom is in its TLB, the NAT forward row's path otherwise. Every timed run must be a
/// fast-path hit (a flow's packet 15 clock ticks, about 0.94 s, after its last partner
/// check takes the full path), which the flows' fast-path counts show afterwards.
fn cold_row(rows: &mut Vec<Row>, h: &mut Harness, cif: u32) -> Result<()> {
    let template = udp_to_eni(h, COLD_PORT, &[0u8; 18], true);
    let start = std::time::Instant::now();
    // A first packet whose SNAT search ran out of its attempts (with the pool at most 16 %
    // taken, about 3 in 10 million) is made by another pass, whose runs of the flows made
    // before it are fast-path hits: `extra` of them.
    let made_before = h.count(Reason::ForwardNewFlow);
    let made = |h: &Harness| h.count(Reason::ForwardNewFlow) - made_before;
    let mut extra = 0;
    for pass in 0..3 {
        if pass > 0 {
            eprintln!(
                "{COLD_ROW}: {} of {COLD_FLOWS} flows made, another pass",
                made(h)
            );
            extra += made(h);
        }
        h.reset_replay_count()?;
        let _ = h.time_replayed(cif, &template, Some(34), COLD_FLOWS, None, COLD_FLOWS)?;
        if made(h) == u64::from(COLD_FLOWS) {
            break;
        }
    }
    anyhow::ensure!(
        made(h) == u64::from(COLD_FLOWS),
        "{COLD_ROW}: {} of {COLD_FLOWS} flows made (counters: {:?})",
        made(h),
        h.active_stats()
    );
    let frames = cold_frames(&template);
    let replay = Replay::cold(template, Some(Reason::ForwardToService));
    row(rows, h, COLD_ROW, cif, &|i| frames[i].clone(), &replay)?;
    let took = start.elapsed();
    // Each flow's forward entry counted every timed run of it on the fast path: one per
    // replayed call, one more for the flows of the single runs (the first `COLD_RUNS`).
    let (mut fast, mut short) = (0u64, 0u32);
    let ports = COLD_PORT + 1..=COLD_PORT + COLD_FLOWS as u16;
    for (k, e) in h.dp.flows()? {
        if k.proto == privatelink_common::PROTO_UDP && k.dport == 53 && ports.contains(&k.sport) {
            let single = usize::from(k.sport - COLD_PORT - 1) < COLD_RUNS;
            if usize::from(e.fast_packets) < COLD_ROUNDS + usize::from(single) {
                short += 1;
            }
            fast += u64::from(e.fast_packets);
        }
    }
    let want = u64::from(COLD_FLOWS) * COLD_ROUNDS as u64 + COLD_RUNS as u64 + extra;
    anyhow::ensure!(
        short == 0 && fast == want,
        "{COLD_ROW}: {fast} fast-path packets counted on the flows, not {want}; {short} \
         flows short of theirs: timed runs took the full path (made and timed in {took:?}: \
         partner checks fall due 0.94 s after a flow's last)"
    );
    Ok(())
}

/// A path fed the same frame every time, single runs and replayed alike.
fn same(name: &'static str, ifindex: u32, f: Vec<u8>, want: (u32, Reason)) -> Case {
    let g = f.clone();
    (
        name,
        ifindex,
        Box::new(move |_| g.clone()),
        Replay::same(f, want),
    )
}

/// The rows of `cases` (those whose name contains `only`, if given).
fn run_cases(
    rows: &mut Vec<Row>,
    h: &mut Harness,
    cases: &[Case],
    only: Option<&str>,
) -> Result<()> {
    for (name, ifindex, frame, replay) in cases {
        if only.is_none_or(|o| name.contains(o)) {
            row(rows, h, name, *ifindex, frame.as_ref(), replay)?;
        }
    }
    Ok(())
}

/// Reads the flow events as fast as they come, in a thread of their own, until dropped
/// (events the daemon would aggregate; here only counted).
fn drain_flow_events(mut ring: aya::maps::RingBuf<aya::maps::MapData>) -> DrainOnDrop {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        // Off the benchmark's CPU (it pins itself to the last one).
        // SAFETY: a cpu_set_t of our own, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        let mut n = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            while ring.next().is_some() {
                n += 1;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        eprintln!("flow events read: {n}");
    });
    DrainOnDrop(stop)
}

/// Stops the draining thread when dropped.
struct DrainOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `only`: a part of the paths' names to time (for profiling one path), or all.
/// `flow_log`: ep-a with flow logs on, its events drained by a thread as the daemon
/// drains them (the cost of a logged endpoint's packets).
fn per_packet(only: Option<&str>, flow_log: bool) -> Result<String> {
    privatelink_tests::throughput::pin_to_last_cpu();
    // Room for the replayed first packets' flows.
    let mut state = with_flow_share(&packet_state(), 99);
    if flow_log {
        let ep_a = "name = \"web\"\nconnection = \"connected\"\n";
        assert!(state.contains(ep_a));
        state = state.replace(
            ep_a,
            &format!("{ep_a}flow_log = {{ window_seconds = 60 }}\n"),
        );
    }
    let mut h = Harness::with_conntrack(
        // The first-packet rows open 25 000 new flows: more than the default per-endpoint
        // allowance (20 % of the pool), which the token path is still measured under.
        &state,
        CONNTRACK_ENTRIES,
    )?;
    let _drain = flow_log
        .then(|| h.dp.take_flow_events().map(drain_flow_events))
        .transpose()?;
    let (cif, pif) = (h.consumer.ifindex, h.provider.ifindex);

    // A live flow for the hit paths, its handshake completed (SYN, SYN-ACK, the client's
    // ACK): the rows time the data segments of an established flow, both ways.
    let (act, out) = h.run(cif, &tcp_to_eni(&h, HIT_PORT, true, b""))?;
    anyhow::ensure!(act == 4, "the SYN was not forwarded");
    let snat = [out[26], out[27], out[28], out[29]];
    let port = u16::from_be_bytes([out[34], out[35]]);
    let (act, _) = h.run(pif, &tcp_from_lb(&h, snat, port, b""))?;
    anyhow::ensure!(act == 4, "the SYN-ACK was not forwarded");
    let (act, _) = h.run(cif, &tcp_ack_to_eni(&h, HIT_PORT, 7001, b""))?;
    anyhow::ensure!(act == 4, "the handshake's ACK was not forwarded");
    let flows = h.dp.flows()?;
    anyhow::ensure!(
        flows.len() == 2
            && flows
                .iter()
                .all(|(_, e)| e.tcp_flags & privatelink_common::CT_ESTABLISHED != 0),
        "the benchmark's flow is not established: {flows:?}"
    );
    let fwd = tcp_ack_to_eni(&h, HIT_PORT, 7001, &[0u8; 18]);
    let reply = tcp_ack_from_lb(&h, snat, port, &[0u8; 18]);
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, h.consumer.mac)
        .ipv4(CLIENT, ENI, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, &[0u8; 18])?;
    let mut unrelated = fwd.clone();
    unrelated[33] = 77; // another host of the consumer VPC (header checksum not fixed: unrelated traffic is not verified)
    let mut malformed = fwd.clone();
    malformed[24] ^= 0xff; // bad IPv4 header checksum

    // Replayed first packets: source ports above the single runs' (at 14 + 20). The floor
    // row below replays the same frames.
    let new_flows: Vec<Vec<u8>> = (0..RUNS)
        .map(|i| tcp_to_eni(&h, 1 + i as u16, true, &[0u8; 18]))
        .collect();
    let miss = Replay {
        frame: tcp_to_eni(&h, MISS_PORT, true, &[0u8; 18]),
        vary_at: Some(34),
        cycle: 0,
        repeat: MISS_REPEAT,
        want: (XDP_REDIRECT, Some(Reason::ForwardNewFlow)),
    };
    let floor_replay = Replay {
        frame: miss.frame.clone(),
        // The reference program counts nothing: its action alone is checked.
        want: (XDP_TX, None),
        ..miss
    };
    // The forwarding floor replays the NAT hit's frame.
    let redirect_replay = Replay {
        frame: fwd.clone(),
        vary_at: None,
        cycle: 0,
        repeat: REPEAT,
        // The reference program counts nothing: its action alone is checked.
        want: (XDP_REDIRECT, None),
    };
    let cases: Vec<Case> = vec![
        same(
            "NAT forward (conntrack hit)",
            cif,
            fwd,
            (XDP_REDIRECT, Reason::ForwardToService),
        ),
        (
            "NAT first packet (conntrack miss)",
            cif,
            Box::new({
                let frames = new_flows.clone();
                move |i| frames[i].clone()
            }),
            miss,
        ),
        same(
            "NAT reply (conntrack hit)",
            pif,
            reply,
            (XDP_REDIRECT, Reason::ForwardToConsumer),
        ),
        same(
            "ICMP echo answered",
            cif,
            echo,
            (XDP_TX, Reason::IcmpEchoReply),
        ),
        same(
            "unrelated (host isolation: dropped)",
            cif,
            unrelated,
            (XDP_DROP, Reason::DropHostIsolated),
        ),
        same(
            "drop malformed (bad checksum)",
            cif,
            malformed,
            (XDP_DROP, Reason::DropBadIpChecksum),
        ),
    ];

    let mut rows = Vec::new();
    run_cases(&mut rows, &mut h, &cases, only)?;
    if only.is_none_or(|o| COLD_ROW.contains(o) || o.contains("NAT forward")) {
        cold_row(&mut rows, &mut h, cif)?;
    }
    let redirect = "floor of a forwarded packet (the bare bpf_redirect)";
    if only.is_none_or(|o| redirect.contains(o) || o.contains("NAT forward")) {
        // `privatelink_redirect` to the provider-side interface: the one helper call every
        // forwarded packet makes (a test run does not transmit), and nothing else.
        h.reference.set_redirect_target(pif)?;
        let frame = redirect_replay.frame.clone();
        let (row, _) = timed(
            &mut h,
            Some("privatelink_redirect"),
            redirect,
            cif,
            &|_| frame.clone(),
            &redirect_replay,
        )?;
        rows.push(row);
    }
    let floor = "floor of a first packet (two random lines of a table as the NAT's)";
    let first_floor = only.is_none_or(|o| floor.contains(o) || o.contains("NAT first"));
    let cold_floor_row = only.is_none_or(|o| {
        COLD_FLOOR.contains(o) || o.contains("NAT forward") || o.contains("floor of a NAT hit")
    });
    if first_floor || cold_floor_row {
        // The reference object with `PL_BASE_TABLE` as large as the IPv4 flow table, for
        // both floors that read it.
        h.reference = Reference::with_table(privatelink_common::flowtable::table_buckets(
            CONNTRACK_ENTRIES,
        ))?;
    }
    if first_floor {
        let (row, _) = timed(
            &mut h,
            Some("privatelink_first_floor"),
            floor,
            cif,
            &|i| new_flows[i].clone(),
            &floor_replay,
        )?;
        rows.push(row);
    }
    if cold_floor_row {
        cold_floor(&mut rows, &mut h, cif, pif)?;
        h.reference
            .with_pieces(privatelink_common::flowtable::table_buckets(
                CONNTRACK_ENTRIES,
            ))?;
        cold_reference(
            &mut rows,
            &mut h,
            cif,
            "privatelink_redirect_lookup_pieces",
            "floor of a cold hit, the table in 32 KiB pieces (the kernel's direct map)",
        )?;
        cold_reference(
            &mut rows,
            &mut h,
            cif,
            "privatelink_nat_floor",
            "floor of a cold hit and a NAT's least work with its line",
        )?;
        // The same least work on one flow, its line as hot as the NAT hit's entry.
        let frame = udp_to_eni(&h, COLD_PORT, &[0u8; 18], true);
        let hot = Replay {
            frame: frame.clone(),
            ..redirect_replay
        };
        let (row, _) = timed(
            &mut h,
            Some("privatelink_nat_floor"),
            "floor of a NAT hit (one hot line and a NAT's least work with it)",
            cif,
            &|_| frame.clone(),
            &hot,
        )?;
        rows.push(row);
    }
    if only.is_none_or(|o| "IPv6 NAT".contains(o) || o.contains("NAT")) {
        nat6_rows(&mut rows, only)?;
    }
    if only.is_none_or(|o| "GENEVE".contains(o) || o.contains("GENEVE")) {
        gwlb_rows(&mut rows)?;
        gwlb6_rows(&mut rows)?;
    }
    std::fs::create_dir_all("results")?;
    std::fs::write("results/bench.svg", svg(&rows))?;
    let out = format!(
        "\nBPF_PROG_TEST_RUN, each path next to the trivial program (swap the MACs, XDP_TX). Replayed: the kernel's \
         average over {REPEAT} repeats, the median of {ROUNDS} calls (first packets: {MISS_REPEAT} repeats, each a new flow, {MISS_ROUNDS} calls; \
         the cold hit and its floor: {COLD_FLOWS} repeats, each the next of {COLD_FLOWS} flows in a scrambled order, {COLD_ROUNDS} calls); \
         `privatelink_replay` writes the frame back and tail-calls the program before every run, in both columns. \
         Single runs: {RUNS} per path ({COLD_RUNS} for the cold rows), medians (syscall and cold caches included).\n\n{}",
        table(&rows)
    );
    print!("{out}");
    Ok(out)
}

/// The daemon's DNS server against BIND serving the same records, side by side with
/// dnsperf in the lab's forwarder namespace: the daemon's external listener (its
/// authoritative answers for the lab's endpoint and zone names and an unknown name) and a
/// `named` authoritative for the same zone with the records the daemon gave. Both servers
/// on CPU 1 (the daemon's threads moved there; `named -n 1`), dnsperf on CPU 0. Rounds
/// alternate between the servers; ratios within each round, then their median.
fn dns() -> Result<String> {
    use std::{net::SocketAddr, time::Duration};

    use privatelink_tests::{
        dnsbench::{dig_a, dnsperf, query_file, start_bind, wait_answering},
        lab::{DNS_APEX, EP_A_NAME, Lab, LabOptions, ONPREM_FWD, zone_name},
        netns::unique_name,
    };
    const ROUNDS: usize = 3;
    const SECONDS: u32 = 5;
    /// The load at which latency is compared: well below either server's limit.
    const LATENCY_QPS: u32 = 2000;
    let prefix = unique_name("plbd");
    let lab = Lab::up(&LabOptions::new(
        &prefix,
        format!("/sys/fs/bpf/privatelink-bench-{prefix}"),
    ))?;
    let ns = &lab.fwd;
    let ours: SocketAddr = format!("{ONPREM_FWD}:53").parse()?;
    let bind: SocketAddr = "127.0.0.1:5301".parse()?;
    let unknown = format!("nope.{DNS_APEX}");
    let names = [
        EP_A_NAME.to_string(),
        zone_name("zone-a"),
        zone_name("zone-b"),
        unknown.clone(),
    ];
    wait_answering(ns, ours, EP_A_NAME, Duration::from_secs(15))?;
    let mut records = Vec::new();
    for n in &names {
        let a = dig_a(ns, ours, n)?;
        if !a.is_empty() {
            records.push((n.clone(), a));
        }
    }
    anyhow::ensure!(records.len() == 3, "the daemon answered {records:?}");
    let dir = lab.dir.join("bench-named");
    let mut named = start_bind(ns, &dir, DNS_APEX, 5, &records, bind)?;
    let result = (|| -> Result<String> {
        wait_answering(ns, bind, EP_A_NAME, Duration::from_secs(15))?;
        for n in &names {
            anyhow::ensure!(
                dig_a(ns, ours, n)? == dig_a(ns, bind, n)?,
                "the two servers answer {n} differently"
            );
        }
        if let Some(pid) = lab.child_pid("privatelink") {
            privatelink_tests::netns::run(std::process::Command::new("taskset").args([
                "-a",
                "-p",
                "-c",
                "1",
                &pid.to_string(),
            ]))?;
        }
        let file = dir.join("queries.txt");
        std::fs::write(
            &file,
            query_file(&names.iter().map(String::as_str).collect::<Vec<_>>()),
        )?;
        let (mut qps, mut tcp, mut lat) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let a = dnsperf(ns, ours, &file, SECONDS, None, false)?;
            let b = dnsperf(ns, bind, &file, SECONDS, None, false)?;
            qps.push((a, b));
        }
        let a = dnsperf(ns, ours, &file, SECONDS, None, true)?;
        let b = dnsperf(ns, bind, &file, SECONDS, None, true)?;
        tcp.push((a, b));
        for _ in 0..ROUNDS {
            let a = dnsperf(ns, ours, &file, SECONDS, Some(LATENCY_QPS), false)?;
            let b = dnsperf(ns, bind, &file, SECONDS, Some(LATENCY_QPS), false)?;
            lat.push((a, b));
        }
        let lost: u64 = qps
            .iter()
            .chain(&tcp)
            .chain(&lat)
            .map(|(a, b)| a.lost + b.lost)
            .sum();
        let mut t = String::from(
            "| measure | privatelink | BIND 9 (named -n 1) | privatelink / BIND |\n|---|---:|---:|---:|\n",
        );
        for (what, runs) in [
            ("UDP answers/s (saturated)", &qps),
            ("TCP answers/s (saturated)", &tcp),
        ] {
            let _ = writeln!(
                t,
                "| {what} | {:.0} | {:.0} | {:.2}x |",
                med(runs.iter().map(|(a, _)| a.qps).collect()),
                med(runs.iter().map(|(_, b)| b.qps).collect()),
                med(runs.iter().map(|(a, b)| a.qps / b.qps.max(1e-9)).collect()),
            );
        }
        let _ = writeln!(
            t,
            "| mean latency at {LATENCY_QPS} queries/s, µs | {:.0} | {:.0} | {:.2}x |",
            1e6 * med(lat.iter().map(|(a, _)| a.avg_latency).collect()),
            1e6 * med(lat.iter().map(|(_, b)| b.avg_latency).collect()),
            med(lat
                .iter()
                .map(|(a, b)| a.avg_latency / b.avg_latency.max(1e-12))
                .collect()),
        );
        let out = format!(
            "\nDNS: the daemon's external listener against BIND authoritative for the same records \
             (dnsperf 4 clients, 100 queries in flight, {SECONDS} s per run, {ROUNDS} rounds alternating; \
             queries: the endpoint name, two zone names, an unknown name; rcodes {}; {lost} queries lost in all)\n\n{t}",
            qps.first().map(|(a, _)| a.rcodes.as_str()).unwrap_or(""),
        );
        Ok(out)
    })();
    let _ = named.kill();
    let _ = named.wait();
    let out = result?;
    print!("{out}");
    Ok(out)
}
