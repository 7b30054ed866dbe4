//! The connection tracker: lookup, creation of both entries of a flow (with
//! the SNAT port search), per-packet state updates, and the takeover of the
//! port of a finished flow. Keys and their derivation are
//! `datapath_common::ct`'s.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use datapath_common::{
    reason, CtEntry, CtKey, CT_ESTABLISHED, CT_F_DONE, CT_F_LAST_FIN_RX, CT_F_REVERSE, CT_F_RX_FIN, CT_F_SEEN_REPLY,
    CT_F_SNAT, CT_F_TX_FIN, CT_NEW, CT_ORPHAN_GRACE_NS, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_SYN_SENT, IPPROTO_TCP,
    NAT_PORT_TAKEOVER_FROM, NAT_PORT_TAKEOVER_UNTIL, NAT_PORT_TRIES,
};

use crate::{
    hdr::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps,
    verdict::count,
};

pub use crate::maps::{ct_get as get, ct_remove as remove};

/// How a network's traffic is masqueraded (from its `NetworkInfo`).
#[derive(Clone, Copy)]
pub struct Snat {
    /// The masquerade address, wire order.
    pub addr: u32,
    /// The uplink's ifindex, 0 when unknown.
    pub uplink_ifindex: u32,
    /// The NAT port range, inclusive, host order.
    pub port_min: u16,
    pub port_max: u16,
    /// The network's id (its `NET_STATS` slot).
    pub network_id: u32,
}

const EEXIST: i32 = 17;
const NS: u64 = 1_000_000_000;

/// `bpf_ktime_get_ns()`: the clock of every `CtEntry` time.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// When a flow of `proto` in `state` seen at `now` expires.
#[inline(always)]
pub fn expiry(proto: u8, state: u8, now: u64) -> u64 {
    now + u64::from(maps::ct_config().lifetime_s(proto, state)) * NS
}

/// The TCP state and flags of a forward entry after a segment with
/// `tcp_flags` (`reply`: remote -> endpoint).
#[inline(always)]
fn tcp_transition(mut state: u8, mut flags: u8, reply: bool, tcp_flags: u8) -> (u8, u8) {
    const BOTH: u8 = CT_F_RX_FIN | CT_F_TX_FIN;
    if tcp_flags & TCP_RST != 0 {
        state = CT_TCP_CLOSED;
        flags |= CT_F_DONE;
    } else if tcp_flags & TCP_FIN != 0 {
        let had_both = flags & BOTH == BOTH;
        flags |= if reply { CT_F_RX_FIN } else { CT_F_TX_FIN };
        state = if flags & BOTH == BOTH {
            if !had_both {
                // Who sent the second FIN: the other side sends the last ACK.
                flags = if reply { flags | CT_F_LAST_FIN_RX } else { flags & !CT_F_LAST_FIN_RX };
            }
            CT_TCP_CLOSED
        } else {
            CT_TCP_CLOSING
        };
    } else if !reply && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && state >= CT_TCP_CLOSING {
        // A new SYN on a closing flow reopens it (same mapping).
        state = CT_TCP_SYN_SENT;
        flags &= !(BOTH | CT_F_LAST_FIN_RX | CT_F_DONE);
    } else if state == CT_TCP_CLOSED
        && flags & BOTH == BOTH
        && tcp_flags & TCP_ACK != 0
        && reply != (flags & CT_F_LAST_FIN_RX != 0)
    {
        // The ACK of the last FIN: both ends are done.
        flags |= CT_F_DONE;
    } else if reply && state == CT_TCP_SYN_SENT && tcp_flags & TCP_ACK != 0 {
        state = CT_ESTABLISHED;
    }
    (state, flags)
}

/// Per-packet state update of a forward entry (`reply`: the packet goes
/// remote -> endpoint).
#[inline(always)]
pub fn update(e: &mut CtEntry, proto: u8, reply: bool, tcp_flags: u8, len: u32, now: u64) {
    let mut state = e.state;
    let mut flags = e.flags;
    if reply {
        e.rx_packets += 1;
        e.rx_bytes += u64::from(len);
        e.rx_tcp_flags |= tcp_flags;
        flags |= CT_F_SEEN_REPLY;
    } else {
        e.tx_packets += 1;
        e.tx_bytes += u64::from(len);
        e.tx_tcp_flags |= tcp_flags;
    }
    if proto == IPPROTO_TCP {
        (state, flags) = tcp_transition(state, flags, reply, tcp_flags);
    } else if reply {
        state = CT_ESTABLISHED;
    }
    e.state = state;
    e.flags = flags;
    e.last_seen_ns = now;
    e.expires_ns = expiry(proto, state, now);
}

/// A new TCP connection on the tuple of a finished one: same mapping,
/// counters and state afresh (the caller then counts the packet).
#[inline(always)]
pub fn restart(e: &mut CtEntry, now: u64) {
    e.created_ns = now;
    e.tx_packets = 0;
    e.tx_bytes = 0;
    e.rx_packets = 0;
    e.rx_bytes = 0;
    e.tx_tcp_flags = 0;
    e.rx_tcp_flags = 0;
    e.flags = CT_F_SNAT;
    e.state = CT_TCP_SYN_SENT;
}

/// Whether the entry at reply tuple `rkey` is the reverse entry of the
/// forward tuple `fkey`.
#[inline(always)]
pub fn reverse_is(rkey: &CtKey, fkey: &CtKey) -> bool {
    match get(rkey) {
        Some(r) => r.flags & CT_F_REVERSE != 0 && r.addr == fkey.saddr && r.port == fkey.sport,
        None => false,
    }
}

/// The reply tuple `rkey` is taken (by `r`): frees it when its flow is over
/// (TCP `CT_F_DONE`, expired) or gone (an orphaned reverse entry older than
/// `CT_ORPHAN_GRACE_NS`), deleting both entries of that flow. `true`: the
/// tuple may be inserted again. A live flow is never touched.
#[inline(always)]
fn take_over(rkey: &CtKey, r: &CtEntry, now: u64) -> bool {
    if r.flags & CT_F_REVERSE == 0 {
        return false;
    }
    let fkey = CtKey::forward_of(rkey, r.addr, r.port);
    let young = now.wrapping_sub(r.created_ns) < CT_ORPHAN_GRACE_NS;
    match get(&fkey) {
        Some(f) => {
            let ours = f.flags & CT_F_REVERSE == 0 && f.addr == rkey.daddr && f.port == rkey.dport;
            if ours {
                let over = f.expires_ns <= now
                    || (rkey.proto == IPPROTO_TCP && f.state == CT_TCP_CLOSED && f.flags & CT_F_DONE != 0);
                if !over {
                    return false;
                }
                remove(&fkey);
            } else if young {
                return false;
            }
        }
        None if young => return false,
        None => {}
    }
    remove(rkey);
    true
}

/// Inserts the reverse entry `entry` of the forward tuple `key` at a free
/// (or taken-over) NAT port of `[min, min + range)`, trying `start` first
/// and walking up; returns the port (wire order, 0: none found) or the drop
/// reason. The reply tuple holds
/// the remote address and port: a port is reused for every other
/// destination, as the kernel's NAT does.
#[inline(always)]
fn reserve_port(
    key: &CtKey,
    masq: u32,
    min: u32,
    range: u32,
    start: u32,
    entry: &CtEntry,
    now: u64,
) -> Result<u16, u32> {
    let mut i = 0;
    while i < NAT_PORT_TRIES {
        let p = ((min + (start + i) % range) as u16).to_be();
        let rkey = CtKey::reply_of(key, masq, p);
        // A lookup first: cheaper than a failing insert, which takes (and
        // gives back) an LRU node.
        let (taken, freed) = match get(&rkey) {
            None => (false, false),
            // The first tries want a free port; the next ones take over
            // the port of a finished flow; the last ones look for a free
            // port again (few of them: a range full of live flows).
            Some(r) if (NAT_PORT_TAKEOVER_FROM..NAT_PORT_TAKEOVER_UNTIL).contains(&i) => {
                (true, take_over(&rkey, r, now))
            }
            Some(_) => (true, false),
        };
        if !taken || freed {
            match maps::ct_insert(&rkey, entry, u64::from(BPF_NOEXIST)) {
                Ok(()) => {
                    if freed {
                        count(reason::EV_NAT_PORT_REUSED, 0);
                    }
                    return Ok(p);
                }
                // Taken by another CPU meanwhile.
                Err(e) if e == -EEXIST => {}
                Err(_) => return Err(reason::DROP_CT_TABLE_FULL),
            }
        }
        i += 1;
    }
    Ok(0)
}

/// Where the port search of a new flow starts, as an offset into the NAT
/// range `min..=max` (host order), and the range's size: the tuple's
/// previous port (`packed` bits 32-47, wire order, 0: none), else the
/// original port `sport` (wire order) when it is in range (and free), else
/// a random port; the search then walks up. Shared by both families.
#[inline(always)]
pub fn first_port(packed: u64, sport: u16, min: u16, max: u16) -> Result<(u32, u32), u32> {
    let hint = u32::from(u16::from_be((packed >> 32) as u16));
    let (min, max) = (u32::from(min), u32::from(max));
    if min == 0 || max < min {
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let range = max - min + 1;
    if range == 0 {
        // Unreachable (max >= min), but lets the compiler drop the
        // division-by-zero panic the verifier would reject.
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let orig = u32::from(u16::from_be(sport));
    let start = if hint >= min && hint <= max {
        hint - min
    } else if orig >= min && orig <= max {
        orig - min
    } else {
        // SAFETY: plain helper call.
        (unsafe { bpf_get_prandom_u32() }) % range
    };
    Ok((start, range))
}

/// Creates both entries of a new flow (counters zero, the caller updates
/// them); returns the NAT port (wire order) or the drop reason. `packed`:
/// the endpoint's ifindex (bits 0-31) and a port to try first (32-47, wire
/// order, 0 for none: the port the tuple had before).
#[inline(never)]
pub fn create(key: &CtKey, packed: u64, snat: &Snat, now: u64) -> Result<u16, u32> {
    let ifindex = packed as u32;
    let (start, range) = first_port(packed, key.sport, snat.port_min, snat.port_max)?;
    let Some(entry) = maps::scratch_entry() else {
        return Err(reason::DROP_CT_TABLE_FULL);
    };
    let flags = CT_F_REVERSE | CT_F_SNAT;
    *entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        addr: key.saddr,
        port: key.sport,
        ifindex,
        flags,
        ..Default::default()
    };
    let port = reserve_port(key, snat.addr, u32::from(snat.port_min), range, start, entry, now)?;
    if port == 0 {
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let state = if key.proto == IPPROTO_TCP { CT_TCP_SYN_SENT } else { CT_NEW };
    *entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        expires_ns: expiry(key.proto, state, now),
        addr: snat.addr,
        port,
        ifindex,
        state,
        flags: CT_F_SNAT,
        ..Default::default()
    };
    if maps::ct_insert(key, entry, 0).is_err() {
        remove(&CtKey::reply_of(key, snat.addr, port));
        return Err(reason::DROP_CT_TABLE_FULL);
    }
    Ok(port)
}
