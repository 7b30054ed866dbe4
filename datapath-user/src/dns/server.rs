//! The server: a UDP and a TCP socket on 127.0.0.11:53 in each served
//! endpoint's namespace (opened there on a namespace thread; they keep
//! working from the agent's tokio tasks), the table read from a `watch`
//! channel (the agent's request path never waits on DNS and DNS never waits
//! on it), and forwarding with bounds: at most [`MAX_UPSTREAMS`] upstreams
//! in order, [`UPSTREAM_TIMEOUT`] each, [`MAX_IN_FLIGHT`] forwarded queries
//! at a time (beyond: SERVFAIL, counted).

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::answer::{self, Kind, Outcome};
use super::table::{Asker, Forward, Table};
use super::{resolv, LISTEN_ADDR, MAX_UPSTREAMS};
use crate::host::netns;
use crate::state::State;

/// Each upstream gets this long (Docker: 4 s).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Forwarded queries at a time, node-wide (Docker: 1024).
pub const MAX_IN_FLIGHT: usize = 1024;
/// TCP connections at a time per endpoint; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 16;
/// A TCP client that sends nothing (or not all it announced) for this long
/// is disconnected.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// What the server has done since the agent started (`stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStats {
    pub endpoints_served: u64,
    pub local: u64,
    pub nodata: u64,
    pub forwarded: u64,
    /// Forwarded queries no upstream answered usably (SERVFAIL sent).
    pub forward_failed: u64,
    pub refused: u64,
    pub formerr: u64,
    pub notimp: u64,
    /// Too short, responses sent as queries: nothing sent back.
    pub dropped: u64,
    /// Refused for the bound on queries in flight (SERVFAIL sent).
    pub overloaded: u64,
    /// TCP connections closed for the per-endpoint bound or idleness.
    pub tcp_closed: u64,
}

#[derive(Default)]
struct Counters {
    local: AtomicU64,
    nodata: AtomicU64,
    forwarded: AtomicU64,
    forward_failed: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    dropped: AtomicU64,
    overloaded: AtomicU64,
    tcp_closed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn count(&self, k: Kind) {
        bump(match k {
            Kind::Local => &self.local,
            Kind::NoData => &self.nodata,
            Kind::Refused => &self.refused,
            Kind::FormErr => &self.formerr,
            Kind::NotImp => &self.notimp,
            Kind::Dropped => &self.dropped,
        })
    }
}

/// What every serving task shares.
struct Shared {
    table: watch::Receiver<Arc<Table>>,
    node_upstreams: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
    counters: Counters,
}

/// One endpoint's sockets' tasks; dropping it stops them (and closes the
/// sockets).
struct Listener {
    asker: Asker,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The embedded DNS service of the agent.
pub struct Dns {
    tx: watch::Sender<Arc<Table>>,
    shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<BTreeMap<String, Listener>>,
}

impl Dns {
    /// A service forwarding to the resolvers in `upstream_resolv_conf`
    /// (the node's `/etc/resolv.conf` by default). Serves nothing until
    /// the first [`Dns::publish`] + [`Dns::settle`].
    pub fn new(upstream_resolv_conf: &Path) -> Arc<Dns> {
        let node_upstreams = resolv::node_upstreams(upstream_resolv_conf);
        tracing::info!(?node_upstreams, "embedded DNS: node upstreams from {}", upstream_resolv_conf.display());
        let (tx, rx) = watch::channel(Arc::new(Table::default()));
        let shared = Arc::new(Shared {
            table: rx,
            node_upstreams,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            counters: Counters::default(),
        });
        let dns = Arc::new(Dns { tx, shared, listeners: Default::default() });
        // Changes published without a settle after them (a detached
        // command's exit, the teardown) still make and remove listeners.
        let weak = Arc::downgrade(&dns);
        let mut rx = dns.tx.subscribe();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(dns) => dns.settle().await,
                    None => break,
                }
            }
        });
        dns
    }

    /// The table for `state`, to every serving task (cheap; never waits).
    pub fn publish(&self, state: &State) {
        self.tx.send_replace(Arc::new(Table::new(state)));
    }

    /// Makes the listeners match the latest table: new ones opened (and
    /// their resolv.conf written), gone ones closed (and removed).
    pub async fn settle(&self) {
        let table = self.tx.borrow().clone();
        let mut listeners = self.listeners.lock().await;
        let gone: Vec<String> = listeners
            .iter()
            .filter(|(name, l)| table.asker(name).is_none_or(|a| a.netns_path != l.asker.netns_path))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(l) = listeners.remove(&name) {
                let netns_name = l.asker.netns_name.clone();
                drop(l);
                if let Some(n) = netns_name {
                    let _ = tokio::task::spawn_blocking(move || resolv::remove(&n)).await;
                }
                tracing::info!(endpoint = %name, "embedded DNS: stopped");
            }
        }
        for (name, asker) in table.askers() {
            if let Some(l) = listeners.get_mut(name) {
                l.asker = asker.clone();
                continue;
            }
            match self.listen(name, asker).await {
                Ok(l) => {
                    listeners.insert(name.clone(), l);
                }
                Err(e) => tracing::warn!(endpoint = %name, "embedded DNS: cannot serve: {e}"),
            }
        }
    }

    async fn listen(&self, name: &str, asker: &Asker) -> std::io::Result<Listener> {
        let path = asker.netns_path.clone();
        let netns_name = asker.netns_name.clone();
        let (udp, tcp) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let sockets = netns::run_in(&path, open_sockets).map_err(std::io::Error::other)??;
            if let Some(n) = netns_name {
                resolv::write(&n)?;
            }
            Ok(sockets)
        })
        .await
        .map_err(std::io::Error::other)??;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        let tasks = vec![
            tokio::spawn(serve_udp(udp, name.to_string(), self.shared.clone())),
            tokio::spawn(serve_tcp(tcp, name.to_string(), self.shared.clone())),
        ];
        tracing::info!(endpoint = %name, "embedded DNS: serving on {LISTEN_ADDR}:53");
        Ok(Listener { asker: asker.clone(), tasks })
    }

    pub fn stats(&self) -> DnsStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsStats {
            endpoints_served: self.listeners.try_lock().map(|l| l.len() as u64).unwrap_or_default(),
            local: l(&c.local),
            nodata: l(&c.nodata),
            forwarded: l(&c.forwarded),
            forward_failed: l(&c.forward_failed),
            refused: l(&c.refused),
            formerr: l(&c.formerr),
            notimp: l(&c.notimp),
            dropped: l(&c.dropped),
            overloaded: l(&c.overloaded),
            tcp_closed: l(&c.tcp_closed),
        }
    }
}

/// On a thread inside the endpoint's namespace (whose `lo`, the
/// address's home, the endpoint's create brought up): the two sockets.
fn open_sockets() -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let addr = SocketAddrV4::new(LISTEN_ADDR, 53);
    let udp = std::net::UdpSocket::bind(addr)?;
    udp.set_nonblocking(true)?;
    let tcp = std::net::TcpListener::bind(addr)?;
    tcp.set_nonblocking(true)?;
    Ok((udp, tcp))
}

/// Where an asker's forwarded queries go, and from which namespace.
fn upstreams(shared: &Shared, asker: &Asker) -> (Vec<SocketAddr>, Option<PathBuf>) {
    match &asker.forward {
        Forward::Node => (shared.node_upstreams.clone(), None),
        Forward::Servers(s) => (resolv::upstreams_of(s), Some(asker.netns_path.clone())),
        Forward::Nowhere => (Vec::new(), None),
    }
}

/// What to send back for `query` (None: nothing), forwarding it if the
/// table says so; `tcp` forwards over TCP.
async fn respond(shared: &Arc<Shared>, asker: &str, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let table = shared.table.borrow().clone();
    match answer::answer(&table, asker, query) {
        Outcome::Reply(bytes, kind) => {
            shared.counters.count(kind);
            Some(bytes)
        }
        Outcome::Drop(kind) => {
            shared.counters.count(kind);
            None
        }
        Outcome::Forward => {
            let Ok(_permit) = shared.in_flight.clone().try_acquire_owned() else {
                bump(&shared.counters.overloaded);
                return answer::servfail(query);
            };
            let Some(a) = table.asker(asker) else { return answer::servfail(query) };
            let (ups, via) = upstreams(shared, a);
            bump(&shared.counters.forwarded);
            let id = answer::query_id(query)?;
            for up in ups.into_iter().take(MAX_UPSTREAMS) {
                let got = timeout(UPSTREAM_TIMEOUT, ask(up, via.as_deref(), query, tcp)).await;
                match got {
                    Ok(Ok(bytes)) if answer::usable_answer(&bytes, id) => return Some(bytes),
                    Ok(Ok(_)) => tracing::debug!(%up, "embedded DNS: upstream answered SERVFAIL/REFUSED/junk"),
                    Ok(Err(e)) => tracing::debug!(%up, "embedded DNS: upstream: {e}"),
                    Err(_) => tracing::debug!(%up, "embedded DNS: upstream timed out"),
                }
            }
            bump(&shared.counters.forward_failed);
            answer::servfail(query)
        }
    }
}

/// One exchange with an upstream, from the agent's namespace (`via`
/// None) or the endpoint's.
async fn ask(up: SocketAddr, via: Option<&Path>, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    if tcp {
        let mut s = match via {
            None => TcpStream::connect(up).await?,
            Some(path) => {
                let path = path.to_path_buf();
                let std = tokio::task::spawn_blocking(move || {
                    netns::run_in(&path, move || std::net::TcpStream::connect_timeout(&up, UPSTREAM_TIMEOUT))
                })
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)??;
                std.set_nonblocking(true)?;
                TcpStream::from_std(std)?
            }
        };
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(query);
        s.write_all(&out).await?;
        let n = s.read_u16().await? as usize;
        let mut buf = vec![0; n];
        s.read_exact(&mut buf).await?;
        return Ok(buf);
    }
    let any: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(std::io::Error::other)?;
    let sock = match via {
        None => UdpSocket::bind(any).await?,
        Some(path) => {
            let path = path.to_path_buf();
            let std = tokio::task::spawn_blocking(move || netns::run_in(&path, move || std::net::UdpSocket::bind(any)))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)??;
            std.set_nonblocking(true)?;
            UdpSocket::from_std(std)?
        }
    };
    // Connected: only the upstream's datagrams are received.
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn serve_udp(sock: Arc<UdpSocket>, asker: String, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(endpoint = %asker, "embedded DNS: recv: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let table = shared.table.borrow().clone();
        // Local answers right here; forwards in a task of their own, so a
        // slow upstream never holds up the next query.
        match answer::answer(&table, &asker, &query) {
            Outcome::Forward => {
                let (sock, asker, shared) = (sock.clone(), asker.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Some(reply) = respond(&shared, &asker, &query, false).await {
                        let _ = sock.send_to(&reply, peer).await;
                    }
                });
            }
            Outcome::Reply(bytes, kind) => {
                shared.counters.count(kind);
                let _ = sock.send_to(&bytes, peer).await;
            }
            Outcome::Drop(kind) => shared.counters.count(kind),
        }
    }
}

async fn serve_tcp(listener: TcpListener, asker: String, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(endpoint = %asker, "embedded DNS: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            bump(&shared.counters.tcp_closed);
            continue;
        };
        let (asker, shared) = (asker.clone(), shared.clone());
        tokio::spawn(async move {
            serve_conn(stream, &asker, &shared).await;
            drop(permit);
        });
    }
}

/// Queries on one TCP connection, one after the other, until the client
/// closes it or idles for [`TCP_IDLE`] (also inside a message).
async fn serve_conn(mut s: TcpStream, asker: &str, shared: &Arc<Shared>) {
    loop {
        let len = match timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            Ok(Err(_)) => return,
            Err(_) => {
                bump(&shared.counters.tcp_closed);
                return;
            }
        };
        let mut query = vec![0; len];
        match timeout(TCP_IDLE, s.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                bump(&shared.counters.tcp_closed);
                return;
            }
        }
        let Some(reply) = respond(shared, asker, &query, true).await else { continue };
        let Ok(n) = u16::try_from(reply.len()) else { return };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if timeout(TCP_IDLE, s.write_all(&out)).await.map_or(true, |r| r.is_err()) {
            return;
        }
    }
}
