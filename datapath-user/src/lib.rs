//! The `datapath` agent and its client library.
//!
//! * [`api`]: the wire types and the client of the agent's unix-socket API.
//! * [`agent`]: the agent (serving, networks, endpoints, containers, upkeep).
//! * [`datapath`]: the eBPF object, its loader and map access.
//! * [`host`]: netlink, namespaces, netfilter and sysctls of the node.
//! * [`docker`]: Docker's remote network driver, served by the agent.
//! * [`state`]: the persisted desired state; [`ipam`]: address assignment;
//!   [`ports`]: published ports (`-p`).

pub mod agent;
pub mod api;
pub mod datapath;
pub mod dns;
pub mod docker;
pub mod host;
pub mod ipam;
pub mod ports;
pub mod reset;
pub mod state;
pub mod testbed;
