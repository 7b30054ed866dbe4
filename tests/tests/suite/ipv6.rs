//! Dual-stack networks (`network create --ipv6`, README "IPv6"), real
//! packets on both datapaths: ping6 and a TCP transfer between endpoints,
//! the bridge bypass for IPv6, neighbour discovery, routing through the
//! gateway (hop limit), the outside reached over IPv6 through the
//! masquerade, isolation, `--internal` and `--icc=false` for IPv6, IPv6
//! source and NDP spoofing, malformed IPv6, and the IPAM's bad input
//! through the CLI.
//!
//! On the eBPF datapath `dp_from_ep` checks every IPv6 frame (source, NDP,
//! bounds: the IPv6 drop reasons), delivers IPv6 between endpoints of a
//! network with `bpf_redirect_peer` (`redirect-peer`, the bridge bypassed),
//! answers neighbour solicitations for the gateway and peers itself
//! (`fwd-nd-advert`) and enforces the network policy (the `drop-policy-*`
//! reasons); the rest crosses the bridge and the kernel (`pass-ipv6`, nft
//! `ip6 datapath` rules). The kernel datapath does it all in the kernel and
//! checks nothing of the frames: its spoofed and malformed packets get
//! through (asserted as the documented difference).

use std::time::Duration;

use crate::ports::blob;
use datapath::testbed::topology::{self, NODE_UPLINK_IP6, OUTSIDE_IP6};
use datapath_tests::env::python;
use datapath_tests::frames::hex;
use datapath_tests::net::{exec_in, ip_json, link_stats, ping, ping_opts, python_bg, python_in};
use datapath_tests::net::{ns_cmd, wait_tcp_listen};
use datapath_tests::node::{delta, AgentOpts, Datapath, Node, UPLINK_DEV};
use datapath_tests::outside::http_clients;
use datapath_tests::proc::{show, stdout_str, BgProcess};
use datapath_tests::{assert_ping, both_datapaths, kernel_test, py};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;

/// A dual-stack network on the node's default datapath; returns its name.
pub(crate) fn dual(node: &mut Node, suffix: &str, subnet: &str, subnet6: &str, extra: &[&str]) -> String {
    let name = node.ep(suffix);
    let mut args = vec!["network", "create", &name, "--subnet", subnet, "--ipv6", "--subnet-v6", subnet6];
    args.extend_from_slice(extra);
    node.ok(&args);
    name
}

/// `endpoint create NAME --network NET [EXTRA]`; returns (name, IPv6 address).
pub(crate) fn endpoint6(node: &mut Node, suffix: &str, net: &str, extra: &[&str]) -> (String, String) {
    let name = node.ep(suffix);
    let mut args = vec!["endpoint", "create", &name, "--network", net];
    args.extend_from_slice(extra);
    let out = node.ok(&args);
    let v = node.json(&["endpoint", "inspect", &name]);
    let Some(ip6) = v["ip6"].as_str().map(String::from) else {
        node.fail(format!("endpoint {name} of dual-stack network {net} has no ip6: {v}"));
    };
    assert_eq!(out.trim(), format!("{name} {} {ip6}", v["ip"].as_str().unwrap_or("?")), "create output");
    (name, ip6)
}

/// Whether `ns` gets every reply of 2 pings to `ip`.
fn reaches(ns: &str, ip: &str) -> bool {
    let out = ping(ns, ip, 2);
    out.status.success() && stdout_str(&out).contains("2 received")
}

/// Fetches http://[IP]:HTTP_PORT/NAME from `ns`; asserts length and sha256.
fn fetch(node: &Node, ns: &str, ip: &str, name: &str, len: usize, sha: &str) {
    let url = format!("http://[{ip}]:{HTTP_PORT}/{name}");
    let out = python_in(ns, py::HTTP_FETCH, &[&node.prefix, &url], Duration::from_secs(40));
    assert!(out.status.success(), "fetch {url} from {ns}:\n{}", show(&out));
    assert_eq!(stdout_str(&out).trim(), format!("{len} {sha}"), "content fetched by {ns} from {url} differs");
}

/// `python3 -m http.server PORT --bind :: --directory DIR` in `ns`
/// (IPv6, and IPv4 too), ready; it logs each client's address.
pub(crate) fn http_server(ns: &str, port: u16, dir: &std::path::Path) -> BgProcess {
    let (d, p) = (dir.to_string_lossy().into_owned(), port.to_string());
    let mut s =
        BgProcess::spawn(ns_cmd(ns, &[python(), "-u", "-m", "http.server", &p, "--bind", "::", "--directory", &d]));
    if !wait_tcp_listen(ns, port, Duration::from_secs(15)) {
        let (_, err) = s.stop();
        panic!("HTTP server in {ns} never listened on :{port}; stderr: {err}");
    }
    s
}

/// The IPv6 addresses of eth0 in `ns`, with their flags (`ip -j -6 addr`).
fn addrs6(ns: &str) -> Vec<Value> {
    let out = exec_in(ns, &["ip", "-j", "-6", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_str(stdout_str(&out).trim()).unwrap_or(Value::Null);
    v[0]["addr_info"].as_array().cloned().unwrap_or_default()
}

both_datapaths! {
/// Two endpoints of a dual-stack network: each has its IPv6 address
/// (usable at once: not tentative) and its link-local address, a default
/// route via the IPv6 gateway; ping6 between them and to the gateway, and
/// an HTTP transfer over IPv6 with its content checked. eBPF: the frames
/// between the endpoints were delivered with `bpf_redirect_peer`
/// (`redirect-peer` grew), those to the gateway went to the bridge
/// (`pass-ipv6`); kernel: no eBPF counter moves.
fn ipv6_between_endpoints(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.61.0.0/24", "fd00:61::/64", &[]);
    let v = node.json(&["network", "inspect", &net]);
    assert_eq!((v["enable_ipv6"].as_bool(), v["subnet_v6"].as_str(), v["gateway_v6"].as_str()),
        (Some(true), Some("fd00:61::/64"), Some("fd00:61::1")), "{v}");
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    assert_eq!((a6.as_str(), b6.as_str()), ("fd00:61::2", "fd00:61::3"));
    let addrs = addrs6(&a);
    let global = addrs.iter().find(|x| x["local"] == "fd00:61::2").unwrap_or_else(|| panic!("{addrs:?}"));
    assert!(global.get("tentative").is_none() && global["prefixlen"] == 64, "usable at once: {global}");
    assert!(addrs.iter().any(|x| x["scope"] == "link"), "the link-local address stays: {addrs:?}");
    let routes = stdout_str(&exec_in(&a, &["ip", "-6", "route", "show", "default"]));
    assert!(routes.contains("via fd00:61::1"), "IPv6 default route: {routes}");

    let s0 = node.stats();
    assert_ping(&a, &b6, 3);
    assert_ping(&b, &a6, 3);
    assert_ping(&a, "fd00:61::1", 2);
    let sha = blob(&node, "six", 300_000);
    let www = node.dir.join("www");
    let _server = http_server(&b, HTTP_PORT, &www);
    fetch(&node, &a, &b6, "six", 300_000, &sha);
    let s1 = node.stats();
    let passed = delta(&s0, &s1, "pass-ipv6").0;
    let redirected = delta(&s0, &s1, "redirect-peer").0;
    if dp.is_ebpf() {
        // 12 echoes between the endpoints and the TCP segments; 2 echo
        // requests to the gateway.
        assert!(redirected >= 12 + 6, "IPv6 between endpoints with redirect_peer: {redirected}");
        assert!(passed >= 2, "IPv6 to the gateway through the bridge: {passed}");
    } else {
        assert_eq!((passed, redirected), (0, 0), "no eBPF program on the kernel datapath");
    }
    for r in ["drop-spoofed-ip6", "drop-spoofed-ndp", "drop-bad-ipv6-header", "drop-ipv6-ext-chain", "drop-ethertype"] {
        assert_eq!(delta(&s0, &s1, r).0, 0, "{r}: nothing of a well-behaved endpoint is dropped");
    }
}
}

both_datapaths! {
/// An endpoint of a dual-stack network reaches an outside namespace over
/// IPv6 through the masquerade: the outside (which has no route back to
/// the endpoint's subnet) sees only the node's IPv6 uplink address, and
/// the content arrives intact. IPv6 forwarding is on in the node while the
/// network exists and put back when it goes.
fn ipv6_masquerade_to_the_outside(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let outside = node.outside().to_string();
    topology::uplink_ipv6_blocking(&node.name, &outside, UPLINK_DEV).expect("IPv6 on the uplink");
    let fwd = |node: &Node| {
        stdout_str(&exec_in(&node.name, &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])).trim().to_string()
    };
    assert_eq!(fwd(&node), "0", "the node starts without IPv6 forwarding");
    let net = dual(&mut node, "net", "10.62.0.0/24", "fd00:62::/64", &[]);
    assert_eq!(fwd(&node), "1", "IPv6 forwarding on while a dual-stack network routes out");
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let sha = blob(&node, "out6", 200_000);
    let server = http_server(&outside, HTTP_PORT, &node.dir.join("www"));
    assert_ping(&a, &OUTSIDE_IP6.to_string(), 2);
    fetch(&node, &a, &OUTSIDE_IP6.to_string(), "out6", 200_000, &sha);
    let clients = http_clients(&server);
    assert!(!clients.is_empty(), "the outside served nothing");
    assert!(clients.iter().all(|c| *c == NODE_UPLINK_IP6.to_string()),
        "the outside must see only the node's IPv6 uplink address, not {a6}: {clients:?}");
    node.ok(&["endpoint", "rm", &a]);
    node.ok(&["network", "rm", &net]);
    assert_eq!(fwd(&node), "0", "IPv6 forwarding put back");
}
}

both_datapaths! {
/// Isolation, `--internal` and `--icc=false` for IPv6: endpoints of
/// different dual-stack networks cannot reach each other nor the other
/// network's gateway; an internal network's endpoints reach each other but
/// nothing beyond their subnet (no IPv6 default route; with a route added
/// by hand, the packets are dropped); with icc=false the endpoints of a
/// network cannot reach each other but do reach their gateway. Controls in
/// the same runs show the pings themselves work. eBPF: each refused echo
/// request is dropped in `dp_from_ep` and counted under its policy reason
/// (exactly); kernel: the nft rules drop them, no eBPF counter moves.
fn ipv6_isolation_internal_icc(dp) {
    let mut node = Node::on(dp);
    let n1 = dual(&mut node, "n1", "10.63.1.0/24", "fd00:63:1::/64", &[]);
    let n2 = dual(&mut node, "n2", "10.63.2.0/24", "fd00:63:2::/64", &[]);
    let ni = dual(&mut node, "ni", "10.63.3.0/24", "fd00:63:3::/64", &["--internal"]);
    let nc = dual(&mut node, "nc", "10.63.4.0/24", "fd00:63:4::/64", &["--icc=false"]);
    let (a1, _) = endpoint6(&mut node, "a1", &n1, &[]);
    let (b1, b1_6) = endpoint6(&mut node, "b1", &n1, &[]);
    let (a2, a2_6) = endpoint6(&mut node, "a2", &n2, &[]);
    let (i1, _) = endpoint6(&mut node, "i1", &ni, &[]);
    let (_i2, i2_6) = endpoint6(&mut node, "i2", &ni, &[]);
    let (c1, _) = endpoint6(&mut node, "c1", &nc, &[]);
    let (_c2, c2_6) = endpoint6(&mut node, "c2", &nc, &[]);
    let routes = stdout_str(&exec_in(&i1, &["ip", "-6", "route", "show", "default"]));
    assert!(routes.trim().is_empty(), "an internal network's endpoint has no IPv6 default route: {routes}");
    // Controls.
    assert_ping(&a1, &b1_6, 2);
    assert_ping(&i1, &i2_6, 2);
    assert_ping(&i1, "fd00:63:3::1", 2);
    assert_ping(&c1, "fd00:63:4::1", 2);
    // A way out of the internal network, by hand (the address is the
    // outside's, which this node does not have: nothing leaves it anyway).
    let outside = OUTSIDE_IP6.to_string();
    let out = exec_in(&i1, &["ip", "-6", "route", "add", &outside, "via", "fd00:63:3::1"]);
    assert!(out.status.success(), "{}", show(&out));
    let s0 = node.stats();
    let mut wrong = Vec::new();
    for (from, to, what) in [
        (&a1, a2_6.as_str(), "an endpoint of another network"),
        (&a1, "fd00:63:2::1", "another network's gateway"),
        (&a2, b1_6.as_str(), "an endpoint of another network"),
        (&a1, i2_6.as_str(), "an internal network's endpoint"),
        (&i1, b1_6.as_str(), "beyond an internal network"),
        (&i1, outside.as_str(), "beyond an internal network, with a route"),
        (&c1, c2_6.as_str(), "a peer with icc=false"),
    ] {
        if reaches(from, to) {
            wrong.push(format!("{from} reached {to} ({what})"));
        }
    }
    let s1 = node.stats();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // 2 echo requests per refused ping (i1 -> b1 is not even sent: no
    // route).
    let got: Vec<(&str, u64)> = ["drop-policy-isolation", "drop-policy-internal", "drop-policy-icc"]
        .into_iter()
        .map(|r| (r, delta(&s0, &s1, r).0))
        .collect();
    if dp.is_ebpf() {
        assert_eq!(got, [("drop-policy-isolation", 8), ("drop-policy-internal", 2), ("drop-policy-icc", 2)]);
    } else {
        assert_eq!(got, [("drop-policy-isolation", 0), ("drop-policy-internal", 0), ("drop-policy-icc", 0)]);
    }
}
}

/// The (host veth name, MAC) of endpoint `name`.
fn host_side(node: &mut Node, name: &str) -> (String, [u8; 6]) {
    let v = node.json(&["endpoint", "inspect", name]);
    (v["host_ifname"].as_str().expect("host_ifname").to_string(), mac_of(&v))
}

/// The MAC of network `net`'s bridge (its IPv6 gateway) in the node.
fn bridge_mac(node: &mut Node, net: &str) -> String {
    let v = node.json(&["network", "inspect", net]);
    let br = v["bridge"].as_str().expect("bridge").to_string();
    let l = ip_json(&["-n", &node.name, "link", "show", "dev", &br]);
    l[0]["address"].as_str().expect("bridge MAC").to_string()
}

/// The MAC (`lladdr`) of `ip`'s neighbour entry in `ns`, if any.
fn neighbour_mac(ns: &str, ip: &str) -> Option<String> {
    let v = ip_json(&["-n", ns, "-6", "neigh", "show", ip]);
    v[0]["lladdr"].as_str().map(String::from)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

both_datapaths! {
/// The bridge bypass for IPv6: echoes (and a TCP transfer) between two
/// endpoints enter the sender's host veth (RX) but are never transmitted
/// by the receiver's host veth (TX), and are counted as `redirect-peer`.
/// Kernel datapath (documented difference: no bypass): everything crosses
/// the bridge (TX on the host veths), `redirect-peer` stays at 0.
fn ipv6_bypasses_host_veth(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.69.0.0/24", "fd00:69::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    let ((ha, _), (hb, _)) = (host_side(&mut node, &a), host_side(&mut node, &b));
    // Warm up: neighbours resolved both ways, so only the echoes count.
    assert_ping(&a, &b6, 2);
    assert_ping(&b, &a6, 1);
    let sha = blob(&node, "bypass6", 1_000_000);
    let _server = http_server(&b, HTTP_PORT, &node.dir.join("www"));

    // The noise that does cross the bridge is time-bound (MLD reports,
    // router solicitations of the bridge), the echoes are not.
    const N: u64 = 200;
    const SLACK: u64 = N / 5;
    let s0 = node.stats();
    let (ha0, hb0) = (link_stats(&node.name, &ha), link_stats(&node.name, &hb));
    let out = ping_opts(&a, &b6, N as u32, "0.01");
    assert!(out.status.success() && stdout_str(&out).contains(&format!("{N} received")), "{}", show(&out));
    fetch(&node, &a, &b6, "bypass6", 1_000_000, &sha);
    let s1 = node.stats();
    let (ha1, hb1) = (link_stats(&node.name, &ha), link_stats(&node.name, &hb));
    let rp = delta(&s0, &s1, "redirect-peer").0;
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let (arx, atx, brx, btx) = (
        d(ha0.rx_packets, ha1.rx_packets),
        d(ha0.tx_packets, ha1.tx_packets),
        d(hb0.rx_packets, hb1.rx_packets),
        d(hb0.tx_packets, hb1.tx_packets),
    );
    let summary = format!("host veth A: rx +{arx} tx +{atx}; host veth B: rx +{brx} tx +{btx}; redirect-peer +{rp}");
    let rtt = stdout_str(&out).lines().find(|l| l.starts_with("rtt")).unwrap_or_default().to_string();
    eprintln!("{summary}; ping6 {rtt}");
    // Positive controls: the packets did enter the host veths.
    assert!(arx >= N && brx >= N, "the echoes did not enter the host veths? {summary}");
    if !dp.is_ebpf() {
        assert!(atx >= N && btx >= N, "kernel datapath: the echoes cross the bridge: {summary}");
        assert_eq!(rp, 0, "kernel datapath counted redirect-peer: {summary}");
        return;
    }
    assert!(btx <= SLACK, "echo requests and the transfer went out of B's host veth: {summary}");
    assert!(atx <= SLACK, "echo replies and the transfer went out of A's host veth: {summary}");
    assert!(rp >= 2 * N + 10, "redirect-peer grew by less than {}: {summary}", 2 * N + 10);
}
}

both_datapaths! {
/// Neighbour discovery: with cold neighbour tables, an endpoint's
/// solicitations for a peer and for the IPv6 gateway resolve to the peer's
/// MAC and the bridge's, and both directions work. Then 10 times: A's
/// neighbour table flushed, one echo to B (a solicitation each time).
/// eBPF (documented difference): the solicitations are answered in
/// `dp_from_ep` (`fwd-nd-advert`), none crosses the bridge, and the echoes
/// are redirected: nothing but noise goes out of B's host veth (TX);
/// kernel: each multicast solicitation and each echo crosses the bridge to
/// B (TX), the peer and the bridge answer themselves.
fn ipv6_neighbour_discovery(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.70.0.0/24", "fd00:70::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    let ((_, amac), (hb, bmac)) = (host_side(&mut node, &a), host_side(&mut node, &b));
    let gw_mac = bridge_mac(&mut node, &net);
    assert_eq!(neighbour_mac(&a, &b6), None, "cold: A knows nothing of B");
    let s0 = node.stats();
    assert_ping(&a, &b6, 1);
    assert_ping(&a, "fd00:70::1", 1);
    let s1 = node.stats();
    assert_eq!(neighbour_mac(&a, &b6), Some(mac_str(bmac)), "A's neighbour entry of B");
    assert_eq!(neighbour_mac(&b, &a6), Some(mac_str(amac)), "B's neighbour entry of A");
    assert_eq!(neighbour_mac(&a, "fd00:70::1"), Some(gw_mac.clone()), "A's neighbour entry of the gateway");
    let answered = delta(&s0, &s1, "fwd-nd-advert").0;

    const N: u64 = 10;
    let hb0 = link_stats(&node.name, &hb);
    for _ in 0..N {
        let out = exec_in(&a, &["ip", "-6", "neigh", "flush", "dev", "eth0"]);
        assert!(out.status.success(), "{}", show(&out));
        assert_ping(&a, &b6, 1);
    }
    let s2 = node.stats();
    let hb1 = link_stats(&node.name, &hb);
    let (again, btx) = (delta(&s1, &s2, "fwd-nd-advert").0, hb1.tx_packets.saturating_sub(hb0.tx_packets));
    if dp.is_ebpf() {
        // A for B, B for A (to reply), A for the gateway; maybe more for
        // reachability confirmation.
        assert!(answered >= 3, "solicitations answered in eBPF: {answered}");
        assert!(again >= N, "A's solicitations for B answered in eBPF: {again}");
        assert!(btx <= N / 2, "solicitations or echoes crossed the bridge to B: tx +{btx}");
    } else {
        assert_eq!((answered, again), (0, 0), "no eBPF program on the kernel datapath");
        assert!(btx >= 2 * N, "kernel datapath: the solicitations and the echoes cross the bridge to B: tx +{btx}");
    }
}
}

/// `ns` routes `dst` through its network's IPv6 gateway `gw` and takes no
/// redirects (the kernel's router would send one: the way back out is the
/// way in).
fn route_via_gateway(ns: &str, dst: &str, gw: &str) {
    for cmd in [
        vec!["ip", "-6", "route", "add", dst, "via", gw],
        vec!["sysctl", "-qw", "net.ipv6.conf.all.accept_redirects=0"],
        vec!["sysctl", "-qw", "net.ipv6.conf.eth0.accept_redirects=0"],
    ] {
        let out = exec_in(ns, &cmd);
        assert!(out.status.success(), "{cmd:?} in {ns}: {}", show(&out));
    }
}

both_datapaths! {
/// IPv6 between endpoints routed through the gateway's MAC (a route via
/// the gateway on both sides): delivered with the hop limit decremented
/// once each way (the echo replies arrive with 63), as a router would; a
/// hop limit of 1 gets ICMPv6 time exceeded from the gateway. eBPF: the
/// routed echoes go with `redirect-peer` (MACs and hop limit rewritten in
/// eBPF), the expiring one to the bridge (`pass-ipv6`), whose kernel
/// answers; kernel: the node forwards.
fn ipv6_routed_hop_limit(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.71.0.0/24", "fd00:71::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    route_via_gateway(&a, &b6, "fd00:71::1");
    route_via_gateway(&b, &a6, "fd00:71::1");
    let s0 = node.stats();
    let out = exec_in(&a, &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", &b6]);
    let text = stdout_str(&out);
    assert!(out.status.success() && text.contains("3 received"), "{}", show(&out));
    let ttls: Vec<&str> = text.lines().filter_map(|l| l.split("ttl=").nth(1)).collect();
    assert!(ttls.len() == 3 && ttls.iter().all(|t| t.starts_with("63 ")), "hop limit 64 - 1 each way: {text}");
    let s1 = node.stats();
    let out = exec_in(&a, &["ping", "-n", "-c", "1", "-t", "1", "-W", "2", &b6]);
    let text = stdout_str(&out);
    assert!(
        !out.status.success() && text.contains("From fd00:71::1") && text.contains("Time exceeded"),
        "hop limit 1 through the gateway: time exceeded from it: {}",
        show(&out)
    );
    let s2 = node.stats();
    let (rp, passed) = (delta(&s0, &s1, "redirect-peer").0, delta(&s1, &s2, "pass-ipv6").0);
    if dp.is_ebpf() {
        assert!(rp >= 6, "routed echoes with redirect_peer: {rp}");
        assert!(passed >= 1, "the expiring echo to the bridge: {passed}");
    } else {
        assert_eq!((rp, passed), (0, 0), "no eBPF program on the kernel datapath");
    }
}
}

/// The checksum of an upper-layer IPv6 payload (`nh` 17 or 58) over the
/// pseudo-header.
fn sum6(src: &std::net::Ipv6Addr, dst: &std::net::Ipv6Addr, nh: u8, body: &[u8]) -> [u8; 2] {
    let mut data = Vec::new();
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(body.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, nh]);
    data.extend_from_slice(body);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// A raw IPv6 UDP frame from `mac` to `dst_mac` carrying `marker`.
fn udp6_frame(dst_mac: [u8; 6], mac: [u8; 6], src: &str, dst: &str, marker: &str) -> Vec<u8> {
    let payload = marker.as_bytes();
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let mut udp = vec![0x13, 0x88, 0x13, 0x88];
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = sum6(&src, &dst, 17, &udp);
    udp[6..8].copy_from_slice(&c);
    f.extend_from_slice(&udp);
    f
}

/// A neighbour advertisement for `target` with a target link-layer address
/// option `lladdr`, from `mac`/`src` to all nodes, the marker after it.
fn na_frame(mac: [u8; 6], src: &str, target: &str, lladdr: [u8; 6], marker: &str) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let target: std::net::Ipv6Addr = target.parse().unwrap();
    let mut body = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&lladdr);
    // The marker rides in an unknown option (type 250), which receivers skip.
    let mut opt = vec![250, 0];
    opt.extend_from_slice(marker.as_bytes());
    while opt.len() % 8 != 0 {
        opt.push(0);
    }
    opt[1] = (opt.len() / 8) as u8;
    body.extend_from_slice(&opt);
    let all_nodes: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
    let c = sum6(&src, &all_nodes, 58, &body);
    body[2..4].copy_from_slice(&c);
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&"ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&body);
    f
}

fn mac_of(v: &Value) -> [u8; 6] {
    let s = v["mac"].as_str().expect("mac");
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

both_datapaths! {
/// IPv6 source and NDP spoofing from an endpoint (raw frames, so its
/// kernel checks nothing): a packet with another endpoint's source
/// address, a neighbour advertisement claiming another endpoint's address,
/// and one claiming its own address with another MAC. eBPF: dropped in
/// `dp_from_ep` and counted (`drop-spoofed-ip6`, `drop-spoofed-ndp`), the
/// victim sees none, while the same frames with the sender's own identity
/// arrive (control). Kernel: the bridge passes them, the victim sees them
/// (documented difference: the kernel datapath has no IPv6 anti-spoofing,
/// as Docker's bridge).
fn ipv6_spoofing(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.64.0.0/24", "fd00:64::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    let (_c, c6) = endpoint6(&mut node, "c", &net, &[]);
    let (va, vb) = (node.json(&["endpoint", "inspect", &a]), node.json(&["endpoint", "inspect", &b]));
    let (amac, bmac) = (mac_of(&va), mac_of(&vb));
    let prefix = node.prefix.clone();
    let p = &prefix;
    let frames = [
        ("good-udp", udp6_frame(bmac, amac, &a6, &b6, &format!("{p}good-udp"))),
        ("spoof-src", udp6_frame(bmac, amac, &c6, &b6, &format!("{p}spoof-src"))),
        ("good-na", na_frame(amac, &a6, &a6, amac, &format!("{p}good-na"))),
        ("spoof-na-target", na_frame(amac, &a6, &c6, amac, &format!("{p}spoof-na-target"))),
        ("spoof-na-mac", na_frame(amac, &a6, &a6, [0x02, 0x66, 0, 0, 0, 9], &format!("{p}spoof-na-mac"))),
    ];
    let markers: Vec<String> = frames.iter().map(|(m, _)| format!("{p}{m}")).collect();
    let mut args = vec![p.as_str(), "eth0", "3"];
    args.extend(markers.iter().map(String::as_str));
    let sniffer = python_bg(&b, py::SNIFFER, &args);
    assert!(sniffer.wait_line(Duration::from_secs(10), |l| l == "ready").is_some(), "sniffer in {b} not ready");
    let s0 = node.stats();
    let hexes: Vec<String> = frames.iter().map(|(_, f)| hex(f)).collect();
    let mut send = vec![p.as_str(), "eth0"];
    send.extend(hexes.iter().map(String::as_str));
    let out = python_in(&a, py::RAW_SENDER, &send, Duration::from_secs(10));
    assert!(out.status.success(), "raw sender: {}", show(&out));
    let line = sniffer.wait_line(Duration::from_secs(15), |l| l.starts_with('{')).expect("sniffer result");
    let seen: Value = serde_json::from_str(&line).unwrap();
    let s1 = node.stats();
    let got = |m: &str| seen[format!("{p}{m}")].as_u64().unwrap_or(0);
    assert!(got("good-udp") >= 1 && got("good-na") >= 1, "controls must arrive: {seen}");
    if dp.is_ebpf() {
        for m in ["spoof-src", "spoof-na-target", "spoof-na-mac"] {
            assert_eq!(got(m), 0, "{m} must be dropped in eBPF: {seen}");
        }
        assert_eq!(delta(&s0, &s1, "drop-spoofed-ip6").0, 1, "spoofed source counted");
        assert_eq!(delta(&s0, &s1, "drop-spoofed-ndp").0, 2, "spoofed NAs counted");
    } else {
        for m in ["spoof-src", "spoof-na-target", "spoof-na-mac"] {
            assert!(got(m) >= 1, "kernel datapath: no IPv6 anti-spoofing (documented), {m} arrives: {seen}");
        }
    }
}
}

both_datapaths! {
/// `datapath trace --endpoint A` shows A's IPv6 packets: an echo to a
/// peer as delivered (`redirect-peer`, both IPv6 addresses, next header
/// 58, the peer's host veth), a UDP datagram to the gateway with its ports
/// (`[ADDR]:PORT`). Kernel datapath (documented difference: no eBPF
/// program, no traces): the stream stays empty.
fn ipv6_trace(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.73.0.0/24", "fd00:73::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    let b_if = node.json(&["endpoint", "inspect", &b])["host_ifindex"].as_u64().expect("host_ifindex");
    assert_ping(&a, &b6, 1);
    let mut trace = node.cli_bg(&["trace", "--endpoint", &a]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(trace.try_status().is_none(), "`datapath trace` exited early");
    assert_ping(&a, &b6, 3);
    let send = "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); \
                s.bind(('::', 5353)); s.sendto(b'x', ('fd00:73::1', 9999))";
    let out = exec_in(&a, &[python(), "-c", send]);
    assert!(out.status.success(), "{}", show(&out));
    std::thread::sleep(Duration::from_millis(1000));
    let (lines, err) = trace.stop();
    let shown = format!("trace stdout ({} lines):\n{}\nstderr: {err}", lines.len(), lines.join("\n"));
    if !dp.is_ebpf() {
        assert!(lines.is_empty(), "kernel datapath (no eBPF program, so no traces): {shown}");
        return;
    }
    let echo = format!(" {a6} > {b6} proto=58 -> if={b_if}");
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{a} ")) && l.contains("redirect-peer") && l.ends_with(&echo)),
        "no line of {a} with redirect-peer ending in {echo:?}; {shown}"
    );
    let udp = format!(" [{a6}]:5353 > [fd00:73::1]:9999 proto=17");
    assert!(
        lines.iter().any(|l| l.contains("pass-ipv6") && l.ends_with(&udp)),
        "no pass-ipv6 line ending in {udp:?}; {shown}"
    );
}
}

/// A raw IPv6 frame from `mac` to `dst_mac`: next header `nh`, payload
/// length `plen` (whatever `body` is).
fn raw6(dst_mac: [u8; 6], mac: [u8; 6], src: &str, dst: &str, nh: u8, plen: u16, body: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[nh, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(body);
    f
}

both_datapaths! {
/// Malformed IPv6 from an endpoint (raw frames to a peer's MAC): a frame
/// shorter than the fixed header, a payload length beyond the frame, a
/// chain of 7 extension headers (the bound is 6), and an extension header
/// running past the payload. eBPF: each is dropped in `dp_from_ep` and
/// counted (`drop-truncated`, `drop-bad-ipv6-header` twice,
/// `drop-ipv6-ext-chain`), the peer sees none, while a well-formed frame
/// sent with them arrives (control). Kernel (documented difference): no
/// checks of its own, no eBPF counter moves (what the bridge forwards,
/// the peer's stack drops); the control arrives.
fn ipv6_malformed(dp) {
    let mut node = Node::on(dp);
    let net = dual(&mut node, "net", "10.72.0.0/24", "fd00:72::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let (b, b6) = endpoint6(&mut node, "b", &net, &[]);
    let ((_, amac), (_, bmac)) = (host_side(&mut node, &a), host_side(&mut node, &b));
    let prefix = node.prefix.clone();
    let p = &prefix;
    let udp = |marker: &str| {
        let mut u = vec![0x13, 0x88, 0x13, 0x88];
        u.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(marker.as_bytes());
        u
    };
    let long = udp(&format!("{p}long-plen"));
    let mut chain = Vec::new();
    for i in 0..7 {
        chain.extend_from_slice(&[if i == 6 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    chain.extend_from_slice(&udp(&format!("{p}ext-chain")));
    // Destination options claiming (20 + 1) * 8 bytes.
    let mut past = vec![17, 20, 1, 4, 0, 0, 0, 0];
    past.extend_from_slice(&udp(&format!("{p}ext-past")));
    let good = udp6_frame(bmac, amac, &a6, &b6, &format!("{p}good"));
    let frames = [
        ("good", good.clone()),
        ("long-plen", raw6(bmac, amac, &a6, &b6, 17, long.len() as u16 + 100, &long)),
        ("ext-chain", raw6(bmac, amac, &a6, &b6, 60, chain.len() as u16, &chain)),
        ("ext-past", raw6(bmac, amac, &a6, &b6, 60, past.len() as u16, &past)),
    ];
    // 39 of the fixed header's 40 bytes.
    let truncated = good[..14 + 39].to_vec();
    let markers: Vec<String> = frames.iter().map(|(m, _)| format!("{p}{m}")).collect();
    let mut args = vec![p.as_str(), "eth0", "3"];
    args.extend(markers.iter().map(String::as_str));
    let sniffer = python_bg(&b, py::SNIFFER, &args);
    assert!(sniffer.wait_line(Duration::from_secs(10), |l| l == "ready").is_some(), "sniffer in {b} not ready");
    let s0 = node.stats();
    let mut hexes: Vec<String> = frames.iter().map(|(_, f)| hex(f)).collect();
    hexes.push(hex(&truncated));
    let mut send = vec![p.as_str(), "eth0"];
    send.extend(hexes.iter().map(String::as_str));
    let out = python_in(&a, py::RAW_SENDER, &send, Duration::from_secs(10));
    assert!(out.status.success(), "raw sender: {}", show(&out));
    let line = sniffer.wait_line(Duration::from_secs(15), |l| l.starts_with('{')).expect("sniffer result");
    let seen: Value = serde_json::from_str(&line).unwrap();
    let s1 = node.stats();
    let got = |m: &str| seen[format!("{p}{m}")].as_u64().unwrap_or(0);
    assert!(got("good") >= 1, "the control must arrive: {seen}");
    let counted: Vec<(&str, u64)> = ["drop-truncated", "drop-bad-ipv6-header", "drop-ipv6-ext-chain"]
        .into_iter()
        .map(|r| (r, delta(&s0, &s1, r).0))
        .collect();
    if dp.is_ebpf() {
        for m in ["long-plen", "ext-chain", "ext-past"] {
            assert_eq!(got(m), 0, "{m} must be dropped in eBPF: {seen}");
        }
        assert_eq!(counted, [("drop-truncated", 1), ("drop-bad-ipv6-header", 2), ("drop-ipv6-ext-chain", 1)]);
    } else {
        assert_eq!(counted, [("drop-truncated", 0), ("drop-bad-ipv6-header", 0), ("drop-ipv6-ext-chain", 0)]);
    }
}
}

/// IPAM v6 through the CLI: bad input gets a one-line error and makes
/// nothing (no network, no endpoint, no namespace); addresses are unique,
/// released and reused, chosen with `--ip6`; a network without
/// `--subnet-v6` gets a unique-local /64; everything survives an agent
/// restart (persisted).
#[test]
fn ipv6_ipam_bad_input_and_persistence() {
    kernel_test!();
    let mut node = Node::on(Datapath::Ebpf);
    let net = dual(&mut node, "net", "10.65.0.0/24", "fd00:65::/64", &["--gateway-v6", "fd00:65::fe"]);
    let auto = node.ep("auto");
    node.ok(&["network", "create", &auto, "--subnet", "10.66.0.0/24", "--ipv6"]);
    let auto6 = node.inspect_network(&auto)["subnet_v6"].as_str().map(String::from).expect("a v6 subnet");
    let (addr, len) = auto6.split_once('/').expect("a prefix");
    let addr: std::net::Ipv6Addr = addr.parse().expect("an IPv6 prefix");
    assert!(len == "64" && addr.octets()[0] == 0xfd && addr.octets()[8..] == [0; 8], "unique-local /64: {auto6}");
    let v4only = node.ep("v4");
    node.ok(&["network", "create", &v4only, "--subnet", "10.67.0.0/24"]);
    let before = node.networks().len();
    for (args, want) in [
        (vec!["--subnet", "10.68.0.0/24", "--ipv6", "--subnet-v6", "fd00:65::/48"], "overlaps network"),
        (vec!["--subnet", "10.68.0.0/24", "--ipv6", "--subnet-v6", "fe80::/64"], "link-local"),
        (vec!["--subnet", "10.68.0.0/24", "--ipv6", "--subnet-v6", "fd00:68::1/64"], "host bits"),
        (vec!["--subnet", "10.68.0.0/24", "--ipv6", "--subnet-v6", "banana"], "invalid IPv6 subnet"),
        (
            vec!["--subnet", "10.68.0.0/24", "--ipv6", "--subnet-v6", "fd00:68::/64", "--gateway-v6", "fd00:69::1"],
            "not a usable address",
        ),
        (vec!["--subnet", "10.68.0.0/24", "--subnet-v6", "fd00:68::/64"], "need --ipv6"),
    ] {
        let mut a = vec!["network", "create", "x6bad"];
        a.extend(args.iter().copied());
        let err = node.err(&a);
        assert!(err.contains(want), "{a:?}: expected {want:?} in {err:?}");
    }
    assert_eq!(node.networks().len(), before, "a refused create makes no network");
    let (e1, e1_6) = endpoint6(&mut node, "e1", &net, &[]);
    assert_eq!(e1_6, "fd00:65::1", "the gateway is ::fe here, ::1 is free");
    let eps = node.endpoints().len();
    for (suffix, network, ip6, want) in [
        ("bad1", &net, "fd00:65::1", "already in use"),
        ("bad2", &net, "fd00:65::fe", "gateway"),
        ("bad3", &net, "fd00:65::", "subnet-router anycast"),
        ("bad4", &net, "fd00:66::5", "not a usable address"),
        ("bad5", &net, "10.65.0.9", "invalid IPv6 address"),
        ("bad6", &v4only, "fd00:65::9", "no IPv6 subnet"),
    ] {
        let name = node.ep(suffix);
        let err = node.err(&["endpoint", "create", &name, "--network", network, "--ip6", ip6]);
        assert!(err.contains(want), "--ip6 {ip6}: expected {want:?} in {err:?}");
        assert!(!node.netns_exists(&name), "a refused create leaves no namespace ({name})");
    }
    assert_eq!(node.endpoints().len(), eps, "a refused create makes no endpoint");
    let (_e2, e2_6) = endpoint6(&mut node, "e2", &net, &["--ip6", "fd00:65::77"]);
    assert_eq!(e2_6, "fd00:65::77");
    node.ok(&["endpoint", "rm", &e1]);
    let (e3, e3_6) = endpoint6(&mut node, "e3", &net, &[]);
    assert_eq!(e3_6, "fd00:65::1", "a released address is reused");
    node.restart_agent();
    let v = node.json(&["endpoint", "inspect", &e3]);
    assert_eq!(v["ip6"].as_str(), Some("fd00:65::1"), "persisted: {v}");
    assert_eq!(node.inspect_network(&auto)["subnet_v6"].as_str(), Some(auto6.as_str()), "the chosen /64 is persisted");
    let (_e4, e4_6) = endpoint6(&mut node, "e4", &net, &[]);
    assert_eq!(e4_6, "fd00:65::2", "after the restart the taken addresses are still taken");
    assert_ping(&e3, "fd00:65::77", 2);
}
