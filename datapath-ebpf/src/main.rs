//! eBPF side of the datapath: the TC programs `dp_from_ep` and
//! `dp_from_uplink`.
//!
//! `dp_from_ep` is attached by the agent to the TC ingress of each
//! endpoint's host-side veth, so it sees every frame the endpoint
//! (container) sends. It enforces the endpoint's identity (MAC, IPv4, ARP
//! sender, IPv6, neighbour discovery) and the network policy, delivers
//! unicast IPv4 and IPv6 for another endpoint of the same network straight
//! into that endpoint's namespace with `bpf_redirect_peer` (bypassing the
//! bridge), and masquerades traffic leaving the node out the uplink,
//! answers ARP requests and neighbour solicitations for the gateway and for
//! other endpoints of the network itself (proxy ARP / NDP). Everything else is handed to the bridge
//! (`TC_ACT_OK`). `dp_from_uplink`, on the uplink's ingress, translates the
//! replies back and delivers them into their endpoint.
//!
//! Every outcome is counted in `STATS` under exactly one reason code
//! (`datapath_common::reason`). When the sending or the receiving endpoint has
//! `EP_F_TRACE`, exactly one aya-log line is emitted for the packet; otherwise
//! no log call is made at all. The trace code re-reads the frame itself, so the
//! forwarding path carries no trace bookkeeping.
//!
//! Modules, each using only modules below it (no cycles):
//!
//! ```text
//! main ─────> policy, ipv6, local6, nd, nat, nat6, icmp, ports, trace, verdict
//! nat6 ─────> conntrack6, conntrack, csum6, fib, hdr, ipv6 (the type of what it is handed), maps, verdict
//! conntrack6 ─> conntrack (lifetimes), maps, verdict
//! icmp ─────> fib, hdr, maps, verdict
//! policy ───> arp, local, nat (the type of what it hands over), conntrack (idem), hdr, maps, verdict
//! ipv6 ─────> local6, nd (the types of what it hands over), hdr, maps, verdict
//! local6, nd > fib, hdr, verdict
//! arp ──────> fib, hdr, maps, verdict
//! ports ────> conntrack, fib, csum, hdr, maps, verdict
//! local ────> fib, csum, hdr, verdict
//! nat ──────> conntrack, fib, csum, hdr, maps, verdict
//! conntrack ─> hdr, maps, verdict
//! fib, csum ─> hdr
//! trace ────> hdr, maps
//! verdict ──> maps
//! hdr, maps ─> (datapath_common, aya)
//! ```
//!
//! `unsafe` lives in `maps` (map values), `hdr` (packet data and `__sk_buff`
//! fields), `fib` and `conntrack` (helper calls) and `trace` (ASCII tables),
//! each with its SAFETY note.
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod conntrack6;
mod csum;
mod csum6;
mod fib;
mod hdr;
mod icmp;
mod ipv6;
mod local;
mod local6;
mod maps;
mod nat;
mod nat6;
mod nd;
mod policy;
mod ports;
mod trace;
mod verdict;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use datapath_common::{reason, EndpointInfo, EP_F_KERNEL_FLOWS, EP_F_TRACE};

use crate::{policy::Next, trace::DIR_FROM_UPLINK, verdict::count};

#[classifier]
pub fn dp_from_ep(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let Some(src) = maps::endpoint_ref(hdr::skb_ifindex(&ctx)) else {
        count(reason::PASS_UNKNOWN_IFACE, len);
        return TC_ACT_OK;
    };
    // The NAT is called from here rather than from the decision, so the two
    // stack frames are not stacked (512 bytes for the whole chain).
    variant_marker();
    // One verdict slot, written in place by every step: the frame of
    // `dp_from_ep` bounds the NAT's call chain.
    let mut v = verdict::pass(reason::PASS_TO_BRIDGE);
    match policy::decide(&ctx, src) {
        Next::Verdict(d) => v = d,
        Next::Ipv6 => match ipv6::from_endpoint(&ctx, src) {
            ipv6::Next6::Verdict(d) => v = d,
            ipv6::Next6::Beyond(p) => v = nat6::beyond(&ctx, src, &p),
            ipv6::Next6::Local(d) => v = local6::deliver(&ctx, &d),
            ipv6::Next6::Advert(a) => v = nd::advertise(&ctx, src, &a),
        },
        Next::Masquerade(req) if nat::is_later_fragment(&req) => v = nat::egress_fragment(&ctx, &req),
        // A published port's flow first (a reply, or a connection to the
        // node's address), else the masquerade.
        Next::Masquerade(req) => {
            if !published(&ctx, src, &req.ip, &mut v) {
                v = nat::egress(&ctx, src, &req);
                // Out of NAT ports: counted per network, answered at once.
                if v.code == reason::DROP_NAT_NO_PORT {
                    if let Some(ns) = maps::net_stats(src.network_id) {
                        ns.nat_no_port.packets += 1;
                        ns.nat_no_port.bytes += u64::from(len);
                    }
                    v = icmp::refuse(&ctx, src);
                } else if v.code == reason::DROP_CT_INVALID && src.flags & EP_F_KERNEL_FLOWS != 0 {
                    // Not a flow of ours, from an endpoint whose ports a
                    // chained CNI `portmap` publishes: the reply of a
                    // connection the kernel's DNAT made, for the kernel's
                    // conntrack.
                    v = verdict::pass(reason::PASS_KERNEL_FLOW);
                }
            }
        }
        // A published port's flow, else the bridge (`v` as it is).
        Next::ToNode(ip) => {
            published(&ctx, src, &ip, &mut v);
        }
    }
    count(v.code, len);
    if (src.flags | v.dst_flags) & EP_F_TRACE != 0 {
        // The interface it came in on (read again: not kept across the calls).
        trace::trace(ctx.skb.skb, hdr::skb_ifindex(&ctx), v.code, v.out_if, v.was);
    }
    v.action
}

/// A packet from endpoint `src` beyond the node or to its gateway: when it
/// belongs to a published port, its verdict goes to `v` and the answer is
/// `true`. Out of line (`dp_from_ep`'s own frame stays small for the NAT's
/// chain: the verdict is written in place rather than returned); each step
/// is out of line too, called from here so that their frames are not
/// stacked.
#[inline(never)]
fn published(ctx: &TcContext, src: &EndpointInfo, ip: &hdr::Ip, v: &mut verdict::Verdict) -> bool {
    let Some(step) = ports::classify(ctx, ip) else {
        return false;
    };
    let got = match step {
        ports::Step::Reply => ports::reply(ctx, ip),
        ports::Step::Client => Some(ports::client(ctx, ip)),
        ports::Step::Open(t) => Some(ports::open(ctx, src, ip, &t)),
        ports::Step::IcmpError => ports::icmp_error(ctx, ip),
        ports::Step::Drop(code) => Some(verdict::drop(code)),
    };
    match got {
        Some(x) => {
            *v = x;
            true
        }
        None => false,
    }
}

#[classifier]
pub fn dp_from_uplink(ctx: TcContext) -> i32 {
    let len = ctx.len();
    variant_marker();
    let mut ep = EndpointInfo::default();
    let ipv6 = matches!(ctx.load::<u16>(12), Ok(p) if p == hdr::ETH_P_IPV6.to_be());
    let mut v = if ipv6 { nat6::from_uplink(&ctx, &mut ep) } else { nat::from_uplink(&ctx, &mut ep) };
    // No NAT mapping: a connection to a published port, or the node's own.
    if v.code == reason::PASS_UPLINK_HOST && !ipv6 {
        if let Some(p) = ports::from_uplink(&ctx, &mut ep) {
            v = p;
        }
    }
    count(v.code, len);
    if ep.flags & EP_F_TRACE != 0 {
        trace::trace(ctx.skb.skb, ep.ifindex, v.code, v.out_if, v.was | DIR_FROM_UPLINK);
    }
    v.action
}

/// The test-only variant build (`cargo xtask build-ebpf --variant`, cfg
/// `datapath_variant`) differs from the real one by these few instructions,
/// and in nothing it does: an "upgrade" to another program for the tests of
/// in-place replacement.
#[inline(always)]
fn variant_marker() {
    #[cfg(datapath_variant)]
    {
        let x = 0x5afe_u32;
        // SAFETY: a read of a local.
        let _ = unsafe { core::ptr::read_volatile(&x) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
