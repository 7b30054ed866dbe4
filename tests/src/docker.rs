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

pub use datapath::testbed::docker::{DOCKER, DOCKERD};

/// The test bed's dockerd ([`datapath::testbed::docker::Dockerd`]) for
/// tests: in the node's namespace and directory, without Docker's iptables
/// work, the datapath plugin as the spec `datapath.spec`; every failure
/// panics with the dockerd log tail. Drop it before the node.
pub struct Dockerd(datapath::testbed::docker::Dockerd);

impl std::ops::Deref for Dockerd {
    type Target = datapath::testbed::docker::Dockerd;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Dockerd {
    /// Starts dockerd in `node`'s namespace with the datapath plugin at
    /// `plugin` and waits until it answers (at most 60 s).
    pub fn start(node: &Node, plugin: &Path) -> Dockerd {
        assert!(
            datapath::testbed::docker::installed(),
            "{DOCKERD} is not installed: `cargo xtask test` installs Debian's docker.io for these tests"
        );
        let mut cfg = datapath::testbed::docker::DockerdConfig::new(&node.name, node.dir.join("docker"));
        cfg.plugins.push(("datapath".into(), plugin.to_path_buf()));
        Dockerd(datapath::testbed::docker::Dockerd::start(cfg).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Stops dockerd (its containers stay) and starts it again on the same state.
    pub fn restart(&mut self) {
        self.0.restart().unwrap_or_else(|e| panic!("restarting dockerd: {e}"));
    }

    /// `docker ARGS`, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.0.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Imports a rootfs of busybox-static (no registry) as image `name`.
    pub fn import_busybox(&self, name: &str) {
        self.0.import_busybox(name).unwrap_or_else(|e| panic!("importing busybox: {e}"));
    }
}
