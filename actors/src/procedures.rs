//! What the daemon knows about each REMOTE procedure before running it: the
//! public API name (for error messages), whether it changes anything (denied
//! to read-only clients) and whether it is allowed before CONNECT_OPEN.

use qemud_protocol::remote::procs::*;

#[derive(Clone, Copy, Debug)]
pub struct ProcInfo {
    pub name: &'static str,
    pub writes: bool,
    pub before_open: bool,
}

const fn read(name: &'static str) -> ProcInfo {
    ProcInfo {
        name,
        writes: false,
        before_open: false,
    }
}

const fn write(name: &'static str) -> ProcInfo {
    ProcInfo {
        name,
        writes: true,
        before_open: false,
    }
}

const fn pre_open(name: &'static str) -> ProcInfo {
    ProcInfo {
        name,
        writes: false,
        before_open: true,
    }
}

/// Metadata of an implemented procedure; `None` means not implemented.
pub fn info(procedure: i32) -> Option<ProcInfo> {
    Some(match procedure {
        AUTH_LIST => pre_open("virConnectAuthList"),
        CONNECT_OPEN => pre_open("virConnectOpen"),
        CONNECT_CLOSE => read("virConnectClose"),
        CONNECT_SUPPORTS_FEATURE => read("virConnectSupportsFeature"),
        CONNECT_GET_TYPE => read("virConnectGetType"),
        CONNECT_GET_VERSION => read("virConnectGetVersion"),
        CONNECT_GET_LIB_VERSION => read("virConnectGetLibVersion"),
        CONNECT_GET_HOSTNAME => read("virConnectGetHostname"),
        CONNECT_GET_URI => read("virConnectGetURI"),
        CONNECT_GET_CAPABILITIES => read("virConnectGetCapabilities"),
        CONNECT_GET_MAX_VCPUS => read("virConnectGetMaxVcpus"),
        CONNECT_IS_SECURE => read("virConnectIsSecure"),
        NODE_GET_INFO => read("virNodeGetInfo"),
        NODE_GET_FREE_MEMORY => read("virNodeGetFreeMemory"),
        NODE_GET_SECURITY_MODEL => read("virNodeGetSecurityModel"),
        CONNECT_LIST_ALL_DOMAINS => read("virConnectListAllDomains"),
        CONNECT_LIST_DOMAINS => read("virConnectListDomains"),
        CONNECT_NUM_OF_DOMAINS => read("virConnectNumOfDomains"),
        CONNECT_LIST_DEFINED_DOMAINS => read("virConnectListDefinedDomains"),
        CONNECT_NUM_OF_DEFINED_DOMAINS => read("virConnectNumOfDefinedDomains"),
        CONNECT_REGISTER_CLOSE_CALLBACK => read("virConnectRegisterCloseCallback"),
        CONNECT_UNREGISTER_CLOSE_CALLBACK => read("virConnectUnregisterCloseCallback"),
        CONNECT_DOMAIN_EVENT_REGISTER => read("virConnectDomainEventRegister"),
        CONNECT_DOMAIN_EVENT_DEREGISTER => read("virConnectDomainEventDeregister"),
        CONNECT_DOMAIN_EVENT_REGISTER_ANY => read("virConnectDomainEventRegisterAny"),
        CONNECT_DOMAIN_EVENT_DEREGISTER_ANY => read("virConnectDomainEventDeregisterAny"),
        CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY => read("virConnectDomainEventRegisterAny"),
        CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY => read("virConnectDomainEventDeregisterAny"),
        DOMAIN_LOOKUP_BY_NAME => read("virDomainLookupByName"),
        DOMAIN_LOOKUP_BY_UUID => read("virDomainLookupByUUID"),
        DOMAIN_LOOKUP_BY_ID => read("virDomainLookupByID"),
        DOMAIN_GET_INFO => read("virDomainGetInfo"),
        DOMAIN_GET_STATE => read("virDomainGetState"),
        DOMAIN_GET_XML_DESC => read("virDomainGetXMLDesc"),
        DOMAIN_GET_AUTOSTART => read("virDomainGetAutostart"),
        DOMAIN_IS_ACTIVE => read("virDomainIsActive"),
        DOMAIN_IS_PERSISTENT => read("virDomainIsPersistent"),
        DOMAIN_IS_UPDATED => read("virDomainIsUpdated"),
        DOMAIN_GET_OS_TYPE => read("virDomainGetOSType"),
        DOMAIN_GET_MAX_MEMORY => read("virDomainGetMaxMemory"),
        DOMAIN_GET_MAX_VCPUS => read("virDomainGetMaxVcpus"),
        DOMAIN_GET_VCPUS_FLAGS => read("virDomainGetVcpusFlags"),
        DOMAIN_HAS_MANAGED_SAVE_IMAGE => read("virDomainHasManagedSaveImage"),
        DOMAIN_GET_SECURITY_LABEL => read("virDomainGetSecurityLabel"),
        DOMAIN_DEFINE_XML => write("virDomainDefineXML"),
        DOMAIN_DEFINE_XML_FLAGS => write("virDomainDefineXMLFlags"),
        DOMAIN_UNDEFINE => write("virDomainUndefine"),
        DOMAIN_UNDEFINE_FLAGS => write("virDomainUndefineFlags"),
        DOMAIN_CREATE => write("virDomainCreate"),
        DOMAIN_CREATE_WITH_FLAGS => write("virDomainCreateWithFlags"),
        DOMAIN_CREATE_XML => write("virDomainCreateXML"),
        DOMAIN_SHUTDOWN => write("virDomainShutdown"),
        DOMAIN_SHUTDOWN_FLAGS => write("virDomainShutdownFlags"),
        DOMAIN_REBOOT => write("virDomainReboot"),
        DOMAIN_RESET => write("virDomainReset"),
        DOMAIN_DESTROY => write("virDomainDestroy"),
        DOMAIN_DESTROY_FLAGS => write("virDomainDestroyFlags"),
        DOMAIN_SUSPEND => write("virDomainSuspend"),
        DOMAIN_RESUME => write("virDomainResume"),
        DOMAIN_SET_AUTOSTART => write("virDomainSetAutostart"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutating_procedures_are_marked() {
        for p in [
            DOMAIN_DEFINE_XML,
            DOMAIN_CREATE,
            DOMAIN_DESTROY,
            DOMAIN_UNDEFINE_FLAGS,
        ] {
            assert!(info(p).unwrap().writes);
        }
        for p in [CONNECT_LIST_ALL_DOMAINS, DOMAIN_GET_INFO, NODE_GET_INFO] {
            assert!(!info(p).unwrap().writes);
        }
        assert!(info(AUTH_LIST).unwrap().before_open);
        assert!(info(99_999).is_none());
    }
}
