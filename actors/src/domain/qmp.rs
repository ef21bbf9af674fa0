//! A QMP client: one task owns the monitor socket, matches replies to
//! requests by id and forwards asynchronous events. Every request has a
//! deadline, so a QEMU that stops answering fails only its own calls.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tracing::{debug, trace};

/// Longest monitor line we accept; QMP replies we use are far smaller.
const MAX_LINE: usize = 16 * 1024 * 1024;

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
    ) -> Result<(QmpClient, mpsc::UnboundedReceiver<QmpEvent>), QmpError> {
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
        let mut lines = BufReader::new(read);

        // Greeting, then capabilities negotiation, both under the deadline.
        let remaining = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let greeting = timeout(remaining, read_line(&mut lines))
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
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        loop {
            let msg = timeout(remaining, read_line(&mut lines))
                .await
                .map_err(|_| QmpError::Timeout("qmp_capabilities".into()))??;
            if msg.get("return").is_some() {
                break;
            }
            if let Some(err) = msg.get("error") {
                return Err(command_error("qmp_capabilities", err));
            }
            forward_event(&msg, &event_tx);
        }

        let (req_tx, req_rx) = mpsc::channel(64);
        tokio::spawn(run(lines, write, req_rx, event_tx));
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

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Value, QmpError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|_| QmpError::Closed)?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if buf.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        return serde_json::from_slice(&buf).map_err(|e| QmpError::Protocol(e.to_string()));
    }
}

use tokio::io::AsyncReadExt;

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

fn forward_event(msg: &Value, events: &mpsc::UnboundedSender<QmpEvent>) {
    if let Some(name) = msg.get("event").and_then(Value::as_str) {
        trace!(event = name, "qmp event");
        let _ = events.send(QmpEvent {
            name: name.to_owned(),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
        });
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
    mut lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<QmpEvent>,
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
                pending.insert(id, (req.command, req.reply));
            }
            msg = read_line(&mut lines) => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(QmpError::Protocol(e)) => {
                        debug!("ignoring malformed monitor line: {e}");
                        continue;
                    }
                    Err(_) => break,
                };
                if msg.get("event").is_some() {
                    forward_event(&msg, &events);
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
