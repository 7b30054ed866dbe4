//! IPv6 from an endpoint of a dual-stack network, for now (the interim
//! before the eBPF IPv6 fast path): the header checked, bounds first
//! (fixed header, payload length against the frame, extension headers
//! followed up to [`MAX_EXT_HEADERS`]), the endpoint's identity enforced
//! (its own address, its link-local address derived from its MAC, `::` only
//! for duplicate address detection and MLD), neighbour discovery that
//! claims another address or MAC dropped, and everything else handed to
//! the bridge: the kernel forwards, isolates and masquerades IPv6 with
//! nftables on eBPF networks too. An endpoint without an `ENDPOINTS6` entry
//! (an IPv4-only network) sends no IPv6 at all (`drop-ethertype`).

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo};

use crate::{
    hdr::{self, ETH_HLEN},
    maps,
    verdict::{drop, pass, Verdict},
};

/// The fixed IPv6 header.
const IPV6_HLEN: usize = 40;
/// Extension headers followed before the upper-layer header; a longer
/// chain is dropped (`drop-ipv6-ext-chain`).
pub const MAX_EXT_HEADERS: u32 = 6;
/// Neighbour discovery options checked; a message with more is dropped.
const MAX_ND_OPTIONS: u32 = 4;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_ICMPV6: u8 = 58;

const MLD_REPORT: u8 = 131;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;

const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;

#[inline(always)]
fn is_ext(nh: u8) -> bool {
    nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_FRAGMENT || nh == NEXTHDR_AUTH || nh == NEXTHDR_DEST
}

/// An address as two words (compared without `memcmp`, which BPF lacks).
#[inline(always)]
fn words(b: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// The endpoint's link-local address: fe80::/64 with the modified EUI-64
/// interface id of its MAC (what the kernel configures by default).
#[inline(always)]
fn link_local(m: &[u8; 6]) -> (u64, u64) {
    (
        u64::from_ne_bytes([0xfe, 0x80, 0, 0, 0, 0, 0, 0]),
        u64::from_ne_bytes([m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]),
    )
}

/// Whether `a` is one of the endpoint's own addresses.
#[inline(always)]
fn is_own(a: (u64, u64), own: (u64, u64), ll: (u64, u64)) -> bool {
    a == own || a == ll
}

/// The decision for an IPv6 frame from endpoint `src`. Out of line, called from `dp_from_ep` (not from the decision:
/// the two frames are not stacked).
#[inline(never)]
pub fn from_endpoint(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    let Some(ep6) = maps::endpoint6(hdr::skb_ifindex(ctx)) else {
        return drop(reason::DROP_ETHERTYPE);
    };
    let Some(eth) = hdr::eth(ctx) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if eth.src != hdr::mac(src.mac) {
        return drop(reason::DROP_SPOOFED_MAC);
    }
    // Version, payload length, next header; then the source address.
    let (Ok(h), Ok(s)) = (ctx.load::<[u8; 8]>(ETH_HLEN), ctx.load::<[u64; 2]>(ETH_HLEN + 8)) else {
        return drop(reason::DROP_TRUNCATED);
    };
    if (ctx.len() as usize) < ETH_HLEN + IPV6_HLEN {
        return drop(reason::DROP_TRUNCATED);
    }
    if h[0] >> 4 != 6 {
        return drop(reason::DROP_BAD_IPV6_HEADER);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let len = ctx.len() as usize;
    // A GSO packet beyond 64 KiB (BIG TCP) carries payload length 0; its
    // real length is the skb's.
    let end = if payload == 0 && hdr::skb_gso_size(ctx) != 0 { len } else { ETH_HLEN + IPV6_HLEN + payload };
    if end > len {
        return drop(reason::DROP_BAD_IPV6_HEADER);
    }
    let saddr = (s[0], s[1]);
    let own = words(&ep6.ip6);
    let ll = link_local(&src.mac);
    let unspecified = saddr == (0, 0);
    if !unspecified && !is_own(saddr, own, ll) {
        return drop(reason::DROP_SPOOFED_IP6);
    }
    // The extension headers, bounded.
    let mut nh = h[6];
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut later_fragment = false;
    let mut i = 0;
    while i < MAX_EXT_HEADERS && is_ext(nh) {
        let Ok(e) = ctx.load::<[u8; 4]>(off) else {
            return drop(reason::DROP_BAD_IPV6_HEADER);
        };
        let hlen = match nh {
            NEXTHDR_FRAGMENT => {
                later_fragment = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0;
                8
            }
            NEXTHDR_AUTH => (usize::from(e[1]) + 2) * 4,
            _ => (usize::from(e[1]) + 1) * 8,
        };
        nh = e[0];
        off += hlen;
        if off > end {
            return drop(reason::DROP_BAD_IPV6_HEADER);
        }
        i += 1;
    }
    if is_ext(nh) {
        return drop(reason::DROP_IPV6_EXT_CHAIN);
    }
    if nh != NEXTHDR_ICMPV6 || later_fragment {
        return if unspecified { drop(reason::DROP_SPOOFED_IP6) } else { pass(reason::PASS_IPV6) };
    }
    let Ok(icmp) = ctx.load::<[u8; 4]>(off) else {
        return drop(reason::DROP_BAD_IPV6_HEADER);
    };
    match icmp[0] {
        ND_ROUTER_ADVERT | ND_REDIRECT => drop(reason::DROP_SPOOFED_NDP),
        ND_NEIGHBOUR_SOLICIT | ND_NEIGHBOUR_ADVERT => neighbour(ctx, src, icmp[0], off, end, unspecified, own, ll),
        // Reports during duplicate address detection come from `::`.
        MLD_REPORT | MLD2_REPORT => pass(reason::PASS_IPV6),
        _ if unspecified => drop(reason::DROP_SPOOFED_IP6),
        _ => pass(reason::PASS_IPV6),
    }
}

/// A neighbour solicitation or advertisement at `off`: an advertisement's
/// target, and a solicitation's during duplicate address detection (from
/// `::`), must be the endpoint's own address; a link-layer address option
/// must carry its own MAC.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn neighbour(
    ctx: &TcContext,
    src: &EndpointInfo,
    kind: u8,
    off: usize,
    end: usize,
    unspecified: bool,
    own: (u64, u64),
    ll: (u64, u64),
) -> Verdict {
    // type, code, checksum, flags/reserved (8 bytes), then the target.
    let Ok(target) = ctx.load::<[u8; 16]>(off + 8) else {
        return drop(reason::DROP_BAD_L4_HEADER);
    };
    if off + 24 > end {
        return drop(reason::DROP_BAD_L4_HEADER);
    }
    let claims = kind == ND_NEIGHBOUR_ADVERT || unspecified;
    if claims && !is_own(words(&target), own, ll) {
        return drop(reason::DROP_SPOOFED_NDP);
    }
    let m = src.mac;
    let mut o = off + 24;
    let mut i = 0;
    while i < MAX_ND_OPTIONS && o < end {
        let Ok(opt) = ctx.load::<[u8; 8]>(o) else {
            return drop(reason::DROP_BAD_L4_HEADER);
        };
        if opt[1] == 0 {
            return drop(reason::DROP_BAD_L4_HEADER);
        }
        if (opt[0] == ND_OPT_SOURCE_LL || opt[0] == ND_OPT_TARGET_LL)
            && (opt[2] != m[0]
                || opt[3] != m[1]
                || opt[4] != m[2]
                || opt[5] != m[3]
                || opt[6] != m[4]
                || opt[7] != m[5])
        {
            return drop(reason::DROP_SPOOFED_NDP);
        }
        o += usize::from(opt[1]) * 8;
        i += 1;
    }
    if o < end {
        // More options than are checked.
        return drop(reason::DROP_BAD_L4_HEADER);
    }
    pass(reason::PASS_IPV6)
}
