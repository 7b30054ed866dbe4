//! The node's sysctls the agent changes: IPv4 forwarding, turned on while a
//! network routes beyond itself and restored to what it was afterwards.

use thiserror::Error;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct SysctlError {
    path: &'static str,
    source: std::io::Error,
}

fn err(path: &'static str) -> impl FnOnce(std::io::Error) -> SysctlError {
    move |source| SysctlError { path, source }
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
