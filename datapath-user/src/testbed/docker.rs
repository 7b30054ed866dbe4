//! A real Docker engine (Debian's docker.io) started inside a node
//! namespace, its state in a directory of the caller's: used by the Docker
//! tests and by the benchmark's `docker` topology.
//!
//! `ip netns exec NODE` gives dockerd a mount namespace of its own with a
//! fresh /sys; a small wrapper script puts back the cgroup hierarchies
//! dockerd needs, shows it only the plugin specs given here (its own
//! /etc/docker, none of the host's /run/docker) and execs it with every path
//! in that directory. With [`DockerdConfig::iptables`] dockerd programs its
//! bridge networks as it does on a host (iptables rules in the node
//! namespace, ip_forward, br_netfilter); without, it leaves the namespace's
//! netfilter alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::testbed::process::{self, show};

/// Where the distribution's Docker engine is (package `docker.io`).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";

/// The wrapper run by `ip netns exec NODE sh` (see the module docs). $1: the
/// state directory; the rest: more dockerd flags.
const WRAPPER: &str = r#"#!/bin/sh
set -e
D="$1"; shift
mount -t tmpfs cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir -p /sys/fs/cgroup/$c
  mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir -p /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mkdir -p /etc/docker
mount --bind "$D/etc" /etc/docker
if [ -d /run/docker ]; then mount -t tmpfs dockerrun /run/docker; fi
exec dockerd --host "unix://$D/docker.sock" --data-root "$D/data" --exec-root "$D/exec" \
  --pidfile "$D/dockerd.pid" --exec-opt native.cgroupdriver=cgroupfs \
  --config-file "$D/etc/daemon.json" --bridge none --shutdown-timeout 2 "$@"
"#;

#[derive(Debug, Error)]
pub enum DockerError {
    #[error("{DOCKERD} or {DOCKER} is not installed (Debian package docker.io)")]
    NotInstalled,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("dockerd did not answer within 60 s; log tail:\n{log}")]
    NotReady { log: String },
    #[error("docker {args}: {detail}")]
    Command { args: String, detail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DockerError {
    let what = what.into();
    move |source| DockerError::Io { what, source }
}

/// Is Docker installed?
pub fn installed() -> bool {
    Path::new(DOCKERD).exists() && Path::new(DOCKER).exists()
}

/// How to start dockerd.
#[derive(Clone, Debug)]
pub struct DockerdConfig {
    /// The node namespace dockerd runs in.
    pub node_ns: String,
    /// Its state (data root, exec root, socket, log, specs), made if missing.
    pub dir: PathBuf,
    /// Network plugins (name, unix socket), as spec files `NAME.spec`.
    pub plugins: Vec<(String, PathBuf)>,
    /// Docker's own network programming: iptables rules, ip_forward and
    /// br_netfilter in the node namespace (`--iptables --ip-forward`), and
    /// published ports by DNAT only (`--userland-proxy=false`: no proxy
    /// process per published port). Off: `--iptables=false
    /// --ip-forward=false`, the namespace's netfilter stays as it is.
    pub iptables: bool,
    /// dockerd in a process group of its own: a terminal's Ctrl-C reaches
    /// the caller only, which then removes the containers and stops dockerd
    /// in order (the benchmark does).
    pub own_process_group: bool,
}

impl DockerdConfig {
    pub fn new(node_ns: impl Into<String>, dir: impl Into<PathBuf>) -> DockerdConfig {
        DockerdConfig {
            node_ns: node_ns.into(),
            dir: dir.into(),
            plugins: Vec::new(),
            iptables: false,
            own_process_group: false,
        }
    }

    /// dockerd's flags after the wrapper's fixed ones.
    pub fn flags(&self) -> Vec<&'static str> {
        if self.iptables {
            vec!["--iptables=true", "--ip-forward=true", "--userland-proxy=false"]
        } else {
            vec!["--iptables=false", "--ip-forward=false"]
        }
    }
}

/// A running dockerd; on drop its containers are removed (their endpoints
/// go through the plugins) and it is stopped. Drop it before its node and
/// before the plugins' agent.
pub struct Dockerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    cfg: DockerdConfig,
    child: Child,
}

impl Dockerd {
    /// Starts dockerd and waits until it answers (at most 60 s).
    pub fn start(cfg: DockerdConfig) -> Result<Dockerd, DockerError> {
        if !installed() {
            return Err(DockerError::NotInstalled);
        }
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(dir.join("etc/plugins")).map_err(io("creating the docker directory"))?;
        std::fs::write(dir.join("etc/daemon.json"), "{}\n").map_err(io("writing daemon.json"))?;
        for (name, sock) in &cfg.plugins {
            std::fs::write(dir.join(format!("etc/plugins/{name}.spec")), format!("unix://{}\n", sock.display()))
                .map_err(io("writing a plugin spec"))?;
        }
        std::fs::write(dir.join("dockerd.sh"), WRAPPER).map_err(io("writing the dockerd wrapper"))?;
        let child = Self::spawn(&cfg)?;
        let mut d = Dockerd { sock: dir.join("docker.sock"), dir, cfg, child };
        if let Err(e) = d.wait_ready() {
            d.stop_daemon();
            return Err(e);
        }
        Ok(d)
    }

    fn spawn(cfg: &DockerdConfig) -> Result<Child, DockerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.dir.join("dockerd.log"))
            .map_err(io("opening dockerd.log"))?;
        let log2 = log.try_clone().map_err(io("opening dockerd.log"))?;
        let mut cmd = Command::new("ip");
        if cfg.own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        cmd.args(["netns", "exec", &cfg.node_ns, "sh"])
            .arg(cfg.dir.join("dockerd.sh"))
            .arg(&cfg.dir)
            .args(cfg.flags())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(io("starting dockerd"))
    }

    fn wait_ready(&mut self) -> Result<(), DockerError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(self.sock.exists() && self.docker(&["version"]).status.success()) {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                return Err(DockerError::NotReady { log: self.log_tail(30) });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The node namespace dockerd runs in.
    pub fn node_ns(&self) -> &str {
        &self.cfg.node_ns
    }

    /// Stops dockerd (SIGTERM: it stops its containers, which stay) and
    /// starts it again on the same state.
    pub fn restart(&mut self) -> Result<(), DockerError> {
        self.stop_daemon();
        let _ = std::fs::remove_file(&self.sock);
        self.child = Self::spawn(&self.cfg)?;
        self.wait_ready()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `docker ARGS` against this daemon (at most 120 s).
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new(DOCKER);
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display())).env("DOCKER_CONFIG", self.dir.join("cli"));
        process::run_timeout(c.args(args), Duration::from_secs(120))
    }

    /// `docker ARGS`, which must succeed; its stdout. The error carries the
    /// output and the tail of dockerd's log.
    pub fn run(&self, args: &[&str]) -> Result<String, DockerError> {
        let out = self.docker(args);
        if !out.status.success() {
            return Err(DockerError::Command {
                args: args.join(" "),
                detail: format!("{}\ndockerd log tail:\n{}", show(&out), self.log_tail(30)),
            });
        }
        Ok(process::stdout_str(&out))
    }

    /// The pid of a running container's first process (from the node, its
    /// network namespace is `/proc/PID/ns/net`).
    pub fn container_pid(&self, container: &str) -> Result<u32, DockerError> {
        let s = self.run(&["inspect", "-f", "{{.State.Pid}}", container])?;
        match s.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err(DockerError::Command {
                args: format!("inspect {container}"),
                detail: format!("no pid of a running container: {s:?}"),
            }),
        }
    }

    /// A container's address on its (only) network.
    pub fn container_ip(&self, container: &str) -> Result<String, DockerError> {
        let f = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
        Ok(self.run(&["inspect", "-f", f, container])?.trim().to_string())
    }

    /// Imports a rootfs of busybox-static (no registry) as image `name`.
    pub fn import_busybox(&self, name: &str) -> Result<(), DockerError> {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            return Err(DockerError::Io {
                what: "/bin/busybox (package busybox-static)".into(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let root = self.dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www"] {
            std::fs::create_dir_all(root.join(d)).map_err(io("creating the rootfs"))?;
        }
        std::fs::copy(busybox, root.join("bin/busybox")).map_err(io("copying busybox"))?;
        for app in ["sh", "ping", "wget", "nslookup", "httpd", "sleep", "cat", "ip", "hostname"] {
            let link = root.join("bin").join(app);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).map_err(io("linking a busybox applet"))?;
            }
        }
        let tar = self.dir.join("rootfs.tar");
        let out = process::run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."));
        if !out.status.success() {
            return Err(DockerError::Command { args: "(tar of the rootfs)".into(), detail: show(&out) });
        }
        self.run(&["import", "-c", "CMD [\"/bin/sh\"]", &tar.display().to_string(), name])?;
        Ok(())
    }

    /// Stops the daemon (SIGTERM: it stops its containers and containerd),
    /// waiting up to 30 s, then SIGKILL.
    fn stop_daemon(&mut self) {
        // `ip netns exec` and the wrapper exec: the child is dockerd.
        process::signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        if process::wait_timeout(&mut self.child, Duration::from_secs(30)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (their endpoints go through the plugin), then
        // the daemon (which stops its containerd).
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = process::stdout_str(&ids).split_whitespace().map(String::from).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        self.stop_daemon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_switch_decides_the_flags() {
        let mut c = DockerdConfig::new("n", "/tmp/x");
        assert_eq!(c.flags(), ["--iptables=false", "--ip-forward=false"]);
        c.iptables = true;
        assert!(c.flags().contains(&"--iptables=true") && c.flags().contains(&"--userland-proxy=false"));
        assert!(WRAPPER.contains("\"$@\"") && !WRAPPER.contains("--iptables"));
    }
}
