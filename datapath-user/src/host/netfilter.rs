//! Netfilter rules for kernel-datapath networks (the classic Docker setup:
//! MASQUERADE, isolation, icc, internal), and the published ports' rules
//! (Docker's `--userland-proxy=false` way: DNAT in prerouting and output,
//! masquerade for hairpin and for the node's `127.0.0.1`).
//!
//! The ruleset is rendered from the desired state by a pure function and
//! applied atomically with `nft -f -` (replace-whole-table in one batch).
//! eBPF networks get no policy or masquerade rule: their policy and NAT are
//! in the eBPF programs. Their published ports get only the rules for the
//! node's own connections (nat output, and masquerade of `127.0.0.1`
//! sources): connections from beyond the uplink and from endpoints are
//! translated in eBPF.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::ports::Publish;
use crate::state::{DatapathKind, EndpointSpec, NetworkSpec, State};

pub const TABLE: &str = "datapath";

#[derive(Debug, Error)]
pub enum NetfilterError {
    #[error("`nft` is not installed (the kernel datapath needs nftables: run `cargo xtask setup` or apt-get install nftables)")]
    NoNft,
    #[error("nft rejected the ruleset: {0}")]
    Nft(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn kernel_networks(state: &State) -> impl Iterator<Item = &NetworkSpec> {
    state.networks.values().filter(|n| n.datapath == DatapathKind::Kernel)
}

/// The nft script for the current state: deletes our tables, then (if any
/// kernel network exists) recreates them. One batch, so it is atomic.
/// `nat_ports`: the agent's explicit `--nat-port-range`, which the kernel
/// datapath's masquerade honours too (without it, netfilter keeps the
/// endpoint's port where it can, as Docker does).
pub fn render(
    state: &State,
    uplink_of: impl Fn(&NetworkSpec) -> Option<String>,
    nat_ports: Option<(u16, u16)>,
) -> String {
    let mut s = String::new();
    // "add" then "delete" never fails, whether or not the table existed.
    for family in ["ip", "ip6", "bridge"] {
        s += &format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n");
    }
    let nets: Vec<&NetworkSpec> = kernel_networks(state).collect();
    let published = published(state);
    let v6: Vec<&NetworkSpec> = v6_networks(state).collect();
    if !v6.is_empty() {
        s += &ip6_table(&v6, &uplink_of, &published);
    }
    if nets.is_empty() && published.is_empty() {
        return s + &icc_table(state, &nets, &v6);
    }
    let all: Vec<String> = state.networks.values().map(|n| n.subnet.to_string()).collect();
    s += &format!("table ip {TABLE} {{\n");
    if !nets.is_empty() {
        s += &forward_chain(&nets, &all);
        s += &input_chain(&nets, &all);
    }
    s += &postrouting_chain(&nets, uplink_of, nat_ports, &published, &all);
    s += &ports_chains(&published);
    s += "}\n";
    s + &icc_table(state, &nets, &v6)
}

/// Dual-stack networks, on either datapath: their IPv6 is forwarded,
/// isolated and masqueraded by the kernel (on eBPF networks too, for now:
/// `dp_from_ep` checks an endpoint's IPv6 and hands it to the bridge).
fn v6_networks(state: &State) -> impl Iterator<Item = &NetworkSpec> {
    state.networks.values().filter(|n| n.ipv6.is_some())
}

/// Docker's `--ipv6` rules in table `ip6 datapath`: what conntrack cannot
/// place, internal networks, isolation between networks (gateways
/// included), masquerade of what leaves the node, and the published ports
/// of endpoints with an IPv6 address (both datapaths: IPv6 published ports
/// are the kernel's, see [`ports6`]).
fn ip6_table(
    nets: &[&NetworkSpec],
    uplink_of: &impl Fn(&NetworkSpec) -> Option<String>,
    published: &[(&EndpointSpec, &NetworkSpec)],
) -> String {
    let subnet6 = |n: &NetworkSpec| n.ipv6.map(|v6| v6.subnet.to_string()).unwrap_or_default();
    let isolation = |n: &NetworkSpec| -> String {
        if n.options.internal {
            // Neighbour discovery and MLD (link-local and multicast) stay
            // on the link (with br_netfilter, bridged IPv6 crosses these
            // hooks too).
            return format!(
                "    iifname \"{}\" ip6 daddr != {{ {}, fe80::/10, ff00::/8 }} drop comment \"internal {}\"\n",
                n.bridge,
                subnet6(n),
                n.name
            );
        }
        let others: Vec<String> = nets.iter().filter(|o| o.name != n.name).map(|o| subnet6(o)).collect();
        if others.is_empty() {
            return String::new();
        }
        format!(
            "    iifname \"{}\" ip6 daddr {{ {} }} drop comment \"isolation {}\"\n",
            n.bridge,
            others.join(", "),
            n.name
        )
    };
    let mut fwd = String::from("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    let mut input = String::from("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    let mut post =
        String::from("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    for n in nets {
        fwd += &format!("    iifname \"{}\" ct state invalid drop comment \"invalid {}\"\n", n.bridge, n.name);
        if n.options.internal {
            fwd += &isolation(n);
            fwd += &format!(
                "    oifname \"{}\" ip6 saddr != {{ {}, fe80::/10, ::/128 }} drop comment \"internal {}\"\n",
                n.bridge,
                subnet6(n),
                n.name
            );
        }
        input += &isolation(n);
    }
    let ports = ports6(nets, published);
    if !ports.is_empty() {
        // A connection to a published port may cross networks (a client
        // endpoint of another network, and its replies): past the internal
        // networks' rules, before the isolation ones (as for IPv4).
        fwd += "    ct status dnat accept comment \"published ports\"\n";
    }
    for n in nets.iter().filter(|n| !n.options.internal) {
        fwd += &isolation(n);
    }
    post += &ports.hairpin;
    for n in nets {
        if n.options.masquerade && !n.options.internal {
            let out = match uplink_of(n) {
                Some(up) => format!("oifname \"{up}\""),
                None => format!("oifname != \"{}\"", n.bridge),
            };
            post += &format!("    ip6 saddr {} {out} masquerade comment \"masquerade {}\"\n", subnet6(n), n.name);
        }
    }
    format!("table ip6 {TABLE} {{\n{fwd}  }}\n{input}  }}\n{post}  }}\n{}}}\n", ports.chains)
}

/// The IPv6 half of published ports, on both datapaths (the eBPF
/// datapath translates IPv4 only): DNAT to the endpoint's IPv6 address of
/// its first network for every publication bound to all addresses or to an
/// IPv6 one, in prerouting (from beyond the node and from endpoints) and
/// output (the node's own connections; not `::1`, which IPv6 cannot route
/// to a bridge), and masquerade of the connections from endpoints of the
/// node (hairpin: their replies must come back through the node).
#[derive(Default)]
struct Ports6 {
    chains: String,
    hairpin: String,
}

impl Ports6 {
    fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }
}

fn ports6(nets: &[&NetworkSpec], published: &[(&EndpointSpec, &NetworkSpec)]) -> Ports6 {
    let mut pre = String::new();
    let mut out = String::new();
    let mut bridges: Vec<&NetworkSpec> = Vec::new();
    for (e, n) in published {
        let Some(ip6) = e.ip6 else { continue };
        let mut any = false;
        for p in e.ports.iter().filter(|p| p.on_v6()) {
            let addr = match p.host_ip {
                Some(a) => format!("ip6 daddr {a}"),
                None => "fib daddr type local ip6 daddr != ::1".to_string(),
            };
            let rule = format!(
                "    {addr} {} dport {} dnat to [{ip6}]:{} comment \"publish {} {p}\"\n",
                p.proto, p.host_port, p.container_port, e.name
            );
            pre += &rule;
            out += &rule;
            any = true;
        }
        if any && !bridges.iter().any(|b| b.name == n.name) {
            bridges.push(n);
        }
    }
    if pre.is_empty() {
        return Ports6::default();
    }
    let all: Vec<String> = nets.iter().filter_map(|n| n.ipv6.map(|v6| v6.subnet.to_string())).collect();
    let hairpin = bridges
        .iter()
        .map(|n| {
            format!(
                "    oifname \"{}\" ct status dnat ip6 saddr {{ {} }} masquerade comment \"publish hairpin {}\"\n",
                n.bridge,
                all.join(", "),
                n.name
            )
        })
        .collect();
    let chains = format!(
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{out}  }}\n"
    );
    Ports6 { chains, hairpin }
}

/// Endpoints that publish ports, with their network.
fn published(state: &State) -> Vec<(&EndpointSpec, &NetworkSpec)> {
    state
        .endpoints
        .values()
        .filter(|e| !e.ports.is_empty())
        .filter_map(|e| state.networks.get(&e.network).map(|n| (e, n)))
        .collect()
}

/// The destination match of a publication: every local address but
/// loopback's from outside (`prerouting`: a packet to 127.0.0.1 from the
/// network must never reach a container), every local address from the
/// node (`output`), or the one address.
fn port_match(p: &Publish, prerouting: bool) -> String {
    let addr = match (p.host_ip, prerouting) {
        (Some(a), _) => format!("ip daddr {a}"),
        (None, true) => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
        (None, false) => "fib daddr type local".to_string(),
    };
    format!("{addr} {} dport {}", p.proto, p.host_port)
}

/// DNAT of published ports: in prerouting (from outside and from
/// endpoints) for kernel-datapath endpoints only, and in output (the
/// node's own connections) for every endpoint.
fn ports_chains(published: &[(&EndpointSpec, &NetworkSpec)]) -> String {
    let mut pre = String::from("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    let mut out = String::from("  chain output {\n    type nat hook output priority -100; policy accept;\n");
    for (e, n) in published {
        for p in e.ports.iter().filter(|p| p.on_v4()) {
            let to = format!("dnat to {}:{} comment \"publish {} {p}\"\n", e.ip, p.container_port, e.name);
            if n.datapath == DatapathKind::Kernel && !p.is_loopback() {
                pre += &format!("    {} {to}", port_match(p, true));
            }
            out += &format!("    {} {to}", port_match(p, false));
        }
    }
    pre + "  }\n" + &out + "  }\n"
}

/// The subnets of the other networks than `n`, as the body of an nft set.
fn other_subnets(all: &[String], n: &NetworkSpec) -> Option<String> {
    let own = n.subnet.to_string();
    let others: Vec<&str> = all.iter().filter(|x| **x != own).map(String::as_str).collect();
    (!others.is_empty()).then(|| others.join(", "))
}

/// The rule that keeps `n`'s traffic in (internal) or out of the other
/// networks (isolation), matched on the bridge as input interface.
fn isolation_rule(n: &NetworkSpec, all: &[String]) -> String {
    if n.options.internal {
        format!("    iifname \"{}\" ip daddr != {} drop comment \"internal {}\"\n", n.bridge, n.subnet, n.name)
    } else if let Some(set) = other_subnets(all, n) {
        format!("    iifname \"{}\" ip daddr {{ {set} }} drop comment \"isolation {}\"\n", n.bridge, n.name)
    } else {
        String::new()
    }
}

/// Forwarded traffic: what conntrack cannot place, internal networks,
/// isolation between networks.
fn forward_chain(nets: &[&NetworkSpec], all: &[String]) -> String {
    let mut s = String::from("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    for n in nets {
        // Packets conntrack cannot place (bad checksum, truncated, a stray
        // ACK) would leave unmasqueraded, with the private source address.
        s += &format!("    iifname \"{}\" ct state invalid drop comment \"invalid {}\"\n", n.bridge, n.name);
        if n.options.internal {
            s += &isolation_rule(n, all);
            s += &format!(
                "    oifname \"{}\" ip saddr != {} drop comment \"internal {}\"\n",
                n.bridge, n.subnet, n.name
            );
        }
    }
    // A connection to a published port crosses networks (a client
    // endpoint of another network, and its replies): past the internal
    // networks' rules, before the isolation ones.
    s += "    ct status dnat accept comment \"published ports\"\n";
    for n in nets.iter().filter(|n| !n.options.internal) {
        s += &isolation_rule(n, all);
    }
    s + "  }\n"
}

/// The node's own addresses on other networks (their gateways) are another
/// network too: isolation covers them, as on the eBPF datapath.
fn input_chain(nets: &[&NetworkSpec], all: &[String]) -> String {
    let mut s = String::from("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    for n in nets {
        s += &isolation_rule(n, all);
    }
    s + "  }\n"
}

/// Masquerade of what leaves through the uplink (or anything but the
/// network's own bridge when no uplink is set).
fn postrouting_chain(
    nets: &[&NetworkSpec],
    uplink_of: impl Fn(&NetworkSpec) -> Option<String>,
    nat_ports: Option<(u16, u16)>,
    published: &[(&EndpointSpec, &NetworkSpec)],
    all: &[String],
) -> String {
    let mut s = String::from("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    // Published ports: the node's connections from 127.0.0.1 (routed to the
    // bridge thanks to route_localnet) leave as the gateway; on kernel
    // networks, so do connections from endpoints of the node (hairpin, the
    // same or another network), whose replies must come back through the
    // node to be translated back.
    let mut bridges: Vec<&NetworkSpec> = published.iter().map(|(_, n)| *n).collect();
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    bridges.dedup_by(|a, b| a.name == b.name);
    for n in bridges {
        s += &format!(
            "    oifname \"{}\" ip saddr 127.0.0.0/8 masquerade comment \"publish localhost {}\"\n",
            n.bridge, n.name
        );
        if n.datapath == DatapathKind::Kernel {
            s += &format!(
                "    oifname \"{}\" ct status dnat ip saddr {{ {} }} masquerade comment \"publish hairpin {}\"\n",
                n.bridge,
                all.join(", "),
                n.name
            );
        }
    }
    for n in nets.iter().filter(|n| n.options.masquerade && !n.options.internal) {
        let out = match uplink_of(n) {
            Some(up) => format!("oifname \"{up}\""),
            None => format!("oifname != \"{}\"", n.bridge),
        };
        // A port range needs a TCP/UDP match; everything else (ICMP) is
        // masqueraded by the next rule.
        if let Some((lo, hi)) = nat_ports {
            s += &format!(
                "    ip saddr {} {out} meta l4proto {{ tcp, udp }} masquerade to :{lo}-{hi} comment \"masquerade {}\"\n",
                n.subnet, n.name
            );
        }
        s += &format!("    ip saddr {} {out} masquerade comment \"masquerade {}\"\n", n.subnet, n.name);
    }
    s + "  }\n"
}

/// icc=false: drop IPv4 between two ports of the same bridge. Matched on
/// the port names (bridge-family iifname/oifname) since kernels without
/// CONFIG_NFT_BRIDGE_META cannot match the bridge name, and without
/// br_netfilter, which would slow every bridge down.
fn icc_table(state: &State, nets: &[&NetworkSpec], v6: &[&NetworkSpec]) -> String {
    let mut icc = String::new();
    let ports = |n: &NetworkSpec| -> Option<String> {
        let ports: Vec<String> = state.links_on(&n.name).map(|(_, l)| format!("\"{}\"", l.host_ifname)).collect();
        (ports.len() >= 2).then(|| ports.join(", "))
    };
    for n in nets.iter().filter(|n| !n.options.icc) {
        if let Some(set) = ports(n) {
            icc += &format!(
                "    iifname {{ {set} }} oifname {{ {set} }} ether type ip drop comment \"icc=false {}\"\n",
                n.name
            );
        }
    }
    // IPv6 crosses the bridge on both datapaths for now.
    for n in v6.iter().filter(|n| !n.options.icc) {
        if let Some(set) = ports(n) {
            icc += &format!(
                "    iifname {{ {set} }} oifname {{ {set} }} ether type ip6 drop comment \"icc=false ipv6 {}\"\n",
                n.name
            );
        }
    }
    if icc.is_empty() {
        return icc;
    }
    format!("table bridge {TABLE} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{icc}  }}\n}}\n")
}

/// Applies a rendered script. A state without kernel networks on a node
/// without nft is fine: there is nothing to apply.
pub fn apply(script: &str, needed: bool) -> Result<(), NetfilterError> {
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if needed { Err(NetfilterError::NoNft) } else { Ok(()) };
        }
        Err(e) => return Err(NetfilterError::Io("running nft".into(), e)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| NetfilterError::Io("writing to nft".into(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| NetfilterError::Io("waiting for nft".into(), e))?;
    if !out.status.success() {
        return Err(NetfilterError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

pub fn needs_rules(state: &State) -> bool {
    kernel_networks(state).next().is_some()
        || v6_networks(state).next().is_some()
        || state.endpoints.values().any(|e| !e.ports.is_empty())
}

/// The bridges that must route `127.0.0.1` (`route_localnet`): those of
/// networks with published ports.
pub fn localnet_bridges(state: &State) -> Vec<String> {
    let mut v: Vec<String> = published(state).into_iter().map(|(_, n)| n.bridge.clone()).collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{random_id, NetworkOptions};

    fn net(name: &str, subnet: &str, dp: DatapathKind, opts: NetworkOptions) -> NetworkSpec {
        let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
        NetworkSpec {
            name: name.into(),
            id: random_id(),
            num_id: 1,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            bridge: format!("br-{name}"),
            datapath: dp,
            options: opts,
            created: String::new(),
            owner: None,
            ipv6: None,
        }
    }

    #[test]
    fn no_kernel_network_only_deletes_tables() {
        let mut st = State::new();
        st.networks.insert("e".into(), net("e", "10.1.0.0/24", DatapathKind::Ebpf, NetworkOptions::default()));
        let s = render(&st, |_| None, None);
        assert!(!s.contains("masquerade"), "{s}");
        assert!(s.contains("delete table ip datapath"));
        assert!(!needs_rules(&st));
    }

    #[test]
    fn kernel_networks_get_docker_rules() {
        let mut st = State::new();
        st.networks.insert("e".into(), net("e", "10.1.0.0/24", DatapathKind::Ebpf, NetworkOptions::default()));
        st.networks.insert(
            "k".into(),
            net("k", "10.2.0.0/24", DatapathKind::Kernel, NetworkOptions { icc: false, ..Default::default() }),
        );
        st.networks.insert(
            "i".into(),
            net(
                "i",
                "10.3.0.0/24",
                DatapathKind::Kernel,
                NetworkOptions { internal: true, masquerade: false, ..Default::default() },
            ),
        );
        let s = render(&st, |n| (n.name == "k").then(|| "up0".to_string()), None);
        assert!(s.contains("ip saddr 10.2.0.0/24 oifname \"up0\" masquerade comment"), "{s}");
        let ranged = render(&st, |n| (n.name == "k").then(|| "up0".to_string()), Some((20000, 20009)));
        assert!(
            ranged.contains(
                "ip saddr 10.2.0.0/24 oifname \"up0\" meta l4proto { tcp, udp } masquerade to :20000-20009 comment"
            ),
            "{ranged}"
        );
        assert!(!s.contains("ip saddr 10.1.0.0/24"), "eBPF network must get no netfilter rule: {s}");
        assert!(!s.contains("ip saddr 10.3.0.0/24 oifname"), "internal network must not masquerade: {s}");
        assert!(s.contains("iifname \"br-k\" ip daddr { 10.1.0.0/24, 10.3.0.0/24 } drop"), "{s}");
        assert!(s.contains("iifname \"br-i\" ip daddr != 10.3.0.0/24 drop"), "{s}");
        assert!(s.contains("iifname \"br-k\" ct state invalid drop"), "{s}");
        let input = &s[s.find("chain input").expect("input chain")..];
        assert!(
            input.contains("iifname \"br-k\" ip daddr { 10.1.0.0/24, 10.3.0.0/24 } drop"),
            "other networks' gateways: {s}"
        );
        assert!(!s.contains("table bridge datapath {"), "no icc rule without two ports: {s}");
        for (ep, host) in [("a", "dpa"), ("b", "dpb")] {
            let mut e = crate::state::EndpointSpec {
                mac: [2, 0, 0, 0, 0, 2],
                netns_path: "/run/netns/x".into(),
                host_ifname: host.into(),
                ..crate::state::EndpointSpec::sample(ep, "k", [10, 2, 0, 2])
            };
            e.ip = if ep == "a" { e.ip } else { std::net::Ipv4Addr::new(10, 2, 0, 3) };
            st.endpoints.insert(ep.into(), e);
        }
        let s = render(&st, |_| None, None);
        assert!(s.contains("iifname { \"dpa\", \"dpb\" } oifname { \"dpa\", \"dpb\" } ether type ip drop"), "{s}");
        assert!(needs_rules(&st));
        let fwd = &s[s.find("chain forward").unwrap()..s.find("chain input").unwrap()];
        let (dnat, iso) = (fwd.find("ct status dnat accept").unwrap(), fwd.find("isolation k").unwrap());
        assert!(fwd.find("internal i").unwrap() < dnat && dnat < iso, "{fwd}");
    }

    #[test]
    fn dual_stack_networks_get_ip6_rules_on_both_datapaths() {
        let v6 = |s: &str| {
            let subnet: ipnet::Ipv6Net = s.parse().unwrap();
            Some(crate::state::Ipv6Config { subnet, gateway: "fd00::1".parse().unwrap() })
        };
        let mut st = State::new();
        let mut e = net("e", "10.1.0.0/24", DatapathKind::Ebpf, NetworkOptions { icc: false, ..Default::default() });
        e.ipv6 = v6("fd00:1::/64");
        let mut k = net("k", "10.2.0.0/24", DatapathKind::Kernel, NetworkOptions::default());
        k.ipv6 = v6("fd00:2::/64");
        let mut i = net(
            "i",
            "10.3.0.0/24",
            DatapathKind::Kernel,
            NetworkOptions { internal: true, masquerade: false, ..Default::default() },
        );
        i.ipv6 = v6("fd00:3::/64");
        let plain = net("p", "10.4.0.0/24", DatapathKind::Kernel, NetworkOptions::default());
        for n in [e, k, i, plain] {
            st.networks.insert(n.name.clone(), n);
        }
        let s = render(&st, |n| (n.name == "k").then(|| "up0".to_string()), None);
        let t = &s[s.find("table ip6 datapath {").unwrap_or_else(|| panic!("{s}"))..];
        let t = &t[..t.find("\n}\n").expect("end of the table")];
        assert!(t.contains("ip6 saddr fd00:1::/64 oifname != \"br-e\" masquerade comment \"masquerade e\""), "{t}");
        assert!(t.contains("ip6 saddr fd00:2::/64 oifname \"up0\" masquerade"), "{t}");
        assert!(!t.contains("ip6 saddr fd00:3::/64 oifname"), "internal: no masquerade: {t}");
        assert!(
            t.contains("iifname \"br-e\" ip6 daddr { fd00:3::/64, fd00:2::/64 } drop comment \"isolation e\""),
            "{t}"
        );
        assert!(t.contains("iifname \"br-i\" ip6 daddr != { fd00:3::/64, fe80::/10, ff00::/8 } drop"), "{t}");
        assert!(t.contains("oifname \"br-i\" ip6 saddr != { fd00:3::/64, fe80::/10, ::/128 } drop"), "{t}");
        assert!(!t.contains("br-p"), "an IPv4-only network gets no IPv6 rule: {t}");
        let input = &t[t.find("chain input").unwrap()..t.find("chain postrouting").unwrap()];
        assert!(input.contains("isolation k"), "{t}");
        assert!(needs_rules(&st));
        // icc=false on a dual-stack eBPF network: IPv6 between its ports.
        for (ep, ip) in [("a", [10, 1, 0, 2]), ("b", [10, 1, 0, 3])] {
            let e = crate::state::EndpointSpec {
                mac: [2, 0, 0, 0, 0, 2],
                netns_path: "/run/netns/x".into(),
                host_ifname: format!("dp{ep}"),
                ..crate::state::EndpointSpec::sample(ep, "e", ip)
            };
            st.endpoints.insert(ep.into(), e);
        }
        let s = render(&st, |_| None, None);
        assert!(s.contains("iifname { \"dpa\", \"dpb\" } oifname { \"dpa\", \"dpb\" } ether type ip6 drop"), "{s}");
        assert!(!s.contains("ether type ip drop"), "IPv4 icc of an eBPF network stays in eBPF: {s}");
        // Only a dual-stack eBPF network: the ip6 table alone.
        st.networks.retain(|n, _| n == "e");
        st.endpoints.clear();
        let s = render(&st, |_| None, None);
        assert!(s.contains("table ip6 datapath {") && !s.contains("table ip datapath {"), "{s}");
    }

    #[test]
    fn ipv6_published_ports_are_dnat_rules_on_both_datapaths() {
        let v6 = |s: &str, gw: &str| {
            Some(crate::state::Ipv6Config { subnet: s.parse().unwrap(), gateway: gw.parse().unwrap() })
        };
        let mut st = State::new();
        let mut e = net("e", "10.1.0.0/24", DatapathKind::Ebpf, NetworkOptions::default());
        e.ipv6 = v6("fd00:1::/64", "fd00:1::1");
        let mut k = net("k", "10.2.0.0/24", DatapathKind::Kernel, NetworkOptions::default());
        k.ipv6 = v6("fd00:2::/64", "fd00:2::1");
        let plain = net("p", "10.4.0.0/24", DatapathKind::Ebpf, NetworkOptions::default());
        for n in [e, k, plain] {
            st.networks.insert(n.name.clone(), n);
        }
        let ep =
            |name: &str, network: &str, ip: [u8; 4], ip6: Option<&str>, ports: &[&str]| crate::state::EndpointSpec {
                host_ifname: format!("dp{name}"),
                ports: crate::ports::parse_all(ports).unwrap(),
                ip6: ip6.map(|a| a.parse().unwrap()),
                ..crate::state::EndpointSpec::sample(name, network, ip)
            };
        let eps = [
            ep("a", "e", [10, 1, 0, 2], Some("fd00:1::2"), &["8080:80", "[fd00:9::1]:5353:53/udp", "10.9.0.1:7070:70"]),
            ep("b", "k", [10, 2, 0, 2], Some("fd00:2::2"), &["8081:81/udp", "127.0.0.1:9090:90"]),
            ep("c", "p", [10, 4, 0, 2], None, &["8082:82"]),
        ];
        for e in eps {
            st.endpoints.insert(e.name.clone(), e);
        }
        let s = render(&st, |_| None, None);
        let t = &s[s.find("table ip6 datapath {").unwrap_or_else(|| panic!("{s}"))..];
        let t = &t[..t.find("\n}\n").expect("end of the table")];
        let chain = |name: &str| {
            let c = &t[t.find(&format!("chain {name} {{")).unwrap_or_else(|| panic!("no {name}: {t}"))..];
            c[..c.find("  }").unwrap()].to_string()
        };
        for c in [chain("prerouting"), chain("output")] {
            assert!(c.contains("fib daddr type local ip6 daddr != ::1 tcp dport 8080 dnat to [fd00:1::2]:80 comment \"publish a 0.0.0.0:8080->80/tcp\""), "eBPF endpoint too: {c}");
            assert!(c.contains("ip6 daddr fd00:9::1 udp dport 5353 dnat to [fd00:1::2]:53"), "{c}");
            assert!(c.contains("udp dport 8081 dnat to [fd00:2::2]:81"), "{c}");
            assert!(!c.contains("7070") && !c.contains("9090"), "IPv4-bound: not on IPv6: {c}");
            assert!(!c.contains("8082"), "an endpoint without IPv6: {c}");
        }
        let post = chain("postrouting");
        assert!(post.contains("oifname \"br-e\" ct status dnat ip6 saddr { fd00:1::/64, fd00:2::/64 } masquerade comment \"publish hairpin e\""), "{post}");
        assert!(post.contains("publish hairpin k"), "{post}");
        let fwd = chain("forward");
        let (dnat, iso) = (fwd.find("ct status dnat accept").unwrap(), fwd.find("isolation e").unwrap());
        assert!(dnat < iso, "published ports cross networks: {fwd}");
        // The IPv4 rules keep the IPv4 publications only.
        let v4 = &s[s.find("table ip datapath {").unwrap_or_else(|| panic!("{s}"))..];
        assert!(v4.contains("ip daddr 10.9.0.1 tcp dport 7070 dnat to 10.1.0.2:70"), "{v4}");
        assert!(!v4.contains("5353"), "an IPv6-bound publication is not IPv4's: {v4}");
    }

    #[test]
    fn published_ports_get_docker_dnat_rules() {
        let mut st = State::new();
        st.networks.insert("k".into(), net("k", "10.2.0.0/24", DatapathKind::Kernel, NetworkOptions::default()));
        st.networks.insert("e".into(), net("e", "10.1.0.0/24", DatapathKind::Ebpf, NetworkOptions::default()));
        let ep = |name: &str, network: &str, ip: [u8; 4], ports: &[&str]| crate::state::EndpointSpec {
            mac: [2, 0, 0, 0, 0, 2],
            netns_path: "/run/netns/x".into(),
            host_ifname: format!("dp{name}"),
            ports: crate::ports::parse_all(ports).unwrap(),
            ..crate::state::EndpointSpec::sample(name, network, ip)
        };
        st.endpoints.insert("a".into(), ep("a", "k", [10, 2, 0, 2], &["8080:80", "127.0.0.1:9090:90/udp"]));
        st.endpoints.insert("b".into(), ep("b", "e", [10, 1, 0, 2], &["8081:81"]));
        assert!(needs_rules(&st));
        let s = render(&st, |_| None, None);
        let pre = &s[s.find("chain prerouting").unwrap()..s.find("chain output").unwrap()];
        let out = &s[s.find("chain output").unwrap()..];
        assert!(pre.contains("fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.2.0.2:80"), "{s}");
        assert!(!pre.contains("9090"), "loopback only from the node: {s}");
        assert!(!pre.contains("8081"), "eBPF endpoints are translated in eBPF: {s}");
        assert!(out.contains("fib daddr type local tcp dport 8080 dnat to 10.2.0.2:80"), "{s}");
        assert!(out.contains("ip daddr 127.0.0.1 udp dport 9090 dnat to 10.2.0.2:90"), "{s}");
        assert!(out.contains("fib daddr type local tcp dport 8081 dnat to 10.1.0.2:81"), "{s}");
        assert!(s.contains("oifname \"br-e\" ip saddr 127.0.0.0/8 masquerade"), "{s}");
        assert!(s.contains("oifname \"br-k\" ct status dnat ip saddr { 10.1.0.0/24, 10.2.0.0/24 } masquerade"), "{s}");
        assert!(!s.contains("oifname \"br-e\" ct status dnat"), "{s}");
        assert_eq!(localnet_bridges(&st), vec!["br-e".to_string(), "br-k".to_string()]);
        // Only eBPF networks: the node's rules still exist.
        st.networks.remove("k");
        st.endpoints.remove("a");
        let s = render(&st, |_| None, None);
        assert!(s.contains("dnat to 10.1.0.2:81") && !s.contains("chain forward"), "{s}");
    }
}
