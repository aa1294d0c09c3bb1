//! Objects by the ten thousand against the test control plane (the benches at scale).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, PostParams};

/// Creates `objects` with 64 requests in flight; panics if any create fails. Returns
/// how long it took.
pub async fn create_all<K>(api: Api<K>, objects: Vec<K>) -> Duration
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    let n = objects.len();
    let results: Vec<bool> = futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &o).await.is_ok() }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let failed = results.iter().filter(|ok| !**ok).count();
    assert_eq!(failed, 0, "{failed} of {n} creates failed");
    started.elapsed()
}

/// A client for `kubeconfig` (made inside a runtime: kube's client spawns on it).
pub async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// RealServers `rs{i}-{j}` (`j < m`) for each of `n` VirtualServices `vs{i}`, labelled
/// `app: vs{i}`, at `address(i, j)`, weight 1: the shape the benches at scale create.
pub fn real_servers<K: serde::de::DeserializeOwned>(
    n: usize,
    m: usize,
    address: impl Fn(usize, usize) -> String,
) -> Vec<K> {
    (0..n)
        .flat_map(|i| (0..m).map(move |j| (i, j)))
        .map(|(i, j)| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "kubelvs.io/v1alpha1",
                "kind": "RealServer",
                "metadata": {"name": format!("rs{i}-{j}"), "labels": {"app": format!("vs{i}")}},
                "spec": {"address": address(i, j), "weight": 1},
            }))
            .expect("a RealServer")
        })
        .collect()
}

/// VirtualServices `vs{i}` (`i < n`) selecting the [`real_servers`] labelled
/// `app: vs{i}`, the rest of each one's spec from `spec(i)`.
pub fn virtual_services<K: serde::de::DeserializeOwned>(
    n: usize,
    spec: impl Fn(usize) -> serde_json::Value,
) -> Vec<K> {
    (0..n)
        .map(|i| {
            let mut spec = spec(i);
            spec["realServerSelector"] =
                serde_json::json!({"matchLabels": {"app": format!("vs{i}")}});
            serde_json::from_value(serde_json::json!({
                "apiVersion": "kubelvs.io/v1alpha1",
                "kind": "VirtualService",
                "metadata": {"name": format!("vs{i}")},
                "spec": spec,
            }))
            .expect("a VirtualService")
        })
        .collect()
}
