//! Frame layout: Ethernet, ARP and IPv4 headers, bounds-checked access to
//! the linear packet data, the L4 header fields the NAT needs, and the few
//! `__sk_buff` fields the programs read.
//!
//! References into packet data handed out here are bounds-checked against
//! `data_end`. A helper that may move the packet (`bpf_skb_pull_data`,
//! `bpf_skb_store_bytes`, the checksum helpers, ...) invalidates them: the
//! verifier rejects any access through a pointer taken before such a call,
//! so a stale one fails at load time, never at run time. Callers take them
//! again after such calls.

use aya_ebpf::programs::TcContext;
use datapath_common::{CtKey, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// VLAN tag protocols: 802.1Q, 802.1ad (QinQ) and the old QinQ 0x9100.
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_QINQ1: u16 = 0x9100;
/// IPv4-over-Ethernet ARP body.
pub const ARP_LEN: usize = 28;
pub const IPV4_MIN_HLEN: usize = 20;
/// Ethernet and the fixed IPv4 header.
pub const HDRS_LEN: usize = ETH_HLEN + IPV4_MIN_HLEN;
/// Offsets (from the start of the frame) of the IPv4 header fields written
/// with helpers or in a header copy.
pub const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;
/// `frag_off` bits: more fragments, offset (host order).
pub const IP_MF_OFFSET: u16 = 0x3fff;
/// `frag_off`: the fragment offset alone (non-zero: not the first fragment).
pub const IP_OFFSET: u16 = 0x1fff;
pub const IP_DF: u16 = 0x4000;
/// `skb->pkt_type` for frames addressed to this host.
pub const PACKET_HOST: u32 = 0;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// A MAC address as three 16-bit words (bytes in wire order), so it is read,
/// compared and written with three 2-byte accesses instead of six 1-byte ones.
pub type Mac = [u16; 3];

#[repr(C)]
pub struct EthHdr {
    pub dst: Mac,
    pub src: Mac,
    /// Big endian.
    pub proto: u16,
}

#[repr(C)]
pub struct ArpHdr {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    /// Big endian.
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    /// Big endian.
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<ArpHdr>() == ARP_LEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_MIN_HLEN);

/// Whether the group (broadcast/multicast) bit of a MAC is set.
#[inline(always)]
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0].to_ne_bytes()[0] & 1 != 0
}

/// The `[u8; 6]` MAC of the shared types as a [`Mac`].
#[inline(always)]
pub fn mac(b: [u8; 6]) -> Mac {
    [u16::from_ne_bytes([b[0], b[1]]), u16::from_ne_bytes([b[2], b[3]]), u16::from_ne_bytes([b[4], b[5]])]
}

/// Makes sure the first `n` bytes of the frame are in the linear area, so
/// that a failing accessor below `n` really means a short frame. Pulls only
/// when they are not (never the payload: pulling from a cloned skb, which
/// every TCP segment is, copies the whole head). `false`: the frame is
/// shorter than `n`.
#[inline(always)]
pub fn linear(ctx: &TcContext, n: usize) -> bool {
    if ctx.data() + n <= ctx.data_end() {
        return true;
    }
    if (ctx.len() as usize) < n {
        return false;
    }
    ctx.pull_data(n as u32).is_ok() && ctx.data() + n <= ctx.data_end()
}

/// Bounds-checked pointer to a `T` at `off` bytes into the linear packet data.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// A header (or any plain-data `T`) at `off` in the linear packet data.
#[inline(always)]
fn at<'a, T>(ctx: &TcContext, off: usize) -> Option<&'a mut T> {
    // SAFETY: `ptr_at` checked that the whole `T` lies within the linear
    // data; every `T` used here is plain integers (any bit pattern valid);
    // see the module documentation for helpers that move the packet.
    ptr_at::<T>(ctx, off).map(|p| unsafe { &mut *p })
}

/// The Ethernet header.
#[inline(always)]
pub fn eth<'a>(ctx: &TcContext) -> Option<&'a mut EthHdr> {
    at(ctx, 0)
}

/// The ARP body (IPv4 over Ethernet).
#[inline(always)]
pub fn arp<'a>(ctx: &TcContext) -> Option<&'a ArpHdr> {
    at::<ArpHdr>(ctx, ETH_HLEN).map(|a| &*a)
}

/// The ARP body, for rewriting it.
#[inline(always)]
pub fn arp_mut<'a>(ctx: &TcContext) -> Option<&'a mut ArpHdr> {
    at(ctx, ETH_HLEN)
}

/// The fixed part of the IPv4 header.
#[inline(always)]
pub fn ipv4<'a>(ctx: &TcContext) -> Option<&'a mut Ipv4Hdr> {
    at(ctx, ETH_HLEN)
}

/// A copy of the Ethernet and fixed IPv4 headers, as bytes.
#[inline(always)]
pub fn hdrs_copy(ctx: &TcContext) -> Option<[u8; HDRS_LEN]> {
    at::<[u8; HDRS_LEN]>(ctx, 0).map(|h| *h)
}

/// Copies the 16 bytes at `off` (an IPv6 address) into `dst`, wherever
/// `dst` is (a map value: no stack copy). `false`: the frame is too short.
#[inline(always)]
pub fn load16(ctx: &TcContext, off: usize, dst: &mut [u8; 16]) -> bool {
    // SAFETY: helper call writing exactly the 16 bytes of `dst`.
    (unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            dst.as_mut_ptr() as *mut _,
            16,
        )
    }) == 0
}

/// `skb->ifindex`: the interface the frame came in on.
#[inline(always)]
pub fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// `skb->gso_size`: non-zero for a GSO packet.
#[inline(always)]
pub fn skb_gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// Whether the skb carries a VLAN tag out of band (`skb->vlan_tci`): the
/// kernel takes the outer 802.1Q / 802.1ad tag off a received frame before
/// TC ingress runs, leaving the inner ethertype in the frame.
#[inline(always)]
pub fn skb_vlan_present(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}

/// `skb->pkt_type`.
#[inline(always)]
pub fn skb_pkt_type(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).pkt_type }
}

/// IPv4 header fields of a packet to masquerade (read by the forwarding
/// decision, used by `nat::egress`).
#[derive(Clone, Copy)]
pub struct Ip {
    pub saddr: u32,
    pub daddr: u32,
    /// Total length, host order (0: a GSO packet beyond 64 KiB).
    pub tot_len: u16,
    /// Host order.
    pub frag_off: u16,
    /// Identification, wire order (what fragments of a datagram share).
    pub id: u16,
    /// Header length in bytes.
    pub hlen: u8,
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
}

/// What the L4 header says about the flow (ports in wire order).
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    /// Offset of the L4 checksum field.
    pub csum_off: usize,
    /// Offset of the (source or destination) port we rewrite.
    pub port_off: usize,
    /// TCP flags; for ICMP the message type.
    pub tcp_flags: u8,
    /// The header is consistent: TCP data offset >= 5 and the whole TCP
    /// header before the end of the IP payload; UDP length >= 8 and not
    /// beyond it (shorter is allowed: the receiver trims, as the kernel
    /// does). Always for ICMP.
    pub sane: bool,
}

/// Reads the L4 header of a packet whose L4 starts at `l4` and whose IP
/// payload ends at `end` (offset in the frame); `first_frag`: the packet is
/// the first fragment of a datagram, whose UDP length covers the whole
/// datagram, beyond `end`. `None`: too
/// short (the caller drops or passes). For ICMP, `sport`/`dport` follow the
/// `CtKey` convention (request: id as sport, reply: id as dport) and
/// `tcp_flags` carries the ICMP type.
#[inline(always)]
pub fn read_l4(ctx: &TcContext, proto: u8, l4: usize, end: usize, first_frag: bool) -> Option<L4> {
    match proto {
        IPPROTO_TCP => {
            let h: [u8; 20] = ctx.load(l4).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                csum_off: l4 + 16,
                port_off: l4,
                tcp_flags: h[13],
                sane: h[12] >= 0x50 && l4 + usize::from(h[12] >> 4) * 4 <= end,
            })
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = ctx.load(l4).ok()?;
            Some(L4 {
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                csum_off: l4 + 6,
                port_off: l4,
                tcp_flags: 0,
                sane: {
                    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
                    len >= 8 && (first_frag || l4 + len <= end)
                },
            })
        }
        _ => {
            let h: [u8; 8] = ctx.load(l4).ok()?;
            let id = u16::from_ne_bytes([h[4], h[5]]);
            let (sport, dport) = CtKey::icmp_echo_ports(h[0] == ICMP_ECHO_REQUEST, id);
            Some(L4 { sport, dport, csum_off: l4 + 2, port_off: l4 + 4, tcp_flags: h[0], sane: true })
        }
    }
}
