//! The agent's admin (:15000) and metrics (:15020) endpoints.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

use prometheus_client::registry::Registry;
use serde::Serialize;
use weft_mesh::admin::{Handler, Reply, metrics_reply};

use crate::redirect::{PodStatus, SharedMaps};

/// What /config_dump shows; the reconcile loop replaces it after each pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dump {
    pub node: String,
    pub agent_ip: Option<Ipv4Addr>,
    pub pods: Vec<PodStatus>,
    pub programs: BTreeMap<String, u32>,
    pub config_errors: Vec<String>,
    /// The compiled configuration's findings, one line each, as `analyze` prints them.
    pub findings: Vec<String>,
}

#[derive(Serialize)]
struct DumpWithCounters<'a> {
    #[serde(flatten)]
    dump: &'a Dump,
    ebpf_counters: BTreeMap<&'static str, u64>,
    orig_records: usize,
}

pub fn admin_handler(dump: Arc<RwLock<Dump>>, maps: SharedMaps) -> Handler {
    Arc::new(move |path| match path {
        "/healthz" | "/healthz/ready" => Reply::text(200, "ok\n"),
        "/config_dump" => match dump.read() {
            Ok(dump) => Reply::json(&DumpWithCounters {
                dump: &dump,
                ebpf_counters: maps.counters(),
                orig_records: maps.orig_records(),
            }),
            Err(_) => Reply::text(500, "state lock poisoned\n"),
        },
        _ => Reply::not_found(),
    })
}

pub fn metrics_handler(registry: Arc<Registry>) -> Handler {
    Arc::new(move |path| match path {
        "/metrics" | "/stats/prometheus" => metrics_reply(&registry),
        _ => Reply::not_found(),
    })
}
