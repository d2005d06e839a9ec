//! `uuid-client` against `uuid-server` over one HTTP/2 connection on loopback.

mod common;

use std::net::TcpListener;

use common::{Server, run};

const SERVER: &str = env!("CARGO_BIN_EXE_uuid-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_uuid-client");

#[test]
fn one_server_answers_every_call_with_its_uuid() {
    let server = Server::start(SERVER, &["--pod", "pod-a"]);
    let uuid = server.ready["uuid"]
        .as_str()
        .expect("uuid in readiness line");
    assert_eq!(uuid.len(), 36, "{}", server.ready);
    let url = format!("http://{}", server.addr);
    for concurrency in ["1", "8"] {
        let (status, out) = run(
            CLIENT,
            &[
                "--connect",
                &url,
                "--calls",
                "200",
                "--concurrency",
                concurrency,
            ],
        );
        assert!(status.success(), "{out}");
        assert_eq!(out["calls"], 200);
        assert_eq!(out["ok"], 200);
        assert_eq!(out["errors"], 0);
        assert_eq!(out["by_uuid"], serde_json::json!({ uuid: 200 }));
        assert_eq!(out["by_pod"], serde_json::json!({ "pod-a": 200 }));
    }
}

#[test]
fn client_fails_fast_without_a_server() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = std::process::Command::new(CLIENT)
        .args(["--connect", &format!("http://{addr}"), "--calls", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Runs the client against `url` with `args`, and returns its exit status and report.
fn client(url: &str, args: &[&str]) -> (std::process::ExitStatus, serde_json::Value) {
    let mut all = vec!["--connect", url];
    all.extend_from_slice(args);
    run(CLIENT, &all)
}

#[test]
fn fail_first_fails_each_request_key_n_times() {
    let server = Server::start(SERVER, &["--fail-first", "2"]);
    let url = format!("http://{}", server.addr);
    let (status, out) = client(
        &url,
        &[
            "--calls",
            "6",
            "--header",
            "x-request-key=k1",
            "--allow-errors",
        ],
    );
    assert!(status.success(), "{out}");
    assert_eq!(
        out["by_status"],
        serde_json::json!({ "OK": 4, "Unavailable": 2 })
    );
    assert_eq!(out["errors"], 2);
    // The key has had its failures; and without --allow-errors a failure is exit 1.
    let (status, out) = client(&url, &["--calls", "3", "--header", "x-request-key=k1"]);
    assert!(status.success(), "{out}");
    let (status, out) = client(&url, &["--calls", "5", "--unique-key"]);
    assert!(!status.success());
    assert_eq!(out["by_status"], serde_json::json!({ "Unavailable": 5 }));
    // Calls without a key are not affected.
    let (status, out) = client(&url, &["--calls", "5"]);
    assert!(status.success(), "{out}");
}

#[test]
fn fail_percent_and_trailers_only_fail_with_the_status_given() {
    let bad = Server::start(SERVER, &["--fail-status", "13", "--fail-percent", "100"]);
    let (status, out) = client(&format!("http://{}", bad.addr), &["--calls", "10"]);
    assert!(!status.success());
    assert_eq!(out["by_status"], serde_json::json!({ "Internal": 10 }));
    assert!(out["latency_ms"].is_null(), "{out}");

    let half = Server::start(SERVER, &["--fail-percent", "50"]);
    let (_, out) = client(
        &format!("http://{}", half.addr),
        &["--calls", "10", "--concurrency", "4", "--allow-errors"],
    );
    assert_eq!(
        out["by_status"],
        serde_json::json!({ "OK": 5, "Unavailable": 5 })
    );

    let trailers = Server::start(SERVER, &["--trailers-only-status", "8"]);
    let (status, out) = client(
        &format!("http://{}", trailers.addr),
        &["--calls", "3", "--allow-errors"],
    );
    assert!(status.success());
    assert_eq!(
        out["by_status"],
        serde_json::json!({ "ResourceExhausted": 3 })
    );
}

#[test]
fn delay_meets_deadline_and_header_overrides_it() {
    let server = Server::start(SERVER, &["--delay-ms", "300"]);
    let url = format!("http://{}", server.addr);
    let (status, out) = client(
        &url,
        &["--calls", "2", "--deadline-ms", "50", "--allow-errors"],
    );
    assert!(status.success());
    assert_eq!(
        out["by_status"],
        serde_json::json!({ "DeadlineExceeded": 2 })
    );
    // Well under the server's delay: the client gave up at its deadline.
    assert!(out["seconds"].as_f64().unwrap() < 0.5, "{out}");
    let (_, out) = client(
        &url,
        &["--calls", "1", "--call-timeout-ms", "50", "--allow-errors"],
    );
    assert_eq!(
        out["by_status"],
        serde_json::json!({ "DeadlineExceeded": 1 })
    );
    let (status, out) = client(
        &url,
        &[
            "--calls",
            "2",
            "--header",
            "x-delay-ms=0",
            "--deadline-ms",
            "1000",
        ],
    );
    assert!(status.success(), "{out}");
    let (_, out) = client(&url, &["--calls", "1"]);
    assert!(out["latency_ms"]["p50"].as_f64().unwrap() >= 300.0, "{out}");
}

#[test]
fn header_cycle_padding_and_rate() {
    let server = Server::start(SERVER, &[]);
    let uuid = server.ready["uuid"].as_str().unwrap().to_string();
    let url = format!("http://{}", server.addr);
    let (status, out) = client(
        &url,
        &[
            "--calls",
            "10",
            "--concurrency",
            "3",
            "--header-cycle",
            "x-user=u:3",
            "--request-bytes",
            "1024",
            "--reply-bytes",
            "1024",
            "--rate",
            "100",
        ],
    );
    assert!(status.success(), "{out}");
    assert_eq!(
        out["by_header"],
        serde_json::json!({ "u0": { &uuid: 4 }, "u1": { &uuid: 3 }, "u2": { &uuid: 3 } })
    );
    assert_eq!(out["latency_ms"]["count"], 10);
    // Call 9 is due 90 ms after the start.
    assert!(out["seconds"].as_f64().unwrap() >= 0.09, "{out}");
}
