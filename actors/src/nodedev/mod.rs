//! The node device driver: host devices read from sysfs ([`sysfs`]), kept
//! current by the [`monitor::NodeDeviceMonitor`] actor, which follows the
//! kernel's device events and publishes node device events. Creating, defining
//! and destroying devices is refused as libvirt refuses it for devices that
//! are neither mediated devices nor vHBAs (qemud manages neither); SCSI host
//! lookups by WWN have no row and are answered VIR_ERR_NO_SUPPORT.

mod ethtool;
pub mod monitor;
pub mod sysfs;

use std::sync::Arc;

use actix::Addr;

use qemud_config::nodedev::{Capability, NodeDeviceDef};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::XdrString;

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_LIST_ALL_NODE_DEVICES, Read, list_all),
        call!(NODE_NUM_OF_DEVICES, Read, num_of_devices),
        call!(NODE_LIST_DEVICES, Read, list_devices),
        call!(NODE_DEVICE_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(NODE_DEVICE_GET_XML_DESC, Read, get_xml_desc),
        call!(NODE_DEVICE_GET_PARENT, Read, get_parent),
        call!(NODE_DEVICE_NUM_OF_CAPS, Read, num_of_caps),
        call!(NODE_DEVICE_LIST_CAPS, Read, list_caps),
        call!(NODE_DEVICE_IS_ACTIVE, Read, is_active),
        call!(NODE_DEVICE_IS_PERSISTENT, Read, is_persistent),
        call!(NODE_DEVICE_GET_AUTOSTART, Write, get_autostart),
        call!(NODE_DEVICE_CREATE_XML, Write, create_xml),
        call!(NODE_DEVICE_DEFINE_XML, Write, define_xml),
        call!(NODE_DEVICE_DESTROY, Write, destroy),
        call!(NODE_DEVICE_UNDEFINE, Write, undefine),
        call!(NODE_DEVICE_CREATE, Write, create),
        call!(NODE_DEVICE_SET_AUTOSTART, Write, set_autostart),
    ]
}

/// `virConnectListAllNodeDeviceFlags`: capability bits, by the names
/// libvirt gives capabilities, and the state bits.
const CAP_FLAGS: &[(u32, &str)] = &[
    (1 << 0, "system"),
    (1 << 1, "pci"),
    (1 << 2, "usb_device"),
    (1 << 3, "usb"),
    (1 << 4, "net"),
    (1 << 5, "scsi_host"),
    (1 << 6, "scsi_target"),
    (1 << 7, "scsi"),
    (1 << 8, "storage"),
    (1 << 9, "fc_host"),
    (1 << 10, "vports"),
    (1 << 11, "scsi_generic"),
    (1 << 12, "drm"),
    (1 << 13, "mdev_types"),
    (1 << 14, "mdev"),
    (1 << 15, "ccw"),
    (1 << 16, "css"),
    (1 << 17, "vdpa"),
    (1 << 18, "ap_card"),
    (1 << 19, "ap_queue"),
    (1 << 20, "ap_matrix"),
    (1 << 21, "vpd"),
];
const CAP_MASK: u32 = (1 << 22) - 1;
const LIST_INACTIVE: u32 = 1 << 30;
const LIST_ACTIVE: u32 = 1 << 31;

/// Most names one legacy list call returns (`REMOTE_NODE_DEVICE_LIST_MAX`).
const LIST_MAX: i32 = 65536;

/// The driver's handle in [`crate::Services`]: the device list and the
/// actor that keeps it current.
pub struct NodeDevices {
    cache: Arc<monitor::DeviceCache>,
    _monitor: Addr<monitor::NodeDeviceMonitor>,
}

impl NodeDevices {
    pub fn start(events: Addr<crate::events::EventBus>) -> NodeDevices {
        let (cache, monitor) = monitor::NodeDeviceMonitor::start(events);
        NodeDevices {
            cache,
            _monitor: monitor,
        }
    }

    fn list(&self) -> Arc<Vec<NodeDeviceDef>> {
        self.cache.snapshot()
    }
}

/// libvirt marks only the computer persistent and autostarted; devices
/// found in sysfs are neither.
fn is_computer(d: &NodeDeviceDef) -> bool {
    matches!(d.cap, Capability::System(_))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn find(call: &Call, name: &str) -> Result<NodeDeviceDef> {
    call.svc
        .nodedevs
        .list()
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| Error::NoNodeDevice(format!("no node device with matching name '{name}'")))
}

/// The names of the devices with capability `cap` (all without one); an
/// unknown capability matches nothing, as in libvirt.
fn with_cap(call: &Call, cap: Option<&str>) -> Vec<String> {
    call.svc
        .nodedevs
        .list()
        .iter()
        .filter(|d| cap.is_none_or(|c| d.cap_names().iter().any(|n| n == c)))
        .map(|d| d.name.clone())
        .collect()
}

async fn list_all(
    call: &Call,
    a: ConnectListAllNodeDevicesArgs,
) -> Result<ConnectListAllNodeDevicesRet> {
    let allowed = CAP_MASK | LIST_ACTIVE | LIST_INACTIVE;
    if a.flags & !allowed != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags & !allowed,
            function: "nodeConnectListAllNodeDevices",
        });
    }
    let wanted: Vec<&str> = CAP_FLAGS
        .iter()
        .filter(|(bit, _)| a.flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    // Every device read from sysfs is active.
    let state_ok = a.flags & (LIST_ACTIVE | LIST_INACTIVE) == 0 || a.flags & LIST_ACTIVE != 0;
    let devices: Vec<NonnullNodeDevice> = call
        .svc
        .nodedevs
        .list()
        .iter()
        .filter(|_| state_ok)
        .filter(|d| wanted.is_empty() || d.cap_names().iter().any(|c| wanted.contains(&c.as_str())))
        .map(|d| NonnullNodeDevice {
            name: d.name.as_str().into(),
        })
        .collect();
    let ret = u32::try_from(devices.len()).unwrap_or(u32::MAX);
    Ok(ConnectListAllNodeDevicesRet {
        devices: if a.need_results != 0 {
            devices
        } else {
            Vec::new()
        }
        .into(),
        ret,
    })
}

async fn num_of_devices(call: &Call, a: NodeNumOfDevicesArgs) -> Result<NodeNumOfDevicesRet> {
    if a.flags != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags,
            function: "nodeNumOfDevices",
        });
    }
    let cap = a.cap.as_ref().map(|c| c.as_str());
    Ok(NodeNumOfDevicesRet {
        num: count(with_cap(call, cap).len()),
    })
}

async fn list_devices(call: &Call, a: NodeListDevicesArgs) -> Result<NodeListDevicesRet> {
    if a.flags != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags,
            function: "nodeListDevices",
        });
    }
    if a.maxnames > LIST_MAX {
        return Err(Error::Rpc("maxnames > REMOTE_NODE_DEVICE_LIST_MAX".into()));
    }
    let cap = a.cap.as_ref().map(|c| c.as_str());
    let names: Vec<XdrString> = with_cap(call, cap)
        .into_iter()
        .take(usize::try_from(a.maxnames).unwrap_or(0))
        .map(XdrString::from)
        .collect();
    Ok(NodeListDevicesRet {
        names: names.into(),
    })
}

async fn lookup_by_name(
    call: &Call,
    a: NodeDeviceLookupByNameArgs,
) -> Result<NodeDeviceLookupByNameRet> {
    let d = find(call, a.name.as_str())?;
    Ok(NodeDeviceLookupByNameRet {
        dev: NonnullNodeDevice {
            name: d.name.into(),
        },
    })
}

async fn get_xml_desc(call: &Call, a: NodeDeviceGetXmlDescArgs) -> Result<NodeDeviceGetXmlDescRet> {
    // VIR_NODE_DEVICE_XML_INACTIVE is the only flag.
    if a.flags & !1 != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags & !1,
            function: "nodeDeviceGetXMLDesc",
        });
    }
    let mut def = find(call, a.name.as_str())?;
    // Link state changes without a device event; libvirt rereads it too.
    if let (Capability::Net(net), Some(path)) = (&mut def.cap, &def.path) {
        net.link = crate::interface::link_info(std::path::Path::new(path));
    }
    Ok(NodeDeviceGetXmlDescRet {
        xml: def.to_xml().into(),
    })
}

async fn get_parent(call: &Call, a: NodeDeviceGetParentArgs) -> Result<NodeDeviceGetParentRet> {
    let d = find(call, a.name.as_str())?;
    match d.parent {
        Some(p) => Ok(NodeDeviceGetParentRet {
            parent_name: Some(p.into()),
        }),
        None => Err(Error::Other {
            code: qemud_protocol::ErrorCode::NoNodeDevice,
            domain: qemud_protocol::ErrorDomain::Nodedev,
            message: "Node device not found: no parent for this device".into(),
        }),
    }
}

async fn num_of_caps(call: &Call, a: NodeDeviceNumOfCapsArgs) -> Result<NodeDeviceNumOfCapsRet> {
    Ok(NodeDeviceNumOfCapsRet {
        num: count(find(call, a.name.as_str())?.cap_names().len()),
    })
}

async fn list_caps(call: &Call, a: NodeDeviceListCapsArgs) -> Result<NodeDeviceListCapsRet> {
    let names: Vec<XdrString> = find(call, a.name.as_str())?
        .cap_names()
        .into_iter()
        .take(usize::try_from(a.maxnames).unwrap_or(0))
        .map(XdrString::from)
        .collect();
    Ok(NodeDeviceListCapsRet {
        names: names.into(),
    })
}

async fn is_active(call: &Call, a: NodeDeviceIsActiveArgs) -> Result<NodeDeviceIsActiveRet> {
    find(call, a.name.as_str())?;
    Ok(NodeDeviceIsActiveRet { active: 1 })
}

async fn is_persistent(
    call: &Call,
    a: NodeDeviceIsPersistentArgs,
) -> Result<NodeDeviceIsPersistentRet> {
    let d = find(call, a.name.as_str())?;
    Ok(NodeDeviceIsPersistentRet {
        persistent: is_computer(&d) as i32,
    })
}

async fn get_autostart(
    call: &Call,
    a: NodeDeviceGetAutostartArgs,
) -> Result<NodeDeviceGetAutostartRet> {
    let d = find(call, a.name.as_str())?;
    Ok(NodeDeviceGetAutostartRet {
        autostart: is_computer(&d) as i32,
    })
}

/// libvirt's answer for a device it can neither create nor destroy.
fn unsupported_type() -> Error {
    Error::Other {
        code: qemud_protocol::ErrorCode::ConfigUnsupported,
        domain: qemud_protocol::ErrorDomain::Nodedev,
        message: "unsupported configuration: Unsupported device type".into(),
    }
}

/// Checks a definition enough to refuse it for the right reason: not XML,
/// not a `<device>`, a mediated device, or any other device type.
fn refuse_definition(xml: &str) -> Error {
    use qemud_config::nodedev::DefinitionError;
    use qemud_protocol::{ErrorCode, ErrorDomain};
    match qemud_config::nodedev::definition_is_mdev(xml) {
        Err(DefinitionError::Parse(m)) => Error::Other {
            code: ErrorCode::XmlDetail,
            domain: ErrorDomain::Nodedev,
            message: m,
        },
        Err(DefinitionError::Root(m)) => Error::Other {
            code: ErrorCode::XmlError,
            domain: ErrorDomain::Xml,
            message: format!("XML error: {m}"),
        },
        // Mediated devices are made by mdevctl, which qemud does not use:
        // libvirt's words when mdevctl is missing.
        Ok(true) => Error::Other {
            code: ErrorCode::SystemError,
            domain: ErrorDomain::None,
            message: "Cannot find 'mdevctl' in path: No such file or directory".into(),
        },
        Ok(false) => unsupported_type(),
    }
}

async fn create_xml(_: &Call, a: NodeDeviceCreateXmlArgs) -> Result<NodeDeviceCreateXmlRet> {
    Err(refuse_definition(a.xml_desc.as_str()))
}

async fn define_xml(_: &Call, a: NodeDeviceDefineXmlArgs) -> Result<NodeDeviceDefineXmlRet> {
    Err(refuse_definition(a.xml_desc.as_str()))
}

async fn destroy(call: &Call, a: NodeDeviceDestroyArgs) -> Result<()> {
    find(call, a.name.as_str())?;
    Err(unsupported_type())
}

async fn undefine(call: &Call, a: NodeDeviceUndefineArgs) -> Result<()> {
    find(call, a.name.as_str())?;
    Err(unsupported_type())
}

async fn create(call: &Call, a: NodeDeviceCreateArgs) -> Result<()> {
    // Every device qemud knows is present, hence active.
    find(call, a.name.as_str())?;
    Err(Error::OperationInvalid("Device is already active".into()))
}

async fn set_autostart(call: &Call, a: NodeDeviceSetAutostartArgs) -> Result<()> {
    find(call, a.name.as_str())?;
    Err(Error::Other {
        code: qemud_protocol::ErrorCode::OperationUnsupported,
        domain: qemud_protocol::ErrorDomain::Nodedev,
        message: "Operation not supported: Unsupported device type".into(),
    })
}
