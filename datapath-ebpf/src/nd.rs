//! Neighbour solicitations from an endpoint answered in eBPF, the IPv6
//! analogue of the proxy ARP in `arp`: a solicitation for the network's
//! IPv6 gateway or for another endpoint of the same network is turned into
//! the neighbour advertisement in place and sent back into the requester
//! with `bpf_redirect_peer`, so it never floods the bridge's ports (a
//! solicitation goes to a multicast address). `ipv6` checked the
//! solicitation and chose the answer ([`Advert`]); everything else
//! (duplicate address detection, solicitations for anyone else, with
//! extension headers or another length than the usual one) goes to the
//! bridge.

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo};

use crate::{
    fib,
    hdr::{self, ETH_HLEN, PACKET_HOST},
    verdict::{drop, redirect, Verdict},
};

/// Offset of the ICMPv6 message of a solicitation without extension
/// headers.
pub const ICMP_OFF: usize = ETH_HLEN + 40;
/// A solicitation (and the advertisement it becomes): ICMPv6 type, code and
/// checksum (4), reserved / flags (4), target (16), one link-layer address
/// option (8). Only solicitations of exactly this length are answered (the
/// kernel's, with their source link-layer address option): the answer
/// takes the frame's place without resizing it.
pub const ND_LEN: usize = 32;

const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL: u8 = 2;
/// Advertisement flags: router, solicited, override.
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
const NEXTHDR_ICMPV6: u8 = 58;
/// Neighbour discovery is sent with hop limit 255 (RFC 4861: receivers
/// drop anything else).
pub const HOP_LIMIT: u8 = 255;

/// The answer to a solicitation, chosen by `ipv6` (the addresses are read
/// from the solicitation again: `dp_from_ep`'s frame, where this is
/// handed over, stays as it is).
pub struct Advert {
    /// The MAC that owns the target.
    pub mac: [u8; 6],
    /// The target is the network's gateway (a router).
    pub router: bool,
}

/// The answer `a` to the solicitation from `src` (see [`send`]) and its
/// verdict.
#[inline(always)]
pub fn advertise(ctx: &TcContext, src: &EndpointInfo, a: &Advert) -> Verdict {
    match send(ctx, src, a) {
        reason::FWD_ND_ADVERT => redirect(reason::FWD_ND_ADVERT, src.ifindex),
        code => drop(code),
    }
}

/// Turns the solicitation from `src` into the advertisement `a` ("target
/// is at mac", from the target to the requester) and sends it back into
/// `src`'s namespace. Returns the reason code (`fwd-nd-advert`, or the
/// drop). Out of line, called from `dp_from_ep` (as `local6::send`);
/// returns a scalar (see `arp::decide`).
#[inline(never)]
fn send(ctx: &TcContext, src: &EndpointInfo, a: &Advert) -> u32 {
    // The solicitation's source (the requester) and target.
    let (Ok(to), Ok(t)) = (ctx.load::<[u64; 2]>(ETH_HLEN + 8), ctx.load::<[u64; 2]>(ICMP_OFF + 8)) else {
        return reason::DROP_TRUNCATED;
    };
    let m = a.mac;
    let flags = NA_SOLICITED | NA_OVERRIDE | if a.router { NA_ROUTER } else { 0 };
    let icmp_head = [ND_NEIGHBOUR_ADVERT, 0, 0, 0, flags, 0, 0, 0];
    let opt = [ND_OPT_TARGET_LL, 1, m[0], m[1], m[2], m[3], m[4], m[5]];
    let csum = checksum(&t, &to, &icmp_head, &opt);
    let icmp_head = [ND_NEIGHBOUR_ADVERT, 0, csum[0], csum[1], flags, 0, 0, 0];
    // Version, traffic class, flow label; payload length, next header, hop
    // limit; source (the target), destination (the requester).
    let ip_head = [0x60, 0, 0, 0, 0, ND_LEN as u8, NEXTHDR_ICMPV6, HOP_LIMIT];
    let written = ctx.store(ETH_HLEN, &ip_head, 0).is_ok()
        && ctx.store(ETH_HLEN + 8, &[t[0], t[1], to[0], to[1]], 0).is_ok()
        && ctx.store(ICMP_OFF, &icmp_head, 0).is_ok()
        && ctx.store(ICMP_OFF + 8, &t, 0).is_ok()
        && ctx.store(ICMP_OFF + 24, &opt, 0).is_ok();
    if !written {
        return reason::DROP_TRUNCATED;
    }
    // The MACs last: the stores above invalidate packet pointers.
    let Some(eth) = hdr::eth(ctx) else {
        return reason::DROP_TRUNCATED;
    };
    eth.dst = hdr::mac(src.mac);
    eth.src = hdr::mac(m);
    // A multicast solicitation arrived as PACKET_MULTICAST; the answer is
    // for the requester itself (kernels before 6.15 keep the type across
    // redirect_peer).
    if hdr::skb_pkt_type(ctx) != PACKET_HOST {
        let _ = ctx.change_type(PACKET_HOST);
    }
    if fib::redirect_peer(src.ifindex) {
        reason::FWD_ND_ADVERT
    } else {
        reason::DROP_REDIRECT_FAILED
    }
}

/// The ICMPv6 checksum of the advertisement (checksum field zero) from
/// `t` to `to` (the pseudo-header: addresses, upper-layer length, next
/// header): the one's complement sum of its 32-bit words in host order,
/// folded to 16 bits (RFC 1071: the sum is byte-order independent, so it
/// is stored in host order too), complemented. Returned in wire order.
#[inline(always)]
fn checksum(t: &[u64; 2], to: &[u64; 2], head: &[u8; 8], opt: &[u8; 8]) -> [u8; 2] {
    let halves = |w: u64| (w & 0xffff_ffff) + (w >> 32);
    let word = |b: &[u8; 8]| u64::from_ne_bytes(*b);
    let mut s = halves(t[0]) * 2 + halves(t[1]) * 2 + halves(to[0]) + halves(to[1]);
    s += u64::from(u32::from_ne_bytes([0, 0, 0, ND_LEN as u8]));
    s += u64::from(u32::from_ne_bytes([0, 0, 0, NEXTHDR_ICMPV6]));
    s += halves(word(head)) + halves(word(opt));
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    (!(s as u16)).to_ne_bytes()
}
