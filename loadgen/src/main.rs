//! `loadgen`: a small, std-only load generator for `cargo xtask bench`.
//!
//! ```text
//! loadgen server --listen IP:PORT --proto tcp|udp [--max-secs N] [--size N]
//! loadgen client --mode rr|crr|udp --target IP:PORT [--duration S] [--warmup S] [--size N]
//! ```
//!
//! * `rr`: one TCP connection, `size`-byte request, `size`-byte response,
//!   one transaction at a time (netperf TCP_RR).
//! * `crr`: a new TCP connection per transaction: connect, request,
//!   response, close (netperf TCP_CRR).
//! * `udp`: `size`-byte UDP datagrams sent as fast as one socket can; the
//!   server counts what arrives and reports it back (packets per second
//!   received).
//!
//! The client prints one JSON line on stdout. Both ends are bounded: the
//! client by `--duration` (+ warm-up), the server by `--max-secs`, after
//! which it exits whatever happens.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

const UDP_PING: &[u8] = b"DPB-PING";
const UDP_FIN: &[u8] = b"DPB-FIN";
/// First byte of a UDP payload: warm-up packets are not counted.
const UDP_WARM: u8 = 0;
const UDP_MEASURED: u8 = 1;
/// The server acknowledges every this many datagrams (an 8-byte count).
const UDP_ACK_EVERY: u64 = 32;
/// At most this many datagrams in flight (sent, not yet acknowledged): small
/// enough for the receiver's default socket buffer, so the figure is the
/// rate the path delivers, not how fast a sender can overrun a receiver.
const UDP_WINDOW: u64 = 160;

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen server --listen IP:PORT --proto tcp|udp [--max-secs N] [--size N]\n  \
         loadgen client --mode rr|crr|udp --target IP:PORT [--duration S] [--warmup S] [--size N]"
    );
    exit(2)
}

struct Opts {
    listen: Option<SocketAddr>,
    target: Option<SocketAddr>,
    proto: String,
    mode: String,
    max_secs: u64,
    size: usize,
    duration: f64,
    warmup: f64,
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        listen: None,
        target: None,
        proto: "tcp".into(),
        mode: "rr".into(),
        max_secs: 600,
        size: 1,
        duration: 5.0,
        warmup: 0.3,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => o.listen = Some(val().parse().unwrap_or_else(|_| usage())),
            "--target" => o.target = Some(val().parse().unwrap_or_else(|_| usage())),
            "--proto" => o.proto = val(),
            "--mode" => o.mode = val(),
            "--max-secs" => o.max_secs = val().parse().unwrap_or_else(|_| usage()),
            "--size" => o.size = val().parse().unwrap_or_else(|_| usage()),
            "--duration" => o.duration = val().parse().unwrap_or_else(|_| usage()),
            "--warmup" => o.warmup = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if o.size == 0 || o.size > 65000 || !(0.0..=3600.0).contains(&o.duration) || !(0.0..=60.0).contains(&o.warmup) {
        usage()
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else { usage() };
    let o = parse(rest);
    let r = match cmd.as_str() {
        "server" => server(&o),
        "client" => client(&o),
        _ => usage(),
    };
    if let Err(e) = r {
        eprintln!("loadgen: {e}");
        exit(1);
    }
}

/// CPU seconds (user, system) this process used so far, from /proc/self/stat.
fn self_cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based 11, 12).
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (tick(11), tick(12))
}

// ---------------------------------------------------------------------------
// server

fn server(o: &Opts) -> std::io::Result<()> {
    let addr = o.listen.unwrap_or_else(|| usage());
    let max = Duration::from_secs(o.max_secs);
    // Watchdog: the server never outlives --max-secs.
    std::thread::spawn(move || {
        std::thread::sleep(max);
        eprintln!("loadgen server: --max-secs reached, exiting");
        exit(0);
    });
    match o.proto.as_str() {
        "tcp" => tcp_server(addr, o.size),
        "udp" => udp_server(addr),
        _ => usage(),
    }
}

/// Serves connections one after the other (the benchmark has one client at
/// a time): read `size` bytes, answer `size` bytes, until the peer closes.
fn tcp_server(addr: SocketAddr, size: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let mut buf = vec![0u8; size];
    loop {
        let (mut conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let _ = conn.set_nodelay(true);
        // A stuck peer cannot hold the server forever.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        while conn.read_exact(&mut buf).is_ok() {
            if conn.write_all(&buf).is_err() {
                break;
            }
        }
    }
}

/// Counts measured datagrams; answers pings (readiness, resets the counts),
/// FINs (the count) and acknowledges every [`UDP_ACK_EVERY`] datagrams with
/// the number received so far, so the client can bound what is in flight.
fn udp_server(addr: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(addr)?;
    let mut buf = [0u8; 65536];
    let mut measured: u64 = 0;
    let mut warm: u64 = 0;
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let p = &buf[..n];
        if p == UDP_PING {
            measured = 0;
            warm = 0;
            let _ = sock.send_to(UDP_PING, peer);
        } else if p == UDP_FIN {
            let reply = format!("{{\"received\":{measured},\"warmup_received\":{warm}}}");
            let _ = sock.send_to(reply.as_bytes(), peer);
        } else {
            if p.first() == Some(&UDP_MEASURED) {
                measured += 1;
            } else {
                warm += 1;
            }
            let total = measured + warm;
            if total.is_multiple_of(UDP_ACK_EVERY) {
                let _ = sock.send_to(&total.to_le_bytes(), peer);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// client

fn connect(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&target, timeout)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// Connects, retrying for up to 3 s while the server starts.
fn connect_retry(target: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match connect(target, Duration::from_secs(2)) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e),
        }
    }
}

struct Outcome {
    ops: u64,
    secs: f64,
    errors: u64,
    extra: String,
}

fn client(o: &Opts) -> std::io::Result<()> {
    let target = o.target.unwrap_or_else(|| usage());
    let warmup = Duration::from_secs_f64(o.warmup);
    let duration = Duration::from_secs_f64(o.duration);
    let cpu0 = self_cpu();
    let out = match o.mode.as_str() {
        "rr" => rr(target, o.size, warmup, duration)?,
        "crr" => crr(target, o.size, warmup, duration)?,
        "udp" => udp(target, o.size, warmup, duration)?,
        _ => usage(),
    };
    let cpu1 = self_cpu();
    let rate = if out.secs > 0.0 { out.ops as f64 / out.secs } else { 0.0 };
    println!(
        "{{\"mode\":\"{}\",\"ops\":{},\"secs\":{:.6},\"rate\":{:.1},\"errors\":{},\"utime\":{:.2},\"stime\":{:.2}{}}}",
        o.mode,
        out.ops,
        out.secs,
        rate,
        out.errors,
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1,
        out.extra
    );
    Ok(())
}

fn rr(target: SocketAddr, size: usize, warmup: Duration, duration: Duration) -> std::io::Result<Outcome> {
    let mut c = connect_retry(target)?;
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    let mut once = |c: &mut TcpStream| -> std::io::Result<()> {
        c.write_all(&req)?;
        c.read_exact(&mut resp)
    };
    let start = Instant::now();
    while start.elapsed() < warmup {
        once(&mut c)?;
    }
    let t0 = Instant::now();
    let mut ops = 0u64;
    while t0.elapsed() < duration {
        once(&mut c)?;
        ops += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = c.shutdown(Shutdown::Both);
    Ok(Outcome { ops, secs, errors: 0, extra: String::new() })
}

fn crr(target: SocketAddr, size: usize, warmup: Duration, duration: Duration) -> std::io::Result<Outcome> {
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    // The first connection waits for the server; it is part of the warm-up.
    drop(connect_retry(target)?);
    let mut errors = 0u64;
    let mut last_err: Option<std::io::Error> = None;
    let mut once = |errors: &mut u64| -> bool {
        let r = (|| {
            let mut c = connect(target, Duration::from_secs(2))?;
            c.write_all(&req)?;
            c.read_exact(&mut resp)
        })();
        match r {
            Ok(()) => true,
            Err(e) => {
                *errors += 1;
                last_err = Some(e);
                false
            }
        }
    };
    let start = Instant::now();
    while start.elapsed() < warmup {
        once(&mut errors);
    }
    let t0 = Instant::now();
    let mut ops = 0u64;
    while t0.elapsed() < duration {
        if once(&mut errors) {
            ops += 1;
        } else if errors > 1000 && errors > ops {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if ops == 0 {
        return Err(last_err.unwrap_or_else(|| std::io::Error::other("no connection completed")));
    }
    Ok(Outcome { ops, secs, errors, extra: String::new() })
}

fn udp(target: SocketAddr, size: usize, warmup: Duration, duration: Duration) -> std::io::Result<Outcome> {
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sock = UdpSocket::bind(bind)?;
    sock.connect(target)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0u8; 256];
    // Wait until the server answers (it may still be starting).
    let mut ready = false;
    for _ in 0..30 {
        let _ = sock.send(UDP_PING);
        if let Ok(n) = sock.recv(&mut buf) {
            if &buf[..n] == UDP_PING {
                ready = true;
                break;
            }
        }
    }
    if !ready {
        return Err(std::io::Error::new(ErrorKind::TimedOut, "the UDP server did not answer"));
    }
    let mut pkt = vec![0u8; size.max(1)];
    let mut errors = 0u64;
    let mut stalls = 0u64;
    // Datagrams sent and acknowledged over the whole run (warm-up included).
    let mut sent_total = 0u64;
    let mut acked = 0u64;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut send_for = |mark: u8, d: Duration, errors: &mut u64, stalls: &mut u64| -> (u64, f64) {
        pkt[0] = mark;
        let t0 = Instant::now();
        let mut sent = 0u64;
        loop {
            for _ in 0..16 {
                // Window full: wait for an acknowledgement (a lost one only
                // costs the 20 ms timeout, counted as a stall).
                while sent_total - acked >= UDP_WINDOW {
                    let mut ack = [0u8; 64];
                    match sock.recv(&mut ack) {
                        Ok(8) => acked = acked.max(u64::from_le_bytes(ack[..8].try_into().expect("8 bytes"))),
                        Ok(_) => {}
                        Err(_) => {
                            *stalls += 1;
                            acked = sent_total;
                        }
                    }
                }
                match sock.send(&pkt) {
                    Ok(_) => {
                        sent += 1;
                        sent_total += 1;
                    }
                    Err(_) => *errors += 1,
                }
            }
            if t0.elapsed() >= d {
                return (sent, t0.elapsed().as_secs_f64());
            }
        }
    };
    send_for(UDP_WARM, warmup, &mut errors, &mut stalls);
    let (sent, secs) = send_for(UDP_MEASURED, duration, &mut errors, &mut stalls);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    // Let the receiver drain, then ask for its count.
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..30 {
        let _ = sock.send(UDP_FIN);
        if let Ok(n) = sock.recv(&mut buf) {
            let s = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(received) = json_u64(&s, "received") {
                let extra = format!(",\"sent\":{sent},\"send_rate\":{:.1},\"stalls\":{stalls}", sent as f64 / secs);
                return Ok(Outcome { ops: received, secs, errors, extra });
            }
        }
    }
    Err(std::io::Error::new(ErrorKind::TimedOut, "the UDP server did not report its count"))
}

/// The value of `"key":N` in a flat JSON object (enough for our own replies).
fn json_u64(s: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let at = s.find(&pat)? + pat.len();
    let digits: String = s[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counts_from_replies() {
        assert_eq!(json_u64("{\"received\":123,\"warmup_received\":4}", "received"), Some(123));
        assert_eq!(json_u64("{\"received\":123,\"warmup_received\":4}", "warmup_received"), Some(4));
        assert_eq!(json_u64("{}", "received"), None);
    }

    #[test]
    fn rr_and_crr_over_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        std::thread::spawn(move || tcp_server(addr, 1));
        let r = rr(addr, 1, Duration::from_millis(10), Duration::from_millis(100)).unwrap();
        assert!(r.ops > 0);
        let c = crr(addr, 1, Duration::from_millis(10), Duration::from_millis(100)).unwrap();
        assert!(c.ops > 0);
    }

    #[test]
    fn udp_over_loopback() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        drop(s);
        std::thread::spawn(move || udp_server(addr));
        std::thread::sleep(Duration::from_millis(50));
        let u = udp(addr, 64, Duration::from_millis(10), Duration::from_millis(100)).unwrap();
        assert!(u.ops > 0, "received nothing");
    }
}
