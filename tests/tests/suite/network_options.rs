//! Network options end to end (README "Usage", "Isolation"): what
//! `network inspect` reports, `--mtu` on every veth end and the bridge, and
//! `--internal` networks (no default route, nothing leaves the subnet).
//! Each test runs once per datapath (`_ebpf`, `_kernel`) on networks made
//! with `--datapath DP`. (Isolation between networks and `--icc=false` are
//! in policy.rs.)

use std::process::Command;
use std::time::Duration;

use datapath_tests::env::python;
use datapath_tests::net::{link, ns_cmd, ping_opts, wait_tcp_listen};
use datapath_tests::node::{delta, Node};
use datapath_tests::proc::{run, show, stdout_str, BgProcess};
use datapath_tests::{assert_ping, exec_in, kernel_test, ping};
use serde_json::{json, Value};

use crate::modes::{differential, network, run_expect};

/// MTU of `dev` in netns `ns`.
fn mtu(ns: &str, dev: &str) -> u64 {
    link(ns, dev).unwrap_or_else(|| panic!("no link {dev} in {ns}"))["mtu"]
        .as_u64()
        .unwrap_or_else(|| panic!("no mtu for {dev} in {ns}"))
}

/// Seconds since the epoch of an RFC 3339 time (GNU date).
fn epoch(t: &str) -> i64 {
    let out = run(Command::new("date").args(["-u", "-d", t, "+%s"]));
    assert!(out.status.success(), "date cannot parse {t:?}: {}", show(&out));
    stdout_str(&out).trim().parse().unwrap()
}

/// A veth `dev` in the node (up, with `addr`), its peer in a new netns
/// `<prefix>out` (up, with `peer_addr`, default route back via `addr`).
/// Returns the outside netns name. Removed with the node's prefix.
fn outside(node: &Node, dev: &str, addr: &str, peer_addr: &str) -> String {
    let out_ns = node.ep("out");
    let gw = addr.split('/').next().unwrap();
    let n = node.name.as_str();
    let steps: Vec<Vec<&str>> = vec![
        vec!["netns", "add", &out_ns],
        vec!["-n", n, "link", "add", dev, "type", "veth", "peer", "name", "out0"],
        vec!["-n", n, "link", "set", "out0", "netns", &out_ns],
        vec!["-n", n, "addr", "add", addr, "dev", dev],
        vec!["-n", n, "link", "set", dev, "up"],
        vec!["-n", &out_ns, "link", "set", "lo", "up"],
        vec!["-n", &out_ns, "addr", "add", peer_addr, "dev", "out0"],
        vec!["-n", &out_ns, "link", "set", "out0", "up"],
        vec!["-n", &out_ns, "route", "add", "default", "via", gw],
    ];
    for s in steps {
        let out = run(Command::new("ip").args(&s));
        assert!(out.status.success(), "ip {}: {}", s.join(" "), show(&out));
    }
    out_ns
}

/// From `ns`, a TCP connect to ip:port (2 s); true if it connected.
fn tcp_connects(ns: &str, ip: &str, port: u16) -> bool {
    let script = "import socket,sys\ntry:\n socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=2).close(); print('connected')\nexcept OSError as e:\n print('failed', e)";
    let out = datapath_tests::net::python_in(ns, script, &["dpt", ip, &port.to_string()], Duration::from_secs(10));
    assert!(out.status.success(), "tcp probe in {ns}: {}", show(&out));
    stdout_str(&out).starts_with("connected")
}

/// An HTTP server (python, port `port`) in netns `ns`, serving the node dir.
fn http_server(node: &Node, ns: &str, port: u16) -> BgProcess {
    let dir = node.dir.to_string_lossy().into_owned();
    let p = port.to_string();
    let bg = BgProcess::spawn(ns_cmd(ns, &[python(), "-m", "http.server", &p, "--directory", &dir]));
    assert!(wait_tcp_listen(ns, port, Duration::from_secs(10)), "http.server in {ns} not listening");
    bg
}

// ----- inspect ---------------------------------------------------------------

/// `network inspect` shows name, id (the one `create` printed), created,
/// datapath, subnet, gateway, internal and options {icc, masquerade,
/// uplink, mtu}, defaults included, and each endpoint (made by `endpoint
/// create` or by `run`) with its name, MAC (the one of its eth0) and IPv4;
/// it agrees with `network ls`.
fn network_inspect_shows_options_and_endpoints(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    // An uplink candidate in the node.
    outside(&node, "upl0", "10.99.0.1/24", "10.99.0.2/24");
    let t0 = epoch(stdout_str(&run(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))).trim());

    let name = node.ep("net");
    let id = node.ok(&[
        "network",
        "create",
        &name,
        "--subnet",
        "10.43.0.0/24",
        "--gateway",
        "10.43.0.254",
        "--datapath",
        dp,
        "--icc=false",
        "--no-masquerade",
        "--mtu",
        "1450",
        "--uplink",
        "upl0",
    ]);
    let id = id.trim().to_string();
    assert!(!id.is_empty() && !id.contains(char::is_whitespace), "network create must print the id: {id:?}");
    let plain = network(&mut node, "plain", "10.44.0.0/24", dp, &[]);
    let internal = network(&mut node, "int", "10.45.0.0/24", dp, &["--internal"]);

    let v = node.inspect_network(&name);
    let created = v["created"].as_str().unwrap_or_else(|| panic!("no created: {v}")).to_string();
    let t = epoch(&created);
    assert!(t >= t0 - 2 && t <= t0 + 120, "created {created} is not the creation time (test started at {t0})");
    let bridge = v["bridge"].as_str().unwrap_or("").to_string();
    assert!(link(&node.name, &bridge).is_some(), "inspect's bridge {bridge:?} does not exist in the node");
    let want = json!({
        "name": name, "id": id, "created": created, "datapath": dp, "subnet": "10.43.0.0/24",
        "gateway": "10.43.0.254", "bridge": bridge, "internal": false,
        "options": {"icc": false, "masquerade": false, "uplink": "upl0", "mtu": 1450},
        "endpoints": [],
    });
    assert_eq!(v, want, "network inspect {name}");

    let d = node.inspect_network(&plain);
    assert_eq!(d["datapath"], dp, "{d}");
    assert_eq!(d["gateway"], "10.44.0.1", "default gateway: {d}");
    assert_eq!(d["internal"], false, "{d}");
    assert_eq!(
        d["options"],
        json!({"icc": true, "masquerade": true, "uplink": null, "mtu": 1500}),
        "default options: {d}"
    );
    assert_ne!(d["id"], v["id"], "two networks with one id");
    let i = node.inspect_network(&internal);
    assert_eq!(i["internal"], true, "--internal: {i}");
    assert_eq!(i["datapath"], dp, "{i}");

    // Endpoints: by `endpoint create` and by `run -d`.
    let a = node.create_endpoint(&node.ep("a"), &["--network", &name, "--ip", "10.43.0.10"]);
    let b = node.ep("b");
    let p = node.prefix.clone();
    run_expect(&mut node, &["-d", "--network", &name, "--name", &b, "--", "sh", "-c", "sleep 30", &p], 0);
    let b_ep = node.inspect_endpoint(&b);
    let v = node.inspect_network(&name);
    let eps = v["endpoints"].as_array().cloned().unwrap_or_default();
    let mut got: Vec<(String, String, String)> = eps
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("?").into(),
                e["mac"].as_str().unwrap_or("?").into(),
                e["ip"].as_str().unwrap_or("?").into(),
            )
        })
        .collect();
    got.sort();
    let eth0_mac = |ns: &str| link(ns, "eth0").unwrap()["address"].as_str().unwrap().to_string();
    let mut expect =
        vec![(a.name.clone(), eth0_mac(&a.name), "10.43.0.10".to_string()), (b.clone(), eth0_mac(&b), b_ep.ip.clone())];
    expect.sort();
    assert_eq!(got, expect, "inspect endpoints (name, MAC of eth0, IPv4): {v}");
    assert_eq!(a.mac, expect.iter().find(|e| e.0 == a.name).unwrap().1, "endpoint inspect MAC vs eth0");
    for e in &eps {
        let ei = node.inspect_endpoint(e["name"].as_str().unwrap());
        assert_eq!(e["id"].as_str(), ei.json["id"].as_str(), "endpoint id in network inspect vs endpoint inspect: {e}");
    }
    // `network ls` says the same.
    let ls = node.networks();
    let entry = ls.iter().find(|n| n["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} not in network ls"));
    assert_eq!(entry, &v, "network ls entry vs network inspect");

    // Endpoints leave the view when removed.
    node.ok(&["stop", &b]);
    node.ok(&["endpoint", "rm", &a.name]);
    let v = node.inspect_network(&name);
    assert_eq!(v["endpoints"], json!([]), "after stop and endpoint rm: {v}");
    node.err(&["network", "inspect", &node.ep("nosuch")]);
}
differential!(network_inspect_shows_options_and_endpoints);

// ----- MTU -------------------------------------------------------------------

/// `--mtu 1400`: both ends of every veth (endpoint create and `run`) and
/// the bridge have MTU 1400; 1400-byte packets cross between endpoints
/// unfragmented, 1401 bytes don't leave; the default network keeps 1500.
fn mtu_applies_to_every_veth_and_the_bridge(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let net = network(&mut node, "net", "10.46.0.0/24", dp, &["--mtu", "1400"]);
    let a = node.create_endpoint(&node.ep("a"), &["--network", &net]);
    let b = node.ep("b");
    let p = node.prefix.clone();
    run_expect(&mut node, &["-d", "--network", &net, "--name", &b, "--", "sh", "-c", "sleep 30", &p], 0);
    let b = node.inspect_endpoint(&b);
    let c = node.create_endpoint(&node.ep("c"), &[]);
    let bridge = node.inspect_network(&net)["bridge"].as_str().unwrap().to_string();

    let mut got = Vec::new();
    for e in [&a, &b] {
        got.push((format!("{} eth0", e.name), mtu(&e.name, "eth0")));
        got.push((format!("node {}", e.host_ifname), mtu(&node.name, &e.host_ifname)));
    }
    got.push((format!("node bridge {bridge}"), mtu(&node.name, &bridge)));
    let want: Vec<(String, u64)> = got.iter().map(|(k, _)| (k.clone(), 1400)).collect();
    assert_eq!(got, want, "--mtu 1400 must be on every veth end and the bridge");
    // The run'd endpoint sees it from inside too.
    let x = node.ep("x");
    let out = run_expect(
        &mut node,
        &[
            "--rm",
            "--network",
            &format!("container:{}", b.name),
            "--name",
            &x,
            "--",
            "ip",
            "-j",
            "link",
            "show",
            "eth0",
        ],
        0,
    );
    assert!(out.contains("\"mtu\":1400"), "ip -j link in container:{}: {out}", b.name);
    // The default network is untouched.
    assert_eq!(mtu(&c.name, "eth0"), 1500, "default network endpoint");
    assert_eq!(mtu(&node.name, &c.host_ifname), 1500, "default network host veth");
    assert_eq!(mtu(&node.name, "datapath0"), 1500, "datapath0");

    // 1372 + 28 = 1400 bytes with DF cross; 1373 (1401) cannot be sent.
    assert_ping(&a.name, &b.ip, 1); // neighbours
    let full =
        run(&mut ns_cmd(&a.name, &["ping", "-n", "-M", "do", "-s", "1372", "-c", "2", "-i", "0.2", "-W", "1", &b.ip]));
    assert!(stdout_str(&full).contains("2 received"), "1400-byte DF ping {} -> {}: {}", a.name, b.ip, show(&full));
    let over = run(&mut ns_cmd(&a.name, &["ping", "-n", "-M", "do", "-s", "1373", "-c", "1", "-W", "1", &b.ip]));
    assert!(!over.status.success(), "a 1401-byte DF ping left an MTU-1400 endpoint: {}", show(&over));
    node.ok(&["stop", &b.name]);
}
differential!(mtu_applies_to_every_veth_and_the_bridge);

// ----- internal --------------------------------------------------------------

/// `--internal`: endpoints (by `endpoint create` and by `run`) have no
/// default route; inside the subnet (peers, gateway) all works. Even with a
/// default route added by hand, nothing leaves: not to an outside host the
/// node routes to (a normal network reaches it), not to another network
/// (ping and TCP), and the other network cannot get in. eBPF counts
/// drop-policy-internal / drop-policy-isolation; on kernel the nft forward
/// rules of the network exist.
fn internal_network_has_no_default_route_and_is_isolated(dp: &str) {
    kernel_test!();
    let mut node = Node::new();
    let out_ns = outside(&node, "upl0", "10.99.0.1/24", "10.99.0.2/24");
    let int = network(&mut node, "int", "10.47.0.0/24", dp, &["--internal"]);
    let nat = network(&mut node, "nat", "10.48.0.0/24", dp, &["--uplink", "upl0"]);
    let i1 = node.create_endpoint(&node.ep("i1"), &["--network", &int]);
    let i2 = node.create_endpoint(&node.ep("i2"), &["--network", &int]);
    let n1 = node.create_endpoint(&node.ep("n1"), &["--network", &nat]);

    // Routes: none by default (endpoint and run), only the subnet.
    let routes = |ns_out: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(ns_out).unwrap_or_else(|e| panic!("ip -j route ({e}): {ns_out}"));
        v.as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap_or("?").to_string()).collect()
    };
    let r = routes(&stdout_str(&exec_in(&i1.name, &["ip", "-j", "route"])));
    assert_eq!(r, vec!["10.47.0.0/24".to_string()], "routes of an internal endpoint");
    let r = node.ep("r");
    let out = run_expect(&mut node, &["--rm", "--network", &int, "--name", &r, "--", "ip", "-j", "route"], 0);
    assert_eq!(routes(&out), vec!["10.47.0.0/24".to_string()], "routes in `run --network {int}`");
    let r = routes(&stdout_str(&exec_in(&n1.name, &["ip", "-j", "route"])));
    assert!(r.contains(&"default".to_string()), "a normal network's endpoint has a default route: {r:?}");

    // Inside the subnet everything works.
    assert_ping(&i1.name, &i2.ip, 2);
    assert_ping(&i1.name, &i1.gateway, 1);
    // The outside is reachable from a normal network (so what fails below
    // fails because of the policy, not the topology).
    assert_ping(&n1.name, "10.99.0.2", 2);
    let _web_out = http_server(&node, &out_ns, 8080);
    let _web_n1 = http_server(&node, &n1.name, 8081);
    assert!(tcp_connects(&n1.name, "10.99.0.2", 8080), "{nat} -> outside TCP");

    // A hand-made default route does not help the internal endpoint.
    let add = exec_in(&i1.name, &["ip", "route", "add", "default", "via", &i1.gateway]);
    assert!(add.status.success(), "{}", show(&add));
    let s0 = node.stats();
    let mut leaks = Vec::new();
    for to in ["10.99.0.2", n1.ip.as_str(), n1.gateway.as_str()] {
        let out = ping_opts(&i1.name, to, 2, "0.2");
        if out.status.success() {
            leaks.push(format!("ping {} -> {to}:\n{}", i1.name, show(&out)));
        }
    }
    if tcp_connects(&i1.name, "10.99.0.2", 8080) {
        leaks.push(format!("TCP {} -> outside 10.99.0.2:8080 connected", i1.name));
    }
    if tcp_connects(&i1.name, &n1.ip, 8081) {
        leaks.push(format!("TCP {} -> {}:8081 connected", i1.name, n1.ip));
    }
    let out = ping(&n1.name, &i1.ip, 2);
    if out.status.success() {
        leaks.push(format!("ping {} -> {} (into the internal network):\n{}", n1.name, i1.ip, show(&out)));
    }
    let s1 = node.stats();
    if !leaks.is_empty() {
        node.fail(format!("traffic crossed the boundary of internal network {int} ({dp}):\n{}", leaks.join("\n")));
    }
    if dp == "ebpf" {
        let (internal, _) = delta(&s0, &s1, "drop-policy-internal");
        let (iso, _) = delta(&s0, &s1, "drop-policy-isolation");
        assert!(
            internal >= 2,
            "2 echo requests + SYNs from {} to the outside: drop-policy-internal +{internal}",
            i1.name
        );
        assert!(iso >= 4, "echo requests/SYNs between {int} and {nat}: drop-policy-isolation +{iso}");
    } else {
        let out = exec_in(&node.name, &["nft", "list", "table", "ip", "datapath"]);
        let rules = stdout_str(&out);
        assert!(
            rules.contains(&format!("internal {int}")),
            "kernel datapath: no nft rule for internal network {int}:\n{}",
            show(&out)
        );
    }
    // The boundary does not cut the subnet itself.
    assert_ping(&i2.name, &i1.ip, 1);
}
differential!(internal_network_has_no_default_route_and_is_isolated);
