//! Keeps a current certificate for each local workload identity, renewing each at half its
//! lifetime.
//!
//! The agent asks for a [`CertSlot`] per identity and builds its TLS configurations around
//! it; from then on the manager swaps certificates into the slot in the background. When a
//! renewal fails it retries with exponential backoff and keeps presenting the old
//! certificate, which stays valid for the second half of its lifetime. How a certificate is
//! obtained is the [`CertificateSource`]'s business: in the agent, a CSR to the CA.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use super::{CertSlot, IdentityError, SpiffeId, WorkloadCert};

/// First retry delay after a failed renewal; doubles up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Never renew sooner than this after the last renewal, even for a certificate already
/// past its half-life (a short lifetime, or clocks that disagree), so a successful but
/// useless renewal cannot turn into a busy loop against the CA.
const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);

/// Where certificates come from.
pub trait CertificateSource: Send + Sync + 'static {
    /// `From<IdentityError>` lets the manager report a certificate it cannot use (a key
    /// that does not match, another identity than asked) as the source's own error.
    type Error: std::error::Error + From<IdentityError> + Send + Sync + 'static;

    /// A fresh certificate for `id`.
    fn fetch(
        &self,
        id: &SpiffeId,
    ) -> impl Future<Output = Result<WorkloadCert, Self::Error>> + Send;
}

/// One slot per identity, each renewed by its own task until [`forget`](Self::forget) or
/// until the manager is dropped.
pub struct IdentityManager<S: CertificateSource> {
    source: Arc<S>,
    backoff: (Duration, Duration),
    entries: Mutex<BTreeMap<SpiffeId, Arc<Entry>>>,
}

/// One identity. Dropping it (when it leaves the map and no `slot` call still holds it)
/// stops its renewal task.
struct Entry {
    slot: OnceCell<Arc<CertSlot>>,
    renewal: Mutex<Option<AbortHandle>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let renewal = self
            .renewal
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = renewal.take() {
            task.abort();
        }
    }
}

impl<S: CertificateSource> IdentityManager<S> {
    pub fn new(source: S) -> Arc<Self> {
        Self::with_backoff(source, INITIAL_BACKOFF, MAX_BACKOFF)
    }

    /// Like [`new`](Self::new), with other retry delays after a failed renewal.
    pub fn with_backoff(source: S, initial: Duration, max: Duration) -> Arc<Self> {
        Arc::new(IdentityManager {
            source: Arc::new(source),
            backoff: (initial, max.max(initial)),
            entries: Mutex::new(BTreeMap::new()),
        })
    }

    /// The slot for `id`. The first call for an identity fetches its certificate (and
    /// fails if that fails; a later call tries again) and starts renewing it; concurrent
    /// first calls share one fetch. Later calls return the same slot at once.
    pub async fn slot(&self, id: &SpiffeId) -> Result<Arc<CertSlot>, S::Error> {
        let entry = self
            .lock()
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    slot: OnceCell::new(),
                    renewal: Mutex::new(None),
                })
            })
            .clone();
        let result = entry
            .slot
            .get_or_try_init(|| async {
                let cert = fetch_checked(&*self.source, id).await?;
                let slot = Arc::new(CertSlot::new(cert)?);
                let task = tokio::spawn(renew(
                    self.source.clone(),
                    id.clone(),
                    Arc::downgrade(&entry),
                    slot.clone(),
                    self.backoff,
                ));
                *entry.renewal.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(task.abort_handle());
                Ok(slot)
            })
            .await;
        match result {
            Ok(slot) => Ok(slot.clone()),
            Err(error) => {
                // Drop the empty entry so that the map only lists identities with a
                // certificate, unless another call has filled it meanwhile.
                let mut entries = self.lock();
                if entries
                    .get(id)
                    .is_some_and(|e| Arc::ptr_eq(e, &entry) && !e.slot.initialized())
                {
                    entries.remove(id);
                }
                Err(error)
            }
        }
    }

    /// Stops renewing `id`. Slots already handed out keep their last certificate.
    pub fn forget(&self, id: &SpiffeId) {
        let removed = self.lock().remove(id);
        // Dropped outside the lock: the drop aborts the renewal task.
        drop(removed);
    }

    /// Each identity with a certificate, and when that certificate expires.
    pub fn snapshot(&self) -> Vec<(SpiffeId, SystemTime)> {
        self.lock()
            .iter()
            .filter_map(|(id, entry)| Some((id.clone(), entry.slot.get()?.current().not_after)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SpiffeId, Arc<Entry>>> {
        // Every critical section is a single map operation, so a poisoned map is whole.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A certificate from `source`, refused if it names another identity than `id`.
async fn fetch_checked<S: CertificateSource>(
    source: &S,
    id: &SpiffeId,
) -> Result<WorkloadCert, S::Error> {
    let cert = source.fetch(id).await?;
    if cert.id != *id {
        return Err(IdentityError::WrongIdentity {
            wanted: Box::new(id.clone()),
            got: Box::new(cert.id),
        }
        .into());
    }
    Ok(cert)
}

/// Renews `slot` at each certificate's half-life until the entry is gone.
async fn renew<S: CertificateSource>(
    source: Arc<S>,
    id: SpiffeId,
    entry: Weak<Entry>,
    slot: Arc<CertSlot>,
    (initial_backoff, max_backoff): (Duration, Duration),
) {
    // Half-life is counted from when the certificate arrived, not from its notBefore: the CA
    // backdates that for clock skew, which would otherwise bring every renewal forward.
    let mut received = SystemTime::now();
    loop {
        let wait = super::cert::half_life(received, slot.current().not_after)
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(MIN_RENEW_DELAY);
        tokio::time::sleep(wait).await;
        let mut backoff = initial_backoff;
        loop {
            if entry.strong_count() == 0 {
                return;
            }
            let renewed = match fetch_checked(&*source, &id).await {
                Ok(cert) => slot.replace(cert).map_err(S::Error::from),
                Err(error) => Err(error),
            };
            match renewed {
                Ok(()) => {
                    received = SystemTime::now();
                    let current = slot.current();
                    tracing::info!(%id, not_after = ?current.not_after, "renewed certificate");
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        %id,
                        %error,
                        retry_in = ?backoff,
                        "certificate renewal failed; still presenting the current certificate"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
