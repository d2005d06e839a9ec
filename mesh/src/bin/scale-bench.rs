//! `cargo xtask bench scale`: the compiled state at cluster scale, no root needed. Builds a
//! configuration of 10,000 pods, 5,000 Services, 2,000 AuthorizationPolicies and 1,000
//! VirtualService/DestinationRule pairs, and prints one flat JSON object:
//!
//! - `compile_ms`: one full compile (median of 5);
//! - `update_ms`: one Pod changed, until the new state is ready (median of 5);
//! - `model_clone_ms`: one copy of the model (persistent maps: O(1));
//! - `state_rss_mb`: the process's resident memory with the model and the state in it;
//! - `resolve_ns`: one outbound decision ([`State::resolve`]) at 10k pods, and
//!   `resolve_ratio`, that figure over the same at 100 pods.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use weft_mesh::config::{Model, Object, parse_value};
use weft_mesh::state::State;

const NAMESPACES: usize = 100;

fn object(yaml: &str) -> Object {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("generated YAML parses");
    parse_value(value)
        .expect("generated object is valid")
        .expect("generated object is a kind Weft reads")
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// `pods` pods over [`NAMESPACES`] namespaces and 20 nodes, a Service per two pods, a
/// policy per five pods and a VirtualService/DestinationRule pair per ten.
fn model(pods: usize) -> Model {
    let mut m = Model::default();
    let per_ns = pods.div_ceil(NAMESPACES);
    for n in 0..20 {
        m.insert(object(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.16.0.{}}}]}}\n",
            n + 1
        )));
    }
    for ns in 0..NAMESPACES {
        m.insert(object(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}}}\n"
        )));
    }
    for i in 0..pods {
        let (ns, k) = (i / per_ns, (i % per_ns) / 2);
        m.insert(object(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: app-{k}-{i}, namespace: ns-{ns}, uid: u{i}, labels: {{app: app-{k}, version: v{}}}}}\nspec: {{nodeName: node-{}, serviceAccountName: sa-{k}}}\nstatus: {{podIP: {}}}\n",
            i % 2,
            i % 20,
            pod_ip(i)
        )));
    }
    for s in 0..pods / 2 {
        let (ns, k) = ((s * 2) / per_ns, ((s * 2) % per_ns) / 2);
        m.insert(object(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: app-{k}, namespace: ns-{ns}}}\nspec: {{clusterIP: 10.96.{}.{}, selector: {{app: app-{k}}}, ports: [{{name: grpc, port: 50051}}]}}\n",
            s >> 8,
            s & 255
        )));
    }
    for p in 0..pods / 5 {
        let (ns, k) = ((p * 5) / per_ns, ((p * 5) % per_ns) / 2);
        m.insert(object(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{p}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: app-{k}}}}}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns-{ns}/sa/sa-{}]}}}}], to: [{{operation: {{ports: ['50051']}}}}]}}]\n",
            (k + 1) % (per_ns / 2).max(1)
        )));
    }
    for r in 0..pods / 10 {
        let (ns, k) = ((r * 10) / per_ns, ((r * 10) % per_ns) / 2);
        m.insert(object(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: app-{k}, namespace: ns-{ns}}}\nspec:\n  host: app-{k}\n  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}\n  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]\n"
        )));
        m.insert(object(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app-{k}, namespace: ns-{ns}}}\nspec:\n  hosts: [app-{k}]\n  http:\n  - match: [{{headers: {{x-canary: {{exact: 'true'}}}}}}]\n    route: [{{destination: {{host: app-{k}, subset: v1}}}}]\n  - route: [{{destination: {{host: app-{k}, subset: v0}}, weight: 90}}, {{destination: {{host: app-{k}, subset: v1}}, weight: 10}}]\n"
        )));
    }
    m
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Source/destination pairs over `pods` pods: half pod to Service, half pod to pod.
fn pairs(pods: usize) -> Vec<(IpAddr, IpAddr)> {
    let services = pods / 2;
    (0..4096)
        .map(|i| {
            let src = pod_ip((i * 7919) % pods);
            let dst = if i % 2 == 0 {
                let s = (i * 104_729) % services;
                IpAddr::from([10, 96, (s >> 8) as u8, (s & 255) as u8])
            } else {
                pod_ip((i * 15_485_863) % pods)
            };
            (src, dst)
        })
        .collect()
}

/// Nanoseconds per [`State::resolve`] over `pairs`, one run.
fn resolve_run(state: &State, pairs: &[(IpAddr, IpAddr)]) -> f64 {
    const CALLS: usize = 1_000_000;
    let started = Instant::now();
    for i in 0..CALLS {
        let (src, dst) = pairs[i % pairs.len()];
        black_box(state.resolve(black_box(src), black_box(dst)).waypoint);
    }
    started.elapsed().as_nanos() as f64 / CALLS as f64
}

/// Nanoseconds per resolve on the small and the large state, median of runs that
/// alternate between the two, so that the machine's noise falls on both alike.
fn resolve_ns(small: &State, large: &State, large_pods: usize) -> (f64, f64) {
    let (small_pairs, large_pairs) = (pairs(100), pairs(large_pods));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        a.push(resolve_run(small, &small_pairs));
        b.push(resolve_run(large, &large_pairs));
    }
    (median(a), median(b))
}

fn main() {
    let small = State::compile(model(100));
    let full = model(10_000);
    let compile: Vec<f64> = (0..5)
        .map(|_| {
            let m = full.clone();
            let started = Instant::now();
            black_box(State::compile(m));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let state = State::compile(full.clone());
    let rss = rss_mb();
    let (small_ns, large_ns) = resolve_ns(&small, &state, 10_000);

    // One Pod changed: what a source does with it, from the event to the new state (the
    // Kubernetes source's path: copy the persistent model, change the pod, update).
    let update: Vec<f64> = (0..5)
        .map(|round| {
            let (_, pod) = state
                .model()
                .pods
                .iter()
                .nth(round * 997)
                .expect("10k pods");
            let mut pod = pod.clone();
            pod.labels.insert("version".into(), format!("r{round}"));
            let started = Instant::now();
            let mut m = state.model().clone();
            let object = Object::Pod(pod);
            let key = object.key();
            m.insert(object);
            black_box(state.update(m, &[key]));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();

    let clone_ms = median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                black_box(state.model().clone());
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect(),
    );
    let figures = serde_json::json!({
        "model_clone_ms": clone_ms,
        "pods": 10_000,
        "services": state.model().services.len(),
        "authorization_policies": state.model().authorization_policies.len(),
        "virtual_services": state.model().virtual_services.len(),
        "destination_rules": state.model().destination_rules.len(),
        "compile_ms": median(compile),
        "update_ms": median(update),
        "state_rss_mb": rss,
        "resolve_ns": large_ns,
        "resolve_ns_100_pods": small_ns,
        "resolve_ratio": large_ns / small_ns,
    });
    println!("{figures}");
}
