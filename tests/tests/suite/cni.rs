//! The CNI plugin driven the way runtimes drive it (`datapath-cni` executed
//! with the `CNI_*` environment and the configuration on stdin), against a
//! real agent in its node: every verb, the result fields the spec requires,
//! version negotiation, idempotent `DEL`, `GC` with valid attachments,
//! `STATUS` with and without an agent, `CHECK` after the interface was
//! deleted by hand, bad configurations answered with the right code and
//! nothing half-made, a delegated IPAM plugin, and attachments surviving an
//! agent restart. Real packets between the runtime's namespaces.

use std::path::Path;

use datapath_tests::cni::{exec, reference_plugins, runtime_netns, CniNet};
use datapath_tests::net::{self, ipv4_addrs, link};
use datapath_tests::node::{AgentOpts, Datapath, Node, OUTSIDE_IP};
use datapath_tests::{assert_ping, kernel_test};
use serde_json::{json, Value};

const SUBNET: &str = "10.77.0.0/24";
const GATEWAY: &str = "10.77.0.1";

/// Error codes of the spec and of the plugin.
const INCOMPATIBLE_VERSION: u64 = 1;
const UNKNOWN_CONTAINER: u64 = 3;
const INVALID_ENV: u64 = 4;
const DECODE: u64 = 6;
const INVALID_CONFIG: u64 = 7;
const TRY_AGAIN_LATER: u64 = 11;
const NOT_AVAILABLE: u64 = 50;
const AGENT: u64 = 100;
const CHECK_FAILED: u64 = 101;

fn node_with_web(opts: AgentOpts) -> Node {
    let mut node = Node::with(AgentOpts { no_default_network: true, ..opts });
    node.ok(&["network", "create", "web", "--subnet", SUBNET]);
    node
}

fn ns_name(path: &Path) -> String {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()
}

/// The endpoints CNI made, as `endpoint ls -o json` lists them.
fn cni_endpoints(node: &mut Node) -> Vec<Value> {
    node.endpoints().into_iter().filter(|e| e["cni"].is_object()).collect()
}

/// Everything a spec-conformant ADD result must have, checked against what
/// is really in the namespace; returns the address.
#[track_caller]
fn check_result(r: &Value, version: &str, netns: &Path, ifname: &str) -> String {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifs = r["interfaces"].as_array().unwrap_or_else(|| panic!("no interfaces: {r}"));
    assert_eq!(ifs.len(), 1, "{r}");
    let i = &ifs[0];
    assert_eq!(i["name"], ifname, "{r}");
    assert_eq!(i["sandbox"], netns.display().to_string(), "{r}");
    let inside = link(&ns_name(netns), ifname).unwrap_or_else(|| panic!("no {ifname} in {}", netns.display()));
    assert_eq!(i["mac"], inside["address"], "the result's MAC is the interface's: {r}");
    if version == "1.1.0" {
        assert_eq!(i["mtu"], inside["mtu"], "{r}");
    } else {
        assert!(i.get("mtu").is_none(), "mtu is a 1.1.0 field: {r}");
    }
    let ips = r["ips"].as_array().unwrap_or_else(|| panic!("no ips: {r}"));
    assert_eq!(ips.len(), 1, "{r}");
    let ip = &ips[0];
    let address = ip["address"].as_str().unwrap_or_else(|| panic!("no address: {r}")).to_string();
    assert!(address.starts_with("10.77.0.") && address.ends_with("/24"), "{r}");
    assert_eq!(ip["gateway"], GATEWAY, "{r}");
    assert_eq!(ip["interface"], 0, "{r}");
    if version == "0.4.0" {
        assert_eq!(ip["version"], "4", "0.4.0 results carry ips[].version: {r}");
    } else {
        assert!(ip.get("version").is_none(), "{r}");
    }
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]), "{r}");
    assert_eq!(ipv4_addrs(&ns_name(netns), ifname), vec![address.clone()], "the address is on the interface");
    address.split('/').next().unwrap_or_default().to_string()
}

/// Every verb on the three versions: results as the spec says, the
/// attachment is an endpoint of the agent marked with its container, real
/// packets flow between two runtime namespaces and to the outside (eBPF
/// masquerade, seen by `conntrack ls`), a second ADD of the same attachment
/// is refused without touching it, CHECK passes, DEL is idempotent.
#[test]
fn cni_verbs_results_and_versions() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::with_uplink(Datapath::Ebpf));
    let v = exec(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#).result();
    assert_eq!(v, json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}));
    let v = exec(&[("CNI_COMMAND", "VERSION")], b"").result();
    assert_eq!(v["cniVersion"], "1.1.0");

    let mut attached = Vec::new();
    for (i, version) in ["1.1.0", "1.0.0", "0.4.0"].into_iter().enumerate() {
        let cni = CniNet::new(&node, "dpnet", "web", version);
        let netns = runtime_netns(&node.ep(&format!("c{i}")));
        let id = format!("{}-container-{i}", node.prefix);
        let ifname = if i == 2 { "net1" } else { "eth0" };
        let add = cni.add(&id, &netns, ifname);
        let r = add.result();
        let ip = check_result(&r, version, &netns, ifname);
        println!("ADD {version}: {ip} in {:.1} ms", add.took.as_secs_f64() * 1e3);
        attached.push((cni, netns, id, ifname, r, ip));
    }
    // The agent lists them as endpoints, marked with their container.
    let eps = cni_endpoints(&mut node);
    assert_eq!(eps.len(), 3, "{eps:?}");
    for (_, netns, id, ifname, _, ip) in &attached {
        let e = eps.iter().find(|e| e["container_id"] == id.as_str()).unwrap_or_else(|| panic!("{id}: {eps:?}"));
        assert_eq!((&e["ip"], &e["ifname"], &e["netns_path"]), (&json!(ip), &json!(ifname), &json!(netns)));
        assert_eq!(e["cni"]["name"], "dpnet");
        assert!(e["tc"].is_object(), "the program is on the host veth: {e}");
    }
    let table = node.ok(&["endpoint", "ls"]);
    assert!(table.contains("CONTAINER") && table.contains(&attached[0].2[..12]), "{table}");

    // Real packets: runtime namespace to runtime namespace, and out.
    let (a, b) = (ns_name(&attached[0].1), ns_name(&attached[1].1));
    assert_ping(&a, &attached[1].5, 2);
    assert_ping(&b, &attached[0].5, 2);
    assert_ping(&ns_name(&attached[2].1), &attached[0].5, 1);
    assert_ping(&a, OUTSIDE_IP, 2);
    let name = eps.iter().find(|e| e["container_id"] == attached[0].2.as_str()).map(|e| e["name"].clone());
    let name = name.and_then(|n| n.as_str().map(String::from)).unwrap_or_default();
    let flows = node.conntrack(Some(&name));
    assert!(flows.iter().any(|f| f["original"]["dst"] == OUTSIDE_IP), "conntrack ls --endpoint {name}: {flows:?}");
    let stats = node.stats();
    assert!(stats.get("nat-translated").is_some_and(|c| c.0 >= 2), "{stats:?}");

    // A second ADD of the same attachment is refused, and changes nothing.
    let (cni, netns, id, ifname, prev, _) = &attached[0];
    let again = cni.add(id, netns, ifname);
    assert_eq!(again.code(), AGENT, "{}", again.msg());
    assert!(again.msg().contains("already"), "{}", again.msg());
    assert_eq!(cni_endpoints(&mut node), eps, "a refused ADD changes nothing");
    assert_ping(&a, &attached[1].5, 1);

    // CHECK passes for each; CHECK without prevResult is a bad configuration.
    for (cni, netns, id, ifname, prev, _) in &attached {
        cni.check(id, netns, ifname, prev).silent();
    }
    assert_eq!(cni.run("CHECK", id, netns, ifname, &cni.conf).code(), INVALID_CONFIG);
    // A prevResult that does not match what is there fails CHECK.
    let mut wrong = prev.clone();
    wrong["ips"][0]["address"] = json!("10.77.0.250/24");
    assert_eq!(cni.check(id, netns, ifname, &wrong).code(), CHECK_FAILED);

    // DEL: gone, then again (idempotent), then a container never added.
    for (cni, netns, id, ifname, _, _) in &attached {
        let del = cni.del(id, netns, ifname);
        del.silent();
        println!("DEL in {:.1} ms", del.took.as_secs_f64() * 1e3);
        assert!(link(&ns_name(netns), ifname).is_none(), "{ifname} left in {}", netns.display());
        cni.del(id, netns, ifname).silent();
    }
    cni.del("never-added", netns, "eth0").silent();
    assert!(cni_endpoints(&mut node).is_empty());
    assert!(node.node_dp_veths().is_empty(), "host veths left: {:?}", node.node_dp_veths());
    // CHECK of what is gone: the container is unknown.
    assert_eq!(cni.check(id, netns, ifname, prev).code(), UNKNOWN_CONTAINER);
}

/// CHECK notices an interface deleted by hand (code 101, saying what);
/// DEL then cleans up; DEL succeeds when the namespace itself vanished.
#[test]
fn cni_check_after_manual_delete_and_del_of_vanished_netns() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let cni = CniNet::new(&node, "dpnet", "web", "1.1.0");
    let (n1, n2) = (runtime_netns(&node.ep("c1")), runtime_netns(&node.ep("c2")));
    let r1 = cni.add("c1", &n1, "eth0").result();
    let r2 = cni.add("c2", &n2, "eth0").result();
    cni.check("c1", &n1, "eth0", &r1).silent();

    let o = net::exec_in(&ns_name(&n1), &["ip", "link", "del", "eth0"]);
    assert!(o.status.success(), "{}", datapath_tests::show(&o));
    let check = cni.check("c1", &n1, "eth0", &r1);
    assert_eq!(check.code(), CHECK_FAILED, "{}", check.msg());
    assert!(check.msg().contains("eth0"), "CHECK says what is missing: {}", check.msg());
    cni.del("c1", &n1, "eth0").silent();
    assert_eq!(cni_endpoints(&mut node).len(), 1);

    // The runtime's namespace is gone before DEL (a crashed container).
    let o = std::process::Command::new("ip").args(["netns", "del", &ns_name(&n2)]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(cni.check("c2", &n2, "eth0", &r2).code(), CHECK_FAILED);
    cni.del("c2", &n2, "eth0").silent();
    cni.del("c2", &n2, "eth0").silent();
    // DEL without CNI_NETNS (allowed by the spec) of something unknown.
    let env = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c2"), ("CNI_IFNAME", "eth0")];
    exec(&env, cni.conf.to_string().as_bytes()).silent();
    assert!(cni_endpoints(&mut node).is_empty());
    assert!(node.node_dp_veths().is_empty(), "host veths left: {:?}", node.node_dp_veths());
}

/// GC removes every attachment of its CNI network not listed as valid,
/// and nothing of another CNI network on the same datapath network.
#[test]
fn cni_gc_keeps_valid_attachments() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let cni = CniNet::new(&node, "dpnet", "web", "1.1.0");
    let other = CniNet::new(&node, "othernet", "web", "1.1.0");
    let nss: Vec<_> = (0..4).map(|i| runtime_netns(&node.ep(&format!("c{i}")))).collect();
    for (i, ns) in nss.iter().enumerate().take(3) {
        cni.add(&format!("c{i}"), ns, "eth0").result();
    }
    let kept = other.add("c3", &nss[3], "eth0").result();
    assert_eq!(cni_endpoints(&mut node).len(), 4);

    cni.gc(&[("c1", "eth0"), ("c0", "eth9")]).silent();
    let left: Vec<String> =
        cni_endpoints(&mut node).iter().map(|e| e["container_id"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(left, vec!["c1".to_string(), "c3".to_string()], "GC kept only c1 (and the other network's c3)");
    assert!(link(&ns_name(&nss[0]), "eth0").is_none() && link(&ns_name(&nss[2]), "eth0").is_none());
    assert_ping(&ns_name(&nss[1]), kept["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap(), 1);
    // GC of a 1.0.0 configuration: the verb does not exist there.
    let old = CniNet::new(&node, "dpnet", "web", "1.0.0");
    assert_eq!(old.gc(&[]).code(), INCOMPATIBLE_VERSION);
    cni.gc(&[]).silent();
    assert_eq!(cni_endpoints(&mut node).len(), 1, "the other network's attachment stays");
}

/// STATUS: fine with an agent serving the network; code 50 for a network
/// it does not have and with no agent; ADD without an agent is "try again".
#[test]
fn cni_status_with_and_without_agent() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let cni = CniNet::new(&node, "dpnet", "web", "1.1.0");
    cni.status().silent();
    assert_eq!(CniNet::new(&node, "dpnet", "nosuchnet", "1.1.0").status().code(), NOT_AVAILABLE);
    assert_eq!(CniNet::new(&node, "dpnet", "web", "1.0.0").status().code(), INCOMPATIBLE_VERSION);
    node.stop_agent();
    let st = cni.status();
    assert_eq!(st.code(), NOT_AVAILABLE, "{}", st.msg());
    let ns = runtime_netns(&node.ep("c1"));
    assert_eq!(cni.add("c1", &ns, "eth0").code(), TRY_AGAIN_LATER);
    assert!(link(&ns_name(&ns), "eth0").is_none());
    node.start_agent();
    cni.status().silent();
    cni.add("c1", &ns, "eth0").result();
}

/// Bad environments and configurations get the spec's codes, and nothing
/// is made: no endpoint, no veth in the node, no interface in the namespace.
#[test]
fn cni_bad_input_gets_the_right_code_and_makes_nothing() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let cni = CniNet::new(&node, "dpnet", "web", "1.1.0");
    let netns = runtime_netns(&node.ep("c1"));
    let path = netns.display().to_string();
    let add_with = |conf: &[u8]| {
        exec(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", &path), ("CNI_IFNAME", "eth0")], conf)
    };
    let conf = |v: Value| cni.with(v).to_string().into_bytes();
    let mut no_name = cni.conf.clone();
    no_name.as_object_mut().unwrap().remove("name");
    for (what, stdin, want) in [
        ("malformed JSON", b"{\"cniVersion\": \"1.1.0\", ".to_vec(), DECODE),
        ("not an object", b"[]".to_vec(), DECODE),
        ("no name", no_name.to_string().into_bytes(), INVALID_CONFIG),
        ("unknown network", conf(json!({"network": "nosuchnet"})), INVALID_CONFIG),
        ("unsupported version", conf(json!({"cniVersion": "0.3.1"})), INCOMPATIBLE_VERSION),
        ("future version", conf(json!({"cniVersion": "2.0.0"})), INCOMPATIBLE_VERSION),
        ("IPAM without a type", conf(json!({"ipam": {"subnet": SUBNET}})), INVALID_CONFIG),
        ("IPAM plugin not in CNI_PATH", conf(json!({"ipam": {"type": "no-such-ipam"}})), INVALID_CONFIG),
        ("the none network", conf(json!({"network": "none"})), INVALID_CONFIG),
    ] {
        let r = add_with(&stdin);
        assert_eq!(r.code(), want, "{what}: {}", r.msg());
    }
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let env_cases: [(&str, Env, u64); 4] = [
        ("no CNI_NETNS", vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")], INVALID_ENV),
        ("no CNI_COMMAND", vec![("CNI_CONTAINERID", "c1"), ("CNI_NETNS", &path), ("CNI_IFNAME", "eth0")], INVALID_ENV),
        (
            "bad CNI_IFNAME",
            vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", &path), ("CNI_IFNAME", "a/b")],
            INVALID_ENV,
        ),
        (
            "missing namespace",
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/run/netns/dpt-no-such-ns"),
                ("CNI_IFNAME", "eth0"),
            ],
            UNKNOWN_CONTAINER,
        ),
    ];
    for (what, env, want) in env_cases {
        let r = exec(&env, cni.conf.to_string().as_bytes());
        assert_eq!(r.code(), want, "{what}: {}", r.msg());
    }
    // An address outside the subnet (CNI_ARGS IP=), and the node's own
    // namespace: the agent refuses, after starting nothing.
    let mut args = vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", path.as_str())];
    args.extend([("CNI_IFNAME", "eth0"), ("CNI_ARGS", "IP=10.99.0.5")]);
    assert_eq!(exec(&args, cni.conf.to_string().as_bytes()).code(), INVALID_CONFIG);
    let node_ns = format!("/run/netns/{}", node.name);
    let r = cni.add("c1", Path::new(&node_ns), "eth9");
    assert_eq!(r.code(), INVALID_CONFIG, "{}", r.msg());
    // The error is written in the configuration's version.
    let r = add_with(&conf(json!({"cniVersion": "1.0.0", "network": "nosuchnet"})));
    assert_eq!(r.json.as_ref().map(|j| j["cniVersion"].clone()), Some(json!("1.0.0")));

    assert!(node.endpoints().is_empty(), "nothing half-made: {:?}", node.endpoints());
    assert!(node.node_dp_veths().is_empty(), "host veths left: {:?}", node.node_dp_veths());
    assert!(link(&ns_name(&netns), "eth0").is_none());
    // After all that, a good ADD works.
    cni.add("c1", &netns, "eth0").result();
}

/// A delegated IPAM plugin (the reference `host-local`) chooses the
/// address (a range of one, so the second ADD asks for the same one); DEL
/// gives it back; a failed ADD gives it back too.
#[test]
fn cni_delegated_ipam() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let plugins = reference_plugins();
    let mut cni = CniNet::new(&node, "dpnet", "web", "1.0.0");
    cni.path = format!("{}:{}", cni.path, plugins.display());
    let data = node.dir.join("host-local");
    cni.conf = cni.with(json!({"ipam": {
        "type": "host-local", "dataDir": data, "ranges": [[{"subnet": SUBNET, "rangeStart": "10.77.0.200",
        "rangeEnd": "10.77.0.200", "gateway": GATEWAY}]]
    }}));
    let n1 = runtime_netns(&node.ep("c1"));
    let r = cni.add("c1", &n1, "eth0").result();
    let ip = check_result(&r, "1.0.0", &n1, "eth0");
    assert_eq!(ip, "10.77.0.200", "host-local's first address: {r}");
    let reserved = data.join("dpnet").join(&ip);
    assert!(reserved.is_file(), "host-local reserved {}", reserved.display());
    cni.check("c1", &n1, "eth0", &r).silent();
    cni.del("c1", &n1, "eth0").silent();
    assert!(!reserved.exists(), "DEL released the address");

    // The agent refuses (the address is an endpoint's already): host-local
    // must not keep its reservation.
    let e = node.create_endpoint(&node.ep("x"), &["--network", "web", "--ip", "10.77.0.200"]);
    let r = cni.add("c1", &n1, "eth0");
    assert_eq!(r.code(), AGENT, "{}", r.msg());
    assert!(!reserved.exists(), "a failed ADD released the address");
    assert_eq!(node.endpoints().len(), 1, "only {}", e.name);
}

/// Every verb of a 1.1.0 configuration reaches a delegated IPAM plugin (a
/// script recording its calls): its address and DNS make the result, and
/// CHECK, STATUS, GC and DEL are passed on.
#[test]
fn cni_delegated_ipam_gets_every_verb() {
    kernel_test!();
    let node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let dir = node.dir.join("ipam");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls");
    let script = format!(
        "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >> {}\ncat > /dev/null\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then echo '{{\"cniVersion\":\"1.1.0\",\"ips\":[{{\"address\":\"10.77.0.150/24\",\
         \"gateway\":\"10.77.0.1\"}}],\"dns\":{{\"nameservers\":[\"10.77.0.1\"]}}}}'; fi\n",
        log.display()
    );
    let plugin = dir.join("recording-ipam");
    std::fs::write(&plugin, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cni = CniNet::new(&node, "dpnet", "web", "1.1.0");
    cni.path = format!("{}:{}", cni.path, dir.display());
    cni.conf = cni.with(json!({"ipam": {"type": "recording-ipam"}}));
    let n1 = runtime_netns(&node.ep("c1"));
    let r = cni.add("c1", &n1, "eth0").result();
    assert_eq!(check_result(&r, "1.1.0", &n1, "eth0"), "10.77.0.150");
    assert_eq!(r["dns"], json!({"nameservers": ["10.77.0.1"]}), "the IPAM plugin's DNS: {r}");
    cni.check("c1", &n1, "eth0", &r).silent();
    cni.status().silent();
    cni.gc(&[("c1", "eth0")]).silent();
    cni.del("c1", &n1, "eth0").silent();
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls, "ADD c1\nCHECK c1\nSTATUS \nGC \nDEL c1\n", "the IPAM plugin's calls");
}

/// Attachments are ordinary endpoints of the agent's state: they survive
/// an agent restart (same address, still forwarding, CHECK passes, DEL
/// works after it), and one whose namespace vanished meanwhile is gone.
#[test]
fn cni_attachments_survive_agent_restart() {
    kernel_test!();
    let mut node = node_with_web(AgentOpts::on(Datapath::Ebpf));
    let cni = CniNet::new(&node, "dpnet", "web", "1.1.0");
    let nss: Vec<_> = (0..3).map(|i| runtime_netns(&node.ep(&format!("c{i}")))).collect();
    let rs: Vec<Value> = nss.iter().enumerate().map(|(i, n)| cni.add(&format!("c{i}"), n, "eth0").result()).collect();
    let ip = |r: &Value| r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let before = cni_endpoints(&mut node);
    node.stop_agent();
    let o = std::process::Command::new("ip").args(["netns", "del", &ns_name(&nss[2])]).output().unwrap();
    assert!(o.status.success());
    node.start_agent();
    let after = cni_endpoints(&mut node);
    assert_eq!(after.len(), 2, "{after:?}");
    for e in &after {
        let b = before.iter().find(|b| b["name"] == e["name"]).unwrap_or_else(|| panic!("{e}"));
        assert_eq!((&b["ip"], &b["cni"], &b["container_id"]), (&e["ip"], &e["cni"], &e["container_id"]));
    }
    assert_ping(&ns_name(&nss[0]), &ip(&rs[1]), 2);
    cni.check("c0", &nss[0], "eth0", &rs[0]).silent();
    cni.del("c0", &nss[0], "eth0").silent();
    cni.del("c2", &nss[2], "eth0").silent();
    assert_eq!(cni_endpoints(&mut node).len(), 1);
}
