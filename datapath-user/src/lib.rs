//! The `datapath` agent and its client library.

pub mod api;
pub mod bpf_object;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod state;
pub mod bpf;
pub mod agent;
pub mod netfilter;
pub mod run;
pub mod uplink;
pub mod conntrack;
