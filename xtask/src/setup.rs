//! `cargo xtask setup`: makes a fresh machine ready to build and test Weft, and is quick when
//! it already is. The recipe for bpf-linker follows ../shared/DESIGN.md: it links against the
//! nightly toolchain's own libLLVM, through a prefix of two symlinks kept where it lasts.
//! The Python gRPC tests get grpcio in a virtualenv of their own, pinned by
//! tests/python/requirements.txt, so the machine's Python is left as it is.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::workspace;

/// Debian packages the tests and benches use, by the command that shows each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("tcpdump", "tcpdump"),
    // The attack tests make a NodePort in a lab node as kube-proxy does (DNAT and SNAT).
    ("iptables", "iptables"),
    // The anchor of `bench waypoint`: a plain-text HTTP/2 balancer beside the waypoint.
    ("haproxy", "haproxy"),
    // jemalloc, the waypoint's allocator, is built from C sources with make.
    ("make", "make"),
];

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    python_grpc()?;
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (the eBPF build needs rustup with a nightly toolchain)")?;
    if !installed.status.success() {
        bail!(
            "no nightly toolchain: the eBPF programs need one (`rustup toolchain install nightly`)"
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    println!("==> rustup component add rust-src --toolchain nightly");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()?;
    if !status.success() {
        bail!("could not add rust-src to the nightly toolchain");
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM without a name")?
        .to_string_lossy()
        .into_owned();
    let major = file_name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("libLLVM without a version")?
        .to_string();

    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for link in [lib.join("libLLVM.so"), lib.join(&file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "==> cargo install bpf-linker (LLVM {major} from the nightly toolchain; about a minute)"
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() || !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker did not install");
    }
    Ok(())
}

/// Lasts as long as the home directory: the installed binary's rpath points into it.
fn llvm_prefix() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".local/share/weft/llvm"))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !quiet(Command::new("sh").args(["-c", &format!("command -v {cmd}")])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("==> apt-get install {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// The virtualenv of the Python gRPC tests. Beside the LLVM prefix: it lasts as long as the
/// home directory, so a second setup finds it.
fn python_venv() -> PathBuf {
    std::env::home_dir()
        .map(|home| home.join(".local/share/weft/py"))
        .unwrap_or_else(|| workspace::root().join("target/weft-py"))
}

/// The Python of the tests' virtualenv, where `import grpc` works once setup has run. The
/// end-to-end tests find it in `WEFT_PYTHON`.
pub fn python() -> PathBuf {
    python_venv().join("bin").join("python3")
}

/// Creates the virtualenv and installs the pinned requirements into it, unless it already
/// holds exactly them: the requirements it was last given are kept beside it, so that a
/// changed pin installs again, and a current one costs one `import grpc`.
fn python_grpc() -> Result<()> {
    let venv = python_venv();
    let python = python();
    let requirements = workspace::root().join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("weft-requirements.txt");
    let imports = || quiet(Command::new(&python).args(["-c", "import grpc"]));
    if std::fs::read_to_string(&stamp).is_ok_and(|had| had == wanted) && imports() {
        return Ok(());
    }
    if !quiet(Command::new(&python).arg("--version")) {
        println!("==> python3 -m venv {}", venv.display());
        // --clear: a virtualenv whose base Python went away is rebuilt, not patched.
        let out = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .output()
            .context("running python3 (the Python gRPC tests need python3 with venv)")?;
        if !out.status.success() {
            bail!(
                "python3 -m venv {} failed (on Debian the venv module is the python3-venv package): {}",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!(
        "==> pip install -r {} (into {})",
        requirements.display(),
        venv.display()
    );
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .with_context(|| format!("running {} -m pip", python.display()))?;
    if !status.success() {
        bail!(
            "pip install -r {} into {} failed ({status}): the Python gRPC tests need grpcio; pip's output is above",
            requirements.display(),
            venv.display()
        );
    }
    if !imports() {
        bail!(
            "pip installed {} but `import grpc` still fails with {}",
            requirements.display(),
            python.display()
        );
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
