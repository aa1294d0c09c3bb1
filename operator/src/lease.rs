//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the
//! holder renews every `duration / 3`; a candidate takes the Lease over once it has
//! seen the same record, unrenewed, for a whole `duration` on its own clock (so
//! clocks of different machines never need to agree). A leader that cannot renew
//! within `2/3 duration` stops leading before anyone else may start: every call of
//! the renewal is bounded by what is left of that deadline, so a connection that
//! hangs (half-open, or an API server that stopped answering this replica only) does
//! not keep a leader leading past it.
//!
//! [`decide`] is the pure rule; [`Elector`] does the reads and writes, with the
//! API server's optimistic concurrency (a replace carries the resourceVersion it
//! read) settling races between candidates.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;

/// What a candidate last saw of the Lease, and when (on its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
    /// The record's renew time as written: any change means the holder is alive.
    pub renew_time: Option<String>,
    pub transitions: i32,
    pub seen_at: Instant,
}

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write it with us as holder (create, renew or take over).
    Hold,
    /// Someone else holds it; look again later.
    Follow { holder: String },
}

/// Updates `observed` with the current record and decides.
pub fn decide(
    me: &str,
    current: Option<&LeaseSpec>,
    observed: &mut Option<Observed>,
    now: Instant,
    duration: Duration,
) -> Decision {
    let Some(spec) = current else {
        return Decision::Hold;
    };
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let renew_time = spec.renew_time.as_ref().map(|t| t.0.to_string());
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
            seen_at: now,
        });
    }
    let seen_at = observed.as_ref().map_or(now, |o| o.seen_at);
    // The holder's own duration counts, not ours: it promised to renew within it.
    let lease = spec
        .lease_duration_seconds
        .map_or(duration, |s| Duration::from_secs(s.max(1) as u64));
    match holder {
        None => Decision::Hold,
        Some(h) if h == me => Decision::Hold,
        Some(_) if now.saturating_duration_since(seen_at) >= lease => Decision::Hold,
        Some(holder) => Decision::Follow { holder },
    }
}

/// The record a holder writes.
pub fn held_by(
    me: &str,
    previous: Option<&LeaseSpec>,
    duration: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> LeaseSpec {
    let was_mine = previous.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: if was_mine {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if was_mine || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {namespace}/{name}: taken over by {holder}")]
    Lost {
        namespace: String,
        name: String,
        holder: String,
    },
    #[error("Lease {namespace}/{name}: not renewed within {0:?}", deadline)]
    NotRenewed {
        namespace: String,
        name: String,
        deadline: Duration,
    },
}

/// One candidate for one Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    me: String,
    duration: Duration,
    observed: Option<Observed>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            me: me.into(),
            duration,
            observed: None,
        }
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// One round: read, decide, write if holding. `Ok(true)` when we hold the Lease.
    pub async fn try_hold(&mut self) -> Result<bool, LeaseError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let decision = decide(
            &self.me,
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &mut self.observed,
            Instant::now(),
            self.duration,
        );
        if let Decision::Follow { .. } = decision {
            return Ok(false);
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let spec = held_by(
            &self.me,
            current.as_ref().and_then(|l| l.spec.as_ref()),
            self.duration,
            now,
        );
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Keeps metadata.resourceVersion: a concurrent writer makes this a 409.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Blocks until this candidate holds the Lease, retrying every `retry`.
    pub async fn acquire(&mut self, retry: Duration) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: will retry"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews every `duration / 3` for as long as it can; returns why it stopped
    /// leading (taken over, or not renewed within `2/3 duration`, however long a
    /// call to the API server would have taken).
    pub async fn hold(&mut self) -> LeaseError {
        let deadline = self.duration * 2 / 3;
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            let left = deadline.saturating_sub(last_renewed.elapsed());
            let Ok(round) = tokio::time::timeout(left, self.try_hold()).await else {
                return LeaseError::NotRenewed {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    deadline,
                };
            };
            match round {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    if let Some(holder) = self.observed.as_ref().and_then(|o| o.holder.clone()) {
                        if holder != self.me {
                            return LeaseError::Lost {
                                namespace: self.namespace.clone(),
                                name: self.name.clone(),
                                holder,
                            };
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renew failed"),
            }
            if last_renewed.elapsed() > deadline {
                return LeaseError::NotRenewed {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    deadline,
                };
            }
        }
    }

    /// Gives the Lease up (on shutdown), so another replica takes over at once. Bounded
    /// by a third of the duration: an API server that does not answer lets the Lease
    /// expire instead.
    pub async fn release(&mut self) {
        let _ = tokio::time::timeout(self.duration / 3, self.release_now()).await;
    }

    async fn release_now(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let mine = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.me.as_str());
            if mine {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.lease_duration_seconds = Some(1);
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + renewed).unwrap(),
            )),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn no_lease_or_no_holder_is_taken() {
        let now = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide("a", None, &mut None, now, d), Decision::Hold);
        assert_eq!(
            decide("a", Some(&spec(None, 0, 15)), &mut None, now, d),
            Decision::Hold
        );
    }

    #[test]
    fn a_live_holder_is_followed_until_its_record_stays_unrenewed_for_its_duration() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut seen = None;
        let follow = Decision::Follow { holder: "b".into() };
        assert_eq!(
            decide("a", Some(&spec(Some("b"), 0, 10)), &mut seen, t0, d),
            follow
        );
        // Renewed: the clock starts again, whatever the timestamps say.
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(
            decide("a", Some(&spec(Some("b"), 9, 10)), &mut seen, t1, d),
            follow
        );
        let t2 = t1 + Duration::from_secs(9);
        assert_eq!(
            decide("a", Some(&spec(Some("b"), 9, 10)), &mut seen, t2, d),
            follow
        );
        // Unchanged for the holder's 10 s: taken over.
        let t3 = t1 + Duration::from_secs(10);
        assert_eq!(
            decide("a", Some(&spec(Some("b"), 9, 10)), &mut seen, t3, d),
            Decision::Hold
        );
    }

    #[test]
    fn the_holder_renews_and_transitions_count_takeovers() {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap();
        let d = Duration::from_secs(15);
        let mut theirs = spec(Some("b"), 0, 15);
        theirs.lease_transitions = Some(4);
        let taken = held_by("a", Some(&theirs), d, now);
        assert_eq!(taken.lease_transitions, Some(5));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        let renewed = held_by("a", Some(&taken), d, now);
        assert_eq!(renewed.lease_transitions, Some(5));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
        assert_eq!(
            decide("a", Some(&renewed), &mut None, Instant::now(), d),
            Decision::Hold
        );
    }
}
