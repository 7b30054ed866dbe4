//! The agent: owns the desired state, the topology and the eBPF datapath,
//! and serves the API on a unix socket.
//!
//! # Concurrency model
//!
//! * **Writers** (creates, removes, `run`, trace subscriptions, the periodic
//!   uplink sync) take [`Inner`] behind one async mutex, one at a time, so
//!   every change sees a consistent state and persists it in order.
//! * **Readers** (`ls`, `inspect`, `ps`, `stats`, `conntrack ls`, `ping`)
//!   never take that lock. Each writer publishes an immutable [`Snapshot`]
//!   of the state when it is done ([`Agent::publish`]); readers render from
//!   the latest one, and read the counters and the conntrack table through
//!   their own map handles ([`Tables`]). A slow create never delays them.
//! * **Nothing blocks the runtime**: namespace work (threads that enter a
//!   namespace), `nft`, file writes with fsync, process spawns and map
//!   walks run on blocking threads ([`blocking`]); the short map updates
//!   and program attachments made while holding the writer lock run in
//!   [`tokio::task::block_in_place`].
//! * The conntrack GC ([`upkeep`]) walks the table on a blocking thread
//!   without the writer lock.
//!
//! One request's data flows down: `serve` (socket) -> dispatch in [`Agent::handle`]
//! -> `networks`/`endpoints`/`containers` (the writer side) or `snapshot`
//! (the reader side) -> `host` (netlink, namespaces, netfilter) and
//! `datapath` (maps, programs).

mod attach;
mod cni;
mod containers;
mod endpoints;
mod error;
mod lifecycle;
mod networks;
mod ports;
mod serve;
mod snapshot;
mod trace;
mod upkeep;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Mutex};

use crate::api::{ApiError, Request, API_VERSION};
use crate::datapath::{AttachMode, Attached, Bpf, GcReport, PinReport, Tables};
use crate::host::netlink::Netlink;
use crate::state::{DatapathKind, EndpointSpec, NetworkSpec, State};

pub use serve::{bind_socket, run};
pub use snapshot::Snapshot;

pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "datapath0";
pub const DEFAULT_SUBNET: &str = "10.10.0.0/16";
/// Pseudo-network of endpoints that are a namespace with only `lo`.
pub const NONE_NETWORK: &str = "none";
/// Test-only fault injection: `endpoint:<step>` fails every endpoint create
/// right after that step, `connect:<step>` every link on a further network
/// (`network connect`, `--network` repeated), to prove the rollback.
pub const FAILPOINT_ENV: &str = "DATAPATH_FAILPOINT";

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub default_network: bool,
    pub default_subnet: Ipv4Net,
    /// The default network is dual stack (`--default-ipv6`), on this IPv6
    /// subnet when given (a random unique-local /64 otherwise).
    pub default_ipv6: bool,
    pub default_subnet_v6: Option<ipnet::Ipv6Net>,
    /// Remove every endpoint and network (and the state) on shutdown.
    pub cleanup_on_exit: bool,
    pub attach_mode: AttachMode,
    /// Datapath of networks created without `--datapath` (and of the default network).
    pub default_datapath: DatapathKind,
    /// SNAT port range; chosen clear of the node's ephemeral ports when unset.
    pub nat_ports: Option<(u16, u16)>,
    /// Connection-tracking lifetimes (seconds; 0 = the datapath's default).
    pub ct: datapath_common::CtConfig,
    /// Seconds between conntrack garbage collections.
    pub ct_gc_interval: u64,
    /// Capacity of the conntrack table (entries).
    pub ct_max_entries: u32,
    /// Serve Docker's remote network driver on this socket ([`crate::docker`]).
    pub docker_plugin: Option<PathBuf>,
    /// Where the embedded DNS reads the node's upstream resolvers
    /// (`/etc/resolv.conf`).
    pub upstream_resolv_conf: PathBuf,
}

/// The writer side: everything a change needs, behind [`Agent::inner`].
pub(crate) struct Inner {
    cfg: AgentConfig,
    state: State,
    nl: Netlink,
    bpf: Bpf,
    /// ifindex of each network's bridge.
    bridges: BTreeMap<String, u32>,
    /// ifindex of each endpoint's host veth (its first network's).
    host_ifindex: BTreeMap<String, u32>,
    /// ifindex of each attachment's host veth, by its name.
    attach_ifindex: BTreeMap<String, u32>,
    /// Trace subscribers per endpoint, and for "all".
    trace_refs: HashMap<String, usize>,
    trace_all: usize,
    failpoint: Option<String>,
    /// SNAT source port range, clear of the node's ephemeral ports.
    nat_ports: (u16, u16),
    /// What the datapath was last told about each network (by name).
    net_info: BTreeMap<String, datapath_common::NetworkInfo>,
    /// The same for the IPv6 half of dual-stack networks.
    net_info6: BTreeMap<String, datapath_common::Network6Info>,
    /// Uplinks with the reverse-NAT program attached (ifindex -> name).
    uplinks: BTreeMap<u32, String>,
    /// The nft script last applied: unchanged scripts are not re-applied
    /// (spawning nft costs milliseconds per endpoint).
    applied_nft: Option<String>,
    /// What this agent's start found and did (shown by `stats`).
    start: StartReport,
    /// What the `PORTS` map was last made to hold (`None` before the
    /// first sync, which makes the map match whatever a previous agent
    /// left).
    ports_written: Option<BTreeMap<datapath_common::PortKey, datapath_common::PortTarget>>,
    /// What `PUBLISHED6` was last brought to.
    published6_written: Option<std::collections::BTreeSet<datapath_common::Published6Key>>,
}

/// What the agent's start did with what the previous one left running.
#[derive(Clone, Debug, Default)]
pub struct StartReport {
    pub pins: PinReport,
    pub attachments_kept: usize,
    pub attachments_replaced: usize,
    pub attachments_created: usize,
    pub endpoints_rolled_back: usize,
    pub stale_entries_removed: usize,
}

impl StartReport {
    fn count(&mut self, how: Attached) {
        match how {
            Attached::Kept => self.attachments_kept += 1,
            Attached::Replaced => self.attachments_replaced += 1,
            Attached::Created => self.attachments_created += 1,
        }
    }
}

pub struct Agent {
    cfg: AgentConfig,
    inner: Mutex<Inner>,
    /// What readers see: replaced whole by every writer (never held across
    /// an await).
    view: RwLock<Arc<Snapshot>>,
    /// Counters and conntrack, read and cleaned without `inner`.
    tables: Tables,
    /// The last conntrack GC's report (table pressure for `stats`).
    gc_report: std::sync::Mutex<Option<GcReport>>,
    trace_tx: broadcast::Sender<String>,
    /// The embedded DNS: told every state change by [`Agent::publish`].
    dns: Arc<crate::dns::Dns>,
}

/// Runs blocking work (namespace threads, `nft`, fsync, map walks) off the
/// async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("blocking task failed: {e}")))
}

pub(crate) fn to_value<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

impl Agent {
    /// Loads the datapath, restores the persisted state and creates the
    /// default network if needed.
    pub async fn start(cfg: AgentConfig) -> anyhow::Result<Arc<Agent>> {
        let (trace_tx, _) = broadcast::channel(4096);
        let inner = Inner::start(cfg.clone(), trace_tx.clone()).await?;
        let tables = inner.bpf.tables();
        let dns = crate::dns::Dns::new(&cfg.upstream_resolv_conf);
        dns.publish(&inner.state);
        // Every served endpoint's listeners, before the agent says it is ready.
        dns.settle().await;
        let agent = Arc::new(Agent {
            dns,
            cfg,
            view: RwLock::new(Arc::new(inner.snapshot())),
            inner: Mutex::new(inner),
            tables,
            gc_report: std::sync::Mutex::new(None),
            trace_tx,
        });
        upkeep::spawn(&agent);
        Ok(agent)
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.view.read().map(|v| v.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Publishes what `inner` holds now to the readers; returns it.
    fn publish(&self, inner: &Inner) -> Arc<Snapshot> {
        let snap = Arc::new(inner.snapshot());
        self.dns.publish(&inner.state);
        match self.view.write() {
            Ok(mut v) => *v = snap.clone(),
            Err(p) => *p.into_inner() = snap.clone(),
        }
        snap
    }

    /// Serves one request: readers from the snapshot, writers under the lock.
    pub async fn handle(self: &Arc<Self>, request: Request) -> Result<Value, ApiError> {
        let request = match self.read(request).await {
            Ok(answer) => return answer,
            Err(write) => write,
        };
        match request {
            Request::ContainerCreate(req) => self.container_create(req).await,
            Request::ContainerStop { name } => self.container_stop(&name).await.map(|_| Value::Null),
            Request::Trace { .. } => Err(ApiError::invalid("trace is a streaming request")),
            write => {
                let mut inner = self.inner.lock().await;
                let result = inner.write(write).await;
                let snap = self.publish(&inner);
                drop(inner);
                // A new endpoint's DNS listens before its create returns.
                self.dns.settle().await;
                match result? {
                    Written::Value(v) => Ok(v),
                    Written::Network(name) => snap.network(&name).and_then(to_value),
                    Written::Endpoint(name) => snap.endpoint(&name).and_then(to_value),
                    Written::Cni(name, problems) => snap.cni_attachment(&name, problems).and_then(to_value),
                }
            }
        }
    }

    /// Answers a read-only request without the writer lock; gives any other
    /// request back.
    async fn read(&self, request: Request) -> Result<Result<Value, ApiError>, Request> {
        let snap = self.snapshot();
        Ok(match request {
            Request::Ping => Ok(json!({"api_version": API_VERSION, "agent": env!("CARGO_PKG_VERSION")})),
            Request::NetworkList => to_value(snap.networks()),
            Request::NetworkInspect { name } => snap.network(&name).and_then(to_value),
            Request::EndpointList => to_value(snap.endpoints()),
            Request::EndpointInspect { name } => snap.endpoint(&name).and_then(to_value),
            // Liveness comes from /proc: off the async workers.
            Request::ContainerList => blocking(move || snap.containers()).await.and_then(to_value),
            Request::Stats => self.stats().await.and_then(to_value),
            Request::ConntrackList { endpoint } => self.conntrack_list(snap, endpoint).await.and_then(to_value),
            Request::Port { name } => snap.ports(&name).and_then(to_value),
            other => return Err(other),
        })
    }
}

/// What a change made, rendered from the snapshot published after it.
enum Written {
    Value(Value),
    Network(String),
    Endpoint(String),
    /// A CNI attachment (endpoint name) and what `CHECK` found wrong.
    Cni(String, Vec<String>),
}

impl Inner {
    /// A copy of network `name`'s spec, or the API's "not found".
    pub(super) fn known_network(&self, name: &str) -> Result<NetworkSpec, ApiError> {
        self.state.networks.get(name).cloned().ok_or_else(|| error::network_not_found(name))
    }

    /// A copy of endpoint `name`'s spec, or the API's "not found".
    pub(super) fn known_endpoint(&self, name: &str) -> Result<EndpointSpec, ApiError> {
        self.state.endpoints.get(name).cloned().ok_or_else(|| error::endpoint_not_found(name))
    }

    /// A change to the state (the requests [`Agent::handle`] sends here).
    async fn write(&mut self, request: Request) -> Result<Written, ApiError> {
        let done = Written::Value(Value::Null);
        match request {
            Request::NetworkCreate(r) => self.network_create(r).await.map(Written::Network),
            Request::NetworkRemove { name } => self.network_remove(&name, false).await.map(|_| done),
            Request::EndpointCreate(r) => self.endpoint_create(r).await.map(Written::Endpoint),
            Request::EndpointRemove { name } => self.endpoint_remove(&name).await.map(|_| done),
            Request::EndpointPublish { name, publish } => {
                self.endpoint_publish(&name, publish).await.map(Written::Endpoint)
            }
            Request::NetworkConnect(r) => self.network_connect(r).await.map(Written::Endpoint),
            Request::NetworkDisconnect { network, endpoint } => {
                self.network_disconnect(&network, &endpoint).await.map(|_| Written::Endpoint(endpoint))
            }
            Request::ContainerStarted { name, pid } => self.container_started(&name, pid).await.map(|_| done),
            Request::ContainerExited { name, code } => self.container_exited(&name, code).await.map(|_| done),
            Request::CniAdd(r) => self.cni_add(r).await.map(|name| Written::Cni(name, Vec::new())),
            Request::CniDel(key) => self.cni_del(key).await.map(|_| done),
            Request::CniCheck(key) => self.cni_check(key).await.map(|(name, problems)| Written::Cni(name, problems)),
            Request::CniGc(r) => {
                let removed = self.cni_gc(r).await?;
                Ok(Written::Value(to_value(crate::api::CniGcReport { removed })?))
            }
            Request::ConntrackFlush => {
                let tables = self.bpf.tables();
                let removed = blocking(move || tables.ct()?.flush()).await??;
                Ok(Written::Value(json!({ "removed": removed })))
            }
            other => Err(ApiError::internal(format!("not a write request: {other:?}"))),
        }
    }

    /// Persists the state: serialized here, written (temp file, fsync,
    /// rename) on a blocking thread.
    async fn save(&self) -> Result<(), ApiError> {
        let bytes = self.state.to_json()?;
        let dir = self.cfg.state_dir.clone();
        blocking(move || crate::state::write_file(&dir, &bytes)).await??;
        Ok(())
    }

    /// What must be found again without the state file.
    fn journal(&self) -> crate::state::Journal {
        crate::state::Journal::new(&self.cfg.state_dir)
    }

    fn failpoint(&self, step: &str) -> Result<(), ApiError> {
        self.failpoint_at("endpoint", step)
    }

    /// `WHAT:STEP` (`connect:STEP` for the links of `network connect`).
    fn failpoint_at(&self, what: &str, step: &str) -> Result<(), ApiError> {
        match &self.failpoint {
            Some(f) if f == &format!("{what}:{step}") => {
                Err(ApiError::internal(format!("injected failure after step {step:?} ({FAILPOINT_ENV})")))
            }
            _ => Ok(()),
        }
    }
}
