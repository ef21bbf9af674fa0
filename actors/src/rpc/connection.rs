//! One `Connection` actor per client. It reads framed calls, answers the
//! procedures that touch connection state itself, runs every other call as
//! its own future (so replies may leave out of order, matched by serial),
//! and forwards domain events the client subscribed to.
//!
//! Writes go through a bounded queue to a writer task: a client that stops
//! reading fills its queue and is disconnected, instead of growing the
//! daemon's memory or holding up anyone else.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use qemud_protocol::header::{MessageStatus, MessageType};
use qemud_protocol::procinfo::ReadOnly;
use qemud_protocol::{keepalive, program, CodecError, Header, Packet, RpcCodec};

use super::table::{self, Access, Call, Handler, TABLE};
use super::wire::encode;
use crate::error::{Error, Result};
use crate::events::{Event, Family, ObjectKey, Subscribe, Unsubscribe};
use crate::Services;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// One of the daemon's `max_clients` places, held by a connection for its
/// whole life and given back when the connection actor is dropped.
#[derive(Debug)]
pub struct ClientSlot(Arc<std::sync::atomic::AtomicUsize>);

impl ClientSlot {
    /// Takes a place if fewer than `max` are taken.
    pub fn try_take(
        counter: &Arc<std::sync::atomic::AtomicUsize>,
        max: usize,
    ) -> Option<ClientSlot> {
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ClientSlot(counter.clone())),
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Who is on the other end, as the listener found out.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// e.g. "unix pid=123 uid=0" or "tls 10.0.0.1:5555 CN=client".
    pub description: String,
    /// Accepted on the read-only socket.
    pub read_only_socket: bool,
    /// The transport is encrypted or local (`virConnectIsSecure`).
    pub secure: bool,
    /// The `max_clients` place this connection holds.
    pub slot: Option<Arc<ClientSlot>>,
}

/// One registered event callback.
#[derive(Clone, Debug)]
pub struct Callback {
    pub family: Family,
    pub event_id: i32,
    /// Only events about this object, when set.
    pub object: Option<ObjectKey>,
    /// Registered through the legacy domain procedures (no callback ID).
    pub legacy: bool,
    /// QEMU monitor events: only those of this name.
    pub qemu_event: Option<crate::qemu_program::EventFilter>,
}

impl Callback {
    pub fn new(family: Family, event_id: i32, object: Option<ObjectKey>) -> Callback {
        Callback {
            family,
            event_id,
            object,
            legacy: false,
            qemu_event: None,
        }
    }

    /// A domain callback registered through the legacy procedures.
    pub fn legacy(event_id: i32) -> Callback {
        Callback {
            family: Family::Domain,
            event_id,
            object: None,
            legacy: true,
            qemu_event: None,
        }
    }

    fn matches(&self, event: &Event) -> bool {
        self.family == event.family
            && self.event_id == event.event_id
            && self.object.as_ref().is_none_or(|o| *o == event.object)
            && self
                .qemu_event
                .as_ref()
                .is_none_or(|f| f.matches(event.name.as_deref()))
    }
}

pub struct Connection {
    pub(crate) id: u64,
    pub(crate) svc: Arc<Services>,
    pub(crate) peer: PeerInfo,
    pub(crate) read_only: bool,
    pub(crate) opened: bool,
    out: mpsc::Sender<Packet>,
    callbacks: HashMap<i32, Callback>,
    next_callback_id: i32,
    subscribed: bool,
    in_flight: usize,
    /// Calls waiting for a free slot (see `max_client_requests`).
    waiting: VecDeque<(Header, Bytes)>,
    /// The client asked for keepalive (CONNECT_SUPPORTS_FEATURE); only then
    /// does the daemon ping it and drop it for silence, as libvirtd does.
    keepalive: bool,
    last_heard: Instant,
    pings_unanswered: u32,
    /// Open data streams, by the serial of the call that opened them.
    pub(crate) streams: super::stream::Streams,
    /// The socket, when it is a UNIX one and so can pass descriptors.
    unix_fd: Option<std::os::fd::RawFd>,
    /// Descriptors to send with the reply to a call, by serial.
    pub(crate) reply_fds: HashMap<u32, Vec<std::os::fd::OwnedFd>>,
    fd_queue: super::fdpass::FdQueue,
}

impl Connection {
    /// Starts the actor for an accepted stream.
    pub fn start<S>(stream: S, svc: Arc<Services>, peer: PeerInfo) -> Addr<Connection>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let codec = RpcCodec::with_max_message(svc.settings.max_message_bytes);
        let unix_fd = (&stream as &dyn std::any::Any)
            .downcast_ref::<tokio::net::UnixStream>()
            .map(std::os::fd::AsRawFd::as_raw_fd);
        let fd_queue = super::fdpass::FdQueue::default();
        let writer_fds = fd_queue.clone();
        let (reader, writer) = tokio::io::split(stream);
        let (out, mut rx) = mpsc::channel::<Packet>(svc.settings.max_queued_messages.max(16));
        actix_rt::spawn(async move {
            let mut sink = FramedWrite::new(writer, codec);
            while let Some(packet) = rx.recv().await {
                let with_fds = packet.header.kind == MessageType::ReplyWithFds;
                if let Err(e) = sink.feed(packet).await {
                    debug!("client write failed: {e}");
                    break;
                }
                // The descriptors follow their message on the socket.
                if let (true, Some(sock)) = (with_fds, unix_fd) {
                    let sent = match sink.flush().await {
                        Ok(()) => super::fdpass::send_fds(sock, writer_fds.pop()).await,
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    if let Err(e) = sent {
                        debug!("sending descriptors failed: {e}");
                        break;
                    }
                }
                // Batch what is already queued into one flush.
                if rx.is_empty() {
                    if let Err(e) = sink.flush().await {
                        debug!("client flush failed: {e}");
                        break;
                    }
                }
            }
        });
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        Connection::create(move |ctx| {
            ctx.add_stream(FramedRead::new(reader, codec));
            Connection {
                id,
                read_only: peer.read_only_socket,
                svc,
                peer,
                opened: false,
                out,
                callbacks: HashMap::new(),
                next_callback_id: 0,
                subscribed: false,
                in_flight: 0,
                waiting: VecDeque::new(),
                keepalive: false,
                last_heard: Instant::now(),
                pings_unanswered: 0,
                streams: Default::default(),
                unix_fd,
                reply_fds: HashMap::new(),
                fd_queue,
            }
        })
    }

    /// Queues a packet; a client whose queue is full is dropped.
    pub(crate) fn send(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        match self.out.try_send(packet) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(
                    conn = self.id,
                    peer = %self.peer.description,
                    "client is not reading its messages; disconnecting it"
                );
                ctx.stop();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
        }
    }

    fn reply(&mut self, call: Header, result: Result<Vec<u8>>, ctx: &mut Context<Self>) {
        let ok = result.is_ok();
        let fds = self.reply_fds.remove(&call.serial).filter(|_| ok);
        let packet = match result {
            Ok(body) if fds.is_some() => {
                // REPLY_WITH_FDS: the number of descriptors, then the body.
                let fds = fds.unwrap_or_default();
                let mut with_count = (fds.len() as u32).to_be_bytes().to_vec();
                with_count.extend_from_slice(&body);
                self.fd_queue.push(fds);
                let mut header = call.reply_to(MessageStatus::Ok);
                header.kind = MessageType::ReplyWithFds;
                Packet::new(header, with_count)
            }
            Ok(body) => Packet::new(call.reply_to(MessageStatus::Ok), body),
            Err(e) => {
                debug!(
                    conn = self.id,
                    procedure = call.procedure,
                    "call failed: {e}"
                );
                let body = qemud_protocol::xdr::to_bytes(&e.to_remote()).unwrap_or_default();
                Packet::new(call.reply_to(MessageStatus::Error), body)
            }
        };
        self.send(packet, ctx);
        // A stream's data may only follow its call's reply.
        for p in self.streams.replied(call.serial, ok) {
            self.send(p, ctx);
        }
    }

    fn on_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        self.pings_unanswered = 0;
        let h = packet.header;
        match (h.program, h.kind) {
            (program::KEEPALIVE, MessageType::Message) => {
                if h.procedure == keepalive::PROC_PING {
                    self.send(keepalive::pong(), ctx);
                }
            }
            (_, MessageType::Call) | (_, MessageType::CallWithFds) => {
                let version = match h.program {
                    program::REMOTE => Some(program::REMOTE_VERSION),
                    program::QEMU => Some(program::QEMU_VERSION),
                    _ => None,
                };
                if version != Some(h.version) {
                    let e = Error::Rpc(format!(
                        "Cannot find program {} version {}",
                        h.program as i32, h.version
                    ));
                    return self.reply(h, Err(e), ctx);
                }
                let mut body = packet.body;
                if h.kind == MessageType::CallWithFds {
                    // Drop the descriptor count. The descriptors rode on
                    // bytes the codec skips, and plain reads discard them:
                    // no procedure qemud serves takes any.
                    body = body.slice(body.len().min(4)..);
                }
                self.on_call(h, body, ctx);
            }
            (program::REMOTE | program::QEMU, MessageType::Stream) => {
                self.on_stream_packet(packet, ctx);
            }
            (program, kind) => {
                debug!(
                    conn = self.id,
                    program,
                    ?kind,
                    "ignoring unexpected message"
                );
            }
        }
    }

    fn on_call(&mut self, h: Header, body: Bytes, ctx: &mut Context<Self>) {
        let Some(facts) = table::facts(h.program, h.procedure) else {
            let e = Error::Rpc(format!("unknown procedure: {}", h.procedure));
            return self.reply(h, Err(e), ctx);
        };
        let row = TABLE.get(h.program, h.procedure);
        let access = row.map(|r| r.access);
        if !self.opened && access != Some(Access::BeforeOpen) {
            return self.reply(h, Err(Error::NotOpen), ctx);
        }
        let writes = match access {
            Some(a) => a == Access::Write,
            None => facts.read_only == ReadOnly::Always,
        };
        if writes && self.read_only {
            let e = Error::OperationDenied(format!("read only access prevents {}", facts.api));
            return self.reply(h, Err(e), ctx);
        }
        let Some(row) = row else {
            // A libvirt procedure qemud does not implement: libvirt's answer
            // from a driver without it.
            return self.reply(h, Err(Error::NoSupport(facts.api.to_string())), ctx);
        };
        if let Handler::Connection(handler) = row.handler {
            let call = self.call_for(h, body, ctx);
            let result = handler(self, ctx, call);
            return self.reply(h, result, ctx);
        }
        // Like libvirtd's max_client_requests: at most that many calls of
        // one client run at once; later ones wait their turn in order.
        if self.in_flight >= self.svc.settings.max_client_requests.max(1) {
            if self.waiting.len() >= self.svc.settings.max_queued_messages {
                warn!(
                    conn = self.id,
                    peer = %self.peer.description,
                    "client sent too many calls without waiting for replies; disconnecting it"
                );
                ctx.stop();
                return;
            }
            self.waiting.push_back((h, body));
            return;
        }
        self.run_call(h, body, ctx);
    }

    fn call_for(&self, header: Header, body: Bytes, ctx: &mut Context<Self>) -> Call {
        Call {
            svc: self.svc.clone(),
            header,
            body,
            read_only: self.read_only,
            conn: ctx.address(),
            conn_id: self.id,
        }
    }

    fn run_call(&mut self, h: Header, body: Bytes, ctx: &mut Context<Self>) {
        let Some(Handler::Async(handler)) = TABLE.get(h.program, h.procedure).map(|r| r.handler)
        else {
            return;
        };
        self.in_flight += 1;
        let fut = handler(self.call_for(h, body, ctx));
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.in_flight -= 1;
            act.reply(h, result, ctx);
            if let Some((next, body)) = act.waiting.pop_front() {
                act.run_call(next, body, ctx);
            }
        }));
    }

    /// Whether this connection can carry file descriptors (UNIX sockets).
    pub(crate) fn fd_passing(&self) -> bool {
        self.unix_fd.is_some()
    }

    /// Registers an event callback and returns its ID.
    pub(crate) fn add_callback(&mut self, cb: Callback, ctx: &mut Context<Self>) -> i32 {
        let id = self.next_callback_id;
        self.next_callback_id += 1;
        self.callbacks.insert(id, cb);
        if !self.subscribed {
            self.subscribed = true;
            self.svc.events.do_send(Subscribe {
                connection: self.id,
                recipient: ctx.address().recipient(),
            });
        }
        id
    }

    /// Removes a callback of one family by ID, with libvirt's error when it
    /// is not registered (`what`: "domain event", "network event", ...).
    pub(crate) fn remove_callback(&mut self, family: Family, id: i32, what: &str) -> Result<()> {
        match self.callbacks.get(&id) {
            Some(cb) if cb.family == family && !cb.legacy => {
                self.callbacks.remove(&id);
                self.maybe_unsubscribe();
                Ok(())
            }
            _ => Err(Error::Internal(format!(
                "{what} callback {id} not registered"
            ))),
        }
    }

    /// Removes the legacy domain callbacks for one event ID.
    pub(crate) fn remove_legacy(&mut self, event_id: i32) -> Result<()> {
        let before = self.callbacks.len();
        self.callbacks
            .retain(|_, c| !(c.legacy && c.event_id == event_id));
        if self.callbacks.len() == before {
            return Err(Error::Internal(format!(
                "domain event {event_id} not registered"
            )));
        }
        self.maybe_unsubscribe();
        Ok(())
    }

    fn maybe_unsubscribe(&mut self) {
        if self.subscribed && self.callbacks.is_empty() {
            self.subscribed = false;
            self.svc.events.do_send(Unsubscribe {
                connection: self.id,
            });
        }
    }

    pub(crate) fn drop_callbacks(&mut self) {
        self.callbacks.clear();
        self.maybe_unsubscribe();
    }

    /// Starts pinging this client, once it asked for keepalive.
    pub(crate) fn start_keepalive(&mut self, ctx: &mut Context<Self>) {
        if self.keepalive || self.svc.settings.keepalive_interval <= 0 {
            return;
        }
        self.keepalive = true;
        self.last_heard = Instant::now();
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.check_keepalive(ctx));
    }

    fn check_keepalive(&mut self, ctx: &mut Context<Self>) {
        let interval = self.svc.settings.keepalive_interval;
        if interval <= 0 {
            return;
        }
        let interval = Duration::from_secs(interval as u64);
        if self.last_heard.elapsed() < interval {
            return;
        }
        if self.pings_unanswered >= self.svc.settings.keepalive_count {
            warn!(
                conn = self.id,
                peer = %self.peer.description,
                "client stopped answering keepalives; disconnecting it"
            );
            ctx.stop();
            return;
        }
        self.pings_unanswered += 1;
        self.last_heard = Instant::now();
        self.send(keepalive::ping(), ctx);
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        info!(conn = self.id, peer = %self.peer.description, "client connected");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.streams.close_all();
        if self.subscribed {
            self.svc.events.do_send(Unsubscribe {
                connection: self.id,
            });
        }
        info!(conn = self.id, peer = %self.peer.description, "client disconnected");
    }
}

impl StreamHandler<std::result::Result<Packet, CodecError>> for Connection {
    fn handle(&mut self, item: std::result::Result<Packet, CodecError>, ctx: &mut Self::Context) {
        match item {
            Ok(packet) => self.on_packet(packet, ctx),
            Err(e) => {
                // A broken frame leaves no way to find the next one.
                warn!(conn = self.id, peer = %self.peer.description, "closing connection: {e}");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl actix::Handler<Event> for Connection {
    type Result = ();

    fn handle(&mut self, event: Event, ctx: &mut Self::Context) {
        let mut packets = Vec::new();
        for (id, cb) in &self.callbacks {
            if !cb.matches(&event) {
                continue;
            }
            let packet = if cb.legacy {
                event.legacy_packet()
            } else {
                Some(event.callback_packet(*id))
            };
            packets.extend(packet);
        }
        for p in packets {
            self.send(p, ctx);
        }
    }
}

/// Makes a MESSAGE packet of the REMOTE program.
pub fn event_packet<T: serde::Serialize>(procedure: i32, body: &T) -> Result<Packet> {
    Ok(Packet::new(
        Header::message(program::REMOTE, program::REMOTE_VERSION, procedure),
        encode(body)?,
    ))
}
