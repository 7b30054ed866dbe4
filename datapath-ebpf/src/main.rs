//! eBPF side of the datapath: the TC program `dp_from_ep`.
//!
//! Attached by the agent to the TC ingress of each endpoint's host-side veth,
//! so it sees every frame the endpoint (container) sends. It enforces the
//! endpoint's identity (MAC, IPv4, ARP sender) and delivers unicast IPv4 for
//! another endpoint of the same network straight into that endpoint's
//! namespace with `bpf_redirect_peer`, bypassing the bridge. Everything else is
//! handed to the bridge (`TC_ACT_OK`).
//!
//! Every outcome is counted in `STATS` under exactly one reason code
//! (`datapath_common::reason`). When the sending or the receiving endpoint has
//! `EP_F_TRACE`, exactly one aya-log line is emitted for the packet; otherwise
//! no log call is made at all. The trace code re-reads the frame itself, so the
//! forwarding path carries no trace bookkeeping.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::bpf_redirect_peer,
    macros::{classifier, map},
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::info;
use datapath_common::{
    reason, Counter, EndpointInfo, NetworkInfo, EP_F_TRACE, MAX_ENDPOINTS, MAX_NETWORKS, NET_F_INTERNAL,
    NET_F_MASQUERADE, NET_F_NO_ICC, NET_F_PRESENT,
};

mod nat;

/// Endpoints keyed by the ifindex of their host-side veth.
#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Endpoints keyed by their IPv4 address (network byte order, see
/// `datapath_common::ipv4_key`).
#[map]
pub(crate) static ENDPOINTS_BY_IP: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Local networks indexed by their numeric id (an array: the lookup is
/// inlined by the verifier, no hashing on the per-packet path); slots
/// without `NET_F_PRESENT` are free.
#[map]
static NETWORKS: Array<NetworkInfo> = Array::with_max_entries(MAX_NETWORKS, 0);

/// Every local network's subnet (key data: IPv4 in wire order) -> network id.
#[map]
static SUBNETS: LpmTrie<u32, u32> = LpmTrie::with_max_entries(MAX_NETWORKS, 0);

/// Per-CPU packet/byte counters indexed by reason code.
#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(reason::MAX, 0);

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// IPv4-over-Ethernet ARP body.
const ARP_LEN: usize = 28;
pub(crate) const IPV4_MIN_HLEN: usize = 20;
use datapath_common::{IPPROTO_TCP, IPPROTO_UDP};
/// `skb->pkt_type` for frames addressed to this host.
pub(crate) const PACKET_HOST: u32 = 0;

/// A MAC address as three 16-bit words (bytes in wire order), so it is read,
/// compared and written with three 2-byte accesses instead of six 1-byte ones.
type Mac = [u16; 3];

#[repr(C)]
pub(crate) struct EthHdr {
    pub dst: Mac,
    pub src: Mac,
    /// Big endian.
    pub proto: u16,
}

#[repr(C)]
struct ArpHdr {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    /// Big endian.
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

#[repr(C)]
pub(crate) struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    /// Big endian.
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<ArpHdr>() == ARP_LEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_MIN_HLEN);

/// The decision for one packet.
pub(crate) struct Verdict {
    pub code: u32,
    pub action: i32,
    /// Redirect target, 0 when not redirected (shown by the trace).
    pub out_if: u32,
    /// `flags` of the destination endpoint when one was looked up.
    pub dst_flags: u32,
    /// NAT: what the translation replaced (address in the low 32 bits, port
    /// in host order in the next 16), shown by the trace; 0 otherwise.
    pub was: u64,
}

/// `emit_trace` `was` bit: the packet came in on the uplink.
pub(crate) const DIR_FROM_UPLINK: u64 = 1 << 48;

#[inline(always)]
pub(crate) const fn pass(code: u32) -> Verdict {
    Verdict { code, action: TC_ACT_OK as i32, out_if: 0, dst_flags: 0, was: 0 }
}

#[inline(always)]
pub(crate) const fn drop(code: u32) -> Verdict {
    Verdict { code, action: TC_ACT_SHOT as i32, out_if: 0, dst_flags: 0, was: 0 }
}

/// Makes sure the first `n` bytes of the frame are in the linear area, so
/// that a failing `ptr_at` below `n` really means a short frame. Pulls only
/// when they are not (never the payload: pulling from a cloned skb, which
/// every TCP segment is, copies the whole head). `false`: the frame is
/// shorter than `n`.
#[inline(always)]
pub(crate) fn linear(ctx: &TcContext, n: usize) -> bool {
    if ctx.data() + n <= ctx.data_end() {
        return true;
    }
    if (ctx.len() as usize) < n {
        return false;
    }
    ctx.pull_data(n as u32).is_ok() && ctx.data() + n <= ctx.data_end()
}

/// Bounds-checked pointer to a `T` at `off` bytes into the linear packet data.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Whether the group (broadcast/multicast) bit of a MAC is set.
#[inline(always)]
fn is_multicast(mac: &Mac) -> bool {
    mac[0].to_ne_bytes()[0] & 1 != 0
}

/// The `[u8; 6]` MAC of the shared types as a [`Mac`].
#[inline(always)]
pub(crate) fn mac(b: [u8; 6]) -> Mac {
    [u16::from_ne_bytes([b[0], b[1]]), u16::from_ne_bytes([b[2], b[3]]), u16::from_ne_bytes([b[4], b[5]])]
}

#[classifier]
pub fn dp_from_ep(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();

    // SAFETY: the value is copied out before any other map operation.
    let Some(src) = (unsafe { ENDPOINTS.get(&ifindex) }).copied() else {
        count(reason::PASS_UNKNOWN_IFACE, len);
        return TC_ACT_OK as i32;
    };

    let mut v = from_endpoint(&ctx, &src);
    if v.code == NEED_NAT {
        // Called from here rather than from `from_endpoint` so the two
        // stack frames are not stacked (512 bytes for the whole chain).
        v = nat::nat_egress(&ctx, &src);
    }
    count(v.code, len);
    if (src.flags | v.dst_flags) & EP_F_TRACE != 0 {
        trace(ctx.skb.skb, ifindex, v.code, v.out_if, v.was);
    }
    v.action
}

#[inline(always)]
pub(crate) fn count(code: u32, len: u32) {
    if let Some(c) = STATS.get_ptr_mut(code) {
        // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

/// Internal verdict of `from_endpoint`: masquerade (the scratch slot holds
/// the network and the IPv4 header); never counted.
const NEED_NAT: u32 = reason::MAX + 1;

#[inline(never)]
fn from_endpoint(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    if !linear(ctx, ETH_HLEN) {
        return drop(reason::DROP_TRUNCATED);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: bounds-checked above.
    let (eth_dst, eth_src, proto) = unsafe { ((*eth).dst, (*eth).src, u16::from_be((*eth).proto)) };
    if eth_src != mac(src.mac) {
        return drop(reason::DROP_SPOOFED_MAC);
    }

    match proto {
        ETH_P_ARP => {
            if !linear(ctx, ETH_HLEN + ARP_LEN) {
                return drop(reason::DROP_TRUNCATED);
            }
            let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HLEN) else {
                return drop(reason::DROP_TRUNCATED);
            };
            // SAFETY: bounds-checked above.
            let spa = u32::from_ne_bytes(unsafe { (*arp).spa });
            // 0.0.0.0 is an ARP probe (RFC 5227).
            if spa != src.ipv4 && spa != 0 {
                return drop(reason::DROP_SPOOFED_ARP);
            }
            pass(reason::PASS_ARP)
        }
        ETH_P_IP => from_endpoint_ipv4(ctx, src, &eth_dst),
        _ if is_multicast(&eth_dst) => pass(reason::PASS_BROADCAST),
        _ => pass(reason::PASS_OTHER_PROTO),
    }
}

#[inline(always)]
fn from_endpoint_ipv4(ctx: &TcContext, src: &EndpointInfo, eth_dst: &Mac) -> Verdict {
    if !linear(ctx, ETH_HLEN + IPV4_MIN_HLEN) {
        return drop(reason::DROP_TRUNCATED);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: bounds-checked above.
    let (version_ihl, tot_len, saddr, daddr) =
        unsafe { ((*ip).version_ihl, usize::from(u16::from_be((*ip).tot_len)), (*ip).saddr, (*ip).daddr) };

    let hlen = usize::from(version_ihl & 0x0f) * 4;
    // A GSO packet beyond 64 KiB (BIG TCP) carries tot_len 0; its real length
    // is the skb's.
    // SAFETY: the context pointer is valid for the whole program run.
    let big_gso = tot_len == 0 && unsafe { (*ctx.skb.skb).gso_size } != 0;
    if version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || (tot_len < hlen && !big_gso) {
        return drop(reason::DROP_BAD_IPV4_HEADER);
    }
    if !big_gso && ETH_HLEN + tot_len > ctx.len() as usize {
        return drop(reason::DROP_TRUNCATED);
    }
    // IPv4 options: the whole header must be there too (the pull, if any,
    // moves the packet: pointers are taken again below).
    if hlen > IPV4_MIN_HLEN && !linear(ctx, ETH_HLEN + (hlen & 0x3c)) {
        return drop(reason::DROP_TRUNCATED);
    }
    if saddr != src.ipv4 {
        return drop(reason::DROP_SPOOFED_IP);
    }
    if is_multicast(eth_dst) {
        return pass(reason::PASS_BROADCAST);
    }

    // SAFETY: the value is copied out before any other map operation.
    let dst = unsafe { ENDPOINTS_BY_IP.get(&daddr) }.copied();

    // Network policy (Docker's isolation, icc=false, internal networks).
    if let Some(net) = NETWORKS.get(src.network_id).copied().filter(|n| n.flags & NET_F_PRESENT != 0) {
        if let Some(d) = &dst {
            if d.network_id == src.network_id && d.ifindex != src.ifindex && net.flags & NET_F_NO_ICC != 0 {
                return Verdict { dst_flags: d.flags, ..drop(reason::DROP_POLICY_ICC) };
            }
        }
        if daddr & net.mask != net.subnet {
            let local = match SUBNETS.get(LpmKey::new(32, daddr)) {
                Some(id) if *id != src.network_id => {
                    return drop(reason::DROP_POLICY_ISOLATION);
                }
                Some(_) => true,
                None => false,
            };
            if net.flags & NET_F_INTERNAL != 0 && daddr != net.gateway {
                return drop(reason::DROP_POLICY_INTERNAL);
            }
            // Beyond the node from a masquerading network, routed through
            // the gateway: source NAT here, out the uplink directly.
            if !local && net.flags & NET_F_MASQUERADE != 0 && net.masq_addr != 0 && *eth_dst == mac(src.gw_mac) {
                let Some(sc) = nat::scratch() else {
                    return pass(reason::PASS_TO_BRIDGE);
                };
                let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
                    return drop(reason::DROP_TRUNCATED);
                };
                // SAFETY: `ip` bounds-checked just above; `sc` is this
                // CPU's scratch slot.
                unsafe {
                    (*sc).net = net;
                    (*sc).ip = nat::Ip {
                        saddr,
                        daddr,
                        hlen: hlen as u32,
                        proto: (*ip).proto,
                        ttl: (*ip).ttl,
                        tos: (*ip).tos,
                        frag_off: u16::from_be((*ip).frag_off),
                    };
                }
                return pass(NEED_NAT);
            }
        }
    }

    let Some(dst) = dst else {
        return pass(reason::PASS_TO_BRIDGE);
    };
    let dst_flags = dst.flags;
    if dst.network_id != src.network_id || dst.ifindex == src.ifindex {
        return Verdict { dst_flags, ..pass(reason::PASS_TO_BRIDGE) };
    }

    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: `eth` and `ip` bounds-checked just above.
    unsafe {
        if *eth_dst == mac(src.gw_mac) {
            // Routed through the gateway: do what the gateway would do. An
            // expiring packet goes to the kernel, which answers with ICMP
            // time exceeded.
            if (*ip).ttl <= 1 {
                return Verdict { dst_flags, ..pass(reason::PASS_TO_BRIDGE) };
            }
            // Incremental checksum update for TTL - 1, as ip_decrease_ttl():
            // the TTL is the high byte of its 16-bit word.
            let check = u32::from((*ip).check) + u32::from(0x0100u16.to_be());
            (*ip).check = (check + u32::from(check >= 0xffff)) as u16;
            (*ip).ttl -= 1;
            (*eth).src = mac(dst.gw_mac);
        }
        (*eth).dst = mac(dst.mac);
    }

    // Frames for another MAC than the host-side veth's arrive as
    // PACKET_OTHERHOST; kernels before 6.15 keep that across redirect_peer
    // and ip_rcv then drops the packet.
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
        let _ = ctx.change_type(PACKET_HOST);
    }
    // SAFETY: plain helper call, allowed in TC programs.
    let ret = unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        Verdict {
            code: reason::FWD_REDIRECT_PEER,
            action: TC_ACT_REDIRECT as i32,
            out_if: dst.ifindex,
            dst_flags,
            was: 0,
        }
    } else {
        Verdict { dst_flags, ..drop(reason::DROP_REDIRECT_FAILED) }
    }
}

// ---------------------------------------------------------------------------
// tracing

/// Width of the reason-name column of trace lines: the longest name.
const REASON_NAME_WIDTH: usize = reason::NAME_WIDTH;

/// `reason::name(code)` for every code, padded with spaces to
/// `REASON_NAME_WIDTH`. A fixed-length string keeps every later field of the
/// log record at a constant offset; with variable-length names the log code
/// grows past what the verifier accepts (1M instructions).
static REASON_NAMES: [[u8; REASON_NAME_WIDTH]; reason::MAX as usize] = {
    let mut table = [[b' '; REASON_NAME_WIDTH]; reason::MAX as usize];
    let mut code = 0;
    while code < reason::MAX as usize {
        let name = reason::name(code as u32).as_bytes();
        assert!(name.len() <= REASON_NAME_WIDTH, "a reason name is wider than REASON_NAME_WIDTH");
        let mut i = 0;
        while i < name.len() {
            table[code][i] = name[i];
            i += 1;
        }
        code += 1;
    }
    table
};

/// What `emit_trace` shows besides the frame, handed over through this
/// per-CPU slot rather than as arguments: the verifier then sees one
/// unknown value instead of a constant per call path, and checks the large
/// log code once instead of once per reason code.
#[repr(C)]
struct TraceArgs {
    code: u32,
    out_if: u32,
    was: u64,
}

#[map]
static TRACE_ARGS: PerCpuArray<TraceArgs> = PerCpuArray::with_max_entries(1, 0);

/// Emits the trace line of a packet (see `emit_trace`).
#[inline(always)]
pub(crate) fn trace(skb: *mut __sk_buff, ep: u32, code: u32, out_if: u32, was: u64) {
    if let Some(a) = TRACE_ARGS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            (*a).code = code;
            (*a).out_if = out_if;
            (*a).was = was;
        }
        emit_trace(skb, ep);
    }
}

/// Direction column of trace lines (same width, so one log call serves both).
static DIRS: [[u8; 7]; 2] = [*b"from-ep", *b"from-up"];

/// Emits the one trace line of a packet:
///
/// ```text
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC SADDR[:SPORT] > DADDR[:DPORT] proto=N [-> if=OUT] [was=ADDR:PORT]
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC arp op=N SPA > TPA
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC ethertype=0xNNNN
/// ```
///
/// DIR is `from-ep` (`dp_from_ep`, IFINDEX the sender) or `from-up`
/// (`dp_from_uplink`, IFINDEX the receiving endpoint). REASON is padded
/// with spaces to a fixed width (fields are separated by one or more
/// spaces). Ports are shown for TCP and UDP only. The frame is read again
/// here (after any rewrite: a redirected or translated frame shows what was
/// delivered); `was=` shows what the NAT replaced (the original source of a
/// masqueraded packet, the masquerade address and port of a reply; for ICMP
/// the port is the echo id). Out of line, so the log code exists once and
/// the forwarding path stays small.
#[inline(never)]
fn emit_trace(skb: *mut __sk_buff, ep: u32) {
    let ctx = TcContext::new(skb);
    let Some(a) = TRACE_ARGS.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's slot, filled by `trace` just before.
    let (code, out_if, was) = unsafe { ((*a).code, (*a).out_if, (*a).was) };
    // SAFETY: the tables hold ASCII only.
    let why = unsafe { core::str::from_utf8_unchecked(&REASON_NAMES[(code % reason::MAX) as usize]) };
    let dir = unsafe { core::str::from_utf8_unchecked(&DIRS[usize::from(was & DIR_FROM_UPLINK != 0)]) };
    let (was_addr, was_port) = ((was as u32).to_ne_bytes(), (was >> 32) as u16);
    let eth: [u8; ETH_HLEN] = ctx.load(0).unwrap_or([0; ETH_HLEN]);
    let dmac = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    let smac = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    let proto = u16::from_be_bytes([eth[12], eth[13]]);

    if proto == ETH_P_IP {
        if let Ok(ip) = ctx.load::<[u8; IPV4_MIN_HLEN]>(ETH_HLEN) {
            let (sa, da) = ([ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
            let ip_proto = ip[9];
            let hlen = usize::from(ip[0] & 0x0f) * 4;
            let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
            let ports = if (ip_proto == IPPROTO_TCP || ip_proto == IPPROTO_UDP)
                && ip[0] >> 4 == 4
                && hlen >= IPV4_MIN_HLEN
                && first_fragment
            {
                ctx.load::<[u8; 4]>(ETH_HLEN + hlen).ok()
            } else {
                None
            };
            let nat = was as u32 != 0;
            match (ports, out_if, nat) {
                (Some(p), 0, false) => {
                    let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        sp,
                        da,
                        dp,
                        ip_proto
                    );
                }
                (Some(p), out, false) => {
                    let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={} -> if={}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        sp,
                        da,
                        dp,
                        ip_proto,
                        out
                    );
                }
                (Some(p), out, true) => {
                    let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={} -> if={} was={:i}:{}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        sp,
                        da,
                        dp,
                        ip_proto,
                        out,
                        was_addr,
                        was_port
                    );
                }
                (None, 0, false) => {
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={}", ep, dir, why, smac, dmac, sa, da, ip_proto
                    );
                }
                (None, out, false) => {
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={} -> if={}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        da,
                        ip_proto,
                        out
                    );
                }
                (None, out, true) => {
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={} -> if={} was={:i}:{}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        da,
                        ip_proto,
                        out,
                        was_addr,
                        was_port
                    );
                }
            }
            return;
        }
    } else if proto == ETH_P_ARP {
        if let Ok(arp) = ctx.load::<[u8; ARP_LEN]>(ETH_HLEN) {
            let op = u16::from_be_bytes([arp[6], arp[7]]);
            let (spa, tpa) = ([arp[14], arp[15], arp[16], arp[17]], [arp[24], arp[25], arp[26], arp[27]]);
            info!(&ctx, "ep={} {} {} {:mac} > {:mac} arp op={} {:i} > {:i}", ep, dir, why, smac, dmac, op, spa, tpa);
            return;
        }
    }
    info!(&ctx, "ep={} {} {} {:mac} > {:mac} ethertype=0x{:x}", ep, dir, why, smac, dmac, proto);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
