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

/// The 32-bit checksum difference of an address change `old -> new` (the
/// helper reads both where they are: stack, map value; no copies).
#[inline(always)]
pub fn addr_diff(old: &[u8; 16], new: &[u8; 16]) -> u64 {
    // SAFETY: helper call reading the 16 bytes of each address (read-only
    // despite the `*mut` of the binding).
    let d = unsafe { bpf_csum_diff(old.as_ptr() as *mut u32, 16, new.as_ptr() as *mut u32, 16, 0) };
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
/// (becoming `new`, `d`: the [`addr_diff`] of the change) and its source port at `port_off` (`ports`), with the
/// quoted L4 checksum at `csum_off` fixed as a plain field (no
/// pseudo-header semantics: it is data of the ICMPv6 message). The changes
/// cancel out in the sum of the quote, so the outer ICMPv6 checksum is left
/// as it is. `false` when a helper failed.
#[inline(always)]
pub fn rewrite_quoted(
    ctx: &TcContext,
    proto: u8,
    (addr_off, new, d): (usize, &[u8; 16], u64),
    (csum_off, port_off): (usize, usize),
    ports: (u16, u16),
) -> bool {
    let m = mangled(proto);
    ctx.l4_csum_replace(csum_off, 0, d, m).is_ok()
        && ctx.store(addr_off, new, 0).is_ok()
        && ctx.store(port_off, &ports.1, 0).is_ok()
        && ctx.l4_csum_replace(csum_off, u64::from(ports.0), u64::from(ports.1), m | 2).is_ok()
}

/// The destination address at `addr_off` (becoming `new`, `d`: the
/// [`addr_diff`] of the change) of an ICMPv6 message whose checksum is at
/// `csum_off` (pseudo-header only).
#[inline(always)]
pub fn rewrite_pseudo(ctx: &TcContext, (addr_off, new, d): (usize, &[u8; 16], u64), csum_off: usize) -> bool {
    ctx.l4_csum_replace(csum_off, 0, d, u64::from(BPF_F_PSEUDO_HDR)).is_ok() && ctx.store(addr_off, new, 0).is_ok()
}
