//! Per-namespace knobs of the test bed: sysctls and TX checksum offload, set
//! from a thread that entered the namespace (no `ip netns exec`, no ethtool).

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::host::netns;
use crate::testbed::topology::TopologyError;

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> TopologyError {
    move |source| TopologyError::Io { what, source }
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes sysctl `key` (dotted, e.g. `net.ipv4.tcp_tw_reuse`) in the network
/// namespace at `ns`.
pub fn sysctl_write(ns: &Path, key: &str, value: &str) -> Result<(), TopologyError> {
    let (path, value) = (sysctl_path(key), value.to_string());
    netns::run_in(ns, move || std::fs::write(path, value))?.map_err(io_err(format!("sysctl {key} in {}", ns.display())))
}

/// Reads sysctl `key` in the network namespace at `ns` (trimmed).
pub fn sysctl_read(ns: &Path, key: &str) -> Result<String, TopologyError> {
    let path = sysctl_path(key);
    let v = netns::run_in(ns, move || std::fs::read_to_string(path))?
        .map_err(io_err(format!("sysctl {key} in {}", ns.display())))?;
    Ok(v.trim().to_string())
}

/// `struct ethtool_value` (uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

const ETHTOOL_STXCSUM: u32 = 0x17;
const SIOCETHTOOL: u32 = 0x8946;

/// Turns TX checksum offload off on `dev` in the namespace at `ns`
/// (SIOCETHTOOL ETHTOOL_STXCSUM). With offload on, a veth hands
/// CHECKSUM_PARTIAL packets to its peer and a capture shows pseudo-header
/// checksums; off, the checksum is computed in software on transmit, so a
/// wrong incremental update (NAT) shows on the wire.
pub fn tx_checksum_off(ns: &Path, dev: &str) -> Result<(), TopologyError> {
    let what = format!("TX checksum offload off on {dev} in {}", ns.display());
    if dev.len() >= 16 {
        return Err(TopologyError::Io { what, source: std::io::Error::other("interface name too long") });
    }
    let dev = dev.to_string();
    netns::run_in(ns, move || -> std::io::Result<()> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: 0 };
        let mut ifr = IfreqData { name: [0; 16], data: &mut value, _pad: [0; 16] };
        ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: `ifr` is a valid ifreq whose data pointer points at a live
        // ethtool_value for the duration of the call.
        let rc = unsafe { nix::libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr as *mut IfreqData) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })?
    .map_err(io_err(what))
}
