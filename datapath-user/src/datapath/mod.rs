//! The eBPF datapath seen from userspace: the embedded object, its loader
//! (programs, maps, attachments), the SNAT port range and the connection
//! tracker's views.

pub mod conntrack;
pub mod links;
pub mod loader;
pub mod maps;
pub mod object;
pub mod pins;
pub mod ports;
pub mod snat;
pub mod tables;

pub use conntrack::{CtTable, Flow, GcReport};
pub use links::Attached;
pub use loader::{AttachMode, Attachment, Bpf, BpfError, LoadOptions};
pub use pins::{Fate, PinReport, Pins};
pub use tables::{Counters, Tables};
