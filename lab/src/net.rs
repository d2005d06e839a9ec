//! Network namespaces, veths and routes, made with iproute2 (`ip -n NS -batch -`).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    os::fd::AsFd,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::spec::{self, LabSpec};

/// Runs `ip [-n netns] -batch -` with the given commands.
fn ip_batch(netns: Option<&str>, commands: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (iproute2)")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(commands.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {:?}: {}\n{}",
            netns,
            String::from_utf8_lossy(&out.stderr).trim(),
            commands.join("\n")
        );
    }
    Ok(())
}

fn sysctls(netns: &str, settings: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw"])
        .args(settings)
        .output()
        .context("running sysctl in a namespace")?;
    if !out.status.success() {
        bail!(
            "sysctl in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The underlay: a bridge in its own namespace that every node's eth0 plugs into.
pub fn build_underlay(spec: &LabSpec) -> Result<()> {
    let ul = spec::underlay_netns(&spec.name);
    ip_batch(None, &[format!("netns add {ul}")])?;
    ip_batch(
        Some(&ul),
        &[
            "link add br0 type bridge".into(),
            "link set br0 up".into(),
            "link set lo up".into(),
            // The CA lives on the underlay, where every node's agent reaches it.
            format!("addr add {}/24 dev br0", spec::CA_IP),
        ],
    )
}

pub fn build_node(spec: &LabSpec, node: usize) -> Result<()> {
    let ns = spec::node_netns(&spec.name, node);
    let ul = spec::underlay_netns(&spec.name);
    ip_batch(None, &[format!("netns add {ns}")])?;
    let mut cmds = vec![
        "link set lo up".to_string(),
        format!("link add eth0 type veth peer name n{node} netns {ul}"),
        format!("addr add {}/24 dev eth0", spec::node_ip(node)),
        "link set eth0 up".into(),
        // The agent's address, which pods use as their gateway. It sits on lo so that it
        // exists before any pod does (Linux answers ARP for any local address).
        format!("addr add {}/32 dev lo", spec::agent_ip(node)),
    ];
    for other in (1..=spec.nodes).filter(|&n| n != node) {
        cmds.push(format!(
            "route add 10.200.{other}.0/24 via {} dev eth0",
            spec::node_ip(other)
        ));
    }
    ip_batch(Some(&ns), &cmds)?;
    ip_batch(
        Some(&ul),
        &[
            format!("link set n{node} master br0"),
            format!("link set n{node} up"),
            // The CA answers pods too (a waypoint asks it for its own certificate).
            format!("route add 10.200.{node}.0/24 via {}", spec::node_ip(node)),
        ],
    )?;
    sysctls(
        &ns,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            // The agent dials every tunnelled connection's last hop from one address: give
            // it the whole port range, and let connect() reuse ports in TIME_WAIT.
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
}

pub fn build_pod(spec: &LabSpec, node: usize, index: u8, netns: &str, ip: Ipv4Addr) -> Result<()> {
    let node_ns = spec::node_netns(&spec.name, node);
    let gateway = spec::agent_ip(node);
    ip_batch(None, &[format!("netns add {netns}")])?;
    let veth = format!("vp{index}");
    ip_batch(
        Some(&node_ns),
        &[
            format!("link add {veth} type veth peer name eth0 netns {netns}"),
            format!("link set {veth} up"),
            format!("route add {ip}/32 dev {veth} src {gateway}"),
        ],
    )?;
    // No default route: only the cluster's pod and service ranges lead anywhere.
    ip_batch(
        Some(netns),
        &[
            "link set lo up".into(),
            format!("addr add {ip}/32 dev eth0"),
            "link set eth0 up".into(),
            format!("route add {gateway}/32 dev eth0 scope link"),
            format!("route add 10.200.0.0/16 via {gateway} dev eth0"),
            format!("route add 10.96.0.0/16 via {gateway} dev eth0"),
            // Node addresses, as on a cluster: a waypoint pod tunnels to the node agents.
            format!("route add 10.99.0.0/24 via {gateway} dev eth0"),
            // The agent's dial address: answers to the connections it makes to the pod.
            format!("route add {}/32 via {gateway} dev eth0", spec::DIAL_IP),
        ],
    )
}

/// Deletes every namespace of the lab `name` (nodes, pods, underlay).
pub fn delete_namespaces(name: &str) {
    let prefix = format!("{name}-");
    let names: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if !names.is_empty() {
        let cmds: Vec<String> = names.iter().map(|n| format!("netns delete {n}")).collect();
        // -force: go on past namespaces that vanished meanwhile.
        let _ = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(cmds.join("\n").as_bytes());
                }
                child.wait()
            });
    }
}

fn list_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of labs that have namespaces on this machine.
pub fn lab_names() -> Vec<String> {
    list_netns()
        .into_iter()
        .filter(|n| n.starts_with(crate::NAME_PREFIX))
        .filter_map(|n| n.strip_suffix("-ul").map(str::to_string))
        .collect()
}

/// An HTTP/1.0 GET to 127.0.0.1:`port` from inside `netns`, on a thread that joined it.
pub fn http_get(netns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("no namespace {netns}"))?;
    let path = path.to_string();
    std::thread::spawn(move || -> Result<(u16, String)> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        let mut stream = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("http_get thread panicked"))?
}
