//! Masquerade (SNAT in `dp_from_ep`, reverse NAT in `dp_from_uplink`) with
//! real packets, in throwaway namespaces and without the agent:
//!
//! ```text
//!  PREFIXe1 (10.250.0.2) --veth-- PREFIXh1 ┐
//!  PREFIXe2 (10.250.0.3) --veth-- PREFIXh2 ┤ PREFIXn  ("node", ip_forward=1)
//!                                 PREFIXup ┘ 203.0.113.1/24 --veth-- PREFIXo ("outside")
//!                                                                 203.0.113.2/24, 198.51.100.1/32 (lo)
//! ```
//!
//! PREFIX is `dpg` + 5 hex digits, claimed from the test bed
//! ([`datapath::testbed::names`]), so leftovers of a killed run are swept.
//! The node has no bridge and no address in 10.250.0.0/24: the endpoints
//! reach the outside only through the programs (maps filled from the test
//! with the `Bpf` API the agent uses). Traffic stays inside these
//! namespaces. Everything is deleted on drop, also on failure.
//!
//! Needs root and the embedded eBPF object; skips otherwise.

use std::{
    fs::File,
    io::Write,
    net::Ipv4Addr,
    os::fd::AsFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use datapath::datapath::{AttachMode, Bpf};
use datapath::host::netns;
use datapath::testbed::frames::mac_str;
use datapath::testbed::knobs;
use datapath::testbed::names::{Claim, Family};
use datapath_common::{ipv4_key, reason, CtConfig, EndpointInfo, NetworkInfo, NET_F_MASQUERADE};

const GW_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x01];
const E1_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x0a];
const E2_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x0b];
const NAT_MIN: u16 = 20000;
const NAT_MAX: u16 = 29999;

fn skip_reason() -> Option<&'static str> {
    if datapath::datapath::object::bytes().is_none() {
        return Some("the binary has no eBPF object (build with `cargo xtask build`)");
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    if Command::new("python3").arg("-V").output().is_err() {
        return Some("no python3");
    }
    None
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces, the temp directory and the background processes; all
/// removed on drop.
struct Topo {
    claim: Claim,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Topo {
    fn ns(&self, what: &str) -> String {
        self.claim.name(what)
    }

    fn ip(&self, ns: &str, args: &str) {
        let ns = self.ns(ns);
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend(args.split_whitespace());
        run(&v);
    }

    /// Runs `sh -c cmd` in namespace `ns`; returns (success, stdout+stderr).
    fn sh(&self, ns: &str, cmd: &str) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.ns(ns), "sh", "-c", cmd]).output().expect("spawn");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn spawn(&mut self, ns: &str, cmd: &str, log: &str) {
        let log = File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "sh", "-c", &format!("exec {cmd}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        self.children.push(child);
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn new() -> Topo {
        let family = Family::new("dpg", std::env::temp_dir().join("datapath-program-tests"));
        family.sweep();
        let claim = family.claim().expect("claiming a name prefix");
        let dir = claim.dir.clone();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let t = Topo { claim, dir, children: Vec::new() };
        for n in ["n", "o", "e1", "e2"] {
            run(&["ip", "netns", "add", &t.ns(n)]);
            t.ip(n, "link set lo up");
            // No IPv6 chatter in the captures.
            let _ = t.sh(n, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
        }
        let (ok, out) = t.sh("n", "sysctl -qw net.ipv4.ip_forward=1");
        assert!(ok, "{out}");
        for (e, mac, addr) in [("e1", E1_MAC, "10.250.0.2/24"), ("e2", E2_MAC, "10.250.0.3/24")] {
            let host = t.ns(&format!("h{}", &e[1..]));
            t.ip("n", &format!("link add {host} type veth peer name eth0 netns {}", t.ns(e)));
            t.ip(e, &format!("link set eth0 address {}", mac_str(mac)));
            t.ip(e, &format!("addr add {addr} dev eth0"));
            t.ip(e, "link set eth0 up");
            t.ip(e, &format!("neigh add 10.250.0.1 lladdr {} dev eth0 nud permanent", mac_str(GW_MAC)));
            t.ip(e, "route add default via 10.250.0.1");
            t.ip("n", &format!("link set {host} up"));
        }
        let up = t.ns("up");
        t.ip("n", &format!("link add {up} type veth peer name eth0 netns {}", t.ns("o")));
        t.ip("n", &format!("addr add 203.0.113.1/24 dev {up}"));
        t.ip("n", &format!("link set {up} up"));
        t.ip("o", "addr add 203.0.113.2/24 dev eth0");
        t.ip("o", "addr add 198.51.100.1/32 dev lo");
        t.ip("o", "link set eth0 up");
        t.ip("n", "route add 198.51.100.0/24 via 203.0.113.2");
        // Checksums computed in software where they leave the uplink and the
        // outside, so a wrong (pseudo-header) update shows on the wire and
        // is caught by the receiving kernel.
        for (n, dev) in [("n", up.as_str()), ("o", "eth0")] {
            knobs::tx_checksum_off(&netns::named_path(&t.ns(n)), dev).unwrap_or_else(|e| panic!("{e}"));
        }
        t
    }

    fn script(&self, name: &str, body: &str) -> String {
        let p = self.dir.join(name);
        if !p.exists() {
            File::create(&p).unwrap().write_all(body.as_bytes()).unwrap();
        }
        p.display().to_string()
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["e1", "e2", "o", "n"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(n)]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Switches this thread into a namespace, back on drop.
struct InNetns {
    orig: File,
}

impl InNetns {
    fn enter(name: &str) -> InNetns {
        let orig = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        InNetns { orig }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        let _ = nix::sched::setns(self.orig.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
    }
}

const UDP_ECHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.1", 9999))  # replies from the address asked
while True:
    data, peer = s.recvfrom(2048)
    print(peer[0], peer[1], flush=True)
    s.sendto(data, peer)
"#;

const TCP_SERVER: &str = r#"
import socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(64)
        self.request.sendall(b"ok " + data)
        print(self.client_address[0], flush=True)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 1024
    daemon_threads = True
S(("0.0.0.0", 7777), H).serve_forever()
"#;

const CLIENTS: &str = r#"
import socket, sys, threading
n, conc = int(sys.argv[1]), int(sys.argv[2])
ok = [0]
lock = threading.Lock()
def work(k):
    for i in range(k, n, conc):
        try:
            c = socket.create_connection(("198.51.100.1", 7777), timeout=10)
            c.sendall(b"%d" % i)
            r = b""
            while True:
                d = c.recv(64)
                if not d:
                    break
                r += d
            c.close()
            if r == b"ok %d" % i:
                with lock:
                    ok[0] += 1
        except Exception as e:
            print("error", i, e, flush=True)
ts = [threading.Thread(target=work, args=(k,)) for k in range(conc)]
[t.start() for t in ts]
[t.join() for t in ts]
print("ok", ok[0])
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"hello-udp")
try:
    print("reply", s.recv(100).decode())
except ConnectionRefusedError:
    print("refused")
"#;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(bpf: &Bpf, code: u32) -> u64 {
    bpf.stats().unwrap().into_iter().find(|(c, _)| *c == code).unwrap().1.packets
}

#[test]
fn masquerade_between_namespaces() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut t = Topo::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _rt = rt.enter();
    let (tx, _rx) = tokio::sync::broadcast::channel(16);

    // Programs and maps, attached from inside the node namespace.
    let netns = InNetns::enter(&t.ns("n"));
    let mut bpf = Bpf::load(tx, AttachMode::Auto).expect("load");
    let idx = |n: &str| nix::net::if_::if_nametoindex(n).expect("ifindex");
    let (h1, h2, up) = (idx(t.ns("h1").as_str()), idx(t.ns("h2").as_str()), idx(t.ns("up").as_str()));
    bpf.attach(&t.ns("h1"), h1).unwrap();
    bpf.attach(&t.ns("h2"), h2).unwrap();
    bpf.attach_uplink(&t.ns("up"), up).unwrap();
    bpf.attach_uplink(&t.ns("up"), up).expect("attach_uplink is idempotent");
    drop(netns);

    let key = |a: [u8; 4]| ipv4_key(a);
    for (ifindex, ip, mac) in [(h1, [10, 250, 0, 2], E1_MAC), (h2, [10, 250, 0, 3], E2_MAC)] {
        bpf.upsert_endpoint(EndpointInfo { ifindex, ipv4: key(ip), mac, gw_mac: GW_MAC, network_id: 1, flags: 0 })
            .unwrap();
    }
    let net = NetworkInfo {
        subnet: key([10, 250, 0, 0]),
        mask: key([255, 255, 255, 0]),
        gateway: key([10, 250, 0, 1]),
        masq_addr: key([203, 0, 113, 1]),
        uplink_ifindex: up,
        flags: NET_F_MASQUERADE,
        nat_port_min: NAT_MIN,
        nat_port_max: NAT_MAX,
    };
    bpf.set_network(1, net, 24).unwrap();
    bpf.set_ct_config(CtConfig { udp: 3, icmp: 3, tcp_closing: 3, ..Default::default() }).unwrap();

    // Servers and a capture in the outside namespace.
    std::fs::write(t.dir.join("www/hello.txt"), "hello from outside\n").unwrap();
    let www = t.dir.join("www").display().to_string();
    t.spawn("o", "tcpdump -i eth0 -n -vv -l -U not arp", "tcpdump.txt");
    t.spawn("o", &format!("python3 -m http.server 8080 --directory {www}"), "http.txt");
    let udp = t.script("udp_echo.py", UDP_ECHO);
    t.spawn("o", &format!("python3 -u {udp}"), "udp.txt");
    let tcp = t.script("tcp_server.py", TCP_SERVER);
    t.spawn("o", &format!("python3 -u {tcp}"), "tcp.txt");
    wait_for("servers", || {
        t.sh("o", "ss -ltnu | grep -q :8080 && ss -ltn | grep -q :7777 && ss -lun | grep -q :9999").0
    });
    wait_for("tcpdump", || t.file("tcpdump.txt").contains("listening"));

    // ICMP echo, to the directly connected outside address and through a
    // gateway (the first packet there may need bpf_redirect_neigh).
    for dst in ["203.0.113.2", "198.51.100.1"] {
        let (ok, out) = t.sh("e1", &format!("ping -n -c 3 -i 0.2 -W 2 {dst}"));
        assert!(ok, "ping {dst} from e1:\n{out}");
    }
    let (ok, out) = t.sh("e2", "ping -n -c 2 -i 0.2 -W 2 198.51.100.1");
    assert!(ok, "ping from e2:\n{out}");

    // TCP: an HTTP fetch with content check.
    let fetch = "python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(\"http://198.51.100.1:8080/hello.txt\", timeout=5).read().decode())'";
    let (ok, out) = t.sh("e1", fetch);
    assert!(ok && out == "hello from outside\n", "HTTP from e1: {out}");

    // UDP echo.
    let udpc = t.script("udp_client.py", UDP_CLIENT);
    let (ok, out) = t.sh("e1", &format!("python3 {udpc} 198.51.100.1 9999"));
    assert!(
        ok && out.trim() == "reply hello-udp",
        "UDP echo from e1: {out}\ncapture:\n{}\nstats: {:?}",
        t.file("tcpdump.txt")
            .lines()
            .filter(|l| l.contains("UDP") || l.contains("udp") || l.contains(".9999"))
            .collect::<Vec<_>>()
            .join("\n"),
        bpf.stats()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(r, c)| (reason::name(*r), c.packets))
            .collect::<Vec<_>>()
    );

    // ICMP error translation: a closed UDP port answers with port
    // unreachable, which must reach the endpoint's socket.
    let before_rev = counter(&bpf, reason::FWD_REVNAT);
    let (ok, out) = t.sh("e1", &format!("python3 {udpc} 198.51.100.1 9"));
    assert!(ok && out.trim() == "refused", "UDP to a closed port: {out}");
    assert!(counter(&bpf, reason::FWD_REVNAT) > before_rev);

    // The node's own connection to the outside is not disturbed.
    let before_host = counter(&bpf, reason::PASS_UPLINK_HOST);
    let (ok, out) = t.sh("n", fetch);
    assert!(ok && out == "hello from outside\n", "HTTP from the node: {out}");
    assert!(counter(&bpf, reason::PASS_UPLINK_HOST) > before_host, "node traffic passed by dp_from_uplink");

    // Many short connections, all translated.
    let clients = t.script("clients.py", CLIENTS);
    let started = Instant::now();
    let (ok, out) = t.sh("e1", &format!("python3 {clients} 500 50"));
    let elapsed = started.elapsed();
    assert!(ok && out.trim().ends_with("ok 500"), "500 connections: {out}");
    eprintln!("500 TCP connections through the NAT in {elapsed:?}");
    let flows = bpf.conntrack_flows().unwrap();
    let tcp_flows: Vec<_> = flows.iter().filter(|f| f.protocol == "tcp" && f.original.dport == 7777).collect();
    assert!(tcp_flows.len() >= 500, "{} TCP flows tracked", tcp_flows.len());
    for f in &tcp_flows {
        let tr = f.translated.as_ref().expect("translated");
        assert_eq!(tr.src, Ipv4Addr::new(203, 0, 113, 1));
        assert!((NAT_MIN..=NAT_MAX).contains(&tr.sport), "port {} out of range", tr.sport);
        assert_eq!(f.ifindex, h1);
        assert!(f.packets >= 4, "{f:?}");
    }
    let closed = tcp_flows.iter().filter(|f| f.state == "closed").count();
    assert!(closed >= 490, "{closed} of {} flows closed", tcp_flows.len());
    let udp_flow = flows.iter().find(|f| f.protocol == "udp" && f.original.dport == 9999).expect("UDP flow tracked");
    assert_eq!(udp_flow.state, "established");
    assert!(flows.iter().any(|f| f.protocol == "icmp" && f.original.dst == Ipv4Addr::new(198, 51, 100, 1)));

    // What the outside saw: only the uplink address, valid checksums.
    let http_log = t.file("http.txt");
    for line in http_log.lines().filter(|l| l.contains("GET")) {
        assert!(line.starts_with("203.0.113.1 "), "HTTP server saw {line}");
    }
    for line in t.file("tcp.txt").lines().chain(t.file("udp.txt").lines()).filter(|l| !l.trim().is_empty()) {
        assert!(line.starts_with("203.0.113.1"), "server saw {line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let capture = t.file("tcpdump.txt");
    assert!(capture.contains("203.0.113.1."), "capture has the translated flows");
    assert!(!capture.contains("10.250.0."), "an endpoint address leaked:\n{capture}");
    let bad: Vec<&str> = capture.lines().filter(|l| l.contains("incorrect") || l.contains("bad cksum")).collect();
    assert!(bad.is_empty(), "bad checksums on the wire:\n{}", bad.join("\n"));
    assert!(capture.contains("(correct)"), "tcpdump verified checksums");

    for code in
        [reason::DROP_CT_TABLE_FULL, reason::DROP_NAT_NO_PORT, reason::DROP_REDIRECT_FAILED, reason::DROP_TRUNCATED]
    {
        assert_eq!(counter(&bpf, code), 0, "{}", reason::name(code));
    }
    eprintln!(
        "nat-translated {} nat-reverse-translated {} ct-created {} ct-invalid {}",
        counter(&bpf, reason::FWD_NAT),
        counter(&bpf, reason::FWD_REVNAT),
        counter(&bpf, reason::EV_CT_CREATED),
        counter(&bpf, reason::DROP_CT_INVALID)
    );

    // GC: with 3 s lifetimes for UDP, ICMP and closed TCP, everything but
    // nothing else expires.
    let g = bpf.conntrack_gc().unwrap();
    assert!(g.scanned >= 1000, "{g:?}");
    std::thread::sleep(Duration::from_secs(4));
    let g = bpf.conntrack_gc().unwrap();
    eprintln!("gc: {g:?}");
    assert!(g.removed >= 1000, "{g:?}");
    let left = bpf.conntrack_flows().unwrap();
    assert!(left.iter().all(|f| f.protocol == "tcp" && f.state != "closed"), "{left:?}");
    assert_eq!(g.capacity, datapath_common::CT_MAX_ENTRIES);

    // After a flush, a new flow works again.
    bpf.conntrack_flush().unwrap();
    assert!(bpf.conntrack_flows().unwrap().is_empty());
    let (ok, out) = t.sh("e2", fetch);
    assert!(ok && out == "hello from outside\n", "HTTP from e2 after flush: {out}");

    bpf.detach_uplink(up);
    drop(bpf);
    drop(t);
}
