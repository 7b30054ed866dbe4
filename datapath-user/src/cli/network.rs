//! `datapath network create|ls|inspect|rm|connect|disconnect`.

use anyhow::Result;
use clap::Subcommand;
use datapath::api::{Client, EndpointView, NetworkConnect, NetworkCreate, NetworkView, Request};
use datapath::ipam;

use super::output::{self, left, right, Column, Output, Table};
use super::Datapath;

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network (a bridge with the gateway address, eBPF on its ports).
    Create {
        name: String,
        #[arg(long)]
        subnet: String,
        #[arg(long)]
        gateway: Option<String>,
        /// Which datapath forwards this network (default: the agent's, normally ebpf).
        #[arg(long, value_enum)]
        datapath: Option<Datapath>,
        /// No masquerade and no route beyond the network.
        #[arg(long)]
        internal: bool,
        /// Inter-container communication (`--icc=false` isolates endpoints from each other).
        #[arg(long, value_name = "BOOL", num_args = 1, require_equals = true)]
        icc: Option<bool>,
        /// Do not source-NAT traffic leaving the node.
        #[arg(long)]
        no_masquerade: bool,
        /// Interface to masquerade through (default: the default route's device).
        #[arg(long)]
        uplink: Option<String>,
        /// MTU of the bridge and every veth of the network.
        #[arg(long)]
        mtu: Option<u32>,
        /// Dual stack: IPv6 too (a random unique-local /64 without --subnet-v6).
        #[arg(long)]
        ipv6: bool,
        /// IPv6 subnet of a dual-stack network (e.g. fd00:1:2:3::/64).
        #[arg(long, value_name = "PREFIX")]
        subnet_v6: Option<String>,
        /// IPv6 gateway (default: the subnet's ::1).
        #[arg(long, value_name = "ADDR")]
        gateway_v6: Option<String>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one network (JSON).
    Inspect {
        name: String,
        #[arg(short, long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Remove a network that has no endpoints.
    #[command(alias = "remove")]
    Rm { name: String },
    /// Put an endpoint on one more network: eth1, eth2, ... in its namespace,
    /// its address and the subnet's route there (the default route stays on
    /// its first network).
    Connect {
        network: String,
        endpoint: String,
        /// Its address on this network (default: the lowest free one).
        #[arg(long)]
        ip: Option<String>,
        /// Its IPv6 address on a dual-stack network (default: the lowest free one).
        #[arg(long)]
        ip6: Option<String>,
        /// More names it answers to on this network; repeatable.
        #[arg(long)]
        alias: Vec<String>,
    },
    /// Take an endpoint off a network it was connected to (not its first).
    Disconnect { network: String, endpoint: String },
}

pub async fn run(client: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            subnet,
            gateway,
            datapath,
            internal,
            icc,
            no_masquerade,
            uplink,
            mtu,
            ipv6,
            subnet_v6,
            gateway_v6,
        } => {
            let req = NetworkCreate {
                name,
                subnet,
                gateway,
                datapath: datapath.map(Into::into),
                internal,
                icc,
                masquerade: no_masquerade.then_some(false),
                uplink,
                mtu,
                owner: None,
                ipv6,
                subnet_v6,
                gateway_v6,
            };
            let n: NetworkView = client.call_as(Request::NetworkCreate(req)).await?;
            println!("{}", n.id);
            Ok(())
        }
        NetworkCmd::Ls { output } => {
            let nets: Vec<NetworkView> = client.call_as(Request::NetworkList).await?;
            output::print(output, &nets[..], list_table)
        }
        NetworkCmd::Inspect { name, output } => {
            let n: NetworkView = client.call_as(Request::NetworkInspect { name }).await?;
            output::print(output, &n, inspect_table)
        }
        NetworkCmd::Rm { name } => {
            client.call(Request::NetworkRemove { name: name.clone() }).await?;
            println!("{name}");
            Ok(())
        }
        NetworkCmd::Connect { network, endpoint, ip, ip6, alias } => {
            let ip = ip.as_deref().map(ipam::parse_addr).transpose()?;
            let ip6 = ip6.as_deref().map(ipam::v6::parse_addr).transpose()?;
            let req = NetworkConnect { network: network.clone(), endpoint, ip, ip6, aliases: alias };
            let e: EndpointView = client.call_as(Request::NetworkConnect(req)).await?;
            match e.attachments.iter().find(|a| a.network == network) {
                Some(a) if a.ip6.is_some() => {
                    println!("{} {} {} {}", e.name, a.ifname, a.ip, a.ip6.map(|i| i.to_string()).unwrap_or_default())
                }
                Some(a) => println!("{} {} {}", e.name, a.ifname, a.ip),
                None => println!("{}", e.name),
            }
            Ok(())
        }
        NetworkCmd::Disconnect { network, endpoint } => {
            client.call(Request::NetworkDisconnect { network, endpoint: endpoint.clone() }).await?;
            println!("{endpoint}");
            Ok(())
        }
    }
}

const LIST_COLUMNS: &[Column] = &[
    left("NAME", 18),
    left("ID", 16),
    left("SUBNET", 18),
    left("GATEWAY", 15),
    left("BRIDGE", 12),
    left("DATAPATH", 8),
    right("ENDPOINTS", 9),
    left("SUBNET-V6", 22),
    left("OWNER", 0),
];

fn list_table(nets: &[NetworkView]) -> String {
    let mut t = Table::new(LIST_COLUMNS);
    for n in nets {
        let owner = n.owner.as_deref().unwrap_or("-");
        let v6 = n.subnet_v6.as_deref().unwrap_or("-");
        t.row([&n.name, &n.id, &n.subnet, &n.gateway, &n.bridge, &n.datapath, &n.endpoints.len(), &v6, &owner]);
    }
    t.render()
}

/// `network inspect -o table`: a summary line, then one line per endpoint.
fn inspect_table(n: &NetworkView) -> String {
    const ENDPOINT_COLUMNS: &[Column] = &[left("NAME", 18), left("IP", 15), left("MAC", 17), left("IPV6", 0)];
    let mut t = Table::without_header(ENDPOINT_COLUMNS, "  ");
    for e in &n.endpoints {
        let ip6 = e.ip6.map(|a| a.to_string()).unwrap_or_default();
        t.row([&e.name, &e.ip, &e.mac, &ip6]);
    }
    let v6 = match (&n.subnet_v6, n.gateway_v6) {
        (Some(s), Some(g)) => format!(" {s} gw {g}"),
        _ => String::new(),
    };
    format!(
        "{} {} {} gw {}{v6} bridge {} ({})\n{}",
        n.name,
        n.id,
        n.subnet,
        n.gateway,
        n.bridge,
        n.datapath,
        t.render()
    )
}
