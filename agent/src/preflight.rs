//! Checks made before anything is loaded, so that a missing privilege or kernel feature is one
//! clear line instead of a verifier dump or an EPERM deep in a library.

use std::path::Path;

use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("weft-agent must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotRoot,
    #[error("{0} is not a cgroup v2 mount; pass --cgroup-root with the node's cgroup2 path")]
    NoCgroup2(String),
    #[error("{path} is not a bpffs and mounting one failed: {err}")]
    NoBpffs { path: String, err: nix::Error },
}

pub fn check(cgroup_root: &Path, bpffs_dir: &Path) -> Result<(), PreflightError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(PreflightError::NotRoot);
    }
    match statfs(cgroup_root) {
        Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        _ => return Err(PreflightError::NoCgroup2(cgroup_root.display().to_string())),
    }
    ensure_bpffs(bpffs_dir)
}

/// The bpffs mount point above `dir` (/sys/fs/bpf), mounted if it is not yet.
fn ensure_bpffs(dir: &Path) -> Result<(), PreflightError> {
    let mount_point = Path::new("/sys/fs/bpf");
    let target = if dir.starts_with(mount_point) {
        mount_point
    } else {
        dir
    };
    if statfs(target).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    let _ = std::fs::create_dir_all(target);
    nix::mount::mount(
        Some("bpf"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|err| PreflightError::NoBpffs {
        path: target.display().to_string(),
        err,
    })
}
