//! The KEEPALIVE program: PING and PONG, both MESSAGE packets with no body.

use bytes::Bytes;

use crate::codec::Packet;
use crate::header::Header;
use crate::program::{KEEPALIVE, KEEPALIVE_VERSION};

pub const PROC_PING: i32 = 1;
pub const PROC_PONG: i32 = 2;

pub fn ping() -> Packet {
    Packet::new(
        Header::message(KEEPALIVE, KEEPALIVE_VERSION, PROC_PING),
        Bytes::new(),
    )
}

pub fn pong() -> Packet {
    Packet::new(
        Header::message(KEEPALIVE, KEEPALIVE_VERSION, PROC_PONG),
        Bytes::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::MessageType;

    #[test]
    fn ping_and_pong_are_messages() {
        assert_eq!(ping().header.kind, MessageType::Message);
        assert_eq!(pong().header.procedure, 2);
        assert_eq!(ping().header.program, 0x6b65_6570);
        assert!(pong().body.is_empty());
    }
}
