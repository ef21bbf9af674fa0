//! On-disk state. Persistent definitions live under the state directory
//! (`domains/<uuid>.xml`, `autostart/<uuid>`); what a running VM needs for
//! re-attachment lives under the run directory (`live/<uuid>.json`). Every
//! file is written atomically: temp file, fsync, rename, fsync directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// Mode of every file the daemon writes: definitions name disks and
/// secrets' users, live records name monitor sockets; none is for others.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the daemon owns.
pub const DIR_MODE: u32 = 0o700;

/// Marks the temp files of `write_atomic`: `.<name>.tmp-<pid>`.
const TMP_MARK: &str = ".tmp-";

/// Creates `dir` (and its parents) with `DIR_MODE`, and tightens the mode
/// of an existing one.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Writes `data` to `path` so that a crash leaves either the old or the
/// new content, never a mix. A failed write removes its temp file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // A temp file left by an older daemon may have a wider mode.
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk must not leave one empty file per attempt behind.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::File::open(dir)?.sync_all()
}

/// Removes the temp files interrupted atomic writes left in `dir` and
/// narrows regular files an older daemon wrote with a wider mode; returns
/// how many temp files went.
pub fn tidy_dir(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') && name.contains(TMP_MARK) {
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
            }
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE)) {
                tracing::warn!("cannot narrow the mode of {}: {e}", path.display());
            }
        }
    }
    removed
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
    /// The CPUs were stopped: what a restarted daemon shows while it
    /// re-attaches, before QEMU can be asked.
    #[serde(default)]
    pub paused: bool,
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

    /// Creates the directories the daemon writes into (owner only) and
    /// removes what interrupted atomic writes left behind. Runs while the
    /// daemon holds its directory lock, so no other daemon's write is
    /// under way.
    pub fn prepare(&self) -> Result<(), Error> {
        for d in [
            self.state_dir.join("domains"),
            self.state_dir.join("autostart"),
            self.state_dir.join("log"),
            self.run_dir.join("live"),
            self.run_dir.join("qmp"),
            self.run_dir.join("pid"),
        ] {
            private_dir(&d).map_err(|e| io_err("create directory", &d, e))?;
            let removed = tidy_dir(&d);
            if removed > 0 {
                tracing::info!(
                    dir = %d.display(),
                    removed,
                    "removed temp files of interrupted writes"
                );
            }
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
            paused: false,
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
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
    }

    #[test]
    fn failed_write_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the data
        // was written: the temp file must go with the error.
        let target = d.path().join("dir");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dir")]);
    }

    #[test]
    fn prepare_removes_stale_temp_files_and_tightens_modes() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("state"), d.path().join("run"));
        fs::create_dir_all(d.path().join("state/domains")).unwrap();
        fs::set_permissions(
            d.path().join("state/domains"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let stale = d.path().join("state/domains/.x.xml.tmp-123");
        fs::write(&stale, b"").unwrap();
        let keep = d.path().join("state/domains/x.xml");
        fs::write(&keep, b"<domain/>").unwrap();
        fs::set_permissions(&keep, fs::Permissions::from_mode(0o644)).unwrap();
        s.prepare().unwrap();
        assert!(!stale.exists());
        assert!(keep.exists());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keep), FILE_MODE);
        assert_eq!(mode(&d.path().join("state/domains")), DIR_MODE);
        assert_eq!(mode(&d.path().join("run/live")), DIR_MODE);
    }
}
