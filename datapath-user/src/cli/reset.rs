//! `datapath reset`: remove everything this datapath made on the node (the
//! agent must be stopped; works without a readable state file).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use datapath::api::{Client, Request};
use datapath::reset::{self, ResetPaths};

use super::agent::NodeArgs;

#[derive(Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub node: NodeArgs,
}

pub async fn run(socket: PathBuf, args: ResetArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("reset needs root");
    }
    if Client::new(&socket).call(Request::Ping).await.is_ok() {
        bail!("an agent is running at {}: stop it first (reset removes what it manages)", socket.display());
    }
    let paths = ResetPaths { state_dir: args.node.state_dir, bpffs: args.node.bpffs, socket };
    let r = reset::reset(&paths).await;
    println!("removed links: {}", if r.links.is_empty() { "-".into() } else { r.links.join(" ") });
    println!("removed namespaces: {}", if r.namespaces.is_empty() { "-".into() } else { r.namespaces.join(" ") });
    println!("removed pins under {}: {}", paths.bpffs.display(), if r.pins { "yes" } else { "no" });
    println!("removed nftables tables: {}", if r.nft_tables { "yes" } else { "no" });
    if let Some(v) = &r.forwarding_restored {
        println!("restored net.ipv4.ip_forward to {v}");
    }
    if let Some(v) = &r.forwarding6_restored {
        println!("restored net.ipv6.conf.all.forwarding to {v}");
    }
    for p in &r.problems {
        eprintln!("warning: {p}");
    }
    Ok(())
}
