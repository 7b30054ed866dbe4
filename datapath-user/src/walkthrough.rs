//! `datapath walkthrough`: the classic Docker bridge-networking walkthrough
//! ("Networking with standalone containers") on the eBPF datapath, step by
//! step, with the packet traces of each flow.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use datapath::api::{Client, EndpointCreate, EndpointView, FlowView, NetworkView, Request, StatsView};
use datapath::host::netns;
use datapath::testbed::agent::{Agent, AgentConfig};
use datapath::testbed::topology::{
    self, NodeSpec, NODE_UPLINK_IP, NODE_UPLINK_IP6, OUTSIDE_IP, OUTSIDE_IP6, UPLINK_DEV as UPLINK,
};

#[derive(Args)]
pub struct WalkthroughArgs {
    /// Clean up and exit after the scenario instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
    /// Where the walkthrough's agent keeps its socket and state.
    #[arg(long, default_value = "/run/datapath-walkthrough")]
    pub dir: PathBuf,
}

const EPS: [&str; 2] = ["alpine1", "alpine2"];
/// The user-defined network of the names step, and its endpoints.
const DNS_NET: &str = "walknet";
const DNS_SUBNET: &str = "10.77.0.0/24";
const DNS_EPS: [&str; 2] = ["web", "shell"];
/// The dual-stack network of the IPv6 step, and its endpoints.
const V6_NET: &str = "walk6";
const V6_SUBNET: &str = "10.78.0.0/24";
const V6_SUBNET_V6: &str = "fd00:78::/64";
const V6_EPS: [&str; 2] = ["six1", "six2"];
/// The walkthrough's "node": the agent runs in this namespace, so nothing it
/// does (bridges, forwarding, NAT) touches the host's own networking.
const NODE_NS: &str = "dpwalk-node";
/// A stand-in for the outside world, behind the node's uplink.
const OUTSIDE_NS: &str = "dpwalk-outside";

/// The node and outside namespaces joined by a veth (the test bed's
/// topology): node `uplink0` 203.0.113.2/24 with its default route via the
/// outside end 203.0.113.1/24 (TEST-NET-3, only ever inside these
/// namespaces). Those of a killed run are reused.
fn node_spec() -> NodeSpec {
    NodeSpec { reuse: true, ..NodeSpec::new(NODE_NS).with_outside(OUTSIDE_NS) }
}

/// The agent: in the node namespace, socket and state under `dir`, in a
/// process group of its own (Ctrl-C reaches the walkthrough only, which then
/// tears down in order and stops the agent), its output on our terminal.
fn agent_config(args: &WalkthroughArgs) -> Result<AgentConfig> {
    let exe = std::env::current_exe()?;
    let mut c = AgentConfig::new(exe, NODE_NS, &args.dir, "/sys/fs/bpf/datapath-walkthrough");
    c.socket = client_path(args);
    c.cleanup_on_exit = true;
    c.own_process_group = true;
    // The embedded DNS forwards to no one: the walkthrough's world is
    // its namespaces.
    std::fs::create_dir_all(&args.dir)?;
    let upstreams = args.dir.join("upstream-resolv.conf");
    std::fs::write(&upstreams, "# no upstream resolvers\n")?;
    c.upstream_resolv_conf = Some(upstreams);
    Ok(c)
}

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m== {n}. {text}\x1b[0m");
}

fn show(cmd: &str) {
    println!("\x1b[2m$ {cmd}\x1b[0m");
}

/// Runs a command inside an endpoint's namespace. The child is spawned from
/// a thread that entered the namespace, so it inherits it (no `ip netns exec`).
fn output_in(ns: &Path, argv: &[&str]) -> Result<std::process::Output> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = netns::run_in(ns, move || Command::new(&argv[0]).args(&argv[1..]).stdin(Stdio::null()).output())?;
    Ok(out?)
}

fn spawn_in(ns: &Path, argv: &[&str], log: &Path) -> Result<Child> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let log = std::fs::File::create(log)?;
    let child = netns::run_in(ns, move || {
        Command::new(&argv[0]).args(&argv[1..]).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()
    })?;
    Ok(child?)
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(args: WalkthroughArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the walkthrough creates namespaces and loads eBPF programs: run it as root (cargo xtask run does)");
    }
    std::fs::create_dir_all(&args.dir)?;
    let socket = client_path(&args);
    step(1, "Start the agent (eBPF programs loaded, default network `bridge` created)");
    println!("The agent runs in its own node namespace `{NODE_NS}`, whose uplink {UPLINK} ({NODE_UPLINK_IP}) leads to");
    println!("a stand-in for the outside world, namespace `{OUTSIDE_NS}` ({OUTSIDE_IP}): the host's own network is left alone.");
    let net = topology::build(&node_spec()).await.context("creating the walkthrough's node and outside namespaces")?;
    show(&format!("datapath agent --netns {NODE_NS} --socket {} --cleanup-on-exit", socket.display()));
    let agent = Agent::start_async(agent_config(&args)?).await;
    let client = Client::new(&socket);
    let result = match &agent {
        Ok(_) => scenario(&client, &args).await,
        Err(e) => Err(anyhow!("{e}; its log is above")),
    };
    if let Err(e) = &result {
        println!("\nwalkthrough failed: {e:#}");
    }
    step(13, "Clean up: remove the endpoints, stop the agent (it removes the default network)");
    for ep in EPS {
        if client.call(Request::EndpointRemove { name: ep.into() }).await.is_ok() {
            println!("removed endpoint {ep}");
        }
    }
    if let Ok(mut agent) = agent {
        match tokio::task::spawn_blocking(move || agent.stop()).await? {
            Ok(status) => println!("agent stopped ({status})"),
            Err(e) => println!("agent: {e}"),
        }
    }
    drop(net);
    println!("removed namespaces {NODE_NS} and {OUTSIDE_NS}");
    let _ = std::fs::remove_dir_all(&args.dir);
    result
}

async fn scenario(client: &Client, args: &WalkthroughArgs) -> Result<()> {
    // Leftovers of a walkthrough that was killed are restored by the agent
    // from its state: start from a clean slate.
    for ep in EPS.iter().chain(DNS_EPS.iter()).chain(V6_EPS.iter()) {
        let _ = client.call(Request::EndpointRemove { name: (*ep).into() }).await;
    }
    for net in [DNS_NET, V6_NET] {
        let _ = client.call(Request::NetworkRemove { name: net.into() }).await;
    }
    step(2, "The networks: the default bridge network is there");
    show_networks(client).await?;

    step(3, "Start two endpoints on the default network (packet tracing on)");
    let eps = create_endpoints(client).await?;
    let (a, b) = (&eps[0], &eps[1]);

    // Live traces, printed as they arrive.
    let trace_client = Client::new(client_path(args));
    let tracer = tokio::spawn(async move {
        let _ = trace_client
            .trace(None, |rec| {
                println!("   \x1b[36mtrace\x1b[0m {} {}", rec.endpoint, rec.line);
                true
            })
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    step(4, &format!("Inside {}: its interfaces", a.name));
    show(&format!("ip netns exec {} ip -br addr", a.name));
    print!("{}", String::from_utf8_lossy(&output_in(&a.netns_path, &["ip", "-br", "addr"])?.stdout));

    step(5, &format!("Ping {} from {} and back", b.name, a.name));
    ping(a, b.ip.into()).await?;
    ping(b, a.ip.into()).await?;
    ping(a, a.gateway.into()).await?;

    step(6, &format!("HTTP: python3 -m http.server 8000 in {}, GET a file from {}", b.name, a.name));
    let _server = local_http(args, a, b)?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    step(7, &format!("Masquerade: GET a page from the outside host {OUTSIDE_IP} through the node's uplink"));
    let (_outside, outside_log) = outside_http(args, a)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tracer.abort();
    check_outside_saw_the_uplink(&outside_log)?;
    show_conntrack(client, a).await?;

    step(
        8,
        &format!(
            "Published port: {}'s HTTP server (-p {PUBLISHED}:8000), GET from the outside at {NODE_UPLINK_IP}:{PUBLISHED} and from the node at 127.0.0.1:{PUBLISHED}",
            b.name
        ),
    );
    published_http(args, b).await?;

    step(9, "Counters by reason: unicast between endpoints was redirected in-kernel, outside traffic translated");
    show_stats(client).await?;

    step(
        10,
        &format!("Names: on a user-defined network ({DNS_NET}) endpoints find each other through the embedded DNS"),
    );
    ping_by_name(client).await?;

    step(
        11,
        &format!(
            "Dual stack: an --ipv6 network ({V6_NET}), ping6 between its endpoints and to the outside's {OUTSIDE_IP6}"
        ),
    );
    dual_stack(client).await?;

    step(12, "Your turn");
    your_turn(args, a, b);
    if args.no_wait {
        return Ok(());
    }
    println!("Press Ctrl-C to clean up and exit.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn show_networks(client: &Client) -> Result<()> {
    show("datapath network ls");
    let nets: Vec<NetworkView> = client.call_as(Request::NetworkList).await?;
    for n in &nets {
        println!(
            "{:<10} {:<18} gateway {:<12} bridge {:<10} datapath {}",
            n.name, n.subnet, n.gateway, n.bridge, n.datapath
        );
    }
    Ok(())
}

/// The host port the walkthrough publishes the second endpoint's HTTP
/// server (port 8000) on.
const PUBLISHED: u16 = 8080;

async fn create_endpoints(client: &Client) -> Result<Vec<EndpointView>> {
    let mut eps = Vec::new();
    for (i, ep) in EPS.iter().enumerate() {
        let publish = if i == 1 { datapath::ports::parse(&format!("{PUBLISHED}:8000"))? } else { Vec::new() };
        let p = if i == 1 { format!(" -p {PUBLISHED}:8000") } else { String::new() };
        show(&format!("datapath endpoint create {ep} --trace{p}"));
        let t = Instant::now();
        let req = EndpointCreate { name: (*ep).into(), trace: true, publish, ..Default::default() };
        let v: EndpointView = client.call_as(Request::EndpointCreate(req)).await?;
        println!(
            "{} {}/{} mac {} host veth {} (ifindex {}), netns {} -- {:.1} ms",
            v.name,
            v.ip,
            v.prefix_len,
            v.mac,
            v.host_ifname,
            v.host_ifindex,
            v.netns_path.display(),
            t.elapsed().as_secs_f64() * 1e3
        );
        eps.push(v);
    }
    Ok(eps)
}

/// An HTTP server in `b` (kept running while the guard lives), and a GET of
/// a 256 KiB file from `a` with its sha256 checked.
fn local_http(args: &WalkthroughArgs, a: &EndpointView, b: &EndpointView) -> Result<KillOnDrop> {
    let www = args.dir.join("www");
    std::fs::create_dir_all(&www)?;
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(www.join("hello.bin"), &body)?;
    let www_s = www.to_string_lossy().to_string();
    // No --bind: http.server would resolve the bound address with a reverse
    // DNS lookup (getfqdn), i.e. send packets towards the host's resolver.
    show(&format!("ip netns exec {} python3 -m http.server 8000 --directory {}", b.name, www_s));
    let server_log = args.dir.join("http-server.log");
    let server = KillOnDrop(spawn_in(
        &b.netns_path,
        &["python3", "-m", "http.server", "8000", "--directory", &www_s],
        &server_log,
    )?);
    let url = format!("http://{}:8000/hello.bin", b.ip);
    fetch(a, &url, &body, &server_log)?;
    Ok(server)
}

/// An HTTP server in the outside namespace, and a GET of a page from `a`
/// through the masquerade. Returns the server's guard and its log.
fn outside_http(args: &WalkthroughArgs, a: &EndpointView) -> Result<(KillOnDrop, PathBuf)> {
    let outside_www = args.dir.join("outside-www");
    std::fs::create_dir_all(&outside_www)?;
    let page: Vec<u8> = b"<html><body>Hello from the outside world</body></html>\n".repeat(64);
    std::fs::write(outside_www.join("index.html"), &page)?;
    let outside_log = args.dir.join("outside-server.log");
    let outside_dir = outside_www.to_string_lossy().to_string();
    show(&format!("ip netns exec {OUTSIDE_NS} python3 -m http.server 80 --directory {outside_dir}"));
    let outside = KillOnDrop(spawn_in(
        &netns::named_path(OUTSIDE_NS),
        &["python3", "-m", "http.server", "80", "--directory", &outside_dir],
        &outside_log,
    )?);
    fetch(a, &format!("http://{OUTSIDE_IP}/index.html"), &page, &outside_log)?;
    Ok((outside, outside_log))
}

/// The outside server must have seen only the node's uplink address.
fn check_outside_saw_the_uplink(outside_log: &Path) -> Result<()> {
    let seen: Vec<String> = std::fs::read_to_string(outside_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("GET /index.html"))
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_string())
        .collect();
    println!("the outside server saw the request coming from: {}", seen.join(", "));
    if seen.iter().any(|s| s != &NODE_UPLINK_IP.to_string()) || seen.is_empty() {
        bail!("the outside server should only see the uplink address {NODE_UPLINK_IP}, it saw {seen:?}");
    }
    Ok(())
}

async fn show_conntrack(client: &Client, a: &EndpointView) -> Result<()> {
    show(&format!("datapath conntrack ls --endpoint {}", a.name));
    let flows: Vec<FlowView> = client.call_as(Request::ConntrackList { endpoint: Some(a.name.clone()) }).await?;
    for f in &flows {
        let o = &f.flow.original;
        let t = f.flow.translated.as_ref().map(|t| format!("{}:{}", t.src, t.sport)).unwrap_or_else(|| "-".into());
        println!(
            "{} {}:{} > {}:{} translated to {} {} ({} packets, expires in {} s)",
            f.flow.protocol, o.src, o.sport, o.dst, o.dport, t, f.flow.state, f.flow.packets, f.flow.remaining_s
        );
    }
    Ok(())
}

async fn show_stats(client: &Client) -> Result<()> {
    show("datapath stats");
    let stats: StatsView = client.call_as(Request::Stats).await?;
    for c in stats.counters.iter().filter(|c| c.packets > 0) {
        let kind = if c.event {
            "event"
        } else if c.drop {
            "drop"
        } else {
            "fwd"
        };
        println!("{:<24} {:>5} {:>8} packets {:>10} bytes", c.reason, kind, c.packets, c.bytes);
    }
    Ok(())
}

fn your_turn(args: &WalkthroughArgs, a: &EndpointView, b: &EndpointView) {
    println!("The endpoints stay up. In another terminal, for example:");
    println!("  sudo ip netns exec {} ping {}", a.name, b.ip);
    println!("  sudo ip netns exec {} curl http://{OUTSIDE_IP}/   # through the eBPF masquerade", a.name);
    println!(
        "  sudo ip netns exec {OUTSIDE_NS} curl http://{NODE_UPLINK_IP}:{PUBLISHED}/   # {}'s published port",
        b.name
    );
    println!("  sudo datapath --socket {} conntrack ls", client_path(args).display());
    println!("  sudo datapath --socket {} trace", client_path(args).display());
    println!("  sudo bpftool prog show name dp_from_ep; sudo bpftool link show   # TCX links (bpftool < 7.3 prints them as `type 11`)");
}

/// The published port of `b` (its HTTP server of step 6, port 8000 inside):
/// fetched from the outside namespace through the node's uplink address,
/// and from the node itself at 127.0.0.1; the server sees the outside
/// client's own address.
async fn published_http(args: &WalkthroughArgs, b: &EndpointView) -> Result<()> {
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let server_log = args.dir.join("http-server.log");
    show(&format!("datapath port {}", b.name));
    for p in &b.ports {
        println!("{}/{} -> {}", p.container_port, p.proto, p.host());
    }
    let outside = datapath::host::netns::named_path(OUTSIDE_NS);
    fetch_in(OUTSIDE_NS, &outside, &format!("http://{NODE_UPLINK_IP}:{PUBLISHED}/hello.bin"), &body, &server_log)?;
    let node = datapath::host::netns::named_path(NODE_NS);
    fetch_in(NODE_NS, &node, &format!("http://127.0.0.1:{PUBLISHED}/hello.bin"), &body, &server_log)?;
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    if !log.lines().any(|l| l.starts_with(&OUTSIDE_IP.to_string())) {
        bail!(
            "the published server should have seen the outside client {OUTSIDE_IP}:
{log}"
        );
    }
    println!("the server saw the outside client's own address {OUTSIDE_IP} (no proxy in between)");
    Ok(())
}

/// GETs `url` from inside an endpoint (retrying while the server starts)
/// and checks the body.
fn fetch(from: &EndpointView, url: &str, body: &[u8], server_log: &Path) -> Result<()> {
    fetch_in(&from.name, &from.netns_path, url, body, server_log)
}

/// GETs `url` from the namespace `name` at `ns` and checks the body.
fn fetch_in(name: &str, ns: &Path, url: &str, body: &[u8], server_log: &Path) -> Result<()> {
    let script = format!(
        "import sys,time,urllib.request,hashlib\nfor i in range(100):\n    try:\n        d=urllib.request.urlopen('{url}',timeout=2).read();break\n    except OSError:\n        time.sleep(0.1)\nelse:\n    sys.exit('server did not answer')\nprint(len(d), hashlib.sha256(d).hexdigest())"
    );
    show(&format!("ip netns exec {name} python3 -c 'urllib.request.urlopen(\"{url}\")'"));
    let out = output_in(ns, &["python3", "-c", &script])?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want = format!("{} {}", body.len(), sha256_hex(body));
    println!("fetched: {got}");
    if !out.status.success() || got != want {
        let log = std::fs::read_to_string(server_log).unwrap_or_default();
        bail!(
            "HTTP transfer failed: expected `{want}`, got `{got}` {}\nserver log:\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("content verified (sha256 matches)");
    Ok(())
}

fn client_path(args: &WalkthroughArgs) -> PathBuf {
    args.dir.join("datapath.sock")
}

async fn ping(from: &EndpointView, to: IpAddr) -> Result<()> {
    let to_s = to.to_string();
    show(&format!("ip netns exec {} ping -n -c 2 -i 0.2 {}", from.name, to_s));
    let ns = from.netns_path.clone();
    let out =
        tokio::task::spawn_blocking(move || output_in(&ns, &["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", &to_s]))
            .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.contains("bytes from") || l.contains("packet loss")) {
        println!("{line}");
    }
    if !out.status.success() {
        bail!("ping from {} to {to} failed", from.name);
    }
    Ok(())
}

/// A user-defined network, `web` (alias `www`) and `shell` on it, and a
/// ping by name from `shell` (its resolver asks 127.0.0.11 in its
/// namespace, answered by the agent).
async fn ping_by_name(client: &Client) -> Result<()> {
    show(&format!("datapath network create {DNS_NET} --subnet {DNS_SUBNET}"));
    let req = datapath::api::NetworkCreate { name: DNS_NET.into(), subnet: DNS_SUBNET.into(), ..Default::default() };
    client.call(Request::NetworkCreate(req)).await?;
    for (ep, aliases) in DNS_EPS.iter().zip([vec!["www".to_string()], vec![]]) {
        let alias = aliases.iter().map(|a| format!(" --alias {a}")).collect::<String>();
        show(&format!("datapath endpoint create {ep} --network {DNS_NET}{alias}"));
        let req = EndpointCreate { name: (*ep).into(), network: Some(DNS_NET.into()), aliases, ..Default::default() };
        let v: EndpointView = client.call_as(Request::EndpointCreate(req)).await?;
        println!("{} {}", v.name, v.ip);
    }
    let (shell, web) = (DNS_EPS[1], DNS_EPS[0]);
    show(&format!("cat /etc/netns/{shell}/resolv.conf"));
    print!("{}", std::fs::read_to_string(format!("/etc/netns/{shell}/resolv.conf")).unwrap_or_default());
    for argv in [vec!["getent", "hosts", "www"], vec!["ping", "-c", "2", "-i", "0.2", "-W", "1", web]] {
        show(&format!("ip netns exec {shell} {}", argv.join(" ")));
        let mut full = vec!["netns", "exec", shell];
        full.extend(argv.iter().copied());
        let out = tokio::task::spawn_blocking(move || Command::new("ip").args(&full).output()).await??;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| !l.starts_with("---") && !l.is_empty() && !l.starts_with("rtt")) {
            println!("{line}");
        }
        if !out.status.success() {
            bail!("{} from {shell} failed: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// A dual-stack network and two endpoints on it: each has an IPv6 address
/// besides its IPv4 one; ping6 between them and to the outside over the
/// node's IPv6 uplink ({NODE_UPLINK_IP6}, masqueraded); `network inspect`
/// shows both families.
async fn dual_stack(client: &Client) -> Result<()> {
    println!(
        "The node's uplink gets {NODE_UPLINK_IP6}, the outside {OUTSIDE_IP6} (IPv6 default route via the outside)."
    );
    topology::uplink_ipv6(NODE_NS, OUTSIDE_NS, UPLINK).await.context("IPv6 on the walkthrough's uplink")?;
    show(&format!("datapath network create {V6_NET} --subnet {V6_SUBNET} --ipv6 --subnet-v6 {V6_SUBNET_V6}"));
    let req = datapath::api::NetworkCreate {
        name: V6_NET.into(),
        subnet: V6_SUBNET.into(),
        ipv6: true,
        subnet_v6: Some(V6_SUBNET_V6.into()),
        ..Default::default()
    };
    client.call(Request::NetworkCreate(req)).await?;
    let mut eps = Vec::new();
    for ep in V6_EPS {
        show(&format!("datapath endpoint create {ep} --network {V6_NET}"));
        let req = EndpointCreate { name: ep.into(), network: Some(V6_NET.into()), ..Default::default() };
        let v: EndpointView = client.call_as(Request::EndpointCreate(req)).await?;
        let ip6 = v.ip6.ok_or_else(|| anyhow!("endpoint {ep} of the dual-stack network has no IPv6 address"))?;
        println!("{} {} {ip6}", v.name, v.ip);
        eps.push((v, ip6));
    }
    let ((a, a6), (b, b6)) = (&eps[0], &eps[1]);
    ping(a, (*b6).into()).await?;
    ping(b, (*a6).into()).await?;
    ping(a, OUTSIDE_IP6.into()).await?;
    show(&format!("datapath network inspect {V6_NET}"));
    let n: NetworkView = client.call_as(Request::NetworkInspect { name: V6_NET.into() }).await?;
    println!("{}", serde_json::to_string_pretty(&n)?);
    if !n.enable_ipv6 || n.endpoints.iter().any(|e| e.ip6.is_none()) {
        bail!("network inspect {V6_NET} should show both families: {n:?}");
    }
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}
