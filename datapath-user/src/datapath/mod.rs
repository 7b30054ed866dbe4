//! The eBPF datapath seen from userspace: the embedded object, its loader
//! (programs, maps, attachments), the SNAT port range and the connection
//! tracker's views.

pub mod conntrack;
pub mod loader;
pub mod object;
pub mod snat;

pub use loader::{AttachMode, Attachment, Bpf, BpfError};
