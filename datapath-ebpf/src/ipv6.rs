//! IPv6 from an endpoint of a dual-stack network: the header checked,
//! bounds first (fixed header, payload length against the frame, extension
//! headers followed up to [`MAX_EXT_HEADERS`]), the endpoint's identity
//! enforced (its own address, its link-local address derived from its MAC,
//! `::` only for duplicate address detection and MLD), neighbour discovery
//! that claims another address or MAC dropped, solicitations for the
//! gateway or a peer answered (`nd`), the network policy (isolation,
//! icc=false, internal networks), and where the packet goes next
//! ([`Next6`]): another endpoint of the network straight into its namespace
//! (`local6`), beyond the node from a masquerading network to `nat6` (the
//! caller calls it, so the frames are not stacked), everything else handed
//! to the bridge. An endpoint without an `ENDPOINTS6` entry (an IPv4-only
//! network) sends no IPv6 at all (`drop-ethertype`).

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo, NET_F_INTERNAL, NET_F_MASQUERADE, NET_F_NO_ICC};

use crate::{
    hdr::{self, ETH_HLEN},
    local6::Delivery6,
    maps,
    nd::{self, Advert},
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

/// An IPv6 packet that passed the checks, as the next step needs it.
// Read by the eBPF NAT66 and local delivery, being written.
#[allow(dead_code)]
#[derive(Clone, Copy)]
pub struct Pkt6 {
    /// Offset of the upper-layer header (past the extension headers).
    pub l4_off: u32,
    /// End of the IPv6 payload (what the payload length says, or the
    /// frame's end for a BIG TCP packet).
    pub end: u32,
    /// The upper-layer protocol (the last next header).
    pub proto: u8,
    /// The packet is a fragment (a fragment header was seen) ...
    pub fragment: bool,
    /// ... and not the first one (no upper-layer header in it).
    pub later_fragment: bool,
    pub _pad: u8,
    /// The sender's network id.
    pub network_id: u32,
}

/// Where an IPv6 frame from an endpoint goes next.
pub enum Next6 {
    /// Decided (dropped, handed to the bridge, delivered to another
    /// endpoint, answered).
    Verdict(Verdict),
    /// Beyond the node from a network that masquerades IPv6: `nat6`.
    Beyond(Pkt6),
    /// For another endpoint of the network: `local6::deliver`.
    Local(Delivery6),
    /// A neighbour solicitation answered: `nd::advertise`.
    Advert(Advert),
}

impl From<Verdict> for Next6 {
    #[inline(always)]
    fn from(v: Verdict) -> Self {
        Next6::Verdict(v)
    }
}

/// The decision for an IPv6 frame from endpoint `src`. Out of line, called from `dp_from_ep` (not from the decision:
/// the two frames are not stacked).
#[inline(never)]
pub fn from_endpoint(ctx: &TcContext, src: &EndpointInfo) -> Next6 {
    check(ctx, src)
}

#[inline(always)]
fn check(ctx: &TcContext, src: &EndpointInfo) -> Next6 {
    let Some(ep6) = maps::endpoint6(hdr::skb_ifindex(ctx)) else {
        return drop(reason::DROP_ETHERTYPE).into();
    };
    let Some(eth) = hdr::eth(ctx) else {
        return drop(reason::DROP_TRUNCATED).into();
    };
    if eth.src != hdr::mac(src.mac) {
        return drop(reason::DROP_SPOOFED_MAC).into();
    }
    // Version, payload length, next header; then the source address.
    let (Ok(h), Ok(s)) = (ctx.load::<[u8; 8]>(ETH_HLEN), ctx.load::<[u64; 2]>(ETH_HLEN + 8)) else {
        return drop(reason::DROP_TRUNCATED).into();
    };
    if (ctx.len() as usize) < ETH_HLEN + IPV6_HLEN {
        return drop(reason::DROP_TRUNCATED).into();
    }
    if h[0] >> 4 != 6 {
        return drop(reason::DROP_BAD_IPV6_HEADER).into();
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let len = ctx.len() as usize;
    // A GSO packet beyond 64 KiB (BIG TCP) carries payload length 0; its
    // real length is the skb's.
    let end = if payload == 0 && hdr::skb_gso_size(ctx) != 0 { len } else { ETH_HLEN + IPV6_HLEN + payload };
    if end > len {
        return drop(reason::DROP_BAD_IPV6_HEADER).into();
    }
    let saddr = (s[0], s[1]);
    let own = words(&ep6.ip6);
    let ll = link_local(&src.mac);
    let unspecified = saddr == (0, 0);
    if !unspecified && !is_own(saddr, own, ll) {
        return drop(reason::DROP_SPOOFED_IP6).into();
    }
    // The extension headers, bounded.
    let mut nh = h[6];
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut later_fragment = false;
    let mut fragment = false;
    let mut i = 0;
    while i < MAX_EXT_HEADERS && is_ext(nh) {
        let Ok(e) = ctx.load::<[u8; 4]>(off) else {
            return drop(reason::DROP_BAD_IPV6_HEADER).into();
        };
        let hlen = match nh {
            NEXTHDR_FRAGMENT => {
                fragment = true;
                later_fragment = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0;
                8
            }
            NEXTHDR_AUTH => (usize::from(e[1]) + 2) * 4,
            _ => (usize::from(e[1]) + 1) * 8,
        };
        nh = e[0];
        off += hlen;
        if off > end {
            return drop(reason::DROP_BAD_IPV6_HEADER).into();
        }
        i += 1;
    }
    if is_ext(nh) {
        return drop(reason::DROP_IPV6_EXT_CHAIN).into();
    }
    if nh == NEXTHDR_ICMPV6 && !later_fragment {
        let Ok(icmp) = ctx.load::<[u8; 4]>(off) else {
            return drop(reason::DROP_BAD_IPV6_HEADER).into();
        };
        match icmp[0] {
            ND_ROUTER_ADVERT | ND_REDIRECT => return drop(reason::DROP_SPOOFED_NDP).into(),
            ND_NEIGHBOUR_SOLICIT | ND_NEIGHBOUR_ADVERT => {
                return neighbour(ctx, src, icmp[0], off, end, saddr, own, ll);
            }
            // Reports during duplicate address detection come from `::`.
            MLD_REPORT | MLD2_REPORT => return pass(reason::PASS_IPV6).into(),
            _ => {}
        }
    }
    if unspecified {
        return drop(reason::DROP_SPOOFED_IP6).into();
    }
    // One call site: its code is verified once per state, not per site.
    let p = Pkt6 {
        l4_off: off as u32,
        end: end as u32,
        proto: nh,
        fragment,
        later_fragment,
        _pad: 0,
        network_id: src.network_id,
    };
    next(ctx, src, &p)
}

/// Where a checked packet `p` from `src` goes, with the network policy
/// for IPv6 (as `policy` for IPv4): multicast and link-local destinations
/// stay on the link (the bridge); an endpoint of the same network is
/// delivered into its namespace (`local6`; dropped with icc=false);
/// another local network's subnet, gateway included, is dropped
/// (isolation); nothing leaves an internal network's subnet; beyond the
/// node from a network that masquerades IPv6 to `nat6`; else (the gateway,
/// an unknown address of the subnet, a network that does not masquerade)
/// the bridge.
#[inline(always)]
fn next(ctx: &TcContext, src: &EndpointInfo, p: &Pkt6) -> Next6 {
    let Ok(d) = ctx.load::<[u8; 16]>(ETH_HLEN + 24) else {
        return drop(reason::DROP_TRUNCATED).into();
    };
    // Multicast (ff00::/8) and link-local unicast (fe80::/10) stay on the link.
    if d[0] == 0xff || (d[0] == 0xfe && d[1] & 0xc0 == 0x80) {
        return pass(reason::PASS_IPV6).into();
    }
    let Some(net) = maps::network6(p.network_id) else {
        return pass(reason::PASS_IPV6).into();
    };
    let dst = maps::endpoint_by_ip6(&d);
    let peer = dst.filter(|e| e.network_id == p.network_id && e.ifindex != src.ifindex);
    if let Some(e) = peer {
        if net.flags & NET_F_NO_ICC != 0 {
            return Verdict { dst_flags: e.flags, ..drop(reason::DROP_POLICY_ICC) }.into();
        }
    }
    match maps::subnet6_of(d) {
        Some(id) if id == p.network_id => {}
        Some(_) => return drop(reason::DROP_POLICY_ISOLATION).into(),
        None if net.flags & NET_F_INTERNAL != 0 => return drop(reason::DROP_POLICY_INTERNAL).into(),
        None if net.flags & NET_F_MASQUERADE != 0 => return Next6::Beyond(*p),
        // Routed by the kernel as it is (`--no-masquerade`, or no IPv6
        // masquerade address).
        None => return pass(reason::PASS_IPV6).into(),
    }
    let Some(e) = peer else {
        // The gateway, an address nobody has, the sender itself.
        return Verdict { dst_flags: dst.map_or(0, |e| e.flags), ..pass(reason::PASS_IPV6) }.into();
    };
    let Some(eth) = hdr::eth(ctx) else {
        return drop(reason::DROP_TRUNCATED).into();
    };
    let (eth_dst, gw) = (eth.dst, hdr::mac(src.gw_mac));
    if hdr::is_multicast(&eth_dst) {
        return Verdict { dst_flags: e.flags, ..pass(reason::PASS_IPV6) }.into();
    }
    Next6::Local(Delivery6::to(&e, eth_dst == gw))
}

/// A neighbour solicitation or advertisement at `off` from `saddr`: an
/// advertisement's target, and a solicitation's during duplicate address
/// detection (from `::`), must be the endpoint's own address; a
/// link-layer address option must carry its own MAC. A solicitation that
/// passes, for the gateway or another endpoint of the network, is answered
/// (`nd`, called by the caller).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn neighbour(
    ctx: &TcContext,
    src: &EndpointInfo,
    kind: u8,
    off: usize,
    end: usize,
    saddr: (u64, u64),
    own: (u64, u64),
    ll: (u64, u64),
) -> Next6 {
    let unspecified = saddr == (0, 0);
    // type, code, checksum, flags/reserved (8 bytes), then the target.
    let Ok(target) = ctx.load::<[u8; 16]>(off + 8) else {
        return drop(reason::DROP_BAD_L4_HEADER).into();
    };
    if off + 24 > end {
        return drop(reason::DROP_BAD_L4_HEADER).into();
    }
    let claims = kind == ND_NEIGHBOUR_ADVERT || unspecified;
    if claims && !is_own(words(&target), own, ll) {
        return drop(reason::DROP_SPOOFED_NDP).into();
    }
    let m = src.mac;
    let mut o = off + 24;
    let mut i = 0;
    while i < MAX_ND_OPTIONS && o < end {
        let Ok(opt) = ctx.load::<[u8; 8]>(o) else {
            return drop(reason::DROP_BAD_L4_HEADER).into();
        };
        if opt[1] == 0 {
            return drop(reason::DROP_BAD_L4_HEADER).into();
        }
        if (opt[0] == ND_OPT_SOURCE_LL || opt[0] == ND_OPT_TARGET_LL)
            && (opt[2] != m[0]
                || opt[3] != m[1]
                || opt[4] != m[2]
                || opt[5] != m[3]
                || opt[6] != m[4]
                || opt[7] != m[5])
        {
            return drop(reason::DROP_SPOOFED_NDP).into();
        }
        o += usize::from(opt[1]) * 8;
        i += 1;
    }
    if o < end {
        // More options than are checked.
        return drop(reason::DROP_BAD_L4_HEADER).into();
    }
    // The usual solicitation (no extension headers, one option) from one of
    // the endpoint's addresses: answered when the target is ours to answer.
    if kind != ND_NEIGHBOUR_SOLICIT || unspecified || off != nd::ICMP_OFF || end != off + nd::ND_LEN {
        return pass(reason::PASS_IPV6).into();
    }
    // Neighbour discovery travels with hop limit 255 (RFC 4861 7.1.1: any
    // other is ignored, as the kernel behind the bridge does).
    if ctx.load::<u8>(ETH_HLEN + 7) != Ok(nd::HOP_LIMIT) {
        return pass(reason::PASS_IPV6).into();
    }
    let Some((mac, router)) = owner(src, &target) else {
        return pass(reason::PASS_IPV6).into();
    };
    Next6::Advert(Advert { mac, router })
}

/// The MAC that owns `target` for endpoint `src`, and whether it is a
/// router: the network's IPv6 gateway (the bridge, `src.gw_mac`, the MAC
/// proxy ARP answers with) or another endpoint of the same network.
/// `None`: not ours to answer (the gateway's link-local address, another
/// network, unknown: the bridge and the kernel answer, or nobody).
#[inline(always)]
fn owner(src: &EndpointInfo, target: &[u8; 16]) -> Option<([u8; 6], bool)> {
    let net = maps::network6(src.network_id)?;
    if words(&net.gateway) == words(target) {
        return Some((src.gw_mac, true));
    }
    let dst = maps::endpoint_by_ip6(target)?;
    if dst.network_id != src.network_id || dst.ifindex == src.ifindex {
        return None;
    }
    Some((dst.mac, false))
}
