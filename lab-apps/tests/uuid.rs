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
