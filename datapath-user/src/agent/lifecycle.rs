//! The agent's start (load the datapath, restore the persisted state into
//! the kernel, create the default network) and its teardown
//! (`--cleanup-on-exit`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use tokio::sync::broadcast;

use super::networks::UplinkCache;
use super::{blocking, Agent, AgentConfig, Inner, StartReport, DEFAULT_NETWORK, FAILPOINT_ENV};
use crate::api::NetworkCreate;
use crate::datapath::{snat, Bpf, LoadOptions, Pins};
use crate::host::{bpffs, netlink::Netlink};
use crate::reset::is_datapath_link;
use crate::state::{self, DatapathKind, EndpointSpec, NetworkSpec, State};

impl Inner {
    /// Loads the persisted state (refusing to start on an unreadable one,
    /// before anything in the kernel is touched), the datapath (reusing or
    /// migrating what is pinned) and brings the state back into the kernel.
    pub(super) async fn start(cfg: AgentConfig, trace_tx: broadcast::Sender<String>) -> anyhow::Result<Inner> {
        let dir = cfg.state_dir.clone();
        let state = blocking(move || -> anyhow::Result<Option<State>> {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating state dir {}", dir.display()))?;
            State::load(&dir).map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nThe agent does not start on a state it cannot read, and has changed nothing on this node: \
                     the datapath keeps running as it is. Restore the file from a backup, or remove everything \
                     this datapath made with `datapath reset` and start afresh."
                )
            })
        })
        .await??
        .unwrap_or_else(State::new);
        let pins = Pins::new(&cfg.bpffs);
        let root = cfg.bpffs.clone();
        blocking(move || bpffs::ensure(&root)).await??;
        let opts = LoadOptions { mode: cfg.attach_mode, pins: Some(pins), ct_max_entries: Some(cfg.ct_max_entries) };
        let (bpf, report) = tokio::task::block_in_place(|| Bpf::load_with(trace_tx, opts))?;
        tracing::info!("pinned datapath under {}: {}", cfg.bpffs.display(), report.summary());
        let nl = Netlink::current()?;
        let failpoint = std::env::var(FAILPOINT_ENV).ok().filter(|s| !s.is_empty());
        if let Some(f) = &failpoint {
            tracing::warn!("fault injection active: {FAILPOINT_ENV}={f}");
        }
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| snat::parse_ephemeral(&s))
            .unwrap_or((32768, 60999));
        let nat_ports = snat::choose_range(cfg.nat_ports, ephemeral)?;
        tracing::info!(
            "SNAT ports {}-{} (node ephemeral ports {}-{})",
            nat_ports.0,
            nat_ports.1,
            ephemeral.0,
            ephemeral.1
        );
        let mut inner = Inner {
            cfg,
            state,
            nl,
            bpf,
            bridges: BTreeMap::new(),
            host_ifindex: BTreeMap::new(),
            attach_ifindex: BTreeMap::new(),
            trace_refs: HashMap::new(),
            trace_all: 0,
            failpoint,
            nat_ports,
            net_info: BTreeMap::new(),
            net_info6: BTreeMap::new(),
            uplinks: BTreeMap::new(),
            applied_nft: None,
            ports_written: None,
            published6_written: None,
            start: StartReport { pins: report, ..Default::default() },
        };
        let ct = inner.cfg.ct;
        tokio::task::block_in_place(|| inner.bpf.set_ct_config(ct))?;
        inner.restore().await?;
        if inner.cfg.default_network && !inner.state.networks.contains_key(DEFAULT_NETWORK) {
            let subnet = inner.cfg.default_subnet.to_string();
            let req = NetworkCreate {
                name: DEFAULT_NETWORK.into(),
                subnet,
                ipv6: inner.cfg.default_ipv6,
                subnet_v6: inner.cfg.default_subnet_v6.map(|s| s.to_string()),
                ..Default::default()
            };
            inner.network_create(req).await.map_err(|e| anyhow::anyhow!("creating the default network: {e}"))?;
        }
        Ok(inner)
    }

    /// Brings the persisted networks and endpoints back into the kernel:
    /// half-made endpoints (a crash during their create) are rolled back,
    /// attachments kept or replaced in place, map entries of what no longer
    /// exists removed, and a map migration finished.
    async fn restore(&mut self) -> anyhow::Result<()> {
        self.roll_back_half_made().await;
        self.remove_unknown_links().await;
        let networks: Vec<NetworkSpec> = self.state.networks.values().cloned().collect();
        let mut seen = UplinkCache::new();
        for net in &networks {
            let restored = match self.ensure_bridge(net).await {
                Ok(_) => self.sync_datapath_network(net, &mut seen).await,
                Err(e) => Err(e),
            };
            restored.map_err(|e| anyhow::anyhow!("restoring network {}: {e}", net.name))?;
        }
        let endpoints: Vec<EndpointSpec> = self.state.endpoints.values().cloned().collect();
        for ep in &endpoints {
            if let Err(e) = self.restore_endpoint(ep).await {
                tracing::error!(endpoint = %ep.name, "could not restore endpoint: {e}");
            }
        }
        if let Err(e) = self.sync_node().await {
            tracing::error!("restoring node configuration: {e}");
        }
        if let Err(e) = self.sync_uplinks().await {
            tracing::error!("attaching reverse NAT to uplinks: {e}");
        }
        self.start.stale_entries_removed = self.remove_stale_entries();
        self.start.stale_entries_removed += tokio::task::block_in_place(|| self.bpf.prune_link_pins());
        let copied = tokio::task::block_in_place(|| self.bpf.finish_migration())?;
        self.start.pins.ct_entries += copied;
        if !networks.is_empty() || !endpoints.is_empty() {
            let dir = self.cfg.state_dir.display();
            tracing::info!("restored {} networks and {} endpoints from {dir}", networks.len(), endpoints.len());
        }
        Ok(())
    }

    /// Endpoints whose create a crash interrupted: everything they may have
    /// made goes (veth, namespace; their map entries go with the stale
    /// ones), and so does their record.
    async fn roll_back_half_made(&mut self) {
        let half: Vec<EndpointSpec> = self.state.endpoints.values().filter(|e| e.creating).cloned().collect();
        for spec in &half {
            tracing::warn!(endpoint = %spec.name, "rolling back an endpoint whose create was interrupted");
            if let Err(e) = self.remove_leftovers(spec).await {
                tracing::error!(endpoint = %spec.name, "rolling back: {e}");
            }
            self.state.endpoints.remove(&spec.name);
        }
        self.start.endpoints_rolled_back = half.len();
        let connects = self.roll_back_half_connected().await;
        if !half.is_empty() || connects > 0 {
            if let Err(e) = self.save().await {
                tracing::error!("saving the state after the rollback: {e}");
            }
        }
    }

    /// Bridges and host veths named like ours that the state does not know
    /// (a crash between making them and recording them) go.
    async fn remove_unknown_links(&mut self) {
        let known: BTreeSet<&str> = self
            .state
            .networks
            .values()
            .map(|n| n.bridge.as_str())
            .chain(self.state.endpoints.values().flat_map(|e| e.links().map(|l| l.host_ifname)))
            .collect();
        let links = match self.nl.links().await {
            Ok(l) => l,
            Err(e) => return tracing::warn!("listing the node's links: {e}"),
        };
        let unknown: Vec<(u32, String)> =
            links.into_iter().filter(|(_, n)| is_datapath_link(n) && !known.contains(n.as_str())).collect();
        for (index, name) in unknown {
            tracing::warn!(link = %name, "removing a link of ours the state does not know");
            match self.nl.delete_link(index).await {
                Ok(()) => self.start.stale_entries_removed += 1,
                Err(e) => tracing::warn!(link = %name, "removing: {e}"),
            }
        }
    }

    /// Removes the map entries of endpoints and networks not in the state.
    fn remove_stale_entries(&mut self) -> usize {
        let ifindexes: BTreeSet<u32> =
            self.host_ifindex.values().chain(self.attach_ifindex.values()).copied().collect();
        let addresses: BTreeSet<u32> = self
            .state
            .endpoints
            .values()
            .flat_map(|e| {
                e.links().filter(|l| {
                    if l.primary {
                        self.host_ifindex.contains_key(&e.name)
                    } else {
                        self.attach_ifindex.contains_key(l.host_ifname)
                    }
                })
            })
            .map(|l| datapath_common::ipv4_key(l.ip.octets()))
            .collect();
        let ebpf = self.state.networks.values().filter(|n| n.datapath == DatapathKind::Ebpf);
        let (ids, subnets): (BTreeSet<u32>, BTreeSet<(u32, u32)>) = ebpf
            .map(|n| {
                (n.num_id, (datapath_common::ipv4_key(n.subnet.network().octets()), u32::from(n.subnet.prefix_len())))
            })
            .unzip();
        let removed = tokio::task::block_in_place(|| self.bpf.remove_stale(&ifindexes, &addresses, &ids, &subnets));
        if removed > 0 {
            tracing::info!("removed {removed} map entries of endpoints and networks that no longer exist");
        }
        removed
    }
}

impl Agent {
    /// Removes everything this agent made (used by `--cleanup-on-exit`).
    pub async fn teardown(&self) {
        let names: Vec<String> = self.inner.lock().await.state.containers.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.container_stop(&name).await {
                tracing::error!(container = %name, "teardown: {e}");
            }
        }
        let mut inner = self.inner.lock().await;
        let eps: Vec<String> = inner.state.endpoints.keys().cloned().collect();
        for ep in eps {
            if let Err(e) = inner.endpoint_remove(&ep).await {
                tracing::error!(endpoint = %ep, "teardown: {e}");
            }
        }
        let nets: Vec<String> = inner.state.networks.keys().cloned().collect();
        for net in nets {
            if let Err(e) = inner.network_remove(&net, true).await {
                tracing::error!(network = %net, "teardown: {e}");
            }
        }
        self.publish(&inner);
        self.dns.settle().await;
        let (file, pins, journal) =
            (inner.cfg.state_dir.join(state::STATE_FILE), Pins::new(&inner.cfg.bpffs), inner.journal());
        let _ = blocking(move || {
            let _ = std::fs::remove_file(file);
            journal.remove_all();
            if let Err(e) = pins.remove_all() {
                tracing::error!("removing the pins: {e}");
            }
        })
        .await;
    }

    /// The agent stops and leaves the datapath running (no
    /// `--cleanup-on-exit`): every attachment and pin stays.
    pub async fn release(&self) {
        self.inner.lock().await.bpf.release();
    }
}
