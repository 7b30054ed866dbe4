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
//! (`datapath_common::reason`). When the sending or receiving endpoint has
//! `EP_F_TRACE`, exactly one aya-log line is emitted for the packet; otherwise
//! no log call is made at all.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::bpf_redirect_peer,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::info;
use datapath_common::{reason, EndpointInfo, Counter, EP_F_TRACE, MAX_ENDPOINTS};

/// Endpoints keyed by the ifindex of their host-side veth.
#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Endpoints keyed by their IPv4 address (network byte order, see
/// `datapath_common::ipv4_key`).
#[map]
static ENDPOINTS_BY_IP: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Per-CPU packet/byte counters indexed by reason code.
#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(reason::MAX, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// IPv4-over-Ethernet ARP body.
const ARP_LEN: usize = 28;
const _: () = assert!(core::mem::size_of::<ArpHdr>() == ARP_LEN);
const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const IPV4_MIN_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Enough linear data for the Ethernet header, the largest IPv4 header and
/// the L4 ports (only the trace reads those, and it uses `bpf_skb_load_bytes`).
const PULL_LEN: u32 = (ETH_HLEN + 60 + 4) as u32;
/// `skb->pkt_type` for frames addressed to this host.
const PACKET_HOST: u32 = 0;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    /// Big endian.
    proto: u16,
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
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    /// Big endian.
    tot_len: u16,
    id: u16,
    /// Big endian.
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// What the trace line shows. Filled while the packet is parsed; only read
/// when tracing is on.
#[derive(Clone, Copy)]
#[repr(C)]
struct Trace {
    ifindex: u32,
    code: u32,
    kind: u32,
    /// Redirect target ifindex, 0 when the packet was not redirected.
    out_if: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// Ethertype (host order) for `KIND_OTHER`, ARP opcode for `KIND_ARP`,
    /// IPv4 protocol for `KIND_IPV4`.
    num: u32,
    /// Offset of the L4 header when the ports should be shown, else 0.
    l4_off: u32,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

const KIND_OTHER: u32 = 0;
const KIND_ARP: u32 = 1;
const KIND_IPV4: u32 = 2;

/// The decision for one packet.
struct Verdict {
    code: u32,
    action: i32,
}

#[inline(always)]
const fn pass(code: u32) -> Verdict {
    Verdict { code, action: TC_ACT_OK as i32 }
}

#[inline(always)]
const fn drop(code: u32) -> Verdict {
    Verdict { code, action: TC_ACT_SHOT as i32 }
}

/// Bounds-checked pointer to a `T` at `off` bytes into the linear packet data.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

#[classifier]
pub fn dp_from_ep(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();

    // SAFETY: the value is copied out before any other map operation.
    let src = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) => *ep,
        None => {
            count(reason::PASS_UNKNOWN_IFACE, len);
            return TC_ACT_OK as i32;
        }
    };

    let mut t = Trace {
        ifindex,
        code: 0,
        kind: KIND_OTHER,
        out_if: 0,
        src_mac: [0; 6],
        dst_mac: [0; 6],
        num: 0,
        l4_off: 0,
        saddr: [0; 4],
        daddr: [0; 4],
    };
    let mut dst_flags = 0u32;
    let v = from_endpoint(&ctx, &src, &mut t, &mut dst_flags);

    count(v.code, len);
    if (src.flags | dst_flags) & EP_F_TRACE != 0 {
        t.code = v.code;
        emit_trace(ctx.skb.skb, &t);
    }
    v.action
}

#[inline(always)]
fn count(code: u32, len: u32) {
    if let Some(c) = STATS.get_ptr_mut(code) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
fn from_endpoint(
    ctx: &TcContext,
    src: &EndpointInfo,
    t: &mut Trace,
    dst_flags: &mut u32,
) -> Verdict {
    let len = ctx.len();
    if (len as usize) < ETH_HLEN {
        return drop(reason::DROP_TRUNCATED);
    }
    // Make sure the headers we look at are in the linear area, so a short
    // `data_end` really means a short frame.
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    if ((ctx.data_end() - ctx.data()) as u32) < want && ctx.pull_data(want).is_err() {
        return drop(reason::DROP_TRUNCATED);
    }

    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: bounds-checked above.
    let (eth_dst, eth_src, proto) = unsafe { ((*eth).dst, (*eth).src, u16::from_be((*eth).proto)) };
    t.src_mac = eth_src;
    t.dst_mac = eth_dst;
    t.num = u32::from(proto);
    if eth_src != src.mac {
        return drop(reason::DROP_SPOOFED_MAC);
    }

    match proto {
        ETH_P_ARP => {
            t.kind = KIND_ARP;
            let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HLEN) else {
                return drop(reason::DROP_TRUNCATED);
            };
            // SAFETY: bounds-checked above.
            let (op, spa, tpa) = unsafe { (u16::from_be((*arp).op), (*arp).spa, (*arp).tpa) };
            t.num = u32::from(op);
            t.saddr = spa;
            t.daddr = tpa;
            let spa = u32::from_ne_bytes(spa);
            if spa != src.ipv4 && spa != 0 {
                return drop(reason::DROP_SPOOFED_ARP);
            }
            pass(reason::PASS_ARP)
        }
        ETH_P_IP => {
            t.kind = KIND_IPV4;
            from_endpoint_ipv4(ctx, src, eth, t, dst_flags)
        }
        _ => {
            if is_multicast(&eth_dst) {
                pass(reason::PASS_BROADCAST)
            } else {
                pass(reason::PASS_OTHER_PROTO)
            }
        }
    }
}

#[inline(always)]
fn from_endpoint_ipv4(
    ctx: &TcContext,
    src: &EndpointInfo,
    eth: *mut EthHdr,
    t: &mut Trace,
    dst_flags: &mut u32,
) -> Verdict {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: bounds-checked above.
    let (version_ihl, tot_len, frag_off, ip_proto, saddr, daddr) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len) as usize,
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    t.num = u32::from(ip_proto);
    t.saddr = saddr.to_ne_bytes();
    t.daddr = daddr.to_ne_bytes();

    let hlen = usize::from(version_ihl & 0x0f) * 4;
    // A GSO packet beyond 64 KiB (BIG TCP) carries tot_len 0; its real length
    // is the skb's.
    // SAFETY: the context pointer is valid for the whole program run.
    let big_gso = tot_len == 0 && unsafe { (*ctx.skb.skb).gso_size } != 0;
    if version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || (tot_len < hlen && !big_gso) {
        return drop(reason::DROP_BAD_IPV4_HEADER);
    }
    if ETH_HLEN + hlen > ctx.data_end() - ctx.data()
        || (!big_gso && ETH_HLEN + tot_len > ctx.len() as usize)
    {
        return drop(reason::DROP_TRUNCATED);
    }
    if (ip_proto == IPPROTO_TCP || ip_proto == IPPROTO_UDP) && frag_off & 0x1fff == 0 {
        t.l4_off = (ETH_HLEN + hlen) as u32;
    }
    if saddr != src.ipv4 {
        return drop(reason::DROP_SPOOFED_IP);
    }
    if is_multicast(&t.dst_mac) {
        return pass(reason::PASS_BROADCAST);
    }

    // SAFETY: the value is copied out before any other map operation.
    let Some(dst) = (unsafe { ENDPOINTS_BY_IP.get(&daddr) }).copied() else {
        return pass(reason::PASS_TO_BRIDGE);
    };
    *dst_flags = dst.flags;
    if dst.network_id != src.network_id || dst.ifindex == src.ifindex {
        return pass(reason::PASS_TO_BRIDGE);
    }

    let routed = t.dst_mac == src.gw_mac;
    // SAFETY: `eth` and `ip` were bounds-checked and no helper that moves
    // packet data ran since.
    unsafe {
        if routed {
            // The gateway would decrement the TTL; an expiring packet goes to
            // the kernel, which answers with ICMP time exceeded.
            if (*ip).ttl <= 1 {
                return pass(reason::PASS_TO_BRIDGE);
            }
            // Incremental checksum update for TTL - 1 (as ip_decrease_ttl):
            // the TTL is the high byte of its 16-bit word.
            let check = u32::from((*ip).check) + u32::from(0x0100u16.to_be());
            (*ip).check = (check + u32::from(check >= 0xffff)) as u16;
            (*ip).ttl -= 1;
            (*eth).src = dst.gw_mac;
        }
        (*eth).dst = dst.mac;
    }

    // Frames for the gateway MAC arrive as PACKET_OTHERHOST; kernels before
    // 6.15 keep that across redirect_peer and ip_rcv drops the packet.
    let _ = ctx.change_type(PACKET_HOST);
    // SAFETY: plain helper call, valid in TC programs.
    let ret = unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        t.out_if = dst.ifindex;
        Verdict { code: reason::FWD_REDIRECT_PEER, action: TC_ACT_REDIRECT as i32 }
    } else {
        drop(reason::DROP_REDIRECT_FAILED)
    }
}

/// Emits the one trace line for a packet. Kept out of line so the log code
/// exists once in the object and costs nothing when tracing is off.
#[inline(never)]
fn emit_trace(skb: *mut __sk_buff, t: &Trace) {
    let ctx = TcContext::new(skb);
    let ep = t.ifindex;
    let why = reason::name(t.code);
    let (smac, dmac) = (t.src_mac, t.dst_mac);
    match t.kind {
        KIND_IPV4 => {
            let (sa, da, proto, out) = (t.saddr, t.daddr, t.num, t.out_if);
            if t.l4_off != 0 {
                let ports: [u8; 4] = ctx.load(t.l4_off as usize).unwrap_or([0; 4]);
                let sport = u16::from_be_bytes([ports[0], ports[1]]);
                let dport = u16::from_be_bytes([ports[2], ports[3]]);
                if out != 0 {
                    info!(&ctx, "ep={} from-ep {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={} -> if={}",
                        ep, why, smac, dmac, sa, sport, da, dport, proto, out);
                } else {
                    info!(&ctx, "ep={} from-ep {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={}",
                        ep, why, smac, dmac, sa, sport, da, dport, proto);
                }
            } else if out != 0 {
                info!(&ctx, "ep={} from-ep {} {:mac} > {:mac} {:i} > {:i} proto={} -> if={}",
                    ep, why, smac, dmac, sa, da, proto, out);
            } else {
                info!(&ctx, "ep={} from-ep {} {:mac} > {:mac} {:i} > {:i} proto={}",
                    ep, why, smac, dmac, sa, da, proto);
            }
        }
        KIND_ARP => {
            let (op, spa, tpa) = (t.num, t.saddr, t.daddr);
            info!(&ctx, "ep={} from-ep {} {:mac} > {:mac} arp op={} {:i} > {:i}",
                ep, why, smac, dmac, op, spa, tpa);
        }
        _ => {
            let ethertype = t.num;
            info!(&ctx, "ep={} from-ep {} {:mac} > {:mac} ethertype=0x{:x}",
                ep, why, smac, dmac, ethertype);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
