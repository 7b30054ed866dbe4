//! `cargo xtask bench [--no-build] [ARGS]`: builds the release binaries
//! (`datapath` with its eBPF object, `loadgen`, `datapath-bench`), then runs
//! `datapath-bench ARGS` as root (through sudo when needed). The benchmark
//! itself lives in `bench/` (README: Benchmark).

use std::{ffi::OsString, process::Command};

use anyhow::{bail, Result};

use crate::{build, is_root, outer_cargo, run_ok, status, workspace_root};

const BENCH_BINARY: &str = "datapath-bench";

pub fn run(args: Vec<OsString>) -> Result<()> {
    let no_build = args.iter().any(|a| a == "--no-build");
    let args: Vec<OsString> = args.into_iter().filter(|a| a != "--no-build").collect();
    let datapath = if no_build {
        workspace_root().join("target/release/datapath")
    } else {
        let dp = build(true)?;
        let mut cmd = Command::new(outer_cargo());
        cmd.current_dir(workspace_root()).args(["build", "--release", "-p", "loadgen", "-p", "datapath-bench"]);
        run_ok(&mut cmd)?;
        dp
    };
    let (loadgen, bench) = (datapath.with_file_name("loadgen"), datapath.with_file_name(BENCH_BINARY));
    for b in [&datapath, &loadgen, &bench] {
        if !b.is_file() {
            bail!("{} is missing: run without --no-build", b.display());
        }
    }
    let mut cmd = if is_root() {
        Command::new(&bench)
    } else {
        println!("bench: not root, running the measurements through sudo");
        let mut c = Command::new("sudo");
        c.arg("--").arg(&bench);
        c
    };
    cmd.arg("--datapath").arg(&datapath).arg("--loadgen").arg(&loadgen).args(&args);
    let st = status(&mut cmd)?;
    std::process::exit(st.code().unwrap_or(1));
}
