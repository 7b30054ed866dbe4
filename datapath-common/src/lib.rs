//! Types shared between the eBPF programs (`datapath-ebpf`) and the agent
//! (`datapath-user`). Everything here is `#[repr(C)]`, `Copy` and `no_std` so
//! both sides agree on the byte layout of every map key and value.
//!
//! Conventions:
//! * IPv4 addresses are stored exactly as they appear on the wire (network byte
//!   order) inside a `u32`: `u32::from_ne_bytes(addr.octets())`. The eBPF side
//!   can then compare them with `iphdr.saddr` without swapping.
//! * Reason codes (`reason::*`) key the per-CPU counter array `STATS`. Codes
//!   below [`reason::DROP_BASE`] are forwarding decisions, codes at or above it
//!   are drops.
#![no_std]

/// Name of the TC program attached to the ingress of each endpoint's
/// host-side veth (traffic *from* the endpoint).
pub const PROG_FROM_ENDPOINT: &str = "dp_from_ep";

/// Map names, as declared in the eBPF object.
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_ENDPOINTS_BY_IP: &str = "ENDPOINTS_BY_IP";
pub const MAP_STATS: &str = "STATS";

/// TC program on the ingress of a network's uplink (reverse NAT of replies).
pub const PROG_FROM_UPLINK: &str = "dp_from_uplink";

/// `NETWORKS: HashMap<u32 network_id, NetworkInfo>`, filled by the agent.
pub const MAP_NETWORKS: &str = "NETWORKS";
/// `SUBNETS: LpmTrie<u32 ipv4 (wire order), u32 network_id>`: every local
/// network's subnet, so the datapath can tell "another local network" from
/// "beyond the node".
pub const MAP_SUBNETS: &str = "SUBNETS";
pub const MAX_NETWORKS: u32 = 256;

/// `NetworkInfo::flags`: source-NAT traffic leaving the node.
pub const NET_F_MASQUERADE: u32 = 1 << 0;
/// Internal network: nothing leaves the subnet (the gateway stays reachable).
pub const NET_F_INTERNAL: u32 = 1 << 1;
/// icc=false: endpoints of the network may not talk to each other.
pub const NET_F_NO_ICC: u32 = 1 << 2;

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

/// Capacity of the endpoint maps.
pub const MAX_ENDPOINTS: u32 = 4096;

/// `EndpointInfo::flags`: emit an aya-log trace line for every packet from or
/// to this endpoint. When clear, no log call is made at all.
pub const EP_F_TRACE: u32 = 1 << 0;

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

/// A per-CPU packet/byte counter, one slot per reason code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Reason codes for every decision the datapath takes. Shared with the agent
/// (`datapath stats`) and the trace output.
pub mod reason {
    /// Unicast IPv4 for another endpoint of the same network, delivered
    /// straight into its namespace with `bpf_redirect_peer`.
    pub const FWD_REDIRECT_PEER: u32 = 1;
    /// Broadcast or multicast frame, handed to the bridge.
    pub const PASS_BROADCAST: u32 = 2;
    /// ARP, handed to the bridge.
    pub const PASS_ARP: u32 = 3;
    /// Unicast IPv4 not for a local endpoint of the same network (gateway,
    /// host, other networks, beyond the node): handed to the bridge.
    pub const PASS_TO_BRIDGE: u32 = 4;
    /// Neither IPv4 nor ARP (IPv6, LLDP, ...): handed to the bridge.
    pub const PASS_OTHER_PROTO: u32 = 5;
    /// The program ran on an interface that is not in the endpoint table
    /// (e.g. during setup or teardown): left to the kernel.
    pub const PASS_UNKNOWN_IFACE: u32 = 6;

    /// First drop code. Everything `>= DROP_BASE` is a drop.
    pub const DROP_BASE: u32 = 32;
    /// Frame shorter than the headers it claims (Ethernet, ARP or IPv4).
    pub const DROP_TRUNCATED: u32 = 32;
    /// IPv4 header with a bad version, header length or total length.
    pub const DROP_BAD_IPV4_HEADER: u32 = 33;
    /// Source MAC is not the endpoint's own.
    pub const DROP_SPOOFED_MAC: u32 = 34;
    /// Source IPv4 is not the endpoint's own.
    pub const DROP_SPOOFED_IP: u32 = 35;
    /// ARP sender address is not the endpoint's own.
    pub const DROP_SPOOFED_ARP: u32 = 36;
    /// `bpf_redirect_peer` refused the packet.
    pub const DROP_REDIRECT_FAILED: u32 = 37;

    /// Destination is in another local network (isolation between networks,
    /// gateway addresses included).
    pub const DROP_POLICY_ISOLATION: u32 = 38;
    /// Endpoint to endpoint inside a network with icc=false.
    pub const DROP_POLICY_ICC: u32 = 39;
    /// Leaving an internal network.
    pub const DROP_POLICY_INTERNAL: u32 = 40;

    /// Size of the `STATS` array: every code must be below this.
    pub const MAX: u32 = 64;

    /// Every defined code, in display order.
    pub const ALL: [u32; 15] = [
        FWD_REDIRECT_PEER,
        PASS_BROADCAST,
        PASS_ARP,
        PASS_TO_BRIDGE,
        PASS_OTHER_PROTO,
        PASS_UNKNOWN_IFACE,
        DROP_TRUNCATED,
        DROP_BAD_IPV4_HEADER,
        DROP_SPOOFED_MAC,
        DROP_SPOOFED_IP,
        DROP_SPOOFED_ARP,
        DROP_REDIRECT_FAILED,
        DROP_POLICY_ISOLATION,
        DROP_POLICY_ICC,
        DROP_POLICY_INTERNAL,
    ];

    /// Whether `code` is a drop.
    pub const fn is_drop(code: u32) -> bool {
        code >= DROP_BASE
    }

    /// Stable, machine-friendly name of a code (used in `stats`, traces and
    /// JSON output).
    pub const fn name(code: u32) -> &'static str {
        match code {
            FWD_REDIRECT_PEER => "redirect-peer",
            PASS_BROADCAST => "pass-broadcast",
            PASS_ARP => "pass-arp",
            PASS_TO_BRIDGE => "pass-to-bridge",
            PASS_OTHER_PROTO => "pass-other-proto",
            PASS_UNKNOWN_IFACE => "pass-unknown-iface",
            DROP_TRUNCATED => "drop-truncated",
            DROP_BAD_IPV4_HEADER => "drop-bad-ipv4-header",
            DROP_SPOOFED_MAC => "drop-spoofed-mac",
            DROP_SPOOFED_IP => "drop-spoofed-ip",
            DROP_SPOOFED_ARP => "drop-spoofed-arp",
            DROP_REDIRECT_FAILED => "drop-redirect-failed",
            DROP_POLICY_ISOLATION => "drop-policy-isolation",
            DROP_POLICY_ICC => "drop-policy-icc",
            DROP_POLICY_INTERNAL => "drop-policy-internal",
            _ => "unknown",
        }
    }
}

/// The key representation of an IPv4 address in the maps.
#[inline(always)]
pub const fn ipv4_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays, no padding
    // holes that matter and every bit pattern valid.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::NetworkInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(core::mem::size_of::<EndpointInfo>(), 28);
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::size_of::<NetworkInfo>(), 28);
    }

    #[test]
    fn every_code_is_named_in_range_and_unique() {
        for (i, c) in reason::ALL.iter().enumerate() {
            assert!(*c < reason::MAX);
            assert_ne!(reason::name(*c), "unknown");
            for d in &reason::ALL[i + 1..] {
                assert_ne!(c, d);
                assert_ne!(reason::name(*c), reason::name(*d));
            }
        }
        assert!(reason::is_drop(reason::DROP_SPOOFED_IP));
        assert!(!reason::is_drop(reason::FWD_REDIRECT_PEER));
    }

    #[test]
    fn ipv4_key_is_wire_order() {
        let k = ipv4_key([10, 10, 0, 2]);
        assert_eq!(k.to_ne_bytes(), [10, 10, 0, 2]);
    }
}
