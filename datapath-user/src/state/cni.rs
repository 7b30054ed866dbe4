//! What the state records of an endpoint made through CNI (`datapath-cni`):
//! the mark that makes it CNI's (keyed by its container id and interface
//! name) and the ports its runtime published.

use serde::{Deserialize, Serialize};

use super::{EndpointSpec, State};

/// The CNI attachment an endpoint is: `EndpointSpec::container_id` +
/// `EndpointSpec::ifname` are its key within its network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniMark {
    /// The CNI network's name (the configuration's `name`), part of the key:
    /// two CNI configurations on one datapath network keep their own.
    pub name: String,
    /// The runtime's `portMappings` (CNI capability), published by a
    /// chained `portmap` plugin (netfilter DNAT in the node) until the
    /// datapath publishes ports itself: the endpoint's TCP segments of
    /// flows the eBPF conntrack does not know (the replies of those DNATed
    /// connections) are handed to the kernel (`EP_F_KERNEL_FLOWS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of the CNI `portMappings` capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp" or "udp".
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.as_deref().filter(|s| !s.is_empty()).unwrap_or("0.0.0.0");
        write!(f, "{ip}:{}->{}/{}", self.host_port, self.container_port, self.protocol)
    }
}

impl State {
    /// The endpoint CNI network `cni_network` made for `container_id` +
    /// `ifname` on the datapath network `network`.
    pub fn cni_endpoint(
        &self,
        network: &str,
        cni_network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<&EndpointSpec> {
        self.endpoints.values().find(|e| {
            e.network == network
                && e.cni.as_ref().is_some_and(|c| c.name == cni_network)
                && e.ifname == ifname
                && e.container_id.as_deref() == Some(container_id)
        })
    }

    /// Every endpoint CNI network `cni_network` made on `network`.
    pub fn cni_endpoints<'a>(
        &'a self,
        network: &'a str,
        cni_network: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSpec> + 'a {
        self.endpoints_of(network).filter(move |e| e.cni.as_ref().is_some_and(|c| c.name == cni_network))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_have_the_cni_wire_form() {
        let m: PortMapping =
            serde_json::from_str(r#"{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}"#).unwrap();
        assert_eq!(m.to_string(), "0.0.0.0:8080->80/tcp");
        let m: PortMapping = serde_json::from_str(r#"{"hostPort":53,"containerPort":5353}"#).unwrap();
        assert_eq!(m.protocol, "tcp");
        assert!(serde_json::from_str::<PortMapping>(r#"{"hostPort":70000,"containerPort":1}"#).is_err());
    }
}
