//! Hand-built Ethernet frames for the anti-spoofing tests, sent verbatim
//! from inside an endpoint with an AF_PACKET socket ([`crate::py::RAW_SENDER`]).

use std::net::Ipv4Addr;

use crate::net::parse_mac;

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
        s += u32::from(w);
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ip(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap_or_else(|_| panic!("bad IPv4 {s}")).octets()
}

/// Ethernet + IPv4 + ICMP echo request with `marker` in the payload. All
/// checksums valid, so a receiver would accept (and answer) it.
pub fn icmp_echo(src_mac: &str, dst_mac: &str, src_ip: &str, dst_ip: &str, marker: &str, seq: u16) -> Vec<u8> {
    let mut payload = marker.as_bytes().to_vec();
    payload.extend_from_slice(format!("-{seq}-").as_bytes());
    payload.resize(payload.len() + 16, b'.');
    let mut icmp = vec![8u8, 0, 0, 0, 0x44, 0x50];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(&payload);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    let total = (20 + icmp.len()) as u16;
    let mut iph = vec![0x45u8, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&(0x1000u16.wrapping_add(seq)).to_be_bytes());
    iph.extend_from_slice(&[0x40, 0x00, 64, 1, 0, 0]);
    iph.extend_from_slice(&ip(src_ip));
    iph.extend_from_slice(&ip(dst_ip));
    let c = csum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = parse_mac(dst_mac).to_vec();
    f.extend_from_slice(&parse_mac(src_mac));
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&icmp);
    f
}

/// Ethernet + ARP (`op` 1 = request, 2 = reply) with `marker` appended
/// after the ARP body (as trailing padding, so a sniffer can recognise it).
#[allow(clippy::too_many_arguments)]
pub fn arp(
    eth_src: &str,
    eth_dst: &str,
    op: u16,
    sender_mac: &str,
    sender_ip: &str,
    target_mac: &str,
    target_ip: &str,
    marker: &str,
) -> Vec<u8> {
    let mut f = parse_mac(eth_dst).to_vec();
    f.extend_from_slice(&parse_mac(eth_src));
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&parse_mac(sender_mac));
    f.extend_from_slice(&ip(sender_ip));
    f.extend_from_slice(&parse_mac(target_mac));
    f.extend_from_slice(&ip(target_ip));
    f.extend_from_slice(marker.as_bytes());
    f
}

/// The TCP/UDP checksum over the IPv4 pseudo-header and `l4` (with its
/// checksum field zeroed by the caller).
fn l4_csum(src_ip: &str, dst_ip: &str, proto: u8, l4: &[u8]) -> u16 {
    let mut b = ip(src_ip).to_vec();
    b.extend_from_slice(&ip(dst_ip));
    b.extend_from_slice(&[0, proto]);
    b.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    b.extend_from_slice(l4);
    csum(&b)
}

/// TCP flags.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment (20-byte header, no options) with a valid checksum for
/// `src_ip` -> `dst_ip`.
pub fn tcp_segment(src_ip: &str, dst_ip: &str, sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.extend_from_slice(&[0x50, flags]);
    t.extend_from_slice(&64240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    t.extend_from_slice(payload);
    let c = l4_csum(src_ip, dst_ip, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram with a valid checksum for `src_ip` -> `dst_ip`.
pub fn udp_datagram(src_ip: &str, dst_ip: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = l4_csum(src_ip, dst_ip, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// Ethernet + IPv4 (valid header checksum, TTL 64) carrying `l4` as
/// protocol `proto`; `frag` is the flags/fragment-offset field (e.g.
/// 0x4000 = DF, 0x2000 = MF, offset in 8-byte units in the low 13 bits).
#[allow(clippy::too_many_arguments)]
pub fn ipv4(
    src_mac: &str,
    dst_mac: &str,
    src_ip: &str,
    dst_ip: &str,
    proto: u8,
    id: u16,
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut iph = vec![0x45u8, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&id.to_be_bytes());
    iph.extend_from_slice(&frag.to_be_bytes());
    iph.extend_from_slice(&[64, proto, 0, 0]);
    iph.extend_from_slice(&ip(src_ip));
    iph.extend_from_slice(&ip(dst_ip));
    let c = csum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = parse_mac(dst_mac).to_vec();
    f.extend_from_slice(&parse_mac(src_mac));
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(l4);
    f
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = icmp_echo("02:00:00:00:00:01", "02:00:00:00:00:02", "10.10.0.2", "10.10.0.3", "M", 1);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        // A correct header sums to 0xffff (checksum of it is 0).
        assert_eq!(csum(&f[14..34]), 0);
        assert_eq!(csum(&f[34..]), 0);
        assert_eq!(&f[26..30], &[10, 10, 0, 2]);
    }

    #[test]
    fn tcp_and_udp_checksums_verify() {
        let t = tcp_segment("10.10.0.2", "203.0.113.1", 40000, 80, 1, TCP_SYN, b"");
        assert_eq!(l4_csum("10.10.0.2", "203.0.113.1", 6, &t), 0);
        let u = udp_datagram("10.10.0.2", "203.0.113.1", 40000, 53, b"abc");
        assert_eq!(l4_csum("10.10.0.2", "203.0.113.1", 17, &u), 0);
        let f = ipv4("02:00:00:00:00:01", "02:00:00:00:00:02", "10.10.0.2", "203.0.113.1", 17, 7, 0x2000, &u);
        assert_eq!(csum(&f[14..34]), 0);
        assert_eq!(&f[20..22], &[0x20, 0x00]);
    }

    #[test]
    fn arp_layout() {
        let f = arp(
            "02:00:00:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            2,
            "02:00:00:00:00:01",
            "10.10.0.3",
            "00:00:00:00:00:00",
            "10.10.0.3",
            "MK",
        );
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[28..32], &[10, 10, 0, 3]);
        assert!(f.ends_with(b"MK"));
    }
}
