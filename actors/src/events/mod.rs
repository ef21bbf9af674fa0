//! Events of every object kind and their fan-out. A driver publishes each
//! event once to the `EventBus`; the bus hands it to every subscribed
//! connection, which filters it by its callbacks and queues it without
//! waiting. Publishing never blocks on a client.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::{event_id, NonnullDomain};
use qemud_protocol::{program, Header, Packet};

use crate::error::Result;
use crate::rpc::wire::encode;

/// `virDomainEventType` and the detail values qemud emits.
pub mod lifecycle {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const SUSPENDED: i32 = 3;
    pub const RESUMED: i32 = 4;
    pub const STOPPED: i32 = 5;
    pub const SHUTDOWN: i32 = 6;

    pub const DEFINED_ADDED: i32 = 0;
    pub const DEFINED_UPDATED: i32 = 1;
    pub const UNDEFINED_REMOVED: i32 = 0;
    pub const STARTED_BOOTED: i32 = 0;
    pub const STARTED_RESTORED: i32 = 2;
    pub const SUSPENDED_PAUSED: i32 = 0;
    pub const SUSPENDED_IOERROR: i32 = 2;
    pub const SUSPENDED_WATCHDOG: i32 = 3;
    pub const SUSPENDED_API_ERROR: i32 = 6;
    pub const RESUMED_UNPAUSED: i32 = 0;
    pub const STOPPED_SHUTDOWN: i32 = 0;
    pub const STOPPED_DESTROYED: i32 = 1;
    pub const STOPPED_CRASHED: i32 = 2;
    pub const STOPPED_FAILED: i32 = 5;
    pub const SHUTDOWN_GUEST: i32 = 1;
    pub const SHUTDOWN_HOST: i32 = 2;
}

/// The object kinds clients register event callbacks for, each with its own
/// registration procedures and callback IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Domain,
    Network,
    StoragePool,
    NodeDevice,
    Secret,
    /// Raw QMP events of the QEMU program (`virConnectDomainQemuMonitorEventRegister`).
    QemuMonitor,
}

/// Which object an event is about, to match per-object callbacks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    Uuid(Uuid),
    /// Node devices are known by name only.
    Name(Arc<str>),
}

/// One event about one object, with its message body already encoded so
/// that each subscriber only prefixes its callback ID.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct Event {
    pub family: Family,
    pub object: ObjectKey,
    pub event_id: i32,
    pub program: u32,
    /// The procedure for callbacks registered through the legacy domain
    /// procedures (no callback ID in the message), where there is one.
    pub legacy_procedure: Option<i32>,
    pub callback_procedure: i32,
    /// For QEMU monitor events: the QMP event name, for name filters.
    pub name: Option<Arc<str>>,
    /// The message body after the callback ID.
    pub msg: Bytes,
}

impl Event {
    /// An event of a REMOTE-program family whose callback message is
    /// `{ int callbackID; MSG }`.
    pub fn new<T: serde::Serialize>(
        family: Family,
        object: ObjectKey,
        event_id: i32,
        callback_procedure: i32,
        msg: &T,
    ) -> Result<Event> {
        Ok(Event {
            family,
            object,
            event_id,
            program: program::REMOTE,
            legacy_procedure: None,
            callback_procedure,
            name: None,
            msg: Bytes::from(encode(msg)?),
        })
    }

    fn build<T: serde::Serialize>(
        dom: &NonnullDomain,
        event_id: i32,
        legacy: i32,
        callback: i32,
        msg: &T,
    ) -> Result<Event> {
        Ok(Event {
            family: Family::Domain,
            object: ObjectKey::Uuid(Uuid::from_bytes(dom.uuid.0)),
            event_id,
            program: program::REMOTE,
            legacy_procedure: Some(legacy),
            callback_procedure: callback,
            name: None,
            msg: Bytes::from(encode(msg)?),
        })
    }

    pub fn lifecycle(dom: &NonnullDomain, event: i32, detail: i32) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventLifecycleMsg {
            dom: dom.clone(),
            event,
            detail,
        };
        Self::build(
            dom,
            event_id::LIFECYCLE,
            DOMAIN_EVENT_LIFECYCLE,
            DOMAIN_EVENT_CALLBACK_LIFECYCLE,
            &msg,
        )
    }

    pub fn reboot(dom: &NonnullDomain) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventRebootMsg { dom: dom.clone() };
        Self::build(
            dom,
            event_id::REBOOT,
            DOMAIN_EVENT_REBOOT,
            DOMAIN_EVENT_CALLBACK_REBOOT,
            &msg,
        )
    }

    pub fn rtc_change(dom: &NonnullDomain, offset: i64) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventRtcChangeMsg {
            dom: dom.clone(),
            offset,
        };
        Self::build(
            dom,
            event_id::RTC_CHANGE,
            DOMAIN_EVENT_RTC_CHANGE,
            DOMAIN_EVENT_CALLBACK_RTC_CHANGE,
            &msg,
        )
    }

    pub fn watchdog(dom: &NonnullDomain, action: i32) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventWatchdogMsg {
            dom: dom.clone(),
            action,
        };
        Self::build(
            dom,
            event_id::WATCHDOG,
            DOMAIN_EVENT_WATCHDOG,
            DOMAIN_EVENT_CALLBACK_WATCHDOG,
            &msg,
        )
    }

    pub fn io_error(
        dom: &NonnullDomain,
        src_path: &str,
        dev_alias: &str,
        action: i32,
    ) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventIoErrorMsg {
            dom: dom.clone(),
            src_path: src_path.into(),
            dev_alias: dev_alias.into(),
            action,
        };
        Self::build(
            dom,
            event_id::IO_ERROR,
            DOMAIN_EVENT_IO_ERROR,
            DOMAIN_EVENT_CALLBACK_IO_ERROR,
            &msg,
        )
    }

    pub fn io_error_reason(
        dom: &NonnullDomain,
        src_path: &str,
        dev_alias: &str,
        action: i32,
        reason: &str,
    ) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventIoErrorReasonMsg {
            dom: dom.clone(),
            src_path: src_path.into(),
            dev_alias: dev_alias.into(),
            action,
            reason: reason.into(),
        };
        Self::build(
            dom,
            event_id::IO_ERROR_REASON,
            DOMAIN_EVENT_IO_ERROR_REASON,
            DOMAIN_EVENT_CALLBACK_IO_ERROR_REASON,
            &msg,
        )
    }

    pub fn device_removed(dom: &NonnullDomain, dev_alias: &str) -> Result<Event> {
        let msg = qemud_protocol::remote::DomainEventDeviceRemovedMsg {
            dom: dom.clone(),
            dev_alias: dev_alias.into(),
        };
        Self::build(
            dom,
            event_id::DEVICE_REMOVED,
            DOMAIN_EVENT_DEVICE_REMOVED,
            DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED,
            &msg,
        )
    }

    fn header(&self, procedure: i32) -> Header {
        let version = match self.program {
            program::QEMU => program::QEMU_VERSION,
            _ => program::REMOTE_VERSION,
        };
        Header::message(self.program, version, procedure)
    }

    /// The packet for a callback registered with the modern procedures.
    pub fn callback_packet(&self, callback_id: i32) -> Packet {
        let mut body = BytesMut::with_capacity(4 + self.msg.len());
        body.put_i32(callback_id);
        body.extend_from_slice(&self.msg);
        Packet::new(self.header(self.callback_procedure), body.freeze())
    }

    /// The packet for the legacy registration procedures.
    pub fn legacy_packet(&self) -> Option<Packet> {
        self.legacy_procedure
            .map(|p| Packet::new(self.header(p), self.msg.clone()))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub connection: u64,
    pub recipient: Recipient<Event>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub connection: u64,
}

/// Hands every published event to every subscribed connection, in the order
/// published (so per-domain order is kept).
#[derive(Default)]
pub struct EventBus {
    subscribers: HashMap<u64, Recipient<Event>>,
}

impl Actor for EventBus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Events must never wait for a full mailbox.
        ctx.set_mailbox_capacity(usize::MAX);
    }
}

impl Handler<Subscribe> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.subscribers.insert(msg.connection, msg.recipient);
    }
}

impl Handler<Unsubscribe> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.subscribers.remove(&msg.connection);
    }
}

impl Handler<Event> for EventBus {
    type Result = ();
    fn handle(&mut self, event: Event, _: &mut Self::Context) {
        // do_send never waits: each connection's own bounded queue decides
        // whether a slow client is dropped.
        self.subscribers.retain(|_, r| r.connected());
        for r in self.subscribers.values() {
            r.do_send(event.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qemud_protocol::xdr::Uuid16;

    #[test]
    fn callback_packet_prefixes_callback_id() {
        let dom = NonnullDomain {
            name: "vm".into(),
            uuid: Uuid16([1; 16]),
            id: 1,
        };
        let e = Event::lifecycle(&dom, lifecycle::STARTED, lifecycle::STARTED_BOOTED).unwrap();
        let p = e.callback_packet(9);
        assert_eq!(p.header.procedure, 318);
        assert_eq!(p.header.serial, 0);
        assert_eq!(&p.body[..4], &[0, 0, 0, 9]);
        let legacy = e.legacy_packet().unwrap();
        assert_eq!(legacy.header.procedure, 107);
        assert_eq!(&p.body[4..], &legacy.body[..]);
    }
}
