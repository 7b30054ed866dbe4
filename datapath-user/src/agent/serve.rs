//! The API socket: binding it (root only, from the first instant), the
//! accept loop (bounded connections, errors backed off) and one request per
//! connection (bounded in size and time; or a trace stream), until
//! SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::{Agent, AgentConfig};
use crate::api::{ApiError, Envelope, ErrorKind, ParseError, Request, Response, API_VERSION};

pub(super) async fn write_line<W: AsyncWriteExt + Unpin, T: serde::Serialize>(w: &mut W, v: &T) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf).await
}

/// Largest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Connections served at once (trace streams included); more are refused.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the request line: at most [`MAX_REQUEST_BYTES`], within
/// [`REQUEST_TIMEOUT`]. `Ok(None)`: the client went away.
async fn read_request(stream: &mut BufReader<UnixStream>) -> Result<Option<String>, ApiError> {
    let mut line = Vec::new();
    let mut limited = (&mut *stream).take(MAX_REQUEST_BYTES + 1);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
        Err(_) => Err(ApiError::invalid(format!("no request within {} s", REQUEST_TIMEOUT.as_secs()))),
        Ok(Err(_)) | Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() as u64 > MAX_REQUEST_BYTES => {
            Err(ApiError::invalid(format!("request larger than {} bytes", MAX_REQUEST_BYTES)))
        }
        Ok(Ok(_)) => String::from_utf8(line).map(Some).map_err(|_| ApiError::invalid("request is not UTF-8")),
    }
}

impl Agent {
    async fn serve_conn(self: Arc<Self>, stream: UnixStream) {
        let mut stream = BufReader::new(stream);
        let line = match read_request(&mut stream).await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                let _ = write_line(stream.get_mut(), &Response::err(e)).await;
                return;
            }
        };
        let env = match Envelope::parse(&line) {
            Ok(env) => env,
            Err(e) => {
                let err = match e {
                    ParseError::Malformed(m) => ApiError::invalid(format!("malformed request: {m}")),
                    ParseError::UnknownField(f) => ApiError::invalid(format!("unknown field {f:?} in the request")),
                    ParseError::Version(v) => ApiError::new(
                        ErrorKind::Unsupported,
                        format!("API version {v} is not supported (agent speaks {API_VERSION})"),
                    ),
                };
                let _ = write_line(stream.get_mut(), &Response::err(err)).await;
                return;
            }
        };
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

/// Serves a connection in a task of its own while a slot is free; refuses
/// it with an error otherwise.
fn serve_or_refuse(agent: &Arc<Agent>, slots: &Arc<Semaphore>, mut stream: UnixStream) {
    match slots.clone().try_acquire_owned() {
        Ok(slot) => {
            let agent = agent.clone();
            tokio::spawn(async move {
                agent.serve_conn(stream).await;
                drop(slot);
            });
        }
        Err(_) => {
            tokio::spawn(async move {
                let err =
                    ApiError::new(ErrorKind::Unavailable, format!("too many connections (at most {MAX_CONNECTIONS})"));
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), write_line(&mut stream, &Response::err(err))).await;
            });
        }
    }
}

/// `accept` failing (out of file descriptors, most often) is retried after
/// a pause that doubles up to a second, and logged at most once a second:
/// no busy loop, no flood of log lines.
#[derive(Default)]
struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn failed(&mut self, e: std::io::Error) {
        if self.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!("accept: {e} ({} more since the last report)", self.suppressed);
            self.last_log = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::time::sleep(self.delay).await;
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
    // Created with its final mode: no other user may connect at any moment
    // (a chmod after the bind leaves a window).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
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
    let plugin = match &cfg.docker_plugin {
        Some(path) => match crate::docker::start(agent.clone(), path).await {
            Ok(task) => Some(task),
            Err(e) => {
                agent.release().await;
                let _ = std::fs::remove_file(&cfg.socket);
                return Err(e);
            }
        },
        None => None,
    };
    tracing::info!(socket = %cfg.socket.display(), state = %cfg.state_dir.display(), "agent ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    backoff.reset();
                    serve_or_refuse(&agent, &slots, stream);
                }
                Err(e) => backoff.failed(e).await,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    if let (Some(task), Some(path)) = (plugin, &cfg.docker_plugin) {
        task.abort();
        let _ = std::fs::remove_file(path);
    }
    if cfg.cleanup_on_exit {
        agent.teardown().await;
    } else {
        // The datapath stays: attachments and pins outlive the agent.
        agent.release().await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
