//! Prints the Maglev quality figures published in BENCHMARKS.md:
//! `cargo run --release -p kubelvs-maglev --example maglev_report`.

use kubelvs_maglev::{build, moved_share, Endpoint, DEFAULT_TABLE_SIZE};

fn servers(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let mut id = vec![198u8, 51, (100 + i / 250) as u8, (i % 250) as u8 + 1];
            id.extend_from_slice(&80u16.to_be_bytes());
            Endpoint::new(id, 1)
        })
        .collect()
}

fn main() {
    println!("M = {DEFAULT_TABLE_SIZE}");
    println!("servers  max/mean  other-slots-moved-on-removal  build");
    for n in [3usize, 10, 100, 300, 650, 1000] {
        let s = servers(n);
        let t0 = std::time::Instant::now();
        let old = build(&s, DEFAULT_TABLE_SIZE).unwrap();
        let took = t0.elapsed();
        let c = old.counts(n);
        let max = f64::from(*c.iter().max().unwrap());
        let mean = f64::from(DEFAULT_TABLE_SIZE) / n as f64;
        // Remove each of a few servers in turn and keep the worst share.
        let mut worst = 0.0f64;
        for removed in [0, n / 3, n / 2, n - 1] {
            let mut s2 = s.clone();
            s2.remove(removed);
            let new = build(&s2, DEFAULT_TABLE_SIZE).unwrap();
            let r = removed as u32;
            let share = moved_share(&old, &new, |i| {
                if i == r {
                    None
                } else if i > r {
                    Some(i - 1)
                } else {
                    Some(i)
                }
            });
            worst = worst.max(share);
        }
        println!(
            "{n:>7}  {:>8.4}  {:>27.3}%  {:?}",
            max / mean,
            worst * 100.0,
            took
        );
    }
}
