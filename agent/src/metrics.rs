//! The agent's Prometheus metrics (:15020): its own counters, and the eBPF programs' counters
//! read from the kernel at scrape time.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::redirect::SharedMaps;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The tunnel's connection pool, once the tunnel is up.
#[derive(Clone, Default)]
struct PoolSlot(std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<weft_mesh::hbone::Pool>>>>);

impl std::fmt::Debug for PoolSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolSlot")
    }
}

/// Handles to the agent's metrics; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    denials: Family<ReasonLabel, Counter>,
    pool: PoolSlot,
    outbound: Family<ResultLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    pub enrolled_pods: Gauge,
    pub pending_pods: Gauge,
    pub config_errors: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry, maps: SharedMaps) {
        registry.register(
            "weft_outbound_connections",
            "Connections accepted by the outbound listener, by result",
            self.outbound.clone(),
        );
        registry.register(
            "weft_outbound_bytes",
            "Bytes carried by the outbound listener (sent: from the pod; received: to it)",
            self.bytes.clone(),
        );
        registry.register(
            "weft_enrolled_pods",
            "Pods whose traffic is captured",
            self.enrolled_pods.clone(),
        );
        registry.register(
            "weft_pending_pods",
            "Pods to enrol that are not ready yet",
            self.pending_pods.clone(),
        );
        registry.register(
            "weft_config_errors",
            "Configuration objects currently rejected",
            self.config_errors.clone(),
        );
        registry.register(
            "weft_tunnel_denials",
            "Tunnelled connections the inbound side refused, by reason",
            self.denials.clone(),
        );
        registry.register_collector(Box::new(EbpfCounters(maps)));
        registry.register_collector(Box::new(PoolGauges(self.pool.clone())));
    }

    pub fn denied(&self, reason: &str) {
        self.denials
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn register_pool(&self, pool: std::sync::Arc<weft_mesh::hbone::Pool>) {
        if let Ok(mut slot) = self.pool.0.lock() {
            *slot = Some(pool);
        }
    }

    pub fn outbound(&self, result: &str) {
        self.outbound
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn bytes(&self, sent: u64, received: u64) {
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: "sent".into(),
            })
            .inc_by(sent);
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: "received".into(),
            })
            .inc_by(received);
    }
}

/// `weft_ebpf_events_total{event=...}`, read from the per-CPU counters map on each scrape.
struct EbpfCounters(SharedMaps);

impl std::fmt::Debug for EbpfCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EbpfCounters")
    }
}

impl Collector for EbpfCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "weft_ebpf_events",
            "Events counted by the eBPF programs (captures, splices, tc packets)",
            None,
            MetricType::Counter,
        )?;
        for (event, value) in self.0.counters() {
            let labels = [("event", event)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// `weft_tunnel_pool_*`: the outbound tunnel's pooled connections and their streams.
#[derive(Debug)]
struct PoolGauges(PoolSlot);

impl Collector for PoolGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self
            .0
            .0
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.stats()))
        else {
            return Ok(());
        };
        let gauges = [
            (
                "weft_tunnel_pool_connections",
                "Pooled tunnel connections open now",
                stats.connections as i64,
            ),
            (
                "weft_tunnel_pool_streams",
                "Tunnelled streams open now",
                stats.streams as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "weft_tunnel_pool_connections_opened",
            "Tunnel connections the pool has dialled",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.connections_opened as u64).encode(metric)
    }
}
