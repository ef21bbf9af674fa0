//! libvirt's error numbers and domains, and the `remote_error` body that an
//! error reply carries. Numbers are libvirt's `virErrorNumber` and
//! `virErrorDomain`; clients print the message as is.

use serde::{Deserialize, Serialize};

use crate::remote::{NonnullDomain, NonnullNetwork};
use crate::xdr::{OptString, XdrString};

/// `virErrorNumber`: every value of libvirt 9.0 (`include/libvirt/virterror.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    InternalError = 1,
    NoMemory = 2,
    NoSupport = 3,
    UnknownHost = 4,
    NoConnect = 5,
    InvalidConn = 6,
    InvalidDomain = 7,
    InvalidArg = 8,
    OperationFailed = 9,
    GetFailed = 10,
    PostFailed = 11,
    HttpError = 12,
    SexprSerial = 13,
    NoXen = 14,
    XenCall = 15,
    OsType = 16,
    NoKernel = 17,
    NoRoot = 18,
    NoSource = 19,
    NoTarget = 20,
    NoName = 21,
    NoOs = 22,
    NoDevice = 23,
    NoXenstore = 24,
    DriverFull = 25,
    CallFailed = 26,
    XmlError = 27,
    DomExist = 28,
    OperationDenied = 29,
    OpenFailed = 30,
    ReadFailed = 31,
    ParseFailed = 32,
    ConfSyntax = 33,
    WriteFailed = 34,
    XmlDetail = 35,
    InvalidNetwork = 36,
    NetworkExist = 37,
    SystemError = 38,
    Rpc = 39,
    GnutlsError = 40,
    WarNoNetwork = 41,
    NoDomain = 42,
    NoNetwork = 43,
    InvalidMac = 44,
    AuthFailed = 45,
    InvalidStoragePool = 46,
    InvalidStorageVol = 47,
    WarNoStorage = 48,
    NoStoragePool = 49,
    NoStorageVol = 50,
    WarNoNode = 51,
    InvalidNodeDevice = 52,
    NoNodeDevice = 53,
    NoSecurityModel = 54,
    OperationInvalid = 55,
    WarNoInterface = 56,
    NoInterface = 57,
    InvalidInterface = 58,
    MultipleInterfaces = 59,
    WarNoNwfilter = 60,
    InvalidNwfilter = 61,
    NoNwfilter = 62,
    BuildFirewall = 63,
    WarNoSecret = 64,
    InvalidSecret = 65,
    NoSecret = 66,
    ConfigUnsupported = 67,
    OperationTimeout = 68,
    MigratePersistFailed = 69,
    HookScriptFailed = 70,
    InvalidDomainSnapshot = 71,
    NoDomainSnapshot = 72,
    InvalidStream = 73,
    ArgumentUnsupported = 74,
    StorageProbeFailed = 75,
    StoragePoolBuilt = 76,
    SnapshotRevertRisky = 77,
    OperationAborted = 78,
    AuthCancelled = 79,
    NoDomainMetadata = 80,
    MigrateUnsafe = 81,
    Overflow = 82,
    BlockCopyActive = 83,
    OperationUnsupported = 84,
    Ssh = 85,
    AgentUnresponsive = 86,
    ResourceBusy = 87,
    AccessDenied = 88,
    DbusService = 89,
    StorageVolExist = 90,
    CpuIncompatible = 91,
    XmlInvalidSchema = 92,
    MigrateFinishOk = 93,
    AuthUnavailable = 94,
    NoServer = 95,
    NoClient = 96,
    AgentUnsynced = 97,
    Libssh = 98,
    DeviceMissing = 99,
    InvalidNwfilterBinding = 100,
    NoNwfilterBinding = 101,
    InvalidDomainCheckpoint = 102,
    NoDomainCheckpoint = 103,
    NoDomainBackup = 104,
    InvalidNetworkPort = 105,
    NetworkPortExist = 106,
    NoNetworkPort = 107,
    NoHostname = 108,
    CheckpointInconsistent = 109,
    MultipleDomains = 110,
}

impl ErrorCode {
    pub fn from_i32(v: i32) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => InternalError,
            2 => NoMemory,
            3 => NoSupport,
            4 => UnknownHost,
            5 => NoConnect,
            6 => InvalidConn,
            7 => InvalidDomain,
            8 => InvalidArg,
            9 => OperationFailed,
            10 => GetFailed,
            11 => PostFailed,
            12 => HttpError,
            13 => SexprSerial,
            14 => NoXen,
            15 => XenCall,
            16 => OsType,
            17 => NoKernel,
            18 => NoRoot,
            19 => NoSource,
            20 => NoTarget,
            21 => NoName,
            22 => NoOs,
            23 => NoDevice,
            24 => NoXenstore,
            25 => DriverFull,
            26 => CallFailed,
            27 => XmlError,
            28 => DomExist,
            29 => OperationDenied,
            30 => OpenFailed,
            31 => ReadFailed,
            32 => ParseFailed,
            33 => ConfSyntax,
            34 => WriteFailed,
            35 => XmlDetail,
            36 => InvalidNetwork,
            37 => NetworkExist,
            38 => SystemError,
            39 => Rpc,
            40 => GnutlsError,
            41 => WarNoNetwork,
            42 => NoDomain,
            43 => NoNetwork,
            44 => InvalidMac,
            45 => AuthFailed,
            46 => InvalidStoragePool,
            47 => InvalidStorageVol,
            48 => WarNoStorage,
            49 => NoStoragePool,
            50 => NoStorageVol,
            51 => WarNoNode,
            52 => InvalidNodeDevice,
            53 => NoNodeDevice,
            54 => NoSecurityModel,
            55 => OperationInvalid,
            56 => WarNoInterface,
            57 => NoInterface,
            58 => InvalidInterface,
            59 => MultipleInterfaces,
            60 => WarNoNwfilter,
            61 => InvalidNwfilter,
            62 => NoNwfilter,
            63 => BuildFirewall,
            64 => WarNoSecret,
            65 => InvalidSecret,
            66 => NoSecret,
            67 => ConfigUnsupported,
            68 => OperationTimeout,
            69 => MigratePersistFailed,
            70 => HookScriptFailed,
            71 => InvalidDomainSnapshot,
            72 => NoDomainSnapshot,
            73 => InvalidStream,
            74 => ArgumentUnsupported,
            75 => StorageProbeFailed,
            76 => StoragePoolBuilt,
            77 => SnapshotRevertRisky,
            78 => OperationAborted,
            79 => AuthCancelled,
            80 => NoDomainMetadata,
            81 => MigrateUnsafe,
            82 => Overflow,
            83 => BlockCopyActive,
            84 => OperationUnsupported,
            85 => Ssh,
            86 => AgentUnresponsive,
            87 => ResourceBusy,
            88 => AccessDenied,
            89 => DbusService,
            90 => StorageVolExist,
            91 => CpuIncompatible,
            92 => XmlInvalidSchema,
            93 => MigrateFinishOk,
            94 => AuthUnavailable,
            95 => NoServer,
            96 => NoClient,
            97 => AgentUnsynced,
            98 => Libssh,
            99 => DeviceMissing,
            100 => InvalidNwfilterBinding,
            101 => NoNwfilterBinding,
            102 => InvalidDomainCheckpoint,
            103 => NoDomainCheckpoint,
            104 => NoDomainBackup,
            105 => InvalidNetworkPort,
            106 => NetworkPortExist,
            107 => NoNetworkPort,
            108 => NoHostname,
            109 => CheckpointInconsistent,
            110 => MultipleDomains,
            _ => return None,
        })
    }

    /// libvirt's symbolic name, for logs and the Rust client's messages.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InternalError => "VIR_ERR_INTERNAL_ERROR",
            NoMemory => "VIR_ERR_NO_MEMORY",
            NoSupport => "VIR_ERR_NO_SUPPORT",
            UnknownHost => "VIR_ERR_UNKNOWN_HOST",
            NoConnect => "VIR_ERR_NO_CONNECT",
            InvalidConn => "VIR_ERR_INVALID_CONN",
            InvalidDomain => "VIR_ERR_INVALID_DOMAIN",
            InvalidArg => "VIR_ERR_INVALID_ARG",
            OperationFailed => "VIR_ERR_OPERATION_FAILED",
            GetFailed => "VIR_ERR_GET_FAILED",
            PostFailed => "VIR_ERR_POST_FAILED",
            HttpError => "VIR_ERR_HTTP_ERROR",
            SexprSerial => "VIR_ERR_SEXPR_SERIAL",
            NoXen => "VIR_ERR_NO_XEN",
            XenCall => "VIR_ERR_XEN_CALL",
            OsType => "VIR_ERR_OS_TYPE",
            NoKernel => "VIR_ERR_NO_KERNEL",
            NoRoot => "VIR_ERR_NO_ROOT",
            NoSource => "VIR_ERR_NO_SOURCE",
            NoTarget => "VIR_ERR_NO_TARGET",
            NoName => "VIR_ERR_NO_NAME",
            NoOs => "VIR_ERR_NO_OS",
            NoDevice => "VIR_ERR_NO_DEVICE",
            NoXenstore => "VIR_ERR_NO_XENSTORE",
            DriverFull => "VIR_ERR_DRIVER_FULL",
            CallFailed => "VIR_ERR_CALL_FAILED",
            XmlError => "VIR_ERR_XML_ERROR",
            DomExist => "VIR_ERR_DOM_EXIST",
            OperationDenied => "VIR_ERR_OPERATION_DENIED",
            OpenFailed => "VIR_ERR_OPEN_FAILED",
            ReadFailed => "VIR_ERR_READ_FAILED",
            ParseFailed => "VIR_ERR_PARSE_FAILED",
            ConfSyntax => "VIR_ERR_CONF_SYNTAX",
            WriteFailed => "VIR_ERR_WRITE_FAILED",
            XmlDetail => "VIR_ERR_XML_DETAIL",
            InvalidNetwork => "VIR_ERR_INVALID_NETWORK",
            NetworkExist => "VIR_ERR_NETWORK_EXIST",
            SystemError => "VIR_ERR_SYSTEM_ERROR",
            Rpc => "VIR_ERR_RPC",
            GnutlsError => "VIR_ERR_GNUTLS_ERROR",
            WarNoNetwork => "VIR_WAR_NO_NETWORK",
            NoDomain => "VIR_ERR_NO_DOMAIN",
            NoNetwork => "VIR_ERR_NO_NETWORK",
            InvalidMac => "VIR_ERR_INVALID_MAC",
            AuthFailed => "VIR_ERR_AUTH_FAILED",
            InvalidStoragePool => "VIR_ERR_INVALID_STORAGE_POOL",
            InvalidStorageVol => "VIR_ERR_INVALID_STORAGE_VOL",
            WarNoStorage => "VIR_WAR_NO_STORAGE",
            NoStoragePool => "VIR_ERR_NO_STORAGE_POOL",
            NoStorageVol => "VIR_ERR_NO_STORAGE_VOL",
            WarNoNode => "VIR_WAR_NO_NODE",
            InvalidNodeDevice => "VIR_ERR_INVALID_NODE_DEVICE",
            NoNodeDevice => "VIR_ERR_NO_NODE_DEVICE",
            NoSecurityModel => "VIR_ERR_NO_SECURITY_MODEL",
            OperationInvalid => "VIR_ERR_OPERATION_INVALID",
            WarNoInterface => "VIR_WAR_NO_INTERFACE",
            NoInterface => "VIR_ERR_NO_INTERFACE",
            InvalidInterface => "VIR_ERR_INVALID_INTERFACE",
            MultipleInterfaces => "VIR_ERR_MULTIPLE_INTERFACES",
            WarNoNwfilter => "VIR_WAR_NO_NWFILTER",
            InvalidNwfilter => "VIR_ERR_INVALID_NWFILTER",
            NoNwfilter => "VIR_ERR_NO_NWFILTER",
            BuildFirewall => "VIR_ERR_BUILD_FIREWALL",
            WarNoSecret => "VIR_WAR_NO_SECRET",
            InvalidSecret => "VIR_ERR_INVALID_SECRET",
            NoSecret => "VIR_ERR_NO_SECRET",
            ConfigUnsupported => "VIR_ERR_CONFIG_UNSUPPORTED",
            OperationTimeout => "VIR_ERR_OPERATION_TIMEOUT",
            MigratePersistFailed => "VIR_ERR_MIGRATE_PERSIST_FAILED",
            HookScriptFailed => "VIR_ERR_HOOK_SCRIPT_FAILED",
            InvalidDomainSnapshot => "VIR_ERR_INVALID_DOMAIN_SNAPSHOT",
            NoDomainSnapshot => "VIR_ERR_NO_DOMAIN_SNAPSHOT",
            InvalidStream => "VIR_ERR_INVALID_STREAM",
            ArgumentUnsupported => "VIR_ERR_ARGUMENT_UNSUPPORTED",
            StorageProbeFailed => "VIR_ERR_STORAGE_PROBE_FAILED",
            StoragePoolBuilt => "VIR_ERR_STORAGE_POOL_BUILT",
            SnapshotRevertRisky => "VIR_ERR_SNAPSHOT_REVERT_RISKY",
            OperationAborted => "VIR_ERR_OPERATION_ABORTED",
            AuthCancelled => "VIR_ERR_AUTH_CANCELLED",
            NoDomainMetadata => "VIR_ERR_NO_DOMAIN_METADATA",
            MigrateUnsafe => "VIR_ERR_MIGRATE_UNSAFE",
            Overflow => "VIR_ERR_OVERFLOW",
            BlockCopyActive => "VIR_ERR_BLOCK_COPY_ACTIVE",
            OperationUnsupported => "VIR_ERR_OPERATION_UNSUPPORTED",
            Ssh => "VIR_ERR_SSH",
            AgentUnresponsive => "VIR_ERR_AGENT_UNRESPONSIVE",
            ResourceBusy => "VIR_ERR_RESOURCE_BUSY",
            AccessDenied => "VIR_ERR_ACCESS_DENIED",
            DbusService => "VIR_ERR_DBUS_SERVICE",
            StorageVolExist => "VIR_ERR_STORAGE_VOL_EXIST",
            CpuIncompatible => "VIR_ERR_CPU_INCOMPATIBLE",
            XmlInvalidSchema => "VIR_ERR_XML_INVALID_SCHEMA",
            MigrateFinishOk => "VIR_ERR_MIGRATE_FINISH_OK",
            AuthUnavailable => "VIR_ERR_AUTH_UNAVAILABLE",
            NoServer => "VIR_ERR_NO_SERVER",
            NoClient => "VIR_ERR_NO_CLIENT",
            AgentUnsynced => "VIR_ERR_AGENT_UNSYNCED",
            Libssh => "VIR_ERR_LIBSSH",
            DeviceMissing => "VIR_ERR_DEVICE_MISSING",
            InvalidNwfilterBinding => "VIR_ERR_INVALID_NWFILTER_BINDING",
            NoNwfilterBinding => "VIR_ERR_NO_NWFILTER_BINDING",
            InvalidDomainCheckpoint => "VIR_ERR_INVALID_DOMAIN_CHECKPOINT",
            NoDomainCheckpoint => "VIR_ERR_NO_DOMAIN_CHECKPOINT",
            NoDomainBackup => "VIR_ERR_NO_DOMAIN_BACKUP",
            InvalidNetworkPort => "VIR_ERR_INVALID_NETWORK_PORT",
            NetworkPortExist => "VIR_ERR_NETWORK_PORT_EXIST",
            NoNetworkPort => "VIR_ERR_NO_NETWORK_PORT",
            NoHostname => "VIR_ERR_NO_HOSTNAME",
            CheckpointInconsistent => "VIR_ERR_CHECKPOINT_INCONSISTENT",
            MultipleDomains => "VIR_ERR_MULTIPLE_DOMAINS",
        }
    }
}

/// `virErrorDomain`: every value of libvirt 9.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorDomain {
    None = 0,
    Xen = 1,
    Xend = 2,
    Xenstore = 3,
    Sexpr = 4,
    Xml = 5,
    Dom = 6,
    Rpc = 7,
    Proxy = 8,
    Conf = 9,
    Qemu = 10,
    Net = 11,
    Test = 12,
    Remote = 13,
    Openvz = 14,
    Xenxm = 15,
    StatsLinux = 16,
    Lxc = 17,
    Storage = 18,
    Network = 19,
    Domain = 20,
    Uml = 21,
    Nodedev = 22,
    XenInotify = 23,
    Security = 24,
    Vbox = 25,
    Interface = 26,
    One = 27,
    Esx = 28,
    Phyp = 29,
    Secret = 30,
    Cpu = 31,
    Xenapi = 32,
    Nwfilter = 33,
    Hook = 34,
    DomainSnapshot = 35,
    Audit = 36,
    Sysinfo = 37,
    Streams = 38,
    Vmware = 39,
    Event = 40,
    Libxl = 41,
    Locking = 42,
    Hyperv = 43,
    Capabilities = 44,
    Uri = 45,
    Auth = 46,
    Dbus = 47,
    Parallels = 48,
    Device = 49,
    Ssh = 50,
    Lockspace = 51,
    Initctl = 52,
    Identity = 53,
    Cgroup = 54,
    Access = 55,
    Systemd = 56,
    Bhyve = 57,
    Crypto = 58,
    Firewall = 59,
    Polkit = 60,
    Thread = 61,
    Admin = 62,
    Logging = 63,
    Xenxl = 64,
    Perf = 65,
    Libssh = 66,
    Resctrl = 67,
    Firewalld = 68,
    DomainCheckpoint = 69,
    Tpm = 70,
    Bpf = 71,
    Ch = 72,
}

/// `virErrorLevel`.
pub const ERROR_LEVEL_ERROR: i32 = 2;

/// `remote_error`: the body of every REPLY with status ERROR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: i32,
    pub domain: i32,
    pub message: OptString,
    pub level: i32,
    pub dom: Option<NonnullDomain>,
    pub str1: OptString,
    pub str2: OptString,
    pub str3: OptString,
    pub int1: i32,
    pub int2: i32,
    pub net: Option<NonnullNetwork>,
}

impl RemoteError {
    pub fn new(code: ErrorCode, domain: ErrorDomain, message: impl Into<String>) -> Self {
        let message: String = message.into();
        RemoteError {
            code: code as i32,
            domain: domain as i32,
            // libvirt puts the detail text in str1 as well; clients only
            // print `message`, but some tools look at str1.
            str1: Some(XdrString(message.clone())),
            message: Some(XdrString(message)),
            level: ERROR_LEVEL_ERROR,
            dom: None,
            str2: None,
            str3: None,
            int1: -1,
            int2: -1,
            net: None,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_i32(self.code)
    }

    pub fn message(&self) -> &str {
        self.message.as_ref().map(|m| m.as_str()).unwrap_or("")
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{} ({})", self.message(), code.name()),
            None => write!(f, "{} (code {})", self.message(), self.code),
        }
    }
}

impl std::error::Error for RemoteError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{from_bytes, to_bytes};

    #[test]
    fn error_body_layout() {
        let mut e = RemoteError::new(ErrorCode::NoSupport, ErrorDomain::Remote, "ab");
        e.str1 = None;
        let b = to_bytes(&e).unwrap();
        let expected: Vec<u8> = [
            &[0, 0, 0, 3][..],                           // code
            &[0, 0, 0, 13],                              // domain
            &[0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b', 0, 0], // message
            &[0, 0, 0, 2],                               // level
            &[0, 0, 0, 0],                               // dom
            &[0, 0, 0, 0],                               // str1
            &[0, 0, 0, 0],                               // str2
            &[0, 0, 0, 0],                               // str3
            &[0xff, 0xff, 0xff, 0xff],                   // int1
            &[0xff, 0xff, 0xff, 0xff],                   // int2
            &[0, 0, 0, 0],                               // net
        ]
        .concat();
        assert_eq!(b, expected);
        assert_eq!(from_bytes::<RemoteError>(&b).unwrap(), e);
    }

    #[test]
    fn codes_roundtrip_and_name() {
        for v in 0..200 {
            if let Some(c) = ErrorCode::from_i32(v) {
                assert_eq!(c as i32, v);
                // Warnings (VIR_WAR_*) share the numbering with errors.
                assert!(c.name().starts_with("VIR_ERR_") || c.name().starts_with("VIR_WAR_"));
            }
        }
        assert_eq!(ErrorCode::NoDomain as i32, 42);
        assert_eq!(ErrorCode::OperationInvalid as i32, 55);
        assert_eq!(ErrorCode::NoNetwork as i32, 43);
        assert_eq!(ErrorCode::WarNoNetwork as i32, 41);
        assert_eq!(ErrorCode::NoSecret as i32, 66);
        assert_eq!(ErrorDomain::Qemu as i32, 10);
        assert_eq!(ErrorDomain::Remote as i32, 13);
        assert_eq!(ErrorDomain::Domain as i32, 20);
    }
}
