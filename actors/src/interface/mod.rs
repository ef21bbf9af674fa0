//! The host interface driver: interfaces read from the kernel
//! (`/sys/class/net`), as libvirt's udev backend reports them. Defining,
//! starting and stopping interfaces and change transactions need netcf,
//! which libvirt's udev backend lacks too: those procedures have no row and
//! are answered VIR_ERR_NO_SUPPORT by the table.

use std::fs;
use std::path::{Path, PathBuf};

use qemud_config::interface::{IfaceDef, IfaceKind, Link};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::XdrString;
use qemud_protocol::{ErrorCode, ErrorDomain};

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_NUM_OF_INTERFACES, Read, num_of_active),
        call!(CONNECT_LIST_INTERFACES, Read, list_active),
        call!(CONNECT_NUM_OF_DEFINED_INTERFACES, Read, num_of_inactive),
        call!(CONNECT_LIST_DEFINED_INTERFACES, Read, list_inactive),
        call!(CONNECT_LIST_ALL_INTERFACES, Read, list_all),
        call!(INTERFACE_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(INTERFACE_LOOKUP_BY_MAC_STRING, Read, lookup_by_mac),
        call!(INTERFACE_GET_XML_DESC, Read, get_xml_desc),
        call!(INTERFACE_IS_ACTIVE, Read, is_active),
    ]
}

const SYS_CLASS_NET: &str = "/sys/class/net";

/// `virConnectListAllInterfacesFlags`.
const LIST_INACTIVE: u32 = 1 << 0;
const LIST_ACTIVE: u32 = 1 << 1;
/// `VIR_INTERFACE_XML_INACTIVE`.
const XML_INACTIVE: u32 = 1;

/// Most names one legacy list call returns (`REMOTE_INTERFACE_LIST_MAX`).
const LIST_MAX: i32 = 16384;

fn read_attr(dir: &Path, attr: &str) -> Option<String> {
    fs::read_to_string(dir.join(attr))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// The sysfs directory of an interface, refusing names that are not one.
fn iface_dir(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return None;
    }
    let dir = Path::new(SYS_CLASS_NET).join(name);
    dir.exists().then_some(dir)
}

/// One interface as listings see it.
struct Entry {
    name: String,
    mac: String,
    operstate: String,
}

impl Entry {
    fn handle(&self) -> NonnullInterface {
        NonnullInterface {
            name: self.name.clone().into(),
            mac: self.mac.clone().into(),
        }
    }
}

/// The interfaces libvirt lists: every network device except bridge ports
/// and the TUN/TAP devices of guests, sorted by name.
fn entries() -> Result<Vec<Entry>> {
    let rd = fs::read_dir(SYS_CLASS_NET).map_err(|e| {
        Error::Internal(format!("failed to get list of all interfaces on host: {e}"))
    })?;
    let mut v = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if dir.join("brport").exists() || dir.join("tun_flags").exists() {
            continue;
        }
        v.push(Entry {
            mac: read_attr(&dir, "address").unwrap_or_default(),
            operstate: read_attr(&dir, "operstate").unwrap_or_default(),
            name,
        });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn no_interface(name: &str) -> Error {
    Error::NoInterface(format!("couldn't find interface named '{name}'"))
}

/// Link state and speed as `virNetDevGetLinkInfo` reads them.
pub fn link_info(dir: &Path) -> Link {
    let state = read_attr(dir, "operstate").filter(|s| !s.is_empty());
    let speed = if state.as_deref() == Some("up") {
        // Devices without a speed refuse the read; "-1" reads as u32::MAX
        // in libvirt.
        read_attr(dir, "speed")
            .and_then(|s| s.parse::<i64>().ok())
            .map(|n| n as u32)
            .filter(|&n| n != 0)
    } else {
        None
    };
    Link { state, speed }
}

fn uevent_devtype(dir: &Path) -> Option<String> {
    read_attr(dir, "uevent")?
        .lines()
        .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_owned))
}

/// VLAN tag and parent device from `/proc/net/vlan/<name>`.
fn vlan_info(name: &str) -> Result<(String, String)> {
    let text = fs::read_to_string(Path::new("/proc/net/vlan").join(name))
        .map_err(|e| Error::System(format!("Failed to open file '/proc/net/vlan/{name}': {e}")))?;
    let tag = text
        .split("VID: ")
        .nth(1)
        .map(|s| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::Internal(format!(
                "failed to find the VID for the VLAN device '{name}'"
            ))
        })?;
    let device = text
        .split("\nDevice: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::Internal(format!(
                "failed to find the real device for the VLAN device '{name}'"
            ))
        })?;
    Ok((tag, device.to_owned()))
}

/// An interface's definition as libvirt's udev backend builds it; `depth`
/// bounds the recursion through bridge members.
fn iface_def(name: &str, depth: u32) -> Result<IfaceDef> {
    let dir = iface_dir(name).ok_or_else(|| no_interface(name))?;
    let mtu_text = read_attr(&dir, "mtu").unwrap_or_default();
    let mtu = mtu_text
        .parse::<u32>()
        .map_err(|_| Error::Internal(format!("Could not parse MTU value '{mtu_text}'")))?;
    let devtype = uevent_devtype(&dir);
    let kind = match devtype.as_deref() {
        Some("bridge") if depth < 4 => {
            let delay = read_attr(&dir, "bridge/forward_delay").ok_or_else(|| {
                Error::Internal(format!(
                    "Could not retrieve 'bridge/forward_delay' for '{name}'"
                ))
            })?;
            let stp = read_attr(&dir, "bridge/stp_state")
                .and_then(|s| s.parse::<i32>().ok())
                .unwrap_or(-1);
            let mut names: Vec<String> = fs::read_dir(dir.join("brif"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let members = names
                .iter()
                .map(|m| iface_def(m, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            IfaceKind::Bridge {
                stp,
                delay,
                members,
            }
        }
        Some("vlan") => {
            let (tag, device) = vlan_info(name)?;
            IfaceKind::Vlan { tag, device }
        }
        _ if devtype.is_none() && name.contains('.') => {
            let (tag, device) = vlan_info(name)?;
            IfaceKind::Vlan { tag, device }
        }
        _ => IfaceKind::Ethernet,
    };
    Ok(IfaceDef {
        name: name.to_owned(),
        mac: read_attr(&dir, "address"),
        mtu,
        link: link_info(&dir),
        kind,
    })
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn names_with_state(state: &str, max: i32) -> Result<Vec<XdrString>> {
    if max > LIST_MAX {
        return Err(Error::Rpc("maxnames > REMOTE_INTERFACE_LIST_MAX".into()));
    }
    Ok(entries()?
        .into_iter()
        .filter(|e| e.operstate == state)
        .take(usize::try_from(max).unwrap_or(0))
        .map(|e| e.name.into())
        .collect())
}

async fn num_of_active(_: &Call, _: ()) -> Result<ConnectNumOfInterfacesRet> {
    let n = entries()?.iter().filter(|e| e.operstate == "up").count();
    Ok(ConnectNumOfInterfacesRet { num: count(n) })
}

async fn list_active(_: &Call, a: ConnectListInterfacesArgs) -> Result<ConnectListInterfacesRet> {
    Ok(ConnectListInterfacesRet {
        names: names_with_state("up", a.maxnames)?.into(),
    })
}

async fn num_of_inactive(_: &Call, _: ()) -> Result<ConnectNumOfDefinedInterfacesRet> {
    let n = entries()?.iter().filter(|e| e.operstate == "down").count();
    Ok(ConnectNumOfDefinedInterfacesRet { num: count(n) })
}

async fn list_inactive(
    _: &Call,
    a: ConnectListDefinedInterfacesArgs,
) -> Result<ConnectListDefinedInterfacesRet> {
    Ok(ConnectListDefinedInterfacesRet {
        names: names_with_state("down", a.maxnames)?.into(),
    })
}

async fn list_all(
    _: &Call,
    a: ConnectListAllInterfacesArgs,
) -> Result<ConnectListAllInterfacesRet> {
    let allowed = LIST_ACTIVE | LIST_INACTIVE;
    if a.flags & !allowed != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags & !allowed,
            function: "udevConnectListAllInterfaces",
        });
    }
    let picked: Vec<NonnullInterface> = entries()?
        .iter()
        .filter(|e| {
            let up = e.operstate == "up";
            a.flags & allowed == 0
                || (a.flags & LIST_ACTIVE != 0 && up)
                || (a.flags & LIST_INACTIVE != 0 && !up)
        })
        .map(Entry::handle)
        .collect();
    let ret = u32::try_from(picked.len()).unwrap_or(u32::MAX);
    Ok(ConnectListAllInterfacesRet {
        ifaces: if a.need_results != 0 {
            picked
        } else {
            Vec::new()
        }
        .into(),
        ret,
    })
}

async fn lookup_by_name(
    _: &Call,
    a: InterfaceLookupByNameArgs,
) -> Result<InterfaceLookupByNameRet> {
    let name = a.name.as_str();
    let dir = iface_dir(name).ok_or_else(|| no_interface(name))?;
    Ok(InterfaceLookupByNameRet {
        iface: NonnullInterface {
            name: name.into(),
            mac: read_attr(&dir, "address").unwrap_or_default().into(),
        },
    })
}

async fn lookup_by_mac(
    _: &Call,
    a: InterfaceLookupByMacStringArgs,
) -> Result<InterfaceLookupByMacStringRet> {
    let mac = a.mac.as_str();
    let found: Vec<Entry> = entries()?.into_iter().filter(|e| e.mac == mac).collect();
    match found.as_slice() {
        [one] => Ok(InterfaceLookupByMacStringRet { iface: one.handle() }),
        [] => Err(Error::NoInterface(format!(
            "couldn't find interface with MAC address '{mac}'"
        ))),
        _ => Err(Error::Other {
            code: ErrorCode::MultipleInterfaces,
            domain: ErrorDomain::Interface,
            message: format!(
                "multiple matching interfaces found: the MAC address '{mac}' matches multiple interfaces"
            ),
        }),
    }
}

async fn get_xml_desc(_: &Call, a: InterfaceGetXmlDescArgs) -> Result<InterfaceGetXmlDescRet> {
    if a.flags & !XML_INACTIVE != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags & !XML_INACTIVE,
            function: "udevInterfaceGetXMLDesc",
        });
    }
    let def = iface_def(a.iface.name.as_str(), 0)?;
    Ok(InterfaceGetXmlDescRet {
        xml: def.to_xml().into(),
    })
}

async fn is_active(_: &Call, a: InterfaceIsActiveArgs) -> Result<InterfaceIsActiveRet> {
    let name = a.iface.name.as_str();
    let dir = iface_dir(name).ok_or_else(|| no_interface(name))?;
    let up = read_attr(&dir, "operstate").as_deref() == Some("up");
    Ok(InterfaceIsActiveRet { active: up as i32 })
}
