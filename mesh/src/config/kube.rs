//! The Kubernetes API source: one reflector (kube-rs `watcher`: list, then watch from the
//! list's resourceVersion, re-listing after `410 Gone` and reconnecting with backoff) per
//! kind Weft reads, all feeding one [`Model`].
//!
//! Each object goes through [`parse_value`], the same parser and validation as the
//! directory source, so an object means the same thing whichever way it arrives. An object
//! that fails validation is logged (once per version) and reported on the errors channel,
//! and the last good version of it stays in the model; if there never was one, it is left
//! out.
//!
//! Endpoints: like the directory source, Weft derives a Service's endpoints from the Pods
//! its selector picks, so EndpointSlices are not watched. All Pods are watched (a node's
//! agent needs every pod's address and node to route), so a second, node-filtered Pod watch
//! for enrolment would only repeat it: the model answers `enrolled_pods(node)` from the
//! same data.
//!
//! A kind the API server does not serve (the Istio CRDs in a cluster without them) counts
//! as synced and empty; the watcher keeps retrying with backoff, so installing the CRD
//! later is picked up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::{Notify, watch};

use super::error::ConfigError;
use super::model::{Model, Object, ObjectKey};
use super::parse::parse_value;
use super::watch::{ErrorsReceiver, ModelReceiver};
use crate::state::State;

/// A kind Weft watches: (group, version, kind, plural).
type KindRef = (&'static str, &'static str, &'static str, &'static str);

/// The kinds, with the version Weft asks the API server for.
pub const KINDS: &[KindRef] = &[
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "Node", "nodes"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "Service", "services"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    ("weft.dev", "v1alpha1", "LocalRateLimit", "localratelimits"),
];

/// How long the publisher waits for a burst of events to end before it rebuilds the
/// model (a relist is hundreds of events).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Whether every kind has finished its first list.
pub type SyncedReceiver = watch::Receiver<bool>;

#[derive(Default)]
struct Store {
    /// The last good version of each object. Its maps are persistent: the publisher copies
    /// it in O(1), and an event changes one object in O(log n).
    model: Model,
    /// The objects changed since the last publication, so that it recompiles only what
    /// they touch ([`State::update`]).
    changed: Vec<ObjectKey>,
    /// The current rejection of each object that has one, by (kind, namespace/name).
    errors: BTreeMap<(&'static str, String), ConfigError>,
    synced: BTreeSet<&'static str>,
}

struct Shared {
    store: Mutex<Store>,
    changed: Notify,
}

/// The name an object is known by in errors: `namespace/name` or `name`.
fn object_name(object: &DynamicObject) -> String {
    match &object.metadata.namespace {
        Some(ns) => format!("{ns}/{}", object.metadata.name.clone().unwrap_or_default()),
        None => object.metadata.name.clone().unwrap_or_default(),
    }
}

/// Turns a watched object into a model entry, with the apiVersion and kind that list items
/// lack.
fn parse(kind: &KindRef, object: &DynamicObject) -> Result<Option<Object>, String> {
    let (group, version, name, _) = kind;
    let mut json = serde_json::to_value(object).map_err(|e| e.to_string())?;
    if let Some(map) = json.as_object_mut() {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), (*name).into());
    }
    let value: serde_yaml::Value = serde_yaml::to_value(&json).map_err(|e| e.to_string())?;
    parse_value(value).map_err(|e| e.to_string())
}

impl Shared {
    fn source(kind: &KindRef, object: &DynamicObject) -> String {
        format!("kubernetes:{} {}", kind.2, object_name(object))
    }

    /// Takes one object in: its new version, or a rejection that keeps the last good one.
    fn apply(store: &mut Store, kind: &KindRef, object: &DynamicObject) {
        let id = (kind.2, object_name(object));
        match parse(kind, object) {
            Ok(Some(parsed)) => {
                store.errors.remove(&id);
                let key = parsed.key();
                if store.model.upsert(parsed) {
                    store.changed.push(key);
                }
            }
            // Valid, but no place in the mesh (a finished pod): as good as gone.
            Ok(None) => {
                store.errors.remove(&id);
                Self::remove(store, kind, object);
            }
            Err(reason) => {
                let error = ConfigError::file(Self::source(kind, object), reason);
                if store.errors.get(&id) != Some(&error) {
                    tracing::warn!(%error, "rejected; the last good version stays in force");
                }
                store.errors.insert(id, error);
            }
        }
    }

    fn remove(store: &mut Store, kind: &KindRef, object: &DynamicObject) {
        let key = ObjectKey {
            kind: kind.2,
            namespace: object.metadata.namespace.clone(),
            name: object.metadata.name.clone().unwrap_or_default(),
        };
        if store.model.remove(&key) {
            store.changed.push(key);
        }
        store.errors.remove(&(kind.2, object_name(object)));
    }

    fn event(&self, kind: &KindRef, event: Event<DynamicObject>, relist: &mut Vec<DynamicObject>) {
        let Ok(mut store) = self.store.lock() else {
            return;
        };
        match event {
            Event::Apply(object) => Self::apply(&mut store, kind, &object),
            Event::Delete(object) => Self::remove(&mut store, kind, &object),
            Event::Init => relist.clear(),
            Event::InitApply(object) => relist.push(object),
            Event::InitDone => {
                // A (re)list replaces the kind's objects: what it did not return is gone.
                // An object it returns invalid keeps its last good version, as an update
                // would.
                let mut gone: BTreeSet<ObjectKey> =
                    store.model.keys_of(kind.2).into_iter().collect();
                store.errors.retain(|(k, _), _| *k != kind.2);
                for object in relist.drain(..) {
                    gone.remove(&ObjectKey {
                        kind: kind.2,
                        namespace: object.metadata.namespace.clone(),
                        name: object.metadata.name.clone().unwrap_or_default(),
                    });
                    Self::apply(&mut store, kind, &object);
                }
                for key in gone {
                    if store.model.remove(&key) {
                        store.changed.push(key);
                    }
                }
                if store.synced.insert(kind.2) {
                    tracing::info!(kind = kind.2, "initial list done");
                }
            }
        }
        drop(store);
        self.changed.notify_one();
    }

    fn not_served(&self, kind: &KindRef) {
        if let Ok(mut store) = self.store.lock()
            && store.synced.insert(kind.2)
        {
            tracing::warn!(
                kind = kind.2,
                "the API server does not serve this kind (CRD not installed?); treating it as empty"
            );
            drop(store);
            self.changed.notify_one();
        }
    }
}

/// Whether a watcher error means the kind is not served at all (404 on the list).
fn is_not_found(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

/// Watches every kind in [`KINDS`] through `client` and publishes the model, the current
/// rejections, and whether the first list of every kind is done (readiness waits for it).
/// The tasks run for as long as the runtime does.
pub fn watch_kube(client: kube::Client) -> (ModelReceiver, ErrorsReceiver, SyncedReceiver) {
    let shared = Arc::new(Shared {
        store: Mutex::default(),
        changed: Notify::new(),
    });
    let (model_tx, model_rx) = watch::channel(Arc::new(State::default()));
    let (errors_tx, errors_rx) = watch::channel(Vec::new());
    let (synced_tx, synced_rx) = watch::channel(false);
    for kind in KINDS {
        let (group, version, name, plural) = *kind;
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, name), plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut relist = Vec::new();
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => shared.event(kind, event, &mut relist),
                    Err(err) if is_not_found(&err) => shared.not_served(kind),
                    Err(err) => {
                        tracing::warn!(kind = name, %err, "watch failed; retrying with backoff")
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            shared.changed.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            let (model, changed, errors, synced) = {
                let Ok(mut store) = shared.store.lock() else {
                    return;
                };
                let changed = std::mem::take(&mut store.changed);
                let errors: Vec<ConfigError> = store.errors.values().cloned().collect();
                (
                    store.model.clone(),
                    changed,
                    errors,
                    store.synced.len() == KINDS.len(),
                )
            };
            if model_tx.is_closed() && errors_tx.is_closed() {
                return;
            }
            model_tx.send_if_modified(|old| {
                if changed.is_empty() {
                    return false;
                }
                let state = old.update(model, &changed);
                crate::state::log_new_findings(old.findings(), state.findings());
                *old = Arc::new(state);
                true
            });
            errors_tx.send_if_modified(|old| {
                let changed = *old != errors;
                *old = errors;
                changed
            });
            synced_tx.send_if_modified(|old| {
                let changed = *old != synced;
                *old = synced;
                changed
            });
        }
    });
    (model_rx, errors_rx, synced_rx)
}

/// Where a process reads its configuration.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A directory of manifests (the lab, the tests, a node without API access).
    Dir(std::path::PathBuf),
    /// The Kubernetes API, with the in-cluster service account or the kubeconfig.
    Kubernetes,
}

impl ConfigSource {
    /// From the `--config-dir` and `--kubernetes` flags: exactly one of them.
    pub fn from_flags(dir: Option<std::path::PathBuf>, kubernetes: bool) -> Result<Self, String> {
        match (dir, kubernetes) {
            (Some(dir), false) => Ok(ConfigSource::Dir(dir)),
            (None, true) => Ok(ConfigSource::Kubernetes),
            (Some(_), true) => Err("--config-dir and --kubernetes exclude each other".into()),
            (None, false) => {
                Err("a configuration source is required: --config-dir or --kubernetes".into())
            }
        }
    }

    /// Starts the source; for the API, returns once every kind has been listed, so that
    /// nothing acts on a half-read cluster (readiness waits for this).
    pub async fn open(self) -> Result<(ModelReceiver, ErrorsReceiver), String> {
        match self {
            ConfigSource::Dir(dir) => super::watch_dir(dir.clone())
                .map_err(|e| format!("watching {}: {e}", dir.display())),
            ConfigSource::Kubernetes => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| format!("connecting to the Kubernetes API: {e}"))?;
                let (model, errors, mut synced) = watch_kube(client);
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s))
                        .await
                    {
                        Ok(Ok(_)) => break,
                        Ok(Err(_)) => return Err("the Kubernetes source stopped".into()),
                        Err(_) => tracing::info!("waiting for the first list of every kind"),
                    }
                }
                Ok((model, errors))
            }
        }
    }
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
