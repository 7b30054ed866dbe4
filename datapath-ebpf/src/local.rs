//! Delivery between endpoints of the same network, straight into the
//! destination's namespace with `bpf_redirect_peer` (the bridge is skipped).

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo};

use crate::{
    csum::{self, Nat},
    fib,
    hdr::{self, mac, PACKET_HOST},
    verdict::{drop, pass, redirect, Verdict},
};

/// A packet for another endpoint of the sender's network.
pub struct Delivery {
    /// The destination endpoint.
    pub dst: EndpointInfo,
    /// The frame was sent to the gateway's MAC (routed): TTL - 1,
    /// as the gateway would.
    pub routed: bool,
}

/// MAC rewrite (and TTL - 1 when routed) and `bpf_redirect_peer` into the
/// destination endpoint.
#[inline(always)]
pub fn deliver(ctx: &TcContext, d: &Delivery) -> Verdict {
    let dst = &d.dst;
    let dst_flags = dst.flags;
    let (Some(eth), Some(ip)) = (hdr::eth(ctx), hdr::ipv4(ctx)) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if d.routed {
        // Do what the gateway would do. An expiring packet goes to the
        // kernel, which answers with ICMP time exceeded.
        if ip.ttl <= 1 {
            return Verdict { dst_flags, ..pass(reason::PASS_TO_BRIDGE) };
        }
        csum::forward_ipv4(ip, Nat::Keep);
        eth.src = mac(dst.gw_mac);
    }
    eth.dst = mac(dst.mac);

    // Frames for another MAC than the host-side veth's arrive as
    // PACKET_OTHERHOST; kernels before 6.15 keep that across redirect_peer
    // and ip_rcv then drops the packet.
    if hdr::skb_pkt_type(ctx) != PACKET_HOST {
        let _ = ctx.change_type(PACKET_HOST);
    }
    if fib::redirect_peer(dst.ifindex) {
        Verdict { dst_flags, ..redirect(reason::FWD_REDIRECT_PEER, dst.ifindex) }
    } else {
        Verdict { dst_flags, ..drop(reason::DROP_REDIRECT_FAILED) }
    }
}
