//! `weft-agent analyze`: every finding of the compiled state, and every rejected manifest,
//! one line each, in the spirit of `istioctl analyze`. The findings are the ones the data
//! path was compiled with (`crate::state`), so what this prints is what the agent and the
//! waypoint do.

use std::fmt::Write;

use crate::config::ConfigError;
use crate::state::{Severity, State};

/// The code of a manifest that was rejected whole (it is not in the state at all).
pub const REJECTED: &str = "WEFT003";

/// The report: one line per rejection and finding, then a summary line. The flag says
/// whether there was an error (a rejection or an error finding): `analyze` then exits 1.
pub fn report(state: &State, rejected: &[ConfigError]) -> (String, bool) {
    let mut out = String::new();
    for error in rejected {
        let _ = writeln!(out, "error [{REJECTED}] {error}");
    }
    for finding in state.findings() {
        let _ = writeln!(out, "{finding}");
    }
    let count = |s| state.findings().iter().filter(|f| f.severity == s).count();
    let errors = rejected.len() + count(Severity::Error);
    let _ = writeln!(
        out,
        "{errors} errors, {} warnings, {} info",
        count(Severity::Warning),
        count(Severity::Info)
    );
    (out, errors > 0)
}
