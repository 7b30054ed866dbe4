//! Next hops and redirects: `bpf_fib_lookup` for masqueraded packets, the
//! next hop cached in their conntrack entry, and the redirect helpers
//! (`bpf_redirect`, `bpf_redirect_neigh`, `bpf_redirect_peer`).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_REDIRECT,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use datapath_common::{reason, CtEntry, CT_FIB_REFRESH_NS, IPPROTO_ICMP};

use crate::hdr::{self, mac, Ip, ETH_HLEN, L4};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An IPv6 address (wire order) as the four words `bpf_fib_lookup` and
/// `bpf_redir_neigh` take.
#[inline(always)]
fn words6(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Fills `fib` with the next hop cached in the forward entry `e` when it may
/// be reused for this packet of `len` bytes: the hop is fresh and goes out
/// the network's uplink (`uplink_ifindex`, 0: unknown), and the packet fits
/// the cached MTU (a GSO packet takes the slow path, where the FIB checks
/// it).
#[inline(always)]
pub fn cached_hop(ctx: &TcContext, e: &CtEntry, uplink_ifindex: u32, len: u32, now: u64, fib: &mut FibParams) -> bool {
    let fif = e.fib_ifindex;
    let hit = fif != 0
        && (uplink_ifindex == 0 || fif == uplink_ifindex)
        && now.wrapping_sub(e.fib_ns) < CT_FIB_REFRESH_NS
        && hdr::skb_gso_size(ctx) == 0
        && len <= e.fib_mtu + ETH_HLEN as u32;
    if hit {
        fib.ifindex = e.fib_ifindex;
        fib.dmac = e.fib_dmac;
        fib.smac = e.fib_smac;
    }
    hit
}

/// Routes the packet (`bpf_fib_lookup` from the ingress interface, the MTU
/// checked by the kernel, GSO-aware); returns the lookup's result code.
#[inline(always)]
pub fn lookup(ctx: &TcContext, ip: &Ip, l4: &L4, fib: &mut FibParams) -> u32 {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    if ip.proto != IPPROTO_ICMP {
        fib.sport = l4.sport;
        fib.dport = l4.dport;
    }
    // tot_len 0: the kernel checks the MTU itself, GSO-aware.
    fib.ifindex = hdr::skb_ifindex(ctx);
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = ip.saddr;
    fib.__bindgen_anon_4.ipv4_dst = ip.daddr;
    // SAFETY: helper call with a buffer of the size given.
    (unsafe {
        bpf_fib_lookup(ctx.skb.skb as *mut _, fib as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0)
    }) as u32
}

/// Routes an IPv6 packet `saddr -> daddr` of `proto` (ports in wire
/// order, ignored for ICMPv6) as [`lookup`] does for IPv4.
#[inline(always)]
pub fn lookup6(
    ctx: &TcContext,
    addrs: (&[u8; 16], &[u8; 16]),
    proto: u8,
    ports: (u16, u16),
    fib: &mut FibParams,
) -> u32 {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET6;
    fib.l4_protocol = proto;
    if proto != datapath_common::IPPROTO_ICMPV6 {
        fib.sport = ports.0;
        fib.dport = ports.1;
    }
    fib.ifindex = hdr::skb_ifindex(ctx);
    fib.__bindgen_anon_3.ipv6_src = words6(addrs.0);
    fib.__bindgen_anon_4.ipv6_dst = words6(addrs.1);
    // SAFETY: helper call with a buffer of the size given.
    (unsafe {
        bpf_fib_lookup(ctx.skb.skb as *mut _, fib as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0)
    }) as u32
}

/// Caches the next hop of a successful lookup in the forward entry `e`.
#[inline(always)]
pub fn remember(e: &mut CtEntry, fib: &FibParams, now: u64) {
    e.fib_ns = now;
    e.fib_ifindex = fib.ifindex;
    // SAFETY: after a lookup with tot_len 0 the union holds the MTU.
    e.fib_mtu = u32::from(unsafe { fib.__bindgen_anon_1.mtu_result });
    e.fib_dmac = fib.dmac;
    e.fib_smac = fib.smac;
}

/// Sends the (translated) packet to the next hop in `fib`: MAC rewrite and
/// `bpf_redirect` when the lookup found the neighbour (`rc` SUCCESS), else
/// `bpf_redirect_neigh` (`rc` NO_NEIGH). Returns the output interface, or
/// the drop reason (the frame is too short, or the helper refused).
#[inline(always)]
pub fn redirect(ctx: &TcContext, rc: u32, fib: &FibParams) -> Result<u32, u32> {
    let out_if = fib.ifindex;
    let ret = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        let Some(eth) = hdr::eth(ctx) else {
            return Err(reason::DROP_TRUNCATED);
        };
        eth.dst = mac(fib.dmac);
        eth.src = mac(fib.smac);
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(out_if, 0) }
    } else {
        // SAFETY: all-zero is a valid bpf_redir_neigh.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        if fib.family == AF_INET6 {
            nh.nh_family = u32::from(AF_INET6);
            // SAFETY: after an IPv6 lookup ipv6_dst holds the next hop.
            nh.__bindgen_anon_1.ipv6_nh = unsafe { fib.__bindgen_anon_4.ipv6_dst };
        } else {
            nh.nh_family = u32::from(AF_INET);
            // SAFETY: after the lookup ipv4_dst holds the next hop.
            nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        }
        // SAFETY: helper call with a stack buffer of the size given.
        unsafe { bpf_redirect_neigh(out_if, &mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) }
    };
    if ret != i64::from(TC_ACT_REDIRECT) {
        return Err(reason::DROP_REDIRECT_FAILED);
    }
    Ok(out_if)
}

/// Whether the lookup result `rc` lets the packet be sent by `redirect`.
#[inline(always)]
pub const fn routed(rc: u32) -> bool {
    rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH
}

/// `bpf_redirect_peer` into the namespace of the endpoint whose host-side
/// veth is `ifindex` (the frame is ready). `false`: refused.
#[inline(always)]
pub fn redirect_peer(ifindex: u32) -> bool {
    // SAFETY: plain helper call, allowed in TC programs.
    (unsafe { bpf_redirect_peer(ifindex, 0) }) == i64::from(TC_ACT_REDIRECT)
}
