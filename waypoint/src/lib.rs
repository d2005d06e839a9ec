//! The parts of the waypoint that read what a client sends before anything else does, as a
//! library so that the fuzz targets (`fuzz/`) reach them: gRPC's `grpc-timeout` and
//! trailers (`grpc`), and the trace headers (`trace`: W3C `traceparent`, B3). The
//! waypoint's binary (`main.rs`) uses them from here.

pub mod grpc;
pub mod trace;
