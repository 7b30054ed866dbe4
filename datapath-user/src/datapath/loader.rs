//! The loaded eBPF datapath: programs, maps, links and the aya-log reader.

use std::collections::BTreeMap;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use datapath_common::{
    Counter, CtConfig, Endpoint6, EndpointInfo, Network6Info, NetworkInfo, PortKey, PortTarget, Published6Key,
    CT_MAX_ENTRIES, MAP_CT, MAP_CT6, MAP_CT_CONFIG, MAP_ENDPOINTS, MAP_ENDPOINTS6, MAP_ENDPOINTS6_BY_IP,
    MAP_ENDPOINTS_BY_IP, MAP_NETWORKS, MAP_NETWORKS6, MAP_NET_STATS, MAP_PORTS, MAP_PUBLISHED6, MAP_STATS, MAP_SUBNETS,
    MAP_SUBNETS6, PROG_FROM_ENDPOINT, PROG_FROM_UPLINK,
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

use crate::datapath::conntrack::{self, CtTable};
use crate::datapath::links::{loaded_tags, Attached, Attachments, Tags};
use crate::datapath::object;
use crate::datapath::pins::{copy_ct, copy_ct6, copy_stats, Fate, Layout, PinReport, Pins, Plan};
use crate::datapath::tables::{Counters, Tables};

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("{0}")]
    NoObject(String),
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
    #[error("pinned datapath: {0}")]
    Pin(String),
    #[error("per-CPU map {map}: {reason}")]
    PerCpu { map: &'static str, reason: String },
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
    pub(super) endpoints: HashMap<MapData, u32, EndpointInfo>,
    pub(super) by_ip: HashMap<MapData, u32, EndpointInfo>,
    pub(super) endpoints6: HashMap<MapData, u32, Endpoint6>,
    pub(super) by_ip6: HashMap<MapData, [u8; 16], EndpointInfo>,
    pub(super) networks: Array<MapData, NetworkInfo>,
    pub(super) subnets: LpmTrie<MapData, u32, u32>,
    pub(super) networks6: Array<MapData, Network6Info>,
    pub(super) subnets6: LpmTrie<MapData, [u8; 16], u32>,
    pub(super) ct_config: Array<MapData, CtConfig>,
    pub(super) ports: HashMap<MapData, PortKey, PortTarget>,
    pub(super) published6: HashMap<MapData, Published6Key, u32>,
    tables: Tables,
    /// Where maps and links are pinned (`None`: nothing is).
    pins: Option<Pins>,
    /// What the load did with each pinned map, until the migration ends.
    plan: Plan,
    /// Tags of the loaded programs (`inspect` shows the endpoint one).
    tags: BTreeMap<&'static str, u64>,
    /// Tags of the programs on the node at load time, by id: is a pinned
    /// link running the program just loaded?
    running: Tags,
    links: Attachments,
    uplink_links: Attachments,
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

/// How to load the datapath.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub mode: AttachMode,
    /// Pin maps and links here and reuse what is pinned (the agent); `None`
    /// loads private maps that go with the process (program tests).
    pub pins: Option<Pins>,
    /// Capacity of the connection tracker (`None`: the object's).
    pub ct_max_entries: Option<u32>,
}

/// The maps the object declares (not the sections' data maps), with the
/// layout the load gives them.
fn declared_maps(bytes: &[u8], opts: &LoadOptions) -> Result<BTreeMap<String, Layout>, BpfError> {
    let obj = aya_obj::Object::parse(bytes).map_err(|e| BpfError::Pin(format!("parsing the eBPF object: {e}")))?;
    Ok(obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            let max_entries = match opts.ct_max_entries {
                Some(n) if name == MAP_CT || name == MAP_CT6 => n,
                _ => m.max_entries(),
            };
            let layout = Layout {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries,
                flags: m.map_flags(),
            };
            (name.clone(), layout)
        })
        .collect())
}

/// Starts the aya-log reader task, which publishes trace lines on `tx`.
fn start_trace_reader(ebpf: &mut Ebpf, tx: broadcast::Sender<String>) {
    match aya_log::EbpfLogger::init_with_logger(ebpf, TraceSink { tx }) {
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
}

impl Bpf {
    /// Loads the embedded object with private maps (program tests).
    pub fn load(trace_tx: broadcast::Sender<String>, mode: AttachMode) -> Result<Self, BpfError> {
        Self::load_with(trace_tx, LoadOptions { mode, ..Default::default() }).map(|(bpf, _)| bpf)
    }

    /// Loads the embedded object: maps pinned and reused (or migrated) as
    /// `opts.pins` says, programs verified, the aya-log reader started. A
    /// failure leaves what is pinned as it was.
    pub fn load_with(trace_tx: broadcast::Sender<String>, opts: LoadOptions) -> Result<(Self, PinReport), BpfError> {
        let bytes = object::to_load().map_err(BpfError::NoObject)?;
        raise_memlock();
        let declared = declared_maps(bytes, &opts)?;
        let plan = match &opts.pins {
            Some(pins) => pins.plan(&declared)?,
            None => Plan::default(),
        };
        let loaded = Self::load_object(bytes, trace_tx, &opts, &declared, &plan);
        let (bpf, ct_entries) = match loaded {
            Ok(l) => l,
            Err(e) => {
                if let Some(pins) = &opts.pins {
                    pins.abort(&plan);
                }
                return Err(e);
            }
        };
        Ok((bpf, PinReport { maps: plan.fates, ct_entries }))
    }

    fn load_object(
        bytes: &[u8],
        trace_tx: broadcast::Sender<String>,
        opts: &LoadOptions,
        declared: &BTreeMap<String, Layout>,
        plan: &Plan,
    ) -> Result<(Self, usize), BpfError> {
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &opts.pins {
            for name in declared.keys() {
                loader.map_pin_path(name.as_str(), pins.map_path(name));
            }
        }
        if let Some(n) = opts.ct_max_entries {
            loader.map_max_entries(MAP_CT, n);
            loader.map_max_entries(MAP_CT6, n);
        }
        let mut ebpf = loader.load(bytes)?;
        start_trace_reader(&mut ebpf, trace_tx);
        let mut tags = BTreeMap::new();
        for name in [PROG_FROM_ENDPOINT, PROG_FROM_UPLINK] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::NoProgram(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load().map_err(|source| BpfError::Program { name, source })?;
            let tag = prog.info().map_err(|source| BpfError::Program { name, source })?.tag();
            tags.insert(name, tag);
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(BpfError::NoMap(name));
        let endpoints = HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?;
        let by_ip = HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS_BY_IP)?).map_err(map_err(MAP_ENDPOINTS_BY_IP))?;
        let endpoints6 = HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS6)?).map_err(map_err(MAP_ENDPOINTS6))?;
        let by_ip6 =
            HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS6_BY_IP)?).map_err(map_err(MAP_ENDPOINTS6_BY_IP))?;
        let networks6 = Array::try_from(take(&mut ebpf, MAP_NETWORKS6)?).map_err(map_err(MAP_NETWORKS6))?;
        let subnets6 = LpmTrie::try_from(take(&mut ebpf, MAP_SUBNETS6)?).map_err(map_err(MAP_SUBNETS6))?;
        let mut stats = PerCpuArray::try_from(take(&mut ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        if let (Some(Fate::Migrated(_)), Some(pins)) = (plan.fates.get(MAP_STATS), &opts.pins) {
            if let Some(old) = pins.pending_map(MAP_STATS) {
                copy_stats(old, &mut stats)?;
            }
        }
        let net_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_NET_STATS)?).map_err(map_err(MAP_NET_STATS))?;
        let mut ct = HashMap::try_from(take(&mut ebpf, MAP_CT)?).map_err(map_err(MAP_CT))?;
        let ct_entries = match (plan.fates.get(MAP_CT), &opts.pins) {
            (Some(Fate::Migrated(_)), Some(pins)) => match pins.pending_map(MAP_CT) {
                Some(old) => copy_ct(old, &mut ct)?,
                None => 0,
            },
            (Some(Fate::Reused), _) => ct.keys().count(),
            _ => 0,
        };
        // CT6: new with the IPv6 build (created then), or migrated when its
        // capacity changed.
        let mut ct6 = HashMap::try_from(take(&mut ebpf, MAP_CT6)?).map_err(map_err(MAP_CT6))?;
        let ct6_entries = match (plan.fates.get(MAP_CT6), &opts.pins) {
            (Some(Fate::Migrated(_)), Some(pins)) => match pins.pending_map(MAP_CT6) {
                Some(old) => copy_ct6(old, &mut ct6)?,
                None => 0,
            },
            (Some(Fate::Reused), _) => ct6.keys().count(),
            _ => 0,
        };
        let ct_entries = ct_entries + ct6_entries;
        let capacity = opts.ct_max_entries.unwrap_or(CT_MAX_ENTRIES);
        let published6 = HashMap::try_from(take(&mut ebpf, MAP_PUBLISHED6)?).map_err(map_err(MAP_PUBLISHED6))?;
        let networks = Array::try_from(take(&mut ebpf, MAP_NETWORKS)?).map_err(map_err(MAP_NETWORKS))?;
        let subnets = LpmTrie::try_from(take(&mut ebpf, MAP_SUBNETS)?).map_err(map_err(MAP_SUBNETS))?;
        let ct_config = Array::try_from(take(&mut ebpf, MAP_CT_CONFIG)?).map_err(map_err(MAP_CT_CONFIG))?;
        let ports = HashMap::try_from(take(&mut ebpf, MAP_PORTS)?).map_err(map_err(MAP_PORTS))?;
        let bpf = Bpf {
            tcx: uses_tcx(opts.mode),
            pins: opts.pins.clone(),
            plan: plan.clone(),
            ebpf,
            endpoints,
            by_ip,
            endpoints6,
            by_ip6,
            networks,
            subnets,
            networks6,
            subnets6,
            ct_config,
            ports,
            published6,
            tables: Tables::new(Counters::new(stats, net_stats), CtTable::new(ct, ct6, capacity)),
            tags,
            running: loaded_tags(),
            links: Attachments::default(),
            uplink_links: Attachments::default(),
        };
        Ok((bpf, ct_entries))
    }

    /// Attaches the from-endpoint program to the ingress of `iface`
    /// (TCX where the kernel has it, clsact otherwise); keeps or replaces
    /// in place what a previous agent attached there.
    pub fn attach(&mut self, iface: &str, ifindex: u32) -> Result<Attached, BpfError> {
        self.attach_prog(PROG_FROM_ENDPOINT, iface, ifindex)
    }

    /// Attaches the reverse-NAT program (`dp_from_uplink`) to the ingress of
    /// the uplink `iface`. Idempotent: a second call for the same ifindex
    /// keeps the existing attachment. Packets without a NAT mapping pass
    /// untouched, so the node's own traffic is not affected.
    pub fn attach_uplink(&mut self, iface: &str, ifindex: u32) -> Result<Attached, BpfError> {
        if self.uplink_links.contains(ifindex) {
            return Ok(Attached::Kept);
        }
        self.attach_prog(PROG_FROM_UPLINK, iface, ifindex)
    }

    /// Detaches `dp_from_uplink` from an uplink; not attached is fine.
    pub fn detach_uplink(&mut self, ifindex: u32) {
        self.uplink_links.detach(ifindex);
    }

    pub fn is_uplink_attached(&self, ifindex: u32) -> bool {
        self.uplink_links.contains(ifindex)
    }

    fn attach_prog(&mut self, name: &'static str, iface: &str, ifindex: u32) -> Result<Attached, BpfError> {
        // After a migration, or when a map was created anew (its pin was
        // lost), the running programs use the old maps: they are replaced
        // even when their code is the same.
        let migrating = self.plan.fates.values().any(|f| !matches!(f, Fate::Reused));
        let tag = if migrating { None } else { self.tags.get(name).copied() };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::NoProgram(name))?
            .try_into()
            .map_err(|source| BpfError::Program { name, source })?;
        let links = if name == PROG_FROM_UPLINK { &mut self.uplink_links } else { &mut self.links };
        links.attach(prog, name, tag, &self.running, self.pins.as_ref(), self.tcx, iface, ifindex)
    }

    /// Detaches the program from an interface.
    pub fn detach(&mut self, ifindex: u32) {
        self.links.detach(ifindex);
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.links.contains(ifindex)
    }

    /// Every attachment is in place again after a load that migrated maps:
    /// copies what the old programs wrote into the old conntrack table
    /// since the first copy, then drops the old maps' pins.
    pub fn finish_migration(&mut self) -> Result<usize, BpfError> {
        let Some(pins) = self.pins.clone() else { return Ok(0) };
        let mut copied = 0;
        if matches!(self.plan.fates.get(MAP_CT), Some(Fate::Migrated(_))) {
            if let Some(old) = pins.pending_map(MAP_CT) {
                copied = self.tables.ct()?.copy_from(old)?;
            }
        }
        if matches!(self.plan.fates.get(MAP_CT6), Some(Fate::Migrated(_))) {
            if let Some(old) = pins.pending_map(MAP_CT6) {
                copied += self.tables.ct()?.copy6_from(old)?;
            }
        }
        pins.finish(&self.plan);
        self.plan = Plan::default();
        Ok(copied)
    }

    /// Removes the pinned links nobody uses any more (an interface the state
    /// no longer has, or one that vanished while the agent was away): call
    /// it once every attachment of the state is made. Returns how many.
    pub fn prune_link_pins(&mut self) -> usize {
        let Some(pins) = &self.pins else { return 0 };
        let used: std::collections::BTreeSet<&str> =
            self.links.pinned_ifaces().chain(self.uplink_links.pinned_ifaces()).collect();
        let Ok(dir) = std::fs::read_dir(pins.link_path("")) else { return 0 };
        let mut pruned = 0;
        for entry in dir.filter_map(Result::ok) {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| !used.contains(n)) && std::fs::remove_file(entry.path()).is_ok() {
                pruned += 1;
            }
        }
        pruned
    }

    /// The agent stops and leaves the datapath running: attachments stay.
    pub fn release(&mut self) {
        self.links.release();
        self.uplink_links.release();
    }

    /// How the endpoint program is attached to `ifindex`, for `inspect`
    /// (bpftool before 7.3 cannot show TCX attachments per device).
    pub fn attachment(&self, ifindex: u32) -> Option<Attachment> {
        if !self.links.contains(ifindex) {
            return None;
        }
        Some(Attachment {
            program: PROG_FROM_ENDPOINT,
            hook: if self.tcx { "tcx/ingress" } else { "clsact/ingress" },
            prog_tag: self.tags.get(PROG_FROM_ENDPOINT).map(|t| format!("{t:016x}")),
        })
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
