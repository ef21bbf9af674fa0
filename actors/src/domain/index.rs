//! Lock-free read views of the domain registry. The `Registry` actor is the
//! only writer; connections read these maps directly, so lookups, listings
//! and state queries never wait behind a slow VM or a busy registry.

use std::sync::Arc;

use dashmap::DashMap;
use uuid::Uuid;

use qemud_protocol::remote::NonnullDomain;
use qemud_protocol::xdr::Uuid16;

use crate::error::Error;

/// `virDomainState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum DomainState {
    NoState = 0,
    Running = 1,
    Blocked = 2,
    Paused = 3,
    Shutdown = 4,
    Shutoff = 5,
    Crashed = 6,
    PmSuspended = 7,
}

impl DomainState {
    pub fn from_i32(v: i32) -> DomainState {
        match v {
            1 => DomainState::Running,
            2 => DomainState::Blocked,
            3 => DomainState::Paused,
            4 => DomainState::Shutdown,
            5 => DomainState::Shutoff,
            6 => DomainState::Crashed,
            7 => DomainState::PmSuspended,
            _ => DomainState::NoState,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DomainState::NoState => "no state",
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "in shutdown",
            DomainState::Shutoff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
        }
    }
}

/// State reasons (`virDomainRunningReason`, `virDomainShutoffReason`, ...).
pub mod reason {
    pub const RUNNING_BOOTED: i32 = 1;
    pub const RUNNING_UNPAUSED: i32 = 5;
    pub const PAUSED_USER: i32 = 1;
    pub const PAUSED_SHUTTING_DOWN: i32 = 8;
    pub const PAUSED_STARTING_UP: i32 = 11;
    pub const SHUTDOWN_USER: i32 = 1;
    pub const SHUTOFF_UNKNOWN: i32 = 0;
    pub const SHUTOFF_SHUTDOWN: i32 = 1;
    pub const SHUTOFF_DESTROYED: i32 = 2;
    pub const SHUTOFF_CRASHED: i32 = 3;
    pub const SHUTOFF_FAILED: i32 = 6;
    pub const SHUTOFF_DAEMON: i32 = 8;
}

/// A snapshot of one domain, replaced whole on every change.
#[derive(Clone, Debug)]
pub struct DomainView {
    pub name: String,
    pub uuid: Uuid,
    /// -1 while inactive, as libvirt reports it.
    pub id: i32,
    pub state: DomainState,
    pub reason: i32,
    pub persistent: bool,
    pub autostart: bool,
    /// The live definition differs from the persistent one.
    pub updated: bool,
    pub max_mem_kib: u64,
    pub memory_kib: u64,
    /// vCPUs online now.
    pub vcpus: u32,
    /// vCPUs the domain may have (`<vcpu>`).
    pub max_vcpus: u32,
    pub os_type: String,
    /// QEMU's pid while running, for CPU time.
    pub pid: Option<i32>,
    /// XML of the running (or only) definition.
    pub xml: Arc<str>,
    /// XML of the persistent definition, when it differs from `xml`.
    pub inactive_xml: Option<Arc<str>>,
}

impl DomainView {
    pub fn is_active(&self) -> bool {
        self.id >= 0
    }

    pub fn to_wire(&self) -> NonnullDomain {
        NonnullDomain {
            name: self.name.clone().into(),
            uuid: Uuid16(*self.uuid.as_bytes()),
            id: self.id,
        }
    }

    /// Nanoseconds of CPU QEMU has used, read from /proc.
    pub fn cpu_time_ns(&self) -> u64 {
        let Some(pid) = self.pid else { return 0 };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return 0;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        ticks * 1_000_000_000 / hz.max(1)
    }
}

#[derive(Default)]
pub struct DomainIndex {
    by_uuid: DashMap<Uuid, Arc<DomainView>>,
    by_name: DashMap<String, Uuid>,
    by_id: DashMap<i32, Uuid>,
}

impl DomainIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes a new view of a domain (registry only).
    pub fn publish(&self, view: DomainView) {
        let uuid = view.uuid;
        if let Some(old) = self.by_uuid.get(&uuid).map(|v| v.clone()) {
            if old.name != view.name {
                self.by_name.remove(&old.name);
            }
            if old.id >= 0 && old.id != view.id {
                self.by_id.remove(&old.id);
            }
        }
        self.by_name.insert(view.name.clone(), uuid);
        if view.id >= 0 {
            self.by_id.insert(view.id, uuid);
        }
        self.by_uuid.insert(uuid, Arc::new(view));
    }

    /// Forgets a domain (registry only).
    pub fn remove(&self, uuid: &Uuid) {
        if let Some((_, old)) = self.by_uuid.remove(uuid) {
            self.by_name.remove(&old.name);
            if old.id >= 0 {
                self.by_id.remove(&old.id);
            }
        }
    }

    pub fn get(&self, uuid: &Uuid) -> Option<Arc<DomainView>> {
        self.by_uuid.get(uuid).map(|v| v.clone())
    }

    pub fn by_name(&self, name: &str) -> Result<Arc<DomainView>, Error> {
        self.by_name
            .get(name)
            .and_then(|u| self.get(&u))
            .ok_or_else(|| Error::NoDomain(format!("no domain with matching name '{name}'")))
    }

    pub fn by_uuid(&self, uuid: &Uuid) -> Result<Arc<DomainView>, Error> {
        self.get(uuid)
            .ok_or_else(|| Error::NoDomain(format!("no domain with matching uuid '{uuid}'")))
    }

    pub fn by_id(&self, id: i32) -> Result<Arc<DomainView>, Error> {
        self.by_id
            .get(&id)
            .and_then(|u| self.get(&u))
            .ok_or_else(|| Error::NoDomain(format!("no domain with matching id {id}")))
    }

    /// Resolves a domain handle sent by a client, by UUID like libvirt's
    /// QEMU driver, naming the domain in the error.
    pub fn resolve(&self, dom: &NonnullDomain) -> Result<Arc<DomainView>, Error> {
        let uuid = Uuid::from_bytes(dom.uuid.0);
        self.get(&uuid).ok_or_else(|| {
            Error::NoDomain(format!(
                "no domain with matching uuid '{uuid}' ({})",
                dom.name
            ))
        })
    }

    /// Every domain, sorted by name for stable listings.
    pub fn all(&self) -> Vec<Arc<DomainView>> {
        let mut v: Vec<_> = self.by_uuid.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.by_uuid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uuid.is_empty()
    }
}

/// `virConnectListAllDomainsFlags` filtering.
pub fn list_filter(view: &DomainView, flags: u32) -> bool {
    const ACTIVE: u32 = 1;
    const INACTIVE: u32 = 2;
    const PERSISTENT: u32 = 4;
    const TRANSIENT: u32 = 8;
    const RUNNING: u32 = 16;
    const PAUSED: u32 = 32;
    const SHUTOFF: u32 = 64;
    const OTHER: u32 = 128;
    const MANAGEDSAVE: u32 = 256;
    const AUTOSTART: u32 = 1024;
    const NO_AUTOSTART: u32 = 2048;
    const HAS_SNAPSHOT: u32 = 4096;
    const HAS_CHECKPOINT: u32 = 16384;

    let pair = |yes: u32, no: u32, value: bool| {
        let f = flags & (yes | no);
        f == 0 || f == (yes | no) || (f == yes && value) || (f == no && !value)
    };
    if !pair(ACTIVE, INACTIVE, view.is_active()) {
        return false;
    }
    if !pair(PERSISTENT, TRANSIENT, view.persistent) {
        return false;
    }
    if !pair(AUTOSTART, NO_AUTOSTART, view.autostart) {
        return false;
    }
    // No managed save images, snapshots or checkpoints exist in qemud.
    if flags & (MANAGEDSAVE | HAS_SNAPSHOT | HAS_CHECKPOINT) != 0 {
        return false;
    }
    let state_flags = flags & (RUNNING | PAUSED | SHUTOFF | OTHER);
    if state_flags != 0 {
        let matches = match view.state {
            DomainState::Running => state_flags & RUNNING != 0,
            DomainState::Paused => state_flags & PAUSED != 0,
            DomainState::Shutoff => state_flags & SHUTOFF != 0,
            _ => state_flags & OTHER != 0,
        };
        if !matches {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, id: i32, state: DomainState) -> DomainView {
        DomainView {
            name: name.into(),
            uuid: Uuid::new_v4(),
            id,
            state,
            reason: 0,
            persistent: true,
            autostart: false,
            updated: false,
            max_mem_kib: 1024,
            memory_kib: 1024,
            vcpus: 1,
            max_vcpus: 1,
            os_type: "hvm".into(),
            pid: None,
            xml: Arc::from("<domain/>"),
            inactive_xml: None,
        }
    }

    #[test]
    fn publish_and_lookup() {
        let idx = DomainIndex::new();
        let v = view("a", 3, DomainState::Running);
        let u = v.uuid;
        idx.publish(v);
        assert_eq!(idx.by_name("a").unwrap().uuid, u);
        assert_eq!(idx.by_id(3).unwrap().uuid, u);
        // Stopping drops the id mapping.
        let mut stopped = view("a", -1, DomainState::Shutoff);
        stopped.uuid = u;
        idx.publish(stopped);
        assert!(idx.by_id(3).is_err());
        idx.remove(&u);
        assert!(idx.by_name("a").is_err());
        assert!(idx.is_empty());
    }

    #[test]
    fn list_flags() {
        let running = view("r", 1, DomainState::Running);
        let off = view("o", -1, DomainState::Shutoff);
        assert!(list_filter(&running, 1));
        assert!(!list_filter(&off, 1));
        assert!(list_filter(&off, 2));
        assert!(list_filter(&off, 1 | 2));
        assert!(list_filter(&running, 16));
        assert!(!list_filter(&running, 64));
        assert!(list_filter(&running, 4));
        assert!(!list_filter(&running, 8));
        assert!(list_filter(&running, 2048));
        assert!(!list_filter(&running, 1024));
        assert!(!list_filter(&running, 256));
    }
}
