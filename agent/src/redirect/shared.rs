//! The maps user space reads on the data path, shared with the outbound listener (original
//! destinations) and the metrics (event counters).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use weft_ebpf_common::{Endpoint, OrigDst, counter};

/// The maps user space reads on the data path, shared with the outbound listener and metrics.
#[derive(Clone)]
pub struct SharedMaps {
    pub(super) orig_by_tuple: Arc<Mutex<HashMap<MapData, Endpoint, OrigDst>>>,
    pub(super) counters: Arc<Mutex<PerCpuArray<MapData, u64>>>,
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

    /// How many original-destination records wait for the agent (or for their client to
    /// close), for /config_dump: a count that stays up means records are being left behind.
    pub fn orig_records(&self) -> usize {
        self.orig_by_tuple
            .lock()
            .map(|map| map.keys().filter(Result::is_ok).count())
            .unwrap_or(0)
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
            (counter::PLAINTEXT_STEERED, "plaintext_steered"),
            (counter::PLAINTEXT_NO_LISTENER, "plaintext_no_listener"),
            (counter::CONNECT_REFUSED, "connect_refused"),
            (counter::TC_PROBES, "tc_probes"),
            (counter::TC_FORGED, "tc_forged"),
            (counter::ORIG_RECORD_FAILED, "orig_record_failed"),
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
