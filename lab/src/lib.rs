//! The lab: a Kubernetes-shaped cluster on one machine, for Weft's tests, demo and benchmarks.
//!
//! Each node is a network namespace with its own weft-agent; the nodes share an underlay (a
//! bridge in a namespace of its own). Each pod is a network namespace with a veth into its
//! node, plus a cgroup v2 directory named the way the kubelet names pod cgroups; the pod's
//! processes run in both. The lab writes the Namespace, Pod and Service YAML that describes
//! it, and the agents read that YAML as they would on a real cluster. No route leads out of
//! the lab's namespaces, and nothing is sent to the host's own interfaces.

mod manifests;
mod net;
mod process;
mod spec;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use process::{Guarded, bin_dir};
pub use spec::{DIAL_IP, LabSpec, NamespaceSpec, PodSpec, ServicePort, ServiceSpec, node_ip};

/// Where the lab keeps its cgroups, below the machine's cgroup v2 mount.
pub const CGROUP_BASE: &str = "weft-lab";
/// Every lab's name starts with this, so that `down_all` can find leftovers of crashed runs.
pub const NAME_PREFIX: &str = "wl-";

/// The machine's cgroup v2 mount: WEFT_CGROUP2, else the first cgroup2 in /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_CGROUP2") {
        return Ok(PathBuf::from(path));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
        .context("no cgroup v2 mount on this machine (the lab needs one: mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

/// What an agent logs once it serves (agent/src/main.rs).
const AGENT_RUNNING: &str = "weft-agent running";

/// A running lab. Dropping it tears it down.
pub struct Lab {
    pub spec: LabSpec,
    pub dir: PathBuf,
    cgroup: PathBuf,
    pub pods: BTreeMap<String, Pod>,
    agents: Vec<Option<Guarded>>,
    /// Agents told to stop by an upgrade, draining their connections.
    draining: Vec<Option<Guarded>>,
    agent_args: Vec<Vec<String>>,
    ca: Option<Guarded>,
    waypoints: BTreeMap<String, Guarded>,
    torn_down: bool,
}

/// A pod of the lab.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub cgroup: PathBuf,
}

impl Lab {
    /// Builds the lab's namespaces, links, cgroups and YAML. Agents are started with
    /// `start_agents`, so a test can first arrange things.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root: it makes network namespaces, veths and cgroups");
        }
        if !spec.name.starts_with(NAME_PREFIX) {
            bail!("lab names start with {NAME_PREFIX}");
        }
        down_named(&spec.name);
        let dir = std::env::temp_dir().join("weft-lab").join(&spec.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let cgroup = cgroup2_mount()?.join(CGROUP_BASE).join(&spec.name);
        let mut lab = Lab {
            agents: (0..spec.nodes).map(|_| None).collect(),
            draining: (0..spec.nodes).map(|_| None).collect(),
            agent_args: vec![Vec::new(); spec.nodes],
            ca: None,
            waypoints: BTreeMap::new(),
            spec,
            dir,
            cgroup,
            pods: BTreeMap::new(),
            torn_down: false,
        };
        lab.build()
            .with_context(|| format!("building lab {}", lab.spec.name))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        self.make_ca()?;
        net::build_underlay(&self.spec)?;
        for node in 1..=self.spec.nodes {
            net::build_node(&self.spec, node)?;
            std::fs::create_dir_all(self.node_cgroup(node).join("system"))?;
        }
        let mut per_node: BTreeMap<usize, u8> = BTreeMap::new();
        for pod in self.spec.pods.clone() {
            let index = per_node.entry(pod.node).or_insert(0);
            *index += 1;
            let ip = spec::pod_ip(pod.node, *index);
            let uid = uuid::Uuid::new_v4().to_string();
            let netns = format!("{}-{}", self.spec.name, pod.name);
            net::build_pod(&self.spec, pod.node, *index, &netns, ip)?;
            let cgroup = self
                .node_cgroup(pod.node)
                .join("kubepods")
                .join("besteffort")
                .join(format!("pod{uid}"));
            std::fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating {}", cgroup.display()))?;
            self.pods.insert(
                pod.name.clone(),
                Pod {
                    name: pod.name,
                    namespace: pod.namespace,
                    uid,
                    node: pod.node,
                    ip,
                    netns,
                    cgroup,
                },
            );
        }
        self.write_manifests()
    }

    /// The lab's root of trust (`weft-agent ca init`) and a bootstrap token per node.
    fn make_ca(&self) -> Result<()> {
        let dir = self.ca_dir();
        let out = std::process::Command::new(bin_dir()?.join("weft-agent"))
            .args(["ca", "init", "--trust-domain", spec::TRUST_DOMAIN, "--out"])
            .arg(&dir)
            .output()
            .context("running weft-agent ca init")?;
        if !out.status.success() {
            bail!(
                "weft-agent ca init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut tokens = String::from("# token node\n");
        for node in 1..=self.spec.nodes {
            let token = uuid::Uuid::new_v4().simple().to_string();
            tokens.push_str(&format!("{token} {}\n", spec::node_name(node)));
            std::fs::write(dir.join(format!("node-{node}.token")), format!("{token}\n"))?;
        }
        std::fs::write(dir.join("tokens"), tokens)?;
        Ok(())
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// Starts the CA on the underlay.
    fn start_ca(&mut self) -> Result<()> {
        if self.ca.is_some() {
            return Ok(());
        }
        let dir = self.ca_dir();
        let cgroup = self.cgroup.join("ca");
        std::fs::create_dir_all(&cgroup)?;
        let args: Vec<String> = vec![
            "ca".into(),
            "serve".into(),
            "--root-cert".into(),
            dir.join("root-cert.pem").display().to_string(),
            "--root-key".into(),
            dir.join("root-key.pem").display().to_string(),
            "--tokens-file".into(),
            dir.join("tokens").display().to_string(),
            "--config-dir".into(),
            self.manifests_dir().display().to_string(),
            "--listen".into(),
            format!("{}:{}", spec::CA_IP, spec::CA_PORT),
        ];
        let log = self.dir.join("logs").join("ca.log");
        let ca = process::spawn(
            &bin_dir()?.join("weft-agent"),
            &args,
            &spec::underlay_netns(&self.spec.name),
            &cgroup,
            &[("WEFT_LOG", "info")],
            Some(&log),
        )?;
        self.ca = Some(ca);
        // The agents retry the CA, but a CA that cannot start should fail here, clearly.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = self.ca.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            self.ca = None;
            bail!("the CA exited ({status}): {}", tail(&log));
        }
        Ok(())
    }

    /// The cgroup root the kubelet of `node` would use: the agent's --cgroup-root.
    pub fn node_cgroup(&self, node: usize) -> PathBuf {
        self.cgroup.join(format!("n{node}"))
    }

    pub fn node_netns(&self, node: usize) -> String {
        spec::node_netns(&self.spec.name, node)
    }

    pub fn agent_ip(&self, node: usize) -> Ipv4Addr {
        spec::agent_ip(node)
    }

    pub fn bpffs_dir(&self, node: usize) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/weft/{}-n{node}", self.spec.name))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("the lab has no pod {name}"))
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Rewrites the YAML that describes the lab (after a change to `spec`).
    pub fn write_manifests(&self) -> Result<()> {
        let yaml = manifests::render(&self.spec, &self.pods)?;
        write_atomic(&self.manifests_dir().join("lab.yaml"), &yaml)
    }

    /// Writes an extra manifest file into the directory the agents watch.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        write_atomic(&self.manifests_dir().join(file), yaml)
    }

    /// Extra flags for the agent of `node`, used from its next start.
    pub fn set_agent_args(&mut self, node: usize, args: &[&str]) {
        self.agent_args[node - 1] = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the agent of every node and waits until each has enrolled its pods.
    pub fn start_agents(&mut self) -> Result<()> {
        for node in 1..=self.spec.nodes {
            self.start_agent(node)?;
        }
        for node in 1..=self.spec.nodes {
            let want = self.expected_enrolled(node);
            self.wait_enrolled(node, want, Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// How many pods the agent of `node` should enrol, by the spec.
    pub fn expected_enrolled(&self, node: usize) -> usize {
        self.pods
            .values()
            .filter(|p| p.node == node)
            .filter(|p| self.spec.namespace(&p.namespace).is_some_and(|n| n.ambient))
            .filter(|p| {
                !self.spec.pods.iter().any(|s| {
                    s.name == p.name
                        && s.labels
                            .iter()
                            .any(|(k, v)| k == "weft.dev/dataplane-mode" && v == "none")
                })
            })
            .count()
    }

    /// Starts the waypoint pod `name` (see `LabSpec::with_waypoint` and
    /// `with_waypoint_replica`) with `extra` flags, and waits until it is ready (its :15021
    /// answers).
    pub fn start_waypoint(&mut self, name: &str, extra: &[&str]) -> Result<()> {
        self.start_ca()?;
        let pod = self.pod(name).clone();
        let waypoint = self
            .spec
            .pods
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.labels.iter().find(|(k, _)| k == spec::WAYPOINT_LABEL))
            .map(|(_, v)| v.clone())
            .with_context(|| format!("pod {name} is no waypoint's"))?;
        let ca = self.ca_dir();
        let log = self.dir.join("logs").join(format!("waypoint-{name}.log"));
        let mut args = vec![
            "--config-dir".to_string(),
            self.manifests_dir().display().to_string(),
            "--name".into(),
            waypoint,
            "--namespace".into(),
            pod.namespace.clone(),
            "--pod-ip".into(),
            pod.ip.to_string(),
            "--trust-domain".into(),
            spec::TRUST_DOMAIN.into(),
            "--ca-address".into(),
            format!("{}:{}", spec::CA_IP, spec::CA_PORT),
            "--ca-token-file".into(),
            ca.join(format!("node-{}.token", pod.node))
                .display()
                .to_string(),
            "--trust-bundle".into(),
            ca.join("root-cert.pem").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut waypoint = process::spawn(
            &bin_dir()?.join("weft-waypoint"),
            &args,
            &pod.netns,
            &pod.cgroup,
            &[("WEFT_LOG", agent_log_filter().as_str())],
            Some(&log),
        )?;
        wait_ready(
            &mut waypoint,
            &format!("waypoint {name}"),
            &log,
            Duration::from_secs(30),
            || {
                matches!(
                    net::http_get(&pod.netns, 15021, "/healthz/ready"),
                    Ok((200, _))
                )
            },
        )?;
        self.waypoints.insert(name.to_string(), waypoint);
        Ok(())
    }

    /// An HTTP GET to the waypoint `name` on `port` (15000 admin, 15020 metrics).
    pub fn waypoint_get(&self, name: &str, port: u16, path: &str) -> Result<(u16, String)> {
        net::http_get(&self.pod(name).netns, port, path)
    }

    /// Kills the waypoint pod `name` with SIGKILL, as a crash would.
    pub fn kill_waypoint(&mut self, name: &str) {
        if let Some(waypoint) = self.waypoints.remove(name) {
            waypoint.kill();
        }
    }

    /// The waypoint's process, while it runs.
    pub fn waypoint_pid(&self, name: &str) -> Option<u32> {
        self.waypoints.get(name).map(Guarded::id)
    }

    pub fn waypoint_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("waypoint-{name}.log")))
            .unwrap_or_default()
    }

    pub fn start_agent(&mut self, node: usize) -> Result<()> {
        if self.agents[node - 1].is_some() {
            bail!("the agent of node {node} is running already");
        }
        self.start_ca()?;
        let agent = self.spawn_agent(node, |lab| {
            matches!(lab.agent_get(node, 15000, "/healthz"), Ok((200, _)))
        })?;
        self.agents[node - 1] = Some(agent);
        Ok(())
    }

    /// Upgrades the agent of `node` as the DaemonSet of `deploy/` does (a rolling update
    /// with `maxSurge: 1`): a new agent, with the node's current flags, starts beside the
    /// running one; once it is ready the old one gets SIGTERM and drains in the background
    /// (`wait_drained`). Both write to the node's one log.
    pub fn upgrade_agent(&mut self, node: usize) -> Result<()> {
        if self.draining[node - 1].is_some() {
            bail!("the previous agent of node {node} is still draining");
        }
        self.start_ca()?;
        let old = self.agents[node - 1]
            .take()
            .with_context(|| format!("no agent runs on node {node}"))?;
        let started = |lab: &Lab| lab.agent_log(node).matches(AGENT_RUNNING).count();
        let before = started(self);
        let new = match self.spawn_agent(node, |lab| started(lab) > before) {
            Ok(new) => new,
            Err(err) => {
                self.agents[node - 1] = Some(old);
                return Err(err);
            }
        };
        old.signal_terminate();
        self.draining[node - 1] = Some(old);
        self.agents[node - 1] = Some(new);
        Ok(())
    }

    /// Waits up to `timeout` for the agent an upgrade of `node` told to stop; returns how it
    /// exited (it is killed when `timeout` passes).
    pub fn wait_drained(
        &mut self,
        node: usize,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let old = self.draining[node - 1]
            .take()
            .with_context(|| format!("no agent of node {node} is draining"))?;
        old.terminate(timeout)
    }

    fn spawn_agent(&self, node: usize, ready: impl Fn(&Lab) -> bool) -> Result<Guarded> {
        let ca = self.ca_dir();
        let log = self.dir.join("logs").join(format!("agent-n{node}.log"));
        let mut args = vec![
            "run".to_string(),
            "--node-name".into(),
            spec::node_name(node),
            "--config-dir".into(),
            self.manifests_dir().display().to_string(),
            "--cgroup-root".into(),
            self.node_cgroup(node).display().to_string(),
            "--bpffs-dir".into(),
            self.bpffs_dir(node).display().to_string(),
            "--agent-ip".into(),
            self.agent_ip(node).to_string(),
            "--trust-domain".into(),
            spec::TRUST_DOMAIN.into(),
            "--ca-address".into(),
            format!("{}:{}", spec::CA_IP, spec::CA_PORT),
            "--ca-token-file".into(),
            ca.join(format!("node-{node}.token")).display().to_string(),
            "--trust-bundle".into(),
            ca.join("root-cert.pem").display().to_string(),
            "--hbone-address".into(),
            format!("{}:15008", spec::node_ip(node)),
        ];
        let extra = &self.agent_args[node - 1];
        // A short drain, so that a lab's stop is not held by connections its test left
        // open; the tests and benches of the drain set their own.
        if !extra.iter().any(|a| a == "--drain-seconds") {
            args.extend(["--drain-seconds".to_string(), "5".into()]);
        }
        args.extend(extra.iter().cloned());
        let mut agent = process::spawn(
            &bin_dir()?.join("weft-agent"),
            &args,
            &self.node_netns(node),
            &self.node_cgroup(node).join("system"),
            &[("WEFT_LOG", agent_log_filter().as_str())],
            Some(&log),
        )?;
        wait_ready(
            &mut agent,
            &format!("the agent of node {node}"),
            &log,
            Duration::from_secs(20),
            || ready(self),
        )?;
        Ok(agent)
    }

    /// Stops the agent of `node` with SIGTERM and waits for it; returns its exit status.
    pub fn stop_agent(&mut self, node: usize) -> Result<std::process::ExitStatus> {
        let agent = self.agents[node - 1]
            .take()
            .with_context(|| format!("no agent runs on node {node}"))?;
        agent.terminate(Duration::from_secs(10))
    }

    /// The agent process of `node`, while it runs.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        self.agents[node - 1].as_ref().map(Guarded::id)
    }

    /// Kills the agent of `node` with SIGKILL, as a crash would.
    pub fn kill_agent(&mut self, node: usize) -> Result<()> {
        if let Some(agent) = self.agents[node - 1].take() {
            agent.kill();
        }
        Ok(())
    }

    pub fn agent_log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("agent-n{node}.log")))
            .unwrap_or_default()
    }

    /// An HTTP GET to 127.0.0.1:`port` inside the node's namespace: (status, body).
    pub fn agent_get(&self, node: usize, port: u16, path: &str) -> Result<(u16, String)> {
        net::http_get(&self.node_netns(node), port, path)
    }

    /// The agent's /config_dump, parsed.
    pub fn config_dump(&self, node: usize) -> Result<serde_json::Value> {
        let (status, body) = self.agent_get(node, 15000, "/config_dump")?;
        if status != 200 {
            bail!("/config_dump answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until the agent of `node` shows exactly `count` enrolled pods.
    pub fn wait_enrolled(
        &self,
        node: usize,
        count: usize,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let dump = self.config_dump(node);
            if let Ok(dump) = &dump {
                let enrolled = enrolled_pods(dump).len();
                if enrolled == count {
                    return Ok(dump.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("node {node}: expected {count} enrolled pods; last /config_dump: {dump:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a server in a pod and waits for its readiness line (`{"listen":...}` on stdout,
    /// as the lab programs print once bound). Killed when the guard drops.
    pub fn serve(&self, pod: &str, program: &str, args: &[&str]) -> Result<Guarded> {
        let log = self.log_path(pod, program, args);
        let _ = std::fs::remove_file(&log);
        let server = self.spawn(pod, program, args)?;
        listening(server, &format!("{program} in pod {pod}"), &log)
    }

    /// Where [`spawn`](Self::spawn) and the servers write what a program prints.
    pub fn log_path(&self, pod: &str, program: &str, args: &[&str]) -> PathBuf {
        let role = args
            .first()
            .copied()
            .unwrap_or("main")
            .replace(['/', '-'], "");
        self.dir
            .join("logs")
            .join(format!("{pod}-{}-{role}.log", program.replace('/', "_")))
    }

    /// Starts a server in a node's network namespace (beside its agent, as a host-network
    /// process), and waits until it says it listens (killed when the guard drops).
    pub fn serve_in_node(&self, node: usize, program: &str, args: &[&str]) -> Result<Guarded> {
        let log = self.log_path(&format!("node-{node}"), program, args);
        let _ = std::fs::remove_file(&log);
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let server = process::spawn(
            &program_path(program)?,
            &owned,
            &self.node_netns(node),
            &self.node_cgroup(node),
            &[],
            Some(&log),
        )?;
        listening(server, &format!("{program} in node {node}"), &log)
    }

    /// Starts a long-running program in a pod (killed when the guard drops).
    pub fn spawn(&self, pod: &str, program: &str, args: &[&str]) -> Result<Guarded> {
        let log = self.log_path(pod, program, args);
        let pod = self.pod(pod);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        process::spawn(
            &program_path(program)?,
            &args,
            &pod.netns,
            &pod.cgroup,
            &[
                ("POD_NAME", pod.name.as_str()),
                ("POD_NAMESPACE", pod.namespace.as_str()),
            ],
            Some(&log),
        )
    }

    /// Starts a program in a pod that prints a JSON report when it ends (its last line);
    /// `Background::report` waits for it. Killed if dropped before.
    pub fn background(&self, pod: &str, program: &str, args: &[&str]) -> Result<Background> {
        let log = self.log_path(pod, program, args);
        let _ = std::fs::remove_file(&log);
        Ok(Background {
            process: self.spawn(pod, program, args)?,
            log,
            what: format!("{program} in pod {pod}"),
        })
    }

    /// Runs a program in a pod to completion (killed after `timeout`) and returns its output.
    pub fn run(
        &self,
        pod: &str,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<std::process::Output> {
        let pod = self.pod(pod);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        process::run(
            &program_path(program)?,
            &args,
            &pod.netns,
            &pod.cgroup,
            &[
                ("POD_NAME", pod.name.as_str()),
                ("POD_NAMESPACE", pod.namespace.as_str()),
            ],
            timeout,
        )
    }

    /// Runs `weft-probe` (the misbehaving peer) in the network namespace of `node`; returns
    /// whether it exited 0 and the JSON object it printed.
    pub fn probe(&self, node: usize, args: &[&str]) -> Result<(bool, serde_json::Value)> {
        let program = bin_dir()?.join("weft-probe");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.node_netns(node)])
            .arg(&program)
            .args(args)
            .output()
            .with_context(|| format!("running {} in node {node}", program.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "weft-probe {args:?} printed no JSON ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.success(), json))
    }

    /// Sends `bytes` from `pod` to `target` with `labtool send` (a `labtool sink` must listen
    /// there) and says whether they arrived intact; `Err` only if the tool could not run.
    pub fn send_ok(&self, pod: &str, target: &str, bytes: u64) -> Result<bool> {
        let out = self.run(
            pod,
            "labtool",
            &[
                "send",
                "--connect",
                target,
                "--bytes",
                &bytes.to_string(),
                "--timeout",
                "8",
            ],
            Duration::from_secs(30),
        )?;
        Ok(out.status.success())
    }

    /// Like [`send_ok`](Self::send_ok), from a process of `node`'s own network namespace (a
    /// hostNetwork pod, the kubelet, or NodePort traffic the node forwards), from `bind` if
    /// given.
    pub fn send_ok_from_node(&self, node: usize, target: &str, bind: Option<&str>) -> Result<bool> {
        let mut args = vec![
            "send",
            "--connect",
            target,
            "--bytes",
            "65536",
            "--timeout",
            "8",
        ];
        if let Some(bind) = bind {
            args.extend(["--bind", bind]);
        }
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = process::run(
            &program_path("labtool")?,
            &args,
            &self.node_netns(node),
            &self.node_cgroup(node),
            &[],
            Duration::from_secs(30),
        )?;
        Ok(out.status.success())
    }

    /// Waits up to 20 s until [`send_ok`](Self::send_ok) from `pod` to `target` gives `want`
    /// (policy changes take a moment to reach every process).
    pub fn expect_send(&self, pod: &str, target: &str, want: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.send_ok(pod, target, 64 * 1024)?;
            if ok == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{pod} -> {target}: expected {}, got {}",
                    if want { "success" } else { "refusal" },
                    if ok { "success" } else { "refusal" },
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs a program in a node's network namespace (beside its agent) and parses the JSON
    /// object it prints; fails if it fails.
    pub fn run_json_in_node(
        &self,
        node: usize,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = process::run(
            &program_path(program)?,
            &args,
            &self.node_netns(node),
            &self.node_cgroup(node),
            &[],
            timeout,
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{program} {args:?} in node {node} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_str(stdout.trim())
            .with_context(|| format!("{program} printed no JSON: {stdout}"))
    }

    /// Runs a program in a pod and parses the JSON object it prints; fails if it fails.
    pub fn run_json(
        &self,
        pod: &str,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let out = self.run(pod, program, args, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{program} {args:?} in pod {pod} failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_str(stdout.trim())
            .with_context(|| format!("{program} printed no JSON: {stdout}"))
    }

    /// Stops the agents (SIGTERM, so they clean up), kills the pods' processes, and removes
    /// the namespaces, cgroups, pins and files.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut first_error = None;
        for (_, waypoint) in std::mem::take(&mut self.waypoints) {
            waypoint.kill();
        }
        for node in 1..=self.spec.nodes {
            if let Some(old) = self.draining[node - 1].take() {
                old.kill();
            }
            if self.agents[node - 1].is_some()
                && let Err(err) = self.stop_agent(node)
            {
                first_error.get_or_insert(err);
            }
        }
        if let Some(ca) = self.ca.take() {
            ca.kill();
        }
        down_named(&self.spec.name);
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            eprintln!("lab {}: teardown: {err:#}", self.spec.name);
        }
    }
}

/// The agents' log filter: WEFT_AGENT_LOG, else `info`.
fn agent_log_filter() -> String {
    std::env::var("WEFT_AGENT_LOG").unwrap_or_else(|_| "info".to_string())
}

/// The entry a /config_dump shows for the pod called `name`, enrolled or pending.
/// Waits for a server's readiness line (`{"listen":...}` in its log); the server back.
fn listening(mut server: Guarded, what: &str, log: &std::path::Path) -> Result<Guarded> {
    wait_ready(&mut server, what, log, Duration::from_secs(10), || {
        std::fs::read_to_string(log).is_ok_and(|text| text.contains("\"listen\""))
    })?;
    Ok(server)
}

pub fn dump_pod(dump: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    dump["pods"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// The pods a /config_dump shows as enrolled, as "namespace/name".
pub fn enrolled_pods(dump: &serde_json::Value) -> Vec<String> {
    dump["pods"]
        .as_array()
        .map(|pods| {
            pods.iter()
                .filter(|p| p["state"] == "enrolled")
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes everything a lab of this name left: processes, namespaces, cgroups, pins, files.
/// Safe to call on a lab that does not exist.
pub fn down_named(name: &str) {
    let cgroup = cgroup2_mount().map(|m| m.join(CGROUP_BASE).join(name)).ok();
    if let Some(cgroup) = &cgroup {
        // Agents first, with SIGTERM, so that they remove their own eBPF state.
        let agents: Vec<PathBuf> = node_dirs(cgroup)
            .into_iter()
            .map(|n| n.join("system"))
            .collect();
        for agent_cg in &agents {
            process::signal_cgroup(agent_cg, nix::sys::signal::Signal::SIGTERM);
        }
        for agent_cg in &agents {
            process::wait_cgroup_empty(agent_cg, Duration::from_secs(5));
        }
        process::kill_cgroup_tree(cgroup);
    }
    net::delete_namespaces(name);
    if let Some(cgroup) = &cgroup {
        remove_cgroup_tree(cgroup);
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/weft") {
        for entry in entries.filter_map(Result::ok) {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{name}-n")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    // WEFT_LAB_KEEP=1 keeps the logs and manifests for a post-mortem.
    if std::env::var_os("WEFT_LAB_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join("weft-lab").join(name));
    }
}

/// Removes every lab on this machine, including those of crashed runs.
pub fn down_all() {
    let mut names: Vec<String> = net::lab_names();
    if let Ok(base) = cgroup2_mount().map(|m| m.join(CGROUP_BASE))
        && let Ok(entries) = std::fs::read_dir(base)
    {
        names.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    names.sort();
    names.dedup();
    for name in names {
        down_named(&name);
    }
}

fn node_dirs(cgroup: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cgroup)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// cgroup directories are removed leaves first (rmdir; their files are not real files).
fn remove_cgroup_tree(dir: &Path) {
    for child in node_dirs(dir) {
        remove_cgroup_tree(&child);
    }
    let _ = std::fs::remove_dir(dir);
}

fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// A lab program by name from the build's bin directory, or a system program from PATH.
/// The sum of the samples of metric `name` in a Prometheus text exposition whose label
/// sets contain every one of `labels` (each as it is printed, `key="value"`).
pub fn sum_series(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn program_path(program: &str) -> Result<PathBuf> {
    let local = bin_dir()?.join(program);
    if local.exists() {
        Ok(local)
    } else {
        Ok(PathBuf::from(program))
    }
}

/// Waits until `ready()` holds for a process just started; fails, with the end of its log,
/// if it exits first or `timeout` passes.
fn wait_ready(
    process: &mut Guarded,
    what: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = process.try_wait()? {
            bail!("{what} exited ({status}): {}", tail(log));
        }
        if Instant::now() > deadline {
            bail!("{what} did not become ready: {}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A file of the seeds (`../shared/seeds/` beside the project's root: the YAML Weft's
/// users already have), read to be pasted into a lab as a user would.
pub fn seed(file: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/seeds")
        .join(file);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "the seeds are missing: cannot read {} (shared/ beside the project's root)",
            path.display()
        )
    })
}

/// A program running in a pod whose JSON report is the last line of its log
/// (`Lab::background`).
pub struct Background {
    process: Guarded,
    log: PathBuf,
    what: String,
}

impl Background {
    /// Waits up to `within` for the program to end; its report.
    pub fn report(mut self, within: Duration) -> Result<serde_json::Value> {
        let status = self
            .process
            .wait_timeout(within)?
            .with_context(|| format!("{} did not finish in {within:?}", self.what))?;
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?;
        let report = text.lines().rev().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(serde_json::Value::is_object)
        });
        match report {
            Some(report) => Ok(report),
            None => bail!("{} ({status}) printed no report: {text}", self.what),
        }
    }
}
