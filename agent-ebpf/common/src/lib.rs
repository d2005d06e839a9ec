//! The contract between Weft's eBPF programs and the agent: map names, keys, values and flags.
//!
//! Everything the kernel side and user space exchange is defined here, once, as `#[repr(C)]`
//! plain data. Byte orders follow the kernel's context structs, and are stated on each field,
//! because a mismatch there fails silently (lookups miss) rather than loudly.
#![no_std]

/// Map names. They double as pin file names under the agent's bpffs directory, so they must
/// stay under 16 bytes (`BPF_OBJ_NAME_LEN`).
pub mod maps {
    pub const SETTINGS: &str = "WEFT_SETTINGS";
    pub const PODS: &str = "WEFT_PODS";
    pub const EXCL_PORTS: &str = "WEFT_EXCL_PORTS";
    pub const EXCL_CIDRS: &str = "WEFT_EXCL_CIDRS";
    /// Socket storage: not pinned (BTF-defined), so it is not in `ALL`.
    pub const ORIG_BY_SOCKET: &str = "WEFT_ORIG_SK";
    pub const ORIG_BY_TUPLE: &str = "WEFT_ORIG_TUPLE";
    pub const SOCKS: &str = "WEFT_SOCKS";
    pub const NO_SPLICE: &str = "WEFT_NOSPLICE";
    pub const TC_MODE: &str = "WEFT_TC_MODE";
    pub const TC_PORT_MODE: &str = "WEFT_TC_PORT";
    pub const PLAINTEXT_LISTENERS: &str = "WEFT_PLAIN_LSN";
    pub const PROBES: &str = "WEFT_PROBES";
    pub const COUNTERS: &str = "WEFT_COUNTERS";

    /// Every map the agent pins, for clean-up and adoption.
    pub const ALL: [&str; 12] = [
        SETTINGS,
        PODS,
        EXCL_PORTS,
        EXCL_CIDRS,
        ORIG_BY_TUPLE,
        SOCKS,
        NO_SPLICE,
        TC_MODE,
        TC_PORT_MODE,
        PLAINTEXT_LISTENERS,
        PROBES,
        COUNTERS,
    ];
}

/// Program names as the kernel shows them (`bpftool prog show`); at most 15 bytes.
pub mod programs {
    pub const CONNECT4: &str = "weft_connect4";
    pub const CONNECT6: &str = "weft_connect6";
    pub const SOCKOPS: &str = "weft_sockops";
    pub const SK_MSG: &str = "weft_sk_msg";
    pub const TC_POD_INGRESS: &str = "weft_tc_pod_in";
    pub const SK_LOOKUP: &str = "weft_sk_lookup";
}

/// The node-wide settings, the single entry of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The agent's address as pods reach it (their gateway), network byte order. Zero means
    /// "not ready": nothing is captured until the agent has written it.
    pub agent_ip: u32,
    /// The outbound capture port (15001), host byte order.
    pub outbound_port: u32,
    /// `SETTING_*` bits.
    pub flags: u32,
    /// The address the agent dials pods from, network byte order (`169.254.15.8` unless
    /// configured): a link-local address of the node's loopback that nothing else uses.
    /// The gate trusts a connection from it only when the packet also carries
    /// [`AGENT_MARK`]; the node's own address is trusted for nothing.
    pub dial_ip: u32,
}

/// The `SO_MARK` bit on every socket the agent dials a pod with. Setting a mark needs
/// CAP_NET_ADMIN, so a hostNetwork pod cannot forge it by binding the dial address. The bit
/// is one that kube-proxy (0x4000, 0x8000), Calico (0xffff0000) and Cilium (0x0f00) leave
/// alone.
pub const AGENT_MARK: u32 = 0x2000;

/// Put sockets whose two ends are on this node into the sockhash, and splice their bytes.
pub const SETTING_SPLICE: u32 = 1 << 0;
/// Leave connections between two enrolled local pods direct (spliced, not via the agent).
pub const SETTING_DIRECT_LOCAL: u32 = 1 << 1;

/// A value of `PODS`, keyed by the pod's IPv4 address (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    /// `POD_*` bits.
    pub flags: u32,
    /// The pod's node-side interface, 0 if unknown.
    pub ifindex: u32,
}

/// The pod is enrolled: its connections are captured.
pub const POD_ENROLLED: u32 = 1 << 0;
/// Policy lets local enrolled pods reach this pod directly, spliced in the kernel.
pub const POD_DIRECT_OK: u32 = 1 << 1;

/// An original destination: where the application meant to connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network byte order.
    pub ip: u32,
    /// Host byte order.
    pub port: u16,
    /// In `ORIG_BY_TUPLE`: 1 once the agent's end of the connection is established (the
    /// connection is in its accept queue), so the record must stay for the agent to consume.
    pub accepted: u16,
}

/// One end of a captured connection as the agent sees its peer: key of `ORIG_BY_TUPLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Network byte order.
    pub ip: u32,
    /// Host byte order.
    pub port: u32,
}

/// A socket, named from its own side: key of `SOCKS` and `NO_SPLICE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network byte order.
    pub local_ip: u32,
    /// Network byte order.
    pub remote_ip: u32,
    /// Host byte order.
    pub local_port: u32,
    /// Host byte order.
    pub remote_port: u32,
}

impl SockKey {
    /// The key of the socket at the other end of the same connection.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// Inbound enforcement mode of a pod's veth, value of `TC_MODE` keyed by ifindex.
/// PERMISSIVE (and no PeerAuthentication): everything passes; plaintext connections from
/// outside the mesh are counted.
pub const TC_MODE_ALLOW_ALL: u32 = 0;
/// STRICT mutual TLS: a new TCP connection (SYN) reaches the pod only from the node agent
/// (which terminates the tunnel) or from an enrolled pod of this node.
pub const TC_MODE_STRICT: u32 = 1;
/// A bit of a `TC_PORT_MODE` value: the kubelet probes this port (a liveness, readiness or
/// startup probe over the network). A new connection to it that a process of the node
/// opened (a local socket, not a forwarded packet) passes even under STRICT, and is recorded
/// in `PROBES` so that sk_lookup lets it reach the container rather than the plaintext
/// inbound: probes bypass the agent and its policy, as they bypass ztunnel in Istio.
pub const TC_PORT_PROBE: u32 = 1 << 8;

/// A probe connection between the tc gate and sk_lookup: key of `PROBES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// The node process's address and the pod's, network byte order.
    pub source_ip: u32,
    pub pod_ip: u32,
    /// Host byte order.
    pub source_port: u16,
    pub pod_port: u16,
}

/// The key of `TC_PORT_MODE`: a pod veth's ifindex and a destination port (host order) of
/// the pod, whose mode overrides the veth's `TC_MODE` (PeerAuthentication `portLevelMtls`).
#[inline(always)]
pub const fn port_mode_key(ifindex: u32, port: u16) -> u64 {
    ((ifindex as u64) << 16) | port as u64
}

/// Indexes into the per-CPU `COUNTERS` array. User space sums the CPUs.
pub mod counter {
    /// connect() calls seen from enrolled pods.
    pub const CONNECT_SEEN: u32 = 0;
    /// Connections sent to the agent's outbound listener.
    pub const REDIRECTED: u32 = 1;
    /// Connections left direct to a local enrolled pod (spliced).
    pub const DIRECT_LOCAL: u32 = 2;
    /// Connections left alone: loopback, the agent, excluded ports or CIDRs.
    pub const BYPASSED: u32 = 3;
    /// Redirected connections that got established (their original destination recorded).
    pub const ESTABLISHED: u32 = 4;
    /// Sockets added to the sockhash.
    pub const SOCK_ADDED: u32 = 5;
    /// Sockets the sockhash refused (full, or the kernel said no).
    pub const SOCK_ADD_FAILED: u32 = 6;
    /// sendmsg() calls redirected to the peer socket, and their bytes.
    pub const SPLICED_MSGS: u32 = 7;
    pub const SPLICED_BYTES: u32 = 8;
    /// sendmsg() calls passed to TCP (peer not spliceable), and their bytes.
    pub const PASSED_MSGS: u32 = 9;
    pub const PASSED_BYTES: u32 = 10;
    /// Packets the tc program saw going to pods, and those it dropped.
    pub const TC_PACKETS: u32 = 11;
    pub const TC_DROPPED: u32 = 12;
    /// Plaintext connections from outside the mesh let into PERMISSIVE pods.
    pub const TC_PLAINTEXT: u32 = 13;
    /// Plaintext connections handed to the agent's inbound listener (:15006) by sk_lookup,
    /// and those dropped because the pod's listener was not there (the agent restarting).
    pub const PLAINTEXT_STEERED: u32 = 14;
    pub const PLAINTEXT_NO_LISTENER: u32 = 15;
    /// connect() calls failed closed: native IPv6 (not captured), or a connection whose
    /// original destination could not be recorded.
    pub const CONNECT_REFUSED: u32 = 16;
    /// Kubelet probes (node processes to a probe port) let past the gate to the container.
    pub const TC_PROBES: u32 = 17;
    /// Connections from the agent's dial address without the agent's mark: a node process
    /// posing as the agent. Dropped whatever the pod's mode.
    pub const TC_FORGED: u32 = 18;
    /// Captured connections whose original destination could not be recorded by 4-tuple
    /// (`ORIG_BY_TUPLE` full): the agent closes them.
    pub const ORIG_RECORD_FAILED: u32 = 19;
    /// The array's size.
    pub const COUNT: u32 = 20;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], contain only integers, and have explicit padding
    // fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::PodEntry {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ProbeKey {}
}
