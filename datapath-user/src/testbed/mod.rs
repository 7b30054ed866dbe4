//! The test bed shared by the integration tests, the eBPF program tests, the
//! walkthrough and the benchmark: everything needed to run an agent on a
//! throwaway "node" with an "outside" behind its uplink, and to talk to it.
//!
//! * [`names`]: unique prefixes (`dpt0a1f9`) with owner markers, and the
//!   sweeper that removes what killed runs left behind.
//! * [`topology`]: the node namespace with an uplink veth to an outside
//!   namespace (203.0.113.2 / 203.0.113.1), over rtnetlink.
//! * [`knobs`]: sysctls and TX checksum offload inside a namespace.
//! * [`agent`]: the `datapath agent --netns NODE ...` launcher and its guard.
//! * [`client`]: the typed API client ([`crate::api::Client`]) for blocking code.
//! * [`docker`]: a real dockerd in a node namespace (the Docker tests, the
//!   benchmark's `docker` topology).
//! * [`process`]: commands with deadlines, background processes reaped on drop.
//! * [`frames`]: Ethernet/ARP/IPv4/TCP/UDP/ICMP frame builders with checksums.
//!
//! Everything here stays inside namespaces it creates: the host's own
//! network is never touched.

pub mod agent;
pub mod client;
pub mod docker;
pub mod frames;
pub mod knobs;
pub mod names;
pub mod process;
pub mod topology;

use std::future::Future;

/// Runs the future made by `f` to completion on a fresh thread with a
/// current-thread tokio runtime: async test-bed calls for synchronous code,
/// usable from inside another runtime too.
pub fn blocking<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            rt.block_on(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
