//! The user-facing IPv6 surface of dual-stack networks (README "IPv6 (dual
//! stack)"), real packets on both datapaths: AAAA and `ip6.arpa` answers of
//! the embedded DNS and ping6 by name, IPv6 on `network connect`
//! attachments (address, route, release, restart), published ports over
//! IPv6 (the kernel's DNAT on both datapaths) from the outside, the node
//! and other endpoints, and a real dockerd's `--ipv6` network on the
//! datapath driver.

use std::time::Duration;

use datapath::testbed::topology::{self, NODE_UPLINK_IP6, OUTSIDE_IP6};
use datapath_tests::cni::{runtime_netns, CniNet};
use datapath_tests::docker::{plugin_node, Dockerd};
use datapath_tests::net::{ns_cmd, python_in};
use datapath_tests::node::{AgentOpts, Node, UPLINK_DEV, UPLINK_IP};
use datapath_tests::outside::{http_clients, udp_echo_server};
use datapath_tests::proc::{run_timeout, show, stdout_str};
use datapath_tests::{assert_ping, both_datapaths, exec_in, kernel_test, py, Datapath};
use serde_json::{json, Value};

use crate::ipv6::http_server;
use crate::ports::{blob, connect, fetch};
use crate::survival::{pinned_u32_keys, MAPS_DIR};

const Q_TIMEOUT: Duration = Duration::from_secs(60);

/// One query from `ns` to its embedded server: `rcode N` and the answers.
fn dig(ns: &str, proto: &str, name: &str, qtype: &str) -> Vec<String> {
    let out = python_in(ns, py::DNS_CLIENT, &["dns", proto, "127.0.0.11", name, qtype], Q_TIMEOUT);
    assert!(out.status.success(), "DNS client in {ns} for {name} {qtype} over {proto}:\n{}", show(&out));
    stdout_str(&out).lines().map(String::from).collect()
}

/// The `ip6.arpa` name of an IPv6 address.
fn arpa6(ip: &str) -> String {
    let ip: std::net::Ipv6Addr = ip.parse().expect("an IPv6 address");
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
    format!("{}.ip6.arpa", nibbles.join("."))
}

/// `ping -6` by name from `ns` (the name resolved through the namespace's
/// resolv.conf, i.e. the embedded DNS): every reply of `count`.
#[track_caller]
fn assert_ping6_name(ns: &str, name: &str, count: u32) {
    let c = count.to_string();
    let out = run_timeout(
        &mut ns_cmd(ns, &["ping", "-6", "-n", "-c", &c, "-W", "1", "-i", "0.2", name]),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success() && stdout_str(&out).contains(&format!("{count} received")),
        "ping -6 {name} from {ns}:\n{}",
        show(&out)
    );
}

/// `endpoint inspect`'s attachment on `network`.
fn attachment(node: &mut Node, endpoint: &str, network: &str) -> Option<Value> {
    let v = node.json(&["endpoint", "inspect", endpoint]);
    v["attachments"].as_array().and_then(|a| a.iter().find(|a| a["network"] == network).cloned())
}

/// The global IPv6 addresses of `dev` in `ns` (`ip -j -6 addr`), with
/// whether each is tentative.
fn global6(ns: &str, dev: &str) -> Vec<(String, bool)> {
    let out = exec_in(ns, &["ip", "-j", "-6", "addr", "show", "dev", dev, "scope", "global"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_str(stdout_str(&out).trim()).unwrap_or(Value::Null);
    let infos = v[0]["addr_info"].as_array().cloned().unwrap_or_default();
    infos.iter().filter_map(|a| Some((a["local"].as_str()?.to_string(), a.get("tentative").is_some()))).collect()
}

fn default_route6(ns: &str) -> String {
    stdout_str(&exec_in(ns, &["ip", "-6", "route", "show", "default"])).trim().to_string()
}

both_datapaths! {
/// Names on a dual-stack network answer AAAA with the endpoint's IPv6
/// address there (UDP and TCP, aliases too, TTL 600), A unchanged, PTR for
/// `ip6.arpa`; a name without an IPv6 address on the shared network gets
/// NOERROR with no answer (Docker's); `ping -6 NAME` reaches the peer.
fn dns_aaaa_and_ping6_by_name(dp) {
    let mut node = Node::on(dp);
    let (dual, four) = (node.ep("dual"), node.ep("four"));
    node.ok(&["network", "create", &dual, "--subnet", "10.81.0.0/24", "--ipv6", "--subnet-v6", "fd00:81::/64"]);
    node.ok(&["network", "create", &four, "--subnet", "10.82.0.0/24"]);
    let (an, bn, cn) = (node.ep("a"), node.ep("b"), node.ep("c"));
    node.ok(&["endpoint", "create", &an, "--network", &dual]);
    node.ok(&["endpoint", "create", &bn, "--network", &dual, "--alias", "bee"]);
    let c = node.create_endpoint(&cn, &["--network", &four]);
    let b = node.json(&["endpoint", "inspect", &bn]);
    let (b4, b6) = (b["ip"].as_str().unwrap_or("?").to_string(), b["ip6"].as_str().unwrap_or("?").to_string());
    assert_eq!(b6, "fd00:81::3", "{b}");

    for proto in ["udp", "tcp"] {
        assert_eq!(dig(&an, proto, &bn, "AAAA"), ["rcode 0".to_string(), format!("AAAA {b6} 600")], "{proto}");
        assert_eq!(dig(&an, proto, "BEE.", "AAAA"), ["rcode 0".to_string(), format!("AAAA {b6} 600")], "{proto}");
        assert_eq!(dig(&an, proto, &bn, "A"), ["rcode 0".to_string(), format!("A {b4} 600")], "A unchanged");
    }
    assert_eq!(dig(&an, "udp", &arpa6(&b6), "PTR"), ["rcode 0".to_string(), format!("PTR {bn}.{dual}.")]);
    // a on the IPv4-only network too: there it has no AAAA.
    node.ok(&["network", "connect", &four, &an]);
    assert_eq!(dig(&cn, "udp", &an, "AAAA"), ["rcode 0"], "no IPv6 address on the shared network: empty");
    assert_eq!(dig(&cn, "udp", &an, "A").len(), 2, "but its A");
    assert_eq!(dig(&an, "udp", &cn, "AAAA"), ["rcode 0"]);
    assert!(dig(&an, "udp", &cn, "A").contains(&format!("A {} 600", c.ip)));

    // getaddrinfo through the namespace's resolv.conf, then real packets.
    let out = exec_in(&an, &["getent", "ahostsv6", &bn]);
    assert!(stdout_str(&out).contains(&b6), "getent ahostsv6 {bn}:\n{}", show(&out));
    assert_ping6_name(&an, &bn, 3);
    assert_ping6_name(&bn, &an, 2);
    assert_ping6_name(&an, "bee", 2);
}
}

both_datapaths! {
/// `network connect` to a dual-stack network: the attachment gets an IPv6
/// address (the lowest free one, or `--ip6`) usable at once on its
/// interface, the IPv6 default route stays the first network's, ping6 to a
/// peer there both ways; eBPF: the attachment's host veth is in
/// `ENDPOINTS6`. `--ip6` taken or on an IPv4-only network is refused;
/// disconnect frees the address (another endpoint takes it); an agent
/// restart keeps the attachment's IPv6 working.
fn connect_dual_stack_attachment(dp) {
    let mut node = Node::on(dp);
    let (one, two, four) = (node.ep("one"), node.ep("two"), node.ep("four"));
    node.ok(&["network", "create", &one, "--subnet", "10.83.0.0/24", "--ipv6", "--subnet-v6", "fd00:83::/64"]);
    node.ok(&["network", "create", &two, "--subnet", "10.84.0.0/24", "--ipv6", "--subnet-v6", "fd00:84::/64"]);
    node.ok(&["network", "create", &four, "--subnet", "10.85.0.0/24"]);
    let (xn, yn, zn) = (node.ep("x"), node.ep("y"), node.ep("z"));
    node.ok(&["endpoint", "create", &xn, "--network", &one]);
    node.ok(&["endpoint", "create", &yn, "--network", &two]);
    node.ok(&["endpoint", "create", &zn, "--network", &four]);

    let err = node.err(&["network", "connect", &two, &zn, "--ip6", "fd00:84::2"]);
    assert!(err.contains("in use") || err.contains("taken"), "y's address: {err}");
    let err = node.err(&["network", "connect", &four, &xn, "--ip6", "fd00:83::9"]);
    assert!(err.contains("no IPv6 subnet"), "{err}");
    assert!(attachment(&mut node, &xn, &four).is_none(), "a refused connect leaves nothing");

    let out = node.ok(&["network", "connect", &two, &xn]);
    let att = attachment(&mut node, &xn, &two).unwrap_or_else(|| panic!("no attachment on {two}"));
    assert_eq!((att["ip6"].as_str(), att["prefix_len6"].as_u64()), (Some("fd00:84::3"), Some(64)), "{att}");
    assert_eq!(out.trim(), format!("{xn} eth1 {} fd00:84::3", att["ip"].as_str().unwrap_or("?")));
    assert_eq!(global6(&xn, "eth1"), [("fd00:84::3".to_string(), false)], "usable at once, not tentative");
    assert!(default_route6(&xn).contains("via fd00:83::1 dev eth0"), "the first network's: {}", default_route6(&xn));
    let v = node.inspect_network(&two);
    let listed = v["endpoints"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|e| e["name"] == xn.as_str() && e["ip6"] == "fd00:84::3"), "network inspect: {v}");

    assert_ping(&xn, "fd00:84::2", 3);
    assert_ping(&yn, "fd00:84::3", 3);
    assert_ping(&xn, "fd00:84::1", 2);
    let host = att["host_ifindex"].as_u64().unwrap_or(0);
    if dp.is_ebpf() {
        let keys = pinned_u32_keys(&node.bpffs.join(MAPS_DIR).join("ENDPOINTS6"));
        assert!(keys.contains(&host), "attachment {host} in ENDPOINTS6: {keys:?}");
    }

    // The node's v4-only link gets no IPv6 address; its own v6 stays.
    node.ok(&["network", "connect", &four, &xn]);
    assert_eq!(attachment(&mut node, &xn, &four).map(|a| a["ip6"].is_null()), Some(true));

    node.restart_agent();
    assert_ping(&xn, "fd00:84::2", 2);
    assert_ping(&yn, "fd00:84::3", 2);
    if dp.is_ebpf() {
        let keys = pinned_u32_keys(&node.bpffs.join(MAPS_DIR).join("ENDPOINTS6"));
        assert!(keys.contains(&host), "attachment {host} in ENDPOINTS6 after the restart: {keys:?}");
    }

    node.ok(&["network", "disconnect", &two, &xn]);
    assert!(attachment(&mut node, &xn, &two).is_none());
    if dp.is_ebpf() {
        let keys = pinned_u32_keys(&node.bpffs.join(MAPS_DIR).join("ENDPOINTS6"));
        assert!(!keys.contains(&host), "{host} left ENDPOINTS6: {keys:?}");
    }
    // Its address is free again: z takes it explicitly.
    let out = node.ok(&["network", "connect", &two, &zn, "--ip6", "fd00:84::3"]);
    assert!(out.trim().ends_with(" fd00:84::3"), "{out}");
    assert_eq!(global6(&zn, "eth1"), [("fd00:84::3".to_string(), false)]);
    assert_ping(&yn, "fd00:84::3", 2);
    assert_ping(&zn, "fd00:84::2", 2);
    // z's first network is IPv4-only: its IPv6 default route is two's.
    assert!(default_route6(&zn).contains("via fd00:84::1 dev eth1"), "{}", default_route6(&zn));
}
}

/// UDP request/response from `ns` to IP:PORT; the reply must come from IP.
#[track_caller]
fn udp_roundtrip(node: &Node, ns: &str, ip: &str, port: u16) {
    let msg = format!("{}-{port}", node.prefix);
    let out = python_in(ns, py::UDP_CLIENT, &[&node.prefix, ip, &port.to_string(), &msg], Duration::from_secs(20));
    assert!(out.status.success(), "UDP client in {ns}:\n{}", show(&out));
    let res: Value = serde_json::from_str(stdout_str(&out).trim()).expect("client JSON");
    assert_eq!(
        (res[0][1].as_str(), res[0][2].as_str()),
        (Some(format!("echo:{msg}").as_str()), Some(ip)),
        "UDP through the published port {ip}:{port} from {ns}: {res}"
    );
}

both_datapaths! {
/// An endpoint of a dual-stack network publishes `-p 8080:80`, `-p
/// 5353:5300/udp`, `-p [NODE_V6]:8081:81` (IPv6 only) and `-p
/// UPLINK_V4:8082:82` (IPv4 only). Over IPv6 (the kernel's DNAT on both
/// datapaths): the outside fetches the content intact from the node's
/// IPv6 uplink address (the server sees the outside's own address), UDP
/// echoes through; the node itself, an endpoint of another dual-stack
/// network and the endpoint itself (hairpin) reach it too. IPv4 still works as before. An IPv6-bound port
/// does not answer on IPv4 nor an IPv4-bound one on IPv6; `endpoint rm`
/// withdraws the IPv6 ports.
fn published_ports_over_ipv6(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    topology::uplink_ipv6_blocking(&node.name, &out, UPLINK_DEV).expect("IPv6 on the uplink");
    let (up6, out6) = (NODE_UPLINK_IP6.to_string(), OUTSIDE_IP6.to_string());
    let (net, other) = (node.ep("pub6"), node.ep("cli6"));
    node.ok(&["network", "create", &net, "--subnet", "10.86.0.0/24", "--ipv6", "--subnet-v6", "fd00:86::/64"]);
    node.ok(&["network", "create", &other, "--subnet", "10.87.0.0/24", "--ipv6", "--subnet-v6", "fd00:87::/64"]);
    let web = node.ep("web");
    let v6_only = format!("[{up6}]:8081:81");
    let v4_only = format!("{UPLINK_IP}:8082:82");
    node.ok(&["endpoint", "create", &web, "--network", &net, "-p", "8080:80", "-p", "5353:5300/udp", "-p", &v6_only, "-p", &v4_only]);
    let c = node.ep("c");
    node.ok(&["endpoint", "create", &c, "--network", &other]);
    let ls = node.ok(&["endpoint", "ls"]);
    assert!(ls.contains(&format!("[{up6}]:8081->81/tcp")), "{ls}");

    const LEN: usize = 200 * 1024;
    let sha = blob(&node, "six.bin", LEN);
    let www = node.dir.join("www");
    let server = http_server(&web, 80, &www);
    let _s81 = http_server(&web, 81, &www);
    let _s82 = http_server(&web, 82, &www);
    let _udp = udp_echo_server(&node, &web, "::", 5300); // 53 is the embedded DNS's

    let url = |ip: &str, port: u16| format!("http://[{ip}]:{port}/six.bin");
    fetch(&node, &out, &url(&up6, 8080), LEN, &sha);
    assert_eq!(http_clients(&server), vec![out6.clone()], "the server must see the outside client itself");
    udp_roundtrip(&node, &out, &up6, 5353);
    fetch(&node, &out, &url(&up6, 8081), LEN, &sha);
    // IPv4 unchanged.
    fetch(&node, &out, &format!("http://{UPLINK_IP}:8080/six.bin"), LEN, &sha);
    udp_roundtrip(&node, &out, UPLINK_IP, 5353);
    fetch(&node, &out, &format!("http://{UPLINK_IP}:8082/six.bin"), LEN, &sha);
    // Bound to one family: not on the other.
    assert_ne!(connect(&node, &out, UPLINK_IP, 8081), "ok", "an IPv6-bound port answered on IPv4");
    assert_ne!(connect(&node, &out, &up6, 8082), "ok", "an IPv4-bound port answered on IPv6");

    // The node itself, and an endpoint of another network.
    fetch(&node, &node.name, &url(&up6, 8080), LEN, &sha);
    fetch(&node, &c, &url(&up6, 8080), LEN, &sha);
    udp_roundtrip(&node, &c, &up6, 5353);
    // Hairpin: the publishing endpoint through the node's address.
    fetch(&node, &web, &url(&up6, 8080), LEN, &sha);
    let clients = http_clients(&server);
    assert_eq!(clients.len(), 5, "outside v6, outside v4, node, other endpoint, hairpin: {clients:?}");
    assert_eq!(clients[4], "fd00:86::1", "hairpin is masqueraded to the gateway: {clients:?}");

    node.ok(&["endpoint", "rm", &web]);
    assert_ne!(connect(&node, &out, &up6, 8080), "ok", "the IPv6 port answered after rm");
    let rules = stdout_str(&exec_in(&node.name, &["nft", "list", "table", "ip6", "datapath"]));
    assert!(!rules.contains("dnat"), "IPv6 DNAT rules left after rm:\n{rules}");
}
}

/// A real dockerd (in the node namespace, the agent's plugin as driver
/// `datapath`): `docker network create -d datapath --ipv6 --subnet V4
/// --subnet V6` makes a dual-stack datapath network with Docker's IPv6
/// pool and gateway; two busybox containers get Docker's IPv6 addresses
/// (the same as the agent's endpoints), ping6 each other and the outside's
/// IPv6 address (masqueraded: the outside has no route to the subnet), and
/// have the IPv6 default route via the network's gateway; a container's
/// `-p 8080:80` answers the outside at the node's IPv6 address and the
/// container itself (hairpin), and goes with `docker rm`.
#[test]
fn docker_ipv6_network() {
    kernel_test!();
    let (mut node, plugin) =
        plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(Datapath::Ebpf) });
    let outside = node.outside().to_string();
    topology::uplink_ipv6_blocking(&node.name, &outside, UPLINK_DEV).expect("IPv6 on the uplink");
    let docker = Dockerd::start(&node, &plugin);
    const IMAGE: &str = "dpt-busybox:1";
    docker.import_busybox(IMAGE);
    docker.ok(&[
        "network",
        "create",
        "-d",
        "datapath",
        "--ipv6",
        "--subnet",
        "10.40.0.0/24",
        "--subnet",
        "fd00:40::/64",
        "web6",
    ]);
    let nets = node.networks();
    assert_eq!(nets.len(), 1, "{nets:?}");
    let v = node.inspect_network(nets[0]["name"].as_str().unwrap_or("?"));
    assert_eq!((v["enable_ipv6"].as_bool(), v["subnet_v6"].as_str()), (Some(true), Some("fd00:40::/64")), "{v}");
    let gw6 = v["gateway_v6"].as_str().unwrap_or("?").to_string();
    for c in ["c1", "c2"] {
        docker.ok(&["run", "-d", "--name", c, "--network", "web6", IMAGE, "sleep", "3600"]);
    }
    let ip6 = |c: &str| {
        docker
            .ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", c])
            .trim()
            .to_string()
    };
    let (a6, b6) = (ip6("c1"), ip6("c2"));
    assert!(a6.starts_with("fd00:40::") && b6.starts_with("fd00:40::") && a6 != b6, "{a6} {b6}");
    let mut agent6: Vec<String> = node.endpoints().iter().filter_map(|e| e["ip6"].as_str().map(String::from)).collect();
    agent6.sort();
    let mut docker6 = vec![a6.clone(), b6.clone()];
    docker6.sort();
    assert_eq!(agent6, docker6, "the agent's endpoints have Docker's IPv6 addresses");
    let route = docker.ok(&["exec", "c1", "ip", "-6", "route", "show", "default"]);
    assert!(route.contains(&format!("via {gw6}")), "IPv6 default route via the gateway: {route}");
    docker.ok(&["exec", "c1", "ping", "-6", "-c", "2", "-W", "5", &b6]);
    docker.ok(&["exec", "c2", "ping", "-6", "-c", "2", "-W", "5", &a6]);
    docker.ok(&["exec", "c1", "ping", "-6", "-c", "2", "-W", "5", &OUTSIDE_IP6.to_string()]);

    // `-p 8080:80`: published over IPv6 too (the kernel's DNAT), from the
    // outside and by hairpin from the container itself.
    const LEN: usize = 100 * 1024;
    let sha = blob(&node, "d6.bin", LEN);
    let www = node.dir.join("www");
    std::fs::write(www.join("hello.txt"), "hello over IPv6\n").expect("write hello.txt");
    let volume = format!("{}:/www", www.display());
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "web6",
        "-p",
        "8080:80",
        "-v",
        &volume,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let up6 = NODE_UPLINK_IP6.to_string();
    fetch(&node, &outside, &format!("http://[{up6}]:8080/d6.bin"), LEN, &sha);
    let got = docker.ok(&["exec", "web", "wget", "-q", "-O", "-", &format!("http://[{up6}]:8080/hello.txt")]);
    assert_eq!(got, "hello over IPv6\n", "hairpin over IPv6");
    docker.ok(&["rm", "-f", "web"]);
    assert_ne!(connect(&node, &outside, &up6, 8080), "ok", "the IPv6 port answered after docker rm");
    docker.ok(&["rm", "-f", "c1", "c2"]);
    assert!(node.endpoints().is_empty(), "{:?}", node.endpoints());
    docker.ok(&["network", "rm", "web6"]);
    assert!(node.networks().is_empty(), "{:?}", node.networks());
    drop(docker);
}

both_datapaths! {
/// `run --ip6`: the command's endpoint has the chosen IPv6 address on its
/// dual-stack network (detached: inspect, `ps -o json`, reachable by ping6;
/// in the foreground: the command sees it on eth0). Refused: an address in
/// use, `--ip6` without a network (`--network host`) or on an IPv4-only
/// network; `stop` frees it.
fn run_with_ip6(dp) {
    let mut node = Node::on(dp);
    let (net, four) = (node.ep("run6"), node.ep("four"));
    node.ok(&["network", "create", &net, "--subnet", "10.88.0.0/24", "--ipv6", "--subnet-v6", "fd00:88::/64"]);
    node.ok(&["network", "create", &four, "--subnet", "10.89.0.0/24"]);
    let (r1, peer) = (node.ep("r1"), node.ep("peer"));
    node.ok(&["run", "-d", "--name", &r1, "--network", &net, "--ip6", "fd00:88::42", "--", "sleep", "600"]);
    assert_eq!(node.json(&["endpoint", "inspect", &r1])["ip6"].as_str(), Some("fd00:88::42"));
    let ps = node.json(&["ps", "-o", "json"]);
    let row = ps.as_array().and_then(|a| a.iter().find(|c| c["name"] == r1.as_str()).cloned()).unwrap_or_default();
    assert_eq!(row["ip6"].as_str(), Some("fd00:88::42"), "{ps}");
    node.ok(&["endpoint", "create", &peer, "--network", &net]);
    assert_ping(&peer, "fd00:88::42", 2);

    let out = node.ok(&["run", "--rm", "--network", &net, "--ip6", "fd00:88::43", "--", "ip", "-6", "addr", "show", "dev", "eth0"]);
    assert!(out.contains("inet6 fd00:88::43/64"), "the command's eth0: {out}");

    let e = node.err(&["run", "--rm", "--network", &net, "--ip6", "fd00:88::42", "--", "true"]);
    assert!(e.contains("in use") || e.contains("taken"), "{e}");
    let e = node.err(&["run", "--rm", "--network", "host", "--ip6", "fd00:88::44", "--", "true"]);
    assert!(e.contains("--ip6 needs a network"), "{e}");
    let e = node.err(&["run", "--rm", "--network", &four, "--ip6", "fd00:88::44", "--", "true"]);
    assert!(e.contains("no IPv6 subnet"), "{e}");

    node.ok(&["stop", &r1]);
    let r2 = node.ep("r2");
    node.ok(&["run", "-d", "--name", &r2, "--network", &net, "--ip6", "fd00:88::42", "--", "sleep", "600"]);
    assert_ping(&peer, "fd00:88::42", 1);
}
}

both_datapaths! {
/// CNI on a dual-stack network (the plugin executed like a runtime): the
/// ADD result lists the IPv6 address on the interface (index 0) with the
/// IPv6 gateway and an IPv6 default route, the address is on the runtime's
/// interface, ping6 between two runtimes' namespaces; CHECK passes, and
/// fails (code 101, saying what) once the IPv6 address or the IPv6 default
/// route is removed by hand, or when prevResult lacks the IPv6 address.
fn cni_dual_stack_add_and_check(dp) {
    const CHECK_FAILED: u64 = 101;
    let mut node = Node::with(AgentOpts { no_default_network: true, ..AgentOpts::on(dp) });
    let net = node.ep("cni6");
    node.ok(&["network", "create", &net, "--subnet", "10.79.0.0/24", "--ipv6", "--subnet-v6", "fd00:79::/64"]);
    let cni = CniNet::new(&node, "dpnet6", &net, "1.1.0");
    let (n1, n2) = (runtime_netns(&node.ep("c1")), runtime_netns(&node.ep("c2")));
    let ns = |p: &std::path::Path| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let (r1, r2) = (cni.add("c1", &n1, "eth0").result(), cni.add("c2", &n2, "eth0").result());
    for (r, want) in [(&r1, "fd00:79::2/64"), (&r2, "fd00:79::3/64")] {
        let ips = r["ips"].as_array().cloned().unwrap_or_default();
        let v6 = ips.iter().find(|ip| ip["address"].as_str().is_some_and(|a| a.contains(':')));
        assert_eq!(v6, Some(&json!({"address": want, "gateway": "fd00:79::1", "interface": 0})), "{r}");
        let routes = r["routes"].as_array().cloned().unwrap_or_default();
        assert!(routes.contains(&json!({"dst": "::/0", "gw": "fd00:79::1"})), "{r}");
    }
    assert_eq!(global6(&ns(&n1), "eth0"), [("fd00:79::2".to_string(), false)]);
    assert!(default_route6(&ns(&n1)).contains("via fd00:79::1"), "{}", default_route6(&ns(&n1)));
    assert_ping(&ns(&n1), "fd00:79::3", 2);
    assert_ping(&ns(&n2), "fd00:79::2", 2);
    cni.check("c1", &n1, "eth0", &r1).silent();
    cni.check("c2", &n2, "eth0", &r2).silent();

    // prevResult without the IPv6 address.
    let mut four_only = r1.clone();
    if let Some(ips) = four_only["ips"].as_array_mut() {
        ips.retain(|ip| !ip["address"].as_str().unwrap_or("").contains(':'));
    }
    let c = cni.check("c1", &n1, "eth0", &four_only);
    assert_eq!(c.code(), CHECK_FAILED, "{}", c.msg());
    // The IPv6 address removed by hand.
    let o = exec_in(&ns(&n1), &["ip", "-6", "addr", "del", "fd00:79::2/64", "dev", "eth0"]);
    assert!(o.status.success(), "{}", show(&o));
    let c = cni.check("c1", &n1, "eth0", &r1);
    assert_eq!(c.code(), CHECK_FAILED, "{}", c.msg());
    assert!(c.msg().contains("fd00:79::2"), "CHECK says what is missing: {}", c.msg());
    // The IPv6 default route removed by hand.
    let o = exec_in(&ns(&n2), &["ip", "-6", "route", "del", "default"]);
    assert!(o.status.success(), "{}", show(&o));
    let c = cni.check("c2", &n2, "eth0", &r2);
    assert_eq!(c.code(), CHECK_FAILED, "{}", c.msg());
    assert!(c.msg().contains("IPv6 default route"), "{}", c.msg());

    cni.del("c1", &n1, "eth0").silent();
    cni.del("c2", &n2, "eth0").silent();
    assert!(node.endpoints().is_empty(), "{:?}", node.endpoints());
}
}
