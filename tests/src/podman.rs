//! A real container runtime on a test node: podman (with runc and its CNI
//! network backend) configured in directories of the test's own, run from
//! the node's network namespace, with an image imported offline from a
//! busybox-static root filesystem.
//!
//! Facts of this machine kind the setup follows: runc, not crun (crun fails
//! on its cgroup layout); `cgroupfs`; the `vfs` storage driver; explicit
//! `--ulimit`s on every `run` (runc cannot apply podman's default rlimits
//! here); `nsenter --net=` into the node rather than `ip netns exec` (whose
//! private mount namespace would hide podman's own namespace bind mounts).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use datapath::testbed::process::{run_timeout, show, stdout_str};
use serde_json::json;

use crate::cni::{cni_bin, reference_plugins};
use crate::node::Node;

/// The image every test container runs.
pub const IMAGE: &str = "localhost/dpt-busybox:latest";
/// The ulimits of every `podman run` (see the module doc).
pub const ULIMITS: &[&str] = &["--ulimit", "nproc=4096:4096", "--ulimit", "nofile=1024:1024"];
/// How long one podman command may take.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// Panics with what to install when podman or its pieces are missing
/// (`cargo xtask test` installs them).
pub fn require_tools() {
    for (tool, pkg) in [("podman", "podman"), ("runc", "runc"), ("nsenter", "util-linux")] {
        let found =
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file());
        assert!(found, "`{tool}` not found: apt-get install {pkg} (`cargo xtask test` installs it)");
    }
    assert!(Path::new("/bin/busybox").is_file(), "/bin/busybox missing: apt-get install busybox-static");
    reference_plugins();
}

/// podman on one node; everything it keeps is under `dir`. Dropping it
/// removes every container (and with them their CNI attachments).
pub struct Podman {
    pub dir: PathBuf,
    node_netns: String,
}

impl Podman {
    /// Configures podman for `node` with the CNI networks `conflists`
    /// (name, JSON) and imports [`IMAGE`].
    pub fn new(node: &Node, conflists: &[(&str, serde_json::Value)]) -> Podman {
        require_tools();
        let dir = node.dir.join("podman");
        let net_d = dir.join("net.d");
        for d in [&dir, &net_d, &dir.join("tmp")] {
            std::fs::create_dir_all(d).expect("podman dirs");
        }
        let plugin_dir = cni_bin().parent().map(Path::to_path_buf).expect("the plugin's directory");
        let conf = format!(
            r#"[containers]
default_sysctls = []

[network]
network_backend = "cni"
network_config_dir = "{net_d}"
cni_plugin_dirs = ["{plugins}", "{reference}"]
default_subnet = "10.88.0.0/16"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
tmp_dir = "{dir}/tmp"
static_dir = "{dir}/libpod"
volume_path = "{dir}/volumes"
"#,
            net_d = net_d.display(),
            plugins = plugin_dir.display(),
            reference = reference_plugins().display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("containers.conf"), conf).expect("containers.conf");
        let storage =
            format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/graph\"\n", dir.display());
        std::fs::write(dir.join("storage.conf"), storage).expect("storage.conf");
        for (name, list) in conflists {
            std::fs::write(net_d.join(format!("{name}.conflist")), list.to_string()).expect("conflist");
        }
        let p = Podman { dir, node_netns: node.name.clone() };
        p.import_image();
        p
    }

    /// A `podman ARGS` command in the node's network namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node_netns))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env_remove("CONTAINERS_REGISTRIES_CONF");
        c
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        run_timeout(&mut self.cmd(args), PODMAN_TIMEOUT)
    }

    /// Runs `podman ARGS`, asserts success, returns stdout (trimmed).
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(o.status.success(), "podman {}:\n{}", args.join(" "), show(&o));
        stdout_str(&o).trim().to_string()
    }

    /// `podman run ULIMITS ARGS` (image and command in `args`): stdout,
    /// and how long it took.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> (String, Duration) {
        let mut a = vec!["run"];
        a.extend_from_slice(ULIMITS);
        a.extend_from_slice(args);
        let t0 = Instant::now();
        let out = self.ok(&a);
        (out, t0.elapsed())
    }

    /// A container's full id.
    pub fn id(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.Id}}", name])
    }

    /// The rootfs of busybox-static (`/bin/busybox` and its applets), as
    /// [`IMAGE`]: no registry involved.
    fn import_image(&self) {
        let rootfs = self.dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dirs");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copying busybox");
        // Every applet as a relative link (`busybox --install` would link
        // to the host path it runs from).
        let o = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
        assert!(o.status.success(), "busybox --list:\n{}", show(&o));
        for applet in stdout_str(&o).lines().filter(|a| !a.is_empty() && *a != "busybox") {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet link");
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
        let tar = self.dir.join("rootfs.tar");
        let o = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").output().expect("tar");
        assert!(o.status.success(), "tar:\n{}", show(&o));
        self.ok(&["import", "--change", "ENV PATH=/bin", &tar.display().to_string(), IMAGE]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers go first: their DEL detaches them from the agent's
        // networks (the agent is still running: the node drops after us).
        let o = self.exec(&["rm", "-a", "-f", "-t", "0"]);
        if !o.status.success() {
            eprintln!("podman rm -a -f:\n{}", show(&o));
        }
        let _ = self.exec(&["system", "reset", "-f"]);
    }
}

/// The conflist of a datapath network for podman: `datapath-cni` on the
/// agent's `network` (over `socket`), with the `portMappings` capability:
/// the datapath publishes a runtime's `-p` itself (no `portmap` chained).
pub fn datapath_conflist(name: &str, network: &str, socket: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "datapath-cni", "network": network, "socket": socket, "capabilities": {"portMappings": true}}
        ]
    })
}

/// The opt-in to the reference `portmap`: `datapath-cni` with
/// `"portMappings": "portmap"` and `portmap` chained after it to publish
/// the runtime's `-p` with netfilter DNAT.
pub fn portmap_conflist(name: &str, network: &str, socket: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "datapath-cni", "network": network, "socket": socket, "portMappings": "portmap",
             "capabilities": {"portMappings": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    })
}
