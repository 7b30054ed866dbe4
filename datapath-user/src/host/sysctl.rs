//! The node's sysctls the agent changes: IPv4 forwarding, turned on while a
//! network routes beyond itself and restored to what it was afterwards.

use thiserror::Error;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

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

/// Turns IPv4 forwarding on; returns the previous value when it changed it.
pub fn enable_forwarding() -> Result<Option<String>, SysctlError> {
    let old = std::fs::read_to_string(IP_FORWARD).map_err(err(IP_FORWARD))?;
    let old = old.trim().to_string();
    if old == "1" {
        return Ok(None);
    }
    std::fs::write(IP_FORWARD, b"1").map_err(err(IP_FORWARD))?;
    Ok(Some(old))
}

/// Puts back the value [`enable_forwarding`] replaced.
pub fn restore_forwarding(old: &str) -> Result<(), SysctlError> {
    std::fs::write(IP_FORWARD, old.as_bytes()).map_err(err(IP_FORWARD))
}

/// Turns IPv4 forwarding off in the calling thread's namespace (an
/// endpoint's: it must never route between the networks it is on).
pub fn disable_forwarding() -> Result<(), SysctlError> {
    std::fs::write(IP_FORWARD, b"0").map_err(err(IP_FORWARD))
}
