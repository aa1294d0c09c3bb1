//! The LoadBalancer Service controller (kube-runtime's `Controller`): per Service, the
//! translation of `crate::service` applied as owned VirtualServices and RealServers,
//! and `status.loadBalancer.ingress` from the VIPs the allocation pass wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use kubelvs_crds::{RealServer, VirtualService};
use tokio::sync::mpsc;
use tracing::warn;

use crate::controller::{announce, Stores, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::pass::Notice;
use crate::service::{self, ACCEPTED_CONDITION, SERVICE_NAME_LABEL};

/// Deletes `name`; already gone is fine.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies each object of `want` that `have` does not already show, and deletes the
/// objects of `have` that `want` no longer has.
async fn sync_owned<K, S: PartialEq>(
    api: &Api<K>,
    want: &[K],
    have: &[K],
    spec: impl Fn(&K) -> &S,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for w in want {
        let name = w.meta().name.clone().unwrap_or_default();
        let current = have.iter().find(|h| h.meta().name.as_ref() == Some(&name));
        if current.is_some_and(|c| in_step(c.meta(), spec(c), w.meta(), spec(w))) {
            continue;
        }
        api.patch(&name, &apply, &Patch::Apply(w)).await?;
        metrics.write(&kind, "apply");
    }
    for h in have {
        let name = h.meta().name.clone().unwrap_or_default();
        if !want.iter().any(|w| w.meta().name.as_ref() == Some(&name)) {
            delete(api, &name).await?;
            metrics.write(&kind, "delete");
        }
    }
    Ok(())
}

/// What a reconcile of one Service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Service {object}: {source}")]
    Api {
        object: String,
        #[source]
        source: kube::Error,
    },
}

struct ServiceContext {
    client: Client,
    stores: Stores,
    /// The RealServers Services own (by their label), whole: reconciling compares
    /// their metadata, which the shared records leave out.
    owned_real_servers: Store<RealServer>,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Notice>,
}

/// The objects of `objects` a Service owns (copies of those only).
fn owned_by<'a, K: Clone + Resource<DynamicType = ()> + 'a>(
    objects: impl IntoIterator<Item = &'a K>,
    svc: &Service,
) -> Vec<K> {
    let uid = svc.metadata.uid.as_deref();
    objects
        .into_iter()
        .filter(|o| o.meta().namespace == svc.metadata.namespace)
        .filter(|o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "Service" && Some(r.uid.as_str()) == uid)
        })
        .cloned()
        .collect()
}

/// Whether `have` already is what `want` asks (spec, our labels and annotations, owner).
fn in_step<S: PartialEq>(
    have: &kube::api::ObjectMeta,
    have_spec: &S,
    want: &kube::api::ObjectMeta,
    want_spec: &S,
) -> bool {
    let contains = |a: &Option<BTreeMap<String, String>>, b: &Option<BTreeMap<String, String>>| {
        b.iter()
            .flatten()
            .all(|(k, v)| a.as_ref().and_then(|a| a.get(k)) == Some(v))
    };
    have_spec == want_spec
        && contains(&have.labels, &want.labels)
        && contains(&have.annotations, &want.annotations)
        && have.owner_references == want.owner_references
}

fn service_condition(svc: &Service, ok: bool, reason: &str, message: String) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == ACCEPTED_CONDITION && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| {
            Time(
                k8s_openapi::jiff::Timestamp::from_second(
                    k8s_openapi::jiff::Timestamp::now().as_second(),
                )
                .unwrap_or_default(),
            )
        });
    Condition {
        type_: ACCEPTED_CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: svc.metadata.generation,
        last_transition_time: since,
    }
}

async fn reconcile_service(
    svc: Arc<Service>,
    ctx: Arc<ServiceContext>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_service_inner(&svc, &ctx).await;
    ctx.metrics
        .reconciled("service", result.is_ok(), started.elapsed().as_secs_f64());
    result
}

async fn reconcile_service_inner(
    svc: &Service,
    ctx: &ServiceContext,
) -> Result<Action, ReconcileError> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let err = |source| ReconcileError::Api {
        object: object.clone(),
        source,
    };
    // Until the owned watch has listed, an empty store would look like nothing made.
    // Polled once, not awaited: the store's readiness wakes only its last waiter, and
    // several Services reconcile at once.
    if ctx
        .owned_real_servers
        .wait_until_ready()
        .now_or_never()
        .is_none()
    {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let owned_vs = owned_by(
        ctx.stores
            .virtual_services
            .state()
            .iter()
            .filter_map(|o| o.0.as_ref().ok()),
        svc,
    );
    let owned_rs = owned_by(ctx.owned_real_servers.state().iter().map(|o| &**o), svc);
    let vs_api = Api::<VirtualService>::namespaced(ctx.client.clone(), &namespace);
    let rs_api = Api::<RealServer>::namespaced(ctx.client.clone(), &namespace);

    if !service::is_ours(svc) || svc.metadata.deletion_timestamp.is_some() {
        // Not (or no longer) ours: remove what we made for it, touch nothing else.
        sync_owned(&vs_api, &[], &owned_vs, |v| &v.spec, &ctx.metrics)
            .await
            .map_err(err)?;
        sync_owned(&rs_api, &[], &owned_rs, |r| &r.spec, &ctx.metrics)
            .await
            .map_err(err)?;
        return Ok(Action::await_change());
    }

    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(err)?
        .items;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let condition = match service::translate(svc, &slices) {
        Err(problems) => {
            ctx.metrics.error("invalid");
            let message = problems.join("; ");
            let shown = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == ACCEPTED_CONDITION && c.message == message);
            if !shown {
                announce(
                    &ctx.events,
                    Notice::on(
                        svc,
                        true,
                        "InvalidConfiguration",
                        format!("{message} (what serves it now is left as it is)"),
                    ),
                );
            }
            service_condition(svc, false, "InvalidConfiguration", message)
        }
        Ok(t) => {
            let metrics = &ctx.metrics;
            sync_owned(
                &vs_api,
                &t.virtual_services,
                &owned_vs,
                |v| &v.spec,
                metrics,
            )
            .await
            .map_err(err)?;
            sync_owned(&rs_api, &t.real_servers, &owned_rs, |r| &r.spec, metrics)
                .await
                .map_err(err)?;
            let wanted_vs: Vec<String> = t
                .virtual_services
                .iter()
                .filter_map(|v| v.metadata.name.clone())
                .collect();
            service_condition(
                svc,
                true,
                "Translated",
                format!(
                    "served by VirtualService(s) {} with {} RealServer(s)",
                    wanted_vs.join(", "),
                    t.real_servers.len()
                ),
            )
        }
    };

    // The VIPs as the allocation pass wrote them on the owned VirtualServices.
    let ingress = service::ingress(svc, &owned_vs);
    let status = svc.status.clone().unwrap_or_default();
    let shown_ingress = status
        .load_balancer
        .as_ref()
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    let shown_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ACCEPTED_CONDITION);
    if shown_ingress != ingress || shown_condition != Some(&condition) {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "loadBalancer": {"ingress": ingress},
                "conditions": [condition],
            },
        });
        Api::<Service>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &apply, &Patch::Apply(&body))
            .await
            .map_err(err)?;
        ctx.metrics.write("Service", "status");
        if shown_ingress != ingress && !ingress.is_empty() {
            let ips: Vec<String> = ingress.iter().filter_map(|i| i.ip.clone()).collect();
            announce(
                &ctx.events,
                Notice::on(
                    svc,
                    false,
                    "LoadBalancerAssigned",
                    format!("load balancer address {}", ips.join(", ")),
                ),
            );
        }
    }
    // The allocation pass writes the VIPs; the owned-object watch may wake us before
    // the shared store shows them, so look again until every family has its address.
    let families = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .map_or(1, Vec::len);
    if ingress.len() < families {
        Ok(Action::requeue(Duration::from_millis(200)))
    } else {
        Ok(Action::requeue(Duration::from_secs(300)))
    }
}

fn service_error_policy(svc: Arc<Service>, e: &ReconcileError, ctx: Arc<ServiceContext>) -> Action {
    ctx.metrics.error("api");
    warn!(
        service = format!(
            "{}/{}",
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default()
        ),
        error = %e,
        "reconcile failed; retrying in 5 s"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until its watches end.
pub(crate) async fn run(
    client: Client,
    stores: Stores,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Notice>,
) {
    let owned = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let (owned_real_servers, real_server_changes) = kubelvs_watch::changes(
        Api::<RealServer>::all(client.clone()),
        owned.clone(),
        kubelvs_watch::no_status,
    );
    let ctx = Arc::new(ServiceContext {
        client: client.clone(),
        stores,
        owned_real_servers,
        metrics,
        events,
    });
    Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    // A Service's reconcile reads its VirtualServices' VIP and the specs and metadata
    // of both; the agents' status writes (traffic, health) trigger nothing.
    .owns_stream(
        kubelvs_watch::changes(
            Api::<VirtualService>::all(client.clone()),
            owned,
            kubelvs_watch::status_but_vip,
        )
        .1,
    )
    .owns_stream(real_server_changes)
    .watches(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default().labels("kubernetes.io/service-name"),
        |slice| {
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name").cloned());
            svc.zip(slice.metadata.namespace.clone())
                .map(|(name, ns)| ObjectRef::<Service>::new(&name).within(&ns))
        },
    )
    .run(reconcile_service, service_error_policy, ctx)
    .for_each(|_| futures::future::ready(()))
    .await;
}
