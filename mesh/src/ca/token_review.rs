//! Node authentication in a cluster: the agent presents its projected service-account
//! token, and the CA asks the API server about it with a TokenReview
//! (`authentication.k8s.io/v1`, Kubernetes' "Managing Service Accounts" and "Authenticating"
//! documents). The token must be for the CA's audience, belong to the agent's service
//! account, and be bound to a pod on a node: since Kubernetes 1.30 the review of such a
//! token names the node in `user.extra["authentication.kubernetes.io/node-name"]`. That
//! node, and only that node, is who the caller is; the CA then signs identities of that
//! node's pods only, as the node authorizer allows a kubelet only its own node's objects.
//!
//! A token of any other service account (a waypoint's) is accepted for that account's own
//! identity only: `spiffe://<td>/ns/<namespace>/sa/<account>`, still only if a pod of that
//! account runs on the token's node.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::auth::{AuthError, Caller, NodeAuthenticator};

/// The `extra` key under which the API server names the node a token is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

pub struct TokenReviewer {
    pub client: kube::Client,
    /// The audience agents request their tokens for (`weft-ca`).
    pub audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the agents.
    pub agent_username: String,
}

impl TokenReviewer {
    /// With the client the environment gives (in-cluster service account, or kubeconfig).
    pub async fn connect(
        audience: &str,
        namespace: &str,
        account: &str,
    ) -> Result<Self, AuthError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| AuthError::Backend(format!("connecting to the Kubernetes API: {e}")))?;
        Ok(Self::new(client, audience, namespace, account))
    }

    pub fn new(client: kube::Client, audience: &str, namespace: &str, account: &str) -> Self {
        TokenReviewer {
            client,
            audience: audience.to_string(),
            agent_username: format!("system:serviceaccount:{namespace}:{account}"),
        }
    }
}

impl NodeAuthenticator for TokenReviewer {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(bearer_token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Backend(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(format!(
                "the API server did not authenticate the token{}",
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(AuthError::Rejected(format!(
                "the token is not for audience {:?}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let only = if username == self.agent_username {
            None
        } else {
            let account = username
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
                .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
                .ok_or_else(|| {
                    AuthError::Rejected(format!("{username} is not a service account"))
                })?;
            Some((account.0.to_string(), account.1.to_string()))
        };
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|nodes| nodes.first())
            .filter(|node| !node.is_empty())
            .cloned()
            .ok_or_else(|| {
                AuthError::Rejected(
                    "the token is not bound to a node (a projected token of a pod, Kubernetes 1.30 or later)"
                        .into(),
                )
            })?;
        Ok(Caller { node, only })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, body::Incoming};
    use serde_json::{Value, json};

    use super::*;
    use crate::test_http::{kube_client, serve_http};

    /// The API server's TokenReview endpoint, in the test: it knows four tokens.
    async fn review(req: Request<Incoming>) -> Response<Full<Bytes>> {
        assert_eq!(req.method(), "POST");
        assert_eq!(
            req.uri().path(),
            "/apis/authentication.k8s.io/v1/tokenreviews"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["spec"]["audiences"], json!(["weft-ca"]));
        let user = |name: &str, node: Option<&str>| {
            let mut extra = json!({"authentication.kubernetes.io/pod-name": ["weft-agent-x"]});
            if let Some(node) = node {
                extra[NODE_NAME_EXTRA] = json!([node]);
            }
            json!({"authenticated": true, "audiences": ["weft-ca"],
                   "user": {"username": name, "extra": extra}})
        };
        let status = match body["spec"]["token"].as_str().unwrap_or("") {
            "agent-on-node-a" => user(
                "system:serviceaccount:weft-system:weft-agent",
                Some("node-a"),
            ),
            "someone-else" => user("system:serviceaccount:shop:web", Some("node-a")),
            "a-user" => user("jane@example.com", Some("node-a")),
            "unbound" => user("system:serviceaccount:weft-system:weft-agent", None),
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut answer = body.clone();
        answer["status"] = status;
        let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }

    #[tokio::test]
    async fn token_review_names_the_node_of_the_agents_bound_token() {
        let client = kube_client(serve_http(review).await);
        let reviewer = TokenReviewer::new(client, "weft-ca", "weft-system", "weft-agent");
        assert_eq!(
            reviewer.authenticate("agent-on-node-a").await.unwrap(),
            Caller::node("node-a")
        );
        assert_eq!(
            reviewer.authenticate("someone-else").await.unwrap(),
            Caller {
                node: "node-a".into(),
                only: Some(("shop".into(), "web".into()))
            },
            "a workload's token is good for its own identity only"
        );
        let refused = |token: &'static str| {
            let reviewer = &reviewer;
            async move { reviewer.authenticate(token).await.unwrap_err().to_string() }
        };
        assert!(refused("forged").await.contains("invalid bearer token"));
        assert!(refused("a-user").await.contains("is not a service account"));
        assert!(refused("unbound").await.contains("not bound to a node"));
    }
}
