//! The `Registry` actor owns every domain: definitions, persistence, state
//! transitions, the QEMU supervisors of running domains and the events those
//! transitions produce. It is the only writer of the lock-free
//! [`DomainIndex`](crate::domain::index::DomainIndex).
//!
//! Operations that wait on QEMU run as futures inside the actor, so the
//! registry keeps serving other domains meanwhile; a per-domain job marker
//! keeps two state changes of one domain from interleaving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{error, info, warn};
use uuid::Uuid;

use qemud_config::domain::{DomainDef, DomainXmlError, LiveXml};
use qemud_config::settings::Settings;

use crate::domain::cmdline::{build_command_line, Accel, LaunchPaths};
use crate::domain::index::{reason, DomainIndex, DomainState, DomainView};
use crate::domain::qemu::{
    self, Kill, LaunchSpec, Launched, QemuVm, QmpCommand, VmNotice, VmNoticeKind,
};
use crate::domain::qmp::QmpClient;
use crate::domain::store::{LiveRecord, Store};
use crate::error::{Error, Result};
use crate::events::{lifecycle as lc, Event, EventBus};
use crate::host::HostInfo;

/// How long an operation waits for another one on the same domain.
const JOB_WAIT: Duration = Duration::from_secs(30);

/// Everything that changes a domain, sent by connections.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<DomainView>>")]
pub enum DomainOp {
    Define { xml: String },
    CreateXml { xml: String, paused: bool },
    Undefine { uuid: Uuid },
    Start { uuid: Uuid, paused: bool },
    Shutdown { uuid: Uuid },
    Reboot { uuid: Uuid },
    Reset { uuid: Uuid },
    Destroy { uuid: Uuid, graceful: bool },
    Suspend { uuid: Uuid },
    Resume { uuid: Uuid },
    SetAutostart { uuid: Uuid, on: bool },
}

impl DomainOp {
    fn target(&self) -> Option<Uuid> {
        match self {
            DomainOp::Define { .. } | DomainOp::CreateXml { .. } => None,
            DomainOp::Undefine { uuid }
            | DomainOp::Start { uuid, .. }
            | DomainOp::Shutdown { uuid }
            | DomainOp::Reboot { uuid }
            | DomainOp::Reset { uuid }
            | DomainOp::Destroy { uuid, .. }
            | DomainOp::Suspend { uuid }
            | DomainOp::Resume { uuid }
            | DomainOp::SetAutostart { uuid, .. } => Some(*uuid),
        }
    }
}

struct Live {
    id: i32,
    run: u64,
    def: DomainDef,
    vm: Addr<QemuVm>,
    pid: i32,
    /// With `pid`, identifies the process across pid reuse.
    start_time: Option<u64>,
    qmp_socket: std::path::PathBuf,
    got_shutdown: bool,
    destroying: bool,
    /// `virsh reboot` asked the guest to power down: its next guest-initiated
    /// SHUTDOWN becomes a reset. Cleared, as libvirt does, by a reset (ours
    /// or the guest's own RESET event), by `shutdown` and by destroy, so an
    /// ignored reboot cannot turn a later power-off into a reset. Kept in
    /// the live record across daemon restarts.
    fake_reboot: bool,
    pty_paths: Vec<String>,
    /// The VNC port QEMU listens on, from query-vnc.
    vnc_port: Option<u16>,
}

struct Entry {
    /// Persistent definition, or the transient one for transient domains.
    def: DomainDef,
    persistent: bool,
    autostart: bool,
    /// The persistent definition changed while running.
    updated: bool,
    state: DomainState,
    reason: i32,
    live: Option<Live>,
    /// The state-changing operation in progress, if any.
    job: Option<&'static str>,
    /// Set while the QEMU a previous daemon left running is re-attached.
    recovering: Option<Recovering>,
    /// The pid of the QEMU being started (0 until spawned), while the
    /// start job runs.
    starting: Option<Arc<std::sync::atomic::AtomicI32>>,
}

/// A running domain as its live record describes it, shown (running, with
/// its id and pid) until its QEMU is re-attached or known to be gone.
struct Recovering {
    id: i32,
    pid: i32,
    /// The recorded QEMU, known by pid and start time.
    identity: qemu::ProcessIdentity,
    def: DomainDef,
    /// A destroy killed the QEMU meanwhile: its end is reported as such.
    destroyed: bool,
}

/// The job name of a domain being re-attached after a restart.
const REATTACH_JOB: &str = "reattach";
/// How long a SIGKILLed QEMU may take to vanish before recovery gives up
/// waiting (and reports the domain off regardless).
const RECOVERY_KILL_WAIT: Duration = Duration::from_secs(5);

impl Entry {
    /// A shut-off domain as it is first known to the registry.
    fn inactive(def: DomainDef, persistent: bool, autostart: bool) -> Entry {
        Entry {
            def,
            persistent,
            autostart,
            updated: false,
            state: DomainState::Shutoff,
            reason: reason::SHUTOFF_UNKNOWN,
            live: None,
            job: None,
            recovering: None,
            starting: None,
        }
    }
}

pub struct Registry {
    settings: Arc<Settings>,
    host: Arc<HostInfo>,
    store: Store,
    index: Arc<DomainIndex>,
    events: Addr<EventBus>,
    domains: HashMap<Uuid, Entry>,
    next_id: i32,
    next_run: u64,
}

/// The TCP port of a `query-vnc` answer (`"service": "5901"`).
fn vnc_port_of(v: &serde_json::Value) -> Option<u16> {
    if v.get("enabled").and_then(|e| e.as_bool()) != Some(true) {
        return None;
    }
    v.get("service")?.as_str()?.parse().ok()
}

fn xml_error(e: DomainXmlError) -> Error {
    match e {
        DomainXmlError::Unsupported(m) => Error::ConfigUnsupported(m),
        other => Error::Xml(other.to_string()),
    }
}

impl Registry {
    pub fn new(
        settings: Arc<Settings>,
        host: Arc<HostInfo>,
        store: Store,
        index: Arc<DomainIndex>,
        events: Addr<EventBus>,
    ) -> Registry {
        Registry {
            settings,
            host,
            store,
            index,
            events,
            domains: HashMap::new(),
            next_id: 1,
            next_run: 1,
        }
    }

    fn view(&self, uuid: &Uuid) -> Result<Arc<DomainView>> {
        self.index.by_uuid(uuid)
    }

    /// Rebuilds and publishes the index view of a domain.
    fn publish(&self, uuid: &Uuid) -> Arc<DomainView> {
        let Some(e) = self.domains.get(uuid) else {
            self.index.remove(uuid);
            return Arc::new(placeholder_view(*uuid));
        };
        let recovering = e.recovering.as_ref().filter(|_| e.live.is_none());
        let running_def = e
            .live
            .as_ref()
            .map(|l| &l.def)
            .or(recovering.map(|r| &r.def))
            .unwrap_or(&e.def);
        let live_xml = e
            .live
            .as_ref()
            .map(|l| LiveXml {
                id: l.id,
                pty_paths: l.pty_paths.clone(),
                vnc_port: l.vnc_port,
            })
            .or(recovering.map(|r| LiveXml {
                id: r.id,
                pty_paths: Vec::new(),
                vnc_port: None,
            }));
        let active = e.live.is_some() || recovering.is_some();
        let xml: Arc<str> = Arc::from(running_def.to_xml(live_xml.as_ref()));
        let inactive_xml = (active && e.persistent).then(|| Arc::from(e.def.to_xml(None)));
        let view = DomainView {
            name: e.def.name.clone(),
            uuid: *uuid,
            id: e
                .live
                .as_ref()
                .map(|l| l.id)
                .or(recovering.map(|r| r.id))
                .unwrap_or(-1),
            state: e.state,
            reason: e.reason,
            persistent: e.persistent,
            autostart: e.autostart,
            updated: e.updated,
            max_mem_kib: running_def.memory_kib,
            memory_kib: running_def.current_memory_kib,
            vcpus: running_def.current_vcpus,
            max_vcpus: running_def.vcpus,
            os_type: "hvm".into(),
            pid: e.live.as_ref().map(|l| l.pid).or(recovering.map(|r| r.pid)),
            xml,
            inactive_xml,
        };
        self.index.publish(view);
        self.index
            .get(uuid)
            .unwrap_or_else(|| Arc::new(placeholder_view(*uuid)))
    }

    fn emit(
        &self,
        uuid: &Uuid,
        make: impl FnOnce(&qemud_protocol::remote::NonnullDomain) -> Result<Event>,
    ) {
        let Some(v) = self.index.get(uuid) else {
            return;
        };
        match make(&v.to_wire()) {
            Ok(ev) => self.events.do_send(ev),
            Err(e) => warn!("cannot build event: {e}"),
        }
    }

    fn lifecycle(&self, uuid: &Uuid, event: i32, detail: i32) {
        self.emit(uuid, |d| Event::lifecycle(d, event, detail));
    }

    fn entry(&mut self, uuid: &Uuid) -> Result<&mut Entry> {
        self.domains
            .get_mut(uuid)
            .ok_or_else(|| Error::NoDomain(format!("no domain with matching uuid '{uuid}'")))
    }

    fn running(&mut self, uuid: &Uuid) -> Result<&mut Entry> {
        let e = self.entry(uuid)?;
        if e.live.is_none() {
            return Err(Error::OperationInvalid("domain is not running".into()));
        }
        Ok(e)
    }

    fn vm(&mut self, uuid: &Uuid) -> Result<Addr<QemuVm>> {
        let e = self.running(uuid)?;
        e.live
            .as_ref()
            .map(|l| l.vm.clone())
            .ok_or_else(|| Error::OperationInvalid("domain is not running".into()))
    }

    fn check_clash(&self, def: &DomainDef) -> Result<()> {
        for (uuid, e) in &self.domains {
            if *uuid == def.uuid && e.def.name != def.name {
                return Err(Error::DomainExists(format!(
                    "domain '{}' is already defined with uuid {}",
                    e.def.name, uuid
                )));
            }
            if *uuid != def.uuid && e.def.name == def.name {
                return Err(Error::DomainExists(format!(
                    "domain '{}' already exists with uuid {}",
                    e.def.name, uuid
                )));
            }
        }
        Ok(())
    }

    fn define(&mut self, xml: &str) -> Result<Arc<DomainView>> {
        let def = DomainDef::parse(xml).map_err(xml_error)?;
        self.check_clash(&def)?;
        let uuid = def.uuid;
        self.store.save_definition(&uuid, &def.to_xml(None))?;
        let detail = match self.domains.get_mut(&uuid) {
            Some(e) => {
                let was_persistent = e.persistent;
                e.updated = e.live.is_some();
                e.def = def;
                e.persistent = true;
                if was_persistent {
                    lc::DEFINED_UPDATED
                } else {
                    lc::DEFINED_ADDED
                }
            }
            None => {
                self.domains.insert(uuid, Entry::inactive(def, true, false));
                lc::DEFINED_ADDED
            }
        };
        let v = self.publish(&uuid);
        info!(domain = %v.name, "defined domain");
        self.lifecycle(&uuid, lc::DEFINED, detail);
        Ok(v)
    }

    fn undefine(&mut self, uuid: &Uuid) -> Result<Arc<DomainView>> {
        let e = self.entry(uuid)?;
        if !e.persistent {
            return Err(Error::OperationInvalid(
                "cannot undefine transient domain".into(),
            ));
        }
        self.store.delete_definition(uuid)?;
        let e = self.entry(uuid)?;
        e.persistent = false;
        e.autostart = false;
        e.updated = false;
        let active = e.live.is_some();
        if let Some(live) = &e.live {
            // A running domain becomes transient with its live definition.
            e.def = live.def.clone();
        }
        let v = self.publish(uuid);
        self.lifecycle(uuid, lc::UNDEFINED, lc::UNDEFINED_REMOVED);
        if !active {
            self.domains.remove(uuid);
            self.index.remove(uuid);
        }
        info!(domain = %v.name, "undefined domain");
        Ok(v)
    }

    fn set_autostart(&mut self, uuid: &Uuid, on: bool) -> Result<Arc<DomainView>> {
        let e = self.entry(uuid)?;
        if !e.persistent {
            return Err(Error::OperationInvalid(
                "cannot set autostart for transient domain".into(),
            ));
        }
        self.store.set_autostart(uuid, on)?;
        self.entry(uuid)?.autostart = on;
        Ok(self.publish(uuid))
    }

    /// Prepares a start: checks, command line, paths. Marks the job.
    /// `live_def` replaces the stored definition for this run only
    /// (`virDomainCreateXML` of a domain that is also defined).
    fn prepare_start(
        &mut self,
        uuid: &Uuid,
        live_def: Option<DomainDef>,
    ) -> Result<(LaunchSpec, DomainDef)> {
        let kvm = self.host.kvm;
        let default_emulator = self.host.emulator.clone();
        let qmp_timeout = Duration::from_millis(self.settings.qmp_timeout_ms);
        let qmp_socket = self.store.qmp_socket(uuid);
        let pidfile = self.store.pidfile(uuid);
        let e = self.entry(uuid)?;
        if e.live.is_some() {
            return Err(Error::OperationInvalid("domain is already running".into()));
        }
        let mut def = live_def.unwrap_or_else(|| e.def.clone());
        crate::storage::resolve_volume_disks(&mut def)?;
        let accel = if def.domain_type == "kvm" {
            if !kvm {
                return Err(Error::ConfigUnsupported(
                    "Domain requires KVM, but it is not available. Check that virtualization is enabled in the host BIOS, and host configuration is setup to load the kvm modules.".into(),
                ));
            }
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        let emulator = def
            .devices
            .emulator
            .clone()
            .map(std::path::PathBuf::from)
            .unwrap_or(default_emulator);
        if qmp_socket.as_os_str().len() >= 108 {
            return Err(Error::Internal(format!(
                "monitor socket path '{}' is too long for a UNIX socket",
                qmp_socket.display()
            )));
        }
        let log_file = self.store.log_file(&def.name);
        let paths = LaunchPaths {
            qmp_socket: qmp_socket.clone(),
            pidfile,
            log_file: log_file.clone(),
        };
        let argv = build_command_line(&def, &emulator.to_string_lossy(), accel, &paths)
            .map_err(|e| Error::ConfigUnsupported(e.to_string()))?;
        Ok((
            LaunchSpec {
                emulator,
                argv,
                qmp_socket,
                log_file,
                qmp_timeout,
                spawned_pid: Arc::default(),
            },
            def,
        ))
    }

    /// Finishes a successful launch: supervisor, id, state, live record.
    fn started(
        &mut self,
        uuid: Uuid,
        def: DomainDef,
        launched: Launched,
        paused: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Arc<DomainView>> {
        crate::domain::tuning::apply_at_start(launched.pid, launched.qmp.clone(), uuid, &def);
        let run = self.next_run;
        self.next_run += 1;
        let id = self.next_id;
        self.next_id += 1;
        let pid = launched.pid;
        let def_has_vnc = def.devices.graphics.is_some();
        let start_time = launched.identity.map(|p| p.start_time);
        let qmp = launched.qmp.clone();
        let vm = QemuVm::start(launched, uuid, run, ctx.address().recipient());
        let qmp_socket = self.store.qmp_socket(&uuid);
        let Some(e) = self.domains.get_mut(&uuid) else {
            // Undefined while starting (not possible with the job marker,
            // but never leave a stray QEMU behind).
            vm.do_send(Kill { graceful: false });
            return Err(Error::NoDomain(format!(
                "no domain with matching uuid '{uuid}'"
            )));
        };
        e.live = Some(Live {
            id,
            run,
            def,
            vm,
            pid,
            start_time,
            qmp_socket: qmp_socket.clone(),
            got_shutdown: false,
            destroying: false,
            fake_reboot: false,
            pty_paths: Vec::new(),
            vnc_port: None,
        });
        if paused {
            e.state = DomainState::Paused;
            e.reason = reason::PAUSED_USER;
        } else {
            e.state = DomainState::Running;
            e.reason = reason::RUNNING_BOOTED;
        }
        self.save_live(&uuid);
        let v = self.publish(&uuid);
        info!(domain = %v.name, id, pid, "domain started");
        self.lifecycle(&uuid, lc::STARTED, lc::STARTED_BOOTED);
        if paused {
            self.lifecycle(&uuid, lc::SUSPENDED, lc::SUSPENDED_PAUSED);
        }
        self.query_runtime_devices(uuid, run, qmp, def_has_vnc, ctx);
        Ok(v)
    }

    /// Serial pty paths and the VNC port QEMU picked (autoport) are only
    /// known once QEMU runs: asked after a start and after a re-attach.
    fn query_runtime_devices(
        &mut self,
        uuid: Uuid,
        run: u64,
        qmp: QmpClient,
        wants_vnc: bool,
        ctx: &mut Context<Self>,
    ) {
        let fut = async move {
            let chardevs = qmp.execute("query-chardev", None).await;
            let vnc = if wants_vnc {
                qmp.execute("query-vnc", None).await.ok()
            } else {
                None
            };
            (chardevs, vnc)
        };
        ctx.spawn(fut.into_actor(self).map(move |(res, vnc), act, _| {
            let vnc_port = vnc.as_ref().and_then(vnc_port_of);
            let mut ptys: Vec<(String, String)> = res
                .ok()
                .as_ref()
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let label = c.get("label")?.as_str()?;
                    let file = c.get("filename")?.as_str()?.strip_prefix("pty:")?;
                    Some((label.to_owned(), file.to_owned()))
                })
                .collect();
            ptys.sort();
            if let Some(live) = act.domains.get_mut(&uuid).and_then(|e| e.live.as_mut()) {
                if live.run == run {
                    live.pty_paths = ptys.into_iter().map(|(_, f)| f).collect();
                    live.vnc_port = vnc_port;
                    act.publish(&uuid);
                }
            }
        }));
    }

    fn save_live(&self, uuid: &Uuid) {
        let Some(e) = self.domains.get(uuid) else {
            return;
        };
        let Some(l) = &e.live else { return };
        let rec = LiveRecord {
            uuid: *uuid,
            name: e.def.name.clone(),
            id: l.id,
            pid: l.pid,
            start_time: l.start_time,
            qmp_socket: l.qmp_socket.clone(),
            xml: l.def.to_xml(None),
            persistent: e.persistent,
            got_shutdown: l.got_shutdown,
            paused: e.state == DomainState::Paused,
            fake_reboot: l.fake_reboot,
        };
        if let Err(e) = self.store.save_live(&rec) {
            error!("cannot record running domain: {e}");
        }
    }

    /// Moves a domain to shut off, once per run.
    fn stopped(&mut self, uuid: &Uuid, run: u64, state_reason: i32, event_detail: i32) {
        let Some(e) = self.domains.get_mut(uuid) else {
            return;
        };
        if e.live.as_ref().map(|l| l.run) != Some(run) {
            return;
        }
        if let Some(l) = e.live.take() {
            // The guest's taps go with it.
            actix::spawn(async move { crate::network::delete_taps(&l.def).await });
        }
        e.state = DomainState::Shutoff;
        e.reason = state_reason;
        e.updated = false;
        let persistent = e.persistent;
        self.store.delete_live(uuid);
        let v = self.publish(uuid);
        info!(domain = %v.name, reason = state_reason, "domain stopped");
        self.lifecycle(uuid, lc::STOPPED, event_detail);
        if !persistent {
            self.domains.remove(uuid);
            self.index.remove(uuid);
        }
    }

    fn set_state(&mut self, uuid: &Uuid, state: DomainState, why: i32) -> bool {
        let Some(e) = self.domains.get_mut(uuid) else {
            return false;
        };
        if e.state == state {
            // Same state: keep the reason that brought the domain there.
            return false;
        }
        let paused_changed = (e.state == DomainState::Paused) != (state == DomainState::Paused);
        e.state = state;
        e.reason = why;
        if paused_changed && e.live.is_some() {
            // A restarted daemon shows this until it can ask QEMU.
            self.save_live(uuid);
        }
        self.publish(uuid);
        true
    }

    fn on_qmp_event(&mut self, uuid: Uuid, run: u64, name: &str, data: &serde_json::Value) {
        let Some(e) = self.domains.get_mut(&uuid) else {
            return;
        };
        if e.live.as_ref().is_none_or(|l| l.run != run) {
            return;
        }
        // Every event also goes, raw, to QEMU monitor event subscribers.
        self.emit(&uuid, |d| crate::qemu_program::monitor_event(d, name, data));
        let Some(live) = self.domains.get_mut(&uuid).and_then(|e| e.live.as_mut()) else {
            return;
        };
        match name {
            "SHUTDOWN" => {
                let guest = data.get("guest").and_then(|g| g.as_bool()).unwrap_or(false);
                if live.fake_reboot && guest {
                    // virsh reboot: the guest shut down on our request; turn
                    // it into a reset instead of letting it stop.
                    live.fake_reboot = false;
                    let vm = live.vm.clone();
                    self.save_live(&uuid);
                    actix_rt::spawn(async move {
                        for cmd in ["system_reset", "cont"] {
                            let r = vm
                                .send(QmpCommand {
                                    command: cmd,
                                    arguments: None,
                                })
                                .await;
                            if !matches!(r, Ok(Ok(_))) {
                                warn!("fake reboot: {cmd} failed: {r:?}");
                            }
                        }
                    });
                    return;
                }
                if live.destroying {
                    // Our own SIGTERM: the stop is reported as destroyed.
                    return;
                }
                live.got_shutdown = true;
                let vm = live.vm.clone();
                self.save_live(&uuid);
                if self.set_state(&uuid, DomainState::Shutdown, reason::SHUTDOWN_USER) {
                    let detail = if guest {
                        lc::SHUTDOWN_GUEST
                    } else {
                        lc::SHUTDOWN_HOST
                    };
                    self.lifecycle(&uuid, lc::SHUTDOWN, detail);
                }
                // QEMU runs with -no-shutdown: tell it to exit now.
                actix_rt::spawn(async move {
                    let r = vm
                        .send(QmpCommand {
                            command: "quit",
                            arguments: None,
                        })
                        .await;
                    if !matches!(r, Ok(Ok(_))) {
                        vm.do_send(Kill { graceful: false });
                    }
                });
            }
            "STOP" => {
                if live.got_shutdown || live.destroying {
                    return;
                }
                if self.set_state(&uuid, DomainState::Paused, reason::PAUSED_USER) {
                    self.lifecycle(&uuid, lc::SUSPENDED, lc::SUSPENDED_PAUSED);
                }
            }
            "RESUME" => {
                if live.got_shutdown {
                    return;
                }
                if self.set_state(&uuid, DomainState::Running, reason::RUNNING_UNPAUSED) {
                    self.lifecycle(&uuid, lc::RESUMED, lc::RESUMED_UNPAUSED);
                }
            }
            "RESET" => {
                if std::mem::take(&mut live.fake_reboot) {
                    self.save_live(&uuid);
                }
                self.emit(&uuid, Event::reboot)
            }
            "VSERPORT_CHANGE" if data.get("id").and_then(|i| i.as_str()) == Some("channel0") => {
                let open = data.get("open").and_then(|o| o.as_bool()).unwrap_or(false);
                self.emit(&uuid, |d| crate::domain::agent::lifecycle_event(d, open));
            }
            "RTC_CHANGE" => {
                let offset = data.get("offset").and_then(|o| o.as_i64()).unwrap_or(0);
                self.emit(&uuid, |d| Event::rtc_change(d, offset));
            }
            "WATCHDOG" => {
                let action = match data.get("action").and_then(|a| a.as_str()).unwrap_or("") {
                    "pause" => 1,
                    "reset" => 2,
                    "poweroff" => 3,
                    "shutdown" => 4,
                    "debug" => 5,
                    "inject-nmi" => 6,
                    _ => 0,
                };
                self.emit(&uuid, |d| Event::watchdog(d, action));
            }
            "BLOCK_IO_ERROR" => {
                let dev = data
                    .get("device")
                    .and_then(|a| a.as_str())
                    .unwrap_or("")
                    .to_owned();
                let action = match data.get("action").and_then(|a| a.as_str()) {
                    Some("stop") => 1,
                    Some("report") => 2,
                    _ => 0,
                };
                let reason = if data.get("nospace").and_then(|n| n.as_bool()) == Some(true) {
                    "enospc"
                } else {
                    "eio"
                };
                // libvirt sends both the plain and the with-reason event.
                self.emit(&uuid, |d| Event::io_error(d, "", &dev, action));
                self.emit(&uuid, |d| {
                    Event::io_error_reason(d, "", &dev, action, reason)
                });
            }
            "DEVICE_DELETED" => {
                if let Some(dev) = data.get("device").and_then(|a| a.as_str()) {
                    let dev = dev.to_owned();
                    self.emit(&uuid, |d| Event::device_removed(d, &dev));
                }
            }
            "GUEST_PANICKED" => {
                // VIR_DOMAIN_EVENT_CRASHED / PANICKED.
                self.lifecycle(&uuid, 8, 0);
            }
            "BALLOON_CHANGE" => self.balloon_changed(&uuid, data),
            _ => {}
        }
    }

    fn on_exit(&mut self, uuid: Uuid, run: u64, how: &str) {
        let Some(live) = self.domains.get(&uuid).and_then(|e| e.live.as_ref()) else {
            return;
        };
        if live.run != run {
            return;
        }
        let (state_reason, detail) = if live.destroying {
            (reason::SHUTOFF_DESTROYED, lc::STOPPED_DESTROYED)
        } else if live.got_shutdown {
            (reason::SHUTOFF_SHUTDOWN, lc::STOPPED_SHUTDOWN)
        } else {
            warn!(%uuid, "QEMU ended unexpectedly: {how}");
            (reason::SHUTOFF_CRASHED, lc::STOPPED_FAILED)
        };
        self.stopped(&uuid, run, state_reason, detail);
    }

    /// Loads the saved definitions and starts re-attaching to the QEMUs a
    /// previous daemon left running. The re-attachments run concurrently,
    /// each with its own deadline, while the registry already serves; a
    /// domain being re-attached is shown running (it is, as far as anyone
    /// knows) and its operations are refused with a clear error meanwhile.
    fn recover(&mut self, ctx: &mut Context<Self>) {
        for (uuid, xml, autostart) in self.store.load_definitions() {
            match DomainDef::parse(&xml) {
                Ok(def) if def.uuid == uuid => {
                    self.domains
                        .insert(uuid, Entry::inactive(def, true, autostart));
                    self.publish(&uuid);
                }
                Ok(_) => error!(%uuid, "saved definition has another uuid; ignored"),
                Err(e) => error!(%uuid, "saved definition is invalid: {e}"),
            }
        }
        let records = self.store.load_live();
        for rec in &records {
            self.next_id = self.next_id.max(rec.id + 1);
        }
        // A QEMU with a pid file but no live record was being started when
        // the previous daemon died: nobody asked for it to run, so it goes.
        // (The directory lock guarantees no live daemon is starting it.)
        for (uuid, pid) in self.store.pidfiles() {
            if records.iter().any(|r| r.uuid == uuid) {
                continue;
            }
            if let Some(qemu) = qemu::pidfile_qemu(pid, &self.store.pidfile(&uuid), &uuid) {
                warn!(%uuid, pid, "stopping QEMU left over from an interrupted start");
                qemu.signal(nix::sys::signal::Signal::SIGKILL);
                // The domain is listed shut off: make that true first.
                let until = Instant::now() + Duration::from_secs(1);
                while qemu::pid_alive(qemu.pid) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            self.store.delete_live(&uuid);
        }
        let deadline = Duration::from_millis(self.settings.qmp_timeout_ms);
        for rec in records {
            let Some(identity) = qemu::recorded_qemu(rec.pid, rec.start_time, &rec.uuid) else {
                info!(domain = %rec.name, "QEMU exited while the daemon was down");
                self.store.delete_live(&rec.uuid);
                // Its taps outlived it.
                if let Ok(def) = DomainDef::parse(&rec.xml) {
                    actix::spawn(async move { crate::network::delete_taps(&def).await });
                }
                if let Some(e) = self.domains.get_mut(&rec.uuid) {
                    e.reason = reason::SHUTOFF_DAEMON;
                    self.publish(&rec.uuid);
                }
                continue;
            };
            let def = match DomainDef::parse(&rec.xml) {
                Ok(d) => d,
                Err(e) => {
                    error!(domain = %rec.name, "cannot re-read running definition: {e}");
                    continue;
                }
            };
            let entry = self
                .domains
                .entry(rec.uuid)
                .or_insert_with(|| Entry::inactive(def.clone(), false, false));
            entry.job = Some(REATTACH_JOB);
            entry.state = if rec.got_shutdown {
                DomainState::Shutdown
            } else if rec.paused {
                DomainState::Paused
            } else {
                DomainState::Running
            };
            entry.reason = 0;
            entry.recovering = Some(Recovering {
                id: rec.id,
                pid: rec.pid,
                identity,
                def: def.clone(),
                destroyed: false,
            });
            self.publish(&rec.uuid);
            let rec2 = rec.clone();
            let fut = async move {
                // One deadline for the whole re-attachment of this domain;
                // the others run alongside and are not held up by it.
                let attach = async {
                    let launched = qemu::attach(identity, &rec2.qmp_socket, deadline).await?;
                    let status = launched.qmp.execute("query-status", None).await.ok();
                    Ok::<_, Error>((launched, status))
                };
                match tokio::time::timeout(deadline, attach).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout("QEMU monitor did not answer in time".into())),
                }
            };
            ctx.spawn(
                fut.into_actor(self)
                    .then(move |res, act, ctx| act.reattached(rec, identity, def, res, ctx)),
            );
        }
    }

    /// Finishes the re-attachment of one domain: supervise it, or, when
    /// its monitor cannot be reached, kill the QEMU (nothing could control
    /// it) and report the domain off once the process is really gone.
    fn reattached(
        &mut self,
        rec: LiveRecord,
        identity: qemu::ProcessIdentity,
        def: DomainDef,
        res: Result<(Launched, Option<serde_json::Value>)>,
        ctx: &mut Context<Self>,
    ) -> std::pin::Pin<Box<dyn ActorFuture<Self, Output = ()>>> {
        let uuid = rec.uuid;
        let done = || -> std::pin::Pin<Box<dyn ActorFuture<Self, Output = ()>>> {
            Box::pin(fut::ready(()))
        };
        if !self.domains.contains_key(&uuid) {
            return done();
        }
        let (launched, status) = match res {
            Ok(x) => x,
            Err(err) => {
                error!(domain = %rec.name, "cannot re-attach to QEMU pid {}: {err}", rec.pid);
                // A QEMU we cannot control must not linger unseen.
                let pid = identity.pid;
                identity.signal(nix::sys::signal::Signal::SIGKILL);
                let destroyed = self
                    .domains
                    .get(&uuid)
                    .and_then(|e| e.recovering.as_ref())
                    .is_some_and(|r| r.destroyed);
                let gone = async move {
                    let until = Instant::now() + RECOVERY_KILL_WAIT;
                    while qemu::pid_alive(pid) && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                return Box::pin(gone.into_actor(self).map(move |_, act, _| {
                    act.store.delete_live(&uuid);
                    let Some(e) = act.domains.get_mut(&uuid) else {
                        return;
                    };
                    e.job = None;
                    e.recovering = None;
                    e.state = DomainState::Shutoff;
                    // Otherwise libvirt's reason when the monitor of a QEMU
                    // run with -no-shutdown cannot be reached again.
                    let (why, detail) = if destroyed {
                        (reason::SHUTOFF_DESTROYED, lc::STOPPED_DESTROYED)
                    } else {
                        (reason::SHUTOFF_CRASHED, lc::STOPPED_FAILED)
                    };
                    e.reason = why;
                    let persistent = e.persistent;
                    act.publish(&uuid);
                    act.lifecycle(&uuid, lc::STOPPED, detail);
                    if !persistent {
                        act.domains.remove(&uuid);
                        act.index.remove(&uuid);
                    }
                }));
            }
        };
        let run = self.next_run;
        self.next_run += 1;
        let pid = launched.pid;
        let qmp = launched.qmp.clone();
        let wants_vnc = def.devices.graphics.is_some();
        let vm = QemuVm::start(launched, uuid, run, ctx.address().recipient());
        let status = status
            .as_ref()
            .and_then(|s| s.get("status"))
            .and_then(|s| s.as_str())
            .unwrap_or("running")
            .to_owned();
        let Some(e) = self.domains.get_mut(&uuid) else {
            // Checked at the top; nothing in between removes entries.
            return done();
        };
        e.job = None;
        // Killed by a destroy after the monitor answered: the exit the
        // watcher reports is that destroy's.
        let destroying = e.recovering.take().is_some_and(|r| r.destroyed);
        let got_shutdown = rec.got_shutdown || status == "shutdown";
        e.live = Some(Live {
            id: rec.id,
            run,
            def,
            vm: vm.clone(),
            pid,
            start_time: Some(identity.start_time),
            qmp_socket: rec.qmp_socket.clone(),
            got_shutdown,
            destroying,
            fake_reboot: rec.fake_reboot,
            pty_paths: Vec::new(),
            vnc_port: None,
        });
        (e.state, e.reason) = match status.as_str() {
            "paused" | "prelaunch" => (DomainState::Paused, reason::PAUSED_USER),
            "shutdown" => (DomainState::Shutdown, reason::SHUTDOWN_USER),
            _ => (DomainState::Running, reason::RUNNING_BOOTED),
        };
        self.publish(&uuid);
        info!(domain = %rec.name, pid, id = rec.id, %status, "re-attached to running domain");
        self.query_runtime_devices(uuid, run, qmp, wants_vnc, ctx);
        if got_shutdown {
            vm.do_send(QmpCommand {
                command: "quit",
                arguments: None,
            });
        }
        done()
    }

    fn autostart(&mut self, ctx: &mut Context<Self>) {
        let due: Vec<Uuid> = self
            .domains
            .iter()
            .filter(|(_, e)| e.autostart && e.live.is_none() && e.job.is_none())
            .map(|(u, _)| *u)
            .collect();
        for uuid in due {
            let addr = ctx.address();
            actix_rt::spawn(async move {
                match addr
                    .send(DomainOp::Start {
                        uuid,
                        paused: false,
                    })
                    .await
                {
                    Ok(Ok(v)) => info!(domain = %v.name, "autostarted domain"),
                    Ok(Err(e)) => error!(%uuid, "autostart failed: {e}"),
                    Err(e) => error!(%uuid, "autostart failed: {e}"),
                }
            });
        }
    }

    /// Parses `xml` and checks it against its emulator (machine type,
    /// arch, virt type), as libvirt does before a define or a create.
    fn validated(&self, xml: &str) -> impl ActorFuture<Self, Output = Result<()>> {
        let host = self.host.clone();
        let parsed = DomainDef::parse(xml).map_err(xml_error);
        fut::wrap_future(async move { host.validate_definition(&parsed?).await })
    }

    fn create_xml(
        &mut self,
        xml: String,
        paused: bool,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let ready =
            |r: Result<Arc<DomainView>>| -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
                Box::pin(fut::ready(r))
            };
        let def = match DomainDef::parse(&xml).map_err(xml_error) {
            Ok(d) => d,
            Err(e) => return ready(Err(e)),
        };
        if let Err(e) = self.check_clash(&def) {
            return ready(Err(e));
        }
        let uuid = def.uuid;
        if let Some(e) = self.domains.get(&uuid) {
            if e.live.is_some() || e.job.is_some() {
                return ready(Err(Error::OperationInvalid(format!(
                    "domain '{}' is already active",
                    def.name
                ))));
            }
        }
        // A transient domain exists only while it runs: it is entered
        // now and removed again if the start fails.
        let existed = self.domains.contains_key(&uuid);
        let live_def = existed.then(|| def.clone());
        if !existed {
            self.domains
                .insert(uuid, Entry::inactive(def, false, false));
        }
        let f = self.start(uuid, paused, live_def, ctx);
        Box::pin(f.map(move |res, act, _| {
            if res.is_err() && !existed {
                act.domains.remove(&uuid);
                act.index.remove(&uuid);
            }
            res
        }))
    }

    fn run_op(
        &mut self,
        op: DomainOp,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let ready =
            |r: Result<Arc<DomainView>>| -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
                Box::pin(fut::ready(r))
            };
        match op {
            // libvirt checks a definition against its emulator before
            // storing or starting anything.
            DomainOp::Define { xml } => Box::pin(
                self.validated(&xml)
                    .map(move |res, act: &mut Self, _| res.and_then(|_| act.define(&xml))),
            ),
            DomainOp::Undefine { uuid } => ready(self.undefine(&uuid)),
            DomainOp::SetAutostart { uuid, on } => ready(self.set_autostart(&uuid, on)),
            DomainOp::CreateXml { xml, paused } => Box::pin(self.validated(&xml).then(
                move |res, act: &mut Self, ctx| match res {
                    Ok(()) => act.create_xml(xml, paused, ctx),
                    Err(e) => Box::pin(fut::ready(Err(e))),
                },
            )),
            DomainOp::Start { uuid, paused } => self.start(uuid, paused, None, ctx),
            DomainOp::Shutdown { uuid } => {
                self.qmp_op(uuid, "system_powerdown", |l| l.fake_reboot = false)
            }
            DomainOp::Reboot { uuid } => {
                self.qmp_op(uuid, "system_powerdown", |l| l.fake_reboot = true)
            }
            DomainOp::Reset { uuid } => {
                self.qmp_op(uuid, "system_reset", |l| l.fake_reboot = false)
            }
            DomainOp::Suspend { uuid } => self.cpu_op(
                uuid,
                "stop",
                (DomainState::Paused, reason::PAUSED_USER),
                (lc::SUSPENDED, lc::SUSPENDED_PAUSED),
            ),
            DomainOp::Resume { uuid } => self.cpu_op(
                uuid,
                "cont",
                (DomainState::Running, reason::RUNNING_UNPAUSED),
                (lc::RESUMED, lc::RESUMED_UNPAUSED),
            ),
            DomainOp::Destroy { uuid, graceful } => {
                let e = match self.running(&uuid) {
                    Ok(e) => e,
                    Err(e) => return ready(Err(e)),
                };
                let Some(live) = e.live.as_mut() else {
                    return ready(Err(Error::OperationInvalid("domain is not running".into())));
                };
                live.destroying = true;
                live.fake_reboot = false;
                let (vm, run) = (live.vm.clone(), live.run);
                e.job = Some("destroy");
                Box::pin(
                    vm.send(Kill { graceful })
                        .into_actor(self)
                        .map(move |res, act, _| {
                            if let Some(e) = act.domains.get_mut(&uuid) {
                                e.job = None;
                            }
                            // A mailbox error means the supervisor is
                            // already gone, and so is QEMU.
                            if let Ok(Err(e)) = res {
                                return Err(e);
                            }
                            act.stopped(
                                &uuid,
                                run,
                                reason::SHUTOFF_DESTROYED,
                                lc::STOPPED_DESTROYED,
                            );
                            // A transient domain is gone from the registry by now.
                            act.view(&uuid)
                                .or_else(|_| Ok(Arc::new(placeholder_view(uuid))))
                        }),
                )
            }
        }
    }

    fn start(
        &mut self,
        uuid: Uuid,
        paused: bool,
        live_def: Option<DomainDef>,
        _ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let (spec, def) = match self.prepare_start(&uuid, live_def) {
            Ok(x) => x,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        if let Some(e) = self.domains.get_mut(&uuid) {
            e.job = Some("start");
            e.starting = Some(spec.spawned_pid.clone());
        }
        let name = def.name.clone();
        info!(domain = %name, "starting domain");
        // NICs on networks and bridges: taps the daemon creates and plugs in.
        let taps = match crate::network::plan_taps(&def) {
            Ok(t) => t,
            Err(e) => {
                if let Some(e) = self.domains.get_mut(&uuid) {
                    e.job = None;
                }
                return Box::pin(fut::ready(Err(e)));
            }
        };
        let nic_def = def.clone();
        let fut = async move {
            crate::network::create_taps(&taps)
                .await
                .map_err(|e| (e, None))?;
            let launched = match qemu::launch(spec).await {
                Ok(l) => l,
                Err(e) => {
                    crate::network::delete_taps(&nic_def).await;
                    return Err((e, None));
                }
            };
            if !paused {
                if let Err(e) = launched.qmp.execute("cont", None).await {
                    let err = Error::OperationFailed(format!("cannot start CPUs: {e}"));
                    return Err((err, Some(launched)));
                }
            }
            Ok(launched)
        };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            if let Some(e) = act.domains.get_mut(&uuid) {
                e.job = None;
                e.starting = None;
            }
            match res {
                Ok(launched) => act.started(uuid, def, launched, paused, ctx),
                Err((err, launched)) => {
                    if let Some(l) = launched {
                        let vm = QemuVm::start(l, uuid, 0, ctx.address().recipient());
                        vm.do_send(Kill { graceful: false });
                        actix::spawn(async move { crate::network::delete_taps(&def).await });
                    }
                    warn!(domain = %name, "start failed: {err}");
                    Err(err)
                }
            }
        }))
    }

    /// Stops or continues the CPUs, then records the new state at once:
    /// the reply must not wait for QEMU's STOP/RESUME event, and whichever of
    /// the two arrives first emits the lifecycle event.
    fn cpu_op(
        &mut self,
        uuid: Uuid,
        command: &'static str,
        (state, why): (DomainState, i32),
        (event, detail): (i32, i32),
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let f = self.qmp_op(uuid, command, |_| {});
        Box::pin(f.map(move |res, act, _| {
            res?;
            if act.set_state(&uuid, state, why) {
                act.lifecycle(&uuid, event, detail);
            }
            act.view(&uuid)
        }))
    }

    /// Sends one QMP command to a running domain after `prepare` adjusts
    /// its live state.
    fn qmp_op(
        &mut self,
        uuid: Uuid,
        command: &'static str,
        prepare: impl FnOnce(&mut Live),
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let vm = match self.vm(&uuid) {
            Ok(vm) => vm,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        if let Some(live) = self.domains.get_mut(&uuid).and_then(|e| e.live.as_mut()) {
            let before = live.fake_reboot;
            prepare(live);
            if live.fake_reboot != before {
                self.save_live(&uuid);
            }
        }
        Box::pin(
            vm.send(QmpCommand {
                command,
                arguments: None,
            })
            .into_actor(self)
            .map(move |res, act, _| {
                res.map_err(|_| Error::OperationInvalid("domain is not running".into()))??;
                act.view(&uuid)
            }),
        )
    }
}

fn placeholder_view(uuid: Uuid) -> DomainView {
    DomainView {
        name: String::new(),
        uuid,
        id: -1,
        state: DomainState::Shutoff,
        reason: 0,
        persistent: false,
        autostart: false,
        updated: false,
        max_mem_kib: 0,
        memory_kib: 0,
        vcpus: 0,
        max_vcpus: 0,
        os_type: "hvm".into(),
        pid: None,
        xml: Arc::from(""),
        inactive_xml: None,
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        if let Err(e) = self.store.prepare() {
            error!("{e}");
        }
        self.recover(ctx);
        // Domains being re-attached hold a job, so autostart passes them by.
        ctx.run_later(Duration::ZERO, |act, ctx| act.autostart(ctx));
    }
}

impl Handler<DomainOp> for Registry {
    type Result = ResponseActFuture<Self, Result<Arc<DomainView>>>;

    fn handle(&mut self, op: DomainOp, ctx: &mut Self::Context) -> Self::Result {
        self.queue_op(op, Instant::now(), ctx)
    }
}

impl Registry {
    /// A destroy of a domain whose QEMU is still starting does not wait for
    /// the start: like libvirt's, it kills QEMU first (the start then fails
    /// and the destroy finds the domain not running).
    fn kill_starting(&mut self, uuid: &Uuid) {
        let Some(cell) = self.domains.get(uuid).and_then(|e| e.starting.as_ref()) else {
            return;
        };
        // Swapped to -1 so a destroy waiting in line kills only once.
        let pid = cell.swap(-1, std::sync::atomic::Ordering::AcqRel);
        if pid > 0 {
            warn!(%uuid, pid, "destroying a domain that is still starting: killing its QEMU");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// A destroy of a domain being re-attached does not wait for the
    /// monitor: it kills the recorded QEMU (after checking it is that
    /// domain's), and recovery then reports the domain destroyed.
    fn kill_recovering(&mut self, uuid: &Uuid) {
        let Some(r) = self
            .domains
            .get_mut(uuid)
            .and_then(|e| e.recovering.as_mut())
        else {
            return;
        };
        if std::mem::replace(&mut r.destroyed, true) {
            return;
        }
        warn!(%uuid, pid = r.pid, "destroying a domain being re-attached: killing its QEMU");
        // Signalled only while that pid is still the recorded process.
        r.identity.signal(nix::sys::signal::Signal::SIGKILL);
    }

    /// Waits for the re-attachment a destroy cut short to end: the domain
    /// is then off (success), or was re-attached just before the kill took
    /// effect, and is destroyed the ordinary way.
    fn destroy_recovering(
        &mut self,
        uuid: Uuid,
        since: Instant,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let Some(e) = self.domains.get(&uuid) else {
            // A transient domain is gone with its QEMU.
            return Box::pin(fut::ready(Ok(Arc::new(placeholder_view(uuid)))));
        };
        if e.job == Some(REATTACH_JOB) {
            if since.elapsed() > JOB_WAIT {
                return Box::pin(fut::ready(Err(Error::Timeout(
                    "cannot acquire state change lock (held by recovery)".into(),
                ))));
            }
            return Box::pin(
                tokio::time::sleep(Duration::from_millis(10))
                    .into_actor(self)
                    .then(move |_, act, ctx| act.destroy_recovering(uuid, since, ctx)),
            );
        }
        if e.live.is_some() {
            let op = DomainOp::Destroy {
                uuid,
                graceful: false,
            };
            return self.queue_op(op, since, ctx);
        }
        Box::pin(fut::ready(self.view(&uuid)))
    }

    /// Runs `op` once no other job holds its domain, waiting up to
    /// `JOB_WAIT` like libvirt's state change lock.
    fn queue_op(
        &mut self,
        op: DomainOp,
        since: Instant,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let busy = op
            .target()
            .and_then(|u| self.domains.get(&u))
            .and_then(|e| e.job);
        if let (
            DomainOp::Destroy {
                uuid,
                graceful: false,
            },
            Some("start"),
        ) = (&op, busy)
        {
            self.kill_starting(uuid);
        }
        if let (
            DomainOp::Destroy {
                uuid,
                graceful: false,
            },
            Some(REATTACH_JOB),
        ) = (&op, busy)
        {
            let uuid = *uuid;
            self.kill_recovering(&uuid);
            return self.destroy_recovering(uuid, since, ctx);
        }
        match busy {
            None => self.run_op(op, ctx),
            // Not a wait behind a user's job but one of up to the monitor
            // deadline: answer now, clearly, instead of blocking the caller.
            Some(REATTACH_JOB) => Box::pin(fut::ready(Err(Error::Timeout(
                "cannot acquire state change lock (held by recovery: the daemon is re-attaching to this domain's QEMU after a restart; try again shortly)".into(),
            )))),
            Some(job) if since.elapsed() > JOB_WAIT => Box::pin(fut::ready(Err(Error::Timeout(
                format!("cannot acquire state change lock (held by {job})"),
            )))),
            Some(_) => Box::pin(
                tokio::time::sleep(Duration::from_millis(20))
                    .into_actor(self)
                    .then(move |_, act, ctx| act.queue_op(op, since, ctx)),
            ),
        }
    }
}

/// What drivers that talk to a running QEMU directly need of it.
#[derive(Message)]
#[rtype(result = "Result<RunningVm>")]
pub struct GetRunning {
    pub uuid: Uuid,
}

pub struct RunningVm {
    pub vm: Addr<QemuVm>,
    /// Which run of the domain this is.
    pub run: u64,
    pub def: DomainDef,
    /// The domain's log file (QEMU's output, taint notes).
    pub log_file: std::path::PathBuf,
    pub qmp_socket: std::path::PathBuf,
}

impl Handler<GetRunning> for Registry {
    type Result = Result<RunningVm>;

    fn handle(&mut self, msg: GetRunning, _: &mut Self::Context) -> Self::Result {
        let e = self.running(&msg.uuid)?;
        let Some(live) = &e.live else {
            return Err(Error::OperationInvalid("domain is not running".into()));
        };
        let (vm, run, def) = (live.vm.clone(), live.run, live.def.clone());
        let qmp_socket = live.qmp_socket.clone();
        let log_file = self.store.log_file(&def.name);
        Ok(RunningVm {
            vm,
            run,
            def,
            log_file,
            qmp_socket,
        })
    }
}

impl Handler<VmNotice> for Registry {
    type Result = ();

    fn handle(&mut self, msg: VmNotice, _: &mut Self::Context) {
        match msg.kind {
            VmNoticeKind::Event(ev) => self.on_qmp_event(msg.uuid, msg.run, &ev.name, &ev.data),
            VmNoticeKind::Exited(how) => self.on_exit(msg.uuid, msg.run, &how),
        }
    }
}

// Statistics and tuning messages (handles of running VMs, memory, vCPUs,
// metadata, rename) live in their own file.
#[path = "registry_tune.rs"]
pub mod tune;
