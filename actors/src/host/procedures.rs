//! Table rows of the host: what a client asks about the hypervisor and the
//! machine it runs on.

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{Opaque, XdrString, XdrVec};
use qemud_protocol::{ErrorCode, ErrorDomain};

use crate::call;
use crate::error::{Error, Result};
use crate::host::{self, cpu, node};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_GET_TYPE, Read, get_type),
        call!(CONNECT_GET_VERSION, Read, get_version),
        call!(CONNECT_GET_LIB_VERSION, Read, get_lib_version),
        call!(CONNECT_GET_HOSTNAME, Read, get_hostname),
        call!(CONNECT_GET_CAPABILITIES, Read, get_capabilities),
        call!(CONNECT_GET_MAX_VCPUS, Read, get_max_vcpus),
        call!(NODE_GET_INFO, Read, node_get_info),
        call!(NODE_GET_FREE_MEMORY, Read, node_get_free_memory),
        call!(NODE_GET_SECURITY_MODEL, Read, node_get_security_model),
        call!(
            CONNECT_GET_DOMAIN_CAPABILITIES,
            Write,
            get_domain_capabilities
        ),
        call!(CONNECT_GET_SYSINFO, Read, get_sysinfo),
        call!(CONNECT_GET_CPU_MODEL_NAMES, Read, get_cpu_model_names),
        call!(CONNECT_COMPARE_CPU, Read, compare_cpu),
        call!(CONNECT_BASELINE_CPU, Read, baseline_cpu),
        call!(
            CONNECT_COMPARE_HYPERVISOR_CPU,
            Write,
            compare_hypervisor_cpu
        ),
        call!(
            CONNECT_BASELINE_HYPERVISOR_CPU,
            Write,
            baseline_hypervisor_cpu
        ),
        call!(NODE_GET_CPU_STATS, Read, node_get_cpu_stats),
        call!(NODE_GET_MEMORY_STATS, Read, node_get_memory_stats),
        call!(NODE_GET_CELLS_FREE_MEMORY, Read, node_get_cells_free_memory),
        call!(NODE_GET_CPU_MAP, Read, node_get_cpu_map),
        call!(NODE_GET_MEMORY_PARAMETERS, Read, node_get_memory_parameters),
        call!(NODE_GET_FREE_PAGES, Read, node_get_free_pages),
    ]
}

async fn get_type(_: &Call, _: ()) -> Result<ConnectGetTypeRet> {
    Ok(ConnectGetTypeRet {
        type_: "QEMU".into(),
    })
}

async fn get_version(call: &Call, _: ()) -> Result<ConnectGetVersionRet> {
    Ok(ConnectGetVersionRet {
        hv_ver: call.svc.host.qemu_version,
    })
}

async fn get_lib_version(_: &Call, _: ()) -> Result<ConnectGetLibVersionRet> {
    Ok(ConnectGetLibVersionRet {
        lib_ver: host::LIB_VERSION,
    })
}

async fn get_hostname(_: &Call, _: ()) -> Result<ConnectGetHostnameRet> {
    let name = nix::unistd::gethostname()
        .map_err(|e| Error::System(format!("cannot get hostname: {e}")))?;
    Ok(ConnectGetHostnameRet {
        hostname: name.to_string_lossy().into_owned().into(),
    })
}

async fn get_capabilities(call: &Call, _: ()) -> Result<ConnectGetCapabilitiesRet> {
    Ok(ConnectGetCapabilitiesRet {
        capabilities: call.svc.host.capabilities().await.to_xml().into(),
    })
}

async fn get_max_vcpus(call: &Call, a: ConnectGetMaxVcpusArgs) -> Result<ConnectGetMaxVcpusRet> {
    Ok(ConnectGetMaxVcpusRet {
        max_vcpus: call
            .svc
            .host
            .max_vcpus(a.type_.as_ref().map(|t| t.as_str()))?,
    })
}

async fn node_get_info(call: &Call, _: ()) -> Result<NodeGetInfoRet> {
    Ok(call.svc.host.node_info())
}

async fn node_get_free_memory(_: &Call, _: ()) -> Result<NodeGetFreeMemoryRet> {
    Ok(NodeGetFreeMemoryRet {
        free_mem: host::free_memory_bytes(),
    })
}

async fn node_get_security_model(_: &Call, _: ()) -> Result<NodeGetSecurityModelRet> {
    // No security driver: libvirt's "none" model with DOI 0, as the
    // capabilities' <secmodel> says. Both strings travel NUL-terminated.
    let c_string = |s: &str| -> XdrVec<i8, 257> {
        s.bytes()
            .map(|b| b as i8)
            .chain(std::iter::once(0))
            .collect::<Vec<_>>()
            .into()
    };
    Ok(NodeGetSecurityModelRet {
        model: c_string("none"),
        doi: c_string("0"),
    })
}

fn opt(s: &Option<XdrString>) -> Option<&str> {
    s.as_ref().map(|s| s.as_str())
}

async fn get_domain_capabilities(
    call: &Call,
    a: ConnectGetDomainCapabilitiesArgs,
) -> Result<ConnectGetDomainCapabilitiesRet> {
    check_flags(a.flags, 0, "virConnectGetDomainCapabilities")?;
    let caps = call
        .svc
        .host
        .domain_capabilities(
            opt(&a.emulatorbin),
            opt(&a.arch),
            opt(&a.machine),
            opt(&a.virttype),
        )
        .await?;
    Ok(ConnectGetDomainCapabilitiesRet {
        capabilities: caps.to_xml().into(),
    })
}

async fn get_sysinfo(_: &Call, a: ConnectGetSysinfoArgs) -> Result<ConnectGetSysinfoRet> {
    check_flags(a.flags, 0, "virConnectGetSysinfo")?;
    Ok(ConnectGetSysinfoRet {
        sysinfo: node::sysinfo_xml()?.into(),
    })
}

async fn get_cpu_model_names(
    _: &Call,
    a: ConnectGetCpuModelNamesArgs,
) -> Result<ConnectGetCpuModelNamesRet> {
    check_flags(a.flags, 0, "virConnectGetCPUModelNames")?;
    let models = cpu::model_names(a.arch.as_str())?;
    let ret = models.len() as i32;
    Ok(ConnectGetCpuModelNamesRet {
        models: if a.need_results != 0 {
            models
                .into_iter()
                .map(XdrString::from)
                .collect::<Vec<_>>()
                .into()
        } else {
            XdrVec::default()
        },
        ret,
    })
}

/// The host CPU's features as the given (or default) hypervisor sees them.
async fn hypervisor_features(
    call: &Call,
    emulator: Option<&str>,
    arch: Option<&str>,
    machine: Option<&str>,
    virttype: Option<&str>,
) -> Result<(Vec<String>, Vec<String>)> {
    let host = &call.svc.host;
    // Same argument checks as the domain capabilities.
    host.domain_capabilities(emulator, arch, machine, virttype)
        .await?;
    let emulator = emulator
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| host.emulator.clone());
    let virt_type = virttype.unwrap_or(host.virt_types()[0]);
    let caps = host.emulator_caps(&emulator, virt_type).await?;
    let usable = caps
        .cpu_definitions
        .iter()
        .filter(|d| d.usable)
        .map(|d| d.name.clone())
        .collect();
    Ok((caps.host_cpu_features.clone(), usable))
}

async fn compare_cpu(_: &Call, a: ConnectCompareCpuArgs) -> Result<ConnectCompareCpuRet> {
    check_flags(a.flags, cpu::FAIL_INCOMPATIBLE, "virConnectCompareCPU")?;
    // The host's own CPU, as the kernel reports it.
    let host = node::cpuinfo_features();
    Ok(ConnectCompareCpuRet {
        result: cpu::compare(a.xml.as_str(), &host, a.flags)?,
    })
}

async fn compare_hypervisor_cpu(
    call: &Call,
    a: ConnectCompareHypervisorCpuArgs,
) -> Result<ConnectCompareHypervisorCpuRet> {
    check_flags(
        a.flags,
        cpu::FAIL_INCOMPATIBLE,
        "virConnectCompareHypervisorCPU",
    )?;
    let (host, _) = hypervisor_features(
        call,
        opt(&a.emulator),
        opt(&a.arch),
        opt(&a.machine),
        opt(&a.virttype),
    )
    .await?;
    Ok(ConnectCompareHypervisorCpuRet {
        result: cpu::compare(a.xml_cpu.as_str(), &host, a.flags)?,
    })
}

/// `VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES | VIR_CONNECT_BASELINE_CPU_MIGRATABLE`.
const BASELINE_FLAGS: u32 = 0x3;

async fn baseline_cpu(_: &Call, a: ConnectBaselineCpuArgs) -> Result<ConnectBaselineCpuRet> {
    check_flags(a.flags, BASELINE_FLAGS, "virConnectBaselineCPU")?;
    let xmls: Vec<String> = a.xml_cp_us.0.into_iter().map(|s| s.0).collect();
    for xml in &xmls {
        if cpu::parse_cpu(xml)?.arch.is_none() {
            return Err(Error::Other {
                code: ErrorCode::XmlError,
                domain: ErrorDomain::Cpu,
                message: "XML error: Missing CPU architecture".into(),
            });
        }
    }
    let models = cpu::model_names("x86_64")?;
    Ok(ConnectBaselineCpuRet {
        cpu: cpu::baseline(&xmls, &models, a.flags)?.into(),
    })
}

async fn baseline_hypervisor_cpu(
    call: &Call,
    a: ConnectBaselineHypervisorCpuArgs,
) -> Result<ConnectBaselineHypervisorCpuRet> {
    check_flags(a.flags, BASELINE_FLAGS, "virConnectBaselineHypervisorCPU")?;
    let (_, usable) = hypervisor_features(
        call,
        opt(&a.emulator),
        opt(&a.arch),
        opt(&a.machine),
        opt(&a.virttype),
    )
    .await?;
    let xmls: Vec<String> = a.xml_cp_us.0.into_iter().map(|s| s.0).collect();
    // Models the hypervisor runs as they are first; any model it knows
    // (with features turned off at start) when none of those fits.
    let cpu = match cpu::baseline(&xmls, &usable, a.flags) {
        Ok(c) => c,
        Err(_) => cpu::baseline(&xmls, &cpu::model_names("x86_64")?, a.flags)?,
    };
    Ok(ConnectBaselineHypervisorCpuRet { cpu: cpu.into() })
}

async fn node_get_cpu_stats(_: &Call, a: NodeGetCpuStatsArgs) -> Result<NodeGetCpuStatsRet> {
    check_flags(a.flags, 0, "virNodeGetCPUStats")?;
    let (params, nparams) = node::cpu_stats(a.cpu_num, a.nparams)?;
    Ok(NodeGetCpuStatsRet {
        params: params
            .into_iter()
            .map(|(field, value)| NodeGetCpuStats {
                field: field.into(),
                value,
            })
            .collect::<Vec<_>>()
            .into(),
        nparams,
    })
}

async fn node_get_memory_stats(
    _: &Call,
    a: NodeGetMemoryStatsArgs,
) -> Result<NodeGetMemoryStatsRet> {
    check_flags(a.flags, 0, "virNodeGetMemoryStats")?;
    let (params, nparams) = node::memory_stats(a.cell_num, a.nparams)?;
    Ok(NodeGetMemoryStatsRet {
        params: params
            .into_iter()
            .map(|(field, value)| NodeGetMemoryStats {
                field: field.into(),
                value,
            })
            .collect::<Vec<_>>()
            .into(),
        nparams,
    })
}

async fn node_get_cells_free_memory(
    _: &Call,
    a: NodeGetCellsFreeMemoryArgs,
) -> Result<NodeGetCellsFreeMemoryRet> {
    if a.maxcells > 1024 {
        return Err(Error::Rpc("maxCells > REMOTE_NODE_MAX_CELLS".into()));
    }
    Ok(NodeGetCellsFreeMemoryRet {
        cells: node::cells_free_memory(a.start_cell, a.maxcells)?.into(),
    })
}

async fn node_get_cpu_map(_: &Call, a: NodeGetCpuMapArgs) -> Result<NodeGetCpuMapRet> {
    check_flags(a.flags, 0, "virNodeGetCPUMap")?;
    let (map, online, total) = node::cpu_map();
    Ok(NodeGetCpuMapRet {
        cpumap: Opaque(if a.need_map != 0 { map } else { Vec::new() }),
        online: if a.need_online != 0 { online } else { 0 },
        ret: total,
    })
}

/// `VIR_TYPED_PARAM_STRING_OKAY`, which clients always pass.
const TYPED_PARAM_STRING_OKAY: u32 = 1 << 2;

async fn node_get_memory_parameters(
    _: &Call,
    a: NodeGetMemoryParametersArgs,
) -> Result<NodeGetMemoryParametersRet> {
    check_flags(
        a.flags,
        TYPED_PARAM_STRING_OKAY,
        "virNodeGetMemoryParameters",
    )?;
    if a.nparams > 64 {
        return Err(Error::Rpc("nparams too large".into()));
    }
    let (params, nparams) = node::memory_parameters(a.nparams);
    Ok(NodeGetMemoryParametersRet {
        params: params.into(),
        nparams,
    })
}

async fn node_get_free_pages(_: &Call, a: NodeGetFreePagesArgs) -> Result<NodeGetFreePagesRet> {
    check_flags(a.flags, 0, "virNodeGetFreePages")?;
    if (a.pages.0.len() as u64) * u64::from(a.cell_count) > 1024 {
        return Err(Error::Rpc(
            "the result won't fit into REMOTE_NODE_MAX_CELLS".into(),
        ));
    }
    Ok(NodeGetFreePagesRet {
        counts: node::free_pages(&a.pages.0, a.start_cell, a.cell_count)?.into(),
    })
}
