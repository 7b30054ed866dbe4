//! The API socket: binding it (root only), the accept loop and one
//! request per connection (or a trace stream), until SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Agent, AgentConfig};
use crate::api::{ApiError, Envelope, ErrorKind, Request, Response, API_VERSION};

pub(super) async fn write_line<W: AsyncWriteExt + Unpin, T: serde::Serialize>(w: &mut W, v: &T) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf).await
}

impl Agent {
    async fn serve_conn(self: Arc<Self>, stream: UnixStream) {
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let env: Envelope = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                let err = ApiError::invalid(format!("malformed request: {e}"));
                let _ = write_line(stream.get_mut(), &Response::err(err)).await;
                return;
            }
        };
        if env.api_version != API_VERSION {
            let msg = format!("API version {} is not supported (agent speaks {API_VERSION})", env.api_version);
            let _ = write_line(stream.get_mut(), &Response::err(ApiError::new(ErrorKind::Unsupported, msg))).await;
            return;
        }
        if let Request::Trace { endpoint } = env.request {
            return self.serve_trace(stream, endpoint).await;
        }
        let response = match self.handle(env.request).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        };
        let _ = write_line(stream.get_mut(), &response).await;
    }
}

/// Binds the API socket (root only), refusing to steal one that is live.
pub async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another agent is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = bind_socket(&cfg.socket).await?;
    let agent = match Agent::start(cfg.clone()).await {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.socket);
            return Err(e);
        }
    };
    tracing::info!(socket = %cfg.socket.display(), state = %cfg.state_dir.display(), "agent ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(agent.clone().serve_conn(stream)); }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    if cfg.cleanup_on_exit {
        agent.teardown().await;
    } else {
        // The datapath stays: attachments and pins outlive the agent.
        agent.release().await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
