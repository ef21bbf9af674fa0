//! `virDomainOpenConsole`: a running domain's serial port or console as a
//! data stream. Like libvirt's QEMU driver, the daemon opens the host side
//! of the port's pty (so QEMU's own log file of the port keeps recording
//! everything) and pumps bytes both ways. One client holds a port at a time;
//! FORCE takes it over and the previous holder sees end of data.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::{debug, info};
use uuid::Uuid;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;

use crate::call;
use crate::error::{Error, Result};
use crate::qemu_program::running;
use crate::rpc::stream::{self, Inbound, StreamIo};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};

/// `VIR_DOMAIN_CONSOLE_FORCE`, `VIR_DOMAIN_CONSOLE_SAFE`.
const CONSOLE_FORCE: u32 = 1;
const CONSOLE_SAFE: u32 = 2;
/// Bytes typed by the client waiting for the guest to read them.
const PENDING_INPUT: usize = 64 * 1024;

pub fn procedures() -> Vec<Procedure> {
    vec![call!(DOMAIN_OPEN_CONSOLE, Write, open_console)]
}

/// Who holds each pty: (domain, pty path) → the holder's number and the
/// way to make it let go.
struct Holder {
    id: u64,
    kick: oneshot::Sender<()>,
}

static HOLDERS: LazyLock<DashMap<(Uuid, String), Holder>> = LazyLock::new(DashMap::new);
static NEXT_HOLDER: AtomicU64 = AtomicU64::new(1);

/// Which serial port a console device name means: `console0` (the console
/// is serial 0) or `serialN`; none means the first.
fn port_index(dev_name: Option<&str>, serials: usize, console: bool) -> Result<usize> {
    let found = match dev_name {
        None => (serials > 0).then_some(0),
        Some("console0") if console => Some(0),
        Some(name) => name
            .strip_prefix("serial")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < serials && name == format!("serial{n}")),
    };
    found.ok_or_else(|| {
        Error::Internal(format!(
            "cannot find character device {}",
            dev_name.unwrap_or("<null>")
        ))
    })
}

async fn open_console(call: &Call, a: DomainOpenConsoleArgs) -> Result<()> {
    check_flags(
        a.flags,
        CONSOLE_FORCE | CONSOLE_SAFE,
        "qemuDomainOpenConsole",
    )?;
    let (vm, qmp) = running(call, &a.dom).await?;
    let dev_name = a.dev_name.as_ref().map(|d| d.as_str());
    let index = port_index(
        dev_name,
        vm.def.devices.serials.len(),
        vm.def.devices.console,
    )?;
    let label = format!("charserial{index}");
    let chardevs = qmp
        .execute("query-chardev", None)
        .await
        .map_err(|e| Error::OperationFailed(e.to_string()))?;
    let path = chardevs
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c.get("label").and_then(|l| l.as_str()) == Some(label.as_str()))
        .and_then(|c| c.get("filename")?.as_str()?.strip_prefix("pty:"))
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Internal(format!(
                "character device {} is not using a PTY",
                dev_name.unwrap_or(&label)
            ))
        })?;

    let key = (vm.def.uuid, path.clone());
    let force = a.flags & CONSOLE_FORCE != 0;
    if HOLDERS.contains_key(&key) && !force {
        return Err(Error::OperationFailed(
            "Active console session exists for this domain".into(),
        ));
    }
    let pty = open_pty(&path)?;
    let io = stream::open(call).await?;
    let (kick, kicked) = oneshot::channel();
    let id = NEXT_HOLDER.fetch_add(1, Ordering::Relaxed);
    if let Some(previous) = HOLDERS.insert(key.clone(), Holder { id, kick }) {
        info!(domain = %vm.def.name, "console taken over by another client");
        let _ = previous.kick.send(());
    }
    info!(domain = %vm.def.name, conn = call.conn_id, %path, "console opened");
    actix_rt::spawn(async move {
        pump(io, pty, kicked).await;
        HOLDERS.remove_if(&key, |_, h| h.id == id);
        debug!(%path, "console closed");
    });
    Ok(())
}

/// Opens the host side of a pty, raw and non-blocking, as libvirt does.
fn open_pty(path: &str) -> Result<AsyncFd<OwnedFd>> {
    let cpath = std::ffi::CString::new(path)
        .map_err(|_| Error::Internal(format!("bad pty path {path}")))?;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::System(format!("Unable to open {path}: {e}")));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: termios is plain data; tcgetattr fills it before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    // SAFETY: the AsyncFd owns the only handle of this fd, so it is
    // deregistered before the fd closes.
    unsafe { AsyncFd::register(fd) }
        .map_err(|e| Error::System(format!("Unable to watch {path}: {e}")))
}

fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_some(fd: &OwnedFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves bytes between the pty and the stream until either side ends.
async fn pump(mut io: StreamIo, pty: AsyncFd<OwnedFd>, mut kicked: oneshot::Receiver<()>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut input: VecDeque<Bytes> = VecDeque::new();
    let mut input_len = 0usize;
    loop {
        tokio::select! {
            _ = &mut kicked => {
                // Another client forced its way in.
                io.eof();
                return;
            }
            ready = pty.readable() => {
                let Ok(mut guard) = ready else { io.eof(); return };
                match guard.try_io(|fd| read_some(fd.get_ref(), &mut buf)) {
                    Ok(Ok(0)) => { io.eof(); return; }
                    Ok(Ok(n)) => {
                        if io.send(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    // EIO: QEMU closed its side (the domain stopped).
                    Ok(Err(_)) => { io.eof(); return; }
                    Err(_would_block) => {}
                }
            }
            ready = pty.writable(), if !input.is_empty() => {
                let Ok(mut guard) = ready else { io.eof(); return };
                let Some(front) = input.front_mut() else { continue };
                match guard.try_io(|fd| write_some(fd.get_ref(), front)) {
                    Ok(Ok(n)) => {
                        input_len -= n;
                        if n >= front.len() {
                            input.pop_front();
                        } else {
                            let _ = front.split_to(n);
                        }
                    }
                    Ok(Err(_)) => { io.eof(); return; }
                    Err(_would_block) => {}
                }
            }
            inbound = io.recv(), if input_len < PENDING_INPUT => match inbound {
                Some(Inbound::Data(d)) => {
                    input_len += d.len();
                    input.push_back(d);
                }
                Some(Inbound::Finish) => {
                    io.finish();
                    return;
                }
                Some(Inbound::Abort) | None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(port_index(None, 1, true).unwrap(), 0);
        assert_eq!(port_index(Some("console0"), 1, true).unwrap(), 0);
        assert_eq!(port_index(Some("serial1"), 2, true).unwrap(), 1);
        assert!(port_index(Some("serial2"), 2, true).is_err());
        assert!(port_index(Some("serial01"), 2, true).is_err());
        assert!(port_index(None, 0, false).is_err());
        let e = port_index(Some("nope"), 1, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "internal error: cannot find character device nope"
        );
    }
}
