//! On-disk state. Persistent definitions live under the state directory
//! (`domains/<uuid>.xml`, `autostart/<uuid>`); what a running VM needs for
//! re-attachment lives under the run directory (`live/<uuid>.json`). Every
//! file is written atomically: temp file, fsync, rename, fsync directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// Writes `data` to `path` so that a crash leaves either the old or the
/// new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

fn remove_synced(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What the daemon must know to re-attach to a running QEMU.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LiveRecord {
    pub uuid: Uuid,
    pub name: String,
    pub id: i32,
    pub pid: i32,
    /// The process's start time (field 22 of /proc/PID/stat): with the
    /// pid, tells this QEMU from a later process that reused its pid.
    #[serde(default)]
    pub start_time: Option<u64>,
    pub qmp_socket: PathBuf,
    /// The definition the VM runs with.
    pub xml: String,
    pub persistent: bool,
    /// A guest shutdown was already seen (QEMU waits for `quit`).
    #[serde(default)]
    pub got_shutdown: bool,
    /// A `virsh reboot` is pending: the guest's power-off becomes a reset.
    #[serde(default)]
    pub fake_reboot: bool,
}

#[derive(Clone, Debug)]
pub struct Store {
    state_dir: PathBuf,
    run_dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::System(format!("cannot {what} '{}': {e}", path.display()))
}

impl Store {
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Store {
        Store {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
        }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn def_path(&self, uuid: &Uuid) -> PathBuf {
        self.state_dir.join("domains").join(format!("{uuid}.xml"))
    }

    fn autostart_path(&self, uuid: &Uuid) -> PathBuf {
        self.state_dir.join("autostart").join(uuid.to_string())
    }

    fn live_path(&self, uuid: &Uuid) -> PathBuf {
        self.run_dir.join("live").join(format!("{uuid}.json"))
    }

    pub fn qmp_socket(&self, uuid: &Uuid) -> PathBuf {
        self.run_dir.join("qmp").join(format!("{uuid}.sock"))
    }

    pub fn pidfile(&self, uuid: &Uuid) -> PathBuf {
        self.run_dir.join("pid").join(format!("{uuid}.pid"))
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("log").join(format!("{name}.log"))
    }

    /// Creates the directories the daemon writes into.
    pub fn prepare(&self) -> Result<(), Error> {
        for d in [
            self.state_dir.join("domains"),
            self.state_dir.join("autostart"),
            self.state_dir.join("log"),
            self.run_dir.join("live"),
            self.run_dir.join("qmp"),
            self.run_dir.join("pid"),
        ] {
            fs::create_dir_all(&d).map_err(|e| io_err("create directory", &d, e))?;
        }
        Ok(())
    }

    pub fn save_definition(&self, uuid: &Uuid, xml: &str) -> Result<(), Error> {
        let p = self.def_path(uuid);
        write_atomic(&p, xml.as_bytes()).map_err(|e| io_err("write", &p, e))
    }

    pub fn delete_definition(&self, uuid: &Uuid) -> Result<(), Error> {
        let p = self.def_path(uuid);
        remove_synced(&p).map_err(|e| io_err("remove", &p, e))?;
        self.set_autostart(uuid, false)
    }

    pub fn set_autostart(&self, uuid: &Uuid, on: bool) -> Result<(), Error> {
        let p = self.autostart_path(uuid);
        if on {
            write_atomic(&p, b"").map_err(|e| io_err("write", &p, e))
        } else {
            remove_synced(&p).map_err(|e| io_err("remove", &p, e))
        }
    }

    /// Every saved definition as (uuid, xml, autostart); unreadable files
    /// are reported and skipped so one bad file cannot hide the others.
    pub fn load_definitions(&self) -> Vec<(Uuid, String, bool)> {
        let dir = self.state_dir.join("domains");
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".xml"))
            else {
                continue;
            };
            let Ok(uuid) = Uuid::parse_str(stem) else {
                continue;
            };
            match fs::read_to_string(&path) {
                Ok(xml) => out.push((uuid, xml, self.autostart_path(&uuid).exists())),
                Err(e) => tracing::error!("cannot read {}: {e}", path.display()),
            }
        }
        out
    }

    pub fn save_live(&self, rec: &LiveRecord) -> Result<(), Error> {
        let p = self.live_path(&rec.uuid);
        let data = serde_json::to_vec_pretty(rec).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&p, &data).map_err(|e| io_err("write", &p, e))
    }

    pub fn delete_live(&self, uuid: &Uuid) {
        let p = self.live_path(uuid);
        if let Err(e) = remove_synced(&p) {
            tracing::warn!("cannot remove {}: {e}", p.display());
        }
        let _ = fs::remove_file(self.qmp_socket(uuid));
        let _ = fs::remove_file(self.pidfile(uuid));
    }

    /// Pid files QEMU wrote (`-pidfile`), as (uuid, pid).
    pub fn pidfiles(&self) -> Vec<(Uuid, i32)> {
        let Ok(entries) = fs::read_dir(self.run_dir.join("pid")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let uuid = Uuid::parse_str(name.to_str()?.strip_suffix(".pid")?).ok()?;
                let pid = fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
                Some((uuid, pid))
            })
            .collect()
    }

    pub fn load_live(&self) -> Vec<LiveRecord> {
        let dir = self.run_dir.join("live");
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&path).map(|d| serde_json::from_slice::<LiveRecord>(&d)) {
                Ok(Ok(rec)) => out.push(rec),
                Ok(Err(e)) => tracing::error!("ignoring corrupt {}: {e}", path.display()),
                Err(e) => tracing::error!("cannot read {}: {e}", path.display()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_and_autostart_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("state"), d.path().join("run"));
        s.prepare().unwrap();
        let u = Uuid::new_v4();
        s.save_definition(&u, "<domain/>").unwrap();
        s.set_autostart(&u, true).unwrap();
        let defs = s.load_definitions();
        assert_eq!(defs, vec![(u, "<domain/>".to_string(), true)]);
        s.delete_definition(&u).unwrap();
        assert!(s.load_definitions().is_empty());
        // Deleting twice is fine.
        s.delete_definition(&u).unwrap();
    }

    #[test]
    fn live_records_roundtrip_and_corrupt_files_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("state"), d.path().join("run"));
        s.prepare().unwrap();
        let rec = LiveRecord {
            uuid: Uuid::new_v4(),
            name: "vm".into(),
            id: 3,
            pid: 42,
            start_time: Some(7),
            qmp_socket: "/tmp/x".into(),
            xml: "<domain/>".into(),
            persistent: true,
            got_shutdown: false,
            fake_reboot: true,
        };
        s.save_live(&rec).unwrap();
        fs::write(d.path().join("run/live/bad.json"), b"{").unwrap();
        assert_eq!(s.load_live(), vec![rec.clone()]);
        s.delete_live(&rec.uuid);
        assert!(s.load_live().is_empty());
    }

    #[test]
    fn pending_reboot_survives_in_the_live_record() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("state"), d.path().join("run"));
        s.prepare().unwrap();
        let u = Uuid::new_v4();
        let old = format!(
            r#"{{"uuid":"{u}","name":"vm","id":1,"pid":42,"qmp_socket":"/x","xml":"<domain/>","persistent":true}}"#
        );
        fs::write(d.path().join(format!("run/live/{u}.json")), old).unwrap();
        // Records written before the field existed: no reboot pending.
        assert!(!s.load_live()[0].fake_reboot);
        let mut rec = s.load_live().remove(0);
        rec.fake_reboot = true;
        s.save_live(&rec).unwrap();
        assert!(s.load_live()[0].fake_reboot);
    }

    #[test]
    fn atomic_write_replaces_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
