//! The maps shared by the programs, with their sizes and why.
//!
//! All of them are pinned by name, so that a restarted agent adopts the state (and the live
//! spliced sockets) of the one before it instead of starting a second copy.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use weft_ebpf_common::{Endpoint, OrigDst, PodEntry, ProbeKey, Settings, SockKey, counter};

/// One entry: the node-wide settings.
#[map(name = "WEFT_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Enrolled pods on this node by IPv4 address. A node runs at most a few hundred pods (the
/// kubelet's default limit is 110); 4096 leaves room for churn of pod IPs.
#[map(name = "WEFT_PODS")]
pub static PODS: HashMap<u32, PodEntry> = HashMap::pinned(4096, 0);

/// Destination ports never captured (host-order port as u32). Configuration lists a handful.
#[map(name = "WEFT_EXCL_PORTS")]
pub static EXCL_PORTS: HashMap<u32, u8> = HashMap::pinned(256, 0);

/// Destination CIDRs never captured. LPM tries need BPF_F_NO_PREALLOC (1).
#[map(name = "WEFT_EXCL_CIDRS")]
pub static EXCL_CIDRS: LpmTrie<u32, u8> = LpmTrie::pinned(256, 1);

/// Original destinations between connect() and establishment, kept on the connecting socket
/// itself: the kernel frees the record with the socket, so a connect() that never completes
/// (a closed socket, no free local port) leaves nothing behind, and no pod's records can
/// crowd out another's. Socket storage needs BTF, so this map is defined the BTF way and is
/// not pinned: a restarted agent starts it empty (only handshakes in flight at that instant
/// lose their record, and the agent closes them).
#[btf_map(name = "WEFT_ORIG_SK")]
pub static ORIG_BY_SOCKET: SkStorage<OrigDst> = SkStorage::new();

/// Original destinations of established captured connections, by the client's address and
/// port, until the agent accepts and consumes them. Not LRU, so no pod's records can evict
/// another's; instead each pod is bounded by its key space. A key is the client socket's own
/// address and port, so a pod (which cannot bind another pod's address) holds at most 65536
/// records, and four pods that each held every port would be needed to fill the map; then
/// new records fail (counted as `orig_record_failed`) and the agent closes those connections.
/// Records leave when the agent consumes them, or when the client closes before the agent's
/// end was established (sockops' state callback). No preallocation: memory follows use.
#[map(name = "WEFT_ORIG_TUPLE")]
pub static ORIG_BY_TUPLE: HashMap<Endpoint, OrigDst> =
    HashMap::pinned(4 * 65536, BPF_F_NO_PREALLOC);

/// Sockets whose two ends are on this node. Two per connection; 65536 covers 32768 live
/// local connections. A full map only means new sockets take the plain TCP path.
#[map(name = "WEFT_SOCKS")]
pub static SOCKS: SockHash<SockKey> = SockHash::pinned(65536, 0);

/// Sockets that have sent bytes through TCP because their peer was not spliceable then. They
/// must never switch to splicing, or their later bytes would overtake the earlier ones. Not
/// LRU: an LRU map may evict a live socket's mark (even before it is full, from a CPU's
/// local list), and then the bytes would reorder. Only sockets in `SOCKS` get a mark, and
/// each loses it when it closes (sockops' state callback), so the marks never outnumber
/// `SOCKS`'s 65536 entries and an insert never meets a full map.
#[map(name = "WEFT_NOSPLICE")]
pub static NO_SPLICE: HashMap<SockKey, u8> = HashMap::pinned(65536, 0);

/// Inbound mode per pod veth, by ifindex; same bound as `PODS`.
#[map(name = "WEFT_TC_MODE")]
pub static TC_MODE: HashMap<u32, u32> = HashMap::pinned(4096, 0);

/// Port-level inbound modes (PeerAuthentication `portLevelMtls`), by `port_mode_key`. Only
/// pods with a workload policy that names ports have entries, a handful each.
#[map(name = "WEFT_TC_PORT")]
pub static TC_PORT_MODE: HashMap<u64, u32> = HashMap::pinned(4096, 0);

/// The agent's plaintext inbound listener (:15006) inside each enrolled pod's network
/// namespace, by the pod's IPv4 address (network order). `sk_lookup` hands it the plaintext
/// connections that come from outside the mesh. Same bound as `PODS`.
#[map(name = "WEFT_PLAIN_LSN")]
pub static PLAINTEXT_LISTENERS: SockHash<u32> = SockHash::pinned(4096, 0);

/// Kubelet probes between the tc gate, which saw a node process open them, and sk_lookup
/// in the pod, which lets them reach the container. Entries live for one handshake (sk_lookup
/// removes them); LRU, so a flood of probes only makes the oldest take the plaintext inbound.
#[map(name = "WEFT_PROBES")]
pub static PROBES: LruHashMap<ProbeKey, u8> = LruHashMap::pinned(4096, 0);

/// Event counters, per CPU so that counting never contends.
#[map(name = "WEFT_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += by };
    }
}

#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// Whether `ip` (network order) is an enrolled pod on this node.
#[inline(always)]
pub fn pod_flags(ip: u32) -> Option<u32> {
    // SAFETY: the agent writes whole entries with one map update; a racing update can at worst
    // show the previous flags.
    unsafe { PODS.get(&ip) }.map(|p| p.flags)
}

/// Whether a connection from `source` (network order) comes from inside the mesh by its
/// address: from the agent's dial address (the tunnel's end, which checked the peer's
/// certificate, or its plaintext inbound) or from an enrolled pod of this node. The tc gate
/// also requires the agent's mark on the first; the node's own address is not the mesh.
#[inline(always)]
pub fn from_mesh(source: u32) -> bool {
    is_dial_address(source) || pod_flags(source).is_some()
}

/// Whether `source` (network order) is the address the agent dials pods from.
#[inline(always)]
pub fn is_dial_address(source: u32) -> bool {
    settings().is_some_and(|s| s.dial_ip != 0 && s.dial_ip == source)
}

/// Whether `ip` is one end a same-node splice may join: an enrolled pod of this node.
///
/// The agent's own sockets are left out on purpose. An ingress redirect has no flow control:
/// bytes queue in the receiving socket until it reads them, and the kernel answers the
/// sender with ENOMEM once TCP memory runs short. The agent stops reading a pod's socket
/// whenever the tunnel is full, so its hops keep TCP's windows as their backpressure.
#[inline(always)]
pub fn node_local(ip: u32, settings: &Settings) -> bool {
    ip != settings.agent_ip && pod_flags(ip).is_some()
}

/// An IPv6 address that carries IPv4 (`::ffff:a.b.c.d`), as the IPv4 address in network order.
/// Dual-stack servers listen on `[::]`, and their accepted IPv4 sockets look like this.
#[inline(always)]
pub fn v4_mapped(ip6: [u32; 4]) -> Option<u32> {
    // Each word is in network order; on a little-endian host 0x0000ffff in network order
    // reads as 0xffff0000.
    (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffff_0000u32).then_some(ip6[3])
}
