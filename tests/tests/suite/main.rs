//! Integration suite: real packets between real network namespaces, against
//! a real `datapath` agent. One test binary (so `--test-threads=2` spreads
//! over all of it). Every test makes its own `Node`; see tests/src/lib.rs.
//!
//! Run (as root): `cargo test -p datapath-tests -- --test-threads=2`
//! (`DATAPATH_BIN=/path/to/datapath` to pick the binary).

mod api_limits;
mod cli;
mod cni;
mod concurrency;
mod connectivity;
mod dns;
mod docker_engine;
mod docker_plugin;
mod ipv6;
mod ipv6_surface;
mod lifecycle;
mod masquerade;
mod modes;
mod multinet;
mod nat6;
mod nat_limits;
mod network_options;
mod podman;
mod policy;
mod ports;
mod rollback;
mod scale;
mod security;
mod survival;
mod trace;
