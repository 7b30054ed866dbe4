//! Types shared between the eBPF programs (`datapath-ebpf`) and the agent
//! (`datapath-user`). Everything here is `#[repr(C)]`, `Copy` and `no_std` so
//! both sides agree on the byte layout of every map key and value.
//!
//! One module per concept, everything re-exported at the crate root
//! (`datapath_common::CtKey`, `datapath_common::MAP_CT`, ...):
//!
//! * [`maps`]: program and map names, capacities, [`MAP_LAYOUT_VERSION`];
//! * [`endpoint`]: [`EndpointInfo`], `EP_F_*`;
//! * [`network`]: [`NetworkInfo`], [`Network6Info`], `NET_F_*`, per-network
//!   [`NetStats`];
//! * [`ct`]: the connection tracker ([`CtKey`], [`CtEntry`], [`CtConfig`],
//!   flags, states, lifetimes, the reply/forward key derivation, and the
//!   fragment map's [`FragKey`]);
//! * [`ports`]: published ports ([`PortKey`], [`PortTarget`]);
//! * [`reason`]: reason codes and their names, [`Counter`].
//!
//! Conventions:
//! * IPv4 addresses are stored exactly as they appear on the wire (network byte
//!   order) inside a `u32`: `u32::from_ne_bytes(addr.octets())`. The eBPF side
//!   can then compare them with `iphdr.saddr` without swapping.
//! * Reason codes (`reason::*`) key the per-CPU counter array `STATS`. Codes
//!   below [`reason::DROP_BASE`] are forwarding decisions, codes at or above it
//!   are drops.
#![no_std]

pub mod ct;
pub mod endpoint;
pub mod maps;
pub mod network;
pub mod ports;
pub mod reason;

pub use ct::*;
pub use endpoint::*;
pub use maps::*;
pub use network::*;
pub use ports::*;
pub use reason::Counter;

/// The key representation of an IPv4 address in the maps.
#[inline(always)]
pub const fn ipv4_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays, no padding
    // holes that matter and every bit pattern valid.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::Endpoint6 {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::NetworkInfo {}
    unsafe impl aya::Pod for super::Network6Info {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::CtKey6 {}
    unsafe impl aya::Pod for super::CtEntry6 {}
    unsafe impl aya::Pod for super::Published6Key {}
    unsafe impl aya::Pod for super::FragKey6 {}
    unsafe impl aya::Pod for super::CtConfig {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::PortTarget {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::NetStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(core::mem::size_of::<EndpointInfo>(), 28);
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::size_of::<NetworkInfo>(), 28);
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtEntry>(), 104);
        assert_eq!(core::mem::size_of::<CtKey6>(), 40);
        assert_eq!(core::mem::size_of::<CtEntry6>(), 120);
        assert_eq!(core::mem::size_of::<Published6Key>(), 20);
        assert_eq!(core::mem::size_of::<FragKey6>(), 40);
        assert_eq!(core::mem::size_of::<CtConfig>(), 32);
        assert_eq!(core::mem::size_of::<PortKey>(), 8);
        assert_eq!(core::mem::size_of::<PortTarget>(), 12);
        assert_eq!(core::mem::size_of::<FragKey>(), 12);
        assert_eq!(core::mem::size_of::<FragPorts>(), 4);
        assert_eq!(core::mem::size_of::<NetStats>(), 48);
    }

    #[test]
    fn every_code_is_named_in_range_and_unique() {
        for (i, c) in reason::ALL.iter().enumerate() {
            assert!(*c < reason::MAX);
            assert_ne!(reason::name(*c), "unknown");
            for d in &reason::ALL[i + 1..] {
                assert_ne!(c, d);
                assert_ne!(reason::name(*c), reason::name(*d));
            }
        }
        assert!(reason::is_drop(reason::DROP_SPOOFED_IP));
        assert!(!reason::is_drop(reason::FWD_REDIRECT_PEER));
        assert!(!reason::is_drop(reason::FWD_REVNAT));
        assert!(reason::is_drop(reason::DROP_NAT_NO_PORT));
        assert!(reason::is_event(reason::EV_CT_CREATED));
        assert!(reason::is_event(reason::EV_NAT_PORT_REUSED));
        assert_eq!(reason::NAME_WIDTH, "nat-reverse-translated".len());
    }

    #[test]
    fn ipv4_key_is_wire_order() {
        let k = ipv4_key([10, 10, 0, 2]);
        assert_eq!(k.to_ne_bytes(), [10, 10, 0, 2]);
    }
}
