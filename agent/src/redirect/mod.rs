//! Redirect: loading Weft's eBPF programs and attaching them to the node's enrolled pods.
//!
//! The programs and the map layout live in `agent-ebpf/`; this module owns their life in the
//! kernel. Maps and links are pinned under the agent's bpffs directory, so that an agent that
//! crashed is replaced by one that adopts the same maps (and the sockets spliced through them)
//! and swaps its own program in for each old link instead of attaching a second copy. A clean
//! exit (SIGTERM) detaches and unpins everything.

mod cgroup;
mod enrol;
mod netdev;
pub mod netns;
mod shared;
mod sweep;

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, SockHash,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, SkLookup, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use weft_ebpf_common::{
    PodEntry, SETTING_DIRECT_LOCAL, SETTING_SPLICE, Settings, SockKey, maps, programs,
};

pub use cgroup::find_pod_cgroup;
use enrol::Enrolled;
pub use enrol::PodStatus;
pub use shared::SharedMaps;

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
const LAYOUT: &str = "v5";

/// What the plaintext inbound's program needs of the kernel.
const SK_LOOKUP_NEEDS: &str = "BPF_PROG_TYPE_SK_LOOKUP (Linux 5.9+)";

/// The agent's plaintext inbound port, as Istio's ztunnel numbers it. The listener is bound
/// to loopback inside each pod's namespace, so only sk_lookup's hand-over reaches it.
pub const PLAINTEXT_PORT: u16 = 15006;

/// Serves the plaintext listener made in an enrolled pod's namespace (the pod's address is
/// the second argument), until the returned handle drops.
pub type PlaintextServer = Arc<dyn Fn(TcpListener, Ipv4Addr) -> ServerHandle + Send + Sync>;

/// A task serving one listener; dropping the handle stops it (and closes the listener).
pub struct ServerHandle(pub tokio::task::AbortHandle);

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
    tc_port_mode: HashMap<MapData, u64, u32>,
    plaintext_listeners: SockHash<MapData, u32>,
    plaintext_server: Option<PlaintextServer>,
    /// Whether the first reconcile has dropped a previous agent's links and entries.
    swept: bool,
    _socks: SockHash<MapData, SockKey>,
    shared: SharedMaps,
    direct_local: bool,
    /// What `sweep` needs: the agent's addresses and what capture leaves alone.
    agent_ip: std::net::Ipv4Addr,
    dial_ip: std::net::Ipv4Addr,
    exclude_ports: Vec<u16>,
    exclude_cidrs: Vec<crate::settings::Cidr>,
    /// The enrolled pods' network namespaces, shared with the egress upstream.
    namespaces: netns::PodNamespaces,
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
        let tc_port_mode = take(&mut ebpf, maps::TC_PORT_MODE)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::TC_PORT_MODE, e))?;
        let plaintext_listeners = take(&mut ebpf, maps::PLAINTEXT_LISTENERS)?
            .try_into()
            .map_err(|e| RedirectError::Map(maps::PLAINTEXT_LISTENERS, e))?;
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
            dial_ip: u32::from_ne_bytes(settings.dial_ip.octets()),
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
            tc_port_mode,
            plaintext_listeners,
            plaintext_server: None,
            swept: false,
            _socks: socks,
            shared: SharedMaps {
                orig_by_tuple: Arc::new(Mutex::new(orig)),
                counters: Arc::new(Mutex::new(counters)),
            },
            direct_local: !settings.no_direct_local,
            agent_ip: settings.agent_ip,
            dial_ip: settings.dial_ip,
            exclude_ports: settings.exclude_ports.clone(),
            exclude_cidrs: settings.exclude_cidrs.clone(),
            namespaces: netns::PodNamespaces::default(),
        };
        datapath.load_programs()?;
        datapath.attach_node()?;
        Ok(datapath)
    }

    /// Where the enrolled pods' network namespaces are kept for the egress upstream.
    pub fn set_pod_namespaces(&mut self, namespaces: netns::PodNamespaces) {
        self.namespaces = namespaces;
    }

    /// Who serves the plaintext inbound listeners. Without one, plaintext from outside the
    /// mesh is refused at every pod.
    pub fn set_plaintext_server(&mut self, server: PlaintextServer) {
        self.plaintext_server = Some(server);
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
        let prog: &mut SkLookup = self.program(programs::SK_LOOKUP)?;
        prog.load().map_err(program_error(
            programs::SK_LOOKUP,
            "sk_lookup",
            SK_LOOKUP_NEEDS,
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
