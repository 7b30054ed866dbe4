//! The node's sysctls the agent changes: IPv4 (and, for dual-stack
//! networks, IPv6) forwarding, turned on while a network routes beyond
//! itself and restored to what it was afterwards; IPv6 on a bridge and in
//! an endpoint's namespace.

use thiserror::Error;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct SysctlError {
    path: String,
    source: std::io::Error,
}

fn err(path: &str) -> impl FnOnce(std::io::Error) -> SysctlError + '_ {
    move |source| SysctlError { path: path.to_string(), source }
}

/// Lets `iface` route `127.0.0.0/8` (`net.ipv4.conf.IFACE.route_localnet`),
/// so the node's connections to a port published on `127.0.0.1` can be
/// DNATed to an endpoint behind it (Docker does the same). The setting goes
/// with the interface.
pub fn enable_route_localnet(iface: &str) -> Result<(), SysctlError> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
    std::fs::write(&path, b"1").map_err(err(&path))
}

/// Sets a switch to 1; returns the previous value when it changed it.
fn switch_on(path: &str) -> Result<Option<String>, SysctlError> {
    let old = std::fs::read_to_string(path).map_err(err(path))?;
    let old = old.trim().to_string();
    if old == "1" {
        return Ok(None);
    }
    std::fs::write(path, b"1").map_err(err(path))?;
    Ok(Some(old))
}

/// Turns IPv4 forwarding on; returns the previous value when it changed it.
pub fn enable_forwarding() -> Result<Option<String>, SysctlError> {
    switch_on(IP_FORWARD)
}

/// Puts back the value [`enable_forwarding`] replaced.
pub fn restore_forwarding(old: &str) -> Result<(), SysctlError> {
    std::fs::write(IP_FORWARD, old.as_bytes()).map_err(err(IP_FORWARD))
}

/// Turns IPv6 forwarding on (`net.ipv6.conf.all.forwarding`, as Docker
/// does for `--ipv6`); returns the previous value when it changed it.
pub fn enable_forwarding6() -> Result<Option<String>, SysctlError> {
    switch_on(IP6_FORWARD)
}

/// Puts back the value [`enable_forwarding6`] replaced.
pub fn restore_forwarding6(old: &str) -> Result<(), SysctlError> {
    std::fs::write(IP6_FORWARD, old.as_bytes()).map_err(err(IP6_FORWARD))
}

fn write_conf6(iface: &str, knob: &str, value: &[u8]) -> Result<(), SysctlError> {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/{knob}");
    std::fs::write(&path, value).map_err(err(&path))
}

/// IPv6 on an interface of the calling thread's namespace, configured, not
/// autoconfigured: no router advertisements accepted, no router
/// solicitations sent (the addresses and the default route are the
/// agent's), then IPv6 enabled (its link-local address comes with it).
pub fn enable_ipv6(iface: &str) -> Result<(), SysctlError> {
    write_conf6(iface, "accept_ra", b"0")?;
    write_conf6(iface, "router_solicitations", b"0")?;
    write_conf6(iface, "disable_ipv6", b"0")
}

/// IPv6 on a bridge of the node: as [`enable_ipv6`], and its link-local
/// address usable at once (no duplicate address detection: the bridge's MAC
/// is the node's own). The node sends its neighbour solicitations to the
/// endpoints from that address; while it is tentative (a second or two
/// after the first port comes up) it sends none, and with neighbour
/// discovery answered in eBPF the node no longer learns an endpoint's MAC
/// from the endpoint's own solicitation for the gateway.
pub fn enable_ipv6_bridge(iface: &str) -> Result<(), SysctlError> {
    write_conf6(iface, "accept_dad", b"0")?;
    enable_ipv6(iface)
}

/// Turns IPv4 and IPv6 forwarding off in the calling thread's namespace
/// (an endpoint's: it must never route between the networks it is on). A
/// kernel without IPv6 has nothing to turn off there.
pub fn disable_forwarding() -> Result<(), SysctlError> {
    std::fs::write(IP_FORWARD, b"0").map_err(err(IP_FORWARD))?;
    match std::fs::write(IP6_FORWARD, b"0") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(IP6_FORWARD)(e)),
        _ => Ok(()),
    }
}
