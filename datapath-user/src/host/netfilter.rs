//! Netfilter rules for kernel-datapath networks (the classic Docker setup:
//! MASQUERADE, isolation, icc, internal).
//!
//! The ruleset is rendered from the desired state by a pure function and
//! applied atomically with `nft -f -` (replace-whole-table in one batch).
//! eBPF networks get no netfilter rule at all: their policy and NAT are in
//! the eBPF programs.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::state::{DatapathKind, NetworkSpec, State};

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
    for family in ["ip", "bridge"] {
        s += &format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n");
    }
    let nets: Vec<&NetworkSpec> = kernel_networks(state).collect();
    if nets.is_empty() {
        return s;
    }
    let all: Vec<String> = state.networks.values().map(|n| n.subnet.to_string()).collect();
    s += &format!("table ip {TABLE} {{\n");
    s += &forward_chain(&nets, &all);
    s += &input_chain(&nets, &all);
    s += &postrouting_chain(&nets, uplink_of, nat_ports);
    s += "}\n";
    s + &icc_table(state, &nets)
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
        s += &isolation_rule(n, all);
        if n.options.internal {
            s += &format!(
                "    oifname \"{}\" ip saddr != {} drop comment \"internal {}\"\n",
                n.bridge, n.subnet, n.name
            );
        }
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
) -> String {
    let mut s = String::from("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
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
fn icc_table(state: &State, nets: &[&NetworkSpec]) -> String {
    let mut icc = String::new();
    for n in nets.iter().filter(|n| !n.options.icc) {
        let ports: Vec<String> = state.endpoints_of(&n.name).map(|e| format!("\"{}\"", e.host_ifname)).collect();
        if ports.len() >= 2 {
            let set = ports.join(", ");
            icc += &format!(
                "    iifname {{ {set} }} oifname {{ {set} }} ether type ip drop comment \"icc=false {}\"\n",
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
                name: ep.into(),
                id: random_id(),
                network: "k".into(),
                ip: std::net::Ipv4Addr::new(10, 2, 0, 2),
                mac: [2, 0, 0, 0, 0, 2],
                netns_path: "/run/netns/x".into(),
                owns_netns: true,
                ifname: "eth0".into(),
                host_ifname: host.into(),
                container_id: None,
                cni: None,
                trace: false,
                created: String::new(),
                creating: false,
                detached: false,
                owner: None,
            };
            e.ip = if ep == "a" { e.ip } else { std::net::Ipv4Addr::new(10, 2, 0, 3) };
            st.endpoints.insert(ep.into(), e);
        }
        let s = render(&st, |_| None, None);
        assert!(s.contains("iifname { \"dpa\", \"dpb\" } oifname { \"dpa\", \"dpb\" } ether type ip drop"), "{s}");
        assert!(needs_rules(&st));
    }
}
