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
    qmp_socket: std::path::PathBuf,
    got_shutdown: bool,
    destroying: bool,
    fake_reboot: bool,
    pty_paths: Vec<String>,
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
}

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
        let running_def = e.live.as_ref().map(|l| &l.def).unwrap_or(&e.def);
        let live_xml = e.live.as_ref().map(|l| LiveXml {
            id: l.id,
            pty_paths: l.pty_paths.clone(),
            vnc_port: None,
        });
        let xml: Arc<str> = Arc::from(running_def.to_xml(live_xml.as_ref()));
        let inactive_xml =
            (e.live.is_some() && e.persistent).then(|| Arc::from(e.def.to_xml(None)));
        let view = DomainView {
            name: e.def.name.clone(),
            uuid: *uuid,
            id: e.live.as_ref().map(|l| l.id).unwrap_or(-1),
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
            pid: e.live.as_ref().map(|l| l.pid),
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
        let def = live_def.unwrap_or_else(|| e.def.clone());
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
        let run = self.next_run;
        self.next_run += 1;
        let id = self.next_id;
        self.next_id += 1;
        let pid = launched.pid;
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
            qmp_socket: qmp_socket.clone(),
            got_shutdown: false,
            destroying: false,
            fake_reboot: false,
            pty_paths: Vec::new(),
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
        // Serial pty paths are only known once QEMU runs.
        let fut = async move { qmp.execute("query-chardev", None).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            let Ok(list) = res else { return };
            let mut ptys: Vec<(String, String)> = list
                .as_array()
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
                    act.publish(&uuid);
                }
            }
        }));
        Ok(v)
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
            qmp_socket: l.qmp_socket.clone(),
            xml: l.def.to_xml(None),
            persistent: e.persistent,
            got_shutdown: l.got_shutdown,
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
        e.live = None;
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
        e.state = state;
        e.reason = why;
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
            "RESET" => self.emit(&uuid, Event::reboot),
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

    /// Re-attaches to QEMUs a previous daemon left running and loads the
    /// saved definitions. Runs once, before the registry takes calls.
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
        for (uuid, pid) in self.store.pidfiles() {
            if records.iter().any(|r| r.uuid == uuid) {
                continue;
            }
            if qemu::is_our_qemu(pid, &uuid) {
                warn!(%uuid, pid, "stopping QEMU left over from an interrupted start");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            self.store.delete_live(&uuid);
        }
        for rec in records {
            if !qemu::is_our_qemu(rec.pid, &rec.uuid) {
                info!(domain = %rec.name, "QEMU exited while the daemon was down");
                self.store.delete_live(&rec.uuid);
                if let Some(e) = self.domains.get_mut(&rec.uuid) {
                    e.reason = reason::SHUTOFF_DAEMON;
                    self.publish(&rec.uuid);
                }
                continue;
            }
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
            entry.job = Some("reattach");
            let timeout = Duration::from_millis(self.settings.qmp_timeout_ms);
            let rec2 = rec.clone();
            let fut = async move {
                let launched = qemu::attach(rec2.pid, &rec2.qmp_socket, timeout).await?;
                let status = launched.qmp.execute("query-status", None).await.ok();
                Ok::<_, Error>((launched, status))
            };
            ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
                act.reattached(rec, def, res, ctx);
            }));
        }
    }

    fn reattached(
        &mut self,
        rec: LiveRecord,
        def: DomainDef,
        res: Result<(Launched, Option<serde_json::Value>)>,
        ctx: &mut Context<Self>,
    ) {
        let uuid = rec.uuid;
        let Some(e) = self.domains.get_mut(&uuid) else {
            return;
        };
        e.job = None;
        let (launched, status) = match res {
            Ok(x) => x,
            Err(err) => {
                error!(domain = %rec.name, "cannot re-attach to QEMU pid {}: {err}", rec.pid);
                // A QEMU we cannot control must not linger unseen.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(rec.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                self.store.delete_live(&uuid);
                if !e.persistent {
                    self.domains.remove(&uuid);
                }
                self.publish(&uuid);
                return;
            }
        };
        let run = self.next_run;
        self.next_run += 1;
        let pid = launched.pid;
        let vm = QemuVm::start(launched, uuid, run, ctx.address().recipient());
        let status = status
            .as_ref()
            .and_then(|s| s.get("status"))
            .and_then(|s| s.as_str())
            .unwrap_or("running")
            .to_owned();
        let Some(e) = self.domains.get_mut(&uuid) else {
            // Checked at the top; nothing in between removes entries.
            return;
        };
        let got_shutdown = rec.got_shutdown || status == "shutdown";
        e.live = Some(Live {
            id: rec.id,
            run,
            def,
            vm: vm.clone(),
            pid,
            qmp_socket: rec.qmp_socket.clone(),
            got_shutdown,
            destroying: false,
            fake_reboot: false,
            pty_paths: Vec::new(),
        });
        (e.state, e.reason) = match status.as_str() {
            "paused" | "prelaunch" => (DomainState::Paused, reason::PAUSED_USER),
            "shutdown" => (DomainState::Shutdown, reason::SHUTDOWN_USER),
            _ => (DomainState::Running, reason::RUNNING_BOOTED),
        };
        self.publish(&uuid);
        info!(domain = %rec.name, pid, id = rec.id, %status, "re-attached to running domain");
        if got_shutdown {
            vm.do_send(QmpCommand {
                command: "quit",
                arguments: None,
            });
        }
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
            DomainOp::Define { xml } => ready(self.define(&xml)),
            DomainOp::Undefine { uuid } => ready(self.undefine(&uuid)),
            DomainOp::SetAutostart { uuid, on } => ready(self.set_autostart(&uuid, on)),
            DomainOp::CreateXml { xml, paused } => {
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
            DomainOp::Start { uuid, paused } => self.start(uuid, paused, None, ctx),
            DomainOp::Shutdown { uuid } => self.qmp_op(uuid, "system_powerdown", |_| {}),
            DomainOp::Reboot { uuid } => {
                self.qmp_op(uuid, "system_powerdown", |l| l.fake_reboot = true)
            }
            DomainOp::Reset { uuid } => self.qmp_op(uuid, "system_reset", |_| {}),
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
        }
        let name = def.name.clone();
        info!(domain = %name, "starting domain");
        let fut = async move {
            let launched = qemu::launch(spec).await.map_err(|e| (e, None))?;
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
            }
            match res {
                Ok(launched) => act.started(uuid, def, launched, paused, ctx),
                Err((err, launched)) => {
                    if let Some(l) = launched {
                        let vm = QemuVm::start(l, uuid, 0, ctx.address().recipient());
                        vm.do_send(Kill { graceful: false });
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
            prepare(live);
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
        // Autostart after re-attachment finished (ctx.wait above).
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
        match busy {
            None => self.run_op(op, ctx),
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
