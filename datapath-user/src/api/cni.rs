//! The requests of the CNI plugin (`datapath-cni`): attachments of a
//! runtime's namespace keyed by (network, container id, interface name),
//! the way the CNI spec keys a plugin's state.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::EndpointView;
use crate::state::{PortMapping, PortPublishing};

/// CNI `ADD`: plug the runtime's namespace into `network`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAdd {
    /// The datapath network.
    pub network: String,
    /// The CNI network's name (the configuration's `name`).
    pub cni_network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface made inside the namespace.
    pub ifname: String,
    /// `CNI_NETNS`: the runtime's namespace (`/proc/PID/ns/net`, `/run/netns/...`).
    pub netns_path: PathBuf,
    /// An address chosen by a delegated IPAM plugin (or `CNI_ARGS` `IP=`);
    /// the agent's IPAM chooses when absent.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The runtime's `portMappings`.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Who publishes them: the datapath (its published ports) or a chained
    /// `portmap` plugin.
    #[serde(default)]
    pub port_publishing: PortPublishing,
}

/// CNI `DEL` and `CHECK`: one attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniKey {
    pub network: String,
    pub cni_network: String,
    pub container_id: String,
    pub ifname: String,
}

/// An attachment a runtime still uses (`cni.dev/valid-attachments`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CniAttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// CNI `GC`: remove every attachment of `network` not in `valid`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniGc {
    pub network: String,
    pub cni_network: String,
    pub valid: Vec<CniAttachmentKey>,
}

/// What `ADD` (and `CHECK`) answer: the endpoint and what the CNI result
/// needs of its network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub endpoint: EndpointView,
    pub mtu: u32,
    /// The endpoint got no default route (an `--internal` network).
    pub internal: bool,
    /// `CHECK`: what is missing or wrong (empty when all is in place).
    #[serde(default)]
    pub problems: Vec<String>,
}

/// What `GC` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniGcReport {
    /// Endpoint names.
    pub removed: Vec<String>,
}
