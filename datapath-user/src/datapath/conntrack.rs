//! The eBPF connection tracker (`CT` map) seen from userspace: flow listing,
//! garbage collection and flush ([`CtTable`]), and the pure logic behind
//! them ([`flows`], [`expired`]), unit-tested without a kernel.
//!
//! # Entries
//!
//! A masqueraded flow has two entries in `CT` (see `datapath_common::CtEntry`):
//! the *forward* entry keyed by the original tuple (endpoint -> remote),
//! holding the state, lifetime, both directions' counters and the
//! translated source, and the *reverse* entry (`CT_F_REVERSE`) keyed by the
//! reply tuple as it arrives on the uplink (remote -> masquerade address and
//! port), holding the endpoint's original address and port. A flow is
//! listed once, from its forward entry.
//!
//! # Time base
//!
//! The datapath stamps entries with `bpf_ktime_get_ns()`, which is
//! `CLOCK_MONOTONIC` in nanoseconds (it does not advance while the machine
//! is suspended, and it is not wall-clock time). Userspace reads the same
//! clock with `clock_gettime(CLOCK_MONOTONIC)` ([`monotonic_ns`]) to compute
//! the remaining lifetime of a flow (`expires_ns - now`) and to decide what
//! the GC removes (`expires_ns <= now`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use aya::Pod;
use datapath_common::{
    ct_state_name, CtEntry, CtEntry6, CtKey, CtKey6, CT_F_DNAT, CT_F_REVERSE, CT_F_SNAT, CT_ORPHAN_GRACE_NS,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAP_CT, MAP_CT6,
};
use serde::{Deserialize, Serialize};

use crate::datapath::loader::{map_err, BpfError};

/// A snapshot of a conntrack map: every entry (the datapath keeps
/// changing the map meanwhile; entries that vanish while reading are
/// skipped), at most twice the capacity.
fn snapshot_of<K: Pod + Eq + Hash, V: Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
    capacity: u32,
) -> Result<Vec<(K, V)>, BpfError> {
    let mut out = Vec::new();
    for key in map.keys() {
        let key = match key {
            Ok(k) => k,
            // The key being walked was evicted/deleted: the walk restarts
            // or ends; what we have is still a valid snapshot.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        };
        match map.get(&key, 0) {
            Ok(v) => out.push((key, v)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
        if out.len() > capacity as usize * 2 {
            break;
        }
    }
    Ok(out)
}

/// The `CT` and `CT6` maps (IPv4 and IPv6 flows, the same capacity).
/// Walks take a snapshot (one lookup per key: the kernel has no batch
/// lookup for LRU maps here); run them on a blocking thread.
pub struct CtTable {
    map: BpfHashMap<MapData, CtKey, CtEntry>,
    map6: BpfHashMap<MapData, CtKey6, CtEntry6>,
    capacity: u32,
}

impl CtTable {
    pub(crate) fn new(
        map: BpfHashMap<MapData, CtKey, CtEntry>,
        map6: BpfHashMap<MapData, CtKey6, CtEntry6>,
        capacity: u32,
    ) -> Self {
        CtTable { map, map6, capacity }
    }

    /// Every `CT` entry (a snapshot).
    pub fn snapshot(&self) -> Result<Vec<(CtKey, CtEntry)>, BpfError> {
        snapshot_of(&self.map, MAP_CT, self.capacity)
    }

    /// Every `CT6` entry (a snapshot).
    pub fn snapshot6(&self) -> Result<Vec<(CtKey6, CtEntry6)>, BpfError> {
        snapshot_of(&self.map6, MAP_CT6, self.capacity)
    }

    /// Copies the entries of an old table (a migration) into this one;
    /// entries already here win. Returns how many were copied.
    pub fn copy_from(&mut self, old: MapData) -> Result<usize, BpfError> {
        crate::datapath::pins::copy_ct(old, &mut self.map)
    }

    /// As [`CtTable::copy_from`], for `CT6`.
    pub fn copy6_from(&mut self, old: MapData) -> Result<usize, BpfError> {
        crate::datapath::pins::copy_ct6(old, &mut self.map6)
    }

    /// Tracked flows, one per connection, IPv4 then IPv6 (see [`Flow`]).
    pub fn flows(&self) -> Result<Vec<Flow>, BpfError> {
        let now = monotonic_ns();
        let mut out = flows(&self.snapshot()?, now);
        out.extend(flows6(&self.snapshot6()?, now));
        Ok(out)
    }

    /// Removes every entry of both maps; returns how many were removed (a
    /// masqueraded flow has two). Established masqueraded connections
    /// break (their replies no longer match).
    pub fn flush(&mut self) -> Result<usize, BpfError> {
        let keys: Vec<CtKey> = self.snapshot()?.into_iter().map(|(k, _)| k).collect();
        let keys6: Vec<CtKey6> = self.snapshot6()?.into_iter().map(|(k, _)| k).collect();
        Ok(keys.iter().filter(|k| self.map.remove(k).is_ok()).count()
            + keys6.iter().filter(|k| self.map6.remove(k).is_ok()).count())
    }

    /// Removes expired flows (both their entries) and orphaned reverse
    /// entries, in both maps. Run it periodically: the datapath never
    /// deletes on its own except when it reuses a tuple.
    pub fn gc(&mut self) -> Result<GcReport, BpfError> {
        let entries = self.snapshot()?;
        let scanned4 = entries.len();
        let gone = expired(&entries, monotonic_ns());
        let seen: HashMap<CtKey, CtEntry> = entries.into_iter().collect();
        let mut removed = 0;
        for k in &gone {
            // The datapath may have reused the tuple since the snapshot (a
            // port taken over, a flow restarted): it then has a new
            // creation time, or a forward entry is live again.
            let now = monotonic_ns();
            match (self.map.get(k, 0), seen.get(k)) {
                (Ok(cur), Some(old))
                    if cur.created_ns == old.created_ns && (cur.flags & CT_F_REVERSE != 0 || cur.expires_ns <= now) => {
                }
                _ => continue,
            }
            if self.map.remove(k).is_ok() {
                removed += 1;
            }
        }
        let entries6 = self.snapshot6()?;
        let scanned = scanned4 + entries6.len();
        let gone6 = expired6(&entries6, monotonic_ns());
        let seen6: HashMap<CtKey6, CtEntry6> = entries6.into_iter().collect();
        for k in &gone6 {
            let now = monotonic_ns();
            match (self.map6.get(k, 0), seen6.get(k)) {
                (Ok(cur), Some(old))
                    if cur.e.created_ns == old.e.created_ns
                        && (cur.e.flags & CT_F_REVERSE != 0 || cur.e.expires_ns <= now) => {}
                _ => continue,
            }
            if self.map6.remove(k).is_ok() {
                removed += 1;
            }
        }
        Ok(GcReport { scanned, removed, live: scanned - removed, capacity: self.capacity })
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub src: IpAddr,
    /// ICMP echo: the identifier.
    pub sport: u16,
    pub dst: IpAddr,
    /// ICMP echo: 0.
    pub dport: u16,
}

/// The translated source of a masqueraded flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translated {
    pub src: IpAddr,
    pub sport: u16,
}

/// One tracked flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// "tcp", "udp", "icmp" (or the protocol number).
    pub protocol: String,
    /// As sent by the endpoint.
    pub original: Endpoint,
    /// `None` when the flow is not source-translated.
    pub translated: Option<Translated>,
    /// A published port's flow (`CT_F_DNAT`): the endpoint address and
    /// container port its destination is translated to.
    pub translated_dst: Option<Translated>,
    /// "syn-sent", "established", "closing", "closed" (TCP); "new" (no reply
    /// yet), "established" (UDP, ICMP).
    pub state: String,
    /// Both directions.
    pub packets: u64,
    pub bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Seconds until the entry expires (0 when expired, awaiting GC).
    pub remaining_s: u64,
    /// Seconds since the flow was created.
    pub age_s: u64,
    /// ifindex of the endpoint's host-side veth.
    pub ifindex: u32,
}

/// What a GC pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Entries looked at.
    pub scanned: usize,
    /// Entries removed (expired flows count their two entries, orphaned
    /// reverse entries one).
    pub removed: usize,
    /// Entries left.
    pub live: usize,
    /// Capacity of the map (entries); `live / capacity` is the table
    /// pressure (an LRU map evicts the least recently used entries, live
    /// flows included, when it is full).
    pub capacity: u32,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        p => p.to_string(),
    }
}

fn addr(wire: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(wire.to_ne_bytes()))
}

fn addr6(wire: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(wire))
}

fn port(wire: u16) -> u16 {
    u16::from_be(wire)
}

/// The key of the reverse entry of a forward entry (as the datapath
/// derives it: masquerade or published port, see `CtKey::partner`).
pub fn reverse_key(key: &CtKey, e: &CtEntry) -> CtKey {
    key.partner(e).0
}

/// The key of the forward entry a reverse entry belongs to.
pub fn forward_key(key: &CtKey, e: &CtEntry) -> CtKey {
    key.partner(e).0
}

/// Whether `other`, found at the partner key of the entry `e` at `key`,
/// is the other entry of the same flow (not a flow that took the tuple
/// over).
fn belongs(key: &CtKey, e: &CtEntry, other: &CtEntry) -> bool {
    let (_, addr, port) = key.partner(e);
    (other.flags & CT_F_REVERSE) != (e.flags & CT_F_REVERSE) && other.addr == addr && other.port == port
}

/// The flows of a snapshot of the map, sorted by protocol and original tuple.
pub fn flows(entries: &[(CtKey, CtEntry)], now_ns: u64) -> Vec<Flow> {
    let mut out: Vec<Flow> = entries
        .iter()
        .filter(|(_, e)| e.flags & CT_F_REVERSE == 0)
        .map(|(k, e)| {
            let original =
                Endpoint { src: addr(k.saddr), sport: port(k.sport), dst: addr(k.daddr), dport: port(k.dport) };
            let translated = (e.flags & CT_F_SNAT != 0).then(|| {
                let (a, p) = if e.flags & CT_F_DNAT != 0 { e.dnat_peer() } else { (e.addr, e.port) };
                Translated { src: addr(a), sport: port(p) }
            });
            let translated_dst =
                (e.flags & CT_F_DNAT != 0).then(|| Translated { src: addr(e.addr), sport: port(e.port) });
            Flow::of(k.proto, original, translated, translated_dst, e, now_ns)
        })
        .collect();
    sort_flows(&mut out);
    out
}

impl Flow {
    /// A flow from its forward entry `e` (state, counters, times) and what
    /// the caller read of its tuples.
    fn of(
        proto: u8,
        original: Endpoint,
        translated: Option<Translated>,
        translated_dst: Option<Translated>,
        e: &CtEntry,
        now_ns: u64,
    ) -> Flow {
        Flow {
            protocol: protocol_name(proto),
            original,
            translated,
            translated_dst,
            state: ct_state_name(proto, e.state).to_string(),
            packets: e.tx_packets + e.rx_packets,
            bytes: e.tx_bytes + e.rx_bytes,
            tx_packets: e.tx_packets,
            tx_bytes: e.tx_bytes,
            rx_packets: e.rx_packets,
            rx_bytes: e.rx_bytes,
            remaining_s: e.expires_ns.saturating_sub(now_ns) / 1_000_000_000,
            age_s: now_ns.saturating_sub(e.created_ns) / 1_000_000_000,
            ifindex: e.ifindex,
        }
    }
}

/// Flows in listing order: protocol, then the original tuple.
fn sort_flows(out: &mut [Flow]) {
    out.sort_by(|a, b| {
        (&a.protocol, a.original.src, a.original.sport, a.original.dst, a.original.dport).cmp(&(
            &b.protocol,
            b.original.src,
            b.original.sport,
            b.original.dst,
            b.original.dport,
        ))
    });
}

/// Keys a GC pass removes from a snapshot: expired forward entries with
/// their reverse entries (when the reverse entry still belongs to them: the
/// datapath may have given the port to a new flow), and reverse entries
/// whose forward entry is gone or translates to another port.
pub fn expired(entries: &[(CtKey, CtEntry)], now_ns: u64) -> Vec<CtKey> {
    let index: HashMap<CtKey, &CtEntry> = entries.iter().map(|(k, e)| (*k, e)).collect();
    let mut out = Vec::new();
    for (k, e) in entries {
        if e.flags & CT_F_REVERSE == 0 {
            if e.expires_ns <= now_ns {
                out.push(*k);
                if e.flags & (CT_F_SNAT | CT_F_DNAT) != 0 {
                    let r = reverse_key(k, e);
                    if index.get(&r).is_some_and(|re| belongs(k, e, re)) {
                        out.push(r);
                    }
                }
            }
        } else {
            let f = forward_key(k, e);
            // A reverse entry younger than a second may belong to a flow
            // being created right now (reverse first, forward next).
            let young = now_ns.saturating_sub(e.created_ns) < CT_ORPHAN_GRACE_NS;
            match index.get(&f) {
                Some(fe) if belongs(k, e, fe) => {}
                _ if young => {}
                _ => out.push(*k),
            }
        }
    }
    out.sort_by_key(|k| (k.proto, k.saddr, k.daddr, k.sport, k.dport));
    out.dedup();
    out
}

/// The flows of a snapshot of `CT6` (masqueraded IPv6 flows), sorted as
/// [`flows`] sorts.
pub fn flows6(entries: &[(CtKey6, CtEntry6)], now_ns: u64) -> Vec<Flow> {
    let mut out: Vec<Flow> = entries
        .iter()
        .filter(|(_, e)| e.e.flags & CT_F_REVERSE == 0)
        .map(|(k, x)| {
            let original =
                Endpoint { src: addr6(k.saddr), sport: port(k.sport), dst: addr6(k.daddr), dport: port(k.dport) };
            let translated =
                (x.e.flags & CT_F_SNAT != 0).then(|| Translated { src: addr6(x.addr), sport: port(x.e.port) });
            Flow::of(k.proto, original, translated, None, &x.e, now_ns)
        })
        .collect();
    sort_flows(&mut out);
    out
}

/// Whether `other`, found at the partner key of the `CT6` entry `e` at
/// `key`, is the other entry of the same flow.
fn belongs6(key: &CtKey6, e: &CtEntry6, other: &CtEntry6) -> bool {
    let (_, addr, port) = key.partner(e);
    (other.e.flags & CT_F_REVERSE) != (e.e.flags & CT_F_REVERSE) && other.addr == addr && other.e.port == port
}

/// As [`expired`], for a snapshot of `CT6`.
pub fn expired6(entries: &[(CtKey6, CtEntry6)], now_ns: u64) -> Vec<CtKey6> {
    let index: HashMap<CtKey6, &CtEntry6> = entries.iter().map(|(k, e)| (*k, e)).collect();
    let mut out = Vec::new();
    for (k, e) in entries {
        let (other, _, _) = k.partner(e);
        if e.e.flags & CT_F_REVERSE == 0 {
            if e.e.expires_ns <= now_ns {
                out.push(*k);
                if e.e.flags & CT_F_SNAT != 0 && index.get(&other).is_some_and(|re| belongs6(k, e, re)) {
                    out.push(other);
                }
            }
        } else {
            let young = now_ns.saturating_sub(e.e.created_ns) < CT_ORPHAN_GRACE_NS;
            match index.get(&other) {
                Some(fe) if belongs6(k, e, fe) => {}
                _ if young => {}
                _ => out.push(*k),
            }
        }
    }
    out.sort_by_key(|k| (k.proto, k.saddr, k.daddr, k.sport, k.dport));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use datapath_common::{ipv4_key, CT_ESTABLISHED, CT_TCP_SYN_SENT};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(a: [u8; 4]) -> u32 {
        ipv4_key(a)
    }

    /// A masqueraded flow 10.0.0.2:40000 -> 198.51.100.7:443 as
    /// 203.0.113.1:61000, and its reverse entry.
    fn flow(proto: u8, expires_ns: u64) -> [(CtKey, CtEntry); 2] {
        let (sport, dport) =
            if proto == IPPROTO_ICMP { (77u16.to_be(), 0) } else { (40000u16.to_be(), 443u16.to_be()) };
        let fk = CtKey { saddr: ip([10, 0, 0, 2]), daddr: ip([198, 51, 100, 7]), sport, dport, proto, _pad: [0; 3] };
        let fe = CtEntry {
            created_ns: 10 * S,
            expires_ns,
            tx_packets: 3,
            tx_bytes: 300,
            rx_packets: 2,
            rx_bytes: 200,
            addr: ip([203, 0, 113, 1]),
            port: 61000u16.to_be(),
            ifindex: 9,
            state: if proto == IPPROTO_TCP { CT_TCP_SYN_SENT } else { CT_ESTABLISHED },
            flags: CT_F_SNAT,
            ..Default::default()
        };
        let rk = reverse_key(&fk, &fe);
        let re = CtEntry {
            created_ns: 10 * S,
            addr: fk.saddr,
            port: fk.sport,
            ifindex: 9,
            flags: CT_F_REVERSE | CT_F_SNAT,
            ..Default::default()
        };
        [(fk, fe), (rk, re)]
    }

    #[test]
    fn reverse_and_forward_keys_mirror() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP] {
            let [(fk, fe), (rk, re)] = flow(proto, 100 * S);
            assert_eq!(rk.saddr, fk.daddr);
            assert_eq!(rk.daddr, ip([203, 0, 113, 1]));
            assert_eq!(rk.dport, 61000u16.to_be());
            if proto == IPPROTO_ICMP {
                assert_eq!(rk.sport, 0);
            } else {
                assert_eq!(rk.sport, 443u16.to_be());
            }
            assert_eq!(forward_key(&rk, &re), fk);
            let _ = fe;
        }
    }

    #[test]
    fn flows_list_forward_entries_once() {
        let entries = flow(IPPROTO_TCP, 100 * S).to_vec();
        let f = flows(&entries, 40 * S);
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.protocol, "tcp");
        assert_eq!(
            f.original,
            Endpoint {
                src: Ipv4Addr::new(10, 0, 0, 2).into(),
                sport: 40000,
                dst: Ipv4Addr::new(198, 51, 100, 7).into(),
                dport: 443
            }
        );
        assert_eq!(f.translated, Some(Translated { src: Ipv4Addr::new(203, 0, 113, 1).into(), sport: 61000 }));
        assert_eq!(f.state, "syn-sent");
        assert_eq!((f.packets, f.bytes), (5, 500));
        assert_eq!(f.remaining_s, 60);
        assert_eq!(f.age_s, 30);
        assert_eq!(f.ifindex, 9);
        let json = serde_json::to_value(f).unwrap();
        assert_eq!(json["translated"]["sport"], 61000);
        assert_eq!(json["original"]["src"], "10.0.0.2");
        // Expired flows show 0 s left.
        assert_eq!(flows(&entries, 200 * S)[0].remaining_s, 0);
    }

    #[test]
    fn gc_removes_expired_flows_with_both_entries() {
        let mut entries = flow(IPPROTO_UDP, 50 * S).to_vec();
        entries.extend(flow(IPPROTO_ICMP, 500 * S));
        assert!(expired(&entries, 49 * S).is_empty());
        let gone = expired(&entries, 50 * S);
        assert_eq!(gone.len(), 2);
        assert!(gone.contains(&entries[0].0) && gone.contains(&entries[1].0));
    }

    #[test]
    fn gc_removes_orphaned_reverse_entries_but_not_fresh_ones() {
        let [_, (rk, re)] = flow(IPPROTO_TCP, 100 * S);
        let entries = vec![(rk, re)];
        // Created at 10 s: at 10.5 s it may be a flow being set up.
        assert!(expired(&entries, 10 * S + S / 2).is_empty());
        assert_eq!(expired(&entries, 12 * S), vec![rk]);
    }

    #[test]
    fn gc_leaves_a_taken_over_port_alone() {
        // The flow expired, but its port now belongs to another flow
        // (another endpoint port): only the old forward entry goes.
        let [(fk, fe), (rk, mut re)] = flow(IPPROTO_TCP, 50 * S);
        re.port = 41000u16.to_be();
        let nk = forward_key(&rk, &re);
        let ne = CtEntry { expires_ns: 500 * S, ..fe };
        let entries = vec![(fk, fe), (rk, re), (nk, ne)];
        assert_eq!(expired(&entries, 60 * S), vec![fk]);
        // A reverse entry whose forward entry translates to another port
        // is an orphan.
        let [(fk, mut fe), (rk, re)] = flow(IPPROTO_UDP, 500 * S);
        fe.port = 61001u16.to_be();
        let entries = vec![(fk, fe), (rk, re)];
        assert_eq!(expired(&entries, 60 * S), vec![rk]);
    }

    #[test]
    fn published_port_flows_are_listed_and_collected() {
        // 198.51.100.7:40000 -> 203.0.113.2:8080 published by 10.0.0.2:80.
        let fk =
            CtKey::new(IPPROTO_TCP, ip([198, 51, 100, 7]), ip([203, 0, 113, 2]), 40000u16.to_be(), 8080u16.to_be());
        let fe = CtEntry {
            created_ns: 10 * S,
            expires_ns: 50 * S,
            addr: ip([10, 0, 0, 2]),
            port: 80u16.to_be(),
            ifindex: 9,
            flags: CT_F_DNAT,
            ..Default::default()
        };
        let (rk, a, p) = fk.partner(&fe);
        let re =
            CtEntry { created_ns: 10 * S, addr: a, port: p, flags: CT_F_DNAT | CT_F_REVERSE, ..Default::default() };
        let entries = vec![(fk, fe), (rk, re)];
        let f = flows(&entries, 20 * S);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].translated, None);
        assert_eq!(f[0].translated_dst, Some(Translated { src: Ipv4Addr::new(10, 0, 0, 2).into(), sport: 80 }));
        assert!(expired(&entries, 20 * S).is_empty(), "a live published flow is no orphan");
        let gone = expired(&entries, 60 * S);
        assert_eq!(gone.len(), 2, "both entries go: {gone:?}");
    }

    /// A masqueraded IPv6 flow fd00::2:40000 -> 2001:db8::7:443 as
    /// 2001:db8:1::1:61000, and its reverse entry.
    fn flow6(proto: u8, expires_ns: u64) -> [(CtKey6, CtEntry6); 2] {
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        let (sport, dport) =
            if proto == IPPROTO_ICMPV6 { (77u16.to_be(), 0) } else { (40000u16.to_be(), 443u16.to_be()) };
        let fk = CtKey6::new(proto, a("fd00::2"), a("2001:db8::7"), sport, dport);
        let fe = CtEntry6 {
            e: CtEntry {
                created_ns: 10 * S,
                expires_ns,
                tx_packets: 3,
                rx_packets: 2,
                port: 61000u16.to_be(),
                ifindex: 9,
                state: CT_ESTABLISHED,
                flags: CT_F_SNAT,
                ..Default::default()
            },
            addr: a("2001:db8:1::1"),
        };
        let (rk, addr, port) = fk.partner(&fe);
        let re = CtEntry6 {
            e: CtEntry { created_ns: 10 * S, port, ifindex: 9, flags: CT_F_REVERSE | CT_F_SNAT, ..Default::default() },
            addr,
        };
        [(fk, fe), (rk, re)]
    }

    #[test]
    fn ipv6_flows_are_listed_and_collected() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6] {
            let [(fk, fe), (rk, re)] = flow6(proto, 100 * S);
            assert_eq!(rk.partner(&re).0, fk, "the reverse entry finds its forward entry");
            if proto == IPPROTO_ICMPV6 {
                assert_eq!((rk.sport, rk.dport), (0, 61000u16.to_be()), "echo id as the reply's dport");
            }
            let entries = vec![(fk, fe), (rk, re)];
            let f = flows6(&entries, 40 * S);
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].original.src, "fd00::2".parse::<IpAddr>().unwrap());
            assert_eq!(f[0].translated, Some(Translated { src: "2001:db8:1::1".parse().unwrap(), sport: 61000 }));
            assert_eq!(f[0].packets, 5);
            let json = serde_json::to_value(&f[0]).unwrap();
            assert_eq!(json["original"]["dst"], "2001:db8::7");
            assert!(expired6(&entries, 99 * S).is_empty());
            let gone = expired6(&entries, 100 * S);
            assert_eq!(gone.len(), 2, "both entries of an expired flow go: {gone:?}");
            // An orphaned reverse entry goes after its grace time.
            assert!(expired6(&[(rk, re)], 10 * S + S / 2).is_empty());
            assert_eq!(expired6(&[(rk, re)], 12 * S), vec![rk]);
        }
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
