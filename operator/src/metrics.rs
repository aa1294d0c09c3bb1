//! The operator's Prometheus metrics (`kubelvs_operator_` prefix, see docs/operator.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
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
    registry: Mutex<Registry>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub writes: Family<WriteLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub pool_addresses: Family<PoolLabels, Gauge>,
    pub leader: Gauge,
    /// Set once the watches have listed (leader) or the candidate is waiting (standby).
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kubelvs_operator");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            writes: Family::default(),
            errors: Family::default(),
            pool_addresses: Family::default(),
            leader: Gauge::default(),
            ready: AtomicBool::new(false),
        };
        registry.register(
            "reconciles",
            "Reconciles by controller (virtualservice: one pass over all VirtualServices and AddressPools; service: one Service) and result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile, writes included",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "writes",
            "API writes by kind and write (status, apply, delete, finalizer)",
            m.writes.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind (api, conflict, malformed, invalid)",
            m.errors.clone(),
        );
        registry.register(
            "pool_addresses",
            "Addresses of each AddressPool by state (allocated, available)",
            m.pool_addresses.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        *m.registry.lock().unwrap() = registry;
        Arc::new(m)
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
        self.reconcile_duration.observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().unwrap());
        out
    }
}

impl kubelvs_observe::Observed for Metrics {
    fn metrics(&self) -> String {
        self.render()
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the watches have not listed yet".into())
        }
    }
}
