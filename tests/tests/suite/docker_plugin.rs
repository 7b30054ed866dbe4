//! Docker's remote network driver (`datapath agent --docker-plugin`),
//! spoken to the way dockerd does, with no Docker installed: every call of
//! the protocol, errors, repeated calls, and the endpoints carrying traffic
//! once "Docker" moved them into sandboxes.

use serde_json::json;

use datapath_tests::docker::{call, docker_id, docker_moves_in, fails, ok, plugin_node, PluginConn};
use datapath_tests::net::{link_names, ping};
use datapath_tests::node::{AgentOpts, Node, UPLINK_IP};
use datapath_tests::outside::{http_clients, http_server};
use datapath_tests::{assert_ping, both_datapaths, kernel_test, Datapath};

use crate::modes::map_entries;
use crate::ports::{blob, connect, fetch};

fn v4(pool: &str, gw: &str) -> serde_json::Value {
    json!([{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gw, "AuxAddresses": {}}])
}

both_datapaths! {
/// The whole life of a Docker network: Activate, GetCapabilities,
/// CreateNetwork (Docker's subnet and gateway, shown by `network ls` as
/// Docker's), CreateEndpoint (Docker's address; MAC chosen by the driver
/// when Docker gives none, Docker's own honoured when it does), Join (the
/// container end waits in the node namespace, the program already on the
/// host end), traffic between two sandboxes and to the gateway, OperInfo,
/// external connectivity recorded, Leave, DeleteEndpoint (veth gone),
/// DeleteNetwork (network gone); every create and delete repeated.
fn docker_network_lifecycle(dp) {
    let (mut node, sock) = plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::on(dp) });
    let act = ok(&sock, "Plugin.Activate", json!(null));
    assert_eq!(act, json!({"Implements": ["NetworkDriver"]}));
    let caps = ok(&sock, "NetworkDriver.GetCapabilities", json!(null));
    assert_eq!(caps, json!({"Scope": "local", "ConnectivityScope": "local"}));

    let nid = docker_id("net1");
    let create = json!({"NetworkID": nid, "Options": {
        "com.docker.network.enable_ipv6": false,
        "com.docker.network.generic": {"datapath": dp.as_str()}},
        "IPv4Data": v4("10.30.0.0/24", "10.30.0.1/24"), "IPv6Data": []});
    assert_eq!(ok(&sock, "NetworkDriver.CreateNetwork", create.clone()), json!({}));
    // dockerd replaying its networks: the same network, nothing made twice.
    ok(&sock, "NetworkDriver.CreateNetwork", create.clone());
    let nets = node.networks();
    assert_eq!(nets.len(), 1, "{nets:?}");
    let net = &nets[0];
    let net_name = format!("docker-{}", &nid[..12]);
    assert_eq!(net["name"], net_name.as_str());
    assert_eq!((net["subnet"].as_str(), net["gateway"].as_str()), (Some("10.30.0.0/24"), Some("10.30.0.1")));
    assert_eq!((net["owner"].as_str(), net["datapath"].as_str()), (Some("docker"), Some(dp.as_str())));
    let table = node.ok(&["network", "ls"]);
    assert!(table.lines().any(|l| l.contains(&net_name) && l.trim_end().ends_with("docker")), "{table}");

    // Endpoint 1: Docker gives the address only; the driver picks the MAC.
    let (e1, e2) = (docker_id("ep1"), docker_id("ep2"));
    let ep1 = json!({"NetworkID": nid, "EndpointID": e1,
        "Interface": {"Address": "10.30.0.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}});
    let r1 = ok(&sock, "NetworkDriver.CreateEndpoint", ep1.clone());
    let mac1 = r1["Interface"]["MacAddress"].as_str().expect("the driver's MAC").to_string();
    assert!(r1["Interface"].get("Address").is_none(), "Docker's address is not given back: {r1}");
    assert_eq!(ok(&sock, "NetworkDriver.CreateEndpoint", ep1.clone()), r1, "a repeated create is the same endpoint");
    // Endpoint 2: Docker's address and MAC, honoured.
    let mac2 = "02:42:0a:1e:00:03";
    let ep2 = json!({"NetworkID": nid, "EndpointID": e2,
        "Interface": {"Address": "10.30.0.3/24", "MacAddress": mac2}, "Options": {}});
    assert_eq!(ok(&sock, "NetworkDriver.CreateEndpoint", ep2), json!({}));
    // Someone else's address on the same endpoint id: refused.
    let clash = json!({"NetworkID": nid, "EndpointID": e2, "Interface": {"Address": "10.30.0.9/24"}});
    fails(&sock, "NetworkDriver.CreateEndpoint", clash, 409);
    // An address already taken by endpoint 1: refused with the agent's reason.
    let taken = json!({"NetworkID": nid, "EndpointID": docker_id("ep3"), "Interface": {"Address": "10.30.0.2/24"}});
    let err = fails(&sock, "NetworkDriver.CreateEndpoint", taken, 409);
    assert!(err.contains("10.30.0.2"), "{err}");

    let eps = node.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    let find = |id: &str| eps.iter().find(|e| e["name"] == format!("docker-{}", &id[..12]).as_str()).expect("endpoint").clone();
    let (v1, v2) = (find(&e1), find(&e2));
    assert_eq!((v1["ip"].as_str(), v1["mac"].as_str()), (Some("10.30.0.2"), Some(mac1.as_str())));
    assert_eq!((v2["ip"].as_str(), v2["mac"].as_str()), (Some("10.30.0.3"), Some(mac2)));
    for v in [&v1, &v2] {
        assert_eq!((v["owner"].as_str(), v["detached"].as_bool()), (Some("docker"), Some(true)), "{v}");
        assert_eq!(v["tc"].is_object(), dp.is_ebpf(), "program on the host end: {v}");
    }
    let table = node.ok(&["endpoint", "ls"]);
    assert_eq!(table.lines().filter(|l| l.trim_end().ends_with("docker")).count(), 2, "{table}");

    // Join: the container end is in the node namespace, down, with its MAC.
    let mut srcs = Vec::new();
    for (eid, mac) in [(&e1, mac1.as_str()), (&e2, mac2)] {
        let j = ok(&sock, "NetworkDriver.Join", json!({"NetworkID": nid, "EndpointID": eid,
            "SandboxKey": "/var/run/docker/netns/x", "Options": {}}));
        assert_eq!((j["Gateway"].as_str(), j["DisableGatewayService"].as_bool()), (Some("10.30.0.1"), Some(false)), "{j}");
        assert_eq!(j["InterfaceName"]["DstPrefix"], "eth");
        let src = j["InterfaceName"]["SrcName"].as_str().expect("SrcName").to_string();
        let link = datapath_tests::net::link(&node.name, &src).unwrap_or_else(|| panic!("{src} in the node namespace"));
        assert_eq!(link["address"].as_str(), Some(mac), "{link}");
        srcs.push(src);
    }
    let (s1, s2) = (node.ep("s1"), node.ep("s2"));
    docker_moves_in(&node.name, &srcs[0], &s1, "10.30.0.2/24", Some("10.30.0.1"));
    docker_moves_in(&node.name, &srcs[1], &s2, "10.30.0.3/24", Some("10.30.0.1"));
    assert_ping(&s1, "10.30.0.3", 2);
    assert_ping(&s2, "10.30.0.2", 2);
    assert_ping(&s1, "10.30.0.1", 1);

    // Published ports are programmed and shown (reachability: docker_published_ports).
    let portmap = json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]);
    ok(&sock, "NetworkDriver.ProgramExternalConnectivity", json!({"NetworkID": nid, "EndpointID": e1,
        "Options": {"com.docker.network.portmap": portmap, "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}}));
    let info = ok(&sock, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": nid, "EndpointID": e1}));
    assert_eq!(info["Value"]["datapath.address"], "10.30.0.2/24", "{info}");
    let shown = json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8080, "HostPortEnd": 8080}]);
    assert_eq!(info["Value"]["com.docker.network.portmap"], shown, "{info}");
    ok(&sock, "NetworkDriver.RevokeExternalConnectivity", json!({"NetworkID": nid, "EndpointID": e1}));
    let info = ok(&sock, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": nid, "EndpointID": e1}));
    assert!(info["Value"].get("com.docker.network.portmap").is_none(), "{info}");
    ok(&sock, "NetworkDriver.DiscoverNew", json!({"DiscoveryType": 1, "DiscoveryData": {}}));
    ok(&sock, "NetworkDriver.DiscoverDelete", json!({"DiscoveryType": 1, "DiscoveryData": {}}));

    // Removing a network that still has endpoints: refused, nothing removed.
    fails(&sock, "NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}), 409);
    for (eid, s) in [(&e1, &s1), (&e2, &s2)] {
        ok(&sock, "NetworkDriver.Leave", json!({"NetworkID": nid, "EndpointID": eid}));
        ok(&sock, "NetworkDriver.DeleteEndpoint", json!({"NetworkID": nid, "EndpointID": eid}));
        ok(&sock, "NetworkDriver.DeleteEndpoint", json!({"NetworkID": nid, "EndpointID": eid}));
        assert!(!link_names(s).iter().any(|l| l == "eth0"), "the veth went with the endpoint");
    }
    assert!(node.endpoints().is_empty());
    assert!(node.node_dp_veths().is_empty(), "{:?}", node.node_dp_veths());
    assert!(!ping(&s1, "10.30.0.3", 1).status.success());
    ok(&sock, "NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
    ok(&sock, "NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
    assert!(node.networks().is_empty());
}
}

/// Bad input gets the protocol's `{"Err": ...}` with a clear message and
/// changes nothing: bad JSON, an unknown method, a GET, unknown networks
/// and endpoints, two subnets, bad options, a subnet overlapping
/// another network; several requests on one keep-alive connection.
#[test]
fn docker_plugin_refuses_bad_calls() {
    kernel_test!();
    let (mut node, sock) = plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::on(Datapath::Ebpf) });
    let nid = docker_id("net1");
    let mut conn = PluginConn::open(&sock);
    let r = conn.post("NetworkDriver.CreateNetwork", "{\"NetworkID\": ");
    assert!(r.status == 400 && r.err().contains("malformed NetworkDriver.CreateNetwork"), "{r:?}");
    // The same connection keeps serving.
    let r = conn.post("NetworkDriver.GetCapabilities", "");
    assert_eq!((r.status, r.body["Scope"].as_str()), (200, Some("local")), "{r:?}");
    let r = conn.post("NetworkDriver.Frobnicate", "{}");
    assert!(r.status == 404 && r.err().contains("Frobnicate"), "{r:?}");
    let r = conn.raw(b"GET /Plugin.Activate HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 405, "{r:?}");
    let r = PluginConn::open(&sock).raw(b"NOT HTTP\r\n\r\n");
    assert!(r.status == 400 && !r.err().is_empty(), "{r:?}");

    let unknown = docker_id("nope");
    let e = fails(
        &sock,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": unknown, "EndpointID": docker_id("e1"), "Interface": {"Address": "10.30.0.2/24"}}),
        404,
    );
    assert!(e.contains("not found"), "{e}");
    for m in ["Join", "EndpointOperInfo", "ProgramExternalConnectivity"] {
        fails(&sock, &format!("NetworkDriver.{m}"), json!({"NetworkID": unknown, "EndpointID": docker_id("e1")}), 404);
    }
    fails(
        &sock,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": "../../etc", "IPv4Data": v4("10.30.0.0/24", "")}),
        400,
    );
    for (opts, data, why) in [
        (json!({}), json!([]), "IPv4"),
        (json!({}), json!([{"Pool": "10.30.0.0/24"}, {"Pool": "10.31.0.0/24"}]), "one IPv4 subnet"),
        (json!({"com.docker.network.enable_ipv6": "perhaps"}), v4("10.30.0.0/24", ""), "enable_ipv6"),
        (
            json!({"com.docker.network.generic": {"com.docker.network.bridge.enable_icc": "maybe"}}),
            v4("10.30.0.0/24", ""),
            "enable_icc",
        ),
        (
            json!({"com.docker.network.generic": {"com.docker.network.bridge.name": "br0"}}),
            v4("10.30.0.0/24", ""),
            "not supported",
        ),
        (json!({}), v4("10.30.0.0/33", ""), "10.30.0.0/33"),
    ] {
        let e = fails(
            &sock,
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": nid, "Options": opts, "IPv4Data": data}),
            400,
        );
        assert!(e.contains(why), "{e} should say {why}");
    }
    assert!(node.networks().is_empty(), "nothing made by bad calls");
    ok(&sock, "NetworkDriver.CreateNetwork", json!({"NetworkID": nid, "IPv4Data": v4("10.30.0.0/24", "10.30.0.1/24")}));
    let e = fails(
        &sock,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": docker_id("net2"), "IPv4Data": v4("10.30.0.128/25", "")}),
        409,
    );
    assert!(e.contains("overlaps"), "{e}");
    // The same id with another subnet is not "the same network".
    fails(&sock, "NetworkDriver.CreateNetwork", json!({"NetworkID": nid, "IPv4Data": v4("10.40.0.0/24", "")}), 409);
    let e = fails(
        &sock,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": nid, "EndpointID": docker_id("e1"), "Interface": {"Address": "10.99.0.2/24"}}),
        400,
    );
    assert!(e.contains("10.99.0.2"), "{e}");
    fails(
        &sock,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": nid, "EndpointID": docker_id("e1"), "Interface": {"Address": "10.30.0.2/24", "MacAddress": "01:00:5e:00:00:01"}}),
        400,
    );
    fails(&sock, "NetworkDriver.Join", json!({"NetworkID": nid, "EndpointID": docker_id("e1")}), 404);
    assert!(node.endpoints().is_empty(), "nothing made by bad calls");
    // A network of the API's own is not Docker's to delete.
    node.ok(&["network", "create", "docker-mine", "--subnet", "10.50.0.0/24"]);
    assert!(call(&sock, "NetworkDriver.DeleteNetwork", json!({"NetworkID": "mine"})).status == 404);
    assert_eq!(node.networks().len(), 2);
}

/// Docker's options reach the network: internal (no gateway given to
/// Docker, no gateway service), icc off, MTU on the veths.
#[test]
fn docker_network_options() {
    kernel_test!();
    let (mut node, sock) = plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::on(Datapath::Ebpf) });
    let nid = docker_id("net1");
    ok(
        &sock,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": nid,
        "Options": {"com.docker.network.internal": true, "com.docker.network.generic": {
            "com.docker.network.bridge.enable_icc": "false", "com.docker.network.driver.mtu": "1400"}},
        "IPv4Data": v4("10.30.0.0/24", "10.30.0.1/24")}),
    );
    let net = node.inspect_network(&format!("docker-{}", &nid[..12]));
    assert_eq!(net["internal"], true, "{net}");
    assert_eq!(
        (net["options"]["icc"].as_bool(), net["options"]["masquerade"].as_bool(), net["options"]["mtu"].as_u64()),
        (Some(false), Some(false), Some(1400)),
        "{net}"
    );
    let eid = docker_id("ep1");
    ok(
        &sock,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": "10.30.0.2/24"}}),
    );
    let j = ok(&sock, "NetworkDriver.Join", json!({"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"}));
    assert!(j.get("Gateway").is_none() && j["DisableGatewayService"] == true, "{j}");
    let src = j["InterfaceName"]["SrcName"].as_str().unwrap();
    let link = datapath_tests::net::link(&node.name, src).expect("container end");
    assert_eq!(link["mtu"].as_u64(), Some(1400), "{link}");
    // Its namespace is Docker's, not one `datapath run` may enter.
    let e = node.err(&["run", "--network", &format!("container:docker-{}", &eid[..12]), "--", "true"]);
    assert!(e.contains("no namespace"), "{e}");
}

/// The agent restarting keeps Docker's endpoints (persisted, still
/// forwarding) and answers Docker's next calls about them.
#[test]
fn docker_endpoints_survive_an_agent_restart() {
    kernel_test!();
    let (mut node, sock) = plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::on(Datapath::Ebpf) });
    let nid = docker_id("net1");
    ok(&sock, "NetworkDriver.CreateNetwork", json!({"NetworkID": nid, "IPv4Data": v4("10.30.0.0/24", "10.30.0.1/24")}));
    let mut sandboxes = Vec::new();
    for (i, tag) in ["ep1", "ep2"].iter().enumerate() {
        let eid = docker_id(tag);
        let addr = format!("10.30.0.{}/24", i + 2);
        ok(
            &sock,
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": addr}}),
        );
        let j = ok(&sock, "NetworkDriver.Join", json!({"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"}));
        let sb = node.ep(&format!("s{i}"));
        docker_moves_in(&node.name, j["InterfaceName"]["SrcName"].as_str().unwrap(), &sb, &addr, Some("10.30.0.1"));
        sandboxes.push(sb);
    }
    assert_ping(&sandboxes[0], "10.30.0.3", 1);
    node.restart_agent();
    assert!(sock.exists());
    assert_eq!(node.endpoints().len(), 2);
    assert_ping(&sandboxes[0], "10.30.0.3", 2);
    assert_ping(&sandboxes[1], "10.30.0.2", 2);
    let info = ok(&sock, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": nid, "EndpointID": docker_id("ep1")}));
    assert_eq!(info["Value"]["datapath.address"], "10.30.0.2/24");
    for tag in ["ep1", "ep2"] {
        ok(&sock, "NetworkDriver.Leave", json!({"NetworkID": nid, "EndpointID": docker_id(tag)}));
        ok(&sock, "NetworkDriver.DeleteEndpoint", json!({"NetworkID": nid, "EndpointID": docker_id(tag)}));
    }
    ok(&sock, "NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
    assert!(node.networks().is_empty() && node.endpoints().is_empty());
}

/// The `ports` an endpoint of the driver shows (`endpoint ls`), as
/// `HOST_PORT->CONTAINER_PORT/PROTO`.
fn shown_ports(node: &mut Node, eid: &str) -> Vec<String> {
    let name = format!("docker-{}", &eid[..12]);
    let eps = node.endpoints();
    let e = eps.iter().find(|e| e["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} in {eps:?}"));
    e["ports"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|p| format!("{}->{}/{}", p["host_port"], p["container_port"], p["proto"].as_str().unwrap_or("?")))
        .collect()
}

both_datapaths! {
/// Docker's `-p 8080:80`: `ProgramExternalConnectivity` with a portmap
/// publishes the port on the endpoint (shown by `endpoint ls`, in `PORTS`
/// on eBPF) and an HTTP fetch from the outside namespace through the
/// node's uplink address reaches the sandbox (content checked, the server
/// sees the outside client). The same port asked by a second endpoint, a
/// host port range and SCTP get an `Err` and change nothing; a host port
/// left to the driver (HostPort 0) is chosen (49153, Docker's range) and
/// shown to Docker; `RevokeExternalConnectivity` withdraws the
/// port (the outside is refused), programming again and `Leave` withdraw
/// it as well.
fn docker_published_ports(dp) {
    let (mut node, sock) = plugin_node(AgentOpts { no_default_network: true, ..AgentOpts::with_uplink(dp) });
    let out = node.outside().to_string();
    let nid = docker_id("net1");
    ok(&sock, "NetworkDriver.CreateNetwork", json!({"NetworkID": nid,
        "Options": {"com.docker.network.generic": {"datapath": dp.as_str()}},
        "IPv4Data": v4("10.30.0.0/24", "10.30.0.1/24")}));
    let (e1, e2) = (docker_id("ep1"), docker_id("ep2"));
    let mut sandboxes = Vec::new();
    for (i, eid) in [&e1, &e2].into_iter().enumerate() {
        let addr = format!("10.30.0.{}/24", i + 2);
        ok(&sock, "NetworkDriver.CreateEndpoint", json!({"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": addr}}));
        let j = ok(&sock, "NetworkDriver.Join", json!({"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"}));
        let sb = node.ep(&format!("s{i}"));
        docker_moves_in(&node.name, j["InterfaceName"]["SrcName"].as_str().unwrap(), &sb, &addr, Some("10.30.0.1"));
        sandboxes.push(sb);
    }
    const LEN: usize = 64 * 1024;
    let sha = blob(&node, "blob.bin", LEN);
    let server = http_server(&sandboxes[0], 80, &node.dir.join("www"));
    let url = format!("http://{UPLINK_IP}:8080/blob.bin");
    let program = |eid: &str, portmap: serde_json::Value| {
        call(&sock, "NetworkDriver.ProgramExternalConnectivity", json!({"NetworkID": nid, "EndpointID": eid,
            "Options": {"com.docker.network.portmap": portmap, "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}}))
    };
    let web = json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
                     {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080}]);
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "refused", "nothing published yet");

    let r = program(&e1, web.clone());
    assert_eq!((r.status, &r.body), (200, &json!({})), "{r:?}");
    assert_eq!(shown_ports(&mut node, &e1), vec!["8080->80/tcp"]);
    let info = ok(&sock, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": nid, "EndpointID": e1}));
    let shown = json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8080, "HostPortEnd": 8080}]);
    assert_eq!(info["Value"]["com.docker.network.portmap"], shown, "{info}");
    fetch(&node, &out, &url, LEN, &sha);
    assert_eq!(http_clients(&server), vec![datapath_tests::node::OUTSIDE_IP.to_string()]);
    if dp.is_ebpf() {
        assert_eq!(map_entries(&node, "PORTS"), 2, "PORTS: 8080 on the node's 2 addresses (uplink, gateway)");
    }
    // Programming again (Docker replaying) changes nothing.
    assert_eq!(program(&e1, web.clone()).status, 200);
    assert_eq!(shown_ports(&mut node, &e1), vec!["8080->80/tcp"]);

    // Refused with the reason, nothing changed.
    let r = program(&e2, web.clone());
    assert!(r.status == 409 && r.err().contains("8080") && r.err().contains("already published"), "{r:?}");
    let r = program(&e2, json!([{"Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 8010}]));
    assert!(r.status == 400 && r.err().contains("8000-8010"), "{r:?}");
    let r = program(&e2, json!([{"Proto": 132, "Port": 80, "HostPort": 9000}]));
    assert!(r.status == 400 && r.err().contains("protocol 132"), "{r:?}");
    assert!(shown_ports(&mut node, &e2).is_empty());
    assert_eq!(shown_ports(&mut node, &e1), vec!["8080->80/tcp"]);
    fetch(&node, &out, &url, LEN, &sha);

    // HostPort 0 (`-p 80`, `-P`): the agent chooses the first free port
    // of Docker's range, shown to Docker by EndpointOperInfo, kept when
    // Docker programs again; reachable from the outside.
    let _server2 = http_server(&sandboxes[1], 80, &node.dir.join("www"));
    let any = json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}]);
    assert_eq!(program(&e2, any.clone()).status, 200);
    assert_eq!(program(&e2, any).status, 200);
    assert_eq!(shown_ports(&mut node, &e2), vec!["49153->80/tcp"]);
    let info = ok(&sock, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": nid, "EndpointID": e2}));
    assert_eq!(info["Value"]["com.docker.network.portmap"][0]["HostPort"], 49153, "{info}");
    fetch(&node, &out, &format!("http://{UPLINK_IP}:49153/blob.bin"), LEN, &sha);

    // Revoke: withdrawn, the outside refused, the port free for e2.
    ok(&sock, "NetworkDriver.RevokeExternalConnectivity", json!({"NetworkID": nid, "EndpointID": e1}));
    assert!(shown_ports(&mut node, &e1).is_empty());
    if dp.is_ebpf() {
        assert_eq!(map_entries(&node, "PORTS"), 2, "only e2's 49153 left");
    }
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "refused", "revoked");
    assert_eq!(program(&e2, web.clone()).status, 200);
    assert_eq!(shown_ports(&mut node, &e2), vec!["8080->80/tcp"]);
    // Leave withdraws too.
    ok(&sock, "NetworkDriver.Leave", json!({"NetworkID": nid, "EndpointID": e2}));
    assert!(shown_ports(&mut node, &e2).is_empty());
    if dp.is_ebpf() {
        assert_eq!(map_entries(&node, "PORTS"), 0);
    }
    assert_eq!(connect(&node, &out, UPLINK_IP, 8080), "refused", "left");
    for eid in [&e1, &e2] {
        ok(&sock, "NetworkDriver.DeleteEndpoint", json!({"NetworkID": nid, "EndpointID": eid}));
    }
    ok(&sock, "NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
}
}
