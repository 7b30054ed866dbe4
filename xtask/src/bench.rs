//! `cargo xtask bench`: the datapath benchmark.
//!
//! Builds the release binaries, then, in namespaces of its own (`dpbench-<pid>-*`),
//! measures four topologies side by side, interleaved round by round so that
//! machine noise hits all of them alike:
//!
//! * `ceiling`: a direct veth pair between two namespaces;
//! * `kernel`: the agent with a `--datapath kernel` network (bridge + nft
//!   MASQUERADE) on a node configured like a Docker host: br_netfilter with
//!   `bridge-nf-call-iptables=1` and Docker's FORWARD/nat chains (nftables);
//! * `kernel-bare`: the same without br_netfilter (`bridge-nf-call-iptables=0`);
//! * `ebpf`: the agent with a `--datapath ebpf` network.
//!
//! Every node namespace has an uplink veth to an "outside" namespace
//! (203.0.113.0/24); north-south workloads go from an endpoint to the outside
//! through the network's masquerade. See README.md, section Benchmark.

mod report;
mod stats;
mod topo;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use report::{Churn, Kind, Results, Topo, Workload, WORKLOADS};
use topo::{Agent, Proc, RunGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pin {
    /// Client and server (and so the softirq work) on one CPU (the last one).
    Same,
    /// Client on CPU 0, server on the last CPU.
    Split,
    /// No pinning.
    None,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
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
    /// CPU placement of client and server.
    #[arg(long, value_enum, default_value_t = Pin::Same)]
    pin: Pin,
    /// Only these workloads (comma-separated ids, e.g. ew-tcp-rr,ns-tcp-crr).
    #[arg(long)]
    only: Option<String>,
    /// Use the binaries already built (target/release/{datapath,loadgen}).
    #[arg(long)]
    no_build: bool,
    /// Results directory (default: bench/results in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Cfg {
    rounds: usize,
    duration: f64,
    warmup: f64,
    endpoints: usize,
    pin: Pin,
    quick: bool,
    workloads: Vec<&'static Workload>,
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

pub fn run(args: BenchArgs) -> Result<()> {
    let root = crate::workspace_root();
    let (datapath, loadgen) = if args.no_build {
        (root.join("target/release/datapath"), root.join("target/release/loadgen"))
    } else {
        let dp = crate::build(true)?;
        let mut cmd = Command::new(crate::outer_cargo());
        cmd.current_dir(&root).args(["build", "--release", "-p", "loadgen"]);
        crate::run_ok(&mut cmd)?;
        let lg = dp.with_file_name("loadgen");
        (dp, lg)
    };
    for b in [&datapath, &loadgen] {
        if !b.is_file() {
            bail!("{} is missing: run without --no-build", b.display());
        }
    }
    if !crate::is_root() {
        // Re-run the measuring part as root with the binaries just built.
        let exe = std::env::current_exe()?;
        println!("bench: not root, running the measurements through sudo");
        let mut cmd = Command::new("sudo");
        cmd.arg("--")
            .arg(exe)
            .arg("bench")
            .arg("--no-build")
            .args(std::env::args_os().skip(2).filter(|a| a != "--no-build"));
        let st = crate::status(&mut cmd)?;
        std::process::exit(st.code().unwrap_or(1));
    }
    for tool in ["iperf3", "nft", "taskset", "ip", "sysctl"] {
        if crate::find_on_path(tool, &std::env::var_os("PATH").unwrap_or_default()).is_none() {
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
    let cfg = Cfg {
        rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 5 }).max(1),
        duration: args.duration.unwrap_or(if args.quick { 2.0 } else { 5.0 }).clamp(0.5, 120.0),
        warmup: if args.quick { 0.2 } else { 0.5 },
        endpoints: args.endpoints.unwrap_or(if args.quick { 20 } else { 100 }).min(200),
        pin: args.pin,
        quick: args.quick,
        workloads,
        datapath,
        loadgen,
        ncpu: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    topo::install_signal_handlers()?;
    let swept = topo::sweep();
    if swept > 0 {
        eprintln!("bench: removed the leftovers of {swept} earlier run(s)");
    }
    let out_dir = args.out.unwrap_or_else(|| root.join("bench/results"));
    let results = measure(&cfg);
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            if topo::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("bench: interrupted; everything it made has been removed");
                std::process::exit(130);
            }
            return Err(e);
        }
    };
    let stamp = utc_stamp(SystemTime::now());
    let base = format!("bench-{stamp}{}", if cfg.quick { "-quick" } else { "" });
    std::fs::create_dir_all(&out_dir)?;
    let md = report::markdown(&results);
    let json = serde_json::to_string_pretty(&report::to_json(&results))? + "\n";
    let svg = report::svg(&results, &format!("datapath benchmark {stamp}{}", if cfg.quick { " (quick)" } else { "" }));
    for (ext, body) in [("md", &md), ("json", &json), ("svg", &svg)] {
        std::fs::write(out_dir.join(format!("{base}.{ext}")), body)?;
        std::fs::write(out_dir.join(format!("latest.{ext}")), body)?;
    }
    println!("{md}");
    println!("results: {}/{base}.{{json,md,svg}} (also latest.*)", out_dir.display());
    Ok(())
}

/// The nodes of the three agent topologies; field order = drop order
/// (agents stop and clean up before the namespaces go).
struct Node {
    topo: Topo,
    tag: &'static str,
    agent: Agent,
    node_ns: String,
    client_ns: String,
    server_ns: String,
    server_ip: String,
    outside_ns: String,
    network: String,
}

struct Lab {
    nodes: Vec<Node>,
    ceiling: (String, String),
    // Last: removes every namespace of the run after the agents stopped.
    run: RunGuard,
}

impl Lab {
    fn node(&self, t: Topo) -> Option<&Node> {
        self.nodes.iter().find(|n| n.topo == t)
    }

    /// (client ns, server ns, server address) of a workload on a topology.
    fn ends(&self, t: Topo, north_south: bool) -> (String, String, String) {
        match self.node(t) {
            None => (self.ceiling.0.clone(), self.ceiling.1.clone(), topo::CEILING_IPS[1].to_string()),
            Some(n) if north_south => (n.client_ns.clone(), n.outside_ns.clone(), topo::OUTSIDE_IP.to_string()),
            Some(n) => (n.client_ns.clone(), n.server_ns.clone(), n.server_ip.clone()),
        }
    }
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// Client-side settings for many short connections (TCP_CRR): a wide port
/// range and TIME_WAIT reuse, per namespace.
fn client_sysctls(ns: &str) -> Result<()> {
    topo::sysctl_in(ns, "net.ipv4.ip_local_port_range", "1024 65535")?;
    topo::sysctl_in(ns, "net.ipv4.tcp_tw_reuse", "1")
}

fn build_ceiling(run: &RunGuard) -> Result<(String, String)> {
    let a = run.add_netns("c1")?;
    let b = run.add_netns("c2")?;
    topo::ip(&["-n", &a, "link", "add", "dpbench-c", "type", "veth", "peer", "name", "dpbench-c", "netns", &b])?;
    for (ns, addr) in [(&a, topo::CEILING_IPS[0]), (&b, topo::CEILING_IPS[1])] {
        topo::ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "dpbench-c"])?;
        topo::ip(&["-n", ns, "link", "set", "dpbench-c", "up"])?;
    }
    client_sysctls(&a)?;
    Ok((a, b))
}

/// Docker's filter FORWARD chain layout and nat DOCKER jumps, in nftables.
fn docker_ruleset(bridge: &str) -> String {
    format!(
        r#"table ip dpbench-docker {{
  chain docker {{
  }}
  chain docker-user {{
    return
  }}
  chain docker-isolation-stage-1 {{
    iifname "{bridge}" oifname != "{bridge}" jump docker-isolation-stage-2
    return
  }}
  chain docker-isolation-stage-2 {{
    oifname "{bridge}" drop
    return
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    jump docker-user
    jump docker-isolation-stage-1
    oifname "{bridge}" ct state related,established accept
    oifname "{bridge}" jump docker
    iifname "{bridge}" oifname != "{bridge}" accept
    iifname "{bridge}" oifname "{bridge}" accept
  }}
  chain docker-nat {{
    iifname "{bridge}" return
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump docker-nat
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr != 127.0.0.0/8 fib daddr type local jump docker-nat
  }}
}}
"#
    )
}

fn build_node(cfg: &Cfg, run: &RunGuard, t: Topo, idx: u8) -> Result<Node> {
    let tag = match t {
        Topo::Ebpf => "e",
        Topo::Kernel => "k",
        Topo::KernelBare => "b",
        Topo::Ceiling => unreachable!("the ceiling has no node"),
    };
    let node = run.add_netns(&format!("{tag}n"))?;
    let outside = run.add_netns(&format!("{tag}o"))?;
    topo::ip(&["-n", &node, "link", "add", topo::UPLINK, "type", "veth", "peer", "name", "eth0", "netns", &outside])?;
    topo::ip(&["-n", &node, "addr", "add", &format!("{}/24", topo::NODE_UPLINK_IP), "dev", topo::UPLINK])?;
    topo::ip(&["-n", &node, "link", "set", topo::UPLINK, "up"])?;
    topo::ip(&["-n", &outside, "addr", "add", &format!("{}/24", topo::OUTSIDE_IP), "dev", "eth0"])?;
    topo::ip(&["-n", &outside, "link", "set", "eth0", "up"])?;
    topo::ip(&["-n", &node, "route", "add", "default", "via", topo::OUTSIDE_IP])?;
    // br_netfilter is per namespace (built in or loaded, a new namespace
    // starts with 1): Docker host = 1, bare bridge = 0, eBPF node: as is.
    let brnf = match t {
        Topo::Kernel => Some("1"),
        Topo::KernelBare => Some("0"),
        _ => None,
    };
    if let Some(v) = brnf {
        for key in [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
            "net.bridge.bridge-nf-call-arptables",
        ] {
            topo::sysctl_in(&node, key, v).with_context(|| format!("setting {key} (is br_netfilter available?)"))?;
        }
    }
    let datapath = if t == Topo::Ebpf { "ebpf" } else { "kernel" };
    let agent = Agent::start(&cfg.datapath, &run.dir, &node, tag, datapath)?;
    let network = "bench".to_string();
    let net = agent.call(json!({
        "op": "network_create", "name": network, "subnet": format!("10.201.{idx}.0/24"),
        "datapath": datapath, "uplink": topo::UPLINK,
    }))?;
    if t == Topo::Kernel {
        let bridge = net["bridge"].as_str().context("network_create result has no bridge")?;
        let mut nft = topo::in_ns(&node, &["nft", "-f", "-"]);
        nft.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = nft.spawn().context("running nft")?;
        use std::io::Write;
        child.stdin.take().context("nft stdin")?.write_all(docker_ruleset(bridge).as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft rejected the Docker ruleset: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let mut eps = Vec::new();
    for side in ["a", "b"] {
        let name = run.name(&format!("{tag}{side}"));
        let v = agent.call(json!({"op": "endpoint_create", "name": name, "network": network}))?;
        eps.push((name, v["ip"].as_str().context("endpoint without ip")?.to_string()));
    }
    client_sysctls(&eps[0].0)?;
    Ok(Node {
        topo: t,
        tag,
        agent,
        node_ns: node,
        client_ns: eps[0].0.clone(),
        server_ns: eps[1].0.clone(),
        server_ip: eps[1].1.clone(),
        outside_ns: outside,
        network,
    })
}

struct Sample {
    rate: f64,
    /// CPU-seconds per second spent on the counted CPUs.
    busy: f64,
}

fn pinned(cpu: Option<usize>, argv: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(c) = cpu {
        v.extend(["taskset".to_string(), "-c".to_string(), c.to_string()]);
    }
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

fn spawn_in(ns: &str, argv: &[String], what: &str, capture: bool) -> Result<Proc> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = topo::in_ns(ns, &args);
    if capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    Proc::spawn(cmd, what)
}

fn busy_between(cfg: &Cfg, before: &[(u64, u64)], after: &[(u64, u64)]) -> f64 {
    let (_, _, counted) = cfg.cpus();
    counted
        .iter()
        .filter_map(|&i| {
            let (b0, t0) = before.get(i)?;
            let (b1, t1) = after.get(i)?;
            (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
        })
        .sum()
}

/// One measurement of one workload between two namespaces.
fn measure_one(
    cfg: &Cfg,
    w: &Workload,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    port: u16,
) -> Result<Sample> {
    let (ccpu, scpu, _) = cfg.cpus();
    let d = cfg.duration;
    match w.kind {
        Kind::Stream(streams) => {
            let server = spawn_in(
                server_ns,
                &pinned(scpu, &["iperf3", "-s", "-1", "-B", server_ip, "-p", &port.to_string()]),
                "iperf3 server",
                false,
            )?;
            let mut last = String::new();
            for attempt in 0..5 {
                topo::sleep(Duration::from_millis(if attempt == 0 { 150 } else { 300 }))?;
                let before = topo::cpu_times();
                let client = spawn_in(
                    client_ns,
                    &pinned(
                        ccpu,
                        &[
                            "iperf3",
                            "-c",
                            server_ip,
                            "-p",
                            &port.to_string(),
                            "-t",
                            &format!("{d}"),
                            "-P",
                            &streams.to_string(),
                            "-J",
                        ],
                    ),
                    "iperf3 client",
                    true,
                )?;
                let (st, out, _) = client.wait_output(Duration::from_secs_f64(d + 30.0))?;
                let after = topo::cpu_times();
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                if st.success() {
                    let bps = v["end"]["sum_received"]["bits_per_second"]
                        .as_f64()
                        .context("iperf3 JSON without end.sum_received")?;
                    drop(server);
                    return Ok(Sample { rate: bps / 1e9, busy: busy_between(cfg, &before, &after) });
                }
                last = v["error"].as_str().unwrap_or(&out).to_string();
                if !last.contains("connect") {
                    break;
                }
            }
            bail!("iperf3: {last}")
        }
        Kind::Rr | Kind::Crr | Kind::Udp => {
            let (mode, proto) = match w.kind {
                Kind::Rr => ("rr", "tcp"),
                Kind::Crr => ("crr", "tcp"),
                _ => ("udp", "udp"),
            };
            let addr = format!("{server_ip}:{port}");
            let lg = cfg.loadgen.to_string_lossy().into_owned();
            let max = format!("{}", (d + cfg.warmup + 60.0).ceil() as u64);
            let size = if w.kind == Kind::Udp { "64" } else { "1" };
            let _server = spawn_in(
                server_ns,
                &pinned(
                    scpu,
                    &[&lg, "server", "--listen", &addr, "--proto", proto, "--max-secs", &max, "--size", size],
                ),
                "loadgen server",
                false,
            )?;
            let before = topo::cpu_times();
            let client = spawn_in(
                client_ns,
                &pinned(
                    ccpu,
                    &[
                        &lg,
                        "client",
                        "--mode",
                        mode,
                        "--target",
                        &addr,
                        "--duration",
                        &format!("{d}"),
                        "--warmup",
                        &format!("{}", cfg.warmup),
                        "--size",
                        size,
                    ],
                ),
                "loadgen client",
                true,
            )?;
            let (st, out, err) = client.wait_output(Duration::from_secs_f64(d + cfg.warmup + 30.0))?;
            let after = topo::cpu_times();
            if !st.success() {
                bail!("loadgen {mode}: {}", err.trim());
            }
            let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("loadgen output {out:?}"))?;
            let rate = v["rate"].as_f64().context("loadgen output without rate")?;
            Ok(Sample { rate, busy: busy_between(cfg, &before, &after) })
        }
    }
}

/// Can an endpoint reach the outside namespace (through the masquerade)?
fn probe_north_south(cfg: &Cfg, client_ns: &str, outside_ns: &str, outside_ip: &str) -> Result<()> {
    let lg = cfg.loadgen.to_string_lossy().into_owned();
    let addr = format!("{outside_ip}:6999");
    let _server = spawn_in(
        outside_ns,
        &[lg.clone(), "server".into(), "--listen".into(), addr.clone(), "--max-secs".into(), "20".into()],
        "probe server",
        false,
    )?;
    let client = spawn_in(
        client_ns,
        &[
            lg,
            "client".into(),
            "--mode".into(),
            "rr".into(),
            "--target".into(),
            addr,
            "--duration".into(),
            "0.2".into(),
            "--warmup".into(),
            "0".into(),
        ],
        "probe client",
        true,
    )?;
    let (st, _, err) = client.wait_output(Duration::from_secs(15))?;
    if !st.success() {
        bail!("{}", err.trim());
    }
    Ok(())
}

fn measure(cfg: &Cfg) -> Result<Results> {
    let started = Instant::now();
    let run = RunGuard::new()?;
    progress(&format!(
        "run {} — {} rounds × {} workloads × 4 topologies, {} s each, pin={:?}, {} endpoints per datapath",
        run.id,
        cfg.rounds,
        cfg.workloads.len(),
        cfg.duration,
        cfg.pin,
        cfg.endpoints
    ));
    progress("building the topologies (ceiling veth pair; kernel, kernel-bare and ebpf nodes with an agent each)");
    let ceiling = build_ceiling(&run)?;
    let mut nodes = Vec::new();
    let mut lab_nodes = |t: Topo, i: u8| -> Result<()> {
        nodes.push(build_node(cfg, &run, t, i)?);
        Ok(())
    };
    lab_nodes(Topo::Kernel, 1)?;
    lab_nodes(Topo::KernelBare, 2)?;
    lab_nodes(Topo::Ebpf, 3)?;
    let lab = Lab { nodes, ceiling, run };

    let mut r = Results::default();
    let uname = topo::sh(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let git =
        topo::sh(Command::new("git").current_dir(crate::workspace_root()).args(["describe", "--always", "--dirty"]))
            .unwrap_or_default();
    let ebpf_brnf =
        topo::sysctl_read_in(&lab.node(Topo::Ebpf).expect("ebpf node").node_ns, "net.bridge.bridge-nf-call-iptables");
    let (ccpu, scpu, _) = cfg.cpus();
    r.meta = vec![
        ("date (UTC)".into(), utc_stamp(SystemTime::now())),
        ("kernel".into(), uname.trim().into()),
        ("cpu".into(), format!("{} × {cpu_model}", cfg.ncpu)),
        ("commit".into(), git.trim().into()),
        ("rounds".into(), cfg.rounds.to_string()),
        ("seconds per measurement".into(), format!("{} (+{} s warm-up for loadgen)", cfg.duration, cfg.warmup)),
        (
            "placement".into(),
            format!(
                "{:?}: client on CPU {}, server on CPU {}; CPU cost = busy time of the CPU(s) used / rate",
                cfg.pin,
                ccpu.map(|c| c.to_string()).unwrap_or("any".into()),
                scpu.map(|c| c.to_string()).unwrap_or("any".into())
            ),
        ),
        ("tools".into(), "iperf3 (stream), loadgen (TCP_RR 1 B, TCP_CRR 1 B, UDP 64 B payload)".into()),
        (
            "br_netfilter".into(),
            format!(
                "kernel: bridge-nf-call-iptables=1; kernel-bare: 0; ebpf node: {} (namespace default)",
                ebpf_brnf.unwrap_or("n/a".into())
            ),
        ),
    ];

    // Idle memory, then endpoint churn (interleaved between the datapaths).
    topo::sleep(Duration::from_millis(500))?;
    for n in &lab.nodes {
        r.memory.push(report::AgentMem {
            node: n.topo.name().into(),
            idle_rss_kib: n.agent.rss_kib().unwrap_or(0),
            after_churn_rss_kib: None,
        });
    }
    if cfg.endpoints > 0 {
        churn(cfg, &lab, &mut r)?;
        for (m, n) in r.memory.iter_mut().zip(&lab.nodes) {
            m.after_churn_rss_kib = n.agent.rss_kib();
        }
    }

    // North-south reachability (the eBPF SNAT may not exist yet).
    let mut ns_ok: Vec<(Topo, Option<String>)> = Vec::new();
    if cfg.workloads.iter().any(|w| w.north_south) {
        for t in Topo::ALL {
            let (c, s, ip) = lab.ends(t, true);
            let res = probe_north_south(cfg, &c, &s, &ip);
            let na = match res {
                Ok(()) => None,
                Err(e) => {
                    progress(&format!("north-south probe on {}: {e:#}", t.name()));
                    Some(if t == Topo::Ebpf {
                        "n/a (eBPF SNAT not available)".to_string()
                    } else {
                        format!("n/a (no north-south connectivity: {e})")
                    })
                }
            };
            ns_ok.push((t, na));
        }
    }

    let total = cfg.rounds * cfg.workloads.len() * Topo::ALL.len();
    let mut done = 0usize;
    let t_traffic = Instant::now();
    let mut port: u16 = 7100;
    for round in 0..cfg.rounds {
        for w in &cfg.workloads {
            // Rotate the order of the topologies from round to round.
            for k in 0..Topo::ALL.len() {
                let t = Topo::ALL[(k + round) % Topo::ALL.len()];
                done += 1;
                if let Some(na) =
                    w.north_south.then(|| ns_ok.iter().find(|(x, _)| *x == t).and_then(|(_, na)| na.clone())).flatten()
                {
                    r.cell_mut(w.id, t).na = Some(na);
                    continue;
                }
                port = if port >= 7900 { 7100 } else { port + 1 };
                let (c, s, ip) = lab.ends(t, w.north_south);
                let res = measure_one(cfg, w, &c, &s, &ip, port);
                topo::check_interrupted()?;
                let eta = if done > 1 {
                    let per = t_traffic.elapsed().as_secs_f64() / (done - 1) as f64;
                    format!("eta {:.0} s", per * (total - done + 1) as f64)
                } else {
                    String::new()
                };
                match res {
                    Ok(smp) => {
                        let cell = r.cell_mut(w.id, t);
                        cell.values.push(smp.rate);
                        if let Some(c) = w.cpu_cost(smp.busy, smp.rate) {
                            cell.cpu.push(c);
                        }
                        progress(&format!(
                            "[{done:>3}/{total}] round {}/{} {:<16} {:<11} {:>9} {:<7} cpu {:>3.0}%  {eta}",
                            round + 1,
                            cfg.rounds,
                            w.id,
                            t.name(),
                            report::human(smp.rate),
                            w.unit(),
                            smp.busy * 100.0
                        ));
                    }
                    Err(e) => {
                        progress(&format!(
                            "[{done:>3}/{total}] round {}/{} {:<16} {:<11} FAILED: {e:#}",
                            round + 1,
                            cfg.rounds,
                            w.id,
                            t.name()
                        ));
                        r.cell_mut(w.id, t).errors.push(format!("{e:#}"));
                    }
                }
            }
        }
    }
    for (_, _, c) in r.cells.iter_mut() {
        if c.values.is_empty() && c.na.is_none() {
            c.na = Some(format!("failed: {}", c.errors.first().cloned().unwrap_or_default()));
        }
    }
    // Diagnostics: eBPF per-reason counters (drops included).
    let mut diag = serde_json::Map::new();
    if let Some(n) = lab.node(Topo::Ebpf) {
        if let Ok(s) = n.agent.call(json!({"op": "stats"})) {
            diag.insert("ebpf_stats".into(), s);
        }
    }
    let errors: Vec<Value> = r
        .cells
        .iter()
        .filter(|(_, _, c)| !c.errors.is_empty())
        .map(|(w, t, c)| json!({"workload": w, "topology": t.name(), "errors": c.errors}))
        .collect();
    diag.insert("errors".into(), Value::from(errors));
    r.diagnostics = Value::Object(diag);
    r.meta.push(("wall time".into(), format!("{:.0} s", started.elapsed().as_secs_f64())));
    progress("measurements done; stopping the agents and removing the namespaces");
    drop(lab);
    Ok(r)
}

/// Creates then removes `cfg.endpoints` endpoints on the ebpf and the kernel
/// node, alternating between them, timing each API call.
fn churn(cfg: &Cfg, lab: &Lab, r: &mut Results) -> Result<()> {
    let nodes: Vec<&Node> = [Topo::Ebpf, Topo::Kernel].iter().filter_map(|&t| lab.node(t)).collect();
    let mut results: Vec<Churn> = nodes
        .iter()
        .map(|n| Churn { datapath: if n.topo == Topo::Ebpf { "ebpf" } else { "kernel" }.into(), ..Default::default() })
        .collect();
    progress(&format!("endpoint churn: {} endpoints per datapath (create all, then remove all)", cfg.endpoints));
    let mut created: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for i in 0..cfg.endpoints {
        topo::check_interrupted()?;
        for (j, n) in nodes.iter().enumerate() {
            let name = lab.run.name(&format!("{}x{i}", n.tag));
            let t = Instant::now();
            match n.agent.call(json!({"op": "endpoint_create", "name": name, "network": n.network})) {
                Ok(_) => {
                    results[j].create_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    created[j].push(name);
                }
                Err(e) => results[j].errors.push(format!("create {name}: {e:#}")),
            }
        }
    }
    for i in 0..cfg.endpoints {
        topo::check_interrupted()?;
        for (j, n) in nodes.iter().enumerate() {
            let Some(name) = created[j].get(i) else { continue };
            let t = Instant::now();
            match n.agent.call(json!({"op": "endpoint_remove", "name": name})) {
                Ok(_) => results[j].remove_ms.push(t.elapsed().as_secs_f64() * 1e3),
                Err(e) => results[j].errors.push(format!("remove {name}: {e:#}")),
            }
        }
    }
    for c in &results {
        progress(&format!(
            "endpoint churn {}: create median {:.1} ms p99 {:.1} ms, remove median {:.1} ms ({} errors)",
            c.datapath,
            stats::median(&c.create_ms).unwrap_or(f64::NAN),
            stats::percentile(&c.create_ms, 99.0).unwrap_or(f64::NAN),
            stats::median(&c.remove_ms).unwrap_or(f64::NAN),
            c.errors.len()
        ));
    }
    r.churn = results;
    Ok(())
}

/// `YYYYmmddTHHMMSSZ` for file names.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096)), "20240229T123456Z");
    }

    #[test]
    fn docker_rules_mention_the_bridge() {
        let s = docker_ruleset("br-x");
        assert!(s.contains("policy drop"));
        assert!(s.contains("oifname \"br-x\" ct state related,established accept"));
        assert!(s.contains("iifname \"br-x\" oifname \"br-x\" accept"));
    }
}
