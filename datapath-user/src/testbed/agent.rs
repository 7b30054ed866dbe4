//! Launching `datapath agent --netns NODE --socket … --state-dir … --bpffs …`
//! and waiting until it answers; the [`Agent`] guard stops it (SIGTERM, then
//! SIGKILL) and removes what it made when dropped, also on panic.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::api::{Client, Request};
use crate::state::DatapathKind;
use crate::testbed::client::SyncClient;
use crate::testbed::process::terminate;

/// Default time an agent gets to answer on its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an agent gets to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The `datapath` binary.
    pub bin: PathBuf,
    /// The node namespace (`--netns`).
    pub netns: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    /// Where stdout and stderr go (the file is created anew);
    /// `None` inherits ours.
    pub log: Option<PathBuf>,
    pub no_default_network: bool,
    /// `--default-datapath` (not passed when `None`).
    pub default_datapath: Option<DatapathKind>,
    pub cleanup_on_exit: bool,
    /// `--upstream-resolv-conf`: the embedded DNS's upstreams. Tests and
    /// the walkthrough give one inside their own world, never the node's
    /// real `/etc/resolv.conf`.
    pub upstream_resolv_conf: Option<PathBuf>,
    /// Further flags, after the ones above.
    pub extra_args: Vec<String>,
    /// Environment for the agent (`DATAPATH_SOCKET` and `DATAPATH_FAILPOINT`
    /// are removed from what it inherits unless set here).
    pub env: Vec<(String, String)>,
    /// Run it in a process group of its own, so a Ctrl-C in the terminal
    /// reaches only the caller, which then stops the agent in order.
    pub own_process_group: bool,
    /// Leave the socket, state dir and bpffs dir in place on drop (e.g. for
    /// a restart on the same state).
    pub keep_files: bool,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
}

impl AgentConfig {
    /// An agent in namespace `netns` with its socket and state under `dir`
    /// (`agent.sock`, `state/`) and its pins under `bpffs`.
    pub fn new(bin: impl Into<PathBuf>, netns: impl Into<String>, dir: &Path, bpffs: impl Into<PathBuf>) -> Self {
        AgentConfig {
            bin: bin.into(),
            netns: netns.into(),
            socket: dir.join("agent.sock"),
            state_dir: dir.join("state"),
            bpffs: bpffs.into(),
            log: None,
            no_default_network: false,
            default_datapath: None,
            cleanup_on_exit: false,
            upstream_resolv_conf: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            own_process_group: false,
            keep_files: false,
            ready_timeout: READY_TIMEOUT,
            stop_timeout: STOP_TIMEOUT,
        }
    }

    /// The agent's command line, without the binary.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["agent".to_string(), "--netns".into(), self.netns.clone()];
        for (flag, path) in [("--socket", &self.socket), ("--state-dir", &self.state_dir), ("--bpffs", &self.bpffs)] {
            a.push(flag.into());
            a.push(path.to_string_lossy().into_owned());
        }
        if self.no_default_network {
            a.push("--no-default-network".into());
        }
        if let Some(dp) = self.default_datapath {
            a.push("--default-datapath".into());
            a.push(dp.to_string());
        }
        if self.cleanup_on_exit {
            a.push("--cleanup-on-exit".into());
        }
        if let Some(path) = &self.upstream_resolv_conf {
            a.push("--upstream-resolv-conf".into());
            a.push(path.to_string_lossy().into_owned());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    fn command(&self) -> Result<Command, AgentError> {
        let mut c = Command::new(&self.bin);
        c.args(self.args()).env_remove("DATAPATH_FAILPOINT").env_remove("DATAPATH_SOCKET").stdin(Stdio::null());
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(log) = &self.log {
            let f = File::create(log).map_err(io(format!("create {}", log.display())))?;
            c.stdout(f.try_clone().map_err(io("dup the log file".into()))?).stderr(f);
        }
        if self.own_process_group {
            c.process_group(0);
        }
        Ok(c)
    }
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the agent exited during start-up ({status})")]
    Exited { status: ExitStatus, log: String },
    #[error("the agent did not answer within {timeout:?} (last error: {last})")]
    NotReady { timeout: Duration, last: String, log: String },
    #[error("the agent did not exit within {0:?} of SIGTERM (SIGKILLed)")]
    StopTimeout(Duration),
}

impl AgentError {
    /// The agent's output so far, when the error carries it.
    pub fn log(&self) -> Option<&str> {
        match self {
            AgentError::Exited { log, .. } | AgentError::NotReady { log, .. } => Some(log),
            _ => None,
        }
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { what, source }
}

/// A running agent. Dropping it stops it (SIGTERM; SIGKILL after the stop
/// timeout) and, unless [`AgentConfig::keep_files`], removes its socket,
/// state dir and bpffs dir.
pub struct Agent {
    child: Option<Child>,
    config: AgentConfig,
}

impl Agent {
    /// Creates the state and bpffs directories and starts the agent, without
    /// waiting for it.
    pub fn spawn(config: AgentConfig) -> Result<Agent, AgentError> {
        for dir in [&config.state_dir, &config.bpffs] {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        let mut cmd = config.command()?;
        let child = cmd.spawn().map_err(io(format!("start {}", config.bin.display())))?;
        Ok(Agent { child: Some(child), config })
    }

    /// Starts the agent and waits until it answers.
    pub fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let mut agent = Agent::spawn(config)?;
        let client = SyncClient::new(&agent.config.socket).map_err(io("create a tokio runtime".into()))?;
        agent.wait_until(|| client.ping().map_err(|e| e.to_string()))?;
        Ok(agent)
    }

    /// [`Agent::start`] from async code.
    pub async fn start_async(config: AgentConfig) -> Result<Agent, AgentError> {
        let mut agent = Agent::spawn(config)?;
        let client = Client::new(&agent.config.socket);
        let deadline = Instant::now() + agent.config.ready_timeout;
        loop {
            let last = match client.call(Request::Ping).await {
                Ok(_) => return Ok(agent),
                Err(e) => e.to_string(),
            };
            agent.check_starting(deadline, last)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `ready` until it succeeds, the agent exits or the timeout passes.
    fn wait_until(&mut self, ready: impl Fn() -> Result<(), String>) -> Result<(), AgentError> {
        let deadline = Instant::now() + self.config.ready_timeout;
        loop {
            match ready() {
                Ok(()) => return Ok(()),
                Err(last) => self.check_starting(deadline, last)?,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An error when the agent has exited or the deadline has passed.
    fn check_starting(&mut self, deadline: Instant, last: String) -> Result<(), AgentError> {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            self.child = None;
            return Err(AgentError::Exited { status, log: self.log() });
        }
        if Instant::now() >= deadline {
            return Err(AgentError::NotReady { timeout: self.config.ready_timeout, last, log: self.log() });
        }
        Ok(())
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    /// An async client of this agent.
    pub fn client(&self) -> Client {
        Client::new(&self.config.socket)
    }

    /// A blocking client of this agent.
    pub fn sync_client(&self) -> std::io::Result<SyncClient> {
        SyncClient::new(&self.config.socket)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Is the agent still running?
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's output (when it goes to a log file).
    pub fn log(&self) -> String {
        self.config.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Resident memory of the agent (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGTERM, and wait up to the stop timeout; SIGKILL after it (an error).
    pub fn stop(&mut self) -> Result<ExitStatus, AgentError> {
        let Some(mut child) = self.child.take() else {
            return Err(AgentError::Io { what: "stop".into(), source: std::io::Error::other("not running") });
        };
        match terminate(&mut child, self.config.stop_timeout) {
            (Some(status), false) => Ok(status),
            _ => Err(AgentError::StopTimeout(self.config.stop_timeout)),
        }
    }

    /// SIGKILL (a crash: no chance to clean up or save state).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent if needed and removes its files (unless kept).
    fn teardown(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, self.config.stop_timeout);
        }
        if !self.config.keep_files {
            let _ = std::fs::remove_file(&self.config.socket);
            let _ = std::fs::remove_dir_all(&self.config.state_dir);
            let _ = std::fs::remove_dir_all(&self.config.bpffs);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.teardown();
    }
}
