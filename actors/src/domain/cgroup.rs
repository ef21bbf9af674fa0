//! Cgroups of running domains. Reading shows what the kernel applies to
//! the cgroup QEMU is in; the first change a client makes to a domain's
//! CPU or memory tuning moves QEMU into a cgroup of its own, `qemud/<uuid>`
//! below the one it was in (cgroup v2 when the host offers the controller
//! there, else the controller's v1 hierarchy).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};

/// `VIR_DOMAIN_MEMORY_PARAM_UNLIMITED`, in KiB.
pub const MEMORY_UNLIMITED_KIB: u64 = 9_007_199_254_740_991;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Cpu,
    Memory,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
        }
    }

    /// A file every cgroup of the controller has (but the v2 root).
    fn marker(self, v2: bool) -> &'static str {
        match (self, v2) {
            (Controller::Cpu, true) => "cpu.weight",
            (Controller::Cpu, false) => "cpu.shares",
            (Controller::Memory, true) => "memory.max",
            (Controller::Memory, false) => "memory.limit_in_bytes",
        }
    }

    fn v1_mounts(self) -> &'static [&'static str] {
        match self {
            Controller::Cpu => &["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"],
            Controller::Memory => &["/sys/fs/cgroup/memory"],
        }
    }

    pub fn not_mounted(self) -> Error {
        let name = match self {
            Controller::Cpu => "CPU",
            Controller::Memory => "memory",
        };
        Error::OperationInvalid(format!("cgroup {name} controller is not mounted"))
    }
}

/// One cgroup directory and the version of its hierarchy.
pub struct Group {
    pub dir: PathBuf,
    pub v2: bool,
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

fn read(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A v2 hierarchy that offers the controller.
fn v2_root(ctl: Controller) -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            read(p.join("cgroup.controllers"))
                .is_some_and(|c| c.split_whitespace().any(|x| x == ctl.name()))
        })
}

fn v1_mount(ctl: Controller) -> Option<PathBuf> {
    ctl.v1_mounts()
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join(ctl.marker(false)).exists())
}

/// The cgroup path (relative to its hierarchy) of `pid` for `ctl`:
/// `(relative path, v2)`.
fn membership(pid: i32, ctl: Controller) -> Option<(String, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            v2 = Some(rel.trim_start_matches('/').to_string());
        } else if controllers.split(',').any(|c| c == ctl.name()) {
            return Some((rel.trim_start_matches('/').to_string(), false));
        }
    }
    v2.map(|r| (r, true))
}

/// The cgroup `pid` is in for `ctl`, if that cgroup has the controller.
pub fn current_group(pid: i32, ctl: Controller) -> Option<Group> {
    let (rel, v2) = membership(pid, ctl)?;
    let dir = if v2 {
        v2_root(ctl)?.join(rel)
    } else {
        v1_mount(ctl)?.join(rel)
    };
    dir.join(ctl.marker(v2))
        .exists()
        .then_some(Group { dir, v2 })
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

/// The domain's own cgroup for `ctl`, moving QEMU (`pid`) into it if it
/// is not there yet.
pub fn domain_group(pid: i32, uuid: &Uuid, ctl: Controller) -> Result<Group> {
    let own = format!("qemud/{uuid}");
    let (rel, _) = membership(pid, ctl).ok_or_else(|| ctl.not_mounted())?;
    if let Some(root) = v2_root(ctl) {
        // v2 keeps processes in leaves only: the domain groups hang below
        // the root, with the controller enabled on the way down.
        let slice = root.join("qemud");
        let dir = slice.join(uuid.to_string());
        let enable = format!("+{}", ctl.name());
        write(&root.join("cgroup.subtree_control"), &enable)?;
        if !rel.ends_with(&own) {
            remove_empty_groups(&slice);
        }
        mkdir(&slice)?;
        write(&slice.join("cgroup.subtree_control"), &enable)?;
        mkdir(&dir)?;
        if !rel.ends_with(&own) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        return Ok(Group { dir, v2: true });
    }
    let mount = v1_mount(ctl).ok_or_else(|| ctl.not_mounted())?;
    if rel.ends_with(&own) {
        return Ok(Group {
            dir: mount.join(rel),
            v2: false,
        });
    }
    let parent = mount.join(&rel).join("qemud");
    remove_empty_groups(&parent);
    let dir = parent.join(uuid.to_string());
    mkdir(&dir)?;
    write(&dir.join("cgroup.procs"), &pid.to_string())?;
    Ok(Group { dir, v2: false })
}

/// A cgroup memory value in bytes ("max" or v1's huge number mean none)
/// as libvirt's KiB, with unlimited as `MEMORY_UNLIMITED_KIB`.
fn memory_kib(text: Option<String>) -> u64 {
    match text.as_deref() {
        None | Some("max") => MEMORY_UNLIMITED_KIB,
        Some(v) => match v.parse::<u64>() {
            // v1 reports "none" as the largest page-aligned i64.
            Ok(b) if b < 1 << 62 => b / 1024,
            _ => MEMORY_UNLIMITED_KIB,
        },
    }
}

fn memory_bytes(kib: u64, v2: bool) -> String {
    if kib >= MEMORY_UNLIMITED_KIB {
        if v2 {
            "max".into()
        } else {
            "-1".into()
        }
    } else {
        (kib * 1024).to_string()
    }
}

impl Group {
    /// (shares or weight, period, quota) of the CPU controller.
    pub fn cpu(&self) -> Option<(u64, u64, i64)> {
        if self.v2 {
            let weight = read(self.dir.join("cpu.weight"))?.parse().ok()?;
            let max = read(self.dir.join("cpu.max")).unwrap_or_default();
            let mut it = max.split_whitespace();
            let quota = match it.next() {
                Some("max") | None => -1,
                Some(q) => q.parse().unwrap_or(-1),
            };
            let period = it.next().and_then(|p| p.parse().ok()).unwrap_or(100_000);
            Some((weight, period, quota))
        } else {
            let shares = read(self.dir.join("cpu.shares"))?.parse().ok()?;
            let period = read(self.dir.join("cpu.cfs_period_us"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000);
            let quota = read(self.dir.join("cpu.cfs_quota_us"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1);
            Some((shares, period, quota))
        }
    }

    /// Applies a CPU share (weight under v2) and whole-domain bandwidth;
    /// `quota` -1 means unlimited.
    pub fn apply_cpu(
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
                let current = read(self.dir.join("cpu.max")).unwrap_or_default();
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

    /// (hard_limit, soft_limit, swap_hard_limit) in KiB.
    pub fn memory(&self) -> (u64, u64, u64) {
        let f = |v1: &str, v2: &str| memory_kib(read(self.dir.join(if self.v2 { v2 } else { v1 })));
        (
            f("memory.limit_in_bytes", "memory.max"),
            f("memory.soft_limit_in_bytes", "memory.high"),
            f("memory.memsw.limit_in_bytes", "memory.swap.max"),
        )
    }

    /// Applies memory limits in KiB. The swap limit of v1 counts memory
    /// plus swap and must stay at or above the hard limit, so the order of
    /// the writes depends on the direction of the change.
    pub fn apply_memory(
        &self,
        hard: Option<u64>,
        soft: Option<u64>,
        swap: Option<u64>,
    ) -> Result<()> {
        let file =
            |v1: &'static str, v2: &'static str| self.dir.join(if self.v2 { v2 } else { v1 });
        let hard_w = |k: u64| {
            write(
                &file("memory.limit_in_bytes", "memory.max"),
                &memory_bytes(k, self.v2),
            )
        };
        let swap_w = |k: u64| {
            write(
                &file("memory.memsw.limit_in_bytes", "memory.swap.max"),
                &memory_bytes(k, self.v2),
            )
        };
        let (old_hard, _, _) = self.memory();
        match (hard, swap) {
            (Some(h), Some(s)) if h > old_hard => {
                swap_w(s)?;
                hard_w(h)?;
            }
            (Some(h), Some(s)) => {
                hard_w(h)?;
                swap_w(s)?;
            }
            (Some(h), None) => hard_w(h)?,
            (None, Some(s)) => swap_w(s)?,
            (None, None) => {}
        }
        if let Some(s) = soft {
            write(
                &file("memory.soft_limit_in_bytes", "memory.high"),
                &memory_bytes(s, self.v2),
            )?;
        }
        Ok(())
    }
}
