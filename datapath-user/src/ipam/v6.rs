//! IPv6 address management for dual-stack networks: subnet and gateway
//! validation, a random unique-local /64 when none is given (RFC 4193, as
//! Docker and podman choose one), and lowest-free allocation.
//!
//! Pure functions over the set of addresses in use, like the IPv4 half.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use thiserror::Error;

/// Smallest usable network: the subnet-router anycast, the gateway and at
/// least a few endpoints.
pub const MAX_PREFIX_LEN: u8 = 120;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Ipam6Error {
    #[error("invalid IPv6 subnet {0:?}: expected an IPv6 CIDR such as fd00:1:2:3::/64")]
    InvalidSubnet(String),
    #[error("invalid IPv6 subnet {given}: host bits are set, did you mean {suggested}?")]
    HostBitsSet { given: String, suggested: Ipv6Net },
    #[error("IPv6 subnet {0} is too small: the prefix length must be at most /{MAX_PREFIX_LEN}")]
    SubnetTooSmall(Ipv6Net),
    #[error("invalid IPv6 address {0:?}")]
    InvalidAddress(String),
    #[error("IPv6 gateway {gateway} is not a usable address of subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv6Addr, subnet: Ipv6Net },
    #[error("IPv6 address {ip} is not a usable address of subnet {subnet}")]
    AddressOutsideSubnet { ip: Ipv6Addr, subnet: Ipv6Net },
    #[error("IPv6 address {0} is the subnet-router anycast address of its subnet")]
    AddressIsAnycast(Ipv6Addr),
    #[error("IPv6 address {0} is the network's gateway")]
    AddressIsGateway(Ipv6Addr),
    #[error("IPv6 address {0} is already in use")]
    AddressInUse(Ipv6Addr),
    #[error("IPv6 subnet {0} has no free address left")]
    Exhausted(Ipv6Net),
    #[error("IPv6 subnet {subnet} overlaps {range}, which is reserved ({what}): pick a unique-local range such as fd00:1:2:3::/64")]
    Reserved { subnet: Ipv6Net, range: Ipv6Net, what: &'static str },
}

/// Ranges no network may use (RFC 6890): not unicast addresses a container
/// can own, or IPv4 in disguise.
const RESERVED: [(u128, u8, &str); 3] = [
    (0, 8, "unspecified, loopback, IPv4-mapped and -compatible"),
    (0xfe80 << 112, 10, "link-local"),
    (0xff00 << 112, 8, "multicast"),
];

fn check_reserved(net: Ipv6Net) -> Result<(), Ipam6Error> {
    for (addr, len, what) in RESERVED {
        let range = Ipv6Net::new(Ipv6Addr::from(addr), len).expect("valid constant prefix");
        if range.contains(&net.network()) || net.contains(&range.network()) {
            return Err(Ipam6Error::Reserved { subnet: net, range, what });
        }
    }
    Ok(())
}

/// Parses an IPv6 subnet in CIDR notation, refusing host bits, tiny
/// networks and reserved ranges.
pub fn parse_subnet(s: &str) -> Result<Ipv6Net, Ipam6Error> {
    let net: Ipv6Net = s.trim().parse().map_err(|_| Ipam6Error::InvalidSubnet(s.to_string()))?;
    if net.trunc() != net {
        return Err(Ipam6Error::HostBitsSet { given: s.to_string(), suggested: net.trunc() });
    }
    if net.prefix_len() > MAX_PREFIX_LEN {
        return Err(Ipam6Error::SubnetTooSmall(net));
    }
    check_reserved(net)?;
    Ok(net)
}

pub fn parse_addr(s: &str) -> Result<Ipv6Addr, Ipam6Error> {
    s.trim().parse().map_err(|_| Ipam6Error::InvalidAddress(s.to_string()))
}

/// A random unique-local /64 (RFC 4193: `fd` + a 40-bit random global id +
/// a 16-bit subnet id, here 0).
pub fn random_ula(rng: &mut impl rand::Rng) -> Ipv6Net {
    let global: u64 = rng.random::<u64>() & 0xff_ffff_ffff;
    let prefix = (0xfdu128 << 120) | (u128::from(global) << 80);
    Ipv6Net::new(Ipv6Addr::from(prefix), 64).expect("a /64 is valid")
}

/// Checks a requested address: in the subnet, not its subnet-router anycast
/// address (all host bits zero, RFC 4291 2.6.1).
fn check_in(net: &Ipv6Net, ip: Ipv6Addr) -> Result<(), Ipam6Error> {
    if !net.contains(&ip) {
        return Err(Ipam6Error::AddressOutsideSubnet { ip, subnet: *net });
    }
    if ip == net.network() {
        return Err(Ipam6Error::AddressIsAnycast(ip));
    }
    Ok(())
}

/// The gateway: the given one (validated) or the first address after the
/// subnet-router anycast (`::1` of the subnet, as Docker).
pub fn gateway_for(net: &Ipv6Net, requested: Option<Ipv6Addr>) -> Result<Ipv6Addr, Ipam6Error> {
    match requested {
        Some(gw) => match check_in(net, gw) {
            Ok(()) => Ok(gw),
            Err(_) => Err(Ipam6Error::GatewayOutsideSubnet { gateway: gw, subnet: *net }),
        },
        None => Ok(Ipv6Addr::from(u128::from(net.network()) + 1)),
    }
}

/// Checks a requested address, or picks the lowest free one.
pub fn assign(
    net: &Ipv6Net,
    gateway: Ipv6Addr,
    used: &BTreeSet<Ipv6Addr>,
    requested: Option<Ipv6Addr>,
) -> Result<Ipv6Addr, Ipam6Error> {
    if let Some(ip) = requested {
        check_in(net, ip)?;
        if ip == gateway {
            return Err(Ipam6Error::AddressIsGateway(ip));
        }
        if used.contains(&ip) {
            return Err(Ipam6Error::AddressInUse(ip));
        }
        return Ok(ip);
    }
    let first = u128::from(net.network()) + 1;
    let last = u128::from(net.broadcast());
    // At most used.len() + 2 candidates are looked at: the search is bounded
    // by the number of endpoints, not by the size of the subnet.
    (first..=last)
        .map(Ipv6Addr::from)
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or(Ipam6Error::Exhausted(*net))
}

/// Whether two IPv6 subnets share an address.
pub fn nets_overlap(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv6Net {
        parse_subnet(s).unwrap()
    }
    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects_subnets() {
        assert_eq!(net("fd00:1:2:3::/64").prefix_len(), 64);
        assert_eq!(net("2001:db8::/48").prefix_len(), 48);
        for bad in ["fd00::", "banana", "10.0.0.0/24", "fd00::/129", ""] {
            assert!(matches!(parse_subnet(bad), Err(Ipam6Error::InvalidSubnet(_))), "{bad}");
        }
        assert!(matches!(parse_subnet("fd00::1/64"), Err(Ipam6Error::HostBitsSet { .. })));
        assert!(matches!(parse_subnet("fd00::/124"), Err(Ipam6Error::SubnetTooSmall(_))));
        for bad in ["::/0", "::1/128", "::ffff:0:0/96", "fe80::/64", "ff02::/16", "::/8", "8000::/1"] {
            assert!(
                matches!(parse_subnet(bad), Err(Ipam6Error::Reserved { .. }) | Err(Ipam6Error::SubnetTooSmall(_))),
                "{bad}"
            );
        }
        let e = parse_subnet("fe80::/64").unwrap_err().to_string();
        assert!(e.contains("link-local"), "{e}");
    }

    #[test]
    fn random_ula_is_a_unique_local_64() {
        let mut rng = rand::rng();
        let x = random_ula(&mut rng);
        let y = random_ula(&mut rng);
        assert_eq!(x.prefix_len(), 64);
        assert_eq!(x.network().octets()[0], 0xfd);
        assert_eq!(&x.network().octets()[6..], &[0; 10], "subnet id 0, no host bits: {x}");
        assert!(parse_subnet(&x.to_string()).is_ok(), "{x}");
        assert_ne!(x, y, "40 random bits");
    }

    #[test]
    fn gateway_defaults_to_first_address_and_is_validated() {
        let n = net("fd00:1:2:3::/64");
        assert_eq!(gateway_for(&n, None).unwrap(), a("fd00:1:2:3::1"));
        assert_eq!(gateway_for(&n, Some(a("fd00:1:2:3::fe"))).unwrap(), a("fd00:1:2:3::fe"));
        for bad in ["fd00:1:2:3::", "fd00:1:2:4::1"] {
            assert!(matches!(gateway_for(&n, Some(a(bad))), Err(Ipam6Error::GatewayOutsideSubnet { .. })), "{bad}");
        }
        // The last address is usable (no broadcast in IPv6).
        assert!(gateway_for(&n, Some(a("fd00:1:2:3:ffff:ffff:ffff:ffff"))).is_ok());
    }

    #[test]
    fn allocates_lowest_free_reuses_released_and_checks_requests() {
        let n: Ipv6Net = "fd00::/125".parse().unwrap(); // ::1-::7 (below what parse_subnet takes)
        let gw = a("fd00::1");
        let mut used = BTreeSet::new();
        for want in ["fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6", "fd00::7"] {
            let ip = assign(&n, gw, &used, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ip, a(want));
            used.insert(ip);
        }
        assert_eq!(assign(&n, gw, &used, None), Err(Ipam6Error::Exhausted(n)));
        used.remove(&a("fd00::4"));
        assert_eq!(assign(&n, gw, &used, None), Ok(a("fd00::4")));
        assert_eq!(assign(&n, gw, &used, Some(a("fd00::4"))), Ok(a("fd00::4")));
        assert_eq!(assign(&n, gw, &used, Some(a("fd00::5"))), Err(Ipam6Error::AddressInUse(a("fd00::5"))));
        assert_eq!(assign(&n, gw, &used, Some(gw)), Err(Ipam6Error::AddressIsGateway(gw)));
        assert_eq!(assign(&n, gw, &used, Some(a("fd00::"))), Err(Ipam6Error::AddressIsAnycast(a("fd00::"))));
        assert!(matches!(assign(&n, gw, &used, Some(a("fd00::8"))), Err(Ipam6Error::AddressOutsideSubnet { .. })));
        // A large subnet allocates without walking it.
        let big = net("fd00:1::/64");
        assert_eq!(assign(&big, a("fd00:1::1"), &BTreeSet::new(), None), Ok(a("fd00:1::2")));
    }

    #[test]
    fn overlap() {
        assert!(nets_overlap(&net("fd00::/48"), &net("fd00:0:0:5::/64")));
        assert!(!nets_overlap(&net("fd00::/64"), &net("fd00:0:0:1::/64")));
    }
}
