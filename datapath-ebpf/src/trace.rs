//! Per-packet trace lines (aya-log), for endpoints with `EP_F_TRACE`.
//!
//! `emit` is longer than the rest of the crate's functions: aya-log needs
//! one format string per combination of optional fields (ports, redirect,
//! NAT), and folding them would change the output format or grow the log
//! code past what the verifier accepts. It is the accepted exception.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use aya_log_ebpf::info;
use datapath_common::{reason, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    hdr::{ARP_LEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPV4_MIN_HLEN},
    maps,
};

/// `trace` `was` bit: the packet came in on the uplink.
pub const DIR_FROM_UPLINK: u64 = 1 << 48;

/// Width of the reason-name column of trace lines: the longest name.
const REASON_NAME_WIDTH: usize = reason::NAME_WIDTH;

/// `reason::name(code)` for every code, padded with spaces to
/// `REASON_NAME_WIDTH`. A fixed-length string keeps every later field of the
/// log record at a constant offset; with variable-length names the log code
/// grows past what the verifier accepts (1M instructions).
static REASON_NAMES: [[u8; REASON_NAME_WIDTH]; reason::MAX as usize] = {
    let mut table = [[b' '; REASON_NAME_WIDTH]; reason::MAX as usize];
    let mut code = 0;
    while code < reason::MAX as usize {
        let name = reason::name(code as u32).as_bytes();
        assert!(name.len() <= REASON_NAME_WIDTH, "a reason name is wider than REASON_NAME_WIDTH");
        let mut i = 0;
        while i < name.len() {
            table[code][i] = name[i];
            i += 1;
        }
        code += 1;
    }
    table
};

/// Emits the trace line of a packet (see `emit`).
#[inline(always)]
pub fn trace(skb: *mut __sk_buff, ep: u32, code: u32, out_if: u32, was: u64) {
    if let Some(a) = maps::trace_args() {
        a.code = code;
        a.out_if = out_if;
        a.was = was;
        // IPv6 in a function of its own, called from here: its frame is
        // not stacked on `emit`'s.
        let ctx = TcContext::new(skb);
        if ctx.load::<u16>(12).is_ok_and(|p| u16::from_be(p) == ETH_P_IPV6) && ipv6(&ctx, ep) {
            return;
        }
        emit(skb, ep);
    }
}

/// Direction column of trace lines (same width, so one log call serves both).
static DIRS: [[u8; 7]; 2] = [*b"from-ep", *b"from-up"];

/// Emits the one trace line of a packet:
///
/// ```text
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC SADDR[:SPORT] > DADDR[:DPORT] proto=N [-> if=OUT] [was=ADDR:PORT]
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC [SADDR6]:SPORT > [DADDR6]:DPORT proto=N [-> if=OUT]
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC SADDR6 > DADDR6 proto=N [-> if=OUT]
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC arp op=N SPA > TPA
/// ep=IFINDEX DIR REASON SRC_MAC > DST_MAC ethertype=0xNNNN
/// ```
///
/// DIR is `from-ep` (`dp_from_ep`, IFINDEX the sender) or `from-up`
/// (`dp_from_uplink`, IFINDEX the receiving endpoint). REASON is padded
/// with spaces to a fixed width (fields are separated by one or more
/// spaces). Ports are shown for TCP and UDP only (for IPv6: right after
/// the fixed header, with the addresses in brackets; `proto` is the fixed
/// header's next header). The frame is read again
/// here (after any rewrite: a redirected or translated frame shows what was
/// delivered); `was=` shows what the NAT replaced (the original source of a
/// masqueraded packet, the masquerade address and port of a reply; for ICMP
/// the port is the echo id). Out of line, so the log code exists once and
/// the forwarding path stays small.
#[inline(never)]
fn emit(skb: *mut __sk_buff, ep: u32) {
    let ctx = TcContext::new(skb);
    let Some(a) = maps::trace_args() else {
        return;
    };
    let (code, out_if, was) = (a.code, a.out_if, a.was);
    // SAFETY: the tables hold ASCII only.
    let why = unsafe { core::str::from_utf8_unchecked(&REASON_NAMES[(code % reason::MAX) as usize]) };
    // SAFETY: as above.
    let dir = unsafe { core::str::from_utf8_unchecked(&DIRS[usize::from(was & DIR_FROM_UPLINK != 0)]) };
    let (was_addr, was_port) = ((was as u32).to_ne_bytes(), (was >> 32) as u16);
    let eth: [u8; ETH_HLEN] = ctx.load(0).unwrap_or([0; ETH_HLEN]);
    let dmac = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    let smac = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    let proto = u16::from_be_bytes([eth[12], eth[13]]);

    if proto == ETH_P_IP {
        if let Ok(ip) = ctx.load::<[u8; IPV4_MIN_HLEN]>(ETH_HLEN) {
            let (sa, da) = ([ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
            let ip_proto = ip[9];
            let hlen = usize::from(ip[0] & 0x0f) * 4;
            let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
            let ports = if (ip_proto == IPPROTO_TCP || ip_proto == IPPROTO_UDP)
                && ip[0] >> 4 == 4
                && hlen >= IPV4_MIN_HLEN
                && first_fragment
            {
                ctx.load::<[u8; 4]>(ETH_HLEN + hlen).ok()
            } else {
                None
            };
            let nat = was as u32 != 0;
            match (ports, out_if, nat) {
                (Some(p), 0, false) => {
                    let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        sp,
                        da,
                        dp,
                        ip_proto
                    );
                }
                (Some(p), out, false) => {
                    let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={} -> if={}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        sp,
                        da,
                        dp,
                        ip_proto,
                        out
                    );
                }
                (Some(p), out, true) => {
                    let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i}:{} > {:i}:{} proto={} -> if={} was={:i}:{}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        sp,
                        da,
                        dp,
                        ip_proto,
                        out,
                        was_addr,
                        was_port
                    );
                }
                (None, 0, false) => {
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={}", ep, dir, why, smac, dmac, sa, da, ip_proto
                    );
                }
                (None, out, false) => {
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={} -> if={}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        da,
                        ip_proto,
                        out
                    );
                }
                (None, out, true) => {
                    info!(
                        &ctx,
                        "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={} -> if={} was={:i}:{}",
                        ep,
                        dir,
                        why,
                        smac,
                        dmac,
                        sa,
                        da,
                        ip_proto,
                        out,
                        was_addr,
                        was_port
                    );
                }
            }
            return;
        }
    } else if proto == ETH_P_ARP {
        if let Ok(arp) = ctx.load::<[u8; ARP_LEN]>(ETH_HLEN) {
            let op = u16::from_be_bytes([arp[6], arp[7]]);
            let (spa, tpa) = ([arp[14], arp[15], arp[16], arp[17]], [arp[24], arp[25], arp[26], arp[27]]);
            info!(&ctx, "ep={} {} {} {:mac} > {:mac} arp op={} {:i} > {:i}", ep, dir, why, smac, dmac, op, spa, tpa);
            return;
        }
    }
    info!(&ctx, "ep={} {} {} {:mac} > {:mac} ethertype=0x{:x}", ep, dir, why, smac, dmac, proto);
}

/// The fixed IPv6 header.
const IPV6_HLEN: usize = 40;

/// The trace line of an IPv6 frame, see `emit` (the columns are read here
/// as there). Out of line: its log code is checked once, apart from
/// IPv4's. `false`: no IPv6 header to show (`emit` shows the ethertype).
#[inline(never)]
fn ipv6(ctx: &TcContext, ep: u32) -> bool {
    let (Some(a), Ok(eth), Ok(ip)) =
        (maps::trace_args(), ctx.load::<[u8; ETH_HLEN]>(0), ctx.load::<[u8; IPV6_HLEN]>(ETH_HLEN))
    else {
        return false;
    };
    let (code, out_if, was) = (a.code, a.out_if, a.was);
    // SAFETY: the tables hold ASCII only.
    let why = unsafe { core::str::from_utf8_unchecked(&REASON_NAMES[(code % reason::MAX) as usize]) };
    // SAFETY: as above.
    let dir = unsafe { core::str::from_utf8_unchecked(&DIRS[usize::from(was & DIR_FROM_UPLINK != 0)]) };
    let dmac = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    let smac = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    let mut sa = [0u8; 16];
    let mut da = [0u8; 16];
    sa.copy_from_slice(&ip[8..24]);
    da.copy_from_slice(&ip[24..40]);
    let nh = ip[6];
    let ports =
        if nh == IPPROTO_TCP || nh == IPPROTO_UDP { ctx.load::<[u8; 4]>(ETH_HLEN + IPV6_HLEN).ok() } else { None };
    match (ports, out_if) {
        (Some(p), 0) => {
            let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
            info!(
                ctx,
                "ep={} {} {} {:mac} > {:mac} [{:i}]:{} > [{:i}]:{} proto={}",
                ep,
                dir,
                why,
                smac,
                dmac,
                sa,
                sp,
                da,
                dp,
                nh
            );
        }
        (Some(p), out) => {
            let (sp, dp) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
            info!(
                ctx,
                "ep={} {} {} {:mac} > {:mac} [{:i}]:{} > [{:i}]:{} proto={} -> if={}",
                ep,
                dir,
                why,
                smac,
                dmac,
                sa,
                sp,
                da,
                dp,
                nh,
                out
            );
        }
        (None, 0) => {
            info!(ctx, "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={}", ep, dir, why, smac, dmac, sa, da, nh);
        }
        (None, out) => {
            info!(
                ctx,
                "ep={} {} {} {:mac} > {:mac} {:i} > {:i} proto={} -> if={}", ep, dir, why, smac, dmac, sa, da, nh, out
            );
        }
    }
    true
}
