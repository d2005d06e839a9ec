//! `bench waypoint`: unary gRPC with 1 KiB requests and replies, over one HTTP/2 connection
//! from a client on node 1, measured three ways in one run, interleaved:
//! - direct: a client outside the mesh calls a server outside the mesh (pod to pod);
//! - l4: a meshed client calls a meshed Service without a waypoint (agents, HBONE);
//! - waypoint: the same through the waypoint, which balances each call over 3 backends;
//! - waypoint_authz: the same through a Service of the waypoint with a 20-rule
//!   AuthorizationPolicy attached, whose only matching rule is the last;
//! - haproxy: the anchor, HAProxy from Debian as a plain-text HTTP/2 balancer (`mode http`,
//!   `proto h2` on both sides, `balance roundrobin`, so each call is balanced on its own), on
//!   node 1 like the waypoint, from the plain client to three plain servers placed as the
//!   waypoint's are (one on node 1, two on node 2).
//!
//! Maximum rate at fixed concurrency for each, with the CPU that the balancer (HAProxy, or
//! the waypoint and both node agents) spent per call at that rate; latency at a fixed 1000
//! calls/s for direct and waypoint; and the waypoint's memory and CPU while it serves those
//! 1000 calls/s. Last, a churn phase creates and deletes 1,000 Services bound to the
//! waypoint, calling each while it exists, and reports the waypoint's memory and metric
//! series after it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use weft_lab::{Lab, LabSpec, ServiceSpec};

use super::{median, round3, rounds, rss_mb};

const CONCURRENCY: &str = "32";
const MAX_CALLS: &str = "20000";
const RATE: &str = "1000";
const RATE_CALLS: &str = "5000";
const IDLE: Duration = Duration::from_secs(3);

fn spec() -> LabSpec {
    LabSpec::new("wl-bench-wp", 2)
        .with_namespace("plain", false)
        .with_namespace("mesh", true)
        .with_pod("plain-client", "plain", 1, &[])
        .with_pod("plain-server", "plain", 2, &[("app", "whoami")])
        .with_pod("lb", "plain", 1, &[])
        .with_pod("p1", "plain", 1, &[("app", "whoami")])
        .with_pod("p2", "plain", 2, &[("app", "whoami")])
        .with_pod("p3", "plain", 2, &[("app", "whoami")])
        .with_waypoint("wp", "mesh", 1)
        .with_pod("client", "mesh", 1, &[])
        .with_pod("m1", "mesh", 1, &[("app", "whoami")])
        .with_pod("m2", "mesh", 2, &[("app", "whoami")])
        .with_pod("m3", "mesh", 2, &[("app", "whoami")])
        .with_service(ServiceSpec::whoami(
            "whoami",
            "mesh",
            [10, 96, 0, 20],
            &[("weft.dev/use-waypoint", "wp")],
        ))
        .with_service(ServiceSpec::whoami(
            "whoami-l4",
            "mesh",
            [10, 96, 0, 21],
            &[],
        ))
        .with_service(ServiceSpec::whoami(
            "whoami-authz",
            "mesh",
            [10, 96, 0, 22],
            &[("weft.dev/use-waypoint", "wp")],
        ))
}

/// An ALLOW policy of 20 rules on whoami-authz: 19 that the client's calls do not match
/// (other principals, namespaces, paths, methods and headers) and, last, one that does.
fn twenty_rule_policy() -> String {
    let mut rules = String::new();
    for i in 0..19 {
        rules.push_str(&match i % 4 {
            0 => format!(
                "  - from: [{{source: {{principals: [\"cluster.local/ns/mesh/sa/other-{i}\"]}}}}]\n"
            ),
            1 => format!(
                "  - to: [{{operation: {{paths: [\"/weft.demo.Other{i}/*\"], methods: [\"POST\"]}}}}]\n"
            ),
            2 => format!(
                "  - from: [{{source: {{namespaces: [\"team-{i}\"]}}}}]\n    to: [{{operation: {{paths: [\"*/Whoami\"]}}}}]\n"
            ),
            _ => format!(
                "  - when: [{{key: \"request.headers[x-team]\", values: [\"team-{i}\"]}}]\n"
            ),
        });
    }
    rules.push_str(
        "  - from: [{source: {principals: [\"cluster.local/ns/mesh/sa/default\"]}}]\n    to: [{operation: {paths: [\"/weft.demo.Whoami/*\"], methods: [\"POST\"]}}]\n",
    );
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: twenty-rules, namespace: mesh}}\nspec:\n  targetRefs: [{{kind: Service, name: whoami-authz}}]\n  action: ALLOW\n  rules:\n{rules}"
    )
}

/// HAProxy's configuration: HTTP/2 in clear text on both sides, one call per round-robin
/// pick, no logging. Two threads, as many as the waypoint's runtime has on these machines.
fn haproxy_config(servers: &[String]) -> String {
    let mut config = String::from(
        "global\n    nbthread 2\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\nfrontend grpc\n    bind :50051 proto h2\n    default_backend whoami\nbackend whoami\n    balance roundrobin\n",
    );
    for (i, server) in servers.iter().enumerate() {
        config.push_str(&format!("    server s{i} {server} proto h2\n"));
    }
    config
}

/// With `WEFT_BENCH_PERF=FILE`, samples the waypoint with `perf record` (999 Hz, no call
/// graph: release builds keep no frame pointers) during the first round's maximum-rate run;
/// `perf report -i FILE --no-children --sort dso,symbol` then shows where its time went.
fn profile_start(pid: u32) -> Result<Option<(std::process::Child, String)>> {
    let Ok(file) = std::env::var("WEFT_BENCH_PERF") else {
        return Ok(None);
    };
    let child = std::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "999",
            "-p",
            &pid.to_string(),
            "-o",
            &file,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting perf record (WEFT_BENCH_PERF is set)")?;
    // perf needs a moment to attach.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Some((child, file)))
}

fn profile_end((mut child, file): (std::process::Child, String)) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    child.wait()?;
    eprintln!("    waypoint profile in {file}");
    Ok(())
}

/// Process CPU time (user + system) in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn load(lab: &Lab, client: &str, target: &str, extra: &[&str]) -> Result<Value> {
    let url = format!("http://{target}");
    let mut args = vec![
        "--connect",
        &url,
        "--request-bytes",
        "1024",
        "--reply-bytes",
        "1024",
    ];
    args.extend_from_slice(extra);
    let out = lab.run_json(client, "uuid-client", &args, Duration::from_secs(180))?;
    Ok(out)
}

/// Services the churn phase creates and deletes (`WEFT_BENCH_CHURN` sets another count), in
/// batches.
const CHURN_SERVICES: usize = 1000;
const CHURN_BATCH: usize = 100;

fn churn_services() -> usize {
    std::env::var("WEFT_BENCH_CHURN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CHURN_SERVICES)
}

/// One batch of the churn phase: Services bound to the waypoint, selecting the mesh's
/// three whoami pods, at cluster IPs 10.96.(100 + batch).(1..).
fn churn_manifest(batch: usize) -> String {
    let mut yaml = String::new();
    for i in 0..CHURN_BATCH {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: churn-{batch}-{i}, namespace: mesh, labels: {{weft.dev/use-waypoint: wp}}}}\nspec: {{clusterIP: 10.96.{}.{}, selector: {{app: whoami}}, ports: [{{name: grpc-api, port: 50051, targetPort: 50051, protocol: TCP}}]}}\n",
            100 + batch,
            i + 1
        ));
    }
    yaml
}

/// Series on the waypoint's Prometheus page.
fn series(lab: &Lab) -> Result<f64> {
    let (_, text) = lab.waypoint_get("wp", 15020, "/metrics")?;
    Ok(text.lines().filter(|l| !l.starts_with('#')).count() as f64)
}

/// Creates and deletes `CHURN_SERVICES` Services, a batch at a time, each called through
/// the waypoint while it exists, and reports the waypoint's memory and series after the
/// first batch is gone and after the last: a waypoint that kept what gone Services left
/// behind would grow between the two.
fn churn(lab: &Lab, pid: u32) -> Result<Vec<(&'static str, f64)>> {
    let services = churn_services();
    eprintln!("==> churn: {services} Services, {CHURN_BATCH} at a time");
    let before = (rss_mb(pid).unwrap_or(0.0), series(lab)?);
    let mut after_first = before;
    let started = std::time::Instant::now();
    for batch in 0..services / CHURN_BATCH {
        lab.write_manifest("churn.yaml", &churn_manifest(batch))?;
        for i in 0..CHURN_BATCH {
            let target = format!("10.96.{}.{}:50051", 100 + batch, i + 1);
            // The first of a batch waits for the agents and the waypoint to know it.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let out = load(
                    lab,
                    "client",
                    &target,
                    &["--calls", "6", "--concurrency", "2"],
                );
                match out {
                    Ok(out) if out["by_status"]["OK"].as_f64() == Some(6.0) => break,
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => anyhow::bail!("churn Service {target} did not answer: {other:?}"),
                }
            }
        }
        lab.write_manifest("churn.yaml", "# no churn Services now\n")?;
        // The waypoint tidies once a second.
        std::thread::sleep(Duration::from_secs(3));
        let now = (rss_mb(pid).unwrap_or(0.0), series(lab)?);
        eprintln!(
            "    after batch {}: RSS {:.1} MB, {} series",
            batch + 1,
            now.0,
            now.1
        );
        if batch == 0 {
            after_first = now;
        }
    }
    let after = (rss_mb(pid).unwrap_or(0.0), series(lab)?);
    eprintln!(
        "    waypoint RSS {:.1} MB before, {:.1} after the first batch, {:.1} after all ({:.0} s); series {} / {} / {}",
        before.0,
        after_first.0,
        after.0,
        started.elapsed().as_secs_f64(),
        before.1,
        after_first.1,
        after.1
    );
    Ok(vec![
        ("churn_services", services as f64),
        ("waypoint_rss_before_churn_mb", before.0),
        ("waypoint_rss_after_first_churn_batch_mb", after_first.0),
        ("waypoint_rss_after_churn_mb", after.0),
        ("waypoint_churn_rss_growth_mb", after.0 - after_first.0),
        ("waypoint_series_before_churn", before.1),
        ("waypoint_series_after_churn", after.1),
    ])
}

pub fn run() -> Result<Map<String, Value>> {
    let mut lab = Lab::up(spec())?;
    lab.write_manifest("authz.yaml", &twenty_rule_policy())?;
    lab.start_agents()?;
    let threads = std::env::var("WEFT_WAYPOINT_THREADS").unwrap_or_else(|_| "0".into());
    lab.start_waypoint("wp", &["--worker-threads", &threads])?;
    let mut servers = Vec::new();
    for pod in ["plain-server", "m1", "m2", "m3", "p1", "p2", "p3"] {
        servers.push(lab.serve(pod, "uuid-server", &["--listen", "0.0.0.0:50051"])?);
    }
    let config = std::env::temp_dir().join("weft-bench-haproxy.cfg");
    let backends: Vec<String> = ["p1", "p2", "p3"]
        .iter()
        .map(|pod| format!("{}:50051", lab.pod(pod).ip))
        .collect();
    std::fs::write(&config, haproxy_config(&backends))
        .with_context(|| format!("writing {}", config.display()))?;
    let config_arg = config.display().to_string();
    let haproxy = lab.spawn("lb", "haproxy", &["-db", "-f", &config_arg])?;
    let direct = format!("{}:50051", lab.pod("plain-server").ip);
    let balanced = format!("{}:50051", lab.pod("lb").ip);
    let cases = [
        ("direct", "plain-client", direct.as_str()),
        ("haproxy", "plain-client", balanced.as_str()),
        ("l4", "client", "10.96.0.21:50051"),
        ("waypoint", "client", "10.96.0.20:50051"),
        ("waypoint_authz", "client", "10.96.0.22:50051"),
    ];
    let pid = lab
        .waypoint_pid("wp")
        .context("the waypoint is not running")?;
    let agents: Vec<u32> = (1..=2).filter_map(|node| lab.agent_pid(node)).collect();
    // CPU seconds of the processes that carry each case's calls, besides client and server.
    let carriers = |name: &str| -> Vec<(&'static str, u32)> {
        match name {
            "haproxy" => vec![("haproxy", haproxy.id())],
            "waypoint" => {
                let mut v = vec![("waypoint", pid)];
                v.extend(agents.iter().map(|&a| ("agents", a)));
                v
            }
            _ => Vec::new(),
        }
    };
    // HAProxy takes a moment to bind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while load(
        &lab,
        "plain-client",
        &balanced,
        &["--calls", "10", "--concurrency", "1"],
    )
    .is_err()
    {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("HAProxy in pod lb does not answer on {balanced}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Warm up every path (connections, certificates, the waypoint's pools).
    for (_, client, target) in cases {
        load(
            &lab,
            client,
            target,
            &["--calls", "2000", "--concurrency", CONCURRENCY],
        )?;
    }
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // What the waypoint spends with no call at all (timers, the model's watcher), so that
    // the CPU at 1000 calls/s can be read against it.
    let idle_before = cpu_seconds(pid).unwrap_or(0.0);
    std::thread::sleep(IDLE);
    let idle = (cpu_seconds(pid).unwrap_or(0.0) - idle_before) / IDLE.as_secs_f64();
    eprintln!("    waypoint_idle_cpu_cores: {idle:.4}");
    samples
        .entry("waypoint_idle_cpu_cores".into())
        .or_default()
        .push(idle);
    for round in 1..=rounds() {
        eprintln!("==> round {round} of {}", rounds());
        for (name, client, target) in cases {
            let carried_by = carriers(name);
            let cpu_before: Vec<f64> = carried_by
                .iter()
                .map(|&(_, p)| cpu_seconds(p).unwrap_or(0.0))
                .collect();
            let profile = if round == 1 && name == "waypoint" {
                profile_start(pid)?
            } else {
                None
            };
            let out = load(
                &lab,
                client,
                target,
                &["--calls", MAX_CALLS, "--concurrency", CONCURRENCY],
            )?;
            if let Some(profile) = profile {
                profile_end(profile)?;
            }
            let ok = out["by_status"]["OK"].as_f64().unwrap_or(0.0);
            if ok == 0.0 {
                anyhow::bail!("no call of case {name} succeeded: {out}");
            }
            let seconds = out["seconds"].as_f64().context("no seconds")?;
            let rps = ok / seconds;
            eprintln!("    {name}_rps: {rps:.0}");
            samples.entry(format!("{name}_rps")).or_default().push(rps);
            let mut per_call: BTreeMap<&str, f64> = BTreeMap::new();
            for (&(who, p), before) in carried_by.iter().zip(cpu_before) {
                let spent = cpu_seconds(p).unwrap_or(0.0) - before;
                *per_call.entry(who).or_default() += spent / ok * 1e6;
            }
            for (who, us) in per_call {
                eprintln!("    {who}_cpu_us_per_call: {us:.1}");
                samples
                    .entry(format!("{who}_cpu_us_per_call"))
                    .or_default()
                    .push(us);
            }
        }
        for (name, client, target) in [cases[0], cases[3]] {
            let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
            let out = load(
                &lab,
                client,
                target,
                &[
                    "--calls",
                    RATE_CALLS,
                    "--concurrency",
                    CONCURRENCY,
                    "--rate",
                    RATE,
                ],
            )?;
            let seconds = out["seconds"].as_f64().context("no seconds")?;
            let p50 = out["latency_ms"]["p50"].as_f64().context("no p50")?;
            let p99 = out["latency_ms"]["p99"].as_f64().context("no p99")?;
            eprintln!("    {name} at {RATE}/s: p50 {p50:.3} ms, p99 {p99:.3} ms");
            samples
                .entry(format!("{name}_p50_ms"))
                .or_default()
                .push(p50);
            if name == "waypoint" {
                samples
                    .entry("waypoint_p99_ms".into())
                    .or_default()
                    .push(p99);
                let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
                let rate = out["calls"].as_f64().unwrap_or(0.0) / seconds;
                samples
                    .entry("waypoint_cpu_per_1000rps".into())
                    .or_default()
                    .push(cpu / seconds / (rate / 1000.0));
                samples
                    .entry("waypoint_rss_mb".into())
                    .or_default()
                    .push(rss_mb(pid).unwrap_or(0.0));
            }
        }
    }
    let mut figures = Map::new();
    for (key, values) in &samples {
        figures.insert(key.clone(), Value::from(round3(median(values.clone()))));
    }
    let direct_p50 = median(samples["direct_p50_ms"].clone());
    let waypoint_p50 = median(samples["waypoint_p50_ms"].clone());
    figures.insert(
        "waypoint_added_p50_ms_at_1000rps".into(),
        Value::from(round3(waypoint_p50 - direct_p50)),
    );
    let (direct, waypoint) = (
        median(samples["direct_rps"].clone()),
        median(samples["waypoint_rps"].clone()),
    );
    figures.insert(
        "waypoint_rps_ratio".into(),
        Value::from(round3(waypoint / direct)),
    );
    figures.insert(
        "haproxy_rps_ratio".into(),
        Value::from(round3(median(samples["haproxy_rps"].clone()) / direct)),
    );
    let authz = median(samples["waypoint_authz_rps"].clone());
    figures.insert(
        "waypoint_authz_ratio".into(),
        Value::from(round3(authz / waypoint)),
    );
    for (key, value) in churn(&lab, pid)? {
        figures.insert(key.into(), Value::from(round3(value)));
    }
    drop(servers);
    haproxy.kill();
    let _ = std::fs::remove_file(&config);
    lab.down()?;
    Ok(figures)
}
