//! `datapath conntrack ls|flush`: the eBPF connection tracker.

use anyhow::Result;
use clap::Subcommand;
use datapath::api::{Client, FlowView, Request};

use super::output::{self, left, right, Column, Output, Table};

#[derive(Subcommand)]
pub enum ConntrackCmd {
    /// List tracked flows.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Empty the table.
    Flush,
}

pub async fn run(client: &Client, cmd: ConntrackCmd) -> Result<()> {
    match cmd {
        ConntrackCmd::Ls { output, endpoint } => {
            let flows: Vec<FlowView> = client.call_as(Request::ConntrackList { endpoint }).await?;
            output::print(output, &flows[..], table)
        }
        ConntrackCmd::Flush => {
            let v = client.call(Request::ConntrackFlush).await?;
            println!("removed {} entries", v["removed"]);
            Ok(())
        }
    }
}

const COLUMNS: &[Column] = &[
    left("ENDPOINT", 12),
    left("PROTO", 5),
    left("ORIGINAL", 43),
    left("TRANSLATED", 22),
    left("STATE", 12),
    right("PACKETS", 8),
    right("BYTES", 10),
    right("EXPIRES", 7),
];

fn table(flows: &[FlowView]) -> String {
    let mut t = Table::new(COLUMNS);
    for f in flows {
        let o = &f.flow.original;
        // `[v6]:port` for IPv6 flows.
        let sock = |a, p| std::net::SocketAddr::new(a, p).to_string();
        let original = format!("{} > {}", sock(o.src, o.sport), sock(o.dst, o.dport));
        let translated = f.flow.translated.as_ref().map(|t| sock(t.src, t.sport)).unwrap_or_else(|| "-".into());
        let expires = format!("{}s", f.flow.remaining_s);
        let endpoint = f.endpoint.as_deref().unwrap_or("?");
        t.row([
            &endpoint,
            &f.flow.protocol,
            &original,
            &translated,
            &f.flow.state,
            &f.flow.packets,
            &f.flow.bytes,
            &expires,
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(endpoint: Option<&str>, translated: bool, remaining_s: u64) -> FlowView {
        serde_json::from_value(serde_json::json!({
            "endpoint": endpoint,
            "protocol": "tcp",
            "original": { "src": "10.10.0.2", "sport": 40000, "dst": "203.0.113.1", "dport": 80 },
            "translated": translated.then(|| serde_json::json!({ "src": "203.0.113.2", "sport": 1024 })),
            "state": "established",
            "packets": 10, "bytes": 1000, "tx_packets": 5, "tx_bytes": 500, "rx_packets": 5, "rx_bytes": 500,
            "remaining_s": remaining_s, "age_s": 1, "ifindex": 7,
        }))
        .expect("a flow")
    }

    #[test]
    fn table_is_the_historical_format() {
        let flows = [flow(Some("a1"), true, 21599), flow(None, false, 12345678)];
        let mut want = format!(
            "{:<12} {:<5} {:<43} {:<22} {:<12} {:>8} {:>10} {:>7}\n",
            "ENDPOINT", "PROTO", "ORIGINAL", "TRANSLATED", "STATE", "PACKETS", "BYTES", "EXPIRES"
        );
        for (ep, tr, rem) in [("a1", "203.0.113.2:1024", 21599), ("?", "-", 12345678)] {
            want += &format!(
                "{:<12} {:<5} {:<43} {:<22} {:<12} {:>8} {:>10} {:>6}s\n",
                ep, "tcp", "10.10.0.2:40000 > 203.0.113.1:80", tr, "established", 10, 1000, rem
            );
        }
        assert_eq!(table(&flows), want);
    }
}
