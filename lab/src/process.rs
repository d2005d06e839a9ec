//! Processes inside the lab: started in a namespace and a cgroup, and never left behind.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Where the build put the binaries: WEFT_BIN_DIR, else beside the running executable (or its
/// parent, for test executables under deps/).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable without a directory")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Guarded {
    child: Option<Child>,
}

impl Guarded {
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// SIGTERM, without waiting.
    pub fn signal_terminate(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it exited.
    pub fn terminate(mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already reaped")?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to finish on its own, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn command(
    program: &Path,
    args: &[String],
    netns: &str,
    cgroup: &Path,
    env: &[(&str, &str)],
) -> Result<Command> {
    let ns = File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("no network namespace {netns}"))?;
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().copied());
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    // SAFETY: between fork and exec the closure only makes two system calls on descriptors
    // opened before the fork, which the closure keeps alive by owning them.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = (&ns, &procs);
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself into the cgroup.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Starts `program` in `netns` and `cgroup`, with output appended to `log`.
pub fn spawn(
    program: &Path,
    args: &[String],
    netns: &str,
    cgroup: &Path,
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Result<Guarded> {
    let mut cmd = command(program, args, netns, cgroup, env)?;
    cmd.stdin(Stdio::null());
    match log {
        Some(log) => {
            let file = OpenOptions::new().create(true).append(true).open(log)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} in {netns}", program.display()))?;
    Ok(Guarded { child: Some(child) })
}

/// Runs `program` in `netns` and `cgroup` to completion; killed after `timeout`.
pub fn run(
    program: &Path,
    args: &[String],
    netns: &str,
    cgroup: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output> {
    let mut cmd = command(program, args, netns, cgroup, env)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} in {netns}", program.display()))?;
    let pid = child.id() as i32;
    // The reader threads inside wait_with_output need the pipes; a watchdog enforces the limit.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return true;
        }
        false
    });
    let stdin = child.stdin.take();
    drop(stdin);
    let output = child.wait_with_output()?;
    let _ = done_tx.send(());
    if watchdog.join().unwrap_or(false) {
        anyhow::bail!("{} timed out after {timeout:?}", program.display());
    }
    Ok(output)
}

fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        for entry in entries.filter_map(Result::ok) {
            if entry.path().is_dir() {
                pids.extend(cgroup_pids(&entry.path()));
            }
        }
    }
    pids
}

pub fn signal_cgroup(cgroup: &Path, signal: Signal) {
    for pid in cgroup_pids(cgroup) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

pub fn wait_cgroup_empty(cgroup: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cgroup_pids(cgroup).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// SIGKILLs everything left in the tree, and waits until it is gone.
pub fn kill_cgroup_tree(cgroup: &Path) {
    for _ in 0..50 {
        let pids = cgroup_pids(cgroup);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
