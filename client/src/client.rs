//! The connection: one task owns the stream, sends calls as they come,
//! matches replies by serial (so any number may be in flight), answers
//! keepalive pings and hands event messages to whoever listens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use qemud_protocol::header::{MessageStatus, MessageType};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;

// Shapes many procedures share on the wire; each is one procedure's own
// generated type, used for all procedures of that shape.
/// `{ dom }`.
type DomainArgs = DomainCreateArgs;
/// `{ dom, flags }`.
type DomainFlagsArgs = DomainGetStateArgs;
/// `{ dom }` as a reply.
type DomainRet = DomainLookupByNameRet;
use qemud_protocol::uri::ConnectUri;
use qemud_protocol::xdr::{self, Uuid16, XdrString};
use qemud_protocol::{keepalive, program, Header, Packet, RemoteError, RpcCodec};

use crate::transport;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Remote(Box<RemoteError>),
    #[error("failed to connect: {0}")]
    Connect(String),
    #[error("invalid URI: {0}")]
    Uri(String),
    #[error("connection closed")]
    Closed,
    #[error("no reply to {0} in time")]
    Timeout(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The libvirt error code, when the server sent one.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClientError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// An event message as received (REMOTE program, MESSAGE type).
#[derive(Clone, Debug)]
pub struct EventMessage {
    pub procedure: i32,
    pub body: Bytes,
    /// When the message was read off the socket.
    pub received: std::time::Instant,
}

/// A decoded lifecycle event (modern callback form).
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleEvent {
    pub callback_id: i32,
    pub domain: String,
    pub event: i32,
    pub detail: i32,
}

impl EventMessage {
    pub fn lifecycle(&self) -> Option<LifecycleEvent> {
        if self.procedure != DOMAIN_EVENT_CALLBACK_LIFECYCLE {
            return None;
        }
        let m: DomainEventCallbackLifecycleMsg = xdr::from_bytes(&self.body).ok()?;
        Some(LifecycleEvent {
            callback_id: m.callback_id,
            domain: m.msg.dom.name.0,
            event: m.msg.event,
            detail: m.msg.detail,
        })
    }
}

struct Outgoing {
    packet: Packet,
    reply: Option<oneshot::Sender<Packet>>,
    /// Where STREAM packets on this call's serial go, for calls that open
    /// a stream.
    stream: Option<mpsc::UnboundedSender<Packet>>,
}

pub struct Client {
    requests: mpsc::Sender<Outgoing>,
    serial: AtomicU32,
    events: Mutex<Option<mpsc::UnboundedReceiver<EventMessage>>>,
    timeout: Duration,
    read_only: bool,
}

/// How long a call may take before the client gives up on it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Silence after which the client pings the server.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered pings after which the server counts as gone.
const KEEPALIVE_COUNT: u32 = 5;

impl Client {
    /// Connects and opens the connection (`virConnectOpen`).
    pub async fn connect(uri: &str) -> Result<Client> {
        Self::connect_with(uri, false).await
    }

    pub async fn connect_read_only(uri: &str) -> Result<Client> {
        Self::connect_with(uri, true).await
    }

    pub async fn connect_with(uri: &str, read_only: bool) -> Result<Client> {
        let parsed = ConnectUri::parse(uri).map_err(|e| ClientError::Uri(e.to_string()))?;
        let stream = transport::open(&parsed, read_only).await?;
        let client = Client::over(stream, read_only);
        let auth: AuthListRet = client.call(AUTH_LIST, &()).await?;
        if !auth.types.0.contains(&AUTH_NONE) && !auth.types.0.is_empty() {
            return Err(ClientError::Connect(format!(
                "server requires an authentication method this client lacks: {:?}",
                auth.types.0
            )));
        }
        let open = ConnectOpenArgs {
            name: Some(XdrString(parsed.driver_uri())),
            flags: if read_only { CONNECT_RO } else { 0 },
        };
        client.call_void(CONNECT_OPEN, &open).await?;
        Ok(client)
    }

    /// Wraps an already open stream (no handshake).
    pub fn over(stream: transport::BoxedStream, read_only: bool) -> Client {
        let (tx, rx) = mpsc::channel(1024);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Framed::new(stream, RpcCodec::default()), rx, ev_tx));
        Client {
            requests: tx,
            serial: AtomicU32::new(1),
            events: Mutex::new(Some(ev_rx)),
            timeout: DEFAULT_TIMEOUT,
            read_only,
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The event messages of this connection; can be taken once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<EventMessage>> {
        self.events.lock().ok()?.take()
    }

    /// Sends one call with an encoded body and returns the reply body.
    pub async fn call_raw(&self, procedure: i32, body: Vec<u8>) -> Result<Bytes> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let header = Header::call(program::REMOTE, program::REMOTE_VERSION, procedure, serial);
        self.call_header(header, body, None).await
    }

    /// Sends one call with a ready header; `stream` receives the STREAM
    /// packets that follow its reply.
    async fn call_header(
        &self,
        header: Header,
        body: Vec<u8>,
        stream: Option<mpsc::UnboundedSender<Packet>>,
    ) -> Result<Bytes> {
        let procedure = header.procedure;
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Outgoing {
                packet: Packet::new(header, body),
                reply: Some(tx),
                stream,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        let reply = tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout(format!("procedure {procedure}")))?
            .map_err(|_| ClientError::Closed)?;
        match reply.header.status {
            MessageStatus::Ok => Ok(reply.body),
            MessageStatus::Error => {
                let e: RemoteError =
                    xdr::from_bytes(&reply.body).map_err(|e| ClientError::Protocol(e.0))?;
                Err(ClientError::Remote(Box::new(e)))
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected reply status {other:?}"
            ))),
        }
    }

    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        procedure: i32,
        args: &A,
    ) -> Result<R> {
        let body = xdr::to_bytes(args).map_err(|e| ClientError::Protocol(e.0))?;
        let reply = self.call_raw(procedure, body).await?;
        xdr::from_bytes(&reply).map_err(|e| ClientError::Protocol(e.0))
    }

    pub async fn call_void<A: Serialize>(&self, procedure: i32, args: &A) -> Result<()> {
        let body = xdr::to_bytes(args).map_err(|e| ClientError::Protocol(e.0))?;
        self.call_raw(procedure, body).await.map(|_| ())
    }

    // Host.

    pub async fn lib_version(&self) -> Result<u64> {
        Ok(self
            .call::<_, ConnectGetLibVersionRet>(CONNECT_GET_LIB_VERSION, &())
            .await?
            .lib_ver)
    }

    pub async fn hv_version(&self) -> Result<u64> {
        Ok(self
            .call::<_, ConnectGetVersionRet>(CONNECT_GET_VERSION, &())
            .await?
            .hv_ver)
    }

    pub async fn hv_type(&self) -> Result<String> {
        Ok(self
            .call::<_, ConnectGetTypeRet>(CONNECT_GET_TYPE, &())
            .await?
            .type_
            .0)
    }

    pub async fn hostname(&self) -> Result<String> {
        Ok(self
            .call::<_, ConnectGetHostnameRet>(CONNECT_GET_HOSTNAME, &())
            .await?
            .hostname
            .0)
    }

    pub async fn uri(&self) -> Result<String> {
        Ok(self
            .call::<_, ConnectGetUriRet>(CONNECT_GET_URI, &())
            .await?
            .uri
            .0)
    }

    pub async fn node_info(&self) -> Result<NodeGetInfoRet> {
        self.call(NODE_GET_INFO, &()).await
    }

    pub async fn capabilities(&self) -> Result<String> {
        Ok(self
            .call::<_, ConnectGetCapabilitiesRet>(CONNECT_GET_CAPABILITIES, &())
            .await?
            .capabilities
            .0)
    }

    pub async fn close(&self) -> Result<()> {
        self.call_void(CONNECT_CLOSE, &()).await
    }

    // Domains.

    pub async fn list_all_domains(&self, flags: u32) -> Result<Vec<NonnullDomain>> {
        let r: ConnectListAllDomainsRet = self
            .call(
                CONNECT_LIST_ALL_DOMAINS,
                &ConnectListAllDomainsArgs {
                    need_results: 1,
                    flags,
                },
            )
            .await?;
        Ok(r.domains.0)
    }

    pub async fn lookup_by_name(&self, name: &str) -> Result<NonnullDomain> {
        let r: DomainRet = self
            .call(
                DOMAIN_LOOKUP_BY_NAME,
                &DomainLookupByNameArgs { name: name.into() },
            )
            .await?;
        Ok(r.dom)
    }

    pub async fn lookup_by_uuid(&self, uuid: uuid::Uuid) -> Result<NonnullDomain> {
        let r: DomainRet = self
            .call(
                DOMAIN_LOOKUP_BY_UUID,
                &DomainLookupByUuidArgs {
                    uuid: Uuid16(*uuid.as_bytes()),
                },
            )
            .await?;
        Ok(r.dom)
    }

    pub async fn lookup_by_id(&self, id: i32) -> Result<NonnullDomain> {
        let r: DomainRet = self
            .call(DOMAIN_LOOKUP_BY_ID, &DomainLookupByIdArgs { id })
            .await?;
        Ok(r.dom)
    }

    /// Finds a domain by name, UUID or id, like virsh does.
    pub async fn lookup(&self, what: &str) -> Result<NonnullDomain> {
        if let Ok(id) = what.parse::<i32>() {
            if let Ok(d) = self.lookup_by_id(id).await {
                return Ok(d);
            }
        }
        if let Ok(u) = uuid::Uuid::parse_str(what) {
            if let Ok(d) = self.lookup_by_uuid(u).await {
                return Ok(d);
            }
        }
        self.lookup_by_name(what).await
    }

    pub async fn define_xml(&self, xml: &str) -> Result<NonnullDomain> {
        let r: DomainRet = self
            .call(DOMAIN_DEFINE_XML, &DomainDefineXmlArgs { xml: xml.into() })
            .await?;
        Ok(r.dom)
    }

    pub async fn create_xml(&self, xml: &str, flags: u32) -> Result<NonnullDomain> {
        let r: DomainRet = self
            .call(
                DOMAIN_CREATE_XML,
                &DomainCreateXmlArgs {
                    xml_desc: xml.into(),
                    flags,
                },
            )
            .await?;
        Ok(r.dom)
    }

    async fn dom_call(&self, procedure: i32, dom: &NonnullDomain) -> Result<()> {
        self.call_void(procedure, &DomainArgs { dom: dom.clone() })
            .await
    }

    async fn dom_flags_call(&self, procedure: i32, dom: &NonnullDomain, flags: u32) -> Result<()> {
        self.call_void(
            procedure,
            &DomainFlagsArgs {
                dom: dom.clone(),
                flags,
            },
        )
        .await
    }

    pub async fn undefine(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_flags_call(DOMAIN_UNDEFINE_FLAGS, dom, 0).await
    }

    pub async fn start(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_call(DOMAIN_CREATE, dom).await
    }

    pub async fn shutdown(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_call(DOMAIN_SHUTDOWN, dom).await
    }

    pub async fn reboot(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_flags_call(DOMAIN_REBOOT, dom, 0).await
    }

    pub async fn reset(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_flags_call(DOMAIN_RESET, dom, 0).await
    }

    pub async fn destroy(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_call(DOMAIN_DESTROY, dom).await
    }

    pub async fn suspend(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_call(DOMAIN_SUSPEND, dom).await
    }

    pub async fn resume(&self, dom: &NonnullDomain) -> Result<()> {
        self.dom_call(DOMAIN_RESUME, dom).await
    }

    pub async fn info(&self, dom: &NonnullDomain) -> Result<DomainGetInfoRet> {
        self.call(DOMAIN_GET_INFO, &DomainArgs { dom: dom.clone() })
            .await
    }

    pub async fn state(&self, dom: &NonnullDomain) -> Result<(i32, i32)> {
        let r: DomainGetStateRet = self
            .call(
                DOMAIN_GET_STATE,
                &DomainFlagsArgs {
                    dom: dom.clone(),
                    flags: 0,
                },
            )
            .await?;
        Ok((r.state, r.reason))
    }

    pub async fn xml_desc(&self, dom: &NonnullDomain, flags: u32) -> Result<String> {
        let r: DomainGetXmlDescRet = self
            .call(
                DOMAIN_GET_XML_DESC,
                &DomainFlagsArgs {
                    dom: dom.clone(),
                    flags,
                },
            )
            .await?;
        Ok(r.xml.0)
    }

    pub async fn autostart(&self, dom: &NonnullDomain) -> Result<bool> {
        let r: DomainGetAutostartRet = self
            .call(DOMAIN_GET_AUTOSTART, &DomainArgs { dom: dom.clone() })
            .await?;
        Ok(r.autostart != 0)
    }

    pub async fn set_autostart(&self, dom: &NonnullDomain, on: bool) -> Result<()> {
        self.call_void(
            DOMAIN_SET_AUTOSTART,
            &DomainSetAutostartArgs {
                dom: dom.clone(),
                autostart: on as i32,
            },
        )
        .await
    }

    pub async fn is_persistent(&self, dom: &NonnullDomain) -> Result<bool> {
        let r: DomainIsPersistentRet = self
            .call(DOMAIN_IS_PERSISTENT, &DomainArgs { dom: dom.clone() })
            .await?;
        Ok(r.persistent != 0)
    }

    pub async fn os_type(&self, dom: &NonnullDomain) -> Result<String> {
        let r: DomainGetOsTypeRet = self
            .call(DOMAIN_GET_OS_TYPE, &DomainArgs { dom: dom.clone() })
            .await?;
        Ok(r.type_.0)
    }

    /// Registers for lifecycle events (of one domain, or all); returns the
    /// callback id that event messages carry.
    pub async fn register_lifecycle(&self, dom: Option<NonnullDomain>) -> Result<i32> {
        let r: ConnectDomainEventCallbackRegisterAnyRet = self
            .call(
                CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                &ConnectDomainEventCallbackRegisterAnyArgs {
                    event_id: event_id::LIFECYCLE,
                    dom,
                },
            )
            .await?;
        Ok(r.callback_id)
    }

    pub async fn deregister(&self, callback_id: i32) -> Result<()> {
        self.call_void(
            CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
            &ConnectDomainEventCallbackDeregisterAnyArgs { callback_id },
        )
        .await
    }
}

// Storage pools and volumes.
impl Client {
    /// A pool by name, or by UUID when `what` is one.
    pub async fn pool_lookup(&self, what: &str) -> Result<NonnullStoragePool> {
        let by_name: Result<StoragePoolLookupByNameRet> = self
            .call(
                STORAGE_POOL_LOOKUP_BY_NAME,
                &StoragePoolLookupByNameArgs { name: what.into() },
            )
            .await;
        match (by_name, uuid::Uuid::parse_str(what)) {
            (Ok(r), _) => Ok(r.pool),
            (Err(_), Ok(u)) => {
                let r: StoragePoolLookupByUuidRet = self
                    .call(
                        STORAGE_POOL_LOOKUP_BY_UUID,
                        &StoragePoolLookupByUuidArgs {
                            uuid: Uuid16(*u.as_bytes()),
                        },
                    )
                    .await?;
                Ok(r.pool)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    pub async fn list_all_pools(&self, flags: u32) -> Result<Vec<NonnullStoragePool>> {
        let r: ConnectListAllStoragePoolsRet = self
            .call(
                CONNECT_LIST_ALL_STORAGE_POOLS,
                &ConnectListAllStoragePoolsArgs {
                    need_results: 1,
                    flags,
                },
            )
            .await?;
        Ok(r.pools.0)
    }

    pub async fn pool_define_xml(&self, xml: &str) -> Result<NonnullStoragePool> {
        let r: StoragePoolDefineXmlRet = self
            .call(
                STORAGE_POOL_DEFINE_XML,
                &StoragePoolDefineXmlArgs {
                    xml: xml.into(),
                    flags: 0,
                },
            )
            .await?;
        Ok(r.pool)
    }

    pub async fn pool_build(&self, pool: &NonnullStoragePool, flags: u32) -> Result<()> {
        let a = StoragePoolBuildArgs {
            pool: pool.clone(),
            flags,
        };
        self.call_void(STORAGE_POOL_BUILD, &a).await
    }

    pub async fn pool_start(&self, pool: &NonnullStoragePool, flags: u32) -> Result<()> {
        let a = StoragePoolCreateArgs {
            pool: pool.clone(),
            flags,
        };
        self.call_void(STORAGE_POOL_CREATE, &a).await
    }

    pub async fn pool_destroy(&self, pool: &NonnullStoragePool) -> Result<()> {
        let a = StoragePoolDestroyArgs { pool: pool.clone() };
        self.call_void(STORAGE_POOL_DESTROY, &a).await
    }

    pub async fn pool_delete(&self, pool: &NonnullStoragePool) -> Result<()> {
        let a = StoragePoolDeleteArgs {
            pool: pool.clone(),
            flags: 0,
        };
        self.call_void(STORAGE_POOL_DELETE, &a).await
    }

    pub async fn pool_undefine(&self, pool: &NonnullStoragePool) -> Result<()> {
        let a = StoragePoolUndefineArgs { pool: pool.clone() };
        self.call_void(STORAGE_POOL_UNDEFINE, &a).await
    }

    pub async fn pool_refresh(&self, pool: &NonnullStoragePool) -> Result<()> {
        let a = StoragePoolRefreshArgs {
            pool: pool.clone(),
            flags: 0,
        };
        self.call_void(STORAGE_POOL_REFRESH, &a).await
    }

    pub async fn pool_info(&self, pool: &NonnullStoragePool) -> Result<StoragePoolGetInfoRet> {
        let a = StoragePoolGetInfoArgs { pool: pool.clone() };
        self.call(STORAGE_POOL_GET_INFO, &a).await
    }

    pub async fn pool_xml(&self, pool: &NonnullStoragePool, flags: u32) -> Result<String> {
        let a = StoragePoolGetXmlDescArgs {
            pool: pool.clone(),
            flags,
        };
        let r: StoragePoolGetXmlDescRet = self.call(STORAGE_POOL_GET_XML_DESC, &a).await?;
        Ok(r.xml.0)
    }

    pub async fn pool_autostart(&self, pool: &NonnullStoragePool) -> Result<bool> {
        let a = StoragePoolGetAutostartArgs { pool: pool.clone() };
        let r: StoragePoolGetAutostartRet = self.call(STORAGE_POOL_GET_AUTOSTART, &a).await?;
        Ok(r.autostart != 0)
    }

    pub async fn pool_is_persistent(&self, pool: &NonnullStoragePool) -> Result<bool> {
        let a = StoragePoolIsPersistentArgs { pool: pool.clone() };
        let r: StoragePoolIsPersistentRet = self.call(STORAGE_POOL_IS_PERSISTENT, &a).await?;
        Ok(r.persistent != 0)
    }

    pub async fn list_all_volumes(
        &self,
        pool: &NonnullStoragePool,
    ) -> Result<Vec<NonnullStorageVol>> {
        let a = StoragePoolListAllVolumesArgs {
            pool: pool.clone(),
            need_results: 1,
            flags: 0,
        };
        let r: StoragePoolListAllVolumesRet = self.call(STORAGE_POOL_LIST_ALL_VOLUMES, &a).await?;
        Ok(r.vols.0)
    }

    pub async fn vol_lookup(
        &self,
        pool: &NonnullStoragePool,
        name: &str,
    ) -> Result<NonnullStorageVol> {
        let a = StorageVolLookupByNameArgs {
            pool: pool.clone(),
            name: name.into(),
        };
        let r: StorageVolLookupByNameRet = self.call(STORAGE_VOL_LOOKUP_BY_NAME, &a).await?;
        Ok(r.vol)
    }

    pub async fn vol_create_xml(
        &self,
        pool: &NonnullStoragePool,
        xml: &str,
        flags: u32,
    ) -> Result<NonnullStorageVol> {
        let a = StorageVolCreateXmlArgs {
            pool: pool.clone(),
            xml: xml.into(),
            flags,
        };
        let r: StorageVolCreateXmlRet = self.call(STORAGE_VOL_CREATE_XML, &a).await?;
        Ok(r.vol)
    }

    pub async fn vol_info(&self, vol: &NonnullStorageVol) -> Result<StorageVolGetInfoRet> {
        let a = StorageVolGetInfoArgs { vol: vol.clone() };
        self.call(STORAGE_VOL_GET_INFO, &a).await
    }

    pub async fn vol_xml(&self, vol: &NonnullStorageVol) -> Result<String> {
        let a = StorageVolGetXmlDescArgs {
            vol: vol.clone(),
            flags: 0,
        };
        let r: StorageVolGetXmlDescRet = self.call(STORAGE_VOL_GET_XML_DESC, &a).await?;
        Ok(r.xml.0)
    }

    pub async fn vol_delete(&self, vol: &NonnullStorageVol) -> Result<()> {
        let a = StorageVolDeleteArgs {
            vol: vol.clone(),
            flags: 0,
        };
        self.call_void(STORAGE_VOL_DELETE, &a).await
    }

    /// Opens an upload into `vol` from `offset` (`length` 0: to the end of
    /// what is sent); send the data, then finish the stream.
    pub async fn vol_upload(
        &self,
        vol: &NonnullStorageVol,
        offset: u64,
        length: u64,
    ) -> Result<ClientStream> {
        let a = StorageVolUploadArgs {
            vol: vol.clone(),
            offset,
            length,
            flags: 0,
        };
        Ok(self.call_stream(STORAGE_VOL_UPLOAD, &a).await?.1)
    }

    /// Opens a download of `vol` from `offset` (`length` 0: to its end).
    pub async fn vol_download(
        &self,
        vol: &NonnullStorageVol,
        offset: u64,
        length: u64,
    ) -> Result<ClientStream> {
        let a = StorageVolDownloadArgs {
            vol: vol.clone(),
            offset,
            length,
            flags: 0,
        };
        Ok(self.call_stream(STORAGE_VOL_DOWNLOAD, &a).await?.1)
    }

    pub async fn vol_resize(
        &self,
        vol: &NonnullStorageVol,
        capacity: u64,
        flags: u32,
    ) -> Result<()> {
        let a = StorageVolResizeArgs {
            vol: vol.clone(),
            capacity,
            flags,
        };
        self.call_void(STORAGE_VOL_RESIZE, &a).await
    }
}

/// Virtual networks.
impl Client {
    /// A network by name, or by UUID.
    pub async fn network_lookup(&self, what: &str) -> Result<NonnullNetwork> {
        let by_name: Result<NetworkLookupByNameRet> = self
            .call(
                NETWORK_LOOKUP_BY_NAME,
                &NetworkLookupByNameArgs { name: what.into() },
            )
            .await;
        match (by_name, uuid::Uuid::parse_str(what)) {
            (Ok(r), _) => Ok(r.net),
            (Err(_), Ok(u)) => {
                let r: NetworkLookupByUuidRet = self
                    .call(
                        NETWORK_LOOKUP_BY_UUID,
                        &NetworkLookupByUuidArgs {
                            uuid: Uuid16(*u.as_bytes()),
                        },
                    )
                    .await?;
                Ok(r.net)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    pub async fn network_define(&self, xml: &str) -> Result<NonnullNetwork> {
        let r: NetworkDefineXmlRet = self
            .call(
                NETWORK_DEFINE_XML,
                &NetworkDefineXmlArgs { xml: xml.into() },
            )
            .await?;
        Ok(r.net)
    }

    pub async fn network_start(&self, net: &NonnullNetwork) -> Result<()> {
        self.call_void(NETWORK_CREATE, &NetworkCreateArgs { net: net.clone() })
            .await
    }

    pub async fn network_destroy(&self, net: &NonnullNetwork) -> Result<()> {
        self.call_void(NETWORK_DESTROY, &NetworkDestroyArgs { net: net.clone() })
            .await
    }

    pub async fn network_undefine(&self, net: &NonnullNetwork) -> Result<()> {
        self.call_void(NETWORK_UNDEFINE, &NetworkUndefineArgs { net: net.clone() })
            .await
    }

    /// `flags` 1: the persistent definition.
    pub async fn network_xml(&self, net: &NonnullNetwork, flags: u32) -> Result<String> {
        let r: NetworkGetXmlDescRet = self
            .call(
                NETWORK_GET_XML_DESC,
                &NetworkGetXmlDescArgs {
                    net: net.clone(),
                    flags,
                },
            )
            .await?;
        Ok(r.xml.0)
    }

    pub async fn network_is_active(&self, net: &NonnullNetwork) -> Result<bool> {
        let r: NetworkIsActiveRet = self
            .call(NETWORK_IS_ACTIVE, &NetworkIsActiveArgs { net: net.clone() })
            .await?;
        Ok(r.active != 0)
    }

    pub async fn network_is_persistent(&self, net: &NonnullNetwork) -> Result<bool> {
        let r: NetworkIsPersistentRet = self
            .call(
                NETWORK_IS_PERSISTENT,
                &NetworkIsPersistentArgs { net: net.clone() },
            )
            .await?;
        Ok(r.persistent != 0)
    }

    pub async fn network_autostart(&self, net: &NonnullNetwork) -> Result<bool> {
        let r: NetworkGetAutostartRet = self
            .call(
                NETWORK_GET_AUTOSTART,
                &NetworkGetAutostartArgs { net: net.clone() },
            )
            .await?;
        Ok(r.autostart != 0)
    }

    pub async fn network_bridge(&self, net: &NonnullNetwork) -> Result<String> {
        let r: NetworkGetBridgeNameRet = self
            .call(
                NETWORK_GET_BRIDGE_NAME,
                &NetworkGetBridgeNameArgs { net: net.clone() },
            )
            .await?;
        Ok(r.name.0)
    }

    pub async fn network_dhcp_leases(&self, net: &NonnullNetwork) -> Result<Vec<NetworkDhcpLease>> {
        let r: NetworkGetDhcpLeasesRet = self
            .call(
                NETWORK_GET_DHCP_LEASES,
                &NetworkGetDhcpLeasesArgs {
                    net: net.clone(),
                    mac: None,
                    need_results: 1,
                    flags: 0,
                },
            )
            .await?;
        Ok(r.leases.0)
    }
}

/// The task that owns the stream.
async fn run(
    mut framed: Framed<transport::BoxedStream, RpcCodec>,
    mut requests: mpsc::Receiver<Outgoing>,
    events: mpsc::UnboundedSender<EventMessage>,
) {
    let mut pending: HashMap<u32, oneshot::Sender<Packet>> = HashMap::new();
    let mut streams: HashMap<u32, mpsc::UnboundedSender<Packet>> = HashMap::new();
    // Keepalive like libvirt's clients: ping a silent server every
    // KEEPALIVE_INTERVAL and give up after KEEPALIVE_COUNT unanswered pings.
    let mut ticker = tokio::time::interval(KEEPALIVE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let mut unanswered = 0u32;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_heard.elapsed() < KEEPALIVE_INTERVAL {
                    continue;
                }
                if unanswered >= KEEPALIVE_COUNT {
                    break;
                }
                unanswered += 1;
                if framed.send(keepalive::ping()).await.is_err() {
                    break;
                }
            }
            req = requests.recv() => {
                let Some(req) = req else { break };
                if let Some(reply) = req.reply {
                    pending.insert(req.packet.header.serial, reply);
                }
                if let Some(stream) = req.stream {
                    streams.insert(req.packet.header.serial, stream);
                }
                // Batch whatever else is already queued into one flush.
                if framed.feed(req.packet).await.is_err() {
                    break;
                }
                let mut failed = false;
                while let Ok(more) = requests.try_recv() {
                    if let Some(reply) = more.reply {
                        pending.insert(more.packet.header.serial, reply);
                    }
                    if let Some(stream) = more.stream {
                        streams.insert(more.packet.header.serial, stream);
                    }
                    if framed.feed(more.packet).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || framed.flush().await.is_err() {
                    break;
                }
            }
            packet = framed.next() => {
                let Some(Ok(packet)) = packet else { break };
                last_heard = tokio::time::Instant::now();
                unanswered = 0;
                let h = packet.header;
                match (h.program, h.kind) {
                    (program::KEEPALIVE, MessageType::Message)
                        if h.procedure == keepalive::PROC_PING
                            && framed.send(keepalive::pong()).await.is_err() =>
                    {
                        break;
                    }
                    (program::REMOTE | program::QEMU, MessageType::Reply) => {
                        if h.status != MessageStatus::Ok {
                            streams.remove(&h.serial);
                        }
                        if let Some(tx) = pending.remove(&h.serial) {
                            let _ = tx.send(packet);
                        }
                    }
                    (program::REMOTE | program::QEMU, MessageType::Stream) => {
                        // Data packets end with the stream's final OK or ERROR.
                        let last = h.status != MessageStatus::Continue;
                        if let Some(tx) = streams.get(&h.serial) {
                            if tx.send(packet).is_err() || last {
                                streams.remove(&h.serial);
                            }
                        }
                    }
                    (program::REMOTE, MessageType::Message) => {
                        let _ = events.send(EventMessage {
                            procedure: h.procedure,
                            body: packet.body,
                            received: std::time::Instant::now(),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    // Dropping `pending` wakes every waiting caller with Closed.
}

// Secrets, node devices, host interfaces, networks and storage pools.
impl Client {
    pub async fn secret_define(&self, xml: &str) -> Result<NonnullSecret> {
        let r: SecretDefineXmlRet = self
            .call(
                SECRET_DEFINE_XML,
                &SecretDefineXmlArgs {
                    xml: xml.into(),
                    flags: 0,
                },
            )
            .await?;
        Ok(r.secret)
    }

    pub async fn list_all_secrets(&self, flags: u32) -> Result<Vec<NonnullSecret>> {
        let r: ConnectListAllSecretsRet = self
            .call(
                CONNECT_LIST_ALL_SECRETS,
                &ConnectListAllSecretsArgs {
                    need_results: 1,
                    flags,
                },
            )
            .await?;
        Ok(r.secrets.0)
    }

    pub async fn secret_lookup(&self, uuid: uuid::Uuid) -> Result<NonnullSecret> {
        let r: SecretLookupByUuidRet = self
            .call(
                SECRET_LOOKUP_BY_UUID,
                &SecretLookupByUuidArgs { uuid: uuid.into() },
            )
            .await?;
        Ok(r.secret)
    }

    pub async fn secret_xml(&self, secret: &NonnullSecret) -> Result<String> {
        let r: SecretGetXmlDescRet = self
            .call(
                SECRET_GET_XML_DESC,
                &SecretGetXmlDescArgs {
                    secret: secret.clone(),
                    flags: 0,
                },
            )
            .await?;
        Ok(r.xml.0)
    }

    pub async fn secret_set_value(&self, secret: &NonnullSecret, value: &[u8]) -> Result<()> {
        self.call_void(
            SECRET_SET_VALUE,
            &SecretSetValueArgs {
                secret: secret.clone(),
                value: xdr::Opaque(value.to_vec()),
                flags: 0,
            },
        )
        .await
    }

    pub async fn secret_get_value(&self, secret: &NonnullSecret) -> Result<Vec<u8>> {
        let r: SecretGetValueRet = self
            .call(
                SECRET_GET_VALUE,
                &SecretGetValueArgs {
                    secret: secret.clone(),
                    flags: 0,
                },
            )
            .await?;
        Ok(r.value.0)
    }

    pub async fn secret_undefine(&self, secret: &NonnullSecret) -> Result<()> {
        self.call_void(
            SECRET_UNDEFINE,
            &SecretUndefineArgs {
                secret: secret.clone(),
            },
        )
        .await
    }

    /// Node device names; `flags` are `virConnectListAllNodeDeviceFlags`.
    pub async fn list_all_node_devices(&self, flags: u32) -> Result<Vec<String>> {
        let r: ConnectListAllNodeDevicesRet = self
            .call(
                CONNECT_LIST_ALL_NODE_DEVICES,
                &ConnectListAllNodeDevicesArgs {
                    need_results: 1,
                    flags,
                },
            )
            .await?;
        Ok(r.devices.0.into_iter().map(|d| d.name.0).collect())
    }

    pub async fn node_device_xml(&self, name: &str) -> Result<String> {
        let r: NodeDeviceGetXmlDescRet = self
            .call(
                NODE_DEVICE_GET_XML_DESC,
                &NodeDeviceGetXmlDescArgs {
                    name: name.into(),
                    flags: 0,
                },
            )
            .await?;
        Ok(r.xml.0)
    }

    pub async fn node_device_parent(&self, name: &str) -> Result<Option<String>> {
        let r: NodeDeviceGetParentRet = self
            .call(
                NODE_DEVICE_GET_PARENT,
                &NodeDeviceGetParentArgs { name: name.into() },
            )
            .await?;
        Ok(r.parent_name.map(|p| p.0))
    }

    pub async fn list_all_interfaces(&self, flags: u32) -> Result<Vec<NonnullInterface>> {
        let r: ConnectListAllInterfacesRet = self
            .call(
                CONNECT_LIST_ALL_INTERFACES,
                &ConnectListAllInterfacesArgs {
                    need_results: 1,
                    flags,
                },
            )
            .await?;
        Ok(r.ifaces.0)
    }

    pub async fn interface_lookup(&self, name: &str) -> Result<NonnullInterface> {
        let r: InterfaceLookupByNameRet = self
            .call(
                INTERFACE_LOOKUP_BY_NAME,
                &InterfaceLookupByNameArgs { name: name.into() },
            )
            .await?;
        Ok(r.iface)
    }

    pub async fn interface_xml(&self, iface: &NonnullInterface) -> Result<String> {
        let r: InterfaceGetXmlDescRet = self
            .call(
                INTERFACE_GET_XML_DESC,
                &InterfaceGetXmlDescArgs {
                    iface: iface.clone(),
                    flags: 0,
                },
            )
            .await?;
        Ok(r.xml.0)
    }

    pub async fn interface_is_active(&self, iface: &NonnullInterface) -> Result<bool> {
        let r: InterfaceIsActiveRet = self
            .call(
                INTERFACE_IS_ACTIVE,
                &InterfaceIsActiveArgs {
                    iface: iface.clone(),
                },
            )
            .await?;
        Ok(r.active != 0)
    }

    pub async fn list_all_networks(&self, flags: u32) -> Result<Vec<NonnullNetwork>> {
        let r: ConnectListAllNetworksRet = self
            .call(
                CONNECT_LIST_ALL_NETWORKS,
                &ConnectListAllNetworksArgs {
                    need_results: 1,
                    flags,
                },
            )
            .await?;
        Ok(r.nets.0)
    }

    /// Whether a network is active, persistent and autostarted.
    pub async fn network_state(&self, net: &NonnullNetwork) -> Result<(bool, bool, bool)> {
        let a: NetworkIsActiveRet = self
            .call(NETWORK_IS_ACTIVE, &NetworkIsActiveArgs { net: net.clone() })
            .await?;
        let p: NetworkIsPersistentRet = self
            .call(
                NETWORK_IS_PERSISTENT,
                &NetworkIsPersistentArgs { net: net.clone() },
            )
            .await?;
        let s: NetworkGetAutostartRet = self
            .call(
                NETWORK_GET_AUTOSTART,
                &NetworkGetAutostartArgs { net: net.clone() },
            )
            .await?;
        Ok((a.active != 0, p.persistent != 0, s.autostart != 0))
    }
}

/// A data stream opened by a call (console, screenshot), client side.
pub struct ClientStream {
    header: Header,
    requests: mpsc::Sender<Outgoing>,
    packets: mpsc::UnboundedReceiver<Packet>,
    finished: bool,
}

impl ClientStream {
    /// The next data from the daemon; `None` at end of data.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        if self.finished {
            return Ok(None);
        }
        let p = self.packets.recv().await.ok_or(ClientError::Closed)?;
        match p.header.status {
            MessageStatus::Continue if p.body.is_empty() => {
                self.finished = true;
                Ok(None)
            }
            MessageStatus::Continue => Ok(Some(p.body)),
            MessageStatus::Error => {
                self.finished = true;
                let e: RemoteError =
                    xdr::from_bytes(&p.body).map_err(|e| ClientError::Protocol(e.0))?;
                Err(ClientError::Remote(Box::new(e)))
            }
            _ => {
                self.finished = true;
                Ok(None)
            }
        }
    }

    fn packet(&self, status: MessageStatus, body: Vec<u8>) -> Outgoing {
        Outgoing {
            packet: Packet::new(
                Header {
                    kind: MessageType::Stream,
                    status,
                    ..self.header
                },
                body,
            ),
            reply: None,
            stream: None,
        }
    }

    /// Sends data to the daemon's end.
    pub async fn send(&self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(262_120) {
            self.requests
                .send(self.packet(MessageStatus::Continue, chunk.to_vec()))
                .await
                .map_err(|_| ClientError::Closed)?;
        }
        Ok(())
    }

    /// The finish handshake: waits for the daemon's confirmation.
    pub async fn finish(mut self) -> Result<()> {
        self.requests
            .send(self.packet(MessageStatus::Ok, Vec::new()))
            .await
            .map_err(|_| ClientError::Closed)?;
        loop {
            let p = tokio::time::timeout(DEFAULT_TIMEOUT, self.packets.recv())
                .await
                .map_err(|_| ClientError::Timeout("stream finish".into()))?
                .ok_or(ClientError::Closed)?;
            match p.header.status {
                MessageStatus::Ok => return Ok(()),
                MessageStatus::Error => {
                    let e: RemoteError =
                        xdr::from_bytes(&p.body).map_err(|e| ClientError::Protocol(e.0))?;
                    return Err(ClientError::Remote(Box::new(e)));
                }
                // Data still in flight before the confirmation.
                _ => {}
            }
        }
    }

    /// Aborts the stream.
    pub async fn abort(self) -> Result<()> {
        self.requests
            .send(self.packet(MessageStatus::Error, Vec::new()))
            .await
            .map_err(|_| ClientError::Closed)
    }
}

/// Streams and the QEMU program.
impl Client {
    /// Makes a call that opens a stream; returns the reply body and the stream.
    pub async fn call_stream<A: Serialize>(
        &self,
        procedure: i32,
        args: &A,
    ) -> Result<(Bytes, ClientStream)> {
        let body = xdr::to_bytes(args).map_err(|e| ClientError::Protocol(e.0))?;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let header = Header::call(program::REMOTE, program::REMOTE_VERSION, procedure, serial);
        let (tx, rx) = mpsc::unbounded_channel();
        let reply = self.call_header(header, body, Some(tx)).await?;
        Ok((
            reply,
            ClientStream {
                header,
                requests: self.requests.clone(),
                packets: rx,
                finished: false,
            },
        ))
    }

    /// A call of the QEMU program (monitor and agent passthrough).
    pub async fn call_qemu<A: Serialize, R: DeserializeOwned>(
        &self,
        procedure: i32,
        args: &A,
    ) -> Result<R> {
        let body = xdr::to_bytes(args).map_err(|e| ClientError::Protocol(e.0))?;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let header = Header::call(program::QEMU, program::QEMU_VERSION, procedure, serial);
        let reply = self.call_header(header, body, None).await?;
        xdr::from_bytes(&reply).map_err(|e| ClientError::Protocol(e.0))
    }

    /// `virDomainOpenConsole`.
    pub async fn open_console(
        &self,
        dom: &NonnullDomain,
        dev_name: Option<&str>,
        force: bool,
    ) -> Result<ClientStream> {
        let args = DomainOpenConsoleArgs {
            dom: dom.clone(),
            dev_name: dev_name.map(|d| XdrString(d.to_owned())),
            flags: u32::from(force),
        };
        Ok(self.call_stream(DOMAIN_OPEN_CONSOLE, &args).await?.1)
    }

    /// `virDomainScreenshot`: the MIME type and the image.
    pub async fn screenshot(&self, dom: &NonnullDomain, screen: u32) -> Result<(String, Vec<u8>)> {
        let args = DomainScreenshotArgs {
            dom: dom.clone(),
            screen,
            flags: 0,
        };
        let (reply, mut stream) = self.call_stream(DOMAIN_SCREENSHOT, &args).await?;
        let ret: DomainScreenshotRet =
            xdr::from_bytes(&reply).map_err(|e| ClientError::Protocol(e.0))?;
        let mut image = Vec::new();
        while let Some(chunk) = stream.recv().await? {
            image.extend_from_slice(&chunk);
        }
        stream.finish().await?;
        Ok((ret.mime.map(|m| m.0).unwrap_or_default(), image))
    }

    /// `virDomainSendKey`.
    pub async fn send_key(
        &self,
        dom: &NonnullDomain,
        codeset: u32,
        holdtime: u32,
        keycodes: &[u32],
    ) -> Result<()> {
        let args = DomainSendKeyArgs {
            dom: dom.clone(),
            codeset,
            holdtime,
            keycodes: qemud_protocol::xdr::XdrVec(keycodes.to_vec()),
            flags: 0,
        };
        self.call_void(DOMAIN_SEND_KEY, &args).await
    }

    /// `virDomainQemuMonitorCommand`; `hmp` for the human monitor.
    pub async fn monitor_command(
        &self,
        dom: &NonnullDomain,
        cmd: &str,
        hmp: bool,
    ) -> Result<String> {
        let args = qemud_protocol::qemu::DomainMonitorCommandArgs {
            dom: dom.clone(),
            cmd: XdrString(cmd.to_owned()),
            flags: u32::from(hmp),
        };
        let r: qemud_protocol::qemu::DomainMonitorCommandRet = self
            .call_qemu(qemud_protocol::qemu::procs::DOMAIN_MONITOR_COMMAND, &args)
            .await?;
        Ok(r.result.0)
    }

    /// `virDomainQemuAgentCommand`.
    pub async fn agent_command(
        &self,
        dom: &NonnullDomain,
        cmd: &str,
        timeout: i32,
    ) -> Result<String> {
        let args = qemud_protocol::qemu::DomainAgentCommandArgs {
            dom: dom.clone(),
            cmd: XdrString(cmd.to_owned()),
            timeout,
            flags: 0,
        };
        let r: qemud_protocol::qemu::DomainAgentCommandRet = self
            .call_qemu(qemud_protocol::qemu::procs::DOMAIN_AGENT_COMMAND, &args)
            .await?;
        Ok(r.result.map(|s| s.0).unwrap_or_default())
    }
}
