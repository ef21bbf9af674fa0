//! The sockets clients connect to. Each accepted stream gets a
//! `Connection` actor; the listener only establishes who the peer is and
//! whether there is room for it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use qemud_actors::rpc::connection::{ClientSlot, Connection, PeerInfo};
use qemud_actors::Services;

use crate::tls;

/// The open listeners; closing removes the socket files.
pub struct Listeners {
    unix_paths: Vec<PathBuf>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listeners {
    pub fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        for p in &self.unix_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds a UNIX socket, refusing to steal one a live daemon still serves.
async fn bind_unix(path: &Path, mode: &str) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another daemon is already listening on {}",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let mode = qemud_config::settings::parse_perms(mode)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// Counts connections against `max_clients`, and remote connections that
/// have not authenticated yet against `max_anonymous_clients`.
#[derive(Clone)]
struct Admission {
    active: Arc<AtomicUsize>,
    max: usize,
    anonymous: Arc<AtomicUsize>,
    max_anonymous: usize,
}

impl Admission {
    /// A place for a new client, or a log line and `None` when full.
    fn admit(&self, who: &str) -> Option<Arc<ClientSlot>> {
        match ClientSlot::try_take(&self.active, self.max) {
            Some(slot) => Some(Arc::new(slot)),
            None => {
                warn!(
                    peer = who,
                    "too many active clients ({}), dropping connection", self.max
                );
                None
            }
        }
    }

    /// A place among the peers still authenticating. It is separate from
    /// `max_clients`: a crowd of peers that never finish their handshake
    /// fills this cap and is refused, while local clients (and remote ones
    /// that did authenticate) still get in.
    fn admit_anonymous(&self, who: &str) -> Option<ClientSlot> {
        let max = match self.max_anonymous {
            0 => usize::MAX,
            n => n,
        };
        let slot = ClientSlot::try_take(&self.anonymous, max);
        if slot.is_none() {
            warn!(
                peer = who,
                "too many clients waiting for authentication ({max}), dropping connection"
            );
        }
        slot
    }
}

fn serve_unix(
    listener: UnixListener,
    svc: Arc<Services>,
    admission: Admission,
    read_only: bool,
) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let who = match stream.peer_cred() {
                        Ok(c) => format!(
                            "unix pid={} uid={} gid={}",
                            c.pid().unwrap_or(-1),
                            c.uid(),
                            c.gid()
                        ),
                        Err(_) => "unix (unknown peer)".into(),
                    };
                    let Some(slot) = admission.admit(&who) else {
                        continue;
                    };
                    Connection::start(
                        stream,
                        svc.clone(),
                        PeerInfo {
                            description: who,
                            read_only_socket: read_only,
                            secure: true,
                            slot: Some(slot),
                        },
                    );
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

fn serve_tcp(
    listener: TcpListener,
    svc: Arc<Services>,
    admission: Admission,
) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let who = format!("tcp {addr}");
                    let Some(slot) = admission.admit(&who) else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    Connection::start(
                        stream,
                        svc.clone(),
                        PeerInfo {
                            description: who,
                            read_only_socket: false,
                            secure: false,
                            slot: Some(slot),
                        },
                    );
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

fn serve_tls(
    listener: TcpListener,
    svc: Arc<Services>,
    admission: Admission,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(anonymous) = admission.admit_anonymous(&format!("tls {addr}")) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let svc = svc.clone();
            let admission = admission.clone();
            let deadline = Duration::from_millis(svc.settings.tls_handshake_timeout_ms);
            // Handshakes run on their own so a slow client holds up no one;
            // the deadline covers everything up to the go-ahead byte.
            actix_rt::spawn(async move {
                let authenticated = tokio::time::timeout(
                    deadline,
                    authenticate(acceptor, stream, addr, svc.clone()),
                )
                .await;
                let (tls, dn) = match authenticated {
                    Ok(Some(x)) => x,
                    Ok(None) => return,
                    Err(_) => {
                        warn!(peer = %addr, "TLS handshake timed out; dropping connection");
                        return;
                    }
                };
                // Only now does the peer take one of the shared places.
                let Some(slot) = admission.admit(&format!("tls {addr} DN={dn}")) else {
                    return;
                };
                drop(anonymous);
                Connection::start(
                    tls,
                    svc,
                    PeerInfo {
                        description: format!("tls {addr} DN={dn}"),
                        read_only_socket: false,
                        secure: true,
                        slot: Some(slot),
                    },
                );
            });
        }
    })
}

/// The TLS handshake, the client-certificate checks and the go-ahead byte;
/// the stream and the client's DN when all passed.
async fn authenticate(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    addr: std::net::SocketAddr,
    svc: Arc<Services>,
) -> Option<(TlsStream<TcpStream>, String)> {
    let mut tls = match acceptor.accept(stream).await {
        Ok(t) => t,
        Err(e) => {
            warn!(peer = %addr, "TLS handshake failed: {e}");
            return None;
        }
    };
    let dn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| tls::subject_dn(c.as_ref()));
    let dn = match dn {
        Some(Ok(dn)) => dn,
        Some(Err(e)) => {
            warn!(peer = %addr, "{e}");
            return None;
        }
        None => {
            warn!(peer = %addr, "client sent no certificate");
            return None;
        }
    };
    if !tls::dn_allowed(&svc.settings.tls_allowed_dn_list, &dn) {
        warn!(peer = %addr, dn = %dn, "client certificate DN is not in tls_allowed_dn_list; refusing");
        return None;
    }
    // libvirt clients wait for this byte before any RPC.
    if tls.write_all(&[1]).await.is_err() || tls.flush().await.is_err() {
        return None;
    }
    Some((tls, dn))
}

pub async fn start(svc: Arc<Services>) -> Result<Listeners, String> {
    let s = &svc.settings;
    let admission = Admission {
        active: Arc::new(AtomicUsize::new(0)),
        max: s.max_clients,
        anonymous: Arc::new(AtomicUsize::new(0)),
        max_anonymous: s.max_anonymous_clients,
    };
    let mut listeners = Listeners {
        unix_paths: Vec::new(),
        tasks: Vec::new(),
    };
    // Network listeners first: once the UNIX socket exists (what local
    // clients and supervisors wait for), every listener is bound.
    if s.listen_tcp {
        if s.auth_tcp != "none" {
            return Err(format!(
                "listen_tcp is enabled but auth_tcp is '{}'; qemud only serves unauthenticated TCP, so set auth_tcp = \"none\" to accept that",
                s.auth_tcp
            ));
        }
        let tcp = TcpListener::bind(&s.tcp_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", s.tcp_addr))?;
        info!(addr = %s.tcp_addr, "listening (tcp, no authentication)");
        listeners
            .tasks
            .push(serve_tcp(tcp, svc.clone(), admission.clone()));
    }
    if s.listen_tls {
        let config = tls::server_config(&s.ca_file, &s.cert_file, &s.key_file)?;
        let listener = TcpListener::bind(&s.tls_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", s.tls_addr))?;
        info!(addr = %s.tls_addr, "listening (tls, x509 client certificates required)");
        listeners.tasks.push(serve_tls(
            listener,
            svc.clone(),
            admission.clone(),
            tokio_rustls::TlsAcceptor::from(config),
        ));
    }
    let rw = bind_unix(&s.unix_sock_path, &s.unix_sock_rw_perms).await?;
    listeners.unix_paths.push(s.unix_sock_path.clone());
    info!(path = %s.unix_sock_path.display(), "listening (read-write)");
    listeners
        .tasks
        .push(serve_unix(rw, svc.clone(), admission.clone(), false));

    let ro = bind_unix(&s.unix_sock_ro_path, &s.unix_sock_ro_perms).await?;
    listeners.unix_paths.push(s.unix_sock_ro_path.clone());
    info!(path = %s.unix_sock_ro_path.display(), "listening (read-only)");
    listeners
        .tasks
        .push(serve_unix(ro, svc.clone(), admission, true));

    Ok(listeners)
}
