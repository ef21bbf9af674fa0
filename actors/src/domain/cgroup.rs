//! A CPU cgroup of its own for a running domain, created the first time a
//! client tunes the domain's CPU share or bandwidth: QEMU's process is moved
//! into `qemud/<uuid>` under the host's CPU controller (cgroup v2 when the
//! host has it with the `cpu` controller, else the v1 `cpu` hierarchy).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};

pub struct CpuGroup {
    dir: PathBuf,
    v2: bool,
}

fn not_mounted() -> Error {
    Error::OperationInvalid("cgroup CPU controller is not mounted".into())
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| {
        let text = e.to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_string();
        Error::System(format!("Unable to write to '{}': {text}", path.display()))
    })
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::System(format!("Unable to create cgroup '{}': {e}", path.display())))
}

/// The v1 mount of the `cpu` controller, if any.
fn v1_cpu_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cpu.shares").exists())
}

/// A v2 hierarchy that offers the `cpu` controller.
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            std::fs::read_to_string(p.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
        })
}

/// Removes the groups of domains that have ended: rmdir only succeeds on
/// a cgroup without processes, so live ones stay.
fn remove_empty_groups(parent: &Path) {
    if let Ok(dir) = std::fs::read_dir(parent) {
        for e in dir.flatten() {
            let path = e.path();
            let is_domain = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| Uuid::parse_str(n).is_ok());
            if is_domain && path.is_dir() {
                let _ = std::fs::remove_dir(&path);
            }
        }
    }
}

/// The domain's own CPU cgroup, moving QEMU (`pid`) into it if it is not
/// there yet.
pub fn domain_cpu_group(pid: i32, uuid: &Uuid) -> Result<CpuGroup> {
    let leaf = uuid.to_string();
    if let Some(root) = v2_root() {
        let slice = root.join("qemud");
        remove_empty_groups(&slice);
        let dir = slice.join(&leaf);
        if !dir.exists() {
            write(&root.join("cgroup.subtree_control"), "+cpu")?;
            mkdir(&slice)?;
            write(&slice.join("cgroup.subtree_control"), "+cpu")?;
            mkdir(&dir)?;
        }
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
        return Ok(CpuGroup { dir, v2: true });
    }
    if let Some(root) = v1_cpu_root() {
        remove_empty_groups(&root.join("qemud"));
        let dir = root.join("qemud").join(&leaf);
        mkdir(&dir)?;
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
        return Ok(CpuGroup { dir, v2: false });
    }
    Err(not_mounted())
}

impl CpuGroup {
    /// Applies a CPU share (weight under v2) and whole-domain bandwidth;
    /// `quota` -1 means unlimited.
    pub fn apply(
        &self,
        shares: Option<u64>,
        period: Option<i64>,
        quota: Option<i64>,
    ) -> Result<()> {
        if self.v2 {
            if let Some(s) = shares {
                write(&self.dir.join("cpu.weight"), &s.to_string())?;
            }
            if period.is_some() || quota.is_some() {
                let current = std::fs::read_to_string(self.dir.join("cpu.max")).unwrap_or_default();
                let mut it = current.split_whitespace();
                let old_quota = it.next().unwrap_or("max").to_string();
                let old_period = it.next().unwrap_or("100000").to_string();
                let q = match quota {
                    Some(q) if q < 0 => "max".to_string(),
                    Some(q) => q.to_string(),
                    None => old_quota,
                };
                let p = period.map(|p| p.to_string()).unwrap_or(old_period);
                write(&self.dir.join("cpu.max"), &format!("{q} {p}"))?;
            }
        } else {
            if let Some(s) = shares {
                write(&self.dir.join("cpu.shares"), &s.to_string())?;
            }
            if let Some(p) = period {
                write(&self.dir.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = quota {
                write(&self.dir.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
        }
        Ok(())
    }
}
