//! End-to-end tests live in `tests/tests/`; `cargo xtask test` runs them as root.
