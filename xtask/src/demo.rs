//! `cargo xtask demo`: the main job, end to end.
//!
//! A two-node lab; a gRPC service (three replicas, each answering with its own UUID), a
//! client pod and a waypoint, in an ambient namespace. The same backends are reachable as two
//! Services: `whoami-l4` (agents only, L4) and `whoami` (bound to the waypoint). Over L4,
//! every call of one HTTP/2 connection lands on one backend; through the waypoint, one
//! connection's calls share all three. The agents' and the waypoint's figures are shown.
//! Ctrl-C tears the lab down.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use weft_lab::{Lab, LabSpec, ServiceSpec};

use crate::{setup, workspace};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: std::ffi::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const L4_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
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
        .with_waypoint("waypoint", "demo", 1)
        .with_pod("whoami-1", "demo", 1, &[("app", "whoami")])
        .with_pod("whoami-2", "demo", 2, &[("app", "whoami")])
        .with_pod("whoami-3", "demo", 2, &[("app", "whoami")])
        .with_pod("client", "demo", 1, &[("app", "client")])
        .with_service(ServiceSpec::whoami(
            "whoami",
            "demo",
            SERVICE_IP.octets(),
            &[("weft.dev/use-waypoint", "waypoint")],
        ))
        .with_service(ServiceSpec::whoami(
            "whoami-l4",
            "demo",
            L4_IP.octets(),
            &[],
        ))
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

    let l4 = format!("http://{L4_IP}:50051");
    println!(
        "\n==> L4 only: the client calls `whoami-l4` ({l4}), three times over a new connection each"
    );
    let mut backends_seen = BTreeMap::new();
    for round in 1..=3 {
        check_interrupt()?;
        let reply = call(lab, &l4)?;
        println!("    connection {round}: {}", spread(&reply));
        for (pod, n) in reply["by_pod"].as_object().cloned().unwrap_or_default() {
            *backends_seen.entry(pod).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }
    println!(
        "    Each connection's {CALLS} calls went to ONE backend: an L4 balancer picks a backend per\n    \
         connection, not per call. Backends used across the three connections: {backends_seen:?}."
    );

    lab.start_waypoint("waypoint", &[])?;
    let target = format!("http://{SERVICE_IP}:50051");
    println!(
        "\n==> Through the waypoint: `whoami` ({target}) is labelled weft.dev/use-waypoint=waypoint"
    );
    for round in 1..=2 {
        check_interrupt()?;
        let reply = call(lab, &target)?;
        println!("    connection {round}: {}", spread(&reply));
    }
    println!(
        "    One HTTP/2 connection, and its calls shared by all three backends: the waypoint\n    \
         splits the streams and balances each call (round robin here; see DestinationRule)."
    );
    let (_, metrics) = lab.waypoint_get("waypoint", 15020, "/metrics")?;
    println!("    The waypoint's attempts per backend:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("weft_waypoint_upstream_attempts_total{"))
    {
        println!("      {line}");
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

    drop(servers);
    Ok(())
}

/// 300 calls over one new connection from the client pod.
fn call(lab: &Lab, target: &str) -> Result<serde_json::Value> {
    lab.run_json(
        "client",
        "uuid-client",
        &[
            "--connect",
            target,
            "--calls",
            &CALLS.to_string(),
            "--concurrency",
            "8",
        ],
        Duration::from_secs(60),
    )
}

/// "300 calls, 0 errors; whoami-1: 100 (uuid ...), ..."
fn spread(reply: &serde_json::Value) -> String {
    let pods: Vec<String> = reply["by_pod"]
        .as_object()
        .map(|m| m.iter().map(|(pod, n)| format!("{pod} {n}")).collect())
        .unwrap_or_default();
    let uuids: Vec<String> = reply["by_uuid"]
        .as_object()
        .map(|m| m.keys().map(|u| u[..8.min(u.len())].to_string()).collect())
        .unwrap_or_default();
    format!(
        "{} calls, {} errors; answered by {} (UUIDs {}...)",
        reply["calls"],
        reply["errors"],
        pods.join(", "),
        uuids.join("..., ")
    )
}
