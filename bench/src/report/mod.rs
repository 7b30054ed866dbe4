//! The benchmark's data model and its renderings: Markdown table, JSON, SVG
//! chart. Everything here is pure (no I/O), so it is unit-tested.

mod json;
mod markdown;
mod svg;

use serde_json::Value;

use crate::stats::{median, ratio};

pub use json::to_json;
pub use markdown::markdown;
pub use svg::svg;

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
    /// A real dockerd's own bridge driver (its iptables rules, br_netfilter).
    DockerBridge,
    /// The same dockerd with the `datapath` network driver (the agent's plugin).
    DockerDatapath,
}

impl Topo {
    pub const ALL: [Topo; 6] =
        [Topo::Ceiling, Topo::Kernel, Topo::KernelBare, Topo::Ebpf, Topo::DockerBridge, Topo::DockerDatapath];
    pub fn name(self) -> &'static str {
        match self {
            Topo::Ceiling => "ceiling",
            Topo::Kernel => "kernel",
            Topo::KernelBare => "kernel-bare",
            Topo::Ebpf => "ebpf",
            Topo::DockerBridge => "docker-bridge",
            Topo::DockerDatapath => "docker-datapath",
        }
    }
    pub fn is_docker(self) -> bool {
        matches!(self, Topo::DockerBridge | Topo::DockerDatapath)
    }
    pub(crate) fn color(self) -> &'static str {
        match self {
            Topo::Ceiling => "#9e9e9e",
            Topo::Kernel => "#e07b39",
            Topo::KernelBare => "#f2c14e",
            Topo::Ebpf => "#2f7ed8",
            Topo::DockerBridge => "#8e5ea2",
            Topo::DockerDatapath => "#3cba9f",
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
    /// Published port: the outside namespace to the node's uplink address
    /// and a published port, translated to the server endpoint.
    pub published: bool,
    /// Over IPv6 (the networks are dual stack; the outside has an IPv6
    /// address on the uplink): the twin of the IPv4 row [`Workload::v4_peer`].
    pub ipv6: bool,
}

impl Workload {
    /// The IPv4 workload an IPv6 one mirrors (`ew6-tcp-rr` -> `ew-tcp-rr`).
    pub fn v4_peer(&self) -> Option<&'static Workload> {
        if !self.ipv6 {
            return None;
        }
        let (scope, rest) = self.id.split_once('-')?;
        let v4 = format!("{}-{rest}", scope.strip_suffix('6')?);
        workload(&v4)
    }
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
    Workload {
        id: "ew-tcp-stream-1",
        label: "E-W TCP stream, 1 stream",
        kind: Kind::Stream(1),
        north_south: false,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ew-tcp-stream-4",
        label: "E-W TCP stream, 4 streams",
        kind: Kind::Stream(4),
        north_south: false,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ew-tcp-rr",
        label: "E-W TCP_RR",
        kind: Kind::Rr,
        north_south: false,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ew6-tcp-rr",
        label: "E-W TCP_RR (IPv6)",
        kind: Kind::Rr,
        north_south: false,
        published: false,
        ipv6: true,
    },
    Workload {
        id: "ew-tcp-crr",
        label: "E-W TCP_CRR",
        kind: Kind::Crr,
        north_south: false,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ew6-tcp-crr",
        label: "E-W TCP_CRR (IPv6)",
        kind: Kind::Crr,
        north_south: false,
        published: false,
        ipv6: true,
    },
    Workload {
        id: "ew-udp-64",
        label: "E-W UDP 64 B",
        kind: Kind::Udp,
        north_south: false,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ew6-udp-64",
        label: "E-W UDP 64 B (IPv6)",
        kind: Kind::Udp,
        north_south: false,
        published: false,
        ipv6: true,
    },
    Workload {
        id: "ns-tcp-stream-1",
        label: "N-S TCP stream, 1 stream",
        kind: Kind::Stream(1),
        north_south: true,
        published: false,
        ipv6: false,
    },
    Workload { id: "ns-tcp-rr", label: "N-S TCP_RR", kind: Kind::Rr, north_south: true, published: false, ipv6: false },
    Workload {
        id: "ns6-tcp-rr",
        label: "N-S TCP_RR (IPv6)",
        kind: Kind::Rr,
        north_south: true,
        published: false,
        ipv6: true,
    },
    Workload {
        id: "ns-tcp-crr",
        label: "N-S TCP_CRR",
        kind: Kind::Crr,
        north_south: true,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ns6-tcp-crr",
        label: "N-S TCP_CRR (IPv6)",
        kind: Kind::Crr,
        north_south: true,
        published: false,
        ipv6: true,
    },
    Workload {
        id: "ns-udp-64",
        label: "N-S UDP 64 B",
        kind: Kind::Udp,
        north_south: true,
        published: false,
        ipv6: false,
    },
    Workload {
        id: "ns6-udp-64",
        label: "N-S UDP 64 B (IPv6)",
        kind: Kind::Udp,
        north_south: true,
        published: false,
        ipv6: true,
    },
    Workload {
        id: "pp-tcp-stream-1",
        label: "Published port TCP stream",
        kind: Kind::Stream(1),
        north_south: false,
        published: true,
        ipv6: false,
    },
    Workload {
        id: "pp-tcp-rr",
        label: "Published port TCP_RR",
        kind: Kind::Rr,
        north_south: false,
        published: true,
        ipv6: false,
    },
    Workload {
        id: "pp-tcp-crr",
        label: "Published port TCP_CRR",
        kind: Kind::Crr,
        north_south: false,
        published: true,
        ipv6: false,
    },
    Workload {
        id: "pp-udp-64",
        label: "Published port UDP 64 B",
        kind: Kind::Udp,
        north_south: false,
        published: true,
        ipv6: false,
    },
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
    /// Container start/remove (`docker run -d` / `docker rm -f`) per Docker
    /// driver, in the same shape as the endpoint churn.
    pub containers: Vec<Churn>,
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
    /// An IPv6 row's median over its IPv4 twin's on the same topology.
    pub fn ratio_to_v4(&self, w: &Workload, t: Topo) -> Option<f64> {
        ratio(self.med(w.id, t), self.med(w.v4_peer()?.id, t))
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

/// The issues' ratio goals for the eBPF datapath beyond "E-W ≥ 0.95×
/// ceiling": (workload, base topology, ebpf / base at least).
const RATIO_TARGETS: &[(&str, Topo, f64)] = &[
    ("ew-tcp-rr", Topo::Kernel, 1.2),
    ("ew-udp-64", Topo::Kernel, 1.4),
    ("ns-tcp-rr", Topo::Kernel, 1.3),
    ("ns-udp-64", Topo::Kernel, 1.3),
    ("ns-tcp-crr", Topo::Kernel, 1.5),
    ("pp-tcp-rr", Topo::Kernel, 1.3),
    ("pp-udp-64", Topo::Kernel, 1.3),
    ("pp-tcp-crr", Topo::Kernel, 1.5),
    ("pp-tcp-rr", Topo::Ceiling, 0.85),
];

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
    for w in WORKLOADS.iter().filter(|w| !w.north_south && !w.published && !w.ipv6) {
        ratio_target(w.id, Topo::Ceiling, 0.95);
    }
    for (w, base, goal) in RATIO_TARGETS {
        ratio_target(w, *base, *goal);
    }
    // The IPv6 rows: the same goals as their IPv4 twins.
    for w6 in WORKLOADS.iter().filter(|w| w.ipv6) {
        let Some(v4) = w6.v4_peer() else { continue };
        if !v4.north_south && !v4.published {
            ratio_target(w6.id, Topo::Ceiling, 0.95);
        }
        for (_, base, goal) in RATIO_TARGETS.iter().filter(|(w, _, _)| *w == v4.id) {
            ratio_target(w6.id, *base, *goal);
        }
    }
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

pub(crate) fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "–".into())
}

pub(crate) fn ratio_s(x: Option<f64>) -> String {
    opt(x, |v| format!("{v:.2}×"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Results {
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
    fn ipv6_rows_mirror_ipv4_rows() {
        let six: Vec<&str> = WORKLOADS.iter().filter(|w| w.ipv6).map(|w| w.id).collect();
        assert_eq!(six, ["ew6-tcp-rr", "ew6-tcp-crr", "ew6-udp-64", "ns6-tcp-rr", "ns6-tcp-crr", "ns6-udp-64"]);
        for w in WORKLOADS.iter().filter(|w| w.ipv6) {
            let v4 = w.v4_peer().unwrap_or_else(|| panic!("{} has no IPv4 twin", w.id));
            assert_eq!((v4.kind, v4.north_south, v4.published, v4.ipv6), (w.kind, w.north_south, w.published, false));
            // Listed right after its twin, so the tables show them side by side.
            let i = WORKLOADS.iter().position(|x| x.id == w.id).unwrap();
            assert_eq!(WORKLOADS[i - 1].id, v4.id);
        }
        assert!(workload("ew-tcp-rr").unwrap().v4_peer().is_none());
        let mut r = sample();
        for (t, v) in [(Topo::Ebpf, 48.0), (Topo::Kernel, 20.0), (Topo::Ceiling, 50.0)] {
            r.cell_mut("ew6-tcp-rr", t).values = vec![v];
        }
        assert_eq!(r.ratio_to_v4(workload("ew6-tcp-rr").unwrap(), Topo::Ebpf), Some(0.5));
        let t = targets(&r);
        let goal = |what: &str| t.iter().find(|x| x.what == what).unwrap_or_else(|| panic!("no target {what}"));
        assert_eq!(goal("E-W TCP_RR (IPv6): ebpf / ceiling").pass, Some(true));
        assert_eq!(
            (goal("E-W TCP_RR (IPv6): ebpf / kernel").measured, goal("E-W TCP_RR (IPv6): ebpf / kernel").goal.as_str()),
            (Some(2.4), "≥ 1.20×")
        );
        assert_eq!(goal("N-S TCP_CRR (IPv6): ebpf / kernel").goal, "≥ 1.50×");
        assert_eq!(goal("E-W UDP 64 B (IPv6): ebpf / kernel").goal, "≥ 1.40×");
        assert!(!t.iter().any(|x| x.what.starts_with("N-S TCP_RR (IPv6): ebpf / ceiling")));
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
