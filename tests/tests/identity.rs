//! End-to-end: workload identity. The tunnel refuses certificates of another root and
//! identities of another trust domain, the CA signs a node only its own pods' identities,
//! and certificates rotate under a live connection without breaking it. Needs root; the
//! probe (`weft-probe`) plays the misbehaving peer from a node's network namespace.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_lab::{Guarded, Lab, LabSpec};

const LONG: Duration = Duration::from_secs(60);
const CA: &str = "10.99.0.250:15012";
const AGENT_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-agent";

/// Two nodes, namespace `mesh` in the mesh: a on node 1, c on node 2.
fn spec(name: &str) -> LabSpec {
    LabSpec::new(name, 2)
        .with_namespace("mesh", true)
        .with_pod("a", "mesh", 1, &[])
        .with_pod("c", "mesh", 2, &[])
}

fn up(spec: LabSpec) -> Result<Lab> {
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    Ok(lab)
}

fn sink(lab: &Lab, pod: &str, listen: &str) -> Result<Guarded> {
    lab.serve(pod, "labtool", &["sink", "--listen", listen])
}

/// Stops the pods' servers, then the lab: the teardown waits (up to 5 s) for the lab's
/// processes to exit after the agents' SIGTERM before it kills the rest.
fn down(lab: Lab, servers: Vec<Guarded>) -> Result<()> {
    servers.into_iter().for_each(Guarded::kill);
    lab.down()
}

fn hbone_address(node: usize) -> String {
    format!("10.99.0.{node}:15008")
}

/// What one probe run showed: whether it exited 0, and the JSON it printed.
struct Probe {
    success: bool,
    out: Value,
}

/// Runs `weft-probe` in the network namespace of `node` (the probe needs no cgroup).
fn probe(lab: &Lab, node: usize, args: &[&str]) -> Result<Probe> {
    let (success, out) = lab.probe(node, args)?;
    Ok(Probe { success, out })
}

fn root_cert(lab: &Lab) -> String {
    lab.ca_dir().join("root-cert.pem").display().to_string()
}

/// One HBONE stream from node 1 to node 2's agent, with a client certificate for `identity`
/// minted from `root` (a directory with root-cert.pem and root-key.pem); the server is
/// checked against the lab's real root.
fn hbone_probe(lab: &Lab, root: &std::path::Path, identity: &str, target: &str) -> Result<Probe> {
    probe(
        lab,
        1,
        &[
            "hbone",
            "--connect",
            &hbone_address(2),
            "--authority",
            target,
            "--identity",
            identity,
            "--root-cert",
            &root.join("root-cert.pem").display().to_string(),
            "--root-key",
            &root.join("root-key.pem").display().to_string(),
            "--bundle",
            &root_cert(lab),
            "--server-identity",
            AGENT_ID,
            "--bytes",
            "65536",
        ],
    )
}

/// Asks the CA, from `node`'s namespace, to sign `identity`, with the token in `token_file`
/// (none: no authorization at all).
fn csr(lab: &Lab, node: usize, identity: &str, token_file: Option<&PathBuf>) -> Result<Probe> {
    let bundle = root_cert(lab);
    let mut args = vec![
        "csr",
        "--ca",
        CA,
        "--bundle",
        &bundle,
        "--identity",
        identity,
    ];
    let token = token_file.map(|f| f.display().to_string());
    if let Some(token) = &token {
        args.extend(["--token-file", token.as_str()]);
    }
    probe(lab, node, &args)
}

fn node_token(lab: &Lab, node: usize) -> PathBuf {
    lab.ca_dir().join(format!("node-{node}.token"))
}

/// The value of an agent's Prometheus series (the whole line's name and labels), 0 if absent.
fn metric(lab: &Lab, node: usize, series: &str) -> Result<f64> {
    let (_, body) = lab.agent_get(node, 15020, "/metrics")?;
    Ok(body
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0))
}

/// Waits until the agent log of `node` holds a line with every one of `needles`.
fn wait_log_line(lab: &Lab, node: usize, needles: &[&str], timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = lab.agent_log(node);
        if let Some(line) = log
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "node {node}'s agent logged no line with {needles:?}; last lines (newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ca_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.join("logs/ca.log")).unwrap_or_default()
}

/// The CA's log lines about signing `identity`.
fn signing_lines(lab: &Lab, identity: &str) -> String {
    ca_log(lab)
        .lines()
        .filter(|line| line.contains("CA signed a certificate") && line.contains(identity))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many certificates the CA has signed for `identity` so far.
fn signed(lab: &Lab, identity: &str) -> usize {
    ca_log(lab)
        .lines()
        .filter(|line| line.contains("CA signed a certificate") && line.contains(identity))
        .count()
}

#[test]
fn an_untrusted_client_certificate_is_refused() -> Result<()> {
    let lab = up(spec("wl-t-id-rogue"))?;
    let server = sink(&lab, "c", "0.0.0.0:7000")?;
    let target = format!("{}:7000", lab.pod("c").ip);
    let identity = "spiffe://cluster.local/ns/mesh/sa/default";

    // Same trust domain, same identity, but signed by a root the agents never trusted.
    let rogue = lab.dir.join("rogue");
    let out = Command::new(weft_lab::bin_dir()?.join("weft-agent"))
        .args(["ca", "init", "--trust-domain", "cluster.local", "--out"])
        .arg(&rogue)
        .output()
        .context("running weft-agent ca init")?;
    if !out.status.success() {
        bail!(
            "weft-agent ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refused = hbone_probe(&lab, &rogue, identity, &target)?;
    if refused.success || refused.out["ok"] != false {
        bail!(
            "a certificate from a rogue root opened a tunnel: {}",
            refused.out
        );
    }
    if !refused.out["status"].is_null() {
        bail!(
            "a rogue certificate should fail the TLS handshake, not get an HTTP answer: {}",
            refused.out
        );
    }
    let error = refused.out["error"].as_str().unwrap_or_default();
    if !error.contains("alert") {
        bail!(
            "expected the server's TLS alert in the probe's error: {}",
            refused.out
        );
    }
    // The refusal is node 2's, for the reason that matters: the chain does not lead to the
    // lab's root. The rogue root has the lab root's subject name, so path building finds the
    // lab root and its signature check fails (BadSignature); a root of another name would
    // not be found at all (UnknownIssuer).
    let line = wait_log_line(
        &lab,
        2,
        &["TLS handshake failed", "10.99.0.1"],
        Duration::from_secs(5),
    )?;
    if ![
        "invalid peer certificate: BadSignature",
        "invalid peer certificate: UnknownIssuer",
    ]
    .iter()
    .any(|reason| line.contains(reason))
    {
        bail!("node 2 refused the handshake for another reason than the chain: {line}");
    }

    // Control: the same probe with a certificate of the lab's root gets through to c.
    let accepted = hbone_probe(&lab, &lab.ca_dir(), identity, &target)?;
    if !accepted.success || accepted.out["ok"] != true {
        bail!(
            "a certificate of the lab's own root was refused: {}",
            accepted.out
        );
    }
    if accepted.out["reply"] != accepted.out["sent_sha256"] {
        bail!(
            "the sink behind the tunnel did not get the bytes intact: {}",
            accepted.out
        );
    }
    down(lab, vec![server])
}

#[test]
fn a_foreign_trust_domain_is_refused() -> Result<()> {
    let lab = up(spec("wl-t-id-foreign"))?;
    let server = sink(&lab, "c", "0.0.0.0:7000")?;
    let target = format!("{}:7000", lab.pod("c").ip);
    let series = "weft_tunnel_denials_total{reason=\"foreign_trust_domain\"}";
    let before = metric(&lab, 2, series)?;

    // Signed by the lab's real root, so TLS succeeds; only the trust domain is wrong.
    let out = hbone_probe(
        &lab,
        &lab.ca_dir(),
        "spiffe://evil.example/ns/mesh/sa/default",
        &target,
    )?;
    if out.success || out.out["ok"] != false {
        bail!(
            "an identity of trust domain evil.example opened a tunnel: {}",
            out.out
        );
    }
    if out.out["status"] != 401 {
        bail!("expected HTTP 401 from node 2's agent: {}", out.out);
    }
    let after = metric(&lab, 2, series)?;
    if after < before + 1.0 {
        let (_, body) = lab.agent_get(2, 15020, "/metrics")?;
        let denials: Vec<&str> = body.lines().filter(|l| l.contains("denials")).collect();
        bail!("{series} went from {before} to {after}; node 2's denial series: {denials:?}");
    }
    down(lab, vec![server])
}

#[test]
fn the_ca_refuses_other_nodes_pods_and_missing_credentials() -> Result<()> {
    let lab = up(LabSpec::new("wl-t-id-ca", 2)
        .with_namespace("mesh", true)
        .with_pod_as("a", "mesh", 1, "alpha")
        .with_pod_as("c", "mesh", 2, "gamma"))?;
    let alpha = "spiffe://cluster.local/ns/mesh/sa/alpha";
    let gamma = "spiffe://cluster.local/ns/mesh/sa/gamma";
    let node1 = node_token(&lab, 1);

    let out = csr(&lab, 1, alpha, Some(&node1))?;
    if !out.success || out.out["identity"] != alpha {
        bail!(
            "node 1 could not get its own pod's identity {alpha}: {}",
            out.out
        );
    }

    let out = csr(&lab, 1, gamma, Some(&node1))?;
    if out.success || out.out["code"] != "PermissionDenied" {
        bail!(
            "node 1 asking for node 2's {gamma}: expected PermissionDenied: {}",
            out.out
        );
    }
    // Control: gamma is signable, by the node that runs it.
    let out = csr(&lab, 2, gamma, Some(&node_token(&lab, 2)))?;
    if !out.success || out.out["identity"] != gamma {
        bail!(
            "node 2 could not get its own pod's identity {gamma}: {}",
            out.out
        );
    }

    let out = csr(&lab, 1, alpha, None)?;
    if out.success || out.out["code"] != "Unauthenticated" {
        bail!(
            "a request without a token: expected Unauthenticated: {}",
            out.out
        );
    }

    let forged = lab.dir.join("forged.token");
    std::fs::write(&forged, "0123456789abcdef0123456789abcdef\n")?;
    let out = csr(&lab, 1, alpha, Some(&forged))?;
    if out.success || out.out["code"] != "Unauthenticated" {
        bail!("a made-up token: expected Unauthenticated: {}", out.out);
    }
    lab.down()
}

#[test]
fn a_certificate_rotation_during_a_long_transfer_does_not_break_it() -> Result<()> {
    const TTL: u64 = 4;
    const TRANSFER: Duration = Duration::from_secs(8);
    let mut lab = Lab::up(
        LabSpec::new("wl-t-id-rotate", 2)
            .with_namespace("mesh", true)
            .with_pod_as("a", "mesh", 1, "sender")
            .with_pod("c", "mesh", 2, &[]),
    )?;
    let ttl = TTL.to_string();
    for node in 1..=2 {
        lab.set_agent_args(node, &["--cert-ttl-seconds", &ttl]);
    }
    lab.start_agents()?;
    let discard_server = lab.serve("c", "labtool", &["discard", "--listen", "0.0.0.0:7001"])?;
    let sink_server = sink(&lab, "c", "0.0.0.0:7000")?;
    let c = lab.pod("c").ip;
    let (discard, sink_addr) = (format!("{c}:7001"), format!("{c}:7000"));
    let sender = "spiffe://cluster.local/ns/mesh/sa/sender";
    let opened = "weft_tunnel_pool_connections_opened_total";
    let send_mib = |what: &str| -> Result<()> {
        let out = lab.run_json(
            "a",
            "labtool",
            &["send", "--connect", &sink_addr, "--bytes", "1048576"],
            LONG,
        )?;
        if out["ok"] != true {
            bail!("{what}: 1 MiB did not arrive intact: {out}");
        }
        Ok(())
    };

    let signed_before = signed(&lab, sender);
    let start = Instant::now();
    let seconds = TRANSFER.as_secs().to_string();
    let (tput, mid) = std::thread::scope(|scope| {
        let tput = scope.spawn(|| {
            lab.run_json(
                "a",
                "labtool",
                &["tput", "--connect", &discard, "--seconds", &seconds],
                LONG,
            )
        });
        // Once the first certificate has expired and renewals came, a second connection
        // while the first is busy needs a fresh handshake, with the current certificate.
        let mid = (|| -> Result<(f64, f64)> {
            let deadline = start + TRANSFER - Duration::from_secs(1);
            loop {
                let renewals = signed(&lab, sender).saturating_sub(signed_before);
                if start.elapsed() > Duration::from_secs(TTL + 1) && renewals >= 2 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{:?} into the transfer, the CA had signed {sender} {renewals} times \
                         (agents run with --cert-ttl-seconds {TTL}); its signings:\n{}",
                        start.elapsed(),
                        signing_lines(&lab, sender)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let before = metric(&lab, 1, opened)?;
            send_mib("a new connection during the transfer")?;
            Ok((before, metric(&lab, 1, opened)?))
        })();
        (tput.join(), mid)
    });
    let tput = tput.map_err(|_| anyhow::anyhow!("the tput thread panicked"))??;
    let transfer_took = start.elapsed();
    let signings = signed(&lab, sender) - signed_before;
    let bytes = tput["bytes"].as_u64().unwrap_or(0);
    if bytes == 0 {
        bail!("the long transfer delivered nothing: {tput}");
    }
    let (opened_before, opened_after) = mid?;
    if opened_after <= opened_before {
        bail!(
            "the connection during the transfer opened no new tunnel connection ({opened} \
             {opened_before} -> {opened_after}), so it proved no handshake with a renewed certificate"
        );
    }
    if signings < 3 {
        bail!(
            "the CA signed {sender} {signings} times during the {transfer_took:?} transfer \
             (ttl {TTL} s); its signings:\n{}",
            signing_lines(&lab, sender)
        );
    }
    eprintln!(
        "{bytes} bytes in {:?}; {signings} signings of {sender}",
        tput["seconds"]
    );

    send_mib("a new connection after the transfer")?;
    down(lab, vec![discard_server, sink_server])
}
