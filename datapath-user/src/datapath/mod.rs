//! The eBPF datapath seen from userspace: the embedded object, its loader
//! (programs, maps, attachments), the SNAT port range and the connection
//! tracker's views.

pub mod conntrack;
pub mod loader;
pub mod object;
pub mod snat;
pub mod tables;

pub use conntrack::{CtTable, Flow, GcReport};
pub use loader::{AttachMode, Attachment, Bpf, BpfError};
pub use tables::{Counters, Tables};
