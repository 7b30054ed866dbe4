//! `cargo xtask build-baseline`: the agent of the last IPv4-only build of this
//! repository ([`BASELINE_COMMIT`]) with its eBPF object embedded, for the
//! test of the in-place upgrade to the current build (README: Upgrade from
//! the IPv4-only build).
//!
//! The commit's tree is extracted (`git archive`) into
//! `target/baseline/src`; its eBPF object is built with the same recipe as
//! ours ([`EbpfBuild`]) into `target/baseline/bpf/datapath.bpf.o`, and its
//! agent, embedding that object, with its own target directory
//! (`target/baseline/target`), so it never touches the current build's
//! artifacts. The result is `target/baseline/datapath`. The commit is fixed,
//! so the build is cached: a stamp file naming the commit next to both
//! outputs means there is nothing to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{fs, time::Instant};

use anyhow::{bail, Context, Result};

use crate::ebpf::{EbpfBuild, EBPF_CRATE};
use crate::{outer_cargo, run_ok, workspace_root, USER_BINARY, USER_PACKAGE};

/// The last main commit before the IPv6 work (it passed CI): the v4-only build.
pub const BASELINE_COMMIT: &str = "169839026ff5b41e3f18734a7387938811d19e62";

/// `target/baseline/`.
pub fn baseline_dir() -> PathBuf {
    workspace_root().join("target").join("baseline")
}

/// The baseline agent (`target/baseline/datapath`).
pub fn baseline_bin() -> PathBuf {
    baseline_dir().join(USER_BINARY)
}

fn stamp_path() -> PathBuf {
    baseline_dir().join("STAMP")
}

fn object_path() -> PathBuf {
    baseline_dir().join("bpf").join("datapath.bpf.o")
}

/// Builds the baseline unless the stamp, the object and the binary are
/// there; returns the binary.
pub fn build_baseline() -> Result<PathBuf> {
    let bin = baseline_bin();
    let stamped = fs::read_to_string(stamp_path()).is_ok_and(|s| s.trim() == BASELINE_COMMIT);
    if stamped && bin.is_file() && object_path().is_file() {
        println!("build-baseline: {} (commit {}) is up to date", bin.display(), &BASELINE_COMMIT[..7]);
        return Ok(bin);
    }
    let started = Instant::now();
    let root = workspace_root();
    let has_commit = Command::new("git")
        .current_dir(&root)
        .args(["cat-file", "-e", &format!("{BASELINE_COMMIT}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_commit {
        bail!(
            "the baseline commit {BASELINE_COMMIT} (the IPv4-only build the upgrade test starts from) is not in \
             this clone: the upgrade test needs the full history (`git fetch --unshallow`, or clone without \
             --depth)"
        );
    }
    let _ = fs::remove_file(stamp_path());
    let src = baseline_dir().join("src");
    extract(&root, &src)?;

    EbpfBuild {
        crate_dir: src.join(EBPF_CRATE),
        target_dir: baseline_dir().join("ebpf-target"),
        out: object_path(),
        debug: false,
        variant: false,
    }
    .run()?;

    // The baseline's build script embeds the object DATAPATH_BPF_OBJ names.
    let target_dir = baseline_dir().join("target");
    let mut cmd = Command::new(outer_cargo());
    cmd.current_dir(&src)
        .env_remove("CARGO_TARGET_DIR")
        .env("DATAPATH_BPF_OBJ", object_path())
        .args(["build", "--locked", "-p", USER_PACKAGE, "--bin", USER_BINARY, "--target-dir"])
        .arg(&target_dir);
    println!("build-baseline: building the agent of {}", &BASELINE_COMMIT[..7]);
    run_ok(&mut cmd)?;
    let built = target_dir.join("debug").join(USER_BINARY);
    fs::copy(&built, &bin).with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    fs::write(stamp_path(), format!("{BASELINE_COMMIT}\n")).context("writing the baseline stamp")?;
    println!(
        "build-baseline: {} (commit {}) built in {:.1}s",
        bin.display(),
        &BASELINE_COMMIT[..7],
        started.elapsed().as_secs_f64()
    );
    Ok(bin)
}

/// `git archive COMMIT | tar -x -C src` into a fresh `src`.
fn extract(root: &Path, src: &Path) -> Result<()> {
    if src.exists() {
        fs::remove_dir_all(src).with_context(|| format!("removing {}", src.display()))?;
    }
    fs::create_dir_all(src).with_context(|| format!("creating {}", src.display()))?;
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", BASELINE_COMMIT])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar_in = archive.stdout.take().context("git archive's output")?;
    let mut tar = Command::new("tar");
    tar.arg("-x").arg("-C").arg(src).stdin(tar_in);
    run_ok(&mut tar)?;
    let st = archive.wait().context("waiting for git archive")?;
    if !st.success() {
        bail!("git archive {BASELINE_COMMIT} failed ({st})");
    }
    Ok(())
}
