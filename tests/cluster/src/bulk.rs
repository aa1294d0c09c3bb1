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
