//! `weft-agent ca`: the certificate authority. `init` makes a root; `serve` signs workload
//! certificates for nodes that prove who they are (a bootstrap token per node in the lab;
//! Kubernetes TokenReview on a cluster), and only for identities of pods on that node.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Subcommand;
use weft_mesh::{
    ca::{CaServer, NodeAuth, TokenFile, TokenReviewer},
    identity::CertificateAuthority,
};

#[derive(Subcommand)]
pub enum CaCommand {
    /// Generate a root certificate and key (root-cert.pem, root-key.pem) in a directory.
    Init {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the CA.
    Serve {
        #[arg(long)]
        root_cert: PathBuf,
        #[arg(long)]
        root_key: PathBuf,
        /// Lines of `<token> <node-name>`: how the lab's agents prove their node.
        #[arg(
            long,
            required_unless_present = "token_review",
            conflicts_with = "token_review"
        )]
        tokens_file: Option<PathBuf>,
        /// Authenticate agents by their projected service-account tokens instead, with a
        /// Kubernetes TokenReview; the token's bound node is the caller's node.
        #[arg(long)]
        token_review: bool,
        /// The audience agents request their tokens for.
        #[arg(long, default_value = "weft-ca")]
        token_audience: String,
        /// The agents' service account, `namespace/name`.
        #[arg(long, default_value = "weft-system/weft-agent")]
        agent_service_account: String,
        /// Kubernetes YAML directory: which pods run on which node.
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// Read which pods run on which node from the Kubernetes API instead.
        #[arg(long)]
        kubernetes: bool,
        #[arg(long, default_value = "0.0.0.0:15012")]
        listen: SocketAddr,
    },
}

pub async fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { trust_domain, out } => {
            let ca = CertificateAuthority::generate(&trust_domain)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            ca.write(&out)?;
            println!("{}", out.join("root-cert.pem").display());
            Ok(())
        }
        CaCommand::Serve {
            root_cert,
            root_key,
            tokens_file,
            token_review,
            token_audience,
            agent_service_account,
            config_dir,
            kubernetes,
            listen,
        } => {
            let ca = CertificateAuthority::load(&root_cert, &root_key)
                .with_context(|| format!("loading the root {}", root_cert.display()))?;
            let authn = match tokens_file {
                Some(file) if !token_review => NodeAuth::Tokens(
                    TokenFile::load(&file)
                        .with_context(|| format!("reading {}", file.display()))?,
                ),
                _ => {
                    let (namespace, account) = agent_service_account
                        .split_once('/')
                        .context("--agent-service-account is namespace/name")?;
                    NodeAuth::Review(
                        TokenReviewer::connect(&token_audience, namespace, account).await?,
                    )
                }
            };
            let (model, _errors) =
                weft_mesh::config::ConfigSource::from_flags(config_dir, kubernetes)
                    .map_err(anyhow::Error::msg)?
                    .open()
                    .await
                    .map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, trust_domain = %ca.trust_domain(), "CA serving");
            CaServer::new(ca, authn, model)
                .serve(listener, shutdown())
                .await?;
            Ok(())
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
