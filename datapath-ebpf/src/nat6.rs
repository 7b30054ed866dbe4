//! IPv6 leaving the node from a network that masquerades it: connection
//! tracking and source translation to the uplink's IPv6 address (SNAT66).
//!
//! For now the packet is handed to the bridge, and the kernel masquerades
//! it with nftables.

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo};

use crate::{
    ipv6::Pkt6,
    verdict::{pass, Verdict},
};

/// A packet `p` from endpoint `src` beyond the node. Out of line, called
/// from `dp_from_ep`.
#[inline(never)]
pub fn egress(_ctx: &TcContext, _src: &EndpointInfo, _p: &Pkt6) -> Verdict {
    pass(reason::PASS_IPV6)
}
