//! The benchmark's namespaces, agents and processes, and their cleanup.
//!
//! Everything is named `dpbench-<pid>-...` (namespaces, bpffs directories,
//! the run directory `/run/dpbench/<pid>`), so a later run can sweep the
//! leftovers of a killed one: [`sweep`] removes whatever belongs to a pid
//! that is no longer running.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

pub const PREFIX: &str = "dpbench-";
const RUN_ROOT: &str = "/run/dpbench";
const BPFFS: &str = "/sys/fs/bpf";
/// The node's uplink (≤ 15 characters), its peer in the outside namespace is `eth0`.
pub const UPLINK: &str = "dpbench-up";
pub const NODE_UPLINK_IP: &str = "203.0.113.2";
pub const OUTSIDE_IP: &str = "203.0.113.1";
pub const CEILING_IPS: [&str; 2] = ["10.200.0.1", "10.200.0.2"];

pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (and SIGTERM/SIGHUP) set a flag; every wait loop checks it and
/// returns an error, so the guards' Drop implementations tear everything down.
pub fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &act) }.with_context(|| format!("installing a {sig} handler"))?;
    }
    Ok(())
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in small steps, returning early with an error on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    check_interrupted()
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a short command to completion; fails with its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// A command run inside a named namespace (`ip netns exec NS ...`).
pub fn in_ns(ns: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(argv);
    c
}

pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    sh(&mut in_ns(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])).map(|_| ())
}

pub fn sysctl_read_in(ns: &str, key: &str) -> Option<String> {
    sh(&mut in_ns(ns, &["sysctl", "-n", key])).ok().map(|s| s.trim().to_string())
}

/// A spawned process killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Proc> {
        let child =
            cmd.stdin(Stdio::null()).spawn().with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        Ok(Proc { child, what: what.to_string() })
    }

    /// Waits up to `timeout` for the process to exit and returns its stdout
    /// (piped by the caller) and exit status; kills it on timeout or Ctrl-C.
    pub fn wait_output(mut self, timeout: Duration) -> Result<(std::process::ExitStatus, String, String)> {
        use std::io::Read;
        let mut out = self.child.stdout.take();
        let mut err = self.child.stderr.take();
        // Read pipes on threads so a chatty child never blocks.
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                let _ = self.child.kill();
                bail!("interrupted");
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish within {:.0} s", self.what, timeout.as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok((status, t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// the agent's API (newline-delimited JSON over its unix socket)

pub fn api(socket: &Path, request: Value) -> Result<Value> {
    let mut req = request;
    req["api_version"] = json!(1);
    let mut s = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    let v: Value = serde_json::from_str(&reply).with_context(|| format!("agent reply {reply:?}"))?;
    if v["ok"] == json!(true) {
        Ok(v["result"].clone())
    } else {
        Err(anyhow!("agent: {}", v["error"]["message"].as_str().unwrap_or(&reply)))
    }
}

/// A running agent inside a node namespace; stopped (SIGTERM, it cleans up
/// with --cleanup-on-exit; SIGKILL after 15 s) when dropped.
pub struct Agent {
    pub proc: Proc,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(bin: &Path, run_dir: &Path, node_ns: &str, tag: &str, datapath: &str) -> Result<Agent> {
        let socket = run_dir.join(format!("{tag}.sock"));
        let state = run_dir.join(format!("{tag}-state"));
        let log = run_dir.join(format!("{tag}-agent.log"));
        let bpffs = Path::new(BPFFS).join(node_ns);
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("agent")
            .args(["--netns", node_ns, "--no-default-network", "--default-datapath", datapath, "--cleanup-on-exit"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--bpffs")
            .arg(&bpffs)
            .env("RUST_LOG", "warn")
            .stdout(logf.try_clone()?)
            .stderr(logf)
            // Own process group: Ctrl-C reaches the bench only, which stops the agent in order.
            .process_group(0);
        let proc = Proc::spawn(cmd, &format!("agent {tag}"))?;
        std::fs::write(run_dir.join(format!("{tag}.agent.pid")), proc.child.id().to_string())?;
        let mut agent = Agent { proc, socket, bpffs, log };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if api(&agent.socket, json!({"op": "ping"})).is_ok() {
                return Ok(agent);
            }
            if let Some(st) = agent.proc.child.try_wait()? {
                bail!(
                    "agent {tag} exited during start-up ({st}): {}",
                    std::fs::read_to_string(&agent.log).unwrap_or_default()
                );
            }
            if Instant::now() > end {
                bail!("agent {tag} not ready within 30 s");
            }
            sleep(Duration::from_millis(50))?;
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    pub fn call(&self, request: Value) -> Result<Value> {
        api(&self.socket, request)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_pid(self.proc.child.id() as i32, &mut || matches!(self.proc.child.try_wait(), Ok(Some(_))));
        let _ = self.proc.child.wait();
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

fn stop_pid(pid: i32, exited: &mut dyn FnMut() -> bool) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if exited() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// namespaces

/// The run's identity and directory; its Drop removes every namespace and
/// bpffs directory of this run (after the agents, which are dropped first
/// by the owner), whatever state the run ended in.
pub struct RunGuard {
    pub id: u32,
    pub dir: PathBuf,
}

impl RunGuard {
    pub fn new() -> Result<RunGuard> {
        let id = std::process::id();
        let dir = Path::new(RUN_ROOT).join(id.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunGuard { id, dir })
    }

    /// `dpbench-<pid>-<tag>`.
    pub fn name(&self, tag: &str) -> String {
        format!("{PREFIX}{}-{tag}", self.id)
    }

    pub fn add_netns(&self, tag: &str) -> Result<String> {
        let name = self.name(tag);
        ip(&["netns", "add", &name])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        remove_run(self.id);
    }
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The pid a `dpbench-<pid>-...` name belongs to.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes everything of run `id`: processes left in its namespaces (they
/// were started by that run), its agents, namespaces, bpffs dirs, run dir.
fn remove_run(id: u32) {
    let dir = Path::new(RUN_ROOT).join(id.to_string());
    // Agents recorded by pid: only signalled when their command line is ours.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".agent.pid") {
                continue;
            }
            let Some(pid) = std::fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&format!("{PREFIX}{id}-")) {
                stop_pid(pid, &mut || !pid_alive(pid as u32));
            }
        }
    }
    let mine: Vec<String> = netns_names().into_iter().filter(|n| owner_pid(n) == Some(id)).collect();
    for ns in &mine {
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    for ns in &mine {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
    if let Ok(entries) = std::fs::read_dir(BPFFS) {
        for e in entries.flatten() {
            if owner_pid(&e.file_name().to_string_lossy()) == Some(id) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes the leftovers of killed runs (owner pid no longer running).
/// Returns how many runs were swept.
pub fn sweep() -> usize {
    let mut ids: Vec<u32> = netns_names().iter().filter_map(|n| owner_pid(n)).collect();
    if let Ok(entries) = std::fs::read_dir(RUN_ROOT) {
        ids.extend(entries.flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(BPFFS) {
        ids.extend(entries.flatten().filter_map(|e| owner_pid(&e.file_name().to_string_lossy())));
    }
    ids.sort_unstable();
    ids.dedup();
    let me = std::process::id();
    let mut n = 0;
    for id in ids.into_iter().filter(|&id| id != me && !pid_alive(id)) {
        remove_run(id);
        n += 1;
    }
    n
}

/// Reads the busy and total jiffies of every CPU from /proc/stat.
pub fn cpu_times() -> Vec<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_cpu_times(&s)
}

/// Per-CPU (busy, total) jiffies; busy excludes idle and iowait.
pub fn parse_cpu_times(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest counted in user)
            let total: u64 = f.iter().take(8).sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("dpbench-1234-kn"), Some(1234));
        assert_eq!(owner_pid("dpbench-1234"), Some(1234));
        assert_eq!(owner_pid("dpwalk-node"), None);
        assert_eq!(owner_pid("dpbench-x-1"), None);
    }

    #[test]
    fn proc_stat() {
        let s = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 0 5 50 2 0 1 0 0 0\ncpu1 5 0 5 50 0 0 0 0 0 0\nintr 1\n";
        assert_eq!(parse_cpu_times(s), vec![(11, 63), (10, 60)]);
    }
}
