//! The Kubernetes source against an in-test API server that speaks the list/watch protocol
//! (the Kubernetes API concepts document, "Efficient detection of changes"): a list with a
//! `resourceVersion`, then a chunked watch stream of JSON events from it, `BOOKMARK`s,
//! `410 Gone` (an ERROR event with an expired Status) that forces a relist, and a
//! connection dropped mid-stream, after which the watch resumes from the last version seen.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, body::Incoming};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::test_http::{kube_client, serve_http};

/// What the next watch response of a resource does.
enum Step {
    Event(&'static str, Value),
    Bookmark(u64),
    /// An ERROR event with a 410 Status, then the end of the stream.
    Gone,
    /// Abort the connection mid-stream.
    Drop,
}

#[derive(Default)]
struct Resource {
    items: Vec<Value>,
    version: u64,
    lists: usize,
    /// The `resourceVersion` each watch request started from.
    watch_versions: Vec<String>,
    steps: Option<Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Step>>>>,
}

#[derive(Default)]
struct FakeApi {
    resources: Mutex<HashMap<String, Resource>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: u16, body: Value) -> Response<Body> {
    use http_body_util::BodyExt;
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

impl FakeApi {
    fn steps(&self, path: &str) -> mpsc::UnboundedSender<Step> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut resources = self.resources.lock().unwrap();
        resources.entry(path.to_string()).or_default().steps =
            Some(Arc::new(tokio::sync::Mutex::new(rx)));
        tx
    }

    fn set_list(&self, path: &str, items: Vec<Value>, version: u64) {
        let mut resources = self.resources.lock().unwrap();
        let r = resources.entry(path.to_string()).or_default();
        r.items = items;
        r.version = version;
    }

    fn with<T>(&self, path: &str, f: impl FnOnce(&Resource) -> T) -> T {
        f(self.resources.lock().unwrap().get(path).unwrap())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path.starts_with("/apis/weft.dev/") {
            return full(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "the server could not find the requested resource",
                       "reason": "NotFound", "code": 404}),
            );
        }
        let watching = query(&req, "watch").as_deref() == Some("true");
        let steps = {
            let mut resources = self.resources.lock().unwrap();
            let r = resources.entry(path.clone()).or_default();
            if !watching {
                r.lists += 1;
                let kind = path.rsplit('/').next().unwrap_or("");
                return full(
                    200,
                    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
                           "metadata": {"resourceVersion": r.version.to_string()},
                           "items": r.items}),
                );
            }
            r.watch_versions
                .push(query(&req, "resourceVersion").unwrap_or_default());
            r.steps.clone()
        };
        let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, std::io::Error>>();
        tokio::spawn(async move {
            // A resource without steps keeps its watch open and quiet.
            let Some(steps) = steps else {
                tx.closed().await;
                return;
            };
            let mut steps = steps.lock().await;
            let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
            while let Some(step) = steps.recv().await {
                let sent = match step {
                    Step::Event(kind, object) => {
                        tx.send(line(json!({"type": kind, "object": object})))
                    }
                    Step::Bookmark(version) => {
                        tx.send(line(json!({"type": "BOOKMARK", "object": {
                        "kind": "Namespace", "apiVersion": "v1",
                        "metadata": {"resourceVersion": version.to_string()}}})))
                    }
                    Step::Gone => {
                        let _ = tx.send(line(json!({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": "too old resource version",
                            "reason": "Expired", "code": 410}})));
                        return;
                    }
                    Step::Drop => {
                        let _ = tx.send(Err(std::io::Error::other("connection dropped")));
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        use http_body_util::BodyExt;
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }
}

async fn serve(api: Arc<FakeApi>) -> SocketAddr {
    serve_http(move |req| api.clone().handle(req)).await
}

/// A Namespace as the API server sends it (a k8s-openapi object, serialized).
fn namespace(name: &str, version: u64, labels: Value) -> Value {
    use k8s_openapi::api::core::v1::Namespace;
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: Some(version.to_string()),
            labels: serde_json::from_value(labels).unwrap(),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    serde_json::to_value(namespace).unwrap()
}

/// Service `a/web`, with one port (which may be out of range, to make it invalid).
fn service(port: i32, version: u64) -> Value {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    let service = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("a".into()),
            resource_version: Some(version.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.9".into()),
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    serde_json::to_value(service).unwrap()
}

/// Waits until `check` holds for the published model (or fails after 15 s).
async fn until(model: &mut ModelReceiver, what: &str, check: impl Fn(&Model) -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if check(&model.borrow_and_update()) {
                return;
            }
            model.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{what}: the model did not converge: {:?}",
        model.borrow()
    );
}

const NAMESPACES: &str = "/api/v1/namespaces";
const SERVICES: &str = "/api/v1/services";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflectors_follow_list_watch_bookmarks_gone_and_drops() {
    let api = Arc::new(FakeApi::default());
    api.set_list(NAMESPACES, vec![namespace("a", 10, json!({}))], 10);
    api.set_list(SERVICES, vec![service(80, 5)], 5);
    let ns_steps = api.steps(NAMESPACES);
    let svc_steps = api.steps(SERVICES);
    let client = kube_client(serve(api.clone()).await);
    let (mut model, mut errors, mut synced) = watch_kube(client);

    // The first list of every kind, the one the server does not serve included.
    tokio::time::timeout(Duration::from_secs(15), synced.wait_for(|s| *s))
        .await
        .expect("synced")
        .unwrap();
    until(&mut model, "initial list", |m| {
        m.namespaces.contains_key("a") && m.services.contains_key(&("a".into(), "web".into()))
    })
    .await;

    // Events from the list's resourceVersion.
    ns_steps
        .send(Step::Event("ADDED", namespace("b", 11, json!({}))))
        .unwrap();
    until(&mut model, "ADDED", |m| m.namespaces.contains_key("b")).await;
    ns_steps.send(Step::Bookmark(12)).unwrap();
    ns_steps
        .send(Step::Event(
            "MODIFIED",
            namespace("a", 13, json!({"x": "y"})),
        ))
        .unwrap();
    until(&mut model, "MODIFIED", |m| {
        m.namespaces["a"].labels.get("x").map(String::as_str) == Some("y")
    })
    .await;
    ns_steps
        .send(Step::Event("DELETED", namespace("b", 14, json!({}))))
        .unwrap();
    until(&mut model, "DELETED", |m| !m.namespaces.contains_key("b")).await;

    // A dropped connection: the watch resumes from the last version it saw.
    ns_steps.send(Step::Drop).unwrap();
    ns_steps
        .send(Step::Event("ADDED", namespace("c", 15, json!({}))))
        .unwrap();
    until(&mut model, "after a drop", |m| {
        m.namespaces.contains_key("c")
    })
    .await;
    let versions = api.with(NAMESPACES, |r| r.watch_versions.clone());
    assert_eq!(
        versions[..2],
        ["10".to_string(), "14".to_string()],
        "{versions:?}"
    );
    assert_eq!(
        api.with(NAMESPACES, |r| r.lists),
        1,
        "a drop needs no relist"
    );

    // 410 Gone: a relist, whose result replaces what was known (c went away meanwhile).
    api.set_list(
        NAMESPACES,
        vec![
            namespace("a", 20, json!({"x": "y"})),
            namespace("d", 19, json!({})),
        ],
        20,
    );
    ns_steps.send(Step::Gone).unwrap();
    until(&mut model, "relist after 410", |m| {
        m.namespaces.contains_key("d") && !m.namespaces.contains_key("c")
    })
    .await;
    assert_eq!(api.with(NAMESPACES, |r| r.lists), 2);
    assert_eq!(
        api.with(NAMESPACES, |r| r.watch_versions.last().cloned()),
        Some("20".to_string()),
        "the new watch starts from the relist's version"
    );

    // An invalid object is rejected, named, and the last good version stays.
    svc_steps
        .send(Step::Event("MODIFIED", service(70000, 6)))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), errors.wait_for(|e| !e.is_empty()))
        .await
        .expect("the rejection is reported")
        .unwrap();
    let rejection = errors.borrow().clone();
    assert!(
        rejection[0].to_string().contains("Service a/web")
            && rejection[0].to_string().contains("70000"),
        "{rejection:?}"
    );
    let port = |m: &Model| m.services[&("a".to_string(), "web".to_string())].ports[0].port;
    assert_eq!(port(&model.borrow()), 80, "the last good Service stays");
    svc_steps
        .send(Step::Event("MODIFIED", service(81, 7)))
        .unwrap();
    until(&mut model, "fixed", |m| port(m) == 81).await;
    tokio::time::timeout(Duration::from_secs(15), errors.wait_for(Vec::is_empty))
        .await
        .expect("the rejection clears")
        .unwrap();

    // A relist that returns the object invalid keeps its last good version too.
    api.set_list(SERVICES, vec![service(70000, 9)], 9);
    svc_steps.send(Step::Gone).unwrap();
    tokio::time::timeout(Duration::from_secs(15), errors.wait_for(|e| !e.is_empty()))
        .await
        .expect("the relisted rejection is reported")
        .unwrap();
    assert_eq!(
        port(&model.borrow()),
        81,
        "the last good Service survives a relist"
    );
    assert_eq!(api.with(SERVICES, |r| r.lists), 2);
}
