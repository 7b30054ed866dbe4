//! `cargo xtask build-ebpf`: the eBPF object, built with a toolchain that can
//! build `core` for bpfel-unknown-none (README: How the eBPF build works).

use std::env;
use std::path::{Path, PathBuf};
use std::{fs, process::Command, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{find_on_path, path_with_cargo_bin, run_ok, workspace_root};

/// Where the Debian Rust toolchain lives (fallback eBPF toolchain).
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";

pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const EBPF_CRATE: &str = "datapath-ebpf";

pub enum Toolchain {
    /// A rustup nightly with rust-src.
    RustupNightly,
    /// Debian's rustc/cargo with RUSTC_BOOTSTRAP and its rust-src package.
    Debian,
}

pub fn ebpf_toolchain() -> Result<Toolchain> {
    let nightly_has_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("rust-src"))
        });
    if nightly_has_src {
        return Ok(Toolchain::RustupNightly);
    }
    if [DEBIAN_CARGO, DEBIAN_RUSTC].iter().all(|p| Path::new(p).is_file()) && Path::new(DEBIAN_RUST_SRC).is_dir() {
        return Ok(Toolchain::Debian);
    }
    bail!(
        "no toolchain can build the eBPF crate: need a rustup nightly with rust-src, or Debian's \
         rustc-web, cargo-web and rust-web-src. Run `cargo xtask setup`."
    )
}

/// Environment the outer `cargo xtask` (via rustup) leaves behind that would
/// steer the inner cargo to the wrong toolchain or flags.
const INHERITED_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTC",
    "CARGO_MAKEFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
];

/// The eBPF crate's own target directory (its lockfile and toolchain differ
/// from the workspace's).
fn ebpf_target_dir() -> PathBuf {
    workspace_root().join(EBPF_CRATE).join("target")
}

/// What `build-ebpf` builds: the object, or the test-only variant (same
/// behaviour, other program bytes: an upgrade for the tests; its own target
/// directory so the two builds do not invalidate each other).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Real,
    Variant,
}

impl Object {
    fn file_name(self) -> &'static str {
        match self {
            Object::Real => "datapath.bpf.o",
            Object::Variant => "datapath-variant.bpf.o",
        }
    }

    fn target_dir(self) -> PathBuf {
        match self {
            Object::Real => ebpf_target_dir(),
            Object::Variant => workspace_root().join(EBPF_CRATE).join("target-variant"),
        }
    }
}

/// `cargo SUBCOMMAND` for the eBPF crate with `toolchain`: in datapath-ebpf/,
/// without the environment the outer (rustup) cargo leaves behind, for
/// bpfel-unknown-none with `-Z build-std=core` and the eBPF rustflags. Used by
/// `build-ebpf` ("build") and `lint` ("clippy"); the caller adds the rest.
pub fn ebpf_cargo(toolchain: &Toolchain, subcommand: &str) -> Command {
    ebpf_cargo_in(toolchain, subcommand, &workspace_root().join(EBPF_CRATE))
}

/// [`ebpf_cargo`] for the eBPF crate at `crate_dir` (another checkout's, e.g.
/// the baseline's: `build-baseline`).
pub fn ebpf_cargo_in(toolchain: &Toolchain, subcommand: &str, crate_dir: &Path) -> Command {
    let mut cmd = match toolchain {
        Toolchain::RustupNightly => Command::new("rustup"),
        Toolchain::Debian => Command::new(DEBIAN_CARGO),
    };
    for var in INHERITED_ENV {
        cmd.env_remove(var);
    }
    // ~/.cargo/bin for bpf-linker; with Debian's toolchain its own directory
    // comes first, so that cargo's subcommands (e.g. clippy) are Debian's too
    // and not rustup's proxies.
    let mut path = path_with_cargo_bin();
    match toolchain {
        Toolchain::RustupNightly => {
            cmd.args(["run", "nightly", "cargo"]);
        }
        Toolchain::Debian => {
            cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            let debian_bin = Path::new(DEBIAN_CARGO).parent().expect("an absolute path").to_path_buf();
            path = env::join_paths(std::iter::once(debian_bin).chain(env::split_paths(&path))).unwrap_or(path);
        }
    }
    cmd.current_dir(crate_dir)
        .env("PATH", path)
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"))
        .args([subcommand, "--locked", "-Z", "build-std=core", "--target", BPF_TARGET]);
    cmd
}

pub fn build_ebpf(debug: bool, object: Object) -> Result<()> {
    let out = workspace_root().join("target").join("bpf").join(object.file_name());
    let build = EbpfBuild {
        crate_dir: workspace_root().join(EBPF_CRATE),
        target_dir: object.target_dir(),
        out,
        debug,
        variant: object == Object::Variant,
    };
    build.run()
}

/// One build of an eBPF crate into an object file.
pub struct EbpfBuild {
    /// The eBPF crate (`datapath-ebpf/` of this or another checkout).
    pub crate_dir: PathBuf,
    /// Its cargo target directory.
    pub target_dir: PathBuf,
    /// Where the object goes (rewritten only when it changed).
    pub out: PathBuf,
    /// The crate's dev profile instead of release.
    pub debug: bool,
    /// `--cfg datapath_variant` (the test-only variant).
    pub variant: bool,
}

impl EbpfBuild {
    pub fn run(&self) -> Result<()> {
        if find_on_path("bpf-linker", &path_with_cargo_bin()).is_none() {
            bail!("bpf-linker is not installed (not on PATH nor in ~/.cargo/bin). Run `cargo xtask setup`.");
        }
        let toolchain = ebpf_toolchain()?;
        let mut cmd = ebpf_cargo_in(&toolchain, "build", &self.crate_dir);
        cmd.arg("--target-dir").arg(&self.target_dir);
        if self.variant {
            cmd.env(
                "CARGO_ENCODED_RUSTFLAGS",
                ["-Cdebuginfo=2", "-Clink-arg=--btf", "--cfg", "datapath_variant"].join("\x1f"),
            );
        }
        if !self.debug {
            cmd.arg("--release");
        }
        let which = match toolchain {
            Toolchain::RustupNightly => "rustup nightly",
            Toolchain::Debian => "Debian rustc with RUSTC_BOOTSTRAP=1",
        };
        println!("build-ebpf: building {} with {which}", self.crate_dir.display());
        let started = Instant::now();
        run_ok(&mut cmd)?;

        let profile = if self.debug { "debug" } else { "release" };
        let built = self.target_dir.join(BPF_TARGET).join(profile).join(EBPF_CRATE);
        let new = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        // Only touch the object when it changed: datapath-user rebuilds on its mtime.
        if fs::read(&self.out).ok().as_deref() != Some(&new[..]) {
            fs::create_dir_all(self.out.parent().expect("has a parent"))?;
            fs::write(&self.out, &new).with_context(|| format!("writing {}", self.out.display()))?;
        }
        println!("build-ebpf: {} ({} bytes, {:.1}s)", self.out.display(), new.len(), started.elapsed().as_secs_f64());
        Ok(())
    }
}
