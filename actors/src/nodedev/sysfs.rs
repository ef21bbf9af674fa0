//! The host's devices read from sysfs the way libvirt's udev backend sees
//! them: the computer, PCI devices, USB devices and interfaces, network
//! devices and disks, named and parented as libvirt names them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qemud_config::nodedev::{
    Capability, NetCap, NodeDeviceDef, PciCap, PcieLink, StorageCap, SystemCap, UsbDeviceCap,
    UsbInterfaceCap,
};

use super::ethtool;
use crate::interface::link_info;

/// Sysfs attributes are small; anything longer is not one.
const ATTR_MAX: u64 = 64 * 1024;

fn read_attr(dir: &Path, attr: &str) -> Option<String> {
    let p = dir.join(attr);
    let meta = fs::metadata(&p).ok()?;
    if meta.len() > ATTR_MAX {
        return None;
    }
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

fn hex_attr(dir: &Path, attr: &str) -> Option<u32> {
    let s = read_attr(dir, attr)?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn uevent(dir: &Path) -> HashMap<String, String> {
    read_attr(dir, "uevent")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What udev recorded about a device, where udev runs: its properties
/// (`E:` lines of its database entry) and the symlinks it made to the
/// device node (`S:` lines).
#[derive(Default)]
struct UdevEntry {
    props: HashMap<String, String>,
    links: Vec<String>,
}

/// The name of a device's udev database entry: `b`/`c` + major:minor for
/// device nodes, `n` + ifindex for network devices, else
/// `+subsystem:sysname`.
fn udev_entry(dir: &Path, ev: &HashMap<String, String>) -> UdevEntry {
    let subsystem = fs::read_link(dir.join("subsystem"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let id = match (ev.get("MAJOR"), ev.get("MINOR"), ev.get("IFINDEX")) {
        (Some(ma), Some(mi), _) => {
            let kind = if subsystem == "block" { 'b' } else { 'c' };
            format!("{kind}{ma}:{mi}")
        }
        (_, _, Some(ifindex)) => format!("n{ifindex}"),
        _ => {
            let sysname = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            format!("+{subsystem}:{}", sysname.unwrap_or_default())
        }
    };
    let text = fs::read_to_string(Path::new("/run/udev/data").join(id)).unwrap_or_default();
    let mut entry = UdevEntry::default();
    for line in text.lines() {
        if let Some((k, v)) = line.strip_prefix("E:").and_then(|l| l.split_once('=')) {
            entry.props.insert(k.to_owned(), v.to_owned());
        } else if let Some(link) = line.strip_prefix("S:") {
            entry.links.push(format!("/dev/{link}"));
        }
    }
    entry.links.sort();
    entry
}

/// libvirt's `nodeDeviceGenerateName`: every character that is not a
/// letter or digit becomes `_`.
fn device_name(subsystem: &str, sysname: &str, suffix: Option<&str>) -> String {
    let mut s = format!("{subsystem}_{sysname}");
    if let Some(x) = suffix {
        s.push('_');
        s.push_str(x);
    }
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn driver_of(dir: &Path) -> Option<String> {
    fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn devnode_of(ev: &HashMap<String, String>) -> Option<String> {
    ev.get("DEVNAME").map(|n| format!("/dev/{n}"))
}

/// Entries of a sysfs class or bus directory, resolved to their device
/// directories.
fn class_devices(dir: &str) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            fs::canonicalize(e.path()).ok().map(|p| (name, p))
        })
        .collect();
    v.sort();
    v
}

/// Vendor and device names from the PCI ID database, loaded once.
struct PciIds {
    vendors: HashMap<u32, String>,
    devices: HashMap<(u32, u32), String>,
}

fn pci_ids() -> &'static PciIds {
    static IDS: OnceLock<PciIds> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut ids = PciIds {
            vendors: HashMap::new(),
            devices: HashMap::new(),
        };
        let text = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"]
            .iter()
            .find_map(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        let mut vendor: Option<u32> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            // The device classes section ends the vendor list.
            if line.starts_with("C ") {
                break;
            }
            let parse = |l: &str| -> Option<(u32, String)> {
                let (id, name) = l.split_once("  ")?;
                Some((u32::from_str_radix(id, 16).ok()?, name.to_owned()))
            };
            if let Some(rest) = line.strip_prefix('\t') {
                if rest.starts_with('\t') {
                    continue; // subsystem lines
                }
                if let (Some(v), Some((d, name))) = (vendor, parse(rest)) {
                    ids.devices.insert((v, d), name);
                }
            } else if let Some((v, name)) = parse(line) {
                vendor = Some(v);
                ids.vendors.insert(v, name);
            }
        }
        ids
    })
}

fn computer() -> NodeDeviceDef {
    let dmi = Path::new("/sys/class/dmi/id");
    let attr = |a: &str| read_attr(dmi, a).filter(|s| !s.is_empty());
    NodeDeviceDef {
        name: "computer".into(),
        path: None,
        devnode: None,
        devlinks: Vec::new(),
        parent: None,
        driver: None,
        cap: Capability::System(SystemCap {
            product: attr("product_name"),
            hw_vendor: attr("sys_vendor"),
            hw_version: attr("product_version"),
            hw_serial: attr("product_serial"),
            hw_uuid: attr("product_uuid")
                .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into()),
            fw_vendor: attr("bios_vendor"),
            fw_version: attr("bios_version"),
            fw_release_date: attr("bios_date"),
        }),
    }
}

/// A device's PCI config space, read a few bytes at a time: every read of
/// it is real configuration cycles (VM exits in a guest), so only the
/// registers asked for are read, as libvirt does.
struct PciConfig {
    file: fs::File,
    len: u64,
}

impl PciConfig {
    fn open(dir: &Path) -> Option<PciConfig> {
        let file = fs::File::open(dir.join("config")).ok()?;
        let len = file.metadata().ok()?.len();
        Some(PciConfig { file, len })
    }

    fn bytes<const N: usize>(&self, at: u64) -> Option<[u8; N]> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; N];
        self.file.read_exact_at(&mut b, at).ok()?;
        Some(b)
    }

    fn u8(&self, at: u64) -> Option<u8> {
        self.bytes::<1>(at).map(|b| b[0])
    }

    fn u16(&self, at: u64) -> Option<u16> {
        self.bytes::<2>(at).map(u16::from_le_bytes)
    }

    fn u32(&self, at: u64) -> Option<u32> {
        self.bytes::<4>(at).map(u32::from_le_bytes)
    }

    /// The offset of capability `id` in the standard capability list:
    /// Some(0) when absent, None when the list cannot be read.
    fn find_capability(&self, id: u8) -> Option<u64> {
        let status = self.u16(0x06)?;
        if status & 0x10 == 0 {
            return None;
        }
        let mut pos = self.u8(0x34)?;
        let mut hops = 0;
        // Capabilities live after the 64-byte header; 0xff is what an
        // unreadable region gives.
        while pos >= 0x40 && pos != 0xff && hops < 48 {
            if self.u8(u64::from(pos))? == id {
                return Some(u64::from(pos));
            }
            pos = self.u8(u64::from(pos) + 1)?;
            hops += 1;
        }
        Some(0)
    }
}

/// PCI Express facts from the config space, as libvirt reads them: the
/// capability list and, where it cannot be walked, a guess from the config
/// space's length (256 bytes is plain PCI).
fn pci_config_facts(dir: &Path) -> (u8, Option<Option<(PcieLink, PcieLink)>>) {
    let Some(cfg) = PciConfig::open(dir) else {
        return (0, Some(None));
    };
    let header_type = cfg.u8(0x0e).unwrap_or(0) & 0x7f;
    let pos = match cfg.find_capability(0x10) {
        None => return (header_type, (cfg.len != 256).then_some(None)),
        Some(0) => return (header_type, None),
        Some(p) => p,
    };
    let port_type = (cfg.u16(pos + 2).unwrap_or(0) >> 4) & 0xf;
    // Root-complex integrated endpoints and event collectors have no link.
    if port_type == 9 || port_type == 10 {
        return (header_type, Some(None));
    }
    let (Some(lnkcap), Some(lnksta)) = (cfg.u32(pos + 0x0c), cfg.u16(pos + 0x12)) else {
        return (header_type, Some(None));
    };
    let cap = PcieLink {
        port: (lnkcap >> 24) as i32,
        speed: lnkcap & 0xf,
        width: (lnkcap >> 4) & 0x3f,
    };
    let sta = PcieLink {
        port: -1,
        speed: u32::from(lnksta & 0xf),
        width: u32::from((lnksta >> 4) & 0x3f),
    };
    (header_type, Some(Some((cap, sta))))
}

fn pci_device(sysname: &str, dir: &Path) -> Option<NodeDeviceDef> {
    // 0000:00:01.0 → domain, bus, slot, function.
    let mut parts = sysname.split([':', '.']);
    let mut next = || parts.next().and_then(|p| u32::from_str_radix(p, 16).ok());
    let (domain, bus, slot, function) = (next()?, next()?, next()?, next()?);
    let vendor_id = hex_attr(dir, "vendor")?;
    let product_id = hex_attr(dir, "device")?;
    let ids = pci_ids();
    let iommu_group = fs::read_link(dir.join("iommu_group"))
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse::<u32>().ok())
        .map(|n| {
            let mut members: Vec<[u32; 4]> =
                fs::read_dir(format!("/sys/kernel/iommu_groups/{n}/devices"))
                    .map(|rd| {
                        rd.flatten()
                            .filter_map(|e| {
                                let s = e.file_name().to_string_lossy().into_owned();
                                let v: Vec<u32> = s
                                    .split([':', '.'])
                                    .filter_map(|p| u32::from_str_radix(p, 16).ok())
                                    .collect();
                                (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            members.sort();
            (n, members)
        });
    let (header_type, pcie) = pci_config_facts(dir);
    Some(NodeDeviceDef {
        name: device_name("pci", sysname, None),
        path: Some(dir.display().to_string()),
        devnode: None,
        devlinks: Vec::new(),
        parent: None,
        driver: driver_of(dir),
        cap: Capability::Pci(PciCap {
            class: hex_attr(dir, "class"),
            domain,
            bus,
            slot,
            function,
            product_id,
            product_name: ids.devices.get(&(vendor_id, product_id)).cloned(),
            vendor_id,
            vendor_name: ids.vendors.get(&vendor_id).cloned(),
            header_type,
            iommu_group,
            numa_node: read_attr(dir, "numa_node")
                .and_then(|s| s.parse::<i32>().ok())
                .filter(|&n| n >= 0),
            pcie,
        }),
    })
}

fn usb_device(sysname: &str, dir: &Path) -> Option<NodeDeviceDef> {
    let ev = uevent(dir);
    let name = device_name("usb", sysname, None);
    let udev = udev_entry(dir, &ev);
    // Names from udev's hardware database where udev runs, else what the
    // device says of itself (libvirt's order).
    let from_db = |k: &str| udev.props.get(k).cloned();
    let cap = match ev.get("DEVTYPE").map(String::as_str) {
        Some("usb_device") => Capability::UsbDevice(UsbDeviceCap {
            bus: ev.get("BUSNUM")?.parse().ok()?,
            device: ev.get("DEVNUM")?.parse().ok()?,
            product_id: hex_attr(dir, "idProduct")?,
            product_name: from_db("ID_MODEL_FROM_DATABASE").or_else(|| read_attr(dir, "product")),
            vendor_id: hex_attr(dir, "idVendor")?,
            vendor_name: from_db("ID_VENDOR_FROM_DATABASE")
                .or_else(|| read_attr(dir, "manufacturer")),
        }),
        Some("usb_interface") => Capability::UsbInterface(UsbInterfaceCap {
            number: hex_attr(dir, "bInterfaceNumber")?,
            class: hex_attr(dir, "bInterfaceClass")?,
            subclass: hex_attr(dir, "bInterfaceSubClass")?,
            protocol: hex_attr(dir, "bInterfaceProtocol")?,
        }),
        _ => return None,
    };
    Some(NodeDeviceDef {
        name,
        path: Some(dir.display().to_string()),
        devnode: devnode_of(&ev),
        devlinks: udev.links.clone(),
        parent: None,
        driver: driver_of(dir),
        cap,
    })
}

fn net_device(ifname: &str, dir: &Path) -> Option<NodeDeviceDef> {
    let ev = uevent(dir);
    let address = read_attr(dir, "address");
    let subtype = if ev.get("DEVTYPE").map(String::as_str) == Some("wlan") {
        "80211"
    } else {
        "80203"
    };
    Some(NodeDeviceDef {
        name: device_name("net", ifname, address.as_deref()),
        path: Some(dir.display().to_string()),
        devnode: None,
        devlinks: Vec::new(),
        parent: None,
        driver: driver_of(dir),
        cap: Capability::Net(NetCap {
            interface: ev
                .get("INTERFACE")
                .cloned()
                .unwrap_or_else(|| ifname.to_owned()),
            address,
            link: link_info(dir),
            features: ethtool::features(ifname),
            subtype,
        }),
    })
}

fn block_device(sysname: &str, dir: &Path) -> Option<NodeDeviceDef> {
    let ev = uevent(dir);
    if ev.get("DEVTYPE").map(String::as_str) != Some("disk") {
        return None;
    }
    let devnode = devnode_of(&ev)?;
    let udev = udev_entry(dir, &ev);
    let props = &udev.props;
    let drive_type = match props.get("ID_TYPE").map(String::as_str) {
        Some(t) if t != "generic" => t.to_owned(),
        _ if props.contains_key("ID_DRIVE_FLASH_SD") => "sd".to_owned(),
        // What libvirt guesses when udev says nothing.
        _ if devnode.starts_with("/dev/vd") || devnode.starts_with("/dev/nvme") => {
            "disk".to_owned()
        }
        _ => return None,
    };
    // Only fixed disks here; removable media have their own format.
    if drive_type != "disk" && drive_type != "sd" {
        return None;
    }
    let num_blocks: u64 = read_attr(dir, "size")?.trim().parse().ok()?;
    let logical_block_size: u64 = read_attr(dir, "queue/logical_block_size")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let serial = props.get("ID_SERIAL").cloned();
    let trimmed = |a: &str| read_attr(dir, a).map(|s| s.trim().to_owned());
    Some(NodeDeviceDef {
        name: device_name("block", sysname, serial.as_deref()),
        path: Some(dir.display().to_string()),
        devnode: Some(devnode.clone()),
        devlinks: udev.links.clone(),
        parent: None,
        driver: driver_of(dir),
        cap: Capability::Storage(StorageCap {
            block: devnode,
            bus: props.get("ID_BUS").cloned(),
            drive_type,
            model: trimmed("device/model"),
            vendor: trimmed("device/vendor"),
            serial,
            size: num_blocks.saturating_mul(logical_block_size),
            logical_block_size,
            num_blocks,
        }),
    })
}

/// Every device, sorted by name, each with its parent: the nearest
/// ancestor directory in sysfs that is itself a listed device.
pub fn scan() -> Vec<NodeDeviceDef> {
    let mut devs = vec![computer()];
    for (name, dir) in class_devices("/sys/bus/pci/devices") {
        devs.extend(pci_device(&name, &dir));
    }
    for (name, dir) in class_devices("/sys/bus/usb/devices") {
        devs.extend(usb_device(&name, &dir));
    }
    for (name, dir) in class_devices("/sys/class/net") {
        devs.extend(net_device(&name, &dir));
    }
    for (name, dir) in class_devices("/sys/class/block") {
        devs.extend(block_device(&name, &dir));
    }
    let by_path: HashMap<String, String> = devs
        .iter()
        .filter_map(|d| Some((d.path.clone()?, d.name.clone())))
        .collect();
    for d in devs.iter_mut().skip(1) {
        let Some(path) = &d.path else { continue };
        let parent = Path::new(path)
            .ancestors()
            .skip(1)
            .find_map(|a| by_path.get(a.to_str()?).cloned());
        d.parent = Some(parent.unwrap_or_else(|| "computer".into()));
    }
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    devs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_libvirt_makes_them() {
        assert_eq!(device_name("pci", "0000:00:01.0", None), "pci_0000_00_01_0");
        assert_eq!(
            device_name("net", "eth0", Some("52:54:00:12:34:56")),
            "net_eth0_52_54_00_12_34_56"
        );
        assert_eq!(device_name("usb", "1-1:1.0", None), "usb_1_1_1_0");
    }

    #[test]
    fn this_host_has_a_computer_and_loopback() {
        let devs = scan();
        assert!(devs.iter().any(|d| d.name == "computer"));
        assert!(devs.iter().any(|d| d.name.starts_with("net_lo_")));
    }
}
