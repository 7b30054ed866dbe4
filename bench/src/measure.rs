//! One measurement of one workload between two namespaces: iperf3 for TCP
//! streams, `loadgen` for TCP_RR, TCP_CRR and UDP, with the CPU time of the
//! counted CPUs over the measurement.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use datapath::testbed::process::BgProcess;
use serde_json::Value;

use crate::report::{Kind, Workload};
use crate::sys;
use crate::Cfg;

pub struct Sample {
    pub rate: f64,
    /// CPU-seconds per second spent on the counted CPUs.
    pub busy: f64,
}

fn pinned(cpu: Option<usize>, argv: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(c) = cpu {
        v.extend(["taskset".to_string(), "-c".to_string(), c.to_string()]);
    }
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

fn spawn_in(ns: &str, argv: &[String]) -> BgProcess {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    BgProcess::spawn(sys::in_ns(ns, &args))
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

/// Where a measurement runs.
pub struct Ends<'a> {
    pub client_ns: &'a str,
    pub server_ns: &'a str,
    /// What the server binds.
    pub server_ip: &'a str,
    /// What the client connects to (the server's address, or the node's
    /// address for a published port).
    pub connect_ip: &'a str,
    /// The server's port.
    pub port: u16,
    /// The port the client connects to (the server's, or the published
    /// one mapped to it).
    pub connect_port: u16,
}

/// One measurement of `w` between the two ends.
pub fn measure_one(cfg: &Cfg, w: &Workload, ends: &Ends) -> Result<Sample> {
    match w.kind {
        Kind::Stream(streams) => stream(cfg, streams, ends),
        Kind::Rr | Kind::Crr | Kind::Udp => loadgen(cfg, w.kind, ends),
    }
}

/// iperf3 TCP stream(s); the rate in Gbit/s. Retries when the client could
/// not connect (the server not listening yet).
fn stream(cfg: &Cfg, streams: u32, e: &Ends) -> Result<Sample> {
    let (ccpu, scpu, _) = cfg.cpus();
    let (port, cport) = (e.port.to_string(), e.connect_port.to_string());
    let server = spawn_in(e.server_ns, &pinned(scpu, &["iperf3", "-s", "-1", "-B", e.server_ip, "-p", &port]));
    let (d, n) = (format!("{}", cfg.duration), streams.to_string());
    let mut last = String::new();
    for attempt in 0..5 {
        sys::sleep(Duration::from_millis(if attempt == 0 { 150 } else { 300 }))?;
        let before = sys::cpu_times();
        let argv: [&str; 10] = ["iperf3", "-c", e.connect_ip, "-p", &cport, "-t", &d, "-P", &n, "-J"];
        let client = spawn_in(e.client_ns, &pinned(ccpu, &argv));
        let (st, out, _) = sys::wait_output(client, "iperf3 client", Duration::from_secs_f64(cfg.duration + 30.0))?;
        let after = sys::cpu_times();
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if st.success() {
            let bps =
                v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 JSON without end.sum_received")?;
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

/// loadgen TCP_RR, TCP_CRR or UDP; the rate it reports.
fn loadgen(cfg: &Cfg, kind: Kind, e: &Ends) -> Result<Sample> {
    let (ccpu, scpu, _) = cfg.cpus();
    let (mode, proto) = match kind {
        Kind::Rr => ("rr", "tcp"),
        Kind::Crr => ("crr", "tcp"),
        _ => ("udp", "udp"),
    };
    let d = cfg.duration;
    let addr = host_port(e.server_ip, e.port);
    let target = host_port(e.connect_ip, e.connect_port);
    let lg = cfg.loadgen.to_string_lossy().into_owned();
    let max = format!("{}", (d + cfg.warmup + 60.0).ceil() as u64);
    let size = if kind == Kind::Udp { "64" } else { "1" };
    let server_argv: [&str; 10] =
        [&lg, "server", "--listen", &addr, "--proto", proto, "--max-secs", &max, "--size", size];
    let _server = spawn_in(e.server_ns, &pinned(scpu, &server_argv));
    let before = sys::cpu_times();
    let (dur, warm) = (format!("{d}"), format!("{}", cfg.warmup));
    let client_argv: [&str; 12] =
        [&lg, "client", "--mode", mode, "--target", &target, "--duration", &dur, "--warmup", &warm, "--size", size];
    let client = spawn_in(e.client_ns, &pinned(ccpu, &client_argv));
    let (st, out, err) = sys::wait_output(client, "loadgen client", Duration::from_secs_f64(d + cfg.warmup + 30.0))?;
    let after = sys::cpu_times();
    if !st.success() {
        bail!("loadgen {mode}: {}", err.trim());
    }
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("loadgen output {out:?}"))?;
    let rate = v["rate"].as_f64().context("loadgen output without rate")?;
    Ok(Sample { rate, busy: busy_between(cfg, &before, &after) })
}

/// `IP:PORT`, `[IP]:PORT` for IPv6 (what loadgen's `--listen`/`--target`
/// parse as a socket address).
pub fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Can an endpoint reach the outside namespace (through the masquerade)?
pub fn probe_north_south(cfg: &Cfg, client_ns: &str, outside_ns: &str, outside_ip: &str) -> Result<()> {
    let lg = cfg.loadgen.to_string_lossy().into_owned();
    let addr = host_port(outside_ip, 6999);
    let server_argv: [&str; 6] = [&lg, "server", "--listen", &addr, "--max-secs", "20"];
    let _server = spawn_in(outside_ns, &pinned(None, &server_argv));
    let argv: [&str; 10] = [&lg, "client", "--mode", "rr", "--target", &addr, "--duration", "0.2", "--warmup", "0"];
    let client = spawn_in(client_ns, &pinned(None, &argv));
    let (st, _, err) = sys::wait_output(client, "probe client", Duration::from_secs(15))?;
    if !st.success() {
        bail!("{}", err.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn socket_addresses_for_loadgen() {
        assert_eq!(super::host_port("10.0.0.2", 7100), "10.0.0.2:7100");
        assert_eq!(super::host_port("2001:db8:203::1", 7100), "[2001:db8:203::1]:7100");
        let parsed: std::net::SocketAddr = super::host_port("fd00:201:3::3", 9).parse().unwrap();
        assert!(parsed.is_ipv6());
    }
}
