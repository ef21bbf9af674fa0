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
use uuid::Uuid;

use qemud_protocol::header::{MessageStatus, MessageType};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{OptString, XdrVec};
use qemud_protocol::{keepalive, program, CodecError, Header, Packet, RpcCodec};

use crate::dispatch::{self, decode, encode};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Subscribe, Unsubscribe};
use crate::procedures;
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
struct Callback {
    event_id: i32,
    domain: Option<Uuid>,
    /// Registered through the legacy (non-callback) procedures.
    legacy: bool,
}

pub struct Connection {
    id: u64,
    svc: Arc<Services>,
    peer: PeerInfo,
    read_only: bool,
    opened: bool,
    out: mpsc::Sender<Packet>,
    callbacks: HashMap<i32, Callback>,
    next_callback_id: i32,
    subscribed: bool,
    in_flight: usize,
    /// Calls waiting for a free slot (see `max_client_requests`).
    waiting: VecDeque<(Header, Bytes)>,
    last_heard: Instant,
    pings_unanswered: u32,
}

impl Connection {
    /// Starts the actor for an accepted stream.
    pub fn start<S>(stream: S, svc: Arc<Services>, peer: PeerInfo) -> Addr<Connection>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let codec = RpcCodec::with_max_message(svc.settings.max_message_bytes);
        let (reader, writer) = tokio::io::split(stream);
        let (out, mut rx) = mpsc::channel::<Packet>(svc.settings.max_queued_messages.max(16));
        actix_rt::spawn(async move {
            let mut sink = FramedWrite::new(writer, codec);
            while let Some(packet) = rx.recv().await {
                if let Err(e) = sink.feed(packet).await {
                    debug!("client write failed: {e}");
                    break;
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
                last_heard: Instant::now(),
                pings_unanswered: 0,
            }
        })
    }

    /// Queues a packet; a client whose queue is full is dropped.
    fn send(&mut self, packet: Packet, ctx: &mut Context<Self>) {
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
        let packet = match result {
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
                if h.program != program::REMOTE {
                    let e = Error::Rpc(format!(
                        "cannot find program {:#x} version {}",
                        h.program, h.version
                    ));
                    return self.reply(h, Err(e), ctx);
                }
                if h.version != program::REMOTE_VERSION {
                    let e = Error::Rpc(format!(
                        "program {:#x} version {} is not supported",
                        h.program, h.version
                    ));
                    return self.reply(h, Err(e), ctx);
                }
                self.on_call(h, packet.body, ctx);
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
        let Some(info) = procedures::info(h.procedure) else {
            let e = Error::NoSupport(format!("unknown procedure: {}", h.procedure));
            return self.reply(h, Err(e), ctx);
        };
        if !self.opened && !info.before_open {
            return self.reply(h, Err(Error::NotOpen), ctx);
        }
        if info.writes && self.read_only {
            let e = Error::OperationDenied(format!("read only access prevents {}", info.name));
            return self.reply(h, Err(e), ctx);
        }
        if let Some(result) = self.connection_call(h.procedure, &body, ctx) {
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

    fn run_call(&mut self, h: Header, body: Bytes, ctx: &mut Context<Self>) {
        self.in_flight += 1;
        let fut = dispatch::call(self.svc.clone(), h.procedure, body);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.in_flight -= 1;
            act.reply(h, result, ctx);
            if let Some((next, body)) = act.waiting.pop_front() {
                act.run_call(next, body, ctx);
            }
        }));
    }

    /// Procedures that read or change this connection's own state. `None`
    /// means the call is not one of them.
    fn connection_call(
        &mut self,
        procedure: i32,
        body: &[u8],
        ctx: &mut Context<Self>,
    ) -> Option<Result<Vec<u8>>> {
        Some(match procedure {
            AUTH_LIST => encode(&AuthListRet {
                types: XdrVec(vec![AUTH_NONE]),
            }),
            CONNECT_OPEN => self.open(body),
            CONNECT_CLOSE => {
                self.opened = false;
                self.drop_callbacks(ctx);
                Ok(Vec::new())
            }
            CONNECT_GET_URI => encode(&GetUriRet {
                uri: self.svc.uri.clone().into(),
            }),
            CONNECT_IS_SECURE => encode(&IsSecureRet {
                secure: self.peer.secure as i32,
            }),
            CONNECT_SUPPORTS_FEATURE => decode::<SupportsFeatureArgs>(body).and_then(|a| {
                // Only what is implemented: keepalive, server-side event
                // callbacks and close-callback registration.
                let supported = matches!(
                    a.feature,
                    feature::PROGRAM_KEEPALIVE
                        | feature::REMOTE_EVENT_CALLBACK
                        | feature::REMOTE_CLOSE_CALLBACK
                );
                encode(&SupportsFeatureRet {
                    supported: supported as i32,
                })
            }),
            CONNECT_REGISTER_CLOSE_CALLBACK | CONNECT_UNREGISTER_CLOSE_CALLBACK => Ok(Vec::new()),
            CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY => {
                decode::<ConnectDomainEventCallbackRegisterAnyArgs>(body).and_then(|a| {
                    if !(0..event_id::LAST).contains(&a.event_id) {
                        return Err(Error::InvalidArg(format!(
                            "unsupported event ID {}",
                            a.event_id
                        )));
                    }
                    let domain = a.dom.as_ref().map(|d| Uuid::from_bytes(d.uuid.0));
                    let id = self.add_callback(a.event_id, domain, false, ctx);
                    encode(&ConnectDomainEventCallbackRegisterAnyRet { callback_id: id })
                })
            }
            CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY => decode::<
                ConnectDomainEventCallbackDeregisterAnyArgs,
            >(body)
            .and_then(|a| match self.callbacks.remove(&a.callback_id) {
                Some(_) => {
                    self.maybe_unsubscribe(ctx);
                    Ok(Vec::new())
                }
                None => Err(Error::InvalidArg(format!(
                    "callback ID {} not registered",
                    a.callback_id
                ))),
            }),
            CONNECT_DOMAIN_EVENT_REGISTER_ANY => decode::<ConnectDomainEventRegisterAnyArgs>(body)
                .and_then(|a| {
                    if !(0..event_id::LAST).contains(&a.event_id) {
                        return Err(Error::InvalidArg(format!(
                            "unsupported event ID {}",
                            a.event_id
                        )));
                    }
                    self.add_callback(a.event_id, None, true, ctx);
                    Ok(Vec::new())
                }),
            CONNECT_DOMAIN_EVENT_DEREGISTER_ANY => {
                decode::<ConnectDomainEventRegisterAnyArgs>(body).map(|a| {
                    self.callbacks
                        .retain(|_, c| !(c.legacy && c.event_id == a.event_id));
                    self.maybe_unsubscribe(ctx);
                    Vec::new()
                })
            }
            CONNECT_DOMAIN_EVENT_REGISTER => {
                self.add_callback(event_id::LIFECYCLE, None, true, ctx);
                encode(&ConnectDomainEventRegisterRet { cb_registered: 1 })
            }
            CONNECT_DOMAIN_EVENT_DEREGISTER => {
                self.callbacks
                    .retain(|_, c| !(c.legacy && c.event_id == event_id::LIFECYCLE));
                self.maybe_unsubscribe(ctx);
                encode(&ConnectDomainEventRegisterRet { cb_registered: 0 })
            }
            _ => return None,
        })
    }

    fn open(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        if self.opened {
            return Err(Error::Internal("connection already open".into()));
        }
        let args: ConnectOpenArgs = decode(body)?;
        let name: OptString = args.name;
        if let Some(name) = name.as_ref().map(|n| n.as_str()).filter(|n| !n.is_empty()) {
            // Only the QEMU driver lives here; other drivers are refused the
            // way libvirtd refuses a URI no driver accepts.
            let ok = name.starts_with("qemu:") || name.starts_with("qemu+");
            if !ok {
                return Err(Error::Rpc(format!(
                    "no connection driver available for {name}"
                )));
            }
        }
        if args.flags & CONNECT_RO != 0 {
            self.read_only = true;
        }
        self.opened = true;
        info!(
            conn = self.id,
            peer = %self.peer.description,
            read_only = self.read_only,
            "client opened connection"
        );
        Ok(Vec::new())
    }

    fn add_callback(
        &mut self,
        event_id: i32,
        domain: Option<Uuid>,
        legacy: bool,
        ctx: &mut Context<Self>,
    ) -> i32 {
        let id = self.next_callback_id;
        self.next_callback_id += 1;
        self.callbacks.insert(
            id,
            Callback {
                event_id,
                domain,
                legacy,
            },
        );
        if !self.subscribed {
            self.subscribed = true;
            self.svc.events.do_send(Subscribe {
                connection: self.id,
                recipient: ctx.address().recipient(),
            });
        }
        id
    }

    fn maybe_unsubscribe(&mut self, _ctx: &mut Context<Self>) {
        if self.subscribed && self.callbacks.is_empty() {
            self.subscribed = false;
            self.svc.events.do_send(Unsubscribe {
                connection: self.id,
            });
        }
    }

    fn drop_callbacks(&mut self, ctx: &mut Context<Self>) {
        self.callbacks.clear();
        self.maybe_unsubscribe(ctx);
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

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(conn = self.id, peer = %self.peer.description, "client connected");
        if self.svc.settings.keepalive_interval > 0 {
            ctx.run_interval(Duration::from_secs(1), |act, ctx| act.check_keepalive(ctx));
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
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

impl Handler<DomainEvent> for Connection {
    type Result = ();

    fn handle(&mut self, event: DomainEvent, ctx: &mut Self::Context) {
        let mut packets = Vec::new();
        for (id, cb) in &self.callbacks {
            if cb.event_id != event.event_id() {
                continue;
            }
            if cb.domain.is_some_and(|d| d != event.uuid()) {
                continue;
            }
            let packet = if cb.legacy {
                event.legacy_packet()
            } else {
                event.callback_packet(*id)
            };
            match packet {
                Ok(p) => packets.push(p),
                Err(e) => warn!("cannot encode event: {e}"),
            }
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
