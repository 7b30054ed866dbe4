//! A real runtime on the datapath: podman + runc with the CNI backend, the
//! network `dpnet` being `datapath-cni` (which publishes `-p` through the
//! datapath; `dppm` opts in to the reference `portmap` chained after it),
//! everything inside the test's node namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use datapath_tests::cni::{reference_plugins, runtime_netns, CniNet};
use datapath_tests::net::python_in;
use datapath_tests::node::{AgentOpts, Datapath, Node, OUTSIDE_IP, UPLINK_IP};
use datapath_tests::outside::{http_clients, http_server};
use datapath_tests::podman::{datapath_conflist, portmap_conflist, Podman, IMAGE};
use datapath_tests::py::HTTP_FETCH;
use datapath_tests::{kernel_test, show};
use serde_json::{json, Value};

use super::modes::map_entries;
use super::survival::{pinned_map_len, MAPS_DIR};

const SUBNET: &str = "10.78.0.0/24";

/// A file of `len` pseudo-random bytes in `dir`; its sha256.
fn blob(dir: &Path, len: usize) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("blob"), &data).unwrap();
    let o = Command::new("sha256sum").arg(dir.join("blob")).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// The agent's endpoint of a podman container (by its full id).
fn endpoint_of(node: &mut Node, id: &str) -> Value {
    let eps = node.endpoints();
    eps.iter().find(|e| e["container_id"] == id).cloned().unwrap_or_else(|| panic!("no endpoint for {id}: {eps:?}"))
}

fn sha_of(out: &str) -> String {
    out.split_whitespace().next().unwrap_or_default().to_string()
}

/// The outside fetches `/blob` from the node's uplink address, port `port`;
/// its content is checked against `sha`.
fn fetch_published(node: &Node, port: u16, sha: &str) {
    let url = format!("http://{UPLINK_IP}:{port}/blob");
    let o = python_in(node.outside(), HTTP_FETCH, &[&node.prefix, &url], Duration::from_secs(30));
    assert!(o.status.success(), "fetching {url} from the outside:\n{}", show(&o));
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(line.split_whitespace().nth(1), Some(sha), "published port {port} content: {line}");
}

/// Packets of flows the eBPF conntrack does not know handed to the kernel.
fn kernel_flows(node: &mut Node) -> u64 {
    node.stats().get("pass-kernel-flow").map(|c| c.0).unwrap_or(0)
}

/// Two containers on the datapath network ping each other and transfer a
/// file over HTTP (content checked); a container reaches the outside through
/// the eBPF masquerade (the outside sees the node's address, `conntrack ls`
/// the flow); `podman run -p` publishes a port the outside reaches through
/// the datapath's own port publishing (no `portmap` chained; `port` and
/// `endpoint ls` show it, a second container asking for the same host port
/// is refused with nothing made), and through the chained `portmap` when the
/// configuration opts in; `endpoint ls`/`inspect` show the containers;
/// `podman rm -f` removes the endpoints and their map entries (`PORTS`
/// included).
#[test]
fn podman_containers_on_the_datapath() {
    kernel_test!();
    let mut node = Node::with(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(Datapath::Ebpf) });
    node.ok(&["network", "create", "web", "--subnet", SUBNET]);
    let podman = Podman::new(
        &node,
        &[
            ("dpnet", datapath_conflist("dpnet", "web", &node.socket)),
            ("dppm", portmap_conflist("dppm", "web", &node.socket)),
        ],
    );
    let www = node.dir.join("www");
    let sha = blob(&www, 300_000);
    let vol = format!("{}:/www:ro", www.display());

    podman.run(&[
        "-d",
        "--name",
        "srv",
        "--network",
        "dpnet",
        "-v",
        &vol,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    podman.run(&["-d", "--name", "cli", "--network", "dpnet", "--cap-add", "NET_RAW", IMAGE, "sleep", "3600"]);
    let (srv_id, cli_id) = (podman.id("srv"), podman.id("cli"));
    let srv = endpoint_of(&mut node, &srv_id);
    let cli = endpoint_of(&mut node, &cli_id);
    let (srv_ip, cli_ip) = (srv["ip"].as_str().unwrap().to_string(), cli["ip"].as_str().unwrap().to_string());
    assert!(srv_ip.starts_with("10.78.0.") && cli_ip.starts_with("10.78.0."), "{srv} {cli}");
    assert_eq!(srv["cni"]["name"], "dpnet");
    assert!(srv["tc"].is_object(), "the eBPF program is on the container's veth: {srv}");
    let srv_name = srv["name"].as_str().unwrap().to_string();
    let inspected = node.json(&["endpoint", "inspect", &srv_name]);
    assert_eq!(inspected["container_id"], srv_id.as_str());
    assert!(inspected["netns_path"].as_str().is_some_and(|p| p.starts_with("/run/netns/")), "{inspected}");
    // podman sees the address the agent gave.
    let podman_ip =
        podman.ok(&["inspect", "--format", "{{(index .NetworkSettings.Networks \"dpnet\").IPAddress}}", "srv"]);
    assert_eq!(podman_ip, srv_ip);

    let cli_name = cli["name"].as_str().unwrap().to_string();
    let before = node.stats();
    // `trace` follows a container's endpoint like any other.
    let mut trace = node.cli_bg(&["trace", "--endpoint", &cli_name]);
    std::thread::sleep(Duration::from_millis(1500));
    podman.ok(&["exec", "cli", "ping", "-c", "2", "-W", "5", &srv_ip]);
    std::thread::sleep(Duration::from_millis(1000));
    let (lines, err) = trace.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{cli_name} ")) && l.contains("redirect-peer") && l.contains(&srv_ip)),
        "trace --endpoint {cli_name}: {lines:?} {err}"
    );
    podman.ok(&["exec", "srv", "ping", "-c", "2", "-W", "5", &cli_ip]);
    let got =
        podman.ok(&["exec", "cli", "sh", "-c", &format!("wget -q -O /tmp/b http://{srv_ip}/blob && sha256sum /tmp/b")]);
    assert_eq!(sha_of(&got), sha, "the file arrived intact");
    let after = node.stats();
    let redirected =
        after.get("redirect-peer").map(|c| c.0).unwrap_or(0) - before.get("redirect-peer").map(|c| c.0).unwrap_or(0);
    assert!(redirected > 0, "container to container went through bpf_redirect_peer: {after:?}");

    // The outside through the eBPF masquerade.
    let out_dir = node.dir.join("outside-www");
    let out_sha = blob(&out_dir, 100_000);
    let server = http_server(node.outside(), 8000, &out_dir);
    let got = podman.ok(&[
        "exec",
        "cli",
        "sh",
        "-c",
        &format!("wget -q -O /tmp/o http://{OUTSIDE_IP}:8000/blob && sha256sum /tmp/o"),
    ]);
    assert_eq!(sha_of(&got), out_sha);
    assert_eq!(http_clients(&server), vec![UPLINK_IP.to_string()], "the outside saw the node's address");
    let flows = node.conntrack(Some(&cli_name));
    assert!(
        flows.iter().any(|f| f["original"]["dst"] == OUTSIDE_IP
            && f["original"]["dport"] == 8000
            && f["translated"].is_object()),
        "conntrack ls --endpoint {cli_name}: {flows:?}"
    );

    // `-p`: the datapath publishes (no portmap chained), the outside fetches.
    let httpd = ["-v", &vol, IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"];
    let kernel_before = kernel_flows(&mut node);
    podman.run(&[&["-d", "--name", "pub", "--network", "dpnet", "-p", "8080:80"][..], &httpd].concat());
    let pub_ep = endpoint_of(&mut node, &podman.id("pub"));
    let pub_name = pub_ep["name"].as_str().unwrap().to_string();
    assert_eq!(pub_ep["ports"][0]["host_port"], 8080, "{pub_ep}");
    assert!(pub_ep["cni"]["port_mappings"].is_null(), "not recorded for a portmap: {pub_ep}");
    let port = node.ok(&["port", &pub_name]);
    assert!(port.contains("80/tcp -> 0.0.0.0:8080"), "`port {pub_name}`: {port}");
    let ls = node.ok(&["endpoint", "ls"]);
    assert!(ls.contains("0.0.0.0:8080->80/tcp"), "{ls}");
    assert!(map_entries(&node, "PORTS") > 0, "the port is in the PORTS map");
    fetch_published(&node, 8080, &sha);
    assert_eq!(kernel_flows(&mut node), kernel_before, "eBPF translated it: nothing handed to the kernel");
    // The same host port again: a CNI error, nothing made.
    let o = podman.exec(&[&["run", "-d", "--name", "dup", "--network", "dpnet", "-p", "8080:81"][..], &httpd].concat());
    assert!(!o.status.success(), "a second -p 8080 was accepted");
    assert!(show(&o).contains("already published"), "{}", show(&o));
    assert_eq!(node.endpoints().len(), 3, "nothing half-made: {:?}", node.endpoints());
    let _ = podman.exec(&["rm", "-f", "dup"]);

    // The opt-in: `"portMappings": "portmap"` with portmap chained.
    podman.run(&[&["-d", "--name", "pm", "--network", "dppm", "-p", "8081:80"][..], &httpd].concat());
    let pm_ep = endpoint_of(&mut node, &podman.id("pm"));
    assert_eq!(pm_ep["cni"]["port_mappings"][0]["hostPort"], 8081, "{pm_ep}");
    assert_eq!(pm_ep["ports"].as_array().map(Vec::len).unwrap_or(0), 0, "{pm_ep}");
    fetch_published(&node, 8081, &sha);
    assert!(kernel_flows(&mut node) > kernel_before, "the replies went to the kernel's conntrack (pass-kernel-flow)");

    // `podman rm -f`: the endpoints and their map entries go.
    assert_eq!(node.endpoints().len(), 4);
    podman.ok(&["rm", "-f", "-t", "0", "srv", "cli", "pub", "pm"]);
    assert!(node.endpoints().is_empty(), "{:?}", node.endpoints());
    assert!(node.node_dp_veths().is_empty(), "host veths left: {:?}", node.node_dp_veths());
    let maps = node.bpffs.join(MAPS_DIR);
    for map in ["ENDPOINTS", "ENDPOINTS_BY_IP"] {
        assert_eq!(pinned_map_len(&maps.join(map)), 0, "{map} entries left");
    }
    assert_eq!(map_entries(&node, "PORTS"), 0, "PORTS entries left");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Measurement, side by side in one run (printed, never asserted): the
/// plugin's ADD and DEL per container, executed as a runtime does, against
/// the reference `bridge` plugin (with `host-local`) on the same node; and
/// `podman run -d` (start) and `podman rm -f` on the datapath network vs
/// podman's default CNI bridge network, interleaved. Checks only that every
/// run worked.
#[test]
fn podman_and_cni_timings() {
    kernel_test!();
    const ROUNDS: usize = 10;
    let mut node = Node::with(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(Datapath::Ebpf) });
    node.ok(&["network", "create", "web", "--subnet", SUBNET]);
    let plugins = reference_plugins();
    let ours = CniNet::new(&node, "dpnet", "web", "1.0.0");
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": "refbr", "type": "bridge", "bridge": format!("{}br", node.prefix),
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": node.dir.join("host-local"),
                 "ranges": [[{"subnet": "10.79.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    });
    // The reference plugins act in the namespace they run in: the node's.
    let in_node = |command: &str, id: &str, netns: &Path| {
        let netns = netns.display().to_string();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", node.name)).arg(plugins.join("bridge"));
        c.env("CNI_COMMAND", command).env("CNI_CONTAINERID", id).env("CNI_NETNS", &netns);
        c.env("CNI_IFNAME", "eth0").env("CNI_PATH", &plugins);
        c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        let t0 = std::time::Instant::now();
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bridge_conf.to_string().as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "bridge {command}:\n{}", show(&o));
        t0.elapsed()
    };
    let (mut add, mut del, mut badd, mut bdel) = (vec![], vec![], vec![], vec![]);
    for i in 0..ROUNDS {
        let ns = runtime_netns(&node.ep(&format!("t{i}")));
        let id = format!("timing{i}");
        let r = ours.add(&id, &ns, "eth0");
        r.result();
        add.push(ms(r.took));
        badd.push(ms(in_node("ADD", &format!("b{id}"), &runtime_netns(&node.ep(&format!("b{i}"))))));
        let r = ours.del(&id, &ns, "eth0");
        r.silent();
        del.push(ms(r.took));
        bdel.push(ms(in_node(
            "DEL",
            &format!("b{id}"),
            &PathBuf::from(format!("/run/netns/{}", node.ep(&format!("b{i}")))),
        )));
    }

    let podman = Podman::new(&node, &[("dpnet", datapath_conflist("dpnet", "web", &node.socket))]);
    // `run -d` (until the container runs: namespace, CNI ADD of every
    // plugin of the network, runc start) and `rm -f` (CNI DEL, teardown);
    // a first container of each network warms caches up (and makes the
    // default bridge). Attached runs are not timed: podman here waits for
    // conmon's 20 s timeout after a foreground container exits, whatever
    // the network.
    let (mut dp, mut br, mut dp_rm, mut br_rm) = (vec![], vec![], vec![], vec![]);
    for round in 0..=ROUNDS {
        for (net, start, rm) in [("dpnet", &mut dp, &mut dp_rm), ("podman", &mut br, &mut br_rm)] {
            let name = format!("t-{net}-{round}");
            let took = podman.run(&["-d", "--name", &name, "--network", net, IMAGE, "sleep", "600"]).1;
            let t0 = std::time::Instant::now();
            podman.ok(&["rm", "-f", "-t", "0", &name]);
            if round > 0 {
                start.push(ms(took));
                rm.push(ms(t0.elapsed()));
            }
        }
    }
    println!("CNI timings, median of {ROUNDS} (ms):");
    println!("| | datapath-cni (agent API) | reference bridge + host-local |");
    println!("| --- | ---: | ---: |");
    println!("| ADD per container | {:.1} | {:.1} |", median(&mut add), median(&mut badd));
    println!("| DEL per container | {:.1} | {:.1} |", median(&mut del), median(&mut bdel));
    println!(
        "| podman run -d (start) | {:.0} | {:.0} (podman's CNI bridge network) |",
        median(&mut dp),
        median(&mut br)
    );
    println!("| podman rm -f | {:.0} | {:.0} (podman's CNI bridge network) |", median(&mut dp_rm), median(&mut br_rm));
}
