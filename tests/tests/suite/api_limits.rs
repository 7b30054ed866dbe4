//! Hardening against hostile API clients: request size, unknown fields,
//! connection count, idle clients, and pids reported as a command's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use datapath_tests::kernel_test;
use datapath_tests::node::Node;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `data` and returns what the agent answered (until it closes, at most 15 s).
fn exchange(node: &Node, data: &[u8]) -> String {
    let mut s = UnixStream::connect(&node.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The agent may answer and close before everything is written.
    let _ = s.write_all(data);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A request line larger than 1 MiB gets a clear error at once and the
/// agent does not buffer it (four unterminated 8 MiB lines used to grow it
/// by their size); an unknown field is an error, not ignored.
#[test]
fn oversized_requests_and_unknown_fields_are_refused() {
    kernel_test!();
    let mut node = Node::new();
    let pid = node.agent_pid().expect("agent pid");
    let before = rss_kib(pid);
    for _ in 0..4 {
        let answer = exchange(&node, &vec![b'x'; 8 << 20]);
        assert!(answer.contains("larger than"), "{answer}");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    println!("agent RSS before {before} KiB, grew by {grown} KiB over four 8 MiB requests");
    assert!(grown < 8 << 10, "the agent grew by {grown} KiB");
    let answer = exchange(
        &node,
        b"{\"api_version\":1,\"op\":\"network_create\",\"name\":\"n\",\"subnet\":\"10.1.0.0/24\",\"subnte\":1}\n",
    );
    assert!(answer.contains("unknown field") && answer.contains("subnte"), "{answer}");
    assert!(node.networks().iter().all(|n| n["name"] != "n"), "the request must not have been applied");
    assert!(node.agent_alive());
}

/// At most 256 connections at once: more are refused with an error, and
/// idle clients are dropped after 10 s (2000 idle connections used to hold
/// 2000 descriptors forever). The agent keeps answering throughout.
#[test]
fn connections_are_bounded_and_idle_ones_dropped() {
    kernel_test!();
    let mut node = Node::new();
    let idle: Vec<UnixStream> = (0..300).filter_map(|_| UnixStream::connect(&node.socket).ok()).collect();
    assert_eq!(idle.len(), 300, "connect");
    std::thread::sleep(Duration::from_millis(500));
    let refused = idle
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 256];
            matches!((&**s).read(&mut buf), Ok(n) if n > 0 && String::from_utf8_lossy(&buf[..n]).contains("too many"))
        })
        .count();
    println!("{refused} of 300 idle connections refused at once");
    assert!(refused >= 300 - 256, "only {refused} refused");
    let started = Instant::now();
    // Idle ones are closed by the agent within its 10 s request timeout.
    let closed = idle.into_iter().all(|mut s| {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).is_ok()
    });
    println!("every idle connection closed after {:.1} s", started.elapsed().as_secs_f64());
    assert!(closed, "an idle connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(14));
    node.ok(&["network", "ls"]);
}

/// A client cannot make the agent signal a process it did not start:
/// reporting an unrelated pid as a command's process is refused, and a
/// `stop` leaves that process alone (it used to SIGTERM it).
#[test]
fn a_reported_pid_must_be_the_commands_own() {
    kernel_test!();
    let mut node = Node::new();
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().expect("sleep");
    let name = node.ep("c");
    let create = format!(
        "{{\"api_version\":1,\"op\":\"container_create\",\"name\":\"{name}\",\"argv\":[\"sleep\",\"1\"],\"detach\":false}}\n"
    );
    let answer = exchange(&node, create.as_bytes());
    assert!(answer.contains("\"ok\":true"), "{answer}");
    let started =
        format!("{{\"api_version\":1,\"op\":\"container_started\",\"name\":\"{name}\",\"pid\":{}}}\n", bystander.id());
    let answer = exchange(&node, started.as_bytes());
    assert!(answer.contains("\"ok\":false") && answer.contains("not a process of container"), "{answer}");
    let stop = format!("{{\"api_version\":1,\"op\":\"container_stop\",\"name\":\"{name}\"}}\n");
    let answer = exchange(&node, stop.as_bytes());
    assert!(answer.contains("\"ok\":true"), "{answer}");
    std::thread::sleep(Duration::from_millis(200));
    let alive = bystander.try_wait().expect("try_wait").is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(alive, "the agent signalled a process it did not start");
    assert!(node.agent_alive());
}

fn default_route(netns: &str) -> String {
    let out =
        datapath_tests::proc::run(std::process::Command::new("ip").args(["-n", netns, "route", "show", "default"]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Attaching to an existing namespace (the CNI case) never changes routes
/// the datapath did not make: a default route already there stays, also
/// after the endpoint is removed (it used to be replaced, then deleted), and
/// the node's own namespace is refused (pointed at it, the endpoint cut
/// every endpoint off the outside).
#[test]
fn attaching_to_an_existing_namespace_keeps_its_routes() {
    kernel_test!();
    let mut node = Node::new();
    let ns = node.ep("c");
    let ip = |args: &[&str]| {
        let out = datapath_tests::proc::run(std::process::Command::new("ip").args(args));
        assert!(out.status.success(), "ip {args:?}: {}", datapath_tests::proc::show(&out));
    };
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ip(&["-n", &ns, "addr", "add", "192.0.2.2/24", "dev", "v0"]);
    ip(&["-n", &ns, "link", "set", "v0", "up"]);
    ip(&["-n", &ns, "link", "set", "v1", "up"]);
    ip(&["-n", &ns, "route", "add", "default", "via", "192.0.2.1"]);
    let before = default_route(&ns);
    let req = format!(
        "{{\"api_version\":1,\"op\":\"endpoint_create\",\"name\":\"{ns}\",\"netns_path\":\"/run/netns/{ns}\",\"ifname\":\"eth1\"}}\n"
    );
    let answer = exchange(&node, req.as_bytes());
    assert!(answer.contains("\"ok\":true"), "{answer}");
    assert_eq!(default_route(&ns), before, "the namespace's default route was changed");
    node.ok(&["endpoint", "rm", &ns]);
    assert_eq!(default_route(&ns), before, "removing the endpoint changed the namespace's default route");
    let node_route = default_route(&node.name);
    let own = format!("/proc/{}/ns/net", node.agent_pid().expect("agent pid"));
    let req = format!(
        "{{\"api_version\":1,\"op\":\"endpoint_create\",\"name\":\"{}\",\"netns_path\":\"{own}\",\"ifname\":\"eth9\"}}\n",
        node.ep("n")
    );
    let answer = exchange(&node, req.as_bytes());
    assert!(answer.contains("\"ok\":false") && answer.contains("node's own"), "{answer}");
    assert_eq!(default_route(&node.name), node_route);
}

/// What an unprivileged client saw while it tried to connect to the socket.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct ConnectTries {
    attempts: u64,
    connected: u64,
    /// The socket existed and refused the user (EACCES): the client reached
    /// it, so it was looking at the right moment.
    denied: u64,
    absent: u64,
    refused: u64,
    other: u64,
}

/// Forks a child that drops to nobody (uid/gid 65534, no groups) and loops
/// `connect()` on `path` until a byte arrives on its stop pipe; returns its
/// pid, the stop pipe's write end and the result pipe's read end (which
/// first carries one byte once the child loops, then a [`ConnectTries`]).
fn unprivileged_connector(path: &std::path::Path) -> (nix::unistd::Pid, std::fs::File, std::fs::File) {
    use nix::libc;
    use std::os::fd::IntoRawFd;
    // Everything the child needs is made before the fork: after it, the
    // child of a multi-threaded process may only make plain system calls.
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let (stop_r, stop_w) = nix::unistd::pipe().expect("pipe");
    let (res_r, res_w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only makes system calls (no allocation, no locks)
    // and ends with _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => unsafe {
            let (stop, res) = (stop_r.into_raw_fd(), res_w.into_raw_fd());
            libc::fcntl(stop, libc::F_SETFL, libc::O_NONBLOCK);
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(2);
            }
            let mut t = ConnectTries::default();
            let _ = libc::write(res, b"r".as_ptr().cast(), 1);
            let mut byte = 0u8;
            loop {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    libc::_exit(3);
                }
                let rc = libc::connect(
                    fd,
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                );
                t.attempts += 1;
                if rc == 0 {
                    t.connected += 1;
                } else {
                    match *libc::__errno_location() {
                        libc::EACCES => t.denied += 1,
                        libc::ENOENT => t.absent += 1,
                        libc::ECONNREFUSED => t.refused += 1,
                        _ => t.other += 1,
                    }
                }
                libc::close(fd);
                if t.attempts % 64 == 0 && libc::read(stop, (&mut byte as *mut u8).cast(), 1) == 1 {
                    break;
                }
            }
            let _ = libc::write(res, (&t as *const ConnectTries).cast(), std::mem::size_of::<ConnectTries>());
            libc::_exit(0);
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(stop_r);
            drop(res_w);
            (child, std::fs::File::from(stop_w), std::fs::File::from(res_r))
        }
    }
}

/// The API socket is never connectable by another user, at no moment: an
/// agent started under a permissive umask (0) while a process running as
/// nobody loops `connect()` on the socket's path (in a directory anyone may
/// enter) never lets it in, and the socket has mode 0600 the first time it
/// is seen. (The socket used to be bound under the caller's umask and
/// chmodded afterwards: an unprivileged user connected in that window, and
/// created a network, 5 times out of 5.) The client must have reached the
/// existing socket and been refused by its permissions (EACCES), so the
/// test watched the right moment.
#[test]
fn the_api_socket_is_never_open_to_other_users() {
    kernel_test!();
    use std::os::unix::fs::PermissionsExt;
    let node = Node::build(datapath_tests::AgentOpts { no_default_network: true, ..Default::default() });
    // Anyone may enter the directories up to the socket: only the socket's
    // own mode keeps other users out.
    std::fs::set_permissions(&node.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config =
        datapath::testbed::agent::AgentConfig::new(datapath_tests::env::bin(), &node.name, &node.dir, &node.bpffs);
    std::fs::create_dir_all(&config.state_dir).expect("state dir");
    std::fs::create_dir_all(&config.bpffs).expect("bpffs dir");
    let socket = config.socket.clone();
    let mut ancestors = socket.ancestors().skip(1);
    assert!(
        ancestors.all(|d| std::fs::metadata(d).map(|m| m.permissions().mode() & 0o001 != 0).unwrap_or(false)),
        "a directory above {} is closed to other users: the test could not fail",
        socket.display()
    );

    let mut tries = Vec::new();
    let mut children = Vec::new();
    for _ in 0..2 {
        let (pid, stop, mut res) = unprivileged_connector(&socket);
        let mut r = [0u8; 1];
        res.read_exact(&mut r).expect("the unprivileged child did not start (setuid failed?)");
        children.push((pid, stop, res));
    }
    // Several starts: the window the old code left was a few microseconds
    // wide, hit in about two starts out of three.
    let mut modes = Vec::new();
    for _ in 0..ROUNDS {
        modes.push(start_under_umask_0(&config));
    }
    for (pid, mut stop, mut res) in children {
        stop.write_all(b"s").expect("stop the child");
        let mut buf = [0u8; std::mem::size_of::<ConnectTries>()];
        res.read_exact(&mut buf).expect("the child's counts");
        // SAFETY: ConnectTries is plain u64s, written by the child as bytes.
        tries.push(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<ConnectTries>()) });
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    let shown: Vec<String> = modes.iter().map(|m| m.map(|m| format!("{m:o}")).unwrap_or("-".into())).collect();
    println!("{ROUNDS} agent starts; unprivileged connects: {tries:?}; socket mode when first seen: {shown:?}");
    let connected: u64 = tries.iter().map(|t| t.connected).sum();
    let denied: u64 = tries.iter().map(|t| t.denied).sum();
    assert_eq!(connected, 0, "an unprivileged user connected to the API socket: {tries:?}");
    assert!(denied > 0, "the unprivileged client never reached the socket (the test saw nothing): {tries:?}");
    assert!(modes.iter().all(|m| *m == Some(0o600)), "the socket's mode when it appeared: {shown:?}");
}

/// Agent starts in [`the_api_socket_is_never_open_to_other_users`].
const ROUNDS: usize = 5;

/// Starts the agent of `config` under umask 0, waits until it serves (and
/// a little longer), stops it; returns the socket's mode when it was first
/// seen (watched from this, root, side).
fn start_under_umask_0(config: &datapath::testbed::agent::AgentConfig) -> Option<u32> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let socket = config.socket.clone();
    assert!(!socket.exists(), "{} left over", socket.display());
    let watch = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(m) = std::fs::symlink_metadata(&socket) {
                    if m.file_type().is_socket() {
                        return Some(m.permissions().mode() & 0o7777);
                    }
                }
                std::hint::spin_loop();
            }
            None
        })
    };
    let mut agent = std::process::Command::new(&config.bin);
    agent.args(config.args()).stdin(std::process::Stdio::null());
    agent.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        agent.pre_exec(|| {
            nix::libc::umask(0);
            Ok(())
        });
    }
    let mut agent = agent.spawn().expect("start the agent");
    let client = datapath::testbed::client::SyncClient::new(&socket).expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.ping().is_err() {
        assert!(agent.try_wait().expect("try_wait").is_none(), "the agent exited");
        assert!(Instant::now() < deadline, "the agent did not answer within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait();
    watch.join().expect("watcher")
}
