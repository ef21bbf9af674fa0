//! Daemon settings: embedded defaults, an optional TOML file over them, and
//! the paths that differ between system (root) and session (user) mode.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Running as root: `qemu:///system`.
    #[default]
    System,
    /// Running as a user: `qemu:///session`.
    Session,
}

impl Mode {
    /// System when the effective uid is root, Session otherwise. Setting
    /// `QEMUD_FORCE_SESSION` gives a root process session paths, so tests
    /// run as root do not touch the host's system directories.
    pub fn current() -> Mode {
        if std::env::var_os("QEMUD_FORCE_SESSION").is_none() && effective_uid() == Some(0) {
            Mode::System
        } else {
            Mode::Session
        }
    }
}

/// The effective uid, read from /proc so this crate needs no FFI.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    // "Uid:" is followed by the real, effective, saved and fs uids.
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Parses a socket permission string such as "0770" (always octal).
pub fn parse_perms(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            format!("invalid socket permissions '{text}': expected an octal mode like \"0770\"")
        })
}

/// The floor for `max_message_bytes`: below it ordinary calls such as
/// defining a domain or listing domains would be refused.
const MIN_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid settings file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Follows the effective uid; not read from the file.
    #[serde(skip)]
    pub mode: Mode,
    /// Persistent definitions, autostart links and logs.
    pub state_dir: PathBuf,
    /// Sockets, monitor sockets, pidfiles and running-domain records.
    pub run_dir: PathBuf,
    /// Read-write socket; defaults to `<run_dir>/libvirt-sock`.
    pub unix_sock_path: PathBuf,
    /// Read-only socket; defaults to `<run_dir>/libvirt-sock-ro`.
    pub unix_sock_ro_path: PathBuf,
    /// Octal file mode of the read-write socket.
    pub unix_sock_rw_perms: String,
    /// Octal file mode of the read-only socket.
    pub unix_sock_ro_perms: String,
    pub listen_tcp: bool,
    /// `host:port` of the plain TCP listener.
    pub tcp_addr: String,
    /// Only "none" can be served; with anything else the daemon refuses to
    /// listen on TCP.
    pub auth_tcp: String,
    pub listen_tls: bool,
    /// `host:port` of the TLS listener.
    pub tls_addr: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificate DN patterns (`*` wildcards); empty allows all.
    pub tls_allowed_dn_list: Vec<String>,
    pub max_clients: usize,
    /// Calls one client may have in progress at once.
    pub max_client_requests: usize,
    /// Messages queued to one client before it counts as not reading.
    pub max_queued_messages: usize,
    /// Seconds of silence before the daemon pings a client; <= 0 disables.
    pub keepalive_interval: i64,
    /// Unanswered pings before the client is dropped.
    pub keepalive_count: u32,
    /// Largest message body plus header (excluding the length word).
    pub max_message_bytes: usize,
    /// None: search PATH for qemu-system-x86_64, then /usr/libexec/qemu-kvm.
    pub qemu_binary: Option<String>,
    /// Deadline of every QMP command, in milliseconds.
    pub qmp_timeout_ms: u64,
    /// Bytes of replies and events queued to one client (plus calls read
    /// from it and not yet run) above which the daemon stops reading from
    /// it; a single larger reply still goes out on its own.
    pub max_client_queue_bytes: usize,
    /// The same, summed over all clients: above it, clients with anything
    /// queued are not read from.
    pub max_total_queue_bytes: usize,
    /// A client over its budget that reads nothing for this long is
    /// disconnected, in milliseconds.
    pub client_stall_timeout_ms: u64,
    /// "text" (coloured only on a terminal) or "json" (one object per
    /// line, for journald and container log collectors).
    pub log_format: String,
    /// `host:port` of the Prometheus/OpenMetrics endpoint (`GET /metrics`);
    /// None (the default) serves none.
    pub metrics_addr: Option<String>,
    /// How long statistics wait for one domain's monitor, in milliseconds;
    /// a domain that does not answer in time gets a partial record.
    pub stats_timeout_ms: u64,
    /// Remote connections that have not yet authenticated (TLS handshake
    /// and client-certificate check under way), as libvirtd's setting of
    /// the same name; 0 turns the cap off. They do not take a
    /// `max_clients` place until they authenticate, so they cannot lock
    /// local clients out.
    pub max_anonymous_clients: usize,
    /// How long a TLS peer gets, from connecting to the go-ahead byte
    /// (handshake and certificate checks), before it is dropped.
    pub tls_handshake_timeout_ms: u64,
}

fn session_dirs() -> (PathBuf, PathBuf) {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".config"));
    let run = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("qemud"),
        None => PathBuf::from(format!(
            "/tmp/qemud-{}",
            effective_uid().unwrap_or(u32::MAX)
        )),
    };
    (config.join("qemud"), run)
}

impl Settings {
    fn for_mode(mode: Mode) -> Settings {
        let (state_dir, run_dir) = match mode {
            Mode::System => (PathBuf::from("/var/lib/qemud"), PathBuf::from("/run/qemud")),
            Mode::Session => session_dirs(),
        };
        Settings {
            mode,
            unix_sock_path: run_dir.join("libvirt-sock"),
            unix_sock_ro_path: run_dir.join("libvirt-sock-ro"),
            state_dir,
            run_dir,
            unix_sock_rw_perms: "0700".into(),
            unix_sock_ro_perms: "0777".into(),
            listen_tcp: false,
            tcp_addr: "127.0.0.1:16509".into(),
            auth_tcp: "sasl".into(),
            listen_tls: false,
            tls_addr: "0.0.0.0:16514".into(),
            ca_file: "/etc/pki/CA/cacert.pem".into(),
            cert_file: "/etc/pki/libvirt/servercert.pem".into(),
            key_file: "/etc/pki/libvirt/private/serverkey.pem".into(),
            tls_allowed_dn_list: Vec::new(),
            max_clients: 5000,
            max_client_requests: 5,
            max_queued_messages: 4096,
            keepalive_interval: 5,
            keepalive_count: 5,
            max_message_bytes: 16 * 1024 * 1024,
            qemu_binary: None,
            qmp_timeout_ms: 10_000,
            max_client_queue_bytes: 4 * 1024 * 1024,
            max_total_queue_bytes: 32 * 1024 * 1024,
            client_stall_timeout_ms: 30_000,
            log_format: "text".into(),
            metrics_addr: None,
            stats_timeout_ms: 1500,
            max_anonymous_clients: 20,
            tls_handshake_timeout_ms: 10_000,
        }
    }

    /// Moves the run directory, and the default socket paths with it.
    pub fn set_run_dir(&mut self, dir: PathBuf) {
        let default = Settings::for_mode(self.mode);
        if self.unix_sock_path == default.unix_sock_path {
            self.unix_sock_path = dir.join("libvirt-sock");
        }
        if self.unix_sock_ro_path == default.unix_sock_ro_path {
            self.unix_sock_ro_path = dir.join("libvirt-sock-ro");
        }
        self.run_dir = dir;
    }

    /// The embedded defaults, overlaid with `path` when given.
    pub fn load(path: Option<&Path>) -> Result<Settings, SettingsError> {
        let mode = Mode::current();
        let Some(path) = path else {
            return Ok(Settings::for_mode(mode));
        };
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml(&text, mode).map_err(|message| SettingsError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Checks values whose type admits nonsense; the daemon calls it again
    /// after applying its command-line flags.
    pub fn validate(&self) -> Result<(), String> {
        parse_perms(&self.unix_sock_rw_perms).map_err(|e| format!("unix_sock_rw_perms: {e}"))?;
        parse_perms(&self.unix_sock_ro_perms).map_err(|e| format!("unix_sock_ro_perms: {e}"))?;
        if self.max_clients == 0 {
            return Err("max_clients must be at least 1".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be \"text\" or \"json\", not \"{}\"",
                self.log_format
            ));
        }
        if self.max_client_queue_bytes == 0 || self.max_total_queue_bytes == 0 {
            return Err("max_client_queue_bytes and max_total_queue_bytes must be positive".into());
        }
        if self.tls_handshake_timeout_ms == 0 {
            return Err("tls_handshake_timeout_ms must be at least 1".into());
        }
        // Below this not even the reply to the first call would fit.
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(format!(
                "max_message_bytes must be at least {MIN_MESSAGE_BYTES}"
            ));
        }
        Ok(())
    }

    fn from_toml(text: &str, mode: Mode) -> Result<Settings, String> {
        // Missing keys take `Default`, which follows the current mode.
        let mut s: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        let defaults = Settings::for_mode(mode);
        s.mode = mode;
        s.validate()?;
        // A moved run dir carries the default socket paths along.
        if s.run_dir != defaults.run_dir {
            let dir = s.run_dir.clone();
            s.run_dir = defaults.run_dir.clone();
            s.set_run_dir(dir);
        }
        Ok(s)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::for_mode(Mode::current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_complete() {
        let s = Settings::for_mode(Mode::System);
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/qemud"));
        assert_eq!(s.run_dir, PathBuf::from("/run/qemud"));
        assert_eq!(s.unix_sock_path, PathBuf::from("/run/qemud/libvirt-sock"));
        assert_eq!(
            s.unix_sock_ro_path,
            PathBuf::from("/run/qemud/libvirt-sock-ro")
        );
        assert_eq!(
            (s.unix_sock_rw_perms.as_str(), s.unix_sock_ro_perms.as_str()),
            ("0700", "0777")
        );
        assert!(!s.listen_tcp && !s.listen_tls);
        assert_eq!(s.tcp_addr, "127.0.0.1:16509");
        assert_eq!(s.tls_addr, "0.0.0.0:16514");
        assert_eq!(s.auth_tcp, "sasl");
        assert!(s.tls_allowed_dn_list.is_empty());
        assert_eq!((s.max_clients, s.max_client_requests), (5000, 5));
        assert_eq!((s.keepalive_interval, s.keepalive_count), (5, 5));
        assert_eq!(s.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(s.qemu_binary, None);
        assert_eq!(s.qmp_timeout_ms, 10_000);
        assert_eq!(s.max_client_queue_bytes, 4 * 1024 * 1024);
        assert_eq!(s.max_total_queue_bytes, 32 * 1024 * 1024);
        assert_eq!(s.client_stall_timeout_ms, 30_000);
        assert_eq!(s.log_format, "text");
        assert_eq!(s.validate(), Ok(()));
        let s = Settings::for_mode(Mode::Session);
        assert!(s.state_dir.ends_with("qemud"));
        assert_eq!(s.unix_sock_path, s.run_dir.join("libvirt-sock"));
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn file_overrides_some_fields() {
        let s = Settings::from_toml("max_clients = 7\nlisten_tcp = true\n", Mode::System).unwrap();
        assert_eq!(s.max_clients, 7);
        assert!(s.listen_tcp);
        assert_eq!(s.keepalive_count, 5);
    }

    #[test]
    fn run_dir_moves_default_sockets() {
        let s = Settings::from_toml("run_dir = \"/x\"\n", Mode::System).unwrap();
        assert_eq!(s.unix_sock_path, PathBuf::from("/x/libvirt-sock"));
        let mut s = Settings::for_mode(Mode::System);
        s.set_run_dir("/y".into());
        assert_eq!(s.unix_sock_ro_path, PathBuf::from("/y/libvirt-sock-ro"));
    }

    #[test]
    fn load_reads_a_file_or_uses_defaults() {
        let defaults = Settings::load(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaults, Settings::default());
        let path = std::env::temp_dir().join(format!("qemud-settings-{}.toml", std::process::id()));
        std::fs::write(&path, "max_clients = 9\nauth_tcp = \"none\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let loaded = Settings::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        let loaded = loaded.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.max_clients, 9);
        assert_eq!(loaded.auth_tcp, "none");
        assert_eq!(loaded.tcp_addr, defaults.tcp_addr);
        assert!(matches!(
            Settings::load(Some(Path::new("/nonexistent/qemud.toml"))),
            Err(SettingsError::Read { .. })
        ));
    }

    #[test]
    fn nonsense_values_are_refused() {
        for text in [
            "unix_sock_rw_perms = \"rwx\"\n",
            "unix_sock_ro_perms = \"0999\"\n",
            "max_clients = 0\n",
            "max_message_bytes = 100\n",
            "log_format = \"xml\"\n",
            "max_client_queue_bytes = 0\n",
        ] {
            assert!(Settings::from_toml(text, Mode::System).is_err(), "{text}");
        }
        assert_eq!(parse_perms("0770"), Ok(0o770));
        assert_eq!(parse_perms("777"), Ok(0o777));
    }

    #[test]
    fn unknown_key_is_an_error() {
        assert!(Settings::from_toml("no_such_key = 1\n", Mode::System).is_err());
        assert!(Settings::from_toml("max_clients = \"x\"\n", Mode::System).is_err());
    }
}
