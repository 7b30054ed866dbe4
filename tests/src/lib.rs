//! Test harness for the datapath integration suite (`tests/tests/suite/`).
//!
//! Built on the test bed of the `datapath` library ([`datapath::testbed`]:
//! unique names and the sweeper, the node and outside namespaces, the agent
//! launcher, processes, frame builders); what is here is test-specific:
//!
//! * [`env`]: root check, binary lookup (`DATAPATH_BIN`, then
//!   `target/release/datapath`, then `target/debug/datapath`), tool checks,
//!   bpffs mount, the tests' prefix family (`dpt`) and its sweeper.
//! * [`node::Node`]: node netns + agent; owns all of a test's resources and
//!   removes them on drop (also on panic). Its CLI helpers: [`node_cli`].
//! * [`net`]: `ip netns exec`, ping, link counters, neighbours.
//! * [`py`]: python3 one-liners (raw frames, sniffer, HTTP, UDP, ping).
//! * [`outside`]: servers recording source addresses and checksum-verified
//!   captures in the outside namespace behind a node's uplink.
//! * [`traffic`]: continuous traffic that accounts for every packet (a
//!   5 ms pinger, a TCP echo stream), for the survival tests.
//!
//! Environment: `DATAPATH_BIN` (binary under test); `DATAPATH_TESTS_AGENT_ARGS`
//! (extra `datapath agent` flags, to check the suite's sensitivity, e.g.
//! `--default-datapath kernel` must make the eBPF tests fail);
//! `DATAPATH_TESTS_PY_PING=1` (use the python ping even when iputils-ping is
//! installed).
//!
//! Differential testing: every behavioural test is written once as a body
//! taking a [`Datapath`] and instantiated for both datapaths with
//! [`both_datapaths!`] (tests `<name>::ebpf` and `<name>::kernel`). Where
//! the datapaths differ on purpose (anti-spoofing, counters, the
//! redirect-peer bypass, traces, the eBPF conntrack table), the body
//! asserts each datapath's own documented behaviour and says so.

pub mod cni;
pub mod docker;
pub mod env;
pub mod net;
pub mod node;
pub mod node_cli;
pub mod outside;
pub mod podman;
pub mod py;
pub mod traffic;

/// Frame builders and processes come from the test bed.
pub use datapath::testbed::{frames, process as proc};

pub use env::{kernel_prelude, netns_exists};
pub use net::{assert_ping, exec_in, link_stats, ping};
pub use node::{delta, AgentBin, AgentOpts, Datapath, Endpoint, Node, Stats};
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

/// One behavioural test, run against both datapaths: expands
///
/// ```ignore
/// both_datapaths! {
///     /// doc
///     fn name(dp) { ...body using dp: Datapath... }
/// }
/// ```
///
/// into a module `name` with the tests `name::ebpf` and `name::kernel`
/// (each with the [`kernel_test!`] prelude), so a filter like `name`,
/// `::kernel` or `::ebpf` selects them. The body sees the enclosing
/// module's items (`use super::*`).
#[macro_export]
macro_rules! both_datapaths {
    ($(#[$attr:meta])* fn $name:ident($dp:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(unused_variables)]
            fn body($dp: $crate::node::Datapath) $body

            #[test]
            fn ebpf() {
                $crate::kernel_test!();
                body($crate::node::Datapath::Ebpf)
            }

            #[test]
            fn kernel() {
                $crate::kernel_test!();
                body($crate::node::Datapath::Kernel)
            }
        }
    };
}
