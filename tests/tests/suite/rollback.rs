//! Test 8: rollback after an injected failure at each step of endpoint
//! create (`DATAPATH_FAILPOINT=endpoint:<step>`).

use datapath_tests::node::{AgentOpts, Datapath, Node};
use datapath_tests::{assert_ping, both_datapaths, netns_exists};
use serde_json::Value;

/// The kernel datapath has no attach/maps work, but the agent fires those
/// failpoints on it too (so its rollback is exercised at the same points).
fn rollback(step: &str, dp: Datapath) {
    let mut node = Node::with(AgentOpts { failpoint: Some(format!("endpoint:{step}")), ..AgentOpts::on(dp) });
    let links0 = node.node_links();
    let netns0 = node.own_netns();
    let veths0 = node.node_dp_veths();
    let name = node.ep("a");

    let check_clean = |node: &mut Node, attempt: &str| {
        let ctx = format!("failpoint endpoint:{step}, {attempt}");
        if netns_exists(&name) {
            node.fail(format!("{ctx}: netns {name} left behind"));
        }
        let veths = node.node_dp_veths();
        if veths != veths0 {
            node.fail(format!("{ctx}: dp* veths in node netns {veths0:?} -> {veths:?}"));
        }
        let links = node.node_links();
        if links != links0 {
            node.fail(format!("{ctx}: links in node netns {links0:?} -> {links:?}"));
        }
        let ns = node.own_netns();
        if ns != netns0 {
            node.fail(format!("{ctx}: netns {netns0:?} -> {ns:?}"));
        }
        let eps = node.endpoints();
        if !eps.is_empty() {
            node.fail(format!("{ctx}: endpoint ls not empty: {eps:?}"));
        }
        let net = node.inspect_network("bridge");
        if net["endpoints"] != Value::Array(vec![]) {
            node.fail(format!("{ctx}: network inspect lists endpoints: {net}"));
        }
    };

    let e1 = node.err(&["endpoint", "create", &name, "--ip", "10.10.0.5"]);
    check_clean(&mut node, "first create");
    // Same name and IP again: fails the same way, not with "name/IP taken"
    // (both were released).
    let e2 = node.err(&["endpoint", "create", &name, "--ip", "10.10.0.5"]);
    check_clean(&mut node, "second create");
    if e1 != e2 {
        node.fail(format!(
            "failpoint endpoint:{step}: the second identical create failed differently, so the first \
             one left state behind (name or IP not released):\n first: {}\nsecond: {}",
            e1.trim(),
            e2.trim()
        ));
    }
    if !node.agent_alive() {
        node.fail(format!("failpoint endpoint:{step}: agent died"));
    }

    // Without the failpoint (same state dir) the same name and IP work.
    node.restart_agent_with(AgentOpts::on(dp));
    assert!(node.endpoints().is_empty(), "failed endpoint resurrected from state after restart");
    let a = node.create_endpoint(&name, &["--ip", "10.10.0.5"]);
    assert_eq!(a.ip, "10.10.0.5");
    let b = node.create_endpoint(&node.ep("b"), &[]);
    assert_eq!(b.ip, "10.10.0.2", "lowest free address");
    assert_ping(&b.name, &a.ip, 2);
}

both_datapaths! {
fn rollback_after_failure_at_netns(dp) {
    rollback("netns", dp);
}
}

both_datapaths! {
fn rollback_after_failure_at_veth(dp) {
    rollback("veth", dp);
}
}

both_datapaths! {
fn rollback_after_failure_at_addr(dp) {
    rollback("addr", dp);
}
}

both_datapaths! {
fn rollback_after_failure_at_attach(dp) {
    rollback("attach", dp);
}
}

both_datapaths! {
fn rollback_after_failure_at_maps(dp) {
    rollback("maps", dp);
}
}
