//! `Node`: one simulated host = a node netns plus a `datapath agent` running
//! inside it with its own socket, state dir and bpffs dir. The Node owns its
//! test prefix; dropping it (also when the test panics) stops the agent and
//! removes every process, netns, bpffs dir and temp dir carrying the prefix.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::env::{self, bin, claim_prefix, netns_exists, BPFFS};
use crate::net;
use crate::proc::{run, run_timeout, show, stderr_str, stdout_str, terminate, BgProcess};

/// How long an agent gets to accept on its socket.
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
}

impl std::fmt::Display for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
pub const UPLINK_DEV: &str = "uplink0";
/// The node's uplink address: the masquerade address the outside sees.
pub const UPLINK_IP: &str = "203.0.113.2";
/// The outside namespace's address (on its `eth0`), the node's default
/// gateway. TEST-NET-3, used only inside these namespaces.
pub const OUTSIDE_IP: &str = "203.0.113.1";

/// Turns TX checksum offload off on a device (SIOCETHTOOL ETHTOOL_STXCSUM,
/// no ethtool needed). argv: TAG IFACE. With offload on, a veth hands
/// CHECKSUM_PARTIAL packets to its peer and a capture shows pseudo-header
/// checksums; off, the checksum is computed in software on transmit, so a
/// wrong incremental update (NAT) shows on the wire.
pub const TX_CSUM_OFF: &str = r#"
import ctypes, fcntl, socket, struct, sys
ev = ctypes.create_string_buffer(struct.pack("II", 0x17, 0))  # ETHTOOL_STXCSUM, off
ifr = struct.pack("16sP", sys.argv[2].encode(), ctypes.addressof(ev))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(s.fileno(), 0x8946, ifr)  # SIOCETHTOOL
"#;

/// An endpoint as `endpoint inspect` describes it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub prefix_len: u64,
    pub gateway: String,
    pub network: String,
    pub host_ifname: String,
    pub host_ifindex: u64,
    pub json: Value,
}

impl Endpoint {
    fn from_json(v: Value) -> Endpoint {
        let s = |k: &str| {
            v[k].as_str().unwrap_or_else(|| panic!("endpoint JSON lacks string field {k:?}: {v}")).to_string()
        };
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("endpoint JSON lacks integer field {k:?}: {v}"));
        Endpoint {
            name: s("name"),
            ip: s("ip"),
            mac: s("mac"),
            prefix_len: n("prefix_len"),
            gateway: s("gateway"),
            network: s("network"),
            host_ifname: s("host_ifname"),
            host_ifindex: n("host_ifindex"),
            json: v,
        }
    }
}

/// Datapath counters by reason name: (packets, bytes).
pub type Stats = BTreeMap<String, (u64, u64)>;

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
    agent: Option<Child>,
    starts: u32,
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

    pub fn with(opts: AgentOpts) -> Node {
        let (prefix, dir) = claim_prefix();
        let name = format!("{prefix}node");
        let mut node = Node {
            socket: dir.join("agent.sock"),
            state_dir: dir.join("state"),
            bpffs: PathBuf::from(BPFFS).join(&prefix),
            prefix,
            name,
            dir,
            opts,
            outside: None,
            agent: None,
            starts: 0,
        };
        // From here on, Drop cleans up whatever happens.
        fs::create_dir_all(&node.state_dir).expect("create state dir");
        fs::create_dir_all(&node.bpffs).unwrap_or_else(|e| panic!("create bpffs dir {}: {e}", node.bpffs.display()));
        let out = run(Command::new("ip").args(["netns", "add", &node.name]));
        assert!(out.status.success(), "ip netns add {}:\n{}", node.name, show(&out));
        let out = run(Command::new("ip").args(["-n", &node.name, "link", "set", "lo", "up"]));
        assert!(out.status.success(), "lo up in {}:\n{}", node.name, show(&out));
        if node.opts.uplink {
            node.make_uplink();
        }
        node.start_agent();
        node
    }

    /// Builds the uplink (before the agent starts, which picks the device of
    /// the default route):
    ///
    /// ```text
    /// <prefix>node: uplink0 203.0.113.2/24, default via 203.0.113.1
    ///                  |  veth
    /// <prefix>out:  eth0 203.0.113.1/24   (no route back to any endpoint subnet)
    /// ```
    ///
    /// TX checksum offload is off on both ends, so captures in the outside
    /// show the checksums as transmitted. The outside namespace carries the
    /// prefix, so the guards remove it.
    fn make_uplink(&mut self) {
        let out = format!("{}out", self.prefix);
        let node = self.name.clone();
        let ip = |args: &[&str]| {
            let o = run(Command::new("ip").args(args));
            assert!(o.status.success(), "ip {}:\n{}", args.join(" "), show(&o));
        };
        ip(&["netns", "add", &out]);
        self.outside = Some(out.clone());
        ip(&["-n", &out, "link", "set", "lo", "up"]);
        ip(&["-n", &node, "link", "add", UPLINK_DEV, "type", "veth", "peer", "name", "eth0", "netns", &out]);
        ip(&["-n", &node, "addr", "add", &format!("{UPLINK_IP}/24"), "dev", UPLINK_DEV]);
        ip(&["-n", &out, "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"]);
        ip(&["-n", &node, "link", "set", UPLINK_DEV, "up"]);
        ip(&["-n", &out, "link", "set", "eth0", "up"]);
        ip(&["-n", &node, "route", "add", "default", "via", OUTSIDE_IP]);
        for (ns, dev) in [(node.as_str(), UPLINK_DEV), (out.as_str(), "eth0")] {
            let o = net::python_in(ns, TX_CSUM_OFF, &[&self.prefix, dev], Duration::from_secs(10));
            assert!(o.status.success(), "tx checksum offload off on {dev} in {ns}:\n{}", show(&o));
        }
        // No IPv6 chatter in the outside's captures.
        let o = net::exec_in(&out, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        assert!(o.status.success(), "sysctl in {out}: {}", show(&o));
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

    /// Starts the agent (it must not be running) and waits until it serves.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let log = self.log_path(self.starts);
        self.starts += 1;
        let f = File::create(&log).expect("create agent log");
        let mut c = Command::new(bin());
        c.arg("agent")
            .arg("--netns")
            .arg(&self.name)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpffs")
            .arg(&self.bpffs);
        if self.opts.no_default_network {
            c.arg("--no-default-network");
        }
        c.args(&self.opts.extra_args);
        // Extra agent flags, for checking that the suite notices a broken or
        // different datapath (e.g. "--default-datapath kernel" must fail the
        // eBPF-specific tests, "--tc-attach clsact" must pass them all). A
        // --default-datapath there wins over the test's own.
        let env_extra = std::env::var("DATAPATH_TESTS_AGENT_ARGS").unwrap_or_default();
        if !env_extra.contains("--default-datapath") {
            c.arg("--default-datapath").arg(self.opts.datapath.as_str());
        }
        c.args(env_extra.split_whitespace());
        c.env_remove("DATAPATH_FAILPOINT").env_remove("DATAPATH_SOCKET");
        if let Some(fp) = &self.opts.failpoint {
            c.env("DATAPATH_FAILPOINT", fp);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "info");
        }
        c.stdin(Stdio::null()).stdout(f.try_clone().expect("dup log")).stderr(f);
        let child = c.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin().display()));
        self.agent = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = None;
        loop {
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().ok().flatten() {
                self.agent = None;
                let log = self.agent_log();
                if log.contains("built without the eBPF object") {
                    panic!(
                        "the datapath binary {} was built without the eBPF object, so no kernel \
                         test can run; build it with `cargo xtask build` (or set DATAPATH_BIN).\n\
                         agent output:\n{log}",
                        bin().display()
                    );
                }
                panic!("agent exited during startup ({status}) on node {}:\n{log}", self.name);
            }
            if self.socket.exists() {
                let out = self.cli_timeout(&["network", "ls"], Duration::from_secs(5));
                if out.status.success() {
                    return;
                }
                last = Some(out);
            }
            if Instant::now() >= deadline {
                panic!(
                    "agent on node {} not ready after {READY_TIMEOUT:?} (socket {} exists: {}); \
                     last `network ls`: {}\nagent log:\n{}",
                    self.name,
                    self.socket.display(),
                    self.socket.exists(),
                    last.as_ref().map(show).unwrap_or_else(|| "-".into()),
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM the agent and wait for it to exit. Panics (after SIGKILL) if
    /// it does not exit within [`STOP_TIMEOUT`]. Returns its exit status.
    pub fn stop_agent(&mut self) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("agent not running");
        let (status, killed) = terminate(&mut child, STOP_TIMEOUT);
        if killed {
            panic!(
                "agent on {} did not exit within {STOP_TIMEOUT:?} of SIGTERM (SIGKILLed)\n{}",
                self.name,
                self.agent_log()
            );
        }
        status.expect("agent exit status")
    }

    /// SIGKILL the agent (a crash: no chance to clean up or save state).
    pub fn kill_agent(&mut self) {
        let mut child = self.agent.take().expect("agent not running");
        let _ = child.kill();
        let _ = child.wait();
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
        self.agent.as_ref().map(|c| c.id())
    }

    /// Is the agent still running (not crashed)?
    pub fn agent_alive(&mut self) -> bool {
        match self.agent.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Output of the current (last) agent run.
    pub fn agent_log(&self) -> String {
        if self.starts == 0 {
            return String::new();
        }
        fs::read_to_string(self.log_path(self.starts - 1)).unwrap_or_default()
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

    /// A `datapath --socket S ARGS` command (not yet run).
    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--socket").arg(&self.socket).args(args);
        c.env_remove("DATAPATH_SOCKET").env_remove("DATAPATH_FAILPOINT").env_remove("RUST_LOG");
        c
    }

    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        run_timeout(&mut self.cli_cmd(args), timeout)
    }

    /// Runs `datapath --socket S ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_timeout(args, Duration::from_secs(30))
    }

    /// Runs the CLI and asserts success; returns stdout.
    #[track_caller]
    pub fn ok(&mut self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            self.fail(format!("`datapath {}` failed:\n{}", args.join(" "), show(&out)));
        }
        stdout_str(&out)
    }

    /// Runs the CLI, asserts success, parses stdout as JSON.
    #[track_caller]
    pub fn json(&mut self, args: &[&str]) -> Value {
        let s = self.ok(args);
        match serde_json::from_str(&s) {
            Ok(v) => v,
            Err(e) => self.fail(format!("`datapath {}` printed invalid JSON ({e}):\n{s}", args.join(" "))),
        }
    }

    /// Runs the CLI and asserts the contract for errors: non-zero exit and a
    /// one-line `error: ...` on stderr. Returns stderr.
    #[track_caller]
    pub fn err(&mut self, args: &[&str]) -> String {
        let out = self.cli(args);
        if out.status.success() {
            self.fail(format!("`datapath {}` succeeded but must fail:\n{}", args.join(" "), show(&out)));
        }
        let e = stderr_str(&out);
        check_error_text(&e)
            .unwrap_or_else(|m| self.fail(format!("`datapath {}`: {m}:\n{}", args.join(" "), show(&out))));
        e
    }

    /// `endpoint create NAME EXTRA...`; checks the `NAME IP` output and
    /// returns the inspected endpoint.
    #[track_caller]
    pub fn create_endpoint(&mut self, name: &str, extra: &[&str]) -> Endpoint {
        let mut args = vec!["endpoint", "create", name];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let ep = self.inspect_endpoint(name);
        let expect = format!("{} {}", name, ep.ip);
        if out.trim_end() != expect {
            self.fail(format!("`datapath {}` printed {out:?}, expected the one line {expect:?}", args.join(" ")));
        }
        ep
    }

    #[track_caller]
    pub fn inspect_endpoint(&mut self, name: &str) -> Endpoint {
        let v = self.json(&["endpoint", "inspect", name]);
        Endpoint::from_json(v)
    }

    /// `endpoint ls -o json`, sorted by name.
    #[track_caller]
    pub fn endpoints(&mut self) -> Vec<Value> {
        sorted_by_name(self.json(&["endpoint", "ls", "-o", "json"]))
    }

    /// `network ls -o json`, sorted by name.
    #[track_caller]
    pub fn networks(&mut self) -> Vec<Value> {
        sorted_by_name(self.json(&["network", "ls", "-o", "json"]))
    }

    #[track_caller]
    pub fn inspect_network(&mut self, name: &str) -> Value {
        self.json(&["network", "inspect", name, "-o", "json"])
    }

    /// `stats -o json` as reason name -> (packets, bytes).
    #[track_caller]
    pub fn stats(&mut self) -> Stats {
        let v = self.json(&["stats", "-o", "json"]);
        let Some(arr) = v["counters"].as_array() else {
            self.fail(format!("stats JSON has no counters array: {v}"));
        };
        let mut m = Stats::new();
        for c in arr {
            let (Some(r), Some(p), Some(b)) = (c["reason"].as_str(), c["packets"].as_u64(), c["bytes"].as_u64()) else {
                self.fail(format!("bad counter object {c} in {v}"));
            };
            m.insert(r.to_string(), (p, b));
        }
        m
    }

    /// `conntrack ls -o json [--endpoint E]`: the eBPF flow table.
    #[track_caller]
    pub fn conntrack(&mut self, endpoint: Option<&str>) -> Vec<Value> {
        let mut args = vec!["conntrack", "ls", "-o", "json"];
        if let Some(e) = endpoint {
            args.extend(["--endpoint", e]);
        }
        match self.json(&args) {
            Value::Array(a) => a,
            other => self.fail(format!("conntrack ls -o json is not an array: {other}")),
        }
    }

    /// Starts `datapath --socket S ARGS` in the background (e.g. `trace`).
    pub fn cli_bg(&self, args: &[&str]) -> BgProcess {
        BgProcess::spawn(self.cli_cmd(args))
    }

    /// Names of every netns of this node's prefix (node included).
    pub fn own_netns(&self) -> Vec<String> {
        env::list_netns().into_iter().filter(|n| n.starts_with(&self.prefix)).collect()
    }

    /// Link names in the node netns.
    pub fn node_links(&self) -> Vec<String> {
        net::link_names(&self.name)
    }

    /// veth links in the node netns whose name starts with `dp`.
    pub fn node_dp_veths(&self) -> Vec<String> {
        net::links(&self.name)
            .into_iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .filter(|n| n.starts_with("dp"))
            .collect()
    }

    pub fn netns_exists(&self, name: &str) -> bool {
        netns_exists(name)
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
        if let Some(mut c) = self.agent.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
        env::remove_prefix(&self.prefix);
    }
}

/// The CLI error contract: one non-empty line starting with `error: `.
pub fn check_error_text(stderr: &str) -> Result<(), String> {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [] => Err("no error message on stderr".into()),
        [l] if l.starts_with("error: ") && l.len() > "error: ".len() => Ok(()),
        [l] => Err(format!("stderr line does not start with `error: `: {l:?}")),
        _ => Err(format!("expected one `error: ...` line on stderr, got {} lines", lines.len())),
    }
}

pub fn sorted_by_name(v: Value) -> Vec<Value> {
    let mut a = match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}"),
    };
    a.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    a
}

/// Difference of a counter between two snapshots (0 if missing).
pub fn delta(before: &Stats, after: &Stats, reason: &str) -> (u64, u64) {
    let b = before.get(reason).copied().unwrap_or((0, 0));
    let a = after.get(reason).copied().unwrap_or((0, 0));
    (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1))
}
