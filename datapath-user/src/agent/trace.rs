//! Packet traces: subscriptions turn the endpoints' trace flag on in the
//! datapath while someone listens, and each aya-log line is attributed to
//! its endpoint and streamed to the subscribers that want it.

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::broadcast;

use super::serve::write_line;
use super::{Agent, Inner};
use crate::api::{ApiError, Response, TraceLine};
use crate::state::{DatapathKind, EndpointSpec};

impl Inner {
    /// Writes every endpoint's trace flag (as subscriptions and `--trace`
    /// say) into the datapath's maps.
    fn refresh_trace_flags(&mut self) {
        let specs: Vec<EndpointSpec> = self.state.endpoints.values().cloned().collect();
        for spec in specs {
            // Every link of the endpoint: tracing it by name covers all its
            // interfaces.
            for link in spec.links() {
                let ifindex = if link.primary {
                    self.host_ifindex.get(&spec.name)
                } else {
                    self.attach_ifindex.get(link.host_ifname)
                };
                let on_ebpf = self.state.networks.get(link.network).is_some_and(|n| n.datapath == DatapathKind::Ebpf);
                if let (Some(ifindex), true) = (ifindex.copied(), on_ebpf) {
                    let info = self.endpoint_info(&spec, &link, ifindex);
                    if let Err(e) = tokio::task::block_in_place(|| self.bpf.upsert_endpoint(info)) {
                        tracing::warn!(endpoint = %spec.name, "updating trace flag: {e}");
                    }
                }
            }
        }
    }
}

impl Agent {
    async fn trace_subscribe(&self, endpoint: &Option<String>, delta: isize) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        match endpoint {
            Some(name) => {
                if !inner.state.endpoints.contains_key(name) {
                    return Err(super::error::endpoint_not_found(name));
                }
                let r = inner.trace_refs.entry(name.clone()).or_insert(0);
                *r = r.saturating_add_signed(delta);
            }
            None => inner.trace_all = inner.trace_all.saturating_add_signed(delta),
        }
        inner.refresh_trace_flags();
        Ok(())
    }

    /// Attributes a trace line (`ep=IFINDEX ...`) to an endpoint name and
    /// decides whether the subscriber wants it.
    fn attribute(&self, line: &str, want: &Option<String>) -> Option<TraceLine> {
        let snap = self.snapshot();
        let ifindex: u32 = line.strip_prefix("ep=")?.split_whitespace().next()?.parse().ok()?;
        let (name, _) = snap.endpoint_by_ifindex(ifindex)?;
        if let Some(want) = want {
            if want != name {
                // Also show packets *to* the wanted endpoint.
                let ips: Vec<String> = snap.endpoint_ips(want).iter().map(|ip| ip.to_string()).collect();
                let mentions = line.split_whitespace().any(|w| {
                    ips.iter().any(|ip| w == ip || w.strip_prefix(ip.as_str()).is_some_and(|r| r.starts_with(':')))
                });
                if !mentions {
                    return None;
                }
            }
        }
        Some(TraceLine { endpoint: name.clone(), line: line.to_string() })
    }

    /// Streams trace lines to one subscriber until it goes away.
    pub(super) async fn serve_trace(&self, stream: BufReader<UnixStream>, endpoint: Option<String>) {
        let mut rx = self.trace_tx.subscribe();
        let (read, mut write) = stream.into_inner().into_split();
        if let Err(e) = self.trace_subscribe(&endpoint, 1).await {
            let _ = write_line(&mut write, &Response::err(e)).await;
            return;
        }
        if write_line(&mut write, &Response::ok(serde_json::Value::Null)).await.is_ok() {
            let mut read = BufReader::new(read);
            let mut sink = String::new();
            loop {
                tokio::select! {
                    n = read.read_line(&mut sink) => {
                        if !matches!(n, Ok(n) if n > 0) { break }
                        sink.clear();
                    }
                    msg = rx.recv() => match msg {
                        Ok(line) => {
                            if let Some(rec) = self.attribute(&line, &endpoint) {
                                if write_line(&mut write, &rec).await.is_err() { break }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("trace client lagged, {n} lines dropped"),
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
        let _ = self.trace_subscribe(&endpoint, -1).await;
    }
}
