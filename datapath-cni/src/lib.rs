//! `datapath-cni`: a CNI 1.1 plugin (also speaking 1.0.0 and 0.4.0
//! configurations) that plugs a runtime's network namespace into a network
//! of the `datapath` agent, as a thin client of the agent's API.
//!
//! * [`spec`]: the specification: environment, configuration, version
//!   negotiation, results and errors with the spec's codes (no I/O);
//! * [`delegate`]: delegated IPAM plugins;
//! * [`plugin`]: the verbs, each one or two API requests.
//!
//! The agent keeps the attachments (`agent/cni.rs` in `datapath-user`).

pub mod delegate;
pub mod plugin;
pub mod spec;
