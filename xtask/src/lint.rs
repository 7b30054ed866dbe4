//! `cargo xtask lint`: formatting and clippy (`-D warnings`) for the
//! workspace, with the toolchain that runs xtask (rustup's stable), and for
//! the eBPF crate, with the toolchain `build-ebpf` uses.
//!
//! The eBPF crate's clippy must be the one of its compiler: with Debian's
//! rustc-web that is Debian's `rust-web-clippy` (`/usr/bin/cargo-clippy` and
//! `clippy-driver`, same version; `cargo xtask setup` installs it), run by
//! Debian's cargo with `RUSTC_BOOTSTRAP=1` and `-Z build-std=core`, exactly
//! like the build ([`crate::ebpf_cargo`]). With a rustup nightly it is that
//! nightly's clippy.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::ebpf::{ebpf_cargo, ebpf_toolchain, Toolchain, EBPF_CRATE};
use crate::{describe, outer_cargo, run_ok, setup, status, workspace_root};

/// Debian's clippy (package `rust-web-clippy`), matching rustc-web.
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

/// Runs every check, even after a failure, then fails if any did.
pub fn lint() -> Result<()> {
    setup(false)?;
    ensure_rustup_components()?;
    let root = workspace_root();
    let ebpf_dir = root.join(EBPF_CRATE);

    let mut checks: Vec<(&str, Command)> = Vec::new();
    let mut fmt = Command::new(outer_cargo());
    fmt.current_dir(&root).args(["fmt", "--all", "--check"]);
    checks.push(("rustfmt (workspace)", fmt));

    // Not a workspace member: formatted on its own (same rustfmt.toml, found
    // in the parent directory).
    let mut fmt_ebpf = Command::new(outer_cargo());
    fmt_ebpf.current_dir(&ebpf_dir).args(["fmt", "--check"]);
    checks.push(("rustfmt (eBPF crate)", fmt_ebpf));

    let mut clippy = Command::new(outer_cargo());
    clippy.current_dir(&root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    checks.push(("clippy (workspace)", clippy));

    checks.push(("clippy (eBPF crate)", ebpf_clippy()?));

    let mut failed = Vec::new();
    for (what, mut cmd) in checks {
        println!("lint: {what}: {}", describe(&cmd));
        if !status(&mut cmd)?.success() {
            failed.push(what);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("lint: formatting and clippy are clean");
    Ok(())
}

/// clippy of the eBPF crate, for bpfel-unknown-none (no `--all-targets`: a
/// `no_std` binary has no test harness), with the release profile the object
/// is built with.
fn ebpf_clippy() -> Result<Command> {
    let toolchain = ebpf_toolchain()?;
    if matches!(toolchain, Toolchain::Debian) && !Path::new(DEBIAN_CARGO_CLIPPY).is_file() {
        bail!("{DEBIAN_CARGO_CLIPPY} is missing (Debian package rust-web-clippy): run `cargo xtask setup`");
    }
    let mut cmd = ebpf_cargo(&toolchain, "clippy");
    cmd.args(["--release", "--", "-D", "warnings"]);
    Ok(cmd)
}

/// rustfmt and clippy for the workspace come with rustup's default profile;
/// a minimal-profile toolchain gets them added.
fn ensure_rustup_components() -> Result<()> {
    let has =
        |sub: &str| Command::new(outer_cargo()).args([sub, "--version"]).output().is_ok_and(|o| o.status.success());
    if has("fmt") && has("clippy") {
        return Ok(());
    }
    println!("lint: adding the rustup components rustfmt and clippy");
    run_ok(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}
