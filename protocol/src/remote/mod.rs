//! The REMOTE program (0x20008086): every argument, reply and event struct
//! with libvirt's field order, and every procedure number, generated from
//! libvirt's `remote_protocol.x` by `scripts/gen-protocol.py` (`types.rs`,
//! `procs.rs`); this file adds the few values that live in libvirt's C
//! headers rather than in the protocol file.

pub mod procs;
pub mod types;

pub use types::*;

/// `remote_auth_type`.
pub const AUTH_NONE: i32 = auth_type::NONE;

/// `virConnectFlags`: the client asked for a read-only connection.
pub const CONNECT_RO: u32 = 1;

/// `virDrvFeature` values a client may ask about.
pub mod feature {
    pub const MIGRATION_V1: i32 = 1;
    pub const REMOTE: i32 = 2;
    pub const MIGRATION_V2: i32 = 3;
    pub const MIGRATION_P2P: i32 = 4;
    pub const MIGRATION_DIRECT: i32 = 5;
    pub const MIGRATION_V3: i32 = 6;
    pub const MIGRATE_CHANGE_PROTECTION: i32 = 7;
    pub const FD_PASSING: i32 = 8;
    pub const TYPED_PARAM_STRING: i32 = 9;
    pub const PROGRAM_KEEPALIVE: i32 = 10;
    pub const MIGRATION_PARAMS: i32 = 11;
    pub const XML_MIGRATABLE: i32 = 12;
    pub const MIGRATION_OFFLINE: i32 = 13;
    pub const REMOTE_EVENT_CALLBACK: i32 = 14;
    pub const REMOTE_CLOSE_CALLBACK: i32 = 15;
    pub const NETWORK_UPDATE_HAS_CORRECT_ORDER: i32 = 16;
}
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
    use crate::xdr::{from_bytes, to_bytes, Uuid16, XdrVec};

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
