//! Issue "IPv6 dual stack", upgrade in place: a node running the last
//! IPv4-only build (commit 1698390, `cargo xtask build-baseline`) with live
//! IPv4 flows (east-west and masqueraded) is upgraded to the current
//! (dual-stack) build: SIGTERM the old agent, start the current one on the
//! same state dir and bpffs. The traffic of `continuity` (A pings B and the
//! outside every 5 ms, a TCP echo stream through the masquerade) loses
//! nothing and never resets; on the eBPF datapath the conntrack flows are
//! the same (tuples and translated ports) and still counting, the
//! attachments are replaced (other programs), every map the old object
//! lacked is created and the old ones are reused (CT among them, contents
//! and all) through the pins' migration path. The old state file loads (its
//! networks and endpoints are the same), and the upgraded node does dual
//! stack: a new `--ipv6` network's endpoints ping6 each other and the
//! outside's IPv6 address. While the old agent runs, the node's CLI is the
//! old build's too (a user's CLI matches the agent).

use std::collections::BTreeSet;
use std::time::Duration;

use datapath::testbed::topology::{self, OUTSIDE_IP6};
use datapath_tests::node::{AgentBin, AgentOpts, Datapath, Node, UPLINK_DEV};
use datapath_tests::{assert_ping, both_datapaths};
use serde_json::Value;

use super::continuity::{check_flows_kept, check_traffic, print_traffic, Snapshot, Traffic};
use super::{pins_under, start_count, start_list, MAPS_DIR};

/// Networks and endpoints as `ls -o json` shows them, reduced to what an
/// upgrade must not change.
fn inventory(node: &mut Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in node.networks() {
        out.insert(format!("network {} {} {}", n["name"], n["subnet"], n["datapath"]));
    }
    for e in node.endpoints() {
        out.insert(format!("endpoint {} {} {} {}", e["name"], e["ip"], e["mac"], e["network"]));
    }
    out
}

/// The map names of the start report's lists (`maps_migrated` entries read
/// "NAME (why)").
fn map_names(start: &Value, key: &str) -> BTreeSet<String> {
    start_list(start, key).iter().map(|m| m.split([' ', ':']).next().unwrap_or_default().to_string()).collect()
}

fn upgrade_from_v4_only(dp: Datapath) {
    let mut node = Node::with(AgentOpts { bin: AgentBin::Baseline, ..AgentOpts::with_uplink(dp) });
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    let inventory_before = inventory(&mut node);
    let traffic = Traffic::start(&node, &a, &b);
    std::thread::sleep(Duration::from_secs(1));
    let before = dp.is_ebpf().then(|| Snapshot::take(&mut node, &a));
    let old_maps: BTreeSet<String> = pins_under(&node.bpffs.join(MAPS_DIR)).into_iter().collect();

    let status = node.stop_agent();
    assert!(status.success(), "the IPv4-only agent exited with {status} on SIGTERM\n{}", node.agent_log_tail(30));
    node.opts.bin = AgentBin::Current;
    let answered = node.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    let after = dp.is_ebpf().then(|| Snapshot::take(&mut node, &a));
    let (pings, stream) = traffic.finish();
    print_traffic(&format!("upgrade from the IPv4-only build on {dp}"), &pings, &stream, answered);
    check_traffic(&mut node, &pings, &stream);

    if let (Some(before), Some(after)) = (before, after) {
        let start = check_flows_kept(&mut node, "the upgrade from the IPv4-only build", stream.sport, &before, &after);
        if start_count(&start, "attachments_replaced") == 0 || before.prog_tag == after.prog_tag {
            node.fail(format!(
                "upgrade: attachments_replaced {} (want > 0), A's program tag {:?} -> {:?} (want a change)",
                start["attachments_replaced"], before.prog_tag, after.prog_tag
            ));
        }
        let (reused, created, migrated) =
            (map_names(&start, "maps_reused"), map_names(&start, "maps_created"), map_names(&start, "maps_migrated"));
        let current: BTreeSet<String> = reused.iter().chain(&created).chain(&migrated).cloned().collect();
        let new: BTreeSet<String> = current.difference(&old_maps).cloned().collect();
        println!("upgrade: the IPv4-only build pinned {old_maps:?}; the current object's new maps {new:?}");
        if old_maps.is_empty() || new.is_empty() || created != new {
            node.fail(format!(
                "upgrade: the maps the IPv4-only object lacked ({new:?}) must be exactly the ones created \
                 ({created:?}), and neither set empty; old pins {old_maps:?}; start report {start}"
            ));
        }
        if !reused.contains(datapath_common::MAP_CT) {
            node.fail(format!("upgrade: CT was not reused (kept with its flows): {start}"));
        }
        let pins_now: BTreeSet<String> = pins_under(&node.bpffs.join(MAPS_DIR)).into_iter().collect();
        if !current.is_subset(&pins_now) {
            node.fail(format!("upgrade: not every map of the current object is pinned: {current:?} vs {pins_now:?}"));
        }
    }

    // The old state file loaded: the same networks and endpoints.
    let inventory_after = inventory(&mut node);
    assert_eq!(inventory_before, inventory_after, "networks/endpoints differ after the upgrade");

    // The upgraded node does dual stack (a network's families are fixed: a
    // new one): ping6 between its endpoints and to the outside's IPv6.
    let outside = node.outside().to_string();
    topology::uplink_ipv6_blocking(&node.name, &outside, UPLINK_DEV).expect("IPv6 on the uplink");
    let net6 = node.ep("six");
    node.ok(&["network", "create", &net6, "--subnet", "10.63.0.0/24", "--ipv6", "--subnet-v6", "fd00:63::/64"]);
    let mut ip6 = Vec::new();
    for suffix in ["c", "d"] {
        let name = node.ep(suffix);
        node.ok(&["endpoint", "create", &name, "--network", &net6]);
        let v = node.json(&["endpoint", "inspect", &name]);
        match v["ip6"].as_str() {
            Some(ip) => ip6.push((name, ip.to_string())),
            None => node.fail(format!("endpoint {name} of dual-stack network {net6} has no ip6: {v}")),
        }
    }
    assert_ping(&ip6[0].0, &ip6[1].1, 3);
    assert_ping(&ip6[1].0, &ip6[0].1, 3);
    assert_ping(&ip6[0].0, &OUTSIDE_IP6.to_string(), 3);
    // And the old endpoints still reach each other and the outside.
    assert_ping(&a.name, &b.ip, 2);
    assert_ping(&a.name, datapath_tests::node::OUTSIDE_IP, 2);
}

both_datapaths! {
/// The node runs the IPv4-only build (commit 1698390) with live flows and
/// is upgraded in place to the current build: nothing lost, no reset, the
/// same flows (eBPF: conntrack kept, attachments replaced, the new maps
/// created, the old ones reused), the old state loads, and a new `--ipv6`
/// network works (ping6 between endpoints and to the outside).
fn traffic_survives_upgrade_from_v4_only_build(dp) {
    upgrade_from_v4_only(dp);
}
}
