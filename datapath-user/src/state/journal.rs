//! What the agent made on the node that must be found again without the
//! state file (`datapath reset` after the state was lost): one marker file
//! per namespace the agent created (`STATE_DIR/owned/netns/NAME`, written
//! before the namespace is made, removed after it is deleted), and the
//! node's IPv4 forwarding value before the agent changed it
//! (`STATE_DIR/owned/ip_forward`).

use std::path::{Path, PathBuf};

/// The journal of a state directory.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal { dir: state_dir.join("owned") }
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// Records a namespace about to be made (blocking: a file write).
    pub fn add_netns(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.netns_dir())?;
        std::fs::write(self.netns_dir().join(name), b"")
    }

    /// The namespace is gone.
    pub fn remove_netns(&self, name: &str) {
        let _ = std::fs::remove_file(self.netns_dir().join(name));
    }

    /// Every namespace recorded.
    pub fn netns(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.netns_dir()) else { return Vec::new() };
        let mut v: Vec<String> = dir.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
        v.sort();
        v
    }

    fn forward_file(&self) -> PathBuf {
        self.dir.join("ip_forward")
    }

    /// Records the forwarding value the agent replaced.
    pub fn set_forwarding_was(&self, old: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.forward_file(), old)
    }

    /// The forwarding value to restore, if the agent changed it.
    pub fn forwarding_was(&self) -> Option<String> {
        std::fs::read_to_string(self.forward_file()).ok().map(|s| s.trim().to_string())
    }

    pub fn clear_forwarding_was(&self) {
        let _ = std::fs::remove_file(self.forward_file());
    }

    fn forward6_file(&self) -> PathBuf {
        self.dir.join("ip6_forward")
    }

    /// Records the IPv6 forwarding value the agent replaced.
    pub fn set_forwarding6_was(&self, old: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.forward6_file(), old)
    }

    /// The IPv6 forwarding value to restore, if the agent changed it.
    pub fn forwarding6_was(&self) -> Option<String> {
        std::fs::read_to_string(self.forward6_file()).ok().map(|s| s.trim().to_string())
    }

    pub fn clear_forwarding6_was(&self) {
        let _ = std::fs::remove_file(self.forward6_file());
    }

    /// Removes the journal itself.
    pub fn remove_all(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_namespaces_and_forwarding() {
        let dir = std::env::temp_dir().join(format!("dp-journal-{}", std::process::id()));
        let j = Journal::new(&dir);
        assert!(j.netns().is_empty());
        j.add_netns("b").unwrap();
        j.add_netns("a").unwrap();
        assert_eq!(j.netns(), vec!["a", "b"]);
        j.remove_netns("a");
        assert_eq!(j.netns(), vec!["b"]);
        assert_eq!(j.forwarding_was(), None);
        j.set_forwarding_was("0").unwrap();
        assert_eq!(j.forwarding_was().as_deref(), Some("0"));
        j.clear_forwarding_was();
        assert_eq!(j.forwarding_was(), None);
        j.set_forwarding6_was("0").unwrap();
        assert_eq!((j.forwarding_was(), j.forwarding6_was().as_deref()), (None, Some("0")));
        j.clear_forwarding6_was();
        assert_eq!(j.forwarding6_was(), None);
        j.remove_all();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
