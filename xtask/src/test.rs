//! `cargo xtask test`: every test. Unit tests first, then the end-to-end tests, which build labs
//! on the real kernel and so need root. Nothing is skipped: a missing privilege or kernel
//! feature fails the run with its name.

use anyhow::{Result, bail};

use crate::{setup, workspace};

pub fn run(filter: Option<&str>) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "cargo xtask test needs root: the end-to-end tests load eBPF programs and build network namespaces"
        );
    }
    setup::run()?;
    workspace::build()?;
    // The tests that drive grpcio run this Python. SAFETY: single-threaded here, as in build.
    unsafe { std::env::set_var("WEFT_PYTHON", setup::python()) };
    weft_lab::down_all();
    let mut unit = vec![
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "weft-tests",
    ];
    let mut e2e = vec!["test", "--release", "-p", "weft-tests"];
    if let Some(filter) = filter {
        unit.push(filter);
        e2e.push(filter);
    }
    workspace::cargo(&unit)?;
    // One lab at a time: the machine has two cores, and the timings of a loaded box make
    // poor tests.
    e2e.extend(["--", "--test-threads=1"]);
    let result = workspace::cargo(&e2e);
    weft_lab::down_all();
    result
}
