//! The tests' traffic generator where the kernel refuses live-frame test runs: the
//! packet socket that `throughput::send` falls back to sends the frames `privatelink_gen`
//! makes, and they arrive.

use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunOptions, XdpMode},
};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use privatelink_tests::{
    netns::{Netns, unique_name},
    reference::Reference,
    throughput::{gen_frame, live_frames_refused, pin_to_last_cpu, send_by_socket},
};

/// What the floods fall back on, and the benchmark skips its live-frame sections for, is
/// the kernel's EPERM to the test run itself, however deep in the error's chain: not
/// another error number, not another call's EPERM (loading the generator), not an error
/// that only reads like one.
#[test]
fn only_the_test_runs_eperm_is_a_refusal() {
    let err = |call: &'static str, errno: i32| {
        anyhow::Error::new(aya::programs::ProgramError::SyscallError(
            aya::sys::SyscallError {
                call,
                io_error: std::io::Error::from_raw_os_error(errno),
            },
        ))
        .context("live-frames test run")
    };
    assert!(live_frames_refused(&err("bpf_prog_test_run", libc::EPERM)));
    assert!(!live_frames_refused(&err(
        "bpf_prog_test_run",
        libc::EINVAL
    )));
    assert!(!live_frames_refused(&err("bpf_prog_load", libc::EPERM)));
    assert!(!live_frames_refused(&anyhow::anyhow!(
        "`bpf_prog_test_run` failed: Operation not permitted (os error 1)"
    )));
}

/// A SYN as the floods send it (the generator's template: its first 42 bytes).
fn flood_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 10, 2, 77], [10, 10, 1, 100], 64)
        .tcp(1024, 80, 1, 4096)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

/// `gen_frame` makes, count by count, what `privatelink_gen` makes of the same frame
/// (the program run on it once per count, as a plain test run): over more flows than one
/// source address holds (the address' last byte moves every 60 000), in the generator's
/// scrambled order and in order, and for "no flow count" (one flow); an independent
/// decoder reads each as a valid IPv4 header with the flow's source port and address.
#[test]
fn the_fallback_frames_are_the_generators() {
    let frame = flood_frame();
    let ns = Netns::create(&unique_name("plgen")).unwrap();
    ns.enter_thread().unwrap();
    pin_to_last_cpu();
    let mut sources = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for (flows, in_order, counts) in [
        (150_000u32, false, 2_000u32),
        (1_000, true, 300),
        (0, false, 50),
    ] {
        // A fresh object: the program's count starts at 0, as `send`'s does.
        let mut reference = Reference::default();
        {
            let obj = reference.object().unwrap();
            let mut m: Array<_, u32> =
                Array::try_from(obj.map_mut("PL_GEN_FLOWS").unwrap()).unwrap();
            m.set(0, flows, 0).unwrap();
            m.set(1, u32::from(in_order), 0).unwrap();
            let mut tmpl: Array<_, [u8; 42]> =
                Array::try_from(obj.map_mut("PL_GEN_TEMPLATE").unwrap()).unwrap();
            tmpl.set(0, <[u8; 42]>::try_from(&frame[..42]).unwrap(), 0)
                .unwrap();
        }
        let program = reference.program("privatelink_gen").unwrap();
        for count in 0..counts {
            let case = format!("{flows} flows, in order {in_order}, count {count}");
            let mut out = vec![0u8; frame.len()];
            let r = program
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })
                .unwrap();
            assert_eq!(r.return_value, 3, "{case}: XDP_TX");
            let ours = gen_frame(&frame, flows, count, in_order);
            assert_eq!(ours, out, "{case}");
            let p = SlicedPacket::from_ethernet(&ours).expect("a frame the decoder reads");
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!("{case}: not IPv4")
            };
            assert_eq!(
                ip.header().header_checksum(),
                ip.header().to_header().calc_header_checksum(),
                "{case}: the IPv4 header checksum"
            );
            let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                panic!("{case}: not TCP")
            };
            let n = match (flows, in_order) {
                (0, _) => 0,
                (_, true) => count % flows,
                (_, false) => privatelink_common::hash::mix32(count) % flows,
            };
            assert_eq!(tcp.source_port(), (1024 + n % 60_000) as u16, "{case}");
            assert_eq!(ip.header().source()[3], 77 + (n / 60_000) as u8, "{case}");
            if flows == 150_000 {
                ports.insert(tcp.source_port());
                sources.insert(ip.header().source());
            }
        }
    }
    assert!(ports.len() > 1_900, "{} source ports", ports.len());
    assert_eq!(sources.len(), 3, "{sources:?}");
}

/// The packet socket sends every frame it is given: a counting program on the veth's
/// peer counts them all.
#[test]
fn the_fallback_delivers_every_frame() {
    const PACKETS: u32 = 20_000;
    let name = unique_name("plgen");
    let ns = Netns::create(&name).unwrap();
    ns.ip(&["link", "add", "g0", "type", "veth", "peer", "name", "g1"])
        .unwrap();
    for d in ["g0", "g1"] {
        // No IPv6 link-local address: the kernel's own neighbour discovery would be
        // counted too.
        ns.ip(&["link", "set", d, "addrgenmode", "none"]).unwrap();
        ns.ip(&["link", "set", d, "up"]).unwrap();
    }
    ns.enter_thread().unwrap();
    let mut sink = Reference::default();
    sink.program("privatelink_count")
        .unwrap()
        .attach("g1", XdpMode::Driver)
        .unwrap();
    send_by_socket(&name, "g0", flood_frame(), 1_000, PACKETS).unwrap();
    // The peer's receive work may still be running elsewhere (a busy machine's ksoftirqd):
    // up to a second for the last frames.
    let mut counted = || -> u64 {
        let c: PerCpuArray<_, u64> =
            PerCpuArray::try_from(sink.object().unwrap().map("PL_SINK_COUNT").unwrap()).unwrap();
        c.get(&0, 0).unwrap().iter().sum()
    };
    let t = std::time::Instant::now();
    while counted() < u64::from(PACKETS) && t.elapsed() < std::time::Duration::from_secs(1) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        counted(),
        u64::from(PACKETS),
        "g0: {}",
        ns.ip(&["-s", "link", "show", "dev", "g0"]).unwrap()
    );
}
