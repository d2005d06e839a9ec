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

/// The labels of Istio's TCP metrics, so that dashboards built for Istio read Weft's too.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` (the client's agent) or `destination` (the server's agent).
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    /// Envoy-style: `-` for none, `UF` when the upstream could not be reached, `UAEX` when
    /// policy refused the connection.
    pub response_flags: &'static str,
    /// `mutual_tls` when the connection crossed the tunnel, else `none`.
    pub connection_security_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    identity: String,
}

/// Reads each identity's certificate expiry, once the tunnel is up.
pub type ExpiryReader =
    std::sync::Arc<dyn Fn() -> Vec<(String, std::time::SystemTime)> + Send + Sync>;

#[derive(Clone, Default)]
struct ExpirySlot(std::sync::Arc<std::sync::Mutex<Option<ExpiryReader>>>);

impl std::fmt::Debug for ExpirySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpirySlot")
    }
}

/// A finding code of the compiled configuration (`weft-agent analyze` lists them).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabel {
    code: &'static str,
    severity: &'static str,
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
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    expiry: ExpirySlot,
    denials: Family<ReasonLabel, Counter>,
    pool: PoolSlot,
    outbound: Family<ResultLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    pub enrolled_pods: Gauge,
    pub pending_pods: Gauge,
    pub config_errors: Gauge,
    findings: Family<FindingLabel, Gauge>,
}

impl Metrics {
    /// Sets `weft_config_findings` to the state's findings, by code.
    pub fn set_findings(&self, findings: &[weft_mesh::state::Finding]) {
        self.findings.clear();
        for finding in findings {
            self.findings
                .get_or_create(&FindingLabel {
                    code: finding.code,
                    severity: finding.severity.as_str(),
                })
                .inc();
        }
    }

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
            "weft_config_findings",
            "Findings of the compiled configuration now, by code (see weft-agent analyze)",
            self.findings.clone(),
        );
        registry.register(
            "weft_config_errors",
            "Configuration objects currently rejected",
            self.config_errors.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened, as Istio counts them",
            self.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed, as Istio counts them",
            self.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent toward the destination",
            self.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
            self.tcp_received.clone(),
        );
        registry.register_collector(Box::new(ExpiryGauges(self.expiry.clone())));
        registry.register(
            "weft_tunnel_denials",
            "Tunnelled connections the inbound side refused, by reason",
            self.denials.clone(),
        );
        registry.register_collector(Box::new(EbpfCounters(maps)));
        registry.register_collector(Box::new(PoolGauges(self.pool.clone())));
    }

    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Counts a closed connection and its bytes: `request` went from the client towards the
    /// server, `response` back. Istio's reference defines `istio_tcp_received_bytes_total` as
    /// the bytes received during the request and `istio_tcp_sent_bytes_total` as those sent
    /// during the response, on both reporters.
    pub fn tcp_closed(&self, labels: &TcpLabels, request: u64, response: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_received.get_or_create(labels).inc_by(request);
        self.tcp_sent.get_or_create(labels).inc_by(response);
    }

    /// Counts a refused connection as Istio does: opened and closed at once, with `flags`.
    pub fn tcp_refused(&self, mut labels: TcpLabels, flags: &'static str) {
        labels.response_flags = flags;
        self.tcp_opened(&labels);
        self.tcp_closed(&labels, 0, 0);
    }

    pub fn register_expiry(&self, reader: ExpiryReader) {
        if let Ok(mut slot) = self.expiry.0.lock() {
            *slot = Some(reader);
        }
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

/// `weft_certificate_expiry_seconds{identity}`: when each held certificate expires (Unix time).
#[derive(Debug)]
struct ExpiryGauges(ExpirySlot);

impl Collector for ExpiryGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(reader) = self.0.0.lock().ok().and_then(|r| r.clone()) else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "weft_certificate_expiry_seconds",
            "When each workload certificate the agent holds expires, in Unix seconds",
            None,
            MetricType::Gauge,
        )?;
        for (identity, not_after) in reader() {
            let seconds = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let labels = IdentityLabel { identity };
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The two ends of a connection, as far as they are known.
pub struct Ends {
    pub source_ip: std::net::IpAddr,
    pub source_principal: Option<String>,
    pub destination_ip: std::net::IpAddr,
    pub destination_principal: Option<String>,
    pub destination_service: Option<String>,
}

/// The labels a destination agent reports for a connection to the pod at `destination`:
/// through the tunnel (`source_principal` set) or the plaintext inbound (`None`).
pub fn destination_labels(
    model: &weft_mesh::state::State,
    trust_domain: &str,
    source_ip: std::net::IpAddr,
    source_principal: Option<String>,
    destination: std::net::IpAddr,
) -> TcpLabels {
    let security = if source_principal.is_some() {
        "mutual_tls"
    } else {
        "none"
    };
    let destination_principal = model
        .pod_by_ip(destination)
        .and_then(|p| crate::tunnel::pod_identity(trust_domain, p).ok())
        .map(|id| id.to_string());
    let ends = Ends {
        source_ip,
        source_principal,
        destination_ip: destination,
        destination_principal,
        destination_service: None,
    };
    tcp_labels("destination", model, ends, security)
}

/// The labels of one connection.
pub fn tcp_labels(
    reporter: &'static str,
    model: &weft_mesh::state::State,
    ends: Ends,
    security: &'static str,
) -> TcpLabels {
    let unknown = || "unknown".to_string();
    let source = model.workload(ends.source_ip);
    let destination = model.workload(ends.destination_ip);
    TcpLabels {
        reporter,
        source_workload: source.map(|w| w.name.clone()).unwrap_or_else(unknown),
        source_workload_namespace: source
            .map(|w| w.pod.namespace.clone())
            .unwrap_or_else(unknown),
        source_principal: ends.source_principal.unwrap_or_else(unknown),
        destination_workload: destination.map(|w| w.name.clone()).unwrap_or_else(unknown),
        destination_workload_namespace: destination
            .map(|w| w.pod.namespace.clone())
            .unwrap_or_else(unknown),
        destination_principal: ends.destination_principal.unwrap_or_else(unknown),
        destination_service: ends.destination_service.unwrap_or_else(unknown),
        response_flags: "-",
        connection_security_policy: security,
    }
}
