//! Endpoint churn: create then remove endpoints on the ebpf and the kernel
//! node, alternating between them, timing each API round trip.

use std::time::Instant;

use anyhow::Result;
use datapath::api::{EndpointCreate, Request};

use crate::lab::{BenchNode, Lab};
use crate::report::{Churn, Topo};
use crate::{progress, stats, sys, Cfg};

/// Creates then removes `cfg.endpoints` endpoints per node, alternating
/// between the nodes, timing each API call.
pub fn churn(cfg: &Cfg, lab: &Lab) -> Result<Vec<Churn>> {
    let nodes: Vec<&BenchNode> = [Topo::Ebpf, Topo::Kernel].iter().filter_map(|&t| lab.node(t)).collect();
    let mut results: Vec<Churn> = nodes
        .iter()
        .map(|n| Churn { datapath: if n.topo == Topo::Ebpf { "ebpf" } else { "kernel" }.into(), ..Default::default() })
        .collect();
    progress(&format!("endpoint churn: {} endpoints per datapath (create all, then remove all)", cfg.endpoints));
    let mut created: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for i in 0..cfg.endpoints {
        sys::check_interrupted()?;
        for (j, n) in nodes.iter().enumerate() {
            let name = lab.claim.name(&format!("{}x{i}", n.tag));
            let req = EndpointCreate { name: name.clone(), network: Some(n.network.clone()), ..Default::default() };
            let t = Instant::now();
            match n.client.call(Request::EndpointCreate(req)) {
                Ok(_) => {
                    results[j].create_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    created[j].push(name);
                }
                Err(e) => results[j].errors.push(format!("create {name}: {e:#}")),
            }
        }
    }
    for i in 0..cfg.endpoints {
        sys::check_interrupted()?;
        for (j, n) in nodes.iter().enumerate() {
            let Some(name) = created[j].get(i) else { continue };
            let t = Instant::now();
            match n.client.call(Request::EndpointRemove { name: name.clone() }) {
                Ok(_) => results[j].remove_ms.push(t.elapsed().as_secs_f64() * 1e3),
                Err(e) => results[j].errors.push(format!("remove {name}: {e:#}")),
            }
        }
    }
    for c in &results {
        progress(&format!(
            "endpoint churn {}: create median {:.1} ms p99 {:.1} ms, remove median {:.1} ms ({} errors)",
            c.datapath,
            stats::median(&c.create_ms).unwrap_or(f64::NAN),
            stats::percentile(&c.create_ms, 99.0).unwrap_or(f64::NAN),
            stats::median(&c.remove_ms).unwrap_or(f64::NAN),
            c.errors.len()
        ));
    }
    Ok(results)
}
