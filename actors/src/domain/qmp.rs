//! A QMP client: one task owns the monitor socket, matches replies to
//! requests by id and forwards asynchronous events. Every request has a
//! deadline, so a QEMU that stops answering fails only its own calls.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, trace, warn};

/// Longest monitor line we accept; QMP replies we use are far smaller.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Events queued between the monitor and the VM's watcher. A guest can
/// make QEMU emit events as fast as it likes (RTC writes, I/O errors), so
/// the queue is bounded; see [`forward_event`] for what happens when full.
pub const EVENT_QUEUE: usize = 256;

/// Events that change what the daemon believes about the VM's state.
/// Never dropped: when the queue is full the monitor reader waits for room.
const STATE_EVENTS: &[&str] = &[
    "SHUTDOWN",
    "POWERDOWN",
    "RESET",
    "STOP",
    "RESUME",
    "SUSPEND",
    "WAKEUP",
    "GUEST_PANICKED",
    "DEVICE_DELETED",
];

#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QEMU monitor: {0}")]
    Connect(String),
    #[error("QEMU monitor closed")]
    Closed,
    #[error("QEMU did not answer '{0}' in time")]
    Timeout(String),
    #[error("QEMU reported an error for '{command}': {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("malformed monitor message: {0}")]
    Protocol(String),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

type Reply = oneshot::Sender<Result<Value, QmpError>>;

struct Request {
    command: String,
    arguments: Option<Value>,
    reply: Reply,
    /// A file descriptor sent along with the command (SCM_RIGHTS), as
    /// `getfd` expects.
    fd: Option<std::os::fd::OwnedFd>,
}

/// A handle for issuing QMP commands; cheap to clone.
#[derive(Clone)]
pub struct QmpClient {
    requests: mpsc::Sender<Request>,
    deadline: Duration,
}

impl QmpClient {
    /// Connects to a monitor socket, retrying until `deadline` while QEMU
    /// creates it, and negotiates capabilities. Events arrive on the
    /// returned receiver, which closes when the monitor does.
    pub async fn connect(
        path: &Path,
        deadline: Duration,
    ) -> Result<(QmpClient, mpsc::Receiver<QmpEvent>), QmpError> {
        let until = Instant::now() + deadline;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= until => {
                    return Err(QmpError::Connect(format!("{}: {e}", path.display())))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (read, mut write) = stream.into_split();
        let mut lines = FramedRead::new(read, QmpLines::new(MAX_LINE));

        // Greeting, then capabilities negotiation, both under the deadline.
        let remaining = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let greeting = timeout(remaining, next_message(&mut lines))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        write
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await
            .map_err(|_| QmpError::Closed)?;
        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let mut dropped = 0;
        loop {
            let msg = timeout(remaining, next_message(&mut lines))
                .await
                .map_err(|_| QmpError::Timeout("qmp_capabilities".into()))??;
            if msg.get("return").is_some() {
                break;
            }
            if let Some(err) = msg.get("error") {
                return Err(command_error("qmp_capabilities", err));
            }
            forward_event(&msg, &event_tx, &mut dropped).await;
        }

        let (req_tx, req_rx) = mpsc::channel(64);
        tokio::spawn(run(lines, write, req_rx, event_tx, dropped));
        Ok((
            QmpClient {
                requests: req_tx,
                deadline,
            },
            event_rx,
        ))
    }

    /// Runs a command and waits for its reply, at most the deadline.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, self.deadline).await
    }

    pub async fn execute_within(
        &self,
        command: &str,
        arguments: Option<Value>,
        deadline: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_full(command, arguments, None, deadline).await
    }

    /// Runs a command with a file descriptor attached (QMP `getfd`).
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: std::os::fd::OwnedFd,
    ) -> Result<Value, QmpError> {
        self.execute_full(command, arguments, Some(fd), self.deadline)
            .await
    }

    async fn execute_full(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<std::os::fd::OwnedFd>,
        deadline: Duration,
    ) -> Result<Value, QmpError> {
        let (tx, rx) = oneshot::channel();
        let req = Request {
            command: command.to_owned(),
            arguments,
            reply: tx,
            fd,
        };
        let fut = async {
            self.requests
                .send(req)
                .await
                .map_err(|_| QmpError::Closed)?;
            rx.await.map_err(|_| QmpError::Closed)?
        };
        timeout(deadline, fut)
            .await
            .map_err(|_| QmpError::Timeout(command.to_owned()))?
    }
}

/// Splits the monitor stream into JSON messages, one per line. A line
/// longer than `max` is skipped up to its newline and reported as one
/// malformed message, so the stream stays in step. The partial line lives
/// in the framed reader's buffer, not in a future: `next()` can be dropped by
/// `select!` at any point without losing bytes (cancel safety).
struct QmpLines {
    max: usize,
    /// Bytes of the current line already searched for a newline.
    searched: usize,
    /// Inside an over-long line: drop bytes until its newline.
    discarding: bool,
}

impl QmpLines {
    fn new(max: usize) -> QmpLines {
        QmpLines {
            max,
            searched: 0,
            discarding: false,
        }
    }
}

impl Decoder for QmpLines {
    type Item = Result<Value, QmpError>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Self::Item>> {
        loop {
            let Some(pos) = buf[self.searched..].iter().position(|b| *b == b'\n') else {
                if self.discarding {
                    buf.clear();
                    self.searched = 0;
                } else if buf.len() > self.max {
                    self.discarding = true;
                    buf.clear();
                    self.searched = 0;
                } else {
                    self.searched = buf.len();
                }
                return Ok(None);
            };
            let line = buf.split_to(self.searched + pos + 1);
            self.searched = 0;
            if std::mem::take(&mut self.discarding) || line.len() > self.max + 1 {
                return Ok(Some(Err(QmpError::Protocol(format!(
                    "monitor line longer than {} bytes",
                    self.max
                )))));
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some(
                serde_json::from_slice(&line).map_err(|e| QmpError::Protocol(e.to_string())),
            ));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Self::Item>> {
        // QEMU ends every message with a newline: a trailing fragment is
        // what a dying QEMU left half-written.
        let item = self.decode(buf)?;
        if item.is_none() {
            buf.clear();
        }
        Ok(item)
    }
}

type MonitorReader = FramedRead<tokio::net::unix::OwnedReadHalf, QmpLines>;

/// The next well-formed message, skipping malformed ones; `Closed` at the
/// end of the stream. Cancel-safe.
async fn next_message(lines: &mut MonitorReader) -> Result<Value, QmpError> {
    loop {
        match lines.next().await {
            Some(Ok(Ok(msg))) => return Ok(msg),
            Some(Ok(Err(e))) => debug!("ignoring malformed monitor line: {e}"),
            Some(Err(_)) | None => return Err(QmpError::Closed),
        }
    }
}

fn command_error(command: &str, err: &Value) -> QmpError {
    QmpError::Command {
        command: command.to_owned(),
        class: err
            .get("class")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        desc: err
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

/// Queues one event for the watcher. When the queue is full, a state
/// event waits for room (the monitor is not read meanwhile, which holds
/// QEMU back rather than losing a STOP or SHUTDOWN); any other event is
/// dropped, counted and logged: a flood of RTC changes or I/O errors
/// must not grow the daemon without bound.
async fn forward_event(msg: &Value, events: &mpsc::Sender<QmpEvent>, dropped: &mut u64) {
    let Some(name) = msg.get("event").and_then(Value::as_str) else {
        return;
    };
    trace!(event = name, "qmp event");
    let event = QmpEvent {
        name: name.to_owned(),
        data: msg.get("data").cloned().unwrap_or(Value::Null),
    };
    match events.try_send(event) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(event)) if STATE_EVENTS.contains(&name) => {
            let _ = events.send(event).await;
        }
        Err(mpsc::error::TrySendError::Full(event)) => {
            *dropped += 1;
            // One line per power of two keeps a flood from flooding the log.
            if dropped.is_power_of_two() {
                warn!(
                    event = %event.name,
                    dropped = *dropped,
                    "QEMU event queue full; dropping events that do not change the VM's state"
                );
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Writes `data` with `fd` attached to its first byte (SCM_RIGHTS).
async fn send_with_fd(
    write: &tokio::net::unix::OwnedWriteHalf,
    data: &[u8],
    fd: &std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let stream: &UnixStream = write.as_ref();
    let mut sent = 0;
    while sent < data.len() {
        stream.writable().await?;
        let attach = (sent == 0).then(|| fd.as_raw_fd());
        match stream.try_io(Interest::WRITABLE, || {
            crate::rpc::fdpass::send_with_fds(stream.as_raw_fd(), &data[sent..], attach)
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The task that owns the socket.
async fn run(
    mut lines: MonitorReader,
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<QmpEvent>,
    mut dropped: u64,
) {
    let mut pending: HashMap<u64, (String, Reply)> = HashMap::new();
    let mut next_id: u64 = 1;
    loop {
        tokio::select! {
            req = requests.recv() => {
                let Some(req) = req else { break };
                let id = next_id;
                next_id += 1;
                let mut msg = json!({"execute": req.command, "id": id});
                if let Some(args) = req.arguments {
                    msg["arguments"] = args;
                }
                let mut line = msg.to_string();
                line.push('\n');
                let written = match &req.fd {
                    Some(fd) => send_with_fd(&write, line.as_bytes(), fd).await,
                    None => write.write_all(line.as_bytes()).await,
                };
                if written.is_err() {
                    let _ = req.reply.send(Err(QmpError::Closed));
                    break;
                }
                // Tests wait for this line to know a command is in flight.
                debug!(id, "QMP command {} sent", req.command);
                pending.insert(id, (req.command, req.reply));
            }
            // Cancel-safe: a partial line stays in the reader's buffer when
            // a request wins the race.
            msg = next_message(&mut lines) => {
                let Ok(msg) = msg else { break };
                if msg.get("event").is_some() {
                    forward_event(&msg, &events, &mut dropped).await;
                    continue;
                }
                let Some(id) = msg.get("id").and_then(Value::as_u64) else { continue };
                let Some((command, reply)) = pending.remove(&id) else { continue };
                let result = match (msg.get("return"), msg.get("error")) {
                    (Some(r), _) => Ok(r.clone()),
                    (None, Some(e)) => Err(command_error(&command, e)),
                    (None, None) => Err(QmpError::Protocol(format!("reply without result: {msg}"))),
                };
                let _ = reply.send(result);
            }
        }
    }
    for (_, (_, reply)) in pending.drain() {
        let _ = reply.send(Err(QmpError::Closed));
    }
    // Dropping `events` tells the supervisor the monitor is gone.
}

#[cfg(test)]
mod tests {
    //! Error paths against a scripted monitor peer; the happy path is
    //! covered with real QEMU by the end-to-end tests.
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    async fn peer(
        script: impl FnOnce(UnixStream) -> tokio::task::JoinHandle<()> + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let script_handle = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ = script(s).await;
        });
        drop(script_handle);
        (dir, path)
    }

    async fn handshake(s: &mut UnixStream) -> BufReader<&mut UnixStream> {
        s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.contains("qmp_capabilities"));
        r.get_mut().write_all(b"{\"return\": {}}\n").await.unwrap();
        r
    }

    #[tokio::test]
    async fn silent_monitor_times_out_only_that_call() {
        let (_d, path) = peer(|mut s| {
            tokio::spawn(async move {
                let mut r = handshake(&mut s).await;
                let mut line = String::new();
                // Read the command and never answer it.
                r.read_line(&mut line).await.unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
            })
        })
        .await;
        let (qmp, _events) = QmpClient::connect(&path, Duration::from_secs(2))
            .await
            .unwrap();
        let err = qmp
            .execute_within("query-status", None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn closed_monitor_fails_pending_calls_and_ends_events() {
        let (_d, path) = peer(|mut s| {
            tokio::spawn(async move {
                let mut r = handshake(&mut s).await;
                r.get_mut()
                    .write_all(b"{\"event\": \"STOP\", \"data\": {}}\n")
                    .await
                    .unwrap();
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                // Close without answering.
            })
        })
        .await;
        let (qmp, mut events) = QmpClient::connect(&path, Duration::from_secs(2))
            .await
            .unwrap();
        let err = qmp.execute("stop", None).await.unwrap_err();
        assert!(matches!(err, QmpError::Closed), "{err}");
        assert_eq!(events.recv().await.unwrap().name, "STOP");
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn command_errors_carry_qemu_description() {
        let (_d, path) = peer(|mut s| {
            tokio::spawn(async move {
                let mut r = handshake(&mut s).await;
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                let reply =
                    json!({"error": {"class": "GenericError", "desc": "nope"}, "id": v["id"]});
                r.get_mut()
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
        })
        .await;
        let (qmp, _events) = QmpClient::connect(&path, Duration::from_secs(2))
            .await
            .unwrap();
        match qmp.execute("bogus", None).await.unwrap_err() {
            QmpError::Command { desc, .. } => assert_eq!(desc, "nope"),
            other => panic!("{other}"),
        }
    }

    /// The reply and an event arrive in fragments, with pauses, while
    /// further commands keep arriving: every request the reader task takes
    /// in drops its pending read, which must not lose a fragment.
    #[tokio::test]
    async fn split_reply_and_event_survive_interleaved_commands() {
        let (_d, path) = peer(|mut s| {
            tokio::spawn(async move {
                let mut r = handshake(&mut s).await;
                let first: Value = loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    let v: Value = serde_json::from_str(&line).unwrap();
                    if v["execute"] == "query-status" {
                        break v;
                    }
                };
                let event = b"{\"event\": \"STOP\", \"data\": {\"reason\": \"x\"}}\n".to_vec();
                let reply = format!(
                    "{{\"return\": {{\"status\": \"paused\"}}, \"id\": {}}}\n",
                    first["id"]
                );
                let mut bytes = event;
                bytes.extend_from_slice(reply.as_bytes());
                // Three-byte writes, each followed by a pause long enough
                // for the client to send another command in between.
                for chunk in bytes.chunks(3) {
                    r.get_mut().write_all(chunk).await.unwrap();
                    r.get_mut().flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // Drain (and leave unanswered) the interleaved commands.
                    let mut extra = [0u8; 4096];
                    let _ = tokio::time::timeout(
                        Duration::from_millis(1),
                        tokio::io::AsyncReadExt::read(r.get_mut(), &mut extra),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            })
        })
        .await;
        let (qmp, mut events) = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let waiting = {
            let qmp = qmp.clone();
            tokio::spawn(async move { qmp.execute("query-status", None).await })
        };
        // Keep the reader task's select! busy with requests while the
        // fragments trickle in.
        let noise = {
            let qmp = qmp.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let _ = qmp
                        .execute_within("query-name", None, Duration::from_millis(1))
                        .await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let reply = waiting.await.unwrap().unwrap();
        assert_eq!(reply["status"], "paused");
        let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.name, "STOP");
        assert_eq!(ev.data["reason"], "x");
        noise.abort();
    }

    #[test]
    fn long_lines_are_skipped_and_the_stream_stays_in_step() {
        let mut codec = QmpLines::new(16);
        let mut buf = BytesMut::from(&b"{\"event\": \"aaaaaaaaaaaaaaaaaaaaa"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"aaaa\"}\n{\"return\": 1}\n");
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Err(QmpError::Protocol(_)))
        ));
        let next = codec.decode(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(next["return"], 1);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[tokio::test]
    async fn event_flood_keeps_state_events() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let mut dropped = 0;
        for _ in 0..EVENT_QUEUE {
            forward_event(
                &json!({"event": "RTC_CHANGE", "data": {}}),
                &tx,
                &mut dropped,
            )
            .await;
        }
        forward_event(
            &json!({"event": "RTC_CHANGE", "data": {}}),
            &tx,
            &mut dropped,
        )
        .await;
        assert_eq!(dropped, 1);
        // A state event waits for room instead of being dropped.
        let tx2 = tx.clone();
        let stop = tokio::spawn(async move {
            let mut d = 0;
            forward_event(&json!({"event": "STOP", "data": {}}), &tx2, &mut d).await;
            d
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!stop.is_finished());
        assert_eq!(rx.recv().await.unwrap().name, "RTC_CHANGE");
        assert_eq!(stop.await.unwrap(), 0);
        let mut names = Vec::new();
        while let Ok(e) = rx.try_recv() {
            names.push(e.name);
        }
        assert_eq!(names.last().map(String::as_str), Some("STOP"));
        assert_eq!(names.len(), EVENT_QUEUE);
    }

    #[tokio::test]
    async fn missing_socket_fails_after_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let err = QmpClient::connect(&dir.path().join("none"), Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Connect(_)));
    }
}
