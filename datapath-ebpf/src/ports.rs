//! Published ports (`-p`): destination NAT of connections to a node
//! address and host port into the publishing endpoint, with the replies
//! translated back, all in eBPF (no proxy, no netfilter).
//!
//! * `from_uplink` (`dp_from_uplink`, after the reverse NAT found nothing):
//!   a client beyond the uplink. The flow is tracked in `CT`
//!   (`CT_F_DNAT`), the destination becomes the endpoint's address and
//!   container port and the packet is delivered with `bpf_redirect_peer`;
//!   the client's address and port arrive unchanged.
//! * `from_ep` (`dp_from_ep`, for packets beyond the node and to the
//!   sender's gateway): (1) a reply of a publishing endpoint, translated
//!   back (source: the node address and host port) and sent out the uplink
//!   (next hop cached in the reverse entry or `bpf_fib_lookup`, redirect),
//!   or into the client endpoint; (2) an endpoint of the node (any network,
//!   the publishing one itself included: hairpin) connecting to a published
//!   port: destination translated, and source translated to the gateway of
//!   the publishing endpoint's network and a port of its NAT range, so the
//!   replies come back through `dp_from_ep` to be translated back (without
//!   it a reply would go straight to the client, or never leave the
//!   namespace in the hairpin case).
//!
//! The two `CT` entries of a flow are described in `datapath_common::ct`
//! (`CT_F_DNAT`). Only TCP and UDP are published; a malformed L4 header is
//! dropped (`drop-port-malformed`), never translated; a TCP segment without
//! SYN that matches no flow is left to the kernel (it may be a reply to one
//! of the node's own connections whose local port is a published one; a
//! stray one is reset by the kernel).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use datapath_common::{
    reason, CtEntry, CtKey, EndpointInfo, PortKey, PortTarget, CT_F_DNAT, CT_F_REVERSE, CT_F_SNAT, CT_NEW,
    CT_TCP_CLOSING, CT_TCP_SYN_SENT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack,
    csum::{self, Nat},
    fib,
    hdr::{
        self, read_l4, Ip, Ipv4Hdr, ETH_HLEN, ETH_P_IP, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, IPV4_MIN_HLEN,
        IP_MF_OFFSET, L4, PACKET_HOST, TCP_ACK, TCP_RST, TCP_SYN,
    },
    maps,
    verdict::{count, drop, redirect, Verdict},
};

/// Source ports tried for a client endpoint's flow before
/// `drop-port-tuple-taken`.
const SNAT_TRIES: u32 = 4;
const NS: u64 = 1_000_000_000;

/// What the packet brings: protocol, TCP flags, whether it may start a
/// flow (UDP, or a TCP SYN without ACK).
#[inline(always)]
fn opens(proto: u8, l4: &L4) -> bool {
    proto == IPPROTO_UDP || l4.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

#[inline(always)]
fn tcp_flags(proto: u8, l4: &L4) -> u8 {
    if proto == IPPROTO_TCP {
        l4.tcp_flags
    } else {
        0
    }
}

/// `was` of a trace line: an address and a port (wire order).
#[inline(always)]
fn was(addr: u32, port: u16) -> u64 {
    u64::from(addr) | (u64::from(u16::from_be(port)) << 32)
}

/// The IPv4 header checksum after the 32-bit word `old` became `new`
/// (RFC 1624, wire order).
#[inline(always)]
fn csum_word(check: u16, old: u32, new: u32) -> u16 {
    let mut s =
        u32::from(!check) + u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16)) + (new & 0xffff) + (new >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The destination of the IPv4 header becomes `new` (checksum fixed).
#[inline(always)]
fn set_daddr(ip: &mut Ipv4Hdr, new: u32) {
    ip.check = csum_word(ip.check, ip.daddr, new);
    ip.daddr = new;
}

/// The L4 port at `off` (from `old` to `new`) and the pseudo-header
/// address (from `old_addr` to `new_addr`) of the packet, checksum fixed.
#[inline(always)]
fn rewrite(ctx: &TcContext, l4: &L4, off: usize, addr: (u32, u32), port: (u16, u16), proto: u8) -> bool {
    let l = L4 { port_off: off, ..*l4 };
    csum::rewrite_l4(ctx, addr.0, addr.1, &l, port.0, port.1, proto)
}

/// Delivers the translated packet into the endpoint `ep` (MACs from its
/// gateway to it, `bpf_redirect_peer`); the IPv4 header is done.
#[inline(always)]
fn deliver(ctx: &TcContext, ep: &EndpointInfo, code: u32, was: u64) -> Verdict {
    let Some(eth) = hdr::eth(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    eth.dst = hdr::mac(ep.mac);
    eth.src = hdr::mac(ep.gw_mac);
    let _ = ctx.change_type(PACKET_HOST);
    if !fib::redirect_peer(ep.ifindex) {
        return Verdict { was, dst_flags: ep.flags, ..drop(reason::DROP_REDIRECT_FAILED) };
    }
    Verdict { was, dst_flags: ep.flags, ..redirect(code, ep.ifindex) }
}

/// The forward entry of the flow whose reverse entry `rev` sits at `rkey`,
/// when it is live and still this flow's.
#[inline(always)]
fn forward_of<'a>(rkey: &CtKey, rev: &CtEntry, now: u64) -> Option<&'a mut CtEntry> {
    let (fkey, addr, port) = rkey.partner(rev);
    let f = conntrack::get(&fkey)?;
    let ours = f.flags & (CT_F_REVERSE | CT_F_DNAT) == CT_F_DNAT && f.addr == addr && f.port == port;
    if !ours || f.expires_ns <= now {
        return None;
    }
    Some(f)
}

/// Inserts both entries of a new flow: the reverse one first (it reserves
/// the reply tuple; `BPF_NOEXIST` unless the tuple's old entry is this
/// same flow's), then the forward one. `false`: the reply tuple is taken or
/// the table refused.
#[inline(always)]
fn insert_flow(key: &CtKey, fwd: &CtEntry, rkey: &CtKey, rev: &CtEntry) -> bool {
    let flags = match conntrack::get(rkey) {
        // Left by an earlier flow of the same tuple (expired, restarted).
        Some(old) if old.flags & CT_F_REVERSE != 0 && old.addr == rev.addr && old.port == rev.port => 0,
        Some(_) => return false,
        None => u64::from(BPF_NOEXIST),
    };
    if maps::ct_insert(rkey, rev, flags).is_err() {
        return false;
    }
    if maps::ct_insert(key, fwd, 0).is_err() {
        conntrack::remove(rkey);
        return false;
    }
    true
}

/// The expiry of a new flow of `proto`.
#[inline(always)]
fn new_state(proto: u8, now: u64) -> (u8, u64) {
    let state = if proto == IPPROTO_TCP { CT_TCP_SYN_SENT } else { CT_NEW };
    (state, now + u64::from(maps::ct_config().lifetime_s(proto, state)) * NS)
}

/// A forward entry that is a flow through a published port and may carry
/// this packet (live; a SYN on a closing one starts it afresh).
#[inline(always)]
fn live_forward(e: &CtEntry, syn: bool, now: u64) -> bool {
    e.flags & (CT_F_REVERSE | CT_F_DNAT) == CT_F_DNAT && e.expires_ns > now && !(syn && e.state >= CT_TCP_CLOSING)
}

// ---------------------------------------------------------------------------
// from the uplink

/// A packet on the uplink that the reverse NAT left alone: a connection to
/// a published port (new or tracked) is translated and delivered into the
/// endpoint; anything else is `None` (the node's own traffic).
#[inline(never)]
pub fn from_uplink(ctx: &TcContext, ep: &mut EndpointInfo) -> Option<Verdict> {
    if (ctx.len() as usize) < ETH_HLEN + IPV4_MIN_HLEN || hdr::skb_vlan_present(ctx) {
        return None;
    }
    if !hdr::linear(ctx, ETH_HLEN + IPV4_MIN_HLEN) {
        return None;
    }
    let (eth, iph) = (hdr::eth(ctx)?, hdr::ipv4(ctx)?);
    let (version_ihl, frag_off, ttl, proto) = (iph.version_ihl, u16::from_be(iph.frag_off), iph.ttl, iph.proto);
    let (saddr, daddr, tot_len) = (iph.saddr, iph.daddr, usize::from(u16::from_be(iph.tot_len)));
    let hlen = usize::from(version_ihl & 0x0f) * 4;
    if u16::from_be(eth.proto) != ETH_P_IP
        || version_ihl >> 4 != 4
        || hlen < IPV4_MIN_HLEN
        || frag_off & IP_MF_OFFSET != 0
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    {
        return None;
    }
    let l4off = ETH_HLEN + hlen;
    let len = ctx.len() as usize;
    let end = if tot_len == 0 || ETH_HLEN + tot_len > len { len } else { ETH_HLEN + tot_len };
    // Too short for its L4 header: the kernel's (it drops it).
    let l4 = read_l4(ctx, proto, l4off, end, false)?;
    let key = CtKey::new(proto, saddr, daddr, l4.sport, l4.dport);
    let now = conntrack::now();
    let syn = proto == IPPROTO_TCP && opens(proto, &l4);
    let (to_addr, to_port, to_if) = match conntrack::get(&key) {
        Some(e) if live_forward(e, syn, now) => {
            let t = (e.addr, e.port, e.ifindex);
            if !l4.sane {
                return Some(Verdict { was: was(daddr, key.dport), ..drop(reason::DROP_PORT_MALFORMED) });
            }
            conntrack::update(e, proto, false, tcp_flags(proto, &l4), ctx.len(), now);
            t
        }
        _ => {
            let t = maps::port_target(&PortKey::new(proto, daddr, key.dport))?;
            if !l4.sane {
                return Some(Verdict { was: was(daddr, key.dport), ..drop(reason::DROP_PORT_MALFORMED) });
            }
            // A TCP segment of no flow: the kernel's (a node connection
            // whose local port is a published one, or a stray segment the
            // kernel resets).
            if !opens(proto, &l4) {
                return None;
            }
            if let Err(code) = open_from_uplink(&key, &t, now) {
                return Some(Verdict { was: was(daddr, key.dport), ..drop(code) });
            }
            count(reason::EV_CT_CREATED, ctx.len());
            if let Some(e) = conntrack::get(&key) {
                conntrack::update(e, proto, false, tcp_flags(proto, &l4), ctx.len(), now);
            }
            (t.addr, t.port, t.ifindex)
        }
    };
    let e = maps::endpoint_by_ifindex(to_if)?;
    *ep = e;
    let w = was(daddr, key.dport);
    if ttl <= 1 {
        return Some(Verdict { was: w, ..drop(reason::DROP_TTL_EXCEEDED) });
    }
    if !rewrite(ctx, &l4, l4.port_off + 2, (daddr, to_addr), (key.dport, to_port), proto) {
        return Some(drop(reason::DROP_TRUNCATED));
    }
    let Some(iph) = hdr::ipv4(ctx) else {
        return Some(drop(reason::DROP_TRUNCATED));
    };
    csum::forward_ipv4(iph, Nat::Dst(to_addr));
    Some(deliver(ctx, &e, reason::FWD_PORT, w))
}

/// Both entries of a new flow from beyond the uplink to the published port
/// `t` (`key`: as it arrived).
#[inline(always)]
fn open_from_uplink(key: &CtKey, t: &PortTarget, now: u64) -> Result<(), u32> {
    let Some(entry) = maps::scratch_entry() else {
        return Err(reason::DROP_CT_TABLE_FULL);
    };
    let rkey = CtKey::dnat_reply_of(key, t.addr, t.port, key.saddr, key.sport);
    *entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        addr: key.daddr,
        port: key.dport,
        flags: CT_F_DNAT | CT_F_REVERSE,
        ..Default::default()
    };
    let rev = *entry;
    let (state, expires_ns) = new_state(key.proto, now);
    *entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        expires_ns,
        addr: t.addr,
        port: t.port,
        ifindex: t.ifindex,
        state,
        flags: CT_F_DNAT,
        ..Default::default()
    };
    if !insert_flow(key, entry, &rkey, &rev) {
        return Err(reason::DROP_PORT_TUPLE_TAKEN);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// from endpoints

/// What a packet from an endpoint beyond the node or to its gateway is to
/// the published ports (`classify`), each handled by its own function
/// called from `dp_from_ep` (so their stack frames are not stacked).
pub enum Step {
    /// A reply of a publishing endpoint: `reply`.
    Reply,
    /// The client side of a flow from an endpoint: `client`.
    Client,
    /// A new connection to a published port: `open`.
    Open(PortTarget),
    /// An ICMP error of a publishing endpoint about a published flow:
    /// `icmp_error`.
    IcmpError,
    /// Dropped (malformed).
    Drop(u32),
}

/// The L4 header and the tuple of a packet from an endpoint (`ip`: its
/// IPv4 header as the decision read it); `None` for what published ports
/// never carry (not TCP or UDP, fragments, too short).
#[inline(always)]
fn tuple(ctx: &TcContext, ip: &Ip) -> Option<(L4, CtKey)> {
    let proto = ip.proto;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || ip.frag_off & IP_MF_OFFSET != 0 {
        return None;
    }
    let end = if ip.tot_len == 0 { ctx.len() as usize } else { ETH_HLEN + usize::from(ip.tot_len) };
    let l4 = read_l4(ctx, proto, ETH_HLEN + (usize::from(ip.hlen) & 0x3c), end, false)?;
    let key = CtKey::new(proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    Some((l4, key))
}

/// Whether a packet from an endpoint beyond the node or to its gateway
/// (`ip`) belongs to a published port: a reply of a publishing endpoint,
/// the client side of a flow from an endpoint, or a new connection to a
/// published port. `None`: none of these (the masquerade or the bridge
/// take it).
#[inline(never)]
pub fn classify(ctx: &TcContext, ip: &Ip) -> Option<Step> {
    if ip.proto == IPPROTO_ICMP {
        let (rkey, _) = icmp_quote(ctx, ip)?;
        let e = conntrack::get(&rkey)?;
        return (e.flags & (CT_F_DNAT | CT_F_REVERSE) == CT_F_DNAT | CT_F_REVERSE).then_some(Step::IcmpError);
    }
    let (l4, key) = tuple(ctx, ip)?;
    let proto = key.proto;
    if let Some(e) = conntrack::get(&key) {
        if e.flags & (CT_F_DNAT | CT_F_REVERSE) == CT_F_DNAT | CT_F_REVERSE {
            return Some(Step::Reply);
        }
        let syn = proto == IPPROTO_TCP && opens(proto, &l4);
        if live_forward(e, syn, conntrack::now()) && e.flags & CT_F_SNAT != 0 {
            return Some(if l4.sane { Step::Client } else { Step::Drop(reason::DROP_PORT_MALFORMED) });
        }
        if e.flags & CT_F_DNAT == 0 {
            // A masqueraded flow.
            return None;
        }
    }
    let t = maps::port_target(&PortKey::new(proto, ip.daddr, l4.dport))?;
    if !l4.sane {
        return Some(Step::Drop(reason::DROP_PORT_MALFORMED));
    }
    // A TCP segment of no flow: not ours (see `from_uplink`).
    if !opens(proto, &l4) {
        return None;
    }
    Some(Step::Open(t))
}

/// An ICMP destination unreachable or time exceeded from an endpoint (`ip`)
/// quoting a TCP or UDP packet it received (option-less header): the key of
/// the reverse entry its answer would have (the quoted tuple turned
/// around), and the offset of the ICMP header.
#[inline(always)]
fn icmp_quote(ctx: &TcContext, ip: &Ip) -> Option<(CtKey, usize)> {
    if ip.frag_off & IP_MF_OFFSET != 0 {
        return None;
    }
    let off = ETH_HLEN + (usize::from(ip.hlen) & 0x3c);
    let h: [u8; 28] = ctx.load(off).ok()?;
    if h[0] != ICMP_DEST_UNREACH && h[0] != ICMP_TIME_EXCEEDED {
        return None;
    }
    let iproto = h[8 + 9];
    if h[8] != 0x45 || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP) {
        return None;
    }
    let isaddr = u32::from_ne_bytes([h[20], h[21], h[22], h[23]]);
    let idaddr = u32::from_ne_bytes([h[24], h[25], h[26], h[27]]);
    // The quoted packet went to the sender.
    if idaddr != ip.saddr {
        return None;
    }
    let p: [u8; 4] = ctx.load(off + 28).ok()?;
    let (isport, idport) = (u16::from_ne_bytes([p[0], p[1]]), u16::from_ne_bytes([p[2], p[3]]));
    Some((CtKey::new(iproto, idaddr, isaddr, idport, isport), off))
}

/// An ICMP error of a publishing endpoint about a published flow
/// (`Step::IcmpError`, e.g. a UDP port unreachable): translated back like
/// a reply, the quoted packet too (its destination: the node address and
/// host port; for a client endpoint its source: the client's own), the
/// quoted IPv4 and the ICMP checksums fixed. `None`: its flow is over.
#[inline(never)]
pub fn icmp_error(ctx: &TcContext, ip: &Ip) -> Option<Verdict> {
    let (rkey, off) = icmp_quote(ctx, ip)?;
    let now = conntrack::now();
    let rev = conntrack::get(&rkey)?;
    let (node_addr, host_port, client_if, flags) = (rev.addr, rev.port, rev.ifindex, rev.flags);
    let (c_addr, c_port) = rev.dnat_peer();
    forward_of(&rkey, rev, now)?;
    let w = was(rkey.saddr, rkey.sport);
    if ip.ttl <= 1 {
        return Some(Verdict { was: w, ..drop(reason::DROP_TTL_EXCEEDED) });
    }
    let (icsum, inner) = (off + 2, off + 8);
    let Ok(old_iphcsum) = ctx.load::<u16>(inner + 10) else {
        return Some(drop(reason::DROP_TRUNCATED));
    };
    // The quoted destination: endpoint:container port -> node:host port.
    let mut ok = quote_rewrite(ctx, (icsum, inner), (16, 22), (rkey.saddr, node_addr), (rkey.sport, host_port));
    // The quoted source of a client endpoint's flow: gateway:port -> its own.
    if flags & CT_F_SNAT != 0 {
        ok = ok && quote_rewrite(ctx, (icsum, inner), (12, 20), (rkey.daddr, c_addr), (rkey.dport, c_port));
    }
    let new_iphcsum = ctx.load::<u16>(inner + 10).unwrap_or(old_iphcsum);
    if !ok || ctx.l4_csum_replace(icsum, u64::from(old_iphcsum), u64::from(new_iphcsum), 2).is_err() {
        return Some(drop(reason::DROP_TRUNCATED));
    }
    if flags & CT_F_SNAT != 0 {
        let client = maps::endpoint_by_ifindex(client_if)?;
        let iph = hdr::ipv4(ctx)?;
        csum::forward_ipv4(iph, Nat::Src(node_addr));
        set_daddr(iph, c_addr);
        return Some(deliver(ctx, &client, reason::FWD_PORT_REPLY, w));
    }
    let l4 = L4 { sport: host_port, dport: rkey.dport, csum_off: 0, port_off: 0, tcp_flags: 0, sane: true };
    Some(out_uplink(ctx, &rkey, &l4, node_addr, ip.ttl))
}

/// In the packet quoted by an ICMP error (`at`: the ICMP checksum's offset
/// and the quoted IPv4 header's): the address at `offs.0` and the port at
/// `offs.1` (relative to the quoted header) become `addr.1` and `port.1`;
/// the quoted IPv4 checksum and the ICMP checksum follow (the caller adds
/// the quoted checksum's own change to the ICMP checksum).
#[inline(always)]
fn quote_rewrite(
    ctx: &TcContext,
    at: (usize, usize),
    offs: (usize, usize),
    addr: (u32, u32),
    port: (u16, u16),
) -> bool {
    let (icsum, inner) = at;
    ctx.store(inner + offs.0, &addr.1, 0).is_ok()
        && ctx.l3_csum_replace(inner + 10, u64::from(addr.0), u64::from(addr.1), 4).is_ok()
        && ctx.l4_csum_replace(icsum, u64::from(addr.0), u64::from(addr.1), 4).is_ok()
        && ctx.store(inner + offs.1, &port.1, 0).is_ok()
        && ctx.l4_csum_replace(icsum, u64::from(port.0), u64::from(port.1), 2).is_ok()
}

/// The client side of a flow from an endpoint (`Step::Client`): translated
/// as its forward entry says and delivered into the publishing endpoint.
#[inline(never)]
pub fn client(ctx: &TcContext, ip: &Ip) -> Verdict {
    let Some((l4, key)) = tuple(ctx, ip) else {
        return drop(reason::DROP_TRUNCATED);
    };
    let Some(e) = conntrack::get(&key) else {
        return drop(reason::DROP_PORT_TUPLE_TAKEN);
    };
    conntrack::update(e, key.proto, false, tcp_flags(key.proto, &l4), ctx.len(), conntrack::now());
    let t = PortTarget { addr: e.addr, ifindex: e.ifindex, port: e.port, _pad: [0; 2] };
    to_endpoint(ctx, ip, &l4, &t, e.dnat_peer())
}

/// A new connection from endpoint `src` to the published port `t`
/// (`Step::Open`): both entries made, translated and delivered.
#[inline(never)]
pub fn open(ctx: &TcContext, src: &EndpointInfo, ip: &Ip, t: &PortTarget) -> Verdict {
    let Some((l4, key)) = tuple(ctx, ip) else {
        return drop(reason::DROP_TRUNCATED);
    };
    let now = conntrack::now();
    let s = match open_from_ep(&key, t, src.ifindex, now) {
        Ok(s) => s,
        Err(code) => return drop(code),
    };
    count(reason::EV_CT_CREATED, ctx.len());
    if let Some(e) = conntrack::get(&key) {
        conntrack::update(e, key.proto, false, tcp_flags(key.proto, &l4), ctx.len(), now);
    }
    to_endpoint(ctx, ip, &l4, t, s)
}

/// Both entries of a new flow from the endpoint whose host veth is
/// `client_if` to the published port `t`, source-translated to the gateway
/// of `t`'s network and a free port of its NAT range; returns that source.
#[inline(always)]
fn open_from_ep(key: &CtKey, t: &PortTarget, client_if: u32, now: u64) -> Result<(u32, u16), u32> {
    let Some(dst) = maps::endpoint_by_ifindex(t.ifindex) else {
        return Err(reason::DROP_PORT_TUPLE_TAKEN);
    };
    let Some(net) = maps::network(dst.network_id) else {
        return Err(reason::DROP_PORT_TUPLE_TAKEN);
    };
    let (min, max) = (u32::from(net.nat_port_min), u32::from(net.nat_port_max));
    let (min, range) = if min == 0 || max < min { (1024, 31744) } else { (min, max - min + 1) };
    if range == 0 {
        return Err(reason::DROP_PORT_TUPLE_TAKEN);
    }
    let Some(entry) = maps::scratch_entry() else {
        return Err(reason::DROP_CT_TABLE_FULL);
    };
    let (state, expires_ns) = new_state(key.proto, now);
    // SAFETY: plain helper call.
    let start = unsafe { bpf_get_prandom_u32() } % range;
    let mut i = 0;
    while i < SNAT_TRIES {
        let nport = ((min + (start + i) % range) as u16).to_be();
        let rkey = CtKey::dnat_reply_of(key, t.addr, t.port, net.gateway, nport);
        *entry = CtEntry {
            created_ns: now,
            last_seen_ns: now,
            addr: key.daddr,
            port: key.dport,
            ifindex: client_if,
            flags: CT_F_DNAT | CT_F_SNAT | CT_F_REVERSE,
            ..Default::default()
        };
        entry.set_dnat_peer(key.saddr, key.sport);
        if maps::ct_insert(&rkey, entry, u64::from(BPF_NOEXIST)).is_ok() {
            *entry = CtEntry {
                created_ns: now,
                last_seen_ns: now,
                expires_ns,
                addr: t.addr,
                port: t.port,
                ifindex: t.ifindex,
                state,
                flags: CT_F_DNAT | CT_F_SNAT,
                ..Default::default()
            };
            entry.set_dnat_peer(net.gateway, nport);
            if maps::ct_insert(key, entry, 0).is_err() {
                conntrack::remove(&rkey);
                return Err(reason::DROP_CT_TABLE_FULL);
            }
            return Ok((net.gateway, nport));
        }
        i += 1;
    }
    Err(reason::DROP_PORT_TUPLE_TAKEN)
}

/// The client side of a flow from an endpoint: destination -> `t`, source
/// -> `s` (address, port), TTL - 1, delivered into `t`'s endpoint.
#[inline(always)]
fn to_endpoint(ctx: &TcContext, ip: &Ip, l4: &L4, t: &PortTarget, s: (u32, u16)) -> Verdict {
    let Some(dst) = maps::endpoint_by_ifindex(t.ifindex) else {
        return drop(reason::DROP_REDIRECT_FAILED);
    };
    let w = was(ip.daddr, l4.dport);
    if ip.ttl <= 1 {
        return Verdict { was: w, ..drop(reason::DROP_TTL_EXCEEDED) };
    }
    if !rewrite(ctx, l4, l4.port_off + 2, (ip.daddr, t.addr), (l4.dport, t.port), ip.proto)
        || !rewrite(ctx, l4, l4.port_off, (ip.saddr, s.0), (l4.sport, s.1), ip.proto)
    {
        return drop(reason::DROP_TRUNCATED);
    }
    let Some(iph) = hdr::ipv4(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    csum::forward_ipv4(iph, Nat::Src(s.0));
    set_daddr(iph, t.addr);
    deliver(ctx, &dst, reason::FWD_PORT, w)
}

/// A reply of a publishing endpoint (`Step::Reply`): the source becomes
/// the node address and host port the client used; to a client endpoint
/// (source-translated flow) the destination becomes the client's own and
/// the packet is delivered into it, else it goes out the uplink. `None`:
/// its flow is over (the masquerade or the bridge take it).
#[inline(never)]
pub fn reply(ctx: &TcContext, ip: &Ip) -> Option<Verdict> {
    let (l4, key) = tuple(ctx, ip)?;
    let (key, l4, ttl) = (&key, &l4, ip.ttl);
    let now = conntrack::now();
    let rev = conntrack::get(key)?;
    let (node_addr, host_port, client_if, flags) = (rev.addr, rev.port, rev.ifindex, rev.flags);
    let (c_addr, c_port) = if flags & CT_F_SNAT != 0 { rev.dnat_peer() } else { (key.daddr, key.dport) };
    let Some(fwd) = forward_of(key, rev, now) else {
        // Its flow is over: the packet is the endpoint's own business.
        return None;
    };
    let w = was(key.saddr, key.sport);
    if !l4.sane {
        return Some(Verdict { was: w, ..drop(reason::DROP_PORT_MALFORMED) });
    }
    if ttl <= 1 {
        return Some(Verdict { was: w, ..drop(reason::DROP_TTL_EXCEEDED) });
    }
    let len = ctx.len();
    conntrack::update(fwd, key.proto, true, tcp_flags(key.proto, l4), len, now);
    if !rewrite(ctx, l4, l4.port_off, (key.saddr, node_addr), (key.sport, host_port), key.proto) {
        return Some(drop(reason::DROP_TRUNCATED));
    }
    if flags & CT_F_SNAT != 0 {
        let client = maps::endpoint_by_ifindex(client_if)?;
        if !rewrite(ctx, l4, l4.port_off + 2, (key.daddr, c_addr), (key.dport, c_port), key.proto) {
            return Some(drop(reason::DROP_TRUNCATED));
        }
        let iph = hdr::ipv4(ctx)?;
        csum::forward_ipv4(iph, Nat::Src(node_addr));
        set_daddr(iph, c_addr);
        return Some(deliver(ctx, &client, reason::FWD_PORT_REPLY, w));
    }
    Some(out_uplink(ctx, key, l4, node_addr, ttl))
}

/// Sends a reply translated to source `node_addr` out to the client beyond
/// the uplink: the next hop cached in the reverse entry at `key`, else
/// `bpf_fib_lookup` (remembered for the next packets), then redirect.
#[inline(always)]
fn out_uplink(ctx: &TcContext, key: &CtKey, l4: &L4, node_addr: u32, ttl: u8) -> Verdict {
    let w = was(key.saddr, key.sport);
    let Some(fib) = maps::scratch_fib() else {
        return drop(reason::DROP_REDIRECT_FAILED);
    };
    let len = ctx.len();
    let now = conntrack::now();
    let cached = match conntrack::get(key) {
        Some(rev) => fib::cached_hop(ctx, rev, 0, len, now, fib),
        None => false,
    };
    let rc = if cached {
        BPF_FIB_LKUP_RET_SUCCESS
    } else {
        let Some(iph) = hdr::ipv4(ctx) else {
            return drop(reason::DROP_TRUNCATED);
        };
        let ip = Ip {
            saddr: node_addr,
            daddr: key.daddr,
            tot_len: u16::from_be(iph.tot_len),
            frag_off: u16::from_be(iph.frag_off),
            hlen: IPV4_MIN_HLEN as u8,
            proto: key.proto,
            ttl,
            tos: iph.tos,
            id: iph.id,
        };
        let rc = fib::lookup(ctx, &ip, l4, fib);
        if !fib::routed(rc) {
            return Verdict { was: w, ..drop(reason::DROP_REDIRECT_FAILED) };
        }
        if rc == BPF_FIB_LKUP_RET_SUCCESS {
            if let Some(rev) = conntrack::get(key) {
                fib::remember(rev, fib, now);
            }
        }
        rc
    };
    let Some(iph) = hdr::ipv4(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    csum::forward_ipv4(iph, Nat::Src(node_addr));
    match fib::redirect(ctx, rc, fib) {
        Ok(out_if) => Verdict { was: w, ..redirect(reason::FWD_PORT_REPLY, out_if) },
        Err(code) => Verdict { was: w, ..drop(code) },
    }
}
