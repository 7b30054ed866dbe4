//! The `docker` topology pair: one real dockerd (the test bed's,
//! [`datapath::testbed::docker`]) in a node namespace of its own, with an
//! uplink to its outside namespace like the other nodes, and two networks on
//! it: Docker's own `bridge` driver (with `--iptables`: its iptables rules,
//! ip_forward and br_netfilter as Docker sets them on a host) and the
//! `datapath` driver (the agent on the same node with `--docker-plugin`,
//! eBPF datapath). On each network a client and a server container that
//! only `sleep`; the workloads run the host's `loadgen`/`iperf3` in the
//! containers' network namespaces, which are given names of the run
//! (`ip netns attach`) so everything else of the bench applies unchanged.
//!
//! Container start: `docker run -d` round trips (the command returns once
//! the container runs) and `docker rm -f`, alternating between the drivers.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use datapath::testbed::agent::Agent;
use datapath::testbed::client::SyncClient;
use datapath::testbed::docker::{self, Dockerd, DockerdConfig};
use datapath::testbed::names::Claim;
use datapath::testbed::topology::{self, NodeNet, NodeSpec};

use crate::report::{Churn, Topo};
use crate::{progress, stats, sys};

/// The image the containers run (busybox-static, imported: no registry).
const IMAGE: &str = "dpm-busybox:1";

/// The host ports the bridge network's server publishes are the workloads'
/// ports plus this (the datapath network's server publishes them as they
/// are: both on the same node address, so they must differ).
pub const BRIDGE_PORT_OFFSET: u16 = 1000;

/// One network's two containers.
pub struct Pair {
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: String,
    /// Host port = container port + this, for the published-port workloads.
    pub port_offset: u16,
}

/// The Docker node; field order = drop order: dockerd removes its
/// containers (through the plugin) and stops before the agent, the agent
/// before the namespaces.
pub struct DockerNode {
    pub dockerd: Dockerd,
    pub client: SyncClient,
    pub agent: Agent,
    pub net: NodeNet,
    pub bridge: Pair,
    pub datapath: Pair,
}

impl DockerNode {
    pub fn pair(&self, t: Topo) -> Option<&Pair> {
        match t {
            Topo::DockerBridge => Some(&self.bridge),
            Topo::DockerDatapath => Some(&self.datapath),
            _ => None,
        }
    }

    pub fn outside(&self) -> &str {
        self.net.outside.as_deref().expect("the docker node has an uplink")
    }

    /// The network name of a docker topology.
    fn network(t: Topo) -> &'static str {
        if t == Topo::DockerBridge {
            "dpm-bridge"
        } else {
            "dpm-datapath"
        }
    }
}

/// `-p` flags publishing `range` (TCP and UDP) at host ports shifted by `offset`.
fn publish_flags(range: (u16, u16), offset: u16) -> Vec<String> {
    let (lo, hi) = range;
    let host = format!("{}-{}", lo + offset, hi + offset);
    ["tcp", "udp"].iter().flat_map(|p| ["-p".to_string(), format!("{host}:{lo}-{hi}/{p}")]).collect()
}

/// Builds the Docker node: namespaces, agent with the plugin, dockerd,
/// image, both networks and their containers.
pub fn build(bin: &Path, claim: &Claim, published: (u16, u16)) -> Result<DockerNode> {
    let spec = NodeSpec::new(claim.name("dn")).with_outside(claim.name("do"));
    let net = topology::build_blocking(&spec)?;
    let plugin_dir = claim.dir.join("d-plugins");
    let agent = crate::lab::start_agent_with(
        bin,
        claim,
        &net.node,
        "d",
        datapath::state::DatapathKind::Ebpf,
        &["--docker-plugin".to_string(), "--docker-plugin-dir".into(), plugin_dir.display().to_string()],
    )?;
    let client = agent.sync_client()?;
    let plugin = plugin_dir.join("datapath.sock");
    if !plugin.exists() {
        bail!("the agent does not serve the Docker plugin at {}", plugin.display());
    }
    let mut cfg = DockerdConfig::new(&net.node, claim.dir.join("docker"));
    cfg.plugins.push(("datapath".into(), plugin));
    cfg.iptables = true;
    cfg.own_process_group = true;
    progress("starting dockerd (bridge driver with its iptables rules, and the datapath driver)");
    let dockerd = Dockerd::start(cfg)?;
    dockerd.import_busybox(IMAGE)?;
    let mut pairs = Vec::new();
    for (t, driver, subnet, offset) in [
        (Topo::DockerBridge, "bridge", "10.202.0.0/24", BRIDGE_PORT_OFFSET),
        (Topo::DockerDatapath, "datapath", "10.202.1.0/24", 0),
    ] {
        let name = DockerNode::network(t);
        dockerd.run(&["network", "create", "-d", driver, "--subnet", subnet, name])?;
        let mut ends = Vec::new();
        for (side, publish) in [("c", Vec::new()), ("s", publish_flags(published, offset))] {
            let cname = format!("{name}-{side}");
            let mut args = vec!["run", "-d", "--name", &cname, "--network", name];
            args.extend(publish.iter().map(String::as_str));
            args.extend([IMAGE, "sleep", "1000000"]);
            dockerd.run(&args).with_context(|| format!("starting container {cname}"))?;
            let pid = dockerd.container_pid(&cname)?;
            // A name of the run for the container's network namespace.
            let ns = claim.name(&format!("{}{side}", if offset > 0 { "db" } else { "dd" }));
            sys::sh(std::process::Command::new("ip").args(["netns", "attach", &ns, &pid.to_string()]))?;
            ends.push((ns, dockerd.container_ip(&cname)?));
        }
        let [(client_ns, _), (server_ns, server_ip)] = <[(String, String); 2]>::try_from(ends).expect("two containers");
        crate::lab::client_sysctls(&client_ns)?;
        pairs.push(Pair { client_ns, server_ns, server_ip, port_offset: offset });
    }
    crate::lab::client_sysctls(net.outside.as_deref().context("the docker node has an uplink")?)?;
    let datapath = pairs.pop().expect("two networks");
    let bridge = pairs.pop().expect("two networks");
    Ok(DockerNode { dockerd, client, agent, net, bridge, datapath })
}

/// Times `count` container starts (`docker run -d`) and removals (`docker
/// rm -f`) per driver, alternating between the drivers.
pub fn container_starts(count: usize, d: &DockerNode) -> Result<Vec<Churn>> {
    let topos = [Topo::DockerBridge, Topo::DockerDatapath];
    let mut out: Vec<Churn> = topos.iter().map(|t| Churn { datapath: t.name().into(), ..Default::default() }).collect();
    progress(&format!("container start: {count} × `docker run -d` then `docker rm -f` per driver"));
    let mut started: Vec<Vec<String>> = vec![Vec::new(); topos.len()];
    for i in 0..count {
        for (j, &t) in topos.iter().enumerate() {
            sys::check_interrupted()?;
            let name = format!("{}-x{i}", DockerNode::network(t));
            let t0 = Instant::now();
            match d.dockerd.run(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                DockerNode::network(t),
                IMAGE,
                "sleep",
                "1000000",
            ]) {
                Ok(_) => {
                    out[j].create_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    started[j].push(name);
                }
                Err(e) => out[j].errors.push(format!("run {name}: {e}")),
            }
        }
    }
    for i in 0..count {
        for (j, _) in topos.iter().enumerate() {
            sys::check_interrupted()?;
            let Some(name) = started[j].get(i) else { continue };
            let t0 = Instant::now();
            match d.dockerd.run(&["rm", "-f", name]) {
                Ok(_) => out[j].remove_ms.push(t0.elapsed().as_secs_f64() * 1e3),
                Err(e) => out[j].errors.push(format!("rm {name}: {e}")),
            }
        }
    }
    for c in &out {
        progress(&format!(
            "container start {}: median {:.0} ms p99 {:.0} ms, remove median {:.0} ms ({} errors)",
            c.datapath,
            stats::median(&c.create_ms).unwrap_or(f64::NAN),
            stats::percentile(&c.create_ms, 99.0).unwrap_or(f64::NAN),
            stats::median(&c.remove_ms).unwrap_or(f64::NAN),
            c.errors.len()
        ));
    }
    Ok(out)
}

/// Is Docker installed (else the docker topologies are skipped)?
pub fn available() -> bool {
    docker::installed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_flags_shift_host_ports() {
        assert_eq!(
            publish_flags((7100, 7299), 1000),
            ["-p", "8100-8299:7100-7299/tcp", "-p", "8100-8299:7100-7299/udp"]
        );
        assert_eq!(publish_flags((7100, 7101), 0)[1], "7100-7101:7100-7101/tcp");
    }
}
