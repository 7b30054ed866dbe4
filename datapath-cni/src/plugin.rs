//! The verbs: each one (or two) requests to the agent, and the CNI answer.
//!
//! | verb | agent request | answer |
//! | --- | --- | --- |
//! | `ADD` | `cni_add` (after a delegated IPAM `ADD`, undone on failure) | the result, chained after `prevResult` |
//! | `DEL` | `cni_del` (unknown attachment: fine), then IPAM `DEL` | nothing |
//! | `CHECK` | `cni_check`, compared with `prevResult`, then IPAM `CHECK` | nothing, or code 3 / 101 |
//! | `STATUS` | `network_inspect` (the agent serves and has the network), then IPAM `STATUS` | nothing, or code 50 |
//! | `GC` | `cni_gc` with `cni.dev/valid-attachments`, then IPAM `GC` | nothing |
//!
//! `portMappings` (the runtime's `-p`) go to the agent with `ADD`. By
//! default the agent publishes them as the endpoint's published ports (the
//! datapath's eBPF port publishing, validated like `run -p`: a conflict is
//! refused before anything is made). With `"portMappings": "portmap"` in
//! the configuration a chained `portmap` plugin publishes them with
//! netfilter DNAT instead: the agent only records them and lets the kernel
//! translate the replies of those flows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use datapath::api::{
    Client, ClientError, CniAdd, CniAttachment, CniAttachmentKey, CniGc, CniGcReport, CniKey, ErrorKind, NetworkView,
    Request, DEFAULT_SOCKET,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::delegate;
use crate::spec::{code, CniError, CniResult, Command, Env, Interface, IpConfig, NetConf, Route};

/// How long one request to the agent may take (an endpoint create takes
/// milliseconds; a stuck agent must not hang the runtime forever).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one invocation: what to print on stdout on success (nothing for
/// `DEL`, `CHECK`, `STATUS`, `GC`).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let conf = match env.command {
        Command::Version => return Ok(Some(crate::spec::version_info(stdin))),
        command => NetConf::parse(stdin, command)?,
    };
    let agent = Agent::new(conf.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))?;
    match env.command {
        Command::Add => add(&agent, env, &conf).map(Some),
        Command::Del => del(&agent, env, &conf).map(|()| None),
        Command::Check => check(&agent, env, &conf).map(|()| None),
        Command::Status => status(&agent, env, &conf).map(|()| None),
        Command::Gc => gc(&agent, env, &conf).map(|()| None),
        Command::Version => Ok(Some(crate::spec::version_info(stdin))),
    }
}

/// The agent's API, blocking (one current-thread runtime per invocation).
struct Agent {
    socket: PathBuf,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl Agent {
    fn new(socket: PathBuf) -> Result<Agent, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO, format!("starting the runtime: {e}")))?;
        Ok(Agent { client: Client::new(&socket), socket, rt })
    }

    fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        self.rt.block_on(async {
            match tokio::time::timeout(AGENT_TIMEOUT, self.client.call_as(request)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Protocol(format!(
                    "the agent at {} did not answer within {} s",
                    self.socket.display(),
                    AGENT_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

/// An API failure as a CNI error: an agent that cannot be reached (or is
/// busy) is "try again later" (11), a request it refused as invalid or for
/// a network it does not have is "invalid configuration" (7), the rest is
/// the plugin's own code 100 with the agent's message.
fn api_error(e: ClientError, not_found: u32) -> CniError {
    match e {
        ClientError::NoAgent(_) | ClientError::PermissionDenied(_) | ClientError::Io { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, "the datapath agent is not reachable").with_details(e.to_string())
        }
        ClientError::Api(a) => match a.kind {
            ErrorKind::NotFound => CniError::new(not_found, a.message),
            ErrorKind::InvalidArgument => CniError::new(code::INVALID_CONFIG, a.message),
            ErrorKind::Unavailable => CniError::new(code::TRY_AGAIN_LATER, a.message),
            ErrorKind::Conflict | ErrorKind::Unsupported | ErrorKind::Internal => CniError::new(code::AGENT, a.message),
        },
        ClientError::Protocol(m) => CniError::new(code::AGENT, m),
    }
}

fn ids(env: &Env) -> (String, String) {
    (env.container_id.clone().unwrap_or_default(), env.ifname.clone().unwrap_or_default())
}

fn key(env: &Env, conf: &NetConf) -> CniKey {
    let (container_id, ifname) = ids(env);
    CniKey { network: conf.network.clone(), cni_network: conf.name.clone(), container_id, ifname }
}

fn ipam(env: &Env, conf: &NetConf) -> Result<Option<PathBuf>, CniError> {
    conf.ipam_type().map(|t| delegate::find(t, &env.path)).transpose()
}

fn add(agent: &Agent, env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network namespace {} does not exist", netns.display()),
        ));
    }
    let prev = conf.prev_result.as_ref().map(CniResult::from_value).transpose()?;
    let mut ip = env.requested_ip()?;
    let ipam = ipam(env, conf)?;
    let mut dns = conf.dns.clone().unwrap_or_default();
    if let Some(plugin) = &ipam {
        let got = delegate::run(plugin, "ADD", &conf.raw)?.unwrap_or(Value::Null);
        let got = CniResult::from_value(&got).and_then(|r| {
            r.first_ipv4()
                .map(|a| (a, r.dns))
                .ok_or_else(|| CniError::new(code::AGENT, "the IPAM plugin returned no IPv4 address"))
        });
        match got {
            Ok((addr, ipam_dns)) => {
                ip = Some(addr.addr());
                if ipam_dns != Default::default() {
                    dns = ipam_dns;
                }
            }
            Err(e) => {
                release(plugin, conf);
                return Err(e);
            }
        }
    }
    let (container_id, ifname) = ids(env);
    let req = CniAdd {
        network: conf.network.clone(),
        cni_network: conf.name.clone(),
        container_id,
        ifname: ifname.clone(),
        netns_path: netns.clone(),
        ip,
        port_mappings: conf.port_mappings.clone(),
        port_publishing: conf.port_publishing,
    };
    let att: CniAttachment = match agent.call(Request::CniAdd(req)) {
        Ok(a) => a,
        Err(e) => {
            // Nothing half-made: the agent rolled its part back, the
            // address goes back to the IPAM plugin.
            if let Some(plugin) = &ipam {
                release(plugin, conf);
            }
            return Err(api_error(e, code::INVALID_CONFIG));
        }
    };
    let ep = &att.endpoint;
    let gateway = ep.gateway.to_string();
    let mut ips = vec![IpConfig {
        address: format!("{}/{}", ep.ip, ep.prefix_len),
        gateway: Some(gateway.clone()),
        interface: Some(0),
    }];
    let mut routes = if att.internal { vec![] } else { vec![Route { dst: "0.0.0.0/0".into(), gw: Some(gateway) }] };
    // A dual-stack network: the IPv6 address and default route too.
    if let (Some(ip6), Some(len), Some(gw6)) = (ep.ip6, ep.prefix_len6, ep.gateway6) {
        ips.push(IpConfig { address: format!("{ip6}/{len}"), gateway: Some(gw6.to_string()), interface: Some(0) });
        if !att.internal {
            routes.push(Route { dst: "::/0".into(), gw: Some(gw6.to_string()) });
        }
    }
    let ours = CniResult {
        interfaces: vec![Interface {
            name: ifname,
            mac: ep.mac.clone(),
            mtu: Some(att.mtu),
            sandbox: Some(netns.display().to_string()),
        }],
        ips,
        routes,
        dns,
    };
    let result = match prev {
        Some(prev) => prev.chain(ours),
        None => ours,
    };
    Ok(result.to_json(&conf.cni_version))
}

/// Gives an address back to the IPAM plugin after a failed `ADD` (its own
/// failure is reported on stderr: the `ADD`'s error is the one that counts).
fn release(plugin: &Path, conf: &NetConf) {
    if let Err(e) = delegate::run(plugin, "DEL", &conf.raw) {
        eprintln!("datapath-cni: releasing the address after a failed ADD: {e}");
    }
}

fn del(agent: &Agent, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    agent.call::<Value>(Request::CniDel(key(env, conf))).map_err(|e| api_error(e, code::AGENT))?;
    if let Some(plugin) = ipam(env, conf)? {
        delegate::run(&plugin, "DEL", &conf.raw)?;
    }
    Ok(())
}

fn check(agent: &Agent, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs the prevResult of the ADD"))?;
    let prev = CniResult::from_value(prev)?;
    let att: CniAttachment =
        agent.call(Request::CniCheck(key(env, conf))).map_err(|e| api_error(e, code::UNKNOWN_CONTAINER))?;
    if !att.problems.is_empty() {
        return Err(CniError::new(code::CHECK_FAILED, format!("attachment {} is broken", att.endpoint.name))
            .with_details(att.problems.join("; ")));
    }
    // What the ADD returned must still be what is there.
    let (_, ifname) = ids(env);
    let sandbox = env.netns.as_ref().map(|p| p.display().to_string());
    let Some(index) = prev.interfaces.iter().position(|i| i.name == ifname && i.sandbox == sandbox) else {
        return Err(CniError::new(code::CHECK_FAILED, format!("prevResult has no interface {ifname} in {sandbox:?}")));
    };
    let iface = &prev.interfaces[index];
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&att.endpoint.mac) {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("interface {ifname} has MAC {}, prevResult says {}", att.endpoint.mac, iface.mac),
        ));
    }
    let address = format!("{}/{}", att.endpoint.ip, att.endpoint.prefix_len);
    // A dual-stack network: the IPv6 address too.
    let address6 = match (att.endpoint.ip6, att.endpoint.prefix_len6) {
        (Some(ip6), Some(len)) => Some(format!("{ip6}/{len}")),
        _ => None,
    };
    for address in std::iter::once(address).chain(address6) {
        if !prev.ips.iter().any(|ip| ip.address == address && ip.interface.is_none_or(|i| i == index)) {
            return Err(CniError::new(code::CHECK_FAILED, format!("prevResult does not list {address} on {ifname}")));
        }
    }
    if let Some(plugin) = ipam(env, conf)? {
        delegate::run(&plugin, "CHECK", &conf.raw)?;
    }
    Ok(())
}

fn status(agent: &Agent, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let unavailable =
        |why: String| CniError::new(code::NOT_AVAILABLE, "the datapath cannot serve ADD").with_details(why);
    match agent.call::<NetworkView>(Request::NetworkInspect { name: conf.network.clone() }) {
        Ok(_) => {}
        Err(ClientError::Api(a)) if a.kind == ErrorKind::NotFound => return Err(unavailable(a.message)),
        Err(e) => return Err(unavailable(e.to_string())),
    }
    delegate_newer_verb(env, conf, "STATUS")
}

/// `STATUS` and `GC` of a delegated IPAM plugin, as the spec asks; one too
/// old to have the verb (code 1) has nothing to report or collect.
fn delegate_newer_verb(env: &Env, conf: &NetConf, verb: &str) -> Result<(), CniError> {
    let Some(plugin) = ipam(env, conf)? else { return Ok(()) };
    match delegate::run(&plugin, verb, &conf.raw) {
        Err(e) if e.code == code::INCOMPATIBLE_VERSION => Ok(()),
        other => other.map(|_| ()),
    }
}

fn gc(agent: &Agent, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .iter()
        .map(|(container_id, ifname)| CniAttachmentKey { container_id: container_id.clone(), ifname: ifname.clone() })
        .collect();
    let req = CniGc { network: conf.network.clone(), cni_network: conf.name.clone(), valid };
    let report: CniGcReport = agent.call(Request::CniGc(req)).map_err(|e| api_error(e, code::INVALID_CONFIG))?;
    for name in report.removed {
        eprintln!("datapath-cni: GC removed {name}");
    }
    delegate_newer_verb(env, conf, "GC")
}
