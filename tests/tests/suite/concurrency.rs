//! The agent's concurrency model: read-only requests are answered from a
//! published snapshot and never wait behind a slow create.

use std::time::{Duration, Instant};

use datapath::api::{Client, EndpointCreate, NetworkView, Request, StatsView};
use datapath_tests::both_datapaths;
use datapath_tests::node::Node;

const CREATES: usize = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

both_datapaths! {
/// While 20 endpoint creates run in parallel, `stats` and `network ls`
/// each answer in well under the time of one create. Latencies are printed;
/// only an order of magnitude is asserted.
fn reads_never_wait_behind_creates(dp) {
    let mut node = Node::on(dp);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let names: Vec<String> = (0..CREATES).map(|i| node.ep(&format!("c{i}"))).collect();
    let socket = node.socket.clone();
    let (creates, reads) = rt.block_on(async move {
        let mut tasks = Vec::new();
        for name in names {
            let client = Client::new(&socket);
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let req = EndpointCreate { name: name.clone(), ..Default::default() };
                let r = client.call(Request::EndpointCreate(req)).await;
                (name, r.map(|_| t.elapsed()))
            }));
        }
        // Give the creates a head start, so the reads below meet them.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let client = Client::new(&socket);
        let mut reads: Vec<(&str, Duration)> = Vec::new();
        while tasks.iter().any(|t| !t.is_finished()) {
            let t = Instant::now();
            let _: StatsView = client.call_as(Request::Stats).await.expect("stats");
            reads.push(("stats", t.elapsed()));
            let t = Instant::now();
            let _: Vec<NetworkView> = client.call_as(Request::NetworkList).await.expect("network ls");
            reads.push(("network ls", t.elapsed()));
        }
        let mut creates = Vec::new();
        for t in tasks {
            let (name, r) = t.await.expect("create task");
            creates.push(r.unwrap_or_else(|e| panic!("endpoint create {name}: {e}")));
        }
        (creates, reads)
    });
    let mut creates = creates;
    let create_median = median(&mut creates);
    let create_max = *creates.last().unwrap();
    println!("{CREATES} parallel creates: median {:.1} ms, max {:.1} ms", ms(create_median), ms(create_max));
    for what in ["stats", "network ls"] {
        let mut v: Vec<Duration> = reads.iter().filter(|(w, _)| *w == what).map(|(_, d)| *d).collect();
        assert!(v.len() >= 2, "only {} {what} answered while the creates ran", v.len());
        let med = median(&mut v);
        let max = *v.last().unwrap();
        println!("{what} during the creates: {} answers, median {:.2} ms, max {:.2} ms", v.len(), ms(med), ms(max));
        // The agent makes endpoints one at a time: one create's own time is
        // the burst's share.
        let one_create = create_max / CREATES as u32;
        assert!(
            med * 5 < one_create,
            "{what} median {:.2} ms is not well under one create ({:.2} ms)",
            ms(med),
            ms(one_create)
        );
        assert!(
            max < create_max / 2,
            "{what} waited {:.1} ms: behind the creates (the burst took {:.1} ms)",
            ms(max),
            ms(create_max)
        );
    }
    let eps = node.endpoints();
    assert_eq!(eps.len(), CREATES, "every create made its endpoint");
}
}
