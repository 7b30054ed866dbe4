//! Issue "The datapath outlives the agent": the datapath keeps forwarding
//! (and keeps its conntrack) across agent restarts, crashes, upgrades and
//! map migrations; a crash in the middle of endpoint creates leaves no ghost;
//! an unreadable state file stops the agent before it touches the kernel;
//! `datapath reset` removes everything.
//!
//! What an agent before the issue did, and what catches it here: it detached
//! its programs on exit (the masqueraded pings and the TCP stream to the
//! outside break: the outside has no route back to the endpoints), it
//! recreated its maps (conntrack lost: new SNAT port, the server answers the
//! stream's next segment with a reset, the flow table differs), and it left
//! half-made endpoints after a crash (veths, namespaces, map entries without
//! an endpoint).

mod continuity;
mod crash_creates;
mod lost_pins;
mod reset;
mod state_file;
mod upgrade_v4;

use std::collections::BTreeSet;
use std::path::Path;

use datapath_tests::node::Node;
use serde_json::Value;

/// The map directory of the pins under a node's bpffs dir.
pub const MAPS_DIR: &str = "maps-v1";

/// `stats -o json` → its `start` object (what the agent's start found).
#[track_caller]
pub fn start_report(node: &mut Node) -> Value {
    let v = node.json(&["stats", "-o", "json"]);
    match &v["start"] {
        Value::Object(_) => v["start"].clone(),
        _ => node.fail(format!("stats -o json has no start object: {v}")),
    }
}

/// A number of the `start` object.
#[track_caller]
pub fn start_count(start: &Value, key: &str) -> u64 {
    start[key].as_u64().unwrap_or_else(|| panic!("stats start.{key} is not a number: {start}"))
}

/// The strings of a list of the `start` object (e.g. `maps_migrated`).
#[track_caller]
pub fn start_list(start: &Value, key: &str) -> Vec<String> {
    match start[key].as_array() {
        Some(a) => a.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect(),
        None => panic!("stats start.{key} is not a list: {start}"),
    }
}

/// The identity of a tracked flow: protocol, original tuple, translated
/// source (address and port).
pub fn flow_key(f: &Value) -> String {
    let o = &f["original"];
    let t = &f["translated"];
    format!(
        "{} {}:{} -> {}:{} as {}:{}",
        f["protocol"].as_str().unwrap_or("?"),
        o["src"].as_str().unwrap_or("?"),
        o["sport"],
        o["dst"].as_str().unwrap_or("?"),
        o["dport"],
        t["src"].as_str().unwrap_or("-"),
        t["sport"]
    )
}

pub fn flow_keys(flows: &[Value]) -> BTreeSet<String> {
    flows.iter().map(flow_key).collect()
}

/// Every file (pin) under `dir`, recursively, as paths relative to it.
pub fn pins_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap_or(&p).display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Entries of a pinned map (`bpftool -j map dump pinned PATH`).
#[track_caller]
pub fn pinned_map_len(path: &Path) -> usize {
    let o = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    assert!(o.status.success(), "bpftool map dump pinned {}:\n{}", path.display(), datapath_tests::show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("bpftool JSON");
    v.as_array().map(Vec::len).unwrap_or_else(|| panic!("bpftool map dump is not a list: {v}"))
}

/// The keys of a pinned map keyed by a `u32` (bpftool prints them as a
/// number with BTF, as little-endian hex bytes without).
pub fn pinned_u32_keys(path: &std::path::Path) -> BTreeSet<u64> {
    let o = std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(path).output().unwrap();
    assert!(o.status.success(), "bpftool map dump pinned {}:\n{}", path.display(), datapath_tests::show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("bpftool JSON");
    let key = |k: &Value| -> u64 {
        if let Some(n) = k.as_u64() {
            return n;
        }
        let bytes: Vec<u64> = k
            .as_array()
            .unwrap_or_else(|| panic!("bpftool key {k}"))
            .iter()
            .map(|b| u64::from_str_radix(b.as_str().unwrap_or("").trim_start_matches("0x"), 16).unwrap())
            .collect();
        bytes.iter().rev().fold(0, |acc, b| acc << 8 | b)
    };
    let entries = v.as_array().cloned().unwrap_or_default();
    entries.iter().map(|e| key(if e["formatted"].is_object() { &e["formatted"]["key"] } else { &e["key"] })).collect()
}
