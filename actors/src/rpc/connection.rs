//! One `Connection` actor per client. It reads framed calls, answers the
//! procedures that touch connection state itself, runs every other call as
//! its own future (so replies may leave out of order, matched by serial),
//! and forwards domain events the client subscribed to.
//!
//! Writes go through a queue to a writer task, with a byte budget per
//! client and one over all clients (see [`Budget`]): a client that stops
//! reading is no longer read from once its budget is used up, and is
//! disconnected if it stays so, instead of growing the daemon's memory or
//! holding up anyone else.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// Bytes queued for all clients together (replies and events not yet
/// written, calls read and not yet run).
static TOTAL_QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Bytes queued for all clients right now.
pub fn total_queued_bytes() -> usize {
    TOTAL_QUEUED.load(Ordering::Relaxed)
}

/// A connection whose queue peaked above this asks for freed memory to go
/// back to the system once it is gone.
const TRIM_AFTER_PEAK: usize = 1024 * 1024;

/// How long replies queued to a departed client may still take to leave.
const WRITER_GRACE: Duration = Duration::from_secs(1);

/// One client's share of the daemon's memory, shared by the connection
/// actor, its writer task and the gate in front of its reader.
///
/// The gate stops reading from the client while its queue is over its own
/// budget, while calls it sent wait for a free slot, or while the global
/// budget is used up and this client has something queued. Replies are
/// always queued (their number is bounded by the gate: no call is read that
/// could produce one beyond it), so a reply larger than the budget still
/// goes out, alone. Events are not gated by anything the client does, so
/// a client whose queue reaches twice its budget (or `max_queued_messages`
/// packets) through them is dropped at once.
struct Budget {
    /// Bytes of this client: packets queued or being written, and calls
    /// waiting for a slot.
    queued: AtomicUsize,
    /// Packets queued or being written.
    packets: AtomicUsize,
    /// Calls read and waiting for a slot.
    waiting_calls: AtomicUsize,
    /// Packets the writer finished, to tell a slow reader from a stalled one.
    written: AtomicU64,
    /// The largest `queued` seen.
    peak: AtomicUsize,
    limit: usize,
    total_limit: usize,
    max_packets: usize,
    max_waiting_calls: usize,
    /// The writer gave up (the client went away): read again, so the
    /// reader sees the end of the stream and the connection ends.
    writer_gone: AtomicBool,
    /// Woken whenever the queue shrinks or the writer gives up.
    drained: tokio::sync::Notify,
}

impl Budget {
    fn new(settings: &qemud_config::settings::Settings) -> Budget {
        Budget {
            queued: AtomicUsize::new(0),
            packets: AtomicUsize::new(0),
            waiting_calls: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            limit: settings.max_client_queue_bytes,
            total_limit: settings.max_total_queue_bytes,
            max_packets: settings.max_queued_messages.max(16),
            max_waiting_calls: settings.max_client_requests.max(1),
            writer_gone: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
        }
    }

    fn add(&self, bytes: usize) {
        let now = self.queued.fetch_add(bytes, Ordering::AcqRel) + bytes;
        TOTAL_QUEUED.fetch_add(bytes, Ordering::AcqRel);
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        TOTAL_QUEUED.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn over_own(&self) -> bool {
        self.queued() > self.limit
    }

    /// Whether the gate holds the client's next call back.
    fn closed(&self) -> bool {
        if self.writer_gone.load(Ordering::Acquire) {
            return false;
        }
        let queued = self.queued();
        queued > self.limit
            || self.packets.load(Ordering::Acquire) >= self.max_packets
            || self.waiting_calls.load(Ordering::Acquire) >= self.max_waiting_calls
            || (queued > 0 && TOTAL_QUEUED.load(Ordering::Acquire) > self.total_limit)
    }

    /// Whether an event of `bytes` may still be queued.
    fn event_fits(&self, bytes: usize) -> bool {
        let queued = self.queued();
        queued == 0
            || (queued + bytes <= self.limit.saturating_mul(2)
                && self.packets.load(Ordering::Acquire) < self.max_packets
                && TOTAL_QUEUED.load(Ordering::Acquire) + bytes
                    <= self.total_limit.saturating_mul(2))
    }

    /// Resolves once the client may be read from again.
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so no wake-up falls in between.
            drained.as_mut().enable();
            if !self.closed() {
                return;
            }
            drained.await;
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // Packets still queued when the client went are freed with it.
        TOTAL_QUEUED.fetch_sub(*self.queued.get_mut(), Ordering::AcqRel);
    }
}

fn packet_bytes(packet: &Packet) -> usize {
    packet.body.len() + 28
}

/// Hands memory freed by departed clients back to the system. glibc keeps
/// freed heap in its arenas (the issue: 1 GiB stayed after lazy clients
/// left); `malloc_trim` returns it. Runs once, a moment after the last of a
/// burst of departures.
fn schedule_trim() {
    static SCHEDULED: AtomicBool = AtomicBool::new(false);
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    actix_rt::spawn(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        SCHEDULED.store(false, Ordering::Release);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: malloc_trim only walks and shrinks the allocator's
            // own free lists; it has no preconditions.
            let released = unsafe { libc::malloc_trim(0) };
            debug!(released, "returned freed memory to the system");
        }
    });
}
/// Event callbacks one connection may hold. libvirtd has no limit; each
/// one costs the daemon memory and a match per event, so a client gets
/// an error past this many instead of growing the daemon without bound.
pub const MAX_EVENT_CALLBACKS: usize = 1024;

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
    out: mpsc::UnboundedSender<Packet>,
    /// The task writing `out` to the socket. It holds the socket (and what
    /// is queued) while a client does not read, so it is ended shortly
    /// after the connection.
    writer_task: Option<tokio::task::JoinHandle<()>>,
    budget: Arc<Budget>,
    /// Since when the client has been over its budget without reading.
    stalled_since: Option<(Instant, u64)>,
    callbacks: HashMap<i32, Callback>,
    next_callback_id: i32,
    subscribed: bool,
    in_flight: usize,
    /// Calls waiting for a free slot (see `max_client_requests`).
    waiting: VecDeque<(Header, Bytes)>,
    /// Sum of the body sizes in `waiting`.
    waiting_bytes: usize,
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
        // Counted in bytes by `Budget`, so the channel itself is unbounded.
        let (out, mut rx) = mpsc::unbounded_channel::<Packet>();
        let budget = Arc::new(Budget::new(&svc.settings));
        let writer_budget = budget.clone();
        let writer_task = actix_rt::spawn(async move {
            let budget = writer_budget;
            let mut sink = FramedWrite::new(writer, codec);
            // The packets fed to the sink that may still sit in its buffer.
            // Feeding a packet first writes out whatever the buffer held
            // beyond its small backpressure boundary, so once a feed
            // returns, the packets fed before it have left (within a few
            // KiB): the count follows the stream even when the queue never
            // runs empty.
            let mut held = (0usize, 0usize);
            let release = |held: &mut (usize, usize)| {
                let (bytes, packets) = std::mem::take(held);
                if packets > 0 {
                    budget.packets.fetch_sub(packets, Ordering::AcqRel);
                    budget.written.fetch_add(packets as u64, Ordering::AcqRel);
                    budget.sub(bytes);
                }
            };
            while let Some(packet) = rx.recv().await {
                let bytes = packet_bytes(&packet);
                let with_fds = packet.header.kind == MessageType::ReplyWithFds;
                if let Err(e) = sink.feed(packet).await {
                    debug!("client write failed: {e}");
                    break;
                }
                release(&mut held);
                held = (bytes, 1);
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
                    release(&mut held);
                }
            }
            budget.writer_gone.store(true, Ordering::Release);
            budget.drained.notify_waiters();
        });
        // The gate: the next frame is read only while the budget has room.
        let gate = budget.clone();
        let frames = futures::stream::unfold(
            (FramedRead::new(reader, codec), gate),
            |(mut frames, gate)| async move {
                gate.room().await;
                let item = futures::StreamExt::next(&mut frames).await?;
                Some((item, (frames, gate)))
            },
        );
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        Connection::create(move |ctx| {
            ctx.add_stream(frames);
            ctx.run_interval(Duration::from_secs(1), |act, ctx| act.check_stall(ctx));
            Connection {
                id,
                read_only: peer.read_only_socket,
                svc,
                peer,
                opened: false,
                out,
                writer_task: Some(writer_task),
                budget,
                stalled_since: None,
                callbacks: HashMap::new(),
                next_callback_id: 0,
                subscribed: false,
                in_flight: 0,
                waiting: VecDeque::new(),
                waiting_bytes: 0,
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

    /// Queues a reply (or a keepalive answer): always accepted, since the
    /// gate bounds how many the client can have coming.
    pub(crate) fn send(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        let bytes = packet_bytes(&packet);
        self.budget.add(bytes);
        self.budget.packets.fetch_add(1, Ordering::AcqRel);
        if self.out.send(packet).is_err() {
            ctx.stop();
        }
    }

    /// Queues an event; a client whose queue is far over its budget is
    /// not reading, and is dropped.
    fn send_event(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        if !self.budget.event_fits(packet_bytes(&packet)) {
            warn!(
                conn = self.id,
                peer = %self.peer.description,
                queued_bytes = self.budget.queued(),
                "client is not reading its messages; disconnecting it"
            );
            ctx.stop();
            return;
        }
        self.send(packet, ctx);
    }

    /// Drops a client that stayed over its budget without reading a byte
    /// for `client_stall_timeout_ms`.
    fn check_stall(&mut self, ctx: &mut Context<Self>) {
        if !self.budget.over_own() {
            self.stalled_since = None;
            return;
        }
        let written = self.budget.written.load(Ordering::Acquire);
        match self.stalled_since {
            Some((_, w)) if w != written => self.stalled_since = Some((Instant::now(), written)),
            Some((since, _)) => {
                let limit = Duration::from_millis(self.svc.settings.client_stall_timeout_ms);
                if since.elapsed() >= limit {
                    warn!(
                        conn = self.id,
                        peer = %self.peer.description,
                        queued_bytes = self.budget.queued(),
                        "client is not reading its messages; disconnecting it"
                    );
                    ctx.stop();
                }
            }
            None => self.stalled_since = Some((Instant::now(), written)),
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
            Ok(mut body) => {
                // The encoder grows its buffer by doubling; queued, the
                // slack would count for nothing yet hold up to as much
                // memory again.
                body.shrink_to_fit();
                Packet::new(call.reply_to(MessageStatus::Ok), body)
            }
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
            // Bounded by count and by bytes: a few thousand calls near
            // the 16 MiB message limit would otherwise queue gigabytes.
            let budget = self.svc.settings.max_message_bytes.saturating_mul(2);
            if self.waiting.len() >= self.svc.settings.max_queued_messages
                || self.waiting_bytes.saturating_add(body.len()) > budget
            {
                warn!(
                    conn = self.id,
                    peer = %self.peer.description,
                    queued = self.waiting.len(),
                    queued_bytes = self.waiting_bytes,
                    "client sent too many calls without waiting for replies; disconnecting it"
                );
                ctx.stop();
                return;
            }
            self.budget.add(body.len());
            self.budget.waiting_calls.fetch_add(1, Ordering::AcqRel);
            self.waiting_bytes += body.len();
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
                act.budget.waiting_calls.fetch_sub(1, Ordering::AcqRel);
                act.budget.sub(body.len());
                act.waiting_bytes -= body.len();
                act.run_call(next, body, ctx);
            }
        }));
    }

    /// Whether this connection can carry file descriptors (UNIX sockets).
    pub(crate) fn fd_passing(&self) -> bool {
        self.unix_fd.is_some()
    }

    /// Registers an event callback and returns its ID; refused past
    /// [`MAX_EVENT_CALLBACKS`], in libvirt's wording for protocol limits.
    pub(crate) fn add_callback(&mut self, cb: Callback, ctx: &mut Context<Self>) -> Result<i32> {
        if self.callbacks.len() >= MAX_EVENT_CALLBACKS {
            return Err(Error::Rpc(format!(
                "Too many event callbacks '{}' for limit '{}'",
                self.callbacks.len() + 1,
                MAX_EVENT_CALLBACKS
            )));
        }
        let id = self.next_callback_id;
        self.next_callback_id += 1;
        // Tests wait for this line to know a subscriber is in place.
        debug!(
            conn = self.id,
            callback = id,
            "event callback registered ({:?} event {})",
            cb.family,
            cb.event_id
        );
        self.callbacks.insert(id, cb);
        if !self.subscribed {
            self.subscribed = true;
            self.svc.events.do_send(Subscribe {
                connection: self.id,
                recipient: ctx.address().recipient(),
            });
        }
        Ok(id)
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
        // The last replies get a moment to leave; a client that does not
        // read them then loses them along with its socket.
        if let Some(mut writer) = self.writer_task.take() {
            let trim = self.budget.peak.load(Ordering::Relaxed) > TRIM_AFTER_PEAK;
            actix_rt::spawn(async move {
                let finished = tokio::select! {
                    _ = tokio::time::sleep(WRITER_GRACE) => false,
                    _ = &mut writer => true,
                };
                if !finished {
                    writer.abort();
                    let _ = writer.await;
                }
                if trim {
                    schedule_trim();
                }
            });
        }
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
            self.send_event(p, ctx);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The global count is shared: these tests take turns with it.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn budget(limit: usize) -> Budget {
        let settings = qemud_config::settings::Settings {
            max_client_queue_bytes: limit,
            // Other tests in this process may hold bytes in the global
            // count: keep the global limit out of the way here.
            max_total_queue_bytes: usize::MAX / 4,
            max_client_requests: 2,
            max_queued_messages: 100,
            ..Default::default()
        };
        Budget::new(&settings)
    }

    #[test]
    fn gate_closes_over_the_budget_and_opens_when_it_drains() {
        let _turn = serial();
        let b = budget(1000);
        assert!(!b.closed());
        b.add(600);
        assert!(!b.closed());
        b.add(600);
        assert!(b.closed(), "1200 bytes queued with a 1000-byte budget");
        b.sub(600);
        assert!(!b.closed());
        // Calls waiting for a slot close it too.
        b.waiting_calls.store(2, Ordering::Release);
        assert!(b.closed());
        b.waiting_calls.store(0, Ordering::Release);
        // So does a writer that is far behind in packets.
        b.packets.store(100, Ordering::Release);
        assert!(b.closed());
        b.packets.store(0, Ordering::Release);
        // ...unless the writer is gone: then reading finds the end.
        b.add(5000);
        b.writer_gone.store(true, Ordering::Release);
        assert!(!b.closed());
    }

    #[test]
    fn events_fit_up_to_twice_the_budget_and_alone_at_any_size() {
        let _turn = serial();
        let b = budget(1000);
        assert!(b.event_fits(50_000), "an empty queue takes any one packet");
        b.add(1500);
        assert!(b.event_fits(500));
        assert!(!b.event_fits(501));
        b.sub(1500);
        assert!(b.event_fits(50_000));
    }

    #[test]
    fn a_dropped_budget_gives_its_bytes_back_to_the_global_count() {
        let _turn = serial();
        let before = total_queued_bytes();
        let b = budget(1000);
        b.add(12345);
        b.sub(45);
        assert_eq!(total_queued_bytes(), before + 12300);
        drop(b);
        assert_eq!(total_queued_bytes(), before);
    }

    #[test]
    fn room_waits_for_the_queue_to_drain() {
        let _turn = serial();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let b = Arc::new(budget(100));
            b.add(500);
            let waiter = {
                let b = b.clone();
                tokio::spawn(async move { b.room().await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished());
            b.sub(500);
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .expect("joined");
        });
    }
}
