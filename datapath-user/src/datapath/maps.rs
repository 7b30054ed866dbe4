//! Writing the datapath's maps from the desired state: endpoints, networks,
//! conntrack lifetimes; and finding what a restarted agent must remove
//! (entries of endpoints and networks that no longer exist).

use std::collections::BTreeSet;

use aya::maps::lpm_trie::Key as LpmKey;
use datapath_common::{
    CtConfig, Endpoint6, EndpointInfo, Network6Info, NetworkInfo, MAP_CT_CONFIG, MAP_ENDPOINTS, MAP_ENDPOINTS6,
    MAP_ENDPOINTS6_BY_IP, MAP_ENDPOINTS_BY_IP, MAP_NETWORKS, MAP_NETWORKS6, MAP_SUBNETS, MAP_SUBNETS6, MAX_NETWORKS,
    NET_F_PRESENT,
};

use crate::datapath::loader::{map_err, Bpf, BpfError};

impl Bpf {
    pub fn upsert_endpoint(&mut self, info: EndpointInfo) -> Result<(), BpfError> {
        self.endpoints.insert(info.ifindex, info, 0).map_err(map_err(MAP_ENDPOINTS))?;
        if let Err(e) = self.by_ip.insert(info.ipv4, info, 0) {
            let _ = self.endpoints.remove(&info.ifindex);
            return Err(map_err(MAP_ENDPOINTS_BY_IP)(e));
        }
        Ok(())
    }

    /// The IPv6 address of the endpoint `info` (its host veth's link, on a
    /// dual-stack network), or none: its IPv6 is dropped. Both
    /// `ENDPOINTS6` (by ifindex) and `ENDPOINTS6_BY_IP` (by address).
    pub fn set_endpoint6(&mut self, info: &EndpointInfo, ip6: Option<std::net::Ipv6Addr>) -> Result<(), BpfError> {
        let ifindex = info.ifindex;
        self.remove_endpoint6(ifindex);
        let Some(ip) = ip6 else { return Ok(()) };
        self.endpoints6.insert(ifindex, Endpoint6 { ip6: ip.octets() }, 0).map_err(map_err(MAP_ENDPOINTS6))?;
        if let Err(e) = self.by_ip6.insert(ip.octets(), *info, 0) {
            let _ = self.endpoints6.remove(&ifindex);
            return Err(map_err(MAP_ENDPOINTS6_BY_IP)(e));
        }
        Ok(())
    }

    /// Removes the IPv6 half of the endpoint behind host veth `ifindex`
    /// from both maps; absent entries are fine.
    fn remove_endpoint6(&mut self, ifindex: u32) {
        if let Ok(old) = self.endpoints6.get(&ifindex, 0) {
            if self.by_ip6.get(&old.ip6, 0).is_ok_and(|e| e.ifindex == ifindex) {
                let _ = self.by_ip6.remove(&old.ip6);
            }
            let _ = self.endpoints6.remove(&ifindex);
        }
    }

    /// Whether `ENDPOINTS` has an entry for the host veth `ifindex`.
    pub fn has_endpoint(&self, ifindex: u32) -> bool {
        self.endpoints.get(&ifindex, 0).is_ok()
    }

    /// Removes an endpoint from both maps; absent entries are fine.
    pub fn remove_endpoint(&mut self, ifindex: u32, ipv4: u32) {
        let _ = self.by_ip.remove(&ipv4);
        self.remove_endpoint6(ifindex);
        let _ = self.endpoints.remove(&ifindex);
    }

    /// Publishes a local network to the datapath: its policy and masquerade
    /// settings (`NETWORKS`) and its subnet (`SUBNETS`, `info.subnet` /
    /// `prefix_len`), so the other networks' endpoints are isolated from it.
    /// Idempotent (updates in place). `id` must be below `MAX_NETWORKS`
    /// (`NETWORKS` is an array indexed by it).
    pub fn set_network(&mut self, id: u32, info: NetworkInfo, prefix_len: u32) -> Result<(), BpfError> {
        if id >= MAX_NETWORKS {
            return Err(map_err(MAP_NETWORKS)(aya::maps::MapError::OutOfBounds {
                index: id,
                max_entries: MAX_NETWORKS,
            }));
        }
        self.subnets.insert(&LpmKey::new(prefix_len, info.subnet), id, 0).map_err(map_err(MAP_SUBNETS))?;
        let info = NetworkInfo { flags: info.flags | NET_F_PRESENT, ..info };
        if let Err(e) = self.networks.set(id, info, 0) {
            let _ = self.subnets.remove(&LpmKey::new(prefix_len, info.subnet));
            return Err(map_err(MAP_NETWORKS)(e));
        }
        Ok(())
    }

    /// Publishes the IPv6 half of a dual-stack network (`NETWORKS6`,
    /// `SUBNETS6`), or removes it (`None`). Idempotent.
    pub fn set_network6(&mut self, id: u32, info: Option<Network6Info>) -> Result<(), BpfError> {
        if id >= MAX_NETWORKS {
            return Err(map_err(MAP_NETWORKS6)(aya::maps::MapError::OutOfBounds {
                index: id,
                max_entries: MAX_NETWORKS,
            }));
        }
        let old = self.networks6.get(&id, 0).ok().filter(|n| n.flags & NET_F_PRESENT != 0);
        if let Some(old) = old.filter(|o| info.is_none_or(|n| (n.subnet, n.prefix_len) != (o.subnet, o.prefix_len))) {
            let _ = self.subnets6.remove(&LpmKey::new(old.prefix_len, old.subnet));
        }
        let Some(info) = info else {
            let _ = self.networks6.set(id, Network6Info::default(), 0);
            return Ok(());
        };
        self.subnets6.insert(&LpmKey::new(info.prefix_len, info.subnet), id, 0).map_err(map_err(MAP_SUBNETS6))?;
        let info = Network6Info { flags: info.flags | NET_F_PRESENT, ..info };
        if let Err(e) = self.networks6.set(id, info, 0) {
            let _ = self.subnets6.remove(&LpmKey::new(info.prefix_len, info.subnet));
            return Err(map_err(MAP_NETWORKS6)(e));
        }
        Ok(())
    }

    /// Removes a network from both maps; absent entries are fine. `subnet`
    /// is wire order, as in `NetworkInfo::subnet`.
    pub fn remove_network(&mut self, id: u32, subnet: u32, prefix_len: u32) {
        if id < MAX_NETWORKS {
            let _ = self.set_network6(id, None);
            let _ = self.networks.set(id, NetworkInfo::default(), 0);
            if let Err(e) = self.tables().counters.clear_network(id) {
                tracing::warn!("clearing the counters of network slot {id}: {e}");
            }
        }
        let _ = self.subnets.remove(&LpmKey::new(prefix_len, subnet));
    }

    /// Sets the connection tracker lifetimes (seconds; 0 = the default:
    /// TCP SYN 60, established 6 h, closing 10, UDP 60, ICMP 60). Applies to
    /// every packet from now on (existing entries get the new lifetime on
    /// their next packet).
    pub fn set_ct_config(&mut self, cfg: CtConfig) -> Result<(), BpfError> {
        self.ct_config.set(0, cfg, 0).map_err(map_err(MAP_CT_CONFIG))
    }

    /// Removes the map entries of endpoints and networks the agent does not
    /// know (left by a crash or a lost state): endpoints whose host ifindex
    /// is not in `ifindexes` nor their address in `addresses`, network slots
    /// not in `networks` (ids), subnets not in `subnets` (wire order, prefix
    /// length). Returns how many entries went.
    pub fn remove_stale(
        &mut self,
        ifindexes: &BTreeSet<u32>,
        addresses: &BTreeSet<u32>,
        networks: &BTreeSet<u32>,
        subnets: &BTreeSet<(u32, u32)>,
    ) -> usize {
        let mut removed = 0;
        let stale: Vec<u32> = self.endpoints.keys().filter_map(Result::ok).filter(|i| !ifindexes.contains(i)).collect();
        for k in stale {
            removed += usize::from(self.endpoints.remove(&k).is_ok());
        }
        let stale: Vec<u32> =
            self.endpoints6.keys().filter_map(Result::ok).filter(|i| !ifindexes.contains(i)).collect();
        for k in stale {
            removed += usize::from(self.endpoints6.remove(&k).is_ok());
        }
        let stale: Vec<[u8; 16]> = self
            .by_ip6
            .iter()
            .filter_map(Result::ok)
            .filter(|(ip, e)| self.endpoints6.get(&e.ifindex, 0).map_or(true, |own| own.ip6 != *ip))
            .map(|(ip, _)| ip)
            .collect();
        for k in stale {
            removed += usize::from(self.by_ip6.remove(&k).is_ok());
        }
        let stale: Vec<u32> = self.by_ip.keys().filter_map(Result::ok).filter(|a| !addresses.contains(a)).collect();
        for k in stale {
            removed += usize::from(self.by_ip.remove(&k).is_ok());
        }
        for id in 0..MAX_NETWORKS {
            let present = self.networks.get(&id, 0).is_ok_and(|n| n.flags & NET_F_PRESENT != 0);
            if present && !networks.contains(&id) {
                removed += usize::from(self.networks.set(id, NetworkInfo::default(), 0).is_ok());
            }
            let present6 = self.networks6.get(&id, 0).is_ok_and(|n| n.flags & NET_F_PRESENT != 0);
            if present6 && !networks.contains(&id) {
                removed += usize::from(self.networks6.set(id, Network6Info::default(), 0).is_ok());
            }
        }
        // An IPv6 subnet whose network slot holds another subnet (or none).
        let stale: Vec<LpmKey<[u8; 16]>> = self
            .subnets6
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, id)| {
                self.networks6
                    .get(id, 0)
                    .ok()
                    .filter(|n| n.flags & NET_F_PRESENT != 0)
                    .is_none_or(|n| (n.subnet, n.prefix_len) != (k.data(), k.prefix_len()))
            })
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            removed += usize::from(self.subnets6.remove(&k).is_ok());
        }
        let stale: Vec<LpmKey<u32>> = self
            .subnets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !subnets.contains(&(k.data(), k.prefix_len())))
            .collect();
        for k in stale {
            removed += usize::from(self.subnets.remove(&k).is_ok());
        }
        removed
    }
}
