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
    lab.serve(pod, "labtool", &["sink", "--listen", "0.0.0.0:7000"])
}

/// Sends `bytes` and reports whether they arrived intact (Err only if the tool misbehaved).
fn try_send(lab: &Lab, from: &str, to: &str, bytes: u64) -> Result<bool> {
    let target = format!("{}:7000", lab.pod(to).ip);
    let out = lab.run(
        from,
        "labtool",
        &[
            "send",
            "--connect",
            &target,
            "--bytes",
            &bytes.to_string(),
            "--timeout",
            "8",
        ],
        Duration::from_secs(30),
    )?;
    Ok(out.status.success())
}

/// Waits until `from` -> `to` succeeds (or fails, per `want`), as policy changes propagate.
fn expect_reachable(lab: &Lab, from: &str, to: &str, want: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = try_send(lab, from, to, 64 * 1024)?;
        if ok == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{from} -> {to}: expected {}, got {}\nnode logs:\n{}\n{}",
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
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.len() == name.len() || l[name.len()..].starts_with(['{', ' ']))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
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
    let destination = metric_sum(
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
        sent >= (100 * MIB) as f64,
        "destination side counted {sent} bytes sent to the pod"
    );
    assert!(destination > 0.0);
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
fn strict_keeps_plaintext_out_and_permissive_lets_it_in_counted() -> Result<()> {
    let spec = LabSpec::new("wl-t-strict", 2)
        .with_namespace("mesh", true)
        .with_namespace("plain", false)
        .with_pod("a", "mesh", 1, &[])
        .with_pod("c", "mesh", 2, &[])
        .with_pod("near", "plain", 2, &[])
        .with_pod("far", "plain", 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _c = sink(&lab, "c")?;

    // PERMISSIVE (no PeerAuthentication): plaintext gets in and is counted.
    let before = counter(&lab, 2, "tc_plaintext")?;
    expect_reachable(&lab, "near", "c", true)?;
    expect_reachable(&lab, "far", "c", true)?;
    assert!(counter(&lab, 2, "tc_plaintext")? >= before + 2);

    lab.write_manifest(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: mesh}\n\
         spec:\n  mtls: {mode: STRICT}\n",
    )?;
    expect_reachable(&lab, "near", "c", false)?;
    expect_reachable(&lab, "far", "c", false)?;
    assert!(counter(&lab, 2, "tc_dropped")? >= 2);
    // Mesh traffic still arrives, through the tunnel.
    expect_reachable(&lab, "a", "c", true)?;
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
