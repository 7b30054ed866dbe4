//! `datapath-bench`: the datapath benchmark (`cargo xtask bench` builds the
//! release binaries and runs it, as root).
//!
//! In namespaces of its own (the test bed's, prefix `dpm` + 5 hex digits) it
//! measures up to six topologies side by side, interleaved round by round so
//! that machine noise hits all of them alike:
//!
//! * `ceiling`: a direct veth pair between two namespaces;
//! * `kernel`: the agent with a `--datapath kernel` network (bridge + nft
//!   MASQUERADE) on a node configured like a Docker host: br_netfilter with
//!   `bridge-nf-call-iptables=1` and Docker's FORWARD/nat chains (nftables);
//! * `kernel-bare`: the same without br_netfilter (`bridge-nf-call-iptables=0`);
//! * `ebpf`: the agent with a `--datapath ebpf` network;
//! * `docker-bridge` and `docker-datapath` (when Docker is installed): one
//!   real dockerd with a network of its own bridge driver and one of the
//!   `datapath` driver (the agent's plugin), see [`docker`].
//!
//! Every node namespace has an uplink veth to an "outside" namespace
//! (203.0.113.0/24); north-south workloads go from an endpoint to the outside
//! through the network's masquerade. The networks are dual stack and the
//! uplink has IPv6 too (2001:db8:203::/64): the `ew6-*` and `ns6-*` rows are
//! their IPv4 twins over IPv6 (not on the Docker topologies). See README.md,
//! section Benchmark.

mod churn;
mod docker;
mod lab;
mod measure;
mod report;
mod rounds;
mod select;
mod stats;
mod sys;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use report::{Results, Workload, WORKLOADS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pin {
    /// Client and server (and so the softirq work) on one CPU (the last one).
    Same,
    /// Client on CPU 0, server on the last CPU.
    Split,
    /// No pinning.
    None,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmark the datapaths side by side (README: Benchmark); run as root")]
struct BenchArgs {
    /// Short run: 2 rounds of 2 s, 20 endpoints (a few minutes).
    #[arg(long)]
    quick: bool,
    /// Rounds per figure (default 5; 2 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement (default 5; 2 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Endpoints created and removed per datapath (default 100; 20 with --quick).
    #[arg(long)]
    endpoints: Option<usize>,
    /// Containers started and removed per Docker driver (default 20; 5 with --quick).
    #[arg(long)]
    containers: Option<usize>,
    /// Only these topologies (comma-separated: ceiling, kernel, kernel-bare,
    /// ebpf, docker-bridge, docker-datapath; `docker` = both Docker ones).
    #[arg(long)]
    topologies: Option<String>,
    /// CPU placement of client and server.
    #[arg(long, value_enum, default_value_t = Pin::Same)]
    pin: Pin,
    /// Only these workloads (comma-separated ids, e.g. ew-tcp-rr,ns-tcp-crr,ew6-tcp-rr).
    #[arg(long)]
    only: Option<String>,
    /// The `datapath` binary (default: next to this one).
    #[arg(long)]
    datapath: Option<PathBuf>,
    /// The `loadgen` binary (default: next to this one).
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// Results directory (default: bench/results in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub struct Cfg {
    rounds: usize,
    duration: f64,
    warmup: f64,
    endpoints: usize,
    pin: Pin,
    quick: bool,
    workloads: Vec<&'static Workload>,
    topos: Vec<report::Topo>,
    containers: usize,
    datapath: PathBuf,
    loadgen: PathBuf,
    ncpu: usize,
}

impl Cfg {
    /// (client CPU, server CPU) for taskset, and the CPUs whose time is
    /// counted as the cost of the work.
    fn cpus(&self) -> (Option<usize>, Option<usize>, Vec<usize>) {
        let last = self.ncpu - 1;
        match self.pin {
            Pin::Same => (Some(last), Some(last), vec![last]),
            Pin::Split => (Some(0), Some(last), vec![0, last]),
            Pin::None => (None, None, (0..self.ncpu).collect()),
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ lives in the workspace").to_path_buf()
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

fn on_path(tool: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file())
}

/// The settings of the run, from the flags; checks binaries and tools.
fn config(args: &BenchArgs) -> Result<Cfg> {
    let here = std::env::current_exe()?;
    let datapath = args.datapath.clone().unwrap_or_else(|| here.with_file_name("datapath"));
    let loadgen = args.loadgen.clone().unwrap_or_else(|| here.with_file_name("loadgen"));
    for b in [&datapath, &loadgen] {
        if !b.is_file() {
            bail!("{} is missing: build it (`cargo xtask bench` does)", b.display());
        }
    }
    for tool in ["iperf3", "nft", "taskset", "ip"] {
        if !on_path(tool) {
            bail!("`{tool}` is not installed (cargo xtask setup installs iperf3; nft is package nftables)");
        }
    }
    let workloads: Vec<&'static Workload> = match &args.only {
        None => WORKLOADS.iter().collect(),
        Some(list) => list
            .split(',')
            .map(|id| report::workload(id.trim()).with_context(|| format!("unknown workload {id:?}")))
            .collect::<Result<_>>()?,
    };
    let (topos, note) = select::topologies(args.topologies.as_deref(), docker::available())?;
    if let Some(note) = note {
        progress(&note);
    }
    Ok(Cfg {
        rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 5 }).max(1),
        duration: args.duration.unwrap_or(if args.quick { 2.0 } else { 5.0 }).clamp(0.5, 120.0),
        warmup: if args.quick { 0.2 } else { 0.5 },
        endpoints: args.endpoints.unwrap_or(if args.quick { 20 } else { 100 }).min(200),
        pin: args.pin,
        quick: args.quick,
        workloads,
        topos,
        containers: args.containers.unwrap_or(if args.quick { 5 } else { 20 }).min(200),
        datapath,
        loadgen,
        ncpu: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

/// Writes the Markdown, JSON and SVG renderings (and `latest.*`).
fn write_results(cfg: &Cfg, results: &Results, out_dir: &Path) -> Result<()> {
    let stamp = sys::utc_stamp(SystemTime::now());
    let base = format!("bench-{stamp}{}", if cfg.quick { "-quick" } else { "" });
    std::fs::create_dir_all(out_dir)?;
    let md = report::markdown(results);
    let json = serde_json::to_string_pretty(&report::to_json(results))? + "\n";
    let svg = report::svg(results, &format!("datapath benchmark {stamp}{}", if cfg.quick { " (quick)" } else { "" }));
    for (ext, body) in [("md", &md), ("json", &json), ("svg", &svg)] {
        std::fs::write(out_dir.join(format!("{base}.{ext}")), body)?;
        std::fs::write(out_dir.join(format!("latest.{ext}")), body)?;
    }
    println!("{md}");
    println!("results: {}/{base}.{{json,md,svg}} (also latest.*)", out_dir.display());
    Ok(())
}

fn run(args: BenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark creates namespaces and loads eBPF programs: run it as root (cargo xtask bench does)");
    }
    let cfg = config(&args)?;
    sys::install_signal_handlers()?;
    let swept = lab::family().sweep();
    if swept > 0 {
        progress(&format!("removed the leftovers of {swept} earlier run(s)"));
    }
    let results = match rounds::measure(&cfg) {
        Ok(r) => r,
        Err(_) if sys::interrupted() => {
            progress("interrupted; everything it made has been removed");
            std::process::exit(130);
        }
        Err(e) => return Err(e),
    };
    write_results(&cfg, &results, &args.out.unwrap_or_else(|| workspace_root().join("bench/results")))
}

fn main() {
    if let Err(e) = run(BenchArgs::parse()) {
        eprintln!("datapath-bench: error: {e:#}");
        std::process::exit(1);
    }
}
