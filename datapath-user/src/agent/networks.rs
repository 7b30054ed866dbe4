//! Networks: create and remove (a bridge holding the gateway address), and
//! what the node and the datapath must know of them: netfilter rules and
//! forwarding (`sync_node`), policy and masquerade (`sync_datapath_network`),
//! the reverse-NAT program on uplinks (`sync_uplinks`).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::{blocking, Inner, DEFAULT_BRIDGE, DEFAULT_NETWORK};
use crate::api::{ApiError, NetworkCreate};
use crate::datapath::snat;
use crate::host::{netfilter, sysctl};
use crate::ipam::{self, mac_for};
use crate::state::{self, DatapathKind, NetworkSpec};

/// An address family, for what the node does per family.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Masquerade address and uplink ifindex per uplink (`None`: the default
/// route's device), for one pass over the networks.
pub(super) type UplinkCache = HashMap<Option<String>, Option<(Ipv4Addr, u32)>>;

impl Inner {
    /// Validates a create request into the spec of a new network (nothing
    /// is made yet).
    async fn network_spec(&self, req: &NetworkCreate) -> Result<NetworkSpec, ApiError> {
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
        let ipv6 = self.network_spec6(req)?;
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
            self.check_uplink(up).await?;
        }
        let id = state::random_id();
        let bridge =
            if req.name == DEFAULT_NETWORK { DEFAULT_BRIDGE.to_string() } else { format!("dpbr-{}", &id[..8]) };
        Ok(NetworkSpec {
            name: req.name.clone(),
            id,
            num_id: self.state.next_network_num(),
            subnet,
            gateway,
            bridge,
            datapath: req.datapath.unwrap_or(self.cfg.default_datapath),
            options: state::NetworkOptions {
                internal,
                icc: req.icc.unwrap_or(true),
                masquerade,
                uplink: req.uplink.clone(),
                mtu: req.mtu,
            },
            created: state::now_rfc3339(),
            owner: req.owner.clone(),
            ipv6,
        })
    }

    /// The IPv6 half of a create request: the given subnet (validated, not
    /// overlapping another network's) or a random unique-local /64, and
    /// its gateway; `None` for an IPv4-only network.
    fn network_spec6(&self, req: &NetworkCreate) -> Result<Option<state::Ipv6Config>, ApiError> {
        if !req.ipv6 {
            if req.subnet_v6.is_some() || req.gateway_v6.is_some() {
                return Err(ApiError::invalid("--subnet-v6 and --gateway-v6 need --ipv6"));
            }
            return Ok(None);
        }
        let subnet = match &req.subnet_v6 {
            Some(s) => {
                let subnet = ipam::v6::parse_subnet(s)?;
                if let Some(other) = self.state.overlapping6(&subnet) {
                    let theirs = other.ipv6.map(|v6| v6.subnet.to_string()).unwrap_or_default();
                    return Err(ApiError::conflict(format!(
                        "IPv6 subnet {subnet} overlaps network {:?} ({theirs})",
                        other.name
                    )));
                }
                subnet
            }
            None => {
                let mut rng = rand::rng();
                // 40 random bits: a collision with another network of the
                // node is all but impossible, and retried when it happens.
                std::iter::repeat_with(|| ipam::v6::random_ula(&mut rng))
                    .take(16)
                    .find(|s| self.state.overlapping6(s).is_none())
                    .ok_or_else(|| ApiError::internal("no free unique-local IPv6 subnet found"))?
            }
        };
        let gw = req.gateway_v6.as_deref().map(ipam::v6::parse_addr).transpose()?;
        let gateway = ipam::v6::gateway_for(&subnet, gw)?;
        Ok(Some(state::Ipv6Config { subnet, gateway }))
    }

    /// An uplink must be a real device of the node: not loopback, not one of
    /// the datapath's own bridges or veths.
    async fn check_uplink(&self, up: &str) -> Result<(), ApiError> {
        if self.nl.link_index(up).await?.is_none() {
            return Err(ApiError::invalid(format!("uplink interface {up:?} not found on this node")));
        }
        if up == "lo" {
            return Err(ApiError::invalid("the loopback device cannot be an uplink"));
        }
        if crate::reset::is_datapath_link(up) || self.state.networks.values().any(|n| n.bridge == up) {
            return Err(ApiError::invalid(format!(
                "{up:?} is one of the datapath's own bridges or veths, not an uplink"
            )));
        }
        Ok(())
    }

    /// Creates a network; returns its name.
    pub(super) async fn network_create(&mut self, req: NetworkCreate) -> Result<String, ApiError> {
        let spec = self.network_spec(&req).await?;
        if let Some(stale) = self.nl.link_index(&spec.bridge).await? {
            tracing::warn!("removing stale bridge {} left by an earlier run", spec.bridge);
            self.nl.delete_link(stale).await?;
        }
        let index = self.nl.create_bridge(&spec.bridge, mac_for(spec.gateway), spec.options.mtu).await?;
        if let Err(e) = self.network_finish(&spec, index).await {
            self.forget_datapath_network(&spec);
            let _ = self.nl.delete_link(index).await;
            return Err(e);
        }
        self.bridges.insert(spec.name.clone(), index);
        if let Err(e) = self.sync_uplinks().await {
            tracing::warn!("attaching reverse NAT to uplinks: {e}");
        }
        tracing::info!(network = %spec.name, subnet = %spec.subnet, gateway = %spec.gateway, bridge = %spec.bridge, "network created");
        Ok(spec.name)
    }

    /// The steps of a create after the bridge exists; on failure the state
    /// and the node are as before (the caller removes the bridge).
    async fn network_finish(&mut self, spec: &NetworkSpec, bridge: u32) -> Result<(), ApiError> {
        self.nl.add_address(bridge, spec.gateway, spec.subnet.prefix_len()).await?;
        self.bridge_ipv6(spec, bridge).await?;
        self.sync_datapath_network(spec, &mut UplinkCache::new()).await?;
        self.state.networks.insert(spec.name.clone(), spec.clone());
        let persisted = match self.sync_node().await {
            Ok(()) => self.save().await,
            Err(e) => Err(e),
        };
        if let Err(e) = persisted {
            self.state.networks.remove(&spec.name);
            let _ = self.sync_node().await;
            return Err(e);
        }
        Ok(())
    }

    pub(super) async fn network_remove(&mut self, name: &str, force_default: bool) -> Result<(), ApiError> {
        let spec = self.known_network(name)?;
        if name == DEFAULT_NETWORK && !force_default {
            return Err(ApiError::invalid(format!("{name} is the default network and cannot be removed")));
        }
        // Endpoints connected to it count as much as those it is the first
        // network of.
        let eps: Vec<String> = self.state.links_on(name).map(|(e, _)| e.name.clone()).collect();
        if !eps.is_empty() {
            return Err(ApiError::conflict(format!(
                "network {name:?} still has endpoints: {} (`network disconnect` connected ones, `endpoint rm` the others)",
                eps.join(", ")
            )));
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
        if let Err(e) = self.sync_node().await {
            tracing::error!(network = %name, "updating node configuration: {e}");
        }
        self.save().await?;
        tracing::info!(network = %name, "network removed");
        Ok(())
    }

    /// The network's bridge, made again (with its address, up) when it is
    /// missing; returns its ifindex.
    pub(super) async fn ensure_bridge(&mut self, spec: &NetworkSpec) -> Result<u32, ApiError> {
        let index = match self.nl.link_index(&spec.bridge).await? {
            Some(i) => i,
            None => {
                tracing::info!(network = %spec.name, bridge = %spec.bridge, "bridge missing, recreating it");
                self.nl.create_bridge(&spec.bridge, mac_for(spec.gateway), spec.options.mtu).await?
            }
        };
        self.nl.add_address(index, spec.gateway, spec.subnet.prefix_len()).await?;
        self.bridge_ipv6(spec, index).await?;
        self.nl.set_up(index).await?;
        self.bridges.insert(spec.name.clone(), index);
        Ok(index)
    }

    /// A dual-stack network's bridge: IPv6 on (without autoconfiguration),
    /// its link-local and IPv6 gateway addresses usable at once (no
    /// duplicate address detection: the MAC and the subnet are the
    /// network's own).
    async fn bridge_ipv6(&self, spec: &NetworkSpec, bridge: u32) -> Result<(), ApiError> {
        let Some(v6) = spec.ipv6 else { return Ok(()) };
        let name = spec.bridge.clone();
        blocking(move || sysctl::enable_ipv6_bridge(&name)).await??;
        self.nl.add_address6(bridge, v6.gateway, v6.subnet.prefix_len()).await?;
        Ok(())
    }

    /// Brings the node's netfilter rules and forwarding switch in line with
    /// the networks: rules for kernel-datapath networks only, forwarding on
    /// while any network routes beyond itself (restored to what it was when
    /// the last one goes).
    pub(super) async fn sync_node(&mut self) -> Result<(), ApiError> {
        let script = netfilter::render(&self.state, |n| n.options.uplink.clone(), self.cfg.nat_ports);
        if self.applied_nft.as_deref() != Some(script.as_str()) {
            let needed = netfilter::needs_rules(&self.state);
            let localnet = netfilter::localnet_bridges(&self.state);
            let applied = script.clone();
            blocking(move || {
                // Before the rules: a DNAT of 127.0.0.1 to a bridge is
                // only routed with route_localnet on.
                for bridge in &localnet {
                    sysctl::enable_route_localnet(bridge)?;
                }
                netfilter::apply(&applied, needed).map_err(ApiError::from)
            })
            .await??;
            self.applied_nft = Some(script);
        }
        self.sync_ports().await?;
        let routes_out = self.state.networks.values().any(|n| !n.options.internal);
        let was = self.state.node.ip_forward_was.clone();
        self.state.node.ip_forward_was = self.sync_forwarding(Family::V4, was, routes_out).await?;
        let routes_out6 = self.state.networks.values().any(|n| n.ipv6.is_some() && !n.options.internal);
        let was6 = self.state.node.ip6_forward_was.clone();
        self.state.node.ip6_forward_was = self.sync_forwarding(Family::V6, was6, routes_out6).await?;
        Ok(())
    }

    /// Turns one family's forwarding on when `wanted` and it is not yet the
    /// agent's doing (`was` is `None`), or puts the old value back when no
    /// longer wanted; returns the value to remember.
    async fn sync_forwarding(
        &self,
        family: Family,
        was: Option<String>,
        wanted: bool,
    ) -> Result<Option<String>, ApiError> {
        match (was, wanted) {
            (None, true) => {
                let journal = self.journal();
                let enabled = blocking(move || {
                    let old = match family {
                        Family::V4 => sysctl::enable_forwarding()?,
                        Family::V6 => sysctl::enable_forwarding6()?,
                    };
                    if let Some(old) = &old {
                        let recorded = match family {
                            Family::V4 => journal.set_forwarding_was(old),
                            Family::V6 => journal.set_forwarding6_was(old),
                        };
                        if let Err(e) = recorded {
                            tracing::warn!("recording the old {family} forwarding value: {e}");
                        }
                    }
                    Ok::<_, sysctl::SysctlError>(old)
                });
                let old = enabled.await??;
                if let Some(old) = &old {
                    tracing::info!("enabled {family} forwarding on the node (was {old})");
                }
                Ok(old)
            }
            (Some(old), false) => {
                let (value, journal) = (old.clone(), self.journal());
                blocking(move || {
                    match family {
                        Family::V4 => {
                            sysctl::restore_forwarding(&value)?;
                            journal.clear_forwarding_was();
                        }
                        Family::V6 => {
                            sysctl::restore_forwarding6(&value)?;
                            journal.clear_forwarding6_was();
                        }
                    }
                    Ok::<_, sysctl::SysctlError>(())
                })
                .await??;
                tracing::info!("restored {family} forwarding to {old}");
                Ok(None)
            }
            (was, _) => Ok(was),
        }
    }

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
    pub(super) async fn sync_datapath_network(
        &mut self,
        net: &NetworkSpec,
        seen: &mut UplinkCache,
    ) -> Result<(), ApiError> {
        let masq = self.masquerade_for(net, seen).await?;
        let info = snat::network_info(net, masq, self.nat_ports);
        if self.net_info.get(&net.name) == Some(&info) {
            return self.sync_datapath_network6(net).await;
        }
        if let Some(old) = self.net_info.get(&net.name) {
            if old.masq_addr != info.masq_addr || old.uplink_ifindex != info.uplink_ifindex {
                let ip = Ipv4Addr::from(info.masq_addr.to_ne_bytes());
                tracing::info!(network = %net.name, masquerade = %ip, uplink = info.uplink_ifindex, "masquerade address changed");
            }
        }
        let prefix_len = u32::from(net.subnet.prefix_len());
        tokio::task::block_in_place(|| self.bpf.set_network(net.num_id, info, prefix_len))?;
        self.net_info.insert(net.name.clone(), info);
        self.sync_datapath_network6(net).await
    }

    /// Tells the datapath about the IPv6 half of a network (subnet, policy,
    /// the uplink's global IPv6 address to masquerade to); a no-op when
    /// nothing changed. Called after `sync_datapath_network`, whose uplink
    /// it uses.
    async fn sync_datapath_network6(&mut self, net: &NetworkSpec) -> Result<(), ApiError> {
        let uplink = self.net_info.get(&net.name).map(|i| i.uplink_ifindex).filter(|i| *i != 0);
        let masq = match (net.ipv6.is_some(), uplink) {
            (true, Some(ifindex)) => self.nl.ipv6_global_addresses(ifindex).await?.first().map(|ip| (*ip, ifindex)),
            _ => None,
        };
        let info = snat::network6_info(net, masq);
        if self.net_info6.get(&net.name) == info.as_ref() {
            return Ok(());
        }
        tokio::task::block_in_place(|| self.bpf.set_network6(net.num_id, info))?;
        match info {
            Some(i) => self.net_info6.insert(net.name.clone(), i),
            None => self.net_info6.remove(&net.name),
        };
        Ok(())
    }

    pub(super) fn forget_datapath_network(&mut self, net: &NetworkSpec) {
        let subnet = datapath_common::ipv4_key(net.subnet.network().octets());
        let prefix_len = u32::from(net.subnet.prefix_len());
        tokio::task::block_in_place(|| self.bpf.remove_network(net.num_id, subnet, prefix_len));
        self.net_info.remove(&net.name);
        self.net_info6.remove(&net.name);
    }

    /// Attaches the reverse-NAT program to every uplink an eBPF network
    /// masquerades through, and detaches it from uplinks no longer used.
    pub(super) async fn sync_uplinks(&mut self) -> Result<(), ApiError> {
        let wanted: BTreeSet<u32> = self
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
                let how = tokio::task::block_in_place(|| self.bpf.attach_uplink(&name, *ifindex))?;
                self.start.count(how);
                tracing::info!(uplink = %name, "reverse NAT attached");
                self.uplinks.insert(*ifindex, name);
            }
        }
        let stale: Vec<u32> = self.uplinks.keys().filter(|i| !wanted.contains(i)).copied().collect();
        for ifindex in stale {
            tokio::task::block_in_place(|| self.bpf.detach_uplink(ifindex));
            if let Some(name) = self.uplinks.remove(&ifindex) {
                tracing::info!(uplink = %name, "reverse NAT detached");
            }
        }
        Ok(())
    }
}
