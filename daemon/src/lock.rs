//! One daemon per state and run directory: an exclusive `flock` on each
//! directory, taken before recovery, listeners or anything else, and held
//! for the life of the process (the kernel drops it when the process
//! dies, however it dies). The descriptors are close-on-exec, so QEMUs
//! the daemon starts do not inherit the lock and outlive it without it.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use qemud_config::settings::{parse_perms, Settings};

/// The held locks; dropping them releases the directories.
pub struct DirLocks {
    _held: Vec<Flock<File>>,
}

/// Mode of the run directory: owner only, unless a socket in it is meant
/// for other users, who then may pass through it to that socket by name
/// (0711) but still cannot list it or read the records in it.
pub fn run_dir_mode(s: &Settings) -> u32 {
    let shared = [
        (&s.unix_sock_path, &s.unix_sock_rw_perms),
        (&s.unix_sock_ro_path, &s.unix_sock_ro_perms),
    ]
    .iter()
    .any(|(path, perms)| {
        path.starts_with(&s.run_dir) && parse_perms(perms).map(|m| m & 0o077 != 0).unwrap_or(true)
    });
    if shared {
        0o711
    } else {
        0o700
    }
}

fn lock_dir(what: &str, dir: &Path, mode: u32) -> Result<Flock<File>, String> {
    // Creating a missing directory is the only thing done before the lock.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot create {what} directory {}: {e}", dir.display()))?;
    let file = File::open(dir)
        .map_err(|e| format!("cannot open {what} directory {}: {e}", dir.display()))?;
    let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == Errno::EWOULDBLOCK {
            format!(
                "another qemud is already running on {what} directory {}; refusing to start (nothing was changed)",
                dir.display()
            )
        } else {
            format!("cannot lock {what} directory {}: {e}", dir.display())
        }
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode of {what} directory {}: {e}", dir.display()))?;
    Ok(locked)
}

impl DirLocks {
    /// Locks the state directory, then the run directory (the same order
    /// in every daemon, so two never wait on each other).
    pub fn acquire(s: &Settings) -> Result<DirLocks, String> {
        let state = lock_dir("state", &s.state_dir, 0o700)?;
        if s.run_dir == s.state_dir {
            return Ok(DirLocks { _held: vec![state] });
        }
        let run = lock_dir("run", &s.run_dir, run_dir_mode(s))?;
        Ok(DirLocks {
            _held: vec![state, run],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_dirs_fails_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut s = Settings {
            state_dir: d.path().join("state"),
            ..Settings::default()
        };
        s.set_run_dir(d.path().join("run"));
        let first = DirLocks::acquire(&s).unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&s.state_dir), 0o700);
        // The default read-only socket (0777) lives in the run dir.
        assert_eq!(mode(&s.run_dir), 0o711);
        std::fs::set_permissions(&s.run_dir, std::fs::Permissions::from_mode(0o750))
            .unwrap_or_else(|e| panic!("{e}"));
        let Err(e) = DirLocks::acquire(&s) else {
            panic!("second lock succeeded")
        };
        assert!(e.contains("another qemud is already running"), "{e}");
        assert_eq!(mode(&s.run_dir), 0o750, "the loser changed the run dir");
        drop(first);
        assert!(DirLocks::acquire(&s).is_ok());
    }
}
