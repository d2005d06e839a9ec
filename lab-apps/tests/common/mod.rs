//! Runs the built binaries as the lab does: a server in the background, announcing its
//! address on stdout, and a client that prints one JSON object.

#![allow(dead_code)] // each test file uses its own part of this

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// The line it printed once bound.
    pub ready: Value,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `bin args.. --listen 127.0.0.1:0` and waits for its readiness line.
    pub fn start(bin: &str, args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("{bin} {args:?}: no readiness line within 10 s");
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{bin} {args:?}: readiness line {line:?}: {e}"));
        let addr = ready["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {ready}"));
        Server { child, ready, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client to completion and parses the JSON object it printed.
pub fn run(bin: &str, args: &[&str]) -> (ExitStatus, Value) {
    let out = Command::new(bin)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{bin} {args:?}: stdout {stdout:?} is not one JSON object: {e}")
    });
    (out.status, value)
}
