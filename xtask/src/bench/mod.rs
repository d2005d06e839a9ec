//! `cargo xtask bench <scenario> --json FILE`: figures from the lab, each against a direct
//! baseline measured in the same run (these machines are noisy, so only ratios travel).
//!
//! `capture`: pods in a plain namespace (direct) and in an ambient one (captured, mesh), on
//! the same node and across nodes; throughput with 128 KiB and 1 KiB writes, and 1-byte
//! request/response latency. Each figure is the median of several interleaved runs.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::{Map, Value};
use weft_lab::{Lab, LabSpec};

use crate::{setup, workspace};

mod faults;
mod waypoint;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scenario {
    /// eBPF capture and the same-node splice (issue: foundation).
    Capture,
    /// The mutual-TLS tunnel across nodes: throughput, latency, connection rate, agent memory.
    Tunnel,
    /// Unary gRPC direct, through L4 only, and through the waypoint.
    Waypoint,
    /// Calls through the waypoint while a backend, an agent or a waypoint fails (issue 15).
    Faults,
    /// The compiled configuration at 10,000 pods (no root, no lab).
    Scale,
}

/// Interleaved rounds per figure (WEFT_BENCH_ROUNDS overrides, for quick looks).
pub(crate) fn rounds() -> usize {
    std::env::var("WEFT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3)
}
const SECONDS: &str = "3";

/// `build`: extra arguments for the build of the binaries (features to compare).
pub fn run(scenario: Scenario, json: Option<&Path>, build: &[String]) -> Result<()> {
    if let Scenario::Scale = scenario {
        return write(scale()?, json);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("benchmarks run in the lab and need root");
    }
    setup::run()?;
    workspace::build_with(build)?;
    let figures = match scenario {
        Scenario::Capture => capture()?,
        Scenario::Tunnel => tunnel()?,
        Scenario::Waypoint => waypoint::run()?,
        Scenario::Faults => faults::run()?,
        Scenario::Scale => scale()?,
    };
    write(figures, json)
}

/// Prints the figures and writes them to `json`, one flat object.
fn write(figures: Map<String, Value>, json: Option<&Path>) -> Result<()> {
    let text = serde_json::to_string_pretty(&Value::Object(figures))?;
    println!("{text}");
    if let Some(path) = json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The compiled state at scale: `mesh/src/bin/scale-bench.rs`, in a process of its own so
/// that its resident memory is the state's.
fn scale() -> Result<Map<String, Value>> {
    workspace::cargo(&[
        "build",
        "--release",
        "-p",
        "weft-mesh",
        "--bin",
        "scale-bench",
    ])?;
    let output = std::process::Command::new(workspace::bin_dir().join("scale-bench"))
        .output()
        .context("running scale-bench")?;
    if !output.status.success() {
        bail!(
            "scale-bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    match serde_json::from_slice(&output.stdout)? {
        Value::Object(figures) => Ok(figures),
        other => bail!("scale-bench printed {other}, not an object"),
    }
}

fn capture_spec() -> LabSpec {
    LabSpec::new("wl-bench", 2)
        .with_namespace("plain", false)
        .with_namespace("mesh", true)
        .with_pod("plain-a", "plain", 1, &[])
        .with_pod("plain-b", "plain", 1, &[])
        .with_pod("plain-c", "plain", 2, &[])
        .with_pod("mesh-a", "mesh", 1, &[])
        .with_pod("mesh-b", "mesh", 1, &[])
        .with_pod("mesh-c", "mesh", 2, &[])
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn capture() -> Result<Map<String, Value>> {
    let mut lab = Lab::up(capture_spec())?;
    lab.start_agents()?;
    let mut servers = Vec::new();
    for pod in ["plain-b", "plain-c", "mesh-b", "mesh-c"] {
        servers.push(lab.spawn(pod, "labtool", &["discard", "--listen", "0.0.0.0:5201"])?);
        servers.push(lab.spawn(pod, "labtool", &["echo", "--listen", "0.0.0.0:5202"])?);
    }
    std::thread::sleep(Duration::from_millis(300));

    // (key, client pod, server pod, write size)
    let tput_cases = [
        ("direct_same_node_gbps", "plain-a", "plain-b", "131072"),
        ("mesh_same_node_gbps", "mesh-a", "mesh-b", "131072"),
        ("direct_same_node_1k_gbps", "plain-a", "plain-b", "1024"),
        ("mesh_same_node_1k_gbps", "mesh-a", "mesh-b", "1024"),
        ("direct_cross_node_gbps", "plain-a", "plain-c", "131072"),
        ("mesh_cross_node_gbps", "mesh-a", "mesh-c", "131072"),
    ];
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds() {
        eprintln!("==> round {round} of {}", rounds());
        for (key, client, server, write_size) in tput_cases {
            let gbps = tput(&lab, client, server, ["--write-size", write_size])?;
            eprintln!("    {key}: {gbps:.2}");
            samples.entry(key).or_default().push(gbps);
        }
        for (prefix, client, server) in [
            ("direct", "plain-a", "plain-b"),
            ("mesh", "mesh-a", "mesh-b"),
        ] {
            let out = rr(&lab, client, server)?;
            for pct in ["p50", "p99"] {
                let key: &'static str = match (prefix, pct) {
                    ("direct", "p50") => "direct_rr_p50_us",
                    ("direct", _) => "direct_rr_p99_us",
                    ("mesh", "p50") => "mesh_rr_p50_us",
                    _ => "mesh_rr_p99_us",
                };
                let value = out[format!("{pct}_us")]
                    .as_f64()
                    .context("rr printed no percentile")?;
                eprintln!("    {key}: {value:.1}");
                samples.entry(key).or_default().push(value);
            }
        }
    }
    let counters = lab.config_dump(1)?["ebpf_counters"].clone();
    drop(servers);
    lab.down()?;

    let mut figures = Map::new();
    for (key, values) in samples {
        figures.insert(key.to_string(), Value::from(round3(median(values))));
    }
    let ratio = |a: &str, b: &str| -> Option<f64> {
        Some(round3(
            figures.get(a)?.as_f64()? / figures.get(b)?.as_f64()?,
        ))
    };
    let ratios = [
        (
            "mesh_same_node_ratio",
            ratio("mesh_same_node_gbps", "direct_same_node_gbps"),
        ),
        (
            "mesh_same_node_1k_ratio",
            ratio("mesh_same_node_1k_gbps", "direct_same_node_1k_gbps"),
        ),
        (
            "mesh_cross_node_ratio",
            ratio("mesh_cross_node_gbps", "direct_cross_node_gbps"),
        ),
        (
            "mesh_rr_p50_ratio",
            ratio("mesh_rr_p50_us", "direct_rr_p50_us"),
        ),
    ];
    for (key, value) in ratios {
        if let Some(value) = value {
            figures.insert(key.to_string(), Value::from(value));
        }
    }
    // Evidence that the mesh runs took the captured path: bytes the kernel spliced on node 1.
    figures.insert(
        "node1_spliced_bytes".into(),
        counters["spliced_bytes"].clone(),
    );
    figures.insert(
        "node1_redirected_connections".into(),
        counters["redirected"].clone(),
    );
    Ok(figures)
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn tunnel_spec() -> LabSpec {
    LabSpec::new("wl-bench-tunnel", 2)
        .with_namespace("plain", false)
        .with_namespace("mesh", true)
        .with_pod("plain-a", "plain", 1, &[])
        .with_pod("plain-c", "plain", 2, &[])
        .with_pod("mesh-a", "mesh", 1, &[])
        .with_pod("mesh-c", "mesh", 2, &[])
}

/// A field of /proc/PID/status in MiB (VmRSS: resident now; VmHWM: the peak so far).
fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

fn hwm_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

/// `labtool tput` from `client` to `server`'s discard port, with `option` (its flag and
/// value): Gbit/s.
fn tput(lab: &Lab, client: &str, server: &str, option: [&str; 2]) -> Result<f64> {
    let target = format!("{}:5201", lab.pod(server).ip);
    let out = lab.run_json(
        client,
        "labtool",
        &[
            "tput",
            "--connect",
            &target,
            "--seconds",
            SECONDS,
            option[0],
            option[1],
        ],
        Duration::from_secs(60),
    )?;
    out["gbps"].as_f64().context("tput printed no gbps")
}

/// `labtool rr` (one-byte request/response) against `server`'s echo port.
fn rr(lab: &Lab, client: &str, server: &str) -> Result<Value> {
    let target = format!("{}:5202", lab.pod(server).ip);
    lab.run_json(
        client,
        "labtool",
        &[
            "rr",
            "--connect",
            &target,
            "--count",
            "20000",
            "--warmup",
            "2000",
        ],
        Duration::from_secs(60),
    )
}

/// `labtool conns` (new connections, 32 at a time) against `server`'s echo port.
fn churn(lab: &Lab, client: &str, server: &str) -> Result<Value> {
    let target = format!("{}:5202", lab.pod(server).ip);
    lab.run_json(
        client,
        "labtool",
        &[
            "conns",
            "--connect",
            &target,
            "--seconds",
            SECONDS,
            "--concurrency",
            "32",
        ],
        Duration::from_secs(60),
    )
}

/// The agents' memory after bulk traffic, without a restart (issue 16): one more pass of
/// every mesh workload (1 and 4 streams, request/response, connection churn) on the
/// agents as they are, then the larger of the two agents' resident memory at once and
/// after 30 s idle, in MB; and of that, after the idle, the anonymous part (the heap; the
/// rest is the binary's code and data, mapped from its file).
fn memory_after_bulk(lab: &Lab) -> Result<(f64, f64, f64)> {
    for streams in ["1", "4"] {
        tput(lab, "mesh-a", "mesh-c", ["--streams", streams])?;
    }
    rr(lab, "mesh-a", "mesh-c")?;
    churn(lab, "mesh-a", "mesh-c")?;
    let rss = || {
        (1..=2)
            .filter_map(|n| lab.agent_pid(n))
            .filter_map(rss_mb)
            .fold(0.0f64, f64::max)
    };
    let after = rss();
    std::thread::sleep(Duration::from_secs(30));
    let idle = rss();
    let anon = (1..=2)
        .filter_map(|n| lab.agent_pid(n))
        .filter_map(|pid| status_mb(pid, "RssAnon:"))
        .fold(0.0f64, f64::max);
    eprintln!(
        "    agent_rss_after_bulk_mb: {after:.1}, after 30 s idle: {idle:.1} (anonymous {anon:.1})"
    );
    Ok((after, idle, anon))
}

fn tunnel() -> Result<Map<String, Value>> {
    let mut lab = Lab::up(tunnel_spec())?;
    lab.start_agents()?;
    let mut servers = Vec::new();
    for pod in ["plain-c", "mesh-c"] {
        servers.push(lab.serve(pod, "labtool", &["discard", "--listen", "0.0.0.0:5201"])?);
        servers.push(lab.serve(pod, "labtool", &["echo", "--listen", "0.0.0.0:5202"])?);
    }
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut peak_rss = 0.0f64;
    for round in 1..=rounds() {
        eprintln!("==> round {round} of {}", rounds());
        for (key, client, server, streams) in [
            ("direct_cross_node_gbps", "plain-a", "plain-c", "1"),
            ("mesh_cross_node_gbps", "mesh-a", "mesh-c", "1"),
            ("direct_cross_node_4s_gbps", "plain-a", "plain-c", "4"),
            ("mesh_cross_node_4s_gbps", "mesh-a", "mesh-c", "4"),
        ] {
            let gbps = tput(&lab, client, server, ["--streams", streams])?;
            eprintln!("    {key}: {gbps:.2}");
            samples.entry(key.to_string()).or_default().push(gbps);
        }
        for (prefix, client, server) in [
            ("direct", "plain-a", "plain-c"),
            ("mesh", "mesh-a", "mesh-c"),
        ] {
            let out = rr(&lab, client, server)?;
            for (pct, key) in [
                ("p50", format!("{prefix}_rr_p50_us")),
                ("p99", format!("{prefix}_rr_p99_us")),
            ] {
                let value = out[format!("{pct}_us")]
                    .as_f64()
                    .context("rr printed no percentile")?;
                eprintln!("    {key}: {value:.1}");
                samples.entry(key).or_default().push(value);
            }
        }
        for (key, client, server) in [
            ("direct_new_conns_per_s", "plain-a", "plain-c"),
            ("mesh_new_conns_per_s", "mesh-a", "mesh-c"),
        ] {
            // Memory under this load, not what the bulk rounds left behind: fresh agents.
            let agents: Vec<u32> = if key.starts_with("mesh") {
                for node in 1..=2 {
                    lab.stop_agent(node)?;
                    lab.start_agent(node)?;
                }
                lab.wait_enrolled(1, 1, Duration::from_secs(20))?;
                lab.wait_enrolled(2, 1, Duration::from_secs(20))?;
                (1..=2).filter_map(|n| lab.agent_pid(n)).collect()
            } else {
                Vec::new()
            };
            // Sample the agents' memory while the connections churn.
            let out = std::thread::scope(|scope| {
                let run = scope.spawn(|| churn(&lab, client, server));
                while !run.is_finished() {
                    for pid in &agents {
                        peak_rss = peak_rss.max(rss_mb(*pid).unwrap_or(0.0));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                run.join()
                    .map_err(|_| anyhow::anyhow!("conns thread panicked"))?
            })?;
            let rate = out["per_s"].as_f64().context("conns printed no rate")?;
            eprintln!("    {key}: {rate:.0} (errors {})", out["errors"]);
            samples.entry(key.to_string()).or_default().push(rate);
        }
    }
    let pool = lab.agent_get(1, 15020, "/metrics")?.1;
    let (after_bulk, idle_after_bulk, anon_idle) = memory_after_bulk(&lab)?;
    // The highest resident memory of either agent over its life (the last, fresh pair).
    let peak_hwm = (1..=2)
        .filter_map(|n| lab.agent_pid(n))
        .filter_map(hwm_mb)
        .fold(0.0f64, f64::max);
    drop(servers);
    lab.down()?;

    let mut figures = Map::new();
    for (key, values) in samples {
        figures.insert(key, Value::from(round3(median(values))));
    }
    figures.insert("agent_rss_mb".into(), Value::from(round3(peak_rss)));
    figures.insert("agent_peak_rss_mb".into(), Value::from(round3(peak_hwm)));
    figures.insert(
        "agent_rss_after_bulk_mb".into(),
        Value::from(round3(after_bulk)),
    );
    figures.insert(
        "agent_rss_idle_after_bulk_mb".into(),
        Value::from(round3(idle_after_bulk)),
    );
    figures.insert(
        "agent_rss_anon_idle_after_bulk_mb".into(),
        Value::from(round3(anon_idle)),
    );
    let ratio = |a: &str, b: &str| -> Option<f64> {
        Some(round3(
            figures.get(a)?.as_f64()? / figures.get(b)?.as_f64()?,
        ))
    };
    for (key, value) in [
        (
            "mesh_cross_node_ratio",
            ratio("mesh_cross_node_gbps", "direct_cross_node_gbps"),
        ),
        (
            "mesh_cross_node_4s_ratio",
            ratio("mesh_cross_node_4s_gbps", "direct_cross_node_4s_gbps"),
        ),
        (
            "mesh_rr_p50_ratio",
            ratio("mesh_rr_p50_us", "direct_rr_p50_us"),
        ),
    ] {
        if let Some(value) = value {
            figures.insert(key.to_string(), Value::from(value));
        }
    }
    // Evidence the mesh runs used the tunnel: TLS connections the pool dialled on node 1.
    let dialled = pool
        .lines()
        .find_map(|l| {
            l.strip_prefix("weft_tunnel_pool_connections_opened_total ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    figures.insert(
        "node1_tunnel_connections_opened".into(),
        Value::from(dialled),
    );
    Ok(figures)
}
