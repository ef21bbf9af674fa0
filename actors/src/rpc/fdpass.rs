//! File descriptors passed over UNIX connections (SCM_RIGHTS), libvirt's
//! way: a REPLY_WITH_FDS message carries the number of descriptors before
//! its body, then each descriptor follows on the socket attached to one
//! byte of its own. Only UNIX sockets can carry them, so
//! `CONNECT_SUPPORTS_FEATURE(FD_PASSING)` is true there and nowhere else.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use super::connection::Connection;
use super::table::Call;
use crate::error::{Error, Result};

/// `VIR_NET_MESSAGE_NUM_FDS_MAX`.
pub const MAX_FDS: usize = 32;
/// How long the writer retries a descriptor the socket has no room for.
const SEND_WAIT: Duration = Duration::from_secs(5);

/// Sends `data` with, optionally, one descriptor attached; returns the
/// bytes written. The socket is non-blocking: `WouldBlock` means retry.
pub fn send_with_fds(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: plain C structures, zero-initialised and filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // Room for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    if let Some(fd) = fd {
        // SAFETY: `control` is large enough for CMSG_SPACE(sizeof(int))
        // and aligned; the header pointer comes from CMSG_FIRSTHDR.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Descriptors of queued REPLY_WITH_FDS messages, in queue order: the
/// connection pushes when it queues such a reply, its writer pops after
/// putting the reply on the socket.
#[derive(Clone, Default)]
pub struct FdQueue(Arc<Mutex<VecDeque<Vec<OwnedFd>>>>);

impl FdQueue {
    pub fn push(&self, fds: Vec<OwnedFd>) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(fds);
        }
    }

    pub fn pop(&self) -> Vec<OwnedFd> {
        self.0
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or_default()
    }
}

/// Sends each descriptor on one zero byte, as libvirt's peers expect.
pub async fn send_fds(sock: RawFd, fds: Vec<OwnedFd>) -> std::io::Result<()> {
    for fd in fds {
        let until = tokio::time::Instant::now() + SEND_WAIT;
        loop {
            match send_with_fds(sock, &[0], Some(fd.as_raw_fd())) {
                Ok(1) => break,
                Ok(_) => return Err(std::io::Error::other("short write of a descriptor")),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if tokio::time::Instant::now() >= until {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Attaches descriptors to the reply of the call being answered. Fails
/// where the transport cannot carry them.
pub async fn attach(call: &Call, fds: Vec<OwnedFd>) -> Result<()> {
    call.conn
        .send(AttachFds {
            serial: call.header.serial,
            fds,
        })
        .await
        .map_err(|_| Error::Rpc("client connection closed".into()))?
}

#[derive(Message)]
#[rtype(result = "Result<()>")]
struct AttachFds {
    serial: u32,
    fds: Vec<OwnedFd>,
}

impl actix::Handler<AttachFds> for Connection {
    type Result = Result<()>;

    fn handle(&mut self, msg: AttachFds, _: &mut Context<Self>) -> Result<()> {
        if !self.fd_passing() {
            return Err(Error::ArgumentUnsupported(
                "fd passing is not supported by this connection".into(),
            ));
        }
        if msg.fds.len() > MAX_FDS {
            return Err(Error::Rpc(format!(
                "Too many FDs to send {}, expected {MAX_FDS} maximum",
                msg.fds.len()
            )));
        }
        self.reply_fds.insert(msg.serial, msg.fds);
        Ok(())
    }
}
