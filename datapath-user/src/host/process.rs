//! Processes the agent starts or watches: spawning inside a namespace,
//! identity (pid + start time, so a recycled pid is never taken for ours)
//! and exit codes.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::host::netns::{self, NetnsError};

/// Start time of a process in clock ticks since boot, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of /proc/PID/stat; the command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its last ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` lives in the network namespace at `netns_path`
/// (same nsfs inode); `None` when its namespace cannot be read (the process
/// is gone, or a zombie).
pub fn in_netns(pid: u32, netns_path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let theirs = ns(Path::new(&format!("/proc/{pid}/ns/net")))?;
    Some(Some(theirs) == ns(netns_path))
}

/// Whether `pid` is alive and still the process that started at `start`
/// (zombies count as exited).
pub fn is_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    parse_start_time(&stat) == Some(start) && state != Some("Z") && state != Some("X")
}

/// Exit status of a command as a shell reports it (128+signal when killed).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Starts `argv` inside the namespace at `netns_path`, in a process group
/// of its own, stdin from /dev/null and output to `log` when given: spawned
/// from a thread that entered the namespace, so the child inherits it.
/// Blocking (a thread is started and joined). The outer error is the
/// namespace's, the inner one the spawn's.
pub fn spawn_in(
    netns_path: &Path,
    argv: &[String],
    cwd: Option<&Path>,
    log: Option<std::fs::File>,
) -> Result<std::io::Result<Child>, NetnsError> {
    let argv = argv.to_vec();
    let cwd = cwd.map(Path::to_path_buf);
    let path = netns_path.to_path_buf();
    netns::run_in(netns_path, move || {
        let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        netns::etc_overrides(&mut cmd, &path);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        if let Some(f) = log {
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        // Its own session: not killed with the agent's terminal.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        cmd.spawn()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_identity() {
        let me = std::process::id();
        assert_eq!(in_netns(me, Path::new("/proc/self/ns/net")), Some(true));
        assert_eq!(in_netns(me, Path::new("/proc/self/ns/mnt")), Some(false));
        assert_eq!(in_netns(u32::MAX, Path::new("/proc/self/ns/net")), None);
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = std::process::id();
        assert!(start_time(me).is_some());
    }
}
