//! The JSON document: every sample, medians, ratios, targets, diagnostics.

use serde_json::{json, Value};

use super::{targets, Results, Topo, WORKLOADS};
use crate::stats::{max, median, min, percentile};

fn num(x: Option<f64>) -> Value {
    x.map(Value::from).unwrap_or(Value::Null)
}

/// The JSON document written to bench/results/.
pub fn to_json(r: &Results) -> Value {
    let meta: serde_json::Map<String, Value> =
        r.meta.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
    let mut workloads = Vec::new();
    for w in WORKLOADS {
        let mut topos = serde_json::Map::new();
        for t in Topo::ALL {
            let Some(c) = r.cell(w.id, t) else { continue };
            topos.insert(
                t.name().into(),
                json!({
                    "na": c.na,
                    "values": c.values,
                    "median": num(c.median()),
                    "min": num(min(&c.values)),
                    "max": num(max(&c.values)),
                    "cpu_cost": c.cpu,
                    "cpu_cost_median": num(median(&c.cpu)),
                    "ratio_to_ceiling": num(r.ratio_to(w.id, t, Topo::Ceiling)),
                    "ratio_to_kernel": num(r.ratio_to(w.id, t, Topo::Kernel)),
                    "ratio_to_docker_bridge": num(r.ratio_to(w.id, t, Topo::DockerBridge)),
                    "ratio_to_ipv4": num(r.ratio_to_v4(w, t)),
                }),
            );
        }
        workloads.push(json!({
            "id": w.id,
            "label": w.label,
            "unit": w.unit(),
            "cpu_unit": w.cpu_unit(),
            "north_south": w.north_south,
            "published": w.published,
            "ipv6": w.ipv6,
            "ipv4_twin": w.v4_peer().map(|p| p.id),
            "topologies": topos,
        }));
    }
    let churn_json = |c: &super::Churn| {
        json!({
            "datapath": c.datapath,
            "count": c.create_ms.len(),
            "create_ms": {"median": num(median(&c.create_ms)), "p99": num(percentile(&c.create_ms, 99.0)), "min": num(min(&c.create_ms)), "max": num(max(&c.create_ms)), "samples": c.create_ms},
            "remove_ms": {"median": num(median(&c.remove_ms)), "p99": num(percentile(&c.remove_ms, 99.0)), "min": num(min(&c.remove_ms)), "max": num(max(&c.remove_ms)), "samples": c.remove_ms},
            "errors": c.errors,
        })
    };
    let churn: Vec<Value> = r.churn.iter().map(churn_json).collect();
    let containers: Vec<Value> = r.containers.iter().map(churn_json).collect();
    let memory: Vec<Value> = r
        .memory
        .iter()
        .map(|m| json!({"node": m.node, "idle_rss_kib": m.idle_rss_kib, "after_churn_rss_kib": m.after_churn_rss_kib}))
        .collect();
    let targets: Vec<Value> = targets(r)
        .into_iter()
        .map(|t| json!({"target": t.what, "goal": t.goal, "measured": num(t.measured), "pass": t.pass, "note": t.note}))
        .collect();
    json!({
        "meta": meta,
        "workloads": workloads,
        "endpoint_churn": churn,
        "container_start": containers,
        "agent_memory": memory,
        "targets": targets,
        "diagnostics": r.diagnostics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn json_has_medians_and_targets() {
        let j = to_json(&sample());
        let rr = j["workloads"].as_array().unwrap().iter().find(|w| w["id"] == "ew-tcp-rr").unwrap();
        assert_eq!(rr["topologies"]["ebpf"]["median"], 96.0);
        assert_eq!(rr["topologies"]["kernel"]["ratio_to_ceiling"], 0.5);
        assert_eq!(j["endpoint_churn"][0]["create_ms"]["median"], 6.0);
        assert_eq!(j["meta"]["rounds"], "3");
        assert!(j["targets"].as_array().unwrap().len() >= 11);
    }
}
