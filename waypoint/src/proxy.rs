//! One call through the waypoint: route it, admit it into its cluster, then attempt it on
//! an endpoint the balancer picks, and retry while the route's policy, the replay buffer,
//! the deadline and the retry budget allow. Errors the waypoint makes are gRPC statuses
//! for gRPC calls: UNAVAILABLE for no healthy upstream or a failed connection,
//! DEADLINE_EXCEEDED for a timeout, RESOURCE_EXHAUSTED for an overflowing cluster.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use weft_mesh::state::State;

use http::{HeaderValue, Request, Response, request::Parts};
use http_body::Body as _;
use hyper::body::Incoming;
use rand::Rng;
use tokio::sync::watch;
use weft_mesh::{
    config::{HashKey, LoadBalancer, RetryOn},
    policy::{
        Peer, Request as Attributes, RootNamespace, WaypointTarget, Workload,
        authorize_l4_at_waypoint, authorize_l7, authorize_l7_among,
    },
};

use crate::{
    cluster::{Cluster, Clusters, hash_key},
    endpoint::{Endpoint, Outcome},
    grpc::{self, Code},
    hygiene,
    metrics::{ClusterLabels, Flags, Metrics, PolicyLabels},
    ratelimit::{CallKey, Limiter},
    replay::Replay,
    response::{InFlight, ResponseBody, Streaming},
    route::route,
    telemetry::{AccessLog, Record},
    trace::Tracer,
    upstream::{Dial, Lease},
};

/// The Service (and port) a tunnelled connection was addressed to, and who called it.
#[derive(Debug, Clone)]
pub struct Called {
    /// The Service's (namespace, name), its key in the model.
    pub service: (String, String),
    /// `namespace/name`, the metrics' label, made once per connection.
    pub label: Arc<str>,
    /// `name.namespace.svc.cluster.local`, Istio's `destination_service`.
    pub host: Arc<str>,
    pub port: u16,
    /// The client's address, for `consistentHash.useSourceIp`.
    pub client_ip: IpAddr,
    pub source: Source,
}

/// The client of a tunnelled connection, as its certificate and the model tell.
#[derive(Debug, Clone)]
pub struct Source {
    /// For authorization: the principal the certificate proved, and the client's address.
    pub peer: Peer,
    /// `spiffe://...`, for metrics and the access log.
    pub principal: Arc<str>,
    pub namespace: Arc<str>,
    /// The client pod's workload, or `unknown` when its address is no known pod.
    pub workload: Arc<str>,
}

/// This waypoint, as policies name it.
pub struct Waypoint {
    /// `spiffe://...`, as its certificate names it (the `By=` of `x-forwarded-client-cert`).
    pub identity: String,
    pub namespace: String,
    pub name: String,
    pub pod_ip: IpAddr,
    pub root: RootNamespace,
}

pub struct Proxy {
    pub model: watch::Receiver<Arc<State>>,
    pub clusters: Clusters,
    /// Where upstream connections come from.
    pub upstream: Arc<dyn Dial>,
    pub metrics: Metrics,
    pub waypoint: Waypoint,
    pub limiter: Limiter,
    pub tracer: Tracer,
    pub access_log: Option<AccessLog>,
}

/// Why an attempt got no response headers.
enum Failure {
    Connect(String),
    /// The destination's node agent refused the tunnel by policy (HBONE 401/403): a
    /// decision, not a fault, so never retried and not held against the endpoint's health.
    Denied(String),
    Refused(String),
    Reset(String),
    Timeout,
}

impl Failure {
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Connect(_) => Outcome::ConnectFailure,
            Failure::Denied(_) => Outcome::Status(403),
            Failure::Refused(_) | Failure::Reset(_) => Outcome::Reset,
            Failure::Timeout => Outcome::Timeout,
        }
    }

    fn retriable(&self, on: &RetryOn) -> bool {
        match self {
            Failure::Connect(_) => on.connect_failure || on.http_5xx || on.gateway_error,
            Failure::Denied(_) => false,
            Failure::Refused(_) => on.refused_stream || on.reset || on.http_5xx,
            Failure::Reset(_) => on.reset || on.http_5xx,
            // Envoy retries a per-try timeout on 5xx and gateway-error.
            Failure::Timeout => on.http_5xx || on.gateway_error || on.grpc_deadline_exceeded,
        }
    }
}

/// Whether an answer asks for a retry under `retryOn`: the gRPC conditions read
/// `grpc-status`, the HTTP ones `:status` (as Envoy does, so `5xx` alone does not retry a
/// gRPC error, which travels with status 200).
fn retry_on_answer(on: &RetryOn, http: u16, grpc: Option<u32>) -> bool {
    let by_grpc = grpc.is_some_and(|code| match code {
        1 => on.grpc_cancelled,
        4 => on.grpc_deadline_exceeded,
        8 => on.grpc_resource_exhausted,
        13 => on.grpc_internal,
        14 => on.grpc_unavailable,
        _ => false,
    });
    by_grpc
        || (on.http_5xx && http >= 500)
        || (on.gateway_error && (502..=504).contains(&http))
        || (on.retriable_status_codes && on.status_codes.contains(&http))
}

impl Proxy {
    pub async fn handle(
        self: Arc<Self>,
        called: Arc<Called>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let is_grpc = grpc::is_grpc(request.headers());
        let model = self.model.borrow().clone();
        let (mut parts, body) = request.into_parts();
        let span = self.tracer.start(&mut parts.headers, parts.uri.path());
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
        let replay = Replay::new(body);
        let mut record = Record {
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            called: called.clone(),
            route: "-".into(),
            grpc: is_grpc,
            flags: Flags::default(),
            method: parts.method.clone(),
            path,
            started,
            upstream: None,
            request_bytes: replay.received(),
            response_bytes: 0,
            span: Some(span),
        };
        let hop = hygiene::Hop {
            client_ip: called.client_ip,
            client: &called.source.principal,
            waypoint: &self.waypoint.identity,
        };
        let normal = match hygiene::sanitize(&mut parts, &hop) {
            Ok(normal) => normal,
            Err(malformed) => {
                return local(record, Code::InvalidArgument, Flags::default(), &malformed);
            }
        };
        if let Err(denied) = self.authorize(&model, &called, &parts, &normal.path) {
            return local(record, Code::PermissionDenied, Flags::default(), &denied);
        }
        let Some(service) = model.services.get(&called.service) else {
            return local(
                record,
                Code::Unavailable,
                Flags::NR,
                "the called Service is gone",
            );
        };
        let (decision, target) = match route(
            &model,
            service,
            &called.source.namespace,
            called.port,
            parts.uri.path(),
            &parts.headers,
        ) {
            Ok(routed) => routed,
            Err(no) => return local(record, Code::Unimplemented, Flags::NR, &no.0),
        };
        record.route = decision.route.clone();
        if let Err(denied) = self.authorize_delegated(
            &model,
            &called,
            target,
            decision.cluster.port,
            &parts,
            &normal.path,
        ) {
            return local(record, Code::PermissionDenied, Flags::default(), &denied);
        }
        let call = CallKey {
            waypoint: (&self.waypoint.namespace, &self.waypoint.name),
            service: (&called.service.0, &called.service.1),
            route: decision.route.rsplit_once('#').map(|(_, name)| name),
            path: parts.uri.path(),
        };
        if let Err(limit) = self.limiter.admit(&model, &call) {
            self.metrics
                .rate_limited
                .get_or_create(&PolicyLabels { policy: limit })
                .inc();
            let mut response = local(
                record,
                Code::ResourceExhausted,
                Flags::RL,
                "local rate limit exceeded",
            );
            response
                .headers_mut()
                .insert("x-local-rate-limit", HeaderValue::from_static("true"));
            return response;
        }
        let cluster = self.clusters.get(&model, target, &decision.cluster);
        let Some(admission) = cluster.admit() else {
            return local(
                record,
                Code::ResourceExhausted,
                Flags::UO,
                "http2MaxRequests reached",
            );
        };
        cluster.count_request();

        let deadline = [decision.timeout, grpc::parse_timeout(&parts.headers)]
            .into_iter()
            .flatten()
            .min()
            .map(|t| Instant::now() + t);
        let hash = match &cluster.policy.balancer {
            LoadBalancer::ConsistentHash(HashKey::Header(name)) => parts
                .headers
                .get(name.as_str())
                .map(|v| hash_key(v.as_bytes())),
            LoadBalancer::ConsistentHash(HashKey::SourceIp) => Some(match called.client_ip {
                IpAddr::V4(ip) => hash_key(&ip.octets()),
                IpAddr::V6(ip) => hash_key(&ip.octets()),
            }),
            _ => None,
        };
        let retries = &decision.retries;
        let mut avoid = None;
        let mut retry_slot = None;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let Some(endpoint) = cluster.pick(hash, avoid) else {
                return local(record, Code::Unavailable, Flags::UH, "no healthy upstream");
            };
            avoid = Some(endpoint.address);
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return local(
                    record,
                    Code::DeadlineExceeded,
                    Flags::UT,
                    "deadline exceeded before an answer",
                );
            }
            let try_deadline = [deadline, retries.per_try_timeout.map(|t| now + t)]
                .into_iter()
                .flatten()
                .min();
            endpoint.attempts.inc();
            let in_flight = InFlight::new(endpoint.clone());
            let started = Instant::now();
            let answer = self
                .attempt(&cluster, &endpoint, &parts, &replay, try_deadline)
                .await;
            let (retriable, why) = match &answer {
                Ok((response, _)) => {
                    let code = is_grpc.then(|| grpc::status(response.headers())).flatten();
                    let status = response.status().as_u16();
                    let health = match code {
                        Some(code) => grpc::as_http_status(code),
                        None => status,
                    };
                    (
                        retry_on_answer(&retries.retry_on, status, code),
                        Outcome::Status(health),
                    )
                }
                Err(failure) => {
                    record.flags.set(match failure {
                        Failure::Connect(_) => Flags::UF,
                        Failure::Denied(_) => Flags::default(),
                        Failure::Timeout => Flags::UT,
                        _ => Flags::UR,
                    });
                    (failure.retriable(&retries.retry_on), failure.outcome())
                }
            };
            let may_retry = retriable
                && tries <= retries.attempts
                && replay.replayable()
                && deadline.is_none_or(|d| Instant::now() < d);
            if may_retry {
                drop(retry_slot.take());
                match cluster.retry() {
                    Some(slot) => {
                        retry_slot = Some(slot);
                        cluster.report(&endpoint, why);
                        drop(answer);
                        drop(in_flight);
                        self.metrics
                            .retries
                            .get_or_create(&ClusterLabels {
                                cluster: cluster.key.to_string(),
                            })
                            .inc();
                        backoff(tries, deadline).await;
                        continue;
                    }
                    None => {
                        self.metrics
                            .retries_refused
                            .get_or_create(&ClusterLabels {
                                cluster: cluster.key.to_string(),
                            })
                            .inc();
                        record.flags.set(Flags::URX);
                    }
                }
            } else if retriable && tries > retries.attempts && retries.attempts > 0 {
                record.flags.set(Flags::URX);
            }
            return match answer {
                Ok((response, lease)) => {
                    // Earlier tries' failures do not describe an answered call.
                    if !record.flags.contains(Flags::URX) {
                        record.flags = Flags::default();
                    }
                    record.upstream = Some(endpoint.clone());
                    endpoint.observe_latency(started.elapsed());
                    let (head, inner) = response.into_parts();
                    if inner.is_end_stream() {
                        // Trailers-only (or an empty answer): done already.
                        cluster.report(&endpoint, why);
                        record.finish(
                            head.status.as_u16(),
                            grpc::status(&head.headers),
                            Flags::default(),
                        );
                        return Response::from_parts(head, ResponseBody::Empty);
                    }
                    let streaming = Streaming {
                        inner,
                        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
                        record,
                        cluster: cluster.clone(),
                        in_flight,
                        status: head.status.as_u16(),
                        _lease: lease,
                        _admission: admission,
                    };
                    Response::from_parts(head, ResponseBody::streaming(streaming))
                }
                Err(failure) => {
                    cluster.report(&endpoint, why);
                    record.upstream = Some(endpoint.clone());
                    let (code, message) = match &failure {
                        Failure::Timeout => (
                            Code::DeadlineExceeded,
                            "upstream request timeout".to_string(),
                        ),
                        Failure::Connect(m) => {
                            (Code::Unavailable, format!("upstream connect error: {m}"))
                        }
                        Failure::Denied(m) => (
                            Code::PermissionDenied,
                            format!("RBAC: access denied by the destination's node agent: {m}"),
                        ),
                        Failure::Refused(m) | Failure::Reset(m) => {
                            (Code::Unavailable, format!("upstream reset: {m}"))
                        }
                    };
                    local(record, code, Flags::default(), &message)
                }
            };
        }
    }

    /// The AuthorizationPolicies attached to this waypoint, for one call. `Err` is the
    /// message the client gets (Envoy's "RBAC: access denied", with the reason).
    fn authorize(
        &self,
        model: &State,
        called: &Called,
        parts: &Parts,
        path: &str,
    ) -> Result<(), String> {
        if model.authorization_policies.is_empty() {
            return Ok(());
        }
        let at = self.target(model, Some((&called.service.0, &called.service.1)));
        // `hosts` match the Service the stream was opened for, never a name the client
        // chose for `:authority`.
        let attributes = Attributes {
            method: parts.method.as_str(),
            path,
            host: &called.host,
            headers: &parts.headers,
        };
        let decision = authorize_l7(model, &at, called.port, &called.source.peer, &attributes);
        self.verdict(decision, &called.source.principal, &called.label, path)
    }

    /// This waypoint as policies attach to it, for traffic to `service` (`None`: to a pod).
    fn target<'a>(
        &'a self,
        model: &'a State,
        service: Option<(&'a str, &'a str)>,
    ) -> WaypointTarget<'a> {
        static NO_LABELS: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        WaypointTarget {
            waypoint: Workload {
                namespace: &self.waypoint.namespace,
                // Its own labels, for policies that select it.
                labels: model
                    .pod_by_ip(self.waypoint.pod_ip)
                    .map_or(&NO_LABELS, |pod| &pod.labels),
                ip: Some(self.waypoint.pod_ip),
            },
            name: &self.waypoint.name,
            service,
            root: &self.waypoint.root,
        }
    }

    /// The AuthorizationPolicies attached to this waypoint, for a connection it carries at
    /// L4: to a TCP port of `service`, or to a bound pod (`service` is `None`), addressed to
    /// `port`. Rules that need L7 attributes fail closed. `Err` names the policy.
    pub fn authorize_connection(
        &self,
        model: &State,
        service: Option<(&str, &str)>,
        port: u16,
        principal: &str,
        peer: &Peer,
    ) -> Result<(), String> {
        if model.authorization_policies.is_empty() {
            return Ok(());
        }
        let at = self.target(model, service);
        let decision = authorize_l4_at_waypoint(model, &at, port, peer);
        let what = match service {
            Some((namespace, name)) => format!("{namespace}/{name}:{port}"),
            None => format!("pod port {port}"),
        };
        self.verdict(decision, principal, &what, "")
    }

    /// The workload policies delegated to this waypoint (see `weft_mesh::state::Delegation`)
    /// for the Service a call was routed to, and for the one it was sent to when a
    /// VirtualService sends it elsewhere, decided with the pod port the call goes to.
    fn authorize_delegated(
        &self,
        model: &State,
        called: &Called,
        target: &weft_mesh::config::ServiceInfo,
        target_port: u16,
        parts: &Parts,
        path: &str,
    ) -> Result<(), String> {
        let mut policies: Vec<&weft_mesh::config::AuthorizationPolicyInfo> = model
            .delegated_policies(&called.service.0, &called.service.1)
            .iter()
            .chain(model.delegated_policies(&target.namespace, &target.name))
            .map(|p| &**p)
            .collect();
        if policies.is_empty() {
            return Ok(());
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        policies.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        // As the workload's agent would see the port: the pod's (a named target port
        // falls back to the Service port).
        let port = target
            .ports
            .iter()
            .find(|p| p.port == target_port)
            .and_then(|p| p.target_port)
            .unwrap_or(target_port);
        let no_labels = std::collections::BTreeMap::new();
        let dest = Workload {
            namespace: &target.namespace,
            labels: &no_labels,
            ip: None,
        };
        let attributes = Attributes {
            method: parts.method.as_str(),
            path,
            host: &called.host,
            headers: &parts.headers,
        };
        let decision = authorize_l7_among(
            policies.into_iter(),
            &dest,
            port,
            &called.source.peer,
            &attributes,
        );
        self.verdict(decision, &called.source.principal, &called.label, path)
    }

    /// Counts and logs a decision; `Err` is the message a denied client gets.
    fn verdict(
        &self,
        decision: weft_mesh::policy::Decision,
        principal: &str,
        service: &str,
        path: &str,
    ) -> Result<(), String> {
        for policy in &decision.audited_by {
            self.metrics
                .authz_audited
                .get_or_create(&PolicyLabels {
                    policy: policy.to_string(),
                })
                .inc();
            tracing::info!(%policy, source = %principal, path, "AUDIT policy matched");
        }
        if decision.allowed {
            return Ok(());
        }
        let policy = decision
            .reason
            .denied_by()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        self.metrics
            .authz_denied
            .get_or_create(&PolicyLabels { policy })
            .inc();
        tracing::info!(
            source = %principal,
            %service,
            path,
            reason = %decision.reason,
            "denied"
        );
        Err(format!("RBAC: access denied ({})", decision.reason))
    }

    /// One attempt: a stream on a connection to `endpoint`, until its response headers.
    async fn attempt(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        parts: &Parts,
        replay: &Replay,
        deadline: Option<Instant>,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        let work = async {
            let dial = self.upstream.dial(endpoint.address, endpoint.node);
            let (mut send, lease) = endpoint
                .connections
                .acquire(&cluster.policy.limits, dial)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::PermissionDenied => Failure::Denied(e.to_string()),
                    _ => Failure::Connect(e.to_string()),
                })?;
            let mut request = Request::new(replay.body());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            // Only a deadline the client set is passed on: the route's own timeout is the
            // waypoint's to enforce (a backend that enforced it too would race it with a
            // status of its own, CANCELLED in tonic's case).
            if let Some(deadline) = deadline
                && parts.headers.contains_key(grpc::TIMEOUT)
            {
                // Tell the backend how long it really has.
                let left = deadline.saturating_duration_since(Instant::now());
                request
                    .headers_mut()
                    .insert(grpc::TIMEOUT, grpc::format_timeout(left));
            }
            send.ready()
                .await
                .map_err(|e| Failure::Connect(e.to_string()))?;
            match send.send_request(request).await {
                Ok(response) => Ok((response, lease)),
                Err(err) => Err(classify(&err)),
            }
        };
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), work)
                .await
                .unwrap_or(Err(Failure::Timeout)),
            None => work.await,
        }
    }
}

/// Tells a refused stream (safe to retry anywhere) from other resets.
fn classify(err: &hyper::Error) -> Failure {
    if err.is_canceled() {
        // Never sent (the connection was closing): safe to send again anywhere.
        return Failure::Refused(err.to_string());
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return Failure::Refused(err.to_string());
        }
        source = e.source();
    }
    Failure::Reset(err.to_string())
}

/// Envoy's default retry back-off: a random wait below 25 ms × 2^(n-1), at most 250 ms,
/// and never past the deadline.
async fn backoff(tries: u32, deadline: Option<Instant>) {
    let ceiling =
        Duration::from_millis(25u64 << (tries - 1).min(4)).min(Duration::from_millis(250));
    let mut wait = Duration::from_micros(rand::rng().random_range(0..ceiling.as_micros() as u64));
    if let Some(deadline) = deadline {
        wait = wait.min(deadline.saturating_duration_since(Instant::now()));
    }
    tokio::time::sleep(wait).await;
}

/// An answer of the waypoint's own: a trailers-only gRPC status for a gRPC call, else the
/// matching HTTP status.
fn local(mut record: Record, code: Code, flag: Flags, message: &str) -> Response<ResponseBody> {
    record.flags.set(flag);
    let response = if record.grpc {
        grpc::trailers_only(code, message, ResponseBody::Empty)
    } else {
        let mut r = Response::new(ResponseBody::Empty);
        *r.status_mut() = grpc::http_status(code);
        if let Ok(v) = HeaderValue::from_str(message) {
            r.headers_mut().insert("x-weft-error", v);
        }
        r
    };
    record.finish(
        response.status().as_u16(),
        record.grpc.then_some(code as u32),
        Flags::default(),
    );
    tracing::debug!(service = %record.called.label, %message, "answered locally");
    response
}
