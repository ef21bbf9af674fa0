//! The sockets clients connect to. Each accepted stream gets a
//! `Connection` actor; the listener only learns who the peer is.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use qemud_actors::connection::{Connection, PeerInfo};
use qemud_actors::Services;

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

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("invalid socket mode '{text}'"))
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
    let mode = parse_mode(mode)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode of {}: {e}", path.display()))?;
    Ok(listener)
}

fn serve_unix(
    listener: UnixListener,
    svc: Arc<Services>,
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
                    Connection::start(
                        stream,
                        svc.clone(),
                        PeerInfo {
                            description: who,
                            read_only_socket: read_only,
                            secure: true,
                        },
                    );
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

fn serve_tcp(listener: TcpListener, svc: Arc<Services>) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    Connection::start(
                        stream,
                        svc.clone(),
                        PeerInfo {
                            description: format!("tcp {addr}"),
                            read_only_socket: false,
                            secure: false,
                        },
                    );
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

pub async fn start(svc: Arc<Services>) -> Result<Listeners, String> {
    let s = &svc.settings;
    let mut listeners = Listeners {
        unix_paths: Vec::new(),
        tasks: Vec::new(),
    };
    let rw = bind_unix(&s.unix_sock_path, &s.unix_sock_rw_perms).await?;
    listeners.unix_paths.push(s.unix_sock_path.clone());
    info!(path = %s.unix_sock_path.display(), "listening (read-write)");
    listeners.tasks.push(serve_unix(rw, svc.clone(), false));

    let ro = bind_unix(&s.unix_sock_ro_path, &s.unix_sock_ro_perms).await?;
    listeners.unix_paths.push(s.unix_sock_ro_path.clone());
    info!(path = %s.unix_sock_ro_path.display(), "listening (read-only)");
    listeners.tasks.push(serve_unix(ro, svc.clone(), true));

    if s.listen_tcp {
        if s.auth_tcp != "none" {
            return Err(format!(
                "listen_tcp is enabled but auth_tcp is '{}'; only auth_tcp = \"none\" is supported, so set it explicitly to accept unauthenticated TCP clients",
                s.auth_tcp
            ));
        }
        let tcp = TcpListener::bind(&s.tcp_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", s.tcp_addr))?;
        info!(addr = %s.tcp_addr, "listening (tcp, no authentication)");
        listeners.tasks.push(serve_tcp(tcp, svc.clone()));
    }
    Ok(listeners)
}
