//! The maps the agent reads or cleans without its state lock: the per-CPU
//! counters (`stats`) and the connection tracker (`conntrack ls`, GC,
//! flush). Handles are cheap to clone and safe to use from blocking tasks,
//! so a slow endpoint create never delays a `stats` and a GC pass never
//! holds up an API request.

use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{MapData, PerCpuArray};
use datapath_common::{reason, Counter, MAP_CT, MAP_STATS};

use crate::datapath::conntrack::CtTable;
use crate::datapath::loader::{map_err, BpfError};

/// The per-CPU counter array (`STATS`), read only.
pub struct Counters {
    map: PerCpuArray<MapData, Counter>,
}

impl Counters {
    pub(crate) fn new(map: PerCpuArray<MapData, Counter>) -> Self {
        Counters { map }
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
