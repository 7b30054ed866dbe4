//! Connection tracking and source NAT (masquerade) for traffic leaving the
//! node, and the reverse translation of replies on the uplink.
//!
//! * `nat_egress` runs inside `dp_from_ep` for IPv4 from a masquerading
//!   network to a destination outside every local network: it tracks the
//!   flow in `CT`, rewrites the source to the network's masquerade address
//!   and a port of its range, and sends the packet out the uplink itself
//!   (`bpf_fib_lookup`, MAC rewrite, TTL - 1, `bpf_redirect` or
//!   `bpf_redirect_neigh`).
//! * `dp_from_uplink` (TC ingress of the uplink) looks replies and ICMP
//!   errors up by their reply tuple, restores the endpoint's address and port
//!   and delivers them into the endpoint with `bpf_redirect_peer`. Anything
//!   without a mapping passes untouched: the node's own traffic.
//!
//! A masqueraded flow has two `CT` entries: the forward one keyed by the
//! original tuple (endpoint -> remote) holding the state, lifetime,
//! counters and the translated source, and the reverse one keyed by the
//! reply tuple as it arrives on the uplink (remote -> masq:port) holding the
//! endpoint's address and port. The reverse entry is inserted first with
//! `BPF_NOEXIST`, which is what reserves the NAT port.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_REDIRECT,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    },
    macros::{classifier, map},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use datapath_common::{
    reason, CtConfig, CtEntry, CtKey, EndpointInfo, NetworkInfo, CT_DEFAULT_ICMP, CT_DEFAULT_TCP_CLOSING,
    CT_DEFAULT_TCP_ESTABLISHED, CT_DEFAULT_TCP_SYN, CT_DEFAULT_UDP, CT_ESTABLISHED, CT_FIB_REFRESH_NS, CT_F_DONE,
    CT_F_LAST_FIN_RX, CT_F_REVERSE, CT_F_RX_FIN, CT_F_SEEN_REPLY, CT_F_SNAT, CT_F_TX_FIN, CT_MAX_ENTRIES, CT_NEW,
    CT_ORPHAN_GRACE_NS, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_SYN_SENT, EP_F_TRACE, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, NAT_PORT_TAKEOVER_FROM, NAT_PORT_TAKEOVER_UNTIL, NAT_PORT_TRIES,
};

use crate::{
    count, drop, linear, mac, pass, ptr_at, EthHdr, Ipv4Hdr, Verdict, DIR_FROM_UPLINK, ENDPOINTS_BY_IP, ETH_HLEN,
    ETH_P_IP, IPV4_MIN_HLEN, PACKET_HOST,
};

/// The connection tracker (see the module documentation).
#[map]
static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// Lifetimes, filled by the agent (index 0); zero fields mean the defaults.
#[map]
static CT_CONFIG: Array<CtConfig> = Array::with_max_entries(1, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const AF_INET: u8 = 2;
/// `frag_off` bits: more fragments, offset.
const IP_MF_OFFSET: u16 = 0x3fff;
const IP_DF: u16 = 0x4000;
const EEXIST: i32 = 17;
const NS: u64 = 1_000_000_000;

/// Offsets (from the start of the frame) of the IPv4 header fields we touch.
const IP_TTL_OFF: usize = ETH_HLEN + 8;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;
/// Ethernet and the fixed IPv4 header.
const HDRS_LEN: usize = ETH_HLEN + IPV4_MIN_HLEN;

/// What the L4 header says about the flow (ports in wire order).
struct L4 {
    sport: u16,
    dport: u16,
    /// Offset of the L4 checksum field.
    csum_off: usize,
    /// Offset of the (source or destination) port we rewrite.
    port_off: usize,
    tcp_flags: u8,
}

#[inline(always)]
fn lifetime_s(proto: u8, state: u8) -> u32 {
    let cfg = CT_CONFIG.get(0).copied().unwrap_or_default();
    let (v, d) = match (proto, state) {
        (IPPROTO_TCP, CT_TCP_SYN_SENT) => (cfg.tcp_syn, CT_DEFAULT_TCP_SYN),
        (IPPROTO_TCP, CT_ESTABLISHED) => (cfg.tcp_established, CT_DEFAULT_TCP_ESTABLISHED),
        (IPPROTO_TCP, _) => (cfg.tcp_closing, CT_DEFAULT_TCP_CLOSING),
        (IPPROTO_UDP, _) => (cfg.udp, CT_DEFAULT_UDP),
        _ => (cfg.icmp, CT_DEFAULT_ICMP),
    };
    if v == 0 {
        d
    } else {
        v
    }
}

/// Per-packet state update of a forward entry (`reply`: the packet goes
/// remote -> endpoint).
#[inline(always)]
fn ct_update(e: *mut CtEntry, proto: u8, reply: bool, tcp_flags: u8, len: u32, now: u64) {
    // SAFETY: `e` points at a live map value; concurrent updates from other
    // CPUs may race on the plain fields, which only costs precision.
    unsafe {
        let mut state = (*e).state;
        let mut flags = (*e).flags;
        if reply {
            (*e).rx_packets += 1;
            (*e).rx_bytes += u64::from(len);
            (*e).rx_tcp_flags |= tcp_flags;
            flags |= CT_F_SEEN_REPLY;
        } else {
            (*e).tx_packets += 1;
            (*e).tx_bytes += u64::from(len);
            (*e).tx_tcp_flags |= tcp_flags;
        }
        if proto == IPPROTO_TCP {
            const BOTH: u8 = CT_F_RX_FIN | CT_F_TX_FIN;
            if tcp_flags & TCP_RST != 0 {
                state = CT_TCP_CLOSED;
                flags |= CT_F_DONE;
            } else if tcp_flags & TCP_FIN != 0 {
                let had_both = flags & BOTH == BOTH;
                flags |= if reply { CT_F_RX_FIN } else { CT_F_TX_FIN };
                state = if flags & BOTH == BOTH {
                    if !had_both {
                        // Who sent the second FIN: the other side sends
                        // the last ACK.
                        flags = if reply { flags | CT_F_LAST_FIN_RX } else { flags & !CT_F_LAST_FIN_RX };
                    }
                    CT_TCP_CLOSED
                } else {
                    CT_TCP_CLOSING
                };
            } else if !reply && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && state >= CT_TCP_CLOSING {
                // A new SYN on a closing flow reopens it (same mapping).
                state = CT_TCP_SYN_SENT;
                flags &= !(BOTH | CT_F_LAST_FIN_RX | CT_F_DONE);
            } else if state == CT_TCP_CLOSED
                && flags & BOTH == BOTH
                && tcp_flags & TCP_ACK != 0
                && reply != (flags & CT_F_LAST_FIN_RX != 0)
            {
                // The ACK of the last FIN: both ends are done.
                flags |= CT_F_DONE;
            } else if reply && state == CT_TCP_SYN_SENT && tcp_flags & TCP_ACK != 0 {
                state = CT_ESTABLISHED;
            }
        } else if reply {
            state = CT_ESTABLISHED;
        }
        (*e).state = state;
        (*e).flags = flags;
        (*e).last_seen_ns = now;
        (*e).expires_ns = now + u64::from(lifetime_s(proto, state)) * NS;
    }
}

/// Reads the L4 header of a packet whose L4 starts at `l4`. `None`: too
/// short (the caller drops or passes). For ICMP, `sport`/`dport` follow the
/// `CtKey` convention (request: id as sport, reply: id as dport) and
/// `tcp_flags` carries the ICMP type.
#[inline(always)]
fn read_l4(ctx: &TcContext, proto: u8, l4: usize) -> Option<L4> {
    match proto {
        IPPROTO_TCP => {
            let h: [u8; 20] = ctx.load(l4).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                csum_off: l4 + 16,
                port_off: l4,
                tcp_flags: h[13],
            })
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = ctx.load(l4).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                csum_off: l4 + 6,
                port_off: l4,
                tcp_flags: 0,
            })
        }
        _ => {
            let h: [u8; 8] = ctx.load(l4).ok()?;
            let id = u16::from_ne_bytes([h[4], h[5]]);
            let (sport, dport) = if h[0] == ICMP_ECHO_REQUEST { (id, 0) } else { (0, id) };
            Some(L4 { sport, dport, csum_off: l4 + 2, port_off: l4 + 4, tcp_flags: h[0] })
        }
    }
}

/// The reply tuple of a forward tuple translated to `addr:port`.
#[inline(always)]
fn reply_key(proto: u8, saddr_nat: u32, sport_nat: u16, daddr: u32, dport: u16) -> CtKey {
    if proto == IPPROTO_ICMP {
        CtKey { saddr: daddr, daddr: saddr_nat, sport: 0, dport: sport_nat, proto, _pad: [0; 3] }
    } else {
        CtKey { saddr: daddr, daddr: saddr_nat, sport: dport, dport: sport_nat, proto, _pad: [0; 3] }
    }
}

/// IPv4 header fields `nat_egress` needs (read by `dp_from_ep`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ip {
    pub saddr: u32,
    pub daddr: u32,
    pub hlen: u32,
    pub frag_off: u16,
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
}

/// Per-CPU scratch space: the 512-byte stack is shared by the whole call
/// chain, so the big structures live here.
#[repr(C)]
pub struct Scratch {
    pub fib: FibParams,
    pub entry: CtEntry,
    pub net: NetworkInfo,
    pub ip: Ip,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch slot.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// Masquerade of a packet from endpoint `src` of network `net` to a
/// destination beyond the node. On success the packet is translated and
/// redirected to the uplink; `was` of the verdict holds the original source.
#[inline(never)]
pub fn nat_egress(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    let Some(sc) = scratch() else {
        return pass(reason::PASS_TO_BRIDGE);
    };
    // SAFETY: this CPU's slot, filled by `from_endpoint` for this packet.
    let (net, ip) = unsafe { (&(*sc).net, (*sc).ip) };
    let ip = &ip;
    let hlen = ip.hlen as usize & 0x3c;
    if ip.frag_off & IP_MF_OFFSET != 0 {
        return drop(reason::DROP_NAT_FRAGMENT);
    }
    let proto = ip.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return drop(reason::DROP_NAT_PROTO);
    }
    let Some(l4) = read_l4(ctx, proto, ETH_HLEN + hlen) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if proto == IPPROTO_ICMP && l4.tcp_flags != ICMP_ECHO_REQUEST {
        return drop(reason::DROP_NAT_PROTO);
    }
    if ip.ttl <= 1 {
        // The kernel answers with ICMP time exceeded.
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let len = ctx.len();
    let key = CtKey { saddr: ip.saddr, daddr: ip.daddr, sport: l4.sport, dport: l4.dport, proto, _pad: [0; 3] };
    let found = CT.get_ptr_mut(&key);

    let tcp_flags = if proto == IPPROTO_TCP { l4.tcp_flags } else { 0 };
    let syn = proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    // SAFETY: this CPU's slot.
    let fib = unsafe { &mut (*sc).fib };

    // Fast path: a live flow whose next hop is cached in its entry (see
    // `CtEntry::fib_ns`): no route lookup. Packets that might not fit the
    // MTU (GSO, or bigger than the cached MTU) take the slow path, where
    // the FIB checks it; so does a SYN restarting a closing flow.
    if let Some(e) = found {
        // SAFETY: map value pointer, valid for this program run.
        let hit = unsafe {
            let fif = (*e).fib_ifindex;
            fif != 0
                && (*e).flags & CT_F_REVERSE == 0
                && (*e).expires_ns > now
                && (*e).addr == net.masq_addr
                && (net.uplink_ifindex == 0 || fif == net.uplink_ifindex)
                && now.wrapping_sub((*e).fib_ns) < CT_FIB_REFRESH_NS
                && (*ctx.skb.skb).gso_size == 0
                && len <= (*e).fib_mtu + ETH_HLEN as u32
                && !(syn && (*e).state >= CT_TCP_CLOSING)
        };
        if hit {
            ct_update(e, proto, false, tcp_flags, len, now);
            // SAFETY: as above.
            let (nat_addr, nat_port) = unsafe {
                fib.ifindex = (*e).fib_ifindex;
                fib.dmac = (*e).fib_dmac;
                fib.smac = (*e).fib_smac;
                ((*e).addr, (*e).port)
            };
            return send(ctx, ip, &l4, nat_addr, nat_port, BPF_FIB_LKUP_RET_SUCCESS, fib);
        }
    }

    // Slow path. Route first: only what leaves through the uplink is
    // translated.
    // SAFETY: this CPU's slot; an all-zero bpf_fib_lookup is a valid input.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    if proto != IPPROTO_ICMP {
        fib.sport = l4.sport;
        fib.dport = l4.dport;
    }
    // tot_len 0: the kernel checks the MTU itself, GSO-aware.
    // SAFETY: the context pointer is valid for the whole program run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = ip.saddr;
    fib.__bindgen_anon_4.ipv4_dst = ip.daddr;
    // SAFETY: helper call with a buffer of the size given.
    let rc = unsafe {
        bpf_fib_lookup(ctx.skb.skb as *mut _, fib as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0)
    } as u32;
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && ip.frag_off & IP_DF == 0 {
        // The kernel would fragment it and forward it untranslated.
        return drop(reason::DROP_NAT_FRAGMENT);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }
    let out_if = fib.ifindex;
    if net.uplink_ifindex != 0 && out_if != net.uplink_ifindex {
        return pass(reason::PASS_NAT_NOT_ROUTED);
    }

    // The port a stale entry of this tuple had: tried first when the flow
    // starts again.
    let mut hint = 0u16;
    let live = match found {
        // SAFETY: map value pointer, valid for this program run.
        Some(e)
            if unsafe { (*e).flags & CT_F_REVERSE == 0 && (*e).expires_ns > now }
                && unsafe { (*e).addr } == net.masq_addr =>
        {
            // SAFETY: as above.
            let (port, state) = unsafe { ((*e).port, (*e).state) };
            if syn && state >= CT_TCP_CLOSING {
                // A new connection on the tuple of a closing or closed one
                // (the client reuses its port): same mapping, fresh state,
                // provided the reply entry is still ours.
                if reverse_is(&reply_key(proto, net.masq_addr, port, ip.daddr, l4.dport), &key) {
                    // SAFETY: as above.
                    unsafe {
                        (*e).created_ns = now;
                        (*e).tx_packets = 0;
                        (*e).tx_bytes = 0;
                        (*e).rx_packets = 0;
                        (*e).rx_bytes = 0;
                        (*e).tx_tcp_flags = 0;
                        (*e).rx_tcp_flags = 0;
                        (*e).flags = CT_F_SNAT;
                        (*e).state = CT_TCP_SYN_SENT;
                    }
                    count(reason::EV_NAT_PORT_REUSED, len);
                    Some(e)
                } else {
                    hint = port;
                    None
                }
            } else {
                Some(e)
            }
        }
        _ => None,
    };
    let (entry, nat_addr, nat_port) = if let Some(e) = live {
        ct_update(e, proto, false, tcp_flags, len, now);
        // SAFETY: map value pointer, valid for this program run.
        (Some(e), unsafe { (*e).addr }, unsafe { (*e).port })
    } else {
        if let Some(e) = found {
            // Expired, its network's address changed or its reply entry
            // was taken over: forget both directions (the reply entry only
            // while it is still this flow's), then start over.
            // SAFETY: map value pointer; copied before the deletes.
            let (a, p, rev) = unsafe { ((*e).addr, (*e).port, (*e).flags & CT_F_REVERSE) };
            if rev == 0 {
                let rkey = reply_key(proto, a, p, ip.daddr, l4.dport);
                if reverse_is(&rkey, &key) {
                    let _ = CT.remove(&rkey);
                }
                if a == net.masq_addr {
                    hint = p;
                }
            }
            let _ = CT.remove(&key);
        }
        if proto == IPPROTO_TCP && !syn {
            return drop(reason::DROP_CT_INVALID);
        }
        // Packed: the five registers of a BPF call.
        let packed = u64::from(src.ifindex) | (u64::from(hint) << 32);
        match ct_create(&key, packed, net, now) {
            Ok(p) => {
                count(reason::EV_CT_CREATED, len);
                let e = CT.get_ptr_mut(&key);
                if let Some(e) = e {
                    ct_update(e, proto, false, tcp_flags, len, now);
                }
                (e, net.masq_addr, p)
            }
            Err(code) => return drop(code),
        }
    };
    // Remember a fresh next hop for the next packets.
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if let Some(e) = entry {
            // SAFETY: map value pointer, valid for this program run; the
            // MTU was set by the lookup (tot_len 0).
            unsafe {
                (*e).fib_ns = now;
                (*e).fib_ifindex = out_if;
                (*e).fib_mtu = u32::from(fib.__bindgen_anon_1.mtu_result);
                (*e).fib_dmac = fib.dmac;
                (*e).fib_smac = fib.smac;
            }
        }
    }

    send(ctx, ip, &l4, nat_addr, nat_port, rc, fib)
}

/// Translation of the packet to `nat_addr:nat_port` and redirect to the
/// next hop in `fib` (`rc`: the lookup's result, SUCCESS or NO_NEIGH).
#[inline(always)]
fn send(ctx: &TcContext, ip: &Ip, l4: &L4, nat_addr: u32, nat_port: u16, rc: u32, fib: &FibParams) -> Verdict {
    let proto = ip.proto;
    // Rewrite. The L4 checksum is updated incrementally by the helper: for
    // a CHECKSUM_PARTIAL packet (veth) only the pseudo-header part of the
    // L4 checksum changes, which BPF_F_PSEUDO_HDR takes care of. The IPv4
    // header (source, TTL, checksum) and the MACs are written directly
    // (`dp_from_ep` writes packet data directly, so the skb is writable).
    if !rewrite_l4(ctx, ip.saddr, nat_addr, l4, l4.sport, nat_port, proto) {
        return drop(reason::DROP_TRUNCATED);
    }
    let Some(iph) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: bounds-checked just above.
    unsafe {
        let old_ttl = u16::from_ne_bytes([ip.ttl, proto]);
        let new_ttl = u16::from_ne_bytes([ip.ttl - 1, proto]);
        (*iph).check = csum_replace_addr_ttl((*iph).check, ip.saddr, nat_addr, old_ttl, new_ttl);
        (*iph).saddr = nat_addr;
        (*iph).ttl = ip.ttl - 1;
    }
    let was = u64::from(ip.saddr) | (u64::from(u16::from_be(l4.sport)) << 32);
    let out_if = fib.ifindex;
    let ret = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return drop(reason::DROP_TRUNCATED);
        };
        // SAFETY: bounds-checked just above.
        unsafe {
            (*eth).dst = mac(fib.dmac);
            (*eth).src = mac(fib.smac);
        }
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(out_if, 0) }
    } else {
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = u32::from(AF_INET);
        // SAFETY: after the lookup ipv4_dst holds the next hop.
        nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        // SAFETY: helper call with a stack buffer of the size given.
        unsafe { bpf_redirect_neigh(out_if, &mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) }
    };
    if ret != i64::from(TC_ACT_REDIRECT) {
        return Verdict { was, ..drop(reason::DROP_REDIRECT_FAILED) };
    }
    Verdict { code: reason::FWD_NAT, action: TC_ACT_REDIRECT as i32, out_if, dst_flags: 0, was }
}

/// Whether the entry at reply tuple `rkey` is the reverse entry of the
/// forward tuple `fkey`.
#[inline(always)]
fn reverse_is(rkey: &CtKey, fkey: &CtKey) -> bool {
    match CT.get_ptr(rkey) {
        // SAFETY: map value pointer, valid for this program run.
        Some(r) => unsafe { (*r).flags & CT_F_REVERSE != 0 && (*r).addr == fkey.saddr && (*r).port == fkey.sport },
        None => false,
    }
}

/// The reply tuple `rkey` is taken: frees it when its flow is over (TCP
/// `CT_F_DONE`, expired) or gone (an orphaned reverse entry older than
/// `CT_ORPHAN_GRACE_NS`), deleting both entries of that flow. `true`: the
/// tuple may be inserted again. A live flow is never touched.
#[inline(always)]
fn take_over(rkey: &CtKey, r: *const CtEntry, now: u64) -> bool {
    // SAFETY: map value pointer (of `rkey`), valid for this program run.
    let (rflags, raddr, rport, rcreated) = unsafe { ((*r).flags, (*r).addr, (*r).port, (*r).created_ns) };
    if rflags & CT_F_REVERSE == 0 {
        return false;
    }
    let fkey = CtKey {
        saddr: raddr,
        daddr: rkey.saddr,
        sport: rport,
        dport: if rkey.proto == IPPROTO_ICMP { 0 } else { rkey.sport },
        proto: rkey.proto,
        _pad: [0; 3],
    };
    let young = now.wrapping_sub(rcreated) < CT_ORPHAN_GRACE_NS;
    match CT.get_ptr(&fkey) {
        // SAFETY: map value pointer, valid for this program run.
        Some(f) => unsafe {
            let ours = (*f).flags & CT_F_REVERSE == 0 && (*f).addr == rkey.daddr && (*f).port == rkey.dport;
            if ours {
                let over = (*f).expires_ns <= now
                    || (rkey.proto == IPPROTO_TCP && (*f).state == CT_TCP_CLOSED && (*f).flags & CT_F_DONE != 0);
                if !over {
                    return false;
                }
                let _ = CT.remove(&fkey);
            } else if young {
                return false;
            }
        },
        None if young => return false,
        None => {}
    }
    let _ = CT.remove(rkey);
    true
}

/// Creates both entries of a new flow (counters zero, the caller updates
/// them); returns the NAT port (wire order) or the drop reason. `packed`:
/// the endpoint's ifindex (bits 0-31) and a port to try first (32-47, wire
/// order, 0 for none: the port the tuple had before).
#[inline(never)]
fn ct_create(key: &CtKey, packed: u64, net: &NetworkInfo, now: u64) -> Result<u16, u32> {
    let ifindex = packed as u32;
    let hint = u32::from(u16::from_be((packed >> 32) as u16));
    let (min, max) = (u32::from(net.nat_port_min), u32::from(net.nat_port_max));
    if min == 0 || max < min {
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let range = max - min + 1;
    if range == 0 {
        // Unreachable (max >= min), but lets the compiler drop the
        // division-by-zero panic the verifier would reject.
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let orig = u32::from(u16::from_be(key.sport));
    // The tuple's previous port, else the original port when it is in range
    // (and free), else a random port; then walk up.
    let start = if hint >= min && hint <= max {
        hint - min
    } else if orig >= min && orig <= max {
        orig - min
    } else {
        // SAFETY: plain helper call.
        (unsafe { bpf_get_prandom_u32() }) % range
    };
    let Some(sc) = scratch() else {
        return Err(reason::DROP_CT_TABLE_FULL);
    };
    // SAFETY: this CPU's slot; `entry` is only used by this function.
    let entry = unsafe { &mut (*sc).entry };
    *entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        addr: key.saddr,
        port: key.sport,
        ifindex,
        flags: CT_F_REVERSE | CT_F_SNAT,
        ..Default::default()
    };
    // 0: none yet (a range starts at 1 or above).
    let mut port = 0u16;
    let mut i = 0;
    while i < NAT_PORT_TRIES {
        let p = ((min + (start + i) % range) as u16).to_be();
        let rkey = reply_key(key.proto, net.masq_addr, p, key.daddr, key.dport);
        // A lookup first: cheaper than a failing insert, which takes (and
        // gives back) an LRU node.
        let (taken, freed) = match CT.get_ptr(&rkey) {
            None => (false, false),
            // The first tries want a free port; the next ones take over
            // the port of a finished flow; the last ones look for a free
            // port again (few of them: a range full of live flows).
            Some(r) if (NAT_PORT_TAKEOVER_FROM..NAT_PORT_TAKEOVER_UNTIL).contains(&i) => {
                (true, take_over(&rkey, r, now))
            }
            Some(_) => (true, false),
        };
        if !taken || freed {
            match CT.insert(&rkey, &*entry, u64::from(BPF_NOEXIST)) {
                Ok(()) => {
                    if freed {
                        count(reason::EV_NAT_PORT_REUSED, 0);
                    }
                    port = p;
                    break;
                }
                // Taken by another CPU meanwhile.
                Err(e) if e == -EEXIST => {}
                Err(_) => return Err(reason::DROP_CT_TABLE_FULL),
            }
        }
        i += 1;
    }
    if port == 0 {
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let state = if key.proto == IPPROTO_TCP { CT_TCP_SYN_SENT } else { CT_NEW };
    *entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        expires_ns: now + u64::from(lifetime_s(key.proto, state)) * NS,
        addr: net.masq_addr,
        port,
        ifindex,
        state,
        flags: CT_F_SNAT,
        ..Default::default()
    };
    if CT.insert(key, &*entry, 0).is_err() {
        let _ = CT.remove(&reply_key(key.proto, net.masq_addr, port, key.daddr, key.dport));
        return Err(reason::DROP_CT_TABLE_FULL);
    }
    Ok(port)
}

/// The L4 side of a translation of an IPv4 address `old_addr` ->
/// `new_addr` (pseudo-header) and of the port at `l4.port_off`: the port is
/// written and the L4 checksum fixed; the IPv4 header is the caller's.
/// `false` when a helper failed (the packet is then dropped).
#[inline(always)]
fn rewrite_l4(ctx: &TcContext, old_addr: u32, new_addr: u32, l4: &L4, old_port: u16, new_port: u16, proto: u8) -> bool {
    let (pseudo, mangled) = match proto {
        IPPROTO_TCP => (BPF_F_PSEUDO_HDR as u64, 0),
        // A zero UDP checksum means none: MARK_MANGLED_0 leaves it zero and
        // turns a computed zero into 0xffff.
        IPPROTO_UDP => (BPF_F_PSEUDO_HDR as u64, BPF_F_MARK_MANGLED_0 as u64),
        // ICMP has no pseudo-header.
        _ => (0, 0),
    };
    // Address and port cannot share one call: for a CHECKSUM_PARTIAL
    // packet only the pseudo-header part (the address) goes into the
    // checksum field.
    if old_addr != new_addr
        && pseudo != 0
        && ctx.l4_csum_replace(l4.csum_off, u64::from(old_addr), u64::from(new_addr), pseudo | mangled | 4).is_err()
    {
        return false;
    }
    if old_port != new_port
        && (ctx.store(l4.port_off, &new_port, 0).is_err()
            || ctx.l4_csum_replace(l4.csum_off, u64::from(old_port), u64::from(new_port), mangled | 2).is_err())
    {
        return false;
    }
    true
}

/// The IPv4 header checksum `check` after an address changed from
/// `old_addr` to `new_addr` and the TTL/protocol word from `old_w` to
/// `new_w` (RFC 1624: HC' = ~(~HC + ~m + m'), all in wire order).
#[inline(always)]
fn csum_replace_addr_ttl(check: u16, old_addr: u32, new_addr: u32, old_w: u16, new_w: u16) -> u16 {
    let mut s = u32::from(!check)
        + u32::from(!(old_addr as u16))
        + u32::from(!((old_addr >> 16) as u16))
        + (new_addr & 0xffff)
        + (new_addr >> 16)
        + u32::from(!old_w)
        + u32::from(new_w);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// TTL - 1 with the IPv4 checksum fixed (the caller checked `ttl > 1`).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ttl: u8, proto: u8) -> bool {
    let old = u16::from_ne_bytes([ttl, proto]);
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    ctx.store(IP_TTL_OFF, &new, 0).is_ok()
        && ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 2).is_ok()
}

// ---------------------------------------------------------------------------
// reverse NAT on the uplink

#[classifier]
pub fn dp_from_uplink(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let mut ep = EndpointInfo::default();
    let v = from_uplink(&ctx, &mut ep);
    count(v.code, len);
    if ep.flags & EP_F_TRACE != 0 {
        crate::trace(ctx.skb.skb, ep.ifindex, v.code, v.out_if, v.was | DIR_FROM_UPLINK);
    }
    v.action
}

/// The verdict for a frame on the uplink; `ep` receives the endpoint it was
/// translated for (left alone when none).
#[inline(never)]
fn from_uplink(ctx: &TcContext, ep: &mut EndpointInfo) -> Verdict {
    let len = ctx.len();
    if (len as usize) < ETH_HLEN + IPV4_MIN_HLEN {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // The L4 header is read with bpf_skb_load_bytes: only Ethernet and the
    // fixed IPv4 header need to be linear (never pull payload).
    if !linear(ctx, ETH_HLEN + IPV4_MIN_HLEN) {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let Some(iph) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // SAFETY: bounds-checked above.
    let (eth_proto, version_ihl, frag_off, ttl, proto, saddr, daddr) = unsafe {
        (
            u16::from_be((*eth).proto),
            (*iph).version_ihl,
            u16::from_be((*iph).frag_off),
            (*iph).ttl,
            (*iph).proto,
            (*iph).saddr,
            (*iph).daddr,
        )
    };
    let hlen = usize::from(version_ihl & 0x0f) * 4;
    // Not IPv4, a fragment (even of a translated flow: it cannot be matched
    // without a fragment map) or a protocol we never translate: the node's.
    if eth_proto != ETH_P_IP
        || version_ihl >> 4 != 4
        || hlen < IPV4_MIN_HLEN
        || frag_off & IP_MF_OFFSET != 0
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP)
    {
        return pass(reason::PASS_UPLINK_HOST);
    }
    let l4off = ETH_HLEN + hlen;
    let Some(l4) = read_l4(ctx, proto, l4off) else {
        return pass(reason::PASS_UPLINK_HOST);
    };

    if proto == IPPROTO_ICMP && l4.tcp_flags != ICMP_ECHO_REPLY {
        if l4.tcp_flags == ICMP_DEST_UNREACH || l4.tcp_flags == ICMP_TIME_EXCEEDED {
            let packed = u64::from(daddr) | ((l4off as u64) << 32) | (u64::from(ttl) << 40);
            return icmp_error(ctx, packed, ep);
        }
        return pass(reason::PASS_UPLINK_HOST);
    }

    let key = CtKey { saddr, daddr, sport: l4.sport, dport: l4.dport, proto, _pad: [0; 3] };
    let Some(rev) = CT.get_ptr(&key) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // SAFETY: map value pointer, valid for this program run.
    let (rflags, raddr, rport) = unsafe { ((*rev).flags, (*rev).addr, (*rev).port) };
    if rflags & CT_F_REVERSE == 0 {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // The forward entry: endpoint:port -> remote.
    let fkey = CtKey {
        saddr: raddr,
        daddr: saddr,
        sport: rport,
        dport: if proto == IPPROTO_ICMP { 0 } else { l4.sport },
        proto,
        _pad: [0; 3],
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(fwd) = CT.get_ptr_mut(&fkey) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // SAFETY: map value pointer, valid for this program run. The forward
    // entry must be live and still translate to this address and port (a
    // reverse entry left behind by a reused tuple must not deliver).
    if unsafe {
        (*fwd).expires_ns <= now || (*fwd).flags & CT_F_REVERSE != 0 || (*fwd).addr != daddr || (*fwd).port != l4.dport
    } {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // SAFETY: the value is copied out before any other map operation.
    let Some(e) = (unsafe { ENDPOINTS_BY_IP.get(&raddr) }).copied() else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    let was = u64::from(daddr) | (u64::from(u16::from_be(l4.dport)) << 32);
    if ttl <= 1 {
        return Verdict { was, ..drop(reason::DROP_TTL_EXCEEDED) };
    }
    let tcp_flags = if proto == IPPROTO_TCP { l4.tcp_flags } else { 0 };
    ct_update(fwd, proto, true, tcp_flags, len, now);

    let l4w = L4 { port_off: if proto == IPPROTO_ICMP { l4.port_off } else { l4off + 2 }, ..l4 };
    if !rewrite_l4(ctx, daddr, raddr, &l4w, l4.dport, rport, proto) {
        return drop(reason::DROP_TRUNCATED);
    }
    // MACs (from the network's gateway to the endpoint), TTL - 1 and the
    // destination with the IPv4 checksum fixed, in one store.
    let Some(hp) = ptr_at::<[u8; HDRS_LEN]>(ctx, 0) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: bounds-checked just above.
    let mut h = unsafe { *hp };
    h[..6].copy_from_slice(&ep.mac);
    h[6..12].copy_from_slice(&ep.gw_mac);
    let check = u16::from_ne_bytes([h[IP_CSUM_OFF], h[IP_CSUM_OFF + 1]]);
    let old_w = u16::from_ne_bytes([ttl, proto]);
    let new_w = u16::from_ne_bytes([ttl - 1, proto]);
    let check = csum_replace_addr_ttl(check, daddr, raddr, old_w, new_w);
    h[IP_TTL_OFF] = ttl - 1;
    h[IP_CSUM_OFF..IP_CSUM_OFF + 2].copy_from_slice(&check.to_ne_bytes());
    h[IP_DADDR_OFF..].copy_from_slice(&raddr.to_ne_bytes());
    if ctx.store(0, &h, 0).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }
    redirect_into(ctx, ep, was)
}

/// MAC rewrite (from the network's gateway to the endpoint) and
/// `bpf_redirect_peer` into the endpoint.
#[inline(always)]
fn deliver(ctx: &TcContext, ep: &EndpointInfo, was: u64) -> Verdict {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.mac);
    macs[6..].copy_from_slice(&ep.gw_mac);
    if ctx.store(0, &macs, 0).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }
    redirect_into(ctx, ep, was)
}

/// `bpf_redirect_peer` into the endpoint (the frame is ready).
#[inline(always)]
fn redirect_into(ctx: &TcContext, ep: &EndpointInfo, was: u64) -> Verdict {
    let _ = ctx.change_type(PACKET_HOST);
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    if ret != i64::from(TC_ACT_REDIRECT) {
        return Verdict { was, ..drop(reason::DROP_REDIRECT_FAILED) };
    }
    Verdict { code: reason::FWD_REVNAT, action: TC_ACT_REDIRECT as i32, out_if: ep.ifindex, dst_flags: 0, was }
}

/// An ICMP destination unreachable / time exceeded about a translated flow:
/// the quoted packet is the one we sent (masq:port -> remote). Restores the
/// quoted source address and port and the outer destination, fixing the
/// quoted IPv4 checksum, the ICMP checksum and the outer IPv4 checksum. The
/// quoted L4 checksum is left as is (nobody checks it).
///
/// `packed`: outer destination address (bits 0-31), offset of the ICMP
/// header (32-39), outer TTL (40-47) — packed to stay within the five
/// registers of a BPF call.
#[inline(never)]
fn icmp_error(ctx: &TcContext, packed: u64, ep: &mut EndpointInfo) -> Verdict {
    let len = ctx.len();
    let daddr = packed as u32;
    let l4off = ((packed >> 32) & 0xff) as usize;
    let ttl = (packed >> 40) as u8;
    let icmp_csum = l4off + 2;
    let inner = l4off + 8;
    let Ok(ih) = ctx.load::<[u8; 20]>(inner) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    let iproto = ih[9];
    let isaddr = u32::from_ne_bytes([ih[12], ih[13], ih[14], ih[15]]);
    let idaddr = u32::from_ne_bytes([ih[16], ih[17], ih[18], ih[19]]);
    let iold_csum = u16::from_ne_bytes([ih[10], ih[11]]);
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
    let (key, port_off, iport) = if iproto == IPPROTO_ICMP {
        if il4[0] != ICMP_ECHO_REQUEST {
            return pass(reason::PASS_UPLINK_HOST);
        }
        let id = u16::from_ne_bytes([il4[4], il4[5]]);
        (reply_key(iproto, isaddr, id, idaddr, 0), inner + 24, id)
    } else {
        let sp = u16::from_ne_bytes([il4[0], il4[1]]);
        let dp = u16::from_ne_bytes([il4[2], il4[3]]);
        (reply_key(iproto, isaddr, sp, idaddr, dp), inner + 20, sp)
    };
    let Some(rev) = CT.get_ptr(&key) else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    // SAFETY: map value pointer, valid for this program run.
    let (rflags, raddr, rport) = unsafe { ((*rev).flags, (*rev).addr, (*rev).port) };
    if rflags & CT_F_REVERSE == 0 {
        return pass(reason::PASS_UPLINK_HOST);
    }
    // SAFETY: the value is copied out before any other map operation.
    let Some(e) = (unsafe { ENDPOINTS_BY_IP.get(&raddr) }).copied() else {
        return pass(reason::PASS_UPLINK_HOST);
    };
    *ep = e;
    let was = u64::from(daddr) | (u64::from(u16::from_be(iport)) << 32);
    if ttl <= 1 {
        return Verdict { was, ..drop(reason::DROP_TTL_EXCEEDED) };
    }
    // Count the error against the flow, as a reply.
    let fkey = CtKey { saddr: raddr, daddr: idaddr, sport: rport, dport: key.sport, proto: iproto, _pad: [0; 3] };
    if let Some(fwd) = CT.get_ptr_mut(&fkey) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe {
            (*fwd).rx_packets += 1;
            (*fwd).rx_bytes += u64::from(len);
        }
    }

    let ok = ctx.store(inner + 12, &raddr, 0).is_ok()
        && ctx.l3_csum_replace(inner + 10, u64::from(isaddr), u64::from(raddr), 4).is_ok()
        && ctx.l4_csum_replace(icmp_csum, u64::from(isaddr), u64::from(raddr), 4).is_ok()
        && ctx.store(port_off, &rport, 0).is_ok()
        && ctx.l4_csum_replace(icmp_csum, u64::from(iport), u64::from(rport), 2).is_ok();
    if !ok {
        return drop(reason::DROP_TRUNCATED);
    }
    let Ok(inew_csum) = ctx.load::<u16>(inner + 10) else {
        return drop(reason::DROP_TRUNCATED);
    };
    let ok = ctx.l4_csum_replace(icmp_csum, u64::from(iold_csum), u64::from(inew_csum), 2).is_ok()
        && ctx.store(IP_DADDR_OFF, &raddr, 0).is_ok()
        && ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(daddr), u64::from(raddr), 4).is_ok()
        && decrement_ttl(ctx, ttl, IPPROTO_ICMP);
    if !ok {
        return drop(reason::DROP_TRUNCATED);
    }
    deliver(ctx, ep, was)
}
