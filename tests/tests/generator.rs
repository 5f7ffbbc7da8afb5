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
    throughput::{gen_frame, pin_to_last_cpu, send_by_socket},
};

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
/// (the program run on it once per count, as a plain test run), over more flows than one
/// source address holds (the address' last byte moves every 60 000); and an
/// independent decoder reads each as a valid IPv4 header with the flow's source port.
#[test]
fn the_fallback_frames_are_the_generators() {
    const FLOWS: u32 = 150_000;
    let frame = flood_frame();
    let ns = Netns::create(&unique_name("plgen")).unwrap();
    ns.enter_thread().unwrap();
    pin_to_last_cpu();
    let mut reference = Reference::default();
    {
        let obj = reference.object().unwrap();
        let mut flows: Array<_, u32> =
            Array::try_from(obj.map_mut("PL_GEN_FLOWS").unwrap()).unwrap();
        flows.set(0, FLOWS, 0).unwrap();
        let mut tmpl: Array<_, [u8; 42]> =
            Array::try_from(obj.map_mut("PL_GEN_TEMPLATE").unwrap()).unwrap();
        tmpl.set(0, <[u8; 42]>::try_from(&frame[..42]).unwrap(), 0)
            .unwrap();
    }
    let program = reference.program("privatelink_gen").unwrap();
    let mut ports = std::collections::HashSet::new();
    let mut sources = std::collections::HashSet::new();
    for count in 0..2_000u32 {
        let mut out = vec![0u8; frame.len()];
        let r = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap();
        assert_eq!(r.return_value, 3, "XDP_TX");
        let ours = gen_frame(&frame, FLOWS, count, false);
        assert_eq!(ours, out, "count {count}");
        let p = SlicedPacket::from_ethernet(&ours).expect("a frame the decoder reads");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("count {count}: not IPv4")
        };
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum(),
            "count {count}: the IPv4 header checksum"
        );
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("count {count}: not TCP")
        };
        let n = privatelink_common::hash::mix32(count) % FLOWS;
        assert_eq!(tcp.source_port(), (1024 + n % 60_000) as u16);
        assert_eq!(ip.header().source()[3], 77 + (n / 60_000) as u8);
        ports.insert(tcp.source_port());
        sources.insert(ip.header().source());
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
    let counted: PerCpuArray<_, u64> =
        PerCpuArray::try_from(sink.object().unwrap().map("PL_SINK_COUNT").unwrap()).unwrap();
    let counted: u64 = counted.get(&0, 0).unwrap().iter().sum();
    assert_eq!(counted, u64::from(PACKETS));
}
