//! The directory source: the manifests `kubectl apply -f DIR` would take, read into a
//! [`Model`]. The lab writes its cluster this way, and the tests and the demo use it.
//!
//! A file is the unit of change. If any document of a file is rejected, the whole file
//! keeps its last good contents: applying half a file could enrol a pod whose Service
//! failed, a state nobody wrote, while the last good contents were once valid as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::model::{Model, Object, ObjectKey};
use super::parse::parse_documents;

/// Reads a directory of `*.yaml` / `*.yml` files, recursively, into a [`Model`].
///
/// Names starting with `.` are skipped, files and directories alike: editors' swap files
/// are, and so is the `..data` copy of a mounted ConfigMap, which would otherwise be read
/// twice. Symbolic links to files are followed (a ConfigMap's files are links); links to
/// directories are not, so that a link cycle cannot trap the walk.
pub struct DirSource {
    dir: PathBuf,
    /// Every file seen by the last reload, in sorted order, which is the order they apply.
    files: BTreeMap<PathBuf, FileState>,
    /// Duplicates already warned about, so that a resync does not repeat the warning.
    duplicates: BTreeSet<String>,
}

#[derive(Default)]
struct FileState {
    /// The text last read, so that an unchanged file is not parsed again. `None` when the
    /// last read failed.
    text: Option<String>,
    /// Why the text last read was rejected. Empty when it was accepted.
    errors: Vec<ConfigError>,
    /// The objects of the last text that was accepted.
    good: Vec<Object>,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource {
            dir: dir.into(),
            files: BTreeMap::new(),
            duplicates: BTreeSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads every file. A file that fails (bad YAML, a missing required field, a wrong
    /// type, an invalid value) keeps its last good contents in force, if it had any, and
    /// its errors are returned; the other files still apply. A deleted file drops its
    /// objects. Kinds Weft does not read are skipped. When the same object is in two files,
    /// the later file in sorted path order wins, and a warning is logged.
    ///
    /// If the directory itself cannot be listed, everything stays as it was: losing the
    /// directory for a moment must not unenrol every pod.
    pub fn reload(&mut self) -> (Model, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let mut listing = Listing::default();
        if let Err(err) = listing.walk(&self.dir) {
            errors.push(ConfigError::file(
                &self.dir,
                format!("cannot list directory: {err}"),
            ));
            listing.unreadable.push(self.dir.clone());
        }
        errors.append(&mut listing.errors);

        // Files under a directory that could not be listed may still exist: keep them.
        self.files.retain(|path, _| {
            listing.files.contains(path) || listing.unreadable.iter().any(|d| path.starts_with(d))
        });
        for path in listing.files {
            match fs::read_to_string(&path) {
                Ok(text) => self
                    .files
                    .entry(path.clone())
                    .or_default()
                    .update(&path, text),
                // Deleted between listing and reading: as good as deleted before the listing.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    self.files.remove(&path);
                }
                Err(err) => {
                    let state = self.files.entry(path.clone()).or_default();
                    state.text = None;
                    state.errors = vec![ConfigError::file(&path, format!("cannot read: {err}"))];
                }
            }
        }

        let model = self.build_model();
        errors.extend(self.files.values().flat_map(|f| f.errors.iter().cloned()));
        (model, errors)
    }

    fn build_model(&mut self) -> Model {
        let mut model = Model::default();
        let mut origin: BTreeMap<ObjectKey, &Path> = BTreeMap::new();
        let mut duplicates = BTreeSet::new();
        for (path, state) in &self.files {
            for object in &state.good {
                let key = object.key();
                model.insert(object.clone());
                if let Some(earlier) = origin.insert(key.clone(), path) {
                    let message = if earlier == path.as_path() {
                        format!(
                            "{key} is defined twice in {}; the later one wins",
                            path.display()
                        )
                    } else {
                        format!(
                            "{key} is defined in {} and again in {}; the later file wins",
                            earlier.display(),
                            path.display()
                        )
                    };
                    if !self.duplicates.contains(&message) {
                        tracing::warn!("{message}");
                    }
                    duplicates.insert(message);
                }
            }
        }
        self.duplicates = duplicates;
        model
    }
}

impl FileState {
    fn update(&mut self, path: &Path, text: String) {
        if self.text.as_ref() == Some(&text) {
            return;
        }
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for (document, result) in parse_documents(&text) {
            match result {
                Ok(Some(object)) => objects.push(object),
                Ok(None) => {}
                Err(err) => errors.push(ConfigError::document(path, document, err)),
            }
        }
        if errors.is_empty() {
            self.good = objects;
        }
        self.errors = errors;
        self.text = Some(text);
    }
}

#[derive(Default)]
struct Listing {
    files: BTreeSet<PathBuf>,
    /// Directories whose contents are unknown this time.
    unreadable: Vec<PathBuf>,
    errors: Vec<ConfigError>,
}

impl Listing {
    fn walk(&mut self, dir: &Path) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if let Err(err) = self.walk(&path) {
                    self.errors.push(ConfigError::file(
                        &path,
                        format!("cannot list directory: {err}"),
                    ));
                    self.unreadable.push(path);
                }
            } else if is_manifest(&path) && (file_type.is_file() || is_link_to_file(&path)) {
                self.files.insert(path);
            }
        }
        Ok(())
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

fn is_link_to_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}\n";

    fn pod(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: u-{name}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    fn pod_names(model: &Model) -> Vec<&str> {
        model.pods.values().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn malformed_file_is_reported_and_the_others_apply() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a-ns.yaml"), NS).unwrap();
        fs::write(
            dir.path().join("b-pods.yml"),
            format!("{}---\n{}", pod("p1", "10.0.0.1"), pod("p2", "10.0.0.2")),
        )
        .unwrap();
        fs::write(
            dir.path().join("c-bad.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();

        let (model, errors) = DirSource::new(dir.path()).reload();
        assert_eq!(pod_names(&model), ["p1", "p2"]);
        assert_eq!(model.enrolled_pods("n1").count(), 2);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, dir.path().join("c-bad.yaml"));
        assert_eq!(errors[0].document, Some(1));
        let text = errors[0].to_string();
        assert!(
            text.starts_with(&format!("{}: document 1", errors[0].file.display())),
            "{text}"
        );
    }

    #[test]
    fn invalid_object_fails_its_file_with_a_located_message() {
        let dir = tempfile::tempdir().unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: foo}\nspec: {ports: [{port: 70000}]}\n";
        fs::write(
            dir.path().join("x.yaml"),
            format!("{}---\n{svc}", pod("p1", "10.0.0.1")),
        )
        .unwrap();
        let (model, errors) = DirSource::new(dir.path()).reload();
        // The whole file is rejected, the valid pod included: it never had good contents.
        assert!(model.pods.is_empty());
        assert_eq!(
            errors[0].to_string(),
            format!(
                "{}: document 2 (Service default/foo): spec.ports[0].port: invalid value 70000 (must be 1..=65535)",
                dir.path().join("x.yaml").display()
            )
        );
    }

    #[test]
    fn file_that_turns_bad_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pods.yaml");
        fs::write(&file, pod("p1", "10.0.0.1")).unwrap();
        let mut source = DirSource::new(dir.path());
        let (model, errors) = source.reload();
        assert!(errors.is_empty());
        assert_eq!(pod_names(&model), ["p1"]);

        fs::write(
            &file,
            format!("{}---\n{}", pod("p2", "10.0.0.2"), pod("p3", "not-an-ip")),
        )
        .unwrap();
        let (model, errors) = source.reload();
        assert_eq!(pod_names(&model), ["p1"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object.as_deref(), Some("Pod shop/p3"));
        // An unchanged bad file still reports its error on every reload.
        assert_eq!(source.reload().1, errors);

        fs::write(&file, pod("p2", "10.0.0.2")).unwrap();
        let (model, errors) = source.reload();
        assert!(errors.is_empty());
        assert_eq!(pod_names(&model), ["p2"]);
    }

    #[test]
    fn deleted_file_drops_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ns.yaml"), NS).unwrap();
        fs::write(dir.path().join("p1.yaml"), pod("p1", "10.0.0.1")).unwrap();
        let mut source = DirSource::new(dir.path());
        assert_eq!(pod_names(&source.reload().0), ["p1"]);
        fs::remove_file(dir.path().join("p1.yaml")).unwrap();
        let (model, errors) = source.reload();
        assert!(errors.is_empty());
        assert!(model.pods.is_empty());
        assert_eq!(model.namespaces.len(), 1);
    }

    #[test]
    fn later_file_wins_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), pod("p", "10.0.0.1")).unwrap();
        fs::write(dir.path().join("b.yaml"), pod("p", "10.0.0.2")).unwrap();
        let (model, errors) = DirSource::new(dir.path()).reload();
        assert!(errors.is_empty());
        assert_eq!(model.pods.len(), 1);
        let pod = model.pods.values().next().unwrap();
        assert_eq!(pod.ip, Some("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn walks_subdirectories_but_not_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("apps/shop")).unwrap();
        fs::create_dir_all(dir.path().join("..2025_01_01")).unwrap();
        fs::write(dir.path().join("apps/shop/p1.yaml"), pod("p1", "10.0.0.1")).unwrap();
        fs::write(
            dir.path().join("..2025_01_01/p2.yaml"),
            pod("p2", "10.0.0.2"),
        )
        .unwrap();
        fs::write(dir.path().join(".p3.yaml"), pod("p3", "10.0.0.3")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("..2025_01_01/p2.yaml"),
            dir.path().join("p2.yaml"),
        )
        .unwrap();
        let (model, errors) = DirSource::new(dir.path()).reload();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(pod_names(&model), ["p1", "p2"]);
    }

    #[test]
    fn missing_directory_is_an_error_and_keeps_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("manifests");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("p1.yaml"), pod("p1", "10.0.0.1")).unwrap();
        let mut source = DirSource::new(&sub);
        assert_eq!(pod_names(&source.reload().0), ["p1"]);
        fs::rename(&sub, dir.path().join("elsewhere")).unwrap();
        let (model, errors) = source.reload();
        assert_eq!(pod_names(&model), ["p1"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, sub);
    }
}
