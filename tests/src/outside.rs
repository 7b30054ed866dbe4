//! The "outside" of a node with an uplink ([`crate::node::AgentOpts::uplink`]):
//! servers that record the source address they see, and packet captures
//! whose checksums tcpdump verifies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::env::python;
use crate::net::{self, ns_cmd, python_bg};
use crate::node::Node;
use crate::py;
use datapath::testbed::process::{run, show, stdout_str, BgProcess};

/// A `tcpdump -w` capture in a namespace, read back with `tcpdump -r -vv`
/// (which verifies IPv4, TCP and UDP checksums). The pcap path carries the
/// test prefix, so a sweeper recognises a leftover tcpdump by its argv.
pub struct Capture {
    pub ns: String,
    pub file: PathBuf,
    proc: Option<BgProcess>,
}

impl Capture {
    /// Starts capturing on `dev` in `ns` (`filter`: a pcap expression) and
    /// waits until tcpdump listens.
    pub fn start(node: &Node, ns: &str, dev: &str, name: &str, filter: &str) -> Capture {
        let file = node.dir.join(format!("{name}.pcap"));
        let f = file.to_string_lossy().into_owned();
        // --immediate-mode: no ring-buffer block timeout, so every packet is
        // in the file by the time the capture is stopped.
        let mut args = vec!["tcpdump", "-i", dev, "-nn", "--immediate-mode", "-U", "-Z", "root", "-s", "0", "-w", &f];
        args.extend(filter.split_whitespace());
        let p = BgProcess::spawn(ns_cmd(ns, &args));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.stderr().contains("listening on") {
            assert!(Instant::now() < deadline, "tcpdump in {ns} not listening after 10 s: {}", p.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture { ns: ns.to_string(), file, proc: Some(p) }
    }

    /// Stops the capture (flushing it); idempotent.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // Let the last packets reach the file before SIGTERM.
            std::thread::sleep(Duration::from_millis(300));
            p.stop();
        }
    }

    /// `tcpdump -r FILE -nn -vv [filter]` (the capture is stopped first).
    pub fn read(&mut self, filter: &str) -> String {
        self.stop();
        let f = self.file.to_string_lossy().into_owned();
        let mut c = Command::new("tcpdump");
        c.args(["-r", &f, "-nn", "-vv"]).args(filter.split_whitespace());
        let out = run(&mut c);
        assert!(out.status.success(), "tcpdump -r {f}:\n{}", show(&out));
        stdout_str(&out)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            drop(p);
        }
    }
}

/// Lines of a `tcpdump -vv` read-back that report a wrong checksum.
pub fn bad_checksum_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.contains("incorrect")
                || l.contains("bad cksum")
                || l.contains("bad udp cksum")
                || l.contains("wrong icmp cksum")
        })
        .map(String::from)
        .collect()
}

/// Number of checksums tcpdump verified as correct (TCP "(correct)", UDP
/// "udp sum ok").
pub fn verified_checksums(text: &str) -> usize {
    text.matches("(correct)").count() + text.matches("udp sum ok").count()
}

/// `python3 -m http.server PORT --directory DIR` in `ns` (all addresses,
/// no `--bind`: with it http.server does a reverse DNS lookup). It logs
/// each request with the client address on stderr, see [`http_clients`].
pub fn http_server(ns: &str, port: u16, dir: &std::path::Path) -> BgProcess {
    let d = dir.to_string_lossy().into_owned();
    let p = port.to_string();
    let mut s = BgProcess::spawn(ns_cmd(ns, &[python(), "-u", "-m", "http.server", &p, "--directory", &d]));
    if !net::wait_tcp_listen(ns, port, Duration::from_secs(15)) {
        let (_, err) = s.stop();
        panic!("HTTP server in {ns} never listened on :{port}; stderr: {err}");
    }
    s
}

/// Client addresses of the GET requests an [`http_server`] logged.
pub fn http_clients(server: &BgProcess) -> Vec<String> {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains("\"GET "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// A server of `script` (printing "ready", then "from IP PORT" per peer),
/// ready.
pub fn recording_server(node: &Node, ns: &str, script: &str, args: &[&str]) -> BgProcess {
    let mut a = vec![node.prefix.as_str()];
    a.extend_from_slice(args);
    let s = python_bg(ns, script, &a);
    assert!(
        s.wait_line(Duration::from_secs(10), |l| l == "ready").is_some(),
        "server in {ns} not ready; stderr: {}",
        s.stderr()
    );
    s
}

/// UDP echo server on IP:PORT in `ns` ([`py::UDP_ECHO_SERVER`]).
pub fn udp_echo_server(node: &Node, ns: &str, ip: &str, port: u16) -> BgProcess {
    recording_server(node, ns, py::UDP_ECHO_SERVER, &[ip, &port.to_string()])
}

/// TCP server on 0.0.0.0:PORT in `ns` ([`py::TCP_RECORDING_SERVER`]).
pub fn tcp_server(node: &Node, ns: &str, port: u16) -> BgProcess {
    recording_server(node, ns, py::TCP_RECORDING_SERVER, &[&port.to_string()])
}

/// The peers a recording server printed ("from IP PORT"), as (ip, port).
pub fn peers(server: &BgProcess) -> Vec<(String, u16)> {
    server
        .lines()
        .iter()
        .filter_map(|l| {
            let mut it = l.strip_prefix("from ")?.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// How many times each source address occurs.
pub fn count_by_ip<'a>(ips: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for ip in ips {
        *m.entry(ip.to_string()).or_insert(0) += 1;
    }
    m
}
