//! `datapath endpoint create|ls|inspect|rm`.

use anyhow::Result;
use clap::Subcommand;
use datapath::api::{Client, EndpointCreate, EndpointView, Request};
use datapath::ipam;

use super::output::{self, left, right, Column, Output, Table};

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Create an endpoint: netns NAME, veth with eth0 inside, address, route, TC program.
    Create {
        name: String,
        /// Its network (default: bridge); repeatable: the first is the
        /// default route's, it is connected to the others in order (eth1, ...).
        #[arg(long)]
        network: Vec<String>,
        /// Its address on its first network.
        #[arg(long)]
        ip: Option<String>,
        /// IPv6 address on a dual-stack network (default: the lowest free one).
        #[arg(long)]
        ip6: Option<String>,
        /// Trace this endpoint's packets from the start.
        #[arg(long)]
        trace: bool,
        /// Publish a port: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]
        /// (ranges: 8000-8010:8000-8010); repeatable.
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
        /// Another name on its first network for the embedded DNS
        /// (Docker's --network-alias); repeatable.
        #[arg(long = "alias", alias = "network-alias")]
        aliases: Vec<String>,
        /// A DNS server the embedded DNS forwards to instead of the node's
        /// (queried from the endpoint's namespace); repeatable, at most 3.
        #[arg(long = "dns")]
        dns: Vec<String>,
    },
    /// List endpoints.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one endpoint (JSON).
    Inspect {
        name: String,
        // Accepted like `network inspect -o`, but the output is always JSON.
        #[arg(short, long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Remove an endpoint and its namespace.
    #[command(alias = "remove")]
    Rm { name: String },
}

pub async fn run(client: &Client, cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Create { name, network, ip, ip6, trace, publish, aliases, dns } => {
            let ip = ip.as_deref().map(ipam::parse_addr).transpose()?;
            let ip6 = ip6.as_deref().map(ipam::v6::parse_addr).transpose()?;
            let publish = datapath::ports::parse_all(&publish)?;
            let dns = dns.iter().map(|d| ipam::parse_addr(d)).collect::<Result<_, _>>()?;
            let mut networks = network.into_iter();
            let req = EndpointCreate {
                name,
                network: networks.next(),
                more_networks: networks.collect(),
                ip,
                ip6,
                trace,
                publish,
                aliases,
                dns,
                ..Default::default()
            };
            let e: EndpointView = client.call_as(Request::EndpointCreate(req)).await?;
            match e.ip6 {
                Some(ip6) => println!("{} {} {ip6}", e.name, e.ip),
                None => println!("{} {}", e.name, e.ip),
            }
            Ok(())
        }
        EndpointCmd::Ls { output } => {
            let eps: Vec<EndpointView> = client.call_as(Request::EndpointList).await?;
            output::print(output, &eps[..], list_table)
        }
        EndpointCmd::Inspect { name, output: _ } => {
            let e: EndpointView = client.call_as(Request::EndpointInspect { name }).await?;
            output::print_json(&e)
        }
        EndpointCmd::Rm { name } => {
            client.call(Request::EndpointRemove { name: name.clone() }).await?;
            println!("{name}");
            Ok(())
        }
    }
}

const LIST_COLUMNS: &[Column] = &[
    left("NAME", 18),
    left("NETWORK", 12),
    left("ADDRESS", 18),
    left("MAC", 17),
    left("HOST-IF", 12),
    right("IFINDEX", 7),
    left("CONTAINER", 12),
    left("OWNER", 6),
    left("PORTS", 0),
];

fn list_table(eps: &[EndpointView]) -> String {
    let mut t = Table::new(LIST_COLUMNS);
    for e in eps {
        let mut address = format!("{}/{}", e.ip, e.prefix_len);
        if let (Some(ip6), Some(len)) = (e.ip6, e.prefix_len6) {
            address += &format!(",{ip6}/{len}");
        }
        // A runtime's container (CNI): its id, shortened like `podman ps`.
        let container = match (&e.cni, &e.container_id) {
            (Some(_), Some(id)) => id.chars().take(12).collect(),
            _ => "-".to_string(),
        };
        // Who made it when not a user of the API: Docker's driver, a CNI runtime.
        let owner = e.owner.as_deref().unwrap_or(if e.cni.is_some() { "cni" } else { "-" });
        let ports = datapath::ports::format(&e.ports);
        t.row([&e.name, &e.network, &address, &e.mac, &e.host_ifname, &e.host_ifindex, &container, &owner, &ports]);
        // Its other networks, one line each under it.
        for a in &e.attachments {
            let address = format!("{}/{}", a.ip, a.prefix_len);
            let name = format!("  {}", a.ifname);
            t.row([&name, &a.network, &address, &a.mac, &a.host_ifname, &a.host_ifindex, &"", &"", &""]);
        }
    }
    t.render()
}
