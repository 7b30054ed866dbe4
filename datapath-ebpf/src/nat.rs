//! Source NAT (masquerade) of traffic leaving the node, and the reverse
//! translation of replies and ICMP errors on the uplink.
//!
//! * `egress` runs inside `dp_from_ep` for IPv4 from a masquerading network
//!   to a destination outside every local network: it tracks the flow in
//!   `CT`, rewrites the source to the network's masquerade address and a
//!   port of its range, and sends the packet out the uplink itself (next hop
//!   cached in the flow's entry or `bpf_fib_lookup`, MAC rewrite, TTL - 1,
//!   `bpf_redirect` or `bpf_redirect_neigh`).
//! * `from_uplink` (`dp_from_uplink`, TC ingress of the uplink) looks replies
//!   and ICMP errors up by their reply tuple, restores the endpoint's address
//!   and port and delivers them into the endpoint with `bpf_redirect_peer`.
//!   Anything without a mapping passes untouched: the node's own traffic.
//! * IPv4 fragments: the first fragment of a datagram is translated like any
//!   packet and its ports remembered in `FRAGS` under the datagram's
//!   (addresses, protocol, IP id); the later fragments, which carry no L4
//!   header, take their flow from there and only have their IPv4 header
//!   rewritten (`egress_fragment`, `reply_fragment`). The L4 checksum, in
//!   the first fragment, is fixed incrementally as for whole packets.
//!
//! A masqueraded flow has two `CT` entries (see `datapath_common::ct`); the
//! reverse entry is inserted first with `BPF_NOEXIST`, which is what
//! reserves the NAT port.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS},
    programs::TcContext,
};
use datapath_common::{
    reason, CtEntry, CtKey, EndpointInfo, FragKey, FragPorts, CT_F_REVERSE, CT_TCP_CLOSING, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP,
};

pub use crate::conntrack::Snat;
use crate::{
    conntrack,
    csum::{self, Nat},
    fib,
    hdr::{
        self, read_l4, Ip, ETH_HLEN, ETH_P_IP, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_TIME_EXCEEDED, IPV4_MIN_HLEN, IP_DF, IP_MF_OFFSET, IP_OFFSET, L4, PACKET_HOST, TCP_ACK, TCP_RST, TCP_SYN,
    },
    maps,
    verdict::{count, drop, pass, redirect, Verdict},
};

/// A packet to masquerade, as the forwarding decision saw it.
pub struct NatRequest {
    /// The sender's network's masquerade.
    pub snat: Snat,
    /// Its IPv4 header.
    pub ip: Ip,
}

/// What a packet of a flow brings to its conntrack entry.
struct Seen {
    proto: u8,
    /// TCP flags (0 for other protocols).
    tcp_flags: u8,
    /// A TCP SYN (no ACK, no RST).
    syn: bool,
    len: u32,
    now: u64,
}

/// Whether `req` is a later fragment (offset > 0) of a datagram, for
/// [`egress_fragment`] rather than [`egress`].
#[inline(always)]
pub fn is_later_fragment(req: &NatRequest) -> bool {
    req.ip.frag_off & IP_OFFSET != 0
}

/// Masquerade of a packet from endpoint `src` to a destination beyond the
/// node (a whole datagram or its first fragment). On success the packet is
/// translated and redirected to the uplink; `was` of the verdict holds the
/// original source.
#[inline(never)]
pub fn egress(ctx: &TcContext, src: &EndpointInfo, req: &NatRequest) -> Verdict {
    let Some(fib) = maps::scratch_fib() else {
        return pass(reason::PASS_TO_BRIDGE);
    };
    let (snat, ip) = (&req.snat, &req.ip);
    let proto = ip.proto;
    if ip.frag_off & IP_OFFSET != 0 {
        return drop(reason::DROP_FRAG_UNKNOWN);
    }
    let first_frag = ip.frag_off & IP_MF_OFFSET != 0;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return drop(reason::DROP_NAT_PROTO);
    }
    // The decision checked tot_len against the frame (0: a GSO packet
    // beyond 64 KiB, as long as the skb).
    let end = if ip.tot_len == 0 { ctx.len() as usize } else { ETH_HLEN + usize::from(ip.tot_len) };
    let Some(l4) = read_l4(ctx, proto, ETH_HLEN + (usize::from(ip.hlen) & 0x3c), end, first_frag) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if !l4.sane {
        return drop(reason::DROP_BAD_L4_HEADER);
    }
    if proto == IPPROTO_ICMP && l4.tcp_flags != ICMP_ECHO_REQUEST {
        return drop(reason::DROP_NAT_PROTO);
    }
    if ip.ttl <= 1 {
        // The kernel answers with ICMP time exceeded.
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }

    let tcp_flags = if proto == IPPROTO_TCP { l4.tcp_flags } else { 0 };
    let syn = proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    let seen = Seen { proto, tcp_flags, syn, len: ctx.len(), now: conntrack::now() };
    let key = CtKey::new(proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    if first_frag {
        // The later fragments of the datagram find their flow by this.
        remember_fragment(&key, ip.id);
    }
    let mut found = conntrack::get(&key);

    // Fast path: a live flow whose next hop is cached in its entry (see
    // `CtEntry::fib_ns`): no route lookup. A SYN restarting a closing flow
    // takes the slow path.
    if let Some(e) = &mut found {
        if e.flags & CT_F_REVERSE == 0
            && e.expires_ns > seen.now
            && e.addr == snat.addr
            && !(syn && e.state >= CT_TCP_CLOSING)
            && fib::cached_hop(ctx, e, snat.uplink_ifindex, seen.len, seen.now, fib)
        {
            conntrack::update(e, proto, false, tcp_flags, seen.len, seen.now);
            let (nat_addr, nat_port) = (e.addr, e.port);
            return send(ctx, ip, &l4, nat_addr, nat_port, BPF_FIB_LKUP_RET_SUCCESS, fib);
        }
    }

    // Slow path. Route first: only what leaves through the uplink is
    // translated.
    let rc = fib::lookup(ctx, ip, &l4, fib);
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && ip.frag_off & IP_DF == 0 {
        // The kernel would fragment it and forward it untranslated.
        return drop(reason::DROP_NAT_FRAGMENT);
    }
    if !fib::routed(rc) || (snat.uplink_ifindex != 0 && fib.ifindex != snat.uplink_ifindex) {
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }
    let (entry, nat_addr, nat_port) = match flow(&key, found, snat, src.ifindex, &seen) {
        Ok(f) => f,
        Err(code) => return drop(code),
    };
    // Remember a fresh next hop for the next packets.
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if let Some(e) = entry {
            fib::remember(e, fib, seen.now);
        }
    }
    send(ctx, ip, &l4, nat_addr, nat_port, rc, fib)
}

/// The conntrack entry of the flow of `key` (`found`: its entry, if any),
/// created when there is no live one: the entry (when it could be read back)
/// and the translated source address and port, or the drop reason.
#[inline(always)]
fn flow<'a>(
    key: &CtKey,
    found: Option<&'a mut CtEntry>,
    snat: &Snat,
    ifindex: u32,
    s: &Seen,
) -> Result<(Option<&'a mut CtEntry>, u32, u16), u32> {
    // The port a stale entry of this tuple had: tried first when the flow
    // starts again.
    let mut hint = 0u16;
    if let Some(e) = found {
        if e.flags & CT_F_REVERSE == 0 && e.expires_ns > s.now && e.addr == snat.addr {
            // A new connection on the tuple of a closing or closed one (the
            // client reuses its port): same mapping, fresh state, provided
            // the reply entry is still ours.
            let reopen = s.syn && e.state >= CT_TCP_CLOSING;
            let reuse = reopen && conntrack::reverse_is(&CtKey::reply_of(key, snat.addr, e.port), key);
            if reuse {
                conntrack::restart(e, s.now);
                count(reason::EV_NAT_PORT_REUSED, s.len);
            }
            if !reopen || reuse {
                conntrack::update(e, s.proto, false, s.tcp_flags, s.len, s.now);
                let (addr, port) = (e.addr, e.port);
                return Ok((Some(e), addr, port));
            }
        }
        // Expired, its network's address changed or its reply entry was
        // taken over: forget both directions (the reply entry only while it
        // is still this flow's), then start over.
        if e.flags & CT_F_REVERSE == 0 {
            let rkey = CtKey::reply_of(key, e.addr, e.port);
            if conntrack::reverse_is(&rkey, key) {
                conntrack::remove(&rkey);
            }
            if e.addr == snat.addr {
                hint = e.port;
            }
        }
        conntrack::remove(key);
    }
    if s.proto == IPPROTO_TCP && !s.syn {
        return Err(reason::DROP_CT_INVALID);
    }
    // Packed: the five registers of a BPF call.
    let packed = u64::from(ifindex) | (u64::from(hint) << 32);
    let port = conntrack::create(key, packed, snat, s.now)?;
    count(reason::EV_CT_CREATED, s.len);
    if let Some(ns) = maps::net_stats(snat.network_id) {
        ns.nat_flows += 1;
    }
    let e = conntrack::get(key);
    if let Some(e) = e {
        conntrack::update(e, s.proto, false, s.tcp_flags, s.len, s.now);
        return Ok((Some(e), snat.addr, port));
    }
    Ok((None, snat.addr, port))
}

/// Remembers the ports of `key`, the tuple of the first fragment of the
/// datagram `id`, for its later fragments. Out of line: the key is built in
/// this frame, not in the callers' (their stack is the longest chain's).
#[inline(never)]
fn remember_fragment(key: &CtKey, id: u16) {
    let fk = FragKey::new(key.proto, key.saddr, key.daddr, id);
    maps::frag_insert(&fk, &FragPorts { sport: key.sport, dport: key.dport });
}

/// Translation of the packet to `nat_addr:nat_port` and redirect to the
/// next hop in `fib` (`rc`: the lookup's result, SUCCESS or NO_NEIGH).
#[inline(always)]
fn send(ctx: &TcContext, ip: &Ip, l4: &L4, nat_addr: u32, nat_port: u16, rc: u32, fib: &FibParams) -> Verdict {
    // The L4 checksum is updated incrementally by the helper: for a
    // CHECKSUM_PARTIAL packet (veth) only the pseudo-header part of the L4
    // checksum changes, which BPF_F_PSEUDO_HDR takes care of. The IPv4
    // header (source, TTL, checksum) and the MACs are written directly
    // (`dp_from_ep` writes packet data directly, so the skb is writable).
    if !csum::rewrite_l4(ctx, ip.saddr, nat_addr, l4, l4.sport, nat_port, ip.proto) {
        return drop(reason::DROP_TRUNCATED);
    }
    let Some(iph) = hdr::ipv4(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    csum::forward_ipv4(iph, Nat::Src(nat_addr));
    let was = u64::from(ip.saddr) | (u64::from(u16::from_be(l4.sport)) << 32);
    match fib::redirect(ctx, rc, fib) {
        Ok(out_if) => Verdict { was, ..redirect(reason::FWD_NAT, out_if) },
        Err(reason::DROP_TRUNCATED) => drop(reason::DROP_TRUNCATED),
        Err(code) => Verdict { was, ..drop(code) },
    }
}

/// A later fragment (offset > 0) of a datagram from an endpoint to a
/// destination beyond the node: it has no L4 header; its flow is the one
/// its first fragment's ports (in `FRAGS`) name, which must be live and
/// translated to this network's address. Only its IPv4 header changes
/// (source, TTL, checksum); it takes the flow's cached next hop.
#[inline(never)]
pub fn egress_fragment(ctx: &TcContext, req: &NatRequest) -> Verdict {
    let (snat, ip) = (&req.snat, &req.ip);
    let Some(p) = maps::frag_get(&FragKey::new(ip.proto, ip.saddr, ip.daddr, ip.id)) else {
        return drop(reason::DROP_FRAG_UNKNOWN);
    };
    let key = CtKey::new(ip.proto, ip.saddr, ip.daddr, p.sport, p.dport);
    let now = conntrack::now();
    let Some(e) = conntrack::get(&key) else {
        return drop(reason::DROP_FRAG_UNKNOWN);
    };
    if e.flags & CT_F_REVERSE != 0 || e.expires_ns <= now || e.addr != snat.addr {
        return drop(reason::DROP_FRAG_UNKNOWN);
    }
    if ip.ttl <= 1 {
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }
    let Some(fib) = maps::scratch_fib() else {
        return drop(reason::DROP_FRAG_UNKNOWN);
    };
    let len = ctx.len();
    let rc = if fib::cached_hop(ctx, e, snat.uplink_ifindex, len, now, fib) {
        BPF_FIB_LKUP_RET_SUCCESS
    } else {
        let l4 = L4 { sport: p.sport, dport: p.dport, csum_off: 0, port_off: 0, tcp_flags: 0, sane: true };
        let rc = fib::lookup(ctx, ip, &l4, fib);
        if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED {
            return drop(reason::DROP_NAT_FRAGMENT);
        }
        if !fib::routed(rc) || (snat.uplink_ifindex != 0 && fib.ifindex != snat.uplink_ifindex) {
            return pass(reason::PASS_NAT_NOT_ROUTED);
        }
        rc
    };
    e.tx_packets += 1;
    e.tx_bytes += u64::from(len);
    e.last_seen_ns = now;
    let Some(iph) = hdr::ipv4(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    csum::forward_ipv4(iph, Nat::Src(snat.addr));
    let was = u64::from(ip.saddr) | (u64::from(u16::from_be(p.sport)) << 32);
    match fib::redirect(ctx, rc, fib) {
        Ok(out_if) => Verdict { was, ..redirect(reason::FWD_NAT, out_if) },
        Err(reason::DROP_TRUNCATED) => drop(reason::DROP_TRUNCATED),
        Err(code) => Verdict { was, ..drop(code) },
    }
}

// ---------------------------------------------------------------------------
// reverse NAT on the uplink

/// The verdict for a frame on the uplink; `ep` receives the endpoint it was
/// translated for (left alone when none).
#[inline(never)]
pub fn from_uplink(ctx: &TcContext, ep: &mut EndpointInfo) -> Verdict {
    // A tagged frame (tag taken off into skb->vlan_tci) belongs to the
    // node's VLAN interfaces, never to a flow we sent untagged.
    if (ctx.len() as usize) < ETH_HLEN + IPV4_MIN_HLEN || hdr::skb_vlan_present(ctx) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // The L4 header is read with bpf_skb_load_bytes: only Ethernet and the
    // fixed IPv4 header need to be linear (never pull payload).
    if !hdr::linear(ctx, ETH_HLEN + IPV4_MIN_HLEN) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let (Some(eth), Some(iph)) = (hdr::eth(ctx), hdr::ipv4(ctx)) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let eth_proto = u16::from_be(eth.proto);
    let (version_ihl, frag_off, ttl, proto, id) =
        (iph.version_ihl, u16::from_be(iph.frag_off), iph.ttl, iph.proto, iph.id);
    let tot_len = usize::from(u16::from_be(iph.tot_len));
    let (saddr, daddr) = (iph.saddr, iph.daddr);
    let hlen = usize::from(version_ihl & 0x0f) * 4;
    // Not IPv4 or a protocol we never translate: the node's.
    if eth_proto != ETH_P_IP
        || version_ihl >> 4 != 4
        || hlen < IPV4_MIN_HLEN
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP)
    {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // A later fragment: its flow is its first fragment's.
    if frag_off & IP_OFFSET != 0 {
        return reply_fragment(ctx, ep, &FragKey::new(proto, saddr, daddr, id), ttl);
    }
    let first_frag = frag_off & IP_MF_OFFSET != 0;
    let l4off = ETH_HLEN + hlen;
    // Where the IP payload ends, within the frame (tot_len 0: a GRO packet
    // beyond 64 KiB).
    let len = ctx.len() as usize;
    let end = if tot_len == 0 || ETH_HLEN + tot_len > len { len } else { ETH_HLEN + tot_len };
    let Some(l4) = read_l4(ctx, proto, l4off, end, first_frag) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    if proto == IPPROTO_ICMP && l4.tcp_flags != ICMP_ECHO_REPLY {
        if l4.tcp_flags == ICMP_DEST_UNREACH || l4.tcp_flags == ICMP_TIME_EXCEEDED {
            let packed = u64::from(daddr) | ((l4off as u64) << 32) | (u64::from(ttl) << 40);
            return icmp_error(ctx, packed, ep);
        }
        return pass(reason::PASS_UPLINK_HOST);
    }
    // The id of a first fragment, flagged above the 16 bits (0: whole).
    let frag_id = if first_frag { 0x1_0000 | u32::from(id) } else { 0 };
    reply(ctx, ep, CtKey::new(proto, saddr, daddr, l4.sport, l4.dport), (ttl, frag_id), &l4)
}

/// The forward entry of the flow whose reply tuple is `key`, when the flow
/// is live and still translated to `key`'s destination address and port (a
/// reverse entry left behind by a reused tuple must not deliver), with the
/// endpoint's original address and port.
#[inline(always)]
fn flow_of_reply<'a>(key: &CtKey, now: u64) -> Option<(&'a mut CtEntry, u32, u16)> {
    let rev = conntrack::get(key)?;
    let (rflags, raddr, rport) = (rev.flags, rev.addr, rev.port);
    if rflags & CT_F_REVERSE == 0 {
        return None;
    }
    let fwd = conntrack::get(&CtKey::forward_of(key, raddr, rport))?;
    if fwd.expires_ns <= now || fwd.flags & CT_F_REVERSE != 0 || fwd.addr != key.daddr || fwd.port != key.dport {
        return None;
    }
    Some((fwd, raddr, rport))
}

/// A later fragment (offset > 0) of a reply on the uplink: its flow is the
/// one its first fragment matched (in `FRAGS`); only its IPv4 header
/// changes (destination, TTL, checksum). A fragment of no known datagram is
/// the node's own traffic.
#[inline(never)]
fn reply_fragment(ctx: &TcContext, ep: &mut EndpointInfo, fk: &FragKey, ttl: u8) -> Verdict {
    let Some(p) = maps::frag_get(fk) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let key = CtKey::new(fk.proto, fk.saddr, fk.daddr, p.sport, p.dport);
    let now = conntrack::now();
    let Some((fwd, raddr, _)) = flow_of_reply(&key, now) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let Some(e) = maps::endpoint_by_ip(raddr) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    let was = u64::from(key.daddr) | (u64::from(u16::from_be(key.dport)) << 32);
    if ttl <= 1 {
        return Verdict { was, ..drop(reason::DROP_TTL_EXCEEDED) };
    }
    fwd.rx_packets += 1;
    fwd.rx_bytes += u64::from(ctx.len());
    fwd.last_seen_ns = now;
    deliver(ctx, ep, raddr, was)
}

/// A reply (`key`: its tuple as it arrived) of a translated flow: restores
/// the endpoint's address and port and delivers it. A reply of a flow whose
/// L4 header is not [`L4::sane`] is dropped, not translated (the node's own
/// traffic is left to the kernel). `(ttl, frag_id)`: the TTL, and for the
/// first fragment of a datagram its IP id with bit 16 set (0 otherwise),
/// under which its ports are remembered for the later fragments.
#[inline(always)]
fn reply(ctx: &TcContext, ep: &mut EndpointInfo, key: CtKey, (ttl, frag_id): (u8, u32), l4: &L4) -> Verdict {
    let (proto, daddr) = (key.proto, key.daddr);
    let now = conntrack::now();
    let Some((fwd, raddr, rport)) = flow_of_reply(&key, now) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let Some(e) = maps::endpoint_by_ip(raddr) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    let was = u64::from(daddr) | (u64::from(u16::from_be(key.dport)) << 32);
    if !l4.sane {
        return Verdict { was, ..drop(reason::DROP_BAD_L4_HEADER) };
    }
    if ttl <= 1 {
        return Verdict { was, ..drop(reason::DROP_TTL_EXCEEDED) };
    }
    let tcp_flags = if proto == IPPROTO_TCP { l4.tcp_flags } else { 0 };
    let len = ctx.len();
    conntrack::update(fwd, proto, true, tcp_flags, len, now);
    if frag_id != 0 {
        remember_fragment(&key, frag_id as u16);
    }

    let port_off = if proto == IPPROTO_ICMP { l4.port_off } else { l4.port_off + 2 };
    let l4w = L4 { port_off, ..*l4 };
    if !csum::rewrite_l4(ctx, daddr, raddr, &l4w, key.dport, rport, proto) {
        return drop(reason::DROP_TRUNCATED);
    }
    deliver(ctx, ep, raddr, was)
}

/// An ICMP destination unreachable / time exceeded about a translated flow:
/// the quoted packet is the one we sent (masq:port -> remote). Restores the
/// quoted source address and port and the outer destination, fixing the
/// quoted IPv4 checksum, the ICMP checksum and the outer IPv4 checksum.
///
/// `packed`: outer destination address (bits 0-31), offset of the ICMP
/// header (32-39), outer TTL (40-47), packed to stay within the five
/// registers of a BPF call.
#[inline(never)]
fn icmp_error(ctx: &TcContext, packed: u64, ep: &mut EndpointInfo) -> Verdict {
    let daddr = packed as u32;
    let l4off = ((packed >> 32) & 0xff) as usize;
    let ttl = (packed >> 40) as u8;
    let inner = l4off + 8;
    let Ok(ih) = ctx.load::<[u8; 20]>(inner) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let iproto = ih[9];
    let isaddr = u32::from_ne_bytes([ih[12], ih[13], ih[14], ih[15]]);
    let idaddr = u32::from_ne_bytes([ih[16], ih[17], ih[18], ih[19]]);
    // Only option-less quoted headers, from us.
    if ih[0] != 0x45 || isaddr != daddr {
        return pass(reason::PASS_UPLINK_HOST);
    }
    if iproto != IPPROTO_TCP && iproto != IPPROTO_UDP && iproto != IPPROTO_ICMP {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let Ok(il4) = ctx.load::<[u8; 8]>(inner + 20) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // The quoted packet as we sent it, and where its source port is.
    let (quoted, port_off) = if iproto == IPPROTO_ICMP {
        if il4[0] != ICMP_ECHO_REQUEST {
            return pass(reason::PASS_UPLINK_HOST);
        }
        let (sport, dport) = CtKey::icmp_echo_ports(true, u16::from_ne_bytes([il4[4], il4[5]]));
        (CtKey::new(iproto, isaddr, idaddr, sport, dport), inner + 24)
    } else {
        let (sport, dport) = (u16::from_ne_bytes([il4[0], il4[1]]), u16::from_ne_bytes([il4[2], il4[3]]));
        (CtKey::new(iproto, isaddr, idaddr, sport, dport), inner + 20)
    };
    let iport = quoted.sport;
    let key = CtKey::reply_of(&quoted, isaddr, iport);
    let Some(rev) = conntrack::get(&key) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let (rflags, raddr, rport) = (rev.flags, rev.addr, rev.port);
    if rflags & CT_F_REVERSE == 0 {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let Some(e) = maps::endpoint_by_ip(raddr) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    let was = u64::from(daddr) | (u64::from(u16::from_be(iport)) << 32);
    if ttl <= 1 {
        return Verdict { was, ..drop(reason::DROP_TTL_EXCEEDED) };
    }
    // Count the error against the flow, as a reply.
    let len = ctx.len();
    if let Some(fwd) = conntrack::get(&CtKey::forward_of(&key, raddr, rport)) {
        fwd.rx_packets += 1;
        fwd.rx_bytes += u64::from(len);
    }
    let iold_csum = u16::from_ne_bytes([ih[10], ih[11]]);
    if !csum::rewrite_quote(ctx, l4off, (isaddr, iport), (raddr, rport), port_off, iold_csum) {
        return drop(reason::DROP_TRUNCATED);
    }
    deliver(ctx, ep, raddr, was)
}

/// The last step of a reverse translation: MACs (from the network's gateway
/// to the endpoint), TTL - 1 and the destination `new_daddr` with the IPv4
/// checksum fixed, in one store; then `bpf_redirect_peer` into the endpoint.
#[inline(always)]
fn deliver(ctx: &TcContext, ep: &EndpointInfo, new_daddr: u32, was: u64) -> Verdict {
    let Some(mut h) = hdr::hdrs_copy(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    h[..6].copy_from_slice(&ep.mac);
    h[6..12].copy_from_slice(&ep.gw_mac);
    csum::forward_hdrs(&mut h, Nat::Dst(new_daddr));
    if ctx.store(0, &h, 0).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }
    let _ = ctx.change_type(PACKET_HOST);
    if !fib::redirect_peer(ep.ifindex) {
        return Verdict { was, ..drop(reason::DROP_REDIRECT_FAILED) };
    }
    Verdict { was, ..redirect(reason::FWD_REVNAT, ep.ifindex) }
}
