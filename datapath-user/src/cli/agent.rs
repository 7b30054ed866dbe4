//! `datapath agent`: the command-line options of the agent, turned into
//! [`AgentConfig`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use datapath::agent::{self, AgentConfig, DEFAULT_SUBNET};
use datapath::host::netns;
use datapath::ipam;

use super::{Datapath, TcAttach};

/// Where an agent keeps its things on a node (shared by `agent` and `reset`).
#[derive(Args)]
pub struct NodeArgs {
    /// Directory for the persisted desired state.
    #[arg(long, default_value = "/var/lib/datapath")]
    pub state_dir: PathBuf,
    /// bpffs directory for this agent's pinned objects.
    #[arg(long, default_value = "/sys/fs/bpf/datapath")]
    pub bpffs: PathBuf,
    /// Run inside this named network namespace (/run/netns/NAME), the "node".
    #[arg(long)]
    pub netns: Option<String>,
}

impl NodeArgs {
    /// Enters the node namespace (`--netns`). The process must still be
    /// single-threaded: call it before the runtime starts.
    pub fn enter_node_namespace(&self) -> Result<()> {
        if let Some(ns) = &self.netns {
            netns::enter_process(&netns::named_path(ns)).with_context(|| format!("entering node namespace {ns}"))?;
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Do not create the default network `bridge`.
    #[arg(long)]
    no_default_network: bool,
    /// Subnet of the default network.
    #[arg(long, default_value = DEFAULT_SUBNET)]
    default_subnet: String,
    /// Remove every endpoint and network this agent manages when it stops.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
    tc_attach: TcAttach,
    /// Datapath of networks created without --datapath, the default network included.
    #[arg(long, value_enum, default_value_t = Datapath::Ebpf)]
    default_datapath: Datapath,
    /// SNAT source ports LOW-HIGH (default: the largest range clear of the node's ephemeral ports).
    #[arg(long, value_parser = parse_port_range)]
    nat_port_range: Option<(u16, u16)>,
    /// Conntrack lifetime of a TCP flow after its SYN, seconds.
    #[arg(long, default_value_t = datapath_common::CT_DEFAULT_TCP_SYN)]
    ct_tcp_syn: u32,
    /// Conntrack lifetime of an established TCP flow, seconds.
    #[arg(long, default_value_t = datapath_common::CT_DEFAULT_TCP_ESTABLISHED)]
    ct_tcp_established: u32,
    /// Conntrack lifetime of a TCP flow after FIN/RST, seconds.
    #[arg(long, default_value_t = datapath_common::CT_DEFAULT_TCP_CLOSING)]
    ct_tcp_closing: u32,
    /// Conntrack lifetime of a UDP flow, seconds.
    #[arg(long, default_value_t = datapath_common::CT_DEFAULT_UDP)]
    ct_udp: u32,
    /// Conntrack lifetime of an ICMP echo flow, seconds.
    #[arg(long, default_value_t = datapath_common::CT_DEFAULT_ICMP)]
    ct_icmp: u32,
    /// Seconds between conntrack garbage collections.
    #[arg(long, default_value_t = 10)]
    ct_gc_interval: u64,
    /// Capacity of the conntrack table (entries; a masqueraded flow takes
    /// two). Changing it on a running node migrates the table's entries.
    #[arg(long, default_value_t = datapath_common::CT_MAX_ENTRIES, value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    ct_max_entries: u32,
    /// Serve Docker's remote network driver as plugin NAME (`docker network
    /// create -d NAME`), on DIR/NAME.sock (see --docker-plugin-dir).
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = datapath::docker::DEFAULT_PLUGIN_NAME)]
    docker_plugin: Option<String>,
    /// Directory of the plugin socket: where dockerd looks for plugins.
    #[arg(long, value_name = "DIR", default_value = datapath::docker::DEFAULT_PLUGIN_DIR)]
    docker_plugin_dir: PathBuf,
    /// Where the embedded DNS finds the node's upstream resolvers (its
    /// `nameserver` lines; queried from the agent's namespace).
    #[arg(long, value_name = "PATH", default_value = datapath::dns::resolv::NODE_RESOLV_CONF)]
    upstream_resolv_conf: PathBuf,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    datapath::datapath::snat::parse_range(s).map_err(|e| e.to_string())
}

impl AgentArgs {
    fn into_config(self, socket: PathBuf) -> Result<AgentConfig> {
        Ok(AgentConfig {
            socket,
            state_dir: self.node.state_dir,
            bpffs: self.node.bpffs,
            default_network: !self.no_default_network,
            default_subnet: ipam::parse_subnet(&self.default_subnet)?,
            cleanup_on_exit: self.cleanup_on_exit,
            attach_mode: self.tc_attach.into(),
            default_datapath: self.default_datapath.into(),
            nat_ports: self.nat_port_range,
            ct: datapath_common::CtConfig {
                tcp_syn: self.ct_tcp_syn,
                tcp_established: self.ct_tcp_established,
                tcp_closing: self.ct_tcp_closing,
                udp: self.ct_udp,
                icmp: self.ct_icmp,
                _reserved: [0; 3],
            },
            ct_gc_interval: self.ct_gc_interval,
            ct_max_entries: self.ct_max_entries,
            docker_plugin: match self.docker_plugin {
                Some(name) => {
                    datapath::state::validate_name("plugin", &name).map_err(anyhow::Error::msg)?;
                    Some(datapath::docker::socket_path(&self.docker_plugin_dir, &name))
                }
                None => None,
            },
            upstream_resolv_conf: self.upstream_resolv_conf,
        })
    }
}

/// Runs the agent in the foreground until it is stopped.
pub async fn run(socket: PathBuf, args: AgentArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the agent needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)");
    }
    agent::run(args.into_config(socket)?).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use datapath::datapath::AttachMode;
    use datapath::state::DatapathKind;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn config(args: &[&str]) -> AgentConfig {
        let w = Wrap::try_parse_from(std::iter::once("agent").chain(args.iter().copied())).expect("valid options");
        w.args.into_config("/run/x.sock".into()).expect("a config")
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/datapath"));
        assert!(c.default_network && !c.cleanup_on_exit);
        assert_eq!(c.default_subnet.to_string(), DEFAULT_SUBNET);
        assert_eq!((c.attach_mode, c.default_datapath), (AttachMode::Auto, DatapathKind::Ebpf));
        assert_eq!(c.nat_ports, None);
        assert_eq!(c.ct.tcp_established, datapath_common::CT_DEFAULT_TCP_ESTABLISHED);
        assert_eq!(c.ct_gc_interval, 10);
    }

    #[test]
    fn options() {
        let c = config(&[
            "--tc-attach",
            "clsact",
            "--default-datapath",
            "kernel",
            "--nat-port-range",
            "2000-2999",
            "--ct-udp",
            "5",
            "--no-default-network",
        ]);
        assert_eq!((c.attach_mode, c.default_datapath), (AttachMode::Clsact, DatapathKind::Kernel));
        assert_eq!(c.nat_ports, Some((2000, 2999)));
        assert_eq!(c.ct.udp, 5);
        assert!(!c.default_network);
        assert_eq!(c.docker_plugin, None);
        assert_eq!(config(&["--docker-plugin"]).docker_plugin, Some("/run/docker/plugins/datapath.sock".into()));
        let c = config(&["--docker-plugin", "dp2", "--docker-plugin-dir", "/tmp/p"]);
        assert_eq!(c.docker_plugin, Some("/tmp/p/dp2.sock".into()));
    }
}
