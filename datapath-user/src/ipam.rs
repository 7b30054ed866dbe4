//! Address management: subnet/gateway validation and lowest-free allocation
//! (IPv4 here, IPv6 in [`v6`]).
//!
//! Pure functions over the set of addresses in use, so the allocator state is
//! derived from the endpoints themselves and can never drift from them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use thiserror::Error;

pub mod v6;

/// Smallest usable network: gateway plus at least one endpoint.
pub const MAX_PREFIX_LEN: u8 = 30;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.20.0.0/24")]
    InvalidSubnet(String),
    #[error("invalid subnet {given}: host bits are set, did you mean {suggested}?")]
    HostBitsSet { given: String, suggested: Ipv4Net },
    #[error("subnet {0} is too small: the prefix length must be at most /{MAX_PREFIX_LEN}")]
    SubnetTooSmall(Ipv4Net),
    #[error("invalid IPv4 address {0:?}")]
    InvalidAddress(String),
    #[error("gateway {gateway} is not a usable address of subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is not a usable address of subnet {subnet}")]
    AddressOutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {0} is the network's gateway")]
    AddressIsGateway(Ipv4Addr),
    #[error("address {0} is already in use")]
    AddressInUse(Ipv4Addr),
    #[error("subnet {0} has no free address left")]
    Exhausted(Ipv4Net),
    #[error("subnet {subnet} overlaps {range}, which is reserved ({what}): pick a private range such as 10.20.0.0/24")]
    Reserved { subnet: Ipv4Net, range: Ipv4Net, what: &'static str },
}

/// Ranges no network may use: they are not unicast addresses a container
/// can own (RFC 6890).
const RESERVED: [([u8; 4], u8, &str); 5] = [
    ([0, 0, 0, 0], 8, "\"this network\""),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "class E and broadcast"),
];

/// Refuses a subnet that overlaps a reserved range.
fn check_reserved(net: Ipv4Net) -> Result<(), IpamError> {
    for (addr, len, what) in RESERVED {
        let range = Ipv4Net::new(Ipv4Addr::from(addr), len).expect("valid constant prefix");
        if range.contains(&net.network()) || net.contains(&range.network()) {
            return Err(IpamError::Reserved { subnet: net, range, what });
        }
    }
    Ok(())
}

/// Parses a subnet in CIDR notation, refusing host bits and tiny networks.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| IpamError::InvalidSubnet(s.to_string()))?;
    if net.trunc() != net {
        return Err(IpamError::HostBitsSet { given: s.to_string(), suggested: net.trunc() });
    }
    if net.prefix_len() > MAX_PREFIX_LEN {
        return Err(IpamError::SubnetTooSmall(net));
    }
    check_reserved(net)?;
    Ok(net)
}

pub fn parse_addr(s: &str) -> Result<Ipv4Addr, IpamError> {
    s.trim().parse().map_err(|_| IpamError::InvalidAddress(s.to_string()))
}

/// Whether `ip` is a host address of `net` (not its network or broadcast address).
pub fn is_usable(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

/// The gateway to use: the given one (validated) or the first host address.
pub fn gateway_for(net: &Ipv4Net, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
    match requested {
        Some(gw) if is_usable(net, gw) => Ok(gw),
        Some(gw) => Err(IpamError::GatewayOutsideSubnet { gateway: gw, subnet: *net }),
        None => net.hosts().next().ok_or(IpamError::SubnetTooSmall(*net)),
    }
}

/// Checks a requested address, or picks the lowest free one.
pub fn assign(
    net: &Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    match requested {
        Some(ip) => {
            if !is_usable(net, ip) {
                Err(IpamError::AddressOutsideSubnet { ip, subnet: *net })
            } else if ip == gateway {
                Err(IpamError::AddressIsGateway(ip))
            } else if used.contains(&ip) {
                Err(IpamError::AddressInUse(ip))
            } else {
                Ok(ip)
            }
        }
        None => net.hosts().find(|ip| *ip != gateway && !used.contains(ip)).ok_or(IpamError::Exhausted(*net)),
    }
}

/// A locally administered MAC derived from the address (unique per node
/// because addresses are), in the way Docker derives its container MACs.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0xd4, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ranges_are_refused() {
        for bad in [
            "127.0.0.0/8",
            "127.1.0.0/16",
            "240.0.0.0/8",
            "169.254.0.0/16",
            "0.0.0.0/8",
            "224.0.0.0/16",
            "0.0.0.0/0",
            "128.0.0.0/1",
        ] {
            assert!(matches!(parse_subnet(bad), Err(IpamError::Reserved { .. })), "{bad}");
        }
        let e = parse_subnet("224.0.0.0/16").unwrap_err().to_string();
        assert!(e.contains("multicast"), "{e}");
        for good in ["10.0.0.0/8", "172.16.0.0/12", "192.168.1.0/24", "100.64.0.0/10", "203.0.113.0/24"] {
            assert!(parse_subnet(good).is_ok(), "{good}");
        }
    }

    fn net(s: &str) -> Ipv4Net {
        parse_subnet(s).unwrap()
    }

    #[test]
    fn parses_and_rejects_subnets() {
        assert_eq!(net("10.10.0.0/16").prefix_len(), 16);
        assert!(matches!(parse_subnet("10.10.0.0"), Err(IpamError::InvalidSubnet(_))));
        assert!(matches!(parse_subnet("banana"), Err(IpamError::InvalidSubnet(_))));
        assert!(matches!(parse_subnet("10.10.0.0/33"), Err(IpamError::InvalidSubnet(_))));
        assert!(matches!(parse_subnet("10.10.0.1/24"), Err(IpamError::HostBitsSet { .. })));
        assert!(matches!(parse_subnet("10.10.0.0/31"), Err(IpamError::SubnetTooSmall(_))));
        assert!(parse_subnet("fd00::/64").is_err());
    }

    #[test]
    fn gateway_defaults_to_first_host_and_is_validated() {
        let n = net("10.20.0.0/24");
        assert_eq!(gateway_for(&n, None).unwrap(), Ipv4Addr::new(10, 20, 0, 1));
        assert_eq!(gateway_for(&n, Some(Ipv4Addr::new(10, 20, 0, 254))).unwrap(), Ipv4Addr::new(10, 20, 0, 254));
        for bad in [[10, 20, 0, 0], [10, 20, 0, 255], [10, 21, 0, 1]] {
            assert!(matches!(gateway_for(&n, Some(Ipv4Addr::from(bad))), Err(IpamError::GatewayOutsideSubnet { .. })));
        }
    }

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let n = net("10.20.0.0/29"); // hosts .1-.6
        let gw = Ipv4Addr::new(10, 20, 0, 1);
        let mut used = BTreeSet::new();
        let mut got = vec![];
        for _ in 0..5 {
            let ip = assign(&n, gw, &used, None).unwrap();
            used.insert(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert_eq!(assign(&n, gw, &used, None), Err(IpamError::Exhausted(n)));
        used.remove(&Ipv4Addr::new(10, 20, 0, 4));
        assert_eq!(assign(&n, gw, &used, None).unwrap(), Ipv4Addr::new(10, 20, 0, 4));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let n = net("10.20.0.0/24");
        let gw = Ipv4Addr::new(10, 20, 0, 1);
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 20, 0, 7)].into();
        assert_eq!(assign(&n, gw, &used, Some(Ipv4Addr::new(10, 20, 0, 9))).unwrap(), Ipv4Addr::new(10, 20, 0, 9));
        assert_eq!(
            assign(&n, gw, &used, Some(Ipv4Addr::new(10, 20, 0, 7))),
            Err(IpamError::AddressInUse(Ipv4Addr::new(10, 20, 0, 7)))
        );
        assert_eq!(assign(&n, gw, &used, Some(gw)), Err(IpamError::AddressIsGateway(gw)));
        for bad in [[10, 20, 1, 5], [10, 20, 0, 0], [10, 20, 0, 255]] {
            assert!(matches!(
                assign(&n, gw, &used, Some(Ipv4Addr::from(bad))),
                Err(IpamError::AddressOutsideSubnet { .. })
            ));
        }
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let a = mac_for(Ipv4Addr::new(10, 10, 0, 2));
        let b = mac_for(Ipv4Addr::new(10, 10, 0, 3));
        assert_ne!(a, b);
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_eq!(format_mac(&a), "02:d4:0a:0a:00:02");
    }
}
