//! Supervision of one QEMU process: launching it (or re-attaching to one a
//! previous daemon started), a watcher task that forwards its QMP events in
//! order and reports its exit, and the `QemuVm` actor through which the
//! registry sends it commands. Every wait has a deadline.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

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

/// How long a graceful destroy waits for QEMU to exit after SIGTERM, and
/// how long the watcher waits for a QEMU that closed its monitor.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the process to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// A forced destroy: how long QEMU gets to act on SIGTERM before SIGKILL.
/// A QEMU in its main loop exits within tens of milliseconds; one that has
/// not by then is hung, and destroy is the operator's way out.
const FORCE_GRACE: Duration = Duration::from_millis(500);
/// A QEMU younger than this may still be initialising, when it does not act
/// on SIGTERM yet: a forced destroy sends SIGKILL straight away.
const STARTING_AGE: Duration = Duration::from_secs(3);
/// A forced destroy asks the monitor for a sign of life; no answer within
/// this means SIGTERM will not be handled either.
const MONITOR_PROBE: Duration = Duration::from_millis(250);

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
    /// Set to QEMU's pid as soon as it is spawned, so a destroy can kill a
    /// QEMU that is still starting (as libvirt's destroy does).
    pub spawned_pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

/// A process as the kernel knows it: its pid and its start time (clock
/// ticks after boot, field 22 of `/proc/PID/stat`). Once a process is
/// reaped its pid may name another one; the pair never does. Every signal
/// the daemon sends to a QEMU goes through this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_time: u64,
}

/// (state, start time) of a process, from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow start after its last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

impl ProcessIdentity {
    /// The process that has `pid` now.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        proc_stat(pid).map(|(_, start_time)| ProcessIdentity { pid, start_time })
    }

    /// Whether this very process still runs (running, sleeping or
    /// stopped; a zombie is gone as far as the domain is concerned).
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start))
            if start == self.start_time && !matches!(state, 'Z' | 'X' | 'x'))
    }

    /// Wall-clock time the process started, to a second or so.
    fn started_at(&self) -> Option<std::time::SystemTime> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let boot: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
        Some(
            std::time::UNIX_EPOCH
                + Duration::from_secs(boot)
                + Duration::from_millis(self.start_time.saturating_mul(1000) / ticks),
        )
    }

    /// Sends `sig` to this process and to no other: the pid is pinned with
    /// a pidfd, then the start time is checked, then the signal goes
    /// through the pidfd, so a pid reused in between is never hit.
    /// Returns whether the signal was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            // Kernels before 5.3: check, then signal by pid.
            if !self.is_alive() {
                return false;
            }
            return kill(Pid::from_raw(self.pid), sig).is_ok();
        }
        // SAFETY: fd was just returned by pidfd_open and is owned here only.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        if !self.is_alive() {
            return false;
        }
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }
}

/// A QEMU that is up with its monitor connected.
pub struct Launched {
    pub pid: i32,
    /// None only when /proc could not be read at launch; such a process is
    /// never signalled by pid alone.
    pub identity: Option<ProcessIdentity>,
    pub qmp: QmpClient,
    events: mpsc::Receiver<QmpEvent>,
    child: Option<Child>,
    /// When this daemon started the process; `None` for one re-attached.
    started_at: Option<Instant>,
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
        .mode(crate::domain::store::FILE_MODE)
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
    let started_at = Instant::now();
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    spec.spawned_pid
        .store(pid, std::sync::atomic::Ordering::Release);
    // Our unreaped child: its pid cannot have been reused yet.
    let identity = ProcessIdentity::of(pid);
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
            identity,
            qmp,
            events,
            child: Some(child),
            started_at: Some(started_at),
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

fn cmdline_names(pid: i32, uuid: &Uuid) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&uuid.to_string()))
        .unwrap_or(false)
}

/// The QEMU of domain `uuid` that a live record names, if it still runs:
/// same pid and same start time. Records from before start times were
/// kept fall back to the command line naming the domain.
pub fn recorded_qemu(pid: i32, start_time: Option<u64>, uuid: &Uuid) -> Option<ProcessIdentity> {
    let now = ProcessIdentity::of(pid).filter(ProcessIdentity::is_alive)?;
    match start_time {
        Some(t) => (now.start_time == t).then_some(now),
        None => cmdline_names(pid, uuid).then_some(now),
    }
}

/// The QEMU that wrote pid file `pidfile` for domain `uuid`, if it still
/// runs: it names the domain and started before the file was written (a
/// process that took the pid over later started after it).
pub fn pidfile_qemu(pid: i32, pidfile: &Path, uuid: &Uuid) -> Option<ProcessIdentity> {
    let now = ProcessIdentity::of(pid).filter(ProcessIdentity::is_alive)?;
    let written = std::fs::metadata(pidfile).and_then(|m| m.modified()).ok()?;
    let started = now.started_at()?;
    // btime is whole seconds: allow that much rounding.
    let started_before = started <= written + Duration::from_secs(1);
    (started_before && cmdline_names(pid, uuid)).then_some(now)
}

/// Re-attaches to a QEMU started by an earlier daemon.
pub async fn attach(
    identity: ProcessIdentity,
    qmp_socket: &Path,
    qmp_timeout: Duration,
) -> Result<Launched, Error> {
    let (qmp, events) = QmpClient::connect(qmp_socket, qmp_timeout)
        .await
        .map_err(|e| Error::OperationFailed(e.to_string()))?;
    Ok(Launched {
        pid: identity.pid,
        identity: Some(identity),
        qmp,
        events,
        child: None,
        started_at: None,
    })
}

/// Alive means running or sleeping: a zombie waiting for an init that
/// reaps slowly is already gone as far as the domain is concerned.
pub(crate) fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Stopped (SIGSTOP) or traced: such a process acts on no signal but
/// SIGKILL.
fn pid_stopped(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some('T') | Some('t'))
}

/// Forwards events in order, then reports the exit once the process is
/// gone and the monitor has delivered its last words.
async fn watch(
    uuid: Uuid,
    run: u64,
    (pid, identity): (i32, Option<ProcessIdentity>),
    mut events: mpsc::Receiver<QmpEvent>,
    child: Option<Child>,
    registry: Recipient<VmNotice>,
    vm: Addr<QemuVm>,
) {
    let notify = |kind| {
        registry.do_send(VmNotice { uuid, run, kind });
    };
    // Events wait for the registry to take each one, so a guest flooding
    // events fills the bounded monitor queue (see qmp::forward_event)
    // instead of the registry's mailbox.
    let forward = |ev| {
        registry.send(VmNotice {
            uuid,
            run,
            kind: VmNoticeKind::Event(ev),
        })
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
                Some(ev) => {
                    let _ = forward(ev).await;
                }
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
                        let _ = forward(ev).await;
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
            // Not our child: poll until it disappears. Its pid may be
            // reused the moment it is reaped, so only this very process
            // (pid and start time) is ever killed.
            let mut waited = Duration::ZERO;
            while identity.is_some_and(|p| p.is_alive()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += Duration::from_millis(50);
                if waited > TERM_GRACE + KILL_WAIT {
                    warn!(pid, "QEMU closed its monitor but did not exit; killing it");
                    if let Some(p) = identity {
                        p.signal(Signal::SIGKILL);
                    }
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
    identity: Option<ProcessIdentity>,
    qmp: QmpClient,
    started_at: Option<Instant>,
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
            identity,
            qmp,
            events,
            child,
            started_at,
        } = launched;
        let vm = QemuVm {
            pid,
            identity,
            qmp,
            started_at,
            exited: false,
            exit_waiters: Vec::new(),
        }
        .start();
        actix_rt::spawn(watch(
            uuid,
            run,
            (pid, identity),
            events,
            child,
            registry,
            vm.clone(),
        ));
        vm
    }

    /// Signals this QEMU, never whatever process has its pid now.
    fn signal(&self, sig: Signal) {
        if self.exited {
            return;
        }
        match self.identity {
            Some(p) => {
                if !p.signal(sig) {
                    debug!(pid = self.pid, "{sig} not sent: the process is gone");
                }
            }
            None => warn!(pid = self.pid, "cannot identify QEMU; not sending {sig}"),
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

/// Terminates the process and resolves once it is gone. Graceful: SIGTERM
/// only, failing after `TERM_GRACE` (VIR_DOMAIN_DESTROY_GRACEFUL). Forced:
/// SIGKILL at once for a QEMU that cannot act on SIGTERM (stopped, traced,
/// still starting); otherwise SIGTERM, then SIGKILL as soon as the monitor
/// fails to answer a probe or `FORCE_GRACE` passes. Never waits on the
/// monitor itself.
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
        let pid = self.pid;
        let deadline = if msg.graceful {
            self.signal(Signal::SIGTERM);
            TERM_GRACE
        } else {
            let unable = if pid_stopped(pid) {
                Some("stopped")
            } else if self.started_at.is_some_and(|t| t.elapsed() < STARTING_AGE) {
                Some("still starting")
            } else {
                None
            };
            if let Some(why) = unable {
                info!(pid, "QEMU is {why}; destroying it with SIGKILL");
                self.signal(Signal::SIGKILL);
            } else {
                self.signal(Signal::SIGTERM);
                ctx.run_later(FORCE_GRACE, |act, _| {
                    if !act.exited {
                        warn!(
                            pid = act.pid,
                            "QEMU did not exit on SIGTERM; sending SIGKILL"
                        );
                        act.signal(Signal::SIGKILL);
                    }
                });
                let qmp = self.qmp.clone();
                let probe = async move {
                    qmp.execute_within("query-status", None, MONITOR_PROBE)
                        .await
                };
                ctx.spawn(probe.into_actor(self).map(|res, act, _| {
                    // Closed means QEMU is on its way out; only silence
                    // means a QEMU that will not act on SIGTERM either.
                    if let Err(crate::domain::qmp::QmpError::Timeout(_)) = res {
                        if !act.exited {
                            warn!(
                                pid = act.pid,
                                "QEMU monitor does not answer; sending SIGKILL"
                            );
                            act.signal(Signal::SIGKILL);
                        }
                    }
                }));
            }
            FORCE_GRACE + KILL_WAIT
        };
        Box::pin(async move {
            match tokio::time::timeout(deadline, rx).await {
                Ok(_) => Ok(()),
                // libvirt's wording (virProcessKillPainfully, EBUSY).
                Err(_) => Err(Error::System(format!(
                    "Failed to terminate process {pid} with SIG{}: Device or resource busy",
                    if msg.graceful { "TERM" } else { "KILL" }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tells_a_reused_pid_from_the_process_it_named() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = ProcessIdentity::of(pid).unwrap();
        assert!(me.is_alive());
        // The same pid with another start time is what a reused pid looks
        // like: never alive, never signalled.
        let earlier = ProcessIdentity {
            pid,
            start_time: me.start_time.wrapping_sub(1),
        };
        assert!(!earlier.is_alive());
        assert!(!earlier.signal(Signal::SIGKILL));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the other process was killed"
        );
        // The process itself is signalled.
        assert!(me.signal(Signal::SIGKILL));
        child.wait().unwrap();
        // Reaped: nothing left to signal.
        assert!(!me.is_alive());
        assert!(!me.signal(Signal::SIGKILL));
    }

    #[test]
    fn command_names_with_parentheses_do_not_shift_fields() {
        // The command name comes from the executable's file name.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("x) 1 2 (y");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        // ETXTBSY while another test's fork still holds the copy's fd.
        let mut child = (0..50)
            .find_map(
                |_| match std::process::Command::new(&exe).arg("30").spawn() {
                    Ok(c) => Some(c),
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(Duration::from_millis(10));
                        None
                    }
                    Err(e) => panic!("{e}"),
                },
            )
            .unwrap();
        let pid = child.id() as i32;
        let (state, start) = proc_stat(pid).unwrap();
        assert!(matches!(state, 'S' | 'R'), "{state}");
        // Field 22 of a process started just now is close to the uptime.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // SAFETY: no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!((start as f64 / ticks - uptime).abs() < 5.0, "{start}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
