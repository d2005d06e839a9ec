//! How the CA learns which node is calling: a bearer token, mapped to a node name.
//!
//! [`NodeAuthenticator`] is the seam. [`TokenFile`] is the implementation for the lab and
//! for clusters that provision per-node secrets; [`TokenReviewer`](super::TokenReviewer)
//! asks the Kubernetes API about service-account tokens bound to the agent's pod and node.

use std::fmt;
use std::future::Future;
use std::path::Path;

/// Who presented a token: the node it acts for, and, for a workload rather than a node
/// agent, the one identity (namespace, service account) it may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub node: String,
    /// `None` for a node agent, which may ask for any identity of its node's pods.
    pub only: Option<(String, String)>,
}

impl Caller {
    pub fn node(node: impl Into<String>) -> Self {
        Caller {
            node: node.into(),
            only: None,
        }
    }
}

/// Maps a bearer token to the caller that holds it.
pub trait NodeAuthenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        bearer_token: &str,
    ) -> impl Future<Output = Result<Caller, AuthError>> + Send;
}

/// A shared authenticator authenticates like the one it shares.
impl<T: NodeAuthenticator> NodeAuthenticator for std::sync::Arc<T> {
    fn authenticate(
        &self,
        bearer_token: &str,
    ) -> impl Future<Output = Result<Caller, AuthError>> + Send {
        (**self).authenticate(bearer_token)
    }
}

/// Why a caller or a token source was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown token")]
    UnknownToken,
    #[error("{origin}:{line}: {reason}")]
    Parse {
        origin: String,
        line: usize,
        reason: &'static str,
    },
    #[error("{origin}: {source}")]
    Io {
        origin: String,
        source: std::io::Error,
    },
    /// An authentication service that could not be asked (the API server, for TokenReview).
    #[error("authentication backend: {0}")]
    Backend(String),
    /// The authentication service answered, and the answer was no.
    #[error("{0}")]
    Rejected(String),
}

/// Either of Weft's authenticators, chosen by the CA's flags.
pub enum NodeAuth {
    Tokens(TokenFile),
    Review(super::TokenReviewer),
}

impl NodeAuthenticator for NodeAuth {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        match self {
            NodeAuth::Tokens(t) => t.authenticate(bearer_token).await,
            NodeAuth::Review(r) => r.authenticate(bearer_token).await,
        }
    }
}

/// Tokens from a file of lines `<token> <node-name>`; blank lines and lines starting with
/// `#` are skipped. A token may appear once only.
pub struct TokenFile {
    entries: Vec<(Vec<u8>, String)>,
}

impl TokenFile {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            origin: origin.clone(),
            source,
        })?;
        Self::parse_from(&text, &origin)
    }

    /// Parses the file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        Self::parse_from(text, "<token file>")
    }

    fn parse_from(text: &str, origin: &str) -> Result<Self, AuthError> {
        let mut entries: Vec<(Vec<u8>, String)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let fail = |reason| AuthError::Parse {
                origin: origin.to_owned(),
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, node] = fields.as_slice() else {
                return Err(fail("expected `<token> <node-name>`"));
            };
            if entries.iter().any(|(known, _)| known == token.as_bytes()) {
                return Err(fail("token listed twice"));
            }
            entries.push((token.as_bytes().to_vec(), (*node).to_owned()));
        }
        Ok(TokenFile { entries })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for TokenFile {
    /// Lists the nodes, never the tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<&str> = self.entries.iter().map(|(_, node)| node.as_str()).collect();
        f.debug_struct("TokenFile").field("nodes", &nodes).finish()
    }
}

impl NodeAuthenticator for TokenFile {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        // Compare against every entry, without stopping at a match, so that the time taken
        // says nothing about which token (or how much of one) matched.
        let mut node = None;
        for (token, name) in &self.entries {
            if constant_time_eq(token, bearer_token.as_bytes()) && node.is_none() {
                node = Some(name);
            }
        }
        node.map(Caller::node).ok_or(AuthError::UnknownToken)
    }
}

/// Equality whose time depends on the lengths only, not on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_maps_tokens_to_nodes() {
        let file = TokenFile::parse(
            "# tokens for the lab\n\
             \n\
             s3cret-a node-a\n\
             \t s3cret-b   node-b  \n",
        )
        .unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file.authenticate("s3cret-a").await.unwrap().node, "node-a");
        assert_eq!(file.authenticate("s3cret-b").await.unwrap().node, "node-b");
        for bad in ["", "s3cret", "s3cret-a ", "S3CRET-A", "s3cret-c"] {
            assert!(matches!(
                file.authenticate(bad).await,
                Err(AuthError::UnknownToken)
            ));
        }
        assert!(!format!("{file:?}").contains("s3cret"));
        let shared = std::sync::Arc::new(file);
        assert_eq!(
            shared.authenticate("s3cret-b").await.unwrap().node,
            "node-b"
        );
    }

    #[test]
    fn token_file_rejects_malformed_lines() {
        let err = TokenFile::parse("ok node\nlonely\n").unwrap_err();
        assert!(matches!(err, AuthError::Parse { line: 2, .. }), "{err}");
        let err = TokenFile::parse("t node-a\nt node-b\n").unwrap_err();
        assert!(matches!(err, AuthError::Parse { line: 2, .. }), "{err}");
        assert!(TokenFile::parse("t node extra\n").is_err());
        assert!(TokenFile::load("/nonexistent/weft/tokens").is_err());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
