//! The agent's periodic work: following uplink address changes (every 2 s,
//! under the writer lock: it may change the datapath's network entries and
//! the published ports' keys)
//! and collecting expired conntrack flows (a walk of the table on a
//! blocking thread, without the writer lock).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::networks::UplinkCache;
use super::{blocking, Agent, Inner};
use crate::state::NetworkSpec;

/// Starts the upkeep task; it ends with the agent.
pub(super) fn spawn(agent: &Arc<Agent>) {
    let weak = Arc::downgrade(agent);
    let gc_every = Duration::from_secs(agent.cfg.ct_gc_interval.max(1));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_gc = Instant::now();
        loop {
            every.tick().await;
            let Some(agent) = Weak::upgrade(&weak) else { break };
            {
                let mut inner = agent.inner.lock().await;
                inner.follow_uplinks().await;
                agent.publish(&inner);
            }
            if last_gc.elapsed() >= gc_every {
                last_gc = Instant::now();
                agent.conntrack_gc().await;
            }
        }
    });
}

impl Inner {
    /// Follows uplink address changes into the datapath.
    async fn follow_uplinks(&mut self) {
        let nets: Vec<NetworkSpec> = self.state.networks.values().cloned().collect();
        let mut seen = UplinkCache::new();
        for net in nets {
            if let Err(e) = self.sync_datapath_network(&net, &mut seen).await {
                tracing::warn!(network = %net.name, "updating the datapath: {e}");
            }
        }
        if let Err(e) = self.sync_uplinks().await {
            tracing::warn!("attaching reverse NAT to uplinks: {e}");
        }
        // Published ports follow the node's addresses.
        if let Err(e) = self.sync_ports().await {
            tracing::warn!("updating published ports: {e}");
        }
    }
}

impl Agent {
    /// One conntrack GC pass; its report feeds `stats`.
    async fn conntrack_gc(&self) {
        let tables = self.tables.clone();
        let report = match blocking(move || tables.ct()?.gc()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return tracing::warn!("conntrack GC: {e}"),
            Err(e) => return tracing::warn!("conntrack GC: {e}"),
        };
        if report.removed > 0 {
            tracing::debug!(removed = report.removed, live = report.live, "conntrack GC");
        }
        let pct = report.live as u64 * 100 / u64::from(report.capacity.max(1));
        if pct >= 80 {
            tracing::warn!(
                live = report.live,
                capacity = report.capacity,
                "conntrack table is {pct}% full: live flows may be evicted"
            );
        }
        if let Ok(mut last) = self.gc_report.lock() {
            *last = Some(report);
        }
    }
}
