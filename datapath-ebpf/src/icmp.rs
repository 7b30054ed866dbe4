//! ICMP errors the datapath sends itself, in place of the packet that
//! caused them, back into the endpoint that sent it.
//!
//! Today one: the masquerade found no free NAT port for a new flow
//! ([`refuse`]). Without an answer the endpoint's `connect()` would wait
//! for its own timeout (a dropped SYN is retried for minutes); with a
//! destination unreachable from the gateway it fails at once.

use aya_ebpf::{helpers::generated::bpf_skb_change_tail, programs::TcContext};
use datapath_common::{reason, EndpointInfo};

use crate::{
    fib,
    hdr::{mac, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, ICMP_DEST_UNREACH, IPV4_MIN_HLEN, IP_OFFSET, PACKET_HOST},
    maps,
    verdict::{count, drop, redirect, Verdict},
};

/// Destination unreachable code 13, "communication administratively
/// prohibited": the gateway refuses to forward. Linux reports it as
/// EHOSTUNREACH and, unlike host unreachable (code 1), as a hard error, so
/// a connected UDP socket sees it too (and a TCP `connect()` in SYN-SENT
/// aborts on any unreachable).
const ICMP_PKT_FILTERED: u8 = 13;
/// What is quoted: the option-less IPv4 header and the first 8 bytes of L4
/// (RFC 792), the ports included.
const QUOTE_LEN: usize = IPV4_MIN_HLEN + 8;
/// The error frame: Ethernet, IPv4, ICMP header, quote.
const ERR_ICMP: usize = ETH_HLEN + IPV4_MIN_HLEN;
const ERR_QUOTE: usize = ERR_ICMP + 8;
const ERR_LEN: usize = ERR_QUOTE + QUOTE_LEN;
const ERR_IP_LEN: u16 = (ERR_LEN - ETH_HLEN) as u16;

/// Adds the 16-bit big-endian words of an address (wire order in a `u32`).
#[inline(always)]
fn addr_words(a: u32) -> u32 {
    let b = a.to_ne_bytes();
    u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
}

/// Folds a sum of 16-bit words into the Internet checksum (host order).
#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The packet from endpoint `src` could not be masqueraded for want of a
/// NAT port (counted under `DROP_NAT_NO_PORT`): turns it, in place, into an
/// ICMP destination unreachable (code 13) from the network's gateway to the
/// endpoint, quoting its IPv4 header and first 8 L4 bytes, and sends that
/// back into the endpoint with `bpf_redirect_peer`. A packet with IPv4
/// options, a later fragment, or one the helpers refuse is only dropped.
///
/// Written without loops or large zeroed buffers: it is verified once per
/// way the port search can fail.
#[inline(never)]
pub fn refuse(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    let v = drop(reason::DROP_NAT_NO_PORT);
    let Some(net) = maps::network(src.network_id) else {
        return v;
    };
    // The decision checked the IPv4 header; the egress path read 8 bytes of
    // L4 (TCP: 20) before it ran out of ports.
    let Ok(quote) = ctx.load::<[u8; QUOTE_LEN]>(ETH_HLEN) else {
        return v;
    };
    if quote[0] != 0x45 || u16::from_be_bytes([quote[6], quote[7]]) & IP_OFFSET != 0 {
        return v;
    }
    // IPv4: no options, tos 0xc0 (internetwork control, as the kernel's
    // ICMP errors), DF clear, TTL 64, ICMP, gateway -> endpoint.
    let (ttl, proto) = (64u8, 1u8);
    let ip_sum = 0x45c0
        + u32::from(ERR_IP_LEN)
        + u32::from(u16::from_be_bytes([ttl, proto]))
        + addr_words(net.gateway)
        + addr_words(src.ipv4);
    let ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0xc0,
        tot_len: ERR_IP_LEN.to_be(),
        id: 0,
        frag_off: 0,
        ttl,
        proto,
        check: fold(ip_sum).to_be(),
        saddr: net.gateway,
        daddr: src.ipv4,
    };
    let mut icmp_sum = u32::from(u16::from_be_bytes([ICMP_DEST_UNREACH, ICMP_PKT_FILTERED]));
    let mut i = 0;
    while i < QUOTE_LEN {
        icmp_sum += u32::from(u16::from_be_bytes([quote[i], quote[i + 1]]));
        i += 2;
    }
    let icmp: [u8; 8] = {
        let c = fold(icmp_sum).to_be_bytes();
        [ICMP_DEST_UNREACH, ICMP_PKT_FILTERED, c[0], c[1], 0, 0, 0, 0]
    };
    let eth = EthHdr { dst: mac(src.mac), src: mac(src.gw_mac), proto: ETH_P_IP.to_be() };

    // SAFETY: plain helper call on this program's skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, ERR_LEN as u32, 0) } != 0 {
        return v;
    }
    let stored = ctx.store(0, &eth, 0).is_ok()
        && ctx.store(ETH_HLEN, &ip, 0).is_ok()
        && ctx.store(ERR_ICMP, &icmp, 0).is_ok()
        && ctx.store(ERR_QUOTE, &quote, 0).is_ok();
    if !stored {
        return v;
    }
    let _ = ctx.change_type(PACKET_HOST);
    if !fib::redirect_peer(src.ifindex) {
        return v;
    }
    count(reason::EV_NAT_REFUSED, ERR_LEN as u32);
    redirect(reason::DROP_NAT_NO_PORT, src.ifindex)
}
