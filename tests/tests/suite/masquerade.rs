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
use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use datapath_tests::frames::{self, hex};
use datapath_tests::net::{self, exec_in, link, python_bg, python_in};
use datapath_tests::node::{delta, AgentOpts, Datapath, Node, Stats, OUTSIDE_IP, UPLINK_IP};
use datapath_tests::outside::{
    bad_checksum_lines, count_by_ip, http_clients, http_server, peers, tcp_server,
    udp_echo_server, verified_checksums, Capture,
};
use datapath_tests::proc::{run, show, stdout_str};
use datapath_tests::{assert_ping, both_datapaths, py};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9999;
const TCP_PORT: u16 = 7777;

/// The counters that only the eBPF masquerade moves.
const NAT_COUNTERS: [&str; 4] = [
    "nat-translated",
    "nat-reverse-translated",
    "ct-created",
    "pass-uplink-host",
];

/// Writes `len` random bytes to `<node dir>/www/NAME`; returns their sha256.
fn blob(node: &Node, name: &str, len: usize) -> String {
    let www = node.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let file = www.join(name);
    std::fs::write(&file, &data).unwrap();
    let out = run(Command::new("sha256sum").arg(&file));
    assert!(out.status.success(), "{}", show(&out));
    stdout_str(&out).split_whitespace().next().unwrap().to_string()
}

/// Fetches http://OUTSIDE_IP:HTTP_PORT/NAME from `ns`; asserts length and
/// sha256.
fn fetch(node: &Node, ns: &str, name: &str, len: usize, sha: &str) {
    let url = format!("http://{OUTSIDE_IP}:{HTTP_PORT}/{name}");
    let out = python_in(ns, py::HTTP_FETCH, &[&node.prefix, &url], Duration::from_secs(40));
    assert!(out.status.success(), "fetch {url} from {ns}:\n{}", show(&out));
    assert_eq!(
        stdout_str(&out).trim(),
        format!("{len} {sha}"),
        "content fetched from the outside by {ns} differs"
    );
}

/// One UDP request/response from `ns` to the outside echo server; the reply
/// must come from OUTSIDE_IP.
fn udp_roundtrip(node: &Node, ns: &str, tag: &str) {
    let msg = format!("{}-{tag}", node.prefix);
    let port = UDP_PORT.to_string();
    let out = python_in(
        ns,
        py::UDP_CLIENT,
        &[&node.prefix, OUTSIDE_IP, &port, &msg],
        Duration::from_secs(20),
    );
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
    flows
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
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
