//! weft-waypoint: Weft's L7 proxy, one per namespace or service account.
//!
//! It accepts HBONE from the source agents (`accept`), serves HTTP/2 inside each tunnelled
//! connection, and sends each call on its own (`proxy`): routed by VirtualService (`route`),
//! balanced over a cluster's endpoints (`cluster`, `endpoint`), retried within a budget
//! (`budget`, `replay`), and answered as it streams back (`response`). Its upstream
//! connections are HTTP/2 through HBONE to the backends' node agents (`upstream`).

weft_mesh::global_allocator!();

mod accept;
mod authorize;
mod balance;
mod breaker;
mod budget;
mod called;
mod cluster;
mod deadline;
mod endpoint;
mod hygiene;
mod metrics;
mod proxy;
mod ratelimit;
mod replay;
mod response;
mod retry;
mod route;
mod settings;
mod telemetry;
#[cfg(test)]
mod tests;
mod upstream;

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use weft_waypoint::{grpc, trace};

use anyhow::Context;
use clap::Parser;
use tokio::{net::TcpListener, signal::unix::SignalKind, sync::watch};
use weft_mesh::{
    admin::{Handler, Reply, metrics_reply},
    config::WaypointRef,
    hbone::{self, Pool},
    identity::{ServerIdentity, SpiffeId, client_config, server_config},
};

use crate::{
    accept::Accept, cluster::Clusters, proxy::Proxy, settings::Settings, upstream::Dialer,
};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file (the lab's, a pod's) stays plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = Settings::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if settings.worker_threads > 0 {
        runtime.worker_threads(settings.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weft-waypoint: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft-waypoint: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let (model, _errors) = weft_mesh::config::ConfigSource::from_flags(
        settings.config_dir.clone(),
        settings.kubernetes,
    )
    .map_err(anyhow::Error::msg)?
    .open()
    .await
    .map_err(anyhow::Error::msg)?;
    let identity = SpiffeId::new(
        &settings.trust_domain,
        &settings.namespace,
        settings
            .service_account
            .as_deref()
            .unwrap_or(&settings.name),
    )
    .context("the waypoint's identity")?;
    let enrolled = settings
        .enrolment(
            weft_mesh::ca::resolve_ca(&settings.ca_address)
                .await
                .map_err(anyhow::Error::msg)?,
        )
        .enrol(&identity, Duration::from_secs(30))
        .await?;
    let agent = SpiffeId::new(
        &settings.trust_domain,
        &settings.agent_namespace,
        &settings.agent_service_account,
    )
    .context("the agents' identity")?;
    let upstream_tls = client_config(
        enrolled.slot.clone(),
        &enrolled.trust,
        // The node agents share this SPIFFE ID; each certificate also names its node's
        // address, which must be the one dialled.
        ServerIdentity::AtDialledAddress(agent),
    )
    .context("the upstream TLS configuration")?;
    let server_tls = server_config(enrolled.slot.clone(), &enrolled.trust)
        .context("the HBONE server's TLS configuration")?;

    let metrics = metrics::Metrics::new();
    let tunnel = hbone::Settings::default();
    let access_log = match &settings.access_log {
        Some(path) => Some(
            telemetry::AccessLog::start(path.clone(), settings.access_log_filter)
                .with_context(|| format!("opening the access log {}", path.display()))?,
        ),
        None => None,
    };
    let tracer = trace::Tracer {
        sampling: settings.trace_sampling,
        exporter: settings.otlp_endpoint.clone().map(|endpoint| {
            trace::start_exporter(
                endpoint,
                format!("{}.{}", settings.name, settings.namespace),
            )
        }),
    };
    let dialer = Arc::new(Dialer {
        pool: Pool::new(tunnel.clone()),
        tls: upstream_tls,
        identity: identity.to_string(),
        source_ip: settings.pod_ip,
        window: settings.window,
    });
    let proxy = Arc::new(Proxy {
        model: arc_swap::ArcSwap::new(model.borrow().clone()),
        clusters: Clusters::new(&metrics, &settings.trust_domain),
        upstream: dialer.clone(),
        authz: authorize::Authorizer {
            metrics: metrics.clone(),
            waypoint: authorize::Waypoint {
                identity: identity.to_string(),
                namespace: settings.namespace.clone(),
                name: settings.name.clone(),
                pod_ip: settings.pod_ip,
                root: settings.root_namespace.clone().into(),
            },
        },
        metrics: metrics.clone(),
        limiter: ratelimit::Limiter::default(),
        tracer,
        access_log,
    });
    let (stop_tx, stop) = watch::channel(false);
    let serving = Arc::new(AtomicUsize::new(0));
    let accept = Arc::new(Accept {
        proxy: proxy.clone(),
        dialer,
        model: model.clone(),
        trust_domain: settings.trust_domain.clone(),
        waypoint: WaypointRef {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
        },
        window: settings.window,
        draining: stop.clone(),
        serving: serving.clone(),
    });

    let listener = TcpListener::bind(settings.hbone_address)
        .await
        .with_context(|| format!("binding {}", settings.hbone_address))?;
    let mut tasks = vec![tokio::spawn(hbone::serve(
        listener,
        server_tls,
        tunnel,
        accept,
        stopped(stop.clone()),
    ))];
    let registry = metrics.registry();
    let metrics_page: Handler = Arc::new(move |path| match (path, registry.lock()) {
        ("/metrics" | "/stats/prometheus", Ok(registry)) => metrics_reply(&registry),
        _ => Reply::not_found(),
    });
    let admin_proxy = proxy.clone();
    let admin: Handler = Arc::new(move |path| match path {
        "/healthz" => Reply::text(200, "ok\n"),
        "/config_dump" => Reply::json(&config_dump(&admin_proxy)),
        _ => Reply::not_found(),
    });
    let ready: Handler = Arc::new(|path| match path {
        "/healthz/ready" | "/healthz" => Reply::text(200, "ready\n"),
        _ => Reply::not_found(),
    });
    let (health, health_service) = weft_mesh::admin::health();
    let listener = TcpListener::bind(settings.ready_address)
        .await
        .with_context(|| format!("binding {}", settings.ready_address))?;
    tasks.push(tokio::spawn(weft_mesh::admin::serve_ready(
        listener,
        ready,
        health_service,
        stopped(stop.clone()),
    )));
    for (address, handler) in [
        (settings.admin_address, admin),
        (settings.metrics_address, metrics_page),
    ] {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        tasks.push(tokio::spawn(weft_mesh::admin::serve(
            listener,
            handler,
            stopped(stop.clone()),
        )));
    }
    // Follows the model for as long as the process runs; aborted when it stops.
    let follow = tokio::spawn(proxy::follow(proxy.clone(), model.clone()));
    tasks.push(tokio::spawn(reap_idle(proxy.clone(), stop.clone())));
    weft_mesh::admin::set_serving(&health, "weft-waypoint", true).await;
    tracing::info!(
        %identity,
        hbone = %settings.hbone_address,
        "weft-waypoint serving"
    );

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    tracing::info!("weft-waypoint stopping");
    weft_mesh::admin::set_serving(&health, "weft-waypoint", false).await;
    let _ = stop_tx.send(true);
    // Drain: every connection has GOAWAY now; the calls in flight get the grace period.
    let grace = Duration::from_secs(settings.drain_seconds);
    let started = std::time::Instant::now();
    while serving.load(Ordering::Acquire) > 0 && started.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = serving.load(Ordering::Acquire);
    tracing::info!(
        left,
        seconds = started.elapsed().as_secs_f64(),
        "drain over; the client connections left are cut"
    );
    follow.abort();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Tidies the proxy once a second ([`Proxy::tidy`]).
async fn reap_idle(proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        proxy.tidy();
    }
}

/// The clusters as the waypoint sees them: policy, endpoints, health and connections.
fn config_dump(proxy: &Proxy) -> serde_json::Value {
    let now = std::time::Instant::now();
    let clusters: Vec<_> = proxy
        .clusters
        .all()
        .iter()
        .map(|c| {
            serde_json::json!({
                "cluster": c.key.to_string(),
                "balancer": format!("{:?}", c.policy.balancer),
                "active_requests": c.breaker.active.load(std::sync::atomic::Ordering::Relaxed),
                "endpoints": c.endpoints().iter().map(|e| serde_json::json!({
                    "address": e.address.to_string(),
                    "node": e.node.to_string(),
                    "in_flight": e.in_flight(),
                    "ejected": e.ejected(now),
                    "connections": e.connections.count(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "clusters": clusters })
}
