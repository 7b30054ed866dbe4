//! The agent: owns the desired state, the topology and the eBPF datapath,
//! and serves the API on a unix socket.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};

use datapath_common::{reason, EndpointInfo, EP_F_TRACE};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Mutex};

use crate::api::{
    ApiError, ContainerCreate, ContainerView, CounterView, EndpointCreate, EndpointView, Envelope, FlowView,
    NetworkCreate, NetworkEndpointView, NetworkOptionsView, NetworkView, Request, Response, StatsView, TraceLine,
    API_VERSION,
};
use crate::datapath::loader::{AttachMode, Bpf, BpfError};
use crate::datapath::snat;
use crate::host::netfilter;
use crate::host::netlink::{Netlink, NetlinkError};
use crate::host::netns;
use crate::ipam::{self, format_mac, mac_for};
use crate::run::{self, ContainerSpec, RunMode};
use crate::state::{self, DatapathKind, EndpointSpec, NetworkSpec, State};

pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "datapath0";
pub const DEFAULT_SUBNET: &str = "10.10.0.0/16";
/// Pseudo-network of endpoints that are a namespace with only `lo`.
pub const NONE_NETWORK: &str = "none";
/// Test-only fault injection: `endpoint:<step>` fails every endpoint create
/// right after that step, to prove the rollback.
pub const FAILPOINT_ENV: &str = "DATAPATH_FAILPOINT";

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub default_network: bool,
    pub default_subnet: Ipv4Net,
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
}

impl From<NetlinkError> for ApiError {
    fn from(e: NetlinkError) -> Self {
        ApiError::internal(e.to_string())
    }
}
impl From<BpfError> for ApiError {
    fn from(e: BpfError) -> Self {
        ApiError::internal(e.to_string())
    }
}
impl From<state::StateError> for ApiError {
    fn from(e: state::StateError) -> Self {
        ApiError::internal(e.to_string())
    }
}
impl From<ipam::IpamError> for ApiError {
    fn from(e: ipam::IpamError) -> Self {
        match e {
            ipam::IpamError::AddressInUse(_) | ipam::IpamError::Exhausted(_) => ApiError::conflict(e.to_string()),
            _ => ApiError::invalid(e.to_string()),
        }
    }
}

/// Masquerade address and uplink ifindex per uplink (`None`: the default
/// route's device), for one pass over the networks.
type UplinkCache = HashMap<Option<String>, Option<(Ipv4Addr, u32)>>;

/// What was made so far while creating an endpoint, undone in reverse on
/// failure.
#[derive(Default)]
struct Made {
    netns: Option<PathBuf>,
    host_ifindex: Option<u32>,
    attached: Option<u32>,
    maps: Option<(u32, u32)>,
}

struct Inner {
    cfg: AgentConfig,
    state: State,
    nl: Netlink,
    bpf: Bpf,
    /// ifindex of each network's bridge.
    bridges: BTreeMap<String, u32>,
    /// ifindex of each endpoint's host veth.
    host_ifindex: BTreeMap<String, u32>,
    /// Trace subscribers per endpoint, and for "all".
    trace_refs: HashMap<String, usize>,
    trace_all: usize,
    failpoint: Option<String>,
    /// SNAT source port range, clear of the node's ephemeral ports.
    nat_ports: (u16, u16),
    /// What the datapath was last told about each network (by name).
    net_info: BTreeMap<String, datapath_common::NetworkInfo>,
    /// Uplinks with the reverse-NAT program attached (ifindex -> name).
    uplinks: BTreeMap<u32, String>,
    last_gc: std::time::Instant,
    last_gc_report: Option<crate::datapath::conntrack::GcReport>,
    /// The nft script last applied: unchanged scripts are not re-applied
    /// (spawning nft costs milliseconds per endpoint).
    applied_nft: Option<String>,
}

pub struct Agent {
    inner: Mutex<Inner>,
    trace_tx: broadcast::Sender<String>,
    /// host ifindex -> (endpoint name, ip), for attributing trace lines.
    names: RwLock<HashMap<u32, (String, Ipv4Addr)>>,
}

fn api_netns(e: netns::NetnsError) -> ApiError {
    match e {
        netns::NetnsError::Exists(n) => ApiError::conflict(format!("a network namespace named {n:?} already exists")),
        netns::NetnsError::Missing(p) => {
            ApiError::not_found(format!("network namespace {} does not exist", p.display()))
        }
        other => ApiError::internal(other.to_string()),
    }
}

impl Inner {
    fn failpoint(&self, step: &str) -> Result<(), ApiError> {
        match &self.failpoint {
            Some(f) if f == &format!("endpoint:{step}") => {
                Err(ApiError::internal(format!("injected failure after step {step:?} ({FAILPOINT_ENV})")))
            }
            _ => Ok(()),
        }
    }

    fn endpoint_info(&self, spec: &EndpointSpec, ifindex: u32) -> EndpointInfo {
        let net = self.state.networks.get(&spec.network);
        let traced = spec.trace || self.trace_all > 0 || self.trace_refs.get(&spec.name).copied().unwrap_or(0) > 0;
        EndpointInfo {
            ifindex,
            ipv4: datapath_common::ipv4_key(spec.ip.octets()),
            mac: spec.mac,
            gw_mac: net.map(|n| mac_for(n.gateway)).unwrap_or_default(),
            network_id: net.map(|n| n.num_id).unwrap_or(0),
            flags: if traced { EP_F_TRACE } else { 0 },
        }
    }

    fn network_view(&self, n: &NetworkSpec) -> NetworkView {
        NetworkView {
            name: n.name.clone(),
            id: n.id.clone(),
            subnet: n.subnet.to_string(),
            gateway: n.gateway,
            bridge: n.bridge.clone(),
            datapath: n.datapath.to_string(),
            created: n.created.clone(),
            internal: n.options.internal,
            options: NetworkOptionsView {
                icc: n.options.icc,
                masquerade: n.options.masquerade,
                uplink: n.options.uplink.clone(),
                mtu: n.options.mtu.unwrap_or(1500),
            },
            endpoints: self
                .state
                .endpoints_of(&n.name)
                .map(|e| NetworkEndpointView {
                    name: e.name.clone(),
                    id: e.id.clone(),
                    ip: e.ip,
                    mac: format_mac(&e.mac),
                })
                .collect(),
        }
    }

    fn endpoint_view(&self, e: &EndpointSpec) -> EndpointView {
        let net = self.state.networks.get(&e.network);
        let named = e.owns_netns.then(|| e.name.clone());
        EndpointView {
            name: e.name.clone(),
            id: e.id.clone(),
            network: e.network.clone(),
            ip: e.ip,
            prefix_len: net.map(|n| n.subnet.prefix_len()).unwrap_or(32),
            mac: format_mac(&e.mac),
            gateway: net.map(|n| n.gateway).unwrap_or(Ipv4Addr::UNSPECIFIED),
            netns: named,
            netns_path: e.netns_path.clone(),
            ifname: e.ifname.clone(),
            host_ifname: e.host_ifname.clone(),
            host_ifindex: self.host_ifindex.get(&e.name).copied().unwrap_or(0),
            tc: self.host_ifindex.get(&e.name).and_then(|i| self.bpf.attachment(*i)).map(|a| crate::api::TcView {
                program: a.program.to_string(),
                hook: a.hook.to_string(),
                prog_tag: a.prog_tag,
            }),
            trace: e.trace,
            container_id: e.container_id.clone(),
            created: e.created.clone(),
        }
    }

    // ----- networks -------------------------------------------------------

    async fn network_create(&mut self, req: NetworkCreate) -> Result<NetworkView, ApiError> {
        state::validate_name("network", &req.name).map_err(ApiError::invalid)?;
        if self.state.networks.contains_key(&req.name) {
            return Err(ApiError::conflict(format!("network {:?} already exists", req.name)));
        }
        let subnet = ipam::parse_subnet(&req.subnet)?;
        let gw = req.gateway.as_deref().map(ipam::parse_addr).transpose()?;
        let gateway = ipam::gateway_for(&subnet, gw)?;
        if let Some(other) = self.state.overlapping(&subnet) {
            return Err(ApiError::conflict(format!(
                "subnet {subnet} overlaps network {:?} ({})",
                other.name, other.subnet
            )));
        }
        for (route, oif) in self.nl.ipv4_routes().await? {
            if route.prefix_len() > 0 && state::nets_overlap(&route, &subnet) {
                let dev = oif.map(|i| format!(" (ifindex {i})")).unwrap_or_default();
                return Err(ApiError::conflict(format!(
                    "subnet {subnet} overlaps the route to {route}{dev} on this node"
                )));
            }
        }
        let datapath = req.datapath.unwrap_or(self.cfg.default_datapath);
        let internal = req.internal;
        let masquerade = req.masquerade.unwrap_or(!internal);
        if internal && masquerade {
            return Err(ApiError::invalid("an internal network cannot masquerade"));
        }
        if let Some(mtu) = req.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(ApiError::invalid(format!("invalid MTU {mtu}: must be between 68 and 65535")));
            }
        }
        if let Some(up) = &req.uplink {
            if self.nl.link_index(up).await?.is_none() {
                return Err(ApiError::invalid(format!("uplink interface {up:?} not found on this node")));
            }
        }
        let options = state::NetworkOptions {
            internal,
            icc: req.icc.unwrap_or(true),
            masquerade,
            uplink: req.uplink.clone(),
            mtu: req.mtu,
        };
        let id = state::random_id();
        let bridge =
            if req.name == DEFAULT_NETWORK { DEFAULT_BRIDGE.to_string() } else { format!("dpbr-{}", &id[..8]) };
        if let Some(stale) = self.nl.link_index(&bridge).await? {
            tracing::warn!("removing stale bridge {bridge} left by an earlier run");
            self.nl.delete_link(stale).await?;
        }
        let spec = NetworkSpec {
            name: req.name.clone(),
            id,
            num_id: self.state.next_network_num(),
            subnet,
            gateway,
            bridge: bridge.clone(),
            datapath,
            options,
            created: state::now_rfc3339(),
        };
        let index = self.nl.create_bridge(&bridge, mac_for(gateway), spec.options.mtu).await?;
        let finish = async {
            self.nl.add_address(index, gateway, subnet.prefix_len()).await?;
            self.sync_datapath_network(&spec, &mut UplinkCache::new()).await?;
            self.state.networks.insert(spec.name.clone(), spec.clone());
            if let Err(e) = self.sync_node() {
                self.state.networks.remove(&spec.name);
                let _ = self.sync_node();
                return Err(e);
            }
            if let Err(e) = self.state.save(&self.cfg.state_dir) {
                self.state.networks.remove(&spec.name);
                let _ = self.sync_node();
                return Err(ApiError::from(e));
            }
            Ok(())
        };
        if let Err(e) = finish.await {
            self.forget_datapath_network(&spec);
            let _ = self.nl.delete_link(index).await;
            return Err(e);
        }
        self.bridges.insert(spec.name.clone(), index);
        if let Err(e) = self.sync_uplinks().await {
            tracing::warn!("attaching reverse NAT to uplinks: {e}");
        }
        tracing::info!(network = %spec.name, %subnet, %gateway, %bridge, "network created");
        Ok(self.network_view(&spec))
    }

    async fn network_remove(&mut self, name: &str, force_default: bool) -> Result<(), ApiError> {
        let spec = self
            .state
            .networks
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("network {name:?} not found")))?;
        if name == DEFAULT_NETWORK && !force_default {
            return Err(ApiError::invalid(format!("{name} is the default network and cannot be removed")));
        }
        let eps: Vec<String> = self.state.endpoints_of(name).map(|e| e.name.clone()).collect();
        if !eps.is_empty() {
            return Err(ApiError::conflict(format!("network {name:?} still has endpoints: {}", eps.join(", "))));
        }
        if let Some(index) = self.nl.link_index(&spec.bridge).await? {
            self.nl.delete_link(index).await?;
        }
        self.bridges.remove(name);
        self.forget_datapath_network(&spec);
        self.state.networks.remove(name);
        if let Err(e) = self.sync_uplinks().await {
            tracing::warn!("detaching reverse NAT from uplinks: {e}");
        }
        if let Err(e) = self.sync_node() {
            tracing::error!(network = %name, "updating node configuration: {e}");
        }
        self.state.save(&self.cfg.state_dir)?;
        tracing::info!(network = %name, "network removed");
        Ok(())
    }

    async fn ensure_bridge(&mut self, spec: &NetworkSpec) -> Result<u32, ApiError> {
        let index = match self.nl.link_index(&spec.bridge).await? {
            Some(i) => i,
            None => {
                tracing::info!(network = %spec.name, bridge = %spec.bridge, "bridge missing, recreating it");
                self.nl.create_bridge(&spec.bridge, mac_for(spec.gateway), spec.options.mtu).await?
            }
        };
        self.nl.add_address(index, spec.gateway, spec.subnet.prefix_len()).await?;
        self.nl.set_up(index).await?;
        self.bridges.insert(spec.name.clone(), index);
        Ok(index)
    }

    // ----- endpoints ------------------------------------------------------

    async fn endpoint_create(&mut self, req: EndpointCreate) -> Result<EndpointView, ApiError> {
        state::validate_name("endpoint", &req.name).map_err(ApiError::invalid)?;
        if self.state.endpoints.contains_key(&req.name) {
            return Err(ApiError::conflict(format!("endpoint {:?} already exists", req.name)));
        }
        let network = req.network.clone().unwrap_or_else(|| DEFAULT_NETWORK.to_string());
        if network == NONE_NETWORK {
            return self.endpoint_create_none(req).await;
        }
        if self.state.containers.contains_key(&req.name) {
            return Err(ApiError::conflict(format!("name {:?} is taken by a container", req.name)));
        }
        let net = self
            .state
            .networks
            .get(&network)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("network {network:?} not found")))?;
        let ifname = req.ifname.clone().unwrap_or_else(|| "eth0".to_string());
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
            return Err(ApiError::invalid(format!("invalid interface name {ifname:?}")));
        }
        let ip = ipam::assign(&net.subnet, net.gateway, &self.state.used_addresses(&network), req.ip)?;
        let id = state::random_id();
        let (netns_path, owns_netns) = match &req.netns_path {
            Some(p) => (p.clone(), false),
            None => (netns::named_path(&req.name), true),
        };
        let spec = EndpointSpec {
            name: req.name.clone(),
            id: id.clone(),
            network,
            ip,
            mac: mac_for(ip),
            netns_path,
            owns_netns,
            ifname,
            host_ifname: format!("dp{}", &id[..8]),
            container_id: req.container_id.clone(),
            trace: req.trace,
            created: state::now_rfc3339(),
        };
        let mut made = Made::default();
        match self.build_endpoint(&spec, &net, &mut made).await {
            Ok(()) => {
                self.state.endpoints.insert(spec.name.clone(), spec.clone());
                if let Err(e) = self.state.save(&self.cfg.state_dir) {
                    self.state.endpoints.remove(&spec.name);
                    self.undo(&spec, made).await;
                    return Err(e.into());
                }
                if let Err(e) = self.sync_node() {
                    self.state.endpoints.remove(&spec.name);
                    let _ = self.sync_node();
                    let _ = self.state.save(&self.cfg.state_dir);
                    self.undo(&spec, made).await;
                    return Err(e);
                }
                tracing::info!(endpoint = %spec.name, ip = %spec.ip, network = %spec.network, "endpoint created");
                Ok(self.endpoint_view(&spec))
            }
            Err(e) => {
                self.undo(&spec, made).await;
                Err(e)
            }
        }
    }

    /// An endpoint of the `none` network: its own namespace with only `lo` up.
    async fn endpoint_create_none(&mut self, req: EndpointCreate) -> Result<EndpointView, ApiError> {
        if req.ip.is_some() {
            return Err(ApiError::invalid("--ip makes no sense with the none network"));
        }
        if req.netns_path.is_some() {
            return Err(ApiError::invalid("the none network makes its own namespace"));
        }
        let spec = EndpointSpec {
            name: req.name.clone(),
            id: state::random_id(),
            network: NONE_NETWORK.into(),
            ip: Ipv4Addr::UNSPECIFIED,
            mac: [0; 6],
            netns_path: netns::named_path(&req.name),
            owns_netns: true,
            ifname: String::new(),
            host_ifname: String::new(),
            container_id: req.container_id.clone(),
            trace: false,
            created: state::now_rfc3339(),
        };
        let mut made = Made::default();
        let built = async {
            self.build_none(&spec, &mut made).await?;
            self.state.endpoints.insert(spec.name.clone(), spec.clone());
            if let Err(e) = self.state.save(&self.cfg.state_dir) {
                self.state.endpoints.remove(&spec.name);
                return Err(ApiError::from(e));
            }
            Ok(())
        };
        if let Err(e) = built.await {
            self.undo(&spec, made).await;
            return Err(e);
        }
        Ok(self.endpoint_view(&spec))
    }

    async fn build_none(&mut self, spec: &EndpointSpec, made: &mut Made) -> Result<(), ApiError> {
        netns::create_named(&spec.name).map_err(api_netns)?;
        made.netns = Some(spec.netns_path.clone());
        let inside = Netlink::in_netns(&spec.netns_path)?;
        if let Some(lo) = inside.link_index("lo").await? {
            inside.set_up(lo).await?;
        }
        Ok(())
    }

    /// Makes the namespace, veth, addressing, program and map entries of an
    /// endpoint, recording each step in `made` for the rollback.
    async fn build_endpoint(
        &mut self,
        spec: &EndpointSpec,
        net: &NetworkSpec,
        made: &mut Made,
    ) -> Result<(), ApiError> {
        let t0 = std::time::Instant::now();
        let lap = |what: &str| tracing::debug!(endpoint = %spec.name, "{what} after {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
        if spec.owns_netns {
            netns::create_named(&spec.name).map_err(api_netns)?;
            made.netns = Some(spec.netns_path.clone());
        } else {
            netns::open(&spec.netns_path).map_err(api_netns)?;
        }
        self.failpoint("netns")?;
        lap("netns");

        let bridge = match self.bridges.get(&net.name) {
            Some(i) => *i,
            None => self.ensure_bridge(net).await?,
        };
        let host = self
            .nl
            .create_veth(&spec.host_ifname, &spec.ifname, &spec.netns_path, spec.mac, Some(bridge), net.options.mtu)
            .await;
        let host = host.map_err(|e| match e.errno() {
            Some(17) => {
                ApiError::conflict(format!("interface {} already exists in the endpoint's namespace", spec.ifname))
            }
            _ => e.into(),
        })?;
        made.host_ifindex = Some(host);
        self.host_ifindex.insert(spec.name.clone(), host);
        self.failpoint("veth")?;
        lap("veth");

        let inside = Netlink::in_netns(&spec.netns_path)?;
        if let Some(lo) = inside.link_index("lo").await? {
            inside.set_up(lo).await?;
        }
        let eth = inside.require_index(&spec.ifname).await?;
        inside.add_address(eth, spec.ip, net.subnet.prefix_len()).await?;
        inside.set_up(eth).await?;
        if !net.options.internal {
            // Internal networks have no route beyond their subnet.
            inside.add_default_route(net.gateway).await?;
        }
        self.failpoint("addr")?;
        lap("addr");

        if net.datapath == DatapathKind::Kernel {
            // The bridge and netfilter do everything; the failpoints still
            // fire so the rollback is testable on both datapaths.
            self.failpoint("attach")?;
            self.failpoint("maps")?;
            return Ok(());
        }
        self.bpf.attach(&spec.host_ifname, host)?;
        made.attached = Some(host);
        self.failpoint("attach")?;
        lap("attach");

        let info = self.endpoint_info(spec, host);
        self.bpf.upsert_endpoint(info)?;
        made.maps = Some((host, info.ipv4));
        self.failpoint("maps")?;
        Ok(())
    }

    async fn undo(&mut self, spec: &EndpointSpec, made: Made) {
        if let Some((ifindex, ip)) = made.maps {
            self.bpf.remove_endpoint(ifindex, ip);
        }
        if let Some(ifindex) = made.attached {
            self.bpf.detach(ifindex);
        }
        if let Some(ifindex) = made.host_ifindex {
            if let Err(e) = self.nl.delete_link(ifindex).await {
                tracing::error!(endpoint = %spec.name, "rollback: deleting veth {}: {e}", spec.host_ifname);
            }
        }
        self.host_ifindex.remove(&spec.name);
        if let Some(path) = made.netns {
            if let Err(e) = netns::delete_path(&path) {
                tracing::error!(endpoint = %spec.name, "rollback: deleting netns: {e}");
            }
        }
    }

    async fn endpoint_remove(&mut self, name: &str) -> Result<(), ApiError> {
        let spec = self
            .state
            .endpoints
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("endpoint {name:?} not found")))?;
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.endpoint.as_deref() == Some(name) || c.mode == RunMode::Container(name.to_string()))
            .filter(|c| c.is_running())
            .map(|c| c.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "endpoint {name:?} is in use by running command(s) {}: `datapath stop` them first",
                users.join(", ")
            )));
        }
        let ifindex = match self.host_ifindex.get(name) {
            Some(i) => Some(*i),
            None if spec.host_ifname.is_empty() => None,
            None => self.nl.link_index(&spec.host_ifname).await?,
        };
        let ipv4 = datapath_common::ipv4_key(spec.ip.octets());
        let made = Made {
            netns: spec.owns_netns.then(|| spec.netns_path.clone()),
            host_ifindex: ifindex,
            attached: ifindex,
            maps: ifindex.map(|i| (i, ipv4)),
        };
        self.undo(&spec, made).await;
        self.trace_refs.remove(name);
        self.state.endpoints.remove(name);
        self.state.containers.retain(|_, c| c.endpoint.as_deref() != Some(name));
        if let Err(e) = self.sync_node() {
            tracing::error!(endpoint = %name, "updating node configuration: {e}");
        }
        self.state.save(&self.cfg.state_dir)?;
        tracing::info!(endpoint = %name, "endpoint removed");
        Ok(())
    }

    /// Brings an endpoint from the state back into the datapath after an agent
    /// restart: re-attach and re-fill the maps when its links survived,
    /// rebuild it from scratch otherwise.
    async fn restore_endpoint(&mut self, spec: &EndpointSpec) -> Result<(), ApiError> {
        if spec.network == NONE_NETWORK {
            if !spec.netns_path.exists() {
                let mut made = Made::default();
                if let Err(e) = self.build_none(spec, &mut made).await {
                    self.undo(spec, made).await;
                    return Err(e);
                }
            }
            return Ok(());
        }
        let net = self
            .state
            .networks
            .get(&spec.network)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("network {:?} not found", spec.network)))?;
        let host = self.nl.link_index(&spec.host_ifname).await?;
        let ns_ok = spec.netns_path.exists();
        if let (Some(host), true) = (host, ns_ok) {
            self.host_ifindex.insert(spec.name.clone(), host);
            if net.datapath == DatapathKind::Kernel {
                return Ok(());
            }
            self.bpf.attach(&spec.host_ifname, host)?;
            let info = self.endpoint_info(spec, host);
            self.bpf.upsert_endpoint(info)?;
            return Ok(());
        }
        tracing::warn!(endpoint = %spec.name, "endpoint links are gone, rebuilding it");
        if let Some(host) = host {
            self.nl.delete_link(host).await?;
        }
        if spec.owns_netns {
            netns::delete_path(&spec.netns_path).map_err(api_netns)?;
        }
        let mut made = Made::default();
        if let Err(e) = self.build_endpoint(spec, &net, &mut made).await {
            self.undo(spec, made).await;
            return Err(e);
        }
        Ok(())
    }

    /// Brings the node's netfilter rules and forwarding switch in line with
    /// the networks: rules for kernel-datapath networks only, forwarding on
    /// while any network routes beyond itself (restored to what it was when
    /// the last one goes).
    fn sync_node(&mut self) -> Result<(), ApiError> {
        let script = netfilter::render(&self.state, |n| n.options.uplink.clone());
        if self.applied_nft.as_deref() != Some(script.as_str()) {
            netfilter::apply(&script, netfilter::needs_rules(&self.state))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            self.applied_nft = Some(script);
        }
        let routes_out = self.state.networks.values().any(|n| !n.options.internal);
        match (&self.state.node.ip_forward_was, routes_out) {
            (None, true) => {
                if let Some(old) = netfilter::enable_forwarding().map_err(|e| ApiError::internal(e.to_string()))? {
                    tracing::info!("enabled IPv4 forwarding on the node (was {old})");
                    self.state.node.ip_forward_was = Some(old);
                }
            }
            (Some(old), false) => {
                netfilter::restore_forwarding(old).map_err(|e| ApiError::internal(e.to_string()))?;
                tracing::info!("restored IPv4 forwarding to {old}");
                self.state.node.ip_forward_was = None;
            }
            _ => {}
        }
        Ok(())
    }

    // ----- the datapath's view of networks, masquerade ------------------------

    /// The masquerade address and uplink ifindex of a network, followed live:
    /// `--uplink` or the device of the node's default route, its primary IPv4.
    /// `seen` memoizes the answer per uplink (`None` = the default route's
    /// device), so a pass over many networks asks netlink once per uplink.
    async fn masquerade_for(
        &self,
        net: &NetworkSpec,
        seen: &mut UplinkCache,
    ) -> Result<Option<(Ipv4Addr, u32)>, ApiError> {
        if !net.options.masquerade || net.options.internal {
            return Ok(None);
        }
        if let Some(known) = seen.get(&net.options.uplink) {
            return Ok(*known);
        }
        let ifindex = match &net.options.uplink {
            Some(name) => self.nl.link_index(name).await?,
            None => self.nl.default_route_oif().await?,
        };
        let masq = match ifindex {
            Some(ifindex) => self.nl.ipv4_addresses(ifindex).await?.first().map(|(ip, _)| (*ip, ifindex)),
            None => None,
        };
        seen.insert(net.options.uplink.clone(), masq);
        Ok(masq)
    }

    /// Tells the datapath about a network (policy, masquerade address); a
    /// no-op when nothing changed.
    async fn sync_datapath_network(&mut self, net: &NetworkSpec, seen: &mut UplinkCache) -> Result<(), ApiError> {
        let masq = self.masquerade_for(net, seen).await?;
        let info = snat::network_info(net, masq, self.nat_ports);
        if self.net_info.get(&net.name) == Some(&info) {
            return Ok(());
        }
        if let Some(old) = self.net_info.get(&net.name) {
            if old.masq_addr != info.masq_addr || old.uplink_ifindex != info.uplink_ifindex {
                let ip = Ipv4Addr::from(info.masq_addr.to_ne_bytes());
                tracing::info!(network = %net.name, masquerade = %ip, uplink = info.uplink_ifindex, "masquerade address changed");
            }
        }
        self.bpf.set_network(net.num_id, info, u32::from(net.subnet.prefix_len()))?;
        self.net_info.insert(net.name.clone(), info);
        Ok(())
    }

    fn forget_datapath_network(&mut self, net: &NetworkSpec) {
        let subnet = datapath_common::ipv4_key(net.subnet.network().octets());
        self.bpf.remove_network(net.num_id, subnet, u32::from(net.subnet.prefix_len()));
        self.net_info.remove(&net.name);
    }

    /// Attaches the reverse-NAT program to every uplink an eBPF network
    /// masquerades through, and detaches it from uplinks no longer used.
    async fn sync_uplinks(&mut self) -> Result<(), ApiError> {
        let wanted: std::collections::BTreeSet<u32> = self
            .state
            .networks
            .values()
            .filter(|n| n.datapath == DatapathKind::Ebpf)
            .filter_map(|n| self.net_info.get(&n.name))
            .filter(|i| i.flags & datapath_common::NET_F_MASQUERADE != 0 && i.uplink_ifindex != 0)
            .map(|i| i.uplink_ifindex)
            .collect();
        for ifindex in &wanted {
            if !self.uplinks.contains_key(ifindex) {
                let Some(name) = self.nl.link_name(*ifindex).await? else { continue };
                self.bpf.attach_uplink(&name, *ifindex)?;
                tracing::info!(uplink = %name, "reverse NAT attached");
                self.uplinks.insert(*ifindex, name);
            }
        }
        let stale: Vec<u32> = self.uplinks.keys().filter(|i| !wanted.contains(i)).copied().collect();
        for ifindex in stale {
            self.bpf.detach_uplink(ifindex);
            if let Some(name) = self.uplinks.remove(&ifindex) {
                tracing::info!(uplink = %name, "reverse NAT detached");
            }
        }
        Ok(())
    }

    /// Periodic upkeep: follow uplink address changes, collect expired flows.
    async fn tick(&mut self) {
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
        if self.last_gc.elapsed() >= std::time::Duration::from_secs(self.cfg.ct_gc_interval.max(1)) {
            self.last_gc = std::time::Instant::now();
            match self.bpf.conntrack_gc() {
                Ok(r) => {
                    if r.removed > 0 {
                        tracing::debug!(removed = r.removed, live = r.live, "conntrack GC");
                    }
                    if u64::from(r.capacity) > 0 && r.live as u64 * 100 / u64::from(r.capacity) >= 80 {
                        tracing::warn!(
                            live = r.live,
                            capacity = r.capacity,
                            "conntrack table is {}% full: live flows may be evicted",
                            r.live as u64 * 100 / u64::from(r.capacity)
                        );
                    }
                    self.last_gc_report = Some(r);
                }
                Err(e) => tracing::warn!("conntrack GC: {e}"),
            }
        }
    }

    fn conntrack_list(&self, endpoint: Option<String>) -> Result<Vec<FlowView>, ApiError> {
        let by_ifindex: HashMap<u32, &str> = self.host_ifindex.iter().map(|(n, i)| (*i, n.as_str())).collect();
        if let Some(want) = &endpoint {
            if !self.state.endpoints.contains_key(want) {
                return Err(ApiError::not_found(format!("endpoint {want:?} not found")));
            }
        }
        Ok(self
            .bpf
            .conntrack_flows()?
            .into_iter()
            .map(|flow| FlowView { endpoint: by_ifindex.get(&flow.ifindex).map(|s| s.to_string()), flow })
            .filter(|f| endpoint.is_none() || f.endpoint == endpoint)
            .collect())
    }

    // ----- containers (`datapath run`) --------------------------------------

    fn container_view(&self, c: &ContainerSpec) -> ContainerView {
        let ip = c
            .endpoint
            .as_ref()
            .or(match &c.mode {
                RunMode::Container(n) => Some(n),
                _ => None,
            })
            .and_then(|e| self.state.endpoints.get(e))
            .map(|e| e.ip)
            .filter(|ip| !ip.is_unspecified());
        ContainerView {
            name: c.name.clone(),
            network: c.mode.to_string(),
            endpoint: c.endpoint.clone(),
            ip,
            netns_path: c.netns_path.clone(),
            pid: c.pid,
            status: c.status(),
            argv: c.argv.clone(),
            detached: c.detached,
            rm: c.rm,
            log: c.log.clone(),
            created: c.created.clone(),
        }
    }

    /// Records (and for `-d` starts) a command; makes its endpoint first.
    async fn container_create(
        &mut self,
        req: ContainerCreate,
    ) -> Result<(ContainerSpec, Option<std::process::Child>), ApiError> {
        let mode = RunMode::parse(req.network.as_deref().unwrap_or(DEFAULT_NETWORK)).map_err(ApiError::invalid)?;
        if req.argv.is_empty() {
            return Err(ApiError::invalid("no command given"));
        }
        let name = req.name.clone().unwrap_or_else(|| format!("run-{}", &state::random_id()[..8]));
        state::validate_name("container", &name).map_err(ApiError::invalid)?;
        if self.state.containers.contains_key(&name) || self.state.endpoints.contains_key(&name) {
            return Err(ApiError::conflict(format!("name {name:?} is already in use")));
        }
        if req.ip.is_some() && !matches!(mode, RunMode::Network(_)) {
            return Err(ApiError::invalid(format!("--ip needs a network, not --network {mode}")));
        }
        let (endpoint, netns_path) = match &mode {
            RunMode::Network(net) => {
                if !self.state.networks.contains_key(net) {
                    return Err(ApiError::not_found(format!("network {net:?} not found")));
                }
                let ep =
                    EndpointCreate { name: name.clone(), network: Some(net.clone()), ip: req.ip, ..Default::default() };
                let v = self.endpoint_create(ep).await?;
                (Some(name.clone()), v.netns_path)
            }
            RunMode::None => {
                let ep =
                    EndpointCreate { name: name.clone(), network: Some(NONE_NETWORK.into()), ..Default::default() };
                let v = self.endpoint_create(ep).await?;
                (Some(name.clone()), v.netns_path)
            }
            RunMode::Host => (None, PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))),
            RunMode::Container(other) => {
                let path = match self.state.endpoints.get(other) {
                    Some(e) => e.netns_path.clone(),
                    None => match self.state.containers.get(other) {
                        Some(c) if c.mode != RunMode::Host => c.netns_path.clone(),
                        _ => return Err(ApiError::not_found(format!("no endpoint or container named {other:?}"))),
                    },
                };
                (None, path)
            }
        };
        let mut spec = ContainerSpec {
            name: name.clone(),
            mode,
            endpoint: endpoint.clone(),
            netns_path,
            argv: req.argv.clone(),
            detached: req.detach,
            rm: req.rm,
            pid: None,
            pid_start: None,
            exit_code: None,
            log: None,
            created: state::now_rfc3339(),
        };
        let mut child = None;
        if req.detach {
            let logs = self.cfg.state_dir.join("logs");
            let log = logs.join(format!("{name}.log"));
            let spawned = std::fs::create_dir_all(&logs)
                .and_then(|_| std::fs::File::create(&log))
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", log.display())))
                .and_then(|f| spawn_in(&spec.netns_path, &spec.argv, req.cwd.as_deref(), Some(f)));
            match spawned {
                Ok(c) => {
                    spec.pid = Some(c.id());
                    spec.pid_start = run::process_start_time(c.id());
                    spec.log = Some(log);
                    child = Some(c);
                }
                Err(e) => {
                    if let Some(ep) = &endpoint {
                        let _ = self.endpoint_remove(ep).await;
                    }
                    return Err(e);
                }
            }
        }
        self.state.containers.insert(name.clone(), spec.clone());
        if let Err(e) = self.state.save(&self.cfg.state_dir) {
            tracing::error!("saving state: {e}");
        }
        tracing::info!(container = %name, mode = %spec.mode, detached = spec.detached, "command registered");
        Ok((spec, child))
    }

    fn container_started(&mut self, name: &str, pid: u32) -> Result<(), ApiError> {
        let c = self
            .state
            .containers
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))?;
        c.pid = Some(pid);
        c.pid_start = run::process_start_time(pid);
        self.state.save(&self.cfg.state_dir)?;
        Ok(())
    }

    /// The command ended: record it, and with `--rm` remove it and its endpoint.
    async fn container_exited(&mut self, name: &str, code: i32) -> Result<(), ApiError> {
        let c = self
            .state
            .containers
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))?;
        c.exit_code = Some(code);
        let (rm, endpoint) = (c.rm, c.endpoint.clone());
        if rm {
            self.container_remove(name, endpoint).await?;
        } else {
            self.state.save(&self.cfg.state_dir)?;
        }
        Ok(())
    }

    async fn container_remove(&mut self, name: &str, endpoint: Option<String>) -> Result<(), ApiError> {
        self.state.containers.remove(name);
        if let Some(ep) = endpoint {
            if self.state.endpoints.contains_key(&ep) {
                self.endpoint_remove(&ep).await?;
            }
        }
        self.state.save(&self.cfg.state_dir)?;
        tracing::info!(container = %name, "command removed");
        Ok(())
    }

    fn refresh_trace_flags(&mut self) {
        let specs: Vec<EndpointSpec> = self.state.endpoints.values().cloned().collect();
        for spec in specs {
            if let Some(ifindex) = self.host_ifindex.get(&spec.name).copied() {
                let info = self.endpoint_info(&spec, ifindex);
                if let Err(e) = self.bpf.upsert_endpoint(info) {
                    tracing::warn!(endpoint = %spec.name, "updating trace flag: {e}");
                }
            }
        }
    }

    fn stats(&self) -> Result<StatsView, ApiError> {
        let counters = self
            .bpf
            .stats()?
            .into_iter()
            .map(|(code, c)| CounterView {
                reason: reason::name(code).to_string(),
                code,
                drop: reason::is_drop(code),
                event: reason::is_event(code),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        Ok(StatsView { counters, conntrack: self.last_gc_report.clone() })
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

impl Agent {
    /// Loads the datapath, restores the persisted state and creates the
    /// default network if needed.
    pub async fn start(cfg: AgentConfig) -> anyhow::Result<Arc<Agent>> {
        use anyhow::Context;
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
        ensure_bpffs(&cfg.bpffs)?;
        let (trace_tx, _) = broadcast::channel(4096);
        let bpf = Bpf::load(trace_tx.clone(), cfg.attach_mode)?;
        let nl = Netlink::current()?;
        let state = State::load(&cfg.state_dir)?.unwrap_or_else(State::new);
        let failpoint = std::env::var(FAILPOINT_ENV).ok().filter(|s| !s.is_empty());
        if let Some(f) = &failpoint {
            tracing::warn!("fault injection active: {FAILPOINT_ENV}={f}");
        }
        let mut inner = Inner {
            cfg: cfg.clone(),
            state,
            nl,
            bpf,
            bridges: BTreeMap::new(),
            host_ifindex: BTreeMap::new(),
            trace_refs: HashMap::new(),
            trace_all: 0,
            failpoint,
            nat_ports: (0, 0),
            net_info: BTreeMap::new(),
            uplinks: BTreeMap::new(),
            last_gc: std::time::Instant::now(),
            last_gc_report: None,
            applied_nft: None,
        };
        inner.bpf.set_ct_config(cfg.ct)?;
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| snat::parse_ephemeral(&s))
            .unwrap_or((32768, 60999));
        inner.nat_ports = snat::choose_range(cfg.nat_ports, ephemeral)?;
        tracing::info!(
            "SNAT ports {}-{} (node ephemeral ports {}-{})",
            inner.nat_ports.0,
            inner.nat_ports.1,
            ephemeral.0,
            ephemeral.1
        );
        let networks: Vec<NetworkSpec> = inner.state.networks.values().cloned().collect();
        let mut seen = UplinkCache::new();
        for net in &networks {
            inner.ensure_bridge(net).await.map_err(|e| anyhow::anyhow!("restoring network {}: {e}", net.name))?;
            inner
                .sync_datapath_network(net, &mut seen)
                .await
                .map_err(|e| anyhow::anyhow!("restoring network {}: {e}", net.name))?;
        }
        let endpoints: Vec<EndpointSpec> = inner.state.endpoints.values().cloned().collect();
        for ep in &endpoints {
            if let Err(e) = inner.restore_endpoint(ep).await {
                tracing::error!(endpoint = %ep.name, "could not restore endpoint: {e}");
            }
        }
        if let Err(e) = inner.sync_node() {
            tracing::error!("restoring node configuration: {e}");
        }
        if let Err(e) = inner.sync_uplinks().await {
            tracing::error!("attaching reverse NAT to uplinks: {e}");
        }
        if !networks.is_empty() || !endpoints.is_empty() {
            tracing::info!(
                "restored {} networks and {} endpoints from {}",
                networks.len(),
                endpoints.len(),
                cfg.state_dir.display()
            );
        }
        if cfg.default_network && !inner.state.networks.contains_key(DEFAULT_NETWORK) {
            inner
                .network_create(NetworkCreate {
                    name: DEFAULT_NETWORK.into(),
                    subnet: cfg.default_subnet.to_string(),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating the default network: {e}"))?;
        }
        let agent = Arc::new(Agent { inner: Mutex::new(inner), trace_tx, names: RwLock::new(HashMap::new()) });
        agent.refresh_names().await;
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(agent) = weak.upgrade() else { break };
                agent.inner.lock().await.tick().await;
            }
        });
        Ok(agent)
    }

    async fn refresh_names(&self) {
        let inner = self.inner.lock().await;
        let map = inner
            .state
            .endpoints
            .values()
            .filter_map(|e| inner.host_ifindex.get(&e.name).map(|i| (*i, (e.name.clone(), e.ip))))
            .collect();
        if let Ok(mut names) = self.names.write() {
            *names = map;
        }
    }

    pub async fn handle(self: &Arc<Self>, request: Request) -> Result<Value, ApiError> {
        match request {
            Request::ContainerCreate(req) => {
                let created = self.inner.lock().await.container_create(req).await;
                self.refresh_names().await;
                let (spec, child) = created?;
                if let Some(child) = child {
                    self.reap(spec.name.clone(), child);
                }
                let inner = self.inner.lock().await;
                return to_value(inner.container_view(&spec));
            }
            Request::ContainerStop { name } => {
                let result = self.container_stop(&name).await;
                self.refresh_names().await;
                return result.map(|_| Value::Null);
            }
            _ => {}
        }
        let result = {
            let mut inner = self.inner.lock().await;
            match request {
                Request::ContainerCreate(_) | Request::ContainerStop { .. } => Err(ApiError::internal("handled above")),
                Request::ContainerStarted { name, pid } => inner.container_started(&name, pid).map(|_| Value::Null),
                Request::ContainerExited { name, code } => {
                    inner.container_exited(&name, code).await.map(|_| Value::Null)
                }
                Request::ContainerList => {
                    let v: Vec<ContainerView> =
                        inner.state.containers.values().map(|c| inner.container_view(c)).collect();
                    to_value(v)
                }
                Request::Ping => Ok(json!({"api_version": API_VERSION, "agent": env!("CARGO_PKG_VERSION")})),
                Request::NetworkCreate(r) => inner.network_create(r).await.and_then(to_value),
                Request::NetworkList => {
                    let v: Vec<NetworkView> = inner.state.networks.values().map(|n| inner.network_view(n)).collect();
                    to_value(v)
                }
                Request::NetworkInspect { name } => match inner.state.networks.get(&name) {
                    Some(n) => to_value(inner.network_view(n)),
                    None => Err(ApiError::not_found(format!("network {name:?} not found"))),
                },
                Request::NetworkRemove { name } => inner.network_remove(&name, false).await.map(|_| Value::Null),
                Request::EndpointCreate(r) => inner.endpoint_create(r).await.and_then(to_value),
                Request::EndpointList => {
                    let v: Vec<EndpointView> = inner.state.endpoints.values().map(|e| inner.endpoint_view(e)).collect();
                    to_value(v)
                }
                Request::EndpointInspect { name } => match inner.state.endpoints.get(&name) {
                    Some(e) => to_value(inner.endpoint_view(e)),
                    None => Err(ApiError::not_found(format!("endpoint {name:?} not found"))),
                },
                Request::EndpointRemove { name } => inner.endpoint_remove(&name).await.map(|_| Value::Null),
                Request::Stats => inner.stats().and_then(to_value),
                Request::ConntrackList { endpoint } => inner.conntrack_list(endpoint).and_then(to_value),
                Request::ConntrackFlush => {
                    inner.bpf.conntrack_flush().map_err(ApiError::from).and_then(|n| to_value(json!({"removed": n})))
                }
                Request::Trace { .. } => Err(ApiError::invalid("trace is a streaming request")),
            }
        };
        self.refresh_names().await;
        result
    }

    /// Waits for a detached command in the background and records its exit.
    fn reap(self: &Arc<Self>, name: String, mut child: Child) {
        let agent = self.clone();
        tokio::spawn(async move {
            let status = tokio::task::spawn_blocking(move || child.wait()).await;
            let code = match status {
                Ok(Ok(s)) => run::exit_code(s),
                _ => -1,
            };
            tracing::info!(container = %name, code, "detached command exited");
            let mut inner = agent.inner.lock().await;
            if inner.state.containers.contains_key(&name) {
                if let Err(e) = inner.container_exited(&name, code).await {
                    tracing::error!(container = %name, "recording exit: {e}");
                }
            }
            drop(inner);
            agent.refresh_names().await;
        });
    }

    /// Ends a command (SIGTERM, then SIGKILL after 10 s) and removes it and
    /// its endpoint. The lock is not held while waiting.
    async fn container_stop(&self, name: &str) -> Result<(), ApiError> {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let spec = {
            let inner = self.inner.lock().await;
            let spec = inner
                .state
                .containers
                .get(name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))?;
            // All or nothing: refuse before killing anything when another
            // running command lives in this one's namespace.
            if let Some(ep) = &spec.endpoint {
                let users: Vec<&str> = inner
                    .state
                    .containers
                    .values()
                    .filter(|c| c.name != spec.name && c.mode == RunMode::Container(ep.clone()) && c.is_running())
                    .map(|c| c.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(ApiError::conflict(format!(
                        "{name:?} shares its network namespace with running command(s) {}: stop them first",
                        users.join(", ")
                    )));
                }
            }
            spec
        };
        if let (true, Some(pid)) = (spec.is_running(), spec.pid) {
            let pid = Pid::from_raw(pid as i32);
            let signal = |sig| {
                // Detached commands lead their own process group.
                if spec.detached {
                    killpg(pid, sig).or_else(|_| kill(pid, sig))
                } else {
                    kill(pid, sig)
                }
            };
            let _ = signal(Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while spec.is_running() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if spec.is_running() {
                let _ = signal(Signal::SIGKILL);
                for _ in 0..100 {
                    if !spec.is_running() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        let mut inner = self.inner.lock().await;
        if inner.state.containers.contains_key(name) {
            inner.container_remove(name, spec.endpoint.clone()).await?;
        }
        Ok(())
    }

    /// Removes everything this agent made (used by `--cleanup-on-exit`).
    pub async fn teardown(&self) {
        let names: Vec<String> = self.inner.lock().await.state.containers.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.container_stop(&name).await {
                tracing::error!(container = %name, "teardown: {e}");
            }
        }
        let mut inner = self.inner.lock().await;
        let eps: Vec<String> = inner.state.endpoints.keys().cloned().collect();
        for ep in eps {
            if let Err(e) = inner.endpoint_remove(&ep).await {
                tracing::error!(endpoint = %ep, "teardown: {e}");
            }
        }
        let nets: Vec<String> = inner.state.networks.keys().cloned().collect();
        for net in nets {
            if let Err(e) = inner.network_remove(&net, true).await {
                tracing::error!(network = %net, "teardown: {e}");
            }
        }
        let _ = std::fs::remove_file(inner.cfg.state_dir.join(state::STATE_FILE));
        // Only if empty: nothing is pinned yet, and nothing of others is removed.
        let _ = std::fs::remove_dir(&inner.cfg.bpffs);
    }

    async fn trace_subscribe(&self, endpoint: &Option<String>, delta: isize) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        match endpoint {
            Some(name) => {
                if !inner.state.endpoints.contains_key(name) {
                    return Err(ApiError::not_found(format!("endpoint {name:?} not found")));
                }
                let r = inner.trace_refs.entry(name.clone()).or_insert(0);
                *r = r.saturating_add_signed(delta);
            }
            None => inner.trace_all = inner.trace_all.saturating_add_signed(delta),
        }
        inner.refresh_trace_flags();
        Ok(())
    }

    /// Attributes a trace line (`ep=IFINDEX ...`) to an endpoint name and
    /// decides whether the subscriber wants it.
    fn attribute(&self, line: &str, want: &Option<String>) -> Option<TraceLine> {
        let names = self.names.read().ok()?;
        let ifindex: u32 = line.strip_prefix("ep=")?.split_whitespace().next()?.parse().ok()?;
        let (name, _) = names.get(&ifindex)?;
        if let Some(want) = want {
            if want != name {
                // Also show packets *to* the wanted endpoint.
                let (_, ip) = names.values().find(|(n, _)| n == want)?;
                let ip = ip.to_string();
                let mentions =
                    line.split_whitespace().any(|w| w == ip || w.strip_prefix(&ip).is_some_and(|r| r.starts_with(':')));
                if !mentions {
                    return None;
                }
            }
        }
        Some(TraceLine { endpoint: name.clone(), line: line.to_string() })
    }

    async fn serve_trace(&self, stream: BufReader<UnixStream>, endpoint: Option<String>) {
        let mut rx = self.trace_tx.subscribe();
        let (read, mut write) = stream.into_inner().into_split();
        if let Err(e) = self.trace_subscribe(&endpoint, 1).await {
            let _ = write_line(&mut write, &Response::err(e)).await;
            return;
        }
        if write_line(&mut write, &Response::ok(Value::Null)).await.is_ok() {
            let mut read = BufReader::new(read);
            let mut sink = String::new();
            loop {
                tokio::select! {
                    n = read.read_line(&mut sink) => {
                        if !matches!(n, Ok(n) if n > 0) { break }
                        sink.clear();
                    }
                    msg = rx.recv() => match msg {
                        Ok(line) => {
                            if let Some(rec) = self.attribute(&line, &endpoint) {
                                if write_line(&mut write, &rec).await.is_err() { break }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("trace client lagged, {n} lines dropped"),
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
        let _ = self.trace_subscribe(&endpoint, -1).await;
    }

    async fn serve_conn(self: Arc<Self>, stream: UnixStream) {
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let env: Envelope = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                let _ =
                    write_line(stream.get_mut(), &Response::err(ApiError::invalid(format!("malformed request: {e}"))))
                        .await;
                return;
            }
        };
        if env.api_version != API_VERSION {
            let msg = format!("API version {} is not supported (agent speaks {API_VERSION})", env.api_version);
            let _ =
                write_line(stream.get_mut(), &Response::err(ApiError::new(crate::api::ErrorKind::Unsupported, msg)))
                    .await;
            return;
        }
        if let Request::Trace { endpoint } = env.request {
            return self.serve_trace(stream, endpoint).await;
        }
        let response = match self.handle(env.request).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        };
        let _ = write_line(stream.get_mut(), &response).await;
    }
}

/// Starts `argv` inside the namespace at `netns`: spawned from a thread that
/// entered it, so the child inherits it.
fn spawn_in(
    netns_path: &Path,
    argv: &[String],
    cwd: Option<&Path>,
    log: Option<std::fs::File>,
) -> Result<Child, ApiError> {
    let argv = argv.to_vec();
    let program = argv[0].clone();
    let cwd = cwd.map(Path::to_path_buf);
    let spawned = netns::run_in(netns_path, move || {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        if let Some(f) = log {
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        // Its own session: not killed with the agent's terminal.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        cmd.spawn()
    })
    .map_err(api_netns)?;
    spawned.map_err(|e| ApiError::invalid(format!("cannot run {program:?}: {e}")))
}

async fn write_line<W: AsyncWriteExt + Unpin, T: serde::Serialize>(w: &mut W, v: &T) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf).await
}

/// Makes sure the pin directory sits on a mounted bpffs, mounting one at
/// its parent (normally /sys/fs/bpf) the way Cilium does when none is.
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between libcs
    let is_bpffs = |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC);
    let parent = dir.parent().unwrap_or(dir);
    if parent.exists() && !is_bpffs(parent) && !dir.exists() {
        tracing::info!("mounting bpffs at {}", parent.display());
        nix::mount::mount(Some("bpffs"), parent, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting bpffs at {}", parent.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating bpffs dir {}", dir.display()))?;
    Ok(())
}

/// Binds the API socket (root only), refusing to steal one that is live.
pub async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another agent is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = bind_socket(&cfg.socket).await?;
    let agent = match Agent::start(cfg.clone()).await {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.socket);
            return Err(e);
        }
    };
    tracing::info!(socket = %cfg.socket.display(), state = %cfg.state_dir.display(), "agent ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(agent.clone().serve_conn(stream)); }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    if cfg.cleanup_on_exit {
        agent.teardown().await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
