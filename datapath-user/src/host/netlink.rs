//! Topology over rtnetlink: bridges, veth pairs, addresses and routes.
//! Nothing here shells out to `ip`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use thiserror::Error;

use crate::host::netns::{self, NetnsError};

/// Ports a Linux bridge holds (`BR_MAX_PORTS` is 1024, port 0 reserved):
/// enslaving one more fails with EXFULL ("Exchange full").
pub const BRIDGE_MAX_PORTS: usize = 1023;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink {what}: {message}")]
    Request { what: String, message: String, errno: i32 },
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interface {0:?} not found")]
    NoSuchLink(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
            _ => 0,
        };
        let message = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        };
        NetlinkError::Request { what, message, errno }
    }
}

const ENOENT: i32 = 2;
const ENODEV: i32 = 19;

/// A route-netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside the namespace at `path`: the socket is opened by a
    /// thread that entered it, and stays bound to it.
    pub async fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        let path = path.to_path_buf();
        // Opening the socket means entering the namespace on a thread of
        // its own (started and joined): kept off the async workers.
        let opened = tokio::task::spawn_blocking(move || {
            netns::run_in(&path, move || {
                let _guard = rt.enter();
                rtnetlink::new_connection().map(|(c, h, _)| (c, h))
            })
        })
        .await
        .map_err(|e| NetlinkError::Socket(std::io::Error::other(e)))?;
        let (conn, handle) = opened?.map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == ENODEV => Ok(None),
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link_by_name(name).await?.map(|l| l.header.index))
    }

    pub async fn require_index(&self, name: &str) -> Result<u32, NetlinkError> {
        self.link_index(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// Creates an up bridge with a fixed MAC (so the gateway MAC never
    /// changes as ports come and go) and returns its ifindex.
    pub async fn create_bridge(&self, name: &str, mac: [u8; 6], mtu: Option<u32>) -> Result<u32, NetlinkError> {
        let mut b = LinkBridge::new(name).address(mac.to_vec());
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.handle.link().add(b.build()).execute().await.map_err(req(format!("create bridge {name}")))?;
        self.require_index(name).await
    }

    /// Creates a veth pair in one request: `host` stays here, up and (when
    /// given) enslaved to `controller`; `peer` is created directly in the namespace at
    /// `peer_netns` with the given MAC. Returns the host end's ifindex.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &Path,
        peer_mac: [u8; 6],
        controller: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        self.veth(host, peer, peer_netns, peer_mac, mtu, Some(controller)).await
    }

    /// A veth pair whose host end stays down and outside any bridge: it
    /// passes no traffic until [`Netlink::enslave_up`] (the agent attaches
    /// the endpoint's program first).
    pub async fn create_veth_down(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &Path,
        peer_mac: [u8; 6],
        mtu: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        self.veth(host, peer, peer_netns, peer_mac, mtu, None).await
    }

    /// A veth with both ends down in this namespace; returns the host end's
    /// index. The peer is for someone else to move (Docker's sandbox).
    pub async fn create_veth_pair_down(
        &self,
        host: &str,
        peer: &str,
        peer_mac: [u8; 6],
        mtu: Option<u32>,
    ) -> Result<u32, NetlinkError> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()).address(peer_mac.to_vec());
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        let mut b = LinkVeth::new(host, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())));
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.handle.link().add(b.build()).execute().await.map_err(req(format!("create veth {host}")))?;
        self.require_index(host).await
    }

    /// `up`: `Some(controller)` brings the host end up (in that bridge when
    /// given); `None` leaves it down and alone.
    async fn veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &Path,
        peer_mac: [u8; 6],
        mtu: Option<u32>,
        up: Option<Option<u32>>,
    ) -> Result<u32, NetlinkError> {
        let ns = netns::open(peer_netns)?;
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()).address(peer_mac.to_vec());
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        let peer_msg = peer_msg.setns_by_fd(ns.as_raw_fd()).build();
        let mut b = LinkVeth::new(host, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
        if let Some(controller) = up {
            b = b.up();
            if let Some(controller) = controller {
                b = b.controller(controller);
            }
        }
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.handle.link().add(b.build()).execute().await.map_err(req(format!("create veth {host}")))?;
        drop(ns);
        self.require_index(host).await
    }

    /// Puts a link into a bridge and brings it up, in one request.
    pub async fn enslave_up(&self, index: u32, bridge: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).controller(bridge).up().build();
        self.handle.link().set(msg).execute().await.map_err(req(format!("enslave link {index} to {bridge}")))
    }

    /// Hairpin mode on a bridge port (`bridge link set dev X hairpin on`):
    /// the bridge may send a frame back out the port it came in on (a
    /// kernel-datapath endpoint reaching its own published port).
    pub async fn set_hairpin(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = rtnetlink::LinkBridgePort::new(index).hairpin(true).build();
        self.handle.link().set_port(msg).execute().await.map_err(req(format!("hairpin mode on link {index}")))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle.link().set(msg).execute().await.map_err(req(format!("set link {index} up")))
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == ENODEV => Ok(()),
            Err(e) => Err(req(format!("delete link {index}"))(e)),
        }
    }

    /// Pins an endpoint on its network's bridge: a permanent neighbour entry
    /// `ip` -> `mac` on the bridge `bridge` (the node never ARPs for it,
    /// which would flood every port) and a static FDB entry `mac` on the
    /// bridge port `port` (frames for it are never flooded as unknown
    /// unicast). Replaces whatever entries were there. The FDB entry goes
    /// with the port; the neighbour entry is [`Netlink::unpin_endpoint`]'s.
    pub async fn pin_endpoint(&self, bridge: u32, port: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
        let neigh = self.handle.neighbours();
        neigh
            .add(bridge, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add neighbour {ip} on link {bridge}")))?;
        // `bridge fdb replace MAC dev PORT master static`.
        neigh
            .add_bridge(port, &mac)
            .flags(NeighbourFlags::Controller)
            .state(NeighbourState::Noarp)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add fdb entry on link {port}")))
    }

    /// Removes the neighbour entry of `ip` on `bridge`; an absent one (or
    /// bridge) is fine.
    pub async fn unpin_endpoint(&self, bridge: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        use rtnetlink::packet_route::AddressFamily;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = bridge;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if matches!(-m.raw_code(), ENOENT | ENODEV) => Ok(()),
            Err(e) => Err(req(format!("delete neighbour {ip} on link {bridge}"))(e)),
        }
    }

    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {ip}/{prefix_len}")))
    }

    /// Adds an IPv6 address usable at once: `IFA_F_NODAD` (no tentative
    /// state; the agent's IPAM already made it unique on its network).
    pub async fn add_address6(&self, index: u32, ip: Ipv6Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
        let mut add = self.handle.address().add(index, IpAddr::V6(ip), prefix_len).replace();
        let msg = add.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        add.execute().await.map_err(req(format!("add address {ip}/{prefix_len}")))
    }

    pub async fn add_default_route6(&self, gateway: Ipv6Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gateway).build();
        self.handle.route().add(msg).replace().execute().await.map_err(req(format!("add default route via {gateway}")))
    }

    /// Whether the namespace has an IPv6 default route (main table).
    pub async fn has_default_route6(&self) -> Result<bool, NetlinkError> {
        let query = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let routes: Vec<RouteMessage> =
            self.handle.route().get(query).execute().try_collect().await.map_err(req("list IPv6 routes"))?;
        Ok(routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
                && (r.header.table == 254 || r.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(254))))
        }))
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle.route().add(msg).replace().execute().await.map_err(req(format!("add default route via {gateway}")))
    }

    /// Name of a link by ifindex.
    pub async fn link_name(&self, index: u32) -> Result<Option<String>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = match links.try_next().await {
            Ok(l) => l,
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == ENODEV => None,
            Err(e) => return Err(req(format!("get link {index}"))(e)),
        };
        Ok(link.and_then(|l| {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        }))
    }

    /// Every link of the namespace: (ifindex, name).
    pub async fn links(&self) -> Result<Vec<(u32, String)>, NetlinkError> {
        let msgs: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(req("dump links"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|l| {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                Some((l.header.index, name))
            })
            .collect())
    }

    /// Every address message of a link.
    async fn address_messages(
        &self,
        index: u32,
    ) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(req(format!("list addresses of link {index}")))
    }

    /// IPv4 addresses of a link, primary first (the kernel lists them in order).
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
        let msgs = self.address_messages(index).await?;
        let mut out = Vec::new();
        let mut secondary = Vec::new();
        for m in msgs {
            let is_secondary = m
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Secondary)));
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                if is_secondary {
                    secondary.push((ip, m.header.prefix_len));
                } else {
                    out.push((ip, m.header.prefix_len));
                }
            }
        }
        out.extend(secondary);
        Ok(out)
    }

    /// Global IPv6 addresses of a link (not link-local, not tentative), in
    /// the kernel's order.
    pub async fn ipv6_global_addresses(&self, index: u32) -> Result<Vec<Ipv6Addr>, NetlinkError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
        let msgs = self.address_messages(index).await?;
        Ok(msgs
            .iter()
            .filter(|m| {
                !m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Tentative) || f.contains(AddressFlags::Dadfailed))
                })
            })
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V6(ip)) if !ip.is_unicast_link_local() && !ip.is_loopback() => {
                        Some(*ip)
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// The output interface of the IPv4 default route, if there is one.
    /// Whether the namespace has a default route (through any device).
    pub async fn has_default_route(&self) -> Result<bool, NetlinkError> {
        Ok(self.ipv4_routes().await?.iter().any(|(net, _)| net.prefix_len() == 0))
    }

    pub async fn default_route_oif(&self) -> Result<Option<u32>, NetlinkError> {
        Ok(self.ipv4_routes().await?.into_iter().find(|(net, _)| net.prefix_len() == 0).and_then(|(_, oif)| oif))
    }

    /// IPv4 unicast routes of the main table, as (destination, oif).
    pub async fn ipv4_routes(&self) -> Result<Vec<(Ipv4Net, Option<u32>)>, NetlinkError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> =
            self.handle.route().get(query).execute().try_collect().await.map_err(req("list routes"))?;
        let mut out = Vec::new();
        for r in routes {
            if r.header.table != RouteMessage::default().header.table && r.header.table != 254 {
                continue;
            }
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) if *t != 254 => continue,
                    _ => {}
                }
            }
            if let Ok(net) = Ipv4Net::new(dst, r.header.destination_prefix_length) {
                out.push((net, oif));
            }
        }
        Ok(out)
    }
}
