//! Prometheus metrics (`kubelvs_` prefix, see docs/metrics.md) and the /metrics,
//! /healthz and /readyz answers (served by `kubelvs-observe`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use kubelvs_model::ServiceKey;
use kubelvs_observe::Observed;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
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

/// A virtual service's traffic series. Its labels are written out when scraped: at
/// 10,000 services, label text kept for each of the three counters (and for the
/// kernel's last totals) was about 6 MB.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub dataplane: &'static str,
    pub service: Shown<ServiceKey>,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub dataplane: &'static str,
    /// Empty where the dataplane counts per real server across services (XDP).
    pub service: Shown<Option<ServiceKey>>,
    pub real_server: Shown<std::net::SocketAddr>,
}

/// A label value kept as what it stands for, and written as text when scraped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Shown<T>(pub T);

impl EncodeLabelValue for Shown<ServiceKey> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        write!(encoder, "{}", self.0)
    }
}

impl EncodeLabelValue for Shown<Option<ServiceKey>> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match self.0 {
            Some(key) => write!(encoder, "{key}"),
            None => Ok(()),
        }
    }
}

impl EncodeLabelValue for Shown<std::net::SocketAddr> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        write!(encoder, "{}", self.0)
    }
}

/// Connections, packets and bytes per virtual service or per real server: one entry
/// per object (the kernel's last totals and the counters), written out as three
/// counter families at each scrape.
#[derive(Debug)]
pub struct TrafficFamilies<L> {
    /// `virtual_service` or `real_server`: the families' names start with it.
    what: &'static str,
    entries: Mutex<HashMap<L, Counted>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    /// The kernel's totals when last read.
    last: kubelvs_model::Traffic,
    /// The counters: what the kernel counted since the series began.
    total: kubelvs_model::Traffic,
}

/// A traffic counter: its name, the start of its help, and its value in a total.
type TrafficCounter = (
    &'static str,
    &'static str,
    fn(&kubelvs_model::Traffic) -> u64,
);

const TRAFFIC: [TrafficCounter; 3] = [
    (
        "connections",
        "Connections (IPVS) or new flows (XDP) scheduled, per",
        |t| t.connections,
    ),
    ("packets", "Packets forwarded, per", |t| t.packets),
    ("bytes", "Bytes forwarded, per", |t| t.bytes),
];

impl<L> TrafficFamilies<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            what,
            entries: Mutex::default(),
        })
    }

    /// Removes the series of everything not in `present` (virtual services and real
    /// servers that left the dataplane): a label set per object ever seen would grow
    /// without bound.
    pub fn retain(&self, present: &std::collections::HashSet<L>) {
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|labels, _| present.contains(labels));
        entries.shrink_to_fit();
    }

    /// Advances the counters to the kernel's totals (a total that went down means the
    /// kernel entry was recreated: counted from zero again).
    pub fn observe(&self, labels: L, now: kubelvs_model::Traffic) {
        let mut entries = self.entries.lock().unwrap();
        let counted = entries.entry(labels).or_default();
        let delta = |n: u64, b: u64| if n >= b { n - b } else { n };
        let before = counted.last;
        counted.total.connections += delta(now.connections, before.connections);
        counted.total.packets += delta(now.packets, before.packets);
        counted.total.bytes += delta(now.bytes, before.bytes);
        counted.last = now;
    }

    /// The counter `name` (`connections`, `packets`, `bytes`) of `labels`.
    #[cfg(test)]
    fn total(&self, labels: &L, name: &str) -> Option<u64> {
        let (_, _, pick) = TRAFFIC.iter().find(|(n, _, _)| *n == name)?;
        let entries = self.entries.lock().unwrap();
        entries.get(labels).map(|c| pick(&c.total))
    }
}

impl<L> Collector for TrafficFamilies<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let entries = self.entries.lock().unwrap();
        // As a registry leaves out a family with no series.
        if entries.is_empty() {
            return Ok(());
        }
        for (name, help, pick) in TRAFFIC {
            let name = format!("{}_{name}", self.what);
            let help = format!("{help} {}.", self.what);
            let mut family = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
            for (labels, counted) in entries.iter() {
                family
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&pick(&counted.total), None)?;
            }
        }
        Ok(())
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
    pub virtual_service: Arc<TrafficFamilies<ServiceLabels>>,
    pub real_server: Arc<TrafficFamilies<BackendLabels>>,
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
        let virtual_service = TrafficFamilies::new("virtual_service");
        registry.register_collector(Box::new(virtual_service.clone()));
        let real_server = TrafficFamilies::new("real_server");
        registry.register_collector(Box::new(real_server.clone()));
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
        assert!(
            !m.observed.render().contains("virtual_service_bytes"),
            "no family before its first series"
        );
        let l = ServiceLabels {
            dataplane: "ipvs",
            service: Shown(ServiceKey {
                vip: "203.0.113.1".parse().unwrap(),
                port: 80,
                protocol: kubelvs_model::Protocol::Tcp,
            }),
        };
        let t = |c: u64| Traffic {
            connections: c,
            packets: 10 * c,
            bytes: 100 * c,
        };
        m.virtual_service.observe(l, t(5));
        m.virtual_service.observe(l, t(8));
        assert_eq!(m.virtual_service.total(&l, "connections"), Some(8));
        // The kernel entry was recreated: its totals start again from zero.
        m.virtual_service.observe(l, t(2));
        assert_eq!(m.virtual_service.total(&l, "connections"), Some(10));
        assert_eq!(m.virtual_service.total(&l, "bytes"), Some(1000));
        let text = m.observed.render();
        assert!(text.contains("# HELP kubelvs_virtual_service_bytes Bytes forwarded, per virtual_service.\n# TYPE kubelvs_virtual_service_bytes counter\nkubelvs_virtual_service_bytes_total{dataplane=\"ipvs\",service=\"203.0.113.1:80/TCP\"} 1000\n"), "{text}");
        // Gone from the dataplane: its series goes.
        m.virtual_service.retain(&Default::default());
        assert!(!m.observed.render().contains("203.0.113.1:80/TCP"));
        m.virtual_service.observe(l, t(10));
        let text = m.observed.render();
        assert!(text.contains("kubelvs_virtual_service_connections_total{dataplane=\"ipvs\",service=\"203.0.113.1:80/TCP\"} 10"), "{text}");
    }

    #[test]
    fn a_real_server_counted_across_services_has_an_empty_service_label() {
        let m = Metrics::new();
        let l = BackendLabels {
            dataplane: "xdp",
            service: Shown(None),
            real_server: Shown("[2001:db8::1]:8080".parse().unwrap()),
        };
        m.real_server.observe(
            l,
            Traffic {
                connections: 3,
                packets: 4,
                bytes: 5,
            },
        );
        let text = m.observed.render();
        assert!(text.contains("kubelvs_real_server_packets_total{dataplane=\"xdp\",service=\"\",real_server=\"[2001:db8::1]:8080\"} 4"), "{text}");
    }
}
