//! The agent's API: newline-delimited JSON over a unix socket.
//!
//! A client connects, writes one [`Envelope`] line and reads one
//! [`Response`] line. `trace` then keeps the connection open and streams
//! [`TraceLine`]s until the client goes away. The CNI plugin (`datapath-cni`)
//! is a thin client of this API: its verbs are the `cni_*` requests
//! (`api/cni.rs`), `STATUS` is `network_inspect`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ports::Publish;
use crate::state::DatapathKind;

mod client;
mod cni;
mod error;
mod views;

pub use client::{Client, ClientError};
pub use cni::{CniAdd, CniAttachment, CniAttachmentKey, CniGc, CniGcReport, CniKey};
pub use error::{ApiError, ErrorKind};
pub use views::*;

pub const API_VERSION: u32 = 1;
pub const DEFAULT_SOCKET: &str = "/run/datapath/datapath.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub api_version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// Why a request line was refused before it reached the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, not an object, no op, wrong field types.
    Malformed(String),
    /// A field the request does not have (a typo would otherwise be ignored).
    UnknownField(String),
    Version(u32),
}

impl Envelope {
    /// Parses one request line strictly: the version is checked first, and a
    /// field the request does not have is an error, not silently ignored.
    pub fn parse(line: &str) -> Result<Envelope, ParseError> {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| ParseError::Malformed(e.to_string()))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(ParseError::Malformed("a request is a JSON object".into()));
        };
        let version =
            fields.remove("api_version").ok_or_else(|| ParseError::Malformed("missing api_version".into()))?;
        let api_version: u32 = serde_json::from_value(version).map_err(|e| ParseError::Malformed(e.to_string()))?;
        if api_version != API_VERSION {
            return Err(ParseError::Version(api_version));
        }
        let request: Request = serde_json::from_value(serde_json::Value::Object(fields.clone()))
            .map_err(|e| ParseError::Malformed(e.to_string()))?;
        // Every field of a request is serialized (none is skipped), so a field
        // of the line missing from the re-serialized request is unknown.
        let known = serde_json::to_value(&request).map_err(|e| ParseError::Malformed(e.to_string()))?;
        if let Some(unknown) = fields.keys().find(|k| known.get(k.as_str()).is_none()) {
            return Err(ParseError::UnknownField(unknown.clone()));
        }
        Ok(Envelope { api_version, request })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    NetworkCreate(NetworkCreate),
    NetworkList,
    NetworkInspect {
        name: String,
    },
    NetworkRemove {
        name: String,
    },
    EndpointCreate(EndpointCreate),
    EndpointList,
    EndpointInspect {
        name: String,
    },
    EndpointRemove {
        name: String,
    },
    Stats,
    Trace {
        endpoint: Option<String>,
    },
    ContainerCreate(ContainerCreate),
    ContainerStarted {
        name: String,
        pid: u32,
    },
    ContainerExited {
        name: String,
        code: i32,
    },
    ContainerList,
    ContainerStop {
        name: String,
    },
    ConntrackList {
        endpoint: Option<String>,
    },
    ConntrackFlush,
    CniAdd(CniAdd),
    CniDel(CniKey),
    CniCheck(CniKey),
    CniGc(CniGc),
    Port {
        name: String,
    },
    /// Sets the ports an existing endpoint publishes (all of them: an
    /// empty list withdraws every one); validated like a create's.
    EndpointPublish {
        name: String,
        publish: Vec<Publish>,
    },
    /// Puts an existing endpoint on one more network (`network connect`).
    NetworkConnect(NetworkConnect),
    /// Takes an endpoint off a network it was connected to.
    NetworkDisconnect {
        network: String,
        endpoint: String,
    },
}

/// `datapath network connect NET NAME [--ip IP] [--alias A]...`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConnect {
    pub network: String,
    pub endpoint: String,
    /// Its address on `network`; the lowest free one when absent.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address on a dual-stack `network`; the lowest free one
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// More names it answers to on `network` (for the embedded DNS).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `datapath run`: what to run and how it is networked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCreate {
    /// Generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// `bridge` (default), a network name, `host`, `none` or `container:NAME`.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its endpoint's IPv6 address on a dual-stack first network
    /// (`--ip6`; network mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub argv: Vec<String>,
    /// The agent starts the command itself, output to a log file.
    #[serde(default)]
    pub detach: bool,
    /// Remove the endpoint when the command exits.
    #[serde(default)]
    pub rm: bool,
    /// Working directory for a detached command.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Ports its endpoint publishes (`-p`; network mode only).
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Networks its endpoint is connected to besides `network`, in order
    /// (`--network` given more than once; network mode only).
    #[serde(default)]
    pub more_networks: Vec<String>,
    /// Its endpoint's aliases (`--alias`; network mode only).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its endpoint's DNS servers (`--dns`; network mode only).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

/// What `ps` shows of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub name: String,
    pub network: String,
    pub endpoint: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// Its endpoint's IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub netns_path: PathBuf,
    pub pid: Option<u32>,
    pub status: String,
    pub argv: Vec<String>,
    pub detached: bool,
    pub rm: bool,
    pub log: Option<PathBuf>,
    pub created: String,
    /// What its endpoint publishes.
    #[serde(default)]
    pub ports: Vec<Publish>,
    /// Its endpoint's other networks (`--network` given more than once,
    /// `network connect`).
    #[serde(default)]
    pub attachments: Vec<AttachmentView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    pub subnet: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// `ebpf` (default) or `kernel`.
    #[serde(default)]
    pub datapath: Option<DatapathKind>,
    #[serde(default)]
    pub internal: bool,
    /// Inter-container communication; true when absent.
    #[serde(default)]
    pub icc: Option<bool>,
    /// Masquerade traffic leaving the node; true when absent (false for internal networks).
    #[serde(default)]
    pub masquerade: Option<bool>,
    #[serde(default)]
    pub uplink: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Who asks, when not a user (`docker`: Docker's remote driver); shown by `ls`.
    #[serde(default)]
    pub owner: Option<String>,
    /// Dual stack: an IPv6 subnet too (`subnet_v6`, or a random
    /// unique-local /64).
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub subnet_v6: Option<String>,
    #[serde(default)]
    pub gateway_v6: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCreate {
    pub name: String,
    /// Network name; the default network when absent.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Trace this endpoint's packets from the start.
    #[serde(default)]
    pub trace: bool,
    /// Attach to this existing namespace (CNI_NETNS) instead of creating
    /// `/run/netns/NAME`.
    #[serde(default)]
    pub netns_path: Option<PathBuf>,
    /// Interface name inside the namespace (CNI_IFNAME); `eth0` by default.
    #[serde(default)]
    pub ifname: Option<String>,
    /// Caller's id for the attachment (CNI_CONTAINERID).
    #[serde(default)]
    pub container_id: Option<String>,
    /// MAC address of the container end (`aa:bb:cc:dd:ee:ff`); derived from
    /// the address when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Leave the container end of the veth in the node namespace for the
    /// caller to move (Docker's remote driver); no namespace is made or
    /// entered, no address is set inside.
    #[serde(default)]
    pub detached: bool,
    /// Who asks, when not a user (`docker`); shown by `ls`.
    #[serde(default)]
    pub owner: Option<String>,
    /// Published ports (`-p`).
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Its IPv6 address on a dual-stack network (the lowest free one when absent).
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// Networks it is connected to besides `network`, in order, each with
    /// the lowest free address (`--network` given more than once); the
    /// create is all-or-nothing.
    #[serde(default)]
    pub more_networks: Vec<String>,
    /// More names on its network for the embedded DNS (`--alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// DNS servers its embedded DNS forwards to (`--dns`), instead of the
    /// node's.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response { ok: true, result: Some(result), error: None }
    }
    pub fn err(error: ApiError) -> Self {
        Response { ok: false, result: None, error: Some(error) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let env = Envelope {
            api_version: 1,
            request: Request::EndpointCreate(EndpointCreate {
                name: "a".into(),
                ip: Some(Ipv4Addr::new(10, 10, 0, 5)),
                ..Default::default()
            }),
        };
        let s = serde_json::to_string(&env).unwrap();
        assert!(s.contains(r#""op":"endpoint_create""#), "{s}");
        assert!(s.contains(r#""ip":"10.10.0.5""#), "{s}");
        assert_eq!(serde_json::from_str::<Envelope>(&s).unwrap(), env);
        let rm: Envelope = serde_json::from_str(r#"{"api_version":1,"op":"network_remove","name":"n"}"#).unwrap();
        assert_eq!(rm.request, Request::NetworkRemove { name: "n".into() });
        let ping: Envelope = serde_json::from_str(r#"{"api_version":1,"op":"ping"}"#).unwrap();
        assert_eq!(ping.request, Request::Ping);
    }

    #[test]
    fn connect_requests_default_and_refuse_unknown_fields() {
        let line = r#"{"api_version":1,"op":"network_connect","network":"b","endpoint":"x"}"#;
        let env = Envelope::parse(line).unwrap();
        let want =
            NetworkConnect { network: "b".into(), endpoint: "x".into(), ip: None, ip6: None, aliases: Vec::new() };
        assert_eq!(env.request, Request::NetworkConnect(want));
        let bad = r#"{"api_version":1,"op":"network_connect","network":"b","endpoint":"x","alias":["a"]}"#;
        assert_eq!(Envelope::parse(bad), Err(ParseError::UnknownField("alias".into())));
        let off = r#"{"api_version":1,"op":"network_disconnect","network":"b","endpoint":"x"}"#;
        let env = Envelope::parse(off).unwrap();
        assert_eq!(env.request, Request::NetworkDisconnect { network: "b".into(), endpoint: "x".into() });
        // Old clients' creates still parse: the new fields default.
        let old = r#"{"api_version":1,"op":"endpoint_create","name":"a"}"#;
        let Request::EndpointCreate(c) = Envelope::parse(old).unwrap().request else { panic!("not a create") };
        assert!(c.more_networks.is_empty() && c.aliases.is_empty());
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        let ok = r#"{"api_version":1,"op":"network_create","name":"n","subnet":"10.1.0.0/24"}"#;
        assert!(Envelope::parse(ok).is_ok());
        for (bad, field) in [
            (r#"{"api_version":1,"op":"network_create","name":"n","subnet":"10.1.0.0/24","subnte":"x"}"#, "subnte"),
            (r#"{"api_version":1,"op":"ping","force":true}"#, "force"),
            (r#"{"api_version":1,"op":"endpoint_remove","name":"a","all":true}"#, "all"),
        ] {
            assert_eq!(Envelope::parse(bad), Err(ParseError::UnknownField(field.into())), "{bad}");
        }
        assert_eq!(Envelope::parse(r#"{"api_version":2,"op":"ping"}"#), Err(ParseError::Version(2)));
        for bad in [r#"[1]"#, r#"{"op":"ping"}"#, r#"{"api_version":"1","op":"ping"}"#, "nope"] {
            assert!(matches!(Envelope::parse(bad), Err(ParseError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn malformed_requests_are_rejected() {
        for bad in [
            r#"{"api_version":1,"op":"format_disk"}"#,
            r#"{"api_version":1}"#,
            r#"{"api_version":1,"op":"endpoint_create"}"#,
            r#"{"api_version":1,"op":"endpoint_create","name":"a","ip":"10.10.0.300"}"#,
            r#"not json"#,
        ] {
            assert!(serde_json::from_str::<Envelope>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_roundtrip() {
        let r = Response::err(ApiError::conflict("taken"));
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":{"kind":"conflict","message":"taken"}}"#);
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), r);
    }
}
