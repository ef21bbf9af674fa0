//! Table rows of the host: what a client asks about the hypervisor and the
//! machine it runs on.

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::XdrVec;

use crate::call;
use crate::error::{Error, Result};
use crate::host;
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
        capabilities: call.svc.host.capabilities_xml().into(),
    })
}

async fn get_max_vcpus(_: &Call, _: ConnectGetMaxVcpusArgs) -> Result<ConnectGetMaxVcpusRet> {
    // QEMU's x86 limit for the pc/q35 machine types.
    Ok(ConnectGetMaxVcpusRet { max_vcpus: 255 })
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
    // No security driver: empty model, as libvirt with "none".
    Ok(NodeGetSecurityModelRet {
        model: XdrVec::default(),
        doi: XdrVec::default(),
    })
}
