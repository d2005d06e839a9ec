//! A pod's network namespace, and the agent's plaintext listener made inside it.
//!
//! The namespace is found through a process of the pod: the first PID in the pod's cgroup or
//! one below it (on Kubernetes, the pause container's, there from the pod's start). The
//! listener is made on a short-lived thread that joins the namespace; a socket stays in the
//! namespace it was made in, so the agent serves it from its own threads afterwards.

use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{Ipv4Addr, TcpListener},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use nix::sched::{CloneFlags, setns};

/// The network namespace of the pod whose cgroup is `cgroup`.
pub fn pod_netns(cgroup: &Path) -> Result<File, String> {
    let pid = first_pid(cgroup, 4).ok_or("no process in the pod's cgroup yet")?;
    let path = format!("/proc/{pid}/ns/net");
    let netns = File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    // The process may have exited and its PID been reused between the two reads: only a
    // process still in the pod's cgroup vouches for the namespace.
    let name = cgroup.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if name.is_empty() || !membership.contains(name) {
        return Err(format!("process {pid} left the pod's cgroup"));
    }
    let own = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| format!("reading /proc/self/ns/net: {e}"))?;
    let theirs = netns
        .metadata()
        .map_err(|e| format!("reading {path}: {e}"))?;
    if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
        return Err("the pod shares the node's network namespace".into());
    }
    Ok(netns)
}

/// The first PID listed in `cgroup.procs` of `dir` or of a cgroup below it, `depth` levels
/// down at most (the kubelet puts containers one level below the pod).
fn first_pid(dir: &Path, depth: usize) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    // 0 stands for a process outside the reader's PID namespace (an agent without hostPID).
    if let Some(pid) = procs
        .lines()
        .find_map(|l| l.trim().parse().ok().filter(|pid| *pid != 0))
    {
        return Some(pid);
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path(), depth - 1))
}

/// The network namespaces of the node's enrolled pods, by address: where the agent opens
/// a pod's connections to destinations outside the mesh, so that they leave as the pod. A
/// pod is known by its cgroup from its enrolment; its namespace is found through a process
/// of the pod when first needed (the one connecting is there then) and kept.
#[derive(Clone, Default)]
pub struct PodNamespaces(Arc<Mutex<HashMap<Ipv4Addr, PodNamespace>>>);

struct PodNamespace {
    cgroup: PathBuf,
    netns: Option<Arc<File>>,
}

impl PodNamespaces {
    /// A pod enrolled with its cgroup; `netns` if already found (a namespace found before
    /// is kept otherwise).
    pub fn insert(&self, ip: Ipv4Addr, cgroup: &Path, netns: Option<File>) {
        if let Ok(mut map) = self.0.lock() {
            let known = map.remove(&ip).and_then(|old| old.netns);
            let netns = netns.map(Arc::new).or(known);
            let cgroup = cgroup.to_path_buf();
            map.insert(ip, PodNamespace { cgroup, netns });
        }
    }

    pub fn remove(&self, ip: Ipv4Addr) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&ip);
        }
    }

    /// The namespace of the enrolled pod at `ip`. Blocking: it may read /proc.
    pub fn get(&self, ip: Ipv4Addr) -> Result<Arc<File>, String> {
        let cgroup = {
            let map = self
                .0
                .lock()
                .map_err(|_| "the namespace registry is poisoned")?;
            let entry = map
                .get(&ip)
                .ok_or_else(|| format!("{ip} is no enrolled pod"))?;
            if let Some(netns) = &entry.netns {
                return Ok(netns.clone());
            }
            entry.cgroup.clone()
        };
        let netns = Arc::new(pod_netns(&cgroup)?);
        if let Ok(mut map) = self.0.lock()
            && let Some(entry) = map.get_mut(&ip)
        {
            entry.netns = Some(netns.clone());
        }
        Ok(netns)
    }
}

/// Runs `f` on a short-lived thread inside `netns`: a socket keeps the namespace it was made
/// in, and the agent's own threads never move.
pub fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// A new, unconnected, non-blocking IPv4 TCP socket inside `netns`. It stays in that
/// namespace (routes, addresses, and the CNI's rules for the pod apply to it), and belongs
/// to the agent's cgroup, so the pod's capture hooks never see it.
pub fn tcp_socket_in(netns: &File) -> io::Result<std::os::fd::OwnedFd> {
    in_netns(netns, new_tcp_socket)
}

/// A new, unconnected, non-blocking IPv4 TCP socket in the calling thread's namespace.
fn new_tcp_socket() -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Tcp,
    )
    .map_err(io::Error::from)
}

/// A non-blocking listener bound to `addr` inside `netns`.
/// Bound with `SO_REUSEPORT`, beside a previous agent's listener that it takes over from
/// (`crate::handover`); the pod's namespace gets `tcp_migrate_req` for the same reason.
pub fn listen_in(netns: &File, addr: std::net::SocketAddrV4) -> io::Result<TcpListener> {
    in_netns(netns, || {
        if let Err(err) = crate::handover::migrate_requests() {
            tracing::debug!(%err, "cannot set tcp_migrate_req in the pod's namespace");
        }
        let socket = new_tcp_socket()?;
        Ok(TcpListener::from(crate::handover::listen_shared_fd(
            socket, addr,
        )?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_pid_in_a_child_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let child = dir.path().join("container");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(child.join("cgroup.procs"), "4242\n4343\n").unwrap();
        assert_eq!(first_pid(dir.path(), 4), Some(4242));
        assert_eq!(first_pid(dir.path(), 0), None);
    }
}
