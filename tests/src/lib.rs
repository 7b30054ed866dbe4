//! Test harness for the datapath integration suite (`tests/tests/suite/`).
//!
//! * [`env`]: root check, binary lookup (`DATAPATH_BIN`, then
//!   `target/release/datapath`, then `target/debug/datapath`), tool checks,
//!   bpffs mount, unique prefixes with owner markers, the leftover sweeper.
//! * [`node::Node`]: node netns + agent; owns all of a test's resources and
//!   removes them on drop (also on panic).
//! * [`net`]: `ip netns exec`, ping, link counters, neighbours.
//! * [`proc`]: commands with deadlines, background processes reaped on drop.
//! * [`py`]: python3 one-liners (raw frames, sniffer, HTTP, UDP, ping).
//! * [`frames`]: hand-built Ethernet frames for the anti-spoofing tests.
//!
//! Environment: `DATAPATH_BIN` (binary under test); `DATAPATH_TESTS_AGENT_ARGS`
//! (extra `datapath agent` flags, to check the suite's sensitivity, e.g.
//! `--default-datapath kernel` must make the eBPF tests fail);
//! `DATAPATH_TESTS_PY_PING=1` (use the python ping even when iputils-ping is
//! installed).

pub mod env;
pub mod frames;
pub mod net;
pub mod node;
pub mod proc;
pub mod py;

pub use env::{kernel_prelude, netns_exists};
pub use net::{assert_ping, exec_in, link_stats, ping};
pub use node::{delta, AgentOpts, Endpoint, Node, Stats};
pub use proc::{show, stderr_str, stdout_str, BgProcess};

/// Put at the top of every kernel test: returns from the test (skip, with
/// the reason printed) when not root; panics when the environment is
/// incomplete (no binary, missing tools).
#[macro_export]
macro_rules! kernel_test {
    () => {
        fn __here() {}
        let __name = ::std::any::type_name_of_val(&__here);
        if !$crate::env::kernel_prelude(__name.strip_suffix("::__here").unwrap_or(__name)) {
            return;
        }
    };
}
