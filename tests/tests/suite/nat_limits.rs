//! The masquerade at its limits, on both datapaths (same topology as
//! `masquerade.rs`: endpoints behind the node, an outside namespace behind
//! its uplink):
//!
//! * IPv4 fragments both ways (the outside's UDP echo server answers
//!   b"big N" with N bytes): an echo request of 3000 bytes (three
//!   fragments out, three back), UDP datagrams of 4000 bytes echoed, and
//!   small UDP requests answered with 6000 bytes (fragments only on the way
//!   back). The kernel datapath reassembles them in netfilter; the eBPF one
//!   tracks each datagram's first fragment by its IP id (`FRAGS`) and
//!   translates the later ones by it, without reassembly.
//! * An exhausted NAT port range (`--nat-port-range` of 10 ports): a new
//!   flow to a destination whose ports are all taken fails at once on the
//!   eBPF datapath (an ICMP error from the gateway: EHOSTUNREACH for TCP
//!   `connect()` and for a connected UDP socket), while the kernel datapath
//!   drops it silently, as netfilter does (documented difference: the
//!   client waits for its timeout). On both, the ports are reused for
//!   another destination.

use std::time::Duration;

use datapath_tests::net::{python_bg, python_in};
use datapath_tests::node::{delta, AgentOpts, Datapath, Node, OUTSIDE_IP, UPLINK_IP};
use datapath_tests::outside::{recording_server, udp_echo_server, Capture};
use datapath_tests::proc::{show, stdout_str};
use datapath_tests::{both_datapaths, BgProcess};
use serde_json::Value;

const UDP_PORT: u16 = 9998;

/// argv: TAG IP UDP_PORT
/// Three echo requests of 3000 bytes of payload (raw ICMP socket: the
/// kernel fragments them), three UDP datagrams of 4000 bytes echoed, three
/// small UDP requests answered with 6000 bytes; each checked byte for byte,
/// retried up to 3 times. Prints a JSON object of the counts that came back
/// intact.
const FRAG_CLIENT: &str = r#"
import json, os, socket, struct, sys
ip, port = sys.argv[2], int(sys.argv[3])
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
res = {"ping": 0, "udp_echo": 0, "udp_big_reply": 0}
ic = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ic.settimeout(2)
ident = os.getpid() & 0xffff
for seq in range(1, 4):
    body = struct.pack("!HH", ident, seq) + bytes((seq + i) & 0xff for i in range(3000))
    pkt = struct.pack("!BBH", 8, 0, 0) + body
    pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
    for attempt in range(3):
        ic.sendto(pkt, (ip, 0))
        try:
            while True:
                data, addr = ic.recvfrom(65535)
                ihl = (data[0] & 0x0f) * 4
                if data[ihl] == 0 and data[ihl + 4:] == body and addr[0] == ip:
                    res["ping"] += 1
                    break
        except socket.timeout:
            continue
        break
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
def exchange(msg, want):
    for attempt in range(3):
        u.sendto(msg, (ip, port))
        try:
            while True:
                data, addr = u.recvfrom(65535)
                if data == want:
                    return 1
        except socket.timeout:
            continue
    return 0
for k in range(3):
    m = bytes((k * 7 + i) & 0xff for i in range(4000))
    res["udp_echo"] += exchange(m, b"echo:" + m)
    res["udp_big_reply"] += exchange(b"big 6000", b"x" * 6000)
print(json.dumps(res), flush=True)
"#;

both_datapaths! {
/// Fragmented ICMP and UDP through the masquerade, both ways: every
/// datagram comes back intact; on the wire the fragments carry the uplink
/// address only; on eBPF the translation counters moved and no fragment was
/// dropped.
fn fragmented_datagrams_cross_the_masquerade_both_ways(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let server = udp_echo_server(&node, &out, OUTSIDE_IP, UDP_PORT);
    let mut wire = Capture::start(&node, &out, "eth0", "outside", "ip[6:2] & 0x3fff != 0");

    let s0 = node.stats();
    let run = python_in(&a.name, FRAG_CLIENT, &[&node.prefix, OUTSIDE_IP, &UDP_PORT.to_string()], Duration::from_secs(60));
    let s1 = node.stats();
    assert!(run.status.success(), "fragment client in {}:\n{}", a.name, show(&run));
    let got: Value = serde_json::from_str(stdout_str(&run).trim()).expect("client JSON");
    assert_eq!(
        (got["ping"].as_u64(), got["udp_echo"].as_u64(), got["udp_big_reply"].as_u64()),
        (Some(3), Some(3), Some(3)),
        "fragmented datagrams lost through the {} masquerade: {got}\nserver saw: {:?}",
        dp.as_str(),
        server.lines()
    );

    // The outside saw fragments, from the uplink address only.
    let text = wire.read("");
    let frags: Vec<&str> = text.lines().filter(|l| l.contains(" > ") || l.contains("frag")).collect();
    assert!(frags.len() >= 9, "too few fragments on the outside wire:\n{text}");
    assert!(text.contains(&format!("{UPLINK_IP} > {OUTSIDE_IP}")), "no outgoing fragment seen:\n{text}");
    assert!(!text.contains("10.10."), "an endpoint address leaked in a fragment:\n{text}");

    let d = |r: &str| delta(&s0, &s1, r).0;
    match dp {
        Datapath::Ebpf => {
            // Out: 3 pings and 3 echoes of 3 fragments each, 3 small
            // requests; back: as many, and 3 big replies of 5 fragments.
            assert!(
                d("nat-translated") >= 21 && d("nat-reverse-translated") >= 33,
                "eBPF did not translate the fragments: nat-translated +{}, nat-reverse-translated +{}",
                d("nat-translated"),
                d("nat-reverse-translated")
            );
            for r in ["drop-frag-unknown", "drop-nat-fragment", "drop-truncated", "drop-bad-l4-header"] {
                assert_eq!(d(r), 0, "{r} grew while fragments crossed the masquerade");
            }
        }
        Datapath::Kernel => {
            assert_eq!(d("nat-translated"), 0, "kernel datapath, yet eBPF translated");
        }
    }
    drop(server);
}
}

/// argv: TAG PORT...
/// TCP server holding every connection it accepts open (never reads,
/// never closes) on each PORT. Prints "ready" once listening.
const HOLD_SERVER: &str = r#"
import select, socket, sys
ls = []
for p in sys.argv[2:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(p)))
    s.listen(128)
    ls.append(s)
print("ready", flush=True)
held = []
while True:
    r, _, _ = select.select(ls, [], [], 120)
    if not r:
        break
    for s in r:
        c, a = s.accept()
        held.append(c)
        print("from", a[0], a[1], flush=True)
"#;

/// argv: TAG PROTO IP PORT N TIMEOUT HOLD
/// Opens N flows to IP:PORT one after the other: PROTO "tcp" connects
/// (connect timeout TIMEOUT seconds); "udp" connects a UDP socket, sends
/// one datagram and waits TIMEOUT seconds for any answer. Prints "ok",
/// "error timeout" or "error ERRNO_NAME" (for UDP, an ICMP error reported
/// on the socket) per flow, then "done", and keeps the sockets HOLD
/// seconds.
const OPEN_FLOWS: &str = r#"
import errno, socket, sys, time
proto, ip, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
n, timeout, hold = int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
keep = []
for i in range(n):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    c = socket.socket(socket.AF_INET, kind)
    c.settimeout(timeout)
    try:
        c.connect((ip, port))
        keep.append(c)
        if proto == "udp":
            c.send(b"hello %d" % i)
            c.recv(4096)
        print("ok", flush=True)
    except socket.timeout:
        print("error timeout", flush=True)
    except OSError as e:
        print("error", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
print("done", flush=True)
time.sleep(hold)
"#;

/// Runs [`OPEN_FLOWS`] for `proto` in `ns` in the background and returns it
/// with the results it printed once "done".
fn open_flows(node: &Node, ns: &str, proto: &str, port: u16, n: usize, timeout_s: u32) -> (BgProcess, Vec<String>) {
    let p = python_bg(
        ns,
        OPEN_FLOWS,
        &[&node.prefix, proto, OUTSIDE_IP, &port.to_string(), &n.to_string(), &timeout_s.to_string(), "120"],
    );
    let wait = Duration::from_secs(u64::from(timeout_s) * n as u64 + 30);
    assert!(
        p.wait_line(wait, |l| l == "done").is_some(),
        "opener in {ns} did not finish: {:?} {}",
        p.lines(),
        p.stderr()
    );
    let res = p.lines().into_iter().filter(|l| l != "done").collect();
    (p, res)
}

fn all_ok(res: &[String], n: usize) -> bool {
    res.len() == n && res.iter().all(|l| l == "ok")
}

both_datapaths! {
/// A 10-port NAT range: 10 TCP connections from A to one destination take
/// it all; B's connection to the same destination fails at once with
/// EHOSTUNREACH on eBPF (ICMP from the gateway, counted per network) and
/// times out on the kernel datapath (netfilter drops it: documented
/// difference); B's 10 connections to another destination port all
/// succeed (ports reused per destination); likewise for UDP.
fn exhausted_nat_ports_fail_at_once_and_are_reused_per_destination(dp) {
    let mut opts = AgentOpts::with_uplink(dp);
    opts.extra_args = vec!["--nat-port-range".into(), "21000-21009".into()];
    let mut node = Node::with(opts);
    let out = node.outside().to_string();
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    let tcp = recording_server(&node, &out, HOLD_SERVER, &["7101", "7102"]);
    let udp = udp_echo_server(&node, &out, OUTSIDE_IP, UDP_PORT);

    let s0 = node.stats();
    let (_held_a, res) = open_flows(&node, &a.name, "tcp", 7101, 10, 10);
    assert!(all_ok(&res, 10), "A's 10 connections to one destination (10 ports): {res:?}");

    // The range is full for that destination.
    let (_b1, res) = open_flows(&node, &b.name, "tcp", 7101, 1, 6);
    let want = if dp.is_ebpf() { "error EHOSTUNREACH" } else { "error timeout" };
    assert_eq!(res, vec![want.to_string()], "B's connection to the exhausted destination; the outside saw {:?}", tcp.lines());

    // Another destination: the same ports serve again.
    let (_held_b, res) = open_flows(&node, &b.name, "tcp", 7102, 10, 10);
    assert!(all_ok(&res, 10), "B's 10 connections to another destination port: {res:?}");

    // UDP: A's 10 flows to the echo server fill the range for it.
    let (_ua, res) = open_flows(&node, &a.name, "udp", UDP_PORT, 10, 5);
    assert!(all_ok(&res, 10), "A's 10 UDP flows: {res:?}");
    let (_ub, res) = open_flows(&node, &b.name, "udp", UDP_PORT, 1, 4);
    assert_eq!(res, vec![want.to_string()], "B's UDP flow to the exhausted destination");
    let s1 = node.stats();

    let seen = tcp.lines().iter().filter(|l| l.starts_with("from ")).count();
    assert_eq!(seen, 20, "the outside should have accepted 20 connections: {:?}", tcp.lines());
    let stats = node.json(&["stats", "-o", "json"]);
    let d = |r: &str| delta(&s0, &s1, r).0;
    match dp {
        Datapath::Ebpf => {
            assert!(d("drop-nat-no-port") >= 2, "drop-nat-no-port +{}", d("drop-nat-no-port"));
            assert!(d("nat-refused-icmp") >= 2, "nat-refused-icmp +{}", d("nat-refused-icmp"));
            let net = stats["networks"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["network"].as_str() == Some(a.network.as_str())))
                .unwrap_or_else(|| panic!("stats has no counters for network {}: {stats}", a.network));
            assert!(
                net["nat_no_port_packets"].as_u64() >= Some(2) && net["nat_flows"].as_u64() >= Some(30),
                "per-network NAT counters of {}: {net}",
                a.network
            );
        }
        Datapath::Kernel => {
            assert_eq!(d("nat-refused-icmp"), 0, "kernel datapath, yet eBPF refused flows");
        }
    }
    drop((tcp, udp));
}
}
