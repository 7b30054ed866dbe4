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

/// `NETWORKS: Array<NetworkInfo>` indexed by the network id (so ids must be
/// below [`MAX_NETWORKS`]), filled by the agent; a slot is in use when its
/// `flags` have [`NET_F_PRESENT`] (`Bpf::set_network` sets it).
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

// ---------------------------------------------------------------------------
// Connection tracking and SNAT (masquerade)

/// `CT: LruHashMap<CtKey, CtEntry>`: the connection tracker (two entries per
/// masqueraded flow, see [`CtEntry`]).
pub const MAP_CT: &str = "CT";
/// `CT_CONFIG: Array<CtConfig>` with one element (index 0), filled by the
/// agent; zero fields mean the built-in defaults.
pub const MAP_CT_CONFIG: &str = "CT_CONFIG";
/// Capacity of `CT` (entries; a masqueraded flow takes two).
pub const CT_MAX_ENTRIES: u32 = 131_072;
/// SNAT port tries per new flow before `DROP_NAT_NO_PORT`.
pub const NAT_PORT_TRIES: u32 = 32;
/// The first tries only take free ports; tries `NAT_PORT_TAKEOVER_FROM..
/// NAT_PORT_TAKEOVER_UNTIL` also take over the port of a finished flow
/// (`CT_F_DONE`, expired, or an orphaned reply entry), as netfilter does
/// when free ports get scarce; the rest look for free ports again. (Each
/// takeover try costs ~14k verifier instructions, hence not all of them.
/// Ten tries: a 10-port range, as in the tests, is covered whatever the
/// random start.)
pub const NAT_PORT_TAKEOVER_FROM: u32 = 8;
pub const NAT_PORT_TAKEOVER_UNTIL: u32 = 18;
/// A reply entry whose forward entry is missing is left alone for this
/// long after its creation (its flow may be being created on another CPU).
pub const CT_ORPHAN_GRACE_NS: u64 = 1_000_000_000;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of the connection tracker: a 5-tuple exactly as it appears in the
/// packet (addresses and ports in wire order). For ICMP echo the identifier
/// is the port: requests use `sport = id, dport = 0`, replies `sport = 0,
/// dport = id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Always zero (part of the hashed key).
    pub _pad: [u8; 3],
}

/// `CtEntry::flags`: the reverse (reply) entry of a flow. Its key is the
/// reply tuple as it arrives on the uplink (remote -> masq_addr:nat_port);
/// `addr`/`port` hold the endpoint's original address and port. Only the
/// forward entry carries state, lifetime and counters.
pub const CT_F_REVERSE: u8 = 1 << 0;
/// The flow is source-translated (forward entry: `addr`/`port` are the
/// translated source).
pub const CT_F_SNAT: u8 = 1 << 1;
/// A FIN was seen from the endpoint (original direction).
pub const CT_F_TX_FIN: u8 = 1 << 2;
/// A FIN was seen from the remote (reply direction).
pub const CT_F_RX_FIN: u8 = 1 << 3;
/// A reply was seen.
pub const CT_F_SEEN_REPLY: u8 = 1 << 4;
/// TCP: the second FIN came from the remote (reply direction); says which
/// side sends the last ACK.
pub const CT_F_LAST_FIN_RX: u8 = 1 << 5;
/// TCP: the connection is over on both ends: a RST was seen, or both FINs
/// and the ACK of the last one. Its NAT port may be taken over by a new
/// flow before the entry expires (like netfilter's TIME_WAIT/CLOSE
/// eviction), and a new SYN on its original tuple starts it afresh.
pub const CT_F_DONE: u8 = 1 << 6;

/// `CtEntry::state`.
pub const CT_NEW: u8 = 0;
pub const CT_TCP_SYN_SENT: u8 = 1;
pub const CT_ESTABLISHED: u8 = 2;
pub const CT_TCP_CLOSING: u8 = 3;
pub const CT_TCP_CLOSED: u8 = 4;

/// Name of a `CtEntry::state` for display.
pub const fn ct_state_name(proto: u8, state: u8) -> &'static str {
    match (proto, state) {
        (IPPROTO_TCP, CT_TCP_SYN_SENT) => "syn-sent",
        (_, CT_ESTABLISHED) => "established",
        (IPPROTO_TCP, CT_TCP_CLOSING) => "closing",
        (IPPROTO_TCP, CT_TCP_CLOSED) => "closed",
        (_, CT_NEW) => "new",
        _ => "unknown",
    }
}

/// Value of the connection tracker.
///
/// Times are `bpf_ktime_get_ns()` values (CLOCK_MONOTONIC, nanoseconds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// The entry is dead from this time on (forward entries only).
    pub expires_ns: u64,
    /// Original direction (endpoint -> remote).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Reply direction (remote -> endpoint).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Forward entry: translated source address; reverse entry: the
    /// endpoint's original address. Wire order.
    pub addr: u32,
    /// Host-side veth ifindex of the endpoint.
    pub ifindex: u32,
    /// Forward entry: translated source port (ICMP: echo id); reverse entry:
    /// the endpoint's original port. Wire order.
    pub port: u16,
    /// `CT_NEW`, `CT_TCP_*`, `CT_ESTABLISHED`.
    pub state: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// TCP flags seen in each direction (OR of the flag bytes).
    pub tx_tcp_flags: u8,
    pub rx_tcp_flags: u8,
    pub _pad: [u8; 2],
    /// Forward entry of a masqueraded flow: the next hop as the last
    /// successful `bpf_fib_lookup` for it gave it (`fib_ifindex` 0: none),
    /// reused by later packets of the flow for up to [`CT_FIB_REFRESH_NS`]
    /// after `fib_ns`, while the network's uplink is still `fib_ifindex`
    /// and the packet fits `fib_mtu` (so route and neighbour changes are
    /// picked up within that time). Unused in reverse entries.
    pub fib_ns: u64,
    /// Output interface (the uplink).
    pub fib_ifindex: u32,
    /// MTU of `fib_ifindex` at the lookup.
    pub fib_mtu: u32,
    /// Destination (next hop) and source MAC of the frame.
    pub fib_dmac: [u8; 6],
    pub fib_smac: [u8; 6],
    pub _pad2: [u8; 4],
}

/// How long the next hop cached in a forward `CtEntry` is reused before
/// the next packet of the flow looks the route up again.
pub const CT_FIB_REFRESH_NS: u64 = 1_000_000_000;

/// Connection tracker lifetimes, in seconds; 0 means the default.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtConfig {
    /// TCP after the SYN, before a reply (default 60 s).
    pub tcp_syn: u32,
    /// TCP established (default 6 h).
    pub tcp_established: u32,
    /// TCP after a FIN or RST (default 10 s).
    pub tcp_closing: u32,
    /// UDP (default 60 s).
    pub udp: u32,
    /// ICMP echo (default 60 s).
    pub icmp: u32,
    pub _reserved: [u32; 3],
}

pub const CT_DEFAULT_TCP_SYN: u32 = 60;
pub const CT_DEFAULT_TCP_ESTABLISHED: u32 = 6 * 3600;
pub const CT_DEFAULT_TCP_CLOSING: u32 = 10;
pub const CT_DEFAULT_UDP: u32 = 60;
pub const CT_DEFAULT_ICMP: u32 = 60;

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

    /// Connection tracker and NAT drops (see `dp_from_ep` / `dp_from_uplink`).
    /// The conntrack map refused a new entry (LRU could not make room).
    pub const DROP_CT_TABLE_FULL: u32 = 41;
    /// No free SNAT port in `[nat_port_min, nat_port_max]` after the bounded
    /// number of tries.
    pub const DROP_NAT_NO_PORT: u32 = 42;
    /// A packet that cannot start a tracked flow: TCP without SYN (or with
    /// SYN+ACK) for an unknown flow.
    pub const DROP_CT_INVALID: u32 = 43;
    /// An IPv4 fragment (first or not) of traffic that would be masqueraded,
    /// or a non-DF packet too big for the uplink: it cannot be translated
    /// without a fragment map, and passing it would leak the private source.
    pub const DROP_NAT_FRAGMENT: u32 = 44;
    /// A protocol the masquerade cannot translate (neither TCP, UDP nor ICMP
    /// echo request) on its way out of a masquerading network.
    pub const DROP_NAT_PROTO: u32 = 45;
    /// A translated reply whose TTL would expire at the node.
    pub const DROP_TTL_EXCEEDED: u32 = 46;

    /// Packet verdicts of the NAT paths.
    /// Uplink ingress without a NAT mapping (the node's own traffic): passed
    /// untouched.
    pub const PASS_UPLINK_HOST: u32 = 7;
    /// Source-translated to the network's masquerade address and sent out the
    /// uplink (`bpf_redirect` / `bpf_redirect_neigh`).
    pub const FWD_NAT: u32 = 8;
    /// A reply (or an ICMP error about a flow) translated back and delivered
    /// into the endpoint with `bpf_redirect_peer`.
    pub const FWD_REVNAT: u32 = 9;
    /// Traffic of a masquerading network that the FIB does not route out the
    /// uplink (local destination, unreachable, other interface, TTL expiring,
    /// DF packet too big): handed to the kernel untranslated, which answers
    /// with the right ICMP error or delivers it locally.
    pub const PASS_NAT_NOT_ROUTED: u32 = 10;
    /// Event, not a verdict: a connection-tracking entry (flow) was created.
    /// Counted in addition to the packet's verdict (`packets` = flows).
    pub const EV_CT_CREATED: u32 = 11;
    /// Event: a new flow took over the SNAT port of a finished one (see
    /// `CT_F_DONE`), or a new SYN restarted a finished flow on its tuple.
    pub const EV_NAT_PORT_REUSED: u32 = 12;

    /// Size of the `STATS` array: every code must be below this.
    pub const MAX: u32 = 64;

    /// Whether `code` counts events rather than packet verdicts (a packet is
    /// counted under exactly one verdict code, and maybe some event codes).
    pub const fn is_event(code: u32) -> bool {
        code == EV_CT_CREATED || code == EV_NAT_PORT_REUSED
    }

    /// Every defined code, in display order.
    pub const ALL: [u32; 27] = [
        FWD_REDIRECT_PEER,
        FWD_NAT,
        FWD_REVNAT,
        EV_CT_CREATED,
        EV_NAT_PORT_REUSED,
        PASS_BROADCAST,
        PASS_ARP,
        PASS_TO_BRIDGE,
        PASS_OTHER_PROTO,
        PASS_UNKNOWN_IFACE,
        PASS_UPLINK_HOST,
        PASS_NAT_NOT_ROUTED,
        DROP_TRUNCATED,
        DROP_BAD_IPV4_HEADER,
        DROP_SPOOFED_MAC,
        DROP_SPOOFED_IP,
        DROP_SPOOFED_ARP,
        DROP_REDIRECT_FAILED,
        DROP_POLICY_ISOLATION,
        DROP_POLICY_ICC,
        DROP_POLICY_INTERNAL,
        DROP_CT_TABLE_FULL,
        DROP_NAT_NO_PORT,
        DROP_CT_INVALID,
        DROP_NAT_FRAGMENT,
        DROP_NAT_PROTO,
        DROP_TTL_EXCEEDED,
    ];

    /// Length of the longest name (the trace column width).
    pub const NAME_WIDTH: usize = {
        let mut w = 0;
        let mut i = 0;
        while i < ALL.len() {
            let n = name(ALL[i]).len();
            if n > w {
                w = n;
            }
            i += 1;
        }
        w
    };

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
            DROP_CT_TABLE_FULL => "drop-ct-table-full",
            DROP_NAT_NO_PORT => "drop-nat-no-port",
            DROP_CT_INVALID => "drop-ct-invalid",
            DROP_NAT_FRAGMENT => "drop-nat-fragment",
            DROP_NAT_PROTO => "drop-nat-proto",
            DROP_TTL_EXCEEDED => "drop-ttl-exceeded",
            PASS_UPLINK_HOST => "pass-uplink-host",
            FWD_NAT => "nat-translated",
            FWD_REVNAT => "nat-reverse-translated",
            PASS_NAT_NOT_ROUTED => "pass-nat-not-routed",
            EV_CT_CREATED => "ct-created",
            EV_NAT_PORT_REUSED => "nat-port-reused",
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
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::CtConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(core::mem::size_of::<EndpointInfo>(), 28);
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::size_of::<NetworkInfo>(), 28);
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtEntry>(), 104);
        assert_eq!(core::mem::size_of::<CtConfig>(), 32);
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
        assert!(!reason::is_drop(reason::FWD_REVNAT));
        assert!(reason::is_drop(reason::DROP_NAT_NO_PORT));
        assert!(reason::is_event(reason::EV_CT_CREATED));
        assert!(reason::is_event(reason::EV_NAT_PORT_REUSED));
        assert_eq!(reason::NAME_WIDTH, "nat-reverse-translated".len());
    }

    #[test]
    fn ipv4_key_is_wire_order() {
        let k = ipv4_key([10, 10, 0, 2]);
        assert_eq!(k.to_ne_bytes(), [10, 10, 0, 2]);
    }
}
