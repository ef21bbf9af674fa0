//! The capabilities and domain capabilities documents, and the checks a
//! definition must pass against its emulator at define, all built from
//! the emulator's probe.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qemud_config::capabilities::{Capabilities, GuestCaps, HostCaps, HostCpu, MachineEntry};
use qemud_config::domain::{DomainDef, ARCHES, VIRT_TYPES};
use qemud_config::domcaps::{CpuModelCap, DomainCapabilities};
use qemud_protocol::{ErrorCode, ErrorDomain};

use super::probe::{self, EmulatorCaps};
use super::HostInfo;
use crate::error::{Error, Result};

/// Where QEMU's firmware descriptors live, in override order.
const FIRMWARE_DIRS: &[&str] = &["/usr/share/qemu/firmware", "/etc/qemu/firmware"];

/// Guest architectures the x86_64 emulator serves.
fn serves_arch(arch: &str) -> bool {
    arch == "x86_64" || arch == "i686"
}

/// The QEMU driver's errors carry its error domain.
fn unsupported(message: String) -> Error {
    qemu_error(
        ErrorCode::ConfigUnsupported,
        format!("unsupported configuration: {message}"),
    )
}

fn invalid_arg(message: String) -> Error {
    qemu_error(
        ErrorCode::InvalidArg,
        format!("invalid argument: {message}"),
    )
}

fn system_error(message: String) -> Error {
    qemu_error(ErrorCode::SystemError, message)
}

fn qemu_error(code: ErrorCode, message: String) -> Error {
    Error::Other {
        code,
        domain: ErrorDomain::Qemu,
        message,
    }
}

impl HostInfo {
    /// The virt types this host runs, the default first.
    pub fn virt_types(&self) -> Vec<&'static str> {
        if self.kvm {
            vec!["kvm", "qemu"]
        } else {
            vec!["qemu"]
        }
    }

    /// The probe of `emulator` under `virt_type`, probing on first use.
    pub async fn emulator_caps(
        &self,
        emulator: &Path,
        virt_type: &str,
    ) -> Result<Arc<EmulatorCaps>> {
        self.probes.get(emulator, virt_type).await.map_err(|e| {
            Error::Internal(format!(
                "cannot probe emulator '{}': {e}",
                emulator.display()
            ))
        })
    }

    /// The emulator a definition runs: its own or the host's.
    pub fn emulator_of(&self, def: &DomainDef) -> PathBuf {
        def.devices
            .emulator
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.emulator.clone())
    }

    /// The capabilities document (`virsh capabilities`).
    pub async fn capabilities(&self) -> Capabilities {
        let caps = self.emulator_caps(&self.emulator, "qemu").await.ok();
        let mut machines = Vec::new();
        for m in caps.iter().flat_map(|c| c.machines.iter()) {
            machines.push(MachineEntry {
                name: m.name.clone(),
                canonical: None,
                max_cpus: m.max_cpus,
                deprecated: m.deprecated,
            });
            if let Some(alias) = &m.alias {
                machines.push(MachineEntry {
                    name: alias.clone(),
                    canonical: Some(m.name.clone()),
                    max_cpus: m.max_cpus,
                    deprecated: m.deprecated,
                });
            }
        }
        let cpus = host_cpus(self.cpus);
        let sockets = distinct(cpus.iter().map(|c| c.socket_id)).max(1);
        let dies = distinct(cpus.iter().map(|c| c.die_id)).max(1);
        let threads = cpus
            .first()
            .map(|c| c.siblings.split(',').map(range_len).sum::<u32>())
            .unwrap_or(1)
            .max(1);
        let cores = (cpus.len() as u32 / sockets / dies / threads).max(1);
        // The host CPU as the kernel reports it, named after the closest
        // of libvirt's models.
        let host_features = super::node::cpuinfo_features();
        let cpu_vendor = super::node::cpu_vendor();
        let (cpu_model, cpu_features) =
            match super::cpu::describe(&host_features, cpu_vendor.as_deref()) {
                Some((m, extra)) => (Some(m), extra),
                None => (None, Vec::new()),
            };
        Capabilities {
            host: HostCaps {
                uuid: self.host_uuid.clone(),
                arch: "x86_64".into(),
                cpu_model,
                cpu_vendor,
                cpu_features,
                sockets,
                dies,
                cores,
                threads,
                memory_kib: self.memory_kib,
                cpus,
                pages: super::node::page_sizes(self.memory_kib),
            },
            guests: vec![GuestCaps {
                os_type: "hvm".into(),
                arch: "x86_64".into(),
                wordsize: 64,
                emulator: self.emulator.to_string_lossy().into_owned(),
                machines,
                domain_types: self
                    .virt_types()
                    .iter()
                    .rev()
                    .map(|s| s.to_string())
                    .collect(),
            }],
        }
    }

    /// `virConnectGetDomainCapabilities`: each argument may be absent and
    /// then defaults as libvirt's do.
    pub async fn domain_capabilities(
        &self,
        emulatorbin: Option<&str>,
        arch: Option<&str>,
        machine: Option<&str>,
        virttype: Option<&str>,
    ) -> Result<DomainCapabilities> {
        if let Some(v) = virttype {
            if !VIRT_TYPES.contains(&v) {
                return Err(invalid_arg(format!("unknown virttype: {v}")));
            }
        }
        if let Some(a) = arch {
            if !ARCHES.contains(&a) {
                return Err(invalid_arg(format!("unknown architecture: {a}")));
            }
        }
        let emulator = emulatorbin
            .map(PathBuf::from)
            .unwrap_or_else(|| self.emulator.clone());
        if let Some(a) = arch {
            if !serves_arch(a) {
                if emulatorbin.is_some() {
                    return Err(invalid_arg(format!(
                        "architecture from emulator 'x86_64' doesn't match given architecture '{a}'"
                    )));
                }
                return Err(unsupported(format!(
                    "unable to find any emulator to serve '{a}' architecture"
                )));
            }
        }
        if !emulator.exists() {
            return Err(system_error(format!(
                "Cannot check QEMU binary {}: No such file or directory",
                emulator.display()
            )));
        }
        let virt_type = virttype.unwrap_or(self.virt_types()[0]);
        if virt_type != "qemu" && !(virt_type == "kvm" && self.kvm) {
            return Err(invalid_arg(format!(
                "the accel '{}' is not supported by '{}' on this host",
                if virt_type == "kvm" { "kvm" } else { virt_type },
                emulator.display()
            )));
        }
        let caps = self.emulator_caps(&emulator, virt_type).await?;
        let m = match machine {
            Some(name) => caps.machine(name).ok_or_else(|| {
                invalid_arg(format!(
                    "the machine '{name}' is not supported by emulator '{}'",
                    emulator.display()
                ))
            })?,
            None => caps.default_machine().ok_or_else(|| {
                Error::Internal(format!(
                    "emulator '{}' has no machine types",
                    emulator.display()
                ))
            })?,
        };
        Ok(domain_caps_of(&caps, m, arch.unwrap_or("x86_64")))
    }

    /// libvirt's checks of a definition against its emulator, made at
    /// define so a definition that could never start is not stored.
    pub async fn validate_definition(&self, def: &DomainDef) -> Result<()> {
        let emulator = self.emulator_of(def);
        if def.devices.emulator.is_none() && !serves_arch(&def.os.arch) {
            return Err(unsupported(format!(
                "No emulator found for arch '{}'",
                def.os.arch
            )));
        }
        if !emulator.exists() {
            return Err(system_error(format!(
                "Cannot check QEMU binary {}: No such file or directory",
                emulator.display()
            )));
        }
        let shown = emulator.display();
        if def.os.os_type != "hvm" {
            return Err(unsupported(format!(
                "Emulator '{shown}' does not support os type '{}'",
                def.os.os_type
            )));
        }
        if !serves_arch(&def.os.arch) {
            return Err(unsupported(format!(
                "Emulator '{shown}' does not support arch '{}'",
                def.os.arch
            )));
        }
        if !self.virt_types().contains(&def.domain_type.as_str()) {
            return Err(unsupported(format!(
                "Emulator '{shown}' does not support virt type '{}'",
                def.domain_type
            )));
        }
        let caps = self.emulator_caps(&emulator, &def.domain_type).await?;
        if caps.machine(&def.os.machine).is_none() {
            return Err(unsupported(format!(
                "Emulator '{shown}' does not support machine type '{}'",
                def.os.machine
            )));
        }
        Ok(())
    }

    /// `virConnectGetMaxVcpus`: libvirt answers 16 for TCG and KVM's own
    /// limit for `kvm`.
    pub fn max_vcpus(&self, virt_type: Option<&str>) -> Result<i32> {
        match virt_type {
            None => Ok(16),
            Some(t) if t.eq_ignore_ascii_case("qemu") => Ok(16),
            Some(t) if t.eq_ignore_ascii_case("kvm") => super::node::kvm_max_vcpus().map_err(|e| {
                qemu_error(
                    ErrorCode::SystemError,
                    format!("Unable to get maximum number of vCPUs: {e}"),
                )
            }),
            Some(t) => Err(invalid_arg(format!("unknown type '{t}'"))),
        }
    }
}

fn domain_caps_of(caps: &EmulatorCaps, m: &probe::MachineType, arch: &str) -> DomainCapabilities {
    let dirs: Vec<&Path> = FIRMWARE_DIRS.iter().map(Path::new).collect();
    let firmware = probe::firmware_for(&dirs, arch, &m.name);
    let mut loader_secure = vec!["no".to_string()];
    if firmware.iter().any(|f| f.secure_boot) {
        loader_secure.insert(0, "yes".into());
    }
    let q35 = m.name.starts_with("pc-q35") || m.name == "q35";
    let has = |t: &str| caps.has_device(t);
    let pick = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs
            .iter()
            .filter(|(_, dev)| dev.is_empty() || has(dev))
            .map(|(name, _)| name.to_string())
            .collect()
    };
    // Only what qemud's command line builder can drive, and QEMU has.
    let mut disk_buses = Vec::new();
    if !q35 && has("ide-hd") {
        disk_buses.push("ide".to_string());
    }
    disk_buses.extend(pick(&[
        ("scsi", "virtio-scsi-pci"),
        ("virtio", "virtio-blk-pci"),
        ("sata", "ahci"),
    ]));
    let mut graphics = Vec::new();
    if caps.commands.contains("query-vnc") {
        graphics.push("vnc".to_string());
    }
    DomainCapabilities {
        path: caps.emulator.to_string_lossy().into_owned(),
        domain: caps.virt_type.clone(),
        machine: m.name.clone(),
        arch: arch.to_owned(),
        max_vcpus: m.max_cpus,
        loaders: firmware.into_iter().map(|f| f.executable).collect(),
        loader_secure,
        host_passthrough: caps.virt_type == "kvm",
        host_model: caps.host_model.clone(),
        cpu_models: caps
            .cpu_definitions
            .iter()
            .map(|d| CpuModelCap {
                name: d.name.clone(),
                usable: d.usable,
                vendor: probe::model_vendor(&d.name),
                deprecated: d.deprecated,
            })
            .collect(),
        disk_devices: vec!["disk".into(), "cdrom".into()],
        disk_buses,
        disk_models: Vec::new(),
        graphics,
        video: pick(&[
            ("vga", "VGA"),
            ("cirrus", "cirrus-vga"),
            ("vmvga", "vmware-svga"),
            ("qxl", "qxl-vga"),
            ("virtio", "virtio-vga"),
            ("none", ""),
            ("bochs", "bochs-display"),
            ("ramfb", "ramfb"),
        ]),
        rng_models: pick(&[("virtio", "virtio-rng-pci")]),
        rng_backends: vec!["random".into()],
        tpm_models: Vec::new(),
        channels: Vec::new(),
        filesystem_drivers: Vec::new(),
    }
}

fn distinct(it: impl Iterator<Item = u32>) -> u32 {
    let mut v: Vec<u32> = it.collect();
    v.sort_unstable();
    v.dedup();
    v.len() as u32
}

/// Number of CPUs in one element of a kernel CPU list (`3` or `0-3`).
fn range_len(r: &str) -> u32 {
    match r.trim().split_once('-') {
        Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) if b >= a => b - a + 1,
            _ => 1,
        },
        None => 1,
    }
}

/// The online CPUs with their topology, from sysfs; a flat topology of
/// `count` CPUs when sysfs does not say.
fn host_cpus(count: u32) -> Vec<HostCpu> {
    let read = |cpu: u32, file: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{file}"))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let online = super::node::online_cpus();
    let ids: Vec<u32> = if online.is_empty() {
        (0..count).collect()
    } else {
        online
    };
    ids.into_iter()
        .map(|id| {
            let num =
                |f: &str, d: u32| read(id, f).and_then(|s| s.parse::<u32>().ok()).unwrap_or(d);
            HostCpu {
                id,
                socket_id: num("physical_package_id", 0),
                die_id: num("die_id", 0),
                core_id: num("core_id", id),
                siblings: read(id, "thread_siblings_list").unwrap_or_else(|| id.to_string()),
            }
        })
        .collect()
}
