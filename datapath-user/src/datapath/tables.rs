//! The maps the agent reads or cleans without its state lock: the per-CPU
//! counters (`stats`) and the connection tracker (`conntrack ls`, GC,
//! flush). Handles are cheap to clone and safe to use from blocking tasks,
//! so a slow endpoint create never delays a `stats` and a GC pass never
//! holds up an API request.

use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use datapath_common::{reason, Counter, NetStats, MAP_CT, MAP_NET_STATS, MAP_STATS};

use crate::datapath::conntrack::CtTable;
use crate::datapath::loader::{map_err, BpfError};

/// The per-CPU counter arrays: per reason (`STATS`) and per network
/// (`NET_STATS`).
pub struct Counters {
    map: PerCpuArray<MapData, Counter>,
    /// Written only to clear a freed network's slot.
    net: Mutex<PerCpuArray<MapData, NetStats>>,
}

impl Counters {
    pub(crate) fn new(map: PerCpuArray<MapData, Counter>, net: PerCpuArray<MapData, NetStats>) -> Self {
        Counters { map, net: Mutex::new(net) }
    }

    /// The counters of network `id`, summed over CPUs.
    pub fn network(&self, id: u32) -> Result<NetStats, BpfError> {
        let map = self.net.lock().map_err(|_| BpfError::Poisoned(MAP_NET_STATS))?;
        let per_cpu = map.get(&id, 0).map_err(map_err(MAP_NET_STATS))?;
        Ok(per_cpu.iter().fold(NetStats::default(), |a, c| NetStats {
            nat_no_port: Counter {
                packets: a.nat_no_port.packets + c.nat_no_port.packets,
                bytes: a.nat_no_port.bytes + c.nat_no_port.bytes,
            },
            nat_flows: a.nat_flows + c.nat_flows,
            ..a
        }))
    }

    /// Zeroes the counters of network `id` (its slot was freed: the next
    /// network given this id starts from zero).
    pub fn clear_network(&self, id: u32) -> Result<(), BpfError> {
        let mut map = self.net.lock().map_err(|_| BpfError::Poisoned(MAP_NET_STATS))?;
        let per_cpu = |reason: String| BpfError::PerCpu { map: MAP_NET_STATS, reason };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| per_cpu(format!("counting the CPUs: {e}")))?;
        let zero = PerCpuValues::try_from(vec![NetStats::default(); cpus]).map_err(|e| per_cpu(e.to_string()))?;
        map.set(id, zero, 0).map_err(map_err(MAP_NET_STATS))
    }

    /// Counters summed over CPUs, for every known reason code.
    pub fn read(&self) -> Result<Vec<(u32, Counter)>, BpfError> {
        let mut out = Vec::with_capacity(reason::ALL.len());
        for code in reason::ALL {
            let per_cpu = self.map.get(&code, 0).map_err(map_err(MAP_STATS))?;
            let sum = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            out.push((code, sum));
        }
        Ok(out)
    }
}

/// Shared handles on the counters and the connection tracker.
#[derive(Clone)]
pub struct Tables {
    pub counters: Arc<Counters>,
    ct: Arc<Mutex<CtTable>>,
}

impl Tables {
    pub(crate) fn new(counters: Counters, ct: CtTable) -> Self {
        Tables { counters: Arc::new(counters), ct: Arc::new(Mutex::new(ct)) }
    }

    /// The connection tracker, for one walk (list, GC or flush: they
    /// exclude each other, never the datapath).
    pub fn ct(&self) -> Result<MutexGuard<'_, CtTable>, BpfError> {
        self.ct.lock().map_err(|_| BpfError::Poisoned(MAP_CT))
    }
}
