//! `datapath`: the agent and its command-line client.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use datapath::agent::{self, AgentConfig, DEFAULT_SUBNET};
use datapath::api::{
    self, Client, ContainerCreate, ContainerView, EndpointCreate, EndpointView, FlowView, NetworkCreate, NetworkView,
    Request, StatsView,
};
use datapath::datapath::AttachMode;
use datapath::host::netns;
use datapath::ipam;
use datapath::state::DatapathKind;

mod walkthrough;

#[derive(Parser)]
#[command(
    name = "datapath",
    version,
    about = "eBPF container networking: Docker-style networks and endpoints forwarded in-kernel"
)]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "DATAPATH_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (owns the eBPF programs, maps and topology).
    Agent(AgentArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage endpoints (a network namespace plugged into a network).
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Per-reason packet counters of the eBPF datapath.
    Stats {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Stream the eBPF packet traces (tracing is on while this runs).
    Trace {
        /// Only this endpoint's packets (default: all endpoints).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Run a command the way `docker run --network=...` would (no images: the host's filesystem).
    Run(RunArgs),
    /// The eBPF connection tracker (masqueraded flows).
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// List the commands started with `run`.
    Ps {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// End a command started with `run` and remove its endpoint.
    Stop { name: String },
    /// The classic Docker bridge-networking walkthrough on the eBPF datapath.
    Walkthrough(walkthrough::WalkthroughArgs),
}

#[derive(Args)]
struct RunArgs {
    /// bridge (default), a network name, host, none or container:NAME.
    #[arg(long, alias = "net", default_value = "bridge")]
    network: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    /// Remove the endpoint when the command exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background (the agent starts it); prints the name.
    #[arg(short, long)]
    detach: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct AgentArgs {
    /// Directory for the persisted desired state.
    #[arg(long, default_value = "/var/lib/datapath")]
    state_dir: PathBuf,
    /// bpffs directory for this agent's pinned objects.
    #[arg(long, default_value = "/sys/fs/bpf/datapath")]
    bpffs: PathBuf,
    /// Run inside this named network namespace (/run/netns/NAME), the "node".
    #[arg(long)]
    netns: Option<String>,
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
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    tc_attach: AttachMode,
    /// Datapath of networks created without --datapath, the default network included.
    #[arg(long, value_enum, default_value_t = DatapathKind::Ebpf)]
    default_datapath: DatapathKind,
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
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    datapath::datapath::snat::parse_range(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Create a network (a bridge with the gateway address, eBPF on its ports).
    Create {
        name: String,
        #[arg(long)]
        subnet: String,
        #[arg(long)]
        gateway: Option<String>,
        /// Which datapath forwards this network (default: the agent's, normally ebpf).
        #[arg(long, value_enum)]
        datapath: Option<DatapathKind>,
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
}

#[derive(Subcommand)]
enum ConntrackCmd {
    /// List tracked flows.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Empty the table.
    Flush,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Create an endpoint: netns NAME, veth with eth0 inside, address, route, TC program.
    Create {
        name: String,
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        /// Trace this endpoint's packets from the start.
        #[arg(long)]
        trace: bool,
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
        #[arg(short, long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Remove an endpoint and its namespace.
    #[command(alias = "remove")]
    Rm { name: String },
}

fn main() {
    let cli = Cli::parse();
    let is_agent = matches!(cli.command, Command::Agent(_) | Command::Walkthrough(_));
    let filter = tracing_subscriber::EnvFilter::try_from_env("DATAPATH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if is_agent { "info" } else { "warn" }));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    // Entering the node namespace must happen while the process is still
    // single-threaded, i.e. before the runtime starts.
    if let Command::Agent(a) = &cli.command {
        if let Some(ns) = &a.netns {
            netns::enter_process(&netns::named_path(ns)).with_context(|| format!("entering node namespace {ns}"))?;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Agent(a) => {
            if !nix::unistd::geteuid().is_root() {
                anyhow::bail!("the agent needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)");
            }
            let cfg = AgentConfig {
                socket: cli.socket,
                state_dir: a.state_dir,
                bpffs: a.bpffs,
                default_network: !a.no_default_network,
                default_subnet: ipam::parse_subnet(&a.default_subnet)?,
                cleanup_on_exit: a.cleanup_on_exit,
                attach_mode: a.tc_attach,
                default_datapath: a.default_datapath,
                nat_ports: a.nat_port_range,
                ct: datapath_common::CtConfig {
                    tcp_syn: a.ct_tcp_syn,
                    tcp_established: a.ct_tcp_established,
                    tcp_closing: a.ct_tcp_closing,
                    udp: a.ct_udp,
                    icmp: a.ct_icmp,
                    _reserved: [0; 3],
                },
                ct_gc_interval: a.ct_gc_interval,
            };
            agent::run(cfg).await
        }
        Command::Network(cmd) => network(&client, cmd).await,
        Command::Endpoint(cmd) => endpoint(&client, cmd).await,
        Command::Stats { output } => {
            let stats: StatsView = client.call_as(Request::Stats).await?;
            if output == Output::Json {
                return print_json(&stats);
            }
            println!("{:<24} {:>6} {:>12} {:>14}", "REASON", "KIND", "PACKETS", "BYTES");
            for c in stats.counters {
                let kind = if c.event {
                    "event"
                } else if c.drop {
                    "drop"
                } else {
                    "fwd"
                };
                println!("{:<24} {:>6} {:>12} {:>14}", c.reason, kind, c.packets, c.bytes);
            }
            if let Some(ct) = stats.conntrack {
                let pct = if ct.capacity > 0 { ct.live as f64 * 100.0 / f64::from(ct.capacity) } else { 0.0 };
                println!(
                    "conntrack: {} of {} entries in use ({pct:.1}%), last GC removed {}",
                    ct.live, ct.capacity, ct.removed
                );
            }
            Ok(())
        }
        Command::Trace { endpoint } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            client
                .trace(endpoint, |rec| writeln!(out, "{} {}", rec.endpoint, rec.line).and_then(|_| out.flush()).is_ok())
                .await?;
            Ok(())
        }
        Command::Walkthrough(args) => walkthrough::run(args).await,
        Command::Run(args) => {
            let code = run(&client, args).await?;
            std::process::exit(code);
        }
        Command::Conntrack(ConntrackCmd::Flush) => {
            let v = client.call(Request::ConntrackFlush).await?;
            println!("removed {} entries", v["removed"]);
            Ok(())
        }
        Command::Conntrack(ConntrackCmd::Ls { output, endpoint }) => {
            let flows: Vec<FlowView> = client.call_as(Request::ConntrackList { endpoint }).await?;
            if output == Output::Json {
                return print_json(&flows);
            }
            println!(
                "{:<12} {:<5} {:<43} {:<22} {:<12} {:>8} {:>10} {:>7}",
                "ENDPOINT", "PROTO", "ORIGINAL", "TRANSLATED", "STATE", "PACKETS", "BYTES", "EXPIRES"
            );
            for f in flows {
                let o = &f.flow.original;
                let tr =
                    f.flow.translated.as_ref().map(|t| format!("{}:{}", t.src, t.sport)).unwrap_or_else(|| "-".into());
                println!(
                    "{:<12} {:<5} {:<43} {:<22} {:<12} {:>8} {:>10} {:>6}s",
                    f.endpoint.as_deref().unwrap_or("?"),
                    f.flow.protocol,
                    format!("{}:{} > {}:{}", o.src, o.sport, o.dst, o.dport),
                    tr,
                    f.flow.state,
                    f.flow.packets,
                    f.flow.bytes,
                    f.flow.remaining_s
                );
            }
            Ok(())
        }
        Command::Ps { output } => {
            let cs: Vec<ContainerView> = client.call_as(Request::ContainerList).await?;
            if output == Output::Json {
                return print_json(&cs);
            }
            println!("{:<16} {:<18} {:<15} {:>7} {:<12} COMMAND", "NAME", "NETWORK", "IP", "PID", "STATUS");
            for c in cs {
                println!(
                    "{:<16} {:<18} {:<15} {:>7} {:<12} {}",
                    c.name,
                    c.network,
                    c.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    c.status,
                    c.argv.join(" ")
                );
            }
            Ok(())
        }
        Command::Stop { name } => {
            client.call(Request::ContainerStop { name: name.clone() }).await?;
            println!("{name}");
            Ok(())
        }
    }
}

/// `datapath run`: the agent makes the endpoint (or starts the command
/// itself with -d); in the foreground the command runs here, attached to the
/// terminal, inside the endpoint's namespace. Returns the command's exit code.
async fn run(client: &Client, args: RunArgs) -> Result<i32> {
    let ip = args.ip.as_deref().map(ipam::parse_addr).transpose()?;
    let cwd = std::env::current_dir().ok();
    let req = ContainerCreate {
        name: args.name,
        network: Some(args.network),
        ip,
        argv: args.command.clone(),
        detach: args.detach,
        rm: args.rm,
        cwd,
    };
    let c: ContainerView = client.call_as(Request::ContainerCreate(req)).await?;
    if args.detach {
        println!("{}", c.name);
        return Ok(0);
    }
    let argv = args.command;
    let spawned = netns::run_in(&c.netns_path, move || std::process::Command::new(&argv[0]).args(&argv[1..]).spawn());
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

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn network(client: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create { name, subnet, gateway, datapath, internal, icc, no_masquerade, uplink, mtu } => {
            let req = NetworkCreate {
                name,
                subnet,
                gateway,
                datapath,
                internal,
                icc,
                masquerade: no_masquerade.then_some(false),
                uplink,
                mtu,
            };
            let n: NetworkView = client.call_as(Request::NetworkCreate(req)).await?;
            println!("{}", n.id);
        }
        NetworkCmd::Ls { output } => {
            let nets: Vec<NetworkView> = client.call_as(Request::NetworkList).await?;
            if output == Output::Json {
                return print_json(&nets);
            }
            println!(
                "{:<18} {:<16} {:<18} {:<15} {:<12} {:<8} {:>9}",
                "NAME", "ID", "SUBNET", "GATEWAY", "BRIDGE", "DATAPATH", "ENDPOINTS"
            );
            for n in nets {
                println!(
                    "{:<18} {:<16} {:<18} {:<15} {:<12} {:<8} {:>9}",
                    n.name,
                    n.id,
                    n.subnet,
                    n.gateway.to_string(),
                    n.bridge,
                    n.datapath,
                    n.endpoints.len()
                );
            }
        }
        NetworkCmd::Inspect { name, output } => {
            let n: NetworkView = client.call_as(Request::NetworkInspect { name }).await?;
            match output {
                Output::Json => print_json(&n)?,
                Output::Table => {
                    println!("{} {} {} gw {} bridge {} ({})", n.name, n.id, n.subnet, n.gateway, n.bridge, n.datapath);
                    for e in n.endpoints {
                        println!("  {:<18} {:<15} {}", e.name, e.ip.to_string(), e.mac);
                    }
                }
            }
        }
        NetworkCmd::Rm { name } => {
            client.call(Request::NetworkRemove { name: name.clone() }).await?;
            println!("{name}");
        }
    }
    Ok(())
}

async fn endpoint(client: &Client, cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Create { name, network, ip, trace } => {
            let ip = ip.as_deref().map(ipam::parse_addr).transpose()?;
            let req = EndpointCreate { name, network, ip, trace, ..Default::default() };
            let e: EndpointView = client.call_as(Request::EndpointCreate(req)).await?;
            println!("{} {}", e.name, e.ip);
        }
        EndpointCmd::Ls { output } => {
            let eps: Vec<EndpointView> = client.call_as(Request::EndpointList).await?;
            if output == Output::Json {
                return print_json(&eps);
            }
            println!(
                "{:<18} {:<12} {:<18} {:<17} {:<12} {:>7}",
                "NAME", "NETWORK", "ADDRESS", "MAC", "HOST-IF", "IFINDEX"
            );
            for e in eps {
                println!(
                    "{:<18} {:<12} {:<18} {:<17} {:<12} {:>7}",
                    e.name,
                    e.network,
                    format!("{}/{}", e.ip, e.prefix_len),
                    e.mac,
                    e.host_ifname,
                    e.host_ifindex
                );
            }
        }
        EndpointCmd::Inspect { name, output: _ } => {
            let e: EndpointView = client.call_as(Request::EndpointInspect { name }).await?;
            print_json(&e)?;
        }
        EndpointCmd::Rm { name } => {
            client.call(Request::EndpointRemove { name: name.clone() }).await?;
            println!("{name}");
        }
    }
    Ok(())
}
