//! The CLI side of a [`Node`]: `datapath --socket S ARGS` with the error
//! contract checked, JSON parsed, endpoints and counters as the tests use them.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use datapath::testbed::process::{run_timeout, show, stderr_str, stdout_str, BgProcess};
use serde_json::Value;

use crate::env::netns_exists;
use crate::net;
use crate::node::Node;

/// An endpoint as `endpoint inspect` describes it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub prefix_len: u64,
    pub gateway: String,
    pub network: String,
    pub host_ifname: String,
    pub host_ifindex: u64,
    pub json: Value,
}

impl Endpoint {
    fn from_json(v: Value) -> Endpoint {
        let s = |k: &str| {
            v[k].as_str().unwrap_or_else(|| panic!("endpoint JSON lacks string field {k:?}: {v}")).to_string()
        };
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("endpoint JSON lacks integer field {k:?}: {v}"));
        Endpoint {
            name: s("name"),
            ip: s("ip"),
            mac: s("mac"),
            prefix_len: n("prefix_len"),
            gateway: s("gateway"),
            network: s("network"),
            host_ifname: s("host_ifname"),
            host_ifindex: n("host_ifindex"),
            json: v,
        }
    }
}

/// Datapath counters by reason name: (packets, bytes).
pub type Stats = BTreeMap<String, (u64, u64)>;

impl Node {
    /// A `datapath --socket S ARGS` command (not yet run), of the agent's
    /// build ([`crate::node::AgentOpts::bin`]).
    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.opts.bin.path());
        c.arg("--socket").arg(&self.socket).args(args);
        c.env_remove("DATAPATH_SOCKET").env_remove("DATAPATH_FAILPOINT").env_remove("RUST_LOG");
        c
    }

    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        run_timeout(&mut self.cli_cmd(args), timeout)
    }

    /// Runs `datapath --socket S ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_timeout(args, Duration::from_secs(30))
    }

    /// Runs the CLI and asserts success; returns stdout.
    #[track_caller]
    pub fn ok(&mut self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            self.fail(format!("`datapath {}` failed:\n{}", args.join(" "), show(&out)));
        }
        stdout_str(&out)
    }

    /// Runs the CLI, asserts success, parses stdout as JSON.
    #[track_caller]
    pub fn json(&mut self, args: &[&str]) -> Value {
        let s = self.ok(args);
        match serde_json::from_str(&s) {
            Ok(v) => v,
            Err(e) => self.fail(format!("`datapath {}` printed invalid JSON ({e}):\n{s}", args.join(" "))),
        }
    }

    /// Runs the CLI and asserts the contract for errors: non-zero exit and a
    /// one-line `error: ...` on stderr. Returns stderr.
    #[track_caller]
    pub fn err(&mut self, args: &[&str]) -> String {
        let out = self.cli(args);
        if out.status.success() {
            self.fail(format!("`datapath {}` succeeded but must fail:\n{}", args.join(" "), show(&out)));
        }
        let e = stderr_str(&out);
        check_error_text(&e)
            .unwrap_or_else(|m| self.fail(format!("`datapath {}`: {m}:\n{}", args.join(" "), show(&out))));
        e
    }

    /// `endpoint create NAME EXTRA...`; checks the `NAME IP` output and
    /// returns the inspected endpoint.
    #[track_caller]
    pub fn create_endpoint(&mut self, name: &str, extra: &[&str]) -> Endpoint {
        let mut args = vec!["endpoint", "create", name];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let ep = self.inspect_endpoint(name);
        let expect = format!("{} {}", name, ep.ip);
        if out.trim_end() != expect {
            self.fail(format!("`datapath {}` printed {out:?}, expected the one line {expect:?}", args.join(" ")));
        }
        ep
    }

    #[track_caller]
    pub fn inspect_endpoint(&mut self, name: &str) -> Endpoint {
        let v = self.json(&["endpoint", "inspect", name]);
        Endpoint::from_json(v)
    }

    /// `endpoint ls -o json`, sorted by name.
    #[track_caller]
    pub fn endpoints(&mut self) -> Vec<Value> {
        sorted_by_name(self.json(&["endpoint", "ls", "-o", "json"]))
    }

    /// `network ls -o json`, sorted by name.
    #[track_caller]
    pub fn networks(&mut self) -> Vec<Value> {
        sorted_by_name(self.json(&["network", "ls", "-o", "json"]))
    }

    #[track_caller]
    pub fn inspect_network(&mut self, name: &str) -> Value {
        self.json(&["network", "inspect", name, "-o", "json"])
    }

    /// `stats -o json` as reason name -> (packets, bytes).
    #[track_caller]
    pub fn stats(&mut self) -> Stats {
        let v = self.json(&["stats", "-o", "json"]);
        let Some(arr) = v["counters"].as_array() else {
            self.fail(format!("stats JSON has no counters array: {v}"));
        };
        let mut m = Stats::new();
        for c in arr {
            let (Some(r), Some(p), Some(b)) = (c["reason"].as_str(), c["packets"].as_u64(), c["bytes"].as_u64()) else {
                self.fail(format!("bad counter object {c} in {v}"));
            };
            m.insert(r.to_string(), (p, b));
        }
        m
    }

    /// `conntrack ls -o json [--endpoint E]`: the eBPF flow table.
    #[track_caller]
    pub fn conntrack(&mut self, endpoint: Option<&str>) -> Vec<Value> {
        let mut args = vec!["conntrack", "ls", "-o", "json"];
        if let Some(e) = endpoint {
            args.extend(["--endpoint", e]);
        }
        match self.json(&args) {
            Value::Array(a) => a,
            other => self.fail(format!("conntrack ls -o json is not an array: {other}")),
        }
    }

    /// Starts `datapath --socket S ARGS` in the background (e.g. `trace`).
    pub fn cli_bg(&self, args: &[&str]) -> BgProcess {
        BgProcess::spawn(self.cli_cmd(args))
    }

    /// Link names in the node netns.
    pub fn node_links(&self) -> Vec<String> {
        net::link_names(&self.name)
    }

    /// veth links in the node netns whose name starts with `dp`.
    pub fn node_dp_veths(&self) -> Vec<String> {
        net::links(&self.name)
            .into_iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .filter(|n| n.starts_with("dp"))
            .collect()
    }

    pub fn netns_exists(&self, name: &str) -> bool {
        netns_exists(name)
    }
}

/// The CLI error contract: one non-empty line starting with `error: `.
pub fn check_error_text(stderr: &str) -> Result<(), String> {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [] => Err("no error message on stderr".into()),
        [l] if l.starts_with("error: ") && l.len() > "error: ".len() => Ok(()),
        [l] => Err(format!("stderr line does not start with `error: `: {l:?}")),
        _ => Err(format!("expected one `error: ...` line on stderr, got {} lines", lines.len())),
    }
}

pub fn sorted_by_name(v: Value) -> Vec<Value> {
    let mut a = match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}"),
    };
    a.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    a
}

/// Difference of a counter between two snapshots (0 if missing).
pub fn delta(before: &Stats, after: &Stats, reason: &str) -> (u64, u64) {
    let b = before.get(reason).copied().unwrap_or((0, 0));
    let a = after.get(reason).copied().unwrap_or((0, 0));
    (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1))
}
