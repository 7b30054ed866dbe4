//! What the agent answers: the views of networks, endpoints, commands,
//! counters, flows and traces. Wire types only: the agent converts its
//! internal types into these.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ports::Publish;
use crate::state::CniMark;

/// What `network inspect` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub datapath: String,
    pub created: String,
    pub internal: bool,
    pub options: NetworkOptionsView,
    pub endpoints: Vec<NetworkEndpointView>,
    /// `docker` for the networks of Docker's remote driver (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Dual stack (Docker's `EnableIPv6`); left out when false, so an
    /// IPv4-only network's view is as it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_ipv6: bool,
    /// The IPv6 subnet and gateway of a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOptionsView {
    pub icc: bool,
    pub masquerade: bool,
    pub uplink: Option<String>,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEndpointView {
    pub name: String,
    pub id: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// Its interface in its namespace on this network (`eth0`, `eth1`, ...).
    #[serde(default)]
    pub ifname: String,
    /// Its names on this network besides its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// One network an endpoint is on besides its first (`network connect`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub network: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len6: Option<u8>,
}

/// What `endpoint inspect` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    pub id: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub gateway: Ipv4Addr,
    /// Name of the namespace under /run/netns when the agent made it.
    pub netns: Option<String>,
    pub netns_path: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The eBPF program on the host veth's ingress (none on the kernel datapath).
    #[serde(default)]
    pub tc: Option<TcView>,
    pub trace: bool,
    pub container_id: Option<String>,
    /// Made through CNI (keyed by `container_id` + `ifname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniMark>,
    pub created: String,
    /// `docker` for the endpoints of Docker's remote driver (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The container end was left in the node namespace for its owner to
    /// move (absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// Published ports (`-p`).
    #[serde(default)]
    pub ports: Vec<Publish>,
    /// Its IPv6 address, prefix length and gateway on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len6: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// More names on its first network (`--alias`, embedded DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its embedded DNS's upstreams (`--dns`), instead of the node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    /// The networks it is on besides its first, in the order connected.
    #[serde(default)]
    pub attachments: Vec<AttachmentView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcView {
    pub program: String,
    pub hook: String,
    /// For `bpftool prog show tag T`.
    pub prog_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub counters: Vec<CounterView>,
    /// Connection-tracking table pressure, from the last garbage collection.
    #[serde(default)]
    pub conntrack: Option<ConntrackPressure>,
    /// What the agent's start found of the datapath that ran before it.
    #[serde(default)]
    pub start: Option<StartView>,
    /// Per-network counters of the eBPF networks.
    #[serde(default)]
    pub networks: Vec<NetworkStatsView>,
    /// The embedded DNS's counters (since the agent started).
    #[serde(default)]
    pub dns: crate::dns::DnsStats,
}

/// One eBPF network's counters (since the network was created).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatsView {
    pub network: String,
    /// Masqueraded flows its endpoints started.
    pub nat_flows: u64,
    /// Packets of new flows refused for want of a free NAT port (SNAT
    /// exhaustion), each answered with an ICMP error.
    pub nat_no_port_packets: u64,
    pub nat_no_port_bytes: u64,
}

/// What a starting agent did with the pinned datapath a previous agent left
/// running (maps by name; a migrated map with the reason).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartView {
    pub maps_reused: Vec<String>,
    pub maps_created: Vec<String>,
    pub maps_migrated: Vec<String>,
    /// Connection-tracking entries found in the reused table, or copied
    /// into the new one.
    pub conntrack_entries_kept: usize,
    /// Program attachments left alone (same program), replaced in place
    /// (another program), or made anew.
    pub attachments_kept: usize,
    pub attachments_replaced: usize,
    pub attachments_created: usize,
    /// Endpoints whose create a crash had interrupted.
    pub endpoints_rolled_back: usize,
    /// Map entries of endpoints and networks that no longer exist.
    pub stale_entries_removed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterView {
    pub reason: String,
    pub code: u32,
    pub drop: bool,
    /// An event counter (e.g. flows created), not a packet verdict.
    #[serde(default)]
    pub event: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// One streamed trace record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    pub endpoint: String,
    pub line: String,
}

/// A tracked flow, attributed to its endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub endpoint: Option<String>,
    #[serde(flatten)]
    pub flow: ConntrackFlow,
}

/// One tracked flow (a masqueraded connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackFlow {
    /// "tcp", "udp", "icmp" (or the protocol number).
    pub protocol: String,
    /// As sent by the endpoint.
    pub original: FlowTuple,
    /// `None` when the flow is not source-translated.
    pub translated: Option<FlowSource>,
    /// A published port's flow: the endpoint address and container port the
    /// destination is translated to (`src`/`sport` hold them).
    #[serde(default)]
    pub translated_dst: Option<FlowSource>,
    /// "syn-sent", "established", "closing", "closed" (TCP); "new" (no reply
    /// yet), "established" (UDP, ICMP).
    pub state: String,
    /// Both directions.
    pub packets: u64,
    pub bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Seconds until the entry expires (0 when expired, awaiting GC).
    pub remaining_s: u64,
    /// Seconds since the flow was created.
    pub age_s: u64,
    /// ifindex of the endpoint's host-side veth.
    pub ifindex: u32,
}

/// Addresses and ports of a flow (ICMP echo: the identifier as `sport`,
/// `dport` 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// The translated source of a masqueraded flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSource {
    pub src: IpAddr,
    pub sport: u16,
}

/// Connection-tracking table pressure, from the last garbage collection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackPressure {
    /// Entries looked at.
    pub scanned: usize,
    /// Entries removed (an expired flow counts its two entries).
    pub removed: usize,
    /// Entries left.
    pub live: usize,
    /// Capacity of the table (entries).
    pub capacity: u32,
}
