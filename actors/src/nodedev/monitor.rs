//! The node device list and its lifecycle events. The `NodeDeviceMonitor`
//! actor is the only writer of the [`DeviceCache`] that calls read: it
//! listens to the kernel's device events (a NETLINK_KOBJECT_UEVENT socket,
//! as udev does), rescans sysfs after each burst of them, swaps the new list
//! in and publishes `VIR_NODE_DEVICE_EVENT_CREATED` / `DELETED` for the
//! devices that came or went. Where the socket cannot be opened it rescans
//! on a timer instead.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use qemud_config::nodedev::NodeDeviceDef;
use qemud_protocol::remote::procs::NODE_DEVICE_EVENT_LIFECYCLE;
use qemud_protocol::remote::NonnullNodeDevice;

use super::sysfs;
use crate::events::{Event, EventBus, Family, ObjectKey};

/// `VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE`.
const EVENT_ID_LIFECYCLE: i32 = 0;
/// `virNodeDeviceEventLifecycleType`.
const EVENT_CREATED: i32 = 0;
const EVENT_DELETED: i32 = 1;

/// Device events come in bursts (a USB stick brings several devices);
/// one rescan follows each burst, this long after its first event.
const SETTLE: Duration = Duration::from_millis(300);
/// Without the netlink socket, how often sysfs is rescanned.
const POLL: Duration = Duration::from_secs(5);

const NETLINK_KOBJECT_UEVENT: libc::c_int = 15;

#[derive(Message)]
#[rtype(result = "()")]
struct Rescan;

/// The devices as last scanned, sorted by name. Readers take a snapshot
/// (an `Arc`), so a rescan never waits for them nor they for it.
#[derive(Default)]
pub struct DeviceCache {
    devices: RwLock<Arc<Vec<NodeDeviceDef>>>,
}

impl DeviceCache {
    pub fn snapshot(&self) -> Arc<Vec<NodeDeviceDef>> {
        match self.devices.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, devices: Vec<NodeDeviceDef>) {
        let new = Arc::new(devices);
        match self.devices.write() {
            Ok(mut d) => *d = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

pub struct NodeDeviceMonitor {
    cache: Arc<DeviceCache>,
    events: Addr<EventBus>,
}

#[derive(Serialize)]
struct LifecycleBody {
    dev: NonnullNodeDevice,
    event: i32,
    detail: i32,
}

fn names(devices: &[NodeDeviceDef]) -> BTreeSet<&str> {
    devices.iter().map(|d| d.name.as_str()).collect()
}

/// A non-blocking socket that receives the kernel's device events.
fn uevent_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // Group 1: the kernel's own events.
    addr.nl_groups = 1;
    // SAFETY: `addr` is a valid sockaddr_nl of the length passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// Reads and drops every pending event; the rescan finds what changed.
fn drain(sock: &OwnedFd) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return;
        }
    }
}

async fn watch(sock: Arc<AsyncFd<OwnedFd>>, monitor: Addr<NodeDeviceMonitor>) {
    loop {
        let mut ready = match sock.readable().await {
            Ok(r) => r,
            Err(e) => {
                warn!("device event socket failed: {e}");
                return;
            }
        };
        drain(sock.get_ref());
        ready.clear_ready();
        tokio::time::sleep(SETTLE).await;
        drain(sock.get_ref());
        if monitor.try_send(Rescan).is_err() {
            return;
        }
    }
}

impl NodeDeviceMonitor {
    /// Scans the devices once and starts following the kernel's events.
    pub fn start(events: Addr<EventBus>) -> (Arc<DeviceCache>, Addr<NodeDeviceMonitor>) {
        let cache = Arc::new(DeviceCache::default());
        cache.replace(sysfs::scan());
        let addr = NodeDeviceMonitor {
            cache: cache.clone(),
            events,
        }
        .start();
        (cache, addr)
    }

    fn publish(&self, name: &str, event: i32) {
        let body = LifecycleBody {
            dev: NonnullNodeDevice { name: name.into() },
            event,
            detail: 0,
        };
        match Event::new(
            Family::NodeDevice,
            ObjectKey::Name(name.into()),
            EVENT_ID_LIFECYCLE,
            NODE_DEVICE_EVENT_LIFECYCLE,
            &body,
        ) {
            Ok(e) => self.events.do_send(e),
            Err(e) => warn!("cannot encode node device event: {e}"),
        }
    }
}

impl Actor for NodeDeviceMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let registered = uevent_socket().and_then(|fd| {
            // SAFETY: an OwnedFd keeps its descriptor open and unchanged
            // until it is dropped, which the AsyncFd does last.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        match registered {
            Ok(sock) => {
                actix_rt::spawn(watch(Arc::new(sock), ctx.address()));
            }
            Err(e) => {
                warn!("no kernel device events ({e}); rescanning devices every {POLL:?}");
                ctx.run_interval(POLL, |_, ctx| ctx.notify(Rescan));
            }
        }
    }
}

impl Handler<Rescan> for NodeDeviceMonitor {
    type Result = ();

    fn handle(&mut self, _: Rescan, _: &mut Self::Context) {
        let before = self.cache.snapshot();
        let now = sysfs::scan();
        let (old_names, new_names) = (names(&before), names(&now));
        for gone in old_names.difference(&new_names) {
            debug!(device = %gone, "node device removed");
            self.publish(gone, EVENT_DELETED);
        }
        for new in new_names.difference(&old_names) {
            debug!(device = %new, "node device added");
            self.publish(new, EVENT_CREATED);
        }
        self.cache.replace(now);
    }
}
