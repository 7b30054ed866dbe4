//! The reader side: an immutable snapshot of the state that every writer
//! publishes when it is done, the API views rendered from it, and the
//! reads of the datapath's tables (counters, conntrack) that need no lock.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use datapath_common::reason;

use super::error::{endpoint_not_found, network_not_found};
use super::{blocking, Agent, Inner};
use crate::api::{
    ApiError, AttachmentView, CniAttachment, ContainerView, CounterView, EndpointView, FlowView, NetworkEndpointView,
    NetworkOptionsView, NetworkStatsView, NetworkView, StartView, StatsView, TcView,
};
use crate::datapath::Attachment;
use crate::ipam::format_mac;
use crate::state::{ContainerSpec, DatapathKind, EndpointSpec, NetworkSpec, RunMode, State};

/// What readers see of the agent at one moment.
pub struct Snapshot {
    state: State,
    /// ifindex of each endpoint's host veth.
    host_ifindex: BTreeMap<String, u32>,
    /// ifindex of each attachment's host veth, by its name.
    attach_ifindex: BTreeMap<String, u32>,
    /// The endpoint program's attachment, per host veth that has it.
    attached: BTreeMap<u32, Attachment>,
    /// host ifindex -> (endpoint name, address), to attribute trace lines.
    names: HashMap<u32, (String, Ipv4Addr)>,
    /// What the agent's start did.
    start: StartView,
}

impl Inner {
    pub(super) fn snapshot(&self) -> Snapshot {
        let attached = self
            .host_ifindex
            .values()
            .chain(self.attach_ifindex.values())
            .filter_map(|i| self.bpf.attachment(*i).map(|a| (*i, a)))
            .collect();
        // Every link's host ifindex names its endpoint (traces, flows).
        let names = self
            .state
            .endpoints
            .values()
            .flat_map(|e| e.links().map(move |l| (e, l)))
            .filter_map(|(e, l)| {
                let i = if l.primary { self.host_ifindex.get(&e.name) } else { self.attach_ifindex.get(l.host_ifname) };
                i.map(|i| (*i, (e.name.clone(), l.ip)))
            })
            .collect();
        let start = StartView::from(&self.start);
        Snapshot {
            state: self.state.clone(),
            host_ifindex: self.host_ifindex.clone(),
            attach_ifindex: self.attach_ifindex.clone(),
            attached,
            names,
            start,
        }
    }
}

impl Snapshot {
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn networks(&self) -> Vec<NetworkView> {
        self.state.networks.values().map(|n| self.network_view(n)).collect()
    }

    pub fn network(&self, name: &str) -> Result<NetworkView, ApiError> {
        self.state.networks.get(name).map(|n| self.network_view(n)).ok_or_else(|| network_not_found(name))
    }

    pub fn endpoints(&self) -> Vec<EndpointView> {
        self.state.endpoints.values().map(|e| self.endpoint_view(e)).collect()
    }

    pub fn endpoint(&self, name: &str) -> Result<EndpointView, ApiError> {
        self.state.endpoints.get(name).map(|e| self.endpoint_view(e)).ok_or_else(|| endpoint_not_found(name))
    }

    /// A CNI attachment: its endpoint and what the CNI result needs of its
    /// network; `problems` from `CHECK`.
    pub fn cni_attachment(&self, name: &str, problems: Vec<String>) -> Result<CniAttachment, ApiError> {
        let endpoint = self.endpoint(name)?;
        let net = self.network(&endpoint.network)?;
        Ok(CniAttachment { mtu: net.options.mtu, internal: net.internal, endpoint, problems })
    }

    /// What `ps` shows (reads /proc: call it on a blocking thread).
    pub fn containers(&self) -> Vec<ContainerView> {
        self.state.containers.values().map(|c| self.container_view(c)).collect()
    }

    pub fn container(&self, name: &str) -> Result<ContainerView, ApiError> {
        let c = self.state.containers.get(name);
        c.map(|c| self.container_view(c)).ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))
    }

    /// `datapath port NAME`: what the endpoint NAME, or the endpoint of the
    /// command NAME, publishes.
    pub fn ports(&self, name: &str) -> Result<Vec<crate::ports::Publish>, ApiError> {
        let ep = match self.state.containers.get(name) {
            Some(c) => c.endpoint.as_deref(),
            None => Some(name),
        };
        match ep.and_then(|e| self.state.endpoints.get(e)) {
            Some(e) => Ok(e.ports.clone()),
            None if self.state.containers.contains_key(name) => Ok(Vec::new()),
            None => Err(ApiError::not_found(format!("no endpoint or container named {name:?}"))),
        }
    }

    /// The endpoint (name, address) behind a host veth, for trace lines.
    pub fn endpoint_by_ifindex(&self, ifindex: u32) -> Option<&(String, Ipv4Addr)> {
        self.names.get(&ifindex)
    }

    /// The addresses of an endpoint's links that have a host veth.
    pub fn endpoint_ips(&self, name: &str) -> Vec<Ipv4Addr> {
        self.names.values().filter(|(n, _)| n == name).map(|(_, ip)| *ip).collect()
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
                .links_on(&n.name)
                .map(|(e, l)| NetworkEndpointView {
                    name: e.name.clone(),
                    id: e.id.clone(),
                    ip: l.ip,
                    mac: format_mac(&l.mac),
                    ifname: l.ifname.to_string(),
                    aliases: l.aliases.to_vec(),
                    ip6: l.ip6,
                })
                .collect(),
            owner: n.owner.clone(),
            enable_ipv6: n.ipv6.is_some(),
            subnet_v6: n.ipv6.map(|v6| v6.subnet.to_string()),
            gateway_v6: n.ipv6.map(|v6| v6.gateway),
        }
    }

    fn endpoint_view(&self, e: &EndpointSpec) -> EndpointView {
        let net = self.state.networks.get(&e.network);
        let host_ifindex = self.host_ifindex.get(&e.name).copied();
        EndpointView {
            name: e.name.clone(),
            id: e.id.clone(),
            network: e.network.clone(),
            ip: e.ip,
            prefix_len: net.map(|n| n.subnet.prefix_len()).unwrap_or(32),
            mac: format_mac(&e.mac),
            gateway: net.map(|n| n.gateway).unwrap_or(Ipv4Addr::UNSPECIFIED),
            netns: e.owns_netns.then(|| e.name.clone()),
            netns_path: e.netns_path.clone(),
            ifname: e.ifname.clone(),
            host_ifname: e.host_ifname.clone(),
            host_ifindex: host_ifindex.unwrap_or(0),
            tc: host_ifindex.and_then(|i| self.attached.get(&i)).map(|a| TcView {
                program: a.program.to_string(),
                hook: a.hook.to_string(),
                prog_tag: a.prog_tag.clone(),
            }),
            trace: e.trace,
            container_id: e.container_id.clone(),
            cni: e.cni.clone(),
            created: e.created.clone(),
            ports: e.ports.clone(),
            owner: e.owner.clone(),
            detached: e.detached,
            ip6: e.ip6,
            prefix_len6: e.ip6.and(net.and_then(|n| n.ipv6)).map(|v6| v6.subnet.prefix_len()),
            gateway6: e.ip6.and(net.and_then(|n| n.ipv6)).map(|v6| v6.gateway),
            aliases: e.aliases.clone(),
            attachments: self.attachment_views(e),
            dns: e.dns.clone(),
        }
    }

    /// An endpoint's networks besides its first.
    fn attachment_views(&self, e: &EndpointSpec) -> Vec<AttachmentView> {
        e.attachments
            .iter()
            .map(|a| AttachmentView {
                network: a.network.clone(),
                ifname: a.ifname.clone(),
                ip: a.ip,
                prefix_len: self.state.networks.get(&a.network).map(|n| n.subnet.prefix_len()).unwrap_or(32),
                mac: format_mac(&a.mac),
                host_ifname: a.host_ifname.clone(),
                host_ifindex: self.attach_ifindex.get(&a.host_ifname).copied().unwrap_or(0),
                aliases: a.aliases.clone(),
                ip6: a.ip6,
                prefix_len6: a
                    .ip6
                    .and(self.state.networks.get(&a.network).and_then(|n| n.ipv6))
                    .map(|v6| v6.subnet.prefix_len()),
            })
            .collect()
    }

    fn container_view(&self, c: &ContainerSpec) -> ContainerView {
        let own = match &c.mode {
            RunMode::Container(n) => Some(n),
            _ => None,
        };
        let ep = c.endpoint.as_ref().or(own).and_then(|e| self.state.endpoints.get(e));
        let ip = ep.map(|e| e.ip).filter(|ip| !ip.is_unspecified());
        let ip6 = ep.and_then(|e| e.ip6);
        ContainerView {
            name: c.name.clone(),
            network: c.mode.to_string(),
            endpoint: c.endpoint.clone(),
            ip,
            ip6,
            netns_path: c.netns_path.clone(),
            pid: c.pid,
            status: c.status(),
            argv: c.argv.clone(),
            detached: c.detached,
            rm: c.rm,
            log: c.log.clone(),
            created: c.created.clone(),
            ports: c
                .endpoint
                .as_ref()
                .and_then(|e| self.state.endpoints.get(e))
                .map(|e| e.ports.clone())
                .unwrap_or_default(),
            attachments: c
                .endpoint
                .as_ref()
                .and_then(|e| self.state.endpoints.get(e))
                .map(|e| self.attachment_views(e))
                .unwrap_or_default(),
        }
    }
}

impl Agent {
    /// Per-reason counters (summed over CPUs on a blocking thread) and the
    /// last GC's table pressure.
    pub(super) async fn stats(&self) -> Result<StatsView, ApiError> {
        let counters = self.tables.counters.clone();
        let read = blocking(move || counters.read()).await??;
        let counters = read
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
        let conntrack = self.gc_report.lock().ok().and_then(|r| r.clone()).map(Into::into);
        let snap = self.snapshot();
        let ids: Vec<(String, u32)> = snap
            .state
            .networks
            .values()
            .filter(|n| n.datapath == DatapathKind::Ebpf)
            .map(|n| (n.name.clone(), n.num_id))
            .collect();
        let counters_of = self.tables.counters.clone();
        let per_net = blocking(move || {
            ids.into_iter()
                .map(|(network, id)| {
                    counters_of.network(id).map(|c| NetworkStatsView {
                        network,
                        nat_flows: c.nat_flows,
                        nat_no_port_packets: c.nat_no_port.packets,
                        nat_no_port_bytes: c.nat_no_port.bytes,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        let dns = self.dns.stats();
        Ok(StatsView { counters, conntrack, start: Some(snap.start.clone()), networks: per_net, dns })
    }

    /// Tracked flows, attributed to their endpoints (the table is walked on
    /// a blocking thread, without the writer lock).
    pub(super) async fn conntrack_list(
        &self,
        snap: Arc<Snapshot>,
        endpoint: Option<String>,
    ) -> Result<Vec<FlowView>, ApiError> {
        if let Some(want) = &endpoint {
            if !snap.state.endpoints.contains_key(want) {
                return Err(endpoint_not_found(want));
            }
        }
        let tables = self.tables.clone();
        let flows = blocking(move || tables.ct()?.flows()).await??;
        Ok(flows
            .into_iter()
            .map(|flow| {
                let name = snap.endpoint_by_ifindex(flow.ifindex).map(|(n, _)| n.clone());
                super::error::flow_view(name, flow)
            })
            .filter(|f| endpoint.is_none() || f.endpoint == endpoint)
            .collect())
    }
}
