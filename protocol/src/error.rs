//! libvirt's error numbers and domains, and the `remote_error` body that an
//! error reply carries. Numbers are libvirt's `virErrorNumber` and
//! `virErrorDomain`; clients print the message as is.

use serde::{Deserialize, Serialize};

use crate::remote::{NonnullDomain, NonnullNetwork};
use crate::xdr::{OptString, XdrString};

/// `virErrorNumber` values qemud reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    InternalError = 1,
    NoMemory = 2,
    NoSupport = 3,
    NoConnect = 5,
    InvalidConn = 6,
    InvalidDomain = 7,
    InvalidArg = 8,
    OperationFailed = 9,
    XmlError = 27,
    DomExist = 28,
    OperationDenied = 29,
    OpenFailed = 30,
    SystemError = 38,
    Rpc = 39,
    NoDomain = 42,
    AuthFailed = 45,
    OperationInvalid = 55,
    ConfigUnsupported = 67,
    OperationTimeout = 68,
    ArgumentUnsupported = 74,
    OperationAborted = 78,
    OperationUnsupported = 84,
    AgentUnresponsive = 86,
    ResourceBusy = 87,
    AccessDenied = 88,
    XmlInvalidSchema = 92,
    NoServer = 95,
    NoClient = 96,
}

impl ErrorCode {
    pub fn from_i32(v: i32) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => InternalError,
            2 => NoMemory,
            3 => NoSupport,
            5 => NoConnect,
            6 => InvalidConn,
            7 => InvalidDomain,
            8 => InvalidArg,
            9 => OperationFailed,
            27 => XmlError,
            28 => DomExist,
            29 => OperationDenied,
            30 => OpenFailed,
            38 => SystemError,
            39 => Rpc,
            42 => NoDomain,
            45 => AuthFailed,
            55 => OperationInvalid,
            67 => ConfigUnsupported,
            68 => OperationTimeout,
            74 => ArgumentUnsupported,
            78 => OperationAborted,
            84 => OperationUnsupported,
            86 => AgentUnresponsive,
            87 => ResourceBusy,
            88 => AccessDenied,
            92 => XmlInvalidSchema,
            95 => NoServer,
            96 => NoClient,
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
            NoConnect => "VIR_ERR_NO_CONNECT",
            InvalidConn => "VIR_ERR_INVALID_CONN",
            InvalidDomain => "VIR_ERR_INVALID_DOMAIN",
            InvalidArg => "VIR_ERR_INVALID_ARG",
            OperationFailed => "VIR_ERR_OPERATION_FAILED",
            XmlError => "VIR_ERR_XML_ERROR",
            DomExist => "VIR_ERR_DOM_EXIST",
            OperationDenied => "VIR_ERR_OPERATION_DENIED",
            OpenFailed => "VIR_ERR_OPEN_FAILED",
            SystemError => "VIR_ERR_SYSTEM_ERROR",
            Rpc => "VIR_ERR_RPC",
            NoDomain => "VIR_ERR_NO_DOMAIN",
            AuthFailed => "VIR_ERR_AUTH_FAILED",
            OperationInvalid => "VIR_ERR_OPERATION_INVALID",
            ConfigUnsupported => "VIR_ERR_CONFIG_UNSUPPORTED",
            OperationTimeout => "VIR_ERR_OPERATION_TIMEOUT",
            ArgumentUnsupported => "VIR_ERR_ARGUMENT_UNSUPPORTED",
            OperationAborted => "VIR_ERR_OPERATION_ABORTED",
            OperationUnsupported => "VIR_ERR_OPERATION_UNSUPPORTED",
            AgentUnresponsive => "VIR_ERR_AGENT_UNRESPONSIVE",
            ResourceBusy => "VIR_ERR_RESOURCE_BUSY",
            AccessDenied => "VIR_ERR_ACCESS_DENIED",
            XmlInvalidSchema => "VIR_ERR_XML_INVALID_SCHEMA",
            NoServer => "VIR_ERR_NO_SERVER",
            NoClient => "VIR_ERR_NO_CLIENT",
        }
    }
}

/// `virErrorDomain` values qemud reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorDomain {
    None = 0,
    Xml = 5,
    Rpc = 7,
    Conf = 9,
    Qemu = 10,
    Remote = 13,
    Domain = 20,
    Security = 24,
    Event = 40,
    Auth = 46,
    Access = 55,
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
                assert!(c.name().starts_with("VIR_ERR_"));
            }
        }
        assert_eq!(ErrorCode::NoDomain as i32, 42);
        assert_eq!(ErrorCode::OperationInvalid as i32, 55);
    }
}
