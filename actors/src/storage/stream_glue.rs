//! The bridge between the connection's stream engine
//! ([`crate::rpc::stream`]) and volume transfers
//! ([`super::transfer::VolStream`]).

use super::transfer::{Incoming, VolStream};
use crate::error::{Error, Result};
use crate::rpc::stream::{self, Inbound, StreamIo};
use crate::rpc::Call;

impl VolStream for StreamIo {
    async fn send(&mut self, data: &[u8]) -> bool {
        StreamIo::send(self, data).await.is_ok()
    }
    async fn recv(&mut self) -> Option<Incoming> {
        Some(match StreamIo::recv(self).await? {
            Inbound::Data(d) => Incoming::Data(d),
            Inbound::Finish => Incoming::Finish,
            Inbound::Abort => Incoming::Abort,
        })
    }
    fn eof(&mut self) {
        StreamIo::eof(self)
    }
    fn finish(self) {
        StreamIo::finish(self)
    }
    fn fail(self, error: Error) {
        StreamIo::fail(self, error)
    }
}

/// Opens the data stream of the call being answered.
pub async fn open(call: &Call, _api: &str) -> Result<StreamIo> {
    stream::open(call).await
}
