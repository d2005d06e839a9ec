//! End-to-end attacks on what Weft promises (issue 13): each test does what an attacker
//! would, with real agents, a real waypoint and a real CA in the lab, and asserts that it
//! fails. Needs root.

use std::time::Duration;

use anyhow::{Result, bail};
use weft_lab::{Lab, LabSpec, ServiceSpec, sum_series};

const NS: &str = "app";
const WAYPOINT: &str = "wp";

/// A Service of `app=echo` pods on TCP port 7100 (named `tcp-echo`: carried at L4).
fn tcp_service(name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> ServiceSpec {
    ServiceSpec::tcp_echo(name, NS, ip, labels)
}

/// The last ten lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn waypoint_log_tail(lab: &Lab) -> String {
    tail(&lab.waypoint_log(WAYPOINT))
}

/// The JSON report a lab tool printed into its log `log`.
fn report_in(log: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow::anyhow!("{} holds no report: {text}", log.display()))
}

/// Item 2: the waypoint carries TCP ports of its Services and connections to pods bound to
/// it at L4; the policies attached to it apply there too, with the L4 attributes.
#[test]
fn a_waypoint_policy_stops_its_tcp_ports_and_pod_addressed_connections() -> Result<()> {
    let spec = LabSpec::new("wl-x-wptcp", 2)
        .with_namespace(NS, true)
        .with_waypoint(WAYPOINT, NS, 1)
        .with_pod("client", NS, 1, &[])
        .with_pod("b1", NS, 2, &[("app", "echo")])
        .with_pod("bound", NS, 2, &[("istio.io/use-waypoint", WAYPOINT)])
        .with_service(tcp_service(
            "echo",
            [10, 96, 0, 20],
            &[("istio.io/use-waypoint", WAYPOINT)],
        ));
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let _b1 = lab.serve("b1", "labtool", &["sink", "--listen", "0.0.0.0:7100"])?;
    let _bound = lab.serve("bound", "labtool", &["sink", "--listen", "0.0.0.0:7100"])?;
    let service = "10.96.0.20:7100";
    let pod = format!("{}:7100", lab.pod("bound").ip);

    // Through the waypoint, both work while no policy says otherwise.
    lab.expect_send("client", service, true)?;
    lab.expect_send("client", &pod, true)?;
    let before = waypoint_denied(&lab)?;

    lab.write_manifest(
        "deny.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-7100, namespace: {NS}}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: {WAYPOINT}}}]\n  action: DENY\n  rules: [{{to: [{{operation: {{ports: ['7100']}}}}]}}]\n"
        ),
    )?;
    if let Err(err) = lab
        .expect_send("client", service, false)
        .and_then(|()| lab.expect_send("client", &pod, false))
    {
        bail!("{err}\nwaypoint log:\n{}", waypoint_log_tail(&lab));
    }
    let after = waypoint_denied(&lab)?;
    if after < before + 2.0 {
        bail!(
            "the waypoint counted {} denials, expected 2 more",
            after - before
        );
    }

    // An ALLOW whose only rule needs L7 attributes matches no L4 connection: nothing passes.
    lab.write_manifest(
        "deny.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: paths-only, namespace: {NS}}}\nspec:\n  targetRefs: [{{kind: Service, name: echo}}]\n  rules: [{{to: [{{operation: {{paths: [/ok]}}}}]}}]\n"
        ),
    )?;
    lab.expect_send("client", service, false)?;
    // It is attached to the Service: pod-addressed traffic is not its business.
    lab.expect_send("client", &pod, true)?;
    Ok(())
}

fn waypoint_denied(lab: &Lab) -> Result<f64> {
    let (status, text) = lab.waypoint_get(WAYPOINT, 15020, "/metrics")?;
    if status != 200 {
        bail!("waypoint /metrics answered {status}");
    }
    Ok(sum_series(&text, "weft_waypoint_authz_denied_total", &[]))
}

/// Item 3: a CUSTOM policy has no external authorizer to ask in Weft: what its rules
/// match is refused (fail closed), where it used to pass.
#[test]
fn a_custom_policy_fails_closed() -> Result<()> {
    let spec = LabSpec::new("wl-x-custom", 2)
        .with_namespace(NS, true)
        .with_pod("client", NS, 1, &[])
        .with_pod("guarded", NS, 2, &[("app", "guarded")])
        .with_pod("other", NS, 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _g = lab.serve("guarded", "labtool", &["sink", "--listen", "0.0.0.0:7000"])?;
    let _o = lab.serve("other", "labtool", &["sink", "--listen", "0.0.0.0:7000"])?;
    let guarded = format!("{}:7000", lab.pod("guarded").ip);
    let other = format!("{}:7000", lab.pod("other").ip);
    lab.expect_send("client", &guarded, true)?;

    lab.write_manifest(
        "custom.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext-authz, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: guarded}}}}\n  action: CUSTOM\n  provider: {{name: opa}}\n  rules: [{{to: [{{operation: {{ports: ['7000']}}}}]}}]\n"
        ),
    )?;
    lab.expect_send("client", &guarded, false)?;
    // Only what it selects.
    lab.expect_send("client", &other, true)?;
    Ok(())
}

/// Item 4: a pod bound to a workload waypoint is reached through the waypoint only. Same
/// node, the kernel used to splice a neighbour's connection straight to it; across nodes,
/// the destination agent took any mesh identity's stream to it.
#[test]
fn a_workload_waypoint_cannot_be_bypassed() -> Result<()> {
    let spec = LabSpec::new("wl-x-bypass", 2)
        .with_namespace(NS, true)
        .with_waypoint(WAYPOINT, NS, 1)
        .with_pod_as("client", NS, 1, "client")
        .with_pod_as("neighbour", NS, 2, "neighbour");
    let mut spec = spec.with_pod("bound", NS, 2, &[("istio.io/use-waypoint", WAYPOINT)]);
    if let Some(pod) = spec.pods.last_mut() {
        pod.service_account = "bound".into();
    }
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let _bound = lab.serve("bound", "labtool", &["sink", "--listen", "0.0.0.0:7000"])?;
    let bound = format!("{}:7000", lab.pod("bound").ip);
    lab.expect_send("client", &bound, true)?;
    lab.expect_send("neighbour", &bound, true)?;

    // A policy at the waypoint that refuses the neighbour: its same-node connection meets
    // it only if it goes through the waypoint.
    lab.write_manifest(
        "deny.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-neighbour, namespace: {NS}}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: {WAYPOINT}}}]\n  action: DENY\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/{NS}/sa/neighbour]}}}}]}}]\n"
        ),
    )?;
    if let Err(err) = lab.expect_send("neighbour", &bound, false) {
        bail!("{err}\nwaypoint log:\n{}", waypoint_log_tail(&lab));
    }
    lab.expect_send("client", &bound, true)?;

    // Across nodes: a stream straight to the bound pod's agent, with a mesh identity that
    // is not the waypoint's, is refused; the waypoint's own identity passes.
    let hbone = |identity: &str| hbone_to_node_2(&lab, &bound, identity, None);
    let (bypassed, report) = hbone(&format!("spiffe://cluster.local/ns/{NS}/sa/client"))?;
    if bypassed {
        bail!("a client's stream straight to the bound pod was carried: {report}");
    }
    if !report.to_string().contains("did not come through it") {
        bail!("the refusal does not say why: {report}");
    }
    let (through, report) = hbone(&format!("spiffe://cluster.local/ns/{NS}/sa/{WAYPOINT}"))?;
    if !through {
        bail!("the waypoint's own stream was refused: {report}");
    }
    Ok(())
}

/// One HBONE stream from node 1 straight to node 2's agent, for `authority`, with a client
/// certificate for `identity` minted from the lab's own root: what a node whose agent is
/// compromised could send. `forwarded` is its `Forwarded: for=`.
fn hbone_to_node_2(
    lab: &Lab,
    authority: &str,
    identity: &str,
    forwarded: Option<&str>,
) -> Result<(bool, serde_json::Value)> {
    let ca = lab.ca_dir();
    let (cert, key) = (
        ca.join("root-cert.pem").display().to_string(),
        ca.join("root-key.pem").display().to_string(),
    );
    let mut args = vec![
        "hbone",
        "--connect",
        "10.99.0.2:15008",
        "--authority",
        authority,
        "--identity",
        identity,
        "--root-cert",
        &cert,
        "--root-key",
        &key,
        "--bytes",
        "4096",
    ];
    if let Some(forwarded) = forwarded {
        args.extend_from_slice(&["--forwarded-for", forwarded]);
    }
    lab.probe(1, &args)
}

/// Item 7: `Forwarded: for=` is the sender's word. An `ipBlocks` rule must not take it from
/// a peer that may not speak for that address.
#[test]
fn a_forged_forwarded_address_does_not_pass_ip_blocks() -> Result<()> {
    let spec = LabSpec::new("wl-x-fwd", 2)
        .with_namespace(NS, true)
        .with_pod_as("friend", NS, 1, "friend")
        .with_pod_as("client", NS, 1, "client")
        .with_pod("target", NS, 2, &[("app", "target")]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _t = lab.serve("target", "labtool", &["sink", "--listen", "0.0.0.0:7000"])?;
    let target = format!("{}:7000", lab.pod("target").ip);
    let friend_ip = lab.pod("friend").ip.to_string();
    lab.write_manifest(
        "allow.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: friend-only, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: target}}}}\n  rules: [{{from: [{{source: {{ipBlocks: [{friend_ip}/32]}}}}]}}]\n"
        ),
    )?;
    lab.expect_send("friend", &target, true)?;
    lab.expect_send("client", &target, false)?;

    // The client's identity, claiming the friend's address: refused.
    let (forged, report) = hbone_to_node_2(
        &lab,
        &target,
        &format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        Some(&friend_ip),
    )?;
    if forged {
        bail!("a forged Forwarded address passed ipBlocks: {report}");
    }
    // The friend's own identity may forward its own address.
    let (own, report) = hbone_to_node_2(
        &lab,
        &target,
        &format!("spiffe://cluster.local/ns/{NS}/sa/friend"),
        Some(&friend_ip),
    )?;
    if !own {
        bail!("the friend's own stream was refused: {report}");
    }
    Ok(())
}

fn ebpf_counter(lab: &Lab, node: usize, name: &str) -> Result<u64> {
    match lab.config_dump(node)?["ebpf_counters"][name].as_u64() {
        Some(n) => Ok(n),
        None => bail!("the agent's config dump has no eBPF counter {name}"),
    }
}

/// Items 5 and 10: connect() calls that capture used to let escape. `0.0.0.0` is the pod
/// itself, never the node (sent to the agent, it became a connection to the node); native
/// IPv6, which Weft does not capture, fails closed instead of leaving uncaptured.
#[test]
fn connects_that_would_escape_capture_stay_in_the_pod_or_fail() -> Result<()> {
    let spec = LabSpec::new("wl-x-escape", 1)
        .with_namespace(NS, true)
        .with_pod("a", NS, 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _node = lab.serve_in_node(1, "labtool", &["sink", "--listen", "0.0.0.0:7301"])?;
    let _own = lab.serve("a", "labtool", &["sink", "--listen", "0.0.0.0:7302"])?;
    if lab.send_ok("a", "0.0.0.0:7301", 4096)? {
        bail!("a pod's connect() to 0.0.0.0 reached a listener of the node");
    }
    if !lab.send_ok("a", "0.0.0.0:7302", 4096)? {
        bail!("a pod's connect() to 0.0.0.0 did not reach its own listener");
    }
    let before = ebpf_counter(&lab, 1, "connect_refused")?;
    if lab.send_ok("a", "[2001:db8::2]:7000", 64)? {
        bail!("a native IPv6 connect succeeded");
    }
    let after = ebpf_counter(&lab, 1, "connect_refused")?;
    if after <= before {
        bail!("the native IPv6 connect was not refused by the capture hook ({before} -> {after})");
    }
    Ok(())
}

/// Item 10: the STRICT gate drops what it cannot read (a non-first IPv4 fragment, a TCP
/// header cut short), where it used to pass them; a PERMISSIVE pod gets those. IPv6 SYNs,
/// plain or behind an extension header, are dropped on both: Weft carries IPv4 only, so
/// neither STRICT nor the plaintext inbound's policy could apply to them.
#[test]
fn the_strict_gate_drops_what_it_cannot_read() -> Result<()> {
    let spec = LabSpec::new("wl-x-gate", 1)
        .with_namespace(NS, true)
        .with_pod("strict", NS, 1, &[("app", "strict")])
        .with_pod("loose", NS, 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.write_manifest(
        "strict.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: strict}}}}\n  mtls: {{mode: STRICT}}\n"
        ),
    )?;
    lab.start_agents()?;
    let python = std::env::var("WEFT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("{}/python/raw_frames.py", env!("CARGO_MANIFEST_DIR"));
    let send = |pod: &str| -> Result<u64> {
        let before = ebpf_counter(&lab, 1, "tc_dropped")?;
        let ip = lab.pod(pod).ip.to_string();
        let report =
            lab.run_json_in_node(1, &python, &[&script, "--to", &ip], Duration::from_secs(20))?;
        if report["sent"] != 4 {
            bail!("raw_frames sent {report}");
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(ebpf_counter(&lab, 1, "tc_dropped")? - before)
    };
    // A process in each pod: the agent finds a pod's namespace through one, and keeps a
    // PERMISSIVE pod's gate closed until its plaintext inbound is in place there.
    let _s = lab.serve("strict", "labtool", &["sink", "--listen", "0.0.0.0:7000"])?;
    let _l = lab.serve("loose", "labtool", &["sink", "--listen", "0.0.0.0:7000"])?;
    let dropped = send("strict")?;
    if dropped != 4 {
        bail!("the STRICT pod's gate dropped {dropped} of the 4 frames");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let dropped = send("loose")?;
        if dropped == 2 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the PERMISSIVE pod's gate drops {dropped} of the 4 frames, not the 2 IPv6 ones");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `iptables` in `node`'s network namespace.
fn iptables(lab: &Lab, node: usize, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.node_netns(node), "iptables"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "iptables {args:?} in node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits up to 20 s until a send from a process of `node` (from `bind` if given) gives `want`.
fn expect_send_from_node(
    lab: &Lab,
    node: usize,
    target: &str,
    bind: Option<&str>,
    want: bool,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ok = lab.send_ok_from_node(node, target, bind)?;
        if ok == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "node {node} (from {}) -> {target}: expected {}, got {}",
                bind.unwrap_or("its own address"),
                if want { "success" } else { "refusal" },
                if ok { "success" } else { "refusal" },
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Item 1: the node's own address is not the mesh. The agent dials its pods from its dial
/// address with its socket mark, and only that passes STRICT: plaintext from the node's
/// processes (hostNetwork pods) and NodePort traffic masqueraded to the node's address are
/// refused, a node process that binds the dial address is refused even under PERMISSIVE,
/// and only the kubelet's probes (a node process, to a port the pod's spec probes) get in.
#[test]
fn the_nodes_own_address_is_not_the_mesh() -> Result<()> {
    let spec = LabSpec::new("wl-x-nodeip", 2)
        .with_namespace(NS, true)
        .with_namespace("plain", false)
        .with_pod("client", NS, 1, &[])
        .with_pod("server", NS, 2, &[("app", "server")])
        .with_probe_port(7200)
        .with_pod("outside", "plain", 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _app = lab.serve("server", "labtool", &["sink", "--listen", "0.0.0.0:7100"])?;
    let _probe = lab.serve("server", "labtool", &["sink", "--listen", "0.0.0.0:7200"])?;
    let _outside = lab.serve("outside", "labtool", &["sink", "--listen", "0.0.0.0:7100"])?;
    let server = lab.pod("server").ip;
    let app = format!("{server}:7100");
    let probe_port = format!("{server}:7200");
    let dial = weft_lab::DIAL_IP.to_string();

    // NodePort on node 2, as kube-proxy makes it: DNAT to the pod, and the source of what
    // was DNATed masqueraded to the node's address (on a cluster also the agent's,
    // WEFT_AGENT_IP).
    let agent_ip = lab.agent_ip(2).to_string();
    let node_port = |port: &str, to: String| -> Result<()> {
        iptables(
            &lab,
            2,
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )?;
        iptables(
            &lab,
            2,
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-p",
                "tcp",
                "-d",
                to.split(':').next().unwrap_or_default(),
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "SNAT",
                "--to-source",
                &agent_ip,
            ],
        )
    };
    node_port("30080", app.clone())?;
    node_port("30081", probe_port.clone())?;
    node_port("30082", format!("{}:7100", lab.pod("outside").ip))?;
    let node2 = weft_lab::node_ip(2);
    let via_node_port = |port: u16| format!("{node2}:{port}");

    lab.write_manifest(
        "strict.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec:\n  mtls: {{mode: STRICT}}\n"
        ),
    )?;
    // The mesh gets in: through the tunnel, the destination agent dialling from its dial
    // address with its mark.
    lab.expect_send("client", &app, true)?;
    // A hostNetwork process of the server's node does not.
    expect_send_from_node(&lab, 2, &app, None, false)?;
    // NodePort: the path works (to a pod outside the mesh), and is refused to the STRICT pod,
    // on its probe port too, since forwarded traffic is no probe.
    expect_send_from_node(&lab, 1, &via_node_port(30082), None, true)?;
    let dropped = ebpf_counter(&lab, 2, "tc_dropped")?;
    expect_send_from_node(&lab, 1, &via_node_port(30080), None, false)?;
    expect_send_from_node(&lab, 1, &via_node_port(30081), None, false)?;
    if ebpf_counter(&lab, 2, "tc_dropped")? < dropped + 2 {
        bail!("the gate did not count the NodePort connections it dropped");
    }
    // The kubelet's probe: a node process to the port the pod's readiness probe names.
    let probes = ebpf_counter(&lab, 2, "tc_probes")?;
    expect_send_from_node(&lab, 2, &probe_port, None, true)?;
    if ebpf_counter(&lab, 2, "tc_probes")? <= probes {
        bail!("the probe did not pass as a probe");
    }
    // A node process posing as the agent: the dial address without the agent's mark.
    expect_send_from_node(&lab, 2, &app, Some(&dial), false)?;

    // PERMISSIVE: plaintext from the node's address is plaintext like any other, so it goes
    // through the agent's plaintext inbound (and its policy); the forged dial address stays
    // out.
    lab.write_manifest(
        "strict.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec:\n  mtls: {{mode: PERMISSIVE}}\n"
        ),
    )?;
    expect_send_from_node(&lab, 2, &app, None, true)?;
    let steered = ebpf_counter(&lab, 2, "plaintext_steered")?;
    expect_send_from_node(&lab, 1, &via_node_port(30080), None, true)?;
    if ebpf_counter(&lab, 2, "plaintext_steered")? <= steered {
        bail!("NodePort traffic from the node's address skipped the plaintext inbound");
    }
    let forged = ebpf_counter(&lab, 2, "tc_forged")?;
    expect_send_from_node(&lab, 2, &app, Some(&dial), false)?;
    if ebpf_counter(&lab, 2, "tc_forged")? <= forged {
        bail!("the forged dial address was not counted");
    }
    lab.expect_send("client", &app, true)?;
    lab.down()
}

/// Item 9: every node agent has the same SPIFFE ID, so a node that answers HBONE meant for
/// another (here node 3's agent, after node 1 redirects node 2's tunnel port to it) used
/// to pass. Each agent's certificate now names its node's address, and the client checks
/// it against the address it dialled: the handshake fails.
#[test]
fn another_nodes_agent_cannot_answer_for_a_node() -> Result<()> {
    let spec = LabSpec::new("wl-x-nodeid", 3)
        .with_namespace(NS, true)
        .with_pod("client", NS, 1, &[])
        .with_pod("server", NS, 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _sink = lab.serve("server", "labtool", &["sink", "--listen", "0.0.0.0:7100"])?;
    let target = format!("{}:7100", lab.pod("server").ip);
    let (node_2, node_3) = (weft_lab::node_ip(2), weft_lab::node_ip(3));
    // Before any tunnel to node 2 exists: node 1 sends what it dials to node 2's HBONE port
    // to node 3's.
    iptables(
        &lab,
        1,
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &node_2.to_string(),
            "--dport",
            "15008",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{node_3}:15008"),
        ],
    )?;
    lab.expect_send("client", &target, false)?;
    let log = lab.agent_log(1);
    // rustls reports the verifier's error by its Debug form: node 3's certificate, refused
    // for not naming the address dialled.
    let refused = format!("IpAddress({node_3})");
    if !(log.contains("OtherNode") && log.contains(&refused)) {
        bail!(
            "node 1's agent did not refuse node 3's certificate ({refused}):\n{}",
            tail(&log)
        );
    }
    iptables(&lab, 1, &["-t", "nat", "-F", "OUTPUT"])?;
    lab.expect_send("client", &target, true)?;
    lab.down()
}

/// Item 11: a pod runs before its node's agent attaches its hooks. What it connected to
/// then was never captured, and plaintext it accepted then never met STRICT. When the agent
/// enrols the pod and attaches its gate, it closes both; what the gates would have allowed
/// anyway lives on.
#[test]
fn connections_made_before_the_gates_were_attached_are_closed() -> Result<()> {
    let spec = LabSpec::new("wl-x-window", 2)
        .with_namespace(NS, true)
        .with_namespace("plain", false)
        .with_pod("early", NS, 1, &[])
        .with_pod("server", NS, 2, &[])
        .with_pod("far", "plain", 2, &[])
        .with_pod("outsider", "plain", 1, &[])
        .with_pod("bystander", "plain", 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.write_manifest(
        "strict.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec:\n  mtls: {{mode: STRICT}}\n"
        ),
    )?;
    let _server = lab.serve("server", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let _far = lab.serve("far", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    // Before any agent runs: the mesh pod's connection out, plaintext into the STRICT pod,
    // and a connection between two pods outside the mesh.
    let holds = [
        ("early", "far"),
        ("outsider", "server"),
        ("bystander", "far"),
    ];
    let mut running = Vec::new();
    for (from, to) in holds {
        let target = format!("{}:7100", lab.pod(to).ip);
        let args = ["hold", "--connect", target.as_str(), "--seconds", "15"];
        let log = lab.log_path(from, "labtool", &args);
        let child = lab.spawn(from, "labtool", &args)?;
        running.push((from, to, child, log));
    }
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agents()?;
    for (from, to, mut child, log) in running {
        child.wait_timeout(Duration::from_secs(30))?;
        let report = report_in(&log)?;
        let up = report["round_trips"].as_u64().unwrap_or(0) > 0;
        let closed = report["ended"] != "timeout";
        let want_closed = from == "early" || to == "server";
        if !up || closed != want_closed {
            bail!(
                "{from} -> {to}: expected it up, then {}: {report}\nagent logs:\n{}\n{}",
                if want_closed {
                    "closed"
                } else {
                    "alive to the end"
                },
                tail(&lab.agent_log(1)),
                tail(&lab.agent_log(2)),
            );
        }
    }
    // What a pod's first init container runs so that its containers start captured: it
    // returns once the agent has attached every hook of the pod, and not for a pod outside
    // the mesh.
    let ready = format!("{}:15021", lab.agent_ip(1));
    let await_pod = |pod: &str, seconds: &str| -> Result<bool> {
        let ip = lab.pod(pod).ip.to_string();
        let args = [
            "await-pod",
            "--agent",
            &ready,
            "--pod-ip",
            &ip,
            "--timeout-seconds",
            seconds,
        ];
        Ok(lab
            .run(pod, "weft-agent", &args, Duration::from_secs(20))?
            .status
            .success())
    };
    if !await_pod("early", "10")? {
        bail!("await-pod did not see the enrolled pod ready");
    }
    if await_pod("outsider", "1")? {
        bail!("await-pod passed for a pod outside the mesh");
    }
    lab.down()
}

/// Item 5: a pod's connection to a destination outside the mesh (here a process of another
/// node, as the API server or a metadata endpoint would be) leaves from the pod's own
/// network namespace with the pod's address, not from the agent as the node.
#[test]
fn egress_leaves_as_the_pod_not_as_the_node() -> Result<()> {
    let spec = LabSpec::new("wl-x-egress", 2)
        .with_namespace(NS, true)
        .with_pod("client", NS, 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let args = ["sink", "--listen", "0.0.0.0:7300"];
    let _sink = lab.serve_in_node(2, "labtool", &args)?;
    let target = format!("{}:7300", weft_lab::node_ip(2));
    let connects = ebpf_counter(&lab, 1, "redirected")?;
    lab.expect_send("client", &target, true)?;
    if ebpf_counter(&lab, 1, "redirected")? <= connects {
        bail!("the connection was not captured: nothing to check");
    }
    let log = std::fs::read_to_string(lab.log_path("node-2", "labtool", &args))?;
    let peers: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("sink: connection from "))
        .collect();
    let pod = lab.pod("client").ip.to_string();
    let agent = lab.agent_ip(1).to_string();
    if peers.is_empty()
        || !peers
            .iter()
            .all(|p| p.split(':').next() == Some(pod.as_str()))
    {
        bail!("the sink saw {peers:?}; expected only the pod {pod}, never the agent {agent}");
    }
    lab.down()
}

/// The agent's resident memory, in MiB.
fn agent_rss_mib(lab: &Lab, node: usize) -> Result<f64> {
    let pid = lab
        .agent_pid(node)
        .ok_or_else(|| anyhow::anyhow!("agent {node} is not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for agent {node}"))?;
    Ok(kib / 1024.0)
}

/// Bounds: 3,000 idle plaintext connections to one pod. The agent carries at most its
/// per-pod cap (1,000 here) of them, refuses and counts the rest, holds no copy buffer for an
/// idle connection, and the node's other pods stay reachable meanwhile.
#[test]
fn idle_plaintext_connections_to_one_pod_are_capped() -> Result<()> {
    let spec = LabSpec::new("wl-x-idle", 2)
        .with_namespace(NS, true)
        .with_namespace("plain", false)
        .with_pod("target", NS, 2, &[])
        .with_pod("other", NS, 2, &[])
        .with_pod("client", NS, 1, &[])
        .with_pod("flood", "plain", 1, &[]);
    let mut lab = Lab::up(spec)?;
    lab.set_agent_args(2, &["--max-connections-per-pod", "1000"]);
    lab.start_agents()?;
    let _target = lab.serve("target", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let _other = lab.serve("other", "labtool", &["sink", "--listen", "0.0.0.0:7100"])?;
    let target = format!("{}:7100", lab.pod("target").ip);
    let other = format!("{}:7100", lab.pod("other").ip);
    lab.expect_send("client", &other, true)?;
    let before = agent_rss_mib(&lab, 2)?;

    let args = [
        "idle",
        "--connect",
        target.as_str(),
        "--count",
        "3000",
        "--seconds",
        "6",
    ];
    let log = lab.log_path("flood", "labtool", &args);
    let mut flood = lab.spawn("flood", "labtool", &args)?;
    // While they are open: the others still get through, and the agent stays small.
    std::thread::sleep(Duration::from_secs(3));
    lab.expect_send("client", &other, true)?;
    let during = agent_rss_mib(&lab, 2)?;
    flood.wait_timeout(Duration::from_secs(30))?;
    let report = report_in(&log)?;
    let alive = report["alive"].as_u64().unwrap_or(u64::MAX);
    if report["opened"].as_u64() != Some(3000) || !(900..=1000).contains(&alive) {
        bail!("expected 3000 opened and about 1000 kept: {report}");
    }
    let refused = metric_sum(
        &lab,
        2,
        "weft_connections_refused_by_limit_total",
        &["limit=\"pod\""],
    )?;
    if refused < 1900.0 {
        bail!("the agent counted {refused} refusals, expected about 2000");
    }
    // 1,000 carried connections: two sockets and a task each, no buffers while idle.
    if during - before > 20.0 {
        bail!("the agent grew from {before:.1} MiB to {during:.1} MiB for 1,000 idle connections");
    }
    println!("agent RSS {before:.1} MiB before, {during:.1} MiB with 1,000 idle connections");
    lab.down()
}

/// Item 2, live: an L4 connection the waypoint carries ends when a policy attached to the
/// waypoint comes to deny it, as the node agents end theirs.
#[test]
fn a_new_waypoint_policy_ends_a_live_tcp_connection() -> Result<()> {
    let spec = LabSpec::new("wl-x-wplive", 2)
        .with_namespace(NS, true)
        .with_waypoint(WAYPOINT, NS, 1)
        .with_pod("client", NS, 1, &[])
        .with_pod("b1", NS, 2, &[("app", "echo")])
        .with_service(tcp_service(
            "echo",
            [10, 96, 0, 21],
            &[("istio.io/use-waypoint", WAYPOINT)],
        ));
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let _b1 = lab.serve("b1", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let report = std::thread::scope(|s| -> Result<serde_json::Value> {
        let hold = s.spawn(|| {
            lab.run_json(
                "client",
                "labtool",
                &["hold", "--connect", "10.96.0.21:7100", "--seconds", "15"],
                Duration::from_secs(30),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        lab.write_manifest(
            "deny.yaml",
            &format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-7100, namespace: {NS}}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: {WAYPOINT}}}]\n  action: DENY\n  rules: [{{to: [{{operation: {{ports: ['7100']}}}}]}}]\n"
            ),
        )?;
        hold.join().map_err(|_| anyhow::anyhow!("hold panicked"))?
    })?;
    let trips = report["round_trips"].as_u64().unwrap_or(0);
    if trips < 20 || report["ended"] == "timeout" {
        bail!(
            "the connection should have been up, then ended by the DENY: {report}\n{}",
            waypoint_log_tail(&lab)
        );
    }
    let (_, metrics) = lab.waypoint_get(WAYPOINT, 15020, "/metrics")?;
    if !metrics
        .lines()
        .any(|l| l.starts_with("weft_waypoint_l4_closed_by_policy_total 1"))
    {
        bail!("the waypoint did not count the connection it ended");
    }
    lab.down()
}

/// What /config_dump says of node `node`'s original-destination records.
fn orig_records(lab: &Lab, node: usize) -> Result<u64> {
    match lab.config_dump(node)?["orig_records"].as_u64() {
        Some(n) => Ok(n),
        None => bail!("the agent's config dump has no orig_records"),
    }
}

/// The sum of the samples of agent `node`'s metric `name` that carry every one of `labels`.
fn metric_sum(lab: &Lab, node: usize, name: &str, labels: &[&str]) -> Result<f64> {
    let (_, metrics) = lab.agent_get(node, 15020, "/metrics")?;
    Ok(sum_series(&metrics, name, labels))
}

/// Waits until node `node` holds no original-destination record.
fn expect_no_orig_records(lab: &Lab, node: usize, after: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = orig_records(lab, node)?;
        if left == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{left} original-destination records were left behind after {after}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shared maps: a pod's connection flood cannot evict, or crowd out, another pod's
/// original-destination records. Records wait on the connecting socket until it is
/// established (freed with it), then by 4-tuple until the agent consumes them; the second
/// map is not LRU, and a record leaves when the agent consumes it or when its client closes
/// before the agent's end was established. Connects abandoned mid-handshake, connections
/// reset at once, and connections that send and close while the agent cannot accept (it is
/// stopped) all leave nothing behind, another pod keeps connecting throughout, and none of
/// the connections that sent and closed lost its record.
#[test]
fn a_connection_flood_leaves_no_records_and_crowds_out_no_other_pod() -> Result<()> {
    let spec = LabSpec::new("wl-x-orig", 2)
        .with_namespace(NS, true)
        .with_pod("flood", NS, 1, &[])
        .with_pod("victim", NS, 1, &[])
        .with_pod("target", NS, 2, &[]);
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let _target = lab.serve("target", "labtool", &["echo", "--listen", "0.0.0.0:7100"])?;
    let _sink = lab.serve("target", "labtool", &["sink", "--listen", "0.0.0.0:7101"])?;
    let target = format!("{}:7100", lab.pod("target").ip);
    let sink = format!("{}:7101", lab.pod("target").ip);
    lab.expect_send("victim", &sink, true)?;

    // Abandoned and reset connections, while another pod opens connections of its own.
    for (kind, count) in [("abandon", "20000"), ("reset", "5000")] {
        let (flood, victim) = std::thread::scope(|s| {
            let flood = s.spawn(|| {
                lab.run_json(
                    "flood",
                    "labtool",
                    &[
                        "burst",
                        "--connect",
                        &target,
                        "--count",
                        count,
                        "--kind",
                        kind,
                    ],
                    Duration::from_secs(120),
                )
            });
            let victim = lab.run_json(
                "victim",
                "labtool",
                &[
                    "conns",
                    "--connect",
                    &target,
                    "--seconds",
                    "3",
                    "--concurrency",
                    "4",
                ],
                Duration::from_secs(30),
            );
            (flood.join().expect("flood thread"), victim)
        });
        let (flood, victim) = (flood?, victim?);
        println!("{kind} burst {flood}; the other pod meanwhile {victim}");
        if victim["errors"].as_u64() != Some(0) || victim["conns"].as_u64() < Some(1) {
            bail!("the other pod's connections suffered during the {kind} burst: {victim}");
        }
        expect_no_orig_records(&lab, 1, &format!("the {kind} burst"))?;
    }

    // Connections that send a byte and close while the agent is stopped: its accept queue
    // fills, and the records of those it takes later must still be there, though their
    // clients have closed. (A client that reset its connection may lose its record before
    // the agent takes it; that connection is dead, so only this burst is counted.)
    let no_orig = ["result=\"no_original_destination\""];
    let lost_before = metric_sum(&lab, 1, "weft_outbound_connections_total", &no_orig)?;
    let pid = nix::unistd::Pid::from_raw(lab.agent_pid(1).expect("agent 1 runs") as i32);
    let burst = std::thread::scope(|s| -> Result<serde_json::Value> {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
        let burst = s.spawn(|| {
            lab.run_json(
                "flood",
                "labtool",
                &[
                    "burst",
                    "--connect",
                    &target,
                    "--count",
                    "2000",
                    "--kind",
                    "send-close",
                    "--concurrency",
                    "2000",
                ],
                Duration::from_secs(60),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
        burst.join().expect("burst thread")
    })?;
    println!("send-close burst with the agent stopped {burst}");
    if burst["opened"].as_u64() != Some(2000) {
        bail!("not every connection opened once the agent was back: {burst}");
    }
    expect_no_orig_records(&lab, 1, "the send-close burst")?;
    let lost = metric_sum(&lab, 1, "weft_outbound_connections_total", &no_orig)? - lost_before;
    if lost != 0.0 {
        bail!("the agent accepted {lost} captured connections whose record was gone");
    }
    let failed = ebpf_counter(&lab, 1, "orig_record_failed")?;
    if failed != 0 {
        bail!("{failed} original-destination records could not be made");
    }
    lab.expect_send("victim", &sink, true)?;
    lab.down()
}
