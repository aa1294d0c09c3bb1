//! Maglev table build time: `cargo bench -p kubelvs-maglev --bench build`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kubelvs_maglev::{build, Endpoint, DEFAULT_TABLE_SIZE};

fn servers(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let mut id = vec![198u8, 51, (100 + i / 250) as u8, (i % 250) as u8 + 1];
            id.extend_from_slice(&80u16.to_be_bytes());
            Endpoint::new(id, 1)
        })
        .collect()
}

fn bench_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build_m65537");
    for n in [10usize, 100, 1000] {
        let s = servers(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &s, |b, s| {
            b.iter(|| build(std::hint::black_box(s), DEFAULT_TABLE_SIZE).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_build);
criterion_main!(benches);
