//! Registry messages for runtime statistics and tuning: handing out the
//! handles of running VMs to the stats collector, and changes to memory,
//! vCPUs, metadata and names. A child module of `registry`, so it keeps the
//! registry's state private while living apart from the lifecycle code.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use qemud_config::domain::DomainDef;
use qemud_protocol::remote::NonnullDomain;
use qemud_protocol::xdr::OptString;

use super::Registry;
use crate::domain::index::DomainView;
use crate::domain::qemu::{QemuVm, QmpCommand};
use crate::error::{Error, Result};
use crate::events::{Event, Family, ObjectKey};

/// `virDomainModificationImpact` and the flags that share its bits.
pub const AFFECT_LIVE: u32 = 1;
pub const AFFECT_CONFIG: u32 = 2;
/// `VIR_DOMAIN_MEM_MAXIMUM` / `VIR_DOMAIN_VCPU_MAXIMUM`.
pub const MAXIMUM: u32 = 4;

/// What the stats collector needs of one running domain.
#[derive(Clone)]
pub struct LiveHandle {
    pub uuid: Uuid,
    pub pid: i32,
    pub vm: Addr<QemuVm>,
    /// The definition the domain runs with.
    pub def: DomainDef,
}

/// The handles of running domains (all, or the one given).
#[derive(Message)]
#[rtype(result = "Vec<LiveHandle>")]
pub struct LiveHandles {
    pub only: Option<Uuid>,
}

impl Handler<LiveHandles> for Registry {
    type Result = MessageResult<LiveHandles>;

    fn handle(&mut self, msg: LiveHandles, _: &mut Self::Context) -> Self::Result {
        let handles = self
            .domains
            .iter()
            .filter(|(u, _)| msg.only.is_none_or(|o| o == **u))
            .filter_map(|(u, e)| {
                e.live.as_ref().map(|l| LiveHandle {
                    uuid: *u,
                    pid: l.pid,
                    vm: l.vm.clone(),
                    def: l.def.clone(),
                })
            })
            .collect();
        MessageResult(handles)
    }
}

/// `virDomainMetadataType`.
pub mod metadata_kind {
    pub const DESCRIPTION: i32 = 0;
    pub const TITLE: i32 = 1;
    pub const ELEMENT: i32 = 2;
}

/// Changes of memory, vCPUs, metadata and name.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<DomainView>>")]
pub enum TuneOp {
    /// `virDomainSetMemoryFlags`: kibibytes; `MAXIMUM` in flags for the
    /// maximum.
    SetMemory { uuid: Uuid, kib: u64, flags: u32 },
    /// `virDomainSetVcpusFlags` for the persistent definition.
    SetVcpus { uuid: Uuid, count: u32, flags: u32 },
    /// `virDomainSetMetadata`.
    SetMetadata {
        uuid: Uuid,
        kind: i32,
        value: Option<String>,
        key: Option<String>,
        uri: Option<String>,
        flags: u32,
    },
    /// `virDomainRename`.
    Rename { uuid: Uuid, new_name: String },
    /// A tuning change of the persistent definition.
    EditConfig { uuid: Uuid, edit: ConfigEdit },
}

/// Tuning changes stored in the persistent definition (`<cputune>`,
/// `<memtune>`); None removes a setting.
#[derive(Debug)]
pub enum ConfigEdit {
    VcpuPin {
        vcpu: u32,
        cpuset: String,
    },
    EmulatorPin {
        cpuset: String,
    },
    Scheduler {
        shares: Option<u64>,
        period: Option<i64>,
        quota: Option<i64>,
    },
    Memory {
        hard: Option<u64>,
        soft: Option<u64>,
        swap: Option<u64>,
    },
}

/// Which definitions a change applies to (`virDomainObjGetDefs`).
struct Targets {
    live: bool,
    config: bool,
}

impl Registry {
    fn targets(&mut self, uuid: &Uuid, flags: u32) -> Result<Targets> {
        let e = self.entry(uuid)?;
        let active = e.live.is_some();
        let (mut live, config) = (flags & AFFECT_LIVE != 0, flags & AFFECT_CONFIG != 0);
        let config = if !live && !config {
            live = active;
            !active
        } else {
            config
        };
        if live && !active {
            return Err(Error::OperationInvalid("domain is not running".into()));
        }
        if config && !e.persistent {
            return Err(Error::OperationInvalid(
                "transient domains do not have any persistent config".into(),
            ));
        }
        Ok(Targets { live, config })
    }

    /// Writes the persistent definition and publishes the new view.
    fn commit(
        &mut self,
        uuid: &Uuid,
        persistent: Option<DomainDef>,
        live: Option<DomainDef>,
    ) -> Result<Arc<DomainView>> {
        if let Some(def) = persistent {
            self.store.save_definition(uuid, &def.to_xml(None))?;
            let e = self.entry(uuid)?;
            e.def = def;
        }
        if let Some(def) = live {
            if let Some(l) = self.entry(uuid)?.live.as_mut() {
                l.def = def;
            }
            self.save_live(uuid);
        }
        Ok(self.publish(uuid))
    }

    fn defs(&mut self, uuid: &Uuid, t: &Targets) -> Result<(Option<DomainDef>, Option<DomainDef>)> {
        let e = self.entry(uuid)?;
        let live = if t.live {
            e.live.as_ref().map(|l| l.def.clone())
        } else {
            None
        };
        let config = t.config.then(|| e.def.clone());
        Ok((config, live))
    }

    fn set_memory(
        &mut self,
        uuid: Uuid,
        kib: u64,
        flags: u32,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        let ready =
            |r| -> ResponseActFuture<Self, Result<Arc<DomainView>>> { Box::pin(fut::ready(r)) };
        let t = match self.targets(&uuid, flags & (AFFECT_LIVE | AFFECT_CONFIG)) {
            Ok(t) => t,
            Err(e) => return ready(Err(e)),
        };
        let (config, live) = match self.defs(&uuid, &t) {
            Ok(d) => d,
            Err(e) => return ready(Err(e)),
        };
        if flags & MAXIMUM != 0 {
            if live.is_some() {
                return ready(Err(Error::OperationInvalid(
                    "cannot resize the maximum memory on an active domain".into(),
                )));
            }
            let config = config.map(|mut d| {
                d.memory_kib = kib;
                d.current_memory_kib = d.current_memory_kib.min(kib);
                d
            });
            return ready(self.commit(&uuid, config, None));
        }
        let oldmax = match (&live, &config) {
            (Some(l), Some(c)) => l.memory_kib.min(c.memory_kib),
            (Some(l), None) => l.memory_kib,
            (None, Some(c)) => c.memory_kib,
            (None, None) => 0,
        };
        if kib > oldmax {
            return ready(Err(Error::InvalidArg(
                "cannot set memory higher than max memory".into(),
            )));
        }
        let config = config.map(|mut d| {
            d.current_memory_kib = kib;
            d
        });
        let Some(live_def) = live.as_ref() else {
            return ready(self.commit(&uuid, config, None));
        };
        if live_def.devices.memballoon != "virtio" {
            return ready(Err(Error::OperationInvalid(
                "Unable to change memory of active domain without the balloon device and guest OS balloon driver".into(),
            )));
        }
        let vm = match self.vm(&uuid) {
            Ok(vm) => vm,
            Err(e) => return ready(Err(e)),
        };
        let cmd = QmpCommand {
            command: "balloon",
            arguments: Some(serde_json::json!({ "value": kib * 1024 })),
        };
        // The live size follows the guest: BALLOON_CHANGE reports it.
        Box::pin(vm.send(cmd).into_actor(self).map(move |res, act, _| {
            res.map_err(|_| Error::OperationInvalid("domain is not running".into()))??;
            act.commit(&uuid, config, None)
        }))
    }

    /// QEMU's BALLOON_CHANGE: the guest gave back or took memory.
    pub(super) fn balloon_changed(&mut self, uuid: &Uuid, data: &serde_json::Value) {
        let Some(actual) = data.get("actual").and_then(serde_json::Value::as_u64) else {
            return;
        };
        let kib = actual / 1024;
        let Some(l) = self.domains.get_mut(uuid).and_then(|e| e.live.as_mut()) else {
            return;
        };
        l.def.current_memory_kib = kib;
        self.save_live(uuid);
        self.publish(uuid);
        self.emit(uuid, |d| {
            Event::new(
                Family::Domain,
                ObjectKey::Uuid(*uuid),
                EVENT_BALLOON_CHANGE,
                qemud_protocol::remote::procs::DOMAIN_EVENT_CALLBACK_BALLOON_CHANGE,
                &BalloonChangeMsg {
                    dom: d.clone(),
                    actual: kib,
                },
            )
        });
    }

    fn set_vcpus(
        &mut self,
        uuid: Uuid,
        count: u32,
        flags: u32,
    ) -> ResponseActFuture<Self, Result<Arc<DomainView>>> {
        match self.set_vcpus_prepare(uuid, count, flags) {
            Err(e) => Box::pin(fut::ready(Err(e))),
            Ok((config, None)) => Box::pin(fut::ready(self.commit(&uuid, config, None))),
            Ok((config, Some(mut live))) => {
                let vm = match self.vm(&uuid) {
                    Ok(vm) => vm,
                    Err(e) => return Box::pin(fut::ready(Err(e))),
                };
                Box::pin(
                    hotplug_vcpus(vm, count)
                        .into_actor(self)
                        .map(move |res, act, _| {
                            res?;
                            live.current_vcpus = count;
                            act.commit(&uuid, config, Some(live))
                        }),
                )
            }
        }
    }

    /// Checks a vCPU count change and returns the persistent definition
    /// with the change made, and the live one when it must be hotplugged.
    fn set_vcpus_prepare(
        &mut self,
        uuid: Uuid,
        count: u32,
        flags: u32,
    ) -> Result<(Option<DomainDef>, Option<DomainDef>)> {
        let t = self.targets(&uuid, flags & (AFFECT_LIVE | AFFECT_CONFIG))?;
        if count == 0 {
            return Err(Error::InvalidArg(
                "nvcpus in virDomainSetVcpusFlags must not be zero".into(),
            ));
        }
        let (config, live) = self.defs(&uuid, &t)?;
        if flags & MAXIMUM != 0 {
            if live.is_some() {
                return Err(Error::OperationUnsupported(
                    "maximum vcpu count of a live domain can't be modified".into(),
                ));
            }
            let config = config.map(|mut d| {
                d.vcpus = count;
                d.current_vcpus = d.current_vcpus.min(count);
                // Pins of vCPUs that no longer exist would make the
                // definition invalid.
                d.cputune.vcpupin.retain(|(v, _)| *v < count);
                d
            });
            return Ok((config, None));
        }
        if let Some(l) = &live {
            if count > l.vcpus {
                return Err(Error::InvalidArg(format!(
                    "requested vcpus is greater than max allowable vcpus for the live domain: {count} > {}",
                    l.vcpus
                )));
            }
        }
        let config = match config {
            Some(mut d) => {
                if count > d.vcpus {
                    return Err(Error::InvalidArg(format!(
                        "requested vcpus is greater than max allowable vcpus for the persistent domain: {count} > {}",
                        d.vcpus
                    )));
                }
                d.current_vcpus = count;
                Some(d)
            }
            None => None,
        };
        Ok((config, live))
    }

    #[allow(clippy::too_many_arguments)]
    fn set_metadata(
        &mut self,
        uuid: Uuid,
        kind: i32,
        value: Option<String>,
        key: Option<String>,
        uri: Option<String>,
        flags: u32,
    ) -> Result<Arc<DomainView>> {
        let t = self.targets(&uuid, flags)?;
        let (config, live) = self.defs(&uuid, &t)?;
        let apply = |mut d: DomainDef| -> Result<DomainDef> {
            let value = value.clone().filter(|v| !v.is_empty());
            match kind {
                metadata_kind::DESCRIPTION => d.description = value,
                metadata_kind::TITLE => {
                    if value.as_deref().is_some_and(|v| v.contains('\n')) {
                        return Err(Error::InvalidArg(
                            "Domain title can't contain newlines".into(),
                        ));
                    }
                    d.title = value
                }
                metadata_kind::ELEMENT => {
                    let uri = uri.clone().unwrap_or_default();
                    d.metadata =
                        set_element(d.metadata.take(), &uri, key.as_deref(), value.as_deref())?;
                }
                other => {
                    return Err(Error::InvalidArg(format!(
                        "unknown metadata type '{other}'"
                    )))
                }
            }
            Ok(d)
        };
        let config = config.map(apply).transpose()?;
        let live = live.map(apply).transpose()?;
        let v = self.commit(&uuid, config, live)?;
        let nsuri = (kind == metadata_kind::ELEMENT).then(|| uri.clone().unwrap_or_default());
        self.emit(&uuid, |d| metadata_event(d, kind, nsuri));
        Ok(v)
    }

    fn edit_config(&mut self, uuid: Uuid, edit: ConfigEdit) -> Result<Arc<DomainView>> {
        let t = self.targets(&uuid, AFFECT_CONFIG)?;
        let (Some(mut def), _) = self.defs(&uuid, &t)? else {
            return Ok(self.publish(&uuid));
        };
        match edit {
            ConfigEdit::VcpuPin { vcpu, cpuset } => {
                if vcpu >= def.vcpus {
                    return Err(Error::InvalidArg(format!(
                        "vcpu {vcpu} is out of range of persistent cpu count {}",
                        def.vcpus
                    )));
                }
                def.cputune.set_vcpu(vcpu, Some(cpuset));
            }
            ConfigEdit::EmulatorPin { cpuset } => def.cputune.emulatorpin = Some(cpuset),
            ConfigEdit::Scheduler {
                shares,
                period,
                quota,
            } => {
                if shares.is_some() {
                    def.cputune.shares = shares;
                }
                if let Some(p) = period {
                    def.cputune.global_period = Some(p as u64);
                }
                if quota.is_some() {
                    def.cputune.global_quota = quota;
                }
            }
            ConfigEdit::Memory { hard, soft, swap } => {
                let m = &mut def.memtune;
                let unlimited =
                    |v: u64| (v < crate::domain::cgroup::MEMORY_UNLIMITED_KIB).then_some(v);
                if let Some(h) = hard {
                    m.hard_limit = unlimited(h);
                }
                if let Some(s) = soft {
                    m.soft_limit = unlimited(s);
                }
                if let Some(s) = swap {
                    m.swap_hard_limit = unlimited(s);
                }
                if let (Some(h), Some(s)) = (m.hard_limit, m.swap_hard_limit) {
                    if h > s {
                        return Err(Error::InvalidArg(
                            "memory hard_limit tunable value must be lower than or equal to swap_hard_limit".into(),
                        ));
                    }
                }
            }
        }
        self.commit(&uuid, Some(def), None)
    }

    fn rename(&mut self, uuid: Uuid, new_name: String) -> Result<Arc<DomainView>> {
        qemud_config::domain::validate_name(&new_name)
            .map_err(|e| Error::InvalidArg(e.to_string()))?;
        let e = self.entry(&uuid)?;
        if e.live.is_some() {
            return Err(Error::OperationInvalid(
                "cannot rename active domain".into(),
            ));
        }
        if !e.persistent {
            return Err(Error::OperationInvalid(
                "cannot rename a transient domain".into(),
            ));
        }
        if e.def.name == new_name {
            return Err(Error::OperationInvalid(
                "Can't rename domain to itself".into(),
            ));
        }
        let old_name = e.def.name.clone();
        if let Some(other) = self.domains.values().find(|o| o.def.name == new_name) {
            return Err(Error::OperationInvalid(format!(
                "domain with name '{}' already exists",
                other.def.name
            )));
        }
        let mut def = self.entry(&uuid)?.def.clone();
        def.name = new_name;
        // libvirt reports the old name as undefined and the new one as
        // defined, both under the same UUID.
        self.lifecycle(&uuid, crate::events::lifecycle::UNDEFINED, 1);
        let v = self.commit(&uuid, Some(def), None)?;
        self.lifecycle(&uuid, crate::events::lifecycle::DEFINED, 2);
        tracing::info!(from = %old_name, to = %v.name, "renamed domain");
        Ok(v)
    }
}

async fn qmp(
    vm: &Addr<QemuVm>,
    command: &'static str,
    arguments: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    vm.send(QmpCommand { command, arguments })
        .await
        .map_err(|_| Error::OperationInvalid("domain is not running".into()))?
}

/// How long an unplugged vCPU may take to leave the guest.
const UNPLUG_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Plugs or unplugs vCPUs until QEMU has `count` of them: new ones are
/// added in topology order with ids `vcpuN`; only those can leave again
/// (the ones QEMU started with are not hot-unpluggable).
async fn hotplug_vcpus(vm: Addr<QemuVm>, count: u32) -> Result<()> {
    let slots = qmp(&vm, "query-hotpluggable-cpus", None).await?;
    let mut slots: Vec<serde_json::Value> = slots.as_array().cloned().unwrap_or_default();
    let key = |v: &serde_json::Value| {
        let p = &v["props"];
        let n = |k: &str| p.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
        (
            n("node-id"),
            n("socket-id"),
            n("die-id"),
            n("core-id"),
            n("thread-id"),
        )
    };
    slots.sort_by_key(key);
    let plugged: Vec<usize> = (0..slots.len())
        .filter(|i| slots[*i].get("qom-path").is_some())
        .collect();
    let want = count as usize;
    if want > plugged.len() {
        let free = (0..slots.len()).filter(|i| slots[*i].get("qom-path").is_none());
        for i in free.take(want - plugged.len()) {
            let slot = &slots[i];
            let mut args = serde_json::Map::new();
            args.insert("driver".into(), slot["type"].clone());
            args.insert("id".into(), serde_json::Value::String(format!("vcpu{i}")));
            if let Some(props) = slot["props"].as_object() {
                for (k, v) in props {
                    args.insert(k.clone(), v.clone());
                }
            }
            qmp(&vm, "device_add", Some(serde_json::Value::Object(args))).await?;
        }
        return Ok(());
    }
    if want < plugged.len() {
        for &i in plugged.iter().rev().take(plugged.len() - want) {
            let path = slots[i]["qom-path"].as_str().unwrap_or("");
            let Some(id) = path.strip_prefix("/machine/peripheral/") else {
                return Err(Error::OperationInvalid(format!(
                    "vcpu '{i}' can't be hotunplugged"
                )));
            };
            qmp(&vm, "device_del", Some(serde_json::json!({ "id": id }))).await?;
        }
        let until = tokio::time::Instant::now() + UNPLUG_WAIT;
        loop {
            let cpus = qmp(&vm, "query-cpus-fast", None).await?;
            if cpus.as_array().map(Vec::len).unwrap_or(0) <= want {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(Error::OperationFailed(
                    "vcpu unplug request timed out. Unplug result must be manually inspected in the domain".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Sets, replaces or removes (value `None`) the custom element of namespace
/// `uri` inside `<metadata>`, keeping the other elements.
fn set_element(
    metadata: Option<String>,
    uri: &str,
    key: Option<&str>,
    value: Option<&str>,
) -> Result<Option<String>> {
    if uri.is_empty() {
        return Err(Error::InvalidArg(
            "argument unsupported: uri must not be empty".into(),
        ));
    }
    let inner = metadata
        .as_deref()
        .and_then(|m| m.strip_prefix("<metadata>"))
        .and_then(|m| m.strip_suffix("</metadata>"))
        .unwrap_or("")
        .to_string();
    let mut kept = crate::domain::tuning::metadata_elements(&inner)
        .into_iter()
        .filter(|(ns, _)| ns != uri)
        .map(|(_, text)| text)
        .collect::<Vec<_>>();
    if let Some(v) = value {
        let Some(key) = key else {
            return Err(Error::InvalidArg("argument key must not be NULL".into()));
        };
        let element = crate::domain::tuning::namespaced_element(v, key, uri)?;
        kept.push(element);
    }
    if kept.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("<metadata>{}</metadata>", kept.concat())))
}

#[derive(Serialize)]
struct MetadataChangeMsg {
    dom: NonnullDomain,
    type_: i32,
    nsuri: OptString,
}

#[derive(Serialize)]
struct BalloonChangeMsg {
    dom: NonnullDomain,
    actual: u64,
}

/// `VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE`.
const EVENT_BALLOON_CHANGE: i32 = 13;

/// `VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`.
const EVENT_METADATA_CHANGE: i32 = 23;

fn metadata_event(dom: &NonnullDomain, kind: i32, nsuri: Option<String>) -> Result<Event> {
    Event::new(
        Family::Domain,
        ObjectKey::Uuid(Uuid::from_bytes(dom.uuid.0)),
        EVENT_METADATA_CHANGE,
        qemud_protocol::remote::procs::DOMAIN_EVENT_CALLBACK_METADATA_CHANGE,
        &MetadataChangeMsg {
            dom: dom.clone(),
            type_: kind,
            nsuri: nsuri.map(Into::into),
        },
    )
}

impl Handler<TuneOp> for Registry {
    type Result = ResponseActFuture<Self, Result<Arc<DomainView>>>;

    fn handle(&mut self, op: TuneOp, _: &mut Self::Context) -> Self::Result {
        let ready =
            |r| -> ResponseActFuture<Self, Result<Arc<DomainView>>> { Box::pin(fut::ready(r)) };
        match op {
            TuneOp::SetMemory { uuid, kib, flags } => self.set_memory(uuid, kib, flags),
            TuneOp::SetVcpus { uuid, count, flags } => self.set_vcpus(uuid, count, flags),
            TuneOp::SetMetadata {
                uuid,
                kind,
                value,
                key,
                uri,
                flags,
            } => ready(self.set_metadata(uuid, kind, value, key, uri, flags)),
            TuneOp::Rename { uuid, new_name } => ready(self.rename(uuid, new_name)),
            TuneOp::EditConfig { uuid, edit } => ready(self.edit_config(uuid, edit)),
        }
    }
}
