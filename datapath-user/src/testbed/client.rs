//! The agent's typed API client ([`crate::api::Client`]) for synchronous
//! callers (tests, the benchmark): one current-thread runtime per client, so a
//! call costs one round trip on the socket and nothing else.

use std::path::{Path, PathBuf};

use crate::api::{Client, ClientError, Request};

/// A blocking [`Client`]. Not for use inside an async context (use
/// [`Client`] there).
pub struct SyncClient {
    rt: tokio::runtime::Runtime,
    client: Client,
    socket: PathBuf,
}

impl SyncClient {
    pub fn new(socket: impl AsRef<Path>) -> std::io::Result<SyncClient> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let socket = socket.as_ref().to_path_buf();
        Ok(SyncClient { rt, client: Client::new(&socket), socket })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns its result.
    pub fn call(&self, request: Request) -> Result<serde_json::Value, ClientError> {
        self.rt.block_on(self.client.call(request))
    }

    /// Sends a request and decodes its result as `T`.
    pub fn call_as<T: serde::de::DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        self.rt.block_on(self.client.call_as(request))
    }

    /// Whether the agent answers a ping.
    pub fn ping(&self) -> Result<(), ClientError> {
        self.call(Request::Ping).map(|_| ())
    }
}
