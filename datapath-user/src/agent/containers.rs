//! Commands started with `datapath run`: their endpoint (network and none
//! modes) or borrowed namespace, the detached ones the agent starts and
//! reaps itself, and `stop`.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{blocking, to_value, Agent, Inner, DEFAULT_NETWORK, NONE_NETWORK};
use crate::api::{ApiError, ContainerCreate, EndpointCreate};
use crate::host::process;
use crate::state::{self, ContainerSpec, RunMode};

impl Agent {
    /// `run`: records the command (and starts it with `-d`), then answers
    /// with its view.
    pub(super) async fn container_create(self: &Arc<Self>, req: ContainerCreate) -> Result<Value, ApiError> {
        let (spec, child, snap) = {
            let mut inner = self.inner.lock().await;
            let created = inner.container_create(req).await;
            let snap = self.publish(&inner);
            let (spec, child) = created?;
            (spec, child, snap)
        };
        self.dns.settle().await;
        if let Some(child) = child {
            self.reap(spec.name.clone(), child);
        }
        let name = spec.name;
        blocking(move || snap.container(&name)).await?.and_then(to_value)
    }

    /// Waits for a detached command in the background and records its exit.
    fn reap(self: &Arc<Self>, name: String, mut child: Child) {
        let agent = self.clone();
        tokio::spawn(async move {
            let status = tokio::task::spawn_blocking(move || child.wait()).await;
            let code = match status {
                Ok(Ok(s)) => process::exit_code(s),
                _ => -1,
            };
            tracing::info!(container = %name, code, "detached command exited");
            let mut inner = agent.inner.lock().await;
            if inner.state.containers.contains_key(&name) {
                if let Err(e) = inner.container_exited(&name, code).await {
                    tracing::error!(container = %name, "recording exit: {e}");
                }
            }
            agent.publish(&inner);
        });
    }

    /// Ends a command (SIGTERM, then SIGKILL after 10 s) and removes it and
    /// its endpoint. The lock is not held while waiting.
    pub(super) async fn container_stop(&self, name: &str) -> Result<(), ApiError> {
        let spec = {
            let inner = self.inner.lock().await;
            inner.stoppable(name)?
        };
        if let (true, Some(pid)) = (spec.is_running(), spec.pid) {
            // Still the command's own process (pid and start time, and in
            // its namespace), or nothing is signalled.
            let netns = spec.netns_path.clone();
            if blocking(move || process::in_netns(pid, &netns)).await.ok().flatten() == Some(true) {
                end_process(&spec, pid).await;
            }
        }
        let mut inner = self.inner.lock().await;
        let removed = match inner.state.containers.contains_key(name) {
            true => inner.container_remove(name, spec.endpoint.clone()).await,
            false => Ok(()),
        };
        self.publish(&inner);
        drop(inner);
        self.dns.settle().await;
        removed
    }
}

/// Whether the command still runs, read on a blocking thread.
async fn running(spec: &ContainerSpec) -> bool {
    let spec = spec.clone();
    blocking(move || spec.is_running()).await.unwrap_or(false)
}

/// SIGTERM, up to 10 s, then SIGKILL and up to 2 s more.
async fn end_process(spec: &ContainerSpec, pid: u32) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    let signal = |sig| {
        // Detached commands lead their own process group.
        if spec.detached {
            killpg(pid, sig).or_else(|_| kill(pid, sig))
        } else {
            kill(pid, sig)
        }
    };
    let _ = signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(spec).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if running(spec).await {
        let _ = signal(Signal::SIGKILL);
        for _ in 0..100 {
            if !running(spec).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Inner {
    /// The command `stop` may end: refused up front (all or nothing) when
    /// another running command lives in its namespace.
    fn stoppable(&self, name: &str) -> Result<ContainerSpec, ApiError> {
        let spec = self
            .state
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))?;
        if let Some(ep) = &spec.endpoint {
            let users: Vec<&str> = self
                .state
                .containers
                .values()
                .filter(|c| c.name != spec.name && c.mode == RunMode::Container(ep.clone()) && c.is_running())
                .map(|c| c.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(ApiError::conflict(format!(
                    "{name:?} shares its network namespace with running command(s) {}: stop them first",
                    users.join(", ")
                )));
            }
        }
        Ok(spec)
    }

    /// The endpoint (made now) or namespace a command of `mode` runs in.
    async fn container_netns(
        &mut self,
        name: &str,
        mode: &RunMode,
        req: &ContainerCreate,
    ) -> Result<(Option<String>, PathBuf), ApiError> {
        let network = match mode {
            RunMode::Network(net) => {
                if !self.state.networks.contains_key(net) {
                    return Err(super::error::network_not_found(net));
                }
                net.clone()
            }
            RunMode::None => NONE_NETWORK.into(),
            RunMode::Host => return Ok((None, PathBuf::from(format!("/proc/{}/ns/net", std::process::id())))),
            RunMode::Container(other) => {
                let path = match self.state.endpoints.get(other) {
                    Some(e) if e.detached => {
                        return Err(ApiError::invalid(format!(
                            "endpoint {other:?} has no namespace of the datapath's (its owner moved it into its own)"
                        )))
                    }
                    Some(e) => e.netns_path.clone(),
                    None => match self.state.containers.get(other) {
                        Some(c) if c.mode != RunMode::Host => c.netns_path.clone(),
                        _ => return Err(ApiError::not_found(format!("no endpoint or container named {other:?}"))),
                    },
                };
                return Ok((None, path));
            }
        };
        let ep = EndpointCreate {
            name: name.to_string(),
            network: Some(network),
            ip: req.ip,
            ip6: req.ip6,
            publish: req.publish.clone(),
            more_networks: req.more_networks.clone(),
            aliases: req.aliases.clone(),
            dns: req.dns.clone(),
            ..Default::default()
        };
        let ep = self.endpoint_create(ep).await?;
        let path = self.state.endpoints.get(&ep).map(|e| e.netns_path.clone()).unwrap_or_default();
        Ok((Some(ep), path))
    }

    /// Records (and for `-d` starts) a command; makes its endpoint first.
    async fn container_create(&mut self, req: ContainerCreate) -> Result<(ContainerSpec, Option<Child>), ApiError> {
        let mode = RunMode::parse(req.network.as_deref().unwrap_or(DEFAULT_NETWORK)).map_err(ApiError::invalid)?;
        if req.argv.is_empty() {
            return Err(ApiError::invalid("no command given"));
        }
        let name = req.name.clone().unwrap_or_else(|| format!("run-{}", &state::random_id()[..8]));
        state::validate_name("container", &name).map_err(ApiError::invalid)?;
        if self.state.containers.contains_key(&name) || self.state.endpoints.contains_key(&name) {
            return Err(ApiError::conflict(format!("name {name:?} is already in use")));
        }
        if (req.ip.is_some() || req.ip6.is_some()) && !matches!(mode, RunMode::Network(_)) {
            let flag = if req.ip.is_some() { "--ip" } else { "--ip6" };
            return Err(ApiError::invalid(format!("{flag} needs a network, not --network {mode}")));
        }
        if !req.publish.is_empty() && !matches!(mode, RunMode::Network(_)) {
            return Err(ApiError::invalid(format!("--publish needs a network, not --network {mode}")));
        }
        let extras = !req.more_networks.is_empty() || !req.aliases.is_empty() || !req.dns.is_empty();
        if extras && !matches!(mode, RunMode::Network(_)) {
            return Err(ApiError::invalid(format!(
                "more networks, --alias and --dns need a network, not --network {mode}"
            )));
        }
        let (endpoint, netns_path) = self.container_netns(&name, &mode, &req).await?;
        let mut spec = ContainerSpec {
            name: name.clone(),
            mode,
            endpoint: endpoint.clone(),
            netns_path,
            argv: req.argv.clone(),
            detached: req.detach,
            rm: req.rm,
            pid: None,
            pid_start: None,
            exit_code: None,
            log: None,
            created: state::now_rfc3339(),
        };
        let mut child = None;
        if req.detach {
            match self.start_detached(&spec, req.cwd).await {
                Ok((c, log)) => {
                    spec.pid = Some(c.id());
                    spec.pid_start = process::start_time(c.id());
                    spec.log = Some(log);
                    child = Some(c);
                }
                Err(e) => {
                    if let Some(ep) = &endpoint {
                        let _ = self.endpoint_remove(ep).await;
                    }
                    return Err(e);
                }
            }
        }
        self.state.containers.insert(name.clone(), spec.clone());
        if let Err(e) = self.save().await {
            tracing::error!("saving state: {e}");
        }
        tracing::info!(container = %name, mode = %spec.mode, detached = spec.detached, "command registered");
        Ok((spec, child))
    }

    /// Starts a `-d` command in its namespace, output to
    /// `STATE_DIR/logs/NAME.log`.
    async fn start_detached(&self, spec: &ContainerSpec, cwd: Option<PathBuf>) -> Result<(Child, PathBuf), ApiError> {
        let logs = self.cfg.state_dir.join("logs");
        let log = logs.join(format!("{}.log", spec.name));
        let (netns_path, argv, path) = (spec.netns_path.clone(), spec.argv.clone(), log.clone());
        let program = argv[0].clone();
        let spawned = blocking(move || {
            let file = std::fs::create_dir_all(&logs)
                .and_then(|_| std::fs::File::create(&path))
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())))?;
            process::spawn_in(&netns_path, &argv, cwd.as_deref(), Some(file))?
                .map_err(|e| ApiError::invalid(format!("cannot run {program:?}: {e}")))
        })
        .await??;
        Ok((spawned, log))
    }

    /// The CLI started a foreground command: its pid is recorded only if
    /// it is a process of the command's own namespace, and only once, so a
    /// client can never make the agent signal a process it did not start
    /// (a `stop` signals the recorded pid).
    pub(super) async fn container_started(&mut self, name: &str, pid: u32) -> Result<(), ApiError> {
        let c = self
            .state
            .containers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))?;
        if c.detached || c.pid.is_some() || c.exit_code.is_some() {
            return Err(ApiError::conflict(format!("container {name:?} already has its process")));
        }
        let netns = c.netns_path.clone();
        let (start, inside) = blocking(move || {
            let start = process::start_time(pid);
            (start, process::in_netns(pid, &netns))
        })
        .await?;
        // A process that already ended (a short command: gone or a zombie)
        // is recorded without a start time, so it is never taken as running
        // nor signalled; a live one must be in the command's namespace.
        if inside == Some(false) {
            return Err(ApiError::invalid(format!(
                "process {pid} is not a process of container {name:?} (not in its network namespace)"
            )));
        }
        let start = if inside == Some(true) { start } else { None };
        if let Some(c) = self.state.containers.get_mut(name) {
            c.pid = Some(pid);
            c.pid_start = start;
        }
        self.save().await
    }

    /// The command ended: record it, and with `--rm` remove it and its endpoint.
    pub(super) async fn container_exited(&mut self, name: &str, code: i32) -> Result<(), ApiError> {
        let c = self
            .state
            .containers
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("container {name:?} not found")))?;
        c.exit_code = Some(code);
        let (rm, endpoint) = (c.rm, c.endpoint.clone());
        if rm {
            self.container_remove(name, endpoint).await
        } else {
            self.save().await
        }
    }

    async fn container_remove(&mut self, name: &str, endpoint: Option<String>) -> Result<(), ApiError> {
        self.state.containers.remove(name);
        if let Some(ep) = endpoint {
            if self.state.endpoints.contains_key(&ep) {
                self.endpoint_remove(&ep).await?;
            }
        }
        self.save().await?;
        tracing::info!(container = %name, "command removed");
        Ok(())
    }
}
