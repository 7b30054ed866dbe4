//! `datapath reset`: removes everything this datapath made on a node, also
//! when the state file is lost or unreadable and the agent is dead: the
//! endpoints' veths and namespaces (from the state when it can be read, and
//! from the journal of namespaces the agent made), the networks' bridges
//! and our host veths (by their names: `datapath0`, `dpbr-*`, `dp` + 8 hex
//! digits), the reverse-NAT filter on uplinks, every pin (maps and TCX
//! links: unpinning detaches), the nftables tables, the node's IPv4
//! forwarding value, and the state itself.

use std::path::{Path, PathBuf};

use crate::agent::DEFAULT_BRIDGE;
use crate::datapath::Pins;
use crate::host::netlink::Netlink;
use crate::host::{netfilter, netns, sysctl};
use crate::state::{Journal, State, STATE_FILE};
use datapath_common::PROG_FROM_UPLINK;

/// Where the agent kept its things.
pub struct ResetPaths {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
}

/// What a reset removed, for the user.
#[derive(Debug, Default)]
pub struct ResetReport {
    pub links: Vec<String>,
    pub namespaces: Vec<String>,
    pub pins: bool,
    pub nft_tables: bool,
    pub forwarding_restored: Option<String>,
    pub problems: Vec<String>,
}

/// Whether `name` is one of the links the agent makes in the node namespace.
pub fn is_datapath_link(name: &str) -> bool {
    let hex8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name == DEFAULT_BRIDGE || name.strip_prefix("dpbr-").is_some_and(hex8) || name.strip_prefix("dp").is_some_and(hex8)
}

/// Runs a reset in the current namespace (the node's). The agent must not
/// run (the caller checks).
pub async fn reset(paths: &ResetPaths) -> ResetReport {
    let mut report = ResetReport::default();
    let state = match State::load(&paths.state_dir) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("{e} (going by names and the journal)"));
            None
        }
    };
    let journal = Journal::new(&paths.state_dir);
    let mut namespaces: Vec<PathBuf> = journal.netns().iter().map(|n| netns::named_path(n)).collect();
    if let Some(s) = &state {
        namespaces.extend(s.endpoints.values().filter(|e| e.owns_netns).map(|e| e.netns_path.clone()));
    }
    namespaces.sort();
    namespaces.dedup();
    remove_links(&mut report).await;
    for path in namespaces.iter().filter(|p| p.exists()) {
        if let Some(name) = path.strip_prefix(netns::NETNS_RUN_DIR).ok().and_then(|n| n.to_str()) {
            crate::dns::resolv::remove(name);
        }
        match netns::delete_path(path) {
            Ok(()) => report.namespaces.push(path.display().to_string()),
            Err(e) => report.problems.push(format!("deleting {}: {e}", path.display())),
        }
    }
    match Pins::new(&paths.bpffs).remove_all() {
        Ok(()) => report.pins = true,
        Err(e) => report.problems.push(format!("removing {}: {e}", paths.bpffs.display())),
    }
    match netfilter::apply(&netfilter::render(&State::new(), |_| None, None), false) {
        Ok(()) => report.nft_tables = true,
        Err(e) => report.problems.push(format!("removing the nftables tables: {e}")),
    }
    let was = journal.forwarding_was().or_else(|| state.as_ref().and_then(|s| s.node.ip_forward_was.clone()));
    if let Some(old) = was {
        match sysctl::restore_forwarding(&old) {
            Ok(()) => report.forwarding_restored = Some(old),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    journal.remove_all();
    remove_file(&paths.state_dir.join(STATE_FILE), &mut report);
    remove_file(&paths.socket, &mut report);
    report
}

/// Our bridges and host veths go (their peers and the endpoint programs go
/// with them); the reverse-NAT filter of clsact mode leaves every uplink.
async fn remove_links(report: &mut ResetReport) {
    let nl = match Netlink::current() {
        Ok(nl) => nl,
        Err(e) => return report.problems.push(e.to_string()),
    };
    let links = match nl.links().await {
        Ok(l) => l,
        Err(e) => return report.problems.push(e.to_string()),
    };
    for (index, name) in links {
        if is_datapath_link(&name) {
            match nl.delete_link(index).await {
                Ok(()) => report.links.push(name),
                Err(e) => report.problems.push(format!("deleting {name}: {e}")),
            }
        } else {
            let _ =
                aya::programs::tc::qdisc_detach_program(&name, aya::programs::TcAttachType::Ingress, PROG_FROM_UPLINK);
        }
    }
}

fn remove_file(path: &Path, report: &mut ResetReport) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            report.problems.push(format!("removing {}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_its_own_link_names() {
        for ours in ["datapath0", "dpbr-0a1b2c3d", "dp0a1b2c3d"] {
            assert!(is_datapath_link(ours), "{ours}");
        }
        for theirs in ["eth0", "uplink0", "dpbr-xyz", "dp0a1b2c3", "dp0a1b2c3d4", "docker0", "dpt12345node"] {
            assert!(!is_datapath_link(theirs), "{theirs}");
        }
    }
}
