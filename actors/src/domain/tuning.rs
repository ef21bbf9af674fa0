//! Table rows for tuning a domain: memory size, vCPU count, metadata
//! (title, description, custom elements), renaming and the scheduler's
//! view. Changes go through the registry ([`TuneOp`]); reads come from the
//! index or from the kernel's view of QEMU's process.

use roxmltree::{Document, Node, NodeType};

use qemud_config::domain::{esc, esc_attr, DomainDef};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::typed_params::{self, Accepted, ParamList, ParamLookup, ParamType};
use qemud_protocol::xdr::{XdrString, XdrVec};

use crate::call;
use crate::domain::cgroup::{self, Controller, MEMORY_UNLIMITED_KIB};
use crate::domain::index::DomainView;
use crate::domain::procedures::resolve;
use crate::domain::qmp::QmpClient;
use crate::domain::registry::tune::{
    metadata_kind, ConfigEdit, TuneOp, AFFECT_CONFIG, AFFECT_LIVE, MAXIMUM,
};
use crate::domain::stats::{cpuset_to_map, set_affinity};
use crate::error::{Error, Result};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};
use tracing::warn;

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(DOMAIN_SET_MEMORY, Write, set_memory),
        call!(DOMAIN_SET_MEMORY_FLAGS, Write, set_memory_flags),
        call!(DOMAIN_SET_MAX_MEMORY, Write, set_max_memory),
        call!(DOMAIN_SET_VCPUS, Write, set_vcpus),
        call!(DOMAIN_SET_VCPUS_FLAGS, Write, set_vcpus_flags),
        call!(DOMAIN_SET_METADATA, Write, set_metadata),
        call!(DOMAIN_GET_METADATA, Read, get_metadata),
        call!(DOMAIN_RENAME, Write, rename),
        call!(DOMAIN_GET_SCHEDULER_TYPE, Read, get_scheduler_type),
        call!(
            DOMAIN_GET_SCHEDULER_PARAMETERS,
            Read,
            get_scheduler_parameters
        ),
        call!(
            DOMAIN_GET_SCHEDULER_PARAMETERS_FLAGS,
            Read,
            get_scheduler_parameters_flags
        ),
        call!(
            DOMAIN_SET_SCHEDULER_PARAMETERS,
            Write,
            set_scheduler_parameters
        ),
        call!(
            DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS,
            Write,
            set_scheduler_parameters_flags
        ),
        call!(DOMAIN_GET_MEMORY_PARAMETERS, Read, get_memory_parameters),
        call!(DOMAIN_SET_MEMORY_PARAMETERS, Write, set_memory_parameters),
    ]
}

async fn tune(call: &Call, op: TuneOp) -> Result<()> {
    call.svc.registry.send(op).await?.map(drop)
}

fn uuid(call: &Call, dom: &NonnullDomain) -> Result<uuid::Uuid> {
    Ok(resolve(call, dom)?.uuid)
}

// Memory.

async fn set_memory(call: &Call, a: DomainSetMemoryArgs) -> Result<()> {
    let uuid = uuid(call, &a.dom)?;
    tune(
        call,
        TuneOp::SetMemory {
            uuid,
            kib: a.memory,
            flags: AFFECT_LIVE,
        },
    )
    .await
}

async fn set_memory_flags(call: &Call, a: DomainSetMemoryFlagsArgs) -> Result<()> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG | MAXIMUM,
        "qemuDomainSetMemoryFlags",
    )?;
    let uuid = uuid(call, &a.dom)?;
    tune(
        call,
        TuneOp::SetMemory {
            uuid,
            kib: a.memory,
            flags: a.flags,
        },
    )
    .await
}

async fn set_max_memory(call: &Call, a: DomainSetMaxMemoryArgs) -> Result<()> {
    let uuid = uuid(call, &a.dom)?;
    tune(
        call,
        TuneOp::SetMemory {
            uuid,
            kib: a.memory,
            flags: MAXIMUM,
        },
    )
    .await
}

// vCPUs.

async fn set_vcpus(call: &Call, a: DomainSetVcpusArgs) -> Result<()> {
    let uuid = uuid(call, &a.dom)?;
    tune(
        call,
        TuneOp::SetVcpus {
            uuid,
            count: a.nvcpus,
            flags: AFFECT_LIVE,
        },
    )
    .await
}

async fn set_vcpus_flags(call: &Call, a: DomainSetVcpusFlagsArgs) -> Result<()> {
    // VIR_DOMAIN_VCPU_GUEST (8) needs the guest agent; HOTPLUGGABLE (16)
    // only matters for live changes.
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG | MAXIMUM | 16,
        "qemuDomainSetVcpusFlags",
    )?;
    let uuid = uuid(call, &a.dom)?;
    tune(
        call,
        TuneOp::SetVcpus {
            uuid,
            count: a.nvcpus,
            flags: a.flags,
        },
    )
    .await
}

// Metadata.

async fn set_metadata(call: &Call, a: DomainSetMetadataArgs) -> Result<()> {
    check_flags(a.flags, AFFECT_LIVE | AFFECT_CONFIG, "virDomainSetMetadata")?;
    let uuid = uuid(call, &a.dom)?;
    let op = TuneOp::SetMetadata {
        uuid,
        kind: a.type_,
        value: a.metadata.map(|s| s.0),
        key: a.key.map(|s| s.0),
        uri: a.uri.map(|s| s.0),
        flags: a.flags,
    };
    tune(call, op).await
}

async fn get_metadata(call: &Call, a: DomainGetMetadataArgs) -> Result<DomainGetMetadataRet> {
    check_flags(a.flags, AFFECT_LIVE | AFFECT_CONFIG, "virDomainGetMetadata")?;
    let v = resolve(call, &a.dom)?;
    if a.flags & AFFECT_LIVE != 0 && a.flags & AFFECT_CONFIG != 0 {
        return Err(Error::InvalidArg(
            "flags 'affect live' and 'affect config' are mutually exclusive".into(),
        ));
    }
    if a.flags & AFFECT_LIVE != 0 && !v.is_active() {
        return Err(Error::OperationInvalid("domain is not running".into()));
    }
    let xml = match (&v.inactive_xml, a.flags & AFFECT_CONFIG != 0) {
        (Some(inactive), true) => inactive.clone(),
        _ => v.xml.clone(),
    };
    let def = DomainDef::parse(&xml).map_err(|e| Error::Internal(e.to_string()))?;
    let found = match a.type_ {
        metadata_kind::DESCRIPTION => def.description,
        metadata_kind::TITLE => def.title,
        metadata_kind::ELEMENT => {
            let uri = a.uri.map(|u| u.0).unwrap_or_default();
            def.metadata
                .as_deref()
                .and_then(|m| extract_element(m, &uri))
        }
        other => {
            return Err(Error::InvalidArg(format!(
                "unknown metadata type '{other}'"
            )));
        }
    };
    match found {
        Some(text) => Ok(DomainGetMetadataRet {
            metadata: XdrString(text),
        }),
        None => Err(Error::Other {
            code: qemud_protocol::ErrorCode::NoDomainMetadata,
            domain: qemud_protocol::ErrorDomain::Domain,
            message: "metadata not found: Requested metadata element is not present".into(),
        }),
    }
}

async fn rename(call: &Call, a: DomainRenameArgs) -> Result<DomainRenameRet> {
    check_flags(a.flags, 0, "qemuDomainRename")?;
    let uuid = uuid(call, &a.dom)?;
    let Some(new_name) = a.new_name.map(|s| s.0) else {
        return Err(Error::InvalidArg(
            "new_name in virDomainRename must not be NULL".into(),
        ));
    };
    tune(call, TuneOp::Rename { uuid, new_name }).await?;
    Ok(DomainRenameRet { retcode: 0 })
}

// Scheduler: what the kernel applies to QEMU's cgroup.

/// The CPU controller settings of the cgroup QEMU runs in: (shares or
/// weight, period, quota).
fn cpu_cgroup(pid: i32) -> Option<(u64, u64, i64)> {
    cgroup::current_group(pid, Controller::Cpu)?.cpu()
}

fn cpu_controller_missing() -> Error {
    Controller::Cpu.not_mounted()
}

/// The scheduler parameters libvirt lists for a QEMU domain.
const SCHED_PARAMS: usize = 9;

async fn get_scheduler_type(
    call: &Call,
    a: DomainGetSchedulerTypeArgs,
) -> Result<DomainGetSchedulerTypeRet> {
    let v = resolve(call, &a.dom)?;
    if let Some(pid) = v.pid {
        cpu_cgroup(pid).ok_or_else(cpu_controller_missing)?;
    }
    Ok(DomainGetSchedulerTypeRet {
        type_: "posix".into(),
        nparams: SCHED_PARAMS as i32,
    })
}

/// `cpu_shares` and the bandwidth of vCPUs, emulator, whole domain and
/// I/O threads. All of QEMU's threads share one cgroup here, so the
/// bandwidth is the same for each kind.
fn scheduler_params(call: &Call, dom: &NonnullDomain, flags: u32) -> Result<Vec<TypedParam>> {
    let v = resolve(call, dom)?;
    let live = match flags & (AFFECT_LIVE | AFFECT_CONFIG) {
        0 => v.is_active(),
        f => f & AFFECT_LIVE != 0,
    };
    let (shares, period, quota) = if live {
        let Some(pid) = v.pid else {
            return Err(Error::OperationInvalid("domain is not running".into()));
        };
        cpu_cgroup(pid).ok_or_else(cpu_controller_missing)?
    } else {
        let t = persistent_def(&v)?.cputune;
        (
            t.shares.unwrap_or(0),
            t.global_period.unwrap_or(0),
            t.global_quota.unwrap_or(0),
        )
    };
    let mut l = ParamList::new();
    l.ullong("cpu_shares", shares);
    for kind in ["vcpu", "emulator", "global", "iothread"] {
        l.ullong(format!("{kind}_period"), period);
        l.llong(format!("{kind}_quota"), quota);
    }
    Ok(l.0)
}

async fn get_scheduler_parameters(
    call: &Call,
    a: DomainGetSchedulerParametersArgs,
) -> Result<DomainGetSchedulerParametersRet> {
    let mut params = scheduler_params(call, &a.dom, 0)?;
    params.truncate(a.nparams.max(0) as usize);
    Ok(DomainGetSchedulerParametersRet {
        params: XdrVec(params),
    })
}

async fn get_scheduler_parameters_flags(
    call: &Call,
    a: DomainGetSchedulerParametersFlagsArgs,
) -> Result<DomainGetSchedulerParametersFlagsRet> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG | typed_params::STRING_OKAY,
        "qemuDomainGetSchedulerParametersFlags",
    )?;
    let mut params = scheduler_params(call, &a.dom, a.flags)?;
    params.truncate(a.nparams.max(0) as usize);
    Ok(DomainGetSchedulerParametersFlagsRet {
        params: XdrVec(params),
    })
}

/// The parameters `virDomainSetSchedulerParameters` accepts for QEMU.
const SCHED_ACCEPTED: &[Accepted] = &[
    Accepted::one("cpu_shares", ParamType::ULLong),
    Accepted::one("vcpu_period", ParamType::ULLong),
    Accepted::one("vcpu_quota", ParamType::LLong),
    Accepted::one("emulator_period", ParamType::ULLong),
    Accepted::one("emulator_quota", ParamType::LLong),
    Accepted::one("global_period", ParamType::ULLong),
    Accepted::one("global_quota", ParamType::LLong),
    Accepted::one("iothread_period", ParamType::ULLong),
    Accepted::one("iothread_quota", ParamType::LLong),
];

const PERIOD_RANGE: (i64, i64) = (1000, 1_000_000);
const QUOTA_RANGE: (i64, i64) = (1000, 17_592_186_044_415);

async fn set_scheduler_parameters(call: &Call, a: DomainSetSchedulerParametersArgs) -> Result<()> {
    set_scheduler(call, &a.dom, &a.params.0, 0).await
}

async fn set_scheduler_parameters_flags(
    call: &Call,
    a: DomainSetSchedulerParametersFlagsArgs,
) -> Result<()> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainSetSchedulerParametersFlags",
    )?;
    set_scheduler(call, &a.dom, &a.params.0, a.flags).await
}

/// Validates every parameter first, so a bad list changes nothing, then
/// writes them to the domain's own CPU cgroup.
async fn set_scheduler(
    call: &Call,
    dom: &NonnullDomain,
    params: &[TypedParam],
    flags: u32,
) -> Result<()> {
    typed_params::check_received(params, DOMAIN_SCHEDULER_PARAMETERS_MAX).map_err(param_error)?;
    typed_params::validate(params, SCHED_ACCEPTED).map_err(param_error)?;
    let v = resolve(call, dom)?;
    let (live, config) = impact(&v, flags)?;
    let mut shares = None;
    let mut period = None;
    let mut quota = None;
    for p in params {
        let name = p.field.0.as_str();
        let value = params.get_i64(name).unwrap_or(0);
        let check = |(lo, hi): (i64, i64)| -> Result<()> {
            if value < lo || value > hi {
                return Err(Error::InvalidArg(format!(
                    "value of '{name}' is out of range [{lo}, {hi}]"
                )));
            }
            Ok(())
        };
        match name {
            "cpu_shares" => shares = params.get_u64(name),
            "global_period" => {
                check(PERIOD_RANGE)?;
                period = Some(value);
            }
            "global_quota" => {
                let value = if value < 0 { -1 } else { value };
                if value != -1 {
                    check(QUOTA_RANGE)?;
                }
                quota = Some(value);
            }
            other => {
                // One cgroup holds all of QEMU's threads: per-thread
                // bandwidth would need one per thread.
                return Err(Error::ConfigUnsupported(format!(
                    "per-thread CPU bandwidth ('{other}') is not supported"
                )));
            }
        }
    }
    if live {
        let Some(pid) = v.pid else {
            return Err(Error::OperationInvalid("domain is not running".into()));
        };
        cgroup::domain_group(pid, &v.uuid, Controller::Cpu)?.apply_cpu(shares, period, quota)?;
    }
    if config {
        let edit = ConfigEdit::Scheduler {
            shares,
            period,
            quota,
        };
        tune(call, TuneOp::EditConfig { uuid: v.uuid, edit }).await?;
    }
    Ok(())
}

/// `virDomainModificationImpact`: (live, config) for a domain.
fn impact(v: &DomainView, flags: u32) -> Result<(bool, bool)> {
    let (live, config) = match flags & (AFFECT_LIVE | AFFECT_CONFIG) {
        0 => (v.is_active(), !v.is_active()),
        f => (f & AFFECT_LIVE != 0, f & AFFECT_CONFIG != 0),
    };
    if live && !v.is_active() {
        return Err(Error::OperationInvalid("domain is not running".into()));
    }
    if config && !v.persistent {
        return Err(Error::OperationInvalid(
            "transient domains do not have any persistent config".into(),
        ));
    }
    Ok((live, config))
}

/// The persistent definition of a domain (the only one when inactive).
fn persistent_def(v: &DomainView) -> Result<DomainDef> {
    if !v.persistent {
        return Err(Error::OperationInvalid(
            "transient domains do not have any persistent config".into(),
        ));
    }
    DomainDef::parse(v.inactive_xml.as_deref().unwrap_or(&v.xml))
        .map_err(|e| Error::Internal(e.to_string()))
}

// Memory tuning: the memory controller of QEMU's cgroup.

const MEMORY_ACCEPTED: &[Accepted] = &[
    Accepted::one("hard_limit", ParamType::ULLong),
    Accepted::one("soft_limit", ParamType::ULLong),
    Accepted::one("swap_hard_limit", ParamType::ULLong),
    Accepted::one("min_guarantee", ParamType::ULLong),
];

/// hard_limit, soft_limit and swap_hard_limit.
const MEMORY_PARAMS: i32 = 3;

/// Whether a call with these impact flags is about the live domain.
fn wants_live(v: &crate::domain::index::DomainView, flags: u32) -> Result<bool> {
    match flags & (AFFECT_LIVE | AFFECT_CONFIG) {
        0 => Ok(v.is_active()),
        f if f == AFFECT_LIVE | AFFECT_CONFIG => Err(Error::InvalidArg(
            "flags 'affect live' and 'affect config' are mutually exclusive".into(),
        )),
        f if f & AFFECT_LIVE != 0 && !v.is_active() => {
            Err(Error::OperationInvalid("domain is not running".into()))
        }
        f => Ok(f & AFFECT_LIVE != 0),
    }
}

async fn get_memory_parameters(
    call: &Call,
    a: DomainGetMemoryParametersArgs,
) -> Result<DomainGetMemoryParametersRet> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG | typed_params::STRING_OKAY,
        "qemuDomainGetMemoryParameters",
    )?;
    let v = resolve(call, &a.dom)?;
    let live = wants_live(&v, a.flags)?;
    if a.nparams == 0 {
        return Ok(DomainGetMemoryParametersRet {
            params: XdrVec::default(),
            nparams: MEMORY_PARAMS,
        });
    }
    let (hard, soft, swap) = if live {
        let pid = v
            .pid
            .ok_or_else(|| Error::OperationInvalid("domain is not running".into()))?;
        cgroup::current_group(pid, Controller::Memory)
            .ok_or_else(|| Controller::Memory.not_mounted())?
            .memory()
    } else {
        let m = persistent_def(&v)?.memtune;
        let or_unlimited = |x: Option<u64>| x.unwrap_or(MEMORY_UNLIMITED_KIB);
        (
            or_unlimited(m.hard_limit),
            or_unlimited(m.soft_limit),
            or_unlimited(m.swap_hard_limit),
        )
    };
    let mut l = ParamList::new();
    l.ullong("hard_limit", hard)
        .ullong("soft_limit", soft)
        .ullong("swap_hard_limit", swap);
    l.0.truncate(a.nparams.max(0) as usize);
    let n = l.len() as i32;
    Ok(DomainGetMemoryParametersRet {
        params: XdrVec(l.0),
        nparams: n,
    })
}

async fn set_memory_parameters(call: &Call, a: DomainSetMemoryParametersArgs) -> Result<()> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainSetMemoryParameters",
    )?;
    let params = &a.params.0;
    typed_params::check_received(params, DOMAIN_MEMORY_PARAMETERS_MAX).map_err(param_error)?;
    typed_params::validate(params, MEMORY_ACCEPTED).map_err(param_error)?;
    let v = resolve(call, &a.dom)?;
    let (live, config) = impact(&v, a.flags)?;
    if params.get_u64("min_guarantee").is_some() {
        return Err(Error::ConfigUnsupported(
            "QEMU does not support 'min_guarantee'".into(),
        ));
    }
    let hard = params.get_u64("hard_limit");
    let soft = params.get_u64("soft_limit");
    let swap = params.get_u64("swap_hard_limit");
    if live {
        let pid = v
            .pid
            .ok_or_else(|| Error::OperationInvalid("domain is not running".into()))?;
        let current = cgroup::current_group(pid, Controller::Memory)
            .ok_or_else(|| Controller::Memory.not_mounted())?
            .memory();
        if hard.unwrap_or(current.0) > swap.unwrap_or(current.2) {
            return Err(Error::InvalidArg(
                "memory hard_limit tunable value must be lower than or equal to swap_hard_limit"
                    .into(),
            ));
        }
        cgroup::domain_group(pid, &v.uuid, Controller::Memory)?.apply_memory(hard, soft, swap)?;
    }
    if config {
        let edit = ConfigEdit::Memory { hard, soft, swap };
        tune(call, TuneOp::EditConfig { uuid: v.uuid, edit }).await?;
    }
    Ok(())
}

/// Applies a definition's `<cputune>` and `<memtune>` to a QEMU that just
/// started: vCPU and emulator pinning, then the domain's own cgroups. A
/// failure is logged; the domain keeps running untuned.
pub fn apply_at_start(pid: i32, qmp: QmpClient, uuid: uuid::Uuid, def: &DomainDef) {
    let (ct, mt) = (def.cputune.clone(), def.memtune.clone());
    if ct.is_empty() && mt.is_empty() {
        return;
    }
    // Maps wide enough for every CPU a cpuset may name.
    const MAPLEN: usize = 128;
    actix_rt::spawn(async move {
        if !ct.vcpupin.is_empty() || ct.emulatorpin.is_some() {
            let threads: Vec<(u32, i32)> = match qmp.execute("query-cpus-fast", None).await {
                Ok(list) => list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some((
                            c.get("cpu-index")?.as_u64()? as u32,
                            c.get("thread-id")?.as_i64()? as i32,
                        ))
                    })
                    .collect(),
                Err(e) => {
                    warn!(pid, "cannot pin vCPUs: {e}");
                    Vec::new()
                }
            };
            for (vcpu, cpuset) in &ct.vcpupin {
                if let Some((_, tid)) = threads.iter().find(|(i, _)| i == vcpu) {
                    if let Err(e) = set_affinity(pid, *tid, &cpuset_to_map(cpuset, MAPLEN)) {
                        warn!(pid, vcpu, "{e}");
                    }
                }
            }
            if let Some(cpuset) = &ct.emulatorpin {
                let map = cpuset_to_map(cpuset, MAPLEN);
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
                for tid in tasks.filter(|t| !threads.iter().any(|(_, v)| v == t)) {
                    let _ = set_affinity(pid, tid, &map);
                }
            }
        }
        if ct.shares.is_some() || ct.global_period.is_some() || ct.global_quota.is_some() {
            let period = ct.global_period.map(|p| p as i64);
            let r = cgroup::domain_group(pid, &uuid, Controller::Cpu)
                .and_then(|g| g.apply_cpu(ct.shares, period, ct.global_quota));
            if let Err(e) = r {
                warn!(pid, "cannot apply <cputune>: {e}");
            }
        }
        if !mt.is_empty() {
            let r = cgroup::domain_group(pid, &uuid, Controller::Memory)
                .and_then(|g| g.apply_memory(mt.hard_limit, mt.soft_limit, mt.swap_hard_limit));
            if let Err(e) = r {
                warn!(pid, "cannot apply <memtune>: {e}");
            }
        }
    });
}

fn param_error(e: typed_params::ParamError) -> Error {
    crate::domain::stats::param_error(e)
}

// Custom metadata elements. libvirt stores a client's element with every
// element of it in the client's namespace under the client's prefix, and
// hands it back without prefix or namespace declaration.

/// The children of a `<metadata>` body as (namespace, text) pairs.
pub fn metadata_elements(inner: &str) -> Vec<(String, String)> {
    let wrapped = format!("<metadata>{inner}</metadata>");
    let Ok(doc) = Document::parse(&wrapped) else {
        return Vec::new();
    };
    doc.root_element()
        .children()
        .filter(Node::is_element)
        .map(|n| {
            let ns = n.tag_name().namespace().unwrap_or("").to_string();
            (ns, wrapped[n.range()].to_string())
        })
        .collect()
}

/// The client's `xml` with every element put in namespace `uri` with
/// prefix `key`.
pub fn namespaced_element(xml: &str, key: &str, uri: &str) -> Result<String> {
    let valid_prefix = key
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_prefix {
        return Err(Error::Internal(
            "failed to validate prefix for a new XML namespace".into(),
        ));
    }
    qemud_config::xml_depth::check(xml, MAX_DEPTH)
        .map_err(|e| Error::Xml(format!("(metadata_xml): {e}")))?;
    let doc = Document::parse(xml).map_err(|e| Error::Xml(format!("(metadata_xml):1: {e}")))?;
    let mut out = String::new();
    write_element(
        doc.root_element(),
        &mut out,
        &|_| Some(key.to_string()),
        Some((key, uri)),
        None,
    );
    Ok(out)
}

/// The element of namespace `uri` in a stored `<metadata>`, without the
/// namespace.
pub fn extract_element(metadata: &str, uri: &str) -> Option<String> {
    qemud_config::xml_depth::check(metadata, MAX_DEPTH + 1).ok()?;
    let doc = Document::parse(metadata).ok()?;
    let node = doc
        .root_element()
        .children()
        .find(|n| n.is_element() && n.tag_name().namespace() == Some(uri))?;
    let mut out = String::new();
    write_element(
        node,
        &mut out,
        &|n: &Node| {
            if n.tag_name().namespace() == Some(uri) {
                None
            } else {
                n.lookup_prefix(n.tag_name().namespace().unwrap_or(""))
                    .map(str::to_string)
            }
        },
        None,
        Some(0),
    );
    Some(out)
}

/// Writes an element; with `indent`, element-only content goes on lines
/// of its own, two spaces per level, as libxml formats it.
use qemud_config::xml_depth::MAX_DEPTH;

fn write_element(
    node: Node,
    out: &mut String,
    prefix: &dyn Fn(&Node) -> Option<String>,
    declare: Option<(&str, &str)>,
    indent: Option<usize>,
) {
    let name = match prefix(&node) {
        Some(p) if !p.is_empty() => format!("{p}:{}", node.tag_name().name()),
        _ => node.tag_name().name().to_string(),
    };
    out.push('<');
    out.push_str(&name);
    if let Some((key, uri)) = declare {
        out.push_str(&format!(" xmlns:{key}=\"{}\"", esc_attr(uri)));
    }
    for a in node.attributes() {
        out.push_str(&format!(" {}=\"{}\"", a.name(), esc_attr(a.value())));
    }
    let mut children: Vec<Node> = node
        .children()
        .filter(|c| matches!(c.node_type(), NodeType::Element | NodeType::Text))
        .collect();
    let elements_only = children
        .iter()
        .all(|c| c.is_element() || c.text().is_some_and(|t| t.trim().is_empty()));
    let pretty = indent.filter(|_| elements_only);
    if pretty.is_some() {
        children.retain(|c| c.is_element());
    }
    if children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for c in children {
        if c.is_element() {
            if let Some(level) = pretty {
                out.push('\n');
                out.push_str(&"  ".repeat(level + 1));
            }
            write_element(c, out, prefix, None, pretty.map(|l| l + 1));
        } else if let Some(t) = c.text() {
            out.push_str(&esc(t));
        }
    }
    if let Some(level) = pretty {
        out.push('\n');
        out.push_str(&"  ".repeat(level));
    }
    out.push_str(&format!("</{name}>"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_element_round_trip() {
        let stored = namespaced_element("<app><v n='1'>x &amp; y</v></app>", "k", "urn:a").unwrap();
        assert_eq!(
            stored,
            "<k:app xmlns:k=\"urn:a\"><k:v n=\"1\">x &amp; y</k:v></k:app>"
        );
        let metadata = format!("<metadata>{stored}<o xmlns=\"urn:o\"/></metadata>");
        assert_eq!(
            extract_element(&metadata, "urn:a").unwrap(),
            "<app>\n  <v n=\"1\">x &amp; y</v>\n</app>"
        );
        assert!(extract_element(&metadata, "urn:none").is_none());
        let inner = metadata
            .strip_prefix("<metadata>")
            .and_then(|m| m.strip_suffix("</metadata>"))
            .unwrap();
        let els = metadata_elements(inner);
        assert_eq!(els.len(), 2);
        assert_eq!(els[1].0, "urn:o");
        assert!(namespaced_element("<a/>", "1bad", "urn:a").is_err());
        assert!(namespaced_element("<a>", "k", "urn:a").is_err());
        let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert!(namespaced_element(&deep, "k", "urn:a").is_err());
    }
}
