//! `datapath run` (README "datapath run"): Docker's network modes without
//! images. Every mode is checked from inside with real commands (`ip -j`,
//! ping, an HTTP transfer), every way of ending a command (`--rm`, `-d`,
//! `stop`) must leave no namespace, veth, endpoint, record or eBPF map entry
//! behind, and bad input is rejected without side effects.
//!
//! Differential: the behavioural tests run once per datapath (`_ebpf` and
//! `_kernel`), on a network created with `--datapath DP`.
//!
//! Hygiene: every command started through `run` gets `--name` from the
//! node's prefix (its netns is then `/run/netns/<prefix>...`, removed by the
//! Node guard), and every long-running one carries the prefix in its argv
//! (`sh -c SCRIPT <prefix>`, `http.server --directory <node dir>`), so the
//! guard kills it even when the agent or the test dies.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use datapath_tests::env::python;
use datapath_tests::net::{link, wait_tcp_listen};
use datapath_tests::node::{check_error_text, delta, Node};
use datapath_tests::proc::{describe, run, show, stderr_str, stdout_str};
use datapath_tests::py::HTTP_FETCH;
use datapath_tests::{kernel_test, netns_exists};
use serde_json::Value;

/// Generates `NAME_ebpf` and `NAME_kernel` tests calling `NAME(datapath)`.
macro_rules! differential {
    ($name:ident) => {
        pub(crate) mod $name {
            #[test]
            fn ebpf() {
                super::$name("ebpf");
            }
            #[test]
            fn kernel() {
                super::$name("kernel");
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use differential;

// ----- local helpers ---------------------------------------------------------

/// `datapath run ARGS...` (30 s deadline, stdin closed).
pub(crate) fn run_cmd(node: &Node, args: &[&str]) -> Output {
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    node.cli(&a)
}

/// `datapath run ARGS...`, asserting exit code `code`; returns stdout.
#[track_caller]
pub(crate) fn run_expect(node: &mut Node, args: &[&str], code: i32) -> String {
    let out = run_cmd(node, args);
    if out.status.code() != Some(code) {
        node.fail(format!("`datapath run {}`: expected exit code {code}:\n{}", args.join(" "), show(&out)));
    }
    stdout_str(&out)
}

/// A network on datapath `dp`, with extra create flags; returns its name.
pub(crate) fn network(node: &mut Node, suffix: &str, subnet: &str, dp: &str, extra: &[&str]) -> String {
    let name = node.ep(suffix);
    let mut args = vec!["network", "create", &name, "--subnet", subnet, "--datapath", dp];
    args.extend_from_slice(extra);
    node.ok(&args);
    name
}

/// `ps -o json` by name.
#[track_caller]
pub(crate) fn ps(node: &mut Node) -> BTreeMap<String, Value> {
    let v = node.json(&["ps", "-o", "json"]);
    let Some(a) = v.as_array() else {
        node.fail(format!("`ps -o json` is not an array: {v}"));
    };
    a.iter().map(|c| (c["name"].as_str().unwrap_or("?").to_string(), c.clone())).collect()
}

/// Polls `ps` until `pred` holds for the record `name` (None: no record).
#[track_caller]
pub(crate) fn wait_ps(
    node: &mut Node,
    name: &str,
    timeout: Duration,
    pred: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = ps(node);
        let rec = all.get(name);
        if pred(rec) {
            return rec.cloned();
        }
        if Instant::now() >= deadline {
            node.fail(format!("ps record {name:?} did not reach the expected state in {timeout:?}: {rec:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Entries of this agent's eBPF map `map` (bpftool). The maps are not
/// pinned: they are found through the agent's fds (/proc/PID/fdinfo
/// `map_id:`), then by name.
pub(crate) fn map_entries(node: &Node, map: &str) -> usize {
    let pid = node.agent_pid().expect("agent running");
    let mut ids = Vec::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("agent fds");
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
            .unwrap_or_default();
        if let Some(id) =
            info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse::<u64>().ok())
        {
            let m = ip_like_json(Command::new("bpftool").args(["-j", "map", "show", "id", &id.to_string()]));
            if m["name"] == map && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    assert_eq!(ids.len(), 1, "expected exactly one map {map:?} among the fds of agent pid {pid}: {ids:?}");
    let dump = ip_like_json(Command::new("bpftool").args(["-j", "map", "dump", "id", &ids[0].to_string()]));
    dump.as_array().map(|a| a.len()).unwrap_or(0)
}

fn ip_like_json(cmd: &mut Command) -> Value {
    let desc = describe(cmd);
    let out = run(cmd);
    assert!(out.status.success(), "`{desc}`:\n{}", show(&out));
    let s = stdout_str(&out);
    if s.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("`{desc}`: bad JSON ({e}): {s}"))
}

/// What a command started by `run` may leave behind.
#[derive(Debug, PartialEq)]
pub(crate) struct Traces {
    netns: Vec<String>,
    veths: Vec<String>,
    endpoints: Vec<String>,
    ps: Vec<String>,
    map_endpoints: usize,
    map_by_ip: usize,
}

#[track_caller]
pub(crate) fn traces(node: &mut Node) -> Traces {
    let endpoints = node.endpoints().iter().filter_map(|e| e["name"].as_str().map(String::from)).collect();
    Traces {
        netns: node.own_netns(),
        veths: node.node_dp_veths(),
        endpoints,
        ps: ps(node).into_keys().collect(),
        map_endpoints: map_entries(node, "ENDPOINTS"),
        map_by_ip: map_entries(node, "ENDPOINTS_BY_IP"),
    }
}

#[track_caller]
pub(crate) fn assert_no_traces(node: &mut Node, before: &Traces, what: &str) {
    let after = traces(node);
    if &after != before {
        node.fail(format!("{what} left something behind:\n before {before:?}\n after  {after:?}"));
    }
}

/// Runs `cmd` with `input` on stdin; returns its output (killed after
/// `timeout`).
pub(crate) fn run_with_stdin(mut cmd: Command, input: &[u8], timeout: Duration) -> Output {
    let desc = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = w.join();
    Output { status, stdout: ro.join().unwrap_or_default(), stderr: re.join().unwrap_or_default() }
}

/// Interface name -> (mtu, mac, IPv4 `addr/len` list) from `ip -j addr`.
pub(crate) fn parse_ip_addr(json: &str) -> BTreeMap<String, (u64, String, Vec<String>)> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("bad `ip -j addr` JSON ({e}): {json}"));
    v.as_array()
        .unwrap_or_else(|| panic!("`ip -j addr` is not an array: {json}"))
        .iter()
        .map(|l| {
            let v4 = l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
                .collect();
            (
                l["ifname"].as_str().unwrap_or("?").to_string(),
                (l["mtu"].as_u64().unwrap_or(0), l["address"].as_str().unwrap_or("").to_string(), v4),
            )
        })
        .collect()
}

/// Whether a process exists and is not a zombie.
fn pid_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let st = s.rsplit(')').next().unwrap_or("").trim_start();
            !st.starts_with('Z') && !st.starts_with('X')
        }
        Err(_) => false,
    }
}

/// `sh -c SCRIPT <prefix>` as run args (the prefix is `$0`).
fn sh<'a>(node: &'a Node, script: &'a str) -> [&'a str; 4] {
    ["sh", "-c", script, node.prefix.as_str()]
}

/// Serves `node.dir` on port 8000 from a detached `run` named `name` on
/// `network` (no `--bind`); waits until it listens. Returns its ps record.
fn start_web(node: &mut Node, name: &str, network: &str) -> Value {
    let dir = node.dir.to_string_lossy().into_owned();
    let out = run_expect(
        node,
        &["-d", "--name", name, "--network", network, "--", python(), "-m", "http.server", "8000", "--directory", &dir],
        0,
    );
    assert_eq!(out.trim(), name, "`run -d` must print the name");
    if !wait_tcp_listen(name, 8000, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(node.state_dir.join("logs").join(format!("{name}.log"))).unwrap_or_default();
        node.fail(format!("http.server in {name} not listening after 10 s; its log:\n{log}"));
    }
    ps(node).remove(name).expect("web in ps")
}

/// A file with random content in the served dir; returns (name, "len sha").
fn blob(node: &Node) -> (String, String) {
    let data: Vec<u8> = (0..200_000).map(|_| rand::random::<u8>()).collect();
    std::fs::write(node.dir.join("blob.bin"), &data).unwrap();
    let out = run(Command::new("sha256sum").arg(node.dir.join("blob.bin")));
    let sha = stdout_str(&out).split_whitespace().next().unwrap().to_string();
    ("blob.bin".into(), format!("{} {sha}", data.len()))
}

/// Fetches `url` with python through `run ARGS -- python -c HTTP_FETCH`.
fn fetch_via_run(node: &mut Node, run_args: &[&str], url: &str) -> String {
    let mut args = run_args.to_vec();
    let p = node.prefix.clone();
    args.extend_from_slice(&["--", python(), "-c", HTTP_FETCH, &p, url]);
    run_expect(node, &args, 0).trim().to_string()
}

// ----- host ------------------------------------------------------------------

/// `--network host` runs in the node's (agent's) namespace: it sees the same
/// interfaces as the node (the default bridge `datapath0` with 10.10.0.1,
/// the bridge of a DP network), reaches an endpoint by ping and HTTP, makes
/// no endpoint, and `--rm` leaves no record.
fn host_mode_is_the_node_namespace(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let net = network(&mut node, "net", "10.31.0.0/24", dp, &[]);
    let web = node.ep("web");
    let rec = start_web(&mut node, &web, &net);
    let web_ip = rec["ip"].as_str().expect("web has an ip").to_string();
    let (file, want) = blob(&node);
    let before = traces(&mut node);

    let name = node.ep("h");
    let out = run_expect(&mut node, &["--rm", "--network", "host", "--name", &name, "--", "ip", "-j", "addr"], 0);
    let inside = parse_ip_addr(&out);
    let node_view = parse_ip_addr(&stdout_str(&run(Command::new("ip").args(["-n", &node.name, "-j", "addr"]))));
    assert_eq!(
        inside.keys().collect::<Vec<_>>(),
        node_view.keys().collect::<Vec<_>>(),
        "run --network host must see exactly the node's interfaces"
    );
    let br = node.inspect_network(&net)["bridge"].as_str().unwrap().to_string();
    assert!(
        inside.get("datapath0").is_some_and(|i| i.2.contains(&"10.10.0.1/16".to_string())),
        "host mode: no datapath0 with 10.10.0.1/16: {inside:?}"
    );
    assert!(
        inside.get(&br).is_some_and(|i| i.2.contains(&"10.31.0.1/24".to_string())),
        "host mode: no bridge {br} with 10.31.0.1/24: {inside:?}"
    );

    // The node reaches every network: ping and HTTP from host mode.
    let out = run_expect(
        &mut node,
        &["--rm", "--network", "host", "--name", &name, "--", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", &web_ip],
        0,
    );
    assert!(out.contains("2 received"), "host -> {web_ip}: {out}");
    let got = fetch_via_run(
        &mut node,
        &["--rm", "--network", "host", "--name", &name],
        &format!("http://{web_ip}:8000/{file}"),
    );
    assert_eq!(got, want, "HTTP from host mode to {web_ip}");

    // Without --rm the record stays (no endpoint, no ip), until stop.
    run_expect(&mut node, &["--network", "host", "--name", &name, "--", "true"], 0);
    let r = ps(&mut node).remove(&name).unwrap_or_else(|| panic!("{name} not in ps"));
    assert_eq!(r["network"], "host", "{r}");
    assert!(r["endpoint"].is_null() && r["ip"].is_null(), "host mode has no endpoint: {r}");
    assert_eq!(r["status"], "exited (0)", "{r}");
    node.ok(&["stop", &name]);
    assert_no_traces(&mut node, &before, "run --network host");
    node.ok(&["stop", &web]);
}
differential!(host_mode_is_the_node_namespace);

// ----- none ------------------------------------------------------------------

/// `--network none`: a new namespace with only `lo` (up, 127.0.0.1), no
/// route, nothing reachable (ping of an endpoint and of the gateway fail);
/// `--rm` removes the namespace.
fn none_mode_has_only_lo(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let p = node.prefix.clone();
    let net = network(&mut node, "net", "10.32.0.0/24", dp, &[]);
    let a = node.create_endpoint(&node.ep("a"), &["--network", &net]);
    let before = traces(&mut node);
    let name = node.ep("n");

    let out = run_expect(&mut node, &["--rm", "--network", "none", "--name", &name, "--", "ip", "-j", "addr"], 0);
    let ifs = parse_ip_addr(&out);
    assert_eq!(ifs.keys().collect::<Vec<_>>(), vec!["lo"], "none mode must have only lo: {out}");
    assert_eq!(ifs["lo"].2, vec!["127.0.0.1/8".to_string()], "lo address: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v[0]["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")), "lo must be up in none mode: {out}");
    assert_no_traces(&mut node, &before, "run --rm --network none (ip addr)");

    // lo works, nothing else does.
    let out = run_expect(
        &mut node,
        &["--rm", "--network", "none", "--name", &name, "--", "ping", "-n", "-c", "1", "-W", "1", "127.0.0.1"],
        0,
    );
    assert!(out.contains("1 received"), "ping 127.0.0.1 in none mode: {out}");
    let script = format!(
        "ip -j route; for ip in {} {}; do ping -n -c 1 -W 1 $ip >/dev/null 2>&1 && echo REACHED $ip; done; exit 0",
        a.ip, a.gateway
    );
    let out = run_expect(&mut node, &["--rm", "--network", "none", "--name", &name, "--", "sh", "-c", &script, &p], 0);
    assert!(!out.contains("REACHED"), "none mode reached something: {out}");
    let routes: Value = serde_json::from_str(out.lines().next().unwrap_or("[]")).unwrap_or(Value::Null);
    assert_eq!(routes, Value::Array(vec![]), "none mode must have no route: {out}");

    // While it runs, none mode is a namespace of its own (not the node's).
    let out = run_expect(&mut node, &["-d", "--network", "none", "--name", &name, "--", "sh", "-c", "sleep 30", &p], 0);
    assert_eq!(out.trim(), name);
    assert!(netns_exists(&name), "none mode: no netns {name} while running");
    let r = ps(&mut node).remove(&name).unwrap();
    assert_eq!(r["network"], "none", "{r}");
    assert!(r["ip"].is_null(), "none mode has no address: {r}");
    let links: Vec<String> = datapath_tests::net::link_names(&name);
    assert_eq!(links, vec!["lo".to_string()], "links in none netns");
    node.ok(&["stop", &name]);
    assert_no_traces(&mut node, &before, "run -d --network none + stop");
}
differential!(none_mode_has_only_lo);

// ----- network + container: ---------------------------------------------------

/// `run -d` on a DP network serves HTTP; `container:web` shares its
/// namespace (same eth0 address and MAC, the server on 127.0.0.1); another
/// endpoint of the network and `run --network NET` fetch it through the
/// datapath; removing the sharer keeps web's endpoint; `stop` removes
/// everything.
fn container_mode_shares_the_namespace(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let net = network(&mut node, "net", "10.33.0.0/24", dp, &[]);
    let before = traces(&mut node);
    let s0 = node.stats();
    let web = node.ep("web");
    let rec = start_web(&mut node, &web, &net);
    let (file, want) = blob(&node);
    let ep = node.inspect_endpoint(&web);
    assert_eq!(rec["ip"].as_str(), Some(ep.ip.as_str()), "ps ip vs endpoint inspect: {rec}");
    assert_eq!(rec["network"].as_str(), Some(net.as_str()), "{rec}");
    assert_eq!(rec["endpoint"].as_str(), Some(web.as_str()), "{rec}");
    assert_eq!(rec["status"], "running", "{rec}");
    assert_eq!(rec["detached"], true, "{rec}");
    assert_eq!(rec["rm"], false, "{rec}");
    let log = node.state_dir.join("logs").join(format!("{web}.log"));
    assert_eq!(rec["log"].as_str(), Some(log.to_str().unwrap()), "log path: {rec}");
    let pid = rec["pid"].as_u64().expect("pid");
    assert!(pid_alive(pid), "ps pid {pid} is not alive");
    // While it runs, its endpoint is everywhere (so the checks of
    // assert_no_traces below look at the right things).
    let during = traces(&mut node);
    assert!(during.netns.contains(&web) && during.endpoints.contains(&web) && during.ps.contains(&web), "{during:?}");
    assert!(during.veths.contains(&ep.host_ifname), "{during:?}");
    if dp == "ebpf" {
        assert_eq!(
            (during.map_endpoints, during.map_by_ip),
            (before.map_endpoints + 1, before.map_by_ip + 1),
            "an eBPF endpoint must have one entry in ENDPOINTS and ENDPOINTS_BY_IP"
        );
    }

    // Same interfaces, same address.
    let c = node.ep("c");
    let out = run_expect(
        &mut node,
        &["--rm", "--network", &format!("container:{web}"), "--name", &c, "--", "ip", "-j", "addr"],
        0,
    );
    let ifs = parse_ip_addr(&out);
    let eth0 = ifs.get("eth0").unwrap_or_else(|| panic!("container mode: no eth0: {out}"));
    assert_eq!(eth0.2, vec![format!("{}/{}", ep.ip, ep.prefix_len)], "container mode address: {out}");
    assert_eq!(eth0.1, ep.mac, "container mode MAC: {out}");
    assert_eq!(ifs.keys().collect::<Vec<_>>(), vec!["eth0", "lo"], "{out}");

    // web's server on 127.0.0.1 from the shared namespace.
    let got = fetch_via_run(
        &mut node,
        &["--rm", "--network", &format!("container:{web}"), "--name", &c],
        &format!("http://127.0.0.1:8000/{file}"),
    );
    assert_eq!(got, want, "HTTP over 127.0.0.1 from container:{web}");
    // And through the datapath from a new endpoint of the network (by --ip).
    let got = fetch_via_run(
        &mut node,
        &["--rm", "--network", &net, "--ip", "10.33.0.77", "--name", &c],
        &format!("http://{}:8000/{file}", ep.ip),
    );
    assert_eq!(got, want, "HTTP from another endpoint of {net}");
    if dp == "ebpf" {
        let (rp, _) = delta(&s0, &node.stats(), "redirect-peer");
        assert!(rp > 20, "eBPF network: the transfer must be redirected in eBPF, redirect-peer +{rp}");
    }
    // The sharer's --rm did not take web's endpoint with it.
    assert!(
        netns_exists(&web) && node.inspect_endpoint(&web).ip == ep.ip,
        "container:{web} --rm removed web's endpoint"
    );
    assert!(!ps(&mut node).contains_key(&c), "--rm record {c} still in ps");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains(&format!("GET /{file}")), "web's log {} lacks the requests:\n{log_text}", log.display());

    node.ok(&["stop", &web]);
    assert!(!pid_alive(pid), "stop left web's process {pid} running");
    assert_no_traces(&mut node, &before, "run -d web + container: + stop");
}
differential!(container_mode_shares_the_namespace);

// ----- exit codes, stdio -----------------------------------------------------

/// The exit code comes back (3, 0, 128+SIGTERM); stdout/stderr/stdin are
/// the command's; without `--rm` the record ("exited (N)") and endpoint stay
/// until `stop`; a command that cannot start is an error and, with `--rm`,
/// leaves nothing.
fn exit_codes_and_stdio_propagate(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let net = network(&mut node, "net", "10.34.0.0/24", dp, &[]);
    let before = traces(&mut node);
    let n = node.ep("x");
    let netarg = ["--network", net.as_str(), "--name", n.as_str()];
    let with = |extra: &[&'static str], cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(netarg.iter().map(|s| s.to_string()));
        v.push("--".into());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    };
    for (script, code) in [("exit 3", 3), ("exit 0", 0), ("kill -TERM $$", 143), ("exit 255", 255)] {
        let args = with(&["--rm"], &sh(&node, script));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_expect(&mut node, &a, code);
    }
    // stdout and stderr are the command's, untouched.
    let args = with(&["--rm"], &sh(&node, "echo out-$0; echo err-$0 >&2; exit 7"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_cmd(&node, &a);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(stdout_str(&out), format!("out-{}\n", node.prefix), "{}", show(&out));
    assert_eq!(stderr_str(&out), format!("err-{}\n", node.prefix), "{}", show(&out));
    // stdin is attached.
    let args = with(&["--rm"], &sh(&node, "tr a-z A-Z; exit 4"));
    let mut cmd = node.cli_cmd(&["run"]);
    cmd.args(&args);
    let out = run_with_stdin(cmd, b"hello from stdin\n", Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(stdout_str(&out), "HELLO FROM STDIN\n", "stdin not attached: {}", show(&out));
    assert_no_traces(&mut node, &before, "run --rm (exit codes)");

    // Without --rm: "exited (N)" and the endpoint stay, until stop.
    let args = with(&[], &sh(&node, "exit 6"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_expect(&mut node, &a, 6);
    let r = ps(&mut node).remove(&n).unwrap_or_else(|| panic!("{n} not in ps after run without --rm"));
    assert_eq!(r["status"], "exited (6)", "{r}");
    assert_eq!(r["rm"], false, "{r}");
    assert_eq!(r["detached"], false, "{r}");
    assert_eq!(r["argv"], serde_json::json!(["sh", "-c", "exit 6", node.prefix]), "{r}");
    assert!(netns_exists(&n), "endpoint netns of an exited command (no --rm) is gone early");
    node.ok(&["stop", &n]);
    assert_no_traces(&mut node, &before, "run (no --rm) + stop");

    // A command that cannot start.
    let args = with(&["--rm"], &["/nonexistent/dpt-no-such-command"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_cmd(&node, &a);
    assert!(!out.status.success(), "running a missing command succeeded: {}", show(&out));
    if let Err(m) = check_error_text(&stderr_str(&out)) {
        node.fail(format!("missing command: {m}: {}", show(&out)));
    }
    assert_no_traces(&mut node, &before, "run --rm of a missing command");
}
differential!(exit_codes_and_stdio_propagate);

// ----- detached: -d, --rm, ps, stop ------------------------------------------

/// `-d` prints the name, output goes to STATE_DIR/logs/NAME.log, `ps`
/// reports "exited (N)"; `-d --rm` removes itself when done; `stop` ends a
/// command (SIGTERM; SIGKILL after 10 s for one that ignores it) and leaves
/// nothing behind.
fn detached_ps_and_stop(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let p = node.prefix.clone();
    let net = network(&mut node, "net", "10.35.0.0/24", dp, &[]);
    let before = traces(&mut node);

    // Exits by itself: status, log.
    let d1 = node.ep("d1");
    let out = run_expect(
        &mut node,
        &[
            "-d",
            "--network",
            &net,
            "--name",
            &d1,
            "--",
            "sh",
            "-c",
            "echo hello-$0; ip -4 -o addr show eth0; echo oops >&2; exit 5",
            &p,
        ],
        0,
    );
    assert_eq!(out, format!("{d1}\n"), "`run -d` prints the name");
    let r =
        wait_ps(&mut node, &d1, Duration::from_secs(10), |r| r.is_some_and(|r| r["status"] == "exited (5)")).unwrap();
    let ip = r["ip"].as_str().unwrap_or_else(|| panic!("no ip: {r}")).to_string();
    assert!(ip.starts_with("10.35.0."), "{r}");
    assert_eq!(r["network"].as_str(), Some(net.as_str()), "{r}");
    assert_eq!(r["detached"], true, "{r}");
    let created = r["created"].as_str().unwrap_or("");
    assert!(created.len() >= 20 && created.as_bytes()[10] == b'T', "created is not RFC 3339: {r}");
    let log = node.state_dir.join("logs").join(format!("{d1}.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    for want in [format!("hello-{}", node.prefix), format!("inet {ip}/24"), "oops".to_string()] {
        assert!(text.contains(&want), "log {} lacks {want:?}:\n{text}", log.display());
    }
    node.ok(&["stop", &d1]);
    assert_no_traces(&mut node, &before, "run -d (exited) + stop");

    // -d --rm: gone by itself.
    let d2 = node.ep("d2");
    run_expect(&mut node, &["-d", "--rm", "--network", &net, "--name", &d2, "--", "sh", "-c", "sleep 0.5", &p], 0);
    wait_ps(&mut node, &d2, Duration::from_secs(10), |r| r.is_none());
    assert_no_traces(&mut node, &before, "run -d --rm");

    // stop: SIGTERM ends a well-behaved command at once.
    let d3 = node.ep("d3");
    run_expect(
        &mut node,
        &["-d", "--network", &net, "--name", &d3, "--", "sh", "-c", "while :; do sleep 0.1; done", &p],
        0,
    );
    let r = wait_ps(&mut node, &d3, Duration::from_secs(5), |r| r.is_some_and(|r| r["status"] == "running")).unwrap();
    let pid = r["pid"].as_u64().unwrap();
    let t = Instant::now();
    assert_eq!(node.ok(&["stop", &d3]).trim(), d3);
    assert!(t.elapsed() < Duration::from_secs(5), "stop of a SIGTERM-obeying command took {:?}", t.elapsed());
    assert!(!pid_alive(pid), "stop left {pid} running");
    assert_no_traces(&mut node, &before, "run -d + stop");

    // stop: SIGKILL after 10 s for one that ignores SIGTERM. (The agent's
    // process handling does not depend on the datapath: once, to save 10 s.)
    if dp != "ebpf" {
        node.err(&["stop", &d3]);
        return;
    }
    let d4 = node.ep("d4");
    run_expect(
        &mut node,
        &["-d", "--network", &net, "--name", &d4, "--", "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done", &p],
        0,
    );
    let r = wait_ps(&mut node, &d4, Duration::from_secs(5), |r| r.is_some_and(|r| r["status"] == "running")).unwrap();
    let pid = r["pid"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the trap is set
    let t = Instant::now();
    let out = node.cli_timeout(&["stop", &d4], Duration::from_secs(25));
    let took = t.elapsed();
    assert!(out.status.success(), "stop {d4}: {}", show(&out));
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "stop of a command ignoring SIGTERM took {took:?} (expected SIGKILL after ~10 s)"
    );
    assert!(!pid_alive(pid), "stop left {pid} (ignoring SIGTERM) running");
    assert_no_traces(&mut node, &before, "run -d (ignores SIGTERM) + stop");
    node.err(&["stop", &d4]);
}
differential!(detached_ps_and_stop);

// ----- bad input -------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Snapshot {
    networks: Vec<Value>,
    endpoints: Vec<Value>,
    ps: BTreeMap<String, Value>,
    netns: Vec<String>,
    links: Vec<String>,
}

fn snapshot(node: &mut Node) -> Snapshot {
    Snapshot {
        networks: node.networks(),
        endpoints: node.endpoints(),
        ps: ps(node),
        netns: node.own_netns(),
        links: node.node_links(),
    }
}

/// Bad `run` input gets one `error: ...` line, runs nothing (a marker file
/// is never created) and changes nothing: unknown network, `container:` of
/// a missing endpoint or an empty name, a taken name (endpoint or command),
/// a taken address (endpoint, gateway), an address outside the subnet,
/// `--ip` with host, none or container:, an invalid name.
#[test]
fn run_bad_input_is_rejected_and_changes_nothing() {
    kernel_test!();
    let mut node = Node::new();
    let net = network(&mut node, "net", "10.36.0.0/24", "ebpf", &[]);
    let a = node.create_endpoint(&node.ep("a"), &["--network", &net]);
    let done = node.ep("done");
    run_expect(&mut node, &["--network", &net, "--name", &done, "--", "true"], 0);
    let marker = node.dir.join("marker");
    let m = marker.to_string_lossy().into_owned();
    let x = node.ep("x");
    let missing = format!("container:{}", node.ep("missing"));
    let shared = format!("container:{}", a.name);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("unknown network", vec!["--network", "dpt-no-such-net", "--name", &x]),
        ("container: of a missing endpoint", vec!["--network", &missing, "--name", &x]),
        ("container: without a name", vec!["--network", "container:", "--name", &x]),
        ("name of an endpoint", vec!["--network", &net, "--name", &a.name]),
        ("name of a command", vec!["--network", &net, "--name", &done]),
        ("taken address", vec!["--network", &net, "--ip", &a.ip, "--name", &x]),
        ("gateway address", vec!["--network", &net, "--ip", "10.36.0.1", "--name", &x]),
        ("address outside the subnet", vec!["--network", &net, "--ip", "10.37.0.5", "--name", &x]),
        ("invalid address", vec!["--network", &net, "--ip", "10.36.0.300", "--name", &x]),
        ("--ip with host", vec!["--network", "host", "--ip", "10.36.0.9", "--name", &x]),
        ("--ip with none", vec!["--network", "none", "--ip", "10.36.0.9", "--name", &x]),
        ("--ip with container:", vec!["--network", &shared, "--ip", "10.36.0.9", "--name", &x]),
        ("invalid name", vec!["--network", &net, "--name", "dpt/bad name"]),
    ];
    let mut problems = Vec::new();
    for (what, mut args) in cases {
        args.extend_from_slice(&["--", "touch", &m]);
        let before = snapshot(&mut node);
        let out = run_cmd(&node, &args);
        let cmd = format!("datapath run {}", args.join(" "));
        if out.status.success() {
            problems.push(format!("[{what}] `{cmd}` succeeded:\n{}", show(&out)));
        } else if let Err(e) = check_error_text(&stderr_str(&out)) {
            problems.push(format!("[{what}] `{cmd}`: {e}:\n{}", show(&out)));
        }
        if marker.exists() {
            problems.push(format!("[{what}] `{cmd}` ran the command"));
            let _ = std::fs::remove_file(&marker);
        }
        let after = snapshot(&mut node);
        if after != before {
            problems.push(format!("[{what}] `{cmd}` changed state:\n before {before:?}\n after  {after:?}"));
        }
        if !node.agent_alive() {
            problems.push(format!("[{what}] agent died after `{cmd}`"));
            break;
        }
    }
    // The endpoint used by name is untouched and still works.
    assert!(link(&node.name, &a.host_ifname).is_some(), "veth of {} gone", a.name);
    if !problems.is_empty() {
        node.fail(format!("{} bad `run` inputs misbehaved:\n\n{}", problems.len(), problems.join("\n\n")));
    }
}

/// `stop web` while `container:web` (another running command) shares web's
/// namespace is all or nothing: either it is refused (web keeps running,
/// keeps its record and endpoint) or web goes completely; in both cases
/// stopping both leaves nothing behind.
#[test]
fn stop_of_a_shared_namespace_is_all_or_nothing() {
    kernel_test!();
    let mut node = Node::new();
    let p = node.prefix.clone();
    let net = network(&mut node, "net", "10.37.0.0/24", "ebpf", &[]);
    let before = traces(&mut node);
    let web = node.ep("web");
    let side = node.ep("side");
    run_expect(
        &mut node,
        &["-d", "--network", &net, "--name", &web, "--", "sh", "-c", "while :; do sleep 0.1; done", &p],
        0,
    );
    let shared = format!("container:{web}");
    run_expect(
        &mut node,
        &["-d", "--network", &shared, "--name", &side, "--", "sh", "-c", "while :; do sleep 0.1; done", &p],
        0,
    );
    let r = wait_ps(&mut node, &web, Duration::from_secs(5), |r| r.is_some_and(|r| r["status"] == "running")).unwrap();
    let pid = r["pid"].as_u64().unwrap();
    wait_ps(&mut node, &side, Duration::from_secs(5), |r| r.is_some_and(|r| r["status"] == "running"));

    let out = node.cli(&["stop", &web]);
    let all = ps(&mut node);
    let eps: Vec<String> = node.endpoints().iter().filter_map(|e| e["name"].as_str().map(String::from)).collect();
    if out.status.success() {
        if all.contains_key(&web) {
            node.fail(format!("`stop {web}` succeeded but {web} is still in ps: {:?}", all.get(&web)));
        }
    } else {
        let problems: Vec<String> = [
            (!pid_alive(pid)).then(|| format!("its process {pid} was killed")),
            (!all.contains_key(&web)).then(|| "its ps record was removed".to_string()),
            (!eps.contains(&web)).then(|| "its endpoint was removed".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            node.fail(format!(
                "`stop {web}` (namespace shared by running {side}) failed half-way: {}; ps {:?}; endpoints {eps:?}\n{}",
                problems.join(", "),
                all.keys().collect::<Vec<_>>(),
                show(&out)
            ));
        }
    }
    node.ok(&["stop", &side]);
    if ps(&mut node).contains_key(&web) {
        node.ok(&["stop", &web]);
    }
    assert_no_traces(&mut node, &before, "stop of web and its container: sharer");
}
