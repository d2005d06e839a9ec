//! Shared by the agent and the waypoint.

/// The Kubernetes objects Weft reads, as one typed model that every source feeds.
pub mod config;

/// The HTTP server behind the admin, metrics and readiness ports.
pub mod admin;
