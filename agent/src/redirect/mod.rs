//! Redirect: loading Weft's eBPF programs and attaching them to the node's enrolled pods.
//!
//! The programs and the map layout live in `agent-ebpf/`; this module owns their life in the
//! kernel. Maps and links are pinned under the agent's bpffs directory, so that an agent that
//! crashed is replaced by one that adopts the same maps (and the sockets spliced through them)
//! and swaps its own program in for each old link instead of attaching a second copy. A clean
//! exit (SIGTERM) detaches and unpins everything.

mod cgroup;
mod netdev;

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, SockHash,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, SkMsg, SockOps, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use serde::Serialize;
use weft_ebpf_common::{
    Endpoint, OrigDst, POD_DIRECT_OK, POD_ENROLLED, PodEntry, SETTING_DIRECT_LOCAL, SETTING_SPLICE,
    Settings, SockKey, TC_MODE_ALLOW_ALL, TC_MODE_STRICT, counter, maps, programs,
};
use weft_mesh::config::{Model, PodInfo};

pub use cgroup::find_pod_cgroup;

use crate::settings::AgentSettings;

/// Cgroup attachments are bpf links, which the kernel always stacks (several programs per
/// cgroup); link creation refuses the legacy BPF_F_ALLOW_MULTI flag, so the mode passes none.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The eBPF log reader, forwarding to the `log` facade (and so to tracing).
pub type EbpfLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The object file built from `agent-ebpf/` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft.bpf.o"));

/// Bumped whenever a map's key, value or size changes. The pins live in a directory of this
/// name (bpffs holds no regular files to write a version into), and pins of any other layout
/// are discarded at start.
const LAYOUT: &str = "v2";

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel refused program {program} ({kind}); it needs {needs}")]
    Program {
        program: &'static str,
        kind: &'static str,
        needs: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
}

fn program_error(
    program: &'static str,
    kind: &'static str,
    needs: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> RedirectError {
    move |source| RedirectError::Program {
        program,
        kind,
        needs,
        source: Box::new(source),
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RedirectError + 'a {
    move |source| RedirectError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A pod whose connect hooks are attached.
struct Enrolled {
    pod: PodInfo,
    ip: Ipv4Addr,
    cgroup: PathBuf,
    interface: Option<String>,
    links: Vec<PinnedLink>,
    /// What the kernel maps hold for the pod now.
    flags: u32,
    tc_mode: u32,
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
    pub reason: Option<String>,
}

/// The maps user space reads on the data path, shared with the outbound listener and metrics.
#[derive(Clone)]
pub struct SharedMaps {
    orig_by_tuple: Arc<Mutex<HashMap<MapData, Endpoint, OrigDst>>>,
    counters: Arc<Mutex<PerCpuArray<MapData, u64>>>,
}

impl SharedMaps {
    /// The original destination of the captured connection from `client`, consumed.
    pub fn take_orig_dst(&self, client: std::net::SocketAddrV4) -> Option<std::net::SocketAddrV4> {
        let key = Endpoint {
            ip: u32::from_ne_bytes(client.ip().octets()),
            port: u32::from(client.port()),
        };
        let mut map = self.orig_by_tuple.lock().ok()?;
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(std::net::SocketAddrV4::new(
            Ipv4Addr::from(orig.ip.to_ne_bytes()),
            orig.port,
        ))
    }

    /// The kernel's event counters, summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        const NAMES: [(u32, &str); counter::COUNT as usize] = [
            (counter::CONNECT_SEEN, "connect_seen"),
            (counter::REDIRECTED, "redirected"),
            (counter::DIRECT_LOCAL, "direct_local"),
            (counter::BYPASSED, "bypassed"),
            (counter::ESTABLISHED, "established"),
            (counter::SOCK_ADDED, "sock_added"),
            (counter::SOCK_ADD_FAILED, "sock_add_failed"),
            (counter::SPLICED_MSGS, "spliced_msgs"),
            (counter::SPLICED_BYTES, "spliced_bytes"),
            (counter::PASSED_MSGS, "passed_msgs"),
            (counter::PASSED_BYTES, "passed_bytes"),
            (counter::TC_PACKETS, "tc_packets"),
            (counter::TC_DROPPED, "tc_dropped"),
            (counter::TC_PLAINTEXT, "tc_plaintext"),
        ];
        let Ok(map) = self.counters.lock() else {
            return BTreeMap::new();
        };
        NAMES
            .iter()
            .map(|&(index, name)| {
                let sum = map
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (name, sum)
            })
            .collect()
    }
}

/// Weft's programs in the kernel, and the pods they are attached to.
pub struct Datapath {
    ebpf: Ebpf,
    _logger: Option<EbpfLog>,
    dir: PathBuf,
    cgroup_root: PathBuf,
    node_links: Vec<PinnedLink>,
    /// Links a previous agent pinned (their pins already removed); dropped, and so detached,
    /// once this agent's own are attached.
    adopted: Vec<FdLink>,
    enrolled: BTreeMap<String, Enrolled>,
    pending: BTreeMap<String, PodStatus>,
    pods: HashMap<MapData, u32, PodEntry>,
    tc_mode: HashMap<MapData, u32, u32>,
    _socks: SockHash<MapData, SockKey>,
    shared: SharedMaps,
    direct_local: bool,
}

impl Datapath {
    /// Loads the programs, adopting pinned maps and links of a previous agent on this node.
    pub fn load(settings: &AgentSettings) -> Result<Self, RedirectError> {
        let dir = settings.bpffs_dir.join(LAYOUT);
        if let Ok(entries) = std::fs::read_dir(&settings.bpffs_dir) {
            for other in entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| *p != dir)
            {
                tracing::warn!(dir = %other.display(), "discarding pinned eBPF state of another layout");
                remove_pins(&other);
            }
        }
        std::fs::create_dir_all(dir.join("links")).map_err(io_err("creating", &dir))?;
        let adopted = adopt_links(&dir.join("links"));
        if !adopted.is_empty() {
            tracing::info!(
                links = adopted.len(),
                "adopting the pinned state of a previous agent"
            );
        }

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::debug!(%err, "eBPF logging off");
                None
            }
        };
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(RedirectError::Missing(name))
        };

        let mut settings_map: Array<MapData, Settings> = take(&mut ebpf, maps::SETTINGS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::SETTINGS, e))?;
        let mut excl_ports: HashMap<MapData, u32, u8> = take(&mut ebpf, maps::EXCL_PORTS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::EXCL_PORTS, e))?;
        let mut excl_cidrs: LpmTrie<MapData, u32, u8> = take(&mut ebpf, maps::EXCL_CIDRS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::EXCL_CIDRS, e))?;
        let pods = take(&mut ebpf, maps::PODS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::PODS, e))?;
        let tc_mode = take(&mut ebpf, maps::TC_MODE)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::TC_MODE, e))?;
        let socks: SockHash<MapData, SockKey> = take(&mut ebpf, maps::SOCKS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::SOCKS, e))?;
        let orig = take(&mut ebpf, maps::ORIG_BY_TUPLE)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::ORIG_BY_TUPLE, e))?;
        let counters = take(&mut ebpf, maps::COUNTERS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::COUNTERS, e))?;

        // Exclusions first, then settings: agent_ip != 0 is what turns capture on.
        for key in excl_ports.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            let _ = excl_ports.remove(&key);
        }
        for port in &settings.exclude_ports {
            excl_ports
                .insert(u32::from(*port), 1, 0)
                .map_err(|e| RedirectError::Map(maps::EXCL_PORTS, e))?;
        }
        for key in excl_cidrs.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            let _ = excl_cidrs.remove(&key);
        }
        for cidr in &settings.exclude_cidrs {
            let key = Key::new(
                u32::from(cidr.prefix),
                u32::from_ne_bytes(cidr.addr.octets()),
            );
            excl_cidrs
                .insert(&key, 1, 0)
                .map_err(|e| RedirectError::Map(maps::EXCL_CIDRS, e))?;
        }
        let mut flags = 0;
        if !settings.no_splice {
            flags |= SETTING_SPLICE;
        }
        if !settings.no_direct_local {
            flags |= SETTING_DIRECT_LOCAL;
        }
        let node_settings = Settings {
            agent_ip: u32::from_ne_bytes(settings.agent_ip.octets()),
            outbound_port: u32::from(settings.outbound_port),
            flags,
            _pad: 0,
        };
        settings_map
            .set(0, node_settings, 0)
            .map_err(|e| RedirectError::Map(maps::SETTINGS, e))?;

        let mut datapath = Datapath {
            ebpf,
            _logger: logger,
            dir,
            cgroup_root: settings.cgroup_root.clone(),
            node_links: Vec::new(),
            adopted,
            enrolled: BTreeMap::new(),
            pending: BTreeMap::new(),
            pods,
            tc_mode,
            _socks: socks,
            shared: SharedMaps {
                orig_by_tuple: Arc::new(Mutex::new(orig)),
                counters: Arc::new(Mutex::new(counters)),
            },
            direct_local: !settings.no_direct_local,
        };
        datapath.load_programs()?;
        datapath.attach_node()?;
        Ok(datapath)
    }

    pub fn shared(&self) -> SharedMaps {
        self.shared.clone()
    }

    /// Takes the eBPF logger, for the caller to poll.
    pub fn take_logger(&mut self) -> Option<EbpfLog> {
        self._logger.take()
    }

    fn load_programs(&mut self) -> Result<(), RedirectError> {
        for (name, kind, needs) in [
            (
                programs::CONNECT4,
                "cgroup/connect4",
                "BPF_PROG_TYPE_CGROUP_SOCK_ADDR (Linux 4.17+)",
            ),
            (
                programs::CONNECT6,
                "cgroup/connect6",
                "BPF_PROG_TYPE_CGROUP_SOCK_ADDR (Linux 4.17+)",
            ),
        ] {
            let prog: &mut CgroupSockAddr = self.program(name)?;
            prog.load().map_err(program_error(name, kind, needs))?;
        }
        let prog: &mut SockOps = self.program(programs::SOCKOPS)?;
        prog.load().map_err(program_error(
            programs::SOCKOPS,
            "sockops",
            "BPF_PROG_TYPE_SOCK_OPS (Linux 4.13+)",
        ))?;
        let prog: &mut SkMsg = self.program(programs::SK_MSG)?;
        prog.load().map_err(program_error(
            programs::SK_MSG,
            "sk_msg",
            "BPF_PROG_TYPE_SK_MSG and sockhash (Linux 4.18+)",
        ))?;
        let prog: &mut SchedClassifier = self.program(programs::TC_POD_INGRESS)?;
        prog.load().map_err(program_error(
            programs::TC_POD_INGRESS,
            "tc classifier",
            "BPF_PROG_TYPE_SCHED_CLS with tcx (Linux 6.6+) or clsact",
        ))?;
        Ok(())
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, RedirectError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(RedirectError::Missing(name))?;
        prog.try_into().map_err(program_error(
            name,
            "program",
            "the program type its section names",
        ))
    }

    /// sockops on the node's cgroup root (it sees the pods and the agent), and sk_msg on the
    /// sockhash.
    fn attach_node(&mut self) -> Result<(), RedirectError> {
        let root =
            File::open(&self.cgroup_root).map_err(io_err("opening cgroup", &self.cgroup_root))?;
        let prog: &mut SockOps = self.program(programs::SOCKOPS)?;
        let id = prog.attach(&root, LINK_MODE).map_err(program_error(
            programs::SOCKOPS,
            "sockops",
            "cgroup v2",
        ))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(program_error(programs::SOCKOPS, "sockops", "bpf links"))?
            .try_into()?;
        let pinned = self.pin(link, "node-sockops")?;
        self.node_links.push(pinned);

        // sk_msg attaches to the map itself; attaching again replaces a previous agent's program.
        let socks_fd = self
            ._socks
            .fd()
            .try_clone()
            .map_err(io_err("duplicating", Path::new(maps::SOCKS)))?;
        let prog: &mut SkMsg = self.program(programs::SK_MSG)?;
        prog.attach(&socks_fd)
            .map_err(program_error(programs::SK_MSG, "sk_msg", "sockhash"))?;
        Ok(())
    }

    /// Pins under links/; bpffs refuses names with a dot.
    fn pin(&self, link: FdLink, name: &str) -> Result<PinnedLink, RedirectError> {
        let path = self.dir.join("links").join(name);
        if path.exists() {
            // A previous agent's link of the same name is held in `adopted`; free the name.
            let _ = std::fs::remove_file(&path);
        }
        link.pin(&path)
            .map_err(|source| RedirectError::Pin { path, source })
    }

    /// Makes the attached set match the pods `model` enrols on `node`.
    pub fn reconcile(&mut self, model: &Model, node: &str, policy: &crate::policy::L4Policy) {
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
            let (flags, tc_mode) = self.pod_modes(model, &pod, policy);
            if let Some(enrolled) = self.enrolled.get(&uid) {
                let (ip, current, no_interface) = (
                    enrolled.ip,
                    (enrolled.flags, enrolled.tc_mode),
                    enrolled.interface.is_none(),
                );
                if current != (flags, tc_mode) {
                    self.set_modes(&uid, flags, tc_mode);
                }
                // The veth may appear after the cgroup; retry the tc attachment.
                if no_interface
                    && let Some((iface, link)) = self.attach_tc(ip, tc_mode)
                    && let Some(enrolled) = self.enrolled.get_mut(&uid)
                {
                    enrolled.interface = Some(iface);
                    enrolled.links.push(link);
                }
                continue;
            }
            match self.enrol(&pod, flags, tc_mode) {
                Ok(enrolled) => {
                    tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), ip = %enrolled.ip, "enrolled");
                    self.enrolled.insert(uid, enrolled);
                }
                Err(reason) => {
                    tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), %reason, "not enrolled yet");
                    self.pending
                        .insert(uid, status(&pod, "pending", None, None, Some(reason)));
                }
            }
        }
        // Once this agent's links are in place, a previous agent's copies go.
        self.adopted.clear();
    }

    /// The pod's kernel flags and inbound mode under the current policies.
    fn pod_modes(
        &self,
        model: &Model,
        pod: &PodInfo,
        policy: &crate::policy::L4Policy,
    ) -> (u32, u32) {
        let direct = self.direct_local && !policy.governs(model, pod);
        let flags = POD_ENROLLED | if direct { POD_DIRECT_OK } else { 0 };
        let mode = if policy.strict(model, pod) {
            TC_MODE_STRICT
        } else {
            TC_MODE_ALLOW_ALL
        };
        (flags, mode)
    }

    fn set_modes(&mut self, uid: &str, flags: u32, tc_mode: u32) {
        let Some(enrolled) = self.enrolled.get_mut(uid) else {
            return;
        };
        let ifindex = enrolled.interface.as_deref().and_then(ifindex).unwrap_or(0);
        let key = u32::from_ne_bytes(enrolled.ip.octets());
        if let Err(err) = self.pods.insert(key, PodEntry { flags, ifindex }, 0) {
            tracing::warn!(%err, "updating {}", maps::PODS);
            return;
        }
        if ifindex != 0
            && let Err(err) = self.tc_mode.insert(ifindex, tc_mode, 0)
        {
            tracing::warn!(%err, "updating {}", maps::TC_MODE);
            return;
        }
        tracing::info!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), direct = flags & POD_DIRECT_OK != 0, strict = tc_mode == TC_MODE_STRICT, "pod modes changed");
        enrolled.flags = flags;
        enrolled.tc_mode = tc_mode;
    }

    fn enrol(&mut self, pod: &PodInfo, flags: u32, tc_mode: u32) -> Result<Enrolled, String> {
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
        let (interface, tc_link) = match self.attach_tc(ip, tc_mode) {
            Some((iface, link)) => (Some(iface), Some(link)),
            None => (None, None),
        };
        links.extend(tc_link);
        let ifindex = interface.as_deref().and_then(ifindex).unwrap_or(0);
        let key = u32::from_ne_bytes(ip.octets());
        self.pods
            .insert(key, PodEntry { flags, ifindex }, 0)
            .map_err(|e| format!("{}: {e}", maps::PODS))?;
        Ok(Enrolled {
            pod: pod.clone(),
            ip,
            cgroup,
            interface,
            links,
            flags,
            tc_mode,
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

    /// The tc program on the pod's node-side veth, if the veth can be found yet.
    fn attach_tc(&mut self, ip: Ipv4Addr, mode: u32) -> Option<(String, PinnedLink)> {
        let iface = netdev::pod_interface(ip)?;
        let index = ifindex(&iface)?;
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
            Ok(link) => {
                let _ = self.tc_mode.insert(index, mode, 0);
                Some((iface, link))
            }
            Err(err) => {
                tracing::warn!(%iface, %err, "cannot attach the inbound tc program");
                None
            }
        }
    }

    fn unenrol(&mut self, enrolled: Enrolled) {
        let key = u32::from_ne_bytes(enrolled.ip.octets());
        let _ = self.pods.remove(&key);
        if let Some(index) = enrolled.interface.as_deref().and_then(ifindex) {
            let _ = self.tc_mode.remove(&index);
        }
        for link in enrolled.links {
            if let Ok(link) = link.unpin() {
                drop(link);
            }
        }
        tracing::info!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), "un-enrolled");
    }

    /// Enrolled and pending pods, for /config_dump.
    pub fn pod_statuses(&self) -> Vec<PodStatus> {
        self.enrolled
            .values()
            .map(|e| {
                status(
                    &e.pod,
                    "enrolled",
                    Some(e.cgroup.clone()),
                    e.interface.clone(),
                    None,
                )
            })
            .chain(self.pending.values().cloned())
            .collect()
    }

    /// IDs of this agent's programs in the kernel, by name.
    pub fn program_ids(&self) -> BTreeMap<String, u32> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| Some((name.to_string(), prog.info().ok()?.id())))
            .collect()
    }

    /// Detaches and unpins everything: nothing of this agent is left in the kernel.
    pub fn shutdown(mut self) {
        let enrolled = std::mem::take(&mut self.enrolled);
        for (_, e) in enrolled {
            self.unenrol(e);
        }
        self.adopted.clear();
        for link in self.node_links.drain(..) {
            if let Ok(link) = link.unpin() {
                drop(link);
            }
        }
        remove_pins(&self.dir);
        tracing::info!(dir = %self.dir.display(), "eBPF state removed");
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
        reason,
    }
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Opens every link a previous agent pinned and removes the pins: this agent holds the links
/// open until its own replace them, and pins its own under the same names.
fn adopt_links(dir: &Path) -> Vec<FdLink> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let link = PinnedLink::from_pin(entry.path());
            let _ = std::fs::remove_file(entry.path());
            match link {
                Ok(link) => Some(FdLink::from(link)),
                Err(err) => {
                    tracing::warn!(path = %entry.path().display(), %err, "dropped an unreadable pin");
                    None
                }
            }
        })
        .collect()
}

/// Removes the pinned maps, links and the directory. The kernel frees each object once its
/// last file descriptor closes too.
fn remove_pins(dir: &Path) {
    for name in maps::ALL {
        let _ = std::fs::remove_file(dir.join(name));
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for entry in entries.filter_map(Result::ok) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir.join("links"));
    let _ = std::fs::remove_dir(dir);
    // The agent's directory too, once no layout is left in it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}
