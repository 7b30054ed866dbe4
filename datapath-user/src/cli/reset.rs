//! `datapath reset`: remove everything this datapath made on the node (the
//! agent must be stopped; works without a readable state file).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::api::{Client, Request};
use datapath::host::netns;
use datapath::reset::{self, ResetPaths};

#[derive(Args)]
pub struct ResetArgs {
    /// The agent's state directory.
    #[arg(long, default_value = "/var/lib/datapath")]
    state_dir: PathBuf,
    /// The agent's bpffs directory.
    #[arg(long, default_value = "/sys/fs/bpf/datapath")]
    bpffs: PathBuf,
    /// The node namespace the agent ran in (/run/netns/NAME).
    #[arg(long)]
    netns: Option<String>,
}

impl ResetArgs {
    /// Enters the node namespace; call it while the process is single-threaded.
    pub fn enter_node_namespace(&self) -> Result<()> {
        if let Some(ns) = &self.netns {
            netns::enter_process(&netns::named_path(ns)).with_context(|| format!("entering node namespace {ns}"))?;
        }
        Ok(())
    }
}

pub async fn run(socket: PathBuf, args: ResetArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("reset needs root");
    }
    if Client::new(&socket).call(Request::Ping).await.is_ok() {
        bail!("an agent is running at {}: stop it first (reset removes what it manages)", socket.display());
    }
    let paths = ResetPaths { state_dir: args.state_dir, bpffs: args.bpffs, socket };
    let r = reset::reset(&paths).await;
    println!("removed links: {}", if r.links.is_empty() { "-".into() } else { r.links.join(" ") });
    println!("removed namespaces: {}", if r.namespaces.is_empty() { "-".into() } else { r.namespaces.join(" ") });
    println!("removed pins under {}: {}", paths.bpffs.display(), if r.pins { "yes" } else { "no" });
    println!("removed nftables tables: {}", if r.nft_tables { "yes" } else { "no" });
    if let Some(v) = &r.forwarding_restored {
        println!("restored net.ipv4.ip_forward to {v}");
    }
    for p in &r.problems {
        eprintln!("warning: {p}");
    }
    Ok(())
}
