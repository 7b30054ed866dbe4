//! The remote driver's calls, each turned into the agent's own operations
//! (network and endpoint create/remove through [`Agent::handle`], views from
//! its snapshot). The driver keeps no state of its own: Docker's network
//! `N` is the datapath network `docker-N[..12]`, its endpoint `E` the
//! endpoint `docker-E[..12]`, both persisted by the agent and marked
//! `owner: docker`, so an agent restart answers Docker's next calls as
//! before. Docker's published ports (`-p`) become the endpoint's published
//! ports (the datapath's eBPF port publishing, persisted by the agent);
//! Docker's portmap and exposed ports are also kept in memory for
//! `EndpointOperInfo`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use thiserror::Error;

use super::portmap;
use super::wire::*;
use crate::agent::Agent;
use crate::api::{ApiError, EndpointCreate, EndpointView, ErrorKind, NetworkCreate, NetworkView, Request};

/// The `owner` of what the driver makes.
pub const OWNER: &str = "docker";
/// Docker names the interface it moves into the sandbox PREFIX + number.
pub const DST_PREFIX: &str = "eth";

const OPT_GENERIC: &str = "com.docker.network.generic";
const OPT_INTERNAL: &str = "com.docker.network.internal";
const OPT_IPV6: &str = "com.docker.network.enable_ipv6";
const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
const OPT_MASQ: &str = "com.docker.network.bridge.enable_ip_masquerade";
const OPT_MTU: &str = "com.docker.network.driver.mtu";
/// Driver options of ours: `-o datapath=kernel` picks the baseline datapath.
const OPT_DATAPATH: &str = "datapath";
const OPT_PORTMAP: &str = "com.docker.network.portmap";
const OPT_EXPOSED: &str = "com.docker.network.endpoint.exposedports";

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Agent(#[from] ApiError),
}

impl DriverError {
    /// The HTTP status the error goes back with (the body is `{"Err": ...}`).
    pub fn status(&self) -> u16 {
        match self {
            DriverError::BadRequest(_) => 400,
            DriverError::NotFound(_) => 404,
            DriverError::Agent(e) => match e.kind {
                ErrorKind::InvalidArgument => 400,
                ErrorKind::NotFound => 404,
                ErrorKind::Conflict => 409,
                _ => 500,
            },
        }
    }
}

type Result<T> = std::result::Result<T, DriverError>;

pub struct Driver {
    agent: Arc<Agent>,
    /// ProgramExternalConnectivity's options per endpoint (ports published
    /// and exposed), shown by EndpointOperInfo.
    external: Mutex<HashMap<String, Map<String, Value>>>,
}

/// A Docker id's part in a datapath name: its first 12 characters, like
/// Docker's short ids. Ids are [0-9a-zA-Z] only.
fn short_id(kind: &str, id: &str) -> Result<String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(DriverError::BadRequest(format!("invalid {kind} id {id:?}")));
    }
    Ok(id.chars().take(12).collect())
}

pub fn network_name(id: &str) -> Result<String> {
    short_id("network", id).map(|s| format!("docker-{s}"))
}

pub fn endpoint_name(id: &str) -> Result<String> {
    short_id("endpoint", id).map(|s| format!("docker-{s}"))
}

fn parse<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| DriverError::BadRequest(format!("malformed {method} request: {e}")))
}

/// A boolean option: JSON `true`/`false` or the strings `-o` gives.
fn opt_bool(key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(DriverError::BadRequest(format!("option {key}: expected true or false, got {v}"))),
    }
}

/// `10.30.0.2/24` (or a bare address) into the address.
fn addr_of(what: &str, s: &str) -> Result<Ipv4Addr> {
    let ip = s.split('/').next().unwrap_or_default();
    ip.parse().map_err(|_| DriverError::BadRequest(format!("invalid {what} {s:?}")))
}

/// `fd00::2/64` (or a bare address) into the address.
fn addr6_of(what: &str, s: &str) -> Result<Ipv6Addr> {
    let ip = s.split('/').next().unwrap_or_default();
    ip.parse().map_err(|_| DriverError::BadRequest(format!("invalid {what} {s:?}")))
}

/// The agent's network create for Docker's CreateNetwork.
pub fn network_create(req: &CreateNetworkRequest) -> Result<NetworkCreate> {
    let name = network_name(&req.network_id)?;
    let options = req.options.clone().unwrap_or_default();
    // `--ipv6`: Docker's IPAM hands over the IPv6 pool and gateway (one);
    // without one the agent picks a unique-local /64 as for `--ipv6`.
    let v6 = req.ipv6_data.clone().unwrap_or_default();
    let ipv6 = options.get(OPT_IPV6).map(|v| opt_bool(OPT_IPV6, v)).transpose()?.unwrap_or(false) || !v6.is_empty();
    let (subnet_v6, gateway_v6) = match v6.as_slice() {
        [] => (None, None),
        [one] => {
            let gw = match one.gateway.as_str() {
                "" => None,
                gw => Some(addr6_of("IPv6 gateway", gw)?.to_string()),
            };
            (Some(one.pool.clone()), gw)
        }
        _ => return Err(DriverError::BadRequest("the datapath driver takes one IPv6 subnet per network".into())),
    };
    let v4 = req.ipv4_data.clone().unwrap_or_default();
    let ipam = match v4.as_slice() {
        [one] => one,
        [] => return Err(DriverError::BadRequest("no IPv4 subnet given (IPv4Data is empty)".into())),
        _ => return Err(DriverError::BadRequest("the datapath driver takes one IPv4 subnet per network".into())),
    };
    let gateway = match ipam.gateway.as_str() {
        "" => None,
        gw => Some(addr_of("gateway", gw)?.to_string()),
    };
    let internal = options.get(OPT_INTERNAL).map(|v| opt_bool(OPT_INTERNAL, v)).transpose()?.unwrap_or(false);
    let mut create = NetworkCreate {
        name,
        subnet: ipam.pool.clone(),
        gateway,
        internal,
        owner: Some(OWNER.into()),
        ipv6,
        subnet_v6,
        gateway_v6,
        ..Default::default()
    };
    let generic = match options.get(OPT_GENERIC) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(DriverError::BadRequest(format!("option {OPT_GENERIC}: not an object: {other}"))),
    };
    for (key, v) in &generic {
        match key.as_str() {
            OPT_ICC => create.icc = Some(opt_bool(key, v)?),
            OPT_MASQ => create.masquerade = Some(opt_bool(key, v)?),
            OPT_MTU => {
                let mtu = match v {
                    Value::String(s) => s.parse().ok(),
                    Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                    _ => None,
                };
                create.mtu =
                    Some(mtu.ok_or_else(|| DriverError::BadRequest(format!("option {key}: invalid MTU {v}")))?);
            }
            OPT_DATAPATH => {
                let kind = v.as_str().and_then(|s| serde_json::from_value(json!(s)).ok());
                create.datapath = Some(kind.ok_or_else(|| {
                    DriverError::BadRequest(format!("option {key}: expected \"ebpf\" or \"kernel\", got {v}"))
                })?);
            }
            k if k.starts_with("com.docker.network.bridge.") || k.starts_with("com.docker.network.driver.") => {
                return Err(DriverError::BadRequest(format!(
                    "option {k} is not supported by the datapath driver (supported: {OPT_ICC}, {OPT_MASQ}, {OPT_MTU}, {OPT_DATAPATH})"
                )));
            }
            other => tracing::warn!(option = other, "docker: ignoring an option the datapath driver does not know"),
        }
    }
    if internal && create.masquerade == Some(true) {
        return Err(DriverError::BadRequest("an internal network cannot masquerade".into()));
    }
    if internal {
        create.masquerade = None;
    }
    Ok(create)
}

impl Driver {
    pub fn new(agent: Arc<Agent>) -> Self {
        Driver { agent, external: Mutex::new(HashMap::new()) }
    }

    /// Serves one call: `method` is the request path (`/NetworkDriver.Join`).
    pub async fn call(&self, method: &str, body: &[u8]) -> Result<Value> {
        let method = method.trim_start_matches('/');
        let v = match method {
            "Plugin.Activate" => to(ActivateResponse { implements: vec!["NetworkDriver".into()] }),
            "NetworkDriver.GetCapabilities" => {
                to(CapabilitiesResponse { scope: "local".into(), connectivity_scope: "local".into() })
            }
            "NetworkDriver.CreateNetwork" => self.create_network(parse(method, body)?).await?,
            "NetworkDriver.DeleteNetwork" => self.delete_network(parse(method, body)?).await?,
            "NetworkDriver.CreateEndpoint" => self.create_endpoint(parse(method, body)?).await?,
            "NetworkDriver.DeleteEndpoint" => self.delete_endpoint(parse(method, body)?).await?,
            "NetworkDriver.EndpointOperInfo" => self.endpoint_info(parse(method, body)?)?,
            "NetworkDriver.Join" => self.join(parse(method, body)?)?,
            // Leaving withdraws the published ports too (Docker revokes
            // first, but a Leave alone must not leave them behind).
            "NetworkDriver.Leave" | "NetworkDriver.RevokeExternalConnectivity" => {
                self.revoke_external(parse(method, body)?).await?
            }
            "NetworkDriver.ProgramExternalConnectivity" => self.program_external(parse(method, body)?).await?,
            "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => json!({}),
            // AllocateNetwork/FreeNetwork are for global-scope drivers (swarm).
            other => return Err(DriverError::NotFound(format!("the datapath driver has no method {other:?}"))),
        };
        Ok(v)
    }

    fn lock_external(&self) -> std::sync::MutexGuard<'_, HashMap<String, Map<String, Value>>> {
        self.external.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Docker's network, which must be one of Docker's.
    fn network(&self, network_id: &str) -> Result<NetworkView> {
        let name = network_name(network_id)?;
        match self.agent.snapshot().network(&name) {
            Ok(n) if n.owner.as_deref() == Some(OWNER) => Ok(n),
            _ => Err(DriverError::NotFound(format!("network {network_id} not found (no datapath network {name})"))),
        }
    }

    fn endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<(NetworkView, EndpointView)> {
        let net = self.network(network_id)?;
        let name = endpoint_name(endpoint_id)?;
        match self.agent.snapshot().endpoint(&name) {
            Ok(e) if e.owner.as_deref() == Some(OWNER) && e.network == net.name => Ok((net, e)),
            _ => Err(DriverError::NotFound(format!("endpoint {endpoint_id} not found on network {network_id}"))),
        }
    }

    async fn create_network(&self, req: CreateNetworkRequest) -> Result<Value> {
        let create = network_create(&req)?;
        // Created again (dockerd replaying its networks): the same subnet
        // is the same network.
        if let Ok(n) = self.agent.snapshot().network(&create.name) {
            if n.owner.as_deref() == Some(OWNER) && n.subnet == create.subnet {
                return Ok(json!({}));
            }
            return Err(DriverError::Agent(ApiError::conflict(format!(
                "network {} already exists with subnet {}",
                n.name, n.subnet
            ))));
        }
        let name = create.name.clone();
        self.agent.handle(Request::NetworkCreate(create)).await?;
        tracing::info!(network = %name, docker = %req.network_id, "docker: network created");
        Ok(json!({}))
    }

    async fn delete_network(&self, req: NetworkRequest) -> Result<Value> {
        let name = network_name(&req.network_id)?;
        match self.agent.snapshot().network(&name) {
            // Already gone: deleting again succeeds (Docker retries).
            Err(_) => return Ok(json!({})),
            Ok(n) if n.owner.as_deref() != Some(OWNER) => {
                return Err(DriverError::NotFound(format!("network {name} is not one of Docker's")));
            }
            Ok(_) => {}
        }
        self.agent.handle(Request::NetworkRemove { name: name.clone() }).await?;
        tracing::info!(network = %name, "docker: network deleted");
        Ok(json!({}))
    }

    async fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<Value> {
        let net = self.network(&req.network_id)?;
        let name = endpoint_name(&req.endpoint_id)?;
        let asked = req.interface.clone().unwrap_or_default();
        let ip = match asked.address.as_str() {
            "" => None,
            a => Some(addr_of("address", a)?),
        };
        let ip6 = match asked.address_ipv6.as_str() {
            "" => None,
            _ if !net.enable_ipv6 => {
                return Err(DriverError::BadRequest(format!(
                    "an IPv6 address for an endpoint of network {}, which has no IPv6 (create it with --ipv6)",
                    net.name
                )))
            }
            a => Some(addr6_of("IPv6 address", a)?),
        };
        let mac = match asked.mac_address.as_str() {
            "" => None,
            m => Some(m.to_ascii_lowercase()),
        };
        let existing = self.agent.snapshot().endpoint(&name).ok();
        let ep = match existing {
            // Created again: the same endpoint when nothing asked differs.
            Some(e)
                if e.owner.as_deref() == Some(OWNER)
                    && e.network == net.name
                    && ip.is_none_or(|ip| ip == e.ip)
                    && ip6.is_none_or(|ip6| Some(ip6) == e.ip6)
                    && mac.as_ref().is_none_or(|m| *m == e.mac) =>
            {
                e
            }
            Some(e) => {
                return Err(DriverError::Agent(ApiError::conflict(format!(
                    "endpoint {} already exists ({} on {})",
                    e.name, e.ip, e.network
                ))))
            }
            None => {
                let create = EndpointCreate {
                    name: name.clone(),
                    network: Some(net.name.clone()),
                    ip,
                    ip6,
                    mac: mac.clone(),
                    detached: true,
                    owner: Some(OWNER.into()),
                    container_id: Some(req.endpoint_id.clone()),
                    ..Default::default()
                };
                let v = self.agent.handle(Request::EndpointCreate(create)).await?;
                let e: EndpointView = serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string()))?;
                tracing::info!(endpoint = %e.name, ip = %e.ip, network = %net.name, "docker: endpoint created");
                e
            }
        };
        let mut chosen = EndpointInterface::default();
        if ip.is_none() {
            chosen.address = format!("{}/{}", ep.ip, ep.prefix_len);
        }
        if let (None, Some(a), Some(len)) = (ip6, ep.ip6, ep.prefix_len6) {
            chosen.address_ipv6 = format!("{a}/{len}");
        }
        if mac.is_none() {
            chosen.mac_address = ep.mac.clone();
        }
        let interface = (chosen != EndpointInterface::default()).then_some(chosen);
        Ok(to(CreateEndpointResponse { interface }))
    }

    async fn delete_endpoint(&self, req: EndpointRequest) -> Result<Value> {
        let name = endpoint_name(&req.endpoint_id)?;
        self.lock_external().remove(&name);
        match self.agent.snapshot().endpoint(&name) {
            Err(_) => return Ok(json!({})),
            Ok(e) if e.owner.as_deref() != Some(OWNER) => {
                return Err(DriverError::NotFound(format!("endpoint {name} is not one of Docker's")));
            }
            Ok(_) => {}
        }
        self.agent.handle(Request::EndpointRemove { name: name.clone() }).await?;
        tracing::info!(endpoint = %name, "docker: endpoint deleted");
        Ok(json!({}))
    }

    fn endpoint_info(&self, req: EndpointRequest) -> Result<Value> {
        let (net, e) = self.endpoint(&req.network_id, &req.endpoint_id)?;
        let mut value = Map::new();
        value.insert("datapath.endpoint".into(), json!(e.name));
        value.insert("datapath.network".into(), json!(net.name));
        value.insert("datapath.datapath".into(), json!(net.datapath));
        value.insert("datapath.host_ifname".into(), json!(e.host_ifname));
        value.insert("datapath.address".into(), json!(format!("{}/{}", e.ip, e.prefix_len)));
        value.insert("datapath.mac".into(), json!(e.mac));
        if let (Some(a), Some(len)) = (e.ip6, e.prefix_len6) {
            value.insert("datapath.address_ipv6".into(), json!(format!("{a}/{len}")));
        }
        if let Some(ext) = self.lock_external().get(&e.name) {
            if let Some(v) = ext.get(OPT_EXPOSED) {
                value.insert(OPT_EXPOSED.into(), v.clone());
            }
        }
        // The ports actually published (a host port Docker left to the
        // driver is the one chosen): what `docker port` shows.
        if !e.ports.is_empty() {
            value.insert(OPT_PORTMAP.into(), portmap::bindings(&e.ports));
        }
        Ok(to(EndpointInfoResponse { value }))
    }

    fn join(&self, req: JoinRequest) -> Result<Value> {
        let (net, e) = self.endpoint(&req.network_id, &req.endpoint_id)?;
        tracing::info!(endpoint = %e.name, sandbox = %req.sandbox_key, "docker: join");
        Ok(to(JoinResponse {
            interface_name: InterfaceName { src_name: e.ifname, dst_prefix: DST_PREFIX.into() },
            gateway: if net.internal { String::new() } else { net.gateway.to_string() },
            gateway_ipv6: match net.gateway_v6 {
                Some(gw) if !net.internal => gw.to_string(),
                _ => String::new(),
            },
            disable_gateway_service: net.internal,
        }))
    }

    /// Docker's `-p`: the portmap becomes the endpoint's published ports
    /// (validated by the agent like `run -p`: a conflict or an internal
    /// network is an `Err` and nothing changes).
    async fn program_external(&self, req: ExternalConnectivityRequest) -> Result<Value> {
        let (_, e) = self.endpoint(&req.network_id, &req.endpoint_id)?;
        let options = req.options.unwrap_or_default();
        let publish =
            portmap::publications(options.get(OPT_PORTMAP)).map_err(|e| DriverError::BadRequest(e.to_string()))?;
        let n = publish.len();
        self.agent.handle(Request::EndpointPublish { name: e.name.clone(), publish }).await?;
        if n > 0 {
            tracing::info!(endpoint = %e.name, ports = n, "docker: ports published");
        }
        self.lock_external().insert(e.name, options);
        Ok(json!({}))
    }

    /// `RevokeExternalConnectivity` and `Leave`: the endpoint's published
    /// ports withdrawn (an endpoint already gone is fine: Docker retries).
    async fn revoke_external(&self, req: EndpointRequest) -> Result<Value> {
        let name = endpoint_name(&req.endpoint_id)?;
        self.lock_external().remove(&name);
        match self.agent.snapshot().endpoint(&name) {
            Ok(e) if e.owner.as_deref() == Some(OWNER) && !e.ports.is_empty() => {
                self.agent.handle(Request::EndpointPublish { name: name.clone(), publish: Vec::new() }).await?;
                tracing::info!(endpoint = %name, "docker: published ports withdrawn");
            }
            _ => {}
        }
        Ok(json!({}))
    }
}

fn to<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net_req(options: Value, v4: Value) -> CreateNetworkRequest {
        serde_json::from_value(json!({"NetworkID": "0123456789abcdef", "Options": options, "IPv4Data": v4})).unwrap()
    }

    fn v4() -> Value {
        json!([{"AddressSpace": "LocalDefault", "Pool": "10.30.0.0/24", "Gateway": "10.30.0.1/24"}])
    }

    #[test]
    fn docker_options_become_network_options() {
        let c = network_create(&net_req(json!({}), v4())).unwrap();
        assert_eq!(c.name, "docker-0123456789ab");
        assert_eq!((c.subnet.as_str(), c.gateway.as_deref()), ("10.30.0.0/24", Some("10.30.0.1")));
        assert_eq!((c.icc, c.masquerade, c.mtu, c.internal), (None, None, None, false));
        assert_eq!(c.owner.as_deref(), Some("docker"));
        let generic = json!({"com.docker.network.generic": {
            OPT_ICC: "false", OPT_MASQ: "false", OPT_MTU: "1400", OPT_DATAPATH: "kernel"}});
        let c = network_create(&net_req(generic, v4())).unwrap();
        assert_eq!((c.icc, c.masquerade, c.mtu), (Some(false), Some(false), Some(1400)));
        assert_eq!(c.datapath, Some(crate::state::DatapathKind::Kernel));
        let c = network_create(&net_req(json!({OPT_INTERNAL: true}), v4())).unwrap();
        assert!(c.internal && c.masquerade.is_none());
        assert!(!c.ipv6 && c.subnet_v6.is_none(), "IPv4 only unless asked");
    }

    #[test]
    fn docker_ipv6_becomes_a_dual_stack_network() {
        let req = |options: Value, v6: Value| -> CreateNetworkRequest {
            serde_json::from_value(
                json!({"NetworkID": "0123456789abcdef", "Options": options, "IPv4Data": v4(), "IPv6Data": v6}),
            )
            .unwrap()
        };
        let pool = json!([{"AddressSpace": "LocalDefault", "Pool": "fd00:30::/64", "Gateway": "fd00:30::1/64"}]);
        let c = network_create(&req(json!({OPT_IPV6: true}), pool)).unwrap();
        assert!(c.ipv6);
        assert_eq!((c.subnet_v6.as_deref(), c.gateway_v6.as_deref()), (Some("fd00:30::/64"), Some("fd00:30::1")));
        // `--ipv6` without a pool: the agent picks one.
        let c = network_create(&req(json!({OPT_IPV6: "true"}), json!([]))).unwrap();
        assert!(c.ipv6 && c.subnet_v6.is_none() && c.gateway_v6.is_none());
        let two = json!([{"Pool": "fd00:30::/64"}, {"Pool": "fd00:31::/64"}]);
        assert!(network_create(&req(json!({OPT_IPV6: true}), two)).is_err());
        let bad_gw = json!([{"Pool": "fd00:30::/64", "Gateway": "10.0.0.1/24"}]);
        assert!(network_create(&req(json!({OPT_IPV6: true}), bad_gw)).is_err());
    }

    #[test]
    fn bad_options_are_refused() {
        for (options, v4) in [
            (json!({}), json!([])),
            (json!({}), json!([{"Pool": "10.30.0.0/24"}, {"Pool": "10.31.0.0/24"}])),
            (json!({OPT_GENERIC: {OPT_ICC: "maybe"}}), v4()),
            (json!({OPT_GENERIC: {OPT_MTU: "big"}}), v4()),
            (json!({OPT_GENERIC: {"com.docker.network.bridge.name": "br0"}}), v4()),
            (json!({OPT_GENERIC: {OPT_DATAPATH: "xdp"}}), v4()),
            (json!({OPT_GENERIC: "x"}), v4()),
            (json!({OPT_INTERNAL: true, OPT_GENERIC: {OPT_MASQ: "true"}}), v4()),
        ] {
            assert!(network_create(&net_req(options.clone(), v4.clone())).is_err(), "{options} {v4}");
        }
        assert!(network_name("../x").is_err() && network_name("").is_err());
    }
}
