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
