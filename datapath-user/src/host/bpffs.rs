//! The bpffs directory where the agent pins its objects.

use std::path::Path;

use anyhow::Context;

/// Makes sure the pin directory sits on a mounted bpffs, mounting one at
/// its parent (normally /sys/fs/bpf) the way Cilium does when none is.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between libcs
    let is_bpffs = |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC);
    let parent = dir.parent().unwrap_or(dir);
    if parent.exists() && !is_bpffs(parent) && !dir.exists() {
        tracing::info!("mounting bpffs at {}", parent.display());
        nix::mount::mount(Some("bpffs"), parent, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting bpffs at {}", parent.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating bpffs dir {}", dir.display()))?;
    Ok(())
}
