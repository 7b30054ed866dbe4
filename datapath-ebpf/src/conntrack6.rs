//! The IPv6 connection tracker (`CT6`): lookup, creation of both entries
//! of a masqueraded flow with the NAT port search, and the takeover of the
//! port of a finished flow, as `conntrack` does for IPv4 (same port range,
//! tries, takeover window and lifetimes). The per-packet state update is
//! `conntrack`'s own, on the [`CtEntry`](datapath_common::CtEntry) inside
//! every [`CtEntry6`].

use aya_ebpf::bindings::BPF_NOEXIST;
use datapath_common::{
    forward_ports6, reason, reply_ports6, CtEntry6, CtKey6, CT_F_DONE, CT_F_REVERSE, CT_F_SNAT, CT_NEW,
    CT_ORPHAN_GRACE_NS, CT_TCP_CLOSED, CT_TCP_SYN_SENT, IPPROTO_TCP, NAT_PORT_TAKEOVER_FROM, NAT_PORT_TAKEOVER_UNTIL,
    NAT_PORT_TRIES,
};

use crate::{
    conntrack::{self, expiry},
    maps,
    verdict::count,
};

pub use crate::maps::{ct6_get as get, ct6_remove as remove, Snat6};

const EEXIST: i32 = 17;

/// Whether two IPv6 addresses are equal (four word compares: BPF has no
/// `memcmp`).
#[inline(always)]
pub fn eq6(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// Writes `CtKey6::reply_of(fwd, nat_addr, nat_port)` into `k` field by
/// field (no key built on the stack: the chain's 512 bytes).
#[inline(always)]
pub fn reply_into(k: &mut CtKey6, fwd: &CtKey6, nat_addr: &[u8; 16], nat_port: u16) {
    let (sport, dport) = reply_ports6(fwd.proto, fwd.dport, nat_port);
    k.saddr = fwd.daddr;
    k.daddr = *nat_addr;
    k.sport = sport;
    k.dport = dport;
    k.proto = fwd.proto;
    k._pad = [0; 3];
}

/// Writes `CtKey6::forward_of(reply, orig_addr, orig_port)` into `k`
/// field by field.
#[inline(always)]
pub fn forward_into(k: &mut CtKey6, reply: &CtKey6, orig_addr: &[u8; 16], orig_port: u16) {
    let (sport, dport) = forward_ports6(reply.proto, reply.sport, orig_port);
    k.saddr = *orig_addr;
    k.daddr = reply.saddr;
    k.sport = sport;
    k.dport = dport;
    k.proto = reply.proto;
    k._pad = [0; 3];
}

/// Whether the entry at reply tuple `rkey` is the reverse entry of the
/// forward tuple `fkey`.
#[inline(always)]
pub fn reverse_is(rkey: &CtKey6, fkey: &CtKey6) -> bool {
    match get(rkey) {
        Some(r) => r.e.flags & CT_F_REVERSE != 0 && eq6(&r.addr, &fkey.saddr) && r.e.port == fkey.sport,
        None => false,
    }
}

/// As `conntrack::take_over`: frees the reply tuple `rkey` (taken by `r`)
/// when its flow is over or gone. `true`: it may be inserted again.
#[inline(always)]
fn take_over(rkey: &CtKey6, fkey: &mut CtKey6, r: &CtEntry6, now: u64) -> bool {
    if r.e.flags & CT_F_REVERSE == 0 {
        return false;
    }
    forward_into(fkey, rkey, &r.addr, r.e.port);
    let young = now.wrapping_sub(r.e.created_ns) < CT_ORPHAN_GRACE_NS;
    match get(fkey) {
        Some(f) => {
            let ours = f.e.flags & CT_F_REVERSE == 0 && eq6(&f.addr, &rkey.daddr) && f.e.port == rkey.dport;
            if ours {
                let over = f.e.expires_ns <= now
                    || (rkey.proto == IPPROTO_TCP && f.e.state == CT_TCP_CLOSED && f.e.flags & CT_F_DONE != 0);
                if !over {
                    return false;
                }
                remove(fkey);
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

/// Writes a fresh entry into `e` (a map value) field by field: a
/// struct literal would be built on the stack first (the chain's 512
/// bytes).
#[inline(always)]
fn fill(
    e: &mut CtEntry6,
    now: u64,
    (expires_ns, ifindex, port): (u64, u32, u16),
    (state, flags): (u8, u8),
    addr: &[u8; 16],
) {
    let x = &mut e.e;
    x.created_ns = now;
    x.last_seen_ns = now;
    x.expires_ns = expires_ns;
    x.tx_packets = 0;
    x.tx_bytes = 0;
    x.rx_packets = 0;
    x.rx_bytes = 0;
    x.addr = 0;
    x.ifindex = ifindex;
    x.port = port;
    x.state = state;
    x.flags = flags;
    x.tx_tcp_flags = 0;
    x.rx_tcp_flags = 0;
    x._pad = [0; 2];
    x.fib_ns = 0;
    x.fib_ifindex = 0;
    x.fib_mtu = 0;
    x.fib_dmac = [0; 6];
    x.fib_smac = [0; 6];
    x._pad2 = [0; 4];
    e.addr = *addr;
}

/// As `conntrack::reserve_port`, in `CT6` (the tuples tried live in
/// `SCRATCH6`).
#[inline(always)]
fn reserve_port(
    key: &CtKey6,
    masq: &[u8; 16],
    (min, range, start): (u32, u32, u32),
    entry: &CtEntry6,
    now: u64,
) -> Result<u16, u32> {
    let Some((rkey, fkey)) = maps::scratch6_search() else {
        return Err(reason::DROP_CT_TABLE_FULL);
    };
    let mut i = 0;
    while i < NAT_PORT_TRIES {
        let p = ((min + (start + i) % range) as u16).to_be();
        reply_into(rkey, key, masq, p);
        let (taken, freed) = match get(rkey) {
            None => (false, false),
            Some(r) if (NAT_PORT_TAKEOVER_FROM..NAT_PORT_TAKEOVER_UNTIL).contains(&i) => {
                (true, take_over(rkey, fkey, r, now))
            }
            Some(_) => (true, false),
        };
        if !taken || freed {
            match maps::ct6_insert(rkey, entry, u64::from(BPF_NOEXIST)) {
                Ok(()) => {
                    if freed {
                        count(reason::EV_NAT_PORT_REUSED, 0);
                    }
                    return Ok(p);
                }
                Err(e) if e == -EEXIST => {}
                Err(_) => return Err(reason::DROP_CT_TABLE_FULL),
            }
        }
        i += 1;
    }
    Ok(0)
}

/// Creates both entries of a new masqueraded flow (as
/// `conntrack::create`): the reverse entry first (`BPF_NOEXIST`, which
/// reserves the port), then the forward one. `packed`: the endpoint's
/// ifindex (bits 0-31) and a port to try first (32-47, wire order, 0:
/// none). Returns the NAT port (wire order) or the drop reason.
#[inline(never)]
pub fn create(key: &CtKey6, packed: u64, snat: &Snat6, now: u64) -> Result<u16, u32> {
    let ifindex = packed as u32;
    let (start, range) = conntrack::first_port(packed, key.sport, snat.port_min, snat.port_max)?;
    let Some(entry) = maps::scratch_entry6() else {
        return Err(reason::DROP_CT_TABLE_FULL);
    };
    fill(entry, now, (0, ifindex, key.sport), (CT_NEW, CT_F_REVERSE | CT_F_SNAT), &key.saddr);
    let port = reserve_port(key, &snat.addr, (u32::from(snat.port_min), range, start), entry, now)?;
    if port == 0 {
        return Err(reason::DROP_NAT_NO_PORT);
    }
    let state = if key.proto == IPPROTO_TCP { CT_TCP_SYN_SENT } else { CT_NEW };
    fill(entry, now, (expiry(key.proto, state, now), ifindex, port), (state, CT_F_SNAT), &snat.addr);
    if maps::ct6_insert(key, entry, 0).is_err() {
        if let Some((rkey, _)) = maps::scratch6_search() {
            reply_into(rkey, key, &snat.addr, port);
            remove(rkey);
        }
        return Err(reason::DROP_CT_TABLE_FULL);
    }
    Ok(port)
}
