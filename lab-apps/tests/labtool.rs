//! `labtool` servers and clients against each other on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use common::{Server, run};

const LABTOOL: &str = env!("CARGO_BIN_EXE_labtool");

#[test]
fn send_sink_round_trip() {
    let sink = Server::start(LABTOOL, &["sink"]);
    let addr = sink.addr.to_string();
    for (bytes, write_size) in [
        (0, "65536"),
        (1, "65536"),
        (65536, "65536"),
        (1_000_003, "4097"),
    ] {
        let n = bytes.to_string();
        let (status, out) = run(
            LABTOOL,
            &[
                "send",
                "--connect",
                &addr,
                "--bytes",
                &n,
                "--write-size",
                write_size,
            ],
        );
        assert!(status.success(), "{bytes} bytes: {out}");
        assert_eq!(out["ok"], true, "{out}");
        assert_eq!(out["bytes"], bytes, "{out}");
        assert_eq!(out["sent_sha256"], out["received_sha256"], "{out}");
        assert!(out["seconds"].as_f64().is_some(), "{out}");
    }
    // The payload does not depend on how it is cut into writes.
    let digest = |write_size: &str| {
        run(
            LABTOOL,
            &[
                "send",
                "--connect",
                &addr,
                "--bytes",
                "100000",
                "--seed",
                "9",
                "--write-size",
                write_size,
            ],
        )
        .1["sent_sha256"]
            .clone()
    };
    assert_eq!(digest("1000"), digest("65536"));
}

#[test]
fn send_reports_a_wrong_digest() {
    // A sink that reads everything and then answers a digest of something else.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        conn.read_to_end(&mut data).unwrap();
        conn.write_all(format!("{}\n", "0".repeat(64)).as_bytes())
            .unwrap();
    });
    let (status, out) = run(LABTOOL, &["send", "--connect", &addr, "--bytes", "1000"]);
    fake.join().unwrap();
    assert!(!status.success(), "{out}");
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["received_sha256"], "0".repeat(64));
}

#[test]
fn send_fails_without_a_server() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let status = Command::new(LABTOOL)
        .args(["send", "--connect", &port.to_string(), "--bytes", "10"])
        .output()
        .unwrap()
        .status;
    assert!(!status.success());
}

#[test]
fn tput_against_discard() {
    let discard = Server::start(LABTOOL, &["discard"]);
    let (status, out) = run(
        LABTOOL,
        &[
            "tput",
            "--connect",
            &discard.addr.to_string(),
            "--seconds",
            "0.5",
            "--streams",
            "2",
        ],
    );
    assert!(status.success(), "{out}");
    assert_eq!(out["streams"], 2);
    assert_eq!(out["write_size"], 131072);
    assert!(out["bytes"].as_u64().unwrap() > 0, "{out}");
    assert!(out["seconds"].as_f64().unwrap() >= 0.5, "{out}");
    assert!(out["gbps"].as_f64().unwrap() > 0.0, "{out}");
}

#[test]
fn rr_against_echo() {
    let echo = Server::start(LABTOOL, &["echo"]);
    let addr = echo.addr.to_string();
    for size in ["1", "10000"] {
        let (status, out) = run(
            LABTOOL,
            &[
                "rr",
                "--connect",
                &addr,
                "--count",
                "2000",
                "--warmup",
                "100",
                "--size",
                size,
            ],
        );
        assert!(status.success(), "{out}");
        assert_eq!(out["count"], 2000);
        let p50 = out["p50_us"].as_f64().unwrap();
        let p90 = out["p90_us"].as_f64().unwrap();
        let p99 = out["p99_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99, "{out}");
        assert!(out["mean_us"].as_f64().unwrap() > 0.0, "{out}");
    }
}
