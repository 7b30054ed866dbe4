//! Embedded DNS for endpoints on user-defined networks (Docker's rules).
//!
//! * [`table`] (pure): from a state snapshot, what each asking endpoint may
//!   resolve: names and aliases of the endpoints sharing a user-defined
//!   network with it, the address on that network, and where the rest goes.
//! * [`answer`] (pure): one query's verdict, wire format by `hickory-proto`.
//! * [`resolv`]: the node's upstreams; each endpoint's
//!   `/etc/netns/NAME/resolv.conf`.
//! * [`server`]: the sockets in the endpoints' namespaces, forwarding.
//!
//! The agent only publishes its state here after every change
//! ([`Dns::publish`], then [`Dns::settle`] before answering the request)
//! and shows [`DnsStats`] in `stats`.

use std::net::Ipv4Addr;

pub mod answer;
pub mod resolv;
mod server;
pub mod table;

pub use server::{Dns, DnsStats, MAX_IN_FLIGHT, MAX_TCP_CONNECTIONS, TCP_IDLE, UPSTREAM_TIMEOUT};
pub use table::{check_names, eligible, Table};

/// Where the server listens in each served namespace (UDP and TCP port 53).
pub const LISTEN_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// Upstreams tried per query, in order (Docker: 3).
pub const MAX_UPSTREAMS: usize = 3;
