//! VIP allocation and one whole allocation pass, on this machine.
//!
//! `cargo bench -p kubelvs-operator --bench allocate`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubelvs_crds::{
    AddressPool, AddressPoolSpec, RealServer, RealServerRecord, RealServerSpec, VirtualService,
    VirtualServiceStatus,
};
use kubelvs_operator::allocate::{allocate, AddressSpace, Reserved};
use kubelvs_operator::pass::{plan, Ledger, Validations};

fn virtual_service(i: usize, taken: bool) -> VirtualService {
    let mut v: VirtualService = serde_yaml::from_str(&format!(
        "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: vs{i}, namespace: bench, uid: u{i}, generation: 1}}\nspec: {{ports: [{{port: 80}}], forwarding: nat, realServerSelector: {{matchLabels: {{vs: vs{i}}}}}}}\n"
    ))
    .unwrap();
    v.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
    ));
    if taken {
        // The lowest addresses of 10.0.0.0/16 in order, skipping the network address.
        let n = i + 1;
        v.status = Some(VirtualServiceStatus {
            vip: Some(format!("10.0.{}.{}", n / 256, n % 256)),
            ..Default::default()
        });
    }
    v
}

fn pool() -> AddressPool {
    AddressPool::new(
        "big",
        AddressPoolSpec {
            addresses: vec!["10.0.0.0/16".into()],
            auto_assign: true,
            namespace_selector: None,
            announcement: None,
        },
    )
}

fn bench(c: &mut Criterion) {
    let pools = [pool()];
    let mut services: Vec<VirtualService> = (0..60_000).map(|i| virtual_service(i, true)).collect();
    services.push(virtual_service(60_000, false));
    c.bench_function("allocate: /16 pool, 60,000 VIPs taken, one new", |b| {
        b.iter(|| {
            let a = allocate(black_box(&services), &pools, &BTreeMap::new());
            assert!(a.vips[&("bench".into(), "vs60000".into())].is_ok());
            a
        })
    });

    // One pass of the VirtualService controller at the scale of the issue: 10,000
    // VirtualServices (all allocated and shown) x 10 RealServers each.
    let services: Vec<VirtualService> = (0..10_000).map(|i| virtual_service(i, false)).collect();
    let real_servers: Vec<RealServer> = (0..100_000)
        .map(|j| {
            let mut r = RealServer::new(
                &format!("rs{j}"),
                RealServerSpec {
                    address: format!("10.1.{}.{}", j / 250 % 250, 1 + j % 250),
                    port: None,
                    weight: 1,
                    node_name: None,
                    drain: false,
                },
            );
            r.metadata.namespace = Some("bench".into());
            r.metadata.labels = Some(BTreeMap::from([("vs".into(), format!("vs{}", j / 10))]));
            r
        })
        .collect();
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let services: Vec<&VirtualService> = services.iter().collect();
    let records: Vec<RealServerRecord> = real_servers.into_iter().map(Into::into).collect();
    let real_servers: Vec<&RealServerRecord> = records.iter().collect();
    let (namespaces, reserved) = (BTreeMap::new(), Reserved::default());
    let space = AddressSpace {
        pools: &pools,
        namespaces: &namespaces,
        reserved: &reserved,
    };
    let first = plan(
        &services,
        &real_servers,
        space,
        &Ledger::new(),
        &mut Validations::new(),
        &now,
        &Default::default(),
    );
    c.bench_function(
        "allocation pass: 10,000 VirtualServices x 10 RealServers, first",
        |b| {
            b.iter(|| {
                plan(
                    black_box(&services),
                    &real_servers,
                    space,
                    &Ledger::new(),
                    &mut Validations::new(),
                    &now,
                    &Default::default(),
                )
            })
        },
    );
    // Steady state: every status already shown, nothing to write.
    let mut shown: Vec<VirtualService> = services.iter().map(|v| (*v).clone()).collect();
    for (v, (k, status)) in shown.iter_mut().zip(&first.statuses) {
        let body = serde_json::to_value(status.apply_body(&k.0, &k.1)).unwrap();
        v.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
        v.metadata.finalizers = Some(vec![kubelvs_operator::pass::FINALIZER.into()]);
    }
    let mut validations = Validations::new();
    c.bench_function(
        "allocation pass: 10,000 VirtualServices x 10 RealServers, steady",
        |b| {
            b.iter(|| {
                let w = plan(
                    black_box(&shown.iter().collect::<Vec<_>>()),
                    &real_servers,
                    space,
                    &first.vips,
                    &mut validations,
                    &now,
                    &Default::default(),
                );
                assert!(w.statuses.is_empty());
                w
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
