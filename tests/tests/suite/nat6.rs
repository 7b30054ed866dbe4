//! The IPv6 masquerade (NAT66): on the eBPF datapath `dp_from_ep`
//! translates IPv6 leaving the node itself (`nat6`: `CT6` conntrack,
//! source translation to the uplink's IPv6 address and a NAT port, sent
//! out the uplink) and `dp_from_uplink` translates the replies and ICMPv6
//! errors back; on the kernel datapath nftables' `ip6` masquerade does it.
//! Real packets against an outside namespace reached over IPv6: TCP
//! (content checked), UDP, ping6, the outside seeing only the node's
//! address; ICMPv6 errors (port unreachable, packet too big) reaching the
//! endpoint's socket and route; `--no-masquerade` routing IPv6 as it is;
//! the reply of a connection to a v6 published port (the kernel's DNAT)
//! handed to the kernel on eBPF.

use std::time::Duration;

use crate::ipv6::{dual, endpoint6};
use crate::ports::blob;
use datapath::testbed::topology::{self, NODE_UPLINK_IP6, OUTSIDE_IP6};
use datapath_tests::net::{exec_in, ns_cmd, python_in, wait_tcp_listen};
use datapath_tests::node::{delta, AgentOpts, Datapath, Node, UPLINK_DEV};
use datapath_tests::outside::{http_clients, peers, udp_echo_server};
use datapath_tests::proc::{show, stdout_str, BgProcess};
use datapath_tests::{assert_ping, both_datapaths, kernel_test, py};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5601;

/// argv: TAG IP PORT MSG. Sends MSG (1 s, up to 5 tries) and prints the
/// echo's text and source address, or "none".
const UDP6_CLIENT: &str = r#"
import socket, sys
ip, port, m = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(1)
for _ in range(5):
    s.sendto(m, (ip, port))
    try:
        data, addr = s.recvfrom(4096)
        print(data.decode(), addr[0], flush=True)
        break
    except socket.timeout:
        continue
else:
    print("none", flush=True)
"#;

/// argv: TAG IP PORT. A connected UDP socket sends to IP:PORT (nothing
/// listens there) until the port unreachable comes back as
/// ECONNREFUSED: prints "refused", or "silent" after 5 tries.
const UDP6_REFUSED: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.connect((sys.argv[2], int(sys.argv[3])))
s.settimeout(1)
for _ in range(5):
    try:
        s.send(b"anyone?")
        s.recv(100)
    except ConnectionRefusedError:
        print("refused", flush=True)
        break
    except socket.timeout:
        continue
else:
    print("silent", flush=True)
"#;

/// argv: TAG IP PORT LEN. Sends 3 UDP datagrams of LEN bytes to IP:PORT
/// (PMTU discovery on: never fragmented by the sender beyond the known
/// path MTU), 1 s apart.
const UDP6_BIG: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(3):
    try:
        s.sendto(b"x" * int(sys.argv[4]), (sys.argv[2], int(sys.argv[3])))
    except OSError as e:
        print("send:", e, flush=True)
    time.sleep(1)
print("sent", flush=True)
"#;

/// A node with an uplink, IPv6 on it and on the outside; returns (node,
/// outside namespace).
fn node6(dp: Datapath) -> (Node, String) {
    let node = Node::with(AgentOpts::with_uplink(dp));
    let outside = node.outside().to_string();
    topology::uplink_ipv6_blocking(&node.name, &outside, UPLINK_DEV).expect("IPv6 on the uplink");
    (node, outside)
}

/// `python3 -m http.server PORT --bind ::` in `ns`, ready.
fn http6_server(ns: &str, port: u16, dir: &std::path::Path) -> BgProcess {
    let (d, p) = (dir.to_string_lossy().into_owned(), port.to_string());
    let py = datapath_tests::env::python();
    let mut s = BgProcess::spawn(ns_cmd(ns, &[py, "-u", "-m", "http.server", &p, "--bind", "::", "--directory", &d]));
    if !wait_tcp_listen(ns, port, Duration::from_secs(15)) {
        let (_, err) = s.stop();
        panic!("HTTP server in {ns} never listened on :{port}; stderr: {err}");
    }
    s
}

/// Fetches http://[IP]:PORT/NAME from `ns`; asserts length and sha256.
fn fetch(node: &Node, ns: &str, ip: &str, port: u16, name: &str, len: usize, sha: &str) {
    let url = format!("http://[{ip}]:{port}/{name}");
    let out = python_in(ns, py::HTTP_FETCH, &[&node.prefix, &url], Duration::from_secs(40));
    assert!(out.status.success(), "fetch {url} from {ns}:\n{}", show(&out));
    assert_eq!(stdout_str(&out).trim(), format!("{len} {sha}"), "content fetched by {ns} from {url} differs");
}

/// The `conntrack ls` flows whose original source is `src`.
fn flows_of<'a>(flows: &'a [Value], src: &str) -> Vec<&'a Value> {
    flows.iter().filter(|f| f["original"]["src"] == src).collect()
}

both_datapaths! {
/// An endpoint of a dual-stack network reaches the outside over IPv6
/// through the masquerade: an HTTP transfer (content checked), a UDP
/// echo and ping6; the outside sees only the node's IPv6 uplink address.
/// eBPF: the translation was eBPF's (`nat-translated` and
/// `nat-reverse-translated` grew by at least the packets exchanged,
/// `conntrack ls` holds the tcp, udp and icmpv6 flows with their IPv6
/// tuples, translated to the uplink address and the very port the UDP
/// server saw); kernel: no eBPF counter or flow.
fn nat6_tcp_udp_ping_to_the_outside(dp) {
    let (mut node, outside) = node6(dp);
    let net = dual(&mut node, "net", "10.65.0.0/24", "fd00:65::/64", &[]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let sha = blob(&node, "nat6", 400_000);
    let server = http6_server(&outside, HTTP_PORT, &node.dir.join("www"));
    let udp = udp_echo_server(&node, &outside, "::", UDP_PORT);
    let s0 = node.stats();
    assert_ping(&a, &OUTSIDE_IP6.to_string(), 3);
    fetch(&node, &a, &OUTSIDE_IP6.to_string(), HTTP_PORT, "nat6", 400_000, &sha);
    let msg = format!("{}-udp6", node.prefix);
    let out = python_in(&a, UDP6_CLIENT, &[&node.prefix, &OUTSIDE_IP6.to_string(), &UDP_PORT.to_string(), &msg],
        Duration::from_secs(20));
    assert_eq!(stdout_str(&out).trim(), format!("echo:{msg} {OUTSIDE_IP6}"), "UDP over IPv6:\n{}", show(&out));
    let s1 = node.stats();

    let clients = http_clients(&server);
    assert!(!clients.is_empty(), "the outside served nothing");
    assert!(clients.iter().all(|c| *c == NODE_UPLINK_IP6.to_string()),
        "the outside must see only {NODE_UPLINK_IP6}, not {a6}: {clients:?}");
    let peers = peers(&udp);
    assert!(!peers.is_empty() && peers.iter().all(|(ip, _)| *ip == NODE_UPLINK_IP6.to_string()),
        "UDP peers seen by the outside: {peers:?}");

    let flows = node.conntrack(None);
    let mine = flows_of(&flows, &a6);
    let (out_pk, back_pk) = (delta(&s0, &s1, "nat-translated").0, delta(&s0, &s1, "nat-reverse-translated").0);
    if dp.is_ebpf() {
        // 3 echo requests, the UDP request, the TCP handshake and request
        // at least; the replies: 3 echo replies, the UDP echo and the
        // 400 kB body (hundreds of segments, fewer with GRO).
        assert!(out_pk >= 8, "nat-translated grew by {out_pk}");
        assert!(back_pk >= 8, "nat-reverse-translated grew by {back_pk}");
        assert!(delta(&s0, &s1, "ct-created").0 >= 3, "a flow per connection");
        for proto in ["tcp", "udp", "icmpv6"] {
            let f = mine.iter().find(|f| f["protocol"] == proto && f["original"]["dst"] == OUTSIDE_IP6.to_string())
                .unwrap_or_else(|| panic!("no {proto} flow of {a6} in conntrack ls: {flows:?}"));
            assert_eq!(f["translated"]["src"], NODE_UPLINK_IP6.to_string(), "{f}");
            assert!(f["rx_packets"].as_u64().unwrap_or(0) >= 1, "replies counted: {f}");
        }
        let udp_flow = mine.iter().find(|f| f["protocol"] == "udp").expect("checked above");
        let nat_port = udp_flow["translated"]["sport"].as_u64().unwrap_or(0);
        assert!(peers.iter().all(|(_, p)| u64::from(*p) == nat_port),
            "the UDP server saw the translated port {nat_port}: {peers:?}");
        let ls = node.ok(&["conntrack", "ls"]);
        assert!(ls.contains(&format!("[{a6}]:")) && ls.contains(&format!("[{NODE_UPLINK_IP6}]:{nat_port}")),
            "the table shows IPv6 tuples:\n{ls}");
        for r in ["drop-ct-invalid", "drop-nat-proto", "drop-nat6-fragment", "drop-bad-l4-header", "drop-truncated"] {
            assert_eq!(delta(&s0, &s1, r).0, 0, "{r}");
        }
    } else {
        assert_eq!((out_pk, back_pk), (0, 0), "kernel datapath: no eBPF translation");
        assert!(mine.is_empty(), "kernel datapath, yet eBPF conntrack entries: {mine:?}");
    }
    // Flush empties CT6 too.
    if dp.is_ebpf() {
        node.ok(&["conntrack", "flush"]);
        let left = node.conntrack(None);
        assert!(flows_of(&left, &a6).is_empty(), "flush left IPv6 flows: {left:?}");
    }
}
}

both_datapaths! {
/// ICMPv6 errors about masqueraded flows reach the endpoint translated
/// back (outer destination, quoted source address and port): a UDP
/// datagram to a closed port of the outside comes back as ECONNREFUSED
/// on the endpoint's connected socket; a datagram too big for a hop
/// behind the outside (a link of MTU 1280 there) brings a packet too big
/// that sets the endpoint's path MTU to 1280. eBPF: counted as
/// `nat-reverse-translated`.
fn nat6_icmpv6_errors_translated(dp) {
    let (mut node, outside) = node6(dp);
    let net = dual(&mut node, "net", "10.66.0.0/24", "fd00:66::/64", &[]);
    let (a, _a6) = endpoint6(&mut node, "a", &net, &[]);
    // Behind the outside: 2001:db8:99::/64 over a link of MTU 1280.
    for cmd in [
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"][..],
        &["ip", "link", "add", "slow0", "mtu", "1280", "type", "veth", "peer", "name", "slow1", "mtu", "1280"],
        &["sysctl", "-qw", "net.ipv6.conf.slow0.disable_ipv6=0"],
        &["ip", "link", "set", "slow1", "up"],
        &["ip", "link", "set", "slow0", "up"],
        &["ip", "-6", "route", "add", "2001:db8:99::/64", "dev", "slow0"],
    ] {
        let out = exec_in(&outside, cmd);
        assert!(out.status.success(), "{cmd:?} in {outside}:\n{}", show(&out));
    }
    let s0 = node.stats();
    let out = python_in(&a, UDP6_REFUSED, &[&node.prefix, &OUTSIDE_IP6.to_string(), "9"], Duration::from_secs(20));
    assert_eq!(stdout_str(&out).trim(), "refused", "port unreachable as ECONNREFUSED:\n{}", show(&out));
    let s1 = node.stats();

    let far = "2001:db8:99::7";
    let pmtu = |a: &str| stdout_str(&exec_in(a, &["ip", "-6", "route", "get", far]));
    assert!(!pmtu(&a).contains("mtu 1280"), "no path MTU yet: {}", pmtu(&a));
    let out = python_in(&a, UDP6_BIG, &[&node.prefix, far, "9", "1400"], Duration::from_secs(20));
    assert!(out.status.success(), "{}", show(&out));
    let route = pmtu(&a);
    assert!(route.contains("mtu 1280"), "the packet too big reached the endpoint: {route}");
    let s2 = node.stats();
    if dp.is_ebpf() {
        assert!(delta(&s0, &s1, "nat-reverse-translated").0 >= 1, "the port unreachable was translated in eBPF");
        assert!(delta(&s1, &s2, "nat-reverse-translated").0 >= 1, "the packet too big was translated in eBPF");
    }
}
}

both_datapaths! {
/// `--no-masquerade` on a dual-stack network leaves IPv6 routed as it
/// is: the outside (given a route back to the subnet) sees the
/// endpoint's own IPv6 address; no translation counted.
fn nat6_no_masquerade_routes_ipv6(dp) {
    let (mut node, outside) = node6(dp);
    let net = dual(&mut node, "net", "10.67.0.0/24", "fd00:67::/64", &["--no-masquerade"]);
    let (a, a6) = endpoint6(&mut node, "a", &net, &[]);
    let out = exec_in(&outside, &["ip", "-6", "route", "add", "fd00:67::/64", "via", &NODE_UPLINK_IP6.to_string()]);
    assert!(out.status.success(), "route back:\n{}", show(&out));
    let udp = udp_echo_server(&node, &outside, "::", UDP_PORT);
    let s0 = node.stats();
    let msg = format!("{}-routed", node.prefix);
    let out = python_in(&a, UDP6_CLIENT, &[&node.prefix, &OUTSIDE_IP6.to_string(), &UDP_PORT.to_string(), &msg],
        Duration::from_secs(20));
    assert_eq!(stdout_str(&out).trim(), format!("echo:{msg} {OUTSIDE_IP6}"), "{}", show(&out));
    let s1 = node.stats();
    let peers = peers(&udp);
    assert!(!peers.is_empty() && peers.iter().all(|(ip, _)| *ip == a6), "routed, not translated: {peers:?}");
    assert_eq!(delta(&s0, &s1, "nat-translated").0, 0);
}
}

/// eBPF: the reply of a connection to an endpoint's IPv6 published port
/// (translated by the kernel: an `ip6` DNAT rule, added here by hand the
/// way the agent's nftables rules do it) is handed to the kernel
/// (`pass-kernel-flow`, from `PUBLISHED6`) and reaches the outside
/// client, instead of being dropped as a TCP segment of no eBPF flow.
#[test]
fn nat6_published_port_reply_goes_to_the_kernel() {
    kernel_test!();
    let (mut node, outside) = node6(Datapath::Ebpf);
    let net = dual(&mut node, "net", "10.68.0.0/24", "fd00:68::/64", &[]);
    let (web, web6) = endpoint6(&mut node, "web", &net, &["-p", "8086:80"]);
    let rules = format!(
        "table ip6 dpn6pub {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip6 daddr {NODE_UPLINK_IP6} tcp dport 8086 dnat to [{web6}]:80\n  }}\n}}\n"
    );
    let file = node.dir.join("pub6.nft");
    std::fs::write(&file, rules).expect("writing the rules");
    let out = exec_in(&node.name, &["nft", "-f", &file.to_string_lossy()]);
    assert!(out.status.success(), "nft:\n{}", show(&out));
    let sha = blob(&node, "pub6", 100_000);
    let _server = http6_server(&web, 80, &node.dir.join("www"));
    let s0 = node.stats();
    fetch(&node, &outside, &NODE_UPLINK_IP6.to_string(), 8086, "pub6", 100_000, &sha);
    let s1 = node.stats();
    assert!(delta(&s0, &s1, "pass-kernel-flow").0 >= 2, "the replies went to the kernel");
    assert_eq!(delta(&s0, &s1, "drop-ct-invalid").0, 0);
    let flows = node.conntrack(None);
    assert!(flows_of(&flows, &web6).is_empty(), "no eBPF flow for the kernel's connection: {flows:?}");
}

both_datapaths! {
/// A UDP datagram bigger than the MTU crosses the masquerade in
/// fragments both ways (the endpoint's request, the outside's echo): the
/// echo comes back whole. eBPF: every fragment translated (`FRAGS6` gives
/// the later ones their flow), none dropped.
fn nat6_fragmented_datagrams_both_ways(dp) {
    let (mut node, outside) = node6(dp);
    let net = dual(&mut node, "net", "10.69.0.0/24", "fd00:69::/64", &[]);
    let (a, _a6) = endpoint6(&mut node, "a", &net, &[]);
    let udp = udp_echo_server(&node, &outside, "::", UDP_PORT);
    let s0 = node.stats();
    let msg = format!("{}-{}", node.prefix, "f".repeat(3500));
    let out = python_in(&a, UDP6_CLIENT, &[&node.prefix, &OUTSIDE_IP6.to_string(), &UDP_PORT.to_string(), &msg],
        Duration::from_secs(20));
    assert_eq!(stdout_str(&out).trim(), format!("echo:{msg} {OUTSIDE_IP6}"), "a 3.5 kB echo over IPv6:\n{}",
        stdout_str(&out).chars().take(200).collect::<String>());
    let s1 = node.stats();
    assert!(!peers(&udp).is_empty());
    if dp.is_ebpf() {
        // 3 fragments each way at least (1500-byte MTU).
        assert!(delta(&s0, &s1, "nat-translated").0 >= 3, "fragments translated out");
        assert!(delta(&s0, &s1, "nat-reverse-translated").0 >= 3, "fragments translated back");
        for r in ["drop-nat6-fragment", "drop-frag-unknown", "drop-bad-l4-header"] {
            assert_eq!(delta(&s0, &s1, r).0, 0, "{r}");
        }
    }
}
}
