//! One call through the waypoint, as a stack of layers, each in its own module:
//!
//! 1. `hygiene`: the request as the waypoint forwards it (path normalized, proxy headers
//!    replaced);
//! 2. `authorize`: the policies attached to the waypoint;
//! 3. `route`: the VirtualService route, its cluster, timeout and retries, then the
//!    workload policies delegated to the waypoint for the Service routed to;
//! 4. `ratelimit`: the LocalRateLimits;
//! 5. `breaker`: admission within `http2MaxRequests`;
//! 6. `deadline`, then for each try: `balance` (the endpoint), `upstream` (a stream on a
//!    pooled connection), `retry` (whether the answer or failure asks for another try, and
//!    whether `attempts`, `maxRetries` and the budget allow it), and the endpoint's outlier
//!    detection (`cluster::Cluster::report`);
//! 7. `response`: the answer streamed back, and `telemetry`: the call counted and logged
//!    when it ends.
//!
//! This module only runs the stack. Errors the waypoint makes are gRPC statuses for gRPC
//! calls: UNAVAILABLE for no healthy upstream or a failed connection, DEADLINE_EXCEEDED for
//! a timeout, RESOURCE_EXHAUSTED for an overflowing cluster or a rate limit.

use std::{sync::Arc, time::Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, request::Parts};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::watch;
use weft_mesh::{config::LoadBalancer, state::State};

use crate::{
    authorize::Authorizer,
    balance,
    breaker::Admission,
    called::Called,
    cluster::{Cluster, Clusters},
    deadline::Deadline,
    grpc::{self, Code},
    hygiene,
    metrics::{ClusterCounters, ClusterLabels, Flags, Metrics, PolicyLabels},
    ratelimit::{CallKey, Limiter},
    replay::Replay,
    response::{InFlight, ResponseBody, Streaming, local},
    retry::{Next, Tries, judge_answer},
    route::{Decision, route},
    telemetry::{AccessLog, Record},
    trace::Tracer,
    upstream::{Dial, send},
};

pub struct Proxy {
    /// The model every call reads, without a lock: the watcher's latest, as [`follow`]
    /// publishes it.
    pub model: ArcSwap<State>,
    pub clusters: Clusters,
    /// Where upstream connections come from.
    pub upstream: Arc<dyn Dial>,
    pub metrics: Metrics,
    pub authz: Authorizer,
    pub limiter: Limiter,
    pub tracer: Tracer,
    pub access_log: Option<AccessLog>,
}

/// Publishes each model the watcher sends to the proxy's calls, until the watcher stops.
pub async fn follow(proxy: Arc<Proxy>, mut states: watch::Receiver<Arc<State>>) {
    loop {
        proxy.model.store(states.borrow_and_update().clone());
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// A call the layers before the first try let through.
struct Admitted {
    decision: Decision,
    cluster: Arc<Cluster>,
    admission: Admission,
}

/// A call a layer answered itself.
struct Refusal {
    code: Code,
    flag: Flags,
    message: String,
    rate_limited: bool,
}

impl Refusal {
    fn new(code: Code, flag: Flags, message: impl Into<String>) -> Self {
        Refusal {
            code,
            flag,
            message: message.into(),
            rate_limited: false,
        }
    }
}

impl Proxy {
    /// What the waypoint does once a second: closes upstream connections that
    /// `http.idleTimeout` says have idled too long, counts the requests of the last second
    /// in each retry budget, and drops what belongs to things the model no longer has: the
    /// buckets of rate limits, and the clusters and metric series of Services and pods.
    pub fn tidy(&self) {
        let model = self.model.load_full();
        self.limiter.retain(&model);
        self.clusters.retain(&model);
        self.metrics.retain_series(&model);
        for cluster in self.clusters.all() {
            cluster.breaker.fold();
            for endpoint in cluster.endpoints().iter() {
                endpoint.connections.reap(&cluster.policy.limits);
            }
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        called: Arc<Called>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let is_grpc = grpc::is_grpc(request.headers());
        let model = self.model.load_full();
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
        match self.admit(&model, &called, &mut parts, &mut record) {
            Ok(admitted) => self.forward(admitted, &called, parts, replay, record).await,
            Err(refusal) => {
                let mut response = local(record, refusal.code, refusal.flag, &refusal.message);
                if refusal.rate_limited {
                    response
                        .headers_mut()
                        .insert("x-local-rate-limit", HeaderValue::from_static("true"));
                }
                response
            }
        }
    }

    /// The layers before the first try: hygiene, authorization, route, delegated
    /// authorization, rate limit, admission.
    fn admit(
        &self,
        model: &Arc<State>,
        called: &Called,
        parts: &mut Parts,
        record: &mut Record,
    ) -> Result<Admitted, Refusal> {
        let hop = hygiene::Hop {
            client_ip: called.client_ip,
            client: &called.source.principal,
            waypoint: &self.authz.waypoint.identity,
        };
        let normal = hygiene::sanitize(parts, &hop).map_err(|malformed| {
            Refusal::new(Code::InvalidArgument, Flags::default(), malformed)
        })?;
        let denied = |message| Refusal::new(Code::PermissionDenied, Flags::default(), message);
        self.authz
            .authorize(model, called, parts, &normal.path)
            .map_err(denied)?;
        let service = model.services.get(&called.service).ok_or_else(|| {
            Refusal::new(Code::Unavailable, Flags::NR, "the called Service is gone")
        })?;
        let (decision, target) = route(
            model,
            service,
            &called.source.namespace,
            called.port,
            parts.uri.path(),
            &parts.headers,
        )
        .map_err(|no| Refusal::new(Code::Unimplemented, Flags::NR, no.0))?;
        record.route = decision.route.clone();
        self.authz
            .authorize_delegated(
                model,
                called,
                target,
                decision.cluster.port,
                parts,
                &normal.path,
            )
            .map_err(denied)?;
        let call = CallKey {
            waypoint: (&self.authz.waypoint.namespace, &self.authz.waypoint.name),
            service: (&called.service.0, &called.service.1),
            route: decision.route.rsplit_once('#').map(|(_, name)| name),
            path: parts.uri.path(),
        };
        if let Err(limit) = self.limiter.admit(model, &call) {
            self.metrics
                .rate_limited
                .get_or_create(&PolicyLabels { policy: limit })
                .inc();
            return Err(Refusal {
                rate_limited: true,
                ..Refusal::new(
                    Code::ResourceExhausted,
                    Flags::RL,
                    "local rate limit exceeded",
                )
            });
        }
        let cluster = self.clusters.get(model, target, &decision.cluster);
        let admission = cluster.breaker.admit().ok_or_else(|| {
            Refusal::new(
                Code::ResourceExhausted,
                Flags::UO,
                "http2MaxRequests reached",
            )
        })?;
        Ok(Admitted {
            decision,
            cluster,
            admission,
        })
    }

    /// The tries of an admitted call, until one's answer or failure is the call's.
    async fn forward(
        &self,
        admitted: Admitted,
        called: &Called,
        parts: Parts,
        replay: Replay,
        mut record: Record,
    ) -> Response<ResponseBody> {
        let Admitted {
            decision,
            cluster,
            admission,
        } = admitted;
        let deadline = Deadline::new(decision.timeout, &parts.headers, Instant::now());
        let hash = balance::call_hash(&cluster.policy.balancer, &parts.headers, called.client_ip);
        let mut tries = Tries::new(&decision.retries);
        loop {
            let Some(endpoint) = cluster.pick(hash, tries.tried()) else {
                return local(record, Code::Unavailable, Flags::UH, "no healthy upstream");
            };
            let now = Instant::now();
            if deadline.passed(now) {
                let message = "deadline exceeded before an answer";
                return local(record, Code::DeadlineExceeded, Flags::UT, message);
            }
            tries.start(endpoint.address);
            let try_at = deadline.for_try(tries.per_try_timeout(), now);
            endpoint.attempts.inc();
            let in_flight = InFlight::new(endpoint.clone());
            let limits = &cluster.policy.limits;
            let answer = send(
                &*self.upstream,
                limits,
                &endpoint,
                &parts,
                &replay,
                &deadline,
                try_at,
            )
            .await;
            let on = &decision.retries.retry_on;
            let (retriable, outcome) = match &answer {
                Ok((response, _)) => {
                    let code = record
                        .grpc
                        .then(|| grpc::status(response.headers()))
                        .flatten();
                    let (retriable, outcome) = judge_answer(on, response.status().as_u16(), code);
                    (retriable, Some(outcome))
                }
                Err(failure) => {
                    record.flags.set(failure.flag());
                    (failure.retriable(on), failure.outcome())
                }
            };
            let in_time = !deadline.passed(Instant::now());
            match tries.after(retriable, replay.replayable(), in_time, &cluster.breaker) {
                Next::Retry => {
                    if let Some(outcome) = outcome {
                        cluster.report(&endpoint, outcome);
                    }
                    drop((answer, in_flight));
                    self.count_retry(&cluster, &self.metrics.retries);
                    tries.backoff(deadline.at).await;
                    continue;
                }
                Next::Refused => {
                    self.count_retry(&cluster, &self.metrics.retries_refused);
                    record.flags.set(Flags::URX);
                }
                Next::Exhausted => record.flags.set(Flags::URX),
                Next::Done => {}
            }
            record.upstream = Some(endpoint.clone());
            let (response, lease) = match answer {
                Ok(answered) => answered,
                Err(failure) => {
                    if let Some(outcome) = outcome {
                        cluster.report(&endpoint, outcome);
                    }
                    let (code, message) = failure.answer();
                    return local(record, code, Flags::default(), &message);
                }
            };
            // Earlier tries' failures do not describe an answered call.
            if !record.flags.contains(Flags::URX) {
                record.flags = Flags::default();
            }
            if cluster.policy.balancer == LoadBalancer::PeakEwma {
                endpoint.observe_latency(now.elapsed());
            }
            let (head, inner) = response.into_parts();
            if inner.is_end_stream() {
                // Trailers-only (or an empty answer): done already.
                if let Some(outcome) = outcome {
                    cluster.report(&endpoint, outcome);
                }
                let status = grpc::status(&head.headers);
                record.finish(head.status.as_u16(), status, Flags::default());
                return Response::from_parts(head, ResponseBody::Empty);
            }
            let streaming = Streaming {
                inner,
                deadline: deadline
                    .at
                    .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
                record,
                cluster: cluster.clone(),
                in_flight,
                status: head.status.as_u16(),
                _lease: lease,
                _admission: admission,
            };
            return Response::from_parts(head, ResponseBody::streaming(streaming));
        }
    }

    fn count_retry(&self, cluster: &Cluster, family: &ClusterCounters) {
        let labels = ClusterLabels {
            cluster: cluster.key.to_string(),
        };
        family.get_or_create(&labels).inc();
    }
}
