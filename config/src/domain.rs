//! The libvirt domain XML model: the subset qemud runs, parsed and validated
//! from a client's XML and formatted back with defaults filled in, the way
//! `virsh dumpxml` shows a definition.
//!
//! Anything that would change what the guest sees or how it is isolated and
//! that qemud cannot honour is refused with [`DomainXmlError::Unsupported`]
//! rather than dropped: a definition that is accepted runs as written.

use std::fmt::Write as _;

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainXmlError {
    /// The text is not well-formed XML (libvirt: VIR_ERR_XML_ERROR).
    #[error("{0}")]
    Xml(String),
    /// Well-formed but not a valid definition (libvirt: VIR_ERR_XML_ERROR).
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
        let action = match s.trim() {
            "destroy" => Self::Destroy,
            "restart" => Self::Restart,
            "preserve" => Self::Preserve,
            "rename-restart" => Self::RenameRestart,
            "coredump-destroy" => Self::CoredumpDestroy,
            "coredump-restart" => Self::CoredumpRestart,
            other => return Err(invalid(format!("unknown {element} action '{other}'"))),
        };
        // A core dump only makes sense after a crash, as in libvirt.
        let dumps = matches!(action, Self::CoredumpDestroy | Self::CoredumpRestart);
        if dumps && element != "on_crash" {
            return Err(invalid(format!(
                "Lifecycle event '{element}' doesn't support '{}' action",
                action.as_str()
            )));
        }
        Ok(action)
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
    /// libvirt's OS type; only "hvm" passes the define-time checks.
    pub os_type: String,
    /// One of libvirt's architectures; only "x86_64" (and "i686") pass
    /// the define-time checks.
    pub arch: String,
    /// QEMU machine type, e.g. "pc" or "q35".
    pub machine: String,
    /// Boot devices in order: "hd", "cdrom", "network" or "fd".
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

/// `<cpu><topology .../></cpu>`; the product equals the maximum vcpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDef {
    /// "file", "block" or "volume".
    pub source_type: String,
    /// For `type='volume'`: the storage pool and volume; the daemon fills
    /// `source` (and `format`, unless given) from the volume at start.
    pub volume: Option<VolumeSource>,
    /// "disk" or "cdrom".
    pub device: String,
    /// "raw" or "qcow2".
    pub format: String,
    /// None only for an empty cdrom drive.
    pub source: Option<String>,
    pub target_dev: String,
    /// "virtio", "sata", "ide" or "scsi".
    pub bus: String,
    pub readonly: bool,
    /// `<shareable/>`: other VMs may write the image at the same time.
    pub shareable: bool,
    /// Per-device `<boot order='N'/>`.
    pub boot_order: Option<u32>,
}

/// `<source pool='P' volume='V'/>` of a `type='volume'` disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSource {
    pub pool: String,
    pub volume: String,
    /// No `<driver type=...>` was given: the volume's format applies.
    pub format_from_volume: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceKind {
    User,
    /// A libvirt virtual network, by name.
    Network(String),
    /// A host bridge, by name.
    Bridge(String),
    /// A tap device of its own, on no bridge: named by `<target dev>` (or
    /// by the daemon), created and removed by the daemon unless
    /// `managed='no'` says it exists already.
    Ethernet {
        target: Option<String>,
        managed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDef {
    pub kind: InterfaceKind,
    /// Lower-case `52:54:00:xx:xx:xx` style address.
    pub mac: String,
    /// NIC model, e.g. "virtio", "e1000", "rtl8139".
    pub model: String,
    /// Per-device `<boot order='N'/>`.
    pub boot_order: Option<u32>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDef {
    /// "mouse", "tablet" or "keyboard".
    pub kind: String,
    /// "ps2", "usb" or "virtio".
    pub bus: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngDef {
    /// Host entropy file (backend model 'random'); None is QEMU's built-in
    /// generator (backend model 'builtin').
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Devices {
    pub emulator: Option<String>,
    pub disks: Vec<DiskDef>,
    pub interfaces: Vec<InterfaceDef>,
    /// pty serial ports (the console aliases serial 0).
    pub serials: Vec<SerialDef>,
    pub console: bool,
    pub inputs: Vec<InputDef>,
    pub graphics: Option<GraphicsDef>,
    /// Video model, "none" for no video device.
    pub video: Option<String>,
    /// Memory balloon model: "virtio" or "none".
    pub memballoon: String,
    /// virtio entropy devices.
    pub rngs: Vec<RngDef>,
    /// A QEMU guest agent channel (virtio-serial port
    /// `org.qemu.guest_agent.0` on a UNIX socket the daemon owns).
    pub guest_agent: bool,
}

/// The name of the guest agent's virtio-serial port.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    /// "kvm" or "qemu".
    pub domain_type: String,
    pub name: String,
    pub uuid: Uuid,
    pub title: Option<String>,
    pub description: Option<String>,
    /// The `<metadata>` element exactly as the client wrote it.
    pub metadata: Option<String>,
    pub memory_kib: u64,
    pub current_memory_kib: u64,
    /// Maximum vcpus.
    pub vcpus: u32,
    /// vcpus online at start; at most `vcpus`.
    pub current_vcpus: u32,
    pub os: OsDef,
    pub features: Features,
    /// "host-passthrough", "host-model", "maximum", "custom" or None.
    pub cpu_mode: Option<String>,
    /// Named CPU model of a custom CPU, e.g. "Skylake-Client".
    pub cpu_model: Option<String>,
    pub cpu_topology: Option<CpuTopology>,
    pub on_poweroff: LifecycleAction,
    pub on_reboot: LifecycleAction,
    pub on_crash: LifecycleAction,
    pub devices: Devices,
    /// `<cputune>`: CPU share, bandwidth and pinning.
    pub cputune: crate::tune::CpuTune,
    /// `<memtune>`: memory limits.
    pub memtune: crate::tune::MemTune,
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

/// Checks a domain name the way the definition parser does, for callers
/// that take a name from elsewhere (a rename, a lookup).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid("missing name information"));
    }
    if name.contains('/') {
        return Err(invalid(format!("name {name} cannot contain '/'")));
    }
    // Such a name could not be written back as XML 1.0 and the persisted
    // definition would no longer load.
    if let Some(c) = name.chars().find(|&c| !is_xml_char(c) || c == '\n') {
        return Err(invalid(format!("invalid char in name: 0x{:02x}", c as u32)));
    }
    Ok(())
}

/// Parses a UUID in any form libvirt accepts: 32 hex digits, with '-' or
/// ' ' between any of them, surrounded by optional whitespace.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    let mut bytes = [0u8; 16];
    let mut nibbles = 0usize;
    for c in text.trim().chars() {
        if c == '-' || c == ' ' {
            continue;
        }
        let v = c.to_digit(16)?;
        let byte = bytes.get_mut(nibbles / 2)?;
        *byte = (*byte << 4) | v as u8;
        nibbles += 1;
    }
    (nibbles == 32).then(|| Uuid::from_bytes(bytes))
}

/// Bytes in one `unit`, following libvirt's rules: "b"/"bytes", then a
/// k/m/g/t/p/e letter (either case) alone or with "iB" for powers of 1024,
/// or with "B" for powers of 1000.
fn unit_bytes(unit: &str) -> Option<u128> {
    if matches!(unit.to_ascii_lowercase().as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = unit.chars();
    let power = match chars.next()?.to_ascii_lowercase() {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u128 = match chars.as_str() {
        "" | "iB" => 1024,
        "B" => 1000,
        _ => return None,
    };
    Some(base.pow(power))
}

/// A scaled memory size in KiB, rounded up as libvirt does.
fn parse_unit_kib(value: &str, unit: Option<&str>, element: &str) -> Result<u64> {
    let value = value.trim();
    let n: u64 = value
        .parse()
        .map_err(|_| invalid(format!("invalid value '{value}' for element '{element}'")))?;
    let unit = unit.unwrap_or("KiB");
    let per = unit_bytes(unit).ok_or_else(|| {
        invalid(format!(
            "unknown memory unit '{unit}' in element '{element}'"
        ))
    })?;
    // u64 * 1024^6 < 2^124: no overflow in u128.
    let kib = (u128::from(n) * per).div_ceil(1024);
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
    "lease",
    "nvram",
    "parallel",
    "crypto",
    "audio",
    "memory",
    "redirfilter",
    "pstore",
];

/// The virt types libvirt's domain XML knows.
pub const VIRT_TYPES: &[&str] = &[
    "qemu",
    "kqemu",
    "kvm",
    "xen",
    "lxc",
    "uml",
    "openvz",
    "test",
    "vmware",
    "hyperv",
    "vbox",
    "phyp",
    "parallels",
    "bhyve",
    "vz",
    "hvf",
];

/// The architecture names libvirt knows.
pub const ARCHES: &[&str] = &[
    "alpha",
    "armv6l",
    "armv7l",
    "armv7b",
    "aarch64",
    "cris",
    "i686",
    "ia64",
    "lm32",
    "m68k",
    "microblaze",
    "microblazeel",
    "mips",
    "mipsel",
    "mips64",
    "mips64el",
    "openrisc",
    "parisc",
    "parisc64",
    "ppc",
    "ppcle",
    "ppc64",
    "ppc64le",
    "ppcemb",
    "riscv32",
    "riscv64",
    "s390",
    "s390x",
    "sh4",
    "sh4eb",
    "sparc",
    "sparc64",
    "unicore32",
    "x86_64",
    "xtensa",
    "xtensaeb",
];

type Node<'a> = roxmltree::Node<'a, 'a>;

fn child<'a>(n: Node<'a>, name: &str) -> Option<Node<'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a>(n: Node<'a>, name: &'a str) -> impl Iterator<Item = Node<'a>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// All text directly inside `n`, so a comment or CDATA section in the
/// middle does not cut the value short.
fn text_content(n: Node) -> String {
    n.children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect()
}

fn text_of(n: Node, name: &str) -> Option<String> {
    child(n, name).map(|c| text_content(c).trim().to_owned())
}

fn parse_u32_attr(el: Node, attr: &str, what: &str) -> Result<Option<u32>> {
    el.attribute(attr)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| invalid(format!("invalid {what} '{v}'")))
        })
        .transpose()
}

impl DomainDef {
    pub fn parse(xml: &str) -> Result<DomainDef> {
        crate::xml_depth::check(xml, crate::xml_depth::MAX_DEPTH).map_err(DomainXmlError::Xml)?;
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
        // Any virt type libvirt knows parses; whether this host's emulator
        // runs it is checked at define, where the emulator is known.
        if !VIRT_TYPES.contains(&domain_type.as_str()) {
            return Err(unsupported(format!("invalid domain type {domain_type}")));
        }
        let name = text_of(root, "name").unwrap_or_default();
        validate_name(&name)?;
        let uuid = match text_of(root, "uuid") {
            Some(u) => {
                parse_uuid(&u).ok_or_else(|| invalid(format!("malformed uuid element '{u}'")))?
            }
            None => Uuid::new_v4(),
        };
        let (memory_kib, current_memory_kib) = parse_memory(root)?;
        let (vcpus, current_vcpus) = parse_vcpu(root)?;
        let (cpu_mode, cpu_model, cpu_topology) = parse_cpu(root, vcpus)?;
        let features = match child(root, "features") {
            Some(f) => Features {
                acpi: child(f, "acpi").is_some(),
                apic: child(f, "apic").is_some(),
                pae: child(f, "pae").is_some(),
            },
            None => Features::default(),
        };
        let action = |el: &str, default| -> Result<LifecycleAction> {
            match text_of(root, el) {
                Some(t) => LifecycleAction::parse(&t, el),
                None => Ok(default),
            }
        };
        let os = parse_os(root)?;
        let devices = match child(root, "devices") {
            Some(d) => parse_devices(d)?,
            None => Devices {
                memballoon: "virtio".into(),
                ..Devices::default()
            },
        };
        check_boot_order(&os, &devices)?;
        let cputune = crate::tune::parse_cputune(root, vcpus).map_err(invalid)?;
        let memtune = crate::tune::parse_memtune(root).map_err(invalid)?;
        Ok(DomainDef {
            domain_type,
            name,
            uuid,
            title: text_of(root, "title"),
            description: text_of(root, "description"),
            metadata: metadata_of(root),
            memory_kib,
            current_memory_kib,
            vcpus,
            current_vcpus,
            os,
            features,
            cpu_mode,
            cpu_model,
            cpu_topology,
            on_poweroff: action("on_poweroff", LifecycleAction::Destroy)?,
            on_reboot: action("on_reboot", LifecycleAction::Restart)?,
            on_crash: action("on_crash", LifecycleAction::Destroy)?,
            devices,
            cputune,
            memtune,
        })
    }

    /// The UUID in libvirt's canonical form (lower-case, hyphenated).
    pub fn uuid_string(&self) -> String {
        self.uuid.hyphenated().to_string()
    }

    /// Whether the definition asks for hardware virtualization.
    pub fn is_kvm(&self) -> bool {
        self.domain_type == "kvm"
    }

    /// The definition as XML; `live` adds what only a running domain has.
    pub fn to_xml(&self, live: Option<&LiveXml>) -> String {
        let mut x = String::new();
        match live {
            Some(l) => {
                let _ = writeln!(
                    x,
                    "<domain type='{}' id='{}'>",
                    esc_attr(&self.domain_type),
                    l.id
                );
            }
            None => {
                let _ = writeln!(x, "<domain type='{}'>", esc_attr(&self.domain_type));
            }
        }
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", self.uuid_string());
        if let Some(t) = &self.title {
            let _ = writeln!(x, "  <title>{}</title>", esc(t));
        }
        if let Some(d) = &self.description {
            let _ = writeln!(x, "  <description>{}</description>", esc(d));
        }
        if let Some(m) = &self.metadata {
            let _ = writeln!(x, "  {m}");
        }
        let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", self.memory_kib);
        let _ = writeln!(
            x,
            "  <currentMemory unit='KiB'>{}</currentMemory>",
            self.current_memory_kib
        );
        crate::tune::format_memtune(&self.memtune, &mut x);
        if self.current_vcpus == self.vcpus {
            let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.vcpus);
        } else {
            let _ = writeln!(
                x,
                "  <vcpu placement='static' current='{}'>{}</vcpu>",
                self.current_vcpus, self.vcpus
            );
        }
        crate::tune::format_cputune(&self.cputune, &mut x);
        self.format_os(&mut x);
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
        self.format_cpu(&mut x);
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

    fn format_os(&self, x: &mut String) {
        x.push_str("  <os>\n");
        let _ = writeln!(
            x,
            "    <type arch='{}' machine='{}'>hvm</type>",
            esc_attr(&self.os.arch),
            esc_attr(&self.os.machine)
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
            let _ = writeln!(x, "    <boot dev='{}'/>", esc_attr(dev));
        }
        x.push_str("  </os>\n");
    }

    fn format_cpu(&self, x: &mut String) {
        if self.cpu_mode.is_none() && self.cpu_model.is_none() && self.cpu_topology.is_none() {
            return;
        }
        let attrs = match self.cpu_mode.as_deref() {
            None => String::new(),
            Some("host-passthrough") => {
                " mode='host-passthrough' check='none' migratable='on'".into()
            }
            Some("maximum") => " mode='maximum' check='none' migratable='on'".into(),
            Some("host-model") => " mode='host-model' check='partial'".into(),
            Some("custom") => " mode='custom' match='exact' check='none'".into(),
            Some(other) => format!(" mode='{}'", esc_attr(other)),
        };
        let mut body = String::new();
        if let Some(m) = &self.cpu_model {
            let _ = writeln!(body, "    <model fallback='forbid'>{}</model>", esc(m));
        }
        if let Some(t) = &self.cpu_topology {
            let _ = writeln!(
                body,
                "    <topology sockets='{}' dies='{}' cores='{}' threads='{}'/>",
                t.sockets, t.dies, t.cores, t.threads
            );
        }
        if body.is_empty() {
            let _ = writeln!(x, "  <cpu{attrs}/>");
        } else {
            let _ = write!(x, "  <cpu{attrs}>\n{body}  </cpu>\n");
        }
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
                esc_attr(&disk.source_type),
                esc_attr(&disk.device)
            );
            if disk.volume.as_ref().is_some_and(|v| v.format_from_volume) {
                // The volume says which format it is, at each start.
                x.push_str("      <driver name='qemu'/>\n");
            } else {
                let _ = writeln!(
                    x,
                    "      <driver name='qemu' type='{}'/>",
                    esc_attr(&disk.format)
                );
            }
            if let Some(v) = &disk.volume {
                let _ = writeln!(
                    x,
                    "      <source pool='{}' volume='{}'/>",
                    esc_attr(&v.pool),
                    esc_attr(&v.volume)
                );
            } else if let Some(src) = &disk.source {
                let attr = if disk.source_type == "block" {
                    "dev"
                } else {
                    "file"
                };
                let _ = writeln!(x, "      <source {attr}='{}'/>", esc_attr(src));
            }
            let _ = writeln!(
                x,
                "      <target dev='{}' bus='{}'/>",
                esc_attr(&disk.target_dev),
                esc_attr(&disk.bus)
            );
            if let Some(n) = disk.boot_order {
                let _ = writeln!(x, "      <boot order='{n}'/>");
            }
            if disk.readonly {
                x.push_str("      <readonly/>\n");
            }
            if disk.shareable {
                x.push_str("      <shareable/>\n");
            }
            x.push_str("    </disk>\n");
        }
        for (i, nic) in d.interfaces.iter().enumerate() {
            let (kind, source) = match &nic.kind {
                InterfaceKind::User => ("user", None),
                InterfaceKind::Network(n) => {
                    ("network", Some(format!("network='{}'", esc_attr(n))))
                }
                InterfaceKind::Bridge(b) => ("bridge", Some(format!("bridge='{}'", esc_attr(b)))),
                InterfaceKind::Ethernet { .. } => ("ethernet", None),
            };
            let _ = writeln!(x, "    <interface type='{kind}'>");
            let _ = writeln!(x, "      <mac address='{}'/>", esc_attr(&nic.mac));
            if let Some(s) = source {
                let _ = writeln!(x, "      <source {s}/>");
            }
            // The tap: as named for an ethernet NIC; while the domain runs,
            // the one the daemon plugged in.
            match &nic.kind {
                InterfaceKind::Ethernet {
                    target: Some(t),
                    managed,
                } => {
                    let m = if *managed { "" } else { " managed='no'" };
                    let _ = writeln!(x, "      <target dev='{}'{m}/>", esc_attr(t));
                }
                kind if live.is_some() => {
                    if let Some(tap) = crate::network::nic_tap(&self.uuid, i, kind) {
                        let _ = writeln!(x, "      <target dev='{}'/>", esc_attr(&tap));
                    }
                }
                _ => {}
            }
            let _ = writeln!(x, "      <model type='{}'/>", esc_attr(&nic.model));
            if let Some(n) = nic.boot_order {
                let _ = writeln!(x, "      <boot order='{n}'/>");
            }
            x.push_str("    </interface>\n");
        }
        for (i, serial) in d.serials.iter().enumerate() {
            match live.and_then(|l| l.pty_paths.get(i)) {
                Some(p) => {
                    let _ = writeln!(
                        x,
                        "    <serial type='pty'>\n      <source path='{}'/>",
                        esc_attr(p)
                    );
                }
                None => x.push_str("    <serial type='pty'>\n"),
            }
            if let Some(f) = &serial.log_file {
                let append = if serial.log_append { "on" } else { "off" };
                let _ = writeln!(x, "      <log file='{}' append='{append}'/>", esc_attr(f));
            }
            let _ = writeln!(
                x,
                "      <target type='isa-serial' port='{i}'/>\n    </serial>"
            );
        }
        if d.console {
            match live.and_then(|l| l.pty_paths.first()) {
                Some(p) => {
                    let _ = writeln!(
                        x,
                        "    <console type='pty' tty='{0}'>\n      <source path='{0}'/>",
                        esc_attr(p)
                    );
                }
                None => x.push_str("    <console type='pty'>\n"),
            }
            x.push_str("      <target type='serial' port='0'/>\n    </console>\n");
        }
        if d.guest_agent {
            let _ = writeln!(
                x,
                "    <channel type='unix'>\n      <target type='virtio' name='{GUEST_AGENT_PORT}'/>\n      <address type='virtio-serial' controller='0' bus='0' port='1'/>\n    </channel>"
            );
        }
        for input in &d.inputs {
            let _ = writeln!(
                x,
                "    <input type='{}' bus='{}'/>",
                esc_attr(&input.kind),
                esc_attr(&input.bus)
            );
        }
        if let Some(g) = &d.graphics {
            let autoport = if g.port.is_none() { "yes" } else { "no" };
            // A running domain shows the port QEMU actually took.
            let port = live
                .and_then(|l| l.vnc_port)
                .or(g.port)
                .map_or_else(|| "-1".to_owned(), |p| p.to_string());
            let _ = writeln!(
                x,
                "    <graphics type='vnc' port='{port}' autoport='{autoport}' listen='{0}'>\n      <listen type='address' address='{0}'/>\n    </graphics>",
                esc_attr(&g.listen)
            );
        }
        if let Some(v) = &d.video {
            let _ = writeln!(
                x,
                "    <video>\n      <model type='{}'/>\n    </video>",
                esc_attr(v)
            );
        }
        let _ = writeln!(x, "    <memballoon model='{}'/>", esc_attr(&d.memballoon));
        for rng in &d.rngs {
            x.push_str("    <rng model='virtio'>\n");
            match &rng.source {
                Some(s) => {
                    let _ = writeln!(x, "      <backend model='random'>{}</backend>", esc(s));
                }
                None => x.push_str("      <backend model='builtin'/>\n"),
            }
            x.push_str("    </rng>\n");
        }
    }
}

/// The `<metadata>` element verbatim, kept only when it stands alone as a
/// document: a namespace prefix declared on `<domain>` would leave the
/// copy unparseable, and then the definition could not be loaded back.
fn metadata_of(root: Node) -> Option<String> {
    let m = child(root, "metadata")?;
    let raw = root.document().input_text().get(m.range())?;
    roxmltree::Document::parse(raw).ok()?;
    Some(raw.to_owned())
}

fn parse_memory(root: Node) -> Result<(u64, u64)> {
    let memory = child(root, "memory").ok_or_else(|| invalid("missing memory element"))?;
    let memory_kib = parse_unit_kib(&text_content(memory), memory.attribute("unit"), "memory")?;
    if memory_kib == 0 {
        return Err(invalid(
            "Memory size must be specified via <memory> or in the <numa> configuration",
        ));
    }
    let current = match child(root, "currentMemory") {
        Some(c) => parse_unit_kib(&text_content(c), c.attribute("unit"), "currentMemory")?,
        None => 0,
    };
    // libvirt reads an absent or zero currentMemory as "all of it".
    let current = if current == 0 { memory_kib } else { current };
    if current > memory_kib {
        return Err(invalid(format!(
            "current memory ({current} KiB) must not exceed maximum memory ({memory_kib} KiB)"
        )));
    }
    Ok((memory_kib, current))
}

fn parse_vcpu(root: Node) -> Result<(u32, u32)> {
    let Some(v) = child(root, "vcpu") else {
        return Ok((1, 1));
    };
    let max: u32 = text_content(v)
        .trim()
        .parse()
        .map_err(|_| invalid("maximum vcpus count must be an integer"))?;
    if max == 0 {
        return Err(invalid("Invalid number of vCPUs '0'"));
    }
    let current = match v.attribute("current") {
        Some(c) => c
            .trim()
            .parse::<u32>()
            .map_err(|_| invalid("current vcpus count must be an integer"))?,
        None => max,
    };
    if current == 0 {
        return Err(invalid("Invalid number of current vCPUs '0'"));
    }
    if current > max {
        return Err(invalid("maxvcpus must not be less than current vcpus"));
    }
    match v.attribute("placement") {
        None | Some("static") | Some("auto") => {}
        Some(other) => {
            return Err(invalid(format!(
                "unsupported vcpu placement mode '{other}'"
            )))
        }
    }
    Ok((max, current))
}

type CpuParts = (Option<String>, Option<String>, Option<CpuTopology>);

fn parse_cpu(root: Node, vcpus: u32) -> Result<CpuParts> {
    let Some(cpu) = child(root, "cpu") else {
        return Ok((None, None, None));
    };
    let model = text_of(cpu, "model").filter(|m| !m.is_empty());
    let mode = match cpu.attribute("mode") {
        Some(m @ ("host-passthrough" | "host-model" | "maximum" | "custom")) => Some(m.to_owned()),
        Some(other) => return Err(invalid(format!("Invalid CPU mode '{other}'"))),
        // A named model without a mode is a custom CPU, as in libvirt.
        None if model.is_some() => Some("custom".to_owned()),
        None => None,
    };
    let topology = match child(cpu, "topology") {
        Some(t) => {
            let get = |attr: &str| -> Result<u32> {
                let v = parse_u32_attr(t, attr, &format!("CPU topology {attr}"))?.unwrap_or(1);
                if v == 0 {
                    return Err(invalid(format!(
                        "Invalid CPU topology: {attr} must be at least 1"
                    )));
                }
                Ok(v)
            };
            let topo = CpuTopology {
                sockets: get("sockets")?,
                dies: get("dies")?,
                cores: get("cores")?,
                threads: get("threads")?,
            };
            let product = u64::from(topo.sockets)
                * u64::from(topo.dies)
                * u64::from(topo.cores)
                * u64::from(topo.threads);
            if product != u64::from(vcpus) {
                return Err(invalid(format!(
                    "CPU topology doesn't match maximum vcpu count ({product} != {vcpus})"
                )));
            }
            Some(topo)
        }
        None => None,
    };
    // Only a custom CPU is named by its model; the other modes ignore it.
    let model = if mode.as_deref() == Some("custom") {
        model
    } else {
        None
    };
    Ok((mode, model, topology))
}

fn parse_os(root: Node) -> Result<OsDef> {
    let os = child(root, "os").ok_or_else(|| invalid("an os <type> must be specified"))?;
    let ty = child(os, "type").ok_or_else(|| invalid("an os <type> must be specified"))?;
    let os_type = text_content(ty);
    let os_type = os_type.trim();
    // Whether the emulator runs this OS type is checked at define.
    if !["hvm", "xen", "linux", "exe", "uml", "xenpvh"].contains(&os_type) {
        return Err(unsupported(format!("unknown OS type '{os_type}'")));
    }
    let arch = ty.attribute("arch").unwrap_or("x86_64").to_owned();
    if !ARCHES.contains(&arch.as_str()) {
        return Err(unsupported(format!("Unknown architecture {arch}")));
    }
    // The guest would boot other firmware than it asked for.
    match os.attribute("firmware") {
        None | Some("bios") => {}
        Some(fw) => {
            return Err(unsupported(format!(
                "firmware '{fw}' is not supported; only the default BIOS is"
            )))
        }
    }
    if child(os, "loader").is_some() || child(os, "nvram").is_some() {
        return Err(unsupported(
            "custom firmware (<loader>, <nvram>) is not supported",
        ));
    }
    let boot = children(os, "boot")
        .map(|b| {
            let dev = b.attribute("dev").unwrap_or("");
            match dev {
                "hd" | "cdrom" | "network" | "fd" => Ok(dev.to_owned()),
                other => Err(invalid(format!("unknown boot device '{other}'"))),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let machine = ty.attribute("machine").unwrap_or("pc").trim();
    Ok(OsDef {
        os_type: os_type.to_owned(),
        arch,
        machine: if machine.is_empty() { "pc" } else { machine }.to_owned(),
        boot,
        kernel: nonempty(text_of(os, "kernel")),
        initrd: nonempty(text_of(os, "initrd")),
        cmdline: nonempty(text_of(os, "cmdline")),
    })
}

fn check_boot_order(os: &OsDef, devices: &Devices) -> Result<()> {
    let orders: Vec<u32> = devices
        .disks
        .iter()
        .filter_map(|d| d.boot_order)
        .chain(devices.interfaces.iter().filter_map(|n| n.boot_order))
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    if !os.boot.is_empty() {
        return Err(invalid(
            "per-device boot elements cannot be used together with os/boot elements",
        ));
    }
    for (i, n) in orders.iter().enumerate() {
        if orders[..i].contains(n) {
            return Err(invalid(format!(
                "boot order '{n}' used for more than one device"
            )));
        }
    }
    Ok(())
}

fn parse_boot_order(el: Node) -> Result<Option<u32>> {
    let Some(b) = child(el, "boot") else {
        return Ok(None);
    };
    match parse_u32_attr(b, "order", "boot order")? {
        Some(0) | None => Err(invalid("boot order must be greater than 0")),
        some => Ok(some),
    }
}

fn parse_devices(devs: Node) -> Result<Devices> {
    let mut d = Devices {
        memballoon: "virtio".into(),
        ..Devices::default()
    };
    let mut memballoon_seen = false;
    for el in devs.children().filter(|c| c.is_element()) {
        let tag = el.tag_name().name();
        if UNSUPPORTED_DEVICES.contains(&tag) {
            return Err(unsupported(format!("{tag} devices are not supported")));
        }
        match tag {
            "emulator" => {
                let path = text_content(el).trim().to_owned();
                d.emulator = (!path.is_empty()).then_some(path);
            }
            "disk" => {
                let disk = parse_disk(el)?;
                if d.disks.iter().any(|o| o.target_dev == disk.target_dev) {
                    return Err(invalid(format!(
                        "target '{}' duplicated for disk sources",
                        disk.target_dev
                    )));
                }
                d.disks.push(disk);
            }
            "interface" => d.interfaces.push(parse_interface(el)?),
            "serial" => {
                check_pty(el, "serial")?;
                match child(el, "target").and_then(|t| t.attribute("type")) {
                    None | Some("isa-serial") => {}
                    Some(other) => {
                        return Err(unsupported(format!(
                            "serial target type '{other}' is not supported"
                        )))
                    }
                }
                // The ISA bus has four serial port slots.
                if d.serials.len() >= 4 {
                    return Err(unsupported("at most 4 serial ports are supported"));
                }
                let log = child(el, "log");
                d.serials.push(SerialDef {
                    log_file: log.and_then(|l| l.attribute("file")).map(str::to_owned),
                    log_append: log.and_then(|l| l.attribute("append")) == Some("on"),
                });
            }
            "console" => {
                check_pty(el, "console")?;
                match child(el, "target").and_then(|t| t.attribute("type")) {
                    None | Some("serial") => {}
                    Some(other) => {
                        return Err(unsupported(format!(
                            "console target type '{other}' is not supported"
                        )))
                    }
                }
                d.console = true;
            }
            "input" => d.inputs.push(parse_input(el)?),
            "graphics" => {
                if d.graphics.is_some() {
                    return Err(unsupported("only one graphics device is supported"));
                }
                d.graphics = Some(parse_graphics(el)?);
            }
            "video" => {
                if d.video.is_some() {
                    return Err(unsupported("only one video device is supported"));
                }
                let model = child(el, "model")
                    .and_then(|m| m.attribute("type"))
                    .unwrap_or("vga");
                if ![
                    "none", "vga", "cirrus", "virtio", "qxl", "bochs", "ramfb", "vmvga",
                ]
                .contains(&model)
                {
                    return Err(unsupported(format!(
                        "video model '{model}' is not supported"
                    )));
                }
                d.video = Some(model.to_owned());
            }
            "memballoon" => {
                if memballoon_seen {
                    return Err(invalid("only a single memballoon device is supported"));
                }
                memballoon_seen = true;
                let model = el.attribute("model").unwrap_or("virtio");
                if model != "virtio" && model != "none" {
                    return Err(unsupported(format!(
                        "memballoon model '{model}' is not supported"
                    )));
                }
                d.memballoon = model.to_owned();
            }
            "rng" => d.rngs.push(parse_rng(el)?),
            "channel" => {
                let ty = el.attribute("type").unwrap_or("");
                let target = child(el, "target");
                let kind = target.and_then(|t| t.attribute("type"));
                let name = target.and_then(|t| t.attribute("name"));
                if ty != "unix" || kind != Some("virtio") || name != Some(GUEST_AGENT_PORT) {
                    return Err(unsupported(format!(
                        "only the unix guest agent channel ({GUEST_AGENT_PORT}) is supported"
                    )));
                }
                if d.guest_agent {
                    return Err(unsupported("only one guest agent channel is supported"));
                }
                d.guest_agent = true;
            }
            // Controllers are created as the disks and inputs need them.
            "controller" => {}
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
    // With -nodefaults a display without a video card shows nothing;
    // libvirt adds one in that case too.
    if d.graphics.is_some() && d.video.is_none() {
        d.video = Some("vga".into());
    }
    Ok(d)
}

fn check_pty(el: Node, what: &str) -> Result<()> {
    match el.attribute("type").unwrap_or("pty") {
        "pty" => Ok(()),
        other => Err(unsupported(format!(
            "{what} type '{other}' is not supported"
        ))),
    }
}

fn parse_disk(el: Node) -> Result<DiskDef> {
    let source_type = el.attribute("type").unwrap_or("file").to_owned();
    if !["file", "block", "volume"].contains(&source_type.as_str()) {
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
    let driver = child(el, "driver");
    match driver.and_then(|d| d.attribute("name")) {
        None | Some("qemu") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "disk driver name '{other}' is not supported"
            )))
        }
    }
    let format = driver
        .and_then(|d| d.attribute("type"))
        .unwrap_or("raw")
        .to_owned();
    if format != "raw" && format != "qcow2" {
        return Err(unsupported(format!(
            "disk format '{format}' is not supported"
        )));
    }
    // Writes that vanish at shutdown, or a key qemud cannot pass on.
    for tag in ["transient", "encryption"] {
        if child(el, tag).is_some() {
            return Err(unsupported(format!("<{tag}> disks are not supported")));
        }
    }
    let volume = if source_type == "volume" {
        let src = child(el, "source");
        let attr = |name: &str| {
            src.and_then(|s| s.attribute(name))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        match (attr("pool"), attr("volume")) {
            (Some(pool), Some(volume)) => Some(VolumeSource {
                pool,
                volume,
                format_from_volume: driver.and_then(|d| d.attribute("type")).is_none(),
            }),
            (None, _) if src.is_some() => {
                return Err(invalid("missing 'pool' attribute for volume source"))
            }
            (_, None) if src.is_some() => {
                return Err(invalid("missing 'volume' attribute for volume source"))
            }
            _ => None,
        }
    } else {
        None
    };
    let source = if volume.is_some() {
        None
    } else {
        child(el, "source")
            .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if source.is_none() && volume.is_none() && device != "cdrom" {
        return Err(invalid("disk source is missing"));
    }
    let target = child(el, "target").ok_or_else(|| invalid("missing disk target element"))?;
    let target_dev = target
        .attribute("dev")
        .filter(|t| !t.is_empty())
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
        shareable: child(el, "shareable").is_some(),
        boot_order: parse_boot_order(el)?,
        source_type,
        volume,
        device,
        format,
        source,
        target_dev,
        bus,
    })
}

fn parse_mac(m: &str) -> Result<String> {
    let parts: Vec<&str> = m.split(':').collect();
    let bytes: Option<Vec<u8>> = parts
        .iter()
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect();
    let bytes = bytes
        .filter(|b| b.len() == 6)
        .ok_or_else(|| invalid(format!("unable to parse mac address '{m}'")))?;
    // The low bit of the first octet marks a group address; a NIC with one
    // would not receive its own traffic.
    if bytes.first().is_some_and(|b| b & 1 == 1) {
        return Err(invalid(format!(
            "expected unicast mac address, found multicast '{m}'"
        )));
    }
    Ok(m.to_ascii_lowercase())
}

fn parse_interface(el: Node) -> Result<InterfaceDef> {
    let ty = el.attribute("type").unwrap_or("");
    let source = |attr: &str| {
        child(el, "source")
            .and_then(|s| s.attribute(attr))
            .filter(|s| !s.is_empty())
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
        "ethernet" => {
            let target = child(el, "target");
            let dev = target
                .and_then(|t| t.attribute("dev"))
                .filter(|d| !d.is_empty())
                .map(str::to_owned);
            if let Some(d) = &dev {
                if d.len() > 15 || d.contains('/') || d.chars().any(char::is_whitespace) {
                    return Err(invalid(format!("invalid interface name '{d}'")));
                }
            }
            let managed = match target.and_then(|t| t.attribute("managed")) {
                None | Some("yes") => true,
                Some("no") => false,
                Some(v) => {
                    return Err(invalid(format!(
                        "invalid managed setting '{v}' in interface target"
                    )))
                }
            };
            if !managed && dev.is_none() {
                return Err(invalid("target dev must be supplied when managed='no'"));
            }
            InterfaceKind::Ethernet {
                target: dev,
                managed,
            }
        }
        other => {
            return Err(unsupported(format!(
                "interface type '{other}' is not supported"
            )))
        }
    };
    let mac = match child(el, "mac").and_then(|m| m.attribute("address")) {
        Some(m) => parse_mac(m)?,
        None => generate_mac(),
    };
    Ok(InterfaceDef {
        kind,
        mac,
        model: child(el, "model")
            .and_then(|m| m.attribute("type"))
            .unwrap_or("virtio")
            .to_owned(),
        boot_order: parse_boot_order(el)?,
    })
}

fn parse_input(el: Node) -> Result<InputDef> {
    let kind = el.attribute("type").unwrap_or("");
    match kind {
        "mouse" | "tablet" | "keyboard" => {}
        "passthrough" | "evdev" => {
            return Err(unsupported(format!("input type '{kind}' is not supported")))
        }
        other => return Err(invalid(format!("unknown input device type '{other}'"))),
    }
    let bus = el
        .attribute("bus")
        .unwrap_or(if kind == "tablet" { "usb" } else { "ps2" });
    match bus {
        "ps2" if kind == "tablet" => {
            return Err(invalid("ps2 bus does not support tablet input device"))
        }
        "ps2" | "usb" | "virtio" => {}
        other => return Err(unsupported(format!("input bus '{other}' is not supported"))),
    }
    Ok(InputDef {
        kind: kind.to_owned(),
        bus: bus.to_owned(),
    })
}

fn parse_graphics(el: Node) -> Result<GraphicsDef> {
    let ty = el.attribute("type").unwrap_or("");
    if ty != "vnc" {
        return Err(unsupported(format!(
            "graphics type '{ty}' is not supported"
        )));
    }
    // Dropping a password would open the console to anyone who can reach
    // the port.
    if el.attribute("passwd").is_some() {
        return Err(unsupported("vnc passwords are not supported"));
    }
    if el.attribute("socket").is_some() {
        return Err(unsupported("vnc on a UNIX socket is not supported"));
    }
    let listen_el = child(el, "listen");
    match listen_el.and_then(|l| l.attribute("type")) {
        None | Some("address") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "vnc listen type '{other}' is not supported"
            )))
        }
    }
    let port = match el.attribute("port").map(str::trim) {
        None | Some("-1") | Some("0") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n >= 5900 => Some(n),
            _ => {
                return Err(invalid(format!(
                    "vnc port '{p}' must be in range [5900,65535]"
                )))
            }
        },
    };
    let autoport = el.attribute("autoport") == Some("yes");
    let listen = el
        .attribute("listen")
        .or_else(|| listen_el.and_then(|l| l.attribute("address")))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .unwrap_or("127.0.0.1");
    Ok(GraphicsDef {
        port: if autoport { None } else { port },
        listen: listen.to_owned(),
    })
}

fn parse_rng(el: Node) -> Result<RngDef> {
    let model = el.attribute("model").unwrap_or("");
    if model != "virtio" {
        return Err(unsupported(format!("rng model '{model}' is not supported")));
    }
    let backend = child(el, "backend").ok_or_else(|| invalid("missing RNG device backend"))?;
    match backend.attribute("model").unwrap_or("") {
        "random" => {
            let path = text_content(backend).trim().to_owned();
            Ok(RngDef {
                source: Some(if path.is_empty() {
                    "/dev/urandom".to_owned()
                } else {
                    path
                }),
            })
        }
        "builtin" => Ok(RngDef { source: None }),
        other => Err(unsupported(format!(
            "rng backend '{other}' is not supported"
        ))),
    }
}

/// Characters XML 1.0 can carry at all.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn escape_into(out: &mut String, s: &str, attribute: bool) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            // A parser turns a literal CR into LF, and in an attribute
            // turns CR, LF and tab into spaces; references survive.
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            // Not representable in XML 1.0 even as a reference; writing it
            // would make the document unreadable.
            c if !is_xml_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Escapes text for element content (and for attributes that cannot hold
/// a newline or tab).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s, false);
    out
}

/// Escapes text for a quoted attribute value, keeping newlines and tabs.
pub fn esc_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s, true);
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
  <metadata>
    <app:note xmlns:app="http://example.org/app">keep &amp; me</app:note>
  </metadata>
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
  <features><acpi/><apic/><pae/></features>
  <cpu mode='host-passthrough'><topology sockets='1' cores='2' threads='1'/></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>preserve</on_crash>
  <pm><suspend-to-mem enabled='no'/></pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/sdz'/>
      <target dev='hdb'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda'/>
    </disk>
    <controller type='usb' model='qemu-xhci'/>
    <interface type='user'><mac address='52:54:00:AA:bb:cc'/><model type='e1000'/></interface>
    <interface type='network'><source network='default'/></interface>
    <interface type='bridge'><source bridge='br0'/><mac address='52:54:00:00:00:02'/></interface>
    <serial type='pty'><log file='/tmp/s.log' append='on'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <input type='tablet' bus='usb'/>
    <input type='keyboard'/>
    <graphics type='vnc' port='5901' listen='127.0.0.1'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
    <rng model='virtio'><backend model='random'>/dev/random</backend></rng>
  </devices>
</domain>"#;

    fn parse(xml: &str) -> DomainDef {
        match DomainDef::parse(xml) {
            Ok(d) => d,
            Err(e) => panic!("{e:?} for {xml}"),
        }
    }

    fn roundtrips(d: &DomainDef) {
        let xml = d.to_xml(None);
        assert_eq!(&parse(&xml), d, "{xml}");
        let live = d.to_xml(Some(&LiveXml {
            id: 9,
            pty_paths: vec!["/dev/pts/1".into(), "/dev/pts/2".into()],
            // A fixed port is the one QEMU listens on.
            vnc_port: d.devices.graphics.as_ref().map(|g| g.port.unwrap_or(5907)),
        }));
        assert_eq!(&parse(&live), d, "{live}");
    }

    fn err(xml: &str) -> DomainXmlError {
        match DomainDef::parse(xml) {
            Ok(d) => panic!("accepted: {d:?}"),
            Err(e) => e,
        }
    }

    fn with_devices(devices: &str) -> String {
        MINIMAL.replace(
            "</domain>",
            &format!("<devices>{devices}</devices></domain>"),
        )
    }

    #[test]
    fn minimal_gets_defaults() {
        let d = parse(MINIMAL);
        assert_eq!(d.domain_type, "qemu");
        assert!(!d.is_kvm());
        assert_eq!(d.name, "vm1");
        assert_eq!(d.memory_kib, 65536);
        assert_eq!(d.current_memory_kib, 65536);
        assert_eq!((d.vcpus, d.current_vcpus), (1, 1));
        assert_eq!(d.os.arch, "x86_64");
        assert_eq!(d.os.machine, "pc");
        assert!(d.os.boot.is_empty());
        assert_eq!(d.on_poweroff, LifecycleAction::Destroy);
        assert_eq!(d.on_reboot, LifecycleAction::Restart);
        assert_eq!(d.on_crash, LifecycleAction::Destroy);
        assert_eq!(d.devices.memballoon, "virtio");
        assert!(d.devices.graphics.is_none());
        assert!(d.metadata.is_none());
        roundtrips(&d);
    }

    #[test]
    fn minimal_formats_like_dumpxml() {
        let d = parse(MINIMAL);
        let expected = format!(
            "<domain type='qemu'>
  <name>vm1</name>
  <uuid>{}</uuid>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <memballoon model='virtio'/>
  </devices>
</domain>
",
            d.uuid_string()
        );
        assert_eq!(d.to_xml(None), expected);
    }

    #[test]
    fn full_parses_and_roundtrips() {
        let d = parse(FULL);
        assert_eq!(d.uuid_string(), "c7a5fdbd-cdaf-9455-926a-d65c16db1809");
        assert_eq!(d.title.as_deref(), Some("T"));
        assert_eq!(d.description.as_deref(), Some("D"));
        assert!(d
            .metadata
            .as_deref()
            .is_some_and(|m| m.starts_with("<metadata>") && m.contains("keep &amp; me")));
        assert_eq!(d.memory_kib, 256 * 1024);
        assert_eq!(d.current_memory_kib, 128 * 1024);
        assert_eq!((d.vcpus, d.current_vcpus), (2, 1));
        assert_eq!(d.os.machine, "q35");
        assert_eq!(d.os.boot, ["hd", "cdrom"]);
        assert_eq!(d.os.kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(d.os.cmdline.as_deref(), Some("console=ttyS0"));
        assert!(d.features.acpi && d.features.apic && d.features.pae);
        assert_eq!(d.cpu_mode.as_deref(), Some("host-passthrough"));
        assert_eq!(
            d.cpu_topology,
            Some(CpuTopology {
                sockets: 1,
                dies: 1,
                cores: 2,
                threads: 1
            })
        );
        assert_eq!(d.on_reboot, LifecycleAction::Destroy);
        assert_eq!(d.on_crash, LifecycleAction::Preserve);
        let devs = &d.devices;
        assert_eq!(
            devs.emulator.as_deref(),
            Some("/usr/bin/qemu-system-x86_64")
        );
        assert_eq!(devs.disks.len(), 3);
        assert_eq!(devs.disks[0].format, "qcow2");
        assert_eq!(devs.disks[0].bus, "virtio");
        assert!(!devs.disks[0].readonly);
        assert_eq!(devs.disks[1].source_type, "block");
        assert_eq!(devs.disks[1].source.as_deref(), Some("/dev/sdz"));
        assert_eq!(devs.disks[1].bus, "ide");
        assert!(devs.disks[1].readonly);
        assert_eq!(devs.disks[2].bus, "sata");
        assert_eq!(devs.disks[2].source, None);
        assert!(devs.disks[2].readonly);
        assert_eq!(devs.interfaces[0].mac, "52:54:00:aa:bb:cc");
        assert_eq!(devs.interfaces[0].model, "e1000");
        assert_eq!(
            devs.interfaces[1].kind,
            InterfaceKind::Network("default".into())
        );
        assert_eq!(devs.interfaces[1].model, "virtio");
        assert!(devs.interfaces[1].mac.starts_with("52:54:00:"));
        assert_eq!(devs.interfaces[2].kind, InterfaceKind::Bridge("br0".into()));
        assert_eq!(devs.serials.len(), 1);
        assert_eq!(devs.serials[0].log_file.as_deref(), Some("/tmp/s.log"));
        assert!(devs.serials[0].log_append);
        assert!(devs.console);
        assert_eq!(
            devs.inputs,
            [
                InputDef {
                    kind: "tablet".into(),
                    bus: "usb".into()
                },
                InputDef {
                    kind: "keyboard".into(),
                    bus: "ps2".into()
                }
            ]
        );
        assert_eq!(
            devs.graphics,
            Some(GraphicsDef {
                port: Some(5901),
                listen: "127.0.0.1".into()
            })
        );
        assert_eq!(devs.video.as_deref(), Some("none"));
        assert_eq!(devs.memballoon, "none");
        assert_eq!(devs.rngs[0].source.as_deref(), Some("/dev/random"));
        roundtrips(&d);
    }

    #[test]
    fn live_xml_shows_runtime_facts() {
        let d = parse(&with_devices(
            "<serial type='pty'/><serial type='pty'/><graphics type='vnc' autoport='yes'/>",
        ));
        let inactive = d.to_xml(None);
        assert!(inactive.starts_with("<domain type='qemu'>\n"));
        assert!(inactive.contains("port='-1' autoport='yes'"), "{inactive}");
        assert!(!inactive.contains("/dev/pts"));
        let live = d.to_xml(Some(&LiveXml {
            id: 4,
            pty_paths: vec!["/dev/pts/3".into(), "/dev/pts/5".into()],
            vnc_port: Some(5902),
        }));
        assert!(live.starts_with("<domain type='qemu' id='4'>\n"), "{live}");
        assert!(live.contains(
            "<serial type='pty'>\n      <source path='/dev/pts/3'/>\n      <target type='isa-serial' port='0'/>"
        ));
        assert!(live
            .contains("<source path='/dev/pts/5'/>\n      <target type='isa-serial' port='1'/>"));
        assert!(
            live.contains("<console type='pty' tty='/dev/pts/3'>"),
            "{live}"
        );
        assert!(live.contains("port='5902' autoport='yes'"), "{live}");
        // A graphics device brings its video card along.
        assert_eq!(d.devices.video.as_deref(), Some("vga"));
        assert_eq!(parse(&live), d);
    }

    #[test]
    fn units() {
        let m = |v: &str, u: &str| parse_unit_kib(v, Some(u), "memory").unwrap_or(u64::MAX);
        assert_eq!(parse_unit_kib("7", None, "memory"), Ok(7));
        for unit in ["b", "bytes", "byte"] {
            assert_eq!(m("1024", unit), 1);
        }
        assert_eq!(m("1025", "b"), 2, "rounded up to whole KiB");
        assert_eq!(m("1000", "KB"), 977);
        for unit in ["k", "K", "KiB"] {
            assert_eq!(m("3", unit), 3);
        }
        assert_eq!(m("2", "MB"), 1954);
        for unit in ["M", "m", "MiB"] {
            assert_eq!(m("2", unit), 2048);
        }
        assert_eq!(m("1", "GB"), 976_563);
        for unit in ["G", "GiB"] {
            assert_eq!(m("1", unit), 1024 * 1024);
        }
        assert_eq!(m("1", "TB"), 976_562_500);
        for unit in ["T", "TiB"] {
            assert_eq!(m("1", unit), 1024 * 1024 * 1024);
        }
        for (value, unit) in [("1", "parsecs"), ("1", "KIB"), ("x", "KiB"), ("-1", "KiB")] {
            assert!(
                matches!(
                    parse_unit_kib(value, Some(unit), "memory"),
                    Err(DomainXmlError::Invalid(_))
                ),
                "{value} {unit}"
            );
        }
        assert!(parse_unit_kib("18446744073709551615", Some("EiB"), "memory").is_err());
        let d = parse(&MINIMAL.replace("<memory>65536", "<memory unit='GiB'>1"));
        assert_eq!(d.memory_kib, 1024 * 1024);
    }

    #[test]
    fn malformed_xml_is_an_xml_error() {
        for xml in [
            "<domain",
            "",
            "<domain type='qemu'><name>x</name>",
            "not xml",
        ] {
            assert!(matches!(err(xml), DomainXmlError::Xml(_)), "{xml}");
        }
    }

    #[test]
    fn semantic_errors_are_invalid() {
        let cases = [
            (
                "<domain type='qemu'><memory>1</memory><os><type>hvm</type></os></domain>".to_owned(),
                "missing name",
            ),
            (MINIMAL.replace("vm1", "a/b"), "cannot contain '/'"),
            ("<network/>".to_owned(), "unexpected root element <network>"),
            (MINIMAL.replace(" type='qemu'", ""), "missing domain type"),
            (
                MINIMAL.replace("<memory>", "<memory unit='furlong'>"),
                "unknown memory unit",
            ),
            (MINIMAL.replace("<memory>65536</memory>", ""), "missing memory"),
            (
                MINIMAL.replace("</memory>", "</memory><currentMemory>99999999</currentMemory>"),
                "must not exceed",
            ),
            (
                MINIMAL.replace("<name>", "<uuid>nope</uuid><name>"),
                "malformed uuid",
            ),
            (
                MINIMAL.replace("</memory>", "</memory><vcpu current='3'>2</vcpu>"),
                "less than current",
            ),
            (
                MINIMAL.replace("</memory>", "</memory><vcpu>0</vcpu>"),
                "vCPUs",
            ),
            (
                MINIMAL.replace("</os>", "<boot dev='usb'/></os>"),
                "unknown boot device",
            ),
            (
                MINIMAL.replace("</os>", "</os><on_reboot>coredump-destroy</on_reboot>"),
                "doesn't support",
            ),
            (
                MINIMAL.replace("</os>", "</os><on_crash>explode</on_crash>"),
                "unknown on_crash action",
            ),
            (
                with_devices("<interface type='user'><mac address='53:54:00:00:00:01'/></interface>"),
                "multicast",
            ),
            (
                with_devices("<interface type='user'><mac address='52:54:00:00:01'/></interface>"),
                "unable to parse mac",
            ),
            (
                with_devices("<disk><source file='/a'/><target dev='vda'/></disk><disk><source file='/b'/><target dev='vda'/></disk>"),
                "duplicated",
            ),
            (with_devices("<disk><target dev='vda'/></disk>"), "source is missing"),
            (
                with_devices("<graphics type='vnc' port='22'/>"),
                "[5900,65535]",
            ),
            (
                MINIMAL.replace("</os>", "<boot dev='hd'/></os>").replace(
                    "</domain>",
                    "<devices><disk><source file='/a'/><target dev='vda'/><boot order='1'/></disk></devices></domain>",
                ),
                "per-device boot",
            ),
            (
                MINIMAL.replace("</os>", "</os><cpu><topology sockets='2' cores='2'/></cpu>"),
                "topology",
            ),
        ];
        for (xml, needle) in cases {
            match err(&xml) {
                DomainXmlError::Invalid(m) => assert!(m.contains(needle), "{m} / {needle}"),
                other => panic!("{other:?} for {xml}"),
            }
        }
    }

    #[test]
    fn unsupported_configurations_are_named() {
        let cases = [
            (
                with_devices("<hostdev mode='subsystem' type='pci'/>"),
                "hostdev devices are not supported",
            ),
            (with_devices("<filesystem type='mount'/>"), "filesystem"),
            (
                with_devices("<redirdev bus='usb' type='spicevmc'/>"),
                "redirdev",
            ),
            (with_devices("<smartcard mode='host'/>"), "smartcard"),
            (with_devices("<tpm model='tpm-tis'/>"), "tpm"),
            (with_devices("<shmem name='x'/>"), "shmem"),
            (with_devices("<iommu model='intel'/>"), "iommu"),
            (with_devices("<vsock model='virtio'/>"), "vsock"),
            (with_devices("<frobnicator/>"), "frobnicator"),
            (
                with_devices("<interface type='direct'><source dev='eth0'/></interface>"),
                "interface type 'direct'",
            ),
            (
                with_devices(
                    "<disk type='network'><source protocol='nbd'/><target dev='vda'/></disk>",
                ),
                "disk type 'network'",
            ),
            (
                with_devices("<disk type='network'/>"),
                "disk type 'network'",
            ),
            (with_devices("<disk type='dir'/>"), "disk type 'dir'"),
            (
                with_devices("<graphics type='spice'/>"),
                "graphics type 'spice'",
            ),
            (
                with_devices("<graphics type='vnc' passwd='secret'/>"),
                "password",
            ),
            (with_devices("<serial type='tcp'/>"), "serial type 'tcp'"),
            (
                with_devices("<console type='pty'><target type='virtio'/></console>"),
                "console target type",
            ),
            (
                MINIMAL.replace("type='qemu'", "type='nonsense'"),
                "invalid domain type nonsense",
            ),
            (
                MINIMAL.replace("<type>", "<type arch='z80'>"),
                "Unknown architecture z80",
            ),
            (MINIMAL.replace(">hvm<", ">dos<"), "unknown OS type 'dos'"),
            (MINIMAL.replace("<os>", "<os firmware='efi'>"), "firmware"),
            (
                MINIMAL.replace(
                    "</os>",
                    "<loader>/usr/share/OVMF/OVMF_CODE.fd</loader></os>",
                ),
                "firmware",
            ),
        ];
        for (xml, needle) in cases {
            match err(&xml) {
                DomainXmlError::Unsupported(m) => assert!(m.contains(needle), "{m} / {needle}"),
                other => panic!("{other:?} for {xml}"),
            }
        }
    }

    #[test]
    fn uuid_forms() {
        let want = "c7a5fdbd-cdaf-9455-926a-d65c16db1809";
        for form in [
            want,
            "C7A5FDBD-CDAF-9455-926A-D65C16DB1809",
            "c7a5fdbdcdaf9455926ad65c16db1809",
            "  c7a5-fdbd-cdaf-9455-926a-d65c-16db-1809 \n",
            "c7 a5 fd bd cd af 94 55 92 6a d6 5c 16 db 18 09",
        ] {
            let xml = MINIMAL.replace("<name>", &format!("<uuid>{form}</uuid><name>"));
            assert_eq!(parse(&xml).uuid_string(), want, "{form}");
        }
        for bad in [
            "",
            "c7a5fdbd-cdaf-9455-926a-d65c16db180",
            "c7a5fdbd-cdaf-9455-926a-d65c16db18090",
            "g7a5fdbd-cdaf-9455-926a-d65c16db1809",
            "{c7a5fdbd-cdaf-9455-926a-d65c16db1809}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuid_and_mac_are_generated_when_absent() {
        let a = parse(MINIMAL);
        let b = parse(MINIMAL);
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(a.uuid.get_version_num(), 4);
        let mac = generate_mac();
        assert!(mac.starts_with("52:54:00:"));
        assert_eq!(parse_mac(&mac), Ok(mac.clone()));
    }

    #[test]
    fn escaping_roundtrips() {
        let xml = MINIMAL.replace(
            "<name>vm1</name>",
            "<name>vm1 é</name><title>a &lt;b&gt; &amp; 'c' \"d\" é</title><description>two\nlines</description>",
        )
        .replace(
            "</domain>",
            "<devices><disk><source file=\"/i&apos;m &lt;here&gt;&#9;.img\"/><target dev='vda'/></disk></devices></domain>",
        );
        let d = parse(&xml);
        assert_eq!(d.name, "vm1 é");
        assert_eq!(d.title.as_deref(), Some("a <b> & 'c' \"d\" é"));
        assert_eq!(d.description.as_deref(), Some("two\nlines"));
        assert_eq!(
            d.devices.disks[0].source.as_deref(),
            Some("/i'm <here>\t.img")
        );
        let out = d.to_xml(None);
        assert!(out.contains("<name>vm1 é</name>"));
        assert!(out.contains("<title>a &lt;b&gt; &amp; &apos;c&apos; &quot;d&quot; é</title>"));
        assert!(
            out.contains("file='/i&apos;m &lt;here&gt;&#9;.img'"),
            "{out}"
        );
        roundtrips(&d);
    }

    #[test]
    fn escape_functions() {
        assert_eq!(esc("<&'\">"), "&lt;&amp;&apos;&quot;&gt;");
        assert_eq!(esc("é\n\t"), "é\n\t");
        assert_eq!(esc_attr("a\nb\tc\rd"), "a&#10;b&#9;c&#13;d");
        assert_eq!(esc("bell\u{7}"), "bell\u{FFFD}");
    }

    #[test]
    fn validate_name_rejects_what_xml_cannot_hold() {
        assert!(validate_name("ok-name_1.x é").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name("a\u{1}b").is_err());
    }

    #[test]
    fn metadata_needing_outer_namespaces_is_dropped() {
        let xml = "<domain type='qemu' xmlns:x='urn:x'><name>m</name><metadata><x:a/></metadata>\
                   <memory>1024</memory><os><type>hvm</type></os></domain>";
        let d = parse(xml);
        assert_eq!(d.metadata, None);
        roundtrips(&d);
        let kept = MINIMAL.replace(
            "</name>",
            "</name><metadata><y:b xmlns:y='urn:y' v='1'/></metadata>",
        );
        let d = parse(&kept);
        assert_eq!(
            d.metadata.as_deref(),
            Some("<metadata><y:b xmlns:y='urn:y' v='1'/></metadata>")
        );
        roundtrips(&d);
    }

    #[test]
    fn cpu_modes_and_models() {
        let cpu = |inner: &str| parse(&MINIMAL.replace("</os>", &format!("</os>{inner}")));
        let d = cpu("<cpu mode='host-model'/>");
        assert_eq!(d.cpu_mode.as_deref(), Some("host-model"));
        roundtrips(&d);
        let d = cpu("<cpu match='exact'><model fallback='allow'>Skylake-Client</model></cpu>");
        assert_eq!(d.cpu_mode.as_deref(), Some("custom"));
        assert_eq!(d.cpu_model.as_deref(), Some("Skylake-Client"));
        roundtrips(&d);
        let d = cpu("<cpu mode='maximum'/>");
        assert_eq!(d.cpu_mode.as_deref(), Some("maximum"));
        roundtrips(&d);
        let d = cpu("<cpu><topology sockets='1' dies='1' cores='1' threads='1'/></cpu>");
        assert_eq!(d.cpu_mode, None);
        assert!(d.cpu_topology.is_some());
        roundtrips(&d);
        assert!(matches!(
            DomainDef::parse(&MINIMAL.replace("</os>", "</os><cpu mode='weird'/>")),
            Err(DomainXmlError::Invalid(_))
        ));
    }

    #[test]
    fn devices_defaults_and_boot_order() {
        let d = parse(&with_devices(
            "<disk type='file' device='disk'><source file='/a.img'/><target dev='vdb'/><boot order='2'/></disk>\
             <interface type='user'><boot order='1'/></interface>\
             <input type='mouse' bus='virtio'/>\
             <rng model='virtio'><backend model='builtin'/></rng>\
             <console type='pty'/>",
        ));
        let disk = &d.devices.disks[0];
        assert_eq!((disk.format.as_str(), disk.bus.as_str()), ("raw", "virtio"));
        assert_eq!(disk.boot_order, Some(2));
        assert_eq!(d.devices.interfaces[0].boot_order, Some(1));
        assert_eq!(d.devices.interfaces[0].model, "virtio");
        assert_eq!(d.devices.serials.len(), 1, "a console implies serial 0");
        assert_eq!(d.devices.rngs, [RngDef { source: None }]);
        roundtrips(&d);
        assert!(matches!(
            DomainDef::parse(&with_devices(
                "<disk><source file='/a'/><target dev='vda'/><boot order='1'/></disk>\
                 <interface type='user'><boot order='1'/></interface>"
            )),
            Err(DomainXmlError::Invalid(m)) if m.contains("more than one")
        ));
    }

    #[test]
    fn volume_disks_keep_pool_and_volume() {
        for (driver, from_volume) in ["", "<driver name='qemu' type='qcow2'/>"]
            .iter()
            .zip([true, false])
        {
            let d = parse(&with_devices(&format!(
                "<disk type='volume' device='disk'>{driver}<source pool='p' volume='v.qcow2'/>\
                 <target dev='vda' bus='virtio'/></disk>"
            )));
            let disk = &d.devices.disks[0];
            let v = disk.volume.as_ref().unwrap();
            assert_eq!((v.pool.as_str(), v.volume.as_str()), ("p", "v.qcow2"));
            assert_eq!(v.format_from_volume, from_volume);
            assert!(disk.source.is_none());
            let xml = d.to_xml(None);
            assert!(xml.contains("<source pool='p' volume='v.qcow2'/>"), "{xml}");
            roundtrips(&d);
        }
        assert!(matches!(
            err(&with_devices(
                "<disk type='volume'><source volume='v'/><target dev='vda'/></disk>"
            )),
            DomainXmlError::Invalid(m) if m.contains("'pool'")
        ));
    }
}
