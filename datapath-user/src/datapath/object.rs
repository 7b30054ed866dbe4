//! The eBPF object: the one embedded at build time (see `build.rs`), or the
//! file `DATAPATH_BPF_OBJECT` names (an upgrade without rebuilding the
//! binary, and the tests' variant object).

use std::sync::OnceLock;

/// Environment variable naming an eBPF object file the agent loads instead
/// of the embedded one.
pub const OBJECT_ENV: &str = "DATAPATH_BPF_OBJECT";

/// Bytes of the embedded eBPF object, 8-byte aligned as the ELF parser wants them.
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

/// The object to load: the file `DATAPATH_BPF_OBJECT` names when it is set
/// (read once, kept for the process's life, 8-byte aligned), else the
/// embedded one.
pub fn to_load() -> Result<&'static [u8], String> {
    static FILE: OnceLock<Result<&'static [u8], String>> = OnceLock::new();
    let Some(path) = std::env::var_os(OBJECT_ENV) else {
        return bytes().ok_or_else(|| MISSING_HINT.to_string());
    };
    FILE.get_or_init(|| {
        let data = std::fs::read(&path).map_err(|e| format!("{OBJECT_ENV}={}: {e}", path.to_string_lossy()))?;
        // u64 storage: 8-byte alignment for the ELF parser.
        let words: &'static mut [u64] = Box::leak(vec![0u64; data.len().div_ceil(8)].into_boxed_slice());
        // SAFETY: `words` is an initialized buffer of at least `data.len()`
        // bytes, viewed as bytes for the copy.
        let buf: &'static mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), data.len()) };
        buf.copy_from_slice(&data);
        Ok(&*buf)
    })
    .clone()
}

/// What to tell a user whose binary has no eBPF object.
pub const MISSING_HINT: &str =
    "this datapath binary was built without the eBPF object; build it with `cargo xtask build` (which runs `cargo xtask build-ebpf` first)";
