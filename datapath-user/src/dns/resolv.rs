//! Resolver configuration files: the node's upstreams (read), and each
//! served endpoint's `/etc/netns/NAME/resolv.conf` (written), which
//! `ip netns exec NAME` and `datapath run` bind over `/etc/resolv.conf`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{LISTEN_ADDR, MAX_UPSTREAMS};

pub const NODE_RESOLV_CONF: &str = "/etc/resolv.conf";
pub const ETC_NETNS: &str = "/etc/netns";

/// What an endpoint's resolver is told: the embedded server, no search
/// domains (the node's would send short names upstream), `ndots:0` (every
/// name is tried as it is first, as Docker writes it).
pub fn endpoint_resolv_conf() -> String {
    format!("# written by the datapath agent: its embedded DNS\nnameserver {LISTEN_ADDR}\noptions ndots:0\n")
}

/// The `nameserver` lines of a resolv.conf, port 53, at most
/// [`MAX_UPSTREAMS`]. IPv6 servers are kept (the agent's namespace may
/// reach them); loopback ones too: the agent queries them from its own
/// namespace, where a local stub listens.
pub fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|w| w.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_UPSTREAMS)
        .collect()
}

/// The node's upstreams from `path` (none when unreadable: every forward
/// then gets SERVFAIL).
pub fn node_upstreams(path: &Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_nameservers(&text),
        Err(e) => {
            tracing::warn!("embedded DNS: cannot read {}: {e}; no upstream resolvers", path.display());
            Vec::new()
        }
    }
}

pub fn upstreams_of(servers: &[Ipv4Addr]) -> Vec<SocketAddr> {
    servers.iter().take(MAX_UPSTREAMS).map(|ip| SocketAddr::new(IpAddr::V4(*ip), 53)).collect()
}

fn dir(netns_name: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(netns_name)
}

/// Writes `/etc/netns/NAME/resolv.conf` (blocking).
pub fn write(netns_name: &str) -> std::io::Result<()> {
    let d = dir(netns_name);
    std::fs::create_dir_all(&d)?;
    let tmp = d.join(".resolv.conf.tmp");
    std::fs::write(&tmp, endpoint_resolv_conf())?;
    std::fs::rename(&tmp, d.join("resolv.conf"))
}

/// Removes what [`write`] made (the directory only when nothing else is
/// in it); missing is fine (blocking).
pub fn remove(netns_name: &str) {
    let d = dir(netns_name);
    let _ = std::fs::remove_file(d.join("resolv.conf"));
    let _ = std::fs::remove_dir(&d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_like_the_resolver_does() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver   192.0.2.1 \n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        let got: Vec<String> = parse_nameservers(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["127.0.0.53:53", "192.0.2.1:53", "[fe80::1]:53"]);
        assert!(parse_nameservers("").is_empty());
        assert!(endpoint_resolv_conf().contains("nameserver 127.0.0.11\noptions ndots:0\n"));
    }
}
