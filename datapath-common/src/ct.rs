//! Connection tracking and SNAT (masquerade): the one definition of the
//! `CT` key and value, their flags, states and lifetimes, and of how the two
//! entries of a flow find each other.
//!
//! A masqueraded flow has two entries: the *forward* one keyed by the
//! original tuple as the endpoint sends it (endpoint -> remote), holding the
//! state, lifetime, counters and the translated source, and the *reverse*
//! (reply) one keyed by the reply tuple as it arrives on the uplink (remote
//! -> masquerade address:port), holding the endpoint's original address and
//! port ([`CT_F_REVERSE`]). [`CtKey::reply_of`] and [`CtKey::forward_of`]
//! derive one key from the other; both sides (eBPF and agent) use them.

/// IP protocol numbers the tracker knows.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Whether `proto` is ICMP or ICMPv6, whose echo identifier is the port
/// of a tuple (see [`CtKey::icmp_echo_ports`]).
#[inline(always)]
pub const fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// [`reply_ports`] for IPv6 tuples (ICMPv6 echo).
#[inline(always)]
pub const fn reply_ports6(proto: u8, fwd_dport: u16, nat_port: u16) -> (u16, u16) {
    reply_ports(if proto == IPPROTO_ICMPV6 { IPPROTO_ICMP } else { proto }, fwd_dport, nat_port)
}

/// [`forward_ports`] for IPv6 tuples (ICMPv6 echo).
#[inline(always)]
pub const fn forward_ports6(proto: u8, reply_sport: u16, orig_port: u16) -> (u16, u16) {
    forward_ports(if proto == IPPROTO_ICMPV6 { IPPROTO_ICMP } else { proto }, reply_sport, orig_port)
}

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

/// Key of the connection tracker: a 5-tuple exactly as it appears in the
/// packet (addresses and ports in wire order). For ICMP echo the identifier
/// is the port: requests use `sport = id, dport = 0`, replies `sport = 0,
/// dport = id` (see [`CtKey::icmp_echo_ports`]).
///
/// IPv4 only. The key derivations below only rely on the port convention
/// ([`reply_ports`], [`forward_ports`]), so an IPv6 key (its own type, with
/// 128-bit addresses, in its own map) gets the same methods by reusing them.
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

/// The ports of the reply tuple of a forward tuple whose destination port is
/// `fwd_dport`, translated to source port `nat_port`: `(sport, dport)`. ICMP
/// echo replies carry the identifier as `dport` and 0 as `sport`.
#[inline(always)]
pub const fn reply_ports(proto: u8, fwd_dport: u16, nat_port: u16) -> (u16, u16) {
    if proto == IPPROTO_ICMP {
        (0, nat_port)
    } else {
        (fwd_dport, nat_port)
    }
}

/// The ports of the forward tuple of a reply tuple whose source port is
/// `reply_sport`, the endpoint's original port being `orig_port`: `(sport,
/// dport)`. ICMP echo requests carry the identifier as `sport` and 0 as
/// `dport`.
#[inline(always)]
pub const fn forward_ports(proto: u8, reply_sport: u16, orig_port: u16) -> (u16, u16) {
    if proto == IPPROTO_ICMP {
        (orig_port, 0)
    } else {
        (orig_port, reply_sport)
    }
}

impl CtKey {
    /// A key (addresses and ports in wire order).
    #[inline(always)]
    pub const fn new(proto: u8, saddr: u32, daddr: u32, sport: u16, dport: u16) -> Self {
        CtKey { saddr, daddr, sport, dport, proto, _pad: [0; 3] }
    }

    /// `(sport, dport)` of an ICMP message with echo identifier `id`
    /// (`request`: an echo request, else a reply).
    #[inline(always)]
    pub const fn icmp_echo_ports(request: bool, id: u16) -> (u16, u16) {
        if request {
            (id, 0)
        } else {
            (0, id)
        }
    }

    /// The reply tuple (the key of the reverse entry) of the forward tuple
    /// `fwd` once its source is translated to `nat_addr:nat_port`: remote ->
    /// `nat_addr:nat_port`.
    #[inline(always)]
    pub const fn reply_of(fwd: &CtKey, nat_addr: u32, nat_port: u16) -> CtKey {
        let (sport, dport) = reply_ports(fwd.proto, fwd.dport, nat_port);
        CtKey::new(fwd.proto, fwd.daddr, nat_addr, sport, dport)
    }

    /// A published-port flow: the reply tuple of the forward tuple `fwd`
    /// (client -> node:host port) translated to the endpoint
    /// `to_addr:to_port`, whose client is seen as `src_addr:src_port` (the
    /// client itself, or the source translation): endpoint -> source.
    #[inline(always)]
    pub const fn dnat_reply_of(fwd: &CtKey, to_addr: u32, to_port: u16, src_addr: u32, src_port: u16) -> CtKey {
        CtKey::new(fwd.proto, to_addr, src_addr, to_port, src_port)
    }

    /// A published-port flow: the forward tuple of the reply tuple `rev`,
    /// whose client `client_addr:client_port` used `node_addr:host_port`.
    #[inline(always)]
    pub const fn dnat_forward_of(
        rev: &CtKey,
        node_addr: u32,
        host_port: u16,
        client_addr: u32,
        client_port: u16,
    ) -> CtKey {
        CtKey::new(rev.proto, client_addr, node_addr, client_port, host_port)
    }

    /// The key of the other entry of the flow whose entry at `self` is `e`
    /// (forward -> reverse, reverse -> forward), and the `addr`/`port` the
    /// other entry holds when it still belongs to this flow (a tuple may
    /// have been taken over by another flow meanwhile).
    #[inline(always)]
    pub const fn partner(&self, e: &CtEntry) -> (CtKey, u32, u16) {
        let reverse = e.flags & CT_F_REVERSE != 0;
        if e.flags & CT_F_DNAT == 0 {
            if reverse {
                (CtKey::forward_of(self, e.addr, e.port), self.daddr, self.dport)
            } else {
                (CtKey::reply_of(self, e.addr, e.port), self.saddr, self.sport)
            }
        } else if reverse {
            let (caddr, cport) = if e.flags & CT_F_SNAT != 0 { e.dnat_peer() } else { (self.daddr, self.dport) };
            (CtKey::dnat_forward_of(self, e.addr, e.port, caddr, cport), self.saddr, self.sport)
        } else {
            let (saddr, sport) = if e.flags & CT_F_SNAT != 0 { e.dnat_peer() } else { (self.saddr, self.sport) };
            (CtKey::dnat_reply_of(self, e.addr, e.port, saddr, sport), self.daddr, self.dport)
        }
    }

    /// The original tuple (the key of the forward entry) of the reply tuple
    /// `reply`, whose endpoint's original address and port are
    /// `orig_addr:orig_port` (what its reverse entry holds): endpoint ->
    /// remote.
    #[inline(always)]
    pub const fn forward_of(reply: &CtKey, orig_addr: u32, orig_port: u16) -> CtKey {
        let (sport, dport) = forward_ports(reply.proto, reply.sport, orig_port);
        CtKey::new(reply.proto, orig_addr, reply.saddr, sport, dport)
    }
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

/// A published-port flow (destination-translated, see [`crate::ports`]).
/// Forward entry: keyed by the tuple as it arrives (client -> node
/// address:host port); `addr`/`port` are the endpoint's address and
/// container port, `ifindex` the endpoint's host veth. Reverse entry
/// (with [`CT_F_REVERSE`]): keyed by the endpoint's reply (endpoint:container
/// port -> the client, or the source-translated address and port);
/// `addr`/`port` are the node address and host port the client used,
/// `ifindex` the client's host veth when the client is an endpoint (0 for
/// one beyond the uplink). With [`CT_F_SNAT`] too (a client that is an
/// endpoint of the node, hairpin included) the flow is also
/// source-translated to the endpoint network's gateway: see
/// [`CtEntry::dnat_peer`]. Both directions derive each other with
/// [`CtKey::partner`].
pub const CT_F_DNAT: u8 = 1 << 7;

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

impl CtEntry {
    /// A published-port flow that is also source-translated
    /// (`CT_F_DNAT | CT_F_SNAT`: its client is an endpoint of the node) has
    /// a second address and port, kept in `fib_ns` (address in the low 32
    /// bits, port, wire order, in the next 16): such flows are delivered
    /// with `bpf_redirect_peer` and never cache a next hop. Forward entry:
    /// the translated source (the gateway of the endpoint's network and a
    /// port); reverse entry: the client's own address and port.
    #[inline(always)]
    pub const fn dnat_peer(&self) -> (u32, u16) {
        (self.fib_ns as u32, (self.fib_ns >> 32) as u16)
    }

    /// Sets what [`CtEntry::dnat_peer`] reads.
    #[inline(always)]
    pub fn set_dnat_peer(&mut self, addr: u32, port: u16) {
        self.fib_ns = u64::from(addr) | (u64::from(port) << 32);
    }
}

/// Key of the fragment map (`FRAGS`): an IPv4 datagram as its fragments
/// carry it (addresses in wire order, the IP identification as on the
/// wire). Only the first fragment holds the L4 header; the ports it had are
/// remembered under this key so the later fragments of the datagram find
/// their flow (as Cilium's `ipv4_frag_datagrams` map does). IPv6 gets its
/// own key type and map (its identification is 32 bits, in an extension
/// header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    /// Always zero (part of the hashed key).
    pub _pad: u8,
}

impl FragKey {
    #[inline(always)]
    pub const fn new(proto: u8, saddr: u32, daddr: u32, id: u16) -> Self {
        FragKey { saddr, daddr, id, proto, _pad: 0 }
    }
}

/// Key of the IPv6 fragment map (`FRAGS6`): a datagram as its fragments
/// carry it (addresses in wire order, the 32-bit identification of the
/// fragment header as on the wire), as [`FragKey`] for IPv4; the value is
/// a [`FragPorts`].
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    /// Always zero (part of the hashed key).
    pub _pad: [u8; 3],
}

/// Value of the fragment map: the ports of the datagram's first fragment
/// (wire order, `CtKey` convention: for ICMP echo the identifier as `sport`
/// of a request, `dport` of a reply), so `CtKey::new(key.proto, key.saddr,
/// key.daddr, sport, dport)` is the flow's key as the fragments travel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Key of the IPv6 connection tracker (`CT6`): the 5-tuple as the packet
/// carries it, like [`CtKey`] (addresses and ports in wire order, ICMPv6
/// echo identifier as the port, see [`CtKey::icmp_echo_ports`]). A map of
/// its own, as Cilium's CT4/CT6: the IPv4 `CT` layout (and the flows a
/// running datapath has in it) stays as it is.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Always zero (part of the hashed key).
    pub _pad: [u8; 3],
}

impl CtKey6 {
    /// A key (addresses and ports in wire order).
    #[inline(always)]
    pub const fn new(proto: u8, saddr: [u8; 16], daddr: [u8; 16], sport: u16, dport: u16) -> Self {
        CtKey6 { saddr, daddr, sport, dport, proto, _pad: [0; 3] }
    }

    /// As [`CtKey::reply_of`]: remote -> `nat_addr:nat_port`.
    #[inline(always)]
    pub const fn reply_of(fwd: &CtKey6, nat_addr: [u8; 16], nat_port: u16) -> CtKey6 {
        let (sport, dport) = reply_ports6(fwd.proto, fwd.dport, nat_port);
        CtKey6::new(fwd.proto, fwd.daddr, nat_addr, sport, dport)
    }

    /// As [`CtKey::forward_of`]: endpoint -> remote.
    #[inline(always)]
    pub const fn forward_of(reply: &CtKey6, orig_addr: [u8; 16], orig_port: u16) -> CtKey6 {
        let (sport, dport) = forward_ports6(reply.proto, reply.sport, orig_port);
        CtKey6::new(reply.proto, orig_addr, reply.saddr, sport, dport)
    }

    /// The key of the other entry of the masqueraded flow whose entry at
    /// `self` is `e`, and the address and port that entry holds when it
    /// still belongs to this flow (as [`CtKey::partner`]; IPv6 has no
    /// published-port flows of its own: the kernel translates those).
    #[inline(always)]
    pub const fn partner(&self, e: &CtEntry6) -> (CtKey6, [u8; 16], u16) {
        if e.e.flags & CT_F_REVERSE != 0 {
            (CtKey6::forward_of(self, e.addr, e.e.port), self.daddr, self.dport)
        } else {
            (CtKey6::reply_of(self, e.addr, e.e.port), self.saddr, self.sport)
        }
    }
}

/// Value of the IPv6 connection tracker: an IPv4 [`CtEntry`] for
/// everything but the address (state, lifetime, counters, port, next hop
/// cache: the same code updates both; its `addr` stays 0), and the 128-bit
/// address in its place: the translated source (forward entry) or the
/// endpoint's original address (reverse entry, [`CT_F_REVERSE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry6 {
    pub e: CtEntry,
    pub addr: [u8; 16],
}

/// Key of the IPv6 published-port map (`PUBLISHED6`): a container port an
/// endpoint with an IPv6 address publishes. The kernel translates the
/// connections to v6 published ports (nftables `ip6` DNAT), so their
/// replies, from this address and port, go to the kernel untranslated.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Published6Key {
    /// The endpoint's IPv6 address, wire order.
    pub addr: [u8; 16],
    /// The container port, wire order.
    pub port: u16,
    pub proto: u8,
    /// Always zero (part of the hashed key).
    pub _pad: u8,
}

impl Published6Key {
    #[inline(always)]
    pub const fn new(proto: u8, addr: [u8; 16], port: u16) -> Self {
        Published6Key { addr, port, proto, _pad: 0 }
    }
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

impl CtConfig {
    /// Lifetime in seconds of a flow of `proto` in `state` (the configured
    /// value, or the default when it is 0).
    #[inline(always)]
    pub const fn lifetime_s(&self, proto: u8, state: u8) -> u32 {
        let (v, d) = match (proto, state) {
            (IPPROTO_TCP, CT_TCP_SYN_SENT) => (self.tcp_syn, CT_DEFAULT_TCP_SYN),
            (IPPROTO_TCP, CT_ESTABLISHED) => (self.tcp_established, CT_DEFAULT_TCP_ESTABLISHED),
            (IPPROTO_TCP, _) => (self.tcp_closing, CT_DEFAULT_TCP_CLOSING),
            (IPPROTO_UDP, _) => (self.udp, CT_DEFAULT_UDP),
            _ => (self.icmp, CT_DEFAULT_ICMP),
        };
        if v == 0 {
            d
        } else {
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: u32 = u32::from_ne_bytes([10, 10, 0, 2]);
    const REMOTE: u32 = u32::from_ne_bytes([203, 0, 113, 1]);
    const MASQ: u32 = u32::from_ne_bytes([192, 0, 2, 1]);

    #[test]
    fn reply_and_forward_keys_round_trip() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let fwd = CtKey::new(proto, EP, REMOTE, 40000u16.to_be(), 80u16.to_be());
            let rep = CtKey::reply_of(&fwd, MASQ, 1024u16.to_be());
            assert_eq!(rep, CtKey::new(proto, REMOTE, MASQ, 80u16.to_be(), 1024u16.to_be()));
            assert_eq!(CtKey::forward_of(&rep, EP, 40000u16.to_be()), fwd);
            // Untranslated: the reply tuple is the forward one turned around.
            assert_eq!(
                CtKey::reply_of(&fwd, fwd.saddr, fwd.sport),
                CtKey::new(proto, REMOTE, EP, fwd.dport, fwd.sport)
            );
        }
    }

    #[test]
    fn icmp_keys_follow_the_echo_convention() {
        let id = 0x1234u16.to_be();
        let (sport, dport) = CtKey::icmp_echo_ports(true, id);
        let fwd = CtKey::new(IPPROTO_ICMP, EP, REMOTE, sport, dport);
        assert_eq!((fwd.sport, fwd.dport), (id, 0));
        let nat_id = 0x0400u16.to_be();
        let rep = CtKey::reply_of(&fwd, MASQ, nat_id);
        // The echo reply as it arrives: remote -> masq, id as dport.
        let (sport, dport) = CtKey::icmp_echo_ports(false, nat_id);
        assert_eq!(rep, CtKey::new(IPPROTO_ICMP, REMOTE, MASQ, sport, dport));
        assert_eq!(CtKey::forward_of(&rep, EP, id), fwd);
        // A reply key with a stray sport still maps back to dport 0.
        let odd = CtKey { sport: 7, ..rep };
        assert_eq!(CtKey::forward_of(&odd, EP, id), fwd);
    }

    #[test]
    fn partners_find_each_other() {
        const NODE: u32 = u32::from_ne_bytes([203, 0, 113, 2]);
        const GW: u32 = u32::from_ne_bytes([10, 10, 0, 1]);
        let (h, c, cl) = (8080u16.to_be(), 80u16.to_be(), 40000u16.to_be());
        // Masquerade.
        let fk = CtKey::new(IPPROTO_TCP, EP, REMOTE, cl, c);
        let fe = CtEntry { addr: MASQ, port: 1024u16.to_be(), flags: CT_F_SNAT, ..Default::default() };
        let (rk, a, p) = fk.partner(&fe);
        assert_eq!(rk, CtKey::reply_of(&fk, MASQ, 1024u16.to_be()));
        let re = CtEntry { addr: a, port: p, flags: CT_F_SNAT | CT_F_REVERSE, ..Default::default() };
        assert_eq!(rk.partner(&re), (fk, MASQ, 1024u16.to_be()));
        // A published port, client beyond the uplink.
        let fk = CtKey::new(IPPROTO_TCP, REMOTE, NODE, cl, h);
        let fe = CtEntry { addr: EP, port: c, flags: CT_F_DNAT, ..Default::default() };
        let (rk, a, p) = fk.partner(&fe);
        assert_eq!(rk, CtKey::new(IPPROTO_TCP, EP, REMOTE, c, cl));
        assert_eq!((a, p), (NODE, h));
        let re = CtEntry { addr: a, port: p, flags: CT_F_DNAT | CT_F_REVERSE, ..Default::default() };
        assert_eq!(rk.partner(&re), (fk, EP, c));
        // A published port, client an endpoint (source-translated).
        let client = u32::from_ne_bytes([10, 20, 0, 7]);
        let fk = CtKey::new(IPPROTO_UDP, client, NODE, cl, h);
        let mut fe = CtEntry { addr: EP, port: c, flags: CT_F_DNAT | CT_F_SNAT, ..Default::default() };
        fe.set_dnat_peer(GW, 1500u16.to_be());
        assert_eq!(fe.dnat_peer(), (GW, 1500u16.to_be()));
        let (rk, a, p) = fk.partner(&fe);
        assert_eq!(rk, CtKey::new(IPPROTO_UDP, EP, GW, c, 1500u16.to_be()));
        let mut re = CtEntry { addr: a, port: p, flags: CT_F_DNAT | CT_F_SNAT | CT_F_REVERSE, ..Default::default() };
        re.set_dnat_peer(client, cl);
        assert_eq!(rk.partner(&re), (fk, EP, c));
    }

    #[test]
    fn lifetimes_default_when_zero() {
        let cfg = CtConfig::default();
        assert_eq!(cfg.lifetime_s(IPPROTO_TCP, CT_TCP_SYN_SENT), CT_DEFAULT_TCP_SYN);
        assert_eq!(cfg.lifetime_s(IPPROTO_TCP, CT_ESTABLISHED), CT_DEFAULT_TCP_ESTABLISHED);
        assert_eq!(cfg.lifetime_s(IPPROTO_TCP, CT_TCP_CLOSED), CT_DEFAULT_TCP_CLOSING);
        assert_eq!(cfg.lifetime_s(IPPROTO_UDP, CT_NEW), CT_DEFAULT_UDP);
        assert_eq!(cfg.lifetime_s(IPPROTO_ICMP, CT_ESTABLISHED), CT_DEFAULT_ICMP);
        let cfg = CtConfig { udp: 5, ..cfg };
        assert_eq!(cfg.lifetime_s(IPPROTO_UDP, CT_ESTABLISHED), 5);
    }
}
