//! Published ports (`-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`): the
//! `PORTS` map the agent fills and the eBPF programs read to translate
//! the destination of a connection to a node address and host port into
//! the publishing endpoint's address and container port (DNAT).
//!
//! # Keys
//!
//! A key is (protocol, node address, host port). The agent writes one key
//! per node address a publication covers: `HOST_IP` alone, or, without
//! `HOST_IP`, every IPv4 address of the node except loopback (the uplink's,
//! the networks' gateways), kept in line with the node's addresses by the
//! agent's periodic upkeep. So the datapath answers "is this a published
//! port?" with one exact lookup and never needs to know what the node's
//! addresses are. Address 0 (any) is never written. Loopback publications
//! (`127.0.0.1:`) have no key: only the node's own processes reach them,
//! through the node's netfilter (see the README, "Published ports").
//!
//! An IPv6 twin (`PortKey6` with a 128-bit address, in its own map) keeps
//! the same value type.
//!
//! # Flows
//!
//! A published flow is tracked in `CT` (see [`crate::ct`], `CT_F_DNAT`)
//! with two entries: the forward one keyed by the tuple as it arrives
//! (client -> node address:host port) and the reverse one keyed by the
//! endpoint's reply (endpoint:container port -> client, or -> the endpoint
//! network's gateway when the flow is also source-translated).

/// Key of `PORTS`. Addresses and ports in wire order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The node address the port is published on (never 0, see the module
    /// documentation).
    pub addr: u32,
    /// The host port.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Always zero (part of the hashed key).
    pub _pad: u8,
}

impl PortKey {
    #[inline(always)]
    pub const fn new(proto: u8, addr: u32, port: u16) -> Self {
        PortKey { addr, port, proto, _pad: 0 }
    }
}

/// Value of `PORTS`: where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    /// The endpoint's address, wire order.
    pub addr: u32,
    /// Host-side veth ifindex of the endpoint (its `ENDPOINTS` key).
    pub ifindex: u32,
    /// The container port, wire order.
    pub port: u16,
    pub _pad: [u8; 2],
}
