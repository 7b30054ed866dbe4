//! The eBPF object embedded at build time (see `build.rs`).

/// Bytes of the eBPF object, 8-byte aligned as the ELF parser wants them.
#[cfg(has_bpf_obj)]
pub fn bytes() -> Option<&'static [u8]> {
    #[repr(C, align(8))]
    struct Aligned<B: ?Sized>(B);
    static OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("DATAPATH_BPF_OBJ_PATH")));
    Some(&OBJ.0)
}

/// This binary was built without the eBPF object.
#[cfg(not(has_bpf_obj))]
pub fn bytes() -> Option<&'static [u8]> {
    None
}

/// What to tell a user whose binary has no eBPF object.
pub const MISSING_HINT: &str =
    "this datapath binary was built without the eBPF object; build it with `cargo xtask build` (which runs `cargo xtask build-ebpf` first)";
