//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and
//! running work inside a namespace from a dedicated thread.
//!
//! Namespace switches are per thread, so each is done on a short-lived thread
//! of its own: the tokio workers never change namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use thiserror::Error;

pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace {0:?} already exists")]
    Exists(String),
    #[error("network namespace {0} does not exist")]
    Missing(PathBuf),
    #[error("{what}: {source}")]
    Sys { what: String, source: std::io::Error },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> NetnsError {
    let what = what.into();
    move |e| NetnsError::Sys { what, source: e.into() }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Sys { what, source }
}

pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so the
/// namespace mounts under it are visible in every mount namespace.
fn prepare_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(io("create /run/netns"))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, Some("none"), shared, None::<&str>).is_ok() {
        return Ok(());
    }
    mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("bind-mount /run/netns"))?;
    mount(None::<&str>, dir, Some("none"), shared, None::<&str>).map_err(sys("make /run/netns shared"))?;
    Ok(())
}

/// Creates `/run/netns/NAME` holding a new network namespace with `lo` left
/// for the caller to bring up. IPv6 is disabled inside (IPv4-only networks
/// for now), which also keeps router solicitations off the wire.
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    prepare_run_dir()?;
    let path = named_path(name);
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(NetnsError::Exists(name.to_string())),
        Err(e) => return Err(io(format!("create {}", path.display()))(e)),
    }
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare(CLONE_NEWNET)"))?;
        for knob in ["all", "default"] {
            // Best effort: IPv6 may be compiled out.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), b"1");
        }
        mount(Some("/proc/thread-self/ns/net"), &target, Some("none"), MsFlags::MS_BIND, None::<&str>)
            .map_err(sys(format!("bind-mount netns onto {}", target.display())))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Sys { what: "netns thread panicked".into(), source: std::io::Error::other("panic") })
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a namespace made by [`create_named`] (the namespace itself goes
/// away once no process and no interface holds it). Missing is fine.
pub fn delete_path(path: &Path) -> Result<(), NetnsError> {
    if !path.exists() {
        return Ok(());
    }
    let _ = umount2(path, MntFlags::MNT_DETACH);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("remove {}", path.display()))(e)),
    }
}

pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NetnsError::Missing(path.to_path_buf()),
        _ => NetnsError::Sys { what: format!("open {}", path.display()), source: e },
    })
}

/// Moves the whole (still single-threaded) process into a namespace. Used by
/// `datapath agent --netns NODE` before any thread is started.
pub fn enter_process(path: &Path) -> Result<(), NetnsError> {
    let f = open(path)?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(sys(format!("setns into {}", path.display())))
}

/// Runs `f` on a fresh thread that has entered the namespace at `path`.
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
    let ns = open(path)?;
    let what = format!("setns into {}", path.display());
    std::thread::spawn(move || -> Result<T, NetnsError> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(sys(what))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Sys { what: "netns thread panicked".into(), source: std::io::Error::other("panic") })
    })
}

/// Gives a command what `ip netns exec NAME` gives it: each file of
/// `/etc/netns/NAME/` bind-mounted over the same name in `/etc`, in a
/// mount namespace of the child's own (so `resolv.conf` names the
/// endpoint's embedded DNS). Nothing when `netns_path` is not a
/// `/run/netns` name or there are no such files.
pub fn etc_overrides(cmd: &mut std::process::Command, netns_path: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let Some(name) = netns_path.strip_prefix(NETNS_RUN_DIR).ok().filter(|n| n.components().count() == 1) else {
        return;
    };
    let dir = Path::new("/etc/netns").join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    // Made before the fork: nothing allocates in the child.
    let binds: Vec<(CString, CString)> = entries
        .flatten()
        .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
        .filter_map(|e| {
            let target = Path::new("/etc").join(e.file_name());
            target.exists().then_some(())?;
            Some((
                CString::new(e.path().as_os_str().as_bytes()).ok()?,
                CString::new(target.as_os_str().as_bytes()).ok()?,
            ))
        })
        .collect();
    if binds.is_empty() {
        return;
    }
    let root = c"/";
    let hook = move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Our mounts stay ours; the node's still reach us.
        mount(
            None::<&std::ffi::CStr>,
            root,
            None::<&std::ffi::CStr>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&std::ffi::CStr>,
        )?;
        for (src, dst) in &binds {
            mount(
                Some(src.as_c_str()),
                dst.as_c_str(),
                None::<&std::ffi::CStr>,
                MsFlags::MS_BIND,
                None::<&std::ffi::CStr>,
            )?;
        }
        Ok(())
    };
    // SAFETY: the hook only makes system calls (unshare, mount) on data
    // prepared before the fork; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}
