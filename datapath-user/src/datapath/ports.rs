//! The `PORTS` map (published ports, see `datapath_common::ports`):
//! brought in line with what the agent wants, whole, after every change.

use std::collections::{BTreeMap, BTreeSet};

use datapath_common::{PortKey, PortTarget, Published6Key, MAP_PORTS, MAP_PUBLISHED6, MAX_PORTS};

use crate::datapath::loader::{map_err, Bpf, BpfError};

impl Bpf {
    /// Makes `PORTS` hold exactly `want`: entries no longer wanted go
    /// first (a withdrawn port stops translating at once), then the wanted
    /// ones are written (new ones and changed targets). Returns how many
    /// entries changed.
    pub fn sync_ports(&mut self, want: &BTreeMap<PortKey, PortTarget>) -> Result<usize, BpfError> {
        if want.len() > MAX_PORTS as usize {
            return Err(BpfError::Map {
                map: MAP_PORTS,
                source: aya::maps::MapError::OutOfBounds { index: want.len() as u32, max_entries: MAX_PORTS },
            });
        }
        let have: BTreeMap<PortKey, PortTarget> = self.ports.iter().filter_map(Result::ok).collect();
        let mut changed = 0;
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            if self.ports.remove(k).is_ok() {
                changed += 1;
            }
        }
        for (k, v) in want {
            if have.get(k) != Some(v) {
                self.ports.insert(k, v, 0).map_err(map_err(MAP_PORTS))?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Makes `PUBLISHED6` hold exactly `want`: the container ports that
    /// endpoints with an IPv6 address publish (the kernel translates the
    /// connections to them; the datapath hands their replies to it).
    /// Returns how many entries changed.
    pub fn sync_published6(&mut self, want: &BTreeSet<Published6Key>) -> Result<usize, BpfError> {
        if want.len() > MAX_PORTS as usize {
            return Err(BpfError::Map {
                map: MAP_PUBLISHED6,
                source: aya::maps::MapError::OutOfBounds { index: want.len() as u32, max_entries: MAX_PORTS },
            });
        }
        let have: BTreeSet<Published6Key> = self.published6.keys().filter_map(Result::ok).collect();
        let mut changed = 0;
        for k in have.difference(want) {
            if self.published6.remove(k).is_ok() {
                changed += 1;
            }
        }
        for k in want.difference(&have) {
            self.published6.insert(k, 1, 0).map_err(map_err(MAP_PUBLISHED6))?;
            changed += 1;
        }
        Ok(changed)
    }
}
