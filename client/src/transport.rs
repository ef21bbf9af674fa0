//! Opening the byte stream a URI names.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::Command;
use tokio_rustls::rustls::{self, pki_types::ServerName};

use qemud_protocol::uri::{ConnectUri, Transport};

use crate::client::ClientError;

/// Any bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxedStream = Box<dyn Stream>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> ClientError {
    move |e| ClientError::Connect(format!("{what}: {e}"))
}

/// Where a local client finds the daemon when the URI names no socket:
/// qemud's own socket first, then libvirtd's.
pub fn default_socket(uri: &ConnectUri, read_only: bool) -> PathBuf {
    let suffix = if read_only { "-ro" } else { "" };
    let session = uri.path == "/session";
    let mut candidates: Vec<PathBuf> = Vec::new();
    if session {
        if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
            let run = PathBuf::from(run);
            candidates.push(run.join("qemud").join(format!("libvirt-sock{suffix}")));
            candidates.push(run.join("libvirt").join(format!("libvirt-sock{suffix}")));
        }
    } else {
        candidates.push(PathBuf::from(format!("/run/qemud/libvirt-sock{suffix}")));
        candidates.push(PathBuf::from(format!("/run/libvirt/libvirt-sock{suffix}")));
        candidates.push(PathBuf::from(format!(
            "/run/libvirt/virtqemud-sock{suffix}"
        )));
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

/// TLS material: `?pkipath=DIR` or libvirt's default locations.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn for_uri(uri: &ConnectUri) -> TlsFiles {
        match uri.param("pkipath") {
            Some(dir) => {
                let d = Path::new(dir);
                TlsFiles {
                    ca: d.join("cacert.pem"),
                    cert: d.join("clientcert.pem"),
                    key: d.join("clientkey.pem"),
                }
            }
            None => TlsFiles {
                ca: "/etc/pki/CA/cacert.pem".into(),
                cert: "/etc/pki/libvirt/clientcert.pem".into(),
                key: "/etc/pki/libvirt/private/clientkey.pem".into(),
            },
        }
    }
}

fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ClientError> {
    let data = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
    rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(format!("cannot parse {}", path.display())))
}

fn read_pem_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ClientError> {
    let data = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(io(format!("cannot parse {}", path.display())))?
        .ok_or_else(|| ClientError::Connect(format!("no private key in {}", path.display())))
}

async fn open_tls(uri: &ConnectUri, host: &str, port: u16) -> Result<BoxedStream, ClientError> {
    let files = TlsFiles::for_uri(uri);
    let mut roots = rustls::RootCertStore::empty();
    for c in read_pem_certs(&files.ca)? {
        roots
            .add(c)
            .map_err(|e| ClientError::Connect(format!("bad CA certificate: {e}")))?;
    }
    let certs = read_pem_certs(&files.cert)?;
    let key = read_pem_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| ClientError::Connect(format!("bad client certificate: {e}")))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(io(format!("cannot connect to {host}:{port}")))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Connect(format!("bad host name {host}: {e}")))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(io("TLS handshake failed".into()))?;
    // The server confirms its checks of our certificate with one byte.
    let mut ok = [0u8; 1];
    tls.read_exact(&mut ok)
        .await
        .map_err(io("server refused the TLS session".into()))?;
    if ok[0] != 1 {
        return Err(ClientError::Connect(format!(
            "server refused the TLS session (status byte {})",
            ok[0]
        )));
    }
    Ok(Box::new(tls))
}

fn open_ssh(uri: &ConnectUri, read_only: bool) -> Result<BoxedStream, ClientError> {
    let host = uri
        .host
        .clone()
        .ok_or_else(|| ClientError::Connect("qemu+ssh needs a host".into()))?;
    let socket = uri.param("socket").map(str::to_owned).unwrap_or_else(|| {
        format!(
            "/run/qemud/libvirt-sock{}",
            if read_only { "-ro" } else { "" }
        )
    });
    let netcat = uri.param("netcat").unwrap_or("nc");
    let mut cmd = Command::new(uri.param("command").unwrap_or("ssh"));
    if let Some(p) = uri.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &uri.user {
        cmd.arg("-l").arg(u);
    }
    if let Some(k) = uri.param("keyfile") {
        cmd.arg("-i").arg(k);
    }
    if uri.param("no_tty").is_some() {
        cmd.arg("-T");
    }
    if uri.param("no_verify").is_some_and(|v| v != "0") {
        cmd.arg("-o").arg("StrictHostKeyChecking=no");
    }
    cmd.arg("-e")
        .arg("none")
        .arg(host)
        .arg("--")
        .arg(format!("{netcat} -U {socket}"));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("cannot run ssh".into()))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| ClientError::Connect("ssh has no stdin".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ClientError::Connect("ssh has no stdout".into()))?;
    // The child lives as long as the stream: the task reaps it at the end.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(Box::new(tokio::io::join(stdout, stdin)))
}

/// Opens the transport a URI names.
pub async fn open(uri: &ConnectUri, read_only: bool) -> Result<BoxedStream, ClientError> {
    match uri.transport {
        Transport::Unix => {
            let path = match uri.param("socket") {
                Some(p) => PathBuf::from(p),
                None => default_socket(uri, read_only),
            };
            let s = UnixStream::connect(&path)
                .await
                .map_err(io(format!("cannot connect to {}", path.display())))?;
            Ok(Box::new(s))
        }
        Transport::Tcp => {
            let host = uri.host.clone().unwrap_or_else(|| "localhost".into());
            let port = uri.port.unwrap_or(16509);
            let s = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(io(format!("cannot connect to {host}:{port}")))?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        Transport::Tls => {
            let host = uri.host.clone().unwrap_or_else(|| "localhost".into());
            open_tls(uri, &host, uri.port.unwrap_or(16514)).await
        }
        Transport::Ssh => open_ssh(uri, read_only),
    }
}
