//! Enrolment: which pods of the node are captured, and what the kernel maps say of each.
//! Each pass of `reconcile` makes the attached set match the configuration: connect hooks on
//! each enrolled pod's cgroup, the tc gate on its veth, the plaintext inbound in its network
//! namespace, and its flags and modes (may it be reached directly; which of its ports are
//! STRICT) under the current policies.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::PathBuf,
};
use weft_mesh::state::State;

use aya::programs::{
    CgroupSockAddr, SchedClassifier, SkLookup, TcAttachType,
    links::{FdLink, PinnedLink},
};
use serde::Serialize;
use weft_ebpf_common::{
    POD_DIRECT_OK, POD_ENROLLED, PodEntry, TC_MODE_ALLOW_ALL, TC_MODE_STRICT, TC_PORT_PROBE, maps,
    port_mode_key, programs,
};
use weft_mesh::{
    config::{MtlsMode, PodInfo},
    policy::InboundModes,
};

use super::{
    Datapath, LINK_MODE, PLAINTEXT_PORT, RedirectError, SK_LOOKUP_NEEDS, ServerHandle,
    find_pod_cgroup, netdev, netns, program_error,
};

/// A pod whose connect hooks are attached.
pub(super) struct Enrolled {
    pod: PodInfo,
    ip: Ipv4Addr,
    cgroup: PathBuf,
    interface: Option<String>,
    /// The veth's index while the tc gate is attached to it, else 0. Kept, because the veth
    /// is usually gone (and its name unresolvable) by the time the pod is un-enrolled.
    ifindex: u32,
    links: Vec<PinnedLink>,
    /// The plaintext inbound in the pod's namespace once it is attached; until then, why not.
    plaintext: Result<Plaintext, String>,
    /// What the kernel maps hold for the pod now.
    flags: u32,
    tc: TcModes,
}

/// The sk_lookup link in a pod's namespace, and the server of its listener.
pub(super) struct Plaintext {
    link: PinnedLink,
    _server: ServerHandle,
}

/// Entries one pod may have in `TC_PORT_MODE` (4096 for the node): port-level modes and
/// probe ports together.
const MAX_PORT_ENTRIES: usize = 64;

/// A pod's entries in `TC_MODE` and `TC_PORT_MODE` (where the ports its kubelet probes are
/// marked with `TC_PORT_PROBE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TcModes {
    pod: u32,
    ports: BTreeMap<u16, u32>,
}

impl TcModes {
    /// What the tc gate enforces. Plaintext from outside the mesh may only enter through the
    /// agent's plaintext inbound, so until that is in place every port fails closed. The
    /// kubelet's probes reach `probe_ports` whatever the mode.
    fn new(modes: &InboundModes, plaintext_inbound: bool, probe_ports: &BTreeSet<u16>) -> Self {
        let value = |mode: MtlsMode| {
            if mode == MtlsMode::Strict || !plaintext_inbound {
                TC_MODE_STRICT
            } else {
                TC_MODE_ALLOW_ALL
            }
        };
        let mut pod = value(modes.workload);
        let mut ports: BTreeMap<u16, u32> =
            modes.ports.iter().map(|(p, m)| (*p, value(*m))).collect();
        if ports.len() + probe_ports.len() > MAX_PORT_ENTRIES {
            // The port map is shared by the node's pods: one pod's policy may not fill it.
            // Fail closed: the whole pod STRICT, its probe ports (up to the cap) still open.
            tracing::warn!(
                ports = ports.len(),
                probes = probe_ports.len(),
                limit = MAX_PORT_ENTRIES,
                "too many port-level modes for one pod: enforcing STRICT on every port"
            );
            pod = TC_MODE_STRICT;
            ports.clear();
        }
        for port in probe_ports.iter().take(MAX_PORT_ENTRIES) {
            *ports.entry(*port).or_insert(pod) |= TC_PORT_PROBE;
        }
        TcModes { pod, ports }
    }
}

/// What /config_dump shows of one pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<IpAddr>,
    pub state: &'static str,
    pub cgroup: Option<PathBuf>,
    pub interface: Option<String>,
    /// "listening", or why the plaintext inbound is not (plaintext is refused meanwhile).
    pub plaintext_inbound: Option<String>,
    pub reason: Option<String>,
}

impl PodStatus {
    /// Whether every hook of the pod is attached: capture, the gate and the plaintext
    /// inbound (what `weft-agent await-pod` waits for).
    pub fn attached(&self) -> bool {
        self.state == "enrolled"
            && self.interface.is_some()
            && self.plaintext_inbound.as_deref() == Some(LISTENING)
    }
}

/// `PodStatus::plaintext_inbound` of a pod whose plaintext inbound is in place.
const LISTENING: &str = "listening";

impl Datapath {
    pub fn reconcile(&mut self, model: &State, node: &str, policy: &crate::policy::L4Policy) {
        let desired: BTreeMap<String, PodInfo> = model
            .enrolled_pods(node)
            .map(|pod| (pod.uid.clone(), pod.clone()))
            .collect();
        let gone: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(uid, e)| desired.get(*uid).is_none_or(|p| p.ip != e.pod.ip))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(enrolled) = self.enrolled.remove(&uid) {
                self.unenrol(enrolled);
            }
        }
        self.pending.clear();
        for (uid, pod) in desired {
            if !self.enrolled.contains_key(&uid) {
                match self.enrol(&pod) {
                    Ok(enrolled) => {
                        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), ip = %enrolled.ip, "enrolled");
                        self.enrolled.insert(uid.clone(), enrolled);
                    }
                    Err(reason) => {
                        tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), %reason, "not enrolled yet");
                        self.pending
                            .insert(uid, status(&pod, "pending", None, None, Some(reason)));
                        continue;
                    }
                }
            }
            let (flags, modes) = pod_modes(self.direct_local, model, &pod, policy);
            self.complete(&uid, flags, &modes);
        }
        // Once this agent's links are in place, a previous agent's copies go, and so do the
        // map entries it left that no pod of this agent owns.
        if !self.swept {
            self.adopted.clear();
            self.sweep();
            self.swept = true;
        }
    }

    /// Removes map entries no enrolled pod owns. After that, `unenrol` removes each pod's
    /// own entries.
    fn sweep(&mut self) {
        let ips: HashSet<u32> = self
            .enrolled
            .values()
            .map(|e| u32::from_ne_bytes(e.ip.octets()))
            .collect();
        let tc_keys: HashSet<u32> = self.enrolled.values().map(|e| e.ifindex).collect();
        let port_keys: HashSet<u64> = self
            .enrolled
            .values()
            .flat_map(|e| e.tc.ports.keys().map(|p| port_mode_key(e.ifindex, *p)))
            .collect();
        for key in self.pods.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            if !ips.contains(&key) {
                let _ = self.pods.remove(&key);
            }
        }
        for key in self
            .tc_mode
            .keys()
            .filter_map(Result::ok)
            .collect::<Vec<_>>()
        {
            if !tc_keys.contains(&key) {
                let _ = self.tc_mode.remove(&key);
            }
        }
        for key in self
            .tc_port_mode
            .keys()
            .filter_map(Result::ok)
            .collect::<Vec<_>>()
        {
            if !port_keys.contains(&key) {
                let _ = self.tc_port_mode.remove(&key);
            }
        }
    }

    /// Attaches what could not be attached yet (the veth and the pod's namespace may appear
    /// after its cgroup), then brings the pod's flags and modes up to date.
    fn complete(&mut self, uid: &str, flags: u32, modes: &InboundModes) {
        let Some(enrolled) = self.enrolled.get(uid) else {
            return;
        };
        let (ip, cgroup) = (enrolled.ip, enrolled.cgroup.clone());
        let (no_interface, no_plaintext) =
            (enrolled.interface.is_none(), enrolled.plaintext.is_err());
        let attached = no_interface.then(|| self.attach_tc(ip)).flatten();
        let plaintext = no_plaintext.then(|| self.attach_plaintext(uid, ip, &cgroup));
        let Some(enrolled) = self.enrolled.get_mut(uid) else {
            return;
        };
        let attached_now = attached.is_some() || plaintext.as_ref().is_some_and(Result::is_ok);
        if let Some((iface, index, link)) = attached {
            enrolled.interface = Some(iface);
            enrolled.ifindex = index;
            enrolled.links.push(link);
            // `attach_tc` wrote STRICT for the whole veth.
            enrolled.tc = TcModes {
                pod: TC_MODE_STRICT,
                ports: BTreeMap::new(),
            };
        }
        if let Some(plaintext) = plaintext {
            if let Err(reason) = &plaintext {
                tracing::debug!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), %reason, "plaintext inbound not attached yet");
            }
            enrolled.plaintext = plaintext;
        }
        let tc = TcModes::new(modes, enrolled.plaintext.is_ok(), &enrolled.pod.probe_ports);
        let changed = (enrolled.flags, &enrolled.tc) != (flags, &tc);
        if changed {
            self.set_modes(uid, flags, tc);
        }
        if changed || attached_now {
            self.close_escaped(uid);
        }
    }

    /// Aborts the pod's connections that only exist because its gates were not attached
    /// yet when they were made (see `sweep`).
    fn close_escaped(&self, uid: &str) {
        let Some(enrolled) = self.enrolled.get(uid) else {
            return;
        };
        let Some(PodSockets {
            netns,
            sockets,
            listening,
        }) = pod_sockets(enrolled)
        else {
            return;
        };
        let name = format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name);
        let local_pods: HashSet<Ipv4Addr> = self.enrolled.values().map(|e| e.ip).collect();
        let window = super::sweep::Window {
            pod_ip: enrolled.ip,
            agent_ip: self.agent_ip,
            dial_ip: self.dial_ip,
            local_pods: &local_pods,
            exclude_ports: &self.exclude_ports,
            exclude_cidrs: &self.exclude_cidrs,
            mode: enrolled.tc.pod,
            ports: &enrolled.tc.ports,
        };
        let escaped: Vec<_> = sockets
            .iter()
            .filter(|s| !s.listening)
            .filter_map(|s| {
                let why = window.escaped(s.local, s.remote, listening.contains(&s.local.port()))?;
                Some((s, why))
            })
            .collect();
        if escaped.is_empty() {
            return;
        }
        // The agent's own sockets there (its plaintext inbound's) are not the pod's.
        let own = crate::sockdiag::own_socket_inodes();
        let doomed: Vec<_> = escaped
            .into_iter()
            .filter(|(s, _)| !own.contains(&s.inode))
            .map(|(s, why)| {
                tracing::info!(pod = %name, local = %s.local, remote = %s.remote, ?why,
                    "closing a connection made before the pod's gates were attached");
                s.clone()
            })
            .collect();
        if doomed.is_empty() {
            return;
        }
        match crate::sockdiag::destroy(&netns, &doomed) {
            Ok(closed) => tracing::info!(pod = %name, closed, "closed what got past the gates"),
            Err(err) => tracing::warn!(pod = %name, %err, "cannot close what got past the gates"),
        }
    }

    fn set_modes(&mut self, uid: &str, flags: u32, tc: TcModes) {
        let Some(enrolled) = self.enrolled.get_mut(uid) else {
            return;
        };
        let ifindex = enrolled.ifindex;
        let key = u32::from_ne_bytes(enrolled.ip.octets());
        if let Err(err) = self.pods.insert(key, PodEntry { flags, ifindex }, 0) {
            tracing::warn!(%err, "updating {}", maps::PODS);
            return;
        }
        if ifindex != 0 {
            // Port entries first: for a moment the old pod mode applies to a port, never an
            // entry of a port that no longer has one.
            for port in enrolled
                .tc
                .ports
                .keys()
                .filter(|p| !tc.ports.contains_key(p))
            {
                let _ = self.tc_port_mode.remove(&port_mode_key(ifindex, *port));
            }
            let written = tc
                .ports
                .iter()
                .try_for_each(|(port, mode)| {
                    self.tc_port_mode
                        .insert(port_mode_key(ifindex, *port), *mode, 0)
                })
                .and_then(|()| self.tc_mode.insert(ifindex, tc.pod, 0));
            if let Err(err) = written {
                tracing::warn!(%err, "updating {} and {}", maps::TC_MODE, maps::TC_PORT_MODE);
                return;
            }
        }
        tracing::info!(
            pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name),
            direct = flags & POD_DIRECT_OK != 0,
            strict = tc.pod == TC_MODE_STRICT,
            strict_ports = ?tc.ports.iter().filter(|(_, m)| **m & !TC_PORT_PROBE == TC_MODE_STRICT).map(|(p, _)| p).collect::<Vec<_>>(),
            probe_ports = ?enrolled.pod.probe_ports,
            plaintext_inbound = enrolled.plaintext.is_ok(),
            "pod modes changed"
        );
        enrolled.flags = flags;
        enrolled.tc = tc;
    }

    fn enrol(&mut self, pod: &PodInfo) -> Result<Enrolled, String> {
        let ip = match pod.ip {
            Some(IpAddr::V4(ip)) => ip,
            Some(IpAddr::V6(_)) => return Err("IPv6 pods are not captured yet".into()),
            None => return Err("no pod IP yet".into()),
        };
        let cgroup = find_pod_cgroup(&self.cgroup_root, &pod.uid).ok_or_else(|| {
            format!(
                "no cgroup for uid {} under {}",
                pod.uid,
                self.cgroup_root.display()
            )
        })?;
        let dir = File::open(&cgroup).map_err(|e| format!("opening {}: {e}", cgroup.display()))?;
        let mut links = Vec::new();
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let link = self.attach_cgroup(name, &dir).map_err(|e| e.to_string())?;
            let pinned = self
                .pin(link, &format!("{}-{}", pod.uid, name))
                .map_err(|e| e.to_string())?;
            links.push(pinned);
        }
        // In PODS before anything else is attached: sk_lookup recognises the pod's address
        // by it. Not reachable directly until `complete` says so.
        let key = u32::from_ne_bytes(ip.octets());
        self.pods
            .insert(
                key,
                PodEntry {
                    flags: POD_ENROLLED,
                    ifindex: 0,
                },
                0,
            )
            .map_err(|e| format!("{}: {e}", maps::PODS))?;
        self.namespaces.insert(ip, &cgroup, None);
        Ok(Enrolled {
            pod: pod.clone(),
            ip,
            cgroup,
            interface: None,
            ifindex: 0,
            links,
            plaintext: Err("not attached yet".into()),
            flags: POD_ENROLLED,
            tc: TcModes::default(),
        })
    }

    /// The agent's plaintext listener in the pod's network namespace, and the sk_lookup
    /// program there that hands it plaintext from outside the mesh.
    fn attach_plaintext(
        &mut self,
        uid: &str,
        ip: Ipv4Addr,
        cgroup: &std::path::Path,
    ) -> Result<Plaintext, String> {
        let serve = self
            .plaintext_server
            .clone()
            .ok_or("no plaintext inbound server in this agent")?;
        let netns = netns::pod_netns(cgroup)?;
        self.namespaces.insert(ip, cgroup, netns.try_clone().ok());
        let addr = std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, PLAINTEXT_PORT);
        let listener = netns::listen_in(&netns, addr)
            .map_err(|e| format!("listening on {addr} in the pod's namespace: {e}"))?;
        let key = u32::from_ne_bytes(ip.octets());
        self.plaintext_listeners
            .insert(key, listener.as_raw_fd(), 0)
            .map_err(|e| format!("{}: {e}", maps::PLAINTEXT_LISTENERS))?;
        let link = (|| -> Result<PinnedLink, RedirectError> {
            let prog: &mut SkLookup = self.program(programs::SK_LOOKUP)?;
            let id = prog.attach(&netns).map_err(program_error(
                programs::SK_LOOKUP,
                "sk_lookup",
                SK_LOOKUP_NEEDS,
            ))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(program_error(programs::SK_LOOKUP, "sk_lookup", "bpf links"))?
                .into();
            self.pin(link, &format!("{uid}-lookup"))
        })()
        .map_err(|e| e.to_string())?;
        let server = serve(listener, ip);
        Ok(Plaintext {
            link,
            _server: server,
        })
    }

    fn attach_cgroup(
        &mut self,
        name: &'static str,
        cgroup: &File,
    ) -> Result<FdLink, RedirectError> {
        let prog: &mut CgroupSockAddr = self.program(name)?;
        let id =
            prog.attach(cgroup, LINK_MODE)
                .map_err(program_error(name, "cgroup", "cgroup v2"))?;
        let link = prog
            .take_link(id)
            .map_err(program_error(name, "cgroup", "bpf links"))?;
        Ok(link.try_into()?)
    }

    /// The tc program on the pod's node-side veth, if the veth can be found yet, with the
    /// whole veth STRICT until `set_modes` writes the pod's modes.
    fn attach_tc(&mut self, ip: Ipv4Addr) -> Option<(String, u32, PinnedLink)> {
        let iface = netdev::pod_interface(ip)?;
        let index = ifindex(&iface)?;
        if let Err(err) = self.tc_mode.insert(index, TC_MODE_STRICT, 0) {
            tracing::warn!(%iface, %err, "cannot write {}", maps::TC_MODE);
            return None;
        }
        let attached = (|| -> Result<PinnedLink, RedirectError> {
            let prog: &mut SchedClassifier = self.program(programs::TC_POD_INGRESS)?;
            // Egress of the node side is the path into the pod.
            let id = prog
                .attach(&iface, TcAttachType::Egress)
                .map_err(program_error(
                    programs::TC_POD_INGRESS,
                    "tc",
                    "tcx or clsact",
                ))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(program_error(programs::TC_POD_INGRESS, "tc", "tcx links"))?
                .try_into()?;
            self.pin(link, &format!("tc-{iface}"))
        })();
        match attached {
            Ok(link) => Some((iface, index, link)),
            Err(err) => {
                let _ = self.tc_mode.remove(&index);
                tracing::warn!(%iface, %err, "cannot attach the inbound tc program");
                None
            }
        }
    }

    pub(super) fn unenrol(&mut self, enrolled: Enrolled) {
        // Entries keyed by address belong to whichever enrolled pod has it now: a new pod
        // may have been given a terminating pod's address.
        if !self.enrolled.values().any(|e| e.ip == enrolled.ip) {
            let key = u32::from_ne_bytes(enrolled.ip.octets());
            let _ = self.pods.remove(&key);
            let _ = self.plaintext_listeners.remove(&key);
            self.namespaces.remove(enrolled.ip);
        }
        if enrolled.ifindex != 0 {
            let _ = self.tc_mode.remove(&enrolled.ifindex);
            for port in enrolled.tc.ports.keys() {
                let _ = self
                    .tc_port_mode
                    .remove(&port_mode_key(enrolled.ifindex, *port));
            }
        }
        let plaintext = enrolled.plaintext.ok().map(|p| p.link);
        for link in enrolled.links.into_iter().chain(plaintext) {
            if let Ok(link) = link.unpin() {
                drop(link);
            }
        }
        tracing::info!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), "un-enrolled");
    }

    /// Enrolled and pending pods, for /config_dump.
    /// Ends the same-node connections between enrolled pods that the kernel carries
    /// directly (no agent task holds them) and that `state` no longer allows, and counts
    /// them. Such a connection was made while its destination was ungoverned; the agent
    /// finds it among the client pod's sockets (sock_diag), decides it as it would have at
    /// setup, with the client pod's identity, and aborts it (`sockdiag::destroy`).
    /// Returns how many were ended.
    pub fn revoke_direct(
        &self,
        state: &State,
        node: &str,
        trust_domain: &str,
        policy: &crate::policy::L4Policy,
        connections: &crate::connections::Connections,
    ) -> usize {
        let mut ended = 0;
        for enrolled in self.enrolled.values() {
            let Some(PodSockets {
                netns,
                sockets,
                listening,
            }) = pod_sockets(enrolled)
            else {
                continue;
            };
            let client = crate::tunnel::pod_identity(trust_domain, &enrolled.pod).ok();
            let mut doomed = Vec::new();
            for socket in sockets
                .iter()
                .filter(|s| !s.listening && !listening.contains(&s.local.port()))
            {
                let Some(dest) = state.pod_by_ip(socket.remote.ip()) else {
                    continue;
                };
                if dest.node_name.as_deref() != Some(node) || !state.in_mesh(dest) {
                    continue;
                }
                if let Err((by, reason)) = policy.decide(
                    state,
                    dest,
                    socket.remote.port(),
                    client.as_ref(),
                    socket.local.ip(),
                ) {
                    tracing::info!(local = %socket.local, remote = %socket.remote, %reason,
                        "closing a same-node connection the new policy denies");
                    doomed.push((socket.clone(), by.unwrap_or_else(|| "-".into())));
                }
            }
            if doomed.is_empty() {
                continue;
            }
            let targets: Vec<_> = doomed.iter().map(|(s, _)| s.clone()).collect();
            match crate::sockdiag::destroy(&netns, &targets) {
                Ok(n) => {
                    ended += n;
                    for (_, by) in doomed.iter().take(n) {
                        connections.count_closed(by);
                    }
                }
                Err(err) => tracing::warn!(pod = %enrolled.pod.name, %err,
                    "cannot close the pod's denied connections (sock_diag SOCK_DESTROY: needs CONFIG_INET_DIAG_DESTROY)"),
            }
        }
        ended
    }

    pub fn pod_statuses(&self) -> Vec<PodStatus> {
        self.enrolled
            .values()
            .map(|e| {
                let mut s = status(
                    &e.pod,
                    "enrolled",
                    Some(e.cgroup.clone()),
                    e.interface.clone(),
                    None,
                );
                s.plaintext_inbound = Some(match &e.plaintext {
                    Ok(_) => LISTENING.to_string(),
                    Err(reason) => reason.clone(),
                });
                s
            })
            .chain(self.pending.values().cloned())
            .collect()
    }
}

fn status(
    pod: &PodInfo,
    state: &'static str,
    cgroup: Option<PathBuf>,
    interface: Option<String>,
    reason: Option<String>,
) -> PodStatus {
    PodStatus {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        ip: pod.ip,
        state,
        cgroup,
        interface,
        plaintext_inbound: None,
        reason,
    }
}

/// The pod's kernel flags and inbound modes under the current policies.
fn pod_modes(
    direct_local: bool,
    model: &State,
    pod: &PodInfo,
    policy: &crate::policy::L4Policy,
) -> (u32, InboundModes) {
    let direct = direct_local && !policy.governs(model, pod);
    let flags = POD_ENROLLED | if direct { POD_DIRECT_OK } else { 0 };
    (flags, policy.inbound_modes(model, pod))
}

/// A pod's TCP sockets, listed in its network namespace.
struct PodSockets {
    netns: File,
    sockets: Vec<crate::sockdiag::Established>,
    /// The ports it listens on: an accepted socket shares its listener's port, so a socket
    /// on one of them is the server's side.
    listening: HashSet<u16>,
}

fn pod_sockets(enrolled: &Enrolled) -> Option<PodSockets> {
    let netns = netns::pod_netns(&enrolled.cgroup).ok()?;
    let sockets = match crate::sockdiag::established(&netns) {
        Ok(sockets) => sockets,
        Err(err) => {
            tracing::warn!(pod = %enrolled.pod.name, %err, "cannot list the pod's sockets");
            return None;
        }
    };
    let listening = sockets
        .iter()
        .filter(|s| s.listening)
        .map(|s| s.local.port())
        .collect();
    Some(PodSockets {
        netns,
        sockets,
        listening,
    })
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ports_are_marked_over_the_mode_they_would_have() {
        let modes = InboundModes {
            workload: MtlsMode::Strict,
            ports: [(7001, MtlsMode::Permissive)].into_iter().collect(),
        };
        let probes: BTreeSet<u16> = [7001, 8080].into_iter().collect();
        let tc = TcModes::new(&modes, true, &probes);
        assert_eq!(tc.pod, TC_MODE_STRICT);
        assert_eq!(tc.ports[&7001], TC_MODE_ALLOW_ALL | TC_PORT_PROBE);
        assert_eq!(tc.ports[&8080], TC_MODE_STRICT | TC_PORT_PROBE);
        // Without the plaintext inbound every port fails closed; probes still pass.
        let tc = TcModes::new(&modes, false, &probes);
        assert_eq!(tc.ports[&7001], TC_MODE_STRICT | TC_PORT_PROBE);
        assert_eq!(TcModes::new(&modes, true, &BTreeSet::new()).ports.len(), 1);
    }

    #[test]
    fn one_pod_cannot_fill_the_port_map() {
        let modes = InboundModes {
            workload: MtlsMode::Strict,
            ports: (1000..1100).map(|p| (p, MtlsMode::Permissive)).collect(),
        };
        let tc = TcModes::new(&modes, true, &[8080].into_iter().collect());
        assert_eq!(tc.pod, TC_MODE_STRICT);
        assert_eq!(
            tc.ports.into_iter().collect::<Vec<_>>(),
            [(8080, TC_MODE_STRICT | TC_PORT_PROBE)],
            "every port STRICT, the probe port still a probe port"
        );
    }
}
