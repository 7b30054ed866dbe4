//! The Markdown report: per-workload table, control plane, targets.

use super::{human, opt, ratio_s, targets, Churn, Results, Topo, WORKLOADS};
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
    s += &ipv6_section(r);
    s += &docker_section(r);
    if !r.churn.is_empty() {
        s += "\n### Endpoint create / remove (API round trip)\n\n";
        s += &round_trips(["datapath", "endpoints", "create"], &r.churn, 1);
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
    if !r.cells.iter().any(|(_, t, _)| *t == Topo::Ebpf) {
        return s;
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

/// Each IPv6 row beside its IPv4 twin on every topology measured; empty
/// when no IPv6 row was.
fn ipv6_section(r: &Results) -> String {
    let mut s = String::new();
    for w in WORKLOADS.iter().filter(|w| w.ipv6) {
        let Some(v4) = w.v4_peer() else { continue };
        for t in Topo::ALL {
            let Some(c6) = r.cell(w.id, t) else { continue };
            if s.is_empty() {
                s += "\n### IPv6 beside IPv4\n\n| workload | topology | IPv4 | IPv6 | IPv6 × IPv4 |\n";
                s += "| --- | --- | ---: | ---: | ---: |\n";
            }
            let fig = |c: Option<&super::Cell>| match c {
                None => "–".to_string(),
                Some(c) => match &c.na {
                    Some(na) => na.clone(),
                    None => opt(c.median(), |v| format!("{} {}", human(v), w.unit())),
                },
            };
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                v4.label,
                t.name(),
                fig(r.cell(v4.id, t)),
                fig(Some(c6)),
                ratio_s(r.ratio_to_v4(w, t))
            );
        }
    }
    s
}

/// Docker's bridge driver beside the datapath driver on the same dockerd,
/// and the container start times; empty when Docker was not measured.
fn docker_section(r: &Results) -> String {
    let (b, d) = (Topo::DockerBridge, Topo::DockerDatapath);
    let mut s = String::new();
    let rows: Vec<_> = WORKLOADS.iter().filter(|w| r.cell(w.id, b).is_some() || r.cell(w.id, d).is_some()).collect();
    if !rows.is_empty() {
        s += "\n### Docker: bridge driver vs datapath driver (same dockerd)\n\n";
        s += "| workload | docker-bridge | docker-datapath | datapath × bridge |\n| --- | ---: | ---: | ---: |\n";
        for w in rows {
            let fig = |t: Topo| match r.cell(w.id, t) {
                None => "–".to_string(),
                Some(c) => match &c.na {
                    Some(na) => na.clone(),
                    None => opt(c.median(), |v| format!("{} {}", human(v), w.unit())),
                },
            };
            s += &format!("| {} | {} | {} | {} |\n", w.label, fig(b), fig(d), ratio_s(r.ratio_to(w.id, d, b)));
        }
    }
    if !r.containers.is_empty() {
        s += "\n### Container start / remove (`docker run -d` / `docker rm -f` round trip)\n\n";
        s += &round_trips(["driver", "containers", "start"], &r.containers, 0);
    }
    s
}

/// A table of create/remove round trips (endpoints or containers), one row
/// per datapath or driver: `[who, what, create verb]` name the columns.
fn round_trips(cols: [&str; 3], rows: &[Churn], decimals: usize) -> String {
    let [who, what, verb] = cols;
    let mut s = format!("| {who} | {what} | {verb} median | {verb} p99 | remove median | remove p99 | errors |\n");
    s += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let ms = |x: Option<f64>| opt(x, |v| format!("{v:.decimals$} ms"));
    for c in rows {
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
        assert!(!md.contains("### Docker"), "no Docker section without Docker figures: {md}");
        assert!(!md.contains("### IPv6"), "no IPv6 section without IPv6 figures: {md}");
    }

    #[test]
    fn ipv6_rows_beside_ipv4() {
        let mut r = sample();
        r.cell_mut("ew6-tcp-rr", Topo::Ebpf).values = vec![48.0];
        r.cell_mut("ns6-tcp-rr", Topo::DockerBridge).na =
            Some("n/a (IPv6 not measured on the Docker topologies)".into());
        let md = markdown(&r);
        assert!(md.contains("### IPv6 beside IPv4"), "{md}");
        assert!(md.contains("| E-W TCP_RR | ebpf | 96.0 trans/s | 48.0 trans/s | 0.50× |"), "{md}");
        assert!(
            md.contains("| N-S TCP_RR | docker-bridge | – | n/a (IPv6 not measured on the Docker topologies) | – |"),
            "{md}"
        );
        // The main table lists the IPv6 row right after the IPv4 one.
        let (v4, v6) = (md.find("| E-W TCP_RR | ebpf |").unwrap(), md.find("| E-W TCP_RR (IPv6) | ebpf |").unwrap());
        assert!(v4 < v6 && !md[v4..v6].contains("TCP_CRR"), "{md}");
    }

    #[test]
    fn docker_section_compares_the_drivers() {
        let mut r = Results::default();
        r.cell_mut("ew-udp-64", Topo::DockerBridge).values = vec![90.0, 100.0, 110.0];
        r.cell_mut("ew-udp-64", Topo::DockerDatapath).values = vec![130.0, 133.0, 140.0];
        r.cell_mut("ns-tcp-rr", Topo::DockerBridge).na = Some("n/a (no north-south connectivity: x)".into());
        r.cell_mut("ns-tcp-rr", Topo::DockerDatapath).values = vec![5.0];
        r.containers.push(Churn {
            datapath: "docker-bridge".into(),
            create_ms: vec![300.0, 320.0, 900.0],
            remove_ms: vec![100.0],
            errors: vec![],
        });
        let md = markdown(&r);
        assert!(md.contains("| E-W UDP 64 B | 100 pkt/s | 133 pkt/s | 1.33× |"), "{md}");
        assert!(md.contains("| N-S TCP_RR | n/a (no north-south connectivity: x) | 5.00 trans/s | – |"), "{md}");
        assert!(md.contains("| docker-bridge | 3 | 320 ms | 900 ms | 100 ms | 100 ms | 0 |"), "{md}");
        assert!(md.contains("| E-W UDP 64 B | docker-datapath | 133 pkt/s |"), "{md}");
        assert!(!md.contains("### Targets"), "no eBPF node, no targets: {md}");
    }
}
