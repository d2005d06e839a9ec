//! Keeps a `Model` current with a directory: inotify tells us soon, and a periodic
//! resync catches whatever inotify missed (a queue overflow, a directory replaced whole,
//! a watch that could not be set up at all).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher, event::AccessKind, event::AccessMode};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::dir::DirSource;
use super::error::ConfigError;
use crate::state::{self, State};

/// How often the directory is re-read even when no event came.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How long the directory must stay quiet before a burst of events is acted on: writing
/// a file is several events, and `kubectl`-style tools write several files.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A directory that never stays quiet is still re-read this often.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The latest compiled state of a configuration source.
pub type ModelReceiver = watch::Receiver<Arc<State>>;
/// The errors of a watched directory's latest reload; empty when every file was accepted.
pub type ErrorsReceiver = watch::Receiver<Vec<ConfigError>>;

/// Watches `dir` and publishes its `Model` and its current errors.
///
/// The first reload happens before this returns, so both receivers start populated.
/// Later values are sent only when they change. Each error is logged with
/// `tracing::warn!` when it first appears, not again on every resync. The task stops when
/// both receivers are dropped.
///
/// Fails if `dir` is not a directory or no tokio runtime is running. If inotify cannot be
/// set up (its watch limit, say), this logs a warning and relies on the resync alone.
pub fn watch_dir(dir: PathBuf) -> Result<(ModelReceiver, ErrorsReceiver), ConfigError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| ConfigError::file(&dir, "watch_dir needs a running tokio runtime"))?;
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(ConfigError::file(&dir, "not a directory")),
        Err(err) => return Err(ConfigError::file(&dir, format!("cannot watch: {err}"))),
    }

    // Set up the watch before the first read, so that no change falls between the two.
    let changed = Arc::new(Notify::new());
    let watcher = match start_watcher(&dir, changed.clone()) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(dir = %dir.display(), %err,
                "cannot watch the directory; re-reading it every {RESYNC_INTERVAL:?} instead");
            None
        }
    };

    let mut source = DirSource::new(dir);
    let (model, errors) = source.reload();
    log_new_errors(&[], &errors);
    let state = State::compile(model);
    state::log_new_findings(&[], state.findings());
    let (model_tx, model_rx) = watch::channel(Arc::new(state));
    let (errors_tx, errors_rx) = watch::channel(errors);
    runtime.spawn(run(source, watcher, changed, model_tx, errors_tx));
    Ok((model_rx, errors_rx))
}

fn start_watcher(
    dir: &std::path::Path,
    changed: Arc<Notify>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads open and close the files: those events change nothing. An error
        // (a queue overflow, say) may hide a change, so it counts as one.
        if event.is_ok_and(|e| !is_change(&e.kind)) {
            return;
        }
        changed.notify_one();
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn run(
    mut source: DirSource,
    // Held only to keep the inotify watch alive as long as the task.
    _watcher: Option<notify::RecommendedWatcher>,
    changed: Arc<Notify>,
    model_tx: watch::Sender<Arc<State>>,
    errors_tx: watch::Sender<Vec<ConfigError>>,
) {
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC_INTERVAL, RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = changed.notified() => debounce(&changed).await,
            _ = resync.tick() => {}
            _ = async { model_tx.closed().await; errors_tx.closed().await } => break,
        }
        // Reading files blocks; keep it off the runtime's worker threads.
        let reloaded = tokio::task::spawn_blocking(move || {
            let result = source.reload();
            (source, result)
        })
        .await;
        let (model, errors) = match reloaded {
            Ok((back, result)) => {
                source = back;
                result
            }
            Err(err) => {
                tracing::error!(%err, "configuration reload failed; no longer watching");
                break;
            }
        };
        resync.reset();

        model_tx.send_if_modified(|current| {
            let modified = **current != model;
            if modified {
                tracing::info!(dir = %source.dir().display(), "configuration changed");
                let state = State::compile(model);
                state::log_new_findings(current.findings(), state.findings());
                *current = Arc::new(state);
            }
            modified
        });
        errors_tx.send_if_modified(|current| {
            if *current == errors {
                return false;
            }
            log_new_errors(current, &errors);
            if errors.is_empty() {
                tracing::info!(dir = %source.dir().display(), "configuration errors resolved");
            }
            *current = errors;
            true
        });
    }
}

/// Waits until no change has come for [`DEBOUNCE`], or [`MAX_DELAY`] has passed.
async fn debounce(changed: &Notify) {
    let deadline = Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::sleep_until(deadline.min(Instant::now() + DEBOUNCE));
        tokio::select! {
            _ = changed.notified() => if Instant::now() >= deadline { return },
            _ = quiet => return,
        }
    }
}

fn log_new_errors(before: &[ConfigError], now: &[ConfigError]) {
    for err in now.iter().filter(|err| !before.contains(err)) {
        tracing::warn!(%err, "configuration rejected; the last good contents stay in force");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, uid: u1}\nstatus: {podIP: 10.0.0.1}\n";

    #[tokio::test]
    async fn sees_a_change_within_a_couple_of_seconds() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("pod.yaml"), POD).unwrap();
        let (mut models, mut errors) = watch_dir(dir.path().to_path_buf()).unwrap();
        assert_eq!(models.borrow_and_update().pods.len(), 1);
        assert!(errors.borrow_and_update().is_empty());

        fs::write(
            dir.path().join("pod.yaml"),
            POD.replace("10.0.0.1", "10.0.0.2"),
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(2), models.changed())
            .await
            .expect("no update within 2 s")
            .unwrap();
        let ip = models
            .borrow_and_update()
            .pods
            .values()
            .next()
            .and_then(|p| p.ip);
        assert_eq!(ip, Some("10.0.0.2".parse().unwrap()));

        // A bad edit reports an error and leaves the model as it was.
        fs::write(dir.path().join("pod.yaml"), "kind: [").unwrap();
        tokio::time::timeout(Duration::from_secs(2), errors.changed())
            .await
            .expect("no error within 2 s")
            .unwrap();
        assert_eq!(errors.borrow().len(), 1);
        assert_eq!(models.borrow().pods.len(), 1);
        assert!(!models.has_changed().unwrap());
    }

    #[tokio::test]
    async fn refuses_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = watch_dir(dir.path().join("absent")).unwrap_err();
        assert!(err.to_string().contains("cannot watch"), "{err}");
    }

    #[test]
    fn own_reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Remove(
            notify::event::RemoveKind::File
        )));
    }
}
