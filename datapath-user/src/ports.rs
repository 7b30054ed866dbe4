//! Published ports, the userspace concept: what `-p/--publish
//! [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]` means ([`Publish`],
//! [`parse`]), how `ps`, `endpoint ls` and `port` show it ([`format`]),
//! when two publications collide ([`Publish::conflicts`]) and which
//! sockets of the node a publication would shadow ([`listening`]).
//!
//! The agent's side (validation, the `PORTS` map, the netfilter rules) is
//! in `agent/ports.rs`, `datapath/ports.rs` and `host/netfilter.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use datapath_common::{IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most ports one `-p` range may publish.
pub const MAX_RANGE: usize = 4096;

/// TCP or UDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port (a range is one `Publish` per port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Publish {
    /// The node address it is published on; `None`: every address of the
    /// node (Docker's `0.0.0.0`), IPv4 and, for an endpoint with an IPv6
    /// address, IPv6. An IPv4 address publishes on IPv4 only, an IPv6 one
    /// on IPv6 only (as Docker).
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub proto: Proto,
}

impl Publish {
    /// Whether both cannot be published at once: same protocol and host
    /// port, and addresses that overlap (one of them every address, or the
    /// same).
    pub fn conflicts(&self, other: &Publish) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// Only the node's own processes can reach it.
    pub fn is_loopback(&self) -> bool {
        self.host_ip.is_some_and(|a| a.is_loopback())
    }

    /// Whether it is published on the node's IPv4 addresses (all of them,
    /// or one).
    pub fn on_v4(&self) -> bool {
        !matches!(self.host_ip, Some(IpAddr::V6(_)))
    }

    /// Whether it is published on the node's IPv6 addresses (all of them,
    /// or one), for an endpoint that has an IPv6 address.
    pub fn on_v6(&self) -> bool {
        !matches!(self.host_ip, Some(IpAddr::V4(_)))
    }

    /// `0.0.0.0:8080`, `[fd00::1]:8080`.
    pub fn host(&self) -> String {
        format!("{}:{}", host_addr(self.host_ip), self.host_port)
    }
}

impl fmt::Display for Publish {
    /// Docker's form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}/{}", self.host(), self.container_port, self.proto)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("invalid --publish {0:?}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]")]
    Syntax(String),
    #[error("invalid --publish {spec:?}: {why}")]
    Invalid { spec: String, why: String },
}

fn invalid(spec: &str, why: impl Into<String>) -> PublishError {
    PublishError::Invalid { spec: spec.to_string(), why: why.into() }
}

/// `N` or `N-M` (ports 1-65535), inclusive.
fn port_range(spec: &str, s: &str) -> Result<(u16, u16), PublishError> {
    let port = |p: &str| -> Result<u16, PublishError> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid(spec, format!("{p:?} is not a port (1-65535)"))),
            Ok(n) => Ok(n),
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(s)?, port(s)?),
    };
    if hi < lo {
        return Err(invalid(spec, format!("the range {s} ends before it starts")));
    }
    Ok((lo, hi))
}

/// Parses one `-p` argument into the ports it publishes (a range gives
/// one per port, host and container ranges of the same length).
pub fn parse(spec: &str) -> Result<Vec<Publish>, PublishError> {
    let (body, proto) = match spec.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp),
        Some((b, "udp")) => (b, Proto::Udp),
        Some((_, p)) => return Err(invalid(spec, format!("unknown protocol {p:?} (tcp or udp)"))),
        None => (spec, Proto::Tcp),
    };
    // `[IPV6]:HOST:CONTAINER` (Docker's form for an IPv6 host address).
    let (ip6, body) = match body.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((a, rest)) => (Some(a), rest),
            None => return Err(PublishError::Syntax(spec.to_string())),
        },
        None => (None, body),
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (ip, host, ctr) = match parts[..] {
        [host, ctr] if ip6.is_some() => (ip6, host, ctr),
        _ if ip6.is_some() => return Err(PublishError::Syntax(spec.to_string())),
        [host, ctr] => (None, host, ctr),
        [ip, host, ctr] => (Some(ip), host, ctr),
        [_] => return Err(invalid(spec, "a host port is required (HOST_PORT:CONTAINER_PORT)")),
        _ => return Err(PublishError::Syntax(spec.to_string())),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(a) if ip6.is_some() => {
            let a: std::net::Ipv6Addr =
                a.parse().map_err(|_| invalid(spec, format!("{a:?} is not an IPv6 address")))?;
            if a.is_unspecified() {
                None
            } else if a.is_multicast() {
                return Err(invalid(spec, format!("{a} is not a unicast address")));
            } else if a.is_loopback() {
                // No route_localnet for IPv6: ::1 cannot be translated to an
                // endpoint (Docker's userland proxy does that; there is none).
                return Err(invalid(spec, "::1 cannot be published on (use 127.0.0.1)"));
            } else {
                Some(IpAddr::V6(a))
            }
        }
        Some(a) => {
            let a: Ipv4Addr = a.parse().map_err(|_| invalid(spec, format!("{a:?} is not an IPv4 address")))?;
            if a.is_unspecified() {
                None
            } else if a.is_multicast() || a.is_broadcast() {
                return Err(invalid(spec, format!("{a} is not a unicast address")));
            } else {
                Some(IpAddr::V4(a))
            }
        }
    };
    if host.is_empty() {
        return Err(invalid(spec, "a host port is required (HOST_PORT:CONTAINER_PORT)"));
    }
    let (h0, h1) = port_range(spec, host)?;
    let (c0, c1) = port_range(spec, ctr)?;
    if h1 - h0 != c1 - c0 {
        return Err(invalid(spec, "the host and container ranges differ in length"));
    }
    if usize::from(h1 - h0) >= MAX_RANGE {
        return Err(invalid(spec, format!("a range publishes at most {MAX_RANGE} ports")));
    }
    Ok((0..=h1 - h0).map(|i| Publish { host_ip, host_port: h0 + i, container_port: c0 + i, proto }).collect())
}

/// Parses every `-p` argument; the same publication twice is one, two that
/// conflict are an error.
pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Publish>, PublishError> {
    let mut out: Vec<Publish> = Vec::new();
    for spec in specs {
        for p in parse(spec.as_ref())? {
            if out.contains(&p) {
                continue;
            }
            if let Some(o) = out.iter().find(|o| o.conflicts(&p)) {
                return Err(invalid(spec.as_ref(), format!("{} conflicts with {o}", p.host())));
            }
            out.push(p);
        }
    }
    Ok(out)
}

/// Docker's `PORTS` column: `0.0.0.0:8080->80/tcp, 0.0.0.0:8000-8002->8000-8002/udp`
/// (consecutive ports of the same address and protocol, mapped with the
/// same offset, shown as one range).
pub fn format(ports: &[Publish]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_by_key(|p| (p.proto, p.host_ip, p.host_port));
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let first = sorted[i];
        let mut j = i;
        while j + 1 < sorted.len() {
            let (a, b) = (sorted[j], sorted[j + 1]);
            let next = a.proto == b.proto
                && a.host_ip == b.host_ip
                && b.host_port == a.host_port.wrapping_add(1)
                && b.container_port == a.container_port.wrapping_add(1);
            if !next {
                break;
            }
            j += 1;
        }
        let last = sorted[j];
        if i == j {
            out.push(first.to_string());
        } else {
            out.push(format!(
                "{}:{}-{}->{}-{}/{}",
                host_addr(first.host_ip),
                first.host_port,
                last.host_port,
                first.container_port,
                last.container_port,
                first.proto
            ));
        }
        i = j + 1;
    }
    out.join(", ")
}

/// A publication's host address as Docker shows it: `0.0.0.0` for every
/// address, `[fd00::1]` for an IPv6 one.
fn host_addr(ip: Option<IpAddr>) -> String {
    match ip {
        None => Ipv4Addr::UNSPECIFIED.to_string(),
        Some(IpAddr::V4(a)) => a.to_string(),
        Some(IpAddr::V6(a)) => format!("[{a}]"),
    }
}

/// A socket of the node bound to a port a publication would take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

/// The address of a `/proc/net/{tcp,udp}{,6}` line: the kernel's 32-bit
/// words printed in hex, each in host order (one word for IPv4, four for
/// IPv6). An IPv4-mapped IPv6 address is the IPv4 one.
fn proc_addr(hex: &str) -> Option<IpAddr> {
    let word = |w: &str| u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            let a = std::net::Ipv6Addr::from(octets);
            Some(a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)))
        }
        _ => None,
    }
}

/// The listening TCP sockets (state LISTEN) or bound UDP sockets of a
/// `/proc/net/{tcp,udp}` or `/proc/net/{tcp6,udp6}` table.
pub fn listening(proto: Proto, table: &str) -> Vec<Listener> {
    const TCP_LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let listening = match proto {
                Proto::Tcp => *state == TCP_LISTEN,
                // An unconnected UDP socket has no remote address.
                Proto::Udp => remote.split_once(':').is_some_and(|(a, _)| a.bytes().all(|b| b == b'0')),
            };
            if !listening {
                return None;
            }
            let (a, p) = local.split_once(':')?;
            let addr = proc_addr(a)?;
            let port = u16::from_str_radix(p, 16).ok()?;
            Some(Listener { proto, addr, port })
        })
        .collect()
}

/// The node's sockets that `p` would shadow (`sockets`: the listeners of
/// its protocol). A socket on `::` takes IPv4 too (unless it is
/// IPV6_V6ONLY, which /proc does not tell): it counts for both families.
pub fn shadowed<'a>(p: &Publish, sockets: &'a [Listener]) -> Option<&'a Listener> {
    sockets.iter().find(|s| {
        let family = match s.addr {
            IpAddr::V4(_) => p.on_v4(),
            IpAddr::V6(a) if a.is_unspecified() => true,
            IpAddr::V6(_) => p.on_v6(),
        };
        let addr = match (p.host_ip, s.addr) {
            (None, _) => true,
            (_, a) if a.is_unspecified() => true,
            (Some(h), a) => h == a,
        };
        s.proto == p.proto && s.port == p.host_port && family && addr
    })
}

/// Where a host port is chosen for a publication that leaves it to the
/// datapath (`host_port` 0, Docker's `-p 80` and `-P`): Docker's own
/// default range for them.
pub const CHOSEN_PORTS: std::ops::RangeInclusive<u16> = 49153..=65535;

/// The first port of [`CHOSEN_PORTS`] `p` may take: in conflict with none
/// of `taken` and shadowing none of `sockets`.
pub fn choose_host_port(p: &Publish, taken: &[Publish], sockets: &[Listener]) -> Option<u16> {
    CHOSEN_PORTS.into_iter().find(|&port| {
        let q = Publish { host_port: port, ..*p };
        !taken.iter().any(|t| t.conflicts(&q)) && shadowed(&q, sockets).is_none()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_chosen() {
        let want = Publish { host_ip: None, host_port: 0, container_port: 80, proto: Proto::Tcp };
        assert_eq!(choose_host_port(&want, &[], &[]), Some(49153));
        let taken = [Publish { host_port: 49153, ..want }, Publish { host_port: 49155, ..want }];
        let sockets = [Listener { proto: Proto::Tcp, addr: Ipv4Addr::UNSPECIFIED.into(), port: 49154 }];
        assert_eq!(choose_host_port(&want, &taken, &sockets), Some(49156));
        let udp = Publish { proto: Proto::Udp, ..want };
        assert_eq!(choose_host_port(&udp, &taken, &sockets), Some(49153));
    }

    fn p(ip: Option<[u8; 4]>, h: u16, c: u16, proto: Proto) -> Publish {
        Publish { host_ip: ip.map(|a| IpAddr::V4(Ipv4Addr::from(a))), host_port: h, container_port: c, proto }
    }

    #[test]
    fn parses_docker_forms() {
        assert_eq!(parse("8080:80").unwrap(), vec![p(None, 8080, 80, Proto::Tcp)]);
        assert_eq!(parse("8080:80/udp").unwrap(), vec![p(None, 8080, 80, Proto::Udp)]);
        assert_eq!(parse("127.0.0.1:8080:80/tcp").unwrap(), vec![p(Some([127, 0, 0, 1]), 8080, 80, Proto::Tcp)]);
        assert_eq!(parse("0.0.0.0:8080:80").unwrap(), vec![p(None, 8080, 80, Proto::Tcp)]);
        assert_eq!(parse(":8080:80").unwrap(), vec![p(None, 8080, 80, Proto::Tcp)]);
        let r = parse("8000-8002:9000-9002/udp").unwrap();
        assert_eq!(
            r,
            vec![p(None, 8000, 9000, Proto::Udp), p(None, 8001, 9001, Proto::Udp), p(None, 8002, 9002, Proto::Udp)]
        );
        assert_eq!(parse("10.0.0.1:53:53/udp").unwrap()[0].host_ip, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
    }

    #[test]
    fn ipv6_host_addresses_in_brackets() {
        let v6 = parse("[fd00::1]:8080:80/udp").unwrap();
        assert_eq!(v6[0].host_ip, Some("fd00::1".parse().unwrap()));
        assert_eq!((v6[0].host_port, v6[0].container_port, v6[0].proto), (8080, 80, Proto::Udp));
        assert!(v6[0].on_v6() && !v6[0].on_v4(), "an IPv6 address binds IPv6 only");
        assert_eq!(v6[0].to_string(), "[fd00::1]:8080->80/udp");
        assert_eq!(parse("[::]:8080:80").unwrap(), vec![p(None, 8080, 80, Proto::Tcp)]);
        let v4 = p(Some([10, 0, 0, 1]), 8080, 80, Proto::Tcp);
        assert!(v4.on_v4() && !v4.on_v6(), "an IPv4 address binds IPv4 only");
        let all = p(None, 8080, 80, Proto::Tcp);
        assert!(all.on_v4() && all.on_v6());
        assert!(!v4.conflicts(&parse("[fd00::1]:8080:80").unwrap()[0]), "different families");
        assert!(all.conflicts(&parse("[fd00::1]:8080:80").unwrap()[0]));
        for bad in [
            "[fd00::1]:80",
            "[fd00::1:8080:80",
            "[10.0.0.1]:8080:80",
            "[::1]:8080:80",
            "[ff02::1]:8080:80",
            "[fd00::1]:1:8080:80",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(format(&parse("[fd00::1]:8000-8001:80-81").unwrap()), "[fd00::1]:8000-8001->80-81/tcp");
        // The state keeps the plain address form: an IPv4 one as before.
        assert_eq!(
            serde_json::to_string(&v4).unwrap(),
            r#"{"host_ip":"10.0.0.1","host_port":8080,"container_port":80,"proto":"tcp"}"#
        );
    }

    #[test]
    fn refuses_what_docker_refuses_and_more() {
        for bad in [
            "80",
            ":80",
            "a:b",
            "8080:0",
            "0:80",
            "70000:80",
            "8080:80/sctp",
            "1.2.3:8080:80",
            "224.0.0.1:8080:80",
            "8000-8010:8000-8005",
            "8010-8000:8010-8000",
            "1:2:3:4",
            "1-5000:1-5000",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse("80").unwrap_err().to_string().contains("host port is required"));
    }

    #[test]
    fn parse_all_merges_duplicates_and_refuses_conflicts() {
        assert_eq!(parse_all(&["8080:80", "8080:80"]).unwrap().len(), 1);
        assert!(parse_all(&["8080:80", "8080:81"]).is_err());
        assert!(parse_all(&["8080:80", "127.0.0.1:8080:81"]).is_err(), "any vs one address");
        assert_eq!(parse_all(&["8080:80", "8080:80/udp"]).unwrap().len(), 2);
        assert_eq!(parse_all(&["127.0.0.1:8080:80", "10.0.0.1:8080:80"]).unwrap().len(), 2);
    }

    #[test]
    fn formats_like_docker_ps() {
        let mut v = parse("8000-8002:8000-8002/udp").unwrap();
        v.extend(parse("127.0.0.1:8080:80").unwrap());
        v.extend(parse("9000:90").unwrap());
        assert_eq!(format(&v), "0.0.0.0:9000->90/tcp, 127.0.0.1:8080->80/tcp, 0.0.0.0:8000-8002->8000-8002/udp");
        assert_eq!(format(&[]), "");
        assert_eq!(p(None, 8080, 80, Proto::Tcp).to_string(), "0.0.0.0:8080->80/tcp");
    }

    #[test]
    fn finds_listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n\
   2: 0100007F:1F92 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3\n";
        let l = listening(Proto::Tcp, tcp);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0], Listener { proto: Proto::Tcp, addr: Ipv4Addr::UNSPECIFIED.into(), port: 8080 });
        assert_eq!(l[1].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(shadowed(&p(None, 8080, 80, Proto::Tcp), &l).is_some());
        assert!(shadowed(&p(Some([10, 0, 0, 1]), 8080, 80, Proto::Tcp), &l).is_some(), "0.0.0.0 covers it");
        assert!(shadowed(&p(None, 8081, 80, Proto::Tcp), &l).is_some(), "any covers 127.0.0.1");
        assert!(shadowed(&p(Some([10, 0, 0, 1]), 8081, 80, Proto::Tcp), &l).is_none());
        assert!(shadowed(&p(None, 8082, 80, Proto::Tcp), &l).is_none(), "a connected socket does not listen");
        assert!(shadowed(&p(None, 8080, 80, Proto::Udp), &l).is_none());
    }

    #[test]
    fn finds_ipv6_listening_sockets() {
        // [::]:8080 listening, [fd00::1]:8081 listening (the kernel's words
        // in host order), ::ffff:127.0.0.1:8082, and a connected socket.
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n\
   1: 000000FD000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 0\n\
   2: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A 0\n\
   3: 000000FD000000000000000001000000:1F93 000000FD000000000000000002000000:9C40 01 0\n";
        let l = listening(Proto::Tcp, tcp6);
        let addrs: Vec<String> = l.iter().map(|l| l.to_string()).collect();
        assert_eq!(addrs, ["[::]:8080/tcp", "[fd00::1]:8081/tcp", "127.0.0.1:8082/tcp"]);
        let v6 = |s: &str| parse(s).unwrap()[0];
        assert!(shadowed(&p(None, 8080, 80, Proto::Tcp), &l).is_some(), ":: covers both families");
        assert!(shadowed(&p(Some([10, 0, 0, 1]), 8080, 80, Proto::Tcp), &l).is_some());
        assert!(shadowed(&p(None, 8081, 80, Proto::Tcp), &l).is_some());
        assert!(shadowed(&v6("[fd00::1]:8081:80"), &l).is_some());
        assert!(shadowed(&v6("[fd00::2]:8081:80"), &l).is_none(), "another address");
        assert!(shadowed(&p(Some([10, 0, 0, 1]), 8081, 80, Proto::Tcp), &l).is_none(), "an IPv4 publication");
        assert!(shadowed(&p(Some([127, 0, 0, 1]), 8082, 80, Proto::Tcp), &l).is_some(), "IPv4-mapped");
        assert!(shadowed(&p(None, 8083, 80, Proto::Tcp), &l).is_none(), "a connected socket does not listen");
        let udp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 0\n";
        assert!(shadowed(&p(None, 5353, 53, Proto::Udp), &listening(Proto::Udp, udp6)).is_some());
    }
}
