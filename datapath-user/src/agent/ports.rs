//! Published ports, the agent's side: what a new endpoint may publish
//! (conflicts with other publications and with the node's listening
//! sockets, internal networks refused: all checked before anything is
//! made), the `PORTS` map the eBPF datapath translates with, and
//! `route_localnet` on the bridges. The netfilter rules (the kernel
//! datapath, and the node's own connections on both) are rendered with the
//! rest of the node's rules by `host::netfilter`; all of it is brought in
//! line by `sync_node` after every change, so a removed endpoint's ports
//! are withdrawn with it. An existing endpoint's ports can be changed
//! too ([`Inner::endpoint_publish`], Docker's `ProgramExternalConnectivity`
//! and `RevokeExternalConnectivity`), validated the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use datapath_common::{ipv4_key, PortKey, PortTarget, Published6Key};

use super::{blocking, Inner, NONE_NETWORK};
use crate::api::ApiError;
use crate::ports::{self, Listener, Proto, Publish};
use crate::state::{DatapathKind, NetworkSpec};

/// The node's listening TCP and bound UDP sockets, IPv4 and IPv6 (this
/// thread's network namespace: the node's).
fn node_listeners() -> Vec<Listener> {
    let mut v = Vec::new();
    let tables = [
        (Proto::Tcp, "/proc/net/tcp"),
        (Proto::Udp, "/proc/net/udp"),
        (Proto::Tcp, "/proc/net/tcp6"),
        (Proto::Udp, "/proc/net/udp6"),
    ];
    for (proto, path) in tables {
        if let Ok(table) = std::fs::read_to_string(path) {
            v.extend(ports::listening(proto, &table));
        }
    }
    v
}

impl Inner {
    /// Every IPv4 address of the node but loopback's: where a port
    /// published without `HOST_IP` is reachable in eBPF.
    pub(super) async fn node_addresses(&self) -> Result<Vec<Ipv4Addr>, ApiError> {
        let mut out = Vec::new();
        for (index, _) in self.nl.links().await? {
            for (a, _) in self.nl.ipv4_addresses(index).await? {
                if !a.is_loopback() && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every global IPv6 address of the node (not loopback, not
    /// link-local): where a port published on an IPv6 address may be.
    async fn node_addresses6(&self) -> Result<Vec<Ipv6Addr>, ApiError> {
        let mut out = Vec::new();
        for (index, _) in self.nl.links().await? {
            for a in self.nl.ipv6_global_addresses(index).await? {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Whether endpoint `name` of `net` may publish `want`: refused with a
    /// clear error (and nothing made) on an internal network, when a port
    /// is published already (by another endpoint) or a socket of the node
    /// listens on it, or when `HOST_IP` is not an address of the node.
    pub(super) async fn check_publish(&self, name: &str, net: &NetworkSpec, want: &[Publish]) -> Result<(), ApiError> {
        if want.is_empty() {
            return Ok(());
        }
        if let Some(p) = want.iter().find(|p| p.host_port == 0 || p.container_port == 0) {
            return Err(ApiError::invalid(format!("--publish {p}: port 0 is not a port")));
        }
        if net.options.internal {
            return Err(ApiError::invalid(format!(
                "network {:?} is internal: its endpoints cannot publish ports",
                net.name
            )));
        }
        for (i, p) in want.iter().enumerate() {
            if let Some(q) = want[..i].iter().find(|q| q.conflicts(p)) {
                return Err(ApiError::invalid(format!("--publish {p} conflicts with {q}")));
            }
        }
        for e in self.state.endpoints.values().filter(|e| e.name != name) {
            if let Some((p, q)) = want.iter().find_map(|p| e.ports.iter().find(|q| q.conflicts(p)).map(|q| (p, q))) {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by endpoint {:?} ({q})",
                    p.host(),
                    p.proto,
                    e.name
                )));
            }
        }
        // An IPv6 host address needs an endpoint with an IPv6 address:
        // its first network dual stack.
        if let Some(p) = want.iter().find(|p| !p.on_v4()) {
            if net.ipv6.is_none() {
                return Err(ApiError::invalid(format!(
                    "--publish {p}: network {:?} has no IPv6 (create it with --ipv6)",
                    net.name
                )));
            }
        }
        let addrs = self.node_addresses().await?;
        let addrs6 = if want.iter().any(|p| !p.on_v4()) { self.node_addresses6().await? } else { Vec::new() };
        let foreign = |a: IpAddr| match a {
            IpAddr::V4(a) => !a.is_loopback() && !addrs.contains(&a),
            IpAddr::V6(a) => !addrs6.contains(&a),
        };
        if let Some(p) = want.iter().find(|p| p.host_ip.is_some_and(foreign)) {
            return Err(ApiError::invalid(format!("--publish {p}: {} is not an address of the node", p.host())));
        }
        let listeners = blocking(node_listeners).await?;
        if let Some((p, l)) = want.iter().find_map(|p| ports::shadowed(p, &listeners).map(|l| (p, l))) {
            return Err(ApiError::conflict(format!(
                "port {}/{} is in use on the node (a socket listens on {l})",
                p.host(),
                p.proto
            )));
        }
        Ok(())
    }

    /// A host port for each publication of `want` that leaves it to the
    /// datapath (`host_port` 0): the one it has already (`had`: the
    /// endpoint's current ports, so a repeated request keeps its ports),
    /// else the first free one of [`ports::CHOSEN_PORTS`].
    async fn choose_host_ports(&self, had: &[Publish], name: &str, want: &mut [Publish]) -> Result<(), ApiError> {
        if want.iter().all(|p| p.host_port != 0) {
            return Ok(());
        }
        let listeners = blocking(node_listeners).await?;
        let mut taken: Vec<Publish> = self
            .state
            .endpoints
            .values()
            .filter(|e| e.name != name)
            .flat_map(|e| e.ports.iter().copied())
            .chain(want.iter().filter(|p| p.host_port != 0).copied())
            .collect();
        for p in want.iter_mut().filter(|p| p.host_port == 0) {
            let again = had.iter().find(|h| {
                (h.host_ip, h.container_port, h.proto) == (p.host_ip, p.container_port, p.proto)
                    && !taken.iter().any(|t| t.conflicts(h))
            });
            p.host_port = match again {
                Some(h) => h.host_port,
                None => ports::choose_host_port(p, &taken, &listeners).ok_or_else(|| {
                    ApiError::conflict(format!(
                        "no free host port in {}-{} for {}/{}",
                        ports::CHOSEN_PORTS.start(),
                        ports::CHOSEN_PORTS.end(),
                        p.container_port,
                        p.proto
                    ))
                })?,
            };
            taken.push(*p);
        }
        Ok(())
    }

    /// Sets the ports endpoint `name` publishes to exactly `publish` (empty:
    /// all withdrawn); a host port 0 is chosen by the agent. Checked like a create's (nothing changes when
    /// refused), persisted, then brought into the `PORTS` map and the
    /// netfilter rules; a failure there restores the old ports.
    pub(super) async fn endpoint_publish(&mut self, name: &str, mut publish: Vec<Publish>) -> Result<String, ApiError> {
        let ep = self.known_endpoint(name)?;
        if ep.creating {
            return Err(ApiError::conflict(format!("endpoint {name:?} is being created")));
        }
        if ep.ports == publish {
            return Ok(ep.name);
        }
        if ep.network == NONE_NETWORK && !publish.is_empty() {
            return Err(ApiError::invalid("the none network cannot publish ports"));
        }
        if !publish.is_empty() {
            let net = self.known_network(&ep.network)?;
            let publish = &mut publish;
            self.choose_host_ports(&ep.ports, name, publish).await?;
            self.check_publish(name, &net, publish).await?;
        }
        let set = |inner: &mut Inner, ports: Vec<Publish>| {
            if let Some(e) = inner.state.endpoints.get_mut(name) {
                e.ports = ports;
            }
        };
        set(self, publish.clone());
        let done = match self.save().await {
            Ok(()) => self.sync_node().await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            set(self, ep.ports.clone());
            let _ = self.sync_node().await;
            let _ = self.save().await;
            return Err(e);
        }
        // The kernel's translations (kernel networks, and IPv6 on both)
        // need hairpin mode for the endpoint's own connections to its
        // ports, as at create (`endpoints::plug`).
        let kernel_nat = ep.ip6.is_some()
            || self.state.networks.get(&ep.network).is_some_and(|n| n.datapath == DatapathKind::Kernel);
        if let (true, false, Some(&host)) = (kernel_nat, publish.is_empty(), self.host_ifindex.get(name)) {
            if let Err(e) = self.nl.set_hairpin(host).await {
                tracing::warn!(endpoint = %name, "hairpin mode on its bridge port: {e}");
            }
        }
        tracing::info!(endpoint = %name, ports = publish.len(), "published ports set");
        Ok(ep.name)
    }

    /// The `PORTS` entries the state wants: one per eBPF endpoint's
    /// publication and node address it covers (`addrs`: the node's
    /// addresses; loopback publications have none).
    fn wanted_ports(&self, addrs: &[Ipv4Addr]) -> BTreeMap<PortKey, PortTarget> {
        let mut want = BTreeMap::new();
        for e in self.state.endpoints.values().filter(|e| !e.ports.is_empty()) {
            let ebpf = self.state.networks.get(&e.network).is_some_and(|n| n.datapath == DatapathKind::Ebpf);
            let Some(&ifindex) = self.host_ifindex.get(&e.name) else { continue };
            if !ebpf {
                continue;
            }
            // IPv6 publications are the kernel's (nft DNAT in `ip6 datapath`).
            for p in e.ports.iter().filter(|p| !p.is_loopback() && p.on_v4()) {
                let target =
                    PortTarget { addr: ipv4_key(e.ip.octets()), ifindex, port: p.container_port.to_be(), _pad: [0; 2] };
                let on: Vec<Ipv4Addr> = match p.host_ip {
                    Some(IpAddr::V4(a)) => vec![a],
                    Some(IpAddr::V6(_)) => Vec::new(),
                    None => addrs.to_vec(),
                };
                for a in on {
                    want.insert(PortKey::new(p.proto.number(), ipv4_key(a.octets()), p.host_port.to_be()), target);
                }
            }
        }
        want
    }

    /// Brings the `PORTS` map in line with the state and the node's
    /// addresses (called by `sync_node`, and by the upkeep to follow
    /// address changes).
    pub(super) async fn sync_ports(&mut self) -> Result<(), ApiError> {
        let any = self.state.endpoints.values().any(|e| !e.ports.is_empty());
        let addrs = if any { self.node_addresses().await? } else { Vec::new() };
        let want6 = self.wanted_published6();
        if self.published6_written.as_ref() != Some(&want6) {
            tokio::task::block_in_place(|| self.bpf.sync_published6(&want6))?;
            self.published6_written = Some(want6);
        }
        let want = self.wanted_ports(&addrs);
        if self.ports_written.as_ref() == Some(&want) {
            return Ok(());
        }
        tokio::task::block_in_place(|| self.bpf.sync_ports(&want))?;
        self.ports_written = Some(want);
        Ok(())
    }

    /// The container ports published by endpoints with an IPv6 address on
    /// eBPF networks: the kernel translates IPv6 connections to them, the
    /// datapath hands their replies to it (`PUBLISHED6`).
    fn wanted_published6(&self) -> BTreeSet<Published6Key> {
        let mut want = BTreeSet::new();
        for e in self.state.endpoints.values().filter(|e| !e.ports.is_empty()) {
            let ebpf = self.state.networks.get(&e.network).is_some_and(|n| n.datapath == DatapathKind::Ebpf);
            let Some(ip6) = e.ip6.filter(|_| ebpf) else { continue };
            // Bound on IPv6 too: no host address, or an IPv6 one.
            for p in e.ports.iter().filter(|p| !p.is_loopback() && !matches!(p.host_ip, Some(IpAddr::V4(_)))) {
                want.insert(Published6Key::new(p.proto.number(), ip6.octets(), p.container_port.to_be()));
            }
        }
        want
    }
}
