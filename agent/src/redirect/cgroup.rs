//! Finding a pod's cgroup from its UID, the way the kubelet names them.
//!
//! The kubelet makes one cgroup per pod under a QoS parent. With the cgroupfs driver the path
//! is `kubepods[/burstable|/besteffort]/pod<uid>`; with the systemd driver it is
//! `kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice` (systemd
//! reserves '-' in unit names). The lab makes the same directories, so one function serves both.

use std::path::{Path, PathBuf};

/// The pod's cgroup directory under `root`, if the kubelet (or the lab) has made it.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    candidates(root, uid).into_iter().find(|p| p.is_dir())
}

fn candidates(root: &Path, uid: &str) -> Vec<PathBuf> {
    let systemd_uid = uid.replace('-', "_");
    let mut paths = vec![root.join("kubepods").join(format!("pod{uid}"))];
    for qos in ["burstable", "besteffort"] {
        paths.push(root.join("kubepods").join(qos).join(format!("pod{uid}")));
    }
    paths.push(
        root.join("kubepods.slice")
            .join(format!("kubepods-pod{systemd_uid}.slice")),
    );
    for qos in ["burstable", "besteffort"] {
        paths.push(
            root.join("kubepods.slice")
                .join(format!("kubepods-{qos}.slice"))
                .join(format!("kubepods-{qos}-pod{systemd_uid}.slice")),
        );
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6f3a52-8a4e-4c55-9a3e-2f1d2c3b4a59";

    #[test]
    fn finds_each_driver_and_qos_layout() {
        let layouts = [
            format!("kubepods/pod{UID}"),
            format!("kubepods/besteffort/pod{UID}"),
            format!("kubepods/burstable/pod{UID}"),
            "kubepods.slice/kubepods-pod0b6f3a52_8a4e_4c55_9a3e_2f1d2c3b4a59.slice".to_string(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6f3a52_8a4e_4c55_9a3e_2f1d2c3b4a59.slice"
                .to_string(),
        ];
        for layout in layouts {
            let root = tempfile::tempdir().unwrap();
            assert_eq!(find_pod_cgroup(root.path(), UID), None);
            std::fs::create_dir_all(root.path().join(&layout)).unwrap();
            assert_eq!(
                find_pod_cgroup(root.path(), UID),
                Some(root.path().join(&layout)),
                "{layout}"
            );
        }
    }

    #[test]
    fn another_pods_cgroup_does_not_match() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(
            root.path()
                .join("kubepods/pod11111111-2222-3333-4444-555555555555"),
        )
        .unwrap();
        assert_eq!(find_pod_cgroup(root.path(), UID), None);
    }
}
