//! IPv6 between endpoints of the same network, straight into the
//! destination's namespace with `bpf_redirect_peer` (the bridge is
//! skipped): `local`'s delivery for IPv6. There is no header checksum to
//! fix: a routed packet only gets its hop limit decremented.

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo};

use crate::{
    fib,
    hdr::{self, mac, ETH_HLEN, PACKET_HOST},
    verdict::{drop, pass, redirect, Verdict},
};

/// A packet for another endpoint of the sender's network (chosen by
/// `ipv6`, delivered by [`deliver`], called from `dp_from_ep`): what of
/// the destination endpoint the delivery needs (no bigger than a
/// `Verdict`, so `dp_from_ep`'s frame does not grow).
pub struct Delivery6 {
    /// The destination's host-side veth.
    pub ifindex: u32,
    /// The destination's `EP_F_*` flags (for the trace).
    pub flags: u32,
    /// The destination's MAC.
    pub mac: [u8; 6],
    /// The gateway's MAC (the source of a routed packet).
    pub gw_mac: [u8; 6],
    /// The frame was sent to the gateway's MAC (routed): hop limit - 1, as
    /// the gateway would.
    pub routed: bool,
}

impl Delivery6 {
    /// The delivery to endpoint `dst`.
    #[inline(always)]
    pub fn to(dst: &EndpointInfo, routed: bool) -> Self {
        Delivery6 { ifindex: dst.ifindex, flags: dst.flags, mac: dst.mac, gw_mac: dst.gw_mac, routed }
    }
}

/// The delivery `d` (see [`send`]) and its verdict.
#[inline(always)]
pub fn deliver(ctx: &TcContext, d: &Delivery6) -> Verdict {
    let v = match send(ctx, d) {
        reason::FWD_REDIRECT_PEER => redirect(reason::FWD_REDIRECT_PEER, d.ifindex),
        reason::PASS_IPV6 => pass(reason::PASS_IPV6),
        code => drop(code),
    };
    Verdict { dst_flags: d.flags, ..v }
}

/// Offset of the hop limit in the frame.
const HOP_LIMIT_OFF: usize = ETH_HLEN + 7;

/// MAC rewrite (and hop limit - 1 with the gateway's MAC as the source
/// when routed) and `bpf_redirect_peer` into the destination endpoint.
/// Returns the reason code:
/// `redirect-peer`, `pass-ipv6` for a routed packet whose hop limit expires
/// (the kernel answers with ICMPv6 time exceeded), or the drop. Out of
/// line, called from `dp_from_ep` (not stacked on `ipv6`'s frame, and
/// verified once per state there rather than once per path through the
/// extension headers); returns a scalar (see `arp::decide`).
#[inline(never)]
fn send(ctx: &TcContext, d: &Delivery6) -> u32 {
    if d.routed {
        // Do what the gateway would do.
        let Ok(hops) = ctx.load::<u8>(HOP_LIMIT_OFF) else {
            return reason::DROP_TRUNCATED;
        };
        if hops <= 1 {
            return reason::PASS_IPV6;
        }
        if ctx.store(HOP_LIMIT_OFF, &(hops - 1), 0).is_err() {
            return reason::DROP_TRUNCATED;
        }
    }
    // Taken after the store (which invalidates packet pointers).
    let Some(eth) = hdr::eth(ctx) else {
        return reason::DROP_TRUNCATED;
    };
    if d.routed {
        eth.src = mac(d.gw_mac);
    }
    eth.dst = mac(d.mac);
    // Frames for another MAC than the host-side veth's arrive as
    // PACKET_OTHERHOST; kernels before 6.15 keep that across redirect_peer
    // and ipv6_rcv then drops the packet.
    if hdr::skb_pkt_type(ctx) != PACKET_HOST {
        let _ = ctx.change_type(PACKET_HOST);
    }
    if fib::redirect_peer(d.ifindex) {
        reason::FWD_REDIRECT_PEER
    } else {
        reason::DROP_REDIRECT_FAILED
    }
}
