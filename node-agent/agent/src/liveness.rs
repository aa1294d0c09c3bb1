//! This director's Lease (see `kubelvs_watch::liveness`): renewed every quarter of the
//! duration while the node directs anything and its announce interface has carrier,
//! and the other directors' Leases followed, so that each VIP's announcer is chosen
//! among the live ones (`kubelvs_planner::announce`). A director whose interface lost
//! carrier announces nothing at once and lets its Lease expire, so the others take
//! its VIPs over even while it still reaches the API server another way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use kubelvs_watch::liveness::{follow, Directors, LEASE_LABEL, LEASE_PREFIX};
use tracing::warn;

use crate::Event;

/// How the Leases are kept.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub node: String,
    /// A node whose renewal this agent has not seen for this long is dead.
    pub duration: Duration,
    /// The interface VIPs are announced on (`--interface`): without carrier, this
    /// node may not announce.
    pub interface: Option<String>,
}

/// Whether `interface` has carrier (`/sys/class/net/IF/carrier`; a link that is down
/// has none, and the file then cannot be read).
pub fn carrier(interface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/carrier"))
        .is_ok_and(|c| c.trim() == "1")
}

/// The Lease `node`'s agent writes (server-side apply), renewed `now`.
pub fn lease_body(
    node: &str,
    duration: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": format!("{LEASE_PREFIX}{node}"),
            "labels": { LEASE_LABEL: "" },
        },
        "spec": {
            "holderIdentity": node,
            // Whole seconds only in the API; followers use their own duration.
            "leaseDurationSeconds": duration.as_secs_f64().ceil().max(1.0) as i32,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
        },
    })
}

/// Follows every director's Lease (waking the loop when the live set changes) and
/// renews this node's while it directs (`directing`) and its interface has carrier
/// (kept in `eligible`, waking the loop when it changes). Returns once the Leases
/// were listed.
pub async fn start(
    client: Client,
    settings: LeaseSettings,
    directing: Arc<AtomicBool>,
    eligible: Arc<AtomicBool>,
    wake: mpsc::Sender<Event>,
) -> Directors {
    let on_change = wake.clone();
    let directors = follow(
        client.clone(),
        &settings.namespace,
        settings.duration,
        move || {
            let _ = on_change.send(Event::Reload);
        },
    )
    .await;
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let name = format!("{LEASE_PREFIX}{}", settings.node);
    let params = PatchParams::apply(&crate::status::field_manager(&settings.node)).force();
    let every = settings.duration / 4;
    let renewals = directors.clone();
    let interface = settings.interface.clone();
    eligible.store(interface.as_deref().is_none_or(carrier), Ordering::Relaxed);
    tokio::spawn(async move {
        // Carrier is looked at ten times per duration; the Lease renewed every quarter.
        let mut tick = tokio::time::interval(settings.duration / 10);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_renewal = tokio::time::Instant::now();
        // Carrier back: eligible again only after a whole duration with it, so a
        // flapping link does not move VIPs at each flap, and the neighbours (real
        // servers' MACs, flushed with the carrier) are resolved again first.
        let mut carrier_since: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let has_carrier = match interface.as_deref() {
                None => true,
                Some(i) if carrier(i) => {
                    let since = *carrier_since.get_or_insert(now);
                    eligible.load(Ordering::Relaxed)
                        || now.duration_since(since) >= settings.duration
                }
                Some(_) => {
                    carrier_since = None;
                    false
                }
            };
            if eligible.swap(has_carrier, Ordering::Relaxed) != has_carrier {
                warn!(
                    interface = interface.as_deref().unwrap_or_default(),
                    carrier = has_carrier,
                    "announce interface carrier changed"
                );
                let _ = wake.send(Event::Reload);
            }
            if !has_carrier || !directing.load(Ordering::Relaxed) || now < next_renewal {
                continue;
            }
            next_renewal = now + every;
            let body = Patch::Apply(lease_body(
                &settings.node,
                settings.duration,
                k8s_openapi::jiff::Timestamp::now(),
            ));
            // Bounded: a call that hangs must not hold the carrier checks up for long.
            // Half the duration, not a quarter: an API server slowed by a burst of
            // writes still gets the renewal in before the others count it expired.
            let call = api.patch(&name, &params, &body);
            match tokio::time::timeout(settings.duration / 2, call).await {
                Ok(Ok(_)) => renewals.renewed(),
                Ok(Err(e)) => warn!(lease = %name, error = %e, "Lease not renewed"),
                Err(_) => warn!(lease = %name, "Lease not renewed: no answer in time"),
            }
        }
    });
    directors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_names_its_node_and_rounds_its_duration_up() {
        let b = lease_body(
            "n1",
            Duration::from_millis(800),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(b["metadata"]["name"], "kubelvs-agent-n1");
        assert_eq!(b["spec"]["holderIdentity"], "n1");
        assert_eq!(b["spec"]["leaseDurationSeconds"], 1);
        assert!(b["metadata"]["labels"].get(LEASE_LABEL).is_some());
    }
}
