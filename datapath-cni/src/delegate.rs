//! Delegated plugins (an `ipam` section with a `type`): found in `CNI_PATH`,
//! run with this invocation's environment (`CNI_COMMAND` set to the verb)
//! and the same configuration on stdin, as the spec says.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::spec::{code, CniError};

/// The executable `name` in one of `dirs`.
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, format!("delegated plugin {name:?} not found in CNI_PATH ({})", join(dirs)))
    })
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
}

/// Runs `plugin` for `command` with `conf` on stdin: its result (`None`
/// when it printed nothing), or its error as it reported it.
pub fn run(plugin: &Path, command: &str, conf: &[u8]) -> Result<Option<Value>, CniError> {
    let name = plugin.display().to_string();
    let io = |what: &str, e: std::io::Error| CniError::new(code::IO, format!("{what} {name}: {e}"));
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io("starting", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf).map_err(|e| io("writing the configuration to", e))?;
    }
    let out = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Option<Value> = if text.trim().is_empty() { None } else { serde_json::from_str(&text).ok() };
    if out.status.success() {
        return match (value, text.trim().is_empty()) {
            (Some(v), _) => Ok(Some(v)),
            (None, true) => Ok(None),
            (None, false) => {
                Err(CniError::new(code::DECODE, format!("{name} {command} printed something that is not JSON")))
            }
        };
    }
    // Its own error, as it reported it.
    let err = value.as_ref().and_then(|v| {
        let code = v.get("code")?.as_u64()?;
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let mut e = CniError::new(u32::try_from(code).ok()?, format!("{name} {command}: {msg}"));
        if let Some(d) = v.get("details").and_then(Value::as_str) {
            e = e.with_details(d);
        }
        Some(e)
    });
    Err(err.unwrap_or_else(|| CniError::new(code::AGENT, format!("{name} {command} failed ({})", out.status))))
}
