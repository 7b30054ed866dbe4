//! Checks of the embedded eBPF object against the running kernel.
//!
//! * `programs_pass_the_verifier`: every TC program of the object loads (the
//!   kernel verifier accepts it).
//! * `dp_from_ep_decisions`: runs `dp_from_ep` on hand-made frames with
//!   `BPF_PROG_TEST_RUN` (no interfaces or namespaces involved: the kernel runs
//!   the program on a private copy of the frame with `lo` as the device) and
//!   checks the verdict, the reason counter, the rewritten frame and the trace
//!   line of each case.
//!
//! Both need root and a binary built with the eBPF object (`cargo xtask
//! build`); without either they print why and pass.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{Program, SchedClassifier},
    Ebpf, EbpfLoader,
};
use datapath::testbed::frames::{self, eth, l4_sum, Ipv4, Tcp};
use datapath::testbed::names::{Claim, Family};
use datapath_common::{
    ipv4_key, reason, Counter, CtEntry, CtKey, EndpointInfo, NetworkInfo, EP_F_TRACE, NET_F_INTERNAL, NET_F_NO_ICC,
    NET_F_PRESENT,
};

fn skip_reason() -> Option<&'static str> {
    if datapath::datapath::object::bytes().is_none() {
        return Some("the binary has no eBPF object (build with `cargo xtask build`)");
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    None
}

fn load() -> Ebpf {
    let bytes = datapath::datapath::object::bytes().expect("checked by skip_reason");
    EbpfLoader::new().load(bytes).expect("parsing the eBPF object and creating its maps")
}

#[test]
fn programs_pass_the_verifier() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut ebpf = load();
    let mut loaded = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        if let Program::SchedClassifier(p) = prog {
            if let Err(e) = p.load() {
                panic!("the verifier rejected {name}: {e}");
            }
            let info = p.info().expect("program info");
            eprintln!(
                "{name}: verified ({} instructions processed, {} translated bytes)",
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0)
            );
            loaded.push(name.to_owned());
        }
    }
    assert!(
        loaded.iter().any(|n| n == datapath_common::PROG_FROM_ENDPOINT),
        "no {} program in the object (found {loaded:?})",
        datapath_common::PROG_FROM_ENDPOINT
    );
}

// ---------------------------------------------------------------------------
// BPF_PROG_TEST_RUN

/// The `test` member of `union bpf_attr` (uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: nix::libc::c_long = 10;

/// Runs the program once on `frame`; returns (return code, frame after the run).
fn test_run(prog: &SchedClassifier, frame: &[u8]) -> (i32, Vec<u8>) {
    let fd = prog.fd().expect("program is loaded");
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: `attr` points at live buffers of the sizes given.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN failed: {}", std::io::Error::last_os_error());
    out.truncate(attr.data_size_out as usize);
    (attr.retval as i32, out)
}

// ---------------------------------------------------------------------------
// frames

const GW_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x01];
const A_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x0b];
const BCAST: [u8; 6] = [0xff; 6];
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 3);
const C_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 1, 3);
/// An address of A's and B's network that no endpoint has.
const NOBODY_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 99);
/// BPF_PROG_TEST_RUN runs TC programs with `lo` as the device.
const A_IFINDEX: u32 = 1;
/// Never looked up by the kernel: `bpf_redirect_peer` only records it.
const B_IFINDEX: u32 = 4242;
const C_IFINDEX: u32 = 4243;

/// An IPv4 packet (id 0x1234, DF, 20-byte header) carrying a UDP datagram
/// with 12 zero bytes of payload and no UDP checksum (0).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut udp = frames::udp(src, dst, sport, dport, &[0u8; 12]);
    udp[6..8].copy_from_slice(&[0, 0]);
    Ipv4 { ttl, id: 0x1234, frag: frames::IP_DF, ..Ipv4::new(src, dst, frames::IPPROTO_UDP) }.packet(&udp)
}

/// An ARP body with a zero target MAC.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    frames::arp(op, sha, spa, [0; 6], tpa)
}

fn endpoint(ifindex: u32, ip: Ipv4Addr, mac: [u8; 6], network_id: u32, flags: u32) -> EndpointInfo {
    EndpointInfo { ifindex, ipv4: ipv4_key(ip.octets()), mac, gw_mac: GW_MAC, network_id, flags }
}

/// Collects the aya-log lines of the program.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

struct Harness {
    ebpf: Ebpf,
    logger: aya_log::EbpfLogger<Lines>,
    lines: Lines,
}

impl Harness {
    fn prog_named(&self, name: &str) -> &SchedClassifier {
        self.ebpf.program(name).expect("program present").try_into().expect("a classifier")
    }

    fn counter(&self, code: u32) -> Counter {
        let stats: PerCpuArray<_, Counter> = PerCpuArray::try_from(self.ebpf.map("STATS").unwrap()).unwrap();
        let per_cpu = stats.get(&code, 0).unwrap();
        per_cpu
            .iter()
            .fold(Counter::default(), |acc, c| Counter { packets: acc.packets + c.packets, bytes: acc.bytes + c.bytes })
    }

    fn set_network(&mut self, id: u32, subnet: Ipv4Addr, prefix_len: u32, flags: u32) {
        let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - prefix_len) };
        let mask = ipv4_key(mask.to_be_bytes());
        let subnet = ipv4_key(subnet.octets()) & mask;
        let gw = ipv4_key((u32::from_be_bytes(subnet.to_ne_bytes()) + 1).to_be_bytes());
        let info = NetworkInfo { subnet, mask, gateway: gw, flags: flags | NET_F_PRESENT, ..Default::default() };
        self.update_network(id, |n| *n = info);
        let mut subnets: aya::maps::LpmTrie<_, u32, u32> =
            aya::maps::LpmTrie::try_from(self.ebpf.map_mut(datapath_common::MAP_SUBNETS).unwrap()).unwrap();
        subnets.insert(&aya::maps::lpm_trie::Key::new(prefix_len, subnet), id, 0).unwrap();
    }

    /// Changes the `NETWORKS` slot of network `id` in place.
    fn update_network(&mut self, id: u32, f: impl FnOnce(&mut NetworkInfo)) {
        let mut nets: Array<_, NetworkInfo> =
            Array::try_from(self.ebpf.map_mut(datapath_common::MAP_NETWORKS).unwrap()).unwrap();
        let mut n = nets.get(&id, 0).unwrap();
        f(&mut n);
        nets.set(id, n, 0).unwrap();
    }

    fn ct(&self) -> Vec<(CtKey, CtEntry)> {
        let ct: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map(datapath_common::MAP_CT).unwrap()).unwrap();
        ct.iter().map(|r| r.unwrap()).collect()
    }

    fn set_endpoint(&mut self, ep: EndpointInfo) {
        let mut by_if: HashMap<_, u32, EndpointInfo> =
            HashMap::try_from(self.ebpf.map_mut(datapath_common::MAP_ENDPOINTS).unwrap()).unwrap();
        by_if.insert(ep.ifindex, ep, 0).unwrap();
        let mut by_ip: HashMap<_, u32, EndpointInfo> =
            HashMap::try_from(self.ebpf.map_mut(datapath_common::MAP_ENDPOINTS_BY_IP).unwrap()).unwrap();
        by_ip.insert(ep.ipv4, ep, 0).unwrap();
    }

    /// Runs `frame`, checks the return code and that exactly the counter of
    /// `code` moved by one packet of the frame's length; returns the frame
    /// after the run and the trace lines it produced.
    fn check(&mut self, what: &str, frame: &[u8], action: i32, code: u32) -> (Vec<u8>, Vec<String>) {
        self.check_prog(datapath_common::PROG_FROM_ENDPOINT, what, frame, action, code)
    }

    /// `check` for the program `name`.
    fn check_prog(&mut self, name: &str, what: &str, frame: &[u8], action: i32, code: u32) -> (Vec<u8>, Vec<String>) {
        let before: Vec<Counter> = reason::ALL.iter().map(|c| self.counter(*c)).collect();
        let (ret, out) = test_run(self.prog_named(name), frame);
        let after: Vec<Counter> = reason::ALL.iter().map(|c| self.counter(*c)).collect();
        for (i, c) in reason::ALL.iter().enumerate() {
            let (b, a) = (before[i], after[i]);
            if reason::is_event(*c) {
                continue;
            }
            if *c == code {
                assert_eq!(a.packets, b.packets + 1, "{what}: {} not counted", reason::name(code));
                assert_eq!(a.bytes, b.bytes + frame.len() as u64, "{what}: bytes of {}", reason::name(code));
            } else {
                assert_eq!(a, b, "{what}: counted under {} instead of {}", reason::name(*c), reason::name(code));
            }
        }
        assert_eq!(ret, action, "{what}: return code");
        self.logger.flush();
        let lines = std::mem::take(&mut *self.lines.0.lock().unwrap());
        (out, lines)
    }
}

/// Loads the object with `dp_from_ep` verified and an aya-log reader.
fn harness() -> Harness {
    let mut ebpf = load();
    let lines = Lines::default();
    let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, lines.clone()).expect("AYA_LOGS map");
    for name in [datapath_common::PROG_FROM_ENDPOINT, datapath_common::PROG_FROM_UPLINK] {
        let prog: &mut SchedClassifier =
            ebpf.program_mut(name).expect("program present").try_into().expect("a classifier");
        prog.load().expect("verifier");
    }
    Harness { ebpf, logger, lines }
}

#[test]
fn dp_from_ep_decisions() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut h = harness();
    let a_to_b = eth(B_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, B_IP, 64, 5000, 6000));

    // Before the endpoint is known the program stays out of the way.
    h.check("unknown iface", &a_to_b, TC_ACT_OK, reason::PASS_UNKNOWN_IFACE);

    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.set_endpoint(endpoint(B_IFINDEX, B_IP, B_MAC, 7, 0));
    h.set_endpoint(endpoint(C_IFINDEX, C_IP, [0x02, 0xdd, 0, 0, 1, 0x0c], 8, 0));

    // Identity checks.
    let other_mac = [0x02, 0xee, 0, 0, 0, 1];
    h.check(
        "spoofed MAC",
        &eth(B_MAC, other_mac, 0x0800, &ipv4_udp(A_IP, B_IP, 64, 1, 2)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_MAC,
    );
    h.check(
        "spoofed IP",
        &eth(B_MAC, A_MAC, 0x0800, &ipv4_udp(C_IP, B_IP, 64, 1, 2)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_IP,
    );

    // ARP.
    h.check("ARP request", &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, NOBODY_IP)), TC_ACT_OK, reason::PASS_ARP);
    h.check(
        "ARP request for B (proxy ARP)",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, B_IP)),
        TC_ACT_REDIRECT,
        reason::FWD_ARP_REPLY,
    );
    h.check(
        "ARP probe",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, Ipv4Addr::UNSPECIFIED, A_IP)),
        TC_ACT_OK,
        reason::PASS_ARP,
    );
    h.check(
        "ARP reply",
        &eth(GW_MAC, A_MAC, 0x0806, &arp(2, A_MAC, A_IP, Ipv4Addr::new(10, 199, 0, 1))),
        TC_ACT_OK,
        reason::PASS_ARP,
    );
    h.check(
        "spoofed ARP",
        &eth(BCAST, A_MAC, 0x0806, &arp(2, A_MAC, B_IP, A_IP)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_ARP,
    );
    h.check(
        "truncated ARP",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, B_IP)[..20]),
        TC_ACT_SHOT,
        reason::DROP_TRUNCATED,
    );

    // Malformed IPv4.
    let good = ipv4_udp(A_IP, B_IP, 64, 1, 2);
    let mut bad = good.clone();
    bad[0] = 0x65;
    h.check("IPv4 version 6", &eth(B_MAC, A_MAC, 0x0800, &bad), TC_ACT_SHOT, reason::DROP_BAD_IPV4_HEADER);
    let mut bad = good.clone();
    bad[0] = 0x44;
    h.check("IPv4 ihl 4", &eth(B_MAC, A_MAC, 0x0800, &bad), TC_ACT_SHOT, reason::DROP_BAD_IPV4_HEADER);
    let mut bad = good.clone();
    bad[2..4].copy_from_slice(&19u16.to_be_bytes());
    h.check("IPv4 tot_len 19", &eth(B_MAC, A_MAC, 0x0800, &bad), TC_ACT_SHOT, reason::DROP_BAD_IPV4_HEADER);
    let mut bad = good.clone();
    bad[0] = 0x4f;
    bad[2..4].copy_from_slice(&60u16.to_be_bytes());
    h.check("IPv4 options beyond the frame", &eth(B_MAC, A_MAC, 0x0800, &bad), TC_ACT_SHOT, reason::DROP_TRUNCATED);
    let mut bad = good.clone();
    bad[2..4].copy_from_slice(&1000u16.to_be_bytes());
    h.check("IPv4 tot_len beyond the frame", &eth(B_MAC, A_MAC, 0x0800, &bad), TC_ACT_SHOT, reason::DROP_TRUNCATED);
    // (A frame cut inside the first 20 bytes of the IPv4 header cannot be
    // tested here: BPF_PROG_TEST_RUN refuses such frames with EINVAL.)

    // Pass to the bridge.
    h.check(
        "broadcast IPv4",
        &eth(BCAST, A_MAC, 0x0800, &ipv4_udp(A_IP, Ipv4Addr::new(10, 199, 0, 255), 64, 1, 2)),
        TC_ACT_OK,
        reason::PASS_BROADCAST,
    );
    h.check(
        "multicast IPv4",
        &eth([0x01, 0, 0x5e, 0, 0, 0xfb], A_MAC, 0x0800, &ipv4_udp(A_IP, Ipv4Addr::new(224, 0, 0, 251), 1, 5353, 5353)),
        TC_ACT_OK,
        reason::PASS_BROADCAST,
    );
    h.check(
        "to the gateway",
        &eth(GW_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, Ipv4Addr::new(10, 199, 0, 1), 64, 1, 2)),
        TC_ACT_OK,
        reason::PASS_TO_BRIDGE,
    );
    h.check(
        "beyond the node",
        &eth(GW_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, Ipv4Addr::new(192, 0, 2, 1), 64, 1, 2)),
        TC_ACT_OK,
        reason::PASS_TO_BRIDGE,
    );
    h.check(
        "other network",
        &eth(GW_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, C_IP, 64, 1, 2)),
        TC_ACT_OK,
        reason::PASS_TO_BRIDGE,
    );
    h.check(
        "to itself",
        &eth(A_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, A_IP, 64, 1, 2)),
        TC_ACT_OK,
        reason::PASS_TO_BRIDGE,
    );
    h.check(
        "routed, TTL expires",
        &eth(GW_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, B_IP, 1, 1, 2)),
        TC_ACT_OK,
        reason::PASS_TO_BRIDGE,
    );
    // Networks are IPv4-only (endpoints have IPv6 disabled): see
    // `dp_from_ep_frame_shape`.
    h.check("IPv6 unicast", &eth(B_MAC, A_MAC, 0x86dd, &[0x60; 40]), TC_ACT_SHOT, reason::DROP_ETHERTYPE);
    h.check(
        "IPv6 multicast",
        &eth([0x33, 0x33, 0, 0, 0, 1], A_MAC, 0x86dd, &[0x60; 40]),
        TC_ACT_SHOT,
        reason::DROP_ETHERTYPE,
    );

    // Redirect, bridged: only the destination MAC is (re)written.
    let (out, lines) = h.check("bridged redirect", &a_to_b, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    assert_eq!(out, a_to_b, "bridged redirect leaves the frame alone");
    assert!(lines.is_empty(), "no trace without EP_F_TRACE: {lines:?}");

    // Redirect, routed: MACs rewritten, TTL decremented, checksum still valid.
    let routed = eth(GW_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, B_IP, 64, 5000, 6000));
    let (out, _) = h.check("routed redirect", &routed, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    assert_eq!(out.len(), routed.len());
    assert_eq!(&out[0..6], &B_MAC, "destination MAC");
    assert_eq!(&out[6..12], &GW_MAC, "source MAC");
    assert_eq!(out[14 + 8], 63, "TTL");
    assert_eq!(frames::checksum(&out[14..34]), 0, "IPv4 checksum after the TTL decrement");
    assert_eq!(&out[34..], &routed[34..], "payload untouched");
    // The checksum fold when the old checksum is near 0xffff.
    for ttl in [2u8, 128, 255] {
        let f = eth(GW_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, B_IP, ttl, 0xffff, 0));
        let (out, _) = h.check("routed redirect, checksum", &f, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
        assert_eq!(out[14 + 8], ttl - 1);
        assert_eq!(frames::checksum(&out[14..34]), 0, "IPv4 checksum after the TTL decrement (ttl {ttl})");
    }

    // Traces: one line per packet when the sender or the receiver is traced.
    // The reason column is padded to 20 characters.
    let line =
        |code: u32, rest: &str| format!("ep=1 from-ep {:<w$} {rest}", reason::name(code), w = reason::NAME_WIDTH);
    h.set_endpoint(endpoint(B_IFINDEX, B_IP, B_MAC, 7, EP_F_TRACE));
    let (_, lines) = h.check("traced redirect", &routed, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    // A redirected frame is shown as delivered (after the MAC rewrite).
    assert_eq!(
        lines,
        [line(
            reason::FWD_REDIRECT_PEER,
            "02:dd:00:00:00:01 > 02:dd:00:00:00:0b 10.199.0.2:5000 > 10.199.0.3:6000 proto=17 -> if=4242"
        )]
    );
    let (_, lines) = h.check(
        "untraced sender, ARP",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, NOBODY_IP)),
        TC_ACT_OK,
        reason::PASS_ARP,
    );
    assert!(lines.is_empty(), "ARP has no receiver endpoint: {lines:?}");
    let (_, lines) = h.check(
        "untraced sender, ARP for a traced endpoint",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, B_IP)),
        TC_ACT_REDIRECT,
        reason::FWD_ARP_REPLY,
    );
    assert!(lines.is_empty(), "B is not involved in the proxy's answer: {lines:?}");
    let (_, lines) = h.check(
        "traced receiver, spoofed MAC",
        &eth(B_MAC, other_mac, 0x0800, &ipv4_udp(A_IP, B_IP, 64, 1, 2)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_MAC,
    );
    assert!(lines.is_empty(), "a frame dropped before the lookup has no receiver: {lines:?}");

    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, EP_F_TRACE));
    let (_, lines) =
        h.check("traced ARP", &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, NOBODY_IP)), TC_ACT_OK, reason::PASS_ARP);
    assert_eq!(
        lines,
        [line(reason::PASS_ARP, "02:dd:00:00:00:0a > ff:ff:ff:ff:ff:ff arp op=1 10.199.0.2 > 10.199.0.99")]
    );
    // An answered request is shown as the reply it became.
    let (_, lines) = h.check(
        "traced proxy ARP",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, B_IP)),
        TC_ACT_REDIRECT,
        reason::FWD_ARP_REPLY,
    );
    assert_eq!(
        lines,
        [line(reason::FWD_ARP_REPLY, "02:dd:00:00:00:0b > 02:dd:00:00:00:0a arp op=2 10.199.0.3 > 10.199.0.2")]
    );
    let (_, lines) = h.check(
        "traced spoof",
        &eth(B_MAC, A_MAC, 0x0800, &ipv4_udp(C_IP, B_IP, 64, 1, 2)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_IP,
    );
    assert_eq!(
        lines,
        [line(reason::DROP_SPOOFED_IP, "02:dd:00:00:00:0a > 02:dd:00:00:00:0b 10.199.1.3:1 > 10.199.0.3:2 proto=17")]
    );
    let mut icmp = ipv4_udp(A_IP, Ipv4Addr::new(10, 199, 0, 1), 64, 0, 0);
    icmp[9] = 1;
    let (_, lines) = h.check("traced ICMP", &eth(GW_MAC, A_MAC, 0x0800, &icmp), TC_ACT_OK, reason::PASS_TO_BRIDGE);
    assert_eq!(
        lines,
        [line(reason::PASS_TO_BRIDGE, "02:dd:00:00:00:0a > 02:dd:00:00:00:01 10.199.0.2 > 10.199.0.1 proto=1")]
    );
    let (_, lines) = h.check(
        "traced bridged redirect, ICMP",
        &eth(B_MAC, A_MAC, 0x0800, &{
            let mut p = ipv4_udp(A_IP, B_IP, 64, 0, 0);
            p[9] = 1;
            p
        }),
        TC_ACT_REDIRECT,
        reason::FWD_REDIRECT_PEER,
    );
    assert_eq!(
        lines,
        [line(
            reason::FWD_REDIRECT_PEER,
            "02:dd:00:00:00:0a > 02:dd:00:00:00:0b 10.199.0.2 > 10.199.0.3 proto=1 -> if=4242"
        )]
    );
    let (_, lines) =
        h.check("traced IPv6", &eth(B_MAC, A_MAC, 0x86dd, &[0x60; 40]), TC_ACT_SHOT, reason::DROP_ETHERTYPE);
    // IPv6 frames are shown with their fixed header (here 0x60 bytes), also
    // from an endpoint of an IPv4-only network.
    let all_60 = "6060:6060:6060:6060:6060:6060:6060:6060";
    assert_eq!(
        lines,
        [line(reason::DROP_ETHERTYPE, &format!("02:dd:00:00:00:0a > 02:dd:00:00:00:0b {all_60} > {all_60} proto=96"))]
    );
    let tagged = frames::vlan_tagged(&routed, &[(frames::ETH_P_8021Q, 100)]);
    let (_, lines) = h.check("traced 802.1Q", &tagged, TC_ACT_SHOT, reason::DROP_VLAN_TAGGED);
    assert_eq!(lines, [line(reason::DROP_VLAN_TAGGED, "02:dd:00:00:00:0a > 02:dd:00:00:00:01 ethertype=0x8100")]);
    let (_, lines) =
        h.check("traced truncated ARP", &eth(BCAST, A_MAC, 0x0806, &[0; 20]), TC_ACT_SHOT, reason::DROP_TRUNCATED);
    assert_eq!(lines, [line(reason::DROP_TRUNCATED, "02:dd:00:00:00:0a > ff:ff:ff:ff:ff:ff ethertype=0x806")]);
}

/// Proxy ARP: a request from A for its gateway or for B (same network) is
/// turned into the reply in place and sent back into A; probes,
/// announcements, replies, requests for another network's endpoint, for A
/// itself or for nobody go to the bridge; a spoofed sender is dropped first.
#[test]
fn dp_from_ep_proxy_arp() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut h = harness();
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.set_endpoint(endpoint(B_IFINDEX, B_IP, B_MAC, 7, 0));
    h.set_endpoint(endpoint(C_IFINDEX, C_IP, [0x02, 0xdd, 0, 0, 1, 0x0c], 8, 0));
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, 0);
    let gw_ip = Ipv4Addr::new(10, 199, 0, 1);
    // The request with 18 bytes of padding (a 60-byte frame), which stays.
    let request = |tpa: Ipv4Addr| {
        let mut body = arp(1, A_MAC, A_IP, tpa);
        body.extend_from_slice(&[0xab; 18]);
        eth(BCAST, A_MAC, 0x0806, &body)
    };
    for (what, tpa, mac) in [("gateway", gw_ip, GW_MAC), ("B", B_IP, B_MAC)] {
        let f = request(tpa);
        let (out, _) = h.check(&format!("request for {what}"), &f, TC_ACT_REDIRECT, reason::FWD_ARP_REPLY);
        let mut want = eth(A_MAC, mac, 0x0806, &frames::arp(2, mac, tpa, A_MAC, A_IP));
        want.extend_from_slice(&[0xab; 18]);
        assert_eq!(out, want, "the reply for {what}");
    }
    // A unicast request (a neighbour re-probe) is answered too.
    let unicast = eth(GW_MAC, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, gw_ip));
    let (out, _) = h.check("unicast request for the gateway", &unicast, TC_ACT_REDIRECT, reason::FWD_ARP_REPLY);
    assert_eq!(&out[0..12], &[A_MAC, GW_MAC].concat()[..], "Ethernet addresses of the reply");
    for (what, f) in [
        ("request for another network's endpoint", request(C_IP)),
        ("request for nobody", request(NOBODY_IP)),
        ("request for itself", request(A_IP)),
        ("probe", eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, Ipv4Addr::UNSPECIFIED, B_IP))),
        ("announcement", eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, A_IP))),
        ("reply", eth(B_MAC, A_MAC, 0x0806, &frames::arp(2, A_MAC, A_IP, B_MAC, B_IP))),
        ("gratuitous reply", eth(BCAST, A_MAC, 0x0806, &arp(2, A_MAC, A_IP, A_IP))),
        ("not Ethernet/IPv4 ARP", {
            let mut body = arp(1, A_MAC, A_IP, B_IP);
            body[0..2].copy_from_slice(&6u16.to_be_bytes());
            eth(BCAST, A_MAC, 0x0806, &body)
        }),
    ] {
        let (out, _) = h.check(what, &f, TC_ACT_OK, reason::PASS_ARP);
        assert_eq!(out, f, "{what}: the frame is left alone");
    }
    h.check(
        "spoofed request for B",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, NOBODY_IP, B_IP)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_ARP,
    );
    h.check(
        "request for B with a foreign sender MAC",
        &eth(BCAST, A_MAC, 0x0806, &arp(1, [0x02, 0xee, 0, 0, 0, 1], A_IP, B_IP)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_ARP,
    );
    h.check(
        "request for B with a spoofed source MAC",
        &eth(BCAST, [0x02, 0xee, 0, 0, 0, 1], 0x0806, &arp(1, A_MAC, A_IP, B_IP)),
        TC_ACT_SHOT,
        reason::DROP_SPOOFED_MAC,
    );
}

/// Only untagged Ethernet II IPv4 and ARP leave an endpoint, and the shape
/// is checked before anything else: a VLAN tag (802.1Q, QinQ 802.1ad or
/// 0x9100, here in the frame; the tag the kernel moves to skb->vlan_tci is
/// covered by the integration suite, BPF_PROG_TEST_RUN cannot set it) or any
/// other ethertype is dropped, whatever the addresses inside.
#[test]
fn dp_from_ep_frame_shape() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    use frames::{vlan_tagged, ETH_P_8021AD, ETH_P_8021Q, ETH_P_QINQ1};
    let mut h = harness();
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.set_endpoint(endpoint(B_IFINDEX, B_IP, B_MAC, 7, 0));
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, 0);
    let other_mac = [0x02, 0xee, 0, 0, 0, 1];
    let a_to_b = eth(B_MAC, A_MAC, 0x0800, &ipv4_udp(A_IP, B_IP, 64, 5000, 6000));
    let spoofed = eth(B_MAC, A_MAC, 0x0800, &ipv4_udp(C_IP, B_IP, 64, 5000, 6000));
    let arp_req = eth(BCAST, A_MAC, 0x0806, &arp(1, A_MAC, A_IP, B_IP));
    let bcast = eth(BCAST, A_MAC, 0x0800, &ipv4_udp(A_IP, Ipv4Addr::new(10, 199, 0, 255), 64, 68, 67));
    // Controls: the same frames untagged.
    h.check("untagged", &a_to_b, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    h.check("untagged, spoofed", &spoofed, TC_ACT_SHOT, reason::DROP_SPOOFED_IP);
    h.check("untagged ARP (answered by the proxy)", &arp_req, TC_ACT_REDIRECT, reason::FWD_ARP_REPLY);
    h.check("untagged broadcast", &bcast, TC_ACT_OK, reason::PASS_BROADCAST);
    let mut igmp = ipv4_udp(A_IP, Ipv4Addr::new(224, 0, 0, 22), 1, 0, 0);
    igmp[9] = 2;
    frames::fix_ipv4_checksum(&mut igmp, 0);
    h.check("IGMP report", &eth([0x01, 0, 0x5e, 0, 0, 0x16], A_MAC, 0x0800, &igmp), TC_ACT_OK, reason::PASS_BROADCAST);

    for (what, tags) in [
        ("802.1Q", &[(ETH_P_8021Q, 100)][..]),
        ("802.1Q priority tag (VLAN 0)", &[(ETH_P_8021Q, 0x6000)][..]),
        ("QinQ 802.1ad", &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)][..]),
        ("QinQ 0x9100", &[(ETH_P_QINQ1, 100), (ETH_P_8021Q, 200)][..]),
        ("802.1ad alone", &[(ETH_P_8021AD, 100)][..]),
    ] {
        for (kind, f) in [("to B", &a_to_b), ("spoofed", &spoofed), ("ARP", &arp_req), ("broadcast", &bcast)] {
            let what = format!("{what}, {kind}");
            h.check(&what, &vlan_tagged(f, tags), TC_ACT_SHOT, reason::DROP_VLAN_TAGGED);
        }
        // Before the identity checks: no encapsulation gets a say first.
        let mut f = vlan_tagged(&a_to_b, tags);
        f[6..12].copy_from_slice(&other_mac);
        h.check(&format!("{what}, spoofed MAC"), &f, TC_ACT_SHOT, reason::DROP_VLAN_TAGGED);
    }

    // Neither IPv4 nor ARP: IPv6 (unicast, multicast, neighbour
    // solicitation to a solicited-node group), LLDP, an 802.3 length field
    // with LLC (STP BPDU), a local experimental ethertype, PPPoE, MPLS.
    let v6 = [0x60u8; 40];
    let other: [(&str, [u8; 6], u16, &[u8]); 8] = [
        ("IPv6 unicast", B_MAC, 0x86dd, &v6),
        ("IPv6 to the gateway", GW_MAC, 0x86dd, &v6),
        ("IPv6 multicast", [0x33, 0x33, 0xff, 0, 0, 3], 0x86dd, &v6),
        ("LLDP", [0x01, 0x80, 0xc2, 0, 0, 0x0e], 0x88cc, &[0u8; 46]),
        ("802.3 LLC (STP BPDU)", [0x01, 0x80, 0xc2, 0, 0, 0], 38, &[0x42; 46]),
        ("local experimental", B_MAC, 0x88b5, &[0u8; 46]),
        ("PPPoE", BCAST, 0x8863, &[0u8; 46]),
        ("MPLS", GW_MAC, 0x8847, &[0u8; 46]),
    ];
    for (what, dst, ethertype, payload) in other {
        h.check(what, &eth(dst, A_MAC, ethertype, payload), TC_ACT_SHOT, reason::DROP_ETHERTYPE);
        h.check(
            &format!("{what}, spoofed MAC"),
            &eth(dst, other_mac, ethertype, payload),
            TC_ACT_SHOT,
            reason::DROP_ETHERTYPE,
        );
    }
    assert_eq!(reason::name(reason::DROP_VLAN_TAGGED), "drop-vlan-tagged");
    assert_eq!(reason::name(reason::DROP_ETHERTYPE), "drop-ethertype");
    assert!(reason::is_drop(reason::DROP_VLAN_TAGGED) && reason::is_drop(reason::DROP_ETHERTYPE));
}

/// Network policy: isolation between networks, icc=false, internal networks.
#[test]
fn dp_from_ep_policy() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut h = harness();
    let gw7 = Ipv4Addr::new(10, 199, 0, 1);
    let gw8 = Ipv4Addr::new(10, 199, 1, 1);
    let outside = Ipv4Addr::new(192, 0, 2, 1);
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.set_endpoint(endpoint(B_IFINDEX, B_IP, B_MAC, 7, 0));
    h.set_endpoint(endpoint(C_IFINDEX, C_IP, [0x02, 0xdd, 0, 0, 1, 0x0c], 8, 0));
    let to = |dst_mac, dst| eth(dst_mac, A_MAC, 0x0800, &ipv4_udp(A_IP, dst, 64, 1000, 53));

    // No NETWORKS entry for the sender's network: no policy, as before.
    h.set_network(8, Ipv4Addr::new(10, 199, 1, 0), 24, 0);
    h.check("no policy, other network", &to(GW_MAC, C_IP), TC_ACT_OK, reason::PASS_TO_BRIDGE);

    // Plain network: same network redirected, other networks isolated
    // (their gateways included), the own gateway and the outside passed.
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, 0);
    h.check("same network", &to(B_MAC, B_IP), TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    h.check("own gateway", &to(GW_MAC, gw7), TC_ACT_OK, reason::PASS_TO_BRIDGE);
    h.check("other network's endpoint", &to(GW_MAC, C_IP), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    h.check("other network's gateway", &to(GW_MAC, gw8), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    h.check(
        "other network, unused address",
        &to(GW_MAC, Ipv4Addr::new(10, 199, 1, 200)),
        TC_ACT_SHOT,
        reason::DROP_POLICY_ISOLATION,
    );
    h.check("outside, no masquerade", &to(GW_MAC, outside), TC_ACT_OK, reason::PASS_TO_BRIDGE);

    // icc=false: no endpoint to endpoint, the gateway stays reachable.
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, NET_F_NO_ICC);
    h.check("icc=false, bridged", &to(B_MAC, B_IP), TC_ACT_SHOT, reason::DROP_POLICY_ICC);
    h.check("icc=false, routed", &to(GW_MAC, B_IP), TC_ACT_SHOT, reason::DROP_POLICY_ICC);
    h.check("icc=false, gateway", &to(GW_MAC, gw7), TC_ACT_OK, reason::PASS_TO_BRIDGE);
    h.check("icc=false, outside", &to(GW_MAC, outside), TC_ACT_OK, reason::PASS_TO_BRIDGE);
    h.check("icc=false, other network", &to(GW_MAC, C_IP), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);

    // Internal: nothing leaves the subnet but the gateway is reachable.
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, NET_F_INTERNAL);
    h.check("internal, same network", &to(B_MAC, B_IP), TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    h.check("internal, gateway", &to(GW_MAC, gw7), TC_ACT_OK, reason::PASS_TO_BRIDGE);
    h.check("internal, outside", &to(GW_MAC, outside), TC_ACT_SHOT, reason::DROP_POLICY_INTERNAL);
    h.check("internal, the node", &to(GW_MAC, Ipv4Addr::new(172, 31, 0, 1)), TC_ACT_SHOT, reason::DROP_POLICY_INTERNAL);
    h.check("internal, other network", &to(GW_MAC, C_IP), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    // Broadcast stays with the bridge.
    h.check(
        "internal, broadcast",
        &eth(BCAST, A_MAC, 0x0800, &ipv4_udp(A_IP, Ipv4Addr::BROADCAST, 64, 68, 67)),
        TC_ACT_OK,
        reason::PASS_BROADCAST,
    );
}

// ---------------------------------------------------------------------------
// bpf_redirect_peer between two real namespaces

/// Two namespaces `<prefix>a` / `<prefix>b` (prefix `dpg` + 5 hex digits from
/// [`claim`]), each with `eth0` whose host side is `<prefix>a` /
/// `<prefix>b` in this namespace. No bridge: with
/// static neighbours, the only way a packet gets from one to the other is the
/// program's `bpf_redirect_peer`. Everything is deleted on drop.
struct Pair {
    claim: Claim,
}

/// A fresh name prefix for this file's namespaces (after sweeping the
/// leftovers of killed runs); dropping it removes whatever carries it.
fn claim() -> Claim {
    let family = Family::new("dpg", std::env::temp_dir().join("datapath-program-tests"));
    family.sweep();
    family.claim().expect("claiming a name prefix")
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Pair {
    fn name(&self, side: char) -> String {
        self.claim.name(&side.to_string())
    }

    fn new() -> Pair {
        let pair = Pair { claim: claim() };
        for (side, mac, addr) in [('a', A_MAC, "10.199.7.2/24"), ('b', B_MAC, "10.199.7.3/24")] {
            let n = pair.name(side);
            ip(&["netns", "add", &n]);
            ip(&["link", "add", &n, "type", "veth", "peer", "name", "eth0", "netns", &n]);
            let mac = frames::mac_str(mac);
            ip(&["-n", &n, "link", "set", "eth0", "address", &mac]);
            ip(&["-n", &n, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", &n, "link", "set", "eth0", "up"]);
            ip(&["-n", &n, "link", "set", "lo", "up"]);
            ip(&["link", "set", &n, "up"]);
        }
        pair
    }

    fn ping(&self, from: char, to: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name(from), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", to])
            .output()
            .expect("running ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "ping {to} from {from} failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for side in ['a', 'b'] {
            let n = self.name(side);
            let _ = std::process::Command::new("ip").args(["link", "del", &n]).output();
            let _ = std::process::Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}

#[test]
fn redirect_peer_between_namespaces() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    if std::process::Command::new("ping").arg("-V").output().is_err() {
        eprintln!("skipping: no ping");
        return;
    }
    let pair = Pair::new();
    let ifindex = |side| nix::net::if_::if_nametoindex(pair.name(side).as_str()).expect("host veth exists");
    let (a_if, b_if) = (ifindex('a'), ifindex('b'));

    let mut ebpf = load();
    {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(datapath_common::PROG_FROM_ENDPOINT)
            .expect("program present")
            .try_into()
            .expect("a classifier");
        prog.load().expect("verifier");
        for side in ['a', 'b'] {
            prog.attach(&pair.name(side), aya::programs::TcAttachType::Ingress).expect("attach");
        }
    }
    let mut h = Harness {
        logger: aya_log::EbpfLogger::init_with_logger(&mut ebpf, Lines::default()).expect("AYA_LOGS map"),
        ebpf,
        lines: Lines::default(),
    };
    h.set_endpoint(endpoint(a_if, Ipv4Addr::new(10, 199, 7, 2), A_MAC, 7, 0));
    h.set_endpoint(endpoint(b_if, Ipv4Addr::new(10, 199, 7, 3), B_MAC, 7, 0));
    let redirected = || h.counter(reason::FWD_REDIRECT_PEER).packets;

    // Bridged: each side knows the other's MAC.
    let mac = frames::mac_str;
    ip(&[
        "-n",
        &pair.name('a'),
        "neigh",
        "add",
        "10.199.7.3",
        "lladdr",
        &mac(B_MAC),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    ip(&[
        "-n",
        &pair.name('b'),
        "neigh",
        "add",
        "10.199.7.2",
        "lladdr",
        &mac(A_MAC),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let before = redirected();
    let out = pair.ping('a', "10.199.7.3");
    assert!(out.contains("ttl=64"), "bridged: TTL untouched:\n{out}");
    assert!(redirected() >= before + 6, "3 requests and 3 replies redirected");

    // Routed: each side reaches the other through the gateway's MAC; the
    // program rewrites the MACs and decrements the TTL in each direction.
    for (side, peer) in [('a', "10.199.7.3"), ('b', "10.199.7.2")] {
        let n = pair.name(side);
        ip(&["-n", &n, "neigh", "del", peer, "dev", "eth0"]);
        ip(&["-n", &n, "neigh", "add", "10.199.7.1", "lladdr", &mac(GW_MAC), "dev", "eth0", "nud", "permanent"]);
        ip(&["-n", &n, "route", "add", &format!("{peer}/32"), "via", "10.199.7.1", "dev", "eth0"]);
    }
    let before = redirected();
    let out = pair.ping('a', "10.199.7.3");
    assert!(out.contains("ttl=63"), "routed: one hop:\n{out}");
    assert!(redirected() >= before + 6, "3 requests and 3 replies redirected");
    assert_eq!(h.counter(reason::DROP_REDIRECT_FAILED).packets, 0);
    drop(h);
    drop(pair);
}

// ---------------------------------------------------------------------------
// masquerade on malformed input (BPF_PROG_TEST_RUN)

/// An IPv4 packet (id 0x1234, DF) carrying a 20-byte TCP header with
/// `flags`, sequence number 1, window 0xffff, a valid checksum and 8 bytes of
/// payload.
fn ipv4_tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let seg = Tcp { seq: 1, window: 0xffff, ..Tcp::new(sport, dport, flags) }.segment(src, dst, b"payload!");
    Ipv4 { id: 0x1234, frag: frames::IP_DF, ..Ipv4::new(src, dst, frames::IPPROTO_TCP) }.packet(&seg)
}

#[test]
fn nat_malformed_input() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    with_uplink(malformed_cases);
}

/// Runs `cases` with the ifindex of the "uplink" of a throwaway namespace,
/// in that namespace.
fn with_uplink(cases: fn(u32)) {
    // A namespace with an "uplink" (veth, 203.0.113.1/24, static neighbour)
    // so bpf_fib_lookup gives the same answer on every machine:
    // BPF_PROG_TEST_RUN runs in the caller's namespace.
    let claim = claim();
    let ns = claim.name("t");
    ip(&["netns", "add", &ns]);
    for args in [
        "link set lo up",
        "link add up0 type veth peer name up1",
        "link set up1 up",
        "addr add 203.0.113.1/24 dev up0",
        "link set up0 up",
        "neigh add 203.0.113.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent",
        "route add 198.51.100.0/24 via 203.0.113.2",
    ] {
        let mut v = vec!["-n", ns.as_str()];
        v.extend(args.split_whitespace());
        ip(&v);
    }
    let ok = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let ns2 = ns.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns2}")).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let up = nix::net::if_::if_nametoindex("up0").unwrap();
        cases(up);
    })
    .join()
    .expect("cases passed");
}

/// A harness with endpoint A in network 7 (10.199.0.0/24), masqueraded to
/// 203.0.113.1 ports 20000-20009 out of `up`.
fn masquerading_harness(up: u32) -> Harness {
    let mut h = harness();
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, 0);
    h.update_network(7, |n| {
        n.flags = datapath_common::NET_F_MASQUERADE | NET_F_PRESENT;
        n.masq_addr = ipv4_key([203, 0, 113, 1]);
        n.uplink_ifindex = up;
        n.nat_port_min = 20000;
        n.nat_port_max = 20009;
    });
    h
}

fn malformed_cases(up: u32) {
    let mut h = masquerading_harness(up);
    let remote = Ipv4Addr::new(198, 51, 100, 1);
    let ct_len = |h: &Harness| {
        let ct: HashMap<_, datapath_common::CtKey, datapath_common::CtEntry> =
            HashMap::try_from(h.ebpf.map(datapath_common::MAP_CT).unwrap()).unwrap();
        ct.keys().count()
    };
    let syn = |sport| eth(GW_MAC, A_MAC, 0x0800, &ipv4_tcp(A_IP, remote, sport, 80, 0x02));

    // A good SYN: translated, forwarded to the uplink, checksums valid.
    let (out, _) = h.check("SYN", &syn(40000), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(&out[26..30], &[203, 0, 113, 1], "source translated");
    let port = u16::from_be_bytes([out[34], out[35]]);
    assert!((20000..=20009).contains(&port), "port {port}");
    assert_eq!(out[22], 63, "TTL");
    assert_eq!(frames::checksum(&out[14..34]), 0, "IPv4 checksum");
    assert_eq!(l4_sum(&out[14..34], &out[34..]), 0xffff, "TCP checksum");
    assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 2], "next hop MAC");
    assert_eq!(ct_len(&h), 2);

    // Bad TCP checksum: not verified (a CHECKSUM_PARTIAL packet cannot be),
    // translated incrementally so it stays exactly as wrong; the receiver
    // drops it.
    let mut bad = syn(40001);
    bad[14 + 20 + 16] ^= 0x5a;
    let sum_in = l4_sum(&bad[14..34], &bad[34..]);
    let (out, _) = h.check("bad TCP checksum", &bad, TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_ne!(sum_in, 0xffff);
    assert_eq!(l4_sum(&out[14..34], &out[34..]), sum_in, "still as wrong");
    assert_eq!(ct_len(&h), 4);

    // Fragments (to another destination port, so the exhaustion below
    // still has its two flows): the first is translated and tracked like a
    // whole packet; a later one of the same datagram (same IP id) takes its
    // flow: same translated source, only the IPv4 header rewritten; a later
    // one of an unknown datagram is dropped, counted.
    let ip_csum = |f: &mut Vec<u8>| {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = frames::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    };
    let mut frag = eth(GW_MAC, A_MAC, 0x0800, &ipv4_tcp(A_IP, remote, 40002, 443, 0x02));
    frag[14 + 4..14 + 6].copy_from_slice(&0x4242u16.to_be_bytes());
    frag[14 + 6] = 0x20; // MF
    ip_csum(&mut frag);
    let (first, _) = h.check("first fragment", &frag, TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(ct_len(&h), 6);
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10; // offset 128, last
    ip_csum(&mut frag);
    let (later, _) = h.check("later fragment", &frag, TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(&later[26..30], &first[26..30], "a later fragment's source is its first fragment's");
    assert_eq!(&later[34..], &frag[34..], "a later fragment's payload is untouched");
    assert_eq!(frames::checksum(&later[14..34]), 0, "IPv4 checksum of the later fragment");
    assert_eq!(ct_len(&h), 6);
    frag[14 + 4..14 + 6].copy_from_slice(&0x4343u16.to_be_bytes());
    ip_csum(&mut frag);
    h.check("later fragment of an unknown datagram", &frag, TC_ACT_SHOT, reason::DROP_FRAG_UNKNOWN);

    // Truncated L4 header.
    let mut short = syn(40003);
    short.truncate(14 + 20 + 10);
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&short[14..34]);
    short[24..26].copy_from_slice(&c.to_be_bytes());
    h.check("truncated TCP header", &short, TC_ACT_SHOT, reason::DROP_TRUNCATED);

    // Not a SYN for an unknown flow.
    let ack = eth(GW_MAC, A_MAC, 0x0800, &ipv4_tcp(A_IP, remote, 40004, 80, 0x10));
    h.check("ACK of an unknown flow", &ack, TC_ACT_SHOT, reason::DROP_CT_INVALID);
    // ... unless the endpoint publishes ports through the kernel (a
    // chained CNI portmap): then it is the reply of a connection the
    // kernel's DNAT made, for the kernel's conntrack. A SYN still starts
    // an eBPF flow, and the flag changes nothing for other endpoints.
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, datapath_common::EP_F_KERNEL_FLOWS));
    h.check("ACK of a kernel flow", &ack, TC_ACT_OK, reason::PASS_KERNEL_FLOW);
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.check("ACK of an unknown flow, flag cleared", &ack, TC_ACT_SHOT, reason::DROP_CT_INVALID);
    // Unsupported protocol (GRE).
    let mut gre = ipv4_udp(A_IP, remote, 64, 1, 2);
    gre[9] = 47;
    gre[10..12].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&gre[..20]);
    gre[10..12].copy_from_slice(&c.to_be_bytes());
    h.check("GRE", &eth(GW_MAC, A_MAC, 0x0800, &gre), TC_ACT_SHOT, reason::DROP_NAT_PROTO);
    // TTL 1: the kernel answers with time exceeded.
    let mut t1 = syn(40005);
    t1[22] = 1;
    t1[24..26].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&t1[14..34]);
    t1[24..26].copy_from_slice(&c.to_be_bytes());
    h.check("TTL 1", &t1, TC_ACT_OK, reason::PASS_NAT_NOT_ROUTED);
    // The node itself is not masqueraded.
    h.check(
        "to the node",
        &eth(GW_MAC, A_MAC, 0x0800, &ipv4_tcp(A_IP, Ipv4Addr::new(203, 0, 113, 1), 40006, 22, 0x02)),
        TC_ACT_OK,
        reason::PASS_NAT_NOT_ROUTED,
    );
    assert_eq!(ct_len(&h), 6, "no entry for the drops");

    // Port exhaustion: 10 ports for one destination; the two flows above
    // hold two of them. A counted drop, not a hang.
    for sport in 41000..41008 {
        h.check("fill the range", &syn(sport), TC_ACT_REDIRECT, reason::FWD_NAT);
    }
    // Exhausted: counted, and answered at once with an ICMP destination
    // unreachable (code 13) from the gateway, quoting the SYN, sent back
    // into A.
    let refused = syn(42000);
    let (icmp, _) = h.check("range exhausted", &refused, TC_ACT_REDIRECT, reason::DROP_NAT_NO_PORT);
    assert_eq!(icmp.len(), 14 + 20 + 8 + 28, "ICMP error frame: {icmp:02x?}");
    assert_eq!((&icmp[0..6], &icmp[6..12], &icmp[12..14]), (&A_MAC[..], &GW_MAC[..], &[8u8, 0][..]));
    assert_eq!(icmp[14 + 9], 1, "IPv4 protocol ICMP");
    assert_eq!(&icmp[26..30], &[10, 199, 0, 1], "from the gateway");
    assert_eq!(&icmp[30..34], &A_IP.octets(), "to A");
    assert_eq!(frames::checksum(&icmp[14..34]), 0, "IPv4 checksum");
    assert_eq!((icmp[34], icmp[35]), (3, 13), "destination unreachable, administratively prohibited");
    assert_eq!(frames::checksum(&icmp[34..]), 0, "ICMP checksum");
    assert_eq!(&icmp[42..], &refused[14..42], "the quote is the SYN's IPv4 header and ports");
    assert_eq!(ct_len(&h), 22);
    // The existing flows still work.
    h.check("existing flow", &syn(40000), TC_ACT_REDIRECT, reason::FWD_NAT);
    port_takeover(&mut h, remote);
}

/// TCP with a data offset below 5 or a header beyond the packet, UDP with a
/// length below 8 or beyond the IP payload: never translated, neither out
/// (`dp_from_ep`) nor back (`dp_from_uplink`, for a flow that exists);
/// dropped and counted as drop-bad-l4-header, nothing tracked. UDP and TCP
/// checksums are not verified (see `bad_udp_checksum`).
#[test]
fn nat_bad_l4_headers() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    with_uplink(bad_l4_cases);
}

/// An IPv4 packet (DF) from `src` to `dst` carrying `l4` as protocol `proto`
/// (taken as is: lengths, offsets and checksums are the caller's).
fn ipv4_raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    Ipv4 { id: 0x1234, frag: frames::IP_DF, ..Ipv4::new(src, dst, proto) }.packet(l4)
}

/// A TCP segment `sport` -> `dport` with `flags`, `opts` (options, a
/// multiple of 4 bytes) and `payload`, its checksum valid, then its data
/// offset set to `doff` (unchanged checksum).
fn tcp_doff(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    flags: u8,
    opts: &[u8],
    payload: &[u8],
    doff: u8,
) -> Vec<u8> {
    let mut body = opts.to_vec();
    body.extend_from_slice(payload);
    let mut t = Tcp { seq: 1, window: 0xffff, ..Tcp::new(ports.0, ports.1, flags) }.segment(src, dst, &body);
    t[12] = (5 + opts.len() as u8 / 4) << 4;
    t[16..18].copy_from_slice(&[0, 0]);
    let c = frames::l4_checksum(src, dst, frames::IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t[12] = doff << 4;
    t
}

/// A UDP datagram with `payload`, its checksum valid, then its length field
/// set to `len`.
fn udp_len(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8], len: u16) -> Vec<u8> {
    let mut u = frames::udp(src, dst, sport, dport, payload);
    u[4..6].copy_from_slice(&len.to_be_bytes());
    u
}

fn bad_l4_cases(up: u32) {
    const UPLINK: &str = datapath_common::PROG_FROM_UPLINK;
    let mut h = masquerading_harness(up);
    let remote = Ipv4Addr::new(198, 51, 100, 1);
    let masq = Ipv4Addr::new(203, 0, 113, 1);
    let (tcp, udp) = (frames::IPPROTO_TCP, frames::IPPROTO_UDP);
    let out = |l4: &[u8], proto: u8| eth(GW_MAC, A_MAC, 0x0800, &ipv4_raw(A_IP, remote, proto, l4));
    let back =
        |l4: &[u8], proto: u8| eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 0x0800, &ipv4_raw(remote, masq, proto, l4));
    let opts = [1u8, 1, 1, 1, 1, 1, 1, 1]; // NOPs
    let syn = |sport: u16, doff: u8, payload: &[u8]| tcp_doff(A_IP, remote, (sport, 80), 0x02, &opts, payload, doff);

    // Out: data offset below 5, or a header beyond the packet (8 bytes of
    // options and 8 of payload: 36 bytes of TCP, so up to 9 words fit).
    for doff in [0u8, 2, 4, 10, 15] {
        h.check(
            &format!("TCP data offset {doff}"),
            &out(&syn(40000, doff, b"payload!"), tcp),
            TC_ACT_SHOT,
            reason::DROP_BAD_L4_HEADER,
        );
    }
    // UDP length below 8 or beyond the IP payload (8 + 12 bytes).
    for len in [0u16, 4, 7, 21, 1000, 0xffff] {
        let u = udp_len(A_IP, remote, 40001, 53, &[0u8; 12], len);
        h.check(&format!("UDP length {len}"), &out(&u, udp), TC_ACT_SHOT, reason::DROP_BAD_L4_HEADER);
    }
    // Ethernet padding after the IP packet: the UDP length is checked
    // against the IP total length (20 bytes of UDP), not the frame (30).
    let mut padded = out(&udp_len(A_IP, remote, 40001, 53, &[0u8; 12], 25), udp);
    padded.extend_from_slice(&[0u8; 10]);
    h.check("UDP length beyond the IP total length", &padded, TC_ACT_SHOT, reason::DROP_BAD_L4_HEADER);
    assert_eq!(h.ct().len(), 0, "nothing tracked for the drops");

    // Controls: the largest data offset that fits (9 words), options (6),
    // a UDP length shorter than the payload (the receiver trims it) and the
    // exact one: translated.
    h.check("TCP data offset 9", &out(&syn(40010, 9, b"payload!"), tcp), TC_ACT_REDIRECT, reason::FWD_NAT);
    h.check("TCP with options", &out(&syn(40011, 7, b"payload!"), tcp), TC_ACT_REDIRECT, reason::FWD_NAT);
    h.check(
        "UDP length 8",
        &out(&udp_len(A_IP, remote, 40012, 53, &[0u8; 12], 8), udp),
        TC_ACT_REDIRECT,
        reason::FWD_NAT,
    );
    let good_udp = frames::udp(A_IP, remote, 40013, 53, &[7u8; 12]);
    let (o, _) = h.check("UDP", &out(&good_udp, udp), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(l4_sum(&o[14..34], &o[34..]), 0xffff, "UDP checksum after the translation");
    let nport = |h: &Harness, sport: u16| {
        h.ct()
            .into_iter()
            .find(|(k, e)| e.flags & datapath_common::CT_F_REVERSE == 0 && k.sport == sport.to_be())
            .map(|(_, e)| u16::from_be(e.port))
            .expect("flow")
    };
    let (pt, pu) = (nport(&h, 40011), nport(&h, 40013));

    // Back: malformed replies of live flows are dropped, not translated.
    let synack = |doff: u8| tcp_doff(remote, masq, (80, pt), 0x12, &opts, b"payload!", doff);
    for doff in [0u8, 2, 4, 10, 15] {
        h.check_prog(
            UPLINK,
            &format!("reply, TCP data offset {doff}"),
            &back(&synack(doff), tcp),
            TC_ACT_SHOT,
            reason::DROP_BAD_L4_HEADER,
        );
    }
    for len in [0u16, 4, 7, 21, 1000] {
        let u = udp_len(remote, masq, 53, pu, &[0u8; 12], len);
        h.check_prog(
            UPLINK,
            &format!("reply, UDP length {len}"),
            &back(&u, udp),
            TC_ACT_SHOT,
            reason::DROP_BAD_L4_HEADER,
        );
    }
    // Controls: the well-formed replies are translated.
    let (o, _) = h.check_prog(UPLINK, "reply, TCP", &back(&synack(7), tcp), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    assert_eq!(u16::from_be_bytes([o[36], o[37]]), 40011);
    let (o, _) = h.check_prog(
        UPLINK,
        "reply, UDP",
        &back(&frames::udp(remote, masq, 53, pu, &[7u8; 12]), udp),
        TC_ACT_REDIRECT,
        reason::FWD_REVNAT,
    );
    assert_eq!(u16::from_be_bytes([o[36], o[37]]), 40013);
    assert_eq!(l4_sum(&o[14..34], &o[34..]), 0xffff, "UDP checksum after the reverse translation");
    // A malformed packet of no flow is the node's: left to the kernel.
    let u = udp_len(remote, masq, 53, 33333, &[0u8; 12], 4);
    h.check_prog(UPLINK, "malformed, no flow", &back(&u, udp), TC_ACT_OK, reason::PASS_UPLINK_HOST);

    bad_udp_checksum(&mut h, remote);
}

/// A UDP datagram with a wrong checksum is not verified (nor is a TCP one,
/// see `malformed_cases`): translated incrementally, it stays exactly as
/// wrong, so the receiver drops it as it would have without the NAT. (The
/// kernel's forwarding path does not verify it either: veth marks what it
/// forwards CHECKSUM_UNNECESSARY, and a CHECKSUM_PARTIAL packet's field
/// only holds the pseudo-header sum.)
fn bad_udp_checksum(h: &mut Harness, remote: Ipv4Addr) {
    let mut u = frames::udp(A_IP, remote, 40020, 53, &[7u8; 12]);
    u[6] ^= 0x5a;
    let f = eth(GW_MAC, A_MAC, 0x0800, &ipv4_raw(A_IP, remote, frames::IPPROTO_UDP, &u));
    let sum_in = l4_sum(&f[14..34], &f[34..]);
    assert_ne!(sum_in, 0xffff);
    let (o, _) = h.check("bad UDP checksum", &f, TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(l4_sum(&o[14..34], &o[34..]), sum_in, "still as wrong");
}

/// SNAT port reuse, on the full 10-port range left by `malformed_cases`
/// (flows from ports 40000, 40001 and 41000-41007, all in SYN-SENT).
fn port_takeover(h: &mut Harness, remote: Ipv4Addr) {
    use datapath_common::{
        CtConfig, CT_F_DONE, CT_F_REVERSE, CT_F_RX_FIN, CT_F_TX_FIN, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_SYN_SENT,
    };
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    const UPLINK: &str = datapath_common::PROG_FROM_UPLINK;
    let masq = Ipv4Addr::new(203, 0, 113, 1);
    let from_ep = |sport: u16, flags: u8| eth(GW_MAC, A_MAC, 0x0800, &ipv4_tcp(A_IP, remote, sport, 80, flags));
    let reply = |nport: u16, flags: u8| {
        eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 0x0800, &ipv4_tcp(remote, masq, 80, nport, flags))
    };
    let fwd = |h: &Harness, sport: u16| {
        h.ct()
            .into_iter()
            .find(|(k, e)| e.flags & CT_F_REVERSE == 0 && k.sport == sport.to_be() && k.dport == 80u16.to_be())
            .map(|(_, e)| e)
    };
    let nport = |h: &Harness, sport: u16| u16::from_be(fwd(h, sport).expect("flow").port);
    let out_sport = |out: &[u8]| u16::from_be_bytes([out[34], out[35]]);
    let out_dport = |out: &[u8]| u16::from_be_bytes([out[36], out[37]]);
    let reused = |h: &Harness| h.counter(reason::EV_NAT_PORT_REUSED).packets;
    let created = |h: &Harness| h.counter(reason::EV_CT_CREATED).packets;
    // Handshake and close of flow `sport`: the endpoint closes first.
    let close = |h: &mut Harness, sport: u16, last_ack: bool| {
        let p = u16::from_be(fwd(h, sport).expect("flow").port);
        let (out, _) = h.check_prog(UPLINK, "SYN-ACK", &reply(p, SYN | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
        assert_eq!(out_dport(&out), sport, "reply delivered to the flow");
        h.check("ACK", &from_ep(sport, ACK), TC_ACT_REDIRECT, reason::FWD_NAT);
        h.check("FIN from the endpoint", &from_ep(sport, FIN | ACK), TC_ACT_REDIRECT, reason::FWD_NAT);
        h.check_prog(UPLINK, "FIN from the remote", &reply(p, FIN | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
        if last_ack {
            h.check("last ACK", &from_ep(sport, ACK), TC_ACT_REDIRECT, reason::FWD_NAT);
        }
        p
    };
    // The flows of the caller (its 10-port range to `remote:80` full, and a
    // fragmented flow to port 443).
    let base = h.ct().len();
    assert_eq!(base, 22);

    // Half-closed and closed-but-unacknowledged flows keep their port.
    let p0 = nport(h, 41000);
    h.check_prog(UPLINK, "SYN-ACK", &reply(p0, SYN | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    h.check("FIN from the endpoint", &from_ep(41000, FIN | ACK), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(fwd(h, 41000).unwrap().state, CT_TCP_CLOSING);
    h.check("one FIN: port kept", &syn_a(remote, 42001), TC_ACT_REDIRECT, reason::DROP_NAT_NO_PORT);
    h.check_prog(UPLINK, "FIN from the remote", &reply(p0, FIN | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    let e = fwd(h, 41000).unwrap();
    assert_eq!((e.state, e.flags & CT_F_DONE), (CT_TCP_CLOSED, 0));
    h.check("last FIN unacknowledged: port kept", &syn_a(remote, 42001), TC_ACT_REDIRECT, reason::DROP_NAT_NO_PORT);
    h.check("last ACK", &from_ep(41000, ACK), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_ne!(fwd(h, 41000).unwrap().flags & CT_F_DONE, 0);

    // A new flow takes the finished flow's port over; the finished flow
    // is forgotten and the replies go to the new one.
    let r = reused(h);
    let (out, _) =
        h.check("takes over a finished flow's port", &syn_a(remote, 42001), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(out_sport(&out), p0);
    assert_eq!(reused(h), r + 1);
    assert!(fwd(h, 41000).is_none(), "the finished flow is gone");
    assert_eq!(h.ct().len(), base);
    let (out, _) =
        h.check_prog(UPLINK, "reply to the new flow", &reply(p0, SYN | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    assert_eq!(out_dport(&out), 42001);
    // The old flow's late packets are not translated any more.
    h.check("late ACK of the finished flow", &from_ep(41000, ACK), TC_ACT_SHOT, reason::DROP_CT_INVALID);

    // Live flows are never stolen.
    h.check("every port live", &syn_a(remote, 42002), TC_ACT_REDIRECT, reason::DROP_NAT_NO_PORT);
    assert_eq!(h.ct().len(), base);

    // A reset flow's port is free at once.
    let p1 = nport(h, 41001);
    h.check_prog(UPLINK, "RST from the remote", &reply(p1, RST | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    let (out, _) = h.check("takes over a reset flow's port", &syn_a(remote, 42002), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(out_sport(&out), p1);
    assert!(fwd(h, 41001).is_none());

    // A new SYN on the tuple of a finished flow (the client reuses its
    // port) restarts it: same NAT port, fresh state and counters.
    let p2 = close(h, 41002, true);
    assert_ne!(fwd(h, 41002).unwrap().flags & CT_F_DONE, 0);
    let (c, r) = (created(h), reused(h));
    let (out, _) = h.check("SYN on a finished flow's tuple", &syn_a(remote, 41002), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(out_sport(&out), p2);
    let e = fwd(h, 41002).unwrap();
    assert_eq!(e.state, CT_TCP_SYN_SENT);
    assert_eq!(e.flags & (CT_F_DONE | CT_F_TX_FIN | CT_F_RX_FIN), 0);
    assert_eq!((e.tx_packets, e.rx_packets), (1, 0), "counters restart");
    assert_eq!((created(h), reused(h)), (c, r + 1));
    assert_eq!(h.ct().len(), base);
    let (out, _) =
        h.check_prog(UPLINK, "reply to the restarted flow", &reply(p2, SYN | ACK), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    assert_eq!(out_dport(&out), 41002);

    // Closed by both FINs, unacknowledged, but expired: taken over.
    {
        let mut cfg: Array<_, CtConfig> =
            Array::try_from(h.ebpf.map_mut(datapath_common::MAP_CT_CONFIG).unwrap()).unwrap();
        cfg.set(0, CtConfig { tcp_closing: 1, ..Default::default() }, 0).unwrap();
    }
    let p3 = close(h, 41003, false);
    h.check("expiring: port kept", &syn_a(remote, 42003), TC_ACT_REDIRECT, reason::DROP_NAT_NO_PORT);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, _) =
        h.check("takes over an expired flow's port", &syn_a(remote, 42003), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(out_sport(&out), p3);
    assert!(fwd(h, 41003).is_none());
    {
        let mut cfg: Array<_, CtConfig> =
            Array::try_from(h.ebpf.map_mut(datapath_common::MAP_CT_CONFIG).unwrap()).unwrap();
        cfg.set(0, CtConfig::default(), 0).unwrap();
    }
    assert_eq!(h.ct().len(), base);
}

fn syn_a(remote: Ipv4Addr, sport: u16) -> Vec<u8> {
    eth(GW_MAC, A_MAC, 0x0800, &ipv4_tcp(A_IP, remote, sport, 80, 0x02))
}

/// An IPv6 packet: fixed header (payload length `plen`, next header `nh`)
/// and `payload`.
fn ipv6(src: [u8; 16], dst: [u8; 16], nh: u8, plen: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&plen.to_be_bytes());
    p.extend_from_slice(&[nh, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// A neighbour solicitation (135) or advertisement (136) for `target` with
/// one link-layer address option (1: source, 2: target) carrying `mac`.
fn nd(kind: u8, target: [u8; 16], opt: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target);
    m.extend_from_slice(&[opt, 1]);
    m.extend_from_slice(&mac);
    m
}

/// IPv6 from an endpoint of a dual-stack network (`ENDPOINTS6`), the
/// interim: checked in `dp_from_ep`, handed to the bridge. Bounds
/// (truncated, payload length beyond the frame, extension headers past the
/// payload or beyond the bound), the source (own address, link-local from
/// the MAC, `::` only for DAD and MLD), neighbour discovery claiming another
/// address or MAC, router advertisements; an endpoint without an IPv6
/// address (B) keeps dropping IPv6 as before.
#[test]
fn dp_from_ep_ipv6() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut h = harness();
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0));
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, 0);
    let mut six: HashMap<_, u32, datapath_common::Endpoint6> =
        HashMap::try_from(h.ebpf.map_mut(datapath_common::MAP_ENDPOINTS6).unwrap()).unwrap();
    six.insert(A_IFINDEX, datapath_common::Endpoint6 { ip6: v6("fd00:7::2") }, 0).unwrap();
    let (own, peer, other) = (v6("fd00:7::2"), v6("fd00:7::3"), v6("fd00:7::9"));
    // fe80:: + modified EUI-64 of A_MAC (02:dd:00:00:00:0a).
    let ll = v6("fe80::dd:ff:fe00:a");
    let udp = [0x13u8, 0x88, 0x17, 0x70, 0, 8, 0, 0];
    let frame = |dst: [u8; 6], p: &[u8]| eth(dst, A_MAC, 0x86dd, p);
    let pass = |h: &mut Harness, what: &str, f: &[u8]| {
        h.check(what, f, TC_ACT_OK, reason::PASS_IPV6);
    };
    let shot = |h: &mut Harness, what: &str, f: &[u8], code: u32| {
        h.check(what, f, TC_ACT_SHOT, code);
    };
    pass(&mut h, "UDP from its address", &frame(B_MAC, &ipv6(own, peer, 17, 8, &udp)));
    pass(&mut h, "UDP from its link-local address", &frame(B_MAC, &ipv6(ll, v6("fe80::1"), 17, 8, &udp)));
    shot(&mut h, "another source", &frame(B_MAC, &ipv6(other, peer, 17, 8, &udp)), reason::DROP_SPOOFED_IP6);
    shot(&mut h, "UDP from ::", &frame(B_MAC, &ipv6([0; 16], peer, 17, 8, &udp)), reason::DROP_SPOOFED_IP6);
    let spoofed_mac = eth(B_MAC, [0x02, 0xee, 0, 0, 0, 1], 0x86dd, &ipv6(own, peer, 17, 8, &udp));
    shot(&mut h, "another MAC", &spoofed_mac, reason::DROP_SPOOFED_MAC);
    // Bounds.
    shot(
        &mut h,
        "payload length beyond the frame",
        &frame(B_MAC, &ipv6(own, peer, 17, 200, &udp)),
        reason::DROP_BAD_IPV6_HEADER,
    );
    let mut v4 = ipv6(own, peer, 17, 8, &udp);
    v4[0] = 0x45;
    shot(&mut h, "version 4", &frame(B_MAC, &v4), reason::DROP_BAD_IPV6_HEADER);
    // (A frame shorter than the fixed header cannot be run here:
    // BPF_PROG_TEST_RUN refuses an IPv6 frame without one, EINVAL.)
    // Extension headers: destination options of 8 bytes each, chained.
    let chain = |n: usize| {
        let mut p = Vec::new();
        for i in 0..n {
            p.extend_from_slice(&[if i + 1 == n { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
        }
        p.extend_from_slice(&udp);
        ipv6(own, peer, if n == 0 { 17 } else { 60 }, p.len() as u16, &p)
    };
    pass(&mut h, "6 extension headers (the bound)", &frame(B_MAC, &chain(6)));
    shot(&mut h, "7 extension headers", &frame(B_MAC, &chain(7)), reason::DROP_IPV6_EXT_CHAIN);
    let past = ipv6(own, peer, 60, 16, &[17, 5, 1, 4, 0, 0, 0, 0, 0x13, 0x88, 0x17, 0x70, 0, 8, 0, 0]);
    shot(&mut h, "extension header past the payload", &frame(B_MAC, &past), reason::DROP_BAD_IPV6_HEADER);
    // Neighbour discovery (ICMPv6, next header 58).
    let mcast = [0x33, 0x33, 0xff, 0, 0, 3];
    let icmp = |src: [u8; 16], dst: [u8; 16], m: Vec<u8>| ipv6(src, dst, 58, m.len() as u16, &m);
    pass(&mut h, "NS for a peer", &frame(mcast, &icmp(own, v6("ff02::1:ff00:3"), nd(135, peer, 1, A_MAC))));
    shot(
        &mut h,
        "NS with another source MAC option",
        &frame(mcast, &icmp(own, v6("ff02::1:ff00:3"), nd(135, peer, 1, B_MAC))),
        reason::DROP_SPOOFED_NDP,
    );
    pass(
        &mut h,
        "DAD NS for its address",
        &frame(mcast, &icmp([0; 16], v6("ff02::1:ff00:2"), nd(135, own, 14, [1, 2, 3, 4, 5, 6]))),
    );
    shot(
        &mut h,
        "DAD NS for another address",
        &frame(mcast, &icmp([0; 16], v6("ff02::1:ff00:3"), nd(135, peer, 14, [1, 2, 3, 4, 5, 6]))),
        reason::DROP_SPOOFED_NDP,
    );
    pass(&mut h, "NA for its address", &frame(B_MAC, &icmp(own, peer, nd(136, own, 2, A_MAC))));
    pass(&mut h, "NA for its link-local address", &frame(B_MAC, &icmp(ll, v6("fe80::1"), nd(136, ll, 2, A_MAC))));
    shot(
        &mut h,
        "NA for another address",
        &frame(B_MAC, &icmp(own, peer, nd(136, other, 2, A_MAC))),
        reason::DROP_SPOOFED_NDP,
    );
    shot(
        &mut h,
        "NA with another MAC",
        &frame(B_MAC, &icmp(own, peer, nd(136, own, 2, B_MAC))),
        reason::DROP_SPOOFED_NDP,
    );
    let mut zero_opt = nd(136, own, 2, A_MAC);
    zero_opt[25] = 0;
    shot(&mut h, "NA with a zero-length option", &frame(B_MAC, &icmp(own, peer, zero_opt)), reason::DROP_BAD_L4_HEADER);
    shot(
        &mut h,
        "router advertisement",
        &frame(mcast, &icmp(ll, v6("ff02::1"), vec![134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        reason::DROP_SPOOFED_NDP,
    );
    pass(
        &mut h,
        "MLDv2 report from ::",
        &frame([0x33, 0x33, 0, 0, 0, 0x16], &icmp([0; 16], v6("ff02::16"), vec![143, 0, 0, 0, 0, 0, 0, 0])),
    );
    pass(&mut h, "echo request", &frame(B_MAC, &icmp(own, peer, vec![128, 0, 0, 0, 0, 1, 0, 1])));
}

/// The ICMPv6 message `body` from `src` to `dst` has a valid checksum
/// (over the pseudo-header).
fn icmp6_sum_ok(src: &[u8], dst: &[u8], body: &[u8]) -> bool {
    let mut data = Vec::new();
    data.extend_from_slice(src);
    data.extend_from_slice(dst);
    data.extend_from_slice(&(body.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(body);
    frames::checksum(&data) == 0
}

/// The IPv6 fast path in `dp_from_ep`: unicast between endpoints of a
/// network delivered with `bpf_redirect_peer` (bridged: MAC only; routed
/// through the gateway's MAC: hop limit - 1 and the gateway's MAC as the
/// source, an expiring hop limit to the bridge), the network policy for
/// IPv6 (isolation, icc=false, internal: link-local and multicast stay on
/// the link, the gateway reachable), neighbour solicitations for the
/// gateway and for peers answered in place (the advertisement checked
/// byte for byte, checksum included), and the IPv6 trace lines.
#[test]
fn dp_from_ep_ipv6_fast_path() {
    use datapath_common::{Endpoint6, Network6Info};
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut h = harness();
    let (a6, b6, c6, gw6, gw8) = (v6("fd00:7::2"), v6("fd00:7::3"), v6("fd00:8::3"), v6("fd00:7::1"), v6("fd00:8::1"));
    let (a, b) = (endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0), endpoint(B_IFINDEX, B_IP, B_MAC, 7, 0));
    let c = endpoint(C_IFINDEX, C_IP, [0x02, 0xdd, 0, 0, 0, 0x0c], 8, 0);
    for e in [a, b, c] {
        h.set_endpoint(e);
    }
    h.set_network(7, Ipv4Addr::new(10, 199, 0, 0), 24, 0);
    h.set_network(8, Ipv4Addr::new(10, 199, 1, 0), 24, 0);
    {
        let mut six: HashMap<_, u32, Endpoint6> =
            HashMap::try_from(h.ebpf.map_mut(datapath_common::MAP_ENDPOINTS6).unwrap()).unwrap();
        six.insert(A_IFINDEX, Endpoint6 { ip6: a6 }, 0).unwrap();
        let mut by_ip: HashMap<_, [u8; 16], EndpointInfo> =
            HashMap::try_from(h.ebpf.map_mut(datapath_common::MAP_ENDPOINTS6_BY_IP).unwrap()).unwrap();
        for (ip, e) in [(a6, a), (b6, b), (c6, c)] {
            by_ip.insert(ip, e, 0).unwrap();
        }
        let mut subnets: aya::maps::LpmTrie<_, [u8; 16], u32> =
            aya::maps::LpmTrie::try_from(h.ebpf.map_mut(datapath_common::MAP_SUBNETS6).unwrap()).unwrap();
        subnets.insert(&aya::maps::lpm_trie::Key::new(64, v6("fd00:7::")), 7, 0).unwrap();
        subnets.insert(&aya::maps::lpm_trie::Key::new(64, v6("fd00:8::")), 8, 0).unwrap();
    }
    let set_net6 = |h: &mut Harness, id: u32, subnet: [u8; 16], gateway: [u8; 16], flags: u32| {
        let mut nets: Array<_, Network6Info> =
            Array::try_from(h.ebpf.map_mut(datapath_common::MAP_NETWORKS6).unwrap()).unwrap();
        let info = Network6Info { subnet, gateway, prefix_len: 64, flags: flags | NET_F_PRESENT, ..Default::default() };
        nets.set(id, info, 0).unwrap();
    };
    set_net6(&mut h, 7, v6("fd00:7::"), gw6, 0);
    set_net6(&mut h, 8, v6("fd00:8::"), gw8, 0);
    let udp = [0x13u8, 0x88, 0x17, 0x70, 0, 8, 0, 0];
    let to = |dst_mac: [u8; 6], dst: [u8; 16]| eth(dst_mac, A_MAC, 0x86dd, &ipv6(a6, dst, 17, 8, &udp));

    // Delivery, bridged: the frame as it was.
    let bridged = to(B_MAC, b6);
    let (out, lines) = h.check("IPv6 bridged redirect", &bridged, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    assert_eq!(out, bridged, "a bridged redirect leaves the frame alone");
    assert!(lines.is_empty(), "no trace without EP_F_TRACE: {lines:?}");
    // Routed: MACs rewritten, hop limit - 1, nothing else.
    let routed = to(GW_MAC, b6);
    let (out, _) = h.check("IPv6 routed redirect", &routed, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    assert_eq!((&out[0..6], &out[6..12]), (&B_MAC[..], &GW_MAC[..]), "MACs of a routed packet");
    assert_eq!(out[14 + 7], 63, "hop limit");
    assert_eq!((&out[12..21], &out[22..]), (&routed[12..21], &routed[22..]), "the rest untouched");
    let mut expiring = routed.clone();
    expiring[14 + 7] = 1;
    let (out, _) = h.check("IPv6 routed, hop limit 1", &expiring, TC_ACT_OK, reason::PASS_IPV6);
    assert_eq!(out, expiring, "an expiring packet goes to the bridge untouched (time exceeded is the kernel's)");
    // Not delivered here.
    h.check("IPv6 to the gateway", &to(GW_MAC, gw6), TC_ACT_OK, reason::PASS_IPV6);
    h.check("IPv6 to nobody of the subnet", &to(GW_MAC, v6("fd00:7::99")), TC_ACT_OK, reason::PASS_IPV6);
    h.check("IPv6 beyond, no masquerade", &to(GW_MAC, v6("2001:db8::1")), TC_ACT_OK, reason::PASS_IPV6);
    h.check("IPv6 multicast", &to([0x33, 0x33, 0, 0, 0, 1], v6("ff02::1")), TC_ACT_OK, reason::PASS_IPV6);
    // Isolation: another network's endpoint and gateway.
    h.check("IPv6 to another network", &to(GW_MAC, c6), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    h.check("IPv6 to another gateway", &to(GW_MAC, gw8), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    // icc=false: not between endpoints; the gateway stays reachable.
    set_net6(&mut h, 7, v6("fd00:7::"), gw6, NET_F_NO_ICC);
    h.check("IPv6 icc=false", &bridged, TC_ACT_SHOT, reason::DROP_POLICY_ICC);
    h.check("IPv6 icc=false, routed", &routed, TC_ACT_SHOT, reason::DROP_POLICY_ICC);
    h.check("IPv6 icc=false, gateway", &to(GW_MAC, gw6), TC_ACT_OK, reason::PASS_IPV6);
    // Internal: nothing beyond the subnet; the link and the subnet stay.
    set_net6(&mut h, 7, v6("fd00:7::"), gw6, NET_F_INTERNAL);
    h.check("IPv6 internal, beyond", &to(GW_MAC, v6("2001:db8::1")), TC_ACT_SHOT, reason::DROP_POLICY_INTERNAL);
    h.check("IPv6 internal, another network", &to(GW_MAC, c6), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    h.check("IPv6 internal, peer", &bridged, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    h.check("IPv6 internal, gateway", &to(GW_MAC, gw6), TC_ACT_OK, reason::PASS_IPV6);
    h.check("IPv6 internal, link-local", &to(GW_MAC, v6("fe80::1")), TC_ACT_OK, reason::PASS_IPV6);
    h.check("IPv6 internal, multicast", &to([0x33, 0x33, 0, 0, 0, 1], v6("ff02::1")), TC_ACT_OK, reason::PASS_IPV6);
    set_net6(&mut h, 7, v6("fd00:7::"), gw6, 0);

    // Neighbour solicitations answered in place.
    let icmp = |src: [u8; 16], dst: [u8; 16], m: Vec<u8>| ipv6(src, dst, 58, m.len() as u16, &m);
    let sum_ns = |h: &mut Harness, what: &str, f: Vec<u8>, target: [u8; 16], mac: [u8; 6], flags: u8| {
        let (out, _) = h.check(what, &f, TC_ACT_REDIRECT, reason::FWD_ND_ADVERT);
        assert_eq!(out.len(), f.len(), "{what}: the answer takes the solicitation's place");
        assert_eq!((&out[0..6], &out[6..12], &out[12..14]), (&A_MAC[..], &mac[..], &[0x86, 0xdd][..]), "{what}");
        assert_eq!(&out[14..22], &[0x60, 0, 0, 0, 0, 32, 58, 255], "{what}: IPv6 header");
        assert_eq!((&out[22..38], &out[38..54]), (&target[..], &f[22..38]), "{what}: from the target to the requester");
        let na = &out[54..];
        assert_eq!((na[0], na[1], na[4], &na[5..8]), (136, 0, flags, &[0u8, 0, 0][..]), "{what}: NA type and flags");
        assert_eq!(&na[8..24], &target[..], "{what}: target");
        assert_eq!((&na[24..26], &na[26..32]), (&[2u8, 1][..], &mac[..]), "{what}: target link-layer address option");
        assert!(icmp6_sum_ok(&out[22..38], &out[38..54], na), "{what}: ICMPv6 checksum of {:02x?}", &out[14..]);
    };
    let solicited = |t: [u8; 16]| {
        let mut d = v6("ff02::1:ff00:0");
        d[13..].copy_from_slice(&t[13..]);
        d
    };
    // Neighbour discovery travels with hop limit 255.
    let nd255 = |mut f: Vec<u8>| {
        f[14 + 7] = 255;
        f
    };
    let ns = |src: [u8; 16], dst_mac: [u8; 6], dst: [u8; 16], t: [u8; 16]| {
        nd255(eth(dst_mac, A_MAC, 0x86dd, &icmp(src, dst, nd(135, t, 1, A_MAC))))
    };
    let mcast = |t: [u8; 16]| [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    sum_ns(&mut h, "NS for a peer", ns(a6, mcast(b6), solicited(b6), b6), b6, B_MAC, 0x60);
    sum_ns(&mut h, "NS for the gateway", ns(a6, mcast(gw6), solicited(gw6), gw6), gw6, GW_MAC, 0xe0);
    sum_ns(&mut h, "NUD NS for a peer", ns(a6, B_MAC, b6, b6), b6, B_MAC, 0x60);
    let ll = v6("fe80::dd:ff:fe00:a");
    sum_ns(
        &mut h,
        "NS for the gateway from the link-local address",
        ns(ll, mcast(gw6), solicited(gw6), gw6),
        gw6,
        GW_MAC,
        0xe0,
    );
    // Not ours to answer: to the bridge.
    for (what, f) in [
        ("NS for another network's endpoint", ns(a6, mcast(c6), solicited(c6), c6)),
        ("NS for nobody", ns(a6, mcast(v6("fd00:7::99")), solicited(v6("fd00:7::99")), v6("fd00:7::99"))),
        (
            "NS for the gateway's link-local address",
            ns(a6, mcast(v6("fe80::1")), solicited(v6("fe80::1")), v6("fe80::1")),
        ),
        ("NS for itself", ns(a6, mcast(a6), solicited(a6), a6)),
        ("NS with hop limit 64", {
            let mut f = ns(a6, mcast(b6), solicited(b6), b6);
            f[14 + 7] = 64;
            f
        }),
        (
            "NS without an option",
            nd255(eth(mcast(b6), A_MAC, 0x86dd, &icmp(a6, solicited(b6), nd(135, b6, 1, A_MAC)[..24].to_vec()))),
        ),
        ("DAD NS", eth(mcast(a6), A_MAC, 0x86dd, &icmp([0; 16], solicited(a6), nd(135, a6, 14, [1, 2, 3, 4, 5, 6])))),
    ] {
        let (out, _) = h.check(what, &f, TC_ACT_OK, reason::PASS_IPV6);
        assert_eq!(out, f, "{what}: untouched");
    }

    // Traces of IPv6 frames (the sender traced).
    h.set_endpoint(endpoint(A_IFINDEX, A_IP, A_MAC, 7, EP_F_TRACE));
    let line =
        |code: u32, rest: &str| format!("ep=1 from-ep {:<w$} {rest}", reason::name(code), w = reason::NAME_WIDTH);
    let (_, lines) = h.check("traced IPv6 routed redirect", &routed, TC_ACT_REDIRECT, reason::FWD_REDIRECT_PEER);
    assert_eq!(
        lines,
        [line(
            reason::FWD_REDIRECT_PEER,
            "02:dd:00:00:00:01 > 02:dd:00:00:00:0b [fd00:7::2]:5000 > [fd00:7::3]:6000 proto=17 -> if=4242"
        )]
    );
    let (_, lines) = h.check("traced IPv6 to the gateway", &to(GW_MAC, gw6), TC_ACT_OK, reason::PASS_IPV6);
    assert_eq!(
        lines,
        [line(reason::PASS_IPV6, "02:dd:00:00:00:0a > 02:dd:00:00:00:01 [fd00:7::2]:5000 > [fd00:7::1]:6000 proto=17")]
    );
    let (_, lines) =
        h.check("traced NS answered", &ns(a6, mcast(gw6), solicited(gw6), gw6), TC_ACT_REDIRECT, reason::FWD_ND_ADVERT);
    assert_eq!(
        lines,
        [line(reason::FWD_ND_ADVERT, "02:dd:00:00:00:01 > 02:dd:00:00:00:0a fd00:7::1 > fd00:7::2 proto=58 -> if=1")]
    );
    let (_, lines) = h.check("traced IPv6 isolation", &to(GW_MAC, c6), TC_ACT_SHOT, reason::DROP_POLICY_ISOLATION);
    assert_eq!(
        lines,
        [line(
            reason::DROP_POLICY_ISOLATION,
            "02:dd:00:00:00:0a > 02:dd:00:00:00:01 [fd00:7::2]:5000 > [fd00:7::3]:6000 proto=17"
        )
        .replace("fd00:7::3", "fd00:8::3")]
    );
}

// ---------------------------------------------------------------------------
// NAT66

/// The one's complement sum (folded, not inverted) of the IPv6
/// pseudo-header of `src -> dst` (next header `nh`) and `body`: 0xffff when
/// the checksum in `body` is right.
fn sum6(src: &[u8], dst: &[u8], nh: u8, body: &[u8]) -> u16 {
    let mut s: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(src);
    add(dst);
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, nh]);
    add(body);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An L4 message of `nh` from `src` to `dst` with its checksum (at
/// `csum_at` in `body`) filled in.
fn with_sum6(src: [u8; 16], dst: [u8; 16], nh: u8, mut body: Vec<u8>, csum_at: usize) -> Vec<u8> {
    body[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let c = !sum6(&src, &dst, nh, &body);
    body[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    body
}

fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv6(src, dst, 17, u.len() as u16, &with_sum6(src, dst, 17, u, 6))
}

/// Like [`with_uplink`], the "uplink" with IPv6: 2001:db8:203::1/64, the
/// next hop 2001:db8:203::2 (static neighbour), 2001:db8:51::/64 behind it,
/// IPv6 forwarding on.
fn with_uplink6(cases: fn(u32)) {
    let claim = claim();
    let ns = claim.name("t");
    ip(&["netns", "add", &ns]);
    let sysctl = |kv: &str| {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl", "-qw", kv])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{kv}");
    };
    sysctl("net.ipv6.conf.all.disable_ipv6=0");
    sysctl("net.ipv6.conf.default.disable_ipv6=0");
    sysctl("net.ipv6.conf.lo.disable_ipv6=0");
    sysctl("net.ipv6.conf.all.forwarding=1");
    for args in [
        "link set lo up",
        "link add up0 type veth peer name up1",
        "link set up1 up",
        "addr add 2001:db8:203::1/64 dev up0 nodad",
        "link set up0 up",
        "neigh add 2001:db8:203::2 lladdr 02:00:00:00:00:02 dev up0 nud permanent",
        "route add 2001:db8:51::/64 via 2001:db8:203::2",
    ] {
        let mut v = vec!["-n", ns.as_str()];
        v.extend(args.split_whitespace());
        ip(&v);
    }
    let ns2 = ns.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns2}")).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let up = nix::net::if_::if_nametoindex("up0").unwrap();
        cases(up);
    })
    .join()
    .expect("cases passed");
}

/// NAT66 with BPF_PROG_TEST_RUN: a UDP datagram and an echo request of
/// endpoint A (fd00:7::2, network 7, which masquerades IPv6 to
/// 2001:db8:203::1 in ports 20000-20009) translated and redirected to the
/// uplink's next hop (hop limit - 1, checksums with the pseudo-header
/// valid); their replies and an ICMPv6 port unreachable about the UDP flow
/// translated back on the uplink (the quoted source address and port too,
/// inner and outer checksums valid) and delivered to A; what is not
/// translated: a TCP segment of no flow, a fragment, another protocol, a
/// malformed UDP header, an expiring hop limit, a reply of no flow, a
/// connection's reply from a published container port.
#[test]
fn nat66_translation_reverse_and_malformed() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    with_uplink6(nat66_cases);
}

fn nat66_cases(up: u32) {
    const UPLINK: &str = datapath_common::PROG_FROM_UPLINK;
    let mut h = masquerading_harness(up);
    let (own, masq, remote) = (v6("fd00:7::2"), v6("2001:db8:203::1"), v6("2001:db8:51::1"));
    let a = endpoint(A_IFINDEX, A_IP, A_MAC, 7, 0);
    {
        let mut six: HashMap<_, u32, datapath_common::Endpoint6> =
            HashMap::try_from(h.ebpf.map_mut(datapath_common::MAP_ENDPOINTS6).unwrap()).unwrap();
        six.insert(A_IFINDEX, datapath_common::Endpoint6 { ip6: own }, 0).unwrap();
        let mut by_ip6: HashMap<_, [u8; 16], EndpointInfo> =
            HashMap::try_from(h.ebpf.map_mut(datapath_common::MAP_ENDPOINTS6_BY_IP).unwrap()).unwrap();
        by_ip6.insert(own, a, 0).unwrap();
        let mut nets6: Array<_, datapath_common::Network6Info> =
            Array::try_from(h.ebpf.map_mut(datapath_common::MAP_NETWORKS6).unwrap()).unwrap();
        let n6 = datapath_common::Network6Info {
            subnet: v6("fd00:7::"),
            gateway: v6("fd00:7::1"),
            masq_addr: masq,
            prefix_len: 64,
            uplink_ifindex: up,
            flags: datapath_common::NET_F_MASQUERADE | NET_F_PRESENT,
            _pad: 0,
        };
        nets6.set(7, n6, 0).unwrap();
        let mut subnets6: aya::maps::LpmTrie<_, [u8; 16], u32> =
            aya::maps::LpmTrie::try_from(h.ebpf.map_mut(datapath_common::MAP_SUBNETS6).unwrap()).unwrap();
        subnets6.insert(&aya::maps::lpm_trie::Key::new(64, v6("fd00:7::")), 7, 0).unwrap();
    }
    let ct6_len = |h: &Harness| {
        let ct: HashMap<_, datapath_common::CtKey6, datapath_common::CtEntry6> =
            HashMap::try_from(h.ebpf.map(datapath_common::MAP_CT6).unwrap()).unwrap();
        ct.keys().count()
    };
    let from_a = |p: &[u8]| eth(GW_MAC, A_MAC, 0x86dd, p);
    let from_up = |p: &[u8]| eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 0x86dd, p);

    // UDP out: translated, to the next hop.
    let (out, _) =
        h.check("UDP out", &from_a(&udp6(own, remote, 40000, 53, b"query")), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(&out[22..38], &masq, "source translated");
    assert_eq!(&out[38..54], &remote, "destination kept");
    assert_eq!(out[21], 63, "hop limit - 1");
    assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 2], "next hop MAC");
    let port = u16::from_be_bytes([out[54], out[55]]);
    assert!((20000..=20009).contains(&port), "NAT port {port}");
    assert_eq!(sum6(&out[22..38], &out[38..54], 17, &out[54..]), 0xffff, "UDP checksum with the new pseudo-header");
    assert_eq!(ct6_len(&h), 2, "forward and reverse entries");
    let (out2, _) =
        h.check("UDP again", &from_a(&udp6(own, remote, 40000, 53, b"again")), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(u16::from_be_bytes([out2[54], out2[55]]), port, "same flow, same port");
    assert_eq!(ct6_len(&h), 2);

    // Its reply on the uplink: back to A.
    let (back, _) = h.check_prog(
        UPLINK,
        "UDP reply",
        &from_up(&udp6(remote, masq, 53, port, b"answer")),
        TC_ACT_REDIRECT,
        reason::FWD_REVNAT,
    );
    assert_eq!(&back[38..54], &own, "destination restored");
    assert_eq!(u16::from_be_bytes([back[56], back[57]]), 40000, "port restored");
    assert_eq!(back[21], 63, "hop limit - 1");
    assert_eq!((&back[0..6], &back[6..12]), (&A_MAC[..], &GW_MAC[..]), "MACs gateway -> A");
    assert_eq!(sum6(&back[22..38], &back[38..54], 17, &back[54..]), 0xffff, "UDP checksum");

    // An ICMPv6 port unreachable about the translated datagram (quoting
    // it as it left): outer destination, quoted source and port restored.
    let quoted = &out[14..];
    let mut err = vec![1u8, 4, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(quoted);
    let err = with_sum6(remote, masq, 58, err, 2);
    let (back, _) = h.check_prog(
        UPLINK,
        "port unreachable",
        &from_up(&ipv6(remote, masq, 58, err.len() as u16, &err)),
        TC_ACT_REDIRECT,
        reason::FWD_REVNAT,
    );
    assert_eq!(&back[38..54], &own, "outer destination restored");
    let inner = 54 + 8;
    assert_eq!(&back[inner + 8..inner + 24], &own, "quoted source restored");
    assert_eq!(u16::from_be_bytes([back[inner + 40], back[inner + 41]]), 40000, "quoted port restored");
    assert_eq!(sum6(&back[22..38], &back[38..54], 58, &back[54..]), 0xffff, "ICMPv6 checksum");
    assert_eq!(
        sum6(&back[inner + 8..inner + 24], &back[inner + 24..inner + 40], 17, &back[inner + 40..]),
        0xffff,
        "quoted UDP checksum"
    );

    // Echo request out, its reply back.
    let echo = |t: u8, src, dst, id: u16| {
        let m = vec![t, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1, b'p', b'i', b'n', b'g'];
        let m = with_sum6(src, dst, 58, m, 2);
        ipv6(src, dst, 58, m.len() as u16, &m)
    };
    let (out, _) = h.check("echo request", &from_a(&echo(128, own, remote, 0x77)), TC_ACT_REDIRECT, reason::FWD_NAT);
    let id = u16::from_be_bytes([out[58], out[59]]);
    assert!((20000..=20009).contains(&id), "echo id translated: {id}");
    assert_eq!(sum6(&out[22..38], &out[38..54], 58, &out[54..]), 0xffff, "ICMPv6 checksum covers the pseudo-header");
    let (back, _) =
        h.check_prog(UPLINK, "echo reply", &from_up(&echo(129, remote, masq, id)), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    assert_eq!(u16::from_be_bytes([back[58], back[59]]), 0x77, "echo id restored");
    assert_eq!(sum6(&back[22..38], &back[38..54], 58, &back[54..]), 0xffff, "ICMPv6 checksum");
    assert_eq!(ct6_len(&h), 4);

    // Not translated.
    h.check_prog(
        UPLINK,
        "reply of no flow",
        &from_up(&udp6(remote, masq, 53, 20001 + (port - 19999) % 9, b"x")),
        TC_ACT_OK,
        reason::PASS_UPLINK_HOST,
    );
    let tcp = |flags: u8, sport: u16| {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t[14] = 0xff;
        let t = with_sum6(own, remote, 6, t, 16);
        ipv6(own, remote, 6, 20, &t)
    };
    h.check("TCP ACK of no flow", &from_a(&tcp(0x10, 41000)), TC_ACT_SHOT, reason::DROP_CT_INVALID);
    {
        let mut p6: HashMap<_, datapath_common::Published6Key, u32> =
            HashMap::try_from(h.ebpf.map_mut(datapath_common::MAP_PUBLISHED6).unwrap()).unwrap();
        p6.insert(datapath_common::Published6Key::new(6, own, 41000u16.to_be()), 1, 0).unwrap();
    }
    h.check("reply of a published port", &from_a(&tcp(0x12, 41000)), TC_ACT_OK, reason::PASS_KERNEL_FLOW);
    // Fragments: the first one (offset 0, more fragments) is translated
    // and its ports remembered; a later one of the same datagram takes its
    // flow (only the source changes); one of an unknown datagram is
    // dropped; a fragment header after another extension header too.
    let frag = |off_flags: u16, id: u32, body: &[u8]| {
        let mut f = vec![17u8, 0];
        f.extend_from_slice(&off_flags.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(body);
        ipv6(own, remote, 44, f.len() as u16, &f)
    };
    let first_body = udp6(own, remote, 40002, 53, &[7u8; 16])[40..].to_vec();
    let (out, _) = h.check("first fragment", &from_a(&frag(1, 9, &first_body)), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(&out[22..38], &masq, "first fragment: source translated");
    let fport = u16::from_be_bytes([out[62], out[63]]);
    assert!((20000..=20009).contains(&fport), "first fragment: port {fport}");
    let (out, _) = h.check("later fragment", &from_a(&frag(24, 9, &[7u8; 16])), TC_ACT_REDIRECT, reason::FWD_NAT);
    assert_eq!(&out[22..38], &masq, "later fragment: source translated");
    assert_eq!(&out[62..78], &[7u8; 16], "later fragment: payload untouched");
    h.check(
        "later fragment of no datagram",
        &from_a(&frag(24, 10, &[7u8; 16])),
        TC_ACT_SHOT,
        reason::DROP_FRAG_UNKNOWN,
    );
    let mut nested = vec![44u8, 0, 1, 4, 0, 0, 0, 0];
    nested.extend_from_slice(&frag(1, 11, &first_body)[40..]);
    let nested = ipv6(own, remote, 60, nested.len() as u16, &nested);
    h.check("fragment header after another", &from_a(&nested), TC_ACT_SHOT, reason::DROP_NAT6_FRAGMENT);
    // The reply's fragments on the uplink: the first one finds the flow by
    // its ports, the later one by the first one's.
    let rfrag = |off_flags: u16, id: u32, body: &[u8]| {
        let mut f = vec![17u8, 0];
        f.extend_from_slice(&off_flags.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(body);
        from_up(&ipv6(remote, masq, 44, f.len() as u16, &f))
    };
    let rbody = udp6(remote, masq, 53, fport, &[8u8; 16])[40..].to_vec();
    let (back, _) =
        h.check_prog(UPLINK, "first reply fragment", &rfrag(1, 5, &rbody), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    assert_eq!(&back[38..54], &own, "first reply fragment: destination restored");
    assert_eq!(u16::from_be_bytes([back[64], back[65]]), 40002, "first reply fragment: port restored");
    let (back, _) =
        h.check_prog(UPLINK, "later reply fragment", &rfrag(24, 5, &[8u8; 16]), TC_ACT_REDIRECT, reason::FWD_REVNAT);
    assert_eq!(&back[38..54], &own, "later reply fragment: destination restored");
    let f = rfrag(24, 6, &[8u8; 16]);
    h.check_prog(UPLINK, "reply fragment of no datagram", &f, TC_ACT_OK, reason::PASS_UPLINK_HOST);
    h.check("GRE", &from_a(&ipv6(own, remote, 47, 4, &[0, 0, 0x08, 0])), TC_ACT_SHOT, reason::DROP_NAT_PROTO);
    let mut long = udp6(own, remote, 40003, 53, b"short");
    long[40 + 4..40 + 6].copy_from_slice(&100u16.to_be_bytes());
    h.check("UDP length beyond the payload", &from_a(&long), TC_ACT_SHOT, reason::DROP_BAD_L4_HEADER);
    let mut last_hop = udp6(own, remote, 40004, 53, b"hop");
    last_hop[7] = 1;
    h.check("hop limit 1", &from_a(&last_hop), TC_ACT_OK, reason::PASS_NAT_NOT_ROUTED);
    assert_eq!(ct6_len(&h), 6, "the fragmented flow, nothing for the others");
}
