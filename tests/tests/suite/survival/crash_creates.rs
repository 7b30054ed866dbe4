//! Test 2: the agent is killed (SIGKILL) in the middle of 20 parallel
//! endpoint creates, after 2, 8 or 15 of them have been answered. The agent
//! started next rolls back the half-made ones: every endpoint it lists
//! works, every create answered before the crash is kept, and nothing is
//! left without an endpoint (veth, namespace, address, map entry). The
//! names not listed can be created again, and then the addresses are the 20
//! lowest of the subnet (none leaked).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use datapath::api::{Client, EndpointCreate, Request};
use datapath_tests::assert_ping;
use datapath_tests::node::{Datapath, Node};
use serde_json::Value;

use super::{pinned_map_len, pinned_u32_keys, start_count, start_report, MAPS_DIR};

const CREATES: usize = 20;

/// Fires the creates in parallel through the API client; SIGKILLs the agent
/// `into` (a fraction) of one create's time after `kill_after` of them have
/// been answered, so the kill lands inside the next create (the agent makes
/// them one at a time). The names whose create answered OK before the kill.
fn fire_and_kill(node: &mut Node, names: &[String], kill_after: usize, into: f64) -> BTreeSet<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t0 = Instant::now();
        for name in names.iter().cloned() {
            let client = Client::new(&node.socket);
            let tx = tx.clone();
            tokio::spawn(async move {
                let req = EndpointCreate { name: name.clone(), ..Default::default() };
                let r = client.call(Request::EndpointCreate(req)).await;
                let _ = tx.send((name, r.is_ok()));
            });
        }
        drop(tx);
        let (mut answered, mut ok) = (0, BTreeSet::new());
        while let Some((name, success)) = rx.recv().await {
            answered += 1;
            if success {
                ok.insert(name);
            }
            if answered == kill_after {
                let one_create = t0.elapsed() / kill_after as u32;
                tokio::time::sleep(one_create.mul_f64(into)).await;
                node.kill_agent();
                println!(
                    "killed {:.0} ms after answer {kill_after} (one create: {:.0} ms)",
                    one_create.mul_f64(into).as_secs_f64() * 1e3,
                    one_create.as_secs_f64() * 1e3
                );
                break;
            }
        }
        // Later answers are failures by now (the agent is gone); answers
        // sent during the sleep before the kill are not counted as acked.
        let _ = tokio::time::timeout(Duration::from_secs(10), async { while rx.recv().await.is_some() {} }).await;
        ok
    })
}

fn crash_during_creates(kill_after: usize, into: f64) {
    let mut node = Node::on(Datapath::Ebpf);
    let names: Vec<String> = (0..CREATES).map(|i| node.ep(&format!("c{i:02}"))).collect();
    let acked = fire_and_kill(&mut node, &names, kill_after, into);
    let answered = node.start_agent();
    let start = start_report(&mut node);
    let eps = node.endpoints();
    println!(
        "kill -9 after {kill_after} creates answered ({} OK): {} endpoints listed after the restart, \
         rolled back {}, stale map entries removed {}; agent answered {} ms after its start",
        acked.len(),
        eps.len(),
        start_count(&start, "endpoints_rolled_back"),
        start_count(&start, "stale_entries_removed"),
        answered.as_millis()
    );
    let listed: BTreeSet<String> = eps.iter().filter_map(|e| e["name"].as_str().map(String::from)).collect();
    if !acked.is_subset(&listed) {
        node.fail(format!("creates answered OK before the crash are gone: {:?}", acked.difference(&listed)));
    }
    // The kill must have hit a create under way: rolled back, or finished
    // but not answered (else this run checked nothing about half-made ones).
    if start_count(&start, "endpoints_rolled_back") == 0 && listed.len() == acked.len() {
        node.fail(format!("the kill after {kill_after} answers hit no create under way: {start}"));
    }
    check_no_ghosts(&mut node, &eps);
    // Everything not listed can be made again; then no address is leaked.
    for name in names.iter().filter(|n| !listed.contains(*n)) {
        node.create_endpoint(name, &[]);
    }
    let eps = node.endpoints();
    check_no_ghosts(&mut node, &eps);
    let ips: BTreeSet<String> = eps.iter().filter_map(|e| e["ip"].as_str().map(String::from)).collect();
    let want: BTreeSet<String> = (2..2 + CREATES).map(|i| format!("10.10.0.{i}")).collect();
    if ips != want {
        node.fail(format!("after re-creating the rest, the addresses are {ips:?}, not the {CREATES} lowest (a leak)"));
    }
}

/// Every listed endpoint works (pings its neighbour in the list) and owns a
/// unique address; no veth, namespace or ENDPOINTS entry is without one.
fn check_no_ghosts(node: &mut Node, eps: &[Value]) {
    let s = |e: &Value, k: &str| e[k].as_str().unwrap_or_else(|| panic!("endpoint without {k}: {e}")).to_string();
    let names: BTreeSet<String> = eps.iter().map(|e| s(e, "name")).collect();
    let ips: BTreeSet<String> = eps.iter().map(|e| s(e, "ip")).collect();
    if ips.len() != eps.len() {
        node.fail(format!("duplicate addresses among the endpoints: {eps:?}"));
    }
    let veths: BTreeSet<String> = eps.iter().map(|e| s(e, "host_ifname")).collect();
    let in_node: BTreeSet<String> = node.node_dp_veths().into_iter().collect();
    if veths != in_node {
        node.fail(format!("host veths in the node {in_node:?} != those of the endpoints {veths:?}"));
    }
    let netns: BTreeSet<String> = node.own_netns().into_iter().filter(|n| *n != node.name).collect();
    if netns != names {
        node.fail(format!("namespaces of the prefix {netns:?} != the endpoints {names:?}"));
    }
    let maps = node.bpffs.join(MAPS_DIR);
    let keys = pinned_u32_keys(&maps.join("ENDPOINTS"));
    let by_ip = pinned_map_len(&maps.join("ENDPOINTS_BY_IP"));
    let ifindexes: BTreeSet<u64> = eps.iter().filter_map(|e| e["host_ifindex"].as_u64()).collect();
    if keys != ifindexes || by_ip != eps.len() {
        node.fail(format!(
            "map entries: ENDPOINTS keys {keys:?} vs the endpoints' ifindexes {ifindexes:?}; \
             ENDPOINTS_BY_IP has {by_ip} entries for {} endpoints",
            eps.len()
        ));
    }
    for (i, e) in eps.iter().enumerate() {
        let next = &eps[(i + 1) % eps.len()];
        if eps.len() > 1 {
            assert_ping(&s(e, "name"), &s(next, "ip"), 1);
        }
    }
}

#[test]
fn kill9_after_2_of_20_parallel_creates_leaves_no_ghost() {
    datapath_tests::kernel_test!();
    crash_during_creates(2, 0.3);
}

#[test]
fn kill9_after_8_of_20_parallel_creates_leaves_no_ghost() {
    datapath_tests::kernel_test!();
    crash_during_creates(8, 0.5);
}

#[test]
fn kill9_after_15_of_20_parallel_creates_leaves_no_ghost() {
    datapath_tests::kernel_test!();
    crash_during_creates(15, 0.7);
}
