//! Endpoint removal (test 7) and agent restart (test 9).

use datapath_tests::net::{link, ping};
use datapath_tests::node::{delta, Datapath, Node};
use datapath_tests::proc::show;
use datapath_tests::{assert_ping, both_datapaths, netns_exists};

both_datapaths! {
/// Test 7: `endpoint rm B` cuts connectivity and removes every trace of B;
/// B's IP is handed out again.
fn endpoint_rm_cuts_connectivity_and_releases_everything(dp) {
    let mut node = Node::on(dp);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    assert_ping(&a.name, &b.ip, 2);

    node.ok(&["endpoint", "rm", &b.name]);
    assert!(
        !netns_exists(&b.name),
        "netns {} still exists after endpoint rm",
        b.name
    );
    assert!(
        link(&node.name, &b.host_ifname).is_none(),
        "host veth {} still in the node netns after endpoint rm",
        b.host_ifname
    );
    let eps = node.endpoints();
    let names: Vec<&str> = eps.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, vec![a.name.as_str()], "endpoint ls after rm");
    let net = node.inspect_network("bridge");
    assert!(
        !net["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == b.name.as_str()),
        "network inspect still lists {}: {net}",
        b.name
    );
    let err = node.err(&["endpoint", "inspect", &b.name]);
    assert!(!err.is_empty());

    let out = ping(&a.name, &b.ip, 2);
    assert!(
        !out.status.success(),
        "{} still answers after endpoint rm:\n{}",
        b.ip,
        show(&out)
    );

    // IP released: the lowest free address is B's old one.
    let c = node.create_endpoint(&node.ep("c"), &[]);
    assert_eq!(
        c.ip, b.ip,
        "B's address was not released (IPAM gives the lowest free)"
    );
    // The reused address works (from C, whose neighbour cache is fresh).
    assert_ping(&c.name, &a.ip, 2);
    // And B's name is free again.
    let b2 = node.create_endpoint(&b.name, &[]);
    assert_ping(&b2.name, &c.ip, 2);
}
}

both_datapaths! {
/// Test 9: after SIGTERM and a restart on the same state dir, networks and
/// endpoints are unchanged and the datapath works (and counts) again.
fn agent_restart_restores_state_and_datapath(dp) {
    let mut node = Node::on(dp);
    let nname = node.ep("net");
    node.ok(&["network", "create", &nname, "--subnet", "10.40.0.0/24"]);
    let a = node.create_endpoint(&node.ep("a"), &["--network", &nname]);
    let b = node.create_endpoint(&node.ep("b"), &["--network", &nname]);
    let c = node.create_endpoint(&node.ep("c"), &[]);
    assert_ping(&a.name, &b.ip, 2);
    let nets0 = node.networks();
    let eps0 = node.endpoints();

    let status = node.stop_agent();
    assert!(
        status.success(),
        "agent exited with {status} on SIGTERM\n{}",
        node.agent_log_tail(30)
    );
    // Left in place while the agent is down.
    for ep in [&a, &b, &c] {
        assert!(
            netns_exists(&ep.name),
            "netns {} removed by agent shutdown",
            ep.name
        );
        assert!(
            link(&node.name, &ep.host_ifname).is_some(),
            "host veth {} removed by agent shutdown",
            ep.host_ifname
        );
    }
    // The CLI now reports no agent.
    let out = node.cli(&["network", "ls"]);
    assert!(
        !out.status.success() && {
            let e = String::from_utf8_lossy(&out.stderr);
            e.contains("no agent running") || e.contains("no agent is running")
        },
        "CLI with the agent stopped:\n{}",
        show(&out)
    );

    node.start_agent();
    assert_eq!(
        node.networks(),
        nets0,
        "network ls changed across a restart"
    );
    assert_eq!(
        node.endpoints(),
        eps0,
        "endpoint ls changed across a restart"
    );

    let s0 = node.stats();
    assert_ping(&a.name, &b.ip, 3);
    assert_ping(&b.name, &a.ip, 3);
    let s1 = node.stats();
    let (rp, _) = delta(&s0, &s1, "redirect-peer");
    // The restored eBPF datapath counts again; the kernel one never counts
    // (no program: the documented difference).
    match dp {
        Datapath::Ebpf => assert!(
            rp >= 12,
            "after restart, 6 echo exchanges counted only {rp} redirect-peer packets"
        ),
        Datapath::Kernel => assert_eq!(rp, 0, "kernel datapath counted redirect-peer"),
    }
    assert_ping(&c.name, &c.gateway, 1);

    // IPAM state restored: a new endpoint doesn't collide.
    let d = node.create_endpoint(&node.ep("d"), &["--network", &nname]);
    assert!(
        ![&a.ip, &b.ip].contains(&&d.ip) && d.ip != d.gateway,
        "new endpoint after restart got a used address {} (a {}, b {}, gw {})",
        d.ip,
        a.ip,
        b.ip,
        d.gateway
    );
    assert_ping(&d.name, &a.ip, 2);

    // A second restart in a row works too (state written by a restored agent).
    node.restart_agent();
    let eps = node.endpoints();
    assert_eq!(eps.len(), 4, "endpoints after second restart: {eps:?}");
    assert_ping(&d.name, &b.ip, 2);
}
}

both_datapaths! {
/// Beyond the spec's SIGTERM case: the agent is SIGKILLed (crash). State
/// written before the crash must be enough to restore every endpoint and
/// the datapath.
fn agent_crash_sigkill_recovers(dp) {
    let mut node = Node::on(dp);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    let eps0 = node.endpoints();
    node.kill_agent();
    // A stale socket file may remain: the CLI must still say "no agent".
    let out = node.cli(&["endpoint", "ls"]);
    assert!(
        !out.status.success(),
        "CLI succeeded with the agent killed:\n{}",
        show(&out)
    );
    node.start_agent();
    assert_eq!(node.endpoints(), eps0, "endpoint ls changed across a crash");
    let s0 = node.stats();
    assert_ping(&a.name, &b.ip, 3);
    let s1 = node.stats();
    let (rp, _) = delta(&s0, &s1, "redirect-peer");
    match dp {
        Datapath::Ebpf => assert!(
            rp >= 6,
            "after crash recovery only {rp} redirect-peer packets for 3 echo exchanges"
        ),
        Datapath::Kernel => assert_eq!(rp, 0, "kernel datapath counted redirect-peer"),
    }
    let c = node.create_endpoint(&node.ep("c"), &[]);
    assert_eq!(c.ip, "10.10.0.4", "IPAM after crash recovery");
    assert_ping(&c.name, &a.ip, 2);
}
}

both_datapaths! {
/// Beyond the spec: endpoint creates issued concurrently (as container
/// runtimes do) all succeed, with distinct addresses, MACs and host veths,
/// and the endpoints reach each other.
fn concurrent_creates_get_distinct_addresses(dp) {
    let mut node = Node::on(dp);
    const K: usize = 6;
    let names: Vec<String> = (0..K).map(|i| node.ep(&format!("c{i}"))).collect();
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .map(|n| {
                let node = &node;
                s.spawn(move || node.cli(&["endpoint", "create", n]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<String> = names
        .iter()
        .zip(&outs)
        .filter(|(_, o)| !o.status.success())
        .map(|(n, o)| format!("{n}: {}", show(o)))
        .collect();
    if !failed.is_empty() {
        node.fail(format!(
            "concurrent endpoint creates failed:\n{}",
            failed.join("\n")
        ));
    }
    let eps: Vec<_> = names.iter().map(|n| node.inspect_endpoint(n)).collect();
    let mut ips: Vec<&str> = eps.iter().map(|e| e.ip.as_str()).collect();
    let mut macs: Vec<&str> = eps.iter().map(|e| e.mac.as_str()).collect();
    let mut hosts: Vec<&str> = eps.iter().map(|e| e.host_ifname.as_str()).collect();
    for v in [&mut ips, &mut macs, &mut hosts] {
        v.sort();
        v.dedup();
        assert_eq!(
            v.len(),
            K,
            "duplicates among concurrently created endpoints: {v:?}"
        );
    }
    let want: Vec<String> = (2..2 + K).map(|i| format!("10.10.0.{i}")).collect();
    let mut got: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    got.sort_by_key(|ip| ip.rsplit('.').next().unwrap().parse::<u32>().unwrap());
    assert_eq!(got, want, "addresses of {K} concurrent creates");
    for i in 0..K {
        let j = (i + 1) % K;
        assert_ping(&eps[i].name, &eps[j].ip, 1);
    }
}
}

both_datapaths! {
/// Beyond the spec (CNI DEL semantics): the endpoint's netns was deleted
/// behind the agent's back; `endpoint rm` still succeeds, forgets it and
/// releases its address.
fn endpoint_rm_after_netns_vanished(dp) {
    let mut node = Node::on(dp);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    datapath_tests::env::netns_del(&b.name);
    assert!(!netns_exists(&b.name));
    node.ok(&["endpoint", "rm", &b.name]);
    assert!(
        link(&node.name, &b.host_ifname).is_none(),
        "host veth {} left",
        b.host_ifname
    );
    let names: Vec<String> = node
        .endpoints()
        .iter()
        .filter_map(|e| e["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, vec![a.name.clone()]);
    let c = node.create_endpoint(&node.ep("c"), &[]);
    assert_eq!(c.ip, b.ip, "address of the vanished endpoint not released");
    assert_ping(&c.name, &a.ip, 2);
}
}
