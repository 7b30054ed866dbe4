//! Attachments of the TC programs, made so the datapath outlives the agent
//! and upgrades never leave a packet unprocessed:
//!
//! * TCX: every link is pinned (`DIR/links/IFNAME`). A starting agent finds
//!   the pin; when the attached program is the one it loaded (same tag) it
//!   leaves the link alone, otherwise it puts the new program in place with
//!   `bpf_link_update` (atomic: every packet sees the old or the new one).
//! * clsact: our filter sits at a fixed priority and handle, so a new
//!   program replaces it in place (`NLM_F_REPLACE`); filters outlive the
//!   process by themselves.
//!
//! Detaching unpins (TCX) or deletes the filter (clsact). An agent that
//! stops without `--cleanup-on-exit` leaves every attachment as it is.

use std::collections::HashMap;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle};
use aya::programs::{LinkOrder, SchedClassifier};

use crate::datapath::loader::BpfError;
use crate::datapath::pins::Pins;

/// Priority and handle of our clsact filters (one per interface and hook).
const CLSACT_PRIORITY: u16 = 0xd47a;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment.
    Created,
    /// The same program was attached already (a restarted agent).
    Kept,
    /// Another program was attached: replaced in place.
    Replaced,
}

/// One live attachment.
enum Handle {
    /// A pinned TCX link, and the interface it is pinned under.
    Tcx(PinnedLink, String),
    /// A TCX link of a datapath loaded without pins (program tests).
    TcxUnpinned(FdLink),
    /// Our clsact filter on the interface.
    Clsact(SchedClassifierLink),
}

/// The attachments of one program, by ifindex.
#[derive(Default)]
pub struct Attachments {
    by_ifindex: HashMap<u32, Handle>,
}

/// Program tags by program id (of every program loaded on the node), to
/// tell whether a pinned link runs the program just loaded.
pub type Tags = HashMap<u32, u64>;

pub fn loaded_tags() -> Tags {
    aya::programs::loaded_programs().filter_map(Result::ok).map(|p| (p.id(), p.tag())).collect()
}

impl Attachments {
    pub fn contains(&self, ifindex: u32) -> bool {
        self.by_ifindex.contains_key(&ifindex)
    }

    /// Attaches `prog` to the ingress of `iface`; a pinned link running a
    /// program of tag `keep` is left alone.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &mut self,
        prog: &mut SchedClassifier,
        name: &'static str,
        keep: Option<u64>,
        tags: &Tags,
        pins: Option<&Pins>,
        tcx: bool,
        iface: &str,
        ifindex: u32,
    ) -> Result<Attached, BpfError> {
        let err = |source| BpfError::Attach { prog: name, iface: iface.to_string(), source };
        let (handle, how) = if tcx {
            match pins {
                Some(pins) => attach_tcx(prog, keep, tags, pins, iface).map_err(err)?,
                None => (Handle::TcxUnpinned(new_tcx_link(prog, iface).map_err(err)?), Attached::Created),
            }
        } else {
            attach_clsact(prog, iface).map_err(err)?
        };
        self.by_ifindex.insert(ifindex, handle);
        Ok(how)
    }

    /// Detaches from `ifindex`; not attached is fine.
    pub fn detach(&mut self, ifindex: u32) {
        match self.by_ifindex.remove(&ifindex) {
            Some(Handle::Tcx(pinned, _)) => {
                // Unpinned and closed: the kernel detaches the program.
                if let Err(e) = pinned.unpin() {
                    tracing::warn!("unpinning the link of ifindex {ifindex}: {e}");
                }
            }
            // Dropping the link detaches it.
            Some(Handle::TcxUnpinned(link)) => drop(link),
            Some(Handle::Clsact(link)) => drop(link),
            None => {}
        }
    }

    /// Interfaces whose pinned link this process holds.
    pub fn pinned_ifaces(&self) -> impl Iterator<Item = &str> {
        self.by_ifindex.values().filter_map(|h| match h {
            Handle::Tcx(_, iface) => Some(iface.as_str()),
            _ => None,
        })
    }

    /// The agent stops and leaves the datapath running: nothing is
    /// detached (TCX links stay pinned, clsact filters stay).
    pub fn release(&mut self) {
        for (_, h) in self.by_ifindex.drain() {
            match h {
                Handle::Tcx(pinned, _) => drop(pinned),
                // Without a pin the link goes with its last fd.
                Handle::TcxUnpinned(link) => drop(link),
                Handle::Clsact(link) => std::mem::forget(link),
            }
        }
    }
}

fn prog_err(e: std::io::Error) -> aya::programs::ProgramError {
    aya::programs::ProgramError::IOError(e)
}

/// TCX: reuse, replace or create the pinned link of `iface`.
fn attach_tcx(
    prog: &mut SchedClassifier,
    keep: Option<u64>,
    tags: &Tags,
    pins: &Pins,
    iface: &str,
) -> Result<(Handle, Attached), aya::programs::ProgramError> {
    let path = pins.link_path(iface);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link = FdLink::from(pinned);
        let running = link.info().ok().and_then(|i| tags.get(&i.program_id()).copied());
        if running.is_some() && running == keep {
            let pinned = PinnedLink::from_pin(&path).map_err(|e| prog_err(std::io::Error::other(e)))?;
            return Ok((Handle::Tcx(pinned, iface.to_string()), Attached::Kept));
        }
        // Another program (an upgrade): replaced in place, atomically. A
        // link whose interface is gone fails here and is made anew.
        if let Ok(link) = SchedClassifierLink::try_from(link) {
            if let Ok(id) = prog.attach_to_link(link) {
                let link = prog.take_link(id)?;
                drop(link); // the pin keeps the link; the update is done
                let pinned = PinnedLink::from_pin(&path).map_err(|e| prog_err(std::io::Error::other(e)))?;
                return Ok((Handle::Tcx(pinned, iface.to_string()), Attached::Replaced));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    let pinned = new_tcx_link(prog, iface)?.pin(&path).map_err(|e| prog_err(std::io::Error::other(e)))?;
    Ok((Handle::Tcx(pinned, iface.to_string()), Attached::Created))
}

fn new_tcx_link(prog: &mut SchedClassifier, iface: &str) -> Result<FdLink, aya::programs::ProgramError> {
    let id = prog.attach_with_options(iface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))?;
    FdLink::try_from(prog.take_link(id)?).map_err(|e| prog_err(std::io::Error::other(e)))
}

/// clsact: replace our filter in place, or add it.
fn attach_clsact(prog: &mut SchedClassifier, iface: &str) -> Result<(Handle, Attached), aya::programs::ProgramError> {
    // The qdisc may exist already, which is fine.
    let _ = tc::qdisc_add_clsact(iface);
    let existing = SchedClassifierLink::attached(iface, TcAttachType::Ingress, CLSACT_PRIORITY, CLSACT_HANDLE, None)
        .map_err(prog_err)?;
    let (id, how) = match prog.attach_to_link(existing) {
        Ok(id) => (id, Attached::Replaced),
        Err(_) => {
            let options = NlOptions { priority: CLSACT_PRIORITY, handle: CLSACT_HANDLE, ..Default::default() };
            let id = prog.attach_with_options(iface, TcAttachType::Ingress, TcAttachOptions::Netlink(options))?;
            (id, Attached::Created)
        }
    };
    let link = prog.take_link(id)?;
    Ok((Handle::Clsact(link), how))
}
