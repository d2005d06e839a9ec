//! weft-agent: Weft's node agent.
//!
//! The path of a byte through it: `redirect` loads the eBPF programs that capture enrolled
//! pods' connections; `outbound` accepts them and hands them to an `upstream`. `admin` and
//! `metrics` show what it is doing. `settings` is its configuration, `preflight` its checks.

mod admin;
mod ca;
mod inbound;
mod metrics;
mod outbound;
mod policy;
mod preflight;
mod redirect;
mod settings;
mod tunnel;
mod upstream;

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio::{io::unix::AsyncFd, net::TcpListener, signal::unix::SignalKind, sync::watch};

use crate::{
    admin::Dump, metrics::Metrics, outbound::Outbound, redirect::Datapath, settings::AgentSettings,
    upstream::DirectTcp,
};

#[derive(Parser)]
#[command(name = "weft-agent", version, about = "Weft's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture enrolled pods' traffic on this node.
    Run(Box<AgentSettings>),
    /// The certificate authority that signs workload identities.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weft-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(settings) => runtime.block_on(run(*settings)),
        Command::Ca { command } => runtime.block_on(ca::run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: AgentSettings) -> anyhow::Result<()> {
    preflight::check(&settings.cgroup_root, &settings.bpffs_dir)?;
    let (model, mut config_errors) = weft_mesh::config::watch_dir(settings.config_dir.clone())
        .with_context(|| format!("reading {}", settings.config_dir.display()))?;

    let mut datapath = Datapath::load(&settings)?;
    if let Some(logger) = datapath.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let maps = datapath.shared();
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry, maps.clone());
    let dump = Arc::new(RwLock::new(Dump {
        node: settings.node_name.clone(),
        agent_ip: Some(settings.agent_ip),
        ..Dump::default()
    }));

    let (stop_tx, stop_rx) = watch::channel(false);
    let outbound_addr = SocketAddr::from((settings.agent_ip, settings.outbound_port));
    let outbound_listener = TcpListener::bind(outbound_addr)
        .await
        .with_context(|| format!("binding the outbound listener {outbound_addr}"))?;
    let direct = DirectTcp {
        connect_timeout: Duration::from_secs(5),
        source_ip: settings.agent_ip,
    };
    match tunnel::start(
        &settings,
        model.clone(),
        metrics.clone(),
        direct.clone(),
        stop_rx.clone(),
    )
    .await?
    {
        Some(upstream) => {
            let trust_domain = Some(settings.tunnel.trust_domain.clone());
            let outbound = Arc::new(Outbound::new(
                maps.clone(),
                upstream,
                model.clone(),
                metrics.clone(),
                trust_domain,
            ));
            tokio::spawn(outbound.serve(outbound_listener, stop_rx.clone()));
        }
        None => {
            tracing::warn!(
                "no --ca-address: captured connections are forwarded in PLAINTEXT, without identities"
            );
            let outbound = Arc::new(Outbound::new(
                maps.clone(),
                direct,
                model.clone(),
                metrics.clone(),
                None,
            ));
            tokio::spawn(outbound.serve(outbound_listener, stop_rx.clone()));
        }
    }
    serve_http(
        settings.admin_port,
        admin::admin_handler(dump.clone(), maps.clone()),
        stop_rx.clone(),
    )
    .await?;
    serve_http(
        settings.metrics_port,
        admin::metrics_handler(Arc::new(registry)),
        stop_rx.clone(),
    )
    .await?;
    tracing::info!(node = %settings.node_name, outbound = %outbound_addr, "weft-agent running");

    let policy = policy::L4Policy {
        root_namespace: settings.tunnel.root_namespace.clone(),
    };
    let mut model_rx = model.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    loop {
        let current = model_rx.borrow_and_update().clone();
        datapath.reconcile(&current, &settings.node_name, &policy);
        let pods = datapath.pod_statuses();
        metrics
            .enrolled_pods
            .set(pods.iter().filter(|p| p.state == "enrolled").count() as i64);
        metrics
            .pending_pods
            .set(pods.iter().filter(|p| p.state != "enrolled").count() as i64);
        let errors: Vec<String> = config_errors
            .borrow_and_update()
            .iter()
            .map(ToString::to_string)
            .collect();
        metrics.config_errors.set(errors.len() as i64);
        if let Ok(mut dump) = dump.write() {
            dump.pods = pods;
            dump.programs = datapath.program_ids();
            dump.config_errors = errors;
        }
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = model_rx.changed() => {}
            _ = config_errors.changed() => {}
            _ = tick.tick() => {}
        }
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    datapath.shutdown();
    Ok(())
}

async fn serve_http(
    port: u16,
    handler: weft_mesh::admin::Handler,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tokio::spawn(weft_mesh::admin::serve(listener, handler, async move {
        let _ = stop.changed().await;
    }));
    Ok(())
}

/// Moves records from the eBPF programs' log ring into tracing.
async fn forward_ebpf_logs(logger: redirect::EbpfLog) {
    // SAFETY: the AsyncFd owns the logger, so the descriptor stays open while registered.
    let Ok(mut fd) =
        (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
