//! The benchmark's data model and its renderings: Markdown table, JSON, SVG
//! chart. Everything here is pure (no I/O), so it is unit-tested.

use serde_json::{json, Value};

use super::stats::{max, median, min, percentile, ratio};

/// The topologies measured side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topo {
    /// A direct veth pair between two namespaces.
    Ceiling,
    /// Bridge + br_netfilter (bridge-nf-call-iptables=1) + Docker's FORWARD
    /// chains + MASQUERADE: a Docker-configured host.
    Kernel,
    /// Bridge without br_netfilter (+ MASQUERADE for north-south).
    KernelBare,
    /// The eBPF datapath (agent, `--datapath ebpf`).
    Ebpf,
}

impl Topo {
    pub const ALL: [Topo; 4] = [Topo::Ceiling, Topo::Kernel, Topo::KernelBare, Topo::Ebpf];
    pub fn name(self) -> &'static str {
        match self {
            Topo::Ceiling => "ceiling",
            Topo::Kernel => "kernel",
            Topo::KernelBare => "kernel-bare",
            Topo::Ebpf => "ebpf",
        }
    }
    fn color(self) -> &'static str {
        match self {
            Topo::Ceiling => "#9e9e9e",
            Topo::Kernel => "#e07b39",
            Topo::KernelBare => "#f2c14e",
            Topo::Ebpf => "#2f7ed8",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// iperf3 TCP stream; value in Gbit/s.
    Stream(u32),
    /// One connection, 1-byte request/response; transactions/s.
    Rr,
    /// One connection per transaction; connections/s.
    Crr,
    /// 64-byte UDP datagrams; packets/s received.
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub id: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    /// North-south: endpoint to the outside namespace through masquerade.
    pub north_south: bool,
}

impl Workload {
    pub fn unit(&self) -> &'static str {
        match self.kind {
            Kind::Stream(_) => "Gbit/s",
            Kind::Rr => "trans/s",
            Kind::Crr => "conn/s",
            Kind::Udp => "pkt/s",
        }
    }
    /// Unit of the CPU cost per unit of work.
    pub fn cpu_unit(&self) -> &'static str {
        match self.kind {
            Kind::Stream(_) => "CPU-s/Gbit",
            Kind::Rr | Kind::Crr => "CPU-µs/op",
            Kind::Udp => "CPU-ns/pkt",
        }
    }
    /// CPU cost per unit of work from the busy fraction of the CPUs
    /// (CPU-seconds per second) and the rate.
    pub fn cpu_cost(&self, busy_cpus: f64, rate: f64) -> Option<f64> {
        if rate <= 0.0 {
            return None;
        }
        let per_unit = busy_cpus / rate;
        Some(match self.kind {
            Kind::Stream(_) => per_unit,
            Kind::Rr | Kind::Crr => per_unit * 1e6,
            Kind::Udp => per_unit * 1e9,
        })
    }
}

pub const WORKLOADS: &[Workload] = &[
    Workload { id: "ew-tcp-stream-1", label: "E-W TCP stream, 1 stream", kind: Kind::Stream(1), north_south: false },
    Workload { id: "ew-tcp-stream-4", label: "E-W TCP stream, 4 streams", kind: Kind::Stream(4), north_south: false },
    Workload { id: "ew-tcp-rr", label: "E-W TCP_RR", kind: Kind::Rr, north_south: false },
    Workload { id: "ew-tcp-crr", label: "E-W TCP_CRR", kind: Kind::Crr, north_south: false },
    Workload { id: "ew-udp-64", label: "E-W UDP 64 B", kind: Kind::Udp, north_south: false },
    Workload { id: "ns-tcp-stream-1", label: "N-S TCP stream, 1 stream", kind: Kind::Stream(1), north_south: true },
    Workload { id: "ns-tcp-rr", label: "N-S TCP_RR", kind: Kind::Rr, north_south: true },
    Workload { id: "ns-tcp-crr", label: "N-S TCP_CRR", kind: Kind::Crr, north_south: true },
    Workload { id: "ns-udp-64", label: "N-S UDP 64 B", kind: Kind::Udp, north_south: true },
];

pub fn workload(id: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.id == id)
}

/// All rounds of one workload on one topology.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell {
    pub values: Vec<f64>,
    /// CPU cost per unit of work, one per round where it could be read.
    pub cpu: Vec<f64>,
    /// Why there is no figure (e.g. "n/a (eBPF SNAT not available)").
    pub na: Option<String>,
    /// Rounds that failed, with why.
    pub errors: Vec<String>,
}

impl Cell {
    pub fn median(&self) -> Option<f64> {
        if self.na.is_some() {
            None
        } else {
            median(&self.values)
        }
    }
}

/// Endpoint create/remove latencies of one datapath, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Churn {
    pub datapath: String,
    pub create_ms: Vec<f64>,
    pub remove_ms: Vec<f64>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AgentMem {
    pub node: String,
    pub idle_rss_kib: u64,
    pub after_churn_rss_kib: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    /// Free-form facts about the run (date, kernel, settings).
    pub meta: Vec<(String, String)>,
    /// (workload id, topology) -> cell.
    pub cells: Vec<(&'static str, Topo, Cell)>,
    pub churn: Vec<Churn>,
    pub memory: Vec<AgentMem>,
    /// Extra diagnostics (e.g. eBPF drop counters), stored in the JSON.
    pub diagnostics: Value,
}

impl Results {
    pub fn cell(&self, w: &str, t: Topo) -> Option<&Cell> {
        self.cells.iter().find(|(id, tt, _)| *id == w && *tt == t).map(|(_, _, c)| c)
    }
    pub fn cell_mut(&mut self, w: &'static str, t: Topo) -> &mut Cell {
        if let Some(i) = self.cells.iter().position(|(id, tt, _)| *id == w && *tt == t) {
            return &mut self.cells[i].2;
        }
        self.cells.push((w, t, Cell::default()));
        &mut self.cells.last_mut().expect("just pushed").2
    }
    fn med(&self, w: &str, t: Topo) -> Option<f64> {
        self.cell(w, t).and_then(Cell::median)
    }
    pub fn ratio_to(&self, w: &str, t: Topo, base: Topo) -> Option<f64> {
        ratio(self.med(w, t), self.med(w, base))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: Option<f64>,
    /// None: could not be measured.
    pub pass: Option<bool>,
    pub note: Option<String>,
}

/// The targets for the eBPF datapath, checked against the medians.
pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let mut ratio_target = |w: &str, base: Topo, goal: f64| {
        let wl = workload(w).expect("known workload");
        let m = r.ratio_to(w, Topo::Ebpf, base);
        let note = r.cell(w, Topo::Ebpf).and_then(|c| c.na.clone());
        out.push(Target {
            what: format!("{}: ebpf / {}", wl.label, base.name()),
            goal: format!("≥ {goal:.2}×"),
            measured: m,
            pass: m.map(|m| m >= goal),
            note,
        });
    };
    for w in WORKLOADS.iter().filter(|w| !w.north_south) {
        ratio_target(w.id, Topo::Ceiling, 0.95);
    }
    ratio_target("ew-tcp-rr", Topo::Kernel, 1.2);
    ratio_target("ew-udp-64", Topo::Kernel, 1.4);
    ratio_target("ns-tcp-rr", Topo::Kernel, 1.3);
    ratio_target("ns-udp-64", Topo::Kernel, 1.3);
    ratio_target("ns-tcp-crr", Topo::Kernel, 1.5);
    let create = r.churn.iter().find(|c| c.datapath == "ebpf").and_then(|c| median(&c.create_ms));
    out.push(Target {
        what: "endpoint create (ebpf), median".into(),
        goal: "≤ 20 ms".into(),
        measured: create,
        pass: create.map(|m| m <= 20.0),
        note: None,
    });
    out
}

/// Compact human number: 61234 -> "61.2k", 1.5e6 -> "1.50M", 9.41 -> "9.41".
pub fn human(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if a >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "–".into())
}

fn ratio_s(x: Option<f64>) -> String {
    opt(x, |v| format!("{v:.2}×"))
}

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
                }),
            );
        }
        workloads.push(json!({
            "id": w.id,
            "label": w.label,
            "unit": w.unit(),
            "cpu_unit": w.cpu_unit(),
            "north_south": w.north_south,
            "topologies": topos,
        }));
    }
    let churn: Vec<Value> = r
        .churn
        .iter()
        .map(|c| {
            json!({
                "datapath": c.datapath,
                "count": c.create_ms.len(),
                "create_ms": {"median": num(median(&c.create_ms)), "p99": num(percentile(&c.create_ms, 99.0)), "min": num(min(&c.create_ms)), "max": num(max(&c.create_ms)), "samples": c.create_ms},
                "remove_ms": {"median": num(median(&c.remove_ms)), "p99": num(percentile(&c.remove_ms, 99.0)), "min": num(min(&c.remove_ms)), "max": num(max(&c.remove_ms)), "samples": c.remove_ms},
                "errors": c.errors,
            })
        })
        .collect();
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
        "agent_memory": memory,
        "targets": targets,
        "diagnostics": r.diagnostics,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A grouped horizontal bar chart: for each workload, one bar per topology,
/// length = median relative to the ceiling (1.0), labelled with the value.
pub fn svg(r: &Results, title: &str) -> String {
    let bar_h = 14.0;
    let group_gap = 14.0;
    let left = 190.0;
    let width = 820.0;
    let plot_w = 480.0;
    let top = 56.0;
    // Scale: the largest ratio to ceiling shown, at least 1.2.
    let mut max_ratio: f64 = 1.2;
    for w in WORKLOADS {
        for t in Topo::ALL {
            if let Some(x) = r.ratio_to(w.id, t, Topo::Ceiling) {
                max_ratio = max_ratio.max(x);
            }
        }
    }
    let x_of = |ratio: f64| left + plot_w * (ratio / max_ratio).min(1.0);
    let mut body = String::new();
    let mut y = top;
    for w in WORKLOADS {
        if !r.cells.iter().any(|(id, _, _)| *id == w.id) {
            continue;
        }
        body += &format!(
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"bold\">{}</text>\n",
            left - 8.0,
            y + 2.0 * bar_h + 4.0,
            esc(w.label)
        );
        for t in Topo::ALL {
            let Some(c) = r.cell(w.id, t) else { continue };
            let label = match (&c.na, c.median()) {
                (Some(na), _) => na.clone(),
                (None, Some(m)) => {
                    format!("{} {} ({})", human(m), w.unit(), ratio_s(r.ratio_to(w.id, t, Topo::Ceiling)))
                }
                (None, None) => "–".into(),
            };
            let ratio = r.ratio_to(w.id, t, Topo::Ceiling).unwrap_or(0.0);
            let x1 = x_of(ratio);
            body += &format!(
                "<rect x=\"{left:.0}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>\n",
                (x1 - left).max(0.0),
                bar_h - 2.0,
                t.color(),
                esc(w.label),
                t.name(),
                esc(&label)
            );
            body += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{} {}</text>\n",
                x1 + 4.0,
                y + bar_h - 4.0,
                t.name(),
                esc(&label)
            );
            y += bar_h;
        }
        y += group_gap;
    }
    let height = y + 30.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    s += &format!("<rect width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>\n");
    s += &format!("<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", esc(title));
    s += "<text x=\"10\" y=\"40\" font-size=\"11\" fill=\"#555\">median of the rounds, bar length relative to the ceiling (direct veth pair) = 1.0; higher is better</text>\n";
    for (ratio, dash) in [(0.95, "4,3"), (1.0, "")] {
        let x = x_of(ratio);
        let dash = if dash.is_empty() { String::new() } else { format!(" stroke-dasharray=\"{dash}\"") };
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{:.0}\" stroke=\"#444\"{dash}/>\n",
            top - 6.0,
            y
        );
        s += &format!(
            "<text x=\"{x:.1}\" y=\"{:.0}\" font-size=\"10\" text-anchor=\"middle\">{ratio:.2}×</text>\n",
            y + 14.0
        );
    }
    s += &body;
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Results {
        let mut r = Results { meta: vec![("rounds".into(), "3".into())], ..Default::default() };
        for (t, base) in [(Topo::Ceiling, 100.0), (Topo::Kernel, 50.0), (Topo::KernelBare, 80.0), (Topo::Ebpf, 96.0)] {
            let c = r.cell_mut("ew-tcp-rr", t);
            c.values = vec![base - 1.0, base, base + 1.0];
            c.cpu = vec![10.0];
        }
        for t in [Topo::Ceiling, Topo::Kernel] {
            r.cell_mut("ns-tcp-crr", t).values = vec![10.0];
        }
        r.cell_mut("ns-tcp-crr", Topo::Ebpf).na = Some("n/a (eBPF SNAT not available)".into());
        r.churn.push(Churn {
            datapath: "ebpf".into(),
            create_ms: vec![5.0, 6.0, 7.0],
            remove_ms: vec![3.0],
            errors: vec![],
        });
        r.memory.push(AgentMem { node: "ebpf".into(), idle_rss_kib: 10240, after_churn_rss_kib: None });
        r
    }

    #[test]
    fn ratios_use_medians() {
        let r = sample();
        assert_eq!(r.ratio_to("ew-tcp-rr", Topo::Ebpf, Topo::Ceiling), Some(0.96));
        assert_eq!(r.ratio_to("ew-tcp-rr", Topo::Ebpf, Topo::Kernel), Some(96.0 / 50.0));
        assert_eq!(r.ratio_to("ns-tcp-crr", Topo::Ebpf, Topo::Kernel), None);
    }

    #[test]
    fn targets_are_checked() {
        let r = sample();
        let t = targets(&r);
        let rr_ceiling = t.iter().find(|t| t.what == "E-W TCP_RR: ebpf / ceiling").unwrap();
        assert_eq!(rr_ceiling.pass, Some(true));
        let rr_kernel = t.iter().find(|t| t.what == "E-W TCP_RR: ebpf / kernel").unwrap();
        assert_eq!(rr_kernel.pass, Some(true));
        let crr = t.iter().find(|t| t.what == "N-S TCP_CRR: ebpf / kernel").unwrap();
        assert_eq!(crr.pass, None);
        assert_eq!(crr.note.as_deref(), Some("n/a (eBPF SNAT not available)"));
        let create = t.iter().find(|t| t.what.starts_with("endpoint create")).unwrap();
        assert_eq!((create.measured, create.pass), (Some(6.0), Some(true)));
    }

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

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg(&sample(), "t <1>");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t &lt;1&gt;"));
        assert!(s.contains("n/a (eBPF SNAT not available)"));
        assert_eq!(s.matches("<rect").count(), 1 + 4 + 3);
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(61234.0), "61.2k");
        assert_eq!(human(1_500_000.0), "1.50M");
        assert_eq!(human(9.412), "9.41");
        assert_eq!(human(2500.0), "2.50k");
        assert_eq!(human(123.4), "123");
    }

    #[test]
    fn cpu_cost_units() {
        let w = workload("ew-tcp-rr").unwrap();
        assert_eq!(w.cpu_cost(1.0, 50_000.0), Some(20.0));
        let s = workload("ew-tcp-stream-1").unwrap();
        assert_eq!(s.cpu_cost(1.0, 20.0), Some(0.05));
        assert_eq!(s.cpu_cost(1.0, 0.0), None);
    }
}
