//! Shared by the agent and the waypoint.

/// The Kubernetes objects Weft reads, as one typed model that every source feeds.
pub mod config;

/// The compiled state: the configuration indexed and resolved for the data path, with a
/// finding for every case where it does not do what it says.
pub mod state;

/// The HTTP server behind the admin, metrics and readiness ports.
pub mod admin;

/// SPIFFE workload identities: certificates, keys, trust bundles and the TLS configurations
/// that check them.
pub mod identity;

/// The certificate authority (`weft-agent ca`): its gRPC service and client.
pub mod ca;

/// Istio's authorization and peer-authentication semantics, evaluated.
pub mod policy;

/// HBONE: HTTP/2 CONNECT over mutual TLS, the tunnel between agents and waypoints.
pub mod hbone;

/// An HTTP/2 connection that cannot be served, answered stream by stream with a status.
pub mod refusal;

/// A relayed HTTP/2 connection whose tunnel breaks: its open calls answered with a status.
pub mod relayed;

/// Passive health: a peer whose connection failed is avoided for a back-off.
pub mod reachability;

/// `weft-agent waypoint generate`: a waypoint's Kubernetes objects.
pub mod waypoint_manifests;

/// `weft-agent analyze`: the findings and rejections, one line each.
pub mod analyze;

/// `weft-agent describe`: what the mesh makes of a pod or a Service.
pub mod describe;

#[cfg(test)]
mod test_http;

/// The process's allocator, by the calling binary's features: `mimalloc`, else `jemalloc`
/// (a background thread returns pages unused for a second to the system, and two arenas,
/// one per worker thread on these machines, where jemalloc's default is four per core),
/// else the system's. The binary depends on the allocator crates itself.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[cfg(feature = "mimalloc")]
        #[global_allocator]
        static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

        #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
        #[global_allocator]
        static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

        #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static MALLOC_CONF: &[u8; 70] =
            b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";

        /// Returns the pages freed so far to the system at once (jemalloc's
        /// `arena.<all>.purge`), rather than within its decay time: for after a one-off
        /// burst, such as loading the eBPF object at start. A no-op with other allocators.
        #[allow(dead_code)]
        fn release_freed_memory() {
            #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
            // SAFETY: a NUL-terminated control name; the purge control reads and writes
            // nothing (all four pointers null, length 0), as jemalloc's mallctl(3) says.
            unsafe {
                tikv_jemalloc_sys::mallctl(
                    c"arena.4096.purge".as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                );
            }
        }
    };
}
