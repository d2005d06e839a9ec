//! End-to-end: the mutual-TLS HBONE tunnel between nodes, L4 authorization, and
//! PeerAuthentication, with real agents and a real CA in the lab. Needs root.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use weft_lab::{Guarded, Lab, LabSpec};

const MIB: u64 = 1024 * 1024;

fn pod_as(
    spec: LabSpec,
    name: &str,
    ns: &str,
    node: usize,
    sa: &str,
    labels: &[(&str, &str)],
) -> LabSpec {
    let mut spec = spec.with_pod(name, ns, node, labels);
    if let Some(pod) = spec.pods.last_mut() {
        pod.service_account = sa.to_string();
    }
    spec
}

fn sink(lab: &Lab, pod: &str) -> Result<Guarded> {
    sink_on(lab, pod, 7000)
}

fn sink_on(lab: &Lab, pod: &str, port: u16) -> Result<Guarded> {
    lab.serve(
        pod,
        "labtool",
        &["sink", "--listen", &format!("0.0.0.0:{port}")],
    )
}

/// Sends `bytes` and reports whether they arrived intact (Err only if the tool misbehaved).
fn try_send(lab: &Lab, from: &str, to: &str, bytes: u64) -> Result<bool> {
    try_send_to(lab, from, to, 7000, bytes)
}

fn try_send_to(lab: &Lab, from: &str, to: &str, port: u16, bytes: u64) -> Result<bool> {
    lab.send_ok(from, &format!("{}:{port}", lab.pod(to).ip), bytes)
}

/// Waits until `from` -> `to` succeeds (or fails, per `want`), as policy changes propagate.
fn expect_reachable(lab: &Lab, from: &str, to: &str, want: bool) -> Result<()> {
    expect_reachable_on(lab, from, to, 7000, want)
}

fn expect_reachable_on(lab: &Lab, from: &str, to: &str, port: u16, want: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = try_send_to(lab, from, to, port, 64 * 1024)?;
        if ok == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{from} -> {to}:{port}: expected {}, got {}\nnode logs:\n{}\n{}",
                if want { "success" } else { "refusal" },
                if ok { "success" } else { "refusal" },
                tail(&lab.agent_log(1)),
                tail(&lab.agent_log(2))
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Sum of the values of every series of `name` whose labels contain all of `labels`.
fn metric_sum(lab: &Lab, node: usize, name: &str, labels: &[&str]) -> Result<f64> {
    let (_, body) = lab.agent_get(node, 15020, "/metrics")?;
    Ok(weft_lab::sum_series(&body, name, labels))
}

fn counter(lab: &Lab, node: usize, name: &str) -> Result<u64> {
    lab.config_dump(node)?["ebpf_counters"][name]
        .as_u64()
        .with_context(|| format!("no counter {name}"))
}

#[test]
fn the_underlay_carries_only_tls_and_never_the_payload() -> Result<()> {
    let spec = LabSpec::new("wl-t-underlay", 2)
        .with_namespace("mesh", true)
        .with_pod("a", "mesh", 1, &[])
        .with_pod("c", "mesh", 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _c = sink(&lab, "c")?;
    let pcap = lab.dir.join("underlay.pcap");
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node_netns(1),
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-n",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting tcpdump (cargo xtask setup installs it)")?;
    // tcpdump says "listening on" once the capture runs.
    let stderr = capture.stderr.take().context("tcpdump stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("tcpdump did not start")?;

    // A recognisable payload, written by a client outside this project (CPython's sockets).
    let marker = "WEFT-CLEAR-TEXT-MARKER-";
    let script = format!(
        "import socket\ns = socket.create_connection(('{}', 7000), timeout=10)\n\
         s.sendall(b'{marker}' * 20000)\ns.shutdown(socket.SHUT_WR)\nprint(s.recv(100).decode().strip())\n",
        lab.pod("c").ip
    );
    let out = lab.run("a", "python3", &["-c", &script], Duration::from_secs(30))?;
    assert!(
        out.status.success(),
        "python client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(digest.len(), 64, "sink answered {digest:?}");
    assert!(
        try_send(&lab, "a", "c", 100 * MIB)?,
        "100 MiB across the tunnel was not intact"
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(capture.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = capture.wait();

    let bytes = std::fs::read(&pcap)?;
    assert!(
        bytes.len() > 1_000_000,
        "the capture saw too little: {} bytes",
        bytes.len()
    );
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the payload crossed the underlay in clear"
    );
    let count = |filter: &str| -> Result<usize> {
        let out = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&pcap)
            .arg(filter)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    };
    // Only the tunnel (15008) and the CA (15012, TLS too) cross the underlay.
    assert_eq!(
        count("tcp and not port 15008 and not port 15012")?,
        0,
        "TCP outside the tunnel"
    );
    assert!(count("tcp port 15008")? > 100);

    // Both ends counted the connections in Istio's metrics.
    let source = metric_sum(
        &lab,
        1,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"source\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    )?;
    assert!(source >= 2.0, "source side counted {source}");
    // Istio's sense: received during the request (towards the pod), sent in the response.
    let received = metric_sum(
        &lab,
        2,
        "istio_tcp_received_bytes_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/mesh/sa/default\"",
        ],
    )?;
    let sent = metric_sum(
        &lab,
        2,
        "istio_tcp_sent_bytes_total",
        &["reporter=\"destination\""],
    )?;
    assert!(
        received >= (100 * MIB) as f64,
        "destination side counted {received} bytes received for the pod"
    );
    assert!(sent > 0.0 && sent < received, "sent {sent}");
    lab.down()
}

#[test]
fn an_allow_policy_admits_one_principal_and_deny_wins_over_allow() -> Result<()> {
    let spec = LabSpec::new("wl-t-authz", 2).with_namespace("mesh", true);
    let spec = pod_as(spec, "alpha", "mesh", 1, "alpha", &[]);
    let spec = pod_as(spec, "beta", "mesh", 1, "beta", &[]);
    let spec = pod_as(spec, "delta", "mesh", 2, "delta", &[]);
    let spec = pod_as(spec, "server", "mesh", 2, "server", &[("app", "server")]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _s = sink(&lab, "server")?;
    for client in ["alpha", "beta", "delta"] {
        expect_reachable(&lab, client, "server", true)?;
    }
    lab.write_manifest(
        "allow-alpha.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-alpha, namespace: mesh}\n\
         spec:\n  selector: {matchLabels: {app: server}}\n  action: ALLOW\n  rules:\n  \
         - from: [{source: {principals: [cluster.local/ns/mesh/sa/alpha]}}]\n",
    )?;
    expect_reachable(&lab, "alpha", "server", true)?;
    expect_reachable(&lab, "beta", "server", false)?;
    // delta is on the server's node: it is checked at connection setup too.
    expect_reachable(&lab, "delta", "server", false)?;
    assert!(metric_sum(&lab, 2, "weft_tunnel_denials_total", &["reason=\"policy\""])? >= 1.0);
    assert!(
        metric_sum(
            &lab,
            2,
            "istio_tcp_connections_opened_total",
            &["response_flags=\"UAEX\""]
        )? >= 1.0
    );

    lab.write_manifest(
        "deny-alpha.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-alpha, namespace: mesh}\n\
         spec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  \
         - from: [{source: {principals: [cluster.local/ns/mesh/sa/alpha]}}]\n",
    )?;
    expect_reachable(&lab, "alpha", "server", false)?;
    lab.down()
}

#[test]
fn strict_keeps_plaintext_out_and_permissive_hands_it_to_the_agent() -> Result<()> {
    let spec = LabSpec::new("wl-t-strict", 2)
        .with_namespace("mesh", true)
        .with_namespace("plain", false)
        .with_pod("a", "mesh", 1, &[])
        .with_pod("c", "mesh", 2, &[("app", "c")])
        .with_pod("near", "plain", 2, &[])
        .with_pod("far", "plain", 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _c = sink(&lab, "c")?;
    let _c2 = sink_on(&lab, "c", 7001)?;

    // PERMISSIVE (no PeerAuthentication): plaintext gets in, through the agent's plaintext
    // inbound in c's namespace, and is counted there with Istio's labels.
    let (tc_before, steered_before) = (
        counter(&lab, 2, "tc_plaintext")?,
        counter(&lab, 2, "plaintext_steered")?,
    );
    expect_reachable(&lab, "near", "c", true)?;
    expect_reachable(&lab, "far", "c", true)?;
    assert!(counter(&lab, 2, "tc_plaintext")? >= tc_before + 2);
    assert!(counter(&lab, 2, "plaintext_steered")? >= steered_before + 2);
    let c_status = weft_lab::dump_pod(&lab.config_dump(2)?, "c").context("c in /config_dump")?;
    assert_eq!(c_status["plaintext_inbound"], "listening", "{c_status}");
    let plaintext_opened = |lab: &Lab, flags: &str| {
        metric_sum(
            lab,
            2,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"none\"",
                "destination_workload=\"c\"",
                flags,
            ],
        )
    };
    assert!(plaintext_opened(&lab, "response_flags=\"-\"")? >= 2.0);
    let far_ip = lab.pod("far").ip;
    let received = metric_sum(
        &lab,
        2,
        "istio_tcp_received_bytes_total",
        &["connection_security_policy=\"none\""],
    )?;
    assert!(received >= 2.0 * 64.0 * 1024.0, "received {received}");

    // While the agent is away (crashed), plaintext fails closed: c's namespace has no
    // listener to hand it to, so sk_lookup drops it. The next agent's listener takes over.
    lab.kill_agent(2)?;
    assert!(
        !try_send(&lab, "near", "c", 1024)?,
        "plaintext reached c while its agent was down"
    );
    lab.start_agent(2)?;
    expect_reachable(&lab, "near", "c", true)?;
    assert!(counter(&lab, 2, "plaintext_no_listener")? >= 1);

    // L4 policy applies to plaintext: a principal-based ALLOW refuses it (no identity), an
    // ipBlocks rule admits the address it names.
    lab.write_manifest(
        "allow-a.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-a, namespace: mesh}}\n\
             spec:\n  selector: {{matchLabels: {{app: c}}}}\n  action: ALLOW\n  rules:\n  \
             - from: [{{source: {{principals: [cluster.local/ns/mesh/sa/default]}}}}]\n  \
             - from: [{{source: {{ipBlocks: [{far_ip}/32]}}}}]\n"
        ),
    )?;
    expect_reachable(&lab, "near", "c", false)?;
    expect_reachable(&lab, "far", "c", true)?;
    expect_reachable(&lab, "a", "c", true)?;
    assert!(plaintext_opened(&lab, "response_flags=\"UAEX\"")? >= 1.0);
    assert!(
        metric_sum(
            &lab,
            2,
            "weft_tunnel_denials_total",
            &["reason=\"plaintext\""]
        )? >= 1.0
    );
    std::fs::remove_file(lab.manifests_dir().join("allow-a.yaml"))?;
    expect_reachable(&lab, "near", "c", true)?;

    // STRICT: plaintext never reaches the pod; mesh traffic still does, through the tunnel.
    lab.write_manifest(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: mesh}\n\
         spec:\n  mtls: {mode: STRICT}\n",
    )?;
    expect_reachable(&lab, "near", "c", false)?;
    expect_reachable(&lab, "far", "c", false)?;
    expect_reachable_on(&lab, "far", "c", 7001, false)?;
    assert!(counter(&lab, 2, "tc_dropped")? >= 3);
    expect_reachable(&lab, "a", "c", true)?;

    // Port level, enforced in the kernel: c's port 7001 is PERMISSIVE, 7000 stays STRICT.
    lab.write_manifest(
        "c-ports.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: c-ports, namespace: mesh}\n\
         spec:\n  selector: {matchLabels: {app: c}}\n  portLevelMtls:\n    7001: {mode: PERMISSIVE}\n",
    )?;
    expect_reachable_on(&lab, "far", "c", 7001, true)?;
    expect_reachable_on(&lab, "near", "c", 7001, true)?;
    let dropped = counter(&lab, 2, "tc_dropped")?;
    expect_reachable_on(&lab, "far", "c", 7000, false)?;
    assert!(counter(&lab, 2, "tc_dropped")? > dropped);
    expect_reachable_on(&lab, "a", "c", 7000, true)?;
    lab.down()
}

#[test]
fn many_connections_share_a_few_pooled_tls_connections() -> Result<()> {
    let spec = LabSpec::new("wl-t-pool", 2)
        .with_namespace("mesh", true)
        .with_pod("a", "mesh", 1, &[])
        .with_pod("c", "mesh", 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _d = lab.serve("c", "labtool", &["discard", "--listen", "0.0.0.0:5201"])?;
    let target = format!("{}:5201", lab.pod("c").ip);
    let mut load = lab.spawn(
        "a",
        "labtool",
        &[
            "tput",
            "--connect",
            &target,
            "--seconds",
            "3",
            "--streams",
            "32",
        ],
    )?;
    let mut peak_streams = 0.0f64;
    let mut peak_connections = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.try_wait()?.is_none() && Instant::now() < deadline {
        peak_streams = peak_streams.max(metric_sum(&lab, 1, "weft_tunnel_pool_streams", &[])?);
        peak_connections =
            peak_connections.max(metric_sum(&lab, 1, "weft_tunnel_pool_connections", &[])?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = load.wait_timeout(Duration::from_secs(10))?;
    assert!(
        status.is_some_and(|s| s.success()),
        "tput failed: {status:?}"
    );
    let opened = metric_sum(&lab, 1, "weft_tunnel_pool_connections_opened_total", &[])?;
    assert!(
        peak_streams >= 32.0,
        "at most {peak_streams} streams were open at once"
    );
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2) as f64;
    assert!(
        (1.0..=cores).contains(&peak_connections) && opened <= cores,
        "32 connections used {peak_connections} pooled TLS connections at once ({opened} opened); expected at most {cores}"
    );
    lab.down()
}

/// A policy change reaches established connections: a long-lived connection across nodes
/// (tunnel inbound), one on the same node through the agent, one on the same node that the
/// kernel carries directly (made while its destination was ungoverned; ended with
/// sock_diag), and a PERMISSIVE plaintext one (plaintext inbound) are each closed within
/// 2 s of a DENY that matches them, and counted in
/// `weft_connections_closed_by_policy_total`; a connection the DENY does not match lives
/// on.
#[test]
fn a_new_deny_closes_established_connections() -> Result<()> {
    let spec = LabSpec::new("wl-t-revoke", 2)
        .with_namespace("mesh", true)
        .with_namespace("plain", false);
    let spec = pod_as(spec, "a", "mesh", 1, "a", &[]);
    let spec = pod_as(spec, "keep", "mesh", 1, "keep", &[]);
    let spec = spec
        .with_pod("b", "mesh", 1, &[("gov", "yes")])
        .with_pod("c", "mesh", 2, &[("gov", "yes")])
        .with_pod("d", "mesh", 1, &[])
        .with_pod("far", "plain", 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _b = lab.serve("b", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let _c = lab.serve("c", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let _d = lab.serve("d", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    // An ALLOW for everything governs b and c, so that same-node connections to them take
    // the agent's path (where policy is checked); d stays ungoverned, so a's connection to
    // it is the kernel's (spliced), until the DENY governs d too.
    lab.write_manifest(
        "allow.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: mesh}\nspec: {selector: {matchLabels: {gov: \"yes\"}}, rules: [{}]}\n",
    )?;
    std::thread::sleep(Duration::from_millis(1500));

    let hold = |from: &str, to: &str| {
        let target = format!("{}:7100", lab.pod(to).ip);
        lab.run_json(
            from,
            "labtool",
            &["hold", "--connect", &target, "--seconds", "12"],
            Duration::from_secs(30),
        )
    };
    let far_ip = lab.pod("far").ip;
    let (ended, applied) = std::thread::scope(|s| -> Result<_> {
        let holds = [
            ("a", "c"),
            ("a", "b"),
            ("a", "d"),
            ("far", "c"),
            ("keep", "c"),
        ]
        .map(|(from, to)| (from, to, s.spawn(move || (hold(from, to), Instant::now()))));
        std::thread::sleep(Duration::from_millis(2500));
        lab.write_manifest(
            "deny.yaml",
            &format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-a, namespace: mesh}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/mesh/sa/a]}}}}]\n  - from: [{{source: {{ipBlocks: [{far_ip}/32]}}}}]\n"
            ),
        )?;
        let applied = Instant::now();
        let mut ended = Vec::new();
        for (from, to, handle) in holds {
            let (report, at) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("hold panicked"))?;
            ended.push((from, to, report?, at));
        }
        Ok((ended, applied))
    })?;
    for (from, to, report, at) in &ended {
        let trips = report["round_trips"].as_u64().unwrap_or(0);
        if *from == "keep" {
            assert_eq!(
                report["ended"], "timeout",
                "keep -> {to} must live on: {report}"
            );
            continue;
        }
        let after = at.saturating_duration_since(applied);
        assert!(
            trips >= 20 && report["ended"] != "timeout" && after <= Duration::from_secs(2),
            "{from} -> {to} should have been up, then closed within 2 s of the DENY \
             ({after:?} after it): {report}\nnode logs:\n{}\n{}",
            tail(&lab.agent_log(1)),
            tail(&lab.agent_log(2))
        );
    }
    let closed = |node| {
        metric_sum(
            &lab,
            node,
            "weft_connections_closed_by_policy_total",
            &["policy=\"mesh/deny-a\""],
        )
    };
    assert_eq!(
        closed(1)?,
        2.0,
        "a -> b and a -> d (the kernel's), on node 1"
    );
    assert_eq!(closed(2)?, 2.0, "a -> c and far -> c, on node 2");
    lab.down()
}

/// A node agent upgraded as the DaemonSet of `deploy/` does it (`maxSurge: 1`): the new
/// agent binds its listeners beside the old one's and adopts the pinned datapath, then the
/// old one gets SIGTERM and drains. No new connection of the node's pods is refused while
/// it happens, and a connection the old agent tunnels lives on until it ends; then the old
/// agent exits by itself, well before its drain period is over.
#[test]
fn an_agent_upgrade_refuses_no_connection_and_drains_the_established_ones() -> Result<()> {
    let spec = LabSpec::new("wl-t-upgrade", 2)
        .with_namespace("app", true)
        .with_pod("echo", "app", 1, &[])
        .with_pod("holder", "app", 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.set_agent_args(2, &["--keep-datapath-on-exit", "--drain-seconds", "40"]);
    lab.start_agents()?;
    let _echo = lab.serve("echo", "labtool", &["echo", "--listen", "0.0.0.0:5202"])?;
    let echo = format!("{}:5202", lab.pod("echo").ip);
    let held = lab.background(
        "holder",
        "labtool",
        &["hold", "--connect", &echo, "--seconds", "10"],
    )?;
    let churn = lab.background(
        "holder",
        "labtool",
        &[
            "conns",
            "--connect",
            &echo,
            "--seconds",
            "6",
            "--concurrency",
            "4",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let upgraded = Instant::now();
    lab.upgrade_agent(2)?;

    let churned = churn.report(Duration::from_secs(30))?;
    let (conns, errors) = (
        churned["conns"].as_u64().unwrap_or(0),
        churned["errors"].as_u64().unwrap_or(u64::MAX),
    );
    assert!(
        conns > 50,
        "too few connections to mean anything: {churned}"
    );
    assert_eq!(
        errors, 0,
        "new connections failed over the upgrade: {churned}"
    );

    let held = held.report(Duration::from_secs(30))?;
    assert_eq!(
        held["ended"], "timeout",
        "the held connection was cut: {held}"
    );
    assert!(held["held_ms"].as_u64() >= Some(9_500), "{held}");

    // The old agent left once its last connection (the held one) ended, not at the end of
    // its 40 s drain.
    let status = lab.wait_drained(2, Duration::from_secs(45))?;
    let took = upgraded.elapsed();
    let log = lab.agent_log(2);
    assert!(
        status.success(),
        "the old agent exited with {status}: {}",
        tail(&log)
    );
    assert!(
        took < Duration::from_secs(30),
        "the old agent left after {took:?}"
    );
    assert!(log.contains("draining"), "{}", tail(&log));
    assert!(
        log.contains("drained: no connection left"),
        "{}",
        tail(&log)
    );
    assert!(log.contains("adopting the pinned state"), "{}", tail(&log));

    // The new agent serves alone now, through the same pinned datapath.
    lab.wait_enrolled(2, 1, Duration::from_secs(10))?;
    let after = lab.background(
        "holder",
        "labtool",
        &[
            "conns",
            "--connect",
            &echo,
            "--seconds",
            "1",
            "--concurrency",
            "2",
        ],
    )?;
    let after = after.report(Duration::from_secs(20))?;
    assert_eq!(after["errors"], 0, "{after}");
    assert!(after["conns"].as_u64() > Some(0), "{after}");
    lab.down()
}
