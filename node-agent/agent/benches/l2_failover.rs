//! L2 failover time: the lab of `tests/common/l2.rs` (two XDP directors of one VIP in
//! cluster mode against the real control plane; the owner's agent killed with
//! SIGKILL and its link cut), run `RUNS` times at each Lease duration. Reports the
//! time until the client's neighbour entry names the new owner (learnt from its
//! gratuitous ARP), until a new connection succeeds, the long-lived connections
//! lost, and the Lease writes per second of both directors (the API server's count).
//!
//! Needs root and Go (the test control plane). `cargo bench -p kubelvs-agent --bench
//! l2_failover` (options: RUNS, then Lease durations in ms; default 3 2000 600). The
//! Lease writes are counted in the first run, and in one more run with
//! `KUBELVS_L2_VIPS` (default 1000) more VirtualServices on VIPs of their own.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(3) as usize;
    let leases: Vec<u64> = match &args[1.min(args.len())..] {
        [] => vec![2000, 600],
        l => l.to_vec(),
    };
    let vips: usize = std::env::var("KUBELVS_L2_VIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let ms = |d: Duration| d.as_millis();
    for lease_ms in leases {
        let mut takeover = Vec::new();
        let mut connection = Vec::new();
        let (mut lost, mut total) = (0, 0);
        let mut lease_writes = None;
        for run in 0..runs {
            let f = common::l2::failover(lease_ms, run == 0, common::l2::Death::Killed);
            lease_writes = lease_writes.or(f.lease_writes_per_second);
            eprintln!("lease {lease_ms} ms: {f:?}");
            takeover.push(f.takeover);
            connection.push(f.new_connection);
            lost += f.lost;
            total += f.connections;
        }
        takeover.sort();
        connection.sort();
        println!(
            "l2_failover lease_ms={lease_ms} runs={runs} takeover_median_ms={} takeover_max_ms={} new_connection_median_ms={} new_connection_max_ms={} lost={lost}/{total} lease_writes_per_second_2_directors={:.1}",
            ms(takeover[runs / 2]),
            ms(takeover[runs - 1]),
            ms(connection[runs / 2]),
            ms(connection[runs - 1]),
            lease_writes.unwrap_or_default(),
        );
        // The Lease writes with a thousand VIPs more (one run).
        let f = common::l2::failover_with(lease_ms, true, common::l2::Death::Killed, vips);
        eprintln!("lease {lease_ms} ms, {vips} more VIPs: {f:?}");
        println!(
            "l2_failover lease_ms={lease_ms} more_vips={vips} takeover_ms={} lost={}/{} lease_writes_per_second_2_directors={:.1}",
            ms(f.takeover),
            f.lost,
            f.connections,
            f.lease_writes_per_second.unwrap_or_default(),
        );
    }
}
