//! The answer table: what the embedded DNS knows, derived from a state
//! snapshot (pure, no I/O).
//!
//! An asking endpoint sees the names and aliases of the endpoints that share
//! a user-defined network with it (its own name too), each with the address
//! on that shared network. Names are compared in lowercase, without the
//! trailing dot; `NAME.NETWORK` names one network explicitly (the form the
//! reverse answers use, as Docker's do).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::agent::{DEFAULT_NETWORK, NONE_NETWORK};
use crate::state::{EndpointSpec, Link, State};

/// Where an asker's other questions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The node's resolvers, queried from the agent's namespace.
    Node,
    /// The endpoint's `--dns` servers, queried from its namespace.
    Servers(Vec<Ipv4Addr>),
    /// Only `--internal` networks: no resolution beyond the local names.
    Nowhere,
}

/// What the server needs of one endpoint that gets embedded DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    /// Its namespace (`/run/netns/NAME`).
    pub netns_path: PathBuf,
    /// The name of that namespace under `/run/netns` when it is one there
    /// (its resolver configuration goes to `/etc/netns/NAME/`).
    pub netns_name: Option<String>,
    /// Its user-defined networks, first network first.
    pub networks: Vec<String>,
    pub forward: Forward,
}

/// The addresses of one name: IPv4 (A), and IPv6 (AAAA) on dual-stack
/// networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// One network's names: lowercase name -> addresses, address -> canonical name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Zone {
    names: HashMap<String, Addrs>,
    reverse: HashMap<IpAddr, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Endpoints that get embedded DNS, by name.
    askers: BTreeMap<String, Asker>,
    /// User-defined networks' names, by network.
    zones: HashMap<String, Zone>,
}

/// Whether a network's endpoints get embedded DNS: user-defined networks
/// only (not Docker's default `bridge`, not `none`).
pub fn user_defined(network: &str) -> bool {
    network != DEFAULT_NETWORK && network != NONE_NETWORK
}

/// Whether an endpoint gets a server of the agent's: it is in a namespace
/// of the datapath's own (not a CNI runtime's sandbox, whose runtime
/// configures its resolver, nor Docker's, whose engine serves its own DNS)
/// and on at least one user-defined network.
pub fn eligible(e: &EndpointSpec) -> bool {
    e.cni.is_none()
        && !e.detached
        && !e.creating
        && e.owner.is_none()
        && !e.netns_path.as_os_str().is_empty()
        && e.links().any(|l| user_defined(l.network))
}

impl Table {
    pub fn new(state: &State) -> Table {
        let mut zones: HashMap<String, Zone> = HashMap::new();
        for e in state.endpoints.values().filter(|e| !e.creating) {
            // A half-made attachment's names appear once its connect is done.
            let served = |l: &Link| !l.connecting && user_defined(l.network) && state.networks.contains_key(l.network);
            for l in e.links().filter(served) {
                let zone = zones.entry(l.network.to_string()).or_default();
                for name in std::iter::once(&e.name).chain(l.aliases.iter()) {
                    let addrs = zone.names.entry(name.to_ascii_lowercase()).or_default();
                    if !addrs.v4.contains(&l.ip) {
                        addrs.v4.push(l.ip);
                    }
                    if let Some(ip6) = l.ip6.filter(|ip6| !addrs.v6.contains(ip6)) {
                        addrs.v6.push(ip6);
                    }
                }
                let canonical = format!("{}.{}.", e.name, l.network);
                if let Some(ip6) = l.ip6 {
                    zone.reverse.insert(IpAddr::V6(ip6), canonical.clone());
                }
                zone.reverse.insert(IpAddr::V4(l.ip), canonical);
            }
        }
        let askers = state
            .endpoints
            .values()
            .filter(|e| eligible(e))
            .map(|e| {
                let networks: Vec<String> =
                    e.links().filter(|l| user_defined(l.network)).map(|l| l.network.to_string()).collect();
                // Docker: resolution beyond the local names needs one
                // network with a way out (not `--internal`).
                let way_out = e.links().any(|l| state.networks.get(l.network).is_some_and(|n| !n.options.internal));
                let forward = match () {
                    _ if !way_out => Forward::Nowhere,
                    _ if !e.dns.is_empty() => Forward::Servers(e.dns.clone()),
                    _ => Forward::Node,
                };
                let netns_name = e
                    .netns_path
                    .strip_prefix(crate::host::netns::NETNS_RUN_DIR)
                    .ok()
                    .and_then(|p| p.to_str())
                    .filter(|n| !n.is_empty() && !n.contains('/'))
                    .map(String::from);
                (e.name.clone(), Asker { netns_path: e.netns_path.clone(), netns_name, networks, forward })
            })
            .collect();
        Table { askers, zones }
    }

    pub fn askers(&self) -> &BTreeMap<String, Asker> {
        &self.askers
    }

    pub fn asker(&self, name: &str) -> Option<&Asker> {
        self.askers.get(name)
    }

    /// Addresses of `qname` for `asker`: on the first of its networks
    /// (first network first) that has the name. `None`: not a local name.
    pub fn lookup(&self, asker: &str, qname: &str) -> Option<Addrs> {
        let asker = self.askers.get(asker)?;
        let name = normalize(qname);
        for net in &asker.networks {
            if let Some(addrs) = self.zones.get(net).and_then(|z| z.names.get(&name)) {
                return Some(addrs.clone());
            }
        }
        // NAME.NETWORK, for a network the asker is on.
        let (host, net) = name.rsplit_once('.')?;
        let net = asker.networks.iter().find(|n| n.eq_ignore_ascii_case(net))?;
        self.zones.get(net).and_then(|z| z.names.get(host)).cloned()
    }

    /// The name of `ip` for `asker` (`NAME.NETWORK.`) when it is an
    /// address on one of its networks.
    pub fn reverse(&self, asker: &str, ip: IpAddr) -> Option<String> {
        let asker = self.askers.get(asker)?;
        asker.networks.iter().find_map(|n| self.zones.get(n).and_then(|z| z.reverse.get(&ip))).cloned()
    }
}

/// Lowercase, without the trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The address a PTR question is about (`4.3.2.1.in-addr.arpa`, or the
/// 32 nibbles of an IPv6 address, last first, under `ip6.arpa`).
pub fn ptr_address(qname: &str) -> Option<IpAddr> {
    let name = normalize(qname);
    if let Some(rest) = name.strip_suffix(".ip6.arpa") {
        return ptr_address6(rest).map(IpAddr::V6);
    }
    ptr_address4(&name).map(IpAddr::V4)
}

fn ptr_address6(nibbles: &str) -> Option<Ipv6Addr> {
    let mut value: u128 = 0;
    let mut count = 0;
    // Written last nibble first: read them in reverse.
    for label in nibbles.rsplit('.') {
        let &[digit] = label.as_bytes() else { return None };
        value = (value << 4) | u128::from(char::from(digit).to_digit(16)?);
        count += 1;
        if count > 32 {
            return None;
        }
    }
    (count == 32).then_some(Ipv6Addr::from(value))
}

fn ptr_address4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut labels = rest.split('.');
    for o in octets.iter_mut().rev() {
        let label = labels.next()?;
        if label.is_empty() || label.len() > 3 || !label.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = label.parse().ok()?;
    }
    labels.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Refuses `name` and `aliases` for a new endpoint of `network` when one is
/// the name or an alias of another endpoint on that network (the message
/// for the client).
pub fn check_names(state: &State, network: &str, name: &str, aliases: &[String]) -> Result<(), String> {
    let wanted: Vec<String> = std::iter::once(name).chain(aliases.iter().map(String::as_str)).map(normalize).collect();
    for (e, l) in state.links_on(network) {
        if e.name == name {
            continue;
        }
        for taken in std::iter::once(&e.name).chain(l.aliases.iter()) {
            if let Some(w) = wanted.iter().find(|w| **w == normalize(taken)) {
                return Err(format!("name {w:?} is taken on network {network} by endpoint {:?}", e.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::{Attachment, DatapathKind, Ipv6Config, NetworkOptions, NetworkSpec};
    use ipnet::Ipv4Net;

    pub(crate) fn net(name: &str, subnet: &str, num: u32, internal: bool) -> NetworkSpec {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkSpec {
            name: name.into(),
            id: format!("{num}"),
            num_id: num,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            bridge: format!("br-{name}"),
            datapath: DatapathKind::Ebpf,
            options: NetworkOptions { internal, ..Default::default() },
            created: String::new(),
            owner: None,
            ipv6: None,
        }
    }

    pub(crate) fn ep(name: &str, network: &str, ip: [u8; 4], aliases: &[&str]) -> EndpointSpec {
        EndpointSpec {
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..EndpointSpec::sample(name, network, ip)
        }
    }

    fn attach(e: &mut EndpointSpec, network: &str, ip: [u8; 4], aliases: &[&str]) {
        let n = e.attachments.len() + 1;
        e.attachments.push(Attachment {
            network: network.into(),
            ip: Ipv4Addr::from(ip),
            mac: [2, 0, 0, 0, 0, 2],
            ifname: format!("eth{n}"),
            host_ifname: format!("dp-{}{n}", e.name),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ip6: None,
            connecting: false,
        });
    }

    /// front (A only), proxy (A and B), db (B only), legacy (bridge only),
    /// vault (internal I only); on the dual-stack network D: web6 (first
    /// network, with IPv6), client6 (A, attached to D with IPv6) and old4
    /// (D without an IPv6 address: a name with no AAAA).
    pub(crate) fn state() -> State {
        let mut s = State::new();
        for n in [
            net("a", "10.1.0.0/24", 1, false),
            net("b", "10.2.0.0/24", 2, false),
            net("i", "10.3.0.0/24", 3, true),
            net(DEFAULT_NETWORK, "10.10.0.0/16", 4, false),
            NetworkSpec {
                ipv6: Some(Ipv6Config {
                    subnet: "fd00:4::/64".parse().unwrap(),
                    gateway: "fd00:4::1".parse().unwrap(),
                }),
                ..net("d", "10.4.0.0/24", 5, false)
            },
        ] {
            s.networks.insert(n.name.clone(), n);
        }
        let web6 =
            EndpointSpec { ip6: Some("fd00:4::2".parse().unwrap()), ..ep("web6", "d", [10, 4, 0, 2], &["www6"]) };
        let mut client6 = ep("client6", "a", [10, 1, 0, 6], &[]);
        attach(&mut client6, "d", [10, 4, 0, 3], &["c6"]);
        client6.attachments[0].ip6 = Some("fd00:4::3".parse().unwrap());
        for e in [web6, client6, ep("old4", "d", [10, 4, 0, 4], &[])] {
            s.endpoints.insert(e.name.clone(), e);
        }
        let mut proxy = ep("proxy", "a", [10, 1, 0, 3], &["www"]);
        attach(&mut proxy, "b", [10, 2, 0, 3], &["gateway"]);
        let mut db = ep("db", "b", [10, 2, 0, 4], &["Postgres"]);
        db.dns = vec![Ipv4Addr::new(192, 0, 2, 53)];
        for e in [
            ep("front", "a", [10, 1, 0, 2], &[]),
            proxy,
            db,
            ep("legacy", DEFAULT_NETWORK, [10, 10, 0, 2], &[]),
            ep("vault", "i", [10, 3, 0, 2], &["secrets"]),
        ] {
            s.endpoints.insert(e.name.clone(), e);
        }
        assert_eq!(s.check(), Ok(()));
        s
    }

    fn ips(t: &Table, asker: &str, q: &str) -> Option<Vec<String>> {
        t.lookup(asker, q).map(|v| v.v4.iter().map(|i| i.to_string()).collect())
    }

    fn ips6(t: &Table, asker: &str, q: &str) -> Option<Vec<String>> {
        t.lookup(asker, q).map(|v| v.v6.iter().map(|i| i.to_string()).collect())
    }

    #[test]
    fn ipv6_addresses_of_dual_stack_links() {
        let t = Table::new(&state());
        assert_eq!(ips6(&t, "client6", "web6"), Some(vec!["fd00:4::2".into()]));
        assert_eq!(ips(&t, "client6", "www6"), Some(vec!["10.4.0.2".into()]), "A unchanged");
        assert_eq!(ips6(&t, "web6", "c6"), Some(vec!["fd00:4::3".into()]), "an attachment's own address and alias");
        assert_eq!(ips6(&t, "web6", "client6"), Some(vec!["fd00:4::3".into()]));
        // On a shared IPv4-only network the same endpoint has no AAAA.
        assert_eq!(ips6(&t, "front", "client6"), Some(vec![]));
        assert_eq!(ips(&t, "front", "client6"), Some(vec!["10.1.0.6".into()]));
        // A name without an IPv6 address: known, no AAAA.
        assert_eq!(ips6(&t, "web6", "old4"), Some(vec![]));
        let r = |asker: &str, ip: &str| t.reverse(asker, ip.parse().unwrap());
        assert_eq!(r("web6", "fd00:4::3").as_deref(), Some("client6.d."));
        assert_eq!(r("client6", "fd00:4::2").as_deref(), Some("web6.d."));
        assert_eq!(r("front", "fd00:4::2"), None, "not on the asker's networks");
        let ptr = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(ptr_address(ptr), Some("fd00:4::2".parse().unwrap()));
        assert_eq!(ptr_address(&ptr.to_uppercase()), Some("fd00:4::2".parse().unwrap()));
        for bad in [
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa",
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa",
            "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa",
            "20.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa",
            ".0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa",
            "ip6.arpa",
        ] {
            assert_eq!(ptr_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_of_shared_networks_with_the_shared_address() {
        let t = Table::new(&state());
        assert_eq!(ips(&t, "front", "proxy"), Some(vec!["10.1.0.3".into()]));
        assert_eq!(ips(&t, "front", "www"), Some(vec!["10.1.0.3".into()]));
        assert_eq!(ips(&t, "front", "front"), Some(vec!["10.1.0.2".into()]), "its own name");
        // db shares only b with proxy: proxy's address there.
        assert_eq!(ips(&t, "db", "proxy"), Some(vec!["10.2.0.3".into()]));
        assert_eq!(ips(&t, "db", "gateway"), Some(vec!["10.2.0.3".into()]));
        // proxy is on both: its first network's view first, then b's.
        assert_eq!(ips(&t, "proxy", "front"), Some(vec!["10.1.0.2".into()]));
        assert_eq!(ips(&t, "proxy", "db"), Some(vec!["10.2.0.4".into()]));
        // Aliases are per network: `www` is proxy's on a only.
        assert_eq!(ips(&t, "db", "www"), None);
        // Not on a shared network: unknown.
        assert_eq!(ips(&t, "front", "db"), None);
        assert_eq!(ips(&t, "db", "front"), None);
        assert_eq!(ips(&t, "front", "vault"), None);
        assert_eq!(ips(&t, "front", "legacy"), None, "bridge names are never served");
    }

    #[test]
    fn names_are_case_insensitive_with_or_without_the_dot_and_network() {
        let t = Table::new(&state());
        for q in ["PROXY", "proxy.", "Proxy.A", "proxy.a.", "postgres.b"] {
            assert!(t.lookup("proxy", q).is_some(), "{q}");
        }
        assert_eq!(ips(&t, "db", "postgres"), Some(vec!["10.2.0.4".into()]));
        assert_eq!(ips(&t, "db", "proxy.b"), Some(vec!["10.2.0.3".into()]));
        assert_eq!(ips(&t, "db", "proxy.a"), None, "a network the asker is not on");
        assert_eq!(ips(&t, "front", "proxy.example.com"), None);
    }

    #[test]
    fn reverse_names_on_shared_networks() {
        let t = Table::new(&state());
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert_eq!(t.reverse("front", v4(10, 1, 0, 3)).as_deref(), Some("proxy.a."));
        assert_eq!(t.reverse("db", v4(10, 2, 0, 3)).as_deref(), Some("proxy.b."));
        assert_eq!(t.reverse("front", v4(10, 2, 0, 4)), None);
        assert_eq!(t.reverse("front", v4(10, 10, 0, 2)), None);
        assert_eq!(ptr_address("3.0.1.10.in-addr.arpa."), Some(v4(10, 1, 0, 3)));
        assert_eq!(ptr_address("3.0.1.10.IN-ADDR.ARPA"), Some(v4(10, 1, 0, 3)));
        for bad in
            ["0.1.10.in-addr.arpa", "1.3.0.1.10.in-addr.arpa", "300.0.1.10.in-addr.arpa", "x.0.1.10.in-addr.arpa"]
        {
            assert_eq!(ptr_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn who_gets_a_server_and_where_the_rest_goes() {
        let mut s = state();
        let mut cni = ep("cni1", "a", [10, 1, 0, 9], &[]);
        cni.cni = Some(serde_json::from_value(serde_json::json!({"name": "c"})).unwrap());
        cni.netns_path = "/var/run/netns/cni-1".into();
        cni.host_ifname = "dp-cni".into();
        s.endpoints.insert("cni1".into(), cni);
        let mut docker = ep("dock", "a", [10, 1, 0, 10], &[]);
        docker.detached = true;
        docker.owner = Some("docker".into());
        docker.netns_path = PathBuf::new();
        s.endpoints.insert("dock".into(), docker);
        let t = Table::new(&s);
        let names: Vec<&str> = t.askers().keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["client6", "db", "front", "old4", "proxy", "vault", "web6"],
            "not bridge-only, CNI or Docker endpoints"
        );
        assert_eq!(t.asker("front").unwrap().forward, Forward::Node);
        assert_eq!(t.asker("db").unwrap().forward, Forward::Servers(vec![Ipv4Addr::new(192, 0, 2, 53)]));
        assert_eq!(t.asker("vault").unwrap().forward, Forward::Nowhere, "internal only: no forwarding");
        assert_eq!(t.asker("proxy").unwrap().networks, ["a", "b"]);
        assert_eq!(t.asker("front").unwrap().netns_name.as_deref(), Some("front"));
        // Their names still resolve for the others on the network.
        assert_eq!(ips(&t, "front", "cni1"), Some(vec!["10.1.0.9".into()]));
        // An internal endpoint also on a network with a way out forwards.
        let mut s = state();
        attach(s.endpoints.get_mut("vault").unwrap(), "a", [10, 1, 0, 7], &[]);
        assert_eq!(Table::new(&s).asker("vault").unwrap().forward, Forward::Node);
    }

    #[test]
    fn half_made_endpoints_are_not_served() {
        let mut s = state();
        s.endpoints.get_mut("db").unwrap().creating = true;
        let t = Table::new(&s);
        assert!(t.asker("db").is_none());
        assert_eq!(ips(&t, "proxy", "db"), None);
        // An attachment still being connected is not served either.
        let mut s = state();
        let db_on_b = ips(&Table::new(&s), "db", "proxy");
        assert!(db_on_b.is_some(), "the proxy is on b");
        let proxy = s.endpoints.get_mut("proxy").unwrap();
        proxy.attachments.iter_mut().for_each(|a| a.connecting = true);
        assert_eq!(ips(&Table::new(&s), "db", "proxy"), None);
    }

    #[test]
    fn colliding_names_are_refused_per_network() {
        let s = state();
        assert_eq!(check_names(&s, "a", "new", &["other".into()]), Ok(()));
        assert!(check_names(&s, "a", "WWW", &[]).unwrap_err().contains("\"www\" is taken on network a"));
        assert!(check_names(&s, "a", "new", &["front".into()]).unwrap_err().contains("endpoint \"front\""));
        assert!(check_names(&s, "b", "new", &["postgres".into()]).is_err());
        // Per network: `www` is free on b, `db` on a.
        assert_eq!(check_names(&s, "b", "www", &["db2".into()]), Ok(()));
        assert_eq!(check_names(&s, "a", "db", &[]), Ok(()));
    }
}
