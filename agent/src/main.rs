//! weft-agent: Weft's node agent.
//!
//! The path of a byte through it: `redirect` loads the eBPF programs that capture enrolled
//! pods' connections; `outbound` accepts them and hands them to an `upstream`. `admin` and
//! `metrics` show what it is doing. `settings` is its configuration, `preflight` its checks.

weft_mesh::global_allocator!();

mod admin;
mod ca;
mod connections;
mod dialaddr;
mod handover;
mod inbound;
mod metrics;
mod outbound;
mod plaintext;
mod policy;
mod preflight;
mod redirect;
mod settings;
mod sockdiag;
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
    /// Explain what the mesh makes of a pod or a Service: enrolment, identity, waypoint,
    /// policies, and each port's detected protocol.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
        #[arg(long, short = 'n', global = true, default_value = "default")]
        namespace: String,
        /// Read the configuration from this directory of manifests...
        #[arg(long, global = true)]
        config_dir: Option<std::path::PathBuf>,
        /// ...or from the Kubernetes API.
        #[arg(long, global = true)]
        kubernetes: bool,
        #[arg(long, global = true, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long, global = true, default_value = weft_mesh::policy::DEFAULT_ROOT_NAMESPACE)]
        root_namespace: String,
    },
    /// Report every case where the configuration does not do what it says (one line per
    /// finding, with a stable code) and every rejected manifest; exit 1 if any is an error.
    Analyze {
        /// Read the configuration from this directory of manifests...
        #[arg(long)]
        config_dir: Option<std::path::PathBuf>,
        /// ...or from the Kubernetes API.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Wait until this node's agent has enrolled the pod at `--pod-ip` (capture hooks,
    /// inbound gate and plaintext inbound attached), then exit 0: run it as a pod's first
    /// init container, so that its containers start captured and gated. Exit 1 at the
    /// timeout.
    AwaitPod {
        /// The agent's readiness address (the node's: `status.hostIP`, port 15021).
        #[arg(long, env = "WEFT_AGENT_READY")]
        agent: SocketAddr,
        /// The pod's own address (`status.podIP`).
        #[arg(long, env = "POD_IP")]
        pod_ip: std::net::Ipv4Addr,
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
    },
    /// Waypoints: the L7 proxies of a namespace or service account.
    Waypoint {
        #[command(subcommand)]
        command: WaypointCommand,
    },
}

#[derive(Subcommand)]
enum DescribeWhat {
    Pod { name: String },
    Service { name: String },
}

#[derive(Subcommand)]
enum WaypointCommand {
    /// Print (or apply) the ServiceAccount, Deployment and Service of a waypoint.
    Generate {
        #[arg(long, short = 'n')]
        namespace: String,
        /// A waypoint for this service account's workloads only (default: the namespace's).
        #[arg(long)]
        service_account: Option<String>,
        /// The waypoint's name (default: `waypoint`, or `<account>-waypoint`).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "ghcr.io/weft-mesh/weft:0.1.0")]
        image: String,
        #[arg(long, default_value = "weft-ca.weft-system.svc:15012")]
        ca_address: String,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Pods of the waypoint. With two or more, the node agents move a client to another
        /// when one goes away, and a rolling update keeps them all serving.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
        replicas: u32,
        /// Apply the objects to the cluster (server-side apply) instead of printing them.
        #[arg(long)]
        apply: bool,
    },
}

fn main() -> ExitCode {
    // WEFT_LOG, as the waypoint reads it; RUST_LOG still works.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file (the lab's, a node's journal) stays plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Analyze {
            config_dir,
            kubernetes,
        } => return runtime.block_on(analyze(config_dir, kubernetes)),
        Command::Run(settings) => runtime.block_on(run(*settings)),
        Command::AwaitPod {
            agent,
            pod_ip,
            timeout_seconds,
        } => {
            return runtime.block_on(await_pod(
                agent,
                pod_ip,
                Duration::from_secs(timeout_seconds),
            ));
        }
        Command::Ca { command } => runtime.block_on(ca::run(command)),
        Command::Waypoint { command } => runtime.block_on(waypoint(command)),
        Command::Describe {
            what,
            namespace,
            config_dir,
            kubernetes,
            trust_domain,
            root_namespace,
        } => runtime.block_on(async move {
            let (model, _errors) =
                weft_mesh::config::ConfigSource::from_flags(config_dir, kubernetes)
                    .map_err(anyhow::Error::msg)?
                    .open()
                    .await
                    .map_err(anyhow::Error::msg)?;
            let model = model.borrow().clone();
            let root = root_namespace.into();
            let text = match what {
                DescribeWhat::Pod { name } => weft_mesh::describe::describe_pod(
                    &model,
                    &namespace,
                    &name,
                    &trust_domain,
                    &root,
                ),
                DescribeWhat::Service { name } => {
                    weft_mesh::describe::describe_service(&model, &namespace, &name, &root)
                }
            }
            .map_err(anyhow::Error::msg)?;
            print!("{text}");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `weft-agent analyze`: exit 0 when clean (warnings allowed), 1 on errors, 2 when the
/// configuration cannot be read at all.
async fn analyze(config_dir: Option<std::path::PathBuf>, kubernetes: bool) -> ExitCode {
    let opened = match (config_dir, kubernetes) {
        // The directory is read once, without the watcher's logging of each finding.
        (Some(dir), false) if dir.is_dir() => {
            let (model, errors) = weft_mesh::config::DirSource::new(dir).reload();
            Ok((Arc::new(weft_mesh::state::State::compile(model)), errors))
        }
        (config_dir, kubernetes) => {
            match weft_mesh::config::ConfigSource::from_flags(config_dir, kubernetes) {
                Ok(source) => source.open().await.map(|(state, errors)| {
                    let errors = errors.borrow().clone();
                    let state = state.borrow().clone();
                    (state, errors)
                }),
                Err(err) => Err(err),
            }
        }
    };
    match opened {
        Ok((state, errors)) => {
            let (text, failed) = weft_mesh::analyze::report(&state, &errors);
            print!("{text}");
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("weft-agent analyze: {err}");
            ExitCode::from(2)
        }
    }
}

async fn waypoint(command: WaypointCommand) -> anyhow::Result<()> {
    let WaypointCommand::Generate {
        namespace,
        service_account,
        name,
        image,
        ca_address,
        trust_domain,
        replicas,
        apply,
    } = command;
    let manifests = weft_mesh::waypoint_manifests::WaypointManifests {
        namespace,
        service_account,
        name,
        image,
        ca_address,
        trust_domain,
        replicas,
    };
    if apply {
        manifests.apply().await.map_err(anyhow::Error::msg)?;
        eprintln!(
            "applied waypoint {}/{}; bind workloads with: {}",
            manifests.namespace,
            manifests.name(),
            manifests.binding()
        );
    } else {
        print!("{}", manifests.yaml());
    }
    Ok(())
}

/// Whether the pod at `ip` is enrolled with every hook attached: 200, else 503 and why.
fn pod_readiness(dump: &RwLock<Dump>, ip: &str) -> weft_mesh::admin::Reply {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return weft_mesh::admin::Reply::text(400, format!("{ip:?} is not an address\n"));
    };
    let Ok(dump) = dump.read() else {
        return weft_mesh::admin::Reply::text(503, "the agent is stopping\n");
    };
    let Some(pod) = dump.pods.iter().find(|p| p.ip == Some(ip)) else {
        return weft_mesh::admin::Reply::text(503, format!("{ip} is no pod this agent enrols\n"));
    };
    if pod.attached() {
        return weft_mesh::admin::Reply::text(200, "enrolled\n");
    }
    weft_mesh::admin::Reply::text(
        503,
        format!(
            "{}/{}: {}, gate {}, plaintext inbound {}\n",
            pod.namespace,
            pod.name,
            pod.reason.as_deref().unwrap_or(pod.state),
            pod.interface.as_deref().unwrap_or("not attached"),
            pod.plaintext_inbound.as_deref().unwrap_or("not attached")
        ),
    )
}

/// `weft-agent await-pod`: polls the agent until it reports the pod enrolled.
async fn await_pod(agent: SocketAddr, pod_ip: std::net::Ipv4Addr, timeout: Duration) -> ExitCode {
    let deadline = tokio::time::Instant::now() + timeout;
    let path = format!("/healthz/pod/{pod_ip}");
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match weft_mesh::admin::http_get(agent, &path, Duration::from_secs(2)).await {
            Ok((200, _)) => {
                tracing::info!(%pod_ip, "the node agent has enrolled this pod");
                return ExitCode::SUCCESS;
            }
            Ok((_, body)) => last = body.trim().to_string(),
            Err(err) => last = format!("{agent}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tracing::error!(%pod_ip, %last, "the node agent did not enrol this pod in time");
    ExitCode::FAILURE
}

async fn run(settings: AgentSettings) -> anyhow::Result<()> {
    preflight::check(&settings.cgroup_root, &settings.bpffs_dir)?;
    // A next agent's listeners take over this one's queued connections, and the reverse.
    if let Err(err) = handover::migrate_requests() {
        tracing::warn!(%err, "cannot set net.ipv4.tcp_migrate_req: connections queued on an agent that stops are reset instead of moving to the next one");
    }
    dialaddr::ensure(settings.dial_ip).with_context(|| {
        format!(
            "adding the dial address {}/32 to the node's loopback",
            settings.dial_ip
        )
    })?;
    let (model, config_errors) = weft_mesh::config::ConfigSource::from_flags(
        settings.config_dir.clone(),
        settings.kubernetes,
    )
    .map_err(anyhow::Error::msg)?
    .open()
    .await
    .map_err(anyhow::Error::msg)?;

    // Everything that can fail comes before the eBPF programs are loaded, so that a failed
    // start never leaves pods captured towards an agent that is not there.
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::default();
    let outbound_addr = SocketAddr::from((settings.agent_ip, settings.outbound_port));
    let outbound_listener = bind_outbound(outbound_addr)
        .with_context(|| format!("binding the outbound listener {outbound_addr}"))?;
    // Admin (config dump, maps) is for the node's own operator only, as ztunnel's is.
    let admin_listener = bind_http_on(Ipv4Addr::LOCALHOST, settings.admin_port).await?;
    let metrics_listener = bind_http(settings.metrics_port).await?;
    let ready_listener = bind_http(settings.ready_port).await?;
    // Without a CA (plaintext, no identities) everything is dialled from the agent's
    // address; to the node's own pods from the dial address with the agent's mark, which
    // their gate trusts.
    let direct = DirectTcp {
        connect_timeout: Duration::from_secs(5),
        from: upstream::DialFrom {
            ip: settings.agent_ip,
            mark: None,
        },
    };
    let to_pods = DirectTcp {
        connect_timeout: Duration::from_secs(5),
        from: upstream::DialFrom::pods(settings.dial_ip),
    };
    // Every connection admitted by L4 policy, decided again at each new state.
    let connections = connections::Connections::with_limits(connections::Limits {
        per_pod: settings.max_connections_per_pod,
        total: settings.max_connections,
    });
    connections::spawn_rechecks(
        connections.clone(),
        model.clone(),
        policy::L4Policy {
            root_namespace: settings.tunnel.root_namespace.clone(),
        },
    );
    // A pod's connections out of the mesh leave from its own namespace, as the pod.
    let namespaces = redirect::netns::PodNamespaces::default();
    let egress = upstream::Egress {
        connect_timeout: Duration::from_secs(5),
        namespaces: namespaces.clone(),
    };
    let tunnel = tunnel::start(
        &settings,
        model.clone(),
        metrics.clone(),
        egress,
        to_pods.clone(),
        connections.clone(),
        stop_rx.clone(),
    )
    .await?;

    let mut datapath = Datapath::load(&settings)?;
    // Parsing and loading the eBPF object is the agent's largest burst of memory.
    release_freed_memory();
    datapath.set_pod_namespaces(namespaces);
    if let Some(logger) = datapath.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let plaintext = Arc::new(plaintext::PlaintextInbound {
        model: model.clone(),
        trust_domain: settings.tunnel.trust_domain.clone(),
        direct: to_pods,
        metrics: metrics.clone(),
        policy: policy::L4Policy {
            root_namespace: settings.tunnel.root_namespace.clone(),
        },
        connections: connections.clone(),
    });
    datapath.set_plaintext_server(Arc::new(move |listener, pod_ip| {
        plaintext.serve(listener, pod_ip)
    }));
    let maps = datapath.shared();
    let outbound_live = handover::Live::default();
    match tunnel {
        Some(upstream) => {
            let trust_domain = Some(settings.tunnel.trust_domain.clone());
            let mut outbound = Outbound::new(
                maps.clone(),
                upstream,
                model.clone(),
                metrics.clone(),
                trust_domain,
            );
            outbound.live = outbound_live.clone();
            tokio::spawn(Arc::new(outbound).serve(outbound_listener, stop_rx.clone()));
        }
        None => {
            tracing::warn!(
                "no --ca-address: captured connections are forwarded in PLAINTEXT, without identities"
            );
            let mut outbound =
                Outbound::new(maps.clone(), direct, model.clone(), metrics.clone(), None);
            outbound.live = outbound_live.clone();
            tokio::spawn(Arc::new(outbound).serve(outbound_listener, stop_rx.clone()));
        }
    }
    let mut registry = Registry::default();
    metrics.register(&mut registry, maps.clone());
    registry.register(
        "weft_connections_closed_by_policy",
        "Established connections closed because a new policy denies them, by the DENY policy (or - when no ALLOW matches any more)",
        connections.closed_by_policy.clone(),
    );
    registry.register(
        "weft_connections_refused_by_limit",
        "Connections refused because the destination pod (limit=pod) or the agent (limit=node) carried as many as its limit allows",
        connections.refused_by_limit.clone(),
    );
    let dump = Arc::new(RwLock::new(Dump {
        node: settings.node_name.clone(),
        agent_ip: Some(settings.agent_ip),
        ..Dump::default()
    }));
    serve_http(
        admin_listener,
        admin::admin_handler(dump.clone(), maps),
        stop_rx.clone(),
    );
    serve_http(
        metrics_listener,
        admin::metrics_handler(Arc::new(registry)),
        stop_rx.clone(),
    );
    // Ready once the programs are loaded and the tunnel is up: both happened above.
    let (health, health_service) = weft_mesh::admin::health();
    // `/healthz/pod/<ip>`: whether the pod's hooks are all attached (`weft-agent await-pod`).
    let pods = dump.clone();
    let ready: weft_mesh::admin::Handler = Arc::new(move |path| match path {
        "/healthz/ready" | "/healthz" => weft_mesh::admin::Reply::text(200, "ready\n"),
        _ => match path.strip_prefix("/healthz/pod/") {
            Some(ip) => pod_readiness(&pods, ip),
            None => weft_mesh::admin::Reply::not_found(),
        },
    });
    let mut stop = stop_rx;
    tokio::spawn(weft_mesh::admin::serve_ready(
        ready_listener,
        ready,
        health_service,
        async move {
            let _ = stop.changed().await;
        },
    ));
    weft_mesh::admin::set_serving(&health, "weft-agent", true).await;
    tracing::info!(node = %settings.node_name, outbound = %outbound_addr, "weft-agent running");

    let result = reconcile_until_signal(
        &settings,
        &mut datapath,
        model,
        config_errors,
        &metrics,
        &dump,
        &connections,
    )
    .await;
    tracing::info!("stopping");
    weft_mesh::admin::set_serving(&health, "weft-agent", false).await;
    let _ = stop_tx.send(true);
    if settings.keep_datapath_on_exit {
        tracing::info!("leaving the eBPF state pinned for the next agent to adopt");
        drop(datapath);
    } else {
        datapath.shutdown();
    }
    // The listeners are closed (a next agent's, bound beside them, takes the new
    // connections); what this agent carries runs on for the drain period.
    handover::drain(Duration::from_secs(settings.drain_seconds), || {
        outbound_live.count() + connections.len()
    })
    .await;
    result
}

/// Keeps the kernel's view of the node's pods in step with the configuration, until SIGTERM
/// or SIGINT.
async fn reconcile_until_signal(
    settings: &AgentSettings,
    datapath: &mut Datapath,
    mut model: weft_mesh::config::ModelReceiver,
    mut config_errors: weft_mesh::config::ErrorsReceiver,
    metrics: &Metrics,
    dump: &RwLock<Dump>,
    connections: &connections::Connections,
) -> anyhow::Result<()> {
    let policy = policy::L4Policy {
        root_namespace: settings.tunnel.root_namespace.clone(),
    };
    let mut decided_epoch = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    loop {
        let current = model.borrow_and_update().clone();
        datapath.reconcile(&current, &settings.node_name, &policy);
        // A new state may deny connections the kernel carries between pods of this node.
        if current.epoch() != decided_epoch {
            decided_epoch = current.epoch();
            let ended = datapath.revoke_direct(
                &current,
                &settings.node_name,
                &settings.tunnel.trust_domain,
                &policy,
                connections,
            );
            if ended > 0 {
                tracing::info!(ended, "policy change closed same-node kernel connections");
            }
        }
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
        metrics.set_findings(current.findings());
        if let Ok(mut dump) = dump.write() {
            dump.pods = pods;
            dump.programs = datapath.program_ids();
            dump.config_errors = errors;
            dump.findings = current.findings().iter().map(ToString::to_string).collect();
        }
        tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            _ = model.changed() => {}
            _ = config_errors.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

/// The listener every captured connection of the node's pods lands on. Its accept queue
/// is as long as the kernel allows (`net.core.somaxconn`, 4096 by default), not tokio's
/// 1024: a burst of connections while the agent is busy (or being replaced) then waits in
/// the queue instead of overflowing it. An overflowed handshake completes on the client's
/// side only, and a client that closes before the agent's side completes loses its
/// original-destination record (`agent-ebpf/src/capture.rs`).
/// Bound beside a previous agent's, which hands it over (`handover`).
fn bind_outbound(addr: SocketAddr) -> std::io::Result<TcpListener> {
    handover::listen_shared(addr, 4096)
}

async fn bind_http(port: u16) -> anyhow::Result<TcpListener> {
    bind_http_on(Ipv4Addr::UNSPECIFIED, port).await
}

async fn bind_http_on(ip: Ipv4Addr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((ip, port));
    handover::listen_shared(addr, 1024).with_context(|| format!("binding {addr}"))
}

fn serve_http(
    listener: TcpListener,
    handler: weft_mesh::admin::Handler,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(weft_mesh::admin::serve(listener, handler, async move {
        let _ = stop.changed().await;
    }));
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
