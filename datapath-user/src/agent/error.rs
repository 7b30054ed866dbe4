//! How the agent's failures and internal records become API answers: one
//! place for the conversions into [`ApiError`] and the wire views of the
//! datapath's own types.

use super::StartReport;
use crate::api::{ApiError, ConntrackFlow, ConntrackPressure, FlowSource, FlowTuple, FlowView, StartView};
use crate::datapath::{BpfError, Fate, Flow, GcReport};
use crate::host::netfilter::NetfilterError;
use crate::host::netlink::NetlinkError;
use crate::host::netns::NetnsError;
use crate::host::sysctl::SysctlError;
use crate::ipam::v6::Ipam6Error;
use crate::ipam::IpamError;
use crate::state::StateError;

macro_rules! internal {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ApiError::internal(e.to_string())
            }
        }
    )*};
}

internal!(NetlinkError, BpfError, StateError, NetfilterError, SysctlError);

/// The one "not found" answer for a network name.
pub(super) fn network_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("network {name:?} not found"))
}

/// The one "not found" answer for an endpoint name.
pub(super) fn endpoint_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("endpoint {name:?} not found"))
}

impl From<IpamError> for ApiError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::AddressInUse(_) | IpamError::Exhausted(_) => ApiError::conflict(e.to_string()),
            _ => ApiError::invalid(e.to_string()),
        }
    }
}

impl From<Ipam6Error> for ApiError {
    fn from(e: Ipam6Error) -> Self {
        match e {
            Ipam6Error::AddressInUse(_) | Ipam6Error::Exhausted(_) => ApiError::conflict(e.to_string()),
            _ => ApiError::invalid(e.to_string()),
        }
    }
}

impl From<NetnsError> for ApiError {
    fn from(e: NetnsError) -> Self {
        match e {
            NetnsError::Exists(n) => ApiError::conflict(format!("a network namespace named {n:?} already exists")),
            NetnsError::Missing(p) => ApiError::not_found(format!("network namespace {} does not exist", p.display())),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<GcReport> for ConntrackPressure {
    fn from(r: GcReport) -> Self {
        ConntrackPressure { scanned: r.scanned, removed: r.removed, live: r.live, capacity: r.capacity }
    }
}

/// A tracked flow as `conntrack ls` shows it, attributed to `endpoint`.
pub(super) fn flow_view(endpoint: Option<String>, f: Flow) -> FlowView {
    let o = f.original;
    FlowView {
        endpoint,
        flow: ConntrackFlow {
            protocol: f.protocol,
            original: FlowTuple { src: o.src, sport: o.sport, dst: o.dst, dport: o.dport },
            translated: f.translated.map(|t| FlowSource { src: t.src, sport: t.sport }),
            translated_dst: f.translated_dst.map(|t| FlowSource { src: t.src, sport: t.sport }),
            state: f.state,
            packets: f.packets,
            bytes: f.bytes,
            tx_packets: f.tx_packets,
            tx_bytes: f.tx_bytes,
            rx_packets: f.rx_packets,
            rx_bytes: f.rx_bytes,
            remaining_s: f.remaining_s,
            age_s: f.age_s,
            ifindex: f.ifindex,
        },
    }
}

impl From<&StartReport> for StartView {
    fn from(r: &StartReport) -> Self {
        let named = |want: fn(&Fate) -> bool| -> Vec<String> {
            r.pins.maps.iter().filter(|(_, f)| want(f)).map(|(n, _)| n.clone()).collect()
        };
        let migrated = r.pins.maps.iter().filter_map(|(n, f)| match f {
            Fate::Migrated(why) => Some(format!("{n}: {why}")),
            _ => None,
        });
        StartView {
            maps_reused: named(|f| *f == Fate::Reused),
            maps_created: named(|f| *f == Fate::Created),
            maps_migrated: migrated.collect(),
            conntrack_entries_kept: r.pins.ct_entries,
            attachments_kept: r.attachments_kept,
            attachments_replaced: r.attachments_replaced,
            attachments_created: r.attachments_created,
            endpoints_rolled_back: r.endpoints_rolled_back,
            stale_entries_removed: r.stale_entries_removed,
        }
    }
}
