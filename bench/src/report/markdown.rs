//! The Markdown report: per-workload table, control plane, targets.

use super::{human, opt, ratio_s, targets, Results, Topo, WORKLOADS};
use crate::stats::{max, median, min, percentile};

/// The Markdown report: per-workload table, control plane, targets.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    s += "### Datapath throughput and rates\n\n";
    for (k, v) in &r.meta {
        s += &format!("- {k}: {v}\n");
    }
    s += "\n| workload | topology | median | min | max | rounds | CPU cost | × ceiling | × kernel |\n";
    s += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for w in WORKLOADS {
        for t in Topo::ALL {
            let Some(c) = r.cell(w.id, t) else { continue };
            if let Some(na) = &c.na {
                s += &format!("| {} | {} | {na} | | | | | | |\n", w.label, t.name());
                continue;
            }
            let num = |x: Option<f64>| opt(x, |v| format!("{} {}", human(v), w.unit()));
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                w.label,
                t.name(),
                num(c.median()),
                opt(min(&c.values), human),
                opt(max(&c.values), human),
                c.values.len(),
                opt(median(&c.cpu), |v| format!("{} {}", human(v), w.cpu_unit())),
                if t == Topo::Ceiling { "1.00×".into() } else { ratio_s(r.ratio_to(w.id, t, Topo::Ceiling)) },
                if t == Topo::Kernel { "1.00×".into() } else { ratio_s(r.ratio_to(w.id, t, Topo::Kernel)) },
            );
        }
    }
    if !r.churn.is_empty() {
        s += "\n### Endpoint create / remove (API round trip)\n\n";
        s += "| datapath | endpoints | create median | create p99 | remove median | remove p99 | errors |\n";
        s += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for c in &r.churn {
            let ms = |x: Option<f64>| opt(x, |v| format!("{v:.1} ms"));
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                c.datapath,
                c.create_ms.len(),
                ms(median(&c.create_ms)),
                ms(percentile(&c.create_ms, 99.0)),
                ms(median(&c.remove_ms)),
                ms(percentile(&c.remove_ms, 99.0)),
                c.errors.len()
            );
        }
    }
    if !r.memory.is_empty() {
        s +=
            "\n### Agent memory (RSS)\n\n| node | idle (2 endpoints) | after endpoint churn |\n| --- | ---: | ---: |\n";
        for m in &r.memory {
            let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
            s += &format!(
                "| {} | {} | {} |\n",
                m.node,
                mib(m.idle_rss_kib),
                m.after_churn_rss_kib.map(mib).unwrap_or_else(|| "–".into())
            );
        }
    }
    s += "\n### Targets (eBPF datapath)\n\n| target | goal | measured | verdict |\n| --- | --- | ---: | --- |\n";
    for t in targets(r) {
        let measured = match (&t.note, t.measured) {
            (Some(n), None) => n.clone(),
            (_, Some(m)) if t.goal.contains("ms") => format!("{m:.1} ms"),
            (_, m) => ratio_s(m),
        };
        let verdict = match t.pass {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        s += &format!("| {} | {} | {} | {} |\n", t.what, t.goal, measured, verdict);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn markdown_has_rows_ratios_and_na() {
        let md = markdown(&sample());
        assert!(
            md.contains("| E-W TCP_RR | ebpf | 96.0 trans/s | 95.0 | 97.0 | 3 | 10.0 CPU-µs/op | 0.96× | 1.92× |"),
            "{md}"
        );
        assert!(md.contains("| N-S TCP_CRR | ebpf | n/a (eBPF SNAT not available) |"), "{md}");
        assert!(md.contains("| ebpf | 3 | 6.0 ms | 7.0 ms | 3.0 ms | 3.0 ms | 0 |"), "{md}");
        assert!(md.contains("| ebpf | 10.0 MiB | – |"), "{md}");
        assert!(md.contains("| E-W TCP_RR: ebpf / kernel | ≥ 1.20× | 1.92× | met |"), "{md}");
    }
}
