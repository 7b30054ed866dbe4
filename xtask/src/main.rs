//! Project tasks: `cargo xtask setup | build-ebpf | build | run | test | lint | bench`.
//!
//! Everything the project needs on a Debian 12 machine is installed by
//! `setup`; the other commands run it first where it matters, so a fresh clone
//! only needs `cargo xtask test` (or `cargo xtask run`).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod lint;

/// libtest arguments for the integration tests (package `datapath-tests`).
/// They create network namespaces and run agents; two at a time fit the 2-core
/// machines this project runs on.
const INTEGRATION_TEST_ARGS: &[&str] = &["--test-threads=2"];

/// The integration test package, run separately with [`INTEGRATION_TEST_ARGS`].
const INTEGRATION_TEST_PACKAGE: &str = "datapath-tests";

/// Debian packages the project needs, with why.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "Rust compiler that can build `core` for bpfel-unknown-none (with RUSTC_BOOTSTRAP)"),
    ("cargo-web", "cargo matching rustc-web, for the eBPF build"),
    ("rust-web-clippy", "clippy matching rustc-web, for `cargo xtask lint` of the eBPF crate"),
    ("rust-web-src", "Rust library sources, needed by `-Z build-std=core`"),
    ("llvm-22-dev", "LLVM 22, needed to build and run bpf-linker"),
    ("libpolly-22-dev", "needed to link bpf-linker against LLVM 22"),
    ("bpftool", "inspecting loaded eBPF programs and maps"),
    ("iperf3", "throughput tests and benchmarks"),
    ("tcpdump", "packet captures in tests and debugging"),
    ("iproute2", "`ip` and `tc`, used by tests and the walkthrough"),
    ("nftables", "`nft`: the kernel datapath's MASQUERADE/isolation rules, and the tests' ruleset checks"),
    ("iputils-ping", "`ping`, used by tests and the walkthrough"),
];

/// The one tool checked on PATH rather than as a Debian package (it may come
/// from pyenv or elsewhere); installed as Debian's `python3` when missing.
const PYTHON: &str = "python3";

/// bpf-linker: pinned so a fresh machine gets the version this project is
/// built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Where the Debian Rust toolchain lives (fallback eBPF toolchain).
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";

const BPF_TARGET: &str = "bpfel-unknown-none";
const EBPF_CRATE: &str = "datapath-ebpf";
const USER_PACKAGE: &str = "datapath-user";
const USER_BINARY: &str = "datapath";

#[derive(Parser)]
#[command(about = "Build, run and test the datapath")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the prerequisites and install whatever is missing.
    Setup,
    /// Build the eBPF object into target/bpf/datapath.bpf.o.
    BuildEbpf {
        /// Build the eBPF crate with its dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Build the eBPF object, then the `datapath` binary embedding it.
    Build {
        /// Build the agent with the release profile (default: dev).
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run `datapath ARGS` as root (default: `walkthrough`).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, then run every test of the workspace.
    Test {
        /// Passed to every test binary (e.g. a test name filter).
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
    /// Check formatting and clippy (-D warnings) of the workspace and of the eBPF crate.
    Lint,
    /// Build (release), then benchmark the datapaths side by side (README: Benchmark).
    Bench(bench::BenchArgs),
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::Setup => setup(true),
        Cmd::BuildEbpf { debug } => build_ebpf(debug),
        Cmd::Build { release } => build(release).map(|bin| println!("datapath binary: {}", bin.display())),
        Cmd::Run { release, args } => run(release, args),
        Cmd::Test { extra } => test(extra),
        Cmd::Lint => lint::lint(),
        Cmd::Bench(args) => bench::run(args),
    };
    if let Err(e) = result {
        // No backtrace: the error says what failed and what to do.
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// paths and small helpers

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn home_cargo_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"))
}

/// PATH with ~/.cargo/bin in front (for bpf-linker).
fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = home_cargo_bin().into_iter().collect();
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}

fn find_on_path(name: &str, path: &OsString) -> Option<PathBuf> {
    env::split_paths(path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The cargo that runs this xtask (for host builds).
fn outer_cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("could not start `{}`", describe(cmd)))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", describe(cmd));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// setup

enum Missing {
    Deb(&'static str, &'static str),
    BpfLinker,
}

fn deb_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn missing_prerequisites() -> Vec<Missing> {
    let mut missing: Vec<Missing> = DEBIAN_PACKAGES
        .iter()
        .filter(|(pkg, _)| !deb_installed(pkg))
        .map(|&(pkg, why)| Missing::Deb(pkg, why))
        .collect();
    if find_on_path(PYTHON, &env::var_os("PATH").unwrap_or_default()).is_none() {
        missing.push(Missing::Deb(PYTHON, "scripts used by tests and benchmarks"));
    }
    if find_on_path("bpf-linker", &path_with_cargo_bin()).is_none() {
        missing.push(Missing::BpfLinker);
    }
    missing
}

fn bpf_linker_install_cmd() -> Command {
    let mut cmd = Command::new(outer_cargo());
    cmd.args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", {
            let mut dirs = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
            dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
            env::join_paths(dirs).unwrap_or_default()
        })
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    cmd
}

/// Installs whatever is missing. With `verbose` false it prints nothing when
/// everything is already there.
fn setup(verbose: bool) -> Result<()> {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        if verbose {
            println!("setup: every prerequisite is installed");
        }
        return Ok(());
    }
    let debs: Vec<&str> = missing
        .iter()
        .filter_map(|m| match m {
            Missing::Deb(p, _) => Some(*p),
            Missing::BpfLinker => None,
        })
        .collect();
    let linker = missing.iter().any(|m| matches!(m, Missing::BpfLinker));

    println!("setup: missing prerequisites:");
    for m in &missing {
        match m {
            Missing::Deb(p, why) => println!("  - Debian package {p}: {why}"),
            Missing::BpfLinker => {
                println!("  - bpf-linker {BPF_LINKER_VERSION}: links the eBPF object")
            }
        }
    }

    let apt = Path::new("/usr/bin/apt-get").is_file() && Path::new("/etc/debian_version").is_file();
    // apt needs root; `cargo install bpf-linker` does not.
    if !debs.is_empty() && (!is_root() || !apt) {
        eprintln!(
            "setup: cannot install them here ({}). Install them by hand:",
            if apt { "not root" } else { "not a Debian system with apt-get" }
        );
        eprintln!("  apt-get update && apt-get install -y {}", debs.join(" "));
        if linker {
            eprintln!("  then: {}", shell_line(&bpf_linker_install_cmd()));
        }
        bail!("prerequisites missing; see above");
    }

    if !debs.is_empty() {
        println!("setup: installing Debian packages: {}", debs.join(" "));
        run_ok(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&debs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if linker {
        let mut cmd = bpf_linker_install_cmd();
        println!("setup: installing bpf-linker: {}", shell_line(&cmd));
        run_ok(&mut cmd)?;
    }
    println!("setup: done");
    Ok(())
}

fn shell_line(cmd: &Command) -> String {
    let envs: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    format!("PATH={LLVM_PREFIX}/bin:$PATH {} {}", envs.join(" "), describe(cmd))
}

// ---------------------------------------------------------------------------
// eBPF build

enum Toolchain {
    /// A rustup nightly with rust-src.
    RustupNightly,
    /// Debian's rustc/cargo with RUSTC_BOOTSTRAP and its rust-src package.
    Debian,
}

fn ebpf_toolchain() -> Result<Toolchain> {
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

/// `cargo SUBCOMMAND` for the eBPF crate with `toolchain`: in datapath-ebpf/,
/// without the environment the outer (rustup) cargo leaves behind, for
/// bpfel-unknown-none with `-Z build-std=core` and the eBPF rustflags. Used by
/// `build-ebpf` ("build") and `lint` ("clippy"); the caller adds the rest.
fn ebpf_cargo(toolchain: &Toolchain, subcommand: &str) -> Command {
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
    cmd.current_dir(workspace_root().join(EBPF_CRATE))
        .env("PATH", path)
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"))
        .args([subcommand, "--locked", "-Z", "build-std=core", "--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(ebpf_target_dir());
    cmd
}

fn build_ebpf(debug: bool) -> Result<()> {
    let root = workspace_root();
    let target_dir = ebpf_target_dir();
    if find_on_path("bpf-linker", &path_with_cargo_bin()).is_none() {
        bail!("bpf-linker is not installed (not on PATH nor in ~/.cargo/bin). Run `cargo xtask setup`.");
    }
    let toolchain = ebpf_toolchain()?;
    let mut cmd = ebpf_cargo(&toolchain, "build");
    if !debug {
        cmd.arg("--release");
    }
    let which = match toolchain {
        Toolchain::RustupNightly => "rustup nightly",
        Toolchain::Debian => "Debian rustc with RUSTC_BOOTSTRAP=1",
    };
    println!("build-ebpf: building {EBPF_CRATE} with {which}");
    let started = Instant::now();
    run_ok(&mut cmd)?;

    let built = target_dir.join(BPF_TARGET).join(if debug { "debug" } else { "release" }).join(EBPF_CRATE);
    let out = root.join("target").join("bpf").join("datapath.bpf.o");
    let new = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Only touch the object when it changed: datapath-user rebuilds on its mtime.
    if fs::read(&out).ok().as_deref() != Some(&new[..]) {
        fs::create_dir_all(out.parent().expect("has a parent"))?;
        fs::write(&out, &new).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("build-ebpf: {} ({} bytes, {:.1}s)", out.display(), new.len(), started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------
// host build, run, test

/// Builds everything; returns the absolute path of the `datapath` binary.
fn build(release: bool) -> Result<PathBuf> {
    build_ebpf(false)?;
    let root = workspace_root();
    let mut cmd = Command::new(outer_cargo());
    cmd.current_dir(&root).args(["build", "-p", USER_PACKAGE, "--bin", USER_BINARY]);
    if release {
        cmd.arg("--release");
    }
    run_ok(&mut cmd)?;
    let target_dir = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target_dir = if target_dir.is_absolute() { target_dir } else { root.join(target_dir) };
    Ok(target_dir.join(if release { "release" } else { "debug" }).join(USER_BINARY))
}

fn run(release: bool, args: Vec<OsString>) -> Result<()> {
    setup(false)?;
    let bin = build(release)?;
    let args = if args.is_empty() { vec![OsString::from("walkthrough")] } else { args };
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if find_on_path("sudo", &env::var_os("PATH").unwrap_or_default()).is_some() {
        println!("run: not root, running through sudo");
        let mut c = Command::new("sudo");
        c.arg("--").arg(&bin);
        c
    } else {
        bail!(
            "`datapath` needs root (it loads eBPF programs and creates namespaces); run as root: {} {:?}",
            bin.display(),
            args
        );
    };
    cmd.args(&args);
    let st = status(&mut cmd)?;
    std::process::exit(st.code().unwrap_or(1));
}

fn test(extra: Vec<OsString>) -> Result<()> {
    setup(false)?;
    let bin = build(false)?;
    let root = workspace_root();
    let mut totals = (0u64, 0u64, 0u64);
    let mut cargo_test = |pkg_args: &[&str], libtest: &[&str]| -> Result<ExitStatus> {
        let mut cmd = Command::new(outer_cargo());
        cmd.current_dir(&root)
            .env("DATAPATH_BIN", &bin)
            .args(["test", "--no-fail-fast"])
            .args(pkg_args)
            .arg("--")
            .args(libtest)
            .args(&extra);
        println!("test: {}", describe(&cmd));
        let (st, counts) = status_counting_tests(&mut cmd)?;
        totals = (totals.0 + counts.0, totals.1 + counts.1, totals.2 + counts.2);
        Ok(st)
    };
    // Run both parts even if the first fails, so one run reports everything.
    let unit = cargo_test(&["--workspace", "--exclude", INTEGRATION_TEST_PACKAGE], &[])?;
    // `--lib --tests`: no doc tests, so the last runner line is the suite's.
    let integration = cargo_test(&["-p", INTEGRATION_TEST_PACKAGE, "--lib", "--tests"], INTEGRATION_TEST_ARGS)?;
    // One closing line for everything, in the plain "N passed, N failed" form.
    println!("tests: {} passed, {} failed, {} skipped", totals.0, totals.1, totals.2);
    match (unit.success(), integration.success()) {
        (true, true) => Ok(()),
        (u, i) => bail!(
            "tests failed:{}{}",
            if u { "" } else { " workspace unit tests;" },
            if i { "" } else { " integration tests (datapath-tests);" }
        ),
    }
}

/// Runs a `cargo test` command, echoing its stdout as it comes, and adds up
/// the "test result: ... N passed; N failed; N ignored" lines.
fn status_counting_tests(cmd: &mut Command) -> Result<(ExitStatus, (u64, u64, u64))> {
    use std::io::{BufRead, BufReader};
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("running `{}`", describe(cmd)))?;
    let mut counts = (0, 0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(c) = parse_test_result(&line) {
                counts = (counts.0 + c.0, counts.1 + c.1, counts.2 + c.2);
            }
        }
    }
    Ok((child.wait()?, counts))
}

/// `test result: ok. 3 passed; 0 failed; 1 ignored; ...` -> (3, 0, 1).
fn parse_test_result(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim().strip_prefix("test result:")?;
    let num = |word: &str| {
        rest.split(';')
            .find_map(|part| part.trim().trim_start_matches(|c: char| !c.is_ascii_digit()).strip_suffix(word))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    Some((num("passed")?, num("failed")?, num("ignored").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_test_result_lines() {
        let ok = "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(super::parse_test_result(ok), Some((3, 0, 1)));
        let failed =
            "test result: FAILED. 65 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 149.31s";
        assert_eq!(super::parse_test_result(failed), Some((65, 1, 0)));
        assert_eq!(super::parse_test_result("running 3 tests"), None);
    }
}
