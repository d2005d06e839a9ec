//! Unit tests of the call path, through its seams and with no root, lab or network: a
//! client speaks HTTP/2 to the waypoint's own call server (`accept::serve_calls`) over an
//! in-memory pipe, and the proxy's upstream connections ([`Dial`]) are HTTP/2 over more
//! pipes to scripted backends. The model is compiled from YAML, as the waypoint's is.
//!
//! Every backend answers with its own name in the body, so a test sees which one served a
//! call; each can be told, call by call, to answer with a status, reset, stall or refuse.

mod balance;
mod failover;
mod flags;
mod limits;
mod retries;
mod series;

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::text::encode;
use tokio::sync::watch;
use weft_mesh::{config::model_from_yaml, policy::Peer, state::State};

use crate::{
    accept::serve_calls,
    authorize::{Authorizer, Waypoint},
    called::{Called, Source},
    cluster::Clusters,
    metrics::Metrics,
    proxy::{Proxy, follow},
    ratelimit::Limiter,
    trace::Tracer,
    upstream::{Dial, Dialling, handshake},
};

/// What a backend does with one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// Answers OK: its name, then `grpc-status: 0` in the trailers.
    Ok,
    /// A trailers-only gRPC status.
    Grpc(u32),
    /// An HTTP status with no gRPC status.
    Http(u16),
    /// Resets the stream (RST_STREAM, INTERNAL_ERROR) before any response headers.
    Reset,
    /// Waits, then answers OK.
    Slow(Duration),
    /// Sends response headers and one message, then resets the stream.
    HeadersThenReset,
    /// Sends response headers and one message, then never finishes.
    HeadersThenStall,
}

/// One scripted backend pod.
pub struct Backend {
    pub name: &'static str,
    /// Acts for the next calls, in order; after them, `normally`.
    script: Mutex<VecDeque<Act>>,
    normally: Mutex<Act>,
    /// Dials fail with this kind (ConnectionRefused: down; PermissionDenied: the node
    /// agent's policy refused the tunnel).
    refuse: Mutex<Option<(io::ErrorKind, usize)>>,
    /// Dials it refused.
    pub refused: AtomicUsize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of its connections.
    max_streams: Option<u32>,
    pub calls: AtomicUsize,
    pub connections: AtomicUsize,
    /// Calls being served now, and the most at once.
    pub in_flight: AtomicUsize,
    pub most_in_flight: AtomicUsize,
    /// The headers of the last call it got.
    pub last_headers: Mutex<Option<HeaderMap>>,
}

impl Backend {
    fn new(name: &'static str, max_streams: Option<u32>) -> Arc<Self> {
        Arc::new(Backend {
            name,
            script: Mutex::default(),
            normally: Mutex::new(Act::Ok),
            refuse: Mutex::default(),
            refused: AtomicUsize::new(0),
            max_streams,
            calls: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            last_headers: Mutex::default(),
        })
    }

    /// The next calls' acts, in order.
    pub fn then(&self, acts: &[Act]) {
        self.script.lock().unwrap().extend(acts);
    }

    pub fn always(&self, act: Act) {
        *self.normally.lock().unwrap() = act;
    }

    /// The next `times` dials fail with `kind`.
    pub fn refuse(&self, kind: io::ErrorKind, times: usize) {
        *self.refuse.lock().unwrap() = Some((kind, times));
    }

    /// Whether a dial now fails, and how.
    fn refusal(&self) -> Option<io::ErrorKind> {
        let mut refuse = self.refuse.lock().unwrap();
        let (kind, times) = refuse.as_mut()?;
        let kind = *kind;
        self.refused.fetch_add(1, Ordering::SeqCst);
        *times -= 1;
        if *times == 0 {
            *refuse = None;
        }
        Some(kind)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn next_act(&self) -> Act {
        let scripted = self.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| *self.normally.lock().unwrap())
    }

    async fn serve(
        self: Arc<Self>,
        request: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        *self.last_headers.lock().unwrap() = Some(request.headers().clone());
        let act = self.next_act();
        let answer = self.answer(act, request).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    async fn answer(
        &self,
        act: Act,
        request: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, io::Error> {
        // The whole request first, as a unary gRPC server reads it.
        let _ = request.into_body().collect().await;
        let message = || Ok(Frame::data(grpc_frame(self.name.as_bytes())));
        let ok = || {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            Ok(Frame::trailers(trailers))
        };
        let answer =
            |status: u16, grpc: Option<u32>, frames: Vec<io::Result<Frame<Bytes>>>, stall: bool| {
                let empty = frames.is_empty();
                let frames = futures::stream::iter(frames);
                let body = if empty {
                    BoxBody::new(Empty::new().map_err(|never| match never {}))
                } else if stall {
                    BoxBody::new(StreamBody::new(frames.chain(futures::stream::pending())))
                } else {
                    BoxBody::new(StreamBody::new(frames))
                };
                let mut response = Response::builder()
                    .status(status)
                    .header("content-type", "application/grpc");
                if let Some(code) = grpc {
                    response = response.header("grpc-status", code.to_string());
                }
                Ok(response.body(body).unwrap())
            };
        match act {
            Act::Ok => answer(200, None, vec![message(), ok()], false),
            Act::Slow(wait) => {
                tokio::time::sleep(wait).await;
                answer(200, None, vec![message(), ok()], false)
            }
            Act::Grpc(code) => answer(200, Some(code), vec![], false),
            Act::Http(status) => answer(status, None, vec![], false),
            Act::Reset => Err(io::Error::other("scripted reset")),
            Act::HeadersThenStall => answer(200, None, vec![message()], true),
            // A body error after the first message (and after hyper has sent the
            // headers): hyper resets the stream.
            Act::HeadersThenReset => {
                let failing = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(io::Error::other("scripted reset mid-answer"))
                });
                let frames = futures::stream::iter(vec![message()]).chain(failing);
                Ok(Response::builder()
                    .header("content-type", "application/grpc")
                    .body(BoxBody::new(StreamBody::new(frames)))
                    .unwrap())
            }
        }
    }
}

/// A backend's response body.
type Body = BoxBody<Bytes, io::Error>;

/// A length-prefixed gRPC message (gRPC over HTTP/2, "Length-Prefixed-Message").
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + payload.len());
    framed.push(0);
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed.into()
}

/// The proxy's upstream in the tests: each pod address leads to a scripted backend.
struct Pipes {
    backends: HashMap<SocketAddr, Arc<Backend>>,
}

impl Dial for Pipes {
    fn dial(&self, pod: SocketAddr, _node: SocketAddr) -> Dialling<'_> {
        Box::pin(async move {
            let backend =
                self.backends.get(&pod).cloned().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::ConnectionRefused, "no such pod")
                })?;
            if let Some(kind) = backend.refusal() {
                return Err(io::Error::new(kind, format!("{} refused", backend.name)));
            }
            backend.connections.fetch_add(1, Ordering::SeqCst);
            let (near, far) = tokio::io::duplex(256 * 1024);
            let serving = backend.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| serving.clone().serve(request));
                let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                if let Some(max) = backend.max_streams {
                    server.max_concurrent_streams(max);
                }
                let _ = server.serve_connection(TokioIo::new(far), service).await;
            });
            handshake(near, 1 << 20, pod).await
        })
    }
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n";

const SERVICE: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.1, selector: {app: cart}, ports: [{name: grpc, port: 50051, appProtocol: grpc}, {name: grpc-admin, port: 50052, appProtocol: grpc}]}\n";

/// The backends' pods: name, address, and `version` label.
const PODS: [(&str, &str, &str); 3] = [
    ("a", "10.1.0.1", "v1"),
    ("b", "10.1.0.2", "v1"),
    ("c", "10.1.0.3", "v2"),
];

/// A waypoint in front of Service `shop/cart` (ports 50051 and 50052, pods a, b, c),
/// configured by `yaml` (DestinationRules, VirtualServices, policies), and one client
/// connection to it.
pub struct Lab {
    proxy: Arc<Proxy>,
    pub backends: HashMap<&'static str, Arc<Backend>>,
    pub metrics: Metrics,
    client: SendRequest<Full<Bytes>>,
    model: watch::Sender<Arc<State>>,
    port: u16,
}

pub struct Options<'a> {
    pub yaml: &'a str,
    pub port: u16,
    pub max_streams: Option<u32>,
    pub client_ip: IpAddr,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            yaml: "",
            port: 50051,
            max_streams: None,
            client_ip: "10.1.9.9".parse().unwrap(),
        }
    }
}

/// The model the waypoint sees, from the Service, its pods and `yaml`.
fn compile(yaml: &str) -> Arc<State> {
    compile_with(yaml, &["a", "b", "c"], true)
}

/// The model with only `pods` of the backends, and without the Service unless `service`.
fn compile_with(yaml: &str, pods: &[&str], service: bool) -> Arc<State> {
    let mut all = NODE.to_string();
    if service {
        all.push_str(SERVICE);
    }
    for (name, ip, version) in PODS.iter().filter(|(name, _, _)| pods.contains(name)) {
        all.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {name}, labels: {{app: cart, version: {version}}}}}\nspec: {{nodeName: n1, serviceAccountName: cart}}\nstatus: {{podIP: {ip}}}\n"
        ));
    }
    if !yaml.is_empty() {
        all.push_str("---\n");
        all.push_str(yaml);
    }
    Arc::new(State::compile(
        model_from_yaml(&all).expect("the test's YAML"),
    ))
}

impl Lab {
    pub async fn new(yaml: &str) -> Lab {
        Lab::with(Options {
            yaml,
            ..Options::default()
        })
        .await
    }

    pub async fn with(options: Options<'_>) -> Lab {
        let state = compile(options.yaml);
        let (model, watched) = watch::channel(state.clone());
        let backends: HashMap<&'static str, Arc<Backend>> = PODS
            .iter()
            .map(|(name, _, _)| (*name, Backend::new(name, options.max_streams)))
            .collect();
        let pipes = Pipes {
            backends: PODS
                .iter()
                .map(|(name, ip, _)| {
                    (
                        SocketAddr::new(ip.parse().unwrap(), options.port),
                        backends[name].clone(),
                    )
                })
                .collect(),
        };
        let metrics = Metrics::new();
        let proxy = Arc::new(Proxy {
            model: ArcSwap::new(state),
            clusters: Clusters::new(&metrics, "cluster.local"),
            upstream: Arc::new(pipes),
            metrics: metrics.clone(),
            authz: Authorizer {
                metrics: metrics.clone(),
                waypoint: Waypoint {
                    identity: "spiffe://cluster.local/ns/shop/sa/waypoint".into(),
                    namespace: "shop".into(),
                    name: "waypoint".into(),
                    pod_ip: "10.1.0.100".parse().unwrap(),
                    root: "istio-system".to_string().into(),
                },
            },
            limiter: Limiter::default(),
            tracer: Tracer {
                sampling: 0.0,
                exporter: None,
            },
            access_log: None,
        });
        let principal = "spiffe://cluster.local/ns/shop/sa/client";
        let called = Arc::new(Called {
            service: ("shop".into(), "cart".into()),
            label: "shop/cart".into(),
            host: "cart.shop.svc.cluster.local".into(),
            port: options.port,
            client_ip: options.client_ip,
            source: Source {
                peer: Peer::authenticated(&principal["spiffe://".len()..], options.client_ip),
                principal: principal.into(),
                namespace: "shop".into(),
                workload: "client".into(),
            },
        });
        tokio::spawn(follow(proxy.clone(), watched));
        let (near, far) = tokio::io::duplex(256 * 1024);
        tokio::spawn(serve_calls(
            far,
            proxy.clone(),
            called,
            1 << 20,
            std::future::pending(),
        ));
        let (client, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(near))
            .await
            .expect("the client's handshake");
        tokio::spawn(connection);
        Lab {
            proxy,
            backends,
            metrics,
            client,
            model,
            port: options.port,
        }
    }

    pub fn backend(&self, name: &str) -> &Backend {
        &self.backends[name]
    }

    /// Publishes a new configuration, as the watcher does, and waits until the proxy
    /// has it.
    pub async fn configure(&self, yaml: &str) {
        self.publish(compile(yaml)).await;
    }

    /// Sends `state` as the watcher does, and waits until the proxy follows it.
    async fn publish(&self, state: Arc<State>) {
        self.model.send_replace(state.clone());
        while !Arc::ptr_eq(&self.proxy.model.load(), &state) {
            tokio::task::yield_now().await;
        }
    }

    /// A call's response, its body unread.
    pub async fn open(&self, path: &str) -> Response<hyper::body::Incoming> {
        self.send(path, &[]).await
    }

    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> Response<hyper::body::Incoming> {
        let mut request = Request::post(format!(
            "http://cart.shop.svc.cluster.local:{}{path}",
            self.port
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(grpc_frame(b"hello")))
            .expect("a request");
        let mut client = self.client.clone();
        client.ready().await.expect("the client connection");
        client.send_request(request).await.expect("an answer")
    }

    /// Publishes a model with only `pods` of the backends (and the Service unless
    /// `!service`), and runs the waypoint's once-a-second tidying.
    pub async fn configure_cluster(&self, pods: &[&str], service: bool) {
        self.publish(compile_with("", pods, service)).await;
        self.proxy.tidy();
    }

    /// One unary call to `path` with `headers`, as a gRPC client makes it.
    pub async fn call_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let response = self.send(path, headers).await;
        let (head, body) = response.into_parts();
        let header_status = head.headers.get("grpc-status").cloned();
        let header_message = head.headers.get("grpc-message").cloned();
        let (data, trailers, broken) = match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                (collected.to_bytes(), trailers, false)
            }
            Err(_) => (Bytes::new(), None, true),
        };
        let from = |name: &str| {
            trailers
                .as_ref()
                .and_then(|t| t.get(name).cloned())
                .or_else(|| match name {
                    "grpc-status" => header_status.clone(),
                    _ => header_message.clone(),
                })
        };
        Answer {
            http: head.status.as_u16(),
            grpc: from("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()),
            message: from("grpc-message")
                .and_then(|v| v.to_str().ok().map(str::to_string))
                .unwrap_or_default(),
            served_by: (data.len() > 5).then(|| String::from_utf8_lossy(&data[5..]).into_owned()),
            headers: head.headers,
            broken,
        }
    }

    pub async fn call(&self) -> Answer {
        self.call_with("/shop.Cart/Get", &[]).await
    }

    /// Two calls, the second started `after` the first.
    pub async fn overlapping(&self, after: Duration) -> (Answer, Answer) {
        tokio::join!(self.call(), async {
            tokio::time::sleep(after).await;
            self.call().await
        })
    }

    /// The waypoint's Prometheus page.
    pub fn exported(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.metrics.registry().lock().unwrap()).unwrap();
        text
    }

    /// Calls counted with exactly these response flags (`-` for none).
    pub fn calls_flagged(&self, flags: &str) -> u64 {
        let label = format!("response_flags=\"{flags}\"");
        self.exported()
            .lines()
            .filter(|l| l.starts_with("weft_waypoint_requests_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The sum of a counter's samples whose labels contain `labels`.
    pub fn counted(&self, name: &str, labels: &str) -> u64 {
        self.exported()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// What the client saw of one call.
#[derive(Debug)]
pub struct Answer {
    pub http: u16,
    /// `grpc-status`, from the trailers or a trailers-only answer.
    pub grpc: Option<u32>,
    pub message: String,
    /// The backend whose message the body carried.
    pub served_by: Option<String>,
    pub headers: HeaderMap,
    /// The body ended with an error (the stream was reset).
    pub broken: bool,
}

impl Answer {
    pub fn ok_from(&self) -> Option<&str> {
        (self.grpc == Some(0)).then_some(self.served_by.as_deref()?)
    }
}

/// A DestinationRule for `cart` with `trafficPolicy` (flow YAML) and subsets v1 (pods a
/// and b), v2 (c) and v3 (none).
pub fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  host: cart\n  trafficPolicy: {traffic_policy}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}, {{name: v3, labels: {{version: v3}}}}]\n"
    )
}

/// A VirtualService for `cart` with these `http` routes (a flow YAML list).
pub fn virtual_service(http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  hosts: [cart]\n  http: {http}\n"
    )
}

/// Every call to pod c alone (subset v2), with `fields` (flow YAML: `retries`, `timeout`)
/// on the route, and `traffic_policy` on the rule.
pub fn to_c(traffic_policy: &str, fields: &str) -> String {
    let fields = if fields.is_empty() {
        String::new()
    } else {
        format!(", {fields}")
    };
    destination_rule(traffic_policy)
        + &virtual_service(&format!(
            "[{{route: [{{destination: {{host: cart, subset: v2}}}}]{fields}}}]"
        ))
}
