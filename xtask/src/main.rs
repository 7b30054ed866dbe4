//! Project tasks: `cargo xtask setup | build-ebpf | build | build-baseline | run | test | lint | bench`.
//!
//! Everything the project needs on a Debian 12 machine is installed by
//! `setup`; the other commands run it first where it matters, so a fresh clone
//! only needs `cargo xtask test` (or `cargo xtask run`).

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod baseline;
mod bench;
mod ebpf;
mod lint;
mod setup;

use ebpf::build_ebpf;
use setup::setup;

/// libtest arguments for the integration tests (package `datapath-tests`).
/// They create network namespaces and run agents; two at a time fit the 2-core
/// machines this project runs on.
const INTEGRATION_TEST_ARGS: &[&str] = &["--test-threads=2"];

/// The integration test package, run separately with [`INTEGRATION_TEST_ARGS`].
const INTEGRATION_TEST_PACKAGE: &str = "datapath-tests";

const USER_PACKAGE: &str = "datapath-user";
const USER_BINARY: &str = "datapath";
/// The CNI plugin (README: CNI), built beside the agent.
const CNI_PACKAGE: &str = "datapath-cni";
const CNI_BINARY: &str = "datapath-cni";

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
        /// Build the test-only variant (other program bytes, same behaviour)
        /// into target/bpf/datapath-variant.bpf.o: the tests' upgrade.
        #[arg(long)]
        variant: bool,
    },
    /// Build the eBPF object, then the `datapath` binary embedding it and
    /// the CNI plugin `datapath-cni`.
    Build {
        /// Build the agent with the release profile (default: dev).
        #[arg(long)]
        release: bool,
    },
    /// Build the agent of the last IPv4-only commit (with its eBPF object)
    /// into target/baseline/datapath: where the upgrade test starts from.
    BuildBaseline,
    /// Set up, build, then run `datapath ARGS` as root (default: `walkthrough`).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, then run every test of the workspace (`--all`: the
    /// ignored long ones too).
    Test {
        /// Also run the tests marked `#[ignore]` (the long ones, e.g. the
        /// 1,000-endpoint scale test): libtest's `--include-ignored`.
        #[arg(long)]
        all: bool,
        /// Passed to every test binary (e.g. a test name filter).
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
    /// Check formatting and clippy (-D warnings) of the workspace and of the eBPF crate.
    Lint,
    /// Build (release), then run the benchmark `datapath-bench` as root with
    /// ARGS (README: Benchmark); `--no-build` uses the binaries already built.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::Setup => setup(true),
        Cmd::BuildEbpf { debug, variant } => {
            build_ebpf(debug, if variant { ebpf::Object::Variant } else { ebpf::Object::Real })
        }
        Cmd::Build { release } => build(release).map(|bin| {
            println!("datapath binary: {}", bin.display());
            println!("CNI plugin: {}", bin.with_file_name(CNI_BINARY).display());
        }),
        Cmd::BuildBaseline => baseline::build_baseline().map(|bin| println!("baseline agent: {}", bin.display())),
        Cmd::Run { release, args } => run(release, args),
        Cmd::Test { all, extra } => test(all, extra),
        Cmd::Lint => lint::lint(),
        Cmd::Bench { args } => bench::run(args),
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
// host build, run, test

/// Builds everything; returns the absolute path of the `datapath` binary
/// (the CNI plugin `datapath-cni` is beside it).
fn build(release: bool) -> Result<PathBuf> {
    build_ebpf(false, ebpf::Object::Real)?;
    let root = workspace_root();
    let mut cmd = Command::new(outer_cargo());
    cmd.current_dir(&root).args([
        "build",
        "-p",
        USER_PACKAGE,
        "-p",
        CNI_PACKAGE,
        "--bin",
        USER_BINARY,
        "--bin",
        CNI_BINARY,
    ]);
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

fn test(all: bool, extra: Vec<OsString>) -> Result<()> {
    setup(false)?;
    // What only the tests need (podman and its CNI plugins for the CNI tests).
    setup::setup_test_tools()?;
    let bin = build(false)?;
    // The upgrade tests restart the agent on this object.
    build_ebpf(false, ebpf::Object::Variant)?;
    // The upgrade from the IPv4-only build starts its agent.
    let baseline = baseline::build_baseline()?;
    let root = workspace_root();
    let mut totals = (0u64, 0u64, 0u64);
    let mut cargo_test = |pkg_args: &[&str], libtest: &[&str]| -> Result<ExitStatus> {
        let mut cmd = Command::new(outer_cargo());
        cmd.current_dir(&root)
            .env("DATAPATH_BIN", &bin)
            .env("DATAPATH_CNI_BIN", bin.with_file_name(CNI_BINARY))
            .env("DATAPATH_BASELINE_BIN", &baseline)
            .args(["test", "--no-fail-fast"])
            .args(pkg_args)
            .arg("--")
            .args(libtest)
            .args(all.then_some("--include-ignored"))
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
