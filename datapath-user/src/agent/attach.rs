//! Multi-network endpoints: `network connect` puts an existing endpoint on
//! one more network (`eth1`, `eth2`, ... in its namespace, with its own
//! veth, address, aliases, program and map entries), `network disconnect`
//! takes it off again. Each link is built and undone by the same code as an
//! endpoint's first link (`endpoints::build_link`), write-ahead: a crash
//! mid-connect is rolled back by the next agent.
//!
//! Docker's rules: the default route stays on the first network, which
//! cannot be disconnected while the endpoint exists; `none` and detached
//! endpoints cannot connect; an endpoint never forwards between its
//! networks, so they stay isolated from each other.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::endpoints::Made;
use super::{Inner, NONE_NETWORK};
use crate::api::{ApiError, NetworkConnect};
use crate::host::netlink::BRIDGE_MAX_PORTS;
use crate::ipam::{self, mac_for};
use crate::state::{self, Attachment, DatapathKind, EndpointSpec, NetworkSpec};

/// The lowest `ethN` (N >= 1) not among `used`.
pub(super) fn next_ifname<'a>(used: impl IntoIterator<Item = &'a str>) -> String {
    let used: BTreeSet<&str> = used.into_iter().collect();
    (1..).map(|n| format!("eth{n}")).find(|n| !used.contains(n.as_str())).unwrap_or_default()
}

impl Inner {
    /// Validates putting `spec` on `network` into the attachment to make
    /// (its address, interface names, aliases) and the network.
    pub(super) fn plan_attachment(
        &self,
        spec: &EndpointSpec,
        network: &str,
        ip: Option<Ipv4Addr>,
        ip6: Option<Ipv6Addr>,
        aliases: Vec<String>,
    ) -> Result<(Attachment, NetworkSpec), ApiError> {
        if spec.network == NONE_NETWORK {
            return Err(ApiError::invalid(format!(
                "endpoint {:?} is on the none network: it cannot be connected to other networks",
                spec.name
            )));
        }
        if spec.detached {
            return Err(ApiError::invalid(format!(
                "endpoint {:?} is detached (its owner moved its interface into its own namespace): \
                 it cannot be connected to other networks",
                spec.name
            )));
        }
        if network == NONE_NETWORK {
            return Err(ApiError::invalid("the none network cannot be connected to"));
        }
        let net = self.known_network(network)?;
        if spec.link_on(network).is_some() {
            return Err(ApiError::conflict(format!("endpoint {:?} is already on network {network:?}", spec.name)));
        }
        self.state
            .room_for_endpoint(&net, BRIDGE_MAX_PORTS, datapath_common::MAX_ENDPOINTS as usize)
            .map_err(ApiError::conflict)?;
        for alias in &aliases {
            state::validate_name("alias", alias).map_err(ApiError::invalid)?;
        }
        // Its name and aliases must be unambiguous on that network.
        crate::dns::check_names(&self.state, network, &spec.name, &aliases).map_err(ApiError::conflict)?;
        let ip = ipam::assign(&net.subnet, net.gateway, &self.state.used_addresses(network), ip)?;
        // On a dual-stack network the attachment gets an IPv6 address too.
        let ip6 = match (net.ipv6, ip6) {
            (Some(v6), requested) => {
                Some(ipam::v6::assign(&v6.subnet, v6.gateway, &self.state.used_addresses6(network), requested)?)
            }
            (None, Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "network {network:?} has no IPv6 subnet: --ip6 needs a network created with --ipv6"
                )))
            }
            (None, None) => None,
        };
        let id = state::random_id();
        let attachment = Attachment {
            network: network.to_string(),
            ip,
            mac: mac_for(ip),
            ifname: next_ifname(spec.links().map(|l| l.ifname)),
            host_ifname: format!("dp{}", &id[..8]),
            aliases,
            ip6,
            connecting: false,
        };
        Ok((attachment, net))
    }

    /// `network connect`: returns the endpoint's name.
    pub(super) async fn network_connect(&mut self, req: NetworkConnect) -> Result<String, ApiError> {
        let name = req.endpoint.clone();
        let spec = self.state.endpoints.get(&name).cloned().ok_or_else(|| {
            let hint = match self.state.containers.get(&name) {
                Some(c) => format!(
                    "endpoint {name:?} not found: command {name:?} runs with --network {}, it has no endpoint of its own",
                    c.mode
                ),
                None => format!("endpoint {name:?} not found"),
            };
            ApiError::not_found(hint)
        })?;
        if spec.creating {
            return Err(ApiError::conflict(format!("endpoint {name:?} is being created")));
        }
        let (mut attachment, net) = self.plan_attachment(&spec, &req.network, req.ip, req.ip6, req.aliases)?;
        // Write-ahead: the address is taken, and a crash from here on is
        // rolled back by the next agent.
        attachment.connecting = true;
        let mut spec = spec;
        spec.attachments.push(attachment);
        self.state.endpoints.insert(name.clone(), spec.clone());
        if let Err(e) = self.save().await {
            spec.attachments.pop();
            self.state.endpoints.insert(name.clone(), spec);
            return Err(e);
        }
        let mut made = Made::default();
        let link = spec.links().last().ok_or_else(|| ApiError::internal("an attachment without a link"))?;
        let mut done = self.build_link(&spec, link, &net, &mut made).await;
        if done.is_ok() {
            if let Some(a) = self.attachment_mut(&name, &req.network) {
                a.connecting = false;
            }
            done = match self.save().await {
                Ok(()) => self.sync_node().await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = done {
            let host_ifname = link.host_ifname.to_string();
            self.forget_attachment(&name, &req.network);
            let _ = self.sync_node().await;
            self.undo_link(&name, &host_ifname, made).await;
            self.attach_ifindex.remove(&host_ifname);
            let _ = self.save().await;
            return Err(e);
        }
        tracing::info!(endpoint = %name, network = %req.network, ip = %link.ip, ifname = %link.ifname, "endpoint connected");
        Ok(name)
    }

    /// `network disconnect`: removes the endpoint's link on `network`.
    pub(super) async fn network_disconnect(&mut self, network: &str, name: &str) -> Result<(), ApiError> {
        let spec = self.known_endpoint(name)?;
        if !self.state.networks.contains_key(network) {
            return Err(super::error::network_not_found(network));
        }
        if spec.network == network {
            return Err(ApiError::invalid(format!(
                "network {network:?} is the first network of endpoint {name:?} (its default route): it cannot be \
                 disconnected while the endpoint exists, nor can an endpoint's last network; remove the endpoint instead"
            )));
        }
        let Some(a) = spec.attachments.iter().find(|a| a.network == network).cloned() else {
            return Err(ApiError::not_found(format!("endpoint {name:?} is not on network {network:?}")));
        };
        let ifindex = match self.attach_ifindex.get(&a.host_ifname) {
            Some(i) => Some(*i),
            None => self.nl.link_index(&a.host_ifname).await?,
        };
        let made = Made::existing(ifindex, a.ip, self.pinned_on(network));
        self.undo_link(name, &a.host_ifname, made).await;
        self.attach_ifindex.remove(&a.host_ifname);
        self.forget_attachment(name, network);
        if let Err(e) = self.sync_node().await {
            tracing::error!(endpoint = %name, "updating node configuration: {e}");
        }
        self.save().await?;
        tracing::info!(endpoint = %name, network = %network, "endpoint disconnected");
        Ok(())
    }

    fn attachment_mut(&mut self, endpoint: &str, network: &str) -> Option<&mut Attachment> {
        self.state.endpoints.get_mut(endpoint)?.attachments.iter_mut().find(|a| a.network == network)
    }

    fn forget_attachment(&mut self, endpoint: &str, network: &str) {
        if let Some(e) = self.state.endpoints.get_mut(endpoint) {
            e.attachments.retain(|a| a.network != network);
        }
    }

    /// After an agent restart: attachments whose connect a crash
    /// interrupted go (their veth, their record); returns how many.
    pub(super) async fn roll_back_half_connected(&mut self) -> usize {
        let half: Vec<(String, Attachment)> = self
            .state
            .endpoints
            .values()
            .flat_map(|e| e.attachments.iter().filter(|a| a.connecting).map(|a| (e.name.clone(), a.clone())))
            .collect();
        for (name, a) in &half {
            tracing::warn!(endpoint = %name, network = %a.network, "rolling back a connect that was interrupted");
            if let Err(e) = self.remove_host_link(&a.host_ifname).await {
                tracing::error!(endpoint = %name, "rolling back the connect: {e}");
            }
            self.forget_attachment(name, &a.network);
        }
        half.len()
    }

    /// After an agent restart: an endpoint's attachments re-attached and
    /// their map entries re-filled when their links survived, made again
    /// otherwise (the namespace exists: its first link was restored).
    pub(super) async fn restore_attachments(&mut self, spec: &EndpointSpec) -> Result<(), ApiError> {
        if spec.detached || !spec.netns_path.exists() {
            return Ok(());
        }
        for link in spec.links().skip(1) {
            let net = self.known_network(link.network)?;
            if let Some(host) = self.nl.link_index(link.host_ifname).await? {
                self.remember_link(spec, &link, host);
                if net.datapath == DatapathKind::Kernel {
                    continue;
                }
                let info = self.endpoint_info(spec, &link, host);
                let how = tokio::task::block_in_place(|| {
                    let how = self.bpf.attach(link.host_ifname, host)?;
                    self.bpf.upsert_endpoint(info)?;
                    self.bpf.set_endpoint6(&info, link.ip6).map(|()| how)
                })?;
                self.start.count(how);
                if let Some(bridge) = self.bridges.get(&net.name).copied() {
                    self.nl.pin_endpoint(bridge, host, link.ip, link.mac).await?;
                }
                continue;
            }
            tracing::warn!(endpoint = %spec.name, network = %link.network, "attachment's link is gone, making it again");
            let mut made = Made::default();
            if let Err(e) = self.build_link(spec, link, &net, &mut made).await {
                self.undo_link(&spec.name, link.host_ifname, made).await;
                self.attach_ifindex.remove(link.host_ifname);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::next_ifname;

    #[test]
    fn attachments_take_the_lowest_free_ethn() {
        assert_eq!(next_ifname(["eth0"]), "eth1");
        assert_eq!(next_ifname(["eth0", "eth1", "eth3"]), "eth2");
        assert_eq!(next_ifname(["net0", "eth2"]), "eth1");
    }
}
