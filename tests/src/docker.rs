//! Speaking to the agent's Docker plugin socket the way dockerd does
//! (HTTP/1.1 POSTs of JSON on a unix socket), and doing what dockerd does
//! with a joined endpoint (move the interface into the sandbox, name it,
//! address it, route through the gateway), so the protocol is tested with
//! no Docker installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::net::exec_in;
use crate::node::{AgentOpts, Node};
use datapath::testbed::process::show;

/// A node whose agent serves the plugin `datapath` on `DIR/plugins/datapath.sock`.
pub fn plugin_node(opts: AgentOpts) -> (Node, PathBuf) {
    let mut node = Node::build(opts);
    let dir = node.dir.join("plugins");
    node.opts.extra_args.extend([
        "--docker-plugin".to_string(),
        "--docker-plugin-dir".into(),
        dir.display().to_string(),
    ]);
    node.start_agent();
    let sock = dir.join("datapath.sock");
    assert!(sock.exists(), "the agent must serve {}", sock.display());
    (node, sock)
}

/// One HTTP response: status and body (JSON when it parses, else a string).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The protocol's error text (`{"Err": ...}`), empty when none.
    pub fn err(&self) -> &str {
        self.body.get("Err").and_then(Value::as_str).unwrap_or("")
    }
}

/// A connection to the plugin socket; several requests may go over it.
pub struct PluginConn {
    r: BufReader<UnixStream>,
}

impl PluginConn {
    pub fn open(sock: &Path) -> PluginConn {
        let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        PluginConn { r: BufReader::new(s) }
    }

    /// Sends raw bytes, reads one response.
    pub fn raw(&mut self, data: &[u8]) -> Reply {
        self.r.get_mut().write_all(data).expect("write request");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).expect("header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("Content-Length");
                }
            }
        }
        let mut body = vec![0; length];
        self.r.read_exact(&mut body).expect("body");
        let body =
            serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        Reply { status, body }
    }

    /// `POST /METHOD` with `body`, as Go's HTTP client sends it.
    pub fn post(&mut self, method: &str, body: &str) -> Reply {
        let req = format!(
            "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n\
             Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Type: application/json\r\n\r\n{body}",
            body.len()
        );
        self.raw(req.as_bytes())
    }
}

/// One call on a fresh connection.
pub fn call(sock: &Path, method: &str, body: Value) -> Reply {
    PluginConn::open(sock).post(method, &body.to_string())
}

/// A call that must succeed (status 200, no `Err`); returns the body.
#[track_caller]
pub fn ok(sock: &Path, method: &str, body: Value) -> Value {
    let r = call(sock, method, body.clone());
    assert!(r.status == 200 && r.err().is_empty(), "{method} {body} must succeed: {r:?}");
    r.body
}

/// A call that must fail with `status` and a non-empty `Err`; returns it.
#[track_caller]
pub fn fails(sock: &Path, method: &str, body: Value, status: u16) -> String {
    let r = call(sock, method, body.clone());
    assert!(r.status == status && !r.err().is_empty(), "{method} {body} must fail with {status}: {r:?}");
    r.err().to_string()
}

/// What dockerd does after a Join: moves `src` (in the node namespace) into
/// the sandbox namespace `sandbox` (made here), names it `eth0`, gives it
/// `addr` (`10.30.0.2/24`), brings it up, routes through `gateway`.
#[track_caller]
pub fn docker_moves_in(node: &str, src: &str, sandbox: &str, addr: &str, gateway: Option<&str>) {
    let run = |ns: Option<&str>, args: &[&str]| {
        let out = match ns {
            Some(ns) => exec_in(ns, args),
            None => datapath::testbed::process::run(std::process::Command::new(args[0]).args(&args[1..])),
        };
        assert!(out.status.success(), "{args:?}: {}", show(&out));
    };
    run(None, &["ip", "netns", "add", sandbox]);
    run(Some(node), &["ip", "link", "set", src, "netns", sandbox]);
    run(Some(sandbox), &["ip", "link", "set", src, "name", "eth0"]);
    run(Some(sandbox), &["ip", "addr", "add", addr, "dev", "eth0"]);
    run(Some(sandbox), &["ip", "link", "set", "lo", "up"]);
    run(Some(sandbox), &["ip", "link", "set", "eth0", "up"]);
    if let Some(gw) = gateway {
        run(Some(sandbox), &["ip", "route", "add", "default", "via", gw]);
    }
}

/// A Docker-style 64-hex id from a short tag (`n1` → `6e31…`).
pub fn docker_id(tag: &str) -> String {
    let hex: String = tag.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0<64}")
}

/// Where the distribution's Docker engine is (package `docker.io`, a test
/// package of `cargo xtask test`).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";

/// Runs inside `ip netns exec NODE` (which gives a mount namespace of its
/// own with a fresh /sys): puts back the cgroup hierarchies dockerd needs,
/// shows dockerd only the test's plugin specs (its own /etc/docker, and no
/// plugin socket of the host's /run/docker), then execs dockerd with every
/// path in the test's directory. $1: that directory.
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
  --config-file "$D/etc/daemon.json" --bridge none --iptables=false --ip-forward=false --shutdown-timeout 2 "$@"
"#;

/// A real dockerd in a node's namespace, its state in the node's directory;
/// stopped (containers removed first) on drop. Drop it before the node.
pub struct Dockerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    node: String,
    child: std::process::Child,
}

impl Dockerd {
    /// Starts dockerd in `node`'s namespace with the datapath plugin at
    /// `plugin` (as the spec file `datapath.spec`) and waits until it
    /// answers (at most 60 s).
    pub fn start(node: &Node, plugin: &Path) -> Dockerd {
        assert!(
            Path::new(DOCKERD).exists() && Path::new(DOCKER).exists(),
            "{DOCKERD} is not installed: `cargo xtask test` installs Debian's docker.io for these tests"
        );
        let dir = node.dir.join("docker");
        std::fs::create_dir_all(dir.join("etc/plugins")).expect("docker dir");
        std::fs::write(dir.join("etc/daemon.json"), "{}\n").expect("daemon.json");
        std::fs::write(dir.join("etc/plugins/datapath.spec"), format!("unix://{}\n", plugin.display())).expect("spec");
        std::fs::write(dir.join("dockerd.sh"), WRAPPER).expect("wrapper");
        let child = Self::spawn(&node.name, &dir);
        let d = Dockerd { sock: dir.join("docker.sock"), dir, node: node.name.clone(), child };
        d.wait_ready();
        d
    }

    fn spawn(node: &str, dir: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dockerd.log")).expect("log");
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", node, "sh"])
            .arg(dir.join("dockerd.sh"))
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd.spawn().expect("starting dockerd")
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !(self.sock.exists() && self.docker(&["version"]).status.success()) {
            assert!(std::time::Instant::now() < deadline, "dockerd did not answer within 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd (SIGTERM: it stops its containers, which stay) and
    /// starts it again on the same state.
    pub fn restart(&mut self) {
        self.stop_daemon();
        let _ = std::fs::remove_file(&self.sock);
        self.child = Self::spawn(&self.node, &self.dir);
        self.wait_ready();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        let mut c = std::process::Command::new(DOCKER);
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display())).env("DOCKER_CONFIG", self.dir.join("cli"));
        datapath::testbed::process::run_timeout(c.args(args), Duration::from_secs(120))
    }

    /// `docker ARGS`, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {}: {}\ndockerd log tail:\n{}",
            args.join(" "),
            show(&out),
            self.log_tail(30)
        );
        datapath::testbed::process::stdout_str(&out)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Imports a rootfs of busybox-static (no registry) as image `name`.
    pub fn import_busybox(&self, name: &str) {
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.exists(), "/bin/busybox missing: `cargo xtask test` installs busybox-static");
        let root = self.dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www"] {
            std::fs::create_dir_all(root.join(d)).expect("rootfs");
        }
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        for app in ["sh", "ping", "wget", "nslookup", "httpd", "sleep", "cat", "ip", "hostname"] {
            let link = root.join("bin").join(app);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).expect("applet link");
            }
        }
        let tar = self.dir.join("rootfs.tar");
        let out = datapath::testbed::process::run(
            std::process::Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."),
        );
        assert!(out.status.success(), "tar: {}", show(&out));
        self.ok(&["import", "-c", "CMD [\"/bin/sh\"]", &tar.display().to_string(), name]);
    }
}

impl Dockerd {
    /// Stops the daemon (SIGTERM: it stops its containers and containerd),
    /// waiting up to 30 s, then SIGKILL.
    fn stop_daemon(&mut self) {
        // `ip netns exec` and the wrapper exec: the child is dockerd.
        datapath::testbed::process::signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        if datapath::testbed::process::wait_timeout(&mut self.child, Duration::from_secs(30)).is_none() {
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
        for id in datapath::testbed::process::stdout_str(&ids).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        self.stop_daemon();
    }
}
