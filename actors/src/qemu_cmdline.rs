//! The QEMU command line for a domain definition. Pure: no I/O, so every
//! rule here is unit-tested against the argv it produces.

use std::path::PathBuf;

use qemud_config::domain::{DomainDef, InterfaceKind, LifecycleAction};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

pub struct LaunchPaths {
    pub qmp_socket: PathBuf,
    pub pidfile: PathBuf,
    pub log_file: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("{0}")]
    Unsupported(String),
}

/// QEMU option syntax: a comma inside a value is written twice.
fn esc(value: &str) -> String {
    value.replace(',', ",,")
}

fn push(argv: &mut Vec<String>, flag: &str, value: impl Into<String>) {
    argv.push(flag.to_owned());
    argv.push(value.into());
}

pub fn build_command_line(
    def: &DomainDef,
    _emulator: &str,
    accel: Accel,
    paths: &LaunchPaths,
) -> Result<Vec<String>, CmdlineError> {
    let mut a = Vec::new();
    push(
        &mut a,
        "-name",
        format!("guest={},debug-threads=on", esc(&def.name)),
    );
    // Start with CPUs stopped: the daemon connects to the monitor first.
    a.push("-S".into());
    a.push("-no-user-config".into());
    a.push("-nodefaults".into());
    let accel_name = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let mut machine = format!("{},accel={accel_name},usb=off", esc(&def.os.machine));
    if !def.features.acpi {
        machine.push_str(",acpi=off");
    }
    push(&mut a, "-machine", machine);
    match (def.cpu_mode.as_deref(), accel) {
        (Some("host-passthrough") | Some("host-model"), Accel::Kvm) => push(&mut a, "-cpu", "host"),
        (Some("host-passthrough") | Some("host-model"), Accel::Tcg) => push(&mut a, "-cpu", "max"),
        _ => {}
    }
    push(&mut a, "-m", format!("size={}k", def.memory_kib));
    push(&mut a, "-smp", def.vcpus.to_string());
    push(&mut a, "-uuid", def.uuid.to_string());
    push(
        &mut a,
        "-qmp",
        format!(
            "unix:{},server=on,wait=off",
            esc(&paths.qmp_socket.to_string_lossy())
        ),
    );
    // A guest power-off pauses QEMU instead of ending it, so the daemon can
    // turn a requested reboot into a reset and sees every shutdown.
    a.push("-no-shutdown".into());
    if def.on_reboot == LifecycleAction::Destroy {
        a.push("-no-reboot".into());
    }
    push(
        &mut a,
        "-pidfile",
        paths.pidfile.to_string_lossy().into_owned(),
    );
    push(&mut a, "-msg", "timestamp=on");
    match &def.devices.graphics {
        Some(g) => {
            let display = match g.port {
                Some(p) if p >= 5900 => format!("{}:{}", esc(&g.listen), p - 5900),
                Some(p) => {
                    return Err(CmdlineError::Unsupported(format!(
                        "vnc port {p} is below 5900"
                    )))
                }
                None => format!("{}:0,to=100", esc(&g.listen)),
            };
            push(&mut a, "-vnc", display);
        }
        None => push(&mut a, "-display", "none"),
    }
    if let Some(k) = &def.os.kernel {
        push(&mut a, "-kernel", k.clone());
        if let Some(i) = &def.os.initrd {
            push(&mut a, "-initrd", i.clone());
        }
        if let Some(c) = &def.os.cmdline {
            push(&mut a, "-append", c.clone());
        }
    } else if !def.os.boot.is_empty() {
        let order: String = def
            .os
            .boot
            .iter()
            .map(|d| match d.as_str() {
                "cdrom" => 'd',
                "network" => 'n',
                "fd" => 'a',
                _ => 'c',
            })
            .collect();
        push(&mut a, "-boot", format!("order={order}"));
    }
    disks(def, &mut a)?;
    for (i, nic) in def.devices.interfaces.iter().enumerate() {
        match &nic.kind {
            InterfaceKind::User => push(&mut a, "-netdev", format!("user,id=hostnet{i}")),
            InterfaceKind::Network(n) => {
                return Err(CmdlineError::Unsupported(format!(
                    "interface type 'network' (network '{n}') is not supported yet"
                )))
            }
            InterfaceKind::Bridge(b) => {
                return Err(CmdlineError::Unsupported(format!(
                    "interface type 'bridge' (bridge '{b}') is not supported yet"
                )))
            }
        }
        let model = match nic.model.as_str() {
            "virtio" => "virtio-net-pci",
            "e1000" => "e1000",
            "e1000e" => "e1000e",
            "rtl8139" => "rtl8139",
            other => {
                return Err(CmdlineError::Unsupported(format!(
                    "interface model '{other}' is not supported"
                )))
            }
        };
        push(
            &mut a,
            "-device",
            format!("{model},netdev=hostnet{i},id=net{i},mac={}", nic.mac),
        );
    }
    for (i, serial) in def.devices.serials.iter().enumerate() {
        let mut chardev = format!("pty,id=charserial{i}");
        if let Some(log) = &serial.log_file {
            let append = if serial.log_append { "on" } else { "off" };
            chardev.push_str(&format!(",logfile={},logappend={append}", esc(log)));
        }
        push(&mut a, "-chardev", chardev);
        push(
            &mut a,
            "-device",
            format!("isa-serial,chardev=charserial{i},id=serial{i}"),
        );
    }
    if let Some(v) = &def.devices.video {
        let dev = match v.as_str() {
            "none" => None,
            "vga" => Some("VGA"),
            "cirrus" => Some("cirrus-vga"),
            "virtio" => Some("virtio-vga"),
            "qxl" => Some("qxl-vga"),
            "bochs" => Some("bochs-display"),
            other => {
                return Err(CmdlineError::Unsupported(format!(
                    "video model '{other}' is not supported"
                )))
            }
        };
        if let Some(d) = dev {
            push(&mut a, "-device", format!("{d},id=video0"));
        }
    }
    if def.devices.memballoon == "virtio" {
        push(&mut a, "-device", "virtio-balloon-pci,id=balloon0");
    }
    Ok(a)
}

fn disks(def: &DomainDef, a: &mut Vec<String>) -> Result<(), CmdlineError> {
    let q35 = def.os.machine.starts_with("q35") || def.os.machine.contains("-q35");
    let mut ahci = false;
    let mut scsi = false;
    let mut sata_unit = 0;
    for (i, disk) in def.devices.disks.iter().enumerate() {
        let mut drive = format!("if=none,id=drive{i},format={}", disk.format);
        if let Some(src) = &disk.source {
            drive = format!("file={},{drive}", esc(src));
        }
        if disk.readonly {
            drive.push_str(",readonly=on");
        }
        push(a, "-drive", drive);
        let cd = disk.device == "cdrom";
        let device = match disk.bus.as_str() {
            "virtio" if cd => {
                return Err(CmdlineError::Unsupported(
                    "cdrom on the virtio bus is not supported".into(),
                ))
            }
            "virtio" => format!("virtio-blk-pci,drive=drive{i},id=disk{i}"),
            "ide" => format!(
                "{},drive=drive{i},id=disk{i}",
                if cd { "ide-cd" } else { "ide-hd" }
            ),
            "sata" if q35 => format!(
                "{},drive=drive{i},id=disk{i}",
                if cd { "ide-cd" } else { "ide-hd" }
            ),
            "sata" => {
                if !ahci {
                    push(a, "-device", "ahci,id=sata0");
                    ahci = true;
                }
                let s = format!(
                    "{},drive=drive{i},id=disk{i},bus=sata0.{sata_unit}",
                    if cd { "ide-cd" } else { "ide-hd" }
                );
                sata_unit += 1;
                s
            }
            "scsi" => {
                if !scsi {
                    push(a, "-device", "virtio-scsi-pci,id=scsi0");
                    scsi = true;
                }
                format!(
                    "{},drive=drive{i},id=disk{i},bus=scsi0.0",
                    if cd { "scsi-cd" } else { "scsi-hd" }
                )
            }
            other => {
                return Err(CmdlineError::Unsupported(format!(
                    "disk bus '{other}' is not supported"
                )))
            }
        };
        push(a, "-device", device);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> LaunchPaths {
        LaunchPaths {
            qmp_socket: "/run/q/a.sock".into(),
            pidfile: "/run/q/a.pid".into(),
            log_file: "/var/log/a.log".into(),
        }
    }

    fn def(extra: &str, machine: &str) -> DomainDef {
        DomainDef::parse(&format!(
            "<domain type='qemu'><name>vm,1</name><memory unit='MiB'>128</memory><vcpu>2</vcpu>\
             <os><type machine='{machine}'>hvm</type><kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0</cmdline></os>\
             <features><acpi/></features><devices>{extra}</devices></domain>"
        ))
        .unwrap()
    }

    fn has_pair(argv: &[String], flag: &str, value: &str) -> bool {
        argv.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn minimal_domain() {
        let argv = build_command_line(&def("", "pc"), "qemu", Accel::Tcg, &paths()).unwrap();
        assert!(has_pair(&argv, "-name", "guest=vm,,1,debug-threads=on"));
        assert!(has_pair(&argv, "-machine", "pc,accel=tcg,usb=off"));
        assert!(has_pair(&argv, "-m", "size=131072k"));
        assert!(has_pair(&argv, "-smp", "2"));
        assert!(has_pair(
            &argv,
            "-qmp",
            "unix:/run/q/a.sock,server=on,wait=off"
        ));
        assert!(has_pair(&argv, "-kernel", "/k"));
        assert!(has_pair(&argv, "-append", "console=ttyS0"));
        assert!(has_pair(&argv, "-display", "none"));
        assert!(argv.contains(&"-S".to_string()));
        assert!(argv.contains(&"-no-shutdown".to_string()));
        assert!(has_pair(&argv, "-device", "virtio-balloon-pci,id=balloon0"));
    }

    #[test]
    fn disks_and_comma_escaping() {
        let d = def(
            "<disk type='file'><source file='/a,b.img'/><target dev='vda'/></disk>\
             <disk type='file'><source file='/c.img'/><target dev='sda'/></disk>",
            "pc",
        );
        let argv = build_command_line(&d, "qemu", Accel::Kvm, &paths()).unwrap();
        assert!(has_pair(
            &argv,
            "-drive",
            "file=/a,,b.img,if=none,id=drive0,format=raw"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "virtio-blk-pci,drive=drive0,id=disk0"
        ));
        assert!(has_pair(&argv, "-device", "ahci,id=sata0"));
        assert!(has_pair(
            &argv,
            "-device",
            "ide-hd,drive=drive1,id=disk1,bus=sata0.0"
        ));
        // q35 has its own AHCI controller.
        let argv = build_command_line(
            &def(
                "<disk type='file'><source file='/c.img'/><target dev='sda'/></disk>",
                "q35",
            ),
            "qemu",
            Accel::Kvm,
            &paths(),
        )
        .unwrap();
        assert!(!argv.iter().any(|x| x == "ahci,id=sata0"));
        assert!(has_pair(&argv, "-device", "ide-hd,drive=drive0,id=disk0"));
    }

    #[test]
    fn serial_network_and_cpu() {
        let d = def(
            "<serial type='pty'><log file='/l,og'/></serial><console type='pty'/><interface type='user'><mac address='52:54:00:00:00:01'/></interface>",
            "pc",
        );
        let argv = build_command_line(&d, "qemu", Accel::Tcg, &paths()).unwrap();
        assert_eq!(
            argv.iter()
                .filter(|x| x.starts_with("pty,id=charserial"))
                .count(),
            1
        );
        assert!(has_pair(&argv, "-netdev", "user,id=hostnet0"));
        assert!(has_pair(
            &argv,
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01"
        ));
        let mut d = def("", "pc");
        d.cpu_mode = Some("host-passthrough".into());
        assert!(has_pair(
            &build_command_line(&d, "q", Accel::Kvm, &paths()).unwrap(),
            "-cpu",
            "host"
        ));
        assert!(has_pair(
            &build_command_line(&d, "q", Accel::Tcg, &paths()).unwrap(),
            "-cpu",
            "max"
        ));
    }

    #[test]
    fn unsupported_interfaces_are_refused() {
        let d = def(
            "<interface type='bridge'><source bridge='br0'/></interface>",
            "pc",
        );
        assert!(build_command_line(&d, "q", Accel::Tcg, &paths()).is_err());
    }
}
