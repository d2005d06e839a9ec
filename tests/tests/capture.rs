//! End-to-end: eBPF capture and the same-node splice, with real agents in the lab, on the real
//! kernel. Needs root; `cargo xtask test` runs these one lab at a time.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_lab::{Guarded, Lab, LabSpec};

const MIB: u64 = 1024 * 1024;
const SIZES: [u64; 4] = [0, 1, 64 * 1024, 100 * MIB];
const LONG: Duration = Duration::from_secs(120);

/// Two nodes. `mesh` is ambient: a and b on node 1, c on node 2. `plain` is not: p on node 1.
fn spec(name: &str) -> LabSpec {
    LabSpec::new(name, 2)
        .with_namespace("mesh", true)
        .with_namespace("plain", false)
        .with_pod("a", "mesh", 1, &[])
        .with_pod("b", "mesh", 1, &[])
        .with_pod("c", "mesh", 2, &[])
        .with_pod("p", "plain", 1, &[])
}

fn up(name: &str) -> Result<Lab> {
    let mut lab = Lab::up(spec(name))?;
    lab.start_agents()?;
    Ok(lab)
}

fn sink(lab: &Lab, pod: &str, listen: &str) -> Result<Guarded> {
    lab.serve(pod, "labtool", &["sink", "--listen", listen])
}

/// Sends `bytes` from `from` to `to_ip:port` and asserts they arrived byte for byte.
fn send(lab: &Lab, from: &str, target: &str, bytes: u64) -> Result<()> {
    let out = lab.run_json(
        from,
        "labtool",
        &["send", "--connect", target, "--bytes", &bytes.to_string()],
        LONG,
    )?;
    if out["ok"] != true || out["bytes"] != bytes {
        bail!("{from} -> {target}: {bytes} bytes did not arrive intact: {out}");
    }
    Ok(())
}

fn counters(lab: &Lab, node: usize) -> Result<Value> {
    Ok(lab.config_dump(node)?["ebpf_counters"].clone())
}

fn counter(values: &Value, name: &str) -> u64 {
    values[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {values}"))
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

/// The first metrics line of node `node` that contains `needle`.
fn metric_line(lab: &Lab, node: usize, needle: &str) -> Result<Option<String>> {
    let (_, body) = lab.agent_get(node, 15020, "/metrics")?;
    Ok(body
        .lines()
        .find(|l| !l.starts_with('#') && l.contains(needle))
        .map(str::to_string))
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(if text.trim().is_empty() {
        Value::Array(vec![])
    } else {
        serde_json::from_str(&text)?
    })
}

/// Names of the programs attached directly to a cgroup.
fn cgroup_programs(cgroup: &std::path::Path) -> Result<Vec<String>> {
    let attached = bpftool(&["cgroup", "show", &cgroup.display().to_string()])?;
    Ok(attached
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn transfers_are_byte_identical_on_the_same_node_and_across_nodes() -> Result<()> {
    let lab = up("wl-t-bytes")?;
    let _b = sink(&lab, "b", "0.0.0.0:7000")?;
    let _c = sink(&lab, "c", "0.0.0.0:7000")?;
    let (b, c) = (
        format!("{}:7000", lab.pod("b").ip),
        format!("{}:7000", lab.pod("c").ip),
    );
    let before = counters(&lab, 1)?;
    for bytes in SIZES {
        send(&lab, "a", &b, bytes)?;
        send(&lab, "a", &c, bytes)?;
    }
    let after = counters(&lab, 1)?;
    // Cross node: every connection went to the agent and was forwarded.
    assert_eq!(
        counter(&after, "redirected") - counter(&before, "redirected"),
        4,
        "{after}"
    );
    assert!(
        metric(
            &lab,
            1,
            "weft_outbound_connections_total{result=\"forwarded\"}"
        )? >= 4.0
    );
    let carried = metric(&lab, 1, "weft_outbound_bytes_total{direction=\"sent\"}")?;
    assert!(
        carried >= (100 * MIB) as f64,
        "agent carried {carried} bytes"
    );
    // Same node: left direct, and the 100 MiB crossed in the kernel splice.
    assert_eq!(
        counter(&after, "direct_local") - counter(&before, "direct_local"),
        4,
        "{after}"
    );
    let spliced = counter(&after, "spliced_bytes") - counter(&before, "spliced_bytes");
    assert!(
        spliced >= 100 * MIB,
        "only {spliced} bytes spliced: {after}"
    );
    lab.down()
}

#[test]
fn a_dual_stack_server_is_spliced_too() -> Result<()> {
    // A server on [::] accepts IPv4 clients on v4-mapped IPv6 sockets.
    let lab = up("wl-t-v6map")?;
    let _b = sink(&lab, "b", "[::]:7001")?;
    let before = counters(&lab, 1)?;
    send(&lab, "a", &format!("{}:7001", lab.pod("b").ip), 8 * MIB)?;
    let after = counters(&lab, 1)?;
    let spliced = counter(&after, "spliced_bytes") - counter(&before, "spliced_bytes");
    assert!(spliced >= 8 * MIB, "v4-mapped socket not spliced: {after}");
    lab.down()
}

#[test]
fn same_node_traffic_goes_through_the_agent_when_direct_is_off() -> Result<()> {
    let mut lab = Lab::up(spec("wl-t-viaagent"))?;
    lab.set_agent_args(1, &["--no-direct-local"]);
    lab.start_agents()?;
    let _b = sink(&lab, "b", "0.0.0.0:7000")?;
    let b = format!("{}:7000", lab.pod("b").ip);
    let before = counters(&lab, 1)?;
    for bytes in SIZES {
        send(&lab, "a", &b, bytes)?;
    }
    let after = counters(&lab, 1)?;
    assert_eq!(
        counter(&after, "redirected") - counter(&before, "redirected"),
        4,
        "{after}"
    );
    assert_eq!(
        counter(&after, "direct_local"),
        counter(&before, "direct_local")
    );
    // The agent carried the bytes itself: its hops keep TCP (and its flow control), and are
    // not spliced.
    let carried = metric(&lab, 1, "weft_outbound_bytes_total{direction=\"sent\"}")?;
    assert!(
        carried >= (100 * MIB) as f64,
        "agent carried {carried} bytes"
    );
    assert_eq!(
        counter(&after, "spliced_bytes"),
        counter(&before, "spliced_bytes"),
        "{after}"
    );
    lab.down()
}

#[test]
fn a_pod_in_an_unlabelled_namespace_is_not_captured() -> Result<()> {
    let lab = up("wl-t-plain")?;
    let dump = lab.config_dump(1)?;
    let mut enrolled = weft_lab::enrolled_pods(&dump);
    enrolled.sort();
    assert_eq!(
        enrolled,
        vec!["mesh/a".to_string(), "mesh/b".to_string()],
        "{dump}"
    );
    assert!(cgroup_programs(&lab.pod("p").cgroup)?.is_empty());
    let _c = sink(&lab, "c", "0.0.0.0:7000")?;
    let before = counters(&lab, 1)?;
    send(&lab, "p", &format!("{}:7000", lab.pod("c").ip), MIB)?;
    let after = counters(&lab, 1)?;
    assert_eq!(
        counter(&after, "connect_seen"),
        counter(&before, "connect_seen"),
        "{after}"
    );
    assert_eq!(
        counter(&after, "redirected"),
        counter(&before, "redirected")
    );
    lab.down()
}

#[test]
fn removing_the_label_unenrols_and_restoring_it_enrols_again() -> Result<()> {
    let mut lab = up("wl-t-unlabel")?;
    let a_cgroup = lab.pod("a").cgroup.clone();
    assert_eq!(
        cgroup_programs(&a_cgroup)?,
        vec!["weft_connect4", "weft_connect6"]
    );
    let _c = sink(&lab, "c", "0.0.0.0:7000")?;
    let c = format!("{}:7000", lab.pod("c").ip);

    // A cross-node connection makes node 1 hold a certificate for the pod's identity.
    send(&lab, "a", &c, MIB)?;
    let identity = "identity=\"spiffe://cluster.local/ns/mesh/sa/default\"";
    assert!(
        metric_line(&lab, 1, identity)?.is_some(),
        "no certificate held for a's identity"
    );
    lab.spec
        .namespaces
        .iter_mut()
        .filter(|n| n.name == "mesh")
        .for_each(|n| n.ambient = false);
    lab.write_manifests()?;
    lab.wait_enrolled(1, 0, Duration::from_secs(10))?;
    lab.wait_enrolled(2, 0, Duration::from_secs(10))?;
    // Un-enrolled pods' identities are forgotten: no certificate, no renewals.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric_line(&lab, 1, identity)?.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 still holds a certificate for an un-enrolled pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cgroup_programs(&a_cgroup)?.is_empty(),
        "programs left on an un-enrolled pod"
    );
    // Nothing of the un-enrolled pods is left in the maps the gates read.
    for map in [
        "WEFT_PODS",
        "WEFT_TC_MODE",
        "WEFT_TC_PORT",
        "WEFT_PLAIN_LSN",
    ] {
        let pin = pinned(&lab, 1, map);
        let entries = bpftool(&["map", "dump", "pinned", &pin.display().to_string()])?;
        assert_eq!(
            entries.as_array().map_or(0, Vec::len),
            0,
            "{map} still holds {entries}"
        );
    }
    let before = counters(&lab, 1)?;
    send(&lab, "a", &c, MIB)?;
    assert_eq!(
        counter(&counters(&lab, 1)?, "redirected"),
        counter(&before, "redirected")
    );

    lab.spec
        .namespaces
        .iter_mut()
        .filter(|n| n.name == "mesh")
        .for_each(|n| n.ambient = true);
    lab.write_manifests()?;
    lab.wait_enrolled(1, 2, Duration::from_secs(10))?;
    lab.wait_enrolled(2, 1, Duration::from_secs(10))?;
    send(&lab, "a", &c, MIB)?;
    assert_eq!(
        counter(&counters(&lab, 1)?, "redirected"),
        counter(&before, "redirected") + 1
    );
    lab.down()
}

/// Where the agent of `node` pins `map`: in its one layout directory (named by the agent's
/// map layout version).
fn pinned(lab: &Lab, node: usize, map: &str) -> std::path::PathBuf {
    let layout = std::fs::read_dir(lab.bpffs_dir(node))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("WEFT_SETTINGS").exists());
    layout.unwrap_or_else(|| lab.bpffs_dir(node)).join(map)
}

#[test]
fn an_agent_restart_reattaches_cleanly_after_a_stop_and_after_a_crash() -> Result<()> {
    let mut lab = up("wl-t-restart")?;
    let _c = sink(&lab, "c", "0.0.0.0:7000")?;
    let c = format!("{}:7000", lab.pod("c").ip);
    let a_cgroup = lab.pod("a").cgroup.clone();

    // A clean stop and start.
    assert!(lab.stop_agent(1)?.success(), "{}", lab.agent_log(1));
    lab.start_agent(1)?;
    lab.wait_enrolled(1, 2, Duration::from_secs(10))?;
    assert_eq!(
        cgroup_programs(&a_cgroup)?,
        vec!["weft_connect4", "weft_connect6"]
    );
    send(&lab, "a", &c, 10 * MIB)?;

    // A crash leaves the pins; the next agent adopts them instead of adding a second copy.
    lab.kill_agent(1)?;
    assert!(
        pinned(&lab, 1, "WEFT_SOCKS").exists(),
        "pinned maps should survive a crash"
    );
    lab.start_agent(1)?;
    lab.wait_enrolled(1, 2, Duration::from_secs(10))?;
    assert_eq!(
        cgroup_programs(&a_cgroup)?,
        vec!["weft_connect4", "weft_connect6"],
        "duplicated after a crash"
    );
    let root_programs = cgroup_programs(&lab.node_cgroup(1))?;
    assert_eq!(
        root_programs,
        vec!["weft_sockops"],
        "duplicated sockops after a crash"
    );
    assert!(
        lab.agent_log(1).contains("adopting the pinned state"),
        "{}",
        lab.agent_log(1)
    );
    let before = counters(&lab, 1)?;
    send(&lab, "a", &c, 10 * MIB)?;
    assert_eq!(
        counter(&counters(&lab, 1)?, "redirected"),
        counter(&before, "redirected") + 1
    );

    // A rolling update: with --keep-datapath-on-exit a clean stop leaves everything
    // attached and pinned, and the next agent adopts it.
    lab.set_agent_args(1, &["--keep-datapath-on-exit"]);
    lab.stop_agent(1)?;
    lab.start_agent(1)?;
    lab.wait_enrolled(1, 2, Duration::from_secs(10))?;
    assert!(lab.stop_agent(1)?.success(), "{}", lab.agent_log(1));
    assert!(
        pinned(&lab, 1, "WEFT_SOCKS").exists(),
        "pinned maps should survive a handover stop"
    );
    assert_eq!(
        cgroup_programs(&a_cgroup)?,
        vec!["weft_connect4", "weft_connect6"],
        "still attached while no agent runs"
    );
    let adoptions = |lab: &Lab| {
        lab.agent_log(1)
            .matches("adopting the pinned state")
            .count()
    };
    let before = adoptions(&lab);
    lab.start_agent(1)?;
    lab.wait_enrolled(1, 2, Duration::from_secs(10))?;
    assert_eq!(adoptions(&lab), before + 1, "{}", lab.agent_log(1));
    assert_eq!(
        cgroup_programs(&a_cgroup)?,
        vec!["weft_connect4", "weft_connect6"],
        "duplicated after a handover"
    );
    send(&lab, "a", &c, 10 * MIB)?;
    lab.down()
}

#[test]
fn after_the_agents_exit_nothing_of_theirs_is_left_in_the_kernel() -> Result<()> {
    let mut lab = up("wl-t-exit")?;
    let mut ids = Vec::new();
    for node in 1..=2 {
        let dump = lab.config_dump(node)?;
        let programs = dump["programs"]
            .as_object()
            .context("no programs in /config_dump")?;
        assert_eq!(programs.len(), 6, "{dump}");
        ids.extend(programs.values().filter_map(Value::as_u64));
    }
    for node in 1..=2 {
        let status = lab.stop_agent(node)?;
        assert!(
            status.success(),
            "agent {node} exited with {status}: {}",
            lab.agent_log(node)
        );
        assert!(
            !lab.bpffs_dir(node).exists(),
            "pins left in {}",
            lab.bpffs_dir(node).display()
        );
    }
    let programs = bpftool(&["prog", "show"])?;
    let left: Vec<&Value> = programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .collect();
    assert!(left.is_empty(), "programs left after exit: {left:?}");
    let links = bpftool(&["link", "show"])?;
    let left: Vec<&Value> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .collect();
    assert!(left.is_empty(), "links left after exit: {left:?}");
    // The kernel frees maps in deferred work once their last reference goes; give it time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let maps = bpftool(&["map", "show"])?;
        let left: Vec<Value> = maps
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"].as_str().is_some_and(|n| n.starts_with("WEFT_")))
            .cloned()
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "maps left after exit: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for pod in ["a", "b"] {
        assert!(cgroup_programs(&lab.pod(pod).cgroup)?.is_empty());
    }
    assert!(cgroup_programs(&lab.node_cgroup(1))?.is_empty());
    lab.down()
}

#[test]
fn a_malformed_manifest_is_reported_by_file_and_the_other_files_still_apply() -> Result<()> {
    let lab = up("wl-t-badyaml")?;
    lab.write_manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: [this is not a map\n",
    )?;
    // Another file changes the configuration while bad.yaml is there: `plain` joins the mesh.
    lab.write_manifest(
        // Sorts after lab.yaml, whose `plain` Namespace it overrides (the later file wins).
        "plain-ambient.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n  labels:\n    istio.io/dataplane-mode: ambient\n",
    )?;
    let dump = lab.wait_enrolled(1, 3, Duration::from_secs(10))?;
    let errors = dump["config_errors"]
        .as_array()
        .context("no config_errors")?;
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("bad.yaml"))),
        "{dump}"
    );
    assert!(
        weft_lab::enrolled_pods(&dump).contains(&"plain/p".to_string()),
        "{dump}"
    );
    assert!(metric(&lab, 1, "weft_config_errors")? >= 1.0);
    // The lab's own file still applies: capture works.
    let _b = sink(&lab, "b", "0.0.0.0:7000")?;
    send(&lab, "a", &format!("{}:7000", lab.pod("b").ip), MIB)?;
    lab.down()
}

#[test]
fn a_pod_whose_cgroup_appears_late_is_enrolled_once_it_does() -> Result<()> {
    let mut lab = Lab::up(spec("wl-t-late"))?;
    // The kubelet may publish a pod before its cgroup exists: take b's away for a while.
    let b_cgroup = lab.pod("b").cgroup.clone();
    std::fs::remove_dir(&b_cgroup).with_context(|| format!("removing {}", b_cgroup.display()))?;
    lab.start_agent(1)?;
    lab.start_agent(2)?;
    let dump = lab.wait_enrolled(1, 1, Duration::from_secs(20))?;
    let b = weft_lab::dump_pod(&dump, "b").context("b is not in /config_dump")?;
    assert_eq!(b["state"], "pending", "{b}");

    std::fs::create_dir(&b_cgroup)?;
    lab.wait_enrolled(1, 2, Duration::from_secs(20))?;
    assert_eq!(
        cgroup_programs(&b_cgroup)?,
        vec!["weft_connect4", "weft_connect6"]
    );
    let _c = sink(&lab, "c", "0.0.0.0:7000")?;
    let c = format!("{}:7000", lab.pod("c").ip);
    let before = counters(&lab, 1)?;
    send(&lab, "b", &c, MIB)?;
    assert_eq!(
        counter(&counters(&lab, 1)?, "redirected"),
        counter(&before, "redirected") + 1,
        "b's connection is captured"
    );
    lab.down()
}
