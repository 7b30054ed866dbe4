//! Every map of the object, and the small typed accessors through which the
//! rest of the crate reads and writes them. This is the only module that
//! turns map value pointers into references; each accessor says why that is
//! sound.
//!
//! Map values returned by `bpf_map_lookup_elem` stay valid until the program
//! returns (hash map values are freed after an RCU grace period, even when
//! the entry is deleted meanwhile), so the references handed out here live
//! for the program run (`'a` is chosen by the caller). Per-CPU values are
//! only ever touched by this CPU while the program runs. Values of shared
//! maps (`CT`) may be written by another CPU at the same time: their fields
//! are plain integers, and such a race only loses a counter increment or a
//! state update, as it always did.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    macros::map,
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use datapath_common::{
    reason, Counter, CtConfig, CtEntry, CtEntry6, CtKey, CtKey6, Endpoint6, EndpointInfo, FragKey, FragKey6, FragPorts,
    NetStats, Network6Info, NetworkInfo, PortKey, PortTarget, Published6Key, CT_MAX_ENTRIES, FRAG_MAX_ENTRIES,
    MAX_ENDPOINTS, MAX_NETWORKS, MAX_PORTS, NET_F_PRESENT,
};

/// Endpoints keyed by the ifindex of their host-side veth.
#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Endpoints keyed by their IPv4 address (network byte order, see
/// `datapath_common::ipv4_key`).
#[map]
static ENDPOINTS_BY_IP: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// The IPv6 address of each endpoint of a dual-stack network, keyed by the
/// ifindex of its host-side veth (see `datapath_common::Endpoint6`).
#[map]
static ENDPOINTS6: HashMap<u32, Endpoint6> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Endpoints of dual-stack networks keyed by their IPv6 address (wire
/// order).
#[map]
static ENDPOINTS6_BY_IP: HashMap<[u8; 16], EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// The IPv6 half of dual-stack networks, indexed by network id like
/// `NETWORKS`.
#[map]
static NETWORKS6: Array<Network6Info> = Array::with_max_entries(MAX_NETWORKS, 0);

/// Every local dual-stack network's IPv6 subnet (key data: the address in
/// wire order) -> network id.
#[map]
static SUBNETS6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_NETWORKS, 0);

/// Local networks indexed by their numeric id (an array: the lookup is
/// inlined by the verifier, no hashing on the per-packet path); slots
/// without `NET_F_PRESENT` are free.
#[map]
static NETWORKS: Array<NetworkInfo> = Array::with_max_entries(MAX_NETWORKS, 0);

/// Every local network's subnet (key data: IPv4 in wire order) -> network id.
#[map]
static SUBNETS: LpmTrie<u32, u32> = LpmTrie::with_max_entries(MAX_NETWORKS, 0);

/// Per-CPU packet/byte counters indexed by reason code.
#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(reason::MAX, 0);

/// The connection tracker (see `datapath_common::ct`).
#[map]
static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// The IPv6 connection tracker (see `datapath_common::CtKey6`), as `CT`.
#[map]
static CT6: LruHashMap<CtKey6, CtEntry6> = LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// The ports of the first fragment of masqueraded IPv6 datagrams, for
/// their later fragments (see `datapath_common::FragKey6`).
#[map]
static FRAGS6: LruHashMap<FragKey6, FragPorts> = LruHashMap::with_max_entries(FRAG_MAX_ENTRIES, 0);

/// Container ports published by endpoints with an IPv6 address (see
/// `datapath_common::Published6Key`), filled by the agent.
#[map]
static PUBLISHED6: HashMap<Published6Key, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

/// The ports of the first fragment of masqueraded datagrams, for their
/// later fragments (see `datapath_common::FragKey`).
#[map]
static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(FRAG_MAX_ENTRIES, 0);

/// Per-CPU per-network counters indexed by network id.
#[map]
static NET_STATS: PerCpuArray<NetStats> = PerCpuArray::with_max_entries(MAX_NETWORKS, 0);

/// Lifetimes, filled by the agent (index 0); zero fields mean the defaults.
#[map]
static CT_CONFIG: Array<CtConfig> = Array::with_max_entries(1, 0);

/// Published ports (see `datapath_common::ports`), filled by the agent.
#[map]
static PORTS: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Per-CPU scratch space: the 512-byte stack is shared by the whole call
/// chain, so the big structures live here.
#[repr(C)]
pub struct Scratch {
    /// `bpf_fib_lookup` parameters and result (`nat::egress`).
    pub fib: FibParams,
    /// A `CT` entry under construction (`conntrack::create`).
    pub entry: CtEntry,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// How a network's IPv6 is masqueraded (`nat6`, `conntrack6`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Snat6 {
    /// The masquerade address (the uplink's global IPv6), wire order.
    pub addr: [u8; 16],
    /// The uplink's ifindex, 0 when unknown.
    pub uplink_ifindex: u32,
    /// The NAT port range (the network's IPv4 range), host order.
    pub port_min: u16,
    pub port_max: u16,
}

/// A packet for `nat6::egress`, as `ipv6::from_endpoint` found it (see
/// `ipv6::Pkt6`), handed over through `SCRATCH6` rather than the stack:
/// the verifier then checks `egress` once, not once per way the extension
/// header walk ended.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Req6 {
    pub l4_off: u32,
    pub end: u32,
    pub network_id: u32,
    pub proto: u8,
    /// 1: a fragment.
    pub fragment: u8,
    pub _pad: [u8; 2],
}

/// What `nat6::egress` found for a packet that starts a new flow, for
/// `nat6::egress_new` (called by `dp_from_ep` after it, so the port
/// search's frame is not stacked on `egress`'s).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending6 {
    /// Offsets of the L4 checksum and of the source port (or echo id).
    pub csum_off: u32,
    pub port_off: u32,
    /// The FIB lookup's result (its parameters are in `SCRATCH`).
    pub rc: u32,
    /// A port to try first (wire order, 0: none).
    pub hint: u16,
    /// The hop limit as the packet came.
    pub hop: u8,
    pub tcp_flags: u8,
}

/// Per-CPU scratch space of the IPv6 masquerade (`nat6`, `conntrack6`):
/// a map of its own, so `SCRATCH` keeps its layout.
#[repr(C)]
pub struct Scratch6 {
    /// The packet handed to `nat6::egress`.
    pub req: Req6,
    /// A new flow `nat6::egress` hands to `nat6::egress_new`.
    pub pending: Pending6,
    /// A `CT6` entry under construction (`conntrack6::create`).
    pub entry: CtEntry6,
    /// The tuple of the packet `nat6` translates (`egress`: as sent;
    /// `from_uplink`: the reply tuple).
    pub key: CtKey6,
    /// `from_uplink`: the forward tuple of its flow; `conntrack6::create`:
    /// the reply tuple being tried.
    pub key2: CtKey6,
    /// `conntrack6::create`: the forward tuple of a reply tuple taken.
    pub key3: CtKey6,
    /// The datagram of a fragment (`nat6`); `from_uplink` sets its `id`
    /// for `reply`.
    pub frag: FragKey6,
    /// The masquerade of its network.
    pub snat: Snat6,
}

#[map]
static SCRATCH6: PerCpuArray<Scratch6> = PerCpuArray::with_max_entries(1, 0);

/// What `trace::emit` shows besides the frame, handed over through this
/// per-CPU slot rather than as arguments: the verifier then sees one
/// unknown value instead of a constant per call path, and checks the large
/// log code once instead of once per reason code.
#[repr(C)]
pub struct TraceArgs {
    pub code: u32,
    pub out_if: u32,
    pub was: u64,
}

#[map]
static TRACE_ARGS: PerCpuArray<TraceArgs> = PerCpuArray::with_max_entries(1, 0);

/// The endpoint whose host-side veth is `ifindex`.
#[inline(always)]
pub fn endpoint_by_ifindex(ifindex: u32) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out at once.
    unsafe { ENDPOINTS.get(ifindex) }.copied()
}

/// The endpoint whose host-side veth is `ifindex`, in place (no copy on
/// the caller's stack: `dp_from_ep` keeps it for the whole run).
#[inline(always)]
pub fn endpoint_ref<'a>(ifindex: u32) -> Option<&'a EndpointInfo> {
    // SAFETY: a map value, valid for the program run (hash map values are
    // freed after an RCU grace period, see the module documentation); only
    // read.
    unsafe { ENDPOINTS.get(ifindex) }
}

/// The IPv6 half of the endpoint whose host-side veth is `ifindex`.
#[inline(always)]
pub fn endpoint6(ifindex: u32) -> Option<Endpoint6> {
    // SAFETY: the value is copied out at once.
    unsafe { ENDPOINTS6.get(ifindex) }.copied()
}

/// The endpoint whose IPv6 address is `addr` (wire order).
#[inline(always)]
pub fn endpoint_by_ip6(addr: &[u8; 16]) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out at once.
    unsafe { ENDPOINTS6_BY_IP.get(addr) }.copied()
}

/// The IPv6 half of network `id`, when it is dual stack.
#[inline(always)]
pub fn network6(id: u32) -> Option<Network6Info> {
    NETWORKS6.get(id).copied().filter(|n| n.flags & NET_F_PRESENT != 0)
}

/// The id of the local network whose IPv6 subnet holds `addr` (wire
/// order).
#[inline(always)]
pub fn subnet6_of(addr: [u8; 16]) -> Option<u32> {
    SUBNETS6.get(LpmKey::new(128, addr)).copied()
}

/// The endpoint whose address is `addr` (wire order).
#[inline(always)]
pub fn endpoint_by_ip(addr: u32) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out at once.
    unsafe { ENDPOINTS_BY_IP.get(addr) }.copied()
}

/// Where the published port `key` leads, if it is published.
#[inline(always)]
pub fn port_target(key: &PortKey) -> Option<PortTarget> {
    // SAFETY: the value is copied out at once.
    unsafe { PORTS.get(key) }.copied()
}

/// The network of id `id`, when its slot is in use.
#[inline(always)]
pub fn network(id: u32) -> Option<NetworkInfo> {
    NETWORKS.get(id).copied().filter(|n| n.flags & NET_F_PRESENT != 0)
}

/// The id of the local network whose subnet holds `addr` (wire order).
#[inline(always)]
pub fn subnet_of(addr: u32) -> Option<u32> {
    SUBNETS.get(LpmKey::new(32, addr)).copied()
}

/// The conntrack lifetimes (the defaults when the agent set none).
#[inline(always)]
pub fn ct_config() -> CtConfig {
    CT_CONFIG.get(0).copied().unwrap_or_default()
}

/// Adds a packet of `len` bytes to the counter of `code`.
#[inline(always)]
pub fn stats_add(code: u32, len: u32) {
    if let Some(c) = STATS.get_ptr_mut(code) {
        // SAFETY: this CPU's slot, valid for the program run; nothing else
        // runs on this CPU meanwhile.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

/// This CPU's counters of network `id` (`None`: out of range).
#[inline(always)]
pub fn net_stats<'a>(id: u32) -> Option<&'a mut NetStats> {
    // SAFETY: this CPU's slot, valid for the program run; nothing else runs
    // on this CPU meanwhile.
    NET_STATS.get_ptr_mut(id).map(|s| unsafe { &mut *s })
}

/// Remembers the ports of a datagram's first fragment (best effort: a
/// failed insert only loses its later fragments, which are then counted).
#[inline(always)]
pub fn frag_insert(key: &FragKey, ports: &FragPorts) {
    let _ = FRAGS.insert(key, ports, 0);
}

/// The ports of the first fragment of the datagram `key`.
#[inline(always)]
pub fn frag_get(key: &FragKey) -> Option<FragPorts> {
    // SAFETY: the value is copied out at once.
    unsafe { FRAGS.get(key) }.copied()
}

/// The `CT` entry at `key`, in place.
///
/// Callers never hold two references from lookups of the same key (entries
/// of different keys never overlap).
#[inline(always)]
pub fn ct_get<'a>(key: &CtKey) -> Option<&'a mut CtEntry> {
    // SAFETY: a map value, valid for the program run (see the module
    // documentation for concurrent writers on other CPUs).
    CT.get_ptr_mut(key).map(|e| unsafe { &mut *e })
}

/// Inserts `entry` at `key` (`flags`: `BPF_NOEXIST`, ...). `Err`: the
/// helper's negative errno.
#[inline(always)]
pub fn ct_insert(key: &CtKey, entry: &CtEntry, flags: u64) -> Result<(), i32> {
    CT.insert(key, entry, flags)
}

/// Deletes the `CT` entry at `key` (nothing when there is none).
#[inline(always)]
pub fn ct_remove(key: &CtKey) {
    let _ = CT.remove(key);
}

/// This CPU's `bpf_fib_lookup` scratch buffer.
#[inline(always)]
pub fn scratch_fib<'a>() -> Option<&'a mut FibParams> {
    // SAFETY: this CPU's slot, valid for the program run; only `nat::egress`
    // (one call per packet) uses this field, disjoint from `entry`, and the
    // pointer to it is taken without a reference to the whole slot.
    SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).fib) })
}

/// This CPU's buffer for a `CT` entry under construction.
#[inline(always)]
pub fn scratch_entry<'a>() -> Option<&'a mut CtEntry> {
    // SAFETY: as `scratch_fib`; only `conntrack::create` uses this field.
    SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).entry) })
}

/// The `CT6` entry at `key`, in place (as [`ct_get`]).
#[inline(always)]
pub fn ct6_get<'a>(key: &CtKey6) -> Option<&'a mut CtEntry6> {
    // SAFETY: as `ct_get`.
    CT6.get_ptr_mut(key).map(|e| unsafe { &mut *e })
}

/// Inserts `entry` at `key` in `CT6` (as [`ct_insert`]).
#[inline(always)]
pub fn ct6_insert(key: &CtKey6, entry: &CtEntry6, flags: u64) -> Result<(), i32> {
    CT6.insert(key, entry, flags)
}

/// Deletes the `CT6` entry at `key`.
#[inline(always)]
pub fn ct6_remove(key: &CtKey6) {
    let _ = CT6.remove(key);
}

/// Whether the container port `key` is published (its replies are the
/// kernel's).
#[inline(always)]
pub fn published6(key: &Published6Key) -> bool {
    // SAFETY: only whether there is a value.
    unsafe { PUBLISHED6.get(key) }.is_some()
}

/// This CPU's buffer for a `CT6` entry under construction.
#[inline(always)]
pub fn scratch_entry6<'a>() -> Option<&'a mut CtEntry6> {
    // SAFETY: this CPU's slot, valid for the program run; only
    // `conntrack6::create` uses it.
    SCRATCH6.get_ptr_mut(0).map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).entry) })
}

/// This CPU's tuple and masquerade of the packet `nat6::egress`
/// translates.
#[inline(always)]
pub fn scratch6_flow<'a>() -> Option<(&'a mut CtKey6, &'a mut Snat6)> {
    // SAFETY: as `scratch_entry6`; only `nat6::egress` uses these fields,
    // disjoint from `entry`.
    SCRATCH6
        .get_ptr_mut(0)
        .map(|s| unsafe { (&mut *core::ptr::addr_of_mut!((*s).key), &mut *core::ptr::addr_of_mut!((*s).snat)) })
}

/// This CPU's slot for the packet handed to `nat6::egress`.
#[inline(always)]
pub fn scratch6_req<'a>() -> Option<&'a mut Req6> {
    // SAFETY: as `scratch_entry6`; written by `dp_from_ep`, read by
    // `nat6::egress` in the same run.
    SCRATCH6.get_ptr_mut(0).map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).req) })
}

/// This CPU's fragment key (`nat6`).
#[inline(always)]
pub fn scratch6_frag<'a>() -> Option<&'a mut FragKey6> {
    // SAFETY: as `scratch_entry6`; only `nat6` uses it, one step at a time.
    SCRATCH6.get_ptr_mut(0).map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).frag) })
}

/// Remembers the ports of an IPv6 datagram's first fragment (best effort,
/// as [`frag_insert`]).
#[inline(always)]
pub fn frag6_insert(key: &FragKey6, ports: &FragPorts) {
    let _ = FRAGS6.insert(key, ports, 0);
}

/// The ports of the first fragment of the IPv6 datagram `key`.
#[inline(always)]
pub fn frag6_get(key: &FragKey6) -> Option<FragPorts> {
    // SAFETY: the value is copied out at once.
    unsafe { FRAGS6.get(key) }.copied()
}

/// This CPU's slot for a new flow (`nat6::egress` -> `egress_new`).
#[inline(always)]
pub fn scratch6_pending<'a>() -> Option<&'a mut Pending6> {
    // SAFETY: as `scratch_entry6`; written by `nat6::egress`, read by
    // `nat6::egress_new` in the same run.
    SCRATCH6.get_ptr_mut(0).map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).pending) })
}

/// This CPU's reply tuple and forward tuple for `nat6::from_uplink`.
#[inline(always)]
pub fn scratch6_keys<'a>() -> Option<(&'a mut CtKey6, &'a mut CtKey6)> {
    // SAFETY: as `scratch6_flow` (one program run uses them at a time).
    SCRATCH6
        .get_ptr_mut(0)
        .map(|s| unsafe { (&mut *core::ptr::addr_of_mut!((*s).key), &mut *core::ptr::addr_of_mut!((*s).key2)) })
}

/// This CPU's tuples for the port search of `conntrack6::create` (a
/// reply tuple, the forward tuple of the flow holding it).
#[inline(always)]
pub fn scratch6_search<'a>() -> Option<(&'a mut CtKey6, &'a mut CtKey6)> {
    // SAFETY: as `scratch6_flow`; `key2` and `key3` are only used by
    // `conntrack6::create` on the way out (`from_uplink` runs in another
    // program run).
    SCRATCH6
        .get_ptr_mut(0)
        .map(|s| unsafe { (&mut *core::ptr::addr_of_mut!((*s).key2), &mut *core::ptr::addr_of_mut!((*s).key3)) })
}

/// The IPv6 half of network `id`, in place (no copy on the stack).
#[inline(always)]
pub fn network6_ref<'a>(id: u32) -> Option<&'a Network6Info> {
    // SAFETY: an array value, valid for the program run; only read.
    NETWORKS6.get_ptr(id).map(|n| unsafe { &*n }).filter(|n| n.flags & NET_F_PRESENT != 0)
}

/// This CPU's trace argument slot.
#[inline(always)]
pub fn trace_args<'a>() -> Option<&'a mut TraceArgs> {
    // SAFETY: this CPU's slot, valid for the program run; `trace::trace`
    // fills it and `trace::emit`, which it calls, reads it.
    TRACE_ARGS.get_ptr_mut(0).map(|a| unsafe { &mut *a })
}
