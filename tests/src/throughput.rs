//! Throughput on veth in namespaces: a generator namespace sends fixed-size UDP flows at
//! an endpoint ENI through a forwarder namespace to a sink namespace, and what arrives at
//! the sink is counted. The same topology carries, in turn: (a) privatelink's XDP NAT,
//! (b) the kernel's forwarding with nftables DNAT + SNAT and conntrack doing the same job,
//! (c) a bare XDP redirect doing no work.
//!
//! The generator is the kernel's BPF_F_TEST_XDP_LIVE_FRAMES: `privatelink_gen` (in
//! the lab's reference programs) gives each frame its flow and transmits it out of the generator's
//! veth (XDP_TX), so no userspace packet path is measured. The tests' floods (`send`) fall
//! back to a packet socket sending the same frames where the kernel refuses live frames;
//! the benchmark's rates never do.
//!
//! Beside the rates: what the forwarder's program costs per packet on this live traffic,
//! by the kernel's own run statistics (`live_cost`), and how busy the pipeline keeps its
//! CPU at a fixed offered load, below every mode's limit (`fixed_load`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode},
};
use etherparse::PacketBuilder;
use privatelink_user::{
    dataplane::{self, Dataplane, LoadOptions},
    desired,
    model::{numeric_id, parse_state},
};

use crate::{
    lab::connected_endpoint,
    netns::{Netns, unique_name},
    reference::{PASS_PROGRAM, Reference},
    testrun::xdp_md,
};

pub const ENI: [u8; 4] = [10, 1, 0, 100];
pub const LB: [u8; 4] = [10, 2, 0, 10];
/// Four SNAT addresses (258 048 tuples to one load balancer port) for both NATs: 100 000
/// flows must fit.
pub const SNAT: [u8; 4] = [10, 2, 0, 200];

const STATE: &str = r#"
[[accounts]]
id = "acct-a"
[[accounts]]
id = "acct-b"
[[vpcs]]
id = "vpc-a"
account = "acct-a"
cidr = "10.1.0.0/16"
interface = "fc0"
vswitches = [{ id = "vsw-a", zone = "zone-a", cidr = "10.1.0.0/24" }]
[[vpcs]]
id = "vpc-b"
account = "acct-b"
cidr = "10.2.0.0/16"
interface = "fp0"
vswitches = [{ id = "vsw-b", zone = "zone-a", cidr = "10.2.0.0/24" }]
[[services]]
id = "svc"
account = "acct-b"
type = "interface"
vpc = "vpc-b"
whitelist = ["acct-a"]
backends = [{ zone = "zone-a", address = "10.2.0.10" }]
snat = ["10.2.0.200", "10.2.0.201", "10.2.0.202", "10.2.0.203"]
listeners = [{ protocol = "udp", port = 80 }]
# 100 000 one-way flows from one endpoint: no per-endpoint share (throughput, not fairness).
endpoint_flow_share = 100
"#;

/// The flows the NAT's tables are made for (`LoadOptions::conntrack_entries`), and the
/// size of `Mode::BareLookup`'s and `Mode::NatFloor`'s table (the IPv4 one's).
const TABLE_FLOWS: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XdpNat,
    Nftables,
    BareRedirect,
    /// The bare redirect through `bpf_redirect_map` and a DEVMAP instead of `bpf_redirect`.
    BareRedirectMap,
    /// The bare redirect after one read of a table as big as the NAT's IPv4 flow table, at
    /// a bucket picked by the frame's flow (`privatelink_redirect_lookup`): what one cold
    /// access per packet leaves of the bare redirect, the floor of a flow-table NAT.
    BareLookup,
    /// One whole line of (e)'s bucket and then the least work any NAT does with it
    /// (`privatelink_nat_floor`): the key compared, the header checked, the frame
    /// rewritten from the line, a stamp written back when it changed: what a flow-table NAT
    /// whose hit costs one line could reach at best.
    NatFloor,
    /// No forwarding: the forwarder's ingress drops every frame (`privatelink_count`), so
    /// only the generator's work is left on the CPU: the fixed-load baseline.
    IngressDrop,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::XdpNat => "(a) privatelink XDP NAT",
            Mode::Nftables => "(b) kernel forwarding, nftables DNAT+SNAT, conntrack",
            Mode::BareRedirect => "(c) bare XDP redirect",
            Mode::BareRedirectMap => "(d) bare XDP redirect through a DEVMAP",
            Mode::BareLookup => "(e) bare XDP redirect after one read of a flow-table-sized array",
            Mode::NatFloor => "(f) (e) and a NAT's least work with the line it read",
            Mode::IngressDrop => "(0) none: dropped at the forwarder's ingress",
        }
    }
}

/// The three namespaces and the links between them; removed on drop.
pub struct Topology {
    pub gen_ns: Netns,
    pub fwd: Netns,
    pub sink: Netns,
    gen_mac: [u8; 6],
    fc0_mac: [u8; 6],
    p0_mac: [u8; 6],
    /// `privatelink_count` on the sink's p0: counts and drops every frame, so each mode's
    /// frames end the same cheap way (and the kernel delivers XDP-redirected frames into a
    /// veth only when its peer runs an XDP program).
    sink_xdp: Reference,
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    dataplane::parse_mac(v[0]["address"].as_str().context("no address")?).context("bad MAC")
}

impl Topology {
    pub fn new() -> Result<Self> {
        let gen_ns = Netns::create(&unique_name("pltpg"))?;
        let fwd = Netns::create(&unique_name("pltpf"))?;
        let sink = Netns::create(&unique_name("pltps"))?;
        crate::netns::ip(&[
            "link",
            "add",
            "gen0",
            "netns",
            &gen_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "fc0",
            "netns",
            &fwd.name,
        ])?;
        crate::netns::ip(&[
            "link", "add", "p0", "netns", &sink.name, "type", "veth", "peer", "name", "fp0",
            "netns", &fwd.name,
        ])?;
        gen_ns.ip(&["addr", "add", "10.1.0.2/24", "dev", "gen0"])?;
        sink.ip(&["addr", "add", "10.2.0.10/24", "dev", "p0"])?;
        for (ns, dev) in [
            (&gen_ns, "gen0"),
            (&fwd, "fc0"),
            (&fwd, "fp0"),
            (&sink, "p0"),
        ] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        let sink_xdp = in_ns(&sink.name, || {
            let mut r = Reference::default();
            attach_reference(&mut r, "privatelink_count", "p0")?;
            Ok(r)
        })?;
        Ok(Self {
            sink_xdp,
            gen_mac: mac_of(&gen_ns, "gen0")?,
            fc0_mac: mac_of(&fwd, "fc0")?,
            p0_mac: mac_of(&sink, "p0")?,
            gen_ns,
            fwd,
            sink,
        })
    }

    /// Frames the sink has counted (all CPUs).
    fn rx_packets(&mut self) -> Result<u64> {
        let obj = self.sink_xdp.object()?;
        let m: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(obj.map("PL_SINK_COUNT").context("no map")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

fn rx_of(ns: &Netns, dev: &str) -> Result<u64> {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no rx counter")
}

/// Runs `f` on a thread inside `ns` (BPF objects made there see its interfaces).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        crate::netns::enter_thread(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// What is attached in the forwarder for one mode; dropping it detaches.
struct Forwarder {
    /// privatelink's data path (XDP NAT mode).
    dp: Option<Dataplane>,
    /// The reference program attached instead (the other modes).
    reference: Reference,
    mode: Mode,
}

impl Forwarder {
    /// The kernel's run statistics of the program doing the forwarder's work, (run time,
    /// runs): privatelink's entry program (a tail-called path program's time is its
    /// caller's) or the bare redirect; none for nftables (its work is not a BPF program).
    fn run_stats(&mut self) -> Result<Option<(Duration, u64)>> {
        let p = match (self.mode, &mut self.dp) {
            (Mode::XdpNat, Some(dp)) => dp.program()?,
            (Mode::BareRedirect, _) => self.reference.program("privatelink_redirect")?,
            (Mode::BareRedirectMap, _) => self.reference.program("privatelink_redirect_map")?,
            (Mode::BareLookup, _) => self.reference.program("privatelink_redirect_lookup")?,
            (Mode::NatFloor, _) => self.reference.program("privatelink_nat_floor")?,
            _ => return Ok(None),
        };
        let info = p.info()?;
        Ok(Some((info.run_time(), info.run_count())))
    }
}

fn attach_reference(r: &mut Reference, name: &str, iface: &str) -> Result<()> {
    let p = r.program(name)?;
    p.attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching {name} to {iface}"))?;
    Ok(())
}

fn set_up(t: &Topology, mode: Mode) -> Result<Forwarder> {
    let fwd = t.fwd.name.clone();
    let p0_mac = t.p0_mac;
    // The sink's end of a redirect needs an XDP program (see the lab notes).
    if mode == Mode::Nftables {
        t.fwd.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        t.fwd.ip(&["addr", "add", "10.1.0.1/24", "dev", "fc0"])?;
        t.fwd.ip(&["addr", "add", "10.2.0.1/24", "dev", "fp0"])?;
        let rules = "table ip bench {\n chain pre { type nat hook prerouting priority -100; ip daddr 10.1.0.100 udp dport 80 dnat to 10.2.0.10; }\n chain post { type nat hook postrouting priority 100; oifname \"fp0\" snat to 10.2.0.200-10.2.0.203; }\n}\n";
        let f = std::env::temp_dir().join(format!("{}.nft", t.fwd.name));
        std::fs::write(&f, rules)?;
        t.fwd.exec("nft", &["-f", f.to_str().unwrap()])?;
        let _ = std::fs::remove_file(&f);
    }
    in_ns(&fwd, move || {
        let mut reference = Reference::default();
        let dp = match mode {
            Mode::XdpNat => {
                let mut dp = Dataplane::load(&LoadOptions {
                    pin_dir: None,
                    conntrack_entries: TABLE_FLOWS,
                    ..LoadOptions::default()
                })?;
                let s = parse_state(
                    &(STATE.to_string()
                        + &connected_endpoint(
                            "ep",
                            "acct-a",
                            "vpc-a",
                            "svc",
                            "vsw-a",
                            "10.1.0.100",
                        )),
                )
                .map_err(anyhow::Error::msg)?;
                let want =
                    desired::compute(&s, dataplane::resolve_link, &desired::Unhealthy::new())?;
                dp.apply(&want)?;
                dp.set_neighbor(numeric_id("vpc-b"), LB, p0_mac)?;
                dp.attach("fc0", false)?;
                dp.attach("fp0", false)?;
                Some(dp)
            }
            Mode::Nftables => {
                attach_reference(&mut reference, PASS_PROGRAM, "fc0")?;
                None
            }
            Mode::BareRedirect => {
                redirect_to_fp0(&mut reference, "privatelink_redirect")?;
                None
            }
            Mode::BareRedirectMap => {
                let fp0 = dataplane::resolve_link("fp0").map_err(anyhow::Error::msg)?;
                let obj = reference.object()?;
                let mut m =
                    aya::maps::DevMap::try_from(obj.map_mut("PL_BASE_DEVS").context("no map")?)?;
                m.set(0, fp0.ifindex, None, 0)?;
                attach_reference(&mut reference, "privatelink_redirect_map", "fc0")?;
                None
            }
            Mode::BareLookup | Mode::NatFloor => {
                reference = Reference::with_table(privatelink_common::flowtable::table_buckets(
                    TABLE_FLOWS,
                ))?;
                let program = if mode == Mode::NatFloor {
                    "privatelink_nat_floor"
                } else {
                    "privatelink_redirect_lookup"
                };
                redirect_to_fp0(&mut reference, program)?;
                None
            }
            Mode::IngressDrop => {
                attach_reference(&mut reference, "privatelink_count", "fc0")?;
                None
            }
        };
        Ok(Forwarder {
            dp,
            reference,
            mode,
        })
    })
}

/// Points `PL_BASE_TARGET` at fp0 and attaches the bare-redirect `program` to fc0.
fn redirect_to_fp0(reference: &mut Reference, program: &str) -> Result<()> {
    let fp0 = dataplane::resolve_link("fp0").map_err(anyhow::Error::msg)?;
    reference.set_redirect_target(fp0.ifindex)?;
    attach_reference(reference, program, "fc0")
}

fn tear_down(t: &Topology, mode: Mode) -> Result<()> {
    if mode == Mode::Nftables {
        t.fwd.exec("nft", &["delete", "table", "ip", "bench"])?;
        t.fwd.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
        t.fwd.ip(&["addr", "flush", "dev", "fc0"])?;
        t.fwd.ip(&["addr", "flush", "dev", "fp0"])?;
    }
    Ok(())
}

impl Topology {
    /// The generator's 64-byte UDP frame to the endpoint ENI (`privatelink_gen` gives
    /// each copy its flow).
    fn frame(&self) -> Result<Vec<u8>> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(self.gen_mac, self.fc0_mac)
            .ipv4([10, 1, 0, 2], ENI, 64)
            .udp(1024, 80)
            .write(&mut frame, &[0u8; 18])?;
        Ok(frame)
    }
}

/// Sends `packets` 64-byte frames over `flows` flows; returns (sent, arrived, seconds).
fn generate(t: &mut Topology, flows: u32, packets: u32) -> Result<(u64, u64, f64)> {
    generate_as(t, flows, packets, false)
}

/// `generate` with the flows visited in order: `flows` frames meet every flow (in random
/// order, `flows` frames meet about 63 % of them).
fn generate_in_order(t: &mut Topology, flows: u32, packets: u32) -> Result<(u64, u64, f64)> {
    generate_as(t, flows, packets, true)
}

fn generate_as(
    t: &mut Topology,
    flows: u32,
    packets: u32,
    in_order: bool,
) -> Result<(u64, u64, f64)> {
    let frame = t.frame()?;
    let before = t.rx_packets()?;
    let fwd_before = rx_of(&t.fwd, "fc0")?;
    let took = send_as(&t.gen_ns.name, "gen0", frame, flows, packets, in_order)?;
    // Let the last frames drain.
    std::thread::sleep(Duration::from_millis(200));
    let arrived = t.rx_packets()? - before;
    if std::env::var_os("PL_TP_DEBUG").is_some() {
        eprintln!(
            "forwarder fc0 received {}",
            rx_of(&t.fwd, "fc0")? - fwd_before
        );
    }
    Ok((packets as u64, arrived, took.as_secs_f64()))
}

/// Sends `packets` copies of `frame` (IPv4, no options, its L4 ports at 34) out of `dev`
/// in namespace `ns` over `flows` flows, with `privatelink_gen` and
/// BPF_F_TEST_XDP_LIVE_FRAMES; returns how long the kernel took. The device's peer must
/// run an XDP program. Where the kernel refuses live-frame test runs (one machine's
/// kernel answered EPERM to every one, whatever the program), the same frames go through
/// a packet socket on `dev` (`send_by_socket`): the tests' floods still flood, slower. The
/// benchmark's rates never fall back (`generate_as`): they are the live frames'.
pub fn send(ns: &str, dev: &str, frame: Vec<u8>, flows: u32, packets: u32) -> Result<Duration> {
    match send_as(ns, dev, frame.clone(), flows, packets, false) {
        Err(e) if live_frames_refused(&e) => {
            eprintln!("live-frame test runs refused ({e:#}): sending through a packet socket");
            send_by_socket(ns, dev, frame, flows, packets)
        }
        r => r,
    }
}

/// Whether `e` is the kernel's EPERM to the test run itself (not to loading the
/// generator or writing its maps, which fail as they fail): the kernel refuses live-frame
/// test runs, which the benchmark's generator needs.
pub fn live_frames_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<aya::programs::ProgramError>(),
            Some(aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_test_run",
                io_error,
            })) if io_error.raw_os_error() == Some(libc::EPERM)
        )
    })
}

/// Frame `count` of `privatelink_gen`'s stream, made here: `frame` with flow `n` (`count`
/// in order, else `mix32(count)`, modulo `flows`) written in as the program writes it
/// into its 42-byte template: the source port 1024 + n % 60 000, the source address' last
/// byte raised by n / 60 000, the IPv4 header checksum made again, bytes 40-41 zeroed
/// (a UDP template's checksum: none). `frame` is at least 42 bytes (else this panics:
/// the program drops such a frame).
pub fn gen_frame(frame: &[u8], flows: u32, count: u32, in_order: bool) -> Vec<u8> {
    let n = if in_order {
        count
    } else {
        privatelink_common::hash::mix32(count)
    } % flows.max(1);
    let mut f = frame.to_vec();
    f[29] = f[29].wrapping_add((n / 60_000) as u8);
    f[24..26].fill(0);
    let check = privatelink_common::csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_ne_bytes());
    f[34..36].copy_from_slice(&((1024 + n % 60_000) as u16).to_be_bytes());
    f[40..42].fill(0);
    f
}

/// `send` through a packet socket bound to `dev` (its queueing discipline bypassed): the
/// frames `privatelink_gen` would have sent (`gen_frame`), 64 to a `sendmmsg`. A veth
/// drops what its peer has no room for, as it drops live frames (counted in its
/// `tx_dropped`); a send the socket could not take (ENOBUFS, EAGAIN, EINTR) is tried
/// again, for at most `STALL` without progress.
pub fn send_by_socket(
    ns: &str,
    dev: &str,
    frame: Vec<u8>,
    flows: u32,
    packets: u32,
) -> Result<Duration> {
    anyhow::ensure!(frame.len() >= 42, "a generator frame is at least 42 bytes");
    let dev = dev.to_string();
    in_ns(ns, move || {
        pin_to_last_cpu();
        let link = dataplane::resolve_link(&dev).map_err(anyhow::Error::msg)?;
        let socket = PacketSocket::bound(link.ifindex)?;
        let start = Instant::now();
        let mut count = 0u32;
        while count < packets {
            let batch: Vec<Vec<u8>> = (count..packets.min(count.saturating_add(64)))
                .map(|c| gen_frame(&frame, flows, c, false))
                .collect();
            count += socket.send_all(&batch)? as u32;
        }
        Ok(start.elapsed())
    })
}

/// How long `PacketSocket::send_all` tries without sending a frame before it gives up.
const STALL: Duration = Duration::from_secs(10);

/// An `AF_PACKET` raw socket bound to one device, sending whole frames.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn bound(ifindex: u32) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket calls on a descriptor this function owns from its creation;
        // the address is an initialised `sockaddr_ll`, passed with its size.
        let socket = unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            anyhow::ensure!(
                fd >= 0,
                "a packet socket: {}",
                std::io::Error::last_os_error()
            );
            let socket = Self(std::os::fd::OwnedFd::from_raw_fd(fd));
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                socket.0.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            anyhow::ensure!(
                r == 0,
                "binding a packet socket to interface {ifindex}: {}",
                std::io::Error::last_os_error()
            );
            socket
        };
        socket
            .set(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32)
            .context("bypassing the queueing discipline")?;
        // A send blocks at most this long (then EAGAIN: `send_all` tries again).
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        socket
            .set(libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeout)
            .context("a send timeout")?;
        Ok(socket)
    }

    /// Sets socket option `name` of `level` to `value` (the option's C type).
    fn set<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: `value` is valid for its size for the call's duration; the option's
        // type is the caller's to match.
        let r = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Sends every frame of `frames`; returns how many (all of them).
    fn send_all(&self, frames: &[Vec<u8>]) -> Result<usize> {
        use std::os::fd::AsRawFd;
        let mut sent = 0;
        let mut progress = Instant::now();
        while sent < frames.len() {
            let mut iov: Vec<libc::iovec> = frames[sent..]
                .iter()
                .map(|f| libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                })
                .collect();
            // SAFETY: zeroed headers (no address: the socket is bound), each pointing at
            // one iovec of `iov`, which points at a frame of `frames`; all outlive the call.
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            // SAFETY: `msgs` as above, its length passed with it.
            let n = unsafe {
                libc::sendmmsg(self.0.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0)
            };
            if n > 0 {
                sent += n as usize;
                progress = Instant::now();
                continue;
            }
            let err = std::io::Error::last_os_error();
            let again = matches!(
                err.raw_os_error(),
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
            );
            anyhow::ensure!(
                again && progress.elapsed() < STALL,
                "sending through a packet socket: {err}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(sent)
    }
}

/// `send`, the flows in order if `in_order`.
fn send_as(
    ns: &str,
    dev: &str,
    frame: Vec<u8>,
    flows: u32,
    packets: u32,
    in_order: bool,
) -> Result<Duration> {
    let dev = dev.to_string();
    in_ns(ns, move || {
        // The veths' receive work runs where the frames are sent: one CPU for the whole
        // pipeline, the same in every mode and run.
        pin_to_last_cpu();
        let mut g = Generator::new(&frame, flows, &dev, in_order)?;
        let start = Instant::now();
        g.send(&frame, packets)?;
        Ok(start.elapsed())
    })
}

/// `privatelink_gen`, loaded in the calling thread's namespace with the flow count and
/// the frame template, and its context for the device it sends out of.
struct Generator {
    reference: Reference,
    ctx: Vec<u8>,
}

impl Generator {
    fn new(frame: &[u8], flows: u32, dev: &str, in_order: bool) -> Result<Self> {
        let mut reference = Reference::default();
        let obj = reference.object()?;
        let mut m: Array<_, u32> = Array::try_from(obj.map_mut("PL_GEN_FLOWS").context("no map")?)?;
        m.set(0, flows, 0)?;
        m.set(1, u32::from(in_order), 0)?;
        let mut tmpl: Array<_, [u8; 42]> =
            Array::try_from(obj.map_mut("PL_GEN_TEMPLATE").context("no map")?)?;
        tmpl.set(0, <[u8; 42]>::try_from(&frame[..42])?, 0)?;
        let link = dataplane::resolve_link(dev).map_err(anyhow::Error::msg)?;
        Ok(Self {
            reference,
            ctx: xdp_md(frame.len() as u32, link.ifindex),
        })
    }

    /// Transmits `packets` copies of `frame`, each given its flow.
    fn send(&mut self, frame: &[u8], packets: u32) -> Result<()> {
        let Self { reference, ctx } = self;
        reference
            .program("privatelink_gen")?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(ctx),
                repeat: packets,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..TestRunOptions::default()
            })
            .context("live-frames test run")?;
        Ok(())
    }
}

/// One measurement: Mpps that arrived at the sink, and what the forwarder's program cost
/// per packet on this traffic by the kernel's own run statistics (BPF_ENABLE_STATS, in a
/// run of its own: recording them costs two clock reads per program run).
#[derive(Clone, Debug)]
pub struct Sample {
    pub mode: Mode,
    pub flows: u32,
    pub sent: u64,
    pub arrived: u64,
    pub seconds: f64,
    /// run_time_ns / run_cnt of the forwarder's program (none for nftables).
    pub ns_per_packet: Option<f64>,
}

/// A little over the data path's `PARTNER_REFRESH_NS` (one second).
const PARTNER_REFRESH: Duration = Duration::from_millis(1100);

/// Frames of the run that reads the kernel's program statistics.
pub const STATS_PACKETS: u32 = 200_000;

/// The forwarder's program's cost per packet over `STATS_PACKETS` frames of `flows`
/// flows, with the kernel's run statistics on for that run only.
fn live_cost(
    t: &mut Topology,
    fwd: &mut Forwarder,
    flows: u32,
    warm: Instant,
) -> Result<Option<f64>> {
    // A NAT flow checks its reply entry again at its first packet more than a second after
    // its last check (the data path's `PARTNER_REFRESH_NS`; the warm-up made or checked
    // every flow). Run just past that second, as this run fell after the measured one, it
    // timed that check for half its packets at 100 000 flows. So every flow is met once
    // more (in order, uncounted) after the second is over, and the run then times flows
    // as the measured run met them: each checked within the last second.
    if fwd.mode == Mode::XdpNat {
        std::thread::sleep((warm + PARTNER_REFRESH).saturating_duration_since(Instant::now()));
        generate_in_order(t, flows, flows)?;
    }
    // The counters only move while statistics are on: read before turning them on.
    let Some((t0, n0)) = fwd.run_stats()? else {
        return Ok(None);
    };
    // Scoped: statistics stop when the descriptor closes (not the sysctl, which would
    // outlive a failed run).
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    generate(t, flows, STATS_PACKETS)?;
    let (t1, n1) = fwd.run_stats()?.context("statistics gone")?;
    anyhow::ensure!(n1 > n0, "the forwarder's program did not run");
    Ok(Some((t1 - t0).as_nanos() as f64 / (n1 - n0) as f64))
}

impl Sample {
    pub fn mpps(&self) -> f64 {
        self.arrived as f64 / self.seconds / 1e6
    }
}

/// Every mode of `modes` with every flow count, on one topology.
pub fn run(
    modes: &[Mode],
    flow_counts: &[u32],
    packets: u32,
    rounds: usize,
) -> Result<Vec<Sample>> {
    let mut t = Topology::new()?;
    let mut out = Vec::new();
    // Modes take turns round after round, so a slow spell of a shared machine does not
    // land on one mode only.
    for &mode in (0..rounds).flat_map(|_| modes) {
        let mut fwd = set_up(&t, mode)?;
        for &flows in flow_counts {
            // A warm-up round creates every flow (conntrack, ARP), visiting them in order,
            // then the measured one (in random order: `privatelink_gen`).
            generate_in_order(&mut t, flows, flows.max(10_000))?;
            let warm = Instant::now();
            let (sent, arrived, seconds) = generate(&mut t, flows, packets)?;
            let ns_per_packet = live_cost(&mut t, &mut fwd, flows, warm)?;
            out.push(Sample {
                mode,
                flows,
                sent,
                arrived,
                seconds,
                ns_per_packet,
            });
        }
        drop(fwd);
        tear_down(&t, mode)?;
    }
    Ok(out)
}

/// The pipeline's CPU at a fixed offered load: how busy the one CPU that everything runs
/// on was (see `send`) while `pps` frames per second of `flows` flows were offered. The
/// generator's share of it is the `IngressDrop` mode's; the fp0 → p0 hop and the sink's
/// receive and count are the same in every forwarding mode.
///
/// Busy, not softirq: this kernel samples CPU time by tick, and the veths' receive work,
/// run when the generator's batch re-enables bottom halves, was sampled as system time
/// (0 softirq ticks in every mode when tried).
#[derive(Clone, Debug)]
pub struct Load {
    pub mode: Mode,
    pub pps: u32,
    pub sent: u64,
    pub arrived: u64,
    /// Busy time over all time on that CPU meanwhile (0..1).
    pub busy: f64,
    /// How long the sending took (the nominal time, or a little more if a batch ran late):
    /// `sent / seconds` is the load offered in fact.
    pub seconds: f64,
}

/// The modes `fixed_load` measures, in turn.
pub const LOAD_MODES: [Mode; 4] = [
    Mode::IngressDrop,
    Mode::XdpNat,
    Mode::Nftables,
    Mode::BareRedirect,
];

/// `Load` for every mode of `LOAD_MODES`, `rounds` rounds with the modes taking turns,
/// each `seconds` long.
pub fn fixed_load(flows: u32, pps: u32, seconds: f64, rounds: usize) -> Result<Vec<Load>> {
    let mut t = Topology::new()?;
    let mut out = Vec::new();
    for mode in (0..rounds).flat_map(|_| LOAD_MODES) {
        let fwd = set_up(&t, mode)?;
        generate(&mut t, flows, flows.max(10_000))?;
        let frame = t.frame()?;
        let before = t.rx_packets()?;
        let (sent, busy, took) = send_paced(&t.gen_ns.name, "gen0", frame, flows, pps, seconds)?;
        std::thread::sleep(Duration::from_millis(200));
        let arrived = t.rx_packets()? - before;
        out.push(Load {
            mode,
            pps,
            sent,
            arrived,
            busy,
            seconds: took.as_secs_f64(),
        });
        drop(fwd);
        tear_down(&t, mode)?;
    }
    Ok(out)
}

/// One CPU's time by kind, in clock ticks, from /proc/stat: user nice system idle iowait
/// irq softirq steal.
fn cpu_ticks(cpu: usize) -> Result<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let mut out = [0u64; 8];
    for (o, x) in out.iter_mut().zip(line.split_whitespace().skip(1)) {
        *o = x
            .parse()
            .with_context(|| format!("bad {name} field {x:?}"))?;
    }
    Ok(out)
}

/// Sends frames as `send` does, but paced: `pps` frames per second for `seconds`, one
/// batch every 100 ms (each live-frames call also waits about 20 ms for an RCU grace
/// period while tearing down its page pool, idle time, so the batches cannot be finer);
/// returns the frames sent, the busy share of the sending CPU meanwhile and the time it
/// took. A batch that runs late (the machine busy with something else) makes the round a
/// little longer and its load a little lower, which the caller reports; a round half as
/// long again as asked was not at the load asked, and is an error.
fn send_paced(
    ns: &str,
    dev: &str,
    frame: Vec<u8>,
    flows: u32,
    pps: u32,
    seconds: f64,
) -> Result<(u64, f64, Duration)> {
    let dev = dev.to_string();
    in_ns(ns, move || {
        let cpu = pin_to_last_cpu();
        let mut g = Generator::new(&frame, flows, &dev, false)?;
        const PERIOD: Duration = Duration::from_millis(100);
        let batch = (pps as f64 * PERIOD.as_secs_f64()).round().max(1.0) as u32;
        let periods = (seconds / PERIOD.as_secs_f64()).round() as u32;
        let t0 = cpu_ticks(cpu)?;
        let start = Instant::now();
        let mut sent = 0u64;
        for i in 1..=periods {
            g.send(&frame, batch)?;
            sent += batch as u64;
            if let Some(wait) = (PERIOD * i).checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let elapsed = start.elapsed();
        let t1 = cpu_ticks(cpu)?;
        anyhow::ensure!(
            elapsed < PERIOD * periods * 3 / 2,
            "the offered load fell behind: {periods} batches of {batch} frames took {elapsed:?}, \
             not {:?}",
            PERIOD * periods
        );
        let d: Vec<u64> = t1
            .iter()
            .zip(&t0)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let all: u64 = d.iter().sum();
        anyhow::ensure!(all > 0, "no CPU time accounted");
        // idle and iowait
        Ok((sent, (all - d[3] - d[4]) as f64 / all as f64, elapsed))
    })
}

/// Keeps the calling thread on one CPU (the last it may run on): BPF_PROG_TEST_RUN runs
/// the program on the caller's CPU, and a migration between calls would put cold caches
/// into one side of a comparison. Returns the CPU it runs on (where a fixed-load run reads
/// its time): the one pinned, or, if pinning failed, the current one.
pub fn pin_to_last_cpu() -> usize {
    // SAFETY: zeroed cpu_set_t values read and filled through libc's own calls and macros;
    // affinity calls on the calling thread only.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut allowed) == 0 {
            let last = (0..libc::CPU_SETSIZE as usize)
                .rev()
                .find(|&c| libc::CPU_ISSET(c, &allowed));
            if let Some(cpu) = last {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, size, &set) != 0 {
                    eprintln!(
                        "pinning to CPU {cpu} failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
        libc::sched_getcpu().max(0) as usize
    }
}
