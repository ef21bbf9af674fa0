//! Procedures that need nothing from the connection but its services: host
//! queries, domain lookups and queries (served from the lock-free index) and
//! domain operations (sent to the registry). Each call runs as its own
//! future, so a slow VM delays only the calls that wait on it.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{self, XdrString, XdrVec};

use crate::error::{Error, Result};
use crate::host;
use crate::index::{list_filter, DomainView};
use crate::registry::DomainOp;
use crate::Services;

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    Ok(xdr::from_bytes(body)?)
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    xdr::to_bytes(value).map_err(|e| Error::Internal(format!("cannot encode reply: {}", e.0)))
}

fn flags_none(flags: u32, function: &'static str) -> Result<()> {
    if flags != 0 {
        return Err(Error::UnsupportedFlags { flags, function });
    }
    Ok(())
}

fn dom_ret(view: &DomainView) -> Result<Vec<u8>> {
    encode(&DomainRet {
        dom: view.to_wire(),
    })
}

/// `virDomainXMLFlags`: the persistent definition rather than the live one.
const XML_INACTIVE: u32 = 2;
/// `virDomainModificationImpact` / `virDomainVcpuFlags`.
const AFFECT_CONFIG: u32 = 2;
const VCPU_MAXIMUM: u32 = 4;

/// Runs one stateless procedure and returns the encoded reply body.
pub async fn call(svc: Arc<Services>, procedure: i32, body: Bytes) -> Result<Vec<u8>> {
    let idx = &svc.index;
    match procedure {
        CONNECT_GET_TYPE => encode(&GetTypeRet {
            type_: "QEMU".into(),
        }),
        CONNECT_GET_VERSION => encode(&GetVersionRet {
            hv_ver: svc.host.qemu_version,
        }),
        CONNECT_GET_LIB_VERSION => encode(&GetLibVersionRet {
            lib_ver: host::LIB_VERSION,
        }),
        CONNECT_GET_HOSTNAME => {
            let name = nix::unistd::gethostname()
                .map_err(|e| Error::System(format!("cannot get hostname: {e}")))?;
            encode(&GetHostnameRet {
                hostname: name.to_string_lossy().into_owned().into(),
            })
        }
        CONNECT_GET_CAPABILITIES => encode(&GetCapabilitiesRet {
            capabilities: svc.host.capabilities_xml().into(),
        }),
        CONNECT_GET_MAX_VCPUS => {
            let _args: GetMaxVcpusArgs = decode(&body)?;
            // QEMU's x86 limit for the pc/q35 machine types.
            encode(&GetMaxVcpusRet { max_vcpus: 255 })
        }
        NODE_GET_INFO => encode(&svc.host.node_info()),
        NODE_GET_FREE_MEMORY => encode(&NodeGetFreeMemoryRet {
            free_mem: host::free_memory_bytes(),
        }),
        NODE_GET_SECURITY_MODEL => encode(&NodeGetSecurityModelRet {
            // No security driver: empty model, as libvirt with "none".
            model: XdrVec::default(),
            doi: XdrVec::default(),
        }),
        CONNECT_LIST_ALL_DOMAINS => {
            let args: ConnectListAllDomainsArgs = decode(&body)?;
            let views: Vec<_> = idx
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
            encode(&ConnectListAllDomainsRet {
                domains: XdrVec(domains),
                ret: count,
            })
        }
        CONNECT_NUM_OF_DOMAINS => encode(&NumRet {
            num: idx.all().iter().filter(|v| v.is_active()).count() as i32,
        }),
        CONNECT_LIST_DOMAINS => {
            let args: ConnectListDomainsArgs = decode(&body)?;
            check_max(args.maxids)?;
            let mut ids: Vec<i32> = idx
                .all()
                .iter()
                .filter(|v| v.is_active())
                .map(|v| v.id)
                .collect();
            ids.sort_unstable();
            ids.truncate(args.maxids.max(0) as usize);
            encode(&ConnectListDomainsRet { ids: XdrVec(ids) })
        }
        CONNECT_NUM_OF_DEFINED_DOMAINS => encode(&NumRet {
            num: idx.all().iter().filter(|v| !v.is_active()).count() as i32,
        }),
        CONNECT_LIST_DEFINED_DOMAINS => {
            let args: ConnectListDefinedDomainsArgs = decode(&body)?;
            check_max(args.maxnames)?;
            let names: Vec<XdrString> = idx
                .all()
                .iter()
                .filter(|v| !v.is_active())
                .take(args.maxnames.max(0) as usize)
                .map(|v| XdrString(v.name.clone()))
                .collect();
            encode(&ConnectListDefinedDomainsRet {
                names: XdrVec(names),
            })
        }
        DOMAIN_LOOKUP_BY_NAME => {
            let args: DomainLookupByNameArgs = decode(&body)?;
            dom_ret(&*idx.by_name(args.name.as_str())?)
        }
        DOMAIN_LOOKUP_BY_UUID => {
            let args: DomainLookupByUuidArgs = decode(&body)?;
            dom_ret(&*idx.by_uuid(&Uuid::from_bytes(args.uuid.0))?)
        }
        DOMAIN_LOOKUP_BY_ID => {
            let args: DomainLookupByIdArgs = decode(&body)?;
            dom_ret(&*idx.by_id(args.id)?)
        }
        DOMAIN_GET_INFO => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainGetInfoRet {
                state: v.state as u8,
                max_mem: v.max_mem_kib,
                memory: v.memory_kib,
                nr_virt_cpu: v.vcpus.min(u16::MAX as u32) as u16,
                cpu_time: v.cpu_time_ns(),
            })
        }
        DOMAIN_GET_STATE => {
            let args: DomainFlagsArgs = decode(&body)?;
            flags_none(args.flags, "virDomainGetState")?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainGetStateRet {
                state: v.state as i32,
                reason: v.reason,
            })
        }
        DOMAIN_GET_XML_DESC => {
            let args: DomainFlagsArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            let xml = match (&v.inactive_xml, args.flags & XML_INACTIVE != 0) {
                (Some(inactive), true) => inactive.clone(),
                _ => v.xml.clone(),
            };
            encode(&DomainGetXmlDescRet {
                xml: XdrString(xml.to_string()),
            })
        }
        DOMAIN_GET_AUTOSTART => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainGetAutostartRet {
                autostart: v.autostart as i32,
            })
        }
        DOMAIN_IS_ACTIVE => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainIsActiveRet {
                active: v.is_active() as i32,
            })
        }
        DOMAIN_IS_PERSISTENT => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainIsPersistentRet {
                persistent: v.persistent as i32,
            })
        }
        DOMAIN_IS_UPDATED => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainIsUpdatedRet {
                updated: v.updated as i32,
            })
        }
        DOMAIN_GET_OS_TYPE => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainGetOsTypeRet {
                type_: v.os_type.clone().into(),
            })
        }
        DOMAIN_GET_MAX_MEMORY => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            encode(&DomainGetMaxMemoryRet {
                memory: v.max_mem_kib,
            })
        }
        DOMAIN_GET_MAX_VCPUS => {
            let args: DomainArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            if !v.is_active() {
                return Err(Error::OperationInvalid("domain is not running".into()));
            }
            encode(&NumRet {
                num: v.max_vcpus as i32,
            })
        }
        DOMAIN_GET_VCPUS_FLAGS => {
            let args: DomainFlagsArgs = decode(&body)?;
            let v = idx.resolve(&args.dom)?;
            let known = AFFECT_CONFIG | 1 | VCPU_MAXIMUM;
            if args.flags & !known != 0 {
                return Err(Error::UnsupportedFlags {
                    flags: args.flags,
                    function: "virDomainGetVcpusFlags",
                });
            }
            let num = if args.flags & VCPU_MAXIMUM != 0 {
                v.max_vcpus
            } else {
                v.vcpus
            };
            encode(&NumRet { num: num as i32 })
        }
        DOMAIN_HAS_MANAGED_SAVE_IMAGE => {
            let args: DomainFlagsArgs = decode(&body)?;
            idx.resolve(&args.dom)?;
            encode(&DomainHasManagedSaveImageRet { result: 0 })
        }
        DOMAIN_GET_SECURITY_LABEL => {
            let args: DomainArgs = decode(&body)?;
            idx.resolve(&args.dom)?;
            encode(&DomainGetSecurityLabelRet {
                label: XdrVec::default(),
                enforcing: 0,
            })
        }
        DOMAIN_DEFINE_XML => {
            let args: DomainDefineXmlArgs = decode(&body)?;
            let v = svc
                .registry
                .send(DomainOp::Define { xml: args.xml.0 })
                .await??;
            dom_ret(&v)
        }
        DOMAIN_DEFINE_XML_FLAGS => {
            let args: DomainDefineXmlFlagsArgs = decode(&body)?;
            // VIR_DOMAIN_DEFINE_VALIDATE (1) asks for schema validation, which
            // our parser does anyway.
            if args.flags & !1 != 0 {
                return Err(Error::UnsupportedFlags {
                    flags: args.flags,
                    function: "virDomainDefineXMLFlags",
                });
            }
            let v = svc
                .registry
                .send(DomainOp::Define { xml: args.xml.0 })
                .await??;
            dom_ret(&v)
        }
        DOMAIN_CREATE_XML => {
            let args: DomainCreateXmlArgs = decode(&body)?;
            let v = svc
                .registry
                .send(DomainOp::CreateXml {
                    xml: args.xml_desc.0,
                    paused: args.flags & 1 != 0,
                })
                .await??;
            dom_ret(&v)
        }
        _ => domain_op(svc, procedure, body).await,
    }
}

fn check_max(max: i32) -> Result<()> {
    if max < 0 || max as usize > DOMAIN_LIST_MAX {
        return Err(Error::Rpc(format!(
            "too many remote domains requested ({max} > {DOMAIN_LIST_MAX})"
        )));
    }
    Ok(())
}

/// Operations on one existing domain, carried out by the registry.
async fn domain_op(svc: Arc<Services>, procedure: i32, body: Bytes) -> Result<Vec<u8>> {
    let uuid_of = |dom: &NonnullDomain| -> Result<Uuid> { Ok(svc.index.resolve(dom)?.uuid) };
    let (op, returns_domain) = match procedure {
        DOMAIN_CREATE => {
            let a: DomainArgs = decode(&body)?;
            (
                DomainOp::Start {
                    uuid: uuid_of(&a.dom)?,
                    paused: false,
                },
                false,
            )
        }
        DOMAIN_CREATE_WITH_FLAGS => {
            let a: DomainFlagsArgs = decode(&body)?;
            // VIR_DOMAIN_START_PAUSED = 1, AUTODESTROY = 2 (not supported).
            if a.flags & !1 != 0 {
                return Err(Error::UnsupportedFlags {
                    flags: a.flags,
                    function: "virDomainCreateWithFlags",
                });
            }
            (
                DomainOp::Start {
                    uuid: uuid_of(&a.dom)?,
                    paused: a.flags & 1 != 0,
                },
                true,
            )
        }
        DOMAIN_UNDEFINE => {
            let a: DomainArgs = decode(&body)?;
            (
                DomainOp::Undefine {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_UNDEFINE_FLAGS => {
            let a: DomainFlagsArgs = decode(&body)?;
            // Managed save, snapshot, checkpoint and NVRAM flags have nothing
            // to remove in qemud, so they are accepted and ignored.
            (
                DomainOp::Undefine {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_SHUTDOWN => {
            let a: DomainArgs = decode(&body)?;
            (
                DomainOp::Shutdown {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_SHUTDOWN_FLAGS => {
            let a: DomainFlagsArgs = decode(&body)?;
            // 0 = default, 1 = ACPI power button: both are the same for us.
            if a.flags & !1 != 0 {
                return Err(Error::UnsupportedFlags {
                    flags: a.flags,
                    function: "virDomainShutdownFlags",
                });
            }
            (
                DomainOp::Shutdown {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_REBOOT => {
            let a: DomainFlagsArgs = decode(&body)?;
            if a.flags & !1 != 0 {
                return Err(Error::UnsupportedFlags {
                    flags: a.flags,
                    function: "virDomainReboot",
                });
            }
            (
                DomainOp::Reboot {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_RESET => {
            let a: DomainFlagsArgs = decode(&body)?;
            flags_none(a.flags, "virDomainReset")?;
            (
                DomainOp::Reset {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_DESTROY => {
            let a: DomainArgs = decode(&body)?;
            (
                DomainOp::Destroy {
                    uuid: uuid_of(&a.dom)?,
                    graceful: false,
                },
                false,
            )
        }
        DOMAIN_DESTROY_FLAGS => {
            let a: DomainFlagsArgs = decode(&body)?;
            // VIR_DOMAIN_DESTROY_GRACEFUL = 1: SIGTERM only, no SIGKILL.
            if a.flags & !1 != 0 {
                return Err(Error::UnsupportedFlags {
                    flags: a.flags,
                    function: "virDomainDestroyFlags",
                });
            }
            (
                DomainOp::Destroy {
                    uuid: uuid_of(&a.dom)?,
                    graceful: a.flags & 1 != 0,
                },
                false,
            )
        }
        DOMAIN_SUSPEND => {
            let a: DomainArgs = decode(&body)?;
            (
                DomainOp::Suspend {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_RESUME => {
            let a: DomainArgs = decode(&body)?;
            (
                DomainOp::Resume {
                    uuid: uuid_of(&a.dom)?,
                },
                false,
            )
        }
        DOMAIN_SET_AUTOSTART => {
            let a: DomainSetAutostartArgs = decode(&body)?;
            (
                DomainOp::SetAutostart {
                    uuid: uuid_of(&a.dom)?,
                    on: a.autostart != 0,
                },
                false,
            )
        }
        other => {
            return Err(Error::NoSupport(format!("unknown procedure {other}")));
        }
    };
    let view = svc.registry.send(op).await??;
    if returns_domain {
        dom_ret(&view)
    } else {
        Ok(Vec::new())
    }
}
