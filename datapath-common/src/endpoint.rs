//! Local endpoints (`ENDPOINTS`, `ENDPOINTS_BY_IP`, `ENDPOINTS6`).

/// `EndpointInfo::flags`: emit an aya-log trace line for every packet from or
/// to this endpoint. When clear, no log call is made at all.
pub const EP_F_TRACE: u32 = 1 << 0;
/// `EndpointInfo::flags`: TCP segments this endpoint sends to a destination
/// beyond the node that belong to no eBPF flow (not a SYN, no conntrack
/// entry) go to the kernel instead of being dropped: they are the replies of
/// connections the kernel's netfilter DNATed to it (ports published by a
/// chained CNI `portmap` plugin), which the kernel's conntrack translates back.
pub const EP_F_KERNEL_FLOWS: u32 = 1 << 1;

/// One local endpoint, as the datapath needs it.
///
/// Stored twice: in `ENDPOINTS` keyed by the host-side veth ifindex (who sent
/// this frame?) and in `ENDPOINTS_BY_IP` keyed by the IPv4 address (where does
/// this packet go?).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// ifindex of the host-side veth (the `bpf_redirect_peer` target).
    pub ifindex: u32,
    /// The endpoint's IPv4 address, network byte order.
    pub ipv4: u32,
    /// MAC address of the endpoint's interface (inside its namespace).
    pub mac: [u8; 6],
    /// MAC address of the network's gateway (the bridge).
    pub gw_mac: [u8; 6],
    /// Numeric id of the network; endpoints are only forwarded to in-kernel
    /// when both ends share it.
    pub network_id: u32,
    /// `EP_F_*` bits.
    pub flags: u32,
}

/// The IPv6 half of an endpoint of a dual-stack network, in `ENDPOINTS6`
/// keyed by the ifindex of its host-side veth (a map of its own, so the
/// layout of `ENDPOINTS` stays as it is). An endpoint without an entry
/// sends no IPv6 (`drop-ethertype`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint6 {
    /// Its IPv6 address, in wire order (the bytes as on the wire).
    pub ip6: [u8; 16],
}
