//! Continuous traffic for the survival tests: a pinger (ICMP echo every few
//! milliseconds to several destinations, every request accounted for) and a
//! TCP echo stream (one line every ~20 ms, each echo checked). Both run until
//! SIGTERM, then report as one JSON line; see [`Pinger`] and [`EchoStream`].

use std::time::Duration;

use datapath::testbed::process::BgProcess;
use serde_json::Value;

use crate::net::python_bg;
use crate::node::Node;
use crate::outside::recording_server;

/// argv: TAG INTERVAL DST...
/// Sends an ICMP echo request to every DST each INTERVAL seconds (one raw
/// socket, identifier = pid) and matches the replies by sequence number.
/// Prints "up" once every DST has answered; on SIGTERM waits up to 1.5 s for
/// outstanding replies and prints one JSON object: DST -> {sent, received,
/// lost, lost_seqs (first 20), max_rtt_ms}.
pub const PINGER: &str = r#"
import json, os, select, signal, socket, struct, sys, time
interval, dsts = float(sys.argv[2]), sys.argv[3:]
stop = [False]
signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
ident = os.getpid() & 0xffff
st = {d: {"sent": 0, "received": 0, "pending": {}, "max_rtt_ms": 0.0} for d in dsts}
up = [False]
def recv_all():
    while True:
        try:
            data, addr = s.recvfrom(2048)
        except BlockingIOError:
            break
        now = time.time()
        ihl = (data[0] & 0x0f) * 4
        if len(data) < ihl + 8 or addr[0] not in st:
            continue
        t, _, _, i, q = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        d = st[addr[0]]
        if t != 0 or i != ident or q not in d["pending"]:
            continue
        d["received"] += 1
        d["max_rtt_ms"] = max(d["max_rtt_ms"], (now - d["pending"].pop(q)) * 1e3)
    if not up[0] and all(d["received"] for d in st.values()):
        up[0] = True
        print("up", flush=True)
seq, next_t = 0, time.time()
while not stop[0]:
    now = time.time()
    if now >= next_t:
        seq = (seq + 1) & 0xffff
        pkt = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"dpt-surv" * 4
        pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
        for dst in dsts:
            s.sendto(pkt, (dst, 0))
            st[dst]["sent"] += 1
            st[dst]["pending"][seq] = now
        next_t = max(next_t + interval, now)
    select.select([s], [], [], max(0.0, next_t - time.time()))
    recv_all()
deadline = time.time() + 1.5
while any(d["pending"] for d in st.values()) and time.time() < deadline:
    select.select([s], [], [], 0.05)
    recv_all()
out = {}
for dst, d in st.items():
    lost = sorted(d["pending"])
    out[dst] = {"sent": d["sent"], "received": d["received"], "lost": len(lost), "lost_seqs": lost[:20],
                "max_rtt_ms": round(d["max_rtt_ms"], 2)}
print(json.dumps(out), flush=True)
"#;

/// argv: TAG PORT
/// TCP echo server on 0.0.0.0:PORT (threaded): echoes every byte back.
/// Prints "ready", then "from PEER_IP PEER_PORT" per connection.
pub const ECHO_SERVER: &str = r#"
import socketserver, sys
port = int(sys.argv[2])
class H(socketserver.BaseRequestHandler):
    def handle(self):
        print("from %s %d" % self.client_address, flush=True)
        while True:
            d = self.request.recv(4096)
            if not d:
                return
            self.request.sendall(d)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
srv = S(("0.0.0.0", port), H)
print("ready", flush=True)
srv.serve_forever()
"#;

/// argv: TAG IP PORT INTERVAL
/// One TCP connection to IP:PORT; every INTERVAL seconds sends "N\n" and
/// waits for exactly that line back. Prints "connected LOCAL_PORT". Stops at
/// the first error (reset, EOF, wrong echo, 30 s without an echo) or on
/// SIGTERM, then prints one JSON object {sent, echoed, resets, errors,
/// max_ms, sport}.
pub const ECHO_STREAM: &str = r#"
import json, signal, socket, sys, time
ip, port, interval = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
stop = [False]
signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
c = socket.create_connection((ip, port), timeout=10)
c.settimeout(0.5)
sport = c.getsockname()[1]
print("connected", sport, flush=True)
res = {"sent": 0, "echoed": 0, "resets": 0, "errors": [], "max_ms": 0.0, "sport": sport}
buf, n = b"", 0
try:
    while not stop[0]:
        n += 1
        line = b"%d\n" % n
        t0 = time.time()
        c.sendall(line)
        res["sent"] += 1
        while b"\n" not in buf:
            try:
                d = c.recv(4096)
            except socket.timeout:
                if stop[0] or time.time() - t0 > 30:
                    raise TimeoutError("no echo of line %d after %.1f s" % (n, time.time() - t0))
                continue
            if not d:
                raise EOFError("connection closed by the peer at line %d" % n)
            buf += d
        got, buf = buf.split(b"\n", 1)
        if got + b"\n" != line:
            raise ValueError("line %d echoed as %r" % (n, got))
        res["echoed"] += 1
        res["max_ms"] = max(res["max_ms"], round((time.time() - t0) * 1e3, 2))
        time.sleep(max(0.0, interval - (time.time() - t0)))
except ConnectionResetError as e:
    res["resets"] += 1
    res["errors"].append("reset: %r" % e)
except Exception as e:
    res["errors"].append(repr(e))
print(json.dumps(res), flush=True)
"#;

/// What a [`Pinger`] saw for one destination.
#[derive(Clone, Debug)]
pub struct PingReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub lost_seqs: Vec<u64>,
    pub max_rtt_ms: f64,
}

/// What an [`EchoStream`] saw.
#[derive(Clone, Debug)]
pub struct StreamReport {
    pub sent: u64,
    pub echoed: u64,
    pub resets: u64,
    pub errors: Vec<String>,
    pub max_ms: f64,
    pub sport: u16,
}

/// Stops `p` (SIGTERM) and parses its last stdout line as JSON.
fn final_json(mut p: BgProcess, what: &str) -> Value {
    let (lines, stderr) = p.stop();
    let last = lines.last().cloned().unwrap_or_default();
    serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("{what} printed no JSON report ({e}); stdout {lines:?}; stderr: {stderr}"))
}

/// An ICMP pinger in a namespace ([`PINGER`]).
pub struct Pinger {
    proc: BgProcess,
}

impl Pinger {
    /// Starts pinging every `dsts` from `ns` each `interval` and waits until
    /// each has answered once (the caller warms the neighbour caches first).
    pub fn start(node: &Node, ns: &str, dsts: &[&str], interval: Duration) -> Pinger {
        let iv = format!("{}", interval.as_secs_f64());
        let mut args = vec![node.prefix.as_str(), iv.as_str()];
        args.extend_from_slice(dsts);
        let proc = python_bg(ns, PINGER, &args);
        if proc.wait_line(Duration::from_secs(10), |l| l == "up").is_none() {
            panic!("pinger in {ns} to {dsts:?} never got an answer from each; stderr: {}", proc.stderr());
        }
        Pinger { proc }
    }

    /// Stops it; the report per destination.
    pub fn finish(self) -> Vec<(String, PingReport)> {
        let v = final_json(self.proc, "pinger");
        let obj = v.as_object().unwrap_or_else(|| panic!("pinger report is not an object: {v}"));
        let n = |d: &Value, k: &str| d[k].as_u64().unwrap_or_else(|| panic!("pinger report lacks {k}: {v}"));
        obj.iter()
            .map(|(dst, d)| {
                let r = PingReport {
                    sent: n(d, "sent"),
                    received: n(d, "received"),
                    lost: n(d, "lost"),
                    lost_seqs: d["lost_seqs"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap(),
                    max_rtt_ms: d["max_rtt_ms"].as_f64().unwrap_or(0.0),
                };
                (dst.clone(), r)
            })
            .collect()
    }
}

/// TCP echo server on 0.0.0.0:`port` in `ns` ([`ECHO_SERVER`]), ready.
pub fn echo_server(node: &Node, ns: &str, port: u16) -> BgProcess {
    recording_server(node, ns, ECHO_SERVER, &[&port.to_string()])
}

/// A TCP echo stream from a namespace ([`ECHO_STREAM`]).
pub struct EchoStream {
    proc: BgProcess,
    /// The local (untranslated) port of the connection.
    pub sport: u16,
}

impl EchoStream {
    /// Connects from `ns` to `ip:port` and starts talking every `interval`.
    pub fn start(node: &Node, ns: &str, ip: &str, port: u16, interval: Duration) -> EchoStream {
        let (p, iv) = (port.to_string(), format!("{}", interval.as_secs_f64()));
        let proc = python_bg(ns, ECHO_STREAM, &[&node.prefix, ip, &p, &iv]);
        let Some(line) = proc.wait_line(Duration::from_secs(10), |l| l.starts_with("connected ")) else {
            panic!("echo stream from {ns} to {ip}:{port} did not connect; stderr: {}", proc.stderr());
        };
        let sport = line["connected ".len()..].trim().parse().expect("local port");
        EchoStream { proc, sport }
    }

    /// Stops it; its report.
    pub fn finish(self) -> StreamReport {
        let v = final_json(self.proc, "echo stream");
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("echo stream report lacks {k}: {v}"));
        StreamReport {
            sent: n("sent"),
            echoed: n("echoed"),
            resets: n("resets"),
            errors: v["errors"].as_array().map(|a| a.iter().map(|e| e.to_string()).collect()).unwrap_or_default(),
            max_ms: v["max_ms"].as_f64().unwrap_or(0.0),
            sport: n("sport") as u16,
        }
    }
}
