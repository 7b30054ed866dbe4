//! What the state records of an endpoint made through CNI (`datapath-cni`):
//! the mark that makes it CNI's (keyed by its container id and interface
//! name), the runtime's port mappings and who publishes them.

use serde::{Deserialize, Serialize};

use super::{EndpointSpec, State};
use crate::ports::{Publish, PublishError};

/// The CNI attachment an endpoint is: `EndpointSpec::container_id` +
/// `EndpointSpec::ifname` are its key within its network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniMark {
    /// The CNI network's name (the configuration's `name`), part of the key:
    /// two CNI configurations on one datapath network keep their own.
    pub name: String,
    /// The runtime's `portMappings` (CNI capability) when a chained
    /// `portmap` plugin publishes them (netfilter DNAT in the node; the
    /// configuration's `"portMappings": "portmap"`): the endpoint's TCP
    /// segments of flows the eBPF conntrack does not know (the replies of
    /// those DNATed connections) are handed to the kernel
    /// (`EP_F_KERNEL_FLOWS`). Empty when the datapath publishes them (the
    /// default): they are then the endpoint's published ports
    /// (`EndpointSpec::ports`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of the CNI `portMappings` capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp" or "udp".
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

/// Who publishes an attachment's `portMappings`: the datapath's own port
/// publishing (eBPF, the default) or a `portmap` plugin chained after
/// `datapath-cni` (the network configuration's `"portMappings": "portmap"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortPublishing {
    #[default]
    Datapath,
    Portmap,
}

impl PortMapping {
    /// The port the datapath publishes for this mapping: `hostIP` empty or
    /// absent is every address of the node; `tcp` or `udp`.
    pub fn to_publish(&self) -> Result<Vec<Publish>, PublishError> {
        let ip = self.host_ip.as_deref().unwrap_or("");
        let ip = match ip {
            "0.0.0.0" | "::" => String::new(),
            // `[fd00::1]:8080:80`, the form `ports::parse` reads.
            v6 if v6.contains(':') => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let proto = self.protocol.to_ascii_lowercase();
        crate::ports::parse(&format!("{ip}:{}:{}/{proto}", self.host_port, self.container_port))
    }

    /// Every mapping's port (duplicates once; two that conflict refused).
    pub fn publish_all(mappings: &[PortMapping]) -> Result<Vec<Publish>, PublishError> {
        let mut out: Vec<Publish> = Vec::new();
        for m in mappings {
            for p in m.to_publish()? {
                if out.contains(&p) {
                    continue;
                }
                if let Some(o) = out.iter().find(|o| o.conflicts(&p)) {
                    return Err(PublishError::Invalid {
                        spec: m.to_string(),
                        why: format!("{} conflicts with {o}", p.host()),
                    });
                }
                out.push(p);
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.as_deref().filter(|s| !s.is_empty()).unwrap_or("0.0.0.0");
        write!(f, "{ip}:{}->{}/{}", self.host_port, self.container_port, self.protocol)
    }
}

impl State {
    /// The endpoint CNI network `cni_network` made for `container_id` +
    /// `ifname` on the datapath network `network`.
    pub fn cni_endpoint(
        &self,
        network: &str,
        cni_network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<&EndpointSpec> {
        self.endpoints.values().find(|e| {
            e.network == network
                && e.cni.as_ref().is_some_and(|c| c.name == cni_network)
                && e.ifname == ifname
                && e.container_id.as_deref() == Some(container_id)
        })
    }

    /// Every endpoint CNI network `cni_network` made on `network`.
    pub fn cni_endpoints<'a>(
        &'a self,
        network: &'a str,
        cni_network: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSpec> + 'a {
        self.endpoints_of(network).filter(move |e| e.cni.as_ref().is_some_and(|c| c.name == cni_network))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_have_the_cni_wire_form() {
        let m: PortMapping =
            serde_json::from_str(r#"{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}"#).unwrap();
        assert_eq!(m.to_string(), "0.0.0.0:8080->80/tcp");
        let m: PortMapping = serde_json::from_str(r#"{"hostPort":53,"containerPort":5353}"#).unwrap();
        assert_eq!(m.protocol, "tcp");
        assert!(serde_json::from_str::<PortMapping>(r#"{"hostPort":70000,"containerPort":1}"#).is_err());
    }

    fn mapping(json: &str) -> PortMapping {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn port_mappings_become_published_ports() {
        use crate::ports::Proto;
        // hostIP empty, absent, 0.0.0.0 or ::: every address of the node.
        for m in [
            r#"{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}"#,
            r#"{"hostPort":8080,"containerPort":80}"#,
            r#"{"hostPort":8080,"containerPort":80,"hostIP":"0.0.0.0"}"#,
            r#"{"hostPort":8080,"containerPort":80,"hostIP":"::"}"#,
        ] {
            let p = mapping(m).to_publish().unwrap();
            assert_eq!(p, vec![Publish { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp }]);
        }
        let p = mapping(r#"{"hostPort":53,"containerPort":5353,"protocol":"UDP","hostIP":"203.0.113.2"}"#)
            .to_publish()
            .unwrap();
        assert_eq!(
            p,
            vec![Publish {
                host_ip: Some(std::net::Ipv4Addr::new(203, 0, 113, 2).into()),
                host_port: 53,
                container_port: 5353,
                proto: Proto::Udp
            }]
        );
        let v6 = mapping(r#"{"hostPort":80,"containerPort":8080,"hostIP":"fd00::9"}"#).to_publish().unwrap();
        assert_eq!(v6[0].host_ip, Some("fd00::9".parse().unwrap()), "an IPv6 host address: IPv6 only");
        for bad in [
            r#"{"hostPort":80,"containerPort":80,"protocol":"sctp"}"#,
            r#"{"hostPort":80,"containerPort":80,"hostIP":"::1"}"#,
            r#"{"hostPort":80,"containerPort":80,"hostIP":"nope"}"#,
            r#"{"hostPort":0,"containerPort":80}"#,
        ] {
            assert!(mapping(bad).to_publish().is_err(), "{bad}");
        }
        // The same twice is one port; one host port twice is refused.
        let a = mapping(r#"{"hostPort":8080,"containerPort":80}"#);
        let b = mapping(r#"{"hostPort":8080,"containerPort":81,"hostIP":"203.0.113.2"}"#);
        assert_eq!(PortMapping::publish_all(&[a.clone(), a.clone()]).unwrap().len(), 1);
        let e = PortMapping::publish_all(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("conflicts"), "{e}");
        assert_eq!(serde_json::to_string(&PortPublishing::Portmap).unwrap(), r#""portmap""#);
        assert_eq!(serde_json::from_str::<PortPublishing>(r#""datapath""#).unwrap(), PortPublishing::Datapath);
    }
}
