//! Published ports (`-p`, README "Published ports") against the real agent,
//! on both datapaths, with the node's uplink to an outside namespace:
//!
//! ```text
//!  web (-p 8080:80) ... bridge ┐ <p>node  uplink0 203.0.113.2 --veth-- eth0 203.0.113.1  <p>out
//!  other network's endpoint ───┘ (127.0.0.1 and 203.0.113.2 from the node itself)
//! ```
//!
//! eBPF: DNAT in `dp_from_uplink`/`dp_from_ep` (counters `port-translated`,
//! `port-reply-translated`); kernel: Docker's `--userland-proxy=false` nft
//! rules. The node's own connections go through nft output DNAT on both
//! (README: why). Differences asserted explicitly: only the eBPF datapath
//! moves the eBPF counters and fills `PORTS`.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use datapath_tests::frames::{self, Ipv4, Tcp};
use datapath_tests::net::{link, python_bg, python_in};
use datapath_tests::node::{delta, AgentOpts, Node, OUTSIDE_IP, UPLINK_DEV, UPLINK_IP};
use datapath_tests::outside::{http_clients, http_server, peers, tcp_server, udp_echo_server};
use datapath_tests::proc::{run, show, stdout_str};
use datapath_tests::{both_datapaths, py};
use serde_json::Value;

use crate::modes::map_entries;

/// argv: TAG IP PORT
/// One TCP connect with a 3 s timeout: prints "ok", "refused" or "timeout".
const CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3).close()
    print("ok")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("timeout", e)
"#;

/// Writes `len` random bytes to `<node dir>/www/NAME`; returns their sha256.
pub(crate) fn blob(node: &Node, name: &str, len: usize) -> String {
    let www = node.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut data).unwrap();
    std::fs::write(www.join(name), &data).unwrap();
    let out = run(Command::new("sha256sum").arg(www.join(name)));
    assert!(out.status.success(), "{}", show(&out));
    stdout_str(&out).split_whitespace().next().unwrap().to_string()
}

/// Fetches `url` from `ns`; asserts length and sha256.
#[track_caller]
pub(crate) fn fetch(node: &Node, ns: &str, url: &str, len: usize, sha: &str) {
    let out = python_in(ns, py::HTTP_FETCH, &[&node.prefix, url], Duration::from_secs(40));
    assert!(out.status.success(), "fetch {url} from {ns}:\n{}\nagent log:\n{}", show(&out), node.agent_log_tail(30));
    assert_eq!(stdout_str(&out).trim(), format!("{len} {sha}"), "content of {url} fetched by {ns} differs");
}

/// One TCP connect attempt from `ns` to IP:PORT ("ok", "refused", "timeout ...").
pub(crate) fn connect(node: &Node, ns: &str, ip: &str, port: u16) -> String {
    let out = python_in(ns, CONNECT, &[&node.prefix, ip, &port.to_string()], Duration::from_secs(20));
    stdout_str(&out).trim().to_string()
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
/// One endpoint publishes HTTP (`-p 8080:80`), a UDP echo (`-p 5353:53/udp`),
/// a UDP range (`-p 8100-8102:9100-9102/udp`) and a loopback-only port
/// (`-p 127.0.0.1:8090:80`). The HTTP content arrives intact from the
/// outside (the server sees the outside client's own address), from the
/// node at 127.0.0.1 and at its uplink address, from an endpoint of another
/// network and from the publishing endpoint itself (hairpin; those two seen
/// as the gateway); UDP echoes through the port and every port of the
/// range; the loopback-only port answers the node but not the outside.
/// `ps`-style output, `port` and `inspect` show the ports.
fn published_port_is_reachable_from_everywhere(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let web = node.ep("web");
    node.create_endpoint(&web, &["-p", "8080:80", "-p", "5353:53/udp", "-p", "8100-8102:9100-9102/udp", "-p", "127.0.0.1:8090:80"]);
    let web_ep = node.inspect_endpoint(&web);
    let other_net = node.ep("net2");
    node.ok(&["network", "create", &other_net, "--subnet", "10.77.0.0/24"]);
    let c = node.create_endpoint(&node.ep("c"), &["--network", &other_net]);
    const LEN: usize = 300 * 1024;
    let sha = blob(&node, "blob.bin", LEN);
    let server = http_server(&web, 80, &node.dir.join("www"));
    let _udp = udp_echo_server(&node, &web, "0.0.0.0", 53);
    let _range: Vec<_> = (9100..=9102).map(|p| udp_echo_server(&node, &web, "0.0.0.0", p)).collect();

    let s0 = node.stats();
    let url = format!("http://{UPLINK_IP}:8080/blob.bin");
    fetch(&node, &out, &url, LEN, &sha);
    assert_eq!(http_clients(&server), vec![OUTSIDE_IP.to_string()], "the server must see the outside client itself");
    udp_roundtrip(&node, &out, UPLINK_IP, 5353);
    for p in 8100..=8102 {
        udp_roundtrip(&node, &out, UPLINK_IP, p);
    }
    let s1 = node.stats();
    let (fwd, _) = delta(&s0, &s1, "port-translated");
    let (rep, _) = delta(&s0, &s1, "port-reply-translated");
    if dp.is_ebpf() {
        assert!(fwd >= 10 && rep >= 10, "eBPF translated the flows: port-translated +{fwd}, port-reply-translated +{rep}");
        assert_eq!(map_entries(&node, "PORTS"), 5 * 3, "PORTS: 5 ports on the node's 3 addresses (uplink, 2 gateways)");
    } else {
        assert_eq!((fwd, rep), (0, 0), "kernel datapath: the eBPF counters stay still");
    }

    // From the node itself.
    fetch(&node, &node.name, "http://127.0.0.1:8080/blob.bin", LEN, &sha);
    fetch(&node, &node.name, &url, LEN, &sha);
    fetch(&node, &node.name, "http://127.0.0.1:8090/blob.bin", LEN, &sha);
    // From an endpoint of another network, and hairpin.
    fetch(&node, &c.name, &url, LEN, &sha);
    fetch(&node, &web, &url, LEN, &sha);
    let clients = http_clients(&server);
    assert_eq!(clients.len(), 6, "{clients:?}");
    assert_eq!(&clients[4..], [web_ep.gateway.clone(), web_ep.gateway.clone()], "other network and hairpin: {clients:?}");

    // Loopback only: not from the outside.
    let r = connect(&node, &out, UPLINK_IP, 8090);
    assert_ne!(r, "ok", "a port published on 127.0.0.1 answered the outside");

    // How it is shown.
    let port = node.ok(&["port", &web]);
    for want in ["80/tcp -> 0.0.0.0:8080", "53/udp -> 0.0.0.0:5353", "9101/udp -> 0.0.0.0:8101", "80/tcp -> 127.0.0.1:8090"] {
        assert!(port.contains(want), "`port` lacks {want:?}:\n{port}");
    }
    let ls = node.ok(&["endpoint", "ls"]);
    assert!(ls.contains("0.0.0.0:8080->80/tcp") && ls.contains("0.0.0.0:8100-8102->9100-9102/udp"), "{ls}");
    let v = node.json(&["endpoint", "inspect", &web]);
    assert_eq!(v["ports"].as_array().map(Vec::len), Some(1 + 1 + 3 + 1), "{v}");
}
}

both_datapaths! {
/// Refused with a clear error and nothing half-made: a port another
/// endpoint publishes (also on one address against all), a port a socket
/// of the node listens on, a port on an `--internal` network, an address
/// that is not the node's. Withdrawn at once: by `endpoint rm` (the outside
/// is refused afterwards, the port can be published again), by `stop` and
/// by `run --rm`.
fn conflicts_are_refused_and_ports_withdrawn(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let a = node.ep("a");
    node.create_endpoint(&a, &["-p", "8080:80"]);
    let _srv = tcp_server(&node, &a, 80);
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "ok");
    let before = node.endpoints();
    let b = node.ep("b");
    let internal = node.ep("int");
    node.ok(&["network", "create", &internal, "--subnet", "10.78.0.0/24", "--internal"]);
    let _listener = tcp_server(&node, &node.name.clone(), 8099);
    for (args, why) in [
        (vec!["-p", "8080:81"], "already published"),
        (vec!["-p", &format!("{UPLINK_IP}:8080:81")], "already published"),
        (vec!["-p", "8099:80"], "in use on the node"),
        (vec!["-p", "8081:80", "--network", &internal], "internal"),
        (vec!["-p", "192.0.2.77:8081:80"], "not an address of the node"),
    ] {
        let mut cmd = vec!["endpoint", "create", &b];
        cmd.extend_from_slice(&args);
        let e = node.err(&cmd);
        assert!(e.contains(why), "{args:?}: {e}");
        assert!(!node.netns_exists(&b), "{args:?} left a namespace behind");
    }
    let mut after = node.endpoints();
    after.retain(|e| e["network"] != internal.as_str());
    assert_eq!(after, before, "a refused create changed the endpoints");

    node.ok(&["endpoint", "rm", &a]);
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "refused", "the port answered after rm");
    if dp.is_ebpf() {
        assert_eq!(map_entries(&node, "PORTS"), 0, "PORTS entries left after rm");
    }
    // stop and --rm withdraw too: the ports can be published again.
    let s = node.ep("s");
    node.ok(&["run", "-d", "--name", &s, "-p", "8082:80", "--", "sleep", "60"]);
    let ps = node.ok(&["ps"]);
    assert!(ps.contains("0.0.0.0:8082->80/tcp"), "{ps}");
    node.ok(&["stop", &s]);
    let r = node.ep("r");
    node.ok(&["run", "--rm", "--name", &r, "-p", "8083:80", "--", "true"]);
    node.create_endpoint(&b, &["-p", "8080:80", "-p", "8082:80", "-p", "8083:80"]);
}
}

both_datapaths! {
/// 200 TCP connections from the outside through one published port, all
/// open at the same time, all answered; the server sees every one from the
/// outside client's address.
fn published_port_200_concurrent_connections(dp) {
    const N: usize = 200;
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let web = node.ep("web");
    node.create_endpoint(&web, &["-p", "7070:7777"]);
    let server = tcp_server(&node, &web, 7777);
    let n = N.to_string();
    let mut client = python_bg(&out, py::TCP_CLIENTS, &[&node.prefix, UPLINK_IP, "7070", &n, &n, "2"]);
    let line = client.wait_line(Duration::from_secs(120), |l| l.starts_with("ok "));
    let (_, err) = client.stop();
    assert_eq!(line.as_deref(), Some(format!("ok {N}").as_str()), "clients: {:?}\n{err}", client_lines(&client));
    let p = peers(&server);
    assert_eq!(p.len(), N);
    assert!(p.iter().all(|(ip, _)| ip == OUTSIDE_IP), "peers not all the outside client: {p:?}");
}
}

fn client_lines(p: &datapath_tests::BgProcess) -> Vec<String> {
    p.lines()
}

both_datapaths! {
/// Malformed packets from the outside to a published port (TCP with a data
/// offset below 5, a TCP header cut short, an ACK of no flow, UDP with a
/// length beyond the packet) never reach the endpoint's server; the eBPF
/// datapath drops and counts the malformed ones (`drop-port-malformed`) and
/// leaves the ACK of no flow to the kernel (untranslated). A normal
/// connection works afterwards.
fn malformed_packets_to_a_published_port_are_dropped(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let web = node.ep("web");
    node.create_endpoint(&web, &["-p", "8080:80", "-p", "5353:53/udp"]);
    let _srv = tcp_server(&node, &web, 80);
    let udp = udp_echo_server(&node, &web, "0.0.0.0", 53);
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "ok");
    let up_mac = link(&node.name, UPLINK_DEV).and_then(|l| l["address"].as_str().map(String::from)).expect("uplink MAC");
    let out_mac = link(&out, "eth0").and_then(|l| l["address"].as_str().map(String::from)).expect("outside MAC");
    let (o, n) = (frames::parse_ip(OUTSIDE_IP), frames::parse_ip(UPLINK_IP));
    let (dst, src) = (frames::parse_mac(&up_mac), frames::parse_mac(&out_mac));
    let frame = |proto: u8, l4: &[u8]| frames::eth(dst, src, frames::ETH_P_IPV4, &Ipv4::new(o, n, proto).packet(l4));
    let mut f = Vec::new();
    for i in 0..3u16 {
        let mut t = Tcp::new(41000 + i, 8080, frames::TCP_SYN).segment(o, n, b"");
        t[12] = 0x20; // data offset 2
        f.push(frame(6, &t));
        let t = Tcp::new(42000 + i, 8080, frames::TCP_SYN).segment(o, n, b"");
        f.push(frame(6, &t[..12]));
        let t = Tcp { seq: 5, ack: 9, ..Tcp::new(43000 + i, 8080, frames::TCP_ACK) }.segment(o, n, b"");
        f.push(frame(6, &t));
        let mut u = frames::udp(o, n, 44000 + i, 5353, b"bad");
        u[4..6].copy_from_slice(&200u16.to_be_bytes());
        f.push(frame(17, &u));
    }
    let s0 = node.stats();
    let hexes: Vec<String> = f.iter().map(|x| frames::hex(x)).collect();
    let mut args = vec![node.prefix.as_str(), "eth0"];
    args.extend(hexes.iter().map(String::as_str));
    let sent = python_in(&out, py::RAW_SENDER, &args, Duration::from_secs(20));
    assert!(sent.status.success(), "{}", show(&sent));
    std::thread::sleep(Duration::from_millis(300));
    let s1 = node.stats();
    let (bad, _) = delta(&s0, &s1, "drop-port-malformed");
    let (fwd, _) = delta(&s0, &s1, "port-translated");
    if dp.is_ebpf() {
        // Bad offset and bad UDP length: 6; the cut-short TCP header cannot
        // be read (left to the kernel) unless the frame was padded to 60
        // bytes, whose zeros then read as a bad data offset.
        assert!((6..=9).contains(&bad) && fwd == 0, "eBPF: drop-port-malformed +{bad}, port-translated +{fwd}");
    } else {
        assert_eq!((bad, fwd), (0, 0));
    }
    assert!(peers(&udp).is_empty(), "a malformed UDP datagram reached the server: {:?}", peers(&udp));
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "ok", "a normal connection after the malformed packets");
}
}

/// argv: TAG IP PORT
/// A connected UDP socket sends to IP:PORT (3 tries, 2 s each): prints
/// "reply", "refused" (an ICMP port unreachable came back) or "timeout".
const UDP_CONNECTED: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[2], int(sys.argv[3])))
s.settimeout(2)
for i in range(3):
    s.send(b"x")
    try:
        s.recv(100)
        print("reply")
        break
    except ConnectionRefusedError:
        print("refused")
        break
    except socket.timeout:
        continue
else:
    print("timeout")
"#;

both_datapaths! {
/// A UDP port published with nothing listening behind it: the endpoint's
/// ICMP port unreachable is translated back to the client (its socket sees
/// "connection refused"), from the outside and from an endpoint of another
/// network (source-translated flow).
fn icmp_errors_of_a_published_flow_reach_the_client(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let web = node.ep("web");
    node.create_endpoint(&web, &["-p", "5400:54/udp"]);
    let other_net = node.ep("net2");
    node.ok(&["network", "create", &other_net, "--subnet", "10.77.0.0/24"]);
    let c = node.create_endpoint(&node.ep("c"), &["--network", &other_net]);
    let s0 = node.stats();
    for ns in [out.as_str(), c.name.as_str()] {
        let o = python_in(ns, UDP_CONNECTED, &[&node.prefix, UPLINK_IP, "5400"], Duration::from_secs(20));
        assert_eq!(stdout_str(&o).trim(), "refused", "from {ns}: {}", show(&o));
    }
    let s1 = node.stats();
    let (rep, _) = delta(&s0, &s1, "port-reply-translated");
    if dp.is_ebpf() {
        assert!(rep >= 2, "the ICMP errors were translated in eBPF: port-reply-translated +{rep}");
    } else {
        assert_eq!(rep, 0);
    }
}
}
