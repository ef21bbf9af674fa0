//! The REMOTE program: procedure numbers and argument/return structs, with
//! libvirt's field order (`src/remote/remote_protocol.x`). Only the subset
//! qemud implements or answers is described here.

use serde::{Deserialize, Serialize};

use crate::xdr::{OptString, Uuid16, XdrString, XdrVec};

/// `REMOTE_DOMAIN_LIST_MAX`.
pub const DOMAIN_LIST_MAX: usize = 16384;
/// `REMOTE_AUTH_TYPE_LIST_MAX`.
pub const AUTH_TYPE_LIST_MAX: usize = 20;
/// `VIR_SECURITY_MODEL_BUFLEN` / `VIR_SECURITY_DOI_BUFLEN`.
pub const SECURITY_MODEL_MAX: usize = 257;
/// `VIR_SECURITY_LABEL_BUFLEN`.
pub const SECURITY_LABEL_MAX: usize = 4097;

/// `remote_auth_type`.
pub const AUTH_NONE: i32 = 0;

/// `virConnectFlags`: the client asked for a read-only connection.
pub const CONNECT_RO: u32 = 1;

/// `virDrvFeature` values a client may ask about.
pub mod feature {
    pub const PROGRAM_KEEPALIVE: i32 = 10;
    pub const REMOTE_EVENT_CALLBACK: i32 = 14;
    pub const REMOTE_CLOSE_CALLBACK: i32 = 15;
}

/// Procedure numbers of the REMOTE program.
pub mod procs {
    pub const CONNECT_OPEN: i32 = 1;
    pub const CONNECT_CLOSE: i32 = 2;
    pub const CONNECT_GET_TYPE: i32 = 3;
    pub const CONNECT_GET_VERSION: i32 = 4;
    pub const CONNECT_GET_MAX_VCPUS: i32 = 5;
    pub const NODE_GET_INFO: i32 = 6;
    pub const CONNECT_GET_CAPABILITIES: i32 = 7;
    pub const DOMAIN_CREATE: i32 = 9;
    pub const DOMAIN_CREATE_XML: i32 = 10;
    pub const DOMAIN_DEFINE_XML: i32 = 11;
    pub const DOMAIN_DESTROY: i32 = 12;
    pub const DOMAIN_GET_XML_DESC: i32 = 14;
    pub const DOMAIN_GET_AUTOSTART: i32 = 15;
    pub const DOMAIN_GET_INFO: i32 = 16;
    pub const DOMAIN_GET_MAX_MEMORY: i32 = 17;
    pub const DOMAIN_GET_MAX_VCPUS: i32 = 18;
    pub const DOMAIN_GET_OS_TYPE: i32 = 19;
    pub const CONNECT_LIST_DEFINED_DOMAINS: i32 = 21;
    pub const DOMAIN_LOOKUP_BY_ID: i32 = 22;
    pub const DOMAIN_LOOKUP_BY_NAME: i32 = 23;
    pub const DOMAIN_LOOKUP_BY_UUID: i32 = 24;
    pub const CONNECT_NUM_OF_DEFINED_DOMAINS: i32 = 25;
    pub const DOMAIN_REBOOT: i32 = 27;
    pub const DOMAIN_RESUME: i32 = 28;
    pub const DOMAIN_SET_AUTOSTART: i32 = 29;
    pub const DOMAIN_SHUTDOWN: i32 = 33;
    pub const DOMAIN_SUSPEND: i32 = 34;
    pub const DOMAIN_UNDEFINE: i32 = 35;
    pub const CONNECT_LIST_DOMAINS: i32 = 37;
    pub const CONNECT_NUM_OF_DOMAINS: i32 = 51;
    pub const CONNECT_GET_HOSTNAME: i32 = 59;
    pub const CONNECT_SUPPORTS_FEATURE: i32 = 60;
    pub const AUTH_LIST: i32 = 66;
    pub const NODE_GET_FREE_MEMORY: i32 = 102;
    pub const CONNECT_DOMAIN_EVENT_REGISTER: i32 = 105;
    pub const CONNECT_DOMAIN_EVENT_DEREGISTER: i32 = 106;
    pub const DOMAIN_EVENT_LIFECYCLE: i32 = 107;
    pub const CONNECT_GET_URI: i32 = 110;
    pub const DOMAIN_GET_SECURITY_LABEL: i32 = 121;
    pub const NODE_GET_SECURITY_MODEL: i32 = 122;
    pub const CONNECT_IS_SECURE: i32 = 149;
    pub const DOMAIN_IS_ACTIVE: i32 = 150;
    pub const DOMAIN_IS_PERSISTENT: i32 = 151;
    pub const CONNECT_GET_LIB_VERSION: i32 = 157;
    pub const CONNECT_DOMAIN_EVENT_REGISTER_ANY: i32 = 167;
    pub const CONNECT_DOMAIN_EVENT_DEREGISTER_ANY: i32 = 168;
    pub const DOMAIN_EVENT_REBOOT: i32 = 169;
    pub const DOMAIN_EVENT_RTC_CHANGE: i32 = 170;
    pub const DOMAIN_EVENT_WATCHDOG: i32 = 171;
    pub const DOMAIN_EVENT_IO_ERROR: i32 = 172;
    pub const DOMAIN_HAS_MANAGED_SAVE_IMAGE: i32 = 183;
    pub const DOMAIN_EVENT_IO_ERROR_REASON: i32 = 195;
    pub const DOMAIN_CREATE_WITH_FLAGS: i32 = 196;
    pub const DOMAIN_GET_VCPUS_FLAGS: i32 = 200;
    pub const DOMAIN_IS_UPDATED: i32 = 202;
    pub const DOMAIN_GET_STATE: i32 = 212;
    pub const DOMAIN_UNDEFINE_FLAGS: i32 = 231;
    pub const DOMAIN_DESTROY_FLAGS: i32 = 234;
    pub const DOMAIN_RESET: i32 = 245;
    pub const DOMAIN_SHUTDOWN_FLAGS: i32 = 258;
    pub const CONNECT_LIST_ALL_DOMAINS: i32 = 273;
    pub const DOMAIN_EVENT_DEVICE_REMOVED: i32 = 311;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: i32 = 316;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: i32 = 317;
    pub const DOMAIN_EVENT_CALLBACK_LIFECYCLE: i32 = 318;
    pub const DOMAIN_EVENT_CALLBACK_REBOOT: i32 = 319;
    pub const DOMAIN_EVENT_CALLBACK_RTC_CHANGE: i32 = 320;
    pub const DOMAIN_EVENT_CALLBACK_WATCHDOG: i32 = 321;
    pub const DOMAIN_EVENT_CALLBACK_IO_ERROR: i32 = 322;
    pub const DOMAIN_EVENT_CALLBACK_IO_ERROR_REASON: i32 = 324;
    pub const DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED: i32 = 333;
    pub const DOMAIN_DEFINE_XML_FLAGS: i32 = 350;
    pub const CONNECT_REGISTER_CLOSE_CALLBACK: i32 = 360;
    pub const CONNECT_UNREGISTER_CLOSE_CALLBACK: i32 = 361;
}

/// `remote_nonnull_domain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonnullDomain {
    pub name: XdrString,
    pub uuid: Uuid16,
    pub id: i32,
}

/// `remote_nonnull_network`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonnullNetwork {
    pub name: XdrString,
    pub uuid: Uuid16,
}

macro_rules! xdr_struct {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $name { $(pub $field: $ty),* }
    };
}

xdr_struct!(ConnectOpenArgs {
    name: OptString,
    flags: u32
});
xdr_struct!(SupportsFeatureArgs { feature: i32 });
xdr_struct!(SupportsFeatureRet { supported: i32 });
xdr_struct!(GetTypeRet { type_: XdrString });
xdr_struct!(GetVersionRet { hv_ver: u64 });
xdr_struct!(GetLibVersionRet { lib_ver: u64 });
xdr_struct!(GetHostnameRet {
    hostname: XdrString
});
xdr_struct!(GetUriRet { uri: XdrString });
xdr_struct!(GetMaxVcpusArgs { type_: OptString });
xdr_struct!(GetMaxVcpusRet { max_vcpus: i32 });
xdr_struct!(
    /// `char model[32]` is a fixed array of XDR chars: one word each.
    NodeGetInfoRet {
        model: [i8; 32],
        memory: u64,
        cpus: i32,
        mhz: i32,
        nodes: i32,
        sockets: i32,
        cores: i32,
        threads: i32,
    }
);
xdr_struct!(GetCapabilitiesRet {
    capabilities: XdrString
});
xdr_struct!(NodeGetFreeMemoryRet { free_mem: u64 });
xdr_struct!(IsSecureRet { secure: i32 });
xdr_struct!(AuthListRet { types: XdrVec<i32, AUTH_TYPE_LIST_MAX> });
xdr_struct!(
    /// Variable `char` arrays: one word per character.
    NodeGetSecurityModelRet {
        model: XdrVec<i8, SECURITY_MODEL_MAX>,
        doi: XdrVec<i8, SECURITY_MODEL_MAX>,
    }
);

xdr_struct!(ConnectListAllDomainsArgs {
    need_results: i32,
    flags: u32
});
xdr_struct!(ConnectListAllDomainsRet { domains: XdrVec<NonnullDomain, DOMAIN_LIST_MAX>, ret: u32 });
xdr_struct!(ConnectListDomainsArgs { maxids: i32 });
xdr_struct!(ConnectListDomainsRet { ids: XdrVec<i32, DOMAIN_LIST_MAX> });
xdr_struct!(ConnectListDefinedDomainsArgs { maxnames: i32 });
xdr_struct!(ConnectListDefinedDomainsRet { names: XdrVec<XdrString, DOMAIN_LIST_MAX> });
xdr_struct!(NumRet { num: i32 });

xdr_struct!(DomainArgs { dom: NonnullDomain });
xdr_struct!(DomainFlagsArgs {
    dom: NonnullDomain,
    flags: u32
});
xdr_struct!(DomainRet { dom: NonnullDomain });
xdr_struct!(DomainLookupByNameArgs { name: XdrString });
xdr_struct!(DomainLookupByUuidArgs { uuid: Uuid16 });
xdr_struct!(DomainLookupByIdArgs { id: i32 });
xdr_struct!(DomainDefineXmlArgs { xml: XdrString });
xdr_struct!(DomainDefineXmlFlagsArgs {
    xml: XdrString,
    flags: u32
});
xdr_struct!(DomainCreateXmlArgs {
    xml_desc: XdrString,
    flags: u32
});
xdr_struct!(DomainGetInfoRet {
    state: u8,
    max_mem: u64,
    memory: u64,
    nr_virt_cpu: u16,
    cpu_time: u64,
});
xdr_struct!(DomainGetStateRet {
    state: i32,
    reason: i32
});
xdr_struct!(DomainGetXmlDescRet { xml: XdrString });
xdr_struct!(DomainGetAutostartRet { autostart: i32 });
xdr_struct!(DomainSetAutostartArgs {
    dom: NonnullDomain,
    autostart: i32
});
xdr_struct!(DomainIsActiveRet { active: i32 });
xdr_struct!(DomainIsPersistentRet { persistent: i32 });
xdr_struct!(DomainIsUpdatedRet { updated: i32 });
xdr_struct!(DomainGetOsTypeRet { type_: XdrString });
xdr_struct!(DomainGetMaxMemoryRet { memory: u64 });
xdr_struct!(DomainHasManagedSaveImageRet { result: i32 });
xdr_struct!(DomainGetSecurityLabelRet {
    label: XdrVec<i8, SECURITY_LABEL_MAX>,
    enforcing: i32,
});

// Events.
xdr_struct!(ConnectDomainEventRegisterRet { cb_registered: i32 });
xdr_struct!(ConnectDomainEventRegisterAnyArgs { event_id: i32 });
xdr_struct!(ConnectDomainEventCallbackRegisterAnyArgs {
    event_id: i32,
    dom: Option<NonnullDomain>,
});
xdr_struct!(ConnectDomainEventCallbackRegisterAnyRet { callback_id: i32 });
xdr_struct!(ConnectDomainEventCallbackDeregisterAnyArgs { callback_id: i32 });
xdr_struct!(DomainEventLifecycleMsg {
    dom: NonnullDomain,
    event: i32,
    detail: i32
});
xdr_struct!(DomainEventCallbackLifecycleMsg {
    callback_id: i32,
    msg: DomainEventLifecycleMsg
});
xdr_struct!(DomainEventRebootMsg { dom: NonnullDomain });
xdr_struct!(DomainEventCallbackRebootMsg {
    callback_id: i32,
    msg: DomainEventRebootMsg
});
xdr_struct!(DomainEventRtcChangeMsg {
    dom: NonnullDomain,
    offset: i64
});
xdr_struct!(DomainEventCallbackRtcChangeMsg {
    callback_id: i32,
    msg: DomainEventRtcChangeMsg
});
xdr_struct!(DomainEventWatchdogMsg {
    dom: NonnullDomain,
    action: i32
});
xdr_struct!(DomainEventCallbackWatchdogMsg {
    callback_id: i32,
    msg: DomainEventWatchdogMsg
});
xdr_struct!(DomainEventIoErrorMsg {
    dom: NonnullDomain,
    src_path: XdrString,
    dev_alias: XdrString,
    action: i32,
});
xdr_struct!(DomainEventCallbackIoErrorMsg {
    callback_id: i32,
    msg: DomainEventIoErrorMsg
});
xdr_struct!(DomainEventIoErrorReasonMsg {
    dom: NonnullDomain,
    src_path: XdrString,
    dev_alias: XdrString,
    action: i32,
    reason: XdrString,
});
xdr_struct!(DomainEventCallbackIoErrorReasonMsg {
    callback_id: i32,
    msg: DomainEventIoErrorReasonMsg,
});
xdr_struct!(DomainEventDeviceRemovedMsg {
    dom: NonnullDomain,
    dev_alias: XdrString
});
xdr_struct!(DomainEventCallbackDeviceRemovedMsg {
    callback_id: i32,
    msg: DomainEventDeviceRemovedMsg,
});

/// `virDomainEventID` values.
pub mod event_id {
    pub const LIFECYCLE: i32 = 0;
    pub const REBOOT: i32 = 1;
    pub const RTC_CHANGE: i32 = 2;
    pub const WATCHDOG: i32 = 3;
    pub const IO_ERROR: i32 = 4;
    pub const GRAPHICS: i32 = 5;
    pub const IO_ERROR_REASON: i32 = 6;
    pub const CONTROL_ERROR: i32 = 7;
    pub const BLOCK_JOB: i32 = 8;
    pub const DISK_CHANGE: i32 = 9;
    pub const TRAY_CHANGE: i32 = 10;
    pub const PMWAKEUP: i32 = 11;
    pub const PMSUSPEND: i32 = 12;
    pub const BALLOON_CHANGE: i32 = 13;
    pub const PMSUSPEND_DISK: i32 = 14;
    pub const DEVICE_REMOVED: i32 = 15;
    /// One past the last ID libvirt 9.0 knows (`VIR_DOMAIN_EVENT_ID_LAST`).
    pub const LAST: i32 = 26;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{from_bytes, to_bytes};

    fn dom() -> NonnullDomain {
        NonnullDomain {
            name: "vm".into(),
            uuid: Uuid16([0xab; 16]),
            id: -1,
        }
    }

    #[test]
    fn nonnull_domain_layout() {
        let b = to_bytes(&dom()).unwrap();
        let mut expected = vec![0, 0, 0, 2, b'v', b'm', 0, 0];
        expected.extend_from_slice(&[0xab; 16]);
        expected.extend_from_slice(&[0xff; 4]);
        assert_eq!(b, expected);
        assert_eq!(from_bytes::<NonnullDomain>(&b).unwrap(), dom());
    }

    #[test]
    fn node_info_model_is_32_words() {
        let mut model = [0i8; 32];
        model[0] = b'x' as i8;
        let r = NodeGetInfoRet {
            model,
            memory: 1,
            cpus: 2,
            mhz: 3,
            nodes: 1,
            sockets: 1,
            cores: 2,
            threads: 1,
        };
        let b = to_bytes(&r).unwrap();
        assert_eq!(b.len(), 32 * 4 + 8 + 6 * 4);
        assert_eq!(&b[..4], &[0, 0, 0, b'x']);
        assert_eq!(from_bytes::<NodeGetInfoRet>(&b).unwrap(), r);
    }

    #[test]
    fn domain_info_widens_char_and_short() {
        let r = DomainGetInfoRet {
            state: 1,
            max_mem: 2,
            memory: 3,
            nr_virt_cpu: 4,
            cpu_time: 5,
        };
        let b = to_bytes(&r).unwrap();
        assert_eq!(b.len(), 4 + 8 + 8 + 4 + 8);
        assert_eq!(from_bytes::<DomainGetInfoRet>(&b).unwrap(), r);
    }

    #[test]
    fn callback_register_with_and_without_domain() {
        let a = ConnectDomainEventCallbackRegisterAnyArgs {
            event_id: 0,
            dom: None,
        };
        assert_eq!(to_bytes(&a).unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 0]);
        let a = ConnectDomainEventCallbackRegisterAnyArgs {
            event_id: 0,
            dom: Some(dom()),
        };
        let b = to_bytes(&a).unwrap();
        assert_eq!(&b[4..8], &[0, 0, 0, 1]);
        assert_eq!(
            from_bytes::<ConnectDomainEventCallbackRegisterAnyArgs>(&b).unwrap(),
            a
        );
    }

    #[test]
    fn list_all_domains_roundtrip() {
        let r = ConnectListAllDomainsRet {
            domains: XdrVec(vec![dom(), dom()]),
            ret: 2,
        };
        let b = to_bytes(&r).unwrap();
        assert_eq!(&b[..4], &[0, 0, 0, 2]);
        assert_eq!(from_bytes::<ConnectListAllDomainsRet>(&b).unwrap(), r);
    }

    #[test]
    fn lifecycle_callback_message_layout() {
        let m = DomainEventCallbackLifecycleMsg {
            callback_id: 7,
            msg: DomainEventLifecycleMsg {
                dom: dom(),
                event: 2,
                detail: 0,
            },
        };
        let b = to_bytes(&m).unwrap();
        assert_eq!(&b[..4], &[0, 0, 0, 7]);
        assert_eq!(&b[b.len() - 8..], &[0, 0, 0, 2, 0, 0, 0, 0]);
    }
}
