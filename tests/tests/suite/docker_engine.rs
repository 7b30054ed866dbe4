//! A real Docker engine (Debian's docker.io, installed by `cargo xtask
//! test`) started by the test inside its node namespace, with the agent's
//! plugin as the network driver `datapath`: `docker network create -d
//! datapath`, containers talking by address and by name (Docker's embedded
//! DNS), HTTP between them, the outside reached through the eBPF
//! masquerade, isolation from a second network, `-p` from the outside, and
//! cleanup by `docker rm -f` and `docker network rm`.

use std::time::Instant;

use datapath_tests::docker::{plugin_node, Dockerd};
use datapath_tests::node::{AgentOpts, OUTSIDE_IP, UPLINK_IP};
use datapath_tests::{kernel_test, Datapath};

use crate::modes::map_entries;
use crate::ports::{blob, connect, fetch};
use crate::survival::{pinned_map_len, MAPS_DIR};

const IMAGE: &str = "dpt-busybox:1";

#[test]
fn docker_containers_on_a_datapath_network() {
    kernel_test!();
    let (mut node, plugin) =
        plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(Datapath::Ebpf) });
    let docker = Dockerd::start(&node, &plugin);
    docker.import_busybox(IMAGE);

    docker.ok(&["network", "create", "-d", "datapath", "--subnet", "10.30.0.0/24", "web"]);
    let inspect = docker.ok(&["network", "inspect", "-f", "{{.Driver}} {{.Scope}}", "web"]);
    assert_eq!(inspect.trim(), "datapath local");
    let nets = node.networks();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!((nets[0]["subnet"].as_str(), nets[0]["owner"].as_str()), (Some("10.30.0.0/24"), Some("docker")));

    let mut start_ms = Vec::new();
    for name in ["c1", "c2"] {
        let t0 = Instant::now();
        docker.ok(&["run", "-d", "--name", name, "--network", "web", IMAGE, "sleep", "3600"]);
        start_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // The same on Docker's own bridge driver, for comparison (printed,
    // never asserted; this dockerd runs with --iptables=false, so the
    // bridge driver skips its iptables work here).
    docker.ok(&["network", "create", "-d", "bridge", "--subnet", "10.32.0.0/24", "plain"]);
    let mut bridge_ms = Vec::new();
    for name in ["p1", "p2"] {
        let t0 = Instant::now();
        docker.ok(&["run", "-d", "--name", name, "--network", "plain", IMAGE, "sleep", "3600"]);
        bridge_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    docker.ok(&["rm", "-f", "p1", "p2"]);
    docker.ok(&["network", "rm", "plain"]);
    println!(
        "docker run -d: datapath driver {:.0} ms, {:.0} ms; bridge driver {:.0} ms, {:.0} ms",
        start_ms[0], start_ms[1], bridge_ms[0], bridge_ms[1]
    );
    let ip = |c: &str| {
        docker.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c]).trim().to_string()
    };
    let (ip1, ip2) = (ip("c1"), ip("c2"));
    let eps = node.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    let maps = node.bpffs.join(MAPS_DIR);
    let map_entries = || (pinned_map_len(&maps.join("ENDPOINTS")), pinned_map_len(&maps.join("ENDPOINTS_BY_IP")));
    assert_eq!(map_entries(), (2, 2), "both containers in the endpoint maps");
    for e in &eps {
        assert_eq!(e["owner"], "docker", "{e}");
        assert!(e["tc"].is_object(), "the eBPF program is on the host end: {e}");
        assert!([ip1.as_str(), ip2.as_str()].contains(&e["ip"].as_str().unwrap_or("")), "{e} vs {ip1} {ip2}");
    }

    // By address, by name (Docker's embedded DNS), to the gateway.
    docker.ok(&["exec", "c1", "ping", "-c", "2", "-W", "5", &ip2]);
    docker.ok(&["exec", "c2", "ping", "-c", "2", "-W", "5", "c1"]);
    docker.ok(&["exec", "c1", "ping", "-c", "1", "-W", "5", "10.30.0.1"]);
    let before = node.stats();
    docker.ok(&["exec", "c1", "ping", "-c", "3", "-W", "5", &ip2]);
    let (redirected, _) = datapath_tests::delta(&before, &node.stats(), "redirect-peer");
    assert!(redirected >= 6, "container to container goes through the eBPF redirect ({redirected} packets)");

    // A file over HTTP from c2 to c1, content checked.
    let content = "datapath says hello to docker\n";
    docker.ok(&[
        "exec",
        "c2",
        "sh",
        "-c",
        "printf 'datapath says hello to docker\\n' > /www/f.txt && httpd -p 8080 -h /www",
    ]);
    let got = docker.ok(&["exec", "c1", "wget", "-q", "-O", "-", "http://c2:8080/f.txt"]);
    assert_eq!(got, content);

    // The outside, through the eBPF masquerade (the outside has no route to 10.30.0.0/24).
    docker.ok(&["exec", "c1", "ping", "-c", "2", "-W", "5", OUTSIDE_IP]);
    let flows = node.conntrack(None);
    assert!(flows.iter().any(|f| f.to_string().contains(&ip1)), "a masqueraded flow of c1: {flows:?}");

    // A second datapath network: isolated from the first.
    docker.ok(&["network", "create", "-d", "datapath", "--subnet", "10.31.0.0/24", "other"]);
    docker.ok(&["run", "-d", "--name", "c3", "--network", "other", IMAGE, "sleep", "3600"]);
    let ip3 = ip("c3");
    docker.ok(&["exec", "c3", "ping", "-c", "1", "-W", "5", "10.31.0.1"]);
    let before = node.stats();
    let out = docker.docker(&["exec", "c1", "ping", "-c", "2", "-W", "2", &ip3]);
    assert!(!out.status.success(), "web must not reach other: {}", datapath_tests::show(&out));
    let (isolated, _) = datapath_tests::delta(&before, &node.stats(), "drop-policy-isolation");
    assert_eq!(isolated, 2, "both pings dropped by the eBPF isolation");

    // Cleanup leaves nothing of the containers behind.
    docker.ok(&["rm", "-f", "c1", "c2", "c3"]);
    assert!(node.endpoints().is_empty(), "{:?}", node.endpoints());
    assert_eq!(map_entries(), (0, 0), "no endpoint left in the maps");
    assert!(node.node_dp_veths().is_empty(), "{:?}", node.node_dp_veths());
    docker.ok(&["network", "rm", "web", "other"]);
    assert!(node.networks().is_empty(), "{:?}", node.networks());
    let links = node.node_links();
    assert!(links.iter().all(|l| l == "lo" || l == datapath_tests::node::UPLINK_DEV), "{links:?}");
    drop(docker);
}

/// Docker's own features on a datapath network: `network connect` and
/// `disconnect`, `restart`, `run --rm`; the agent restarting keeps Docker's
/// containers connected and answers the next calls; dockerd restarting
/// makes nothing twice.
#[test]
fn docker_features_and_restarts() {
    kernel_test!();
    let (mut node, plugin) =
        plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(Datapath::Ebpf) });
    let mut docker = Dockerd::start(&node, &plugin);
    docker.import_busybox(IMAGE);
    docker.ok(&["network", "create", "-d", "datapath", "--subnet", "10.30.0.0/24", "web"]);
    docker.ok(&["network", "create", "-d", "datapath", "--subnet", "10.31.0.0/24", "other"]);
    docker.ok(&["run", "-d", "--name", "ca", "--network", "web", IMAGE, "sleep", "3600"]);
    docker.ok(&["run", "-d", "--name", "cb", "--network", "other", IMAGE, "sleep", "3600"]);
    let out = docker.docker(&["exec", "ca", "ping", "-c", "1", "-W", "2", "cb"]);
    assert!(!out.status.success(), "a is not on other yet");

    // connect: a second interface on other, b by name; disconnect: gone.
    docker.ok(&["network", "connect", "other", "ca"]);
    assert_eq!(node.endpoints().len(), 3);
    docker.ok(&["exec", "ca", "ping", "-c", "2", "-W", "5", "cb"]);
    docker.ok(&["network", "disconnect", "other", "ca"]);
    assert_eq!(node.endpoints().len(), 2);
    let out = docker.docker(&["exec", "ca", "ping", "-c", "1", "-W", "2", "cb"]);
    assert!(!out.status.success(), "a left other");

    // restart: a new sandbox, a new endpoint, still talking.
    docker.ok(&["run", "-d", "--name", "cc", "--network", "web", IMAGE, "sleep", "3600"]);
    docker.ok(&["restart", "-t", "0", "cc"]);
    docker.ok(&["exec", "ca", "ping", "-c", "2", "-W", "5", "cc"]);
    assert_eq!(node.endpoints().len(), 3, "{:?}", node.endpoints());

    // run --rm: its endpoint goes with it.
    let out = docker.ok(&["run", "--rm", "--network", "web", IMAGE, "ping", "-c", "1", "-W", "5", "ca"]);
    assert!(out.contains("1 packets received"), "{out}");
    assert_eq!(node.endpoints().len(), 3, "the --rm container's endpoint is gone");

    // The agent restarts: Docker's endpoints stay and forward; the next
    // container gets on the network through the restarted agent.
    node.restart_agent();
    docker.ok(&["exec", "ca", "ping", "-c", "2", "-W", "5", "cc"]);
    docker.ok(&["run", "-d", "--name", "cd", "--network", "web", IMAGE, "sleep", "3600"]);
    docker.ok(&["exec", "cd", "ping", "-c", "2", "-W", "5", "ca"]);

    // dockerd restarts: its containers stopped (endpoints removed), the
    // networks made once; started again, they talk.
    let nets = node.networks().len();
    docker.restart();
    assert_eq!(node.networks().len(), nets, "networks made once: {:?}", node.networks());
    assert!(node.endpoints().is_empty(), "stopped with dockerd: {:?}", node.endpoints());
    docker.ok(&["start", "ca", "cc"]);
    docker.ok(&["exec", "ca", "ping", "-c", "2", "-W", "5", "cc"]);
    assert_eq!(node.endpoints().len(), 2, "{:?}", node.endpoints());

    docker.ok(&["rm", "-f", "ca", "cb", "cc", "cd"]);
    docker.ok(&["network", "rm", "web", "other"]);
    assert!(node.endpoints().is_empty() && node.networks().is_empty());
    drop(docker);
}

/// Docker's `-p 8080:80` on a datapath network: the container's HTTP
/// server (a file bind-mounted from the node) is fetched from the outside
/// namespace through the node's uplink address, content checked, through
/// the eBPF port publishing (`PORTS`); a second container asking for the
/// same port is refused by the driver with the reason and not started on
/// the network; `-p 80` gets a port chosen by the agent (49153, shown by
/// `endpoint ls`, reachable); `docker rm -f` withdraws the ports.
#[test]
fn docker_published_port_reaches_a_container() {
    kernel_test!();
    let (mut node, plugin) =
        plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(Datapath::Ebpf) });
    let out_ns = node.outside().to_string();
    let docker = Dockerd::start(&node, &plugin);
    docker.import_busybox(IMAGE);
    docker.ok(&["network", "create", "-d", "datapath", "--subnet", "10.30.0.0/24", "web"]);
    const LEN: usize = 128 * 1024;
    let sha = blob(&node, "blob.bin", LEN);
    let www = format!("{}:/www:ro", node.dir.join("www").display());
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "w1",
        "--network",
        "web",
        "-p",
        "8080:80",
        "-v",
        &www,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    // Ready when it answers itself.
    docker.ok(&[
        "exec",
        "w1",
        "sh",
        "-c",
        "for i in $(seq 200); do wget -q -O /dev/null http://127.0.0.1/blob.bin && exit 0; sleep 0.1; done; exit 1",
    ]);
    let eps = node.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    let ports = &eps[0]["ports"];
    assert!(
        ports.as_array().is_some_and(|a| a.len() == 1 && a[0]["host_port"] == 8080 && a[0]["container_port"] == 80),
        "{}",
        eps[0]
    );
    assert_eq!(map_entries(&node, "PORTS"), 2, "8080 on the uplink and gateway addresses");
    let before = node.stats();
    fetch(&node, &out_ns, &format!("http://{UPLINK_IP}:8080/blob.bin"), LEN, &sha);
    let (translated, _) = datapath_tests::delta(&before, &node.stats(), "port-translated");
    assert!(translated >= 5, "through the eBPF port translation (+{translated})");

    // The same port again: Docker reports the driver's reason.
    let r = docker.docker(&["run", "-d", "--name", "w2", "--network", "web", "-p", "8080:80", IMAGE, "sleep", "3600"]);
    let err = datapath_tests::show(&r);
    assert!(!r.status.success() && err.contains("already published"), "{err}");
    assert_eq!(node.endpoints().len(), 1, "{:?}", node.endpoints());
    fetch(&node, &out_ns, &format!("http://{UPLINK_IP}:8080/blob.bin"), LEN, &sha);

    // `-p 80`: Docker leaves the host port to the driver; the agent
    // chooses the first free one of Docker's range, which Docker shows.
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "w3",
        "--network",
        "web",
        "-p",
        "80",
        "-v",
        &www,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    docker.ok(&[
        "exec",
        "w3",
        "sh",
        "-c",
        "for i in $(seq 200); do wget -q -O /dev/null http://127.0.0.1/blob.bin && exit 0; sleep 0.1; done; exit 1",
    ]);
    let eps = node.endpoints();
    let chosen: Vec<_> = eps
        .iter()
        .flat_map(|e| e["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| p["host_port"].clone())
        .collect();
    assert!(chosen.contains(&serde_json::json!(49153)), "{eps:?}");
    fetch(&node, &out_ns, &format!("http://{UPLINK_IP}:49153/blob.bin"), LEN, &sha);

    docker.ok(&["rm", "-f", "w1", "w2", "w3"]);
    assert!(node.endpoints().is_empty(), "{:?}", node.endpoints());
    assert_eq!(map_entries(&node, "PORTS"), 0);
    assert_eq!(connect(&node, &out_ns, UPLINK_IP, 8080), "refused");
    docker.ok(&["network", "rm", "web"]);
    drop(docker);
}
