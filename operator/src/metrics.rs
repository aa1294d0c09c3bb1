//! The operator's Prometheus metrics (`kubelvs_operator_` prefix, see docs/operator.md).

use std::sync::Arc;

use kubelvs_observe::Observed;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
    pub result: String,
}

/// A pass over everything and one Service's reconcile take orders of magnitude apart:
/// their durations are never mixed in one histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub write: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub state: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    /// What /metrics and /readyz show: ready once the watches have listed (leader) or
    /// the candidate is waiting (standby).
    pub observed: Arc<Observed>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_duration: Family<DurationLabels, Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub pool_addresses: Family<PoolLabels, Gauge>,
    pub leader: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kubelvs_operator");
        let reconciles = Family::default();
        let reconcile_duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        let writes = Family::default();
        let errors = Family::default();
        let pool_addresses = Family::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles by controller (virtualservice: one pass over all VirtualServices and AddressPools; service: one Service) and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile, writes included, by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "writes",
            "API writes by kind and write (status, apply, delete, finalizer)",
            writes.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind (api, conflict, malformed, invalid)",
            errors.clone(),
        );
        registry.register(
            "pool_addresses",
            "Addresses of each AddressPool by state (allocated, available)",
            pool_addresses.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Arc::new(Self {
            observed: Arc::new(Observed::new(registry, "the watches have not listed yet")),
            reconciles,
            reconcile_duration,
            writes,
            errors,
            pool_addresses,
            leader,
        })
    }

    pub fn write(&self, kind: &str, write: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                write: write.into(),
            })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    pub fn reconciled(&self, controller: &str, ok: bool, seconds: f64) {
        self.reconciles
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&DurationLabels {
                controller: controller.into(),
            })
            .observe(seconds);
    }
}
