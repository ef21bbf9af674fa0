//! The libvirt remote protocol as qemud speaks it: the framing codec, the
//! message header, the XDR types of the procedures we implement, libvirt's
//! error numbers and connection URIs. No I/O happens here besides the codec,
//! so the daemon, the client and the fuzz targets share one definition of the
//! wire.

pub mod codec;
pub mod error;
pub mod header;
pub mod keepalive;
pub mod procinfo;
pub mod qemu;
pub mod remote;
pub mod typed_params;
pub mod uri;
pub mod xdr;

pub use codec::{CodecError, Packet, RpcCodec};
pub use error::{ErrorCode, ErrorDomain, RemoteError};
pub use header::{Header, MessageStatus, MessageType};

/// Largest message, excluding the 4-byte length word (`VIR_NET_MESSAGE_MAX`).
pub const MESSAGE_MAX: usize = 16 * 1024 * 1024;
/// Length word plus header: the smallest well-formed message.
pub const MESSAGE_MIN: usize = 4 + header::HEADER_LEN;
/// Longest string any procedure may carry (`REMOTE_STRING_MAX`).
pub const STRING_MAX: usize = 4 * 1024 * 1024;

/// libvirt program numbers.
pub mod program {
    pub const REMOTE: u32 = 0x2000_8086;
    pub const REMOTE_VERSION: u32 = 1;
    pub const QEMU: u32 = 0x2000_8087;
    pub const QEMU_VERSION: u32 = 1;
    pub const KEEPALIVE: u32 = 0x6b65_6570;
    pub const KEEPALIVE_VERSION: u32 = 1;
}
