//! `cargo xtask demo`: the main job, end to end.
//!
//! A two-node lab; a gRPC service (`whoami`, three replicas, each answering with its own UUID)
//! and a client pod, in an ambient namespace. The client's traffic is captured by the agents,
//! and their figures are shown. Every call of one HTTP/2 connection lands on one backend: that
//! is the problem the waypoint will fix, and the demo says so. Ctrl-C tears the lab down.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use weft_lab::{Lab, LabSpec, ServicePort, ServiceSpec};

use crate::{setup, workspace};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: std::ffi::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CALLS: u32 = 300;

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the lab has been torn down");
    }
    Ok(())
}

pub fn spec() -> LabSpec {
    LabSpec::new("wl-demo", 2)
        .with_namespace("demo", true)
        .with_pod("whoami-1", "demo", 1, &[("app", "whoami")])
        .with_pod("whoami-2", "demo", 2, &[("app", "whoami")])
        .with_pod("whoami-3", "demo", 2, &[("app", "whoami")])
        .with_pod("client", "demo", 1, &[("app", "client")])
        .with_service(ServiceSpec {
            name: "whoami".into(),
            namespace: "demo".into(),
            cluster_ip: SERVICE_IP,
            selector: vec![("app".into(), "whoami".into())],
            ports: vec![ServicePort {
                name: "grpc-api".into(),
                port: 50051,
                target_port: 50051,
                app_protocol: Some("grpc".into()),
            }],
        })
}

pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("cargo xtask demo needs root: it loads eBPF programs and builds network namespaces");
    }
    setup::run()?;
    workspace::build()?;
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGINT, &action)?;
        sigaction(Signal::SIGTERM, &action)?;
    }

    println!(
        "\n==> Bringing up a lab: 2 nodes, namespace `demo` labelled weft.dev/dataplane-mode=ambient"
    );
    let mut lab = Lab::up(spec())?;
    let result = show(&mut lab);
    println!("\n==> Tearing the lab down");
    lab.down()?;
    result
}

/// One Istio TCP series, shortened to the labels that tell the story.
fn summarise(line: &str) -> String {
    let label = |name: &str| -> String {
        let key = format!("{name}=\"");
        line.split_once(key.as_str())
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_string())
            .unwrap_or_default()
    };
    let value = line.rsplit(' ').next().unwrap_or("?");
    format!(
        "{value} connection(s) reported by the {}: {} -> {} ({}), security: {}",
        label("reporter"),
        label("source_principal"),
        label("destination_workload"),
        label("destination_service"),
        label("connection_security_policy"),
    )
}

fn show(lab: &mut Lab) -> Result<()> {
    lab.start_agents()?;
    for node in 1..=2 {
        let dump = lab.config_dump(node)?;
        println!(
            "    node-{node}: weft-agent enrolled {:?}",
            weft_lab::enrolled_pods(&dump)
        );
    }
    check_interrupt()?;
    let mut servers = Vec::new();
    for pod in ["whoami-1", "whoami-2", "whoami-3"] {
        servers.push(lab.spawn(pod, "uuid-server", &["--listen", "0.0.0.0:50051"])?);
    }
    std::thread::sleep(Duration::from_millis(500));

    let target = format!("http://{SERVICE_IP}:50051");
    println!(
        "\n==> The client pod calls the `whoami` Service ({target}), three times over a new connection each"
    );
    let mut backends_seen = BTreeMap::new();
    for round in 1..=3 {
        check_interrupt()?;
        let reply = lab.run_json(
            "client",
            "uuid-client",
            &[
                "--connect",
                &target,
                "--calls",
                &CALLS.to_string(),
                "--concurrency",
                "8",
            ],
            Duration::from_secs(60),
        )?;
        let by_pod = reply["by_pod"].as_object().cloned().unwrap_or_default();
        let uuids: Vec<String> = reply["by_uuid"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let pods: Vec<String> = by_pod
            .iter()
            .map(|(pod, n)| format!("{pod} ({n} calls)"))
            .collect();
        println!(
            "    connection {round}: {} calls, {} errors; answered by {} with UUID {}",
            reply["calls"],
            reply["errors"],
            pods.join(", "),
            uuids.join(", ")
        );
        for (pod, n) in by_pod {
            *backends_seen.entry(pod).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }

    println!("\n==> What the agents saw");
    for node in 1..=2 {
        let dump = lab.config_dump(node)?;
        let c = &dump["ebpf_counters"];
        println!(
            "    node-{node}: {} connect() calls captured and sent to the agent, {} same-node sockets spliced, {} bytes spliced in the kernel; Istio's metrics:",
            c["redirected"], c["sock_added"], c["spliced_bytes"]
        );
        let (_, metrics) = lab.agent_get(node, 15020, "/metrics")?;
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        {
            println!("      {}", summarise(line));
        }
    }

    println!("\n==> The problem Weft's waypoint will fix");
    println!(
        "    Each HTTP/2 connection carried all {CALLS} of its gRPC calls to ONE backend: an L4 balancer\n    \
         (kube-proxy, or this agent today) picks a backend per connection, not per call.\n    \
         Backends used across the three connections: {backends_seen:?}.\n    \
         The waypoint (next step) splits the streams, so that one connection's calls spread over all three."
    );
    drop(servers);
    Ok(())
}
