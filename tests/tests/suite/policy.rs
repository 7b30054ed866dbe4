//! Beyond the brief's list, end to end through the agent: isolation between
//! networks and `--icc=false` (README "Isolation").

use datapath_tests::net::ping;
use datapath_tests::node::{delta, Datapath, Node};
use datapath_tests::proc::show;
use datapath_tests::{assert_ping, both_datapaths};

both_datapaths! {
/// Endpoints of different networks can't reach each other (gateways
/// included); the node reaches both. eBPF: drops are counted as
/// drop-policy-isolation, never redirected; kernel: nftables drops them
/// (no eBPF counter moves).
fn networks_are_isolated_from_each_other(dp) {
    let mut node = Node::on(dp);
    let other = node.ep("net");
    node.ok(&["network", "create", &other, "--subnet", "10.50.0.0/24"]);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let x = node.create_endpoint(&node.ep("x"), &["--network", &other]);
    let s0 = node.stats();
    let mut crossed = Vec::new();
    for (from, to) in [
        (&a.name, &x.ip),
        (&a.name, &x.gateway),
        (&x.name, &a.ip),
        (&x.name, &a.gateway),
    ] {
        let out = ping(from, to, 2);
        if out.status.success() {
            crossed.push(format!("{from} reached {to} on another network:\n{}", show(&out)));
        }
    }
    let s1 = node.stats();
    assert!(
        crossed.is_empty(),
        "{dp} datapath: {} of 4 cross-network pings got through (README: isolated, \
         gateways included):\n{}",
        crossed.len(),
        crossed.join("\n")
    );
    let (iso, _) = delta(&s0, &s1, "drop-policy-isolation");
    let (rp, _) = delta(&s0, &s1, "redirect-peer");
    match dp {
        Datapath::Ebpf => assert!(
            iso >= 8,
            "8 cross-network echo requests, drop-policy-isolation +{iso}"
        ),
        Datapath::Kernel => assert_eq!(iso, 0, "kernel datapath counted eBPF drops"),
    }
    assert_eq!(rp, 0, "cross-network traffic was redirected");
    // Own gateways still work, and the node reaches both networks.
    assert_ping(&a.name, &a.gateway, 1);
    assert_ping(&x.name, &x.gateway, 1);
    assert_ping(&node.name, &a.ip, 1);
    assert_ping(&node.name, &x.ip, 1);
}
}

both_datapaths! {
/// `--icc=false`: no endpoint-to-endpoint traffic inside the network
/// (eBPF: drop-policy-icc; kernel: the bridge-family nft rule), the gateway
/// stays reachable.
fn icc_false_blocks_endpoint_to_endpoint(dp) {
    let mut node = Node::on(dp);
    let n = node.ep("net");
    node.ok(&[
        "network",
        "create",
        &n,
        "--subnet",
        "10.60.0.0/24",
        "--icc=false",
    ]);
    let a = node.create_endpoint(&node.ep("a"), &["--network", &n]);
    let b = node.create_endpoint(&node.ep("b"), &["--network", &n]);
    let s0 = node.stats();
    let out = ping(&a.name, &b.ip, 2);
    assert!(
        !out.status.success(),
        "icc=false, yet A reached B:\n{}",
        show(&out)
    );
    let s1 = node.stats();
    let (icc, _) = delta(&s0, &s1, "drop-policy-icc");
    match dp {
        Datapath::Ebpf => assert!(icc >= 2, "2 echo requests A->B, drop-policy-icc +{icc}"),
        Datapath::Kernel => assert_eq!(icc, 0, "kernel datapath counted eBPF drops"),
    }
    assert_ping(&a.name, &a.gateway, 1);
    assert_ping(&b.name, &b.gateway, 1);
}
}
