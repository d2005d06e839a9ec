//! `weft-agent ca`: the certificate authority. `init` makes a root; `serve` signs workload
//! certificates for nodes that prove who they are (a bootstrap token per node in the lab;
//! Kubernetes TokenReview on a cluster), and only for identities of pods on that node.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Subcommand;
use weft_mesh::{
    ca::{CaServer, TokenFile},
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
        /// Lines of `<token> <node-name>`.
        #[arg(long)]
        tokens_file: PathBuf,
        /// Kubernetes YAML directory: which pods run on which node.
        #[arg(long)]
        config_dir: PathBuf,
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
            config_dir,
            listen,
        } => {
            let ca = CertificateAuthority::load(&root_cert, &root_key)
                .with_context(|| format!("loading the root {}", root_cert.display()))?;
            let tokens = TokenFile::load(&tokens_file)
                .with_context(|| format!("reading {}", tokens_file.display()))?;
            let (model, _errors) = weft_mesh::config::watch_dir(config_dir.clone())
                .with_context(|| format!("reading {}", config_dir.display()))?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, trust_domain = %ca.trust_domain(), "CA serving");
            CaServer::new(ca, tokens, model)
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
