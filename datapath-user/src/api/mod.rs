//! The agent's API: newline-delimited JSON over a unix socket.
//!
//! A client connects, writes one [`Envelope`] line and reads one
//! [`Response`] line. `trace` then keeps the connection open and streams
//! [`TraceLine`]s until the client goes away. The request types already carry
//! what a CNI plugin needs (an existing netns path, an interface name, a
//! container id), so the plugin will be a thin client of this API.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::DatapathKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub const API_VERSION: u32 = 1;
pub const DEFAULT_SOCKET: &str = "/run/datapath/datapath.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub api_version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    NetworkCreate(NetworkCreate),
    NetworkList,
    NetworkInspect { name: String },
    NetworkRemove { name: String },
    EndpointCreate(EndpointCreate),
    EndpointList,
    EndpointInspect { name: String },
    EndpointRemove { name: String },
    Stats,
    Trace { endpoint: Option<String> },
    ContainerCreate(ContainerCreate),
    ContainerStarted { name: String, pid: u32 },
    ContainerExited { name: String, code: i32 },
    ContainerList,
    ContainerStop { name: String },
    ConntrackList { endpoint: Option<String> },
    ConntrackFlush,
}

/// A tracked flow, attributed to its endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub endpoint: Option<String>,
    #[serde(flatten)]
    pub flow: crate::datapath::conntrack::Flow,
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
}

/// What `ps` shows of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub name: String,
    pub network: String,
    pub endpoint: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub netns_path: PathBuf,
    pub pid: Option<u32>,
    pub status: String,
    pub argv: Vec<String>,
    pub detached: bool,
    pub rm: bool,
    pub log: Option<PathBuf>,
    pub created: String,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Conflict,
    Unsupported,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response { ok: true, result: Some(result), error: None }
    }
    pub fn err(error: ApiError) -> Self {
        Response { ok: false, result: None, error: Some(error) }
    }
}

/// What `network inspect` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub datapath: String,
    pub created: String,
    pub internal: bool,
    pub options: NetworkOptionsView,
    pub endpoints: Vec<NetworkEndpointView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOptionsView {
    pub icc: bool,
    pub masquerade: bool,
    pub uplink: Option<String>,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEndpointView {
    pub name: String,
    pub id: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// What `endpoint inspect` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    pub id: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub gateway: Ipv4Addr,
    /// Name of the namespace under /run/netns when the agent made it.
    pub netns: Option<String>,
    pub netns_path: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The eBPF program on the host veth's ingress (none on the kernel datapath).
    #[serde(default)]
    pub tc: Option<TcView>,
    pub trace: bool,
    pub container_id: Option<String>,
    pub created: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcView {
    pub program: String,
    pub hook: String,
    /// For `bpftool prog show tag T`.
    pub prog_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub counters: Vec<CounterView>,
    /// Connection-tracking table pressure, from the last garbage collection.
    #[serde(default)]
    pub conntrack: Option<crate::datapath::conntrack::GcReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterView {
    pub reason: String,
    pub code: u32,
    pub drop: bool,
    /// An event counter (e.g. flows created), not a packet verdict.
    #[serde(default)]
    pub event: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// One streamed trace record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    pub endpoint: String,
    pub line: String,
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no agent is running at {0} (start one with `datapath agent`, or point --socket/DATAPATH_SOCKET at it)")]
    NoAgent(PathBuf),
    #[error("permission denied on {0}: the agent's socket is for root only")]
    PermissionDenied(PathBuf),
    #[error("talking to the agent at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent sent a reply this client does not understand: {0}")]
    Protocol(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A connection to the agent.
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Client { path: path.as_ref().to_path_buf() }
    }

    async fn open(&self, request: Request) -> Result<(BufReader<UnixStream>, Response), ClientError> {
        let stream = UnixStream::connect(&self.path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NoAgent(self.path.clone())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.path.clone()),
            _ => ClientError::Io { path: self.path.clone(), source: e },
        })?;
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        let mut stream = BufReader::new(stream);
        let mut line = serde_json::to_vec(&Envelope { api_version: API_VERSION, request })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        stream.get_mut().write_all(&line).await.map_err(io)?;
        let mut reply = String::new();
        if stream.read_line(&mut reply).await.map_err(io)? == 0 {
            return Err(ClientError::Protocol("the agent closed the connection without answering".into()));
        }
        let response: Response = serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((stream, response))
    }

    /// Sends one request and returns its result.
    pub async fn call(&self, request: Request) -> Result<serde_json::Value, ClientError> {
        let (_, response) = self.open(request).await?;
        match response {
            Response { ok: true, result, .. } => Ok(result.unwrap_or(serde_json::Value::Null)),
            Response { error: Some(e), .. } => Err(ClientError::Api(e)),
            _ => Err(ClientError::Protocol("error reply without an error".into())),
        }
    }

    /// Sends a request and decodes its result as `T`.
    pub async fn call_as<T: serde::de::DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let v = self.call(request).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Starts a trace stream; `on_line` gets each record until the agent
    /// closes the stream or `on_line` returns false.
    pub async fn trace(
        &self,
        endpoint: Option<String>,
        mut on_line: impl FnMut(TraceLine) -> bool,
    ) -> Result<(), ClientError> {
        let (mut stream, response) = self.open(Request::Trace { endpoint }).await?;
        if let Some(e) = response.error {
            return Err(ClientError::Api(e));
        }
        let mut line = String::new();
        loop {
            line.clear();
            let n = stream
                .read_line(&mut line)
                .await
                .map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
            if n == 0 {
                return Ok(());
            }
            let rec: TraceLine = serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if !on_line(rec) {
                return Ok(());
            }
        }
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
