//! CLI contract: bad input (test 10), "no agent running", stats shape,
//! DATAPATH_SOCKET.

use std::process::Command;

use datapath_common::reason;
use datapath_tests::env::{bin, python};
use datapath_tests::node::{check_error_text, Node};
use datapath_tests::proc::{run, show, stderr_str};
use datapath_tests::{exec_in, kernel_test, netns_exists};
use serde_json::Value;

/// Everything a rejected command must leave untouched.
#[derive(Debug, PartialEq)]
struct Snapshot {
    networks: Vec<Value>,
    endpoints: Vec<Value>,
    netns: Vec<String>,
    links: Vec<String>,
}

fn snapshot(node: &mut Node) -> Snapshot {
    Snapshot {
        networks: node.networks(),
        endpoints: node.endpoints(),
        netns: node.own_netns(),
        links: node.node_links(),
    }
}

/// Runs each rejected command; collects every violation, then fails once
/// with all of them.
fn expect_rejections(node: &mut Node, cases: &[(&str, Vec<String>)]) {
    let mut problems = Vec::new();
    for (what, args) in cases {
        let before = snapshot(node);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.cli(&args);
        let cmd = format!("datapath {}", args.join(" "));
        if out.status.success() {
            problems.push(format!("[{what}] `{cmd}` succeeded:\n{}", show(&out)));
        } else if let Err(m) = check_error_text(&stderr_str(&out)) {
            problems.push(format!("[{what}] `{cmd}`: {m}:\n{}", show(&out)));
        }
        let after = snapshot(node);
        if after != before {
            problems.push(format!("[{what}] `{cmd}` changed state:\n before {before:?}\n after  {after:?}"));
        }
        if !node.agent_alive() {
            problems.push(format!("[{what}] agent died after `{cmd}`"));
            break;
        }
    }
    if !problems.is_empty() {
        node.fail(format!(
            "{} of {} bad-input cases misbehaved:\n\n{}",
            problems.len(),
            cases.len(),
            problems.join("\n\n")
        ));
    }
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Test 10 (networks): invalid CIDR, gateway outside, overlaps (with a
/// network and with a route in the node netns), duplicate name, rm unknown.
#[test]
fn network_bad_input_is_rejected_and_changes_nothing() {
    kernel_test!();
    let mut node = Node::new();
    let n1 = node.ep("n1");
    let x = node.ep("x");
    node.ok(&["network", "create", &n1, "--subnet", "10.20.0.0/24"]);
    // A connected route (10.99.0.0/24) and a static one (10.98.0.0/16) in NODE.
    // (A veth pair: the dummy module may be missing.)
    let dummy = format!("{}d0", node.prefix);
    let peer = format!("{}d1", node.prefix);
    for cmd in [
        vec!["link", "add", dummy.as_str(), "type", "veth", "peer", "name", peer.as_str()],
        vec!["link", "set", dummy.as_str(), "up"],
        vec!["link", "set", peer.as_str(), "up"],
        vec!["addr", "add", "10.99.0.1/24", "dev", dummy.as_str()],
        vec!["route", "add", "10.98.0.0/16", "dev", dummy.as_str()],
    ] {
        let out = run(Command::new("ip").args(["-n", &node.name]).args(&cmd));
        assert!(out.status.success(), "ip {cmd:?}: {}", show(&out));
    }
    let cases = vec![
        ("invalid CIDR: text", v(&["network", "create", &x, "--subnet", "notacidr"])),
        ("invalid CIDR: /33", v(&["network", "create", &x, "--subnet", "10.21.0.0/33"])),
        ("invalid CIDR: octet 300", v(&["network", "create", &x, "--subnet", "300.1.0.0/16"])),
        ("invalid gateway", v(&["network", "create", &x, "--subnet", "10.21.0.0/24", "--gateway", "10.21.0.999"])),
        ("gateway outside subnet", v(&["network", "create", &x, "--subnet", "10.21.0.0/24", "--gateway", "10.22.0.1"])),
        ("overlap: supernet of a network", v(&["network", "create", &x, "--subnet", "10.20.0.0/16"])),
        ("overlap: subnet of a network", v(&["network", "create", &x, "--subnet", "10.20.0.128/25"])),
        ("overlap: inside default bridge", v(&["network", "create", &x, "--subnet", "10.10.5.0/24"])),
        ("overlap: contains default bridge", v(&["network", "create", &x, "--subnet", "10.0.0.0/8"])),
        ("overlap: connected route in NODE", v(&["network", "create", &x, "--subnet", "10.99.0.0/16"])),
        ("overlap: static route in NODE", v(&["network", "create", &x, "--subnet", "10.98.1.0/24"])),
        ("duplicate name", v(&["network", "create", &n1, "--subnet", "10.23.0.0/24"])),
        ("duplicate name: default", v(&["network", "create", "bridge", "--subnet", "10.24.0.0/24"])),
        ("rm unknown network", v(&["network", "rm", &x])),
        ("inspect unknown network", v(&["network", "inspect", &x])),
    ];
    expect_rejections(&mut node, &cases);
    // And a valid one still works afterwards (the rejections left no junk).
    node.ok(&["network", "create", &x, "--subnet", "10.21.0.0/24", "--gateway", "10.21.0.1"]);
}

/// Hardening: networks on reserved ranges (loopback, multicast, class E,
/// link-local, 0/8) and uplinks that are not uplinks (loopback, the
/// datapath's own bridge or veth) are refused with a clear error and change
/// nothing (224.0.0.0/16 used to fail with an internal error, the others
/// were accepted).
#[test]
fn reserved_ranges_and_fake_uplinks_are_refused() {
    kernel_test!();
    let mut node = Node::new();
    let x = node.ep("x");
    let ep = node.create_endpoint(&node.ep("a"), &[]);
    let cases = vec![
        ("loopback range", v(&["network", "create", &x, "--subnet", "127.0.0.0/8"])),
        ("multicast range", v(&["network", "create", &x, "--subnet", "224.0.0.0/16"])),
        ("class E", v(&["network", "create", &x, "--subnet", "240.0.0.0/8"])),
        ("link-local", v(&["network", "create", &x, "--subnet", "169.254.0.0/16"])),
        ("this network", v(&["network", "create", &x, "--subnet", "0.0.0.0/8"])),
        ("uplink: loopback", v(&["network", "create", &x, "--subnet", "10.31.0.0/24", "--uplink", "lo"])),
        ("uplink: a bridge", v(&["network", "create", &x, "--subnet", "10.31.0.0/24", "--uplink", "datapath0"])),
        ("uplink: a veth", v(&["network", "create", &x, "--subnet", "10.31.0.0/24", "--uplink", &ep.host_ifname])),
    ];
    expect_rejections(&mut node, &cases);
    let err = stderr_str(&node.cli(&["network", "create", &x, "--subnet", "224.0.0.0/16"]));
    assert!(err.contains("reserved") && !err.contains("internal"), "{err}");
}

/// Hardening: a client whose output pipe is closed ends quietly (SIGPIPE,
/// as Unix tools do) instead of panicking ("failed printing to stdout").
#[test]
fn cli_exits_quietly_on_a_closed_pipe() {
    kernel_test!();
    let mut node = Node::new();
    node.create_endpoint(&node.ep("a"), &[]);
    let cmd = format!(
        "{} --socket {} endpoint ls -o json | true; echo \"status=${{PIPESTATUS[0]}}\"",
        bin().display(),
        node.socket.display()
    );
    for _ in 0..3 {
        let out = run(Command::new("bash").args(["-c", &cmd]));
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), stderr_str(&out));
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
        assert!(stdout.contains("status=141") || stdout.contains("status=0"), "{stdout} {stderr}");
    }
}

/// Test 10 (endpoints): IP outside subnet, taken IP (also the gateway's),
/// taken name, unknown network, rm of a network with endpoints.
#[test]
fn endpoint_bad_input_is_rejected_and_changes_nothing() {
    kernel_test!();
    let mut node = Node::new();
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let x = node.ep("x");
    let nodens = node.name.clone();
    let cases = vec![
        ("IP outside subnet", v(&["endpoint", "create", &x, "--ip", "10.11.0.5"])),
        ("invalid IP", v(&["endpoint", "create", &x, "--ip", "10.10.0.300"])),
        ("taken IP", v(&["endpoint", "create", &x, "--ip", &a.ip])),
        ("gateway IP", v(&["endpoint", "create", &x, "--ip", "10.10.0.1"])),
        ("network address", v(&["endpoint", "create", &x, "--ip", "10.10.0.0"])),
        ("broadcast address", v(&["endpoint", "create", &x, "--ip", "10.10.255.255"])),
        ("taken name", v(&["endpoint", "create", &a.name])),
        ("name of an existing foreign netns (the node's)", v(&["endpoint", "create", &nodens])),
        ("unknown network", v(&["endpoint", "create", &x, "--network", "nosuchnet"])),
        ("rm network with endpoints", v(&["network", "rm", "bridge"])),
        ("rm unknown endpoint", v(&["endpoint", "rm", &x])),
        ("inspect unknown endpoint", v(&["endpoint", "inspect", &x])),
    ];
    expect_rejections(&mut node, &cases);
    assert!(netns_exists(&nodens), "node netns deleted");
    assert!(!netns_exists(&x));
    // A's netns and plumbing survived every attempt.
    let out = exec_in(&a.name, &["true"]);
    assert!(out.status.success());
    let again = node.inspect_endpoint(&a.name);
    assert_eq!(again.json, a.json, "endpoint A changed");
    node.create_endpoint(&x, &[]);
}

/// No agent: absent socket, and a stale socket that refuses. Needs only the
/// binary, not root.
#[test]
fn cli_without_agent_says_no_agent_running() {
    let bin = match datapath_tests::env::datapath_bin() {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let dir = std::env::temp_dir().join(format!("dpt-cli-{}-{:x}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let absent = dir.join("absent.sock");
    let stale = dir.join("stale.sock");
    // A unix socket inode with no listener: connect() is refused.
    let out = run(Command::new(python()).args([
        "-c",
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])",
        stale.to_str().unwrap(),
    ]));
    assert!(out.status.success() && stale.exists(), "cannot make a stale socket: {}", show(&out));

    let mut cases: Vec<(String, Command)> = Vec::new();
    for (what, sock) in [("absent socket", &absent), ("refusing socket", &stale)] {
        let mut c = Command::new(&bin);
        c.arg("--socket").arg(sock).args(["network", "ls"]).env_remove("DATAPATH_SOCKET");
        cases.push((format!("{what} via --socket"), c));
        let mut c = Command::new(&bin);
        c.args(["endpoint", "ls"]).env("DATAPATH_SOCKET", sock);
        cases.push((format!("{what} via DATAPATH_SOCKET"), c));
    }
    for (what, mut c) in cases {
        let out = run(c.env_remove("RUST_LOG"));
        let e = stderr_str(&out);
        assert!(!out.status.success(), "{what}: succeeded without an agent:\n{}", show(&out));
        // Contract: "no agent running" (the agent says "no agent is running").
        assert!(
            e.contains("no agent running") || e.contains("no agent is running"),
            "{what}: stderr lacks \"no agent running\":\n{}",
            show(&out)
        );
        check_error_text(&e).unwrap_or_else(|m| panic!("{what}: {m}:\n{}", show(&out)));
    }
}

/// `stats -o json` has exactly one counter per reason code, with the shared
/// names, codes and drop flags; DATAPATH_SOCKET selects the agent.
#[test]
fn stats_lists_every_reason_code() {
    kernel_test!();
    let mut node = Node::new();
    let v = node.json(&["stats", "-o", "json"]);
    let arr = v["counters"].as_array().unwrap_or_else(|| panic!("no counters array: {v}"));
    let got: Vec<(String, u64, bool)> = arr
        .iter()
        .map(|c| {
            assert!(c["packets"].is_u64() && c["bytes"].is_u64(), "counter lacks packets/bytes: {c}");
            (
                c["reason"].as_str().unwrap_or_else(|| panic!("no reason: {c}")).to_string(),
                c["code"].as_u64().unwrap_or_else(|| panic!("no code: {c}")),
                c["drop"].as_bool().unwrap_or_else(|| panic!("no drop flag: {c}")),
            )
        })
        .collect();
    let want: Vec<(String, u64, bool)> =
        reason::ALL.iter().map(|&c| (reason::name(c).to_string(), u64::from(c), reason::is_drop(c))).collect();
    assert_eq!(got, want, "stats counters vs datapath-common::reason::ALL");
    let text = node.ok(&["stats"]);
    for &c in reason::ALL.iter() {
        assert!(text.contains(reason::name(c)), "plain `stats` lacks {}:\n{text}", reason::name(c));
    }

    // DATAPATH_SOCKET instead of --socket.
    let out = run(Command::new(bin())
        .args(["network", "ls", "-o", "json"])
        .env("DATAPATH_SOCKET", &node.socket)
        .env_remove("RUST_LOG"));
    assert!(out.status.success(), "DATAPATH_SOCKET not honoured:\n{}", show(&out));
    let nets: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(nets[0]["name"], "bridge", "{nets}");
}
