//! Prometheus metrics (`kubelvs_` prefix, see docs/metrics.md) and the /metrics,
//! /healthz and /readyz answers (served by `kubelvs-observe`).

use std::sync::{Arc, Mutex};

use kubelvs_observe::Observed;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataplaneLabels {
    pub dataplane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub dataplane: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RealServerLabels {
    pub real_server: String,
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub dataplane: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub dataplane: String,
    /// Empty where the dataplane counts per real server across services (XDP).
    pub service: String,
    pub real_server: String,
}

/// Counters per virtual service or per real server.
#[derive(Debug)]
pub struct TrafficFamilies<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug> {
    pub connections: Family<L, Counter>,
    pub packets: Family<L, Counter>,
    pub bytes: Family<L, Counter>,
    last: Mutex<std::collections::HashMap<L, kubelvs_model::Traffic>>,
}

impl<L> TrafficFamilies<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        Self {
            connections: Family::default(),
            packets: Family::default(),
            bytes: Family::default(),
            last: Mutex::default(),
        }
    }

    fn register(&self, registry: &mut Registry, what: &str) {
        registry.register(
            format!("{what}_connections"),
            format!("Connections (IPVS) or new flows (XDP) scheduled, per {what}"),
            self.connections.clone(),
        );
        registry.register(
            format!("{what}_packets"),
            format!("Packets forwarded, per {what}"),
            self.packets.clone(),
        );
        registry.register(
            format!("{what}_bytes"),
            format!("Bytes forwarded, per {what}"),
            self.bytes.clone(),
        );
    }

    /// Removes the series of everything not in `present` (virtual services and real
    /// servers that left the dataplane): a label set per object ever seen would grow
    /// without bound.
    pub fn retain(&self, present: &std::collections::HashSet<L>) {
        let mut last = self.last.lock().unwrap();
        last.retain(|labels, _| {
            let keep = present.contains(labels);
            if !keep {
                self.connections.remove(labels);
                self.packets.remove(labels);
                self.bytes.remove(labels);
            }
            keep
        });
    }

    /// Advances the counters to the kernel's totals (a total that went down means the
    /// kernel entry was recreated: counted from zero again).
    pub fn observe(&self, labels: L, now: kubelvs_model::Traffic) {
        let mut last = self.last.lock().unwrap();
        let before = last.insert(labels.clone(), now).unwrap_or_default();
        let delta = |n: u64, b: u64| if n >= b { n - b } else { n };
        self.connections
            .get_or_create(&labels)
            .inc_by(delta(now.connections, before.connections));
        self.packets
            .get_or_create(&labels)
            .inc_by(delta(now.packets, before.packets));
        self.bytes
            .get_or_create(&labels)
            .inc_by(delta(now.bytes, before.bytes));
    }
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    /// What /metrics and /readyz show: ready once the first apply has finished.
    pub observed: Arc<Observed>,
    pub apply_duration: Histogram,
    pub kernel_read_duration: Family<DataplaneLabels, Histogram>,
    pub kernel_writes: Family<DataplaneLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Gauge>,
    pub real_server_healthy: Family<RealServerLabels, Gauge>,
    pub rejected_objects: Gauge,
    /// Standalone: reads of the file that were not applied (unreadable, or nothing
    /// in it to apply).
    pub config_refused: Counter,
    pub health_transitions: Counter,
    pub virtual_service: TrafficFamilies<ServiceLabels>,
    pub real_server: TrafficFamilies<BackendLabels>,
}

fn read_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kubelvs");
        let apply_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let kernel_writes = Family::<DataplaneLabels, Counter>::default();
        let kernel_read_duration =
            Family::<DataplaneLabels, Histogram>::new_with_constructor(read_buckets as fn() -> _);
        let outcomes = Family::<OutcomeLabels, Gauge>::default();
        let real_server_healthy = Family::<RealServerLabels, Gauge>::default();
        let rejected_objects = Gauge::default();
        let health_transitions = Counter::default();
        let config_refused = Counter::default();
        registry.register(
            "apply_duration_seconds",
            "Time to apply the node's plan on every dataplane",
            apply_duration.clone(),
        );
        registry.register(
            "kernel_read_duration_seconds",
            "Time an apply spent reading the kernel's table (IPVS dumps) by dataplane",
            kernel_read_duration.clone(),
        );
        registry.register(
            "kernel_writes",
            "Kernel write operations (netlink messages, map entries, sysctls) by dataplane",
            kernel_writes.clone(),
        );
        registry.register(
            "services",
            "Virtual services and real-server VIPs by dataplane and outcome of the last apply",
            outcomes.clone(),
        );
        registry.register(
            "real_server_healthy",
            "1 when the real server passes its health check, 0 when it is quiesced",
            real_server_healthy.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects of the configuration rejected by validation",
            rejected_objects.clone(),
        );
        registry.register(
            "config_refused",
            "Standalone: reads of the configuration file not applied (unreadable, or no object in it)",
            config_refused.clone(),
        );
        registry.register(
            "health_transitions",
            "Real servers going down or up",
            health_transitions.clone(),
        );
        let virtual_service = TrafficFamilies::new();
        virtual_service.register(&mut registry, "virtual_service");
        let real_server = TrafficFamilies::new();
        real_server.register(&mut registry, "real_server");
        Arc::new(Self {
            observed: Arc::new(Observed::new(registry, "the first apply has not finished")),
            virtual_service,
            real_server,
            apply_duration,
            kernel_read_duration,
            kernel_writes,
            outcomes,
            real_server_healthy,
            rejected_objects,
            config_refused,
            health_transitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelvs_model::Traffic;

    #[test]
    fn counters_follow_kernel_totals_and_survive_a_reset() {
        let m = Metrics::new();
        let l = ServiceLabels {
            dataplane: "ipvs".into(),
            service: "203.0.113.1:80/TCP".into(),
        };
        let t = |c: u64| Traffic {
            connections: c,
            packets: 10 * c,
            bytes: 100 * c,
        };
        m.virtual_service.observe(l.clone(), t(5));
        m.virtual_service.observe(l.clone(), t(8));
        assert_eq!(m.virtual_service.connections.get_or_create(&l).get(), 8);
        // The kernel entry was recreated: its totals start again from zero.
        m.virtual_service.observe(l.clone(), t(2));
        assert_eq!(m.virtual_service.connections.get_or_create(&l).get(), 10);
        assert_eq!(m.virtual_service.bytes.get_or_create(&l).get(), 1000);
        // Gone from the dataplane: its series goes.
        m.virtual_service.retain(&Default::default());
        assert!(!m.observed.render().contains("203.0.113.1:80/TCP"));
        m.virtual_service.observe(l.clone(), t(10));
        let text = m.observed.render();
        assert!(text.contains("kubelvs_virtual_service_connections_total{dataplane=\"ipvs\",service=\"203.0.113.1:80/TCP\"} 10"), "{text}");
    }
}
