//! The `NetworkRegistry` actor owns every network definition: persistence
//! (one XML file per network under the state directory, written
//! atomically, plus an autostart marker), the active networks' actors and
//! the lifecycle events. It is the only writer of the network index that
//! connections and the domain registry read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{error, info, warn};
use uuid::Uuid;

use qemud_config::domain::DomainXmlError;
use qemud_config::network::{self as model, NetworkDef};
use qemud_protocol::remote::NonnullNetwork;

use super::active::{self, ActiveNetwork};
use super::dnsmasq::{self, Files};
use super::index::{NetView, NetworkIndex};
use crate::domain::store::write_atomic;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, Family, ObjectKey};
use tokio::process::Child;

/// `virNetworkEventLifecycleType`.
pub mod lifecycle {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const STOPPED: i32 = 3;
}

/// How long stopping one network (dnsmasq, bridge, rules) may take.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// `virNetworkUpdateFlags`.
const UPDATE_AFFECT_LIVE: u32 = 1;
const UPDATE_AFFECT_CONFIG: u32 = 2;

fn xml_error(e: DomainXmlError) -> Error {
    match e {
        DomainXmlError::Xml(m) => Error::Other {
            code: qemud_protocol::ErrorCode::XmlDetail,
            domain: qemud_protocol::ErrorDomain::Network,
            message: format!("XML error: {m}"),
        },
        DomainXmlError::Invalid(m) => match m.strip_prefix("internal error: ") {
            Some(rest) => Error::Other {
                code: qemud_protocol::ErrorCode::InternalError,
                domain: qemud_protocol::ErrorDomain::Network,
                message: format!("internal error: {rest}"),
            },
            None => Error::Other {
                code: qemud_protocol::ErrorCode::XmlError,
                domain: qemud_protocol::ErrorDomain::Network,
                message: format!("XML error: {m}"),
            },
        },
        DomainXmlError::Unsupported(m) => Error::ConfigUnsupported(m),
    }
}

fn update_error(e: model::UpdateError) -> Error {
    match e {
        model::UpdateError::Xml(x) => xml_error(x),
        model::UpdateError::Invalid(m) => Error::OperationInvalid(m),
        model::UpdateError::Unsupported(m) => Error::OperationUnsupported(m),
    }
}

/// Every change to networks, sent by connections.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<NetView>>")]
pub enum NetOp {
    Define {
        xml: String,
    },
    Create {
        xml: String,
    },
    Undefine {
        uuid: Uuid,
    },
    Start {
        uuid: Uuid,
    },
    Destroy {
        uuid: Uuid,
    },
    SetAutostart {
        uuid: Uuid,
        on: bool,
    },
    Update {
        uuid: Uuid,
        command: u32,
        section: u32,
        parent_index: i32,
        xml: String,
        flags: u32,
    },
}

/// Stops every active network (daemon shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

/// Answered once the networks a previous run left active are taken back
/// and autostart is done (the daemon waits for it before listening).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ready;

impl Handler<Ready> for NetworkRegistry {
    type Result = ();
    fn handle(&mut self, _: Ready, _: &mut Self::Context) {}
}

/// Asks an active network's actor for its dnsmasq pid.
#[derive(Message)]
#[rtype(result = "Option<i32>")]
pub struct DnsmasqPidOf(pub Uuid);

struct Entry {
    /// The persistent definition (or the transient one).
    def: NetworkDef,
    persistent: bool,
    autostart: bool,
    /// The running definition and its actor.
    live: Option<(NetworkDef, Addr<ActiveNetwork>)>,
}

pub struct NetworkRegistry {
    index: Arc<NetworkIndex>,
    events: Addr<EventBus>,
    config_dir: PathBuf,
    autostart_dir: PathBuf,
    run_dir: PathBuf,
    nets: HashMap<Uuid, Entry>,
    /// Running guests, whose taps go back on a restarted network's bridge.
    domains: Option<Arc<crate::domain::index::DomainIndex>>,
}

impl NetworkRegistry {
    pub fn new(
        state_dir: PathBuf,
        run_dir: PathBuf,
        index: Arc<NetworkIndex>,
        events: Addr<EventBus>,
        domains: Option<Arc<crate::domain::index::DomainIndex>>,
    ) -> NetworkRegistry {
        let config_dir = state_dir.join("networks");
        NetworkRegistry {
            index,
            events,
            autostart_dir: config_dir.join("autostart"),
            config_dir,
            run_dir: run_dir.join("networks"),
            nets: HashMap::new(),
            domains,
        }
    }

    fn files(&self, name: &str) -> Files {
        Files::new(&self.run_dir, name)
    }

    fn live_record(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.xml"))
    }

    fn publish(&self, uuid: &Uuid) -> Option<Arc<NetView>> {
        let e = self.nets.get(uuid)?;
        let v = Arc::new(NetView {
            name: e.def.name.clone(),
            uuid: *uuid,
            active: e.live.is_some(),
            persistent: e.persistent,
            autostart: e.autostart,
            live: e.live.as_ref().map(|(d, _)| d.clone()),
            def: e.def.clone(),
            leases: self.files(&e.def.name).leases,
        });
        self.index.publish(v.clone());
        Some(v)
    }

    fn emit(&self, def: &NetworkDef, event: i32) {
        #[derive(serde::Serialize)]
        struct Msg {
            net: NonnullNetwork,
            event: i32,
            detail: i32,
        }
        let msg = Msg {
            net: NonnullNetwork {
                name: def.name.clone().into(),
                uuid: qemud_protocol::xdr::Uuid16(*def.uuid.as_bytes()),
            },
            event,
            detail: 0,
        };
        match Event::new(
            Family::Network,
            ObjectKey::Uuid(def.uuid),
            0,
            qemud_protocol::remote::procs::NETWORK_EVENT_LIFECYCLE,
            &msg,
        ) {
            Ok(ev) => self.events.do_send(ev),
            Err(e) => error!("cannot encode network event: {e}"),
        }
    }

    fn save(&self, def: &NetworkDef) -> Result<()> {
        let path = self.config_dir.join(format!("{}.xml", def.name));
        write_atomic(&path, def.to_xml(None).as_bytes())
            .map_err(|e| Error::System(format!("cannot write {}: {e}", path.display())))
    }

    fn set_autostart_marker(&self, name: &str, on: bool) -> Result<()> {
        let path = self.autostart_dir.join(format!("{name}.xml"));
        if on {
            write_atomic(&path, b"")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        .map_err(|e| Error::System(format!("cannot change autostart of {name}: {e}")))
    }

    /// Checks a new definition against the others, fills in its bridge and
    /// MAC, and returns it (with the UUID of a same-named network, if any).
    fn admit(&self, xml: &str, live_check: bool) -> Result<NetworkDef> {
        let mut def = NetworkDef::parse(xml).map_err(xml_error)?;
        for (uuid, e) in &self.nets {
            if *uuid == def.uuid && e.def.name != def.name {
                return Err(Error::OperationFailed(format!(
                    "network '{}' is already defined with uuid {uuid}",
                    e.def.name
                )));
            }
            if *uuid != def.uuid && e.def.name == def.name {
                return Err(Error::OperationFailed(format!(
                    "network '{}' already exists with uuid {uuid}",
                    def.name
                )));
            }
            if live_check && *uuid == def.uuid && e.live.is_some() {
                return Err(Error::OperationInvalid(format!(
                    "network is already active as '{}'",
                    def.name
                )));
            }
        }
        let others = |e: &Entry| {
            [Some(&e.def), e.live.as_ref().map(|(d, _)| d)]
                .into_iter()
                .flatten()
                .filter_map(|d| d.bridge.clone())
                .collect::<Vec<_>>()
        };
        if !def.is_bridge_mode() {
            if let Some(b) = def.bridge.as_deref().filter(|b| !b.contains("%d")) {
                let in_use = self
                    .nets
                    .iter()
                    .filter(|(_, e)| e.def.name != def.name)
                    .any(|(_, e)| others(e).iter().any(|o| o == b));
                if in_use {
                    return Err(Error::Internal(format!(
                        "bridge name '{b}' already in use."
                    )));
                }
            }
            let mut taken: Vec<String> = self
                .nets
                .values()
                .filter(|e| e.def.name != def.name)
                .flat_map(others)
                .collect();
            // A host link of that name is taken too.
            taken.extend(super::sys::links().into_iter().map(|(name, _)| name));
            // Keep the MAC and bridge a redefinition left out.
            if let Some(old) = self.nets.get(&def.uuid) {
                if def.bridge.is_none() {
                    def.bridge = old.def.bridge.clone();
                }
                if def.mac.is_none() {
                    def.mac = old.def.mac.clone();
                }
            }
            def.fill_defaults(&taken);
        }
        Ok(def)
    }

    fn define(&mut self, xml: &str) -> Result<Arc<NetView>> {
        let def = self.admit(xml, false)?;
        self.save(&def)?;
        let uuid = def.uuid;
        info!(network = %def.name, "network defined");
        match self.nets.get_mut(&uuid) {
            Some(e) => {
                e.def = def.clone();
                e.persistent = true;
            }
            None => {
                self.nets.insert(
                    uuid,
                    Entry {
                        def: def.clone(),
                        persistent: true,
                        autostart: false,
                        live: None,
                    },
                );
            }
        }
        self.emit(&def, lifecycle::DEFINED);
        self.view_after(&uuid)
    }

    fn view_after(&self, uuid: &Uuid) -> Result<Arc<NetView>> {
        self.publish(uuid)
            .ok_or_else(|| Error::NoNetwork(format!("no network with matching uuid '{uuid}'")))
    }

    fn undefine(&mut self, uuid: &Uuid) -> Result<Arc<NetView>> {
        let e = self
            .nets
            .get_mut(uuid)
            .ok_or_else(|| Error::NoNetwork(format!("no network with matching uuid '{uuid}'")))?;
        if !e.persistent {
            return Err(Error::OperationInvalid(
                "can't undefine transient network".into(),
            ));
        }
        let def = e.def.clone();
        let path = self.config_dir.join(format!("{}.xml", def.name));
        if let Err(err) = std::fs::remove_file(&path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::System(format!(
                    "cannot remove config file '{}': {err}",
                    path.display()
                )));
            }
        }
        let active = e.live.is_some();
        e.persistent = false;
        e.autostart = false;
        let _ = self.set_autostart_marker(&def.name, false);
        info!(network = %def.name, "network undefined");
        self.emit(&def, lifecycle::UNDEFINED);
        let v = self.view_after(uuid)?;
        if !active {
            self.nets.remove(uuid);
            self.index.remove(uuid);
        }
        Ok(v)
    }

    fn set_autostart(&mut self, uuid: &Uuid, on: bool) -> Result<Arc<NetView>> {
        let (name, persistent) = {
            let e = self.nets.get(uuid).ok_or_else(|| {
                Error::NoNetwork(format!("no network with matching uuid '{uuid}'"))
            })?;
            (e.def.name.clone(), e.persistent)
        };
        if !persistent {
            return Err(Error::OperationInvalid(
                "cannot set autostart for transient network".into(),
            ));
        }
        self.set_autostart_marker(&name, on)?;
        if let Some(e) = self.nets.get_mut(uuid) {
            e.autostart = on;
        }
        self.view_after(uuid)
    }

    /// Starts a network: checks, host side, dnsmasq, actor, event.
    /// `live_def`: the definition to run instead of the persistent one
    /// (net-create of a defined, inactive network).
    fn start(
        &mut self,
        uuid: Uuid,
        live_def: Option<NetworkDef>,
    ) -> ResponseActFuture<Self, Result<Arc<NetView>>> {
        let prep = (|| {
            let e = self.nets.get(&uuid).ok_or_else(|| {
                Error::NoNetwork(format!("no network with matching uuid '{uuid}'"))
            })?;
            if e.live.is_some() {
                return Err(Error::OperationInvalid("network is already active".into()));
            }
            let def = live_def.unwrap_or_else(|| e.def.clone());
            // Two active networks on overlapping subnets would fight over
            // the route: libvirt's route-collision check.
            for other in self.nets.values() {
                let Some((od, _)) = &other.live else { continue };
                for a in &def.ips {
                    if od.ips.iter().any(|b| model::subnets_overlap(a, b)) {
                        return Err(Error::Internal(format!(
                            "Network is already in use by interface {}",
                            od.bridge.as_deref().unwrap_or("?")
                        )));
                    }
                }
                if !def.is_bridge_mode() && od.bridge == def.bridge {
                    return Err(Error::Internal(format!(
                        "bridge name '{}' already in use.",
                        def.bridge.as_deref().unwrap_or_default()
                    )));
                }
            }
            Ok(def)
        })();
        let def = match prep {
            Ok(d) => d,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        if let Err(e) = crate::domain::store::private_dir(&self.run_dir) {
            return Box::pin(fut::ready(Err(Error::System(format!(
                "cannot create {}: {e}",
                self.run_dir.display()
            )))));
        }
        let files = self.files(&def.name);
        let record = self.live_record(&def.name);
        info!(network = %def.name, "starting network");
        let fut = async move {
            // Recorded first, so a crash mid-way is cleaned up next start.
            write_atomic(&record, def.to_xml(None).as_bytes())
                .map_err(|e| Error::System(format!("cannot write {}: {e}", record.display())))?;
            if let Err(e) = active::bring_up(&def, &files).await {
                let _ = std::fs::remove_file(&record);
                return Err(e);
            }
            let child = if dnsmasq::needed(&def) {
                match active::spawn_dnsmasq(&files) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        active::tear_down(&def, &files).await;
                        let _ = std::fs::remove_file(&record);
                        return Err(e);
                    }
                }
            } else {
                None
            };
            Ok((def, files, child))
        };
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            let (def, files, child) = res?;
            let addr = ActiveNetwork::start(def.clone(), files, child);
            match act.nets.get_mut(&uuid) {
                Some(e) => e.live = Some((def.clone(), addr)),
                None => {
                    addr.do_send(active::Stop);
                    return Err(Error::NoNetwork(format!(
                        "no network with matching uuid '{uuid}'"
                    )));
                }
            }
            info!(network = %def.name, "network started");
            act.replug(&def);
            act.emit(&def, lifecycle::STARTED);
            act.view_after(&uuid)
        }))
    }

    fn destroy(&mut self, uuid: Uuid) -> ResponseActFuture<Self, Result<Arc<NetView>>> {
        let (def, addr) = match self.nets.get_mut(&uuid) {
            None => {
                return Box::pin(fut::ready(Err(Error::NoNetwork(format!(
                    "no network with matching uuid '{uuid}'"
                )))))
            }
            Some(e) => match e.live.take() {
                None => {
                    let name = e.def.name.clone();
                    return Box::pin(fut::ready(Err(Error::OperationInvalid(format!(
                        "network '{name}' is not active"
                    )))));
                }
                Some(l) => l,
            },
        };
        let record = self.live_record(&def.name);
        let fut = async move {
            if tokio::time::timeout(STOP_DEADLINE, addr.send(active::Stop))
                .await
                .is_err()
            {
                warn!(network = %def.name, "network did not stop in time");
            }
            let _ = std::fs::remove_file(&record);
            def
        };
        Box::pin(fut.into_actor(self).map(move |def, act, _| {
            info!(network = %def.name, "network destroyed");
            act.emit(&def, lifecycle::STOPPED);
            let v = act.view_after(&uuid)?;
            if act.nets.get(&uuid).is_some_and(|e| !e.persistent) {
                act.nets.remove(&uuid);
                act.index.remove(&uuid);
            }
            Ok(v)
        }))
    }

    fn update(
        &mut self,
        uuid: Uuid,
        command: u32,
        section: u32,
        parent_index: i32,
        xml: &str,
        flags: u32,
    ) -> Result<Arc<NetView>> {
        if flags & !(UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG) != 0 {
            return Err(Error::UnsupportedFlags {
                flags,
                function: "networkUpdate",
            });
        }
        let e = self
            .nets
            .get_mut(&uuid)
            .ok_or_else(|| Error::NoNetwork(format!("no network with matching uuid '{uuid}'")))?;
        let mut flags = flags;
        if flags & (UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG) == 0 {
            flags = if e.live.is_some() {
                UPDATE_AFFECT_LIVE
            } else {
                UPDATE_AFFECT_CONFIG
            };
        }
        if flags & UPDATE_AFFECT_LIVE != 0 && e.live.is_none() {
            return Err(Error::OperationInvalid("network is not running".into()));
        }
        if flags & UPDATE_AFFECT_CONFIG != 0 && !e.persistent {
            return Err(Error::OperationInvalid(
                "cannot change persistent config of a transient network".into(),
            ));
        }
        // Apply to copies first: nothing changes unless all of it works.
        let new_config = if flags & UPDATE_AFFECT_CONFIG != 0 {
            let mut d = e.def.clone();
            d.update(section, command, parent_index, xml)
                .map_err(update_error)?;
            Some(d)
        } else {
            None
        };
        let new_live = if flags & UPDATE_AFFECT_LIVE != 0 {
            let (ld, _) = e
                .live
                .as_ref()
                .ok_or_else(|| Error::OperationInvalid("network is not running".into()))?;
            let mut d = ld.clone();
            d.update(section, command, parent_index, xml)
                .map_err(update_error)?;
            Some(d)
        } else {
            None
        };
        let persistent = e.persistent;
        if let Some(d) = new_config {
            if persistent {
                let path = self.config_dir.join(format!("{}.xml", d.name));
                write_atomic(&path, d.to_xml(None).as_bytes()).map_err(|err| {
                    Error::System(format!("cannot write {}: {err}", path.display()))
                })?;
            }
            if let Some(e) = self.nets.get_mut(&uuid) {
                e.def = d;
            }
        }
        if let Some(d) = new_live {
            let record = self.live_record(&d.name);
            let _ = write_atomic(&record, d.to_xml(None).as_bytes());
            if let Some(e) = self.nets.get_mut(&uuid) {
                if !e.persistent {
                    e.def = d.clone();
                }
                if let Some((ld, addr)) = e.live.as_mut() {
                    *ld = d.clone();
                    addr.do_send(active::Reload(d));
                }
            }
        }
        self.view_after(&uuid)
    }

    /// Takes back the networks a killed daemon left active (their live
    /// records): rules and dnsmasq anew, the bridge and its taps kept. What
    /// cannot be taken back is torn down.
    async fn recover_leftovers(run_dir: PathBuf) -> Vec<(NetworkDef, Files, Option<Child>)> {
        let mut back = Vec::new();
        let Ok(entries) = std::fs::read_dir(&run_dir) else {
            return back;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let Some(def) = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| NetworkDef::parse(&t).ok())
            else {
                let _ = std::fs::remove_file(&p);
                continue;
            };
            let files = Files::new(&run_dir, &def.name);
            active::kill_stale_dnsmasq(&files);
            let res = async {
                active::reattach(&def, &files).await?;
                if dnsmasq::needed(&def) {
                    active::spawn_dnsmasq(&files).map(Some)
                } else {
                    Ok(None)
                }
            }
            .await;
            match res {
                Ok(child) => {
                    info!(network = %def.name, "network taken back after a restart");
                    back.push((def, files, child));
                }
                Err(err) => {
                    warn!(network = %def.name, "cannot take the network back: {err}");
                    active::tear_down(&def, &files).await;
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        back
    }

    /// Plugs the taps of running guests on this network back into its
    /// bridge (after the network was restarted under them).
    fn replug(&self, def: &NetworkDef) {
        let (Some(domains), Some(bridge)) = (self.domains.clone(), def.bridge.clone()) else {
            return;
        };
        let name = def.name.clone();
        actix::spawn(async move {
            for v in domains.all().iter().filter(|v| v.is_active()) {
                let Ok(dd) = qemud_config::domain::DomainDef::parse(&v.xml) else {
                    continue;
                };
                for (i, nic) in dd.devices.interfaces.iter().enumerate() {
                    let on_this = matches!(&nic.kind, qemud_config::domain::InterfaceKind::Network(n) if *n == name);
                    let tap = super::tap_name(&dd.uuid, i);
                    if on_this && super::sys::link_exists(&tap) {
                        if let Err(e) =
                            super::sys::ip(&["link", "set", "dev", &tap, "master", &bridge, "up"])
                                .await
                        {
                            warn!(network = %name, "cannot plug {tap} back in: {e}");
                        }
                    }
                }
            }
        });
    }

    fn load(&mut self) {
        let first_run = !self.config_dir.exists();
        for d in [&self.config_dir, &self.autostart_dir, &self.run_dir] {
            // Private, like the domains' files; temp files of interrupted
            // writes go.
            if let Err(e) = crate::domain::store::private_dir(d) {
                error!("cannot create {}: {e}", d.display());
            }
            crate::domain::store::tidy_dir(d);
        }
        if first_run {
            // As distributions ship it: defined, not started here (a
            // daemon must not reconfigure the host's network unasked).
            match NetworkDef::parse(&model::default_network_xml()) {
                Ok(def) => {
                    if let Err(e) = self.save(&def) {
                        error!("cannot define the default network: {e}");
                    }
                }
                Err(e) => error!("default network: {e}"),
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.config_dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let def = match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| NetworkDef::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(d) => d,
                Err(err) => {
                    error!("cannot load network {}: {err}", p.display());
                    continue;
                }
            };
            let autostart = self
                .autostart_dir
                .join(format!("{}.xml", def.name))
                .exists();
            let uuid = def.uuid;
            self.nets.insert(
                uuid,
                Entry {
                    def,
                    persistent: true,
                    autostart,
                    live: None,
                },
            );
            self.publish(&uuid);
        }
    }
}

impl Actor for NetworkRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.load();
        let run_dir = self.run_dir.clone();
        ctx.wait(
            Self::recover_leftovers(run_dir)
                .into_actor(self)
                .map(|back, act, ctx| {
                    for (def, files, child) in back {
                        let uuid = def.uuid;
                        let addr = ActiveNetwork::start(def.clone(), files, child);
                        let e = act.nets.entry(uuid).or_insert_with(|| Entry {
                            def: def.clone(),
                            persistent: false,
                            autostart: false,
                            live: None,
                        });
                        e.live = Some((def.clone(), addr));
                        act.publish(&uuid);
                        act.replug(&def);
                    }
                    let auto: Vec<Uuid> = act
                        .nets
                        .iter()
                        .filter(|(_, e)| e.autostart)
                        .map(|(u, _)| *u)
                        .collect();
                    for uuid in auto {
                        if act.nets.get(&uuid).is_some_and(|e| e.live.is_some()) {
                            continue;
                        }
                        ctx.wait(act.start(uuid, None).map(move |res, act, _| {
                            if let Err(e) = res {
                                let name = act.nets.get(&uuid).map(|e| e.def.name.clone());
                                error!(network = ?name, "autostart failed: {e}");
                            }
                        }));
                    }
                }),
        );
    }
}

impl Handler<NetOp> for NetworkRegistry {
    type Result = AtomicResponse<Self, Result<Arc<NetView>>>;

    fn handle(&mut self, op: NetOp, _: &mut Self::Context) -> Self::Result {
        let ready = |r| AtomicResponse::new(Box::pin(fut::ready(r)));
        match op {
            NetOp::Define { xml } => ready(self.define(&xml)),
            NetOp::Undefine { uuid } => ready(self.undefine(&uuid)),
            NetOp::SetAutostart { uuid, on } => ready(self.set_autostart(&uuid, on)),
            NetOp::Update {
                uuid,
                command,
                section,
                parent_index,
                xml,
                flags,
            } => ready(self.update(uuid, command, section, parent_index, &xml, flags)),
            NetOp::Start { uuid } => AtomicResponse::new(self.start(uuid, None)),
            NetOp::Destroy { uuid } => AtomicResponse::new(self.destroy(uuid)),
            NetOp::Create { xml } => {
                let def = match self.admit(&xml, true) {
                    Ok(d) => d,
                    Err(e) => return ready(Err(e)),
                };
                let uuid = def.uuid;
                let existed = self.nets.contains_key(&uuid);
                let live_def = if existed {
                    Some(def)
                } else {
                    self.nets.insert(
                        uuid,
                        Entry {
                            def,
                            persistent: false,
                            autostart: false,
                            live: None,
                        },
                    );
                    None
                };
                AtomicResponse::new(Box::pin(self.start(uuid, live_def).map(
                    move |res, act, _| {
                        if res.is_err() && !existed {
                            act.nets.remove(&uuid);
                            act.index.remove(&uuid);
                        }
                        res
                    },
                )))
            }
        }
    }
}

impl Handler<StopAll> for NetworkRegistry {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: StopAll, _: &mut Self::Context) -> Self::Result {
        let mut stops = Vec::new();
        for e in self.nets.values_mut() {
            if let Some((def, addr)) = e.live.take() {
                let record = self.run_dir.join(format!("{}.xml", def.name));
                stops.push(async move {
                    let _ = tokio::time::timeout(STOP_DEADLINE, addr.send(active::Stop)).await;
                    let _ = std::fs::remove_file(record);
                    info!(network = %def.name, "network stopped with the daemon");
                });
            }
        }
        AtomicResponse::new(Box::pin(
            async move {
                futures::future::join_all(stops).await;
            }
            .into_actor(self),
        ))
    }
}

impl Handler<DnsmasqPidOf> for NetworkRegistry {
    type Result = ResponseFuture<Option<i32>>;

    fn handle(&mut self, msg: DnsmasqPidOf, _: &mut Self::Context) -> Self::Result {
        let addr = self
            .nets
            .get(&msg.0)
            .and_then(|e| e.live.as_ref().map(|(_, a)| a.clone()));
        Box::pin(async move {
            match addr {
                Some(a) => a.send(active::DnsmasqPid).await.ok().flatten(),
                None => None,
            }
        })
    }
}
