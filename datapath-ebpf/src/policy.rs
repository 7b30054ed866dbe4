//! The forwarding decision for a frame from an endpoint: only untagged
//! Ethernet II IPv4 and ARP (and IPv6 on dual-stack networks, `ipv6`'s),
//! identity checks (source MAC, source IPv4; ARP
//! is `arp`'s: sender check and proxy ARP), IPv4 header sanity, network policy
//! (isolation between networks, icc=false, internal networks) and where the
//! packet goes next: handed to the kernel, dropped, delivered to another
//! endpoint (`local`, done here), or masqueraded out the uplink (handed to
//! `nat` by the caller).

use aya_ebpf::programs::TcContext;
use datapath_common::{reason, EndpointInfo, NetworkInfo, NET_F_INTERNAL, NET_F_MASQUERADE, NET_F_NO_ICC};

use crate::{
    arp,
    hdr::{
        self, is_multicast, linear, mac, Ip, Mac, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6,
        ETH_P_QINQ1, IPV4_MIN_HLEN,
    },
    local::{self, Delivery},
    maps,
    nat::{NatRequest, Snat},
    verdict::{drop, pass, Verdict},
};

/// Where a frame from an endpoint goes next.
pub enum Next {
    /// Decided (delivered to another endpoint, handed to the kernel,
    /// dropped): counted, traced and returned as is.
    Verdict(Verdict),
    /// Beyond the node from a masquerading network: a published port's
    /// flow (`ports`), else `nat::egress`.
    Masquerade(NatRequest),
    /// To the sender's gateway, or routed beyond the node without
    /// masquerade: a published port's flow (`ports`), else the bridge.
    ToNode(Ip),
    /// IPv6: `ipv6::from_endpoint`, called by the
    /// caller so that its frame is not stacked on this one.
    Ipv6,
}

impl From<Verdict> for Next {
    #[inline(always)]
    fn from(v: Verdict) -> Self {
        Next::Verdict(v)
    }
}

/// The decision for a frame sent by endpoint `src` (and the delivery to
/// another endpoint). Out of line; the NAT is done by the caller, so its
/// stack frames are not stacked on this one (512 bytes for the whole chain).
#[inline(never)]
pub fn decide(ctx: &TcContext, src: &EndpointInfo) -> Next {
    // First of all, the frame's shape: a VLAN tag (the outer one the kernel
    // took off into skb->vlan_tci, or one still in the frame) or any
    // ethertype but IPv4 and ARP would carry what the checks below never
    // see past the bridge, the node and the uplink.
    if hdr::skb_vlan_present(ctx) {
        return drop(reason::DROP_VLAN_TAGGED).into();
    }
    if !linear(ctx, ETH_HLEN) {
        return drop(reason::DROP_TRUNCATED).into();
    }
    let Some(eth) = hdr::eth(ctx) else {
        return drop(reason::DROP_TRUNCATED).into();
    };
    let (eth_dst, eth_src, proto) = (eth.dst, eth.src, u16::from_be(eth.proto));
    if proto != ETH_P_IP && proto != ETH_P_ARP && proto != ETH_P_IPV6 {
        return match proto {
            ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1 => drop(reason::DROP_VLAN_TAGGED).into(),
            _ => drop(reason::DROP_ETHERTYPE).into(),
        };
    }
    if proto == ETH_P_IPV6 {
        // Its own checks (the source MAC among them), or drop-ethertype
        // on an IPv4-only network as before.
        return Next::Ipv6;
    }
    if eth_src != mac(src.mac) {
        return drop(reason::DROP_SPOOFED_MAC).into();
    }
    if proto == ETH_P_ARP {
        return arp::from_endpoint(ctx, src).into();
    }

    ipv4(ctx, src, &eth_dst)
}

/// Checks the IPv4 header (version, lengths, the whole header linear);
/// returns the header length and the destination address.
#[inline(always)]
fn check_ipv4(ctx: &TcContext, src: &EndpointInfo) -> Result<(usize, u32), Verdict> {
    if !linear(ctx, ETH_HLEN + IPV4_MIN_HLEN) {
        return Err(drop(reason::DROP_TRUNCATED));
    }
    let Some(ip) = hdr::ipv4(ctx) else {
        return Err(drop(reason::DROP_TRUNCATED));
    };
    let (version_ihl, tot_len, saddr, daddr) =
        (ip.version_ihl, usize::from(u16::from_be(ip.tot_len)), ip.saddr, ip.daddr);
    let hlen = usize::from(version_ihl & 0x0f) * 4;
    // A GSO packet beyond 64 KiB (BIG TCP) carries tot_len 0; its real length
    // is the skb's.
    let big_gso = tot_len == 0 && hdr::skb_gso_size(ctx) != 0;
    if version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || (tot_len < hlen && !big_gso) {
        return Err(drop(reason::DROP_BAD_IPV4_HEADER));
    }
    if !big_gso && ETH_HLEN + tot_len > ctx.len() as usize {
        return Err(drop(reason::DROP_TRUNCATED));
    }
    // IPv4 options: the whole header must be there too (the pull, if any,
    // moves the packet: headers are taken again afterwards).
    if hlen > IPV4_MIN_HLEN && !linear(ctx, ETH_HLEN + (hlen & 0x3c)) {
        return Err(drop(reason::DROP_TRUNCATED));
    }
    if saddr != src.ipv4 {
        return Err(drop(reason::DROP_SPOOFED_IP));
    }
    Ok((hlen, daddr))
}

/// Unicast or multicast IPv4 from `src` (whose frame goes to `eth_dst`).
#[inline(always)]
fn ipv4(ctx: &TcContext, src: &EndpointInfo, eth_dst: &Mac) -> Next {
    let (hlen, daddr) = match check_ipv4(ctx, src) {
        Ok(v) => v,
        Err(v) => return v.into(),
    };
    if is_multicast(eth_dst) {
        return pass(reason::PASS_BROADCAST).into();
    }
    let dst = maps::endpoint_by_ip(daddr);
    let routed = *eth_dst == mac(src.gw_mac);

    // Network policy (Docker's isolation, icc=false, internal networks).
    if let Some(net) = maps::network(src.network_id) {
        if let Some(next) = network_policy(ctx, src, &dst, &net, daddr, hlen, routed) {
            return next;
        }
        // The gateway is the node: maybe a published port.
        if dst.is_none() && daddr == net.gateway {
            return match ip_of(ctx, daddr, hlen) {
                Some(ip) => Next::ToNode(ip),
                None => drop(reason::DROP_TRUNCATED).into(),
            };
        }
    }

    let Some(dst) = dst else {
        return pass(reason::PASS_TO_BRIDGE).into();
    };
    if dst.network_id != src.network_id || dst.ifindex == src.ifindex {
        return Verdict { dst_flags: dst.flags, ..pass(reason::PASS_TO_BRIDGE) }.into();
    }
    local::deliver(ctx, &Delivery { dst, routed }).into()
}

/// The IPv4 header fields of the packet (destination `daddr`, header
/// length `hlen`) for the NAT and published ports.
#[inline(always)]
fn ip_of(ctx: &TcContext, daddr: u32, hlen: usize) -> Option<Ip> {
    let ip = hdr::ipv4(ctx)?;
    Some(Ip {
        saddr: ip.saddr,
        daddr,
        tot_len: u16::from_be(ip.tot_len),
        hlen: hlen as u8,
        proto: ip.proto,
        ttl: ip.ttl,
        tos: ip.tos,
        frag_off: u16::from_be(ip.frag_off),
        id: ip.id,
    })
}

/// The network's policy for a packet from `src` to `daddr` (`dst`: the
/// endpoint there, if any; `routed`: sent to the gateway's MAC). `None`: no
/// objection, the packet goes on as between endpoints.
#[inline(always)]
fn network_policy(
    ctx: &TcContext,
    src: &EndpointInfo,
    dst: &Option<EndpointInfo>,
    net: &NetworkInfo,
    daddr: u32,
    hlen: usize,
    routed: bool,
) -> Option<Next> {
    if let Some(d) = dst {
        if d.network_id == src.network_id && d.ifindex != src.ifindex && net.flags & NET_F_NO_ICC != 0 {
            return Some(Verdict { dst_flags: d.flags, ..drop(reason::DROP_POLICY_ICC) }.into());
        }
    }
    if daddr & net.mask == net.subnet {
        return None;
    }
    let local = match maps::subnet_of(daddr) {
        Some(id) if id != src.network_id => return Some(drop(reason::DROP_POLICY_ISOLATION).into()),
        Some(_) => true,
        None => false,
    };
    if net.flags & NET_F_INTERNAL != 0 && daddr != net.gateway {
        return Some(drop(reason::DROP_POLICY_INTERNAL).into());
    }
    // Beyond the node from a masquerading network, routed through the
    // gateway: source NAT here, out the uplink directly.
    if !local && routed {
        let Some(ip) = ip_of(ctx, daddr, hlen) else {
            return Some(drop(reason::DROP_TRUNCATED).into());
        };
        if net.flags & NET_F_MASQUERADE == 0 || net.masq_addr == 0 {
            return Some(Next::ToNode(ip));
        }
        let snat = Snat {
            addr: net.masq_addr,
            uplink_ifindex: net.uplink_ifindex,
            port_min: net.nat_port_min,
            port_max: net.nat_port_max,
            network_id: src.network_id,
        };
        return Some(Next::Masquerade(NatRequest { snat, ip }));
    }
    None
}
