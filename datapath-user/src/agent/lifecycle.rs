//! The agent's start (load the datapath, restore the persisted state into
//! the kernel, create the default network) and its teardown
//! (`--cleanup-on-exit`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use tokio::sync::broadcast;

use super::networks::UplinkCache;
use super::{blocking, Agent, AgentConfig, Inner, DEFAULT_NETWORK, FAILPOINT_ENV};
use crate::api::NetworkCreate;
use crate::datapath::{snat, Bpf};
use crate::host::{bpffs, netlink::Netlink};
use crate::state::{self, EndpointSpec, NetworkSpec, State};

impl Inner {
    /// Loads the datapath and restores the persisted state.
    pub(super) async fn start(cfg: AgentConfig, trace_tx: broadcast::Sender<String>) -> anyhow::Result<Inner> {
        let (dir, pins) = (cfg.state_dir.clone(), cfg.bpffs.clone());
        blocking(move || -> anyhow::Result<()> {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating state dir {}", dir.display()))?;
            bpffs::ensure(&pins)
        })
        .await??;
        let bpf = tokio::task::block_in_place(|| Bpf::load(trace_tx, cfg.attach_mode))?;
        let nl = Netlink::current()?;
        let dir = cfg.state_dir.clone();
        let state = blocking(move || State::load(&dir)).await??.unwrap_or_else(State::new);
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
            trace_refs: HashMap::new(),
            trace_all: 0,
            failpoint,
            nat_ports,
            net_info: BTreeMap::new(),
            uplinks: BTreeMap::new(),
            applied_nft: None,
        };
        let ct = inner.cfg.ct;
        tokio::task::block_in_place(|| inner.bpf.set_ct_config(ct))?;
        inner.restore().await?;
        if inner.cfg.default_network && !inner.state.networks.contains_key(DEFAULT_NETWORK) {
            let subnet = inner.cfg.default_subnet.to_string();
            let req = NetworkCreate { name: DEFAULT_NETWORK.into(), subnet, ..Default::default() };
            inner.network_create(req).await.map_err(|e| anyhow::anyhow!("creating the default network: {e}"))?;
        }
        Ok(inner)
    }

    /// Brings the persisted networks and endpoints back into the kernel.
    async fn restore(&mut self) -> anyhow::Result<()> {
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
        if !networks.is_empty() || !endpoints.is_empty() {
            let dir = self.cfg.state_dir.display();
            tracing::info!("restored {} networks and {} endpoints from {dir}", networks.len(), endpoints.len());
        }
        Ok(())
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
        let (file, pins) = (inner.cfg.state_dir.join(state::STATE_FILE), inner.cfg.bpffs.clone());
        let _ = blocking(move || {
            let _ = std::fs::remove_file(file);
            // Only if empty: nothing is pinned yet, and nothing of others is removed.
            let _ = std::fs::remove_dir(pins);
        })
        .await;
    }
}
