//! NAT66: the masquerade of IPv6 leaving the node from a network that
//! masquerades it (source translation to the uplink's global IPv6 address
//! and a port of the network's NAT range), and the reverse translation of
//! replies and ICMPv6 errors on the uplink. The IPv6 counterpart of `nat`,
//! on the `CT6` tracker (`conntrack6`), counted under the same reason codes.
//!
//! * `egress` (from `dp_from_ep`, for what `ipv6::from_endpoint` found
//!   beyond the node): TCP, UDP and ICMPv6 echo requests are tracked and
//!   translated (L4 checksum with the pseudo-header fixed, hop limit - 1)
//!   and sent out the uplink (next hop from `bpf_fib_lookup` AF_INET6,
//!   cached in the flow's entry like IPv4's). A hop limit that expires, a
//!   packet too big for the uplink or one not routed out of it goes to the
//!   kernel untranslated, which answers with the ICMPv6 error. The replies
//!   of connections to an endpoint's published IPv6 ports (the kernel's
//!   DNAT) and ICMPv6 errors an endpoint sends go to the kernel too.
//! * Fragments (a fragment header right after the fixed header, what
//!   senders emit; another place is `drop-nat6-fragment`): the first
//!   fragment of a datagram is translated like a whole packet and its
//!   ports remembered in `FRAGS6` under (addresses, 32-bit identification,
//!   protocol); the later ones take their flow from there and only have
//!   their address and hop limit rewritten, both ways (as `nat` does for
//!   IPv4).
//! * `from_uplink` (`dp_from_uplink`, for IPv6 frames): a reply of a
//!   translated flow (TCP, UDP, echo reply) or an ICMPv6 error about one
//!   (destination unreachable, packet too big, time exceeded, parameter
//!   problem: the quoted packet's source address and port restored too) is
//!   translated back and delivered into the endpoint with
//!   `bpf_redirect_peer`. Anything else passes: the node's own traffic
//!   (and replies with extension headers other than a fragment header).

use aya_ebpf::{bindings::BPF_FIB_LKUP_RET_SUCCESS, programs::TcContext};
use datapath_common::{
    is_icmp, reason, reply_ports6, CtEntry6, CtKey6, EndpointInfo, FragPorts, Published6Key, CT_F_REVERSE,
    CT_TCP_CLOSING, EP_F_KERNEL_FLOWS, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack,
    conntrack6::{self, eq6, Snat6},
    csum6, fib,
    hdr::{self, read_l4, ETH_HLEN, L4, PACKET_HOST, TCP_ACK, TCP_RST, TCP_SYN},
    ipv6::Pkt6,
    maps::{self, Pending6, Req6},
    verdict::{count, drop, pass, redirect, Verdict},
};

/// The fixed IPv6 header and the offsets of its fields in the frame.
const IPV6_HLEN: usize = 40;
const HOP_OFF: usize = ETH_HLEN + 7;
const SADDR_OFF: usize = ETH_HLEN + 8;
const DADDR_OFF: usize = ETH_HLEN + 24;

/// The fragment header, when it follows the fixed header at once.
const FRAG_OFF: usize = ETH_HLEN + IPV6_HLEN;
const NEXTHDR_FRAGMENT: u8 = 44;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAM_PROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The upper-layer header of an IPv6 packet at `off` (payload ending at
/// `end`), as `hdr::read_l4` reads IPv4's; for ICMPv6 the echo identifier
/// follows the `CtKey` convention and `tcp_flags` carries the type.
#[inline(always)]
fn read_l4_6(ctx: &TcContext, proto: u8, off: usize, end: usize, first_frag: bool) -> Option<L4> {
    if proto != IPPROTO_ICMPV6 {
        return read_l4(ctx, proto, off, end, first_frag);
    }
    let h: [u8; 8] = ctx.load(off).ok()?;
    let id = u16::from_ne_bytes([h[4], h[5]]);
    let (sport, dport) = datapath_common::CtKey::icmp_echo_ports(h[0] == ICMPV6_ECHO_REQUEST, id);
    Some(L4 { sport, dport, csum_off: off + 2, port_off: off + 4, tcp_flags: h[0], sane: off + 8 <= end })
}

/// What a packet of a flow brings to its entry.
struct Seen {
    proto: u8,
    tcp_flags: u8,
    syn: bool,
    len: u32,
    now: u64,
}

/// The masquerade of a packet `p` from endpoint `src` beyond the node:
/// [`egress`], and [`egress_new`] when it starts a new flow, each out of
/// line (their frames are not stacked: the port search is the deepest).
/// Out of line itself, so `dp_from_ep`'s frame stays what the IPv4
/// masquerade's chain allows.
#[inline(never)]
pub fn beyond(ctx: &TcContext, src: &EndpointInfo, p: &Pkt6) -> Verdict {
    if !stash(p) {
        return pass(reason::PASS_IPV6);
    }
    let v = egress(ctx, src);
    if v.code == NEW_FLOW {
        return egress_new(ctx, src);
    }
    v
}

/// Hands the packet `p` to [`egress`] (through `SCRATCH6`, see
/// `maps::Req6`); `false` when the slot is missing.
#[inline(always)]
fn stash(p: &Pkt6) -> bool {
    let Some(r) = maps::scratch6_req() else {
        return false;
    };
    *r = Req6 {
        l4_off: p.l4_off,
        end: p.end,
        network_id: p.network_id,
        proto: p.proto,
        fragment: u8::from(p.fragment),
        _pad: [0; 2],
    };
    true
}

/// Masquerade of the packet [`stash`] handed over, from endpoint `src`
/// beyond the node. Out of line, called from `dp_from_ep`; the tuple and
/// the masquerade live in the per-CPU `SCRATCH6`, the steps are out of
/// line (the chain's stack).
#[inline(never)]
fn egress(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    let Some(p) = maps::scratch6_req() else {
        return pass(reason::PASS_IPV6);
    };
    let proto = p.proto;
    // A fragment: only with the fragment header right after the fixed
    // header (what senders emit); a later one takes its first one's flow.
    let mut frag_id = None;
    if p.fragment != 0 {
        let (Ok(nh), Ok(fh)) = (ctx.load::<u8>(ETH_HLEN + 6), ctx.load::<[u8; 8]>(FRAG_OFF)) else {
            return drop(reason::DROP_TRUNCATED);
        };
        if nh != NEXTHDR_FRAGMENT {
            return drop(reason::DROP_NAT6_FRAGMENT);
        }
        let id = u32::from_ne_bytes([fh[4], fh[5], fh[6], fh[7]]);
        if u16::from_be_bytes([fh[2], fh[3]]) & 0xfff8 != 0 {
            return egress_fragment(ctx, u64::from(id) | (u64::from(proto) << 32));
        }
        frag_id = Some(id);
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMPV6 {
        return drop(reason::DROP_NAT_PROTO);
    }
    let (Some(net6), Some(net), Some((key, snat))) =
        (maps::network6_ref(p.network_id), maps::network(p.network_id), maps::scratch6_flow())
    else {
        return pass(reason::PASS_IPV6);
    };
    snat.addr = net6.masq_addr;
    snat.uplink_ifindex = net6.uplink_ifindex;
    snat.port_min = net.nat_port_min;
    snat.port_max = net.nat_port_max;
    let Some(l4) = read_l4_6(ctx, proto, p.l4_off as usize, p.end as usize, frag_id.is_some()) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if !l4.sane {
        return drop(reason::DROP_BAD_L4_HEADER);
    }
    if proto == IPPROTO_ICMPV6 && l4.tcp_flags != ICMPV6_ECHO_REQUEST {
        // An error an endpoint sends (about a connection to a published
        // port, the kernel's): for the kernel. Other messages are not
        // translated.
        if l4.tcp_flags < ICMPV6_ECHO_REQUEST {
            return pass(reason::PASS_KERNEL_FLOW);
        }
        return drop(reason::DROP_NAT_PROTO);
    }
    let Ok(hop) = ctx.load::<u8>(HOP_OFF) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if !hdr::load16(ctx, SADDR_OFF, &mut key.saddr) || !hdr::load16(ctx, DADDR_OFF, &mut key.daddr) {
        return drop(reason::DROP_TRUNCATED);
    }
    key.sport = l4.sport;
    key.dport = l4.dport;
    key.proto = proto;
    key._pad = [0; 3];
    if let Some(id) = frag_id {
        // The later fragments of the datagram find their flow by this.
        remember_fragment(key, id);
    }
    if hop <= 1 {
        // The kernel answers with time exceeded.
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }
    let Some(fib) = maps::scratch_fib() else {
        return pass(reason::PASS_IPV6);
    };
    let tcp_flags = if proto == IPPROTO_TCP { l4.tcp_flags } else { 0 };
    let syn = proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    let seen = Seen { proto, tcp_flags, syn, len: ctx.len(), now: conntrack::now() };

    // Fast path: a live flow with its next hop cached.
    if let Some(e) = conntrack6::get(key) {
        if e.e.flags & CT_F_REVERSE == 0
            && e.e.expires_ns > seen.now
            && eq6(&e.addr, &snat.addr)
            && !(syn && e.e.state >= CT_TCP_CLOSING)
            && fib::cached_hop(ctx, &e.e, snat.uplink_ifindex, seen.len, seen.now, fib)
        {
            conntrack::update(&mut e.e, proto, false, tcp_flags, seen.len, seen.now);
            let nat_port = e.e.port;
            return send(ctx, &l4, packed_send(nat_port, hop, BPF_FIB_LKUP_RET_SUCCESS));
        }
    }

    // Slow path: route first, only what leaves through the uplink is
    // translated; a packet too big goes to the kernel, which answers with
    // packet too big (IPv6 is never fragmented on the way).
    let rc = fib::lookup6(ctx, (&key.saddr, &key.daddr), proto, (l4.sport, l4.dport), fib);
    if !fib::routed(rc) || (snat.uplink_ifindex != 0 && fib.ifindex != snat.uplink_ifindex) {
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }
    // The port in the low 16 bits, or a verdict code above (no `Result`:
    // its undefined payload on one side makes code the verifier refuses).
    let got = flow(key, snat, src, &seen);
    if got >> 16 == CREATE {
        // A new flow: `dp_from_ep` calls `egress_new` next (the port
        // search's frame is not stacked on this one). The low 16 bits: the
        // port to try first.
        let Some(n) = maps::scratch6_pending() else {
            return drop(reason::DROP_CT_TABLE_FULL);
        };
        *n = Pending6 {
            csum_off: l4.csum_off as u32,
            port_off: l4.port_off as u32,
            rc,
            hint: got as u16,
            hop,
            tcp_flags,
        };
        return pass(NEW_FLOW);
    }
    let nat_port = match got >> 16 {
        0 => got as u16,
        reason::PASS_KERNEL_FLOW => return pass(reason::PASS_KERNEL_FLOW),
        code => {
            if code == reason::DROP_NAT_NO_PORT {
                if let Some(ns) = maps::net_stats(p.network_id) {
                    ns.nat_no_port.packets += 1;
                    ns.nat_no_port.bytes += u64::from(seen.len);
                }
            }
            return drop(code);
        }
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if let Some(e) = conntrack6::get(key) {
            fib::remember(&mut e.e, fib, seen.now);
        }
    }
    send(ctx, &l4, packed_send(nat_port, hop, rc))
}

/// The NAT port of the flow of `key` (wire order, bits 0-15), its
/// entries created when there is no live one; or the verdict code in bits
/// 16-31 (a drop, or `PASS_KERNEL_FLOW` for a packet of the kernel's).
#[inline(never)]
fn flow(key: &CtKey6, snat: &Snat6, src: &EndpointInfo, s: &Seen) -> u32 {
    match flow_port(key, snat, src, s) {
        Ok(port) => u32::from(port),
        Err(x) if x >> 16 == CREATE => x,
        Err(code) => code << 16,
    }
}

#[inline(always)]
fn flow_port(key: &CtKey6, snat: &Snat6, src: &EndpointInfo, s: &Seen) -> Result<u16, u32> {
    let mut hint = 0u16;
    if let Some(e) = conntrack6::get(key) {
        if e.e.flags & CT_F_REVERSE == 0 && e.e.expires_ns > s.now && eq6(&e.addr, &snat.addr) {
            let reopen = s.syn && e.e.state >= CT_TCP_CLOSING;
            let reuse = reopen && conntrack6::reverse_is(&CtKey6::reply_of(key, snat.addr, e.e.port), key);
            if reuse {
                conntrack::restart(&mut e.e, s.now);
                count(reason::EV_NAT_PORT_REUSED, s.len);
            }
            if !reopen || reuse {
                conntrack::update(&mut e.e, s.proto, false, s.tcp_flags, s.len, s.now);
                return Ok(e.e.port);
            }
        }
        if e.e.flags & CT_F_REVERSE == 0 {
            let rkey = CtKey6::reply_of(key, e.addr, e.e.port);
            if conntrack6::reverse_is(&rkey, key) {
                conntrack6::remove(&rkey);
            }
            if eq6(&e.addr, &snat.addr) {
                hint = e.e.port;
            }
        }
        conntrack6::remove(key);
    }
    // No flow of ours: the reply of a connection to a published port (the
    // kernel translated it), or a TCP segment of no flow.
    if !is_icmp(key.proto) && maps::published6(&Published6Key::new(key.proto, key.saddr, key.sport)) {
        return Err(reason::PASS_KERNEL_FLOW);
    }
    if s.proto == IPPROTO_TCP && !s.syn {
        if src.flags & EP_F_KERNEL_FLOWS != 0 {
            return Err(reason::PASS_KERNEL_FLOW);
        }
        return Err(reason::DROP_CT_INVALID);
    }
    Err((CREATE << 16) | u32::from(hint))
}

/// `flow`'s answer for a packet that starts a new flow.
const CREATE: u32 = 0xffff;

/// The verdict code of [`egress`] for a packet that starts a new flow
/// (never counted: `dp_from_ep` then calls [`egress_new`]).
const NEW_FLOW: u32 = u32::MAX;

/// The packet [`egress`] found to start a new flow (its tuple, masquerade
/// and next hop in the scratch maps): creates the flow's entries (port
/// search), translates and sends it. Out of line, called from
/// `dp_from_ep` after `egress`.
#[inline(never)]
fn egress_new(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    let (Some((key, snat)), Some(n), Some(fib)) =
        (maps::scratch6_flow(), maps::scratch6_pending(), maps::scratch_fib())
    else {
        return drop(reason::DROP_CT_TABLE_FULL);
    };
    let (len, now) = (ctx.len(), conntrack::now());
    let packed = u64::from(src.ifindex) | (u64::from(n.hint) << 32);
    let port = match conntrack6::create(key, packed, snat, now) {
        Ok(p) => p,
        Err(code) => {
            if code == reason::DROP_NAT_NO_PORT {
                if let Some(ns) = maps::net_stats(src.network_id) {
                    ns.nat_no_port.packets += 1;
                    ns.nat_no_port.bytes += u64::from(len);
                }
            }
            return drop(code);
        }
    };
    count(reason::EV_CT_CREATED, len);
    if let Some(ns) = maps::net_stats(src.network_id) {
        ns.nat_flows += 1;
    }
    if let Some(e) = conntrack6::get(key) {
        conntrack::update(&mut e.e, key.proto, false, n.tcp_flags, len, now);
        if n.rc == BPF_FIB_LKUP_RET_SUCCESS {
            fib::remember(&mut e.e, fib, now);
        }
    }
    let l4 = L4 {
        sport: key.sport,
        dport: key.dport,
        csum_off: n.csum_off as usize,
        port_off: n.port_off as usize,
        tcp_flags: n.tcp_flags,
        sane: true,
    };
    send(ctx, &l4, packed_send(port, n.hop, n.rc))
}

/// Translation of the packet of `key` to `nat` (address, port) and
/// redirect to the next hop in `SCRATCH`'s `fib` (`packed`, see
/// [`packed`]: the NAT port, the hop limit as it came, the lookup's
/// result, SUCCESS or NO_NEIGH). The tuple and the masquerade address are
/// `SCRATCH6`'s.
#[inline(never)]
fn send(ctx: &TcContext, l4: &L4, packed: u64) -> Verdict {
    let (nat_port, hop, rc) = (packed as u16, (packed >> 16) as u8, (packed >> 32) as u32);
    let (Some((key, snat)), Some(fib)) = (maps::scratch6_flow(), maps::scratch_fib()) else {
        return drop(reason::DROP_TRUNCATED);
    };
    let nat = (&snat.addr, nat_port);
    if !csum6::rewrite(ctx, key.proto, (SADDR_OFF, &key.saddr, nat.0), (l4.csum_off, l4.port_off), (key.sport, nat.1))
        || ctx.store(HOP_OFF, &(hop - 1), 0).is_err()
    {
        return drop(reason::DROP_TRUNCATED);
    }
    match fib::redirect(ctx, rc, fib) {
        Ok(out_if) => redirect(reason::FWD_NAT, out_if),
        Err(code) => drop(code),
    }
}

/// Remembers the ports of `key`, the tuple of the first fragment of the
/// datagram `id` (fragment header's identification, wire order), for its
/// later fragments.
#[inline(always)]
fn remember_fragment(key: &CtKey6, id: u32) {
    if let Some(fk) = maps::scratch6_frag() {
        fk.saddr = key.saddr;
        fk.daddr = key.daddr;
        fk.id = id;
        fk.proto = key.proto;
        fk._pad = [0; 3];
        maps::frag6_insert(fk, &FragPorts { sport: key.sport, dport: key.dport });
    }
}

/// A later fragment (offset > 0) of a datagram from an endpoint beyond the
/// node: no L4 header; its flow is the one its first fragment's ports (in
/// `FRAGS6`) name, which must be live and translated to this network's
/// address. Only the source address and the hop limit change. `packed`:
/// the identification (bits 0-31, wire order) and the protocol (32-39).
#[inline(never)]
fn egress_fragment(ctx: &TcContext, packed: u64) -> Verdict {
    let (id, proto) = (packed as u32, (packed >> 32) as u8);
    let (Some((key, snat)), Some(fk), Some(fib)) = (maps::scratch6_flow(), maps::scratch6_frag(), maps::scratch_fib())
    else {
        return drop(reason::DROP_FRAG_UNKNOWN);
    };
    if !hdr::load16(ctx, SADDR_OFF, &mut fk.saddr) || !hdr::load16(ctx, DADDR_OFF, &mut fk.daddr) {
        return drop(reason::DROP_TRUNCATED);
    }
    fk.id = id;
    fk.proto = proto;
    fk._pad = [0; 3];
    let Some(ports) = maps::frag6_get(fk) else {
        return drop(reason::DROP_FRAG_UNKNOWN);
    };
    key.saddr = fk.saddr;
    key.daddr = fk.daddr;
    key.sport = ports.sport;
    key.dport = ports.dport;
    key.proto = proto;
    key._pad = [0; 3];
    let now = conntrack::now();
    let Some(e) = conntrack6::get(key) else {
        return drop(reason::DROP_FRAG_UNKNOWN);
    };
    if e.e.flags & CT_F_REVERSE != 0 || e.e.expires_ns <= now || !eq6(&e.addr, &snat.addr) {
        return drop(reason::DROP_FRAG_UNKNOWN);
    }
    let Ok(hop) = ctx.load::<u8>(HOP_OFF) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if hop <= 1 {
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }
    let len = ctx.len();
    let rc = if fib::cached_hop(ctx, &e.e, snat.uplink_ifindex, len, now, fib) {
        BPF_FIB_LKUP_RET_SUCCESS
    } else {
        let rc = fib::lookup6(ctx, (&key.saddr, &key.daddr), proto, (ports.sport, ports.dport), fib);
        if !fib::routed(rc) || (snat.uplink_ifindex != 0 && fib.ifindex != snat.uplink_ifindex) {
            return pass(reason::PASS_NAT_NOT_ROUTED);
        }
        rc
    };
    e.e.tx_packets += 1;
    e.e.tx_bytes += u64::from(len);
    e.e.last_seen_ns = now;
    if ctx.store(SADDR_OFF, &snat.addr, 0).is_err() || ctx.store(HOP_OFF, &(hop - 1), 0).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }
    match fib::redirect(ctx, rc, fib) {
        Ok(out_if) => redirect(reason::FWD_NAT, out_if),
        Err(code) => drop(code),
    }
}

/// What [`send`] takes in one register: the NAT port (wire order, bits
/// 0-15), the hop limit (16-23), the FIB lookup's result (32-63).
#[inline(always)]
fn packed_send(nat_port: u16, hop: u8, rc: u32) -> u64 {
    u64::from(nat_port) | (u64::from(hop) << 16) | (u64::from(rc) << 32)
}

// ---------------------------------------------------------------------------
// reverse NAT66 on the uplink

/// The verdict for an IPv6 frame on the uplink; `ep` receives the endpoint
/// it was translated for (left alone when none).
#[inline(never)]
pub fn from_uplink(ctx: &TcContext, ep: &mut EndpointInfo) -> Verdict {
    if hdr::skb_vlan_present(ctx) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let Ok(h) = ctx.load::<[u8; 8]>(ETH_HLEN) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let (mut proto, hop) = (h[6], h[7]);
    if h[0] >> 4 != 6 {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // Only what a translated flow's reply can be: no extension headers but
    // a fragment header right after the fixed one.
    let mut l4off = ETH_HLEN + IPV6_HLEN;
    let mut first_frag = false;
    if proto == NEXTHDR_FRAGMENT {
        let (Ok(fh), Some(fk)) = (ctx.load::<[u8; 8]>(FRAG_OFF), maps::scratch6_frag()) else {
            return pass(reason::PASS_UPLINK_HOST);
        };
        proto = fh[0];
        fk.id = u32::from_ne_bytes([fh[4], fh[5], fh[6], fh[7]]);
        fk.proto = proto;
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMPV6 {
            return pass(reason::PASS_UPLINK_HOST);
        }
        if u16::from_be_bytes([fh[2], fh[3]]) & 0xfff8 != 0 {
            return reply_fragment(ctx, ep, hop);
        }
        first_frag = true;
        l4off += 8;
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMPV6 {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let len = ctx.len() as usize;
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    // Payload length 0: a GRO packet beyond 64 KiB (BIG TCP).
    let end = if payload == 0 { len } else { ETH_HLEN + IPV6_HLEN + payload };
    if end > len {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let Some(l4) = read_l4_6(ctx, proto, l4off, end, first_frag) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    if proto == IPPROTO_ICMPV6 && l4.tcp_flags != ICMPV6_ECHO_REPLY {
        if (ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROB).contains(&l4.tcp_flags) && !first_frag {
            return icmp_error(ctx, (l4off as u32) | (u32::from(hop) << 16), ep);
        }
        return pass(reason::PASS_UPLINK_HOST);
    }
    reply(ctx, ep, &l4, u32::from(proto) | (u32::from(hop) << 8) | (u32::from(first_frag) << 16))
}

/// The forward entry of the flow whose reply tuple is `key`, when it is
/// live and still translated to `key`'s destination (its key written to
/// `fkey`), and the endpoint's original address and port.
#[inline(always)]
fn flow_of_reply<'a>(key: &CtKey6, fkey: &mut CtKey6, now: u64) -> Option<(&'a mut CtEntry6, [u8; 16], u16)> {
    let rev = conntrack6::get(key)?;
    let (rflags, raddr, rport) = (rev.e.flags, rev.addr, rev.e.port);
    if rflags & CT_F_REVERSE == 0 {
        return None;
    }
    *fkey = CtKey6::forward_of(key, raddr, rport);
    let fwd = conntrack6::get(fkey)?;
    if fwd.e.expires_ns <= now
        || fwd.e.flags & CT_F_REVERSE != 0
        || !eq6(&fwd.addr, &key.daddr)
        || fwd.e.port != key.dport
    {
        return None;
    }
    Some((fwd, raddr, rport))
}

/// A reply of a translated flow (`packed`: protocol in bits 0-7, hop limit
/// in 8-15, bit 16: the first fragment of a datagram, whose id is in
/// `SCRATCH6`'s `frag`): the endpoint's address and port restored,
/// delivered. The tuples live in `SCRATCH6`.
#[inline(never)]
fn reply(ctx: &TcContext, ep: &mut EndpointInfo, l4: &L4, packed: u32) -> Verdict {
    let (proto, hop, first_frag) = (packed as u8, (packed >> 8) as u8, packed & 0x1_0000 != 0);
    let Some((key, fkey)) = maps::scratch6_keys() else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    if !hdr::load16(ctx, SADDR_OFF, &mut key.saddr) || !hdr::load16(ctx, DADDR_OFF, &mut key.daddr) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    key.sport = l4.sport;
    key.dport = l4.dport;
    key.proto = proto;
    key._pad = [0; 3];
    let now = conntrack::now();
    let Some((fwd, raddr, rport)) = flow_of_reply(key, fkey, now) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let Some(e) = maps::endpoint_by_ip6(&raddr) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    if !l4.sane {
        return drop(reason::DROP_BAD_L4_HEADER);
    }
    if hop <= 1 {
        return drop(reason::DROP_TTL_EXCEEDED);
    }
    let tcp_flags = if proto == IPPROTO_TCP { l4.tcp_flags } else { 0 };
    conntrack::update(&mut fwd.e, proto, true, tcp_flags, ctx.len(), now);
    if first_frag {
        if let Some(fk) = maps::scratch6_frag() {
            remember_fragment(key, fk.id);
        }
    }
    // The destination port (ICMPv6: the echo id, at the same place).
    let port_off = if proto == IPPROTO_ICMPV6 { l4.port_off } else { l4.port_off + 2 };
    if !csum6::rewrite(ctx, proto, (DADDR_OFF, &key.daddr, &raddr), (l4.csum_off, port_off), (key.dport, rport)) {
        return drop(reason::DROP_TRUNCATED);
    }
    deliver(ctx, ep, hop)
}

/// A later fragment (offset > 0) of a reply on the uplink (its id and
/// protocol in `SCRATCH6`'s `frag`): its flow is the one its first
/// fragment matched (in `FRAGS6`); only the destination and the hop limit
/// change. A fragment of no known datagram is the node's.
#[inline(never)]
fn reply_fragment(ctx: &TcContext, ep: &mut EndpointInfo, hop: u8) -> Verdict {
    let (Some((key, fkey)), Some(fk)) = (maps::scratch6_keys(), maps::scratch6_frag()) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    if !hdr::load16(ctx, SADDR_OFF, &mut fk.saddr) || !hdr::load16(ctx, DADDR_OFF, &mut fk.daddr) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    fk._pad = [0; 3];
    let Some(ports) = maps::frag6_get(fk) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    key.saddr = fk.saddr;
    key.daddr = fk.daddr;
    key.sport = ports.sport;
    key.dport = ports.dport;
    key.proto = fk.proto;
    key._pad = [0; 3];
    let now = conntrack::now();
    let Some((fwd, raddr, _)) = flow_of_reply(key, fkey, now) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let Some(e) = maps::endpoint_by_ip6(&raddr) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    if hop <= 1 {
        return drop(reason::DROP_TTL_EXCEEDED);
    }
    fwd.e.rx_packets += 1;
    fwd.e.rx_bytes += u64::from(ctx.len());
    fwd.e.last_seen_ns = now;
    if ctx.store(DADDR_OFF, &raddr, 0).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }
    deliver(ctx, ep, hop)
}

/// An ICMPv6 error about a translated flow: the quoted packet is the one
/// we sent (masquerade address:port -> remote). Restores the quoted source
/// address and port (with the quoted L4 checksum) and the outer
/// destination (with the ICMPv6 checksum), and delivers it. `packed`: the
/// offset of the ICMPv6 header (bits 0-15) and the hop limit (16-23).
#[inline(never)]
fn icmp_error(ctx: &TcContext, packed: u32, ep: &mut EndpointInfo) -> Verdict {
    let l4off = (packed & 0xffff) as usize;
    let hop = (packed >> 16) as u8;
    let inner = l4off + 8;
    let il4off = inner + IPV6_HLEN;
    // The quoted IPv6 header (no extension headers: we send none) and the
    // first 8 bytes of its L4 header.
    let (Ok(ih), Ok(il4)) = (ctx.load::<[u8; 8]>(inner), ctx.load::<[u8; 8]>(il4off)) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let Some((key, fkey)) = maps::scratch6_keys() else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // The reply tuple of the quoted packet: its destination -> its source
    // (the outer destination, in `fkey` meanwhile, must be that source).
    if !hdr::load16(ctx, inner + 8, &mut key.daddr)
        || !hdr::load16(ctx, inner + 24, &mut key.saddr)
        || !hdr::load16(ctx, DADDR_OFF, &mut fkey.daddr)
    {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let iproto = ih[6];
    if ih[0] >> 4 != 6 || !eq6(&key.daddr, &fkey.daddr) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let (sport, dport, csum_off, port_off) = match iproto {
        IPPROTO_TCP => {
            (u16::from_ne_bytes([il4[0], il4[1]]), u16::from_ne_bytes([il4[2], il4[3]]), il4off + 16, il4off)
        }
        IPPROTO_UDP => (u16::from_ne_bytes([il4[0], il4[1]]), u16::from_ne_bytes([il4[2], il4[3]]), il4off + 6, il4off),
        IPPROTO_ICMPV6 if il4[0] == ICMPV6_ECHO_REQUEST => {
            (u16::from_ne_bytes([il4[4], il4[5]]), 0, il4off + 2, il4off + 4)
        }
        _ => return pass(reason::PASS_UPLINK_HOST),
    };
    // The quoted L4 checksum must be there to be fixed.
    if ctx.load::<u16>(csum_off).is_err() {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let (rsport, rdport) = reply_ports6(iproto, dport, sport);
    key.sport = rsport;
    key.dport = rdport;
    key.proto = iproto;
    key._pad = [0; 3];
    let Some(rev) = conntrack6::get(key) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // The endpoint's address, read where it is (the entry: no copy).
    let (rflags, raddr, rport) = (rev.e.flags, &rev.addr, rev.e.port);
    if rflags & CT_F_REVERSE == 0 {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let Some(e) = maps::endpoint_by_ip6(raddr) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    if hop <= 1 {
        return drop(reason::DROP_TTL_EXCEEDED);
    }
    conntrack6::forward_into(fkey, key, raddr, rport);
    if let Some(fwd) = conntrack6::get(fkey) {
        fwd.e.rx_packets += 1;
        fwd.e.rx_bytes += u64::from(ctx.len());
    }
    // One difference for both: the quoted source and the outer
    // destination go from the masquerade address to the endpoint's.
    let d = csum6::addr_diff(&key.daddr, raddr);
    let ok = csum6::rewrite_quoted(ctx, iproto, (inner + 8, raddr, d), (csum_off, port_off), (sport, rport))
        && csum6::rewrite_pseudo(ctx, (DADDR_OFF, raddr, d), l4off + 2);
    if !ok {
        return drop(reason::DROP_TRUNCATED);
    }
    deliver(ctx, ep, hop)
}

/// The last step of a reverse translation: MACs (from the gateway to the
/// endpoint), hop limit - 1, `bpf_redirect_peer` into the endpoint.
#[inline(always)]
fn deliver(ctx: &TcContext, ep: &EndpointInfo, hop: u8) -> Verdict {
    let m = (ep.mac, ep.gw_mac);
    let macs = [m.0[0], m.0[1], m.0[2], m.0[3], m.0[4], m.0[5], m.1[0], m.1[1], m.1[2], m.1[3], m.1[4], m.1[5]];
    if ctx.store(0, &macs, 0).is_err() || ctx.store(HOP_OFF, &(hop - 1), 0).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }
    let _ = ctx.change_type(PACKET_HOST);
    if !fib::redirect_peer(ep.ifindex) {
        return drop(reason::DROP_REDIRECT_FAILED);
    }
    redirect(reason::FWD_REVNAT, ep.ifindex)
}
