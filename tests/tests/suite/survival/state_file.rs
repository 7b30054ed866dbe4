//! Test 3: an unreadable state file (truncated, binary or text garbage) makes the agent
//! refuse to start, with an error naming the file, before it touches
//! anything in the kernel: the datapath left running by the previous agent
//! keeps forwarding (a ping every 5 ms to B and to the outside, zero lost),
//! its pins and links stay, and the file is left as it was for a human to
//! look at. With the good file back, an agent starts and finds everything.

use std::time::Duration;

use datapath::state::STATE_FILE;
use datapath::testbed::agent::AgentError;
use datapath_tests::assert_ping;
use datapath_tests::node::{AgentOpts, Datapath, Node, OUTSIDE_IP};
use datapath_tests::traffic::Pinger;

use super::{pins_under, start_count, start_report};

/// Tries to start an agent on the corrupt state file `bytes`; asserts the
/// refusal and that nothing of the running datapath changed.
fn refused_start(node: &mut Node, what: &str, bytes: &[u8]) {
    let path = node.state_dir.join(STATE_FILE);
    std::fs::write(&path, bytes).unwrap();
    let (pins, links) = (pins_under(&node.bpffs), node.node_links());
    match node.try_start_agent() {
        Ok(_) => node.fail(format!("the agent started on a {what} state file")),
        Err(AgentError::Exited { status, log }) => {
            println!("{what} state file: the agent exited with {status}: {}", log.trim());
            if status.success() || !log.contains(&path.display().to_string()) {
                node.fail(format!(
                    "{what} state file: exit {status} (want non-zero) and a message naming {}:\n{log}",
                    path.display()
                ));
            }
        }
        Err(e) => node.fail(format!("{what} state file: the agent neither served nor exited: {e}")),
    }
    let (pins1, links1) = (pins_under(&node.bpffs), node.node_links());
    if pins1 != pins || pins.is_empty() || links1 != links {
        node.fail(format!(
            "{what} state file: the refused start changed the node:\npins {pins:?} -> {pins1:?}\nlinks {links:?} -> {links1:?}"
        ));
    }
    if std::fs::read(&path).unwrap() != bytes {
        node.fail(format!("{what} state file: the refused start rewrote {}", path.display()));
    }
}

#[test]
fn unreadable_state_file_refuses_start_and_leaves_datapath_running() {
    datapath_tests::kernel_test!();
    let mut node = Node::with(AgentOpts::with_uplink(Datapath::Ebpf));
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    assert_ping(&a.name, &b.ip, 1);
    assert_ping(&a.name, OUTSIDE_IP, 1);
    let eps = node.endpoints();
    let pinger = Pinger::start(&node, &a.name, &[&b.ip, OUTSIDE_IP], Duration::from_millis(5));
    let status = node.stop_agent();
    assert!(status.success(), "agent exited with {status} on SIGTERM");
    let path = node.state_dir.join(STATE_FILE);
    let good = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(good.len() > 20, "state file of {} bytes", good.len());

    refused_start(&mut node, "truncated", &good[..good.len() / 2]);
    refused_start(&mut node, "binary garbage", b"\x00\xff{{ this is not the datapath's state ]]\n");
    refused_start(&mut node, "text garbage", b"networks: none, endpoints: [[[\n");
    std::thread::sleep(Duration::from_millis(500));

    std::fs::write(&path, &good).unwrap();
    let answered = node.start_agent();
    let pings = pinger.finish();
    for (dst, r) in &pings {
        println!("while the agent refused to start: pings to {dst} lost {} of {}", r.lost, r.sent);
        if r.lost > 0 || r.sent < 100 {
            node.fail(format!("pings to {dst}: {} of {} lost (first seqs {:?})", r.lost, r.sent, r.lost_seqs));
        }
    }
    assert_eq!(node.endpoints(), eps, "endpoints after the refused starts and a good one");
    let start = start_report(&mut node);
    println!("good state file back: agent answered {} ms after its start; start report {start}", answered.as_millis());
    if start_count(&start, "attachments_kept") == 0 {
        node.fail(format!("the agent after the refused starts kept no attachment: {start}"));
    }
    assert_ping(&a.name, &b.ip, 2);
    assert_ping(&a.name, OUTSIDE_IP, 2);
}
