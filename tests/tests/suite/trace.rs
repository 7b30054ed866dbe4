//! Test 11: `datapath trace --endpoint A` streams A's packets, only A's.
//! Traces come from the eBPF programs: on the kernel datapath (no program on
//! the veths, a documented difference) the stream stays empty.

use std::time::Duration;

use datapath_tests::node::{Datapath, Node};
use datapath_tests::{assert_ping, both_datapaths};

both_datapaths! {
fn trace_streams_lines_for_the_traced_endpoint_only(dp) {
    let mut node = Node::on(dp);
    let a = node.create_endpoint(&node.ep("a"), &[]);
    let b = node.create_endpoint(&node.ep("b"), &[]);
    let c = node.create_endpoint(&node.ep("c"), &[]);
    assert_eq!(a.json["trace"], false);
    // Warm up ARP so the traced window holds redirected IPv4.
    assert_ping(&a.name, &b.ip, 1);
    assert_ping(&c.name, &b.ip, 1);

    let mut trace = node.cli_bg(&["trace", "--endpoint", &a.name]);
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(st) = trace.try_status() {
        let (lines, err) = trace.stop();
        node.fail(format!(
            "`datapath trace --endpoint {}` exited early ({st}): stdout {lines:?} stderr {err}",
            a.name
        ));
    }
    assert_ping(&a.name, &b.ip, 5);
    assert_ping(&c.name, &b.ip, 3);
    std::thread::sleep(Duration::from_millis(1000));
    let (lines, err) = trace.stop();

    let pa = format!("{} ", a.name);
    let pc = format!("{} ", c.name);
    let shown = || {
        format!(
            "trace stdout ({} lines):\n{}\nstderr: {err}",
            lines.len(),
            lines.join("\n")
        )
    };
    if dp == Datapath::Kernel {
        assert!(
            lines.is_empty(),
            "kernel datapath (no eBPF program, so no traces): {}",
            shown()
        );
        let d = node.create_endpoint(&node.ep("d"), &["--trace"]);
        assert_eq!(d.json["trace"], true, "endpoint create --trace: {}", d.json);
        return;
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&pa) && l.contains("redirect-peer") && l.contains(&b.ip)),
        "no trace line starting with {pa:?} containing redirect-peer and {}; {}",
        b.ip,
        shown()
    );
    assert!(
        !lines.iter().any(|l| l.starts_with(&pc)),
        "trace --endpoint {} printed lines of untraced endpoint {}; {}",
        a.name,
        c.name,
        shown()
    );

    // --trace at create is reflected in inspect.
    let d = node.create_endpoint(&node.ep("d"), &["--trace"]);
    assert_eq!(d.json["trace"], true, "endpoint create --trace: {}", d.json);
}
}
