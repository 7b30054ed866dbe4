//! Checksum fixing for IPv6 translations. IPv6 has no header checksum;
//! the L4 checksums (TCP, UDP and, unlike ICMPv4's, ICMPv6's) cover a
//! pseudo-header with both 128-bit addresses, so an address change is one
//! `bpf_csum_diff` of the two addresses applied to the L4 checksum.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use datapath_common::IPPROTO_UDP;

/// The 32-bit checksum difference of an address change `old -> new`.
#[inline(always)]
pub fn addr_diff(old: &[u8; 16], new: &[u8; 16]) -> u64 {
    let w = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let mut from = [w(old, 0), w(old, 4), w(old, 8), w(old, 12)];
    let mut to = [w(new, 0), w(new, 4), w(new, 8), w(new, 12)];
    // SAFETY: helper call with two 16-byte stack buffers of the sizes given.
    let d = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    u64::from(d as u32)
}

/// The flags that keep a zero UDP checksum (none) zero, and a computed
/// zero 0xffff.
#[inline(always)]
fn mangled(proto: u8) -> u64 {
    if proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Rewrites the address at `addr_off` (`old -> new`, a pseudo-header
/// address of the L4 header of `proto` whose checksum is at `csum_off`)
/// and the port (or ICMPv6 echo id) at `port_off` (`ports`: old, new, wire
/// order), fixing the checksum: the address part with `BPF_F_PSEUDO_HDR`
/// (right for a CHECKSUM_PARTIAL packet, whose field holds only the
/// pseudo-header sum). `false` when a helper failed.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    proto: u8,
    (addr_off, old, new): (usize, &[u8; 16], &[u8; 16]),
    (csum_off, port_off): (usize, usize),
    ports: (u16, u16),
) -> bool {
    let m = mangled(proto);
    let d = addr_diff(old, new);
    if ctx.l4_csum_replace(csum_off, 0, d, u64::from(BPF_F_PSEUDO_HDR) | m).is_err()
        || ctx.store(addr_off, new, 0).is_err()
    {
        return false;
    }
    ports.0 == ports.1
        || (ctx.store(port_off, &ports.1, 0).is_ok()
            && ctx.l4_csum_replace(csum_off, u64::from(ports.0), u64::from(ports.1), m | 2).is_ok())
}

/// The packet quoted by an ICMPv6 error: its source address at `addr_off`
/// (`old -> new`) and its source port at `port_off` (`ports`), with the
/// quoted L4 checksum at `csum_off` fixed as a plain field (no
/// pseudo-header semantics: it is data of the ICMPv6 message). The changes
/// cancel out in the sum of the quote, so the outer ICMPv6 checksum is left
/// as it is. `false` when a helper failed.
#[inline(always)]
pub fn rewrite_quoted(
    ctx: &TcContext,
    proto: u8,
    (addr_off, old, new): (usize, &[u8; 16], &[u8; 16]),
    (csum_off, port_off): (usize, usize),
    ports: (u16, u16),
) -> bool {
    let m = mangled(proto);
    let d = addr_diff(old, new);
    ctx.l4_csum_replace(csum_off, 0, d, m).is_ok()
        && ctx.store(addr_off, new, 0).is_ok()
        && ctx.store(port_off, &ports.1, 0).is_ok()
        && ctx.l4_csum_replace(csum_off, u64::from(ports.0), u64::from(ports.1), m | 2).is_ok()
}

/// The destination address at `addr_off` (`old -> new`) of an ICMPv6
/// message whose checksum is at `csum_off` (pseudo-header only).
#[inline(always)]
pub fn rewrite_pseudo(ctx: &TcContext, (addr_off, old, new): (usize, &[u8; 16], &[u8; 16]), csum_off: usize) -> bool {
    let d = addr_diff(old, new);
    ctx.l4_csum_replace(csum_off, 0, d, u64::from(BPF_F_PSEUDO_HDR)).is_ok() && ctx.store(addr_off, new, 0).is_ok()
}
