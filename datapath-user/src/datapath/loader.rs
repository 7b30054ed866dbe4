//! The loaded eBPF datapath: programs, maps, links and the aya-log reader.

use std::collections::HashMap as StdHashMap;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType};
use aya::programs::LinkOrder;
use aya::programs::SchedClassifier;
use aya::Ebpf;
use datapath_common::{
    Counter, CtConfig, EndpointInfo, NetworkInfo, MAP_CT, MAP_CT_CONFIG, MAP_ENDPOINTS, MAP_ENDPOINTS_BY_IP,
    MAP_NETWORKS, MAP_STATS, MAP_SUBNETS, MAX_NETWORKS, NET_F_PRESENT, PROG_FROM_ENDPOINT, PROG_FROM_UPLINK,
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

use crate::datapath::conntrack::{self, CtTable};
use crate::datapath::object;
use crate::datapath::tables::{Counters, Tables};

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("{}", object::MISSING_HINT)]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0} is missing from the object")]
    NoProgram(&'static str),
    #[error("eBPF map {0} is missing from the object")]
    NoMap(&'static str),
    #[error("eBPF program {name}: {}", trim_verifier_log(&source.to_string()))]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("attaching {prog} to {iface}: {source}")]
    Attach { prog: &'static str, iface: String, source: aya::programs::ProgramError },
    #[error("eBPF map {0}: an earlier walk of it panicked")]
    Poisoned(&'static str),
    #[error("eBPF map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
}

/// How TC programs are attached to interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links where the kernel has them (>= 6.6), clsact otherwise.
    #[default]
    Auto,
    /// TCX links (bpf_link, kernel >= 6.6).
    Tcx,
    /// A clsact qdisc with a direct-action filter (shown by older
    /// `bpftool net`, works on any kernel).
    Clsact,
}

/// Where a TC program is attached, as shown by `endpoint inspect`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub program: &'static str,
    pub hook: &'static str,
    /// `bpftool prog show tag T` (the tag is stable across agent restarts,
    /// unlike the program id).
    pub prog_tag: Option<String>,
}

/// Programs and maps of the eBPF datapath, owned by the agent.
pub struct Bpf {
    /// TCX links (else clsact filters), from the attach mode and the kernel.
    tcx: bool,
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    by_ip: HashMap<MapData, u32, EndpointInfo>,
    networks: Array<MapData, NetworkInfo>,
    subnets: LpmTrie<MapData, u32, u32>,
    ct_config: Array<MapData, CtConfig>,
    tables: Tables,
    /// Tag of the loaded endpoint program (read once: `inspect` shows it).
    prog_tag: Option<String>,
    links: StdHashMap<u32, SchedClassifierLink>,
    uplink_links: StdHashMap<u32, SchedClassifierLink>,
}

/// Forwards aya-log records (the packet traces) to the agent's trace
/// subscribers.
struct TraceSink {
    tx: broadcast::Sender<String>,
}

impl log::Log for TraceSink {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // No subscriber is fine: the line is simply dropped.
        let _ = self.tx.send(record.args().to_string());
    }
    fn flush(&self) {}
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map { map, source }
}

impl Bpf {
    /// Loads the embedded object, verifies the programs and starts the
    /// aya-log reader task, which publishes trace lines on `trace_tx`.
    pub fn load(trace_tx: broadcast::Sender<String>, mode: AttachMode) -> Result<Self, BpfError> {
        let bytes = object::bytes().ok_or(BpfError::NoObject)?;
        raise_memlock();
        let mut ebpf = Ebpf::load(bytes)?;
        match aya_log::EbpfLogger::init_with_logger(&mut ebpf, TraceSink { tx: trace_tx }) {
            // SAFETY: the logger owns its ring buffer's fd for its whole life
            // and the AsyncFd owns the logger, so the fd stays open and the same.
            Ok(logger) => match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
                Ok(mut fd) => {
                    tokio::spawn(async move {
                        loop {
                            let Ok(mut guard) = fd.readable_mut().await else { break };
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    });
                }
                Err(e) => tracing::warn!("packet traces unavailable: {}", std::io::Error::from(e)),
            },
            Err(e) => tracing::warn!("packet traces unavailable: {e}"),
        }
        for name in [PROG_FROM_ENDPOINT, PROG_FROM_UPLINK] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::NoProgram(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load().map_err(|source| BpfError::Program { name, source })?;
        }
        let prog_tag =
            ebpf.program(PROG_FROM_ENDPOINT).and_then(|p| p.info().ok()).map(|i| format!("{:016x}", i.tag()));
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(BpfError::NoMap(name));
        let endpoints = HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        let by_ip = HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS_BY_IP)?).map_err(map_err(MAP_ENDPOINTS_BY_IP))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        let ct = HashMap::try_from(take(&mut ebpf, MAP_CT)?).map_err(map_err(MAP_CT))?;
        let tables = Tables::new(Counters::new(stats), CtTable::new(ct, datapath_common::CT_MAX_ENTRIES));
        let networks = Array::try_from(take(&mut ebpf, MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        let subnets = LpmTrie::try_from(take(&mut ebpf, MAP_SUBNETS)?).map_err(map_err(MAP_SUBNETS))?;
        let ct_config = Array::try_from(take(&mut ebpf, MAP_CT_CONFIG)?).map_err(map_err(MAP_CT_CONFIG))?;
        Ok(Bpf {
            tcx: uses_tcx(mode),
            ebpf,
            endpoints,
            by_ip,
            networks,
            subnets,
            ct_config,
            tables,
            prog_tag,
            links: StdHashMap::new(),
            uplink_links: StdHashMap::new(),
        })
    }

    /// Attaches the from-endpoint program to the ingress of `iface`
    /// (TCX where the kernel has it, clsact otherwise).
    pub fn attach(&mut self, iface: &str, ifindex: u32) -> Result<(), BpfError> {
        let link = self.attach_prog(PROG_FROM_ENDPOINT, iface)?;
        self.links.insert(ifindex, link);
        Ok(())
    }

    /// Attaches the reverse-NAT program (`dp_from_uplink`) to the ingress of
    /// the uplink `iface`. Idempotent: a second call for the same ifindex
    /// keeps the existing attachment. Packets without a NAT mapping pass
    /// untouched, so the node's own traffic is not affected.
    pub fn attach_uplink(&mut self, iface: &str, ifindex: u32) -> Result<(), BpfError> {
        if self.uplink_links.contains_key(&ifindex) {
            return Ok(());
        }
        let link = self.attach_prog(PROG_FROM_UPLINK, iface)?;
        self.uplink_links.insert(ifindex, link);
        Ok(())
    }

    /// Detaches `dp_from_uplink` from an uplink; not attached is fine.
    pub fn detach_uplink(&mut self, ifindex: u32) {
        self.uplink_links.remove(&ifindex);
    }

    pub fn is_uplink_attached(&self, ifindex: u32) -> bool {
        self.uplink_links.contains_key(&ifindex)
    }

    fn attach_prog(&mut self, name: &'static str, iface: &str) -> Result<SchedClassifierLink, BpfError> {
        let attach_err = |source| BpfError::Attach { prog: name, iface: iface.to_string(), source };
        let tcx = self.tcx;
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(name).ok_or(BpfError::NoProgram(name))?.try_into().map_err(attach_err)?;
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            // The clsact qdisc may exist already, which is fine. Filters
            // outlive the process that attached them: drop those an earlier
            // (killed) agent left, so the program runs once, not twice.
            let _ = tc::qdisc_add_clsact(iface);
            let _ = tc::qdisc_detach_program(iface, TcAttachType::Ingress, name);
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let id = prog.attach_with_options(iface, TcAttachType::Ingress, options).map_err(attach_err)?;
        prog.take_link(id).map_err(attach_err)
    }

    /// Detaches the program from an interface (dropping the link detaches).
    pub fn detach(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.links.contains_key(&ifindex)
    }

    /// How the endpoint program is attached to `ifindex`, for `inspect`
    /// (bpftool before 7.3 cannot show TCX attachments per device).
    pub fn attachment(&self, ifindex: u32) -> Option<Attachment> {
        if !self.links.contains_key(&ifindex) {
            return None;
        }
        Some(Attachment {
            program: PROG_FROM_ENDPOINT,
            hook: if self.tcx { "tcx/ingress" } else { "clsact/ingress" },
            prog_tag: self.prog_tag.clone(),
        })
    }

    pub fn upsert_endpoint(&mut self, info: EndpointInfo) -> Result<(), BpfError> {
        self.endpoints.insert(info.ifindex, info, 0).map_err(map_err(MAP_ENDPOINTS))?;
        if let Err(e) = self.by_ip.insert(info.ipv4, info, 0) {
            let _ = self.endpoints.remove(&info.ifindex);
            return Err(map_err(MAP_ENDPOINTS_BY_IP)(e));
        }
        Ok(())
    }

    /// Removes an endpoint from both maps; absent entries are fine.
    pub fn remove_endpoint(&mut self, ifindex: u32, ipv4: u32) {
        let _ = self.by_ip.remove(&ipv4);
        let _ = self.endpoints.remove(&ifindex);
    }

    /// Publishes a local network to the datapath: its policy and masquerade
    /// settings (`NETWORKS`) and its subnet (`SUBNETS`, `info.subnet` /
    /// `prefix_len`), so the other networks' endpoints are isolated from it.
    /// Idempotent (updates in place). `id` must be below `MAX_NETWORKS`
    /// (`NETWORKS` is an array indexed by it).
    pub fn set_network(&mut self, id: u32, info: NetworkInfo, prefix_len: u32) -> Result<(), BpfError> {
        if id >= MAX_NETWORKS {
            return Err(map_err(MAP_NETWORKS)(aya::maps::MapError::OutOfBounds {
                index: id,
                max_entries: MAX_NETWORKS,
            }));
        }
        self.subnets.insert(&LpmKey::new(prefix_len, info.subnet), id, 0).map_err(map_err(MAP_SUBNETS))?;
        let info = NetworkInfo { flags: info.flags | NET_F_PRESENT, ..info };
        if let Err(e) = self.networks.set(id, info, 0) {
            let _ = self.subnets.remove(&LpmKey::new(prefix_len, info.subnet));
            return Err(map_err(MAP_NETWORKS)(e));
        }
        Ok(())
    }

    /// Removes a network from both maps; absent entries are fine. `subnet`
    /// is wire order, as in `NetworkInfo::subnet`.
    pub fn remove_network(&mut self, id: u32, subnet: u32, prefix_len: u32) {
        if id < MAX_NETWORKS {
            let _ = self.networks.set(id, NetworkInfo::default(), 0);
        }
        let _ = self.subnets.remove(&LpmKey::new(prefix_len, subnet));
    }

    /// Sets the connection tracker lifetimes (seconds; 0 = the default:
    /// TCP SYN 60, established 6 h, closing 10, UDP 60, ICMP 60). Applies to
    /// every packet from now on (existing entries get the new lifetime on
    /// their next packet).
    pub fn set_ct_config(&mut self, cfg: CtConfig) -> Result<(), BpfError> {
        self.ct_config.set(0, cfg, 0).map_err(map_err(MAP_CT_CONFIG))
    }

    /// The maps read and cleaned outside the agent's state lock (counters,
    /// the connection tracker): cheap handles shared with the upkeep task
    /// and with read-only API requests.
    pub fn tables(&self) -> Tables {
        self.tables.clone()
    }

    /// Counters summed over CPUs, for every known reason code.
    pub fn stats(&self) -> Result<Vec<(u32, Counter)>, BpfError> {
        self.tables.counters.read()
    }

    /// Tracked flows (see [`CtTable::flows`]).
    pub fn conntrack_flows(&self) -> Result<Vec<conntrack::Flow>, BpfError> {
        self.tables.ct()?.flows()
    }

    /// Empties the connection tracker (see [`CtTable::flush`]).
    pub fn conntrack_flush(&mut self) -> Result<usize, BpfError> {
        self.tables.ct()?.flush()
    }

    /// One garbage collection pass (see [`CtTable::gc`]).
    pub fn conntrack_gc(&mut self) -> Result<conntrack::GcReport, BpfError> {
        self.tables.ct()?.gc()
    }
}

fn uses_tcx(mode: AttachMode) -> bool {
    match mode {
        AttachMode::Auto => {
            aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
        }
        AttachMode::Tcx => true,
        AttachMode::Clsact => false,
    }
}

/// A verifier rejection carries the whole log (thousands of lines): keep the
/// head and the tail, which say what failed. `DATAPATH_LOG=debug` logs it all.
fn trim_verifier_log(msg: &str) -> String {
    const HEAD: usize = 3;
    const TAIL: usize = 25;
    let lines: Vec<&str> = msg.lines().collect();
    if lines.len() <= HEAD + TAIL {
        return msg.to_string();
    }
    tracing::debug!("full verifier log:\n{msg}");
    format!(
        "{}\n... ({} verifier lines omitted) ...\n{}",
        lines[..HEAD].join("\n"),
        lines.len() - HEAD - TAIL,
        lines[lines.len() - TAIL..].join("\n")
    )
}

fn raise_memlock() {
    // Kernels >= 5.11 account BPF memory to the cgroup; older ones need this.
    let r = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
    if let Err(e) = r {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
    }
}
