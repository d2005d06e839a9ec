//! The programs that run inside the lab's pods.
//!
//! Tests, the demo and the benchmarks need real traffic whose correctness and speed they
//! can check from outside the mesh. The binaries here make that traffic and print one JSON
//! object on stdout, so the harness parses results instead of scraping logs:
//!
//! - `labtool`: raw TCP tools. `sink`/`send` check integrity end to end with SHA-256,
//!   `echo`/`rr` measure round-trip latency, `discard`/`tput` measure throughput.
//! - `uuid-server`/`uuid-client`: a gRPC service whose every replica answers with its own
//!   UUID, so a client can see how one HTTP/2 connection's calls were spread over backends.
//!   The server can misbehave on purpose (fail, stall), for tests of retries and timeouts.
//! - `grpc-stream`: checks the service's streaming calls message by message.
//!
//! Servers print `{"listen":"IP:PORT",...}` once they are bound, which lets a harness bind
//! port 0 and learn the real port.

pub mod burst;
pub mod churn;
pub mod digest;
pub mod integrity;
pub mod latency;
pub mod net;
pub mod pattern;
pub mod stats;
pub mod throughput;
pub mod whoami;

/// Writes one JSON object and a newline to stdout, and flushes, so a harness reading
/// line by line sees it at once.
pub fn print_json(value: &serde_json::Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}
