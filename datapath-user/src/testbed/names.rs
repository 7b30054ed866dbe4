//! Unique names for everything a test-bed user makes, and the sweeper that
//! removes what killed runs left behind.
//!
//! Ownership model. A [`Family`] (e.g. `dpt` for the integration tests, `dpm`
//! for the benchmark, `dpg` for the program tests) hands out *prefixes*: its head + 5 lowercase hex digits
//! (`dpt0a1f9`). Every resource made under a prefix carries it: named netns
//! `<prefix>node`, `<prefix>out`, `<prefix><endpoint>`; the directory
//! `<base>/<prefix>/` and the bpffs directory `/sys/fs/bpf/<prefix>`; and every
//! long-running process either has the prefix in its argv or runs inside one
//! of the prefix's namespaces. The directory holds `owner` = "<pid>
//! <starttime>" of the claiming process: a prefix is *live* while that process
//! exists (same pid and same start time, so pid reuse can't fool it). The
//! sweeper deletes everything carrying a prefix that is not live.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::host::netns::{self, NETNS_RUN_DIR};
use crate::host::process::start_time;
use crate::testbed::process::{signal, Signal};

/// Where the agents' bpffs directories live (`/sys/fs/bpf/<prefix>`).
pub const BPFFS: &str = "/sys/fs/bpf";
/// Hex digits after the head of a prefix.
pub const HEX_DIGITS: usize = 5;

/// A family of prefixes: a head (lowercase letters) and the base directory
/// holding one directory (with the owner marker) per claimed prefix.
#[derive(Clone, Debug)]
pub struct Family {
    head: String,
    base: PathBuf,
}

impl Family {
    /// A family with prefixes `head` + 5 hex digits. The head is lowercase
    /// letters and does not end in a hex digit, so no prefix can be mistaken
    /// for an interface name the agent makes (`dp` + hex digits).
    pub fn new(head: &str, base: impl Into<PathBuf>) -> Family {
        let ok = !head.is_empty()
            && head.chars().all(|c| c.is_ascii_lowercase())
            && !head.ends_with(|c: char| c.is_ascii_hexdigit());
        assert!(ok, "bad prefix head {head:?}");
        Family { head: head.to_string(), base: base.into() }
    }

    pub fn head(&self) -> &str {
        &self.head
    }

    /// The directory holding the per-prefix directories.
    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn prefix_len(&self) -> usize {
        self.head.len() + HEX_DIGITS
    }

    /// Is `s` a prefix of this family (head + 5 lowercase hex digits)?
    pub fn is_prefix(&self, s: &str) -> bool {
        s.len() == self.prefix_len()
            && s.starts_with(&self.head)
            && s[self.head.len()..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }

    /// The prefix a name starts with, if any.
    pub fn prefix_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.get(..self.prefix_len()).filter(|p| self.is_prefix(p))
    }

    /// Whether `prefix` belongs to a running process.
    pub fn is_live(&self, prefix: &str) -> bool {
        let dir = self.base.join(prefix);
        match fs::read_to_string(dir.join("owner")) {
            Ok(s) => {
                let mut it = s.split_whitespace();
                let Some(pid) = it.next().and_then(|p| p.parse::<u32>().ok()) else {
                    return false;
                };
                let start: u64 = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                start_time(pid) == Some(start)
            }
            // Directory being created right now by another process: give it a
            // minute before calling it dead.
            Err(_) => fs::metadata(&dir)
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() < Duration::from_secs(60))
                .unwrap_or(false),
        }
    }

    /// Claims a fresh prefix: creates its directory with the owner marker.
    /// Dropping the [`Claim`] removes everything carrying the prefix.
    pub fn claim(&self) -> std::io::Result<Claim> {
        fs::create_dir_all(&self.base)?;
        let taken = list_netns();
        for _ in 0..1000 {
            let n: u32 = rand::random::<u32>() & 0xfffff;
            let prefix = format!("{}{n:05x}", self.head);
            if taken.iter().any(|n| n.starts_with(&prefix)) || Path::new(BPFFS).join(&prefix).exists() {
                continue;
            }
            let dir = self.base.join(&prefix);
            if fs::create_dir(&dir).is_ok() {
                fs::write(dir.join("owner"), self_owner())?;
                return Ok(Claim { family: self.clone(), prefix, dir });
            }
        }
        Err(std::io::Error::other(format!("no free {} prefix after 1000 tries", self.head)))
    }

    /// Removes every leftover of dead prefixes: processes, netns, bpffs
    /// dirs, prefix dirs. Returns how many dead prefixes it found.
    pub fn sweep(&self) -> usize {
        let mut dead: BTreeSet<String> = BTreeSet::new();
        let mut consider = |name: &str| {
            if let Some(p) = self.prefix_of(name) {
                if !self.is_live(p) {
                    dead.insert(p.to_string());
                }
            }
        };
        for ns in list_netns() {
            consider(&ns);
        }
        for dir in [Path::new(BPFFS), self.base.as_path(), Path::new(crate::dns::resolv::ETC_NETNS)] {
            for name in dir_names(dir) {
                consider(&name);
            }
        }
        for cmd in all_pids().iter().filter_map(|pid| cmdline(*pid)) {
            for p in self.prefixes_in(&cmd) {
                consider(p);
            }
        }
        for p in &dead {
            self.remove(p);
        }
        dead.len()
    }

    /// Removes everything carrying `prefix`: processes (by argv and by
    /// namespace), named netns, the bpffs dir, `/etc/netns` resolver
    /// files, and last the prefix dir (it
    /// holds the owner marker).
    pub fn remove(&self, prefix: &str) {
        let namespaces: Vec<String> = list_netns().into_iter().filter(|n| n.starts_with(prefix)).collect();
        let mut pids = pids_mentioning(|cmd| self.mentions(cmd, &|p| p == prefix));
        for ns in &namespaces {
            pids.extend(pids_in_netns(&netns::named_path(ns)));
        }
        kill_and_wait(&pids);
        for ns in &namespaces {
            let _ = netns::delete_path(&netns::named_path(ns));
        }
        let _ = fs::remove_dir_all(Path::new(BPFFS).join(prefix));
        // Resolver files of the embedded DNS an agent left for its endpoints.
        for name in dir_names(Path::new(crate::dns::resolv::ETC_NETNS)).iter().filter(|n| n.starts_with(prefix)) {
            crate::dns::resolv::remove(name);
        }
        let _ = fs::remove_dir_all(self.base.join(prefix));
    }

    /// Whether `text` contains a prefix of this family for which `pred` holds.
    fn mentions(&self, text: &str, pred: &dyn Fn(&str) -> bool) -> bool {
        self.prefixes_in(text).into_iter().any(pred)
    }

    /// Every prefix of this family occurring in `text`.
    fn prefixes_in<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut found = Vec::new();
        let mut i = 0;
        while let Some(off) = text[i..].find(&self.head) {
            let at = i + off;
            if let Some(p) = text.get(at..at + self.prefix_len()).filter(|p| self.is_prefix(p)) {
                found.push(p);
            }
            i = at + self.head.len();
        }
        found
    }
}

/// A claimed prefix; dropping it removes everything carrying the prefix
/// (after the owner's own guards, declared before it, have run).
pub struct Claim {
    family: Family,
    pub prefix: String,
    /// `<base>/<prefix>/`, with the owner marker.
    pub dir: PathBuf,
}

impl Claim {
    pub fn family(&self) -> &Family {
        &self.family
    }

    /// `<prefix><suffix>`: a name for something of this claim.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// `/sys/fs/bpf/<prefix>`: the bpffs directory for an agent of this claim.
    pub fn bpffs(&self) -> PathBuf {
        Path::new(BPFFS).join(&self.prefix)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.family.remove(&self.prefix);
    }
}

fn self_owner() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or(0))
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Names in /run/netns.
pub fn list_netns() -> BTreeSet<String> {
    dir_names(Path::new(NETNS_RUN_DIR)).into_iter().collect()
}

pub fn netns_exists(name: &str) -> bool {
    netns::named_path(name).exists()
}

fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    dir_names(Path::new("/proc")).iter().filter_map(|n| n.parse().ok()).filter(|&p| p != me).collect()
}

/// The command line of `pid`, arguments separated by spaces.
fn cmdline(pid: u32) -> Option<String> {
    fs::read(format!("/proc/{pid}/cmdline")).ok().map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
}

/// Pids (other than ours) whose command line satisfies `pred`.
pub fn pids_mentioning(pred: impl Fn(&str) -> bool) -> Vec<u32> {
    all_pids().into_iter().filter(|&pid| cmdline(pid).is_some_and(|c| pred(&c))).collect()
}

/// Pids (other than ours) living in the network namespace mounted at `path`.
pub fn pids_in_netns(path: &Path) -> Vec<u32> {
    let Ok(target) = fs::metadata(path) else {
        return Vec::new();
    };
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino() == target.ino() && m.dev() == target.dev())
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs `pids` and waits briefly for each to be gone (or a zombie).
pub fn kill_and_wait(pids: &[u32]) {
    for &p in pids {
        signal(p, Signal::SIGKILL);
    }
    for &p in pids {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let f = Family::new("dpt", "/nonexistent");
        assert!(f.is_prefix("dpt0a1f9"));
        assert!(!f.is_prefix("dpt0a1fz"));
        assert!(!f.is_prefix("dpb0a1f9"));
        assert!(!f.is_prefix("dpt0A1f9"));
        assert_eq!(f.prefix_of("dpt0a1f9node"), Some("dpt0a1f9"));
        assert_eq!(f.prefix_of("dpt0a"), None);
        assert!(f.mentions("ip netns exec dpt0a1f9node x", &|p| p == "dpt0a1f9"));
        assert!(!f.mentions("dptdpt0a1f", &|_| true));
    }
}
