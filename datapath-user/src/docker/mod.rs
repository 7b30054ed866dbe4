//! Docker's remote network driver (libnetwork's plugin protocol: JSON over
//! HTTP on `/run/docker/plugins/NAME.sock`), served by the agent with
//! `datapath agent --docker-plugin [NAME]`, so that
//! `docker network create -d datapath` puts Docker's containers on this
//! datapath.
//!
//! * [`wire`]: the protocol's JSON, field for field.
//! * [`driver`]: each call turned into the agent's operations (Docker's
//!   networks and endpoints are the agent's, marked `owner: docker`;
//!   endpoints are *detached*: the container end of the veth waits in the
//!   node namespace for Docker to move it into the sandbox, the eBPF program
//!   already on the host end).
//! * [`portmap`]: Docker's published ports (`-p`) as the datapath's.
//! * [`server`]: HTTP/1.1 over the unix socket.

pub mod driver;
pub mod portmap;
pub mod server;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::Agent;

/// Where dockerd looks for plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
pub const DEFAULT_PLUGIN_NAME: &str = "datapath";

/// The socket of plugin NAME in DIR: `DIR/NAME.sock`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Binds the plugin socket (mode 0600: dockerd runs as root) and serves
/// the driver on it in a task of its own.
pub async fn start(agent: Arc<Agent>, socket: &Path) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::agent::bind_socket(socket).await?;
    tracing::info!(socket = %socket.display(), "docker network plugin ready");
    let driver = Arc::new(driver::Driver::new(agent));
    Ok(tokio::spawn(server::serve(driver, listener)))
}
