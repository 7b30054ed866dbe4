//! Scale: one network with 1,000 endpoints (and up to the bridge's limit of
//! 1023), `#[ignore]`d in the default run (a few minutes per datapath); `cargo
//! xtask test --all` runs it.
//!
//! Checks sampled reachability east-west and to the outside namespace
//! (through the masquerade), many endpoints at once (their first packets
//! need ARP, which on a plain bridge floods every port), the clear error
//! for endpoint 1024 with nothing half-made, and prints the create and
//! remove time per endpoint and the agent's memory (never asserted).

use std::time::{Duration, Instant};

use datapath::api::{ClientError, EndpointCreate, ErrorKind, NetworkCreate, Request};
use datapath::testbed::client::SyncClient;
use datapath_tests::node::{AgentOpts, Datapath, Node, OUTSIDE_IP};
use datapath_tests::proc::stdout_str;
use datapath_tests::{net, netns_exists};

/// Room for the bridge's 1023 ports and more (a /22 has only 1021 endpoint
/// addresses besides its gateway: the port limit could not be reached).
const SUBNET: &str = "10.40.0.0/21";
const ENDPOINTS: usize = 1000;
/// The Linux bridge's port limit (BR_MAX_PORTS 1024, port 0 reserved).
const BRIDGE_PORTS: usize = 1023;
/// Endpoints whose reachability is checked, all at once.
const SAMPLE: usize = 48;
/// Echo requests per check.
const PINGS: u32 = 3;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Frames the bridge `bridge` of node `node` has sent out of its ports so far
/// (the sum of the ports' TX counters): what a flood costs.
fn bridge_port_tx(node: &str, bridge: &str) -> u64 {
    let links = net::ip_json(&["-n", node, "-s", "link", "show", "master", bridge]);
    links.as_array().into_iter().flatten().filter_map(|l| l["stats64"]["tx"]["packets"].as_u64()).sum()
}

/// Packets dropped because a CPU's backlog was full (`/proc/net/softnet_stat`,
/// second column, all CPUs; the counters are not per namespace).
fn softnet_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines().filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok()).sum()
}

/// (median, p99, mean) in milliseconds.
fn summary(mut d: Vec<Duration>) -> (f64, f64, f64) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    let mean = d.iter().map(|x| ms(*x)).sum::<f64>() / d.len().max(1) as f64;
    (ms(d[d.len() / 2]), ms(d[(d.len() * 99 / 100).min(d.len() - 1)]), mean)
}

/// Replies to `PINGS` echo requests from `ns` to `ip`.
fn replies(ns: &str, ip: &str) -> u32 {
    let out = net::ping(ns, ip, PINGS);
    let s = stdout_str(&out);
    s.split(',').find_map(|p| p.trim().strip_suffix(" received").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
}

/// Checks, all at once (every check in a thread of its own), that each
/// sampled endpoint reaches `targets(i)`: (checks, replies, failed checks).
fn reach_all(names: &[String], sample: &[usize], target: impl Fn(usize) -> String + Sync) -> (u32, u32, Vec<String>) {
    let results: Vec<(String, String, u32)> = std::thread::scope(|s| {
        let handles: Vec<_> = sample
            .iter()
            .map(|&i| {
                let (ns, to) = (names[i].clone(), target(i));
                s.spawn(move || {
                    let r = replies(&ns, &to);
                    (ns, to, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ping thread")).collect()
    });
    let got = results.iter().map(|r| r.2).sum();
    let failed =
        results.iter().filter(|r| r.2 < PINGS).map(|(ns, to, r)| format!("{ns} -> {to}: {r}/{PINGS}")).collect();
    (results.len() as u32 * PINGS, got, failed)
}

fn thousand_endpoints(dp: Datapath) {
    let mut node = Node::with(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(dp) });
    let pid = node.agent_pid().expect("agent pid");
    let client = SyncClient::new(&node.socket).expect("client");
    let net = node.ep("net");
    client
        .call(Request::NetworkCreate(NetworkCreate {
            name: net.clone(),
            subnet: SUBNET.into(),
            datapath: Some(dp.kind()),
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("network create: {e}"));
    let rss_idle = rss_kib(pid);

    let create = |name: &str| {
        client.call(Request::EndpointCreate(EndpointCreate {
            name: name.to_string(),
            network: Some(net.clone()),
            ..Default::default()
        }))
    };
    let names: Vec<String> = (0..BRIDGE_PORTS + 1).map(|i| node.ep(&format!("e{i:04}"))).collect();
    let mut ips = Vec::new();
    let mut create_times = Vec::new();
    let t0 = Instant::now();
    for name in &names[..ENDPOINTS] {
        let t = Instant::now();
        let v = create(name).unwrap_or_else(|e| panic!("creating endpoint {name} (#{}): {e}", ips.len() + 1));
        create_times.push(t.elapsed());
        ips.push(v["ip"].as_str().unwrap_or_else(|| panic!("no ip in {v}")).to_string());
    }
    let create_total = t0.elapsed();
    let rss_full = rss_kib(pid);

    // Reachability, sampled across the whole range, all at once.
    let sample: Vec<usize> = (0..SAMPLE).map(|k| k * ENDPOINTS / SAMPLE + k % 7).collect();
    let stats0 = if dp.is_ebpf() { Some(node.stats()) } else { None };
    let bridge = node.inspect_network(&net)["bridge"].as_str().expect("bridge").to_string();
    let (tx0, drops0) = (bridge_port_tx(&node.name, &bridge), softnet_drops());
    let peer = |i: usize| ips[(i + ENDPOINTS / 2 + 1) % ENDPOINTS].clone();
    let (ew_sent, ew_got, ew_failed) = reach_all(&names, &sample, peer);
    let (ns_sent, ns_got, ns_failed) = reach_all(&names, &sample, |_| OUTSIDE_IP.to_string());
    let gateway = "10.40.0.1".to_string();
    let (gw_sent, gw_got, gw_failed) = reach_all(&names, &sample, |_| gateway.clone());
    let (flooded, dropped) =
        (bridge_port_tx(&node.name, &bridge).saturating_sub(tx0), softnet_drops().saturating_sub(drops0));
    let arp_counters = stats0.map(|s0| {
        let s1 = node.stats();
        ["pass-arp", "fwd-arp-reply"]
            .iter()
            .map(|r| format!("{r} +{}", datapath_tests::delta(&s0, &s1, r).0))
            .collect::<Vec<_>>()
            .join(", ")
    });

    // Up to the bridge's limit, then one more.
    for name in &names[ENDPOINTS..BRIDGE_PORTS] {
        let v = create(name).unwrap_or_else(|e| panic!("creating endpoint {name} (#{}): {e}", ips.len() + 1));
        ips.push(v["ip"].as_str().unwrap_or_default().to_string());
    }
    let over = &names[BRIDGE_PORTS];
    let refused = create(over);
    let listed = node.endpoints().len();
    let over_left = netns_exists(over);

    let mut remove_times = Vec::new();
    let t0 = Instant::now();
    for name in &names[..BRIDGE_PORTS] {
        let t = Instant::now();
        client
            .call(Request::EndpointRemove { name: name.clone() })
            .unwrap_or_else(|e| panic!("removing endpoint {name}: {e}"));
        remove_times.push(t.elapsed());
    }
    let remove_total = t0.elapsed();
    let rss_after = rss_kib(pid);

    let (cm, cp, ca) = summary(create_times);
    let (rm, rp, ra) = summary(remove_times);
    println!(
        "scale [{dp}]: {ENDPOINTS} endpoints on {SUBNET}\n  \
         create: median {cm:.1} ms, p99 {cp:.1} ms, mean {ca:.1} ms per endpoint ({:.1} s in all)\n  \
         remove ({BRIDGE_PORTS}): median {rm:.1} ms, p99 {rp:.1} ms, mean {ra:.1} ms per endpoint ({:.1} s in all)\n  \
         agent RSS: {} KiB idle, {} KiB with {ENDPOINTS} endpoints, {} KiB after removing them all\n  \
         reachability, {SAMPLE} endpoints at once, {PINGS} echoes each: east-west {ew_got}/{ew_sent}, \
         outside (masquerade) {ns_got}/{ns_sent}, gateway {gw_got}/{gw_sent}{}\n  \
         meanwhile: {flooded} frames sent out of the bridge's ports, {dropped} packets dropped on full \
         backlogs (softnet, node-wide)\n  \
         endpoint {}: {refused:?}",
        create_total.as_secs_f64(),
        remove_total.as_secs_f64(),
        rss_idle,
        rss_full,
        rss_after,
        arp_counters.map(|c| format!("; {c}")).unwrap_or_default(),
        BRIDGE_PORTS + 1,
    );

    let mut failures = Vec::new();
    for (what, failed) in [("east-west", &ew_failed), ("outside", &ns_failed), ("gateway", &gw_failed)] {
        if !failed.is_empty() {
            failures.push(format!("{what}: {} of {SAMPLE} lost replies: {failed:?}", failed.len()));
        }
    }
    let want = format!("network {net} is full: {BRIDGE_PORTS} endpoints");
    match &refused {
        Err(ClientError::Api(e)) if e.kind == ErrorKind::Conflict && e.message == want => {}
        other => failures.push(format!("endpoint {}: want the error {want:?}, got {other:?}", BRIDGE_PORTS + 1)),
    }
    if listed != BRIDGE_PORTS || over_left {
        failures.push(format!(
            "the refused endpoint left something: {listed} endpoints listed, its namespace exists: {over_left}"
        ));
    }
    assert!(failures.is_empty(), "scale [{dp}]:\n{}", failures.join("\n"));
}

/// 1,000 endpoints on the eBPF datapath.
#[test]
#[ignore = "a few minutes: cargo xtask test --all"]
fn thousand_endpoints_ebpf() {
    datapath_tests::kernel_test!();
    thousand_endpoints(Datapath::Ebpf);
}

/// 1,000 endpoints on the kernel datapath (Docker's bridge).
#[test]
#[ignore = "a few minutes: cargo xtask test --all"]
fn thousand_endpoints_kernel() {
    datapath_tests::kernel_test!();
    thousand_endpoints(Datapath::Kernel);
}
