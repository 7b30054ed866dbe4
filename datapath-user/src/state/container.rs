//! What the state records of a command started with `datapath run`:
//! Docker's network modes for a command, without images. The agent keeps
//! the records, `host::process` identifies the processes and the CLI
//! attaches the terminal.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::process;

/// How a command is networked (`--network`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum RunMode {
    /// A new endpoint on this network (`bridge` or a custom one).
    Network(String),
    /// The node's own namespace (the agent's).
    Host,
    /// A new namespace with only `lo`.
    None,
    /// The namespace of an existing endpoint or container.
    Container(String),
}

impl RunMode {
    pub fn parse(s: &str) -> Result<RunMode, String> {
        match s {
            "" => Err("empty --network".into()),
            "host" => Ok(RunMode::Host),
            "none" => Ok(RunMode::None),
            _ => match s.strip_prefix("container:") {
                Some("") => Err("--network container: needs a name (container:NAME)".into()),
                Some(name) => Ok(RunMode::Container(name.to_string())),
                None => Ok(RunMode::Network(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for RunMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunMode::Network(n) => f.write_str(n),
            RunMode::Host => f.write_str("host"),
            RunMode::None => f.write_str("none"),
            RunMode::Container(n) => write!(f, "container:{n}"),
        }
    }
}

/// A command run by `datapath run`, as the agent records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub mode: RunMode,
    /// The endpoint made for it (network and none modes), removed with it.
    pub endpoint: Option<String>,
    pub netns_path: PathBuf,
    pub argv: Vec<String>,
    pub detached: bool,
    pub rm: bool,
    pub pid: Option<u32>,
    /// Start time of `pid` (field 22 of /proc/PID/stat), so a recycled pid
    /// is never mistaken for ours.
    pub pid_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub log: Option<PathBuf>,
    pub created: String,
}

impl ContainerSpec {
    /// Whether the recorded process is still the one we started and alive
    /// (zombies count as exited).
    pub fn is_running(&self) -> bool {
        match (self.pid, self.pid_start) {
            (Some(pid), Some(start)) => process::is_alive(pid, start),
            _ => false,
        }
    }

    pub fn status(&self) -> String {
        if self.is_running() {
            "running".into()
        } else if let Some(code) = self.exit_code {
            format!("exited ({code})")
        } else if self.pid.is_none() {
            "created".into()
        } else {
            "exited".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(RunMode::parse("bridge").unwrap(), RunMode::Network("bridge".into()));
        assert_eq!(RunMode::parse("host").unwrap(), RunMode::Host);
        assert_eq!(RunMode::parse("none").unwrap(), RunMode::None);
        assert_eq!(RunMode::parse("container:web").unwrap(), RunMode::Container("web".into()));
        assert!(RunMode::parse("container:").is_err());
        assert!(RunMode::parse("").is_err());
        assert_eq!(RunMode::parse("container:web").unwrap().to_string(), "container:web");
    }

    #[test]
    fn running_is_tied_to_pid_and_start_time() {
        let me = std::process::id();
        let mut c = ContainerSpec {
            name: "x".into(),
            mode: RunMode::Host,
            endpoint: None,
            netns_path: "/proc/self/ns/net".into(),
            argv: vec!["true".into()],
            detached: false,
            rm: false,
            pid: Some(me),
            pid_start: process::start_time(me),
            exit_code: None,
            log: None,
            created: String::new(),
        };
        assert!(c.is_running());
        c.pid_start = c.pid_start.map(|s| s + 1);
        assert!(!c.is_running(), "a recycled pid is not ours");
        c.exit_code = Some(3);
        assert_eq!(c.status(), "exited (3)");
    }
}
