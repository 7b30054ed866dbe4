//! The datapath's objects in bpffs, so that they outlive the agent: every
//! map of the object under `DIR/maps-vN/NAME` (N: [`MAP_LAYOUT_VERSION`];
//! bpffs holds only BPF objects and directories, so the version is in the
//! directory's name) and TCX links under `DIR/links/IFNAME` (see `links`).
//!
//! A starting agent reuses each pinned map whose layout (type, key and
//! value size, capacity, flags, and [`MAP_LAYOUT_VERSION`]) matches what
//! the object declares, contents and all. A map whose layout changed is
//! migrated, never silently dropped: its pin is renamed `NAME:pending`
//! (the running programs keep using it), the loader creates the new map,
//! the agent copies what can be translated (the connection tracker and the
//! counters; everything else is derived from the desired state) before and
//! after it moves the attachments to the new programs, and only then
//! removes the pending pin. If the load fails, the pending pins are put
//! back and nothing the running datapath uses was touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo, PerCpuArray};
use datapath_common::{Counter, CtEntry, CtEntry6, CtKey, CtKey6, MAP_CT, MAP_CT6, MAP_LAYOUT_VERSION, MAP_STATS};

use crate::datapath::loader::BpfError;

/// Suffix of a map pin being migrated away from.
const PENDING: &str = ":pending";

/// The agent's bpffs directory.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

/// What a map's definition says about its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    fn of_pin(info: &MapInfo) -> Result<Layout, aya::maps::MapError> {
        Ok(Layout {
            map_type: info.map_type().map(|t| t as u32)?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

/// The fate of every map at a load, and where the old pins of migrated
/// maps were (to put them back if the load fails).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub fates: BTreeMap<String, Fate>,
    origins: BTreeMap<String, PathBuf>,
}

fn move_pin(from: &Path, to: &Path) -> Result<(), BpfError> {
    std::fs::rename(from, to)
        .map_err(|e| BpfError::Pin(format!("moving the pin {} to {}: {e}", from.display(), to.display())))
}

/// What happens to one map at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Nothing pinned yet: created and pinned.
    Created,
    /// Pinned with the same layout: reused with its contents.
    Reused,
    /// Pinned with another layout (the old one, or the reason): migrated.
    Migrated(String),
}

/// What the load did with the pinned maps (shown by `stats` and logged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinReport {
    pub maps: BTreeMap<String, Fate>,
    /// Connection-tracking entries found in a reused table, or copied from
    /// the old one when it was migrated.
    pub ct_entries: usize,
}

impl PinReport {
    /// One line for the log: `reused 9, created 0, migrated CT (…)`.
    pub fn summary(&self) -> String {
        let count = |f: fn(&Fate) -> bool| self.maps.values().filter(|x| f(x)).count();
        let migrated: Vec<String> = self
            .maps
            .iter()
            .filter_map(|(n, f)| match f {
                Fate::Migrated(why) => Some(format!("{n} ({why})")),
                _ => None,
            })
            .collect();
        format!(
            "maps reused {}, created {}, migrated [{}]; {} conntrack entries kept",
            count(|f| *f == Fate::Reused),
            count(|f| *f == Fate::Created),
            migrated.join(", "),
            self.ct_entries
        )
    }
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Pins {
        Pins { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("maps-v{MAP_LAYOUT_VERSION}"))
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    fn pending_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(format!("{name}{PENDING}"))
    }

    /// Map directories of other layout versions (left by another build).
    fn other_versions(&self) -> Vec<(u32, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut v: Vec<(u32, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n: u32 = e.file_name().to_str()?.strip_prefix("maps-v")?.parse().ok()?;
                (n != MAP_LAYOUT_VERSION).then(|| (n, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    pub fn link_path(&self, ifname: &str) -> PathBuf {
        self.root.join("links").join(ifname)
    }

    /// Makes the directories (the root must be on a bpffs).
    pub fn prepare(&self) -> Result<(), BpfError> {
        for dir in [self.maps_dir(), self.root.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|e| BpfError::Pin(format!("creating {}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Decides every map's fate from its definition in the object and what
    /// is pinned; moves the pins of maps to migrate to `NAME:pending` in
    /// this version's directory (from there or from another version's).
    pub fn plan(&self, wanted: &BTreeMap<String, Layout>) -> Result<Plan, BpfError> {
        self.prepare()?;
        let others = self.other_versions();
        let mut plan = Plan::default();
        for (name, want) in wanted {
            let path = self.map_path(name);
            let pending = self.pending_path(name);
            // A pending pin left by an interrupted migration is the real
            // old map: it goes back first.
            if pending.exists() {
                let _ = std::fs::remove_file(&path);
                move_pin(&pending, &path)?;
            }
            let (from, why) = if path.exists() {
                let have = MapInfo::from_pin(&path).and_then(|i| Layout::of_pin(&i));
                match have {
                    Ok(have) if have == *want => {
                        plan.fates.insert(name.clone(), Fate::Reused);
                        continue;
                    }
                    Ok(have) => (path.clone(), describe(&have, want)),
                    Err(e) => (path.clone(), format!("unreadable pin: {e}")),
                }
            } else if let Some((v, old)) = others.iter().rev().map(|(v, d)| (v, d.join(name))).find(|(_, p)| p.exists())
            {
                (old, format!("layout version {v} -> {MAP_LAYOUT_VERSION}"))
            } else {
                plan.fates.insert(name.clone(), Fate::Created);
                continue;
            };
            move_pin(&from, &pending)?;
            plan.origins.insert(name.clone(), from);
            plan.fates.insert(name.clone(), Fate::Migrated(why));
        }
        Ok(plan)
    }

    /// The load failed: the new pins go, the old ones go back where they
    /// were, so the running datapath keeps what it had.
    pub fn abort(&self, plan: &Plan) {
        for (name, fate) in &plan.fates {
            match fate {
                Fate::Migrated(_) => {
                    let _ = std::fs::remove_file(self.map_path(name));
                    if let Some(origin) = plan.origins.get(name) {
                        if let Err(e) = move_pin(&self.pending_path(name), origin) {
                            tracing::error!("restoring the pin of {name}: {e}");
                        }
                    }
                }
                Fate::Created => {
                    let _ = std::fs::remove_file(self.map_path(name));
                }
                Fate::Reused => {}
            }
        }
    }

    /// The old map of a migration, opened from its pending pin.
    pub fn pending_map(&self, name: &str) -> Option<MapData> {
        MapData::from_pin(self.pending_path(name)).ok()
    }

    /// The migration is over: the old maps' pins go (the maps go with the
    /// last program that uses them), and so do other versions' directories
    /// (what is left there, no program of this build uses).
    pub fn finish(&self, plan: &Plan) {
        for (name, fate) in &plan.fates {
            if matches!(fate, Fate::Migrated(_)) {
                let _ = std::fs::remove_file(self.pending_path(name));
            }
        }
        for (_, dir) in self.other_versions() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Removes every pin (maps, links, the layout file) and the directory
    /// itself: `datapath reset` and `--cleanup-on-exit`. Unpinning a TCX
    /// link detaches its program once no process holds it.
    pub fn remove_all(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn describe(have: &Layout, want: &Layout) -> String {
    let mut d = Vec::new();
    if have.map_type != want.map_type {
        d.push(format!("type {} -> {}", have.map_type, want.map_type));
    }
    if have.key_size != want.key_size {
        d.push(format!("key {} -> {} bytes", have.key_size, want.key_size));
    }
    if have.value_size != want.value_size {
        d.push(format!("value {} -> {} bytes", have.value_size, want.value_size));
    }
    if have.max_entries != want.max_entries {
        d.push(format!("capacity {} -> {}", have.max_entries, want.max_entries));
    }
    if have.flags != want.flags {
        d.push(format!("flags {:#x} -> {:#x}", have.flags, want.flags));
    }
    if d.is_empty() {
        d.push("same sizes".into());
    }
    d.join(", ")
}

/// Copies the connection tracker from the old map into the new one
/// (entries already in the new map are kept: they are newer). Entries of a
/// layout this build cannot translate are refused with an error, so the
/// caller keeps the old datapath. Returns the number of entries copied.
pub fn copy_ct(old: MapData, new: &mut BpfHashMap<MapData, CtKey, CtEntry>) -> Result<usize, BpfError> {
    // Version 1 is the only layout there has been; a later one adds its
    // translation here.
    copy_entries(MAP_CT, "conntrack", old, new)
}

/// Copies the IPv6 connection tracker from the old `CT6` (another
/// capacity) into the new one, as [`copy_ct`] does.
pub fn copy_ct6(old: MapData, new: &mut BpfHashMap<MapData, CtKey6, CtEntry6>) -> Result<usize, BpfError> {
    copy_entries(MAP_CT6, "IPv6 conntrack", old, new)
}

/// Copies every entry of the old hash map `name` (pending) into `new`
/// with `BPF_NOEXIST` (what the new programs wrote meanwhile wins), when
/// its key and value sizes are this build's; returns how many were copied.
fn copy_entries<K: aya::Pod, V: aya::Pod>(
    name: &str,
    what: &str,
    old: MapData,
    new: &mut BpfHashMap<MapData, K, V>,
) -> Result<usize, BpfError> {
    let err = |e: aya::maps::MapError| BpfError::Pin(format!("{name}:pending: {e}"));
    let info = old.info().map_err(err)?;
    let (k, v) = (info.key_size() as usize, info.value_size() as usize);
    if k != std::mem::size_of::<K>() || v != std::mem::size_of::<V>() {
        return Err(BpfError::Pin(format!(
            "cannot translate {what} entries of {k}-byte keys and {v}-byte values (this build has {} and {})",
            std::mem::size_of::<K>(),
            std::mem::size_of::<V>()
        )));
    }
    let old: BpfHashMap<MapData, K, V> = BpfHashMap::try_from(Map::from_map_data(old).map_err(err)?).map_err(err)?;
    let mut copied = 0;
    for item in old.iter() {
        let Ok((key, entry)) = item else { continue };
        if new.insert(key, entry, u64::from(aya_obj::generated::BPF_NOEXIST)).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}

/// Copies the per-reason counters from the old `STATS` (another capacity:
/// the reason codes grew) into the new one, code by code, for the codes
/// both have. Packets the old programs count after the copy, until their
/// attachments move, are not carried over. Returns the number of codes
/// copied.
pub fn copy_stats(old: MapData, new: &mut PerCpuArray<MapData, Counter>) -> Result<u32, BpfError> {
    let err = |e: aya::maps::MapError| BpfError::Pin(format!("{MAP_STATS}:pending: {e}"));
    let info = old.info().map_err(|e| BpfError::Pin(format!("{MAP_STATS}:pending: {e}")))?;
    if info.value_size() as usize != std::mem::size_of::<Counter>() {
        return Err(BpfError::Pin(format!(
            "cannot translate counters of {} bytes (this build has {})",
            info.value_size(),
            std::mem::size_of::<Counter>()
        )));
    }
    let n = info.max_entries().min(new.len());
    let old: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::from_map_data(old).map_err(err)?).map_err(err)?;
    for code in 0..n {
        let values = old.get(&code, 0).map_err(err)?;
        new.set(code, values, 0).map_err(err)?;
    }
    Ok(n)
}
