//! The libvirt node device XML model (`docs/formatnode.rst`) for the devices
//! qemud reads from sysfs, formatted as libvirt's `virNodeDeviceDefFormat`.

use std::fmt::Write as _;

use crate::domain::esc;
use crate::interface::{format_link, Link};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemCap {
    pub product: Option<String>,
    pub hw_vendor: Option<String>,
    pub hw_version: Option<String>,
    pub hw_serial: Option<String>,
    pub hw_uuid: String,
    pub fw_vendor: Option<String>,
    pub fw_version: Option<String>,
    pub fw_release_date: Option<String>,
}

/// One side of a PCIe link: `port` is -1 where it does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcieLink {
    pub port: i32,
    pub speed: u32,
    pub width: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciCap {
    pub class: Option<u32>,
    pub domain: u32,
    pub bus: u32,
    pub slot: u32,
    pub function: u32,
    pub product_id: u32,
    pub product_name: Option<String>,
    pub vendor_id: u32,
    pub vendor_name: Option<String>,
    /// `virPCIHeaderType`; 0 (endpoint) is not shown.
    pub header_type: u8,
    pub iommu_group: Option<(u32, Vec<[u32; 4]>)>,
    pub numa_node: Option<i32>,
    /// PCI Express, with the link's capability and status where it has one.
    pub pcie: Option<Option<(PcieLink, PcieLink)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbDeviceCap {
    pub bus: u32,
    pub device: u32,
    pub product_id: u32,
    pub product_name: Option<String>,
    pub vendor_id: u32,
    pub vendor_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbInterfaceCap {
    pub number: u32,
    pub class: u32,
    pub subclass: u32,
    pub protocol: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetCap {
    pub interface: String,
    pub address: Option<String>,
    pub link: Link,
    /// Offload features, in libvirt's order of `virNetDevFeature`.
    pub features: Vec<&'static str>,
    /// `80203` (ethernet) or `80211` (wireless).
    pub subtype: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageCap {
    pub block: String,
    pub bus: Option<String>,
    pub drive_type: String,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub size: u64,
    pub logical_block_size: u64,
    pub num_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    System(SystemCap),
    Pci(PciCap),
    UsbDevice(UsbDeviceCap),
    UsbInterface(UsbInterfaceCap),
    Net(NetCap),
    Storage(StorageCap),
}

impl Capability {
    /// The name libvirt gives the capability (`virNodeDevCapType`).
    pub fn name(&self) -> &'static str {
        match self {
            Capability::System(_) => "system",
            Capability::Pci(_) => "pci",
            Capability::UsbDevice(_) => "usb_device",
            Capability::UsbInterface(_) => "usb",
            Capability::Net(_) => "net",
            Capability::Storage(_) => "storage",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDeviceDef {
    pub name: String,
    /// The sysfs path; None for `computer`.
    pub path: Option<String>,
    pub devnode: Option<String>,
    /// Symlinks udev made to the device node, sorted.
    pub devlinks: Vec<String>,
    pub parent: Option<String>,
    pub driver: Option<String>,
    pub cap: Capability,
}

impl NodeDeviceDef {
    /// The capability names `virNodeDeviceListCaps` reports.
    pub fn cap_names(&self) -> Vec<String> {
        vec![self.cap.name().to_owned()]
    }

    /// libvirt's `virNodeDeviceDefFormat`.
    pub fn to_xml(&self) -> String {
        let mut o = String::from("<device>\n");
        let _ = writeln!(o, "  <name>{}</name>", esc(&self.name));
        if let Some(p) = &self.path {
            let _ = writeln!(o, "  <path>{}</path>", esc(p));
        }
        if let Some(d) = &self.devnode {
            let _ = writeln!(o, "  <devnode type='dev'>{}</devnode>", esc(d));
        }
        for l in &self.devlinks {
            let _ = writeln!(o, "  <devnode type='link'>{}</devnode>", esc(l));
        }
        if let Some(p) = &self.parent {
            let _ = writeln!(o, "  <parent>{}</parent>", esc(p));
        }
        if let Some(d) = &self.driver {
            let _ = writeln!(o, "  <driver>\n    <name>{}</name>\n  </driver>", esc(d));
        }
        let _ = writeln!(o, "  <capability type='{}'>", self.cap.name());
        let opt = |o: &mut String, tag: &str, v: &Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(o, "    <{tag}>{}</{tag}>", esc(v));
            }
        };
        match &self.cap {
            Capability::System(s) => {
                if let Some(p) = &s.product {
                    let _ = writeln!(o, "    <product>{}</product>", esc(p));
                }
                o.push_str("    <hardware>\n");
                for (tag, v) in [
                    ("vendor", &s.hw_vendor),
                    ("version", &s.hw_version),
                    ("serial", &s.hw_serial),
                ] {
                    if let Some(v) = v {
                        let _ = writeln!(o, "      <{tag}>{}</{tag}>", esc(v));
                    }
                }
                let _ = writeln!(o, "      <uuid>{}</uuid>", esc(&s.hw_uuid));
                o.push_str("    </hardware>\n    <firmware>\n");
                for (tag, v) in [
                    ("vendor", &s.fw_vendor),
                    ("version", &s.fw_version),
                    ("release_date", &s.fw_release_date),
                ] {
                    if let Some(v) = v {
                        let _ = writeln!(o, "      <{tag}>{}</{tag}>", esc(v));
                    }
                }
                o.push_str("    </firmware>\n");
            }
            Capability::Pci(p) => {
                if let Some(c) = p.class {
                    let _ = writeln!(o, "    <class>0x{c:06x}</class>");
                }
                let _ = writeln!(o, "    <domain>{}</domain>", p.domain);
                let _ = writeln!(o, "    <bus>{}</bus>", p.bus);
                let _ = writeln!(o, "    <slot>{}</slot>", p.slot);
                let _ = writeln!(o, "    <function>{}</function>", p.function);
                id_name(&mut o, "product", p.product_id, &p.product_name, "/>");
                id_name(&mut o, "vendor", p.vendor_id, &p.vendor_name, "/>");
                match p.header_type {
                    1 => o.push_str("    <capability type='pci-bridge'/>\n"),
                    2 => o.push_str("    <capability type='cardbus-bridge'/>\n"),
                    _ => {}
                }
                if let Some((n, members)) = &p.iommu_group {
                    let _ = writeln!(o, "    <iommuGroup number='{n}'>");
                    for a in members {
                        let _ = writeln!(
                            o,
                            "      <address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{}'/>",
                            a[0], a[1], a[2], a[3]
                        );
                    }
                    o.push_str("    </iommuGroup>\n");
                }
                if let Some(n) = p.numa_node {
                    let _ = writeln!(o, "    <numa node='{n}'/>");
                }
                match &p.pcie {
                    None => {}
                    Some(None) => o.push_str("    <pci-express/>\n"),
                    Some(Some((cap, sta))) => {
                        o.push_str("    <pci-express>\n");
                        pcie_link(&mut o, "cap", cap);
                        pcie_link(&mut o, "sta", sta);
                        o.push_str("    </pci-express>\n");
                    }
                }
            }
            Capability::UsbDevice(u) => {
                let _ = writeln!(o, "    <bus>{}</bus>", u.bus);
                let _ = writeln!(o, "    <device>{}</device>", u.device);
                id_name(&mut o, "product", u.product_id, &u.product_name, " />");
                id_name(&mut o, "vendor", u.vendor_id, &u.vendor_name, " />");
            }
            Capability::UsbInterface(u) => {
                let _ = writeln!(o, "    <number>{}</number>", u.number);
                let _ = writeln!(o, "    <class>{}</class>", u.class);
                let _ = writeln!(o, "    <subclass>{}</subclass>", u.subclass);
                let _ = writeln!(o, "    <protocol>{}</protocol>", u.protocol);
            }
            Capability::Net(n) => {
                let _ = writeln!(o, "    <interface>{}</interface>", esc(&n.interface));
                opt(&mut o, "address", &n.address);
                format_link(&mut o, "  ", &n.link);
                for f in &n.features {
                    let _ = writeln!(o, "    <feature name='{f}'/>");
                }
                let _ = writeln!(o, "    <capability type='{}'/>", n.subtype);
            }
            Capability::Storage(s) => {
                let _ = writeln!(o, "    <block>{}</block>", esc(&s.block));
                opt(&mut o, "bus", &s.bus);
                let _ = writeln!(o, "    <drive_type>{}</drive_type>", esc(&s.drive_type));
                opt(&mut o, "model", &s.model);
                opt(&mut o, "vendor", &s.vendor);
                opt(&mut o, "serial", &s.serial);
                let _ = writeln!(o, "    <size>{}</size>", s.size);
                if s.logical_block_size > 0 {
                    let _ = writeln!(
                        o,
                        "    <logical_block_size>{}</logical_block_size>",
                        s.logical_block_size
                    );
                }
                if s.num_blocks > 0 {
                    let _ = writeln!(o, "    <num_blocks>{}</num_blocks>", s.num_blocks);
                }
            }
        }
        o.push_str("  </capability>\n</device>\n");
        o
    }
}

/// Why a node device definition could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefinitionError {
    /// Not well-formed (VIR_ERR_XML_DETAIL).
    Parse(String),
    /// Another root element (VIR_ERR_XML_ERROR from libvirt's XML layer).
    Root(String),
}

/// Reads a client's node device definition far enough to tell whether it
/// describes a mediated device.
pub fn definition_is_mdev(xml: &str) -> Result<bool, DefinitionError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| {
        DefinitionError::Parse(format!("(node_device_definition):{}: {e}", e.pos().row))
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "device" {
        return Err(DefinitionError::Root(format!(
            "expecting root element of 'device', not '{}'",
            root.tag_name().name()
        )));
    }
    Ok(root
        .children()
        .any(|c| c.has_tag_name("capability") && c.attribute("type") == Some("mdev")))
}

fn id_name(o: &mut String, tag: &str, id: u32, name: &Option<String>, empty_end: &str) {
    let _ = write!(o, "    <{tag} id='0x{id:04x}'");
    match name {
        Some(n) => {
            let _ = writeln!(o, ">{}</{tag}>", esc(n));
        }
        None => {
            let _ = writeln!(o, "{empty_end}");
        }
    }
}

fn pcie_link(o: &mut String, validity: &str, l: &PcieLink) {
    const SPEEDS: [&str; 7] = ["", "2.5", "5", "8", "16", "32", "64"];
    let _ = write!(o, "      <link validity='{validity}'");
    if l.port >= 0 {
        let _ = write!(o, " port='{}'", l.port);
    }
    if l.speed != 0 {
        let s = SPEEDS.get(l.speed as usize).copied().unwrap_or("");
        let _ = write!(o, " speed='{s}'");
    }
    let _ = writeln!(o, " width='{}'/>", l.width);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_device_as_libvirt_shows_it() {
        let d = NodeDeviceDef {
            name: "pci_0000_00_01_0".into(),
            path: Some("/sys/devices/pci0000:00/0000:00:01.0".into()),
            devnode: None,
            devlinks: Vec::new(),
            parent: Some("computer".into()),
            driver: Some("virtio-pci".into()),
            cap: Capability::Pci(PciCap {
                class: Some(0xffff00),
                domain: 0,
                bus: 0,
                slot: 1,
                function: 0,
                product_id: 0x1045,
                product_name: Some("Virtio 1.0 memory balloon".into()),
                vendor_id: 0x1af4,
                vendor_name: Some("Red Hat, Inc.".into()),
                header_type: 0,
                iommu_group: None,
                numa_node: None,
                pcie: None,
            }),
        };
        assert_eq!(
            d.to_xml(),
            "<device>\n  <name>pci_0000_00_01_0</name>\n  <path>/sys/devices/pci0000:00/0000:00:01.0</path>\n  \
             <parent>computer</parent>\n  <driver>\n    <name>virtio-pci</name>\n  </driver>\n  \
             <capability type='pci'>\n    <class>0xffff00</class>\n    <domain>0</domain>\n    <bus>0</bus>\n    \
             <slot>1</slot>\n    <function>0</function>\n    <product id='0x1045'>Virtio 1.0 memory balloon</product>\n    \
             <vendor id='0x1af4'>Red Hat, Inc.</vendor>\n  </capability>\n</device>\n"
        );
    }

    #[test]
    fn computer_as_libvirt_shows_it() {
        let d = NodeDeviceDef {
            name: "computer".into(),
            path: None,
            devnode: None,
            devlinks: Vec::new(),
            parent: None,
            driver: None,
            cap: Capability::System(SystemCap {
                hw_uuid: "00000000-0000-0000-0000-000000000000".into(),
                ..SystemCap::default()
            }),
        };
        assert_eq!(
            d.to_xml(),
            "<device>\n  <name>computer</name>\n  <capability type='system'>\n    <hardware>\n      \
             <uuid>00000000-0000-0000-0000-000000000000</uuid>\n    </hardware>\n    <firmware>\n    \
             </firmware>\n  </capability>\n</device>\n"
        );
    }
}
