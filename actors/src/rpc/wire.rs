//! Decoding of call bodies and encoding of reply bodies, with the daemon's
//! error type.

use serde::de::DeserializeOwned;
use serde::Serialize;

use qemud_protocol::xdr;

use crate::error::{Error, Result};

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    Ok(xdr::from_bytes(body)?)
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    xdr::to_bytes(value).map_err(|e| Error::Internal(format!("cannot encode reply: {}", e.0)))
}

/// Refuses flags a procedure does not know, with libvirt's message.
pub fn check_flags(flags: u32, known: u32, function: &'static str) -> Result<()> {
    if flags & !known != 0 {
        return Err(Error::UnsupportedFlags { flags, function });
    }
    Ok(())
}
