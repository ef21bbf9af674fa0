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
    pub fn current() -> Mode {
        // SAFETY-free: geteuid has no failure mode.
        if nix_euid_is_root() {
            Mode::System
        } else {
            Mode::Session
        }
    }
}

fn nix_euid_is_root() -> bool {
    std::env::var_os("QEMUD_FORCE_SESSION").is_none() && unsafe_free_euid() == 0
}

fn unsafe_free_euid() -> u32 {
    // /proc/self/status carries the effective uid without any FFI.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

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
    #[serde(skip)]
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub unix_sock_path: PathBuf,
    pub unix_sock_ro_path: PathBuf,
    /// Octal file mode of the read-write socket.
    pub unix_sock_rw_perms: String,
    /// Octal file mode of the read-only socket.
    pub unix_sock_ro_perms: String,
    pub listen_tcp: bool,
    pub tcp_addr: String,
    /// Only "none" can be served; anything else keeps TCP closed.
    pub auth_tcp: String,
    pub listen_tls: bool,
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
    pub qemu_binary: Option<String>,
    /// Deadline of every QMP command, in milliseconds.
    pub qmp_timeout_ms: u64,
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
        None => PathBuf::from(format!("/tmp/qemud-{}", unsafe_free_euid())),
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

    fn from_toml(text: &str, mode: Mode) -> Result<Settings, String> {
        // Missing keys take `Default`, which follows the current mode.
        let mut s: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        let defaults = Settings::for_mode(mode);
        s.mode = mode;
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
        assert_eq!(s.unix_sock_path, PathBuf::from("/run/qemud/libvirt-sock"));
        assert_eq!(s.max_message_bytes, 16 * 1024 * 1024);
        assert!(!s.listen_tcp);
        let s = Settings::for_mode(Mode::Session);
        assert!(s.unix_sock_path.ends_with("libvirt-sock"));
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
    fn unknown_key_is_an_error() {
        assert!(Settings::from_toml("no_such_key = 1\n", Mode::System).is_err());
        assert!(Settings::from_toml("max_clients = \"x\"\n", Mode::System).is_err());
    }
}
