//! Test 4: `datapath reset` on a node with networks of both datapaths and a
//! killed agent removes everything the datapath made: afterwards only lo
//! and the uplink are left in the node, no namespace of the test's prefix
//! but the node and the outside, no pin, no nftables table, no program on
//! the uplink, and net.ipv4.ip_forward is back to its value before the
//! agent first started (0). The same with the state file replaced by
//! garbage (reset then goes by names and the journal). Reset refuses while
//! an agent answers, and changes nothing then.

use std::collections::BTreeSet;

use datapath::state::STATE_FILE;
use datapath_tests::net::exec_in;
use datapath_tests::node::{AgentOpts, Datapath, Endpoint, Node, OUTSIDE_IP, UPLINK_DEV};
use datapath_tests::proc::{show, stdout_str};
use datapath_tests::{assert_ping, stderr_str};

use super::pins_under;

fn ip_forward(node: &Node) -> String {
    let out = exec_in(&node.name, &["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert!(out.status.success(), "sysctl in {}:\n{}", node.name, show(&out));
    stdout_str(&out).trim().to_string()
}

/// The nftables tables in the node (`nft list tables`, one per line).
fn nft_tables(node: &Node) -> Vec<String> {
    let out = exec_in(&node.name, &["nft", "list", "tables"]);
    assert!(out.status.success(), "nft list tables in {}:\n{}", node.name, show(&out));
    stdout_str(&out).lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()
}

/// Networks of both datapaths with an endpoint each that reaches the
/// outside (eBPF conntrack entries, nftables masquerade, forwarding on).
fn populate(node: &mut Node, round: u32) -> (Endpoint, Endpoint) {
    let knet = node.ep(&format!("k{round}"));
    let enet = node.ep(&format!("e{round}"));
    node.ok(&["network", "create", &knet, "--subnet", "10.77.0.0/24", "--datapath", "kernel"]);
    node.ok(&["network", "create", &enet, "--subnet", "10.78.0.0/24", "--datapath", "ebpf"]);
    let a = node.create_endpoint(&node.ep(&format!("a{round}")), &[]);
    let e = node.create_endpoint(&node.ep(&format!("b{round}")), &["--network", &enet]);
    let k = node.create_endpoint(&node.ep(&format!("k{round}ep")), &["--network", &knet]);
    for ep in [&a, &e, &k] {
        assert_ping(&ep.name, OUTSIDE_IP, 1);
    }
    assert!(!nft_tables(node).is_empty(), "the kernel network made no nftables table");
    assert_eq!(ip_forward(node), "1", "the agent did not turn forwarding on");
    (a, k)
}

fn reset_args(node: &Node) -> Vec<String> {
    let mut a = vec!["reset".to_string(), "--netns".into(), node.name.clone()];
    for (flag, p) in [("--state-dir", &node.state_dir), ("--bpffs", &node.bpffs)] {
        a.push(flag.into());
        a.push(p.display().to_string());
    }
    a
}

/// Runs `datapath reset` (the agent is dead) and asserts that the node is
/// back to what the test bed made.
fn reset_and_check(node: &mut Node, what: &str) {
    let args = reset_args(node);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = node.cli(&args);
    println!("reset ({what}):\n{}{}", stdout_str(&out), stderr_str(&out));
    if !out.status.success() {
        node.fail(format!("datapath reset ({what}) failed:\n{}", show(&out)));
    }
    let links = node.node_links();
    let netns: BTreeSet<String> = node.own_netns().into_iter().collect();
    let want_netns: BTreeSet<String> = [node.name.clone(), node.outside().to_string()].into();
    let pins = pins_under(&node.bpffs);
    let tables = nft_tables(node);
    let fwd = ip_forward(node);
    let uplink = stdout_str(&exec_in(&node.name, &["bpftool", "-j", "net", "show", "dev", UPLINK_DEV]));
    let mut problems = Vec::new();
    if links != ["lo", UPLINK_DEV] {
        problems.push(format!("links left in the node: {links:?}"));
    }
    if netns != want_netns {
        problems.push(format!("namespaces of the prefix: {netns:?}"));
    }
    if !pins.is_empty() {
        problems.push(format!("pins left under {}: {pins:?}", node.bpffs.display()));
    }
    if !tables.is_empty() {
        problems.push(format!("nftables tables left: {tables:?}"));
    }
    if fwd != "0" {
        problems.push(format!("net.ipv4.ip_forward is {fwd}, was 0 before the agent"));
    }
    if uplink.contains("dp_") {
        problems.push(format!("a program is still on {UPLINK_DEV}: {uplink}"));
    }
    if !problems.is_empty() {
        node.fail(format!("after datapath reset ({what}):\n{}", problems.join("\n")));
    }
}

#[test]
fn reset_removes_everything_after_a_crash_also_without_state() {
    datapath_tests::kernel_test!();
    let mut node = Node::build(AgentOpts::with_uplink(Datapath::Ebpf));
    let out = exec_in(&node.name, &["sysctl", "-w", "net.ipv4.ip_forward=0"]);
    assert!(out.status.success(), "sysctl -w:\n{}", show(&out));
    node.start_agent();
    let (a, k) = populate(&mut node, 1);

    // Refused while the agent answers, and nothing changes.
    let (pins, links) = (pins_under(&node.bpffs), node.node_links());
    let args = reset_args(&node);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = node.err(&args);
    println!("reset with the agent running: {}", err.trim());
    if pins_under(&node.bpffs) != pins || node.node_links() != links || node.endpoints().len() != 3 {
        node.fail("a refused reset changed the node");
    }
    assert_ping(&a.name, OUTSIDE_IP, 1);
    assert_ping(&k.name, OUTSIDE_IP, 1);

    node.kill_agent();
    reset_and_check(&mut node, "state file intact");

    // Again, with the state file replaced by garbage.
    node.start_agent();
    populate(&mut node, 2);
    node.kill_agent();
    std::fs::write(node.state_dir.join(STATE_FILE), b"\x00garbage{{").unwrap();
    reset_and_check(&mut node, "state file garbage");
}
