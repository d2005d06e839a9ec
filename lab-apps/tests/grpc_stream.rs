//! `grpc-stream` against `uuid-server`: every streaming call shape on loopback.

mod common;

use common::{Server, run};

const SERVER: &str = env!("CARGO_BIN_EXE_uuid-server");
const STREAM: &str = env!("CARGO_BIN_EXE_grpc-stream");

fn stream(command: &str, server: &Server, args: &[&str]) -> (bool, serde_json::Value) {
    let url = format!("http://{}", server.addr);
    let mut all = vec![command, "--connect", &url];
    all.extend_from_slice(args);
    let (status, out) = run(STREAM, &all);
    assert_eq!(status.success(), out["ok"] == true, "{out}");
    (status.success(), out)
}

#[test]
fn every_call_shape_arrives_intact_and_is_counted() {
    let server = Server::start(SERVER, &[]);
    let (ok, out) = stream("echo", &server, &["--messages", "10000", "--size", "100"]);
    assert!(ok, "{out}");
    assert_eq!(out["messages"], 10000);
    assert_eq!(out["in_order"], true);
    assert_eq!(out["bytes"], 1_000_000);

    // Exactly 4 MiB: over tonic's default message limit once framed.
    let (ok, out) = stream("big", &server, &["--bytes", "4194304"]);
    assert!(ok, "{out}");
    assert_eq!(out["bytes"], 4_194_304);

    let (ok, out) = stream("upload", &server, &["--messages", "500", "--size", "1000"]);
    assert!(ok, "{out}");
    assert_eq!(out["bytes"], 500_000);

    let (ok, out) = stream(
        "download",
        &server,
        &["--messages", "500", "--size", "1000"],
    );
    assert!(ok, "{out}");
    assert_eq!(out["bytes"], 500_000);

    let (ok, out) = stream("stats", &server, &[]);
    assert!(ok, "{out}");
    assert_eq!(out["uuid"], server.ready["uuid"]);
    for (method, n) in [
        ("whoami", 0),
        ("echo", 2),
        ("upload", 1),
        ("download", 1),
        ("failed", 0),
    ] {
        assert_eq!(out[method], n, "{method} in {out}");
    }
}

#[test]
fn a_failed_stream_reports_its_status() {
    let server = Server::start(SERVER, &["--fail-first", "1"]);
    let args = ["--messages", "10", "--header", "x-request-key=a"];
    let (ok, out) = stream("echo", &server, &args);
    assert!(!ok);
    assert_eq!(out["status"], "Unavailable", "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("fail-first"),
        "{out}"
    );
    // The retry of the same key goes through.
    let (ok, out) = stream("echo", &server, &args);
    assert!(ok, "{out}");
    let (_, out) = stream("stats", &server, &[]);
    assert_eq!(
        (out["echo"].clone(), out["failed"].clone()),
        (2.into(), 1.into())
    );
}

#[test]
fn no_server_is_a_json_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, out) = run(STREAM, &["stats", "--connect", &format!("http://{addr}")]);
    assert!(!status.success());
    assert_eq!(out["ok"], false);
    assert!(out["status"].is_null(), "{out}");
}
