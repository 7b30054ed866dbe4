//! Reason codes for every decision the datapath takes, and the per-CPU
//! counter each one keys in `STATS`. Shared with the agent (`datapath stats`)
//! and the trace output.
//!
//! Codes below [`DROP_BASE`] are forwarding decisions (or events, see
//! [`is_event`]), codes at or above it are drops.

/// A per-CPU packet/byte counter, one slot per reason code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Unicast IPv4 for another endpoint of the same network, delivered
/// straight into its namespace with `bpf_redirect_peer`.
pub const FWD_REDIRECT_PEER: u32 = 1;
/// Broadcast or multicast IPv4 (with the endpoint's own source), handed to
/// the bridge.
pub const PASS_BROADCAST: u32 = 2;
/// ARP not answered in eBPF (probes, announcements, replies, requests for
/// addresses that are not the network's gateway or endpoints), handed to
/// the bridge.
pub const PASS_ARP: u32 = 3;
/// Unicast IPv4 not for a local endpoint of the same network (gateway,
/// host, other networks, beyond the node): handed to the bridge.
pub const PASS_TO_BRIDGE: u32 = 4;
/// (Code 5, `pass-other-proto`, is retired: frames that are neither IPv4
/// nor ARP are dropped as [`DROP_ETHERTYPE`].)
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
/// ARP sender (protocol address, or hardware address) is not the
/// endpoint's own.
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
/// A packet without DF, too big for the uplink, on its way through the
/// masquerade: the kernel would fragment it and forward it untranslated
/// (leaking the private source). (Fragments themselves are translated, see
/// [`DROP_FRAG_UNKNOWN`].)
pub const DROP_NAT_FRAGMENT: u32 = 44;
/// A protocol the masquerade cannot translate (neither TCP, UDP nor ICMP
/// echo request) on its way out of a masquerading network.
pub const DROP_NAT_PROTO: u32 = 45;
/// A translated reply whose TTL would expire at the node.
pub const DROP_TTL_EXCEEDED: u32 = 46;
/// A frame from an endpoint with an 802.1Q / 802.1ad (QinQ) / 0x9100 VLAN
/// tag, in the frame or in `skb->vlan_tci` (the tag the kernel took off):
/// checked before anything else, so no encapsulation gets past the
/// identity checks or out of the uplink into a VLAN of the node's network.
pub const DROP_VLAN_TAGGED: u32 = 47;
/// A frame from an endpoint that is neither Ethernet II IPv4 nor ARP (IPv6,
/// 802.3/LLC such as STP, LLDP, any other ethertype): networks are IPv4-only
/// and endpoints have IPv6 disabled, so such a frame is forged and would
/// reach the bridge, the node and other endpoints past every IPv4 policy.
pub const DROP_ETHERTYPE: u32 = 48;
/// TCP with a data offset below 5 or a header beyond the IP payload, or UDP
/// with a length below 8 or beyond the IP payload, on its way through the
/// masquerade (out, or a reply on the uplink): not translated.
pub const DROP_BAD_L4_HEADER: u32 = 49;
/// A later fragment (offset > 0) of a datagram from an endpoint through the
/// masquerade whose first fragment was not seen, or whose flow is gone: its
/// ports, hence its flow, are unknown (fragments must come in order, first
/// one first, as every sender emits them).
pub const DROP_FRAG_UNKNOWN: u32 = 50;

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
/// An ARP request from an endpoint for its gateway or for another endpoint
/// of its network, answered in eBPF (proxy ARP): the reply is sent back
/// into the requester with `bpf_redirect_peer`, nothing crosses the bridge.
pub const FWD_ARP_REPLY: u32 = 13;
/// Event: the masquerade found no free NAT port for a new flow (the packet
/// is counted under [`DROP_NAT_NO_PORT`]) and answered the endpoint at once
/// with an ICMP destination unreachable (code 13, communication
/// administratively prohibited) from the network's gateway, so its
/// `connect()` or connected UDP socket fails with EHOSTUNREACH instead of
/// waiting for a timeout.
pub const EV_NAT_REFUSED: u32 = 14;
/// A TCP segment (not a SYN) of no eBPF flow from an endpoint with
/// `EP_F_KERNEL_FLOWS` (ports published by a chained CNI `portmap`), to a
/// destination beyond the node: handed to the kernel, whose conntrack
/// translates the replies of the connections its DNAT made.
pub const PASS_KERNEL_FLOW: u32 = 15;

/// Published ports (`datapath_common::ports`). Numbers chosen clear of
/// the codes other work adds next to the existing ones.
/// A packet to a published port (node address:host port), or of a flow
/// through one, destination-translated and delivered into the publishing
/// endpoint with `bpf_redirect_peer`.
pub const FWD_PORT: u32 = 20;
/// A reply of the publishing endpoint translated back (source: the node
/// address and host port) and sent to the client: out the uplink (next
/// hop lookup and redirect) or into the client endpoint.
pub const FWD_PORT_REPLY: u32 = 21;
/// A packet to a published port (or a reply through one) whose TCP or UDP
/// header is malformed (bad data offset, bad length beyond the packet):
/// never translated.
pub const DROP_PORT_MALFORMED: u32 = 58;
/// A new flow to a published port whose reply tuple is taken by another
/// flow (no free source port for a client endpoint), or that the
/// connection tracker refused: not translated.
pub const DROP_PORT_TUPLE_TAKEN: u32 = 59;

/// IPv6 of a dual-stack network (interim: checked in eBPF, forwarded by
/// the kernel). Added at the end of each range.
/// An IPv6 frame from an endpoint of a dual-stack network that passed the
/// checks below: handed to the bridge (the kernel forwards and masquerades
/// IPv6 for now).
pub const PASS_IPV6: u32 = 22;
/// An IPv6 packet whose chain of extension headers is longer than the
/// datapath follows (`ipv6::MAX_EXT_HEADERS`).
pub const DROP_IPV6_EXT_CHAIN: u32 = 60;
/// An IPv6 header that is not one: version not 6, a payload length beyond
/// the frame, an extension header running past the payload.
pub const DROP_BAD_IPV6_HEADER: u32 = 61;
/// An IPv6 source address not the endpoint's own (nor its link-local
/// address, nor `::` for duplicate address detection).
pub const DROP_SPOOFED_IP6: u32 = 62;
/// Neighbour discovery claiming another address or MAC than the
/// endpoint's (a solicitation or advertisement's target, source or target
/// link-layer address option), or a router advertisement or redirect (an
/// endpoint is no router).
pub const DROP_SPOOFED_NDP: u32 = 63;
/// A neighbour solicitation from an endpoint for its network's IPv6
/// gateway or for another endpoint of its network, answered in eBPF (the
/// IPv6 analogue of proxy ARP): the advertisement is sent back into the
/// requester with `bpf_redirect_peer`, nothing crosses the bridge.
pub const FWD_ND_ADVERT: u32 = 23;

/// NAT66 (the IPv6 masquerade, `nat6`): its packets are counted under
/// the IPv4 masquerade's codes (`nat-translated`, `nat-reverse-translated`,
/// `drop-ct-invalid`, ...) except for this one.
/// An IPv6 fragment from an endpoint on its way through the IPv6
/// masquerade whose fragment header does not follow the fixed header at
/// once (other extension headers before it): not translated, dropped
/// rather than leaked untranslated. (Fragments right after the fixed
/// header, what senders emit, are translated through `FRAGS6`; a later
/// fragment of an unknown datagram is `drop-frag-unknown`.)
pub const DROP_NAT6_FRAGMENT: u32 = 72;

/// Size of the `STATS` array: every code must be below this. Codes from 64
/// on are drops too (the drop range grew past 63: `STATS` was 64 slots up
/// to the IPv6 work, and a datapath pinned before is migrated with its
/// counters).
pub const MAX: u32 = 128;

/// Whether `code` counts events rather than packet verdicts (a packet is
/// counted under exactly one verdict code, and maybe some event codes).
pub const fn is_event(code: u32) -> bool {
    code == EV_CT_CREATED || code == EV_NAT_PORT_REUSED || code == EV_NAT_REFUSED
}

/// Every defined code, in display order.
pub const ALL: [u32; 44] = [
    FWD_REDIRECT_PEER,
    FWD_ARP_REPLY,
    FWD_ND_ADVERT,
    FWD_NAT,
    FWD_REVNAT,
    FWD_PORT,
    FWD_PORT_REPLY,
    EV_CT_CREATED,
    EV_NAT_PORT_REUSED,
    EV_NAT_REFUSED,
    PASS_BROADCAST,
    PASS_ARP,
    PASS_TO_BRIDGE,
    PASS_UNKNOWN_IFACE,
    PASS_UPLINK_HOST,
    PASS_NAT_NOT_ROUTED,
    PASS_KERNEL_FLOW,
    PASS_IPV6,
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
    DROP_VLAN_TAGGED,
    DROP_ETHERTYPE,
    DROP_BAD_L4_HEADER,
    DROP_FRAG_UNKNOWN,
    DROP_IPV6_EXT_CHAIN,
    DROP_BAD_IPV6_HEADER,
    DROP_SPOOFED_IP6,
    DROP_SPOOFED_NDP,
    DROP_PORT_MALFORMED,
    DROP_PORT_TUPLE_TAKEN,
    DROP_NAT6_FRAGMENT,
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
        DROP_VLAN_TAGGED => "drop-vlan-tagged",
        DROP_ETHERTYPE => "drop-ethertype",
        DROP_BAD_L4_HEADER => "drop-bad-l4-header",
        PASS_UPLINK_HOST => "pass-uplink-host",
        FWD_NAT => "nat-translated",
        FWD_REVNAT => "nat-reverse-translated",
        PASS_NAT_NOT_ROUTED => "pass-nat-not-routed",
        PASS_KERNEL_FLOW => "pass-kernel-flow",
        EV_CT_CREATED => "ct-created",
        EV_NAT_PORT_REUSED => "nat-port-reused",
        EV_NAT_REFUSED => "nat-refused-icmp",
        DROP_FRAG_UNKNOWN => "drop-frag-unknown",
        FWD_PORT => "port-translated",
        FWD_PORT_REPLY => "port-reply-translated",
        DROP_PORT_MALFORMED => "drop-port-malformed",
        DROP_PORT_TUPLE_TAKEN => "drop-port-tuple-taken",
        FWD_ARP_REPLY => "fwd-arp-reply",
        PASS_IPV6 => "pass-ipv6",
        DROP_IPV6_EXT_CHAIN => "drop-ipv6-ext-chain",
        DROP_BAD_IPV6_HEADER => "drop-bad-ipv6-header",
        DROP_SPOOFED_IP6 => "drop-spoofed-ip6",
        DROP_SPOOFED_NDP => "drop-spoofed-ndp",
        FWD_ND_ADVERT => "fwd-nd-advert",
        DROP_NAT6_FRAGMENT => "drop-nat6-fragment",
        _ => "unknown",
    }
}
