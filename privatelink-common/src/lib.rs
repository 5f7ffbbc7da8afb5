//! Map keys and values shared by the XDP program and the daemon — the one source of truth.
//!
//! Every type is `#[repr(C)]` with explicit padding so that a key hashes the same on both
//! sides. Addresses are kept as network-order byte arrays (`[u8; 4]`); ports are host-order
//! `u16` so that `bpftool map dump` prints them as the numbers an operator expects.
#![no_std]

pub mod csum;
pub mod flowtable;
pub mod hash;
pub mod layout;
pub mod maps;
pub mod reason;
pub mod v6;

pub use flowtable::{FlowBucket, FlowBucket6, FlowGeometry, FlowSlot, FlowSlot6};
pub use reason::Reason;
pub use v6::{
    EndpointEni6, FlowEntry6, FlowKey6, GatewayRoute6, Rule6, RuleSet6, SnatPool6, VpcAddr6,
    gateway_policy6,
};

/// Names of the maps as they appear in the object, in `bpftool map show` and as pin files
/// (from the catalogue, `for_each_map!`).
pub mod map_names {
    macro_rules! names {
        ($({ $(#[$doc:meta])* $name:ident $map:ident $($columns:tt)* })*) => {
            $($(#[$doc])* pub const $name: &str = stringify!($map);)*
            /// Every map of the catalogue, in its order.
            pub const ALL: [&str; [$(stringify!($map)),*].len()] = [$($name),*];
        };
    }
    crate::for_each_map!(names);
}

/// The XDP program's name in the object (and in `bpftool prog show`).
pub const PROGRAM_NAME: &str = "privatelink";
/// The path table: one row per program the XDP entry point tail-calls for a path past
/// classification, in `PL_PATHS` order. Each row gives the `Path` variant, the index
/// constant (`PATH_*`, the slot in `PL_PATHS`) and the program's name (the name of its
/// `#[xdp] fn` in the eBPF crate, which checks it against this table). Each program is
/// verified on its own: the kernel's budget of 1 000 000 verified instructions per
/// program would not hold them all.
macro_rules! path_table {
    ($($(#[doc = $doc:literal])* $variant:ident, $index:ident, $program:ident;)*) => {
        /// A path program (see `path_table!`); its discriminant is its slot in `PL_PATHS`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Path {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Path {
            /// Every path, in table (and `PL_PATHS`) order.
            pub const ALL: [Path; [$(stringify!($variant)),*].len()] = [$(Path::$variant),*];

            /// The program's name in the object (its `#[xdp] fn`).
            pub const fn program(self) -> &'static str {
                match self {
                    $(Path::$variant => stringify!($program),)*
                }
            }
        }

        $(
            #[doc = concat!("`PL_PATHS` slot of `", stringify!($program), "`.")]
            pub const $index: u32 = Path::$variant as u32;
        )*

        /// The path programs' names by their index in `PL_PATHS` (see `PATH_*`).
        pub const PATH_PROGRAMS: [&str; Path::ALL.len()] = [$(stringify!($program)),*];
    };
}

path_table! {
    /// Consumer → service: TCP/UDP to an endpoint ENI or a gateway route.
    Forward, PATH_FORWARD, privatelink_forward;
    /// Service → consumer: TCP/UDP to a SNAT address.
    Reply, PATH_REPLY, privatelink_reply;
    /// ICMP to an endpoint ENI: echo, and errors about our flows.
    IcmpEndpoint, PATH_ICMP_ENDPOINT, privatelink_icmp_endpoint;
    /// ICMP errors to a SNAT address or a gateway route.
    IcmpSnat, PATH_ICMP_SNAT, privatelink_icmp_snat;
    /// A packet routed to a GWLB endpoint: to its appliance, in GENEVE.
    GwlbSteer, PATH_GWLB_STEER, privatelink_gwlb_steer;
    /// GENEVE coming back from a GWLB appliance.
    GwlbReturn, PATH_GWLB_RETURN, privatelink_gwlb_return;
    /// Every IPv6 frame on an attached interface: neighbour discovery, ICMPv6 echo, and
    /// which IPv6 path takes the rest.
    Ipv6, PATH_IPV6, privatelink_ipv6;
    /// IPv6 consumer → service: TCP/UDP to an endpoint ENI's IPv6 address.
    Forward6, PATH_FORWARD6, privatelink_forward6;
    /// IPv6 service → consumer: TCP/UDP to an IPv6 SNAT address, and ICMPv6 errors about
    /// NATed flows either way.
    Reply6, PATH_REPLY6, privatelink_reply6;
    /// IPv6 routed to a GWLB endpoint: to its appliance, in GENEVE (protocol 0x86DD).
    GwlbSteer6, PATH_GWLB_STEER6, privatelink_gwlb_steer6;
    /// GENEVE from a GWLB appliance carrying IPv6 (tail-called by the IPv4 return path, or
    /// by the classifier's inlined one).
    GwlbReturn6, PATH_GWLB_RETURN6, privatelink_gwlb_return6;
}

/// Whether `name` is the program of the path at `index` in `PL_PATHS` (for compile-time
/// checks of the eBPF crate's path functions against the table).
pub const fn is_path_program(index: u32, name: &str) -> bool {
    if index as usize >= PATH_PROGRAMS.len() {
        return false;
    }
    let (a, b) = (PATH_PROGRAMS[index as usize].as_bytes(), name.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
/// The program array the entry point tail-calls through. Each loaded object has its own,
/// filled with its own path programs, pinned as `paths/<entry program id>` (not by name).
pub const PATHS_MAP: &str = "PL_PATHS";

/// Default conntrack capacity (entries; a flow uses two, one per direction).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 2 * 1024 * 1024;
pub const MAX_IFACES: u32 = 64;
pub const MAX_VPCS: u32 = 1024;
pub const MAX_ENDPOINTS: u32 = 65536;
pub const MAX_SERVICES: u32 = 4096;
pub const MAX_NEIGHBORS: u32 = 65536;
pub const MAX_SNAT_ADDRS: usize = 8;
/// The most appliances one GWLB service may have.
pub const MAX_APPLIANCES: usize = 16;
/// Destinations behind GWLB endpoints whose MACs the data path resolved itself (LRU).
pub const MAX_GWLB_NEIGHBORS: u32 = 65536;

/// GENEVE (RFC 8926) as a GWLB endpoint sends it: UDP port, the option class AWS-style
/// appliances expect and its three option types, and the bytes added in front of the
/// inner IPv4 packet (outer IPv4 20 + UDP 8 + GENEVE 8 + options 12 + 12 + 8).
pub const GENEVE_PORT: u16 = 6081;
pub const GWLB_OPTION_CLASS: u16 = 0x0108;
pub const GWLB_OPT_ENDPOINT_ID: u8 = 1;
pub const GWLB_OPT_ATTACHMENT_ID: u8 = 2;
pub const GWLB_OPT_FLOW_COOKIE: u8 = 3;
pub const GENEVE_OPTIONS_LEN: usize = 32;
pub const GWLB_OVERHEAD: usize = 20 + 8 + 8 + GENEVE_OPTIONS_LEN;

/// Default idle timeouts. A TCP flow that saw RST, or FIN in both directions, is closing.
pub const TCP_IDLE_TIMEOUT_NS: u64 = 350 * 1_000_000_000;
pub const OTHER_IDLE_TIMEOUT_NS: u64 = 120 * 1_000_000_000;
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 10 * 1_000_000_000;
/// A flow that has not completed its handshake (TCP), or not seen a reply (other
/// protocols), lives this long idle, as Linux conntrack's SYN_SENT and Cilium's SYN
/// timeout do, not the established flow's timeout.
pub const EMBRYONIC_TIMEOUT_NS: u64 = 10 * 1_000_000_000;
/// An embryonic flow idle this long gives its SNAT tuple up to a new flow that needs it.
pub const EMBRYONIC_RECLAIM_NS: u64 = 1_000_000_000;

/// Value of `PL_CONFIG[0]`: data path settings the daemon writes at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub tcp_timeout_ns: u64,
    pub other_timeout_ns: u64,
    pub closing_timeout_ns: u64,
    pub embryonic_timeout_ns: u64,
    /// Flows the conntrack table holds (its entries / 2): an endpoint's share of new
    /// flows is taken of this and of its service's SNAT tuples, whichever is smaller.
    pub flow_capacity: u64,
}

impl Config {
    /// The settings until the daemon has written its own.
    pub const DEFAULT: Config = Config {
        tcp_timeout_ns: TCP_IDLE_TIMEOUT_NS,
        other_timeout_ns: OTHER_IDLE_TIMEOUT_NS,
        closing_timeout_ns: TCP_CLOSING_TIMEOUT_NS,
        embryonic_timeout_ns: EMBRYONIC_TIMEOUT_NS,
        flow_capacity: DEFAULT_CONNTRACK_ENTRIES as u64 / 2,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Value of `PL_EP_BUDGET` (key: endpoint id; written by the data path): the endpoint's
/// allowance of new flows, a token bucket of `budget` tokens (half its share of the SNAT
/// tuples) refilled over the embryonic timeout. A new flow takes a token; a flow that gets
/// established gives it back (and one that could not be made). An embryonic flow lives the
/// embryonic timeout from its creation, however often it is resent, so an endpoint holds
/// at most two budgets, its share, of embryonic flows (a full bucket and what refills
/// meanwhile), whatever it sends: a flood of half-open flows exhausts its own allowance,
/// not its service's SNAT pool.
/// `refused` counts the new flows it cost the endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBudget {
    pub tokens: u32,
    pub budget: u32,
    pub last_ns: u64,
    pub refused: u64,
}

/// An IPv4 address inside one VPC. VPC ranges may overlap, so an address alone is ambiguous.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VpcAddr {
    pub vpc_id: u32,
    pub addr: [u8; 4],
}

/// Value of `PL_IFACES` (key: ifindex): which VPC an attached interface faces.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    pub vpc_id: u32,
    pub mac: [u8; 6],
    /// `IFACE_FLAG_*`.
    pub flags: u8,
    pub _pad: u8,
}

/// `IfaceInfo::flags`: the VPC has gateway endpoints (only then is `PL_GW_ROUTES` looked up).
pub const IFACE_FLAG_GATEWAYS: u8 = 1;
/// `IfaceInfo::flags`: the port of a VPC holding GWLB appliances (GENEVE comes back here).
pub const IFACE_FLAG_APPLIANCES: u8 = 2;
/// `IfaceInfo::flags`: the interface also carries the host's own traffic (the VPC's
/// `host_traffic` switch): what is not the data path's passes to the kernel. Without it the
/// host's stack sees only what `PL_HOST` admits, and everything else is dropped
/// (`drop_host_isolated`).
pub const IFACE_FLAG_HOST_TRAFFIC: u8 = 4;
/// `IfaceInfo::flags`: the VPC holds endpoint ENIs or SNAT addresses: only then is a
/// packet's destination looked up in `PL_ENDPOINTS` and `PL_SNAT_ADDRS` (a VPC of GWLB
/// appliances only, or of consumers of gateway endpoints only, spares both misses).
pub const IFACE_FLAG_ADDRESSES: u8 = 8;

/// Value of `PL_HOST` (key: VPC + address): an address of the host's own in that VPC
/// (the GWLB address health checks leave from), or a peer it talks to there (an appliance
/// it probes, `host_peer`: the protocol and port the host connects to). On an isolated
/// interface the kernel sees an IPv4 packet only when it goes from a peer's port (that
/// protocol) to a host address, or is an ICMP error from a peer to a host address; and an
/// ARP packet only about a host address.
pub const HOST_ADDR: u32 = 1;
pub const HOST_PEER: u32 = 2;
/// The VPC's DNS resolver address the host serves: the kernel gets UDP and TCP to its
/// port 53 (`DNS_PORT`) from any sender of the VPC, and ARP replies to it (the kernel's
/// own requests for a client's MAC); ARP requests for it are answered in XDP, as for an
/// ENI.
pub const HOST_DNS: u32 = 3;
/// The port a VPC's resolver serves.
pub const DNS_PORT: u16 = 53;

/// The `PL_HOST` value of a peer the host talks to with `proto` on its port `port`.
pub const fn host_peer(proto: u8, port: u16) -> u32 {
    HOST_PEER | (proto as u32) << 8 | (port as u32) << 16
}

/// The most listeners one service publishes.
pub const MAX_LISTENERS: usize = 16;

/// One listener of a service's load balancer: a protocol and a port range (the ENI-side
/// destination port). The only traffic an endpoint of the service carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub proto: u8,
    pub _pad: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub _pad2: u16,
}

/// Value of `PL_LISTENERS` (key: service id): what the service publishes. A service
/// without an entry (or with none) publishes nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSet {
    pub count: u32,
    pub _pad: u32,
    pub listeners: [Listener; MAX_LISTENERS],
}

impl ListenerSet {
    /// Whether a packet of `proto` to port `port` matches a listener.
    #[inline(always)]
    pub fn admits(&self, proto: u8, port: u16) -> bool {
        let n = self.count as usize;
        for i in 0..MAX_LISTENERS {
            if i >= n {
                break;
            }
            let l = &self.listeners[i];
            if l.proto == proto && port >= l.port_lo && port <= l.port_hi {
                return true;
            }
        }
        false
    }
}

/// Value of `PL_VPC_PORTS` (key: vpc id): the interface through which a VPC is reached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpcPort {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// The interface's MTU (GWLB encapsulation answers larger packets with frag-needed).
    pub mtu: u16,
}

/// Connection state of an endpoint, as the provider sees it. Only `Connected` forwards.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Pending = 0,
    Connected = 1,
    Rejected = 2,
    Disconnected = 3,
}

/// `EndpointEni::flags`: the consumer account is on the service's whitelist.
pub const ENI_FLAG_WHITELISTED: u32 = 1;
/// `EndpointEni::flags`: security groups guard the ENI (`PL_SG_RULES` has its rules).
pub const ENI_FLAG_SG: u32 = 2;
/// `EndpointEni::flags`: the ENI's vSwitch has a network ACL (`PL_ACL_IN`/`PL_ACL_OUT`).
pub const ENI_FLAG_ACL: u32 = 4;
/// `EndpointEni::flags`: a gateway endpoint (a prefix route, no ENI): the destination is
/// kept, `lb_addr` is the next hop in the service's VPC, and the endpoint policy (in
/// `PL_SG_RULES` under the gateway address) is matched against the destination.
pub const ENI_FLAG_GATEWAY: u32 = 8;
/// `EndpointEni::flags`: a GWLB endpoint's route: packets are sent in GENEVE to an
/// appliance of `service_id` (candidates in `PL_GWLB_TARGETS` under service + `zone_id`),
/// from `lb_addr` (the load balancer's address in `provider_vpc_id`); `gateway` is the
/// endpoint's ENI.
pub const ENI_FLAG_GWLB: u32 = 16;
/// GWLB: flows of an unhealthy appliance move to a healthy one (`rebalance`).
pub const ENI_FLAG_REBALANCE: u32 = 32;
/// GWLB stickiness: 3-tuple (addresses + protocol) or 2-tuple (addresses); 5-tuple if
/// neither is set.
pub const ENI_FLAG_STICKY_3: u32 = 64;
pub const ENI_FLAG_STICKY_2: u32 = 128;
/// `EndpointEni::flags`: the ENI's zone has several load balancers: new flows are spread
/// over `PL_LB_SETS[service, zone]` by a hash of the client's tuple (`lb_addr` is the first).
pub const ENI_FLAG_LB_SET: u32 = 256;
/// The endpoint has flow logs on: its packets, accepted and dropped, are reported on the
/// `PL_FLOW_EVENTS` ring buffer.
pub const ENI_FLAG_FLOW_LOG: u32 = 512;

/// The most load balancers a service has in one zone.
pub const MAX_LBS_PER_ZONE: usize = 8;

/// Slots of an `LbSet`'s lookup table: a flow's hash picks a slot, the slot a load
/// balancer.
pub const LB_SLOTS: usize = 64;

/// Value of `PL_LB_SETS` (key: `GwlbZone`, the service and the ENI's zone): the load
/// balancers new flows from that zone are spread over. Flows in progress keep the one
/// they started with (their conntrack entries hold it), so a load balancer replaced or
/// added serves only new flows. The daemon fills `slots` by rendezvous hashing (each slot
/// goes to the load balancer with the highest `lb_slot_score`), so adding one moves only
/// the slots it wins and removing one only its own: a flow whose entry the LRU evicted is
/// re-made on the load balancer it started with unless that one's slot moved. The data
/// path needs no loop for it (a loop choosing among load balancers multiplied the
/// verifier's paths past its budget).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbSet {
    pub count: u32,
    pub _pad: u32,
    pub addrs: [[u8; 4]; MAX_LBS_PER_ZONE],
    /// Per slot, the index in `addrs` of its load balancer.
    pub slots: [u8; LB_SLOTS],
}

impl Default for LbSet {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            addrs: [[0; 4]; MAX_LBS_PER_ZONE],
            slots: [0; LB_SLOTS],
        }
    }
}

/// How much slot `slot` wants load balancer `addr` (rendezvous hashing).
pub fn lb_slot_score(slot: usize, addr: [u8; 4]) -> u32 {
    hash::mix32(u32::from_be_bytes(addr) ^ (slot as u32).wrapping_mul(0x9e37_79b9))
}

/// Key of `PL_GWLB_TARGETS` and `PL_LB_SETS`: a service as seen from one zone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GwlbZone {
    pub service_id: u32,
    pub zone_id: u32,
}

/// Value of `PL_GWLB_TARGETS`: the healthy appliances new flows from that zone are spread
/// over (same zone first; the daemon fills in other zones when the service is cross-zone
/// or its own zone has none left).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplianceSet {
    pub count: u32,
    pub _pad: u32,
    pub addrs: [[u8; 4]; MAX_APPLIANCES],
}

/// Value of `PL_GWLB_APPLS` (key: appliance VPC + address): GENEVE is only accepted
/// from these, and `healthy` decides whether `rebalance` flows move away.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appliance {
    pub service_id: u32,
    pub healthy: u32,
    /// The appliance's slot in `PL_EP_COUNTERS` (0: none; see `CounterKey`).
    pub counter_slot: u32,
}

/// Key of `PL_GW_ROUTES` (an LPM trie): `prefix_len` counts the 32 bits of `vpc_id` plus
/// the prefix's length, so a route only ever matches inside its own VPC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayRoute {
    pub prefix_len: u32,
    pub vpc_id: u32,
    pub addr: [u8; 4],
}

/// Value of `PL_ENDPOINTS` (key: consumer VPC + ENI address): everything the data path
/// needs to forward traffic of one endpoint ENI. The daemon resolves zone affinity and
/// whitelist membership into this entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointEni {
    pub endpoint_id: u32,
    pub service_id: u32,
    pub consumer_account: u32,
    /// `ConnectionState as u32`.
    pub state: u32,
    pub flags: u32,
    pub zone_id: u32,
    /// Where new flows go: the provider VPC and its load balancer address for this zone.
    pub provider_vpc_id: u32,
    pub lb_addr: [u8; 4],
    /// Gateway endpoints: the route target address in the consumer VPC (the key of the
    /// endpoint policy); zero for ENIs.
    pub gateway: [u8; 4],
    /// The service's per-endpoint share of new flows, in percent of its SNAT tuples (or
    /// of the flow table, if smaller); 0: no bound (see `FlowBudget`).
    pub flow_share: u32,
    /// This ENI's slot in `PL_EP_COUNTERS` (0: none; the daemon assigns them, see
    /// `CounterKey`).
    pub counter_slot: u32,
}

impl EndpointEni {
    pub fn is_connected(&self) -> bool {
        self.state == ConnectionState::Connected as u32
    }
    pub fn is_whitelisted(&self) -> bool {
        self.flags & ENI_FLAG_WHITELISTED != 0
    }
}

/// Value of `PL_SNAT_POOLS` (key: service id): source addresses in the provider VPC that
/// consumer flows are translated to, and the port range handed out on each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPool {
    pub count: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub addrs: [[u8; 4]; MAX_SNAT_ADDRS],
}

/// Value of `PL_NEIGHBORS` (key: VPC + address): the next hop's MAC address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neighbor {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of `PL_CONNTRACK`: a packet's 5-tuple as it arrives on a VPC-facing interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub vpc_id: u32,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // Two scalar fields, not `[u8; 3]`: zeroing a 3-byte array becomes a call to memset
    // in BPF code.
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey {
    /// The key of a `proto` packet from `src:sport` to `dst:dport` in VPC `vpc_id` (the
    /// arguments in field order).
    #[inline(always)]
    pub const fn new(
        vpc_id: u32,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> FlowKey {
        // Whole words (`of_words`): the same fields, the padding zero.
        FlowKey::of_words([
            vpc_id,
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            ports_word(sport, dport),
            proto_word(proto),
        ])
    }

    /// `new` from the key's words as they lie in memory: `vpc_id`; the source and the
    /// destination address as a packet holds them (network order, read as native words);
    /// `ports_word` and `proto_word`. A key the data path builds byte by byte and then
    /// reads as words (its hash, its comparisons) makes every such read wait until the
    /// bytes' stores reach the cache (a store cannot be forwarded to a wider load); built
    /// from whole words, each read takes its word from the store that wrote it.
    /// Its last word must be `proto_word`'s (a slot keeps only its low byte: see
    /// `flowtable::SlotKey::storable`).
    #[inline(always)]
    pub const fn of_words(words: [u32; 5]) -> FlowKey {
        debug_assert!(words[4] <= 0xff);
        // SAFETY: `FlowKey` is `repr(C)`, five words with no padding (asserted below), and
        // any bits are a valid value of its fields.
        unsafe { core::mem::transmute::<[u32; 5], FlowKey>(words) }
    }

    /// The same flow seen from the other end.
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey {
        FlowKey::new(
            self.vpc_id,
            self.dst,
            self.src,
            self.dport,
            self.sport,
            self.proto,
        )
    }
}

const _: () =
    assert!(core::mem::size_of::<FlowKey>() == 20 && core::mem::align_of::<FlowKey>() == 4);

/// The word of a flow key (`FlowKey`, `FlowKey6`) that holds its ports (host order), as
/// the key's memory holds it: what `FlowKey::of_words` and the key fillers write whole.
#[inline(always)]
pub const fn ports_word(sport: u16, dport: u16) -> u32 {
    halves_word(sport, dport)
}

/// The word whose memory holds the 16-bit word `first` and then `second` (as
/// `u32::from_ne_bytes` of their bytes, said with shifts: LLVM's BPF backend made the
/// bytes' version four more instructions a word).
#[inline(always)]
pub const fn halves_word(first: u16, second: u16) -> u32 {
    if cfg!(target_endian = "little") {
        first as u32 | (second as u32) << 16
    } else {
        (first as u32) << 16 | second as u32
    }
}

/// The last word of a flow key: its protocol, the padding zero (`ports_word`'s sibling).
#[inline(always)]
pub const fn proto_word(proto: u8) -> u32 {
    u32::from_ne_bytes([proto, 0, 0, 0])
}

/// `FlowEntry::direction`.
pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// `FlowEntry::tcp_flags` bits: this direction sent FIN; the flow is closing (RST seen, or
/// FIN seen in both directions) and expires after `TCP_CLOSING_TIMEOUT_NS`.
pub const CT_FIN_SEEN: u8 = 1;
pub const CT_CLOSING: u8 = 2;
/// The flow has seen a reply (TCP: the SYN-ACK), on both entries.
pub const CT_REPLIED: u8 = 4;
/// The flow is established (TCP: the handshake completed, the client's ACK after the
/// reply; other protocols: a reply seen), on both entries. Until then it is embryonic:
/// `EMBRYONIC_TIMEOUT_NS`, and its tuple may be reclaimed once idle for
/// `EMBRYONIC_RECLAIM_NS`.
pub const CT_ESTABLISHED: u8 = 8;

/// Value of `PL_CONNTRACK`: how to rewrite a packet that matched the key, and where to send it.
/// A flow has two entries; each names its partner through `out_vpc_id` + the rewritten tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    pub new_sport: u16,
    pub new_dport: u16,
    pub out_ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub out_vpc_id: u32,
    pub endpoint_id: u32,
    pub direction: u8,
    pub tcp_flags: u8,
    /// `FLOW_GATEWAY` for flows of a gateway endpoint, `FLOW_GWLB` for GWLB flows.
    pub flags: u8,
    /// Packets of this direction the established fast path forwarded, wrapping at 256: the
    /// trace that shows the fast path ran, where the counters in `PL_STATS` are the same
    /// for both paths.
    pub fast_packets: u8,
    /// When this direction was last seen: `seen_tick` of the clock (`seen_elapsed_ns`).
    /// The daemon's sweep frees a dead flow's directions, and moves a live flow's idle
    /// direction's stamp up to a quarter of the wrap ago, so that no stamp reaches half
    /// the wrap, where it would read as recent (`privatelink_user`'s
    /// `dataplane::flowtable::sweep`).
    pub last_seen: u32,
    /// Original direction: when the reply entry was last confirmed to be this flow's
    /// (GWLB flows: when the appliance was last confirmed healthy); `checked_tick` of the
    /// clock (`checked_elapsed_ns`).
    pub checked: u16,
    /// The endpoint ENI's slot in `PL_EP_COUNTERS` (0: none), copied from its
    /// `EndpointEni` when the flow was made and when it is stamped.
    pub counter_slot: u16,
    /// GWLB flows: the MAC this direction is delivered to once the appliance returns it
    /// (zero until known).
    pub peer_mac: [u8; 6],
    /// GWLB flows: the MTU of the appliance's port.
    pub out_mtu: u16,
    /// The `PL_EPOCH` value under which this direction was last checked against the
    /// endpoint's state (whitelist, connection, ENI owner): while the epoch is unchanged,
    /// its packets skip those lookups (the established fast path). 0: never checked.
    pub epoch: u32,
    /// Stamped with `epoch`: what this direction's rewrite adds to the IPv4 header
    /// checksum (addresses and TTL decrement) and to the TCP/UDP checksum (addresses in the
    /// pseudo-header, ports), folded (`csum::apply_delta`). GWLB flows rewrite no
    /// checksum: they keep their GENEVE flow cookie here (`gwlb_cookie`).
    pub csum_ip: u16,
    pub csum_l4: u16,
}

const _: () =
    assert!(core::mem::size_of::<FlowEntry>() == 64 && MAX_COUNTER_SLOTS <= u16::MAX as u32 + 1);

/// `FlowEntry::last_seen`'s clock: ticks of 2^`SEEN_SHIFT` ns (16.8 ms) in 32 bits, which
/// wrap after 2.28 years of uptime (the data path's clock is the time since boot).
pub const SEEN_SHIFT: u32 = 24;
/// `FlowEntry::checked`'s clock: ticks of 2^`CHECKED_SHIFT` ns (67 ms) in 16 bits, which
/// wrap every 73 minutes.
pub const CHECKED_SHIFT: u32 = 26;

/// `ns` (the data path's clock) as `FlowEntry::last_seen` holds it.
#[inline(always)]
pub const fn seen_tick(ns: u64) -> u32 {
    (ns >> SEEN_SHIFT) as u32
}

/// How long before `now_ns` the tick `seen` was, in ns (to a tick). Signed: a stamp ahead
/// of `now_ns` (another CPU's later reading of the clock) is no time ago, never half a
/// wrap ago; a stamp more than half a wrap (1.14 years) old reads as recent, which no
/// flow's idle timeout comes near, and no stamp lives to: the daemon's sweep, every
/// minute, frees dead flows and moves older stamps up (`FlowEntry::last_seen`).
#[inline(always)]
pub const fn seen_elapsed_ns(now_ns: u64, seen: u32) -> u64 {
    let d = seen_tick(now_ns).wrapping_sub(seen) as i32;
    if d < 0 { 0 } else { (d as u64) << SEEN_SHIFT }
}

/// `ns` as `FlowEntry::checked` holds it.
#[inline(always)]
pub const fn checked_tick(ns: u64) -> u16 {
    (ns >> CHECKED_SHIFT) as u16
}

/// How long before `now_ns` the tick `checked` was, in ns (to a tick), modulo the 73
/// minutes the tick wraps in. Unsigned: a stamp ahead of `now_ns` reads as long ago, so
/// what it guards (a recheck) is only ever done early, never skipped; a flow idle for a
/// whole number of wraps plus less than the recheck's period skips one recheck, which its
/// next packet after that period makes.
#[inline(always)]
pub const fn checked_elapsed_ns(now_ns: u64, checked: u16) -> u64 {
    (checked_tick(now_ns).wrapping_sub(checked) as u64) << CHECKED_SHIFT
}

/// How long a flow direction in state `tcp_flags` (`CT_*`) may idle: `FlowEntry`'s rule,
/// and `FlowEntry6`'s (the data path's IPv6 flows follow the same timeouts).
pub fn idle_timeout_ns(tcp_flags: u8, proto: u8, cfg: &Config) -> u64 {
    let t = if proto != PROTO_TCP {
        cfg.other_timeout_ns
    } else if tcp_flags & CT_CLOSING != 0 {
        return cfg.closing_timeout_ns;
    } else {
        cfg.tcp_timeout_ns
    };
    if tcp_flags & CT_ESTABLISHED == 0 && cfg.embryonic_timeout_ns < t {
        cfg.embryonic_timeout_ns
    } else {
        t
    }
}

/// `FlowEntry::flags`: the flow belongs to a gateway endpoint.
pub const FLOW_GATEWAY: u8 = 1;
/// `FlowEntry::flags`: a GWLB flow. Both directions are keyed in the consumer VPC; the
/// entry says where GENEVE goes: `new_src` the load balancer, `new_dst` the appliance,
/// `new_sport` the outer UDP source port, `out_*` and the MACs the appliance's port.
pub const FLOW_GWLB: u8 = 2;
/// `FlowEntry::flags`: the flow's endpoint ENI has flow logs on (`ENI_FLAG_FLOW_LOG`,
/// copied when the flow is made and when it is stamped): its packets go to `PL_FLOW_EVENTS`.
pub const FLOW_LOGGED: u8 = 4;

impl FlowEntry {
    /// A GWLB flow's GENEVE flow cookie, stamped with its epoch (in `csum_ip`, high half,
    /// and `csum_l4`: a GWLB flow has no checksum delta).
    #[inline(always)]
    pub fn gwlb_cookie(&self) -> u32 {
        (self.csum_ip as u32) << 16 | self.csum_l4 as u32
    }

    #[inline(always)]
    pub fn set_gwlb_cookie(&mut self, cookie: u32) {
        (self.csum_ip, self.csum_l4) = ((cookie >> 16) as u16, cookie as u16);
    }

    /// An entry with every field zero: the base of every entry the data path or a test
    /// writes (`FlowEntry { new_src, .., ..FlowEntry::zeroed() }`, or, where the stack
    /// has no room for a whole entry, `zeroed()` into map memory and then field by field:
    /// `gwlb6::create`), so that a new field is one edit here. A function, not a const: the data path's struct expressions then
    /// stay plain stores (a const base is copied from `.rodata`).
    #[inline(always)]
    pub const fn zeroed() -> FlowEntry {
        FlowEntry {
            new_src: [0; 4],
            new_dst: [0; 4],
            new_sport: 0,
            new_dport: 0,
            out_ifindex: 0,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            out_vpc_id: 0,
            endpoint_id: 0,
            direction: 0,
            tcp_flags: 0,
            flags: 0,
            fast_packets: 0,
            last_seen: 0,
            checked: 0,
            counter_slot: 0,
            peer_mac: [0; 6],
            out_mtu: 0,
            epoch: 0,
            csum_ip: 0,
            csum_l4: 0,
        }
    }

    /// The key of the other direction of the flow stored under `key`.
    #[inline(always)]
    pub fn partner(&self, key: &FlowKey) -> FlowKey {
        if self.flags & FLOW_GWLB != 0 {
            key.reversed()
        } else {
            self.partner_key(key.proto)
        }
    }

    /// NATed flows: the partner's key, from the rewritten tuple.
    pub fn partner_key(&self, proto: u8) -> FlowKey {
        FlowKey::new(
            self.out_vpc_id,
            self.new_dst,
            self.new_src,
            self.new_dport,
            self.new_sport,
            proto,
        )
    }

    pub fn idle_timeout_ns(&self, proto: u8, cfg: &Config) -> u64 {
        idle_timeout_ns(self.tcp_flags, proto, cfg)
    }

    /// Whether a new flow may take this entry's tuple over: expired, or embryonic and
    /// idle past `EMBRYONIC_RECLAIM_NS` (half-open flows give their tuples up first).
    pub fn is_reclaimable(&self, proto: u8, now_ns: u64, cfg: &Config) -> bool {
        self.is_expired(proto, now_ns, cfg)
            || (self.tcp_flags & CT_ESTABLISHED == 0
                && seen_elapsed_ns(now_ns, self.last_seen) > EMBRYONIC_RECLAIM_NS)
    }

    /// Whether a new flow of endpoint `endpoint_id` may take this entry's tuple over:
    /// expired, or embryonic, idle past `EMBRYONIC_RECLAIM_NS` and of the same endpoint
    /// (another endpoint's late reply must never reach this one's client).
    #[inline(always)]
    pub fn is_stale_for(&self, proto: u8, now_ns: u64, cfg: &Config, endpoint_id: u32) -> bool {
        self.is_expired(proto, now_ns, cfg)
            || (self.tcp_flags & CT_ESTABLISHED == 0
                && self.endpoint_id == endpoint_id
                && seen_elapsed_ns(now_ns, self.last_seen) > EMBRYONIC_RECLAIM_NS)
    }

    /// NAT flows' original-direction entry, during the handshake: the acknowledgment number
    /// the client's ACK must carry to establish the flow (the SYN-ACK's sequence number
    /// plus one). Kept in `peer_mac`'s first four bytes, which only GWLB flows use
    /// otherwise (they are established by the server's first non-SYN segment instead).
    pub fn handshake_ack(&self) -> u32 {
        let m = &self.peer_mac;
        u32::from_ne_bytes([m[0], m[1], m[2], m[3]])
    }

    pub fn set_handshake_ack(&mut self, ack: u32) {
        let b = ack.to_ne_bytes();
        self.peer_mac[0] = b[0];
        self.peer_mac[1] = b[1];
        self.peer_mac[2] = b[2];
        self.peer_mac[3] = b[3];
    }

    pub fn is_expired(&self, proto: u8, now_ns: u64, cfg: &Config) -> bool {
        seen_elapsed_ns(now_ns, self.last_seen) > self.idle_timeout_ns(proto, cfg)
    }

    /// For readers of the table: whether this entry's flow lives, that is, either direction
    /// was seen within its idle timeout. `partner` gives the other direction's entry
    /// (looked up only when this one has expired).
    pub fn is_live(
        &self,
        proto: u8,
        now_ns: u64,
        cfg: &Config,
        partner: impl FnOnce() -> Option<FlowEntry>,
    ) -> bool {
        !self.is_expired(proto, now_ns, cfg)
            || partner().is_some_and(|p| !p.is_expired(proto, now_ns, cfg))
    }
}

/// The most rules one ENI's merged security groups, or one ACL direction, may hold.
pub const MAX_RULES: usize = 32;

pub const RULE_ACCEPT: u8 = 1;
pub const RULE_DROP: u8 = 2;
/// `Rule::proto` matching any protocol.
pub const PROTO_ANY: u8 = 0;

/// One packet filter rule, as the data path evaluates it: the remote address in
/// `addr/prefix`, the protocol (`PROTO_ANY` for all), and for TCP/UDP the local (ENI-side)
/// port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub addr: [u8; 4],
    pub prefix: u8,
    pub proto: u8,
    pub action: u8,
    pub _pad: u8,
    pub port_lo: u16,
    pub port_hi: u16,
}

impl Rule {
    /// Whether a packet from/to remote address `remote`, protocol `proto` and ENI-side
    /// port `port` matches.
    #[inline(always)]
    pub fn matches(&self, remote: [u8; 4], proto: u8, port: u16) -> bool {
        let mask: u32 = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix.min(32) as u32)
        };
        let net = u32::from_be_bytes(self.addr) & mask;
        if u32::from_be_bytes(remote) & mask != net {
            return false;
        }
        if self.proto != PROTO_ANY && self.proto != proto {
            return false;
        }
        if (proto == PROTO_TCP || proto == PROTO_UDP) && self.proto != PROTO_ANY {
            return port >= self.port_lo && port <= self.port_hi;
        }
        true
    }
}

/// Value of `PL_SG_RULES` / `PL_ACL_IN` / `PL_ACL_OUT` (key: VPC + ENI address): rules
/// evaluated in order, the first match decides. The daemon orders security groups' merged
/// rules by priority (drop first at equal priority); ACL rules keep their written order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub count: u32,
    pub _pad: u32,
    pub rules: [Rule; MAX_RULES],
}

impl Default for RuleSet {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            rules: [Rule::default(); MAX_RULES],
        }
    }
}

impl RuleSet {
    /// The action of the first matching rule, if any.
    #[inline(always)]
    pub fn decide(&self, remote: [u8; 4], proto: u8, port: u16) -> Option<u8> {
        let n = self.count as usize;
        for i in 0..MAX_RULES {
            if i >= n {
                break;
            }
            let r = &self.rules[i];
            if r.matches(remote, proto, port) {
                return Some(r.action);
            }
        }
        None
    }
}

/// Slots of `PL_EP_COUNTERS`: one per endpoint ENI (an endpoint in one zone) and per GWLB
/// appliance; slot 0 is never assigned (it means "no slot").
pub const MAX_COUNTER_SLOTS: u32 = 16384;

/// Key of `PL_EP_SLOTS`: what a slot of `PL_EP_COUNTERS` counts. The daemon assigns slots
/// and keeps them there, beside the counters, so that a restarted daemon reads the same
/// counters under the same names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// `COUNTER_ENI` or `COUNTER_APPLIANCE`.
    pub kind: u32,
    /// ENI: the endpoint's numeric id; appliance: its VPC's.
    pub a: u32,
    /// ENI: the zone's numeric id; appliance: its address (network order, as `u32::from_be_bytes`).
    pub b: u32,
}

/// `CounterKey::kind`: an endpoint in one zone.
pub const COUNTER_ENI: u32 = 1;
/// `CounterKey::kind`: a GWLB appliance.
pub const COUNTER_APPLIANCE: u32 = 2;

/// What an endpoint's drops are counted as in `EndpointCounters::drops` (a verdict's
/// `Reason` folded to the kinds an operator tells apart; `Reason::endpoint_drop`).
pub const EP_DROP_KINDS: usize = 16;
/// The names of the drop kinds, by index (the `reason` label of the metrics).
pub const EP_DROP_NAMES: [&str; EP_DROP_KINDS] = [
    "other",
    "security_group",
    "acl",
    "not_connected",
    "not_whitelisted",
    "no_listener",
    "no_healthy_backend",
    "ttl_exceeded",
    "mtu",
    "malformed",
    "snat_exhausted",
    "flow_limit",
    "conntrack_full",
    "no_flow",
    "unsupported",
    "redirect_failed",
];

/// Value of `PL_EP_COUNTERS` (per CPU, index: a slot, see `CounterKey`). For an endpoint
/// ENI, "to service" is what its consumers sent through it and "to consumer" the replies;
/// for an appliance, "to service" is what went to it in GENEVE and "to consumer" what came
/// back. Bytes are IP bytes (the frame less its Ethernet header), as received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    pub to_service_packets: u64,
    pub to_service_bytes: u64,
    pub to_consumer_packets: u64,
    pub to_consumer_bytes: u64,
    /// Flows made (the new flow's first packet).
    pub new_flows: u64,
    /// Flow events that did not fit the ring buffer (`PL_FLOW_EVENTS`).
    pub flow_log_lost: u64,
    /// Drops, by `EP_DROP_NAMES` index.
    pub drops: [u64; EP_DROP_KINDS],
}

impl EndpointCounters {
    /// Adds `o` (another CPU's counters) to these.
    pub fn add(&mut self, o: &EndpointCounters) {
        self.to_service_packets += o.to_service_packets;
        self.to_service_bytes += o.to_service_bytes;
        self.to_consumer_packets += o.to_consumer_packets;
        self.to_consumer_bytes += o.to_consumer_bytes;
        self.new_flows += o.new_flows;
        self.flow_log_lost += o.flow_log_lost;
        for (d, s) in self.drops.iter_mut().zip(o.drops.iter()) {
            *d += s;
        }
    }
}

/// Ring buffer `PL_FLOW_EVENTS` (bytes; a power of two and a multiple of the page size).
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// `FlowEvent::direction`: into the endpoint ENI (consumer → service), as the ENI sees it.
pub const FLOW_INGRESS: u8 = 0;
/// `FlowEvent::direction`: out of the endpoint ENI (the service's replies to the consumer).
pub const FLOW_EGRESS: u8 = 1;

/// One record of `PL_FLOW_EVENTS`: a packet of an endpoint ENI with flow logs on, accepted
/// or dropped, as the ENI sees it (the consumer's address and port, and the ENI's: the
/// tuple before the rewrite for ingress, after it for egress).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_coarse_ns` of the packet (the clock of conntrack's `last_seen` ticks).
    pub time_ns: u64,
    /// The ENI's counter slot.
    pub slot: u32,
    /// IP bytes of the packet.
    pub bytes: u32,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags of the packet (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32).
    pub tcp_flags: u8,
    /// `FLOW_INGRESS` or `FLOW_EGRESS`.
    pub direction: u8,
    /// The verdict (`Reason` index): a forward verdict is ACCEPT, a drop REJECT.
    pub reason: u8,
}

/// `FlowEvent` of an IPv6 packet: the same fields, 16-byte addresses. Both go on the one
/// ring, told apart by their length (32 bytes, 56 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent6 {
    pub time_ns: u64,
    pub slot: u32,
    /// IP bytes of the packet: the fixed header's 40 and its payload length.
    pub bytes: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub direction: u8,
    pub reason: u8,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding.
    unsafe impl aya::Pod for VpcAddr {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for VpcPort {}
    unsafe impl aya::Pod for EndpointEni {}
    unsafe impl aya::Pod for SnatPool {}
    unsafe impl aya::Pod for Neighbor {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for EndpointCounters {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for FlowEvent6 {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for GatewayRoute {}
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for GwlbZone {}
    unsafe impl aya::Pod for ApplianceSet {}
    unsafe impl aya::Pod for Appliance {}
    unsafe impl aya::Pod for ListenerSet {}
    unsafe impl aya::Pod for FlowBudget {}
    unsafe impl aya::Pod for LbSet {}
    unsafe impl aya::Pod for VpcAddr6 {}
    unsafe impl aya::Pod for GatewayRoute6 {}
    unsafe impl aya::Pod for EndpointEni6 {}
    unsafe impl aya::Pod for SnatPool6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for FlowEntry6 {}
    unsafe impl aya::Pod for Rule6 {}
    unsafe impl aya::Pod for RuleSet6 {}
    unsafe impl aya::Pod for FlowBucket {}
    unsafe impl aya::Pod for FlowBucket6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn a_key_made_of_words_has_the_fields_it_was_given() {
        let k = FlowKey::new(7, [10, 1, 2, 3], [192, 168, 0, 9], 40000, 443, PROTO_TCP);
        assert_eq!(
            (
                k.vpc_id, k.src, k.dst, k.sport, k.dport, k.proto, k._pad, k._pad2
            ),
            (
                7,
                [10, 1, 2, 3],
                [192, 168, 0, 9],
                40000,
                443,
                PROTO_TCP,
                0,
                0
            )
        );
        // The bytes of two 16-bit words as they lie in memory, one word.
        let (a, b) = (u16::from_ne_bytes([10, 1]), u16::from_ne_bytes([2, 3]));
        assert_eq!(halves_word(a, b).to_ne_bytes(), [10, 1, 2, 3]);
        let k2 = FlowKey::of_words([
            7,
            halves_word(a, b),
            u32::from_ne_bytes([192, 168, 0, 9]),
            ports_word(40000, 443),
            proto_word(PROTO_TCP),
        ]);
        assert_eq!(k2, k);
        assert_ne!(ports_word(40000, 443), ports_word(443, 40000));
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VpcAddr>(), 8);
        assert_eq!(size_of::<IfaceInfo>(), 12);
        assert_eq!(size_of::<VpcPort>(), 12);
        assert_eq!(size_of::<EndpointEni>(), 44);
        assert_eq!(size_of::<FlowBudget>(), 24);
        assert_eq!(size_of::<Config>(), 40);
        assert_eq!(size_of::<SnatPool>(), 8 + 4 * MAX_SNAT_ADDRS);
        assert_eq!(size_of::<Neighbor>(), 8);
        assert_eq!(size_of::<FlowKey>(), 20);
        assert_eq!(size_of::<FlowEntry>(), 64);
        assert_eq!(size_of::<GwlbZone>(), 8);
        assert_eq!(size_of::<ApplianceSet>(), 8 + 4 * MAX_APPLIANCES);
        assert_eq!(size_of::<Appliance>(), 12);
        assert_eq!(size_of::<EndpointCounters>(), 48 + 8 * EP_DROP_KINDS);
        assert_eq!(size_of::<CounterKey>(), 12);
        assert_eq!(size_of::<FlowEvent>(), 32);
        assert_eq!(size_of::<FlowEvent6>(), 56);
        assert_eq!(size_of::<Listener>(), 8);
        assert_eq!(size_of::<ListenerSet>(), 8 + 8 * MAX_LISTENERS);
    }

    #[test]
    fn listeners_admit_their_protocol_and_ports_only() {
        let mut set = ListenerSet::default();
        assert!(!set.admits(PROTO_TCP, 80), "no listener publishes nothing");
        set.listeners[0] = Listener {
            proto: PROTO_TCP,
            port_lo: 80,
            port_hi: 80,
            ..Default::default()
        };
        set.listeners[1] = Listener {
            proto: PROTO_UDP,
            port_lo: 5000,
            port_hi: 5010,
            ..Default::default()
        };
        set.count = 2;
        assert!(set.admits(PROTO_TCP, 80));
        assert!(!set.admits(PROTO_TCP, 81));
        assert!(!set.admits(PROTO_UDP, 80));
        assert!(set.admits(PROTO_UDP, 5000) && set.admits(PROTO_UDP, 5010));
        assert!(!set.admits(PROTO_UDP, 5011) && !set.admits(PROTO_TCP, 5005));
        set.count = 1;
        assert!(
            !set.admits(PROTO_UDP, 5005),
            "only the first `count` listeners count"
        );
    }

    #[test]
    fn rules_match_prefix_protocol_and_ports() {
        let r = Rule {
            addr: [10, 10, 2, 0],
            prefix: 24,
            proto: PROTO_TCP,
            action: RULE_ACCEPT,
            port_lo: 80,
            port_hi: 90,
            ..Default::default()
        };
        assert!(r.matches([10, 10, 2, 7], PROTO_TCP, 80));
        assert!(r.matches([10, 10, 2, 7], PROTO_TCP, 90));
        assert!(!r.matches([10, 10, 2, 7], PROTO_TCP, 91));
        assert!(!r.matches([10, 10, 3, 7], PROTO_TCP, 80));
        assert!(!r.matches([10, 10, 2, 7], PROTO_UDP, 80));
        let any = Rule {
            prefix: 0,
            proto: PROTO_ANY,
            action: RULE_DROP,
            ..Default::default()
        };
        assert!(any.matches([1, 2, 3, 4], PROTO_ICMP, 0));
        let mut set = RuleSet::default();
        set.rules[0] = r;
        set.rules[1] = any;
        set.count = 2;
        assert_eq!(set.decide([10, 10, 2, 1], PROTO_TCP, 80), Some(RULE_ACCEPT));
        assert_eq!(set.decide([10, 10, 2, 1], PROTO_TCP, 22), Some(RULE_DROP));
        set.count = 1;
        assert_eq!(set.decide([10, 10, 2, 1], PROTO_TCP, 22), None);
        assert_eq!(size_of::<Rule>(), 12);
        assert_eq!(size_of::<RuleSet>(), 8 + 12 * MAX_RULES);
    }

    #[test]
    fn path_table_indexes_are_0_to_n_and_names_unique() {
        for (i, path) in Path::ALL.iter().enumerate() {
            assert_eq!(*path as u32, i as u32, "{path:?} is not at its index");
            assert_eq!(PATH_PROGRAMS[i], path.program());
            assert!(is_path_program(i as u32, path.program()));
            assert!(path.program().starts_with("privatelink_"));
            for other in &PATH_PROGRAMS[..i] {
                assert_ne!(*other, PATH_PROGRAMS[i], "program name used twice");
            }
        }
        assert_eq!(PATH_PROGRAMS.len(), Path::ALL.len());
        let indexes = [
            PATH_FORWARD,
            PATH_REPLY,
            PATH_ICMP_ENDPOINT,
            PATH_ICMP_SNAT,
            PATH_GWLB_STEER,
            PATH_GWLB_RETURN,
        ];
        assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
        assert!(!is_path_program(PATH_FORWARD, "privatelink_reply"));
        assert!(!is_path_program(
            PATH_PROGRAMS.len() as u32,
            "privatelink_forward"
        ));
    }

    #[test]
    fn flow_key_and_entry_constructors() {
        let k = FlowKey::new(7, [10, 0, 0, 1], [10, 0, 0, 2], 1000, 53, PROTO_UDP);
        assert_eq!(
            k,
            FlowKey {
                vpc_id: 7,
                src: [10, 0, 0, 1],
                dst: [10, 0, 0, 2],
                sport: 1000,
                dport: 53,
                proto: PROTO_UDP,
                _pad: 0,
                _pad2: 0,
            }
        );
        assert_eq!(
            k.reversed(),
            FlowKey::new(7, [10, 0, 0, 2], [10, 0, 0, 1], 53, 1000, PROTO_UDP)
        );
        assert_eq!(FlowEntry::zeroed(), FlowEntry::default());
    }

    #[test]
    fn partner_key_round_trips() {
        let e = FlowEntry {
            new_src: [10, 10, 255, 1],
            new_dst: [10, 10, 0, 10],
            new_sport: 40000,
            new_dport: 80,
            out_vpc_id: 7,
            ..Default::default()
        };
        let k = e.partner_key(PROTO_TCP);
        assert_eq!(k.src, [10, 10, 0, 10]);
        assert_eq!(k.dst, [10, 10, 255, 1]);
        assert_eq!((k.sport, k.dport, k.vpc_id), (80, 40000, 7));
    }

    #[test]
    fn tcp_timeouts_follow_flags() {
        let mut e = FlowEntry {
            last_seen: 0,
            tcp_flags: CT_ESTABLISHED,
            ..Default::default()
        };
        let cfg = Config::default();
        assert!(!e.is_expired(PROTO_TCP, 300 * 1_000_000_000, &cfg));
        assert!(e.is_expired(PROTO_TCP, 351 * 1_000_000_000, &cfg));
        e.tcp_flags = CT_CLOSING | CT_ESTABLISHED;
        assert!(e.is_expired(PROTO_TCP, 11 * 1_000_000_000, &cfg));
        e.tcp_flags = CT_ESTABLISHED;
        assert!(!e.is_expired(PROTO_UDP, 119 * 1_000_000_000, &cfg));
        assert!(e.is_expired(PROTO_UDP, 121 * 1_000_000_000, &cfg));
    }

    #[test]
    fn embryonic_flows_time_out_early_and_give_their_tuples_up_first() {
        let s = 1_000_000_000;
        let cfg = Config::default();
        let mut e = FlowEntry {
            last_seen: 0,
            ..Default::default()
        };
        for proto in [PROTO_TCP, PROTO_UDP] {
            e.tcp_flags = 0;
            assert!(!e.is_expired(proto, 9 * s, &cfg));
            assert!(e.is_expired(proto, 11 * s, &cfg), "embryonic: 10 s");
            assert!(!e.is_reclaimable(proto, s, &cfg));
            assert!(e.is_reclaimable(proto, 2 * s, &cfg), "idle over 1 s");
            e.tcp_flags = CT_REPLIED;
            assert!(
                e.is_expired(proto, 11 * s, &cfg),
                "a reply alone is not enough"
            );
            e.tcp_flags = CT_ESTABLISHED;
            assert!(!e.is_expired(proto, 11 * s, &cfg));
            assert!(!e.is_reclaimable(proto, 100 * s, &cfg));
        }
        // A shorter established timeout wins over the embryonic one.
        let short = Config {
            other_timeout_ns: 2 * s,
            ..cfg
        };
        e.tcp_flags = 0;
        assert!(e.is_expired(PROTO_UDP, 3 * s, &short));
    }
}
