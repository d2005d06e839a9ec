//! Rejections. Each one says where (file, document, object, field) and why, in one line,
//! because the reader is someone fixing a manifest.

use std::fmt;
use std::path::PathBuf;

/// One object that cannot be taken into the model, whichever source it came from.
///
/// Displays as `Service default/foo: spec.ports[0].port: invalid value 70000 (...)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", object.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
pub struct InvalidObject {
    /// `Kind namespace/name`, when the document says that much.
    pub object: Option<String>,
    /// The field path first when there is one, then what is wrong with it.
    pub reason: String,
}

impl InvalidObject {
    pub(crate) fn new(object: Option<String>, reason: impl Into<String>) -> Self {
        InvalidObject {
            object,
            reason: reason.into(),
        }
    }
}

/// One rejected object or file of the directory source.
///
/// Displays as
/// `deploy/x.yaml: document 2 (Service default/foo): spec.ports[0].port: invalid value 70000`.
/// Documents count from 1, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), Location(*document, object.as_deref()))]
pub struct ConfigError {
    pub file: PathBuf,
    pub document: Option<usize>,
    pub object: Option<String>,
    pub reason: String,
}

impl ConfigError {
    /// An error about a whole file or directory.
    pub(crate) fn file(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            document: None,
            object: None,
            reason: reason.into(),
        }
    }

    /// An error about one document of a file.
    pub(crate) fn document(file: impl Into<PathBuf>, document: usize, err: InvalidObject) -> Self {
        ConfigError {
            file: file.into(),
            document: Some(document),
            object: err.object,
            reason: err.reason,
        }
    }
}

struct Location<'a>(Option<usize>, Option<&'a str>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(document), Some(object)) => write!(f, ": document {document} ({object})"),
            (Some(document), None) => write!(f, ": document {document}"),
            (None, Some(object)) => write!(f, " ({object})"),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_document_object_and_reason() {
        let err = ConfigError::document(
            "deploy/x.yaml",
            2,
            InvalidObject::new(
                Some("Service default/foo".into()),
                "spec.ports[0].port: invalid value 70000",
            ),
        );
        assert_eq!(
            err.to_string(),
            "deploy/x.yaml: document 2 (Service default/foo): spec.ports[0].port: invalid value 70000"
        );
        let err = ConfigError::file("deploy/y.yaml", "cannot read: permission denied");
        assert_eq!(
            err.to_string(),
            "deploy/y.yaml: cannot read: permission denied"
        );
        let err = InvalidObject::new(None, "kind: required");
        assert_eq!(err.to_string(), "kind: required");
    }
}
