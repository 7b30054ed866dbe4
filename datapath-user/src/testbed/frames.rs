//! Hand-built frames: Ethernet, ARP, IPv4, TCP, UDP and ICMP echo, with valid
//! checksums unless the caller breaks them on purpose. Used by the program
//! tests (`BPF_PROG_TEST_RUN`) and by the integration tests (sent verbatim
//! from inside an endpoint with an AF_PACKET socket).

use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// VLAN tag protocols: 802.1Q, 802.1ad (QinQ S-tag), the pre-standard QinQ.
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_QINQ1: u16 = 0x9100;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 flags/fragment-offset field: don't fragment, more fragments.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The Internet checksum of `b` (odd lengths padded with a zero byte). A
/// header that carries a correct checksum sums to 0.
pub fn checksum(b: &[u8]) -> u16 {
    !ones_sum(b)
}

/// One's complement sum of `b`, folded (odd lengths padded with zero).
fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
        s += u32::from(w);
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut b = src.octets().to_vec();
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&[0, proto]);
    b.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    b.extend_from_slice(l4);
    b
}

/// The TCP/UDP checksum over the IPv4 pseudo-header and `l4` (whose checksum
/// field the caller zeroed; a segment with a valid checksum gives 0).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    checksum(&pseudo_header(src, dst, proto, l4))
}

/// One's complement sum of the pseudo-header taken from the IPv4 header
/// `ip` and the segment `seg`: 0xffff for a segment with a valid checksum.
pub fn l4_sum(ip: &[u8], seg: &[u8]) -> u16 {
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    ones_sum(&pseudo_header(src, dst, ip[9], seg))
}

/// Ethernet header + `payload`.
pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` (an Ethernet frame) with VLAN tags inserted after the MACs,
/// outermost first: `(tag protocol, TCI)` each, e.g.
/// `[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)]` for QinQ.
pub fn vlan_tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv4 header (20 bytes, no options).
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units in the low 13 bits).
    pub frag: u16,
}

impl Ipv4 {
    /// TTL 64, id 0, no flags.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
        Ipv4 { src, dst, proto, ttl: 64, id: 0, frag: 0 }
    }

    /// The packet: this header (total length and checksum filled in) + `l4`.
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut p = vec![0x45u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&self.id.to_be_bytes());
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }
}

/// Recomputes the header checksum of the IPv4 header at `frame[at..at + 20]`
/// (after the caller changed a field).
pub fn fix_ipv4_checksum(frame: &mut [u8], at: usize) {
    frame[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[at..at + 20]);
    frame[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// A TCP header (20 bytes, no options).
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl Tcp {
    /// Sequence and acknowledgment numbers 0, window 64240.
    pub fn new(sport: u16, dport: u16, flags: u8) -> Tcp {
        Tcp { sport, dport, seq: 0, ack: 0, flags, window: 64240 }
    }

    /// The segment with `payload`, its checksum valid for `src` -> `dst`.
    pub fn segment(&self, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut t = self.sport.to_be_bytes().to_vec();
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.extend_from_slice(&[0x50, self.flags]);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        t.extend_from_slice(payload);
        let c = l4_checksum(src, dst, IPPROTO_TCP, &t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }
}

/// A UDP datagram with a valid checksum for `src` -> `dst`.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = l4_checksum(src, dst, IPPROTO_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMP echo request with its checksum.
pub fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    icmp
}

/// An ARP body for IPv4 over Ethernet (`op` 1 = request, 2 = reply).
pub fn arp(op: u16, sender_mac: Mac, sender_ip: Ipv4Addr, target_mac: Mac, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sender_mac);
    p.extend_from_slice(&sender_ip.octets());
    p.extend_from_slice(&target_mac);
    p.extend_from_slice(&target_ip.octets());
    p
}

/// Ethernet + IPv4 + ICMP echo request (id 0x4450, IPv4 id 0x1000 + `seq`,
/// DF) whose payload is `marker`, `-SEQ-` and 16 dots, so a sniffer can
/// recognise it. All checksums valid: a receiver would answer it.
pub fn icmp_echo_frame(src_mac: Mac, dst_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, marker: &str, seq: u16) -> Vec<u8> {
    let mut payload = marker.as_bytes().to_vec();
    payload.extend_from_slice(format!("-{seq}-").as_bytes());
    payload.resize(payload.len() + 16, b'.');
    let ip = Ipv4 { id: 0x1000u16.wrapping_add(seq), frag: IP_DF, ..Ipv4::new(src, dst, IPPROTO_ICMP) };
    eth(dst_mac, src_mac, ETH_P_IPV4, &ip.packet(&icmp_echo(0x4450, seq, &payload)))
}

/// Parses "aa:bb:cc:dd:ee:ff" (panics on anything else: test input).
pub fn parse_mac(s: &str) -> Mac {
    let v: Vec<u8> =
        s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad MAC {s}"))).collect();
    v.try_into().unwrap_or_else(|_| panic!("bad MAC {s}"))
}

/// Parses a dotted IPv4 address (panics on anything else: test input).
pub fn parse_ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|_| panic!("bad IPv4 {s}"))
}

/// "aa:bb:cc:dd:ee:ff".
pub fn mac_str(m: Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Lowercase hex, no separators.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 3);
    const O: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const M1: Mac = [2, 0, 0, 0, 0, 1];
    const M2: Mac = [2, 0, 0, 0, 0, 2];

    #[test]
    fn vlan_tags_go_between_the_macs_and_the_ethertype() {
        let f = icmp_echo_frame(M1, M2, A, B, "M", 1);
        let q = vlan_tagged(&f, &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 0x2000 | 200)]);
        assert_eq!(q.len(), f.len() + 8);
        assert_eq!(&q[..12], &f[..12]);
        assert_eq!(&q[12..20], &[0x88, 0xa8, 0, 100, 0x81, 0x00, 0x20, 200]);
        assert_eq!(&q[20..], &f[12..]);
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = icmp_echo_frame(M1, M2, A, B, "M", 1);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        // A correct header sums to 0xffff (checksum of it is 0).
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(checksum(&f[34..]), 0);
        assert_eq!(&f[26..30], &[10, 10, 0, 2]);
        assert_eq!(&f[18..20], &[0x10, 0x01]);
    }

    #[test]
    fn tcp_and_udp_checksums_verify() {
        let t = Tcp::new(40000, 80, TCP_SYN).segment(A, O, b"");
        assert_eq!(l4_checksum(A, O, IPPROTO_TCP, &t), 0);
        let u = udp(A, O, 40000, 53, b"abc");
        assert_eq!(l4_checksum(A, O, IPPROTO_UDP, &u), 0);
        let p = Ipv4 { id: 7, frag: IP_MF, ..Ipv4::new(A, O, IPPROTO_UDP) }.packet(&u);
        assert_eq!(l4_sum(&p[..20], &p[20..]), 0xffff);
        let f = eth(M2, M1, ETH_P_IPV4, &p);
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(&f[20..22], &[0x20, 0x00]);
        let mut g = f.clone();
        g[22] = 1;
        fix_ipv4_checksum(&mut g, 14);
        assert_eq!(checksum(&g[14..34]), 0);
    }

    #[test]
    fn arp_layout() {
        let mut body = arp(2, M1, B, [0; 6], B);
        body.extend_from_slice(b"MK");
        let f = eth(BROADCAST, M1, ETH_P_ARP, &body);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[28..32], &[10, 10, 0, 3]);
        assert!(f.ends_with(b"MK"));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:dd:00:00:00:0a"), [2, 0xdd, 0, 0, 0, 0x0a]);
        assert_eq!(mac_str([2, 0xdd, 0, 0, 0, 0x0a]), "02:dd:00:00:00:0a");
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
