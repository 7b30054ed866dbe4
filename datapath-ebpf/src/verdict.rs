//! The decision for one packet, and the per-CPU counters it is counted in.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};

use crate::maps;

/// The decision for one packet.
pub struct Verdict {
    pub code: u32,
    pub action: i32,
    /// Redirect target, 0 when not redirected (shown by the trace).
    pub out_if: u32,
    /// `flags` of the destination endpoint when one was looked up.
    pub dst_flags: u32,
    /// NAT: what the translation replaced (address in the low 32 bits, port
    /// in host order in the next 16), shown by the trace; 0 otherwise.
    pub was: u64,
}

/// Hand the packet on to the kernel (the bridge, or the node's stack).
#[inline(always)]
pub const fn pass(code: u32) -> Verdict {
    Verdict { code, action: TC_ACT_OK, out_if: 0, dst_flags: 0, was: 0 }
}

/// Drop the packet.
#[inline(always)]
pub const fn drop(code: u32) -> Verdict {
    Verdict { code, action: TC_ACT_SHOT, out_if: 0, dst_flags: 0, was: 0 }
}

/// The packet was redirected to `out_if` (a helper returned
/// `TC_ACT_REDIRECT`).
#[inline(always)]
pub const fn redirect(code: u32, out_if: u32) -> Verdict {
    Verdict { code, action: TC_ACT_REDIRECT, out_if, dst_flags: 0, was: 0 }
}

/// Counts a packet (or an event) of `len` bytes under `code`.
#[inline(always)]
pub fn count(code: u32, len: u32) {
    maps::stats_add(code, len);
}
