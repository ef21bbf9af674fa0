//! Framing: a 4-byte big-endian length that counts itself, the 24-byte
//! header, then the XDR body. Lengths are checked before any buffer grows,
//! so a hostile length word costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::header::{Header, HEADER_LEN};
use crate::{MESSAGE_MAX, MESSAGE_MIN};

/// One framed message: its header and its still-encoded body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub header: Header,
    pub body: Bytes,
}

impl Packet {
    pub fn new(header: Header, body: impl Into<Bytes>) -> Self {
        Packet {
            header,
            body: body.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message length {0} is shorter than a header")]
    TooShort(u32),
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// tokio-util codec for libvirt RPC messages.
#[derive(Clone, Copy, Debug)]
pub struct RpcCodec {
    /// Largest accepted message excluding the length word.
    max_message: usize,
    /// Bytes still to drop: each descriptor of a *_WITH_FDS message
    /// travels on one byte of its own after the message. A reader that
    /// does not take descriptors (plain reads close them) still has to
    /// skip those bytes to find the next frame.
    fd_bytes: usize,
}

/// `VIR_NET_MESSAGE_NUM_FDS_MAX`.
pub const NUM_FDS_MAX: u32 = 32;

impl Default for RpcCodec {
    fn default() -> Self {
        RpcCodec {
            max_message: MESSAGE_MAX,
            fd_bytes: 0,
        }
    }
}

impl RpcCodec {
    /// A codec with a smaller (never larger) limit than libvirt's 16 MiB.
    pub fn with_max_message(max_message: usize) -> Self {
        RpcCodec {
            max_message: max_message.min(MESSAGE_MAX),
            fd_bytes: 0,
        }
    }

    fn check_length(&self, len: u32) -> Result<usize, CodecError> {
        let total = len as usize;
        if total < MESSAGE_MIN {
            return Err(CodecError::TooShort(len));
        }
        if total - 4 > self.max_message {
            return Err(CodecError::TooLarge {
                len,
                max: self.max_message,
            });
        }
        Ok(total)
    }
}

impl Decoder for RpcCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if self.fd_bytes > 0 {
            let n = self.fd_bytes.min(src.len());
            src.advance(n);
            self.fd_bytes -= n;
            if self.fd_bytes > 0 {
                return Ok(None);
            }
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let total = self.check_length(len)?;
        if src.len() < total {
            // Grow only to the validated size of this one message.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total);
        frame.advance(4);
        let header = Header::decode(&mut frame);
        if matches!(
            header.kind,
            crate::header::MessageType::CallWithFds | crate::header::MessageType::ReplyWithFds
        ) && frame.len() >= 4
        {
            let nfds = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            self.fd_bytes = nfds.min(NUM_FDS_MAX) as usize;
        }
        Ok(Some(Packet {
            header,
            body: frame.freeze(),
        }))
    }
}

impl Encoder<Packet> for RpcCodec {
    type Error = CodecError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = HEADER_LEN + packet.body.len();
        if payload > self.max_message {
            return Err(CodecError::TooLarge {
                len: u32::try_from(payload + 4).unwrap_or(u32::MAX),
                max: self.max_message,
            });
        }
        dst.reserve(4 + payload);
        // Fits: payload <= 16 MiB.
        dst.put_u32((4 + payload) as u32);
        packet.header.encode(dst);
        dst.extend_from_slice(&packet.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{MessageStatus, MessageType};

    fn sample() -> Packet {
        Packet::new(Header::call(0x2000_8086, 1, 66, 1), vec![0u8, 0, 0, 5])
    }

    #[test]
    fn skips_the_byte_of_each_passed_descriptor() {
        let mut c = RpcCodec::default();
        let mut h = Header::call(0x2000_8086, 1, 66, 1);
        h.kind = MessageType::CallWithFds;
        let mut buf = BytesMut::new();
        c.encode(Packet::new(h, vec![0u8, 0, 0, 2]), &mut buf)
            .unwrap();
        buf.extend_from_slice(&[0, 0]);
        c.encode(sample(), &mut buf).unwrap();
        let first = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.header.kind, MessageType::CallWithFds);
        let second = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(second.header.kind, MessageType::Call);
        assert!(buf.is_empty());
    }

    #[test]
    fn encodes_length_that_counts_itself() {
        let mut buf = BytesMut::new();
        RpcCodec::default().encode(sample(), &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 32]);
        assert_eq!(buf.len(), 32);
        assert_eq!(&buf[28..], &[0, 0, 0, 5]);
    }

    #[test]
    fn decodes_what_it_encodes() {
        let mut buf = BytesMut::new();
        let mut codec = RpcCodec::default();
        codec.encode(sample(), &mut buf).unwrap();
        codec.encode(sample(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(sample()));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(sample()));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let mut full = BytesMut::new();
        RpcCodec::default().encode(sample(), &mut full).unwrap();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(RpcCodec::default().decode(&mut part).unwrap(), None);
        }
    }

    #[test]
    fn length_shorter_than_header_is_rejected() {
        for len in [0u32, 4, 27] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            buf.extend_from_slice(&[0u8; 40]);
            assert!(matches!(
                RpcCodec::default().decode(&mut buf),
                Err(CodecError::TooShort(_))
            ));
        }
    }

    #[test]
    fn oversized_length_is_rejected_without_allocating() {
        for len in [16 * 1024 * 1024 + 5u32, u32::MAX] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let before = buf.capacity();
            assert!(matches!(
                RpcCodec::default().decode(&mut buf),
                Err(CodecError::TooLarge { .. })
            ));
            assert_eq!(buf.capacity(), before);
        }
        // Exactly the maximum is accepted (it waits for the bytes).
        let max = (16 * 1024 * 1024 + 4) as u32;
        let mut buf = BytesMut::from(&max.to_be_bytes()[..]);
        assert_eq!(RpcCodec::default().decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn smaller_configured_limit_applies() {
        let mut codec = RpcCodec::with_max_message(1024);
        let mut buf = BytesMut::from(&2000u32.to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn every_message_type_roundtrips() {
        for t in 0..7 {
            let mut h = Header::call(0x6b65_6570, 1, 1, 0);
            h.kind = MessageType::from_i32(t);
            h.status = MessageStatus::from_i32(t % 3);
            let p = Packet::new(h, Bytes::new());
            let mut buf = BytesMut::new();
            let mut codec = RpcCodec::default();
            codec.encode(p.clone(), &mut buf).unwrap();
            assert_eq!(buf.len(), 28);
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(p));
        }
    }
}
