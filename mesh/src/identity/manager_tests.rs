use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::*;
use crate::identity::testutil;

/// Hands out short-lived certificates, failing the calls whose numbers (from 1) are in
/// `fail`, and records when each call came.
struct Scripted {
    lifetime: Duration,
    fail: Vec<usize>,
    calls: AtomicUsize,
    times: Mutex<Vec<Instant>>,
    wrong_id: bool,
}

impl Scripted {
    fn new(lifetime: Duration, fail: &[usize]) -> Self {
        Scripted {
            lifetime,
            fail: fail.to_vec(),
            calls: AtomicUsize::new(0),
            times: Mutex::new(Vec::new()),
            wrong_id: false,
        }
    }
}

impl CertificateSource for Scripted {
    type Error = IdentityError;

    async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCert, IdentityError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.times.lock().unwrap().push(Instant::now());
        if self.fail.contains(&call) {
            return Err(IdentityError::Certificate(format!(
                "scripted failure {call}"
            )));
        }
        let id = if self.wrong_id {
            testutil::id("other", "other")
        } else {
            id.clone()
        };
        Ok(testutil::short_lived(&id, self.lifetime))
    }
}

fn source<S: CertificateSource>(manager: &IdentityManager<S>) -> &S {
    &manager.source
}

#[tokio::test]
async fn renews_at_half_life() {
    let manager = IdentityManager::new(Scripted::new(Duration::from_secs(2), &[]));
    let id = testutil::id("ns1", "sa1");
    let slot = manager.slot(&id).await.unwrap();
    let first = slot.current();
    assert_eq!(first.id, id);
    // A second call shares the slot and fetches nothing.
    assert!(Arc::ptr_eq(&slot, &manager.slot(&id).await.unwrap()));
    assert_eq!(source(&manager).calls.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        source(&manager).calls.load(Ordering::SeqCst),
        1,
        "renewed too early"
    );
    assert_eq!(slot.current(), first);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(source(&manager).calls.load(Ordering::SeqCst), 2);
    let second = slot.current();
    assert!(second.not_after > first.not_after);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(source(&manager).calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        manager.snapshot(),
        vec![(id.clone(), slot.current().not_after)]
    );

    // After forget, renewal stops; the slot keeps its last certificate.
    manager.forget(&id);
    assert!(manager.snapshot().is_empty());
    let last = slot.current();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(source(&manager).calls.load(Ordering::SeqCst), 3);
    assert_eq!(slot.current(), last);
}

#[tokio::test]
async fn retries_with_backoff_and_keeps_the_old_certificate() {
    // Call 1 succeeds (renewal due at 1 s), calls 2 and 3 fail, call 4 succeeds.
    let manager = IdentityManager::with_backoff(
        Scripted::new(Duration::from_secs(2), &[2, 3]),
        Duration::from_millis(200),
        Duration::from_secs(1),
    );
    let id = testutil::id("ns1", "sa1");
    let slot = manager.slot(&id).await.unwrap();
    let first = slot.current();

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(source(&manager).calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        slot.current(),
        first,
        "the old certificate stays while renewal fails"
    );

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(source(&manager).calls.load(Ordering::SeqCst), 4);
    assert!(slot.current().not_after > first.not_after);

    let times = source(&manager).times.lock().unwrap().clone();
    let gap = |a: usize, b: usize| times[b] - times[a];
    assert!(gap(1, 2) >= Duration::from_millis(190), "{:?}", gap(1, 2));
    assert!(gap(2, 3) >= Duration::from_millis(390), "{:?}", gap(2, 3));
    assert!(gap(2, 3) < Duration::from_millis(900), "{:?}", gap(2, 3));
}

#[tokio::test]
async fn a_failed_first_fetch_is_an_error_and_is_retried_on_the_next_call() {
    let manager = IdentityManager::new(Scripted::new(Duration::from_secs(60), &[1]));
    let id = testutil::id("ns1", "sa1");
    assert!(manager.slot(&id).await.is_err());
    assert!(manager.snapshot().is_empty());
    let slot = manager.slot(&id).await.unwrap();
    assert_eq!(slot.current().id, id);
    assert_eq!(manager.snapshot().len(), 1);
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused() {
    let mut source = Scripted::new(Duration::from_secs(60), &[]);
    source.wrong_id = true;
    let manager = IdentityManager::new(source);
    let err = manager.slot(&testutil::id("ns1", "sa1")).await.unwrap_err();
    assert!(matches!(err, IdentityError::WrongIdentity { .. }), "{err}");
}

#[tokio::test]
async fn dropping_the_manager_stops_renewal() {
    let source = Arc::new(AtomicUsize::new(0));
    struct Counting(Arc<AtomicUsize>);
    impl CertificateSource for Counting {
        type Error = IdentityError;
        async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCert, IdentityError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(testutil::short_lived(id, Duration::from_secs(2)))
        }
    }
    let manager = IdentityManager::new(Counting(source.clone()));
    let slot = manager.slot(&testutil::id("ns1", "sa1")).await.unwrap();
    drop(manager);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(source.load(Ordering::SeqCst), 1);
    assert_eq!(slot.current().id, testutil::id("ns1", "sa1"));
}
