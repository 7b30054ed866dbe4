//! The node namespace and its "outside", built over rtnetlink with the
//! crate's own [`crate::host::netns`] and [`crate::host::netlink`] (no `ip`
//! commands):
//!
//! ```text
//! NODE:    lo up; uplink0 203.0.113.2/24, default via 203.0.113.1
//!             |  veth
//! OUTSIDE: lo up; eth0 203.0.113.1/24   (no route back to any endpoint subnet)
//! ```
//!
//! 203.0.113.0/24 (TEST-NET-3) is only ever used inside these namespaces. An
//! agent started in NODE picks the device of the default route as its uplink
//! and masquerades through it; OUTSIDE stands in for the world beyond.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use thiserror::Error;

use crate::host::netlink::{Netlink, NetlinkError};
use crate::host::netns::{self, NetnsError};
use crate::testbed::knobs;

/// The node's side of the uplink (in the node netns).
pub const UPLINK_DEV: &str = "uplink0";
/// The outside's side of the uplink (in the outside netns).
pub const OUTSIDE_DEV: &str = "eth0";
/// The node's uplink address: the masquerade address the outside sees.
pub const NODE_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The outside namespace's address, the node's default gateway.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const UPLINK_PREFIX_LEN: u8 = 24;
/// IPv6 on the uplink, for the tests of dual-stack networks ([`uplink_ipv6`]):
/// the node's address (the masquerade address the outside sees) and the
/// outside's (the node's IPv6 default gateway), in the documentation prefix
/// 2001:db8:203::/64, only ever used inside these namespaces.
pub const NODE_UPLINK_IP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2);
pub const OUTSIDE_IP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 1);
pub const UPLINK_PREFIX_LEN6: u8 = 64;

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// Creates the named namespace NAME with `lo` up. With `reuse`, an existing
/// namespace of that name (left by a killed run) is taken as it is.
pub async fn create_netns(name: &str, reuse: bool) -> Result<PathBuf, TopologyError> {
    let path = netns::named_path(name);
    if !(reuse && path.exists()) {
        netns::create_named(name)?;
    }
    let nl = Netlink::in_netns(&path).await?;
    if let Some(lo) = nl.link_index("lo").await? {
        nl.set_up(lo).await?;
    }
    Ok(path)
}

/// One end of a veth: its namespace, device name and optional address.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub netns: &'a str,
    pub dev: &'a str,
    pub addr: Option<(Ipv4Addr, u8)>,
}

/// A veth between two named namespaces, both ends up with their addresses.
/// When `a`'s device already exists (a reused namespace) it is not created
/// again; addresses are replaced, so the call can be repeated.
pub async fn veth_between(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<(), TopologyError> {
    let (a_path, b_path) = (netns::named_path(a.netns), netns::named_path(b.netns));
    let nl_a = Netlink::in_netns(&a_path).await?;
    let nl_b = Netlink::in_netns(&b_path).await?;
    if nl_a.link_index(a.dev).await?.is_none() {
        nl_a.create_veth(a.dev, b.dev, &b_path, random_mac(), None, None).await?;
    }
    for (nl, end) in [(&nl_a, a), (&nl_b, b)] {
        let i = nl.require_index(end.dev).await?;
        if let Some((ip, len)) = end.addr {
            nl.add_address(i, ip, len).await?;
        }
        nl.set_up(i).await?;
    }
    Ok(())
}

/// A locally administered unicast MAC.
fn random_mac() -> [u8; 6] {
    let r: [u8; 5] = rand::random();
    [0x02, r[0], r[1], r[2], r[3], r[4]]
}

/// What [`build`] makes.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The node namespace.
    pub node: String,
    /// The outside namespace behind the node's uplink (none: no uplink).
    pub outside: Option<String>,
    /// The uplink's name in the node ([`UPLINK_DEV`] by default).
    pub uplink_dev: String,
    /// Turn TX checksum offload off on both ends of the uplink, so captures
    /// show the checksums as transmitted (a wrong NAT update shows on the wire).
    pub tx_checksum_off: bool,
    /// Take namespaces and the uplink that already exist as they are.
    pub reuse: bool,
}

impl NodeSpec {
    /// A node without an uplink.
    pub fn new(node: impl Into<String>) -> NodeSpec {
        NodeSpec {
            node: node.into(),
            outside: None,
            uplink_dev: UPLINK_DEV.into(),
            tx_checksum_off: false,
            reuse: false,
        }
    }

    /// A node with an uplink to the namespace `outside`.
    pub fn with_outside(mut self, outside: impl Into<String>) -> NodeSpec {
        self.outside = Some(outside.into());
        self
    }
}

/// The namespaces [`build`] made; removed on drop (outside first) unless
/// [`NodeNet::keep`] was called.
#[derive(Debug)]
pub struct NodeNet {
    pub node: String,
    pub outside: Option<String>,
    remove_on_drop: bool,
}

impl NodeNet {
    pub fn node_path(&self) -> PathBuf {
        netns::named_path(&self.node)
    }

    pub fn outside_path(&self) -> Option<PathBuf> {
        self.outside.as_deref().map(netns::named_path)
    }

    /// Leave the namespaces in place on drop (someone else removes them).
    pub fn keep(mut self) -> NodeNet {
        self.remove_on_drop = false;
        self
    }

    /// Removes the namespaces now.
    pub fn remove(&mut self) {
        for ns in self.outside.iter().chain(std::iter::once(&self.node)) {
            let _ = netns::delete_path(&netns::named_path(ns));
        }
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        if self.remove_on_drop {
            self.remove();
        }
    }
}

/// Builds the node namespace and, when asked, the uplink to the outside
/// (see the module docs). Whatever was made is removed again on failure.
pub async fn build(spec: &NodeSpec) -> Result<NodeNet, TopologyError> {
    let mut made = NodeNet { node: spec.node.clone(), outside: None, remove_on_drop: true };
    create_netns(&spec.node, spec.reuse).await?;
    let Some(outside) = &spec.outside else {
        return Ok(made);
    };
    create_netns(outside, spec.reuse).await?;
    made.outside = Some(outside.clone());
    let node_end =
        VethEnd { netns: &spec.node, dev: &spec.uplink_dev, addr: Some((NODE_UPLINK_IP, UPLINK_PREFIX_LEN)) };
    let out_end = VethEnd { netns: outside, dev: OUTSIDE_DEV, addr: Some((OUTSIDE_IP, UPLINK_PREFIX_LEN)) };
    veth_between(node_end, out_end).await?;
    Netlink::in_netns(&made.node_path()).await?.add_default_route(OUTSIDE_IP).await?;
    if spec.tx_checksum_off {
        knobs::tx_checksum_off(&made.node_path(), &spec.uplink_dev)?;
        knobs::tx_checksum_off(&netns::named_path(outside), OUTSIDE_DEV)?;
    }
    Ok(made)
}

/// IPv6 on a built uplink (namespaces are made with IPv6 off): both ends
/// get it (no autoconfiguration), [`NODE_UPLINK_IP6`] and [`OUTSIDE_IP6`]
/// usable at once, and the node an IPv6 default route via the outside.
/// The outside has no route back to any endpoint subnet.
pub async fn uplink_ipv6(node: &str, outside: &str, uplink_dev: &str) -> Result<(), TopologyError> {
    for (ns, dev, ip) in [(node, uplink_dev, NODE_UPLINK_IP6), (outside, OUTSIDE_DEV, OUTSIDE_IP6)] {
        add_ipv6(ns, dev, ip, UPLINK_PREFIX_LEN6).await?;
    }
    Netlink::in_netns(&netns::named_path(node)).await?.add_default_route6(OUTSIDE_IP6).await?;
    Ok(())
}

/// IPv6 on `dev` in namespace `ns` (namespaces are made with IPv6 off: it
/// is enabled there, without autoconfiguration) with `ip/prefix_len`,
/// usable at once (no DAD).
pub async fn add_ipv6(ns: &str, dev: &str, ip: std::net::Ipv6Addr, prefix_len: u8) -> Result<(), TopologyError> {
    let path = netns::named_path(ns);
    let d = dev.to_string();
    let p = path.clone();
    tokio::task::spawn_blocking(move || netns::enable_ipv6(&p, &d))
        .await
        .map_err(|e| TopologyError::Io { what: "enabling IPv6".into(), source: std::io::Error::other(e) })??;
    let nl = Netlink::in_netns(&path).await?;
    let i = nl.require_index(dev).await?;
    nl.add_address6(i, ip, prefix_len).await?;
    Ok(())
}

/// [`add_ipv6`] from synchronous code.
pub fn add_ipv6_blocking(ns: &str, dev: &str, ip: std::net::Ipv6Addr, prefix_len: u8) -> Result<(), TopologyError> {
    let (ns, dev) = (ns.to_string(), dev.to_string());
    crate::testbed::blocking(move || async move { add_ipv6(&ns, &dev, ip, prefix_len).await })
}

/// [`uplink_ipv6`] from synchronous code.
pub fn uplink_ipv6_blocking(node: &str, outside: &str, uplink_dev: &str) -> Result<(), TopologyError> {
    let (node, outside, dev) = (node.to_string(), outside.to_string(), uplink_dev.to_string());
    crate::testbed::blocking(move || async move { uplink_ipv6(&node, &outside, &dev).await })
}

/// [`build`] from synchronous code (see [`crate::testbed::blocking`]).
pub fn build_blocking(spec: &NodeSpec) -> Result<NodeNet, TopologyError> {
    let spec = spec.clone();
    crate::testbed::blocking(move || async move { build(&spec).await })
}

/// [`veth_between`] from synchronous code.
pub fn veth_between_blocking(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<(), TopologyError> {
    crate::testbed::blocking(move || async move { veth_between(a, b).await })
}

/// [`create_netns`] from synchronous code.
pub fn create_netns_blocking(name: &str) -> Result<PathBuf, TopologyError> {
    crate::testbed::blocking(move || async move { create_netns(name, false).await })
}
