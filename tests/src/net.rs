//! Looking at and acting in network namespaces (shelling out to iproute2,
//! ping and python3 is fine in tests).

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::env::python;
use datapath::testbed::process::{run, run_timeout, show, stdout_str, BgProcess};

/// `ip netns exec NS cmd...`
pub fn ns_cmd(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

/// Runs `cmd` inside netns `ns` (30 s deadline).
pub fn exec_in(ns: &str, cmd: &[&str]) -> Output {
    run(&mut ns_cmd(ns, cmd))
}

/// Runs a python3 script inside `ns` with `args` (deadline `timeout`).
pub fn python_in(ns: &str, script: &str, args: &[&str], timeout: Duration) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, python(), "-c", script]).args(args);
    run_timeout(&mut c, timeout)
}

/// Starts a python3 script inside `ns` in the background.
pub fn python_bg(ns: &str, script: &str, args: &[&str]) -> BgProcess {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, python(), "-u", "-c", script]).args(args);
    BgProcess::spawn(c)
}

/// Whether iputils `ping` is installed (else [`crate::py::PING`] stands in).
pub fn have_ping() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        if std::env::var_os("DATAPATH_TESTS_PY_PING").is_some() {
            return false;
        }
        Command::new("ping")
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// `ping -n -c COUNT -i INTERVAL -W 1 IP` from inside `ns` (or the python
/// stand-in with the same summary line when iputils-ping is missing).
pub fn ping_opts(ns: &str, ip: &str, count: u32, interval: &str) -> Output {
    let c = count.to_string();
    let timeout = Duration::from_secs(10 + u64::from(count));
    if have_ping() {
        run_timeout(&mut ns_cmd(ns, &["ping", "-n", "-c", &c, "-W", "1", "-i", interval, ip]), timeout)
    } else {
        python_in(ns, crate::py::PING, &["dpt", ip, &c, interval, "1"], timeout)
    }
}

/// `ping -c COUNT -W 1 -i 0.2 IP` from inside `ns`.
pub fn ping(ns: &str, ip: &str, count: u32) -> Output {
    ping_opts(ns, ip, count, "0.2")
}

/// Asserts that `ns` can ping `ip` (all `count` replies).
pub fn assert_ping(ns: &str, ip: &str, count: u32) {
    let out = ping(ns, ip, count);
    assert!(out.status.success(), "ping {ip} from netns {ns} failed:\n{}", show(&out));
    let s = stdout_str(&out);
    assert!(
        s.contains(&format!("{count} received")),
        "ping {ip} from netns {ns}: expected {count} replies:\n{}",
        show(&out)
    );
}

/// Runs an `ip -j ...` command and parses its JSON (empty output = `[]`).
pub fn ip_json(args: &[&str]) -> Value {
    let mut c = Command::new("ip");
    c.arg("-j").args(args);
    let out = run(&mut c);
    assert!(out.status.success(), "ip -j {}:\n{}", args.join(" "), show(&out));
    let s = stdout_str(&out);
    if s.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("ip -j {}: bad JSON ({e}): {s}", args.join(" ")))
}

/// Every link in `ns` (`ip -n NS -j -d link show`).
pub fn links(ns: &str) -> Vec<Value> {
    match ip_json(&["-n", ns, "-d", "link", "show"]) {
        Value::Array(v) => v,
        other => panic!("unexpected ip link output: {other}"),
    }
}

/// Names of every link in `ns`, sorted.
pub fn link_names(ns: &str) -> Vec<String> {
    let mut v: Vec<String> = links(ns).iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect();
    v.sort();
    v
}

/// One link in `ns`, or None if it doesn't exist.
pub fn link(ns: &str, dev: &str) -> Option<Value> {
    links(ns).into_iter().find(|l| l["ifname"] == dev)
}

/// Packet/byte counters of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// `ip -n NS -j -s link show dev DEV` -> stats64.
pub fn link_stats(ns: &str, dev: &str) -> LinkStats {
    let v = ip_json(&["-n", ns, "-s", "link", "show", "dev", dev]);
    let s = &v[0]["stats64"];
    let n = |dir: &str, f: &str| {
        s[dir][f].as_u64().unwrap_or_else(|| panic!("no stats64.{dir}.{f} for {dev} in {ns}: {v}"))
    };
    LinkStats {
        rx_packets: n("rx", "packets"),
        rx_bytes: n("rx", "bytes"),
        tx_packets: n("tx", "packets"),
        tx_bytes: n("tx", "bytes"),
    }
}

/// IPv4 addresses (`addr/prefix`) on `dev` in `ns`.
pub fn ipv4_addrs(ns: &str, dev: &str) -> Vec<String> {
    let v = ip_json(&["-n", ns, "-4", "addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["family"] == "inet")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or("?"), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Neighbour entries of `ns`.
pub fn neighbours(ns: &str) -> Vec<Value> {
    match ip_json(&["-n", ns, "neigh", "show"]) {
        Value::Array(v) => v,
        other => panic!("unexpected ip neigh output: {other}"),
    }
}

/// Waits (bounded) until something in `ns` listens on TCP `port`.
pub fn wait_tcp_listen(ns: &str, port: u16, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    while std::time::Instant::now() < deadline {
        let out = exec_in(ns, &["ss", "-Hltn", &filter]);
        if out.status.success() && !stdout_str(&out).trim().is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
