//! The CNI specification (1.1, with 1.0.0 and 0.4.0 configurations): what a
//! runtime hands a plugin (environment, network configuration on stdin),
//! what the plugin answers (results, errors with the spec's codes), and the
//! version negotiation. No I/O here: everything is tested without root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use datapath::state::{PortMapping, PortPublishing};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The newest: what errors and `VERSION` use when nothing else is known.
pub const LATEST_VERSION: &str = "1.1.0";

/// Well-known error codes (spec: "Well-known Error Codes").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// `STATUS`: the plugin cannot serve `ADD`.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the agent refused or failed (the message says why).
    pub const AGENT: u32 = 100;
    /// Plugin-specific: `CHECK` found the attachment broken.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit status.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("CNI error {code}: {msg}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: None }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The spec's error JSON, in `version` (the configuration's when it is a
    /// supported one, else the newest).
    pub fn to_json(&self, version: Option<&str>) -> Value {
        let version = version.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(LATEST_VERSION);
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if let Some(d) = &self.details {
            v["details"] = json!(d);
        }
        v
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The oldest configuration version that has this verb.
    fn since(self) -> &'static str {
        match self {
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.4.0",
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`, `K=V;K=V`.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where delegated (IPAM) plugins are.
    pub path: Vec<PathBuf>,
}

/// A container id as the spec allows it: alphanumeric first, then
/// alphanumerics, `_`, `.`, `-`.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// An interface name as Linux and the spec allow it.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Env {
    /// Reads the environment through `var`; what the command needs must be
    /// there and well-formed (code 4 otherwise).
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let invalid = |m: String| CniError::new(code::INVALID_ENV, m);
        let raw = var("CNI_COMMAND").ok_or_else(|| invalid("CNI_COMMAND is not set".into()))?;
        let command = Command::parse(&raw).ok_or_else(|| invalid(format!("unknown CNI_COMMAND {raw:?}")))?;
        let non_empty = |k: &str| var(k).filter(|v| !v.is_empty());
        let mut env = Env {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            args: parse_args(&var("CNI_ARGS").unwrap_or_default()).map_err(invalid)?,
            path: var("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        };
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if needs_container {
            let id = env.container_id.as_deref().ok_or_else(|| invalid("CNI_CONTAINERID is not set".into()))?;
            if !valid_container_id(id) {
                return Err(invalid(format!("invalid CNI_CONTAINERID {id:?}")));
            }
            let ifname = env.ifname.as_deref().ok_or_else(|| invalid("CNI_IFNAME is not set".into()))?;
            if !valid_ifname(ifname) {
                return Err(invalid(format!("invalid CNI_IFNAME {ifname:?}")));
            }
        }
        if matches!(command, Command::Add | Command::Check) && env.netns.is_none() {
            return Err(invalid("CNI_NETNS is not set".into()));
        }
        if !needs_container {
            env.container_id = None;
            env.ifname = None;
        }
        Ok(env)
    }

    /// `IP=` of `CNI_ARGS` (a static address, the convention of the
    /// reference plugins).
    pub fn requested_ip(&self) -> Result<Option<Ipv4Addr>, CniError> {
        self.args
            .get("IP")
            .map(|ip| {
                ip.parse()
                    .map_err(|_| CniError::new(code::INVALID_ENV, format!("CNI_ARGS IP={ip} is not an IPv4 address")))
            })
            .transpose()
    }
}

fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("CNI_ARGS: {pair:?} is not KEY=VALUE"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The network configuration on stdin (one plugin's, from a list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    /// The CNI network's name.
    pub name: String,
    pub plugin_type: String,
    /// The agent's network (`network`; the CNI name when absent).
    pub network: String,
    /// The agent's socket (`socket`; the default one when absent).
    pub socket: Option<PathBuf>,
    /// A delegated IPAM plugin's section (`ipam` with a `type`).
    pub ipam: Option<Value>,
    /// `dns`, returned in the result as the spec says.
    pub dns: Option<Dns>,
    /// `prevResult` (chained, `DEL`, `CHECK`).
    pub prev_result: Option<Value>,
    /// `runtimeConfig.portMappings` (the capability).
    pub port_mappings: Vec<PortMapping>,
    /// Who publishes them (`portMappings`): `"datapath"` (the default), the
    /// datapath's own eBPF port publishing; `"portmap"`, the reference
    /// `portmap` plugin chained after this one (the agent records them and
    /// hands the replies of those flows to the kernel).
    pub port_publishing: PortPublishing,
    /// `cni.dev/valid-attachments` (`GC`).
    pub valid_attachments: Vec<(String, String)>,
    /// The raw document, handed to a delegated plugin unchanged.
    pub raw: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    network: Option<String>,
    socket: Option<PathBuf>,
    ipam: Option<Value>,
    dns: Option<Dns>,
    prev_result: Option<Value>,
    #[serde(rename = "portMappings")]
    port_publishing: Option<String>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}

#[derive(Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// A network name as the spec allows it (the container id alphabet).
pub fn valid_network_name(name: &str) -> bool {
    valid_container_id(name)
}

/// Whether `version` is one of [`SUPPORTED_VERSIONS`].
pub fn supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Orders two `x.y.z` versions.
fn version_key(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl NetConf {
    /// Parses the configuration for `command`: not JSON (or fields of the
    /// wrong type) is code 6, a missing or invalid field code 7, a version
    /// this plugin does not speak (or too old for the verb) code 1.
    pub fn parse(bytes: &[u8], command: Command) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration is not valid JSON").with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(code::DECODE, "the network configuration is not a JSON object"));
        }
        let raw: RawConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration").with_details(e.to_string())
        })?;
        let missing = |f: &str| CniError::new(code::INVALID_CONFIG, format!("the network configuration has no {f:?}"));
        let cni_version = raw.cni_version.ok_or_else(|| missing("cniVersion"))?;
        if !supported(&cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("CNI version {cni_version} is not supported (supported: {})", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if version_key(&cni_version) < version_key(command.since()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{command:?} needs a configuration of CNI version {} or later, not {cni_version}",
                    command.since()
                ),
            ));
        }
        let name = raw.name.ok_or_else(|| missing("name"))?;
        if !valid_network_name(&name) {
            return Err(CniError::new(code::INVALID_CONFIG, format!("invalid network name {name:?}")));
        }
        let plugin_type = raw.plugin_type.ok_or_else(|| missing("type"))?;
        let network = raw.network.unwrap_or_else(|| name.clone());
        if network.is_empty() {
            return Err(CniError::new(code::INVALID_CONFIG, "\"network\" is empty"));
        }
        let ipam = raw.ipam.filter(|i| i.as_object().is_some_and(|o| !o.is_empty()));
        if let Some(i) = &ipam {
            if !i.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty() && !t.contains('/')) {
                return Err(CniError::new(code::INVALID_CONFIG, "\"ipam\" needs a \"type\" (a plugin name)"));
            }
        }
        let port_publishing = match raw.port_publishing.as_deref() {
            None | Some("datapath") => PortPublishing::Datapath,
            Some("portmap") => PortPublishing::Portmap,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("\"portMappings\": {other:?} is neither \"datapath\" nor \"portmap\""),
                ))
            }
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            network,
            socket: raw.socket,
            ipam,
            dns: raw.dns,
            prev_result: raw.prev_result,
            port_mappings: raw.runtime_config.port_mappings,
            port_publishing,
            valid_attachments: raw
                .valid_attachments
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect(),
            raw: bytes.to_vec(),
        })
    }

    /// The delegated IPAM plugin's name.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref().and_then(|i| i.get("type")).and_then(Value::as_str)
    }
}

/// `VERSION`'s answer: the version asked for (when supported) and every
/// version this plugin speaks.
pub fn version_info(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(String::from))
        .filter(|v| supported(v))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// `dns` of a configuration and of a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `a.b.c.d/len`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A plugin's `ADD` result (the current form; [`CniResult::to_json`]
/// writes it in the configuration's version).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported version (a `prevResult`, a delegated
    /// IPAM plugin's answer): 0.4.0's `ips[].version` is dropped.
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        let mut v = v.clone();
        if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                if let Some(o) = ip.as_object_mut() {
                    o.remove("version");
                }
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("cniVersion");
            for k in ["interfaces", "ips", "routes", "dns"] {
                if o.get(k).is_some_and(Value::is_null) {
                    o.remove(k);
                }
            }
        }
        serde_json::from_value(v)
            .map_err(|e| CniError::new(code::DECODE, "cannot decode a CNI result").with_details(e.to_string()))
    }

    /// Appends `other` (this plugin's part) after what a previous plugin
    /// returned: interface indexes shift, `dns` is kept unless empty.
    pub fn chain(mut self, other: CniResult) -> CniResult {
        let shift = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }

    /// The result as JSON of CNI `version`: 0.4.0 has `ips[].version`, only
    /// 1.1.0 has `interfaces[].mtu`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        v["cniVersion"] = json!(version);
        if version_key(version) < (1, 1, 0) {
            if let Some(ifs) = v.get_mut("interfaces").and_then(Value::as_array_mut) {
                for i in ifs.iter_mut().filter_map(Value::as_object_mut) {
                    i.remove("mtu");
                }
            }
        }
        if version_key(version) < (1, 0, 0) {
            if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                    let six = ip.get("address").and_then(Value::as_str).is_some_and(|a| a.contains(':'));
                    ip.insert("version".into(), json!(if six { "6" } else { "4" }));
                }
            }
        }
        if self.dns.is_empty() {
            if let Some(o) = v.as_object_mut() {
                o.remove("dns");
            }
        }
        v
    }

    /// The first IPv4 address (and prefix length) of the result.
    pub fn first_ipv4(&self) -> Option<ipnet::Ipv4Net> {
        self.ips.iter().find_map(|ip| ip.address.parse::<ipnet::Ipv4Net>().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::parse(|k| vars.get(k).cloned())
    }

    const ADD: &[(&str, &str)] =
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0")];

    #[test]
    fn the_environment_is_checked_per_command() {
        let e = env(ADD).unwrap();
        assert_eq!(
            (e.command, e.container_id.as_deref(), e.ifname.as_deref()),
            (Command::Add, Some("c1"), Some("eth0"))
        );
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
        assert_eq!(env(&[("CNI_COMMAND", "STATUS")]).unwrap().command, Command::Status);
        assert_eq!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/a:/b")]).unwrap().path.len(), 2);
        // DEL needs no namespace (it may be gone).
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]).is_ok());
        for drop in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
            let vars: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != drop).collect();
            assert_eq!(env(&vars).unwrap_err().code, code::INVALID_ENV, "without {drop}");
        }
        for (k, bad) in [
            ("CNI_COMMAND", "FROB"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "sixteen-chars-xx"),
            ("CNI_IFNAME", ".."),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_ARGS", "novalue"),
        ] {
            let mut vars: Vec<_> = ADD.iter().copied().filter(|(key, _)| *key != k).collect();
            vars.push((k, bad));
            assert_eq!(env(&vars).unwrap_err().code, code::INVALID_ENV, "{k}={bad}");
        }
        let mut vars = ADD.to_vec();
        vars.push(("CNI_ARGS", "IgnoreUnknown=1;IP=10.1.0.9"));
        assert_eq!(env(&vars).unwrap().requested_ip().unwrap(), Some(Ipv4Addr::new(10, 1, 0, 9)));
        let mut vars = ADD.to_vec();
        vars.push(("CNI_ARGS", "IP=10.1.0.300"));
        assert_eq!(env(&vars).unwrap().requested_ip().unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn configurations_are_parsed_and_refused_with_the_right_codes() {
        let ok = br#"{"cniVersion":"1.1.0","name":"dpnet","type":"datapath-cni","network":"web",
            "socket":"/run/x.sock","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],"somethingElse":1}"#;
        let c = NetConf::parse(ok, Command::Add).unwrap();
        assert_eq!((c.name.as_str(), c.network.as_str()), ("dpnet", "web"));
        assert_eq!(c.socket, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(c.port_mappings[0].host_port, 8080);
        // The datapath publishes them unless the configuration says portmap.
        assert_eq!(c.port_publishing, PortPublishing::Datapath);
        assert_eq!(c.valid_attachments, vec![("c1".to_string(), "eth0".to_string())]);
        // The network defaults to the CNI name.
        let c = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"web","type":"datapath-cni"}"#, Command::Add).unwrap();
        assert_eq!(c.network, "web");
        for (v, want) in [("datapath", PortPublishing::Datapath), ("portmap", PortPublishing::Portmap)] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","name":"web","type":"datapath-cni","portMappings":"{v}"}}"#);
            assert_eq!(NetConf::parse(conf.as_bytes(), Command::Add).unwrap().port_publishing, want);
        }
        for (bad, want, cmd) in [
            (&b"{not json"[..], code::DECODE, Command::Add),
            (b"[1,2]", code::DECODE, Command::Add),
            (br#"{"cniVersion":1,"name":"n","type":"t"}"#, code::DECODE, Command::Add),
            (br#"{"name":"n","type":"t"}"#, code::INVALID_CONFIG, Command::Add),
            (br#"{"cniVersion":"1.0.0","type":"t"}"#, code::INVALID_CONFIG, Command::Add),
            (br#"{"cniVersion":"1.0.0","name":"n"}"#, code::INVALID_CONFIG, Command::Add),
            (br#"{"cniVersion":"1.0.0","name":"bad name","type":"t"}"#, code::INVALID_CONFIG, Command::Add),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"subnet":"x"}}"#,
                code::INVALID_CONFIG,
                Command::Add,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","portMappings":"iptables"}"#,
                code::INVALID_CONFIG,
                Command::Add,
            ),
            (br#"{"cniVersion":"1.0.0","name":"n","type":"t","portMappings":true}"#, code::DECODE, Command::Add),
            (br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#, code::INCOMPATIBLE_VERSION, Command::Add),
            (br#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#, code::INCOMPATIBLE_VERSION, Command::Add),
            (br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#, code::INCOMPATIBLE_VERSION, Command::Status),
            (br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#, code::INCOMPATIBLE_VERSION, Command::Gc),
        ] {
            let e = NetConf::parse(bad, cmd).unwrap_err();
            assert_eq!(e.code, want, "{}: {e}", String::from_utf8_lossy(bad));
        }
        assert!(NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#, Command::Gc).is_ok());
    }

    #[test]
    fn version_negotiation() {
        let v = version_info(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(version_info(b"")["cniVersion"], LATEST_VERSION);
        assert_eq!(version_info(br#"{"cniVersion":"9.9.9"}"#)["cniVersion"], LATEST_VERSION);
    }

    fn ours() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:0a:01:00:02".into(),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig { address: "10.1.0.2/24".into(), gateway: Some("10.1.0.1".into()), interface: Some(0) }],
            routes: vec![Route { dst: "0.0.0.0/0".into(), gw: Some("10.1.0.1".into()) }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn results_are_written_in_the_asked_version() {
        let r = ours();
        let v11 = r.to_json("1.1.0");
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert_eq!(v11["interfaces"][0]["sandbox"], "/run/netns/x");
        assert_eq!(v11["ips"][0]["interface"], 0);
        assert_eq!(v11["ips"][0]["gateway"], "10.1.0.1");
        assert!(v11["ips"][0].get("version").is_none());
        assert!(v11.get("dns").is_none());
        let v10 = r.to_json("1.0.0");
        assert!(v10["interfaces"][0].get("mtu").is_none());
        let v04 = r.to_json("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        // Read back from any version.
        assert_eq!(CniResult::from_value(&v04).unwrap().ips, r.ips);
        assert_eq!(CniResult::from_value(&v11).unwrap(), r);
        assert_eq!(r.first_ipv4().unwrap().to_string(), "10.1.0.2/24");
    }

    #[test]
    fn chained_results_keep_the_previous_plugins_part() {
        let prev = CniResult {
            interfaces: vec![Interface { name: "tap0".into(), ..Default::default() }],
            ips: vec![IpConfig { address: "192.168.9.2/24".into(), gateway: None, interface: Some(0) }],
            routes: vec![],
            dns: Dns { nameservers: vec!["192.168.9.1".into()], ..Default::default() },
        };
        let r = prev.chain(ours());
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.ips[1].interface, Some(1));
        assert_eq!(r.dns.nameservers, vec!["192.168.9.1".to_string()]);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn errors_have_the_spec_form() {
        let e = CniError::new(code::INVALID_CONFIG, "bad").with_details("why");
        assert_eq!(e.to_json(Some("1.0.0")), json!({"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}));
        assert_eq!(CniError::new(1, "x").to_json(Some("0.1.0"))["cniVersion"], LATEST_VERSION);
        assert!(CniError::new(1, "x").to_json(None).get("details").is_none());
    }
}
