//! The client side of the API: one request per connection, and the trace
//! stream.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{ApiError, Envelope, Request, Response, TraceLine, API_VERSION};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no agent is running at {0} (start one with `datapath agent`, or point --socket/DATAPATH_SOCKET at it)")]
    NoAgent(PathBuf),
    #[error("permission denied on {0}: the agent's socket is for root only")]
    PermissionDenied(PathBuf),
    #[error("talking to the agent at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent sent a reply this client does not understand: {0}")]
    Protocol(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A connection to the agent.
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Client { path: path.as_ref().to_path_buf() }
    }

    async fn open(&self, request: Request) -> Result<(BufReader<UnixStream>, Response), ClientError> {
        let stream = UnixStream::connect(&self.path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NoAgent(self.path.clone())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.path.clone()),
            _ => ClientError::Io { path: self.path.clone(), source: e },
        })?;
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        let mut stream = BufReader::new(stream);
        let mut line = serde_json::to_vec(&Envelope { api_version: API_VERSION, request })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        stream.get_mut().write_all(&line).await.map_err(io)?;
        let mut reply = String::new();
        if stream.read_line(&mut reply).await.map_err(io)? == 0 {
            return Err(ClientError::Protocol("the agent closed the connection without answering".into()));
        }
        let response: Response = serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((stream, response))
    }

    /// Sends one request and returns its result.
    pub async fn call(&self, request: Request) -> Result<serde_json::Value, ClientError> {
        let (_, response) = self.open(request).await?;
        match response {
            Response { ok: true, result, .. } => Ok(result.unwrap_or(serde_json::Value::Null)),
            Response { error: Some(e), .. } => Err(ClientError::Api(e)),
            _ => Err(ClientError::Protocol("error reply without an error".into())),
        }
    }

    /// Sends a request and decodes its result as `T`.
    pub async fn call_as<T: serde::de::DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let v = self.call(request).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Starts a trace stream; `on_line` gets each record until the agent
    /// closes the stream or `on_line` returns false.
    pub async fn trace(
        &self,
        endpoint: Option<String>,
        mut on_line: impl FnMut(TraceLine) -> bool,
    ) -> Result<(), ClientError> {
        let (mut stream, response) = self.open(Request::Trace { endpoint }).await?;
        if let Some(e) = response.error {
            return Err(ClientError::Api(e));
        }
        let mut line = String::new();
        loop {
            line.clear();
            let n = stream
                .read_line(&mut line)
                .await
                .map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
            if n == 0 {
                return Ok(());
            }
            let rec: TraceLine = serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if !on_line(rec) {
                return Ok(());
            }
        }
    }
}
