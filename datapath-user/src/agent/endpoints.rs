//! Endpoints: a namespace (made or given) with a veth whose host end is on
//! the network's bridge, an address and a default route, the endpoint
//! program on the host end and the endpoint in the datapath's maps. Every
//! step of a create is recorded ([`Made`]) and undone in reverse on failure.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use datapath_common::{EndpointInfo, EP_F_KERNEL_FLOWS, EP_F_TRACE};
use nix::errno::Errno;

use super::{blocking, Inner, DEFAULT_NETWORK, NONE_NETWORK};
use crate::api::{ApiError, EndpointCreate};
use crate::host::netlink::{Netlink, BRIDGE_MAX_PORTS};
use crate::host::netns;
use crate::ipam::{self, mac_for};
use crate::state::{self, CniMark, DatapathKind, EndpointSpec, Journal, Link, NetworkSpec, RunMode};

/// What was made so far while creating an endpoint, undone in reverse on
/// failure.
#[derive(Default)]
pub(super) struct Made {
    netns: Option<PathBuf>,
    host_ifindex: Option<u32>,
    attached: Option<u32>,
    maps: Option<(u32, u32)>,
    /// The bridge holding the endpoint's neighbour entry, and its address.
    pinned: Option<(u32, Ipv4Addr)>,
    /// Links on more networks made for the create (`--network` given more
    /// than once), by host interface name: undone before the first one.
    pub(super) more: Vec<(String, Made)>,
}

impl Made {
    /// What an existing link of the endpoint is made of, to remove it.
    pub(super) fn existing(host_ifindex: Option<u32>, ip: Ipv4Addr, pinned_on: Option<u32>) -> Made {
        let ipv4 = datapath_common::ipv4_key(ip.octets());
        Made {
            host_ifindex,
            attached: host_ifindex,
            maps: host_ifindex.map(|i| (i, ipv4)),
            pinned: pinned_on.map(|b| (b, ip)),
            ..Made::default()
        }
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains('/') && !name.contains(char::is_whitespace)
}

/// Makes `/run/netns/NAME`, recorded in the journal first (so `reset`
/// finds it even without the state file).
async fn create_netns(journal: Journal, name: &str) -> Result<PathBuf, ApiError> {
    let name = name.to_string();
    blocking(move || {
        journal.add_netns(&name).map_err(|e| ApiError::internal(format!("recording netns {name}: {e}")))?;
        netns::create_named(&name).map_err(ApiError::from)
    })
    .await?
}

/// Deletes a namespace the agent made, and its journal record.
async fn delete_netns(journal: Journal, path: PathBuf) -> Result<(), ApiError> {
    blocking(move || {
        netns::delete_path(&path)?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            journal.remove_netns(name);
        }
        Ok(())
    })
    .await?
}

impl Inner {
    /// What the datapath's maps hold for one link of an endpoint (its first
    /// network's or an attachment's: each is its own entry, with its own
    /// network id, so policy, counters and tracing work per interface).
    pub(super) fn endpoint_info(&self, spec: &EndpointSpec, link: &Link<'_>, ifindex: u32) -> EndpointInfo {
        let net = self.state.networks.get(link.network);
        let traced = spec.trace || self.trace_all > 0 || self.trace_refs.get(&spec.name).copied().unwrap_or(0) > 0;
        // Ports a chained CNI `portmap` publishes with netfilter DNAT: the
        // replies of those flows belong to the kernel's conntrack.
        let kernel_flows = spec.cni.as_ref().is_some_and(|c| !c.port_mappings.is_empty());
        EndpointInfo {
            ifindex,
            ipv4: datapath_common::ipv4_key(link.ip.octets()),
            mac: link.mac,
            gw_mac: net.map(|n| mac_for(n.gateway)).unwrap_or_default(),
            network_id: net.map(|n| n.num_id).unwrap_or(0),
            flags: if traced { EP_F_TRACE } else { 0 } | if kernel_flows { EP_F_KERNEL_FLOWS } else { 0 },
        }
    }

    /// Validates a create request into the spec of a new endpoint of `net`.
    fn endpoint_spec(
        &self,
        req: &EndpointCreate,
        net: &NetworkSpec,
        cni: Option<CniMark>,
    ) -> Result<EndpointSpec, ApiError> {
        if let Some(path) = &req.netns_path {
            if crate::host::process::in_netns(std::process::id(), path) == Some(true) {
                return Err(ApiError::invalid(format!(
                    "{} is the node's own network namespace: an endpoint needs a namespace of its own",
                    path.display()
                )));
            }
        }
        if req.detached && (req.netns_path.is_some() || req.ifname.is_some()) {
            return Err(ApiError::invalid("a detached endpoint has no namespace and names its container end itself"));
        }
        let id = state::random_id();
        let ifname = match &req.ifname {
            // Unique in the node namespace while it waits there to be moved.
            None if req.detached => format!("dpc{}", &id[..8]),
            None => "eth0".to_string(),
            Some(name) => name.clone(),
        };
        if !valid_ifname(&ifname) {
            return Err(ApiError::invalid(format!("invalid interface name {ifname:?}")));
        }
        let mac = req.mac.as_deref().map(parse_mac).transpose()?;
        let ip = ipam::assign(&net.subnet, net.gateway, &self.state.used_addresses(&net.name), req.ip)?;
        let ip6 = match (net.ipv6, req.ip6) {
            (Some(v6), requested) => {
                Some(ipam::v6::assign(&v6.subnet, v6.gateway, &self.state.used_addresses6(&net.name), requested)?)
            }
            (None, Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "network {:?} has no IPv6 subnet: --ip6 needs a network created with --ipv6",
                    net.name
                )))
            }
            (None, None) => None,
        };
        let (netns_path, owns_netns) = match &req.netns_path {
            _ if req.detached => (PathBuf::new(), false),
            Some(p) => (p.clone(), false),
            None => (netns::named_path(&req.name), true),
        };
        Ok(EndpointSpec {
            name: req.name.clone(),
            network: net.name.clone(),
            ip,
            mac: mac.unwrap_or_else(|| mac_for(ip)),
            netns_path,
            owns_netns,
            ifname,
            host_ifname: format!("dp{}", &id[..8]),
            id,
            container_id: req.container_id.clone(),
            cni,
            trace: req.trace,
            created: state::now_rfc3339(),
            creating: true,
            ports: req.publish.clone(),
            aliases: req.aliases.clone(),
            attachments: Vec::new(),
            dns: req.dns.clone(),
            detached: req.detached,
            owner: req.owner.clone(),
            ip6,
        })
    }

    /// Creates an endpoint; returns its name.
    pub(super) async fn endpoint_create(&mut self, req: EndpointCreate) -> Result<String, ApiError> {
        self.endpoint_create_as(req, None).await
    }

    /// Creates an endpoint, marked as CNI's attachment when `cni` is set
    /// (`agent/cni.rs`); returns its name.
    pub(super) async fn endpoint_create_as(
        &mut self,
        req: EndpointCreate,
        cni: Option<CniMark>,
    ) -> Result<String, ApiError> {
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
        let net = self.known_network(&network)?;
        // The bridge's port limit and the size of the endpoint maps, checked
        // before anything is made (the bridge used to fail the 1024th port
        // half-way with an internal "Exchange full").
        self.state
            .room_for_endpoint(&net, BRIDGE_MAX_PORTS, datapath_common::MAX_ENDPOINTS as usize)
            .map_err(ApiError::conflict)?;
        // Published ports too.
        self.check_publish(&req.name, &net, &req.publish).await?;
        for alias in &req.aliases {
            state::validate_name("alias", alias).map_err(ApiError::invalid)?;
        }
        crate::dns::check_names(&self.state, &net.name, &req.name, &req.aliases).map_err(ApiError::conflict)?;
        if req.dns.len() > crate::dns::MAX_UPSTREAMS {
            return Err(ApiError::invalid(format!("at most {} --dns servers", crate::dns::MAX_UPSTREAMS)));
        }
        let mut spec = self.endpoint_spec(&req, &net, cni)?;
        // More networks (`--network` given more than once): planned now,
        // made after the first link, all or nothing.
        let mut more_nets = Vec::new();
        for name in &req.more_networks {
            let (attachment, anet) = self.plan_attachment(&spec, name, None, None, Vec::new())?;
            spec.attachments.push(attachment);
            more_nets.push(anet);
        }
        // Write-ahead: the name and address are taken, and a crash from
        // here on is rolled back by the next agent.
        self.state.endpoints.insert(spec.name.clone(), spec.clone());
        if let Err(e) = self.save().await {
            self.state.endpoints.remove(&spec.name);
            return Err(e);
        }
        let mut made = Made::default();
        let mut done = self.build_endpoint(&spec, &net, &mut made).await;
        for (link, anet) in spec.links().skip(1).zip(&more_nets) {
            if done.is_err() {
                break;
            }
            let mut sub = Made::default();
            done = self.build_link(&spec, link, anet, &mut sub).await;
            made.more.push((link.host_ifname.to_string(), sub));
        }
        if done.is_ok() {
            spec.creating = false;
            self.state.endpoints.insert(spec.name.clone(), spec.clone());
            done = match self.save().await {
                Ok(()) => self.sync_node().await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = done {
            self.state.endpoints.remove(&spec.name);
            let _ = self.sync_node().await;
            self.undo(&spec, made).await;
            let _ = self.save().await;
            return Err(e);
        }
        tracing::info!(endpoint = %spec.name, ip = %spec.ip, network = %spec.network, more = spec.attachments.len(), "endpoint created");
        Ok(spec.name)
    }

    /// An endpoint of the `none` network: its own namespace with only `lo` up.
    async fn endpoint_create_none(&mut self, req: EndpointCreate) -> Result<String, ApiError> {
        if req.ip.is_some() || req.ip6.is_some() {
            return Err(ApiError::invalid("--ip makes no sense with the none network"));
        }
        if req.netns_path.is_some() || req.detached {
            return Err(ApiError::invalid("the none network makes its own namespace"));
        }
        if !req.publish.is_empty() {
            return Err(ApiError::invalid("the none network cannot publish ports"));
        }
        if !req.more_networks.is_empty() || !req.aliases.is_empty() {
            return Err(ApiError::invalid("an endpoint of the none network is on no other network and has no aliases"));
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
            cni: None,
            trace: false,
            created: state::now_rfc3339(),
            creating: false,
            ports: Vec::new(),
            detached: false,
            owner: req.owner.clone(),
            ip6: None,
            aliases: Vec::new(),
            attachments: Vec::new(),
            dns: Vec::new(),
        };
        let mut made = Made::default();
        let mut built = self.build_none(&spec, &mut made).await;
        if built.is_ok() {
            self.state.endpoints.insert(spec.name.clone(), spec.clone());
            built = self.save().await;
            if built.is_err() {
                self.state.endpoints.remove(&spec.name);
            }
        }
        if let Err(e) = built {
            self.undo(&spec, made).await;
            return Err(e);
        }
        Ok(spec.name)
    }

    async fn build_none(&mut self, spec: &EndpointSpec, made: &mut Made) -> Result<(), ApiError> {
        create_netns(self.journal(), &spec.name).await?;
        made.netns = Some(spec.netns_path.clone());
        let inside = Netlink::in_netns(&spec.netns_path).await?;
        if let Some(lo) = inside.link_index("lo").await? {
            inside.set_up(lo).await?;
        }
        Ok(())
    }

    /// Makes the namespace and the endpoint's first link, recording each
    /// step in `made` for the rollback.
    async fn build_endpoint(
        &mut self,
        spec: &EndpointSpec,
        net: &NetworkSpec,
        made: &mut Made,
    ) -> Result<(), ApiError> {
        if spec.owns_netns {
            create_netns(self.journal(), &spec.name).await?;
            made.netns = Some(spec.netns_path.clone());
        } else if !spec.detached {
            let path = spec.netns_path.clone();
            blocking(move || netns::open(&path)).await??;
        }
        self.failpoint("netns")?;
        if let Some(first) = spec.links().next() {
            self.build_link(spec, first, net, made).await?;
        }
        Ok(())
    }

    /// Makes one link of an endpoint whose namespace exists: the veth on
    /// the network's bridge, the program and map entries on its host end,
    /// its address inside, and for the first link the default route. Used
    /// for the first network and for every attachment alike; each step is
    /// recorded in `made` for the rollback.
    pub(super) async fn build_link(
        &mut self,
        spec: &EndpointSpec,
        link: Link<'_>,
        net: &NetworkSpec,
        made: &mut Made,
    ) -> Result<(), ApiError> {
        let t0 = std::time::Instant::now();
        let lap = |what: &str| tracing::debug!(endpoint = %spec.name, ifname = %link.ifname, "{what} after {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
        let bridge = match self.bridges.get(&net.name) {
            Some(i) => *i,
            None => self.ensure_bridge(net).await?,
        };
        // The host end stays down and out of the bridge until the program
        // is attached: no interface ever passes traffic around the datapath.
        let veth = if spec.detached {
            // Both ends in the node namespace: the owner moves the
            // container end into its sandbox (it stays down until then).
            self.nl.create_veth_pair_down(link.host_ifname, link.ifname, link.mac, net.options.mtu).await
        } else {
            self.nl.create_veth_down(link.host_ifname, link.ifname, &spec.netns_path, link.mac, net.options.mtu).await
        };
        let host = veth.map_err(|e| match e.errno() {
            Some(errno) if errno == Errno::EEXIST as i32 => {
                ApiError::conflict(format!("interface {} already exists in the endpoint's namespace", link.ifname))
            }
            _ => e.into(),
        })?;
        made.host_ifindex = Some(host);
        self.remember_link(spec, &link, host);
        self.link_failpoint(&link, "veth")?;
        lap("veth");

        if net.datapath == DatapathKind::Ebpf {
            tokio::task::block_in_place(|| self.bpf.attach(link.host_ifname, host))?;
            made.attached = Some(host);
        }
        self.link_failpoint(&link, "attach")?;
        lap("attach");
        if net.datapath == DatapathKind::Ebpf {
            let info = self.endpoint_info(spec, &link, host);
            tokio::task::block_in_place(|| {
                self.bpf.upsert_endpoint(info)?;
                // Each link's own IPv6 address (dual-stack networks).
                self.bpf.set_endpoint6(&info, link.ip6)
            })
            .inspect_err(|_| tokio::task::block_in_place(|| self.bpf.remove_endpoint(host, info.ipv4)))?;
            made.maps = Some((host, info.ipv4));
        }
        self.link_failpoint(&link, "maps")?;
        if spec.detached {
            // Addresses and routes inside are the owner's (Docker sets
            // them when it moves the interface).
            return self.plug(spec, &link, net, host, bridge, made).await;
        }

        let inside = Netlink::in_netns(&spec.netns_path).await?;
        if link.primary {
            if let Some(lo) = inside.link_index("lo").await? {
                inside.set_up(lo).await?;
            }
        } else {
            // An endpoint on two networks never routes between them: the
            // isolation of networks relies on it (a namespace may have
            // inherited forwarding from the node's initial namespace).
            let path = spec.netns_path.clone();
            blocking(move || netns::run_in(&path, crate::host::sysctl::disable_forwarding)).await???;
        }
        let eth = inside.require_index(link.ifname).await?;
        inside.add_address(eth, link.ip, net.subnet.prefix_len()).await?;
        inside.set_up(eth).await?;
        // Internal networks have no route beyond their subnet. A namespace
        // that has a default route keeps it (a container's own, or another
        // network's endpoint's): the datapath adds one only where there is
        // none, and what it adds goes with its veth. Attachments get their
        // subnet's connected route only: the default route stays on the
        // first network (Docker's rule).
        if link.primary && !net.options.internal && (spec.owns_netns || !inside.has_default_route().await?) {
            inside.add_default_route(net.gateway).await?;
        }
        // Every link on a dual-stack network is configured alike. The IPv6
        // default route is the first dual-stack network's (Docker picks the
        // gateway per family): an attachment adds one only when the
        // namespace has none (its first network is IPv4-only or internal),
        // and it goes with the attachment's interface.
        if let (Some(v6), Some(ip6)) = (net.ipv6, link.ip6) {
            let (path, ifname) = (spec.netns_path.clone(), link.ifname.to_string());
            blocking(move || netns::enable_ipv6(&path, &ifname)).await??;
            inside.add_address6(eth, ip6, v6.subnet.prefix_len()).await?;
            if !net.options.internal && ((link.primary && spec.owns_netns) || !inside.has_default_route6().await?) {
                inside.add_default_route6(v6.gateway).await?;
            }
        }
        self.link_failpoint(&link, "addr")?;
        lap("addr");
        self.plug(spec, &link, net, host, bridge, made).await
    }

    /// The failpoints of a link's steps: `endpoint:STEP` for the first
    /// link, `connect:STEP` for an attachment.
    fn link_failpoint(&self, link: &Link<'_>, step: &str) -> Result<(), ApiError> {
        if link.primary {
            self.failpoint(step)
        } else {
            self.failpoint_at("connect", step)
        }
    }

    /// Records the host ifindex of a link: by endpoint name for the first
    /// one, by host interface name for an attachment.
    pub(super) fn remember_link(&mut self, spec: &EndpointSpec, link: &Link<'_>, host: u32) {
        if link.primary {
            self.host_ifindex.insert(spec.name.clone(), host);
        } else {
            self.attach_ifindex.insert(link.host_ifname.to_string(), host);
        }
    }

    /// The last step of a build: the host end into the bridge and up, the
    /// endpoint pinned on the bridge.
    async fn plug(
        &mut self,
        spec: &EndpointSpec,
        link: &Link<'_>,
        net: &NetworkSpec,
        host: u32,
        bridge: u32,
        made: &mut Made,
    ) -> Result<(), ApiError> {
        self.nl.enslave_up(host, bridge).await?;
        // Its own published ports come back out its port (hairpin): the
        // kernel's translation, on kernel networks, and for IPv6 (the
        // kernel's on both datapaths).
        let kernel_nat = net.datapath == DatapathKind::Kernel || link.ip6.is_some();
        if kernel_nat && link.primary && !spec.ports.is_empty() {
            self.nl.set_hairpin(host).await?;
        }
        if net.datapath == DatapathKind::Ebpf {
            // Endpoints' ARP for the gateway is answered in eBPF, so the
            // node never learns their addresses from it: pinned here, the
            // node's own ARP requests (broadcast to every port) never start.
            made.pinned = Some((bridge, link.ip));
            self.nl.pin_endpoint(bridge, host, link.ip, link.mac).await?;
        }
        Ok(())
    }

    /// Undoes what `made` records, in reverse (the links on more networks
    /// first, then the first one, then the namespace); errors are logged,
    /// not returned (a rollback goes as far as it can).
    pub(super) async fn undo(&mut self, spec: &EndpointSpec, mut made: Made) {
        while let Some((host_ifname, more)) = made.more.pop() {
            self.undo_link(&spec.name, &host_ifname, more).await;
            self.attach_ifindex.remove(&host_ifname);
        }
        let netns = made.netns.take();
        self.undo_link(&spec.name, &spec.host_ifname, made).await;
        self.host_ifindex.remove(&spec.name);
        if let Some(path) = netns {
            if let Err(e) = delete_netns(self.journal(), path).await {
                tracing::error!(endpoint = %spec.name, "rollback: deleting netns: {e}");
            }
        }
    }

    /// Undoes one link's map entries, program, neighbour entry and veth.
    pub(super) async fn undo_link(&mut self, endpoint: &str, host_ifname: &str, made: Made) {
        tokio::task::block_in_place(|| {
            if let Some((ifindex, ip)) = made.maps {
                self.bpf.remove_endpoint(ifindex, ip);
            }
            if let Some(ifindex) = made.attached {
                self.bpf.detach(ifindex);
            }
        });
        if let Some((bridge, ip)) = made.pinned {
            if let Err(e) = self.nl.unpin_endpoint(bridge, ip).await {
                tracing::error!(endpoint = %endpoint, "rollback: deleting the neighbour entry of {ip}: {e}");
            }
        }
        if let Some(ifindex) = made.host_ifindex {
            if let Err(e) = self.nl.delete_link(ifindex).await {
                tracing::error!(endpoint = %endpoint, "rollback: deleting veth {host_ifname}: {e}");
            }
        }
    }

    /// The bridge an endpoint's link on `network` is pinned on (eBPF
    /// networks only).
    pub(super) fn pinned_on(&self, network: &str) -> Option<u32> {
        match self.state.networks.get(network) {
            Some(n) if n.datapath == DatapathKind::Ebpf => self.bridges.get(&n.name).copied(),
            _ => None,
        }
    }

    pub(super) async fn endpoint_remove(&mut self, name: &str) -> Result<(), ApiError> {
        let spec = self.known_endpoint(name)?;
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
        let mut made = Made::existing(ifindex, spec.ip, self.pinned_on(&spec.network));
        made.netns = spec.owns_netns.then(|| spec.netns_path.clone());
        // Every link goes: the attachments' first.
        for a in &spec.attachments {
            let ifindex = match self.attach_ifindex.get(&a.host_ifname) {
                Some(i) => Some(*i),
                None => self.nl.link_index(&a.host_ifname).await?,
            };
            made.more.push((a.host_ifname.clone(), Made::existing(ifindex, a.ip, self.pinned_on(&a.network))));
        }
        self.undo(&spec, made).await;
        self.trace_refs.remove(name);
        self.state.endpoints.remove(name);
        self.state.containers.retain(|_, c| c.endpoint.as_deref() != Some(name));
        if let Err(e) = self.sync_node().await {
            tracing::error!(endpoint = %name, "updating node configuration: {e}");
        }
        self.save().await?;
        tracing::info!(endpoint = %name, "endpoint removed");
        Ok(())
    }

    /// Removes what a half-made endpoint may have left (its veths, its
    /// namespace when the agent made it); absent pieces are fine.
    pub(super) async fn remove_leftovers(&mut self, spec: &EndpointSpec) -> Result<(), ApiError> {
        for l in spec.links() {
            self.remove_host_link(l.host_ifname).await?;
        }
        if spec.owns_netns && spec.netns_path.exists() {
            delete_netns(self.journal(), spec.netns_path.clone()).await?;
        } else if spec.owns_netns {
            self.journal().remove_netns(&spec.name);
        }
        Ok(())
    }

    /// Deletes a host veth (and so its peer) by name, if it exists.
    pub(super) async fn remove_host_link(&mut self, host_ifname: &str) -> Result<(), ApiError> {
        if !host_ifname.is_empty() {
            if let Some(host) = self.nl.link_index(host_ifname).await? {
                tokio::task::block_in_place(|| self.bpf.detach(host));
                self.nl.delete_link(host).await?;
            }
        }
        Ok(())
    }

    /// Brings an endpoint from the state back into the datapath after an
    /// agent restart: its first link, then its attachments.
    pub(super) async fn restore_endpoint(&mut self, spec: &EndpointSpec) -> Result<(), ApiError> {
        self.restore_first_link(spec).await?;
        if self.state.endpoints.contains_key(&spec.name) {
            self.restore_attachments(spec).await?;
        }
        Ok(())
    }

    /// Re-attaches and re-fills the maps of an endpoint's first link when it
    /// survived, rebuilds the endpoint from scratch otherwise.
    async fn restore_first_link(&mut self, spec: &EndpointSpec) -> Result<(), ApiError> {
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
        let net = self.known_network(&spec.network)?;
        if !spec.owns_netns && !spec.detached && !spec.netns_path.exists() {
            // A namespace someone else made (a container's) is gone: so is
            // the container; its endpoint goes too.
            tracing::warn!(endpoint = %spec.name, netns = %spec.netns_path.display(), "namespace gone, removing the endpoint");
            self.remove_leftovers(spec).await?;
            self.state.endpoints.remove(&spec.name);
            return self.save().await;
        }
        let host = self.nl.link_index(&spec.host_ifname).await?;
        if let (Some(host), true) = (host, spec.detached || spec.netns_path.exists()) {
            self.host_ifindex.insert(spec.name.clone(), host);
            if net.datapath == DatapathKind::Kernel {
                return Ok(());
            }
            let Some(first) = spec.links().next() else { return Ok(()) };
            let info = self.endpoint_info(spec, &first, host);
            let how = tokio::task::block_in_place(|| {
                let how = self.bpf.attach(&spec.host_ifname, host)?;
                self.bpf.upsert_endpoint(info)?;
                self.bpf.set_endpoint6(&info, spec.ip6).map(|()| how)
            })?;
            self.start.count(how);
            if let Some(bridge) = self.bridges.get(&net.name).copied() {
                self.nl.pin_endpoint(bridge, host, spec.ip, spec.mac).await?;
            }
            return Ok(());
        }
        tracing::warn!(endpoint = %spec.name, "endpoint links are gone, rebuilding it");
        if let Some(host) = host {
            self.nl.delete_link(host).await?;
        }
        if spec.owns_netns {
            delete_netns(self.journal(), spec.netns_path.clone()).await?;
        }
        let mut made = Made::default();
        if let Err(e) = self.build_endpoint(spec, &net, &mut made).await {
            self.undo(spec, made).await;
            return Err(e);
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff` into bytes: a unicast address, not all zeros.
pub(crate) fn parse_mac(s: &str) -> Result<[u8; 6], ApiError> {
    let bad = || ApiError::invalid(format!("invalid MAC address {s:?}"));
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(ApiError::invalid(format!("{s} is not a unicast MAC address")));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs_are_parsed_strictly() {
        assert_eq!(parse_mac("02:42:0a:1e:00:02").ok(), Some([2, 0x42, 10, 30, 0, 2]));
        for bad in [
            "",
            "02:42:0a:1e:00",
            "02:42:0a:1e:00:02:03",
            "02-42-0a-1e-00-02",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "2:42:a:1e:0:2",
            "zz:42:0a:1e:00:02",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
