//! libvirt connection URIs: `driver[+transport]://[user@][host][:port]/path[?query]`,
//! e.g. `qemu:///system`, `qemu+unix:///system?socket=/run/x.sock`,
//! `qemu+tls://host:16514/system`, `qemu+ssh://root@host/system`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
    Tls,
    Ssh,
}

impl Transport {
    /// libvirt's default port for the transport, where it has one.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Transport::Tcp => Some(16509),
            Transport::Tls => Some(16514),
            Transport::Ssh => Some(22),
            Transport::Unix => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectUri {
    pub driver: String,
    pub transport: Transport,
    pub user: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `/system` or `/session`.
    pub path: String,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("URI '{0}' has no scheme")]
    NoScheme(String),
    #[error("unsupported transport '{0}'")]
    Transport(String),
    #[error("invalid port in URI '{0}'")]
    Port(String),
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ConnectUri {
    pub fn parse(uri: &str) -> Result<ConnectUri, UriError> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| UriError::NoScheme(uri.to_owned()))?;
        let (driver, transport) = match scheme.split_once('+') {
            None => (scheme, None),
            Some((d, t)) => (d, Some(t)),
        };
        let (authority, path_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_query, ""),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(percent_decode(u)), h),
            None => (None, authority),
        };
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| UriError::Port(uri.to_owned()))?;
        let transport = match transport {
            None if host.is_some() => Transport::Tls,
            None => Transport::Unix,
            Some("unix") => Transport::Unix,
            Some("tcp") => Transport::Tcp,
            Some("tls") => Transport::Tls,
            Some("ssh") | Some("libssh") | Some("libssh2") => Transport::Ssh,
            Some(other) => return Err(UriError::Transport(other.to_owned())),
        };
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (percent_decode(k), percent_decode(v)),
                None => (percent_decode(p), String::new()),
            })
            .collect();
        Ok(ConnectUri {
            driver: driver.to_owned(),
            transport,
            user,
            host,
            port,
            path: if path.is_empty() {
                "/system".into()
            } else {
                path.to_owned()
            },
            params,
        })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The URI as the daemon's driver names it (what `CONNECT_GET_URI` and
    /// `CONNECT_OPEN` speak of): no transport, host or query.
    pub fn driver_uri(&self) -> String {
        format!("{}://{}", self.driver, self.path)
    }
}

fn split_host_port(s: &str) -> Option<(Option<String>, Option<u16>)> {
    if s.is_empty() {
        return Some((None, None));
    }
    // [v6]:port
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((Some(host.to_owned()), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((Some(h.to_owned()), Some(p.parse().ok()?))),
        None => Some((Some(s.to_owned()), None)),
    }
}

impl fmt::Display for ConnectUri {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let t = match self.transport {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ssh => "ssh",
        };
        write!(f, "{}+{}://", self.driver, t)?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if let Some(h) = &self.host {
            if h.contains(':') {
                write!(f, "[{h}]")?;
            } else {
                write!(f, "{h}")?;
            }
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.path)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_system() {
        let u = ConnectUri::parse("qemu:///system").unwrap();
        assert_eq!(u.transport, Transport::Unix);
        assert_eq!(u.host, None);
        assert_eq!(u.path, "/system");
        assert_eq!(u.driver_uri(), "qemu:///system");
    }

    #[test]
    fn unix_with_socket() {
        let u = ConnectUri::parse("qemu+unix:///session?socket=/tmp/a%20b.sock").unwrap();
        assert_eq!(u.param("socket"), Some("/tmp/a b.sock"));
        assert_eq!(u.path, "/session");
    }

    #[test]
    fn remote_forms() {
        let u = ConnectUri::parse("qemu+tls://host.example:1234/system?pkipath=/p").unwrap();
        assert_eq!(u.transport, Transport::Tls);
        assert_eq!(u.host.as_deref(), Some("host.example"));
        assert_eq!(u.port, Some(1234));
        let u = ConnectUri::parse("qemu+ssh://root@h/system").unwrap();
        assert_eq!(u.user.as_deref(), Some("root"));
        assert_eq!(u.transport, Transport::Ssh);
        let u = ConnectUri::parse("qemu+tcp://[::1]:16509/system").unwrap();
        assert_eq!(u.host.as_deref(), Some("::1"));
        assert_eq!(u.port, Some(16509));
        // A host without transport means TLS, as in libvirt.
        let u = ConnectUri::parse("qemu://h/system").unwrap();
        assert_eq!(u.transport, Transport::Tls);
    }

    #[test]
    fn bad_uris() {
        assert!(ConnectUri::parse("nonsense").is_err());
        assert!(ConnectUri::parse("qemu+foo:///system").is_err());
        assert!(ConnectUri::parse("qemu+tcp://h:notaport/system").is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
