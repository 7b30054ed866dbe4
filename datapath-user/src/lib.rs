//! The `datapath` agent and its client library.

pub mod bpf_object;
