//! Driving the CNI plugin `datapath-cni` the way runtimes do: the binary is
//! executed with the `CNI_*` environment and the network configuration on
//! stdin, its stdout is the result or the spec's error JSON.
//!
//! The plugin binary: `$DATAPATH_CNI_BIN` (set by `cargo xtask test`), else
//! `datapath-cni` beside the `datapath` binary under test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use datapath::testbed::process::show;
use serde_json::{json, Value};

use crate::env::bin;
use crate::node::Node;

/// The plugin under test.
pub fn cni_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAPATH_CNI_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "DATAPATH_CNI_BIN={} does not exist", p.display());
        return p;
    }
    let p = bin().with_file_name("datapath-cni");
    assert!(p.is_file(), "no CNI plugin at {} (build it with `cargo xtask build`)", p.display());
    p
}

/// Where Debian's reference plugins are (`containernetworking-plugins`).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The reference plugins, installed by `cargo xtask test`.
pub fn reference_plugins() -> PathBuf {
    let dir = PathBuf::from(REFERENCE_PLUGINS);
    assert!(
        dir.join("host-local").is_file() && dir.join("portmap").is_file(),
        "the reference CNI plugins are missing from {REFERENCE_PLUGINS}: `apt-get install containernetworking-plugins` \
         (`cargo xtask test` installs it)"
    );
    dir
}

/// One plugin run: exit status, stdout as JSON (when there is any), the
/// time it took.
#[derive(Debug)]
pub struct Run {
    pub output: Output,
    pub json: Option<Value>,
    pub took: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    /// The result of a successful run (panics otherwise).
    #[track_caller]
    pub fn result(&self) -> Value {
        assert!(self.ok(), "the plugin failed:\n{}", show(&self.output));
        self.json.clone().unwrap_or(Value::Null)
    }

    /// A successful run that printed nothing (DEL, CHECK, STATUS, GC).
    #[track_caller]
    pub fn silent(&self) {
        assert!(self.ok(), "the plugin failed:\n{}", show(&self.output));
        assert!(self.output.stdout.trim_ascii().is_empty(), "expected no output:\n{}", show(&self.output));
    }

    /// The error code of a failed run, after checking the error has the
    /// spec's form (`cniVersion`, `code`, `msg`) and the exit status is not 0.
    #[track_caller]
    pub fn code(&self) -> u64 {
        assert!(!self.ok(), "the plugin succeeded where it must fail:\n{}", show(&self.output));
        let e = self.json.as_ref().unwrap_or_else(|| panic!("error output is not JSON:\n{}", show(&self.output)));
        assert!(e["cniVersion"].is_string() && e["msg"].is_string(), "not a CNI error: {e}");
        e["code"].as_u64().unwrap_or_else(|| panic!("CNI error without a code: {e}"))
    }

    pub fn msg(&self) -> String {
        let e = self.json.clone().unwrap_or(Value::Null);
        format!("{} {}", e["msg"].as_str().unwrap_or(""), e["details"].as_str().unwrap_or(""))
    }
}

/// Executes the plugin with `env` (the `CNI_*` variables) and `stdin`.
pub fn exec(env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(cni_bin());
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", cni_bin().display()));
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).expect("writing the configuration");
    }
    let output = child.wait_with_output().expect("waiting for the plugin");
    let took = t0.elapsed();
    let json = serde_json::from_slice(&output.stdout).ok();
    Run { output, json, took }
}

/// A runtime's view of one CNI network of a node: its configuration and
/// the verbs.
#[derive(Clone, Debug)]
pub struct CniNet {
    /// The plugin's configuration (from a conflist's `plugins`, with the
    /// list's `cniVersion` and `name`).
    pub conf: Value,
    /// `CNI_PATH`.
    pub path: String,
}

impl CniNet {
    /// `datapath-cni` on the datapath network `network` of `node`, CNI
    /// network name `name`, configuration version `version`.
    pub fn new(node: &Node, name: &str, network: &str, version: &str) -> CniNet {
        let conf = json!({
            "cniVersion": version,
            "name": name,
            "type": "datapath-cni",
            "network": network,
            "socket": node.socket,
        });
        CniNet { conf, path: cni_bin().parent().map(|p| p.display().to_string()).unwrap_or_default() }
    }

    /// The configuration with `extra` fields merged in.
    pub fn with(&self, extra: Value) -> Value {
        let mut c = self.conf.clone();
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn env<'a>(&'a self, command: &'a str, id: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("CNI_COMMAND", command), ("CNI_PATH", self.path.as_str())];
        if !id.is_empty() {
            env.push(("CNI_CONTAINERID", id));
        }
        if !netns.is_empty() {
            env.push(("CNI_NETNS", netns));
        }
        if !ifname.is_empty() {
            env.push(("CNI_IFNAME", ifname));
        }
        env
    }

    /// Runs `command` for container `id` in `netns` with interface `ifname`
    /// and configuration `conf`.
    pub fn run(&self, command: &str, id: &str, netns: &Path, ifname: &str, conf: &Value) -> Run {
        let netns = netns.display().to_string();
        exec(&self.env(command, id, &netns, ifname), conf.to_string().as_bytes())
    }

    pub fn add(&self, id: &str, netns: &Path, ifname: &str) -> Run {
        self.run("ADD", id, netns, ifname, &self.conf)
    }

    pub fn del(&self, id: &str, netns: &Path, ifname: &str) -> Run {
        self.run("DEL", id, netns, ifname, &self.conf)
    }

    /// CHECK with the ADD's result as `prevResult`.
    pub fn check(&self, id: &str, netns: &Path, ifname: &str, prev: &Value) -> Run {
        self.run("CHECK", id, netns, ifname, &self.with(json!({ "prevResult": prev })))
    }

    pub fn status(&self) -> Run {
        exec(&self.env("STATUS", "", "", ""), self.conf.to_string().as_bytes())
    }

    /// GC keeping the attachments `valid` (container id, ifname).
    pub fn gc(&self, valid: &[(&str, &str)]) -> Run {
        let valid: Vec<Value> = valid.iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect();
        let conf = self.with(json!({ "cni.dev/valid-attachments": valid }));
        exec(&self.env("GC", "", "", ""), conf.to_string().as_bytes())
    }
}

/// A namespace as a runtime makes it: `/run/netns/NAME` (`ip netns add`),
/// removed with the node's prefix.
pub fn runtime_netns(name: &str) -> PathBuf {
    let o = Command::new("ip").args(["netns", "add", name]).output().expect("ip netns add");
    assert!(o.status.success(), "ip netns add {name}:\n{}", show(&o));
    PathBuf::from("/run/netns").join(name)
}
