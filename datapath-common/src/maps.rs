//! Names and capacities of the programs and maps of the eBPF object, and the
//! version of their layout.
//!
//! The agent finds programs and maps by these names; the eBPF side declares
//! its maps with these capacities.

/// Version of the layout of every map key and value shared by both sides
/// (the `#[repr(C)]` types of this crate and the capacities below). Bump it
/// whenever the meaning of a key or value changes in a way their sizes do
/// not show: maps that outlive the agent (pinned) can only be reused by a
/// program built with the same version. A change of kind, size or capacity
/// is seen by itself (the pinned map's layout is compared with the
/// object's, see `datapath-user/src/datapath/pins.rs`) and migrates that
/// map alone; a new map is created.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Name of the TC program attached to the ingress of each endpoint's
/// host-side veth (traffic *from* the endpoint).
pub const PROG_FROM_ENDPOINT: &str = "dp_from_ep";
/// TC program on the ingress of a network's uplink (reverse NAT of replies).
pub const PROG_FROM_UPLINK: &str = "dp_from_uplink";

/// `ENDPOINTS: HashMap<u32 ifindex, EndpointInfo>` (who sent this frame?).
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
/// `ENDPOINTS_BY_IP: HashMap<u32 ipv4 (wire order), EndpointInfo>` (where
/// does this packet go?).
pub const MAP_ENDPOINTS_BY_IP: &str = "ENDPOINTS_BY_IP";
/// `STATS: PerCpuArray<Counter>` indexed by reason code
/// (`reason::MAX` slots).
pub const MAP_STATS: &str = "STATS";
/// `NETWORKS: Array<NetworkInfo>` indexed by the network id (so ids must be
/// below [`MAX_NETWORKS`]), filled by the agent; a slot is in use when its
/// `flags` have [`NET_F_PRESENT`](crate::NET_F_PRESENT) (`Bpf::set_network`
/// sets it).
pub const MAP_NETWORKS: &str = "NETWORKS";
/// `SUBNETS: LpmTrie<u32 ipv4 (wire order), u32 network_id>`: every local
/// network's subnet, so the datapath can tell "another local network" from
/// "beyond the node".
pub const MAP_SUBNETS: &str = "SUBNETS";
/// `CT: LruHashMap<CtKey, CtEntry>`: the connection tracker (two entries per
/// masqueraded flow, see [`CtEntry`](crate::CtEntry)).
pub const MAP_CT: &str = "CT";
/// `FRAGS: LruHashMap<FragKey, FragPorts>`: the ports of the first
/// fragment of a masqueraded IPv4 datagram, for its later fragments (both
/// directions; see [`FragKey`](crate::FragKey)).
pub const MAP_FRAGS: &str = "FRAGS";
/// `CT6: LruHashMap<CtKey6, CtEntry6>`: the IPv6 connection tracker (two
/// entries per masqueraded flow, as `CT`). Added after layout version 1:
/// created at the next start of a datapath pinned by an older build; its
/// capacity is `CT`'s (`--ct-max-entries` sets both).
pub const MAP_CT6: &str = "CT6";
/// `FRAGS6: LruHashMap<FragKey6, FragPorts>`: the ports of the first
/// fragment of a masqueraded IPv6 datagram, for its later fragments (both
/// directions), as `FRAGS`. Added after layout version 1.
pub const MAP_FRAGS6: &str = "FRAGS6";
/// `PUBLISHED6: HashMap<Published6Key, u32>`: the container ports that
/// endpoints with an IPv6 address publish (value unused, 1), whose replies
/// go to the kernel, which translates the v6 published ports. Added after
/// layout version 1.
pub const MAP_PUBLISHED6: &str = "PUBLISHED6";
/// `NET_STATS: PerCpuArray<NetStats>` indexed by network id: per-network
/// counters (see [`NetStats`](crate::NetStats)).
pub const MAP_NET_STATS: &str = "NET_STATS";
/// `CT_CONFIG: Array<CtConfig>` with one element (index 0), filled by the
/// agent; zero fields mean the built-in defaults.
pub const MAP_CT_CONFIG: &str = "CT_CONFIG";

/// `PORTS: HashMap<PortKey, PortTarget>`: published ports (see
/// [`crate::ports`]). A map added after layout version 1: a datapath
/// pinned by an older build has none yet, and the load creates it (the pin
/// reuse path treats a map without a pin as new, see
/// `datapath-user/src/datapath/pins.rs`).
pub const MAP_PORTS: &str = "PORTS";

/// `ENDPOINTS6: HashMap<u32 ifindex, Endpoint6>`: the IPv6 address of each
/// endpoint of a dual-stack network (see [`Endpoint6`](crate::Endpoint6)).
/// Added after layout version 1 like `PORTS`: created at the next start of
/// a datapath pinned by an older build.
pub const MAP_ENDPOINTS6: &str = "ENDPOINTS6";

/// `ENDPOINTS6_BY_IP: HashMap<[u8; 16] ipv6 (wire order), EndpointInfo>`:
/// the endpoint of an IPv6 address (where does this IPv6 packet go?),
/// filled with `ENDPOINTS6`. Added after layout version 1.
pub const MAP_ENDPOINTS6_BY_IP: &str = "ENDPOINTS6_BY_IP";
/// `NETWORKS6: Array<Network6Info>` indexed by network id, like
/// `NETWORKS`: the IPv6 half of dual-stack networks (see
/// [`Network6Info`](crate::Network6Info)). Added after layout version 1.
pub const MAP_NETWORKS6: &str = "NETWORKS6";
/// `SUBNETS6: LpmTrie<[u8; 16] ipv6 (wire order), u32 network_id>`: every
/// local dual-stack network's IPv6 subnet. Added after layout version 1.
pub const MAP_SUBNETS6: &str = "SUBNETS6";

/// Capacity of the endpoint maps.
pub const MAX_ENDPOINTS: u32 = 4096;
/// Capacity of `NETWORKS` and `SUBNETS`.
pub const MAX_NETWORKS: u32 = 256;
/// Capacity of `PORTS` (one entry per protocol, node address and host
/// port published).
pub const MAX_PORTS: u32 = 65_536;
/// Capacity of `CT` (entries; a masqueraded flow takes two).
pub const CT_MAX_ENTRIES: u32 = 131_072;
/// Capacity of `FRAGS` (datagrams in flight in fragments; LRU: the oldest
/// are forgotten first, and an entry is only needed while its datagram's
/// fragments pass, microseconds apart).
pub const FRAG_MAX_ENTRIES: u32 = 8192;
