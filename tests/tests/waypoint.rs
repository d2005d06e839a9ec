//! End-to-end: the waypoint, with real agents, a real CA and real gRPC servers in the lab.
//! One client, one HTTP/2 connection, and its calls spread per call over the backends;
//! routing, retries, outlier detection, consistent hashing, streaming and error statuses,
//! configured with Istio YAML. Needs root.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_lab::{Guarded, Lab, LabSpec, ServiceSpec};

const WAYPOINT: &str = "wp";
const NS: &str = "app";
/// Bound to the waypoint.
const SERVICE: &str = "10.96.0.10:50051";
/// The same backends, not bound: L4 only.
const DIRECT: &str = "10.96.0.11:50051";
const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];

/// Two nodes: the waypoint and the client on node 1, backends b1 (node 1, v1), b2 (node 2,
/// v1) and b3 (node 2, v2).
fn lab(name: &str) -> Result<Lab> {
    let mut lab = Lab::up(spec(name))?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    Ok(lab)
}

fn spec(name: &str) -> LabSpec {
    LabSpec::new(name, 2)
        .with_namespace(NS, true)
        .with_waypoint(WAYPOINT, NS, 1)
        .with_pod("client", NS, 1, &[("app", "client")])
        .with_pod("b1", NS, 1, &[("app", "whoami"), ("version", "v1")])
        .with_pod("b2", NS, 2, &[("app", "whoami"), ("version", "v1")])
        .with_pod("b3", NS, 2, &[("app", "whoami"), ("version", "v2")])
        .with_service(ServiceSpec::whoami(
            "whoami",
            NS,
            [10, 96, 0, 10],
            &[("weft.dev/use-waypoint", WAYPOINT)],
        ))
        .with_service(ServiceSpec::whoami(
            "whoami-direct",
            NS,
            [10, 96, 0, 11],
            &[],
        ))
}

/// Starts the Whoami server in each backend, with per-backend flags; returns the guards and
/// each backend's UUID.
fn backends(
    lab: &Lab,
    flags: &[(&str, &[&str])],
) -> Result<(Vec<Guarded>, BTreeMap<String, String>)> {
    let mut guards = Vec::new();
    let mut uuids = BTreeMap::new();
    for pod in BACKENDS {
        let mut args = vec!["--listen", "0.0.0.0:50051"];
        for (who, extra) in flags {
            if *who == pod {
                args.extend_from_slice(extra);
            }
        }
        guards.push(lab.serve(pod, "uuid-server", &args)?);
        uuids.insert(pod.to_string(), server_uuid(lab, pod)?);
    }
    Ok((guards, uuids))
}

/// The UUID a backend printed when it started.
fn server_uuid(lab: &Lab, pod: &str) -> Result<String> {
    let log = lab
        .dir
        .join("logs")
        .join(format!("{pod}-uuid-server-listen.log"));
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let line = text
        .lines()
        .find(|l| l.contains("\"listen\""))
        .context("no listen line")?;
    let v: Value = serde_json::from_str(line)?;
    Ok(v["uuid"].as_str().context("no uuid")?.to_string())
}

/// Runs uuid-client in the client pod; errors allowed, the report returned.
fn calls(lab: &Lab, target: &str, calls: u64, extra: &[&str]) -> Result<Value> {
    let url = format!("http://{target}");
    let calls = calls.to_string();
    let mut args = vec!["--connect", &url, "--calls", &calls, "--allow-errors"];
    if !extra.contains(&"--concurrency") {
        args.extend_from_slice(&["--concurrency", "8"]);
    }
    args.extend_from_slice(extra);
    lab.run_json("client", "uuid-client", &args, Duration::from_secs(120))
}

/// Starts the backends and makes 30 calls, which must succeed: the waypoint then holds a
/// connection to each backend.
fn warm(lab: &Lab) -> Result<Vec<Guarded>> {
    let (servers, _) = backends(lab, &[])?;
    let report = calls(lab, SERVICE, 30, &[])?;
    assert_eq!(count(&report, "by_status", "OK"), 30, "{report}");
    Ok(servers)
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL")
}

/// 3,000 calls at 1,000/s, 32 at most at once, through the waypoint, with `fault` done 1 s
/// in; the client's report.
fn under_load(lab: &Lab, fault: impl FnOnce()) -> Result<Value> {
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            calls(
                lab,
                SERVICE,
                3000,
                &["--rate", "1000", "--concurrency", "32"],
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        fault();
        load.join().expect("the load thread")
    })
}

fn count(report: &Value, map: &str, key: &str) -> u64 {
    report[map][key].as_u64().unwrap_or(0)
}

/// The waypoint's metrics: the sum of the series of `name` whose labels contain `labels`.
fn waypoint_metric(lab: &Lab, name: &str, labels: &[&str]) -> Result<f64> {
    pod_metric(lab, WAYPOINT, name, labels)
}

/// Like `waypoint_metric`, of the waypoint pod `pod`.
fn pod_metric(lab: &Lab, pod: &str, name: &str, labels: &[&str]) -> Result<f64> {
    let (status, text) = lab.waypoint_get(pod, 15020, "/metrics")?;
    if status != 200 {
        bail!("waypoint {pod} /metrics answered {status}");
    }
    Ok(weft_lab::sum_series(&text, name, labels))
}

/// Writes Istio YAML and waits until the waypoint acts on it (the directory watch is
/// quick, but a test must not race it).
fn apply(lab: &Lab, file: &str, yaml: &str) -> Result<()> {
    lab.write_manifest(file, yaml)?;
    std::thread::sleep(Duration::from_millis(1500));
    Ok(())
}

fn fail(lab: &Lab, what: String) -> anyhow::Error {
    let log = lab.waypoint_log(WAYPOINT);
    let lines: Vec<&str> = log.lines().collect();
    anyhow::anyhow!(
        "{what}\nwaypoint log:\n{}",
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

#[test]
fn one_connection_spreads_over_every_backend() -> Result<()> {
    let lab = lab("wl-wp-spread")?;
    let (_servers, uuids) = backends(&lab, &[])?;
    let report = calls(&lab, SERVICE, 3000, &[])?;
    if count(&report, "by_status", "OK") != 3000 {
        return Err(fail(&lab, format!("not every call succeeded: {report}")));
    }
    for (pod, uuid) in &uuids {
        let n = count(&report, "by_uuid", uuid);
        if !(900..=1100).contains(&n) {
            return Err(fail(
                &lab,
                format!("{pod} got {n} of 3000 calls, not 1000 ± 10%: {report}"),
            ));
        }
    }
    // The same client and backends without the waypoint: one connection, one backend.
    let report = calls(&lab, DIRECT, 300, &[])?;
    let by_uuid = report["by_uuid"].as_object().context("by_uuid")?;
    assert_eq!(
        by_uuid.len(),
        1,
        "L4 alone should pin the connection: {report}"
    );
    lab.down()
}

/// Seed 000's seven DestinationRules for `grpc-server` and its canary VirtualService, pasted
/// unchanged: the rules merge (subsets v1 and v2 from grpc-server-versions), the 90/10 split
/// holds and `x-canary: true` pins v2. The Service is bound with Istio's own label
/// (`istio.io/use-waypoint`), so this is also the binding a user coming from Istio writes.
#[test]
fn seed_destination_rules_merge_and_the_canary_split_holds() -> Result<()> {
    let spec = LabSpec::new("wl-wp-seed-canary", 2)
        .with_namespace("default", true)
        .with_waypoint(WAYPOINT, "default", 1)
        .with_pod("client", "default", 1, &[("app", "client")])
        .with_pod(
            "b1",
            "default",
            1,
            &[("app", "grpc-server"), ("version", "v1")],
        )
        .with_pod(
            "b2",
            "default",
            2,
            &[("app", "grpc-server"), ("version", "v1")],
        )
        .with_pod(
            "b3",
            "default",
            2,
            &[("app", "grpc-server"), ("version", "v2")],
        )
        .with_service(ServiceSpec {
            selector: vec![("app".into(), "grpc-server".into())],
            ..ServiceSpec::whoami(
                "grpc-server",
                "default",
                [10, 96, 0, 20],
                &[("istio.io/use-waypoint", WAYPOINT)],
            )
        });
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let (_servers, uuids) = backends(&lab, &[])?;
    for file in [
        "02-grpc-destination-rule.yaml",
        "06-load-balancing-examples.yaml",
        "07-locality-lb.yaml",
        "12-canary-deployment.yaml",
        "13-circuit-breaker.yaml",
    ] {
        lab.write_manifest(
            &format!("seed-{file}"),
            &weft_lab::seed(&format!("000/{file}"))?,
        )?;
    }
    std::thread::sleep(Duration::from_millis(1500));
    let target = "10.96.0.20:50051";
    let report = calls(&lab, target, 5000, &[])?;
    let (v1a, v1b, v2) = (
        count(&report, "by_uuid", &uuids["b1"]),
        count(&report, "by_uuid", &uuids["b2"]),
        count(&report, "by_uuid", &uuids["b3"]),
    );
    // Both v1 pods serve: the calls of the one connection are balanced per call, so the
    // Istio label bound the Service to the waypoint.
    if count(&report, "by_status", "OK") != 5000
        || !(350..=650).contains(&v2)
        || v1a < 1000
        || v1b < 1000
    {
        return Err(fail(
            &lab,
            format!("v2 got {v2} of 5000 (not 10% ± 3%), v1 {v1a}+{v1b}: {report}"),
        ));
    }
    let report = calls(&lab, target, 300, &["--header", "x-canary=true"])?;
    if count(&report, "by_uuid", &uuids["b3"]) != 300 {
        return Err(fail(
            &lab,
            format!("x-canary: true should reach v2 only: {report}"),
        ));
    }
    // The waypoint says what it made of the seven rules.
    let log = lab.waypoint_log(WAYPOINT);
    if !log.contains("7 DestinationRules merged") {
        return Err(fail(
            &lab,
            "no WEFT020 merge finding in the waypoint's log".into(),
        ));
    }
    lab.down()
}

#[test]
fn retries_recover_cut_slow_tries_and_stop_at_the_budget() -> Result<()> {
    let lab = lab("wl-wp-retry")?;
    apply(
        &lab,
        "retry.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: whoami, namespace: app }
spec:
  hosts: [whoami.app.svc.cluster.local]
  http:
  - route:
    - destination: { host: whoami }
    retries:
      attempts: 3
      perTryTimeout: 300ms
      retryOn: unavailable,5xx
"#,
    )?;
    // b1 fails the first try of every call: retries (on another backend) recover them.
    {
        let (_servers, _) = backends(&lab, &[("b1", &["--fail-first", "1"])])?;
        let report = calls(&lab, SERVICE, 60, &["--unique-key", "--concurrency", "1"])?;
        let retries = waypoint_metric(&lab, "weft_waypoint_retries_total", &[])?;
        if count(&report, "by_status", "OK") != 60 || retries < 15.0 {
            return Err(fail(
                &lab,
                format!("retries ({retries}) should recover every call: {report}"),
            ));
        }
    }
    // One backend takes 3 s: its tries are cut at 300 ms and retried elsewhere.
    {
        let (_servers, uuids) = backends(&lab, &[("b3", &["--delay-ms", "3000"])])?;
        let started = Instant::now();
        let report = calls(&lab, SERVICE, 60, &[])?;
        if count(&report, "by_status", "OK") != 60 || count(&report, "by_uuid", &uuids["b3"]) != 0 {
            return Err(fail(
                &lab,
                format!("slow tries should be cut and retried: {report}"),
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
    }
    // Every backend always fails: 3 retries per call would quadruple the load; a budget
    // of 20% of requests (and no minimum rate) stops that.
    apply(
        &lab,
        "budget.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: whoami
  namespace: app
  annotations:
    weft.dev/retry-budget-percent: "20"
    weft.dev/retry-budget-min-per-second: "0"
spec:
  host: whoami
"#,
    )?;
    {
        let before = waypoint_metric(&lab, "weft_waypoint_retries_total", &[])?;
        let args: &[&str] = &["--fail-percent", "100", "--fail-status", "14"];
        let (_servers, _) = backends(&lab, &[("b1", args), ("b2", args), ("b3", args)])?;
        let report = calls(&lab, SERVICE, 200, &["--concurrency", "4"])?;
        let retries = waypoint_metric(&lab, "weft_waypoint_retries_total", &[])? - before;
        let refused = waypoint_metric(&lab, "weft_waypoint_retries_refused_total", &[])?;
        if count(&report, "by_status", "Unavailable") != 200
            || retries > 0.2 * 200.0 + 5.0
            || refused < 100.0
        {
            return Err(fail(
                &lab,
                format!("budget: {retries} retries, {refused} refused: {report}"),
            ));
        }
    }
    lab.down()
}

#[test]
fn outlier_detection_ejects_and_returns_a_backend() -> Result<()> {
    let lab = lab("wl-wp-outlier")?;
    apply(
        &lab,
        "outlier.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: whoami, namespace: app }
spec:
  hosts: [whoami]
  http:
  - route:
    - destination: { host: whoami }
    retries: { attempts: 0 }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: whoami, namespace: app }
spec:
  host: whoami
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 4s
      maxEjectionPercent: 50
"#,
    )?;
    let (_servers, uuids) = backends(
        &lab,
        &[("b3", &["--fail-percent", "100", "--fail-status", "14"])],
    )?;
    let report = calls(&lab, SERVICE, 300, &["--concurrency", "1"])?;
    let failed = count(&report, "by_status", "Unavailable");
    if !(3..=4).contains(&failed)
        || waypoint_metric(&lab, "weft_waypoint_outlier_ejections_total", &[])? < 1.0
    {
        return Err(fail(
            &lab,
            format!("b3 should be ejected after 3 failures: {report}"),
        ));
    }
    let b3 = lab.pod("b3").ip.to_string();
    let attempts =
        |lab: &Lab| waypoint_metric(lab, "weft_waypoint_upstream_attempts_total", &[&b3]);
    let during = attempts(&lab)?;
    calls(&lab, SERVICE, 100, &["--concurrency", "1"])?;
    assert_eq!(attempts(&lab)?, during, "an ejected backend got calls");
    std::thread::sleep(Duration::from_secs(5));
    let report = calls(&lab, SERVICE, 30, &["--concurrency", "1"])?;
    if attempts(&lab)? <= during {
        return Err(fail(
            &lab,
            format!(
                "b3 ({}) should be back after baseEjectionTime: {report}",
                uuids["b3"]
            ),
        ));
    }
    lab.down()
}

#[test]
fn consistent_hash_keeps_each_user_on_one_backend() -> Result<()> {
    let lab = lab("wl-wp-hash")?;
    apply(
        &lab,
        "hash.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: whoami, namespace: app }
spec:
  host: whoami
  trafficPolicy:
    loadBalancer:
      consistentHash: { httpHeaderName: x-user-id }
"#,
    )?;
    let (_servers, _) = backends(&lab, &[])?;
    let report = calls(&lab, SERVICE, 600, &["--header-cycle", "x-user-id=user:30"])?;
    let users = report["by_header"].as_object().context("by_header")?;
    assert_eq!(users.len(), 30, "{report}");
    let mut used = std::collections::BTreeSet::new();
    for (user, spread) in users {
        let spread = spread.as_object().context("spread")?;
        if spread.len() != 1 {
            return Err(fail(
                &lab,
                format!("{user} reached {} backends: {report}", spread.len()),
            ));
        }
        used.extend(spread.keys().cloned());
    }
    assert!(
        used.len() >= 2,
        "30 users should not all hash to one backend: {report}"
    );
    lab.down()
}

#[test]
fn streams_pass_in_order_and_big_messages_intact() -> Result<()> {
    let lab = lab("wl-wp-stream")?;
    let (_servers, _) = backends(&lab, &[])?;
    let url = format!("http://{SERVICE}");
    for args in [
        vec![
            "echo",
            "--connect",
            &url,
            "--messages",
            "10000",
            "--size",
            "100",
        ],
        vec!["big", "--connect", &url, "--bytes", "4194304"],
        vec![
            "upload",
            "--connect",
            &url,
            "--messages",
            "2000",
            "--size",
            "1000",
        ],
        vec![
            "download",
            "--connect",
            &url,
            "--messages",
            "2000",
            "--size",
            "1000",
        ],
    ] {
        let report = lab
            .run_json("client", "grpc-stream", &args, Duration::from_secs(120))
            .map_err(|e| fail(&lab, format!("grpc-stream {args:?}: {e:#}")))?;
        assert_eq!(report["ok"], true, "{args:?}: {report}");
    }
    lab.down()
}

#[test]
fn clients_get_real_statuses_when_backends_fail() -> Result<()> {
    let lab = lab("wl-wp-status")?;
    apply(
        &lab,
        "timeout.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: whoami, namespace: app }
spec:
  hosts: [whoami]
  http:
  - match:
    - headers:
        x-slow: { exact: "yes" }
    route:
    - destination: { host: whoami }
    timeout: 300ms
  - route:
    - destination: { host: whoami }
"#,
    )?;
    {
        let (_servers, _) = backends(&lab, &[])?;
        // The route's timeout, and the client's own deadline (grpc-timeout).
        let started = Instant::now();
        let report = calls(
            &lab,
            SERVICE,
            20,
            &["--header", "x-slow=yes", "--header", "x-delay-ms=2000"],
        )?;
        assert_eq!(
            count(&report, "by_status", "DeadlineExceeded"),
            20,
            "{report}"
        );
        let report = calls(
            &lab,
            SERVICE,
            20,
            &["--deadline-ms", "200", "--header", "x-delay-ms=2000"],
        )?;
        assert_eq!(
            count(&report, "by_status", "DeadlineExceeded"),
            20,
            "{report}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let report = calls(&lab, SERVICE, 20, &[])?;
        assert_eq!(count(&report, "by_status", "OK"), 20, "{report}");
    }
    // The servers are gone (guards dropped): every call is UNAVAILABLE, promptly.
    let started = Instant::now();
    let report = calls(&lab, SERVICE, 20, &[])?;
    if count(&report, "by_status", "Unavailable") != 20 {
        return Err(fail(&lab, format!("with every backend down: {report}")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    lab.down()
}

#[test]
fn python_grpcio_client_spreads_through_the_waypoint() -> Result<()> {
    let python = std::env::var("WEFT_PYTHON").context(
        "WEFT_PYTHON is not set: run the tests with `cargo xtask test`, which installs grpcio",
    )?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/whoami_client.py");
    let lab = lab("wl-wp-python")?;
    let (_servers, uuids) = backends(&lab, &[])?;
    let report = lab.run_json(
        "client",
        &python,
        &[script, "--target", SERVICE, "--calls", "600"],
        Duration::from_secs(120),
    )?;
    assert_eq!(report["ok"], 600, "{report}");
    for uuid in uuids.values() {
        let n = report["by_uuid"][uuid].as_u64().unwrap_or(0);
        assert!((150..=250).contains(&n), "{uuid}: {n} of 600: {report}");
    }
    lab.down()
}

/// Issue 15's first fault: 3,000 calls at 1,000/s through the waypoint, no DestinationRule,
/// and one of the three backends killed (SIGKILL) a second in. The calls that found it gone
/// are retried on the others and the next calls leave it out. Only the calls in flight on
/// it fail, with UNAVAILABLE (flag UR: Istio's default retry policy does not retry a
/// request the backend may have acted on); how many were in flight depends on the
/// machine's pace, at most the client's 32. Never UNKNOWN, the status of a proxy that did
/// not say what happened.
#[test]
fn a_killed_backend_costs_the_clients_almost_nothing() -> Result<()> {
    let lab = lab("wl-wp-kill")?;
    let (mut servers, _) = backends(&lab, &[])?;
    // Warm: the waypoint holds a connection to each backend.
    let report = calls(&lab, SERVICE, 30, &[])?;
    assert_eq!(count(&report, "by_status", "OK"), 30, "{report}");
    let victim = servers.remove(1);
    let report = under_load(&lab, || victim.kill())?;
    let (ok, unavailable) = (
        count(&report, "by_status", "OK"),
        count(&report, "by_status", "Unavailable"),
    );
    eprintln!("with b2 killed: {report}");
    let failed = |labels: &[&str]| waypoint_metric(&lab, "weft_waypoint_requests_total", labels);
    let in_flight = failed(&["grpc_response_status=\"14\"", "response_flags=\"UR\""])?;
    let all_failed = failed(&["grpc_response_status=\"14\""])?;
    if ok + unavailable != 3000 || unavailable > 32 || in_flight != all_failed {
        return Err(fail(
            &lab,
            format!(
                "with b2 killed mid-run ({in_flight} of {all_failed} failures in flight): {report}"
            ),
        ));
    }
    lab.down()
}

/// A server-streaming call whose backend is killed mid-stream ends with UNAVAILABLE, after
/// the messages that came before it, each intact and in order (`grpc-stream` checks every
/// message's number and payload), never with UNKNOWN or INTERNAL.
#[test]
fn a_stream_whose_backend_dies_ends_unavailable_with_its_messages_intact() -> Result<()> {
    let lab = lab("wl-wp-stream-kill")?;
    apply(
        &lab,
        "to-b3.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: whoami, namespace: app }
spec:
  host: whoami
  subsets: [{ name: v2, labels: { version: v2 } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: whoami, namespace: app }
spec:
  hosts: [whoami]
  http:
  - route: [{ destination: { host: whoami, subset: v2 } }]
"#,
    )?;
    let (mut servers, _) = backends(&lab, &[])?;
    let b3 = servers.remove(2);
    let url = format!("http://{SERVICE}");
    let args = [
        "download",
        "--connect",
        &url,
        "--messages",
        "50000000",
        "--size",
        "1000",
    ];
    let out = std::thread::scope(|scope| {
        let stream =
            scope.spawn(|| lab.run("client", "grpc-stream", &args, Duration::from_secs(120)));
        std::thread::sleep(Duration::from_secs(2));
        b3.kill();
        stream.join().expect("the stream thread")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("grpc-stream printed no JSON: {stdout}"))?;
    eprintln!("the stream: {report}");
    let received = report["received"].as_u64().unwrap_or(0);
    if report["status"] != "Unavailable" || received == 0 {
        return Err(fail(&lab, format!("a stream whose backend died: {report}")));
    }
    lab.down()
}

/// A waypoint told to stop (SIGTERM) sends GOAWAY and lets the calls in flight finish: a
/// call that takes 1.5 s, started before the signal, ends OK; then the waypoint exits, well
/// within its grace period, without waiting the grace period out.
#[test]
fn a_stopping_waypoint_finishes_the_calls_in_flight() -> Result<()> {
    let lab = lab("wl-wp-drain")?;
    let (_servers, _) = backends(&lab, &[])?;
    let report = calls(&lab, SERVICE, 10, &[])?;
    assert_eq!(count(&report, "by_status", "OK"), 10, "{report}");
    let pid = lab.waypoint_pid(WAYPOINT).context("the waypoint's pid")?;
    let (report, stopped_in) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            calls(
                &lab,
                SERVICE,
                4,
                &["--concurrency", "4", "--header", "x-delay-ms=1500"],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let signalled = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the waypoint");
        while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
            && signalled.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        (slow.join().expect("the calls"), signalled.elapsed())
    });
    let report = report?;
    if count(&report, "by_status", "OK") != 4 {
        return Err(fail(&lab, format!("calls in flight at SIGTERM: {report}")));
    }
    // The calls had about 1 s left (the waypoint waited for them), and the grace period is
    // 20 s (it did not wait that out).
    assert!(
        stopped_in >= Duration::from_millis(700) && stopped_in < Duration::from_secs(4),
        "the waypoint exited {stopped_in:?} after SIGTERM"
    );
    lab.down()
}

/// A waypoint of two replicas, one on each node; one of them is killed (SIGKILL) under
/// load: the client's agent moves its connections to the other at once (the dead one's
/// port refuses), and the calls that were not in flight on the dead one all succeed.
#[test]
fn a_killed_waypoint_replica_costs_the_clients_almost_nothing() -> Result<()> {
    const REPLICA: &str = "wp-2";
    let mut lab = Lab::up(spec("wl-wp-replica").with_waypoint_replica(REPLICA, WAYPOINT, 2))?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    lab.start_waypoint(REPLICA, &[])?;
    let _servers = warm(&lab)?;
    // The replica the client's agent chose takes every call; it is the one to kill.
    let served = |lab: &Lab, pod| pod_metric(lab, pod, "istio_requests_total", &[]);
    let (first, second) = (served(&lab, WAYPOINT)?, served(&lab, REPLICA)?);
    let (victim, survivor) = match (first, second) {
        (f, 0.0) if f >= 30.0 => (WAYPOINT, REPLICA),
        (0.0, s) if s >= 30.0 => (REPLICA, WAYPOINT),
        _ => bail!("one replica should serve the client: {WAYPOINT} {first}, {REPLICA} {second}"),
    };
    let before = served(&lab, survivor)?;
    let pid = lab.waypoint_pid(victim).context("the victim runs")?;
    let report = under_load(&lab, || sigkill(pid))?;
    lab.kill_waypoint(victim);
    eprintln!("with {victim} killed: {report}");
    let taken = served(&lab, survivor)? - before;
    let ok = count(&report, "by_status", "OK");
    if ok < 2990 || taken < 1500.0 {
        return Err(fail(
            &lab,
            format!("{victim} killed mid-run ({survivor} took {taken}): {report}"),
        ));
    }
    lab.down()
}

/// The only waypoint is killed (SIGKILL) under load: the calls in flight on it get
/// UNAVAILABLE from the client's agent, which follows the HTTP/2 it relays and ends each
/// open stream with a status when the tunnel breaks (`weft_mesh::relayed`), and so does
/// every call while it is down: the agent answers in HTTP/2 when no waypoint pod takes
/// the connection. Never UNKNOWN, which is how tonic reads a connection that just closes;
/// a few CANCELLED may remain, for calls the client had queued when the GOAWAY came.
/// Started again, it serves at once.
#[test]
fn calls_get_unavailable_while_the_waypoint_is_down() -> Result<()> {
    let mut lab = lab("wl-wp-down")?;
    let _servers = warm(&lab)?;
    let pid = lab.waypoint_pid(WAYPOINT).context("the waypoint runs")?;
    let report = under_load(&lab, || sigkill(pid))?;
    lab.kill_waypoint(WAYPOINT);
    eprintln!("with the waypoint killed 1 s in: {report}");
    let (ok, unavailable) = (
        count(&report, "by_status", "OK"),
        count(&report, "by_status", "Unavailable"),
    );
    let lost = 3000 - ok - unavailable;
    if !(500..=1500).contains(&ok)
        || unavailable < 1000
        || lost > 8
        || count(&report, "by_status", "Unknown") > 0
    {
        return Err(fail(&lab, format!("the waypoint killed: {report}")));
    }
    lab.start_waypoint(WAYPOINT, &[])?;
    let report = calls(&lab, SERVICE, 30, &[])?;
    assert_eq!(
        count(&report, "by_status", "OK"),
        30,
        "started again: {report}"
    );
    lab.down()
}

/// Node 2's agent is killed (SIGKILL) 1 s into 3,000 calls at 1,000/s and started again
/// 1 s later: the waypoint's connections to b2 and b3 (on node 2) fail fast while it is
/// down (its HBONE port refuses), their calls are retried on b1, and the calls succeed;
/// when it is back, node 2's backends serve again once their back-off ends.
#[test]
fn a_restarting_node_agent_costs_the_clients_almost_nothing() -> Result<()> {
    let mut lab = lab("wl-wp-agent-restart")?;
    let _servers = warm(&lab)?;
    let load = lab.background(
        "client",
        "uuid-client",
        &[
            "--connect",
            &format!("http://{SERVICE}"),
            "--calls",
            "3000",
            "--rate",
            "1000",
            "--concurrency",
            "32",
            "--allow-errors",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_agent(2)?;
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent(2)?;
    let report = load.report(Duration::from_secs(60))?;
    eprintln!("with node 2's agent restarted: {report}");
    if count(&report, "by_status", "OK") < 2970 {
        return Err(fail(&lab, format!("node 2's agent restarted: {report}")));
    }
    // Back within the passive-health back-off (at most 8 s) at the latest.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let report = calls(&lab, SERVICE, 60, &[])?;
        if ["b2", "b3"].iter().all(|p| count(&report, "by_pod", p) > 0) {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(
                &lab,
                format!("node 2's backends are not back: {report}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.down()
}

/// Issue 15's upgrade: node 2's agent upgraded under load as the DaemonSet does it
/// (`maxSurge: 1`). The waypoint's connections to b2 and b3 run through it; the old agent
/// tells the waypoint to move them (a GOAWAY between two of the pod's frames, inside the
/// tunnel), so that the next calls go to them through the new agent. Every call succeeds,
/// b2 and b3 keep being called, and the old agent exits by itself once the calls it
/// carried are done, long before its drain period is over.
#[test]
fn an_agent_upgrade_under_load_loses_no_call() -> Result<()> {
    let mut lab = Lab::up(spec("wl-wp-upgrade"))?;
    lab.set_agent_args(2, &["--keep-datapath-on-exit", "--drain-seconds", "60"]);
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let (_servers, uuids) = backends(&lab, &[])?;
    let report = calls(&lab, SERVICE, 30, &[])?;
    assert_eq!(count(&report, "by_status", "OK"), 30, "{report}");
    let url = format!("http://{SERVICE}");
    let load = lab.background(
        "client",
        "uuid-client",
        &[
            "--connect",
            &url,
            "--calls",
            "3000",
            "--rate",
            "1000",
            "--concurrency",
            "32",
            "--allow-errors",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let upgraded = Instant::now();
    lab.upgrade_agent(2)?;
    let report = load.report(Duration::from_secs(60))?;
    eprintln!("with node 2's agent upgraded 1 s in: {report}");
    let ok = count(&report, "by_status", "OK");
    // b2 and b3 took calls after the upgrade too: not all 2,000 of the last 2 s went to b1.
    let on_node_2 =
        count(&report, "by_uuid", &uuids["b2"]) + count(&report, "by_uuid", &uuids["b3"]);
    if ok != 3000 || on_node_2 < 1200 {
        return Err(fail(&lab, format!("node 2's agent upgraded: {report}")));
    }
    let status = lab.wait_drained(2, Duration::from_secs(70))?;
    let took = upgraded.elapsed();
    let log = lab.agent_log(2);
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert!(
        status.success(),
        "the old agent exited with {status}: {tail:?}"
    );
    assert!(
        took < Duration::from_secs(20) && log.contains("drained: no connection left"),
        "the old agent left {took:?} after the upgrade: {tail:?}"
    );
    lab.down()
}

/// A waypoint told to stop drains the TCP connections it carries at L4 as it does calls: a
/// connection to a TCP port of a Service bound to it, held for 6 s, lives to its end
/// though the waypoint got SIGTERM 2 s in; the waypoint exits once it has ended, not at
/// the end of its 20 s drain period.
#[test]
fn a_stopping_waypoint_drains_its_l4_connections() -> Result<()> {
    let spec = LabSpec::new("wl-wp-l4drain", 2)
        .with_namespace(NS, true)
        .with_waypoint(WAYPOINT, NS, 1)
        .with_pod("client", NS, 1, &[])
        .with_pod("b1", NS, 2, &[("app", "echo")])
        .with_service(ServiceSpec::tcp_echo(
            "echo",
            NS,
            [10, 96, 0, 21],
            &[("istio.io/use-waypoint", WAYPOINT)],
        ));
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let _b1 = lab.serve("b1", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let held = lab.background(
        "client",
        "labtool",
        &["hold", "--connect", "10.96.0.21:7100", "--seconds", "6"],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = lab.waypoint_pid(WAYPOINT).context("the waypoint's pid")?;
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .context("SIGTERM to the waypoint")?;
    let held = held.report(Duration::from_secs(30))?;
    if held["ended"] != "timeout" || held["round_trips"].as_u64() < Some(40) {
        return Err(fail(&lab, format!("the L4 connection was cut: {held}")));
    }
    let log = |lab: &Lab| lab.waypoint_log(WAYPOINT);
    while !log(&lab).contains("drain over") && signalled.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_in = signalled.elapsed();
    if stopped_in > Duration::from_secs(8) || !log(&lab).contains("left=0") {
        return Err(fail(
            &lab,
            format!("the waypoint's drain ended {stopped_in:?} after SIGTERM"),
        ));
    }
    lab.down()
}
