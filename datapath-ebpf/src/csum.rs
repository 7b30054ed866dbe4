//! Header rewriting with checksum fixing: the one IPv4 forwarding rewrite
//! (TTL - 1 and maybe one address, used by local delivery, SNAT, reverse NAT
//! and ICMP error translation), the L4 address/port rewrite of the NAT, and
//! the rewrite of the packet quoted by an ICMP error.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use datapath_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::hdr::{Ipv4Hdr, ETH_HLEN, HDRS_LEN, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, IP_TTL_OFF, L4};

/// What a forwarding step does to the addresses of an IPv4 header (the TTL
/// is always decremented).
#[derive(Clone, Copy)]
pub enum Nat {
    /// Nothing (local delivery).
    Keep,
    /// The source becomes this address (SNAT).
    Src(u32),
    /// The destination becomes this address (reverse NAT).
    Dst(u32),
}

/// The IPv4 header checksum `check` after the TTL/protocol word went from
/// `old_w` to `new_w` and, with `addr` `(old, new)`, an address changed
/// (RFC 1624: HC' = ~(~HC + ~m + m'), all in wire order). For the TTL alone
/// it gives, bit for bit, what `ip_decrease_ttl()` gives.
#[inline(always)]
fn ipv4_check(check: u16, old_w: u16, new_w: u16, addr: Option<(u32, u32)>) -> u16 {
    let mut s = u32::from(!check) + u32::from(!old_w) + u32::from(new_w);
    if let Some((old, new)) = addr {
        s += u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16)) + (new & 0xffff) + (new >> 16);
    }
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The TTL/protocol word of the header before and after TTL - 1.
#[inline(always)]
fn ttl_words(ttl: u8, proto: u8) -> (u16, u16) {
    (u16::from_ne_bytes([ttl, proto]), u16::from_ne_bytes([ttl.wrapping_sub(1), proto]))
}

/// The forwarding rewrite of an IPv4 header in the packet: TTL - 1 (the
/// caller checked `ttl > 1`) and the address `nat` names, with the header
/// checksum fixed.
#[inline(always)]
pub fn forward_ipv4(ip: &mut Ipv4Hdr, nat: Nat) {
    let (old_w, new_w) = ttl_words(ip.ttl, ip.proto);
    let addr = match nat {
        Nat::Keep => None,
        Nat::Src(a) => Some((core::mem::replace(&mut ip.saddr, a), a)),
        Nat::Dst(a) => Some((core::mem::replace(&mut ip.daddr, a), a)),
    };
    ip.check = ipv4_check(ip.check, old_w, new_w, addr);
    ip.ttl = ip.ttl.wrapping_sub(1);
}

/// The same rewrite on a copy of the Ethernet and IPv4 headers (the
/// reverse NAT writes MACs and IPv4 header back with one store).
#[inline(always)]
pub fn forward_hdrs(h: &mut [u8; HDRS_LEN], nat: Nat) {
    let ttl = h[IP_TTL_OFF];
    let (old_w, new_w) = ttl_words(ttl, h[IP_TTL_OFF + 1]);
    let (off, new) = match nat {
        Nat::Keep => (0, 0),
        Nat::Src(a) => (IP_SADDR_OFF, a),
        Nat::Dst(a) => (IP_DADDR_OFF, a),
    };
    let addr = (off != 0).then(|| (u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]]), new));
    let check = ipv4_check(u16::from_ne_bytes([h[IP_CSUM_OFF], h[IP_CSUM_OFF + 1]]), old_w, new_w, addr);
    h[IP_TTL_OFF] = ttl.wrapping_sub(1);
    h[IP_CSUM_OFF..IP_CSUM_OFF + 2].copy_from_slice(&check.to_ne_bytes());
    if off != 0 {
        h[off..off + 4].copy_from_slice(&new.to_ne_bytes());
    }
}

/// The L4 side of a translation of an IPv4 address `old_addr` ->
/// `new_addr` (pseudo-header) and of the port at `l4.port_off`: the port is
/// written and the L4 checksum fixed; the IPv4 header is the caller's.
/// `false` when a helper failed (the packet is then dropped).
#[inline(always)]
pub fn rewrite_l4(
    ctx: &TcContext,
    old_addr: u32,
    new_addr: u32,
    l4: &L4,
    old_port: u16,
    new_port: u16,
    proto: u8,
) -> bool {
    let (pseudo, mangled) = match proto {
        IPPROTO_TCP => (BPF_F_PSEUDO_HDR as u64, 0),
        // A zero UDP checksum means none: MARK_MANGLED_0 leaves it zero and
        // turns a computed zero into 0xffff.
        IPPROTO_UDP => (BPF_F_PSEUDO_HDR as u64, BPF_F_MARK_MANGLED_0 as u64),
        // ICMP has no pseudo-header.
        _ => (0, 0),
    };
    // Address and port cannot share one call: for a CHECKSUM_PARTIAL
    // packet only the pseudo-header part (the address) goes into the
    // checksum field.
    if old_addr != new_addr
        && pseudo != 0
        && ctx.l4_csum_replace(l4.csum_off, u64::from(old_addr), u64::from(new_addr), pseudo | mangled | 4).is_err()
    {
        return false;
    }
    if old_port != new_port
        && (ctx.store(l4.port_off, &new_port, 0).is_err()
            || ctx.l4_csum_replace(l4.csum_off, u64::from(old_port), u64::from(new_port), mangled | 2).is_err())
    {
        return false;
    }
    true
}

/// The packet quoted by an ICMP error whose header starts at `icmp`: its
/// source (at `icmp + 8 + 12`) becomes `new_addr` and the port at
/// `port_off` `new_port`, with the quoted IPv4 checksum and the ICMP
/// checksum fixed (the quoted L4 checksum is left as is: nobody checks it).
/// `old_csum` is the quoted IPv4 checksum as it was. `false` when a helper
/// failed.
#[inline(always)]
pub fn rewrite_quote(
    ctx: &TcContext,
    icmp: usize,
    old: (u32, u16),
    new: (u32, u16),
    port_off: usize,
    old_csum: u16,
) -> bool {
    let (icmp_csum, inner) = (icmp + 2, icmp + 8);
    let ok = ctx.store(inner + 12, &new.0, 0).is_ok()
        && ctx.l3_csum_replace(inner + 10, u64::from(old.0), u64::from(new.0), 4).is_ok()
        && ctx.l4_csum_replace(icmp_csum, u64::from(old.0), u64::from(new.0), 4).is_ok()
        && ctx.store(port_off, &new.1, 0).is_ok()
        && ctx.l4_csum_replace(icmp_csum, u64::from(old.1), u64::from(new.1), 2).is_ok();
    if !ok {
        return false;
    }
    let Ok(new_csum) = ctx.load::<u16>(inner + 10) else {
        return false;
    };
    ctx.l4_csum_replace(icmp_csum, u64::from(old_csum), u64::from(new_csum), 2).is_ok()
}

const _: () = assert!(IP_TTL_OFF + 1 == ETH_HLEN + 9);
