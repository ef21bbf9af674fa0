//! Supervision of one QEMU process: launching it (or re-attaching to one a
//! previous daemon started), a watcher task that forwards its QMP events in
//! order and reports its exit, and the `QemuVm` actor through which the
//! registry sends it commands. Every wait has a deadline.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use actix::prelude::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::domain::qmp::{QmpClient, QmpEvent};
use crate::error::Error;

/// How long a QEMU gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the process to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the watcher tells the registry, in the order it happened.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct VmNotice {
    pub uuid: Uuid,
    /// Which run of the domain this is about; stale notices are ignored.
    pub run: u64,
    pub kind: VmNoticeKind,
}

#[derive(Debug)]
pub enum VmNoticeKind {
    Event(QmpEvent),
    /// The process is gone; the text says how it ended.
    Exited(String),
}

pub struct LaunchSpec {
    pub emulator: PathBuf,
    pub argv: Vec<String>,
    pub qmp_socket: PathBuf,
    pub log_file: PathBuf,
    pub qmp_timeout: Duration,
}

/// A QEMU that is up with its monitor connected.
pub struct Launched {
    pub pid: i32,
    pub qmp: QmpClient,
    events: mpsc::UnboundedReceiver<QmpEvent>,
    child: Option<Child>,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Starts QEMU and connects to its monitor. QEMU runs in its own process
/// group with output to the domain log, so it outlives a daemon restart.
pub async fn launch(spec: LaunchSpec) -> Result<Launched, Error> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .map_err(|e| {
            Error::System(format!(
                "cannot open log file '{}': {e}",
                spec.log_file.display()
            ))
        })?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::System(format!("cannot duplicate log file handle: {e}")))?;
    let _ = std::fs::remove_file(&spec.qmp_socket);
    let mut child = Command::new(&spec.emulator)
        .args(&spec.argv)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            Error::OperationFailed(format!(
                "cannot execute binary {}: {e}",
                spec.emulator.display()
            ))
        })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    info!(pid, emulator = %spec.emulator.display(), "started QEMU");

    // Connect while watching for an early exit (bad arguments, missing
    // files): that error is better taken from QEMU's own log.
    let connect = QmpClient::connect(&spec.qmp_socket, spec.qmp_timeout);
    tokio::pin!(connect);
    let connected = tokio::select! {
        r = &mut connect => r,
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(Error::OperationFailed(format!(
                "internal error: QEMU unexpectedly closed the monitor ({status}): {}",
                log_tail(&spec.log_file)
            )));
        }
    };
    match connected {
        Ok((qmp, events)) => Ok(Launched {
            pid,
            qmp,
            events,
            child: Some(child),
        }),
        Err(e) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
            Err(Error::OperationFailed(format!(
                "internal error: {e}: {}",
                log_tail(&spec.log_file)
            )))
        }
    }
}

/// Whether `pid` is alive and is the QEMU of domain `uuid` (guards against
/// pid reuse after a reboot or a long outage).
pub fn is_our_qemu(pid: i32, uuid: &Uuid) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline);
    text.contains(&uuid.to_string())
}

/// Re-attaches to a QEMU started by an earlier daemon.
pub async fn attach(pid: i32, qmp_socket: &Path, qmp_timeout: Duration) -> Result<Launched, Error> {
    let (qmp, events) = QmpClient::connect(qmp_socket, qmp_timeout)
        .await
        .map_err(|e| Error::OperationFailed(e.to_string()))?;
    Ok(Launched {
        pid,
        qmp,
        events,
        child: None,
    })
}

/// Alive means running or sleeping: a zombie waiting for an init that
/// reaps slowly is already gone as far as the domain is concerned.
fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Forwards events in order, then reports the exit once the process is
/// gone and the monitor has delivered its last words.
async fn watch(
    uuid: Uuid,
    run: u64,
    pid: i32,
    mut events: mpsc::UnboundedReceiver<QmpEvent>,
    child: Option<Child>,
    registry: Recipient<VmNotice>,
    vm: Addr<QemuVm>,
) {
    let notify = |kind| {
        registry.do_send(VmNotice { uuid, run, kind });
    };
    let mut child = child;
    let mut exit: Option<String> = None;
    // Phase 1: events until the monitor closes or the child exits.
    loop {
        let waited = async {
            match child.as_mut() {
                Some(c) => Some(c.wait().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => notify(VmNoticeKind::Event(ev)),
                None => break,
            },
            status = waited => {
                exit = Some(match status {
                    Some(Ok(s)) => s.to_string(),
                    Some(Err(e)) => format!("wait failed: {e}"),
                    None => String::new(),
                });
                // Drain what the monitor still has, briefly.
                let drain = async {
                    while let Some(ev) = events.recv().await {
                        notify(VmNoticeKind::Event(ev));
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                break;
            }
        }
    }
    // Phase 2: the monitor closed; make sure the process is gone.
    let exit = match (exit, child.as_mut()) {
        (Some(e), _) => e,
        (None, Some(c)) => match tokio::time::timeout(TERM_GRACE + KILL_WAIT, c.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                warn!(pid, "QEMU closed its monitor but did not exit; killing it");
                let _ = c.start_kill();
                let _ = tokio::time::timeout(KILL_WAIT, c.wait()).await;
                "killed after closing its monitor".into()
            }
        },
        (None, None) => {
            // Not our child: poll until it disappears.
            let mut waited = Duration::ZERO;
            while pid_alive(pid) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += Duration::from_millis(50);
                if waited > TERM_GRACE + KILL_WAIT {
                    warn!(pid, "QEMU closed its monitor but did not exit; killing it");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    waited = Duration::ZERO;
                }
            }
            "exited".into()
        }
    };
    debug!(pid, %exit, "QEMU is gone");
    notify(VmNoticeKind::Exited(exit));
    vm.do_send(ProcessExited);
}

/// The actor through which the registry talks to one running QEMU.
pub struct QemuVm {
    pid: i32,
    qmp: QmpClient,
    exited: bool,
    exit_waiters: Vec<oneshot::Sender<()>>,
}

impl QemuVm {
    pub fn start(
        launched: Launched,
        uuid: Uuid,
        run: u64,
        registry: Recipient<VmNotice>,
    ) -> Addr<QemuVm> {
        let Launched {
            pid,
            qmp,
            events,
            child,
        } = launched;
        let vm = QemuVm {
            pid,
            qmp,
            exited: false,
            exit_waiters: Vec::new(),
        }
        .start();
        actix_rt::spawn(watch(uuid, run, pid, events, child, registry, vm.clone()));
        vm
    }

    fn signal(&self, sig: Signal) {
        if self.pid > 0 && !self.exited {
            if let Err(e) = kill(Pid::from_raw(self.pid), sig) {
                debug!(pid = self.pid, "kill({sig}) failed: {e}");
            }
        }
    }
}

impl Actor for QemuVm {
    type Context = Context<Self>;
}

/// Runs a QMP command with the client's deadline.
#[derive(Message)]
#[rtype(result = "Result<Value, Error>")]
pub struct QmpCommand {
    pub command: &'static str,
    pub arguments: Option<Value>,
}

impl Handler<QmpCommand> for QemuVm {
    type Result = ResponseFuture<Result<Value, Error>>;

    fn handle(&mut self, msg: QmpCommand, _: &mut Self::Context) -> Self::Result {
        let qmp = self.qmp.clone();
        Box::pin(async move {
            qmp.execute(msg.command, msg.arguments)
                .await
                .map_err(|e| match e {
                    crate::domain::qmp::QmpError::Timeout(c) => {
                        Error::Timeout(format!("QEMU did not answer '{c}' in time"))
                    }
                    other => Error::OperationFailed(other.to_string()),
                })
        })
    }
}

/// The monitor client itself, for drivers that talk to QEMU directly
/// (passthrough, consoles, screenshots); every command it runs still has
/// its deadline.
#[derive(Message)]
#[rtype(result = "QmpClient")]
pub struct GetQmp;

impl Handler<GetQmp> for QemuVm {
    type Result = MessageResult<GetQmp>;

    fn handle(&mut self, _: GetQmp, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.qmp.clone())
    }
}

/// Terminates the process: SIGTERM, then SIGKILL unless graceful. Resolves
/// once the process is gone.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Kill {
    pub graceful: bool,
}

impl Handler<Kill> for QemuVm {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, msg: Kill, ctx: &mut Self::Context) -> Self::Result {
        if self.exited {
            return Box::pin(async { Ok(()) });
        }
        let (tx, rx) = oneshot::channel();
        self.exit_waiters.push(tx);
        self.signal(Signal::SIGTERM);
        let deadline = if msg.graceful {
            TERM_GRACE
        } else {
            ctx.run_later(TERM_GRACE, |act, _| {
                if !act.exited {
                    warn!(pid = act.pid, "QEMU ignored SIGTERM; sending SIGKILL");
                    act.signal(Signal::SIGKILL);
                }
            });
            TERM_GRACE + KILL_WAIT
        };
        let pid = self.pid;
        Box::pin(async move {
            match tokio::time::timeout(deadline, rx).await {
                Ok(_) => Ok(()),
                Err(_) => Err(Error::OperationFailed(format!(
                    "failed to terminate process {pid} with SIGTERM"
                ))),
            }
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ProcessExited;

impl Handler<ProcessExited> for QemuVm {
    type Result = ();

    fn handle(&mut self, _: ProcessExited, ctx: &mut Self::Context) {
        self.exited = true;
        for w in self.exit_waiters.drain(..) {
            let _ = w.send(());
        }
        ctx.stop();
    }
}
