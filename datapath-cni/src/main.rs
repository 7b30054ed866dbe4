//! `datapath-cni`: the CNI plugin binary. Reads the `CNI_*` environment and
//! the network configuration on stdin, prints the result (or the spec's
//! error JSON, with exit status 1) on stdout.

use std::io::{Read, Write};

use datapath_cni::spec::{self, CniError, Env};
use serde_json::Value;

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // The version errors are written in: the configuration's, when it has one.
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(String::from));
    let outcome = match read {
        Err(e) => Err(CniError::new(spec::code::IO, format!("reading the configuration from stdin: {e}"))),
        Ok(_) => Env::parse(|k| std::env::var(k).ok()).and_then(|env| datapath_cni::plugin::run(&env, &stdin)),
    };
    let (out, status) = match outcome {
        Ok(Some(v)) => (Some(v), 0),
        Ok(None) => (None, 0),
        Err(e) => (Some(e.to_json(version.as_deref())), 1),
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        // Nothing sensible is left to do when stdout is gone.
        let _ = writeln!(stdout, "{v}");
        let _ = stdout.flush();
    }
    std::process::exit(status);
}
