//! The whole measurement: set-up, the facts of the run, agent memory,
//! endpoint churn, north-south probes, then the interleaved rounds.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use datapath::api::Request;
use datapath::testbed::knobs;
use serde_json::{json, Value};

use crate::lab::Lab;
use crate::measure::{measure_one, probe_north_south, Ends};
use crate::report::{self, AgentMem, Results, Topo, Workload};
use crate::{churn, progress, sys, Cfg};

/// Builds the lab, measures everything, tears the lab down.
pub fn measure(cfg: &Cfg) -> Result<Results> {
    let started = Instant::now();
    let names: Vec<&str> = cfg.topos.iter().map(|t| t.name()).collect();
    progress(&format!("building the topologies: {}", names.join(", ")));
    let lab = Lab::build(&cfg.datapath, &cfg.topos)?;
    progress(&format!(
        "run {} — {} rounds × {} workloads × {} topologies, {} s each, pin={:?}, {} endpoints per datapath",
        lab.claim.prefix,
        cfg.rounds,
        cfg.workloads.len(),
        lab.topos.len(),
        cfg.duration,
        cfg.pin,
        cfg.endpoints
    ));
    let mut r = Results { meta: meta(cfg, &lab), ..Default::default() };

    // Idle memory, then endpoint churn (interleaved between the datapaths).
    sys::sleep(Duration::from_millis(500))?;
    for n in &lab.nodes {
        r.memory.push(AgentMem {
            node: n.topo.name().into(),
            idle_rss_kib: n.agent.rss_kib().unwrap_or(0),
            after_churn_rss_kib: None,
        });
    }
    if let Some(d) = &lab.docker {
        r.memory.push(AgentMem {
            node: "docker (agent with the plugin)".into(),
            idle_rss_kib: d.agent.rss_kib().unwrap_or(0),
            after_churn_rss_kib: None,
        });
    }
    if cfg.endpoints > 0 && !lab.nodes.is_empty() {
        r.churn = churn::churn(cfg, &lab)?;
        for (m, n) in r.memory.iter_mut().zip(&lab.nodes) {
            m.after_churn_rss_kib = n.agent.rss_kib();
        }
    }
    if let Some(d) = lab.docker.as_ref().filter(|_| cfg.containers > 0) {
        r.containers = crate::docker::container_starts(cfg.containers, d)?;
    }
    let ns_na = probe_all(cfg, &lab);
    rounds(cfg, &lab, &ns_na, &mut r)?;
    for (_, _, c) in r.cells.iter_mut() {
        if c.values.is_empty() && c.na.is_none() {
            c.na = Some(format!("failed: {}", c.errors.first().cloned().unwrap_or_default()));
        }
    }
    r.diagnostics = diagnostics(&lab, &r);
    r.meta.push(("wall time".into(), format!("{:.0} s", started.elapsed().as_secs_f64())));
    progress("measurements done; stopping the agents and removing the namespaces");
    drop(lab);
    Ok(r)
}

/// Facts about the run, shown at the top of the report.
fn meta(cfg: &Cfg, lab: &Lab) -> Vec<(String, String)> {
    let uname = sys::sh(Command::new("uname").arg("-r")).unwrap_or_default();
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
        sys::sh(Command::new("git").current_dir(crate::workspace_root()).args(["describe", "--always", "--dirty"]))
            .unwrap_or_default();
    let brnf = |p: std::path::PathBuf| knobs::sysctl_read(&p, "net.bridge.bridge-nf-call-iptables").ok();
    let ebpf_brnf = lab.node(Topo::Ebpf).and_then(|n| brnf(n.net.node_path()));
    let docker_brnf = lab.docker.as_ref().and_then(|d| brnf(d.net.node_path()));
    let (ccpu, scpu, _) = cfg.cpus();
    let cpu = |c: Option<usize>| c.map(|c| c.to_string()).unwrap_or("any".into());
    vec![
        ("date (UTC)".into(), sys::utc_stamp(SystemTime::now())),
        ("topologies".into(), lab.topos.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")),
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
                cpu(ccpu),
                cpu(scpu)
            ),
        ),
        ("tools".into(), "iperf3 (stream), loadgen (TCP_RR 1 B, TCP_CRR 1 B, UDP 64 B payload)".into()),
        ("br_netfilter".into(), br_netfilter_note(lab, ebpf_brnf, docker_brnf.clone())),
        (
            "docker".into(),
            match &lab.docker {
                None => "not measured".into(),
                Some(_) => format!(
                    "{}; one dockerd (--iptables --ip-forward --userland-proxy=false, iptables: {}), its node's \
                     bridge-nf-call-iptables={}; networks: bridge driver and datapath driver (eBPF); \
                     the bridge network's server publishes the workloads' ports at +{}",
                    sys::sh(Command::new(datapath::testbed::docker::DOCKERD).arg("--version"))
                        .unwrap_or_default()
                        .trim(),
                    sys::sh(Command::new("iptables").arg("--version")).unwrap_or_default().trim(),
                    docker_brnf.unwrap_or("n/a".into()),
                    crate::docker::BRIDGE_PORT_OFFSET
                ),
            },
        ),
    ]
}

/// bridge-nf-call-iptables of each measured node.
fn br_netfilter_note(lab: &Lab, ebpf: Option<String>, docker: Option<String>) -> String {
    let na = |v: Option<String>| v.unwrap_or("n/a".into());
    let mut parts = Vec::new();
    for t in &lab.topos {
        match t {
            Topo::Kernel => parts.push("kernel: bridge-nf-call-iptables=1".to_string()),
            Topo::KernelBare => parts.push("kernel-bare: 0".into()),
            Topo::Ebpf => parts.push(format!("ebpf node: {} (namespace default)", na(ebpf.clone()))),
            Topo::DockerDatapath => parts.push(format!("docker node: {} (as dockerd set it)", na(docker.clone()))),
            Topo::Ceiling | Topo::DockerBridge => {}
        }
    }
    if parts.is_empty() {
        "no bridge measured".into()
    } else {
        parts.join("; ")
    }
}

/// Why a topology has no IPv6 figures.
const NO_IPV6: &str = "n/a (IPv6 not measured on the Docker topologies)";

/// North-south reachability per topology and family (IPv6: false/true; the
/// eBPF SNAT may not exist yet): why its north-south rows have no figure,
/// if they have none.
type NsNa = Vec<((Topo, bool), Option<String>)>;

fn probe_all(cfg: &Cfg, lab: &Lab) -> NsNa {
    let mut ns_na = Vec::new();
    for ipv6 in [false, true] {
        if !cfg.workloads.iter().any(|w| w.north_south && w.ipv6 == ipv6) {
            continue;
        }
        for &t in &lab.topos {
            let Some(p) = lab.place(t, true, false, ipv6) else { continue };
            let family = if ipv6 { "IPv6" } else { "IPv4" };
            let na = match probe_north_south(cfg, &p.client_ns, &p.server_ns, &p.server_ip) {
                Ok(()) => None,
                Err(e) => {
                    progress(&format!("north-south probe ({family}) on {}: {e:#}", t.name()));
                    Some(if t == Topo::Ebpf {
                        format!("n/a (eBPF SNAT not available for {family})")
                    } else {
                        format!("n/a (no north-south connectivity over {family}: {e})")
                    })
                }
            };
            ns_na.push(((t, ipv6), na));
        }
    }
    ns_na
}

/// The rounds: every workload on every topology, the order of the
/// topologies rotating from round to round.
fn rounds(cfg: &Cfg, lab: &Lab, ns_na: &NsNa, r: &mut Results) -> Result<()> {
    let topos = &lab.topos;
    let total = cfg.rounds * cfg.workloads.len() * topos.len();
    let mut done = 0usize;
    let t_traffic = Instant::now();
    let (lo, hi) = crate::lab::PORTS;
    let mut port: u16 = lo;
    for round in 0..cfg.rounds {
        for w in &cfg.workloads {
            for k in 0..topos.len() {
                let t = topos[(k + round) % topos.len()];
                done += 1;
                let na = ns_na.iter().find(|(x, _)| *x == (t, w.ipv6)).and_then(|(_, na)| na.clone());
                if let Some(na) = na.filter(|_| w.north_south) {
                    r.cell_mut(w.id, t).na = Some(na);
                    continue;
                }
                let Some(p) = lab.place(t, w.north_south, w.published, w.ipv6) else {
                    r.cell_mut(w.id, t).na = Some(NO_IPV6.into());
                    continue;
                };
                port = if port >= hi { lo } else { port + 1 };
                let ends = Ends {
                    client_ns: &p.client_ns,
                    server_ns: &p.server_ns,
                    server_ip: &p.server_ip,
                    connect_ip: &p.connect_ip,
                    port,
                    connect_port: port + p.port_offset,
                };
                let res = measure_one(cfg, w, &ends);
                sys::check_interrupted()?;
                let eta = if done > 1 {
                    let per = t_traffic.elapsed().as_secs_f64() / (done - 1) as f64;
                    format!("eta {:.0} s", per * (total - done + 1) as f64)
                } else {
                    String::new()
                };
                let at =
                    format!("[{done:>3}/{total}] round {}/{} {:<16} {:<15}", round + 1, cfg.rounds, w.id, t.name());
                record(r, w, t, res, &at, &eta);
            }
        }
    }
    Ok(())
}

/// Stores one measurement (or its failure) and reports progress.
fn record(r: &mut Results, w: &Workload, t: Topo, res: Result<crate::measure::Sample>, at: &str, eta: &str) {
    match res {
        Ok(smp) => {
            let cell = r.cell_mut(w.id, t);
            cell.values.push(smp.rate);
            if let Some(c) = w.cpu_cost(smp.busy, smp.rate) {
                cell.cpu.push(c);
            }
            progress(&format!(
                "{at} {:>9} {:<7} cpu {:>3.0}%  {eta}",
                report::human(smp.rate),
                w.unit(),
                smp.busy * 100.0
            ));
        }
        Err(e) => {
            progress(&format!("{at} FAILED: {e:#}"));
            r.cell_mut(w.id, t).errors.push(format!("{e:#}"));
        }
    }
}

/// Diagnostics: eBPF per-reason counters (drops included), failed rounds.
fn diagnostics(lab: &Lab, r: &Results) -> Value {
    let mut diag = serde_json::Map::new();
    if let Some(n) = lab.node(Topo::Ebpf) {
        if let Ok(s) = n.client.call(Request::Stats) {
            diag.insert("ebpf_stats".into(), s);
        }
    }
    if let Some(d) = &lab.docker {
        if let Ok(s) = d.client.call(Request::Stats) {
            diag.insert("docker_datapath_stats".into(), s);
        }
        let containers = r.containers.iter().filter(|c| !c.errors.is_empty());
        let errors: Vec<Value> = containers.map(|c| json!({"driver": c.datapath, "errors": c.errors})).collect();
        diag.insert("container_errors".into(), Value::from(errors));
    }
    let errors: Vec<Value> = r
        .cells
        .iter()
        .filter(|(_, _, c)| !c.errors.is_empty())
        .map(|(w, t, c)| json!({"workload": w, "topology": t.name(), "errors": c.errors}))
        .collect();
    diag.insert("errors".into(), Value::from(errors));
    Value::Object(diag)
}
