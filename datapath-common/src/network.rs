//! Local networks (`NETWORKS`, `SUBNETS`; `NETWORKS6`, `SUBNETS6` for the
//! IPv6 half of a dual-stack network).

/// `NetworkInfo::flags`: source-NAT traffic leaving the node.
pub const NET_F_MASQUERADE: u32 = 1 << 0;
/// Internal network: nothing leaves the subnet (the gateway stays reachable).
pub const NET_F_INTERNAL: u32 = 1 << 1;
/// icc=false: endpoints of the network may not talk to each other.
pub const NET_F_NO_ICC: u32 = 1 << 2;
/// The `NETWORKS` slot holds a network (set by `Bpf::set_network`).
pub const NET_F_PRESENT: u32 = 1 << 31;

/// One local network, as the datapath needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Subnet address and mask, wire order.
    pub subnet: u32,
    pub mask: u32,
    /// Gateway (bridge) address, wire order.
    pub gateway: u32,
    /// Masquerade address (the uplink's primary IPv4), wire order; 0 when
    /// the uplink has none yet (then traffic out is passed to the bridge).
    pub masq_addr: u32,
    /// ifindex of the uplink in the node namespace; 0 when unknown.
    pub uplink_ifindex: u32,
    /// `NET_F_*` bits.
    pub flags: u32,
    /// SNAT source port range, inclusive, host order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
}

/// The IPv6 half of a dual-stack network, in `NETWORKS6` at the same
/// index (the network id) as its [`NetworkInfo`] in `NETWORKS` (a map of
/// its own, so the layout of `NETWORKS` stays as it is). The policy bits
/// (`NET_F_INTERNAL`, `NET_F_NO_ICC`) are the network's, as in
/// `NETWORKS`; `NET_F_MASQUERADE` is set when IPv6 leaving the node is
/// translated to [`Network6Info::masq_addr`] (the uplink has a global IPv6
/// address and the network masquerades). Addresses are in wire order (the
/// bytes as on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Network6Info {
    /// The subnet's network address (its `prefix_len` first bits).
    pub subnet: [u8; 16],
    /// Gateway (bridge) IPv6 address.
    pub gateway: [u8; 16],
    /// Masquerade address (the uplink's first global IPv6 address); zero
    /// when the uplink has none (then IPv6 out is handed to the kernel).
    pub masq_addr: [u8; 16],
    /// Length of the subnet's prefix.
    pub prefix_len: u32,
    /// ifindex of the uplink in the node namespace; 0 when unknown.
    pub uplink_ifindex: u32,
    /// `NET_F_*` bits (`NET_F_PRESENT` when the slot is in use).
    pub flags: u32,
    pub _pad: u32,
}

/// Per-network counters (`NET_STATS`, one per-CPU slot per network id; the
/// agent sums the CPUs and clears a slot when its network is created).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Packets of the network's endpoints that the masquerade refused for
    /// want of a free NAT port (each answered with an ICMP error).
    pub nat_no_port: crate::Counter,
    /// New masqueraded flows of the network's endpoints.
    pub nat_flows: u64,
    pub _reserved: [u64; 3],
}
