//! Facts about the host: the QEMU binary and its version, whether KVM is
//! usable, the CPU and memory (gathered at start-up); what each emulator
//! can do (`probe`, asked of QEMU on first need and cached); the
//! capabilities documents and define-time checks built from it (`caps`);
//! CPU models (`cpu`); node statistics read from the kernel (`node`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use qemud_protocol::remote::NodeGetInfoRet;

pub mod caps;
pub mod cpu;
pub mod node;
pub mod probe;
pub mod procedures;

use std::sync::Arc;

use probe::ProbeCache;

/// qemud reports itself as this libvirt library version (9.0.0), the API
/// level whose wire behaviour it follows.
pub const LIB_VERSION: u64 = 9_000_000;

#[derive(Clone, Debug)]
pub struct HostInfo {
    pub emulator: PathBuf,
    /// `major * 1_000_000 + minor * 1_000 + micro`, 0 when unknown.
    pub qemu_version: u64,
    pub kvm: bool,
    pub cpu_model: String,
    pub cpus: u32,
    pub mhz: u32,
    pub memory_kib: u64,
    pub host_uuid: String,
    /// What each emulator can do, probed over QMP on first need.
    pub probes: Arc<ProbeCache>,
}

/// Finds the QEMU binary: the configured one, else the first of the usual
/// names on PATH.
pub fn find_emulator(configured: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["qemu-system-x86_64", "qemu-kvm"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let libexec = Path::new("/usr/libexec/qemu-kvm");
    libexec.is_file().then(|| libexec.to_path_buf())
}

/// KVM is usable when /dev/kvm opens read-write.
pub fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Parses "QEMU emulator version 7.2.22 (Debian ...)" into 7002022.
pub fn parse_qemu_version(text: &str) -> Option<u64> {
    let rest = text.split("version ").nth(1)?;
    let ver = rest.split_whitespace().next()?;
    let mut parts = ver.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let micro = parts.next().flatten().unwrap_or(0);
    Some(major * 1_000_000 + minor * 1_000 + micro)
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Free memory in bytes, as `virNodeGetFreeMemory` reports it.
pub fn free_memory_bytes() -> u64 {
    meminfo_kib("MemFree:").unwrap_or(0) * 1024
}

fn cpuinfo() -> (String, u32) {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let mhz = field("cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u32)
        .unwrap_or(0);
    (model, mhz)
}

fn host_uuid() -> String {
    // /etc/machine-id is 32 hex digits; shape it like a UUID.
    let id = fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let id = id.trim();
    match uuid::Uuid::try_parse(id) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => uuid::Uuid::new_v4().hyphenated().to_string(),
    }
}

impl HostInfo {
    /// Probes the host. A missing QEMU is not fatal: the daemon still
    /// answers host queries and fails domain starts with a clear error.
    pub fn probe(configured_emulator: Option<&str>) -> HostInfo {
        let emulator = find_emulator(configured_emulator)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let qemu_version = Command::new(&emulator)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| parse_qemu_version(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or(0);
        let (cpu_model, mhz) = cpuinfo();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        HostInfo {
            probes: Arc::new(ProbeCache::default()),
            emulator,
            qemu_version,
            kvm: kvm_usable(),
            cpu_model,
            cpus,
            mhz,
            memory_kib: meminfo_kib("MemTotal:").unwrap_or(0),
            host_uuid: host_uuid(),
        }
    }

    pub fn node_info(&self) -> NodeGetInfoRet {
        let mut model = [0i8; 32];
        // libvirt reports the architecture here, NUL-terminated.
        for (slot, b) in model.iter_mut().zip(b"x86_64".iter()) {
            *slot = *b as i8;
        }
        NodeGetInfoRet {
            model,
            memory: self.memory_kib,
            cpus: self.cpus as i32,
            mhz: self.mhz as i32,
            nodes: 1,
            sockets: 1,
            cores: self.cpus as i32,
            threads: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_version_parsing() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            Some(7_002_022)
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0"),
            Some(10_000_000)
        );
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn node_info_reports_the_arch() {
        let h = HostInfo {
            emulator: "/usr/bin/qemu-system-x86_64".into(),
            qemu_version: 7_002_000,
            kvm: true,
            cpu_model: "x".into(),
            cpus: 2,
            mhz: 1000,
            memory_kib: 1024,
            host_uuid: "00000000-0000-0000-0000-000000000001".into(),
            probes: Default::default(),
        };
        assert_eq!(h.node_info().model[0], b'x' as i8);
    }
}
