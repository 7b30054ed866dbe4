//! The agent's desired state: networks and endpoints, persisted as JSON in the
//! state directory and restored when the agent starts.
//!
//! Everything that can be derived (used addresses, endpoint counts) is derived
//! from this, never stored twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ports::Publish;

mod cni;
mod container;
mod journal;

pub use cni::{CniMark, PortMapping, PortPublishing};
pub use container::{ContainerSpec, RunMode};
pub use journal::Journal;

pub const STATE_FILE: &str = "state.json";
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("state file {path} has version {found}, this agent understands {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot serialize the state: {0}")]
    Serialize(String),
    #[error("state file {path} is inconsistent: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Which datapath forwards a network's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// TC programs on the host veths: in-kernel redirect, eBPF SNAT.
    #[default]
    Ebpf,
    /// The classic Docker setup: Linux bridge + netfilter (the baseline).
    Kernel,
}

impl std::fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatapathKind::Ebpf => f.write_str("ebpf"),
            DatapathKind::Kernel => f.write_str("kernel"),
        }
    }
}

/// Docker-style network options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOptions {
    /// No masquerade and no route beyond the network.
    #[serde(default)]
    pub internal: bool,
    /// Inter-container communication inside the network.
    #[serde(default = "yes")]
    pub icc: bool,
    /// Source-NAT traffic leaving the node to the uplink's address.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Interface to masquerade through; the default route's device if unset.
    #[serde(default)]
    pub uplink: Option<String>,
    /// MTU of the bridge and every veth of the network.
    #[serde(default)]
    pub mtu: Option<u32>,
}

fn yes() -> bool {
    true
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions { internal: false, icc: true, masquerade: true, uplink: None, mtu: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Random 64-bit id, hex.
    pub id: String,
    /// Small numeric id used by the datapath (`EndpointInfo::network_id`).
    pub num_id: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Name of the Linux bridge in the node namespace.
    pub bridge: String,
    #[serde(default)]
    pub datapath: DatapathKind,
    #[serde(default)]
    pub options: NetworkOptions,
    /// RFC 3339 creation time.
    pub created: String,
    /// Who asked for it when not a user of the API: `docker` for the
    /// networks of Docker's remote driver (`datapath agent --docker-plugin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The IPv6 half of a dual-stack network (`--ipv6`); absent on an
    /// IPv4-only network (and in state files of builds before IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Config>,
}

/// A dual-stack network's IPv6 subnet and gateway (the bridge's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    pub id: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// Path of the endpoint's network namespace.
    pub netns_path: PathBuf,
    /// True when the agent created the namespace (and so removes it).
    pub owns_netns: bool,
    /// Interface name inside the namespace.
    pub ifname: String,
    /// Host-side veth name in the node namespace.
    pub host_ifname: String,
    /// Optional caller-supplied id (CNI `CNI_CONTAINERID`).
    #[serde(default)]
    pub container_id: Option<String>,
    /// Made through CNI: keyed by `container_id` + `ifname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniMark>,
    #[serde(default)]
    pub trace: bool,
    pub created: String,
    /// Recorded before the create makes anything (write-ahead), cleared
    /// when it is done: an agent that finds it set after a crash rolls the
    /// half-made endpoint back. Its address stays reserved meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// The container end of the veth stays in the node namespace, named
    /// `ifname`, for the caller to move into its sandbox (Docker's remote
    /// driver: Docker moves, renames and addresses it). `netns_path` is
    /// empty: the namespace is never the agent's business.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// Who asked for it when not a user of the API (`docker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Published ports (`-p`), withdrawn with the endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Publish>,
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// More names the endpoint answers to on its first network (`--alias`),
    /// for the embedded DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The networks it is on besides the first (`network connect`, or
    /// `--network` given more than once): `eth1`, `eth2`, ... in its
    /// namespace. The default route stays on the first network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// DNS servers its embedded DNS forwards to instead of the node's
    /// (`--dns`), queried from its namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
}

/// One more network an endpoint is on: its own veth, address and aliases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// Interface name inside the endpoint's namespace (`eth1`, ...).
    pub ifname: String,
    /// Host-side veth name in the node namespace.
    pub host_ifname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its IPv6 address, on a dual-stack network (absent in state files
    /// of builds before IPv6 attachments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// Recorded before the connect makes anything (write-ahead), cleared
    /// when it is done: an agent that finds it set after a crash removes
    /// the half-made link. Its address stays reserved meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connecting: bool,
}

/// An endpoint's presence on one network, its first or an attachment: what
/// addressing, isolation and DNS look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link<'a> {
    pub network: &'a str,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub aliases: &'a [String],
    /// The endpoint's first network (default route, `EndpointSpec::network`).
    pub primary: bool,
    /// An attachment whose connect has not finished (see
    /// [`Attachment::connecting`]).
    pub connecting: bool,
}

impl EndpointSpec {
    /// Every network the endpoint is on, its first one first.
    pub fn links(&self) -> impl Iterator<Item = Link<'_>> + '_ {
        let first = Link {
            network: &self.network,
            ip: self.ip,
            ip6: self.ip6,
            mac: self.mac,
            ifname: &self.ifname,
            host_ifname: &self.host_ifname,
            aliases: &self.aliases,
            primary: true,
            connecting: false,
        };
        let more = self.attachments.iter().map(|a| Link {
            network: &a.network,
            ip: a.ip,
            ip6: a.ip6,
            mac: a.mac,
            ifname: &a.ifname,
            host_ifname: &a.host_ifname,
            aliases: &a.aliases,
            primary: false,
            connecting: a.connecting,
        });
        std::iter::once(first).chain(more)
    }

    /// Its presence on `network`, if it is on it.
    pub fn link_on(&self, network: &str) -> Option<Link<'_>> {
        self.links().find(|l| l.network == network)
    }
}

#[cfg(test)]
impl EndpointSpec {
    /// An endpoint for unit tests: `eth0` in `/run/netns/NAME`, host veth
    /// `dp-NAME`, on its first network only.
    pub(crate) fn sample(name: &str, network: &str, ip: [u8; 4]) -> EndpointSpec {
        EndpointSpec {
            name: name.into(),
            id: random_id(),
            network: network.into(),
            ip: Ipv4Addr::from(ip),
            mac: [2, 0, 0, 0, 0, 1],
            netns_path: PathBuf::from(format!("/run/netns/{name}")),
            owns_netns: true,
            ifname: "eth0".into(),
            host_ifname: format!("dp-{name}"),
            container_id: None,
            cni: None,
            trace: false,
            created: now_rfc3339(),
            creating: false,
            detached: false,
            owner: None,
            ports: Vec::new(),
            ip6: None,
            aliases: Vec::new(),
            attachments: Vec::new(),
            dns: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub networks: BTreeMap<String, NetworkSpec>,
    pub endpoints: BTreeMap<String, EndpointSpec>,
    /// What the agent changed on the node, to put it back.
    #[serde(default)]
    pub node: NodeChanges,
    /// Commands started with `datapath run`.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChanges {
    /// `net.ipv4.ip_forward` before the agent turned it on.
    #[serde(default)]
    pub ip_forward_was: Option<String>,
    /// `net.ipv6.conf.all.forwarding` before the agent turned it on (while
    /// a dual-stack network routes beyond itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_forward_was: Option<String>,
}

impl State {
    pub fn new() -> Self {
        State { version: STATE_VERSION, ..Default::default() }
    }

    /// Addresses in use on a network (derived from its endpoints, first
    /// networks and attachments alike).
    pub fn used_addresses(&self, network: &str) -> BTreeSet<Ipv4Addr> {
        self.links_on(network).map(|(_, l)| l.ip).collect()
    }

    /// Every endpoint on `network`, by its first network or an attachment,
    /// with its link there.
    pub fn links_on<'a>(&'a self, network: &'a str) -> impl Iterator<Item = (&'a EndpointSpec, Link<'a>)> + 'a {
        self.endpoints.values().filter_map(move |e| e.link_on(network).map(|l| (e, l)))
    }

    /// IPv6 addresses in use on a network (derived from its endpoints).
    pub fn used_addresses6(&self, network: &str) -> BTreeSet<Ipv6Addr> {
        self.links_on(network).filter_map(|(_, l)| l.ip6).collect()
    }

    /// The network, if any, whose IPv6 subnet overlaps `subnet`.
    pub fn overlapping6(&self, subnet: &Ipv6Net) -> Option<&NetworkSpec> {
        self.networks.values().find(|n| n.ipv6.is_some_and(|v6| crate::ipam::v6::nets_overlap(&v6.subnet, subnet)))
    }

    /// Whether network `net` can take one more endpoint: at most
    /// `per_network` on it (its bridge's ports), and for an eBPF network at
    /// most `ebpf_total` on the node's eBPF networks (the datapath's endpoint
    /// maps). The error is the one-line message for the client.
    pub fn room_for_endpoint(&self, net: &NetworkSpec, per_network: usize, ebpf_total: usize) -> Result<(), String> {
        if self.links_on(&net.name).count() >= per_network {
            return Err(format!("network {} is full: {per_network} endpoints", net.name));
        }
        // Every link on an eBPF network is one entry in the endpoint maps.
        let on_ebpf = |l: &Link| self.networks.get(l.network).is_some_and(|n| n.datapath == DatapathKind::Ebpf);
        let ebpf_links = self.endpoints.values().flat_map(|e| e.links()).filter(on_ebpf).count();
        if net.datapath == DatapathKind::Ebpf && ebpf_links >= ebpf_total {
            return Err(format!(
                "the node is full: {ebpf_total} endpoints on eBPF networks (the size of the datapath's endpoint maps)"
            ));
        }
        Ok(())
    }

    /// Endpoints whose first network is `network` (see [`State::links_on`]
    /// for every endpoint on it).
    pub fn endpoints_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a EndpointSpec> + 'a {
        self.endpoints.values().filter(move |e| e.network == network)
    }

    /// The network, if any, whose subnet overlaps `subnet`.
    pub fn overlapping(&self, subnet: &Ipv4Net) -> Option<&NetworkSpec> {
        self.networks.values().find(|n| nets_overlap(&n.subnet, subnet))
    }

    /// Lowest numeric network id not in use (1-based; 0 means "none").
    pub fn next_network_num(&self) -> u32 {
        let used: BTreeSet<u32> = self.networks.values().map(|n| n.num_id).collect();
        (1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX)
    }

    pub fn load(dir: &Path) -> Result<Option<State>, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State =
            serde_json::from_str(&text).map_err(|source| StateError::Parse { path: path.clone(), source })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version { path, found: state.version });
        }
        state.check().map_err(|reason| StateError::Invalid { path, reason })?;
        Ok(Some(state))
    }

    /// The invariants every state the agent writes holds; a file that
    /// breaks one was edited or corrupted: the agent refuses it rather than
    /// make two endpoints share an address.
    pub fn check(&self) -> Result<(), String> {
        let mut ids = BTreeSet::new();
        for (key, n) in &self.networks {
            if key != &n.name || !ids.insert(n.num_id) {
                return Err(format!("network {key:?} has a wrong name or a duplicate id"));
            }
            if let Some(o) = self.networks.values().find(|o| o.name != n.name && nets_overlap(&o.subnet, &n.subnet)) {
                return Err(format!("networks {:?} and {:?} overlap", n.name, o.name));
            }
            if let Some(v6) = n.ipv6 {
                if let Some(o) = self.overlapping6(&v6.subnet).filter(|o| o.name != n.name) {
                    return Err(format!("networks {:?} and {:?} overlap (IPv6)", n.name, o.name));
                }
            }
        }
        let mut addrs6 = BTreeSet::new();
        let (mut addrs, mut hosts) = (BTreeSet::new(), BTreeSet::new());
        for (key, e) in &self.endpoints {
            if key != &e.name {
                return Err(format!("endpoint {key:?} is recorded under another name"));
            }
            if e.network == "none" {
                continue;
            }
            let mut nets = BTreeSet::new();
            for l in e.links() {
                let Some(n) = self.networks.get(l.network) else {
                    return Err(format!("endpoint {:?} is on network {:?}, which does not exist", e.name, l.network));
                };
                if !nets.insert(l.network) {
                    return Err(format!("endpoint {:?} is on network {:?} twice", e.name, l.network));
                }
                if !n.subnet.contains(&l.ip) || l.ip == n.gateway || l.ip == n.subnet.network() {
                    return Err(format!("endpoint {:?} has address {}, not usable in {}", e.name, l.ip, n.subnet));
                }
                if !addrs.insert(l.ip) {
                    return Err(format!("address {} is recorded for two endpoints", l.ip));
                }
                if !hosts.insert(l.host_ifname.to_string()) {
                    return Err(format!("host interface {} is recorded for two endpoints", l.host_ifname));
                }
            }
            for l in e.links() {
                let Some(ip6) = l.ip6 else { continue };
                let v6 = self.networks.get(l.network).and_then(|n| n.ipv6);
                let usable =
                    v6.is_some_and(|v6| v6.subnet.contains(&ip6) && ip6 != v6.gateway && ip6 != v6.subnet.network());
                if !usable {
                    return Err(format!(
                        "endpoint {:?} has IPv6 address {ip6}, not usable on network {:?}",
                        e.name, l.network
                    ));
                }
                if !addrs6.insert(ip6) {
                    return Err(format!("address {ip6} is recorded for two endpoints"));
                }
            }
        }
        let published: Vec<(&str, &Publish)> =
            self.endpoints.values().flat_map(|e| e.ports.iter().map(move |p| (e.name.as_str(), p))).collect();
        for (i, (a, p)) in published.iter().enumerate() {
            if let Some((b, q)) = published[i + 1..].iter().find(|(_, q)| q.conflicts(p)) {
                return Err(format!("endpoints {a:?} and {b:?} publish conflicting ports ({p} and {q})"));
            }
        }
        Ok(())
    }

    /// The state as it is written to the state file.
    pub fn to_json(&self) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec_pretty(self).map_err(|e| StateError::Serialize(e.to_string()))
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_file(dir, &self.to_json()?)
    }
}

/// Writes a serialized state into `dir` atomically (temp file, fsync,
/// rename): a crash leaves the old file or the new one, never a mix.
pub fn write_file(dir: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let werr = |source| StateError::Write { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(werr)?;
    let mut f = std::fs::File::create(&tmp).map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, &path).map_err(werr)?;
    Ok(())
}

pub fn nets_overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Names of networks and endpoints: what Docker accepts, and short enough to
/// be a namespace name.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    let starts_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 64 || !ok_chars || !starts_ok {
        return Err(format!(
            "invalid {kind} name {name:?}: use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        ));
    }
    Ok(())
}

pub fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str, num: u32) -> NetworkSpec {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkSpec {
            name: name.into(),
            id: random_id(),
            num_id: num,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            bridge: format!("br-{name}"),
            datapath: DatapathKind::Ebpf,
            options: NetworkOptions::default(),
            created: now_rfc3339(),
            owner: None,
            ipv6: None,
        }
    }

    fn ep(name: &str, network: &str, ip: [u8; 4]) -> EndpointSpec {
        EndpointSpec { host_ifname: "dp0".into(), ..EndpointSpec::sample(name, network, ip) }
    }

    #[test]
    fn inconsistent_states_are_refused_at_load() {
        let mut s = State::new();
        s.networks.insert("a".into(), net("a", "10.10.0.0/16", 1));
        s.endpoints.insert("x".into(), ep("x", "a", [10, 10, 0, 2]));
        assert_eq!(s.check(), Ok(()));
        let mut dup = s.clone();
        let mut y = ep("y", "a", [10, 10, 0, 2]);
        y.host_ifname = "dp1".into();
        dup.endpoints.insert("y".into(), y);
        assert!(dup.check().unwrap_err().contains("two endpoints"));
        let mut orphan = s.clone();
        orphan.endpoints.insert("z".into(), ep("z", "nope", [10, 30, 0, 2]));
        assert!(orphan.check().unwrap_err().contains("does not exist"));
        let mut outside = s.clone();
        outside.endpoints.get_mut("x").unwrap().ip = Ipv4Addr::new(10, 11, 0, 2);
        assert!(outside.check().unwrap_err().contains("not usable"));
        let mut overlap = s.clone();
        overlap.networks.insert("b".into(), net("b", "10.10.1.0/24", 2));
        assert!(overlap.check().unwrap_err().contains("overlap"));
        let mut ports = s.clone();
        let mut y = ep("y", "a", [10, 10, 0, 3]);
        y.host_ifname = "dp1".into();
        y.ports = crate::ports::parse("8080:80").unwrap();
        ports.endpoints.get_mut("x").unwrap().ports = crate::ports::parse("127.0.0.1:8080:81").unwrap();
        ports.endpoints.insert("y".into(), y);
        assert!(ports.check().unwrap_err().contains("conflicting ports"));
        let dir = std::env::temp_dir().join(format!("dp-state-test-{}", random_id()));
        dup.save(&dir).unwrap();
        let err = State::load(&dir).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains("inconsistent"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn attachments_are_links_for_addresses_and_checks() {
        let mut s = State::new();
        s.networks.insert("a".into(), net("a", "10.10.0.0/16", 1));
        s.networks.insert("b".into(), net("b", "10.20.0.0/16", 2));
        let mut x = ep("x", "a", [10, 10, 0, 2]);
        x.attachments.push(Attachment {
            network: "b".into(),
            ip: Ipv4Addr::new(10, 20, 0, 2),
            mac: [2, 0, 0, 0, 0, 9],
            ifname: "eth1".into(),
            host_ifname: "dp9".into(),
            aliases: vec!["db".into()],
            ip6: None,
            connecting: false,
        });
        s.endpoints.insert("x".into(), x.clone());
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.used_addresses("b"), [Ipv4Addr::new(10, 20, 0, 2)].into());
        assert_eq!(s.links_on("b").map(|(e, l)| (e.name.as_str(), l.ifname)).collect::<Vec<_>>(), [("x", "eth1")]);
        assert_eq!(s.endpoints_of("b").count(), 0, "endpoints_of is the first network only");
        assert_eq!(x.links().map(|l| l.primary).collect::<Vec<_>>(), [true, false]);
        let mut twice = s.clone();
        twice.endpoints.get_mut("x").unwrap().attachments[0].network = "a".into();
        twice.endpoints.get_mut("x").unwrap().attachments[0].ip = Ipv4Addr::new(10, 10, 0, 3);
        assert!(twice.check().unwrap_err().contains("twice"));
        let mut shared = s.clone();
        shared.endpoints.get_mut("x").unwrap().attachments[0].host_ifname = "dp0".into();
        assert!(shared.check().unwrap_err().contains("host interface dp0"));
        let mut gone = s.clone();
        gone.endpoints.get_mut("x").unwrap().attachments[0].network = "c".into();
        assert!(gone.check().unwrap_err().contains("does not exist"));
        // Old state files have neither field.
        let text = serde_json::to_string(&ep("y", "a", [10, 10, 0, 3])).unwrap();
        assert!(!text.contains("attachments") && !text.contains("aliases"), "{text}");
    }

    #[test]
    fn overlap_detection() {
        let mut s = State::new();
        s.networks.insert("a".into(), net("a", "10.10.0.0/16", 1));
        assert!(s.overlapping(&"10.10.5.0/24".parse().unwrap()).is_some());
        assert!(s.overlapping(&"10.0.0.0/8".parse().unwrap()).is_some());
        assert!(s.overlapping(&"10.11.0.0/16".parse().unwrap()).is_none());
        assert_eq!(s.next_network_num(), 2);
    }

    #[test]
    fn used_addresses_are_derived_per_network() {
        let mut s = State::new();
        s.endpoints.insert("x".into(), ep("x", "a", [10, 10, 0, 2]));
        s.endpoints.insert("y".into(), ep("y", "b", [10, 20, 0, 2]));
        assert_eq!(s.used_addresses("a"), [Ipv4Addr::new(10, 10, 0, 2)].into());
        assert_eq!(s.endpoints_of("b").count(), 1);
    }

    #[test]
    fn room_for_endpoints_per_network_and_per_node() {
        let mut s = State::new();
        let a = net("a", "10.10.0.0/16", 1);
        let b = net("b", "10.20.0.0/16", 2);
        let mut k = net("k", "10.30.0.0/16", 3);
        k.datapath = DatapathKind::Kernel;
        for n in [&a, &b, &k] {
            s.networks.insert(n.name.clone(), n.clone());
        }
        for i in 0..3u8 {
            s.endpoints.insert(format!("a{i}"), ep(&format!("a{i}"), "a", [10, 10, 0, 2 + i]));
            s.endpoints.insert(format!("k{i}"), ep(&format!("k{i}"), "k", [10, 30, 0, 2 + i]));
        }
        assert_eq!(s.room_for_endpoint(&a, 4, 100), Ok(()));
        assert_eq!(s.room_for_endpoint(&a, 3, 100), Err("network a is full: 3 endpoints".into()));
        assert_eq!(s.room_for_endpoint(&k, 3, 100), Err("network k is full: 3 endpoints".into()));
        // The node-wide bound counts eBPF networks only.
        assert_eq!(s.room_for_endpoint(&b, 1023, 4), Ok(()));
        let full = s.room_for_endpoint(&b, 1023, 3).unwrap_err();
        assert!(full.starts_with("the node is full: 3 endpoints on eBPF networks"), "{full}");
        assert_eq!(s.room_for_endpoint(&k, 1023, 3), Ok(()));
    }

    #[test]
    fn save_load_roundtrip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("dp-state-test-{}", random_id()));
        assert_eq!(State::load(&dir).unwrap(), None);
        let mut s = State::new();
        s.networks.insert("a".into(), net("a", "10.10.0.0/16", 1));
        s.endpoints.insert("x".into(), ep("x", "a", [10, 10, 0, 2]));
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), Some(s));
        std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(State::load(&dir), Err(StateError::Parse { .. })));
        std::fs::write(dir.join(STATE_FILE), br#"{"version":99,"networks":{},"endpoints":{}}"#).unwrap();
        assert!(matches!(State::load(&dir), Err(StateError::Version { found: 99, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn older_state_files_get_default_options() {
        let text = r#"{"name":"a","id":"1","num_id":1,"subnet":"10.1.0.0/24","gateway":"10.1.0.1","bridge":"b","created":"x"}"#;
        let n: NetworkSpec = serde_json::from_str(text).unwrap();
        assert_eq!(n.datapath, DatapathKind::Ebpf);
        assert_eq!(n.options, NetworkOptions::default());
        assert!(n.options.icc && n.options.masquerade && !n.options.internal);
    }

    #[test]
    fn dual_stack_states_are_checked_and_old_files_load() {
        let mut s = State::new();
        let mut a = net("a", "10.10.0.0/16", 1);
        a.ipv6 = Some(Ipv6Config { subnet: "fd00:1::/64".parse().unwrap(), gateway: "fd00:1::1".parse().unwrap() });
        s.networks.insert("a".into(), a.clone());
        let mut x = ep("x", "a", [10, 10, 0, 2]);
        x.ip6 = Some("fd00:1::2".parse().unwrap());
        s.endpoints.insert("x".into(), x.clone());
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.used_addresses6("a"), ["fd00:1::2".parse().unwrap()].into());
        assert!(s.overlapping6(&"fd00:1::/48".parse().unwrap()).is_some());
        assert!(s.overlapping6(&"fd00:2::/64".parse().unwrap()).is_none());
        let mut dup = s.clone();
        let mut y = ep("y", "a", [10, 10, 0, 3]);
        (y.host_ifname, y.ip6) = ("dp1".into(), x.ip6);
        dup.endpoints.insert("y".into(), y);
        assert!(dup.check().unwrap_err().contains("two endpoints"));
        for bad in ["fd00:2::5", "fd00:1::1", "fd00:1::"] {
            let mut st = s.clone();
            st.endpoints.get_mut("x").unwrap().ip6 = Some(bad.parse().unwrap());
            assert!(st.check().unwrap_err().contains("not usable"), "{bad}");
        }
        let mut v4only = s.clone();
        v4only.networks.get_mut("a").unwrap().ipv6 = None;
        assert!(v4only.check().unwrap_err().contains("not usable"));
        let mut overlap = s.clone();
        let mut b = net("b", "10.20.0.0/16", 2);
        b.ipv6 = Some(Ipv6Config { subnet: "fd00:1::/56".parse().unwrap(), gateway: "fd00:1::1".parse().unwrap() });
        overlap.networks.insert("b".into(), b);
        assert!(overlap.check().unwrap_err().contains("overlap"));
        // The new fields round-trip; without them (an older build's file)
        // everything is IPv4-only.
        let dir = std::env::temp_dir().join(format!("dp-state-test-{}", random_id()));
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), Some(s.clone()));
        let _ = std::fs::remove_dir_all(&dir);
        let old = r#"{"version":1,"networks":{"a":{"name":"a","id":"1","num_id":1,"subnet":"10.1.0.0/24","gateway":"10.1.0.1","bridge":"b","created":"x"}},
            "endpoints":{"x":{"name":"x","id":"2","network":"a","ip":"10.1.0.2","mac":[2,0,0,0,0,1],"netns_path":"/run/netns/x",
            "owns_netns":true,"ifname":"eth0","host_ifname":"dp0","created":"x"}},"node":{"ip_forward_was":"0"}}"#;
        let old: State = serde_json::from_str(old).unwrap();
        assert_eq!(
            (old.networks["a"].ipv6, old.endpoints["x"].ip6, old.node.ip6_forward_was.clone()),
            (None, None, None)
        );
        assert_eq!(old.check(), Ok(()));
        let text = String::from_utf8(old.to_json().unwrap()).unwrap();
        assert!(!text.contains("ipv6") && !text.contains("ip6"), "an IPv4-only state is written as before: {text}");
    }

    #[test]
    fn names() {
        assert!(validate_name("endpoint", "web-1").is_ok());
        assert!(validate_name("endpoint", "").is_err());
        assert!(validate_name("endpoint", "-x").is_err());
        assert!(validate_name("endpoint", "a/b").is_err());
        assert!(validate_name("endpoint", &"a".repeat(65)).is_err());
    }
}
