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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Once, OnceLock};

use datapath::host::netns;
pub use datapath::testbed::names::{list_netns, netns_exists, BPFFS};
use datapath::testbed::names::{Claim, Family};
use datapath::testbed::process::{run, stdout_str};

/// The head of every test prefix: `dpt` + 5 hex digits.
pub const PREFIX_HEAD: &str = "dpt";

/// Root of the per-test temp dirs.
pub fn base_dir() -> PathBuf {
    std::env::temp_dir().join("datapath-tests")
}

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

/// The agent of the last IPv4-only build (commit 1698390, built by `cargo
/// xtask build-baseline`), where the upgrade test starts:
/// `$DATAPATH_BASELINE_BIN`, else `target/baseline/datapath`.
pub fn baseline_bin() -> PathBuf {
    let p = std::env::var_os("DATAPATH_BASELINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("baseline").join("datapath"));
    assert!(
        p.is_file(),
        "the IPv4-only baseline agent {} is missing: build it with `cargo xtask build-baseline` \
         (`cargo xtask test` does)",
        p.display()
    );
    p
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
        Err(format!("cannot mount bpffs on {BPFFS}: {}", datapath::testbed::process::show(&out)))
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
        sweep();
        if !problems.is_empty() {
            let _ = ERR.set(problems.join("; "));
        }
    });
    if let Some(e) = ERR.get() {
        panic!("test environment incomplete: {e}");
    }
}

/// The tests' family of prefixes ([`datapath::testbed::names`]): `dpt` +
/// 5 hex digits, owner markers under [`base_dir`].
pub fn family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(PREFIX_HEAD, base_dir()))
}

/// Claims a fresh prefix (temp dir with the owner marker); dropping the
/// claim removes everything carrying the prefix.
pub fn claim_prefix() -> Claim {
    family().claim().unwrap_or_else(|e| panic!("claiming a test prefix: {e}"))
}

/// Removes every leftover of dead prefixes: processes, netns, bpffs dirs,
/// temp dirs.
pub fn sweep() {
    family().sweep();
}

/// Deletes a named netns (ignores "not found").
pub fn netns_del(name: &str) {
    let _ = netns::delete_path(&netns::named_path(name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The suite's family (the prefix rules are the test bed's, tested there).
    #[test]
    fn prefixes() {
        let f = family();
        assert!(f.is_prefix("dpt0a1f9"));
        assert!(!f.is_prefix("dpb0a1f9"));
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
        let live_claim = claim_prefix();
        let dead_claim = claim_prefix();
        let (live, live_dir) = (live_claim.prefix.clone(), live_claim.dir.clone());
        let (dead, dead_dir) = (dead_claim.prefix.clone(), dead_claim.dir.clone());
        // The dead one's claim is forgotten, as by a killed process.
        std::mem::forget(dead_claim);
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
        drop(live_claim);
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
