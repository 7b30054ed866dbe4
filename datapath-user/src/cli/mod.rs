//! The command line: the `Cli`/`Command` definitions and the dispatch to one
//! module per command group. Every command but `agent` and `walkthrough` is a
//! client of the agent's API; output formatting lives in [`output`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use datapath::api::{self, Client};
use datapath::datapath::AttachMode;
use datapath::state::DatapathKind;

use crate::walkthrough;

mod agent;
mod conntrack;
mod endpoint;
mod network;
mod output;
mod reset;
mod run;
mod stats;

use output::Output;

#[derive(Parser)]
#[command(
    name = "datapath",
    version,
    about = "eBPF container networking: Docker-style networks and endpoints forwarded in-kernel"
)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "DATAPATH_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (owns the eBPF programs, maps and topology).
    Agent(agent::AgentArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage endpoints (a network namespace plugged into a network).
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCmd),
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
    Run(run::RunArgs),
    /// The eBPF connection tracker (masqueraded flows).
    #[command(subcommand)]
    Conntrack(conntrack::ConntrackCmd),
    /// List the commands started with `run`.
    Ps {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// End a command started with `run` and remove its endpoint.
    Stop { name: String },
    /// The ports an endpoint or command publishes (like `docker port`).
    Port {
        name: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The classic Docker bridge-networking walkthrough on the eBPF datapath.
    Walkthrough(walkthrough::WalkthroughArgs),
    /// Remove everything this datapath made on the node (stop the agent first;
    /// works without a readable state file).
    Reset(reset::ResetArgs),
}

/// A client whose output pipe closes (`datapath endpoint ls | head`) ends
/// the way Unix tools do, by SIGPIPE, instead of a panic on the next print
/// (Rust ignores SIGPIPE by default). The agent keeps ignoring it: a client
/// that goes away must not kill it.
fn exit_quietly_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restores the default disposition, before any thread starts.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!("SIGPIPE default disposition: {e}");
    }
}

impl Cli {
    /// The log filter when `DATAPATH_LOG` is not set: the long-running
    /// commands log at info, the clients only warn.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Agent(_) | Command::Walkthrough(_) => "info",
            _ => "warn",
        }
    }

    /// What must happen while the process is still single-threaded, i.e.
    /// before the runtime starts: the agent enters its node namespace.
    pub fn before_runtime(&self) -> Result<()> {
        match &self.command {
            Command::Agent(args) => args.node.enter_node_namespace(),
            Command::Reset(args) => args.node.enter_node_namespace(),
            Command::Walkthrough(_) => Ok(()),
            _ => {
                exit_quietly_on_closed_pipe();
                Ok(())
            }
        }
    }

    pub async fn run(self) -> Result<()> {
        let client = Client::new(&self.socket);
        match self.command {
            Command::Agent(args) => agent::run(self.socket, args).await,
            Command::Network(cmd) => network::run(&client, cmd).await,
            Command::Endpoint(cmd) => endpoint::run(&client, cmd).await,
            Command::Stats { output } => stats::stats(&client, output).await,
            Command::Trace { endpoint } => stats::trace(&client, endpoint).await,
            Command::Walkthrough(args) => walkthrough::run(args).await,
            Command::Run(args) => {
                let code = run::run(&client, args).await?;
                std::process::exit(code);
            }
            Command::Conntrack(cmd) => conntrack::run(&client, cmd).await,
            Command::Ps { output } => run::ps(&client, output).await,
            Command::Stop { name } => run::stop(&client, name).await,
            Command::Port { name, output } => run::port(&client, name, output).await,
            Command::Reset(args) => reset::run(self.socket, args).await,
        }
    }
}

/// `--datapath`, `--default-datapath`: [`DatapathKind`] for clap (the
/// persisted model does not depend on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Datapath {
    /// TC programs on the host veths: in-kernel redirect, eBPF SNAT.
    Ebpf,
    /// The classic Docker setup: Linux bridge + netfilter (the baseline).
    Kernel,
}

impl From<Datapath> for DatapathKind {
    fn from(d: Datapath) -> Self {
        match d {
            Datapath::Ebpf => DatapathKind::Ebpf,
            Datapath::Kernel => DatapathKind::Kernel,
        }
    }
}

/// `--tc-attach`: [`AttachMode`] for clap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcAttach {
    /// TCX links where the kernel has them (>= 6.6), clsact otherwise.
    Auto,
    /// TCX links (bpf_link, kernel >= 6.6).
    Tcx,
    /// A clsact qdisc with a direct-action filter (shown by older
    /// `bpftool net`, works on any kernel).
    Clsact,
}

impl From<TcAttach> for AttachMode {
    fn from(m: TcAttach) -> Self {
        match m {
            TcAttach::Auto => AttachMode::Auto,
            TcAttach::Tcx => AttachMode::Tcx,
            TcAttach::Clsact => AttachMode::Clsact,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn value_enums_convert_to_the_model() {
        for (arg, kind) in [("ebpf", DatapathKind::Ebpf), ("kernel", DatapathKind::Kernel)] {
            let d = Datapath::from_str(arg, false).expect("a datapath name");
            assert_eq!(DatapathKind::from(d), kind);
            // The command line and the persisted model spell it the same way.
            assert_eq!(kind.to_string(), arg);
        }
        for (arg, mode) in [("auto", AttachMode::Auto), ("tcx", AttachMode::Tcx), ("clsact", AttachMode::Clsact)] {
            assert_eq!(AttachMode::from(TcAttach::from_str(arg, false).expect("an attach mode")), mode);
        }
    }

    #[test]
    fn parses_the_documented_commands() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("datapath").chain(args.iter().copied()));
        assert!(parse(&[
            "network",
            "create",
            "web",
            "--subnet",
            "10.20.0.0/24",
            "--datapath",
            "kernel",
            "--icc=false"
        ])
        .is_ok());
        assert!(parse(&["agent", "--tc-attach", "clsact", "--default-datapath", "kernel"]).is_ok());
        assert!(parse(&["agent", "--tc-attach", "bogus"]).is_err());
        assert!(parse(&["run", "--net", "none", "--rm", "--", "true"]).is_ok());
        assert!(parse(&["conntrack", "ls", "-o", "json", "--endpoint", "a1"]).is_ok());
    }
}
