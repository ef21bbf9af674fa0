//! libvirt's data streams: the one abstraction behind consoles, screenshots
//! and volume transfers.
//!
//! A procedure that opens a stream registers it with its connection
//! ([`open`]) before replying; from then on STREAM packets on the call's
//! serial flow both ways. The rules, as libvirtd keeps them:
//!
//! - data is STREAM/CONTINUE with raw bytes; an empty CONTINUE from the
//!   daemon is end of data;
//! - the client's STREAM/OK asks to finish: the daemon confirms with an empty
//!   STREAM/OK once the local end is done (or a STREAM/ERROR);
//! - the client's STREAM/ERROR aborts: the daemon confirms with STREAM/OK;
//! - a failure on the daemon's side is a STREAM/ERROR carrying `remote_error`;
//! - packets for a serial with no stream (never opened, or already
//!   finished) are ignored.
//!
//! Nothing is sent before the call's reply: data produced earlier waits in
//! the stream's entry. Each direction has a byte budget: the daemon's end
//! waits for budget before producing more (it is given back as the
//! connection's writer puts bytes on the socket), and a client that sends
//! faster than the daemon's end consumes pauses its connection's reading, as
//! libvirtd stops reading such a client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use qemud_protocol::header::{MessageStatus, MessageType};
use qemud_protocol::{Header, Packet};

use super::connection::Connection;
use super::table::Call;
use crate::error::{Error, Result};

/// libvirtd's largest data packet (`VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX`).
pub const CHUNK: usize = 262_120;
/// Bytes one stream may have queued towards the client. A client that
/// stops reading holds up only its own stream's producer.
pub const OUT_BUDGET: usize = 4 * CHUNK;
/// Bytes a client may send ahead of what the daemon's end consumed.
pub const IN_BUDGET: usize = 4 * CHUNK;
/// How long a client's data may wait for the daemon's end before the
/// stream is aborted (its connection stops reading meanwhile).
const IN_WAIT: Duration = Duration::from_secs(30);
/// Streams open at once on one connection.
pub const MAX_STREAMS: usize = 64;

/// What the client sent on a stream.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes for the daemon's end.
    Data(Bytes),
    /// The client asked to finish; answer with [`StreamIo::finish`] or
    /// [`StreamIo::fail`] (dropping the [`StreamIo`] confirms as well).
    Finish,
    /// The client aborted; the daemon already confirmed.
    Abort,
}

/// Data the client sent, holding its part of the inbound budget until the
/// daemon's end is done with it.
struct InData {
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

enum InItem {
    Data(InData),
    Finish,
    Abort,
}

/// The daemon's end of one stream, owned by the task that produces or
/// consumes its data.
pub struct StreamIo {
    serial: u32,
    conn: Addr<Connection>,
    inbound: mpsc::UnboundedReceiver<InItem>,
    out_budget: Arc<Semaphore>,
    done: bool,
}

/// Why the daemon's end cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client finished or aborted the stream, or went away.
    Client,
}

impl StreamIo {
    /// Sends data, in packets of at most [`CHUNK`] bytes, waiting for the
    /// stream's budget.
    pub async fn send(&mut self, data: &[u8]) -> std::result::Result<(), Closed> {
        for chunk in data.chunks(CHUNK) {
            let permit = self
                .out_budget
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| Closed::Client)?;
            let body = Bytes::from_owner(Budgeted {
                data: chunk.to_vec(),
                _permit: permit,
            });
            self.conn
                .try_send(StreamOut {
                    serial: self.serial,
                    out: Out::Data(body),
                })
                .map_err(|_| Closed::Client)?;
        }
        Ok(())
    }

    /// Waits for what the client sends next; `None` once the stream is gone
    /// (client aborted, connection closed).
    pub async fn recv(&mut self) -> Option<Inbound> {
        let item = self.inbound.recv().await?;
        Some(match item {
            InItem::Data(d) => Inbound::Data(d.data),
            InItem::Finish => Inbound::Finish,
            InItem::Abort => Inbound::Abort,
        })
    }

    /// End of data from the daemon's side: an empty CONTINUE. The stream
    /// stays until the client finishes it.
    pub fn eof(&mut self) {
        let _ = self.conn.try_send(StreamOut {
            serial: self.serial,
            out: Out::Eof,
        });
    }

    /// Confirms the client's finish.
    pub fn finish(mut self) {
        self.done = true;
        let _ = self.conn.try_send(StreamOut {
            serial: self.serial,
            out: Out::FinishOk,
        });
    }

    /// Ends the stream with an error the client sees.
    pub fn fail(mut self, error: Error) {
        self.done = true;
        let _ = self.conn.try_send(StreamOut {
            serial: self.serial,
            out: Out::Error(error),
        });
    }

    /// Whether the client side is still there.
    pub fn is_open(&self) -> bool {
        self.conn.connected() && !self.out_budget.is_closed()
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.try_send(StreamOut {
                serial: self.serial,
                out: Out::Gone,
            });
        }
    }
}

/// A packet body that gives its bytes back to the stream's budget once the
/// connection's writer has encoded it.
struct Budgeted {
    data: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Registers a stream on the calling connection, for the call being
/// answered. Call it just before replying OK; if the reply turns out to be an
/// error the stream is dropped again.
pub async fn open(call: &Call) -> Result<StreamIo> {
    let (tx, rx) = mpsc::unbounded_channel();
    let out_budget = Arc::new(Semaphore::new(OUT_BUDGET));
    let header = call.header;
    call.conn
        .send(OpenStream {
            header,
            inbound: tx,
            out_budget: out_budget.clone(),
        })
        .await
        .map_err(|_| Error::Rpc("client connection closed".into()))??;
    Ok(StreamIo {
        serial: header.serial,
        conn: call.conn.clone(),
        inbound: rx,
        out_budget,
        done: false,
    })
}

/// One stream as its connection knows it.
struct Entry {
    /// The header of the call that opened it: STREAM packets reuse its
    /// program, version, procedure and serial.
    call: Header,
    replied: bool,
    /// Packets produced before the call's reply went out.
    pending: Vec<Packet>,
    inbound: mpsc::UnboundedSender<InItem>,
    in_budget: Arc<Semaphore>,
    out_budget: Arc<Semaphore>,
    eof_sent: bool,
    finish_asked: bool,
    /// The daemon's end ([`StreamIo`]) is gone.
    local_gone: bool,
    /// The final packet is in `pending`: remove the entry once replied.
    closing: bool,
}

impl Entry {
    fn packet(&self, status: MessageStatus, body: Bytes) -> Packet {
        let header = Header {
            kind: MessageType::Stream,
            status,
            ..self.call
        };
        Packet::new(header, body)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Wakes a producer waiting for budget: the stream is over.
        self.out_budget.close();
        self.in_budget.close();
    }
}

/// The streams of one connection, by serial.
#[derive(Default)]
pub struct Streams {
    map: HashMap<u32, Entry>,
}

impl Streams {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// After the reply to `serial` went out: the packets held back, or
    /// nothing when the reply was an error (the stream is then dropped).
    pub fn replied(&mut self, serial: u32, ok: bool) -> Vec<Packet> {
        let Some(e) = self.map.get_mut(&serial) else {
            return Vec::new();
        };
        if e.replied {
            return Vec::new();
        }
        if !ok {
            self.map.remove(&serial);
            return Vec::new();
        }
        e.replied = true;
        let pending = std::mem::take(&mut e.pending);
        if e.closing {
            self.map.remove(&serial);
        }
        pending
    }

    /// Every stream ends with its connection.
    pub fn close_all(&mut self) {
        self.map.clear();
    }
}

#[derive(Message)]
#[rtype(result = "Result<()>")]
struct OpenStream {
    header: Header,
    inbound: mpsc::UnboundedSender<InItem>,
    out_budget: Arc<Semaphore>,
}

impl actix::Handler<OpenStream> for Connection {
    type Result = Result<()>;

    fn handle(&mut self, msg: OpenStream, _: &mut Context<Self>) -> Result<()> {
        let serial = msg.header.serial;
        if self.streams.map.contains_key(&serial) {
            return Err(Error::Rpc(format!(
                "a stream with serial {serial} is already open"
            )));
        }
        if self.streams.map.len() >= MAX_STREAMS {
            return Err(Error::Other {
                code: qemud_protocol::error::ErrorCode::OperationFailed,
                domain: qemud_protocol::error::ErrorDomain::Streams,
                message: format!("operation failed: too many streams open on this connection (limit {MAX_STREAMS})"),
            });
        }
        self.streams.map.insert(
            serial,
            Entry {
                call: msg.header,
                replied: false,
                pending: Vec::new(),
                inbound: msg.inbound,
                in_budget: Arc::new(Semaphore::new(IN_BUDGET)),
                out_budget: msg.out_budget,
                eof_sent: false,
                finish_asked: false,
                local_gone: false,
                closing: false,
            },
        );
        Ok(())
    }
}

enum Out {
    Data(Bytes),
    Eof,
    FinishOk,
    Error(Error),
    Gone,
}

#[derive(Message)]
#[rtype(result = "()")]
struct StreamOut {
    serial: u32,
    out: Out,
}

impl actix::Handler<StreamOut> for Connection {
    type Result = ();

    fn handle(&mut self, msg: StreamOut, ctx: &mut Context<Self>) {
        let serial = msg.serial;
        let Some(e) = self.streams.map.get_mut(&serial) else {
            return;
        };
        let (packet, remove) = match msg.out {
            Out::Data(body) => {
                if e.eof_sent {
                    return;
                }
                (Some(e.packet(MessageStatus::Continue, body)), false)
            }
            Out::Eof => {
                if e.eof_sent {
                    return;
                }
                e.eof_sent = true;
                (Some(e.packet(MessageStatus::Continue, Bytes::new())), false)
            }
            Out::FinishOk => (Some(e.packet(MessageStatus::Ok, Bytes::new())), true),
            Out::Error(err) => {
                debug!(conn = self.id, serial, "stream failed: {err}");
                let body = qemud_protocol::xdr::to_bytes(&err.to_remote()).unwrap_or_default();
                (Some(e.packet(MessageStatus::Error, body.into())), true)
            }
            Out::Gone => {
                e.local_gone = true;
                if e.finish_asked {
                    (Some(e.packet(MessageStatus::Ok, Bytes::new())), true)
                } else if !e.eof_sent {
                    // The producer ended without saying so: the client
                    // sees end of data, as on a hangup in libvirtd.
                    e.eof_sent = true;
                    (Some(e.packet(MessageStatus::Continue, Bytes::new())), false)
                } else {
                    (None, false)
                }
            }
        };
        if let Some(p) = packet {
            if e.replied {
                self.send(p, ctx);
            } else {
                e.pending.push(p);
            }
        }
        if remove {
            // A stream removed before its reply went out has its final
            // packet in `pending`; keep the entry until the reply.
            match self.streams.map.get_mut(&serial) {
                Some(e) if !e.replied => e.closing = true,
                _ => {
                    self.streams.map.remove(&serial);
                }
            }
        }
    }
}

impl Connection {
    /// A STREAM packet from the client.
    pub(crate) fn on_stream_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        let h = packet.header;
        let Some(e) = self.streams.map.get_mut(&h.serial) else {
            // libvirtd drops these: data is not acknowledged, so packets may
            // still arrive after a stream ended.
            debug!(
                conn = self.id,
                serial = h.serial,
                "ignoring a stream packet for no open stream"
            );
            return;
        };
        if h.program != e.call.program || h.procedure != e.call.procedure {
            debug!(
                conn = self.id,
                serial = h.serial,
                "ignoring a stream packet of another procedure"
            );
            return;
        }
        match h.status {
            MessageStatus::Continue => {
                if packet.body.is_empty() || e.finish_asked {
                    return;
                }
                let len = packet.body.len();
                if len > IN_BUDGET {
                    self.stream_error(
                        h.serial,
                        Error::Rpc(format!("stream packet of {len} bytes is too large")),
                        ctx,
                    );
                    return;
                }
                let budget = e.in_budget.clone();
                match budget.clone().try_acquire_many_owned(len as u32) {
                    Ok(permit) => {
                        let _ = e.inbound.send(InItem::Data(InData {
                            data: packet.body,
                            _permit: permit,
                        }));
                    }
                    Err(_) => {
                        // The daemon's end is behind: stop reading this
                        // client until it catches up, as libvirtd does.
                        let serial = h.serial;
                        let body = packet.body;
                        let wait =
                            tokio::time::timeout(IN_WAIT, budget.acquire_many_owned(len as u32));
                        ctx.wait(wait.into_actor(self).map(move |res, act, ctx| {
                            let Some(e) = act.streams.map.get(&serial) else {
                                return;
                            };
                            match res {
                                Ok(Ok(permit)) => {
                                    let _ = e.inbound.send(InItem::Data(InData {
                                        data: body,
                                        _permit: permit,
                                    }));
                                }
                                Ok(Err(_)) => {}
                                Err(_) => {
                                    warn!(
                                        conn = act.id,
                                        serial, "stream consumer stalled; aborting the stream"
                                    );
                                    act.stream_error(
                                        serial,
                                        Error::Rpc("stream consumer stalled".into()),
                                        ctx,
                                    );
                                }
                            }
                        }));
                    }
                }
            }
            MessageStatus::Ok => {
                if e.finish_asked {
                    return;
                }
                e.finish_asked = true;
                if e.local_gone || e.inbound.send(InItem::Finish).is_err() {
                    let p = e.packet(MessageStatus::Ok, Bytes::new());
                    self.streams.map.remove(&h.serial);
                    self.send(p, ctx);
                }
            }
            MessageStatus::Unknown(status) => {
                self.stream_error(
                    h.serial,
                    Error::Rpc(format!("stream aborted with unexpected status {status}")),
                    ctx,
                );
            }
            MessageStatus::Error => {
                debug!(
                    conn = self.id,
                    serial = h.serial,
                    "stream aborted at client request"
                );
                let _ = e.inbound.send(InItem::Abort);
                let p = e.packet(MessageStatus::Ok, Bytes::new());
                self.streams.map.remove(&h.serial);
                self.send(p, ctx);
            }
        }
    }

    fn stream_error(&mut self, serial: u32, err: Error, ctx: &mut Context<Self>) {
        let Some(e) = self.streams.map.remove(&serial) else {
            return;
        };
        let body = qemud_protocol::xdr::to_bytes(&err.to_remote()).unwrap_or_default();
        let p = e.packet(MessageStatus::Error, body.into());
        let _ = e.inbound.send(InItem::Abort);
        self.send(p, ctx);
    }
}
