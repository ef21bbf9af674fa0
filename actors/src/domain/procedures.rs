//! Table rows of the domain driver. Queries are answered from the lock-free
//! index; operations go to the registry actor, which owns every domain. Each
//! call runs as its own future, so a slow VM delays only the calls that wait
//! on it.

use uuid::Uuid;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{XdrString, XdrVec};

use crate::call;
use crate::domain::index::{list_filter, DomainView};
use crate::domain::registry::DomainOp;
use crate::error::{Error, Result};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_LIST_ALL_DOMAINS, Read, list_all),
        call!(CONNECT_LIST_DOMAINS, Read, list_ids),
        call!(CONNECT_NUM_OF_DOMAINS, Read, num_active),
        call!(CONNECT_LIST_DEFINED_DOMAINS, Read, list_defined),
        call!(CONNECT_NUM_OF_DEFINED_DOMAINS, Read, num_defined),
        call!(DOMAIN_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(DOMAIN_LOOKUP_BY_UUID, Read, lookup_by_uuid),
        call!(DOMAIN_LOOKUP_BY_ID, Read, lookup_by_id),
        call!(DOMAIN_GET_INFO, Read, get_info),
        call!(DOMAIN_GET_STATE, Read, get_state),
        call!(DOMAIN_GET_XML_DESC, Read, get_xml_desc),
        call!(DOMAIN_GET_AUTOSTART, Read, get_autostart),
        call!(DOMAIN_IS_ACTIVE, Read, is_active),
        call!(DOMAIN_IS_PERSISTENT, Read, is_persistent),
        call!(DOMAIN_IS_UPDATED, Read, is_updated),
        call!(DOMAIN_GET_OS_TYPE, Read, get_os_type),
        call!(DOMAIN_GET_MAX_MEMORY, Read, get_max_memory),
        call!(DOMAIN_GET_MAX_VCPUS, Read, get_max_vcpus),
        call!(DOMAIN_GET_VCPUS_FLAGS, Read, get_vcpus_flags),
        call!(DOMAIN_HAS_MANAGED_SAVE_IMAGE, Read, has_managed_save_image),
        call!(DOMAIN_GET_SECURITY_LABEL, Read, get_security_label),
        call!(DOMAIN_DEFINE_XML, Write, define_xml),
        call!(DOMAIN_DEFINE_XML_FLAGS, Write, define_xml_flags),
        call!(DOMAIN_CREATE_XML, Write, create_xml),
        call!(DOMAIN_CREATE, Write, create),
        call!(DOMAIN_CREATE_WITH_FLAGS, Write, create_with_flags),
        call!(DOMAIN_UNDEFINE, Write, undefine),
        call!(DOMAIN_UNDEFINE_FLAGS, Write, undefine_flags),
        call!(DOMAIN_SHUTDOWN, Write, shutdown),
        call!(DOMAIN_SHUTDOWN_FLAGS, Write, shutdown_flags),
        call!(DOMAIN_REBOOT, Write, reboot),
        call!(DOMAIN_RESET, Write, reset),
        call!(DOMAIN_DESTROY, Write, destroy),
        call!(DOMAIN_DESTROY_FLAGS, Write, destroy_flags),
        call!(DOMAIN_SUSPEND, Write, suspend),
        call!(DOMAIN_RESUME, Write, resume),
        call!(DOMAIN_SET_AUTOSTART, Write, set_autostart),
    ]
}

/// `virDomainXMLFlags`: the persistent definition rather than the live one.
const XML_INACTIVE: u32 = 2;
/// `virDomainModificationImpact` / `virDomainVcpuFlags`.
const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
const VCPU_MAXIMUM: u32 = 4;

fn check_max(max: i32) -> Result<usize> {
    if max < 0 || max as usize > DOMAIN_LIST_MAX {
        return Err(Error::Rpc(format!(
            "too many remote domains requested ({max} > {DOMAIN_LIST_MAX})"
        )));
    }
    Ok(max as usize)
}

/// The domain a call names, from the index.
pub fn resolve(call: &Call, dom: &NonnullDomain) -> Result<std::sync::Arc<DomainView>> {
    call.svc.index.resolve(dom)
}

fn uuid_of(call: &Call, dom: &NonnullDomain) -> Result<Uuid> {
    Ok(resolve(call, dom)?.uuid)
}

/// Sends an operation to the registry and waits for the domain it left.
pub async fn operate(call: &Call, op: DomainOp) -> Result<std::sync::Arc<DomainView>> {
    call.svc.registry.send(op).await?
}

// Listing.

async fn list_all(
    call: &Call,
    args: ConnectListAllDomainsArgs,
) -> Result<ConnectListAllDomainsRet> {
    let views: Vec<_> = call
        .svc
        .index
        .all()
        .into_iter()
        .filter(|v| list_filter(v, args.flags))
        .collect();
    let count = views.len() as u32;
    let domains = if args.need_results != 0 {
        views.iter().map(|v| v.to_wire()).collect()
    } else {
        Vec::new()
    };
    Ok(ConnectListAllDomainsRet {
        domains: XdrVec(domains),
        ret: count,
    })
}

async fn list_ids(call: &Call, args: ConnectListDomainsArgs) -> Result<ConnectListDomainsRet> {
    let max = check_max(args.maxids)?;
    let mut ids: Vec<i32> = call
        .svc
        .index
        .all()
        .iter()
        .filter(|v| v.is_active())
        .map(|v| v.id)
        .collect();
    ids.sort_unstable();
    ids.truncate(max);
    Ok(ConnectListDomainsRet { ids: XdrVec(ids) })
}

async fn num_active(call: &Call, _: ()) -> Result<ConnectNumOfDomainsRet> {
    Ok(ConnectNumOfDomainsRet {
        num: call
            .svc
            .index
            .all()
            .iter()
            .filter(|v| v.is_active())
            .count() as i32,
    })
}

async fn list_defined(
    call: &Call,
    args: ConnectListDefinedDomainsArgs,
) -> Result<ConnectListDefinedDomainsRet> {
    let max = check_max(args.maxnames)?;
    let names: Vec<XdrString> = call
        .svc
        .index
        .all()
        .iter()
        .filter(|v| !v.is_active())
        .take(max)
        .map(|v| XdrString(v.name.clone()))
        .collect();
    Ok(ConnectListDefinedDomainsRet {
        names: XdrVec(names),
    })
}

async fn num_defined(call: &Call, _: ()) -> Result<ConnectNumOfDefinedDomainsRet> {
    Ok(ConnectNumOfDefinedDomainsRet {
        num: call
            .svc
            .index
            .all()
            .iter()
            .filter(|v| !v.is_active())
            .count() as i32,
    })
}

// Lookups and queries.

async fn lookup_by_name(call: &Call, a: DomainLookupByNameArgs) -> Result<DomainLookupByNameRet> {
    Ok(DomainLookupByNameRet {
        dom: call.svc.index.by_name(a.name.as_str())?.to_wire(),
    })
}

async fn lookup_by_uuid(call: &Call, a: DomainLookupByUuidArgs) -> Result<DomainLookupByUuidRet> {
    Ok(DomainLookupByUuidRet {
        dom: call
            .svc
            .index
            .by_uuid(&Uuid::from_bytes(a.uuid.0))?
            .to_wire(),
    })
}

async fn lookup_by_id(call: &Call, a: DomainLookupByIdArgs) -> Result<DomainLookupByIdRet> {
    Ok(DomainLookupByIdRet {
        dom: call.svc.index.by_id(a.id)?.to_wire(),
    })
}

async fn get_info(call: &Call, a: DomainGetInfoArgs) -> Result<DomainGetInfoRet> {
    let v = resolve(call, &a.dom)?;
    Ok(DomainGetInfoRet {
        state: v.state as u8,
        max_mem: v.max_mem_kib,
        memory: v.memory_kib,
        nr_virt_cpu: v.vcpus.min(u16::MAX as u32) as u16,
        cpu_time: v.cpu_time_ns(),
    })
}

async fn get_state(call: &Call, a: DomainGetStateArgs) -> Result<DomainGetStateRet> {
    check_flags(a.flags, 0, "virDomainGetState")?;
    let v = resolve(call, &a.dom)?;
    Ok(DomainGetStateRet {
        state: v.state as i32,
        reason: v.reason,
    })
}

async fn get_xml_desc(call: &Call, a: DomainGetXmlDescArgs) -> Result<DomainGetXmlDescRet> {
    let v = resolve(call, &a.dom)?;
    let xml = match (&v.inactive_xml, a.flags & XML_INACTIVE != 0) {
        (Some(inactive), true) => inactive.clone(),
        _ => v.xml.clone(),
    };
    Ok(DomainGetXmlDescRet {
        xml: XdrString(xml.to_string()),
    })
}

async fn get_autostart(call: &Call, a: DomainGetAutostartArgs) -> Result<DomainGetAutostartRet> {
    Ok(DomainGetAutostartRet {
        autostart: resolve(call, &a.dom)?.autostart as i32,
    })
}

async fn is_active(call: &Call, a: DomainIsActiveArgs) -> Result<DomainIsActiveRet> {
    Ok(DomainIsActiveRet {
        active: resolve(call, &a.dom)?.is_active() as i32,
    })
}

async fn is_persistent(call: &Call, a: DomainIsPersistentArgs) -> Result<DomainIsPersistentRet> {
    Ok(DomainIsPersistentRet {
        persistent: resolve(call, &a.dom)?.persistent as i32,
    })
}

async fn is_updated(call: &Call, a: DomainIsUpdatedArgs) -> Result<DomainIsUpdatedRet> {
    Ok(DomainIsUpdatedRet {
        updated: resolve(call, &a.dom)?.updated as i32,
    })
}

async fn get_os_type(call: &Call, a: DomainGetOsTypeArgs) -> Result<DomainGetOsTypeRet> {
    Ok(DomainGetOsTypeRet {
        type_: resolve(call, &a.dom)?.os_type.clone().into(),
    })
}

async fn get_max_memory(call: &Call, a: DomainGetMaxMemoryArgs) -> Result<DomainGetMaxMemoryRet> {
    Ok(DomainGetMaxMemoryRet {
        memory: resolve(call, &a.dom)?.max_mem_kib,
    })
}

async fn get_max_vcpus(call: &Call, a: DomainGetMaxVcpusArgs) -> Result<DomainGetMaxVcpusRet> {
    let v = resolve(call, &a.dom)?;
    if !v.is_active() {
        return Err(Error::OperationInvalid("domain is not running".into()));
    }
    Ok(DomainGetMaxVcpusRet {
        num: v.max_vcpus as i32,
    })
}

async fn get_vcpus_flags(
    call: &Call,
    a: DomainGetVcpusFlagsArgs,
) -> Result<DomainGetVcpusFlagsRet> {
    let v = resolve(call, &a.dom)?;
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM,
        "virDomainGetVcpusFlags",
    )?;
    let num = if a.flags & VCPU_MAXIMUM != 0 {
        v.max_vcpus
    } else {
        v.vcpus
    };
    Ok(DomainGetVcpusFlagsRet { num: num as i32 })
}

async fn has_managed_save_image(
    call: &Call,
    a: DomainHasManagedSaveImageArgs,
) -> Result<DomainHasManagedSaveImageRet> {
    resolve(call, &a.dom)?;
    Ok(DomainHasManagedSaveImageRet { result: 0 })
}

async fn get_security_label(
    call: &Call,
    a: DomainGetSecurityLabelArgs,
) -> Result<DomainGetSecurityLabelRet> {
    resolve(call, &a.dom)?;
    Ok(DomainGetSecurityLabelRet {
        label: XdrVec::default(),
        enforcing: 0,
    })
}

// Definitions.

async fn define_xml(call: &Call, a: DomainDefineXmlArgs) -> Result<DomainDefineXmlRet> {
    let v = operate(call, DomainOp::Define { xml: a.xml.0 }).await?;
    Ok(DomainDefineXmlRet { dom: v.to_wire() })
}

async fn define_xml_flags(
    call: &Call,
    a: DomainDefineXmlFlagsArgs,
) -> Result<DomainDefineXmlFlagsRet> {
    // VIR_DOMAIN_DEFINE_VALIDATE (1) asks for schema validation, which our
    // parser does anyway.
    check_flags(a.flags, 1, "virDomainDefineXMLFlags")?;
    let v = operate(call, DomainOp::Define { xml: a.xml.0 }).await?;
    Ok(DomainDefineXmlFlagsRet { dom: v.to_wire() })
}

async fn create_xml(call: &Call, a: DomainCreateXmlArgs) -> Result<DomainCreateXmlRet> {
    let op = DomainOp::CreateXml {
        xml: a.xml_desc.0,
        paused: a.flags & 1 != 0,
    };
    Ok(DomainCreateXmlRet {
        dom: operate(call, op).await?.to_wire(),
    })
}

async fn undefine(call: &Call, a: DomainUndefineArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Undefine { uuid }).await.map(drop)
}

async fn undefine_flags(call: &Call, a: DomainUndefineFlagsArgs) -> Result<()> {
    // Managed save, snapshot, checkpoint and NVRAM flags have nothing to
    // remove in qemud yet, so they are accepted and ignored.
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Undefine { uuid }).await.map(drop)
}

async fn set_autostart(call: &Call, a: DomainSetAutostartArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    let on = a.autostart != 0;
    operate(call, DomainOp::SetAutostart { uuid, on })
        .await
        .map(drop)
}

// Lifecycle.

async fn create(call: &Call, a: DomainCreateArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    let op = DomainOp::Start {
        uuid,
        paused: false,
    };
    operate(call, op).await.map(drop)
}

async fn create_with_flags(
    call: &Call,
    a: DomainCreateWithFlagsArgs,
) -> Result<DomainCreateWithFlagsRet> {
    // VIR_DOMAIN_START_PAUSED = 1; AUTODESTROY and the others are refused.
    check_flags(a.flags, 1, "virDomainCreateWithFlags")?;
    let uuid = uuid_of(call, &a.dom)?;
    let op = DomainOp::Start {
        uuid,
        paused: a.flags & 1 != 0,
    };
    Ok(DomainCreateWithFlagsRet {
        dom: operate(call, op).await?.to_wire(),
    })
}

async fn shutdown(call: &Call, a: DomainShutdownArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Shutdown { uuid }).await.map(drop)
}

async fn shutdown_flags(call: &Call, a: DomainShutdownFlagsArgs) -> Result<()> {
    // 0 = default, 1 = ACPI power button: both are the same for us.
    check_flags(a.flags, 1, "virDomainShutdownFlags")?;
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Shutdown { uuid }).await.map(drop)
}

async fn reboot(call: &Call, a: DomainRebootArgs) -> Result<()> {
    check_flags(a.flags, 1, "virDomainReboot")?;
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Reboot { uuid }).await.map(drop)
}

async fn reset(call: &Call, a: DomainResetArgs) -> Result<()> {
    check_flags(a.flags, 0, "virDomainReset")?;
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Reset { uuid }).await.map(drop)
}

async fn destroy(call: &Call, a: DomainDestroyArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    let op = DomainOp::Destroy {
        uuid,
        graceful: false,
    };
    operate(call, op).await.map(drop)
}

async fn destroy_flags(call: &Call, a: DomainDestroyFlagsArgs) -> Result<()> {
    // VIR_DOMAIN_DESTROY_GRACEFUL = 1: SIGTERM only, no SIGKILL.
    check_flags(a.flags, 1, "virDomainDestroyFlags")?;
    let uuid = uuid_of(call, &a.dom)?;
    let op = DomainOp::Destroy {
        uuid,
        graceful: a.flags & 1 != 0,
    };
    operate(call, op).await.map(drop)
}

async fn suspend(call: &Call, a: DomainSuspendArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Suspend { uuid }).await.map(drop)
}

async fn resume(call: &Call, a: DomainResumeArgs) -> Result<()> {
    let uuid = uuid_of(call, &a.dom)?;
    operate(call, DomainOp::Resume { uuid }).await.map(drop)
}
