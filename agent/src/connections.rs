//! The connection manager: every established connection the agent admitted by L4 policy,
//! so that a policy change reaches it. An L4 decision is taken when a connection opens; a
//! DENY added later, or an ALLOW taken away, would otherwise never apply to a connection
//! that is already up (a pooled gRPC channel lives for days).
//!
//! The tunnel inbound, the plaintext inbound and the same-node path through the agent
//! register each connection they carry with [`Connections::track`]. After every new
//! compiled state, [`Connections::recheck`] evaluates each of them again, as at setup, and
//! ends those the new state denies: the guard's [`Tracked::revoked`] fires, the carrying
//! task drops both sockets, and the close is counted in
//! `weft_connections_closed_by_policy_total{policy}`. (ztunnel's connection manager does
//! the same for its inbound connections.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::oneshot;
use weft_mesh::identity::SpiffeId;
use weft_mesh::state::State;

use crate::policy::L4Policy;

/// What a connection was admitted as: enough to decide it again.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The destination pod's address and port.
    pub destination: IpAddr,
    pub port: u16,
    /// The peer's verified identity; `None` for plaintext.
    pub peer: Option<SpiffeId>,
    pub source_ip: IpAddr,
    /// Plaintext connections are also subject to the port's mTLS mode.
    pub plaintext: bool,
    /// The epoch of the state it was admitted under.
    pub epoch: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `namespace/name` of the DENY policy, or `-` when no ALLOW policy matches any more.
    pub policy: String,
}

struct Entry {
    admitted: Admitted,
    revoke: oneshot::Sender<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `pod` (the destination pod's cap) or `node` (the agent's).
    pub limit: &'static str,
}

/// How many connections the agent carries at once, to one pod and in all: an untrusted
/// client can open connections, but not without bound (each holds two sockets and a task).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_pod: usize,
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_pod: 4096,
            total: 32768,
        }
    }
}

/// The registry. Cheap to clone; every clone is the same registry.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<u64, Entry>>>,
    next: Arc<AtomicU64>,
    pub closed_by_policy: Family<PolicyLabel, Counter>,
    /// Connections refused because a cap was reached, by cap.
    pub refused_by_limit: Family<LimitLabel, Counter>,
    limits: Limits,
    /// Live connections by destination pod, and their sum.
    load: Arc<Mutex<(HashMap<IpAddr, usize>, usize)>>,
}

/// A tracked connection. Dropping it (the connection ended) removes it from the registry.
pub struct Tracked {
    id: u64,
    registry: Connections,
    revoked: Option<oneshot::Receiver<String>>,
    /// The destination whose share of the caps this connection holds.
    destination: Option<IpAddr>,
}

impl Tracked {
    /// Resolves, with the reason, when a new policy denies the connection; never otherwise.
    pub async fn revoked(&mut self) -> String {
        match self.revoked.as_mut() {
            Some(rx) => match rx.await {
                Ok(reason) => reason,
                // The registry went away: keep the connection.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.registry.inner.lock() {
            inner.remove(&self.id);
        }
        if let Some(destination) = self.destination
            && let Ok(mut load) = self.registry.load.lock()
        {
            let (per_pod, total) = &mut *load;
            if let Some(n) = per_pod.get_mut(&destination) {
                *n -= 1;
                if *n == 0 {
                    per_pod.remove(&destination);
                }
            }
            *total = total.saturating_sub(1);
        }
    }
}

impl Connections {
    pub fn with_limits(limits: Limits) -> Self {
        Connections {
            limits,
            ..Connections::default()
        }
    }

    /// Takes one connection's share of the caps for `destination`, or says which cap is full.
    fn admit(&self, destination: IpAddr) -> Result<(), String> {
        let Ok(mut load) = self.load.lock() else {
            return Ok(());
        };
        let (per_pod, total) = &mut *load;
        let (limit, reason) = if *total >= self.limits.total {
            (
                "node",
                format!("the agent carries {total} connections, its limit"),
            )
        } else if per_pod.get(&destination).copied().unwrap_or(0) >= self.limits.per_pod {
            (
                "pod",
                format!(
                    "{destination} has {} connections through the agent, its limit",
                    self.limits.per_pod
                ),
            )
        } else {
            *per_pod.entry(destination).or_default() += 1;
            *total += 1;
            return Ok(());
        };
        self.refused_by_limit
            .get_or_create(&LimitLabel { limit })
            .inc();
        Err(reason)
    }

    /// How many connections are tracked now: a stopping agent drains until none is.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|inner| inner.len()).unwrap_or(0)
    }

    pub fn track(&self, admitted: Admitted) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut inner) = self.inner.lock() {
            inner.insert(
                id,
                Entry {
                    admitted,
                    revoke: tx,
                },
            );
        }
        Tracked {
            id,
            registry: self.clone(),
            revoked: Some(rx),
            destination: None,
        }
    }

    /// Registers a connection admitted under an earlier state than `now`'s, or under it:
    /// one admitted while a new state was being published would miss that state's
    /// recheck, so it is decided again here. Register before any await that follows the
    /// decision (the dial), so that a later recheck sees it. Refused when the destination
    /// pod or the agent carries as many connections as its limit allows.
    pub fn track_at(
        &self,
        admitted: Admitted,
        now: &State,
        policy: &L4Policy,
    ) -> Result<Tracked, String> {
        let stale = admitted.epoch != now.epoch();
        let check = stale.then(|| admitted.clone());
        let destination = admitted.destination;
        self.admit(destination)?;
        let mut tracked = self.track(admitted);
        tracked.destination = Some(destination);
        if let Some(admitted) = check
            && let Err((by, reason)) = verdict(now, policy, &admitted)
            && let Ok(mut inner) = self.inner.lock()
            && let Some(entry) = inner.remove(&tracked.id)
        {
            self.count_closed(&by);
            let _ = entry.revoke.send(reason);
        }
        Ok(tracked)
    }

    /// Counts a connection closed by `policy` elsewhere (the kernel's, see `sockdiag`).
    pub fn count_closed(&self, policy: &str) {
        self.closed_by_policy
            .get_or_create(&PolicyLabel {
                policy: policy.to_string(),
            })
            .inc();
    }

    /// Decides every tracked connection again under `state`; ends and counts those it
    /// denies. Returns how many were ended.
    pub fn recheck(&self, state: &State, policy: &L4Policy) -> usize {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        let denied: Vec<(u64, String, String)> = inner
            .iter()
            .filter_map(|(id, entry)| {
                verdict(state, policy, &entry.admitted)
                    .err()
                    .map(|(policy, reason)| (*id, policy, reason))
            })
            .collect();
        for (id, policy_name, reason) in &denied {
            if let Some(entry) = inner.remove(id) {
                tracing::info!(
                    destination = %entry.admitted.destination,
                    port = entry.admitted.port,
                    peer = ?entry.admitted.peer.as_ref().map(ToString::to_string),
                    %reason,
                    "closing an established connection the new policy denies"
                );
                self.closed_by_policy
                    .get_or_create(&PolicyLabel {
                        policy: policy_name.clone(),
                    })
                    .inc();
                let _ = entry.revoke.send(reason.clone());
            }
        }
        denied.len()
    }
}

/// Ok if the connection is still allowed; otherwise the policy that refuses (for the
/// metric) and the reason (for the log).
fn verdict(state: &State, policy: &L4Policy, c: &Admitted) -> Result<(), (String, String)> {
    let Some(pod) = state.pod_by_ip(c.destination) else {
        return Err(("-".into(), format!("{} is no longer a pod", c.destination)));
    };
    if c.plaintext && !policy.plaintext_allowed(state, pod, c.port) {
        return Err((
            "-".into(),
            format!("{}/{}:{} is now STRICT", pod.namespace, pod.name, c.port),
        ));
    }
    policy
        .decide(state, pod, c.port, c.peer.as_ref(), c.source_ip)
        .map_err(|(by, reason)| (by.unwrap_or_else(|| "-".into()), reason))
}

/// Rechecks the registry after every new state, for as long as the state channel lives.
pub fn spawn_rechecks(
    connections: Connections,
    mut state: tokio::sync::watch::Receiver<Arc<State>>,
    policy: L4Policy,
) {
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let current = state.borrow_and_update().clone();
            let closed = connections.recheck(&current, &policy);
            if closed > 0 {
                tracing::info!(
                    closed,
                    epoch = current.epoch(),
                    "policy change closed established connections"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(extra: &str) -> State {
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: db, namespace: shop, uid: u1, labels: {{app: db}}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: 10.1.0.1}}\n{extra}"
        );
        let mut model = weft_mesh::config::Model::default();
        for document in serde_yaml::Deserializer::from_str(&yaml) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
            if let Some(object) = weft_mesh::config::parse_value(value).unwrap() {
                model.insert(object);
            }
        }
        State::compile(model)
    }

    fn admitted(sa: &str) -> Admitted {
        Admitted {
            destination: "10.1.0.1".parse().unwrap(),
            port: 5432,
            peer: Some(SpiffeId::new("cluster.local", "shop", sa).unwrap()),
            source_ip: "10.1.0.9".parse().unwrap(),
            plaintext: false,
            epoch: 0,
        }
    }

    #[tokio::test]
    async fn a_new_deny_ends_the_connections_it_matches_and_counts_them() {
        let registry = Connections::default();
        let policy = L4Policy {
            root_namespace: "istio-system".into(),
        };
        let mut web = registry.track(admitted("web"));
        let mut batch = registry.track(admitted("batch"));
        assert_eq!(registry.recheck(&state(""), &policy), 0);

        let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-batch, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/batch]}}]}]\n";
        assert_eq!(registry.recheck(&state(deny), &policy), 1);
        let reason = batch.revoked().await;
        assert!(reason.contains("shop/no-batch"), "{reason}");
        let closed = registry
            .closed_by_policy
            .get_or_create(&PolicyLabel {
                policy: "shop/no-batch".into(),
            })
            .get();
        assert_eq!(closed, 1);
        // The other connection stays, and is decided again next time.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), web.revoked())
                .await
                .is_err()
        );
        drop(batch);
        assert_eq!(registry.recheck(&state(deny), &policy), 0);
        // An ALLOW that no longer admits web ends it too (no DENY to name).
        let allow = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-api, namespace: shop}\nspec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/api]}}]}]\n";
        assert_eq!(registry.recheck(&state(allow), &policy), 1);
        assert!(web.revoked().await.contains("denied"));

        // Admitted under an older state than the one now published: decided again at once.
        let mut late = registry
            .track_at(admitted("batch"), &state(deny), &policy)
            .unwrap();
        assert!(late.revoked().await.contains("shop/no-batch"));
    }
}
