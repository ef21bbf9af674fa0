//! The libvirt domain XML model: the subset qemud runs, parsed and validated
//! from a client's XML and formatted back with defaults filled in, the way
//! `virsh dumpxml` shows a definition.

use std::fmt::Write as _;

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainXmlError {
    /// The text is not well-formed XML (libvirt: VIR_ERR_XML_ERROR).
    #[error("{0}")]
    Xml(String),
    /// Well-formed but not a valid definition.
    #[error("{0}")]
    Invalid(String),
    /// Valid libvirt XML that qemud cannot honour
    /// (libvirt: VIR_ERR_CONFIG_UNSUPPORTED).
    #[error("{0}")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, DomainXmlError>;

fn invalid(msg: impl Into<String>) -> DomainXmlError {
    DomainXmlError::Invalid(msg.into())
}

fn unsupported(msg: impl Into<String>) -> DomainXmlError {
    DomainXmlError::Unsupported(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Destroy,
    Restart,
    Preserve,
    RenameRestart,
    CoredumpDestroy,
    CoredumpRestart,
}

impl LifecycleAction {
    fn parse(s: &str, element: &str) -> Result<Self> {
        Ok(match s.trim() {
            "destroy" => Self::Destroy,
            "restart" => Self::Restart,
            "preserve" => Self::Preserve,
            "rename-restart" => Self::RenameRestart,
            "coredump-destroy" => Self::CoredumpDestroy,
            "coredump-restart" => Self::CoredumpRestart,
            other => return Err(invalid(format!("unknown {element} action '{other}'"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Restart => "restart",
            Self::Preserve => "preserve",
            Self::RenameRestart => "rename-restart",
            Self::CoredumpDestroy => "coredump-destroy",
            Self::CoredumpRestart => "coredump-restart",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsDef {
    pub arch: String,
    pub machine: String,
    pub boot: Vec<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Features {
    pub acpi: bool,
    pub apic: bool,
    pub pae: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDef {
    /// "file" or "block".
    pub source_type: String,
    /// "disk" or "cdrom".
    pub device: String,
    /// "raw" or "qcow2".
    pub format: String,
    pub source: Option<String>,
    pub target_dev: String,
    /// "virtio", "sata", "ide" or "scsi".
    pub bus: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceKind {
    User,
    Network(String),
    Bridge(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDef {
    pub kind: InterfaceKind,
    pub mac: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphicsDef {
    /// None means let QEMU pick (autoport).
    pub port: Option<u16>,
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SerialDef {
    /// `<log file='...'/>`: a copy of everything the guest writes.
    pub log_file: Option<String>,
    pub log_append: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Devices {
    pub emulator: Option<String>,
    pub disks: Vec<DiskDef>,
    pub interfaces: Vec<InterfaceDef>,
    /// pty serial ports (the console aliases serial 0).
    pub serials: Vec<SerialDef>,
    pub console: bool,
    pub graphics: Option<GraphicsDef>,
    /// Video model, "none" for no video device.
    pub video: Option<String>,
    /// Memory balloon model: "virtio" or "none".
    pub memballoon: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    /// "kvm" or "qemu".
    pub domain_type: String,
    pub name: String,
    pub uuid: Uuid,
    pub title: Option<String>,
    pub description: Option<String>,
    pub memory_kib: u64,
    pub current_memory_kib: u64,
    pub vcpus: u32,
    pub os: OsDef,
    pub features: Features,
    /// "host-passthrough", "host-model" or None.
    pub cpu_mode: Option<String>,
    pub on_poweroff: LifecycleAction,
    pub on_reboot: LifecycleAction,
    pub on_crash: LifecycleAction,
    pub devices: Devices,
}

/// Run-time facts shown in the XML of a running domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveXml {
    pub id: i32,
    /// pty path of each serial port, by index.
    pub pty_paths: Vec<String>,
    pub vnc_port: Option<u16>,
}

/// A random locally administered MAC in QEMU's 52:54:00 range.
pub fn generate_mac() -> String {
    let b = Uuid::new_v4().into_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn parse_unit_kib(value: &str, unit: Option<&str>, element: &str) -> Result<u64> {
    let n: u64 = value.trim().parse().map_err(|_| {
        invalid(format!(
            "invalid value '{}' for element '{element}'",
            value.trim()
        ))
    })?;
    let bytes_per: u128 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1024,
        "MB" => 1000u128.pow(2),
        "M" | "m" | "MiB" => 1024u128.pow(2),
        "GB" => 1000u128.pow(3),
        "G" | "g" | "GiB" => 1024u128.pow(3),
        "TB" => 1000u128.pow(4),
        "T" | "t" | "TiB" => 1024u128.pow(4),
        other => {
            return Err(invalid(format!(
                "unknown memory unit '{other}' in element '{element}'"
            )))
        }
    };
    let kib = (n as u128 * bytes_per).div_ceil(1024);
    u64::try_from(kib).map_err(|_| invalid(format!("value of '{element}' is too large")))
}

/// Elements under <devices> that would change what the guest sees and that
/// qemud does not implement; refusing them beats silently dropping them.
const UNSUPPORTED_DEVICES: &[&str] = &[
    "hostdev",
    "filesystem",
    "redirdev",
    "smartcard",
    "tpm",
    "shmem",
    "iommu",
    "vsock",
    "sound",
    "hub",
    "panic",
    "watchdog",
    "rng",
    "lease",
    "nvram",
    "parallel",
    "channel",
    "crypto",
    "audio",
];

fn child<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(n: roxmltree::Node, name: &str) -> Option<String> {
    child(n, name).map(|c| c.text().unwrap_or("").trim().to_owned())
}

impl DomainDef {
    pub fn parse(xml: &str) -> Result<DomainDef> {
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain" {
            return Err(invalid(format!(
                "unexpected root element <{}>, expecting <domain>",
                root.tag_name().name()
            )));
        }
        let domain_type = root
            .attribute("type")
            .ok_or_else(|| invalid("missing domain type attribute"))?
            .to_owned();
        if domain_type != "kvm" && domain_type != "qemu" {
            return Err(unsupported(format!(
                "domain type '{domain_type}' is not supported"
            )));
        }
        let name = text_of(root, "name").unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("missing name information"));
        }
        if name.contains('/') {
            return Err(invalid(format!("name {name} cannot contain '/'")));
        }
        let uuid = match text_of(root, "uuid") {
            Some(u) => {
                Uuid::parse_str(&u).map_err(|_| invalid(format!("malformed uuid element '{u}'")))?
            }
            None => Uuid::new_v4(),
        };
        let memory = child(root, "memory").ok_or_else(|| invalid("missing memory element"))?;
        let memory_kib = parse_unit_kib(
            memory.text().unwrap_or(""),
            memory.attribute("unit"),
            "memory",
        )?;
        if memory_kib == 0 {
            return Err(invalid(
                "Memory size must be specified via <memory> or in the <numa> configuration",
            ));
        }
        let current_memory_kib = match child(root, "currentMemory") {
            Some(c) => {
                parse_unit_kib(c.text().unwrap_or(""), c.attribute("unit"), "currentMemory")?
            }
            None => memory_kib,
        };
        if current_memory_kib > memory_kib {
            return Err(invalid("current memory must not exceed maximum memory"));
        }
        let vcpus = match child(root, "vcpu") {
            Some(v) => {
                let n: u32 = v
                    .text()
                    .unwrap_or("")
                    .trim()
                    .parse()
                    .map_err(|_| invalid("maximum vcpus count must be an integer"))?;
                if n == 0 {
                    return Err(invalid("Invalid number of vCPUs '0'"));
                }
                if let Some(cur) = v.attribute("current") {
                    let c: u32 = cur
                        .parse()
                        .map_err(|_| invalid("current vcpus count must be an integer"))?;
                    if c > n {
                        return Err(invalid("maxvcpus must not be less than current vcpus"));
                    }
                }
                n
            }
            None => 1,
        };
        let os = parse_os(root)?;
        let features = match child(root, "features") {
            Some(f) => Features {
                acpi: child(f, "acpi").is_some(),
                apic: child(f, "apic").is_some(),
                pae: child(f, "pae").is_some(),
            },
            None => Features::default(),
        };
        let cpu_mode = child(root, "cpu")
            .and_then(|c| c.attribute("mode"))
            .map(str::to_owned);
        let action = |el: &str, default| -> Result<LifecycleAction> {
            match text_of(root, el) {
                Some(t) => LifecycleAction::parse(&t, el),
                None => Ok(default),
            }
        };
        Ok(DomainDef {
            domain_type,
            name,
            uuid,
            title: text_of(root, "title"),
            description: text_of(root, "description"),
            memory_kib,
            current_memory_kib,
            vcpus,
            os,
            features,
            cpu_mode,
            on_poweroff: action("on_poweroff", LifecycleAction::Destroy)?,
            on_reboot: action("on_reboot", LifecycleAction::Restart)?,
            on_crash: action("on_crash", LifecycleAction::Destroy)?,
            devices: match child(root, "devices") {
                Some(d) => parse_devices(d)?,
                None => Devices {
                    memballoon: "virtio".into(),
                    ..Devices::default()
                },
            },
        })
    }

    /// The definition as XML; `live` adds what only a running domain has.
    pub fn to_xml(&self, live: Option<&LiveXml>) -> String {
        let mut x = String::new();
        match live {
            Some(l) => {
                let _ = writeln!(
                    x,
                    "<domain type='{}' id='{}'>",
                    esc(&self.domain_type),
                    l.id
                );
            }
            None => {
                let _ = writeln!(x, "<domain type='{}'>", esc(&self.domain_type));
            }
        }
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", self.uuid);
        if let Some(t) = &self.title {
            let _ = writeln!(x, "  <title>{}</title>", esc(t));
        }
        if let Some(d) = &self.description {
            let _ = writeln!(x, "  <description>{}</description>", esc(d));
        }
        let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", self.memory_kib);
        let _ = writeln!(
            x,
            "  <currentMemory unit='KiB'>{}</currentMemory>",
            self.current_memory_kib
        );
        let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.vcpus);
        x.push_str("  <os>\n");
        let _ = writeln!(
            x,
            "    <type arch='{}' machine='{}'>hvm</type>",
            esc(&self.os.arch),
            esc(&self.os.machine)
        );
        for (tag, val) in [
            ("kernel", &self.os.kernel),
            ("initrd", &self.os.initrd),
            ("cmdline", &self.os.cmdline),
        ] {
            if let Some(v) = val {
                let _ = writeln!(x, "    <{tag}>{}</{tag}>", esc(v));
            }
        }
        for dev in &self.os.boot {
            let _ = writeln!(x, "    <boot dev='{}'/>", esc(dev));
        }
        x.push_str("  </os>\n");
        if self.features != Features::default() {
            x.push_str("  <features>\n");
            for (on, tag) in [
                (self.features.acpi, "acpi"),
                (self.features.apic, "apic"),
                (self.features.pae, "pae"),
            ] {
                if on {
                    let _ = writeln!(x, "    <{tag}/>");
                }
            }
            x.push_str("  </features>\n");
        }
        if let Some(mode) = &self.cpu_mode {
            let _ = writeln!(
                x,
                "  <cpu mode='{}' check='none' migratable='on'/>",
                esc(mode)
            );
        }
        let _ = writeln!(
            x,
            "  <on_poweroff>{}</on_poweroff>",
            self.on_poweroff.as_str()
        );
        let _ = writeln!(x, "  <on_reboot>{}</on_reboot>", self.on_reboot.as_str());
        let _ = writeln!(x, "  <on_crash>{}</on_crash>", self.on_crash.as_str());
        x.push_str("  <devices>\n");
        self.format_devices(&mut x, live);
        x.push_str("  </devices>\n</domain>\n");
        x
    }

    fn format_devices(&self, x: &mut String, live: Option<&LiveXml>) {
        let d = &self.devices;
        if let Some(e) = &d.emulator {
            let _ = writeln!(x, "    <emulator>{}</emulator>", esc(e));
        }
        for disk in &d.disks {
            let _ = writeln!(
                x,
                "    <disk type='{}' device='{}'>",
                esc(&disk.source_type),
                esc(&disk.device)
            );
            let _ = writeln!(
                x,
                "      <driver name='qemu' type='{}'/>",
                esc(&disk.format)
            );
            if let Some(src) = &disk.source {
                let attr = if disk.source_type == "block" {
                    "dev"
                } else {
                    "file"
                };
                let _ = writeln!(x, "      <source {attr}='{}'/>", esc(src));
            }
            let _ = writeln!(
                x,
                "      <target dev='{}' bus='{}'/>",
                esc(&disk.target_dev),
                esc(&disk.bus)
            );
            if disk.readonly {
                x.push_str("      <readonly/>\n");
            }
            x.push_str("    </disk>\n");
        }
        for nic in &d.interfaces {
            let (kind, source) = match &nic.kind {
                InterfaceKind::User => ("user", None),
                InterfaceKind::Network(n) => ("network", Some(format!("network='{}'", esc(n)))),
                InterfaceKind::Bridge(b) => ("bridge", Some(format!("bridge='{}'", esc(b)))),
            };
            let _ = writeln!(x, "    <interface type='{kind}'>");
            let _ = writeln!(x, "      <mac address='{}'/>", esc(&nic.mac));
            if let Some(s) = source {
                let _ = writeln!(x, "      <source {s}/>");
            }
            let _ = writeln!(x, "      <model type='{}'/>", esc(&nic.model));
            x.push_str("    </interface>\n");
        }
        for (i, serial) in d.serials.iter().enumerate() {
            let pty = live.and_then(|l| l.pty_paths.get(i));
            match pty {
                Some(p) => {
                    let _ = writeln!(
                        x,
                        "    <serial type='pty'>\n      <source path='{}'/>",
                        esc(p)
                    );
                }
                None => x.push_str("    <serial type='pty'>\n"),
            }
            if let Some(f) = &serial.log_file {
                let append = if serial.log_append { "on" } else { "off" };
                let _ = writeln!(x, "      <log file='{}' append='{append}'/>", esc(f));
            }
            let _ = writeln!(x, "      <target port='{i}'/>\n    </serial>");
        }
        if d.console {
            let pty = live.and_then(|l| l.pty_paths.first());
            match pty {
                Some(p) => {
                    let _ = writeln!(
                        x,
                        "    <console type='pty' tty='{0}'>\n      <source path='{0}'/>",
                        esc(p)
                    );
                }
                None => x.push_str("    <console type='pty'>\n"),
            }
            x.push_str("      <target type='serial' port='0'/>\n    </console>\n");
        }
        if let Some(g) = &d.graphics {
            let port = live.and_then(|l| l.vnc_port).or(g.port);
            match (port, g.port.is_none()) {
                (Some(p), auto) => {
                    let _ = writeln!(
                        x,
                        "    <graphics type='vnc' port='{p}' autoport='{}' listen='{}'/>",
                        if auto { "yes" } else { "no" },
                        esc(&g.listen)
                    );
                }
                (None, _) => {
                    let _ = writeln!(
                        x,
                        "    <graphics type='vnc' port='-1' autoport='yes' listen='{}'/>",
                        esc(&g.listen)
                    );
                }
            }
        }
        if let Some(v) = &d.video {
            let _ = writeln!(
                x,
                "    <video>\n      <model type='{}'/>\n    </video>",
                esc(v)
            );
        }
        let _ = writeln!(x, "    <memballoon model='{}'/>", esc(&d.memballoon));
    }
}

fn parse_os(root: roxmltree::Node) -> Result<OsDef> {
    let os = child(root, "os").ok_or_else(|| invalid("an os <type> must be specified"))?;
    let ty = child(os, "type").ok_or_else(|| invalid("an os <type> must be specified"))?;
    let os_type = ty.text().unwrap_or("").trim();
    if os_type != "hvm" {
        return Err(unsupported(format!(
            "os type '{os_type}' is not supported; only 'hvm' is"
        )));
    }
    let arch = ty.attribute("arch").unwrap_or("x86_64").to_owned();
    if arch != "x86_64" {
        return Err(unsupported(format!(
            "architecture '{arch}' is not supported"
        )));
    }
    let boot = os
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "boot")
        .map(|b| {
            let dev = b.attribute("dev").unwrap_or("");
            match dev {
                "hd" | "cdrom" | "network" | "fd" => Ok(dev.to_owned()),
                other => Err(invalid(format!("unknown boot device '{other}'"))),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(OsDef {
        arch,
        machine: ty.attribute("machine").unwrap_or("pc").to_owned(),
        boot,
        kernel: nonempty(text_of(os, "kernel")),
        initrd: nonempty(text_of(os, "initrd")),
        cmdline: nonempty(text_of(os, "cmdline")),
    })
}

fn parse_devices(devs: roxmltree::Node) -> Result<Devices> {
    let mut d = Devices {
        memballoon: "virtio".into(),
        ..Devices::default()
    };
    for el in devs.children().filter(|c| c.is_element()) {
        let tag = el.tag_name().name();
        if UNSUPPORTED_DEVICES.contains(&tag) {
            return Err(unsupported(format!("{tag} devices are not supported")));
        }
        match tag {
            "emulator" => {
                d.emulator = el
                    .text()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
            }
            "disk" => d.disks.push(parse_disk(el)?),
            "interface" => d.interfaces.push(parse_interface(el)?),
            "serial" => {
                check_pty(el, "serial")?;
                let log = child(el, "log");
                d.serials.push(SerialDef {
                    log_file: log.and_then(|l| l.attribute("file")).map(str::to_owned),
                    log_append: log.and_then(|l| l.attribute("append")) == Some("on"),
                });
            }
            "console" => {
                check_pty(el, "console")?;
                d.console = true;
            }
            "graphics" => {
                let ty = el.attribute("type").unwrap_or("");
                if ty != "vnc" {
                    return Err(unsupported(format!(
                        "graphics type '{ty}' is not supported"
                    )));
                }
                let port = match el.attribute("port") {
                    Some("-1") | None => None,
                    Some(p) => Some(
                        p.parse()
                            .map_err(|_| invalid(format!("cannot parse vnc port {p}")))?,
                    ),
                };
                let autoport = el.attribute("autoport") == Some("yes");
                d.graphics = Some(GraphicsDef {
                    port: if autoport { None } else { port },
                    listen: el
                        .attribute("listen")
                        .or_else(|| child(el, "listen").and_then(|l| l.attribute("address")))
                        .unwrap_or("127.0.0.1")
                        .to_owned(),
                });
            }
            "video" => {
                d.video = Some(
                    child(el, "model")
                        .and_then(|m| m.attribute("type"))
                        .unwrap_or("vga")
                        .to_owned(),
                )
            }
            "memballoon" => {
                let model = el.attribute("model").unwrap_or("virtio");
                if model != "virtio" && model != "none" {
                    return Err(unsupported(format!(
                        "memballoon model '{model}' is not supported"
                    )));
                }
                d.memballoon = model.to_owned();
            }
            // Harmless devices that change nothing qemud does.
            "input" | "controller" => {}
            other => return Err(unsupported(format!("{other} devices are not supported"))),
        }
    }
    // A console alone still needs the serial port it aliases.
    if d.console && d.serials.is_empty() {
        d.serials.push(SerialDef::default());
    }
    if !d.serials.is_empty() {
        d.console = true;
    }
    Ok(d)
}

fn check_pty(el: roxmltree::Node, what: &str) -> Result<()> {
    match el.attribute("type").unwrap_or("pty") {
        "pty" => Ok(()),
        other => Err(unsupported(format!(
            "{what} type '{other}' is not supported"
        ))),
    }
}

fn parse_disk(el: roxmltree::Node) -> Result<DiskDef> {
    let source_type = el.attribute("type").unwrap_or("file").to_owned();
    if source_type != "file" && source_type != "block" {
        return Err(unsupported(format!(
            "disk type '{source_type}' is not supported"
        )));
    }
    let device = el.attribute("device").unwrap_or("disk").to_owned();
    if device != "disk" && device != "cdrom" {
        return Err(unsupported(format!(
            "disk device '{device}' is not supported"
        )));
    }
    let format = child(el, "driver")
        .and_then(|d| d.attribute("type"))
        .unwrap_or("raw")
        .to_owned();
    if format != "raw" && format != "qcow2" {
        return Err(unsupported(format!(
            "disk format '{format}' is not supported"
        )));
    }
    let source = child(el, "source")
        .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
        .map(str::to_owned);
    if source.is_none() && device != "cdrom" {
        return Err(invalid("disk source is missing"));
    }
    let target = child(el, "target").ok_or_else(|| invalid("missing disk target element"))?;
    let target_dev = target
        .attribute("dev")
        .ok_or_else(|| invalid("missing disk target dev attribute"))?
        .to_owned();
    let bus = match target.attribute("bus") {
        Some(b) => b.to_owned(),
        None if target_dev.starts_with("vd") => "virtio".into(),
        None if target_dev.starts_with("sd") => "sata".into(),
        None if target_dev.starts_with("hd") => "ide".into(),
        None => return Err(invalid(format!("cannot infer bus for disk '{target_dev}'"))),
    };
    if !["virtio", "sata", "ide", "scsi"].contains(&bus.as_str()) {
        return Err(unsupported(format!("disk bus '{bus}' is not supported")));
    }
    Ok(DiskDef {
        readonly: child(el, "readonly").is_some() || device == "cdrom",
        source_type,
        device,
        format,
        source,
        target_dev,
        bus,
    })
}

fn parse_interface(el: roxmltree::Node) -> Result<InterfaceDef> {
    let ty = el.attribute("type").unwrap_or("");
    let source = |attr: &str| {
        child(el, "source")
            .and_then(|s| s.attribute(attr))
            .map(str::to_owned)
    };
    let kind = match ty {
        "user" => InterfaceKind::User,
        "network" => InterfaceKind::Network(source("network").ok_or_else(|| {
            invalid("No <source> 'network' attribute specified with <interface type='network'/>")
        })?),
        "bridge" => InterfaceKind::Bridge(source("bridge").ok_or_else(|| {
            invalid("No <source> 'bridge' attribute specified with <interface type='bridge'/>")
        })?),
        other => {
            return Err(unsupported(format!(
                "interface type '{other}' is not supported"
            )))
        }
    };
    let mac = match child(el, "mac").and_then(|m| m.attribute("address")) {
        Some(m) => {
            let ok = m.len() == 17
                && m.split(':')
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
            if !ok {
                return Err(invalid(format!("unable to parse mac address '{m}'")));
            }
            m.to_ascii_lowercase()
        }
        None => generate_mac(),
    };
    Ok(InterfaceDef {
        kind,
        mac,
        model: child(el, "model")
            .and_then(|m| m.attribute("type"))
            .unwrap_or("virtio")
            .to_owned(),
    })
}

/// Escapes text for element content and single-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "<domain type='qemu'><name>vm1</name><memory>65536</memory><os><type>hvm</type></os></domain>";

    const FULL: &str = r#"<domain type='kvm'>
  <name>full</name>
  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>
  <title>T</title>
  <description>D</description>
  <memory unit='MiB'>256</memory>
  <currentMemory unit='MiB'>128</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/boot/vmlinuz</kernel>
    <initrd>/boot/initrd</initrd>
    <cmdline>console=ttyS0</cmdline>
    <boot dev='hd'/>
    <boot dev='cdrom'/>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='host-passthrough'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda'/>
    </disk>
    <interface type='user'><mac address='52:54:00:AA:bb:cc'/><model type='e1000'/></interface>
    <interface type='network'><source network='default'/></interface>
    <serial type='pty'><log file='/tmp/s.log' append='on'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='5901' listen='127.0.0.1'/>
    <video><model type='none'/></video>
    <input type='tablet' bus='usb'/>
    <memballoon model='none'/>
  </devices>
</domain>"#;

    #[test]
    fn minimal_gets_defaults() {
        let d = DomainDef::parse(MINIMAL).unwrap();
        assert_eq!(d.name, "vm1");
        assert_eq!(d.memory_kib, 65536);
        assert_eq!(d.current_memory_kib, 65536);
        assert_eq!(d.vcpus, 1);
        assert_eq!(d.os.machine, "pc");
        assert_eq!(d.on_reboot, LifecycleAction::Restart);
        assert_eq!(d.devices.memballoon, "virtio");
    }

    #[test]
    fn full_parses_and_roundtrips() {
        let d = DomainDef::parse(FULL).unwrap();
        assert_eq!(d.memory_kib, 256 * 1024);
        assert_eq!(d.current_memory_kib, 128 * 1024);
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.devices.disks.len(), 2);
        assert_eq!(d.devices.disks[1].bus, "sata");
        assert!(d.devices.disks[1].readonly);
        assert_eq!(d.devices.interfaces[0].mac, "52:54:00:aa:bb:cc");
        assert_eq!(
            d.devices.interfaces[1].kind,
            InterfaceKind::Network("default".into())
        );
        assert_eq!(d.devices.serials.len(), 1);
        assert_eq!(d.devices.serials[0].log_file.as_deref(), Some("/tmp/s.log"));
        assert!(d.devices.serials[0].log_append);
        assert_eq!(d.cpu_mode.as_deref(), Some("host-passthrough"));
        let again = DomainDef::parse(&d.to_xml(None)).unwrap();
        assert_eq!(again, d);
        let live = d.to_xml(Some(&LiveXml {
            id: 4,
            pty_paths: vec!["/dev/pts/3".into()],
            vnc_port: None,
        }));
        assert!(live.starts_with("<domain type='kvm' id='4'>"));
        assert!(live.contains("<source path='/dev/pts/3'/>"));
        assert_eq!(DomainDef::parse(&live).unwrap(), d);
    }

    #[test]
    fn units() {
        let m = |v: &str, u: &str| parse_unit_kib(v, Some(u), "memory").unwrap();
        assert_eq!(m("1", "GiB"), 1024 * 1024);
        assert_eq!(m("1", "G"), 1024 * 1024);
        assert_eq!(m("1000", "KB"), 977);
        assert_eq!(m("1024", "b"), 1);
        assert_eq!(m("2", "MB"), 1954);
        assert_eq!(m("1", "TiB"), 1024 * 1024 * 1024);
        assert!(parse_unit_kib("1", Some("parsecs"), "memory").is_err());
        assert!(parse_unit_kib("x", None, "memory").is_err());
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            DomainDef::parse("<domain"),
            Err(DomainXmlError::Xml(_))
        ));
        assert!(matches!(
            DomainDef::parse(
                "<domain type='qemu'><memory>1</memory><os><type>hvm</type></os></domain>"
            ),
            Err(DomainXmlError::Invalid(_))
        ));
        assert!(matches!(
            DomainDef::parse("<network/>"),
            Err(DomainXmlError::Invalid(_))
        ));
        let hostdev = MINIMAL.replace(
            "</domain>",
            "<devices><hostdev mode='subsystem'/></devices></domain>",
        );
        match DomainDef::parse(&hostdev) {
            Err(DomainXmlError::Unsupported(m)) => assert!(m.contains("hostdev")),
            other => panic!("{other:?}"),
        }
        let too_much = MINIMAL.replace(
            "</memory>",
            "</memory><currentMemory>99999999</currentMemory>",
        );
        assert!(matches!(
            DomainDef::parse(&too_much),
            Err(DomainXmlError::Invalid(_))
        ));
        let bad_uuid = MINIMAL.replace("<name>", "<uuid>nope</uuid><name>");
        assert!(matches!(
            DomainDef::parse(&bad_uuid),
            Err(DomainXmlError::Invalid(_))
        ));
        let xen = MINIMAL.replace("type='qemu'", "type='xen'");
        assert!(matches!(
            DomainDef::parse(&xen),
            Err(DomainXmlError::Unsupported(_))
        ));
    }

    #[test]
    fn escaping_roundtrips() {
        let xml = MINIMAL.replace(
            "<name>vm1</name>",
            "<name>vm1</name><title>a &lt;b&gt; &amp; 'c' \"d\" é</title>",
        );
        let d = DomainDef::parse(&xml).unwrap();
        assert_eq!(d.title.as_deref(), Some("a <b> & 'c' \"d\" é"));
        let out = d.to_xml(None);
        assert!(out.contains("&lt;b&gt; &amp; &apos;c&apos;"));
        assert_eq!(DomainDef::parse(&out).unwrap(), d);
    }

    #[test]
    fn uuid_is_generated_when_absent() {
        let a = DomainDef::parse(MINIMAL).unwrap();
        let b = DomainDef::parse(MINIMAL).unwrap();
        assert_ne!(a.uuid, b.uuid);
        assert!(generate_mac().starts_with("52:54:00:"));
    }
}
