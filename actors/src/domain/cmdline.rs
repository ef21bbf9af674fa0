//! The QEMU command line for a domain definition, for qemu-system-x86_64
//! 7.2. Pure: no I/O, so every rule here is unit-tested against the argv it
//! produces.

use std::path::PathBuf;

use qemud_config::domain::{DiskDef, DomainDef, InterfaceKind, LifecycleAction};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Files the daemon owns for one run of a domain.
pub struct LaunchPaths {
    pub qmp_socket: PathBuf,
    pub pidfile: PathBuf,
    /// Where the caller sends QEMU's stderr; not passed to QEMU.
    pub log_file: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("{0}")]
    Unsupported(String),
}

fn unsupported(msg: impl Into<String>) -> CmdlineError {
    CmdlineError::Unsupported(msg.into())
}

/// QEMU option syntax: a comma inside a value is written twice.
fn esc(value: &str) -> String {
    value.replace(',', ",,")
}

fn push(argv: &mut Vec<String>, flag: &str, value: impl Into<String>) {
    argv.push(flag.to_owned());
    argv.push(value.into());
}

/// The argv for `emulator` (not included) to run `def`.
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
    // Start with CPUs stopped: the daemon connects to the monitor first and
    // then sends `cont`.
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
    if let Some(cpu) = cpu_model(def, accel) {
        push(&mut a, "-cpu", cpu);
    }
    push(&mut a, "-m", format!("size={}k", def.memory_kib));
    push(&mut a, "-smp", smp(def));
    push(&mut a, "-uuid", def.uuid.hyphenated().to_string());
    push(
        &mut a,
        "-qmp",
        format!(
            "unix:{},server=on,wait=off",
            esc(&paths.qmp_socket.to_string_lossy())
        ),
    );
    // A guest power-off pauses QEMU instead of ending it. The registry
    // needs that pause: on SHUTDOWN it either turns a requested reboot into
    // a reset or sends `quit` itself, so every power-off still ends QEMU.
    a.push("-no-shutdown".into());
    if def.on_reboot == LifecycleAction::Destroy {
        a.push("-no-reboot".into());
    }
    // -pidfile takes the rest of the argument verbatim: no comma escaping.
    push(
        &mut a,
        "-pidfile",
        paths.pidfile.to_string_lossy().into_owned(),
    );
    push(&mut a, "-msg", "timestamp=on");
    display(def, &mut a)?;
    boot(def, &mut a);
    disks(def, &mut a)?;
    interfaces(def, &mut a)?;
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
    if def.devices.guest_agent {
        // The agent's port on a socket the daemon connects to for each
        // request; QEMU serves it.
        let socket = crate::domain::agent::socket_for(&paths.qmp_socket);
        push(&mut a, "-device", "virtio-serial-pci,id=virtio-serial0");
        push(
            &mut a,
            "-chardev",
            format!(
                "socket,id=charchannel0,path={},server=on,wait=off",
                esc(&socket.to_string_lossy())
            ),
        );
        push(
            &mut a,
            "-device",
            format!(
                "virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,name={}",
                qemud_config::domain::GUEST_AGENT_PORT
            ),
        );
    }
    inputs(def, &mut a)?;
    video(def, &mut a)?;
    if def.devices.memballoon == "virtio" {
        push(&mut a, "-device", "virtio-balloon-pci,id=balloon0");
    }
    for (i, rng) in def.devices.rngs.iter().enumerate() {
        let backend = match &rng.source {
            Some(path) => format!("rng-random,id=objrng{i},filename={}", esc(path)),
            None => format!("rng-builtin,id=objrng{i}"),
        };
        push(&mut a, "-object", backend);
        push(
            &mut a,
            "-device",
            format!("virtio-rng-pci,rng=objrng{i},id=rng{i}"),
        );
    }
    Ok(a)
}

fn cpu_model(def: &DomainDef, accel: Accel) -> Option<String> {
    match (def.cpu_mode.as_deref(), accel) {
        // TCG cannot pass the host CPU through; "max" is its closest match.
        (Some("host-passthrough" | "host-model"), Accel::Kvm) => Some("host".into()),
        (Some("host-passthrough" | "host-model" | "maximum"), Accel::Tcg) => Some("max".into()),
        (Some("maximum"), Accel::Kvm) => Some("max".into()),
        (Some("custom"), _) => def.cpu_model.as_deref().map(esc),
        _ => None,
    }
}

fn smp(def: &DomainDef) -> String {
    let mut smp = def.current_vcpus.min(def.vcpus).max(1).to_string();
    if def.current_vcpus < def.vcpus {
        smp.push_str(&format!(",maxcpus={}", def.vcpus));
    }
    if let Some(t) = &def.cpu_topology {
        smp.push_str(&format!(
            ",sockets={},dies={},cores={},threads={}",
            t.sockets, t.dies, t.cores, t.threads
        ));
    }
    smp
}

fn display(def: &DomainDef, a: &mut Vec<String>) -> Result<(), CmdlineError> {
    let Some(g) = &def.devices.graphics else {
        push(a, "-display", "none");
        return Ok(());
    };
    // An IPv6 address needs brackets to be told apart from the display.
    let host = if g.listen.contains(':') && !g.listen.starts_with('[') {
        format!("[{}]", g.listen)
    } else {
        g.listen.clone()
    };
    let display = match g.port {
        Some(p) if p >= 5900 => format!("{}:{}", esc(&host), p - 5900),
        Some(p) => return Err(unsupported(format!("vnc port {p} is below 5900"))),
        // Autoport: QEMU takes the first free display from 0 to 100.
        None => format!("{}:0,to=100", esc(&host)),
    };
    push(a, "-vnc", display);
    Ok(())
}

fn boot(def: &DomainDef, a: &mut Vec<String>) {
    if let Some(k) = &def.os.kernel {
        // -kernel, -initrd and -append take their argument verbatim.
        push(a, "-kernel", k.clone());
        if let Some(i) = &def.os.initrd {
            push(a, "-initrd", i.clone());
        }
        if let Some(c) = &def.os.cmdline {
            push(a, "-append", c.clone());
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
        push(a, "-boot", format!("order={order}"));
    }
}

fn is_q35(machine: &str) -> bool {
    machine == "q35" || machine.starts_with("pc-q35")
}

/// Ports of an AHCI controller (QEMU's ich9-ahci and ahci alike).
const AHCI_PORTS: usize = 6;

/// The PIIX IDE slot (bus, unit) an `hdX` name asks for, as libvirt maps
/// them: hda/hdb on the primary channel, hdc/hdd on the secondary.
fn ide_slot_by_name(target_dev: &str) -> Option<usize> {
    match target_dev {
        "hda" => Some(0),
        "hdb" => Some(1),
        "hdc" => Some(2),
        "hdd" => Some(3),
        _ => None,
    }
}

/// Slots of the PIIX IDE disks, by disk index: named disks get their
/// slot, the others the first free ones.
fn ide_slots(disks: &[DiskDef]) -> Result<Vec<Option<usize>>, CmdlineError> {
    let mut slots: Vec<Option<usize>> = vec![None; disks.len()];
    let mut taken = [false; 4];
    for (i, disk) in disks.iter().enumerate() {
        if disk.bus != "ide" {
            continue;
        }
        if let Some(s) = ide_slot_by_name(&disk.target_dev) {
            taken[s] = true;
            slots[i] = Some(s);
        }
    }
    for (i, disk) in disks.iter().enumerate() {
        if disk.bus != "ide" || slots[i].is_some() {
            continue;
        }
        let free = taken
            .iter()
            .position(|t| !t)
            .ok_or_else(|| unsupported("at most 4 IDE disks are supported"))?;
        taken[free] = true;
        slots[i] = Some(free);
    }
    Ok(slots)
}

fn disks(def: &DomainDef, a: &mut Vec<String>) -> Result<(), CmdlineError> {
    let q35 = is_q35(&def.os.machine);
    let ide = if q35 {
        Vec::new()
    } else {
        ide_slots(&def.devices.disks)?
    };
    let mut ahci = false;
    let mut scsi = false;
    let mut ahci_port = 0;
    for (i, disk) in def.devices.disks.iter().enumerate() {
        let mut drive = String::new();
        if let Some(src) = &disk.source {
            drive.push_str(&format!("file={},", esc(src)));
        }
        drive.push_str(&format!("if=none,id=drive{i}"));
        // An empty drive has no image for a format driver to open.
        if disk.source.is_some() {
            drive.push_str(&format!(",format={}", esc(&disk.format)));
        }
        if disk.readonly {
            drive.push_str(",readonly=on");
        }
        push(a, "-drive", drive);
        let cd = disk.device == "cdrom";
        let ide_model = if cd { "ide-cd" } else { "ide-hd" };
        let mut device = match disk.bus.as_str() {
            "virtio" if cd => {
                return Err(unsupported("cdrom on the virtio bus is not supported"));
            }
            "virtio" => format!("virtio-blk-pci,drive=drive{i},id=disk{i}"),
            // q35 has no IDE controller; its built-in AHCI serves both.
            "sata" | "ide" if q35 => {
                if ahci_port >= AHCI_PORTS {
                    return Err(unsupported(format!(
                        "at most {AHCI_PORTS} SATA disks are supported"
                    )));
                }
                let s = format!("{ide_model},drive=drive{i},id=disk{i},bus=ide.{ahci_port}");
                ahci_port += 1;
                s
            }
            "ide" => match ide.get(i).copied().flatten() {
                Some(slot) => format!(
                    "{ide_model},drive=drive{i},id=disk{i},bus=ide.{},unit={}",
                    slot / 2,
                    slot % 2
                ),
                None => format!("{ide_model},drive=drive{i},id=disk{i}"),
            },
            "sata" => {
                if !ahci {
                    push(a, "-device", "ahci,id=sata0");
                    ahci = true;
                }
                if ahci_port >= AHCI_PORTS {
                    return Err(unsupported(format!(
                        "at most {AHCI_PORTS} SATA disks are supported"
                    )));
                }
                let s = format!("{ide_model},drive=drive{i},id=disk{i},bus=sata0.{ahci_port}");
                ahci_port += 1;
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
            other => return Err(unsupported(format!("disk bus '{other}' is not supported"))),
        };
        if let Some(n) = disk.boot_order {
            device.push_str(&format!(",bootindex={n}"));
        }
        // QEMU refuses a second writer of an image unless told it is shared.
        if disk.shareable {
            device.push_str(",share-rw=on");
        }
        push(a, "-device", device);
    }
    Ok(())
}

fn interfaces(def: &DomainDef, a: &mut Vec<String>) -> Result<(), CmdlineError> {
    for (i, nic) in def.devices.interfaces.iter().enumerate() {
        match &nic.kind {
            InterfaceKind::User => push(a, "-netdev", format!("user,id=hostnet{i}")),
            // The daemon created (and plugged) the tap before starting QEMU.
            kind => {
                let tap = crate::network::nic_tap(&def.uuid, i, kind).unwrap_or_default();
                push(
                    a,
                    "-netdev",
                    format!(
                        "tap,id=hostnet{i},ifname={},script=no,downscript=no",
                        esc(&tap)
                    ),
                )
            }
        }
        let model = match nic.model.as_str() {
            "virtio" => "virtio-net-pci",
            "e1000" => "e1000",
            "e1000e" => "e1000e",
            "rtl8139" => "rtl8139",
            other => {
                return Err(unsupported(format!(
                    "interface model '{other}' is not supported"
                )))
            }
        };
        let mut device = format!("{model},netdev=hostnet{i},id=net{i},mac={}", esc(&nic.mac));
        if let Some(n) = nic.boot_order {
            device.push_str(&format!(",bootindex={n}"));
        }
        push(a, "-device", device);
    }
    Ok(())
}

fn inputs(def: &DomainDef, a: &mut Vec<String>) -> Result<(), CmdlineError> {
    let mut usb = false;
    for (i, input) in def.devices.inputs.iter().enumerate() {
        let device = match (input.bus.as_str(), input.kind.as_str()) {
            // The i8042 controller of both machine types provides these.
            ("ps2", "mouse" | "keyboard") => continue,
            ("usb", kind @ ("mouse" | "tablet" | "keyboard")) => {
                if !usb {
                    // usb=off on -machine: the controller is added here,
                    // only when something sits on it.
                    push(a, "-device", "qemu-xhci,id=usb");
                    usb = true;
                }
                let model = if kind == "keyboard" { "kbd" } else { kind };
                format!("usb-{model},id=input{i},bus=usb.0")
            }
            ("virtio", kind @ ("mouse" | "tablet" | "keyboard")) => {
                format!("virtio-{kind}-pci,id=input{i}")
            }
            (bus, kind) => {
                return Err(unsupported(format!(
                    "input device '{kind}' on bus '{bus}' is not supported"
                )))
            }
        };
        push(a, "-device", device);
    }
    Ok(())
}

fn video(def: &DomainDef, a: &mut Vec<String>) -> Result<(), CmdlineError> {
    let Some(model) = &def.devices.video else {
        return Ok(());
    };
    let device = match model.as_str() {
        "none" => return Ok(()),
        "vga" => "VGA",
        "cirrus" => "cirrus-vga",
        "virtio" => "virtio-vga",
        "qxl" => "qxl-vga",
        "bochs" => "bochs-display",
        "ramfb" => "ramfb",
        "vmvga" => "vmware-svga",
        other => {
            return Err(unsupported(format!(
                "video model '{other}' is not supported"
            )))
        }
    };
    push(a, "-device", format!("{device},id=video0"));
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

    fn parse(xml: &str) -> DomainDef {
        match DomainDef::parse(xml) {
            Ok(d) => d,
            Err(e) => panic!("{e:?} for {xml}"),
        }
    }

    fn def(extra: &str, machine: &str) -> DomainDef {
        parse(&format!(
            "<domain type='qemu'><name>vm,1</name><memory unit='MiB'>128</memory><vcpu>2</vcpu>\
             <os><type machine='{machine}'>hvm</type><kernel>/k,1</kernel><initrd>/i</initrd><cmdline>console=ttyS0,115200</cmdline></os>\
             <features><acpi/></features><devices>{extra}</devices></domain>"
        ))
    }

    fn build(d: &DomainDef, accel: Accel) -> Vec<String> {
        match build_command_line(d, "qemu-system-x86_64", accel, &paths()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn has_pair(argv: &[String], flag: &str, value: &str) -> bool {
        argv.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    fn count(argv: &[String], value: &str) -> usize {
        argv.iter().filter(|x| *x == value).count()
    }

    #[test]
    fn minimal_domain() {
        let d = parse(
            "<domain type='qemu'><name>tiny</name><uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\
             <memory unit='MiB'>32</memory><os><type>hvm</type></os></domain>",
        );
        let argv = build(&d, Accel::Tcg);
        assert!(has_pair(&argv, "-name", "guest=tiny,debug-threads=on"));
        assert!(has_pair(&argv, "-machine", "pc,accel=tcg,usb=off,acpi=off"));
        assert!(has_pair(&argv, "-m", "size=32768k"));
        assert!(has_pair(&argv, "-smp", "1"));
        assert!(has_pair(
            &argv,
            "-uuid",
            "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
        ));
        assert!(has_pair(
            &argv,
            "-qmp",
            "unix:/run/q/a.sock,server=on,wait=off"
        ));
        assert!(has_pair(&argv, "-pidfile", "/run/q/a.pid"));
        assert!(has_pair(&argv, "-msg", "timestamp=on"));
        assert!(has_pair(&argv, "-display", "none"));
        assert!(has_pair(&argv, "-device", "virtio-balloon-pci,id=balloon0"));
        for flag in ["-S", "-no-user-config", "-nodefaults", "-no-shutdown"] {
            assert_eq!(count(&argv, flag), 1, "{flag}");
        }
        for absent in ["-cpu", "-no-reboot", "-kernel", "-boot", "-D", "-vnc"] {
            assert_eq!(count(&argv, absent), 0, "{absent}");
        }
    }

    #[test]
    fn kernel_boot_and_comma_escaping() {
        let d = def("", "pc");
        let argv = build(&d, Accel::Tcg);
        assert!(has_pair(&argv, "-name", "guest=vm,,1,debug-threads=on"));
        assert!(has_pair(&argv, "-machine", "pc,accel=tcg,usb=off"));
        assert!(has_pair(&argv, "-smp", "2"));
        assert!(has_pair(&argv, "-m", "size=131072k"));
        // These three are not parsed as key=value lists by QEMU.
        assert!(has_pair(&argv, "-kernel", "/k,1"));
        assert!(has_pair(&argv, "-initrd", "/i"));
        assert!(has_pair(&argv, "-append", "console=ttyS0,115200"));
        assert_eq!(count(&argv, "-boot"), 0);
        let mut d = d;
        d.os.kernel = None;
        d.os.boot = vec!["cdrom".into(), "hd".into(), "network".into()];
        d.on_reboot = LifecycleAction::Destroy;
        d.os.machine = "pc,x=y".into();
        let argv = build(&d, Accel::Kvm);
        assert!(has_pair(&argv, "-boot", "order=dcn"));
        assert_eq!(count(&argv, "-initrd"), 0);
        assert_eq!(count(&argv, "-no-reboot"), 1);
        assert!(has_pair(&argv, "-machine", "pc,,x=y,accel=kvm,usb=off"));
    }

    #[test]
    fn disks_on_pc() {
        let d = def(
            "<disk type='file'><source file='/a,b.img'/><target dev='vda'/></disk>\
             <disk type='file'><driver name='qemu' type='qcow2'/><source file='/c.img'/><target dev='sda'/></disk>\
             <disk type='file' device='cdrom'><target dev='sdb'/></disk>\
             <disk type='block'><source dev='/dev/sdz'/><target dev='hdc'/><readonly/></disk>\
             <disk type='file'><source file='/e.img'/><target dev='hdq' bus='ide'/></disk>\
             <disk type='file'><source file='/s.img'/><target dev='sdc' bus='scsi'/><boot order='1'/></disk>",
            "pc",
        );
        let argv = build(&d, Accel::Kvm);
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
        assert_eq!(count(&argv, "ahci,id=sata0"), 1);
        assert!(has_pair(
            &argv,
            "-drive",
            "file=/c.img,if=none,id=drive1,format=qcow2"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "ide-hd,drive=drive1,id=disk1,bus=sata0.0"
        ));
        assert!(has_pair(&argv, "-drive", "if=none,id=drive2,readonly=on"));
        assert!(has_pair(
            &argv,
            "-device",
            "ide-cd,drive=drive2,id=disk2,bus=sata0.1"
        ));
        assert!(has_pair(
            &argv,
            "-drive",
            "file=/dev/sdz,if=none,id=drive3,format=raw,readonly=on"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "ide-hd,drive=drive3,id=disk3,bus=ide.1,unit=0"
        ));
        // The unnamed IDE disk takes the first slot hdc left free.
        assert!(has_pair(
            &argv,
            "-device",
            "ide-hd,drive=drive4,id=disk4,bus=ide.0,unit=0"
        ));
        assert_eq!(count(&argv, "virtio-scsi-pci,id=scsi0"), 1);
        assert!(has_pair(
            &argv,
            "-device",
            "scsi-hd,drive=drive5,id=disk5,bus=scsi0.0,bootindex=1"
        ));
    }

    #[test]
    fn q35_uses_its_own_ahci() {
        let d = def(
            "<disk type='file'><source file='/c.img'/><target dev='sda'/></disk>\
             <disk type='file' device='cdrom'><source file='/d.iso'/><target dev='sdb'/></disk>",
            "q35",
        );
        let argv = build(&d, Accel::Kvm);
        assert_eq!(count(&argv, "ahci,id=sata0"), 0);
        assert!(has_pair(&argv, "-machine", "q35,accel=kvm,usb=off"));
        assert!(has_pair(
            &argv,
            "-device",
            "ide-hd,drive=drive0,id=disk0,bus=ide.0"
        ));
        assert!(has_pair(
            &argv,
            "-drive",
            "file=/d.iso,if=none,id=drive1,format=raw,readonly=on"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "ide-cd,drive=drive1,id=disk1,bus=ide.1"
        ));
        let seven: String = (0..7)
            .map(|n| {
                format!(
                    "<disk type='file'><source file='/{n}'/><target dev='sd{}'/></disk>",
                    char::from(b'a' + n)
                )
            })
            .collect();
        for machine in ["q35", "pc"] {
            assert!(build_command_line(&def(&seven, machine), "q", Accel::Kvm, &paths()).is_err());
        }
    }

    #[test]
    fn serial_console_and_network() {
        let d = def(
            "<serial type='pty'><log file='/l,og' append='on'/></serial><console type='pty'/>\
             <interface type='user'><mac address='52:54:00:00:00:01'/></interface>\
             <interface type='user'><mac address='52:54:00:00:00:02'/><model type='e1000'/><boot order='2'/></interface>",
            "pc",
        );
        let argv = build(&d, Accel::Tcg);
        // The console is serial 0, not a second port.
        assert_eq!(count(&argv, "-chardev"), 1);
        assert!(has_pair(
            &argv,
            "-chardev",
            "pty,id=charserial0,logfile=/l,,og,logappend=on"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "isa-serial,chardev=charserial0,id=serial0"
        ));
        assert!(has_pair(&argv, "-netdev", "user,id=hostnet0"));
        assert!(has_pair(
            &argv,
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "e1000,netdev=hostnet1,id=net1,mac=52:54:00:00:00:02,bootindex=2"
        ));
    }

    #[test]
    fn cpu_models() {
        let mut d = def("", "pc");
        let cpu = |d: &DomainDef, accel| {
            let a = build(d, accel);
            a.windows(2).find(|w| w[0] == "-cpu").map(|w| w[1].clone())
        };
        d.cpu_mode = Some("host-passthrough".into());
        assert_eq!(cpu(&d, Accel::Kvm).as_deref(), Some("host"));
        assert_eq!(cpu(&d, Accel::Tcg).as_deref(), Some("max"));
        d.cpu_mode = Some("custom".into());
        d.cpu_model = Some("Skylake-Client".into());
        assert_eq!(cpu(&d, Accel::Kvm).as_deref(), Some("Skylake-Client"));
        d.cpu_model = None;
        assert_eq!(cpu(&d, Accel::Kvm), None);
    }

    #[test]
    fn smp_topology_and_hotplug() {
        let d = parse(
            "<domain type='kvm'><name>s</name><memory>65536</memory><vcpu current='2'>4</vcpu>\
             <os><type>hvm</type></os><cpu><topology sockets='1' cores='2' threads='2'/></cpu></domain>",
        );
        assert!(has_pair(
            &build(&d, Accel::Kvm),
            "-smp",
            "2,maxcpus=4,sockets=1,dies=1,cores=2,threads=2"
        ));
    }

    #[test]
    fn shareable_disks_are_shared_rw() {
        let d = def(
            "<disk type='file' device='disk'><source file='/s.img'/><target dev='vda' bus='virtio'/><shareable/></disk>",
            "pc",
        );
        let argv = build_command_line(&d, "q", Accel::Tcg, &paths()).expect("argv");
        assert!(has_pair(
            &argv,
            "-device",
            "virtio-blk-pci,drive=drive0,id=disk0,share-rw=on"
        ));
    }

    #[test]
    fn vnc_inputs_video_and_rng() {
        let d = def(
            "<graphics type='vnc' port='5903' listen='0.0.0.0'/><input type='tablet' bus='usb'/>\
             <input type='keyboard' bus='usb'/><input type='mouse'/><input type='keyboard' bus='virtio'/>\
             <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
            "pc",
        );
        let argv = build(&d, Accel::Tcg);
        assert!(has_pair(&argv, "-vnc", "0.0.0.0:3"));
        assert_eq!(count(&argv, "-display"), 0);
        assert_eq!(count(&argv, "qemu-xhci,id=usb"), 1);
        assert!(has_pair(&argv, "-device", "usb-tablet,id=input0,bus=usb.0"));
        assert!(has_pair(&argv, "-device", "usb-kbd,id=input1,bus=usb.0"));
        assert!(has_pair(&argv, "-device", "virtio-keyboard-pci,id=input3"));
        assert!(!argv.iter().any(|x| x.contains("input2")));
        // Graphics without a <video> get the default VGA card.
        assert!(has_pair(&argv, "-device", "VGA,id=video0"));
        assert!(has_pair(
            &argv,
            "-object",
            "rng-random,id=objrng0,filename=/dev/urandom"
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "virtio-rng-pci,rng=objrng0,id=rng0"
        ));
        let d = def(
            "<graphics type='vnc' autoport='yes' listen='::1'/><video><model type='none'/></video>",
            "pc",
        );
        let argv = build(&d, Accel::Tcg);
        assert!(has_pair(&argv, "-vnc", "[::1]:0,to=100"));
        assert!(!argv.iter().any(|x| x.ends_with("id=video0")));
    }

    #[test]
    fn network_and_bridge_nics_use_the_daemons_taps() {
        let d = def(
            "<interface type='network'><source network='default'/><mac address='52:54:00:00:00:07'/></interface>\
             <interface type='bridge'><source bridge='br0'/><model type='e1000'/></interface>\
             <interface type='ethernet'><target dev='mytap0'/></interface>",
            "pc",
        );
        let argv = build(&d, Accel::Tcg);
        let tap0 = crate::network::tap_name(&d.uuid, 0);
        let tap1 = crate::network::tap_name(&d.uuid, 1);
        assert!(tap0 != tap1);
        assert!(crate::network::tap_name(&d.uuid, 99).len() <= 15);
        assert!(has_pair(
            &argv,
            "-netdev",
            &format!("tap,id=hostnet0,ifname={tap0},script=no,downscript=no")
        ));
        assert!(has_pair(
            &argv,
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:00:00:07"
        ));
        assert!(has_pair(
            &argv,
            "-netdev",
            &format!("tap,id=hostnet1,ifname={tap1},script=no,downscript=no")
        ));
        assert!(has_pair(
            &argv,
            "-netdev",
            "tap,id=hostnet2,ifname=mytap0,script=no,downscript=no"
        ));
    }

    #[test]
    fn unsupported_devices_are_refused() {
        for extra in [
            "<interface type='user'><model type='ne2k_pci'/></interface>",
            "<disk type='file' device='cdrom'><target dev='vdb'/></disk>",
        ] {
            let d = def(extra, "pc");
            assert!(
                matches!(
                    build_command_line(&d, "q", Accel::Tcg, &paths()),
                    Err(CmdlineError::Unsupported(_))
                ),
                "{extra}"
            );
        }
    }
}
