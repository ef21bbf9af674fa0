//! Table rows of the procedures that read or change the connection's own
//! state: authentication, open and close, features, and the registration
//! of event callbacks for every object kind. They run inside the
//! [`Connection`] actor.

use actix::prelude::*;
use tracing::info;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::XdrVec;

use super::connection::{Callback, Connection};
use super::{Call, Procedure};
use crate::conn_call;
use crate::error::{Error, Result};
use crate::events::{Family, ObjectKey};

pub fn procedures() -> Vec<Procedure> {
    vec![
        conn_call!(AUTH_LIST, BeforeOpen, auth_list),
        conn_call!(CONNECT_OPEN, BeforeOpen, open),
        conn_call!(CONNECT_CLOSE, Read, close),
        conn_call!(CONNECT_GET_URI, Read, get_uri),
        conn_call!(CONNECT_IS_SECURE, Read, is_secure),
        conn_call!(CONNECT_SUPPORTS_FEATURE, BeforeOpen, supports_feature),
        conn_call!(CONNECT_REGISTER_CLOSE_CALLBACK, Read, close_callback),
        conn_call!(CONNECT_UNREGISTER_CLOSE_CALLBACK, Read, close_callback),
        conn_call!(CONNECT_DOMAIN_EVENT_REGISTER, Read, domain_event_register),
        conn_call!(
            CONNECT_DOMAIN_EVENT_DEREGISTER,
            Read,
            domain_event_deregister
        ),
        conn_call!(
            CONNECT_DOMAIN_EVENT_REGISTER_ANY,
            Read,
            domain_event_register_any
        ),
        conn_call!(
            CONNECT_DOMAIN_EVENT_DEREGISTER_ANY,
            Read,
            domain_event_deregister_any
        ),
        conn_call!(
            CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
            Read,
            domain_callback_register
        ),
        conn_call!(
            CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
            Read,
            domain_callback_deregister
        ),
        conn_call!(CONNECT_NETWORK_EVENT_REGISTER_ANY, Read, network_register),
        conn_call!(
            CONNECT_NETWORK_EVENT_DEREGISTER_ANY,
            Read,
            network_deregister
        ),
        conn_call!(CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, Read, pool_register),
        conn_call!(
            CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY,
            Read,
            pool_deregister
        ),
        conn_call!(
            CONNECT_NODE_DEVICE_EVENT_REGISTER_ANY,
            Read,
            nodedev_register
        ),
        conn_call!(
            CONNECT_NODE_DEVICE_EVENT_DEREGISTER_ANY,
            Read,
            nodedev_deregister
        ),
        conn_call!(CONNECT_SECRET_EVENT_REGISTER_ANY, Read, secret_register),
        conn_call!(CONNECT_SECRET_EVENT_DEREGISTER_ANY, Read, secret_deregister),
    ]
}

type Ctx = Context<Connection>;

fn auth_list(_: &mut Connection, _: &mut Ctx, _: &Call, _: ()) -> Result<AuthListRet> {
    Ok(AuthListRet {
        types: XdrVec(vec![AUTH_NONE]),
    })
}

fn open(conn: &mut Connection, _: &mut Ctx, _: &Call, args: ConnectOpenArgs) -> Result<()> {
    if conn.opened {
        return Err(Error::Internal("connection already open".into()));
    }
    if let Some(name) = args
        .name
        .as_ref()
        .map(|n| n.as_str())
        .filter(|n| !n.is_empty())
    {
        // Only the QEMU driver lives here; other drivers are refused the way
        // libvirtd refuses a URI no driver accepts.
        let ok = name.starts_with("qemu:") || name.starts_with("qemu+");
        if !ok {
            return Err(Error::Rpc(format!(
                "no connection driver available for {name}"
            )));
        }
    }
    if args.flags & CONNECT_RO != 0 {
        conn.read_only = true;
    }
    conn.opened = true;
    info!(
        conn = conn.id,
        peer = %conn.peer.description,
        read_only = conn.read_only,
        "client opened connection"
    );
    Ok(())
}

fn close(conn: &mut Connection, _: &mut Ctx, _: &Call, _: ()) -> Result<()> {
    conn.opened = false;
    conn.drop_callbacks();
    Ok(())
}

fn get_uri(_: &mut Connection, _: &mut Ctx, call: &Call, _: ()) -> Result<ConnectGetUriRet> {
    Ok(ConnectGetUriRet {
        uri: call.svc.uri.clone().into(),
    })
}

fn is_secure(conn: &mut Connection, _: &mut Ctx, _: &Call, _: ()) -> Result<ConnectIsSecureRet> {
    Ok(ConnectIsSecureRet {
        secure: conn.peer.secure as i32,
    })
}

fn supports_feature(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectSupportsFeatureArgs,
) -> Result<ConnectSupportsFeatureRet> {
    // Asked before CONNECT_OPEN by libvirt clients: the answer also turns on
    // the server's keepalive pings for this client, as libvirtd does.
    if a.feature == feature::PROGRAM_KEEPALIVE {
        conn.start_keepalive(ctx);
        return Ok(ConnectSupportsFeatureRet { supported: 1 });
    }
    if !conn.opened {
        return Err(Error::NotOpen);
    }
    let supported = match a.feature {
        feature::REMOTE_EVENT_CALLBACK | feature::REMOTE_CLOSE_CALLBACK => true,
        // Descriptors travel only over UNIX sockets.
        feature::FD_PASSING => conn.fd_passing(),
        _ => false,
    };
    Ok(ConnectSupportsFeatureRet {
        supported: supported as i32,
    })
}

fn close_callback(_: &mut Connection, _: &mut Ctx, _: &Call, _: ()) -> Result<()> {
    Ok(())
}

// Domain events: the legacy procedures (no callback ID on the wire) and the
// callback procedures.

/// One past the last `virDomainEventID` libvirt 9.0 knows.
const DOMAIN_EVENT_ID_LAST: i32 = 26;
const NETWORK_EVENT_ID_LAST: i32 = 1;
const STORAGE_POOL_EVENT_ID_LAST: i32 = 2;
const NODE_DEVICE_EVENT_ID_LAST: i32 = 2;
const SECRET_EVENT_ID_LAST: i32 = 2;

fn check_event_id(id: i32, last: i32, what: &str) -> Result<()> {
    if !(0..last).contains(&id) {
        return Err(Error::Internal(format!("unsupported {what}event ID {id}")));
    }
    Ok(())
}

fn domain_event_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    _: (),
) -> Result<ConnectDomainEventRegisterRet> {
    conn.add_callback(Callback::legacy(event_id::LIFECYCLE), ctx)?;
    Ok(ConnectDomainEventRegisterRet { cb_registered: 1 })
}

fn domain_event_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    _: (),
) -> Result<ConnectDomainEventDeregisterRet> {
    conn.remove_legacy(event_id::LIFECYCLE)?;
    Ok(ConnectDomainEventDeregisterRet { cb_registered: 0 })
}

fn domain_event_register_any(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectDomainEventRegisterAnyArgs,
) -> Result<()> {
    check_event_id(a.event_id, DOMAIN_EVENT_ID_LAST, "")?;
    conn.add_callback(Callback::legacy(a.event_id), ctx)?;
    Ok(())
}

fn domain_event_deregister_any(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectDomainEventDeregisterAnyArgs,
) -> Result<()> {
    check_event_id(a.event_id, DOMAIN_EVENT_ID_LAST, "")?;
    conn.remove_legacy(a.event_id)
}

fn domain_callback_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectDomainEventCallbackRegisterAnyArgs,
) -> Result<ConnectDomainEventCallbackRegisterAnyRet> {
    check_event_id(a.event_id, DOMAIN_EVENT_ID_LAST, "")?;
    let object = a
        .dom
        .map(|d| ObjectKey::Uuid(uuid::Uuid::from_bytes(d.uuid.0)));
    let callback_id = conn.add_callback(Callback::new(Family::Domain, a.event_id, object), ctx)?;
    Ok(ConnectDomainEventCallbackRegisterAnyRet { callback_id })
}

fn domain_callback_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectDomainEventCallbackDeregisterAnyArgs,
) -> Result<()> {
    conn.remove_callback(Family::Domain, a.callback_id, "domain event")
}

// Other object kinds: one register/deregister pair each.

fn network_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectNetworkEventRegisterAnyArgs,
) -> Result<ConnectNetworkEventRegisterAnyRet> {
    check_event_id(a.event_id, NETWORK_EVENT_ID_LAST, "network ")?;
    let object = a
        .net
        .map(|n| ObjectKey::Uuid(uuid::Uuid::from_bytes(n.uuid.0)));
    let callback_id = conn.add_callback(Callback::new(Family::Network, a.event_id, object), ctx)?;
    Ok(ConnectNetworkEventRegisterAnyRet { callback_id })
}

fn network_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectNetworkEventDeregisterAnyArgs,
) -> Result<()> {
    conn.remove_callback(Family::Network, a.callback_id, "network event")
}

fn pool_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectStoragePoolEventRegisterAnyArgs,
) -> Result<ConnectStoragePoolEventRegisterAnyRet> {
    check_event_id(a.event_id, STORAGE_POOL_EVENT_ID_LAST, "storage pool ")?;
    let object = a
        .pool
        .map(|p| ObjectKey::Uuid(uuid::Uuid::from_bytes(p.uuid.0)));
    let cb = Callback::new(Family::StoragePool, a.event_id, object);
    let callback_id = conn.add_callback(cb, ctx)?;
    Ok(ConnectStoragePoolEventRegisterAnyRet { callback_id })
}

fn pool_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectStoragePoolEventDeregisterAnyArgs,
) -> Result<()> {
    conn.remove_callback(Family::StoragePool, a.callback_id, "storage pool event")
}

fn nodedev_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectNodeDeviceEventRegisterAnyArgs,
) -> Result<ConnectNodeDeviceEventRegisterAnyRet> {
    check_event_id(a.event_id, NODE_DEVICE_EVENT_ID_LAST, "node device ")?;
    let object = a.dev.map(|d| ObjectKey::Name(d.name.0.into()));
    let cb = Callback::new(Family::NodeDevice, a.event_id, object);
    let callback_id = conn.add_callback(cb, ctx)?;
    Ok(ConnectNodeDeviceEventRegisterAnyRet { callback_id })
}

fn nodedev_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectNodeDeviceEventDeregisterAnyArgs,
) -> Result<()> {
    conn.remove_callback(Family::NodeDevice, a.callback_id, "node device event")
}

fn secret_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectSecretEventRegisterAnyArgs,
) -> Result<ConnectSecretEventRegisterAnyRet> {
    check_event_id(a.event_id, SECRET_EVENT_ID_LAST, "secret ")?;
    let object = a
        .secret
        .map(|s| ObjectKey::Uuid(uuid::Uuid::from_bytes(s.uuid.0)));
    let callback_id = conn.add_callback(Callback::new(Family::Secret, a.event_id, object), ctx)?;
    Ok(ConnectSecretEventRegisterAnyRet { callback_id })
}

fn secret_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectSecretEventDeregisterAnyArgs,
) -> Result<()> {
    // libvirt 9.0 names node devices in this message, a slip we keep so that
    // clients matching on it see the same text.
    conn.remove_callback(Family::Secret, a.callback_id, "node device event")
}
