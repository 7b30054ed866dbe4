//! Multi-network endpoints (issue 14): `network connect`/`disconnect`,
//! `--network` given more than once, `--alias`; isolation per network (README
//! "Multi-network endpoints").

use std::time::Duration;

use datapath_tests::net::{exec_in, ip_json, link_names, ping, python_in};
use datapath_tests::node::{delta, AgentOpts, Datapath, Node};
use datapath_tests::proc::{show, stdout_str};
use datapath_tests::traffic::echo_server;
use datapath_tests::{assert_ping, both_datapaths, netns_exists};
use serde_json::Value;

use crate::survival::{pinned_map_len, pinned_u32_keys, MAPS_DIR};

/// argv: IP PORT. One TCP connection: sends 64 KiB of random bytes, reads
/// them back from the echo server and prints "same" when they match.
const TCP_SAME: &str = r#"
import os, socket, sys
data = os.urandom(65536)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
print("same" if got == data else "differ %d of %d" % (len(got), len(data)))
"#;

#[track_caller]
fn assert_tcp_echo(from: &str, ip: &str, port: u16) {
    let out = python_in(from, TCP_SAME, &[ip, &port.to_string()], Duration::from_secs(30));
    assert!(
        out.status.success() && stdout_str(&out).trim() == "same",
        "TCP from {from} to {ip}:{port}: the echo differs:\n{}",
        show(&out)
    );
}

/// The endpoint's attachment on `network` in `endpoint inspect`.
fn attachment(node: &mut Node, endpoint: &str, network: &str) -> Option<Value> {
    let v = node.json(&["endpoint", "inspect", endpoint]);
    v["attachments"].as_array().and_then(|a| a.iter().find(|a| a["network"] == network).cloned())
}

/// The ENDPOINTS keys (host ifindexes) and the ENDPOINTS_BY_IP size.
fn endpoint_maps(node: &Node) -> (std::collections::BTreeSet<u64>, usize) {
    let maps = node.bpffs.join(MAPS_DIR);
    (pinned_u32_keys(&maps.join("ENDPOINTS")), pinned_map_len(&maps.join("ENDPOINTS_BY_IP")))
}

/// `ip -j route` in a namespace: (destination, device, gateway).
fn routes(ns: &str) -> Vec<(String, String, String)> {
    let v = ip_json(&["-n", ns, "-4", "route", "show"]);
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    v.as_array().cloned().unwrap_or_default().iter().map(|r| (s(r, "dst"), s(r, "dev"), s(r, "gateway"))).collect()
}

both_datapaths! {
/// An endpoint on the default network connected to a second one reaches
/// both (ping, TCP with content checked) through eth0 and eth1, with its
/// default route on the first; the two networks stay isolated from each
/// other, also through its addresses: an A-only endpoint cannot reach its B
/// address (eBPF: drop-policy-isolation; kernel: the nftables isolation
/// rules), and it does not forward. Disconnect removes eth1, its map
/// entries, and frees the address.
fn connect_reaches_both_networks_and_keeps_them_isolated(dp) {
    let mut node = Node::on(dp);
    let b_net = node.ep("nb");
    node.ok(&["network", "create", &b_net, "--subnet", "10.61.0.0/24"]);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &["--network", &b_net]);
    let x = node.create_endpoint(&node.ep("x"), &[]);
    let maps0 = dp.is_ebpf().then(|| endpoint_maps(&node));

    let out = node.ok(&["network", "connect", &b_net, &x.name, "--alias", "proxy"]);
    let att = attachment(&mut node, &x.name, &b_net).unwrap_or_else(|| panic!("no attachment on {b_net}"));
    let xb = att["ip"].as_str().unwrap().to_string();
    assert_eq!(out.trim(), format!("{} eth1 {xb}", x.name), "connect output");
    assert_eq!(att["ifname"], "eth1", "{att}");
    assert_eq!(att["aliases"], serde_json::json!(["proxy"]), "{att}");
    assert!(xb.starts_with("10.61.0."), "address on {b_net}: {att}");
    let host_ifindex = att["host_ifindex"].as_u64().unwrap_or(0);
    assert!(host_ifindex > 0, "attachment's host ifindex: {att}");
    let listed = node.inspect_network(&b_net);
    let names: Vec<&str> = listed["endpoints"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.contains(&x.name.as_str()), "network inspect {b_net} lists {names:?}");
    assert!(link_names(&x.name).contains(&"eth1".to_string()), "eth1 in {}", x.name);
    if let Some((keys0, by_ip0)) = &maps0 {
        let (keys, by_ip) = endpoint_maps(&node);
        assert!(keys.contains(&host_ifindex) && !keys0.contains(&host_ifindex), "ENDPOINTS {keys0:?} -> {keys:?}");
        assert_eq!(by_ip, by_ip0 + 1, "ENDPOINTS_BY_IP gained the attachment's address");
    }

    // The default route stays on the first network; eth1 has its subnet only.
    let r = routes(&x.name);
    let defaults: Vec<_> = r.iter().filter(|(d, _, _)| d == "default").collect();
    assert_eq!(defaults.len(), 1, "one default route: {r:?}");
    assert_eq!((defaults[0].1.as_str(), defaults[0].2.as_str()), ("eth0", x.gateway.as_str()), "{r:?}");
    assert!(r.iter().any(|(d, dev, _)| d == "10.61.0.0/24" && dev == "eth1"), "eth1's subnet route: {r:?}");
    assert!(r.iter().all(|(_, dev, gw)| dev != "eth1" || gw.is_empty()), "no gateway route via eth1: {r:?}");
    let fwd = exec_in(&x.name, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(stdout_str(&fwd).trim(), "0", "ip_forward in the multi-homed endpoint's namespace");

    // It reaches both networks, and both reach it.
    assert_ping(&x.name, &a.ip, 2);
    assert_ping(&x.name, &b.ip, 2);
    assert_ping(&b.name, &xb, 2);
    assert_ping(&a.name, &x.ip, 2);
    let _ea = echo_server(&node, &a.name, 7001);
    let _eb = echo_server(&node, &b.name, 7001);
    assert_tcp_echo(&x.name, &a.ip, 7001);
    assert_tcp_echo(&x.name, &b.ip, 7001);

    // The networks stay isolated from each other, through it too.
    let s0 = node.stats();
    let mut crossed = Vec::new();
    for (from, to) in [(&a.name, &b.ip), (&a.name, &xb), (&b.name, &a.ip), (&b.name, &x.ip)] {
        let out = ping(from, to, 2);
        if out.status.success() {
            crossed.push(format!("{from} reached {to}:\n{}", show(&out)));
        }
    }
    let s1 = node.stats();
    assert!(crossed.is_empty(), "{dp}: cross-network pings got through:\n{}", crossed.join("\n"));
    let (iso, _) = delta(&s0, &s1, "drop-policy-isolation");
    match dp {
        Datapath::Ebpf => assert!(iso >= 8, "8 cross-network echo requests, drop-policy-isolation +{iso}"),
        Datapath::Kernel => assert_eq!(iso, 0, "kernel datapath counted eBPF drops"),
    }

    // Traffic sent out eth1 towards the A-only endpoint (a host route
    // forces it there) does not cross into A either.
    let host_route = format!("{}/32", a.ip);
    let add = exec_in(&x.name, &["ip", "route", "add", &host_route, "dev", "eth1"]);
    assert!(add.status.success(), "{}", show(&add));
    let out = ping(&x.name, &a.ip, 2);
    assert!(!out.status.success(), "{dp}: eth1 reached {} on the other network:\n{}", a.ip, show(&out));
    let del = exec_in(&x.name, &["ip", "route", "del", &host_route, "dev", "eth1"]);
    assert!(del.status.success(), "{}", show(&del));
    assert_ping(&x.name, &a.ip, 1);

    // The network cannot go while it has a connected endpoint.
    let e = node.err(&["network", "rm", &b_net]);
    assert!(e.contains(&x.name), "network rm lists the connected endpoint: {e}");

    node.ok(&["network", "disconnect", &b_net, &x.name]);
    assert!(!link_names(&x.name).contains(&"eth1".to_string()), "eth1 left in {}", x.name);
    assert!(attachment(&mut node, &x.name, &b_net).is_none(), "attachment still listed");
    if let Some((keys0, by_ip0)) = &maps0 {
        let (keys, by_ip) = endpoint_maps(&node);
        assert!(!keys.contains(&host_ifindex), "ENDPOINTS still holds ifindex {host_ifindex}: {keys:?}");
        assert_eq!((&keys, by_ip), (keys0, *by_ip0), "the endpoint maps are back to before the connect");
    }
    let out = ping(&x.name, &b.ip, 1);
    assert!(!out.status.success(), "reached {} after the disconnect:\n{}", b.ip, show(&out));
    assert_ping(&x.name, &a.ip, 1);
    // Its address is free again.
    let c = node.create_endpoint(&node.ep("c"), &["--network", &b_net, "--ip", &xb]);
    assert_ping(&b.name, &c.ip, 1);
}
}

both_datapaths! {
/// `run`/`endpoint create` with `--network` twice: eth0 on the first (its
/// default route), eth1 on the second, `--alias` on the first; a second
/// network that cannot be joined fails the whole create, leaving nothing.
fn run_with_two_networks(dp) {
    let mut node = Node::on(dp);
    let b_net = node.ep("nb");
    node.ok(&["network", "create", &b_net, "--subnet", "10.62.0.0/24"]);
    let b = node.create_endpoint(&node.ep("b"), &["--network", &b_net]);
    let name = node.ep("r");
    let out = node.ok(&[
        "run", "--name", &name, "--network", "bridge", "--network", &b_net, "--alias", "web", "--",
        "ip", "-o", "-4", "addr", "show",
    ]);
    let v = node.json(&["endpoint", "inspect", &name]);
    let att = &v["attachments"][0];
    assert_eq!((&v["network"], &att["network"], &att["ifname"]), (&"bridge".into(), &b_net.clone().into(), &"eth1".into()), "{v}");
    assert_eq!(v["aliases"], serde_json::json!(["web"]), "{v}");
    let (ip0, ip1) = (v["ip"].as_str().unwrap(), att["ip"].as_str().unwrap());
    for (dev, ip) in [("eth0", ip0), ("eth1", ip1)] {
        assert!(out.lines().any(|l| l.contains(dev) && l.contains(&format!("{ip}/"))), "{dev} {ip} in:\n{out}");
    }
    let ps = node.json(&["ps", "-o", "json"]);
    let row = ps.as_array().and_then(|a| a.iter().find(|c| c["name"] == name.as_str()).cloned()).expect("ps row");
    assert_eq!((&row["attachments"][0]["network"], &row["attachments"][0]["ip"]), (&b_net.clone().into(), &ip1.into()), "ps: {row}");
    assert_ping(&name, &b.ip, 1);
    assert_ping(&b.name, ip1, 1);
    node.ok(&["endpoint", "rm", &name]);
    let e = node.create_endpoint(&node.ep("e"), &["--network", &b_net, "--ip", ip1]);
    assert_eq!(e.ip, ip1);

    // All or nothing.
    let veths = node.node_dp_veths();
    let bad = node.ep("bad");
    let err = node.err(&["endpoint", "create", &bad, "--network", "bridge", "--network", "nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = node.err(&["endpoint", "create", &bad, "--network", &b_net, "--network", &b_net]);
    assert!(err.contains("already on network"), "{err}");
    let err = node.err(&["run", "--name", &bad, "--network", "bridge", "--network", "none", "--", "true"]);
    assert!(err.contains("none"), "{err}");
    assert_eq!(node.node_dp_veths(), veths, "veths left by the failed creates");
    assert!(!netns_exists(&bad), "netns {bad} left behind");
    assert!(node.endpoints().iter().all(|e| e["name"] != bad.as_str()), "endpoint {bad} listed");
}
}

/// Bad input to connect/disconnect: a clear error each, nothing half-made.
#[test]
fn connect_refuses_bad_input() {
    datapath_tests::kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    let b_net = node.ep("nb");
    node.ok(&["network", "create", &b_net, "--subnet", "10.63.0.0/24"]);
    let x = node.create_endpoint(&node.ep("x"), &[]);
    let y = node.create_endpoint(&node.ep("y"), &["--network", &b_net, "--alias", "db"]);
    let none = node.ep("none");
    node.ok(&["endpoint", "create", &none, "--network", "none"]);
    let veths = node.node_dp_veths();
    for (args, want) in [
        (vec!["network", "connect", "nope", &x.name], "network \"nope\" not found"),
        (vec!["network", "connect", &b_net, "nope"], "endpoint \"nope\" not found"),
        (vec!["network", "connect", "bridge", &x.name], "already on network"),
        (vec!["network", "connect", &b_net, &x.name, "--ip", "10.64.0.5"], "10.64.0.5"),
        (vec!["network", "connect", &b_net, &x.name, "--ip", &y.ip], "in use"),
        (vec!["network", "connect", &b_net, &x.name, "--alias=-bad"], "invalid alias name"),
        (vec!["network", "connect", &b_net, &x.name, "--alias", "db"], "is taken on network"),
        (vec!["network", "connect", &b_net, &x.name, "--alias", &y.name], "is taken on network"),
        (vec!["network", "connect", &b_net, &none], "none network"),
        (vec!["network", "connect", "none", &x.name], "none network"),
        (vec!["network", "disconnect", "bridge", &x.name], "first network"),
        (vec!["network", "disconnect", &b_net, &x.name], "is not on network"),
        (vec!["network", "disconnect", "nope", &x.name], "not found"),
    ] {
        let e = node.err(&args);
        assert!(e.contains(want), "`{}`: expected {want:?} in: {e}", args.join(" "));
    }
    assert_eq!(node.node_dp_veths(), veths, "veths left by refused connects");
    assert_eq!(node.json(&["endpoint", "inspect", &x.name])["attachments"], serde_json::json!([]));
    assert_eq!(link_names(&x.name).iter().filter(|l| l.starts_with("eth")).count(), 1, "{:?}", link_names(&x.name));
    // And the same connect with good input works.
    node.ok(&["network", "connect", &b_net, &x.name, "--ip", "10.63.0.50", "--alias", "cache"]);
    assert_ping(&x.name, &y.ip, 1);
}

/// A connect that fails at any step (`DATAPATH_FAILPOINT=connect:STEP`) is
/// rolled back: no veth, no interface in the namespace, no map entry, the
/// address free; `run` with two networks likewise leaves nothing.
#[test]
fn failed_connects_are_rolled_back() {
    datapath_tests::kernel_test!();
    for step in ["veth", "attach", "maps", "addr"] {
        let mut node =
            Node::with(AgentOpts { failpoint: Some(format!("connect:{step}")), ..AgentOpts::on(Datapath::Ebpf) });
        let b_net = node.ep("nb");
        node.ok(&["network", "create", &b_net, "--subnet", "10.64.0.0/24"]);
        let x = node.create_endpoint(&node.ep("x"), &[]);
        let (veths, maps) = (node.node_dp_veths(), endpoint_maps(&node));
        for _ in 0..2 {
            let e = node.err(&["network", "connect", &b_net, &x.name, "--ip", "10.64.0.9"]);
            assert!(e.contains("injected failure"), "connect:{step}: {e}");
            assert_eq!(node.node_dp_veths(), veths, "connect:{step}: veths");
            assert_eq!(endpoint_maps(&node), maps, "connect:{step}: endpoint maps");
            assert!(!link_names(&x.name).contains(&"eth1".to_string()), "connect:{step}: eth1 left");
            assert!(attachment(&mut node, &x.name, &b_net).is_none(), "connect:{step}: attachment recorded");
        }
        let r = node.ep("r");
        node.err(&["run", "--name", &r, "--network", "bridge", "--network", &b_net, "--", "true"]);
        assert_eq!(node.node_dp_veths(), veths, "connect:{step}: run left veths");
        assert!(!netns_exists(&r), "connect:{step}: run left its netns");
        node.restart_agent_with(AgentOpts::on(Datapath::Ebpf));
        node.ok(&["network", "connect", &b_net, &x.name, "--ip", "10.64.0.9"]);
    }
}

both_datapaths! {
/// The datapath outlives the agent for attachments too: after an agent
/// restart the connected endpoint still reaches the second network (same
/// host veth, map entries re-synced), and disconnect works.
fn attachment_survives_agent_restart(dp) {
    let mut node = Node::on(dp);
    let b_net = node.ep("nb");
    node.ok(&["network", "create", &b_net, "--subnet", "10.65.0.0/24"]);
    let b = node.create_endpoint(&node.ep("b"), &["--network", &b_net]);
    let x = node.create_endpoint(&node.ep("x"), &[]);
    node.ok(&["network", "connect", &b_net, &x.name]);
    let before = attachment(&mut node, &x.name, &b_net).expect("attachment");
    assert_ping(&x.name, &b.ip, 1);
    node.restart_agent();
    let after = attachment(&mut node, &x.name, &b_net).expect("attachment after restart");
    assert_eq!(before["host_ifindex"], after["host_ifindex"], "the attachment's veth was kept");
    assert_ping(&x.name, &b.ip, 2);
    let xb = after["ip"].as_str().unwrap().to_string();
    assert_ping(&b.name, &xb, 1);
    if dp.is_ebpf() {
        let (keys, _) = endpoint_maps(&node);
        assert!(keys.contains(&after["host_ifindex"].as_u64().unwrap()), "ENDPOINTS after restart: {keys:?}");
    }
    node.ok(&["network", "disconnect", &b_net, &x.name]);
    assert!(!link_names(&x.name).contains(&"eth1".to_string()), "eth1 left after disconnect");
    if dp.is_ebpf() {
        let (keys, _) = endpoint_maps(&node);
        assert!(!keys.contains(&after["host_ifindex"].as_u64().unwrap()), "ENDPOINTS after disconnect: {keys:?}");
    }
    // endpoint rm takes every link: connect again, then remove.
    node.ok(&["network", "connect", &b_net, &x.name]);
    let veths = node.node_dp_veths();
    node.ok(&["endpoint", "rm", &x.name]);
    assert_eq!(node.node_dp_veths().len(), veths.len() - 2, "both veths of {} removed", x.name);
}
}

/// A connect a crash interrupted (the attachment written ahead, still
/// marked `connecting`, its veth and map entry made) is rolled back by the
/// next agent: the veth, eth1, the map entry and the record go, the address
/// is free. The crash is simulated by killing the agent and marking the
/// finished attachment in the state file as the write-ahead left it.
#[test]
fn interrupted_connect_is_rolled_back_by_the_next_agent() {
    datapath_tests::kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    let b_net = node.ep("nb");
    node.ok(&["network", "create", &b_net, "--subnet", "10.66.0.0/24"]);
    let x = node.create_endpoint(&node.ep("x"), &[]);
    let (veths, maps) = (node.node_dp_veths(), endpoint_maps(&node));
    node.ok(&["network", "connect", &b_net, &x.name, "--ip", "10.66.0.7"]);
    let ifindex = attachment(&mut node, &x.name, &b_net).expect("attachment")["host_ifindex"].as_u64().unwrap();
    node.kill_agent();
    let path = node.state_dir.join(datapath::state::STATE_FILE);
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["endpoints"][&x.name]["attachments"][0]["connecting"] = Value::Bool(true);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    node.start_agent();
    assert!(attachment(&mut node, &x.name, &b_net).is_none(), "half-made attachment kept");
    assert_eq!(node.node_dp_veths(), veths, "the attachment's veth was not removed");
    assert!(!link_names(&x.name).contains(&"eth1".to_string()), "eth1 left in {}", x.name);
    let (keys, by_ip) = endpoint_maps(&node);
    assert!(!keys.contains(&ifindex), "ENDPOINTS still holds {ifindex}: {keys:?}");
    assert_eq!((keys, by_ip), maps, "endpoint maps after the rollback");
    assert_ping(&node.name, &x.ip, 1);
    node.ok(&["network", "connect", &b_net, &x.name, "--ip", "10.66.0.7"]);
}

/// `trace --endpoint NAME` covers all the endpoint's interfaces: packets
/// its eth1 sends on the second network are traced under its name (eBPF:
/// the kernel datapath has no traces).
#[test]
fn trace_by_name_covers_attachments() {
    datapath_tests::kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    let b_net = node.ep("nb");
    node.ok(&["network", "create", &b_net, "--subnet", "10.67.0.0/24"]);
    let b = node.create_endpoint(&node.ep("b"), &["--network", &b_net]);
    let x = node.create_endpoint(&node.ep("x"), &[]);
    node.ok(&["network", "connect", &b_net, &x.name]);
    assert_ping(&x.name, &b.ip, 1);
    let mut trace = node.cli_bg(&["trace", "--endpoint", &x.name]);
    // Let the subscription start (as the trace tests do).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(trace.try_status().is_none(), "trace exited early");
    assert_ping(&x.name, &b.ip, 3);
    std::thread::sleep(Duration::from_millis(1000));
    let (lines, err) = trace.stop();
    let prefix = format!("{} ", x.name);
    assert!(
        lines.iter().any(|l| l.starts_with(&prefix) && l.contains("redirect-peer") && l.contains(&b.ip)),
        "no trace line of {} via eth1 to {}:\n{}\nstderr: {err}",
        x.name,
        b.ip,
        lines.join("\n")
    );
}

/// The embedded DNS follows connect/disconnect: a connected endpoint's name
/// and its aliases on the second network resolve there to its address on
/// that network, and it resolves that network's endpoints; after the
/// disconnect neither does.
#[test]
fn dns_follows_connect_and_disconnect() {
    datapath_tests::kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    let (front, back) = (node.ep("nf"), node.ep("nb"));
    node.ok(&["network", "create", &front, "--subnet", "10.68.0.0/24"]);
    node.ok(&["network", "create", &back, "--subnet", "10.69.0.0/24"]);
    let x = node.create_endpoint(&node.ep("x"), &["--network", &front]);
    let y = node.create_endpoint(&node.ep("y"), &["--network", &back]);
    let getent = |ns: &str, name: &str| {
        let out = exec_in(ns, &["getent", "hosts", name]);
        out.status.success().then(|| stdout_str(&out).split_whitespace().next().unwrap_or_default().to_string())
    };
    assert_eq!(getent(&y.name, &x.name), None, "{} resolved before the connect", x.name);
    node.ok(&["network", "connect", &back, &x.name, "--alias", "proxy"]);
    let xb = attachment(&mut node, &x.name, &back).expect("attachment")["ip"].as_str().unwrap().to_string();
    assert_eq!(getent(&y.name, &x.name).as_deref(), Some(xb.as_str()), "name on the second network");
    assert_eq!(getent(&y.name, "proxy").as_deref(), Some(xb.as_str()), "alias on the second network");
    assert_eq!(getent(&x.name, &y.name).as_deref(), Some(y.ip.as_str()), "x resolves the second network's endpoint");
    node.ok(&["network", "disconnect", &back, &x.name]);
    assert_eq!(getent(&y.name, &x.name), None, "{} still resolves after the disconnect", x.name);
    assert_eq!(getent(&y.name, "proxy"), None, "the alias still resolves after the disconnect");
    assert_eq!(getent(&x.name, &y.name), None, "x still resolves {} after the disconnect", y.name);
}
