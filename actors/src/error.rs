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
