//! `bench faults`: what the clients see when something breaks. A client on node 1 makes
//! 8,000 unary calls at 1,000/s (at most 32 at once, over one HTTP/2 connection) through the
//! waypoint to three backends (b1 on node 1, b2 and b3 on node 2), no DestinationRule, and
//! 2 s in one fault happens:
//! - `backend_killed`: b2 gets SIGKILL;
//! - `agent_restarted`: node 2's agent gets SIGKILL and is started again 1 s later;
//! - `waypoint_restarted`: the waypoint (one replica) gets SIGKILL and is started again 1 s
//!   later;
//! - `waypoint_replica_killed`: of a waypoint of two replicas (node 1 and node 2), the one
//!   that serves the client gets SIGKILL;
//! - `agent_upgrade`: node 2's agent is upgraded the way the DaemonSet of `deploy/` does it
//!   (`maxSurge: 1`: the new agent starts beside the old one, binds its listeners beside
//!   the old one's and adopts the pinned datapath; then the old one gets SIGTERM, leaves
//!   the datapath pinned and drains), while a pod on node 2 holds one TCP connection across
//!   nodes for 60 s and opens new ones, 4 at a time.
//!
//! Each scenario reports `<scenario>_ok_share` (calls OK of 8,000) and the count of every
//! other status the client saw, `<scenario>_<status>` (`unavailable`, ...; `unknown` always,
//! 0 when there was none); the
//! upgrade also `agent_upgrade_refused_connections` (new connections that failed) and
//! `agent_upgrade_stream_survived` (1 when the 60 s connection lived to its end),
//! `agent_upgrade_old_agent_drained` (1 when the old agent then exited by itself) and
//! `agent_upgrade_cut_at_drain_end` (the connections it still carried when its drain period
//! was over, which ended with it).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use weft_lab::{Background, Guarded, Lab, LabSpec, ServiceSpec};

const CALLS: u64 = 8000;
const FAULT_AT: Duration = Duration::from_secs(2);
const SERVICE: &str = "http://10.96.0.30:50051";
const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
const STREAM_SECONDS: &str = "60";

fn spec(name: &str) -> LabSpec {
    LabSpec::new(name, 2)
        .with_namespace("app", true)
        .with_waypoint("wp", "app", 1)
        .with_pod("client", "app", 1, &[])
        .with_pod("b1", "app", 1, &[("app", "whoami")])
        .with_pod("b2", "app", 2, &[("app", "whoami")])
        .with_pod("b3", "app", 2, &[("app", "whoami")])
        .with_pod("echo", "app", 1, &[])
        .with_pod("holder", "app", 2, &[])
        .with_service(ServiceSpec::whoami(
            "whoami",
            "app",
            [10, 96, 0, 30],
            &[("weft.dev/use-waypoint", "wp")],
        ))
}

fn start_calls(lab: &Lab) -> Result<Background> {
    let calls = CALLS.to_string();
    lab.background(
        "client",
        "uuid-client",
        &[
            "--connect",
            SERVICE,
            "--calls",
            &calls,
            "--rate",
            "1000",
            "--concurrency",
            "32",
            "--allow-errors",
        ],
    )
}

fn serve_backends(lab: &Lab) -> Result<Vec<Guarded>> {
    let servers = BACKENDS
        .iter()
        .map(|pod| lab.serve(pod, "uuid-server", &["--listen", "0.0.0.0:50051"]))
        .collect::<Result<Vec<_>>>()?;
    // Warm: the waypoint holds a connection to each backend, the client one to the mesh.
    let warm = lab.run_json(
        "client",
        "uuid-client",
        &["--connect", SERVICE, "--calls", "30", "--allow-errors"],
        Duration::from_secs(30),
    )?;
    if warm["ok"].as_u64() != Some(30) {
        bail!("the warm-up calls failed: {warm}");
    }
    Ok(servers)
}

/// `<scenario>_ok_share` (to four decimals: 0.9995 is 4 calls lost) and
/// `<scenario>_<status>` for each other status seen, and `<scenario>_unknown` always.
fn record(figures: &mut Map<String, Value>, scenario: &str, report: &Value) {
    eprintln!("{scenario}: {report}");
    let ok = report["ok"].as_u64().unwrap_or(0);
    figures.insert(
        format!("{scenario}_ok_share"),
        ((ok as f64 / CALLS as f64 * 1e4).round() / 1e4).into(),
    );
    // Written when there was none too: the target is a count of 0.
    figures.insert(format!("{scenario}_unknown"), 0.into());
    for (status, n) in report["by_status"].as_object().into_iter().flatten() {
        if status != "OK" {
            let key = format!("{scenario}_{}", snake(status));
            figures.insert(key, n.as_u64().unwrap_or(0).into());
        }
    }
}

/// `DeadlineExceeded` → `deadline_exceeded`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The calls, with `fault` done `FAULT_AT` into them; the client's report.
fn under_fault(lab: &mut Lab, fault: impl FnOnce(&mut Lab) -> Result<()>) -> Result<Value> {
    let calls = start_calls(lab)?;
    std::thread::sleep(FAULT_AT);
    fault(lab)?;
    calls.report(Duration::from_secs(60))
}

fn kill_waypoint_pod(lab: &Lab, pod: &str) -> Result<()> {
    let pid = lab.waypoint_pid(pod).context("the waypoint runs")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .context("SIGKILL to the waypoint")
}

pub fn run() -> Result<Map<String, Value>> {
    let mut figures = Map::new();
    let mut lab = Lab::up(spec("wl-bench-faults"))?;
    lab.start_agents()?;
    lab.start_waypoint("wp", &[])?;

    let mut servers = serve_backends(&lab)?;
    let victim = servers.remove(1);
    let report = under_fault(&mut lab, |_| {
        victim.kill();
        Ok(())
    })?;
    record(&mut figures, "backend_killed", &report);
    drop(servers);

    let servers = serve_backends(&lab)?;
    let report = under_fault(&mut lab, |lab| {
        lab.kill_agent(2)?;
        std::thread::sleep(Duration::from_secs(1));
        lab.start_agent(2)
    })?;
    record(&mut figures, "agent_restarted", &report);
    drop(servers);

    let servers = serve_backends(&lab)?;
    let report = under_fault(&mut lab, |lab| {
        kill_waypoint_pod(lab, "wp")?;
        lab.kill_waypoint("wp");
        std::thread::sleep(Duration::from_secs(1));
        lab.start_waypoint("wp", &[])
    })?;
    record(&mut figures, "waypoint_restarted", &report);
    drop(servers);

    // The running agent of node 2 takes the DaemonSet's flags first.
    lab.set_agent_args(2, &["--keep-datapath-on-exit", "--drain-seconds", "90"]);
    lab.stop_agent(2)?;
    lab.start_agent(2)?;
    lab.wait_enrolled(2, lab.expected_enrolled(2), Duration::from_secs(20))?;
    let servers = serve_backends(&lab)?;
    let _echo = lab.serve("echo", "labtool", &["echo", "--listen", "0.0.0.0:5202"])?;
    let echo = format!("{}:5202", lab.pod("echo").ip);
    let stream = lab.background(
        "holder",
        "labtool",
        &["hold", "--connect", &echo, "--seconds", STREAM_SECONDS],
    )?;
    let started = Instant::now();
    let new_connections = lab.background(
        "holder",
        "labtool",
        &[
            "conns",
            "--connect",
            &echo,
            "--seconds",
            "8",
            "--concurrency",
            "4",
        ],
    )?;
    // As the DaemonSet does it (deploy/agent/20-daemonset.yaml, maxSurge: 1): the new agent
    // starts beside the old one and adopts the pinned datapath; then the old one gets
    // SIGTERM, leaves the datapath pinned (WEFT_KEEP_DATAPATH_ON_EXIT) and drains for up
    // to WEFT_DRAIN_SECONDS (90).
    let report = under_fault(&mut lab, |lab| lab.upgrade_agent(2))?;
    record(&mut figures, "agent_upgrade", &report);
    let conns = new_connections.report(Duration::from_secs(30))?;
    eprintln!("new connections over the upgrade: {conns}");
    figures.insert(
        "agent_upgrade_refused_connections".into(),
        conns["errors"].as_u64().unwrap_or(0).into(),
    );
    figures.insert(
        "agent_upgrade_new_connections".into(),
        conns["conns"].as_u64().unwrap_or(0).into(),
    );
    let held = stream.report(Duration::from_secs(90))?;
    eprintln!(
        "the 60 s connection, after {:.0} s: {held}",
        started.elapsed().as_secs_f64()
    );
    let survived = held["ended"] == "timeout" && held["held_ms"].as_u64() >= Some(59_000);
    figures.insert(
        "agent_upgrade_stream_survived".into(),
        u64::from(survived).into(),
    );
    // The old agent leaves by itself when its last connection has ended or its drain is
    // over (the waypoint's pooled connections to b2 and b3 keep it to the end: nothing
    // tells the waypoint to move them yet); it says how many it cut.
    let drained = lab.wait_drained(2, Duration::from_secs(60))?;
    figures.insert(
        "agent_upgrade_old_agent_drained".into(),
        u64::from(drained.success()).into(),
    );
    let cut = lab
        .agent_log(2)
        .lines()
        .filter(|l| l.contains("drain period over"))
        .filter_map(|l| l.split("connections=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>();
    figures.insert("agent_upgrade_cut_at_drain_end".into(), cut.into());
    drop(servers);
    lab.down()?;

    let mut lab = Lab::up(spec("wl-bench-faults2").with_waypoint_replica("wp-2", "wp", 2))?;
    lab.start_agents()?;
    lab.start_waypoint("wp", &[])?;
    lab.start_waypoint("wp-2", &[])?;
    let servers = serve_backends(&lab)?;
    let served = |lab: &Lab, pod: &str| -> Result<f64> {
        let (_, text) = lab.waypoint_get(pod, 15020, "/metrics")?;
        Ok(weft_lab::sum_series(&text, "istio_requests_total", &[]))
    };
    let victim = if served(&lab, "wp")? > 0.0 {
        "wp"
    } else {
        "wp-2"
    };
    let report = under_fault(&mut lab, |lab| kill_waypoint_pod(lab, victim))?;
    record(&mut figures, "waypoint_replica_killed", &report);
    drop(servers);
    lab.down()?;
    Ok(figures)
}
