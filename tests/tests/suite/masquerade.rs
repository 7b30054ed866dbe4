//! Masquerade against the real agent: endpoints reach an "outside" namespace
//! behind the node's uplink (the node itself being a namespace):
//!
//! ```text
//!  <p>a, <p>b ... --veth-- bridge ┐ <p>node  uplink0 203.0.113.2 --veth-- eth0 203.0.113.1  <p>out
//!  (10.10.0.0/16)                 ┘ (default route via 203.0.113.1)          (servers, tcpdump; no
//!                                                                              route back to 10.10/16)
//! ```
//!
//! Both datapaths must masquerade: eBPF networks in eBPF (`dp_from_ep`
//! conntrack + SNAT, `dp_from_uplink` reverse NAT, no netfilter rule),
//! kernel networks with nftables MASQUERADE. Documented differences, asserted
//! explicitly: the eBPF counters and `conntrack ls` (the eBPF flow table)
//! stay empty on the kernel datapath (netfilter's own conntrack does the
//! work there), and only the kernel datapath has an nft masquerade rule.
//! TX checksum offload is off on both uplink veths, so the captures show the
//! checksums as computed (after an incremental NAT update).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ports::blob;
use datapath_tests::frames::{self, hex, Ipv4, Tcp};
use datapath_tests::net::{self, exec_in, link, python_bg, python_in};
use datapath_tests::node::{delta, AgentOpts, Datapath, Node, Stats, OUTSIDE_IP, UPLINK_IP};
use datapath_tests::outside::{
    bad_checksum_lines, count_by_ip, http_clients, http_server, peers, tcp_server, udp_echo_server, verified_checksums,
    Capture,
};
use datapath_tests::proc::{show, stdout_str};
use datapath_tests::{assert_ping, both_datapaths, py};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9999;
const TCP_PORT: u16 = 7777;

/// The counters that only the eBPF masquerade moves.
const NAT_COUNTERS: [&str; 4] = ["nat-translated", "nat-reverse-translated", "ct-created", "pass-uplink-host"];

/// Fetches http://OUTSIDE_IP:HTTP_PORT/NAME from `ns`; asserts length and
/// sha256.
fn fetch(node: &Node, ns: &str, name: &str, len: usize, sha: &str) {
    let url = format!("http://{OUTSIDE_IP}:{HTTP_PORT}/{name}");
    let out = python_in(ns, py::HTTP_FETCH, &[&node.prefix, &url], Duration::from_secs(40));
    assert!(out.status.success(), "fetch {url} from {ns}:\n{}", show(&out));
    assert_eq!(stdout_str(&out).trim(), format!("{len} {sha}"), "content fetched from the outside by {ns} differs");
}

/// One UDP request/response from `ns` to the outside echo server; the reply
/// must come from OUTSIDE_IP.
fn udp_roundtrip(node: &Node, ns: &str, tag: &str) {
    let msg = format!("{}-{tag}", node.prefix);
    let port = UDP_PORT.to_string();
    let out = python_in(ns, py::UDP_CLIENT, &[&node.prefix, OUTSIDE_IP, &port, &msg], Duration::from_secs(20));
    assert!(out.status.success(), "UDP client in {ns}:\n{}", show(&out));
    let res: Value = serde_json::from_str(stdout_str(&out).trim()).expect("client JSON");
    assert_eq!(
        (res[0][1].as_str(), res[0][2].as_str()),
        (Some(format!("echo:{msg}").as_str()), Some(OUTSIDE_IP)),
        "UDP request/response {ns} -> {OUTSIDE_IP}:{UDP_PORT}: {res}"
    );
}

/// `nft list ruleset` in the node.
fn nft_ruleset(node: &Node) -> String {
    let out = exec_in(&node.name, &["nft", "list", "ruleset"]);
    assert!(out.status.success(), "nft list ruleset:\n{}", show(&out));
    stdout_str(&out)
}

/// `iptables-save` in the node, when installed (it is not part of the
/// suite's prerequisites: with iptables-nft its rules would show in the nft
/// ruleset anyway).
fn iptables_save(node: &Node) -> Option<String> {
    let have = Command::new("sh")
        .args(["-c", "command -v iptables-save"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        return None;
    }
    let out = exec_in(&node.name, &["iptables-save"]);
    Some(stdout_str(&out))
}

/// Masquerade rules for `subnet` in a ruleset text (nft or iptables-save).
fn masquerade_lines(text: &str, subnet: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.to_lowercase().contains("masquerade") && l.contains(subnet))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The eBPF NAT counters did not move (kernel datapath).
fn assert_no_nat_counters(s0: &Stats, s1: &Stats, ctx: &str) {
    for r in NAT_COUNTERS {
        let (p, _) = delta(s0, s1, r);
        assert_eq!(p, 0, "{ctx}: kernel datapath, yet the eBPF counter {r} grew by {p}");
    }
}

fn flows_summary(flows: &[Value]) -> String {
    flows.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n")
}

both_datapaths! {
/// TCP (HTTP transfer, content checked), UDP request/response and ping from
/// two endpoints to the outside; the outside sees only the uplink address;
/// checksums on the wire (both directions) verified by tcpdump; the node's
/// own connection on the uplink is unaffected and not tracked; `conntrack
/// ls` shows the flows (eBPF; per endpoint with --endpoint); the ruleset
/// has a masquerade rule only on the kernel datapath.
fn masquerade_tcp_udp_icmp_to_the_outside(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    const LEN: usize = 256 * 1024;
    let sha = blob(&node, "blob.bin", LEN);

    let http = http_server(&out, HTTP_PORT, &node.dir.join("www"));
    let udp = udp_echo_server(&node, &out, OUTSIDE_IP, UDP_PORT);
    let mut wire = Capture::start(&node, &out, "eth0", "outside", "not arp");
    // Replies as delivered into A, after the reverse translation.
    let mut at_a = Capture::start(&node, &a.name, "eth0", "at-a", "not arp");

    let s0 = node.stats();
    assert_ping(&a.name, OUTSIDE_IP, 3);
    assert_ping(&b.name, OUTSIDE_IP, 2);
    fetch(&node, &a.name, "blob.bin", LEN, &sha);
    udp_roundtrip(&node, &a.name, "a");
    udp_roundtrip(&node, &b.name, "b");
    let s1 = node.stats();

    // The outside saw only the uplink address.
    let clients = http_clients(&http);
    assert_eq!(clients, vec![UPLINK_IP.to_string()], "HTTP clients seen by the outside");
    let seen: Vec<(String, u16)> = peers(&udp);
    let by_ip = count_by_ip(seen.iter().map(|(ip, _)| ip.as_str()));
    assert_eq!(
        by_ip.keys().cloned().collect::<Vec<_>>(),
        vec![UPLINK_IP.to_string()],
        "UDP sources seen by the outside: {seen:?}"
    );
    assert!(seen.len() >= 2, "UDP server saw {seen:?}");

    // Wire: translated, no endpoint address, valid checksums both ways.
    let text = wire.read("");
    let summary = || format!("outside capture ({} lines):\n{text}", text.lines().count());
    assert!(text.contains(&format!("{UPLINK_IP}.")), "no translated flow on the wire: {}", summary());
    assert!(!text.contains("10.10."), "an endpoint address leaked to the outside: {}", summary());
    let bad = bad_checksum_lines(&text);
    assert!(bad.is_empty(), "bad checksums on the wire:\n{}\n{}", bad.join("\n"), summary());
    assert!(
        verified_checksums(&text) >= 10,
        "tcpdump verified too few checksums (offload not off?): {}",
        summary()
    );
    let replies = at_a.read(&format!("src host {OUTSIDE_IP}"));
    let bad = bad_checksum_lines(&replies);
    assert!(
        bad.is_empty(),
        "reverse-translated replies reached A with bad checksums:\n{}\ncapture:\n{replies}",
        bad.join("\n")
    );
    assert!(
        verified_checksums(&replies) >= 5 && replies.contains(&format!("> {}.", a.ip)),
        "too few verified replies to A in its capture:\n{replies}"
    );

    // The node's own connection on the uplink: works, seen from the uplink
    // address, untouched by the NAT (not tracked).
    let s2 = node.stats();
    fetch(&node, &node.name, "blob.bin", LEN, &sha);
    let s3 = node.stats();
    assert_eq!(
        http_clients(&http),
        vec![UPLINK_IP.to_string(), UPLINK_IP.to_string()],
        "HTTP clients after the node's own fetch"
    );

    let ruleset = nft_ruleset(&node);
    let masq = masquerade_lines(&ruleset, "10.10.0.0/16");
    let flows = node.conntrack(None);
    match dp {
        Datapath::Ebpf => {
            let d = |r: &str| delta(&s0, &s1, r).0;
            assert!(
                // 5 pings, 2 UDP exchanges, a 256 KiB HTTP transfer (each
                // way at least its handshake, request/ACKs and data).
                d("nat-translated") >= 15 && d("nat-reverse-translated") >= 15,
                "the eBPF masquerade did not translate the traffic: nat-translated +{}, \
                 nat-reverse-translated +{}",
                d("nat-translated"),
                d("nat-reverse-translated")
            );
            // icmp a, icmp b, tcp a, udp a, udp b.
            assert!(d("ct-created") >= 5, "ct-created +{} for 5 flows", d("ct-created"));
            let (host, _) = delta(&s2, &s3, "pass-uplink-host");
            let (nat, _) = delta(&s2, &s3, "nat-reverse-translated");
            assert!(host >= 10, "the node's own fetch was not passed as host traffic: +{host}");
            assert_eq!(nat, 0, "the node's own traffic was reverse-translated");

            let want = [("icmp", &a), ("icmp", &b), ("tcp", &a), ("udp", &a), ("udp", &b)];
            for (proto, ep) in want {
                let hit = flows.iter().find(|f| {
                    f["protocol"] == proto
                        && f["endpoint"] == ep.name.as_str()
                        && f["original"]["src"] == ep.ip.as_str()
                        && f["original"]["dst"] == OUTSIDE_IP
                });
                let Some(f) = hit else {
                    node.fail(format!(
                        "conntrack ls lacks the {proto} flow of {} to {OUTSIDE_IP}:\n{}",
                        ep.name,
                        flows_summary(&flows)
                    ));
                };
                assert_eq!(f["translated"]["src"], UPLINK_IP, "flow not translated to the uplink: {f}");
                assert!(
                    f["packets"].as_u64().unwrap_or(0) >= 2 && f["bytes"].as_u64().unwrap_or(0) > 0,
                    "flow without counted packets both ways: {f}"
                );
                assert!(f["remaining_s"].is_u64() && f["state"].is_string(), "{f}");
            }
            assert!(
                !flows.iter().any(|f| f["original"]["src"] == UPLINK_IP),
                "the node's own connection is in the NAT table:\n{}",
                flows_summary(&flows)
            );
            let only_b = node.conntrack(Some(&b.name));
            assert!(
                only_b.len() == 2 && only_b.iter().all(|f| f["endpoint"] == b.name.as_str()),
                "conntrack ls --endpoint {} (icmp + udp expected):\n{}",
                b.name,
                flows_summary(&only_b)
            );
            assert!(masq.is_empty(), "eBPF network, yet an nft masquerade rule: {masq:?}\n{ruleset}");
            if let Some(ipt) = iptables_save(&node) {
                let m = masquerade_lines(&ipt, "10.10.0.0/16");
                assert!(m.is_empty(), "eBPF network, yet iptables MASQUERADE: {m:?}");
            }
        }
        Datapath::Kernel => {
            assert_no_nat_counters(&s0, &s3, "masquerade");
            // Documented: the eBPF flow table serves eBPF networks only.
            assert!(flows.is_empty(), "kernel datapath, yet eBPF conntrack entries:\n{}", flows_summary(&flows));
            assert!(
                masq.iter().any(|l| l.contains("oifname") && l.contains("masquerade")),
                "kernel datapath without the nft masquerade rule for 10.10.0.0/16:\n{ruleset}"
            );
        }
    }
    drop(http);
    drop(udp);
}
}

both_datapaths! {
/// 600 TCP connections from 4 endpoints, all open at the same time (each
/// client holds its connections until all are up), all translated and
/// answered. The outside sees them all from the uplink address with 600
/// distinct source ports (simultaneous flows can't share one); on eBPF the
/// ports come from --nat-port-range and `conntrack ls` holds every flow,
/// each endpoint's, with a distinct translated port.
fn masquerade_600_concurrent_connections_from_4_endpoints(dp) {
    const EPS: usize = 4;
    const PER: usize = 150;
    const NAT_LO: u16 = 20000;
    const NAT_HI: u16 = 29999;
    let mut opts = AgentOpts::with_uplink(dp);
    opts.extra_args = vec!["--nat-port-range".into(), format!("{NAT_LO}-{NAT_HI}")];
    let mut node = Node::with(opts);
    let out = node.outside().to_string();
    let eps: Vec<_> = (0..EPS)
        .map(|i| node.create_endpoint(&node.ep(&format!("c{i}")), &[]))
        .collect();
    let server = tcp_server(&node, &out, TCP_PORT);
    let s0 = node.stats();
    let port = TCP_PORT.to_string();
    let per = PER.to_string();
    let started = Instant::now();
    let mut clients: Vec<_> = eps
        .iter()
        .map(|e| {
            python_bg(
                &e.name,
                py::TCP_CLIENTS,
                &[&node.prefix, OUTSIDE_IP, &port, &per, &per, "3"],
            )
        })
        .collect();
    // While the clients hold their connections: the table has them all.
    let mut peak = 0;
    let mut peak_flows = Vec::new();
    if dp.is_ebpf() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let flows: Vec<Value> = node
                .conntrack(None)
                .into_iter()
                .filter(|f| f["protocol"] == "tcp" && f["original"]["dport"] == TCP_PORT)
                .collect();
            let live = flows.iter().filter(|f| f["state"] == "established").count();
            if live > peak {
                peak = live;
                peak_flows = flows;
            }
            if peak >= EPS * PER || clients.iter_mut().any(|c| c.try_status().is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut results = Vec::new();
    for (c, e) in clients.iter_mut().zip(&eps) {
        let st = c.wait(Duration::from_secs(90));
        let lines = c.lines();
        results.push((e.name.clone(), st, lines.last().cloned().unwrap_or_default(), lines.len(), c.stderr()));
    }
    eprintln!("{} connections in {:?}", EPS * PER, started.elapsed());
    for (name, st, last, n, err) in &results {
        assert!(
            st.map(|s| s.success()).unwrap_or(false) && *last == format!("ok {PER}"),
            "clients in {name}: status {st:?}, last line {last:?} ({n} lines), stderr {err}"
        );
    }
    // The server prints after answering: give its output a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while peers(&server).len() < EPS * PER && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = peers(&server);
    let by_ip = count_by_ip(seen.iter().map(|(ip, _)| ip.as_str()));
    assert_eq!(
        by_ip,
        [(UPLINK_IP.to_string(), EPS * PER)].into_iter().collect(),
        "sources of the {} connections seen by the outside",
        EPS * PER
    );
    let ports: BTreeSet<u16> = seen.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        ports.len(),
        EPS * PER,
        "{} simultaneous connections arrived from only {} distinct source ports",
        EPS * PER,
        ports.len()
    );
    let s1 = node.stats();
    match dp {
        Datapath::Ebpf => {
            let outside_range: Vec<&u16> = ports.iter().filter(|p| !(NAT_LO..=NAT_HI).contains(*p)).collect();
            assert!(
                outside_range.is_empty(),
                "source ports outside --nat-port-range {NAT_LO}-{NAT_HI}: {outside_range:?}"
            );
            assert!(
                peak >= EPS * PER,
                "at most {peak} established flows in conntrack ls while {} connections were open:\n{}",
                EPS * PER,
                flows_summary(&peak_flows[..peak_flows.len().min(20)])
            );
            let mut tports = BTreeSet::new();
            for e in &eps {
                let mine: Vec<&Value> = peak_flows.iter().filter(|f| f["endpoint"] == e.name.as_str()).collect();
                assert!(mine.len() >= PER, "{} flows of {} in conntrack ls (want {PER})", mine.len(), e.name);
                for f in mine {
                    assert_eq!(f["original"]["src"], e.ip.as_str(), "{f}");
                    assert_eq!(f["translated"]["src"], UPLINK_IP, "{f}");
                    tports.insert(f["translated"]["sport"].as_u64().unwrap_or(0));
                }
            }
            assert_eq!(tports.len(), peak_flows.len(), "translated ports shared between live flows");
            let (created, _) = delta(&s0, &s1, "ct-created");
            assert!(created >= (EPS * PER) as u64, "ct-created +{created}");
            for r in ["drop-nat-no-port", "drop-ct-table-full", "drop-redirect-failed", "drop-ct-invalid"] {
                let (p, _) = delta(&s0, &s1, r);
                assert_eq!(p, 0, "{r} +{p} during the concurrent connections");
            }
        }
        Datapath::Kernel => {
            assert_no_nat_counters(&s0, &s1, "600 connections");
            let flows = node.conntrack(None);
            assert!(flows.is_empty(), "kernel datapath, yet eBPF conntrack entries:\n{}", flows_summary(&flows));
        }
    }
}
}

both_datapaths! {
/// Flow lifetimes and GC (agent: --ct-tcp-closing 2 --ct-udp 3 --ct-icmp 3
/// --ct-gc-interval 1): a closed TCP flow, a UDP and an ICMP flow are
/// listed, then collected within lifetime + GC interval; an idle but open
/// TCP connection survives the collections and still works, and is
/// collected once closed. Kernel datapath: the same traffic works; the
/// eBPF table (documented) stays empty throughout.
fn conntrack_gc_removes_closed_and_expired_flows(dp) {
    let mut opts = AgentOpts::with_uplink(dp);
    opts.extra_args = ["--ct-tcp-closing", "2", "--ct-udp", "3", "--ct-icmp", "3", "--ct-gc-interval", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut node = Node::with(opts);
    let out = node.outside().to_string();
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let _tcp = tcp_server(&node, &out, TCP_PORT);
    let _udp = udp_echo_server(&node, &out, OUTSIDE_IP, UDP_PORT);
    let port = TCP_PORT.to_string();

    const HOLD: u64 = 9;
    let mut held = python_bg(&a.name, py::TCP_HOLD, &[&node.prefix, OUTSIDE_IP, &port, &HOLD.to_string()]);
    let Some(line) = held.wait_line(Duration::from_secs(10), |l| l.starts_with("connected")) else {
        panic!("held connection not established: {}", held.stderr());
    };
    let held_port: u64 = line.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("local port");
    let t0 = Instant::now();
    let o = python_in(&a.name, py::TCP_CLIENTS, &[&node.prefix, OUTSIDE_IP, &port, "1", "1"], Duration::from_secs(20));
    assert!(stdout_str(&o).trim() == "ok 1", "short TCP connection:\n{}", show(&o));
    udp_roundtrip(&node, &a.name, "gc");
    assert_ping(&a.name, OUTSIDE_IP, 1);

    let is_held = |f: &Value| f["protocol"] == "tcp" && f["original"]["sport"] == held_port;
    let flows = node.conntrack(None);
    if dp == Datapath::Kernel {
        assert!(flows.is_empty(), "kernel datapath, yet eBPF conntrack entries:\n{}", flows_summary(&flows));
    } else {
        let find = |pred: &dyn Fn(&Value) -> bool| flows.iter().find(|f| pred(f)).cloned();
        let h = find(&is_held).unwrap_or_else(|| panic!("held TCP flow not listed:\n{}", flows_summary(&flows)));
        assert_eq!(h["state"], "established", "held flow: {h}");
        assert!(h["remaining_s"].as_u64().unwrap_or(0) > 3600, "established lifetime: {h}");
        let short = find(&|f: &Value| f["protocol"] == "tcp" && !is_held(f))
            .unwrap_or_else(|| panic!("short TCP flow not listed:\n{}", flows_summary(&flows)));
        assert!(
            short["state"] != "established" && short["remaining_s"].as_u64().unwrap_or(99) <= 2,
            "a closed TCP flow must be closing/closed with at most --ct-tcp-closing 2 s left: {short}"
        );
        for proto in ["udp", "icmp"] {
            let f = find(&|f: &Value| f["protocol"] == proto)
                .unwrap_or_else(|| panic!("{proto} flow not listed:\n{}", flows_summary(&flows)));
            assert!(f["remaining_s"].as_u64().unwrap_or(99) <= 3, "{proto} lifetime 3 s: {f}");
        }
        // Everything but the held flow collected: lifetime 3 s + GC 1 s + slack.
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut left;
        loop {
            left = node.conntrack(None);
            if left.len() == 1 && is_held(&left[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after {:?}, expired flows still listed (or the held one gone):\n{}",
                t0.elapsed(),
                flows_summary(&left)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("expired flows collected {:?} after creation", t0.elapsed());
    }
    // The idle connection survived the collections: it still works.
    let st = held.wait(Duration::from_secs(HOLD + 10));
    let lines = held.lines();
    assert!(
        st.map(|s| s.success()).unwrap_or(false) && lines.last().map(String::as_str) == Some("done"),
        "the idle connection broke across GC runs: {lines:?} {}",
        held.stderr()
    );
    if dp.is_ebpf() {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let left = node.conntrack(None);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "closed held flow not collected:\n{}", flows_summary(&left));
            std::thread::sleep(Duration::from_millis(250));
        }
    } else {
        let flows = node.conntrack(None);
        assert!(flows.is_empty(), "kernel datapath, yet eBPF conntrack entries:\n{}", flows_summary(&flows));
    }
}
}

/// Sends raw frames from `ns`'s eth0 ([`py::RAW_SENDER`]).
fn send_frames(node: &Node, ns: &str, frames: &[Vec<u8>]) {
    let hexes: Vec<String> = frames.iter().map(|f| hex(f)).collect();
    let mut args = vec![node.prefix.as_str(), "eth0"];
    args.extend(hexes.iter().map(String::as_str));
    let out = python_in(ns, py::RAW_SENDER, &args, Duration::from_secs(20));
    assert!(out.status.success(), "raw send in {ns}:\n{}", show(&out));
}

/// The MAC address of a network's bridge (the endpoints' gateway).
fn gateway_mac(node: &mut Node, network: &str) -> String {
    let net = node.inspect_network(network);
    let br = net["bridge"].as_str().expect("bridge").to_string();
    let l = link(&node.name, &br).unwrap_or_else(|| panic!("no bridge {br}"));
    l["address"].as_str().expect("bridge MAC").to_string()
}

/// Wire lines (`tcpdump -r -vv` output, two lines per packet) of packets
/// from or to one of `ports`.
fn lines_with_ports(text: &str, ports: &[u16]) -> Vec<String> {
    // -vv puts the IP header on one line and the ports on the next.
    let lines: Vec<&str> = text.lines().collect();
    let mut hits = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if ports.iter().any(|p| l.contains(&format!(".{p} >")) || l.contains(&format!(".{p}:"))) {
            let prev = if i > 0 { lines[i - 1] } else { "" };
            hits.push(format!("{prev}\n{l}"));
        }
    }
    hits
}

both_datapaths! {
/// Malformed packets from an endpoint towards the outside: a TCP SYN with a
/// bad checksum, IPv4 fragments (first and non-first, never completed), a
/// truncated TCP header and a TCP ACK of no known flow. None may leak the
/// endpoint's address, carry a "repaired" checksum or put garbage in the
/// flow table; the eBPF datapath counts its drops (drop-frag-unknown,
/// drop-truncated, drop-ct-invalid). Afterwards a normal flow still works.
/// Documented difference: eBPF translates first fragments as they come
/// (no reassembly; the later fragments of other datagrams are dropped), the
/// kernel holds them all for a reassembly that never completes.
fn malformed_packets_from_an_endpoint_do_not_corrupt_the_nat(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let gw = gateway_mac(&mut node, "bridge");
    let _tcp = tcp_server(&node, &out, TCP_PORT);
    let _udp = udp_echo_server(&node, &out, OUTSIDE_IP, UDP_PORT);
    // Resolve the gateway in A first (the raw frames need no ARP, replies do).
    assert_ping(&a.name, &a.gateway, 1);
    let mut wire = Capture::start(&node, &out, "eth0", "outside", "not arp");
    const P_BADSUM: u16 = 40001;
    const P_FRAG: u16 = 40002;
    const P_TRUNC: u16 = 40003;
    const P_ACK: u16 = 40004;
    let o = frames::parse_ip(OUTSIDE_IP);
    let (a_ip, a_mac, gw_mac) = (frames::parse_ip(&a.ip), frames::parse_mac(&a.mac), frames::parse_mac(&gw));
    // Ethernet + IPv4 (TTL 64, valid header checksum) from A to the gateway.
    let ipv4 = |proto: u8, id: u16, frag: u16, l4: &[u8]| {
        let ip = Ipv4 { id, frag, ..Ipv4::new(a_ip, o, proto) };
        frames::eth(gw_mac, a_mac, frames::ETH_P_IPV4, &ip.packet(l4))
    };
    let tcp = |sport: u16, seq: u32, flags: u8| Tcp { seq, ..Tcp::new(sport, TCP_PORT, flags) }.segment(a_ip, o, b"");
    let mut f = Vec::new();
    for i in 0..3u16 {
        let mut syn = tcp(P_BADSUM, 1000 + u32::from(i), frames::TCP_SYN);
        syn[16] ^= 0x5a;
        f.push(ipv4(6, 0x100 + i, 0x4000, &syn));
    }
    for i in 0..2u16 {
        let udp = frames::udp(a_ip, o, P_FRAG, UDP_PORT, &[b'F'; 64]);
        // First fragment (MF, offset 0) and a last one (offset 24 bytes) of
        // different datagrams: nothing ever completes.
        f.push(ipv4(17, 0x200 + i, 0x2000, &udp[..24]));
        f.push(ipv4(17, 0x210 + i, 3, &udp[24..]));
    }
    for i in 0..3u16 {
        let t = tcp(P_TRUNC, 7, frames::TCP_SYN);
        f.push(ipv4(6, 0x300 + i, 0x4000, &t[..8]));
    }
    for i in 0..3u16 {
        let t = tcp(P_ACK, 77 + u32::from(i), frames::TCP_ACK);
        f.push(ipv4(6, 0x400 + i, 0x4000, &t));
    }
    let s0 = node.stats();
    send_frames(&node, &a.name, &f);
    std::thread::sleep(Duration::from_millis(300));
    let s1 = node.stats();
    let flows = node.conntrack(None);
    let text = wire.read("");
    let changed: Vec<String> = s1
        .keys()
        .filter_map(|r| {
            let (p, _) = delta(&s0, &s1, r);
            (p > 0).then(|| format!("{r} +{p}"))
        })
        .collect();
    let ctx = format!(
        "[{dp}] counters {changed:?}\nconntrack ls:\n{}\noutside capture:\n{text}",
        flows_summary(&flows)
    );

    // Never the endpoint's address on the outside, translated or dropped.
    assert!(
        !text.contains(&format!("{}.", a.ip)) && !text.contains(&format!("{} >", a.ip)),
        "malformed packets left the node untranslated (the endpoint's address leaked to the \
         outside):\n{ctx}"
    );
    // A bad checksum is never "repaired" by the translation: if the SYN
    // goes out, its checksum is still wrong (so the outside drops it).
    let badsum = lines_with_ports(&text, &[P_BADSUM]);
    assert!(
        !badsum.iter().any(|l| l.contains("(correct)")),
        "the bad-checksum SYN left with a valid checksum:\n{}\n{ctx}",
        badsum.join("\n")
    );
    // No later fragment of an unknown datagram reaches the outside; first
    // fragments only translated, on eBPF (see above).
    assert!(!text.contains("offset 24"), "a fragment of no known datagram reached the outside:\n{ctx}");
    if !dp.is_ebpf() {
        assert!(
            lines_with_ports(&text, &[P_FRAG]).is_empty() && !text.contains("flags [+]"),
            "an IPv4 fragment reached the outside:\n{ctx}"
        );
    }
    match dp {
        Datapath::Ebpf => {
            for (r, n) in [("drop-frag-unknown", 2), ("drop-truncated", 3), ("drop-ct-invalid", 3)] {
                let (p, _) = delta(&s0, &s1, r);
                assert!(p >= n, "{r} +{p}, want >= {n}:\n{ctx}");
            }
            assert!(
                lines_with_ports(&text, &[P_TRUNC, P_ACK]).is_empty(),
                "a truncated header or an ACK of no flow reached the outside:\n{ctx}"
            );
            // Only the (valid-looking, bad-checksum) SYN and the first
            // fragments may have made an entry, and only well-formed ones.
            for fl in &flows {
                let frag = fl["protocol"] == "udp"
                    && fl["original"]["sport"] == P_FRAG
                    && fl["original"]["src"] == a.ip.as_str()
                    && fl["translated"]["src"] == UPLINK_IP;
                let ok = frag
                    || fl["protocol"] == "tcp"
                    && fl["original"]["sport"] == P_BADSUM
                    && fl["original"]["src"] == a.ip.as_str()
                    && fl["original"]["dst"] == OUTSIDE_IP
                    && fl["original"]["dport"] == TCP_PORT
                    && fl["translated"]["src"] == UPLINK_IP
                    && fl["state"] == "syn-sent"
                    && fl["endpoint"] == a.name.as_str();
                assert!(ok, "unexpected conntrack entry after malformed packets: {fl}\n{ctx}");
            }
        }
        Datapath::Kernel => {
            assert_no_nat_counters(&s0, &s1, "malformed packets");
            assert!(flows.is_empty(), "kernel datapath, yet eBPF conntrack entries:\n{ctx}");
        }
    }

    // Normal flows still work afterwards, and the table holds them.
    let port = TCP_PORT.to_string();
    let o = python_in(&a.name, py::TCP_CLIENTS, &[&node.prefix, OUTSIDE_IP, &port, "3", "3"], Duration::from_secs(30));
    assert!(stdout_str(&o).trim() == "ok 3", "TCP after the malformed packets:\n{}", show(&o));
    udp_roundtrip(&node, &a.name, "after");
    assert!(node.agent_alive(), "agent died");
    if dp.is_ebpf() {
        let flows = node.conntrack(None);
        let tcp = flows.iter().filter(|f| f["protocol"] == "tcp" && f["original"]["sport"] != P_BADSUM).count();
        let udp = flows.iter().filter(|f| f["protocol"] == "udp" && f["original"]["sport"] != P_FRAG).count();
        assert!(tcp == 3 && udp == 1, "flows after the malformed packets:\n{}", flows_summary(&flows));
    }
}
}

both_datapaths! {
/// An `--internal` network cannot reach the outside, not even with a
/// default route added by hand inside the endpoint (eBPF:
/// drop-policy-internal; kernel: the nft forward rule); a normal network
/// on the same node can. The outside sees exactly the normal network's
/// echo requests.
fn internal_network_cannot_reach_the_outside(dp) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let out = node.outside().to_string();
    let int = node.ep("int");
    node.ok(&["network", "create", &int, "--subnet", "10.71.0.0/24", "--internal"]);
    let i = node.create_endpoint(&node.ep("i"), &["--network", &int]);
    let n = node.create_endpoint(&node.ep("n"), &[]);
    let mut wire = Capture::start(&node, &out, "eth0", "outside", "icmp");

    // Without a route (the agent gives internal endpoints none).
    let o = net::ping(&i.name, OUTSIDE_IP, 1);
    assert!(!o.status.success(), "internal endpoint reached the outside without a route:\n{}", show(&o));
    // With a default route added inside the endpoint: the datapath itself
    // must stop it.
    let r = exec_in(&i.name, &["ip", "route", "add", "default", "via", &i.gateway]);
    assert!(r.status.success(), "ip route add in {}:\n{}", i.name, show(&r));
    let s0 = node.stats();
    let o = net::ping(&i.name, OUTSIDE_IP, 3);
    let s1 = node.stats();
    assert!(!o.status.success(), "internal endpoint reached the outside:\n{}", show(&o));
    // The control: a normal network reaches it.
    assert_ping(&n.name, OUTSIDE_IP, 2);
    let text = wire.read("icmp[icmptype] == icmp-echo");
    let requests = text.lines().filter(|l| l.contains("ICMP echo request")).count();
    assert_eq!(
        requests, 2,
        "echo requests seen outside: want only the normal endpoint's 2:\n{text}"
    );
    let (internal, _) = delta(&s0, &s1, "drop-policy-internal");
    match dp {
        Datapath::Ebpf => assert!(internal >= 3, "3 echo requests, drop-policy-internal +{internal}"),
        Datapath::Kernel => {
            assert_eq!(internal, 0, "kernel datapath counted eBPF drops");
            let rules = nft_ruleset(&node);
            assert!(
                rules.contains(&format!("internal {int}")),
                "no nft rule for the internal network {int}:\n{rules}"
            );
        }
    }
}
}
