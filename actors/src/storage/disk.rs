//! What the storage driver does to files: probing images (qcow2 headers are
//! read directly, as libvirt does), statvfs, running `qemu-img` with a
//! deadline, creating raw files, wiping. Everything here is blocking or a
//! child process and runs outside the driver actor.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use qemud_config::storage::{Perms, PoolSizes, Timestamps, VolFacts};

use crate::error::{Error, Result};

/// How long one `qemu-img` run may take before it is killed. Creating or
/// converting a large preallocated image is the slowest case.
pub const QEMU_IMG_DEADLINE: Duration = Duration::from_secs(600);

/// Files a create in progress writes before renaming them into place; a
/// refresh skips them and a pool start removes leftovers of a crash.
pub const PARTIAL_PREFIX: &str = ".qemud-partial-";

fn sys(e: std::io::Error, what: String) -> Error {
    Error::System(format!("{what}: {}", strip_os_error(&e)))
}

/// "No such file or directory" rather than Rust's "... (os error 2)".
pub fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Capacity, allocation and free space of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> Result<PoolSizes> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| {
        Error::System(format!(
            "cannot statvfs path '{}': {}",
            path.display(),
            e.desc()
        ))
    })?;
    let frsize = st.fragment_size() as u64;
    Ok(PoolSizes {
        capacity: st.blocks() as u64 * frsize,
        allocation: (st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * frsize,
        available: st.blocks_available() as u64 * frsize,
    })
}

pub fn perms_of(md: &fs::Metadata) -> Perms {
    Perms {
        mode: Some(md.mode() & 0o777),
        owner: Some(md.uid()),
        group: Some(md.gid()),
        label: None,
    }
}

fn times_of(md: &fs::Metadata) -> Timestamps {
    Timestamps {
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
    }
}

/// What the first bytes of an image say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Header {
    pub format: String,
    pub capacity: Option<u64>,
    pub backing: Option<String>,
    pub backing_format: Option<String>,
    pub compat: Option<String>,
    pub lazy_refcounts: bool,
    pub cluster_size: Option<u64>,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Header extension carrying the backing file's format.
const QCOW2_EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// Reads a qcow2 header; anything else is raw. The first 64 KiB hold every
/// header field, extension and backing name qemu-img writes.
pub fn probe_header(path: &Path) -> std::io::Result<Header> {
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    if buf.len() < 4 || &buf[..4] != QCOW2_MAGIC {
        return Ok(Header {
            format: "raw".into(),
            ..Header::default()
        });
    }
    let mut h = Header {
        format: "qcow2".into(),
        ..Header::default()
    };
    let version = be32(&buf, 4).unwrap_or(0);
    h.capacity = be64(&buf, 24);
    if buf.len() < 72 {
        // A header cut short: still qcow2, with nothing more to learn.
        return Ok(h);
    }
    h.cluster_size = be32(&buf, 20)
        .filter(|bits| (9..=21).contains(bits))
        .map(|bits| 1u64 << bits);
    let backing_off = usize::try_from(be64(&buf, 8).unwrap_or(0)).unwrap_or(usize::MAX);
    let backing_len = be32(&buf, 16).unwrap_or(0) as usize;
    if backing_off != 0 && backing_len != 0 {
        if let Some(name) = backing_off
            .checked_add(backing_len)
            .and_then(|end| buf.get(backing_off..end))
        {
            h.backing = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    let mut ext_at = 72;
    // Version 2 (compat 0.10) has no feature bits: libvirt shows no compat.
    if version >= 3 {
        h.compat = Some("1.1".into());
        h.lazy_refcounts = be64(&buf, 80).unwrap_or(0) & 1 != 0;
        ext_at = be32(&buf, 100).unwrap_or(104) as usize;
        if ext_at < 104 {
            ext_at = 104;
        }
    }
    // Header extensions: type, length, data padded to 8 bytes; type 0 ends.
    while let (Some(kind), Some(len)) = (be32(&buf, ext_at), be32(&buf, ext_at + 4)) {
        if kind == 0 {
            break;
        }
        let data = ext_at + 8;
        if kind == QCOW2_EXT_BACKING_FORMAT {
            if let Some(fmt) = data
                .checked_add(len as usize)
                .and_then(|end| buf.get(data..end))
            {
                h.backing_format = Some(String::from_utf8_lossy(fmt).into_owned());
            }
        }
        match (len as usize)
            .div_ceil(8)
            .checked_mul(8)
            .and_then(|l| data.checked_add(l))
        {
            Some(next) if next < buf.len() => ext_at = next,
            _ => break,
        }
    }
    Ok(h)
}

/// The absolute path a backing name stands for: relative names are relative
/// to the image's directory, as in QEMU.
pub fn backing_path(image: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        b.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("/")).join(b)
    }
}

/// Follows a backing chain from `start`, refusing a loop.
pub fn check_backing_chain(start: &Path) -> Result<()> {
    let mut seen = vec![start.to_path_buf()];
    let mut cur = start.to_path_buf();
    for _ in 0..64 {
        let Ok(h) = probe_header(&cur) else {
            return Ok(());
        };
        let Some(b) = h.backing else {
            return Ok(());
        };
        let next = backing_path(&cur, &b);
        let canon = fs::canonicalize(&next).unwrap_or(next.clone());
        if seen.contains(&canon) || seen.contains(&next) {
            return Err(Error::InvalidArg(format!(
                "backing store for {} ({}) is self-referential",
                cur.display(),
                b
            )));
        }
        seen.push(canon);
        cur = next;
    }
    Err(Error::InvalidArg(format!(
        "backing chain of '{}' is too long",
        start.display()
    )))
}

/// A file's facts as a volume of a file-based pool. `full`: also what
/// only a pool refresh reports (qcow2 compat, cluster size, features), as
/// libvirt fills them only when it rescans a pool.
pub fn vol_facts(name: &str, path: &Path, full: bool) -> std::io::Result<VolFacts> {
    let md = fs::metadata(path)?;
    let (vol_type, header) = if md.is_dir() {
        (
            "dir",
            Header {
                format: "dir".into(),
                ..Header::default()
            },
        )
    } else if md.file_type().is_file() {
        ("file", probe_header(path)?)
    } else {
        (
            "block",
            Header {
                format: "raw".into(),
                ..Header::default()
            },
        )
    };
    let allocation = md.blocks() * 512;
    let backing = header.backing.as_deref().map(|b| {
        let bp = backing_path(path, b);
        let mut facts = VolFacts {
            path: bp.to_string_lossy().into_owned(),
            format: header
                .backing_format
                .clone()
                .unwrap_or_else(|| "raw".into()),
            ..VolFacts::default()
        };
        if let Ok(bmd) = fs::metadata(&bp) {
            facts.perms = perms_of(&bmd);
            facts.times = times_of(&bmd);
            if header.backing_format.is_none() {
                if let Ok(bh) = probe_header(&bp) {
                    facts.format = bh.format;
                }
            }
        }
        Box::new(facts)
    });
    Ok(VolFacts {
        name: name.to_owned(),
        path: path.to_string_lossy().into_owned(),
        vol_type: vol_type.into(),
        capacity: header.capacity.unwrap_or(md.size()),
        allocation,
        physical: md.size(),
        format: header.format,
        perms: perms_of(&md),
        times: times_of(&md),
        compat: if full { header.compat.clone() } else { None },
        cluster_size: if full { header.cluster_size } else { None },
        features: match (full, &header.compat) {
            (true, Some(_)) => Some(if header.lazy_refcounts {
                vec!["lazy_refcounts".to_owned()]
            } else {
                Vec::new()
            }),
            _ => None,
        },
        backing,
    })
}

/// Every volume of a directory: regular files and sub-directories, skipping
/// creates in progress. Files that vanish while scanned are skipped.
pub fn scan_dir(dir: &Path) -> Result<Vec<VolFacts>> {
    let rd = fs::read_dir(dir)
        .map_err(|e| sys(e, format!("cannot open directory '{}'", dir.display())))?;
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PARTIAL_PREFIX) {
            continue;
        }
        if let Ok(f) = vol_facts(&name, &entry.path(), true) {
            out.push(f);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes what a create interrupted by a crash left behind.
pub fn remove_partials(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Runs qemu-img with a deadline; its stderr becomes the error.
pub async fn qemu_img(args: &[String]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        Error::System(format!(
            "Cannot find 'qemu-img' in path: {}",
            strip_os_error(&e)
        ))
    })?;
    let out = match tokio::time::timeout(QEMU_IMG_DEADLINE, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| Error::Internal(format!("qemu-img failed: {e}")))?,
        Err(_) => {
            return Err(Error::Timeout(format!(
                "qemu-img {} did not finish within {} s",
                args.first().map(String::as_str).unwrap_or(""),
                QEMU_IMG_DEADLINE.as_secs()
            )))
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let code = out
            .status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into());
        return Err(Error::Internal(format!(
            "Child process (qemu-img {}) unexpected exit status {code}: {stderr}",
            args.join(" ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates a raw file of `capacity` bytes with `allocation` bytes
/// allocated, exclusively (never over an existing file).
/// `shown` is the path errors name (the volume's, not the partial file's).
pub fn create_raw(
    path: &Path,
    shown: &Path,
    capacity: u64,
    allocation: u64,
    mode: u32,
) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| sys(e, format!("cannot create path '{}'", shown.display())))?;
    let _ = f.set_permissions(fs::Permissions::from_mode(mode));
    f.set_len(capacity)
        .map_err(|e| sys(e, format!("cannot extend file '{}'", shown.display())))?;
    let alloc = allocation.min(capacity);
    if alloc > 0 {
        allocate(&f, 0, alloc).map_err(|e| {
            sys(
                e,
                format!(
                    "cannot allocate {alloc} bytes in file '{}'",
                    shown.display()
                ),
            )
        })?;
    }
    f.sync_all()
        .map_err(|e| sys(e, format!("cannot sync file '{}'", path.display())))
}

fn allocate(f: &fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and plain integers.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), offset as i64, len as i64) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Resizes a raw file, allocating the new part when asked.
pub fn resize_raw(path: &Path, old: u64, new: u64, preallocate: bool) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| sys(e, format!("cannot open '{}'", path.display())))?;
    if preallocate && new > old {
        allocate(&f, old, new - old).map_err(|e| {
            sys(
                e,
                format!("Failed to pre-allocate space for file '{}'", path.display()),
            )
        })?;
    }
    f.set_len(new)
        .map_err(|e| sys(e, format!("Failed to truncate file '{}'", path.display())))?;
    f.sync_all()
        .map_err(|e| sys(e, format!("cannot sync file '{}'", path.display())))
}

/// Zeroes a sparse file by truncating it to nothing and back to `size`.
pub fn zero_sparse(path: &Path, size: u64) -> Result<()> {
    let f = fs::OpenOptions::new().write(true).open(path).map_err(|e| {
        sys(
            e,
            format!(
                "Failed to open storage volume with path '{}'",
                path.display()
            ),
        )
    })?;
    f.set_len(0).map_err(|e| {
        sys(
            e,
            format!(
                "Failed to truncate volume with path '{}' to 0 bytes",
                path.display()
            ),
        )
    })?;
    f.set_len(size).map_err(|e| {
        sys(
            e,
            format!(
                "Failed to truncate volume with path '{}' to {size} bytes",
                path.display()
            ),
        )
    })?;
    f.sync_all()
        .map_err(|e| sys(e, format!("cannot sync data to file '{}'", path.display())))
}

/// Overwrites the first `len` bytes with zeros or pseudo-random data.
pub fn wipe(path: &Path, len: u64, random: bool) -> Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(|e| {
        sys(
            e,
            format!(
                "Failed to open storage volume with path '{}'",
                path.display()
            ),
        )
    })?;
    f.seek(SeekFrom::Start(0)).map_err(|e| {
        sys(
            e,
            format!(
                "Failed to seek to the start in volume with path '{}'",
                path.display()
            ),
        )
    })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if random {
            for chunk in buf[..n].chunks_mut(8) {
                // xorshift64: unpredictable enough to overwrite, not secret.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let bytes = state.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        f.write_all(&buf[..n]).map_err(|e| {
            sys(
                e,
                format!(
                    "Failed to write {n} bytes to storage volume with path '{}'",
                    path.display()
                ),
            )
        })?;
        left -= n as u64;
    }
    f.sync_all()
        .map_err(|e| sys(e, format!("cannot sync data to file '{}'", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_qcow2_headers_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.qcow2");
        for fill in [0x00u8, 0xff, 0x7f] {
            let mut b = b"QFI\xfb\x00\x00\x00\x03".to_vec();
            b.resize(4096, fill);
            std::fs::write(&p, &b).unwrap();
            assert_eq!(probe_header(&p).unwrap().format, "qcow2");
        }
    }

    #[test]
    fn raw_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.img");
        create_raw(&p, &p, 1 << 20, 4096, 0o600).unwrap();
        let f = vol_facts("r.img", &p, true).unwrap();
        assert_eq!(f.format, "raw");
        assert_eq!(f.capacity, 1 << 20);
        assert_eq!(f.perms.mode, Some(0o600));
        assert!(
            create_raw(&p, &p, 1, 0, 0o600).is_err(),
            "never over a file"
        );
        assert!(scan_dir(&dir.path().join("nope")).is_err());
    }
}
