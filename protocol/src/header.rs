//! The fixed 24-byte header that follows the length word of every message.

use bytes::{Buf, BufMut};

pub const HEADER_LEN: usize = 24;

/// `virNetMessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Call,
    Reply,
    Message,
    Stream,
    CallWithFds,
    ReplyWithFds,
    StreamHole,
    /// A value we do not know; kept so the caller can answer with an error.
    Unknown(i32),
}

impl MessageType {
    pub fn from_i32(v: i32) -> Self {
        match v {
            0 => Self::Call,
            1 => Self::Reply,
            2 => Self::Message,
            3 => Self::Stream,
            4 => Self::CallWithFds,
            5 => Self::ReplyWithFds,
            6 => Self::StreamHole,
            other => Self::Unknown(other),
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            Self::Call => 0,
            Self::Reply => 1,
            Self::Message => 2,
            Self::Stream => 3,
            Self::CallWithFds => 4,
            Self::ReplyWithFds => 5,
            Self::StreamHole => 6,
            Self::Unknown(v) => v,
        }
    }
}

/// `virNetMessageStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageStatus {
    Ok,
    Error,
    Continue,
    Unknown(i32),
}

impl MessageStatus {
    pub fn from_i32(v: i32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::Error,
            2 => Self::Continue,
            other => Self::Unknown(other),
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::Continue => 2,
            Self::Unknown(v) => v,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub program: u32,
    pub version: u32,
    pub procedure: i32,
    pub kind: MessageType,
    pub serial: u32,
    pub status: MessageStatus,
}

impl Header {
    /// A CALL to `procedure` of `program`.
    pub fn call(program: u32, version: u32, procedure: i32, serial: u32) -> Self {
        Header {
            program,
            version,
            procedure,
            kind: MessageType::Call,
            serial,
            status: MessageStatus::Ok,
        }
    }

    /// The REPLY header answering this call, with the given status.
    pub fn reply_to(&self, status: MessageStatus) -> Self {
        Header {
            kind: MessageType::Reply,
            status,
            ..*self
        }
    }

    /// An asynchronous MESSAGE (events, keepalive): serial 0 by convention.
    pub fn message(program: u32, version: u32, procedure: i32) -> Self {
        Header {
            program,
            version,
            procedure,
            kind: MessageType::Message,
            serial: 0,
            status: MessageStatus::Ok,
        }
    }

    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(self.program);
        out.put_u32(self.version);
        out.put_i32(self.procedure);
        out.put_i32(self.kind.as_i32());
        out.put_u32(self.serial);
        out.put_i32(self.status.as_i32());
    }

    /// Decodes a header; the caller guarantees at least `HEADER_LEN` bytes.
    pub fn decode(buf: &mut impl Buf) -> Self {
        Header {
            program: buf.get_u32(),
            version: buf.get_u32(),
            procedure: buf.get_i32(),
            kind: MessageType::from_i32(buf.get_i32()),
            serial: buf.get_u32(),
            status: MessageStatus::from_i32(buf.get_i32()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_match_libvirt_layout() {
        let h = Header::call(0x2000_8086, 1, 66, 7);
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(
            out,
            vec![
                0x20, 0x00, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 66, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0
            ]
        );
        let back = Header::decode(&mut &out[..]);
        assert_eq!(back, h);
    }

    #[test]
    fn reply_keeps_serial_and_procedure() {
        let h = Header::call(0x2000_8086, 1, 1, 42);
        let r = h.reply_to(MessageStatus::Error);
        assert_eq!(r.serial, 42);
        assert_eq!(r.procedure, 1);
        assert_eq!(r.kind, MessageType::Reply);
        assert_eq!(r.status.as_i32(), 1);
    }

    #[test]
    fn unknown_type_and_status_are_preserved() {
        assert_eq!(MessageType::from_i32(99), MessageType::Unknown(99));
        assert_eq!(MessageType::Unknown(99).as_i32(), 99);
        assert_eq!(MessageStatus::from_i32(-5).as_i32(), -5);
    }
}
