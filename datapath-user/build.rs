//! Embeds the eBPF object built by `cargo xtask build-ebpf` when it exists.
//!
//! The object lives at `<workspace>/target/bpf/datapath.bpf.o` (or wherever
//! `DATAPATH_BPF_OBJ` points). Without it the crate still builds (so unit tests
//! and clippy need no eBPF toolchain) and the agent explains how to build it.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_bpf_obj)");
    println!("cargo::rerun-if-env-changed=DATAPATH_BPF_OBJ");
    let obj = match std::env::var_os("DATAPATH_BPF_OBJ") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
            manifest.join("..").join("target").join("bpf").join("datapath.bpf.o")
        }
    };
    println!("cargo::rerun-if-changed={}", obj.display());
    if obj.is_file() {
        println!("cargo::rustc-cfg=has_bpf_obj");
        println!("cargo::rustc-env=DATAPATH_BPF_OBJ_PATH={}", obj.display());
    }
}
