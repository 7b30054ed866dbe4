//! `datapath stats` (per-reason counters) and `datapath trace` (live
//! packet traces).

use std::io::Write;

use anyhow::Result;
use datapath::api::{Client, CounterView, Request, StatsView};

use super::output::{self, left, right, Column, Output, Table};

pub async fn stats(client: &Client, output: Output) -> Result<()> {
    let stats: StatsView = client.call_as(Request::Stats).await?;
    output::print(output, &stats, table)
}

/// Streams trace records as `ENDPOINT LINE` until the agent closes the
/// stream or stdout goes away.
pub async fn trace(client: &Client, endpoint: Option<String>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    client
        .trace(endpoint, |rec| writeln!(out, "{} {}", rec.endpoint, rec.line).and_then(|_| out.flush()).is_ok())
        .await?;
    Ok(())
}

const COLUMNS: &[Column] = &[left("REASON", 24), right("KIND", 6), right("PACKETS", 12), right("BYTES", 14)];

const NETWORK_COLUMNS: &[Column] = &[left("NETWORK", 24), right("NAT-FLOWS", 12), right("NAT-NO-PORT", 12)];

fn kind(c: &CounterView) -> &'static str {
    if c.event {
        "event"
    } else if c.drop {
        "drop"
    } else {
        "fwd"
    }
}

fn table(stats: &StatsView) -> String {
    let mut t = Table::new(COLUMNS);
    for c in &stats.counters {
        t.row([&c.reason, &kind(c), &c.packets, &c.bytes]);
    }
    let mut text = t.render();
    if !stats.networks.is_empty() {
        let mut n = Table::new(NETWORK_COLUMNS);
        for s in &stats.networks {
            n.row([&s.network, &s.nat_flows, &s.nat_no_port_packets]);
        }
        text += &n.render();
    }
    if let Some(ct) = &stats.conntrack {
        let pct = if ct.capacity > 0 { ct.live as f64 * 100.0 / f64::from(ct.capacity) } else { 0.0 };
        text += &format!(
            "conntrack: {} of {} entries in use ({pct:.1}%), last GC removed {}\n",
            ct.live, ct.capacity, ct.removed
        );
    }
    let d = &stats.dns;
    if d.endpoints_served > 0 {
        text += &format!(
            "dns: {} endpoints served; {} local answers, {} empty, {} forwarded ({} failed), {} refused, {} formerr, \
             {} notimp, {} dropped, {} over the in-flight bound, {} TCP connections closed\n",
            d.endpoints_served,
            d.local,
            d.nodata,
            d.forwarded,
            d.forward_failed,
            d.refused,
            d.formerr,
            d.notimp,
            d.dropped,
            d.overloaded,
            d.tcp_closed
        );
    }
    if let Some(s) = &stats.start {
        text += &format!(
            "agent start: maps reused {}, created {}, migrated {}; {} conntrack entries kept; attachments kept {}, \
             replaced {}, created {}; {} half-made endpoints rolled back, {} stale map entries removed\n",
            s.maps_reused.len(),
            s.maps_created.len(),
            s.maps_migrated.len(),
            s.conntrack_entries_kept,
            s.attachments_kept,
            s.attachments_replaced,
            s.attachments_created,
            s.endpoints_rolled_back,
            s.stale_entries_removed
        );
        for m in &s.maps_migrated {
            text += &format!("  migrated {m}\n");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(reason: &str, drop: bool, event: bool, packets: u64, bytes: u64) -> CounterView {
        CounterView { reason: reason.into(), code: 0, drop, event, packets, bytes }
    }

    #[test]
    fn table_is_the_historical_format() {
        let stats = StatsView {
            counters: vec![
                counter("redirect-peer", false, false, 12, 3400),
                counter("drop-spoof-mac", true, false, 1, 60),
                counter("ct-new", false, true, 3, 0),
            ],
            conntrack: None,
            start: None,
            networks: vec![],
            dns: Default::default(),
        };
        let mut want = format!("{:<24} {:>6} {:>12} {:>14}\n", "REASON", "KIND", "PACKETS", "BYTES");
        for (r, k, p, b) in
            [("redirect-peer", "fwd", 12, 3400), ("drop-spoof-mac", "drop", 1, 60), ("ct-new", "event", 3, 0)]
        {
            want += &format!("{:<24} {:>6} {:>12} {:>14}\n", r, k, p, b);
        }
        assert_eq!(table(&stats), want);
    }
}
