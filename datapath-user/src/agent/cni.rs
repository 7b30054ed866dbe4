//! CNI attachments: the runtime's namespace plugged into a network by the
//! `datapath-cni` plugin, keyed by (network, container id, interface name)
//! the way the CNI spec keys a plugin's state.
//!
//! An attachment is an ordinary endpoint (the runtime's namespace given as
//! `netns_path`, `CNI_IFNAME` inside it) marked with [`CniMark`]: `endpoint
//! ls`, `inspect`, `stats`, `trace` and `conntrack ls` show it, the state
//! keeps it across agent restarts, and one whose namespace vanished while
//! the agent was away is removed at the next start. What is CNI's is here:
//! the key, the idempotent `DEL`, `CHECK` of what `ADD` made, and `GC`.

use std::collections::BTreeSet;

use rtnetlink::packet_route::link::LinkFlags;
use sha2::{Digest, Sha256};

use super::Inner;
use crate::api::{ApiError, CniAdd, CniAttachmentKey, CniGc, CniKey, EndpointCreate};
use crate::host::netlink::Netlink;
use crate::state::{self, CniMark, DatapathKind, EndpointSpec, PortMapping, PortPublishing};

/// The name of the endpoint of an attachment: `cni-CONTAINERID-IFNAME`,
/// a long container id (a 64-digit one) shortened to 12 characters and a
/// digest of the whole, so the name stays unique and within 64 characters.
pub fn attachment_name(container_id: &str, ifname: &str) -> String {
    let id = if container_id.len() <= 44 {
        container_id.to_string()
    } else {
        let digest = Sha256::digest(container_id.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let head: String = container_id.chars().take(12).collect();
        format!("{head}-{hex}")
    };
    let ifname: String =
        ifname.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    format!("cni-{id}-{ifname}")
}

/// A container id as CNI allows it (an alphanumeric, then alphanumerics,
/// `_`, `.`, `-`), of a sane length.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 1024
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

impl Inner {
    /// `ADD`: a new endpoint in the runtime's namespace. An attachment that
    /// exists already is refused (a runtime must `DEL` first).
    pub(super) async fn cni_add(&mut self, req: CniAdd) -> Result<String, ApiError> {
        if !valid_container_id(&req.container_id) {
            return Err(ApiError::invalid(format!("invalid container id {:?}", req.container_id)));
        }
        if let Some(e) = self.state.cni_endpoint(&req.network, &req.cni_network, &req.container_id, &req.ifname) {
            return Err(ApiError::conflict(format!(
                "container {} already has interface {} on network {} (endpoint {})",
                req.container_id, req.ifname, req.network, e.name
            )));
        }
        if !self.state.networks.contains_key(&req.network) {
            return Err(super::error::network_not_found(&req.network));
        }
        state::validate_name("CNI network", &req.cni_network).map_err(ApiError::invalid)?;
        // The runtime's `-p`: the endpoint's published ports, checked with
        // the endpoint (conflicts, the node's sockets, internal networks)
        // before anything is made; or recorded for a chained `portmap`.
        let (publish, port_mappings) = match req.port_publishing {
            PortPublishing::Datapath => {
                let publish = PortMapping::publish_all(&req.port_mappings)
                    .map_err(|e| ApiError::invalid(format!("portMappings: {e}")))?;
                (publish, Vec::new())
            }
            PortPublishing::Portmap => (Vec::new(), req.port_mappings),
        };
        let create = EndpointCreate {
            name: attachment_name(&req.container_id, &req.ifname),
            network: Some(req.network),
            ip: req.ip,
            trace: false,
            netns_path: Some(req.netns_path),
            ifname: Some(req.ifname),
            container_id: Some(req.container_id),
            publish,
            ..Default::default()
        };
        self.endpoint_create_as(create, Some(CniMark { name: req.cni_network, port_mappings })).await
    }

    /// `DEL`: removes the attachment; an unknown one (never added, already
    /// deleted) is not an error, nor is a namespace that vanished.
    pub(super) async fn cni_del(&mut self, key: CniKey) -> Result<(), ApiError> {
        let Some(name) = self.cni_name(&key) else {
            return Ok(());
        };
        self.endpoint_remove(&name).await
    }

    fn cni_name(&self, key: &CniKey) -> Option<String> {
        self.state.cni_endpoint(&key.network, &key.cni_network, &key.container_id, &key.ifname).map(|e| e.name.clone())
    }

    /// `CHECK`: the attachment's endpoint and what is missing or wrong of
    /// what `ADD` made (the namespace, both veth ends, the program on the
    /// host end and its map entry, the addresses, the link state, the
    /// default routes; IPv6 too on a dual-stack network).
    pub(super) async fn cni_check(&mut self, key: CniKey) -> Result<(String, Vec<String>), ApiError> {
        let spec = self.cni_name(&key).and_then(|n| self.state.endpoints.get(&n).cloned()).ok_or_else(|| {
            ApiError::not_found(format!(
                "no attachment of container {} with interface {} on network {}",
                key.container_id, key.ifname, key.network
            ))
        })?;
        let problems = self.check_endpoint(&spec).await?;
        Ok((spec.name, problems))
    }

    async fn check_endpoint(&mut self, spec: &EndpointSpec) -> Result<Vec<String>, ApiError> {
        let mut problems = Vec::new();
        let net = self.state.networks.get(&spec.network).cloned();
        let host = self.nl.link_index(&spec.host_ifname).await?;
        match (host, self.host_ifindex.get(&spec.name)) {
            (None, _) => problems.push(format!("host interface {} is gone", spec.host_ifname)),
            (Some(i), Some(known)) if i != *known => {
                problems.push(format!("host interface {} was replaced (ifindex {i}, not {known})", spec.host_ifname))
            }
            (Some(i), _) => {
                if net.as_ref().is_some_and(|n| n.datapath == DatapathKind::Ebpf) {
                    if !self.bpf.is_attached(i) {
                        problems.push(format!("no datapath program on {}", spec.host_ifname));
                    }
                    if !self.bpf.has_endpoint(i) {
                        problems.push(format!("no datapath map entry for {}", spec.host_ifname));
                    }
                }
            }
        }
        if !spec.netns_path.exists() {
            problems.push(format!("namespace {} is gone", spec.netns_path.display()));
            return Ok(problems);
        }
        let inside = Netlink::in_netns(&spec.netns_path).await?;
        let Some(link) = inside.link_by_name(&spec.ifname).await? else {
            problems.push(format!("interface {} is gone from the namespace", spec.ifname));
            return Ok(problems);
        };
        if !link.header.flags.contains(LinkFlags::Up) {
            problems.push(format!("interface {} is down", spec.ifname));
        }
        let prefix = net.as_ref().map(|n| n.subnet.prefix_len()).unwrap_or(32);
        if !inside.ipv4_addresses(link.header.index).await?.contains(&(spec.ip, prefix)) {
            problems.push(format!("interface {} lacks its address {}/{prefix}", spec.ifname, spec.ip));
        }
        if net.as_ref().is_some_and(|n| !n.options.internal) && !inside.has_default_route().await? {
            problems.push("the namespace has no default route".to_string());
        }
        // A dual-stack network: the IPv6 address and default route too.
        if let (Some(ip6), Some(v6)) = (spec.ip6, net.as_ref().and_then(|n| n.ipv6)) {
            if !inside.ipv6_global_addresses(link.header.index).await?.contains(&ip6) {
                problems.push(format!("interface {} lacks its address {ip6}/{}", spec.ifname, v6.subnet.prefix_len()));
            }
            if net.as_ref().is_some_and(|n| !n.options.internal) && !inside.has_default_route6().await? {
                problems.push("the namespace has no IPv6 default route".to_string());
            }
        }
        Ok(problems)
    }

    /// `GC`: removes every attachment of `network` that is not in `valid`;
    /// returns the names of the endpoints removed.
    pub(super) async fn cni_gc(&mut self, req: CniGc) -> Result<Vec<String>, ApiError> {
        let valid: BTreeSet<CniAttachmentKey> = req.valid.into_iter().collect();
        let stale: Vec<String> = self
            .state
            .cni_endpoints(&req.network, &req.cni_network)
            .filter(|e| {
                let key = CniAttachmentKey {
                    container_id: e.container_id.clone().unwrap_or_default(),
                    ifname: e.ifname.clone(),
                };
                !valid.contains(&key)
            })
            .map(|e| e.name.clone())
            .collect();
        for name in &stale {
            self.endpoint_remove(name).await?;
        }
        if !stale.is_empty() {
            tracing::info!(network = %req.network, removed = stale.len(), "cni gc");
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::attachment_name;

    #[test]
    fn attachment_names_are_valid_unique_and_short() {
        assert_eq!(attachment_name("abc", "eth0"), "cni-abc-eth0");
        let long = "0123456789abcdef".repeat(4);
        let other = format!("{}0", &long[..63]);
        let (a, b) = (attachment_name(&long, "eth0"), attachment_name(&other, "eth0"));
        assert_ne!(a, b);
        assert!(a.starts_with("cni-0123456789ab-"), "{a}");
        let longest = attachment_name(&"y".repeat(1024), "abcdefghijklmno");
        for n in
            [&a, &b, &attachment_name(&"x".repeat(44), "abcdefghijklmno"), &attachment_name("c", "e:t h"), &longest]
        {
            assert!(crate::state::validate_name("endpoint", n).is_ok(), "{n}");
        }
        assert!(super::valid_container_id(&long) && !super::valid_container_id("-a") && !super::valid_container_id(""));
    }
}
