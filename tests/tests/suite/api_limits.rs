//! Hardening against hostile API clients: request size, unknown fields,
//! connection count, idle clients, and pids reported as a command's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use datapath_tests::kernel_test;
use datapath_tests::node::Node;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `data` and returns what the agent answered (until it closes, at most 15 s).
fn exchange(node: &Node, data: &[u8]) -> String {
    let mut s = UnixStream::connect(&node.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The agent may answer and close before everything is written.
    let _ = s.write_all(data);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A request line larger than 1 MiB gets a clear error at once and the
/// agent does not buffer it (four unterminated 8 MiB lines used to grow it
/// by their size); an unknown field is an error, not ignored.
#[test]
fn oversized_requests_and_unknown_fields_are_refused() {
    kernel_test!();
    let mut node = Node::new();
    let pid = node.agent_pid().expect("agent pid");
    let before = rss_kib(pid);
    for _ in 0..4 {
        let answer = exchange(&node, &vec![b'x'; 8 << 20]);
        assert!(answer.contains("larger than"), "{answer}");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    println!("agent RSS before {before} KiB, grew by {grown} KiB over four 8 MiB requests");
    assert!(grown < 8 << 10, "the agent grew by {grown} KiB");
    let answer = exchange(
        &node,
        b"{\"api_version\":1,\"op\":\"network_create\",\"name\":\"n\",\"subnet\":\"10.1.0.0/24\",\"subnte\":1}\n",
    );
    assert!(answer.contains("unknown field") && answer.contains("subnte"), "{answer}");
    assert!(node.networks().iter().all(|n| n["name"] != "n"), "the request must not have been applied");
    assert!(node.agent_alive());
}

/// At most 256 connections at once: more are refused with an error, and
/// idle clients are dropped after 10 s (2000 idle connections used to hold
/// 2000 descriptors forever). The agent keeps answering throughout.
#[test]
fn connections_are_bounded_and_idle_ones_dropped() {
    kernel_test!();
    let mut node = Node::new();
    let idle: Vec<UnixStream> = (0..300).filter_map(|_| UnixStream::connect(&node.socket).ok()).collect();
    assert_eq!(idle.len(), 300, "connect");
    std::thread::sleep(Duration::from_millis(500));
    let refused = idle
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 256];
            matches!((&**s).read(&mut buf), Ok(n) if n > 0 && String::from_utf8_lossy(&buf[..n]).contains("too many"))
        })
        .count();
    println!("{refused} of 300 idle connections refused at once");
    assert!(refused >= 300 - 256, "only {refused} refused");
    let started = Instant::now();
    // Idle ones are closed by the agent within its 10 s request timeout.
    let closed = idle.into_iter().all(|mut s| {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).is_ok()
    });
    println!("every idle connection closed after {:.1} s", started.elapsed().as_secs_f64());
    assert!(closed, "an idle connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(14));
    node.ok(&["network", "ls"]);
}

/// A client cannot make the agent signal a process it did not start:
/// reporting an unrelated pid as a command's process is refused, and a
/// `stop` leaves that process alone (it used to SIGTERM it).
#[test]
fn a_reported_pid_must_be_the_commands_own() {
    kernel_test!();
    let mut node = Node::new();
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().expect("sleep");
    let name = node.ep("c");
    let create = format!(
        "{{\"api_version\":1,\"op\":\"container_create\",\"name\":\"{name}\",\"argv\":[\"sleep\",\"1\"],\"detach\":false}}\n"
    );
    let answer = exchange(&node, create.as_bytes());
    assert!(answer.contains("\"ok\":true"), "{answer}");
    let started =
        format!("{{\"api_version\":1,\"op\":\"container_started\",\"name\":\"{name}\",\"pid\":{}}}\n", bystander.id());
    let answer = exchange(&node, started.as_bytes());
    assert!(answer.contains("\"ok\":false") && answer.contains("not a process of container"), "{answer}");
    let stop = format!("{{\"api_version\":1,\"op\":\"container_stop\",\"name\":\"{name}\"}}\n");
    let answer = exchange(&node, stop.as_bytes());
    assert!(answer.contains("\"ok\":true"), "{answer}");
    std::thread::sleep(Duration::from_millis(200));
    let alive = bystander.try_wait().expect("try_wait").is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(alive, "the agent signalled a process it did not start");
    assert!(node.agent_alive());
}

fn default_route(netns: &str) -> String {
    let out =
        datapath_tests::proc::run(std::process::Command::new("ip").args(["-n", netns, "route", "show", "default"]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Attaching to an existing namespace (the CNI case) never changes routes
/// the datapath did not make: a default route already there stays, also
/// after the endpoint is removed (it used to be replaced, then deleted), and
/// the node's own namespace is refused (pointed at it, the endpoint cut
/// every endpoint off the outside).
#[test]
fn attaching_to_an_existing_namespace_keeps_its_routes() {
    kernel_test!();
    let mut node = Node::new();
    let ns = node.ep("c");
    let ip = |args: &[&str]| {
        let out = datapath_tests::proc::run(std::process::Command::new("ip").args(args));
        assert!(out.status.success(), "ip {args:?}: {}", datapath_tests::proc::show(&out));
    };
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ip(&["-n", &ns, "addr", "add", "192.0.2.2/24", "dev", "v0"]);
    ip(&["-n", &ns, "link", "set", "v0", "up"]);
    ip(&["-n", &ns, "link", "set", "v1", "up"]);
    ip(&["-n", &ns, "route", "add", "default", "via", "192.0.2.1"]);
    let before = default_route(&ns);
    let req = format!(
        "{{\"api_version\":1,\"op\":\"endpoint_create\",\"name\":\"{ns}\",\"netns_path\":\"/run/netns/{ns}\",\"ifname\":\"eth1\"}}\n"
    );
    let answer = exchange(&node, req.as_bytes());
    assert!(answer.contains("\"ok\":true"), "{answer}");
    assert_eq!(default_route(&ns), before, "the namespace's default route was changed");
    node.ok(&["endpoint", "rm", &ns]);
    assert_eq!(default_route(&ns), before, "removing the endpoint changed the namespace's default route");
    let node_route = default_route(&node.name);
    let own = format!("/proc/{}/ns/net", node.agent_pid().expect("agent pid"));
    let req = format!(
        "{{\"api_version\":1,\"op\":\"endpoint_create\",\"name\":\"{}\",\"netns_path\":\"{own}\",\"ifname\":\"eth9\"}}\n",
        node.ep("n")
    );
    let answer = exchange(&node, req.as_bytes());
    assert!(answer.contains("\"ok\":false") && answer.contains("node's own"), "{answer}");
    assert_eq!(default_route(&node.name), node_route);
}
