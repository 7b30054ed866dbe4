//! Docker's published ports (`com.docker.network.portmap`, the list of
//! libnetwork `PortBinding`s handed to `ProgramExternalConnectivity`)
//! turned into the datapath's own publications ([`Publish`]).
//!
//! Docker gives a remote driver the bindings as the user wrote them: it is
//! the driver that allocates a host port (libnetwork's bridge driver does
//! it with its port allocator). `HostPort` 0 (`-p 80`, `-P`) is kept as 0:
//! the agent chooses the port (the first free one of
//! [`crate::ports::CHOSEN_PORTS`], Docker's own default range), and
//! [`bindings`] gives Docker the ports actually published (through
//! `EndpointOperInfo`, which `docker port` and `docker ps` read). A host
//! port range for one container port (`-p 8000-8010:80`, "any free one of
//! these") is refused with a clear error. `HostIP` empty, `0.0.0.0` or
//! `::` is every address of the node (IPv4, and IPv6 for an endpoint with
//! an IPv6 address); an IPv4 or IPv6 address publishes on that family only.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::ports::{Proto, Publish};

/// One libnetwork `types.PortBinding`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PortBinding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP")]
    host_ip: Option<String>,
    #[serde(rename = "HostPort")]
    host_port: u16,
    #[serde(rename = "HostPortEnd")]
    host_port_end: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortmapError {
    #[error("malformed com.docker.network.portmap: {0}")]
    Malformed(String),
    #[error("published port {0}: protocol {1} is not supported (tcp and udp are)")]
    Proto(u16, u8),
    #[error("published port {0}: container port 0 is not a port")]
    NoPort(u16),
    #[error("published port {port}: a host port range ({lo}-{hi}) for one container port is not supported: give one host port")]
    HostRange { port: u16, lo: u16, hi: u16 },
    #[error("published port {0}: host IP {1:?} is not an IPv4 address")]
    HostIp(u16, String),
}

/// The publications `portmap` (the option's value; absent: none) asks for.
pub fn publications(portmap: Option<&Value>) -> Result<Vec<Publish>, PortmapError> {
    let Some(v) = portmap.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let bindings: Vec<PortBinding> =
        serde_json::from_value(v.clone()).map_err(|e| PortmapError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    for b in bindings {
        let proto = match b.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            p => return Err(PortmapError::Proto(b.port, p)),
        };
        if b.port == 0 {
            return Err(PortmapError::NoPort(b.port));
        }
        if b.host_port != 0 && b.host_port_end != 0 && b.host_port_end != b.host_port {
            return Err(PortmapError::HostRange { port: b.port, lo: b.host_port, hi: b.host_port_end });
        }
        let host_ip = match b.host_ip.as_deref().unwrap_or("") {
            "" => None,
            s => match s.parse::<IpAddr>() {
                Ok(a) if a.is_unspecified() => None,
                Ok(a) => Some(a),
                Err(_) => return Err(PortmapError::HostIp(b.port, s.to_string())),
            },
        };
        let p = Publish { host_ip, host_port: b.host_port, container_port: b.port, proto };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `ports` (an endpoint's published ports) as Docker's portmap.
pub fn bindings(ports: &[Publish]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|p| {
                serde_json::json!({
                    "Proto": p.proto.number(),
                    "IP": "",
                    "Port": p.container_port,
                    "HostIP": p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).to_string(),
                    "HostPort": p.host_port,
                    "HostPortEnd": p.host_port,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn docker_bindings_become_publications() {
        let v = json!([
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353},
            {"Proto": 6, "Port": 81, "HostIP": "0.0.0.0", "HostPort": 8081, "HostPortEnd": 0}
        ]);
        let p = publications(Some(&v)).unwrap();
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            p,
            vec![
                Publish { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp },
                Publish { host_ip: lo, host_port: 5353, container_port: 53, proto: Proto::Udp },
                Publish { host_ip: None, host_port: 8081, container_port: 81, proto: Proto::Tcp },
            ]
        );
        let back = bindings(&p);
        assert_eq!(
            back[1],
            json!({"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353, "HostPortEnd": 5353})
        );
        assert_eq!(publications(Some(&back)).unwrap(), p);
        let chosen = publications(Some(&json!([{"Proto": 6, "Port": 80, "HostPort": 0, "HostPortEnd": 0}]))).unwrap();
        assert_eq!(chosen, vec![Publish { host_ip: None, host_port: 0, container_port: 80, proto: Proto::Tcp }]);
        assert_eq!(publications(None).unwrap(), vec![]);
        assert_eq!(publications(Some(&json!(null))).unwrap(), vec![]);
    }

    #[test]
    fn unsupported_bindings_are_refused() {
        for (b, why) in [
            (json!({"Proto": 132, "Port": 80, "HostPort": 80}), "protocol 132"),
            (json!({"Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 8010}), "8000-8010"),
            (json!({"Proto": 6, "Port": 80, "HostIP": "x", "HostPort": 80}), "\"x\""),
        ] {
            let e = publications(Some(&json!([b]))).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should say {why}");
        }
        assert!(publications(Some(&json!({"Proto": 6}))).is_err());
    }
}
