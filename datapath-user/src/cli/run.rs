//! `datapath run|ps|stop`: commands run the way `docker run --network=...`
//! would, without images.

use anyhow::Result;
use clap::Args;
use datapath::api::{Client, ContainerCreate, ContainerView, Request};
use datapath::host::netns;
use datapath::ipam;

use super::output::{self, left, right, Column, Output, Table};

#[derive(Args)]
pub struct RunArgs {
    /// bridge (default), a network name, host, none or container:NAME;
    /// repeatable with network names: the first is the default route's,
    /// the endpoint is connected to the others in order (eth1, eth2, ...).
    #[arg(long, alias = "net")]
    network: Vec<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    /// Its IPv6 address on a dual-stack first network (default: the lowest
    /// free one).
    #[arg(long)]
    ip6: Option<String>,
    /// Remove the endpoint when the command exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background (the agent starts it); prints the name.
    #[arg(short, long)]
    detach: bool,
    /// Publish a port of its endpoint:
    /// [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp] (ranges:
    /// 8000-8010:8000-8010); repeatable.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Another name of its endpoint on its first network for the embedded
    /// DNS (Docker's --network-alias); repeatable.
    #[arg(long = "alias", alias = "network-alias")]
    aliases: Vec<String>,
    /// A DNS server its embedded DNS forwards to instead of the node's;
    /// repeatable, at most 3.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// `datapath run`: the agent makes the endpoint (or starts the command
/// itself with -d); in the foreground the command runs here, attached to the
/// terminal, inside the endpoint's namespace. Returns the command's exit code.
pub async fn run(client: &Client, args: RunArgs) -> Result<i32> {
    let ip = args.ip.as_deref().map(ipam::parse_addr).transpose()?;
    let ip6 = args.ip6.as_deref().map(ipam::v6::parse_addr).transpose()?;
    let publish = datapath::ports::parse_all(&args.publish)?;
    let dns = args.dns.iter().map(|d| ipam::parse_addr(d)).collect::<Result<_, _>>()?;
    let cwd = std::env::current_dir().ok();
    let mut networks = args.network.into_iter();
    let req = ContainerCreate {
        name: args.name,
        network: Some(networks.next().unwrap_or_else(|| "bridge".to_string())),
        more_networks: networks.collect(),
        ip,
        ip6,
        argv: args.command.clone(),
        detach: args.detach,
        rm: args.rm,
        cwd,
        publish,
        aliases: args.aliases,
        dns,
    };
    let c: ContainerView = client.call_as(Request::ContainerCreate(req)).await?;
    if args.detach {
        println!("{}", c.name);
        return Ok(0);
    }
    let argv = args.command;
    let path = c.netns_path.clone();
    let spawned = netns::run_in(&c.netns_path, move || {
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        // Its resolver configuration, as `ip netns exec` would give it.
        netns::etc_overrides(&mut cmd, &path);
        cmd.spawn()
    });
    let mut child = match spawned.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)) {
        Ok(child) => child,
        Err(e) => {
            let _ = client.call(Request::ContainerExited { name: c.name.clone(), code: 127 }).await;
            return Err(e.context(format!("running {:?}", c.argv.join(" "))));
        }
    };
    client.call(Request::ContainerStarted { name: c.name.clone(), pid: child.id() }).await?;
    // Ctrl-C goes to the command (same terminal); we wait for it to exit.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let wait = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(wait);
    let status = loop {
        tokio::select! {
            s = &mut wait => break s??,
            _ = sigint.recv() => {}
        }
    };
    let code = datapath::host::process::exit_code(status);
    client.call(Request::ContainerExited { name: c.name.clone(), code }).await?;
    Ok(code)
}

/// `datapath ps`.
pub async fn ps(client: &Client, output: Output) -> Result<()> {
    let cs: Vec<ContainerView> = client.call_as(Request::ContainerList).await?;
    output::print(output, &cs[..], ps_table)
}

/// `datapath port NAME`: like `docker port`, one line per published port
/// (`80/tcp -> 0.0.0.0:8080`).
pub async fn port(client: &Client, name: String, output: Output) -> Result<()> {
    let ports: Vec<datapath::ports::Publish> = client.call_as(Request::Port { name }).await?;
    output::print(output, &ports[..], |ports| {
        ports.iter().map(|p| format!("{}/{} -> {}\n", p.container_port, p.proto, p.host())).collect()
    })
}

/// `datapath stop NAME`.
pub async fn stop(client: &Client, name: String) -> Result<()> {
    client.call(Request::ContainerStop { name: name.clone() }).await?;
    println!("{name}");
    Ok(())
}

const PS_COLUMNS: &[Column] = &[
    left("NAME", 16),
    left("NETWORK", 18),
    left("IP", 15),
    right("PID", 7),
    left("STATUS", 12),
    left("PORTS", 24),
    left("COMMAND", 0),
];

fn ps_table(cs: &[ContainerView]) -> String {
    let mut t = Table::new(PS_COLUMNS);
    for c in cs {
        let ip = c.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let ports = datapath::ports::format(&c.ports);
        t.row([&c.name, &c.network, &ip, &pid, &c.status, &ports, &c.argv.join(" ")]);
        // Its endpoint's other networks, one line each under it.
        for a in &c.attachments {
            t.row([&"", &a.network, &a.ip, &"", &"", &"", &""]);
        }
    }
    t.render()
}
