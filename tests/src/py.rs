//! python3 one-liners run inside endpoint namespaces. Each takes the test
//! prefix as its first argument (unused by the script) so a sweeper can
//! recognise leftovers of a killed run by their argv.

/// argv: TAG IFACE SECONDS MARKER...
/// Counts *incoming* frames on IFACE containing each MARKER for SECONDS
/// (after printing "ready"), then prints {"MARKER": count, ...} as JSON.
pub const SNIFFER: &str = r#"
import json, socket, sys, time
iface, dur = sys.argv[2], float(sys.argv[3])
markers = sys.argv[4:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(0.1)
counts = {m: 0 for m in markers}
print("ready", flush=True)
end = time.time() + dur
while time.time() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    for m in markers:
        if m.encode() in data:
            counts[m] += 1
print(json.dumps(counts), flush=True)
"#;

/// argv: TAG IFACE SECS MARKER...
/// Like [`SNIFFER`], for ARP replies: prints "ready", then after SECS one
/// JSON list with each incoming ARP reply as {eth_dst, eth_src, sha, spa,
/// tha, tpa, marker} (`marker`: the first MARKER found in the frame, or
/// null).
pub const ARP_REPLIES: &str = r#"
import json, socket, sys, time
iface, dur = sys.argv[2], float(sys.argv[3])
markers = sys.argv[4:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0))
s.settimeout(0.1)
mac = lambda b: ":".join("%02x" % x for x in b)
ip = lambda b: ".".join(str(x) for x in b)
out = []
print("ready", flush=True)
end = time.time() + dur
while time.time() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(data) < 42 or data[20:22] != b"\x00\x02":
        continue
    found = [m for m in markers if m.encode() in data]
    out.append({"eth_dst": mac(data[0:6]), "eth_src": mac(data[6:12]), "sha": mac(data[22:28]),
                "spa": ip(data[28:32]), "tha": mac(data[32:38]), "tpa": ip(data[38:42]),
                "marker": found[0] if found else None})
print(json.dumps(out), flush=True)
"#;

/// argv: TAG IFACE HEXFRAME...
/// Sends each frame verbatim through an AF_PACKET socket bound to IFACE (so
/// the kernel applies no check on its source addresses). Prints "sent N".
pub const RAW_SENDER: &str = r#"
import socket, sys
iface, frames = sys.argv[2], sys.argv[3:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for h in frames:
    s.send(bytes.fromhex(h))
print("sent", len(frames), flush=True)
"#;

/// argv: TAG URL
/// Fetches URL (retrying connection errors for up to 10 s) and prints
/// "<length> <sha256>".
pub const HTTP_FETCH: &str = r#"
import hashlib, sys, time, urllib.request
url = sys.argv[2]
deadline = time.time() + 10
while True:
    try:
        data = urllib.request.urlopen(url, timeout=10).read()
        break
    except OSError as e:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"#;

/// argv: TAG IP PORT
/// UDP server: answers every datagram with b"echo:" + datagram, except
/// b"big N", answered with N bytes (b"x" * N: a reply that must be
/// fragmented), and prints "from PEER_IP PEER_PORT" for each. Prints
/// "ready" once bound; exits after 30 s without traffic.
pub const UDP_ECHO_SERVER: &str = r#"
import socket, sys
ip, port = sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, port))
s.settimeout(30)
print("ready", flush=True)
while True:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        break
    print("from", addr[0], addr[1], flush=True)
    if data.startswith(b"big ") and data[4:].isdigit():
        s.sendto(b"x" * min(int(data[4:]), 65000), addr)
    else:
        s.sendto(b"echo:" + data, addr)
"#;

/// argv: TAG IP PORT MSG...
/// For each MSG: send it and wait (1 s, up to 5 tries) for b"echo:MSG".
/// Prints one JSON list of [msg, reply, reply_source_ip] (reply null when
/// none came).
pub const UDP_CLIENT: &str = r#"
import json, socket, sys
ip, port, msgs = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
res = []
for m in msgs:
    got = [m, None, None]
    for attempt in range(5):
        s.sendto(m.encode(), (ip, port))
        try:
            while True:
                data, addr = s.recvfrom(4096)
                if data == b"echo:" + m.encode():
                    got = [m, data.decode(), addr[0]]
                    break
        except socket.timeout:
            continue
        break
    res.append(got)
print(json.dumps(res), flush=True)
"#;

/// argv: TAG DST COUNT INTERVAL WAIT
/// A minimal `ping` (raw ICMP socket), used when iputils-ping is missing.
/// Prints iputils' summary line "N packets transmitted, M received"; exit
/// status 0 when at least one reply came (like ping), else 1.
pub const PING: &str = r#"
import os, socket, struct, sys, time
dst, count, interval, wait = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
got = 0
for seq in range(1, count + 1):
    start = time.time()
    body = struct.pack("!HH", ident, seq) + b"dpt-ping" * 7
    pkt = struct.pack("!BBH", 8, 0, 0) + body
    pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
    s.sendto(pkt, (dst, 0))
    deadline = start + wait
    while True:
        left = deadline - time.time()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            break
        ihl = (data[0] & 0x0f) * 4
        t, _, _, i, q = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t == 0 and i == ident and q == seq and addr[0] == dst:
            got += 1
            print("reply from %s: icmp_seq=%d" % (dst, seq), flush=True)
            break
    if seq < count:
        time.sleep(max(0.0, interval - (time.time() - start)))
print("%d packets transmitted, %d received" % (count, got), flush=True)
sys.exit(0 if got else 1)
"#;

/// argv: TAG PORT
/// TCP server on 0.0.0.0:PORT (threaded, backlog 1024): reads one message,
/// answers b"ok " + message, closes, and prints "from PEER_IP PEER_PORT"
/// per connection. Prints "ready" once listening.
pub const TCP_RECORDING_SERVER: &str = r#"
import socketserver, sys, threading
port = int(sys.argv[2])
lock = threading.Lock()
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(10)
        data = self.request.recv(64)
        self.request.sendall(b"ok " + data)
        with lock:  # one whole line at a time from many threads
            sys.stdout.write("from %s %d\n" % self.client_address)
            sys.stdout.flush()
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 1024
    daemon_threads = True
srv = S(("0.0.0.0", port), H)
print("ready", flush=True)
srv.serve_forever()
"#;

/// argv: TAG IP PORT N CONCURRENCY [HOLD_SECONDS]
/// Opens N TCP connections to IP:PORT, CONCURRENCY at a time; on each sends
/// a unique message and expects b"ok " + message back before EOF. With
/// HOLD_SECONDS, first opens all N connections, waits until all are
/// connected (a barrier) and holds them that long before talking, so all
/// N flows are alive at once. Prints "error ..." per failure, then
/// "ok COUNT".
pub const TCP_CLIENTS: &str = r#"
import socket, sys, threading, time
ip, port, n, conc = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
hold = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
ok = [0]
lock = threading.Lock()
barrier = threading.Barrier(conc, timeout=60) if hold else None
def work(k):
    for i in range(k, n, conc):
        try:
            c = socket.create_connection((ip, port), timeout=20)
            if barrier is not None and i < conc:
                barrier.wait()
                time.sleep(hold)
            msg = b"%s-%d" % (sys.argv[1].encode(), i)
            c.sendall(msg)
            r = b""
            while True:
                d = c.recv(64)
                if not d:
                    break
                r += d
            c.close()
            if r == b"ok " + msg:
                with lock:
                    ok[0] += 1
            else:
                print("error", i, "reply", r, flush=True)
        except Exception as e:
            print("error", i, repr(e), flush=True)
ts = [threading.Thread(target=work, args=(k,)) for k in range(conc)]
[t.start() for t in ts]
[t.join() for t in ts]
print("ok", ok[0], flush=True)
"#;

/// argv: TAG IP PORT SECONDS
/// Opens one TCP connection to IP:PORT, prints "connected", keeps it open
/// (idle) for SECONDS, then sends b"late", expects b"ok late" and prints
/// "done" (or "error ...").
pub const TCP_HOLD: &str = r#"
import socket, sys, time
ip, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
c = socket.create_connection((ip, port), timeout=10)
print("connected", c.getsockname()[1], flush=True)
time.sleep(secs)
try:
    c.sendall(b"late")
    r = c.recv(64)
    print("done" if r == b"ok late" else "error reply %r" % r, flush=True)
except Exception as e:
    print("error", repr(e), flush=True)
"#;

/// argv: TAG PROTO(udp|tcp) SERVER NAME QTYPE(A|AAAA|PTR|TXT) [COUNT]
/// One DNS query (a test client: the server under test parses with a real
/// DNS library). Prints `rcode N`, then one line per answer (`A IP TTL`,
/// `PTR NAME`); `refused` when nothing listens (ICMP port unreachable).
/// With COUNT > 1: COUNT queries one after the other, then one JSON line
/// {"n", "median_us", "p99_us", "failed"} of the answer times.
pub const DNS_CLIENT: &str = r#"
import json, socket, struct, sys, time
proto, server, name, qtype = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
count = int(sys.argv[6]) if len(sys.argv) > 6 else 1
T = {"A": 1, "PTR": 12, "AAAA": 28, "TXT": 16}
def query(i):
    qn = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".") if l) + b"\0"
    return struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + qn + struct.pack(">HH", T[qtype], 1)
def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return b
def name_at(m, o, hops=0):
    labels = []
    while hops < 20:
        l = m[o]
        if l & 0xc0 == 0xc0:
            o = ((l & 0x3f) << 8) | m[o + 1]; hops += 1; continue
        if l == 0:
            break
        labels.append(m[o + 1:o + 1 + l].decode()); o += 1 + l
    return ".".join(labels) + "."
def skip(m, o):
    while True:
        l = m[o]
        if l & 0xc0 == 0xc0:
            return o + 2
        if l == 0:
            return o + 1
        o += 1 + l
def parse(m):
    i, fl, qd, an, ns, ar = struct.unpack(">HHHHHH", m[:12])
    o = 12
    for _ in range(qd):
        o = skip(m, o) + 4
    out = []
    for _ in range(an):
        o = skip(m, o)
        t, c, ttl, rl = struct.unpack(">HHIH", m[o:o + 10]); o += 10
        if t == 1:
            out.append("A %s %d" % (socket.inet_ntoa(m[o:o + rl]), ttl))
        elif t == 12:
            out.append("PTR %s" % name_at(m, o))
        elif t == 28:
            out.append("AAAA %s %d" % (socket.inet_ntop(socket.AF_INET6, m[o:o + rl]), ttl))
        o += rl
    return i, fl & 0xf, out
udp = None
def ask(i):
    global udp
    q = query(i)
    if proto == "udp":
        if udp is None:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.settimeout(15)
            udp.connect((server, 53))
        udp.send(q)
        while True:
            m = udp.recv(65535)
            if m[:2] == q[:2]:
                return m
    s = socket.create_connection((server, 53), timeout=15)
    s.sendall(struct.pack(">H", len(q)) + q)
    n = struct.unpack(">H", recvn(s, 2))[0]
    m = recvn(s, n)
    s.close()
    return m
try:
    if count == 1:
        i, rcode, out = parse(ask(4242))
        print("rcode %d" % rcode)
        for line in out:
            print(line)
    else:
        times, failed = [], 0
        for k in range(count):
            t = time.perf_counter()
            i, rcode, out = parse(ask(k))
            times.append((time.perf_counter() - t) * 1e6)
            failed += rcode != 0 or not out
        times.sort()
        print(json.dumps({"n": count, "median_us": times[len(times) // 2],
                          "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))], "failed": failed}))
except ConnectionRefusedError:
    print("refused")
"#;

/// argv: TAG PROTO(udp|tcp) SERVER HEX...
/// Sends each HEX payload as one DNS message (TCP: one connection each,
/// length-prefixed) and prints `reply N` (N bytes back) or `none` per
/// payload (1 s without an answer, or the connection closed).
pub const DNS_RAW: &str = r#"
import socket, struct, sys
proto, server = sys.argv[2], sys.argv[3]
for h in sys.argv[4:]:
    p = bytes.fromhex(h)
    try:
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            s.sendto(p, (server, 53))
            m = s.recv(65535)
        else:
            s = socket.create_connection((server, 53), timeout=1)
            s.sendall(struct.pack(">H", len(p)) + p)
            m = s.recv(65535)
            if not m:
                raise socket.timeout()
        print("reply %d" % len(m), flush=True)
    except (socket.timeout, ConnectionResetError):
        print("none", flush=True)
    s.close()
"#;

/// argv: TAG IP NAME ANSWER
/// A DNS server on IP:53 (UDP and TCP) answering A queries for NAME with
/// ANSWER (TTL 60) and NXDOMAIN for everything else; prints "ready", then
/// "query QNAME PROTO" per query.
pub const DNS_UPSTREAM: &str = r#"
import socket, struct, sys, threading
ip, known, answer = sys.argv[2], sys.argv[3].lower().rstrip("."), sys.argv[4]
def qname(m):
    o, labels = 12, []
    while m[o]:
        labels.append(m[o + 1:o + 1 + m[o]].decode()); o += 1 + m[o]
    return ".".join(labels), o + 5
def respond(m, proto):
    name, end = qname(m)
    print("query %s %s" % (name, proto), flush=True)
    hit = name.lower() == known
    flags = 0x8180 | (0 if hit else 3)
    head = m[:2] + struct.pack(">HHHHH", flags, 1, 1 if hit else 0, 0, 0)
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(answer) if hit else b""
    return head + m[12:end] + rr
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((ip, 53)); l.listen(16)
def tcp():
    while True:
        c, _ = l.accept()
        n = struct.unpack(">H", c.recv(2))[0]
        m = b""
        while len(m) < n:
            m += c.recv(n - len(m))
        r = respond(m, "tcp")
        c.sendall(struct.pack(">H", len(r)) + r); c.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, 53))
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    m, peer = u.recvfrom(65535)
    u.sendto(respond(m, "udp"), peer)
"#;
