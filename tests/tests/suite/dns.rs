//! Embedded DNS (issue 14): endpoints on user-defined networks resolve
//! each other's names and aliases through 127.0.0.11 in their namespace;
//! everything else is forwarded to upstreams in the outside namespace
//! (never the machine's real resolvers).

use std::process::Command;
use std::time::Duration;

use datapath_tests::net::{python_bg, python_in};
use datapath_tests::node::{AgentOpts, Datapath, Node};
use datapath_tests::proc::{show, stdout_str, BgProcess};
use datapath_tests::{both_datapaths, exec_in, kernel_test, py};

const Q_TIMEOUT: Duration = Duration::from_secs(60);
/// The name the outside's DNS servers know.
const OUTSIDE_NAME: &str = "service.outside.example";

/// One query from `ns` to its embedded server: `rcode N` and the answers.
fn dig(ns: &str, proto: &str, name: &str, qtype: &str) -> Vec<String> {
    let out = python_in(ns, py::DNS_CLIENT, &["dns", proto, "127.0.0.11", name, qtype], Q_TIMEOUT);
    assert!(out.status.success(), "DNS client in {ns} for {name} {qtype} over {proto}:\n{}", show(&out));
    stdout_str(&out).lines().map(String::from).collect()
}

/// `ip netns exec NS getent hosts NAME`: the first address, if any.
fn getent(ns: &str, name: &str) -> Option<String> {
    let out = exec_in(ns, &["getent", "hosts", name]);
    out.status.success().then(|| stdout_str(&out).split_whitespace().next().unwrap_or_default().to_string())
}

/// An upstream DNS server in the outside on `ip` answering
/// [`OUTSIDE_NAME`] with `answer`.
fn upstream(node: &Node, ip: &str, answer: &str) -> BgProcess {
    let s = python_bg(node.outside(), py::DNS_UPSTREAM, &[&node.prefix, ip, OUTSIDE_NAME, answer]);
    assert!(
        s.wait_line(Duration::from_secs(10), |l| l == "ready").is_some(),
        "upstream DNS on {ip} not ready: {}",
        s.stderr()
    );
    s
}

fn queries_seen(s: &BgProcess) -> Vec<String> {
    s.lines().into_iter().filter(|l| l.starts_with("query ")).collect()
}

both_datapaths! {
/// Names and aliases on a shared user-defined network (getent, UDP, TCP,
/// reverse), nothing across networks, nothing on the default bridge,
/// forwarding to the node's upstream and to `--dns` servers (both in the
/// outside namespace), none on `--internal` networks.
fn dns_names_forwarding_and_isolation(dp) {
    let mut opts = AgentOpts::with_uplink(dp);
    opts.upstream_dns = vec!["203.0.113.1".into()];
    let mut node = Node::with(opts);
    let out = node.outside().to_string();
    // A second server in the outside, for `--dns`.
    let add = Command::new("ip").args(["netns", "exec", &out, "ip", "addr", "add", "203.0.113.3/24", "dev", "eth0"]).output().unwrap();
    assert!(add.status.success(), "{}", show(&add));
    let node_up = upstream(&node, "203.0.113.1", "198.51.100.1");
    let own_up = upstream(&node, "203.0.113.3", "198.51.100.3");

    node.ok(&["network", "create", "front", "--subnet", "10.31.0.0/24"]);
    node.ok(&["network", "create", "back", "--subnet", "10.32.0.0/24"]);
    node.ok(&["network", "create", "vault", "--subnet", "10.33.0.0/24", "--internal"]);
    let (an, bn, cn, dn, en, vn) = (node.ep("a"), node.ep("b"), node.ep("c"), node.ep("d"), node.ep("e"), node.ep("v"));
    let a = node.create_endpoint(&an, &["--network", "front", "--alias", "alpha"]);
    let b = node.create_endpoint(&bn, &["--network", "front", "--alias", "beta", "--alias", "Bravo"]);
    let c = node.create_endpoint(&cn, &["--network", "back"]);
    let _d = node.create_endpoint(&dn, &[]);
    let _e = node.create_endpoint(&en, &["--network", "back", "--dns", "203.0.113.3"]);
    let v = node.create_endpoint(&vn, &["--network", "vault", "--alias", "safe"]);
    assert_eq!(b.json["aliases"], serde_json::json!(["beta", "Bravo"]), "inspect shows the aliases");
    assert_eq!(node.inspect_endpoint(&en).json["dns"], serde_json::json!(["203.0.113.3"]));

    // The resolver configuration `ip netns exec` binds.
    let conf = std::fs::read_to_string(format!("/etc/netns/{an}/resolv.conf")).unwrap_or_default();
    assert!(conf.contains("nameserver 127.0.0.11") && conf.contains("options ndots:0"), "{conf}");

    // getent through the namespace's resolv.conf: name and alias, both ways.
    assert_eq!(getent(&an, &bn).as_deref(), Some(b.ip.as_str()), "a -> b by name");
    assert_eq!(getent(&an, "beta").as_deref(), Some(b.ip.as_str()), "a -> b by alias");
    assert_eq!(getent(&an, "BRAVO").as_deref(), Some(b.ip.as_str()), "aliases are case-insensitive");
    assert_eq!(getent(&bn, "alpha").as_deref(), Some(a.ip.as_str()), "b -> a by alias");
    assert_eq!(getent(&bn, &format!("{an}.front")).as_deref(), Some(a.ip.as_str()), "NAME.NETWORK");
    // UDP and TCP, TTL 600, trailing dot.
    for proto in ["udp", "tcp"] {
        assert_eq!(dig(&an, proto, &bn, "A"), ["rcode 0".to_string(), format!("A {} 600", b.ip)], "{proto}");
        assert_eq!(dig(&an, proto, "beta.", "A"), ["rcode 0".to_string(), format!("A {} 600", b.ip)], "{proto}");
        // A local name has no AAAA: an empty answer.
        assert_eq!(dig(&an, proto, &bn, "AAAA"), ["rcode 0"], "{proto}");
    }
    // Reverse.
    let arpa = |ip: &str| format!("{}.in-addr.arpa", ip.split('.').rev().collect::<Vec<_>>().join("."));
    assert_eq!(dig(&an, "udp", &arpa(&b.ip), "PTR"), ["rcode 0".to_string(), format!("PTR {bn}.front.")]);
    let rev = exec_in(&an, &["getent", "hosts", &b.ip]);
    assert!(stdout_str(&rev).contains(&bn), "reverse getent: {}", show(&rev));

    // Another network's names do not resolve (forwarded: the upstream
    // knows no such name).
    assert_eq!(getent(&an, &cn), None, "a must not resolve c (network back)");
    assert_eq!(dig(&an, "udp", &cn, "A"), ["rcode 3"], "NXDOMAIN from the upstream");
    assert_eq!(getent(&cn, &an), None);
    assert!(dig(&cn, "udp", "alpha", "A")[1..].is_empty());
    assert!(!dig(&an, "udp", &format!("{cn}.back"), "A").iter().any(|l| l.contains(&c.ip)));

    // The default bridge network: no embedded DNS at all.
    assert_eq!(dig(&dn, "udp", &an, "A"), ["refused"], "nothing listens on 127.0.0.11 on bridge");
    assert!(!std::path::Path::new(&format!("/etc/netns/{dn}")).exists());

    // Forwarding: the node's upstream, over UDP and TCP; `--dns` servers.
    let before = queries_seen(&node_up).len();
    assert_eq!(dig(&an, "udp", OUTSIDE_NAME, "A"), ["rcode 0", "A 198.51.100.1 60"]);
    assert_eq!(dig(&an, "tcp", OUTSIDE_NAME, "A"), ["rcode 0", "A 198.51.100.1 60"]);
    assert_eq!(getent(&an, OUTSIDE_NAME).as_deref(), Some("198.51.100.1"));
    let seen = queries_seen(&node_up)[before..].to_vec();
    assert!(seen.iter().any(|l| l.ends_with(" udp")) && seen.iter().any(|l| l.ends_with(" tcp")), "{seen:?}");
    assert_eq!(dig(&en, "udp", OUTSIDE_NAME, "A"), ["rcode 0", "A 198.51.100.3 60"], "--dns wins");
    assert_eq!(dig(&en, "tcp", OUTSIDE_NAME, "A"), ["rcode 0", "A 198.51.100.3 60"]);
    assert!(!queries_seen(&own_up).is_empty());

    // Internal: local names only; the rest is refused and never leaves.
    assert_eq!(dig(&vn, "udp", "safe", "A"), ["rcode 0".to_string(), format!("A {} 600", v.ip)]);
    let seen_before = queries_seen(&node_up).len();
    assert_eq!(dig(&vn, "udp", "internal.outside.example", "A"), ["rcode 5"], "REFUSED on --internal");
    assert_eq!(dig(&vn, "tcp", "internal.outside.example", "A"), ["rcode 5"]);
    assert_eq!(getent(&vn, OUTSIDE_NAME), None);
    assert_eq!(queries_seen(&node_up).len(), seen_before, "an internal endpoint's query reached the upstream");

    // Removed: the name goes, its server and resolv.conf too.
    node.ok(&["endpoint", "rm", &bn]);
    assert_eq!(dig(&an, "udp", "beta", "A"), ["rcode 3"]);
    assert!(!std::path::Path::new(&format!("/etc/netns/{bn}")).exists());
    let stats = node.json(&["stats", "-o", "json"]);
    assert!(stats["dns"]["local"].as_u64().unwrap_or(0) >= 10, "{}", stats["dns"]);
    assert!(stats["dns"]["forwarded"].as_u64().unwrap_or(0) >= 5, "{}", stats["dns"]);
}
}

/// Bad names and collisions are refused, nothing half-made.
#[test]
fn dns_bad_aliases_are_refused() {
    kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    node.ok(&["network", "create", "front", "--subnet", "10.31.0.0/24"]);
    let (an, bn) = (node.ep("a"), node.ep("b"));
    node.create_endpoint(&an, &["--network", "front", "--alias", "web"]);
    let e = node.err(&["endpoint", "create", &bn, "--network", "front", "--alias", "bad/name"]);
    assert!(e.contains("invalid alias name"), "{e}");
    let e = node.err(&["endpoint", "create", &bn, "--network", "front", "--alias", "WEB"]);
    assert!(e.contains("taken on network front"), "{e}");
    let e = node.err(&["endpoint", "create", &bn, "--network", "front", "--alias", &an]);
    assert!(e.contains("taken"), "{e}");
    let e = node.err(&["endpoint", "create", "web", "--network", "front"]);
    assert!(e.contains("taken"), "a name colliding with an alias: {e}");
    let e = node.err(&[
        "endpoint",
        "create",
        &bn,
        "--network",
        "front",
        "--dns",
        "1.2.3.4",
        "--dns",
        "1.2.3.5",
        "--dns",
        "1.2.3.6",
        "--dns",
        "1.2.3.7",
    ]);
    assert!(e.contains("at most 3"), "{e}");
    assert_eq!(node.endpoints().len(), 1, "nothing half-made");
    assert!(!node.netns_exists(&bn));
    // The same alias on another network is fine.
    node.ok(&["network", "create", "other", "--subnet", "10.34.0.0/24"]);
    node.create_endpoint(&bn, &["--network", "other", "--alias", "web"]);
}

/// The corpus of malformed queries (and oversized TCP lengths, slow and
/// too many TCP clients) leaves the server answering and the agent alive.
#[test]
fn dns_hostile_input_leaves_the_server_answering() {
    kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    node.ok(&["network", "create", "front", "--subnet", "10.31.0.0/24"]);
    let (an, bn) = (node.ep("a"), node.ep("b"));
    node.create_endpoint(&an, &["--network", "front"]);
    let b = node.create_endpoint(&bn, &["--network", "front"]);
    let corpus = datapath::dns::answer::hostile_corpus();
    let hex: Vec<String> = corpus.iter().map(|(_, b)| b.iter().map(|x| format!("{x:02x}")).collect()).collect();
    let args: Vec<&str> = ["dns", "udp", "127.0.0.11"].into_iter().chain(hex.iter().map(String::as_str)).collect();
    let out = python_in(&an, py::DNS_RAW, &args, Q_TIMEOUT);
    let replies: Vec<String> = stdout_str(&out).lines().map(String::from).collect();
    assert_eq!(replies.len(), corpus.len(), "{}", show(&out));
    for ((what, _), r) in corpus.iter().zip(&replies) {
        let dropped = matches!(*what, "empty" | "one byte" | "eleven bytes" | "response sent as a query" | "all ones");
        assert_eq!(r == "none", dropped, "{what}: {r}");
    }
    // Over TCP (the empty message is a zero length: the server closes).
    let mut tcp_args = args.clone();
    tcp_args[1] = "tcp";
    let out = python_in(&an, py::DNS_RAW, &tcp_args, Q_TIMEOUT);
    assert_eq!(stdout_str(&out).lines().count(), corpus.len(), "{}", show(&out));
    // Oversized announced lengths, idle clients, and more connections than
    // allowed, all held open while a normal query is asked.
    let holders = python_bg(&an, HOLD_TCP, &[&node.prefix, "40"]);
    assert!(holders.wait_line(Duration::from_secs(20), |l| l.starts_with("held")).is_some(), "{}", holders.stderr());
    assert_eq!(dig(&an, "udp", &bn, "A"), ["rcode 0".to_string(), format!("A {} 600", b.ip)]);
    assert!(node.agent_alive());
    let stats = node.json(&["stats", "-o", "json"]);
    let dns = &stats["dns"];
    assert!(dns["formerr"].as_u64().unwrap_or(0) >= 5 && dns["dropped"].as_u64().unwrap_or(0) >= 4, "{dns}");
    assert!(dns["notimp"].as_u64().unwrap_or(0) >= 2, "{dns}");
    assert!(dns["tcp_closed"].as_u64().unwrap_or(0) >= 1, "more than 16 connections: some closed: {dns}");
}

/// argv: TAG N. Opens N TCP connections to 127.0.0.11:53, each announcing
/// a 65535-byte message and sending 3 bytes of it; prints "held K" (K: the
/// connections accepted) and keeps them 60 s.
const HOLD_TCP: &str = r#"
import socket, sys, time
conns = []
for i in range(int(sys.argv[2])):
    try:
        s = socket.create_connection(("127.0.0.11", 53), timeout=5)
        s.sendall(b"\xff\xff\x00\x01\x02")
        conns.append(s)
    except OSError:
        pass
print("held %d" % len(conns), flush=True)
time.sleep(60)
"#;

/// DNS comes back with the agent: after a restart every endpoint's server
/// answers again; `datapath run` commands resolve too.
#[test]
fn dns_survives_agent_restart_and_serves_run() {
    kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    node.ok(&["network", "create", "front", "--subnet", "10.31.0.0/24"]);
    let (an, bn) = (node.ep("a"), node.ep("b"));
    let a = node.create_endpoint(&an, &["--network", "front", "--alias", "web"]);
    let b = node.create_endpoint(&bn, &["--network", "front"]);
    assert_eq!(getent(&bn, "web").as_deref(), Some(a.ip.as_str()));
    node.restart_agent();
    assert_eq!(getent(&bn, "web").as_deref(), Some(a.ip.as_str()), "after an agent restart");
    assert_eq!(dig(&an, "tcp", &bn, "A"), ["rcode 0".to_string(), format!("A {} 600", b.ip)]);
    // `run`: its command sees the endpoint's resolv.conf like `ip netns exec`.
    let rn = node.ep("r");
    let out = node.cli(&["run", "--network", "front", "--name", &rn, "--rm", "--", "getent", "hosts", "web"]);
    assert!(out.status.success() && stdout_str(&out).starts_with(&a.ip), "{}", show(&out));
    if datapath_tests::net::have_ping() {
        let out = node.cli(&["run", "--network", "front", "--rm", "--", "ping", "-c", "1", "-W", "5", "web"]);
        assert!(out.status.success(), "{}", show(&out));
    }
    // A detached command's endpoint answers to its `--alias`; gone with `stop`.
    let sn = node.ep("s");
    node.ok(&["run", "-d", "--network", "front", "--name", &sn, "--alias", "svc", "--", "sleep", "600"]);
    let s_ip = node.inspect_endpoint(&sn).ip;
    assert_eq!(getent(&bn, "svc").as_deref(), Some(s_ip.as_str()));
    node.ok(&["stop", &sn]);
    assert_eq!(getent(&bn, "svc"), None, "a stopped command's alias is gone");
    // The node's own /etc/resolv.conf was not touched by the bind mount.
    let node_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(!node_conf.contains("127.0.0.11"), "{node_conf}");
}

/// Measurements (run explicitly): answer latency for a local and a
/// forwarded name (1000 queries each, from inside an endpoint), and the
/// agent's RSS with 200 endpoints on DNS.
#[test]
#[ignore]
fn dns_measure_latency_and_memory() {
    kernel_test!();
    let mut opts = AgentOpts::with_uplink(Datapath::Ebpf);
    opts.upstream_dns = vec!["203.0.113.1".into()];
    let mut node = Node::with(opts);
    let _up = upstream(&node, "203.0.113.1", "198.51.100.1");
    node.ok(&["network", "create", "front", "--subnet", "10.31.0.0/22"]);
    let (an, bn) = (node.ep("a"), node.ep("b"));
    node.create_endpoint(&an, &["--network", "front"]);
    node.create_endpoint(&bn, &["--network", "front"]);
    for (what, name) in [("local", bn.as_str()), ("forwarded", OUTSIDE_NAME)] {
        for proto in ["udp", "tcp"] {
            let out = python_in(&an, py::DNS_CLIENT, &["dns", proto, "127.0.0.11", name, "A", "1000"], Q_TIMEOUT);
            println!("MEASURE dns {what} {proto}: {}", stdout_str(&out).trim());
        }
    }
    let rss = |node: &Node| {
        let pid = node.agent_pid().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find(|l| l.starts_with("VmRSS")).unwrap_or_default().to_string()
    };
    println!("MEASURE agent with 2 endpoints: {}", rss(&node));
    for i in 0..198 {
        let n = node.ep(&format!("m{i}"));
        node.ok(&["endpoint", "create", &n, "--network", "front"]);
    }
    let stats = node.json(&["stats", "-o", "json"]);
    println!("MEASURE agent with 200 endpoints on DNS ({} served): {}", stats["dns"]["endpoints_served"], rss(&node));
    let last = node.ep("m197");
    assert!(getent(&last, &an).is_some(), "the 200th endpoint resolves");
}
