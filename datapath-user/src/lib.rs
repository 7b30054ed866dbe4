//! The `datapath` agent and its client library.

pub mod agent;
pub mod api;
pub mod bpf;
pub mod bpf_object;
pub mod conntrack;
pub mod ipam;
pub mod netfilter;
pub mod netlink;
pub mod netns;
pub mod run;
pub mod state;
pub mod uplink;
