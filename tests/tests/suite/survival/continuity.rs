//! Test 1: traffic does not notice the agent going away and coming back.
//! Endpoint A pings B (east-west) and the outside every 5 ms and holds a TCP
//! echo stream (a line every 20 ms) to a server in the outside namespace
//! through the masquerade, across (a) SIGTERM + start, (b) kill -9 + start
//! 3 s later, (c) an upgrade (restart with the variant eBPF object) and
//! (d) a conntrack layout change (`--ct-max-entries 65536`). Zero pings
//! lost, no reset, no echo missing; on the eBPF datapath also the same
//! flows (original tuples and translated ports) before and after, the TCP
//! flow still counting, and the start report saying what was kept.

use std::time::Duration;

use datapath::testbed::process::BgProcess;
use datapath_tests::env::workspace_root;
use datapath_tests::node::{AgentOpts, Datapath, Endpoint, Node, OUTSIDE_IP};
use datapath_tests::traffic::{echo_server, EchoStream, PingReport, Pinger, StreamReport};
use datapath_tests::{assert_ping, both_datapaths};
use serde_json::Value;

use super::{flow_keys, start_count, start_list, start_report};

const ECHO_PORT: u16 = 7007;
const PING_INTERVAL: Duration = Duration::from_millis(5);
const STREAM_INTERVAL: Duration = Duration::from_millis(20);
/// The `--ct-max-entries` of scenario (d); the default is another.
const CT_RESIZED: u32 = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    /// SIGTERM, then start.
    Sigterm,
    /// SIGKILL, then start 3 s later.
    Kill9,
    /// SIGTERM, then start with `DATAPATH_BPF_OBJECT` = the variant object.
    Upgrade,
    /// SIGTERM, then start with another `--ct-max-entries`.
    CtResize,
}

/// The test-only variant object (same behaviour, other program bytes).
fn variant_object() -> String {
    let p = workspace_root().join("target/bpf/datapath-variant.bpf.o");
    assert!(p.is_file(), "{} is missing: build it with `cargo xtask build-ebpf --variant`", p.display());
    p.display().to_string()
}

/// Traffic from A while the scenario runs (also the upgrade from the
/// IPv4-only build's, `upgrade_v4`).
pub(super) struct Traffic {
    pinger: Pinger,
    stream: EchoStream,
    _server: BgProcess,
}

impl Traffic {
    pub(super) fn start(node: &Node, a: &Endpoint, b: &Endpoint) -> Traffic {
        // Warm the neighbour caches and the paths, so the count starts clean.
        assert_ping(&a.name, &b.ip, 1);
        assert_ping(&a.name, OUTSIDE_IP, 1);
        let server = echo_server(node, node.outside(), ECHO_PORT);
        let pinger = Pinger::start(node, &a.name, &[&b.ip, OUTSIDE_IP], PING_INTERVAL);
        let stream = EchoStream::start(node, &a.name, OUTSIDE_IP, ECHO_PORT, STREAM_INTERVAL);
        Traffic { pinger, stream, _server: server }
    }

    pub(super) fn finish(self) -> (Vec<(String, PingReport)>, StreamReport) {
        let stream = self.stream.finish();
        (self.pinger.finish(), stream)
    }
}

/// What the eBPF datapath shows of A before and after.
pub(super) struct Snapshot {
    flows: Vec<Value>,
    pub(super) prog_tag: Option<String>,
}

impl Snapshot {
    pub(super) fn take(node: &mut Node, a: &Endpoint) -> Snapshot {
        let flows = node.conntrack(Some(&a.name));
        let prog_tag = node.inspect_endpoint(&a.name).json["tc"]["prog_tag"].as_str().map(String::from);
        Snapshot { flows, prog_tag }
    }

    /// Packets counted so far on the TCP flow from local port `sport`.
    fn tcp_packets(&self, sport: u16) -> Option<u64> {
        self.flows
            .iter()
            .find(|f| f["protocol"] == "tcp" && f["original"]["sport"] == sport)
            .and_then(|f| f["packets"].as_u64())
    }
}

/// Stops the agent the scenario's way and starts the new one; how long
/// the new one took to answer.
fn restart(node: &mut Node, how: Restart) -> Duration {
    if how == Restart::Kill9 {
        node.kill_agent();
        std::thread::sleep(Duration::from_secs(3));
    } else {
        let status = node.stop_agent();
        assert!(status.success(), "agent exited with {status} on SIGTERM\n{}", node.agent_log_tail(30));
    }
    match how {
        Restart::Upgrade => node.opts.env.push(("DATAPATH_BPF_OBJECT".into(), variant_object())),
        Restart::CtResize => node.opts.extra_args.extend(["--ct-max-entries".into(), CT_RESIZED.to_string()]),
        Restart::Sigterm | Restart::Kill9 => {}
    }
    node.start_agent()
}

fn continuity(dp: Datapath, how: Restart) {
    let mut node = Node::with(AgentOpts::with_uplink(dp));
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    let traffic = Traffic::start(&node, &a, &b);
    std::thread::sleep(Duration::from_secs(1));
    let before = dp.is_ebpf().then(|| Snapshot::take(&mut node, &a));
    let answered = restart(&mut node, how);
    // Long enough for the new agent's datapath to carry traffic a while.
    std::thread::sleep(Duration::from_secs(2));
    let after = dp.is_ebpf().then(|| Snapshot::take(&mut node, &a));
    let (pings, stream) = traffic.finish();
    print_traffic(&format!("{how:?} on {dp}"), &pings, &stream, answered);
    check_traffic(&mut node, &pings, &stream);
    // On the kernel datapath only the continuity applies: it has no eBPF
    // conntrack, programs or pins (bridge + nftables survive on their own).
    if let (Some(before), Some(after)) = (before, after) {
        check_datapath(&mut node, how, stream.sport, &before, &after);
    }
}

/// One line of what the traffic saw across the restart.
pub(super) fn print_traffic(what: &str, pings: &[(String, PingReport)], stream: &StreamReport, answered: Duration) {
    let lost: Vec<String> = pings.iter().map(|(d, r)| format!("{d} {}/{}", r.lost, r.sent)).collect();
    println!(
        "survival {what}: pings lost {}; max rtt {:?} ms; TCP resets {}, echoes {}/{} (max {} ms); \
         agent answered {} ms after its start",
        lost.join(", "),
        pings.iter().map(|(_, r)| r.max_rtt_ms).collect::<Vec<_>>(),
        stream.resets,
        stream.echoed,
        stream.sent,
        stream.max_ms,
        answered.as_millis()
    );
}

/// Zero pings lost to either destination; the stream never reset and every
/// line came back.
pub(super) fn check_traffic(node: &mut Node, pings: &[(String, PingReport)], stream: &StreamReport) {
    for (dst, r) in pings {
        if r.lost > 0 || r.sent < 600 {
            node.fail(format!("pings to {dst}: {} of {} lost (first seqs {:?})", r.lost, r.sent, r.lost_seqs));
        }
    }
    if stream.resets > 0 || !stream.errors.is_empty() || stream.echoed != stream.sent || stream.sent < 100 {
        node.fail(format!(
            "TCP echo stream: {} resets, {} of {} lines echoed, errors {:?}",
            stream.resets, stream.echoed, stream.sent, stream.errors
        ));
    }
}

/// The flows survived (same tuples and translated ports, the TCP flow from
/// `sport` still counting) and the start report kept conntrack entries;
/// returns the start report.
pub(super) fn check_flows_kept(node: &mut Node, what: &str, sport: u16, before: &Snapshot, after: &Snapshot) -> Value {
    let (k0, k1) = (flow_keys(&before.flows), flow_keys(&after.flows));
    if k0 != k1 || !k0.iter().any(|k| k.starts_with("tcp ")) || !k0.iter().any(|k| k.starts_with("icmp ")) {
        node.fail(format!(
            "conntrack of A changed across {what} (or lacks the TCP/ICMP flow):\nbefore {k0:#?}\nafter {k1:#?}"
        ));
    }
    let (p0, p1) = (before.tcp_packets(sport), after.tcp_packets(sport));
    if !matches!((p0, p1), (Some(x), Some(y)) if y > x) {
        node.fail(format!("the TCP flow stopped counting across {what}: packets {p0:?} -> {p1:?}"));
    }
    let start = start_report(node);
    println!("survival {what}: start report {start}");
    let kept = start_count(&start, "conntrack_entries_kept");
    if kept == 0 {
        node.fail(format!("start.conntrack_entries_kept is 0 after {what}: {start}"));
    }
    start
}

/// The flows survived and the start report says why.
fn check_datapath(node: &mut Node, how: Restart, sport: u16, before: &Snapshot, after: &Snapshot) {
    let start = check_flows_kept(node, &format!("{how:?}"), sport, before, after);
    match how {
        Restart::Sigterm | Restart::Kill9 => {
            let (replaced, created) =
                (start_count(&start, "attachments_replaced"), start_count(&start, "attachments_created"));
            if start_count(&start, "attachments_kept") == 0 || replaced + created > 0 {
                node.fail(format!("a restart with the same program did not keep every attachment: {start}"));
            }
        }
        Restart::Upgrade => {
            if start_count(&start, "attachments_replaced") == 0 || before.prog_tag == after.prog_tag {
                node.fail(format!(
                    "upgrade: attachments_replaced {} (want > 0), A's program tag {:?} -> {:?} (want a change)",
                    start["attachments_replaced"], before.prog_tag, after.prog_tag
                ));
            }
        }
        Restart::CtResize => {
            let migrated = start_list(&start, "maps_migrated");
            if !migrated.iter().any(|m| m == "CT" || m.starts_with("CT:")) {
                node.fail(format!("--ct-max-entries {CT_RESIZED}: start.maps_migrated does not name CT: {start}"));
            }
        }
    }
}

both_datapaths! {
/// (a) SIGTERM, then start: nothing lost (on the kernel datapath only the
/// ping/TCP continuity applies).
fn traffic_survives_sigterm_restart(dp) {
    continuity(dp, Restart::Sigterm);
}
}

both_datapaths! {
/// (b) kill -9, then start 3 s later: nothing lost (on the kernel datapath
/// only the ping/TCP continuity applies).
fn traffic_survives_kill9_restart(dp) {
    continuity(dp, Restart::Kill9);
}
}

/// (c) Upgrade: the restart loads the variant object (other program bytes);
/// the attachments are replaced in place, nothing lost. eBPF only.
#[test]
fn traffic_survives_upgrade() {
    datapath_tests::kernel_test!();
    continuity(Datapath::Ebpf, Restart::Upgrade);
}

/// (d) Conntrack layout change: `--ct-max-entries 65536` migrates the CT
/// map; its flows carry on. eBPF only.
#[test]
fn traffic_survives_ct_migration() {
    datapath_tests::kernel_test!();
    assert_ne!(CT_RESIZED, datapath_common::CT_MAX_ENTRIES, "scenario (d) needs another capacity than the default");
    continuity(Datapath::Ebpf, Restart::CtResize);
}
