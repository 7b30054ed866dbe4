//! Suite environment: root check, the binary under test, tool checks, the
//! bpffs mount, unique per-test prefixes with owner markers, and the sweeper
//! that removes what killed runs left behind.
//!
//! Ownership model. Every resource a test makes is named with its prefix
//! `dpt` + 5 hex digits: netns `dptXXXXXnode` and `dptXXXXX<suffix>`, the
//! temp dir `<tmp>/datapath-tests/dptXXXXX/`, the bpffs dir
//! `/sys/fs/bpf/dptXXXXX`, and every long-running process it starts has the
//! prefix somewhere in its argv. The temp dir holds `owner` = "<pid>
//! <starttime>" of the test process. A prefix is *live* while that process
//! exists (same pid and same start time, so pid reuse can't fool it). The
//! sweeper deletes everything carrying a prefix that is not live.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, SystemTime};

use crate::proc::{run, signal, stdout_str};

pub const PREFIX_HEAD: &str = "dpt";
/// `dpt` + 5 hex digits.
pub const PREFIX_LEN: usize = 8;

/// Root of the per-test temp dirs.
pub fn base_dir() -> PathBuf {
    std::env::temp_dir().join("datapath-tests")
}

pub const BPFFS: &str = "/sys/fs/bpf";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The binary under test: `$DATAPATH_BIN`, else `target/release/datapath`,
/// else `target/debug/datapath`.
pub fn datapath_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DATAPATH_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("DATAPATH_BIN={} does not exist", p.display())) };
    }
    let root = workspace_root();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("datapath");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "no datapath binary: set DATAPATH_BIN or build {}/target/{{release,debug}}/datapath \
         (`cargo xtask build`)",
        root.display()
    ))
}

pub fn bin() -> PathBuf {
    datapath_bin().unwrap_or_else(|e| panic!("{e}"))
}

pub fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2)) // effective uid
        .map(|u| u == "0")
        .unwrap_or(false)
}

/// The real python3 interpreter (resolves pyenv shims once, so
/// `ip netns exec NS <python>` doesn't depend on shell setup).
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output();
        match out {
            Ok(o) if o.status.success() => {
                let p = stdout_str(&o).trim().to_string();
                if p.is_empty() {
                    "python3".into()
                } else {
                    p
                }
            }
            _ => "python3".into(),
        }
    })
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Mounts bpffs on /sys/fs/bpf when nothing is mounted there (systemd does
/// this on most hosts; bare containers don't).
fn ensure_bpffs() -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    let out = run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("cannot mount bpffs on {BPFFS}: {}", crate::proc::show(&out)))
    }
}

/// Gate at the top of every kernel test. Returns false (after printing why)
/// when the test must be skipped: only when not root. Everything else that is
/// missing (binary, tools, bpffs) panics: a test that cannot run must fail.
pub fn kernel_prelude(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP {test}: needs root (network namespaces, eBPF); run the suite as root");
        return false;
    }
    suite_setup();
    if let Err(e) = datapath_bin() {
        panic!("{test}: {e}");
    }
    true
}

/// Once per test process: tools, bpffs, sweeper.
pub fn suite_setup() {
    static ONCE: Once = Once::new();
    static ERR: OnceLock<String> = OnceLock::new();
    ONCE.call_once(|| {
        let mut problems = Vec::new();
        for (tool, pkg) in [
            ("ip", "iproute2"),
            ("python3", "python3"),
            ("kill", "procps"),
            ("ss", "iproute2"),
            ("sha256sum", "coreutils"),
        ] {
            if !have(tool) {
                problems.push(format!("`{tool}` not found (install {pkg})"));
            }
        }
        if let Err(e) = ensure_bpffs() {
            problems.push(e);
        }
        let _ = fs::create_dir_all(base_dir());
        let _ = fs::create_dir_all("/run/netns");
        sweep();
        if !problems.is_empty() {
            let _ = ERR.set(problems.join("; "));
        }
    });
    if let Some(e) = ERR.get() {
        panic!("test environment incomplete: {e}");
    }
}

/// `/proc/PID/stat` field 22 (start time in clock ticks since boot).
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces/parens: fields after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn self_owner() -> String {
    let pid = std::process::id();
    format!("{pid} {}", proc_start_time(pid).unwrap_or(0))
}

/// Is `s` a test prefix (`dpt` + 5 lowercase hex)?
pub fn is_prefix(s: &str) -> bool {
    s.len() == PREFIX_LEN
        && s.starts_with(PREFIX_HEAD)
        && s[3..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// The prefix a name starts with, if any.
pub fn prefix_of(name: &str) -> Option<&str> {
    name.get(..PREFIX_LEN).filter(|p| is_prefix(p))
}

/// Whether `prefix` belongs to a running test process.
pub fn is_live(prefix: &str) -> bool {
    let dir = base_dir().join(prefix);
    match fs::read_to_string(dir.join("owner")) {
        Ok(s) => {
            let mut it = s.split_whitespace();
            let pid: u32 = match it.next().and_then(|p| p.parse().ok()) {
                Some(p) => p,
                None => return false,
            };
            let start: u64 = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            proc_start_time(pid) == Some(start)
        }
        // Directory being created right now by another process: give it a
        // minute before calling it dead.
        Err(_) => fs::metadata(&dir)
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() < Duration::from_secs(60))
            .unwrap_or(false),
    }
}

/// Claims a fresh prefix: creates its temp dir with the owner marker.
pub fn claim_prefix() -> (String, PathBuf) {
    let netns = list_netns();
    for _ in 0..1000 {
        let n: u32 = rand::random::<u32>() & 0xfffff;
        let prefix = format!("{PREFIX_HEAD}{n:05x}");
        if netns.iter().any(|n| n.starts_with(&prefix)) || Path::new(BPFFS).join(&prefix).exists() {
            continue;
        }
        let dir = base_dir().join(&prefix);
        fs::create_dir_all(base_dir()).expect("create base dir");
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::write(dir.join("owner"), self_owner()).expect("write owner marker");
                return (prefix, dir);
            }
            Err(_) => continue,
        }
    }
    panic!("could not find a free test prefix");
}

/// Names in /run/netns.
pub fn list_netns() -> BTreeSet<String> {
    fs::read_dir("/run/netns")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Deletes a named netns (ignores "not found").
pub fn netns_del(name: &str) {
    if netns_exists(name) {
        let out = run(Command::new("ip").args(["netns", "del", name]));
        if !out.status.success() && netns_exists(name) {
            // A stale mount point without a namespace: remove by hand.
            let p = Path::new("/run/netns").join(name);
            let _ = Command::new("umount").arg("-l").arg(&p).status();
            let _ = fs::remove_file(&p);
        }
    }
}

/// Pids (other than ours) whose argv mentions one of `prefixes`.
pub fn pids_mentioning(pred: impl Fn(&str) -> bool) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // Every test prefix occurrence in the command line.
        let mut hit = false;
        let mut i = 0;
        while let Some(off) = cmd[i..].find(PREFIX_HEAD) {
            let at = i + off;
            if let Some(p) = cmd.get(at..at + PREFIX_LEN) {
                if is_prefix(p) && pred(p) {
                    hit = true;
                    break;
                }
            }
            i = at + PREFIX_HEAD.len();
        }
        if hit {
            pids.push(pid);
        }
    }
    pids
}

/// Kills (SIGKILL) processes whose argv mentions a prefix for which
/// `pred` is true, and waits briefly for them to go.
pub fn kill_mentioning(pred: impl Fn(&str) -> bool) {
    let pids = pids_mentioning(pred);
    for &p in &pids {
        signal(p, "KILL");
    }
    for &p in &pids {
        for _ in 0..100 {
            // Zombies of other parents keep /proc/PID; state Z is gone enough.
            match fs::read_to_string(format!("/proc/{p}/stat")) {
                Ok(s) if !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

/// Removes every leftover of dead prefixes: processes, netns, bpffs dirs,
/// temp dirs.
pub fn sweep() {
    let dead = |p: &str| !is_live(p);
    kill_mentioning(dead);
    for ns in list_netns() {
        if let Some(p) = prefix_of(&ns) {
            if dead(p) {
                netns_del(&ns);
            }
        }
    }
    for dir in [PathBuf::from(BPFFS), base_dir()] {
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_prefix(&name) && dead(&name) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Removes everything carrying `prefix` (used by the guards' Drop).
pub fn remove_prefix(prefix: &str) {
    kill_mentioning(|p| p == prefix);
    for ns in list_netns() {
        if ns.starts_with(prefix) {
            netns_del(&ns);
        }
    }
    let _ = fs::remove_dir_all(Path::new(BPFFS).join(prefix));
    // Last: the owner marker lives here.
    let _ = fs::remove_dir_all(base_dir().join(prefix));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(is_prefix("dpt0a1f9"));
        assert!(!is_prefix("dpt0a1fz"));
        assert!(!is_prefix("dpb0a1f9"));
        assert!(!is_prefix("dpt0A1f9"));
        assert_eq!(prefix_of("dpt0a1f9node"), Some("dpt0a1f9"));
        assert_eq!(prefix_of("dpt0a"), None);
        assert!(proc_start_time(std::process::id()).is_some());
    }

    /// Leftovers of a dead owner (netns, process, bpffs dir, temp dir) are
    /// swept; those of a live owner are not. Needs root.
    #[test]
    fn sweeper_removes_only_dead_leftovers() {
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        suite_setup();
        let (live, live_dir) = claim_prefix();
        let (dead, dead_dir) = claim_prefix();
        // A dead owner: a pid that can't exist.
        fs::write(dead_dir.join("owner"), "4194305 1").unwrap();
        let mut procs = Vec::new();
        for p in [&live, &dead] {
            let ns = format!("{p}node");
            assert!(run(Command::new("ip").args(["netns", "add", &ns])).status.success());
            fs::create_dir_all(Path::new(BPFFS).join(p)).unwrap();
            procs.push(
                // argv keeps the prefix (like every process a test starts).
                Command::new(python())
                    .args(["-c", "import time; time.sleep(300)", p])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        // spawn() returns mid-exec (CLOEXEC fds close before argv is set
        // up), when /proc/PID/cmdline can still be empty: wait for argv.
        for c in &procs {
            for _ in 0..200 {
                let cmd = fs::read(format!("/proc/{}/cmdline", c.id())).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(PREFIX_HEAD) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let want = procs[1].id();
        sweep();
        // Reap the killed child so /proc no longer lists it.
        let dead_status = procs[1].try_wait();
        std::thread::sleep(Duration::from_millis(100));
        let dead_gone = procs[1].try_wait().map(|s| s.is_some()).unwrap_or(false) || matches!(dead_status, Ok(Some(_)));
        let live_running = procs[0].try_wait().map(|s| s.is_none()).unwrap_or(false);

        let ok_dead =
            !netns_exists(&format!("{dead}node")) && !Path::new(BPFFS).join(&dead).exists() && !dead_dir.exists();
        let ok_live =
            netns_exists(&format!("{live}node")) && Path::new(BPFFS).join(&live).exists() && live_dir.exists();
        // Clean up the live one the way a guard does.
        remove_prefix(&live);
        let _ = procs[0].wait();
        let _ = procs[1].kill();
        let _ = procs[1].wait();
        assert!(ok_dead, "dead leftovers not swept");
        assert!(dead_gone, "process {want} of a dead owner not killed ");
        assert!(ok_live, "live test's resources were swept");
        assert!(live_running, "live test's process was killed");
        assert!(!netns_exists(&format!("{live}node")), "remove_prefix left the netns");
        assert!(!live_dir.exists());
    }
}
