//! The node's kernel as the agent changes it: links and addresses over
//! rtnetlink, network namespaces, netfilter rules (kernel datapath) and sysctls.

pub mod bpffs;
pub mod netfilter;
pub mod netlink;
pub mod netns;
pub mod process;
pub mod sysctl;
