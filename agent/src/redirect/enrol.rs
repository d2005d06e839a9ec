//! Enrolment: which pods of the node are captured, and what the kernel maps say of each.
//! Each pass of `reconcile` makes the attached set match the configuration: connect hooks on
//! each enrolled pod's cgroup, the tc gate on its veth, and its flags (may it be reached
//! directly; is it STRICT) under the current policies.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use aya::programs::{
    CgroupSockAddr, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};
use serde::Serialize;
use weft_ebpf_common::{
    POD_DIRECT_OK, POD_ENROLLED, PodEntry, TC_MODE_ALLOW_ALL, TC_MODE_STRICT, maps, programs,
};
use weft_mesh::config::{Model, PodInfo};

use super::{Datapath, LINK_MODE, RedirectError, find_pod_cgroup, netdev, program_error};

/// A pod whose connect hooks are attached.
pub(super) struct Enrolled {
    pod: PodInfo,
    ip: Ipv4Addr,
    cgroup: PathBuf,
    interface: Option<String>,
    links: Vec<PinnedLink>,
    /// What the kernel maps hold for the pod now.
    flags: u32,
    tc_mode: u32,
}

/// What /config_dump shows of one pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<IpAddr>,
    pub state: &'static str,
    pub cgroup: Option<PathBuf>,
    pub interface: Option<String>,
    pub reason: Option<String>,
}

impl Datapath {
    pub fn reconcile(&mut self, model: &Model, node: &str, policy: &crate::policy::L4Policy) {
        let desired: BTreeMap<String, PodInfo> = model
            .enrolled_pods(node)
            .map(|pod| (pod.uid.clone(), pod.clone()))
            .collect();
        let gone: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(uid, e)| desired.get(*uid).is_none_or(|p| p.ip != e.pod.ip))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(enrolled) = self.enrolled.remove(&uid) {
                self.unenrol(enrolled);
            }
        }
        self.pending.clear();
        for (uid, pod) in desired {
            let (flags, tc_mode) = self.pod_modes(model, &pod, policy);
            if let Some(enrolled) = self.enrolled.get(&uid) {
                let (ip, current, no_interface) = (
                    enrolled.ip,
                    (enrolled.flags, enrolled.tc_mode),
                    enrolled.interface.is_none(),
                );
                if current != (flags, tc_mode) {
                    self.set_modes(&uid, flags, tc_mode);
                }
                // The veth may appear after the cgroup; retry the tc attachment.
                if no_interface
                    && let Some((iface, link)) = self.attach_tc(ip, tc_mode)
                    && let Some(enrolled) = self.enrolled.get_mut(&uid)
                {
                    enrolled.interface = Some(iface);
                    enrolled.links.push(link);
                }
                continue;
            }
            match self.enrol(&pod, flags, tc_mode) {
                Ok(enrolled) => {
                    tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), ip = %enrolled.ip, "enrolled");
                    self.enrolled.insert(uid, enrolled);
                }
                Err(reason) => {
                    tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), %reason, "not enrolled yet");
                    self.pending
                        .insert(uid, status(&pod, "pending", None, None, Some(reason)));
                }
            }
        }
        // Once this agent's links are in place, a previous agent's copies go.
        self.adopted.clear();
    }

    /// The pod's kernel flags and inbound mode under the current policies.
    fn pod_modes(
        &self,
        model: &Model,
        pod: &PodInfo,
        policy: &crate::policy::L4Policy,
    ) -> (u32, u32) {
        let direct = self.direct_local && !policy.governs(model, pod);
        let flags = POD_ENROLLED | if direct { POD_DIRECT_OK } else { 0 };
        let mode = if policy.strict(model, pod) {
            TC_MODE_STRICT
        } else {
            TC_MODE_ALLOW_ALL
        };
        (flags, mode)
    }

    fn set_modes(&mut self, uid: &str, flags: u32, tc_mode: u32) {
        let Some(enrolled) = self.enrolled.get_mut(uid) else {
            return;
        };
        let ifindex = enrolled.interface.as_deref().and_then(ifindex).unwrap_or(0);
        let key = u32::from_ne_bytes(enrolled.ip.octets());
        if let Err(err) = self.pods.insert(key, PodEntry { flags, ifindex }, 0) {
            tracing::warn!(%err, "updating {}", maps::PODS);
            return;
        }
        if ifindex != 0
            && let Err(err) = self.tc_mode.insert(ifindex, tc_mode, 0)
        {
            tracing::warn!(%err, "updating {}", maps::TC_MODE);
            return;
        }
        tracing::info!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), direct = flags & POD_DIRECT_OK != 0, strict = tc_mode == TC_MODE_STRICT, "pod modes changed");
        enrolled.flags = flags;
        enrolled.tc_mode = tc_mode;
    }

    fn enrol(&mut self, pod: &PodInfo, flags: u32, tc_mode: u32) -> Result<Enrolled, String> {
        let ip = match pod.ip {
            Some(IpAddr::V4(ip)) => ip,
            Some(IpAddr::V6(_)) => return Err("IPv6 pods are not captured yet".into()),
            None => return Err("no pod IP yet".into()),
        };
        let cgroup = find_pod_cgroup(&self.cgroup_root, &pod.uid).ok_or_else(|| {
            format!(
                "no cgroup for uid {} under {}",
                pod.uid,
                self.cgroup_root.display()
            )
        })?;
        let dir = File::open(&cgroup).map_err(|e| format!("opening {}: {e}", cgroup.display()))?;
        let mut links = Vec::new();
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let link = self.attach_cgroup(name, &dir).map_err(|e| e.to_string())?;
            let pinned = self
                .pin(link, &format!("{}-{}", pod.uid, name))
                .map_err(|e| e.to_string())?;
            links.push(pinned);
        }
        let (interface, tc_link) = match self.attach_tc(ip, tc_mode) {
            Some((iface, link)) => (Some(iface), Some(link)),
            None => (None, None),
        };
        links.extend(tc_link);
        let ifindex = interface.as_deref().and_then(ifindex).unwrap_or(0);
        let key = u32::from_ne_bytes(ip.octets());
        self.pods
            .insert(key, PodEntry { flags, ifindex }, 0)
            .map_err(|e| format!("{}: {e}", maps::PODS))?;
        Ok(Enrolled {
            pod: pod.clone(),
            ip,
            cgroup,
            interface,
            links,
            flags,
            tc_mode,
        })
    }

    fn attach_cgroup(
        &mut self,
        name: &'static str,
        cgroup: &File,
    ) -> Result<FdLink, RedirectError> {
        let prog: &mut CgroupSockAddr = self.program(name)?;
        let id =
            prog.attach(cgroup, LINK_MODE)
                .map_err(program_error(name, "cgroup", "cgroup v2"))?;
        let link = prog
            .take_link(id)
            .map_err(program_error(name, "cgroup", "bpf links"))?;
        Ok(link.try_into()?)
    }

    /// The tc program on the pod's node-side veth, if the veth can be found yet.
    fn attach_tc(&mut self, ip: Ipv4Addr, mode: u32) -> Option<(String, PinnedLink)> {
        let iface = netdev::pod_interface(ip)?;
        let index = ifindex(&iface)?;
        let attached = (|| -> Result<PinnedLink, RedirectError> {
            let prog: &mut SchedClassifier = self.program(programs::TC_POD_INGRESS)?;
            // Egress of the node side is the path into the pod.
            let id = prog
                .attach(&iface, TcAttachType::Egress)
                .map_err(program_error(
                    programs::TC_POD_INGRESS,
                    "tc",
                    "tcx or clsact",
                ))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(program_error(programs::TC_POD_INGRESS, "tc", "tcx links"))?
                .try_into()?;
            self.pin(link, &format!("tc-{iface}"))
        })();
        match attached {
            Ok(link) => {
                let _ = self.tc_mode.insert(index, mode, 0);
                Some((iface, link))
            }
            Err(err) => {
                tracing::warn!(%iface, %err, "cannot attach the inbound tc program");
                None
            }
        }
    }

    pub(super) fn unenrol(&mut self, enrolled: Enrolled) {
        let key = u32::from_ne_bytes(enrolled.ip.octets());
        let _ = self.pods.remove(&key);
        if let Some(index) = enrolled.interface.as_deref().and_then(ifindex) {
            let _ = self.tc_mode.remove(&index);
        }
        for link in enrolled.links {
            if let Ok(link) = link.unpin() {
                drop(link);
            }
        }
        tracing::info!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), "un-enrolled");
    }

    /// Enrolled and pending pods, for /config_dump.
    pub fn pod_statuses(&self) -> Vec<PodStatus> {
        self.enrolled
            .values()
            .map(|e| {
                status(
                    &e.pod,
                    "enrolled",
                    Some(e.cgroup.clone()),
                    e.interface.clone(),
                    None,
                )
            })
            .chain(self.pending.values().cloned())
            .collect()
    }
}

fn status(
    pod: &PodInfo,
    state: &'static str,
    cgroup: Option<PathBuf>,
    interface: Option<String>,
    reason: Option<String>,
) -> PodStatus {
    PodStatus {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        ip: pod.ip,
        state,
        cgroup,
        interface,
        reason,
    }
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}
