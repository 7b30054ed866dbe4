//! Masquerade configuration: which uplink a network leaves through, its
//! address, the SNAT port range, and the datapath's view of a network.

use std::net::{Ipv4Addr, Ipv6Addr};

use datapath_common::{ipv4_key, Network6Info, NetworkInfo, NET_F_INTERNAL, NET_F_MASQUERADE, NET_F_NO_ICC};
use thiserror::Error;

use crate::state::NetworkSpec;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortRangeError {
    #[error("invalid port range {0:?}: expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")]
    Invalid(String),
    #[error("SNAT port range {low}-{high} overlaps the node's ephemeral ports {eph_low}-{eph_high} (net.ipv4.ip_local_port_range): the node's own connections could collide with translated ones")]
    Overlap { low: u16, high: u16, eph_low: u16, eph_high: u16 },
    #[error("no room for SNAT ports outside the node's ephemeral range {0}-{1}")]
    NoRoom(u16, u16),
}

pub fn parse_range(s: &str) -> Result<(u16, u16), PortRangeError> {
    let bad = || PortRangeError::Invalid(s.to_string());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a < 1024 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Parses `net.ipv4.ip_local_port_range` ("32768\t60999").
pub fn parse_ephemeral(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// The SNAT port range: the requested one (checked against the ephemeral
/// range), or the largest stretch of 1024..=65535 outside it.
pub fn choose_range(requested: Option<(u16, u16)>, ephemeral: (u16, u16)) -> Result<(u16, u16), PortRangeError> {
    let (el, eh) = ephemeral;
    if let Some((l, h)) = requested {
        if l <= eh && el <= h {
            return Err(PortRangeError::Overlap { low: l, high: h, eph_low: el, eph_high: eh });
        }
        return Ok((l, h));
    }
    let below = (el > 1024).then(|| (1024u16, el - 1));
    let above = (eh < 65535).then(|| (eh + 1, 65535u16));
    let size = |r: Option<(u16, u16)>| r.map_or(0, |(l, h)| u32::from(h) - u32::from(l) + 1);
    // The larger stretch: ports are what limits new connections per second
    // to one destination (a port stays taken while its flow closes).
    match (below, above) {
        (Some(b), Some(a)) => Ok(if size(Some(b)) >= size(Some(a)) { b } else { a }),
        (Some(b), None) => Ok(b),
        (None, Some(a)) => Ok(a),
        (None, None) => Err(PortRangeError::NoRoom(el, eh)),
    }
}

/// The policy bits of a network (`NET_F_INTERNAL`, `NET_F_NO_ICC`), the
/// same for both families.
fn policy_flags(net: &NetworkSpec) -> u32 {
    let mut flags = 0;
    if net.options.internal {
        flags |= NET_F_INTERNAL;
    }
    if !net.options.icc {
        flags |= NET_F_NO_ICC;
    }
    flags
}

/// The datapath's view of a network.
pub fn network_info(net: &NetworkSpec, masq: Option<(Ipv4Addr, u32)>, ports: (u16, u16)) -> NetworkInfo {
    let mut flags = policy_flags(net);
    let (masq_addr, uplink_ifindex) = match masq {
        Some((ip, ifindex)) if net.options.masquerade && !net.options.internal => {
            flags |= NET_F_MASQUERADE;
            (ipv4_key(ip.octets()), ifindex)
        }
        _ => (0, 0),
    };
    NetworkInfo {
        subnet: ipv4_key(net.subnet.network().octets()),
        mask: ipv4_key(net.subnet.netmask().octets()),
        gateway: ipv4_key(net.gateway.octets()),
        masq_addr,
        uplink_ifindex,
        flags,
        nat_port_min: ports.0,
        nat_port_max: ports.1,
    }
}

/// The datapath's view of the IPv6 half of a dual-stack network (`None`:
/// IPv4 only): its subnet, gateway, policy, and the masquerade address
/// `masq` (the uplink's first global IPv6 address and ifindex) when the
/// network masquerades.
pub fn network6_info(net: &NetworkSpec, masq: Option<(Ipv6Addr, u32)>) -> Option<Network6Info> {
    let v6 = net.ipv6?;
    let mut flags = policy_flags(net);
    let (masq_addr, uplink_ifindex) = match masq {
        Some((ip, ifindex)) if net.options.masquerade && !net.options.internal => {
            flags |= NET_F_MASQUERADE;
            (ip.octets(), ifindex)
        }
        _ => ([0; 16], 0),
    };
    Some(Network6Info {
        subnet: v6.subnet.network().octets(),
        gateway: v6.gateway.octets(),
        masq_addr,
        prefix_len: u32::from(v6.subnet.prefix_len()),
        uplink_ifindex,
        flags,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DatapathKind, NetworkOptions};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("61000-65535"), Ok((61000, 65535)));
        assert!(parse_range("100-200").is_err());
        assert!(parse_range("5000-4000").is_err());
        assert!(parse_range("x").is_err());
        assert_eq!(parse_ephemeral("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(choose_range(None, (32768, 60999)), Ok((1024, 32767)));
        assert_eq!(choose_range(None, (1024, 30000)), Ok((30001, 65535)));
        assert_eq!(choose_range(None, (40000, 65535)), Ok((1024, 39999)));
        assert!(matches!(choose_range(Some((50000, 62000)), (32768, 60999)), Err(PortRangeError::Overlap { .. })));
        assert_eq!(choose_range(Some((20000, 30000)), (32768, 60999)), Ok((20000, 30000)));
        assert_eq!(choose_range(None, (1024, 65535)), Err(PortRangeError::NoRoom(1024, 65535)));
    }

    #[test]
    fn info_flags() {
        let subnet: ipnet::Ipv4Net = "10.20.0.0/24".parse().unwrap();
        let mut n = NetworkSpec {
            name: "n".into(),
            id: "1".into(),
            num_id: 3,
            subnet,
            gateway: "10.20.0.1".parse().unwrap(),
            bridge: "b".into(),
            datapath: DatapathKind::Ebpf,
            options: NetworkOptions::default(),
            created: String::new(),
            owner: None,
            ipv6: None,
        };
        let up = Some((Ipv4Addr::new(203, 0, 113, 2), 7));
        let i = network_info(&n, up, (61000, 65535));
        assert_eq!(i.flags, NET_F_MASQUERADE);
        assert_eq!(i.masq_addr.to_ne_bytes(), [203, 0, 113, 2]);
        assert_eq!(i.mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(i.uplink_ifindex, 7);
        assert_eq!(network_info(&n, None, (1, 2)).flags, 0, "no uplink address: nothing to masquerade to");
        n.options = NetworkOptions { internal: true, masquerade: false, icc: false, ..Default::default() };
        let i = network_info(&n, up, (61000, 65535));
        assert_eq!(i.flags, NET_F_INTERNAL | NET_F_NO_ICC);
        assert_eq!(i.masq_addr, 0);
        assert_eq!(network6_info(&n, None), None, "an IPv4-only network has no IPv6 half");
        // Dual stack: the v6 half carries its subnet and the same policy.
        n.ipv6 = Some(crate::state::Ipv6Config {
            subnet: "fd00:20::/64".parse().unwrap(),
            gateway: "fd00:20::1".parse().unwrap(),
        });
        let up6 = Some(("2001:db8:203::2".parse::<Ipv6Addr>().unwrap(), 7));
        let i6 = network6_info(&n, up6).unwrap();
        assert_eq!(i6.flags, NET_F_INTERNAL | NET_F_NO_ICC, "internal: nothing masqueraded");
        assert_eq!((i6.masq_addr, i6.uplink_ifindex), ([0; 16], 0));
        n.options = NetworkOptions::default();
        let i6 = network6_info(&n, up6).unwrap();
        assert_eq!(i6.flags, NET_F_MASQUERADE);
        assert_eq!(Ipv6Addr::from(i6.masq_addr), "2001:db8:203::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(Ipv6Addr::from(i6.subnet), "fd00:20::".parse::<Ipv6Addr>().unwrap());
        assert_eq!((i6.prefix_len, i6.uplink_ifindex), (64, 7));
        assert_eq!(network6_info(&n, None).unwrap().flags, 0, "no global IPv6 on the uplink: the kernel's");
    }
}
