//! ARP from an endpoint: the sender address is checked (anti-spoofing), and
//! a request for the network's gateway or for another endpoint of the same
//! network is answered here (proxy ARP): the frame is turned into the reply
//! in place and sent back into the requester with `bpf_redirect_peer`, so it
//! never floods the bridge's ports (a broadcast crosses every one of them:
//! 1022 copies per request with a full bridge). Probes and gratuitous ARP,
//! replies and requests for anyone else go to the bridge as before.

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo};

use crate::{
    fib,
    hdr::{self, linear, ARP_LEN, ETH_HLEN, ETH_P_IP, PACKET_HOST},
    maps,
    verdict::{drop, pass, redirect, Verdict},
};

/// ARP opcodes, hardware type Ethernet.
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const ARPHRD_ETHER: u16 = 1;

/// The verdict for an ARP frame from endpoint `src` (whose source MAC was
/// checked): sent back into `src` (`redirect`), handed to the bridge or
/// dropped, by its reason code.
#[inline(always)]
pub fn from_endpoint(ctx: &TcContext, src: &EndpointInfo) -> Verdict {
    match decide(ctx, src) {
        reason::FWD_ARP_REPLY => redirect(reason::FWD_ARP_REPLY, src.ifindex),
        reason::PASS_ARP => pass(reason::PASS_ARP),
        code => drop(code),
    }
}

/// The reason code of the verdict for an ARP frame from `src`. Out of line
/// (its frame is not stacked on the IPv4 path's), and returning a scalar:
/// the verifier refuses a stack pointer (a returned struct's) in r0.
#[inline(never)]
fn decide(ctx: &TcContext, src: &EndpointInfo) -> u32 {
    if !linear(ctx, ETH_HLEN + ARP_LEN) {
        return reason::DROP_TRUNCATED;
    }
    let Some(arp) = hdr::arp(ctx) else {
        return reason::DROP_TRUNCATED;
    };
    // The sender must be the endpoint: its MAC, and its address or 0.0.0.0
    // (a probe, RFC 5227).
    let spa = u32::from_ne_bytes(arp.spa);
    if (spa != src.ipv4 && spa != 0) || arp.sha != src.mac {
        return reason::DROP_SPOOFED_ARP;
    }
    let tpa = u32::from_ne_bytes(arp.tpa);
    let ethernet_ipv4 = u16::from_be(arp.htype) == ARPHRD_ETHER
        && u16::from_be(arp.ptype) == ETH_P_IP
        && arp.hlen == 6
        && arp.plen == 4;
    // Only a request with the endpoint's own address: probes (sender
    // 0.0.0.0) and announcements (sender = target) are for everyone
    // (duplicate address detection), replies for their destination.
    if !ethernet_ipv4 || u16::from_be(arp.op) != ARPOP_REQUEST || spa == 0 || spa == tpa {
        return reason::PASS_ARP;
    }
    match answer_for(src, tpa) {
        Some(mac) => reply(ctx, src, mac, tpa),
        None => reason::PASS_ARP,
    }
}

/// The MAC that owns `tpa` for endpoint `src`: the network's gateway (the
/// bridge, `src.gw_mac`) or another endpoint of the same network. `None`:
/// not ours to answer (another network, the node, beyond it, unknown).
#[inline(always)]
fn answer_for(src: &EndpointInfo, tpa: u32) -> Option<[u8; 6]> {
    if maps::network(src.network_id).is_some_and(|n| n.gateway == tpa) {
        return Some(src.gw_mac);
    }
    let dst = maps::endpoint_by_ip(tpa)?;
    if dst.network_id != src.network_id || dst.ifindex == src.ifindex {
        return None;
    }
    Some(dst.mac)
}

/// Turns the request into the reply in place ("`tpa` is at `mac`", to the
/// requester) and sends it back into the requester's namespace. The
/// endpoint that owns `tpa` sees nothing (and is not traced for it).
#[inline(always)]
fn reply(ctx: &TcContext, src: &EndpointInfo, mac: [u8; 6], tpa: u32) -> u32 {
    let (Some(eth), Some(arp)) = (hdr::eth(ctx), hdr::arp_mut(ctx)) else {
        return reason::DROP_TRUNCATED;
    };
    eth.dst = hdr::mac(src.mac);
    eth.src = hdr::mac(mac);
    arp.op = ARPOP_REPLY.to_be();
    arp.sha = mac;
    arp.spa = tpa.to_ne_bytes();
    arp.tha = src.mac;
    arp.tpa = src.ipv4.to_ne_bytes();
    // A broadcast request arrived as PACKET_BROADCAST; the reply is for the
    // requester itself (kernels before 6.15 keep the type across
    // redirect_peer).
    if hdr::skb_pkt_type(ctx) != PACKET_HOST {
        let _ = ctx.change_type(PACKET_HOST);
    }
    if fib::redirect_peer(src.ifindex) {
        reason::FWD_ARP_REPLY
    } else {
        reason::DROP_REDIRECT_FAILED
    }
}
