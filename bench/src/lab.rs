//! The measured topologies, built with the test bed
//! ([`datapath::testbed`]): the ceiling veth pair, and the kernel,
//! kernel-bare and ebpf nodes, each a node namespace with an uplink to its
//! own outside namespace and an agent with one network of two endpoints, and
//! the Docker node ([`crate::docker`]) for the two docker topologies.
//!
//! Everything is named with the run's prefix (`dpm` + 5 hex digits, claimed
//! with an owner marker under `/run/datapath-bench`), so a later run sweeps
//! the leftovers of a killed one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use datapath::api::{EndpointCreate, EndpointView, NetworkCreate, NetworkView, Request};
use datapath::host::netns;
use datapath::state::DatapathKind;
use datapath::testbed::agent::{Agent, AgentConfig};
use datapath::testbed::client::SyncClient;
use datapath::testbed::knobs;
use datapath::testbed::names::{Claim, Family};
use datapath::testbed::topology::{
    self, NodeNet, NodeSpec, VethEnd, NODE_UPLINK_IP, OUTSIDE_IP, OUTSIDE_IP6, UPLINK_DEV,
};

use crate::docker::DockerNode;
use crate::report::Topo;
use crate::sys;

/// The benchmark's family of prefixes.
pub fn family() -> Family {
    Family::new("dpm", "/run/datapath-bench")
}

/// The ceiling's addresses (a direct veth pair, 10.200.0.0/24).
pub const CEILING_IPS: [std::net::Ipv4Addr; 2] =
    [std::net::Ipv4Addr::new(10, 200, 0, 1), std::net::Ipv4Addr::new(10, 200, 0, 2)];
/// The ceiling's IPv6 addresses (fd00:200::/64 on the same pair).
pub const CEILING_IPS6: [std::net::Ipv6Addr; 2] = [
    std::net::Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1),
    std::net::Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2),
];
const CEILING_DEV: &str = "ceil0";

/// One node of the three agent topologies; field order = drop order (the
/// agent stops and cleans up before the namespaces go).
pub struct BenchNode {
    pub topo: Topo,
    pub tag: &'static str,
    pub client: SyncClient,
    pub agent: Agent,
    pub net: NodeNet,
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: String,
    /// The server endpoint's IPv6 address (the network is dual stack).
    pub server_ip6: String,
    pub network: String,
}

impl BenchNode {
    pub fn outside(&self) -> &str {
        self.net.outside.as_deref().expect("bench nodes have an uplink")
    }
}

/// Where a workload runs on a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub client_ns: String,
    pub server_ns: String,
    /// What the server binds.
    pub server_ip: String,
    /// What the client connects to.
    pub connect_ip: String,
    /// The client connects to the server's port plus this (a published
    /// port the node maps to another container port).
    pub port_offset: u16,
}

pub struct Lab {
    /// The measured topologies, in report order.
    pub topos: Vec<Topo>,
    pub nodes: Vec<BenchNode>,
    pub docker: Option<DockerNode>,
    pub ceiling: Option<(String, String)>,
    /// Last: removes everything of the run after the agents stopped.
    pub claim: Claim,
}

impl Lab {
    /// Builds the selected ones of: the ceiling pair, the kernel,
    /// kernel-bare and ebpf nodes, the Docker node.
    pub fn build(datapath_bin: &Path, topos: &[Topo]) -> Result<Lab> {
        let claim = family().claim().context("claiming a name prefix for the run")?;
        let ceiling = if topos.contains(&Topo::Ceiling) { Some(build_ceiling(&claim)?) } else { None };
        let mut nodes = Vec::new();
        for (t, idx) in [(Topo::Kernel, 1), (Topo::KernelBare, 2), (Topo::Ebpf, 3)] {
            if topos.contains(&t) {
                nodes.push(build_node(datapath_bin, &claim, t, idx)?);
            }
        }
        let docker = if topos.iter().any(|t| t.is_docker()) {
            Some(crate::docker::build(datapath_bin, &claim, PORTS).context("building the docker node")?)
        } else {
            None
        };
        Ok(Lab { topos: topos.to_vec(), nodes, docker, ceiling, claim })
    }

    pub fn node(&self, t: Topo) -> Option<&BenchNode> {
        self.nodes.iter().find(|n| n.topo == t)
    }

    /// Where a workload runs on topology `t`, over IPv4 or IPv6. North-south:
    /// from the client endpoint to the outside namespace. A published port:
    /// from the outside namespace to the node's uplink address, translated to
    /// the server endpoint. The ceiling: always its direct pair. None: the
    /// topology is not measured over IPv6 (the Docker ones).
    pub fn place(&self, t: Topo, north_south: bool, published: bool, ipv6: bool) -> Option<Place> {
        let (client, server, server_ip, outside, offset) = if let Some(n) = self.node(t) {
            let ip = if ipv6 { &n.server_ip6 } else { &n.server_ip };
            (&n.client_ns, &n.server_ns, ip, n.outside(), 0)
        } else if let Some((d, p)) = self.docker.as_ref().and_then(|d| Some((d, d.pair(t)?))) {
            if ipv6 {
                return None;
            }
            (&p.client_ns, &p.server_ns, &p.server_ip, d.outside(), p.port_offset)
        } else {
            let (a, b) = self.ceiling.as_ref().expect("the ceiling is built when measured");
            let ip = if ipv6 { CEILING_IPS6[1].to_string() } else { CEILING_IPS[1].to_string() };
            return Some(Place {
                client_ns: a.clone(),
                server_ns: b.clone(),
                server_ip: ip.clone(),
                connect_ip: ip,
                port_offset: 0,
            });
        };
        let p = |c: &str, s: &str, ip: String, to: String, port_offset| Place {
            client_ns: c.to_string(),
            server_ns: s.to_string(),
            server_ip: ip,
            connect_ip: to,
            port_offset,
        };
        let outside_ip = if ipv6 { OUTSIDE_IP6.to_string() } else { OUTSIDE_IP.to_string() };
        Some(if north_south {
            p(client, outside, outside_ip.clone(), outside_ip, 0)
        } else if published {
            p(outside, server, server_ip.clone(), NODE_UPLINK_IP.to_string(), offset)
        } else {
            p(client, server, server_ip.clone(), server_ip.clone(), 0)
        })
    }
}

/// Client-side settings for many short connections (TCP_CRR): a wide port
/// range and TIME_WAIT reuse, per namespace.
pub fn client_sysctls(ns: &str) -> Result<()> {
    let path = netns::named_path(ns);
    knobs::sysctl_write(&path, "net.ipv4.ip_local_port_range", "1024 65535")?;
    knobs::sysctl_write(&path, "net.ipv4.tcp_tw_reuse", "1")?;
    Ok(())
}

fn build_ceiling(claim: &Claim) -> Result<(String, String)> {
    let (a, b) = (claim.name("c1"), claim.name("c2"));
    for ns in [&a, &b] {
        topology::create_netns_blocking(ns)?;
    }
    topology::veth_between_blocking(
        VethEnd { netns: &a, dev: CEILING_DEV, addr: Some((CEILING_IPS[0], 24)) },
        VethEnd { netns: &b, dev: CEILING_DEV, addr: Some((CEILING_IPS[1], 24)) },
    )?;
    for (ns, ip) in [(&a, CEILING_IPS6[0]), (&b, CEILING_IPS6[1])] {
        topology::add_ipv6_blocking(ns, CEILING_DEV, ip, 64)?;
    }
    client_sysctls(&a)?;
    Ok((a, b))
}

/// The workloads' server ports (each measurement takes the next one), all
/// published by the server endpoints. 200 ports: Docker's bridge driver
/// programs iptables rules port by port.
pub const PORTS: (u16, u16) = (7100, 7299);
/// [`PORTS`] as a range for `nft` and `--publish`.
pub const PUBLISHED: &str = "7100-7299";

/// Docker's filter FORWARD chain layout and nat DOCKER jumps, in nftables,
/// with what Docker adds to its DOCKER chain for the ports `server`
/// publishes; `family` "ip" (iptables) or "ip6" (ip6tables: Docker with
/// `--ipv6` lays out the same chains there).
pub fn docker_ruleset(family: &str, bridge: &str, server: &str) -> String {
    let loopback = if family == "ip6" { "::1" } else { "127.0.0.0/8" };
    format!(
        r#"table {family} dpbench-docker {{
  chain docker {{
    {family} daddr {server} iifname != "{bridge}" oifname "{bridge}" tcp dport {PUBLISHED} accept
    {family} daddr {server} iifname != "{bridge}" oifname "{bridge}" udp dport {PUBLISHED} accept
  }}
  chain docker-user {{
    return
  }}
  chain docker-isolation-stage-1 {{
    iifname "{bridge}" oifname != "{bridge}" jump docker-isolation-stage-2
    return
  }}
  chain docker-isolation-stage-2 {{
    oifname "{bridge}" drop
    return
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    jump docker-user
    jump docker-isolation-stage-1
    oifname "{bridge}" ct state related,established accept
    oifname "{bridge}" jump docker
    iifname "{bridge}" oifname != "{bridge}" accept
    iifname "{bridge}" oifname "{bridge}" accept
  }}
  chain docker-nat {{
    iifname "{bridge}" return
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump docker-nat
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    {family} daddr != {loopback} fib daddr type local jump docker-nat
  }}
}}
"#
    )
}

/// br_netfilter is per namespace (built in or loaded, a new namespace starts
/// with 1): Docker host = 1, bare bridge = 0, eBPF node: as is.
fn set_br_netfilter(node_ns: &str, t: Topo) -> Result<()> {
    let value = match t {
        Topo::Kernel => "1",
        Topo::KernelBare => "0",
        _ => return Ok(()),
    };
    for key in [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.bridge.bridge-nf-call-arptables",
    ] {
        knobs::sysctl_write(&netns::named_path(node_ns), key, value)
            .with_context(|| format!("setting {key} (is br_netfilter available?)"))?;
    }
    Ok(())
}

fn load_docker_ruleset(node_ns: &str, family: &str, bridge: &str, server: &str) -> Result<()> {
    let mut nft = sys::in_ns(node_ns, &["nft", "-f", "-"]);
    nft.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = nft.spawn().context("running nft")?;
    child.stdin.take().context("nft stdin")?.write_all(docker_ruleset(family, bridge, server).as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft rejected the Docker ruleset: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn start_agent(bin: &Path, claim: &Claim, node_ns: &str, tag: &str, kind: DatapathKind) -> Result<Agent> {
    start_agent_with(bin, claim, node_ns, tag, kind, &[])
}

/// An agent in `node_ns` with no default network, `extra` arguments added.
pub fn start_agent_with(
    bin: &Path,
    claim: &Claim,
    node_ns: &str,
    tag: &str,
    kind: DatapathKind,
    extra: &[String],
) -> Result<Agent> {
    let dir: PathBuf = claim.dir.join(tag);
    let mut c = AgentConfig::new(bin, node_ns, &dir, claim.bpffs().join(tag));
    c.log = Some(claim.dir.join(format!("{tag}-agent.log")));
    c.no_default_network = true;
    c.default_datapath = Some(kind);
    c.cleanup_on_exit = true;
    c.extra_args.extend(extra.iter().cloned());
    c.env.push(("RUST_LOG".into(), "warn".into()));
    // Own process group: Ctrl-C reaches the bench only, which stops the agent in order.
    c.own_process_group = true;
    std::fs::create_dir_all(&dir)?;
    Agent::start(c).map_err(|e| anyhow::anyhow!("agent {tag}: {e}: {}", e.log().unwrap_or_default()))
}

fn build_node(bin: &Path, claim: &Claim, t: Topo, idx: u8) -> Result<BenchNode> {
    let tag = match t {
        Topo::Ebpf => "e",
        Topo::Kernel => "k",
        Topo::KernelBare => "b",
        Topo::Ceiling | Topo::DockerBridge | Topo::DockerDatapath => bail!("{} is not an agent node", t.name()),
    };
    let spec = NodeSpec::new(claim.name(&format!("{tag}n"))).with_outside(claim.name(&format!("{tag}o")));
    let net = topology::build_blocking(&spec)?;
    let outside = net.outside.clone().context("bench nodes have an uplink")?;
    topology::uplink_ipv6_blocking(&net.node, &outside, UPLINK_DEV)?;
    set_br_netfilter(&net.node, t)?;
    let kind = if t == Topo::Ebpf { DatapathKind::Ebpf } else { DatapathKind::Kernel };
    let agent = start_agent(bin, claim, &net.node, tag, kind)?;
    let client = agent.sync_client()?;
    let network = "bench".to_string();
    let create = NetworkCreate {
        name: network.clone(),
        subnet: format!("10.201.{idx}.0/24"),
        datapath: Some(kind),
        uplink: Some(UPLINK_DEV.into()),
        ipv6: true,
        subnet_v6: Some(format!("fd00:201:{idx}::/64")),
        ..Default::default()
    };
    let view: NetworkView = client.call_as(Request::NetworkCreate(create))?;
    let mut eps = Vec::new();
    for side in ["a", "b"] {
        let name = claim.name(&format!("{tag}{side}"));
        // The server publishes the workloads' ports (TCP and UDP).
        let publish = if side == "b" {
            datapath::ports::parse_all(&[
                format!("{PUBLISHED}:{PUBLISHED}/tcp"),
                format!("{PUBLISHED}:{PUBLISHED}/udp"),
            ])?
        } else {
            Vec::new()
        };
        let req = EndpointCreate { name: name.clone(), network: Some(network.clone()), publish, ..Default::default() };
        let v: EndpointView = client.call_as(Request::EndpointCreate(req))?;
        let ip6 = v.ip6.with_context(|| format!("endpoint {name} of the dual-stack network has no IPv6 address"))?;
        eps.push((name, v.ip.to_string(), ip6.to_string()));
    }
    if t == Topo::Kernel {
        load_docker_ruleset(&net.node, "ip", &view.bridge, &eps[1].1)?;
        load_docker_ruleset(&net.node, "ip6", &view.bridge, &eps[1].2)?;
    }
    client_sysctls(&eps[0].0)?;
    // The published-port workloads' client is the outside namespace.
    client_sysctls(&outside)?;
    let [(client_ns, _, _), (server_ns, server_ip, server_ip6)] =
        <[(String, String, String); 2]>::try_from(eps).expect("two endpoints");
    Ok(BenchNode { topo: t, tag, client, agent, net, client_ns, server_ns, server_ip, server_ip6, network })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules_mention_the_bridge() {
        let s = docker_ruleset("ip", "br-x", "10.0.0.2");
        assert!(s.contains("ip daddr 10.0.0.2 iifname != \"br-x\" oifname \"br-x\" tcp dport 7100-7299 accept"));
        assert!(s.contains("policy drop"));
        assert!(s.contains("oifname \"br-x\" ct state related,established accept"));
        assert!(s.contains("iifname \"br-x\" oifname \"br-x\" accept"));
        assert!(s.contains("ip daddr != 127.0.0.0/8 fib daddr type local jump docker-nat"));
        let s6 = docker_ruleset("ip6", "br-x", "fd00::2");
        assert!(s6.starts_with("table ip6 dpbench-docker"));
        assert!(s6.contains("ip6 daddr fd00::2 iifname != \"br-x\" oifname \"br-x\" udp dport 7100-7299 accept"));
        assert!(s6.contains("ip6 daddr != ::1 fib daddr type local jump docker-nat"));
    }
}
