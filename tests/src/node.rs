//! `Node`: one simulated host = a node netns (optionally with an uplink to an
//! outside namespace) plus a `datapath agent` running inside it with its own
//! socket, state dir and bpffs dir, all from the test bed
//! ([`datapath::testbed`]). The Node owns its test prefix; dropping it (also
//! when the test panics) stops the agent and removes every process, netns,
//! bpffs dir and temp dir carrying the prefix.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use datapath::state::DatapathKind;
use datapath::testbed::agent::{Agent, AgentConfig, AgentError};
use datapath::testbed::names::Claim;
use datapath::testbed::topology::{self, NodeNet, NodeSpec};

use crate::env::{self, bin, claim_prefix};
pub use crate::node_cli::{check_error_text, delta, sorted_by_name, Endpoint, Stats};

/// How long an agent gets to answer on its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an agent gets to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The two datapaths every behavioural test runs against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datapath {
    /// TC programs on the host veths (redirect-peer, eBPF policy and SNAT).
    #[default]
    Ebpf,
    /// The classic baseline: Linux bridge + nftables (MASQUERADE).
    Kernel,
}

impl Datapath {
    pub const BOTH: [Datapath; 2] = [Datapath::Ebpf, Datapath::Kernel];

    /// The value of `--default-datapath` / `--datapath` and of the
    /// `datapath` field of `network inspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Ebpf => "ebpf",
            Datapath::Kernel => "kernel",
        }
    }

    pub fn is_ebpf(self) -> bool {
        self == Datapath::Ebpf
    }

    pub fn kind(self) -> DatapathKind {
        match self {
            Datapath::Ebpf => DatapathKind::Ebpf,
            Datapath::Kernel => DatapathKind::Kernel,
        }
    }
}

impl std::fmt::Display for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which build the node's agent (and the CLI the node runs against it) is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentBin {
    /// The binary under test ([`env::bin`]).
    #[default]
    Current,
    /// The last IPv4-only build ([`env::baseline_bin`]): the upgrade test's
    /// starting point. It predates the embedded DNS, so it is started
    /// without `--upstream-resolv-conf` (it sends no DNS anywhere).
    Baseline,
}

impl AgentBin {
    pub fn path(self) -> PathBuf {
        match self {
            AgentBin::Current => bin(),
            AgentBin::Baseline => env::baseline_bin(),
        }
    }
}

/// Options for the agent of a node.
#[derive(Clone, Debug, Default)]
pub struct AgentOpts {
    /// `DATAPATH_FAILPOINT` value, e.g. "endpoint:veth".
    pub failpoint: Option<String>,
    pub no_default_network: bool,
    /// `--default-datapath`: the datapath of the default network and of
    /// every network created without `--datapath`.
    pub datapath: Datapath,
    /// Give the node an uplink to an "outside" namespace before the agent
    /// starts (see [`Node::outside`]): the node's default route then points
    /// there and the agent masquerades through it.
    pub uplink: bool,
    /// Further agent flags (e.g. `--ct-udp 3`).
    pub extra_args: Vec<String>,
    /// Further environment of the agent (e.g. `DATAPATH_BPF_OBJECT`).
    pub env: Vec<(String, String)>,
    /// The embedded DNS's node upstreams (`nameserver` addresses of the
    /// `--upstream-resolv-conf` file the node writes); none by default:
    /// a test never sends DNS to the machine's real resolvers.
    pub upstream_dns: Vec<String>,
    /// The build the agent runs (and the node's CLI commands use).
    pub bin: AgentBin,
}

impl AgentOpts {
    /// Defaults, on datapath `dp`.
    pub fn on(dp: Datapath) -> AgentOpts {
        AgentOpts { datapath: dp, ..Default::default() }
    }

    /// Defaults, on datapath `dp`, with an uplink to an outside namespace.
    pub fn with_uplink(dp: Datapath) -> AgentOpts {
        AgentOpts { datapath: dp, uplink: true, ..Default::default() }
    }
}

/// The node's side of the uplink (in the node netns).
pub const UPLINK_DEV: &str = topology::UPLINK_DEV;
/// The node's uplink address ([`topology::NODE_UPLINK_IP`]) as text: the
/// masquerade address the outside sees.
pub const UPLINK_IP: &str = "203.0.113.2";
/// The outside namespace's address ([`topology::OUTSIDE_IP`]) as text (on
/// its `eth0`), the node's default gateway.
pub const OUTSIDE_IP: &str = "203.0.113.1";

pub struct Node {
    /// `dpt` + 5 hex digits; every resource of this node starts with it.
    pub prefix: String,
    /// The node netns (`<prefix>node`).
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub opts: AgentOpts,
    /// The outside netns (`<prefix>out`) when [`AgentOpts::uplink`] is set.
    pub outside: Option<String>,
    starts: u32,
    // Drop order: the agent stops, then the namespaces go, then everything
    // else carrying the prefix.
    agent: Option<Agent>,
    _net: NodeNet,
    _claim: Claim,
}

impl Node {
    /// Node netns + agent with the default network, ready.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Node {
        Node::with(AgentOpts::default())
    }

    /// Node with the default network on datapath `dp`.
    pub fn on(dp: Datapath) -> Node {
        Node::with(AgentOpts::on(dp))
    }

    /// Builds the node netns and, with [`AgentOpts::uplink`], the uplink
    /// (before the agent starts, which picks the device of the default
    /// route); see [`datapath::testbed::topology`]. TX checksum offload is
    /// off on both ends of the uplink, so captures in the outside show the
    /// checksums as transmitted.
    pub fn with(opts: AgentOpts) -> Node {
        let mut node = Node::build(opts);
        node.start_agent();
        node
    }

    /// [`Node::with`] without starting the agent (for setting up the node
    /// namespace first, e.g. a sysctl the agent records).
    pub fn build(opts: AgentOpts) -> Node {
        let claim = claim_prefix();
        let name = claim.name("node");
        let mut spec = NodeSpec::new(&name);
        if opts.uplink {
            spec = spec.with_outside(claim.name("out"));
            spec.tx_checksum_off = true;
        }
        // From here on, the claim's Drop cleans up whatever happens.
        let net = topology::build_blocking(&spec).unwrap_or_else(|e| panic!("building node {name}: {e}"));
        Node {
            prefix: claim.prefix.clone(),
            name,
            dir: claim.dir.clone(),
            socket: claim.dir.join("agent.sock"),
            state_dir: claim.dir.join("state"),
            bpffs: claim.bpffs(),
            opts,
            outside: net.outside.clone(),
            starts: 0,
            agent: None,
            _net: net,
            _claim: claim,
        }
    }

    /// The outside namespace (panics when the node has no uplink).
    pub fn outside(&self) -> &str {
        self.outside.as_deref().expect("this node has no uplink (AgentOpts::uplink)")
    }

    pub fn datapath(&self) -> Datapath {
        self.opts.datapath
    }

    /// A name for an endpoint (netns) of this node: prefix + suffix.
    pub fn ep(&self, suffix: &str) -> String {
        assert!(suffix != "node" && !suffix.is_empty());
        format!("{}{suffix}", self.prefix)
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("agent-{n}.log"))
    }

    fn agent_config(&self) -> AgentConfig {
        let mut c = AgentConfig::new(self.opts.bin.path(), &self.name, &self.dir, &self.bpffs);
        c.socket = self.socket.clone();
        c.state_dir = self.state_dir.clone();
        c.log = Some(self.log_path(self.starts));
        c.no_default_network = self.opts.no_default_network;
        let upstreams = self.dir.join("upstream-resolv.conf");
        let text: String = self.opts.upstream_dns.iter().map(|ip| format!("nameserver {ip}\n")).collect();
        std::fs::write(&upstreams, text).unwrap_or_else(|e| panic!("writing {}: {e}", upstreams.display()));
        if self.opts.bin != AgentBin::Baseline {
            c.upstream_resolv_conf = Some(upstreams);
        }
        c.extra_args = self.opts.extra_args.clone();
        // Extra agent flags, for checking that the suite notices a broken or
        // different datapath (e.g. "--default-datapath kernel" must fail the
        // eBPF-specific tests, "--tc-attach clsact" must pass them all). A
        // --default-datapath there wins over the test's own.
        let env_extra = std::env::var("DATAPATH_TESTS_AGENT_ARGS").unwrap_or_default();
        if !env_extra.contains("--default-datapath") {
            c.default_datapath = Some(self.opts.datapath.kind());
        }
        c.extra_args.extend(env_extra.split_whitespace().map(String::from));
        c.env.extend(self.opts.env.iter().cloned());
        if let Some(fp) = &self.opts.failpoint {
            c.env.push(("DATAPATH_FAILPOINT".into(), fp.clone()));
        }
        if std::env::var_os("RUST_LOG").is_none() {
            c.env.push(("RUST_LOG".into(), "info".into()));
        }
        // A restart reuses the state; the claim removes everything at the end.
        c.keep_files = true;
        c.ready_timeout = READY_TIMEOUT;
        c.stop_timeout = STOP_TIMEOUT;
        c
    }

    /// Starts the agent (it must not be running) and waits until it serves;
    /// returns how long that took (see [`Node::try_start_agent`]).
    pub fn start_agent(&mut self) -> Duration {
        match self.try_start_agent() {
            Ok(took) => took,
            Err(AgentError::Exited { log, .. }) if log.contains("built without the eBPF object") => panic!(
                "the datapath binary {} was built without the eBPF object, so no kernel \
                 test can run; build it with `cargo xtask build` (or set DATAPATH_BIN).\n\
                 agent output:\n{log}",
                self.opts.bin.path().display()
            ),
            Err(e @ AgentError::Exited { .. }) => {
                panic!("agent {e} on node {}:\n{}", self.name, e.log().unwrap_or_default())
            }
            Err(e) => panic!(
                "agent on node {}: {e} (socket {} exists: {})\nagent log:\n{}",
                self.name,
                self.socket.display(),
                self.socket.exists(),
                self.agent_log()
            ),
        }
    }

    /// Starts the agent (it must not be running) and waits until it serves
    /// (polled every 50 ms): how long that took, or why it did not.
    pub fn try_start_agent(&mut self) -> Result<Duration, AgentError> {
        assert!(self.agent.is_none(), "agent already running");
        let config = self.agent_config();
        self.starts += 1;
        let t0 = std::time::Instant::now();
        let agent = Agent::start(config)?;
        self.agent = Some(agent);
        Ok(t0.elapsed())
    }

    /// SIGTERM the agent and wait for it to exit. Panics (after SIGKILL) if
    /// it does not exit within [`STOP_TIMEOUT`]. Returns its exit status.
    pub fn stop_agent(&mut self) -> ExitStatus {
        let mut agent = self.agent.take().expect("agent not running");
        match agent.stop() {
            Ok(status) => status,
            Err(e) => panic!("agent on {}: {e}\n{}", self.name, self.agent_log()),
        }
    }

    /// SIGKILL the agent (a crash: no chance to clean up or save state).
    pub fn kill_agent(&mut self) {
        self.agent.take().expect("agent not running").kill();
    }

    /// SIGTERM the agent, then start it again with the same state dir.
    pub fn restart_agent(&mut self) {
        self.stop_agent();
        self.start_agent();
    }

    /// Restart with different options (e.g. another failpoint).
    pub fn restart_agent_with(&mut self, opts: AgentOpts) {
        self.stop_agent();
        self.opts = opts;
        self.start_agent();
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(|a| a.pid())
    }

    /// Is the agent still running (not crashed)?
    pub fn agent_alive(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|a| a.is_running())
    }

    /// Output of the current (last) agent run.
    pub fn agent_log(&self) -> String {
        if self.starts == 0 {
            return String::new();
        }
        std::fs::read_to_string(self.log_path(self.starts - 1)).unwrap_or_default()
    }

    /// The last `n` lines of the agent log, for failure messages.
    pub fn agent_log_tail(&self, n: usize) -> String {
        let log = self.agent_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics with `msg` plus the agent state and log tail.
    #[track_caller]
    pub fn fail(&mut self, msg: impl std::fmt::Display) -> ! {
        let alive = self.agent_alive();
        panic!(
            "{msg}\n--- agent on {} (alive: {alive}), last 40 log lines ---\n{}",
            self.name,
            self.agent_log_tail(40)
        );
    }

    /// Names of every netns of this node's prefix (node included).
    pub fn own_netns(&self) -> Vec<String> {
        env::list_netns().into_iter().filter(|n| n.starts_with(&self.prefix)).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() && self.starts > 0 {
            eprintln!(
                "--- [{}] agent log (last 60 lines) ---\n{}\n--- end agent log ---",
                self.name,
                self.agent_log_tail(60)
            );
        }
        // The fields go next: the agent stops, the namespaces and the rest
        // of the prefix are removed.
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_match_the_test_bed() {
        use datapath::testbed::topology::{NODE_UPLINK_IP, OUTSIDE_IP};
        assert_eq!(super::UPLINK_IP, NODE_UPLINK_IP.to_string());
        assert_eq!(super::OUTSIDE_IP, OUTSIDE_IP.to_string());
    }
}
