//! End-to-end: what the waypoint does per call beyond balancing: L7 AuthorizationPolicy,
//! local rate limits, Istio's request metrics (checked against the PrometheusRule in
//! deploy/), the JSON access log, trace propagation, and gRPC health on :15021. Real
//! agents, a real CA, grpcio and tonic clients and servers in the lab. Needs root.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_lab::{Guarded, Lab, LabSpec, ServicePort, ServiceSpec};

const WAYPOINT: &str = "waypoint";
const NS: &str = "shop";
const USERS: &str = "10.96.0.20:50051";
const SLOW: &str = "10.96.0.21:50051";
const GONE: &str = "10.96.0.22:50051";
const GATEWAY_SA: &str = "api-gateway";
const GET_USER: &str = "/user.UserService/GetUser";
const LIST_USERS: &str = "/user.UserService/ListUsers";

fn service(name: &str, ip: [u8; 4], app: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        namespace: NS.into(),
        cluster_ip: ip.into(),
        selector: vec![("app".into(), app.into())],
        ports: vec![ServicePort {
            name: "grpc-api".into(),
            port: 50051,
            target_port: 50051,
            app_protocol: Some("grpc".into()),
        }],
        labels: [("weft.dev/use-waypoint".to_string(), WAYPOINT.to_string())].into(),
    }
}

/// Two nodes. On node 1: the waypoint, the API gateway and a batch job (two identities),
/// and backend u1; on node 2: backend u2, a slow backend, a pod with nothing listening, and
/// outside the mesh an OTLP collector, which the waypoint exports its spans to.
fn lab(name: &str, waypoint_args: &[&str]) -> Result<Lab> {
    let spec = LabSpec::new(name, 2)
        .with_namespace(NS, true)
        .with_namespace("observability", false)
        .with_pod("collector", "observability", 2, &[])
        .with_waypoint(WAYPOINT, NS, 1)
        .with_pod_as("gateway", NS, 1, GATEWAY_SA)
        .with_pod_as("batch", NS, 1, "batch")
        .with_pod("u1", NS, 1, &[("app", "user-service")])
        .with_pod("u2", NS, 2, &[("app", "user-service")])
        .with_pod("slow", NS, 2, &[("app", "slow")])
        .with_pod("silent", NS, 2, &[("app", "gone")])
        .with_service(service("user-service", [10, 96, 0, 20], "user-service"))
        .with_service(service("slow", [10, 96, 0, 21], "slow"))
        .with_service(service("gone", [10, 96, 0, 22], "gone"));
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    let otlp = format!("http://{}:4317", lab.pod("collector").ip);
    let mut args = vec!["--otlp-endpoint", &otlp];
    args.extend_from_slice(waypoint_args);
    lab.start_waypoint(WAYPOINT, &args)?;
    Ok(lab)
}

fn python() -> Result<String> {
    std::env::var("WEFT_PYTHON").context(
        "WEFT_PYTHON is not set: run the tests with `cargo xtask test`, which installs grpcio",
    )
}

fn script(name: &str) -> String {
    format!("{}/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The grpcio user service in u1 and u2.
fn user_backends(lab: &Lab) -> Result<Vec<Guarded>> {
    let (python, server) = (python()?, script("user_service.py"));
    ["u1", "u2"]
        .iter()
        .map(|pod| lab.serve(pod, &python, &[&server, "--listen", "0.0.0.0:50051"]))
        .collect()
}

/// `calls` grpcio calls of `method` from `pod`, with metadata `headers`.
fn grpcio(lab: &Lab, pod: &str, method: &str, calls: u32, headers: &[&str]) -> Result<Value> {
    let client = script("user_client.py");
    let calls = calls.to_string();
    let mut args = vec![
        client.as_str(),
        "--target",
        USERS,
        "--method",
        method,
        "--calls",
        &calls,
    ];
    for h in headers {
        args.extend_from_slice(&["--header", h]);
    }
    lab.run_json(pod, &python()?, &args, Duration::from_secs(60))
}

fn status(report: &Value, name: &str) -> u64 {
    report["by_status"][name].as_u64().unwrap_or(0)
}

/// A gRPC health probe (tonic) from `pod` to `addr`.
fn probe(lab: &Lab, pod: &str, addr: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["--addr", addr];
    args.extend_from_slice(extra);
    lab.run_json(pod, "grpc-health-probe", &args, Duration::from_secs(20))
}

fn apply(lab: &Lab, file: &str, yaml: &str) -> Result<()> {
    lab.write_manifest(file, yaml)?;
    std::thread::sleep(Duration::from_millis(1500));
    Ok(())
}

fn scrape(lab: &Lab) -> Result<String> {
    let (code, text) = lab.waypoint_get(WAYPOINT, 15020, "/metrics")?;
    if code != 200 {
        bail!("waypoint /metrics answered {code}");
    }
    Ok(text)
}

/// The sum of the samples of `name` whose label sets contain every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    weft_lab::sum_series(text, name, &labels)
}

const SEED_POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: user-service-authz
  namespace: shop
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/api-gateway"]
    to:
    - operation:
        methods: ["POST"]
        paths: ["/user.UserService/GetUser", "/user.UserService/ListUsers"]
  - to:
    - operation:
        paths: ["/grpc.health.v1.Health/*"]
"#;

#[test]
fn authorization_health_metrics_and_tracing() -> Result<()> {
    let lab = lab("wl-l7-authz", &[])?;
    let _servers = user_backends(&lab)?;
    let _collector = lab.serve("collector", "otlp-sink", &["--listen", "0.0.0.0:4317"])?;
    apply(&lab, "authz.yaml", SEED_POLICY)?;

    // The seed's policy: only the API gateway may call GetUser and ListUsers.
    let get = grpcio(&lab, "gateway", GET_USER, 20, &[])?;
    assert_eq!(status(&get, "OK"), 20, "gateway GetUser: {get}");
    let pods: BTreeSet<&str> = get["replies"]
        .as_array()
        .context("replies")?
        .iter()
        .filter_map(|r| r["pod"].as_str())
        .collect();
    assert_eq!(pods.len(), 2, "calls reach both backends: {pods:?}");
    let list = grpcio(&lab, "gateway", LIST_USERS, 10, &[])?;
    assert_eq!(status(&list, "OK"), 10, "gateway ListUsers: {list}");
    let delete = grpcio(&lab, "gateway", "/user.UserService/DeleteUser", 5, &[])?;
    assert_eq!(status(&delete, "PERMISSION_DENIED"), 5, "{delete}");
    let batch = grpcio(&lab, "batch", GET_USER, 7, &[])?;
    assert_eq!(
        status(&batch, "PERMISSION_DENIED"),
        7,
        "batch GetUser: {batch}"
    );
    assert!(
        batch["details"][0]
            .as_str()
            .is_some_and(|d| d.contains("RBAC: access denied")),
        "{batch}"
    );

    // Health checks pass from anyone, through the waypoint to the backend, untouched: the
    // backend's own answer (NOT_FOUND for a service it does not know) comes back.
    assert_eq!(probe(&lab, "batch", USERS, &[])?["status"], "SERVING");
    let known = probe(&lab, "batch", USERS, &["--service", "user.UserService"])?;
    assert_eq!(known["status"], "SERVING", "{known}");
    let unknown = probe(&lab, "batch", USERS, &["--service", "nope"])?;
    assert_eq!(unknown["error"], "NotFound", "{unknown}");
    assert!(
        unknown["message"].as_str().unwrap_or("").contains("nope"),
        "{unknown}"
    );

    // DENY wins over ALLOW; AUDIT only records.
    apply(
        &lab,
        "deny.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-listing, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: user-service}]
  action: DENY
  rules: [{to: [{operation: {paths: ["*/ListUsers"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-reads, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/user.UserService/Get*"]}}]}]
"#,
    )?;
    let list = grpcio(&lab, "gateway", LIST_USERS, 4, &[])?;
    assert_eq!(status(&list, "PERMISSION_DENIED"), 4, "{list}");
    assert!(
        list["details"][0]
            .as_str()
            .unwrap_or("")
            .contains("shop/no-listing"),
        "{list}"
    );
    let get = grpcio(&lab, "gateway", GET_USER, 6, &[])?;
    assert_eq!(status(&get, "OK"), 6, "AUDIT does not block: {get}");

    // A client's traceparent reaches the backend with the same trace id; the waypoint's
    // span is the backend's parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("traceparent=00-{trace}-00f067aa0ba902b7-01");
    let traced = grpcio(&lab, "gateway", GET_USER, 1, &[&sent, "tracestate=k=v"])?;
    let seen = traced["replies"][0]["trace"]["traceparent"]
        .as_str()
        .with_context(|| format!("the backend saw no traceparent: {traced}"))?;
    let fields: Vec<&str> = seen.split('-').collect();
    assert_eq!(fields.len(), 4, "{seen}");
    assert_eq!(fields[1], trace, "same trace id: {seen}");
    assert_ne!(
        fields[2], "00f067aa0ba902b7",
        "the waypoint's span is the parent"
    );
    assert_eq!(fields[3], "01", "still sampled");
    assert_eq!(traced["replies"][0]["trace"]["tracestate"], "k=v");
    // The waypoint's span reaches the OTLP collector: the client's trace, the client's span
    // as its parent, and the span id the backend saw as its parent.
    let span = exported_span(&lab, trace)?;
    assert_eq!(span["parent_span_id"], "00f067aa0ba902b7", "{span}");
    assert_eq!(span["span_id"], fields[2], "{span}");
    assert_eq!(span["name"], GET_USER, "{span}");
    assert_eq!(span["service"], "waypoint.shop", "{span}");
    assert_eq!(span["attributes"]["rpc.grpc.status_code"], 0, "{span}");

    // Metrics: counts per grpc_response_status, and the denials.
    let text = scrape(&lab)?;
    let waypoint = [("reporter", "waypoint")];
    let gateway = "spiffe://cluster.local/ns/shop/sa/api-gateway";
    let ok = metric(
        &text,
        "istio_requests_total",
        &[
            waypoint[0],
            ("source_principal", gateway),
            ("grpc_response_status", "0"),
            ("destination_service", "user-service.shop.svc.cluster.local"),
            ("request_protocol", "grpc"),
        ],
    );
    assert_eq!(ok, 20.0 + 10.0 + 6.0 + 1.0, "OK calls of the gateway");
    let denied_gateway = metric(
        &text,
        "istio_requests_total",
        &[("source_principal", gateway), ("grpc_response_status", "7")],
    );
    assert_eq!(denied_gateway, 5.0 + 4.0);
    let denied_batch = metric(
        &text,
        "istio_requests_total",
        &[
            (
                "source_principal",
                "spiffe://cluster.local/ns/shop/sa/batch",
            ),
            ("grpc_response_status", "7"),
            ("source_workload", "batch"),
        ],
    );
    assert_eq!(denied_batch, 7.0);
    assert_eq!(
        metric(
            &text,
            "weft_waypoint_authz_denied_total",
            &[("policy", "shop/no-listing")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "weft_waypoint_authz_audited_total",
            &[("policy", "shop/audit-reads")]
        ),
        6.0 + 1.0
    );
    let count = metric(
        &text,
        "istio_request_duration_milliseconds_count",
        &[("source_principal", gateway), ("grpc_response_status", "0")],
    );
    assert_eq!(count, ok, "one duration per call");
    alert_rules_use_exported_series(&text)?;

    // gRPC health on :15021, for Kubernetes probes: the waypoint's and an agent's.
    let wp = probe(&lab, WAYPOINT, "127.0.0.1:15021", &[])?;
    assert_eq!(wp["status"], "SERVING", "{wp}");
    let named = probe(
        &lab,
        WAYPOINT,
        "127.0.0.1:15021",
        &["--service", "weft-waypoint"],
    )?;
    assert_eq!(named["status"], "SERVING", "{named}");
    let watch = probe(&lab, WAYPOINT, "127.0.0.1:15021", &["--watch", "1"])?;
    assert_eq!(watch["updates"][0], "SERVING", "{watch}");
    let agent = lab.run_json_in_node(
        1,
        "grpc-health-probe",
        &["--addr", "127.0.0.1:15021", "--service", "weft-agent"],
        Duration::from_secs(20),
    )?;
    assert_eq!(agent["status"], "SERVING", "{agent}");
    let (code, _) = lab.agent_get(2, 15021, "/healthz/ready")?;
    assert_eq!(code, 200);
    lab.down()
}

/// The span of trace `trace` that the collector printed, waiting for the exporter's batch.
fn exported_span(lab: &Lab, trace: &str) -> Result<Value> {
    let log = lab.dir.join("logs").join("collector-otlp-sink-listen.log");
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["span"]["trace_id"] == trace);
        if let Some(v) = found {
            return Ok(v["span"].clone());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "no span of trace {trace} reached the collector: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    )
}

/// Every series and label the alert expressions in deploy/ use is among `scraped`: the
/// expressions parse as PromQL, and select only what the waypoint exports.
fn alert_rules_use_exported_series(scraped: &str) -> Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/observability/prometheus-rule.yaml"
    );
    let rule: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    let mut exprs = Vec::new();
    for group in rule["spec"]["groups"].as_sequence().context("groups")? {
        for r in group["rules"].as_sequence().context("rules")? {
            exprs.push(r["expr"].as_str().context("expr")?.to_string());
        }
    }
    assert_eq!(exprs.len(), 2, "the seed's two alerts");
    for expr in exprs {
        let ast =
            promql_parser::parser::parse(&expr).map_err(|e| anyhow::anyhow!("{expr}: {e}"))?;
        let mut selectors = Vec::new();
        let mut grouping = Vec::new();
        collect(&ast, &mut selectors, &mut grouping);
        assert!(!selectors.is_empty(), "{expr}");
        for (name, labels) in selectors {
            let series: Vec<&str> = scraped
                .lines()
                .filter(|l| l.split(['{', ' ']).next() == Some(name.as_str()))
                .collect();
            assert!(!series.is_empty(), "{name} (in {expr}) is not exported");
            for label in labels.iter().chain(&grouping) {
                assert!(
                    series.iter().any(|s| s.contains(&format!("{label}=\""))),
                    "label {label} of {name} (in {expr}) is not exported"
                );
            }
        }
    }
    Ok(())
}

/// The vector selectors (metric name, label names) and grouping labels of an expression.
fn collect(
    expr: &promql_parser::parser::Expr,
    selectors: &mut Vec<(String, Vec<String>)>,
    grouping: &mut Vec<String>,
) {
    use promql_parser::parser::{Expr, LabelModifier};
    match expr {
        Expr::VectorSelector(v) => selectors.push((
            v.name.clone().unwrap_or_default(),
            v.matchers.matchers.iter().map(|m| m.name.clone()).collect(),
        )),
        Expr::MatrixSelector(m) => {
            collect(&Expr::VectorSelector(m.vs.clone()), selectors, grouping)
        }
        Expr::Aggregate(a) => {
            if let Some(LabelModifier::Include(labels)) = &a.modifier {
                grouping.extend(labels.labels.iter().cloned());
            }
            collect(&a.expr, selectors, grouping);
        }
        Expr::Binary(b) => {
            collect(&b.lhs, selectors, grouping);
            collect(&b.rhs, selectors, grouping);
        }
        Expr::Paren(p) => collect(&p.expr, selectors, grouping),
        Expr::Call(c) => c
            .args
            .args
            .iter()
            .for_each(|a| collect(a, selectors, grouping)),
        Expr::Unary(u) => collect(&u.expr, selectors, grouping),
        Expr::Subquery(s) => collect(&s.expr, selectors, grouping),
        _ => {}
    }
}

#[test]
fn rate_limit_and_access_log_flags() -> Result<()> {
    let dir = std::env::temp_dir().join("weft-l7-access");
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("access.log");
    let _ = std::fs::remove_file(&log_path);
    let log_arg = log_path.display().to_string();
    let lab = lab("wl-l7-limit", &["--access-log", &log_arg])?;
    let _servers = user_backends(&lab)?;
    let _slow = lab.serve(
        "slow",
        "uuid-server",
        &["--listen", "0.0.0.0:50051", "--delay-ms", "2000"],
    )?;
    apply(
        &lab,
        "limits.yaml",
        r#"
apiVersion: weft.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: list-limit, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: user-service}]
  methods:
  - path: /user.UserService/ListUsers
    tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 3s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: shop}
spec:
  hosts: [slow]
  http:
  - timeout: 300ms
    retries: {attempts: 0}
    route: [{destination: {host: slow}}]
"#,
    )?;

    // A burst: maxTokens pass, the rest are refused with the header; GetUser is not limited.
    let burst = grpcio(&lab, "gateway", LIST_USERS, 8, &[])?;
    assert_eq!(status(&burst, "OK"), 5, "{burst}");
    assert_eq!(status(&burst, "RESOURCE_EXHAUSTED"), 3, "{burst}");
    assert_eq!(burst["rate_limit_headers"], 3, "{burst}");
    let other = grpcio(&lab, "gateway", GET_USER, 8, &[])?;
    assert_eq!(status(&other, "OK"), 8, "{other}");
    // After fillInterval the bucket is full again.
    std::thread::sleep(Duration::from_millis(3200));
    let again = grpcio(&lab, "gateway", LIST_USERS, 5, &[])?;
    assert_eq!(status(&again, "OK"), 5, "recovered: {again}");
    let text = scrape(&lab)?;
    assert_eq!(
        metric(
            &text,
            "istio_requests_total",
            &[("response_flags", "RL"), ("grpc_response_status", "8")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "weft_waypoint_rate_limited_total",
            &[("policy", "shop/list-limit")]
        ),
        3.0
    );

    // A timeout (UT) and a refused upstream (UF).
    let url = |t: &str| format!("http://{t}");
    let (slow, gone) = (url(SLOW), url(GONE));
    lab.run_json(
        "gateway",
        "uuid-client",
        &["--connect", &slow, "--calls", "2", "--allow-errors"],
        Duration::from_secs(60),
    )?;
    lab.run_json(
        "gateway",
        "uuid-client",
        &["--connect", &gone, "--calls", "2", "--allow-errors"],
        Duration::from_secs(60),
    )?;
    std::thread::sleep(Duration::from_millis(500));

    let text = std::fs::read_to_string(&log_path)?;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<_>>()?;
    assert_eq!(lines.len(), 8 + 8 + 5 + 2 + 2, "one line per call");
    for line in &lines {
        for key in [
            "protocol",
            "method",
            "path",
            "response_code",
            "grpc_status",
            "duration_ms",
            "upstream_host",
            "response_flags",
            "source_principal",
            "destination_principal",
        ] {
            assert!(line.get(key).is_some(), "{key} missing: {line}");
        }
    }
    let with = |service: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["destination_service"] == service)
            .collect()
    };
    let limited: Vec<_> = lines
        .iter()
        .filter(|l| l["response_flags"] == "RL")
        .collect();
    assert_eq!(limited.len(), 3);
    assert!(
        limited
            .iter()
            .all(|l| l["grpc_status"] == 8 && l["path"] == LIST_USERS)
    );
    let ok = &with("user-service.shop.svc.cluster.local")[0];
    assert_eq!(ok["protocol"], "gRPC");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["grpc_status"], 0);
    assert_eq!(
        ok["source_principal"],
        "spiffe://cluster.local/ns/shop/sa/api-gateway"
    );
    assert!(
        ok["upstream_host"]
            .as_str()
            .is_some_and(|h| h.ends_with(":50051")),
        "{ok}"
    );
    assert!(
        ok["destination_principal"]
            .as_str()
            .is_some_and(|p| p.starts_with("spiffe://cluster.local/ns/shop/sa/")),
        "{ok}"
    );
    let timed_out = with("slow.shop.svc.cluster.local");
    assert_eq!(timed_out.len(), 2);
    for l in timed_out {
        assert!(
            l["response_flags"].as_str().unwrap_or("").contains("UT"),
            "{l}"
        );
        assert_eq!(l["grpc_status"], 4, "{l}");
        let ms = l["duration_ms"].as_f64().unwrap_or(0.0);
        assert!(
            (250.0..1500.0).contains(&ms),
            "timed out at the route timeout: {l}"
        );
    }
    let refused = with("gone.shop.svc.cluster.local");
    assert_eq!(refused.len(), 2);
    for l in refused {
        assert!(
            l["response_flags"].as_str().unwrap_or("").contains("UF"),
            "{l}"
        );
        assert_eq!(l["grpc_status"], 14, "{l}");
    }
    lab.down()
}

/// `calls` grpcio calls of `method` from `pod` to `target`.
fn grpcio_to(lab: &Lab, pod: &str, target: &str, method: &str, calls: u32) -> Result<Value> {
    let (client, calls) = (script("user_client.py"), calls.to_string());
    let args = [
        client.as_str(),
        "--target",
        target,
        "--method",
        method,
        "--calls",
        &calls,
    ];
    lab.run_json(pod, &python()?, &args, Duration::from_secs(60))
}

/// Seed 000's AuthorizationPolicy, pasted unchanged: a `selector` on the backends and rules
/// with paths and methods, which the backends' node agents cannot see. Behind a waypoint it
/// is delegated to the waypoint and enforced per call against the caller's identity, both
/// when it is applied before the first call and after calls have pooled the waypoint's
/// connections; traffic that bypasses the waypoint still meets the L4 evaluation, which
/// fails closed. A refusal by the destination agent reaches the caller as
/// PERMISSION_DENIED naming the policy, never as UNAVAILABLE.
#[test]
fn seed_selector_policy_is_enforced_per_call_by_the_waypoint() -> Result<()> {
    const SEED_SERVICE: &str = "10.96.0.30:50051";
    const GET: &str = "/mypackage.MyService/GetUser";
    const LIST: &str = "/mypackage.MyService/ListUsers";
    const CREATE: &str = "/mypackage.MyService/CreateUser";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";
    let spec = LabSpec::new("wl-l7-seed-authz", 2)
        .with_namespace("default", true)
        .with_waypoint(WAYPOINT, "default", 1)
        .with_pod_as("gateway", "default", 1, GATEWAY_SA)
        .with_pod_as("batch", "default", 1, "batch")
        .with_pod("s1", "default", 1, &[("app", "grpc-server")])
        .with_pod("s2", "default", 2, &[("app", "grpc-server")])
        .with_service(ServiceSpec {
            namespace: "default".into(),
            labels: [("istio.io/use-waypoint".to_string(), WAYPOINT.to_string())].into(),
            ..service("grpc-server", [10, 96, 0, 30], "grpc-server")
        });
    let mut lab = Lab::up(spec)?;
    lab.start_agents()?;
    lab.start_waypoint(WAYPOINT, &[])?;
    let (python, server) = (python()?, script("user_service.py"));
    let _servers: Vec<Guarded> = ["s1", "s2"]
        .iter()
        .map(|pod| {
            lab.serve(
                pod,
                &python,
                &[
                    &server,
                    "--listen",
                    "0.0.0.0:50051",
                    "--service",
                    "mypackage.MyService",
                ],
            )
        })
        .collect::<Result<_>>()?;
    let policy = weft_lab::seed("000/05-istio-authz-policy.yaml")?;

    let expect = |lab: &Lab, when: &str| -> Result<()> {
        let get = grpcio_to(lab, "gateway", SEED_SERVICE, GET, 10)?;
        assert_eq!(status(&get, "OK"), 10, "{when}: gateway GetUser: {get}");
        let list = grpcio_to(lab, "gateway", SEED_SERVICE, LIST, 4)?;
        assert_eq!(status(&list, "OK"), 4, "{when}: gateway ListUsers: {list}");
        let create = grpcio_to(lab, "gateway", SEED_SERVICE, CREATE, 3)?;
        assert_eq!(
            status(&create, "PERMISSION_DENIED"),
            3,
            "{when}: gateway CreateUser: {create}"
        );
        let other = grpcio_to(lab, "batch", SEED_SERVICE, GET, 3)?;
        assert_eq!(
            status(&other, "PERMISSION_DENIED"),
            3,
            "{when}: batch GetUser: {other}"
        );
        assert!(
            other["details"][0]
                .as_str()
                .is_some_and(|d| d.contains("RBAC: access denied")),
            "{other}"
        );
        // Health checks from any mesh principal pass, and reach the backend.
        let health = grpcio_to(lab, "batch", SEED_SERVICE, HEALTH, 3)?;
        assert_eq!(status(&health, "OK"), 3, "{when}: batch health: {health}");
        Ok(())
    };

    // Applied before the first call.
    apply(&lab, "seed-authz.yaml", &policy)?;
    expect(&lab, "applied before the first call")?;

    // Removed: everyone gets through, and the waypoint's upstream connections are pooled.
    lab.write_manifest("seed-authz.yaml", "")?;
    std::thread::sleep(Duration::from_millis(1500));
    let open = grpcio_to(&lab, "batch", SEED_SERVICE, CREATE, 5)?;
    assert_eq!(status(&open, "OK"), 5, "no policy: {open}");
    // Applied again, after calls have pooled the connections: it takes effect per call.
    apply(&lab, "seed-authz.yaml", &policy)?;
    expect(&lab, "applied after calls pooled connections")?;

    // Around the waypoint, straight to a backend's address: the agent's L4 evaluation
    // cannot match the L7 rules, and refuses.
    let s1 = format!("{}:50051", lab.pod("s1").ip);
    let bypass = grpcio_to(&lab, "gateway", &s1, GET, 2)?;
    assert_eq!(status(&bypass, "OK"), 0, "bypassing the waypoint: {bypass}");

    // A refusal by the destination's node agent (an L4 policy against the waypoint's own
    // identity) is PERMISSION_DENIED naming the policy, and is not retried.
    apply(
        &lab,
        "deny-waypoint.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-waypoint, namespace: default}
spec:
  selector: {matchLabels: {app: grpc-server}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/waypoint"]}}]}]
"#,
    )?;
    let retries = |lab: &Lab| -> Result<f64> {
        Ok(metric(&scrape(lab)?, "weft_waypoint_retries_total", &[]))
    };
    let before = retries(&lab)?;
    let refused = grpcio_to(&lab, "gateway", SEED_SERVICE, GET, 3)?;
    assert_eq!(status(&refused, "PERMISSION_DENIED"), 3, "{refused}");
    assert!(
        refused["details"][0]
            .as_str()
            .is_some_and(|d| d.contains("default/no-waypoint")),
        "the policy is named: {refused}"
    );
    assert_eq!(
        retries(&lab)? - before,
        0.0,
        "a policy refusal is not retried"
    );
    lab.down()
}

/// Issue 13, item 12: a path is matched as the backend will read it. An ALLOW for
/// `/grpc.health.v1.Health/*` must not admit `/grpc.health.v1.Health/../user.UserService/...`,
/// in any spelling; the backend receives the normalized path.
#[test]
fn dot_segments_and_escapes_do_not_walk_past_a_path_rule() -> Result<()> {
    let lab = lab("wl-l7-paths", &[])?;
    let _backends = user_backends(&lab)?;
    apply(&lab, "authz.yaml", SEED_POLICY)?;
    // The batch job is allowed the health checks only.
    let health = grpcio(&lab, "batch", "/grpc.health.v1.Health/Check", 2, &[])?;
    assert_eq!(status(&health, "OK"), 2, "{health}");
    for spelling in [
        "/grpc.health.v1.Health/../user.UserService/CreateUser",
        "/grpc.health.v1.Health/%2E%2E/user.UserService/CreateUser",
        "/grpc.health.v1.Health/x/../../user.UserService/CreateUser",
        "//grpc.health.v1.Health/..//user.UserService/CreateUser",
    ] {
        let report = grpcio(&lab, "batch", spelling, 2, &[])?;
        assert_eq!(
            status(&report, "PERMISSION_DENIED"),
            2,
            "{spelling}: {report}"
        );
    }
    // The gateway may call GetUser, however it spells it, and the backend sees the
    // normalized method.
    let get = grpcio(&lab, "gateway", "/user.UserService/./%47etUser", 2, &[])?;
    assert_eq!(status(&get, "OK"), 2, "{get}");
    assert_eq!(get["replies"][0]["method"], "GetUser", "{get}");
    Ok(())
}
