//! Every document of the seeds (`../shared/seeds/`, the YAML Weft's users already have)
//! through parsing, compiling and `analyze`, with the verdict asserted for each: applied,
//! merged, reported (with which codes), skipped (a kind that is not the mesh's business), or
//! rejected (with which message).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::State;
use crate::config::parse::parse_documents;
use crate::config::{DirSource, Object};

fn seeds() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/seeds");
    assert!(
        dir.is_dir(),
        "the seeds are missing: expected them at {} (shared/ beside the project's root)",
        dir.display()
    );
    dir
}

/// `file#document` → verdict, for one seed directory.
fn verdicts(sub: &str) -> (BTreeMap<String, String>, String) {
    let dir = seeds().join(sub);
    let (model, rejected) = DirSource::new(&dir).reload();
    let state = State::compile(model);
    let mut out = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, parsed) in parse_documents(&text) {
            let verdict = match parsed {
                Err(err) => format!("rejected: {}", err.reason),
                Ok(None) => "skipped".to_string(),
                Ok(Some(object)) => {
                    let label = match &object {
                        Object::Unread(u) => u.label(),
                        other => other.key().to_string(),
                    };
                    let mut codes: Vec<&str> = state.findings_for(&label).map(|f| f.code).collect();
                    codes.sort();
                    codes.dedup();
                    if codes.is_empty() {
                        "applied".to_string()
                    } else {
                        codes.join(" ")
                    }
                }
            };
            out.insert(format!("{name}#{i}"), verdict);
        }
    }
    let (report, _) = crate::analyze::report(&state, &rejected);
    (out, report)
}

fn check(sub: &str, want: &[(&str, &str)]) -> String {
    let (got, report) = verdicts(sub);
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if got != want {
        let table: Vec<String> = got
            .iter()
            .map(|(k, v)| format!("        ({k:?}, {v:?}),"))
            .collect();
        panic!(
            "verdicts of seeds/{sub} differ; they are:\n{}\n",
            table.join("\n")
        );
    }
    report
}

#[test]
fn seed_000_verbatim() {
    let report = check(
        "000",
        &[
            ("00-grpc-server-deployment.yaml#1", "skipped"),
            // The Service: its seven DestinationRules merged.
            ("00-grpc-server-deployment.yaml#2", "WEFT020"),
            // No waypoint in the seed: routes and balancing would have no effect.
            ("01-grpc-virtual-service.yaml#1", "WEFT030"),
            ("02-grpc-destination-rule.yaml#1", "WEFT010 WEFT022"),
            ("03-grpc-service-profile.yaml#1", "WEFT001"),
            ("04-peer-authentication.yaml#1", "applied"),
            ("04-peer-authentication.yaml#2", "applied"),
            ("04-peer-authentication.yaml#3", "applied"),
            ("05-istio-authz-policy.yaml#1", "WEFT031"),
            ("06-load-balancing-examples.yaml#1", "WEFT022"),
            ("06-load-balancing-examples.yaml#2", "WEFT022"),
            // The oldest (first by name): its top-level policy is the merged rule's.
            ("06-load-balancing-examples.yaml#3", "WEFT030"),
            ("07-locality-lb.yaml#1", "WEFT010 WEFT022"),
            ("08-telemetry-config.yaml#1", "WEFT001"),
            ("09-prometheus-rules.yaml#1", "skipped"),
            ("10-istio-operator-tracing.yaml#1", "WEFT001"),
            ("11-opentelemetry-collector.yaml#1", "skipped"),
            // grpc-server (01) is older by name and wins.
            ("12-canary-deployment.yaml#1", "IST0109"),
            // Subsets v1 and v2, merged into grpc-server's rule.
            ("12-canary-deployment.yaml#2", "applied"),
            ("13-circuit-breaker.yaml#1", "WEFT010 WEFT022"),
            ("14-rate-limit.yaml#1", "WEFT001"),
            // The seed has no grpc-streaming-server Service.
            ("15-streaming-config.yaml#1", "IST0101 WEFT011"),
            ("15-streaming-config.yaml#2", "WEFT010 WEFT012"),
            ("16-debug-logging.yaml#1", "WEFT001"),
        ],
    );
    for want in [
        "7 DestinationRules merged",
        "subsets [v1, v2]",
        "localityLbSetting is accepted but not acted on",
        "Weft does not read EnvoyFilter objects",
        "3 errors, 20 warnings, 1 info",
    ] {
        assert!(report.contains(want), "{want:?} missing from:\n{report}");
    }
}

#[test]
fn seed_001_reindented() {
    let report = check(
        "001",
        &[
            ("01-grpc-service.yaml#1", "applied"),
            ("02-http2-service.yaml#1", "applied"),
            ("03-grpc-canary.yaml#1", "WEFT030"),
            ("04-grpc-service-dr.yaml#1", "WEFT030"),
            // The seed's typo `cluster.cluster.local`, and grpc-canary is older by name.
            ("05-grpc-with-retries.yaml#1", "IST0101 IST0109"),
            // `networking.io/v1`, the seed's own typo.
            ("06-http2-connection-pool.yaml#1", "WEFT002"),
            ("07-grpc-gateway.yaml#1", "WEFT001"),
            ("08-grpc-ingress.yaml#1", "WEFT010 WEFT011"),
        ],
    );
    for want in [
        "\"grpc-service.default.svc.cluster.cluster.local\" names no Service",
        "did you mean networking.istio.io?",
        "spec.gateways is accepted but not acted on",
    ] {
        assert!(report.contains(want), "{want:?} missing from:\n{report}");
    }
}

#[test]
fn seed_001_as_printed() {
    const FLAT: &str = "rejected: metadata.name: required (`name` is at the top level: the manifest looks flattened, with its indentation lost; fields of metadata and spec must be indented under them)";
    let report = check(
        "001-literal",
        &[
            ("01-grpc-service.yaml#1", FLAT),
            ("02-http2-service.yaml#1", FLAT),
            (
                "03-grpc-canary.yaml#1",
                "rejected: invalid YAML: did not find expected key at line 15 column 1, while parsing a block mapping",
            ),
            (
                "04-grpc-service-dr.yaml#1",
                "rejected: invalid YAML: did not find expected key at line 12 column 1, while parsing a block mapping",
            ),
            ("05-grpc-with-retries.yaml#1", FLAT),
            ("06-http2-connection-pool.yaml#1", "WEFT002"),
            (
                "07-grpc-gateway.yaml#1",
                "rejected: invalid YAML: duplicate entry with key \"name\"",
            ),
            ("08-grpc-ingress.yaml#1", FLAT),
        ],
    );
    // Each rejection names its file.
    assert!(
        report.contains("001-literal/03-grpc-canary.yaml: document 1"),
        "{report}"
    );
    assert!(report.contains("8 errors"), "{report}");
}
