//! The daemon's typed errors and the one place where they become libvirt
//! error codes. Messages follow libvirt's wording, because clients such as
//! virsh print them verbatim.

use qemud_protocol::{ErrorCode, ErrorDomain, RemoteError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("Domain not found: {0}")]
    NoDomain(String),
    #[error("operation failed: {0}")]
    DomainExists(String),
    #[error("Requested operation is not valid: {0}")]
    OperationInvalid(String),
    #[error("operation failed: {0}")]
    OperationFailed(String),
    #[error("this function is not supported by the connection driver: {0}")]
    NoSupport(String),
    #[error("XML error: {0}")]
    Xml(String),
    #[error("unsupported configuration: {0}")]
    ConfigUnsupported(String),
    #[error("operation forbidden: {0}")]
    OperationDenied(String),
    #[error("invalid argument: {0}")]
    InvalidArg(String),
    #[error("unsupported flags (0x{flags:x}) in function {function}")]
    UnsupportedFlags { flags: u32, function: &'static str },
    #[error("Timed out during operation: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    System(String),
    #[error("internal error: connection not open")]
    NotOpen,
    #[error("{0}")]
    Rpc(String),
    #[error("Network not found: {0}")]
    NoNetwork(String),
    #[error("Storage pool not found: {0}")]
    NoStoragePool(String),
    #[error("Storage volume not found: {0}")]
    NoStorageVol(String),
    #[error("Node device not found: {0}")]
    NoNodeDevice(String),
    #[error("Secret not found: {0}")]
    NoSecret(String),
    #[error("Interface not found: {0}")]
    NoInterface(String),
    #[error("Network filter not found: {0}")]
    NoNwfilter(String),
    #[error("Domain snapshot not found: {0}")]
    NoDomainSnapshot(String),
    #[error("argument unsupported: {0}")]
    ArgumentUnsupported(String),
    #[error("Operation not supported: {0}")]
    OperationUnsupported(String),
    #[error("Guest agent is not responding: {0}")]
    AgentUnresponsive(String),
    #[error("resource busy: {0}")]
    ResourceBusy(String),
    #[error("operation aborted: {0}")]
    OperationAborted(String),
    /// Any other libvirt error, when a driver needs an exact code and domain;
    /// `message` is the whole text the client prints.
    #[error("{message}")]
    Other {
        code: ErrorCode,
        domain: ErrorDomain,
        message: String,
    },
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NoDomain(_) => ErrorCode::NoDomain,
            Error::DomainExists(_) => ErrorCode::OperationFailed,
            Error::OperationInvalid(_) => ErrorCode::OperationInvalid,
            Error::OperationFailed(_) => ErrorCode::OperationFailed,
            Error::NoSupport(_) => ErrorCode::NoSupport,
            Error::Xml(_) => ErrorCode::XmlError,
            Error::ConfigUnsupported(_) => ErrorCode::ConfigUnsupported,
            Error::OperationDenied(_) => ErrorCode::OperationDenied,
            Error::InvalidArg(_) => ErrorCode::InvalidArg,
            Error::UnsupportedFlags { .. } => ErrorCode::InvalidArg,
            Error::Timeout(_) => ErrorCode::OperationTimeout,
            Error::Internal(_) | Error::NotOpen => ErrorCode::InternalError,
            Error::System(_) => ErrorCode::SystemError,
            Error::Rpc(_) => ErrorCode::Rpc,
            Error::NoNetwork(_) => ErrorCode::NoNetwork,
            Error::NoStoragePool(_) => ErrorCode::NoStoragePool,
            Error::NoStorageVol(_) => ErrorCode::NoStorageVol,
            Error::NoNodeDevice(_) => ErrorCode::NoNodeDevice,
            Error::NoSecret(_) => ErrorCode::NoSecret,
            Error::NoInterface(_) => ErrorCode::NoInterface,
            Error::NoNwfilter(_) => ErrorCode::NoNwfilter,
            Error::NoDomainSnapshot(_) => ErrorCode::NoDomainSnapshot,
            Error::ArgumentUnsupported(_) => ErrorCode::ArgumentUnsupported,
            Error::OperationUnsupported(_) => ErrorCode::OperationUnsupported,
            Error::AgentUnresponsive(_) => ErrorCode::AgentUnresponsive,
            Error::ResourceBusy(_) => ErrorCode::ResourceBusy,
            Error::OperationAborted(_) => ErrorCode::OperationAborted,
            Error::Other { code, .. } => *code,
        }
    }

    fn domain(&self) -> ErrorDomain {
        match self {
            Error::NoDomain(_)
            | Error::DomainExists(_)
            | Error::OperationInvalid(_)
            | Error::OperationFailed(_)
            | Error::Timeout(_) => ErrorDomain::Qemu,
            Error::Xml(_) | Error::ConfigUnsupported(_) => ErrorDomain::Domain,
            Error::OperationDenied(_) | Error::NotOpen | Error::Rpc(_) => ErrorDomain::Remote,
            Error::NoNetwork(_) => ErrorDomain::Network,
            Error::NoStoragePool(_) | Error::NoStorageVol(_) => ErrorDomain::Storage,
            Error::NoNodeDevice(_) => ErrorDomain::Nodedev,
            Error::NoSecret(_) => ErrorDomain::Secret,
            Error::NoInterface(_) => ErrorDomain::Interface,
            Error::NoNwfilter(_) => ErrorDomain::Nwfilter,
            Error::NoDomainSnapshot(_) => ErrorDomain::DomainSnapshot,
            Error::AgentUnresponsive(_) => ErrorDomain::Qemu,
            Error::Other { domain, .. } => *domain,
            _ => ErrorDomain::Remote,
        }
    }

    /// The `remote_error` body of the reply.
    pub fn to_remote(&self) -> RemoteError {
        RemoteError::new(self.code(), self.domain(), self.to_string())
    }
}

impl From<qemud_protocol::xdr::XdrError> for Error {
    fn from(e: qemud_protocol::xdr::XdrError) -> Self {
        Error::Rpc(format!("Unable to decode message payload: {}", e.0))
    }
}

impl From<actix::MailboxError> for Error {
    fn from(e: actix::MailboxError) -> Self {
        Error::Internal(format!("daemon component unavailable: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_libvirt() {
        assert_eq!(Error::NoDomain("x".into()).code() as i32, 42);
        assert_eq!(Error::NoSupport("x".into()).code() as i32, 3);
        assert_eq!(Error::OperationInvalid("x".into()).code() as i32, 55);
        assert_eq!(Error::OperationDenied("x".into()).code() as i32, 29);
        assert_eq!(Error::ConfigUnsupported("x".into()).code() as i32, 67);
        assert_eq!(Error::Xml("x".into()).code() as i32, 27);
    }

    #[test]
    fn message_reads_like_libvirt() {
        let e = Error::NoDomain("no domain with matching name 'vm1'".into());
        assert_eq!(
            e.to_remote().message(),
            "Domain not found: no domain with matching name 'vm1'"
        );
    }
}
